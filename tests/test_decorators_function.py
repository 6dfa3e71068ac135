"""``@resumable`` and ``@checkpoint`` on plain (synchronous) functions."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import resumable as rs
from resumable import (
    FileStore,
    MemoryStore,
    NotSerializable,
    OutsideRun,
    ReplayMismatch,
    RunLocked,
    Store,
    checkpoint,
    current_run,
    current_step,
    restart_with,
    resumable,
    state,
)

# -- module-level callables (pickled by reference) -------------------------------------

MODULE_STORE = MemoryStore()


@checkpoint
def double(x: int, *, extra: int = 0) -> int:
    """Double x, then add extra."""
    return 2 * x + extra


@resumable(store=MODULE_STORE)
def total(values: list[int], scale: int = 1) -> int:
    """Sum doubled values."""
    return sum(double(v) for v in values) * scale


def _plain_double(x: int, *, extra: int = 0) -> int:
    """Double x, then add extra."""
    return 2 * x + extra


class Boom(Exception):
    pass


def _head(store: Store, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None, f"no record under {key!r}"
    return dict(json.loads(raw))


class Scenario:
    """A job of ``n`` steps that can be told to raise at step ``k`` (before it runs)."""

    def __init__(self, store: Store, key: str = "scenario") -> None:
        self.store = store
        self.calls: Counter[int] = Counter()
        self.fail_at: int | None = None

        @checkpoint
        def work(i: int) -> dict[str, int] | None:
            self.calls[i] += 1
            return None if i % 3 == 2 else {"i": i, "sq": i * i}

        @resumable(store=store, key=key)
        def job(n: int) -> list[Any]:
            out = []
            for i in range(n):
                if i == self.fail_at:
                    raise Boom(f"at {i}")
                out.append(work(i))
            return out

        self.job = job


# -- record and replay ------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 5, 9])
def test_interrupted_run_resumes_without_redoing_steps(k: int) -> None:
    reference = Scenario(MemoryStore())
    expected = reference.job(10)
    s = Scenario(MemoryStore())
    s.fail_at = k
    with pytest.raises(Boom):
        s.job(10)
    assert s.calls == Counter(range(k))
    s.fail_at = None
    assert s.job(10) == expected
    assert s.calls == Counter(range(10))  # every step ran exactly once
    assert _head(s.store, "scenario")["status"] == "finished"


def test_interrupted_twice() -> None:
    s = Scenario(MemoryStore())
    for k in (3, 7):
        s.fail_at = k
        with pytest.raises(Boom):
            s.job(10)
    s.fail_at = None
    assert s.job(10) == Scenario(MemoryStore()).job(10)
    assert s.calls == Counter(range(10))
    assert _head(s.store, "scenario")["attempts"] == 3


def test_a_resume_that_fails_before_any_step_keeps_the_recorded_results() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    mode = ["fail-after-steps"]

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        return i + 1

    @resumable(store=store, key="keeps")
    def job() -> list[int]:
        if mode[0] == "fail-before-steps":
            raise Boom("before")
        out = [step(0), step(1)]
        if mode[0] == "fail-after-steps":
            raise Boom("after")
        return out

    for mode[0] in ("fail-after-steps", "fail-before-steps", "fail-before-steps", "fail-after-steps"):
        with pytest.raises(Boom):
            job()
    mode[0] = "ok"
    assert job() == [1, 2]
    assert calls == Counter({0: 1, 1: 1})


def test_resume_from_a_file_store_in_a_new_store_object(tmp_path: Path) -> None:
    s = Scenario(FileStore(tmp_path))
    s.fail_at = 6
    with pytest.raises(Boom):
        s.job(8)
    fresh = Scenario(FileStore(tmp_path))  # nothing in memory carries over
    assert fresh.job(8) == Scenario(MemoryStore()).job(8)
    assert fresh.calls == Counter(range(6, 8))


def test_steps_outside_a_job_are_plain_calls() -> None:
    seen: list[Any] = []

    @checkpoint
    def step(x: int) -> int:
        seen.append((current_step(), current_run()))
        return x + 1

    assert step(1) == 2
    assert step(1) == 2
    assert seen == [(None, None), (None, None)]
    assert double(3, extra=1) == 7


def test_nested_steps_run_plainly() -> None:
    store = MemoryStore()
    calls: Counter[str] = Counter()
    numbers: list[int] = []

    @checkpoint
    def inner(x: int) -> int:
        calls["inner"] += 1
        step = current_step()
        assert step is not None
        numbers.append(step.number)
        return x * 10

    @checkpoint
    def outer(x: int) -> int:
        calls["outer"] += 1
        return inner(x) + inner(x + 1)

    fail = [True]

    @resumable(store=store, key="nested")
    def job() -> int:
        value = outer(1)
        if fail[0]:
            raise Boom
        return value + inner(5)

    with pytest.raises(Boom):
        job()
    assert numbers == [0, 0]  # the inner calls run as part of step 0
    assert _head(store, "nested")["units"]["done"] == 1
    fail[0] = False
    assert job() == 30 + 50
    assert calls == Counter(outer=1, inner=3)
    assert _head(store, "nested")["units"]["done"] == 2


# -- what decoration preserves -------------------------------------------------------


def test_metadata_and_signature_preserved() -> None:
    for decorated, name, doc in [(double, "double", "Double x"), (total, "total", "Sum doubled")]:
        assert decorated.__name__ == name
        assert decorated.__qualname__ == name
        assert decorated.__module__ == __name__
        assert decorated.__doc__ is not None
        assert decorated.__doc__.startswith(doc)
        assert not inspect.iscoroutinefunction(decorated)
        assert inspect.isfunction(decorated.__wrapped__)
        assert callable(decorated)
    assert inspect.signature(double) == inspect.signature(_plain_double)
    assert str(inspect.signature(total)) == "(values: 'list[int]', scale: 'int' = 1) -> 'int'"
    assert inspect.signature(total).bind([1]).arguments == {"values": [1]}


def test_option_forms_match_the_bare_form() -> None:
    @checkpoint(name="custom", durable=True)
    def step(a: int, b: str = "x") -> str:
        """Doc."""
        return b * a

    @resumable(store=MemoryStore(), flush_interval=0.5)
    def job(a: int) -> str:
        return step(a)

    assert step.__name__ == "step"
    assert step.__doc__ == "Doc."
    assert str(inspect.signature(step)) == "(a: 'int', b: 'str' = 'x') -> 'str'"
    assert job(2) == "xx"


def test_pickle_by_reference() -> None:
    for obj in (double, total):
        data = pickle.dumps(obj)
        assert b"double" in data or b"total" in data
        assert pickle.loads(data) is obj
    assert pickle.loads(pickle.dumps(double))(4) == 8


def test_generator_functions_are_not_steps() -> None:
    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        checkpoint(gen)
    with pytest.raises(TypeError, match="generator"):
        checkpoint(name="g")(gen)
    with pytest.raises(TypeError, match="generator"):
        checkpoint(agen)


def test_bad_options_are_refused() -> None:
    with pytest.raises(TypeError):
        checkpoint(durable="yes")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        checkpoint(name="")
    with pytest.raises(TypeError):
        resumable(store=42)  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        resumable(flush_interval=-1)


# -- finished runs, reset, key_for ---------------------------------------------------


def test_finished_run_returns_its_result_without_running_and_warns() -> None:
    s = Scenario(MemoryStore())
    first = s.job(4)
    with capture_logs() as logs:
        again = s.job(4)
    assert again == first
    assert s.calls == Counter(range(4))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "finished" in warnings[0]["event"]
    assert "reset" in warnings[0]["event"]
    assert warnings[0]["key"] == "scenario"


def test_run_logs_started_resumed_finished() -> None:
    s = Scenario(MemoryStore())
    s.fail_at = 2
    with capture_logs() as logs:
        with pytest.raises(Boom):
            s.job(4)
        s.fail_at = None
        s.job(4)
    events = [e["event"] for e in logs]
    assert events[0] == "run started"
    assert "run resumed" in events
    assert events[-1] == "run finished"
    resumed = next(e for e in logs if e["event"] == "run resumed")
    assert resumed["done"] == 2


def test_job_reset_starts_over() -> None:
    s = Scenario(MemoryStore(), key="reset-{n}")
    s.job(3)
    s.job(4)
    assert s.job.reset(3) is True
    assert s.store.get("reset-3") is None
    assert s.store.get("reset-4") is not None  # another run is untouched
    assert s.job.reset(3) is False
    s.job(3)
    assert s.calls == Counter({0: 3, 1: 3, 2: 3, 3: 1})


def test_module_reset_by_key() -> None:
    s = Scenario(MemoryStore())
    s.fail_at = 2
    with pytest.raises(Boom):
        s.job(4)
    assert rs.reset("scenario", store=s.store) is True
    assert s.store.keys() == []
    s.fail_at = None
    s.job(4)
    assert s.calls == Counter({0: 2, 1: 2, 2: 1, 3: 1})  # started over


def test_reset_of_a_live_run_is_refused() -> None:
    store = MemoryStore()
    errors: list[BaseException] = []

    @resumable(store=store, key="live")
    def job() -> int:
        try:
            rs.reset("live", store=store)
        except RunLocked as exc:
            errors.append(exc)
        return 1

    assert job() == 1
    assert len(errors) == 1


def test_key_for_names_the_record() -> None:
    assert total([1, 2], scale=3) == 18
    key = total.key_for([1, 2], 3)
    assert key.startswith(f"{__name__}.total-")
    assert _head(MODULE_STORE, key)["status"] == "finished"
    assert total.key_for([1, 2], 3) != total.key_for([2, 1], 3)


# -- restart_with and state ----------------------------------------------------------


def test_restart_with_calls_the_body_with_replaced_arguments() -> None:
    store = MemoryStore()
    bodies: list[tuple[int, str]] = []
    fetched: Counter[int] = Counter()
    fail_at: list[int | None] = [7]

    @checkpoint
    def fetch(page: int) -> str:
        fetched[page] += 1
        return f"p{page}"

    @resumable(store=store, key="crawl")
    def paged(cursor: int = 0, seen: tuple[str, ...] = ()) -> tuple[str, ...]:
        bodies.append((cursor, str(len(seen))))
        while cursor < 10:
            if cursor == fail_at[0]:
                raise Boom
            seen = (*seen, fetch(cursor))
            cursor += 1
            if cursor % 3 == 0:
                restart_with(cursor=cursor, seen=seen)
        return seen

    with pytest.raises(Boom):
        paged()
    head = _head(store, "crawl")
    assert head["epoch"] == 2  # resume points after 3 and 6
    assert head["units"]["done"] == 1  # the step after the last point
    # Results recorded before the point are gone from the record.
    assert store.keys("crawl(r)") == ["crawl(r)2.0"]
    assert [e[2] for e in json.loads(store.get("crawl(r)2.0") or b"")["entries"].values()] == ["p6"]
    fail_at[0] = None
    assert paged() == tuple(f"p{p}" for p in range(10))
    assert bodies == [(0, "0"), (6, "6")]  # called again with the saved arguments
    assert fetched == Counter(range(10))


def test_restart_with_keeps_other_arguments_of_the_resuming_call() -> None:
    store = MemoryStore()
    seen: list[tuple[int, str]] = []
    fail = [True]

    @resumable(store=store, key="keep", ignore=("note",))
    def job(cursor: int = 0, note: str = "") -> int:
        seen.append((cursor, note))
        restart_with(cursor=cursor + 5)
        if fail[0]:
            raise Boom
        return cursor

    with pytest.raises(Boom):
        job(0, note="first")
    fail[0] = False
    assert job(0, note="second") == 5
    assert seen == [(0, "first"), (5, "second")]


def test_restart_with_unknown_name_is_a_type_error() -> None:
    @resumable(store=MemoryStore())
    def job(cursor: int = 0) -> None:
        restart_with(page=3)

    with pytest.raises(TypeError, match="page"):
        job()


def test_restart_with_unencodable_argument() -> None:
    @resumable(store=MemoryStore())
    def job(cursor: Any = None) -> None:
        restart_with(cursor=threading.Lock())

    with pytest.raises(NotSerializable, match="restart_with"):
        job()


def test_helpers_outside_a_run() -> None:
    with pytest.raises(OutsideRun):
        state()
    with pytest.raises(OutsideRun):
        restart_with(x=1)
    with pytest.raises(OutsideRun):
        rs.flush()
    assert current_run() is None
    assert current_step() is None


def test_state_is_saved_at_resume_points() -> None:
    store = MemoryStore()
    seen: list[dict[str, Any]] = []
    fail = [True]

    @checkpoint
    def step(i: int) -> int:
        return i

    @resumable(store=store, key="stateful")
    def job(start: int = 0) -> dict[str, Any]:
        seen.append(dict(state()))
        for i in range(start, 6):
            state()["last"] = step(i)
            state()["count"] = state().get("count", 0) + 1
            if i == 2:
                restart_with(start=3)
            if i == 4 and fail[0]:
                raise Boom
        return dict(state())

    with pytest.raises(Boom):
        job()
    assert _head(store, "stateful")["state"] == {"last": 2, "count": 3}
    fail[0] = False
    assert job() == {"last": 5, "count": 6}
    assert seen == [{}, {"last": 2, "count": 3}]


def test_state_without_a_resume_point_starts_empty_and_is_redone() -> None:
    store = MemoryStore()
    seen: list[dict[str, Any]] = []
    fail = [True]

    @checkpoint
    def step(i: int) -> int:
        return i

    @resumable(store=store, key="nopoint")
    def job() -> dict[str, Any]:
        seen.append(dict(state()))
        for i in range(3):
            state()["sum"] = state().get("sum", 0) + step(i)
        if fail[0]:
            raise Boom
        return dict(state())

    with pytest.raises(Boom):
        job()
    fail[0] = False
    assert job() == {"sum": 3}
    assert seen == [{}, {}]


def test_state_holds_non_json_values() -> None:
    store = MemoryStore()
    fail = [True]

    @resumable(store=store, key="pickled-state")
    def job(cursor: int = 0) -> Any:
        if cursor == 0:
            state()["seen"] = {1, 2}
            restart_with(cursor=1)
            if fail[0]:
                raise Boom
        return state()["seen"]

    with pytest.raises(Boom):
        job()
    fail[0] = False
    assert job() == {1, 2}


# -- current_step and durable steps --------------------------------------------------


def test_current_step_tells_number_attempt_and_idempotency_key() -> None:
    store = MemoryStore()
    seen: list[tuple[str, int, int, str]] = []
    fail = [True]

    @checkpoint(name="flaky")
    def flaky(i: int) -> int:
        step = current_step()
        assert step is not None
        seen.append((step.name, step.number, step.attempt, step.idempotency_key))
        if i == 2 and fail[0]:
            raise Boom
        return i

    @resumable(store=store, key="cs")
    def job() -> list[int]:
        run = current_run()
        assert run is not None
        assert run.key == "cs"
        return [flaky(i) for i in range(4)]

    with pytest.raises(Boom):
        job()
    fail[0] = False
    assert job() == [0, 1, 2, 3]
    first, second = seen[:3], seen[3:]
    assert [s[1] for s in first] == [0, 1, 2]
    assert [s[1] for s in second] == [2, 3]
    assert first[2][2] == 1
    assert second[0][2] == 2  # the step that raised runs again as attempt 2
    assert second[0][3] == first[2][3]  # with the same idempotency key
    assert second[1][2] == 1
    assert len({s[3] for s in seen}) == 4
    assert all(s[3].startswith("cs:") for s in seen)


def test_durable_step_writes_its_intent_before_the_body_and_completion_before_return() -> None:
    store = MemoryStore()
    inside: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []

    @checkpoint(durable=True)
    def charge(amount: int) -> str:
        inside.append(_head(store, "durable"))
        return f"charged {amount}"

    @resumable(store=store, key="durable", flush_interval=3600)
    def job() -> list[str]:
        out = []
        for amount in (10, 20):
            out.append(charge(amount))
            after.append(_head(store, "durable"))
        return out

    assert job() == ["charged 10", "charged 20"]
    assert [list(h["intents"]) for h in inside] == [["0"], ["1"]]
    assert inside[0]["intents"]["0"][0].endswith("charge")
    assert [h["units"]["done"] for h in after] == [1, 2]  # written before it returned
    assert [h["intents"] for h in after] == [{}, {}]


def test_interrupted_durable_step_runs_again_as_attempt_two() -> None:
    store = MemoryStore()
    seen: list[tuple[int, int, str]] = []
    interrupt = [True]

    @checkpoint(durable=True)
    def send(i: int) -> int:
        step = current_step()
        assert step is not None
        seen.append((i, step.attempt, step.idempotency_key))
        if i == 1 and interrupt[0]:
            raise KeyboardInterrupt
        return i

    @resumable(store=store, key="send")
    def job() -> list[int]:
        return [send(i) for i in range(3)]

    with pytest.raises(KeyboardInterrupt):
        job()
    interrupt[0] = False
    assert job() == [0, 1, 2]
    assert [(i, a) for i, a, _ in seen] == [(0, 1), (1, 1), (1, 2), (2, 1)]
    assert seen[1][2] == seen[2][2]


# -- exceptions ----------------------------------------------------------------------


def test_a_step_that_raises_is_not_recorded_and_runs_again() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    fail = [True]

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        if i == 1 and fail[0]:
            raise Boom
        return i

    @resumable(store=store, key="raises", flush_interval=3600)
    def job() -> list[int]:
        out = [step(0)]
        try:
            out.append(step(1))
        except Boom:
            out.append(-1)
        out.append(step(2))
        if fail[0]:
            raise ValueError("after")
        return out

    with pytest.raises(ValueError, match="after"):
        job()
    head = _head(store, "raises")
    assert head["units"]["done"] == 3
    assert list(head["holes"]) == ["1"]
    assert "ValueError: after" in head["error"]
    fail[0] = False
    assert job() == [0, 1, 2]
    assert calls == Counter({0: 1, 1: 2, 2: 1})


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit])
def test_interruptions_are_reraised_and_never_recorded(interruption: type[BaseException]) -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    stop = [True]

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        if i == 2 and stop[0]:
            raise interruption
        return i

    @resumable(store=store, key="interrupted", flush_interval=3600)
    def job() -> list[int]:
        return [step(i) for i in range(4)]

    with pytest.raises(interruption):
        job()
    head = _head(store, "interrupted")  # completed progress was flushed
    assert head["status"] == "running"
    assert head["error"] is None
    stop[0] = False
    assert job() == [0, 1, 2, 3]
    assert calls == Counter({0: 1, 1: 1, 2: 2, 3: 1})


def test_unencodable_result_raises_not_serializable_naming_the_step() -> None:
    store = MemoryStore()
    calls: Counter[str] = Counter()

    @checkpoint(name="make-lock")
    def make_lock() -> Any:
        calls["body"] += 1
        return threading.Lock()

    @checkpoint
    def first() -> int:
        return 1

    @resumable(store=store, key="unencodable")
    def job() -> Any:
        first()
        return make_lock()

    with pytest.raises(NotSerializable) as info:
        job()
    assert "make-lock" in str(info.value)
    assert "#1" in str(info.value)
    assert "lock" in info.value.value_type.__name__.lower()
    assert calls["body"] == 1
    assert _head(store, "unencodable")["units"]["done"] == 1  # only the step before


def test_unencodable_job_result() -> None:
    @resumable(store=MemoryStore())
    def job() -> Any:
        return threading.Lock()

    with pytest.raises(NotSerializable, match="job"):
        job()


# -- ReplayMismatch --------------------------------------------------------------------


class Versions:
    """A job whose steps depend on a code version, to simulate a change between runs."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.calls: Counter[str] = Counter()
        self.version = 1
        self.fail = True

        def make(name: str, result: Any) -> Any:
            @checkpoint(name=name)
            def step(i: int) -> Any:
                self.calls[name] += 1
                return result

            return step

        self.steps = {n: make(n, None if n.startswith("none") else n.upper()) for n in ["a", "b", "c", "new"]}
        self.steps.update({n: make(n, None) for n in ["none-a", "none-b"]})


