"""Hypothesis strategies for the project's own tests: random job shapes.

A *shape* is plain data that a generic job in `tests/test_properties.py` interprets:
a tuple of segments, each ending in a resume point (``restart_with``) except the
last, each a tuple of operations:

- ``("step", label, kind, result)``: call a step; ``kind`` is ``"plain"`` or
  ``"durable"``; ``result`` names what it returns (see `payload`), or ``"raise"``: it
  raises `StepFailed`, which the job catches (the value is then `failed`);
- ``("state", name, delta)``: ``state()[name] += delta`` in the job body;
- ``("gather", ((label, kind, result, delay), ...))`` (async shapes only): run steps
  concurrently with ``asyncio.gather``; each step body first yields to the event loop
  ``delay`` times, so they complete out of order.

Labels are unique in a shape, so every step call can be told apart.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

RESULTS = ("none", "int", "str", "dict", "bytes", "tuple", "raise")


class StepFailed(Exception):
    """What a step whose result is ``"raise"`` raises (every time it runs)."""


Shape = tuple[tuple[tuple[Any, ...], ...], ...]


def payload(label: int, result: str) -> Any:
    """What the step with ``label`` returns: JSON data, pickled data, or ``None``."""
    if result == "raise":
        raise StepFailed(label)
    if result == "none":
        return None
    if result == "int":
        return label * 7
    if result == "str":
        return f"s{label}"
    if result == "dict":
        return {"label": label, "items": [label, label + 1]}
    if result == "bytes":
        return bytes([label % 256]) * 3
    return (label, "tuple")


def labels(shape: Shape) -> list[int]:
    """Every step label of a shape, in call order."""
    found: list[int] = []
    for segment in shape:
        for op in segment:
            if op[0] == "step":
                found.append(op[1])
            elif op[0] == "gather":
                found.extend(s[0] for s in op[1])
    return found


def durable_labels(shape: Shape) -> set[int]:
    """Labels of durable steps that complete (a step that raises never completes)."""
    found: set[int] = set()
    for segment in shape:
        for op in segment:
            if op[0] == "step" and op[2] == "durable" and op[3] != "raise":
                found.add(op[1])
            elif op[0] == "gather":
                found.update(s[0] for s in op[1] if s[1] == "durable" and s[2] != "raise")
    return found


def failed(label: int) -> str:
    """What the job records for a step that raised."""
    return f"failed {label}"


def outcome(label: int, result: str) -> Any:
    """What the job gets from the step: its payload, or `failed` when it raises."""
    return failed(label) if result == "raise" else payload(label, result)


def expected(shape: Shape) -> tuple[list[Any], dict[str, int]]:
    """What the generic job returns for ``shape`` when nothing goes wrong."""
    results: list[Any] = []
    state: dict[str, int] = {}
    for segment in shape:
        for op in segment:
            if op[0] == "step":
                results.append(outcome(op[1], op[3]))
            elif op[0] == "state":
                state[op[1]] = state.get(op[1], 0) + op[2]
            elif op[0] == "gather":
                results.extend(outcome(s[0], s[2]) for s in op[1])
    return results, state


@st.composite
def job_shapes(
    draw: st.DrawFn,
    *,
    concurrent: bool = False,
    max_segments: int = 3,
    max_ops: int = 6,
    durable: bool = True,
    results: tuple[str, ...] = RESULTS,
) -> Shape:
    """A random job shape: steps, state updates, resume points, and (async) gathers."""
    counter = iter(range(10_000))
    kinds = st.sampled_from(("plain", "durable") if durable else ("plain",))
    result = st.sampled_from(results)
    segments = []
    for _ in range(draw(st.integers(1, max_segments))):
        ops: list[tuple[Any, ...]] = []
        options = ["step", "step", "state"] + (["gather"] if concurrent else [])
        for _ in range(draw(st.integers(0, max_ops))):
            what = draw(st.sampled_from(options))
            if what == "step":
                ops.append(("step", next(counter), draw(kinds), draw(result)))
            elif what == "state":
                ops.append(("state", draw(st.sampled_from("abc")), draw(st.integers(-3, 5))))
            else:
                size = draw(st.integers(2, 4))
                group = tuple(
                    (next(counter), draw(kinds), draw(result), draw(st.integers(0, 3))) for _ in range(size)
                )
                ops.append(("gather", group))
        segments.append(tuple(ops))
    return tuple(segments)
