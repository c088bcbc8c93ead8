"""Staging a layer: its bytes copied into ``tmp/`` once, hashed as they are (the blob)
and decompressed and hashed again (the DiffID), outside any lock.

:func:`stage_layer` reads the stream on the caller's thread and writes it to ``tmp/``
while a second thread decompresses and hashes the tar; the result is a
:class:`StagedLayer` that the publish step commits under the store lock
(:meth:`~ocistore.store.layers.LayerStore.publish`).
"""

from __future__ import annotations

import queue
import threading
from typing import IO, Any, NamedTuple, cast

from ..errors import DigestMismatch, InvalidInput, SizeMismatch
from ..spec.compression import (
    Compression,
    Decompressor,
    PeekableReader,
    decompressed_reader,
    detect,
)
from ..spec.digest import CHUNK, DiffID, Digest, new_hasher
from . import fsutil
from .content import ContentStore, StagedBlob


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
