"""Rows for Apify (issues 4 and 7): duplicates after a migration, the migration write, writes per minute.

The real ``apify`` SDK on its local file storage, no network. The platform's event channel
is a websocket server on 127.0.0.1 (`EventServer`) that the Actor reaches through the
SDK's own ``ApifyEventManager``, so ``migrating`` arrives as on the platform. The Actor is
tests/apify_child.py (through benchmarks/_apify_child.py, which imports it and adds the
``writes`` mode), forked by its zygote so that the SDK is imported once.

A migration is played as tests/test_apify.py plays it: the Actor runs a paginated job
(200 items, pages of 10, 20 ms a page) that pushes each item to the run's dataset; once
the dataset holds ``moment`` items, ``migrating`` is sent; once the job's saved progress
(its record, or the SDK's ``APIFY_GLOBAL_STATE`` for ``Actor.use_state``) is written, the
process is SIGKILLed and the same Actor is started again on the same storage, and runs to
the end. Then the dataset is read back: every item must be there; the items there twice
are the migration's duplicates.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._harness import Row, Sizes, progress, unavailable
from resumable.testing.apify import PlatformEvents as EventServer

ROOT = Path(__file__).resolve().parent.parent
TESTS_CHILD = ROOT / "tests" / "apify_child.py"
MIGRATING = {"name": "migrating", "data": {"timeRemainingSecs": 30}}
ITEMS, PAGE, LATENCY = 200, 10, 0.02  # the source of tests/test_apify.py
DEFAULT_INTERVAL = 5.0  # resumable's flush_interval inside an Actor, unless configured
ROW_NAMES = ("apify_duplicates", "apify_migrating_write", "apify_writes_fast", "apify_writes_slow")


class Failed(RuntimeError):
    """The scenario did not play out (a timeout, an Actor that died): the rows cannot be made."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# -- the platform's side: an event websocket (resumable.testing.apify.PlatformEvents) ------


# -- the Actor processes --------------------------------------------------------------------


class Zygote:
    """benchmarks._apify_child --zygote: imports the SDK once, forks one Actor per order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for name in ("CRAWLEE_STORAGE_DIR", "APIFY_LOCAL_STORAGE_DIR", "CRAWLEE_PURGE_ON_START"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._apify_child", "--zygote"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._cond = threading.Condition()
        self._forked: queue.Queue[int] = queue.Queue()
        self.exits: dict[int, int] = {}
        self._warm = threading.Event()
        self._count = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith("{"):
                continue
            message = json.loads(line)
            if message["event"] == "warm":
                self._warm.set()
            elif message["event"] == "forked":
                self._forked.put(message["pid"])
            elif message["event"] == "exit":
                with self._cond:
                    self.exits[message["pid"]] = message["code"]
                    self._cond.notify_all()

    def fork(self, mode: str, env: dict[str, Any]) -> Actor:
        if not self._warm.wait(180):
            raise Failed("the Actor zygote did not start within 180 s")
        self._count += 1
        out = self.workdir / f"actor-{self._count}.out"
        err = self.workdir / f"actor-{self._count}.log"
        order = {
            "mode": mode,
            "env": {k: str(v) for k, v in env.items()},
            "out": str(out),
            "err": str(err),
            "cwd": str(self.workdir),
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()
        return Actor(self, self._forked.get(timeout=30), out, err)

    def exit_code(self, pid: int, timeout: float) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self.exits, timeout):
                raise Failed(f"Actor process {pid} did not end within {timeout} s")
            return self.exits[pid]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Actor:
    """One Actor process forked by the zygote: its event lines, its log, its end."""

    def __init__(self, zygote: Zygote, pid: int, out: Path, err: Path) -> None:
        self.zygote, self.pid, self.out, self.err = zygote, pid, out, err

    def events(self) -> list[dict[str, Any]]:
        try:
            text = self.out.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.startswith("{") and line.endswith("}")]

    def expect(self, event: str, timeout: float = 120) -> dict[str, Any]:
        def said() -> dict[str, Any] | None:
            found = [e for e in self.events() if e["event"] == event]
            if found:
                return found[0]
            if self.pid in self.zygote.exits:
                raise Failed(f"Actor process ended before {event!r}; its log:\n{self.log_tail()}")
            return None

        found: dict[str, Any] = wait_for(said, timeout, f"{event!r} from Actor process {self.pid}", 0.005)
        return found

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)  # a process this benchmark forked, by its id
        if self.zygote.exit_code(self.pid, 30) != -signal.SIGKILL:
            raise Failed(f"Actor process {self.pid} was not ended by SIGKILL")

    def finish(self) -> dict[str, Any]:
        line = self.expect("finished")
        if self.zygote.exit_code(self.pid, 60) != 0:
            raise Failed(f"Actor process {self.pid} failed:\n{self.log_tail()}")
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
        try:
            return "\n".join(self.err.read_text().splitlines()[-30:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.pid not in self.zygote.exits:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


# -- local storage, read back from its files --------------------------------------------------


def stamp(path: Path) -> tuple[int, int] | None:
    """Inode and mtime: the SDK's local client writes by temp file and rename."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def dataset_files(storage: Path) -> int:
    try:
        return sum(1 for p in os.scandir(storage / "datasets" / "default") if p.name[0].isdigit())
    except FileNotFoundError:
        return 0


