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
import io
import json
import json.encoder
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
    "canonical_json",
    "chunk_key",
    "decode_value",
    "dump_chunk",
    "dump_head",
    "encode_text",
    "encode_value",
    "entry_json",
    "entry_text",
    "load_chunk",
    "load_head",
]

FORMAT = "resumable-record"
CHUNK_FORMAT = "resumable-chunk"
VERSION = 2
SECRET_ENV = "RESUMABLE_SECRET"  # noqa: S105 - the name of the variable, not a secret

#: A recorded step: ``[name, args code, encoded result or absent]``.
Entry = list[Any]

_MARKERS = ("$pickle", "$json")


def chunk_key(key: str, epoch: int, index: int) -> str:
    """The store key of chunk ``index`` of ``epoch`` of run ``key``."""
    return f"{key}(r){epoch}.{index}"


def is_auxiliary(key: str) -> bool:
    """Tell whether a store key is a chunk or a moved-aside record, not a run head."""
    return "(" in key


_INT_LIMIT = 1 << 12_000  # JSON writes ints as text; Python refuses more than 4,300 digits


def _json_exact(value: Any, depth: int = 0) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_INT_LIMIT < value < _INT_LIMIT)
    if kind is float:
        return math.isfinite(value)
    if depth > 200:
        return False  # deeply nested: pickled, which keeps the structure without recursion limits
    if kind is list:
        return all(_json_exact(v, depth + 1) for v in value)
    if kind is dict:
        return all(type(k) is str and _json_exact(v, depth + 1) for k, v in value.items())
    return False


def _secret() -> bytes | None:
    secret = os.environ.get(SECRET_ENV)
    return secret.encode() if secret else None


def _mac(secret: bytes, bind: str, data: bytes) -> str:
    return hmac.new(
        secret, bind.encode("utf-8", "surrogatepass") + b"\x00" + data, hashlib.sha256
    ).hexdigest()


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__qualname__} is not JSON")


# The C encoder that json.dumps builds on every call, built once: the same text as
# json.dumps(value, sort_keys=True, separators=(",", ":")), in a fraction of the time.
# No circular check: a cycle raises RecursionError, which callers catch as they do
# ValueError (an int too long for text) and TypeError (not JSON).
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_encode: Any = (
    _make_encoder(None, _no_default, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True)
    if _make_encoder is not None
    else None
)
_slow_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), check_circular=False).encode


def canonical_json(value: Any) -> str:
    """Canonical JSON text (sorted keys, no spaces, ASCII), as the record's checksum covers it."""
    if _encode is None:  # pragma: no cover - a Python without the C accelerator
        return str(_slow_canonical(value))
    return "".join(_encode(value, 0))


def encode_value(value: Any, what: str, bind: str = "") -> Any:
    """Encode ``value`` as JSON data: as it is when JSON holds it exactly, else pickled.

    ``bind`` names the run the value belongs to: with ``RESUMABLE_SECRET`` set, a
    pickled value's HMAC covers it, so a value copied from another run is refused.

    Raises:
        NotSerializable: when cloudpickle cannot serialize it either; ``what`` names
            the step or job in the message.
    """
    try:
        exact = _json_exact(value)
    except RecursionError:  # a self-referencing container
        exact = False
    if exact:
        if type(value) is dict and any(m in value for m in _MARKERS):
            return {"$json": value}
        return value
    _refuse(value, what)
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:  # cloudpickle raises many kinds: TypeError, PicklingError...
        raise NotSerializable(what, type(value), exc) from exc
    encoded: dict[str, Any] = {"$pickle": base64.b64encode(data).decode("ascii")}
    secret = _secret()
    if secret is not None:
        encoded["hmac"] = _mac(secret, bind, data)
    return encoded


def _refuse(value: Any, what: str) -> None:
    """Refuse values that pickle but would not come back as what was returned."""
    if isinstance(value, io.IOBase):
        raise NotSerializable(
            what, type(value), TypeError("an open file or stream: return its content or its path instead")
        )


