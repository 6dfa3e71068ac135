"""``@resumable`` and ``@checkpoint`` on coroutine functions, including concurrent steps."""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import random
import threading
from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from resumable import (
    MemoryStore,
    NotSerializable,
    ReplayMismatch,
    RunLocked,
    Store,
    checkpoint,
    current_run,
    current_step,
    restart_with,
    resumable,
    state,
)

MODULE_STORE = MemoryStore()


@checkpoint
async def fetch(url: str, *, retries: int = 3) -> str:
    """Fetch a URL."""
    await asyncio.sleep(0)
    return f"body of {url}"


@resumable(store=MODULE_STORE)
async def crawl(urls: list[str]) -> list[str]:
    """Crawl the URLs."""
    return [await fetch(u) for u in urls]


async def _plain_fetch(url: str, *, retries: int = 3) -> str:
    return url


class Boom(Exception):
    pass


def _head(store: Store, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None, f"no record under {key!r}"
    return dict(json.loads(raw))


class Scenario:
    """An async job of ``n`` steps, async and sync mixed, that can raise at step ``k``."""

    def __init__(self, store: Store, key: str = "async-scenario") -> None:
        self.store = store
        self.calls: Counter[int] = Counter()
        self.fail_at: int | None = None

        @checkpoint
        async def awork(i: int) -> Any:
            await asyncio.sleep(0)
            self.calls[i] += 1
            return None if i % 4 == 3 else (i, "async")

        @checkpoint
        def swork(i: int) -> Any:
            self.calls[i] += 1
            return {"i": i}

        @resumable(store=store, key=key)
        async def job(n: int) -> list[Any]:
            out = []
            for i in range(n):
                if i == self.fail_at:
                    raise Boom(f"at {i}")
                out.append(await awork(i) if i % 2 == 0 or i % 4 == 3 else swork(i))
            return out

        self.job = job


# -- record and replay ------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 4, 7])
async def test_interrupted_run_resumes_without_redoing_steps(k: int) -> None:
    expected = await Scenario(MemoryStore()).job(8)
    s = Scenario(MemoryStore())
    s.fail_at = k
    with pytest.raises(Boom):
        await s.job(8)
    assert s.calls == Counter(range(k))
    s.fail_at = None
    assert await s.job(8) == expected
    assert s.calls == Counter(range(8))
    assert _head(s.store, "async-scenario")["status"] == "finished"


async def test_steps_outside_a_job_are_plain_calls() -> None:
    seen: list[Any] = []

    @checkpoint
    async def step(x: int) -> int:
        seen.append((current_step(), current_run()))
        return x + 1

    assert await step(1) == 2
    assert await fetch("u") == "body of u"
    assert seen == [(None, None)]


async def test_nested_steps_run_plainly() -> None:
    store = MemoryStore()
    calls: Counter[str] = Counter()
    fail = [True]

    @checkpoint
    async def inner(x: int) -> int:
        calls["inner"] += 1
        return x * 10

    @checkpoint
    async def outer(x: int) -> int:
        calls["outer"] += 1
        return await inner(x) + await inner(x + 1)

    @resumable(store=store, key="nested")
    async def job() -> int:
        value = await outer(1)
        if fail[0]:
            raise Boom
        return value

    with pytest.raises(Boom):
        await job()
    assert _head(store, "nested")["units"]["done"] == 1
    fail[0] = False
    assert await job() == 30
    assert calls == Counter(outer=1, inner=2)


# -- what decoration preserves -------------------------------------------------------


def test_metadata_and_signature_preserved() -> None:
    for decorated, name, doc in [(fetch, "fetch", "Fetch a URL."), (crawl, "crawl", "Crawl the URLs.")]:
        assert decorated.__name__ == name
        assert decorated.__module__ == __name__
        assert decorated.__doc__ == doc
        assert inspect.iscoroutinefunction(decorated)
        assert asyncio.iscoroutinefunction(decorated)
    assert inspect.signature(fetch) == inspect.signature(_plain_fetch)
    assert str(inspect.signature(crawl)) == "(urls: 'list[str]') -> 'list[str]'"


def test_pickle_by_reference() -> None:
    assert pickle.loads(pickle.dumps(fetch)) is fetch
    assert pickle.loads(pickle.dumps(crawl)) is crawl


def test_async_generator_functions_are_not_steps() -> None:
    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        checkpoint(agen)
    with pytest.raises(TypeError, match="generator"):
        checkpoint(durable=True)(agen)


async def test_module_level_job_runs_and_is_finished() -> None:
    assert await crawl(["a", "b"]) == ["body of a", "body of b"]
    with capture_logs() as logs:
        assert await crawl(["a", "b"]) == ["body of a", "body of b"]
    assert [e["log_level"] for e in logs] == ["warning"]
    assert _head(MODULE_STORE, crawl.key_for(["a", "b"]))["status"] == "finished"


async def test_finished_run_returns_its_result_without_running() -> None:
    s = Scenario(MemoryStore())
    first = await s.job(4)
    with capture_logs() as logs:
        assert await s.job(4) == first
    assert s.calls == Counter(range(4))
    assert any("finished" in e["event"] and e["log_level"] == "warning" for e in logs)
    assert s.job.reset(4) is True
    assert await s.job(4) == first
    assert s.calls == Counter(dict.fromkeys(range(4), 2))


# -- exceptions ----------------------------------------------------------------------


async def test_a_step_that_raises_is_not_recorded_and_runs_again() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    fail = [True]

    @checkpoint
    async def step(i: int) -> int:
        calls[i] += 1
        if i == 2 and fail[0]:
            raise Boom
        return i

    @resumable(store=store, key="raises")
    async def job() -> list[int]:
        return [await step(i) for i in range(4)]

    with pytest.raises(Boom):
        await job()
    fail[0] = False
    assert await job() == [0, 1, 2, 3]
    assert calls == Counter({0: 1, 1: 1, 2: 2, 3: 1})


async def test_cancellation_is_reraised_never_recorded_and_progress_is_flushed() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    entered = asyncio.Event()
    block = [True]

    @checkpoint
    async def step(i: int) -> int:
        calls[i] += 1
        if i == 2 and block[0]:
            entered.set()
            await asyncio.Event().wait()  # until cancelled
        return i

    @resumable(store=store, key="cancelled", flush_interval=3600)
    async def job() -> list[int]:
        return [await step(i) for i in range(4)]

    task = asyncio.create_task(job())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    head = _head(store, "cancelled")  # completed progress written at once
    assert head["status"] == "running"
    assert head["error"] is None
    entries = json.loads(store.get("cancelled(r)0.0") or b"")["entries"]
    assert sorted(entries) == ["0", "1"]  # the cancelled step is not among them
    block[0] = False
    assert await job() == [0, 1, 2, 3]
    assert calls == Counter({0: 1, 1: 1, 2: 2, 3: 1})


async def test_unencodable_result_raises_not_serializable() -> None:
    @checkpoint(name="lock-maker")
    async def step() -> Any:
        return threading.Lock()

    @resumable(store=MemoryStore())
    async def job() -> Any:
        return await step()

    with pytest.raises(NotSerializable, match="lock-maker"):
        await job()


async def test_replay_mismatch() -> None:
    store = MemoryStore()
    version = [1]
    ran: Counter[str] = Counter()

    def make(name: str) -> Any:
        @checkpoint(name=name)
        async def step() -> str:
            ran[name] += 1
            return name

        return step

    a, b, new = make("a"), make("b"), make("new")

    @resumable(store=store, key="mismatch")
    async def job() -> list[str]:
        out = [await (a if version[0] == 1 else b)()]
        if version[0] == 1:
            raise Boom
        out.append(await new())
        return out

    with pytest.raises(Boom):
        await job()
    version[0] = 2
    ran.clear()
    with pytest.raises(ReplayMismatch) as info:
        await job()
    assert (info.value.position, info.value.recorded, info.value.called) == (0, "a", "b")
    assert ran == Counter()


async def test_run_locked_when_the_same_key_runs_concurrently() -> None:
    store = MemoryStore()
    entered = asyncio.Event()
    release = asyncio.Event()

    @resumable(store=store, key="busy")
    async def job() -> str:
        entered.set()
        await release.wait()
        return "done"

    first = asyncio.create_task(job())
    await entered.wait()
    with pytest.raises(RunLocked):
        await job()
    release.set()
    assert await first == "done"


# -- restart_with, state, current_step, durable ---------------------------------------


async def test_restart_with_and_state() -> None:
    store = MemoryStore()
    bodies: list[int] = []
    fetched: Counter[int] = Counter()
    fail = [True]

    @checkpoint
    async def page(n: int) -> list[int]:
        fetched[n] += 1
        return [n * 10, n * 10 + 1]

    @resumable(store=store, key="paged")
    async def job(cursor: int = 0) -> dict[str, Any]:
        bodies.append(cursor)
        while cursor < 5:
            state()["items"] = state().get("items", 0) + len(await page(cursor))
            cursor += 1
            restart_with(cursor=cursor)
            if cursor == 3 and fail[0]:
                raise Boom
        return dict(state())

    with pytest.raises(Boom):
        await job()
    fail[0] = False
    assert await job() == {"items": 10}
    assert bodies == [0, 3]
    assert fetched == Counter(range(5))


async def test_concurrent_steps_each_see_their_own_current_step() -> None:
    seen: dict[int, tuple[int, str]] = {}

    @checkpoint
    async def step(i: int) -> int:
        for _ in range(3 - i % 3):
            await asyncio.sleep(0)
        s = current_step()
        assert s is not None
        seen[i] = (s.number, s.idempotency_key)
        return i

    @resumable(store=MemoryStore(), key="own-step")
    async def job() -> list[int]:
        return list(await asyncio.gather(*(step(i) for i in range(6))))

    assert await job() == list(range(6))
    # Calls from gathered tasks are concurrent: no place in the job's own sequence, and
    # each its own idempotency key.
    assert all(n == -1 for n, _ in seen.values())
    assert len({key for _, key in seen.values()}) == 6


async def test_durable_async_step_writes_its_intent_before_the_body() -> None:
    store = MemoryStore()
    inside: list[dict[str, Any]] = []
    after: list[int] = []

    @checkpoint(durable=True)
    async def charge(amount: int) -> str:
        inside.append(_head(store, "durable")["intents"])
        await asyncio.sleep(0)
        return f"charged {amount}"

    @resumable(store=store, key="durable", flush_interval=3600)
    async def job() -> list[str]:
        out = []
        for amount in (5, 6):
            out.append(await charge(amount))
            after.append(_head(store, "durable")["units"]["done"])
        return out

    assert await job() == ["charged 5", "charged 6"]
    assert [list(i) for i in inside] == [["0"], ["1"]]
    assert after == [1, 2]


async def test_cancelled_durable_step_runs_again_as_attempt_two() -> None:
    store = MemoryStore()
    seen: list[tuple[int, int, str]] = []
    entered = asyncio.Event()
    block = [True]

    @checkpoint(durable=True)
    async def send(i: int) -> int:
        s = current_step()
        assert s is not None
        seen.append((i, s.attempt, s.idempotency_key))
        if i == 1 and block[0]:
            entered.set()
            await asyncio.Event().wait()
        return i

    @resumable(store=store, key="send")
    async def job() -> list[int]:
        return [await send(i) for i in range(3)]

    task = asyncio.create_task(job())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    block[0] = False
    assert await job() == [0, 1, 2]
    assert [(i, a) for i, a, _ in seen] == [(0, 1), (1, 1), (1, 2), (2, 1)]
    assert seen[1][2] == seen[2][2]


async def test_concurrent_durable_steps_are_all_recorded() -> None:
    store = MemoryStore()
    calls: Counter[int] = Counter()
    fail = [True]

    @checkpoint(durable=True)
    async def send(i: int) -> int:
        calls[i] += 1
        await asyncio.sleep(0)
        return i * 3

    @resumable(store=store, key="group", flush_interval=3600)
    async def job() -> list[int]:
        out = list(await asyncio.gather(*(send(i) for i in range(16))))
        if fail[0]:
            raise Boom
        return out

    with pytest.raises(Boom):
        await job()
    fail[0] = False
    assert await job() == [i * 3 for i in range(16)]
    assert calls == Counter(range(16))


# -- concurrent steps whose call order changes between runs ----------------------------


def _order(seed: int, n: int) -> list[int]:
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return perm


class Concurrent:
    """``n`` tasks; task ``i`` yields ``delay[i]`` times to the loop, then calls its step."""

    def __init__(self, store: Store, *, overlap: bool, key: str = "concurrent") -> None:
        self.calls: Counter[int] = Counter()
        self.called: list[int] = []
        self.failing: set[int] = set()

        @checkpoint
        async def step(i: int) -> str:
            self.calls[i] += 1
            if overlap:  # the step itself awaits: calls overlap in time
                await asyncio.sleep(0)
            if i in self.failing:
                raise Boom(i)
            return f"result of {i}"

        @resumable(store=store, key=key)
        async def job(n: int, seed: int, crash: bool) -> list[str]:
            delays = _order(seed, n)

            async def task(i: int) -> str:
                for _ in range(delays[i]):
                    await asyncio.sleep(0)
                self.called.append(i)
                return await step(i)

            results = await asyncio.gather(*(task(i) for i in range(n)), return_exceptions=True)
            if crash or any(isinstance(r, BaseException) for r in results):
                raise Boom("after the steps")
            return [str(r) for r in results]

        self.job = job


BUG_ORDER = (
    "BUG: concurrent async steps are matched by identity only when their calls overlap in "
    "time (Run.begin marks a call concurrent only while another is in flight); when each "
    "task awaits something else first, steps run one at a time, are recorded by position, "
    "and on a resume with another call order they receive each other's results or run again"
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlapping"])
async def test_shuffled_concurrent_steps_get_their_own_results(seed: int, overlap: bool) -> None:
    n = 10
    c = Concurrent(MemoryStore(), overlap=overlap)
    with pytest.raises(Boom):
        await c.job(n, 0, True)
    first = list(c.called)
    c.called.clear()
    result = await c.job(n, seed, False)
    assert c.called != first  # the call order did change
    assert result == [f"result of {i}" for i in range(n)]
    assert c.calls == Counter(range(n))  # no recorded step ran again


@pytest.mark.parametrize("seed", [5, 6])
async def test_shuffled_concurrent_steps_with_failures(seed: int) -> None:
    n = 10
    c = Concurrent(MemoryStore(), overlap=True)
    c.failing = {2, 7}
    with pytest.raises(Boom):
        await c.job(n, 0, False)
    c.failing = set()
    result = await c.job(n, seed, False)
    assert result == [f"result of {i}" for i in range(n)]
    assert c.calls == Counter({**dict.fromkeys(range(n), 1), 2: 2, 7: 2})


async def test_concurrent_steps_in_the_same_order_resume_exactly() -> None:
    n = 12
    c = Concurrent(MemoryStore(), overlap=True)
    c.failing = {4}
    with pytest.raises(Boom):
        await c.job(n, 3, False)
    c.failing = set()
    assert await c.job(n, 3, False) == [f"result of {i}" for i in range(n)]
    assert c.calls == Counter({**dict.fromkeys(range(n), 1), 4: 2})


async def test_task_group_steps_resume() -> None:
    store = MemoryStore()
    calls: Counter[str] = Counter()
    fail = [True]

    @checkpoint(key="{name}")
    async def step(name: str, payload: Any) -> str:
        await asyncio.sleep(0)
        calls[name] += 1
        return name.upper()

    @resumable(store=store, key="tg")
    async def job() -> list[str]:
        names = ["x", "y", "z", "w"]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(step(name, object())) for name in names]
        if fail[0]:
            raise Boom
        return [t.result() for t in tasks]

    with pytest.raises(Boom):
        await job()
    fail[0] = False
    assert await job() == ["X", "Y", "Z", "W"]
    assert calls == Counter(x=1, y=1, z=1, w=1)
