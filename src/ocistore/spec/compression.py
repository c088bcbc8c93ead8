"""Layer compression: recognize plain, gzip and zstd by their magic bytes, and undo it.

Two ways to decompress, both streaming:

* :func:`decompressed_reader` wraps a readable stream (for reading a stored layer back,
  or spooling a compressed archive);
* :class:`Decompressor` is fed chunks (for hashing a gzip layer while it is copied in, so
  the bytes are read once, and for a layer written into a save). A zstd layer being
  copied in is pulled through ``zstandard``'s stream reader instead (see
  :mod:`ocistore.store.staging`), with :class:`ZstdFrames` telling a cut stream from a whole one.

gzip goes through ``isal`` (ISA-L, much faster than zlib) and zstd through
``zstandard``; both release the GIL.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import IO, Any, Final, cast

from ..errors import InvalidInput

GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_OTHER_MAGIC: Final = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x5d\x00\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
    b"PK\x03\x04": "zip",
}


class Compression(enum.Enum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def media_suffix(self) -> str:
        """The suffix of an OCI layer media type: ``""``, ``"+gzip"`` or ``"+zstd"``."""
        return "" if self is Compression.NONE else f"+{self.value}"


def detect(head: bytes, what: str) -> Compression:
    """The compression of a layer whose first bytes are ``head`` (at least 6 if possible).

    Raises :class:`InvalidInput` naming ``what`` for a compression ocistore cannot read.
    """
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    for magic, name in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise InvalidInput(f"{what}: unsupported compression {name} (plain, gzip or zstd)")
    return Compression.NONE


class PeekableReader:
    """A binary stream whose first bytes can be looked at before it is consumed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buffer = b""

    def peek(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._stream.read(n - len(self._buffer))
            if not chunk:
                break
            self._buffer += chunk
        return self._buffer[:n]

    def read(self, n: int = -1) -> bytes:
        if self._buffer:
            if n < 0:
                data = self._buffer + self._stream.read()
                self._buffer = b""
                return data
            data = self._buffer[:n]
            self._buffer = self._buffer[n:]
            return data
        return self._stream.read(n)

    def readinto(self, buf: bytearray | memoryview) -> int:
        if self._buffer:
            data = self.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return int(readinto(buf))
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()


def decompressed_reader(
    stream: IO[bytes],
    compression: Compression,
    what: str | None = None,
    read_size: int | None = None,
) -> IO[bytes]:
    """A stream of the uncompressed bytes of ``stream``.

    With ``what``, a cut zstd stream raises :class:`InvalidInput` naming it at its end
    (input from outside). Without, nothing tells a cut zstd stream from a whole one:
    for stored blobs, whose reader checks their digest and the DiffID instead.
    ``read_size`` is how much zstd asks of ``stream`` at a time."""
    # Each codec is imported when first needed: listing images pays for neither.
    if compression is Compression.GZIP:
        from isal import igzip

        gz = igzip.IGzipFile(fileobj=stream, mode="rb")  # type: ignore[no-untyped-call]
        return cast(IO[bytes], gz)
    if compression is Compression.ZSTD:
        import zstandard

        source = stream if what is None else _FramesChecked(stream, ZstdFrames(what))
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], source),
            read_size=read_size or zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE,
            read_across_frames=True,
            closefd=True,
        )
        return reader
    return stream


class _FramesChecked:
    """A compressed stream whose bytes pass through :class:`ZstdFrames` on their way
    to the decompressor, which is told of a cut stream by an error at its end."""

    __slots__ = ("_frames", "_stream")

    def __init__(self, stream: IO[bytes], frames: ZstdFrames) -> None:
        self._stream = stream
        self._frames = frames

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._frames.feed(data)
        else:
            self._frames.finish()
        return data

    def close(self) -> None:
        self._stream.close()


