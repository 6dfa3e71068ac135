"""``@checkpoint``: steps whose completion is recorded and replayed."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, overload

import wrapt

from resumable._ident import args_code
from resumable._log import logger
from resumable._run import (
    _MASK,
    _MULT,
    _NEW,
    _RUN,
    _STEP,
    STEP_HOOKS,
    Run,
    StepContext,
    StepDef,
    _Hole,
    _signals,
)

__all__ = ["checkpoint"]

P = ParamSpec("P")
R = TypeVar("R")

_warned_threads: set[Any] = set()
_warn_lock = threading.Lock()


class _BoundProxy(wrapt.BoundFunctionWrapper):  # type: ignore[type-arg]
    """A decorated function bound to an instance or class; pickles as ``getattr``."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        owner = self._self_instance if self._self_instance is not None else self._self_owner
        return (getattr, (owner, self.__wrapped__.__name__))


class _Proxy(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """A decorated function that pickles by reference (module and qualified name)."""

    __bound_function_wrapper__ = _BoundProxy
    _self_step: StepDef

    def __reduce_ex__(self, protocol: Any) -> Any:
        target = _underlying(self.__wrapped__)
        return (_import_by_name, (target.__module__, target.__qualname__))


def _import_by_name(module: str, qualname: str) -> Any:
    import importlib

    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _underlying(func: Any) -> Any:
    return func.__func__ if isinstance(func, classmethod | staticmethod) else func


def kind_of(func: Any) -> str:
    """Classify a callable once, at decoration time."""
    target = _underlying(func)
    if inspect.isasyncgenfunction(target):
        return "asyncgen"
    if inspect.isgeneratorfunction(target):
        return "generator"
    if inspect.iscoroutinefunction(target):
        return "coroutine"
    if callable(target):
        return "function"
    raise TypeError(f"cannot decorate {func!r}: it is not callable")


def qualified_name(func: Any) -> str:
    target = _underlying(func)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _warn_no_context(sdef: StepDef) -> None:
    with _warn_lock:
        if sdef.name in _warned_threads:
            return
        _warned_threads.add(sdef.name)
    logger.warning(
        "step called in a thread without the run's context: it runs, unrecorded. Start the "
        "thread with contextvars.copy_context().run, or use asyncio.to_thread, to record it",
        step=sdef.name,
        thread=threading.current_thread().name,
    )


def _outside(sdef: StepDef) -> None:
    if _signals.owners and threading.get_ident() not in _signals.owners:
        _warn_no_context(sdef)


def _notify(event: str, call: StepContext) -> None:
    for hook in list(STEP_HOOKS):
        hook(event, call)


def _unrecorded(run: Run, sdef: StepDef) -> bool:
    """A step in a process forked from the run's: it runs, unrecorded (the record is the parent's)."""
    if run.forked:
        with _warn_lock:
            if ("fork", sdef.name) not in _warned_threads:
                _warned_threads.add(("fork", sdef.name))
                logger.warning(
                    "step called in a process forked inside a run: it runs, unrecorded; only the "
                    "run's own process records its steps",
                    step=sdef.name,
                    pid=os.getpid(),
                )
        return True
    return False


def _own_sync(
    run: Run,
    sdef: StepDef,
    wrapped: Callable[..., Any],
    args: Any,
    kwargs: Any,
    n: int,
    acode: int,
    attempt: int,
) -> Any:
    """The job's own sync step off the fast path: a new step while replaying, or durable."""
    call = run.make_call(sdef, n, wrapped, args, kwargs, acode)
    call.attempt = attempt
    durable = sdef.durable
    if durable:
        run.intend(call)
        run.flush()
    if STEP_HOOKS:
        _notify("before", call)
    token = _STEP.set(call)
    run.own_busy = True
    try:
        result = wrapped(*args, **kwargs)
    except BaseException:
        run.own_busy = False
        run.fail_own(sdef, n, acode, call.attempt)
        raise
    finally:
        _STEP.reset(token)
    run.own_busy = False
    run.complete_own(sdef, n, acode, result, durable)
    if STEP_HOOKS:
        _notify("after", call)
    if durable:
        run.flush()
    return result


def _concurrent_sync(
    run: Run, sdef: StepDef, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    call = StepContext(run, sdef, -1, wrapped, args, kwargs, 0, instance)
    out = run.claim(call)
    if out is not _NEW:
        return out
    try:
        if sdef.durable:
            run.intend(call)
            run.flush()
        if STEP_HOOKS:
            _notify("before", call)
        token = _STEP.set(call)
        try:
            result = wrapped(*args, **kwargs)
        finally:
            _STEP.reset(token)
    except BaseException:
        run.fail_concurrent(call)
        raise
    run.complete_concurrent(call, result)
    if STEP_HOOKS:
        _notify("after", call)
    if sdef.durable:
        run.flush()
    return result


def _make_sync(sdef: StepDef) -> Callable[..., Any]:
    durable = sdef.durable
    code = sdef.code
    get_ident = threading.get_ident
    current_task = asyncio.current_task

    def step(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        run = _RUN.get()
        if run is None:
            if _signals.owners:
                _outside(sdef)
            return wrapped(*args, **kwargs)
        owner = get_ident() == run._owner and (run.main_task is None or current_task() is run.main_task)
        if (owner and run.sync_n >= 0) or _STEP.get() is not None:
            return wrapped(*args, **kwargs)  # nested in another step
        if not owner:
            if run.finished or (run.forked and _unrecorded(run, sdef)):
                return wrapped(*args, **kwargs)  # after the run, or in a forked child
            return _concurrent_sync(run, sdef, wrapped, instance, args, kwargs)
        n = run._next
        run._next = n + 1
        if kwargs:
            acode = args_code(args, kwargs)
        elif not args:
            acode = 0
        elif len(args) == 1 and type(args[0]) is int:
            acode = hash(args) & _MASK  # the same as args_code's, inlined
        else:
            acode = args_code(args, kwargs)
        if run.fast and not durable:
            # The fast path: the job's own plain step, not replaying.
            if STEP_HOOKS:
                _notify("before", run.make_call(sdef, n, wrapped, args, kwargs, acode))
            run.sync_sdef = sdef
            run.sync_n = n
            try:
                result = wrapped(*args, **kwargs)
            except BaseException:
                run.sync_n = -1
                run.fail_own(sdef, n, acode, 1)
                raise
            run.sync_n = -1
            if result is None and run._last_fail is None:
                counts = run._counts  # counted before _prog moves: a write never sees it behind
                counts[code] = counts.get(code, 0) + 1
                _, digest, folded = run._prog
                run._prog = (n + 1, (digest * _MULT + (code ^ acode)) & _MASK, folded + 1)
                run.dirty = True
            else:
                run.complete_own(sdef, n, acode, result)
            if STEP_HOOKS:
                _notify("after", run.make_call(sdef, n, wrapped, args, kwargs, acode))
            return result
        if run.finished or (run.forked and _unrecorded(run, sdef)):
            return wrapped(*args, **kwargs)  # after the run, or in a forked child
        attempt = 1
        if run.replaying:
            out = run.replay_own(sdef, n, acode)
            if out is _NEW:
                pass
            elif type(out) is _Hole:
                attempt = out.attempt
            else:
                return out
        return _own_sync(run, sdef, wrapped, args, kwargs, n, acode, attempt)

    return step


def _make_async(sdef: StepDef) -> Callable[..., Any]:
    durable = sdef.durable

    async def step(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        run = _RUN.get()
        if run is None:
            if _signals.owners:
                _outside(sdef)
            return await wrapped(*args, **kwargs)
        if run.finished or _STEP.get() is not None or (run.forked and _unrecorded(run, sdef)):
            return await wrapped(*args, **kwargs)  # nested in another step, or after the run
        if not run.is_owner():
            return await _concurrent_async(run, sdef, wrapped, instance, args, kwargs)
        if run.sync_n >= 0:
            return await wrapped(*args, **kwargs)  # nested in a sync step
        n = run._next
        run._next = n + 1
        acode = 0 if not args and not kwargs else args_code(args, kwargs)
        attempt = 1
        if run.replaying:
            out = run.replay_own(sdef, n, acode)
            if out is _NEW:
                pass
            elif type(out) is _Hole:
                attempt = out.attempt
            else:
                return out
        call = run.make_call(sdef, n, wrapped, args, kwargs, acode)
        call.attempt = attempt
        if durable:
            run.intend(call)
            await run.aflush()
        if STEP_HOOKS:
            _notify("before", call)
        token = _STEP.set(call)
        run.own_busy = True
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException:
            run.own_busy = False
            run.fail_own(sdef, n, acode, call.attempt)
            raise
        finally:
            _STEP.reset(token)
        run.own_busy = False
        run.complete_own(sdef, n, acode, result, durable)
        if STEP_HOOKS:
            _notify("after", call)
        if durable:
            await run.aflush()
        return result

    return step


async def _concurrent_async(
    run: Run, sdef: StepDef, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
) -> Any:
    call = StepContext(run, sdef, -1, wrapped, args, kwargs, 0, instance)
    out = run.claim(call)
    if out is not _NEW:
        return out
    try:
        if sdef.durable:
            run.intend(call)
            await run.aflush()
        if STEP_HOOKS:
            _notify("before", call)
        token = _STEP.set(call)
        try:
            result = await wrapped(*args, **kwargs)
        finally:
            _STEP.reset(token)
    except BaseException:
        run.fail_concurrent(call)
        raise
    run.complete_concurrent(call, result)
    if STEP_HOOKS:
        _notify("after", call)
    if sdef.durable:
        await run.aflush()
    return result


@overload
def checkpoint(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def checkpoint(
    *,
    name: str | None = None,
    durable: bool = False,
    key: str | Callable[..., Any] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def checkpoint(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    durable: bool = False,
    key: str | Callable[..., Any] | None = None,
) -> Any:
    """Make a function a step: inside a job, its completion is recorded and replayed.

    Inside a running job (`resumable`) each call is numbered in call order. When it
    returns, its result is recorded; when the run resumes, a recorded call returns its
    recorded result without running. Outside a job the function is called as it is.
    Works on functions, coroutine functions and methods; a step that raises is not
    recorded and runs again on resume.

    Args:
        name: The step's name in the record (default: its qualified name). Renaming a
            step breaks the replay of runs recorded with the old name.
        durable: Write an intent before the step runs and its completion before it
            returns, so a completed step never runs twice even if the process dies
            right after it. `current_step` then tells the attempt and an idempotency
            key stable across restarts.
        key: How to tell concurrent calls of this step apart when their order may
            change between runs: a format string over the step's parameters
            (``"{url}"``) or a callable taking the step's arguments. Default: a digest
            of the plain-data arguments.

    Raises:
        TypeError: for a generator or async generator function (a step returns one
            value; make the generator a job instead), or bad options.
    """
    if not isinstance(durable, bool):
        raise TypeError(f"durable must be True or False, not {durable!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty string, not {name!r}")
    if key is not None and not (isinstance(key, str) or callable(key)):
        raise TypeError(f"key must be a format string or a callable, not {key!r}")

    def decorate(f: Callable[..., Any]) -> Any:
        kind = kind_of(f)
        if kind in ("generator", "asyncgen"):
            raise TypeError(
                f"@checkpoint cannot decorate the generator function {qualified_name(f)}: a "
                "step returns one value. Decorate it with @resumable to make each item a "
                "unit, or return a list."
            )
        sdef = StepDef(name or qualified_name(f), durable, key)
        wrapper = _make_async(sdef) if kind == "coroutine" else _make_sync(sdef)
        proxy = _Proxy(f, wrapper)
        proxy._self_step = sdef
        return proxy

    if func is not None:
        return decorate(func)
    return decorate
