"""Apify Actors: the run's key-value store, platform events and an exactly-once dataset sink.

Inside ``async with Actor:`` a job that names no store keeps its record in the Actor's
key-value store, and the Actor's events are wired with no configuration:

- ``MIGRATING``: the run's completed progress is written at once; then resumable waits
  (a bounded time, within what the platform gives) for the steps in flight to settle
  and writes again, so the unit in hand is recorded if it completes in time. Only
  completed units are ever written. With ``reboot_on_migration`` the Actor is then
  rebooted, so the run restarts sooner.
- ``ABORTING`` and ``PERSIST_STATE``: the completed progress is written.

Each write is an API call on the platform, so the default flush interval there is 5 s
(`configure`). Jobs that block (plain functions) must not run on the Actor's event
loop, which would stop events from arriving: run them with `run_in_thread`. A blocking
job called on the loop raises `BlockingJobOnLoop`.

Locally, the SDK purges the Actor's default key-value store when the Actor starts
(``CRAWLEE_PURGE_ON_START``, on by default), which would silently lose the progress a
resumed run needs. So off the platform, when purging is on, resumable keeps its
records in the named store ``resumable`` (named stores are not purged) and says so in
the log. On the platform the run's default store survives migrations and is used.

Needs the ``apify`` extra: ``pip install 'resumable[apify]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

from apify import Actor, Event

from resumable import _config
from resumable._log import logger
from resumable.errors import ResumableError, RunLocked
from resumable.sinks import AsyncSink
from resumable.stores._base import RunLock, Store, check_key

__all__ = [
    "ApifyStore",
    "BlockingJobOnLoop",
    "DatasetSink",
    "configure",
    "run_in_thread",
]

P = ParamSpec("P")
R = TypeVar("R")

LOCAL_STORE_NAME = "resumable"
#: The longest key (once URL-quoted) the SDK's local file client can hold: it writes
#: ``QUOTED.__metadata__.json.XXXXXXXX.json.tmp`` within a file name's 255 bytes.
LOCAL_KEY_MAX = 219


class BlockingJobOnLoop(ResumableError, RuntimeError):
    """A blocking (sync) job or store call ran on the Actor's event loop."""


class _Settings:
    flush_interval: float = 5.0
    reboot_on_migration: bool = False
    settle_timeout: float = 2.0


_settings = _Settings()
_UNSET: Any = object()


def configure(
    *,
    flush_interval: float = _UNSET,
    reboot_on_migration: bool = _UNSET,
    settle_timeout: float = _UNSET,
) -> None:
    """Set how resumable behaves inside an Actor.

    Args:
        flush_interval: Default seconds between background writes inside an Actor
            (default 5: each write is a billed API call on the platform). A job's own
            ``flush_interval=`` and `resumable.configure` take precedence.
        reboot_on_migration: After the migration write, call ``Actor.reboot()`` so the
            run restarts sooner, as Apify's docs suggest. Off the platform the SDK
            only logs that it cannot reboot.
        settle_timeout: At most how long, after the first migration write, to wait for
            the steps in flight to complete before writing again (default 2 s; it is
            also capped at half the time the platform says remains).
    """
    if flush_interval is not _UNSET:
        checked = _config._check_interval(flush_interval)
        _settings.flush_interval = 5.0 if checked is None else checked
    if reboot_on_migration is not _UNSET:
        _settings.reboot_on_migration = bool(reboot_on_migration)
    if settle_timeout is not _UNSET:
        if settle_timeout < 0:
            raise ValueError(f"settle_timeout must be >= 0, not {settle_timeout!r}")
        _settings.settle_timeout = float(settle_timeout)


def _actor_active() -> bool:
    return bool(getattr(Actor, "_active", False))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Lock:
    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


_held: set[tuple[str, str]] = set()
_held_mutex = threading.Lock()


