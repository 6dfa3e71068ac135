"""Run keys: stable digests of plain-data arguments, ``ignore=``, ``key=``, `make_key`."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resumable import MemoryStore, checkpoint, make_key, resumable
from resumable._keys import digest_plain, is_plain
from resumable.stores import check_key


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Client:
    """Not plain data: a stand-in for an HTTP client or a session."""

    def __init__(self, name: str) -> None:
        self.name = name


STORE = MemoryStore()


@resumable(store=STORE)
def sync(client: Client | None, account: str, limit: int = 10, *, verbose: bool = False) -> str:
    return f"{account}:{limit}"


# -- digests stable across processes -------------------------------------------------

_MODULE = textwrap.dedent(
    """
    import datetime as dt, decimal, enum, uuid
    from pathlib import PurePosixPath
    from resumable import resumable, MemoryStore

    class Color(enum.Enum):
        RED = "red"

    @resumable(store=MemoryStore())
    def job(client, a, b=None, *rest, flag=False, **extra):
        return None

    class Client:
        pass

    CALLS = [
        ((), {"client": None, "a": 1}),
        ((Client(), "acme", {"x": 1, "y": [1, 2.5, None, True]}), {}),
        ((None, {"set", "of", "strings", "order", "varies", "by", "hash", "seed"}), {}),
        ((None, frozenset({"q", "r", "s"}), b"\\x00bytes"), {"flag": True}),
        ((None, dt.date(2024, 2, 29), dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.timezone.utc)), {}),
        ((None, PurePosixPath("/data/in.csv"), Color.RED, decimal.Decimal("1.10")), {}),
        ((None, uuid.UUID(int=7), dt.timedelta(hours=1), dt.time(8, 15)), {"extra_kw": {"b": 2, "a": 1}}),
        ((None, "x" * 300, [{"k": i} for i in range(50)]), {}),
    ]

    def keys():
        return [job.key_for(*args, **kwargs) for args, kwargs in CALLS]
    """
)


def test_run_keys_are_stable_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keyjob_mod.py").write_text(_MODULE)
    script = "import json, keyjob_mod; print(json.dumps(keyjob_mod.keys()))"
    seen = []
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        seen.append(json.loads(out.stdout))
    monkeypatch.syspath_prepend(str(tmp_path))
    import keyjob_mod  # type: ignore[import-not-found]

    here = keyjob_mod.keys()
    assert seen[0] == seen[1] == seen[2] == here
    assert len(set(here)) == len(here)  # different arguments, different runs
    for key in here:
        assert check_key(key) == key
        assert key.startswith("keyjob_mod.job-")


# -- plain and non-plain arguments ---------------------------------------------------


def test_key_names_the_job_and_digests_arguments() -> None:
    key = sync.key_for(None, "acme")
    assert key.startswith(f"{__name__}.sync-")
    assert check_key(key) == key
    assert key != sync.key_for(None, "globex")
    assert key != sync.key_for(None, "acme", 11)


def test_non_plain_arguments_are_left_out() -> None:
    assert sync.key_for(Client("one"), "acme") == sync.key_for(Client("two"), "acme")
    assert sync.key_for(Client("one"), "acme") != sync.key_for(Client("one"), "globex")


def test_a_container_holding_a_non_plain_value_is_left_out_whole() -> None:
    @resumable(store=MemoryStore())
    def job(items: list[Any], n: int) -> None: ...

    assert job.key_for([Client("a")], 1) == job.key_for([Client("b"), 2], 1)
    assert job.key_for([Client("a")], 1) != job.key_for([Client("a")], 2)
    assert job.key_for([1], 1) != job.key_for([2], 1)


def test_a_circular_structure_is_not_plain() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    assert not is_plain(loop)

    @resumable(store=MemoryStore())
    def job(data: Any, n: int) -> None: ...

    assert job.key_for(loop, 1) == job.key_for(object(), 1)


def test_ignore_leaves_arguments_out() -> None:
    @resumable(store=MemoryStore(), ignore=("verbose", "limit"))
    def job(account: str, limit: int = 10, *, verbose: bool = False) -> None: ...

    assert job.key_for("acme", 1, verbose=True) == job.key_for("acme", 500)
    assert job.key_for("acme") != job.key_for("globex")


def test_ignore_of_an_unknown_name_fails_at_decoration() -> None:
    with pytest.raises(TypeError, match="nope"):

        @resumable(store=MemoryStore(), ignore=("nope",))
        def job(account: str) -> None: ...

    with pytest.raises(TypeError, match="tuple"):
        resumable(store=MemoryStore(), ignore="account")  # type: ignore[arg-type]


def test_defaults_are_applied() -> None:
    assert sync.key_for(None, "acme") == sync.key_for(None, "acme", 10)
    assert sync.key_for(None, "acme") == sync.key_for(None, account="acme", limit=10, verbose=False)
    assert sync.key_for(client=None, account="acme") == sync.key_for(None, "acme")
    assert sync.key_for(None, "acme") != sync.key_for(None, "acme", verbose=True)


def test_calls_that_differ_only_by_default_share_a_run() -> None:
    store = MemoryStore()
    calls = []

    @resumable(store=store)
    def job(a: int, b: int = 5) -> int:
        calls.append((a, b))
        return a + b

    assert job(1) == 6
    assert job(1, b=5) == 6  # the finished run, not a new one
    assert job(a=1, b=5) == 6
    assert calls == [(1, 5)]
    assert job(1, 6) == 7
    assert calls == [(1, 5), (1, 6)]
    assert len([k for k in store.keys(prefix="") if "(" not in k]) == 2


def test_unbindable_call_raises_type_error() -> None:
    with pytest.raises(TypeError):
        sync.key_for()
    with pytest.raises(TypeError):
        sync(None, "acme", nope=1)  # type: ignore[call-arg]


# -- key= ----------------------------------------------------------------------------


def test_key_format_string() -> None:
    @resumable(store=MemoryStore(), key="sync-{account}")
    def job(client: Any, account: str, limit: int = 3) -> None: ...

    assert job.key_for(Client("x"), "acme") == "sync-acme"
    assert job.key_for(Client("x"), "acme", limit=99) == "sync-acme"
    unsafe = job.key_for(None, "a/b c\u00e9")
    assert check_key(unsafe) == unsafe
    assert unsafe.startswith("sync-a_b_c")
    assert unsafe != job.key_for(None, "a/b c")


def test_key_format_string_uses_defaults() -> None:
    @resumable(store=MemoryStore(), key="{account}-{limit}")
    def job(account: str, limit: int = 3) -> None: ...

    assert job.key_for("acme") == "acme-3"
    assert job.key_for("acme", limit=4) == "acme-4"


def test_key_format_naming_an_unknown_parameter_fails_at_decoration() -> None:
    with pytest.raises(TypeError, match="nope"):

        @resumable(store=MemoryStore(), key="sync-{nope}")
        def job(account: str) -> None: ...


def test_key_callable() -> None:
    @resumable(store=MemoryStore(), key=lambda client, account, limit=3: f"acct {account.upper()} {limit}")
    def job(client: Any, account: str, limit: int = 3) -> None: ...

    key = job.key_for(Client("x"), "acme")
    assert key.startswith("acct_ACME_3")
    assert check_key(key) == key

    @resumable(store=MemoryStore(), key=lambda account: f"acct-{account}")
    def plain(account: str) -> None: ...

    assert plain.key_for("acme") == "acct-acme"


def test_key_callable_must_return_text() -> None:
    @resumable(store=MemoryStore(), key=lambda account: 42)
    def job(account: str) -> None: ...

    with pytest.raises(TypeError, match="str"):
        job("acme")


def test_key_option_must_be_text_or_callable() -> None:
    with pytest.raises(TypeError):
        resumable(key=42)  # type: ignore[call-overload]


def test_a_custom_key_is_where_the_record_lives() -> None:
    store = MemoryStore()

    @resumable(store=store, key="nightly-{day}")
    def job(day: str) -> str:
        return day * 2

    assert job("mon") == "monmon"
    assert store.keys() == ["nightly-mon"]


# -- order-insensitive containers and supported types --------------------------------


def test_sets_and_dicts_are_order_insensitive() -> None:
    @resumable(store=MemoryStore())
    def job(value: Any) -> None: ...

    assert job.key_for({"a": 1, "b": 2}) == job.key_for({"b": 2, "a": 1})
    assert job.key_for({3, 1, 2}) == job.key_for({2, 3, 1})
    assert job.key_for(frozenset("xyz")) == job.key_for(frozenset("zyx"))
    assert job.key_for({1, "a", None}) == job.key_for({None, "a", 1})
    assert job.key_for({1: "a", "b": 2}) == job.key_for({"b": 2, 1: "a"})  # mixed key types
    assert job.key_for({(1, 2): "t"}) == job.key_for({(1, 2): "t"})
    assert job.key_for([1, 2]) != job.key_for([2, 1])  # lists keep their order
    assert job.key_for({1, 2}) != job.key_for({1, 3})
    assert job.key_for({"a": 1}) != job.key_for({"a": 2})


PLAIN_VALUES: list[tuple[Any, Any]] = [
    (b"bytes", b"other"),
    (bytearray(b"ba"), bytearray(b"bb")),
    (dt.date(2024, 1, 1), dt.date(2024, 1, 2)),
    (dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 13)),
    (dt.time(1, 2), dt.time(1, 3)),
    (dt.timedelta(seconds=5), dt.timedelta(seconds=6)),
    (Path("/data/a.csv"), Path("/data/b.csv")),
    (PurePosixPath("rel/x"), PurePosixPath("rel/y")),
    (Color.RED, Color.BLUE),
    (decimal.Decimal("1.5"), decimal.Decimal("1.50000001")),
    (uuid.UUID(int=1), uuid.UUID(int=2)),
    ((1, "a"), (1, "b")),
    (None, 0),
    (True, False),
    (1.5, 2.5),
    ("text", "texts"),
]


@pytest.mark.parametrize(("value", "other"), PLAIN_VALUES, ids=lambda v: type(v).__name__)
def test_plain_types_go_into_the_key(value: Any, other: Any) -> None:
    @resumable(store=MemoryStore())
    def job(value: Any) -> None: ...

    assert is_plain(value)
    assert is_plain([value, {"nested": value}])
    assert job.key_for(value) == job.key_for(value)
    assert job.key_for(value) != job.key_for(other)
    assert job.key_for([value]) != job.key_for([other])


def test_equal_values_of_kinds_that_compare_equal_give_one_key() -> None:
    @resumable(store=MemoryStore())
    def job(value: Any) -> None: ...

    assert job.key_for(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)) == job.key_for(
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    )
    assert job.key_for(b"x") != job.key_for("x")  # bytes are not text
    assert job.key_for(dt.date(2024, 1, 1)) != job.key_for(dt.datetime(2024, 1, 1))


def test_arguments_are_compared_as_their_json_text() -> None:
    # Documented in the README: the digest is of the arguments' JSON text (fast, C-encoded),
    # so a tuple and a list with the same items, and a dict key 1 and "1", are the same run.
    @resumable(store=MemoryStore())
    def job(value: Any) -> None: ...

    assert job.key_for({1: "a"}) == job.key_for({"1": "a"})
    assert job.key_for((1, 2)) == job.key_for([1, 2])
    assert job.key_for({1, 2}) != job.key_for([1, 2])  # sets are tagged


def test_not_plain_values() -> None:
    assert not is_plain(Client("x"))
    assert not is_plain(object())
    assert not is_plain([1, object()])
    assert not is_plain({"k": lambda: None})
    assert is_plain({"k": [1, {2, 3}, (4, b"5")]})


def test_digest_plain_is_a_short_stable_hex() -> None:
    digest = digest_plain({"a": "1"})
    assert digest == digest_plain({"a": "1"})
    assert len(digest) == 16
    int(digest, 16)
    assert digest_plain({"a": "1"}, size=32)[:16] == digest
    assert digest_plain({"a": "2"}) != digest


def test_a_step_inside_a_job_does_not_change_its_key() -> None:
    # The key is computed from the job's own call only.
    @checkpoint
    def step() -> int:
        return 1

    store = MemoryStore()

    @resumable(store=store)
    def job(n: int) -> int:
        return step() + n

    assert job(1) == 2
    assert store.get(job.key_for(1)) is not None


# -- make_key ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["run", "sync-acme", "a.b_c-d.e", "x" * 150, "2024-01-01"])
def test_make_key_keeps_safe_text(text: str) -> None:
    assert make_key(text) == text


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("sync acme/2024", "sync_acme_2024"),
        ("caf\u00e9 au lait", "caf_au_lait"),
        (".hidden", "hidden"),
        ("..", "run"),
        ("", "run"),
        ("tests.mod.f.<locals>.job-1a2b", "tests.mod.f._locals_.job-1a2b"),
        ("a(b)", "a_b"),
        ("it's!", "it_s"),
    ],
)
def test_make_key_keeps_a_readable_prefix(text: str, prefix: str) -> None:
    key = make_key(text)
    assert check_key(key) == key
    assert key.startswith(prefix)
    assert len(prefix) + 8 <= len(key) <= len(prefix) + 34  # a digest is appended
    assert key != prefix


def test_make_key_hashes_what_is_too_long() -> None:
    long = "y" * 201
    key = make_key(long)
    assert check_key(key) == key
    assert len(key) <= 200
    assert key.startswith("y" * 100)
    assert key != make_key("y" * 202)


@given(st.text(max_size=400))
def test_make_key_accepts_any_text(text: str) -> None:
    key = make_key(text)
    assert check_key(key) == key
    assert len(key) <= 200
    assert make_key(text) == key  # deterministic


@given(st.text(max_size=60), st.text(max_size=60))
def test_make_key_keeps_distinct_texts_apart(a: str, b: str) -> None:
    if a != b:
        assert make_key(a) != make_key(b)


def test_make_key_distinct_near_misses() -> None:
    texts = ["a b", "a_b", "a/b", "a\\b", "a  b", "a b ", " a b", "A B", "a\u00a0b", "a.b", "a..b"]
    keys = [make_key(t) for t in texts]
    assert len(set(keys)) == len(texts)


def test_make_key_never_collides_with_a_hashed_key() -> None:
    text = "a b"
    lookalike = make_key(text)  # 'a_b-<16 hex digits>', itself safe text
    assert lookalike != text
    assert make_key(lookalike) != make_key(text)