def dataset_ids(storage: Path) -> list[int]:
    folder = storage / "datasets" / "default"
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("__"))
    return [int(json.loads(p.read_text())["id"]) for p in files]


# -- a migration ------------------------------------------------------------------------------


def migrate_once(
    zygote: Zygote, server: EventServer, storage: Path, mode: str, moment: int
) -> dict[str, Any]:
    """Run ``mode``, migrate it once the dataset holds ``moment`` items, restart, run to the end."""
    saved_key = "listing" if mode == "resumable" else "APIFY_GLOBAL_STATE"
    saved = storage / "key_value_stores" / "default" / saved_key
    meta = saved.with_name(f"{saved.name}.__metadata__.json")
    env: dict[str, Any] = {
        "CRAWLEE_STORAGE_DIR": storage,
        "CHILD_ITEMS": ITEMS,
        "CHILD_PAGE": PAGE,
        "CHILD_LATENCY": LATENCY,
        "CHILD_WS_URL": server.url,
    }
    clients = len(server.connections)
    first = zygote.fork(mode, env)
    try:
        first.expect("started")
        connection = server.connection(clients + 1)
        wait_for(lambda: dataset_files(storage) >= moment, 60, f"{moment} items in the dataset")
        before = (stamp(saved), stamp(meta))
        sent = server.send(connection, MIGRATING)
        wait_for(lambda: stamp(saved) != before[0], 10, f"{saved_key} written after migrating")
        seen = time.time() - sent
        wait_for(lambda: stamp(meta) != before[1], 10, f"{saved_key}'s metadata written")
        logged = None
        if mode == "resumable":  # the Actor's log line comes after the write
            wait_for(lambda: first.logged('"platform_event": "migrating"'), 10, "the Actor's migration log")
            written = [
                e
                for e in first.log()
                if e.get("event") == "progress written on a platform event"
                and e.get("platform_event") == "migrating"
            ]
            logged = written[0]["t"] - sent
        at_kill = dataset_files(storage)
        first.kill()
    finally:
        first.stop()
    last = zygote.fork(mode, env)
    try:
        last.finish()
    finally:
        last.stop()
    ids = dataset_ids(storage)
    missing = sorted(set(range(ITEMS)) - set(ids))
    if missing:
        raise Failed(f"{mode}: items {missing[:10]} missing from the dataset after the migration at {moment}")
    return {
        "mode": mode,
        "moment": moment,
        "items_at_kill": at_kill,
        "duplicates": len(ids) - len(set(ids)),
        "seen_s": seen,
        "logged_s": logged,
    }


# -- store writes per minute ------------------------------------------------------------------


def writes_run(zygote: Zygote, storage: Path, window: float, pause: float, interval: float | None) -> Actor:
    env: dict[str, Any] = {
        "CRAWLEE_STORAGE_DIR": storage,
        "BENCH_WINDOW": window,
        "BENCH_STEP_PAUSE": pause,
    }
    if interval is not None:
        env["CHILD_FLUSH_INTERVAL"] = interval
    return zygote.fork("writes", env)


def writes_summary(line: dict[str, Any]) -> dict[str, Any]:
    """Writes issued while the job's body ran (not the run's first and closing writes)."""
    start, end = line["body_start"], line["body_end"]
    inside = [t for t, _ in line["writes"] if start < t <= end]
    keys = {k for _, k in line["writes"]}
    gaps = [b - a for a, b in itertools.pairwise(inside)]
    body = end - start
    if not inside:
        raise Failed(f"no store write while the job ran for {body:.1f} s: {line['writes']}")
    per_min = [60 / g for g in gaps] if gaps else [len(inside) / body * 60]
    return {
        "interval": float(line["interval"]),
        "body_s": body,
        "steps": int(line["steps"]),
        "steps_per_s": line["steps"] / body,
        "writes_in_body": len(inside),
        "writes_total": len(line["writes"]),
        "keys": sorted(keys),
        "per_min": per_min,
        "window_rate": len(inside) / body * 60,
    }


# -- the rows -----------------------------------------------------------------------------------


def why_unavailable() -> str | None:
    for module in ("apify", "websockets"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'resumable[dev]')"
    if not TESTS_CHILD.exists():
        return f"{TESTS_CHILD} is missing (the Actor the rows run; it ships with the repository)"
    return None


def all_rows(sz: Sizes, tmp: Path) -> list[Row]:
    why = why_unavailable()
    if why is not None:
        return [unavailable(name, name, why) for name in ROW_NAMES]
    work = tmp / "apify"
    work.mkdir()
    progress("apify: starting the Actor zygote (imports the SDK once)")
    zygote = Zygote(work)
    try:
        with EventServer() as server:
            rows = _migration_rows(sz, zygote, server, work)
        rows += _writes_rows(sz, zygote, work)
        return rows
    finally:
        zygote.close()


