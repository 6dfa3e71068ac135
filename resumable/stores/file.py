"""The embedded default store: one file per key in a directory, with fsync."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from pathlib import Path

from resumable.errors import RunLocked
from resumable.stores._base import RunLock, Store, check_key

__all__ = ["FileStore", "default_dir"]

_LOCKS = ".locks"


def default_dir() -> Path:
    """Return the default store directory: ``$RESUMABLE_DIR``, else ``./.resumable``."""
    return Path(os.environ.get("RESUMABLE_DIR") or ".resumable")


class _FileLock:
    def __init__(self, fd: int, store: FileStore | None = None, key: str = "") -> None:
        self._fd: int | None = fd
        self._store = store
        self._key = key
        self._pid = os.getpid()

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._store is not None:
            self._store._held.pop(self._key, None)
        if os.getpid() != self._pid:
            # A forked child holds a copy of the parent's descriptor: unlocking it would
            # unlock the parent's run. Closing the copy leaves the parent's lock alone.
            os.close(fd)
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class FileStore(Store):
    """A directory of files, one per key, written atomically and durably.

    A write goes to a temporary file in the same directory, is fsynced, renamed over
    the key's file and the directory is fsynced, so a reader (or a process that
    restarts after a crash or power loss) sees the old value or the new one, never a
    mix. The run lock of a key is an OS file lock (``flock``) on
    ``PATH/.locks/KEY``: a second process asking for it gets `RunLocked` at once, and
    the lock dies with the process that held it, so a crashed run never leaves its key
    locked. POSIX only.

    Args:
        path: The directory. Created on the first write, not before. Defaults to
            ``$RESUMABLE_DIR``, else ``./.resumable``.
        fsync: Set to ``False`` to skip the fsyncs (faster, but a power loss may lose
            or tear the last writes; a process crash still cannot).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        self.path = Path(path) if path is not None else default_dir()
        self._fsync = fsync
        self._made = False
        self._held: dict[str, _FileLock] = {}

    def describe(self) -> str:
        return f"FileStore({str(self.path)!r})"

    def _file(self, key: str) -> Path:
        return self.path / check_key(key)

    def _ensure_dir(self) -> None:
        if not self._made:
            (self.path / _LOCKS).mkdir(parents=True, exist_ok=True)
            self._made = True

    def get(self, key: str) -> bytes | None:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            return None

    def set(self, key: str, value: bytes) -> None:
        target = self._file(key)
        if not isinstance(value, bytes):
            raise TypeError(f"store values are bytes, not {type(value).__name__}")
        self._ensure_dir()
        tmp = self.path / f".tmp-{key[:64]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            self._recreate()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(value)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self._fsync:
            self._fsync_dir()

    def _recreate(self) -> None:
        """The directory was deleted under live runs: make it again, and take their locks
        again on the new lock files (or fail, when another process took one meanwhile)."""
        from resumable._log import logger

        (self.path / _LOCKS).mkdir(parents=True, exist_ok=True)
        self._made = True
        logger.warning("store directory was deleted; made again", store=self.describe(), runs=len(self._held))
        for key, held in list(self._held.items()):
            fd = os.open(self.path / _LOCKS / key, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunLocked(self.describe(), key) from None
            old, held._fd = held._fd, fd
            if old is not None:
                os.close(old)  # the lock on the deleted file: nobody else can see it

    def _fsync_dir(self) -> None:
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def delete(self, key: str) -> None:
        try:
            self._file(key).unlink()
        except FileNotFoundError:
            return
        if self._fsync:
            self._fsync_dir()

    def keys(self, prefix: str = "") -> list[str]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith(".") and n.startswith(prefix))

    def lock(self, key: str) -> RunLock:
        check_key(key)
        self._ensure_dir()
        try:
            fd = os.open(self.path / _LOCKS / key, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            self._recreate()
            fd = os.open(self.path / _LOCKS / key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(self.describe(), key) from None
            raise
        held = _FileLock(fd, self, key)
        self._held[key] = held
        return held
