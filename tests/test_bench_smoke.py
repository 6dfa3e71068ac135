"""Smoke test of the benchmarks: ``python -m benchmarks --quick --json PATH`` keeps working.

It runs the real entry point with tiny sizes in a subprocess (a few seconds) and checks
that every row is there with finite positive numbers. The DBOS rows may say
"unavailable" only when DBOS is not installed; with DBOS installed they must be real.
Likewise the Apify rows with the ``apify`` SDK (in the dev extra): one migration each
with ``Actor.use_state`` and with resumable, and a fast and a slow job's store writes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CORE_ROWS = [
    "step_overhead",
    "floor_overhead",
    "step_vs_floor",
    "durable_vs_floor",
    "durable_per_write",
    "gather_durable",
    "replay_per_step",
    "resume_point",
    "record_size",
    "flush_flat",
    "key_digest_vs_json",
    "key_digest_vs_run",
    "gen_item_overhead",
    "gen_counting_floor",
    "drain_jsonl",
]
DBOS_ROWS = [
    "dbos_step_vs_checkpoint",
    "dbos_step_vs_durable",
    "dbos_recovery_20",
    "dbos_recovery_20_vs_point",
    "dbos_replay_per_step",
    "dbos_bytes_per_step",
]
APIFY_ROWS = ["apify_duplicates", "apify_migrating_write", "apify_writes_fast", "apify_writes_slow"]


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_benchmark_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {row["name"]: row for row in data["rows"]}
    meta = data["meta"]
    assert meta["mode"] == "quick"
    assert meta["nproc"] >= 1
    assert meta["python"]
    assert meta["cpu"]
    assert meta["todo"] == [], meta["todo"]

    dbos_installed = importlib.util.find_spec("dbos") is not None
    apify_installed = importlib.util.find_spec("apify") is not None
    for name in CORE_ROWS + DBOS_ROWS + APIFY_ROWS:
        assert name in rows, f"row {name} is missing from {sorted(rows)}"
        row = rows[name]
        if name in DBOS_ROWS and not dbos_installed:
            assert row["status"] == "unavailable"
            assert "dbos" in row["note"]
            continue
        if name in APIFY_ROWS and not apify_installed:
            assert row["status"] == "unavailable"
            assert "apify" in row["note"]
            continue
        if name == "apify_duplicates":
            continue  # counts, checked below
        assert row["status"] == "ok", row
        assert row["repeats"] >= 1
        for part in ("value", "baseline", "ratio"):
            for stat in ("median", "min", "max"):
                assert _positive(row[part][stat]), (name, part, stat, row[part])
            assert row[part]["min"] <= row[part]["median"] <= row[part]["max"], (name, part)
        if row["goal"]:
            assert isinstance(row["met"], bool), row

    if apify_installed:
        # Duplicates are counts: the migration ran, every item was kept (the benchmark
        # fails otherwise), resumable pushed none twice; use_state may have.
        dup = rows["apify_duplicates"]
        assert dup["status"] == "ok", dup
        assert dup["repeats"] == 1
        assert dup["samples"]["value"] == [0.0]
        assert dup["samples"]["baseline"][0] >= 0.0  # use_state: one or more, or none
        assert dup["met"] is True
        assert len(dup["extra"]["runs"]["use_state"]) == len(dup["extra"]["runs"]["resumable"]) == 1
        assert rows["apify_migrating_write"]["value"]["max"] < 10_000  # ms: well within the platform's 30 s
        for name in ("apify_writes_fast", "apify_writes_slow"):
            # Bounded by the interval: no two writes closer than the flush interval.
            row = rows[name]
            assert row["ratio"]["max"] <= 1.0, row
            assert row["met"] is True, row
            assert row["extra"]["keys"] == ["bench-writes"], row
        fast, slow = rows["apify_writes_fast"]["extra"], rows["apify_writes_slow"]["extra"]
        assert fast["steps_per_s"] > 20 * slow["steps_per_s"], (fast, slow)

    # The printed table carries the same rows.
    for name in CORE_ROWS + (APIFY_ROWS if apify_installed else []):
        assert rows[name]["title"] in proc.stdout
