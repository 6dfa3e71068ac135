"""SIGKILL a real process running a FileStore job at random moments, then finish it.

The child runs a job of small steps; each step body first appends its number to an
execution log (fsync per line), so the log survives the kill. After each kill the
test reads the record the dead process left (from the FileStore, as the next process
will) and notes which step completions it holds. At the end:

- the result equals the uninterrupted one;
- every step ran at least once;
- no step ran again after a kill that left its completion in the record;
- with durable steps, each step ran at most twice, and at most one per kill twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from resumable import FileStore
from resumable._job import _load

pytestmark = pytest.mark.slow

STEPS = 40
MAX_KILLS = 8
KEY = "kill-job"

CHILD = r"""
import os, sys, time

from resumable import FileStore, checkpoint, resumable

store_dir, log_path, result_path, durable = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@checkpoint(durable=durable)
def work(i):
    os.write(log, f"{os.getpid()} {i}\n".encode())
    os.fsync(log)
    time.sleep(0.003 + (i % 3) * 0.002)
    return i * i


@resumable(store=FileStore(store_dir), key="kill-job", flush_interval=0.02)
def job(n):
    return sum(work(i) for i in range(n))


total = job(int(sys.argv[5]))
tmp = result_path + ".tmp"
with open(tmp, "w") as f:
    f.write(str(total))
    f.flush()
    os.fsync(f.fileno())
os.rename(tmp, result_path)
"""


def read_log(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def completed_units(store_dir: Path) -> tuple[set[int], bool]:
    """The step completions the record holds, and whether the run finished."""
    head, _ = _load(FileStore(store_dir), KEY, "raise")
    if head is None:
        return set(), False
    holes = {int(n) for n in head.holes}
    done = {n for n in range(head.done) if n not in holes} | set(head.above)
    return done, head.status == "finished"


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait until the log has ``count`` lines; False if the process ended first."""
    while time.monotonic() < deadline:
        if len(read_log(path)) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise AssertionError(f"the child wrote fewer than {count} log lines in time")


@pytest.mark.parametrize("durable", [False, True], ids=["interval", "durable"])
def test_sigkill_at_random_moments_then_finish(tmp_path, durable):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    store_dir, log, result = tmp_path / "store", tmp_path / "executions.log", tmp_path / "result"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    command = [
        sys.executable,
        str(script),
        str(store_dir),
        str(log),
        str(result),
        "1" if durable else "0",
        str(STEPS),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    kills: list[tuple[int, set[int]]] = []  # (log lines at the kill, completions in the record)
    deadline = time.monotonic() + 60
    for _ in range(MAX_KILLS):
        seen = len(read_log(log))
        proc = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        # Kill after a random number of further step executions, plus a random instant
        # (inside a step, a write, a rename...).
        alive = wait_for_lines(log, seen + rng.randint(1, 10), proc, deadline)
        if alive:
            time.sleep(rng.uniform(0, 0.008))
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if not alive or proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
        done, finished = completed_units(store_dir)
        kills.append((len(read_log(log)), done))
        if finished:
            break
    final = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    assert final.returncode == 0, final.stderr.decode()[-2000:]

    why = f"seed {seed}, {len(kills)} kills"
    assert int(result.read_text()) == sum(i * i for i in range(STEPS)), why
    executions = read_log(log)
    counts = Counter(executions)
    assert set(counts) == set(range(STEPS)), f"every step runs at least once ({why})"
    for lines, done in kills:
        again = sorted(done & set(executions[lines:]))
        assert not again, f"steps {again} ran after a kill that left their completion written ({why})"
    assert kills, f"no kill landed before the job finished ({why})"
    if durable:
        # A durable step runs again only when a kill caught it between its intent and its
        # completion: at most once per kill in all (two kills may catch the same step).
        assert sum(n - 1 for n in counts.values()) <= len(kills), why
        assert max(counts.values()) <= 1 + len(kills), why
