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
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import tenacity

from resumable import _digest
from resumable._keys import digest_plain, digest_texts, plain_arguments
from resumable._log import logger
from resumable._record import (
    Entry,
    Head,
    check_decode,
    chunk_key,
    dump_chunk,
    dump_head,
    encode_value,
)
from resumable.errors import ReplayMismatch
from resumable.stores._base import RunLock, Store

__all__ = ["Run", "StepContext", "StepDef", "current_run", "current_step"]

_RUN: ContextVar[Run | None] = ContextVar("resumable_run", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("resumable_step", default=None)

_DEBUG = logging.getLogger("resumable")
_NEW: Any = object()  # replay's answer for "not recorded: run the step"
_SLOW: Any = object()  # replay_quick's answer for "take the full path"
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

    def identity(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """A digest of the step's name and its call's arguments (or ``key=``), to match calls by."""
        from resumable._keys import bind_arguments

        if self.key is None:
            try:
                bound = bind_arguments(func, None, args, kwargs)
            except TypeError:
                text = repr(len(args)) + ",".join(sorted(kwargs))
            else:
                text = digest_texts(plain_arguments(bound))
        elif callable(self.key):
            text = str(self.key(*args, **kwargs))
        else:
            text = self.key.format(**bind_arguments(func, None, args, kwargs).arguments)
        return digest_plain(f"{self.name}\x00{text}")


class StepContext:
    """One call of a step inside a run (see `current_step`)."""

    __slots__ = (
        "args",
        "attempt",
        "concurrent",
        "func",
        "ident",
        "key_number",
        "kwargs",
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
    ) -> None:
        self.run = run
        self.sdef = sdef
        self.number = number
        self.key_number = number  # the number of its first attempt, for idempotency_key
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.attempt = 1
        self.concurrent = False
        self.ident: str | None = None

    @property
    def name(self) -> str:
        """The step's name (its qualified name unless ``@checkpoint(name=...)``)."""
        return self.sdef.name

    @property
    def idempotency_key(self) -> str:
        """``"<run key>:<epoch>.<step number>"``: the same for this step across restarts."""
        return f"{self.run.key}:{self.run.epoch}.{self.key_number}"

    def identity(self) -> str:
        if self.ident is None:
            self.ident = self.sdef.identity(self.func, self.args, self.kwargs)
        return self.ident

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


class Run:
    """The state of one run of a job: progress, replay and writing."""

    def __init__(
        self,
        *,
        job: str,
        key: str,
        store: Store,
        lock: RunLock,
        flush_interval: float,
        head: Head | None,
        entries: dict[int, Entry],
    ) -> None:
        self.job = job
        self.key = key
        self.store = store
        self._lock_handle = lock
        self._owner = threading.get_ident()
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
        self._prog: tuple[int, int, int] = (head.done, int(head.digest, 16), head.folded)
        self._above: set[int] = set(head.above)
        self._holes: dict[int, list[Any]] = {int(n): list(v) for n, v in head.holes.items()}
        self._pending_holes: dict[int, list[Any]] = {}
        self._intents: dict[int, Entry] = {}
        self._new: list[tuple[int, Entry]] = []
        self._flushed_new = 0
        # A resumed run writes its results to a new chunk: recorded chunks are never
        # rewritten, so nothing recorded can be lost by a later write.
        self._chunk_index = head.chunks[1] + 1
        self._chunk: dict[str, Entry] = {}
        self._stale_chunks: list[tuple[int, str]] = []
        self._inflight: set[StepContext] = set()
        self._next = 0
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
        # Replay: what the record holds for this epoch.
        self._rec_done = head.done
        self._rec_digest = int(head.digest, 16)
        self._rec_folded = head.folded
        self._rec_entries = entries
        self._rec_holes = dict(self._holes)
        self._rec_intents: dict[str, Entry] = {}
        for number, intent in head.intents.items():
            self._rec_intents[str(intent[1])] = [int(number), *intent]
        self._hole_idents: dict[str, list[Any]] = {
            str(hole[4]): hole for hole in self._holes.values() if len(hole) > 4
        }
        self._ident_index: dict[str, deque[int]] = {}
        for n in sorted(entries):
            ident = entries[n][1]
            if ident is not None:
                self._ident_index.setdefault(ident, deque()).append(n)
        ends = [head.done, *(n + 1 for n in head.above), *(n + 1 for n in self._holes)]
        self._replay_until = max(ends)
        self._replay_digest = 0
        self._replay_folded = 0
        self._verified = not head.done and not self._holes
        self.replaying = (
            self._replay_until > 0
            or bool(self._ident_index)
            or bool(self._rec_intents)
            or bool(self._hole_idents)
        )
        self.replayed = 0
        self._flusher: Flusher | None = None
        self.interval = flush_interval
        self.finished = False
        # True while a sync step on the run's thread may take the fast path: not
        # replaying, not finished, no async step in flight.
        self.fast = not self.replaying
        self.params: set[str] = set()
        # The sync step running alone on the run's thread, if any (the fast path keeps
        # it here instead of in a context variable).
        self.sync_n = -1
        self.sync_sdef: StepDef | None = None
        # The task that runs the job body: async steps called from other tasks (gather,
        # TaskGroup) may start in another order on resume, so they are matched by identity.
        self.main_task: asyncio.Task[Any] | None = None
        self._detach: Callable[[], None] | None = None

    # -- the store ------------------------------------------------------------------

    @property
    def items_done(self) -> int:
        """Items of a generator job consumed so far, over all resume points."""
        return self.items_before + self.item_prog[0]

    def in_flight(self) -> int:
        """How many steps are running now."""
        return len(self._inflight)

    @property
    def done(self) -> int:
        """How many units of the current epoch completed without a gap."""
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
            done, digest, folded = self._prog
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
            head.above = sorted(n for n in self._above if n >= done)
            head.intents = {str(n): list(v) for n, v in self._intents.items()}
            done_items, sink = self.item_prog
            head.items = {"done": done_items, "before": self.items_before, "sink": sink}
            if self.carry_encoded is not None:
                head.items["carry"] = self.carry_encoded
            head.holes = {str(n): list(v) for n, v in self._holes.items() if n < done}
            head.result = result
            head.error = error
            upto = len(self._new)
            new = self._new[self._flushed_new : upto]
            for n, entry in new:
                self._chunk[str(n)] = entry
            index = self._chunk_index
            head.chunks = [0, index if self._chunk else index - 1]
            chunk = dump_chunk(self.key, epoch, index, self._chunk) if new else None
            return epoch, index, upto, chunk, dump_head(head), done

    def write(
        self, *, retry: bool, status: str = "running", result: Any = None, error: str | None = None
    ) -> None:
        """Write the run's completed progress: the newest chunk if it grew, then the head."""
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
        if self._flusher is not None:
            self._flusher.sync()

    async def flush_async(self) -> None:
        """`flush` for coroutines: waits without blocking the event loop."""
        if self._flusher is not None:
            await self._flusher.async_sync()

    def request_flush(self) -> None:
        """Ask the flusher to write soon, without waiting."""
        if self._flusher is not None:
            self._flusher.request()

    def write_now_if_safe(self) -> None:
        """Write from a signal handler: only when no update is half done on this thread."""
        # Waits briefly for the flusher thread; gives up when this very thread holds
        # the lock (the signal arrived in the middle of an update or a write).
        if not self._lock.acquire(timeout=0.5):
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
        self._detach_store()
        _signals.leave(self)
        if self._flusher is not None:
            self._flusher.stop()
        self._lock_handle.release()

    def close(
        self, *, result: Any = None, finished: bool = False, error: BaseException | None = None
    ) -> None:
        """End the run: stop the flusher and write the last progress (raises if it cannot)."""
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

    # -- steps ------------------------------------------------------------------------

    def number(self, owner: bool) -> int:
        """Take the next unit number (under the lock when called off the run's thread)."""
        if owner:
            n = self._next
            self._next = n + 1
            return n
        with self._lock:
            n = self._next
            self._next = n + 1
            return n

    def make_call(
        self,
        sdef: StepDef,
        n: int,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        owner: bool,
    ) -> StepContext:
        call = StepContext(self, sdef, n, func, args, kwargs)
        if not owner:
            call.concurrent = True
        return call

    def replay_quick(self, sdef: StepDef, n: int) -> Any:
        """The common replay cases without building a call: ``_SLOW`` for the rest."""
        if self._ident_index or self._hole_idents or n >= self._rec_done:
            return _SLOW
        recorded = self._rec_entries.get(n)
        if recorded is None:
            if self._rec_holes and n in self._rec_holes:
                return _SLOW
            self._replay_digest = (self._replay_digest * _MULT + sdef.code) & _MASK
            self._replay_folded += 1
            self.replayed += 1
            return None
        if recorded[1] is None and recorded[0] == sdef.name:
            self.replayed += 1
            return self._decode(recorded)
        return _SLOW

    def complete_quick(
        self,
        sdef: StepDef,
        n: int,
        result: Any,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """`complete` for a sync step that ran alone on the run's thread."""
        done, digest, folded = self._prog
        if n == done and not self._above and not (self._holes and n in self._holes):
            if result is None:
                self._prog = (n + 1, (digest * _MULT + sdef.code) & _MASK, folded + 1)
            else:
                self._new.append((n, [sdef.name, None, encode_value(result, f"step {sdef.name!r} (#{n})")]))
                self._prog = (n + 1, digest, folded)
            self.dirty = True
            return
        self.complete(self.make_call(sdef, n, func, args, kwargs, True), result)

    def replay(self, call: StepContext) -> Any:
        """Return the recorded result of ``call``, or ``_NEW`` when it must run."""
        n = call.number
        if n >= self._replay_until and not self._ident_index and not self._hole_idents:
            if not self._rec_intents:
                self.replaying = False
                self._refresh_fast()
            return self._start_new(call)
        if self._ident_index:
            queue = self._ident_index.get(call.identity())
            if queue:
                m = queue.popleft()
                if not queue:
                    del self._ident_index[call.identity()]
                entry = self._rec_entries[m]
                if m != n:
                    self._move(n, entry)
                self.replayed += 1
                return self._decode(entry)
        if self._hole_idents:
            hole = self._hole_idents.pop(call.identity(), None)
            if hole is not None:  # a concurrent step that raised: it runs again
                return self._rerun_hole(call, hole)
        recorded = self._rec_entries.get(n)
        if recorded is not None and recorded[1] is None:
            if recorded[0] != call.name:
                self._mismatch(n, recorded[0], call.name)
            self.replayed += 1
            return self._decode(recorded)
        hole = self._rec_holes.get(n)
        if hole is not None and len(hole) < 5:
            if hole[0] != call.name:
                self._mismatch(n, hole[0], call.name)
            return self._rerun_hole(call, hole)
        if n < self._rec_done and recorded is None and hole is None:
            self._replay_digest = _digest.fold(self._replay_digest, call.sdef.code)
            self._replay_folded += 1
            self.replayed += 1
            return None
        return self._start_new(call)

    def _rerun_hole(self, call: StepContext, hole: list[Any]) -> Any:
        # A step that raised before the restart: the steps before it must match.
        if (self._replay_digest, self._replay_folded) != (int(hole[1], 16), hole[2]):
            self._mismatch(call.number, None, None, "the steps before it differ from the recorded ones")
        call.attempt = int(hole[3]) + 1
        return _NEW

    def _start_new(self, call: StepContext) -> Any:
        # New work during replay: the replayed steps must match the record first.
        self._verify(call)
        if self._rec_intents and call.sdef.durable:
            intent = self._rec_intents.pop(call.identity(), None)
            if intent is not None:  # it started before the restart and never completed
                call.attempt = max(call.attempt, int(intent[3]) + 1)
                call.key_number = int(intent[0])
        return _NEW

    def _decode(self, entry: Entry) -> Any:
        return check_decode(entry[2], self.store.describe(), self.key) if len(entry) > 2 else None

    def _verify(self, call: StepContext) -> None:
        if self._verified:
            return
        if (self._replay_digest, self._replay_folded) != (self._rec_digest, self._rec_folded):
            self._mismatch(
                call.number,
                None,
                None,
                f"before new work at step {call.number} ({call.name!r}) the job replayed "
                f"{self._replay_folded} steps that returned None where the record holds "
                f"{self._rec_folded}, or their names differ",
            )
        self._verified = True

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
        if (self._replay_digest, self._replay_folded) != (self._rec_digest, self._rec_folded):
            self._mismatch(
                self._next,
                None,
                None,
                f"the job replayed {self._replay_folded} steps that returned None where the "
                f"record holds {self._rec_folded}, or their names differ",
            )
        self._verified = True

    def _mismatch(self, n: int, recorded: str | None, called: str | None, detail: str = "") -> None:
        logger.error(
            "replay mismatch", key=self.key, position=n, recorded=recorded, called=called, detail=detail
        )
        raise ReplayMismatch(self.key, n, recorded, called, detail)

    def _move(self, n: int, entry: Entry) -> None:
        # A concurrent step matched by identity at another position: record it here too.
        with self._lock:
            self._new.append((n, entry))
            if n >= self._prog[0] and n not in self._above:
                self._above.add(n)
                self._advance()
            self.dirty = True

    def begin(self, call: StepContext) -> None:
        inflight = self._inflight
        if inflight:
            call.concurrent = True
            for other in inflight:
                other.concurrent = True
        inflight.add(call)
        self.fast = False

    def end(self, call: StepContext) -> None:
        self._inflight.discard(call)
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        self.fast = not self.replaying and not self.finished and not self._inflight

    def intend(self, call: StepContext) -> None:
        """Note a durable step's intent; the caller then waits for it to be written."""
        with self._lock:
            self._intents[call.number] = [call.name, call.identity(), call.attempt]
            self.dirty = True

    def complete(self, call: StepContext, result: Any) -> None:
        """Record that ``call`` returned ``result`` (encoded now: unencodable fails here)."""
        n = call.number
        done, digest, folded = self._prog
        if n == done and not call.concurrent and not self._above and n not in self._holes:
            encoded = None if result is None else encode_value(result, f"step {call.name!r} (#{n})")
            with self._lock if call.sdef.durable else contextlib.nullcontext():
                if call.sdef.durable:
                    self._intents.pop(n, None)
                if result is None:  # only the name digest records it: the head alone is written
                    self._prog = (n + 1, (digest * _MULT + call.sdef.code) & _MASK, folded + 1)
                else:
                    self._new.append((n, [call.name, None, encoded]))
                    self._prog = (n + 1, digest, folded)
                self.dirty = True
            return
        entry: Entry = [call.name, call.identity() if call.concurrent else None]
        if result is not None:
            entry.append(encode_value(result, f"step {call.name!r} (#{n})"))
        with self._lock:
            self._new.append((n, entry))
            self._intents.pop(n, None)
            self._holes.pop(n, None)
            if call.concurrent and self._holes:  # it may have raised at another position before
                for m in [m for m, hole in self._holes.items() if len(hole) > 4 and hole[4] == entry[1]]:
                    del self._holes[m]
            self._pending_holes.pop(n, None)
            if n >= self._prog[0]:
                self._above.add(n)
                self._advance()
            self.dirty = True

    def fail(self, call: StepContext) -> None:
        """Record that ``call`` raised: it stays to be run again, a hole in the units."""
        n = call.number
        with self._lock:
            self._intents.pop(n, None)
            if n in self._holes:
                self._holes[n][3] = call.attempt
            elif n >= self._prog[0]:
                ident = call.identity() if call.concurrent else None
                self._pending_holes[n] = [call.name, call.attempt, ident]
                self._advance()
            self.dirty = True

    def _advance(self) -> None:
        done, digest, folded = self._prog
        while True:
            if done in self._above:
                self._above.discard(done)
            elif done in self._pending_holes:
                name, attempt, ident = self._pending_holes.pop(done)
                self._holes[done] = [name, format(digest, "x"), folded, attempt]
                if ident is not None:
                    self._holes[done].append(ident)
            else:
                break
            done += 1
        self._prog = (done, digest, folded)

    def carried_items(self) -> list[Any]:
        """The items saved with the last resume point that a sink has yet to receive."""
        if self.carry_encoded is None:
            return []
        return list(check_decode(self.carry_encoded, self.store.describe(), self.key))

    def items_advance(self, new: int, carried: int, carry: list[Any]) -> None:
        """A sink now holds ``new`` more items of this epoch and ``carried`` saved ones.

        ``carry`` is what remains of the saved items, still to be pushed.
        """
        encoded = json.loads(json.dumps(encode_value(carry, "items held for the sink"))) if carry else None
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
        if self.replaying and self._next < self._replay_until:
            self._mismatch(
                self._next,
                None,
                None,
                f"the job declared a resume point after {self._next} steps, but the record "
                f"holds {self._rec_done} completed steps since the last one",
            )
        if not self._verified and (self._replay_digest, self._replay_folded) != (
            self._rec_digest,
            self._rec_folded,
        ):
            self._mismatch(
                self._next,
                None,
                None,
                f"at the resume point the job had replayed {self._replay_folded} steps that "
                f"returned None where the record holds {self._rec_folded}, or their names differ",
            )
        carry: list[Any] = []
        for hook in self.resume_point_hooks:
            carry.extend(hook())  # items a sink feed holds: saved so none is left behind
        carry_encoded = (
            json.loads(json.dumps(encode_value(carry, "items held for the sink"))) if carry else None
        )
        merged = dict(self.restart_args() or {})
        merged.update(bound_update)
        args = encode_value(merged, "restart_with() arguments")
        state = encode_value(self.state, "state()")
        args = json.loads(json.dumps(args))
        state = json.loads(json.dumps(state))
        with self._lock:
            old = [(self.epoch, chunk_key(self.key, self.epoch, i)) for i in range(self._chunk_index + 1)]
            self.epoch += 1
            self._args_encoded = args
            self._state_encoded = state
            self._prog = (0, 0, 0)
            self._above = set()
            self._holes = {}
            self._pending_holes = {}
            self._intents = {}
            self._new = []
            self._flushed_new = 0
            self._next = 0
            self.replaying = False
            self._refresh_fast()
            self._verified = True
            self._ident_index = {}
            self._hole_idents = {}
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


def active_runs() -> int:
    return len(_signals.runs)
