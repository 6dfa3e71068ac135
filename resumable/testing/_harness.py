"""The crash harness: run a job under a crash schedule, restart it from the store alone.

A *schedule* says where each attempt of the job dies: before a step's body runs, after
a step returned but before its completion was written, or in the middle of a store
write (which either landed or not: writes are atomic). Each attempt is a simulated
process:

- its store is a `HarnessStore` over one shared `MemoryStore`; at the crash point the
  store is *frozen*: every later write from any thread (the flusher, the job's own
  exception path, a durable step's completion) is silently dropped, as if the process
  were gone;
- the job is unwound by `ProcessDied`, a `BaseException` that resumable treats like
  any other exception (so its final write happens, and is dropped); step bodies that
  would start later never run, and in an async job the other tasks are cancelled;
- run locks belong to the attempt (a dead process holds no lock);
- the next attempt calls the job again and builds a fresh run from the store alone.

By default the harness decides when progress is written (``Schedule.flush_every``),
so every example replays exactly, which Hypothesis needs to shrink a failure. With
``flushing="job"`` the job's own flusher writes on its own interval instead (less
reproducible, closer to production).

Generator jobs: when the job's call returns an iterator, the harness is its consumer;
each item delivered is an ``"item"`` event (a crash point: the process dies holding
the item, before asking for the next one). Other events a future core emits through
`resumable._run.STEP_HOOKS` (a sink push, say) become crash points by their name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import copy
import inspect
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resumable import _config, _run, sinks
from resumable._record import is_auxiliary
from resumable.errors import RunLocked
from resumable.stores._base import RunLock, Store, check_key
from resumable.stores.memory import MemoryStore

__all__ = [
    "Attempt",
    "Crash",
    "Execution",
    "HarnessStore",
    "ProcessDied",
    "RecordSummary",
    "Report",
    "Schedule",
    "run_with_crashes",
]

#: Crash points the harness knows. ``"item"``: a generator job's item was handled by
#: the consumer; ``"push"``: a sink push (`resumable.sinks.drain`) happened. Any other
#: event name a core hook emits is accepted as well.
KINDS = ("before_step", "after_step", "write", "item", "push")

_HOLD = 3600.0  # the flush interval while the harness decides when progress is written


class ProcessDied(BaseException):
    """The simulated death of the process. Never catch it in a job.

    A `BaseException`, so ``except Exception`` in a job lets it through. Code in
    ``finally:`` blocks and ``except BaseException:`` handlers does run while it
    unwinds (a real crash runs nothing); the harness drops every store write made
    after the crash point, so only side effects outside the store can leak.
    """


# -- schedules ----------------------------------------------------------------------


@dataclass(frozen=True)
class Crash:
    """Where one attempt of the job dies.

    Attributes:
        at: ``"before_step"`` (a step is about to run its body), ``"after_step"``
            (a step returned; its completion is in memory, not yet written),
            ``"write"`` (a store write of the attempt), ``"item"`` (a generator
            job's item was delivered to the consumer).
        index: Which event of that kind in the attempt, counted from 0 (the third
            step body started in this attempt is ``index=2``). Replayed steps do not
            count: they do not run. An index past the attempt's last event means the
            attempt does not crash.
        landed: For ``"write"``: whether the write reached the store before the
            process died.
    """

    at: str
    index: int = 0
    landed: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.at, str) or not self.at:
            raise ValueError(f"Crash.at must be an event name such as {KINDS}, not {self.at!r}")
        if not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"Crash.index must be an int >= 0, not {self.index!r}")

    def describe(self) -> str:
        """The crash point in words, without what the job was doing there."""
        nth = _ordinal(self.index + 1)
        if self.at == "before_step":
            return f"before the {nth} step body of the attempt runs"
        if self.at == "after_step":
            return f"after the {nth} step of the attempt returns, before its completion is written"
        if self.at == "write":
            landed = "after it landed" if self.landed else "before it landed"
            return f"during the {nth} store write of the attempt, {landed}"
        if self.at == "item":
            return f"after the consumer handled the {nth} item of the attempt, before asking for the next"
        if self.at == "push":
            return f"after the {nth} sink push of the attempt, before the record of it is written"
        return f"at the {nth} {self.at!r} event of the attempt"


@dataclass(frozen=True)
class Schedule:
    """A crash schedule: attempt ``i`` dies at ``crashes[i]``; the last attempt runs on.

    Attributes:
        crashes: One crash point per interrupted attempt, in order. Their number
            bounds the restarts.
        flush_every: When the harness writes the run's progress (it stands in for the
            interval flusher, so examples replay exactly): ``1`` before every step
            body when anything changed and after every step; ``k`` after every
            ``k``-th step; ``0`` only when the job itself asks (durable steps,
            `resumable.flush`, the end of the run). Ignored with ``flushing="job"``.
    """

    crashes: tuple[Crash, ...] = ()
    flush_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.flush_every, int) or self.flush_every < 0:
            raise ValueError(f"flush_every must be an int >= 0, not {self.flush_every!r}")
        object.__setattr__(self, "crashes", tuple(self.crashes))

    def describe(self) -> str:
        """The schedule in words (as planned; a report says which crashes fired)."""
        if not self.crashes:
            return "no crash"
        parts = [f"attempt {i}: crash {c.describe()}" for i, c in enumerate(self.crashes, 1)]
        return "; ".join(parts) + f"; {_flush_words(self.flush_every)}"


def _flush_words(every: int) -> str:
    if every == 1:
        return "progress written at every step"
    if every == 0:
        return "progress written only when the job asks (durable steps, flush(), run end)"
    return f"progress written after every {_ordinal(every)} step"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# -- the report ---------------------------------------------------------------------


@dataclass
class Execution:
    """One run of a step body (replayed steps do not run, and are not here)."""

    step: str
    number: int
    epoch: int
    attempt: int
    key: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    _call: Any = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """``'name' #number`` (with the resume point when there is one), for messages."""
        where = f" after resume point {self.epoch}" if self.epoch else ""
        place = f"#{self.number}" if self.number >= 0 else "(a concurrent call)"
        return f"step {short_name(self.step)!r} {place}{where}"

    def identity(self) -> str:
        """What resumable matches the call by: its position, or a concurrent call's label."""
        return str(self._call.identity()) if self._call is not None else ""


