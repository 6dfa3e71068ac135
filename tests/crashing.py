"""Shared by the generator and sink tests: a store that can be frozen at a simulated death."""

from __future__ import annotations

from resumable import MemoryStore


class Boom(Exception):
    pass


class Crash(BaseException):
    """Unwinds a run like a process death (stores are frozen before it is raised)."""


class FreezableStore(MemoryStore):
    """A MemoryStore that can be frozen: every later write and delete is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = False

    def set(self, key: str, value: bytes) -> None:
        if not self.frozen:
            super().set(key, value)

    def delete(self, key: str) -> None:
        if not self.frozen:
            super().delete(key)
