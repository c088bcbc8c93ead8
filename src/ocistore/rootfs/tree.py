"""A root file system's tree as a sorted list of entries, and the record ``unpack``
keeps of it.

:func:`walk` reads a tree through its :class:`~.fsroot.Root` (by file descriptor, never
following a symlink) and yields one :class:`TreeEntry` per path, in the order of
:func:`path_key`: a directory, then its children sorted by their bytes, each followed
by what is below it. ``unpack`` writes what it yields, with each regular file's content
digest, as the tree's record (:class:`Record`, next to the rootfs); ``commit`` walks the
tree again and merges the two sorted lists (:func:`changes`), so neither is ever held
whole in memory.

A file is taken as unchanged when its type, mode, owner, size, mtime, ctime and inode
are the ones recorded: every write, chmod, chown, rename over it or xattr change moves
its ctime, which no user call can set back. When only the ctime or the inode moved, the
content's digest decides.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import stat
from collections.abc import Callable, Generator, Iterator
from typing import Final, NamedTuple

from ..errors import InvalidInput
from .fsroot import DIR_FLAGS, Root

__all__ = [
    "RECORD_VERSION",
    "ROOTLESS_XATTR",
    "Change",
    "DirHook",
    "Record",
    "TreeEntry",
    "changes",
    "decode_owner",
    "encode_owner",
    "file_digest",
    "walk",
]

RECORD_VERSION: Final = 1
_READ: Final = 1 << 20
_BATCH: Final = 4096


class TreeEntry(NamedTuple):
    """One path of a tree (``a/b``, no leading slash) and what a layer records of it."""

    path: str
    #: ``stat.S_IFMT`` bits of the mode.
    kind: int
    #: Permission bits with setuid/setgid/sticky.
    mode: int
    #: The owner in the image (a rootless tree's ``user.rootlesscontainers``).
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    nlink: int
    #: A symlink's target; a device's ``major,minor``.
    link: str
    #: A regular file's ``sha256:...`` (only where it was asked for).
    digest: str

    def same_meta(self, other: TreeEntry) -> bool:
        """Type, mode, owner and what a symlink or device points at are equal."""
        return (
            self.kind == other.kind
            and self.mode == other.mode
            and self.uid == other.uid
            and self.gid == other.gid
            and self.link == other.link
        )

    def untouched(self, other: TreeEntry) -> bool:
        """Nothing about the file moved since ``other`` was recorded (see the module)."""
        return (
            self.same_meta(other)
            and self.mtime_ns == other.mtime_ns
            and self.ctime_ns == other.ctime_ns
            and self.ino == other.ino
            and (self.size == other.size or self.kind == stat.S_IFDIR)
        )


def path_key(path: str) -> tuple[bytes, ...]:
    """The order of a tree's walk: by components, each compared as bytes."""
    return tuple(os.fsencode(part) for part in path.split("/"))


