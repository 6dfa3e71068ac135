"""The ``resumable`` command: see, reset, export and import the runs in a store.

It reads records the way a job does (`resumable._job._load`), so a record the command
calls corrupt is one a job would refuse, and it never unpickles anything unless asked
to (``show --unpickle``): listing a store runs no code from it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import click

from resumable._job import _load, delete_run
from resumable._record import (
    FORMAT,
    Entry,
    Head,
    _BadValue,
    canonical_json,
    check_decode,
    chunk_key,
    dump_chunk,
    dump_head,
    entry_text,
    is_auxiliary,
    resign,
    verify_value,
)
from resumable._run import _CHUNK_ENTRIES
from resumable.errors import CheckpointCorrupted, RunLocked
from resumable.stores._base import RunLock, Store, check_key

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CORRUPT = 3
EXIT_REFUSED = 4

EXPORT_FORMAT = "resumable-export"
EXPORT_VERSION = 2

_EXIT_CODES = """\b
Exit codes:
  0  ok
  1  not found (no run under that key)
  2  usage: a bad option or store URL, or a malformed import file
  3  corrupt record (it cannot be read; `show` says why, `reset` removes it)
  4  refused: a live process holds the run (see --force), or you said no
"""


class NotFound(click.ClickException):
    """No run under the key (exit 1)."""

    exit_code = EXIT_NOT_FOUND


class BadUsage(click.ClickException):
    """A bad store URL or a malformed import file (exit 2, as click's usage errors)."""

    exit_code = EXIT_USAGE


class Corrupt(click.ClickException):
    """The record cannot be read (exit 3)."""

    exit_code = EXIT_CORRUPT


class Refused(click.ClickException):
    """A live process holds the run, or the user said no (exit 4)."""

    exit_code = EXIT_REFUSED


_ERRORS: dict[int, type[click.ClickException]] = {
    EXIT_NOT_FOUND: NotFound,
    EXIT_USAGE: BadUsage,
    EXIT_CORRUPT: Corrupt,
    EXIT_REFUSED: Refused,
}


def _fail(message: str, exit_code: int) -> NoReturn:
    raise _ERRORS[exit_code](message)


# -- stores -------------------------------------------------------------------------------


def _open_store(url: str | None) -> Store:
    from resumable.stores._url import open_store
    from resumable.stores.file import default_dir

    if not url:
        url = f"file://{default_dir()}"
    parts = urlsplit(url)
    if parts.scheme.lower() == "apify":
        return _open_apify(url, unquote(parts.netloc + parts.path) or None)
    try:
        return open_store(url)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)


def _open_apify(url: str, name: str | None) -> Store:
    # resumable.apify.ApifyStore lives inside `async with Actor:` and, off the platform,
    # opens the local storage: neither fits a command that reads the platform's store.
    # The command uses `resumable.apify.cli_store(name)` once that module provides it.
    factory = None
    if importlib.util.find_spec("resumable.apify") is not None:
        try:
            module = importlib.import_module("resumable.apify")
        except ImportError as exc:
            _fail(f"{url!r} needs the apify extra: pip install 'resumable[apify]' ({exc})", EXIT_USAGE)
        factory = getattr(module, "cli_store", None)
    if factory is None:
        _fail(
            f"apify:// needs a platform client for the command line, which resumable.apify does "
            f"not provide yet (not available yet); cannot open {url!r}. Meanwhile, inspect runs "
            "inside the Actor, or use the Apify console: records are JSON.",
            EXIT_USAGE,
        )
    if not os.environ.get("APIFY_TOKEN"):
        _fail(f"apify:// needs APIFY_TOKEN set to reach the platform; cannot open {url!r}", EXIT_USAGE)
    store: Store = factory(name)
    return store


