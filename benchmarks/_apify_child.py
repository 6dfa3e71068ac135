"""The Actor processes of the Apify rows: ``python -m benchmarks._apify_child --zygote``.

This is tests/apify_child.py, imported as it is (the Actor that tests/test_apify.py
migrates: modes ``resumable`` and ``use_state``, its zygote that imports the SDK once and
forks one Actor process per order), with one mode of the benchmarks' own added:

- ``writes``: a resumable async job of ``@checkpoint`` steps (returning ``None``) that runs
  for ``BENCH_WINDOW`` seconds, each step pausing ``BENCH_STEP_PAUSE`` seconds (``0``: a
  fast job, ``asyncio.sleep(0)`` a step). Every call of ``ApifyStore.aset`` (one billed
  API call on the platform) is timed; the ``finished`` line carries those times, the
  body's start and end, the step count and the flush interval in effect.

The environment is tests/apify_child.py's (``CRAWLEE_STORAGE_DIR``, ``CHILD_WS_URL``,
``CHILD_FLUSH_INTERVAL``, ...); without ``CHILD_FLUSH_INTERVAL`` the Apify default holds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import apify_child  # type: ignore[import-not-found]  # tests/apify_child.py

from resumable import _config, checkpoint, resumable
from resumable.apify import ApifyStore

WRITES_KEY = "bench-writes"


async def main_writes() -> None:
    window = float(os.environ["BENCH_WINDOW"])
    pause = float(os.environ.get("BENCH_STEP_PAUSE", "0"))
    writes: list[tuple[float, str]] = []
    original = ApifyStore.aset

    async def counted(self: ApifyStore, key: str, value: bytes) -> None:
        writes.append((time.time(), key))  # when the write is issued
        await original(self, key, value)

    ApifyStore.aset = counted  # type: ignore[method-assign]

    @checkpoint(name="bench.step")
    async def step(n: int) -> None:
        await asyncio.sleep(pause)

    @resumable(key=WRITES_KEY)
    async def job() -> dict[str, Any]:
        start = time.time()
        deadline = time.monotonic() + window
        n = 0
        while time.monotonic() < deadline:
            await step(n)
            n += 1
        return {"body_start": start, "body_end": time.time(), "steps": n}

    got = await job()
    apify_child.say("finished", writes=writes, interval=_config.resolve_interval(None), **got)


apify_child.MODES["writes"] = main_writes

if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        apify_child.zygote()
    else:
        apify_child.run(sys.argv[1])
