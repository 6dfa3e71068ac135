"""``python -m benchmarks [--quick] [--json PATH] [--only NAME...] [--full]``: print the table."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Row, check_finite, dump, progress, render, sizes

GROUPS = ("core", "generators", "dbos", "apify")


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import resumable

    return {
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "resumable": resumable.__version__,
    }


def _commit() -> str:
    """The commit of the code measured, with ``+dirty`` when resumable/ has local changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "resumable"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("BENCH_COMMIT", "unknown")
    return head + ("+dirty" if dirty else "")


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages: a busy machine makes every row noisier."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for the smoke test")
    parser.add_argument("--full", action="store_true", help="also DBOS recovery at k=10^5 (slow)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups")
    args = parser.parse_args(argv)
    sz = sizes(args.quick, args.full)
    groups = args.only or list(GROUPS)
    meta = machine()
    meta["mode"] = "quick" if args.quick else ("full" if args.full else "default")
    meta["loadavg_start"] = _load()
    started = time.perf_counter()
    rows: list[Row] = []
    todo: list[str] = []
    with tempfile.TemporaryDirectory(prefix="resumable-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        if "core" in groups:
            from benchmarks import core

            rows += core.all_rows(sz, Path(tmp))
        if "generators" in groups:
            from benchmarks import generators

            got, missing = generators.all_rows(sz, Path(tmp))
            rows += got
            todo += missing
        if "dbos" in groups:
            from benchmarks import dbos_cmp

            rows += dbos_cmp.all_rows(sz, Path(tmp))
        if "apify" in groups:
            from benchmarks import apify_rows

            rows += apify_rows.all_rows(sz, Path(tmp))
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["loadavg_end"] = _load()
    meta["todo"] = todo
    check_finite(rows)
    print(
        f"resumable {meta['resumable']} ({meta['commit']}) benchmarks, {meta['date']}: {meta['cpu']}, "
        f"{meta['nproc']} CPUs, "
        f"Python {meta['python']}, mode {meta['mode']}, {meta['seconds']} s, "
        f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end"
    )
    print()
    print(render(rows))
    print()
    for row in rows:
        if row.note and row.status == "ok":
            print(f"- `{row.name}`: {row.note}")
    for item in todo:
        print(f"TODO: {item}")
    if args.json:
        dump(rows, args.json, meta)
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
