"""resumable on Apify: the real ``apify`` SDK, local file storage, platform events over a websocket.

No network: the platform's event channel is a websocket server on 127.0.0.1 that this
module runs (`EventServer`); the Actor reaches it through the SDK's own
``ApifyEventManager`` (see shared/APIFY.md), so ``migrating``, ``aborting`` and
``persistState`` arrive exactly as on the platform. A migration is played as the platform
plays it: the ``migrating`` message, then SIGKILL, then the same Actor started again on
the same storage (tests/apify_child.py is the Actor).

Storage is a temporary directory per test (``CRAWLEE_STORAGE_DIR``; the SDK reads it, or
``APIFY_LOCAL_STORAGE_DIR`` first). Records and dataset items are read back from its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import json
import logging
import os
import queue
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_stores as contract  # the store contract suite (tests/test_stores.py)
from apify import Actor, Configuration
from apify.events import ApifyEventManager
from apify.storage_clients._apify._alias_resolving import AliasResolver
from crawlee import service_locator
from crawlee.storages import KeyValueStore
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection

import resumable.apify as rapify
from resumable import _config, checkpoint, resumable
from resumable.apify import ApifyStore, BlockingJobOnLoop, run_in_thread
from resumable.testing.apify import PlatformEvents as EventServer

CHILD = Path(__file__).with_name("apify_child.py")
MIGRATING = {"name": "migrating", "data": {"timeRemainingSecs": 30}}
ABORTING = {"name": "aborting"}
PERSIST = {"name": "persistState", "data": {"isMigrating": False}}

#: Numbers measured by the tests in this module, printed at the end (pytest -s).
MEASURED: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_measured() -> Iterator[None]:
    yield
    if MEASURED:
        print("\nresumable on Apify, measured:")
        for name, value in MEASURED.items():
            print(f"  {name}: {value}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.002) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


async def await_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """`wait_for` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.002)


# -- the platform's side: an event websocket ------------------------------------------


@pytest.fixture
def events() -> Iterator[EventServer]:
    server = EventServer().start()
    try:
        yield server
    finally:
        server.close()


# -- local storage, read back from its files ------------------------------------------


def record_file(storage: Path, key: str, store: str = "default") -> Path:
    """Where the SDK's local file client keeps a key's value (the key URL-quoted)."""
    return storage / "key_value_stores" / store / urllib.parse.quote(key, safe="")


def file_stamp(path: Path) -> tuple[int, int] | None:
    """Inode and mtime of a file: the SDK writes by temp file + rename, so each write changes both."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def read_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def dataset_items(storage: Path, name: str = "default") -> list[dict[str, Any]]:
    folder = storage / "datasets" / name
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("__"))
    return [json.loads(p.read_text()) for p in files]


def dataset_files(storage: Path, name: str = "default") -> int:
    folder = storage / "datasets" / name
    try:
        return sum(1 for p in os.scandir(folder) if p.name[0].isdigit())
    except FileNotFoundError:
        return 0


def dataset_count(storage: Path, name: str = "default") -> int:
    """The dataset's ``itemCount`` as its metadata file says (what ``DatasetSink`` counts)."""
    meta = storage / "datasets" / name / "__metadata__.json"
    return int(json.loads(meta.read_text())["item_count"]) if meta.exists() else 0


