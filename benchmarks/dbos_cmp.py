"""Rows against DBOS (issue 7): step cost, recovery after k steps, bytes per step.

DBOS runs on its SQLite system database in a temporary directory: no server, no
network. Recovery is measured as a user sees it: from the start of a new process to
the first step that was not recorded, for DBOS (whose recovery replays every recorded
step from the database) and for resumable (with and without a resume point).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Row, Sizes, progress, ratios, unavailable

US = 1e6
ROOT = Path(__file__).resolve().parent.parent


def _child(*args: object, timeout: float = 1800) -> tuple[dict[str, Any], float]:
    """Run a child; return its JSON line and the wall time at which it was started."""
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks._child", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmark child {args} failed ({proc.returncode}): {proc.stderr[-2000:]}{proc.stdout[-500:]}"
        )
    return json.loads(lines[-1]), started


def _tree_bytes(path: Path) -> int:
    """Bytes of a store directory's records (not its lock files) or of DBOS's database."""
    total = 0
    for p in path.iterdir():
        if p.is_file() and not p.name.startswith("."):
            total += p.stat().st_size
    return total


def dbos_version() -> str | None:
    if importlib.util.find_spec("dbos") is None:
        return None
    return importlib.metadata.version("dbos")


ROW_NAMES = ("dbos_step_vs_checkpoint", "dbos_step_vs_durable")


def expected_rows(sz: Sizes) -> list[str]:
    names = list(ROW_NAMES)
    for k in sz.dbos_ks:
        names += [f"dbos_recovery_{k}", f"dbos_recovery_{k}_vs_point"]
    names += ["dbos_replay_per_step", "dbos_bytes_per_step"]
    return names


def all_rows(sz: Sizes, tmp: Path) -> list[Row]:
    version = dbos_version()
    if version is None:
        why = "dbos is not installed (pip install 'resumable[bench]')"
        return [unavailable(name, name, why) for name in expected_rows(sz)]
    if int(version.split(".")[0]) < 3:
        why = f"dbos {version} is installed; these rows compare against DBOS 3.x"
        return [unavailable(name, name, why) for name in expected_rows(sz)]
    rows = rows_step(sz, tmp, version)
    rows += rows_recovery(sz, tmp, version)
    return rows


def rows_step(sz: Sizes, tmp: Path, version: str) -> list[Row]:
    n = sz.dbos_steps
    progress(f"DBOS {version} @DBOS.step against @checkpoint, {n} steps per repeat")
    d = tmp / "dbos-overhead"
    d.mkdir()
    repeats, warmup = min(sz.repeats, 5), min(sz.warmup, 1)  # a DBOS step costs milliseconds
    out, _ = _child("overhead", d, n, repeats, warmup)
    per = out["per_step"]
    plain = [r[0] * US for r in per]
    dbos = [r[1] * US for r in per]
    ckpt = [r[2] * US for r in per]
    dur = [r[3] * US for r in per]
    plain_med = sorted(plain)[len(plain) // 2]
    common = f"{n} steps per repeat in one workflow/run, timed in its body; plain call {plain_med:.3f} µs"
    return [
        Row(
            "dbos_step_vs_checkpoint",
            f"DBOS {version} @DBOS.step in a @DBOS.workflow (SQLite), per step",
            "µs",
            dbos,
            "@checkpoint, interval flush",
            "µs",
            ckpt,
            ratios(dbos, ckpt),
            "DBOS/resumable",
            note=common,
        ),
        Row(
            "dbos_step_vs_durable",
            f"DBOS {version} @DBOS.step in a @DBOS.workflow (SQLite), per step",
            "µs",
            dbos,
            "@checkpoint(durable=True)",
            "µs",
            dur,
            ratios(dbos, dur),
            "DBOS/resumable",
            note="both write each step before it returns (DBOS: one SQLite transaction)",
        ),
    ]


def rows_recovery(sz: Sizes, tmp: Path, version: str) -> list[Row]:
    rows: list[Row] = []
    sizes: dict[str, dict[int, int]] = {"dbos": {}, "res": {}, "point": {}}
    replays: dict[int, dict[str, list[float]]] = {}
    work = tmp / "recovery"
    for idx, k in enumerate(sz.dbos_ks):
        progress(f"recovery after {k:,} steps: recording (DBOS recording skips fsync)")
        pristine = work / f"k{k}"
        dirs = {"res": pristine / "res", "point": pristine / "point", "dbos": pristine / "dbos"}
        for p in dirs.values():
            p.mkdir(parents=True)
        t = time.perf_counter()
        _child("res-gen", dirs["res"], k, 0)
        _child("res-gen", dirs["point"], k, 1)
        t_res = time.perf_counter() - t
        t = time.perf_counter()
        _child("dbos-gen", dirs["dbos"], k, timeout=7200)
        t_dbos = time.perf_counter() - t
        for name, p in dirs.items():
            sizes[name][k] = _tree_bytes(p)
        times: dict[str, list[float]] = {"res": [], "point": [], "dbos": []}
        replay: dict[str, list[float]] = {"res": [], "point": [], "dbos": []}
        imports: dict[str, list[float]] = {"res": [], "point": [], "dbos": []}
        warm = 1 if idx == 0 and not sz.quick else 0  # one warm-up run at the first k
        runs = sz.dbos_repeats + warm
        progress(f"recovery after {k:,} steps: {runs} runs of each, in fresh processes")
        for r in range(runs):
            for name in ("res", "point", "dbos"):
                live = work / "live" / name
                shutil.rmtree(live, ignore_errors=True)
                shutil.copytree(dirs[name], live)
                if name == "dbos":
                    out, started = _child("dbos-resume", live, k, timeout=7200)
                else:
                    out, started = _child("res-resume", live, k, 1 if name == "point" else 0)
                if r < warm:
                    continue
                times[name].append(out["first_new"] - started)
                replay[name].append(out["first_new"] - out["body"])
                imports[name].append(out["imported"])
        replays[k] = replay
        med = {name: sorted(v)[len(v) // 2] for name, v in imports.items()}
        note = (
            f"process start to first new step; {sz.dbos_repeats} runs; import takes "
            f"{med['dbos']:.2f} s (dbos) and {med['res']:.2f} s (resumable) of it; recording took "
            f"{t_dbos:.1f} s for DBOS, {t_res:.1f} s for resumable (both runs)"
        )
        rows.append(
            Row(
                f"dbos_recovery_{k}",
                f"DBOS recovery of a workflow with {k:,} completed steps",
                "s",
                times["dbos"],
                "resumable resume, no resume point (replays)",
                "s",
                times["res"],
                ratios(times["dbos"], times["res"]),
                "DBOS/resumable",
                note=note,
            )
        )
        rows.append(
            Row(
                f"dbos_recovery_{k}_vs_point",
                f"DBOS recovery of a workflow with {k:,} completed steps",
                "s",
                times["dbos"],
                f"resumable resume with a resume point every {100} steps",
                "s",
                times["point"],
                ratios(times["dbos"], times["point"]),
                "DBOS/resumable",
            )
        )
    k = max(sz.dbos_ks)
    d_rep = [x / k * US for x in replays[k]["dbos"]]
    r_rep = [x / k * US for x in replays[k]["res"]]
    rows.append(
        Row(
            "dbos_replay_per_step",
            f"DBOS recovery, per replayed step (workflow body start to first new step, k={k:,})",
            "µs",
            d_rep,
            "resumable, no resume point",
            "µs",
            r_rep,
            ratios(d_rep, r_rep),
            "DBOS/resumable",
            note="the replay alone, without process start-up and DBOS's queue pick-up",
        )
    )
    d_per = sizes["dbos"][k] / k
    r_per = sizes["res"][k] / k
    k0 = min(sz.dbos_ks)
    marginal = (sizes["dbos"][k] - sizes["dbos"][k0]) / (k - k0) if k > k0 else d_per
    rows.append(
        Row(
            "dbos_bytes_per_step",
            f"DBOS SQLite database per completed step, after {k:,} steps",
            "B",
            [d_per],
            "resumable record per completed step (no resume point)",
            "B",
            [r_per],
            [d_per / r_per],
            "DBOS/resumable",
            note=f"totals: DBOS {sizes['dbos'][k]:,} B ({marginal:.0f} B per step from k={k0:,} to "
            f"{k:,}), resumable {sizes['res'][k]:,} B ({sizes['point'][k]:,} B with resume points); "
            "steps return None; one measurement",
            extra={name: {str(kk): v for kk, v in by_k.items()} for name, by_k in sizes.items()},
        )
    )
    return rows
