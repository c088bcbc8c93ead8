"""The file primitives every part of the store writes through.

* :func:`atomic_write` makes a file visible whole: it writes a temporary file in the
  store's ``tmp/`` directory, fsyncs it, renames it into place and fsyncs the directory.
* :class:`TempFile` is the same for content that is streamed in and committed later.
* :class:`StoreLock` is the OS file lock (``fcntl.flock``) that serializes publishing:
  exclusive for writers, shared for readers that need a consistent view.

The temporary directory must be on the same file system as the destination, so every
store keeps its own ``<root>/tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> None:
    """Create a directory and its parents, fsyncing each parent that got a new entry."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o755)
            fsync_dir(d.parent)


#: :class:`BackgroundSync` calls ``fdatasync`` each time this many more bytes were written.
SYNC_EVERY = 8 << 20


class BackgroundSync:
    """Starts the disk early: a thread that calls ``fdatasync`` on a file each time
    another :data:`SYNC_EVERY` bytes were written to it (the writers do not wait)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._unsynced = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="background-sync", daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        with self._lock:
            self._unsynced += n
            if self._unsynced < SYNC_EVERY:
                return
            self._unsynced = 0
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                return  # the final fsync reports it

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one version of a file from the next: inode, mtime and size."""
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def temp_path(tmpdir: Path, suffix: str = "") -> Path:
    return tmpdir / f"{os.urandom(16).hex()}{suffix}"


def atomic_write(path: Path, data: bytes, tmpdir: Path, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole."""
    tmp = temp_path(tmpdir)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    publish(tmp, path)


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished, fsynced file or directory into place and make the rename durable."""
    makedirs(path.parent)
    try:
        os.rename(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and tmp.is_dir():
            # A directory already published by somebody else: content-addressed, so equal.
            _rmtree(tmp, ignore_errors=True)
            return
        raise
    fsync_dir(path.parent)


def _rmtree(path: Path, ignore_errors: bool = False) -> None:
    # shutil is imported here: it pulls in bz2 and lzma, and most commands never need it.
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


def remove(path: Path) -> None:
    """Remove a file or a directory tree if present, and make the removal durable."""
    if path.is_dir() and not path.is_symlink():
        _rmtree(path)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            return
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path.parent)


class TempFile:
    """A file being written in ``tmp/``: stream into it, then :meth:`commit` or discard.

    Used as a context manager, it deletes the temporary file unless it was committed.
    """

    def __init__(self, tmpdir: Path, suffix: str = "") -> None:
        self.path = temp_path(tmpdir, suffix)
        self.file: IO[bytes] = open(self.path, "xb", buffering=0)  # noqa: SIM115

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data) or 0

    def finish(self) -> None:
        """Flush and fsync the content; the file stays in ``tmp/``."""
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self, path: Path) -> None:
        self.finish()
        publish(self.path, path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> TempFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.path.exists() and (exc_type is not None or not self.file.closed):
            self.discard()
        elif self.path.exists():
            # Finished but never committed: still garbage.
            self.path.unlink(missing_ok=True)


class StoreLock:
    """A re-entrant OS file lock on ``<root>/lock``.

    ``exclusive()`` serializes the short publish step of writers across processes;
    ``shared()`` lets readers take a consistent view. Re-entrant within one object, so a
    composite operation can call parts that lock on their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._depth = 0
        self._mode = 0

    def _acquire(self, mode: int) -> None:
        if self._depth:
            if mode == fcntl.LOCK_EX and self._mode == fcntl.LOCK_SH:
                raise RuntimeError("cannot upgrade a shared store lock to exclusive")
            self._depth += 1
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._mode, self._depth = fd, mode, 1

    @property
    def held(self) -> bool:
        """Whether this object holds the lock (in either mode)."""
        return self._depth > 0

    def _release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._mode = 0

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        self._acquire(fcntl.LOCK_EX)
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        if self._depth:  # already locked (either mode) by this object
            self._depth += 1
            try:
                yield
            finally:
                self._release()
            return
        self._acquire(fcntl.LOCK_SH)
        try:
            yield
        finally:
            self._release()
