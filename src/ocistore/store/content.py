"""The content store: blobs by digest, and the one writer every blob goes through.

``blobs/<algorithm>/<hex>`` holds layer blobs as they were received and manifests; the
image configs under ``imagedb/content`` are a content store of their own (see
:mod:`ocistore.store.backend`). A file under either is always whole and always what its
name says, because nothing is put there except by a :class:`BlobWriter`:

* :meth:`ContentStore.writer` opens one, with the digest and size the content must have
  when they are known (as containerd's ingester does). It writes into ``tmp/``, hashing
  as it goes; every ``write`` is completed or fails (a short write is never taken for the
  end). :meth:`BlobWriter.copy_from` streams a whole source, reading and writing on one
  thread while another hashes or looks at the bytes.
* :meth:`BlobWriter.finish` checks the size and digest of what was written, and that
  the file holds exactly that many bytes, then fsyncs it and makes it read-only; it stays
  in ``tmp/`` as a :class:`StagedBlob`. :meth:`ContentStore.publish` renames it into
  place (checking that the file in ``tmp/`` is still the one written) and fsyncs the
  directory: the short step a writer takes under the store lock.
  :meth:`BlobWriter.commit` does both.
* :meth:`BlobWriter.abort` (or leaving its ``with`` block on an error) removes what was
  written. A writer opened with a ``ref`` keeps its partial file instead, so that a
  writer opened later with the same ``ref`` resumes at its :attr:`~BlobWriter.offset`
  (and :meth:`~BlobWriter.truncate` goes back to an earlier one): downloads that were cut
  off start again where they stopped.

Anything a crash leaves in ``tmp/`` is garbage that :meth:`~ocistore.store.Store.gc`
removes.
"""

from __future__ import annotations

import fcntl
import os
import queue
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

from .. import parallel
from ..errors import Conflict, CorruptStore, DigestMismatch, NotFound, SizeMismatch
from ..spec.digest import (
    CHUNK,
    Digest,
    VerifyingReader,
    check_bytes,
    digest_bytes,
    hash_rest,
    new_hasher,
)
from . import fsutil

__all__ = ["BlobWriter", "ContentStore", "Pieces", "Readable", "StagedBlob"]


class Readable(Protocol):
    """What :meth:`BlobWriter.copy_from` reads from: anything with ``readinto``."""

    def readinto(self, buf: bytearray) -> int: ...