def duplicates(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


# -- the Actor as a child process -------------------------------------------------------


class Zygote:
    """tests/apify_child.py --zygote: imports the SDK once, forks one Actor process per order."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ("CRAWLEE_STORAGE_DIR", "APIFY_LOCAL_STORAGE_DIR", "CRAWLEE_PURGE_ON_START"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._cond = threading.Condition()
        self._forked: queue.Queue[int] = queue.Queue()
        self.exits: dict[int, int] = {}
        self._warm = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if message["event"] == "warm":
                self._warm.set()
            elif message["event"] == "forked":
                self._forked.put(message["pid"])
            elif message["event"] == "exit":
                with self._cond:
                    self.exits[message["pid"]] = message["code"]
                    self._cond.notify_all()

    def fork(self, mode: str, env: dict[str, Any], workdir: Path, name: str) -> Forked:
        if not self._warm.wait(120):
            pytest.fail("the Actor zygote did not start within 120 s")
        out, err = workdir / f"{name}.out", workdir / f"{name}.log"
        order = {
            "mode": mode,
            "env": {k: str(v) for k, v in env.items()},
            "out": str(out),
            "err": str(err),
            "cwd": str(workdir),
        }
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(order) + "\n")
            self.proc.stdin.flush()
            pid = self._forked.get(timeout=30)
        return Forked(self, pid, out, err)

    def exit_code(self, pid: int, timeout: float) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self.exits, timeout):
                pytest.fail(f"Actor process {pid} did not end within {timeout} s")
            return self.exits[pid]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="session")
def zygote() -> Iterator[Zygote]:
    forker = Zygote()
    try:
        yield forker
    finally:
        forker.close()


class Forked:
    """One Actor process: its events (JSON lines in a file), its log, its end."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path) -> None:
        self.zygote = zygote
        self.pid = pid
        self.out = out
        self.err = err

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def expect(self, event: str, timeout: float = 60) -> dict[str, Any]:
        def said() -> dict[str, Any] | None:
            found = [e for e in self.events() if e["event"] == event]
            if found:
                return found[0]
            if self.pid in self.zygote.exits:
                pytest.fail(f"Actor process ended before {event!r}; its log:\n{self.log_tail()}")
            return None

        return wait_for(said, timeout, f"{event!r} from the Actor process", step=0.005)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert self.zygote.exit_code(self.pid, 30) == -signal.SIGKILL

    def finish(self, event: str = "finished") -> dict[str, Any]:
        line = self.expect(event)
        assert self.zygote.exit_code(self.pid, 60) == 0, self.log_tail()
        return line

    def log(self) -> list[dict[str, Any]]:
        """resumable's log records (JSON lines on stderr; the SDK's own lines are text)."""
        found = []
        for line in self.err.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    found.append(json.loads(line))
        return found

    def logged(self, text: str) -> bool:
        return text in self.err.read_text()

    def log_tail(self) -> str:
        return "\n".join(self.err.read_text().splitlines()[-40:])


class Actors:
    """Start Actor processes for one test (its files under ``tmp_path``)."""

    def __init__(self, zygote: Zygote, workdir: Path) -> None:
        self.zygote = zygote
        self.workdir = workdir
        self.started: list[Forked] = []

    def start(self, mode: str, env: dict[str, Any]) -> Forked:
        child = self.zygote.fork(mode, env, self.workdir, f"actor-{len(self.started)}")
        self.started.append(child)
        return child

    def close(self) -> None:
        for child in self.started:
            if child.pid not in self.zygote.exits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)


@pytest.fixture
def actors(zygote: Zygote, tmp_path: Path) -> Iterator[Actors]:
    started = Actors(zygote, tmp_path)
    try:
        yield started
    finally:
        started.close()


# -- the Actor in this process ----------------------------------------------------------


def reset_sdk() -> None:
    """Forget the SDK's process-wide services, so that each test starts its own Actor."""
    if hasattr(Actor, "__wrapped__"):
        with contextlib.suppress(AttributeError):
            delattr(Actor, "__wrapped__")
    service_locator._configuration = None
    service_locator._event_manager = None
    service_locator._storage_client = None
    service_locator.storage_instance_manager.clear_cache()
    KeyValueStore._autosaved_values.clear()
    AliasResolver._alias_map = {}
    AliasResolver._alias_map_loaded = False
    AliasResolver._alias_init_lock = None
    rapify._default_stores.clear()


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean SDK, local storage in ``tmp_path/storage``, resumable's Apify settings restored after."""
    storage = tmp_path / "storage"
    monkeypatch.setenv("CRAWLEE_STORAGE_DIR", str(storage))
    monkeypatch.setenv("APIFY_LOCAL_STORAGE_DIR", str(storage))
    monkeypatch.delenv("CRAWLEE_PURGE_ON_START", raising=False)
    monkeypatch.delenv("APIFY_PURGE_ON_START", raising=False)
    saved = dict(vars(rapify._settings))
    _config.configure(store=None, flush_interval=None)
    reset_sdk()
    try:
        yield storage
    finally:
        for name in ("flush_interval", "reboot_on_migration", "settle_timeout"):
            if name in saved:
                setattr(rapify._settings, name, saved[name])
            else:
                with contextlib.suppress(AttributeError):
                    delattr(rapify._settings, name)
        reset_sdk()


def platform_actor(server: EventServer | None, *, purge: bool = False, listeners_timeout: float = 5) -> Any:
    """An Actor wired as on the platform: the SDK's ApifyEventManager on our websocket.

    ``purge=False`` as on the platform (a migrated run keeps its storages). The SDK's
    logging setup is skipped so that its records reach pytest's ``caplog``.
    """
    if server is None:
        cfg = Configuration(purge_on_start=purge)
    else:
        cfg = Configuration(actor_events_ws_url=server.url, purge_on_start=purge)
        service_locator.set_event_manager(ApifyEventManager(configuration=cfg))
    service_locator.set_configuration(cfg)
    return Actor(
        exit_process=False,
        configure_logging=False,
        event_listeners_timeout=dt.timedelta(seconds=listeners_timeout),
    )


# -- a migration, played as the platform plays it ---------------------------------------

ITEMS = 200  # items of the paginated source in the child (pages of 10, 20 ms a page)
ROUNDS = 5


def child_env(storage: Path, server: EventServer | None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "CRAWLEE_STORAGE_DIR": storage,
        "CHILD_ITEMS": ITEMS,
        "CHILD_PAGE": 10,
        "CHILD_LATENCY": 0.02,
        **extra,
    }
    if server is not None:
        env["CHILD_WS_URL"] = server.url
    return env