class ZstdFrames:
    """Follows the frames of a zstd stream through its compressed bytes, to tell a whole
    stream from a cut one.

    ``zstandard``'s stream reader ends silently where its input ends, even inside a
    frame. This reads only what the format puts between the payloads (frame headers,
    3-byte block headers, checksums, skippable frames) and skips the rest, so it costs a
    few operations per block of up to 128 KiB. :meth:`finish` raises
    :class:`InvalidInput` naming ``what`` unless the bytes ended where a frame does.
    Whether the payloads decode is zstd's to say.
    """

    __slots__ = ("_checksum", "_frames", "_head", "_need", "_skip", "_state", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._state = "magic"  # what the bytes in _head will be, once _need of them came
        self._need = 4
        self._head = b""
        self._skip = 0  # payload bytes to pass over before the next header
        self._checksum = False
        self._frames = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            take = self._need - len(self._head)
            self._head += bytes(view[:take])
            view = view[take:]
            if len(self._head) == self._need:
                head, self._head = self._head, b""
                self._parsed(head)

    def _parsed(self, head: bytes) -> None:
        state = self._state
        if state == "magic":
            if head == ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:
                self._state, self._need = "skippable", 4
            else:
                raise InvalidInput(f"{self._what}: corrupt zstd data: not a zstd frame")
        elif state == "skippable":
            self._frames += 1
            self._skip = int.from_bytes(head, "little")
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            fhd = head[0]
            single_segment = fhd & 0x20
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single_segment else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self._state, self._need = "block", 3
            self._skip = rest
        elif state == "block":
            header = int.from_bytes(head, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                raise InvalidInput(f"{self._what}: corrupt zstd data: reserved block type")
            self._skip = 1 if kind == 1 else size  # an RLE block holds its one byte
            if last:
                self._frames += 1
                if self._checksum:
                    self._skip += 4
                self._state, self._need = "magic", 4

    def finish(self) -> None:
        if self._frames == 0 or self._skip or self._head or self._state != "magic":
            raise InvalidInput(f"{self._what}: truncated zstd data")


#: The most uncompressed bytes :meth:`Decompressor.chunks` hands over at a time (about).
OUT_MAX: Final = 1 << 20
_MIN_STEP: Final = 64


class Decompressor:
    """Incremental decompression: feed compressed chunks, get uncompressed ones back.

    Handles multi-member gzip and multi-frame zstd. :meth:`finish` raises
    :class:`InvalidInput` naming ``what`` when the stream ended early.

    Memory stays bounded whatever the ratio (a megabyte of gzip or zstd can hold a
    gigabyte of zeros): gzip output comes :data:`OUT_MAX` at a time; zstd input is handed
    over in slices sized from the ratio seen so far (growing at most twofold per step),
    which bounds each piece unless the ratio jumps within a slice.
    """

    def __init__(self, compression: Compression, what: str) -> None:
        self.compression = compression
        self._what = what
        self._zstd: Any = None
        self._obj: Any = self._new()
        #: Bytes after a finished member that cannot be judged yet (half a gzip magic).
        self._held = b""
        #: Zero padding seen after the last gzip member: only more zeros may follow.
        self._padding = False
        #: How much zstd input to decompress at once: starts small, follows the ratio.
        self._step = _MIN_STEP

    def _new(self) -> Any:
        # Each codec is imported when first needed: a plain load imports neither.
        if self.compression is Compression.GZIP:
            from isal import isal_zlib

            return isal_zlib.decompressobj(wbits=31)
        if self.compression is Compression.ZSTD:
            if self._zstd is None:
                import zstandard

                self._zstd = zstandard.ZstdDecompressor()
            return self._zstd.decompressobj()  # one per frame: the context is reused
        return None

    def feed(self, data: bytes | memoryview) -> bytes:
        """All the uncompressed bytes ``data`` gives, at once."""
        return b"".join(self.chunks(data))

    def chunks(self, data: bytes | memoryview) -> Iterator[bytes | memoryview]:
        """The uncompressed bytes ``data`` gives, in pieces of about :data:`OUT_MAX`."""
        if self._obj is None:
            yield data
            return
        view = memoryview(self._held + bytes(data)) if self._held else memoryview(data)
        self._held = b""
        try:
            while view:
                if self._obj.eof:
                    # A member (frame) ended; what follows starts another one. Chunk
                    # boundaries may fall anywhere, even inside the next magic.
                    if self.compression is Compression.GZIP and (
                        self._padding or bytes(view[:2]) != GZIP_MAGIC
                    ):
                        rest = bytes(view)
                        if GZIP_MAGIC.startswith(rest) and not self._padding:
                            self._held = rest
                            return
                        # Trailing zero padding after the last member, as some tools
                        # write it.
                        if rest.strip(b"\x00"):
                            raise InvalidInput(f"{self._what}: trailing garbage after gzip data")
                        self._padding = True
                        return
                    self._obj = self._new()
                if self.compression is Compression.GZIP:
                    # zlib's interface bounds the output exactly.
                    out = self._obj.decompress(view, OUT_MAX)
                    rest = self._obj.unused_data if self._obj.eof else self._obj.unconsumed_tail
                    view = memoryview(rest)
                else:
                    # zstandard's does not: slice the input by the ratio seen so far.
                    piece = view[: self._step]
                    out = self._obj.decompress(piece)
                    # A frame's end leaves the rest of the piece unused: step back over
                    # it in the view rather than copy it (frames may be many and small).
                    unused = len(self._obj.unused_data) if self._obj.eof else 0
                    view = view[len(piece) - unused :]
                    ratio = len(out) // len(piece) + 1
                    self._step = max(_MIN_STEP, min(2 * len(piece), OUT_MAX // ratio))
                if out:
                    yield out
        except InvalidInput:
            raise
        except Exception as e:  # zlib.error, isal_zlib.error, zstandard.ZstdError
            raise InvalidInput(
                f"{self._what}: corrupt {self.compression.value} data: {e}"
            ) from None

    def finish(self) -> bytes:
        if self._obj is None:
            return b""
        if self._held or not self._obj.eof:
            raise InvalidInput(f"{self._what}: truncated {self.compression.value} data")
        return b""