def _migration_rows(sz: Sizes, zygote: Zygote, server: EventServer, work: Path) -> list[Row]:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    moments = [rng.randrange(10, ITEMS - 50) for _ in range(sz.apify_migrations)]
    progress(f"apify: {len(moments)} migrations each, use_state and resumable, at items {moments}")
    results: dict[str, list[dict[str, Any]]] = {"use_state": [], "resumable": []}
    for r, moment in enumerate(moments):
        order = ("use_state", "resumable") if r % 2 == 0 else ("resumable", "use_state")
        for mode in order:
            results[mode].append(migrate_once(zygote, server, work / f"{mode}-{r}", mode, moment))
    res, use = results["resumable"], results["use_state"]
    res_dups = [float(x["duplicates"]) for x in res]
    use_dups = [float(x["duplicates"]) for x in use]
    res_seen = [x["seen_s"] * 1e3 for x in res]
    use_seen = [x["seen_s"] * 1e3 for x in use]
    logged = [x["logged_s"] * 1e3 for x in res]
    n = len(moments)
    hit = sum(1 for d in use_dups if d > 0)
    return [
        Row(
            "apify_duplicates",
            "items pushed twice per migration: resumable generator job, adrain into DatasetSink",
            "items",
            res_dups,
            "Actor.use_state (push, then advance a counter)",
            "items",
            use_dups,
            [sum(res_dups) / sum(use_dups)] if sum(use_dups) else [],
            "resumable/use_state (totals)",
            goal="resumable 0",
            met=sum(res_dups) == 0,
            counts=True,
            note=f"{n} migrations each, at the same random item counts {moments} (seed {seed}): `migrating` "
            "over the platform's websocket, saved progress written, SIGKILL, restart on the same storage; "
            f"use_state pushed duplicates on {hit} of {n} (a migration while the job waits for a page "
            "loses nothing); nothing was lost in either",
            extra={"runs": results, "seed": seed},
        ),
        Row(
            "apify_migrating_write",
            "`migrating` message to the record written (local client), resumable",
            "ms",
            res_seen,
            "Actor.use_state: the SDK's own state save on migrating",
            "ms",
            use_seen,
            [a / b for a, b in zip(res_seen, use_seen, strict=True)],
            "resumable/use_state",
            goal="< 1 s",
            met=statistics.median(res_seen) < 1000,
            note="sent on the websocket to the saved file replaced on disk (polled every 2 ms), same "
            "migrations as above; to the Actor's log line after the write: median "
            f"{statistics.median(logged):.0f} ms ({min(logged):.0f}-{max(logged):.0f})",
            extra={"logged_ms": logged},
        ),
    ]


def _writes_rows(sz: Sizes, zygote: Zygote, work: Path) -> list[Row]:
    interval = sz.apify_interval
    effective = interval if interval is not None else DEFAULT_INTERVAL
    if interval is None:
        setting = f"the Apify default flush_interval {effective:g} s"
    else:
        scale = DEFAULT_INTERVAL / interval
        setting = f"flush_interval {interval:g} s: the default {DEFAULT_INTERVAL:g} s scaled down {scale:g}x"
    window = sz.apify_window
    pause = effective / 10  # the slow job: ten steps per interval
    progress(
        f"apify: store writes over {window:g} s, a fast and a slow job at once (interval {effective:g} s)"
    )
    fast = writes_run(zygote, work / "writes-fast", window, 0.0, interval)
    slow = writes_run(zygote, work / "writes-slow", window, pause, interval)
    try:
        got = {"fast": writes_summary(fast.finish()), "slow": writes_summary(slow.finish())}
    finally:
        fast.stop()
        slow.stop()
    rows = []
    for name, what in (
        ("fast", "a fast job (asyncio.sleep(0) a step)"),
        ("slow", f"a slow job ({pause:g} s a step)"),
    ):
        s = got[name]
        if s["interval"] != effective:
            raise Failed(f"the {name} job flushed every {s['interval']} s, not {effective} s")
        bound = 60 / s["interval"]
        rate = f"{s['steps_per_s']:,.0f}" if s["steps_per_s"] >= 100 else f"{s['steps_per_s']:.1f}"
        rows.append(
            Row(
                f"apify_writes_{name}",
                f"store writes per minute inside an Actor ({setting}), {what}",
                "writes/min",
                s["per_min"],
                "bound 60/flush_interval",
                "writes/min",
                [bound] * len(s["per_min"]),
                [v / bound for v in s["per_min"]],
                "measured/bound",
                goal="<= 60/flush_interval",
                met=s["writes_in_body"] <= s["body_s"] / s["interval"] + 1,
                note=f"{rate} steps/s; {s['writes_in_body']} writes in the job's {s['body_s']:.1f} s "
                f"({s['window_rate']:.1f}/min over the window; per write interval in the columns), "
                f"{s['writes_total']} in all with the run's first and closing writes, all to {s['keys']} "
                "(steps return None: no chunk)",
                extra=s,
            )
        )
    return rows
