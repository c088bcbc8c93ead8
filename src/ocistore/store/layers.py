"""The layer store: layer chains, each backed by the blob it came in.

``layerdb/sha256/<chain hex>/layer.json`` records a chain: its DiffID, parent chain,
the size of its uncompressed tar, Docker's size of it (``content_size``: what its tar
headers say its members hold, counted while it is staged) and the blob that holds it
(kept as it came: a gzip layer stays the same gzip blob, so a later save or push needs
no recompression).

A record written before ``content_size`` was recorded has none (``None``); until
``fsck --repair`` counts it (it reads every layer anyway) the tar's length stands in for
it (:attr:`Layer.shown_size`), as ocistore showed before, and ``fsck`` says so.

A layer enters in two steps. :func:`~ocistore.store.staging.stage_layer` does the long
work outside any lock: it copies the stream into ``tmp/`` once, hashing the blob as it is,
decompressing and hashing the tar at the same time. :meth:`LayerStore.publish` then,
under the store lock, publishes the blob and writes the record.

Reading a layer back goes through one reader, :class:`LayerReader`
(:meth:`LayerStore.open_tar`): it reads the blob once, hashing it, decompresses it and
hashes the tar on the way out, and checks the tar's size and DiffID and the blob's digest
as it ends.

Nothing here counts references: which layers are in use is derived from the images.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from ..errors import CorruptStore, DigestMismatch, InvalidInput, NotFound, SizeMismatch
from ..spec.compression import Compression, Decompressor
from ..spec.config import MAX_LAYER_DEPTH
from ..spec.digest import CHUNK, ChainID, DiffID, Digest, hash_rest, make_chain_id, new_hasher
from ..spec.tarscan import TarScanner
from . import fsutil
from .content import ContentStore

if TYPE_CHECKING:
    from .staging import StagedLayer

__all__ = ["BlobRef", "Layer", "LayerReader", "LayerStore"]


class BlobRef(NamedTuple):
    """The blob a layer is stored in."""

    digest: Digest
    size: int
    compression: Compression


class Layer(NamedTuple):
    chain_id: ChainID
    diff_id: DiffID
    parent: ChainID | None
    #: Size of this layer's uncompressed tar (what reading it gives, checked then).
    size: int
    blob: BlobRef
    #: Docker's size of the layer: the sum of the sizes its tar headers give their
    #: members (:attr:`~ocistore.spec.tarscan.TarScanner.content_size`), or ``None`` in
    #: a record written before it was recorded.
    content_size: int | None = None

    @property
    def shown_size(self) -> int:
        """The layer's size as Docker shows it (``docker history``, and summed over a
        chain, an image's ``Size``): :attr:`content_size`, or, for a record without it,
        the tar's length."""
        return self.size if self.content_size is None else self.content_size

    def to_json(self) -> bytes:
        doc: dict[str, object] = {
            "chain_id": self.chain_id,
            "diff_id": self.diff_id,
            "parent": self.parent or "",
            "size": self.size,
            "blob": {
                "digest": self.blob.digest,
                "size": self.blob.size,
                "compression": self.blob.compression.value,
            },
        }
        if self.content_size is not None:
            doc["content_size"] = self.content_size
        return json.dumps(doc, sort_keys=True).encode()


