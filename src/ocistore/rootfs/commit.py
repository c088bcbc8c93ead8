"""``commit`` and ``append``: new images made of an image's layers and one more.

``commit DIR`` compares ``DIR/rootfs`` with the record ``unpack`` kept
(:func:`~.tree.changes`) and writes one layer of what differs, as ``umoci repack``
does: every path added or changed, with its mode, owner (a rootless tree's
``user.rootlesscontainers``), times, xattrs and content, a hard link where two paths of
the layer are one file, and a ``.wh.NAME`` for what was deleted (one for a deleted
directory), and the directories above a change, as Docker's layers hold them (so that
applying the layer keeps their times). A tree that did not change adds no layer, only a
history entry marked ``empty_layer``, as ``umoci repack`` and ``docker commit`` do.
``append`` adds
tarballs as they are (plain, gzip or zstd; ``crane append``).

Both make the new config from the base image's: its ``rootfs.diff_ids`` and
``history`` grow by the new layers, ``created`` is now, and ``--change`` instructions
apply to its ``config`` as ``docker commit --change`` does. The image enters the store
by the one way in; the base image is left as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound
from ..formats.tarwriter import END_OF_ARCHIVE, member_header
from ..progress import Progress
from ..spec.digest import DiffID
from ..spec.gotime import now_rfc3339nano
from ..spec.reference import Reference, parse_tagged
from .tree import ROOTLESS_XATTR, Change, changes
from .unpack import open_bundle, root_of

if TYPE_CHECKING:
    from ..store.images import Image
    from ..store.ingest import LayerSource
    from ..store.store import Store

__all__ = ["append", "commit", "write_changes"]

_BLOCK = 512
_READ = 1 << 20
_TYPES = {
    stat.S_IFREG: b"0",
    stat.S_IFDIR: b"5",
    stat.S_IFLNK: b"2",
    stat.S_IFCHR: b"3",
    stat.S_IFBLK: b"4",
    stat.S_IFIFO: b"6",
}


def _xattrs(fd: int, name: str, rootless: bool) -> dict[str, bytes] | None:
    where = f"/proc/self/fd/{fd}/{name}"
    try:
        names = os.listxattr(where, follow_symlinks=False)
    except OSError:
        return None
    out = {}
    for key in names:
        if rootless and key == ROOTLESS_XATTR:
            continue
        with contextlib.suppress(OSError):
            out[key] = os.getxattr(where, key, follow_symlinks=False)
    return out or None


def _whiteout(path: str) -> str:
    parent, _, base = path.rpartition("/")
    return f"{parent}/.wh.{base}" if parent else f".wh.{base}"


class _Buffered:
    """Small writes gathered into large ones."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= _READ:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._out.write(self._buf)
            self._buf = bytearray()

    def fileno(self) -> int | None:
        """The descriptor of a regular file written at its end, else ``None``."""
        try:
            fd = self._out.fileno()
        except (OSError, ValueError, AttributeError):
            return None
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def write_changes(found: Iterator[Change], stream: IO[bytes], rootless: bool, what: str) -> int:
    """Write a layer's tar of ``found`` to ``stream``; how many members it holds."""
    out = _Buffered(stream)
    count = 0
    links: dict[tuple[int, int], str] = {}  # (device, inode) → the layer's first path
    # The directories above the walk's place, by depth: a change below one that did not
    # change writes it first (unless written), so that applying the layer keeps its
    # times, as Docker's layers hold every directory above a change.
    above: list[Change | None] = []
    for change in found:
        entry = change.entry
        depth = entry.path.count("/")
        if change.kind == "P":
            del above[depth:]
            above.append(change)
            continue
        if change.kind == "D":
            count += 1
            out.write(member_header(_whiteout(entry.path), b"0", mode=0o644))
            continue
        for i, parent in enumerate(above[:depth]):
            if parent is not None:
                _write_member(parent, out, rootless, what, links)
                above[i] = None
        if entry.kind == stat.S_IFDIR:
            del above[depth:]
            above.append(None)
        count += 1
        _write_member(change, out, rootless, what, links)
    out.write(END_OF_ARCHIVE)
    out.flush()
    return count


