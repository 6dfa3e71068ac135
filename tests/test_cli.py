"""The ``resumable`` command, on file stores written by real runs of real jobs.

Most tests go through click's `CliRunner`; one runs the installed console script as a
subprocess, and the live-run test holds a run's lock from another process.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from resumable import CheckpointCorrupted, FileStore, checkpoint, restart_with, resumable, state
from resumable._job import _load
from resumable._record import Head, chunk_key, dump_chunk, dump_head, entry_text
from resumable.cli import main

SCRIPT = Path(sys.executable).parent / "resumable"


@pytest.fixture(autouse=True)
def _no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESUMABLE_SECRET", raising=False)
    monkeypatch.delenv("RESUMABLE_STORE", raising=False)


class Boom(RuntimeError):
    pass


class Jobs:
    """Jobs writing to one store, recording which step bodies really ran."""

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.calls: list[Any] = []
        calls = self.calls

        @checkpoint
        def fetch(page: int) -> dict[str, Any]:
            calls.append(page)
            return {"page": page, "items": [page * 3 + i for i in range(3)]}

        @checkpoint
        def note(page: int) -> None:
            calls.append(("note", page))

        @resumable(store=store, key="count-{n}")
        def count(n: int) -> int:
            total = 0
            for page in range(n):
                total += len(fetch(page)["items"])
                note(page)
            return total

        @resumable(store=store, key="pages-{account}")
        def pages(account: str, cursor: int = 0, fail_at: int | None = None) -> int:
            while cursor < 6:
                fetch(cursor)
                note(cursor)
                if cursor == fail_at:
                    raise Boom(f"HTTP 503 at page {cursor}")
                cursor += 1
                state()["seen"] = cursor * 3
                if cursor % 2 == 0:
                    restart_with(cursor=cursor)
            return int(state()["seen"])

        self.count = count
        self.pages = pages


def cli(store: FileStore | Path | str, *args: str, input: str | None = None) -> Result:
    path = store.path if isinstance(store, FileStore) else store
    return CliRunner().invoke(main, ["--store", f"file://{path}", *args], input=input)


def listed(store: FileStore) -> dict[str, dict[str, Any]]:
    result = cli(store, "list", "--json")
    assert result.exit_code == 0, result.output
    return {row["key"]: row for row in json.loads(result.stdout)}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "runs")


@pytest.fixture
def jobs(store: FileStore) -> Jobs:
    return Jobs(store)


def interrupt(jobs: Jobs, account: str = "acme", at: int = 3) -> None:
    with pytest.raises(Boom):
        jobs.pages(account, fail_at=at)


def file_sizes(store: FileStore, key: str) -> int:
    return sum(
        p.stat().st_size for p in store.path.iterdir() if p.name == key or p.name.startswith(f"{key}(r)")
    )


# -- list ------------------------------------------------------------------------------


def test_list_shows_finished_interrupted_and_corrupt_runs(store: FileStore, jobs: Jobs) -> None:
    assert jobs.count(3) == 9
    interrupt(jobs)
    store.set("garbage", b"\x00\xff not a record")
    aside = "pages-acme(corrupt)20260101T000000000000Z"
    store.set(aside, b"{}")

    rows = listed(store)

    assert set(rows) == {"count-3", "pages-acme", "garbage"}  # chunks and moved-aside records are not runs
    fin, cut, bad = rows["count-3"], rows["pages-acme"], rows["garbage"]
    assert (fin["status"], fin["job"].rsplit(".", 1)[-1], fin["units_done"]) == ("finished", "count", 6)
    assert fin["resume_point"] is None
    assert fin["size"] == file_sizes(store, "count-3") > 0
    head = json.loads(store.get("count-3") or b"")
    assert fin["updated"] == head["updated"]
    # Interrupted at page 3, after the resume point at cursor 2: fetch and note of pages 2 and 3.
    assert (cut["status"], cut["epoch"], cut["units_done"]) == ("interrupted", 1, 4)
    assert cut["resume_point"] == {"cursor": 2}
    assert cut["error"] == "Boom: HTTP 503 at page 3"
    assert cut["size"] == file_sizes(store, "pages-acme")
    assert bad["status"] == "corrupt"
    assert bad["reason"].startswith("not JSON")
    assert bad["size"] == len(b"\x00\xff not a record")

    text = cli(store, "list")
    assert text.exit_code == 0
    lines = {line.split()[0]: line for line in text.stdout.splitlines()[1:]}
    assert text.stdout.splitlines()[0].split()[:3] == ["KEY", "JOB", "STATUS"]
    assert "finished" in lines["count-3"]
    assert "interrupted" in lines["pages-acme"]
    assert "cursor=2" in lines["pages-acme"]
    assert "Boom: HTTP 503 at page 3" in lines["pages-acme"]
    assert "corrupt" in lines["garbage"]
    assert "not JSON" in lines["garbage"]


def test_list_never_crashes_on_unreadable_entries(store: FileStore, jobs: Jobs) -> None:
    assert jobs.count(2) == 6
    finished = store.get("count-2") or b""
    store.set("truncated", finished[: len(finished) // 2])
    store.set("altered", finished.replace(b'"status":"finished"', b'"status":"running"'))
    store.set("stolen", finished)  # a valid record, of another key
    interrupt(jobs)
    store.delete(chunk_key("pages-acme", 1, 0))  # a head whose chunk is gone
    (store.path / "a-directory").mkdir()
    (store.path / "not a key!").write_bytes(b"x")

    rows = listed(store)

    assert rows["count-2"]["status"] == "finished"
    reasons = {key: row["reason"] for key, row in rows.items() if row["status"] == "corrupt"}
    assert set(reasons) == {"truncated", "altered", "stolen", "pages-acme", "a-directory", "not a key!"}
    assert reasons["truncated"].startswith("not JSON")
    assert "checksum" in reasons["altered"]
    assert "record of 'count-2'" in reasons["stolen"]
    assert "pages-acme(r)1.0" in reasons["pages-acme"]
    assert "missing" in reasons["pages-acme"]
    assert "IsADirectoryError" in reasons["a-directory"]
    assert "not a legal store key" in reasons["not a key!"]


def test_list_an_empty_or_missing_store(tmp_path: Path) -> None:
    result = cli(tmp_path / "nothing", "list")
    assert result.exit_code == 0
    assert "no runs in FileStore" in result.stdout
    assert not (tmp_path / "nothing").exists()  # listing creates nothing
    assert json.loads(cli(tmp_path / "nothing", "list", "--json").stdout) == []


def test_generator_runs_show_items_over_all_epochs(store: FileStore) -> None:
    @checkpoint
    def page(cursor: int) -> list[int]:
        return [cursor * 10 + i for i in range(4)]

    @resumable(store=store, key="listing")
    def listing(cursor: int = 0) -> Any:
        while cursor < 5:
            yield from page(cursor)
            cursor += 1
            if cursor % 2 == 0:
                restart_with(cursor=cursor)

    got = []
    for item in listing():
        got.append(item)
        if len(got) == 11:
            break  # the 11th item is in hand, not consumed

    row = listed(store)["listing"]
    assert row["items_done"] == 10  # 8 before the resume point at cursor 2, 2 after it
    assert row["resume_point"] == {"cursor": 2}
    shown = json.loads(cli(store, "show", "listing", "--json").stdout)
    assert shown["items_done"] == 10
    assert "10 consumed (8 before this epoch)" in cli(store, "show", "listing").stdout


# -- show ------------------------------------------------------------------------------


def test_show_a_finished_run(store: FileStore, jobs: Jobs) -> None:
    assert jobs.count(3) == 9

    data = json.loads(cli(store, "show", "count-3", "--json").stdout)

    assert data["status"] == "finished"
    assert (data["format"], data["version"]) == ("resumable-record", 2)
    assert (data["watermark"], data["folded"], data["epoch"], data["attempts"]) == (6, 3, 0, 1)
    assert [(s["position"], s["name"].rsplit(".", 1)[-1]) for s in data["steps"]] == [
        (0, "fetch"),
        (2, "fetch"),
        (4, "fetch"),
    ]
    first = data["steps"][0]
    assert first["result"] == {"page": 0, "items": [0, 1, 2]}
    assert first["result_size"] == len(json.dumps(first["result"], separators=(",", ":"), sort_keys=True))
    assert data["result"] == 9
    assert data["size"] == file_sizes(store, "count-3")

    text = cli(store, "show", "count-3")
    assert text.exit_code == 0
    out = text.stdout
    assert "status        finished" in out
    assert "resumable-record version 2" in out
    assert "watermark     6 of the job's own steps done" in out
    assert "result        9" in out
    assert "3 more returned None" in out
    assert f"#2      {data['steps'][1]['name']}  {first['result_size']} B" in out


def test_show_an_interrupted_run_with_resume_point_state_and_error(store: FileStore, jobs: Jobs) -> None:
    interrupt(jobs)

    data = json.loads(cli(store, "show", "pages-acme", "--json").stdout)

    assert data["status"] == "interrupted"
    assert data["resume_point"] == {"cursor": 2}
    assert data["state"] == {"seen": 6}
    assert data["error"] == "Boom: HTTP 503 at page 3"
    assert data["result"] is None
    assert [s["result"]["page"] for s in data["steps"]] == [2, 3]
    out = cli(store, "show", "pages-acme").stdout
    assert "resume point  cursor=2" in out
    assert 'state         {"seen": 6}' in out
    assert "error         Boom: HTTP 503 at page 3" in out


def test_show_holes_and_identities_of_concurrent_steps(store: FileStore) -> None:
    import asyncio

    @checkpoint
    async def get(i: int) -> int:
        await asyncio.sleep(0.001 * (4 - i))
        if i == 2:
            raise Boom("boom 2")
        return i * 2

    @checkpoint(durable=True)
    async def charge(i: int) -> str:
        return f"charged {i}"

    @resumable(store=store, key="conc")
    async def job() -> list[Any]:
        await charge(0)
        got = await asyncio.gather(*(get(i) for i in range(4)), return_exceptions=True)
        if any(isinstance(g, Exception) for g in got):
            raise Boom("a fetch failed")
        return got

    with pytest.raises(Boom):
        asyncio.run(job())

    data = json.loads(cli(store, "show", "conc", "--json").stdout)
    assert data["watermark"] == 1  # the job's own steps: charge(0)
    # The gathered calls are concurrent: matched by identity labels, not positions.
    [hole] = data["holes"]
    assert isinstance(hole["position"], str)
    assert "#" in hole["position"]
    assert (hole["name"].rsplit(".", 1)[-1], hole["attempts"]) == ("get", 1)
    steps = {s["position"]: s for s in data["steps"]}
    assert steps[0]["result"] == "charged 0"
    labels = [p for p in steps if isinstance(p, str)]
    assert sorted(steps[p]["result"] for p in labels) == [0, 2, 6]
    assert hole["position"] not in labels
    assert "failed 1 time(s)" in cli(store, "show", "conc").stdout


def test_show_and_export_of_corrupt_and_missing_records(store: FileStore) -> None:
    store.set("garbage", b"\x00\xff not a record")

    shown = cli(store, "show", "garbage")
    assert shown.exit_code == 3
    assert "status        corrupt" in shown.stdout
    assert "not JSON" in shown.stdout
    data = json.loads(cli(store, "show", "garbage", "--json").stdout)
    assert (data["status"], data["size"]) == ("corrupt", len(b"\x00\xff not a record"))
    assert cli(store, "show", "garbage", "--json").exit_code == 3

    exported = cli(store, "export", "garbage")
    assert exported.exit_code == 3
    assert "corrupt: not JSON" in exported.output
    for args in (["show", "nope"], ["export", "nope"], ["reset", "nope", "--yes"]):
        missing = cli(store, *args)
        assert missing.exit_code == 1, args
        assert "no run 'nope'" in missing.output


class Touch:
    """Unpickling it creates a file: proof of whether the command ran pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_pickled_values_are_never_unpickled_unless_asked(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESUMABLE_SECRET", "s3cret")
    marker = tmp_path / "unpickled"

    @checkpoint
    def make() -> Touch:
        return Touch(marker)

    @resumable(store=store, key="pickled")
    def job(day: dt.date = dt.date(2024, 1, 1), stop: bool = True) -> Touch:
        restart_with(day=dt.date(2024, 1, 2))  # not JSON: the resume point is pickled
        value = make()
        if stop:
            raise Boom("stop")
        return value

    with pytest.raises(Boom):
        job()
    assert not marker.exists()

    row = listed(store)["pickled"]
    data = json.loads(cli(store, "show", "pickled", "--json").stdout)
    text = cli(store, "show", "pickled").stdout
    exported = json.loads(cli(store, "export", "pickled").stdout)

    assert not marker.exists()  # list, show and export ran no code from the record
    assert row["resume_point"]["$pickled"]["signed"] is True
    assert data["steps"][0]["result"]["$pickled"]["bytes"] > 0
    assert "resume point  <pickled," in text
    assert "signed>" in text
    assert set(exported["steps"]["0"][2]) == {"$pickle", "hmac"}

    unpickled = json.loads(cli(store, "show", "pickled", "--json", "--unpickle").stdout)
    assert marker.exists()
    assert unpickled["resume_point"] == {"$repr": repr({"day": dt.date(2024, 1, 2)})}

    marker.unlink()
    monkeypatch.setenv("RESUMABLE_SECRET", "another")
    refused = cli(store, "show", "pickled", "--json", "--unpickle")
    assert refused.exit_code == 3  # a record whose signatures fail is corrupt, and never loaded
    assert "HMAC" in json.loads(refused.stdout)["reason"]
    assert not marker.exists()


# -- reset -----------------------------------------------------------------------------


def test_reset_asks_then_the_job_starts_over(store: FileStore, jobs: Jobs) -> None:
    interrupt(jobs)
    before = sorted(p.name for p in store.path.iterdir() if not p.name.startswith("."))

    declined = cli(store, "reset", "pages-acme", input="n\n")
    assert declined.exit_code == 4
    assert "Reset run 'pages-acme' (interrupted)" in declined.output
    assert sorted(p.name for p in store.path.iterdir() if not p.name.startswith(".")) == before
    assert cli(store, "reset", "pages-acme", input="").exit_code == 4  # end of input is a no

    done = cli(store, "reset", "pages-acme", input="y\n")
    assert done.exit_code == 0, done.output
    assert [p.name for p in store.path.iterdir() if p.name.startswith("pages-acme")] == []

    jobs.calls.clear()
    assert jobs.pages("acme") == 18
    assert jobs.calls[0] == 0  # started over from page 0, not resumed at cursor 2


def test_reset_removes_a_corrupt_record(store: FileStore) -> None:
    store.set("garbage", b"\x00")
    result = cli(store, "reset", "garbage", "--yes")
    assert result.exit_code == 0
    assert store.get("garbage") is None
    assert cli(store, "reset", "garbage", "--yes").exit_code == 1


# -- export and import ---------------------------------------------------------------------


def test_export_then_import_into_another_store_resumes_there(
    tmp_path: Path, store: FileStore, jobs: Jobs
) -> None:
    interrupt(jobs)
    exported = cli(store, "export", "pages-acme")
    assert exported.exit_code == 0
    doc = json.loads(exported.stdout)
    assert (doc["format"], doc["version"], doc["key"]) == ("resumable-export", 2, "pages-acme")
    assert doc["state"] == {"seen": 6}
    assert doc["resume_point"] == {"cursor": 2}
    assert doc["progress"]["done"] == 4
    (tmp_path / "acme.json").write_text(exported.stdout)

    other = FileStore(tmp_path / "other")
    imported = cli(other, "import", "pages-globex", str(tmp_path / "acme.json"))
    assert imported.exit_code == 0, imported.output
    assert "imported pages-globex (running, epoch 1, 4 units done, recorded steps: 2)" in imported.stdout
    assert listed(other)["pages-globex"]["status"] == "interrupted"

    there = Jobs(other)
    assert there.pages("globex") == 18
    assert there.calls == [4, ("note", 4), 5, ("note", 5)]  # pages 2 and 3 were replayed, not run
    # The export of the finished copy imports again, as finished.
    again = cli(other, "export", "pages-globex")
    assert json.loads(again.stdout)["result"] == 18
    assert cli(store, "import", "pages-copy", "-", input=again.stdout).exit_code == 0
    assert Jobs(store).pages("copy") == 18
    assert listed(store)["pages-copy"]["status"] == "finished"


def test_import_replaces_only_after_confirmation(tmp_path: Path, store: FileStore, jobs: Jobs) -> None:
    assert jobs.count(2) == 6
    interrupt(jobs)
    doc = cli(store, "export", "pages-acme").stdout
    before = store.get("count-2")

    declined = cli(store, "import", "count-2", "-", input=doc)  # stdin is the file: no answer
    assert declined.exit_code == 4
    assert store.get("count-2") == before

    replaced = cli(store, "import", "count-2", "-", "--yes", input=doc)
    assert replaced.exit_code == 0, replaced.output
    row = listed(store)["count-2"]
    assert (row["status"], row["resume_point"], row["units_done"]) == ("interrupted", {"cursor": 2}, 4)
    assert not [p for p in store.path.iterdir() if p.name.startswith("count-2(r)0.")]  # old chunks gone


def _mutations() -> list[tuple[str, Callable[[dict[str, Any]], Any], str]]:
    def drop(name: str) -> Callable[[dict[str, Any]], Any]:
        return lambda d: d.pop(name)

    def put(path: str, value: Any) -> Callable[[dict[str, Any]], Any]:
        def change(d: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            for p in parents:
                d = d[p]
            d[last] = value

        return change

    return [
        ("not-export", put("format", "resumable-record"), "not a resumable export"),
        ("newer", put("version", 3), "export version 3"),
        ("no-job", drop("job"), "'job' is missing"),
        ("status", put("status", "paused"), "'status' must be"),
        ("state", put("state", [1, 2]), "'state' must be a JSON object"),
        ("args", put("resume_point", "cursor=2"), "'resume_point' must be null or an object"),
        ("done", put("progress.done", -1), "'progress.done' must be a whole number"),
        ("digest", put("progress.digest", "xyz"), "hexadecimal"),
        ("counts", put("progress.counts", {"zz": 1}), "'progress.counts' must count"),
        ("adds-up", put("progress.done", 9), "does not add up"),
        ("unit", put("steps", {"two": ["f", 0, 1]}), "'two' is not a unit number"),
        ("entry", put("steps", {"0": "fetch"}), "'steps.0' must be"),
        ("beyond", put("steps", {"9": ["f", 0, 1]}), "not below the watermark"),
        ("pickle", put("state", {"$pickle": "@@@"}), "not valid base64"),
        ("hole", put("progress.holes", {"1": ["f", "0", 0]}), "'progress.holes.1' must be"),
        ("intent", put("progress.intents", {"7": ["f"]}), "'progress.intents.7' must be"),
        ("items", put("progress.items", {"done": "3"}), "'progress.items.done'"),
        ("finished", lambda d: (d.update(status="finished"), d.pop("result")), "needs its 'result'"),
    ]


@pytest.mark.parametrize(
    ("mutate", "message"), [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()]
)
def test_import_refuses_malformed_input_and_writes_nothing(
    tmp_path: Path, store: FileStore, jobs: Jobs, mutate: Callable[[dict[str, Any]], Any], message: str
) -> None:
    interrupt(jobs)
    doc = json.loads(cli(store, "export", "pages-acme").stdout)
    mutate(doc)
    target = FileStore(tmp_path / "target")

    result = cli(target, "import", "run", "-", input=json.dumps(doc))

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Nothing was written" in result.output
    assert target.keys() == []


def test_import_refuses_what_is_not_json_or_not_a_key(tmp_path: Path, store: FileStore) -> None:
    (tmp_path / "x.json").write_text("{not json")
    result = cli(store, "import", "run", str(tmp_path / "x.json"))
    assert result.exit_code == 2
    assert "is not JSON" in result.output
    assert cli(store, "import", "run", str(tmp_path / "absent.json")).exit_code == 2
    bad_key = cli(store, "import", "a/b", str(tmp_path / "x.json"))
    assert bad_key.exit_code == 2
    assert "not a legal store key" in bad_key.output
    assert cli(store, "import", "run(r)0.0", str(tmp_path / "x.json")).exit_code == 2
    assert store.keys() == []


# -- store selection and help ----------------------------------------------------------------


def test_store_from_environment_and_bad_urls(tmp_path: Path, store: FileStore, jobs: Jobs) -> None:
    assert jobs.count(1) == 3
    runner = CliRunner()
    by_store = runner.invoke(main, ["list", "--json"], env={"RESUMABLE_STORE": f"file://{store.path}"})
    assert [r["key"] for r in json.loads(by_store.stdout)] == ["count-1"]
    by_dir = runner.invoke(main, ["list", "--json"], env={"RESUMABLE_DIR": str(store.path)})
    assert [r["key"] for r in json.loads(by_dir.stdout)] == ["count-1"]

    memory = runner.invoke(main, ["--store", "memory://", "list"])
    assert memory.exit_code == 0
    assert "no runs in MemoryStore" in memory.stdout

    unknown = runner.invoke(main, ["--store", "ftp://host/x", "list"])
    assert unknown.exit_code == 2
    assert "unknown store URL 'ftp://host/x'" in unknown.output

    apify = runner.invoke(main, ["--store", "apify://runs", "list"], env={"APIFY_TOKEN": None})
    assert apify.exit_code == 2
    if getattr(importlib.import_module("resumable.apify"), "cli_store", None) is None:
        assert "not available yet" in apify.output
    else:
        assert "APIFY_TOKEN" in apify.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for line in ("0  ok", "1  not found", "2  usage", "3  corrupt record", "4  refused"):
        assert line in result.stdout
    for command in ("list", "show", "reset", "export", "import"):
        assert command in result.stdout


# -- a live run, held by another process ----------------------------------------------------

LIVE_JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from resumable import FileStore, checkpoint, flush, resumable

    store, ready, go = FileStore(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    @checkpoint
    def fetch(i):
        return i * 10

    @checkpoint(durable=True)
    def wait():
        ready.write_text("holding")
        deadline = time.monotonic() + 60
        while not go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go file")
            time.sleep(0.005)

    @resumable(store=store, key="live")
    def job():
        for i in range(3):
            fetch(i)
        flush()
        wait()
        return "ok"

    print(job())
    """
)


def test_a_run_held_by_a_live_process(tmp_path: Path, store: FileStore) -> None:
    script = tmp_path / "live.py"
    script.write_text(LIVE_JOB)
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, str(script), str(store.path), str(ready), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The child writes `ready` while it holds the lock (polling is_locked itself would
        # take the lock for an instant, and could make the child's own start fail).
        wait_for(lambda: ready.exists() or child.poll() is not None, "the child to hold the run")
        assert child.poll() is None, child.communicate()
        assert store.is_locked("live")

        row = listed(store)["live"]
        assert (row["status"], row["units_done"]) == ("running", 3)
        shown = cli(store, "show", "live")
        assert "status        running" in shown.stdout
        assert "#3      __main__.wait  attempt 1" in shown.stdout  # the durable step's intent
        data = json.loads(cli(store, "show", "live", "--json").stdout)
        assert [(i["position"], i["name"]) for i in data["intents"]] == [(3, "__main__.wait")]

        refused = cli(store, "reset", "live", "--yes")
        assert refused.exit_code == 4
        assert "held by a live process" in refused.output
        assert store.get("live") is not None
        doc = cli(store, "export", "live").stdout  # a live run can be exported
        not_imported = cli(store, "import", "live", "-", "--yes", input=doc)
        assert not_imported.exit_code == 4

        forced = cli(store, "reset", "live", "--yes", "--force")
        assert forced.exit_code == 0, forced.output
        assert "forced while a live process held it" in forced.stdout
        assert store.get("live") is None
        assert store.keys("live(r)") == []
    finally:
        go.write_text("go")
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "ok"
    # The risk --force documents: the process went on and wrote its record again.
    assert store.get("live") is not None
    assert listed(store)["live"]["status"] in ("finished", "corrupt")


# -- the installed console script ------------------------------------------------------------


def test_the_installed_console_script(store: FileStore, jobs: Jobs) -> None:
    assert SCRIPT.exists(), "the package is installed with its console script (make install)"
    assert jobs.count(2) == 6
    interrupt(jobs)
    store.set("garbage", b"\x00")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESUMABLE_")}
    url = f"file://{store.path}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), "--store", url, *args], check=False, capture_output=True, text=True, env=env
        )

    listing = run("list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert {r["key"]: r["status"] for r in json.loads(listing.stdout)} == {
        "count-2": "finished",
        "pages-acme": "interrupted",
        "garbage": "corrupt",
    }
    assert run("show", "garbage").returncode == 3
    assert run("reset", "pages-acme").returncode == 4  # no terminal to say yes
    assert store.get("pages-acme") is not None
    helped = subprocess.run([str(SCRIPT), "--help"], check=False, capture_output=True, text=True, env=env)
    assert helped.returncode == 0
    assert "Exit codes" in helped.stdout


# -- regressions of bugs this file found in the record code ------------------------------------


def test_a_second_resume_keeps_the_results_recorded_before_the_first(store: FileStore) -> None:
    calls: list[int] = []
    fail_at = {"n": 3}

    @checkpoint
    def step(i: int) -> int:
        calls.append(i)
        if i == fail_at["n"]:
            raise Boom(f"boom {i}")
        return i * 10

    @resumable(store=store, key="twice")
    def job() -> list[int]:
        return [step(i) for i in range(6)]

    with pytest.raises(Boom):
        job()  # records 0, 1, 2
    fail_at["n"] = 5
    with pytest.raises(Boom):
        job()  # records 3, 4 (a write once dropped 0, 1, 2 from chunk 0 here)
    fail_at["n"] = -1
    calls.clear()
    assert job() == [0, 10, 20, 30, 40, 50]
    assert calls == [5]


def test_a_record_with_a_non_numeric_unit_is_reported_corrupt(store: FileStore) -> None:
    store.set("odd", dump_head(Head(key="odd", job="j", done=1, chunks=[0, 0])))
    store.set(chunk_key("odd", 0, 0), dump_chunk("odd", 0, 0, {"one": entry_text("s", 0, "1")}))
    with pytest.raises(CheckpointCorrupted):
        _load(store, "odd", "raise")


def test_the_command_lists_a_record_with_a_non_numeric_unit_as_corrupt(store: FileStore) -> None:
    store.set("odd", dump_head(Head(key="odd", job="j", done=1, chunks=[0, 0])))
    store.set(chunk_key("odd", 0, 0), dump_chunk("odd", 0, 0, {"one": entry_text("s", 0, "1")}))
    row = listed(store)["odd"]
    assert row["status"] == "corrupt"
    assert "'one', not a unit number" in row["reason"]