def metadata_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.__metadata__.json")


def run_with_migrations(
    actors: Actors,
    server: EventServer,
    storage: Path,
    mode: str,
    moments: list[int],
    saved: Path,
    logged: str | None = None,
) -> dict[str, Any]:
    """Run ``mode`` in an Actor process and migrate it at each of ``moments``, then let it finish.

    A migration: once the dataset holds ``moment`` item files, send ``migrating``; wait
    until ``saved`` (where the job saves its progress) is written, value and metadata
    (the SDK writes them one after the other), and, with ``logged``, until the Actor's log
    says so; SIGKILL the process; start it again on the same storage.
    """
    env = child_env(storage, server)
    kills: list[dict[str, Any]] = []
    for moment in moments:
        clients = len(server.connections)
        child = actors.start(mode, env)
        child.expect("started")
        connection = server.connection(clients + 1)
        target = max(moment, dataset_files(storage) + 1)
        wait_for(lambda: dataset_files(storage) >= target, 60, f"{target} items in the dataset")
        before = (file_stamp(saved), file_stamp(metadata_file(saved)))
        sent = server.send(connection, MIGRATING)
        wait_for(lambda: file_stamp(saved) != before[0], 10, f"{saved.name} written after migrating")
        seen = time.time() - sent
        wait_for(
            lambda: file_stamp(metadata_file(saved)) != before[1], 10, f"{saved.name}'s metadata written"
        )
        if logged is not None:  # the Actor's log line comes after the write
            wait_for(lambda: child.logged(logged), 10, f"the Actor's log: {logged}")
        child.kill()
        kills.append(
            {
                "moment": target,
                "sent": sent,
                "seen": seen,
                "count": dataset_count(storage),
                "files": dataset_files(storage),
                "saved": saved.read_text(),
                "log": child.log(),
            }
        )
    last = actors.start(mode, env)
    finished = last.finish()
    return {
        "kills": kills,
        "pushed_after": finished["pushed"],
        "last": last,
        "ids": [item["id"] for item in dataset_items(storage)],
        "last_log": last.log(),
    }


def random_moments(rng: random.Random, count: int | None = None) -> list[int]:
    """One or two (or ``count``) moments to migrate at, item counts spread over the run."""
    return sorted(rng.sample(range(10, ITEMS - 50, 5), count or rng.choice([1, 2])))


