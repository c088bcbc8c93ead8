"""Compression: magic bytes, streaming decompression of gzip and zstd."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import pytest
import zstandard

from ocistore.errors import InvalidInput
from ocistore.spec.compression import (
    OUT_MAX,
    Compression,
    Decompressor,
    PeekableReader,
    ZstdFrames,
    decompressed_reader,
    detect,
)

DATA_A = b"first member " * 1000
DATA_B = b"second member " * 777


def feed_all(d: Decompressor, data: bytes, chunk: int) -> bytes:
    out = b""
    for i in range(0, len(data), chunk):
        out += d.feed(data[i : i + chunk])
    out += d.finish()
    return out


# -- detection ---------------------------------------------------------------------------


def test_detect_known_magic() -> None:
    assert detect(gzip.compress(b"x"), "f") is Compression.GZIP
    assert detect(zstandard.ZstdCompressor().compress(b"x"), "f") is Compression.ZSTD
    assert detect(b"\x00" * 512, "f") is Compression.NONE
    assert detect(b"", "f") is Compression.NONE
    assert detect(b"usr/bin/" + b"\x00" * 100, "f") is Compression.NONE


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (bz2.compress(b"x"), "bzip2"),
        (lzma.compress(b"x"), "xz"),
        (b"PK\x03\x04rest", "zip"),
        (b"\x04\x22\x4d\x18rest", "lz4"),
    ],
)
def test_detect_refuses_other_compressions(data: bytes, name: str) -> None:
    with pytest.raises(InvalidInput, match=rf"layer\.tar: unsupported compression {name}"):
        detect(data, "layer.tar")


def test_media_suffix() -> None:
    assert Compression.NONE.media_suffix == ""
    assert Compression.GZIP.media_suffix == "+gzip"
    assert Compression.ZSTD.media_suffix == "+zstd"


def test_peekable_reader_peek_does_not_consume() -> None:
    r = PeekableReader(io.BytesIO(b"abcdefgh"))
    assert r.peek(3) == b"abc"
    assert r.peek(5) == b"abcde"
    assert r.read(2) == b"ab"
    buf = bytearray(4)
    assert r.readinto(buf) == 3 and bytes(buf[:3]) == b"cde"
    assert r.read() == b"fgh"
    assert r.read() == b""
    assert PeekableReader(io.BytesIO(b"ab")).peek(10) == b"ab"


# -- incremental decompression -----------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_decompressor_multi_member_gzip(chunk: int) -> None:
    data = gzip.compress(DATA_A) + gzip.compress(DATA_B)
    assert feed_all(Decompressor(Compression.GZIP, "g"), data, chunk) == DATA_A + DATA_B


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_decompressor_multi_frame_zstd(chunk: int) -> None:
    c = zstandard.ZstdCompressor()
    data = c.compress(DATA_A) + c.compress(DATA_B) + c.compress(b"")
    assert feed_all(Decompressor(Compression.ZSTD, "z"), data, chunk) == DATA_A + DATA_B


def test_decompressor_plain_passes_through() -> None:
    d = Decompressor(Compression.NONE, "p")
    assert d.feed(memoryview(b"abc")) == b"abc"
    assert d.finish() == b""


def test_decompressor_gzip_zero_padding_allowed() -> None:
    data = gzip.compress(DATA_A) + b"\x00" * 1024
    assert feed_all(Decompressor(Compression.GZIP, "g"), data, 1000) == DATA_A


def test_decompressor_gzip_trailing_garbage_refused() -> None:
    data = gzip.compress(DATA_A) + b"garbage!"
    with pytest.raises(InvalidInput, match=r"g\.tar: trailing garbage"):
        feed_all(Decompressor(Compression.GZIP, "g.tar"), data, 1 << 20)


@pytest.mark.parametrize("cut", [5, 30, -9, -1])
def test_truncated_gzip_is_invalid_input(cut: int) -> None:
    data = gzip.compress(DATA_A)[:cut]
    with pytest.raises(InvalidInput, match=r"layer\.tgz: truncated gzip data"):
        feed_all(Decompressor(Compression.GZIP, "layer.tgz"), data, 100)


def test_truncated_zstd_is_invalid_input() -> None:
    data = zstandard.ZstdCompressor().compress(DATA_A)[:-5]
    with pytest.raises(InvalidInput, match=r"l\.zst: truncated zstd data"):
        feed_all(Decompressor(Compression.ZSTD, "l.zst"), data, 100)


def test_corrupt_gzip_is_invalid_input() -> None:
    data = bytearray(gzip.compress(DATA_A))
    data[20:40] = b"\xff" * 20
    with pytest.raises(InvalidInput, match=r"bad\.gz: corrupt gzip data"):
        feed_all(Decompressor(Compression.GZIP, "bad.gz"), bytes(data), 100)


def test_corrupt_zstd_is_invalid_input() -> None:
    data = bytearray(zstandard.ZstdCompressor().compress(DATA_A))
    data[4:12] = b"\xff" * 8
    with pytest.raises(InvalidInput, match=r"bad\.zst"):
        feed_all(Decompressor(Compression.ZSTD, "bad.zst"), bytes(data), 100)


# -- reading a stored blob back ----------------------------------------------------------


def test_decompressed_reader_gzip_multi_member() -> None:
    data = gzip.compress(DATA_A) + gzip.compress(DATA_B)
    assert decompressed_reader(io.BytesIO(data), Compression.GZIP).read() == DATA_A + DATA_B


def test_decompressed_reader_zstd_multi_frame() -> None:
    c = zstandard.ZstdCompressor()
    data = c.compress(DATA_A) + c.compress(DATA_B)
    r = decompressed_reader(io.BytesIO(data), Compression.ZSTD)
    out = b""
    while chunk := r.read(1000):
        out += chunk
    assert out == DATA_A + DATA_B


def test_decompressed_reader_plain_is_the_stream() -> None:
    s = io.BytesIO(b"plain")
    assert decompressed_reader(s, Compression.NONE) is s


def test_gzip_padding_then_data_is_garbage() -> None:
    data = gzip.compress(DATA_A) + b"\x00" * 10 + gzip.compress(DATA_B)
    with pytest.raises(InvalidInput, match="trailing garbage"):
        feed_all(Decompressor(Compression.GZIP, "g"), data, 1)


def test_gzip_half_a_magic_at_the_end_is_truncated() -> None:
    data = gzip.compress(DATA_A) + b"\x1f"
    with pytest.raises(InvalidInput, match="truncated gzip"):
        feed_all(Decompressor(Compression.GZIP, "g"), data, 1)


def test_decompressor_accepts_memoryview_chunks() -> None:
    data = gzip.compress(DATA_A) + gzip.compress(DATA_B)
    d = Decompressor(Compression.GZIP, "g")
    view = memoryview(data)
    out = b"".join(d.feed(view[i : i + 333]) for i in range(0, len(data), 333))
    assert out + d.finish() == DATA_A + DATA_B


@pytest.mark.parametrize("kind", [Compression.GZIP, Compression.ZSTD])
def test_pieces_stay_small_whatever_the_ratio(kind: Compression) -> None:
    """64 MiB of zeros compresses to a few kilobytes; decompressing it must not hand the
    whole of it over at once (a layer of zeros would otherwise fill memory)."""
    data = bytes(64 << 20)
    packed = (
        gzip.compress(data, 1)
        if kind is Compression.GZIP
        else zstandard.ZstdCompressor().compress(data)
    )
    d = Decompressor(kind, "zeros")
    sizes = [len(out) for out in d.chunks(packed)]
    d.finish()
    assert sum(sizes) == len(data)
    assert max(sizes) <= 2 * OUT_MAX


# -- following zstd frames -------------------------------------------------------------


def _zstd_streams() -> dict[str, bytes]:
    """zstd streams of every shape the frame format allows that the tests meet."""
    data = bytes(range(256)) * 900 + b"\x00" * 300_000  # literal blocks and RLE-able runs
    out: dict[str, bytes] = {}
    for level in (1, 19):
        for checksum in (True, False):
            for size in (True, False):
                c = zstandard.ZstdCompressor(
                    level=level, write_checksum=checksum, write_content_size=size
                )
                out[f"level{level}-checksum{checksum}-size{size}"] = c.compress(data)
    streamed = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(streamed, closefd=False) as w:
        for i in range(8):
            w.write(bytes([i]) * 70_000 + DATA_A)
    out["streamed"] = streamed.getvalue()
    out["empty"] = zstandard.ZstdCompressor().compress(b"")
    out["raw-blocks"] = zstandard.ZstdCompressor(level=1).compress(bytes(range(256)) * 4)
    skippable = b"\x5a\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    out["multi-frame-and-skippable"] = (
        skippable + out["level1-checksumTrue-sizeTrue"] + out["empty"] + skippable
    )
    return out


ZSTD_STREAMS = _zstd_streams()


def follow(data: bytes, chunk: int) -> None:
    frames = ZstdFrames("l.zst")
    for i in range(0, len(data), chunk):
        frames.feed(memoryview(data)[i : i + chunk])
    frames.finish()


@pytest.mark.parametrize("name", ZSTD_STREAMS)
@pytest.mark.parametrize("chunk", [1, 3, 4096, 1 << 20])
def test_zstd_frames_accept_every_whole_stream(name: str, chunk: int) -> None:
    follow(ZSTD_STREAMS[name], chunk)


def _frame_ends(data: bytes) -> set[int]:
    """Where the frames of a stream end: a stream cut there is whole, only shorter."""
    ends = set()
    for i in range(1, len(data) + 1):
        try:
            follow(data[:i], 1 << 20)
        except InvalidInput:
            continue
        ends.add(i)
    return ends


@pytest.mark.parametrize("name", ["level1-checksumTrue-sizeTrue", "streamed", "empty"])
def test_zstd_frames_refuse_a_stream_cut_anywhere_in_a_frame(name: str) -> None:
    data = ZSTD_STREAMS[name]
    # Every cut in the first and last 64 bytes (headers, block headers, checksum) and
    # every 997th byte in between.
    cuts = {*range(min(64, len(data))), *range(max(0, len(data) - 64), len(data))}
    cuts |= set(range(0, len(data), 997))
    for cut in sorted(cuts):
        with pytest.raises(InvalidInput, match=r"l\.zst: truncated zstd data"):
            follow(data[:cut], 4096)


def test_zstd_frames_accept_a_cut_only_where_a_frame_ends() -> None:
    parts = [ZSTD_STREAMS["raw-blocks"], ZSTD_STREAMS["empty"], ZSTD_STREAMS["raw-blocks"]]
    data = b"".join(parts)
    ends = {len(parts[0]), len(parts[0]) + len(parts[1]), len(data)}
    assert _frame_ends(data) == ends


def test_zstd_frames_refuse_what_is_not_a_frame() -> None:
    data = ZSTD_STREAMS["empty"] + b"garbage!"
    with pytest.raises(InvalidInput, match=r"l\.zst: corrupt zstd data: not a zstd frame"):
        follow(data, 4096)


def test_decompressed_reader_refuses_a_cut_zstd_stream_when_told_what_it_reads() -> None:
    data = zstandard.ZstdCompressor().compress(DATA_A * 10)[:-7]
    reader = decompressed_reader(io.BytesIO(data), Compression.ZSTD, "app.tar.zst")
    with pytest.raises(InvalidInput, match=r"app\.tar\.zst: truncated zstd data"):
        while reader.read(4096):
            pass