def _write_member(
    change: Change,
    out: _Buffered,
    rootless: bool,
    what: str,
    links: dict[tuple[int, int], str],
) -> None:
    """One path of the tree as a member of the layer."""
    entry = change.entry
    kind = _TYPES.get(entry.kind)
    if kind is None:
        return  # a socket: no tar holds one (docker commit leaves them out too)
    fd, name = change.fd, change.name
    common: dict[str, Any] = {
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
    }
    if kind == b"0" and entry.nlink > 1:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
        first = links.setdefault((info.st_dev, info.st_ino), entry.path)
        if first != entry.path:
            out.write(member_header(entry.path, b"1", link=first, **common))
            return
    xattrs = _xattrs(fd, name, rootless) if kind in (b"0", b"5") else None
    if kind in (b"3", b"4"):
        major, minor = (int(n) for n in entry.link.split(","))
        out.write(member_header(entry.path, kind, devmajor=major, devminor=minor, **common))
    elif kind == b"2":
        out.write(member_header(entry.path, kind, link=entry.link, **common))
    elif kind == b"0":
        out.write(member_header(entry.path, kind, size=entry.size, xattrs=xattrs, **common))
        _copy_file(fd, name, entry.size, out, f"{what}: {entry.path}")
    else:
        out.write(member_header(entry.path, kind, xattrs=xattrs, **common))


def _copy_file(parent: int, name: str, size: int, out: _Buffered, what: str) -> None:
    """A file's content into the layer: moved by the kernel (``copy_file_range``) when
    the layer is a file, else read and written."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent)
    try:
        left = size
        target = out.fileno()
        if target is not None and left:
            out.flush()
            with contextlib.suppress(OSError):  # (another file system, or none of it)
                while left and (n := os.copy_file_range(fd, target, min(left, 1 << 30))):
                    left -= n
        while left:
            chunk = os.read(fd, min(left, _READ))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
        if left or os.read(fd, 1):
            raise InvalidInput(f"{what}: the file changed while it was committed")
    finally:
        os.close(fd)
    out.write(bytes(-size % _BLOCK))


def new_config(
    base: Image,
    created_by: Sequence[str],
    *,
    message: str | None,
    author: str | None,
    changes: Sequence[str],
    empty: bool = False,
) -> Callable[[Sequence[DiffID]], bytes]:
    """The :data:`~ocistore.store.ingest.ConfigMaker` of an image made of ``base``'s
    layers and one more a ``created_by`` (with ``empty``, none: the history entry says
    ``empty_layer``); the changes are checked now, before anything is read."""
    from ..spec.legacy.changes import build_from_config

    data = copy.deepcopy(base.config.data)
    if changes:
        data["config"] = build_from_config(changes, data.get("config") or {})

    def make(diff_ids: Sequence[DiffID]) -> bytes:
        created = now_rfc3339nano()
        config = copy.deepcopy(data)
        config["created"] = created
        if author:
            config["author"] = author
        config["rootfs"] = {"type": "layers", "diff_ids": [str(d) for d in diff_ids]}
        history = list(config.get("history") or [])
        for line in created_by:
            item: dict[str, Any] = {"created": created, "created_by": line}
            if empty:
                item["empty_layer"] = True
            if author:
                item["author"] = author
            if message:
                item["comment"] = message
            history.append(item)
        config["history"] = history
        return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()

    return make


def _base_layers(store: Store, image: Image) -> list[LayerSource]:
    """The base image's layers as sources the store has: none of them is read."""
    from ..store.ingest import LayerSource

    sources = []
    for layer in store.layers_of(image):
        digest = layer.blob.digest
        sources.append(
            LayerSource(
                open=lambda digest=digest: store.open_blob(digest),  # type: ignore[misc]
                what=f"layer {layer.diff_id}",
                blob_digest=digest,
                blob_size=layer.blob.size,
                diff_id=layer.diff_id,
            )
        )
    return sources