def test_migration_then_sigkill_resumes_with_every_item_once(
    tmp_path: Path, events: EventServer, actors: Actors
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    latencies: list[float] = []
    seen: list[float] = []
    for round_ in range(ROUNDS):
        storage = tmp_path / f"round{round_}"
        got = run_with_migrations(
            actors,
            events,
            storage,
            "resumable",
            random_moments(rng),
            record_file(storage, "listing"),
            logged='"platform_event": "migrating"',
        )
        where = f"seed {seed}, round {round_}: {[(k['moment'], k['count']) for k in got['kills']]}"
        # Every item exactly once, in order.
        assert got["ids"] == list(range(ITEMS)), where
        assert dataset_count(storage) == ITEMS, where
        # The last start resumed: it pushed only what the dataset did not hold at the kill.
        assert got["pushed_after"] == ITEMS - got["kills"][-1]["count"], where
        for kill in got["kills"]:
            assert kill["count"] < ITEMS, where
            # What migrating wrote: a running record whose sink count the dataset had
            # reached (``moment`` counts item files, which include a batch of 5 in flight).
            record = json.loads(kill["saved"])
            assert record["status"] == "running", where
            assert kill["moment"] - 5 <= record["items"]["sink"] <= kill["count"], where
            written = [e for e in kill["log"] if e["event"] == "progress written on a platform event"]
            assert [e["platform_event"] for e in written] == ["migrating"], where
            latencies.append(written[0]["t"] - kill["sent"])
            seen.append(kill["seen"])
        resumed = [e for e in got["last_log"] if e["event"] == "run resumed"]
        assert len(resumed) == 1, where
        assert resumed[0]["store"] == "ApifyStore(default)", where
    MEASURED["migrating -> record written (Actor's log), s"] = latencies
    MEASURED["migrating -> record file seen by the test, s"] = seen
    print(f"\nseed {seed}; migrating -> written: {[round(x, 4) for x in latencies]}")
    # Goal: under 1 s on the local client (the platform gave 30 s here).
    assert statistics.median(latencies) < 1.0, latencies
    assert max(latencies) < 5.0, latencies


USE_STATE_ROUNDS = 7  # two migrations each: 14 chances for the race


def test_use_state_duplicates_items_where_resumable_does_not(
    tmp_path: Path, events: EventServer, actors: Actors
) -> None:
    """The same job, written with ``Actor.use_state`` as in Apify's docs, loses the race.

    The SDK saves the state when ``migrating`` arrives, whatever the job is doing: an item
    pushed (or being pushed) before the counter that covers it is saved is pushed again
    after the restart. The job does nothing wrong by the docs; the save is simply not
    tied to completed work. Whether a given migration lands in such a window is a matter
    of timing: the job spends part of its time waiting for pages, and a migration then
    loses nothing. Here 28 of 42 migrations (3 runs of this test) gave one duplicate
    each. So the assertion is on the aggregate over the 14 migrations of a run (all 14
    missing the window: about 1 in 10^7 at that rate). Each round also runs the
    resumable version at the same moments, which must show no duplicate at all, in
    every round.
    """
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    rounds: list[dict[str, Any]] = []
    for round_ in range(USE_STATE_ROUNDS):
        moments = random_moments(rng, 2)
        row: dict[str, Any] = {"moments": moments}
        for mode, saved_key, logged in (
            ("use_state", "APIFY_GLOBAL_STATE", None),
            ("resumable", "listing", '"platform_event": "migrating"'),
        ):
            storage = tmp_path / f"{mode}{round_}"
            got = run_with_migrations(
                actors, events, storage, mode, moments, record_file(storage, saved_key), logged
            )
            # Nothing is lost either way: every item is in the dataset at least once.
            assert set(got["ids"]) == set(range(ITEMS)), (seed, round_, mode)
            row[mode] = duplicates(got["ids"])
        rounds.append(row)
    MEASURED["use_state vs resumable duplicates per round"] = rounds
    print(f"\nseed {seed}; duplicates per round: {rounds}")
    assert all(row["resumable"] == 0 for row in rounds), rounds
    assert sum(row["use_state"] for row in rounds) >= 1, rounds


def test_example_actor_survives_migrations_with_each_listing_once(
    tmp_path: Path, events: EventServer, actors: Actors
) -> None:
    """examples/apify_actor, migrated twice at random moments as the platform would."""
    storage = tmp_path / "storage"
    default = storage / "key_value_stores" / "default"
    default.mkdir(parents=True)
    (default / "INPUT.json").write_text(json.dumps({"items": ITEMS, "pageSize": 10, "latencyMs": 20}))
    moments = sorted(random.sample(range(10, ITEMS - 50, 10), 2))
    got = run_with_migrations(
        actors,
        events,
        storage,
        "example",
        moments,
        record_file(storage, f"listings-{ITEMS}-10"),
        logged='"platform_event": "migrating"',
    )
    assert got["ids"] == list(range(ITEMS)), moments
    pushed = re.findall(r"Pushed (\d+) listings in this run", got["last"].err.read_text())
    assert pushed == [str(ITEMS - got["kills"][-1]["count"])], moments
    titles = [item["title"] for item in dataset_items(storage)]
    assert titles[:2] == ["Listing 0", "Listing 1"]


def test_counter_example_counts_one_up_per_run_in_its_named_store(tmp_path: Path, actors: Actors) -> None:
    """examples/apify_counter.py, run three times locally, with the SDK's default purge."""
    storage = tmp_path / "storage"
    output = record_file(storage, "OUTPUT")
    for expected in (1, 2, 3):
        run = actors.start("counter", {"CRAWLEE_STORAGE_DIR": storage, "CHILD_PURGE": 1})
        run.finish()
        printed = [line for line in run.out.read_text().splitlines() if line.startswith("Counter:")]
        assert printed == [f"Counter: {expected}"]
        assert json.loads(output.read_text()) == {"counter": expected}
    record = read_record(record_file(storage, "counter", store="example-counter"))
    assert record["status"] == "running"  # the count never ends
    assert record["items"]["before"] == 3  # three numbers done, one a run


# -- ApifyStore passes the store contract -----------------------------------------------


class ActorThread:
    """An Actor entered on the event loop of a thread of its own.

    This is how a synchronous caller sees an Actor: the store's blocking methods hand
    their work to that loop. The contract tests are such callers.
    """

    def __init__(self, purge: bool) -> None:
        self.purge = purge
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="actor-loop", daemon=True)
        self._actor: Any = None

    def __enter__(self) -> asyncio.AbstractEventLoop:
        self._thread.start()

        async def enter() -> None:
            self._actor = platform_actor(None, purge=self.purge)
            await self._actor.__aenter__()

        asyncio.run_coroutine_threadsafe(enter(), self.loop).result(30)
        return self.loop

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._actor.__aexit__(None, None, None), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


STORE_KINDS = {
    # (purge at start, store name): the run's default store, as on the platform; and
    # the local default, where purging makes ApifyStore(None) use the named store
    # "resumable" (so this one covers named stores).
    "default": (False, None),
    "local-purged": (True, None),
}


@pytest.fixture(params=sorted(STORE_KINDS))
def store(request: pytest.FixtureRequest, sdk: Path) -> Iterator[ApifyStore]:
    """Overrides tests/test_stores.py's ``store`` for the contract tests imported below."""
    purge, name = STORE_KINDS[request.param]
    with ActorThread(purge) as loop:
        yield ApifyStore(name, loop=loop)


