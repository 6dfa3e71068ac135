"""``@resumable``: jobs whose runs survive restarts, and the helpers used inside them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import tenacity

from resumable import _config
from resumable._ident import closure_identity, describe
from resumable._keys import bind_arguments, digest_texts, format_key, make_key, plain_arguments, signature_of
from resumable._log import logger
from resumable._record import (
    Entry,
    Head,
    check_decode,
    check_verify,
    chunk_key,
    encode_value,
    load_chunk,
    load_head,
)
from resumable._run import _RUN, _STEP, Run
from resumable._step import _BoundProxy, _Proxy, kind_of, qualified_name
from resumable.errors import CheckpointCorrupted, ResumableError, RunLocked
from resumable.stores._base import RunLock, Store

__all__ = ["JobDef", "aflush", "flush", "reset", "restart_with", "resumable", "state"]

P = ParamSpec("P")
R = TypeVar("R")

_INTERRUPTIONS = (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit)


class OutsideRun(ResumableError, RuntimeError):
    """A helper that only works inside a running job was called outside one."""


def _require_run(what: str) -> Run:
    run = _RUN.get()
    if run is None:
        raise OutsideRun(f"{what} was called outside a running @resumable job")
    return run


def state() -> dict[str, Any]:
    """Return the running job's persistent state: a dict of JSON values.

    The dict is saved with the run's record. On resume it holds what it held at the
    last resume point (`restart_with`), or is empty when the run declared none: the job
    body then runs again from its start and redoes its own updates, while recorded
    steps return their recorded results. So update state in the job body, not inside
    steps (a replayed step does not run, and its updates would be lost).

    Raises:
        OutsideRun: outside a running job.
    """
    return _require_run("state()").state


def restart_with(**kwargs: Any) -> None:
    """Declare a resume point: a restart calls the job again with these arguments.

    The named arguments replace the original ones (the others keep their values from
    the call that resumes), units are counted from here, and the results recorded
    before this point are dropped from the record, so it stays small however long the
    run. Resumption then costs O(1), not O(steps so far). Arguments are encoded now
    (JSON, else cloudpickle): an argument that cannot be saved raises
    `NotSerializable` here.

    Raises:
        OutsideRun: outside a running job.
        TypeError: for a name that is not a parameter of the job.
        RuntimeError: while steps of the run are still in flight.
    """
    run = _require_run("restart_with()")
    params = run.params
    unknown = [name for name in kwargs if name not in params]
    if unknown:
        raise TypeError(
            f"restart_with() got {', '.join(map(repr, unknown))}, which the job {run.job} does not take"
        )
    run.restart_with(kwargs)


def flush() -> None:
    """Write the running job's completed progress now and wait until it is written.

    Raises:
        OutsideRun: outside a running job.
    """
    _require_run("flush()").flush()


async def aflush() -> None:
    """`flush` for coroutines: waits for the write without blocking the event loop.

    Raises:
        OutsideRun: outside a running job.
    """
    await _require_run("aflush()").aflush()


@dataclass
class _Finished:
    result: Any


def _load(store: Store, key: str, on_corrupt: str) -> tuple[Head | None, dict[str, Entry]]:
    raw = store.get(key)
    if raw is None:
        return None, {}
    where = store.describe()
    try:
        return _read(store, key, raw)
    except CheckpointCorrupted as exc:
        if on_corrupt != "restart":
            raise
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = f"{key}(corrupt){stamp}"
        for old in store.keys(f"{key}(r)"):
            value = store.get(old)
            if value is not None:
                store.set(aside + old[len(key) :], value)
            store.delete(old)
        store.set(aside, raw)
        store.delete(key)
        logger.warning(
            "corrupt record moved aside; the run starts over",
            key=key,
            store=where,
            moved_to=aside,
            reason=exc.reason,
        )
        return None, {}


def _read(store: Store, key: str, raw: bytes) -> tuple[Head, dict[str, Entry]]:
    """Read a run's head and chunks; anything off raises `CheckpointCorrupted`.

    Entries are keyed by the unit number of the job's own steps (as text), or by
    ``"~IDENT#SLOT"`` for concurrent calls.
    """
    where = store.describe()
    head = load_head(raw, where, key)
    if head.key != key:
        raise CheckpointCorrupted(where, key, f"it is the record of {head.key!r}")
    holes: set[int] = set()
    try:
        for n in head.holes:
            if not n.startswith("~"):
                holes.add(int(n))
        for n in head.intents:
            if not n.startswith("~"):
                int(n)
    except ValueError:
        raise CheckpointCorrupted(where, key, "a hole or intent is not a unit number") from None
    check_verify(head.result, where, key)
    check_verify(head.args, where, key)
    check_verify(head.state, where, key)
    check_verify(head.items.get("carry"), where, key)
    entries: dict[str, Entry] = {}
    first, last = head.chunks
    for index in range(first, last + 1):
        ckey = chunk_key(key, head.epoch, index)
        craw = store.get(ckey)
        if craw is None:
            raise CheckpointCorrupted(where, key, f"its chunk {ckey!r} is missing")
        for n, entry in load_chunk(craw, where, ckey, key, head.epoch, index).items():
            if not (
                isinstance(entry, list)
                and 2 <= len(entry) <= 3
                and isinstance(entry[0], str)
                and type(entry[1]) is int
            ):
                raise CheckpointCorrupted(where, key, f"a malformed entry in chunk {ckey!r}")
            if n.startswith("~"):
                if "#" not in n:
                    raise CheckpointCorrupted(where, key, f"chunk {ckey!r} holds {n!r}, not a call label")
            else:
                try:
                    unit = int(n)
                except ValueError:
                    raise CheckpointCorrupted(
                        where, key, f"chunk {ckey!r} holds {n!r}, not a unit number"
                    ) from None
                if unit >= head.done or unit in holes:
                    continue  # written before its completion was: not completed
            if len(entry) > 2:
                check_verify(entry[2], where, key)
            entries[n] = entry
    return head, entries


def _take_lock(store: Store, key: str) -> RunLock:
    """Take a run's lock. A lock held for an instant (``Store.is_locked`` probing, as
    ``resumable list`` does) is waited out for up to 50 ms; a live run is not."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RunLocked),
        stop=tenacity.stop_after_delay(0.05),
        wait=tenacity.wait_fixed(0.005),
        reraise=True,
    )
    return retrying(store.lock, key)


