"""The record: value encoding, HMAC signing, corrupt records, chunked results."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from resumable import (
    CheckpointCorrupted,
    FileStore,
    MemoryStore,
    NotSerializable,
    Store,
    _record,
    checkpoint,
    flush,
    resumable,
)
from resumable._record import SECRET_ENV, _BadValue, decode_value, encode_value


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Boom(Exception):
    pass


_MARKS: list[str] = []


def _mark(text: str) -> str:
    _MARKS.append(text)
    return text


class RunsCodeWhenLoaded:
    """Unpickling this calls `_mark`: proof that a payload was (or was not) loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark, ("loaded",))


def _roundtrip(value: Any) -> Any:
    encoded = encode_value(value, "test value")
    # What is written goes through JSON text; decode what comes back from it.
    return decode_value(json.loads(json.dumps(encoded)))


# -- encode / decode ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -(10**30),
        1.5,
        "",
        "text \u00e9\u65e5",
        True,
        [],
        {},
        [1, [2, [3, None]]],
        {"a": {"b": [1.25, "x", False]}, "": 0},
    ],
    ids=repr,
)
def test_json_exact_values_stay_json(value: Any) -> None:
    encoded = encode_value(value, "v")
    assert encoded == value
    assert json.loads(json.dumps(encoded)) == value
    assert _roundtrip(value) == value


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1, 2, 3},
        frozenset({"a"}),
        Point(1, 2),
        {1: "int key"},
        {"nested": (1, 2)},
        [1, (2, 3)],
        b"bytes",
        float("inf"),
        Boom("saved"),
        range(3),
    ],
    ids=repr,
)
def test_other_values_are_pickled_and_come_back_equal(value: Any) -> None:
    encoded = encode_value(value, "v")
    assert isinstance(encoded, dict)
    assert set(encoded) == {"$pickle"}
    back = _roundtrip(value)
    assert type(back) is type(value)
    if isinstance(value, Exception):
        assert back.args == value.args
    else:
        assert back == value


def test_nan_comes_back_as_nan() -> None:
    assert math.isnan(_roundtrip(float("nan")))


def test_subclasses_of_json_types_keep_their_type() -> None:
    class Flag(int):
        pass

    back = _roundtrip(Flag(3))
    assert type(back).__name__ == "Flag"
    assert back == 3


@pytest.mark.parametrize(
    "value",
    [{"$pickle": "not a pickle"}, {"$json": 1}, {"$pickle": 1, "other": [1]}, {"$json": {"$pickle": "x"}}],
    ids=repr,
)
def test_dicts_that_look_like_markers_are_escaped(value: Any) -> None:
    encoded = encode_value(value, "v")
    assert encoded == {"$json": value}
    assert _roundtrip(value) == value


def test_a_nested_marker_lookalike_round_trips() -> None:
    value = {"outer": {"$pickle": "x"}, "list": [{"$json": 2}]}
    assert _roundtrip(value) == value


def test_unencodable_value_raises_not_serializable() -> None:
    with pytest.raises(NotSerializable) as info:
        encode_value(threading.Lock(), "step 'fetch' (#3)")
    assert "step 'fetch' (#3)" in str(info.value)
    assert "lock" in str(info.value).lower()
    assert info.value.what == "step 'fetch' (#3)"


def test_a_refused_payload_is_never_loaded() -> None:
    encoded = encode_value(RunsCodeWhenLoaded(), "v")
    _MARKS.clear()
    assert decode_value(encoded) == "loaded"
    assert _MARKS == ["loaded"]
    _MARKS.clear()
    bad = dict(encoded, hmac="0" * 64)
    with pytest.raises(_BadValue, match="signed"):
        decode_value(bad)
    assert _MARKS == []


def test_not_base64_is_refused() -> None:
    with pytest.raises(_BadValue, match="base64"):
        decode_value({"$pickle": "%%% not base64 %%%"})


# -- HMAC -----------------------------------------------------------------------------


def test_with_a_secret_payloads_are_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = encode_value((1, 2), "v")
    monkeypatch.setenv(SECRET_ENV, "k1")
    signed = encode_value((1, 2), "v")
    assert set(signed) == {"$pickle", "hmac"}
    assert len(signed["hmac"]) == 64
    assert signed["$pickle"] == unsigned["$pickle"]
    assert decode_value(signed) == (1, 2)
    assert encode_value([1], "v") == [1]  # JSON values need no signature


