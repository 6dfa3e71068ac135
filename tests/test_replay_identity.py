"""How replay identifies a step call (issue 10 cases 1-3, 5, 6; issue 16's two core bugs).

The job's own steps are matched by their place in the body's own sequence and their
arguments; steps called from other tasks and threads by name, a digest of all their
arguments (the instance included) and an occurrence count. Each test runs a job,
interrupts it after its progress is written, changes what a restart changes (timing,
order, the input), and checks what the resumed run hands to each call and which
step bodies ran again.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tenacity

from resumable import (
    AmbiguousCall,
    FileStore,
    MemoryStore,
    ReplayMismatch,
    aflush,
    checkpoint,
    current_step,
    flush,
    resumable,
)
from resumable.sinks import ListSink, drain


class Crash(BaseException):
    """A simulated death after the progress was written (not an ordinary error)."""


# -- case 1: timing between tasks never moves the job's own steps --------------------------


@pytest.mark.parametrize("audit_returns", ["value", "none"])
async def test_task_latency_does_not_shift_the_jobs_own_steps(audit_returns: str) -> None:
    ran: Counter[str] = Counter()
    delays = {"a": 0.0, "b": 0.0, "body": 0.0}
    crash = [True]

    @checkpoint
    async def fetch(name: str) -> str:
        ran[f"fetch {name}"] += 1
        return f"page {name}"

    async def later(name: str) -> str:
        await asyncio.sleep(delays[name])  # latency before the task calls its step
        return await fetch(name)

    @checkpoint
    async def audit(what: str) -> str | None:
        ran[f"audit {what}"] += 1
        return f"audited {what}" if audit_returns == "value" else None

    @resumable(store=MemoryStore(), key="latency")
    async def job() -> list[Any]:
        tasks = [asyncio.create_task(later(n)) for n in ("a", "b")]
        await asyncio.sleep(delays["body"])
        started = await audit("started")
        pages = await asyncio.gather(*tasks)
        fetched = await audit("fetched")
        await aflush()
        if crash[0]:
            raise Crash
        return [started, *pages, fetched]

    # First run: the tasks wait, so the body's own audit("started") comes first.
    delays.update(a=0.03, b=0.02, body=0.0)
    with pytest.raises(Crash):
        await job()
    assert set(ran.values()) == {1}
    # On resume the body waits instead: the tasks' steps start before audit("started").
    delays.update(a=0.0, b=0.0, body=0.02)
    crash[0] = False
    expected_audit = ["audited started", "audited fetched"] if audit_returns == "value" else [None, None]
    assert await job() == [expected_audit[0], "page a", "page b", expected_audit[1]]
    assert set(ran.values()) == {1}  # no completed step ran again


def test_thread_pool_steps_do_not_shift_the_jobs_own_steps() -> None:
    ran: Counter[str] = Counter()
    crash = [True]

    @checkpoint
    def work(i: int) -> int:
        ran[f"work {i}"] += 1
        return i * i

    @checkpoint
    def note(what: str) -> str:
        ran[f"note {what}"] += 1
        return what.upper()

    @resumable(store=MemoryStore(), key="pool")
    def job(first_note_before_pool: bool) -> list[Any]:
        out: list[Any] = []
        with ThreadPoolExecutor(4) as pool:
            if first_note_before_pool:
                out.append(note("begin"))
            futures = [pool.submit(contextvars.copy_context().run, work, i) for i in range(6)]
            if not first_note_before_pool:
                # The same body; on this attempt the pool's steps complete first.
                for f in futures:
                    f.result()
                out.append(note("begin"))
            out.extend(f.result() for f in futures)
        out.append(note("end"))
        flush()
        if crash[0]:
            raise Crash
        return out

    with pytest.raises(Crash):
        job(True)
    crash[0] = False
    ran.clear()
    # key= makes both calls one run: on resume the pool's steps all finish before the
    # body's own note("begin") is called.
    assert job(False) == ["BEGIN", 0, 1, 4, 9, 16, 25, "END"]
    assert ran == Counter()  # everything replayed, in whatever order the pool ran


# -- case 2 lives in test_replay_identity_kill.py (a real SIGKILL) ---------------------------


def test_equal_concurrent_calls_keep_distinct_idempotency_keys() -> None:
    keys: list[str] = []

    @checkpoint(durable=True)
    async def pay(amount: int) -> int:
        step = current_step()
        assert step is not None
        keys.append(step.idempotency_key)
        await asyncio.sleep(0)
        return amount

    @resumable(store=MemoryStore(), key="pay")
    async def job() -> list[int]:
        return list(await asyncio.gather(pay(5), pay(5), pay(5)))

    assert asyncio.run(job()) == [5, 5, 5]
    assert len(set(keys)) == 3


# -- case 3: concurrent calls never swap results -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Page:
    name: str


class Account:
    def __init__(self, name: str) -> None:
        self.name = name

    @checkpoint
    async def balance(self) -> str:
        RAN[f"balance {self.name}"] += 1
        return f"balance of {self.name}"


RAN: Counter[str] = Counter()


@pytest.mark.parametrize("first", ["a", "b"])
async def test_concurrent_calls_with_objects_get_their_own_results(first: str) -> None:
    RAN.clear()
    order = ["a", "b"]
    crash = [True]

    @checkpoint
    async def fetch(page: Page) -> str:
        RAN[f"fetch {page.name}"] += 1
        return f"content of {page.name}"

    async def one(name: str) -> tuple[str, str]:
        return await fetch(Page(name)), await Account(name).balance()

    @resumable(store=MemoryStore(), key="swap")
    async def job() -> dict[str, tuple[str, str]]:
        tasks = {name: asyncio.create_task(one(name)) for name in order}
        out = {name: await task for name, task in tasks.items()}
        await aflush()
        if crash[0]:
            raise Crash
        return out

    order[:] = [first, "b" if first == "a" else "a"]
    with pytest.raises(Crash):
        await job()
    order.reverse()  # the tasks start in the other order on resume
    crash[0] = False
    assert await job() == {
        "a": ("content of a", "balance of a"),
        "b": ("content of b", "balance of b"),
    }
    assert set(RAN.values()) == {1}


async def test_calls_that_differ_only_in_an_unidentifiable_object_are_refused() -> None:
    import threading

    class Client:
        def __init__(self) -> None:
            self.lock = threading.Lock()

    ran = []

    @checkpoint
    async def get(client: Client, path: str) -> str:
        ran.append(path)
        return path

    @resumable(store=MemoryStore(), key="ambiguous-{shared}")
    async def job(shared: bool) -> list[str]:
        one = Client()
        clients = [one, one] if shared else [Client(), Client()]
        return list(await asyncio.gather(*(get(c, "/same") for c in clients)))

    assert await job(True) == ["/same", "/same"]  # one shared client: the calls are equal
    ran.clear()
    with pytest.raises(AmbiguousCall, match="key="):
        await job(False)
    assert len(ran) <= 1  # the ambiguous call never ran


# -- case 5: inputs that change under a run -----------------------------------------------


@pytest.mark.parametrize("returns", ["value", "none", "keyed"])
def test_a_changed_input_file_stops_the_resume_before_new_work(tmp_path: Path, returns: str) -> None:
    rows = tmp_path / "rows.txt"
    rows.write_text("".join(f"row-{i}\n" for i in range(6)))
    bodies: list[str] = []
    out: list[tuple[str, str]] = []
    crash_after = [3]

    if returns == "keyed":

        @checkpoint(key="{row}")
        def process(row: str) -> str | None:
            bodies.append(row)
            return row.upper()
    else:

        @checkpoint
        def process(row: str) -> str | None:
            bodies.append(row)
            return row.upper() if returns == "value" else None

    @resumable(store=FileStore(tmp_path / "store"))
    def job(path: str) -> int:
        for i, row in enumerate(Path(path).read_text().split()):
            result = process(row)
            out.append((row, str(result)))
            if i + 1 == crash_after[0]:
                flush()
                raise Crash
        return len(out)

    with pytest.raises(Crash):
        job(str(rows))
    rows.write_text("row-new\n" + rows.read_text())  # a row inserted at the top
    bodies.clear()
    out.clear()
    crash_after[0] = -1
    with pytest.raises(ReplayMismatch, match="arguments"):
        job(str(rows))
    assert bodies == []  # no step body ran for a changed call
    for row, result in out:
        assert result in (row.upper(), "None")  # never another row's result


# -- case 6: ReplayMismatch before any new work -------------------------------------------


def test_changed_code_gets_replay_mismatch_not_a_recorded_none() -> None:
    version = [1]
    bodies: list[str] = []

    @checkpoint
    def log(i: int) -> None:
        bodies.append(f"log {i}")

    @checkpoint
    def total(i: int) -> int:
        bodies.append(f"total {i}")
        return i * 100

    @resumable(store=MemoryStore(), key="changed")
    def job() -> int:
        acc = 0
        for i in range(4):
            if version[0] == 1 or i < 2:
                log(i)
            else:
                acc += total(i)  # the new code: a value step where log(i) returned None
        flush()
        if version[0] == 1:
            raise Crash
        return acc

    with pytest.raises(Crash):
        job()
    version[0] = 2
    bodies.clear()
    with pytest.raises(ReplayMismatch, match="total"):
        job()
    assert bodies == []


def test_a_drained_generator_pushes_nothing_new_before_a_mismatch() -> None:
    version = [1]
    store = MemoryStore()

    @checkpoint
    def mark(i: int) -> None:
        return None

    @checkpoint
    def other(i: int) -> None:
        return None

    @resumable(store=store, key="gen-changed", flush_interval=3600)
    def items() -> Any:
        for i in range(6):
            yield i
            if version[0] == 1 or i < 1:
                mark(i)
            else:
                other(i)
            if version[0] == 1 and i == 3:
                flush()
                raise Crash

    sink = ListSink()
    with pytest.raises(Crash):
        drain(items(), sink, batch_size=1)
    held = list(sink.items)
    version[0] = 2
    with pytest.raises(ReplayMismatch):
        drain(items(), sink, batch_size=1)
    assert sink.items == held  # nothing new landed


# -- issue 16: results recorded as copies; retries never shift results ------------------


def test_a_returned_list_mutated_by_the_body_is_replayed_as_returned() -> None:
    crash = [True]
    seen: list[list[int]] = []

    @checkpoint
    def numbers() -> list[int]:
        return [1, 2, 3]

    @resumable(store=MemoryStore(), key="mutate")
    def job() -> int:
        got = numbers()
        seen.append(list(got))
        got.append(99)  # the body changes what the step returned...
        flush()  # ...before the record is written
        if crash[0]:
            raise Crash
        return sum(got)

    with pytest.raises(Crash):
        job()
    with pytest.raises(Crash):
        job()  # a second replay gets a fresh, equal copy
    crash[0] = False
    assert job() == 105
    assert seen == [[1, 2, 3]] * 3


class Flaky(Exception):
    pass


@pytest.mark.parametrize("order", ["retry_outside", "retry_inside"])
def test_retries_around_a_step_never_shift_results(order: str) -> None:
    attempts: Counter[int] = Counter()
    crash = [True]

    def body(x: int) -> int:
        attempts[x] += 1
        if x in (10, 30) and attempts[x] == 1:
            raise Flaky(x)
        return x

    retry = tenacity.retry(stop=tenacity.stop_after_attempt(3), retry=tenacity.retry_if_exception_type(Flaky))
    step = retry(checkpoint(body)) if order == "retry_outside" else checkpoint(retry(body))

    @resumable(store=MemoryStore(), key=f"retry-{order}")
    def job() -> list[int]:
        out = [step(x) for x in (0, 10, 20, 30, 40, 50)]
        flush()
        if crash[0]:
            raise Crash
        return out

    with pytest.raises(Crash):
        job()
    before = Counter(attempts)
    crash[0] = False
    assert job() == [0, 10, 20, 30, 40, 50]
    assert attempts == before  # no completed call ran again
