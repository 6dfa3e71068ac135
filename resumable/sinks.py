"""Counting sinks: where a generator job's items land exactly once.

`drain` (and `adrain` for async generator jobs) pushes a generator job's items into a
sink in batches. The sink's item count is saved with the run's progress; when the run
resumes, the items the sink already holds beyond the saved count are skipped, so the
sink receives every item exactly once even if the process died between a push and the
next write of the record (reconciliation).

This relies on two things, and on nothing else:

1. The generator yields the same items in the same order from its last resume point
   (`restart_with`) on, as replay already assumes.
2. The sink's ``count()`` is exact: it tells how many items the sink holds, counting
   each item once, and nothing but this run writes to it.

Shipped: `ListSink` (a list in memory), `JsonLinesSink` (a file, one JSON value a
line, fsynced per batch) and, with the ``apify`` extra, ``resumable.apify.DatasetSink``.
A sink of your own implements `Sink` (or `AsyncSink`).
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resumable._log import logger
from resumable._run import RUN_HOOKS, notify_run
from resumable.errors import ResumableError

__all__ = [
    "AsyncSink",
    "JsonLinesSink",
    "ListSink",
    "Sink",
    "SinkMismatch",
    "adrain",
    "drain",
    "progress",
]


class SinkMismatch(ResumableError):
    """A sink holds fewer items than the run's record says it pushed.

    The sink lost items, was replaced, or is not this run's sink: reconciliation cannot
    tell which items it is missing, so the run stops instead of guessing.
    """


class Sink(abc.ABC):
    """A destination for items that can count exactly what it holds."""

    @abc.abstractmethod
    def count(self) -> int:
        """How many items the sink holds now; repairs a torn last item first."""

    @abc.abstractmethod
    def push(self, items: list[Any]) -> None:
        """Append ``items`` in order."""

    def flush(self) -> None:  # noqa: B027 - optional hook, a no-op for in-memory sinks
        """Make what was pushed durable (fsync for files). Default: nothing to do."""

    async def acount(self) -> int:
        """Asynchronous `count` (default: `count` in a worker thread)."""
        return await asyncio.to_thread(self.count)

    async def apush(self, items: list[Any]) -> None:
        """Asynchronous `push` (default: `push` in a worker thread)."""
        await asyncio.to_thread(self.push, items)

    async def aflush(self) -> None:
        """Asynchronous `flush` (default: `flush` in a worker thread)."""
        await asyncio.to_thread(self.flush)


class AsyncSink(Sink):
    """A sink whose back end is asynchronous: implement `acount`, `apush`, `aflush`."""

    def count(self) -> int:
        raise TypeError(f"{type(self).__name__} is asynchronous: use it with adrain()")

    def push(self, items: list[Any]) -> None:
        raise TypeError(f"{type(self).__name__} is asynchronous: use it with adrain()")

    @abc.abstractmethod
    async def acount(self) -> int: ...

    @abc.abstractmethod
    async def apush(self, items: list[Any]) -> None: ...

    async def aflush(self) -> None:
        return None


class ListSink(Sink):
    """Items appended to a list (``.items``), for tests and in-process pipelines."""

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items: list[Any] = items if items is not None else []

    def count(self) -> int:
        return len(self.items)

    def push(self, items: list[Any]) -> None:
        self.items.extend(items)

    async def acount(self) -> int:
        return len(self.items)

    async def apush(self, items: list[Any]) -> None:
        self.items.extend(items)

    async def aflush(self) -> None:
        return None


class JsonLinesSink(Sink):
    """A JSON Lines file: one item a line, appended, flushed and fsynced per batch.

    ``count()`` counts complete lines. A last line without its newline (the process
    died in the middle of a write) is torn: it is cut off, with a warning naming the
    bytes removed, before counting, never kept. Items must be JSON-serializable
    (``default=`` is passed to `json.dumps` for other types).
    """

    def __init__(self, path: str | os.PathLike[str], *, default: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self._default = default
        self._count: int | None = None
        self._file: Any = None

    def count(self) -> int:
        if self._count is None:
            self._count = self._repair_and_count()
        return self._count

    def _repair_and_count(self) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            logger.warning(
                "torn last line removed from a JSON Lines sink",
                path=str(self.path),
                removed_bytes=len(data) - keep,
                removed=data[keep : keep + 80].decode("utf-8", "replace"),
            )
            data = data[:keep]
        return data.count(b"\n")

    def push(self, items: list[Any]) -> None:
        if self._count is None:
            self._count = self._repair_and_count()
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        lines = "".join(json.dumps(item, default=self._default) + "\n" for item in items)
        self._file.write(lines.encode())
        self._count += len(items)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the file (the sink reopens it if pushed to again)."""
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonLinesSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> list[Any]:
        """Read every item back (for checks and tests)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]


@dataclass
class Binding:
    """What a consumer (`drain`, `progress`) attaches to the generator job it iterates."""

    sink: Sink | None = None
    batch_size: int = 100
    bar: Any = None
    total: int | None = None
    desc: str | None = None
    show: bool = False
    append: bool = False
    pushed: int = 0
    on_start: list[Callable[[int], None]] = field(default_factory=list)

    def make_bar(self, initial: int) -> None:
        if not self.show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ImportError("progress bars need tqdm: pip install 'resumable[progress]'") from exc
        self.bar = tqdm(total=self.total, initial=initial, desc=self.desc, unit="item")

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


#: The consumer binding that a generator job picks up when its run starts.
BINDING: ContextVar[Binding | None] = ContextVar("resumable_binding", default=None)


def _check_batch(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, not {batch_size!r}")


def _check_job_gen(gen: Any, kind: str) -> None:
    from resumable._gen import has_started, is_job_generator

    if not is_job_generator(gen, kind):
        raise TypeError(
            f"drain needs the {kind} returned by calling a @resumable {kind} job, not {gen!r}: "
            "only a job's progress can be saved together with the sink's count"
        )
    if has_started(gen):
        raise TypeError(
            f"drain needs a {kind} job that has not started yet: its run attaches to the sink "
            "when it starts. Pass the job's call straight to it: drain(job(...), sink)"
        )


def drain(
    gen: Iterator[Any],
    sink: Sink,
    *,
    batch_size: int = 100,
    progress: bool = False,
    total: int | None = None,
    desc: str | None = None,
    append: bool = False,
) -> int:
    """Push every item of a generator job into ``sink`` exactly once; return how many.

    Items are pushed in batches of ``batch_size``, the sink is flushed after each
    batch, and the sink's count is saved with the run's progress. Each batch, the end
    of the run, and each resume point (`restart_with`) push what is pending. With
    ``progress=True`` a tqdm bar (the ``progress`` extra) starts at the resumed
    position; ``total`` sets its length.

    A run that starts (no record yet) with a sink that already holds items refuses
    them as another run's: a second key for the same work would otherwise append
    everything again. ``append=True`` says the items are someone else's on purpose and
    this run adds its own after them.

    Raises:
        TypeError: ``gen`` is not a generator returned by a ``@resumable`` job.
        SinkMismatch: the sink holds fewer items than the record says were pushed, or
            a new run finds items it did not write (without ``append=True``).
    """
    _check_job_gen(gen, "generator")
    _check_batch(batch_size)
    binding = Binding(sink=sink, batch_size=batch_size, show=progress, total=total, desc=desc, append=append)
    token = BINDING.set(binding)
    try:
        for _ in gen:
            raise RuntimeError("a job draining into a sink yielded an item to its consumer")
    finally:
        BINDING.reset(token)
        binding.close()
    return binding.pushed


async def adrain(
    agen: AsyncIterator[Any],
    sink: Sink,
    *,
    batch_size: int = 100,
    progress: bool = False,
    total: int | None = None,
    desc: str | None = None,
    append: bool = False,
) -> int:
    """`drain` for async generator jobs; the sink's asynchronous methods are used."""
    _check_job_gen(agen, "async generator")
    _check_batch(batch_size)
    binding = Binding(sink=sink, batch_size=batch_size, show=progress, total=total, desc=desc, append=append)
    token = BINDING.set(binding)
    try:
        async for _ in agen:
            raise RuntimeError("a job draining into a sink yielded an item to its consumer")
    finally:
        BINDING.reset(token)
        binding.close()
    return binding.pushed