def test_renamed_step_with_a_recorded_result_mismatches_at_its_position() -> None:
    v = Versions()

    @resumable(store=v.store, key="renamed")
    def job() -> list[Any]:
        out = [v.steps["a"](0), v.steps["a" if v.version == 1 else "b"](1), v.steps["c"](2)]
        if v.fail:
            raise Boom
        return [*out, v.steps["new"](3)]

    with pytest.raises(Boom):
        job()
    v.version, v.fail = 2, False
    v.calls.clear()
    with capture_logs() as logs, pytest.raises(ReplayMismatch) as info:
        job()
    assert info.value.position == 1
    assert info.value.recorded == "a"
    assert info.value.called == "b"
    assert "'a'" in str(info.value)
    assert "'b'" in str(info.value)
    assert "step 1" in str(info.value)
    assert v.calls == Counter()  # neither the new step nor anything else ran
    assert any(e["event"] == "replay mismatch" for e in logs)
    # The record is kept: the old code resumes it.
    v.version = 1
    assert job() == ["A", "A", "C", "NEW"]
    assert v.calls == Counter(new=1)


def test_renamed_none_steps_mismatch_before_new_work() -> None:
    v = Versions()

    @resumable(store=v.store, key="none-renamed")
    def job() -> str:
        for i in range(5):
            v.steps["none-a" if v.version == 1 else "none-b"](i)
        if v.fail:
            raise Boom
        return str(v.steps["new"](5))

    with pytest.raises(Boom):
        job()
    assert len(v.store.get("none-renamed") or b"") < 1000
    v.version, v.fail = 2, False
    v.calls.clear()
    with pytest.raises(ReplayMismatch) as info:
        job()
    assert info.value.position <= 5
    assert v.calls == Counter()  # no step body ran: not the renamed ones, not the new one