def encode_text(value: Any, what: str, bind: str = "") -> str:
    """`encode_value`, then its canonical JSON text: a copy taken now, written later as it is."""
    encoded = encode_value(value, what, bind)
    try:
        return canonical_json(encoded)
    except (ValueError, TypeError, RecursionError):
        # JSON refused what it was thought to hold exactly: keep it pickled instead.
        try:
            data = cloudpickle.dumps(value)
        except Exception as exc:
            raise NotSerializable(what, type(value), exc) from exc
        pickled: dict[str, Any] = {"$pickle": base64.b64encode(data).decode("ascii")}
        secret = _secret()
        if secret is not None:
            pickled["hmac"] = _mac(secret, bind, data)
        return canonical_json(pickled)


def resign(data: bytes, bind: str) -> str:
    """The HMAC of pickled ``data`` for run ``bind`` (``RESUMABLE_SECRET`` must be set)."""
    secret = _secret()
    if secret is None:
        raise _BadValue(f"a pickled value is signed, but {SECRET_ENV} is not set to check it")
    return _mac(secret, bind, data)


class _BadValue(Exception):
    pass


def decode_value(encoded: Any, bind: str = "") -> Any:
    """Decode what `encode_value` made. Raises ``_BadValue`` for a refused payload."""
    if type(encoded) is not dict:
        return encoded
    if "$json" in encoded:
        return encoded["$json"]
    if "$pickle" not in encoded:
        return encoded
    verify_value(encoded, bind)
    data = base64.b64decode(encoded["$pickle"])
    try:
        return cloudpickle.loads(data)
    except Exception as exc:
        raise _BadValue(f"a pickled value cannot be loaded ({type(exc).__name__}: {exc})") from None


def verify_value(encoded: Any, bind: str = "") -> None:
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
        if not hmac.compare_digest(_mac(secret, bind, data), mac):
            raise _BadValue(
                f"a pickled value failed its HMAC check against {SECRET_ENV} (altered, or copied "
                "from another run)"
            )
    elif mac is not None:
        raise _BadValue(f"a pickled value is signed, but {SECRET_ENV} is not set to check it")


def _seal(text: str) -> bytes:
    """Append the record's checksum, or its HMAC when ``RESUMABLE_SECRET`` is set."""
    secret = _secret()
    if secret is None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:32]
        return (text[:-1] + f',"checksum":"{digest}"}}').encode()
    mac = hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()
    return (text[:-1] + f',"hmac":"{mac}"}}').encode()


def _seal_text(text: str, field_name: str, seal: str) -> bytes:
    return (text[:-1] + f',"{field_name}":"{seal}"}}').encode()


def _dump(body: dict[str, Any]) -> bytes:
    # The checksum goes last, over the canonical text of everything else.
    return _seal(canonical_json(body))


_CHECKSUM = b',"checksum":"'
_HMAC = b',"hmac":"'