class _Reads(Store):
    """A read-through cache over a store, so one inspection reads each key once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: dict[str, bytes | None] = {}

    def describe(self) -> str:
        return self.store.describe()

    def get(self, key: str) -> bytes | None:
        if key not in self.reads:
            self.reads[key] = self.store.get(key)
        return self.reads[key]

    def set(self, key: str, value: bytes) -> None:
        raise RuntimeError("the command only reads while it inspects")

    def delete(self, key: str) -> None:
        raise RuntimeError("the command only reads while it inspects")

    def keys(self, prefix: str = "") -> list[str]:
        return self.store.keys(prefix)

    def lock(self, key: str) -> RunLock:
        raise RuntimeError("the command only reads while it inspects")


# -- reading a run --------------------------------------------------------------------------


@dataclass
class _View:
    """What the command knows about one run key."""

    key: str
    status: str  # running | interrupted | finished | corrupt
    head: Head | None = None
    entries: dict[str, Entry] = field(default_factory=dict)
    reason: str | None = None
    version: int | None = None
    raw: bytes | None = None
    chunk_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.raw or b"") + sum(self.chunk_sizes.values())


def _chunk_owner(key: str) -> str | None:
    run, sep, _ = key.rpartition("(r)")
    return run if sep else None


def _inspect(store: Store, key: str, chunks: list[str] | None = None) -> _View | None:
    """Read run ``key`` as a job would; ``None`` when there is no head under it.

    ``chunks`` lists the run's chunk keys (all of them, referenced or left behind);
    found with one listing per key when not given.
    """
    head: Head | None = None
    entries: dict[str, Entry] = {}
    reason: str | None = None
    for _ in range(3):
        reads = _Reads(store)
        try:
            head, entries = _load(reads, key, "raise")
            reason = None
        except CheckpointCorrupted as exc:
            head, entries, reason = None, {}, exc.reason
            # A live run may have rewritten its record while it was read: read again.
            if store.get(key) != reads.reads.get(key):
                continue
        except (ValueError, TypeError, OSError) as exc:
            head, entries, reason = None, {}, f"cannot be read ({type(exc).__name__}: {exc})"
        break
    raw = reads.reads.get(key)
    if head is None and reason is None:
        return None
    if chunks is None:
        try:
            chunks = store.keys(f"{key}(r)")
        except (ValueError, OSError):
            chunks = []
    sizes: dict[str, int] = {}
    for ckey in chunks:
        try:
            data = reads.get(ckey)
        except (ValueError, OSError):
            data = None
        if data is not None:
            sizes[ckey] = len(data)
    if head is None:
        return _View(key, "corrupt", reason=reason, raw=raw, chunk_sizes=sizes)
    version = json.loads(raw or b"{}").get("version")
    if head.status == "finished":
        status = "finished"
    else:
        try:
            status = "running" if store.is_locked(key) else "interrupted"
        except (ValueError, OSError):
            status = "interrupted"
    return _View(key, status, head, entries, None, version, raw, sizes)


def _require(store: Store, key: str) -> _View:
    view = _inspect(store, key)
    if view is None:
        _fail(f"no run {key!r} in {store.describe()}", EXIT_NOT_FOUND)
    return view


def _runs(store: Store) -> Iterator[_View]:
    try:
        keys = store.keys()
    except OSError as exc:
        _fail(f"cannot list {store.describe()}: {exc}", EXIT_USAGE)
    chunks: dict[str, list[str]] = {}
    for key in keys:
        owner = _chunk_owner(key)
        if owner is not None:
            chunks.setdefault(owner, []).append(key)
    for key in keys:
        if is_auxiliary(key):
            continue
        view = _inspect(store, key, chunks.get(key, []))
        if view is not None:
            yield view


# -- showing values ----------------------------------------------------------------------


def _pickle_size(encoded: dict[str, Any]) -> int | None:
    try:
        return len(base64.b64decode(encoded["$pickle"], validate=True))
    except (ValueError, TypeError, binascii.Error):
        return None


def _shown(encoded: Any, *, unpickle: bool = False, store: str = "", key: str = "") -> Any:
    """A recorded value as JSON data a person or script can read, without running code.

    JSON values are shown as they are; a pickled one as ``{"$pickled": {"bytes": N,
    "signed": bool}}``, or with ``unpickle`` as ``{"$repr": repr(value)}``.
    """
    if type(encoded) is not dict:
        return encoded
    if "$json" in encoded:
        return encoded["$json"]
    if "$pickle" not in encoded:
        return encoded
    if unpickle:
        try:
            return {"$repr": repr(check_decode(encoded, store, key))}
        except Exception as exc:  # unpickling runs arbitrary code: report whatever it raised
            return {"$unreadable": f"{type(exc).__name__}: {exc}"}
    return {"$pickled": {"bytes": _pickle_size(encoded), "signed": "hmac" in encoded}}


def _text(value: Any) -> str:
    """One-line text for a shown value."""
    if isinstance(value, dict) and len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "$pickled":
            size = "?" if inner["bytes"] is None else inner["bytes"]
            return f"<pickled, {size} B{', signed' if inner['signed'] else ''}>"
        if tag == "$repr":
            return str(inner)
        if tag == "$unreadable":
            return f"<cannot unpickle: {inner}>"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _resume_text(shown: Any) -> str:
    if shown is None:
        return "-"
    if isinstance(shown, dict) and not any(k.startswith("$") for k in shown):
        return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in shown.items())
    return _text(shown)


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def _encoded_size(encoded: Any) -> int:
    return len(json.dumps(encoded, separators=(",", ":")).encode())


# -- the command --------------------------------------------------------------------------


@click.group(epilog=_EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_url",
    metavar="URL",
    envvar="RESUMABLE_STORE",
    help="The store: file://PATH, memory:// or apify://[NAME]. Default: $RESUMABLE_STORE, "
    "else file://$RESUMABLE_DIR, else file://.resumable.",
)
@click.version_option(package_name="resumable", prog_name="resumable")
@click.pass_context
def main(ctx: click.Context, store_url: str | None) -> None:
    """See, reset, export and import the runs of resumable jobs in a store.

    A run is listed as running (a live process holds its lock), interrupted (unfinished,
    no process holds it: the next call of the job resumes it), finished, or corrupt (a
    job would refuse its record; the reason is shown). Records are read as jobs read
    them, signatures included: set RESUMABLE_SECRET as your jobs do. Nothing pickled
    is loaded unless `show --unpickle` asks.
    """
    ctx.obj = _Lazy(store_url)


class _Lazy:
    """Opens the store on first use, so ``--help`` never touches it."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = _open_store(self.url)
        return self._store


