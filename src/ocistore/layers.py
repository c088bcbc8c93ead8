"""The layer store: layer chains, each backed by the blob it came in.

``layerdb/sha256/<chain hex>/layer.json`` records a chain: its DiffID, parent chain,
the size of its uncompressed tar and the blob that holds it (kept as it came: a gzip
layer stays the same gzip blob, so a later save or push needs no recompression).

A layer enters in two steps. :func:`stage_layer` does the long work outside any lock: it
copies the stream into ``tmp/`` once, hashing the blob as it is, decompressing and hashing
the tar at the same time. :meth:`LayerStore.publish` then, under the store lock, commits
the blob and writes the record. Reading a layer back (:meth:`LayerStore.open_tar`)
decompresses the blob and checks the DiffID while it streams.

Nothing here counts references: which layers are in use is derived from the images.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from . import fsutil
from .compression import (
    Compression,
    Decompressor,
    PeekableReader,
    decompressed_reader,
    detect,
)
from .content import ContentStore, StagedBlob
from .digest import (
    CHUNK,
    ChainID,
    DiffID,
    Digest,
    VerifyingReader,
    make_chain_id,
    new_hasher,
)
from .errors import (
    CorruptStore,
    DigestMismatch,
    InvalidInput,
    NotFound,
    OcistoreError,
    SizeMismatch,
)
from .image import MAX_LAYER_DEPTH


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


def _tar_header_ok(block: bytes) -> bool:
    """Whether the first 512 bytes of a stream look like the start of a tar archive."""
    if len(block) < 512:
        return False
    if not block.strip(b"\x00"):
        return True  # end-of-archive blocks: an empty tar
    try:
        stored = int(block[148:156].split(b"\x00", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    signed = (
        sum(b - 256 if b > 127 else b for b in block[:148])
        + 256
        + sum(b - 256 if b > 127 else b for b in block[156:512])
    )
    return stored in (unsigned, signed)


class StagedLayer(NamedTuple):
    """A layer copied into ``tmp/`` and hashed, not yet visible in the store."""

    blob: StagedBlob
    compression: Compression
    diff_id: DiffID
    size: int

    def discard(self) -> None:
        self.blob.discard()


#: Compressed input is read in half-megabyte pieces. The decompressor hands its output
#: over about a megabyte at a time whatever the ratio, so the piece size only sets the
#: overhead per piece: 128 KiB pieces made a zstd load about 10% slower.
COMPRESSED_CHUNK = 512 << 10


class _Digester(threading.Thread):
    """Hashes (and decompresses) a layer's chunks on its own thread, while the caller's
    thread reads and writes: hashlib, isal and zstandard release the GIL, so reading,
    writing, decompressing and hashing overlap on two cores.

    Chunks travel in a fixed set of buffers (:attr:`free` back to the reader once
    digested): allocating a fresh megabyte per read let glibc's per-thread arenas keep
    freed chunks, and a 512 MiB load reached 110 MiB of memory."""

    BUFFERS = 4

    def __init__(
        self,
        compression: Compression,
        what: str,
        blob_hasher: Any,
        diff_hasher: Any,
        chunk_size: int,
    ) -> None:
        super().__init__(name=f"digest {what}", daemon=True)
        self.queue: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(self.BUFFERS):
            self.free.put(bytearray(chunk_size))
        self.plain = compression is Compression.NONE
        self.zstd = compression is Compression.ZSTD
        self.compression = compression
        self.what = what
        self.chunks = _Chunks(self.queue, self.free)
        self.blob_hasher = blob_hasher
        self.diff_hasher = diff_hasher
        self.tar_size = 0
        self.head = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        # Whatever fails, even before the first chunk (an import, memory), is kept for
        # the reading thread, and every queued buffer goes back to it: otherwise it would
        # wait for a free buffer forever.
        try:
            if self.zstd:
                self._pull_zstd()
            else:
                self._feed()
        except BaseException as e:
            self.error = e
        finally:
            self.chunks.drain()

    def _got(self, out: bytes | memoryview) -> None:
        if self.diff_hasher is not self.blob_hasher:
            self.diff_hasher.update(out)
        self.tar_size += len(out)
        if len(self.head) < 512:
            self.head += bytes(out[: 512 - len(self.head)])

    def _feed(self) -> None:
        decompressor = Decompressor(self.compression, self.what)
        while (chunk := self.chunks.next()) is not None:
            if self.plain:
                self.blob_hasher.update(chunk)
            # A plain chunk comes back as it is; a gzip one a megabyte at a time.
            for out in decompressor.chunks(chunk):
                self._got(out)
            del chunk
        decompressor.finish()

    def _pull_zstd(self) -> None:
        """zstd is pulled rather than fed: ``zstandard``'s stream reader decompresses
        straight into one reusable buffer, where its push interface makes a new ``bytes``
        per piece and joins them. It reads the queued chunks through :class:`_Chunks`,
        and a cut stream is told by following its frames (``decompressed_reader``)."""
        import zstandard

        out = bytearray(CHUNK)
        view = memoryview(out)
        chunks = cast("IO[bytes]", self.chunks)  # read() is all the reader calls
        reader = decompressed_reader(chunks, Compression.ZSTD, self.what, COMPRESSED_CHUNK)
        try:
            while n := reader.readinto(out):  # type: ignore[attr-defined]
                self._got(view[:n])
        except zstandard.ZstdError as e:
            raise InvalidInput(f"{self.what}: corrupt zstd data: {e}") from None


class _Chunks:
    """The chunks queued for a :class:`_Digester`, whole (:meth:`next`) or as a stream
    (:meth:`read`). A chunk's buffer goes back to the reading thread once the next chunk
    is asked for: the caller is done with it then (zstd's reader only asks for more
    when it has used up what it was given)."""

    __slots__ = ("_buf", "_ended", "_free", "_pos", "_queue", "_view")

    def __init__(
        self, chunks: queue.Queue[tuple[bytearray, int] | None], free: queue.Queue[bytearray]
    ) -> None:
        self._queue = chunks
        self._free = free
        self._buf: bytearray | None = None
        self._view = memoryview(b"")
        self._pos = 0
        self._ended = False

    def next(self) -> memoryview | None:
        """The next chunk whole, or ``None`` at the end."""
        self._release()
        if self._ended:
            return None
        item = self._queue.get()
        if item is None:
            self._ended = True
            return None
        self._buf, n = item
        self._view = memoryview(self._buf)[:n]
        self._pos = n
        return self._view

    def read(self, size: int = -1) -> memoryview | bytes:
        while self._pos >= len(self._view):
            if self.next() is None:
                return b""
            self._pos = 0
        end = len(self._view) if size < 0 else self._pos + size
        piece = self._view[self._pos : end]
        self._pos += len(piece)
        return piece

    def _release(self) -> None:
        if self._buf is not None:
            self._view = memoryview(b"")
            self._pos = 0
            self._free.put(self._buf)
            self._buf = None

    def close(self) -> None:
        """Nothing to close: the queue is the digester's (the zstd reader calls this)."""

    def drain(self) -> None:
        """Give back every buffer, up to the end of the queue (after an error too)."""
        while self.next() is not None:
            pass