class ApifyStore(Store):
    """The Actor's key-value store (the run's default one, or a named one).

    Records are stored as JSON objects (readable in the Apify console); other values
    as ``application/octet-stream``. Keys follow Apify's rules, which resumable's keys
    always do. Use it inside ``async with Actor:``. The synchronous methods run the
    SDK's coroutines on the Actor's event loop from another thread; called on that
    loop's own thread they raise `BlockingJobOnLoop` instead of deadlocking.

    Run locks: within a process, per key. Locally, also an OS file lock beside the
    local storage, so a second local process gets `RunLocked`. On the platform one
    run of an Actor runs at a time (a migration stops the old container before the
    new one starts), so the in-process lock is what applies.

    Args:
        name: A named key-value store (persists across runs). ``None``: the run's
            default store on the platform; locally, the default store unless it is
            purged at start, in which case the named store ``resumable``.
    """

    def __init__(self, name: str | None = None, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self._loop = loop or _config.LOOP.get() or _running_loop()
        self._kvs: Any = None
        self._resolved_name: str | None = None
        self._resolved = False

    def describe(self) -> str:
        shown = self._resolved_name if self._resolved else self.name
        return f"ApifyStore({shown!r})" if shown else "ApifyStore(default)"

    def _effective_name(self) -> str | None:
        if self._resolved:
            return self._resolved_name
        name = self.name
        if name is None and not Actor.is_at_home() and Actor.configuration.purge_on_start:
            name = LOCAL_STORE_NAME
            logger.info(
                "running locally, where the Actor's default key-value store is purged at "
                "start: resumable keeps its records in the named store instead. Set "
                "CRAWLEE_PURGE_ON_START=0 to use the default store.",
                store=name,
            )
        self._resolved_name = name
        self._resolved = True
        return name

    async def _open(self) -> Any:
        if self._kvs is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._kvs = await Actor.open_key_value_store(name=self._effective_name())
        return self._kvs

    def _sync(self, make: Callable[[], Coroutine[Any, Any, R]]) -> R:
        if self._loop is None:  # made before the Actor started: take the loop of the job's caller
            self._loop = _config.LOOP.get()
        loop = self._loop
        if loop is None:
            raise BlockingJobOnLoop(
                "ApifyStore has no event loop: create it, or start the job, inside `async with Actor:`"
            )
        if _running_loop() is loop:
            raise BlockingJobOnLoop(
                "a blocking call reached the Actor's key-value store on the Actor's own event "
                "loop, which would stop platform events (migration) from arriving. Run a "
                "plain-function job with `await resumable.apify.run_in_thread(job, ...)`, or "
                "make the job async."
            )
        return asyncio.run_coroutine_threadsafe(make(), loop).result()

    # -- async ------------------------------------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        kvs = await self._open()
        value = await kvs.get_value(key)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

    def _check(self, key: str) -> str:
        check_key(key)
        if not Actor.is_at_home() and len(quote(key, safe="")) > LOCAL_KEY_MAX:
            raise ValueError(
                f"key {key!r} is too long for the Apify SDK's local storage, which quotes keys "
                f"into file names (at most {LOCAL_KEY_MAX} characters once quoted; each of !'() "
                "counts 3). resumable's own run keys always fit."
            )
        return key

    async def aset(self, key: str, value: bytes) -> None:
        self._check(key)
        if not isinstance(value, bytes):
            raise TypeError(f"store values are bytes, not {type(value).__name__}")
        kvs = await self._open()
        try:
            parsed = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            parsed = None
        if isinstance(parsed, dict):
            await kvs.set_value(key, parsed, content_type="application/json")
        else:
            await kvs.set_value(key, value, content_type="application/octet-stream")

    async def adelete(self, key: str) -> None:
        kvs = await self._open()
        with contextlib.suppress(Exception):  # deleting a missing key is not an error
            await kvs.delete_value(key)

    async def akeys(self, prefix: str = "") -> list[str]:
        kvs = await self._open()
        found = [item.key async for item in kvs.iterate_keys()]
        return sorted(k for k in found if k.startswith(prefix))

    # -- sync -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return self._sync(lambda: self.aget(key))

    def set(self, key: str, value: bytes) -> None:
        self._sync(lambda: self.aset(key, value))

    def delete(self, key: str) -> None:
        self._sync(lambda: self.adelete(key))

    def keys(self, prefix: str = "") -> list[str]:
        return self._sync(lambda: self.akeys(prefix))

    def lock(self, key: str) -> RunLock:
        self._check(key)
        ident = (self._effective_name() or "(default)", key)
        with _held_mutex:
            if ident in _held:
                raise RunLocked(self.describe(), key)
            _held.add(ident)

        def release_memory() -> None:
            with _held_mutex:
                _held.discard(ident)

        if Actor.is_at_home():
            return _Lock(release_memory)
        folder = Path(Actor.configuration.storage_dir) / ".resumable-locks"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"{ident[0]}--{key}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            release_memory()
            raise RunLocked(self.describe(), key) from None

        def release_both() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            release_memory()

        return _Lock(release_both)

    # -- events -----------------------------------------------------------------------

    def attach(self, run: Any) -> Callable[[], None] | None:
        if not _actor_active():
            return None
        loop = self._loop

        async def write(reason: str) -> None:
            started = time.monotonic()
            await run.aflush()
            logger.info(
                "progress written on a platform event",
                key=run.key,
                platform_event=reason,
                seconds=round(time.monotonic() - started, 4),
                done=run.done,
            )

        async def on_migrating(data: Any = None) -> None:
            await write("migrating")
            remaining = getattr(data, "time_remaining", None)
            budget = _settings.settle_timeout
            if isinstance(remaining, dt.timedelta):
                budget = min(budget, remaining.total_seconds() / 2)
            deadline = time.monotonic() + budget
            settled = False
            while run.in_flight() and time.monotonic() < deadline:
                settled = True
                await asyncio.sleep(0.005)
            if settled:
                await write("migrating (after the steps in flight settled)")
            if _settings.reboot_on_migration:
                logger.info("rebooting the Actor after the migration write", key=run.key)
                await Actor.reboot()

        async def on_aborting(data: Any = None) -> None:
            await write("aborting")

        async def on_persist(data: Any = None) -> None:
            if getattr(data, "is_migrating", False):
                return  # the MIGRATING listener writes
            await write("persistState")

        listeners = [
            (Event.MIGRATING, on_migrating),
            (Event.ABORTING, on_aborting),
            (Event.PERSIST_STATE, on_persist),
        ]

        def subscribe() -> None:
            for event, listener in listeners:
                Actor.on(event, listener)

        def unsubscribe() -> None:
            for event, listener in listeners:
                with contextlib.suppress(Exception):
                    Actor.off(event, listener)

        _on_loop(loop, subscribe)
        return lambda: _on_loop(loop, unsubscribe)


def _on_loop(loop: asyncio.AbstractEventLoop | None, func: Callable[[], None]) -> None:
    if loop is None or _running_loop() is loop or loop.is_closed():
        func()
    else:
        loop.call_soon_threadsafe(func)


class DatasetSink(AsyncSink):
    """An Actor's dataset as a counting sink, for `resumable.sinks.adrain`.

    It pushes with ``Dataset.push_data`` and counts with the dataset's metadata
    ``item_count``. What this relies on: the count is exact when read at the start of
    a resumed run. Locally (the file client), the count is written after the item
    files: if the process dies in between, the count is stale and the next push writes
    the same item files again, so with a deterministic generator the dataset still
    holds each item once. On the platform, how fresh ``itemCount`` is right after a
    push is not documented: if it can lag, a resumed run may push again the items of
    the last batch. Where that matters, use small batches, or dedupe downstream on a
    key the items carry.

    Args:
        name: A named dataset; ``None`` for the run's default dataset.
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._dataset: Any = None
        #: True when, locally, the default dataset was found empty with purging on: a
        #: resumed run then cannot find the items it pushed before (see SinkMismatch).
        self.purged = False

    async def _open(self) -> Any:
        if self._dataset is None:
            self._dataset = await Actor.open_dataset(name=self.name)
        return self._dataset

    async def acount(self) -> int:
        dataset = await self._open()
        count = int((await dataset.get_metadata()).item_count)
        if count == 0 and self.name is None and not Actor.is_at_home() and Actor.configuration.purge_on_start:
            self.purged = True
        return count

    async def apush(self, items: list[Any]) -> None:
        dataset = await self._open()
        await dataset.push_data(items)


async def run_in_thread(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking job in a worker thread, with the Actor's store and events wired.

    The Actor's event loop stays free, so ``migrating`` still arrives and is handled
    while the job works.
    """
    _config.LOOP.set(asyncio.get_running_loop())
    return await asyncio.to_thread(func, *args, **kwargs)


_default_stores: dict[int, ApifyStore] = {}


def _context_store() -> Store | None:
    if not _actor_active():
        return None
    loop = _config.LOOP.get() or _running_loop()
    if loop is not None and _running_loop() is loop:
        # A blocking job started on the loop: refuse now, before it blocks the events.
        raise BlockingJobOnLoop(
            "a plain-function job was called on the Actor's event loop, where it would block "
            "platform events (migration). Use `await resumable.apify.run_in_thread(job, ...)` "
            "or make the job async."
        )
    ident = id(getattr(Actor, "__wrapped__", Actor))
    store = _default_stores.get(ident)
    if store is None or store._loop is not loop:
        store = _default_stores[ident] = ApifyStore(loop=loop)
    return store


def _context_interval() -> float | None:
    return _settings.flush_interval if _actor_active() else None


_config.context_stores.append(_context_store)
_config.context_intervals.append(_context_interval)