class LayerStore:
    def __init__(self, root: Path, content: ContentStore, tmpdir: Path) -> None:
        self.root = root  # <store>/layerdb
        self.content = content
        self.tmpdir = tmpdir
        self._cache: dict[ChainID, Layer] = {}

    def _dir(self, chain_id: ChainID) -> Path:
        d = Digest(chain_id)
        return self.root / d.algorithm / d.hex

    def exists(self, chain_id: ChainID) -> bool:
        return chain_id in self._cache or (self._dir(chain_id) / "layer.json").is_file()

    def get(self, chain_id: ChainID) -> Layer:
        layer = self._cache.get(chain_id)
        if layer is not None:
            return layer
        path = self._dir(chain_id) / "layer.json"
        try:
            raw = fsutil.read_own(path)
        except FileNotFoundError:
            raise NotFound(f"layer {chain_id} not found") from None
        layer = self._parse(chain_id, raw, path)
        self._cache[chain_id] = layer
        return layer

    @staticmethod
    def _parse(chain_id: ChainID, raw: bytes, path: Path) -> Layer:
        try:
            d = json.loads(raw)
            blob = d["blob"]
            parent = ChainID(Digest(d["parent"])) if d["parent"] else None
            content_size = d.get("content_size")
            if content_size is not None and (type(content_size) is not int or content_size < 0):
                raise ValueError(f"content_size {content_size!r} is not a size")
            layer = Layer(
                chain_id=ChainID(Digest(d["chain_id"])),
                diff_id=DiffID(Digest(d["diff_id"])),
                parent=parent,
                size=int(d["size"]),
                blob=BlobRef(
                    Digest(blob["digest"]), int(blob["size"]), Compression(blob["compression"])
                ),
                content_size=content_size,
            )
        except (ValueError, KeyError, TypeError, InvalidInput, RecursionError) as e:
            raise CorruptStore(f"layer record {path} is damaged: {e}") from None
        expected = make_chain_id(layer.parent, layer.diff_id)
        if layer.chain_id != chain_id or expected != chain_id:
            raise CorruptStore(
                f"layer record {path} is damaged: it describes chain {expected}, not {chain_id}"
            )
        return layer

    def walk(self) -> list[ChainID]:
        """Every chain with a record; names that are not digests are skipped."""
        out: list[ChainID] = []
        base = self.root / "sha256"
        try:
            entries = os.scandir(base)
        except FileNotFoundError:
            return out
        with entries:
            for e in entries:
                if Digest.is_valid(f"sha256:{e.name}"):
                    out.append(ChainID(Digest(f"sha256:{e.name}")))
        return out

    def depth(self, chain_id: ChainID) -> int:
        n = 0
        cur: ChainID | None = chain_id
        while cur is not None:
            n += 1
            cur = self.get(cur).parent
        return n

    def chain(self, chain_id: ChainID) -> list[Layer]:
        """The layers of a chain, bottom first."""
        out: list[Layer] = []
        cur: ChainID | None = chain_id
        while cur is not None:
            layer = self.get(cur)
            out.append(layer)
            cur = layer.parent
        out.reverse()
        return out

    def publish(self, staged: StagedLayer, parent: ChainID | None) -> Layer:
        """Commit a staged layer on top of ``parent``; call with the store lock held.

        Registering a chain that exists returns the existing layer. A chain deeper than
        125 layers is refused. Whatever happens, a staged copy not committed is the
        caller's to discard.
        """
        chain_id = make_chain_id(parent, staged.diff_id)
        if self.exists(chain_id):
            return self.get(chain_id)
        if parent is not None:
            if not self.exists(parent):
                raise NotFound(f"parent layer {parent} not found")
            if self.depth(parent) + 1 > MAX_LAYER_DEPTH:
                raise InvalidInput(
                    f"layer {chain_id}: chain deeper than the maximum depth {MAX_LAYER_DEPTH}"
                )
        blob_digest = self.content.publish(staged.blob)
        layer = Layer(
            chain_id=chain_id,
            diff_id=staged.diff_id,
            parent=parent,
            size=staged.size,
            blob=BlobRef(blob_digest, staged.blob.size, staged.compression),
            content_size=staged.content_size,
        )
        tmpdir = fsutil.temp_path(self.tmpdir, ".layer")
        fsutil.make_private_dir(tmpdir)
        try:
            fsutil.atomic_write(tmpdir / "layer.json", layer.to_json(), self.tmpdir)
            fsutil.publish(tmpdir, self._dir(chain_id))
        except BaseException:
            fsutil.remove(tmpdir)
            raise
        self._cache[chain_id] = layer
        return layer

    def record_content_size(self, layer: Layer, content_size: int) -> Layer:
        """Add Docker's size, counted from the verified layer, to a record written without
        it (``fsck --repair``; with the store lock held): ``layer.json`` is replaced
        atomically, everything else in it as it was."""
        updated = layer._replace(content_size=content_size)
        path = self._dir(layer.chain_id) / "layer.json"
        fsutil.atomic_write(path, updated.to_json(), self.tmpdir)
        self._cache[layer.chain_id] = updated
        return updated

    def delete(self, chain_id: ChainID) -> bool:
        """Remove a chain's record (not its blob: :mod:`ocistore.store.gc` says what is
        still needed); whether there was anything to remove (a record, or what a crash
        left of one)."""
        self._cache.pop(chain_id, None)
        path = self._dir(chain_id)
        there = os.path.lexists(path)
        fsutil.remove(path, self.tmpdir)  # gone whole: never an empty record left
        return there

    def forget(self) -> None:
        """Drop cached records (another process may have deleted layers)."""
        self._cache.clear()

    def open_tar(self, chain_id: ChainID | Layer, count: bool = False) -> LayerReader:
        """The layer's exact uncompressed tar, verified as it is read (see
        :class:`LayerReader`); with ``count``, Docker's size of a layer whose record has
        none is counted as it is read."""
        layer = chain_id if isinstance(chain_id, Layer) else self.get(chain_id)
        try:
            blob = self.content.open_file(layer.blob.digest)
        except FileNotFoundError:
            raise NotFound(f"blob {layer.blob.digest} not found") from None
        return LayerReader(layer, blob, count)


