"""Generator jobs (placeholder until implemented)."""

from __future__ import annotations

from typing import Any


def make_gen(job: Any) -> Any:
    raise TypeError("generator jobs are not implemented yet")


make_async_gen = make_gen
