"""Rows for resumable's own engine: step overhead, durable writes, replay, records, flushes, keys.

Everything here runs in this process against a `FileStore` in a temporary directory
on the machine's disk (the same directory the raw fsync floor writes to).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wrapt

import resumable
from benchmarks._harness import Row, Sizes, paired, progress, ratios
from resumable import FileStore, checkpoint, restart_with
from resumable.stores import Store

perf = time.perf_counter
#: The clock of the CPU-bound rows (step overhead, replay): the calling thread's CPU
#: time, so that other processes preempting this one on a shared machine do not count.
cpu = time.thread_time
US = 1e6


class _Stop(Exception):
    """Raised by a benchmark step to end a run where the measurement ends."""


class CountingStore(FileStore):
    """A FileStore that counts its writes (to tell how many a durable step makes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self.sets = 0

    def set(self, key: str, value: bytes) -> None:
        self.sets += 1
        super().set(key, value)


def record_bytes(store: Store, key: str) -> int:
    """Bytes of a run's record: its head plus every chunk beside it."""
    total = 0
    for k in [key, *store.keys(f"{key}(r)")]:
        raw = store.get(k)
        total += len(raw) if raw is not None else 0
    return total


def raw_atomic_write(directory: Path, data: bytes) -> None:
    """The floor: what any durable write of a small file must do at least."""
    tmp = directory / ".bench-floor.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, directory / ".bench-floor")
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- per-step overhead ------------------------------------------------------------------


def plain(i: int) -> None:
    return None


@checkpoint
def step(i: int) -> None:
    return None


_FLOOR_CTX: contextvars.ContextVar[object | None] = contextvars.ContextVar("bench_floor", default=None)


def _floor_wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
    if _FLOOR_CTX.get() is not None:  # the lookup every step wrapper must make
        raise AssertionError("unreachable")
    return wrapped(*args, **kwargs)


floor = wrapt.FunctionWrapper(plain, _floor_wrapper)


def _loop(f: Callable[[int], Any], n: int) -> float:
    t = cpu()
    for i in range(n):
        f(i)
    return cpu() - t


@resumable.resumable(key="overhead-{tag}", flush_interval=1.0)
def overhead_job(tag: str, n: int, repeats: int, warmup: int) -> list[list[float]]:
    out: list[list[float]] = []
    # Indexed, not keyed: a wrapper compares equal to (and hashes as) what it wraps.
    sides: list[Callable[[int], Any]] = [plain, floor, step]
    for r in range(warmup + repeats):
        times = [0.0, 0.0, 0.0]
        for j in [(r + k) % 3 for k in range(3)]:  # rotate so no side always runs first
            times[j] = _loop(sides[j], n) / n
        if r >= warmup:
            out.append(times)
    return out


def rows_overhead(sz: Sizes) -> list[Row]:
    progress("per-step overhead")
    res = overhead_job(f"o{time.time_ns()}", sz.calls, sz.repeats, sz.warmup)
    p = [r[0] * US for r in res]
    f = [r[1] * US for r in res]
    c = [r[2] * US for r in res]
    over = [ci - pi for ci, pi in zip(c, p, strict=True)]
    fover = [fi - pi for fi, pi in zip(f, p, strict=True)]
    return [
        Row(
            "step_overhead",
            "@checkpoint overhead per call, inside a run with interval flushing",
            "µs",
            over,
            "plain call",
            "µs",
            p,
            ratios(c, p),
            "checkpointed/plain",
            goal="overhead < 1.5 µs",
            met=sorted(over)[len(over) // 2] < 1.5,
            note=f"{sz.calls:,} calls per repeat, thread CPU time; steps return None",
        ),
        Row(
            "floor_overhead",
            "floor: bare wrapt FunctionWrapper + ContextVar.get, overhead per call",
            "µs",
            fover,
            "plain call",
            "µs",
            p,
            ratios(f, p),
            "wrapped/plain",
            note="what any wrapt-based step decorator pays before doing anything",
        ),
        Row(
            "step_vs_floor",
            "@checkpoint overhead against the floor's overhead",
            "µs",
            over,
            "floor overhead",
            "µs",
            fover,
            ratios(over, fover),
            "checkpoint/floor",
        ),
    ]


# -- durable steps ----------------------------------------------------------------------


@checkpoint(durable=True)
def durable_step(i: int) -> None:
    return None


@checkpoint(durable=True)
async def adurable_step(i: int) -> None:
    return None


@resumable.resumable(key="durable-{tag}", flush_interval=1.0)
def durable_job(tag: str, store: CountingStore, m: int, repeats: int, warmup: int) -> list[list[float]]:
    resumable.flush()  # the head exists: write a floor file of the same size
    head = store.get(resumable.current_run().key) or b""  # type: ignore[union-attr]
    data = os.urandom(len(head) // 2).hex().encode()[: len(head)]
    directory = store.path
    out = []

    def floor_side() -> float:
        t = perf()
        for _ in range(m):
            raw_atomic_write(directory, data)
        return (perf() - t) / m

    counts: list[int] = []

    def durable_side() -> float:
        before = store.sets
        t = perf()
        for i in range(m):
            durable_step(i)
        elapsed = (perf() - t) / m
        counts.append(store.sets - before)
        return elapsed

    subj, base = paired(durable_side, floor_side, repeats, warmup)
    writes = counts[warmup:]
    for s, b, w in zip(subj, base, writes, strict=True):
        out.append([s, b, w / m, float(len(head))])
    return out


@resumable.resumable(key="gather-{tag}", flush_interval=1.0)
async def gather_job(tag: str, width: int, repeats: int, warmup: int) -> list[list[float]]:
    out = []
    for r in range(warmup + repeats):
        t = perf()
        for i in range(width):
            await adurable_step(i)
        seq = perf() - t
        t = perf()
        await asyncio.gather(*(adurable_step(i) for i in range(width)))
        con = perf() - t
        if r >= warmup:
            out.append([seq, con])
    return out


def rows_durable(sz: Sizes, tmp: Path) -> list[Row]:
    progress("durable steps against the raw atomic write floor")
    store = CountingStore(tmp / "durable")
    resumable.configure(store=store)
    try:
        res = durable_job(f"d{time.time_ns()}", store, sz.durable_calls, sz.repeats, sz.warmup)
    finally:
        resumable.configure(store=_default_store())
    dur = [r[0] * US for r in res]
    flo = [r[1] * US for r in res]
    writes = [r[2] for r in res]
    per_write = [d / w for d, w in zip(dur, writes, strict=True)]
    w_med = sorted(writes)[len(writes) // 2]
    rows = [
        Row(
            "durable_vs_floor",
            "durable @checkpoint (intent + completion written) per step",
            "µs",
            dur,
            "raw atomic write (tmp+fsync+rename+dir fsync)",
            "µs",
            flo,
            ratios(dur, flo),
            "durable step/raw write",
            goal="<= 1.3x",
            met=sorted(ratios(dur, flo))[len(dur) // 2] <= 1.3,
            note=f"{sz.durable_calls} steps per repeat; a durable step made {w_med:g} store writes "
            f"(floor file {int(res[0][3])} B, the size of the run's head)",
            extra={"store_writes_per_step": writes},
        ),
        Row(
            "durable_per_write",
            "durable @checkpoint per store write it makes",
            "µs",
            per_write,
            "raw atomic write",
            "µs",
            flo,
            ratios(per_write, flo),
            "per write/raw write",
            goal="<= 1.3x",
            met=sorted(ratios(per_write, flo))[len(dur) // 2] <= 1.3,
            note=f"{w_med:g} writes per durable step (counted on the store)",
        ),
    ]
    progress("32 concurrent durable async steps against 32 sequential")
    res = asyncio.run(gather_job(f"g{time.time_ns()}", sz.gather_width, sz.repeats, sz.warmup))
    seq = [sz.gather_width / r[0] for r in res]
    con = [sz.gather_width / r[1] for r in res]
    rows.append(
        Row(
            "gather_durable",
            f"{sz.gather_width} concurrent durable async steps (asyncio.gather), throughput",
            "steps/s",
            con,
            f"{sz.gather_width} sequential",
            "steps/s",
            seq,
            ratios(con, seq),
            "concurrent/sequential",
            goal=">= 8x",
            met=sorted(ratios(con, seq))[len(con) // 2] >= 8,
            note="group commit: intents and completions that wait together share writes",
        )
    )
    return rows


# -- replay and resume points -----------------------------------------------------------

_STOP: list[int | None] = [None]
_MARK: dict[str, float] = {}


@checkpoint
def stop_step(i: int) -> None:
    stop = _STOP[0]
    if stop is not None and i >= stop:
        _MARK["first_new"] = perf()
        _MARK["first_new_cpu"] = cpu()
        raise _Stop
    return


@resumable.resumable(key="replay-{tag}", flush_interval=1.0)
def replay_job(tag: str, n: int) -> None:
    _MARK["body"] = perf()
    _MARK["body_cpu"] = cpu()
    for i in range(n + 1):
        stop_step(i)


def _crash_at(stop: int, call: Callable[[], Any]) -> tuple[float, float]:
    """Call a job until its step ``stop`` runs.

    Returns the wall time from the call to the first new step, and the CPU time of
    this thread from the body's start to it (replay is pure computation).
    """
    _STOP[0] = stop
    _MARK.clear()
    t = perf()
    try:
        call()
    except _Stop:
        pass
    else:
        raise AssertionError("the benchmark job did not reach its stop step")
    finally:
        _STOP[0] = None
    body = _MARK["first_new_cpu"] - _MARK["body_cpu"] if "body_cpu" in _MARK else float("nan")
    return _MARK["first_new"] - t, body


def rows_replay(sz: Sizes) -> list[Row]:
    progress(f"replay of {sz.replay_steps:,} steps without a resume point")
    n = sz.replay_steps
    rec: list[float] = []
    rep: list[float] = []
    for r in range(sz.warmup + sz.repeats):
        call = functools.partial(replay_job, f"r{time.time_ns()}", n)
        _, recorded = _crash_at(n, call)
        _, replayed = _crash_at(n, call)
        if r >= sz.warmup:
            rec.append(recorded / n * US)
            rep.append(replayed / n * US)
    med = sorted(rep)[len(rep) // 2]
    return [
        Row(
            "replay_per_step",
            "replayed step, resuming without a resume point",
            "µs",
            rep,
            "the same step recorded",
            "µs",
            rec,
            ratios(rep, rec),
            "replay/record",
            goal="< 2 µs",
            met=med < 2,
            note=f"{n:,} recorded steps returning None; CPU time from the body's start to the first new step",
        )
    ]


@resumable.resumable(key="point-{total}-{tag}", flush_interval=1.0)
def point_job(tag: str, total: int, page: int, start: int = 0) -> None:
    _MARK["body"] = perf()
    for i in range(start, total + 1):
        if i % page == 0 and i != start:
            restart_with(start=i)
        stop_step(i)


@resumable.resumable(key="plain-{total}-{tag}", flush_interval=1.0)
def none_job(tag: str, total: int) -> None:
    _MARK["body"] = perf()
    for i in range(total + 1):
        stop_step(i)


def rows_resume(sz: Sizes) -> list[Row]:
    small, large, page = sz.point_small, sz.point_large, 100
    tag = f"p{time.time_ns()}"
    progress(f"resume points: recording runs of {small:,} and {large:,} steps")
    gen_small, _ = _crash_at(small, lambda: point_job(tag, small, page))
    gen_large, _ = _crash_at(large, lambda: point_job(tag, large, page))
    res_small: list[float] = []
    res_large: list[float] = []

    def side(total: int, out: list[float]) -> Callable[[], float]:
        def run() -> float:
            t, _ = _crash_at(total, lambda: point_job(tag, total, page))
            out.append(t)
            return t

        return run

    progress("resume points: resuming")
    lg, sm = paired(side(large, res_large), side(small, res_small), sz.point_repeats, sz.warmup)
    lg = [x * 1e3 for x in lg]
    sm = [x * 1e3 for x in sm]
    rows = [
        Row(
            "resume_point",
            f"resume with a resume point after {large:,} steps, call to first new step",
            "ms",
            lg,
            f"after {small:,} steps",
            "ms",
            sm,
            ratios(lg, sm),
            "large/small",
            goal="<= 1.5x",
            met=sorted(ratios(lg, sm))[len(lg) // 2] <= 1.5,
            note=f"restart_with() every {page} steps; recording {large:,} steps took {gen_large:.1f} s "
            f"({gen_large / large * US:.2f} µs/step incl. restart_with)",
            extra={"record_large_s": gen_large, "record_small_s": gen_small},
        )
    ]

    progress(f"record size after {sz.record_large:,} steps returning None")
    sizes: dict[int, int] = {}
    tag2 = f"s{time.time_ns()}"
    for total in (small, sz.record_large):
        _crash_at(total, functools.partial(none_job, tag2, total))
        key = none_job.key_for(tag2, total)  # type: ignore[attr-defined]
        sizes[total] = record_bytes(_default_store(), key)
    big, little = float(sizes[sz.record_large]), float(sizes[small])
    rows.append(
        Row(
            "record_size",
            f"record size (head + chunks) after {sz.record_large:,} steps returning None",
            "B",
            [big],
            f"after {small:,} steps",
            "B",
            [little],
            [big / little],
            "large/small",
            goal="< 2 KB, constant",
            met=big < 2048 and big / little < 1.1,
            note="deterministic: one measurement; the run was interrupted at its last step",
        )
    )
    return rows


_STORE: list[Store] = []


def _default_store() -> Store:
    return _STORE[0]


# -- flush cost -------------------------------------------------------------------------


@checkpoint
def hundred_bytes(i: int) -> str:
    return f"{i:0100d}"


@resumable.resumable(key="flush-{k}-{tag}", flush_interval=1.0)
def flush_job(tag: str, k: int, cmds: queue.Queue[int | None], results: queue.Queue[float]) -> int:
    for i in range(k):
        hundred_bytes(i)
    results.put(-1.0)  # ready
    i = k
    while (cmd := cmds.get()) is not None:
        hundred_bytes(i)
        i += 1
        t = perf()
        resumable.flush()
        results.put(perf() - t)
        del cmd
    return i


def rows_flush(sz: Sizes) -> list[Row]:
    progress(f"flush cost after {sz.flush_large:,} vs {sz.flush_small:,} steps returning 100 bytes")
    tag = f"f{time.time_ns()}"
    lanes = {}
    for k in (sz.flush_small, sz.flush_large):
        cmds: queue.Queue[int | None] = queue.Queue()
        results: queue.Queue[float] = queue.Queue()
        ctx = contextvars.Context()
        th = threading.Thread(target=ctx.run, args=(flush_job, tag, k, cmds, results), daemon=True)
        th.start()
        if results.get(timeout=600) != -1.0:
            raise AssertionError("flush job did not start")
        lanes[k] = (cmds, results, th)

    def side(k: int) -> Callable[[], float]:
        cmds, results, _ = lanes[k]

        def run() -> float:
            cmds.put(1)
            return results.get(timeout=60)

        return run

    lg, sm = paired(side(sz.flush_large), side(sz.flush_small), sz.flush_repeats, sz.warmup)
    for cmds, _, th in lanes.values():
        cmds.put(None)
        th.join(timeout=60)
    lg = [x * 1e3 for x in lg]
    sm = [x * 1e3 for x in sm]
    return [
        Row(
            "flush_flat",
            f"resumable.flush() after {sz.flush_large:,} steps returning 100 B each",
            "ms",
            lg,
            f"after {sz.flush_small:,} steps",
            "ms",
            sm,
            ratios(lg, sm),
            "large/small",
            goal="<= 2x",
            met=sorted(ratios(lg, sm))[len(lg) // 2] <= 2,
            note="each flush follows one new step; both runs live at once, flushes alternate",
        )
    ]


# -- key digest -------------------------------------------------------------------------


@checkpoint
def item_step(item: dict[str, Any]) -> None:
    return None


@resumable.resumable(flush_interval=1.0)
def digest_job(items: list[dict[str, Any]]) -> int:
    for item in items:
        item_step(item)
    return len(items)


def rows_digest(sz: Sizes) -> list[Row]:
    n = sz.digest_items
    progress(f"key digest of a list of {n:,} small dicts")
    items = [{"id": i, "name": f"item-{i}", "ok": True} for i in range(n)]
    key_t: list[float] = []
    json_t: list[float] = []
    job_t: list[float] = []
    warmup = min(sz.warmup, 1)
    for r in range(warmup + sz.digest_repeats):
        items[0]["id"] = -time.time_ns()  # a new run each time: not the finished one
        t = perf()
        digest_job.key_for(items)  # type: ignore[attr-defined]
        tk = perf() - t
        t = perf()
        json.dumps(items)
        tj = perf() - t
        t = perf()
        digest_job(items)
        tr = perf() - t
        if r >= warmup:
            key_t.append(tk * 1e3)
            json_t.append(tj * 1e3)
            job_t.append(tr * 1e3)
    return [
        Row(
            "key_digest_vs_json",
            f"run key digest of a list of {n:,} small dicts",
            "ms",
            key_t,
            "json.dumps of the same",
            "ms",
            json_t,
            ratios(key_t, json_t),
            "digest/json.dumps",
            note="bind to the signature, canonical JSON (sorted keys), sha256",
        ),
        Row(
            "key_digest_vs_run",
            f"run key digest of a list of {n:,} small dicts",
            "ms",
            key_t,
            "the whole run: one step per item",
            "ms",
            job_t,
            ratios(key_t, job_t),
            "digest/run",
            goal="well under the run (< 0.25x)",
            met=sorted(ratios(key_t, job_t))[len(key_t) // 2] < 0.25,
            note="the run's time includes computing its key once",
        ),
    ]


def all_rows(sz: Sizes, tmp: Path) -> list[Row]:
    store = FileStore(tmp / "store")
    _STORE[:] = [store]
    resumable.configure(store=store)
    try:
        rows: list[Row] = []
        rows += rows_overhead(sz)
        rows += rows_durable(sz, tmp)
        rows += rows_replay(sz)
        rows += rows_resume(sz)
        rows += rows_flush(sz)
        rows += rows_digest(sz)
        return rows
    finally:
        resumable.configure(store=None)