def _add(
    store: Store,
    base: Image,
    new_layers: list[LayerSource],
    make: Callable[[Sequence[DiffID]], bytes],
    reference: str | None,
    what: str,
    progress: Progress | None,
) -> str:
    from ..store.ingest import ImageSource

    tags: list[Reference] = [parse_tagged(reference)] if reference else []
    source = ImageSource(
        make, what, _base_layers(store, base) + new_layers, tags, tagged_now=bool(tags)
    )
    (loaded,) = store.add_images([source], progress)
    return str(loaded.id)


def commit(
    store: Store,
    directory: str,
    reference: str | None = None,
    *,
    base: str | None = None,
    message: str | None = None,
    author: str | None = None,
    changes_: Sequence[str] = (),
    progress: Progress | None = None,
) -> str:
    """Make a new image of ``directory``'s changes since it was unpacked (see the
    module's text); its ID."""
    if reference:
        parse_tagged(reference)
    dir_fd, record, header = open_bundle(directory)
    try:
        unpacked = str(header.get("image", ""))
        rootless = bool(header.get("rootless"))
        try:
            image = store.image(unpacked)
        except NotFound:
            raise NotFound(
                f"{directory} was unpacked from image {unpacked}, which is no longer in the store"
            ) from None
        if base is not None and store.image(base).id != image.id:
            raise InvalidInput(f"{directory} was unpacked from image {image.id}, not from {base}")
        settings: dict[str, Any] = {"message": message, "author": author, "changes": changes_}
        new_config(image, ["ocistore commit"], **settings)  # (the changes checked first)
        from ..store.ingest import LayerSource

        with root_of(dir_fd, directory) as root:
            tmp = store.scratch(".tar")
            try:
                out = tmp.file
                count = write_changes(
                    changes(root, record.entries(), rootless=rootless),
                    out,
                    rootless,
                    directory,
                )
                out.close()
                what = f"the changes in {directory}"
                if not count:  # as umoci repack and docker commit: no layer, a history entry
                    make = new_config(image, ["ocistore commit"], empty=True, **settings)
                    return _add(store, image, [], make, reference, what, progress)
                make = new_config(image, ["ocistore commit"], **settings)
                layer = LayerSource(
                    open=lambda: open(tmp.path, "rb"),  # noqa: SIM115 (the ingest closes it)
                    what=what,
                    read_size=os.stat(tmp.path).st_size,
                )
                return _add(store, image, [layer], make, reference, what, progress)
            finally:
                tmp.discard()
    finally:
        os.close(dir_fd)


def append(
    store: Store,
    name: str,
    tarballs: Sequence[str],
    reference: str | None = None,
    *,
    message: str | None = None,
    author: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Make a new image of ``name``'s layers and the ``tarballs`` (plain, gzip or
    zstd), in order; its ID."""
    from ..store.ingest import LayerSource

    if reference:
        parse_tagged(reference)
    if not tarballs:
        raise InvalidInput("append: no layer tarball given")
    image = store.image(name)
    layers = []
    for path in tarballs:
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise InvalidInput(f"{path}: {e.strerror}") from None
        layers.append(
            LayerSource(
                open=lambda path=path: open(path, "rb"),  # type: ignore[misc]  # noqa: SIM115
                what=f"tarball {path}",
                read_size=size,
            )
        )
    make = new_config(
        image,
        [f"ocistore append {os.path.basename(p)}" for p in tarballs],
        message=message,
        author=author,
        changes=(),
    )
    return _add(
        store, image, layers, make, reference, f"{name} with {len(tarballs)} layers", progress
    )