def stage_layer(
    stream: IO[bytes],
    content: ContentStore,
    what: str = "layer",
    expected_blob: Digest | None = None,
    expected_blob_size: int | None = None,
    expected_diff_id: Digest | None = None,
    progress: Any = None,
) -> StagedLayer:
    """Copy a layer (plain, gzip or zstd tar) into ``tmp/``, reading its bytes once.

    Computes the blob digest and, from the decompressed stream, the DiffID and tar size;
    checks each against what is expected. ``progress``, if given, is called with the
    number of blob bytes read so far.
    """
    reader = PeekableReader(stream)
    compression = detect(reader.peek(8), what)
    blob_algo = Digest(expected_blob).algorithm if expected_blob else "sha256"
    blob_hasher = new_hasher(blob_algo)
    plain = compression is Compression.NONE
    diff_hasher = blob_hasher if plain and blob_algo == "sha256" else new_hasher("sha256")
    chunk_size = CHUNK if plain else COMPRESSED_CHUNK
    digester = _Digester(compression, what, blob_hasher, diff_hasher, chunk_size)
    tmp = fsutil.TempFile(content.tmpdir)
    blob_size = 0
    digester.start()
    syncer = fsutil.BackgroundSync(tmp.file.fileno())  # the disk works while we hash
    try:
        try:
            while digester.error is None:
                buf = digester.free.get()
                n = reader.readinto(buf)
                if not n:
                    digester.free.put(buf)
                    break
                chunk = memoryview(buf)[:n]
                tmp.write(chunk)
                if not plain:
                    blob_hasher.update(chunk)  # the compressed side hashes here
                del chunk
                digester.queue.put((buf, n))
                blob_size += n
                syncer.wrote(n)
                if progress is not None:
                    progress(blob_size)
        finally:
            digester.queue.put(None)
            digester.join()
            syncer.stop()
        if digester.error is not None:
            raise digester.error
        tmp.finish()
        blob_digest = Digest(f"{blob_algo}:{blob_hasher.hexdigest()}")
        diff_id = DiffID(Digest(f"sha256:{diff_hasher.hexdigest()}"))
        if expected_blob_size is not None and blob_size != expected_blob_size:
            raise SizeMismatch(what, expected_blob_size, blob_size)
        if expected_blob is not None and blob_digest != expected_blob:
            raise DigestMismatch(what, expected_blob, blob_digest)
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise DigestMismatch(f"{what}: diff ID", expected_diff_id, diff_id)
        if not _tar_header_ok(digester.head):
            raise InvalidInput(f"{what}: not a tar archive")
    except BaseException:
        tmp.discard()
        raise
    return StagedLayer(
        StagedBlob(tmp.path, blob_digest, blob_size), compression, diff_id, digester.tar_size
    )


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