def _unseal(raw: bytes, store: str, key: str, body: dict[str, Any]) -> None:
    """Check the checksum or HMAC that `_seal` appended.

    The bytes are checked as they are when they end as `_seal` left them; a store that
    gives back the same JSON reformatted (Apify's parses and re-serializes it) is
    checked on the canonical text of what it holds.
    """
    if not (raw[-47:-34] == _CHECKSUM or raw[-75:-66] == _HMAC) or not raw.endswith(b'"}'):
        seal = body.get("hmac", body.get("checksum"))
        rest = {k: v for k, v in body.items() if k not in ("hmac", "checksum")}
        field_name = "hmac" if "hmac" in body else "checksum"
        if not isinstance(seal, str):
            raise CheckpointCorrupted(store, key, "no checksum (not a complete record)")
        raw = _seal_text(canonical_json(rest), field_name, seal)
    secret = _secret()
    if raw[-47:-34] == _CHECKSUM and raw.endswith(b'"}'):
        if secret is not None:
            raise CheckpointCorrupted(
                store, key, f"the record is not signed, but {SECRET_ENV} is set (written without it?)"
            )
        if hmac.compare_digest(hashlib.sha256(raw[:-47] + b"}").hexdigest()[:32].encode(), raw[-34:-2]):
            return
        raise CheckpointCorrupted(store, key, "checksum mismatch (the record was altered)")
    if raw[-75:-66] == _HMAC and raw.endswith(b'"}'):
        if secret is None:
            raise CheckpointCorrupted(
                store, key, f"the record is signed, but {SECRET_ENV} is not set to check it"
            )
        mac = hmac.new(secret, raw[:-75] + b"}", hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(mac, raw[-66:-2]):
            return
        raise CheckpointCorrupted(
            store, key, f"its HMAC does not match {SECRET_ENV} (altered, or another run's record)"
        )
    raise CheckpointCorrupted(store, key, "no checksum (not a complete record)")


def _load(raw: bytes, store: str, key: str, fmt: str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointCorrupted(store, key, f"not JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise CheckpointCorrupted(store, key, f"not a {fmt} (no 'format': {fmt!r})")
    version = body.get("version")
    if type(version) is not int or version != VERSION:
        if type(version) is int and version > VERSION:
            raise CheckpointCorrupted(
                store,
                key,
                f"format version {version} is newer than this resumable reads ({VERSION}); upgrade resumable",
            )
        raise CheckpointCorrupted(
            store,
            key,
            f"format version {version!r} is not one this resumable reads ({VERSION}); a record of "
            "an older version cannot be resumed by this one: reset the run",
        )
    _unseal(raw, store, key, body)
    body.pop("checksum", None)
    body.pop("hmac", None)
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
    counts: dict[str, int] = field(default_factory=dict)  # those steps per name code (hex)
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
                "counts": self.counts,
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
            counts={str(k): int(v) for k, v in dict(units["counts"]).items()},
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


def entry_json(name: str, code: int, value: Any, where: int | str, bind: str) -> str:
    """The canonical JSON text of a recorded step that returned ``value``, encoded once.

    ``where`` is the call's place (a unit number, or a description), for the message
    when it cannot be saved.
    """
    try:
        exact = _json_exact(value)
    except RecursionError:
        exact = False
    if exact:
        if type(value) is dict and any(m in value for m in _MARKERS):
            value = {"$json": value}
        try:
            return canonical_json([name, code, value])
        except (ValueError, TypeError, RecursionError):
            pass
    place = f"#{where}" if isinstance(where, int) else where
    return entry_text(name, code, encode_text(value, f"step {name!r} ({place})", bind))


def entry_text(name: str, code: int, value_text: str | None = None) -> str:
    """The canonical JSON text of one recorded step: ``[name, args code(, value)]``."""
    head = canonical_json([name, code])
    return head if value_text is None else f"{head[:-1]},{value_text}]"


def dump_chunk(key: str, epoch: int, index: int, entries: dict[str, str]) -> bytes:
    """Serialize a chunk of recorded steps, each given as its `entry_text`."""
    # Entry keys are unit numbers or "~" + hex digest + "#" + occurrence: JSON as they are.
    body = ",".join([f'"{k}":{entries[k]}' for k in sorted(entries)])
    text = (
        f'{{"entries":{{{body}}},"epoch":{epoch},"format":"{CHUNK_FORMAT}",'
        f'"index":{index},"key":{canonical_json(key)},"version":{VERSION}}}'
    )
    return _seal(text)


def load_chunk(raw: bytes, store: str, key: str, run: str, epoch: int, index: int) -> dict[str, Entry]:
    """Parse and check chunk ``index`` of ``epoch`` of run ``run``; returns its entries by unit."""
    body = _load(raw, store, key, CHUNK_FORMAT)
    if body.get("key") != run or body.get("epoch") != epoch or body.get("index") != index:
        raise CheckpointCorrupted(
            store,
            key,
            f"the chunk belongs to run {body.get('key')!r}, epoch {body.get('epoch')!r}, index "
            f"{body.get('index')!r}, not to this one (copied from elsewhere?)",
        )
    entries = body.get("entries")
    if not isinstance(entries, dict):
        raise CheckpointCorrupted(store, key, "a chunk without entries")
    return entries


def check_verify(encoded: Any, store: str, key: str) -> None:
    """`verify_value` for run ``key``, with refusals raised as `CheckpointCorrupted`."""
    try:
        verify_value(encoded, key)
    except _BadValue as exc:
        raise CheckpointCorrupted(store, key, str(exc)) from None


def check_decode(encoded: Any, store: str, key: str) -> Any:
    """`decode_value` for run ``key``, with refusals raised as `CheckpointCorrupted`."""
    try:
        return decode_value(encoded, key)
    except _BadValue as exc:
        raise CheckpointCorrupted(store, key, str(exc)) from None