def _xfail(test: Callable[..., Any], reason: str) -> Callable[..., Any]:
    # A new function, so that the mark does not reach the original in tests/test_stores.py.
    @functools.wraps(test)
    def known_bug(*args: Any, **kwargs: Any) -> Any:
        return test(*args, **kwargs)

    return pytest.mark.xfail(strict=True, reason=reason)(known_bug)


CONTRACT_BUGS: dict[str, str] = {}  # contract tests ApifyStore is known to fail: none

# The contract: every test of tests/test_stores.py that takes the ``store`` fixture, run
# here against ApifyStore (the fixture above), under the same names.
for _name, _test in vars(contract).items():
    if _name.startswith("test_") and "store" in inspect.signature(_test).parameters:
        globals()[_name] = _xfail(_test, CONTRACT_BUGS[_name]) if _name in CONTRACT_BUGS else _test


# -- platform events reach a run in this process ------------------------------------------


def platform_writes(logs: list[dict[str, Any]]) -> list[str]:
    """The platform events that resumable's log says it wrote progress on."""
    return [e["platform_event"] for e in logs if e["event"] == "progress written on a platform event"]


def last_connection(server: EventServer) -> ServerConnection:
    assert server.connections, "the Actor is not connected to the event websocket"
    return server.connections[-1]


async def test_aborting_and_persist_state_write_the_record(
    sdk: Path, events: EventServer, caplog: pytest.LogCaptureFixture
) -> None:
    rapify.configure(flush_interval=60)  # no background write while the test runs
    reached, release = asyncio.Event(), asyncio.Event()

    @checkpoint
    async def step(n: int) -> int:
        if n == 2:
            reached.set()
            await release.wait()
        return n * 10

    @resumable(key="events-job")
    async def job() -> list[int]:
        return [await step(n) for n in range(3)]

    path = record_file(sdk, "events-job")
    async with platform_actor(events):
        task = asyncio.create_task(job())
        await reached.wait()
        assert file_stamp(path) is None  # nothing written yet: the interval is 60 s

        with capture_logs() as logs:
            events.send(last_connection(events), ABORTING)
            await await_for(lambda: file_stamp(path), 5, "the record written on aborting")
            first = read_record(path)
            assert first["status"] == "running"
            assert first["units"]["done"] == 2  # the two completed steps, not the one in hand

            stamp = file_stamp(path)
            events.send(last_connection(events), PERSIST)
            await await_for(lambda: file_stamp(path) != stamp, 5, "the record written on persistState")
            second = read_record(path)
            assert second["updated"] > first["updated"]
            assert second["units"]["done"] == 2
            await await_for(lambda: len(platform_writes(logs)) >= 2, 5, "two log records")
        release.set()
        assert await task == [0, 10, 20]
    assert platform_writes(logs) == ["aborting", "persistState"]
    assert read_record(path)["status"] == "finished"


async def test_migrating_writes_completed_units_then_the_unit_in_hand(sdk: Path, events: EventServer) -> None:
    """The first write holds only completed steps; the step in flight is written once it completes."""
    rapify.configure(flush_interval=60, settle_timeout=0.5)
    reached = [asyncio.Event() for _ in range(3)]
    release = [asyncio.Event() for _ in range(3)]

    @checkpoint
    async def step(n: int) -> int:
        if n in (1, 2):
            reached[n].set()
            await release[n].wait()
        return n

    @resumable(key="settle-job")
    async def job() -> int:
        return sum([await step(n) for n in range(3)])

    path = record_file(sdk, "settle-job")
    async with platform_actor(events):
        task = asyncio.create_task(job())
        await reached[1].wait()
        with capture_logs() as logs:
            events.send(last_connection(events), MIGRATING)
            await await_for(lambda: file_stamp(path), 5, "the first write on migrating")
            assert read_record(path)["units"]["done"] == 1  # step 1 is in flight: not written
            stamp = file_stamp(path)
            release[1].set()  # the unit in hand completes within the settle time...
            await await_for(lambda: file_stamp(path) != stamp, 5, "the write after it settled")
            assert read_record(path)["units"]["done"] == 2  # ...and is written too
            await await_for(lambda: len(platform_writes(logs)) >= 2, 5, "two log records")
            assert reached[2].is_set()  # step 2 is in flight (done == 2 above: not written)
            assert not release[2].is_set()
        release[2].set()
        assert await task == 3
    assert platform_writes(logs) == ["migrating", "migrating (after the steps in flight settled)"]
    assert read_record(path)["status"] == "finished"


