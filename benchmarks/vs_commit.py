"""``python -m benchmarks.vs_commit REV``: this tree's step costs against commit REV's.

A change to the core must keep its speed, and "as fast as before" needs the old code
measured beside the new, on the same machine, in the same minutes. This exports REV
with ``git archive`` into a temporary directory and runs the same measuring child
against each tree in turn (alternating which goes first, ``--rounds`` times), with
``PYTHONPATH`` pointing at the tree measured. Each child times, in one run on a
`FileStore` with the default 1 s interval flush, the process CPU time per call (all
threads: the flusher's encoding counts too) of:

- ``none``: a step taking one int and returning ``None``, minus a plain call;
- ``value``: a step returning 100 bytes of text, minus a plain call;
- ``dictarg``: a step taking a small dict (a row) and returning ``None``, minus a plain call;
- ``replay``: per step, resuming a run of 100,000 recorded ``None`` steps to the first new one.

It prints the median of each side and the ratio this tree / REV.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, tempfile, time
from resumable import FileStore, checkpoint, resumable

cpu = time.process_time
N = 100_000

def plain(x):
    return None

@checkpoint
def none(x):
    return None

@checkpoint
def value(x):
    return "x" * 100

@checkpoint
def dictarg(row):
    return None

store = FileStore(tempfile.mkdtemp())

@resumable(key="vs-{tag}", store=store, flush_interval=1.0)
def job(tag):
    out = {}
    for name, f in (("plain", plain), ("none", none), ("value", value)):
        t = cpu()
        for i in range(N):
            f(i)
        out[name] = (cpu() - t) / N
    row = {"id": 7, "name": "acme", "total": 12.5}
    t = cpu()
    for _ in range(N):
        dictarg(row)
    out["dictarg"] = (cpu() - t) / N
    return out

class Stop(Exception):
    pass

@checkpoint
def rstep(i):
    return None

state = {"stop": N}

@resumable(key="vs-replay", store=store, flush_interval=3600)
def replayed():
    for i in range(N + 1):
        if i == state["stop"]:
            raise Stop(cpu())
        rstep(i)

o = job(str(time.time_ns()))
try:
    replayed()
except Stop:
    pass
start = cpu()
state["stop"] = N
try:
    replayed()
except Stop as stop:
    o["replay"] = (stop.args[0] - start) / N
plain_cost = o.pop("plain")
out = {k: (v - plain_cost if k != "replay" else v) * 1e6 for k, v in o.items()}
print(json.dumps(out))
"""


def export(rev: str, root: Path, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev, "resumable"], cwd=root, capture_output=True, check=True)
    tree = into / rev.replace("/", "_")
    tree.mkdir()
    tar = into / "tree.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as t:
        t.extractall(tree, filter="data")
    return tree


def measure(tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True, cwd=tree
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_commit", description=__doc__)
    parser.add_argument("rev", help="the commit to compare with (say: main, or a hash)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        old = export(args.rev, root, Path(tmp))
        sides: dict[str, list[dict[str, float]]] = {"this": [], args.rev: []}
        for r in range(args.rounds):
            order = [("this", root), (args.rev, old)]
            for name, tree in order if r % 2 == 0 else reversed(order):
                sides[name].append(measure(tree))
    rows = sides["this"][0].keys()
    print(f"per call, µs of process CPU time, median of {args.rounds} rounds (this tree / {args.rev})")
    for row in rows:
        new = statistics.median(s[row] for s in sides["this"])
        base = statistics.median(s[row] for s in sides[args.rev])
        print(f"  {row:<8} this {new:7.3f}   {args.rev} {base:7.3f}   ratio {new / base:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
