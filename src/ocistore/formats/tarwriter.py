"""Writing deterministic tar archives.

:class:`TarWriter` writes a tar with fixed owners and modes and the times it is given,
so the same images give the same bytes, in the headers ``docker save`` writes;
:func:`output_file` writes ``-o PATH`` through a temporary file so a failed save leaves
nothing behind. Into that file every member's place is known in
advance, so large members (layers, blobs) are read, checked, decompressed and written by
several threads at once, each at its own offset; into a pipe they are written in order,
with a second thread reading and checking a few MiB ahead.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import posixpath
import queue
import stat
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final

from .. import parallel
from ..errors import InvalidInput, NotFound, OcistoreError, StorageError
from ..spec.digest import CHUNK
from ..store import fsutil

#: tar's block: every header and every member's data is padded to a multiple of it.
_BLOCK: Final = 512
#: The file type bits Go's ``archive/tar`` keeps in the mode field (``c_ISDIR`` and so on),
#: which moby's ``pkg/archive`` sets and Python's tarfile leaves out.
_TYPE_BITS: Final = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
}
#: The owner's names ``docker save`` writes (its daemon runs as root: uid and gid 0).
_OWNER: Final = "root"
#: The most threads that fill the members of one output file at once (each holds a few
#: MiB of buffers, so a save's memory stays small).
MAX_FILL_THREADS: Final = 4
#: Into a stream, how many chunks (of a few MiB) the filling thread may be ahead.
_AHEAD: Final = 4


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def _octal(value: int, width: int) -> bytes | None:
    """A number field of ``width`` bytes, or ``None`` if it does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    return None


def _block(
    name: bytes,
    prefix: bytes,
    kind: bytes,
    size: int,
    mode: int,
    uid: int,
    gid: int,
    mtime: int,
    link: bytes,
    devmajor: int,
    devminor: int,
) -> bytearray:
    block = bytearray(_BLOCK)
    block[0 : len(name)] = name
    block[100:108] = _octal(mode, 8) or b"0000000\0"
    block[108:116] = _octal(uid, 8) or b"0000000\0"
    block[116:124] = _octal(gid, 8) or b"0000000\0"
    block[124:136] = _octal(size, 12) or b"00000000000\0"
    block[136:148] = _octal(mtime, 12) or b"00000000000\0"
    block[156:157] = kind
    block[157 : 157 + len(link)] = link
    block[257:265] = b"ustar\x0000"
    block[329:337] = _octal(devmajor, 8) or b"0000000\0"
    block[337:345] = _octal(devminor, 8) or b"0000000\0"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % sum(block)
    return block


def member_header(
    name: str,
    kind: bytes,
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime_ns: int = 0,
    link: str = "",
    devmajor: int = 0,
    devminor: int = 0,
    xattrs: dict[str, bytes] | None = None,
) -> bytes:
    """The header of one member of a layer or a root file system's tar, with its own
    owner, mode, time, device and extended attributes (``TarWriter`` writes a save's,
    whose owners and modes are fixed): ustar, and a pax header before it for what ustar
    cannot hold (a long name or link, large numbers, a time's fraction, xattrs as
    ``SCHILY.xattr.*``), as Go's ``archive/tar`` writes them."""
    raw_name = name.encode("utf-8", "surrogateescape")
    raw_link = link.encode("utf-8", "surrogateescape")
    records: list[bytes] = []
    ustar_name, prefix = raw_name, b""
    if len(raw_name) > 100:
        cut = raw_name.find(b"/", len(raw_name) - 101)  # (at most 100 bytes after it)
        if 0 < cut <= 155:
            prefix, ustar_name = raw_name[:cut], raw_name[cut + 1 :]
        else:
            records.append(_pax_record("path", raw_name))
            ustar_name = raw_name[:100]
    if len(raw_link) > 100:
        records.append(_pax_record("linkpath", raw_link))
        raw_link = raw_link[:100]
    seconds, fraction = divmod(mtime_ns, 1_000_000_000)
    if fraction or _octal(seconds, 12) is None:
        records.append(_pax_record("mtime", b"%d.%09d" % (seconds, fraction)))
    for key, number in (("uid", uid), ("gid", gid), ("size", size)):
        if _octal(number, 12 if key == "size" else 8) is None:
            records.append(_pax_record(key, b"%d" % number))
    for key, value in sorted((xattrs or {}).items()):
        records.append(_pax_record("SCHILY.xattr." + key, value))
    block = _block(
        ustar_name,
        prefix,
        kind,
        size,
        mode,
        uid,
        gid,
        max(seconds, 0),
        raw_link,
        devmajor,
        devminor,
    )
    if not records:
        return bytes(block)
    payload = b"".join(records)
    pax_name = b"PaxHeaders/" + ustar_name[-80:]
    pax = _block(pax_name, b"", b"x", len(payload), 0o644, 0, 0, max(seconds, 0), b"", 0, 0)
    return bytes(pax) + payload + bytes(-len(payload) % _BLOCK) + bytes(block)