class StagedBlob:
    """A blob written, checked and fsynced in ``tmp/``, not yet visible in the store.

    It remembers the file it was written to (device, inode, size, modification and
    change times), so that the name in ``tmp/`` can be checked to still be that file
    when it is published: a file put in its place by another process has another inode,
    or, if the inode number was freed and handed out again, times of its own.
    """

    __slots__ = ("_identity", "digest", "path", "size")

    def __init__(self, path: Path, digest: Digest, size: int, st: os.stat_result) -> None:
        self.path = path
        self.digest = digest
        self.size = size
        self._identity = _identity(st)

    def __repr__(self) -> str:
        return f"StagedBlob({self.digest}, {self.size} bytes, {str(self.path)!r})"

    def is_file_at(self, path: Path, renamed: bool = False) -> bool:
        """Whether ``path`` names the very file this blob was written to (never
        following a symlink). After a rename the change time is not compared: a rename
        sets it."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False
        got = _identity(st)
        return got[:4] == self._identity[:4] if renamed else got == self._identity

    def discard(self) -> None:
        """Remove the staged file, unless it was published (or is not the one written)."""
        if self.is_file_at(self.path):
            self.path.unlink(missing_ok=True)


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ContentStore:
    """Blobs under ``root/<algorithm>/<hex>``, written through :class:`BlobWriter` via
    ``tmpdir`` (on the same file system), as files of ``mode``."""

    def __init__(self, root: Path, tmpdir: Path, mode: int = 0o444) -> None:
        self.root = root
        self.tmpdir = tmpdir
        self.mode = mode

    def path(self, digest: Digest) -> Path:
        d = Digest(digest)  # validated before it becomes a path
        return self.root / d.algorithm / d.hex

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open_file(self, digest: Digest) -> IO[bytes]:
        """A blob's file, unbuffered, never through a symlink (``FileNotFoundError`` if
        it is missing; :class:`CorruptStore` if a symlink stands in its place)."""
        fd = fsutil.open_own(self.path(digest), f"blob {digest}: ")
        return open(fd, "rb", buffering=0)

    def open(self, digest: Digest, verify: bool = True) -> IO[bytes]:
        """Open a blob for reading; with ``verify`` the digest is checked at its end."""
        try:
            f = self.open_file(digest)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        if not verify:
            return f
        return VerifyingReader(f, digest, f"blob {digest}")  # type: ignore[return-value]

    def read(self, digest: Digest, what: str | None = None) -> bytes:
        """The whole blob, verified (for small blobs: manifests, configs)."""
        what = what or f"blob {digest}"
        try:
            with self.open_file(digest) as f:
                data = f.read()
        except FileNotFoundError:
            raise NotFound(f"{what} not found") from None
        return check_bytes(data, digest, what)

    def writer(
        self,
        expected: Digest | None = None,
        size: int | None = None,
        what: str | None = None,
        ref: str | None = None,
    ) -> BlobWriter:
        """A :class:`BlobWriter` for content that must have digest ``expected`` and
        ``size`` bytes, when given. ``what`` names the content in errors; ``ref`` makes
        the write resumable (see the module documentation)."""
        return BlobWriter(self, expected, size, what, ref)

    def write(self, data: bytes, expected: Digest | None = None, what: str | None = None) -> Digest:
        """Keep small content (a manifest, a config) in one step; writing content that
        is stored already succeeds."""
        digest = Digest(expected) if expected is not None else digest_bytes(data)
        try:
            st = os.lstat(self.path(digest))
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size == len(data):
            if expected is not None:  # still refuse content that is not what it claims
                check_bytes(data, digest, what or f"blob {digest}")
            return digest
        with self.writer(digest, len(data), what) as w:
            w.write(data)
            return w.commit()

    def publish(self, staged: StagedBlob) -> Digest:
        """Make a staged blob visible (the caller holds the store lock). Publishing a
        blob that is stored already (same digest, same size) only discards the copy.
        :class:`CorruptStore` if the staged file was replaced or removed meanwhile."""
        dest = self.path(staged.digest)
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(st.st_mode) and st.st_size == staged.size:
                staged.discard()
                return staged.digest
            # A short blob (a full disk, before ocistore checked its writes) is replaced.
        fsutil.refuse_symlink(self.root, "blob directory")
        fsutil.refuse_symlink(dest.parent, "blob directory")
        if not staged.is_file_at(staged.path):
            raise CorruptStore(
                f"blob {staged.digest}: its staged file {staged.path} was replaced or "
                "removed before it could be published"
            )
        fsutil.publish(staged.path, dest)
        if not staged.is_file_at(dest, renamed=True):  # swapped between check and rename
            fsutil.remove(dest)
            raise CorruptStore(
                f"blob {staged.digest}: its staged file {staged.path} was replaced "
                "while it was published"
            )
        return staged.digest

    def delete(self, digest: Digest) -> None:
        fsutil.remove(self.path(digest))

    def walk(self) -> Iterator[Digest]:
        """Every blob whose file name is a valid digest; other names are skipped."""
        if not self.root.is_dir():
            return
        for algdir in sorted(self.root.iterdir()):
            if not algdir.is_dir():
                continue
            for entry in os.scandir(algdir):
                if Digest.is_valid(f"{algdir.name}:{entry.name}"):
                    yield Digest(f"{algdir.name}:{entry.name}")


#: How many pieces :meth:`BlobWriter.copy_from` has in flight between its two threads.
BUFFERS = 4


class BlobWriter:
    """Streams one blob into ``tmp/`` of a :class:`ContentStore`; see the module
    documentation. Use it as a context manager: leaving the block without
    :meth:`finish` or :meth:`commit` aborts it."""

    def __init__(
        self,
        content: ContentStore,
        expected: Digest | None = None,
        size: int | None = None,
        what: str | None = None,
        ref: str | None = None,
    ) -> None:
        self._content = content
        self._expected = Digest(expected) if expected is not None else None
        self._size = size
        self._algorithm = self._expected.algorithm if self._expected is not None else "sha256"
        self.what = what or f"blob {self._expected or ''}".rstrip()
        self._ref = ref
        self._hasher = new_hasher(self._algorithm)
        #: Bytes written so far (with ``ref``, those a previous writer left, to begin with).
        self.offset = 0
        self._sync: fsutil.BackgroundSync | None = None
        self._staged: StagedBlob | None = None
        self._closed = False
        if ref is None:
            self.path = fsutil.temp_path(content.tmpdir, ".blob")
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        else:
            key = digest_bytes(ref.encode()).hex[:32]
            self.path = content.tmpdir / f"ingest-{key}.partial"
            flags = os.O_RDWR | os.O_CREAT
        self._where = f"{self.what} at {self.path}"
        try:
            self._fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except PermissionError:
            if ref is None:
                raise
            # A resumable blob that was finished (made read-only) and never published:
            # its content was checked, but it is simpler to start again.
            self.path.unlink(missing_ok=True)
            self._fd = os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if ref is not None:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Conflict(f"{self.what}: another writer is writing it ({ref})") from None
                self._rehash()
        except BaseException:
            os.close(self._fd)
            self._closed = True
            raise

    # -- writing -------------------------------------------------------------------------

    def _rehash(self) -> None:
        """Hash what is already in the file (what a previous writer left), and go on from
        its end."""
        self._hasher = new_hasher(self._algorithm)
        os.lseek(self._fd, 0, os.SEEK_SET)
        with open(self._fd, "rb", buffering=0, closefd=False) as f:
            self.offset = hash_rest(f, self._hasher)

    def truncate(self, offset: int) -> None:
        """Go back to ``offset`` bytes (at most :attr:`offset`): a download resumed from
        there, or started again from 0."""
        if not 0 <= offset <= self.offset:
            raise ValueError(f"cannot truncate {self.what} at {offset} of {self.offset} bytes")
        os.ftruncate(self._fd, offset)
        self._rehash()

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` (a short write is continued; a full disk raises)."""
        fd = self._fd
        fsutil.write_all(fd, data, path=self._where)
        n = len(data)
        self.offset += n
        if self._sync is None and self.offset >= fsutil.SYNC_EVERY:
            # A large blob: start the disk early, so the final fsync is short.
            self._sync = fsutil.BackgroundSync(fd)
        if self._sync is not None:
            self._sync.wrote(n)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the blob and hash it."""
        self._write(data)
        self._hasher.update(data)

    def copy_from(
        self,
        stream: Readable,
        consume: Callable[[Pieces], None] | None = None,
        progress: Callable[[int], None] | None = None,
        chunk_size: int = CHUNK,
        look_at: Callable[[memoryview], None] | None = None,
    ) -> None:
        """Append everything ``stream`` gives, to its end, on two threads.

        The calling thread reads pieces of ``chunk_size`` into a few reusable buffers and
        writes each; a second thread takes the pieces in order: it hashes them (and, with
        ``look_at``, shows each hashed piece to that function: a plain layer's tar
        headers are followed so), or, with ``consume``, gives them to that function (a
        decompressor, say) while the calling thread hashes too. ``consume`` gets the
        pieces as :class:`Pieces` and must read them to their end; whatever it (or
        ``look_at``) raises is raised here. ``progress`` is called with :attr:`offset`
        after each piece; whatever it raises stops the copy.
        """
        pending: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(BUFFERS):
            free.put(bytearray(chunk_size))
        pieces = Pieces(pending, free)
        hash_here = consume is not None
        readinto = stream.readinto

        def read_and_write(stop: parallel.Stop) -> None:
            try:
                while True:
                    stop.check()  # the other side failed: stop reading
                    buf = parallel.get(free, stop)
                    n = readinto(buf)
                    if not n:
                        free.put(buf)
                        return
                    view = memoryview(buf)[:n]
                    self._write(view)
                    if hash_here:
                        self._hasher.update(view)
                    del view
                    pending.put((buf, n))
                    if progress is not None:
                        progress(self.offset)
            finally:
                pending.put(None)

        def look(stop: parallel.Stop) -> None:
            # Whatever fails, the queued buffers go back to the reading thread (which
            # would otherwise wait for a free one forever) until it has stopped.
            pieces.stop = stop
            try:
                if consume is not None:
                    consume(pieces)
                else:
                    update = self._hasher.update
                    while (piece := pieces.next()) is not None:
                        update(piece)
                        if look_at is not None:
                            look_at(piece)
            except BaseException:
                stop.failed.set()  # the reading thread stops at its next piece
                raise
            finally:
                pieces.drain()

        parallel.run_all([read_and_write, look], workers=2, caller_first=True)

    # -- finishing -----------------------------------------------------------------------

    @property
    def digest(self) -> Digest:
        """The digest of what was written so far."""
        return Digest(f"{self._algorithm}:{self._hasher.hexdigest()}")

    def verify(self) -> Digest:
        """Check what was written against the expected size and digest (and remove it if
        it is not what it must be); returns its digest."""
        digest = self.digest
        try:
            if self._size is not None and self.offset != self._size:
                raise SizeMismatch(self.what, self._size, self.offset)
            if self._expected is not None and digest != self._expected:
                raise DigestMismatch(self.what, self._expected, digest)
        except BaseException:
            self.abort()
            raise
        return digest

    def finish(self) -> StagedBlob:
        """Verify, check that the file holds what was written, fsync it and make it
        read-only; the blob stays in ``tmp/`` until :meth:`ContentStore.publish`."""
        if self._staged is not None:
            return self._staged
        digest = self.verify()
        try:
            if self._sync is not None:
                self._sync.stop()
                self._sync = None
            st = os.fstat(self._fd)
            if st.st_size != self.offset:
                raise CorruptStore(
                    f"{self.what}: {self.path} holds {st.st_size} bytes, {self.offset} were written"
                )
            fsutil.fsync(self._fd, self._where)
            os.fchmod(self._fd, self._content.mode)
            st = os.fstat(self._fd)  # after the last change to the file: its times are final
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._closed = True
        self._staged = StagedBlob(self.path, digest, self.offset, st)
        return self._staged

    def commit(self) -> Digest:
        """:meth:`finish`, then :meth:`ContentStore.publish`."""
        return self._content.publish(self.finish())

    def _close_fd(self) -> None:
        if self._sync is not None:
            self._sync.stop()
            self._sync = None
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def abort(self) -> None:
        """Remove what was written (a finished blob not yet published too)."""
        if self._staged is not None:
            self._staged.discard()
            return
        # Removed before the file is closed: closing releases a resumable writer's lock,
        # and another writer with the same ref could have opened it in between.
        self.path.unlink(missing_ok=True)
        self._close_fd()

    def close(self) -> None:
        """Leave the blob unfinished: removed, or kept for resuming with a ``ref``."""
        if self._ref is None:
            if self._staged is None:
                self.abort()
        else:
            self._close_fd()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._staged is not None and exc_type is not None:
            self._staged.discard()  # finished, but what it was for failed
        self.close()


class Pieces:
    """The pieces :meth:`BlobWriter.copy_from` read, in order, for its second thread:
    whole (:meth:`next`) or as a stream (:meth:`read`). A piece's buffer goes back to the
    reading thread once the next piece is asked for: the caller is done with it then
    (zstd's stream reader only asks for more when it has used up what it was given)."""

    __slots__ = ("_buf", "_ended", "_free", "_pos", "_queue", "_view", "stop")

    def __init__(
        self, pending: queue.Queue[tuple[bytearray, int] | None], free: queue.Queue[bytearray]
    ) -> None:
        self._queue = pending
        self._free = free
        self._buf: bytearray | None = None
        self._view = memoryview(b"")
        self._pos = 0
        self._ended = False
        #: The copy's: an interrupt ends the wait for a piece that may never come.
        self.stop: parallel.Stop | None = None

    def next(self) -> memoryview | None:
        """The next piece whole, or ``None`` at the end."""
        self._release()
        if self._ended:
            return None
        item = self._queue.get() if self.stop is None else parallel.get(self._queue, self.stop)
        if item is None:
            self._ended = True
            return None
        self._buf, n = item
        self._view = memoryview(self._buf)[:n]
        self._pos = n
        return self._view

    def read(self, size: int = -1) -> memoryview | bytes:
        while self._pos >= len(self._view):
            if self.next() is None:
                return b""
            self._pos = 0
        end = len(self._view) if size < 0 else self._pos + size
        piece = self._view[self._pos : end]
        self._pos += len(piece)
        return piece

    def _release(self) -> None:
        if self._buf is not None:
            self._view = memoryview(b"")
            self._pos = 0
            self._free.put(self._buf)
            self._buf = None

    def close(self) -> None:
        """Nothing to close: the queue is the writer's (the zstd reader calls this)."""

    def drain(self) -> None:
        """Give back every buffer, up to the end of the pieces (after an error too; an
        interrupt ends it)."""
        try:
            while self.next() is not None:
                pass
        except parallel.Halted:
            self._ended = True