@dataclass
class Attempt:
    """One simulated process: what ran, and how it ended."""

    number: int
    planned: Crash | None
    crash: str | None = None  # what the crash interrupted, in words, when it fired
    outcome: str = "returned"  # "crashed", "returned", or "raised"
    executions: list[Execution] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    iterated: bool = False  # the job's call returned an iterator, which the harness consumed
    items_from: int = 0  # items the record said were consumed when the attempt started
    record_at_start: dict[str, RecordSummary] = field(default_factory=dict)  # by run key
    events: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    """What happened when a job ran under a schedule until it finished.

    Attributes:
        result: What the last attempt returned (``None`` when it raised).
        error: The exception the last attempt raised, or ``None``.
        items: Items a generator job delivered, over all attempts in order (``None``
            for other jobs).
        restarts: How many attempts crashed (the job was called ``restarts + 1`` times).
        executions: How often each step body ran, by step name, over all attempts.
        observed: What ``observe()`` returned after the last attempt.
        attempts: Each attempt in order.
        rerun_after_write: Step bodies that ran although the record the attempt
            started from already held their completion: a broken guarantee of
            resumable itself (it should always be empty).
        timeline: With tracing, ``(event, observed)`` pairs: what ``observe()``
            returned at each step boundary.
    """

    schedule: Schedule
    result: Any = None
    error: BaseException | None = None
    items: list[Any] | None = None
    restarts: int = 0
    executions: Counter[str] = field(default_factory=Counter)
    observed: Any = None
    attempts: list[Attempt] = field(default_factory=list)
    rerun_after_write: list[Execution] = field(default_factory=list)
    timeline: list[tuple[Event, Any]] = field(default_factory=list)

    @property
    def crashes(self) -> list[str]:
        """The crashes that fired, in words."""
        return [f"attempt {a.number}: crash {a.crash}" for a in self.attempts if a.crash]

    def count(self, step: Any) -> int:
        """How often a step body ran: by decorated function, full name or short name."""
        sdef = getattr(step, "_self_step", None)
        name = sdef.name if sdef is not None else str(step)
        if name in self.executions:
            return self.executions[name]
        return sum(n for full, n in self.executions.items() if short_name(full) == name)


