"""Rows for generator jobs: per-item overhead, and drain into a JSON Lines sink."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._harness import Row, Sizes, progress, ratios

perf = time.perf_counter
US = 1e6


def _generator_jobs_available() -> str | None:
    """Return why generator jobs cannot be measured, or None when they can."""
    import resumable

    try:

        @resumable.resumable
        def probe() -> Iterator[int]:
            yield 1

    except TypeError as exc:
        return f"generator jobs are not in this resumable yet ({exc})"
    try:
        from resumable.sinks import JsonLinesSink, drain  # noqa: F401
    except ImportError as exc:
        return f"resumable.sinks is missing ({exc})"
    return None


def bare(n: int) -> Iterator[int]:
    yield from range(n)


def bare_loop(n: int) -> Iterator[int]:
    for i in range(n):  # noqa: UP028 - the same body as the job's
        yield i


def counting(gen: Iterator[Any]) -> Iterator[Any]:
    """The floor: a wrapper generator that counts what passes through it."""
    count = 0
    for item in gen:
        count += 1  # noqa: SIM113 - the floor is a counting wrapper, as written by hand
        yield item


def _consume(gen: Iterator[Any]) -> float:
    t = time.thread_time()  # CPU-bound: the thread's CPU time (see core.cpu)
    for _ in gen:
        pass
    return time.thread_time() - t


def _item(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"item-{i}", "ok": True}


def hand_written(path: Path, n: int, batch: int) -> None:
    """What drain does, by hand: JSON lines appended, flushed and fsynced per batch."""
    with path.open("ab") as fh:
        buf: list[dict[str, Any]] = []
        for i in range(n):
            buf.append(_item(i))
            if len(buf) >= batch:
                fh.write("".join(json.dumps(x) + "\n" for x in buf).encode())
                fh.flush()
                os.fsync(fh.fileno())
                buf = []
        if buf:
            fh.write("".join(json.dumps(x) + "\n" for x in buf).encode())
            fh.flush()
            os.fsync(fh.fileno())


def all_rows(sz: Sizes, tmp: Path) -> tuple[list[Row], list[str]]:
    why = _generator_jobs_available()
    if why is not None:
        return [], [
            f"generator item overhead vs a bare generator (goal < 0.5 µs/item): not measured, {why}",
            "drain() into JsonLinesSink vs hand-written lines with the same fsync cadence "
            f"(goal <= 1.2x): not measured, {why}",
        ]
    import resumable
    from resumable.sinks import JsonLinesSink, drain

    store = resumable.FileStore(tmp / "gen-store")

    @resumable.resumable(key="gen-{tag}", store=store, flush_interval=1.0)
    def gen_job(tag: str, n: int) -> Iterator[int]:
        for i in range(n):  # noqa: UP028
            yield i

    @resumable.resumable(key="drain-{tag}", store=store, flush_interval=1.0)
    def items_job(tag: str, n: int) -> Iterator[dict[str, Any]]:
        for i in range(n):
            yield _item(i)

    n = sz.gen_items
    progress(f"generator job items against a bare generator ({n:,} items)")
    job_t: list[float] = []
    bare_t: list[float] = []
    wrap_t: list[float] = []
    for r in range(sz.warmup + sz.repeats):
        sides = [
            lambda: _consume(bare_loop(n)),
            lambda: _consume(counting(bare_loop(n))),
            lambda: _consume(gen_job(f"g{time.time_ns()}", n)),
        ]
        times = [0.0, 0.0, 0.0]
        for j in [(r + k) % 3 for k in range(3)]:
            times[j] = sides[j]() / n * US
        if r >= sz.warmup:
            bare_t.append(times[0])
            wrap_t.append(times[1])
            job_t.append(times[2])
    over = [j - b for j, b in zip(job_t, bare_t, strict=True)]
    wover = [w - b for w, b in zip(wrap_t, bare_t, strict=True)]
    rows = [
        Row(
            "gen_item_overhead",
            "generator job, overhead per item (no sink)",
            "µs",
            over,
            "bare generator, per item",
            "µs",
            bare_t,
            ratios(job_t, bare_t),
            "job/bare",
            goal="overhead < 0.5 µs",
            met=sorted(over)[len(over) // 2] < 0.5,
            note=f"{n:,} items per repeat, thread CPU time, run start and end included "
            "(their fsync waits are not CPU time)",
        ),
        Row(
            "gen_counting_floor",
            "floor: a counting wrapper generator, overhead per item",
            "µs",
            wover,
            "bare generator, per item",
            "µs",
            bare_t,
            ratios(wrap_t, bare_t),
            "wrapper/bare",
        ),
    ]

    m, batch = sz.drain_items, 100
    progress(f"drain into JsonLinesSink against hand-written lines ({m:,} items, fsync per {batch})")
    out = tmp / "jsonl"
    out.mkdir(exist_ok=True)

    def drain_side() -> float:
        path = out / f"drain-{time.time_ns()}.jsonl"
        t = perf()
        pushed = drain(items_job(path.stem, m), JsonLinesSink(path), batch_size=batch)
        elapsed = perf() - t
        if pushed != m:
            raise AssertionError(f"drain pushed {pushed} of {m} items")
        return elapsed

    def hand_side() -> float:
        path = out / f"hand-{time.time_ns()}.jsonl"
        t = perf()
        hand_written(path, m, batch)
        return perf() - t

    from benchmarks._harness import paired

    d, h = paired(drain_side, hand_side, sz.repeats, sz.warmup)
    d = [x * 1e3 for x in d]
    h = [x * 1e3 for x in h]
    rows.append(
        Row(
            "drain_jsonl",
            f"drain() of a generator job into JsonLinesSink, {m:,} items",
            "ms",
            d,
            "the same lines written by hand, fsync per batch",
            "ms",
            h,
            ratios(d, h),
            "drain/hand",
            goal="<= 1.2x",
            met=sorted(ratios(d, h))[len(d) // 2] <= 1.2,
            note=f"batches of {batch}, one fsync each on both sides; drain also writes the run's record",
        )
    )
    return rows, []
