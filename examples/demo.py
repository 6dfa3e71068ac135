"""Crash-and-resume demo: a batch job is SIGKILLed part way, run again, and finishes.

Run it with ``make demo`` (or ``python examples/demo.py``). It starts the job below in
a child process on the embedded default store (a `FileStore` directory), kills the
child with SIGKILL while it works, starts it again, and then checks the output: every
item exactly once, in order, and most steps not run again.

The job enriches 3,000 items. Each item goes through a ``@checkpoint`` step that takes
about a millisecond, and the items land in a JSON Lines file through a counting sink,
which gives exactly-once output even across a SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resumable import checkpoint, current_run, resumable
from resumable.sinks import JsonLinesSink, drain

ITEMS = 3000


@checkpoint
def enrich(item: int) -> dict[str, int]:
    """A step with a cost: it sleeps ~1 ms and notes each execution in a log."""
    time.sleep(0.001)
    with open(os.environ["DEMO_EXECUTIONS"], "a") as log:
        log.write(f"{item}\n")
    return {"item": item, "square": item * item}


@resumable(flush_interval=0.2)
def enrich_all(count: int):  # type: ignore[no-untyped-def]
    """Yield every item, enriched. Each item is a unit; each step call is a unit."""
    for item in range(count):
        yield enrich(item)
    run = current_run()
    assert run is not None
    print(
        f"  child: {run.replayed} steps replayed from the record without running, {ITEMS - run.replayed} run",
        flush=True,
    )


def child(out: Path) -> None:
    drain(enrich_all(ITEMS), JsonLinesSink(out), batch_size=50)


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return 0

    work = Path(tempfile.mkdtemp(prefix="resumable-demo-"))
    env = dict(
        os.environ,
        RESUMABLE_DIR=str(work / ".resumable"),
        DEMO_EXECUTIONS=str(work / "executions.log"),
    )
    out = work / "output.jsonl"
    cmd = [sys.executable, __file__, "--child", str(out)]
    print(f"resumable demo: {ITEMS} items, store in {work / '.resumable'}")

    print("1. start the job and SIGKILL it part way")
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while count_lines(out) < ITEMS * 0.4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    print(f"  killed with {count_lines(out)} items in the output")

    print("2. run the same job again: it resumes")
    subprocess.run(cmd, env=env, check=True)

    print("3. check")
    items = [json.loads(line)["item"] for line in out.read_text().splitlines()]
    executions = [int(n) for n in (work / "executions.log").read_text().split()]
    twice = len(executions) - len(set(executions))
    exactly_once = items == list(range(ITEMS))
    print(f"  output: {len(items)} items, each exactly once and in order: {exactly_once}")
    print(
        f"  steps: {len(executions)} executions for {ITEMS} items; {twice} ran twice "
        "(started or finished after the last write before the kill)"
    )
    print(f"  the run's record: `resumable --store file://{work / '.resumable'} list`")
    return 0 if exactly_once and set(executions) == set(range(ITEMS)) else 1


if __name__ == "__main__":
    sys.exit(main())