@dataclass(frozen=True)
class Event:
    """A point in the timeline of a traced run."""

    kind: str  # "start", "before", "after", "crash", "end", or another event name
    attempt: int
    step: str | None = None  # the step's label for step events
    token: Any = None  # ties a "before" to its "after"

    def words(self) -> str:
        """The event as a moment: "step 'load' #0 completed", "attempt 2 started"."""
        if self.kind == "before":
            return f"{self.step} started"
        if self.kind == "after":
            return f"{self.step} completed"
        if self.kind == "start":
            return f"attempt {self.attempt} started"
        if self.kind == "crash":
            return f"attempt {self.attempt} crashed"
        if self.kind == "end":
            return f"attempt {self.attempt} ended"
        if self.kind == "deliver":
            return f"{self.step} was delivered"
        if self.kind == "item":
            return f"the consumer handled {self.step}"
        return f"{self.step} (in attempt {self.attempt})"


def short_name(name: str) -> str:
    """A step name without its module: ``pkg.mod.Cls.step`` -> ``Cls.step``."""
    module = _modules.get(name)
    if module and name.startswith(module + "."):
        return name[len(module) + 1 :]
    return name


_modules: dict[str, str] = {}  # step name -> its function's module, seen at execution


# -- one simulated process ----------------------------------------------------------


class _Process:
    """One attempt: its event counts, its death, its locks and what it ran."""

    def __init__(
        self,
        attempt: Attempt,
        flush_every: int | None,
        observe: Callable[[], Any] | None,
        timeline: list[tuple[Event, Any]] | None,
    ) -> None:
        self.attempt = attempt
        self.crash = attempt.planned
        self.flush_every = flush_every
        self.mutex = threading.RLock()
        self.dead = False
        self.locks: set[str] = set()
        self.completed = 0
        self.last = "before the first step"
        self.observe = observe
        self.timeline = timeline
        self.store: HarnessStore | None = None

    # -- death --

    def hits(self, kind: str) -> bool:
        """Count an event of ``kind``; tell whether the attempt dies at it."""
        counts = self.attempt.events
        with self.mutex:
            index = counts[kind]
            counts[kind] = index + 1
        crash = self.crash
        return crash is not None and crash.at == kind and crash.index == index

    def die(self, words: str) -> None:
        with self.mutex:
            if self.dead:
                return
            self.dead = True
            self.attempt.crash = words
        if not threading.current_thread().name.startswith("resumable-flusher"):
            # (observe() is the job's to call, not the flusher thread's)
            self.snapshot(Event("crash", self.attempt.number))

    def raise_if_dead(self) -> None:
        if self.dead:
            _unwind()

    # -- tracing --

    def snapshot(self, event: Event) -> None:
        if self.timeline is None or self.observe is None:
            return
        self.timeline.append((event, _copy(self.observe())))