def delete_run(store: Store, key: str) -> bool:
    """Remove a run's head and chunks; returns whether a head was there."""
    existed = store.get(key) is not None
    for old in store.keys(f"{key}(r)"):
        store.delete(old)
    store.delete(key)
    return existed


class JobDef:
    """What a ``@resumable`` decoration knows about its job, fixed at decoration."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        key: str | Callable[..., str] | None,
        store: Store | str | None,
        flush_interval: float | None,
        on_corrupt: str,
        ignore: tuple[str, ...],
    ) -> None:
        self.func = func
        self.name = qualified_name(func)
        self.kind = kind_of(func)
        self.key = key
        self.store = store
        self.flush_interval = flush_interval
        self.on_corrupt = on_corrupt
        self.ignore = ignore
        target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
        self.params = set(signature_of(target).parameters)
        self.key_name = self.name
        if key is None and ("<lambda>" in self.name or "<locals>" in self.name):
            # Lambdas share one qualified name, and so do the functions one factory
            # makes: their code (lambdas) and what they capture tell them apart.
            ident, opaque = closure_identity(target)
            if opaque:
                kinds = ", ".join(sorted({type(o).__qualname__ for o in opaque}))
                raise TypeError(
                    f"the job {self.name} is defined inside a function and captures objects "
                    f"resumable cannot identify ({kinds}): two such jobs could share run keys. "
                    "Give it key= (a format string over its parameters, or a callable), or "
                    "define it at module level"
                )
            self.key_name = f"{self.name}@{ident[:8]}"

    def key_for(self, bound: inspect.BoundArguments, owner: Any = None) -> str:
        """The run key of a call: ``key=``, or the job's name and a digest of its arguments.

        The digest covers the plain-data arguments, dataclasses of plain data, and the
        instance (or class) of a method job: ``Account("acme").export()`` and
        ``Account("globex").export()`` are two runs.
        """
        if self.key is not None:
            return format_key(self.key, bound)
        plain = plain_arguments(bound, self.ignore)
        for name, value in bound.arguments.items():
            if name in plain or name in self.ignore:
                continue
            if name in ("self", "cls"):
                owner = value if owner is None else owner
                continue
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                desc = describe(value)
                if not desc.opaque:
                    plain[name] = "dataclass:" + desc.digest()
        if owner is not None and not ({"self", "cls"} & set(self.ignore)):
            desc = describe(owner)
            if desc.opaque:
                kinds = ", ".join(sorted({type(o).__qualname__ for o in desc.opaque}))
                raise TypeError(
                    f"the job {self.name} is a method of {type(owner).__qualname__}, whose state "
                    f"resumable cannot identify ({kinds}): calls on two such objects could share "
                    "one run. Give the job key= (say key='export-{self.name}'), or "
                    "ignore=('self',) if every instance is the same job"
                )
            plain["\x00self"] = desc.digest()
        return make_key(f"{self.key_name}-{digest_texts(plain)}")

    def begin(
        self,
        wrapped: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        start: bool = True,
        instance: Any = None,
    ) -> tuple[Run, inspect.BoundArguments] | _Finished:
        """Find or create the run of this call: lock it, load its record, start it."""
        bound = bind_arguments(wrapped, None, args, kwargs)
        owner = instance if instance is not None else getattr(wrapped, "__self__", None)
        key = self.key_for(bound, owner)
        probe = None
        if owner is not None and self.key is None and not ({"self", "cls"} & set(self.ignore)):
            probe = (owner, describe(owner).digest())
        store = _config.resolve_store(self.store)
        lock = _take_lock(store, key)
        try:
            head, entries = _load(store, key, self.on_corrupt)
            if head is not None and head.status == "finished":
                result = check_decode(head.result, store.describe(), key)
                lock.release()
                logger.warning(
                    "run already finished; returning its recorded result. To run it again, "
                    "call the job's reset() with the same arguments, run `resumable reset KEY`, "
                    "or give the call another key",
                    key=key,
                    job=self.name,
                    store=store.describe(),
                )
                return _Finished(result)
            run = Run(
                job=self.name,
                key=key,
                store=store,
                lock=lock,
                flush_interval=_config.resolve_interval(self.flush_interval),
                head=head,
                entries=entries,
            )
            run.params = self.params
            run.owner_probe = probe
            if head is not None and head.epoch > 0:
                run.forget_old_chunks(store.keys(f"{key}(r)"))
            restart = run.restart_args()
            if restart:
                for name, value in restart.items():
                    bound.arguments[name] = value
            if start:
                run.start()
        except BaseException:
            lock.release()
            raise
        if head is None:
            logger.info("run started", key=key, job=self.name, store=store.describe())
        else:
            logger.info(
                "run resumed",
                key=key,
                job=self.name,
                store=store.describe(),
                epoch=head.epoch,
                done=head.done,
                items=head.items.get("done", 0),
                resume_point=restart,
            )
        return run, bound

    @staticmethod
    def check_owner(run: Run) -> None:
        """A method job's key holds its instance's state: warn when the run changed it."""
        probe = run.owner_probe
        if probe is None:
            return
        owner, digest = probe
        try:
            changed = describe(owner).digest() != digest
        except Exception:  # describing is best effort here: never fail a run's end on it
            return
        if changed:
            logger.warning(
                "the job's instance changed during the run, and its state is part of the run "
                "key: a call after a restart will not find this run. Define __resumable_key__ "
                "on the class (what names an instance), or give the job key=",
                key=run.key,
                job=run.job,
                instance=type(owner).__qualname__,
            )

    @staticmethod
    def end_ok(run: Run, result: Any) -> None:
        try:
            run.check_end()
            encoded = encode_value(result, f"job {run.job!r}", run.key)
        except BaseException as exc:
            JobDef.end_error(run, exc)
            raise
        run.close(result=encoded, finished=True)
        logger.info("run finished", key=run.key, job=run.job, replayed=run.replayed)

    @staticmethod
    def end_error(run: Run, exc: BaseException) -> None:
        if isinstance(exc, CheckpointCorrupted):
            # The record could not be read: leave every byte of it as it is.
            run.abandon()
            logger.error("run stopped: its record cannot be read", key=run.key, error=str(exc))
            return
        interrupted = isinstance(exc, _INTERRUPTIONS)
        JobDef.check_owner(run)
        try:
            run.close(error=None if interrupted else exc)
        except Exception as write_error:
            logger.error(
                "could not write progress at the end of the run", key=run.key, error=repr(write_error)
            )
            exc.add_note(f"resumable: progress could not be written: {write_error!r}")
        logger.info(
            "run interrupted" if interrupted else "run failed; it resumes on the next call",
            key=run.key,
            job=run.job,
            done=run.done,
            error=repr(exc),
        )


def _make_sync(job: JobDef) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        started = job.begin(wrapped, args, kwargs, instance=instance)
        if isinstance(started, _Finished):
            return started.result
        run, bound = started
        token = _RUN.set(run)
        step_token = _STEP.set(None)  # a job called inside a step has steps of its own
        try:
            result = wrapped(*bound.args, **bound.kwargs)
        except BaseException as exc:
            JobDef.end_error(run, exc)
            raise
        finally:
            _STEP.reset(step_token)
            _RUN.reset(token)
        JobDef.end_ok(run, result)
        return result

    return wrapper


async def begin_async(
    job: JobDef,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    instance: Any = None,
) -> tuple[Run, inspect.BoundArguments] | _Finished:
    """`JobDef.begin` in a worker thread, then start the run here.

    A caller cancelled while the thread works never leaves the run locked.
    """
    _config.LOOP.set(asyncio.get_running_loop())
    task = asyncio.ensure_future(
        asyncio.to_thread(job.begin, wrapped, args, kwargs, start=False, instance=instance)
    )
    try:
        started = await asyncio.shield(task)
    except asyncio.CancelledError:
        # Wait for the thread to finish taking the run, and give it up: a done-callback
        # would never run if the loop closed first, leaving the run locked for good.
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        _abandon_started(task)
        raise
    if not isinstance(started, _Finished):
        try:
            started[0].start()  # on the event loop's thread: the run's owner
        except BaseException:
            started[0].abandon()
            raise
    return started


async def end_async(run: Run, exc: BaseException | None = None, result: Any = None) -> None:
    """End a run from async code: the writes go to a thread, the signal handlers are
    given back here, on the event loop's thread (where they can be restored)."""
    run.leave_signals()
    if exc is None:
        work = asyncio.ensure_future(asyncio.to_thread(JobDef.end_ok, run, result))
    else:
        work = asyncio.ensure_future(asyncio.to_thread(JobDef.end_error, run, exc))
    # The closing write and the lock's release always happen: a cancellation that lands
    # now waits for them, then goes on.
    cancelled: asyncio.CancelledError | None = None
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError as stop:
            if work.done():
                break
            cancelled = stop
    if cancelled is not None:
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]
        raise cancelled
    work.result()