#: The end of a tar archive: two zero blocks.
END_OF_ARCHIVE: Final = bytes(2 * _BLOCK)


class OutputFile(io.FileIO):
    """A new regular file that :class:`TarWriter` may fill at known offsets from several
    threads at once (what :func:`output_file` gives for ``-o PATH``)."""


class MemberSink:
    """Where a member's data goes: exactly ``size`` bytes, in order.

    A fill function (see :meth:`TarWriter.add_file`) calls :meth:`write` with the data
    as it is read and verified; more than ``size`` bytes is an error at once, fewer when
    the fill function returns.
    """

    __slots__ = ("_write", "done", "name", "size")

    def __init__(
        self, name: str, size: int, write: Callable[[bytes | memoryview, int], object]
    ) -> None:
        self.name = name
        self.size = size
        self.done = 0
        self._write = write

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.done + n > self.size:
            raise OcistoreError(f"{self.name}: stored content is longer than recorded")
        if n:
            self._write(data, self.done)
            self.done += n


#: Writes a member's data into a :class:`MemberSink` (see :meth:`TarWriter.add_file`).
Fill = Callable[[MemberSink], None]


class _Job:
    """A member the tar writer fills at ``offset``, and how that went."""

    __slots__ = ("error", "fill", "name", "offset", "size")

    def __init__(self, name: str, offset: int, size: int, fill: Fill) -> None:
        self.name = name
        self.offset = offset
        self.size = size
        self.fill = fill
        self.error: BaseException | None = None

    def run(self, write: Callable[[bytes | memoryview, int], object]) -> None:
        """Fill the member through ``write``, checking it got exactly its size; a
        failure (other than a halt) is kept in :attr:`error` and raised."""
        sink = MemberSink(self.name, self.size, write)
        try:
            self.fill(sink)
            if sink.done != sink.size:
                raise OcistoreError(f"{sink.name}: stored content is shorter than recorded")
        except parallel.Halted:
            raise
        except BaseException as e:
            self.error = e
            raise


class _PositionalWriter:
    """Writes one member's data at its place in the output file; stops once another
    member failed."""

    def __init__(self, fd: int, base: int, stop: parallel.Stop) -> None:
        self._fd = fd
        self._base = base
        self._stop = stop

    def __call__(self, data: bytes | memoryview, pos: int) -> None:
        self._stop.check()
        fsutil.write_all(self._fd, data, self._base + pos)


#: What the filling thread puts in the queue when it stops (see ``TarWriter._stream``).
_END: Final = object()