def _copy(value: Any) -> Any:
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _unwind() -> None:
    """Raise `ProcessDied`; in an event loop, cancel the other tasks first (they died too)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        me = asyncio.current_task()
        for task in asyncio.all_tasks(loop):
            if task is not me and not task.done():
                task.cancel()
    raise ProcessDied


_ACTIVE: contextvars.ContextVar[_Process | None] = contextvars.ContextVar("resumable_harness", default=None)
_STORE: contextvars.ContextVar[Store | None] = contextvars.ContextVar("resumable_harness_store", default=None)
_FLUSHING: contextvars.ContextVar[str] = contextvars.ContextVar(
    "resumable_harness_flushing", default="schedule"
)


# -- the store ----------------------------------------------------------------------


class _Lock:
    def __init__(self, process: _Process, key: str) -> None:
        self._process = process
        self._key = key

    def release(self) -> None:
        with self._process.mutex:
            self._process.locks.discard(self._key)


class HarnessStore(Store):
    """The store of one simulated process: a view of shared data that dies with it.

    Reads see the shared `MemoryStore`. Writes (``set`` and ``delete``) are counted;
    at the scheduled write the process dies, with the write applied or not, and from
    then on every write is dropped. Locks belong to the process.
    """

    def __init__(self, data: MemoryStore, process: _Process) -> None:
        self.data = data
        self._process = process
        process.store = self

    def describe(self) -> str:
        return f"HarnessStore(attempt {self._process.attempt.number})"

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        return self.data.keys(prefix)

    def set(self, key: str, value: bytes) -> None:
        check_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"store values are bytes, not {type(value).__name__}")
        self._write(key, lambda: self.data.set(key, value), value)

    def delete(self, key: str) -> None:
        self._write(key, lambda: self.data.delete(key), None)

    def _write(self, key: str, apply: Callable[[], None], value: bytes | None) -> None:
        process = self._process
        with process.mutex:
            if process.dead:
                return
            if not process.hits("write"):
                apply()
                return
            crash = process.crash
            landed = crash is not None and crash.landed
            if landed:
                apply()
            process.die(_write_words(process, key, value, landed))
        # The writer may be the flusher thread: it goes on (its later writes are
        # dropped); the job's own thread unwinds at its next step boundary.

    def lock(self, key: str) -> RunLock:
        check_key(key)
        process = self._process
        with process.mutex:
            if key in process.locks:
                raise RunLocked(self.describe(), key)
            process.locks.add(key)
        return _Lock(process, key)


def _write_words(process: _Process, key: str, value: bytes | None, landed: bool) -> str:
    n = process.attempt.events["write"]
    what = "a result chunk" if is_auxiliary(key) else "the run's record"
    if value is None:
        what = f"the deletion of {what}"
    elif not is_auxiliary(key):
        with contextlib.suppress(ValueError, TypeError):
            if json.loads(value).get("status") == "finished":
                what = "the run's final record (the job had returned)"
    fate = "it landed, then the process died" if landed else "it did not land"
    return f"during store write #{n} of the attempt ({what}, {process.last}): {fate}"


# -- step events --------------------------------------------------------------------


def _on_step_event(event: str, call: _run.StepContext) -> None:
    process = _ACTIVE.get()
    if process is None:
        return
    process.raise_if_dead()
    if event not in ("before", "after"):
        # An event a newer core emits (an item, a sink push): a crash point by its name.
        process.snapshot(Event(event, process.attempt.number, event, call))
        if process.hits(event):
            process.die(f"at the {_ordinal(process.attempt.events[event])} {event!r} event of the attempt")
            _unwind()
        run = getattr(call, "run", None)
        if isinstance(run, _run.Run):
            _progress_point(process, [run])
        return
    label = _label(call)
    if event == "before":
        process.snapshot(Event("before", process.attempt.number, label, call))
        if process.hits("before_step"):
            process.die(f"before {label} ran its body ({process.last})")
            _unwind()
        attempt = process.attempt
        _modules.setdefault(call.name, getattr(call.func, "__module__", ""))
        attempt.executions.append(
            Execution(
                call.name,
                call.number,
                call.run.epoch,
                attempt.number,
                call.run.key,
                call.args,
                call.kwargs,
                call,
            )
        )
        if process.flush_every == 1 and call.run.dirty:
            _write(call.run)
            process.raise_if_dead()
        process.last = f"while {label} was running"
    else:
        process.snapshot(Event("after", process.attempt.number, label, call))
        if process.hits("after_step"):
            process.die(f"after {label} returned, before its completion was written")
            _unwind()
        process.last = f"after {label} completed"
        process.completed += 1
        every = process.flush_every
        if every and process.completed % every == 0:
            _write(call.run)
            process.raise_if_dead()


def _write(run: _run.Run) -> None:
    """Write the run's progress now, on this thread: what the flusher would do here."""
    run.write(retry=False)


