"""An in-process store, for tests and for runs that need no persistence."""

from __future__ import annotations

import threading

from resumable.errors import RunLocked
from resumable.stores._base import RunLock, Store, check_key

__all__ = ["MemoryStore"]


class _MemoryLock:
    def __init__(self, store: MemoryStore, key: str) -> None:
        self._store = store
        self._key = key
        self._held = True

    def release(self) -> None:
        with self._store._mutex:
            if self._held:
                self._held = False
                self._store._locked.discard(self._key)


class MemoryStore(Store):
    """A dict of bytes guarded by a mutex. Locks are per key within the process.

    Everything is lost when the process ends; use it in tests, or where progress
    only needs to survive an exception inside one process.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._locked: set[str] = set()
        self._mutex = threading.Lock()

    def describe(self) -> str:
        return f"MemoryStore(at {id(self):#x})"

    def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        check_key(key)
        if not isinstance(value, bytes):
            raise TypeError(f"store values are bytes, not {type(value).__name__}")
        with self._mutex:
            self._data[key] = value

    def delete(self, key: str) -> None:
        with self._mutex:
            self._data.pop(key, None)

    def keys(self, prefix: str = "") -> list[str]:
        with self._mutex:
            return sorted(k for k in self._data if k.startswith(prefix))

    def lock(self, key: str) -> RunLock:
        check_key(key)
        with self._mutex:
            if key in self._locked:
                raise RunLocked(self.describe(), key)
            self._locked.add(key)
        return _MemoryLock(self, key)