def test_a_tampered_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "k1")
    signed = encode_value((1, 2), "v")
    flipped = ("1" if signed["hmac"][0] == "0" else "0") + signed["hmac"][1:]
    with pytest.raises(_BadValue, match="HMAC"):
        decode_value(dict(signed, hmac=flipped))
    other = encode_value((1, 3), "v")
    with pytest.raises(_BadValue, match="HMAC"):  # a valid signature of another payload
        decode_value({"$pickle": signed["$pickle"], "hmac": other["hmac"]})
    monkeypatch.setenv(SECRET_ENV, "k2")
    with pytest.raises(_BadValue, match="HMAC"):  # another secret
        decode_value(signed)


def test_unsigned_payload_refused_when_secret_set(monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = encode_value((1, 2), "v")
    monkeypatch.setenv(SECRET_ENV, "k1")
    with pytest.raises(_BadValue, match="not signed"):
        decode_value(unsigned)


def test_signed_payload_refused_when_secret_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "k1")
    signed = encode_value((1, 2), "v")
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(_BadValue, match="not set"):
        decode_value(signed)


# -- a real job on a FileStore ---------------------------------------------------------


class Job:
    """A job of four steps (JSON, tuple, custom object, None) that can fail after them."""

    def __init__(self, store: Store, on_corrupt: str = "raise") -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        self.fail = False

        @checkpoint(name="json")
        def as_json(i: int) -> dict[str, int]:
            self.calls["json"] += 1
            return {"i": i, "sq": i * i}

        @checkpoint(name="tuple")
        def as_tuple(i: int) -> tuple[int, str]:
            self.calls["tuple"] += 1
            return (i, "t")

        @checkpoint(name="point")
        def as_point(i: int) -> Point:
            self.calls["point"] += 1
            return Point(i, -i)

        @checkpoint(name="none")
        def nothing() -> None:
            self.calls["none"] += 1

        @resumable(store=store, key="rec-{n}", on_corrupt=on_corrupt)
        def job(n: int) -> list[Any]:
            out: list[Any] = []
            for i in range(n):
                out.append(as_json(i))
                out.append(as_tuple(i))
                out.append(as_point(i))
                nothing()
            if self.fail:
                raise Boom("after the steps")
            return out

        self.job = job

    @staticmethod
    def expected(n: int) -> list[Any]:
        out: list[Any] = []
        for i in range(n):
            out += [{"i": i, "sq": i * i}, (i, "t"), Point(i, -i)]
        return out

    def interrupted(self, n: int = 3) -> str:
        """Run it once to the failure after its steps; returns the run key."""
        self.fail = True
        with pytest.raises(Boom):
            self.job(n)
        self.fail = False
        return str(self.job.key_for(n))


def _snapshot(store: Store) -> dict[str, bytes | None]:
    return {k: store.get(k) for k in store.keys("")}


def test_recorded_results_keep_their_types_across_a_resume(tmp_path: Path) -> None:
    t = Job(FileStore(tmp_path))
    key = t.interrupted(3)
    head = json.loads(t.store.get(key) or b"")
    assert head["format"] == "resumable-record"
    assert head["version"] == _record.VERSION
    assert head["status"] == "running"
    chunk = json.loads(t.store.get(f"{key}(r)0.0") or b"")
    # JSON-exact results are readable as they are in the record.
    assert chunk["entries"]["0"][2] == {"i": 0, "sq": 0}
    assert "$pickle" in chunk["entries"]["1"][2]
    assert t.calls == Counter(json=3, tuple=3, point=3, none=3)
    assert t.job(3) == Job.expected(3)
    assert t.calls == Counter(json=3, tuple=3, point=3, none=3)  # nothing ran again
    assert json.loads(t.store.get(key) or b"")["status"] == "finished"


def test_with_a_secret_the_whole_run_signs_and_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    t = Job(FileStore(tmp_path))
    key = t.interrupted(2)
    chunk = json.loads(t.store.get(f"{key}(r)0.0") or b"")
    assert "hmac" in chunk["entries"]["1"][2]
    assert t.job(2) == Job.expected(2)
    assert t.job(2) == Job.expected(2)  # the finished result, signed, read back
    assert t.calls["tuple"] == 2