def _store(ctx: click.Context) -> Store:
    lazy = ctx.find_object(_Lazy)
    assert lazy is not None, "main() sets it"
    return lazy.store


def _items_done(head: Head) -> int | None:
    """Items consumed over the whole run: in earlier epochs and in this one."""
    done, before = head.items.get("done"), head.items.get("before", 0)
    if not isinstance(done, int) or not isinstance(before, int):
        return None
    return before + done


def _list_row(view: _View) -> dict[str, Any]:
    head = view.head
    row: dict[str, Any] = {
        "key": view.key,
        "job": head.job if head else None,
        "status": view.status,
        "reason": view.reason,
        "epoch": head.epoch if head else None,
        "units_done": head.done if head else None,
        "calls_done": sum(1 for k in view.entries if k.startswith("~")) if head else None,
        "items_done": _items_done(head) if head else None,
        "resume_point": _shown(head.args) if head else None,
        "updated": head.updated if head else None,
        "updated_utc": _when(head.updated) if head else None,
        "size": view.size,
        "error": head.error if head else None,
    }
    return row


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per run.")
@click.pass_context
def list_runs(ctx: click.Context, as_json: bool) -> None:
    """List the runs in the store, one line each.

    Columns: key, job, status, units done in the current epoch (the job's own steps,
    +N concurrent calls completed), items consumed (generator jobs, over all epochs), resume point, last
    write (UTC), record size (head and chunks), and a note: the reason a record is
    corrupt, or the error that ended the last attempt. A corrupt record is listed,
    never fatal: the exit code stays 0.
    """
    store = _store(ctx)
    rows = [_list_row(view) for view in _runs(store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"no runs in {store.describe()}")
        return
    header = ("KEY", "JOB", "STATUS", "UNITS", "ITEMS", "RESUME POINT", "UPDATED", "SIZE", "NOTE")
    lines = [header]
    for row in rows:
        units = "-" if row["units_done"] is None else str(row["units_done"])
        if row["calls_done"]:
            units += f"+{row['calls_done']}"
        note = row["reason"] or row["error"] or ""
        lines.append(
            (
                row["key"],
                row["job"] or "-",
                row["status"],
                units,
                "-" if not row["items_done"] else str(row["items_done"]),
                _short(_resume_text(row["resume_point"]), 28),
                row["updated_utc"] or "-",
                _size(row["size"]),
                _short(note, 60),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)]
        click.echo("  ".join([*cells, line[-1]]).rstrip())


def _show_data(view: _View, store: Store, unpickle: bool) -> dict[str, Any]:
    where = store.describe()

    def shown(value: Any) -> Any:
        return _shown(value, unpickle=unpickle, store=where, key=view.key)

    aside = [k for k in _safe_keys(store, f"{view.key}(") if _chunk_owner(k) is None]
    data: dict[str, Any] = {"key": view.key, "store": where}
    sizes = {
        "size": view.size,
        "head_size": len(view.raw or b""),
        "chunks": dict(sorted(view.chunk_sizes.items())),
        "moved_aside": aside,
    }
    head = view.head
    if head is None:
        raw = view.raw or b""
        data.update(status=view.status, reason=view.reason, **sizes)
        data["preview"] = raw[:120].decode("utf-8", "backslashreplace")
        return data
    data.update(
        {
            "job": head.job,
            "status": view.status,
            "format": FORMAT,
            "version": view.version,
            "created": head.created,
            "updated": head.updated,
            "attempts": head.attempts,
            "epoch": head.epoch,
            "watermark": head.done,
            "folded": head.folded,
            "digest": head.digest,
            "items": head.items,
            "items_done": _items_done(head),
            "resume_point": shown(head.args),
            "state": shown(head.state),
            "steps": [
                {
                    "position": _position(n),
                    "name": entry[0],
                    "args": entry[1],
                    "result_size": _encoded_size(entry[2]) if len(entry) > 2 else None,
                    **({"result": shown(entry[2])} if len(entry) > 2 else {}),
                }
                for n, entry in sorted(view.entries.items(), key=_order)
            ],
            "holes": [
                {"position": _position(n), "name": hole[0], "attempts": hole[-1 if n[0] == "~" else 3]}
                for n, hole in sorted(head.holes.items(), key=_order)
            ],
            "intents": [
                {"position": _position(n), "name": intent[0], "args": intent[1], "attempt": intent[2]}
                for n, intent in sorted(head.intents.items(), key=_order)
            ],
            "result": shown(head.result) if head.status == "finished" else None,
            "error": head.error,
            **sizes,
        }
    )
    return data


def _order(item: tuple[str, Any]) -> tuple[int, int, str]:
    """The job's own steps by position, then concurrent calls by label."""
    n = item[0]
    return (1, 0, n) if n.startswith("~") else (0, int(n), "")


def _position(n: str) -> int | str:
    """A unit number for the job's own steps; ``IDENT#SLOT`` for a concurrent call."""
    return n[1:] if n.startswith("~") else int(n)


def _confirm(question: str) -> bool:
    try:
        return click.confirm(question)
    except click.Abort:  # end of input, or Ctrl-C at the prompt
        click.echo(err=True)
        return False


def _safe_keys(store: Store, prefix: str) -> list[str]:
    try:
        return store.keys(prefix)
    except (ValueError, OSError):
        return []


@main.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--unpickle",
    is_flag=True,
    help="Show pickled values decoded (repr). This runs code from the record, needs the job's "
    "modules importable, and checks signatures against $RESUMABLE_SECRET. Off by default.",
)
@click.pass_context
def show(ctx: click.Context, key: str, as_json: bool, unpickle: bool) -> None:
    """Show the whole record of run KEY.

    Status, format version, epoch (how many resume points were declared), the watermark
    (units of this epoch done without a gap) and units completed above it, the recorded
    steps of this epoch (position, name, size of the encoded result), the steps that
    raised and run again on resume (holes), durable steps started but not completed
    (intents), the resume point, the state, the finished result and the last error.
    Values JSON cannot hold were pickled; they are shown as <pickled, N B> unless
    --unpickle. A corrupt record exits with 3 after saying why.
    """
    store = _store(ctx)
    view = _require(store, key)
    data = _show_data(view, store, unpickle)
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        _print_show(data)
    if view.status == "corrupt":
        ctx.exit(EXIT_CORRUPT)


