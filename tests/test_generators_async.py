"""Async generator jobs: items as units, asend/athrow/aclose, aclosing, steps, resume points."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from resumable import (
    MemoryStore,
    ReplayMismatch,
    RunLocked,
    Store,
    checkpoint,
    current_run,
    restart_with,
    resumable,
    state,
)


class Boom(Exception):
    pass


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def head_of(store: Store, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None, f"no record under {key!r}"
    return json.loads(raw)


async def take(agen: AsyncIterator[Any], n: int) -> list[Any]:
    return [await anext(agen) for _ in range(n)]


async def collect(agen: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in agen]


async def test_items_in_order_and_the_run_finishes(store: MemoryStore) -> None:
    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    assert await collect(count(5)) == [0, 1, 2, 3, 4]
    head = head_of(store, count.key_for(5))
    assert head["status"] == "finished"
    assert head["items"]["done"] == 5


async def test_aclose_after_item_k_resumes_with_the_item_in_hand(store: MemoryStore) -> None:
    produced: list[int] = []

    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            produced.append(i)
            yield i

    agen = count(10)
    assert await take(agen, 4) == [0, 1, 2, 3]  # 3 in hand
    await agen.aclose()
    head = head_of(store, count.key_for(10))
    assert head["items"]["done"] == 3
    assert head["status"] == "running"
    produced.clear()
    assert await collect(count(10)) == [3, 4, 5, 6, 7, 8, 9]
    assert produced == list(range(10))


async def test_aclosing_closes_the_body_and_releases_the_run(store: MemoryStore) -> None:
    events: list[str] = []

    @resumable(store=store)
    async def guarded(n: int) -> AsyncIterator[int]:
        try:
            for i in range(n):
                yield i
        finally:
            events.append("finally")

    async with contextlib.aclosing(guarded(6)) as agen:
        async for item in agen:
            if item == 2:
                break
    assert events == ["finally"]
    assert not store.is_locked(guarded.key_for(6))
    assert head_of(store, guarded.key_for(6))["items"]["done"] == 2
    assert await collect(guarded(6)) == [2, 3, 4, 5]


async def test_asend_values_reach_the_body(store: MemoryStore) -> None:
    received: list[Any] = []

    @resumable(store=store)
    async def echo(n: int) -> AsyncGenerator[int, str]:
        for i in range(n):
            got = yield i
            received.append(got)

    agen = echo(3)
    assert await agen.asend(None) == 0
    assert await agen.asend("a") == 1
    assert await agen.asend("b") == 2
    with pytest.raises(StopAsyncIteration):
        await agen.asend("c")
    assert received == ["a", "b", "c"]


async def test_athrow_handled_by_the_body_continues(store: MemoryStore) -> None:
    seen: list[int] = []

    @resumable(store=store)
    async def tolerant(n: int) -> AsyncIterator[int]:
        for i in range(n):
            try:
                yield i
            except Boom:
                seen.append(i)

    agen = tolerant(5)
    assert await take(agen, 2) == [0, 1]
    assert await agen.athrow(Boom()) == 2
    assert await collect(agen) == [3, 4]
    assert seen == [1]
    assert head_of(store, tolerant.key_for(5))["status"] == "finished"


async def test_athrow_handled_then_resume_does_not_repeat_items_asked_past(store: MemoryStore) -> None:
    @resumable(store=store)
    async def tolerant(n: int) -> AsyncIterator[int]:
        for i in range(n):
            with contextlib.suppress(Boom):
                yield i

    agen = tolerant(10)
    got = await take(agen, 3)  # 0, 1, 2 (2 in hand)
    got.append(await agen.athrow(Boom()))  # 3
    got += await take(agen, 2)  # asked past 3 and 4: 5 in hand
    await agen.aclose()
    assert got == [0, 1, 2, 3, 4, 5]
    assert await collect(tolerant(10)) == [5, 6, 7, 8, 9]


async def test_athrow_unhandled_ends_the_run_and_saves_progress(store: MemoryStore) -> None:
    @resumable(store=store)
    async def fragile(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    agen = fragile(6)
    assert await take(agen, 3) == [0, 1, 2]
    with pytest.raises(Boom):
        await agen.athrow(Boom("stop"))
    head = head_of(store, fragile.key_for(6))
    assert head["items"]["done"] == 2
    assert "Boom: stop" in head["error"]
    assert await collect(fragile(6)) == [2, 3, 4, 5]


async def test_exception_in_the_consumer_loop_with_aclosing_is_resumable(store: MemoryStore) -> None:
    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def consume() -> None:
        async with contextlib.aclosing(count(6)) as agen:
            async for item in agen:
                if item == 3:
                    raise Boom

    with pytest.raises(Boom):
        await consume()
    assert head_of(store, count.key_for(6))["items"]["done"] == 3
    assert await collect(count(6)) == [3, 4, 5]


async def test_an_unclosed_async_job_generator_holds_its_run_until_aclose(store: MemoryStore) -> None:
    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    agen = count(5)
    assert await take(agen, 2) == [0, 1]
    with pytest.raises(RunLocked):
        await anext(count(5))
    await agen.aclose()
    assert await collect(count(5)) == [1, 2, 3, 4]


async def test_body_exception_ends_the_run_and_the_next_call_resumes(store: MemoryStore) -> None:
    fail = [True]

    @resumable(store=store)
    async def flaky(n: int) -> AsyncIterator[int]:
        for i in range(n):
            if i == 3 and fail[0]:
                fail[0] = False
                raise Boom
            yield i

    got: list[int] = []

    async def consume() -> None:
        async for item in flaky(6):
            got.append(item)

    with pytest.raises(Boom):
        await consume()
    assert got == [0, 1, 2]
    assert await collect(flaky(6)) == [3, 4, 5]


async def test_async_and_sync_steps_inside_are_replayed_on_resume(store: MemoryStore) -> None:
    fetched: Counter[int] = Counter()
    noted: Counter[int] = Counter()

    @checkpoint
    async def fetch(i: int) -> dict[str, int]:
        await asyncio.sleep(0)
        fetched[i] += 1
        return {"i": i}

    @checkpoint
    def note(i: int) -> None:
        noted[i] += 1

    @resumable(store=store)
    async def enriched(n: int) -> AsyncIterator[int]:
        for i in range(n):
            item = await fetch(i)
            note(i)
            yield item["i"]

    agen = enriched(8)
    assert await take(agen, 5) == [0, 1, 2, 3, 4]
    await agen.aclose()
    assert await collect(enriched(8)) == [4, 5, 6, 7]
    assert fetched == Counter(range(8))
    assert noted == Counter(range(8))


async def test_restart_with_in_an_async_generator(store: MemoryStore) -> None:
    calls: list[int] = []
    fetched: list[int] = []

    @checkpoint
    async def fetch(cursor: int) -> dict[str, Any]:
        fetched.append(cursor)
        return {"items": [cursor * 10 + j for j in range(3)], "next": cursor + 1 if cursor < 4 else None}

    @resumable(store=store)
    async def listing(cursor: int | None = 0) -> AsyncIterator[int]:
        calls.append(cursor or 0)
        while cursor is not None:
            page = await fetch(cursor)
            for item in page["items"]:
                yield item
            cursor = page["next"]
            state()["pages"] = state().get("pages", 0) + 1
            restart_with(cursor=cursor)

    agen = listing()
    assert await take(agen, 8) == [0, 1, 2, 10, 11, 12, 20, 21]  # 21 in hand
    await agen.aclose()
    assert fetched == [0, 1, 2]
    assert head_of(store, listing.key_for())["state"] == {"pages": 2}
    assert await collect(listing()) == [21, 22, 30, 31, 32, 40, 41, 42]
    assert calls == [0, 2]
    assert fetched == [0, 1, 2, 3, 4]  # page 2 replayed from the record


async def test_finished_async_generator_run_yields_nothing_and_warns(store: MemoryStore) -> None:
    runs: list[int] = []

    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        runs.append(n)
        for i in range(n):
            yield i

    assert await collect(count(2)) == [0, 1]
    with capture_logs() as logs:
        assert await collect(count(2)) == []
    assert runs == [2]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "already finished" in warnings[0]["event"]


_METHOD_STORE = MemoryStore()


class Feed:
    def __init__(self, name: str) -> None:
        self.name = name

    @resumable(store=_METHOD_STORE)
    async def entries(self, n: int) -> AsyncIterator[str]:
        run = current_run()
        assert run is not None
        for i in range(n):
            yield f"{self.name}{i}"


async def test_async_generator_method_job() -> None:
    feed = Feed("f")
    agen = feed.entries(4)
    assert await take(agen, 2) == ["f0", "f1"]
    await agen.aclose()
    assert await collect(feed.entries(4)) == ["f1", "f2", "f3"]


async def test_replay_mismatch_when_the_resumed_async_generator_yields_fewer(store: MemoryStore) -> None:
    length = [6]

    @resumable(store=store)
    async def shrinking() -> AsyncIterator[int]:
        for i in range(length[0]):
            yield i

    agen = shrinking()
    await take(agen, 5)
    await agen.aclose()  # 4 consumed
    length[0] = 2
    with pytest.raises(ReplayMismatch, match="2 items"):
        await collect(shrinking())


async def test_cancelling_the_consumer_task_leaves_a_resumable_run(store: MemoryStore) -> None:
    reached = asyncio.Event()
    never = asyncio.Event()

    @resumable(store=store)
    async def slow(n: int) -> AsyncIterator[int]:
        for i in range(n):
            if i == 3 and not reached.is_set():
                reached.set()
                await never.wait()  # cancelled here
            yield i

    got: list[int] = []

    async def consume() -> None:
        async with contextlib.aclosing(slow(6)) as agen:
            async for item in agen:
                got.append(item)

    task = asyncio.create_task(consume())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [0, 1, 2]
    head = head_of(store, slow.key_for(6))
    assert head["items"]["done"] == 3
    assert head["error"] is None  # a cancellation is an interruption, not a failure
    assert await collect(slow(6)) == [3, 4, 5]


class SlowLockStore(MemoryStore):
    """Its first lock() blocks until released, as a slow store (a network one) may."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self._first = True

    def lock(self, key: str) -> Any:
        if self._first:
            self._first = False
            self.entered.set()
            self.release.wait(10)
            try:
                return super().lock(key)
            finally:
                self.returned.set()
        return super().lock(key)


async def test_cancelling_while_the_run_starts_does_not_leave_it_locked() -> None:
    store = SlowLockStore()

    @resumable(store=store)
    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    task = asyncio.create_task(anext(count(3)))
    await asyncio.to_thread(store.entered.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    store.release.set()
    await asyncio.to_thread(store.returned.wait, 10)
    key = count.key_for(3)
    deadline = asyncio.get_running_loop().time() + 1.0
    while store.is_locked(key) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)  # the clean-up may take a turn of the loop
    assert await collect(count(3)) == [0, 1, 2]