def file_digest(parent: int, name: str) -> str:
    """The ``sha256:`` digest of a regular file's content, read without following a
    symlink."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    try:
        hasher = hashlib.sha256()
        while chunk := os.read(fd, _READ):
            hasher.update(chunk)
        return "sha256:" + hasher.hexdigest()
    finally:
        os.close(fd)


#: Where a rootless unpack keeps a file's owner in the image (rootless-containers' proto).
ROOTLESS_XATTR: Final = "user.rootlesscontainers"
#: The rootless-containers proto's "not changed" id (what umoci writes for 0).
NOOP_ID: Final = 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def encode_owner(uid: int, gid: int) -> bytes:
    """The rootless-containers ``Resource {uint32 uid = 1; uint32 gid = 2}`` message."""
    out = b""
    if uid:
        out += b"\x08" + _varint(uid)
    if gid:
        out += b"\x10" + _varint(gid)
    return out


def decode_owner(raw: bytes) -> tuple[int, int]:
    """The owner a ``user.rootlesscontainers`` value records (0 for a field left out)."""
    values = {1: 0, 2: 0}
    pos = 0
    while pos < len(raw):
        key = raw[pos]
        pos += 1
        value = shift = 0
        while pos < len(raw):
            byte = raw[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key & 7 == 0:  # (a varint; nothing else is in the message)
            values[key >> 3] = value & 0xFFFFFFFF
    # umoci writes an id left as it is as the proto's NoopID, 2**32 - 1: root's, here.
    uid, gid = (0 if v == NOOP_ID else v for v in (values[1], values[2]))
    return uid, gid


def _owner(parent: int, name: str, info: os.stat_result, rootless: bool) -> tuple[int, int]:
    if not rootless:
        return info.st_uid, info.st_gid
    kind = stat.S_IFMT(info.st_mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        return 0, 0  # (user xattrs exist only on files and directories)
    try:
        raw = os.getxattr(f"/proc/self/fd/{parent}/{name}", ROOTLESS_XATTR, follow_symlinks=False)
    except OSError:
        return 0, 0
    return decode_owner(raw)


#: Called with a directory's descriptor and its status before the walk goes into it:
#: gives its status and permission bits to record (it may change the directory:
#: ``unpack`` sets the directories' metadata here) and what to call once the walk is out
#: of it, if anything.
DirHook = Callable[[int, os.stat_result], tuple[os.stat_result, int, Callable[[], None] | None]]


def walk(
    root: Root,
    *,
    rootless: bool = False,
    digests: dict[tuple[int, int], str] | None = None,
    hash_files: bool = False,
    owners: dict[tuple[int, int], tuple[int, int]] | None = None,
    on_dir: DirHook | None = None,
) -> Iterator[tuple[TreeEntry, int, str]]:
    """Every path below the root, in :func:`path_key` order, with the file descriptor
    of its directory and its name there (valid until the next entry is asked for).
    A regular file's digest comes from ``digests`` (by device and inode) or, with
    ``hash_files``, is read. A rootless tree's owners come from ``owners`` (by device
    and inode; 0:0 for the others) when the caller knows them, else from the xattr.
    Depth first without recursion: a tree of any depth the open files allow."""
    # The directories being walked: descriptor, path prefix, names left (reversed),
    # and what to call once out of it.
    stack: list[tuple[int, str, list[str], Callable[[], None] | None]] = []

    def names_of(fd: int) -> list[str]:
        names = os.listdir(fd)
        names.sort(key=os.fsencode, reverse=True)
        return names

    stack.append((root.fd, "", names_of(root.fd), None))
    try:
        while stack:
            fd, prefix, names, after = stack[-1]
            if not names:
                stack.pop()
                if after is not None:
                    after()
                if stack:
                    os.close(fd)
                continue
            name = names.pop()
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = info.st_mode
            kind = stat.S_IFMT(mode)
            link = ""
            digest = ""
            child = -1
            child_after = None
            if kind == stat.S_IFDIR:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                if on_dir is not None:
                    try:
                        info, permissions, child_after = on_dir(child, info)
                    except BaseException:
                        os.close(child)
                        raise
                    mode = stat.S_IFDIR | permissions
            elif kind == stat.S_IFLNK:
                link = os.readlink(name, dir_fd=fd)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                link = f"{os.major(info.st_rdev)},{os.minor(info.st_rdev)}"
            elif kind == stat.S_IFREG:
                if digests is not None:
                    digest = digests.get((info.st_dev, info.st_ino), "")
                if not digest and hash_files:
                    digest = file_digest(fd, name)
            if owners is not None:  # (only files and directories have user xattrs)
                owned = kind in (stat.S_IFREG, stat.S_IFDIR)
                key = (info.st_dev, info.st_ino)
                uid, gid = owners.get(key, (0, 0)) if owned else (0, 0)
            else:
                uid, gid = _owner(fd, name, info, rootless)
            path = prefix + name
            entry = TreeEntry(
                path,
                kind,
                stat.S_IMODE(mode),
                uid,
                gid,
                info.st_size if kind == stat.S_IFREG else 0,
                info.st_mtime_ns,
                info.st_ctime_ns,
                info.st_ino,
                info.st_nlink,
                link,
                digest,
            )
            if child >= 0:
                try:
                    children = names_of(child)
                except BaseException:
                    os.close(child)
                    raise
                stack.append((child, path + "/", children, child_after))
                yield entry, fd, name
            else:
                yield entry, fd, name
    finally:
        for fd, _, _, _ in stack[1:]:
            os.close(fd)


# -- the record ----------------------------------------------------------------------


class Record:
    """The record of an unpacked tree: a gzip of JSON lines, a header then the entries
    in the walk's order, a JSON array of at most 4096 of them a line. Written once by
    ``unpack``; read by ``commit``. It is the file ``name`` in the directory open as
    ``dir_fd`` (never followed if it is a symlink); ``shown`` names it in messages."""

    def __init__(self, dir_fd: int, name: str, shown: str) -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.path = shown

    def write(self, header: dict[str, object], entries: Iterator[TreeEntry]) -> int:
        """Write the record (through a temporary name, so a failed unpack leaves none);
        how many entries it holds."""
        count = 0
        tmp = self.name + ".tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self.dir_fd)  # (a leftover, or a symlink: never followed)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=self.dir_fd,
        )
        with open(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out:
            out.write(json.dumps({"version": RECORD_VERSION, **header}).encode() + b"\n")
            batch: list[TreeEntry] = []
            for entry in entries:
                batch.append(entry)
                count += 1
                if len(batch) >= _BATCH:
                    out.write(json.dumps(batch).encode() + b"\n")
                    batch.clear()
            if batch:
                out.write(json.dumps(batch).encode() + b"\n")
        os.replace(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        return count

    def header(self) -> dict[str, object]:
        with self._open() as f:
            return self._header(f)

    def _open(self) -> gzip.GzipFile:
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            raise InvalidInput(
                f"{self.path}: no record of an unpacked image (was the directory made by "
                "ocistore unpack?)"
            ) from None
        except OSError as e:
            raise InvalidInput(f"{self.path}: {e.strerror}") from None
        raw = open(fd, "rb")  # noqa: SIM115 (closed with the GzipFile)
        f = gzip.GzipFile(fileobj=raw, mode="rb")
        f.myfileobj = raw  # type: ignore[assignment]  # (closed with it, as when it opens one)
        return f

    def _header(self, f: gzip.GzipFile) -> dict[str, object]:
        try:
            header = json.loads(f.readline(1 << 20))
        except (OSError, EOFError, ValueError):
            raise InvalidInput(f"{self.path}: damaged record") from None
        if not isinstance(header, dict) or header.get("version") != RECORD_VERSION:
            raise InvalidInput(f"{self.path}: not a record this ocistore writes")
        return header

    def entries(self) -> Iterator[TreeEntry]:
        with self._open() as f:
            self._header(f)
            try:
                for line in f:
                    for values in json.loads(line):
                        yield TreeEntry(*values)
            except (OSError, EOFError, ValueError, TypeError):
                raise InvalidInput(f"{self.path}: damaged record") from None


# -- comparing -----------------------------------------------------------------------


class Change(NamedTuple):
    """One path that differs: ``A`` added, ``C`` changed, ``D`` deleted (as docker
    diff prints them), or ``P``, a directory that did not; ``entry`` is the tree's (the
    record's for ``D``), and ``fd``/``name`` where it is (``-1`` for ``D``)."""

    kind: str
    entry: TreeEntry
    fd: int
    name: str


