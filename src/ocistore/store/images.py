"""The image store: images over the config backend and the layer store.

The configs under ``imagedb/content`` and the per-image metadata are the truth. So that
listing and prefix lookup do not read every config, the store keeps a derived index,
``imagedb/index.json``: one flat row per image (created, size, parent, platform, layer
chains, kept blobs) with the inode number of the config file it was made from.

Opening the store lists ``imagedb/content/sha256`` (names and inode numbers, which the
listing gives without a stat per file) and reads, and verifies, only the configs whose
name or inode the index does not have: configs added, or replaced by writing a new file,
outside the store. A config that fails verification is skipped and reported in
:attr:`ImageStore.skipped`. A config edited in place keeps its inode (and one deleted and
written again may get the same inode number back); every read of a config verifies its
digest, and ``fsck`` verifies them all. A writer marks the index
dirty (``index.dirty``) before it changes anything and rewrites the index before it
releases the lock; after a crash the marker is still there, and the next opener rebuilds
the index from the files. Layer reference counts are derived from the records, never
stored.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from pathlib import Path
from typing import Any, Final, NamedTuple

from ..errors import (
    Ambiguous,
    Conflict,
    CorruptStore,
    InvalidInput,
    NotFound,
    OcistoreError,
)
from ..spec.config import ImageConfig, parse_config
from ..spec.digest import ChainID, Digest, ImageID
from . import fsutil, gc
from .backend import BLOBS, PARENT, FSBackend
from .layers import Layer, LayerStore

#: 3: an image's size is Docker's (the sum of its layers' ``content_size``), no longer
#: the sum of their tar lengths: an index of version 2 holds those, and is rebuilt.
INDEX_VERSION = 3
_HEXDIGITS = frozenset("0123456789abcdef")
#: Deletes the hex digits: what is left of a string of names is what is not hex.
_NOT_HEX: Final = str.maketrans("", "", "0123456789abcdef")
_new_record = tuple.__new__
_new_digest = str.__new__  # Digest.trusted without the call


class ImageRecord(NamedTuple):
    """What the index knows of an image without reading its config.

    A named tuple rather than a dataclass, and the lists kept as the index holds them
    (joined strings, split when asked for): a store of 10,000 images makes 10,000 of
    these every time it is opened.
    """

    id: ImageID
    created: str
    #: The layer chains, bottom first, separated by spaces (see :attr:`chains`).
    chain_list: str
    size: int
    parent: ImageID | None
    os: str
    architecture: str
    #: Other blobs the image needs (manifests, layer blobs it was distributed as),
    #: separated by spaces (see :attr:`blobs`).
    blob_list: str = ""
    #: The inode number of the config file the record was made from.
    inode: int = 0

    @property
    def chains(self) -> tuple[ChainID, ...]:
        """The image's layer chains, bottom first (plain strings equal to their
        :class:`ChainID`: they are only compared and used as keys)."""
        return tuple(self.chain_list.split(" ")) if self.chain_list else ()  # type: ignore[arg-type]

    @property
    def blobs(self) -> tuple[Digest, ...]:
        if not self.blob_list:
            return ()
        return tuple([_new_digest(Digest, b) for b in self.blob_list.split(" ")])

    def to_row(self) -> list[object]:
        """The record as one flat row of the index: scalars only, so that reading
        10,000 of them is one quick ``json.loads``."""
        return [
            self.id[7:],
            self.created,
            self.size,
            self.parent or "",
            self.os,
            self.architecture,
            self.chain_list,
            self.blob_list,
            self.inode,
        ]


def _records_from_rows(rows: list[list[Any]]) -> dict[str, ImageRecord]:
    """Records by config file name (the ID's hex) from the rows of the index the store
    wrote itself: trusted, so not re-validated. A damaged row fails here with a
    TypeError, ValueError or IndexError, and the index is rebuilt."""
    new, digest = _new_record, _new_digest
    records: dict[str, ImageRecord] = {}
    for hex_, created, size, parent, os_, arch, chains, blobs, inode in rows:
        # Every field's type, so that a damaged row means a rebuild, never a crash later.
        if not (
            type(hex_) is str
            and len(hex_) == 64
            and type(created) is str
            and type(size) is int
            and type(parent) is str
            and type(os_) is str
            and type(arch) is str
            and type(chains) is str
            and type(blobs) is str
            and type(inode) is int
        ):
            raise TypeError(f"index row {hex_!r}: a field of the wrong type")
        records[hex_] = new(
            ImageRecord,
            (
                digest(Digest, "sha256:" + hex_),
                created,
                chains,
                size,
                digest(Digest, parent) if parent else None,
                os_,
                arch,
                blobs,
                inode,
            ),
        )
    # The names are hex: checked all at once (one pass in C, not a set lookup per char).
    if "".join(records).translate(_NOT_HEX):
        raise ValueError("index row with a name that is not hex")
    return records


def newest_first(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Records by creation time, newest first, then by ID (descending): the order of
    listings, and of the index. Records read from the index, with any added since at
    the end, are nearly in that order already, which one sort on a ``(created, id)`` key
    sees in about a pass."""
    return sorted(records, key=_NEWEST, reverse=True)


_NEWEST: Final = itemgetter(1, 0)  # (created, id)


class Image(NamedTuple):
    """An image: its verified config and what the store knows of it."""

    config: ImageConfig
    record: ImageRecord

    @property
    def id(self) -> ImageID:
        return self.config.id


class ImageStore:
    def __init__(
        self, backend: FSBackend, layers: LayerStore, lock: fsutil.FileLock, tmpdir: Path
    ) -> None:
        self.backend = backend
        self.layers = layers
        self.lock = lock
        self.tmpdir = tmpdir
        self.index_path = backend.root / "index.json"
        self.dirty_path = backend.root / "index.dirty"
        self._images: dict[ImageID, ImageRecord] = {}
        self._index_sig: tuple[int, int, int] | None = None
        self._dirty_seen = False
        self._loaded = False
        self._writing_depth = 0
        self._intended = False
        #: Configs skipped by the last full load, as ``(digest or name, reason)``.
        self.skipped: list[tuple[str, str]] = []
        #: Finishes or undoes what a dead writer's marker says it was doing (the store's).
        self.recover: Callable[[dict[str, Any]], None] | None = None

    # -- loading ---------------------------------------------------------------------

    def _read_index(self) -> dict[str, ImageRecord] | None:
        """The index's records by config file name (the ID's hex), or ``None`` when there
        is no usable index. Remembers what it saw, for :meth:`_current`."""
        self._dirty_seen = self.dirty_path.exists()
        try:
            raw = fsutil.read_own(self.index_path, 1 << 30)
            self._index_sig = fsutil.stat_key(os.stat(self.index_path))
        except FileNotFoundError:
            self._index_sig = None
            return None
        except CorruptStore:  # a symlink or a device in its place: rebuilt, not followed
            self._index_sig = None
            return None
        if self._dirty_seen:
            return None  # a writer died mid-way: trust nothing in the index
        try:
            doc = json.loads(raw)
            if doc.get("version") != INDEX_VERSION:
                return None
            return _records_from_rows(doc["images"])
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
            return None  # a damaged cache is rebuilt, not fatal

    def _record_from_files(self, image_id: ImageID, inode: int) -> tuple[ImageRecord, ImageConfig]:
        raw = self.backend.get(image_id)  # verifies the digest
        config = parse_config(raw, f"image config {image_id}")
        chains = tuple(config.chain_ids)
        size = 0
        for c in chains:
            size += self.layers.get(c).shown_size  # NotFound if a layer is missing
        parent: ImageID | None = None
        blobs: tuple[Digest, ...] = ()
        try:
            with contextlib.suppress(NotFound):
                raw_parent = self.backend.get_metadata(image_id, PARENT)
                parent = ImageID(Digest(raw_parent.decode()))
            with contextlib.suppress(NotFound):
                blobs = tuple(
                    Digest(b) for b in json.loads(self.backend.get_metadata(image_id, BLOBS))
                )
        except (ValueError, TypeError, RecursionError) as e:  # InvalidInput is a ValueError too
            raise CorruptStore(f"image {image_id}: damaged metadata: {e}") from None
        record = ImageRecord(
            id=image_id,
            created=config.created,
            chain_list=" ".join(chains),
            size=size,
            parent=parent,
            os=config.os,
            architecture=config.architecture,
            blob_list=" ".join(blobs),
            inode=inode,
        )
        return record, config

    def _load(self) -> bool:
        """Bring the in-memory records up to date with the files (caller holds a lock).

        Returns whether the index on disk is stale: unusable, or not what the files say.
        """
        index = self._read_index()
        cached = index or {}
        read_from_files = False
        images: dict[ImageID, ImageRecord] = {}
        skipped: list[tuple[str, str]] = []
        try:
            # Names and inode numbers, from the listing alone (no stat per file).
            on_disk = {e.name: e.inode() for e in os.scandir(self.backend.content_dir)}
        except FileNotFoundError:
            on_disk = {}
        # In the index's order (newest first) for the records the files still match: a
        # config added, removed or replaced (written anew and renamed) outside the store
        # shows in the names and inodes.
        for name, rec in cached.items():
            if on_disk.get(name) == rec.inode:
                images[rec.id] = rec
        if len(images) == len(on_disk):
            on_disk = {}  # every file matched a record: nothing new to read
        for name, inode in on_disk.items():
            known = cached.get(name)
            if (known is not None and known.inode == inode) or not (
                len(name) == 64 and _HEXDIGITS.issuperset(name)
            ):
                continue
            image_id = ImageID(Digest(f"sha256:{name}"))
            try:
                rec, _ = self._record_from_files(image_id, inode)
            except OcistoreError as e:
                skipped.append((image_id, str(e)))
                continue
            images[image_id] = rec
            read_from_files = True
        self._images = images
        self.skipped = skipped
        self._loaded = True
        return index is None or read_from_files or len(images) != len(cached)

    def _current(self) -> bool:
        """Whether no writer came by since the last load: every writer rewrites the index
        and removes the dirty marker, so the same index file and marker mean the same
        store (even when that index was unusable and the records came from the files)."""
        if not self._loaded:
            return False
        try:
            sig: tuple[int, int, int] | None = fsutil.stat_key(os.stat(self.index_path))
        except FileNotFoundError:
            sig = None
        return sig == self._index_sig and self.dirty_path.exists() == self._dirty_seen

    def refresh(self, force: bool = False) -> None:
        """Re-read the store if another process changed it since the last look.

        When the index was stale (a crashed writer's marker, a missing or damaged index,
        configs added outside the store), write it again, so that the next process does
        not read every config too; a reader that may not write still reads.
        """
        if self._writing_depth or (not force and self._current()):
            return
        with self.lock.shared():
            self.layers.forget()
            stale = self._load()
        if stale and not self.lock.held:  # (a caller's shared lock cannot be upgraded)
            # Only a cache: a reader that may not write, or that would wait, or whose
            # write a dead writer's unfinished change stops, goes on (the next writer
            # finishes that change, and says so if it cannot).
            quiet = contextlib.suppress(OSError, OcistoreError)
            with quiet, self.writing():
                pass

    def _save_index(self) -> None:
        doc = {
            "version": INDEX_VERSION,
            # Newest first, as listings show them: sorting them again is then quick.
            "images": [r.to_row() for r in newest_first(self._images.values())],
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        fsutil.atomic_write(self.index_path, data, self.tmpdir)
        self._index_sig = fsutil.stat_key(os.stat(self.index_path))

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the exclusive lock over a change, with the index marked dirty meanwhile.

        Re-entrant: the outermost block re-reads the store first and rewrites the index
        last, so a composite change (layers, image, tags) publishes under one lock.
        """
        with self.lock.exclusive():
            if self._writing_depth:
                self._writing_depth += 1
                try:
                    yield
                finally:
                    self._writing_depth -= 1
                return
            if not self._current():
                self.layers.forget()
                self._load()
            fsutil.makedirs(self.backend.root)
            # A marker while this process holds the lock: its writer died mid-way. What
            # it meant to do is in it: finished or undone first, so that no command is
            # ever half-visible (the marker stays until that is done).
            unfinished = self._intent_left()
            self._writing_depth = 1
            self._intended = False
            done = False
            try:
                if unfinished is not None and self.recover is not None:
                    self.recover(unfinished)
                unfinished = None
                fsutil.atomic_write(self.dirty_path, b"", self.tmpdir)
                yield
                done = True
            finally:
                self._writing_depth = 0
                # Whatever happened, the records describe the files as they now are.
                self._save_index()
                # A marker that says what is left to finish or undo (a recovery that
                # failed, a change that failed after saying what it would do) stays, for
                # the next writer; else it goes.
                if done or (unfinished is None and not self._intended):
                    fsutil.remove(self.dirty_path)
                    self._dirty_seen = False

    def _intent_left(self) -> dict[str, Any] | None:
        """What a dead writer's marker says it was doing (``None``: no marker, or an
        empty or unreadable one: nothing to finish)."""
        try:
            raw = fsutil.read_own(self.dirty_path, 16 << 20)
        except (FileNotFoundError, CorruptStore):
            return None
        try:
            intent = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            return None
        return intent if isinstance(intent, dict) else None

    def finish_pending(self) -> None:
        """If a writer died after saying what it would do, have it finished or undone now
        (a writing block runs :attr:`recover` first); else do nothing, write nothing."""
        if self._intent_left() is not None and not self.lock.held:
            with self.writing():
                pass

    def intend(self, intent: dict[str, Any]) -> None:
        """Record in the dirty marker, durably, what the running change is about to do
        (inside :meth:`writing`), so that if the writer dies the next one can finish or
        undo it (:attr:`recover`)."""
        assert self._writing_depth, "intend() is called inside writing()"
        fsutil.atomic_write(self.dirty_path, json.dumps(intent).encode(), self.tmpdir)
        self._intended = True

    def settled(self) -> None:
        """What :meth:`intend` recorded was undone by its writer after a failure: the
        marker may go at the end of :meth:`writing` (else it stays for the next writer)."""
        self._intended = False

    def rebuild(self) -> None:
        """Read every config again, trusting nothing in the index (``fsck --repair``;
        inside :meth:`writing`, whose end writes the index anew)."""
        assert self._writing_depth, "rebuild() is called inside writing()"
        fsutil.remove(self.index_path)
        self.layers.forget()
        self._load()

    def recount_sizes(self) -> None:
        """Sum every image's size from its layer records again (inside :meth:`writing`,
        whose end writes the index): ``fsck --repair`` recorded layers' content sizes.
        An image whose layer record is gone or damaged keeps the size it had."""
        assert self._writing_depth, "recount_sizes() is called inside writing()"
        for image_id, rec in builtins.list(self._images.items()):
            try:
                size = sum(self.layers.get(c).shown_size for c in rec.chains)
            except (NotFound, CorruptStore):
                continue
            if size != rec.size:
                self._replace(image_id, size=size)

    # -- reading ---------------------------------------------------------------------

    def _record(self, image_id: ImageID) -> ImageRecord:
        self.refresh()
        rec = self._images.get(image_id)
        if rec is None:
            raise NotFound(f"image {image_id} not found")
        return rec

    def exists(self, image_id: ImageID) -> bool:
        self.refresh()
        return image_id in self._images

    def get(self, image_id: ImageID) -> Image:
        """The image with its config read and verified again."""
        rec = self._record(image_id)
        config = parse_config(self.backend.get(image_id), f"image config {image_id}")
        return Image(config, rec)

    def record(self, image_id: ImageID) -> ImageRecord:
        return self._record(image_id)

    def list(self) -> builtins.list[ImageRecord]:
        self.refresh()
        return list(self._images.values())

    def search(self, prefix: str) -> ImageID:
        """Find an image by full ID, ``sha256:`` prefix or bare hex prefix."""
        p = prefix[len("sha256:") :] if prefix.startswith("sha256:") else prefix
        if not p or len(p) > 64 or not _HEXDIGITS.issuperset(p):
            raise InvalidInput(f"invalid image ID {prefix!r}")
        self.refresh()
        if len(p) == 64:
            full = ImageID(Digest(f"sha256:{p}"))
            if full in self._images:
                return full
            raise NotFound(f"image {prefix} not found")
        matches = [i for i in self._images if i.hex.startswith(p)]
        if not matches:
            raise NotFound(f"image {prefix} not found")
        if len(matches) > 1:
            raise Ambiguous(
                f"image ID prefix {prefix!r} is ambiguous: matches {len(matches)} images"
            )
        return matches[0]

    def get_parent(self, image_id: ImageID) -> ImageID | None:
        return self._record(image_id).parent

    def children(self, image_id: ImageID) -> builtins.list[ImageID]:
        self._record(image_id)
        return sorted(r.id for r in self._images.values() if r.parent == image_id)

    # -- writing ---------------------------------------------------------------------

    def create(self, config: bytes | ImageConfig) -> ImageID:
        """Keep a config as an image; creating an existing image returns its ID.

        Fails, naming the chain, if the image's layers are not in the layer store.
        """
        cfg = config if isinstance(config, ImageConfig) else parse_config(config)
        with self.writing():
            if cfg.id in self._images:
                return cfg.id
            size = 0
            for i, chain in enumerate(cfg.chain_ids):
                try:
                    size += self.layers.get(chain).shown_size
                except NotFound:
                    raise NotFound(
                        f"image {cfg.id}: layer chain {chain} (layer {i}, "
                        f"diff ID {cfg.diff_ids[i]}) is not in the layer store"
                    ) from None
            self.backend.set(cfg.raw)
            st = os.stat(self.backend.content_path(cfg.id))
            self._images[cfg.id] = ImageRecord(
                id=cfg.id,
                created=cfg.created,
                chain_list=" ".join(cfg.chain_ids),
                size=size,
                parent=None,
                os=cfg.os,
                architecture=cfg.architecture,
                inode=st.st_ino,
            )
        return cfg.id

    def _replace(self, image_id: ImageID, **changes: Any) -> None:
        self._images[image_id] = self._images[image_id]._replace(**changes)

    def set_parent(self, image_id: ImageID, parent: ImageID) -> None:
        """Make ``parent`` the parent of ``image_id`` (moving it from any earlier parent)."""
        with self.writing():
            self._record(image_id)
            self._record(parent)
            cur: ImageID | None = parent
            while cur is not None:
                if cur == image_id:
                    raise Conflict(f"image {parent} cannot be the parent of {image_id}: a cycle")
                cur = self._images[cur].parent if cur in self._images else None
            self.backend.set_metadata(image_id, PARENT, parent.encode())
            self._replace(image_id, parent=parent)

    def set_blobs(
        self, image_id: ImageID, blobs: builtins.list[Digest], replace: bool = False
    ) -> None:
        """Record further blobs an image keeps alive (its manifests, its layer blobs),
        with those it keeps already unless ``replace``."""
        with self.writing():
            rec = self._record(image_id)
            kept = set() if replace else set(rec.blobs)
            merged = tuple(sorted(kept | {Digest(b) for b in blobs}))
            if merged == rec.blobs:
                return
            self.backend.set_metadata(image_id, BLOBS, json.dumps(list(merged)).encode())
            self._replace(image_id, blob_list=" ".join(merged))

    def delete(self, image_id: ImageID) -> builtins.list[Layer]:
        """Delete an image; returns the layers (top first) no remaining image needs.

        Those layers, and the blobs no remaining layer or image needs, are removed
        (:func:`ocistore.store.gc.sweep`). References are the caller's to remove first
        (delete top-down). An image with children is refused.
        """
        with self.writing():
            rec = self._record(image_id)
            if any(r.parent == image_id for r in self._images.values()):
                raise Conflict(
                    f"conflict: unable to delete {image_id.short()} (cannot be forced) "
                    "- image has dependent child images"
                )
            self.backend.delete(image_id)
            del self._images[image_id]
            swept = gc.sweep(
                self.layers,
                self.layers.content,
                self._images.values(),
                reversed(rec.chains),
                rec.blobs,
            )
            return swept.layers