def _print_show(data: dict[str, Any]) -> None:
    def line(label: str, value: object) -> None:
        click.echo(f"{label:<14}{value}")

    line("run", data["key"])
    line("store", data["store"])
    status = data["status"]
    if status == "corrupt":
        line("status", "corrupt")
        line("reason", data["reason"])
        line("size", f"{_size(data['size'])} (head {_size(data['head_size'])})")
        line("starts with", data["preview"])
        click.echo("`resumable reset KEY` removes it; on_corrupt='restart' moves it aside.")
        return
    line("job", data["job"])
    line("status", status)
    line("format", f"{data['format']} version {data['version']}")
    line("created", _when(data["created"]))
    line("updated", _when(data["updated"]))
    line("attempts", data["attempts"])
    line("epoch", f"{data['epoch']} (resume points declared)")
    calls = sum(1 for step in data["steps"] if isinstance(step["position"], str))
    more = f", and {calls} concurrent call(s)" if calls else ""
    line("watermark", f"{data['watermark']} of the job's own steps done{more}")
    items = data["items"]
    if data["items_done"] or items.get("sink") is not None or items.get("carry") is not None:
        text = f"{data['items_done']} consumed ({items.get('before', 0)} before this epoch)"
        if items.get("sink") is not None:
            text += f", the sink holds {items['sink']}"
        if items.get("carry") is not None:
            text += ", with carried items"
        line("items", text)
    line("resume point", _resume_text(data["resume_point"]))
    line("state", _text(data["state"]))
    steps = data["steps"]
    line("steps", f"{len(steps)} with a recorded result in this epoch")
    for step in steps:
        size = "no result" if step["result_size"] is None else _size(step["result_size"])
        click.echo(f"  #{step['position']!s:<6} {step['name']}  {size}")
    if data["folded"]:
        click.echo(
            f"  ({data['folded']} more returned None; only a digest of their names and arguments is kept)"
        )
    if data["holes"]:
        line("holes", "steps that raised; they run again on resume")
        for hole in data["holes"]:
            click.echo(f"  #{hole['position']!s:<6} {hole['name']}  failed {hole['attempts']} time(s)")
    if data["intents"]:
        line("intents", "durable steps started but not completed")
        for intent in data["intents"]:
            click.echo(f"  #{intent['position']!s:<6} {intent['name']}  attempt {intent['attempt']}")
    if status == "finished":
        line("result", _text(data["result"]))
    if data["error"]:
        line("error", data["error"])
    chunks = data["chunks"]
    line("size", f"{_size(data['size'])} (head {_size(data['head_size'])}, {len(chunks)} chunk(s))")
    if data["moved_aside"]:
        line("moved aside", ", ".join(data["moved_aside"]))


