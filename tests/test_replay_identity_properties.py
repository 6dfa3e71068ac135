"""Property: whatever the interleaving, the arguments and the crash point, replay hands
every call its own result and runs no recorded step body again (issue 10).

A random async job interleaves its own steps with batches of concurrent calls (asyncio
tasks and threads through ``asyncio.to_thread``), with arguments drawn from a small
range (so equal calls are common), plain or wrapped in a dataclass. It crashes after a
random segment, once everything before the crash completed and was written. The
resumed run is scheduled differently (each concurrent call waits a random number of
loop turns before calling its step). Then:

- every call returns the result that belongs to its arguments;
- the step bodies that ran on resume are exactly the calls after the crash point (as a
  multiset of arguments): nothing recorded ran again, nothing was lost;
- the job's result equals an uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from resumable import MemoryStore, aflush, checkpoint, resumable


@dataclasses.dataclass(frozen=True)
class Arg:
    value: int


class Crash(BaseException):
    pass


own_call = st.tuples(st.just("own"), st.integers(0, 3))
conc_call = st.tuples(st.sampled_from(["task", "thread"]), st.integers(0, 3), st.booleans())
segment = st.one_of(
    own_call.map(lambda c: ("own", [c], [])),
    st.tuples(st.lists(conc_call, min_size=1, max_size=4), st.lists(own_call, max_size=2)).map(
        lambda t: ("batch", t[0], t[1])
    ),
)
plans = st.lists(segment, min_size=1, max_size=6)


def _arg(value: int, wrapped: bool) -> Any:
    return Arg(value) if wrapped else value


def _value(arg: Any) -> int:
    return arg.value if isinstance(arg, Arg) else int(arg)


def _calls(plan: list[Any], start: int) -> Counter[tuple[str, int]]:
    """The step calls of segments ``start..`` by (kind, argument value)."""
    out: Counter[tuple[str, int]] = Counter()
    for kind, first, second in plan[start:]:
        if kind == "own":
            out["own", first[0][1]] += 1
            continue
        for _, value, _ in first:
            out["conc", value] += 1
        for _, value in second:
            out["own", value] += 1
    return out


@settings(max_examples=200, deadline=None)
@given(plan=plans, crash_at=st.integers(0, 6), waits=st.data())
def test_replay_hands_every_call_its_own_result(plan: list[Any], crash_at: int, waits: st.DataObject) -> None:
    crash_at = min(crash_at, len(plan))
    ran: Counter[tuple[str, int]] = Counter()
    wrong: list[str] = []

    @checkpoint
    async def own(arg: Any) -> tuple[str, int]:
        ran["own", _value(arg)] += 1
        return ("own", _value(arg))

    @checkpoint
    async def conc(arg: Any) -> tuple[str, int]:
        ran["conc", _value(arg)] += 1
        return ("conc", _value(arg))

    @checkpoint
    def conc_sync(arg: Any) -> tuple[str, int]:
        ran["conc", _value(arg)] += 1
        return ("conc", _value(arg))

    delays: list[int] = []

    async def call_later(how: str, arg: Any, turns: int) -> Any:
        for _ in range(turns):
            await asyncio.sleep(0)
        if how == "thread":
            return await asyncio.to_thread(conc_sync, arg)
        return await conc(arg)

    def check(got: Any, kind: str, arg: Any) -> Any:
        if got != (kind, _value(arg)):
            wrong.append(f"{kind}({arg!r}) got {got!r}")
        return got

    crash = [True]

    @resumable(store=MemoryStore(), key="property")
    async def job() -> list[Any]:
        out: list[Any] = []
        turns = iter(delays)
        for index, (kind, first, second) in enumerate(plan):
            if index == crash_at and crash[0]:
                await aflush()
                raise Crash
            if kind == "own":
                arg = _arg(first[0][1], False)
                out.append(check(await own(arg), "own", arg))
                continue
            args = [_arg(value, wrapped) for _, value, wrapped in first]
            tasks = [
                asyncio.create_task(call_later(how, arg, next(turns, 0)))
                for (how, _, _), arg in zip(first, args, strict=True)
            ]
            for _, value in second:  # the body's own steps while the batch runs
                out.append(check(await own(value), "own", value))
            for task, arg in zip(tasks, args, strict=True):
                out.append(check(await task, "conc", arg))
        return out

    total_conc = sum(len(first) for kind, first, _ in plan if kind == "batch")
    turn = st.integers(0, 3)
    delays[:] = [waits.draw(turn) for _ in range(total_conc)]
    if crash_at < len(plan):
        with contextlib.suppress(Crash):
            asyncio.run(job())
        assert ran == _calls(plan[:crash_at], 0)
        ran.clear()
        delays[:] = [waits.draw(turn) for _ in range(total_conc)]  # another schedule
    crash[0] = False
    result = asyncio.run(job())
    assert wrong == []
    assert ran == _calls(plan, crash_at if crash_at < len(plan) else 0)
    assert len(result) == sum(_calls(plan, 0).values())
