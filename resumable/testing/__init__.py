"""Crash-test your own jobs: does a crash anywhere change what the job does?

``assert_resumable(lambda: my_job(...), setup=..., observe=...)`` runs the job once
without a crash, then under crash schedules drawn by Hypothesis (crashes before
steps, after steps but before their completion is written, in the middle of store
writes), restarting it from its store alone each time, and fails with the smallest
schedule it finds where the result, the items or what ``observe()`` sees differ,
saying what went wrong in words: a side effect outside any step, a step that is not
idempotent, a step order that is not deterministic.

The parts it is built from are public too: `Crash` and `Schedule` (a crash
schedule), `crash_schedules` (a Hypothesis strategy of them) and `run_with_crashes`
(the harness: run a job under one schedule, get a `Report`). The pytest plugin
(``resumable.testing._plugin``) gives a ``resumable_store`` fixture and a
``"resumable"`` Hypothesis profile. Needs the ``testing`` extra (Hypothesis).
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - the testing extra is missing
    raise ImportError("resumable.testing needs Hypothesis: pip install 'resumable[testing]'") from exc

from resumable.testing._check import Checked, NotResumable, assert_resumable
from resumable.testing._harness import (
    Attempt,
    Crash,
    Execution,
    HarnessStore,
    ProcessDied,
    RecordSummary,
    Report,
    Schedule,
    run_with_crashes,
)
from resumable.testing._strategies import crash_schedules, crashes

__all__ = [
    "Attempt",
    "Checked",
    "Crash",
    "Execution",
    "HarnessStore",
    "NotResumable",
    "ProcessDied",
    "RecordSummary",
    "Report",
    "Schedule",
    "assert_resumable",
    "crash_schedules",
    "crashes",
    "run_with_crashes",
]