def _edit_chunk_value(store: Store, key: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Change the encoded result of step 1 (the tuple) and fix the chunk's checksum."""
    ckey = f"{key}(r)0.0"
    body = json.loads(store.get(ckey) or b"")
    body.pop("checksum", None)
    body.pop("hmac", None)
    edit(body["entries"]["1"][2])
    store.set(ckey, _record._dump(body))


def _expect_corrupt(t: Job, key: str, match: str) -> CheckpointCorrupted:
    before = dict(t.calls)
    with pytest.raises(CheckpointCorrupted, match=match) as info:
        t.job(3)
    assert info.value.store == t.store.describe()
    assert key in info.value.key
    assert key in str(info.value)
    assert t.store.describe() in str(info.value)
    assert dict(t.calls) == before  # no recorded step ran again
    return info.value


def test_tampered_signature_refused_on_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    t = Job(FileStore(tmp_path))
    key = t.interrupted()
    _edit_chunk_value(t.store, key, lambda v: v.update(hmac="0" * 64))
    chunk = t.store.get(f"{key}(r)0.0")
    _expect_corrupt(t, key, "HMAC")
    assert t.store.get(f"{key}(r)0.0") == chunk


def test_unsigned_record_refused_when_secret_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Job(FileStore(tmp_path))
    key = t.interrupted()
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    _expect_corrupt(t, key, "not signed")


def test_signed_record_refused_when_secret_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    t = Job(FileStore(tmp_path))
    key = t.interrupted()
    monkeypatch.delenv(SECRET_ENV)
    _expect_corrupt(t, key, "not set")


def test_tampered_finished_result_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    t = Job(FileStore(tmp_path))
    assert t.job(1) == Job.expected(1)
    key = t.job.key_for(1)
    head = json.loads(t.store.get(key) or b"")
    head.pop("checksum", None)
    head.pop("hmac", None)
    head["result"]["hmac"] = "f" * 64
    t.store.set(key, _record._dump(head))
    before = _snapshot(t.store)
    with pytest.raises(CheckpointCorrupted, match="HMAC") as info:
        t.job(1)
    assert info.value.key == key
    assert _snapshot(t.store) == before


def test_refused_step_result_leaves_every_byte_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    t = Job(FileStore(tmp_path))
    key = t.interrupted()
    _edit_chunk_value(t.store, key, lambda v: v.update(hmac="0" * 64))
    before = _snapshot(t.store)
    with pytest.raises(CheckpointCorrupted):
        t.job(3)
    assert _snapshot(t.store) == before


def test_restart_on_bad_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "s3cret")
    store = FileStore(tmp_path)
    key = Job(store).interrupted()
    _edit_chunk_value(store, key, lambda v: v.update(hmac="0" * 64))
    t = Job(store, on_corrupt="restart")
    assert t.job(3) == Job.expected(3)
    assert t.calls["tuple"] == 3
    assert any("(corrupt)" in k for k in store.keys(""))


# -- every corrupt-record case ---------------------------------------------------------


def _set_version(raw: bytes) -> bytes:
    body = json.loads(raw)
    body.pop("checksum", None)
    body.pop("hmac", None)
    body["version"] = _record.VERSION + 1
    return _record._dump(body)


def _drop_field(raw: bytes) -> bytes:
    body = json.loads(raw)
    body.pop("checksum", None)
    body.pop("hmac", None)
    del body["units"]
    return _record._dump(body)


def _edit_one_char(raw: bytes) -> bytes:
    text = raw.decode()
    at = text.index('"done":') + len('"done":')
    digit = text[at]
    return (text[:at] + ("7" if digit != "7" else "8") + text[at + 1 :]).encode()


def _another_runs_head(raw: bytes) -> bytes:
    body = json.loads(raw)
    body.pop("checksum", None)
    body.pop("hmac", None)
    body["key"] = "some-other-run"
    return _record._dump(body)


HEAD_CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "not JSON"),
    "truncated-to-nothing": (lambda raw: b"", "not JSON"),
    "garbage": (lambda raw: bytes(range(256)) * 4, "not JSON"),
    "not-utf8": (lambda raw: b'{"format": "\xff\xfe"}', "not JSON"),
    "other-program-json": (lambda raw: b'{"name": "other", "items": [1, 2]}', "not a resumable-record"),
    "json-list": (lambda raw: b"[1, 2, 3]", "not a resumable-record"),
    "newer-version": (_set_version, "newer"),
    "bad-checksum": (_edit_one_char, "checksum"),
    "missing-field": (_drop_field, "missing or malformed"),
    "record-of-another-run": (_another_runs_head, "some-other-run"),
}


def _corrupt_chunk_checksum(store: Store, key: str) -> None:
    ckey = f"{key}(r)0.0"
    raw = (store.get(ckey) or b"").decode()
    store.set(ckey, raw.replace('"sq":4', '"sq":5').encode())


CHUNK_CASES: dict[str, tuple[Callable[[Store, str], None], str]] = {
    "missing-chunk": (lambda store, key: store.delete(f"{key}(r)0.0"), "missing"),
    "chunk-bad-checksum": (_corrupt_chunk_checksum, "checksum"),
    "chunk-truncated": (
        lambda store, key: store.set(f"{key}(r)0.0", (store.get(f"{key}(r)0.0") or b"")[:-10]),
        "not JSON",
    ),
    "chunk-is-a-head": (
        lambda store, key: store.set(f"{key}(r)0.0", store.get(key) or b""),
        "resumable-chunk",
    ),
}


