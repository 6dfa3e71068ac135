"""Sinks: ListSink, JsonLinesSink, drain/adrain, reconciliation, carried items, progress bars."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import tqdm.auto
from structlog.testing import capture_logs

from resumable import MemoryStore, current_run, flush, restart_with, resumable
from resumable import _run as run_module
from resumable.sinks import AsyncSink, JsonLinesSink, ListSink, Sink, SinkMismatch, adrain, drain, progress
from tests.crashing import Boom, Crash, FreezableStore


@pytest.fixture
def store() -> FreezableStore:
    return FreezableStore()


class DyingSink(ListSink):
    """A ListSink that dies with its process: no push lands once the store is frozen."""

    def __init__(self, store: FreezableStore) -> None:
        super().__init__()
        self.store = store

    def push(self, items: list[Any]) -> None:
        if not self.store.frozen:
            super().push(items)

    async def apush(self, items: list[Any]) -> None:
        self.push(items)


def head_of(store: MemoryStore, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None
    return json.loads(raw)


# -- ListSink and drain -----------------------------------------------------------------


def test_list_sink_counts_and_appends() -> None:
    sink = ListSink()
    assert sink.count() == 0
    sink.push([1, 2])
    sink.push([3])
    sink.flush()
    assert sink.items == [1, 2, 3]
    assert sink.count() == 3
    shared: list[Any] = ["x"]
    assert ListSink(shared).count() == 1


def test_drain_pushes_every_item_and_returns_the_count(store: FreezableStore) -> None:
    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    sink = ListSink()
    assert drain(numbers(10), sink, batch_size=3) == 10
    assert sink.items == list(range(10))
    head = head_of(store, numbers.key_for(10))
    assert head["status"] == "finished"
    assert head["items"]["sink"] == 10
    # A finished run pushes nothing more.
    assert drain(numbers(10), sink, batch_size=3) == 0
    assert sink.items == list(range(10))


def test_drain_pushes_in_batches(store: FreezableStore) -> None:
    batches: list[list[int]] = []

    class Recording(ListSink):
        def push(self, items: list[Any]) -> None:
            batches.append(list(items))
            super().push(items)

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    drain(numbers(8), Recording(), batch_size=3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_drain_rejects_a_plain_generator() -> None:
    def plain() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match="@resumable"):
        drain(plain(), ListSink())
    with pytest.raises(TypeError, match="@resumable"):
        drain(iter([1, 2]), ListSink())


async def test_adrain_rejects_a_plain_async_generator_and_drain_an_async_job(store: FreezableStore) -> None:
    async def plain() -> AsyncIterator[int]:
        yield 1

    @resumable(store=store)
    async def job() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="@resumable"):
        await adrain(plain(), ListSink())
    agen = job()
    with pytest.raises(TypeError):
        drain(agen, ListSink())  # type: ignore[arg-type]
    assert await adrain(agen, ListSink()) == 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3", None])
def test_batch_size_must_be_a_whole_number_from_one(store: FreezableStore, bad: Any) -> None:
    @resumable(store=store)
    def numbers() -> Iterator[int]:
        yield 1

    sink = ListSink()
    with pytest.raises(ValueError, match="batch_size"):
        drain(numbers(), sink, batch_size=bad)
    assert sink.items == []
    assert store.keys() == []  # rejected before the run started
    assert drain(numbers(), sink, batch_size=1) == 1


async def test_adrain_batch_size_is_validated(store: FreezableStore) -> None:
    @resumable(store=store)
    async def numbers() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(ValueError, match="batch_size"):
        await adrain(numbers(), ListSink(), batch_size=0)


# -- JsonLinesSink ----------------------------------------------------------------------


def test_json_lines_sink_appends_to_an_existing_file(tmp_path: Path, store: FreezableStore) -> None:
    path = tmp_path / "out" / "items.jsonl"
    path.parent.mkdir()
    path.write_text('{"old": 1}\n')

    @resumable(store=store)
    def records(n: int) -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield {"i": i, "text": f"line\n{i} é"}

    sink = JsonLinesSink(path)
    # A new run refuses a sink that holds items it did not write, unless told to append.
    with pytest.raises(SinkMismatch, match="append=True"):
        drain(records(4), sink, batch_size=2)
    assert path.read_text() == '{"old": 1}\n'
    assert drain(records(4), sink, batch_size=2, append=True) == 4
    sink.close()
    assert sink.read() == [{"old": 1}] + [{"i": i, "text": f"line\n{i} é"} for i in range(4)]
    assert path.read_bytes().count(b"\n") == 5
    assert head_of(store, records.key_for(4))["items"]["sink"] == 5  # the old line counts


def test_json_lines_sink_creates_missing_directories(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "a" / "b" / "out.jsonl")
    assert sink.count() == 0
    sink.push([1, [2], {"x": None}])
    sink.flush()
    assert sink.read() == [1, [2], {"x": None}]
    sink.close()


def test_json_lines_sink_default_serializer(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "o.jsonl", default=str)
    sink.push([{"p": Path("/x")}])
    sink.close()
    assert sink.read() == [{"p": "/x"}]


def test_json_lines_sink_fsyncs_once_per_batch(
    tmp_path: Path, store: FreezableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl"
    on_disk_at_fsync: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        on_disk_at_fsync.append(path.read_bytes().count(b"\n"))

    monkeypatch.setattr(os, "fsync", fsync)  # a MemoryStore never fsyncs: these are the sink's

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    sink = JsonLinesSink(path)
    assert drain(numbers(10), sink, batch_size=3) == 10
    # One fsync per batch, each after the whole batch reached the file.
    assert on_disk_at_fsync == [3, 6, 9, 10]
    sink.close()


def test_a_torn_last_line_is_cut_on_count_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "na')
    sink = JsonLinesSink(path)
    with capture_logs() as logs:
        assert sink.count() == 2
    assert path.read_bytes() == b'{"i": 0}\n{"i": 1}\n'
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "torn" in warnings[0]["event"]
    assert warnings[0]["removed_bytes"] == len(b'{"i": 2, "na')
    assert warnings[0]["path"] == str(path)
    sink.push([{"i": 2}])
    sink.close()
    assert sink.read() == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_a_file_that_is_only_a_torn_line_counts_zero(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"half')
    with capture_logs() as logs:
        assert JsonLinesSink(path).count() == 0
    assert path.read_bytes() == b""
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "torn last line removed from a JSON Lines sink"
    ]


def test_a_complete_file_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"1\n2\n")
    with capture_logs() as logs:
        assert JsonLinesSink(path).count() == 2
    assert path.read_bytes() == b"1\n2\n"
    assert logs == []


def test_a_torn_line_from_a_dead_push_is_repaired_on_resume(tmp_path: Path, store: FreezableStore) -> None:
    path = tmp_path / "out.jsonl"
    fail = [True]

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 5 and fail[0]:
                fail[0] = False
                raise Boom
            yield i

    sink = JsonLinesSink(path)
    with pytest.raises(Boom):
        drain(numbers(9), sink, batch_size=2)
    sink.close()
    assert sink.read() == [0, 1, 2, 3, 4]
    with path.open("ab") as f:
        f.write(b"5")  # a later push died in the middle of its line
    sink = JsonLinesSink(path)
    with capture_logs() as logs:
        assert drain(numbers(9), sink, batch_size=2) == 4
    sink.close()
    assert sink.read() == list(range(9))
    assert any("torn" in e["event"] for e in logs)


# -- reconciliation -----------------------------------------------------------------------


def test_sink_mismatch_when_the_sink_holds_fewer_items_than_recorded(
    tmp_path: Path, store: FreezableStore
) -> None:
    fail = [True]

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 6 and fail[0]:
                fail[0] = False
                raise Boom
            yield i

    path = tmp_path / "out.jsonl"
    sink = JsonLinesSink(path)
    with pytest.raises(Boom):
        drain(numbers(10), sink, batch_size=2)
    sink.close()
    key = numbers.key_for(10)
    assert head_of(store, key)["items"]["sink"] == 6
    path.write_text("0\n1\n2\n")  # the sink lost items
    sink = JsonLinesSink(path)
    with pytest.raises(SinkMismatch) as info:
        drain(numbers(10), sink, batch_size=2)
    sink.close()
    message = str(info.value)
    assert "3 items" in message
    assert "6" in message
    assert key in message
    assert path.read_text() == "0\n1\n2\n"  # nothing pushed
    assert head_of(store, key)["items"]["sink"] == 6  # the record is not moved
    # Another (empty) sink is refused as well.
    with pytest.raises(SinkMismatch):
        drain(numbers(10), ListSink(), batch_size=2)


def test_exactly_once_across_an_exception_raised_by_the_job_mid_batch(store: FreezableStore) -> None:
    fail = [3, 7]

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if fail and i == fail[0]:
                fail.pop(0)
                raise Boom(i)
            yield i

    sink = ListSink()
    with pytest.raises(Boom):
        drain(numbers(12), sink, batch_size=5)
    assert sink.items == [0, 1, 2]  # the partial batch was pushed on the way out
    with pytest.raises(Boom):
        drain(numbers(12), sink, batch_size=5)
    assert drain(numbers(12), sink, batch_size=5) == 5
    assert sink.items == list(range(12))


def test_items_the_sink_holds_beyond_the_record_are_skipped(store: FreezableStore) -> None:
    """A process died after pushes the record does not know of: they are not pushed again."""
    produced: list[int] = []

    @resumable(store=store, flush_interval=3600)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 4:
                flush()  # the record now says the sink holds 4 items
            if i == 9 and not store.frozen and len(produced) < 12:
                store.frozen = True  # the process dies: pushes of 4..7 are not recorded
                raise Crash
            produced.append(i)
            yield i

    sink = DyingSink(store)
    with pytest.raises(Crash):
        drain(numbers(12), sink, batch_size=2)
    assert sink.items == list(range(8))
    assert head_of(store, numbers.key_for(12))["items"]["sink"] == 4
    store.frozen = False
    with capture_logs() as logs:
        assert drain(numbers(12), sink, batch_size=2) == 4
    assert sink.items == list(range(12))
    reconciled = [e for e in logs if e["event"].startswith("sink reconciled")]
    assert [e["skip"] for e in reconciled] == [4]
    head = head_of(store, numbers.key_for(12))
    assert head["items"]["sink"] == 12
    assert head["status"] == "finished"


def test_a_death_after_the_first_push_before_any_write_does_not_duplicate(
    store: FreezableStore,
) -> None:
    dead = [False]

    @resumable(store=store, flush_interval=3600)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 5 and not dead[0]:
                dead[0] = True
                store.frozen = True  # the process dies long before its first interval write
                raise Crash
            yield i

    sink = DyingSink(store)
    with pytest.raises(Crash):
        drain(numbers(8), sink, batch_size=2)
    assert sink.items == [0, 1, 2, 3]
    store.frozen = False
    drain(numbers(8), sink, batch_size=2)
    assert sink.items == list(range(8))


def test_a_failing_sink_flush_does_not_push_the_batch_twice(store: FreezableStore) -> None:
    class FlakyFlush(ListSink):
        fails = 1

        def flush(self) -> None:
            if self.fails:
                self.fails -= 1
                raise OSError("fsync failed")

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    sink = FlakyFlush()
    with pytest.raises(OSError, match="fsync"):
        drain(numbers(10), sink, batch_size=3)
    drain(numbers(10), sink, batch_size=3)
    assert sink.items == list(range(10))


async def test_a_failing_async_sink_flush_does_not_push_the_batch_twice(store: FreezableStore) -> None:
    class FlakyFlush(ListSink):
        fails = 1

        async def aflush(self) -> None:
            if self.fails:
                self.fails -= 1
                raise OSError("fsync failed")

    @resumable(store=store)
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    sink = FlakyFlush()
    with pytest.raises(OSError, match="fsync"):
        await adrain(numbers(10), sink, batch_size=3)
    await adrain(numbers(10), sink, batch_size=3)
    assert sink.items == list(range(10))


def test_drain_of_a_started_job_generator_is_refused_clearly(store: FreezableStore) -> None:
    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    gen = numbers(5)
    assert next(gen) == 0
    sink = ListSink()
    with pytest.raises((TypeError, ValueError), match="drain"):
        drain(gen, sink)
    gen.close()
    assert sink.items == []


class CommitSink(Sink):
    """A transactional sink: ``push`` inserts, ``flush`` commits; uncommitted rows die."""

    def __init__(self, store: FreezableStore, die_in_flush: int) -> None:
        self.store = store
        self.committed: list[Any] = []
        self.pending: list[Any] = []
        self.flushes = 0
        self.die_in_flush: int | None = die_in_flush

    def count(self) -> int:
        self.pending.clear()  # a new process: the open transaction was rolled back
        return len(self.committed)

    def push(self, items: list[Any]) -> None:
        if not self.store.frozen:
            self.pending.extend(items)

    def flush(self) -> None:
        n, self.flushes = self.flushes, self.flushes + 1
        if n == self.die_in_flush:
            self.die_in_flush = None
            # The background flusher writes the run's record at this moment...
            for run in list(run_module._signals.runs):
                if run.store is self.store:
                    run.write(retry=False)
            self.store.frozen = True  # ...and the process dies before the commit.
            raise Crash
        self.committed.extend(self.pending)
        self.pending.clear()


def test_the_record_never_counts_a_batch_before_the_sink_flushed_it(store: FreezableStore) -> None:
    @resumable(store=store, flush_interval=3600)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    sink = CommitSink(store, die_in_flush=1)
    with pytest.raises(Crash):
        drain(numbers(10), sink, batch_size=3)
    assert sink.committed == [0, 1, 2]
    head = head_of(store, numbers.key_for(10))
    assert head["items"]["sink"] <= len(sink.committed)
    store.frozen = False
    drain(numbers(10), sink, batch_size=3)
    assert sink.committed == list(range(10))


# -- carried items over resume points ---------------------------------------------------


def _paged(store: MemoryStore, fail_after: int | None, *, crash: bool = False) -> Any:
    """A paged job (pages of 3) with resume points; optionally dies right after one."""
    state = {"armed": fail_after is not None}

    @resumable(store=store, flush_interval=3600)
    def pages(n: int, cursor: int = 0) -> Iterator[int]:
        while cursor < n:
            yield from range(cursor, min(cursor + 3, n))
            cursor += 3
            restart_with(cursor=cursor)
            if state["armed"] and cursor == fail_after:
                state["armed"] = False
                if crash:
                    flush()  # the resume point (with the held items) is written...
                    assert isinstance(store, FreezableStore)
                    store.frozen = True  # ...then the process dies
                    raise Crash
                raise Boom

    return pages


def test_items_held_at_a_resume_point_are_saved_with_it(store: FreezableStore) -> None:
    pages = _paged(store, 6, crash=True)
    sink = DyingSink(store)
    with pytest.raises(Crash):
        drain(pages(20), sink, batch_size=10)  # a batch is larger than a page
    assert sink.items == []  # nothing reached the sink yet
    head = head_of(store, pages.key_for(20))
    assert head["args"] == {"cursor": 6}
    assert head["items"]["carry"] == [0, 1, 2, 3, 4, 5]
    store.frozen = False
    assert drain(pages(20), sink, batch_size=10) == 20
    assert sink.items == list(range(20))


def test_carried_items_land_once_when_the_push_was_not_recorded(store: FreezableStore) -> None:
    """Die after the carry was pushed but before the record of that push."""
    dead = [False]

    @resumable(store=store, flush_interval=3600)
    def pages(n: int, cursor: int = 0) -> Iterator[int]:
        while cursor < n:
            yield from range(cursor, min(cursor + 3, n))
            cursor += 3
            restart_with(cursor=cursor)
            if cursor == 9:
                flush()  # record: resume point 9, sink count 8, item 8 held (carry)
            if cursor == 15 and not dead[0]:
                dead[0] = True
                store.frozen = True
                raise Crash

    sink = DyingSink(store)
    with pytest.raises(Crash):
        drain(pages(21), sink, batch_size=4)
    assert sink.items == list(range(12))  # three batches of 4 reached the sink
    head = head_of(store, pages.key_for(21))
    assert head["args"] == {"cursor": 9}
    recorded = head["items"]["sink"]
    assert recorded == 8
    assert head["items"]["carry"] == [8]
    store.frozen = False
    drain(pages(21), sink, batch_size=4)
    assert sink.items == list(range(21))


@pytest.mark.parametrize("crash", [False, True])
def test_all_items_land_once_when_the_job_stops_right_after_a_resume_point(
    store: FreezableStore, crash: bool
) -> None:
    for fail_after in (3, 9, 15):
        local = FreezableStore()
        pages = _paged(local, fail_after, crash=crash)
        sink = DyingSink(local)
        with pytest.raises(Crash if crash else Boom):
            drain(pages(17), sink, batch_size=5)
        local.frozen = False
        drain(pages(17), sink, batch_size=5)
        assert sink.items == list(range(17)), fail_after


async def test_adrain_carries_items_over_resume_points_exactly_once(store: FreezableStore) -> None:
    fail = [True]

    @resumable(store=store, flush_interval=3600)
    async def pages(n: int, cursor: int = 0) -> AsyncIterator[int]:
        while cursor < n:
            for i in range(cursor, min(cursor + 3, n)):
                yield i
            cursor += 3
            restart_with(cursor=cursor)
            if cursor == 12 and fail[0]:
                fail[0] = False
                run = current_run()
                assert run is not None
                await run.aflush()
                store.frozen = True
                raise Crash

    sink = DyingSink(store)
    with pytest.raises(Crash):
        await adrain(pages(20), sink, batch_size=5)
    assert sink.items == list(range(10))
    store.frozen = False
    assert await adrain(pages(20), sink, batch_size=5) == 10
    assert sink.items == list(range(20))


# -- async sinks ------------------------------------------------------------------------


class MemoryDataset(AsyncSink):
    """An asynchronous sink, as an Apify dataset is."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.pushes = 0

    async def acount(self) -> int:
        return len(self.rows)

    async def apush(self, items: list[Any]) -> None:
        self.pushes += 1
        self.rows.extend(items)


