"""The layer store: registering tars (plain, gzip, zstd), chains, reading back, tampering."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from util import make_tar, snapshot, unchanged

from ocistore.errors import CorruptStore, DigestMismatch, InvalidInput, NotFound
from ocistore.spec.compression import Compression
from ocistore.spec.config import MAX_LAYER_DEPTH
from ocistore.spec.digest import EMPTY_TAR_DIGEST, Digest, chain_id, digest_bytes
from ocistore.store import Store
from ocistore.store.layers import LayerStore


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def plain(data: bytes) -> bytes:
    return data


COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Compression]] = {
    "plain": (plain, Compression.NONE),
    "gzip": (gzip.compress, Compression.GZIP),
    "zstd": (zstd, Compression.ZSTD),
}

TAR_A = make_tar({"etc/a": b"alpha\n", "bin/tool": b"\x7fELF" + b"x" * 3000})
TAR_B = make_tar({"etc/b": b"bravo\n"})
EMPTY_TAR = b"\x00" * 1024


def read_tar(layers: LayerStore, chain: Digest, chunk: int = 1 << 16) -> bytes:
    out = b""
    with layers.open_tar(chain) as f:  # type: ignore[arg-type]
        while data := f.read(chunk):
            out += data
    return out


def overwrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_register(store: Store, kind: str) -> None:
    compress, compression = COMPRESSORS[kind]
    blob = compress(TAR_A)
    layer = store.register_layer(io.BytesIO(blob))
    assert layer.diff_id == digest_bytes(TAR_A)
    assert layer.chain_id == layer.diff_id  # a bottom layer's chain is its diff
    assert layer.parent is None
    assert layer.size == len(TAR_A)
    assert layer.blob.digest == digest_bytes(blob)
    assert layer.blob.size == len(blob)
    assert layer.blob.compression is compression
    # The blob is kept as it came, and the record survives a fresh open.
    assert store.content.path(layer.blob.digest).read_bytes() == blob
    again = Store(store.root).layers.get(layer.chain_id)
    assert again == layer
    assert read_tar(store.layers, layer.chain_id) == TAR_A
    assert list(store.tmpdir.iterdir()) == []


def test_register_empty_tar(store: Store) -> None:
    layer = store.register_layer(io.BytesIO(EMPTY_TAR))
    assert layer.diff_id == EMPTY_TAR_DIGEST
    assert layer.size == 1024


def test_parent_chain(store: Store) -> None:
    bottom = store.register_layer(io.BytesIO(TAR_A))
    top = store.register_layer(io.BytesIO(gzip.compress(TAR_B)), bottom.chain_id)
    assert top.diff_id == digest_bytes(TAR_B)
    assert top.chain_id == chain_id([digest_bytes(TAR_A), digest_bytes(TAR_B)])
    assert top.chain_id == digest_bytes(f"{bottom.chain_id} {top.diff_id}".encode())
    assert top.parent == bottom.chain_id
    assert top.size == len(TAR_B)
    assert sum(layer.size for layer in store.layers.chain(top.chain_id)) == len(TAR_A) + len(TAR_B)
    assert [layer.chain_id for layer in store.layers.chain(top.chain_id)] == [
        bottom.chain_id,
        top.chain_id,
    ]
    assert store.layers.depth(top.chain_id) == 2
    assert sorted(store.layers.walk()) == sorted([bottom.chain_id, top.chain_id])
    # The same diff on another parent is another chain.
    alone = store.register_layer(io.BytesIO(TAR_B))
    assert alone.chain_id == alone.diff_id != top.chain_id
    assert alone.parent is None


def test_unknown_parent_is_not_found(store: Store) -> None:
    missing = digest_bytes(b"no such layer")
    before = snapshot(store.root)
    with pytest.raises(NotFound, match=missing):
        store.register_layer(io.BytesIO(TAR_A), missing)  # type: ignore[arg-type]
    assert list(store.tmpdir.iterdir()) == []
    assert store.layers.walk() == []
    assert list(store.content.walk()) == []
    assert not (store.root / "layerdb" / "sha256").exists() or not any(
        (store.root / "layerdb" / "sha256").iterdir()
    )
    assert {k for k in snapshot(store.root) if k not in before} <= {
        "lock",
        "imagedb",
        "imagedb/index.json",
    }


def test_same_chain_twice_returns_the_existing(store: Store) -> None:
    first = store.register_layer(io.BytesIO(TAR_A))
    blobs = set(store.content.walk())
    second = store.register_layer(io.BytesIO(gzip.compress(TAR_A)))
    assert second == first
    assert second.blob.compression is Compression.NONE  # the first blob is kept
    assert set(store.content.walk()) == blobs  # the gzip copy was dropped
    assert list(store.tmpdir.iterdir()) == []
    third = store.register_layer(io.BytesIO(TAR_A))
    assert third == first


def test_depth_limit(store: Store) -> None:
    parent = None
    with store.transaction():  # one publish step for all, to keep the test fast
        for _ in range(MAX_LAYER_DEPTH - 1):
            parent = store.register_layer(io.BytesIO(EMPTY_TAR), parent).chain_id
    parent = store.register_layer(io.BytesIO(EMPTY_TAR), parent).chain_id  # the 125th
    assert store.layers.depth(parent) == MAX_LAYER_DEPTH
    assert Store(store.root).layers.depth(parent) == MAX_LAYER_DEPTH
    assert parent is not None
    before = snapshot(store.root)
    with pytest.raises(InvalidInput, match="maximum depth 125"):
        store.register_layer(io.BytesIO(EMPTY_TAR), parent)
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []
    assert len(store.layers.walk()) == MAX_LAYER_DEPTH


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_open_tar_returns_exact_bytes(store: Store, kind: str) -> None:
    compress, _ = COMPRESSORS[kind]
    big = make_tar({"data": os.urandom(3 << 20), "small": b"s"})  # several chunks
    layer = store.register_layer(io.BytesIO(compress(big)))
    assert layer.size == len(big)
    assert read_tar(store.layers, layer.chain_id, chunk=1 << 20) == big
    assert read_tar(store.layers, layer.chain_id, chunk=1000) == big
    with store.layers.open_tar(layer.chain_id) as f:
        buf = bytearray(4096)
        n = f.readinto(buf)  # type: ignore[attr-defined]
        assert bytes(buf[:n]) == big[:n]


def test_open_tar_of_unknown_chain(store: Store) -> None:
    with pytest.raises(NotFound):
        store.layers.open_tar(digest_bytes(b"none"))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_tampered_blob_replaced_by_other_valid_content(store: Store, kind: str) -> None:
    compress, _ = COMPRESSORS[kind]
    layer = store.register_layer(io.BytesIO(compress(TAR_A)))
    other = make_tar({"etc/a": b"ALPHA\n", "bin/tool": b"\x7fELF" + b"y" * 3000})
    assert len(other) == len(TAR_A)
    overwrite(store.content.path(layer.blob.digest), compress(other))
    with pytest.raises(DigestMismatch) as exc:
        read_tar(store.layers, layer.chain_id)
    assert layer.blob.digest in str(exc.value) or layer.diff_id in str(exc.value)


@pytest.mark.parametrize("kind", COMPRESSORS)
@pytest.mark.parametrize("offset", [0.1, 0.5, 0.0], ids=["early", "middle", "trailer"])
def test_tampered_blob_flipped_byte(store: Store, kind: str, offset: float) -> None:
    """A corrupted byte anywhere (header, deflate/zstd data, trailer) is a digest
    mismatch naming the blob, never a decompressor's own exception."""
    compress, _ = COMPRESSORS[kind]
    blob = compress(make_tar({"f": os.urandom(20000)}))
    layer = store.register_layer(io.BytesIO(blob))
    data = bytearray(blob)
    pos = int(len(data) * offset) if offset else len(data) - 3
    data[pos] ^= 0xFF
    overwrite(store.content.path(layer.blob.digest), bytes(data))
    with pytest.raises(DigestMismatch, match=layer.blob.digest):
        read_tar(store.layers, layer.chain_id)
    problems = store.fsck()
    assert any(layer.blob.digest in p for p in problems)


