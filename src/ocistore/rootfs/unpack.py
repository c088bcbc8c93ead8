"""``unpack``: an image's layers applied to a new directory, as an OCI runtime bundle.

``unpack IMAGE DIR`` makes ``DIR`` (or, with ``force``, uses it though it is not empty)
and in it, as ``umoci unpack`` does:

* ``rootfs/``: the image's file system, every layer applied in order
  (:mod:`.apply`);
* ``ocistore-unpack.json.gz``: the record of the tree as it was unpacked (:mod:`.tree`),
  which ``commit`` compares the tree with;
* with ``bundle``, ``config.json``: an OCI runtime config from the image's (:mod:`.bundle`).

Each regular file's content is hashed as it is written, for the record. A failure
removes the directory it made (a forced unpack into an existing one leaves what it had
written). The store is only read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from .. import parallel
from ..errors import InvalidInput, OcistoreError
from ..progress import SILENT, Progress, task_label
from ..spec.platform import Platform
from .apply import Applier
from .fsroot import DIR_FLAGS, Root, remove_tree
from .tree import Record, walk

if TYPE_CHECKING:
    from ..store.images import Image
    from ..store.layers import Layer
    from ..store.store import Store

__all__ = ["RECORD", "ROOTFS", "Unpacked", "open_bundle", "unpack"]

ROOTFS: Final = "rootfs"
RECORD: Final = "ocistore-unpack.json.gz"
RUNTIME_CONFIG: Final = "config.json"
UNPACKING: Final = "Unpacking"


class Unpacked(NamedTuple):
    image_id: str
    directory: str
    #: Paths in the tree the record holds.
    entries: int
    warnings: tuple[str, ...]


class _HashingApplier(Applier):
    """An :class:`Applier` that hashes each regular file's content as it writes it (on
    the same thread: handing each piece to another cost more in thread switches than
    the hashing it moved); :attr:`digests` holds every file's, by device and inode."""

    def __init__(self, root: Root, *, rootless: bool, warn: Callable[[str], None]) -> None:
        super().__init__(root, rootless=rootless, warn=warn)
        self.digests: dict[tuple[int, int], str] = {}
        self._hasher = hashlib.sha256()

    def _data(self, piece: memoryview) -> None:
        self._hasher.update(piece)
        super()._data(piece)

    def _end_file(self) -> None:
        if self._file is not None:
            info = os.fstat(self._fd)
            key = (info.st_dev, info.st_ino)
            self.owners.pop(key, None)  # (an inode a removed file had; set again if owned)
            self.digests[key] = "sha256:" + self._hasher.hexdigest()
            self._hasher = hashlib.sha256()
        super()._end_file()


def check_platform(image: Image, platform: Platform | None) -> None:
    if platform is None:
        return
    have = Platform(image.config.os, image.config.architecture, image.config.variant)
    if not platform.matches(have._asdict()):
        raise InvalidInput(f"image {image.id} is for {have}, not {platform}")


def _make_directory(directory: str, force: bool) -> tuple[int, bool]:
    """The directory's file descriptor, and whether it was made here."""
    try:
        os.mkdir(directory, 0o755)
        made = True
    except FileExistsError:
        made = False
    try:
        fd = os.open(directory, DIR_FLAGS)
    except OSError as e:
        raise InvalidInput(f"{directory}: not a directory ({e.strerror})") from None
    if not made and os.listdir(fd) and not force:
        os.close(fd)
        raise InvalidInput(f"{directory}: the directory is not empty (--force unpacks into it)")
    return fd, made


def _discard(directory: str) -> None:
    parent, name = os.path.split(os.path.abspath(directory))
    fd = os.open(parent, DIR_FLAGS)
    try:
        remove_tree(fd, name)
    except OSError:
        pass
    finally:
        os.close(fd)


