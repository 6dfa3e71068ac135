"""``assert_resumable``: a one-call property check of a job against crashes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from resumable.errors import ReplayMismatch, ResumableError
from resumable.testing._harness import Event, Report, Schedule, run_with_crashes, short_name

__all__ = ["Checked", "NotResumable", "assert_resumable"]

_NO_VALUE: Any = object()


class NotResumable(AssertionError):
    """`assert_resumable` found a crash schedule after which the job behaves differently.

    Attributes:
        schedule: The (shrunk) crash schedule.
        report: What happened under it.
        reference: What happened in the uninterrupted run.
    """

    def __init__(
        self, message: str, schedule: Schedule | None, report: Report | None, reference: Report
    ) -> None:
        super().__init__(message)
        self.schedule = schedule
        self.report = report
        self.reference = reference


class _Failed(AssertionError):
    def __init__(self, schedule: Schedule) -> None:
        super().__init__(schedule.describe())
        self.schedule = schedule


@dataclass
class Checked:
    """What a passing `assert_resumable` did.

    Attributes:
        examples: How many crash schedules were run.
        restarts: How many simulated crashes fired over all of them.
        reference: The uninterrupted run.
    """

    examples: int
    restarts: int
    reference: Report


def assert_resumable(
    start: Callable[[], Any],
    *,
    setup: Callable[[], Any] | None = None,
    observe: Callable[[], Any] | None = None,
    consume: Callable[[Any], Any] | None = None,
    max_examples: int | None = None,
    max_crashes: int = 3,
    schedules: Any = None,
    flushing: str = "schedule",
    settings: Any = None,
) -> Checked:
    """Check that crashes anywhere do not change what a job does.

    Runs the job once without a crash, then under crash schedules that Hypothesis
    draws (crashes before steps, after steps before their write, in the middle of
    store writes; up to ``max_crashes`` restarts), restarting it from the store alone
    each time, and compares each run with the uninterrupted one: the result (or the
    exception), the items a generator job delivered, and what ``observe()`` returns.
    On a difference Hypothesis shrinks the schedule, and the error says in words what
    went wrong and where: a side effect outside any step, a step that is not
    idempotent, a job whose step order is not deterministic.

    Args:
        start: A zero-argument callable that calls the job: ``lambda: sync("acme")``.
            Every store the job names is replaced by an in-memory one.
        setup: Called before each run to reset the outside world the job acts on
            (empty the fake database, the fake API's call log).
        observe: Called after each run (and, to explain a failure, at every step
            boundary): returns what the job did to the outside world, such as a list
            of rows or of calls. Lists, tuples, sets and `collections.Counter` are
            compared as multisets, dicts key by key.
        consume: For a generator job: your consumer's code, called with each item
            (a crash can come after it handled an item, before it asked for the
            next). Items are delivered at least once: a consumer with side effects
            needs a counting sink (`resumable.sinks.drain`) for exactly once.
        max_examples: How many schedules to try (default: the Hypothesis profile's).
        max_crashes: At most this many crashes (restarts) per schedule.
        schedules: A strategy of `Schedule` to draw from instead of the default:
            `crash_schedules` sized from the uninterrupted run, with progress written
            at every step boundary (so a crash loses at most the steps in flight; that
            finds the same mistakes as longer intervals, and explains them simply).
        flushing: ``"schedule"`` (default, reproducible) or ``"job"`` (see
            `run_with_crashes`).
        settings: A ``hypothesis.settings`` to start from (default: the current profile).

    Returns:
        A `Checked` summary (how many schedules ran).

    Raises:
        NotResumable: an `AssertionError` naming the smallest crash schedule found
            and what differs.
    """
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from hypothesis.errors import Flaky

    from resumable.testing._strategies import crash_schedules

    def run(schedule: Schedule, trace: bool = False) -> Report:
        if setup is not None:
            setup()
        return run_with_crashes(
            start, schedule, observe=observe, consume=consume, flushing=flushing, trace=trace
        )

    reference = run(Schedule())
    first = reference.attempts[0]
    if not first.events["write"]:
        raise ValueError(
            "start() wrote nothing to the store: it must call a @resumable job, such as "
            "lambda: my_job(arg), not the job's result or a plain function"
        )
    if schedules is None:
        schedules = crash_schedules(
            steps=max(first.events["before_step"], 1),
            writes=first.events["write"],
            items=first.events["item"],
            pushes=first.events["push"],
            max_crashes=max_crashes,
            flush_every=(1,),
        )
    base = settings if settings is not None else hsettings()
    config = hsettings(
        base,
        max_examples=max_examples if max_examples is not None else base.max_examples,
        deadline=None,
        database=None,
        report_multiple_bugs=False,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    examples = 0
    restarts = 0

    @config
    @given(schedules)
    def check(schedule: Schedule) -> None:
        nonlocal examples, restarts
        examples += 1
        report = run(schedule)
        restarts += report.restarts
        if _problems(reference, report):
            raise _Failed(schedule)

    try:
        check()
    except _Failed as failed:
        # Run the smallest failing schedule again with the outside world observed at
        # every step boundary, to tell where the difference came from.
        traced = run(failed.schedule, trace=True)
        raise NotResumable(_message(reference, traced), failed.schedule, traced, reference) from None
    except Flaky as exc:
        raise NotResumable(
            "the job behaves differently when run again under the same crash schedule, so the "
            "failure cannot be reproduced or shrunk: it depends on something besides its "
            "arguments and its steps' results (time, randomness, threads, state left over "
            f"from an earlier run; does setup= reset everything observe= sees?).\n{exc}",
            None,
            None,
            reference,
        ) from None
    return Checked(examples=examples, restarts=restarts, reference=reference)


# -- comparing runs -----------------------------------------------------------------


def _times(n: int) -> str:
    return {0: "not at all", 1: "once", 2: "twice"}.get(n, f"{n} times")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _freeze(value: Any) -> Hashable:
    if isinstance(value, dict):
        return tuple(sorted(((_freeze(k), _freeze(v)) for k, v in value.items()), key=repr))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return frozenset(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


def _multiset(value: Any) -> Counter[Hashable] | None:
    if isinstance(value, Counter):
        return Counter({_freeze(k): v for k, v in value.items() if v > 0})
    if isinstance(value, list | tuple | set | frozenset):
        return Counter(_freeze(v) for v in value)
    return None


def _name(element: Any) -> str:
    if isinstance(element, str):
        return f"`{element}`"
    return f"`{_short(element, 80)}`"


def _problems(reference: Report, report: Report) -> list[str]:
    """Cheap check: the kinds of difference, without explanations."""
    found = []
    if report.rerun_after_write:
        found.append("rerun")
    if type(reference.error) is not type(report.error):
        found.append("error")
    elif reference.error is None and not _equal(reference.result, report.result):
        found.append("result")
    if (
        reference.items is not None
        and report.items is not None
        and set(map(_freeze, reference.items)) != set(map(_freeze, report.items))
    ):
        found.append("items")
    if not _equal(reference.observed, report.observed):
        found.append("observed")
    if _item_problems(reference, report):
        found.append("item order")
    return found


def _item_problems(reference: Report, report: Report) -> list[str]:
    """Items yielded again although their consumption was written, or skipped."""
    if reference.items is None:
        return []
    want = reference.items
    problems = []
    for attempt in report.attempts:
        got = attempt.items
        start = attempt.items_from
        if not _equal(got, want[start : start + len(got)]):
            problems.append(
                f"attempt {attempt.number} started from a record of {start} consumed items and "
                f"delivered {_short(got, 120)}, where the uninterrupted run delivers "
                f"{_short(want[start : start + len(got)], 120)} from there: an item whose "
                "consumption was written was delivered again, or one was skipped (does the "
                "job yield the same items in the same order each time?)"
            )
    return problems


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return repr(a) == repr(b)


def _message(reference: Report, report: Report) -> str:
    problems: list[str] = []
    if not _equal(reference.observed, report.observed):
        problems.extend(_observed_problems(reference, report))
    if type(reference.error) is not type(report.error):
        problems.append(_error_problem(reference, report))
    elif reference.error is None and not _equal(reference.result, report.result):
        problems.append(
            f"the job returned {_short(report.result)}, but {_short(reference.result)} without a crash. "
            "A step's recorded result was replayed into a different call, or the job's result "
            "depends on something it redoes on resume (state() changed inside a step, a value "
            "computed outside any step)"
        )
    if reference.items is not None and report.items is not None:
        missing = set(map(_freeze, reference.items)) - set(map(_freeze, report.items))
        extra = set(map(_freeze, report.items)) - set(map(_freeze, reference.items))
        if missing:
            problems.append(f"the items {_short(sorted(missing, key=repr))} were never delivered")
        if extra:
            problems.append(
                "items the uninterrupted run does not deliver were delivered: "
                + _short(sorted(extra, key=repr))
            )
    problems.extend(_item_problems(reference, report))
    for execution in report.rerun_after_write:
        problems.append(
            f"{execution.label} ran again in attempt {execution.attempt} although the record held "
            "its completion: resumable broke its own guarantee. Please report this bug"
        )
    if not problems:
        problems.append("the run differs from the uninterrupted one")
    fired = report.crashes or ["no crash fired"]
    lines = [
        f"not resumable: {problems[0]}.",
        *(f"Also: {p}." for p in problems[1:]),
        "Smallest crash schedule found: "
        + "; ".join(fired)
        + f"; attempt {len(report.attempts)} ran to the end ({_flush_note(report.schedule)}).",
        f"Uninterrupted run: {_summary(reference)}",
        f"Interrupted run:   {_summary(report)}",
        f"Reproduce: run_with_crashes(start, {report.schedule!r}, observe=observe)",
    ]
    return "\n".join(lines)


def _flush_note(schedule: Schedule) -> str:
    from resumable.testing._harness import _flush_words

    return _flush_words(schedule.flush_every)


def _summary(report: Report) -> str:
    outcome = (
        f"raised {type(report.error).__name__}: {report.error}"
        if report.error is not None
        else f"returned {_short(report.result)}"
    )
    steps = ", ".join(f"{short_name(n)} x{c}" for n, c in sorted(report.executions.items()))
    parts = [outcome]
    if report.items is not None:
        parts.append(f"items {_short(report.items)}")
    if report.observed is not None:
        parts.append(f"observe() {_short(report.observed)}")
    parts.append(f"step bodies run: {steps or 'none'}")
    return "; ".join(parts)


def _error_problem(reference: Report, report: Report) -> str:
    error = report.error
    if error is None:
        return (
            f"without a crash the job raises {type(reference.error).__name__}: {reference.error}, "
            f"but after the crash it returned {_short(report.result)}"
        )
    text = f"after the crash the job raised {type(error).__name__}: {error}"
    if isinstance(error, ReplayMismatch):
        return (
            text + ". On resume the job called different steps, or in a different order, than it "
            "had before the crash: replay needs the same steps in the same order for the same "
            "inputs. The step order is not deterministic: make it depend only on the job's "
            "arguments and on its steps' results (sort what you iterate over; fetch what "
            "changes inside a step)"
        )
    if isinstance(error, ResumableError):
        return text + " (an error of resumable itself after a simulated crash: please report it)"
    if reference.error is not None:
        return text + f", but without a crash it raises {type(reference.error).__name__}: {reference.error}"
    return text + ", which it does not raise without a crash"


# -- explaining differences in what observe() saw -----------------------------------


def _observed_problems(reference: Report, report: Report) -> list[str]:
    want, got = reference.observed, report.observed
    ms_want, ms_got = _multiset(want), _multiset(got)
    if ms_want is not None and ms_got is not None:
        problems = []
        for element in sorted(set(ms_want) | set(ms_got), key=repr):
            a, b = ms_want[element], ms_got[element]
            if a == b:
                continue
            where = _where_added(report.timeline, element, a)
            if b > a:
                problems.append(
                    f"the side effect {_name(element)} happened {_times(b)} instead of {_times(a)}: {where}"
                )
            else:
                problems.append(
                    f"the side effect {_name(element)} happened {_times(b)} instead of {_times(a)}: "
                    "work was skipped on resume (a replayed step's result was given to another call, "
                    "or the job decides what to do from something that changed during the run)"
                )
        return problems[:5] + ([f"and {len(problems) - 5} more differences"] if len(problems) > 5 else [])
    if isinstance(want, dict) and isinstance(got, dict):
        problems = []
        for key in sorted(set(want) | set(got), key=repr):
            a, b = want.get(key, _NO_VALUE), got.get(key, _NO_VALUE)
            if _equal(a, b):
                continue
            shown_a = "missing" if a is _NO_VALUE else _short(a, 80)
            shown_b = "missing" if b is _NO_VALUE else _short(b, 80)
            where = _where_changed(report.timeline, key)
            problems.append(f"observe()[{key!r}] is {shown_b}, {shown_a} without a crash: {where}")
        return problems[:5]
    return [f"observe() returned {_short(got)}, but {_short(want)} without a crash"]


_OUTSIDE_HINT = (
    "it is outside any step ({where}), so a restart does it again. Move it into a "
    "@checkpoint step: a completed step is not run again"
)
_INSIDE_HINT = (
    "it is inside {step}, whose body ran again because the crash came before its "
    "completion was written (a step runs at least once). Make the side effect idempotent, "
    "for example keyed by current_step().idempotency_key"
)
_CONSUMER_HINT = (
    "it is done by the consumer for {item}, which was delivered again because the process "
    "died before the item's consumption was written (items are delivered at least once). "
    "Push the items into a counting sink with resumable.sinks.drain for exactly once, or "
    "make the consumer idempotent"
)
_SINK_HINT = (
    "it was pushed into the sink again ({push} of attempt {attempt}): on resume, the sink's "
    "reconciliation did not skip the items it already held. Either the sink's count() is not "
    "exact (it must count every item it holds, once), or this is a bug in resumable: report it"
)
_DEAD_HINT = (
    "it happened after the simulated crash, while the job unwound ({where}): in a finally: "
    "block or an except BaseException: handler, which a real crash never runs. Do not put "
    "side effects there"
)


def _classify(prev: Event, cur: Event) -> str:
    if prev.kind == "before" and cur.kind == "after" and prev.token is cur.token:
        return _INSIDE_HINT.format(step=prev.step)
    if prev.kind == "deliver" and cur.kind == "item" and prev.token == cur.token:
        return _CONSUMER_HINT.format(item=prev.step)
    if cur.kind == "push":
        return _SINK_HINT.format(push=cur.step, attempt=cur.attempt)
    where = f"after {prev.words()}, before {cur.words()}"
    if prev.kind == "crash":
        return _DEAD_HINT.format(where=where)
    if prev.kind == "before":
        return _OUTSIDE_HINT.format(where=where + f"; or inside {prev.step}, which was still running")
    return _OUTSIDE_HINT.format(where=where)


def _where_added(timeline: list[tuple[Event, Any]], element: Hashable, allowed: int) -> str:
    """Find where the occurrence beyond ``allowed`` of ``element`` was added."""
    previous: tuple[Event, int] | None = None
    for event, observed in timeline:
        counts = _multiset(observed) or Counter()
        n = counts[element]
        if previous is not None and previous[1] <= allowed < n:
            return _classify(previous[0], event)
        previous = (event, n)
    return "it happened after the last step of the job"


def _where_changed(timeline: list[tuple[Event, Any]], key: Any) -> str:
    previous: tuple[Event, Any] | None = None
    inside: str | None = None
    for event, observed in timeline:
        value = observed.get(key, _NO_VALUE) if isinstance(observed, dict) else _NO_VALUE
        if previous is not None and not _equal(previous[1], value):
            words = _classify(previous[0], event)
            if not words.startswith("it is inside"):
                return words
            inside = inside or words
        previous = (event, value)
    return inside or "it changed where the harness does not look (after the last step)"
