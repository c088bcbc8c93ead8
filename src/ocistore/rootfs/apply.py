"""Layers applied to a directory, in order, as a container runtime's root file system.

:class:`Applier` reads each layer's tar once, with the one header scanner
(:class:`~ocistore.spec.tarscan.TarScanner` in its detailed mode, its data handed over
as it goes by), and makes each member through :class:`~.fsroot.Root`, so nothing it
writes is outside the root (see there). The rules:

* A member replaces what is at its path (a directory over a directory is kept and only
  takes the new metadata); a regular file is always a new inode, so a hard link to the
  old one keeps the old content. Missing parents are made (0755).
* OCI whiteouts: ``.wh.NAME`` removes NAME from the lower layers but not what this layer
  wrote; ``.wh..wh..opq`` empties its directory of what the lower layers put there.
  ``.wh.``, ``.wh..`` and ``.wh...`` are invalid. AUFS's ``.wh..wh.*`` metadata is
  passed over, as Docker passes it.
* A hard link's member gives its owner, mode and times to the file it shares (as
  Docker's ``pkg/archive`` does), set on the new name without following it.
* Directories take their mode, owner and times after every layer is applied (their
  children change their mtime); until then they stay writable by their owner.
* Owners as root; ``rootless``, every file is the caller's and the image's owner is kept
  in the ``user.rootlesscontainers`` xattr (the rootless-containers protobuf, left out for
  root: umoci's convention), and device nodes are skipped with a warning.
* Extended attributes from pax ``SCHILY.xattr.*`` records where the file system and the
  caller allow them, but never ``security.*`` nor ``trusted.overlay.*`` (an image must
  not grant file capabilities or forge overlayfs's whiteouts); not on symlinks.

What is refused (the whole verb fails, naming the layer and the member; the same in
``unpack``, ``export`` and ``diff``): a name that climbs out with ``..``, a member that
would replace the root with something not a directory, a hard link to a path outside,
to nothing, or to a directory, an invalid whiteout, a path through something not a
directory, a symlink chain longer than 40 links, a GNU sparse file, an unknown member
type, and more than :data:`~ocistore.spec.limits.MAX_LAYER_ENTRIES` members. A symlink
whose target is outside is not refused: it is resolved inside the root, as a container
sees it. What a layer can write is bounded by its tar's size, which its record holds and
its reader checks.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from ..errors import OcistoreError
from ..spec.limits import MAX_LAYER_ENTRIES
from ..spec.tarscan import Entry, Meta, TarScanner
from .fsroot import Root, UnsafeEntry, clean_name, remove_tree
from .tree import ROOTLESS_XATTR, encode_owner

__all__ = ["Applier", "Member", "check_members", "classify", "whiteout_target", "xattr_allowed"]

WHITEOUT: Final = ".wh."
OPAQUE: Final = ".wh..wh..opq"
AUFS_META: Final = ".wh..wh."
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR: Final = frozenset((b"0", b"\x00", b"7"))


def _umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``); all bits
    set when it cannot be read, so that every mode is set with ``fchmod``."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def xattr_allowed(name: str, rootless: bool) -> bool:
    """Whether an image's xattr is set on what it unpacks (see the module's text)."""
    if name.startswith("security.") or name.startswith("trusted.overlay."):
        return False
    if rootless:
        return name.startswith("user.") and name != ROOTLESS_XATTR
    return True


def whiteout_target(base: str) -> str | None:
    """The name a ``.wh.`` member removes, ``None`` if the whiteout is invalid."""
    target = base[len(WHITEOUT) :]
    if not target or target in (".", ".."):
        return None
    return target


_KNOWN: Final = _REGULAR | {b"1", b"2", b"3", b"4", b"5", b"6"}


class Member(NamedTuple):
    """A layer's member as every verb takes it (:func:`classify`)."""

    #: The cleaned path's components; empty for the root directory.
    parts: list[str]
    #: For a whiteout, :data:`OPAQUE` or the name it removes; else ``None``.
    whiteout: str | None
    #: A hard link's cleaned target.
    link: list[str] | None


def check_members(what: str, count: int) -> None:
    """Refuse a layer once it has more than :data:`MAX_LAYER_ENTRIES` members."""
    if count > MAX_LAYER_ENTRIES:
        raise UnsafeEntry(
            f"{what}: more than {MAX_LAYER_ENTRIES} members, over the limit of {MAX_LAYER_ENTRIES}"
        )


