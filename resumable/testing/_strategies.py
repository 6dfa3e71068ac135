"""Hypothesis strategies for crash schedules."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from resumable.testing._harness import Crash, Schedule

__all__ = ["crash_schedules", "crashes"]

STEP_KINDS = ("before_step", "after_step", "write")


def crashes(
    *,
    steps: int = 20,
    writes: int | None = None,
    items: int = 0,
    pushes: int = 0,
    kinds: Sequence[str] | None = None,
) -> st.SearchStrategy[Crash]:
    """One crash point.

    Args:
        steps: How many step bodies an attempt runs at most (an uninterrupted run's
            count): bounds the index of ``before_step`` and ``after_step`` crashes.
        writes: How many store writes an attempt makes at most (default
            ``2 * steps + 2``): bounds ``write`` crashes, which land or not.
        items: How many items a generator job delivers (enables ``item`` crashes:
            after the consumer handled an item, before it asks for the next).
        pushes: How many sink pushes a draining job makes (enables ``push``
            crashes: after a push, before the record of it is written).
        kinds: The crash kinds to draw (default: the step and write kinds, plus
            ``item`` and ``push`` when they can happen). Shrinking prefers the first.
    """
    writes = 2 * steps + 2 if writes is None else writes
    if kinds is None:
        kinds = STEP_KINDS + (("item",) if items else ()) + (("push",) if pushes else ())
    options: list[st.SearchStrategy[Crash]] = []
    for kind in kinds:
        if kind == "write":
            options.append(
                st.builds(Crash, st.just("write"), st.integers(0, max(writes - 1, 0)), st.booleans())
            )
        elif kind == "item":
            options.append(st.builds(Crash, st.just("item"), st.integers(0, max(items - 1, 0))))
        elif kind == "push":
            options.append(st.builds(Crash, st.just("push"), st.integers(0, max(pushes - 1, 0))))
        else:
            options.append(st.builds(Crash, st.just(kind), st.integers(0, max(steps - 1, 0))))
    if not options:
        raise ValueError("kinds must name at least one crash kind")
    return st.one_of(options)


def crash_schedules(
    *,
    steps: int = 20,
    writes: int | None = None,
    items: int = 0,
    pushes: int = 0,
    max_crashes: int = 3,
    min_crashes: int = 1,
    kinds: Sequence[str] | None = None,
    flush_every: Sequence[int] = (1, 2, 0),
) -> st.SearchStrategy[Schedule]:
    """Crash schedules: where each attempt of a job dies, and so how many restarts.

    A schedule shrinks toward fewer crashes, earlier crash points, and progress
    written at every step.

    Args:
        steps: How many step bodies an uninterrupted run executes.
        writes: How many store writes it makes (default ``2 * steps + 2``).
        items: How many items a generator job delivers.
        pushes: How many sink pushes a draining job makes.
        max_crashes: At most this many restarts.
        min_crashes: At least this many crash points (default 1: a schedule without
            a crash tests nothing).
        kinds: Which crash kinds to draw (see `crashes`).
        flush_every: The choices of `Schedule.flush_every`, simplest first.
    """
    if max_crashes < min_crashes:
        raise ValueError(f"max_crashes ({max_crashes}) must be at least min_crashes ({min_crashes})")
    points = crashes(steps=steps, writes=writes, items=items, pushes=pushes, kinds=kinds)
    # flush_every is drawn first, so shrinking settles it (to "at every step") before
    # it shrinks the crash points: the explanations read simplest that way.
    return st.builds(
        lambda every, points: Schedule(tuple(points), every),
        st.sampled_from(tuple(flush_every)),
        st.lists(points, min_size=min_crashes, max_size=max_crashes),
    )