@main.command()
@click.argument("key")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Delete the record even while a live process holds the run. Risky: that process "
    "goes on and writes its progress again at its next flush, so the record comes back, "
    "usually without its older chunks (then it is corrupt). Stop the process first.",
)
@click.pass_context
def reset(ctx: click.Context, key: str, yes: bool, force: bool) -> None:
    """Forget run KEY (head and chunks), so the next call of the job starts over.

    Asks first unless --yes. Refuses (exit 4) a run a live process holds, unless --force.
    A corrupt record can be reset. Records moved aside by on_corrupt='restart' stay.
    """
    store = _store(ctx)
    view = _inspect(store, key)
    if view is None and not _safe_keys(store, f"{key}(r)"):
        _fail(f"no run {key!r} in {store.describe()}", EXIT_NOT_FOUND)
    status = view.status if view else "orphan chunks"
    if status == "running" and not force:
        _fail(
            f"run {key!r} in {store.describe()} is held by a live process; stop it first, or pass "
            "--force to delete the record anyway (the process will write it again)",
            EXIT_REFUSED,
        )
    if not yes and not _confirm(f"Reset run {key!r} ({status}) in {store.describe()}?"):
        _fail("not reset", EXIT_REFUSED)
    lock: RunLock | None = None
    try:
        lock = store.lock(key)
    except RunLocked:
        if not force:
            _fail(f"run {key!r} was taken by a live process meanwhile; not reset", EXIT_REFUSED)
    try:
        delete_run(store, key)
    finally:
        if lock is not None:
            lock.release()
    click.echo(f"reset {key}" if lock is not None else f"reset {key} (forced while a live process held it)")


def _export_data(view: _View, store: Store) -> dict[str, Any]:
    head = view.head
    assert head is not None
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "key": head.key,
        "job": head.job,
        "status": head.status,
        "created": head.created,
        "updated": head.updated,
        "attempts": head.attempts,
        "state": head.state,
        "resume_point": head.args,
        "progress": {
            "epoch": head.epoch,
            "done": head.done,
            "digest": head.digest,
            "folded": head.folded,
            "counts": head.counts,
            "items": head.items,
            "holes": head.holes,
            "intents": head.intents,
        },
        "steps": dict(sorted(view.entries.items(), key=_order)),
        "result": head.result,
        "error": head.error,
        "exported_from": store.describe(),
    }


