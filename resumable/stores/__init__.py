"""Stores: where run records live. See `Store` for the interface."""

from __future__ import annotations

from resumable.stores._base import RunLock, Store, check_key
from resumable.stores._url import open_store
from resumable.stores.file import FileStore
from resumable.stores.memory import MemoryStore

__all__ = ["FileStore", "MemoryStore", "RunLock", "Store", "check_key", "open_store"]