def _label(call: _run.StepContext) -> str:
    where = f" after resume point {call.run.epoch}" if call.run.epoch else ""
    _modules.setdefault(call.name, getattr(call.func, "__module__", ""))
    place = f"#{call.number}" if call.number >= 0 else "(a concurrent call)"
    return f"step {short_name(call.name)!r} {place}{where}"


# -- sink pushes ----------------------------------------------------------------------

_original_push = sinks.SinkFeed.push
_original_apush = sinks.SinkFeed.apush


def _process_of(run: _run.Run) -> _Process | None:
    store = run.store
    return store._process if isinstance(store, HarnessStore) else None


def _pushed(process: _Process, run: _run.Run) -> None:
    k = process.attempt.events["push"]
    process.snapshot(Event("push", process.attempt.number, f"sink push #{k}", k))
    if process.hits("push"):
        process.die(f"after sink push #{k} of the attempt, before the record of it was written")
        _unwind()
    process.last = f"after sink push #{k}"
    _progress_point(process, [run])


def _push(feed: sinks.SinkFeed) -> None:
    process = _process_of(feed.run)
    if process is None:
        _original_push(feed)
        return
    if process.dead:
        return  # a dead process pushes nothing
    pending = feed.pending()
    _original_push(feed)
    if pending:
        _pushed(process, feed.run)


async def _apush(feed: sinks.SinkFeed) -> None:
    process = _process_of(feed.run)
    if process is None:
        await _original_apush(feed)
        return
    if process.dead:
        return
    pending = feed.pending()
    await _original_apush(feed)
    if pending:
        _pushed(process, feed.run)


# -- the harness scope: resumable's store and interval resolution -----------------------

_original_resolve_store = _config.resolve_store
_original_resolve_interval = _config.resolve_interval
_scope_lock = threading.Lock()
_scope_depth = 0
_hook_depth = 0


def _resolve_store(explicit: Store | str | None) -> Store:
    store = _STORE.get()
    return store if store is not None else _original_resolve_store(explicit)


def _resolve_interval(explicit: float | None) -> float:
    if _STORE.get() is not None and _FLUSHING.get() == "schedule":
        return _HOLD
    return _original_resolve_interval(explicit)


@contextlib.contextmanager
def _scope(hooks: bool) -> Iterator[None]:
    """Route every store the job names to the harness's, and observe step events."""
    # Until core offers a supported override, the harness replaces the resolution
    # functions of `resumable._config`; outside a harness context they behave as before.
    global _scope_depth, _hook_depth
    with _scope_lock:
        if hooks:
            if _hook_depth == 0:
                _run.STEP_HOOKS.append(_on_step_event)
            _hook_depth += 1
        if _scope_depth == 0:
            _config.resolve_store = _resolve_store
            _config.resolve_interval = _resolve_interval
            sinks.SinkFeed.push = _push  # type: ignore[method-assign,assignment]
            sinks.SinkFeed.apush = _apush  # type: ignore[method-assign,assignment]
        _scope_depth += 1
    try:
        yield
    finally:
        with _scope_lock:
            _scope_depth -= 1
            if _scope_depth == 0:
                _config.resolve_store = _original_resolve_store
                _config.resolve_interval = _original_resolve_interval
                sinks.SinkFeed.push = _original_push  # type: ignore[method-assign]
                sinks.SinkFeed.apush = _original_apush  # type: ignore[method-assign]
            if hooks:
                _hook_depth -= 1
                if _hook_depth == 0:
                    with contextlib.suppress(ValueError):
                        _run.STEP_HOOKS.remove(_on_step_event)


# -- running attempts ---------------------------------------------------------------


def _runs(process: _Process) -> list[_run.Run]:
    """The runs this simulated process has open (a generator job's run is not in reach)."""
    return [run for run in list(_run._signals.runs) if run.store is process.store]


def _progress_point(process: _Process, runs: list[_run.Run]) -> None:
    """A unit completed outside a step (an item, a sink push): write per the schedule."""
    process.completed += 1
    every = process.flush_every
    if every and process.completed % every == 0:
        for run in runs:
            if run.dirty:
                _write(run)
        process.raise_if_dead()