async def test_adrain_into_an_async_sink_and_a_json_lines_file(tmp_path: Path, store: FreezableStore) -> None:
    @resumable(store=store)
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    dataset = MemoryDataset()
    assert await adrain(numbers(7), dataset, batch_size=3) == 7
    assert dataset.rows == list(range(7))
    assert dataset.pushes == 3
    sink = JsonLinesSink(tmp_path / "o.jsonl")
    assert await adrain(numbers(5), sink, batch_size=2) == 5
    sink.close()
    assert sink.read() == list(range(5))


def test_an_async_sink_refuses_synchronous_use() -> None:
    with pytest.raises(TypeError, match="adrain"):
        MemoryDataset().count()
    with pytest.raises(TypeError, match="adrain"):
        MemoryDataset().push([1])


def test_a_sink_of_your_own_needs_count_and_push() -> None:
    class Half(Sink):
        def count(self) -> int:
            return 0

    with pytest.raises(TypeError):
        Half()  # type: ignore[abstract]


# -- progress bars ----------------------------------------------------------------------


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []

    class Recording(tqdm.auto.tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    return made


def test_drain_progress_bar_starts_at_the_resumed_position(store: FreezableStore, bars: list[Any]) -> None:
    fail = [True]

    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 7 and fail[0]:
                fail[0] = False
                raise Boom
            yield i

    sink = ListSink()
    with pytest.raises(Boom):
        drain(numbers(20), sink, batch_size=3, progress=True, total=20, desc="items")
    assert len(bars) == 1
    assert bars[0].n == 7
    assert bars[0].total == 20
    assert bars[0].desc == "items"
    drain(numbers(20), sink, batch_size=3, progress=True, total=20)
    assert len(bars) == 2
    assert bars[1].initial == 7
    assert bars[1].n == 20
    assert sink.items == list(range(20))


def test_drain_progress_bar_counts_items_skipped_by_reconciliation(
    store: FreezableStore, bars: list[Any]
) -> None:
    @resumable(store=store, flush_interval=3600)
    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            if i == 2:
                flush()
            if i == 6 and not store.frozen and len(bars) == 1:
                store.frozen = True
                raise Crash
            yield i

    sink = DyingSink(store)
    with pytest.raises(Crash):
        drain(numbers(10), sink, batch_size=2, progress=True)
    store.frozen = False
    drain(numbers(10), sink, batch_size=2, progress=True)
    assert sink.items == list(range(10))
    assert bars[1].initial == 2  # the recorded position...
    assert bars[1].n == 10  # ...and the skipped items are counted as they pass


def test_drain_progress_bar_starts_at_the_resumed_position_after_carried_items(
    store: FreezableStore, bars: list[Any]
) -> None:
    pages = _paged(store, 9)
    sink = ListSink()
    with pytest.raises(Boom):
        drain(pages(20), sink, batch_size=4, progress=True)
    assert sink.items == list(range(9))
    drain(pages(20), sink, batch_size=4, progress=True)
    assert sink.items == list(range(20))
    assert (bars[1].initial, bars[1].n) == (9, 20)


def test_progress_bar_resumes_at_the_consumed_position(store: FreezableStore, bars: list[Any]) -> None:
    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    gen = progress(numbers(10), total=10)
    assert [next(gen) for _ in range(4)] == [0, 1, 2, 3]
    gen.close()
    assert list(progress(numbers(10), total=10)) == [3, 4, 5, 6, 7, 8, 9]
    assert bars[1].initial == 3
    assert bars[1].total == 10


def test_progress_bar_counts_each_item_once(store: FreezableStore, bars: list[Any]) -> None:
    @resumable(store=store)
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    assert list(progress(numbers(10), total=10)) == list(range(10))
    assert bars[0].n == 10


def test_progress_rejects_a_plain_generator() -> None:
    with pytest.raises(TypeError):
        list(progress(iter([1])))
