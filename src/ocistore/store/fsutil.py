"""The file primitives every part of ocistore writes through.

* :class:`AtomicFile` (and :func:`atomic_write` for bytes at hand) makes a named file
  visible whole: it writes an unnamed file (in the store's ``tmp/``, or beside an
  output), every write completed, fsyncs it, names it and renames it into place, and
  fsyncs the directory. Content-addressed files go through
  :class:`~ocistore.store.content.BlobWriter` instead, which also checks their digest.
* Every temporary name says which process made it (:func:`writer_tag`), so that ``gc``
  removes a dead writer's leftovers at once and never a live one's (:func:`writer_alive`).
* :class:`TempFile` is a scratch file in ``tmp/`` (an archive spooled from a pipe).
* Failures of a write, a sync, a rename are :class:`~ocistore.errors.StorageError`,
  naming the step and the file; the store's own files and directories get their modes
  whatever the umask, and symlinks in the store's place are refused, never followed.
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
import functools
import io
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .. import parallel
from ..errors import CorruptStore, LockTimeout, ReadOnlyStore, StorageError


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable; a failure is a
    :class:`~ocistore.errors.StorageError` naming the directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        raise StorageError("syncing the directory", path, e) from None
    finally:
        os.close(fd)


#: The mode of the store's directories, whatever the umask.
DIR_MODE = 0o755


def _missing(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist, outermost first."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    return missing[::-1]


def makedirs(path: Path) -> None:
    """Create a directory and its parents (mode :data:`DIR_MODE`, whatever the umask),
    fsyncing each parent that got a new entry. A symlink made where a directory was
    being created is not followed: :class:`~ocistore.errors.CorruptStore`. (Existing
    parents may be symlinks: the user's path to the store may go through one; the
    store's own names are checked when it is opened.)"""
    for d in _missing(path):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if os.path.islink(d):
                raise CorruptStore(f"{d} is a symlink: refusing to follow it") from None
            continue
        os.chmod(d, DIR_MODE, follow_symlinks=False)
        fsync_dir(d.parent)


def make_output_dirs(path: Path) -> None:
    """Create the directories of an output (an OCI layout's ``blobs/sha256``) with the
    umask's modes, never writable by others."""
    mode = 0o777 & ~_umask() & ~0o002
    for d in _missing(path):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)
            os.chmod(d, mode)