def classify(what: str, entry: Entry) -> Member | None:
    """What a member is, the refusals of the module's text applied (the same in every
    verb); ``None`` for AUFS's metadata, passed over as Docker passes it."""

    def refuse(why: str) -> UnsafeEntry:
        return UnsafeEntry(f"{what}: member {entry.name!r}: {why}")

    parts = clean_name(entry.name)
    if parts is None:
        raise refuse("its name climbs out of the root with '..'")
    kind = entry.type
    if not parts:
        if kind != b"5":
            raise refuse("it would replace the root directory")
        return Member(parts, None, None)
    base = parts[-1]
    if (base.startswith(AUFS_META) and base != OPAQUE) or parts[0].startswith(AUFS_META):
        return None
    if base.startswith(WHITEOUT):
        target = OPAQUE if base == OPAQUE else whiteout_target(base)
        if target is None:
            raise refuse("an invalid whiteout (it names no file)")
        return Member(parts, target, None)
    if kind == b"S":
        raise refuse("a GNU sparse file (not supported)")
    if kind not in _KNOWN:
        raise refuse(f"unknown member type {kind.decode('latin-1')!r}")
    link = None
    if kind == b"1":
        link = clean_name(entry.linkname)
        if link is None:
            raise refuse(f"a hard link to {entry.linkname!r}, outside the root")
        if not link:
            raise refuse("a hard link to the root directory")
    return Member(parts, None, link)