def unpack(
    store: Store,
    name: str,
    directory: str,
    *,
    rootless: bool = False,
    force: bool = False,
    bundle: bool = False,
    platform: Platform | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> Unpacked:
    """Unpack the image ``name`` into ``directory`` (see the module's text)."""
    progress = progress or SILENT
    image = store.image(name)
    check_platform(image, platform)
    layers = store.layers_of(image)
    warnings: list[str] = []

    def warned(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    dir_fd, made = _make_directory(directory, force)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(ROOTFS, 0o755, dir_fd=dir_fd)
        with root_of(dir_fd, directory) as root:
            applier = _HashingApplier(root, rootless=rootless, warn=warned)
            apply_layers(store, layers, applier, progress)
            header: dict[str, Any] = {
                "image": str(image.id),
                "name": name,
                "rootless": rootless,
                "layers": [str(layer.diff_id) for layer in layers],
            }
            record = Record(dir_fd, RECORD, os.path.join(directory, RECORD))
            entries = record.write(
                header,
                (
                    entry
                    for entry, _, _ in walk(
                        root,
                        rootless=rootless,
                        digests=applier.digests,
                        owners=applier.owners if rootless else None,
                        on_dir=applier.dir_hook,
                    )
                ),
            )
            applier.finish()
        if bundle:
            from .bundle import runtime_config

            with root_of(dir_fd, directory) as rootfs:
                config = runtime_config(image.config.data, rootfs, rootless=rootless)
            _write_json(dir_fd, RUNTIME_CONFIG, config)
    except BaseException:
        os.close(dir_fd)
        if made:
            _discard(directory)
        raise
    os.close(dir_fd)
    return Unpacked(str(image.id), directory, entries, tuple(warnings))


def read_layers(
    store: Store, layers: Sequence[Layer], progress: Progress, status: str = UNPACKING
) -> Callable[[Callable[[tuple[int, bytes | None]], None]], None]:
    """The producer of a :func:`~ocistore.parallel.pipeline` that reads the layers, in
    order, verified: ``(index, piece)`` for each piece of each tar, ``(index, None)`` at
    its end."""

    def produce(put: Callable[[tuple[int, bytes | None]], None]) -> None:
        for index, layer in enumerate(layers):
            task = progress.task(task_label(layer.diff_id.short(), status), layer.size)
            done = 0
            with store.open_layer(layer) as tar:
                for piece in tar.chunks():
                    put((index, bytes(piece)))
                    done += len(piece)
                    task.update(done)
            put((index, None))
            task.finish()

    return produce


def layer_pieces(
    items: Iterator[tuple[int, bytes | None]],
) -> Iterator[Iterator[bytes]]:
    """A pipeline's items as one iterator of pieces a layer (each read to its end)."""

    def pieces(first: tuple[int, bytes | None]) -> Iterator[bytes]:
        item: tuple[int, bytes | None] | None = first
        while item is not None and item[1] is not None:
            yield item[1]
            item = next(items, None)

    for first in items:
        yield pieces(first)


def apply_layers(
    store: Store, layers: Sequence[Layer], applier: Applier, progress: Progress
) -> None:
    """Apply the layers in order, each read, checked and decompressed on another
    thread while the one before is applied."""
    pieces = parallel.ahead(read_layers(store, layers, progress))
    for index, layer_tar in enumerate(layer_pieces(pieces)):
        applier.apply(f"layer {layers[index].diff_id}", layer_tar)


def _write_json(dir_fd: int, name: str, value: Any) -> None:
    """``name`` in the directory ``dir_fd``, replaced (never written through a symlink)."""
    data = json.dumps(value, indent="\t").encode() + b"\n"
    tmp = name + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o644, dir_fd=dir_fd)
    with open(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def root_of(dir_fd: int, directory: str) -> Root:
    """The bundle's ``rootfs`` as a :class:`Root`."""
    try:
        fd = os.open(ROOTFS, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        where = os.path.join(directory, ROOTFS)
        raise InvalidInput(f"{where}: not a directory ({e.strerror})") from None
    return Root(fd, os.path.join(directory, ROOTFS))


def open_bundle(directory: str) -> tuple[int, Record, dict[str, Any]]:
    """An unpacked directory's descriptor, record and the record's header."""
    try:
        fd = os.open(directory, DIR_FLAGS)
    except OSError as e:
        raise InvalidInput(f"{directory}: not a directory ({e.strerror})") from None
    try:
        info = os.stat(RECORD, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{directory}: {RECORD} is not a regular file")
    except FileNotFoundError:
        os.close(fd)
        raise InvalidInput(
            f"{directory}: not a directory ocistore unpack made (no {RECORD})"
        ) from None
    except OcistoreError:
        os.close(fd)
        raise
    record = Record(fd, RECORD, os.path.join(directory, RECORD))
    try:
        header = record.header()
    except OcistoreError:
        os.close(fd)
        raise
    return fd, record, header
