"""A directory tree worked on by file descriptor, every path resolved inside it.

:class:`Root` is the one place that touches a root file system: ``unpack`` applies
layers through it, ``commit`` and ``diff`` read a tree through :mod:`.tree`. Every path
is walked one component at a time from a directory file descriptor of the root, with
``O_NOFOLLOW``: a symlink met on the way is read and resolved *inside* the root, as if
the root were ``/`` (an absolute target starts again at the root, ``..`` stops at it),
so no name and no symlink in a layer can reach a file outside. The last component of a
path is never followed: a symlink there is replaced, never written through. Modes,
owners and times are set on file descriptors (or with ``AT_SYMLINK_NOFOLLOW`` on the
one name just made), and hard links are made with ``linkat`` without following.

The walk keeps the file descriptors of the directories of the last path (a tar's
members come in directory order, so most walks reuse all of them). What it keeps is a
real path, symlinks resolved, and it is only ever changed below its deepest directory:
an entry replaced or removed is always a child of the directory its walk ended in, so
nothing kept can go stale (the fault of a cache of resolved *names*, CVE-2025-47290).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import Final

from ..errors import InvalidInput
from ..spec.limits import MAX_PATH_DEPTH, MAX_SYMLINK_HOPS

__all__ = ["DIR_FLAGS", "Root", "UnsafeEntry", "clean_name", "remove_tree"]

#: How a directory of the tree is opened: never through a symlink.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeEntry(InvalidInput):
    """A member of a layer that would reach outside the root, or that cannot be applied
    (a hard link to nothing, an invalid whiteout): the whole verb is refused."""


def clean_name(name: str) -> list[str] | None:
    """A member's name as components below the root, ``.`` and ``..`` applied as Go's
    ``filepath.Clean`` applies them: an absolute name is taken from the root (as Docker
    takes it), where ``..`` stays at the root; ``None`` if a relative name's ``..``
    would climb above it (Docker refuses it as a breakout)."""
    parts: list[str] = []
    rooted = name.startswith("/")
    for part in name.split("/"):
        if part == "..":
            if parts:
                parts.pop()
            elif not rooted:
                return None
        elif part and part != ".":
            parts.append(part)
    return parts


def remove_tree(parent: int, name: str, forget: Callable[[int, int], object] | None = None) -> None:
    """Remove ``name`` in the directory ``parent`` and, if it is a directory, everything
    below it, by file descriptor (never following a symlink), however deep; ``forget``
    is told the device and inode of each directory removed."""
    try:
        os.unlink(name, dir_fd=parent)
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # (unlink of a directory is EISDIR on Linux, EPERM elsewhere)
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise
    # Depth first without recursion: (the directory's descriptor, its name in the one
    # above, the names in it not yet removed).
    stack: list[tuple[int, str, list[str]]] = []

    def enter(above: int, child: str) -> None:
        fd = os.open(child, DIR_FLAGS, dir_fd=above)
        try:
            if forget is not None:
                info = os.fstat(fd)
                forget(info.st_dev, info.st_ino)
            try:
                names = os.listdir(fd)
            except PermissionError:  # a directory the image made unreadable (rootless)
                os.fchmod(fd, 0o700)
                names = os.listdir(fd)
        except BaseException:
            os.close(fd)
            raise
        stack.append((fd, child, names))

    try:
        enter(parent, name)
        while stack:
            fd, current, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                os.rmdir(current, dir_fd=stack[-1][0] if stack else parent)
                continue
            child = names.pop()
            try:
                os.unlink(child, dir_fd=fd)
            except IsADirectoryError:
                enter(fd, child)
            except PermissionError:
                if not stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise
                enter(fd, child)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


class Root:
    """An open root directory: walks paths inside it (see the module's text)."""

    def __init__(self, fd: int, where: str) -> None:
        #: The root's file descriptor (owned: :meth:`close` closes it).
        self.fd = fd
        #: What the root is called in messages (the directory's path).
        self.where = where
        #: The directories of the last walk below the root: (name, file descriptor).
        self._stack: list[tuple[str, int]] = []

    @classmethod
    def open(cls, path: str) -> Root:
        return cls(os.open(path, DIR_FLAGS), path)

    def close(self) -> None:
        self._truncate(0)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- walking ----------------------------------------------------------------------

    def _truncate(self, depth: int) -> None:
        stack = self._stack
        while len(stack) > depth:
            os.close(stack.pop()[1])

    @property
    def current(self) -> list[str]:
        """The real path (components below the root) of the directory the last walk
        ended in."""
        return [name for name, _ in self._stack]

    def walk(self, parts: list[str], *, create: bool = False, what: str = "") -> int | None:
        """The directory ``parts`` names, symlinks resolved inside the root: its file
        descriptor (owned by the walk: valid until the next one), or ``None`` if a
        component does not exist (``create`` makes missing directories, mode 0755).
        :class:`UnsafeEntry` if a component is not a directory or symlinks loop."""
        stack = self._stack
        todo = list(reversed(parts))
        depth = 0
        hops = 0
        while todo:
            name = todo.pop()
            if name == "..":
                depth = max(depth - 1, 0)
                continue
            if not name or name == ".":
                continue
            if depth < len(stack) and stack[depth][0] == name:
                depth += 1
                continue
            if depth >= MAX_PATH_DEPTH:
                raise UnsafeEntry(
                    f"{what}: a path more than {MAX_PATH_DEPTH} directories deep, over the "
                    f"limit of {MAX_PATH_DEPTH}"
                )
            self._truncate(depth)
            parent = stack[-1][1] if stack else self.fd
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    pass  # (a dangling symlink: resolved below)
                else:
                    fd = os.open(name, DIR_FLAGS, dir_fd=parent)
                    stack.append((name, fd))
                    depth += 1
                    continue
                fd = -1
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                fd = -1
            if fd >= 0:
                stack.append((name, fd))
                depth += 1
                continue
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISLNK(info.st_mode):
                shown = "/".join([*self.current, name])
                raise UnsafeEntry(f"{what}: {shown!r} is not a directory")
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise UnsafeEntry(
                    f"{what}: more than {MAX_SYMLINK_HOPS} symlinks on the way, "
                    f"over the limit of {MAX_SYMLINK_HOPS}"
                )
            target = os.readlink(name, dir_fd=parent)
            if target.startswith("/"):
                depth = 0
            todo.extend(reversed(target.split("/")))
        self._truncate(depth)
        return stack[-1][1] if stack else self.fd

    def lstat(self, parent: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def children(self, fd: int) -> Iterator[str]:
        """The names in the directory ``fd``, sorted as bytes (the order of the tree)."""
        names = os.listdir(fd)
        names.sort(key=os.fsencode)
        return iter(names)
