"""Property tests: generator jobs and sinks under random crashes, restarted from the store alone.

Random paged generators (page sizes, resume points at page ends or not, steps inside
that return values or None, state updated at resume points and between them) run
under random crash schedules from `resumable.testing`: before a step body, after a
step before its completion is written, in the middle of a store write (landed or
not), after the consumer handled an item, after a sink push before its record, and
(a sink of our own) between a sink's push and its flush, keeping a torn prefix.
Each death freezes the store (every later write dropped, the flusher's and the
exception path's too) and unwinds the job with a private ``BaseException``; the next
attempt starts from the store alone.

Properties:

- with a counting sink, the sink ends holding exactly the uninterrupted run's items,
  in order, no duplicate, no gap; the record never claims more than the sink holds;
- without a sink, every record written says exactly how many items the consumer had
  consumed when it was written; each attempt delivers a contiguous run of the
  uninterrupted items starting where the record it started from says. Together: no
  item is lost, and an item comes again only if it was consumed after the last write
  (or was in hand when the process died).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, example, given, note, settings
from hypothesis import strategies as st

from resumable import _run, checkpoint, restart_with, resumable, state
from resumable._record import is_auxiliary
from resumable.sinks import Sink, adrain, drain
from resumable.stores.memory import MemoryStore
from resumable.testing import (
    Crash,
    ProcessDied,
    Report,
    Schedule,
    _harness,
    crash_schedules,
    run_with_crashes,
)

# -- the generator under test ---------------------------------------------------------

#: A spec: (page sizes, whether each page ends with restart_with, steps per item, and
#: whether those steps return None). Plain data, so it is part of the run key.
Spec = tuple[tuple[int, ...], tuple[bool, ...], int, bool]

PHASE = ["body"]  # who runs now: the job body, or the consumer holding an item


@checkpoint
def work(page: int, i: int, k: int, none: bool) -> int | None:
    return None if none else page * 1000 + i * 10 + k


def _items(spec: Spec, cursor: int) -> Iterator[tuple[Any, ...]]:
    sizes, restarts, steps, none = spec
    while cursor < len(sizes):
        base = state().get("pages", 0)
        for i in range(sizes[cursor]):
            state()["seen"] = state().get("seen", 0) + 1
            values = [work(cursor, i, k, none) for k in range(steps)]
            yield (cursor, i, base, state()["seen"], tuple(values))
            PHASE[0] = "body"
        state()["pages"] = base + 1
        cursor += 1
        if restarts[cursor - 1]:
            restart_with(cursor=cursor)


@resumable
def paged(spec: Spec, cursor: int = 0) -> Iterator[tuple[Any, ...]]:
    yield from _items(spec, cursor)


@resumable
async def apaged(spec: Spec, cursor: int = 0) -> AsyncIterator[tuple[Any, ...]]:
    for item in _items(spec, cursor):
        yield item


def expected(spec: Spec) -> list[tuple[Any, ...]]:
    """The uninterrupted run's items, computed without resumable."""
    sizes, _, steps, none = spec
    out = []
    seen = 0
    for page, size in enumerate(sizes):
        for i in range(size):
            seen += 1
            values = tuple(None if none else page * 1000 + i * 10 + k for k in range(steps))
            out.append((page, i, page, seen, values))
    return out


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    sizes = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=6)))
    restarts = tuple(draw(st.lists(st.booleans(), min_size=len(sizes), max_size=len(sizes))))
    return sizes, restarts, draw(st.integers(0, 2)), draw(st.booleans())


def _bounds(spec: Spec, batch: int = 1) -> dict[str, int]:
    """Upper bounds of an attempt's events, so that most drawn crash points fire."""
    items = sum(spec[0])
    steps = items * spec[2]
    pushes = items // batch + 2
    return {
        "steps": max(steps, 1),
        "items": max(items, 1),
        "pushes": pushes,
        "writes": 2 * steps + 2 * pushes + items + 4,
    }


#: (spec, crash schedule, batch size, sink crashes)
SinkCase = tuple[Spec, Schedule, int, tuple["SinkCrash", ...]]


