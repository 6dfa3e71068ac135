"""Generator jobs: items as units, resume, send/throw/close, steps, resume points."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from resumable import (
    CheckpointCorrupted,
    MemoryStore,
    ReplayMismatch,
    RunLocked,
    Store,
    checkpoint,
    current_run,
    flush,
    restart_with,
    resumable,
    state,
)
from resumable import _run as run_module
from resumable._record import load_head
from tests.crashing import Boom, Crash, FreezableStore


@pytest.fixture
def store() -> FreezableStore:
    return FreezableStore()


def head_of(store: Store, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None, f"no record under {key!r}"
    return json.loads(raw)


# -- items: order, return value, resume -----------------------------------------------


def test_items_in_order_and_stop_iteration_carries_the_return_value(store: FreezableStore) -> None:
    @resumable(store=store)
    def count(n: int) -> Generator[int, None, str]:
        yield from range(n)
        return f"counted {n}"

    gen = count(4)
    items = [next(gen) for _ in range(4)]
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert items == [0, 1, 2, 3]
    assert stop.value.value == "counted 4"
    head = head_of(store, count.key_for(4))
    assert head["status"] == "finished"
    assert head["items"]["done"] == 4


def test_calling_the_job_starts_nothing_until_the_first_next(store: FreezableStore) -> None:
    started: list[int] = []

    @resumable(store=store)
    def gen(n: int) -> Iterator[int]:
        started.append(n)
        yield n

    g = gen(1)
    assert started == []
    assert store.keys() == []
    assert list(g) == [1]
    assert started == [1]


def test_close_after_item_k_resumes_with_the_item_in_hand(store: FreezableStore) -> None:
    produced: list[int] = []

    @resumable(store=store)
    def count(n: int) -> Iterator[int]:
        for i in range(n):
            produced.append(i)
            yield i

    first = []
    for item in count(10):
        first.append(item)
        if item == 3:
            break  # item 3 is in hand: not completed
    assert first == [0, 1, 2, 3]
    head = head_of(store, count.key_for(10))
    assert head["status"] == "running"
    assert head["items"]["done"] == 3  # items 0, 1, 2: the consumer asked past them

    produced.clear()
    assert list(count(10)) == [3, 4, 5, 6, 7, 8, 9]
    # The body ran again from its start: the consumed items were produced and dropped.
    assert produced == list(range(10))
    assert head_of(store, count.key_for(10))["status"] == "finished"


def test_items_the_consumer_asked_past_are_never_yielded_again(store: FreezableStore) -> None:
    @resumable(store=store)
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    gen = count(6)
    assert [next(gen), next(gen)] == [0, 1]
    gen.close()
    gen = count(6)
    assert next(gen) == 1  # the item in hand at close comes again
    assert next(gen) == 2
    gen.close()
    assert list(count(6)) == [2, 3, 4, 5]


def test_send_values_reach_the_body(store: FreezableStore) -> None:
    received: list[Any] = []

    @resumable(store=store)
    def echo(n: int) -> Generator[int, str, None]:
        for i in range(n):
            got = yield i
            received.append(got)

    gen = echo(3)
    assert next(gen) == 0
    assert gen.send("a") == 1
    assert gen.send("b") == 2
    with pytest.raises(StopIteration):
        gen.send("c")
    assert received == ["a", "b", "c"]


def test_send_a_value_to_a_fresh_job_generator_is_a_type_error(store: FreezableStore) -> None:
    @resumable(store=store)
    def echo() -> Generator[int, str, None]:
        yield 1

    with pytest.raises(TypeError):
        echo().send("x")


# -- throw ---------------------------------------------------------------------------


def test_throw_handled_by_the_body_continues_the_iteration(store: FreezableStore) -> None:
    seen: list[str] = []

    @resumable(store=store)
    def tolerant(n: int) -> Iterator[int]:
        for i in range(n):
            try:
                yield i
            except Boom as exc:
                seen.append(f"handled {exc} at {i}")

    gen = tolerant(5)
    assert next(gen) == 0
    assert next(gen) == 1
    assert gen.throw(Boom("x")) == 2  # the body handled it and went on
    assert list(gen) == [3, 4]
    assert seen == ["handled x at 1"]
    assert head_of(store, tolerant.key_for(5))["status"] == "finished"


def test_throw_handled_then_resume_does_not_repeat_items_asked_past(store: FreezableStore) -> None:
    @resumable(store=store)
    def tolerant(n: int) -> Iterator[int]:
        for i in range(n):
            with contextlib.suppress(Boom):
                yield i

    gen = tolerant(10)
    got = [next(gen), next(gen), next(gen)]  # 0, 1, 2 (2 in hand)
    got.append(gen.throw(Boom()))  # handled: the body yields 3
    got.append(next(gen))  # asked past 3: 4
    got.append(next(gen))  # asked past 4: 5 in hand
    gen.close()
    assert got == [0, 1, 2, 3, 4, 5]
    # Only the item in hand (5) may come again; 4 was asked past, so was 3.
    assert list(tolerant(10)) == [5, 6, 7, 8, 9]


def test_throw_unhandled_ends_the_run_with_the_error_and_saves_progress(store: FreezableStore) -> None:
    @resumable(store=store)
    def fragile(n: int) -> Iterator[int]:
        yield from range(n)

    gen = fragile(8)
    assert [next(gen), next(gen), next(gen)] == [0, 1, 2]
    with pytest.raises(Boom, match="stop"):
        gen.throw(Boom("stop"))
    head = head_of(store, fragile.key_for(8))
    assert head["status"] == "running"
    assert head["items"]["done"] == 2  # the item in hand when thrown at is not completed
    assert "Boom: stop" in head["error"]
    with pytest.raises(StopIteration):
        next(gen)  # the generator is finished, as an undecorated one would be
    assert list(fragile(8)) == [2, 3, 4, 5, 6, 7]


# -- close ---------------------------------------------------------------------------


def test_close_runs_the_body_finally_and_does_not_complete_the_item(store: FreezableStore) -> None:
    events: list[str] = []

    @resumable(store=store)
    def guarded(n: int) -> Iterator[int]:
        try:
            yield from range(n)
        except GeneratorExit:
            events.append("GeneratorExit")
            raise
        finally:
            events.append("finally")

    gen = guarded(5)
    assert next(gen) == 0
    assert next(gen) == 1
    gen.close()
    assert events == ["GeneratorExit", "finally"]
    head = head_of(store, guarded.key_for(5))
    assert head["items"]["done"] == 1
    assert head["status"] == "running"
    assert head["error"] is None  # closing is an interruption, not a failure
    gen.close()  # closing twice is harmless, as for any generator
    assert events == ["GeneratorExit", "finally"]
    events.clear()
    assert list(guarded(5)) == [1, 2, 3, 4]
    assert events == ["finally"]


def test_close_before_the_first_item_leaves_no_record(store: FreezableStore) -> None:
    @resumable(store=store)
    def count() -> Iterator[int]:
        yield 1

    count().close()
    assert store.keys() == []


def test_contextlib_closing_releases_the_run_at_once(store: FreezableStore) -> None:
    @resumable(store=store)
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    with contextlib.closing(count(5)) as gen:
        assert next(gen) == 0
        assert next(gen) == 1
    assert not store.is_locked(count.key_for(5))
    assert list(count(5)) == [1, 2, 3, 4]


# -- exceptions in the consumer loop ------------------------------------------------


def test_exception_in_the_consumer_loop_leaves_a_resumable_run(store: FreezableStore) -> None:
    @resumable(store=store)
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    def consume() -> None:
        for item in count(6):
            if item == 3:
                raise Boom(item)

    with pytest.raises(Boom):
        consume()
    # The for loop dropped its generator while unwinding: closed, progress written.
    head = head_of(store, count.key_for(6))
    assert head["items"]["done"] == 3
    assert list(count(6)) == [3, 4, 5]


def test_a_job_generator_kept_alive_after_a_consumer_error_holds_its_run(store: FreezableStore) -> None:
    @resumable(store=store)
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    gen = count(6)

    def consume() -> None:
        for item in gen:
            if item == 2:
                raise Boom

    with pytest.raises(Boom):
        consume()
    # `gen` is still referenced, so it is not closed: the run is live and locked.
    with pytest.raises(RunLocked):
        next(count(6))
    gen.close()
    assert list(count(6)) == [2, 3, 4, 5]


def test_body_exception_ends_the_run_and_the_next_call_resumes(store: FreezableStore) -> None:
    fail = [True]

    @resumable(store=store)
    def flaky(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 4 and fail[0]:
                fail[0] = False
                raise Boom("page 4 failed")
            yield i

    got = []
    with pytest.raises(Boom):
        got.extend(flaky(7))
    assert got == [0, 1, 2, 3]
    head = head_of(store, flaky.key_for(7))
    # the consumer asked for item 4, so 3 is consumed
    assert head["items"]["done"] == 4
    assert "page 4 failed" in head["error"]
    assert list(flaky(7)) == [4, 5, 6]


# -- steps inside generator jobs ----------------------------------------------------


def test_steps_inside_a_generator_are_replayed_on_resume(store: FreezableStore) -> None:
    executions: Counter[int] = Counter()

    @checkpoint
    def enrich(i: int) -> dict[str, int]:
        executions[i] += 1
        return {"i": i, "sq": i * i}

    @resumable(store=store)
    def enriched(n: int) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield enrich(i)

    first = []
    for item in enriched(10):
        first.append(item["i"])
        if item["i"] == 5:
            break
    assert first == [0, 1, 2, 3, 4, 5]
    assert executions == Counter(range(6))
    rest = [item["i"] for item in enriched(10)]
    assert rest == [5, 6, 7, 8, 9]
    # Steps 0..5 completed and were replayed from the record, not run again.
    assert executions == Counter(range(10))


def test_steps_returning_none_are_replayed_too(store: FreezableStore) -> None:
    executions: list[int] = []

    @checkpoint
    def touch(i: int) -> None:
        executions.append(i)

    @resumable(store=store)
    def touched(n: int) -> Iterator[int]:
        for i in range(n):
            touch(i)
            yield i

    gen = touched(6)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert list(touched(6)) == [2, 3, 4, 5]
    assert executions == [0, 1, 2, 3, 4, 5]


# -- resume points -------------------------------------------------------------------


def test_restart_with_calls_the_body_with_the_new_arguments(store: FreezableStore) -> None:
    calls: list[tuple[str, int]] = []

    @resumable(store=store)
    def pages(name: str, cursor: int = 0) -> Iterator[str]:
        calls.append((name, cursor))
        while cursor < 5:
            for j in range(3):
                yield f"{name}{cursor}.{j}"
            cursor += 1
            restart_with(cursor=cursor)

    gen = pages("p")
    got = [next(gen) for _ in range(8)]  # pages 0 and 1, then p2.0 and p2.1 (in hand)
    gen.close()
    assert got[-1] == "p2.1"
    assert calls == [("p", 0)]
    head = head_of(store, pages.key_for("p"))
    assert head["args"] == {"cursor": 2}
    assert head["items"] == {"done": 1, "before": 6, "sink": None}
    rest = list(pages("p"))
    # Called again at cursor 2; only p2.0, consumed since that point, is skipped.
    assert calls == [("p", 0), ("p", 2)]
    assert rest == ["p2.1", "p2.2", "p3.0", "p3.1", "p3.2", "p4.0", "p4.1", "p4.2"]


def test_restart_with_skips_only_items_consumed_since_the_point(store: FreezableStore) -> None:
    produced: list[int] = []

    @resumable(store=store)
    def pages(cursor: int = 0) -> Iterator[int]:
        while cursor < 100:
            for i in range(cursor, cursor + 10):
                produced.append(i)
                yield i
            cursor += 10
            restart_with(cursor=cursor)

    gen = pages()
    for _ in range(57):
        next(gen)  # 0..56, 56 in hand
    gen.close()
    produced.clear()
    assert list(pages()) == list(range(56, 100))
    # The resumed body produced page 50..59 again, not pages 0..49.
    assert produced == list(range(50, 100))


def test_steps_before_a_resume_point_are_not_replayed_after_it(store: FreezableStore) -> None:
    fetched: list[int] = []

    @checkpoint
    def fetch(cursor: int) -> list[int]:
        fetched.append(cursor)
        return [cursor * 10 + j for j in range(4)]

    @resumable(store=store)
    def listing(cursor: int = 0) -> Iterator[int]:
        while cursor < 5:
            page = fetch(cursor)
            yield from page
            cursor += 1
            restart_with(cursor=cursor)

    gen = listing()
    got = [next(gen) for _ in range(10)]  # pages 0, 1 and items 20, 21 (21 in hand)
    gen.close()
    assert got[-1] == 21
    assert fetched == [0, 1, 2]
    rest = list(listing())
    assert rest == [21, 22, 23, 30, 31, 32, 33, 40, 41, 42, 43]
    # Page 2 was recorded in this epoch: replayed, not fetched again.
    assert fetched == [0, 1, 2, 3, 4]


def test_state_is_saved_at_resume_points(store: FreezableStore) -> None:
    seen_state: list[dict[str, Any]] = []

    @resumable(store=store)
    def pages(cursor: int = 0) -> Iterator[int]:
        seen_state.append(dict(state()))
        while cursor < 4:
            yield cursor
            state()["pages"] = state().get("pages", 0) + 1
            state()["last"] = cursor
            cursor += 1
            restart_with(cursor=cursor)

    gen = pages()
    assert [next(gen), next(gen), next(gen)] == [0, 1, 2]
    gen.close()
    assert list(pages()) == [2, 3]
    assert seen_state == [{}, {"pages": 2, "last": 1}]


def _record_keys(store: Store, key: str) -> list[str]:
    return [k for k in store.keys(key) if k == key or k.startswith(f"{key}(r)")]


def test_record_stays_small_over_many_resume_points(store: FreezableStore) -> None:
    @checkpoint
    def fetch(cursor: int) -> list[int]:
        return [cursor, cursor + 1]

    @resumable(store=store, flush_interval=0)
    def pages(stop: int, cursor: int = 0) -> Iterator[int]:
        while cursor < stop:
            yield from fetch(cursor)
            cursor += 2
            restart_with(cursor=cursor)
            state()["cursor"] = cursor

    def head_size_after(stop: int, consumed: int) -> tuple[int, list[str]]:
        gen = pages(stop)
        for _ in range(consumed):
            next(gen)
        gen.close()
        key = pages.key_for(stop)
        raw = store.get(key)
        assert raw is not None
        keys = _record_keys(store, key)
        return len(raw), keys

    small, small_keys = head_size_after(20, 11)
    large, large_keys = head_size_after(4000, 3001)
    assert large < 2048
    # A few more digits in the counters, no more.
    assert large - small < 40, (small, large)
    key = pages.key_for(4000)
    epoch = load_head(store.get(key) or b"", "s", key).epoch
    assert epoch == 1500
    # Only the head and the chunk of the current epoch: none left from old epochs.
    assert large_keys == [key, f"{key}(r){epoch}.0"]
    assert len(small_keys) == 2


def test_finished_generator_run_yields_nothing_and_warns(store: FreezableStore) -> None:
    runs: list[int] = []

    @resumable(store=store)
    def count(n: int) -> Generator[int, None, int]:
        runs.append(n)
        yield from range(n)
        return n * 10

    assert list(count(3)) == [0, 1, 2]
    with capture_logs() as logs:
        gen = count(3)
        with pytest.raises(StopIteration) as stop:
            next(gen)
    assert stop.value.value == 30  # the recorded result
    assert runs == [3]  # the body did not run again
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "already finished" in warnings[0]["event"]
    assert "reset" in warnings[0]["event"]
    assert warnings[0]["key"] == count.key_for(3)
    count.reset(3)
    assert list(count(3)) == [0, 1, 2]
    assert runs == [3, 3]


# -- methods -----------------------------------------------------------------------


_METHOD_STORE = MemoryStore()


class Catalog:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.fetched: list[int] = []  # changes as the job runs: not what names the run

    def __resumable_key__(self) -> str:
        return self.prefix

    @resumable(store=_METHOD_STORE)
    def listing(self, pages: int, cursor: int = 0) -> Iterator[str]:
        while cursor < pages:
            self.fetched.append(cursor)
            yield f"{self.prefix}-{cursor}a"
            yield f"{self.prefix}-{cursor}b"
            cursor += 1
            restart_with(cursor=cursor)

    @resumable(store=_METHOD_STORE)
    @staticmethod
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    @resumable(store=_METHOD_STORE)
    @classmethod
    def labels(cls, n: int) -> Iterator[str]:
        for i in range(n):
            yield f"{cls.__name__}{i}"


def test_instance_method_generator_job() -> None:
    catalog = Catalog("x")
    gen = catalog.listing(3)
    assert [next(gen), next(gen), next(gen)] == ["x-0a", "x-0b", "x-1a"]
    gen.close()
    assert list(catalog.listing(3)) == ["x-1a", "x-1b", "x-2a", "x-2b"]
    assert catalog.fetched == [0, 1, 1, 2]


def test_static_and_class_method_generator_jobs() -> None:
    gen = Catalog.numbers(4)
    assert next(gen) == 0
    assert next(gen) == 1
    gen.close()
    assert list(Catalog.numbers(4)) == [1, 2, 3]
    gen2 = Catalog.labels(3)
    assert next(gen2) == "Catalog0"
    assert next(gen2) == "Catalog1"
    gen2.close()
    assert list(Catalog.labels(3)) == ["Catalog1", "Catalog2"]


# -- determinism checks ------------------------------------------------------------


def test_replay_mismatch_when_the_resumed_generator_yields_fewer_items(store: FreezableStore) -> None:
    length = [10]

    @resumable(store=store)
    def shrinking() -> Iterator[int]:
        yield from range(length[0])

    gen = shrinking()
    for _ in range(7):
        next(gen)
    gen.close()  # 6 consumed
    length[0] = 4
    with pytest.raises(ReplayMismatch) as info:
        list(shrinking())
    assert "4 items" in str(info.value)
    assert "6" in str(info.value)


def test_replay_mismatch_when_a_resume_point_comes_before_the_recorded_items(store: FreezableStore) -> None:
    size = [5]

    @resumable(store=store)
    def pages(cursor: int = 0) -> Iterator[int]:
        while cursor < 3:
            yield from range(size[0])
            cursor += 1
            restart_with(cursor=cursor)

    gen = pages()
    for _ in range(4):
        next(gen)
    gen.close()  # 3 items of page 0 consumed
    size[0] = 2
    with pytest.raises(ReplayMismatch, match="resume point"):
        list(pages())


# -- the flusher against resume points ---------------------------------------------


class GateStore(FreezableStore):
    """Blocks the flusher thread inside its next write of a head, until released."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def set(self, key: str, value: bytes) -> None:
        if self.armed and "(" not in key and threading.current_thread() is not threading.main_thread():
            self.armed = False
            self.entered.set()
            self.release.wait(10)
        super().set(key, value)