@main.command()
@click.argument("key")
@click.pass_context
def export(ctx: click.Context, key: str) -> None:
    """Print run KEY's state and progress as JSON on stdout.

    Everything a run needs to resume: the state, the resume point, the progress
    (epoch, watermark, holes, intents, items) and the recorded step results of the
    current epoch, as recorded (values JSON cannot hold stay pickled, in base64).
    `resumable import` reads it back, into this or another store, under any key.
    """
    store = _store(ctx)
    view = _require(store, key)
    if view.head is None:
        _fail(f"record {key!r} in {store.describe()} is corrupt: {view.reason}", EXIT_CORRUPT)
    click.echo(json.dumps(_export_data(view, store), indent=2, ensure_ascii=False))


class _Invalid(Exception):
    pass


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise _Invalid(message)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _unit(n: Any, where: str) -> int:
    _need(isinstance(n, str) and n.isdigit(), f"{where}: {n!r} is not a unit number")
    return int(n)


def _check_encoded(value: Any, where: str) -> None:
    if type(value) is dict and "$pickle" in value and "$json" not in value:
        _need(isinstance(value["$pickle"], str), f"{where}: '$pickle' is not base64 text")
        _need(_pickle_size(value) is not None, f"{where}: '$pickle' is not valid base64")
        _need(isinstance(value.get("hmac", ""), str), f"{where}: 'hmac' is not text")


