"""The store interface: a small key-value store with a per-key run lock."""

from __future__ import annotations

import abc
import asyncio
import re
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["KEY_PATTERN", "MAX_KEY_LENGTH", "RunLock", "Store", "check_key"]

#: Characters allowed in keys: the intersection of Apify's key rules and safe file names.
#: At most 200 characters: within Apify's 256, a file name's 255 bytes, and the 219
#: the Apify SDK's local client can hold once it URL-quotes a key into a file name.
KEY_PATTERN = re.compile(r"[a-zA-Z0-9!\-_.'()]{1,200}")
MAX_KEY_LENGTH = 200


def check_key(key: str) -> str:
    """Return ``key`` if every store can hold it, else raise ``ValueError``.

    Keys are 1 to 200 characters of ``a-zA-Z0-9!-_.'()`` (Apify's rule, with room
    for file names), and are not
    ``.`` or ``..`` nor start with a dot (not a legal or visible file name).
    """
    if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None or key.startswith("."):
        raise ValueError(
            f"{key!r} is not a legal store key: use 1 to 200 characters of "
            "a-zA-Z0-9!-_.'() not starting with '.'; resumable.make_key() builds one "
            "from any text"
        )
    return key


@runtime_checkable
class RunLock(Protocol):
    """A held run lock; ``release()`` gives it up (also on process death)."""

    def release(self) -> None:
        """Release the lock. Calling it twice is harmless."""


class Store(abc.ABC):
    """A key-value store of bytes, with a lock per run key.

    Subclasses implement the synchronous methods; the asynchronous ones default to
    running them in a worker thread. A store whose back end is asynchronous (Apify)
    overrides both sides.
    """

    #: A short description used in messages, such as ``FileStore('/data/.resumable')``.
    def describe(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """Return the value under ``key``, or ``None`` when there is none."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` atomically: readers see the old or the new."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    @abc.abstractmethod
    def keys(self, prefix: str = "") -> list[str]:
        """Return the keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def lock(self, key: str) -> RunLock:
        """Take the run lock of ``key`` at once, or raise `RunLocked`."""

    def attach(self, run: Any) -> Callable[[], None] | None:
        """Called when a run on this store starts; may return a function to detach.

        A store tied to a platform (Apify) wires the platform's events to the run here.
        The default does nothing.
        """
        return None

    def __resumable_key__(self) -> str:
        """A store is where runs live, not what tells them apart: a job that captures one
        is identified by the store's kind only (its runs' keys are the store's own)."""
        return type(self).__qualname__

    def is_locked(self, key: str) -> bool:
        """Tell whether a live run holds ``key`` (a probe that takes and drops the lock)."""
        from resumable.errors import RunLocked

        try:
            held = self.lock(key)
        except RunLocked:
            return True
        held.release()
        return False

    async def aget(self, key: str) -> bytes | None:
        """Asynchronous `get`."""
        return await asyncio.to_thread(self.get, key)

    async def aset(self, key: str, value: bytes) -> None:
        """Asynchronous `set`."""
        await asyncio.to_thread(self.set, key, value)

    async def adelete(self, key: str) -> None:
        """Asynchronous `delete`."""
        await asyncio.to_thread(self.delete, key)

    async def akeys(self, prefix: str = "") -> list[str]:
        """Asynchronous `keys`."""
        return await asyncio.to_thread(self.keys, prefix)

    def __repr__(self) -> str:
        return self.describe()
