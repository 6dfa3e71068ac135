"""Store failures: retries with backoff, durable steps that cannot be written, the final write.

A store that fails on purpose covers the cases one by one; a real process whose file
size limit (``RLIMIT_FSIZE``) makes the file system refuse writes with ``EFBIG`` covers
a real fault end to end.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from resumable import (
    MemoryStore,
    TransientStoreError,
    _run,
    checkpoint,
    current_step,
    flush,
    resumable,
)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_run, "RETRY_WAIT_MAX", 0.005)


class FailingStore(MemoryStore):
    """A memory store whose ``set`` raises for the next ``n`` calls (or until healed)."""

    def __init__(self) -> None:
        super().__init__()
        self.remaining = 0
        self.error: type[Exception] = OSError
        self.failures = 0
        self.sets = 0
        self.failed = threading.Event()
        self._count_lock = threading.Lock()

    def fail_next(self, n: int, error: type[Exception] = OSError) -> None:
        with self._count_lock:
            self.remaining = n
            self.error = error

    def heal(self) -> None:
        self.fail_next(0)

    def set(self, key: str, value: bytes) -> None:
        with self._count_lock:
            self.sets += 1
            failing = self.remaining > 0
            if failing:
                self.remaining -= 1
                self.failures += 1
        if failing:
            self.failed.set()
            if self.error is OSError:
                raise OSError(errno.ENOSPC, "No space left on device (on purpose)")
            raise self.error("store answered 503 (on purpose)")
        super().set(key, value)


def _head(store: MemoryStore, key: str) -> dict[str, Any]:
    raw = store.get(key)
    assert raw is not None
    return dict(json.loads(raw))


def _events(logs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [e for e in logs if text in e["event"]]


# -- the flusher retries -------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError, TransientStoreError])
def test_flush_retries_transient_failures_and_the_job_goes_on(error: type[Exception]) -> None:
    store = FailingStore()
    calls: Counter[int] = Counter()

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        return i * i

    @resumable(store=store, key="retry", flush_interval=3600)
    def job(n: int) -> list[int]:
        out = []
        for i in range(n):
            out.append(step(i))
            if i == 4:
                store.fail_next(2, error)
                flush()  # two failures, then the third try is written
                assert _head(store, "retry")["units"]["done"] == 5
        return out

    with capture_logs() as logs:
        assert job(10) == [i * i for i in range(10)]
    assert store.failures == 2
    retries = _events(logs, "retrying")
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(e["key"] == "retry" and e["log_level"] == "warning" for e in retries)
    assert error.__name__ in retries[0]["error"]
    assert _head(store, "retry")["status"] == "finished"
    assert calls == Counter(range(10))


def test_interval_flushes_that_keep_failing_do_not_stop_the_job() -> None:
    store = FailingStore()
    calls: Counter[int] = Counter()

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        return i

    @resumable(store=store, key="outage", flush_interval=0.001)
    def job(n: int) -> list[int]:
        out = []
        for i in range(n):
            out.append(step(i))
            if i == 10:
                store.fail_next(10**6)  # a long outage: every interval write fails
                assert store.failed.wait(30)
            if i == 20:
                # Several whole retry rounds failed meanwhile; the job kept going.
                deadline_failures = _run.RETRY_ATTEMPTS * 2
                while store.failures < deadline_failures:
                    store.failed.clear()
                    assert store.failed.wait(30)
                store.heal()
        return out

    with capture_logs() as logs:
        assert job(30) == list(range(30))
    assert calls == Counter(range(30))
    failed = _events(logs, "flush failed")
    assert failed
    assert all(e["log_level"] == "error" and "No space left" in e["error"] for e in failed)
    assert len(_events(logs, "retrying")) >= _run.RETRY_ATTEMPTS
    assert _head(store, "outage")["status"] == "finished"


def test_a_non_transient_store_error_is_not_retried() -> None:
    store = FailingStore()

    @resumable(store=store, key="fatal", flush_interval=3600)
    def job() -> str:
        store.fail_next(1, ValueError)
        with pytest.raises(ValueError, match="503"):
            flush()
        return "went on"

    with capture_logs() as logs:
        assert job() == "went on"
    assert store.failures == 1
    assert _events(logs, "retrying") == []
    assert len(_events(logs, "flush failed")) == 1


# -- durable steps -------------------------------------------------------------------------


def test_durable_step_whose_intent_cannot_be_written_raises_and_never_runs() -> None:
    store = FailingStore()
    ran: list[int] = []

    @checkpoint(durable=True)
    def charge(amount: int) -> str:
        ran.append(amount)
        return f"charged {amount}"

    outage = [True]

    @resumable(store=store, key="durable-fail")
    def job() -> list[str]:
        first = charge(1)
        if outage[0]:
            store.fail_next(10**6)
        return [first, charge(2)]

    with pytest.raises(OSError, match="No space left") as info:
        job()
    assert info.value.errno == errno.ENOSPC
    assert ran == [1]  # the second charge never ran unrecorded
    assert store.failures >= _run.RETRY_ATTEMPTS
    store.heal()
    outage[0] = False
    assert job() == ["charged 1", "charged 2"]
    assert ran == [1, 2]


async def test_async_durable_step_whose_intent_cannot_be_written() -> None:
    store = FailingStore()
    ran: list[int] = []

    @checkpoint(durable=True)
    async def charge(amount: int) -> str:
        ran.append(amount)
        return f"charged {amount}"

    outage = [True]

    @resumable(store=store, key="adurable-fail")
    async def job() -> list[str]:
        if outage[0]:
            store.fail_next(10**6)
        return [await charge(1)]

    with pytest.raises(OSError, match="No space left"):
        await job()
    assert ran == []
    store.heal()
    outage[0] = False
    assert await job() == ["charged 1"]


def test_durable_step_survives_a_short_failure_of_its_intent_write() -> None:
    store = FailingStore()
    attempts: list[int] = []

    @checkpoint(durable=True)
    def charge(amount: int) -> str:
        step = current_step()
        assert step is not None
        attempts.append(step.attempt)
        return f"charged {amount}"

    @resumable(store=store, key="durable-blip")
    def job() -> str:
        store.fail_next(2)
        return charge(3)

    assert job() == "charged 3"
    assert attempts == [1]
    assert store.failures == 2


# -- the final write -----------------------------------------------------------------------


def test_the_final_write_raises_when_it_cannot_be_made() -> None:
    store = FailingStore()
    calls: Counter[int] = Counter()

    @checkpoint
    def step(i: int) -> int:
        calls[i] += 1
        return i

    outage = [True]

    @resumable(store=store, key="final", flush_interval=3600)
    def job() -> list[int]:
        out = [step(i) for i in range(5)]
        if outage[0]:
            store.fail_next(10**6)
        return out

    with capture_logs() as logs, pytest.raises(OSError, match="No space left"):
        job()
    assert len(_events(logs, "retrying")) == _run.RETRY_ATTEMPTS - 1
    assert store.get("final") is None  # nothing was written
    store.heal()
    outage[0] = False
    assert job() == [0, 1, 2, 3, 4]  # it was not finished: it runs
    assert _head(store, "final")["status"] == "finished"


def test_the_final_write_of_a_failed_run_is_noted_on_the_job_error() -> None:
    store = FailingStore()

    class JobError(Exception):
        pass

    @resumable(store=store, key="final-error", flush_interval=3600)
    def job() -> None:
        store.fail_next(10**6)
        raise JobError("the job's own error")

    with capture_logs() as logs, pytest.raises(JobError) as info:
        job()
    assert any("progress could not be written" in note for note in info.value.__notes__)
    assert _events(logs, "could not write progress")


async def test_the_final_write_of_an_async_job_raises() -> None:
    store = FailingStore()

    @checkpoint
    async def step(i: int) -> int:
        return i

    outage = [True]

    @resumable(store=store, key="afinal", flush_interval=3600)
    async def job() -> list[int]:
        out = [await step(i) for i in range(3)]
        if outage[0]:
            store.fail_next(10**6)
        return out

    with pytest.raises(OSError, match="No space left"):
        await job()
    store.heal()
    outage[0] = False
    assert await job() == [0, 1, 2]


# -- a real fault: the file system refuses writes (EFBIG) -------------------------------------

_FSIZE_JOB = textwrap.dedent(
    """
    import json, os, resource, signal, sys, threading
    from collections import Counter
    from structlog.testing import capture_logs
    from resumable import _run
    from resumable import FileStore, checkpoint, flush, resumable

    path, mode, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _run.RETRY_WAIT_MAX = 0.005

    class WatchedStore(FileStore):
        # Only observes: the failures come from the file system.
        failed = threading.Event()
        failures = 0

        def set(self, key, value):
            try:
                super().set(key, value)
            except OSError:
                type(self).failures += 1
                self.failed.set()
                raise

    store = WatchedStore(path)
    calls = Counter()

    @checkpoint
    def step(i):
        calls[i] += 1
        return f"{i:04d}" + "x" * 96

    @resumable(store=store, key="fsize", flush_interval=0.001)
    def job(n):
        out = []
        for i in range(n):
            out.append(step(i))
            if i in (10, 20):
                flush()  # written: the record is still small
            if i == 150 and mode == "limited":
                assert store.failed.wait(30), "no write failed"
        return out

    if mode == "limited":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    report = {}
    with capture_logs() as logs:
        try:
            result = job(300)
        except OSError as exc:
            report["raised"] = exc.errno
        else:
            report["result_ok"] = result == [f"{i:04d}" + "x" * 96 for i in range(300)]
    report["steps_run"] = sum(calls.values())
    report["max_runs_of_a_step"] = max(calls.values())
    report["failures"] = WatchedStore.failures
    report["events"] = [
        {"event": e["event"], "level": e["log_level"], "error": e.get("error", "")} for e in logs
    ]
    print(json.dumps(report))
    """
)


def _run_fsize(tmp_path: Path, mode: str, limit: int) -> dict[str, Any]:
    script = tmp_path / "fsize_job.py"
    script.write_text(_FSIZE_JOB)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store"), mode, str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_full_file_system_keeps_the_job_running_and_fails_the_final_write(tmp_path: Path) -> None:
    limit = 8192  # bytes a file may hold: the chunk of results outgrows it after ~70 steps
    report = _run_fsize(tmp_path, "limited", limit)
    print({k: v for k, v in report.items() if k != "events"}, len(report["events"]))
    # The job ran every step once, though writes failed under it ...
    assert report["steps_run"] == 300
    assert report["max_runs_of_a_step"] == 1
    assert report["failures"] >= _run.RETRY_ATTEMPTS
    events = report["events"]
    retried = [e for e in events if "retrying" in e["event"]]
    flush_failed = [e for e in events if "flush failed" in e["event"]]
    assert retried
    assert flush_failed
    assert all("File too large" in e["error"] or "EFBIG" in e["error"] for e in retried + flush_failed)
    # ... and then its final write raised the file system's error.
    assert report.get("raised") == errno.EFBIG
    # Failed writes left no temporary files, and what was written is a whole record.
    store_dir = tmp_path / "store"
    assert sorted(p.name for p in store_dir.iterdir() if p.name.startswith(".tmp")) == []
    head = json.loads((store_dir / "fsize").read_bytes())
    assert head["status"] == "running"
    recorded = head["units"]["done"]
    assert 0 < recorded < 300
    assert all(p.stat().st_size <= limit for p in store_dir.iterdir() if p.is_file())
    # Without the limit the run resumes from what was written and finishes.
    resumed = _run_fsize(tmp_path, "unlimited", 0)
    assert resumed.get("result_ok") is True
    assert resumed["steps_run"] == 300 - recorded
    assert resumed["failures"] == 0


def test_async_flush_waiters_get_the_store_error() -> None:
    store = FailingStore()

    @resumable(store=store, key="async-flush", flush_interval=3600)
    async def job() -> str:
        run = _run.current_run()
        assert run is not None
        store.fail_next(10**6)
        with pytest.raises(OSError, match="No space left"):
            await run.aflush()
        store.heal()
        await run.aflush()
        return "ok"

    assert asyncio.run(job()) == "ok"


def test_progress_unwritten_after_a_failed_round_is_written_at_a_later_interval() -> None:
    store = FailingStore()

    @checkpoint
    def step(i: int) -> int:
        return i

    written = threading.Event()

    @resumable(store=store, key="later", flush_interval=0.001)
    def job() -> int:
        store.fail_next(_run.RETRY_ATTEMPTS)  # exactly one whole round of tries fails
        step(0)
        # No more progress from here: the record must still get written once the store
        # answers again, by a later interval write.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not written.is_set():
            if store.get("later") is not None:
                written.set()
            else:
                store.failed.clear()
                store.failed.wait(0.05)
        return 1

    with capture_logs() as logs:
        assert job() == 1
    assert _events(logs, "flush failed")
    assert written.is_set(), "the progress of step 0 was never written while the job ran"
