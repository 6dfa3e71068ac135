"""Tests of resumable.testing itself: the harness simulates crashes faithfully, and
assert_resumable finds jobs that are not resumable, says why, and passes jobs that are."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings

from resumable import FileStore, MemoryStore, _run, checkpoint, current_step, resumable
from resumable.testing import (
    Crash,
    NotResumable,
    Schedule,
    assert_resumable,
    crash_schedules,
    run_with_crashes,
)

# The plugin's fixture (the `resumable` pytest11 entry point provides it once installed).
from resumable.testing._plugin import resumable_store  # noqa: F401

CALLS: list[str] = []  # the outside world the jobs below act on


@pytest.fixture(autouse=True)
def _clean() -> None:
    CALLS.clear()


def observe_calls() -> list[str]:
    return list(CALLS)


@checkpoint
def add(i: int) -> int:
    return i * 10


@checkpoint
def noop(i: int) -> None:
    return None


@resumable
def adder(n: int) -> int:
    return sum(add(i) for i in range(n))


@resumable
def noops(n: int) -> int:
    for i in range(n):
        noop(i)
    return n


# -- the harness ----------------------------------------------------------------------


def test_crash_before_a_step_stops_before_its_body_and_the_restart_goes_on_from_the_record():
    report = run_with_crashes(lambda: adder(4), Schedule((Crash("before_step", 2),)))
    assert report.result == 60
    assert report.restarts == 1
    first, second = report.attempts
    assert [e.number for e in first.executions] == [0, 1]
    assert [e.number for e in second.executions] == [2, 3]  # 0 and 1 were replayed
    assert report.count(add) == 4
    assert report.crashes == [
        "attempt 1: crash before step 'add' #2 ran its body (after step 'add' #1 completed)"
    ]


def test_crash_after_a_step_before_its_write_runs_that_step_again():
    report = run_with_crashes(lambda: adder(3), Schedule((Crash("after_step", 1),)))
    assert report.result == 30
    numbers = [e.number for a in report.attempts for e in a.executions]
    assert numbers == [0, 1, 1, 2]
    assert "after step 'add' #1 returned, before its completion was written" in report.crashes[0]
    assert report.rerun_after_write == []


@pytest.mark.parametrize(("landed", "runs_of_step_0"), [(False, 2), (True, 1)])
def test_a_write_that_landed_counts_and_one_that_did_not_is_lost(landed, runs_of_step_0):
    # Steps returning None: each write is one head record. Write #0 is the progress
    # after step 0; the crash comes during it.
    report = run_with_crashes(lambda: noops(2), Schedule((Crash("write", 0, landed=landed),)))
    assert report.result == 2
    runs = [e.number for a in report.attempts for e in a.executions].count(0)
    assert runs == runs_of_step_0
    assert ("it landed" in report.crashes[0]) is landed


def test_the_crashed_process_writes_nothing_more_not_even_on_its_exception_path():
    # Progress is written only when the job asks (flush_every=0). A plain exception
    # would write the three completed steps on the way out; a crash must not.
    report = run_with_crashes(lambda: adder(5), Schedule((Crash("after_step", 2),), flush_every=0))
    assert [e.number for e in report.attempts[1].executions] == [0, 1, 2, 3, 4]
    assert report.result == 100


def test_an_exception_is_not_a_crash_its_progress_is_written():
    # Contrast for the test above: the same point reached by a real exception.
    state = {"fail": True}

    @checkpoint
    def step(i: int) -> int:
        if i == 3 and state["fail"]:
            state["fail"] = False
            raise RuntimeError("boom")
        return i

    @resumable(key="exc-job")
    def job() -> int:
        return sum(step(i) for i in range(5))

    store = MemoryStore()
    first = run_with_crashes(job, Schedule(flush_every=0), data=store)
    assert isinstance(first.error, RuntimeError)
    second = run_with_crashes(job, Schedule(flush_every=0), data=store)
    assert second.result == 10
    assert [e.number for e in second.attempts[0].executions] == [3, 4]


def test_the_store_a_job_names_is_replaced_by_the_harness_store(tmp_path):
    directory = tmp_path / "store"

    @resumable(store=FileStore(directory))
    def job(n: int) -> int:
        return sum(add(i) for i in range(n))

    report = run_with_crashes(lambda: job(3), Schedule((Crash("before_step", 1),)))
    assert report.result == 30
    assert report.restarts == 1
    assert not directory.exists() or list(directory.iterdir()) == []


def test_a_job_using_the_default_store_gets_the_fixture_store(resumable_store):  # noqa: F811
    @resumable(key="plugin-job")
    def job() -> int:
        return add(1)

    assert job() == 10
    assert "plugin-job" in resumable_store.keys("plugin-job")


def test_other_tasks_of_an_async_job_die_with_the_process():
    @checkpoint
    async def quick() -> str:
        return "q"

    async def bystander() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        CALLS.append("bystander")  # no step: would run in a dead process if not cancelled

    @resumable(key="siblings")
    async def job() -> str:
        results = await asyncio.gather(quick(), bystander())
        return str(results[0])

    report = run_with_crashes(job, Schedule((Crash("before_step", 0),)), observe=observe_calls)
    assert report.result == "q"
    assert report.observed == ["bystander"]  # once: only in the attempt that lived


def test_a_broken_replay_is_reported_as_a_rerun_after_write(monkeypatch):
    # Simulate a core bug: replay that ignores the record. The harness must notice
    # that steps whose completion was written ran again.
    def ignore_record(self, sdef, n, acode):
        self.replaying = False  # and never verify: what a careless engine would do
        self._verified = True
        self.fast = True
        return _run._NEW

    monkeypatch.setattr(_run.Run, "replay_own", ignore_record)
    report = run_with_crashes(lambda: adder(4), Schedule((Crash("before_step", 3),)))
    assert [e.number for e in report.rerun_after_write] == [0, 1, 2]
    with pytest.raises(NotResumable, match="resumable broke its own guarantee"):
        assert_resumable(lambda: adder(4), max_examples=20)


def test_generator_job_items_are_delivered_again_from_the_last_written_consumption():
    @resumable(key="gen")
    def letters():
        yield from "abcde"

    # Progress written after every 2nd item: item #0 handled -> nothing written yet...
    report = run_with_crashes(letters, Schedule((Crash("item", 2),), flush_every=2), consume=CALLS.append)
    assert report.items == ["a", "b", "c", "b", "c", "d", "e"]
    assert [a.items_from for a in report.attempts] == [0, 1]


def test_schedules_describe_themselves_in_words():
    schedule = Schedule((Crash("before_step", 0), Crash("write", 2, landed=True)), flush_every=2)
    assert schedule.describe() == (
        "attempt 1: crash before the 1st step body of the attempt runs; attempt 2: crash during "
        "the 3rd store write of the attempt, after it landed; progress written after every 2nd step"
    )
    with pytest.raises(ValueError, match="index"):
        Crash("write", -1)


@settings(max_examples=50)
@given(crash_schedules(steps=5, writes=7, max_crashes=2))
def test_crash_schedules_stay_within_their_bounds(schedule):
    assert 1 <= len(schedule.crashes) <= 2
    for crash in schedule.crashes:
        assert crash.at in ("before_step", "after_step", "write")
        assert crash.index < (7 if crash.at == "write" else 5)
        assert crash.landed is False or crash.at == "write"
    assert schedule.flush_every in (1, 2, 0)


# -- assert_resumable: jobs that are not resumable ----------------------------------


@checkpoint
def load(user: str) -> str:
    return f"{user}@example.com"


@checkpoint
def charge(user: str) -> str:
    return f"charged {user}"


def send_email(address: str) -> None:
    CALLS.append(f"email:{address}")


@resumable
def signup(user: str) -> str:
    address = load(user)
    send_email(address)  # not a step: a restart after it sends it again
    return charge(user)


def test_finds_a_side_effect_outside_any_step():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(lambda: signup("alice"), setup=CALLS.clear, observe=observe_calls)
    message = str(caught.value)
    assert message.startswith(
        "not resumable: the side effect `email:alice@example.com` happened twice instead of once: "
        "it is outside any step ("
    )
    assert "Move it into a @checkpoint step" in message
    assert "Smallest crash schedule found: attempt 1: crash before step 'charge' #1 ran its body" in message
    assert caught.value.schedule == Schedule((Crash("before_step", 1),))


@checkpoint
def send_email_step(address: str) -> None:
    CALLS.append(f"email:{address}")


@resumable
def signup_with_step(user: str) -> str:
    send_email_step(load(user))  # a step, but not idempotent: it runs at least once
    return charge(user)


def test_finds_a_step_whose_side_effect_is_not_idempotent():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(lambda: signup_with_step("bob"), setup=CALLS.clear, observe=observe_calls)
    message = str(caught.value)
    assert message.startswith(
        "not resumable: the side effect `email:bob@example.com` happened twice instead of once: "
        "it is inside step 'send_email_step' #1, whose body ran again because the crash came "
        "before its completion was written"
    )
    assert "current_step().idempotency_key" in message
    assert "crash after step 'send_email_step' #1 returned, before its completion was written" in message


SENT: dict[str, str] = {}  # a fake mail API that dedupes on an idempotency key


@checkpoint
def send_email_once(address: str) -> None:
    step = current_step()
    assert step is not None
    SENT.setdefault(step.idempotency_key, f"email:{address}")


@resumable
def signup_idempotent(user: str) -> str:
    send_email_once(load(user))
    return charge(user)


def test_passes_a_job_whose_side_effects_are_in_idempotent_steps():
    checked = assert_resumable(
        lambda: signup_idempotent("carol"), setup=SENT.clear, observe=lambda: sorted(SENT.values())
    )
    assert checked.reference.observed == ["email:carol@example.com"]
    assert checked.reference.result == "charged carol"
    assert checked.examples >= 10
    assert checked.restarts >= checked.examples // 2


ORDER = {"calls": 0}


@checkpoint
def fetch_a() -> str:
    return "a"


@checkpoint
def fetch_b() -> str:
    return "b"


@checkpoint
def fetch_c() -> str:
    return "c"


@resumable
def unordered() -> str:
    ORDER["calls"] += 1  # the order changes from one call to the next: not deterministic
    steps = [fetch_a, fetch_b, fetch_c]
    if ORDER["calls"] % 2 == 0:
        steps.reverse()
    return "".join(sorted(step() for step in steps))


def test_finds_a_step_order_that_is_not_deterministic():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(unordered, setup=lambda: ORDER.update(calls=0))
    message = str(caught.value)
    assert message.startswith("not resumable: after the crash the job raised ReplayMismatch")
    assert "The step order is not deterministic" in message
    assert len(caught.value.schedule.crashes) == 1


@checkpoint
def work(i: int) -> int:
    return i


@resumable
def twenty(planted: int) -> int:
    total = 0
    for i in range(20):
        total += work(i)
        if i == planted:
            CALLS.append(f"audit:{i}")  # the planted bug: outside any step
    return total


def test_shrinking_finds_one_crash_right_after_the_planted_bug():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(lambda: twenty(13), setup=CALLS.clear, observe=observe_calls)
    error = caught.value
    assert error.schedule is not None
    assert len(error.schedule.crashes) == 1
    assert error.report is not None
    assert error.report.restarts == 1
    # Which single crash Hypothesis settles on (before step 14, or the write that would
    # have recorded step 13) depends on its search; either is one crash after the bug.
    (crash,) = error.schedule.crashes
    assert crash.at in ("write", "before_step")
    assert "the side effect `audit:13` happened twice instead of once: it is outside any step" in str(error)


def test_a_default_run_on_a_twenty_step_job_is_quick(capsys):
    @resumable
    def job() -> int:
        return sum(work(i) for i in range(20))

    started = time.perf_counter()
    checked = assert_resumable(job)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\nassert_resumable on 20 steps: {checked.examples} examples, "
            f"{checked.restarts} restarts, {elapsed:.2f} s"
        )
    assert checked.examples == settings.default.max_examples
    assert checked.reference.result == sum(range(20))


# -- assert_resumable: async and generator jobs -------------------------------------


@checkpoint
async def aload(user: str) -> str:
    await asyncio.sleep(0)
    return f"{user}@example.com"


@checkpoint
async def acharge(user: str) -> str:
    return f"charged {user}"


@resumable
async def asignup(user: str) -> str:
    address = await aload(user)
    CALLS.append(f"email:{address}")  # outside any step
    return await acharge(user)


def test_finds_a_side_effect_outside_any_step_in_an_async_job():
    with pytest.raises(NotResumable) as caught:
        assert_resumable(lambda: asignup("dan"), setup=CALLS.clear, observe=observe_calls)
    assert str(caught.value).startswith(
        "not resumable: the side effect `email:dan@example.com` happened twice instead of once: "
        "it is outside any step"
    )


@checkpoint
async def apage(n: int) -> list[int]:
    for _ in range(n % 3):
        await asyncio.sleep(0)  # complete out of order
    return [n, n * n]


@resumable
async def concurrent_pages(n: int) -> list[list[int]]:
    return list(await asyncio.gather(*(apage(i) for i in range(n))))


def test_passes_an_async_job_with_concurrent_steps():
    checked = assert_resumable(lambda: concurrent_pages(6))
    assert checked.reference.result == [[i, i * i] for i in range(6)]
    assert checked.restarts > 0


async def test_can_be_called_from_an_async_test():
    checked = assert_resumable(lambda: concurrent_pages(3), max_examples=10)
    assert checked.reference.result == [[0, 0], [1, 1], [2, 4]]


@resumable
def numbers(n: int):
    for i in range(n):
        yield i * 2


def test_finds_a_generator_consumer_without_a_sink_that_pushes_twice():
    rows: list[int] = []
    with pytest.raises(NotResumable) as caught:
        assert_resumable(
            lambda: numbers(5), setup=rows.clear, consume=rows.append, observe=lambda: list(rows)
        )
    message = str(caught.value)
    assert "happened twice instead of once: it is done by the consumer for item #" in message
    assert "resumable.sinks.drain" in message


def test_passes_a_generator_job_with_an_idempotent_consumer():
    rows: dict[int, int] = {}
    checked = assert_resumable(
        lambda: numbers(5),
        setup=rows.clear,
        consume=lambda i: rows.setdefault(i, i),
        observe=lambda: dict(rows),
    )
    assert checked.reference.items == [0, 2, 4, 6, 8]
    assert checked.restarts > 0


@resumable
async def anumbers(n: int):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


def test_finds_an_async_generator_consumer_that_pushes_twice():
    rows: list[int] = []
    with pytest.raises(NotResumable, match="it is done by the consumer for item #"):
        assert_resumable(
            lambda: anumbers(4), setup=rows.clear, consume=rows.append, observe=lambda: list(rows)
        )


def test_start_must_call_a_job():
    with pytest.raises(ValueError, match="must call a @resumable job"):
        assert_resumable(lambda: 42)
