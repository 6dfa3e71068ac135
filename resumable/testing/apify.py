"""Drive the Apify platform's events (``migrating``, ``aborting``...) from a test, offline.

On the platform the SDK reads events from a websocket. `PlatformEvents` serves one on
127.0.0.1, on its own thread, and `use_platform_events` points the SDK's own event
manager at it, so an Actor in this process (or in a child process configured the same
way) receives real ``migrating`` messages, as on the platform::

    with PlatformEvents() as events:
        use_platform_events(events.url)
        async with Actor:
            ...                                  # start the job
            events.send(events.connection(1), MIGRATING)

Needs the ``apify`` extra (the SDK brings ``websockets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

__all__ = ["ABORTING", "MIGRATING", "PlatformEvents", "use_platform_events"]

#: The platform's messages, as the SDK's ApifyEventManager reads them.
MIGRATING: dict[str, Any] = {"name": "migrating", "data": {"timeRemainingSecs": 30}}
ABORTING: dict[str, Any] = {"name": "aborting"}


class PlatformEvents:
    """A websocket server on 127.0.0.1 that sends the platform's event messages.

    It runs on its own thread and event loop, so an Actor on the test's own loop and
    Actors in child processes can all be its clients. Use it as a context manager, or
    call `start` and `close`.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="platform-events", daemon=True)
        self._cond = threading.Condition()
        self.connections: list[Any] = []
        self._server: Any = None
        self.url = ""

    def start(self) -> PlatformEvents:
        """Start serving; `url` is then ``ws://127.0.0.1:PORT``."""
        from websockets.asyncio.server import serve

        self._thread.start()

        async def start() -> Any:
            return await serve(self._handle, "127.0.0.1", 0)

        self._server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, connection: Any) -> None:
        with self._cond:
            self.connections.append(connection)
            self._cond.notify_all()
        await connection.wait_closed()

    def connection(self, number: int, timeout: float = 30) -> Any:
        """The ``number``-th client that connected (1-based), waiting for it.

        Raises:
            TimeoutError: when no such client connects within ``timeout`` seconds.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.connections) >= number, timeout):
                raise TimeoutError(f"no Actor connected to the event websocket within {timeout} s")
            return self.connections[number - 1]

    def send(self, connection: Any, message: dict[str, Any]) -> float:
        """Send one event message; returns the wall-clock time just before sending."""
        sent = time.time()
        asyncio.run_coroutine_threadsafe(connection.send(json.dumps(message)), self.loop).result(10)
        return sent

    def close(self) -> None:
        """Stop serving and end the thread."""

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):  # already closed, or the loop is gone
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> PlatformEvents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def use_platform_events(url: str, *, purge_on_start: bool = False) -> None:
    """Make the next ``async with Actor:`` in this process read events from ``url``.

    It registers a `Configuration` and the SDK's own ``ApifyEventManager`` with
    crawlee's service locator, as the platform's environment would.
    """
    from apify import Configuration
    from apify.events import ApifyEventManager
    from crawlee import service_locator

    config = Configuration(actor_events_ws_url=url, purge_on_start=purge_on_start)
    service_locator.set_configuration(config)
    service_locator.set_event_manager(ApifyEventManager(configuration=config))