def _abandon_started(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        started = task.result()
        if not isinstance(started, _Finished):
            started[0].abandon()


def _make_async(job: JobDef) -> Callable[..., Any]:
    async def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        started = await begin_async(job, wrapped, args, kwargs, instance)
        if isinstance(started, _Finished):
            return started.result
        run, bound = started
        token = _RUN.set(run)
        step_token = _STEP.set(None)  # a job called inside a step has steps of its own
        try:
            result = await wrapped(*bound.args, **bound.kwargs)
        except BaseException as exc:
            await end_async(run, exc)
            raise
        finally:
            _STEP.reset(step_token)
            _RUN.reset(token)
        await end_async(run, result=result)
        return result

    return wrapper


class _BoundJobProxy(_BoundProxy):
    """A job bound to an instance or class: ``key_for`` and ``reset`` bind it too."""

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """Return the run key that calling the job with these arguments uses."""
        job: JobDef = self._self_parent._self_job
        return job.key_for(
            bind_arguments(self.__wrapped__, None, args, kwargs), getattr(self.__wrapped__, "__self__", None)
        )

    def reset(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the run that these arguments name (see `_JobProxy.reset`)."""
        job: JobDef = self._self_parent._self_job
        return reset(self.key_for(*args, **kwargs), store=job.store)


class _JobProxy(_Proxy):
    """A decorated job: callable as the function, plus ``key_for`` and ``reset``."""

    __bound_function_wrapper__ = _BoundJobProxy
    _self_job: JobDef

    def key_for(self, *args: Any, **kwargs: Any) -> str:
        """Return the run key that calling the job with these arguments uses."""
        job: JobDef = self._self_job
        target = self.__wrapped__
        if isinstance(target, classmethod | staticmethod):
            target = target.__func__
        return job.key_for(bind_arguments(target, None, args, kwargs))

    def reset(self, *args: Any, **kwargs: Any) -> bool:
        """Forget the run that these arguments name, so the next call starts over.

        Returns whether there was a record. Raises `RunLocked` while a live run holds it.
        """
        job: JobDef = self._self_job
        key = self.key_for(*args, **kwargs)
        return reset(key, store=job.store)


def reset(key: str, *, store: Store | str | None = None) -> bool:
    """Forget the run with this key in ``store`` (default: the default store).

    Returns whether a record was there. A job's own ``reset(*args)`` finds the key
    from arguments; ``job.key_for(*args)`` only tells it.

    Raises:
        RunLocked: while a live run holds the key.
    """
    target = _config.resolve_store(store)
    lock = target.lock(key)
    try:
        existed = delete_run(target, key)
    finally:
        lock.release()
    logger.info("run reset", key=key, store=target.describe(), existed=existed)
    return existed


@overload
def resumable(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def resumable(
    *,
    key: str | Callable[..., str] | None = None,
    store: Store | str | None = None,
    flush_interval: float | None = None,
    on_corrupt: str = "raise",
    ignore: tuple[str, ...] = (),
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def resumable(
    func: Callable[..., Any] | None = None,
    /,
    *,
    key: str | Callable[..., str] | None = None,
    store: Store | str | None = None,
    flush_interval: float | None = None,
    on_corrupt: str = "raise",
    ignore: tuple[str, ...] = (),
) -> Any:
    """Make a function a job whose runs resume where they stopped.

    A run is identified by its key: by default the job's qualified name plus a digest
    of its plain-data arguments (None, numbers, strings, bytes, dates, paths, enums and
    containers of them; other arguments, such as a client, are left out). When a call
    finds an unfinished record under its key, the run resumes: the body runs again from
    its last resume point and every recorded step returns its recorded result without
    running. A finished run returns its recorded result.

    Args:
        key: A format string over the job's parameters (``"sync-{account}"``) or a
            callable taking the job's arguments and returning a string. Made safe for
            any store (`make_key`).
        store: A `Store` or a store URL. Default: `configure`'s, the Apify Actor's
            key-value store inside ``async with Actor:``, ``$RESUMABLE_STORE``, else a
            `FileStore` in ``$RESUMABLE_DIR`` or ``./.resumable``.
        flush_interval: Seconds between background writes of progress (default 1;
            5 on Apify). Run end, `flush`, signals and durable steps write at once.
        on_corrupt: ``"raise"`` (default) raises `CheckpointCorrupted` for a record
            that cannot be read; ``"restart"`` moves it aside and starts over.
        ignore: Names of arguments to leave out of the default key.

    Raises:
        TypeError: for what cannot be a job, or bad options.
    """
    if on_corrupt not in ("raise", "restart"):
        raise ValueError(f"on_corrupt must be 'raise' or 'restart', not {on_corrupt!r}")
    if isinstance(ignore, str) or not all(isinstance(n, str) for n in ignore):
        raise TypeError(f"ignore must be a tuple of parameter names, not {ignore!r}")
    if store is not None and not isinstance(store, Store | str):
        raise TypeError(f"store must be a Store or a URL string, not {type(store).__name__}")
    if key is not None and not (isinstance(key, str) or callable(key)):
        raise TypeError(f"key must be a format string or a callable, not {key!r}")
    interval = _config._check_interval(flush_interval)

    def decorate(f: Callable[..., Any]) -> Any:
        job = JobDef(
            f, key=key, store=store, flush_interval=interval, on_corrupt=on_corrupt, ignore=tuple(ignore)
        )
        unknown = [n for n in job.ignore if n not in job.params]
        if unknown:
            raise TypeError(f"ignore= names {unknown}, which {job.name} does not take")
        if isinstance(key, str):
            fields = {
                fname.split(".")[0].split("[")[0] for _, fname, _, _ in string.Formatter().parse(key) if fname
            }
            missing = fields - job.params
            if missing:
                raise TypeError(f"key={key!r} names {sorted(missing)}, which {job.name} does not take")
        if job.kind == "coroutine":
            wrapper = _make_async(job)
        elif job.kind == "function":
            wrapper = _make_sync(job)
        else:
            from resumable._gen import make_async_gen, make_gen

            wrapper = make_gen(job) if job.kind == "generator" else make_async_gen(job)
        proxy = _JobProxy(f, wrapper)
        proxy._self_job = job
        return proxy

    if func is not None:
        return decorate(func)
    return decorate