def test_truncated_stored_blob(store: Store) -> None:
    blob = gzip.compress(TAR_A)
    layer = store.register_layer(io.BytesIO(blob))
    overwrite(store.content.path(layer.blob.digest), blob[: len(blob) // 2])
    with pytest.raises(DigestMismatch):
        read_tar(store.layers, layer.chain_id)


def test_tampered_layer_record_is_corrupt_store(store: Store) -> None:
    layer = store.register_layer(io.BytesIO(TAR_A))
    path = store.layers.root / "sha256" / layer.chain_id.hex / "layer.json"
    record = json.loads(path.read_bytes())
    record["diff_id"] = digest_bytes(b"other")
    path.write_text(json.dumps(record))
    fresh = Store(store.root)
    with pytest.raises(CorruptStore, match=layer.chain_id.hex):
        fresh.layers.get(layer.chain_id)
    path.write_text("{not json")
    with pytest.raises(CorruptStore):
        Store(store.root).layers.get(layer.chain_id)


def test_walk_skips_names_that_are_not_digests(store: Store) -> None:
    layer = store.register_layer(io.BytesIO(TAR_A))
    (store.layers.root / "sha256" / "junk").mkdir()
    (store.layers.root / "sha256" / ("A" * 64)).mkdir()
    assert store.layers.walk() == [layer.chain_id]


BAD_INPUTS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "not a tar archive"),
    "text": (b"hello world\n" * 100, "not a tar archive"),
    "short": (b"x" * 100, "not a tar archive"),
    "gzip-of-text": (gzip.compress(b"hello world\n" * 100), "not a tar archive"),
    "zstd-of-text": (zstd(b"hello world\n" * 100), "not a tar archive"),
    "bad-checksum": (TAR_A[:148] + b"0000000\x00" + TAR_A[156:], "not a tar archive"),
    "bzip2": (bz2.compress(TAR_A), "unsupported compression bzip2"),
    "truncated-gzip": (gzip.compress(TAR_A)[:-20], "truncated gzip"),
    "truncated-zstd": (zstd(TAR_A)[:-20], "truncated zstd"),
    "corrupt-gzip": (gzip.compress(TAR_A)[:10] + b"\xff" * 50, "corrupt gzip"),
}