def _parse_export(data: Any, key: str) -> tuple[Head, dict[str, Entry]]:
    """Check an export document and build the head and entries to write for ``key``."""
    _need(isinstance(data, dict), "the file does not hold a JSON object")
    _need(
        data.get("format") == EXPORT_FORMAT,
        f"not a resumable export ('format' is {data.get('format')!r}, not {EXPORT_FORMAT!r})",
    )
    version = data.get("version")
    _need(
        _is_int(version) and version == EXPORT_VERSION,
        f"export version {version!r} is not one this resumable reads ({EXPORT_VERSION})",
    )
    for name in ("job", "status", "state", "resume_point", "progress", "steps"):
        _need(name in data, f"the field {name!r} is missing")
    job, status = data["job"], data["status"]
    _need(isinstance(job, str) and bool(job), "'job' must be a non-empty string")
    _need(status in ("running", "finished"), f"'status' must be 'running' or 'finished', not {status!r}")
    now = time.time()
    created, updated = data.get("created", now), data.get("updated", now)
    for name, value in (("created", created), ("updated", updated)):
        _need(type(value) in (int, float) and value >= 0, f"{name!r} must be a time in seconds")
    attempts = data.get("attempts", 0)
    _need(_is_int(attempts) and attempts >= 0, "'attempts' must be a whole number >= 0")
    error = data.get("error")
    _need(error is None or isinstance(error, str), "'error' must be text or null")

    state = data["state"]
    _check_encoded(state, "'state'")
    plain_state = state["$json"] if type(state) is dict and "$json" in state else state
    _need(type(plain_state) is dict, "'state' must be a JSON object (or a pickled value)")
    args = data["resume_point"]
    if args is not None:
        _check_encoded(args, "'resume_point'")
        plain_args = args["$json"] if type(args) is dict and "$json" in args else args
        _need(type(plain_args) is dict, "'resume_point' must be null or an object of arguments")
    _check_encoded(data.get("result"), "'result'")

    progress = data["progress"]
    _need(isinstance(progress, dict), "'progress' must be an object")
    for name in ("epoch", "done", "digest", "folded", "counts", "items", "holes", "intents"):
        _need(name in progress, f"the field 'progress.{name}' is missing")
    epoch, done, folded = progress["epoch"], progress["done"], progress["folded"]
    for name, value in (("epoch", epoch), ("done", done), ("folded", folded)):
        _need(_is_int(value) and value >= 0, f"'progress.{name}' must be a whole number >= 0")
    digest = progress["digest"]
    _need(isinstance(digest, str) and _is_hex(digest), "'progress.digest' must be hexadecimal text")
    counts = progress["counts"]
    _need(
        isinstance(counts, dict)
        and all(_is_hex(k) and _is_int(v) and v > 0 for k, v in counts.items())
        and sum(counts.values()) == folded,
        "'progress.counts' must count the folded steps by hexadecimal name code, adding up to "
        "'progress.folded'",
    )
    items = progress["items"]
    _need(isinstance(items, dict), "'progress.items' must be an object")
    for name in ("done", "before"):
        value = items.get(name, 0)
        _need(_is_int(value) and value >= 0, f"'progress.items.{name}' must be a whole number >= 0")
    sink = items.get("sink")
    _need(sink is None or (_is_int(sink) and sink >= 0), "'progress.items.sink' must be null or >= 0")
    _check_encoded(items.get("carry"), "'progress.items.carry'")

    holes_in = progress["holes"]
    _need(isinstance(holes_in, dict), "'progress.holes' must be an object")
    holes: dict[str, list[Any]] = {}
    for n, hole in holes_in.items():
        if _is_label(n):
            _need(
                isinstance(hole, list) and len(hole) == 2 and isinstance(hole[0], str) and _is_int(hole[1]),
                f"'progress.holes.{n}' must be [step name, attempts]",
            )
            holes[n] = hole
            continue
        unit = _unit(n, "'progress.holes'")
        _need(unit < done, f"'progress.holes': hole {unit} is not below the watermark {done}")
        _need(
            isinstance(hole, list)
            and len(hole) == 5
            and isinstance(hole[0], str)
            and isinstance(hole[1], str)
            and _is_hex(hole[1])
            and _is_int(hole[2])
            and _is_int(hole[3])
            and _is_int(hole[4]),
            f"'progress.holes.{n}' must be [step name, hex digest, folded count, attempts, args code]",
        )
        holes[str(unit)] = hole
    intents_in = progress["intents"]
    _need(isinstance(intents_in, dict), "'progress.intents' must be an object")
    intents: dict[str, Entry] = {}
    for label, intent in intents_in.items():
        n = label if _is_label(label) else str(_unit(label, "'progress.intents'"))
        _need(
            isinstance(intent, list)
            and len(intent) == 3
            and isinstance(intent[0], str)
            and _is_int(intent[1])
            and _is_int(intent[2]),
            f"'progress.intents.{n}' must be [step name, args code, attempt]",
        )
        intents[n] = intent

    steps = data["steps"]
    _need(isinstance(steps, dict), "'steps' must be an object of recorded steps by unit number or call label")
    entries: dict[str, Entry] = {}
    for n, entry in steps.items():
        _need(
            isinstance(entry, list)
            and 2 <= len(entry) <= 3
            and isinstance(entry[0], str)
            and _is_int(entry[1]),
            f"'steps.{n}' must be [step name, args code] plus the encoded result if any",
        )
        if len(entry) > 2:
            _check_encoded(entry[2], f"'steps.{n}'")
        if _is_label(n):
            entries[n] = entry
            continue
        unit = _unit(n, "'steps'")
        _need(
            unit < done and str(unit) not in holes,
            f"'steps.{n}': step {unit} is recorded but not below the watermark {done} (or is a hole)",
        )
        entries[str(unit)] = entry
    below = sum(1 for n in entries if not _is_label(n))
    own_holes = sum(1 for n in holes if not _is_label(n))
    _need(
        below + own_holes + folded == done,
        f"the progress does not add up: {done} units done, but {below} recorded steps below it, "
        f"{own_holes} holes and {folded} folded steps (steps that returned None) make "
        f"{below + own_holes + folded}",
    )
    _need(status != "finished" or "result" in data, "a finished run needs its 'result'")
    head = Head(
        key=key,
        job=job,
        status=status,
        created=float(created),
        updated=float(updated),
        epoch=epoch,
        args=args,
        state=state,
        done=done,
        digest=digest,
        folded=folded,
        counts={k: int(v) for k, v in counts.items()},
        intents=intents,
        holes=holes,
        items=dict(progress["items"]),
        result=data.get("result") if status == "finished" else None,
        error=error,
        attempts=attempts,
    )
    source = data.get("key")
    if isinstance(source, str) and source != key:
        _rebind(head, entries, source, key)
    return head, entries


def _is_label(n: Any) -> bool:
    """A concurrent call's key in a record: ``~IDENT#SLOT``."""
    return isinstance(n, str) and n.startswith("~") and "#" in n


