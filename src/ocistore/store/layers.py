"""The layer store: layer chains, each backed by the blob it came in.

``layerdb/sha256/<chain hex>/layer.json`` records a chain: its DiffID, parent chain,
the size of its uncompressed tar and the blob that holds it (kept as it came: a gzip
layer stays the same gzip blob, so a later save or push needs no recompression).

A layer enters in two steps. :func:`~ocistore.store.staging.stage_layer` does the long
work outside any lock: it copies the stream into ``tmp/`` once, hashing the blob as it is,
decompressing and hashing the tar at the same time. :meth:`LayerStore.publish` then,
under the store lock, commits the blob and writes the record. Reading a layer back
(:meth:`LayerStore.open_tar`) decompresses the blob and checks the DiffID while it streams.

Nothing here counts references: which layers are in use is derived from the images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from ..errors import CorruptStore, InvalidInput, NotFound, OcistoreError
from ..spec.compression import Compression, decompressed_reader
from ..spec.config import MAX_LAYER_DEPTH
from ..spec.digest import CHUNK, ChainID, DiffID, Digest, VerifyingReader, make_chain_id
from . import fsutil
from .content import ContentStore

if TYPE_CHECKING:
    from .staging import StagedLayer


class BlobRef(NamedTuple):
    """The blob a layer is stored in."""

    digest: Digest
    size: int
    compression: Compression


class Layer(NamedTuple):
    chain_id: ChainID
    diff_id: DiffID
    parent: ChainID | None
    #: Size of this layer's uncompressed tar.
    size: int
    blob: BlobRef

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "chain_id": self.chain_id,
                "diff_id": self.diff_id,
                "parent": self.parent or "",
                "size": self.size,
                "blob": {
                    "digest": self.blob.digest,
                    "size": self.blob.size,
                    "compression": self.blob.compression.value,
                },
            },
            sort_keys=True,
        ).encode()


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
            raw = path.read_bytes()
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
            layer = Layer(
                chain_id=ChainID(Digest(d["chain_id"])),
                diff_id=DiffID(Digest(d["diff_id"])),
                parent=parent,
                size=int(d["size"]),
                blob=BlobRef(
                    Digest(blob["digest"]), int(blob["size"]), Compression(blob["compression"])
                ),
            )
        except (ValueError, KeyError, TypeError, InvalidInput) as e:
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

    def chain_size(self, chain_id: ChainID) -> int:
        return sum(layer.size for layer in self.chain(chain_id))

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
        blob_digest = self.content.commit(staged.blob)
        layer = Layer(
            chain_id=chain_id,
            diff_id=staged.diff_id,
            parent=parent,
            size=staged.size,
            blob=BlobRef(blob_digest, staged.blob.size, staged.compression),
        )
        tmpdir = fsutil.temp_path(self.tmpdir, ".layer")
        tmpdir.mkdir()
        fsutil.atomic_write(tmpdir / "layer.json", layer.to_json(), self.tmpdir)  # fsyncs tmpdir
        fsutil.publish(tmpdir, self._dir(chain_id))
        self._cache[chain_id] = layer
        return layer

    def delete(self, chain_id: ChainID) -> None:
        """Remove a chain's record (not its blob; see ``Store`` for what is still used)."""
        self._cache.pop(chain_id, None)
        fsutil.remove(self._dir(chain_id))

    def forget(self) -> None:
        """Drop cached records (another process may have deleted layers)."""
        self._cache.clear()

    def open_tar(self, chain_id: ChainID) -> IO[bytes]:
        """The layer's exact uncompressed tar, verified against its DiffID as it is read.

        A reader that reaches the end gets :class:`DigestMismatch` if the stored blob was
        changed; the blob's own digest is checked on the way as well.
        """
        layer = self.get(chain_id)
        blob = self.content.open(layer.blob.digest, verify=True)
        tar = decompressed_reader(blob, layer.blob.compression)
        if layer.blob.compression is Compression.NONE:
            # The blob is the tar: its digest is the DiffID, checked by the blob reader.
            return tar
        what = f"layer {layer.diff_id}"
        reader = VerifyingReader(tar, layer.diff_id, what, layer.size)
        return _ChainedVerifier(reader, blob, what)  # type: ignore[return-value]


class _ChainedVerifier:
    """Reads the verified tar; at its end also checks the compressed blob's digest."""

    def __init__(self, tar: VerifyingReader, blob: IO[bytes], what: str) -> None:
        self._tar = tar
        self._blob = blob
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._tar.read(n)
        except OcistoreError:
            raise
        except Exception as e:  # the decompressor choked: the stored blob was changed
            # Reading the blob to its end raises its DigestMismatch, naming the blob.
            while self._blob.read(CHUNK):
                pass
            raise CorruptStore(f"{self._what}: corrupt compressed data: {e}") from None
        if not data and n != 0:
            # Drain what the decompressor left (gzip trailer padding), then check the blob.
            while self._blob.read(CHUNK):
                pass
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._tar.close()
        self._blob.close()

    def __enter__(self) -> _ChainedVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
