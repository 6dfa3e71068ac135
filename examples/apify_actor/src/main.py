"""Copy a paginated listing into the run's dataset, exactly once, across migrations.

The job is an async generator that walks the listing page by page and declares a
resume point after each page (`restart_with`); `adrain` pushes its items into the
run's dataset (`DatasetSink`). Inside ``async with Actor:`` resumable keeps the job's
record in the Actor's key-value store and writes it when the platform sends
``migrating``, ``aborting`` or ``persistState``. When the run restarts on another
server, ``listings`` is called again with the saved cursor, and the items the dataset
already holds are not pushed again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from apify import Actor

from resumable import restart_with, resumable
from resumable.apify import DatasetSink
from resumable.sinks import adrain


async def fetch_page(cursor: int, page_size: int, total: int, latency: float) -> dict[str, Any]:
    """One page of a paginated API, simulated: stands in for ``GET /listings?cursor=...``.

    Replace it with your client's call. It returns the page's items and the cursor of
    the next page (``None`` after the last one).
    """
    await asyncio.sleep(latency)
    end = min(cursor + page_size, total)
    items = [{"id": n, "title": f"Listing {n}"} for n in range(cursor, end)]
    return {"items": items, "next": end if end < total else None}


@resumable(key="listings-{total}-{page_size}")
async def listings(
    total: int, page_size: int, latency: float, cursor: int | None = 0
) -> AsyncIterator[dict[str, Any]]:
    """Every listing, one page at a time; a restart resumes at the saved cursor."""
    while cursor is not None:
        page = await fetch_page(cursor, page_size, total, latency)
        for item in page["items"]:
            yield item
        cursor = page["next"]
        restart_with(cursor=cursor)  # a restart calls listings(..., cursor=cursor)


async def main() -> None:
    async with Actor:
        actor_input = await Actor.get_input() or {}
        total = int(actor_input.get("items", 1000))
        page_size = int(actor_input.get("pageSize", 50))
        latency = float(actor_input.get("latencyMs", 100)) / 1000
        job = listings(total, page_size, latency)
        pushed = await adrain(job, DatasetSink(), batch_size=page_size)
        Actor.log.info(f"Pushed {pushed} listings in this run; the dataset holds each listing once.")