def test_zstd_layer_cut_anywhere_is_refused(store: Store) -> None:
    # zstandard's reader ends quietly where its input does; the frames are followed to
    # tell. Cuts in the frame header, in block headers, in the data and in the checksum.
    data = zstandard.ZstdCompressor(write_checksum=True).compress(TAR_A * 50)
    for cut in sorted({4, 5, 6, 9, 12, 20, len(data) // 2, len(data) - 4, len(data) - 1}):
        with unchanged(store), pytest.raises(InvalidInput, match=r"truncated zstd data"):
            store.register_layer(io.BytesIO(data[:cut]))


def test_zstd_layer_of_several_frames_and_a_skippable_one(store: Store) -> None:
    c = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"abc"
    half = len(TAR_A) // 2
    data = c.compress(TAR_A[:half]) + skippable + c.compress(TAR_A[half:])
    layer = store.register_layer(io.BytesIO(data))
    assert layer.diff_id == digest_bytes(TAR_A)
    with store.layers.open_tar(layer.chain_id) as f:
        assert f.read() == TAR_A


def test_zstd_layer_corrupt_in_the_middle(store: Store) -> None:
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(TAR_A * 50))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    with unchanged(store), pytest.raises(InvalidInput, match=r"corrupt zstd data"):
        store.register_layer(io.BytesIO(bytes(data)))


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_refused_and_store_unchanged(store: Store, name: str) -> None:
    existing = store.register_layer(io.BytesIO(TAR_B))
    before = snapshot(store.root)
    data, message = BAD_INPUTS[name]
    with pytest.raises(InvalidInput, match=message):
        store.register_layer(io.BytesIO(data))
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []
    assert store.layers.walk() == [existing.chain_id]


def test_refused_import_names_the_source(store: Store) -> None:
    with pytest.raises(InvalidInput, match=r"tarball rootfs\.tar\.bz2: unsupported compression"):
        store.import_tarball(io.BytesIO(bz2.compress(TAR_A)), source="rootfs.tar.bz2")


def test_a_digester_that_fails_before_its_first_chunk_fails_the_staging(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The digesting thread cannot even start decompressing (here: zstandard will not
    # import). The reading thread must get the error, not wait for a free buffer forever.
    import sys
    import threading

    data = zstandard.ZstdCompressor().compress(make_tar({"noise": os.urandom(4 << 20)}))
    monkeypatch.setitem(sys.modules, "zstandard", None)
    outcome: list[BaseException | None] = []

    def stage() -> None:
        try:
            store.register_layer(io.BytesIO(data))
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=stage, daemon=True)
    worker.start()
    worker.join(120)  # a guard against the deadlock, not a measure of speed
    assert not worker.is_alive(), "staging waited forever for the digesting thread"
    (error,) = outcome
    assert isinstance(error, ImportError)
    assert list(store.tmpdir.iterdir()) == []
