"""Run keys: stable digests of plain-data arguments, and keys safe for any store."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import inspect
import json
import re
import types
import uuid
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any

__all__ = [
    "NotPlain",
    "bind_arguments",
    "digest_plain",
    "digest_texts",
    "is_plain",
    "make_key",
    "plain_arguments",
]

# Run keys leave room for the suffixes of a run's auxiliary records, also where a store
# quotes keys into file names (the Apify SDK's local client turns each of !'() into 3).
_RUN_KEY_MAX = 150
_UNSAFE = re.compile(r"[^a-zA-Z0-9\-_.]+")
_SAFE = re.compile(r"[a-zA-Z0-9\-_.]{1,150}")


class NotPlain(Exception):
    """Internal: an argument holds something that is not plain data."""


def _tag(value: Any) -> Any:
    # json.dumps calls this for every value it cannot encode itself.
    if isinstance(value, bytes | bytearray):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, tuple | frozenset | set):
        items = list(value)
        if not isinstance(value, tuple):
            items = sorted(items, key=_sort_key)
        return {f"${type(value).__name__ if not isinstance(value, tuple) else 'tuple'}": items}
    if isinstance(value, enum.Enum):
        return {"$enum": f"{type(value).__module__}.{type(value).__qualname__}.{value.name}"}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return {f"${type(value).__name__}": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$timedelta": value.total_seconds()}
    if isinstance(value, PurePath):
        return {"$path": str(value)}
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return {f"${type(value).__name__}": str(value)}
    raise NotPlain(type(value).__qualname__)


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_tag)


def _canonical(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_tag)
    except TypeError:
        # A dict whose keys JSON cannot sort or hold (mixed types, tuples as keys).
        if isinstance(value, Mapping):
            pairs = sorted((_canonical(k), _canonical(v)) for k, v in value.items())
            return "{$map:" + json.dumps(pairs) + "}"
        if isinstance(value, list):
            return "[" + ",".join(_canonical(v) for v in value) + "]"
        raise NotPlain(type(value).__qualname__) from None
    except ValueError as exc:  # a circular reference
        raise NotPlain(str(exc)) from None


canonical = _canonical


def is_plain(value: Any) -> bool:
    """Tell whether ``value`` is plain data that goes into a run key's digest.

    Plain data: ``None``, bool, int, float, str, bytes, dates and times, paths, enums,
    decimals, UUIDs, and lists, tuples, sets and dicts of them. Anything else (a
    client, a session, a file handle) is not.
    """
    try:
        _canonical(value)
    except NotPlain:
        return False
    return True


def bind_arguments(
    func: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> inspect.BoundArguments:
    """Bind a call's arguments to ``func``'s signature, defaults applied.

    ``instance`` is the object a method is bound to (as wrapt gives it); it fills the
    first parameter when ``func`` is a plain function defined in a class.
    """
    sig = signature_of(func)
    if instance is not None and not inspect.ismethod(func) and _takes_instance(func):
        bound = sig.bind(instance, *args, **kwargs)
    else:
        bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return bound


_SIGNATURES: dict[Any, inspect.Signature] = {}


def signature_of(func: Callable[..., Any]) -> inspect.Signature:
    """``inspect.signature``, cached for plain functions (and bound methods of them)."""
    if type(func) is types.FunctionType:
        sig = _SIGNATURES.get(func)
        if sig is None:
            sig = _SIGNATURES[func] = inspect.signature(func)
        return sig
    if type(func) is types.MethodType and type(func.__func__) is types.FunctionType:
        params = list(signature_of(func.__func__).parameters.values())
        return signature_of(func.__func__).replace(parameters=params[1:])
    return inspect.signature(func)


def _takes_instance(func: Callable[..., Any]) -> bool:
    params = list(signature_of(func).parameters.values())
    return (
        bool(params)
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        and params[0].name in ("self", "cls")
    )


def plain_arguments(bound: inspect.BoundArguments, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Return the canonical text of each plain-data argument, by name.

    Arguments named in ``ignore``, ``self``/``cls``, and arguments that are not plain
    data are left out.
    """
    out: dict[str, str] = {}
    for name, value in bound.arguments.items():
        if name in ignore or name in ("self", "cls"):
            continue
        try:
            out[name] = _canonical(value)
        except NotPlain:
            continue
    return out


def digest_plain(values: Mapping[str, str] | Any, size: int = 16) -> str:
    """A stable hex digest (sha256) of a text, or of a plain value's canonical text."""
    text = values if isinstance(values, str) else _canonical(values)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def digest_texts(texts: Mapping[str, str], size: int = 16) -> str:
    """A stable hex digest of argument texts by name (as `plain_arguments` gives them).

    The texts are hashed as they are, each after its name and length, so a large
    argument is encoded once, not again as part of a bigger text.
    """
    h = hashlib.sha256()
    for name in sorted(texts):
        data = texts[name].encode("utf-8", "surrogatepass")
        h.update(f"{name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:size]


def make_key(text: str) -> str:
    """Make any text a run key every store accepts.

    Text that already fits (up to 150 characters of ``a-zA-Z0-9-_.``, not starting
    with a dot) is kept as it is. Other text keeps a readable prefix of its safe
    characters and gets ``!`` and a digest of the whole text appended. Kept text never
    holds a ``!`` and made keys always do, so two different texts never share a key.
    """
    if _SAFE.fullmatch(text) and not text.startswith("."):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    prefix = _UNSAFE.sub("_", text).strip("._")[: _RUN_KEY_MAX - 18] or "run"
    return f"{prefix}!{digest}"


def format_key(
    template: str | Callable[..., str],
    bound: inspect.BoundArguments,
) -> str:
    """Build a run key from ``key=`` (a format string or a callable) and the bound call."""
    if callable(template):
        text = template(*bound.args, **bound.kwargs)
        if not isinstance(text, str):
            raise TypeError(f"key= callable returned {type(text).__name__}, not str")
    else:
        try:
            text = template.format(**bound.arguments)
        except (KeyError, IndexError) as exc:
            raise TypeError(f"key={template!r} names {exc} which is not a parameter of the job") from None
    return make_key(text)
