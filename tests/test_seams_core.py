"""The guarantee at its seams, in one process (issue 10 cases 4, 7, 9, 10, 12-15).

Each test names its case. Real processes (fork, SIGINT, SIGTERM) are in
``test_seams_kill.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from resumable import (
    CheckpointCorrupted,
    FileStore,
    MemoryStore,
    NotSerializable,
    RunLocked,
    _record,
    checkpoint,
    current_step,
    flush,
    resumable,
)
from resumable.sinks import JsonLinesSink, SinkMismatch, drain


class Crash(BaseException):
    pass


# -- case 4: jobs that share a name never share a run -------------------------------------


class Account:
    def __init__(self, name: str) -> None:
        self.name = name

    @resumable(store=MemoryStore())
    def export(self) -> str:
        return f"exported {self.name}"


class Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    @resumable(store=MemoryStore())
    def run(self) -> str:
        return "ran"

    @resumable(store=MemoryStore(), ignore=("self",))
    def shared(self) -> str:
        return "shared"


def test_case4_a_method_job_is_keyed_by_its_instance() -> None:
    assert Account("acme").export() == "exported acme"
    assert Account("globex").export() == "exported globex"
    assert Account("acme").export() == "exported acme"  # the same state: the same run


def test_case4_an_instance_that_cannot_be_identified_is_refused() -> None:
    with pytest.raises(TypeError, match="key="):
        Holder().run()
    assert Holder().shared() == "shared"  # ignore=("self",) says every instance is one job


def test_case4_lambdas_and_closures_never_share_a_run() -> None:
    store = MemoryStore()
    square = resumable(store=store)(lambda x: x * x)
    double = resumable(store=store)(lambda x: x * 2)
    assert square(5) == 25
    assert double(5) == 10
    assert square(5) == 25

    def make(factor: int) -> Any:
        @resumable(store=store)
        def scale(x: int) -> int:
            return x * factor

        return scale

    assert make(2)(5) == 10
    assert make(3)(5) == 15
    assert make(2)(5) == 10


def test_case4_a_closure_over_something_unidentifiable_needs_key() -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match="key="):

        @resumable(store=MemoryStore())
        def job() -> bool:
            return lock.locked()

    @resumable(store=MemoryStore(), key="locked")
    def keyed() -> bool:
        return lock.locked()

    assert keyed() is False


# -- case 7: a sink that already holds another run's items --------------------------------


def test_case7_a_new_run_refuses_a_sink_with_items_it_did_not_write(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    store = FileStore(tmp_path / "store")

    @resumable(store=store)
    def rows(account: str) -> Any:
        for i in range(5):
            yield {"account": account, "i": i}

    with JsonLinesSink(path) as sink:
        assert drain(rows("acme"), sink) == 5
    before = path.read_bytes()
    # Another spelling of the same work is another run key: it must not append again.
    with JsonLinesSink(path) as sink, pytest.raises(SinkMismatch, match="append=True"):
        drain(rows("ACME"), sink)
    assert path.read_bytes() == before
    with JsonLinesSink(path) as sink:
        assert drain(rows("globex"), sink, append=True) == 5
    assert len(path.read_text().splitlines()) == 10


# -- case 9: a job inside a durable step ---------------------------------------------------


def test_case9_a_job_inside_a_durable_step_records_its_own_steps() -> None:
    store = MemoryStore()
    ran: Counter[int] = Counter()
    keys: list[str] = []
    crash = [True]

    @checkpoint
    def inner_step(i: int) -> int:
        ran[i] += 1
        step = current_step()
        assert step is not None
        keys.append(step.idempotency_key)
        return i

    @resumable(store=store, key="inner")
    def inner() -> int:
        total = sum(inner_step(i) for i in range(3))
        flush()
        if crash[0]:
            raise Crash
        return total

    @checkpoint(durable=True)
    def outer_step() -> int:
        return inner()

    @resumable(store=store, key="outer")
    def outer() -> int:
        return outer_step()

    with pytest.raises(Crash):
        outer()
    assert all(k.startswith("inner:") for k in keys)
    crash[0] = False
    assert outer() == 3
    assert ran == Counter({0: 1, 1: 1, 2: 1})  # the inner run resumed: nothing ran twice


# -- case 10: cancelled right after the body returns --------------------------------------


def test_case10_cancelled_after_the_body_returned_still_ends_the_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rng = random.Random(7)

    def make(i: int) -> Any:
        @checkpoint
        async def step() -> int:
            return i

        @resumable(store=store, key=f"cancel-{i}")
        async def job() -> int:
            return await step()

        return job

    async def main(i: int) -> str:
        task = asyncio.create_task(make(i)())
        for _ in range(rng.randrange(0, 6)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    outcomes = Counter(asyncio.run(main(i)) for i in range(60))
    assert set(outcomes) <= {"cancelled", "finished"}
    assert not [t for t in threading.enumerate() if t.name.startswith("resumable-flusher")]
    for i in range(60):
        store.lock(f"cancel-{i}").release()  # never left locked
        assert asyncio.run(make(i)()) == i  # finished, or resumed to the end


# -- case 12: foreign data refused with RESUMABLE_SECRET -----------------------------------


def _job_of(store: FileStore, key: str, fail: list[bool]) -> Any:
    @checkpoint
    def value(i: int) -> set[int]:
        return {i, i + 1}

    @resumable(store=store, key=key)
    def job() -> list[Any]:
        out = [value(i) for i in range(3)]
        if fail[0]:
            raise Crash
        return out

    return job


def test_case12_another_runs_chunk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for secret in ("s3cret", None):
        if secret:
            monkeypatch.setenv(_record.SECRET_ENV, secret)
        else:
            monkeypatch.delenv(_record.SECRET_ENV, raising=False)
        store = FileStore(tmp_path / f"s-{secret}")
        fail = [True]
        for key in ("a", "b"):
            with pytest.raises(Crash):
                _job_of(store, key, fail)()
        (store.path / "a(r)0.0").write_bytes((store.path / "b(r)0.0").read_bytes())
        fail[0] = False
        with pytest.raises(CheckpointCorrupted, match="belongs to run 'b'"):
            _job_of(store, "a", fail)()


def test_case12_a_signed_value_spliced_from_another_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_record.SECRET_ENV, "s3cret")
    store = FileStore(tmp_path)
    fail = [True]
    for key in ("a", "b"):
        with pytest.raises(Crash):
            _job_of(store, key, fail)()
    theirs = json.loads((store.path / "b(r)0.0").read_bytes())["entries"]["1"][2]
    ours = json.loads((store.path / "a(r)0.0").read_bytes())
    ours.pop("hmac")
    ours["entries"]["1"][2] = theirs
    # Even with the record's own seal made again with the secret, the value is b's.
    (store.path / "a(r)0.0").write_bytes(_record._dump(ours))
    fail[0] = False
    with pytest.raises(CheckpointCorrupted, match="HMAC"):
        _job_of(store, "a", fail)()


@pytest.mark.parametrize("version", [0, -5, True, 1, 3])
def test_case12_only_the_current_format_version_is_read(tmp_path: Path, version: Any) -> None:
    store = FileStore(tmp_path)
    fail = [True]
    with pytest.raises(Crash):
        _job_of(store, "v", fail)()
    head = json.loads(store.get("v") or b"")
    head.pop("checksum")
    head["version"] = version
    store.set("v", _record._dump(head))
    fail[0] = False
    with pytest.raises(CheckpointCorrupted, match="version"):
        _job_of(store, "v", fail)()


# -- case 13: values that JSON refuses at write time ----------------------------------------


def test_case13_huge_ints_and_self_referencing_lists_round_trip() -> None:
    store = MemoryStore()
    big = 7**6000
    crash = [True]

    @checkpoint
    def huge() -> int:
        return big

    @checkpoint
    def loop() -> list[Any]:
        items: list[Any] = [1]
        items.append(items)
        return items

    @resumable(store=store, key="values")
    def job() -> tuple[int, list[Any]]:
        a, b = huge(), loop()
        flush()
        if crash[0]:
            raise Crash
        return a, b

    with pytest.raises(Crash):
        job()
    crash[0] = False
    a, b = job()
    assert a == big
    assert b[0] == 1
    assert b[1] is b


def test_case13_an_open_file_is_not_serializable(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("content")

    files: list[Any] = []

    @checkpoint
    def opened() -> Any:
        files.append((tmp_path / "f.txt").open())
        return files[-1]

    @resumable(store=MemoryStore(), key="file")
    def job() -> None:
        opened()

    with pytest.raises(NotSerializable, match="open file"):
        job()
    files[0].close()


# -- case 14: many threads starting steps at once ------------------------------------------


def test_case14_threads_starting_steps_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        @checkpoint
        def work(i: int) -> int:
            return i * 3

        @resumable(store=MemoryStore(), key="threads-{n}")
        def job(n: int) -> list[int]:
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(contextvars.copy_context().run, work, i) for i in range(40)]
                return [f.result() for f in futures]

        for n in range(40):
            assert job(n) == [i * 3 for i in range(40)]
    finally:
        sys.setswitchinterval(old)


# -- case 15: the store's directory deleted mid-run --------------------------------------------


def test_case15_a_deleted_store_directory_is_made_again(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "runs")
    ran: Counter[int] = Counter()

    @checkpoint
    def step(i: int) -> int:
        ran[i] += 1
        if i == 3:
            flush()
            shutil.rmtree(store.path)
        if i == 4:
            flush()  # the directory is made again, and the run's lock taken again
            with pytest.raises(RunLocked):
                FileStore(tmp_path / "runs").lock("deleted")
        return i

    @resumable(store=store, key="deleted")
    def job() -> int:
        total = sum(step(i) for i in range(6))
        flush()
        return total

    assert job() == 15
    assert job() == 15  # the finished record landed in the made-again directory
    assert set(ran.values()) == {1}
