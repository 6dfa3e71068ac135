"""Store URLs: ``file://PATH``, ``memory://`` and ``apify://[NAME]``."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from resumable.stores._base import Store

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """Open the store a URL names.

    ``file://PATH`` (relative paths allowed: ``file://.resumable``; absolute:
    ``file:///data/runs``), ``memory://`` (a fresh in-process store) and
    ``apify://`` or ``apify://NAME`` (the Actor's key-value store, or a named one; needs
    the ``apify`` extra). A bare path is taken as a file store.

    Raises:
        ValueError: for a URL of another scheme.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "" and url:
        from resumable.stores.file import FileStore

        return FileStore(url)
    if scheme == "file":
        from resumable.stores.file import FileStore

        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError(f"store URL {url!r} names no directory: use file://PATH")
        return FileStore(path)
    if scheme == "memory":
        from resumable.stores.memory import MemoryStore

        return MemoryStore()
    if scheme == "apify":
        try:
            from resumable.apify import ApifyStore  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ValueError(
                f"store URL {url!r} needs the apify integration: pip install 'resumable[apify]'"
            ) from exc
        store: Store = ApifyStore(name=unquote(parts.netloc + parts.path) or None)
        return store
    raise ValueError(f"unknown store URL {url!r}: use file://PATH, memory:// or apify://[NAME]")