class TarWriter:
    """Writes a deterministic tar, with the headers of ``docker save`` (moby's
    ``pkg/archive`` through Go's ``archive/tar``): owner 0:0 named ``root``, 0644 files,
    0755 directories, 0777 symlinks, the file type bits in the mode field, the mtime each
    member is given (0 unless told), and the end after two zero blocks (Go pads the
    archive to no record).

    Headers are tarfile's own (``TarInfo.tobuf``, PAX format: the same USTAR fields Go
    writes), with the type bits put in the mode field. Member data comes from
    :meth:`add_file`'s fill functions, run at :meth:`close`. Into an :class:`OutputFile`
    every member has a known place: the fill functions run several at once (largest
    first), each writing at its own offset. Into any other stream they run in order on a
    second thread, a few MiB ahead of the calling one, which writes. The end-of-archive
    blocks are written only when every member was filled: a failed save never looks
    whole.
    """

    def __init__(self, out: IO[bytes], threads: int | None = None) -> None:
        self._out = out
        self._fd = out.fileno() if isinstance(out, OutputFile) else None
        self._base = out.tell() if self._fd is not None else 0
        #: Header (and padding) bytes not written yet, and where in the archive they go.
        self._pending = bytearray()
        self._pending_at = 0
        #: The archive's length so far.
        self._offset = 0
        #: Into a stream: the archive in order, bytes and members to fill.
        self._segments: list[bytes | _Job] = []
        self._jobs: list[_Job] = []
        self._dirs: set[str] = set()
        self._threads = max(1, threads or min(MAX_FILL_THREADS, os.cpu_count() or 1))
        self._done = False

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @staticmethod
    def _header(
        name: str, kind: bytes, size: int = 0, mode: int = 0o644, link: str = "", mtime: int = 0
    ) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = _OWNER
        info.linkname = link
        buf = bytearray(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        # tarfile writes ``mode & 0o7777`` and, but for devices, empty device numbers; Go
        # writes the type bits and zeros. The last (the USTAR) header gets Go's fields, and
        # its checksum is made again (all as tarfile formats its numbers).
        head = len(buf) - _BLOCK
        buf[head + 100 : head + 108] = b"%07o\0" % (mode | _TYPE_BITS[kind])
        buf[head + 329 : head + 345] = b"0000000\0" * 2  # devmajor, devminor
        buf[head + 148 : head + 156] = b" " * 8
        buf[head + 148 : head + 155] = b"%06o\0" % sum(buf[head : head + _BLOCK])
        return bytes(buf)

    def _emit(self, data: bytes) -> None:
        self._pending += data
        self._offset += len(data)

    def _flush(self) -> None:
        if self._pending:
            if self._fd is None:
                self._segments.append(bytes(self._pending))
            else:
                fsutil.write_all(self._fd, self._pending, self._base + self._pending_at)
            self._pending = bytearray()
        self._pending_at = self._offset

    def _parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)

    def add_dir(self, name: str, mtime: int = 0) -> None:
        """A directory (written once; a parent not added before is added with mtime 0)."""
        name = name.rstrip("/")
        if name in self._dirs:
            return
        self._parents(name)
        self._dirs.add(name)
        self._emit(self._header(name, tarfile.DIRTYPE, mode=0o755, mtime=mtime))

    def add_bytes(self, name: str, data: bytes, mtime: int = 0) -> None:
        self._parents(name)
        self._emit(self._header(name, tarfile.REGTYPE, len(data), mtime=mtime))
        self._emit(data + bytes(-len(data) % _BLOCK))

    def add_symlink(self, name: str, target: str, mtime: int = 0) -> None:
        self._parents(name)
        self._emit(self._header(name, tarfile.SYMTYPE, mode=0o777, link=target, mtime=mtime))

    def add_file(self, name: str, size: int, fill: Fill, mtime: int = 0) -> None:
        """A regular file of ``size`` bytes that ``fill`` writes into a :class:`MemberSink`.

        ``fill`` reads and verifies the content, raising if it is not what it must be. It
        runs at :meth:`close`, in another thread.
        """
        self._parents(name)
        self._emit(self._header(name, tarfile.REGTYPE, size, mtime=mtime))
        self._flush()
        job = _Job(name, self._offset, size, fill)
        self._jobs.append(job)
        if self._fd is None:
            self._segments.append(job)
        self._offset += size
        self._pending_at = self._offset
        self._emit(bytes(-size % _BLOCK))

    def _fill(self, job: _Job, stop: parallel.Stop) -> None:
        assert self._fd is not None
        job.run(_PositionalWriter(self._fd, self._base + job.offset, stop))

    def _run_jobs(self) -> None:
        """Fill the members of an :class:`OutputFile`, largest first, with up to
        ``threads`` threads; the first member (in archive order) that failed gives the
        error."""
        jobs = sorted(self._jobs, key=lambda j: j.size, reverse=True)
        try:
            parallel.run_all([functools.partial(self._fill, job) for job in jobs], self._threads)
        except Exception:
            for job in self._jobs:
                if job.error is not None:
                    raise job.error from None
            raise

    def _stream(self) -> None:
        """Write the archive in order into a stream; members are filled by one thread,
        at most :data:`_AHEAD` chunks ahead of the one that writes."""
        out = self._out
        if not self._jobs or self._threads == 1:
            for seg in self._segments:
                if isinstance(seg, _Job):
                    seg.run(lambda data, _pos: out.write(data))
                else:
                    out.write(seg)
            return
        chunks: queue.Queue[object] = queue.Queue(maxsize=_AHEAD)

        def produce(stop: parallel.Stop) -> None:
            def put(data: bytes | memoryview, _pos: int) -> None:
                parallel.put(chunks, bytes(data), stop)  # stops once the writing side failed

            try:
                for job in self._jobs:
                    try:
                        job.run(put)
                    except parallel.Halted:
                        raise
                    except BaseException:
                        pass  # kept in job.error, for the writing side to raise
                    # The end of its data; job.error tells whether it failed.
                    parallel.put(chunks, job, stop, on_failure=False)
                    if job.error is not None:
                        return
            finally:
                with contextlib.suppress(parallel.Halted):
                    parallel.put(chunks, _END, stop, on_failure=False)

        def write(stop: parallel.Stop) -> None:
            try:
                for seg in self._segments:
                    if not isinstance(seg, _Job):
                        out.write(seg)
                        continue
                    while True:
                        item = parallel.get(chunks, stop)
                        if item is _END:  # the filling thread stopped before this member
                            raise OcistoreError(f"{seg.name}: its data never came")
                        if isinstance(item, _Job):
                            break
                        out.write(item)  # type: ignore[call-overload]
                    if item.error is not None:
                        raise item.error
            except BaseException:
                stop.failed.set()  # the filling thread stops at its next chunk...
                while True:  # ...once it is not waiting for room in the queue
                    try:
                        chunks.get_nowait()
                    except queue.Empty:
                        break
                raise

        parallel.run_all([write, produce], workers=2, caller_first=True)

    def close(self) -> None:
        """Fill the members, then end the archive: two zero blocks, and no padding to a
        record (as Go's ``archive/tar`` in ``docker save``; tarfile pads to 10 KiB)."""
        if self._done:
            return
        self._done = True
        if self._fd is None:
            self._emit(bytes(2 * _BLOCK))
            self._flush()
            self._stream()
        else:
            self._flush()
            self._run_jobs()
            self._emit(bytes(2 * _BLOCK))
            self._flush()

    def abort(self) -> None:
        """Stop without writing anything more (a reader sees the archive truncated)."""
        self._done = True
        self._pending = bytearray()
        self._segments = []


