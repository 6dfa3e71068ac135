"""The store contract, run against every store, and what only `FileStore` promises.

Adding a store to the contract suite takes one entry in ``STORE_FACTORIES``: a function
of ``tmp_path`` that returns a fresh, empty store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resumable import FileStore, MemoryStore, RunLocked, Store, open_store
from resumable.stores import check_key
from resumable.stores._base import MAX_KEY_LENGTH

STORE_FACTORIES: dict[str, Callable[[Path], Store]] = {
    "memory": lambda tmp_path: MemoryStore(),
    "file": lambda tmp_path: FileStore(tmp_path / "store"),
}

#: Keys no store may accept: not a legal (or visible) file name, or not Apify's alphabet.
BAD_KEYS = [
    "a/b",
    "/abs",
    "..",
    ".",
    ".hidden",
    "",
    "k" * (MAX_KEY_LENGTH + 1),
    "caf\u00e9",
    "\u65e5\u672c",
    "with space",
    "a\x00b",
    "a\\b",
]

#: Keys every store must accept (Apify's alphabet, 1 to MAX_KEY_LENGTH characters).
GOOD_KEYS = ["a", "A-z_0.9", "run(r)0.12", "it's!", "x" * 200]


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return STORE_FACTORIES[request.param](tmp_path)


# -- the contract --------------------------------------------------------------------


def test_get_of_a_missing_key_is_none(store: Store) -> None:
    assert store.get("missing") is None


def test_set_then_get_returns_the_bytes(store: Store) -> None:
    store.set("k", b"\x00\x01value\xff")
    assert store.get("k") == b"\x00\x01value\xff"
    store.set("empty", b"")
    assert store.get("empty") == b""


def test_set_replaces_the_old_value(store: Store) -> None:
    store.set("k", b"old")
    store.set("k", b"new")
    assert store.get("k") == b"new"
    assert store.keys() == ["k"]


def test_delete_removes_and_missing_delete_is_no_error(store: Store) -> None:
    store.set("k", b"v")
    store.set("other", b"w")
    store.delete("k")
    assert store.get("k") is None
    assert store.get("other") == b"w"
    store.delete("k")
    store.delete("never-there")
    assert store.keys() == ["other"]


def test_keys_by_prefix_sorted(store: Store) -> None:
    for key in ["run-b", "run-a", "run-a(r)0.0", "other", "ru"]:
        store.set(key, key.encode())
    assert store.keys() == ["other", "ru", "run-a", "run-a(r)0.0", "run-b"]
    assert store.keys("run-") == ["run-a", "run-a(r)0.0", "run-b"]
    assert store.keys("run-a(r)") == ["run-a(r)0.0"]
    assert store.keys("zzz") == []


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_legal_keys_round_trip(store: Store, key: str) -> None:
    store.set(key, key.encode())
    assert store.get(key) == key.encode()
    assert store.keys(key) == [key]
    store.lock(key).release()


def test_longest_legal_key_round_trips(store: Store) -> None:
    key = "k" * MAX_KEY_LENGTH
    assert check_key(key) == key
    assert MAX_KEY_LENGTH <= 255  # a file name's limit on common file systems
    store.set(key, b"v")
    assert store.get(key) == b"v"
    assert store.keys("k") == [key]
    store.lock(key).release()


def test_lock_is_exclusive_until_released(store: Store) -> None:
    held = store.lock("run")
    with pytest.raises(RunLocked) as info:
        store.lock("run")
    assert info.value.key == "run"
    assert info.value.store == store.describe()
    assert store.is_locked("run")
    other = store.lock("another-run")  # locks are per key
    held.release()
    assert not store.is_locked("run")
    again = store.lock("run")
    with pytest.raises(RunLocked):
        store.lock("run")
    again.release()
    again.release()  # twice is harmless
    store.lock("run").release()
    other.release()


def test_a_lock_alone_adds_no_key(store: Store) -> None:
    store.lock("run").release()
    assert store.keys() == []
    assert store.get("run") is None


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="not a legal store key"):
        check_key(key)
    with pytest.raises(ValueError, match="not a legal store key"):
        store.set(key, b"v")
    with pytest.raises(ValueError, match="not a legal store key"):
        store.lock(key)
    assert store.keys() == []


@pytest.mark.parametrize("value", ["text", None, 42, bytearray(b"x"), memoryview(b"x")], ids=repr)
def test_values_must_be_bytes(store: Store, value: object) -> None:
    with pytest.raises(TypeError, match="bytes"):
        store.set("k", value)  # type: ignore[arg-type]
    assert store.get("k") is None


async def test_async_variants(store: Store) -> None:
    assert await store.aget("k") is None
    await store.aset("k", b"v1")
    await store.aset("k2", b"v2")
    await store.aset("other", b"v3")
    assert await store.aget("k") == b"v1"
    assert store.get("k2") == b"v2"  # the sync side sees async writes
    assert await store.akeys("k") == ["k", "k2"]
    assert await store.akeys() == ["k", "k2", "other"]
    await store.adelete("k")
    await store.adelete("k")
    assert await store.aget("k") is None
    assert await store.akeys() == ["k2", "other"]
    with pytest.raises(ValueError, match="not a legal store key"):
        await store.aset("../x", b"v")
    with pytest.raises(TypeError):
        await store.aset("k", "text")  # type: ignore[arg-type]


async def test_concurrent_async_writes_all_land(store: Store) -> None:
    await asyncio.gather(*(store.aset(f"k{i}", str(i).encode()) for i in range(20)))
    assert store.keys() == sorted(f"k{i}" for i in range(20))
    assert [store.get(f"k{i}") for i in range(20)] == [str(i).encode() for i in range(20)]


def test_describe_names_the_store(store: Store) -> None:
    assert type(store).__name__ in store.describe()
    assert repr(store) == store.describe()


# -- FileStore specifics -------------------------------------------------------------


def _all_names(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_file_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    for i in range(20):
        store.set("k", f"value {i}".encode() * 100)
        store.set(f"k{i % 3}", b"x")
    store.delete("k0")
    assert _all_names(tmp_path / "s") == {".locks", "k", "k1", "k2"}
    assert (tmp_path / "s" / "k").read_bytes() == b"value 19" * 100


def test_file_store_failed_write_keeps_old_value_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "s")
    store.set("k", b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error (on purpose)")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="on purpose"):
        store.set("k", b"new")
    monkeypatch.undo()
    assert store.get("k") == b"old"
    assert _all_names(tmp_path / "s") == {".locks", "k"}


def test_file_store_reader_never_sees_a_partial_value(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    values = [bytes([65 + i]) * (1 << 20) for i in range(3)]  # 1 MiB each
    store.set("big", values[0])
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        try:
            for i in range(30):
                store.set("big", values[i % 3])
                writes += 1
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    bad = []
    while not stop.is_set() or reads < 50:
        got = store.get("big")
        reads += 1
        if got not in values:
            bad.append(None if got is None else (len(got), got[:1], got[-1:]))
        if stop.is_set() and reads >= 50:
            break
    thread.join()
    print(f"FileStore atomicity: {writes} writes of 1 MiB, {reads} reads, {len(bad)} torn")
    assert writes == 30
    assert bad == []
    assert _all_names(tmp_path / "s") == {".locks", "big"}


def test_file_store_refuses_paths_outside_its_directory(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"do not read")
    store = FileStore(tmp_path / "s")
    store.set("k", b"v")
    for key in ("../secret", "..", "/etc/passwd"):
        with pytest.raises(ValueError, match="not a legal store key"):
            store.get(key)
        with pytest.raises(ValueError, match="not a legal store key"):
            store.delete(key)
    assert (tmp_path / "secret").read_bytes() == b"do not read"


def test_file_store_directory_is_created_lazily(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er"
    store = FileStore(path)
    assert not (tmp_path / "deep").exists()
    assert store.get("k") is None
    assert store.keys() == []
    store.delete("k")
    assert not (tmp_path / "deep").exists()
    store.set("k", b"v")
    assert (path / "k").read_bytes() == b"v"


def test_file_store_values_survive_a_new_store_object(tmp_path: Path) -> None:
    FileStore(tmp_path).set("k", b"v")
    assert FileStore(str(tmp_path)).get("k") == b"v"


def test_file_store_default_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESUMABLE_DIR", str(tmp_path / "env-dir"))
    store = FileStore()
    assert store.path == tmp_path / "env-dir"
    store.set("k", b"v")
    assert (tmp_path / "env-dir" / "k").read_bytes() == b"v"


def test_file_store_default_dir_is_dot_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESUMABLE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    store = FileStore()
    store.set("k", b"v")
    assert (tmp_path / ".resumable" / "k").read_bytes() == b"v"
    monkeypatch.setenv("RESUMABLE_DIR", "")  # empty means unset
    assert FileStore().path == Path(".resumable")


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from resumable import FileStore
    held = FileStore(sys.argv[1]).lock(sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()  # holds the lock until killed
    """
)