def _delivered(process: _Process, item: Any, k: int) -> None:
    process.raise_if_dead()
    process.attempt.items.append(item)
    process.snapshot(Event("deliver", process.attempt.number, f"item #{k}", k))


def _handled(process: _Process, k: int) -> None:
    process.snapshot(Event("item", process.attempt.number, f"item #{k}", k))
    process.raise_if_dead()
    if process.hits("item"):
        process.die(f"after the consumer handled item #{k} of the attempt, before it asked for the next")
        _unwind()
    process.last = f"after item #{k} was handled"
    _progress_point(process, _runs(process))


def _consume(process: _Process, iterator: Any, consume: Callable[[Any], Any] | None) -> Any:
    """Consume a generator job's items; return what the generator returned."""
    process.attempt.iterated = True
    it = iter(iterator)
    k = 0
    try:
        while True:
            try:
                item = next(it)
            except StopIteration as stop:
                return stop.value
            _delivered(process, item, k)
            if consume is not None:
                consume(item)
            _handled(process, k)
            k += 1
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


async def _aconsume(process: _Process, iterator: Any, consume: Callable[[Any], Any] | None) -> None:
    """Consume an async generator job's items (it returns nothing)."""
    process.attempt.iterated = True
    k = 0
    try:
        async for item in iterator:
            _delivered(process, item, k)
            if consume is not None:
                done = consume(item)
                if inspect.isawaitable(done):
                    await done
            _handled(process, k)
            k += 1
    finally:
        await iterator.aclose()


async def _drive(process: _Process, value: Any, consume: Callable[[Any], Any] | None) -> Any:
    if inspect.isasyncgen(value):
        return await _aconsume(process, value, consume)
    return await value


def _run_coroutine(process: _Process, value: Any, consume: Callable[[Any], Any] | None) -> Any:
    """Run an awaitable or async iterator in a fresh event loop (a fresh process)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_drive(process, value, consume))
    # Called from inside a running loop (an async test): use a thread of its own.
    ctx = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="resumable-harness") as pool:
        return pool.submit(ctx.run, asyncio.run, _drive(process, value, consume)).result()


def _attempt(
    start: Callable[[], Any], process: _Process, store: HarnessStore, consume: Callable[[Any], Any] | None
) -> tuple[str, Any]:
    """Run one attempt; returns ``("crashed"|"returned"|"raised", value or exception)``."""
    tokens = (_ACTIVE.set(process), _STORE.set(store))
    process.snapshot(Event("start", process.attempt.number))
    try:
        value = start()
        if inspect.isawaitable(value) or inspect.isasyncgen(value):
            value = _run_coroutine(process, value, consume)
        elif inspect.isgenerator(value):
            value = _consume(process, value, consume)
    except BaseException as exc:
        if process.dead:
            return "crashed", exc
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        return "raised", exc
    finally:
        _STORE.reset(tokens[1])
        _ACTIVE.reset(tokens[0])
        process.snapshot(Event("end", process.attempt.number))
    if process.dead:
        return "crashed", None
    return "returned", value


@dataclass
class RecordSummary:
    """What a run's record held when an attempt started: its step completions and items."""

    epoch: int
    done: int
    holes: set[int]
    calls: set[str]  # concurrent calls completed, by identity label
    entries: dict[int, str]  # the job's own steps with an entry: unit -> step name
    items: int  # items consumed, all resume points included

    def completed(self) -> set[int]:
        """The job's own step units of the record's epoch that completed."""
        return {n for n in range(self.done) if n not in self.holes}

    def holds(self, execution: Execution) -> bool:
        """Tell whether the record holds this step call's completion."""
        if execution.epoch != self.epoch:
            return False
        if execution.number < 0:
            return execution.identity() in self.calls
        n = execution.number
        return n < self.done and n not in self.holes