def fill_from(
    open_stream: Callable[[], IO[bytes]], progress: Callable[[int], None] | None = None
) -> Fill:
    """A fill function copying what ``open_stream`` gives to its end (a stored blob,
    which checks its own digest there) into the member; ``progress`` is called with the
    bytes done. Each piece is read once into one buffer and written from it."""

    def fill(sink: MemberSink) -> None:
        with open_stream() as f:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            readinto = f.readinto  # type: ignore[attr-defined]
            while n := readinto(buf):
                sink.write(view[:n])  # more than recorded is an error at once
                if progress is not None:
                    progress(sink.done)

    return fill


@contextlib.contextmanager
def _naming(output: object) -> Iterator[None]:
    """A write error that names no file (a full disk, an I/O error) names the output."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader went away: the command line ends quietly
    except OSError as e:
        if e.filename is not None:
            raise
        raise StorageError("writing", output, e) from None


@contextlib.contextmanager
def output_file(path: str) -> Iterator[IO[bytes]]:
    """``-`` is stdout (written so that Ctrl-C always stops a wait on it); a path is
    written to a temporary file beside it and renamed into place when complete, so a
    failed save leaves nothing and no reader sees half a file.

    Like ``docker save -o``, ``skopeo copy`` and ``tar``, the file is not fsynced: it is
    an export, not part of the store. It reaches the disk with the kernel's writeback
    (``sync`` forces it); until then a power loss can leave the path empty or short, or
    lose the file it replaced. (Waiting for the disk was a large part of the time of an
    oci-archive save.)
    """
    if path == "-":
        sys.stdout.flush()
        sys.stdout.buffer.flush()
        # Ctrl-C stops a wait on the pipe.
        with parallel.InterruptiblePipe(sys.stdout.buffer) as pipe, _naming("standard output"):
            yield pipe  # type: ignore[misc]
        return
    dest = Path(os.path.realpath(path))  # through a symlink: the link stays a link
    if dest.is_dir():
        raise InvalidInput(f"{path}: is a directory")
    if not dest.parent.is_dir():
        raise NotFound(f"{path}: no such directory {dest.parent}")
    if dest.exists() and not dest.is_file():
        # A FIFO or a device (/dev/null, /dev/stdout): written to, never replaced.
        with _naming(dest), open(dest, "wb") as stream:  # its close flushes: named too
            yield stream
        return
    output = fsutil.AtomicFile(
        dest,
        mode=0o666,
        durable=False,
        open_file=lambda fd: OutputFile(fd, "wb"),
        clean_beside=True,
    )
    with output as f, _naming(dest):
        yield f