@st.composite
def sink_cases(draw: st.DrawFn, flusher_writes: bool = False) -> SinkCase:
    spec = draw(specs())
    batch = draw(st.integers(1, 7))
    b = _bounds(spec, batch)
    schedule = draw(
        crash_schedules(
            steps=b["steps"],
            writes=b["writes"],
            pushes=b["pushes"],
            max_crashes=3,
            kinds=("push", "write", "before_step", "after_step"),
        )
    )
    crash = st.builds(
        SinkCrash,
        st.integers(1, len(schedule.crashes) + 1),
        st.integers(0, b["pushes"] - 1),
        st.integers(0, batch + 5),
        st.booleans() if flusher_writes else st.just(False),
    )
    crashes = tuple(draw(st.lists(crash, max_size=2)))
    return spec, schedule, batch, crashes


@st.composite
def item_cases(draw: st.DrawFn) -> tuple[Spec, Schedule]:
    spec = draw(specs())
    b = _bounds(spec)
    kinds = ("item", "write", "before_step", "after_step")
    schedule = draw(crash_schedules(steps=b["steps"], writes=b["writes"], items=b["items"], kinds=kinds))
    return spec, schedule


# -- a sink that can die between its push and its flush --------------------------------


@dataclass
class SinkCrash:
    """Attempt ``attempt`` dies in the sink's ``flush`` number ``index`` of that attempt,
    after ``keep`` of the pushed items reached the disk (a torn write). With
    ``flusher_writes``, the run's record is written first, as the background flusher
    may do at any moment while the sink is between its push and its flush."""

    attempt: int
    index: int
    keep: int
    flusher_writes: bool = False


@dataclass
class CrashSink(Sink):
    """A counting sink: ``durable`` survives a death; pushed items wait in ``pending``."""

    crashes: tuple[SinkCrash, ...] = ()
    durable: list[Any] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)
    flushes: dict[int, int] = field(default_factory=dict)
    fired: list[SinkCrash] = field(default_factory=list)

    def count(self) -> int:
        self.pending.clear()  # a new process: what never reached the disk is gone
        return len(self.durable)

    def push(self, items: list[Any]) -> None:
        self.pending.extend(items)

    def flush(self) -> None:
        process = _harness._ACTIVE.get()
        assert process is not None
        number = process.attempt.number
        index = self.flushes.get(number, 0)
        self.flushes[number] = index + 1
        for crash in self.crashes:
            if (crash.attempt, crash.index) == (number, index):
                if crash.flusher_writes:
                    for run in list(_run._signals.runs):
                        if run.store is process.store:
                            run.write(retry=False)
                self.durable.extend(self.pending[: crash.keep])
                self.pending.clear()
                self.fired.append(crash)
                process.die(f"in sink flush #{index}, {crash.keep} items on disk")
                raise ProcessDied
        self.durable.extend(self.pending)
        self.pending.clear()

    async def acount(self) -> int:
        return self.count()

    async def apush(self, items: list[Any]) -> None:
        self.push(items)

    async def aflush(self) -> None:
        self.flush()


# -- watching what every landed record says ------------------------------------------


class Watched(MemoryStore):
    """The harness's shared data: checks each record that lands against the world."""

    def __init__(self, check: Any) -> None:
        super().__init__()
        self.check = check
        self.heads = 0

    def set(self, key: str, value: bytes) -> None:
        super().set(key, value)
        if not is_auxiliary(key):
            self.heads += 1
            self.check(json.loads(value))


def record_position(head: dict[str, Any]) -> int:
    items = head["items"]
    return int(items.get("before", 0)) + int(items.get("done", 0))


# -- with a counting sink: exactly once -----------------------------------------------


