"""Errors raised by resumable.

Every error names what happened, where (store and key, step name and number) and
what to do next. This module imports nothing from the rest of the package, so it can
be imported from anywhere without cycles. Errors raised by a store back end (an
``OSError`` from the file system, an API error from Apify) pass through unwrapped.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousCall",
    "CheckpointCorrupted",
    "NotSerializable",
    "ReplayMismatch",
    "ResumableError",
    "RunLocked",
]


class ResumableError(Exception):
    """Base class of every error resumable raises on its own account."""


class CheckpointCorrupted(ResumableError):
    """A record in a store cannot be read as a resumable record.

    Raised for a truncated or garbled record, a record of another program, a newer
    format version, a failed checksum or a failed signature. The record is left
    exactly as it was.
    """

    def __init__(self, store: str, key: str, reason: str) -> None:
        self.store = store
        self.key = key
        self.reason = reason
        super().__init__(
            f"record {key!r} in {store} cannot be read: {reason}. It was left as it is. "
            "Inspect it with `resumable show`, remove it with `resumable reset`, or "
            "pass on_corrupt='restart' to move it aside and start the run over."
        )


class NotSerializable(ResumableError):
    """A step result, job result, state or resume argument cannot be encoded."""

    def __init__(self, what: str, value_type: type, cause: BaseException) -> None:
        self.what = what
        self.value_type = value_type
        super().__init__(
            f"{what} returned a {value_type.__module__}.{value_type.__qualname__}, "
            f"which cannot be saved ({type(cause).__name__}: {cause}). Return plain "
            "data (JSON types) or an object cloudpickle can serialize."
        )


class ReplayMismatch(ResumableError):
    """On resume, the job called other steps than the ones recorded.

    Replay assumes the job body calls the same steps in the same order for the same
    inputs. Raised before any new work runs.
    """

    def __init__(
        self,
        key: str,
        position: int,
        recorded: str | None,
        called: str | None,
        detail: str = "",
    ) -> None:
        self.key = key
        self.position = position
        self.recorded = recorded
        self.called = called
        self.detail = detail
        where = f"run {key!r}, step {position}" if position >= 0 else f"run {key!r}"
        if recorded is not None or called is not None:
            what = f"the record holds {recorded!r} but the job called {called!r}"
            if detail:
                what += f" ({detail})"
        else:
            what = detail
        super().__init__(
            f"replay mismatch in {where}: {what}. The job must call the same steps in "
            "the same order on resume. If the code changed on purpose, start the run "
            "over with reset() or `resumable reset`."
        )


class AmbiguousCall(ReplayMismatch):
    """Concurrent calls of a step that differ only in objects resumable cannot identify.

    Calls from other tasks and threads are matched on resume by their arguments. When
    two of them differ only in an object that has no stable identity (a lock, a client
    holding sockets), no restart can tell which recorded result belongs to which, so
    the call is refused before it runs. Give the step ``key=``, or pass plain data (or a
    dataclass of plain data) that names the call.
    """


class RunLocked(ResumableError):
    """Another live process (or task) holds the run with this key."""

    def __init__(self, store: str, key: str) -> None:
        self.store = store
        self.key = key
        super().__init__(
            f"run {key!r} in {store} is held by another live run. Wait for it to end, "
            "or give this call another key."
        )