async def test_a_run_that_ends_during_the_settle_wait_still_reboots(
    sdk: Path, events: EventServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the listener used to wait forever on the ended run's flusher (no reboot,
    and the Actor's exit waited for the listener until its timeout)."""
    rapify.configure(flush_interval=60, settle_timeout=10, reboot_on_migration=True)
    reached, release = asyncio.Event(), asyncio.Event()

    @checkpoint
    async def step(n: int) -> int:
        if n == 1:
            reached.set()
            await release.wait()
        return n

    @resumable(key="ends-while-settling")
    async def job() -> int:
        return sum([await step(n) for n in range(2)])

    path = record_file(sdk, "ends-while-settling")
    with caplog.at_level(logging.WARNING, logger="apify"):
        async with platform_actor(events, listeners_timeout=1):  # the SDK's default: 5 s
            task = asyncio.create_task(job())
            await reached.wait()
            with capture_logs() as logs:
                events.send(last_connection(events), MIGRATING)
                # Logged after the first write, right before the listener starts waiting
                # (with no await in between) for the steps in flight to settle.
                await await_for(lambda: platform_writes(logs), 5, "the first write on migrating")
            release.set()  # the job ends while the listener waits for step 1 to settle
            assert await task == 1
            assert read_record(path)["status"] == "finished"
            started = time.monotonic()
        exit_took = time.monotonic() - started
    rebooted = [r for r in caplog.records if r.name == "apify" and "reboot" in r.getMessage()]
    assert rebooted, "Actor.reboot() was never called"
    assert exit_took < 0.8  # the SDK waits up to 1 s (here) for listeners, then cancels them


@pytest.mark.parametrize("reboot", [True, False], ids=["reboot_on_migration", "default"])
async def test_reboot_on_migration_calls_actor_reboot_after_the_write(
    sdk: Path, events: EventServer, caplog: pytest.LogCaptureFixture, reboot: bool
) -> None:
    if reboot:
        rapify.configure(reboot_on_migration=True)
    rapify.configure(flush_interval=60, settle_timeout=0)
    path = record_file(sdk, "reboot-job")
    at_reboot: list[tuple[int, int] | None] = []

    class AtReboot(logging.Handler):
        """Notes whether the record was written when the SDK's reboot() ran."""

        def emit(self, record: logging.LogRecord) -> None:
            if "reboot" in record.getMessage():
                at_reboot.append(file_stamp(path))

    handler = AtReboot()
    logging.getLogger("apify").addHandler(handler)
    reached, release = asyncio.Event(), asyncio.Event()

    @checkpoint
    async def step(n: int) -> int:
        if n == 1:
            reached.set()
            await release.wait()
        return n

    @resumable(key="reboot-job")
    async def job() -> int:
        return sum([await step(n) for n in range(2)])

    try:
        with caplog.at_level(logging.WARNING, logger="apify"):
            async with platform_actor(events):
                task = asyncio.create_task(job())
                await reached.wait()
                with capture_logs() as logs:
                    events.send(last_connection(events), MIGRATING)
                    await await_for(lambda: file_stamp(path), 5, "the write on migrating")
                    if reboot:
                        await await_for(lambda: at_reboot, 5, "Actor.reboot() to be called")
                    else:
                        await await_for(lambda: platform_writes(logs), 5, "the migration's log record")
                release.set()
                await task
    finally:
        logging.getLogger("apify").removeHandler(handler)
    warnings = [r.getMessage() for r in caplog.records if r.name == "apify" and "reboot" in r.getMessage()]
    if reboot:
        # Off the platform the SDK's Actor.reboot() logs this warning and does nothing.
        assert warnings == ["Actor.reboot() is only supported when running on the Apify platform."]
        assert at_reboot[0] is not None  # the record was already written when reboot() ran
        assert any(e["event"] == "rebooting the Actor after the migration write" for e in logs)
    else:
        assert warnings == []
        assert not any("reboot" in e["event"] for e in logs)


async def test_sync_job_in_run_in_thread_receives_a_migration(sdk: Path, events: EventServer) -> None:
    rapify.configure(flush_interval=60, settle_timeout=0)
    blocked, release = threading.Event(), threading.Event()
    ran: list[int] = []

    @checkpoint
    def step(n: int) -> int:
        ran.append(n)
        if n == 2:
            blocked.set()
            assert release.wait(30)
        return n

    @resumable(key="sync-job")
    def sync_job() -> list[int]:
        return [step(n) for n in range(3)]

    path = record_file(sdk, "sync-job")
    async with platform_actor(events):
        task = asyncio.create_task(run_in_thread(sync_job))
        await await_for(blocked.is_set, 10, "the job to block in its long step")
        with capture_logs() as logs:
            sent = events.send(last_connection(events), MIGRATING)
            await await_for(lambda: file_stamp(path), 5, "the record written on migrating")
            took = time.time() - sent
            record = read_record(path)
            await await_for(lambda: platform_writes(logs), 5, "the migration's log record")
        assert record["status"] == "running"
        assert record["units"]["done"] == 2  # written while the job is blocked in step 2
        assert not release.is_set()  # still blocked in step 2
        release.set()
        assert await task == [0, 1, 2]
    assert ran == [0, 1, 2]
    assert platform_writes(logs) == ["migrating"]
    assert read_record(path)["status"] == "finished"
    MEASURED["migrating -> record written, sync job in run_in_thread, s"] = took


async def test_sync_job_called_on_the_actor_loop_raises_blocking_job_on_loop(
    sdk: Path, events: EventServer
) -> None:
    ran: list[int] = []

    @resumable(key="blocking-job")
    def blocking_job() -> int:
        ran.append(1)
        return 1

    async with platform_actor(events):
        with pytest.raises(BlockingJobOnLoop, match="run_in_thread"):
            blocking_job()
        assert await run_in_thread(blocking_job) == 1  # the supported way works
    assert ran == [1]  # the body never ran on the loop
    assert read_record(record_file(sdk, "blocking-job"))["status"] == "finished"


# -- local runs: the SDK purges the default store at start ----------------------------------


def test_local_run_with_the_default_purge_resumes_from_the_named_store(
    tmp_path: Path, actors: Actors
) -> None:
    """As under ``apify run`` on a laptop: no platform, purging on (the SDK's local default)."""
    storage = tmp_path / "storage"
    effects = tmp_path / "effects.txt"
    env = {"CRAWLEE_STORAGE_DIR": storage, "CHILD_PURGE": 1, "CHILD_EFFECTS": effects}
    first = actors.start("steps", {**env, "CHILD_FAIL_AT": 6})
    assert "step 6" in first.finish("failed")["error"]
    assert effects.read_text().split() == [str(n) for n in range(6)]
    record = read_record(record_file(storage, "steps", store="resumable"))
    # Steps 0-5 completed; step 6 raised: a hole, run again on resume.
    assert (record["status"], record["units"]["done"], list(record["holes"])) == ("running", 7, ["6"])
    # Something in the default store, to see that the next start really purges it.
    default = storage / "key_value_stores" / "default"
    (default / "marker").write_text("{}")
    (default / "marker.__metadata__.json").write_text(
        json.dumps({"key": "marker", "content_type": "application/json", "size": 2})
    )

    second = actors.start("steps", env)
    assert second.finish()["total"] == sum(n * n for n in range(10))
    assert not (default / "marker").exists()  # the SDK purged the default store...
    assert effects.read_text().split() == [str(n) for n in range(10)]  # ...and the run resumed
    for child in (first, second):
        said = [e for e in child.log() if "purged" in e["event"]]
        assert len(said) == 1
        assert said[0]["store"] == "resumable"
        assert "CRAWLEE_PURGE_ON_START=0" in said[0]["event"]
    resumed = [e for e in second.log() if e["event"] == "run resumed"]
    assert [(e["store"], e["done"]) for e in resumed] == [("ApifyStore('resumable')", 7)]


def test_local_run_with_the_default_purge_names_the_purged_dataset(tmp_path: Path, actors: Actors) -> None:
    """Locally with purging on, the default dataset is emptied at start: a resumed run cannot
    find what it pushed. It stops, saying why and what to do, instead of pushing again."""
    storage = tmp_path / "storage"
    env = child_env(storage, None, CHILD_PURGE=1, CHILD_FLUSH_INTERVAL=0.05)
    first = actors.start("resumable", env)
    first.expect("started")
    record = record_file(storage, "listing", store="resumable")
    wait_for(
        lambda: record.exists() and read_record(record)["items"]["sink"] >= 20, 60, "a record with 20 items"
    )
    first.kill()
    second = actors.start("resumable", env)
    assert second.zygote.exit_code(second.pid, 60) == 1
    error = second.err.read_text()
    assert "SinkMismatch" in error
    assert "purged" in error
    assert "DatasetSink(name=...)" in error
    assert "CRAWLEE_PURGE_ON_START=0" in error
    assert dataset_count(storage) == 0  # nothing pushed again


def test_local_run_with_the_default_purge_resumes_into_a_named_dataset(
    tmp_path: Path, actors: Actors
) -> None:
    """The remedy the error names: a named dataset, which the purge leaves alone."""
    storage = tmp_path / "storage"
    env = child_env(storage, None, CHILD_PURGE=1, CHILD_FLUSH_INTERVAL=0.05, CHILD_DATASET="listings")
    first = actors.start("resumable", env)
    first.expect("started")
    record = record_file(storage, "listing", store="resumable")
    wait_for(
        lambda: record.exists() and read_record(record)["items"]["sink"] >= 20, 60, "a record with 20 items"
    )
    first.kill()
    held = dataset_count(storage, "listings")
    assert actors.start("resumable", env).finish()["pushed"] == ITEMS - held
    assert [item["id"] for item in dataset_items(storage, "listings")] == list(range(ITEMS))


# -- exactly once without any event: a crash before the first interval write -------------


def test_sigkill_with_no_event_before_any_interval_write_pushes_no_item_twice(
    tmp_path: Path, actors: Actors
) -> None:
    """A crash (OOM kill) sends no event. The record holds only the sink's baseline, written
    before the first push; the dataset already holds items the record does not count."""
    storage = tmp_path / "storage"
    env = child_env(storage, None, CHILD_FLUSH_INTERVAL=60)  # no event, no interval write
    first = actors.start("resumable", env)
    first.expect("started")
    wait_for(lambda: dataset_count(storage) >= 20, 60, "20 items in the dataset")
    first.kill()
    record = read_record(record_file(storage, "listing"))
    assert record["items"] == {"before": 0, "done": 0, "sink": 0}  # the baseline, nothing more
    held = dataset_count(storage)
    last = actors.start("resumable", env)
    assert last.finish()["pushed"] == ITEMS - held  # the items the dataset held were skipped
    ids = [item["id"] for item in dataset_items(storage)]
    assert duplicates(ids) == 0, f"{duplicates(ids)} items pushed twice"
    assert ids == list(range(ITEMS))
    assert any(e["event"].startswith("sink reconciled") and e["skip"] == held for e in last.log())


# -- what writing costs: store writes are bounded by the flush interval -------------------


async def test_default_flush_interval_is_longer_inside_an_actor(sdk: Path) -> None:
    assert _config.resolve_interval(None) == 1.0
    async with platform_actor(None):
        assert _config.resolve_interval(None) == 5.0  # each write is a billed API call
        assert _config.resolve_interval(0.25) == 0.25  # a job's own setting wins
        rapify.configure(flush_interval=30)
        assert _config.resolve_interval(None) == 30.0
    assert _config.resolve_interval(None) == 1.0


async def test_store_writes_are_bounded_by_the_flush_interval(
    sdk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval, duration = 0.5, 3.0
    rapify.configure(flush_interval=interval)
    writes: list[float] = []
    original = ApifyStore.aset

    async def counted(self: ApifyStore, key: str, value: bytes) -> None:
        if key == "fast-job":  # the head: one per write (chunks ride along)
            writes.append(time.monotonic())
        await original(self, key, value)

    monkeypatch.setattr(ApifyStore, "aset", counted)

    @checkpoint
    async def step(n: int) -> None:
        await asyncio.sleep(0)  # a fast step that still lets the loop breathe

    @resumable(key="fast-job")
    async def job() -> int:
        n = 0
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            await step(n)
            n += 1
        return n

    async with platform_actor(None):
        started = time.monotonic()
        steps = await job()
        took = time.monotonic() - started
    # Interval writes while dirty, plus the final write; one more for timer alignment.
    assert len(writes) <= took / interval + 2, (len(writes), took)
    # And it does write while the job runs. Not every 0.5 s: a write hops between the
    # flusher thread, the loop and the SDK's file threads, and a CPU-bound job on the loop
    # holds the GIL, so each write takes from tens of ms to a few hundred here.
    assert len(writes) >= 2, (len(writes), took)  # one interval write at least, then the final
    gaps = [b - a for a, b in zip(writes, writes[1:], strict=False)][:-1]  # the last is the final write
    assert all(gap >= interval * 0.8 for gap in gaps), gaps
    MEASURED["fast job: steps per second"] = round(steps / took)
    MEASURED[f"fast job: store writes per minute at flush_interval={interval}"] = round(
        len(writes) / took * 60
    )
    MEASURED["so on Apify defaults (5 s): at most writes per minute"] = 60 / 5 + 1
    print(f"\n{steps} steps in {took:.2f} s, {len(writes)} head writes: {MEASURED}")


async def test_corrupt_record_of_the_longest_run_key_is_moved_aside_locally(sdk: Path) -> None:
    """The aside name of a corrupt record (KEY(corrupt)STAMP) fits the SDK's local file
    client even for the longest run key, so ``on_corrupt="restart"`` works locally."""

    @resumable(key="k" * 400, on_corrupt="restart")
    async def job() -> str:
        return "fresh"

    key = job.key_for()
    async with platform_actor(None):
        await ApifyStore().aset(key, b"this is not a record")
        with capture_logs() as logs:
            assert await job() == "fresh"
    moved = [e for e in logs if e["event"] == "corrupt record moved aside; the run starts over"]
    assert len(moved) == 1
    files = {p.name for p in (sdk / "key_value_stores" / "default").iterdir()}
    assert urllib.parse.quote(moved[0]["moved_to"], safe="") in files
    assert read_record(record_file(sdk, key))["status"] == "finished"


async def test_a_store_made_before_the_actor_serves_a_job_started_inside_it(sdk: Path) -> None:
    """Regression: an ApifyStore made at import (``@resumable(store=ApifyStore(...))``) had no
    event loop and raised BlockingJobOnLoop although the job was started inside the Actor."""
    made: list[ApifyStore] = []
    # As at import time: no event loop, no Actor (a plain thread starts with an empty context).
    maker = threading.Thread(target=lambda: made.append(ApifyStore(name="made-early")))
    maker.start()
    maker.join()
    store = made[0]

    @resumable(key="early", store=store)
    async def job() -> int:
        return 7

    async with platform_actor(None):
        assert await job() == 7
    assert read_record(record_file(sdk, "early", store="made-early"))["status"] == "finished"
