"""SIGKILL real processes that page through a local HTTP API into a JSON Lines file.

The API, the job and the child command are `examples/pagination.py`'s (and
`examples/pagination_async.py`'s), imported from there, so the examples are tested
too. A child is killed at random moments (some by time, which includes start-up and
the first writes, some once the output has grown past a random mark), many times,
then run to the end. The file must hold every item exactly once and in order, and
the API must have served at most one page more per kill than there are pages: a
restart resumes at its saved cursor, it does not page from the start again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resumable import FileStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import pagination  # noqa: E402 - from examples/, put on the path just above
import pagination_async  # noqa: E402

pytestmark = pytest.mark.slow


def _kill_and_finish(
    command: Callable[[str, Path], list[str]],
    tmp_path: Path,
    *,
    kills: int,
    items: int,
    page_size: int,
    latency: float,
    seed: int,
) -> tuple[pagination.CatalogAPI, int, list[str]]:
    rng = random.Random(seed)
    env = dict(os.environ, RESUMABLE_DIR=str(tmp_path / "store"))
    out = tmp_path / "listings.jsonl"
    log: list[str] = []
    delivered = 0
    with pagination.CatalogAPI(items=items, page_size=page_size, latency=latency) as api:
        for attempt in range(kills):
            stderr = (tmp_path / f"child{attempt}.err").open("wb")
            proc = subprocess.Popen(command(api.url, out), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                if rng.random() < 0.4:
                    # By time: anywhere from start-up to well into the run.
                    delay = rng.uniform(0.02, 0.25)  # short enough that the run rarely ends first
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=delay)
                    how = f"after {delay:.2f}s"
                else:
                    # By progress: once the output grew by a random number of items.
                    before = pagination.count_lines(out)
                    mark = before + rng.randint(1, max(1, (items - before) // 4))  # always short of the end
                    deadline = time.monotonic() + 20
                    while (
                        pagination.count_lines(out) < mark
                        and proc.poll() is None
                        and time.monotonic() < deadline
                    ):
                        time.sleep(0.002)
                    how = f"at {mark} lines"
                if proc.poll() is not None:
                    log.append(f"attempt {attempt}: exited {proc.returncode} before the kill")
                    assert proc.returncode == 0, (tmp_path / f"child{attempt}.err").read_text()
                    break
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                delivered += 1
                log.append(
                    f"attempt {attempt}: killed {how}, {pagination.count_lines(out)} lines, "
                    f"{api.fetches} fetches"
                )
            finally:
                stderr.close()
        final = subprocess.run(command(api.url, out), env=env, capture_output=True, timeout=120, check=False)
        assert final.returncode == 0, final.stderr.decode()
        log.append(f"final run: {api.fetches} fetches")
    return api, delivered, log


def _check(api: pagination.CatalogAPI, kills: int, log: list[str], tmp_path: Path, seed: int) -> None:
    where = f"seed {seed}; " + "; ".join(log)
    out = tmp_path / "listings.jsonl"
    data = out.read_bytes()
    assert data.endswith(b"\n"), where
    ids = [json.loads(line)["id"] for line in data.decode().splitlines()]
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 0, f"{duplicates} duplicated items; {where}"
    assert ids == list(range(api.items)), f"items missing or out of order; {where}"
    assert api.fetches <= api.pages + kills, f"{api.fetches} fetches for {api.pages} pages; {where}"
    store = FileStore(tmp_path / "store")
    heads = [k for k in store.keys("") if "(" not in k]
    assert len(heads) == 1, heads
    head = json.loads(store.get(heads[0]) or b"{}")
    assert head["status"] == "finished"
    assert head["items"]["sink"] == api.items


def test_sigkill_many_times_while_paging_into_a_json_lines_sink(tmp_path: Path) -> None:
    seed = int(os.environ.get("PAGINATION_KILL_SEED", random.randrange(1 << 30)))
    api, kills, log = _kill_and_finish(
        pagination.child_command, tmp_path, kills=10, items=3000, page_size=30, latency=0.004, seed=seed
    )
    assert kills >= 5, f"only {kills} kills landed; seed {seed}; {log}"
    _check(api, kills, log, tmp_path, seed)


def test_sigkill_the_async_example_while_paging(tmp_path: Path) -> None:
    seed = int(os.environ.get("PAGINATION_KILL_SEED", random.randrange(1 << 30)))
    api, kills, log = _kill_and_finish(
        pagination_async.child_command,
        tmp_path,
        kills=4,
        items=1500,
        page_size=25,
        latency=0.004,
        seed=seed,
    )
    assert kills >= 2, f"only {kills} kills landed; seed {seed}; {log}"
    _check(api, kills, log, tmp_path, seed)


def test_the_examples_run_to_the_end(tmp_path: Path) -> None:
    """`python examples/pagination.py` as a user runs it: killed once, resumed, checked."""
    for script in ("pagination.py", "pagination_async.py"):
        done = subprocess.run(
            [sys.executable, str(EXAMPLES / script), "--items", "1200", "--page-size", "40"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=dict(os.environ, TMPDIR=str(tmp_path)),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "each exactly once and in order: True" in done.stdout
