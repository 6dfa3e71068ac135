"""Rows, repeats and the table: how every benchmark reports what it measured.

Every row is a ratio measured in the same run against its baseline. A row keeps one
value per measured repeat (warm-up repeats are run and thrown away before), for the
subject and for the baseline, and the ratio of each pair; the table shows medians with
the noise (min and max) beside them.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sizes:
    """How big and how often: one set for ``--quick``, one for the real run."""

    quick: bool
    repeats: int
    warmup: int
    calls: int  # calls per repeat for per-call overheads
    durable_calls: int  # durable steps per repeat (each costs a few fsyncs)
    gather_width: int
    replay_steps: int
    point_small: int
    point_repeats: int  # a resume costs about a millisecond: many repeats, for the noise
    point_large: int
    record_large: int
    flush_small: int
    flush_large: int
    flush_repeats: int
    digest_items: int
    digest_repeats: int
    dbos_steps: int
    dbos_ks: tuple[int, ...]
    dbos_repeats: int
    gen_items: int
    drain_items: int
    apify_migrations: int  # migrations for each of use_state and resumable
    apify_window: float  # seconds each writes-per-minute job runs
    apify_interval: float | None  # None: the Apify default flush interval (5 s)


def sizes(quick: bool, full: bool = False) -> Sizes:
    if quick:
        return Sizes(
            quick=True,
            repeats=3,
            warmup=1,
            calls=2_000,
            durable_calls=4,
            gather_width=32,
            replay_steps=2_000,
            point_small=100,
            point_repeats=3,
            point_large=2_000,
            record_large=2_000,
            flush_small=100,
            flush_large=1_000,
            flush_repeats=3,
            digest_items=5_000,
            digest_repeats=2,
            dbos_steps=5,
            dbos_ks=(20,),
            dbos_repeats=1,
            gen_items=2_000,
            drain_items=500,
            apify_migrations=1,
            apify_window=1.5,
            apify_interval=0.25,
        )
    return Sizes(
        quick=False,
        repeats=7,
        warmup=2,
        calls=200_000,
        durable_calls=40,
        gather_width=32,
        replay_steps=100_000,
        point_small=1_000,
        point_repeats=25,
        point_large=1_000_000,
        record_large=1_000_000,
        flush_small=100,
        flush_large=100_000,
        flush_repeats=15,
        digest_items=1_000_000,
        digest_repeats=3,  # a repeat takes ~10 s here: the run alone is 10^6 steps
        dbos_steps=100,
        dbos_ks=(1_000, 10_000, 100_000) if full else (1_000, 10_000),
        dbos_repeats=3,
        gen_items=200_000,
        drain_items=20_000,
        apify_migrations=8,
        apify_window=25.0,
        apify_interval=None,
    )


@dataclass
class Stat:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vs = list(values)
        return cls(statistics.median(vs), min(vs), max(vs))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max}


@dataclass
class Row:
    """One line of the table."""

    name: str
    title: str
    unit: str
    values: list[float]
    baseline_name: str
    baseline_unit: str
    baseline: list[float]
    ratios: list[float]
    ratio_label: str
    goal: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    #: Counts (duplicates): values may be 0, and the ratio of totals may be undefined
    #: (``ratios`` empty) when the baseline counted nothing.
    counts: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "note": self.note,
        }
        if self.status != "ok":
            return out
        out.update(
            unit=self.unit,
            value=Stat.of(self.values).as_dict(),
            baseline={
                "name": self.baseline_name,
                "unit": self.baseline_unit,
                **Stat.of(self.baseline).as_dict(),
            },
            ratio={"label": self.ratio_label, **Stat.of(self.ratios).as_dict()} if self.ratios else None,
            repeats=len(self.values),
            samples={"value": self.values, "baseline": self.baseline, "ratio": self.ratios},
            goal=self.goal,
            met=self.met,
            extra=self.extra,
        )
        return out


def unavailable(name: str, title: str, why: str) -> Row:
    return Row(name, title, "", [], "", "", [], [], "", note=why, status="unavailable")


def paired(
    subject: Callable[[], float],
    baseline: Callable[[], float],
    repeats: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Run baseline and subject back to back, ``warmup + repeats`` times.

    The order alternates between repeats so that neither side always runs first (a
    cache or a frequency step would otherwise favour one). Warm-up pairs are dropped.
    """
    subj: list[float] = []
    base: list[float] = []
    for r in range(warmup + repeats):
        if r % 2:
            s = subject()
            b = baseline()
        else:
            b = baseline()
            s = subject()
        if r >= warmup:
            subj.append(s)
            base.append(b)
    return subj, base


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def fmt(value: float, unit: str) -> str:
    if unit == "B" and abs(value) >= 100:
        return f"{value:,.0f}"
    if value == 0:
        return "0"
    mag = abs(value)
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(rows: list[Row]) -> str:
    """The table as Markdown (it reads as a plain table in a terminal too)."""
    head = (
        "| row | measured (min-max) | baseline (min-max) | ratio (min-max) | goal | met |\n"
        "|---|---|---|---|---|---|\n"
    )
    lines = []
    for row in rows:
        if row.status != "ok":
            lines.append(f"| {row.title} | {row.status}: {row.note} | | | | |")
            continue
        v, b = Stat.of(row.values), Stat.of(row.baseline)
        u = row.unit
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        if row.ratios:
            r = Stat.of(row.ratios)
            ratio = f"{row.ratio_label} {r.median:.3g} ({r.min:.3g}-{r.max:.3g})"
        else:
            ratio = f"{row.ratio_label}: - (the baseline counted 0)"
        if row.counts:  # counts: the total over the repeats, then the range per repeat
            value = f"{sum(row.values):g} in {len(row.values)} ({min(row.values):g}-{max(row.values):g} each)"
            base = (
                f"{row.baseline_name}: {sum(row.baseline):g} in {len(row.baseline)} "
                f"({min(row.baseline):g}-{max(row.baseline):g} each)"
            )
        else:
            value = f"{fmt(v.median, u)} {u} ({fmt(v.min, u)}-{fmt(v.max, u)})"
            base = (
                f"{row.baseline_name}: {fmt(b.median, row.baseline_unit)} {row.baseline_unit} "
                f"({fmt(b.min, row.baseline_unit)}-{fmt(b.max, row.baseline_unit)})"
            )
        lines.append(f"| {row.title} | {value} | {base} | {ratio} | {row.goal} | {met} |")
    return head + "\n".join(lines)


def check_finite(rows: list[Row]) -> None:
    for row in rows:
        if row.status != "ok":
            continue
        for v in (*row.values, *row.baseline, *row.ratios):
            if not (math.isfinite(v) and (v >= 0 if row.counts else v > 0)):
                raise ValueError(
                    f"row {row.name} has a value that is not finite and positive (or >= 0 for counts): {v}"
                )


def dump(rows: list[Row], path: str, meta: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"meta": meta, "rows": [r.as_dict() for r in rows]}, fh, indent=2)
        fh.write("\n")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