class Applier:
    """Applies layers to a :class:`Root`, one after the other, then :meth:`finish`."""

    def __init__(
        self, root: Root, *, rootless: bool = False, warn: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.rootless = rootless
        self._privileged = os.geteuid() == 0
        self._chown = not rootless and self._privileged
        self._warn = warn or (lambda message: None)
        #: Directories' metadata, set when the tree is walked at the end (by device and
        #: inode: a directory removed since is not given another's), and the root's.
        self._dirs: dict[tuple[int, int], Meta] = {}
        self._root_meta: Meta | None = None
        #: The file whose data is being written: its descriptor and member.
        self._fd = -1
        self._file: Entry | None = None
        self._file_mode_set = False
        self._umask = _umask()
        self._upper: set[int] = set()
        self._members = 0
        self._what = ""
        #: A rootless unpack's owners other than 0:0, by device and inode (what the
        #: xattrs say, for the record).
        self.owners: dict[tuple[int, int], tuple[int, int]] = {}
        #: Device nodes a rootless unpack skipped, for one warning at the end.
        self.skipped_devices: list[str] = []

    # -- layers -----------------------------------------------------------------------

    def apply(self, what: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Apply one layer's tar, given in pieces; ``what`` names it in errors."""
        self._what = what
        self._upper = set()
        self._members = 0
        scanner = TarScanner(what, self._entry, layer=True, details=True, on_data=self._data)
        try:
            for piece in chunks:
                if not scanner.ended:
                    scanner.feed(piece)
            scanner.finish()
            self._end_file()
        except OSError as e:  # writing a member's data (a full disk)
            current = f"member {self._file.name!r}: " if self._file is not None else ""
            raise OcistoreError(f"{what}: {current}{e.strerror or e}") from None
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._upper = set()

    def dir_hook(
        self, fd: int, info: os.stat_result
    ) -> tuple[os.stat_result, int, Callable[[], None] | None]:
        """A :data:`~.tree.DirHook` for the walk that ends an unpack: sets a directory's
        mode, owner and times (its children are all in: their changes moved its mtime).
        A mode that would keep the walk out of it (rootless) is set once the walk is
        out; what the record keeps is the final mode."""
        key = (info.st_dev, info.st_ino)
        self.owners.pop(key, None)  # (an inode a removed file had)
        meta = self._dirs.pop(key, None)
        if meta is None:
            return info, stat.S_IMODE(info.st_mode), None
        final = meta.mode
        keep_open = not self._privileged and final & 0o700 != 0o700
        self._set_meta(fd, meta._replace(mode=final | 0o700) if keep_open else meta)
        after = (lambda: os.fchmod(fd, final)) if keep_open else None
        return os.fstat(fd), final, after

    def finish(self) -> None:
        """The root directory's own metadata (a ``.`` member's), and the warnings."""
        if self._root_meta is not None:
            self._set_meta(self.root.fd, self._root_meta)
        if self.skipped_devices:
            shown = ", ".join(self.skipped_devices[:3])
            more = len(self.skipped_devices) - 3
            self._warn(
                f"skipped {len(self.skipped_devices)} device node(s) a rootless unpack "
                f"cannot make: {shown}" + (f" and {more} more" if more > 0 else "")
            )

    # -- members ----------------------------------------------------------------------

    def _refuse(self, entry: Entry, why: str) -> UnsafeEntry:
        return UnsafeEntry(f"{self._what}: member {entry.name!r}: {why}")

    def _entry(self, entry: Entry) -> None:
        self._end_file()
        self._members += 1
        check_members(self._what, self._members)
        member = classify(self._what, entry)
        if member is None:
            return
        try:
            self._member(entry, member)
        except OcistoreError:
            raise
        except OSError as e:
            raise OcistoreError(f"{self._what}: member {entry.name!r}: {e.strerror or e}") from None

    def _member(self, entry: Entry, member: Member) -> None:
        parts = member.parts
        kind = entry.type
        if not parts:
            self._root_meta = entry.meta  # (the root's type is never changed)
            return
        base = parts[-1]
        root = self.root
        what = f"{self._what}: member {entry.name!r}"
        if member.whiteout is not None:
            self._whiteout(parts, member.whiteout, what)
            return
        parent = root.walk(parts[:-1], create=True, what=what)
        assert parent is not None
        path = "/".join([*root.current, base])
        self._upper.add(hash(path))
        meta = entry.meta
        assert meta is not None
        if kind in _REGULAR:
            # Made with its mode when the umask leaves it whole (no fchmod then).
            exact = not meta.mode & (0o7000 | self._umask)
            self._fd = self._create(parent, base, meta.mode if exact else 0o600)
            self._file_mode_set = exact
            self._file = entry
            if not entry.size:
                self._end_file()
        elif kind == b"5":
            try:
                os.mkdir(base, 0o700, dir_fd=parent)
            except FileExistsError:
                existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(existing.st_mode):
                    self._replace(parent, base, existing)
                    os.mkdir(base, 0o700, dir_fd=parent)
            info = os.stat(base, dir_fd=parent, follow_symlinks=False)
            self._dirs[(info.st_dev, info.st_ino)] = meta
        elif kind == b"2":
            try:
                os.symlink(entry.linkname, base, dir_fd=parent)
            except FileExistsError:
                self._replace(parent, base)
                os.symlink(entry.linkname, base, dir_fd=parent)
            if self._chown:
                os.chown(base, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(
                base,
                ns=(meta.mtime_ns, meta.mtime_ns),
                dir_fd=parent,
                follow_symlinks=False,
            )
        elif kind == b"1":
            assert member.link is not None
            self._hardlink(entry, parts, member.link, what)
        elif kind in (b"3", b"4", b"6"):
            if kind != b"6" and not self._chown:
                self.skipped_devices.append(entry.name)
                return
            self._replace(parent, base)
            if kind == b"6":
                os.mkfifo(base, 0o600, dir_fd=parent)
            else:
                kind_bits = stat.S_IFCHR if kind == b"3" else stat.S_IFBLK
                device = os.makedev(meta.devmajor, meta.devminor)
                os.mknod(base, kind_bits | 0o600, device, dir_fd=parent)
            self._set_node_meta(parent, base, meta)

    def _forget(self, dev: int, ino: int) -> None:
        """A directory is removed: its metadata must not go to one that takes its inode."""
        self._dirs.pop((dev, ino), None)

    def _create(self, parent: int, base: str, mode: int) -> int:
        """A new regular file at ``base`` (what was there removed), open for writing."""
        try:
            return os.open(base, _FILE_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            self._replace(parent, base)
            return os.open(base, _FILE_FLAGS, mode, dir_fd=parent)

    def _replace(self, parent: int, base: str, existing: os.stat_result | None = None) -> None:
        """Remove what is at ``base`` (a directory with what is below it)."""
        if existing is None:
            existing = self.root.lstat(parent, base)
            if existing is None:
                return
        if stat.S_ISDIR(existing.st_mode):
            remove_tree(parent, base, self._forget)
        else:
            os.unlink(base, dir_fd=parent)

    def _whiteout(self, parts: list[str], target: str, what: str) -> None:
        root = self.root
        if target == OPAQUE:
            parent = root.walk(parts[:-1], create=False, what=what)
            if parent is None:
                return
            prefix = "/".join(root.current)
            prefix = prefix + "/" if prefix else ""
            for child in os.listdir(parent):
                if hash(prefix + child) not in self._upper:
                    remove_tree(parent, child, self._forget)
            return
        parent = root.walk(parts[:-1], create=False, what=what)
        if parent is None:
            return
        path = "/".join([*root.current, target])
        if hash(path) in self._upper:
            return  # what this layer wrote stays
        existing = root.lstat(parent, target)
        if existing is not None:
            self._replace(parent, target, existing)

    def _hardlink(self, entry: Entry, parts: list[str], target: list[str], what: str) -> None:
        root = self.root
        source_dir = root.walk(target[:-1], create=False, what=what)
        info = None if source_dir is None else root.lstat(source_dir, target[-1])
        if source_dir is None or info is None:
            raise self._refuse(entry, f"a hard link to {entry.linkname!r}, which does not exist")
        if stat.S_ISDIR(info.st_mode):
            raise self._refuse(entry, f"a hard link to {entry.linkname!r}, a directory")
        source = os.dup(source_dir)
        try:
            parent = root.walk(parts[:-1], create=True, what=what)
            assert parent is not None
            existing = root.lstat(parent, parts[-1])
            if existing is not None:
                if (existing.st_dev, existing.st_ino) == (info.st_dev, info.st_ino):
                    return  # already that file
                self._replace(parent, parts[-1], existing)
            os.link(
                target[-1],
                parts[-1],
                src_dir_fd=source,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
            if not stat.S_ISLNK(info.st_mode):
                # The member's owner, mode and times go to the file it shares, as
                # Docker applies them (on the name, never followed).
                assert entry.meta is not None
                self._set_node_meta(parent, parts[-1], entry.meta)
        finally:
            os.close(source)

    # -- data and metadata ------------------------------------------------------------

    def _data(self, piece: memoryview) -> None:
        fd = self._fd
        if fd < 0:
            return  # the data of a member that is not written (a whiteout with data)
        while piece:
            n = os.write(fd, piece)
            piece = piece[n:]

    def _end_file(self) -> None:
        entry = self._file
        if entry is None:
            return
        self._file = None
        fd, self._fd = self._fd, -1
        try:
            assert entry.meta is not None
            self._set_meta(fd, entry.meta, mode_set=self._file_mode_set)
        except OSError as e:
            raise OcistoreError(f"{self._what}: member {entry.name!r}: {e.strerror or e}") from None
        finally:
            os.close(fd)

    def _set_meta(self, fd: int, meta: Meta, *, mode_set: bool = False) -> None:
        """Owner, xattrs, mode (unless ``mode_set``: made with it) and times of an open
        file or directory, in that order (a chown clears setuid bits)."""
        if self._chown:
            os.fchown(fd, meta.uid, meta.gid)
        if meta.xattrs:
            for name, value in meta.xattrs.items():
                if xattr_allowed(name, self.rootless):
                    self._setxattr(fd, name, value)
        owned = self.rootless and (meta.uid or meta.gid)
        if owned and self._setxattr(fd, ROOTLESS_XATTR, encode_owner(meta.uid, meta.gid)):
            info = os.fstat(fd)
            self.owners[(info.st_dev, info.st_ino)] = (meta.uid, meta.gid)
        if not mode_set:
            os.fchmod(fd, meta.mode)
        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))

    def _setxattr(self, fd: int, name: str, value: bytes) -> bool:
        """Whether the xattr was set (a file system or a caller may not allow it)."""
        try:
            os.setxattr(fd, name, value)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL):
                raise
            return False
        return True

    def _set_node_meta(self, parent: int, base: str, meta: Meta) -> None:
        """A fifo's, device's or hard link's owner, mode and times, by its name in
        ``parent``, not followed (opening it could block or reach a device)."""
        if self._chown:
            os.chown(base, meta.uid, meta.gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(base, meta.mode, dir_fd=parent, follow_symlinks=False)
        os.utime(base, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=parent, follow_symlinks=False)
