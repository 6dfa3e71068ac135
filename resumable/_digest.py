"""A cheap rolling digest of step names, so the record need not list them."""

from __future__ import annotations

import hashlib

_PRIME = (1 << 61) - 1
_MULT = 1_000_003


def name_code(name: str) -> int:
    """A stable 61-bit code for a step name (computed once per step function)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % _PRIME


def fold(digest: int, code: int) -> int:
    """Fold one more step name code into a rolling digest."""
    return (digest * _MULT + code) % _PRIME
