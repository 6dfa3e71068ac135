"""The record of a run: its JSON layout, format version, checksum and value encoding.

A run's record is a small *head* under the run key plus *chunks* of recorded step
results beside it (``KEY(r)EPOCH.INDEX``). A flush rewrites the head and at most the
newest chunk, so its cost stays flat however many results the run has recorded.
Values JSON cannot hold exactly are encoded with cloudpickle and, when
``RESUMABLE_SECRET`` is set, signed with an HMAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from resumable.errors import CheckpointCorrupted, NotSerializable

__all__ = [
    "FORMAT",
    "VERSION",
    "Entry",
    "Head",
    "chunk_key",
    "decode_value",
    "dump_chunk",
    "dump_head",
    "encode_value",
    "load_chunk",
    "load_head",
]

FORMAT = "resumable-record"
CHUNK_FORMAT = "resumable-chunk"
VERSION = 1
SECRET_ENV = "RESUMABLE_SECRET"  # noqa: S105 - the name of the variable, not a secret

#: A recorded step: ``[name, identity digest or None, encoded result or absent]``.
Entry = list[Any]

_MARKERS = ("$pickle", "$json")


def chunk_key(key: str, epoch: int, index: int) -> str:
    """The store key of chunk ``index`` of ``epoch`` of run ``key``."""
    return f"{key}(r){epoch}.{index}"


def is_auxiliary(key: str) -> bool:
    """Tell whether a store key is a chunk or a moved-aside record, not a run head."""
    return "(" in key


def _json_exact(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_json_exact(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_exact(v) for k, v in value.items())
    return False


def _secret() -> bytes | None:
    secret = os.environ.get(SECRET_ENV)
    return secret.encode() if secret else None


def encode_value(value: Any, what: str) -> Any:
    """Encode ``value`` as JSON data: as it is when JSON holds it exactly, else pickled.

    Raises:
        NotSerializable: when cloudpickle cannot serialize it either; ``what`` names
            the step or job in the message.
    """
    if _json_exact(value):
        if type(value) is dict and any(m in value for m in _MARKERS):
            return {"$json": value}
        return value
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:  # cloudpickle raises many kinds: TypeError, PicklingError...
        raise NotSerializable(what, type(value), exc) from exc
    encoded: dict[str, Any] = {"$pickle": base64.b64encode(data).decode("ascii")}
    secret = _secret()
    if secret is not None:
        encoded["hmac"] = hmac.new(secret, data, hashlib.sha256).hexdigest()
    return encoded


class _BadValue(Exception):
    pass


def decode_value(encoded: Any) -> Any:
    """Decode what `encode_value` made. Raises ``_BadValue`` for a refused payload."""
    if type(encoded) is not dict:
        return encoded
    if "$json" in encoded:
        return encoded["$json"]
    if "$pickle" not in encoded:
        return encoded
    verify_value(encoded)
    data = base64.b64decode(encoded["$pickle"])
    try:
        return cloudpickle.loads(data)
    except Exception as exc:
        raise _BadValue(f"a pickled value cannot be loaded ({type(exc).__name__}: {exc})") from None


def verify_value(encoded: Any) -> None:
    """Check an encoded value's form and signature without loading it (raises ``_BadValue``)."""
    if type(encoded) is not dict or "$pickle" not in encoded:
        return
    try:
        data = base64.b64decode(encoded["$pickle"], validate=True)
    except (ValueError, TypeError) as exc:
        raise _BadValue(f"a pickled value is not base64: {exc}") from None
    secret = _secret()
    mac = encoded.get("hmac")
    if secret is not None:
        if not isinstance(mac, str):
            raise _BadValue(f"a pickled value is not signed, but {SECRET_ENV} is set")
        if not hmac.compare_digest(hmac.new(secret, data, hashlib.sha256).hexdigest(), mac):
            raise _BadValue(f"a pickled value failed its HMAC check against {SECRET_ENV}")
    elif mac is not None:
        raise _BadValue(f"a pickled value is signed, but {SECRET_ENV} is not set to check it")


def _dump(body: dict[str, Any]) -> bytes:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    # The checksum goes last, over the canonical text of everything else.
    return (text[:-1] + f',"checksum":"{digest}"}}').encode()