def progress(gen: Iterable[Any], *, total: int | None = None, desc: str | None = None) -> Iterator[Any]:
    """Iterate a generator job with a tqdm progress bar that starts at the resumed position."""
    _check_job_gen(gen, "generator")
    binding = Binding(show=True, total=total, desc=desc)
    token = BINDING.set(binding)
    try:
        it = iter(gen)
        first = next(it, _END)
    finally:
        BINDING.reset(token)
    try:
        # The job advances the bar as each item is consumed.
        if first is _END:
            return
        yield first
        yield from it
    finally:
        binding.close()


_END: Any = object()


class SinkFeed:
    """The run side of a binding: reconciles the sink, batches and pushes items.

    Bookkeeping: the record holds ``(done, count)``: items of this epoch accounted for,
    and the sink's count that goes with them, plus the *carry*: items taken but not
    pushed when a resume point was declared. On start, the sink's surplus over the
    recorded count is the number of items (carry first) it already holds: they are
    skipped, not pushed again. The record only moves at a push, so a crash at any
    point leaves a record from which the same reconciliation gives the same answer.
    """

    def __init__(self, run: Any, binding: Binding) -> None:
        self.run = run
        self.binding = binding
        self.sink = binding.sink
        self.buffer: list[Any] = []
        self.carried = 0  # leading buffer items that came from the carry
        self.skip = 0
        self.skipped_new = 0
        self.skipped_carry = 0

    def _reconcile(self, held: int) -> bool:
        """Work out what the sink already holds; returns whether the baseline is new.

        A new baseline (the sink's count when the run first meets it) must be written
        before the first push, or a death after that push would count the pushed items
        as the baseline and push them again.
        """
        done, recorded = self.run.item_prog
        baseline = recorded is None
        if recorded is None and held and not self.binding.append:
            raise SinkMismatch(
                f"run {self.run.key!r} starts with a sink that already holds {held} items it did "
                "not write (another run's, under another key: another spelling of an argument, "
                "the job run as a script and imported?). Nothing was pushed. Pass append=True "
                "to drain() to add this run's items after them, or empty the sink"
            )
        if recorded is None:
            recorded = held
            self.run.item_prog = (done, recorded)
            self.run.dirty = True
        elif held < recorded:
            why = "It lost items or is another sink; restore it, or reset the run to start over."
            if getattr(self.sink, "purged", False):
                why = (
                    "The Actor's default dataset was purged when the Actor started locally "
                    "(CRAWLEE_PURGE_ON_START): locally, drain into a named dataset "
                    "(DatasetSink(name=...)) or set CRAWLEE_PURGE_ON_START=0, then reset the run."
                )
            raise SinkMismatch(
                f"run {self.run.key!r}: the sink holds {held} items, but the record says it "
                f"held {recorded} after the run's last saved push. {why}"
            )
        self.skip = held - recorded
        if self.skip:
            logger.info(
                "sink reconciled: items it already holds are skipped", key=self.run.key, skip=self.skip
            )
        for item in self.run.carried_items():
            if self.skip:
                self.skip -= 1
                self.skipped_carry += 1
            else:
                self.buffer.append(item)
                self.carried += 1
        self.binding.make_bar(self.run.items_before + done + self.skipped_carry)
        if not self.skip:
            self._commit_skips()
        self.run.resume_point_hooks.append(self.hold)
        return baseline

    def _commit_skips(self) -> None:
        if self.skipped_new or self.skipped_carry:
            self.run.items_advance(self.skipped_new, self.skipped_carry, self.buffer[: self.carried])
            self.skipped_new = self.skipped_carry = 0

    def start(self) -> None:
        assert self.sink is not None
        if self._reconcile(self.sink.count()):
            self.run.flush()

    async def astart(self) -> None:
        assert self.sink is not None
        if self._reconcile(await self.sink.acount()):
            await self.run.aflush()

    def hold(self) -> list[Any]:
        """At a resume point: everything taken and not pushed becomes the carry."""
        self._commit_skips()
        self.carried = len(self.buffer)
        return list(self.buffer)

    def take(self, item: Any) -> bool:
        """Take one item; returns True when the buffer is full and must be pushed."""
        if self.skip:
            self.skip -= 1
            self.skipped_new += 1
            self.binding.advance(1)
            if not self.skip:
                self._commit_skips()
            return False
        self.buffer.append(item)
        # While replay has not reached the recorded steps, new items wait in the buffer:
        # a job whose replay goes wrong raises ReplayMismatch before anything new lands.
        return len(self.buffer) >= self.binding.batch_size and self.run.may_do_new_work()

    def safe_to_push(self) -> bool:
        """Tell whether what is held may be pushed now, as a run ends on an exception."""
        try:
            return bool(self.run.may_do_new_work())
        except ResumableError:
            return False

    def _pushed(self, n: int, carried: int) -> None:
        self.run.items_advance(n - carried + self.skipped_new, carried + self.skipped_carry, [])
        self.binding.pushed += n
        self.binding.advance(n)
        self.skipped_new = self.skipped_carry = 0
        if RUN_HOOKS:
            notify_run("push", self.run)

    def pending(self) -> bool:
        return bool(self.buffer or self.skipped_new or self.skipped_carry)

    def _take_batch(self) -> tuple[list[Any], int]:
        # Out of the buffer before the push: a batch is never pushed twice, even when
        # the push or the flush fails (reconciliation then counts what the sink holds).
        batch, carried = self.buffer, self.carried
        self.buffer, self.carried = [], 0
        return batch, carried

    def push(self) -> None:
        """Push what is held, flush the sink, and only then count it in the record."""
        if self.buffer:
            assert self.sink is not None
            batch, carried = self._take_batch()
            self.sink.push(batch)
            self.sink.flush()
            self._pushed(len(batch), carried)
        elif self.pending():
            self._pushed(0, 0)

    async def apush(self) -> None:
        """`push` through the sink's asynchronous methods."""
        if self.buffer:
            assert self.sink is not None
            batch, carried = self._take_batch()
            await self.sink.apush(batch)
            await self.sink.aflush()
            self._pushed(len(batch), carried)
        elif self.pending():
            self._pushed(0, 0)