def _check_sink_run(
    spec: Spec, schedule: Schedule, batch: int, crashes: tuple[SinkCrash, ...], run_async: bool
) -> tuple[Report, CrashSink]:
    sink = CrashSink(crashes=crashes)

    def check(head: dict[str, Any]) -> None:
        # The record never says the sink holds more than it durably does.
        recorded = head["items"].get("sink")
        if recorded is not None:
            assert recorded <= len(sink.durable), (recorded, len(sink.durable))
            # The sink started empty: the run's position is what the sink holds by its record.
            assert record_position(head) == recorded, head["items"]

    data = Watched(check)
    if run_async:
        report = run_with_crashes(lambda: adrain(apaged(spec), sink, batch_size=batch), schedule, data=data)
    else:
        report = run_with_crashes(lambda: drain(paged(spec), sink, batch_size=batch), schedule, data=data)
    note(f"attempts: {[(a.number, a.outcome, a.crash) for a in report.attempts]}")
    note(f"sink crashes fired: {sink.fired}")
    event(f"restarts: {report.restarts}")
    event(f"deaths between a sink push and its flush: {len(sink.fired)}")
    return report, sink


# A death after the first push, before any record of it (the baseline must be written first).
@example(case=(((3,), (False,), 0, True), Schedule((Crash("push", 0),), flush_every=1), 2, ()))
@given(case=sink_cases())
def test_sink_receives_every_item_exactly_once(case: SinkCase) -> None:
    spec, schedule, batch, crashes = case
    report, sink = _check_sink_run(spec, schedule, batch, crashes, run_async=False)
    assert report.error is None, report.error
    assert sink.durable == expected(spec)
    assert report.rerun_after_write == []


@settings(max_examples=max(10, settings().max_examples // 3))
@given(case=sink_cases())
def test_async_sink_receives_every_item_exactly_once(case: SinkCase) -> None:
    spec, schedule, batch, crashes = case
    report, sink = _check_sink_run(spec, schedule, batch, crashes, run_async=True)
    assert report.error is None, report.error
    assert sink.durable == expected(spec)


# The flusher writes while the second batch is pushed but not flushed; the process dies
# with none of that batch durable.
@example(case=(((4,), (False,), 0, True), Schedule((), flush_every=1), 2, (SinkCrash(1, 1, 0, True),)))
@given(case=sink_cases(flusher_writes=True))
def test_sink_exactly_once_when_the_flusher_writes_between_push_and_flush(case: SinkCase) -> None:
    spec, schedule, batch, crashes = case
    report, sink = _check_sink_run(spec, schedule, batch, crashes, run_async=False)
    assert report.error is None, report.error
    assert sink.durable == expected(spec)


# -- without a sink: no loss, duplicates only after the last write ---------------------


@given(case=item_cases())
def test_no_item_lost_and_duplicates_only_after_the_last_write(case: tuple[Spec, Schedule]) -> None:
    spec, schedule = case
    delivered: dict[int, int] = {}
    written: dict[int, list[int]] = {}

    def consumed_now() -> tuple[int, int]:
        process = _harness._ACTIVE.get()
        assert process is not None
        attempt = process.attempt
        held = 1 if PHASE[0] == "consumer" else 0
        return attempt.number, attempt.items_from + delivered.get(attempt.number, 0) - held

    def check(head: dict[str, Any]) -> None:
        number, consumed = consumed_now()
        # Every record says exactly how many items the consumer had consumed.
        assert record_position(head) == consumed, (record_position(head), consumed)
        written.setdefault(number, []).append(consumed)

    def consume(item: Any) -> None:
        PHASE[0] = "consumer"
        number, _ = consumed_now()
        delivered[number] = delivered.get(number, 0) + 1

    PHASE[0] = "body"
    data = Watched(check)
    report = run_with_crashes(lambda: paged(spec), schedule, data=data, consume=consume)
    note(f"attempts: {[(a.number, a.outcome, a.crash, a.items_from, len(a.items)) for a in report.attempts]}")
    event(f"restarts: {report.restarts}")
    assert report.error is None, report.error
    want = expected(spec)
    last_written = 0
    for attempt in report.attempts:
        # Each attempt resumes exactly where the last record written before it says...
        assert attempt.items_from == last_written
        # ...and delivers the next items in order, none skipped.
        start = attempt.items_from
        assert attempt.items == want[start : start + len(attempt.items)]
        if written.get(attempt.number):
            last_written = written[attempt.number][-1]
    final = report.attempts[-1]
    assert final.items_from + len(final.items) == len(want)
    assert report.rerun_after_write == []
