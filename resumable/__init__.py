"""resumable: long jobs that survive restarts, with two decorators.

``@resumable`` makes a function a job whose runs resume where they stopped;
``@checkpoint`` makes a function a step whose completion is recorded and replayed.
Progress goes to a key-value store: a local directory by default, an Apify Actor's
key-value store inside an Actor.
"""

from __future__ import annotations

from resumable._config import configure
from resumable._job import OutsideRun, aflush, flush, reset, restart_with, resumable, state
from resumable._keys import make_key
from resumable._run import StepContext, TransientStoreError, current_run, current_step
from resumable._step import checkpoint
from resumable.errors import (
    AmbiguousCall,
    CheckpointCorrupted,
    NotSerializable,
    ReplayMismatch,
    ResumableError,
    RunLocked,
)
from resumable.stores import FileStore, MemoryStore, Store, open_store

__version__ = "0.1.0"

__all__ = [
    "AmbiguousCall",
    "CheckpointCorrupted",
    "FileStore",
    "MemoryStore",
    "NotSerializable",
    "OutsideRun",
    "ReplayMismatch",
    "ResumableError",
    "RunLocked",
    "StepContext",
    "Store",
    "TransientStoreError",
    "aflush",
    "checkpoint",
    "configure",
    "current_run",
    "current_step",
    "flush",
    "make_key",
    "open_store",
    "reset",
    "restart_with",
    "resumable",
    "state",
]
