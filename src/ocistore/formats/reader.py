"""Reading archives safely.

:func:`open_archive` gives an :class:`ArchiveReader` over a directory or a tar file
(plain, gzip or zstd): a tar on disk is indexed in place, and standard input or a
compressed tar is copied once, decompressed, into a scratch file the store gives
(:meth:`ocistore.store.Store.spool`). Entry names are normalized (``./a`` is ``a``); a
name that is absolute or climbs out with ``..`` is refused, naming the entry. A symlink
is followed only while it stays inside the archive and ends on a regular file, as
``docker load`` does with the links ``docker save`` writes for repeated layers; any
other link where a file is expected is refused.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import stat as stat_mod
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol, cast

from ..errors import InvalidInput, NotFound, OcistoreError
from ..parallel import InterruptiblePipe
from ..spec.compression import Compression, PeekableReader, decompressed_reader, detect
from ..spec.digest import CHUNK
from ..store import fsutil

#: The most a JSON document inside an archive may weigh (manifests, configs, indexes).
MAX_JSON = 64 << 20
_MAX_LINKS = 16


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


def read_json(archive: ArchiveReader, name: str) -> Any:
    """A JSON document from the archive; errors name the archive and the entry."""
    size = archive.size(name)
    if size > MAX_JSON:
        raise InvalidInput(
            f"{archive.name}: {name} is too large for a JSON document ({size} bytes)"
        )
    with archive.open(name) as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{archive.name}: {name} is not valid JSON: {e}") from None


def read_bytes(archive: ArchiveReader, name: str) -> bytes:
    size = archive.size(name)
    if size > MAX_JSON:
        raise InvalidInput(f"{archive.name}: {name} is too large ({size} bytes)")
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


class TarArchive:
    """A tar archive on disk, indexed once; members are read in place."""

    def __init__(self, path: Path, display: str, spooled: fsutil.TempFile | None = None) -> None:
        self.path = path
        self.name = display
        #: The store's scratch file the archive was spooled to, removed on close.
        self._spooled = spooled
        self._members: dict[str, _Member] = {}
        try:
            self._index()
        except BaseException:
            self.close()
            raise

    def _index(self) -> None:
        size = self.path.stat().st_size
        try:
            with tarfile.open(self.path, mode="r:") as tf:
                for info in tf:
                    name = clean_name(self.name, info.name)
                    if not name:
                        continue
                    if info.isreg():
                        if info.offset_data + info.size > size:
                            raise InvalidInput(f"{self.name}: archive is truncated in {name}")
                        self._members[name] = _Member("file", info.offset_data, info.size)
                    elif info.isdir():
                        self._members[name] = _Member("dir")
                    elif info.issym():
                        self._members[name] = _Member("link", target=info.linkname)
                    elif info.islnk():
                        target = clean_name(self.name, info.linkname)
                        orig = self._members.get(target)
                        if orig is None or orig.kind != "file":
                            raise InvalidInput(
                                f"{self.name}: hard link {name} points at missing {target}"
                            )
                        self._members[name] = orig
                    # devices, fifos and the like carry nothing an image format needs
                end = tf.offset
        except tarfile.ReadError as e:
            if not self._members:
                raise InvalidInput(f"{self.name}: not a tar archive ({e})") from None
            raise InvalidInput(f"{self.name}: archive is truncated or damaged ({e})") from None
        except EOFError:
            raise InvalidInput(f"{self.name}: archive is truncated") from None
        # tarfile stops quietly at a header cut short or damaged after the first member;
        # a whole archive ends with a zero block there (the end-of-archive marker).
        with open(self.path, "rb") as f:
            f.seek(end)
            if f.read(512) != bytes(512):
                raise InvalidInput(
                    f"{self.name}: archive is truncated or damaged at byte {end} "
                    "(no end-of-archive marker)"
                )
        for name in list(self._members):  # implied parent directories
            parent = posixpath.dirname(name)
            while parent and parent not in self._members:
                self._members[parent] = _Member("dir")
                parent = posixpath.dirname(parent)

    def _resolve(self, name: str) -> tuple[str, _Member]:
        cur = clean_name(self.name, name)
        for _ in range(_MAX_LINKS):
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
        return sorted(self._members)

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
        # Read so that Ctrl-C always stops a wait on the pipe.
        opened: IO[bytes] | InterruptiblePipe = InterruptiblePipe(sys.stdin.buffer)
        stream = PeekableReader(cast("IO[bytes]", opened))
    else:
        path = Path(source)
        if not path.exists():
            raise NotFound(f"{display}: no such file or directory")
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
            spooled = spool(cast("IO[bytes]", stream), ".archive")
        else:
            try:
                plain = decompressed_reader(cast("IO[bytes]", stream), compression, display)
                spooled = spool(plain, ".archive")
            except OcistoreError:
                raise
            except Exception as e:  # a damaged gzip or zstd stream
                raise InvalidInput(f"{display}: corrupt {compression.value} data: {e}") from None
        return TarArchive(spooled.path, display, spooled)
    finally:
        opened.close()
