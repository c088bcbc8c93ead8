"""Reading archives safely.

:func:`open_archive` gives an :class:`ArchiveReader` over a directory or a tar file
(plain, gzip or zstd): a tar on disk is indexed in place, and standard input or a
compressed tar is copied once, decompressed, into a scratch file the store gives
(:meth:`ocistore.store.Store.spool`). Entry names are normalized (``./a`` is ``a``); a
name that is absolute or climbs out with ``..`` is refused, naming the entry. A symlink
is followed only while it stays inside the archive and ends on a regular file, as
``docker load`` does with the links ``docker save`` writes for repeated layers; any
other link where a file is expected is refused.

Headers are read by :class:`~ocistore.spec.tarscan.TarScanner`, with the limits of
:mod:`ocistore.spec.limits`: a stream is followed while it is spooled, so junk is
refused at its first header and nothing after the end-of-archive marker is written, and
the index it leaves is the archive's (the scratch file is not read again).
"""

from __future__ import annotations

import io
import os
import posixpath
import stat as stat_mod
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, cast

from ..errors import InvalidInput, NotFound, OcistoreError
from ..parallel import InterruptiblePipe
from ..spec.compression import Compression, PeekableReader, decompressed_reader, detect
from ..spec.digest import CHUNK
from ..spec.limits import (
    MAX_ARCHIVE_JSON,
    MAX_MEMBER_NAMES,
    MAX_MEMBERS,
    MAX_SYMLINKS,
    MAX_TAR_TRAILER,
    check_size,
    load_json,
)
from ..spec.tarscan import BLOCK, Entry, TarScanner
from ..store import fsutil


