"""pytest plugin of resumable: a fresh store per test and a Hypothesis profile.

Registered as the ``resumable`` pytest11 entry point, so installing resumable with
its ``testing`` extra makes these available in every test suite:

- ``resumable_store``: a fresh `MemoryStore`, made the process default store
  (``resumable.configure(store=...)``) for the test, the previous default restored
  after. Jobs that name their own store keep it.
- the Hypothesis settings profile ``"resumable"`` (no deadline: a job's first call
  pays for imports and thread starts; no too-slow health check), which
  ``settings.load_profile("resumable")`` or ``--hypothesis-profile=resumable`` selects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from resumable import _config
from resumable._config import configure
from resumable.stores.memory import MemoryStore

__all__ = ["PROFILE", "resumable_store"]

PROFILE = "resumable"

settings.register_profile(
    PROFILE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def resumable_store() -> Iterator[MemoryStore]:
    """A fresh in-memory store, the default store of jobs during the test."""
    previous = _config._defaults.store
    store = MemoryStore()
    configure(store=store)
    try:
        yield store
    finally:
        configure(store=previous)
