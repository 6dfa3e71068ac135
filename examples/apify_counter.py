"""Apify's counter example, with resumable: one number per run, counting up across runs.

Apify's page on state persistence shows an Actor that "simply counts from one up. In each
run it prints one number", keeping its position in a named key-value store called
``example-counter``. This is that Actor with resumable.

The count is a job that never ends: a generator of 1, 2, 3, ... with a resume point
after each number (`restart_with`). Each Actor run takes numbers from it until its
budget (one number, as in the original) is spent, and stops. The number in hand when it
stops is not done (a generator's item completes when the consumer asks for the next
one), so the next run starts with it. The job's record lives in the named store
``example-counter`` (the store URL ``apify://example-counter``): named stores outlive
the run, on the platform and locally alike, where the SDK purges the default store
each time an Actor starts.

Run it a few times, locally or as an Actor's main::

    python examples/apify_counter.py      # Counter: 1
    python examples/apify_counter.py      # Counter: 2

To start over, delete the ``counter`` record of the ``example-counter`` store (in the
Apify console; locally, in ``storage/key_value_stores/example-counter/``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from apify import Actor

from resumable import restart_with, resumable


@resumable(key="counter", store="apify://example-counter")
async def numbers(start: int = 1) -> AsyncIterator[int]:
    """1, 2, 3, ... without end; a restart continues from the saved ``start``."""
    n = start
    while True:
        yield n
        n += 1
        restart_with(start=n)


async def main(per_run: int = 1) -> None:
    async with Actor:
        taken = 0
        async with contextlib.aclosing(numbers()) as counter:
            async for n in counter:
                if taken == per_run:
                    break  # n is in hand, not done: the next run starts with it
                print(f"Counter: {n}", flush=True)
                await Actor.set_value("OUTPUT", {"counter": n})
                taken += 1


if __name__ == "__main__":
    asyncio.run(main())
