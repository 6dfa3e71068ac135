"""Stable identities of values: what replay matches a step call by.

A step call's identity must be the same in every process that makes the same call, so
it is computed from values, never from ``hash()`` (salted per process), ``id()`` or a
``repr`` that holds a memory address. `describe` walks a value: plain data (as in run
keys), dataclasses and objects whose attributes are themselves describable are given
by value; functions, classes and modules by their qualified names. What cannot be
described (a lock, a socket, a client holding them) is *opaque*: it is named by its
type only (a class can say what identifies its instances with a method
``__resumable_key__(self)`` returning plain data), and the caller learns which objects
were opaque, so that two calls that differ only in an opaque object can be refused
instead of being told apart by guess.

`args_code` is the cheap change detector of the job's own steps (matched by position):
32 bits of CRC over the ``repr`` of arguments that are all scalars, a 64-bit digest of
their description otherwise. `call_digest` is the identity of a concurrent call
(matched by value): always the 64-bit digest.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import types
import zlib
from collections.abc import Mapping
from typing import Any

import wrapt

from resumable._keys import NotPlain, canonical
from resumable._record import canonical_json

__all__ = ["Description", "args_code", "call_digest", "closure_identity", "describe"]

_SCALARS = frozenset({str, int, float, bool, type(None)})
_MAX_DEPTH = 12
_MASK64 = (1 << 64) - 1


class Description:
    """A value's stable text and the opaque objects in it (by ``id``, kept alive)."""

    __slots__ = ("opaque", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.opaque: list[Any] = []

    def digest(self) -> str:
        text = "\x1f".join(self.parts)
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _walk(value: Any, out: Description, depth: int, seen: set[int]) -> None:
    kind = type(value)
    if kind in _SCALARS:
        try:
            out.parts.append(f"{kind.__name__}:{value!r}")
        except ValueError:  # an int beyond the int-to-text limit
            out.parts.append(
                f"int:{value.bit_length()}:{hashlib.sha256(str(hex(value)).encode()).hexdigest()}"
            )
        return
    if depth > _MAX_DEPTH or id(value) in seen:
        out.parts.append(f"?{kind.__qualname__}")
        out.opaque.append(value)
        return
    try:
        out.parts.append(canonical(value))
        return
    except NotPlain:
        pass
    except (ValueError, RecursionError):
        out.parts.append(f"?{kind.__qualname__}")
        out.opaque.append(value)
        return
    seen = seen | {id(value)}
    if isinstance(value, list | tuple | collections.deque):
        out.parts.append(f"{kind.__qualname__}[{len(value)}")
        for item in value:
            _walk(item, out, depth + 1, seen)
        out.parts.append("]")
        return
    if isinstance(value, Mapping) and kind in (dict, types.MappingProxyType):
        pairs = []
        for k, v in value.items():
            sub = Description()
            _walk(k, sub, depth + 1, seen)
            _walk(v, sub, depth + 1, seen)
            pairs.append(sub)
        pairs.sort(key=lambda d: d.parts)
        out.parts.append(f"{{{len(pairs)}")
        for sub in pairs:
            out.parts.extend(sub.parts)
            out.opaque.extend(sub.opaque)
        out.parts.append("}")
        return
    if isinstance(value, set | frozenset):
        subs = []
        for item in value:
            sub = Description()
            _walk(item, sub, depth + 1, seen)
            subs.append(sub)
        subs.sort(key=lambda d: d.parts)
        out.parts.append(f"set{{{len(subs)}")
        for sub in subs:
            out.parts.extend(sub.parts)
            out.opaque.extend(sub.opaque)
        out.parts.append("}")
        return
    if isinstance(value, types.FunctionType | types.BuiltinFunctionType | type | types.ModuleType):
        name = str(getattr(value, "__qualname__", None) or getattr(value, "__name__", "?"))
        out.parts.append(f"<{getattr(value, '__module__', None) or ''}.{name}>")
        if isinstance(value, types.FunctionType) and "<" in name:
            out.parts.append(code_text(value.__code__))
        return
    if isinstance(value, types.MethodType):
        out.parts.append(f"<method {value.__func__.__qualname__}>")
        _walk(value.__self__, out, depth + 1, seen)
        return
    hook = getattr(kind, "__resumable_key__", None)
    if hook is not None:
        out.parts.append(f"{kind.__module__}.{kind.__qualname__}=")
        _walk(hook(value), out, depth + 1, seen)
        return
    if isinstance(value, wrapt.ObjectProxy):
        _walk(value.__wrapped__, out, depth, seen)  # a decorated function: the one it wraps
        return
    fields = _fields(value)
    if fields is None:
        out.parts.append(f"?{kind.__module__}.{kind.__qualname__}")
        out.opaque.append(value)
        return
    out.parts.append(f"{kind.__module__}.{kind.__qualname__}(")
    for name, field_value in fields:
        out.parts.append(name)
        _walk(field_value, out, depth + 1, seen)
    out.parts.append(")")


def _fields(value: Any) -> list[tuple[str, Any]] | None:
    """The attributes that make up a plain object's value, or None when it has none to show."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    kind = type(value)
    if kind.__module__ == "builtins":
        return None
    attrs: dict[str, Any] = {}
    slots = [s for c in kind.__mro__ for s in getattr(c, "__slots__", ()) if isinstance(s, str)]
    for name in slots:
        if name not in ("__dict__", "__weakref__") and hasattr(value, name):
            attrs[name] = getattr(value, name)
    try:
        attrs.update(vars(value))
    except TypeError:
        if not slots:
            return None
    if not attrs and not slots:
        return None
    return sorted(attrs.items())


def code_text(code: types.CodeType) -> str:
    """A stable text of a code object: what it does, not where it was loaded from."""
    consts = []
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            consts.append(code_text(const))
        else:
            try:
                consts.append(repr(const))
            except ValueError:
                consts.append("?")
    # No line numbers: a job keeps its identity when code above it moves.
    text = f"{code.co_name}|{code.co_code.hex()}|{code.co_names}|{code.co_varnames}|{consts}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def closure_identity(func: Any) -> tuple[str, list[Any]]:
    """What tells apart functions made by one factory (or lambdas in one scope).

    A digest of the function's code (lambdas only: they share one qualified name) and
    of the values it captures; and the captured objects that have no stable identity.
    """
    target = getattr(func, "__func__", func)
    code = getattr(target, "__code__", None)
    out = Description()
    if code is not None and "<lambda>" in getattr(target, "__qualname__", ""):
        out.parts.append(code_text(code))
    for name, cell in zip(
        getattr(code, "co_freevars", ()), getattr(target, "__closure__", None) or (), strict=False
    ):
        out.parts.append(name)
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            out.parts.append("<empty>")
            continue
        _walk(value, out, 0, set())
    return out.digest(), out.opaque


def describe(*values: Any) -> Description:
    """Describe values in order (see the module's docstring)."""
    out = Description()
    for value in values:
        _walk(value, out, 0, set())
    return out


def args_code(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """A change detector of a call's arguments, for steps matched by position.

    Numbers only: their ``hash`` (not salted per process for numbers, unlike text).
    With text: a CRC-32 of their ``repr``. JSON data: a CRC-32 of its canonical text.
    Anything else: the 64-bit digest of their description.
    """
    if not kwargs:
        if not args:
            return 0
        text = False
        for a in args:
            kind = type(a)
            if kind is int or kind is float or kind is bool:
                continue
            if kind is str:
                text = True
                continue
            break
        else:
            if not text:
                return hash(args) & _MASK64
            try:
                return zlib.crc32(repr(args).encode("utf-8", "surrogatepass"))
            except ValueError:  # an int beyond the int-to-text limit
                pass
    try:  # JSON data (a row as a dict): its canonical text, written in C
        return zlib.crc32(canonical_json([args, kwargs]).encode())
    except (TypeError, ValueError, RecursionError):
        pass
    d = describe(args, kwargs)
    return int(d.digest(), 16)


def call_digest(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Description:
    """The description of a call's arguments, the instance of a method first."""
    return describe(instance, args, kwargs)