def _rebind(head: Head, entries: dict[str, Entry], source: str, key: str) -> None:
    """Signed values name the run they belong to: re-sign a copy's for its new key.

    Each signature is checked against the run it was exported from first (with
    ``RESUMABLE_SECRET``), so a document cannot launder another run's values.
    """

    def again(value: Any, where: str) -> Any:
        if type(value) is not dict or "hmac" not in value:
            return value
        try:
            verify_value(value, source)
            mac = resign(base64.b64decode(value["$pickle"]), key)
        except _BadValue as exc:
            raise _Invalid(f"{where}: {exc}") from None
        return {"$pickle": value["$pickle"], "hmac": mac}

    head.state = again(head.state, "'state'")
    head.args = again(head.args, "'resume_point'")
    head.result = again(head.result, "'result'")
    if "carry" in head.items:
        head.items["carry"] = again(head.items["carry"], "'progress.items.carry'")
    for n, entry in entries.items():
        if len(entry) > 2:
            entry[2] = again(entry[2], f"'steps.{n}'")


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _record_bytes(head: Head, entries: dict[str, Entry]) -> dict[str, bytes]:
    """The store values of a run: its chunks (as a job writes them) and its head, last."""
    ordered = sorted(entries.items(), key=_order)
    out: dict[str, bytes] = {}
    groups = [ordered[i : i + _CHUNK_ENTRIES] for i in range(0, len(ordered), _CHUNK_ENTRIES)]
    for index, group in enumerate(groups):
        out[chunk_key(head.key, head.epoch, index)] = dump_chunk(
            head.key,
            head.epoch,
            index,
            {n: entry_text(e[0], e[1], canonical_json(e[2]) if len(e) > 2 else None) for n, e in group},
        )
    head.chunks = [0, len(groups) - 1]
    out[head.key] = dump_head(head)
    return out


@main.command("import")
@click.argument("key")
@click.argument("file", type=click.File("rb"))
@click.option("--yes", "-y", is_flag=True, help="Replace an existing record without asking.")
@click.pass_context
def import_run(ctx: click.Context, key: str, file: Any, yes: bool) -> None:
    """Write run KEY from FILE, a JSON document made by `resumable export` ('-' for stdin).

    The document is checked before anything is written: its format, every field, and
    that the progress adds up (a malformed file exits with 2 and says what is wrong).
    KEY may differ from the key it was exported from: that copies a run. An existing
    record under KEY is replaced after confirmation (--yes to skip); a run a live
    process holds is never replaced (exit 4). The next call of the job resumes from it.
    """
    store = _store(ctx)
    try:
        check_key(key)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    if is_auxiliary(key):
        _fail(f"{key!r} is not a run key: run keys hold no '('", EXIT_USAGE)
    name = getattr(file, "name", "FILE")
    try:
        data = json.loads(file.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"{name} is not JSON: {exc}", EXIT_USAGE)
    try:
        head, entries = _parse_export(data, key)
    except _Invalid as exc:
        _fail(f"{name} cannot be imported: {exc}. Nothing was written.", EXIT_USAGE)
    values = _record_bytes(head, entries)
    # Read it back as a job will, before touching the store.
    from resumable.stores.memory import MemoryStore

    trial = MemoryStore()
    for k, v in values.items():
        trial.set(k, v)
    try:
        _load(trial, key, "raise")
    except (CheckpointCorrupted, ValueError, TypeError) as exc:  # pragma: no cover - checked above
        _fail(f"{name} cannot be imported: {exc}. Nothing was written.", EXIT_USAGE)
    try:
        lock = store.lock(key)
    except RunLocked:
        _fail(f"run {key!r} in {store.describe()} is held by a live process; not imported", EXIT_REFUSED)
    try:
        existing = store.get(key) is not None or bool(store.keys(f"{key}(r)"))
        if existing and not yes and not _confirm(f"Replace run {key!r} in {store.describe()}?"):
            _fail("not imported", EXIT_REFUSED)
        # Head first: an interrupted import leaves no head (only chunks reset removes).
        store.delete(key)
        for old in store.keys(f"{key}(r)"):
            store.delete(old)
        for k, v in values.items():
            store.set(k, v)
    finally:
        lock.release()
    click.echo(
        f"imported {key} ({head.status}, epoch {head.epoch}, {head.done} units done, "
        f"recorded steps: {len(entries)}) into {store.describe()}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
