"""A run: progress in memory, replay of recorded steps, and the flusher that saves it.

One `Run` object exists per invocation of a job. It lives in a context variable, so
steps find it without globals, asyncio tasks created inside the run inherit it, and a
plain thread does not (see `_step`). Progress is counted in *units* from 0: step calls
in call order. ``done`` is the watermark (units below it completed), completions out
of order (concurrent async steps) wait in ``above``.

The hot path of a step that returns ``None`` touches one tuple: ``_prog = (done,
digest, folded)``. Assigning it is atomic, so the flusher thread always reads a
watermark and a name digest that belong together, and only ever writes completed
units.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import tenacity

from resumable import _digest
from resumable._ident import call_digest
from resumable._keys import bind_arguments, digest_plain
from resumable._log import logger
from resumable._record import (
    Entry,
    Head,
    check_decode,
    chunk_key,
    dump_chunk,
    dump_head,
    encode_text,
    entry_json,
    entry_text,
)
from resumable.errors import AmbiguousCall, ReplayMismatch
from resumable.stores._base import RunLock, Store

__all__ = ["Run", "StepContext", "StepDef", "current_run", "current_step"]

_RUN: ContextVar[Run | None] = ContextVar("resumable_run", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("resumable_step", default=None)

_DEBUG = logging.getLogger("resumable")
_NEW: Any = object()  # replay's answer for "not recorded: run the step"
_CHUNK_ENTRIES = 256  # a chunk is closed (never rewritten again) at this many entries
_CHUNK_BYTES = 64 * 1024

#: Observers of step events, for `resumable.testing`: each is called as
#: ``hook(event, call)`` with event ``"before"`` (a step is about to run its body) or
#: ``"after"`` (its completion is recorded in memory, not yet written). Empty in
#: normal use, where the check costs one truth test per step.
STEP_HOOKS: list[Callable[[str, StepContext], None]] = []

#: Observers of run events, for `resumable.testing`: ``hook(event, run)`` with event
#: ``"item"`` (a generator job's item was consumed, not yet written) or ``"push"`` (a
#: sink took and flushed a batch, not yet counted in a written record).
RUN_HOOKS: list[Callable[[str, Run], None]] = []


def notify_run(event: str, run: Run) -> None:
    for hook in list(RUN_HOOKS):
        hook(event, run)


#: How the flusher retries a store write that failed (tests may shorten it).
RETRY_ATTEMPTS = 4
RETRY_WAIT_MAX = 1.0


def current_run() -> Run | None:
    """Return the run the caller is inside, or ``None`` outside any run."""
    return _RUN.get()


def current_step() -> StepContext | None:
    """Return the step being executed, or ``None`` outside a step.

    Inside a step it tells the step's ``number`` in the run, its ``attempt`` (1 the
    first time; more when an earlier attempt started but never completed) and an
    ``idempotency_key`` that stays the same across restarts, to dedupe against the
    outside world (an HTTP ``Idempotency-Key`` header, a database unique key).
    """
    call = _STEP.get()
    if call is not None:
        return call
    run = _RUN.get()
    if (
        run is not None
        and run.sync_n >= 0
        and run.sync_sdef is not None
        and threading.get_ident() == run._owner
    ):
        return StepContext(run, run.sync_sdef, run.sync_n, _nothing, (), {})
    return None


def _nothing() -> None:
    return None


class StepDef:
    """What a ``@checkpoint`` decoration knows about its step, fixed at decoration."""

    __slots__ = ("code", "durable", "key", "name")

    def __init__(self, name: str, durable: bool, key: str | Callable[..., Any] | None) -> None:
        self.name = name
        self.code = _digest.name_code(name)
        self.durable = durable
        self.key = key

    def identity(
        self, func: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """How a concurrent call is told apart: a digest of the step's name and its
        arguments (the instance of a method included), or of ``key=``; and the objects
        in them that have no stable identity."""
        if self.key is None:
            desc = call_digest(instance, args, kwargs)
            text, opaque = desc.digest(), desc.opaque
        elif callable(self.key):
            text, opaque = str(self.key(*args, **kwargs)), []
        else:
            text, opaque = self.key.format(**bind_arguments(func, None, args, kwargs).arguments), []
        return digest_plain(f"{self.name}\x00{text}"), opaque


class StepContext:
    """One call of a step inside a run (see `current_step`)."""

    __slots__ = (
        "acode",
        "args",
        "attempt",
        "concurrent",
        "func",
        "instance",
        "key_number",
        "kwargs",
        "label",
        "number",
        "run",
        "sdef",
    )

    def __init__(
        self,
        run: Run,
        sdef: StepDef,
        number: int,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        acode: int = 0,
        instance: Any = None,
    ) -> None:
        self.run = run
        self.sdef = sdef
        self.number = number  # place in the job's own sequence, or -1 for a concurrent call
        self.key_number = number  # the number of its first attempt, for idempotency_key
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.instance = instance
        self.acode = acode
        self.attempt = 1
        self.concurrent = False
        self.label: str | None = None  # a concurrent call's identity and occurrence

    @property
    def name(self) -> str:
        """The step's name (its qualified name unless ``@checkpoint(name=...)``)."""
        return self.sdef.name

    @property
    def idempotency_key(self) -> str:
        """The same for this call on every attempt, across restarts, and no other call's.

        ``"<run key>:<epoch>.<step number>"`` for the job's own steps,
        ``"<run key>:<epoch>.c<identity>.<occurrence>"`` for calls from other tasks and
        threads (matched by their arguments).
        """
        if self.label is not None:
            ident, _, slot = self.label.partition("#")
            return f"{self.run.key}:{self.run.epoch}.c{ident}.{slot}"
        return f"{self.run.key}:{self.run.epoch}.{self.key_number}"

    def identity(self) -> str:
        """What the call is matched by on replay: its position, or its identity label."""
        return self.label if self.label is not None else str(self.number)

    def __repr__(self) -> str:
        return (
            f"StepContext(name={self.name!r}, number={self.number}, attempt={self.attempt}, "
            f"idempotency_key={self.idempotency_key!r})"
        )


