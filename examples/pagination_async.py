"""Resumable pagination, async: httpx.AsyncClient, an async generator job and `adrain`.

Run it with ``python examples/pagination_async.py`` (needs ``httpx``). The same local
catalogue API as ``examples/pagination.py`` (served by this process on 127.0.0.1);
the child consumes it with the async generator job below into a `JsonLinesSink`, is
SIGKILLed part way, runs again, and the output is checked for exactly-once.

The client is not plain data, so it is left out of the run's key on its own: the
resumed run gets the new process's client and the saved cursor::

    @resumable
    async def listings(client, cursor=None):
        while True:
            response = await client.get("/items", params={"cursor": cursor} if cursor else None)
            page = response.raise_for_status().json()
            for item in page["items"]:
                yield item
            cursor = page["next"]
            if cursor is None:
                return
            restart_with(cursor=cursor)
            await asyncio.to_thread(flush)   # durable before the next fetch, off the loop
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from resumable import flush, restart_with, resumable
from resumable.sinks import JsonLinesSink, adrain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pagination import demonstrate, parse_args


@resumable
async def listings(client: httpx.AsyncClient, cursor: str | None = None) -> AsyncIterator[dict[str, Any]]:
    """Every listing of the catalogue, one page at a time."""
    while True:
        response = await client.get("/items", params={"cursor": cursor} if cursor else None)
        page = response.raise_for_status().json()
        for item in page["items"]:
            yield item
        cursor = page["next"]
        if cursor is None:
            return
        restart_with(cursor=cursor)  # a restart calls listings(client, cursor=cursor)
        # flush() waits for the write; a worker thread keeps the event loop free
        # (asyncio.to_thread copies the context, so the run is found there).
        await asyncio.to_thread(flush)


async def child(api: str, out: Path) -> int:
    sink = JsonLinesSink(out)
    try:
        async with httpx.AsyncClient(base_url=api, timeout=30) as client:
            return await adrain(listings(client), sink, batch_size=100)
    finally:
        sink.close()


def child_command(api: str, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", api, str(out)]


def main() -> int:
    args = parse_args()
    if args.child:
        asyncio.run(child(args.child[0], Path(args.child[1])))
        return 0
    title = "async pagination demo (httpx, adrain)"
    return demonstrate(child_command, title, args.items, args.page_size, args.latency)


if __name__ == "__main__":
    sys.exit(main())
