"""A child process that runs an Apify Actor the way the platform does, for tests/test_apify.py.

It is started by the tests, SIGKILLed after a ``migrating`` event, and started again on
the same local storage, as the platform does with a migrated run.

Usage: ``python tests/apify_child.py MODE``; or ``python tests/apify_child.py --zygote``,
which imports everything once and then forks one Actor process per order it reads on
stdin (see `zygote`): importing the SDK takes 2 s on an idle machine and over 10 s on a
loaded one, and the tests start about twenty Actor processes. A forked process is a
real process, killed with SIGKILL like any other; nothing of an Actor exists in the
zygote before it forks. Modes:

- ``resumable``: a resumable async generator job (a paginated source with a small
  per-page latency) drained with ``adrain`` into ``DatasetSink``.
- ``use_state``: the same job written as Apify's docs suggest, with ``Actor.use_state``:
  push an item, then advance a counter; the SDK saves the state on ``migrating``.
- ``example``: examples/apify_actor (its input from the storage's ``INPUT.json``).
- ``counter``: examples/apify_counter.py.
- ``steps``: a resumable async job of ``@checkpoint`` steps that append to a side-effect
  file (``CHILD_EFFECTS``); it stops (exception) at step ``CHILD_FAIL_AT`` if set.

Environment:

- ``CRAWLEE_STORAGE_DIR``: the Actor's local storage (the test's temporary directory).
- ``CHILD_WS_URL``: the test's websocket server, speaking the platform's event protocol.
  Without it the Actor runs as ``apify run`` does on a laptop (``LocalEventManager``).
- ``CHILD_PURGE``: ``1`` keeps the SDK's local default (purge the default storages at
  start); anything else turns purging off, as on the platform, where a migrated run keeps
  its storages.
- ``CHILD_ITEMS``, ``CHILD_PAGE``, ``CHILD_LATENCY``: the source (items, page size,
  seconds per page).
- ``CHILD_DATASET``: the ``resumable`` mode pushes to this named dataset (default: the
  run's default dataset).
- ``CHILD_FLUSH_INTERVAL``: ``resumable.apify.configure(flush_interval=...)`` (default:
  the Apify default, 5 s).
- ``CHILD_EFFECTS``, ``CHILD_FAIL_AT``: the ``steps`` mode's side-effect file and the
  step that raises.

An Actor process writes one JSON object a line to stdout: ``started`` (inside the Actor,
connected to the websocket), then ``finished`` (with what it pushed) or ``failed``.
resumable's log goes to stderr as JSON lines (structlog's JSONRenderer), the SDK's own
log as text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog
from apify import Actor, Configuration
from apify.events import ApifyEventManager
from crawlee import service_locator

from resumable import checkpoint, restart_with, resumable
from resumable.apify import DatasetSink
from resumable.apify import configure as configure_apify
from resumable.sinks import adrain

ITEMS = PAGE = FAIL_AT = 0
LATENCY = 0.0
EFFECTS = Path("effects.txt")


def read_settings() -> None:
    global ITEMS, PAGE, LATENCY, EFFECTS, FAIL_AT
    ITEMS = int(os.environ.get("CHILD_ITEMS", "200"))
    PAGE = int(os.environ.get("CHILD_PAGE", "10"))
    LATENCY = float(os.environ.get("CHILD_LATENCY", "0.02"))
    EFFECTS = Path(os.environ.get("CHILD_EFFECTS", "effects.txt"))
    FAIL_AT = int(os.environ.get("CHILD_FAIL_AT", "-1"))


def say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def setup_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt=None, key="t"),  # UNIX time, comparable with the test's
            structlog.processors.JSONRenderer(),
        ]
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("resumable")
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def setup_actor() -> None:
    if os.environ.get("CHILD_FLUSH_INTERVAL"):
        configure_apify(flush_interval=float(os.environ["CHILD_FLUSH_INTERVAL"]))
    purge = os.environ.get("CHILD_PURGE") == "1"
    ws_url = os.environ.get("CHILD_WS_URL")
    if ws_url:
        cfg = Configuration(actor_events_ws_url=ws_url, purge_on_start=purge)
        service_locator.set_configuration(cfg)
        service_locator.set_event_manager(ApifyEventManager(configuration=cfg))
    else:
        service_locator.set_configuration(Configuration(purge_on_start=purge))


async def fetch_page(cursor: int) -> list[dict[str, Any]]:
    """A paginated source: ``PAGE`` items per call, after ``LATENCY`` seconds."""
    await asyncio.sleep(LATENCY)
    return [{"id": i, "title": f"item {i}"} for i in range(cursor, min(cursor + PAGE, ITEMS))]


@resumable(key="listing")
async def listing(cursor: int = 0) -> Any:
    while cursor < ITEMS:
        page = await fetch_page(cursor)
        for item in page:
            yield item
        cursor += len(page)
        restart_with(cursor=cursor)


async def main_resumable() -> None:
    sink = DatasetSink(name=os.environ.get("CHILD_DATASET") or None)
    pushed = await adrain(listing(), sink, batch_size=5)
    say("finished", pushed=pushed)


async def main_use_state() -> None:
    # As in Apify's docs: the state is saved by the SDK (every persistState, and on
    # migrating); the job pushes an item, then advances its counter.
    state = await Actor.use_state({"cursor": 0})
    pushed = 0
    while state["cursor"] < ITEMS:
        page = await fetch_page(int(state["cursor"]))
        for item in page:
            await Actor.push_data(item)
            pushed += 1
            state["cursor"] = item["id"] + 1
    say("finished", pushed=pushed)


@checkpoint
async def work(n: int) -> int:
    if n == FAIL_AT:
        raise RuntimeError(f"stopped at step {n} on purpose")
    with EFFECTS.open("a") as f:
        f.write(f"{n}\n")
    return n * n


@resumable(key="steps")
async def steps(count: int) -> int:
    return sum([await work(n) for n in range(count)])


async def main_steps() -> None:
    try:
        total = await steps(10)
    except RuntimeError as exc:
        say("failed", error=str(exc))
    else:
        say("finished", total=total)


MODES = {"resumable": main_resumable, "use_state": main_use_state, "steps": main_steps}


async def main(mode: str) -> None:
    async with Actor(exit_process=False):
        say("started", pid=os.getpid())
        await MODES[mode]()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(mode: str) -> None:
    """examples/apify_actor (as ``python -m src`` runs it), or examples/apify_counter.py."""
    if mode == "example":
        sys.path.insert(0, str(EXAMPLES / "apify_actor"))
        from src.main import main as example_main  # type: ignore[import-not-found]
    else:
        sys.path.insert(0, str(EXAMPLES))
        from apify_counter import main as example_main  # type: ignore[import-not-found]

    say("started", pid=os.getpid())
    try:
        asyncio.run(example_main())
    except SystemExit as exc:  # the Actor ends the process when it is done
        if exc.code not in (0, None):
            raise
    say("finished", pushed=None)


def run(mode: str) -> None:
    setup_logging()
    read_settings()
    setup_actor()
    if mode in ("example", "counter"):
        run_example(mode)
    else:
        asyncio.run(main(mode))


def forked(order: dict[str, Any]) -> None:
    """In a child forked by the zygote: take the order's files and environment, run, exit."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.open(order["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(order["err"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's stdout
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(order["cwd"])
    os.environ.update({k: str(v) for k, v in order["env"].items()})
    code = 0
    try:
        run(order["mode"])
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def reap(signum: int, frame: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        say("exit", pid=pid, code=code)


def zygote() -> None:
    """Import once, then fork one Actor process per order read from stdin.

    Orders are JSON lines ``{"mode", "env", "out", "err", "cwd"}``; each forked child
    writes its events (JSON lines) to ``out`` and its log to ``err``. The zygote says
    ``forked`` with the child's pid, and ``exit`` with its exit code (negative: the
    signal that killed it) when it ends.
    """
    signal.signal(signal.SIGCHLD, reap)
    say("warm", pid=os.getpid())
    for line in sys.stdin:
        order = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            forked(order)
        say("forked", pid=pid)


if __name__ == "__main__":
    if sys.argv[1:] == ["--zygote"]:
        zygote()
    else:
        run(sys.argv[1])
