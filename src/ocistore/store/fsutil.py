"""The file primitives every part of ocistore writes through.

* :class:`AtomicFile` (and :func:`atomic_write` for bytes at hand) makes a named file
  visible whole: it writes a temporary file (in the store's ``tmp/``, or beside the file
  under a hidden name), every write completed, fsyncs it, renames it into place and fsyncs
  the directory. Content-addressed files go through
  :class:`~ocistore.store.content.BlobWriter` instead, which also checks their digest.
* :class:`TempFile` is a scratch file in ``tmp/`` (an archive spooled from a pipe).
* :class:`FileLock` is the OS file lock (``fcntl.flock``) that serializes publishing:
  exclusive for writers, shared for readers that need a consistent view; on the store's
  ``lock`` file, or on a directory (an OCI layout being added to).

A temporary file must be on the same file system as its destination, so every store
keeps its own ``<root>/tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .. import parallel


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
        self._thread = parallel.start_thread(self._run, "background-sync")

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


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` with ``pwrite``, else where the file
    is): a short write is continued, a full disk raises."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


class AtomicFile:
    """A named file that readers see as it was or whole, never half written.

    ``with AtomicFile(path) as f: f.write(...)`` writes a temporary file (in ``tmpdir``,
    which must be on the same file system, else beside ``path`` under a hidden name),
    created with ``mode`` less the umask, fsyncs it (unless not ``durable``: an export
    such as ``save -o``, which the kernel writes back in its own time), renames it over
    ``path`` and fsyncs the directory. Leaving the block with an error removes the
    temporary file and leaves ``path`` as it was. ``open_file`` makes the file object
    from the temporary path (a plain unbuffered file by default, whose ``write`` is
    completed here).
    """

    def __init__(
        self,
        path: Path,
        tmpdir: Path | None = None,
        mode: int = 0o644,
        durable: bool = True,
        open_file: Callable[[Path], IO[bytes]] | None = None,
    ) -> None:
        self.path = path
        if tmpdir is not None:
            self.tmp = temp_path(tmpdir)
        else:
            self.tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
        self._mode = mode
        self._durable = durable
        self._open = open_file

    def __enter__(self) -> IO[bytes]:
        if self._open is not None:
            self.file = self._open(self.tmp)
        else:
            self.file = _CompleteWriter(os.open(self.tmp, _NEW_FILE, self._mode))
        return self.file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.file.flush()
                if self._durable:
                    os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.rename(self.tmp, self.path)
                if self._durable:
                    fsync_dir(self.path.parent)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _CompleteWriter(io.FileIO):
    """An unbuffered file whose ``write`` writes everything it is given."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd, "wb", closefd=True)

    def write(self, data: Any) -> int:
        write_all(self.fileno(), data)
        return len(data)


def atomic_write(path: Path, data: bytes, tmpdir: Path | None, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole
    (:class:`AtomicFile`), creating its directory if needed."""
    makedirs(path.parent)
    with AtomicFile(path, tmpdir, mode) as f:
        f.write(data)


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
    """A scratch file in ``tmp/`` (an archive spooled from a pipe): write into it (every
    write completed), read it, :meth:`discard` it."""

    def __init__(self, tmpdir: Path, suffix: str = "") -> None:
        self.path = temp_path(tmpdir, suffix)
        self.file: IO[bytes] = _CompleteWriter(os.open(self.path, _NEW_FILE, 0o600))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


class FileLock:
    """A re-entrant OS file lock on ``path``: the store's ``<root>/lock`` (created if
    missing), or, with ``directory``, a directory itself.

    ``exclusive()`` serializes the short publish step of writers across processes;
    ``shared()`` lets readers take a consistent view. Re-entrant within one object, so a
    composite operation can call parts that lock on their own.
    """

    def __init__(self, path: Path, directory: bool = False) -> None:
        self.path = path
        self._directory = directory
        self._fd: int | None = None
        self._depth = 0
        self._mode = 0

    def _acquire(self, mode: int) -> None:
        if self._depth:
            if mode == fcntl.LOCK_EX and self._mode == fcntl.LOCK_SH:
                raise RuntimeError("cannot upgrade a shared store lock to exclusive")
            self._depth += 1
            return
        if self._directory:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
