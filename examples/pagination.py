"""Resumable pagination: a cursor-paginated HTTP API into a JSON Lines file, killed and resumed.

Run it with ``python examples/pagination.py``. It serves a small catalogue API on
127.0.0.1 (stdlib ``http.server`` in a thread: 5,000 items, 50 a page, a little
latency per page, an opaque ``next`` cursor, and a page-fetch counter at ``/stats``),
then consumes it in a child process with the generator job below, drained into a
`JsonLinesSink`. It SIGKILLs the child part way, starts it again, and checks the
output: every item exactly once, in order, and how many pages were fetched.

The job is the loop everyone writes by hand, plus two lines::

    @resumable(ignore=("api",))
    def listings(api, cursor=None):
        while True:
            page = get_json(api, cursor)
            yield from page["items"]
            cursor = page["next"]
            if cursor is None:
                return
            restart_with(cursor=cursor)   # a restart calls listings(api, cursor=<this>)
            flush()                       # make the cursor durable before the next fetch

``restart_with`` makes the resumed run start at the saved cursor (one page fetched
again at most, never the pages before), and the sink's count, saved with the
progress, makes the output exactly-once even when the process dies between writing
items and saving progress.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from resumable import flush, restart_with, resumable
from resumable.sinks import JsonLinesSink, drain

ITEMS = 5000
PAGE_SIZE = 50
LATENCY = 0.01  # seconds per page


# -- the API ---------------------------------------------------------------------------


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": offset}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    padded = cursor + "=" * (-len(cursor) % 4)
    return int(json.loads(base64.urlsafe_b64decode(padded))["after"])


class CatalogAPI:
    """A cursor-paginated catalogue served on 127.0.0.1 (``with CatalogAPI() as api:``).

    ``GET /items[?cursor=C]`` returns ``{"items": [...], "next": C2 or null}``;
    ``GET /stats`` returns ``{"page_fetches": N, "pages": P}``. ``fetches`` counts
    the page requests served, over every client.
    """

    def __init__(self, items: int = ITEMS, page_size: int = PAGE_SIZE, latency: float = LATENCY) -> None:
        self.items = items
        self.page_size = page_size
        self.latency = latency
        self.fetches = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="catalog-api", daemon=True)

    @property
    def pages(self) -> int:
        return -(-self.items // self.page_size)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> CatalogAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def page(self, cursor: str | None) -> dict[str, Any]:
        start = decode_cursor(cursor) if cursor else 0
        end = min(start + self.page_size, self.items)
        items = [
            {"id": i, "title": f"Listing {i}", "price": round(10 + (i * 7919 % 1000) / 10, 2)}
            for i in range(start, end)
        ]
        return {"items": items, "next": encode_cursor(end) if end < self.items else None}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/items":
                    with api._lock:
                        api.fetches += 1
                    time.sleep(api.latency)
                    cursor = urllib.parse.parse_qs(url.query).get("cursor", [None])[0]
                    try:
                        body = api.page(cursor)
                    except (ValueError, KeyError):
                        self.send_error(400, "bad cursor")
                        return
                elif url.path == "/stats":
                    body = {"page_fetches": api.fetches, "pages": api.pages}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)  # the client may have been killed meanwhile

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        return Handler


# -- the job ---------------------------------------------------------------------------


def get_json(api: str, cursor: str | None) -> dict[str, Any]:
    query = f"?{urllib.parse.urlencode({'cursor': cursor})}" if cursor else ""
    with urllib.request.urlopen(f"{api}/items{query}", timeout=30) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@resumable(ignore=("api",))  # the API's address (its port) is not part of the run's identity
def listings(api: str, cursor: str | None = None) -> Iterator[dict[str, Any]]:
    """Every listing of the catalogue, one page at a time."""
    while True:
        page = get_json(api, cursor)
        yield from page["items"]
        cursor = page["next"]
        if cursor is None:
            return
        restart_with(cursor=cursor)  # a restart calls listings(api, cursor=cursor)
        flush()  # the cursor is durable before the next page is fetched


def child(api: str, out: Path) -> int:
    """Drain every listing into ``out`` (one process; the parent may kill it)."""
    sink = JsonLinesSink(out)
    try:
        return drain(listings(api), sink, batch_size=100)
    finally:
        sink.close()


# -- the demonstration -----------------------------------------------------------------


def child_command(api: str, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", api, str(out)]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_ids(path: Path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def demonstrate(
    command: Callable[[str, Path], list[str]],
    title: str,
    items: int = ITEMS,
    page_size: int = PAGE_SIZE,
    latency: float = LATENCY,
) -> int:
    """Serve the API, run ``command`` in a child, SIGKILL it part way, run it again, check."""
    work = Path(tempfile.mkdtemp(prefix="resumable-pagination-"))
    env = dict(os.environ, RESUMABLE_DIR=str(work / ".resumable"))
    out = work / "listings.jsonl"
    with CatalogAPI(items, page_size, latency) as api:
        print(f"{title}: {api.items} items in {api.pages} pages at {api.url}, output {out}")
        print("1. consume the API in a child process and SIGKILL it part way")
        proc = subprocess.Popen(command(api.url, out), env=env)
        deadline = time.monotonic() + 60
        while count_lines(out) < api.items * 0.4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print(f"   killed with {count_lines(out)} items written, {api.fetches} pages fetched")
        print("2. run it again: it resumes at the saved cursor")
        subprocess.run(command(api.url, out), env=env, check=True)
        print("3. check")
        ids = read_ids(out)
        exactly_once = ids == list(range(api.items))
        print(f"   output: {len(ids)} items, each exactly once and in order: {exactly_once}")
        print(
            f"   page fetches: {api.fetches} for {api.pages} pages (one kill: one page fetched again at most)"
        )
        print(f"   the run's record: `resumable --store file://{work / '.resumable'} list`")
        ok = exactly_once and api.fetches <= api.pages + 1
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=ITEMS, help="items the API serves")
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE, help="items a page")
    parser.add_argument("--latency", type=float, default=LATENCY, help="seconds the API takes a page")
    parser.add_argument("--child", nargs=2, metavar=("API", "OUT"), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    return demonstrate(child_command, "pagination demo", args.items, args.page_size, args.latency)


if __name__ == "__main__":
    sys.exit(main())