def test_fewer_steps_than_recorded_mismatch_at_the_end() -> None:
    v = Versions()

    @resumable(store=v.store, key="fewer")
    def job() -> str:
        for i in range(5 if v.version == 1 else 3):
            v.steps["none-a"](i)
        if v.fail:
            raise Boom
        return "done"

    with pytest.raises(Boom):
        job()
    v.version, v.fail = 2, False
    with pytest.raises(ReplayMismatch, match="5"):
        job()
    assert _head(v.store, "fewer")["status"] == "running"  # not marked finished


def test_renamed_none_steps_mismatch_even_when_the_job_ends_at_the_watermark() -> None:
    v = Versions()

    @resumable(store=v.store, key="none-at-end")
    def job() -> str:
        for i in range(5):
            v.steps["none-a" if v.version == 1 else "none-b"](i)
        v.steps["c"](5)
        if v.fail:
            raise Boom
        return "done"

    with pytest.raises(Boom):
        job()
    v.version, v.fail = 2, False
    with pytest.raises(ReplayMismatch):
        job()


def test_a_failed_step_renamed_mismatches() -> None:
    v = Versions()

    @resumable(store=v.store, key="hole-renamed")
    def job() -> list[Any]:
        out = [v.steps["a"](0)]
        with contextlib.suppress(Boom):
            out.append(v.steps["b" if v.version == 1 else "c"](1))
        out.append(v.steps["a"](2))
        if v.fail:
            raise Boom
        return out

    original = v.steps["b"]

    @checkpoint(name="b")
    def failing_b(i: int) -> Any:
        raise Boom

    v.steps["b"] = failing_b
    with pytest.raises(Boom):
        job()
    v.steps["b"] = original
    v.version, v.fail = 2, False
    v.calls.clear()
    with pytest.raises(ReplayMismatch) as info:
        job()
    assert (info.value.position, info.value.recorded, info.value.called) == (1, "b", "c")
    assert v.calls == Counter()