class _Retry(Exception):
    """Internal: a store write failed and may be retried."""


class Flusher:
    """Writes a run's progress: every interval when dirty, and at once on request.

    Requests made while a write is under way are all served by the next write (group
    commit). Store errors are retried with exponential backoff (tenacity); a request
    whose write finally fails gets the error, the interval writes log it and go on.
    """

    def __init__(self, run: Run, interval: float) -> None:
        self.run = run
        self.interval = interval
        self._cond = threading.Condition()
        self._requested = 0
        self._written = 0
        self._failed_upto = 0
        self._error: BaseException | None = None
        self._stop = False
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread = threading.Thread(
            target=self._loop, name=f"resumable-flusher:{run.key[:40]}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request(self) -> int:
        """Ask for a write as soon as possible; returns a ticket to wait on."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float | None = None) -> bool:
        """Wait until the write that serves ``ticket`` is done; raise its error."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._written >= ticket or self._failed_upto >= ticket, timeout)
            if self._failed_upto >= ticket and self._written < ticket and self._error is not None:
                raise self._error
            return ok

    def sync(self) -> None:
        """Write now and wait for it (a durable step's intent or completion)."""
        self.wait(self.request())

    async def async_sync(self) -> None:
        """`sync` for coroutines: waits without blocking the event loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._stop:
                return  # the run ended: its last write is made by Run.close
            self._requested += 1
            self._waiters.append((self._requested, loop, fut))
            self._cond.notify_all()
        await fut

    def stop(self) -> None:
        """Stop the thread; waiters are released (the run's closing write follows)."""
        with self._cond:
            self._stop = True
            waiters, self._waiters = self._waiters, []
            self._written = max(self._written, self._requested)
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        for _, loop, fut in waiters:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, fut, None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                deadline = time.monotonic() + max(self.interval, 0.001)
                while not self._stop and self._requested <= max(self._written, self._failed_upto):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stop:
                    return
                target = self._requested
            if target > max(self._written, self._failed_upto) or self.run.dirty:
                self._write(target)

    def _write(self, target: int) -> None:
        error: BaseException | None = None
        try:
            self.run.write(retry=True)
        except Exception as exc:
            error = exc
            logger.error(
                "flush failed; the job goes on and the write is tried again",
                key=self.run.key,
                store=self.run.store.describe(),
                error=repr(exc),
            )
        with self._cond:
            if error is None:
                self._written = max(self._written, target)
            else:
                self.run.dirty = True  # what failed to be written is still to write
                self._error = error
                self._failed_upto = max(self._failed_upto, target)
            done = [w for w in self._waiters if w[0] <= target]
            self._waiters = [w for w in self._waiters if w[0] > target]
            self._cond.notify_all()
        for _, loop, fut in done:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, fut, error)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


class _Hole:
    """Replay's answer for a step that raised before the restart: run it again."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt


class Run:
    """The state of one run of a job: progress, replay and writing.

    Two kinds of step call make up a run. The job's *own* steps (called by the task or
    thread that runs the body) form a sequence matched by position, with a change
    detector of their arguments (``acode``): a completion is a unit below the
    watermark ``done``; those that returned ``None`` are only folded into a rolling
    digest of names and arguments (``digest``, ``folded``, and a count per step name),
    so the record stays O(1) for them. *Concurrent* calls (from other tasks or threads)
    are matched by identity: a digest of the step's name and all its arguments, plus
    an occurrence number among equal calls (``"IDENT#SLOT"``); each completion is an
    entry. Timing between tasks never moves the job's own steps.
    """

    def __init__(
        self,
        *,
        job: str,
        key: str,
        store: Store,
        lock: RunLock,
        flush_interval: float,
        head: Head | None,
        entries: dict[str, Entry],
    ) -> None:
        self.job = job
        self.key = key
        self.store = store
        self._lock_handle = lock
        self._owner = threading.get_ident()
        self.pid = os.getpid()
        self.forked = False  # True in a process forked while the run was active
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.state: dict[str, Any] = {}
        self.dirty = False
        self.resumed = head is not None
        now = time.time()
        head = head or Head(key=key, job=job, created=now, updated=now)
        self._head = head
        head.attempts += 1
        self.epoch = head.epoch
        self._args_encoded = head.args
        self._state_encoded = head.state
        # -- the job's own sequence
        self._next = 0
        self._prog: tuple[int, int, int] = (head.done, int(head.digest, 16), head.folded)
        self._counts: dict[int, int] = {int(k, 16): int(v) for k, v in head.counts.items()}
        self._holes: dict[int, list[Any]] = {}
        self._failed: dict[str, list[Any]] = {}  # concurrent calls that raised: label -> [name, attempts]
        for n, hole in head.holes.items():
            if n.startswith("~"):
                self._failed[n[1:]] = list(hole)
            else:
                self._holes[int(n)] = list(hole)
        self._last_fail: tuple[str, int] | None = None  # the own step that just raised
        self._intents: dict[str, list[Any]] = {}
        self._new: list[tuple[str, str]] = []  # (entry key, entry text) not yet in a chunk
        self._flushed_new = 0
        # A resumed run writes its results to a new chunk: recorded chunks are never
        # rewritten, so nothing recorded can be lost by a later write.
        self._chunk_index = head.chunks[1] + 1
        self._chunk: dict[str, str] = {}
        self._stale_chunks: list[tuple[int, str]] = []
        self.own_busy = False  # one of the job's own steps is running (off the fast path)
        # -- concurrent calls
        self._inflight = 0
        self._claimed: dict[str, set[int]] = {}
        self._opaque: dict[str, tuple[tuple[int, ...], list[Any]]] = {}
        # Items of a generator job: (consumed in this epoch, sink count that goes with it).
        sink_count = head.items.get("sink")
        self.item_prog: tuple[int, int | None] = (int(head.items.get("done", 0)), sink_count)
        self.items_before = int(head.items.get("before", 0))  # consumed in earlier epochs
        self.rec_items = self.item_prog[0]  # items of this epoch to drop on replay
        self.item_next = 0  # index of the next item the body yields in this epoch
        # Items a sink feed had taken but not pushed when a resume point was declared;
        # saved with the new epoch so that a restart pushes them first.
        self.resume_point_hooks: list[Callable[[], list[Any]]] = []
        self.carry_encoded: Any = head.items.get("carry")
        # -- replay: what the record holds for this epoch
        self._rec_done = head.done
        self._rec_digest = int(head.digest, 16)
        self._rec_folded = head.folded
        self._rec_counts = dict(self._counts)
        self._rec_own: dict[int, Entry] = {}
        self._rec_conc: dict[str, Entry] = {}
        for k, entry in entries.items():
            if k.startswith("~"):
                self._rec_conc[k[1:]] = entry
            else:
                self._rec_own[int(k)] = entry
        self._rec_holes = dict(self._holes)
        self._rec_intents: dict[str, list[Any]] = {k: list(v) for k, v in head.intents.items()}
        self._replay_digest = 0
        self._replay_folded = 0
        self._replay_counts: dict[int, int] = {}
        self._verified = self._rec_done == 0
        self.replaying = self._rec_done > 0 or any(not k.startswith("~") for k in self._rec_intents)
        self.replayed = 0
        self._flusher: Flusher | None = None
        self.interval = flush_interval
        self.finished = False
        # True while a sync step of the job's own may take the fast path: not
        # replaying, not finished, not in a forked child.
        self.fast = not self.replaying
        self.params: set[str] = set()
        self.owner_probe: tuple[Any, str] | None = None  # a method job's instance and its digest
        # The sync step running alone on the run's thread, if any (the fast path keeps
        # it here instead of in a context variable).
        self.sync_n = -1
        self.sync_sdef: StepDef | None = None
        # The task that runs the job body (async jobs): steps of other tasks are concurrent.
        self.main_task: asyncio.Task[Any] | None = None
        self._detach: Callable[[], None] | None = None

    # -- the store ------------------------------------------------------------------

    @property
    def items_done(self) -> int:
        """Items of a generator job consumed so far, over all resume points."""
        return self.items_before + self.item_prog[0]

    def in_flight(self) -> int:
        """How many steps are running now (the job's own and concurrent ones)."""
        return self._inflight + (1 if self.own_busy or self.sync_n >= 0 else 0)

    @property
    def done(self) -> int:
        """How many of the job's own steps of the current epoch completed (or raised)."""
        return self._prog[0]

    def forget_old_chunks(self, keys: list[str]) -> None:
        """Queue chunks of earlier epochs (left by a death after a resume point) for deletion."""
        prefix = f"{self.key}(r)"
        for key in keys:
            try:
                epoch = int(key[len(prefix) :].split(".", 1)[0])
            except ValueError:
                continue
            if key.startswith(prefix) and epoch < self.epoch:
                self._stale_chunks.append((epoch, key))

    def start(self) -> None:
        """Start the flusher and the signal handlers, on the thread that runs the body."""
        self._owner = threading.get_ident()
        try:
            self.main_task = asyncio.current_task()
        except RuntimeError:
            self.main_task = None
        self.state = self._decode_state()
        self._flusher = Flusher(self, self.interval)
        self._flusher.start()
        _signals.enter(self)
        self._detach = self.store.attach(self)

    def is_owner(self) -> bool:
        """Tell whether the caller is the job's own thread and task (not a concurrent one)."""
        if threading.get_ident() != self._owner:
            return False
        if self.main_task is None:
            return True
        try:
            return asyncio.current_task() is self.main_task
        except RuntimeError:
            return False

    def _decode_state(self) -> dict[str, Any]:
        state = check_decode(self._state_encoded, self.store.describe(), self.key)
        if not isinstance(state, dict):
            return {}
        return json.loads(json.dumps(state)) if self._state_encoded is state else state

    def restart_args(self) -> dict[str, Any] | None:
        if self._args_encoded is None:
            return None
        args = check_decode(self._args_encoded, self.store.describe(), self.key)
        return dict(args)

    def _snapshot(
        self, status: str, result: Any, error: str | None
    ) -> tuple[int, int, int, bytes | None, bytes, int]:
        """Under the run's lock: the bytes of the next chunk and head, all of one epoch."""
        with self._lock:
            self.dirty = False
            done, digest, folded = self._prog  # read before the counts: they are never behind it
            counts = dict(self._counts)
            epoch = self.epoch
            head = self._head
            head.status = status
            head.updated = time.time()
            head.epoch = epoch
            head.args = self._args_encoded
            head.state = self._state_encoded
            head.done = done
            head.digest = format(digest, "x")
            head.folded = folded
            head.counts = {format(k, "x"): v for k, v in counts.items()}
            head.above = []
            head.intents = {k: list(v) for k, v in self._intents.items()}
            done_items, sink = self.item_prog
            head.items = {"done": done_items, "before": self.items_before, "sink": sink}
            if self.carry_encoded is not None:
                head.items["carry"] = self.carry_encoded
            holes: dict[str, list[Any]] = {str(n): list(v) for n, v in self._holes.items() if n < done}
            for label, fail in self._failed.items():
                holes["~" + label] = list(fail)
            head.holes = holes
            head.result = result
            head.error = error
            upto = len(self._new)
            new = self._new[self._flushed_new : upto]
            for k, text in new:
                self._chunk[k] = text
            index = self._chunk_index
            head.chunks = [0, index if self._chunk else index - 1]
            chunk = dump_chunk(self.key, epoch, index, self._chunk) if new else None
            return epoch, index, upto, chunk, dump_head(head), done

    def write(
        self, *, retry: bool, status: str = "running", result: Any = None, error: str | None = None
    ) -> None:
        """Write the run's completed progress: the newest chunk if it grew, then the head."""
        if self.forked:
            return  # a forked child never writes its parent's record
        with self._write_lock:
            epoch, index, upto, chunk, data, done = self._snapshot(status, result, error)

            def attempt() -> None:
                if chunk is not None:
                    self.store.set(chunk_key(self.key, epoch, index), chunk)
                self.store.set(self.key, data)

            if retry:
                tenacity.Retrying(
                    stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
                    wait=tenacity.wait_exponential(multiplier=0.05, max=RETRY_WAIT_MAX),
                    retry=tenacity.retry_if_exception_type(OSError)
                    | tenacity.retry_if_exception_type(_transient()),
                    before_sleep=_log_retry(self),
                    reraise=True,
                )(attempt)
            else:
                attempt()
            with self._lock:
                if epoch == self.epoch:
                    self._flushed_new = max(self._flushed_new, upto)
                    full = len(self._chunk) >= _CHUNK_ENTRIES
                    if index == self._chunk_index and (
                        full or (chunk is not None and len(chunk) >= _CHUNK_BYTES)
                    ):
                        self._chunk_index += 1
                        self._chunk = {}
                # Chunks of an epoch are deleted only once a head of a later epoch is written.
                stale = [k for e, k in self._stale_chunks if e < epoch]
                self._stale_chunks = [(e, k) for e, k in self._stale_chunks if e >= epoch]
        for old in stale:
            try:
                self.store.delete(old)
            except Exception as exc:  # left behind, harmless: reset() removes it
                logger.warning("could not delete an old chunk", key=old, error=repr(exc))
        if _DEBUG.isEnabledFor(logging.DEBUG):  # rendering an event costs; skip it unseen
            logger.debug("flushed", key=self.key, done=done, epoch=epoch, status=status)

    def flush(self) -> None:
        """Write completed progress now and wait for it."""
        if self._flusher is not None and not self.forked:
            self._flusher.sync()

    async def aflush(self) -> None:
        """`flush` for coroutines: waits without blocking the event loop."""
        if self._flusher is not None and not self.forked:
            await self._flusher.async_sync()

    def request_flush(self) -> None:
        """Ask the flusher to write soon, without waiting."""
        if self._flusher is not None and not self.forked:
            self._flusher.request()

    def write_now_if_safe(self) -> None:
        """Write from a signal handler: only when no update is half done on this thread."""
        # Waits briefly for the flusher thread; gives up when this very thread holds
        # the lock (the signal arrived in the middle of an update or a write).
        if self.forked or not self._lock.acquire(timeout=0.5):
            return
        self._lock.release()
        if not self._write_lock.acquire(timeout=2.0):
            return
        self._write_lock.release()
        try:
            self.write(retry=False)
        except Exception as exc:
            logger.error("flush on signal failed", key=self.key, error=repr(exc))

    def leave_signals(self) -> None:
        """Stop counting this run for the signal handlers (restored when none is left)."""
        _signals.leave(self)

    def _detach_store(self) -> None:
        detach, self._detach = self._detach, None
        if detach is not None:
            try:
                detach()
            except Exception as exc:
                logger.warning("could not detach the run from its store", key=self.key, error=repr(exc))

    def abandon(self) -> None:
        """Give the run up without writing (it never started)."""
        if self.forked:
            return  # the parent's run: not ours to release
        self._detach_store()
        _signals.leave(self)
        if self._flusher is not None:
            self._flusher.stop()
        self._lock_handle.release()

    def close(
        self, *, result: Any = None, finished: bool = False, error: BaseException | None = None
    ) -> None:
        """End the run: stop the flusher and write the last progress (raises if it cannot)."""
        if self.forked:
            return  # a forked child never writes its parent's record nor releases its lock
        self._detach_store()
        _signals.leave(self)
        if self._flusher is not None:
            self._flusher.stop()
        try:
            text = None if error is None else f"{type(error).__name__}: {error}"
            self.write(retry=True, status="finished" if finished else "running", result=result, error=text)
        finally:
            self._lock_handle.release()
        self.finished = finished
        self.fast = False

    def after_fork(self) -> None:
        """In a child forked from the run's process: the run is the parent's, not ours."""
        self.forked = True
        self.fast = False
        self._flusher = None

    # -- the job's own steps ----------------------------------------------------------

    def make_call(
        self,
        sdef: StepDef,
        n: int,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        acode: int = 0,
    ) -> StepContext:
        return StepContext(self, sdef, n, func, args, kwargs, acode)

    def replay_own(self, sdef: StepDef, n: int, acode: int) -> Any:
        """Replay the job's own step ``n``: its recorded result, ``_NEW`` or a `_Hole`."""
        if n >= self._rec_done:
            self._verify(n, sdef.name)
            intent = self._rec_intents.get(str(n))
            if intent is None:
                self._end_replay()
                return _NEW
            del self._rec_intents[str(n)]
            self._end_replay()
            if intent[0] != sdef.name or intent[1] != acode:
                self._mismatch(
                    n,
                    intent[0],
                    sdef.name,
                    "a durable step started here and never completed; the call in its place "
                    "has another step or other arguments, and must not take its idempotency key",
                )
            return _Hole(int(intent[2]) + 1)
        entry = self._rec_own.get(n)
        if entry is not None:
            self._check(n, entry[0], entry[1], sdef.name, acode)
            self.replayed += 1
            return self._decode(entry)
        hole = self._rec_holes.get(n) if self._rec_holes else None
        if hole is not None:
            self._check(n, hole[0], hole[4], sdef.name, acode)
            if (self._replay_digest, self._replay_folded) != (int(hole[1], 16), hole[2]):
                self._mismatch(n, None, None, "the steps before it differ from the recorded ones")
            # A retry (tenacity around the step) whose later attempt completed: that
            # completion is this call's; the failed attempts are not run again.
            m = n + 1
            while (h := self._rec_holes.get(m)) is not None and h[0] == sdef.name and h[4] == acode:
                m += 1
            later = self._rec_own.get(m)
            if m < self._rec_done and later is not None and later[0] == sdef.name and later[1] == acode:
                self._next = m + 1
                self.replayed += 1
                return self._decode(later)
            return _Hole(int(hole[3]) + 1)
        code = sdef.code
        count = self._replay_counts.get(code, 0) + 1
        if count > self._rec_counts.get(code, 0):
            self._mismatch(
                n,
                None,
                sdef.name,
                f"the record holds {self._rec_counts.get(code, 0)} calls of {sdef.name!r} that "
                "returned None, and this one would be one more; a step that returned None was "
                "recorded here",
            )
        self._replay_counts[code] = count
        self._replay_digest = (self._replay_digest * _MULT + (code ^ acode)) & _MASK
        self._replay_folded += 1
        self.replayed += 1
        return None

    def _check(self, n: int, name: str, code: int, called: str, acode: int) -> None:
        if name != called:
            self._mismatch(n, name, called)
        if code != acode:
            self._mismatch(
                n,
                None,
                None,
                f"the step {called!r} was recorded here with other arguments: its inputs changed "
                "under the run (a file or a query that returns other rows now?), and a recorded "
                "result is never handed to a call with other arguments",
            )

    def _end_replay(self) -> None:
        if not any(not k.startswith("~") for k in self._rec_intents):
            self.replaying = False
            self._refresh_fast()

    def _decode(self, entry: Entry) -> Any:
        return check_decode(entry[2], self.store.describe(), self.key) if len(entry) > 2 else None

    def _verify(self, n: int, called: str | None) -> None:
        """Before new work: the replayed steps must be the recorded ones."""
        if self._verified:
            return
        if (self._replay_digest, self._replay_folded) != (self._rec_digest, self._rec_folded):
            where = f"new work at step {n} ({called!r})" if called else f"new work at step {n}"
            self._mismatch(
                n,
                None,
                None,
                f"before {where} the job replayed {self._replay_folded} steps that returned None "
                f"where the record holds {self._rec_folded}, or their names or arguments differ",
            )
        self._verified = True

    def may_do_new_work(self) -> bool:
        """Tell whether replay has reached the watermark (verifying it then), so that
        new output may be pushed; raises `ReplayMismatch` when the replay went wrong."""
        if self._verified:
            return True
        if self._next >= self._rec_done:
            self._verify(self._next, None)
            return True
        return False

    def before_new_item(self) -> None:
        """A generator job yields an item not consumed before: replay must be complete."""
        if self._verified:
            return
        if self._next < self._rec_done:
            self._mismatch(
                self._next,
                None,
                None,
                f"the generator yielded a new item after {self._next} steps, but the record holds "
                f"{self._rec_done} steps completed before its next item",
            )
        self._verify(self._next, None)

    def check_end(self) -> None:
        """At the end of the body: a replay that never reached the watermark is a mismatch."""
        if self.item_next < self.rec_items:
            self._mismatch(
                self._next,
                None,
                None,
                f"the generator ended after yielding {self.item_next} items, but the record "
                f"holds {self.rec_items} consumed ones since the last resume point",
            )
        if self._verified:
            return
        if self._next < self._rec_done:
            self._mismatch(
                self._next,
                None,
                None,
                f"the job returned after {self._next} steps, but the record holds "
                f"{self._rec_done} completed ones",
            )
        self._verify(self._next, None)

    def _mismatch(self, n: int, recorded: str | None, called: str | None, detail: str = "") -> None:
        logger.error(
            "replay mismatch", key=self.key, position=n, recorded=recorded, called=called, detail=detail
        )
        raise ReplayMismatch(self.key, n, recorded, called, detail)

    def _refresh_fast(self) -> None:
        self.fast = not self.replaying and not self.finished and not self.forked

    def intend(self, call: StepContext) -> None:
        """Note a durable step's intent; the caller then waits for it to be written."""
        with self._lock:
            if call.label is not None:
                self._intents["~" + call.label] = [call.name, 0, call.attempt]
            else:
                self._intents[str(call.number)] = [call.name, call.acode, call.attempt]
            self.dirty = True

    def complete_own(self, sdef: StepDef, n: int, acode: int, result: Any, durable: bool = False) -> None:
        """Record that the job's own step ``n`` returned ``result``.

        The result is encoded to its JSON text now: a copy, so that the body changing
        the returned object later changes nothing recorded, and a value that cannot be
        saved fails here, naming the step.
        """
        last = self._last_fail
        after_fail = False
        if last is not None:
            self._last_fail = None
            after_fail = last == (sdef.name, acode)
        if result is None:
            text = entry_text(sdef.name, acode)
        else:
            text = entry_json(sdef.name, acode, result, n, self.key)
        if durable:
            with self._lock:
                self._intents.pop(str(n), None)
                self._record_own(sdef, n, acode, result is None and not after_fail, text)
        else:
            self._record_own(sdef, n, acode, result is None and not after_fail, text)

    def _record_own(self, sdef: StepDef, n: int, acode: int, fold: bool, text: str) -> None:
        done, digest, folded = self._prog
        if n < done:  # a step that raised before the restart, run again: it completed now
            self._holes.pop(n, None)
            self._new.append((str(n), text))
        elif fold:  # only the digest records it: no per-step space
            code = sdef.code
            self._counts[code] = self._counts.get(code, 0) + 1  # before _prog: never behind it
            self._prog = (n + 1, (digest * _MULT + (code ^ acode)) & _MASK, folded + 1)
        else:
            # After a failed attempt of the same call, even a None result is an entry:
            # replay then hands it to the retried call instead of running it again.
            self._new.append((str(n), text))
            self._prog = (n + 1, digest, folded)
        self.dirty = True

    def fail_own(self, sdef: StepDef, n: int, acode: int, attempt: int) -> None:
        """Record that the job's own step ``n`` raised: it stays to be run again, a hole."""
        with self._lock:
            self._intents.pop(str(n), None)
            done, digest, folded = self._prog
            if n in self._holes:
                self._holes[n][3] = attempt
            elif n >= done:
                self._holes[n] = [sdef.name, format(digest, "x"), folded, attempt, acode]
                self._prog = (n + 1, digest, folded)
            self._last_fail = (sdef.name, acode)
            self.dirty = True

    # -- concurrent calls -------------------------------------------------------------

    def claim(self, call: StepContext) -> Any:
        """Give a concurrent call its identity and occurrence: its recorded result, or ``_NEW``.

        Equal calls (same step, same arguments) are interchangeable: the first ``k`` of
        them on replay take the ``k`` recorded completions, in whatever order they come.
        """
        sdef = call.sdef
        ident, opaque = sdef.identity(call.func, call.instance, call.args, call.kwargs)
        call.concurrent = True
        with self._lock:
            if opaque:
                self._check_opaque(ident, opaque, sdef)
            taken = self._claimed.setdefault(ident, set())
            slot = 0
            while slot in taken:
                slot += 1
            taken.add(slot)
            label = f"{ident}#{slot}"
            call.label = label
            entry = self._rec_conc.get(label)
            if entry is not None:
                if entry[0] != sdef.name:
                    self._mismatch(-1, entry[0], sdef.name)
                self.replayed += 1
            else:
                failed = self._failed.get(label)
                intent = self._rec_intents.pop("~" + label, None)
                if failed is not None:
                    call.attempt = max(call.attempt, int(failed[1]) + 1)
                if intent is not None:
                    call.attempt = max(call.attempt, int(intent[2]) + 1)
                self._inflight += 1
                return _NEW
        return self._decode(entry)

    def _check_opaque(self, ident: str, opaque: list[Any], sdef: StepDef) -> None:
        ids = tuple(id(o) for o in opaque)
        seen = self._opaque.get(ident)
        if seen is None:
            self._opaque[ident] = (ids, opaque)  # kept alive, so an id is never reused
            return
        if seen[0] != ids:
            kinds = sorted({type(o).__qualname__ for o in opaque})
            logger.error("ambiguous concurrent call", key=self.key, step=sdef.name, opaque=kinds)
            raise AmbiguousCall(
                self.key,
                -1,
                None,
                None,
                f"the step {sdef.name!r} is called from concurrent tasks or threads with arguments "
                f"that differ only in objects resumable cannot identify ({', '.join(kinds)}); no "
                "restart could tell which recorded result is whose. Give the step key= "
                "(a format string over its parameters, or a callable), or pass plain data or a "
                "dataclass of plain data that names the call",
            )

    def complete_concurrent(self, call: StepContext, result: Any) -> None:
        """Record that a concurrent call returned ``result`` (encoded now)."""
        text = None
        if result is not None:
            text = entry_json(call.name, 0, result, f"call {call.label}", self.key)
        label = call.label
        assert label is not None
        entry = text if text is not None else entry_text(call.name, 0)
        with self._lock:
            self._inflight -= 1
            self._intents.pop("~" + label, None)
            self._failed.pop(label, None)
            self._new.append(("~" + label, entry))
            self.dirty = True

    def fail_concurrent(self, call: StepContext) -> None:
        """A concurrent call raised: its occurrence is free again, for its retry."""
        label = call.label
        assert label is not None
        ident, _, slot = label.partition("#")
        with self._lock:
            self._inflight -= 1
            self._intents.pop("~" + label, None)
            self._claimed.get(ident, set()).discard(int(slot))
            self._failed[label] = [call.name, call.attempt]
            self.dirty = True

    # -- generator items --------------------------------------------------------------

    def carried_items(self) -> list[Any]:
        """The items saved with the last resume point that a sink has yet to receive."""
        if self.carry_encoded is None:
            return []
        return list(check_decode(self.carry_encoded, self.store.describe(), self.key))

    def items_advance(self, new: int, carried: int, carry: list[Any]) -> None:
        """A sink now holds ``new`` more items of this epoch and ``carried`` saved ones.

        ``carry`` is what remains of the saved items, still to be pushed.
        """
        encoded = json.loads(encode_text(carry, "items held for the sink", self.key)) if carry else None
        with self._lock:
            done, count = self.item_prog
            self.item_prog = (done + new, (count or 0) + new + carried)
            self.items_before += carried  # saved items belong to the epochs before
            self.carry_encoded = encoded
            self.dirty = True

    # -- resume points ----------------------------------------------------------------

    def restart_with(self, bound_update: dict[str, Any]) -> None:
        """Start a new epoch: a restart calls the job with ``bound_update`` applied."""
        if self._inflight:
            raise RuntimeError("restart_with() was called while steps are still running; await them first")
        if self.item_next < self.rec_items:
            self._mismatch(
                self._next,
                None,
                None,
                f"the job declared a resume point after yielding {self.item_next} items, but "
                f"the record holds {self.rec_items} consumed items since the last one",
            )
        if self.replaying and self._next < self._rec_done:
            self._mismatch(
                self._next,
                None,
                None,
                f"the job declared a resume point after {self._next} steps, but the record "
                f"holds {self._rec_done} completed steps since the last one",
            )
        self._verify(self._next, None)
        carry: list[Any] = []
        for hook in self.resume_point_hooks:
            carry.extend(hook())  # items a sink feed holds: saved so none is left behind
        carry_encoded = json.loads(encode_text(carry, "items held for the sink", self.key)) if carry else None
        merged = dict(self.restart_args() or {})
        merged.update(bound_update)
        args = json.loads(encode_text(merged, "restart_with() arguments", self.key))
        state = json.loads(encode_text(self.state, "state()", self.key))
        # The switch is all or nothing: a Ctrl-C that arrives during it waits until it is done.
        with _signals.deferred(), self._lock:
            old = [(self.epoch, chunk_key(self.key, self.epoch, i)) for i in range(self._chunk_index + 1)]
            self.epoch += 1
            self._args_encoded = args
            self._state_encoded = state
            self._prog = (0, 0, 0)
            self._counts = {}
            self._holes = {}
            self._failed = {}
            self._last_fail = None
            self._intents = {}
            self._new = []
            self._flushed_new = 0
            self._next = 0
            self._claimed = {}
            self._opaque = {}
            self._rec_done = 0
            self._rec_own = {}
            self._rec_conc = {}
            self._rec_holes = {}
            self._rec_intents = {}
            self.replaying = False
            self._verified = True
            self._refresh_fast()
            self._chunk_index = 0
            self._chunk = {}
            self._stale_chunks.extend(old)
            done_items, sink = self.item_prog
            self.items_before += done_items
            self.item_prog = (0, sink)
            if carry_encoded is not None:
                self.carry_encoded = carry_encoded
            self.item_next = 0
            self.rec_items = 0
            self.dirty = True


_MULT = _digest.MULT
_MASK = _digest.MASK


def _transient() -> type[BaseException]:
    return TransientStoreError


class TransientStoreError(Exception):
    """Raise from a store for a failure worth retrying (a 5xx from a network store)."""


def _log_retry(run: Run) -> Callable[[tenacity.RetryCallState], None]:
    def log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "store write failed, retrying",
            key=run.key,
            store=run.store.describe(),
            attempt=state.attempt_number,
            error=repr(exc),
        )

    return log


