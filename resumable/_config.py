"""Process-wide defaults: the store and the flush interval."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from resumable.stores._base import Store

__all__ = ["configure", "resolve_store"]

_UNSET: Any = object()
T = TypeVar("T")

#: The event loop of the async code that started the current run (set by async job
#: wrappers before they hand blocking work to a thread), for stores whose back end
#: lives on that loop.
LOOP: ContextVar[Any] = ContextVar("resumable_loop", default=None)


@dataclass
class _Defaults:
    store: Store | str | None = None
    flush_interval: float | None = None


_defaults = _Defaults()
_cache: dict[str, Store] = {}
_cache_lock = threading.Lock()

#: Set by `resumable.testing` (and usable by any test harness): while set, every run
#: started in this context uses this store / flush interval, whatever the job names.
STORE_OVERRIDE: ContextVar[Store | None] = ContextVar("resumable_store_override", default=None)
INTERVAL_OVERRIDE: ContextVar[float | None] = ContextVar("resumable_interval_override", default=None)

#: Hooks that may supply a store for the current context (the Apify integration
#: registers one that answers inside ``async with Actor:``).
context_stores: list[Callable[[], Store | None]] = []
#: Hooks that may supply the default flush interval for the current context.
context_intervals: list[Callable[[], float | None]] = []


def configure(*, store: Store | str | None = _UNSET, flush_interval: float | None = _UNSET) -> None:
    """Set process-wide defaults for jobs that do not name their own.

    Args:
        store: A `Store`, or a store URL (``file://PATH``, ``memory://``,
            ``apify://[NAME]``). ``None`` returns to the built-in default.
        flush_interval: Seconds between background writes of progress. ``None``
            returns to the default (1 s; 5 s on Apify).
    """
    if store is not _UNSET:
        if store is not None and not isinstance(store, Store | str):
            raise TypeError(f"store must be a Store or a URL string, not {type(store).__name__}")
        _defaults.store = store
    if flush_interval is not _UNSET:
        _defaults.flush_interval = _check_interval(flush_interval)


def _check_interval(value: float | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"flush_interval must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _from_url(url: str) -> Store:
    from resumable.stores._url import open_store

    if url.startswith("memory"):
        return open_store(url)  # a fresh one each time it is named explicitly
    with _cache_lock:
        store = _cache.get(url)
        if store is None:
            store = _cache[url] = open_store(url)
        return store


def _context_hooks(hooks: list[Callable[[], T]]) -> list[Callable[[], T]]:
    # The Apify integration answers only where the apify SDK is in use; it is imported
    # here, lazily, so that jobs inside `async with Actor:` need no configuration.
    if "apify" in sys.modules and "resumable.apify" not in sys.modules:
        with contextlib.suppress(ImportError):  # a broken apify install: no hooks
            import resumable.apify  # noqa: F401 - registers its hooks
    return list(hooks)


def resolve_store(explicit: Store | str | None) -> Store:
    """Pick the store of a run: explicit, then configure(), the context, the environment."""
    override = STORE_OVERRIDE.get()
    if override is not None:
        return override
    if isinstance(explicit, Store):
        return explicit
    if isinstance(explicit, str):
        return _from_url(explicit)
    if isinstance(_defaults.store, Store):
        return _defaults.store
    if isinstance(_defaults.store, str):
        return _from_url(_defaults.store)
    for hook in _context_hooks(context_stores):
        found = hook()
        if found is not None:
            return found
    env = os.environ.get("RESUMABLE_STORE")
    if env:
        return _from_url(env)
    from resumable.stores.file import default_dir

    return _from_url(f"file://{default_dir()}")


def resolve_interval(explicit: float | None) -> float:
    """Pick the flush interval of a run."""
    override = INTERVAL_OVERRIDE.get()
    if override is not None:
        return override
    if explicit is not None:
        return explicit
    if _defaults.flush_interval is not None:
        return _defaults.flush_interval
    for hook in _context_hooks(context_intervals):
        found = hook()
        if found is not None:
            return found
    return 1.0
