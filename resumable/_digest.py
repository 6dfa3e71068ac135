"""A cheap rolling digest of step names, so the record need not list them.

``fold(d, code) = (d * MULT + code) & MASK``: 64-bit arithmetic, order-sensitive, a
few tens of nanoseconds. It only has to tell a replay that called other steps from the
recorded ones; it is no defence against a forged record (the checksum and the HMAC are
for that). The hot paths inline the same expression with these constants.
"""

from __future__ import annotations

import hashlib

MULT = 1_000_003
MASK = (1 << 64) - 1


def name_code(name: str) -> int:
    """A stable 63-bit code for a step name (computed once per step function)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def fold(digest: int, code: int) -> int:
    """Fold one more step name code into a rolling digest."""
    return (digest * MULT + code) & MASK