class LayerReader:
    """A stored layer's exact tar, read from its blob once and checked while it streams.

    The blob is hashed as it is read and decompressed (a megabyte at a time, whatever the
    ratio), and the tar is hashed and counted on the way out. A reader that reaches the
    end has had every check: the blob's digest (:class:`DigestMismatch` naming the blob,
    the first thing looked at whenever something is wrong, since a changed blob explains
    everything after it), then the tar's size and DiffID (:class:`SizeMismatch`,
    :class:`DigestMismatch` naming the layer). A blob that cannot be decompressed and yet
    has its digest is :class:`CorruptStore`. A tar that grows past the layer's size fails
    at once.

    :meth:`chunks` gives the tar in pieces (the fastest way to copy it); ``read`` and
    ``readinto`` make it a stream.

    With ``count``, a layer whose record has no ``content_size`` (written before it was
    recorded) has its headers followed as it streams: once the reader has ended,
    :attr:`content_size` is Docker's size of it, counted from the verified tar (``None``
    if its headers are not a tar as Docker reads a layer; the reading goes on as
    before). Only ``fsck --repair`` asks: every other read would throw the count away.
    """

    def __init__(self, layer: Layer, blob: IO[bytes], count: bool = False) -> None:
        self.layer = layer
        self._blob = blob
        self._what = f"layer {layer.diff_id}"
        self._blob_hasher = new_hasher(layer.blob.digest.algorithm)
        plain = layer.blob.compression is Compression.NONE
        self._diff_hasher = (
            self._blob_hasher if plain and layer.blob.digest == layer.diff_id else new_hasher()
        )
        #: Tar bytes given out so far.
        self.done = 0
        self._pieces: Iterator[bytes | memoryview] | None = None
        self._current: memoryview = memoryview(b"")
        self._pos = 0
        counting = count and layer.content_size is None
        self._scanner = TarScanner(self._what, layer=True) if counting else None
        #: Docker's size of the layer: the record's, or counted (see above) once read.
        self.content_size: int | None = layer.content_size

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The tar, piece by piece, each checked as said above before the next is asked
        for; the last check runs when the pieces end. A piece is only valid until the
        next one is asked for."""
        layer = self.layer
        decompressor = Decompressor(layer.blob.compression, self._what)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        readinto = self._blob.readinto  # type: ignore[attr-defined]
        try:
            while n := readinto(buf):
                self._blob_hasher.update(view[:n])
                for out in decompressor.chunks(view[:n]):
                    self._emitted(out)
                    yield out
            decompressor.finish()
        except InvalidInput as e:  # the codec choked on what the store holds
            self._check_blob()
            raise CorruptStore(str(e)) from None
        except (SizeMismatch, DigestMismatch):
            self._check_blob()
            raise
        self._check_blob()
        if self.done != layer.size:
            raise SizeMismatch(self._what, layer.size, self.done)
        got = f"sha256:{self._diff_hasher.hexdigest()}"
        if got != layer.diff_id:
            raise DigestMismatch(self._what, layer.diff_id, got)
        if self._scanner is not None:
            with contextlib.suppress(InvalidInput):
                self._scanner.finish()
                self.content_size = self._scanner.content_size

    def _emitted(self, out: bytes | memoryview) -> None:
        n = len(out)
        if self.done + n > self.layer.size:
            raise SizeMismatch(self._what, self.layer.size, self.done + n)
        if self._diff_hasher is not self._blob_hasher:
            self._diff_hasher.update(out)
        self.done += n
        scanner = self._scanner
        if scanner is not None and not scanner.ended:
            try:
                scanner.feed(out)
            except InvalidInput:
                self._scanner = None  # not a tar as Docker reads a layer: not counted

    def _check_blob(self) -> None:
        """Hash what is left of the blob; a blob not what its name says is the error."""
        hash_rest(self._blob, self._blob_hasher)
        digest = self.layer.blob.digest
        got = f"{digest.algorithm}:{self._blob_hasher.hexdigest()}"
        if got != digest:
            raise DigestMismatch(f"blob {digest}", digest, got)

    def readinto(self, buf: bytearray | memoryview) -> int:
        while self._pos >= len(self._current):
            if self._pieces is None:
                self._pieces = self.chunks()
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._current, self._pos = memoryview(piece), 0
        n = min(len(buf), len(self._current) - self._pos)
        buf[:n] = self._current[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(CHUNK if n < 0 else n)
        out = bytearray()
        while k := self.readinto(buf):
            out += memoryview(buf)[:k]
            if n >= 0:
                break
        return bytes(out)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._blob.close()

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