def _corrupt(case: str, store: Store, key: str) -> None:
    if case in HEAD_CASES:
        store.set(key, HEAD_CASES[case][0](store.get(key) or b""))
    else:
        CHUNK_CASES[case][0](store, key)


ALL_CASES = sorted(HEAD_CASES) + sorted(CHUNK_CASES)


def _match(case: str) -> str:
    return (HEAD_CASES.get(case) or CHUNK_CASES[case])[1]


@pytest.mark.parametrize("case", ALL_CASES)
def test_corrupt_record_raises_and_is_left_as_it_was(tmp_path: Path, case: str) -> None:
    t = Job(FileStore(tmp_path))
    key = t.interrupted()
    _corrupt(case, t.store, key)
    before = _snapshot(t.store)
    _expect_corrupt(t, key, _match(case))
    assert _snapshot(t.store) == before
    # The key is not left locked: a second try fails the same way.
    _expect_corrupt(t, key, _match(case))
    assert _snapshot(t.store) == before


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_corrupt_finished_record_raises(tmp_path: Path, case: str) -> None:
    t = Job(FileStore(tmp_path))
    assert t.job(3) == Job.expected(3)
    key = t.job.key_for(3)
    _corrupt(case, t.store, key)
    before = _snapshot(t.store)
    _expect_corrupt(t, key, _match(case))
    assert _snapshot(t.store) == before


@pytest.mark.parametrize("case", ALL_CASES)
def test_on_corrupt_restart_moves_the_record_aside_and_starts_over(tmp_path: Path, case: str) -> None:
    store = FileStore(tmp_path)
    key = Job(store).interrupted()
    _corrupt(case, store, key)
    before = _snapshot(store)
    t = Job(store, on_corrupt="restart")
    with capture_logs() as logs:
        assert t.job(3) == Job.expected(3)
    assert t.calls == Counter(json=3, tuple=3, point=3, none=3)  # from scratch
    aside = {k: v for k, v in _snapshot(store).items() if "(corrupt)" in k}
    assert aside
    assert all(k.startswith(key) for k in aside)
    # Everything the corrupt record held is kept, byte for byte.
    for old_key, value in before.items():
        assert value in aside.values(), f"{old_key} was not kept"
    heads = [k for k in aside if "(r)" not in k]
    assert len(heads) == 1
    assert aside[heads[0]] == before[key]
    warning = next(e for e in logs if e["log_level"] == "warning")
    assert warning["moved_to"] == heads[0]
    assert json.loads(store.get(key) or b"")["status"] == "finished"
    # The new run is an ordinary one: called again, it returns its result.
    assert t.job(3) == Job.expected(3)
    assert t.calls["json"] == 3


def test_on_corrupt_must_be_known() -> None:
    with pytest.raises(ValueError, match="on_corrupt"):
        resumable(on_corrupt="ignore")


# -- chunks ----------------------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def set(self, key: str, value: bytes) -> None:
        super().set(key, value)
        self.writes.append(key)


def test_a_long_run_writes_chunks_and_resumes_with_all_results() -> None:
    store = CountingStore()
    calls: Counter[int] = Counter()
    fail = [True]

    @checkpoint
    def step(i: int) -> str:
        calls[i] += 1
        return f"result {i} " + "x" * 20

    @resumable(store=store, key="long")
    def job(n: int) -> list[str]:
        out = []
        for i in range(n):
            out.append(step(i))
            if i % 50 == 49:
                flush()
        if fail[0]:
            raise Boom
        return out

    with pytest.raises(Boom):
        job(1000)
    chunks = sorted(
        (k for k in store.keys("long(r)0.")),
        key=lambda k: int(k.rsplit(".", 1)[1]),
    )
    assert len(chunks) >= 3
    assert chunks == [f"long(r)0.{i}" for i in range(len(chunks))]
    # A chunk, once the next one is started, is never written again.
    for i, chunk in enumerate(chunks[:-1]):
        first_of_next = store.writes.index(chunks[i + 1])
        assert chunk not in store.writes[first_of_next:]
    sizes = [len(json.loads(store.get(c) or b"")["entries"]) for c in chunks]
    print("chunk sizes", sizes)
    assert sum(sizes) == 1000
    assert len(store.get("long") or b"") < 2000  # the head stays small
    fail[0] = False
    result = job(1000)
    assert result == [f"result {i} " + "x" * 20 for i in range(1000)]
    assert set(calls.values()) == {1}
    assert len(calls) == 1000