# -- RunLocked ---------------------------------------------------------------------------


def test_run_locked_when_the_same_key_runs_in_another_thread() -> None:
    store = MemoryStore()
    entered = threading.Event()
    release = threading.Event()
    results: list[Any] = []

    @resumable(store=store, key="busy")
    def job() -> str:
        entered.set()
        assert release.wait(30)
        return "first"

    thread = threading.Thread(target=lambda: results.append(job()))
    thread.start()
    try:
        assert entered.wait(30)
        with pytest.raises(RunLocked) as info:
            job()
        assert info.value.key == "busy"
    finally:
        release.set()
        thread.join(30)
    assert results == ["first"]
    assert job() == "first"  # the finished run, now unlocked


_LOCKJOB = textwrap.dedent(
    """
    import sys
    from resumable import FileStore, checkpoint, resumable

    def make(path, hold=False):
        @checkpoint
        def step(i):
            return i

        # Jobs made by a factory are told apart by what they capture (hold differs
        # between the two processes): key= names them one job.
        @resumable(store=FileStore(path), key="lockjob-{n}")
        def job(n):
            out = [step(i) for i in range(n)]
            if hold:
                print("holding", flush=True)
                sys.stdin.read()
            return out

        return job
    """
)


def test_run_locked_when_the_same_key_runs_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lockjob_mod.py").write_text(_LOCKJOB)
    store_dir = tmp_path / "store"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, lockjob_mod; lockjob_mod.make(sys.argv[1], hold=True)(3)",
            str(store_dir),
        ],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "holding"
            monkeypatch.syspath_prepend(str(tmp_path))
            import lockjob_mod  # type: ignore[import-not-found]

            job = lockjob_mod.make(store_dir)
            with pytest.raises(RunLocked):
                job(3)
            assert job(2) == [0, 1]  # another run of the same job is free
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    assert job(3) == [0, 1, 2]  # the lock died with the process


