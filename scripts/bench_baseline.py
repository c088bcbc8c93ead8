#!/usr/bin/env python3
"""The physical baseline of a load, run by ``scripts/bench.py`` as a child process.

Reads every byte of an image input once and hashes it with :func:`hashlib.sha256`; where a
blob is compressed (gzip or zstd, told by its magic) it also decompresses it (``isal`` for
gzip, ``zstandard`` for zstd) and hashes the decompressed stream. One thread, 1 MiB
buffers, nothing written. This is the least work a load that verifies every digest has to
do, so ``ocistore / baseline`` shows how close a load is to the limit.

Usage: ``bench_baseline.py [--write DIR] PATH`` where PATH is a tar archive
(docker-archive, oci-archive) or a directory (OCI image layout). With ``--write`` it also
writes each blob as read to a file in DIR and fsyncs it (and DIR): the least a store that
keeps what it receives, durably, has to do. Prints the bytes read and decompressed.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol, cast

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Readable(Protocol):
    def readinto(self, b: Any) -> int | None: ...


class _Bounded(io.RawIOBase):
    """``size`` bytes of ``f`` from its current position."""

    def __init__(self, f: io.RawIOBase, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(b)[: min(len(b), self._left)]
        n = self._f.readinto(view)
        if not n:
            raise EOFError("truncated input")
        self._left -= n
        return int(n)


class _Sink:
    """Where the bytes of a blob go as they are read: a hash and, optionally, a file."""

    def __init__(self, out: IO[bytes] | None) -> None:
        self.hash = hashlib.sha256()
        self.out = out

    def update(self, data: bytes | memoryview) -> None:
        self.hash.update(data)
        if self.out is not None:
            self.out.write(data)


class _Tee(io.RawIOBase):
    """Feeds what is read through it to a sink."""

    def __init__(self, f: Readable, sink: _Sink) -> None:
        self._f = f
        self._sink = sink

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b) or 0
        if n:
            self._sink.update(memoryview(b)[:n])
        return n


def _drain(f: Readable, sink: _Sink | None) -> int:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(view)
        if not n:
            return total
        if sink is not None:
            sink.update(view[:n])
        total += n


def hash_blob(f: Readable, head: bytes, out: IO[bytes] | None) -> int:
    """Hash a blob (writing it to ``out`` if given) and, if compressed, its decompressed
    stream; returns the number of decompressed bytes (0 for a plain blob)."""
    sink = _Sink(out)
    if head.startswith(GZIP_MAGIC):
        from isal import igzip

        raw = _Tee(f, sink)
        gz = igzip.IGzipFile(fileobj=io.BufferedReader(raw, CHUNK), mode="rb")  # type: ignore[no-untyped-call]
        with gz:
            n = _drain(gz, None)
        _drain(raw, None)  # anything after the gzip stream still counts
        return n
    if head.startswith(ZSTD_MAGIC):
        import zstandard

        raw = _Tee(f, sink)
        reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], raw), read_size=CHUNK, read_across_frames=True
        )
        n = _drain(reader, None)
        _drain(raw, None)
        return n
    _drain(f, sink)
    return 0


def blobs_of_tar(path: Path) -> Iterator[tuple[int, io.RawIOBase]]:
    with open(path, "rb", buffering=0) as raw, tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isreg():
                raw.seek(member.offset_data)
                yield member.size, _Bounded(raw, member.size)


def blobs_of_dir(path: Path) -> Iterator[tuple[int, io.RawIOBase]]:
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb", buffering=0) as f:
                    yield os.fstat(f.fileno()).st_size, f


def main(argv: list[str]) -> int:
    write_dir: Path | None = None
    if len(argv) == 3 and argv[0] == "--write":
        write_dir = Path(argv[1])
        argv = argv[2:]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
    blobs = blobs_of_dir(path) if path.is_dir() else blobs_of_tar(path)
    read = decompressed = 0
    for i, (size, f) in enumerate(blobs):
        out = open(write_dir / f"blob-{i}", "xb", buffering=0) if write_dir else None  # noqa: SIM115
        # Peek at the magic without consuming it: the sink sees the blob from byte 0.
        br = io.BufferedReader(f, CHUNK)
        head = br.peek(4)[:4] if size else b""
        decompressed += hash_blob(br, head, out)
        read += size
        if out is not None:
            os.fsync(out.fileno())
            out.close()
    if write_dir is not None:
        fd = os.open(write_dir, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    print(f"read {read} bytes, decompressed {decompressed} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