class ArchiveReader(Protocol):
    #: The archive's path (or ``-``), for messages.
    name: str

    def names(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def is_dir(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def open(self, name: str) -> IO[bytes]: ...
    #: The member a name ends on once in-archive symlinks are followed (same bytes, same name).
    def resolve(self, name: str) -> str: ...
    def close(self) -> None: ...


def clean_name(archive: str, name: str) -> str:
    """A member name normalized; refuses absolute names and names with ``..``."""
    if "\x00" in name:
        raise InvalidInput(f"{archive}: entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise InvalidInput(f"{archive}: entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"{archive}: entry {name!r} climbs out of the archive with '..'")
    return "/".join(parts)


def read_json(
    archive: ArchiveReader, name: str, limit: int = MAX_ARCHIVE_JSON, kind: str = "this file"
) -> Any:
    """A JSON document from the archive, parsed with the limits of
    :func:`~ocistore.spec.limits.load_json`; errors name the archive and the entry."""
    return load_json(read_bytes(archive, name, limit, kind), f"{archive.name}: {name}", limit, kind)


def read_bytes(
    archive: ArchiveReader, name: str, limit: int = MAX_ARCHIVE_JSON, kind: str = "this file"
) -> bytes:
    """A small file of the archive (a JSON document), refused over ``limit`` bytes
    before it is read."""
    check_size(archive.size(name), limit, f"{archive.name}: {name}", kind)
    with archive.open(name) as f:
        return f.read()


class _Member(NamedTuple):
    kind: str  # "file", "dir", "link"
    offset: int = 0
    size: int = 0
    target: str = ""


class _Window(io.RawIOBase):
    """A read-only window onto ``size`` bytes of a file from ``offset``."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf)
        if len(view) > self._left:
            view = view[: self._left]
        n = self._f.readinto(view) or 0
        if n == 0:
            raise InvalidInput(f"{self._f.name}: archive is truncated")
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _Index:
    """The members of a tar, by normalized name, as :class:`TarScanner` reports them;
    their number and their names' bytes (implied parent directories included) are
    limited (:data:`~ocistore.spec.limits.MAX_MEMBERS`, :data:`MAX_MEMBER_NAMES`)."""

    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.members: dict[str, _Member] = {}
        self._name_bytes = 0

    def _put(self, name: str, member: _Member) -> None:
        if name not in self.members:
            self._name_bytes += len(name)
            if len(self.members) >= MAX_MEMBERS:
                raise InvalidInput(
                    f"{self.archive}: more than {MAX_MEMBERS} members (with their parent "
                    f"directories), over the limit of {MAX_MEMBERS}"
                )
            if self._name_bytes > MAX_MEMBER_NAMES:
                raise InvalidInput(
                    f"{self.archive}: more than {MAX_MEMBER_NAMES >> 20} MiB of member "
                    f"names, over the limit of {MAX_MEMBER_NAMES >> 20} MiB"
                )
        self.members[name] = member

    def add(self, entry: Entry) -> None:
        name = clean_name(self.archive, entry.name)
        if not name:
            return
        kind = entry.type
        if kind == b"\x00" and entry.name.endswith("/"):
            kind = b"5"  # an old tar's directory, as tarfile reads it
        if kind in _FILE_TYPES:
            self._put(name, _Member("file", entry.offset, entry.size))
        elif kind == b"5":
            self._put(name, _Member("dir"))
        elif kind == b"2":
            self._put(name, _Member("link", target=entry.linkname))
        elif kind == b"1":
            target = clean_name(self.archive, entry.linkname)
            orig = self.members.get(target)
            if orig is None or orig.kind != "file":
                raise InvalidInput(f"{self.archive}: hard link {name} points at missing {target}")
            self._put(name, orig)
        # devices, fifos and the like carry nothing an image format needs

    def finish(self) -> dict[str, _Member]:
        for name in list(self.members):  # implied parent directories
            parent = posixpath.dirname(name)
            while parent and parent not in self.members:
                self._put(parent, _Member("dir"))
                parent = posixpath.dirname(parent)
        return self.members


#: Type flags of regular files (``7`` is a contiguous file, read as a regular one).
_FILE_TYPES = frozenset((b"0", b"\x00", b"7"))


def _scan_file(path: Path, display: str) -> dict[str, _Member]:
    """Index a tar on disk: its headers are read and its data passed over."""
    index = _Index(display)
    scanner = TarScanner(display, index.add)
    size = path.stat().st_size
    with open(path, "rb", buffering=1 << 16) as f:
        while not scanner.ended:
            if scanner.skip:
                k = scanner.skip
                if scanner.pos + k > size:
                    break  # truncated in a member: finish() says so
                f.seek(k, os.SEEK_CUR)
                scanner.passed(k)
                continue
            block = f.read(BLOCK)
            if not block:
                break
            scanner.feed(block)
    scanner.finish()
    return index.finish()


class _Watched(io.RawIOBase):
    """The bytes of a tar stream on their way into the store's scratch file, followed
    by a :class:`TarScanner` (and indexed) as they go: junk is refused at its first
    header, nothing after the end-of-archive marker is written, and the bytes after it
    are read to the end of the stream (so a compressed stream's checksum is checked)
    but refused beyond :data:`~ocistore.spec.limits.MAX_TAR_TRAILER`."""

    def __init__(self, stream: IO[bytes], display: str) -> None:
        self._stream = stream
        self._display = display
        self.index = _Index(display)
        self._scanner = TarScanner(display, self.index.add)
        self._trailer = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        while True:
            data = self._stream.read(len(view))
            if not data:
                self._scanner.finish()
                return 0
            if self._scanner.ended:
                self._count_trailer(len(data))
                continue
            n = self._scanner.feed(data)
            self._count_trailer(len(data) - n)
            if n:
                view[:n] = data[:n]
                return n

    def _count_trailer(self, n: int) -> None:
        self._trailer += n
        if self._trailer > MAX_TAR_TRAILER:
            raise InvalidInput(
                f"{self._display}: more than {MAX_TAR_TRAILER >> 20} MiB after the tar's "
                f"end-of-archive marker, over the limit of {MAX_TAR_TRAILER >> 20} MiB"
            )


class TarArchive:
    """A tar archive on disk, indexed once; members are read in place."""

    def __init__(
        self,
        path: Path,
        display: str,
        spooled: fsutil.TempFile | None = None,
        members: dict[str, _Member] | None = None,
    ) -> None:
        self.path = path
        self.name = display
        #: The store's scratch file the archive was spooled to, removed on close.
        self._spooled = spooled
        self._names: list[str] | None = None
        try:
            self._members = members if members is not None else _scan_file(path, display)
        except BaseException:
            self.close()
            raise

    def _resolve(self, name: str) -> tuple[str, _Member]:
        cur = clean_name(self.name, name)
        for _ in range(MAX_SYMLINKS):
            m = self._members.get(cur)
            if m is None:
                raise InvalidInput(f"{self.name}: {name} is missing from the archive")
            if m.kind != "link":
                return cur, m
            target = m.target
            if target.startswith("/"):
                raise InvalidInput(f"{self.name}: {cur} is a symlink out of the archive ({target})")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(cur), target))
            if joined == ".." or joined.startswith("../"):
                raise InvalidInput(f"{self.name}: {cur} is a symlink out of the archive ({target})")
            cur = joined
        raise InvalidInput(f"{self.name}: {name}: too many levels of symlinks")

    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(self._members)
        return self._names

    def resolve(self, name: str) -> str:
        return self._resolve(name)[0]

    def exists(self, name: str) -> bool:
        try:
            self._resolve(name)
        except InvalidInput:
            return False
        return True

    def is_dir(self, name: str) -> bool:
        try:
            return self._resolve(name)[1].kind == "dir"
        except InvalidInput:
            return False

    def size(self, name: str) -> int:
        resolved, m = self._resolve(name)
        if m.kind != "file":
            raise InvalidInput(f"{self.name}: {resolved} is not a regular file")
        return m.size

    def open(self, name: str) -> IO[bytes]:
        resolved, m = self._resolve(name)
        if m.kind != "file":
            raise InvalidInput(f"{self.name}: {resolved} is not a regular file")
        return io.BufferedReader(_Window(str(self.path), m.offset, m.size), CHUNK)

    def close(self) -> None:
        if self._spooled is not None:
            self._spooled.discard()


class DirArchive:
    """A directory (an OCI layout, or an unpacked docker-archive)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._real = os.path.realpath(path)

    def _path(self, name: str) -> str:
        clean = clean_name(self.name, name)
        full = os.path.join(self.path, clean)
        real = os.path.realpath(full)
        if real != self._real and not real.startswith(self._real + os.sep):
            raise InvalidInput(f"{self.name}: {clean} is a symlink out of the layout")
        return real

    def names(self) -> list[str]:
        out = []
        for dirpath, dirs, files in os.walk(self.path):
            rel = os.path.relpath(dirpath, self.path)
            for n in dirs + files:
                out.append(n if rel == "." else f"{rel}/{n}")
            if len(out) > MAX_MEMBERS:
                raise InvalidInput(
                    f"{self.name}: more than {MAX_MEMBERS} files, over the limit of {MAX_MEMBERS}"
                )
        return sorted(out)

    def exists(self, name: str) -> bool:
        try:
            return os.path.exists(self._path(name))
        except InvalidInput:
            return False

    def is_dir(self, name: str) -> bool:
        try:
            return os.path.isdir(self._path(name))
        except InvalidInput:
            return False

    def resolve(self, name: str) -> str:
        real = self._path(name)
        return "" if real == self._real else os.path.relpath(real, self._real)

    def _stat(self, name: str) -> tuple[str, os.stat_result]:
        p = self._path(name)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise InvalidInput(f"{self.name}: {name} is missing") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise InvalidInput(f"{self.name}: {name} is not a regular file")
        return p, st

    def size(self, name: str) -> int:
        return self._stat(name)[1].st_size

    def open(self, name: str) -> IO[bytes]:
        p, _ = self._stat(name)
        return open(p, "rb", buffering=CHUNK)

    def close(self) -> None:
        pass


#: Copies a stream into a scratch file of the store (:meth:`ocistore.store.Store.spool`).
Spool = Callable[[IO[bytes], str], fsutil.TempFile]


def open_archive(source: str | Path, spool: Spool) -> ArchiveReader:
    """Open a directory or a tar (possibly gzip or zstd compressed; ``-`` is stdin).

    A tar on disk is read in place; standard input, or a compressed tar, is first
    copied (decompressed) once into a scratch file of the store with ``spool``.
    """
    display = str(source)
    if display != "-" and Path(source).is_dir():
        return DirArchive(Path(source))
    on_disk = display != "-"
    if not on_disk:
        if sys.stdin is None:
            raise InvalidInput("-: no standard input to read (it is closed)")
        # Read so that Ctrl-C always stops a wait on the pipe.
        opened: IO[bytes] | InterruptiblePipe = InterruptiblePipe(sys.stdin.buffer)
        stream = PeekableReader(cast("IO[bytes]", opened))
    else:
        path = Path(source)
        if not path.exists():
            raise NotFound(f"open {display}: no such file or directory")  # as Go's os.Open
        opened = open(path, "rb")  # noqa: SIM115
        stream = PeekableReader(opened)
    try:
        head = stream.peek(8)
        if not head:
            raise InvalidInput(f"{display}: empty file, not an archive")
        compression = detect(head, display)
        if compression is Compression.NONE:
            if on_disk:
                return TarArchive(path, display)
            watched = _Watched(cast("IO[bytes]", stream), display)
            spooled = spool(cast("IO[bytes]", watched), ".archive")
        else:
            try:
                plain = decompressed_reader(cast("IO[bytes]", stream), compression, display)
                watched = _Watched(plain, display)
                spooled = spool(cast("IO[bytes]", watched), ".archive")
            except OcistoreError:
                raise
            except Exception as e:  # a damaged gzip or zstd stream
                raise InvalidInput(f"{display}: corrupt {compression.value} data: {e}") from None
        try:
            members = watched.index.finish()
        except BaseException:
            spooled.discard()
            raise
        return TarArchive(spooled.path, display, spooled, members)
    finally:
        opened.close()