def test_resume_point_during_a_background_write_keeps_the_record_readable() -> None:
    store = GateStore()

    @checkpoint
    def fetch(cursor: int) -> list[int]:
        return [cursor * 10 + j for j in range(3)]

    @resumable(store=store, flush_interval=3600)
    def listing(cursor: int = 0) -> Iterator[int]:
        while cursor < 4:
            page = fetch(cursor)
            if cursor == 1 and not store.entered.is_set():
                store.armed = True
                run = current_run()
                assert run is not None
                run.request_flush()  # the flusher writes epoch 1 (with its chunk)...
                assert store.entered.wait(10)
            yield from page
            cursor += 1
            restart_with(cursor=cursor)  # ...while the job moves to epoch 2
            if cursor == 2 and not store.release.is_set():
                store.release.set()
                run = current_run()
                assert run is not None
                assert run._flusher is not None
                flusher = run._flusher
                with flusher._cond:  # until the gated write (and its clean-up) is over
                    assert flusher._cond.wait_for(lambda: flusher._written >= 1, 10)
                store.frozen = True  # the process dies here
                raise Crash

    with pytest.raises(Crash):
        list(listing())
    store.frozen = False
    assert list(listing()) == [10, 11, 12, 20, 21, 22, 30, 31, 32]


def test_resume_point_right_after_a_background_snapshot_replays_the_right_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = FreezableStore()
    entered, release = threading.Event(), threading.Event()
    armed = [False]
    # The flusher's snapshot of the run, whatever its name in this version.
    name = "_snapshot" if hasattr(run_module.Run, "_snapshot") else "snapshot"
    original = getattr(run_module.Run, name)

    def snapshot(self: run_module.Run, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if armed[0] and threading.current_thread() is not threading.main_thread():
            armed[0] = False
            entered.set()
            release.wait(10)
        return out

    monkeypatch.setattr(run_module.Run, name, snapshot)

    @checkpoint
    def fetch(cursor: int) -> list[int]:
        return [cursor * 10 + j for j in range(3)]

    @resumable(store=store, flush_interval=3600, key="listing-{cursor}")
    def listing(cursor: int = 0) -> Iterator[int]:
        while cursor < 4:
            page = fetch(cursor)
            if cursor == 1 and not entered.is_set():
                armed[0] = True
                run = current_run()
                assert run is not None
                run.request_flush()  # the flusher snapshots epoch 1...
                assert entered.wait(10)
            yield from page
            cursor += 1
            restart_with(cursor=cursor)  # ...and the job moves to epoch 2 meanwhile
            if cursor == 2 and not release.is_set():
                release.set()
                run = current_run()
                assert run is not None
                fetch(cursor)  # epoch 2, step 0: [20, 21, 22]
                run.flush()
                store.frozen = True  # the process dies here
                raise Crash

    with pytest.raises(Crash):
        list(listing())
    store.frozen = False
    try:
        rest = list(listing())
    except CheckpointCorrupted:
        rest = ["corrupt"]
    assert rest == [20, 21, 22, 30, 31, 32]


class DyingAfterHeadStore(FreezableStore):
    """Dies right after the head of a given epoch lands: the clean-up after it never runs."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def set(self, key: str, value: bytes) -> None:
        super().set(key, value)
        if "(" not in key and not self.frozen and json.loads(value)["epoch"] == self.epoch:
            self.frozen = True  # the process dies before deleting the old epoch's chunks
            self.epoch = -1


def test_no_chunks_of_old_epochs_are_left_after_a_crash_between_head_and_clean_up() -> None:
    store = DyingAfterHeadStore(epoch=3)

    @checkpoint
    def fetch(cursor: int) -> list[int]:
        return [cursor * 10, cursor * 10 + 1]

    @resumable(store=store, flush_interval=3600)
    def listing(cursor: int = 0) -> Iterator[int]:
        while cursor < 6:
            page = fetch(cursor)
            flush()  # the page is recorded in this epoch's chunk
            if store.frozen:
                raise Crash
            yield from page
            cursor += 1
            restart_with(cursor=cursor)

    with pytest.raises(Crash):
        list(listing())
    key = listing.key_for()
    assert store.keys(f"{key}(r)2.")  # left behind by the dead process
    store.frozen = False
    assert list(listing()) == [30, 31, 40, 41, 50, 51]
    epoch = json.loads(store.get(key) or b"{}")["epoch"]
    leftovers = [k for k in store.keys(f"{key}(r)") if not k.startswith(f"{key}(r){epoch}.")]
    assert leftovers == []