# -- threads ---------------------------------------------------------------------------


def test_step_in_a_thread_without_the_run_context_runs_unrecorded_and_warns_once() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()

    @checkpoint(name="threaded-step-unrecorded")
    def step(i: int) -> int:
        calls[i] += 1
        return i

    @resumable(store=store, key="threads")
    def job() -> list[int]:
        results: list[int] = []
        threads = [threading.Thread(target=lambda i=i: results.append(step(i))) for i in range(3)]
        for t in threads:
            t.start()
            t.join()
        results.append(step(10))  # in the job's own thread: recorded
        return results

    with capture_logs() as logs:
        assert job() == [0, 1, 2, 10]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["step"] == "threaded-step-unrecorded"
    assert "thread" in warnings[0]["event"]
    assert _head(store, "threads")["units"]["done"] == 1
    assert calls == Counter({0: 1, 1: 1, 2: 1, 10: 1})


def test_step_in_a_thread_with_a_copied_context_is_recorded() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    fail = [True]

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        return i * 7

    @resumable(store=store, key="ctx-threads")
    def job() -> list[int]:
        results: dict[int, int] = {}

        def work(i: int) -> None:
            results[i] = step(i)

        threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if fail[0]:
            raise Boom
        return [results[i] for i in range(4)]

    with pytest.raises(Boom):
        job()
    fail[0] = False
    assert job() == [0, 7, 14, 21]
    assert calls == Counter(range(4))