class _Signals:
    """SIGTERM and SIGINT handlers, installed while a run is active (main thread only).

    On a signal, every active run writes its completed progress, then the signal has
    its usual effect: the handler that was there before is called, or the default
    action is taken (SIGINT raises KeyboardInterrupt, SIGTERM ends the process).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.owners: set[int] = set()  # threads that run a job now
        self.previous: dict[int, Any] = {}
        self.mutex = threading.Lock()
        self.depth = 0  # critical sections the main thread is in: signals wait for their end
        self.pending: list[tuple[int, Any]] = []

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A critical section: a signal that arrives in it is handled when it ends."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                signum, frame = self.pending[0]
                self.pending.clear()
                self.handle(signum, frame)

    def after_fork(self) -> None:
        """In a forked child: the parent's runs are not the child's to write or release."""
        for run in self.runs:
            run.after_fork()
        self.runs = []
        self.owners = set()
        self.mutex = threading.Lock()
        self.depth = 0
        self.pending = []

    def enter(self, run: Run) -> None:
        with self.mutex:
            self.runs.append(run)
            self.owners = {r._owner for r in self.runs}
            if not self.previous and threading.current_thread() is threading.main_thread():
                for sig in self.SIGNALS:
                    with contextlib.suppress(ValueError, OSError):  # not the main interpreter
                        self.previous[sig] = signal.signal(sig, self.handle)

    def leave(self, run: Run) -> None:
        with self.mutex:
            with contextlib.suppress(ValueError):
                self.runs.remove(run)
            self.owners = {r._owner for r in self.runs}
            if not self.runs and self.previous and threading.current_thread() is threading.main_thread():
                for sig, old in self.previous.items():
                    if signal.getsignal(sig) == self.handle:
                        signal.signal(sig, old)
                self.previous = {}

    def handle(self, signum: int, frame: Any) -> None:
        if self.depth and threading.current_thread() is threading.main_thread():
            self.pending.append((signum, frame))
            return
        for run in list(self.runs):
            run.write_now_if_safe()
        logger.info("signal received; progress written", signal=signal.Signals(signum).name)
        previous = self.previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


_signals = _Signals()
os.register_at_fork(after_in_child=_signals.after_fork)


def active_runs() -> int:
    return len(_signals.runs)