def changes(root: Root, record: Iterator[TreeEntry], *, rootless: bool) -> Iterator[Change]:
    """The differences between the tree now and its record, in the walk's order. A
    deleted directory is one ``D``, not one a path below it. A directory that did not
    change is a ``P`` (a change below it may need it: a layer holds the directories
    above what it changes, as Docker's do)."""
    old = next(record, None)
    deleted_dir: tuple[bytes, ...] | None = None
    for entry, fd, name in walk(root, rootless=rootless):
        key = path_key(entry.path)
        while old is not None and path_key(old.path) < key:
            deleted_dir = yield from _deleted(old, deleted_dir)
            old = next(record, None)
        if old is None or path_key(old.path) != key:
            yield Change("A", entry, fd, name)
            continue
        previous, old = old, next(record, None)
        if entry.untouched(previous) or _same_content(entry, previous, fd, name):
            if entry.kind == stat.S_IFDIR:
                yield Change("P", entry, fd, name)
            continue
        yield Change("C", entry, fd, name)
    while old is not None:
        deleted_dir = yield from _deleted(old, deleted_dir)
        old = next(record, None)


def _same_content(entry: TreeEntry, previous: TreeEntry, fd: int, name: str) -> bool:
    """Only the ctime or the inode moved, and what the layer would hold is the same: a
    regular file's content (its digest), a directory's metadata (a child's change moved
    its ctime)."""
    if not entry.same_meta(previous) or entry.mtime_ns != previous.mtime_ns:
        return False
    if entry.kind == stat.S_IFDIR:
        return True
    if entry.kind == stat.S_IFREG:
        return (
            bool(previous.digest)
            and entry.size == previous.size
            and file_digest(fd, name) == previous.digest
        )
    return entry.kind != stat.S_IFREG and entry.link == previous.link


def _deleted(
    old: TreeEntry, deleted_dir: tuple[bytes, ...] | None
) -> Generator[Change, None, tuple[bytes, ...] | None]:
    """A ``D`` for ``old`` unless it is below the directory deleted last; the deleted
    directory to look at next."""
    key = path_key(old.path)
    if deleted_dir is not None and key[: len(deleted_dir)] == deleted_dir:
        return deleted_dir  # below a directory already deleted
    yield Change("D", old, -1, "")
    return key if old.kind == stat.S_IFDIR else deleted_dir