def make_private_dir(path: Path) -> None:
    """A new directory of mode :data:`DIR_MODE` whatever the umask (a layer record being
    assembled in ``tmp/``)."""
    path.mkdir(mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def refuse_symlink(path: Path, what: str) -> None:
    """:class:`~ocistore.errors.CorruptStore` if ``path`` is a symlink: the store never
    follows one of its own names to somewhere else."""
    if os.path.islink(path):
        raise CorruptStore(f"{what} {path} is a symlink: refusing to follow it")


def open_own(path: Path, what: str = "") -> int:
    """Open one of the store's own files for reading, never through a symlink (nor
    waiting on a FIFO): :class:`~ocistore.errors.CorruptStore` if a symlink stands in
    its place (``what`` leads the message); any other ``OSError`` is the caller's."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptStore(f"{what}{path} is a symlink: refusing to follow it") from None
        raise


def read_own(path: Path, limit: int = 1 << 20) -> bytes:
    """One of the store's own small files (a record, metadata), never through a symlink
    and never more than ``limit`` bytes (``FileNotFoundError`` if it is missing;
    :class:`~ocistore.errors.CorruptStore` if a symlink, a device or a file that large
    stands in its place)."""
    try:
        fd = open_own(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise CorruptStore(f"{path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise CorruptStore(f"{path} is not a regular file")
        if st.st_size > limit:
            raise CorruptStore(f"{path} is {st.st_size} bytes, more than such a file can be")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise CorruptStore(f"{path}: {e.strerror}") from None
    finally:
        os.close(fd)


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


# -- temporary files and who wrote them ----------------------------------------------------
#
# Every temporary file of a store is named after the process that writes it: boot,
# PID namespace, PID and the process's start time. ``gc`` removes a file whose writer is
# gone at once, and never one whose writer still runs, whatever its age; a name it cannot
# judge (another PID namespace, a foreign name) waits out the grace period.

_owner_cache: tuple[int, str] | None = None


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip().decode()[:8]
    except OSError:
        return "noboot"


@functools.cache
def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # pid:[4026531836]
    except OSError:
        return "0"
    return "".join(c for c in link if c.isdigit()) or "0"


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (``/proc/PID/stat`` field 22),
    which tells it from a later process given the same PID; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def writer_tag() -> str:
    """This process's tag in temporary names: ``<boot>.<pidns>.<pid>.<start>``."""
    global _owner_cache
    pid = os.getpid()
    if _owner_cache is None or _owner_cache[0] != pid:
        tag = f"{_boot_id()}.{_pid_namespace()}.{pid}.{_start_time(pid) or 0}"
        _owner_cache = (pid, tag)
    return _owner_cache[1]


def writer_alive(name: str) -> bool | None:
    """Whether the process that named a temporary file ``name`` still runs: ``True``,
    ``False`` (gone, or the machine rebooted since), or ``None`` when it cannot be told
    (another PID namespace, or not a name of :func:`temp_path`)."""
    parts = name.split("-", 1)[0].split(".")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    boot, pidns, pid, start = parts
    if boot != _boot_id():
        return False
    if pidns != _pid_namespace() or start == "0":  # ("0": its start was not known)
        return None
    return _start_time(int(pid)) == start


def temp_path(tmpdir: Path, suffix: str = "") -> Path:
    """A new temporary name in ``tmpdir``, tagged with this process (:func:`writer_tag`)."""
    return tmpdir / f"{writer_tag()}-{os.urandom(8).hex()}{suffix}"


def beside(path: Path) -> Path:
    """A hidden temporary name beside an output ``path`` (``.NAME.<writer>-<random>.tmp``),
    where it is built before it is renamed into place."""
    return path.with_name(f".{path.name}.{writer_tag()}-{os.urandom(8).hex()}.tmp")


def remove_dead_beside(path: Path) -> None:
    """Remove what a killed writer of the output ``path`` left beside it (a name of
    :func:`beside` whose process is gone; a live writer's is left alone)."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError), os.scandir(path.parent) as entries:
        for entry in entries:
            name = entry.name
            dead = (
                name.startswith(prefix)
                and name.endswith(".tmp")
                and writer_alive(name[len(prefix) : -len(".tmp")]) is False
            )
            if dead:
                with contextlib.suppress(OSError):
                    remove(Path(entry.path))


def _umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_all(
    fd: int,
    data: bytes | bytearray | memoryview,
    offset: int | None = None,
    path: object = None,
) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` with ``pwrite``, else where the file
    is): a short write is continued; a failure (a full disk) is a
    :class:`~ocistore.errors.StorageError` naming ``path`` when given."""
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
            view = view[n:]
            if offset is not None:
                offset += n
    except OSError as e:
        if path is None:
            raise
        raise StorageError("writing", path, e) from None


def fsync(fd: int, path: object) -> None:
    """``fsync``, its failure a :class:`~ocistore.errors.StorageError` naming ``path``."""
    try:
        os.fsync(fd)
    except OSError as e:
        raise StorageError("syncing", path, e) from None


def _tmpfile(directory: Path, mode: int) -> int | None:
    """An unnamed file in ``directory`` (``O_TMPFILE``), or ``None`` where the file
    system cannot make one: a crash before it is linked leaves nothing behind."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # not supported here (or no such directory: the caller says)
        raise StorageError("creating a temporary file in", directory, e) from None


def _link_fd(fd: int, path: Path) -> None:
    """Give the unnamed file open as ``fd`` the name ``path`` (``linkat`` following
    ``/proc/self/fd``, which needs no privilege, unlike ``AT_EMPTY_PATH``)."""
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # A directory descriptor makes Python call linkat(), with AT_SYMLINK_FOLLOW.
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=dirfd, follow_symlinks=True)
    finally:
        os.close(dirfd)


class AtomicFile:
    """A named file that readers see as it was or whole, never half written.

    ``with AtomicFile(path) as f: f.write(...)`` writes an unnamed file (``O_TMPFILE``)
    in ``tmpdir`` (which must be on the same file system), else beside ``path``; every
    write is completed. On leaving the block it fsyncs it (unless not ``durable``: an
    export such as ``save -o``, which the kernel writes back in its own time), links it
    under a temporary name, renames it over ``path`` and fsyncs the directory. A crash
    before the end leaves nothing (or, on a file system without ``O_TMPFILE``, a
    temporary name that ``gc`` or the next save removes); leaving the block with an
    error leaves ``path`` as it was.

    The store's own files (``tmpdir`` given) get exactly ``mode``, whatever the umask;
    an output (no ``tmpdir``) gets ``mode`` less the umask, and never write permission
    for others. ``open_file`` makes the file object from the file descriptor (a plain
    unbuffered file by default, whose ``write`` is completed here). With
    ``clean_beside``, what a killed writer of the same output left beside it is removed
    first (a scan of its directory: for an output named once, not for each blob of a
    layout, whose new files are linked in place and leave nothing).
    """

    def __init__(
        self,
        path: Path,
        tmpdir: Path | None = None,
        mode: int = 0o644,
        durable: bool = True,
        open_file: Callable[[int], IO[bytes]] | None = None,
        clean_beside: bool = False,
    ) -> None:
        self.path = path
        self._tmpdir = tmpdir
        self._clean = clean_beside and tmpdir is None
        if tmpdir is not None:
            self.tmp = temp_path(tmpdir)
            self._mode = mode
        else:
            self.tmp = beside(path)
            self._mode = mode & ~_umask() & ~0o002
        self._durable = durable
        self._open = open_file
        self._named = False

    def __enter__(self) -> IO[bytes]:
        directory = self._tmpdir if self._tmpdir is not None else self.path.parent
        if self._clean:
            remove_dead_beside(self.path)
        fd = _tmpfile(directory, self._mode)
        if fd is None:
            try:
                fd = os.open(self.tmp, _NEW_FILE, self._mode)
            except OSError as e:
                raise StorageError("creating", self.tmp, e) from None
            self._named = True
        try:
            os.fchmod(fd, self._mode)
            self.file = self._open(fd) if self._open is not None else _CompleteWriter(fd, self.path)
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self.file

    def _link_in_place(self) -> bool:
        """Name the unnamed file ``path`` at once, where nothing is there to replace:
        then no temporary name ever exists. ``False`` if a file is there."""
        try:
            _link_fd(self.file.fileno(), self.path)
        except FileExistsError:
            return False
        except OSError as e:
            raise StorageError("linking", self.path, e) from None
        self.file.close()
        if self._durable:
            fsync_dir(self.path.parent)
        return True

    def _discard(self) -> None:
        if self._named:
            self.tmp.unlink(missing_ok=True)

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
                    fsync(self.file.fileno(), self.path)
                if not self._named:
                    if self._tmpdir is None and self._link_in_place():
                        return
                    try:
                        _link_fd(self.file.fileno(), self.tmp)
                    except OSError as e:
                        raise StorageError("linking", self.tmp, e) from None
                    self._named = True
            self.file.close()
            if exc_type is None:
                try:
                    os.rename(self.tmp, self.path)
                except OSError as e:
                    raise StorageError("renaming into place", self.path, e) from None
                self._named = False
                if self._durable:
                    fsync_dir(self.path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                self.file.close()
            self._discard()
            raise
        if exc_type is not None:
            self._discard()


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _CompleteWriter(io.FileIO):
    """An unbuffered file whose ``write`` writes everything it is given (a failure names
    ``path``)."""

    def __init__(self, fd: int, path: object = None) -> None:
        super().__init__(fd, "wb", closefd=True)
        self._path = path

    def write(self, data: Any) -> int:
        write_all(self.fileno(), data, path=self._path)
        return len(data)


def atomic_write(path: Path, data: bytes, tmpdir: Path | None, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, whole
    (:class:`AtomicFile`), creating its directory if needed; an output (no ``tmpdir``:
    an OCI layout's ``index.json``) is cleared of a killed writer's leftovers first."""
    makedirs(path.parent)
    with AtomicFile(path, tmpdir, mode, clean_beside=tmpdir is None) as f:
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
        raise StorageError("publishing", path, e) from None
    fsync_dir(path.parent)


def _rmtree(path: Path, ignore_errors: bool = False) -> None:
    # shutil is imported here: it pulls in bz2 and lzma, and most commands never need it.
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


def remove(path: Path, tmpdir: Path | None = None) -> None:
    """Remove a file or a directory tree if present (a symlink is removed, never
    followed), and make the removal durable. A directory is first renamed into
    ``tmpdir`` when given, so that it disappears from its place whole: a crash while its
    files are removed leaves garbage in ``tmp/``, never a half-empty record."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat_mod.S_ISDIR(st.st_mode):
            if tmpdir is not None:
                trash = temp_path(tmpdir, ".removed")
                os.rename(path, trash)
                fsync_dir(path.parent)
                _rmtree(trash)
                return
            _rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return
    except OSError as e:
        raise StorageError("removing", path, e) from None
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path.parent)


class TempFile:
    """A scratch file in ``tmp/`` (an archive spooled from a pipe): write into it (every
    write completed), read it, :meth:`discard` it."""

    def __init__(self, tmpdir: Path, suffix: str = "") -> None:
        self.path = temp_path(tmpdir, suffix)
        try:
            fd = os.open(self.path, _NEW_FILE, 0o600)
        except OSError as e:
            raise StorageError("creating", self.path, e) from None
        self.file: IO[bytes] = _CompleteWriter(fd, self.path)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.path.unlink(missing_ok=True)


def lock_holder(fd: int) -> str | None:
    """Who holds the lock on the file open as ``fd``, from ``/proc/locks``: ``process
    1234 (ocistore load -i x.tar)``, or ``None`` when it cannot be told."""
    st = os.fstat(fd)
    # /proc/locks names the file as MAJOR:MINOR:INODE, the device numbers in hex.
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "FLOCK":
            continue
        pid = fields[4]
        if fields[5] != where or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return f"process {pid}"
        argv = [a for a in argv if a]
        if len(argv) > 1 and Path(argv[0].decode(errors="replace")).name.startswith("python"):
            argv = argv[1:]  # python .../ocistore load: the program, not the interpreter
        if argv:
            argv[0] = Path(argv[0].decode(errors="replace")).name.encode()
        command = b" ".join(argv).decode(errors="replace")
        if len(command) > 60:
            command = command[:57] + "..."
        return f"process {pid} ({command})" if command else f"process {pid}"
    return None


#: Seconds a wait for the store lock goes on before :class:`FileLock` says so.
LOCK_NOTICE_AFTER = 2.0


class FileLock:
    """A re-entrant OS file lock on ``path``: the store's ``<root>/lock`` (created if
    missing), or, with ``directory``, a directory itself.

    ``exclusive()`` serializes the short publish step of writers across processes;
    ``shared()`` lets readers take a consistent view. Re-entrant within one object, so a
    composite operation can call parts that lock on their own.

    A process that may not write the lock file (a read-only file system, another user's
    store) still takes the shared lock, through a read-only descriptor, or none at all if
    the file does not exist (then nobody ever wrote the store); the exclusive lock is
    then :class:`~ocistore.errors.ReadOnlyStore`. A wait that lasts
    :data:`LOCK_NOTICE_AFTER` seconds is told to ``on_wait`` (naming the holder when
    ``/proc/locks`` does); one that lasts ``timeout`` seconds is
    :class:`~ocistore.errors.LockTimeout` (``None``: wait as long as it takes).
    """

    def __init__(
        self,
        path: Path,
        directory: bool = False,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._directory = directory
        self.timeout = timeout
        self.on_wait = on_wait
        self._fd: int | None = None
        self._depth = 0
        self._mode = 0

    def _open(self, mode: int) -> int | None:
        if self._directory:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptStore(
                    f"lock file {self.path} is a symlink: refusing to follow it"
                ) from None
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            denied = e
        if mode == fcntl.LOCK_EX:
            raise ReadOnlyStore(
                f"store {self.path.parent} cannot be changed by this process "
                f"({self.path}: {denied.strerror})"
            )
        try:
            return os.open(self.path, os.O_RDONLY | flags)
        except FileNotFoundError:
            return None  # never written: nothing to wait for

    def _wait(self, fd: int, mode: int) -> None:
        """Take the lock, saying so when the wait is long, giving up after the timeout."""
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        start = time.monotonic()
        told = False
        pause = 0.001
        while True:
            waited = time.monotonic() - start
            timed_out = self.timeout is not None and waited >= self.timeout
            # Told once the wait outlasts the notice's delay, and before a timeout is
            # raised if it did, however late a loaded machine lets this loop come round.
            if not told and self.on_wait is not None and waited >= LOCK_NOTICE_AFTER:
                holder = lock_holder(fd)
                self.on_wait(
                    f"waiting for the store lock {self.path}"
                    + (f", held by {holder}" if holder else "")
                )
                told = True
            if timed_out:
                holder = lock_holder(fd)
                raise LockTimeout(
                    f"store lock {self.path} is still held"
                    + (f" by {holder}" if holder else "")
                    + f" after {self.timeout:g} s (see --lock-timeout)"
                )
            wait = pause if self.timeout is None else min(pause, self.timeout - waited)
            time.sleep(max(wait, 0))
            pause = min(pause * 2, 0.05)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                continue

    def _acquire(self, mode: int) -> None:
        if self._depth:
            if mode == fcntl.LOCK_EX and self._mode == fcntl.LOCK_SH:
                raise RuntimeError("cannot upgrade a shared store lock to exclusive")
            self._depth += 1
            return
        fd = self._open(mode)
        if fd is not None:
            try:
                if self.timeout is None and self.on_wait is None:
                    fcntl.flock(fd, mode)
                else:
                    self._wait(fd, mode)
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
        if self._depth == 0:
            if self._fd is not None:
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
