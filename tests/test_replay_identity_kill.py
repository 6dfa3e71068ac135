"""Issue 10 case 2, for real: concurrent durable steps in flight when the process is SIGKILLed.

Every intent survives, and each call keeps its idempotency key on its next attempt:
with distinct arguments, the very key it had; with equal arguments (interchangeable
calls), the same set of keys, never one key for two calls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHILD = r"""
import asyncio, dataclasses, os, sys

from resumable import FileStore, checkpoint, current_step, resumable

store_dir, log_path, mode, hang = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@dataclasses.dataclass(frozen=True)
class Order:
    id: int


@checkpoint(durable=True)
async def pay(order):
    step = current_step()
    label = order.id if isinstance(order, Order) else order
    os.write(log, f"{label} {step.idempotency_key} {step.attempt}\n".encode())
    os.fsync(log)
    if hang:
        await asyncio.sleep(3600)  # in flight until the kill
    return f"paid {label}"


@resumable(store=FileStore(store_dir), key="payments-" + mode)
async def job():
    orders = [Order(i) for i in range(3)] if mode == "distinct" else [5, 5, 5]
    return await asyncio.gather(*(pay(o) for o in orders))


print(asyncio.run(job()), flush=True)
"""


def lines(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        label, key, attempt = line.split()
        out.append((label, key, int(attempt)))
    return out


def run_child(tmp: Path, mode: str, hang: bool) -> subprocess.Popen[str]:
    script = tmp / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp / "store"), str(tmp / f"log-{mode}"), mode, str(int(hang))],
        stdout=subprocess.DEVNULL if hang else subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["distinct", "equal"])
def test_every_intent_survives_a_kill_and_keeps_its_key(tmp_path: Path, mode: str) -> None:
    log = tmp_path / f"log-{mode}"
    child = run_child(tmp_path, mode, hang=True)
    deadline = time.monotonic() + 20
    while len(lines(log)) < 3:
        assert time.monotonic() < deadline, "the three steps never started"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    first = lines(log)
    assert [a for _, _, a in first] == [1, 1, 1]

    done = run_child(tmp_path, mode, hang=False)
    out, _ = done.communicate(timeout=30)
    assert done.returncode == 0
    second = lines(log)[3:]
    assert [a for _, _, a in second] == [2, 2, 2]  # every intent survived
    assert len({k for _, k, _ in second}) == 3  # no two calls share a key
    if mode == "distinct":
        assert sorted((label, key) for label, key, _ in second) == sorted(
            (label, key) for label, key, _ in first
        )  # each call kept its own key
    else:
        assert {k for _, k, _ in second} == {k for _, k, _ in first}
    expected = "['paid 0', 'paid 1', 'paid 2']" if mode == "distinct" else "['paid 5', 'paid 5', 'paid 5']"
    assert out.strip() == expected