_TAKER = textwrap.dedent(
    """
    import sys, time
    from resumable import FileStore, RunLocked
    start = time.monotonic()
    try:
        FileStore(sys.argv[1]).lock(sys.argv[2])
    except RunLocked as exc:
        print("locked", exc.key, round(time.monotonic() - start, 3))
    else:
        print("acquired")
    """
)


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def _take(path: Path, key: str) -> list[str]:
    taker = subprocess.run(
        _python(_TAKER, str(path), key), capture_output=True, text=True, timeout=30, check=True
    )
    return taker.stdout.split()


def test_file_lock_second_process_gets_run_locked_until_first_is_killed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with subprocess.Popen(
        _python(_HOLDER, str(tmp_path), "run-key"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            start = time.monotonic()
            with pytest.raises(RunLocked) as info:
                store.lock("run-key")
            assert time.monotonic() - start < 1.0  # at once, no waiting
            assert info.value.key == "run-key"
            assert str(tmp_path) in str(info.value)
            store.lock("another-key").release()  # only that key is held
            word, key, seconds = _take(tmp_path, "run-key")  # a third process sees the same
            assert (word, key) == ("locked", "run-key")
            assert float(seconds) < 1.0
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    held = store.lock("run-key")  # the lock died with its process
    assert _take(tmp_path, "run-key")[0] == "locked"
    held.release()
    assert _take(tmp_path, "run-key") == ["acquired"]


def test_file_lock_in_one_process_is_per_call(tmp_path: Path) -> None:
    # Two FileStore objects on one directory in one process still exclude each other.
    first = FileStore(tmp_path).lock("k")
    with pytest.raises(RunLocked):
        FileStore(tmp_path).lock("k")
    first.release()
    FileStore(tmp_path).lock("k").release()


# -- store URLs ----------------------------------------------------------------------


def test_open_store_file_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("file://rel/dir")
    assert isinstance(store, FileStore)
    assert store.path == Path("rel/dir")
    store.set("k", b"v")
    assert (tmp_path / "rel" / "dir" / "k").read_bytes() == b"v"
    dotted = open_store("file://.resumable")
    assert isinstance(dotted, FileStore)
    assert dotted.path == Path(".resumable")


def test_open_store_file_absolute(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/abs")
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "abs"
    assert store.path.is_absolute()
    store.set("k", b"v")
    assert (tmp_path / "abs" / "k").read_bytes() == b"v"


def test_open_store_file_quoted(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/with%20space")
    assert isinstance(store, FileStore)
    assert store.path == tmp_path / "with space"


def test_open_store_memory_is_fresh_each_time() -> None:
    first = open_store("memory://")
    second = open_store("memory://")
    assert isinstance(first, MemoryStore)
    assert isinstance(second, MemoryStore)
    first.set("k", b"v")
    assert second.get("k") is None


@pytest.mark.parametrize("url", ["s3://bucket/x", "http://example.com", "ftp://x", "file://"])
def test_open_store_bad_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"URL"):
        open_store(url)
