"""The tar writer of ``save``: Go's ``archive/tar`` headers as ``docker save`` writes
them (tarfile's bytes but for the mode's type bits and the device numbers, no record
padding), in order or filled in parallel at known offsets; stored layers copied (and
checked) from plain, gzip and zstd blobs."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard
from test_docker_archive import TAR_A, TAR_B, TAR_C, classic, load_built, save, tar_read

from ocistore.errors import CorruptStore, DigestMismatch, OcistoreError
from ocistore.formats.docker_archive import write_docker_archive
from ocistore.formats.tarwriter import MemberSink, OutputFile, TarWriter, output_file
from ocistore.store import Store

LONG = "d/" + "x" * 120 + "/file"  # needs a PAX header
FILES = {
    "a.txt": b"alpha\n",
    "dir/empty": b"",
    "dir/sub/big.bin": os.urandom(3 << 20) + b"tail",
    LONG: b"long name\n",
    "d/caf\u00e9": b"non-ascii name\n",
    "z/exact": b"b" * 1024,
}


def go_header(block: bytes) -> bytes:
    """A USTAR header tarfile wrote, as Go's ``archive/tar`` writes it for ``docker save``:
    the file type bits in the mode field, zero device numbers, the checksum made again."""
    b = bytearray(block)
    kind = b[156:157]
    bits = {b"0": stat.S_IFREG, b"5": stat.S_IFDIR, b"2": stat.S_IFLNK}.get(bytes(kind), 0)
    b[100:108] = b"%07o\0" % (int(b[100:107], 8) | bits)
    b[329:345] = b"0000000\x000000000\x00"
    b[148:156] = b" " * 8
    b[148:155] = b"%06o\0" % sum(b)
    return bytes(b)


def go_tar(data: bytes) -> bytes:
    """What ``docker save`` writes for the members of tarfile's archive ``data``: each
    USTAR header as :func:`go_header` makes it (PAX headers are tarfile's), the end after
    two zero blocks."""
    out = bytearray()
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
    for m in members:
        header = data[m.offset : m.offset_data]
        out += header[:-512] + go_header(header[-512:])
        out += data[m.offset_data : m.offset_data + -(-m.size // 512) * 512]
    return bytes(out + bytes(1024))


def reference(mtime: int = 0) -> bytes:
    """What Go writes for the members (tarfile's bytes, as Go's headers)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:

        def info(name: str, kind: bytes, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
            i = tarfile.TarInfo(name)
            i.type, i.size, i.mode, i.mtime, i.uid, i.gid, i.uname, i.gname = (
                kind,
                size,
                mode,
                mtime,
                0,
                0,
                "root",
                "root",
            )
            return i

        seen: set[str] = set()
        for name, data in FILES.items():
            parts = name.split("/")[:-1]
            for k in range(1, len(parts) + 1):
                d = "/".join(parts[:k])
                if d not in seen:
                    seen.add(d)
                    tf.addfile(info(d, tarfile.DIRTYPE, mode=0o755))
            tf.addfile(info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))
        link = info("z/link", tarfile.SYMTYPE, mode=0o777)
        link.linkname = "../a.txt"
        tf.addfile(link)
    return go_tar(out.getvalue())


def fill_with(data: bytes, step: int = 100_000):
    def fill(sink: MemberSink) -> None:
        for i in range(0, len(data), step):
            sink.write(memoryview(data)[i : i + step])

    return fill


def write(tar: TarWriter) -> None:
    for name, data in FILES.items():
        if len(data) > 1000:
            tar.add_file(name, len(data), fill_with(data))
        else:
            tar.add_bytes(name, data)
    tar.add_symlink("z/link", "../a.txt")


def test_stream_is_tarfiles_bytes() -> None:
    out = io.BytesIO()
    with TarWriter(out) as tar:
        write(tar)
    assert out.getvalue() == reference()


def test_headers_are_gos() -> None:
    """The fields of a member as ``docker save`` writes them (checked against Docker's
    own bytes in ``test_docker_engine_save``): type bits, ``root``, and no padding to a
    10 KiB record after the two zero blocks."""
    out = io.BytesIO()
    with TarWriter(out) as tar:
        tar.add_dir("d", mtime=1_796_181_701)
        tar.add_bytes("d/f", b"x" * 3, mtime=1_796_181_702)
        tar.add_symlink("d/l", "f", mtime=1_796_181_703)
    data = out.getvalue()
    assert len(data) == 6 * 512 and data.endswith(bytes(1024))  # 3 headers, 1 data block
    heads = [data[0:512], data[512:1024], data[1536:2048]]
    assert [h[100:108] for h in heads] == [b"0040755\0", b"0100644\0", b"0120777\0"]
    assert [int(h[136:147], 8) for h in heads] == [1_796_181_701, 1_796_181_702, 1_796_181_703]
    for h in heads:
        assert h[257:265] == b"ustar\x0000"
        assert h[265:269] == h[297:301] == b"root"
        assert h[329:345] == b"0000000\x000000000\x00"
        assert int(h[148:154], 8) == sum(h[:148]) + 8 * 32 + sum(h[156:])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [(m.name, m.mode, m.uname) for m in tf] == [
            ("d", 0o40755, "root"),
            ("d/f", 0o100644, "root"),
            ("d/l", 0o120777, "root"),
        ]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_output_file_is_filled_in_parallel_to_the_same_bytes(tmp_path: Path, threads: int) -> None:
    path = tmp_path / "out.tar"
    with OutputFile(path, "wb") as f, TarWriter(f, threads=threads) as tar:
        write(tar)
    assert path.read_bytes() == reference()


@pytest.mark.parametrize("bad_member", [0, 1])
def test_a_failed_fill_leaves_no_output_and_names_the_member(
    tmp_path: Path, bad_member: int
) -> None:
    """Whichever member fails (the small one, filled last, or the large one, filled
    first, which cancels the rest), the error names it and nothing is left behind."""

    def fill(n: int):
        def fill(sink: MemberSink) -> None:
            sink.write(b"x" * 10)
            if n == bad_member:
                raise DigestMismatch(f"member {n}", "sha256:a", "sha256:b")
            sink.write(b"x" * (sink.size - 10))

        return fill

    dest = tmp_path / "out.tar"
    with (
        pytest.raises(DigestMismatch, match=f"member {bad_member}"),
        output_file(str(dest)) as f,
        TarWriter(f, threads=2) as tar,
    ):
        tar.add_file("m0", 100, fill(0))
        tar.add_file("m1", 200, fill(1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("to_file", [False, True])
@pytest.mark.parametrize(("give", "message"), [(5, "shorter"), (15, "longer")])
def test_a_fill_of_the_wrong_length_is_an_error(
    tmp_path: Path, to_file: bool, give: int, message: str
) -> None:
    if to_file:
        with (
            OutputFile(tmp_path / "out.tar", "wb") as f,
            pytest.raises(OcistoreError, match=f"m: stored content is {message}"),
            TarWriter(f) as tar,
        ):
            tar.add_file("m", 10, fill_with(b"y" * give, step=give))
        return
    out = io.BytesIO()
    with (
        pytest.raises(OcistoreError, match=f"m: stored content is {message}"),
        TarWriter(out) as tar,
    ):
        tar.add_file("m", 10, fill_with(b"y" * give, step=give))
    assert not out.getvalue().endswith(bytes(1024))  # no end-of-archive marker


# -- stored layers --------------------------------------------------------------------------


def gzip_members(data: bytes) -> bytes:
    """Two gzip members and zero padding, as some tools write them."""
    half = len(data) // 2
    return gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0) + bytes(100)


BLOBS = {
    "plain": TAR_A,
    "gzip": gzip.compress(TAR_B, mtime=0),
    "gzip members": gzip_members(TAR_C),
    "zstd": zstandard.ZstdCompressor().compress(TAR_A),
}


@pytest.fixture
def loaded(store: Store, tmp_path: Path) -> Store:
    layers = [TAR_A, TAR_B, TAR_C]
    blobs = [BLOBS["plain"], BLOBS["gzip"], BLOBS["gzip members"]]
    members, _ = classic(layers, tags=["example/app:1"], blobs=blobs)
    load_built(store, tmp_path, members)
    members, _ = classic(
        [TAR_B, TAR_A], tags=["example/zst:1"], blobs=[BLOBS["gzip"], BLOBS["zstd"]]
    )
    load_built(store, tmp_path, members)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_layers_saved_in_parallel_are_the_stored_tars(loaded: Store, tmp_path: Path) -> None:
    names = ["example/app:1", "example/zst:1"]
    streamed = save(loaded, names)
    dest = tmp_path / "saved.tar"
    with output_file(str(dest)) as f:
        write_docker_archive(loaded, names, f)
    assert dest.read_bytes() == streamed
    with tarfile.open(fileobj=io.BytesIO(streamed)) as tf:
        names = [m.name for m in tf.getmembers() if m.name.endswith("/layer.tar") and m.isfile()]
    layers = {tar_read(streamed, name) for name in names}
    assert layers == {TAR_A, TAR_B, TAR_C}


@pytest.mark.parametrize("to_file", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_changed_layer_blob_is_refused(
    loaded: Store, tmp_path: Path, to_file: bool, which: int
) -> None:
    image = loaded.images.get(loaded.resolve("example/app:1"))
    blob = loaded.layers.get(image.config.chain_ids[which]).blob.digest
    path = loaded.content.path(blob)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "saved.tar"
    with pytest.raises((DigestMismatch, CorruptStore), match=blob.hex):
        if to_file:
            with output_file(str(dest)) as f:
                write_docker_archive(loaded, ["example/app:1"], f)
        else:
            write_docker_archive(loaded, ["example/app:1"], io.BytesIO())
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]


def test_output_through_a_symlink_or_into_a_fifo_keeps_them(loaded: Store, tmp_path: Path) -> None:
    """-o names a file to write: a symlink stays a link (its target gets the archive), a
    FIFO or a device is written to, never replaced by a regular file."""
    import threading

    names = ["example/app:1"]
    expected = save(loaded, names)
    target = tmp_path / "real.tar"
    link = tmp_path / "link.tar"
    link.symlink_to(target)
    with output_file(str(link)) as f:
        write_docker_archive(loaded, names, f)
    assert link.is_symlink() and target.read_bytes() == expected

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    with output_file(str(fifo)) as f:
        write_docker_archive(loaded, names, f)
    reader.join()
    assert got == [expected]
    assert not fifo.is_file() and fifo.exists()
