"""Staging a layer: its bytes copied into ``tmp/`` once, hashed as they are (the blob)
and, decompressed, hashed again (the DiffID), outside any lock.

:func:`stage_layer` streams a layer through a :class:`~ocistore.store.content.BlobWriter`:
the calling thread reads and writes the blob while a second thread decompresses and
hashes the tar (a plain layer's tar is its blob: that thread hashes the blob). The result
is a :class:`StagedLayer` that the publish step commits under the store lock
(:meth:`~ocistore.store.layers.LayerStore.publish`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, NamedTuple, cast

from ..errors import DigestMismatch, InvalidInput
from ..spec.compression import (
    Compression,
    Decompressor,
    PeekableReader,
    decompressed_reader,
    detect,
)
from ..spec.digest import CHUNK, DiffID, Digest, new_hasher
from .content import ContentStore, Pieces, StagedBlob

__all__ = ["StagedLayer", "stage_layer"]


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
#: overhead per piece (smaller pieces made a zstd load slower: ``docs/design.md``).
COMPRESSED_CHUNK = 512 << 10


class _TarDigest:
    """Decompresses a layer's pieces and hashes the tar they make, on the blob writer's
    second thread: its DiffID, its size and its first block."""

    def __init__(self, compression: Compression, what: str) -> None:
        self.compression = compression
        self.what = what
        self.hasher = new_hasher("sha256")
        self.size = 0
        self.head = b""

    def __call__(self, pieces: Pieces) -> None:
        if self.compression is Compression.ZSTD:
            self._pull_zstd(pieces)
        else:
            self._feed(pieces)

    def _got(self, out: bytes | memoryview) -> None:
        self.hasher.update(out)
        self.size += len(out)
        if len(self.head) < 512:
            self.head += bytes(out[: 512 - len(self.head)])

    def _feed(self, pieces: Pieces) -> None:
        decompressor = Decompressor(self.compression, self.what)
        while (piece := pieces.next()) is not None:
            # A plain piece comes back as it is; a gzip one a megabyte at a time.
            for out in decompressor.chunks(piece):
                self._got(out)
            del piece
        decompressor.finish()

    def _pull_zstd(self, pieces: Pieces) -> None:
        """zstd is pulled rather than fed: ``zstandard``'s stream reader decompresses
        straight into one reusable buffer, where its push interface makes a new ``bytes``
        per piece and joins them. A cut stream is told by following its frames
        (``decompressed_reader`` with ``what``)."""
        import zstandard

        out = bytearray(CHUNK)
        view = memoryview(out)
        stream = cast("IO[bytes]", pieces)  # read() is all the reader calls
        reader = decompressed_reader(stream, Compression.ZSTD, self.what, COMPRESSED_CHUNK)
        try:
            while n := reader.readinto(out):  # type: ignore[attr-defined]
                self._got(view[:n])
        except zstandard.ZstdError as e:
            raise InvalidInput(f"{self.what}: corrupt zstd data: {e}") from None

    @property
    def diff_id(self) -> DiffID:
        return DiffID(Digest(f"sha256:{self.hasher.hexdigest()}"))


def stage_layer(
    stream: IO[bytes],
    content: ContentStore,
    what: str = "layer",
    expected_blob: Digest | None = None,
    expected_blob_size: int | None = None,
    expected_diff_id: Digest | None = None,
    progress: Callable[[int], None] | None = None,
) -> StagedLayer:
    """Copy a layer (plain, gzip or zstd tar) into ``tmp/``, reading its bytes once.

    Computes the blob digest and, from the decompressed stream, the DiffID and tar size;
    checks each against what is expected (the blob first). ``progress``, if given, is
    called with the number of blob bytes read so far; what it raises stops the staging.
    Whatever fails, nothing is left in ``tmp/``.
    """
    reader = PeekableReader(stream)
    compression = detect(reader.peek(8), what)
    plain = compression is Compression.NONE
    with content.writer(expected_blob, expected_blob_size, what) as blob:
        # A plain layer is its own tar: its blob digest is its DiffID (when both are
        # sha256), and its first block is read ahead here.
        tar = None if plain and blob.digest.algorithm == "sha256" else _TarDigest(compression, what)
        head = reader.peek(512) if tar is None else b""
        chunk_size = CHUNK if plain else COMPRESSED_CHUNK
        blob.copy_from(reader, tar, progress, chunk_size)
        blob_digest = blob.verify()
        if tar is None:
            diff_id, size = DiffID(blob_digest), blob.offset
        else:
            diff_id, size, head = tar.diff_id, tar.size, tar.head
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise DigestMismatch(f"{what}: diff ID", expected_diff_id, diff_id)
        if not _tar_header_ok(head):
            raise InvalidInput(f"{what}: not a tar archive")
        staged = blob.finish()
    return StagedLayer(staged, compression, diff_id, size)
