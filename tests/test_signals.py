"""SIGTERM and SIGINT: a real process writes its completed progress, then the signal acts.

The child's flush interval is an hour, so nothing but the signal handler (or the end of
the run) can have written the progress the tests find in the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resumable import FileStore

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from resumable import checkpoint, resumable, FileStore

    store = FileStore(sys.argv[1])
    log = open(sys.argv[2], "a")
    mode = sys.argv[3]
    if mode == "chained":
        def previous(signum, frame):
            log.write("previous handler\\n"); log.flush()
            sys.exit(7)
        signal.signal(signal.SIGTERM, previous)

    @checkpoint
    def work(i):
        log.write(f"{i}\\n"); log.flush()
        time.sleep(0.01)
        return None

    @resumable(store=store, key="signalled", flush_interval=3600)
    def job(n):
        for i in range(n):
            work(i)
        return n

    print(job(150), flush=True)
    if mode == "chained":
        log.write(f"handler after the run: {signal.getsignal(signal.SIGTERM).__name__}\\n")
    """
)


def start(tmp_path: Path, mode: str = "plain") -> tuple[subprocess.Popen[bytes], Path, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "executions.log"
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(log), mode], stdout=subprocess.PIPE)
    return proc, log, store


def wait_for_lines(log: Path, count: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= count:
            return
        time.sleep(0.005)
    raise AssertionError(f"the child did not reach {count} steps")


def executed(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split() if line.isdigit()]


def head(store: Path) -> dict[str, object]:
    data = FileStore(store).get("signalled")
    assert data is not None, "nothing was written"
    return dict(json.loads(data))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_writes_the_completed_steps_then_has_its_usual_effect(tmp_path: Path, signum: int) -> None:
    proc, log, store = start(tmp_path)
    wait_for_lines(log, 60, proc)
    proc.send_signal(signum)
    proc.communicate(timeout=30)
    # The usual effect: SIGTERM kills; SIGINT raises KeyboardInterrupt, which ends Python
    # by the same signal.
    assert proc.returncode == -signum
    ran = executed(log)
    record = head(store)
    units = record["units"]
    assert isinstance(units, dict)
    assert record["status"] == "running"
    # Every step that completed before the signal is in the record (the one in flight
    # when it came may or may not have completed).
    assert len(ran) - 1 <= units["done"] <= len(ran)

    # Resumed, the recorded steps do not run again.
    proc, log, store = start(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.decode().strip() == "150"
    again = executed(log)[len(ran) :]
    # A step the signal interrupted (KeyboardInterrupt inside it) is a hole: it runs again.
    holes = sorted(int(n) for n in record["holes"])  # type: ignore[attr-defined]
    assert holes in ([], [units["done"] - 1])
    assert again == holes + list(range(units["done"], 150))


def test_a_previous_handler_is_chained_and_restored(tmp_path: Path) -> None:
    proc, log, store = start(tmp_path, "chained")
    wait_for_lines(log, 40, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 7  # the user's own handler ran, after the write
    text = log.read_text()
    assert "previous handler" in text
    ran = executed(log)
    units = head(store)["units"]
    assert isinstance(units, dict)
    assert len(ran) - 1 <= units["done"] <= len(ran)


def test_handlers_are_restored_when_the_run_ends(tmp_path: Path) -> None:
    proc, log, _ = start(tmp_path, "chained")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "handler after the run: previous" in log.read_text()


def test_no_handler_is_installed_outside_a_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    import resumable  # noqa: F401 - importing and decorating installs nothing

    assert signal.getsignal(signal.SIGTERM) is before
    assert os.getpid() > 0


def test_an_async_run_installs_handlers_while_it_runs_and_restores_them() -> None:
    import asyncio

    from resumable import MemoryStore, resumable

    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    @resumable(store=MemoryStore())
    async def job() -> int:
        seen.append(signal.getsignal(signal.SIGTERM))
        return 1

    assert asyncio.run(job()) == 1
    assert len(seen) == 1
    assert seen[0] is not before  # resumable's handler, during the run
    assert signal.getsignal(signal.SIGTERM) is before  # given back on the loop's thread
