"""Generator jobs: each yielded item is a unit that completes when the consumer asks for more.

Calling a generator job returns a generator; its run starts at the first ``next()``.
The job's body runs in a context of its own (the run is visible to its steps, not to
the consumer's code between items). On resume, the items consumed since the last
resume point are dropped before they reach the consumer. When a consumer binding is
present (`resumable.sinks.drain`), the items go to the sink instead, with
reconciliation; the generator then yields nothing to its consumer.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from resumable._job import JobDef, _Finished, begin_async, end_async
from resumable._run import _RUN, _STEP, RUN_HOOKS, Run, notify_run
from resumable.sinks import BINDING, Binding, SinkFeed

__all__ = ["has_started", "is_job_generator", "make_async_gen", "make_gen"]


def is_job_generator(obj: Any, kind: str) -> bool:
    """Tell whether ``obj`` is the (async) generator a generator job returned."""
    if kind == "generator":
        return getattr(getattr(obj, "gi_code", None), "co_name", None) == _drive.__code__.co_name
    return getattr(getattr(obj, "ag_code", None), "co_name", None) == _adrive.__code__.co_name


def has_started(obj: Any) -> bool:
    """Tell whether a job's (async) generator has begun running."""
    frame = getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
    # A created generator's frame still stands on its ``def`` line.
    return frame is None or frame.f_lineno != frame.f_code.co_firstlineno


def _start_binding(run: Run, binding: Binding | None) -> SinkFeed | None:
    if binding is None:
        return None
    if binding.sink is None:
        binding.make_bar(run.items_before + run.item_prog[0])
        return None
    return SinkFeed(run, binding)


def _drive(
    job: JobDef,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    instance: Any = None,
) -> Generator[Any, Any, Any]:
    binding = BINDING.get()
    started = job.begin(wrapped, args, kwargs, instance=instance)
    if isinstance(started, _Finished):
        return started.result
    run, bound = started
    ctx = contextvars.copy_context()
    ctx.run(_RUN.set, run)
    ctx.run(_STEP.set, None)
    ctx.run(BINDING.set, None)
    try:
        feed = _start_binding(run, binding)
        if feed is not None:
            feed.start()
        gen = ctx.run(wrapped, *bound.args, **bound.kwargs)
    except BaseException as exc:
        JobDef.end_error(run, exc)
        raise
    send = gen.send
    method: Callable[[Any], Any] = send
    arg: Any = None
    try:
        while True:
            try:
                item = ctx.run(method, arg)
            except StopIteration as stop:
                result = stop.value
                run.check_end()  # before the last push: a replay that went wrong pushes nothing
                break
            n = run.item_next
            run.item_next = n + 1
            method, arg = send, None
            if n < run.rec_items:
                continue  # consumed before the restart: dropped
            if feed is not None:
                if feed.take(item):
                    feed.push()
                continue
            run.before_new_item()
            try:
                arg = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # thrown in by the consumer: pass it on
                method, arg = gen.throw, exc
                continue
            # Asking for more completes item n and every item before it (even one the
            # consumer threw an exception in after receiving it).
            run.item_prog = (n + 1, run.item_prog[1])
            run.dirty = True
            if binding is not None:
                binding.advance(1)
            if RUN_HOOKS:
                notify_run("item", run)
    except GeneratorExit as exc:
        try:
            ctx.run(gen.close)
        finally:
            JobDef.end_error(run, exc)
        raise
    except BaseException as exc:
        try:
            if feed is not None and feed.safe_to_push():
                feed.push()
        finally:
            JobDef.end_error(run, exc)
        raise
    try:
        if feed is not None:
            feed.push()
    except BaseException as exc:
        JobDef.end_error(run, exc)
        raise
    JobDef.end_ok(run, result)
    return result


def make_gen(job: JobDef) -> Callable[..., Any]:
    """The wrapt wrapper of a generator job."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return _drive(job, wrapped, args, kwargs, instance)

    return wrapper


async def _adrive(
    job: JobDef,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    instance: Any = None,
) -> AsyncGenerator[Any, Any]:
    binding = BINDING.get()
    started = await begin_async(job, wrapped, args, kwargs, instance)
    if isinstance(started, _Finished):
        return
    run, bound = started
    try:
        feed = _start_binding(run, binding)
        if feed is not None:
            await feed.astart()
        agen = _in_run(run, lambda: wrapped(*bound.args, **bound.kwargs))
    except BaseException as exc:
        await end_async(run, exc)
        raise
    asend = agen.asend
    method: Callable[[Any], Any] = asend
    arg: Any = None
    try:
        while True:
            run_token = _RUN.set(run)
            step_token = _STEP.set(None)
            bind_token = BINDING.set(None)
            try:
                item = await method(arg)
            except StopAsyncIteration:
                run.check_end()
                break
            finally:
                BINDING.reset(bind_token)
                _STEP.reset(step_token)
                _RUN.reset(run_token)
            n = run.item_next
            run.item_next = n + 1
            method, arg = asend, None
            if n < run.rec_items:
                continue
            if feed is not None:
                if feed.take(item):
                    await feed.apush()
                continue
            run.before_new_item()
            try:
                arg = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                method, arg = agen.athrow, exc
                continue
            # Asking for more completes item n and every item before it (even one the
            # consumer threw an exception in after receiving it).
            run.item_prog = (n + 1, run.item_prog[1])
            run.dirty = True
            if binding is not None:
                binding.advance(1)
            if RUN_HOOKS:
                notify_run("item", run)
    except GeneratorExit as exc:
        try:
            run_token = _RUN.set(run)
            try:
                await agen.aclose()
            finally:
                _RUN.reset(run_token)
        finally:
            await end_async(run, exc)
        raise
    except BaseException as exc:
        try:
            if feed is not None and feed.safe_to_push():
                await feed.apush()
        finally:
            await end_async(run, exc)
        raise
    try:
        if feed is not None:
            await feed.apush()
    except BaseException as exc:
        await end_async(run, exc)
        raise
    await end_async(run)


def _in_run(run: Run, make: Callable[[], Any]) -> Any:
    token = _RUN.set(run)
    try:
        return make()
    finally:
        _RUN.reset(token)


def make_async_gen(job: JobDef) -> Callable[..., Any]:
    """The wrapt wrapper of an async generator job."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        return _adrive(job, wrapped, args, kwargs, instance)

    return wrapper
