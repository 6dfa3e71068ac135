"""The guarantee at its seams, with real processes (issue 10 cases 8 and 11).

- A process forked inside a run (a ``fork`` multiprocessing pool) never writes the
  parent's record nor releases its lock: a durable step in a worker completes (it
  used to hang), ``Pool.terminate()`` (SIGTERM to busy workers) never rolls the record
  back, and a child that calls ``sys.exit()`` leaves the parent's lock held.
- Ctrl-C (a real SIGINT) at random moments of a job that declares a resume point
  every few steps never leaves a record that cannot be read.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FORK_CHILD = r"""
import json, multiprocessing, os, sys, time

from resumable import FileStore, checkpoint, flush, resumable

store_dir, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@checkpoint(durable=True)
def charge(i):
    os.write(log, f"{os.getpid()} charge {i}\n".encode())
    os.fsync(log)
    return i


def in_worker(i):
    if mode == "durable":
        return charge(100 + i)  # a step called in a forked worker: runs, unrecorded
    if mode == "terminate":
        charge(100 + i)
        time.sleep(60)  # busy when the pool is terminated
    return i


@resumable(store=FileStore(store_dir), key="forky")
def job():
    done = [charge(i) for i in range(5)]
    flush()
    ctx = multiprocessing.get_context("fork")
    if mode == "terminate":
        pool = ctx.Pool(2)
        pool.map_async(in_worker, range(2))
        done += [charge(i) for i in range(5, 10)]  # progress after the fork...
        flush()
        time.sleep(0.3)
        pool.terminate()  # ...then SIGTERM to the busy workers
        pool.join()
        with open(os.path.join(store_dir, "forky")) as f:
            print("after terminate", json.load(f)["units"]["done"], flush=True)
        os._exit(3)  # the parent dies here: the next process resumes from the record
    elif mode == "exit":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # unwinds through job() in the child
        os.waitpid(pid, 0)
        print("child exited", flush=True)
        sys.stdin.readline()  # the test checks the lock while this run is alive
        done += [charge(i) for i in range(5, 10)]
    elif mode == "resume":
        done += [charge(i) for i in range(5, 10)]
    else:
        with ctx.Pool(2) as pool:
            done += pool.map(in_worker, range(3))
    return done


print(json.dumps(job()), flush=True)
"""


def _child(tmp: Path, mode: str, **kw: object) -> subprocess.Popen[str]:
    script = tmp / "fork_child.py"
    script.write_text(FORK_CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp / "store"), str(tmp / "log"), mode],
        stdout=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _charges(tmp: Path) -> list[int]:
    log = tmp / "log"
    return [int(line.split()[2]) for line in log.read_text().splitlines()] if log.exists() else []


def test_case8_a_durable_step_in_a_forked_worker_completes(tmp_path: Path) -> None:
    child = _child(tmp_path, "durable")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert json.loads(out) == [0, 1, 2, 3, 4, 100, 101, 102]
    head = json.loads((tmp_path / "store" / "forky").read_text())
    assert head["status"] == "finished"
    assert head["units"]["done"] == 5  # the workers' calls are not the parent's steps


def test_case8_terminating_busy_forked_workers_never_rolls_the_record_back(tmp_path: Path) -> None:
    child = _child(tmp_path, "terminate")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 3
    assert out.strip() == "after terminate 10"  # the workers wrote no old copy over it
    again = _child(tmp_path, "resume")
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0
    assert json.loads(out) == list(range(10))
    own = [c for c in _charges(tmp_path) if c < 100]
    assert sorted(own) == list(range(10))  # each of the run's durable steps ran once


def test_case8_a_forked_child_that_exits_leaves_the_parents_lock_held(tmp_path: Path) -> None:
    from resumable import FileStore, RunLocked

    child = _child(tmp_path, "exit", stdin=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdin is not None
    assert child.stdout.readline().strip() == "child exited"
    with pytest.raises(RunLocked):
        FileStore(tmp_path / "store").lock("forky")
    head = json.loads((tmp_path / "store" / "forky").read_text())
    assert head["status"] == "running"  # the child's exit wrote nothing over it
    child.stdin.write("\n")
    child.stdin.flush()
    out, _ = child.communicate(timeout=60)
    assert json.loads(out) == list(range(10))
    FileStore(tmp_path / "store").lock("forky").release()


SIGINT_CHILD = r"""
import json, os, sys

from resumable import FileStore, checkpoint, restart_with, resumable, state

store_dir, ready = sys.argv[1], sys.argv[2]


@checkpoint
def page(cursor):
    return [cursor * 10 + j for j in range(3)]


@resumable(store=FileStore(store_dir), key="pages", flush_interval=0.001)
def job(cursor=0):
    if not os.path.exists(ready):
        open(ready, "w").close()  # the run (and its signal handlers) started
    while cursor < 20000:
        items = page(cursor)
        state()["sum"] = state().get("sum", 0) + sum(items)
        cursor += 1
        restart_with(cursor=cursor)
    return state()["sum"]


print(json.dumps(job()), flush=True)
"""


def test_case11_ctrl_c_at_any_moment_never_corrupts_the_record(tmp_path: Path) -> None:
    script = tmp_path / "sigint_child.py"
    script.write_text(SIGINT_CHILD)
    ready = tmp_path / "ready"
    rng = random.Random(11)
    expected = sum(c * 30 + 3 for c in range(20000))
    interrupted = 0
    for _ in range(40):
        ready.unlink(missing_ok=True)
        child = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "store"), str(ready)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while not ready.exists() and child.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.01, 0.08))
        if child.poll() is None:
            os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert "CheckpointCorrupted" not in err, err
        if out.strip():  # it finished (a Ctrl-C after the result is printed is harmless)
            assert json.loads(out) == expected
            break
        assert "KeyboardInterrupt" in err, (child.returncode, out, err)
        interrupted += 1
    else:
        final = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "store"), str(ready)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert json.loads(final.stdout) == expected
    assert interrupted >= 1