def _load(raw: bytes, store: str, key: str, fmt: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointCorrupted(store, key, f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise CheckpointCorrupted(store, key, f"not a {fmt} (no 'format': {fmt!r})")
    version = body.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointCorrupted(
            store,
            key,
            f"format version {version!r} is newer than this resumable reads ({VERSION}); upgrade resumable",
        )
    checksum = body.pop("checksum", None)
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    if checksum != hashlib.sha256(text.encode()).hexdigest()[:32]:
        raise CheckpointCorrupted(store, key, "checksum mismatch (the record was altered)")
    return body


@dataclass
class Head:
    """The head record of a run, as read from or written to a store."""

    key: str
    job: str
    status: str = "running"  # "running" or "finished"
    created: float = 0.0
    updated: float = 0.0
    epoch: int = 0
    args: Any = None  # encoded restart_with() arguments, or None
    state: Any = field(default_factory=dict)  # encoded state dict at the last resume point
    done: int = 0  # the watermark: units 0..done-1 of this epoch completed
    above: list[int] = field(default_factory=list)  # completed units above the watermark
    digest: str = "0"  # rolling digest of the names of unidentified steps below done
    folded: int = 0  # how many steps that digest covers
    chunks: list[int] = field(default_factory=lambda: [0, -1])  # first and last index
    intents: dict[str, Entry] = field(default_factory=dict)  # durable steps in flight
    holes: dict[str, list[Any]] = field(default_factory=dict)  # steps that raised, below done
    items: dict[str, Any] = field(default_factory=dict)  # generator progress
    result: Any = None  # encoded result when finished
    error: str | None = None  # the last exception that ended an attempt
    attempts: int = 0  # how many times the run was started

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "key": self.key,
            "job": self.job,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "epoch": self.epoch,
            "args": self.args,
            "state": self.state,
            "units": {
                "done": self.done,
                "above": self.above,
                "digest": self.digest,
                "folded": self.folded,
            },
            "chunks": self.chunks,
            "intents": self.intents,
            "holes": self.holes,
            "items": self.items,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
        }


def dump_head(head: Head) -> bytes:
    """Serialize a head record (JSON, format version, checksum)."""
    return _dump(head.to_json())


def load_head(raw: bytes, store: str, key: str) -> Head:
    """Parse and check a head record; raises `CheckpointCorrupted` for anything off."""
    body = _load(raw, store, key, FORMAT)
    try:
        units = body["units"]
        head = Head(
            key=str(body["key"]),
            job=str(body["job"]),
            status=str(body["status"]),
            created=float(body["created"]),
            updated=float(body["updated"]),
            epoch=int(body["epoch"]),
            args=body["args"],
            state=body["state"],
            done=int(units["done"]),
            above=[int(n) for n in units["above"]],
            digest=str(units["digest"]),
            folded=int(units["folded"]),
            chunks=[int(body["chunks"][0]), int(body["chunks"][1])],
            intents=dict(body["intents"]),
            holes=dict(body["holes"]),
            items=dict(body["items"]),
            result=body["result"],
            error=body["error"],
            attempts=int(body.get("attempts", 0)),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointCorrupted(store, key, f"a field is missing or malformed ({exc!r})") from None
    if head.status not in ("running", "finished"):
        raise CheckpointCorrupted(store, key, f"unknown status {head.status!r}")
    return head


def dump_chunk(key: str, epoch: int, index: int, entries: dict[str, Entry]) -> bytes:
    """Serialize a chunk of recorded step results."""
    return _dump(
        {
            "format": CHUNK_FORMAT,
            "version": VERSION,
            "key": key,
            "epoch": epoch,
            "index": index,
            "entries": entries,
        }
    )


def load_chunk(raw: bytes, store: str, key: str) -> dict[str, Entry]:
    """Parse and check a chunk; returns its entries by unit number (as text)."""
    body = _load(raw, store, key, CHUNK_FORMAT)
    entries = body.get("entries")
    if not isinstance(entries, dict):
        raise CheckpointCorrupted(store, key, "a chunk without entries")
    return entries


def check_verify(encoded: Any, store: str, key: str) -> None:
    """`verify_value`, with refusals raised as `CheckpointCorrupted`."""
    try:
        verify_value(encoded)
    except _BadValue as exc:
        raise CheckpointCorrupted(store, key, str(exc)) from None


def check_decode(encoded: Any, store: str, key: str) -> Any:
    """`decode_value`, with refusals raised as `CheckpointCorrupted`."""
    try:
        return decode_value(encoded)
    except _BadValue as exc:
        raise CheckpointCorrupted(store, key, str(exc)) from None
