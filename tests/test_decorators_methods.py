"""``@resumable`` and ``@checkpoint`` on methods: instance, class and static, sync and async.

Where it makes sense the decorator is tested both inside and outside ``classmethod`` and
``staticmethod``: ``@classmethod @checkpoint def f`` and ``@checkpoint @classmethod def f``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
from collections import Counter
from typing import Any

import pytest

from resumable import MemoryStore, Store, checkpoint, resumable

STORE = MemoryStore()
CALLS: Counter[str] = Counter()
FAIL: dict[str, int | None] = {"at": None}


class Boom(Exception):
    pass


def _maybe_fail(i: int) -> None:
    if FAIL["at"] == i:
        raise Boom(f"at {i}")


class Plain:
    """The same methods, undecorated: what decoration must preserve."""

    def step(self, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        return x * scale

    @classmethod
    def cstep(cls, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        return x * scale

    @staticmethod
    def sstep(x: int, *, scale: int = 2) -> int:
        """Scale x."""
        return x * scale

    async def astep(self, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        return x * scale


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name  # part of the run key: Worker("a").job(1) and Worker("b").job(1) differ

    @checkpoint
    def step(self, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        CALLS["step"] += 1
        return x * scale

    @classmethod
    @checkpoint
    def cstep(cls, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        CALLS["cstep"] += 1
        return x * scale

    @checkpoint
    @classmethod
    def cstep_outer(cls, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        CALLS["cstep_outer"] += 1
        return x * scale

    @staticmethod
    @checkpoint
    def sstep(x: int, *, scale: int = 2) -> int:
        """Scale x."""
        CALLS["sstep"] += 1
        return x * scale

    @checkpoint
    @staticmethod
    def sstep_outer(x: int, *, scale: int = 2) -> int:
        """Scale x."""
        CALLS["sstep_outer"] += 1
        return x * scale

    @checkpoint
    async def astep(self, x: int, *, scale: int = 2) -> int:
        """Scale x."""
        await asyncio.sleep(0)
        CALLS["astep"] += 1
        return x * scale

    # -- jobs --------------------------------------------------------------------------

    @resumable(store=STORE)
    def job(self, n: int) -> list[int]:
        """Run every kind of step."""
        out = []
        for i in range(n):
            _maybe_fail(i)
            out += [
                self.step(i),
                self.cstep(i),
                self.cstep_outer(i),
                self.sstep(i),
                self.sstep_outer(i),
                Worker.cstep(i, scale=3),
                Worker.sstep_outer(i, scale=3),
            ]
        return out

    @resumable(store=STORE)
    async def ajob(self, n: int) -> list[int]:
        out = []
        for i in range(n):
            _maybe_fail(i)
            out += [await self.astep(i), self.step(i)]
        return out

    @classmethod
    @resumable(store=STORE)
    def cjob(cls, n: int) -> list[int]:
        out = []
        for i in range(n):
            _maybe_fail(i)
            out.append(cls.cstep(i))
        return out

    @resumable(store=STORE)
    @classmethod
    def cjob_outer(cls, n: int) -> list[int]:
        out = []
        for i in range(n):
            _maybe_fail(i)
            out.append(cls.cstep_outer(i))
        return out

    @staticmethod
    @resumable(store=STORE)
    def sjob(n: int) -> list[int]:
        out = []
        for i in range(n):
            _maybe_fail(i)
            out.append(Worker.sstep(i))
        return out

    @resumable(store=STORE)
    @staticmethod
    def sjob_outer(n: int) -> list[int]:
        out = []
        for i in range(n):
            _maybe_fail(i)
            out.append(Worker.sstep_outer(i))
        return out


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    CALLS.clear()
    FAIL["at"] = None
    yield
    FAIL["at"] = None
    for key in STORE.keys(""):
        STORE.delete(key)


def _expected_job(n: int) -> list[int]:
    return [v for i in range(n) for v in (2 * i, 2 * i, 2 * i, 2 * i, 2 * i, 3 * i, 3 * i)]


# -- record and replay, by kind ------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 3])
def test_instance_method_job_with_every_step_kind(k: int) -> None:
    w = Worker("a")
    FAIL["at"] = k
    with pytest.raises(Boom):
        w.job(4)
    done = dict(CALLS)
    assert sum(done.values()) == 7 * k
    FAIL["at"] = None
    assert w.job(4) == _expected_job(4)
    assert Counter(step=4, cstep=8, cstep_outer=4, sstep=4, sstep_outer=8) == CALLS


def test_an_equal_instance_resumes_the_same_run() -> None:
    FAIL["at"] = 2
    with pytest.raises(Boom):
        Worker("first").job(3)
    FAIL["at"] = None
    assert Worker("first").job(3) == _expected_job(3)  # another object, the same state
    assert sum(CALLS.values()) == 7 * 3


def test_another_instance_is_another_run() -> None:
    FAIL["at"] = 2
    with pytest.raises(Boom):
        Worker("first").job(3)
    FAIL["at"] = None
    assert Worker("second").job(3) == _expected_job(3)  # its own run, from the start
    assert sum(CALLS.values()) == 7 * 2 + 7 * 3


async def test_async_method_job() -> None:
    w = Worker("a")
    FAIL["at"] = 2
    with pytest.raises(Boom):
        await w.ajob(4)
    assert Counter(astep=2, step=2) == CALLS
    FAIL["at"] = None
    assert await w.ajob(4) == [v for i in range(4) for v in (2 * i, 2 * i)]
    assert Counter(astep=4, step=4) == CALLS


@pytest.mark.parametrize(
    ("job", "counter"),
    [("cjob", "cstep"), ("cjob_outer", "cstep_outer"), ("sjob", "sstep"), ("sjob_outer", "sstep_outer")],
)
@pytest.mark.parametrize("via", ["class", "instance"])
def test_class_and_static_method_jobs(job: str, counter: str, via: str) -> None:
    owner: Any = Worker if via == "class" else Worker("x")
    FAIL["at"] = 3
    with pytest.raises(Boom):
        getattr(owner, job)(5)
    assert Counter({counter: 3}) == CALLS
    FAIL["at"] = None
    assert getattr(owner, job)(5) == [2 * i for i in range(5)]
    assert Counter({counter: 5}) == CALLS
    assert getattr(owner, job)(5) == [2 * i for i in range(5)]  # finished
    assert Counter({counter: 5}) == CALLS


def test_job_called_through_the_class_with_an_instance() -> None:
    w = Worker("a")
    assert Worker.job(w, 1) == _expected_job(1)
    assert w.job(1) == _expected_job(1)  # the same run, finished
    assert sum(CALLS.values()) == 7


@pytest.mark.parametrize("name", ["step", "cstep", "cstep_outer", "sstep", "sstep_outer"])
def test_method_steps_outside_a_job_are_plain_calls(name: str) -> None:
    w = Worker("a")
    assert getattr(w, name)(5) == 10
    if name == "step":
        assert Worker.step(w, 5, scale=3) == 15
    else:
        assert getattr(Worker, name)(5, scale=3) == 15
    assert Counter({name: 2}) == CALLS
    assert STORE.keys() == []


def test_step_recorded_names_are_qualified_method_names() -> None:
    Worker("a").job(1)
    key = Worker.job.key_for(Worker("a"), 1)
    chunk = json.loads(STORE.get(f"{key}(r)0.0") or b"")
    names = [entry[0] for _, entry in sorted(chunk["entries"].items(), key=lambda kv: int(kv[0]))]
    prefix = f"{__name__}.Worker."
    assert names == [
        prefix + "step",
        prefix + "cstep",
        prefix + "cstep_outer",
        prefix + "sstep",
        prefix + "sstep_outer",
        prefix + "cstep",
        prefix + "sstep_outer",
    ]


# -- what decoration preserves -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "plain"),
    [
        ("step", "step"),
        ("cstep", "cstep"),
        ("cstep_outer", "cstep"),
        ("sstep", "sstep"),
        ("sstep_outer", "sstep"),
        ("astep", "astep"),
    ],
)
def test_signature_and_metadata_preserved(name: str, plain: str) -> None:
    for owner, plain_owner in [(Worker, Plain), (Worker("a"), Plain())]:
        decorated = getattr(owner, name)
        original = getattr(plain_owner, plain)
        assert inspect.signature(decorated) == inspect.signature(original), (owner, name)
        assert decorated.__name__ == name
        assert decorated.__doc__ == "Scale x."
        assert decorated.__qualname__ == f"Worker.{name}"
        assert inspect.iscoroutinefunction(decorated) == (name == "astep")


def test_job_signatures_preserved() -> None:
    assert str(inspect.signature(Worker.job)) == "(self, n: 'int') -> 'list[int]'"
    assert str(inspect.signature(Worker("a").job)) == "(n: 'int') -> 'list[int]'"
    assert inspect.iscoroutinefunction(Worker.ajob)
    assert inspect.iscoroutinefunction(Worker("a").ajob)
    assert not inspect.iscoroutinefunction(Worker.job)
    for name in ("cjob", "cjob_outer", "sjob", "sjob_outer"):
        assert str(inspect.signature(getattr(Worker, name))) == "(n: 'int') -> 'list[int]'", name
    assert Worker.job.__doc__ == "Run every kind of step."


def test_generator_methods_are_refused() -> None:
    with pytest.raises(TypeError, match="generator"):

        class Bad:
            @checkpoint
            def gen(self) -> Any:
                yield 1

    with pytest.raises(TypeError, match="generator"):

        class AlsoBad:
            @checkpoint
            @staticmethod
            def gen() -> Any:
                yield 1


# -- keys, reset -------------------------------------------------------------------------


def test_key_for_through_the_class() -> None:
    key = Worker.job.key_for(Worker("a"), 2)
    assert key == Worker.job.key_for(Worker("a"), 2)
    assert key == Worker("a").job.key_for(2)
    assert key != Worker.job.key_for(Worker("b"), 2)
    assert key != Worker.job.key_for(Worker("a"), 3)
    assert key.startswith(f"{__name__}.Worker.job")
    Worker("a").job(2)
    assert json.loads(STORE.get(key) or b"")["status"] == "finished"
    assert Worker.sjob.key_for(2).startswith(f"{__name__}.Worker.sjob")
    assert Worker.sjob_outer.key_for(2).startswith(f"{__name__}.Worker.sjob_outer")


BUG_BOUND = (
    "BUG: _JobProxy.key_for/reset bind the arguments to the function without the instance "
    "wrapt binds, so worker.job.key_for(n) and Worker.cjob.key_for(n) pass n as self/cls "
    "(TypeError: missing 'n'), and on @resumable over @classmethod they fail with "
    "'classmethod is not a callable object'"
)


def test_key_for_and_reset_through_a_bound_method() -> None:
    w = Worker("a")
    w.job(2)
    key = Worker.job.key_for(w, 2)
    assert w.job.key_for(2) == key
    assert w.job.reset(2) is True
    assert STORE.get(key) is None


@pytest.mark.parametrize("name", ["cjob", "cjob_outer"])
def test_key_for_of_a_classmethod_job(name: str) -> None:
    getattr(Worker, name)(2)
    key = getattr(Worker, name).key_for(2)
    assert json.loads(STORE.get(key) or b"")["status"] == "finished"


def test_reset_of_a_static_method_job() -> None:
    Worker.sjob(2)
    assert Worker.sjob.reset(2) is True
    Worker.sjob(2)
    assert Counter(sstep=4) == CALLS


# -- pickling ----------------------------------------------------------------------------


def test_plain_methods_pickle() -> None:
    # What decorated methods should keep doing.
    assert pickle.loads(pickle.dumps(Plain.step)) is Plain.step
    assert pickle.loads(pickle.dumps(Plain.sstep)) is Plain.sstep
    assert pickle.loads(pickle.dumps(Plain().step))(3) == 6


def test_static_method_steps_pickle_by_reference() -> None:
    assert pickle.loads(pickle.dumps(Worker.sstep)) is Worker.__dict__["sstep"].__func__


@pytest.mark.parametrize("name", ["step", "cstep", "job"])
def test_decorated_methods_pickle(name: str) -> None:
    loaded = pickle.loads(pickle.dumps(getattr(Worker("a"), name)))
    assert loaded(1) == getattr(Worker("b"), name)(1)
    pickle.loads(pickle.dumps(getattr(Worker, name)))


# -- a step method on an object with its own resources ---------------------------------------


class Client:
    """A stand-in for an HTTP client: steps are its methods, it is never recorded."""

    def __init__(self, store: Store) -> None:
        self.requests: list[str] = []
        self.store = store

    @checkpoint
    def get(self, path: str) -> dict[str, Any]:
        self.requests.append(path)
        return {"path": path, "n": len(path)}


def test_step_methods_of_a_client_replay_without_calling_it() -> None:
    store = MemoryStore()
    fail = [True]

    @resumable(store=store, key="client-job")
    def job(client: Client, paths: list[str]) -> list[int]:
        out = []
        for p in paths:
            out.append(client.get(p)["n"])
        if fail[0]:
            raise Boom
        return out

    first = Client(store)
    with pytest.raises(Boom):
        job(first, ["/a", "/bb", "/ccc"])
    assert first.requests == ["/a", "/bb", "/ccc"]
    fail[0] = False
    second = Client(store)
    assert job(second, ["/a", "/bb", "/ccc"]) == [2, 3, 4]
    assert second.requests == []