def _written(data: MemoryStore) -> dict[str, RecordSummary]:
    from resumable._job import _load

    found: dict[str, RecordSummary] = {}
    for key in data.keys(""):
        if is_auxiliary(key):
            continue
        try:
            head, entries = _load(data, key, "raise")
        except Exception:  # noqa: S112 - the next attempt reports it, as the job's error
            continue
        if head is None:
            continue
        found[key] = RecordSummary(
            epoch=head.epoch,
            done=head.done,
            holes={int(n) for n in head.holes if not n.startswith("~")},
            calls={n[1:] for n in entries if n.startswith("~")},
            entries={int(n): str(e[0]) for n, e in entries.items() if not n.startswith("~")},
            items=int(head.items.get("before", 0)) + int(head.items.get("done", 0)),
        )
    return found


def run_with_crashes(
    start: Callable[[], Any],
    schedule: Schedule | None = None,
    *,
    observe: Callable[[], Any] | None = None,
    consume: Callable[[Any], Any] | None = None,
    flushing: str = "schedule",
    trace: bool = False,
    data: MemoryStore | None = None,
    hooks: bool = True,
) -> Report:
    """Run a job under a crash schedule, restarting it from the store until it ends.

    Args:
        start: A zero-argument callable that calls the job, such as
            ``lambda: sync("acme")``. Sync, async (a coroutine is run in a fresh event
            loop per attempt) and generator jobs (the harness consumes the items).
            Every store the job names is replaced by the harness's.
        schedule: Where each attempt dies (default: nowhere).
        observe: Called after the last attempt; its answer is the report's
            ``observed`` (rows in a fake database, calls to a fake API).
        consume: For a generator job: called with each item the harness takes from
            it (your consumer's code: a crash can come after it handled an item and
            before it asked for the next).
        flushing: ``"schedule"`` (default): the harness writes progress at the
            schedule's step boundaries and the job's flusher only writes when asked,
            so a run replays exactly. ``"job"``: the job's own flush interval applies.
        trace: Also call ``observe()`` at every step boundary and record the
            timeline (used to tell where a side effect happened).
        data: The shared store data (default: a fresh `MemoryStore`).
        hooks: Observe step events (default). Without, only ``write``, ``item`` and
            ``push`` crashes fire and executions are not recorded, but resumable runs
            the code it runs when nobody observes it (its fast path for plain steps).

    Returns:
        A `Report`. The job's own exception, if the last attempt raised one, is in
        ``report.error``; it is not raised.
    """
    if flushing not in ("schedule", "job"):
        raise ValueError(f"flushing must be 'schedule' or 'job', not {flushing!r}")
    schedule = schedule or Schedule()
    data = data if data is not None else MemoryStore()
    report = Report(schedule=schedule)
    timeline = report.timeline if trace else None
    flush_every = schedule.flush_every if flushing == "schedule" else None
    token = _FLUSHING.set(flushing)
    try:
        with _scope(hooks):
            number = 0
            while True:
                planned = schedule.crashes[number] if number < len(schedule.crashes) else None
                number += 1
                attempt = Attempt(number, planned)
                report.attempts.append(attempt)
                process = _Process(attempt, flush_every, observe, timeline)
                before = _written(data) if number > 1 else {}
                attempt.record_at_start = before
                attempt.items_from = sum(w.items for w in before.values())
                outcome, value = _attempt(start, process, HarnessStore(data, process), consume)
                attempt.outcome = outcome
                for execution in attempt.executions:
                    report.executions[execution.step] += 1
                    held = before.get(execution.key)
                    if held is not None and held.holds(execution):
                        report.rerun_after_write.append(execution)
                if outcome == "crashed":
                    report.restarts += 1
                    continue
                if outcome == "raised":
                    report.error = value
                else:
                    report.result = value
                break
    finally:
        _FLUSHING.reset(token)
    if any(a.iterated for a in report.attempts):
        report.items = [item for a in report.attempts for item in a.items]
    if observe is not None:
        report.observed = _copy(observe())
    for attempt in report.attempts:
        for execution in attempt.executions:
            execution._call = None  # the run behind it is gone; keep reports light
    return report
