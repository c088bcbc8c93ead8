"""Staging a layer: its bytes copied into ``tmp/`` once, hashed as they are (the blob)
and, decompressed, hashed again (the DiffID), and its tar headers followed (Docker's
size of the layer), outside any lock.

:func:`stage_layer` streams a layer through a :class:`~ocistore.store.content.BlobWriter`:
the calling thread reads, writes and hashes the blob while a second thread decompresses
and hashes the tar (a plain layer's tar is its blob, whose digest is its DiffID: the
calling thread only reads and writes, and the second hashes the blob); the second thread
also follows the tar's headers. The headers are read by the one tar scanner
(:class:`~ocistore.spec.tarscan.TarScanner`, as a layer), which passes over file data
by arithmetic: a header's work per member, none per byte. The result
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
from ..spec.tarscan import TarScanner
from .content import ContentStore, Pieces, StagedBlob

__all__ = ["StagedLayer", "stage_layer"]


class StagedLayer(NamedTuple):
    """A layer copied into ``tmp/`` and hashed, not yet visible in the store."""

    blob: StagedBlob
    compression: Compression
    diff_id: DiffID
    #: The tar's length.
    size: int
    #: Docker's size of the layer: the sum of its members' header sizes
    #: (:attr:`~ocistore.spec.tarscan.TarScanner.content_size`).
    content_size: int

    def discard(self) -> None:
        self.blob.discard()


#: Compressed input is read in half-megabyte pieces. The decompressor hands its output
#: over about a megabyte at a time whatever the ratio, so the piece size only sets the
#: overhead per piece (smaller pieces made a zstd load slower: ``docs/design.md``).
COMPRESSED_CHUNK = 512 << 10


class _TarDigest:
    """Decompresses a layer's pieces and follows the tar they make, on the blob writer's
    second thread: its headers (:attr:`scanner`), its size and, unless the blob is the
    tar and its digest the DiffID (``hash_tar`` false), its DiffID."""

    def __init__(self, compression: Compression, what: str, hash_tar: bool = True) -> None:
        self.compression = compression
        self.what = what
        self.hasher = new_hasher("sha256") if hash_tar else None
        self.size = 0
        self.scanner = TarScanner(what, layer=True)
        #: What the headers were found to be, if not a tar: told once the blob's digest
        #: and the DiffID are checked (a blob not what it should be explains the rest),
        #: so the pieces are still read to their end.
        self.not_a_tar: InvalidInput | None = None

    def __call__(self, pieces: Pieces) -> None:
        if self.compression is Compression.ZSTD:
            self._pull_zstd(pieces)
        else:
            self._feed(pieces)
        self.finish()

    def finish(self) -> None:
        """The tar ended here (see :attr:`not_a_tar`)."""
        if self.not_a_tar is None:
            try:
                self.scanner.finish()
            except InvalidInput as e:
                self.not_a_tar = e

    def got(self, out: bytes | memoryview) -> None:
        if self.hasher is not None:
            self.hasher.update(out)
        n = len(out)
        self.size += n
        scanner = self.scanner
        if scanner.skip >= n:  # file data, passed over by arithmetic
            scanner.passed(n)
        elif not scanner.ended and self.not_a_tar is None:
            try:
                scanner.feed(out)
            except InvalidInput as e:
                self.not_a_tar = e

    def _feed(self, pieces: Pieces) -> None:
        decompressor = Decompressor(self.compression, self.what)
        while (piece := pieces.next()) is not None:
            # A plain piece comes back as it is; a gzip one a megabyte at a time.
            for out in decompressor.chunks(piece):
                self.got(out)
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
                self.got(view[:n])
        except zstandard.ZstdError as e:
            raise InvalidInput(f"{self.what}: corrupt zstd data: {e}") from None

    @property
    def diff_id(self) -> DiffID:
        assert self.hasher is not None
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

    Computes the blob digest and, from the decompressed stream, the DiffID, the tar size
    and Docker's size of the layer (its headers, which must make a tar as Docker reads
    a layer: one line naming the layer and the byte otherwise); checks each against what
    is expected (the blob first). ``progress``, if given, is
    called with the number of blob bytes read so far; what it raises stops the staging.
    Whatever fails, nothing is left in ``tmp/``.
    """
    reader = PeekableReader(stream)
    compression = detect(reader.peek(8), what)
    plain = compression is Compression.NONE
    with content.writer(expected_blob, expected_blob_size, what) as blob:
        # A plain layer is its own tar: its blob digest is its DiffID (when both are
        # sha256), hashed by the second thread as it follows the headers.
        same = plain and blob.digest.algorithm == "sha256"
        tar = _TarDigest(compression, what, hash_tar=not same)
        chunk_size = CHUNK if plain else COMPRESSED_CHUNK
        if same:  # the second thread hashes the blob and shows it to the scanner
            blob.copy_from(reader, None, progress, chunk_size, look_at=tar.got)
            tar.finish()
        else:
            blob.copy_from(reader, tar, progress, chunk_size)
        blob_digest = blob.verify()
        diff_id = DiffID(blob_digest) if same else tar.diff_id
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise DigestMismatch(f"{what}: diff ID", expected_diff_id, diff_id)
        if tar.not_a_tar is not None:
            raise tar.not_a_tar
        staged = blob.finish()
    return StagedLayer(staged, compression, diff_id, tar.size, tar.scanner.content_size)
