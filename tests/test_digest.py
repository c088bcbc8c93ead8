"""Digests: moby's public vectors, the OCI grammar, streaming verification."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from ocistore.errors import DigestMismatch, InvalidInput, SizeMismatch
from ocistore.spec.config import parse_config
from ocistore.spec.digest import (
    EMPTY_TAR_DIGEST,
    Digest,
    VerifyingReader,
    chain_id,
    chain_ids,
    digest_bytes,
    digest_stream,
)
from ocistore.store.backend import FSBackend

FOOBAR = "sha256:c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2"
EMPTY_TAR = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
CHAIN_INPUT = [
    "sha256:c6f988f4874bb0add23a778f753c65efe992244e148a1d2ec2a8b664fb66bbd1",
    EMPTY_TAR,
]
CHAIN_OUTPUT = "sha256:c3191d32a37d7159b2e30830937d2e30268ad6c375a773a8994911a3aba9b93f"
CONFIG_BYTES = (
    b'{"comment": "abc", "rootfs": {"type": "layers", "diff_ids": '
    b'["2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"]}}'
)
CONFIG_ID = "sha256:8d25a9c45df515f9d0fe8e4a6b1c64dd3b965a84790ddbcc7954bb9bc89eb993"
HEX64 = "a" * 64
HEX128 = "b" * 128


# -- moby's vectors ----------------------------------------------------------------------


def test_foobar_vector() -> None:
    assert digest_bytes(b"foobar") == FOOBAR
    assert digest_stream(io.BytesIO(b"foobar")) == (FOOBAR, 6)


def test_chain_id_vector() -> None:
    assert chain_id(CHAIN_INPUT) == CHAIN_OUTPUT
    assert chain_ids(CHAIN_INPUT) == [CHAIN_INPUT[0], CHAIN_OUTPUT]
    # By the formula, spelled out.
    manual = "sha256:" + hashlib.sha256(f"{CHAIN_INPUT[0]} {CHAIN_INPUT[1]}".encode()).hexdigest()
    assert manual == CHAIN_OUTPUT


def test_chain_id_edges() -> None:
    assert chain_id([]) is None
    assert chain_ids([]) == []
    assert chain_id([EMPTY_TAR]) == EMPTY_TAR
    three = [*CHAIN_INPUT, FOOBAR]
    expected = digest_bytes(f"{CHAIN_OUTPUT} {FOOBAR}".encode())
    assert chain_id(three) == expected
    with pytest.raises(InvalidInput):
        chain_id(["not-a-digest"])


def test_config_vector_exact_bytes(tmp_path: Path) -> None:
    assert digest_bytes(CONFIG_BYTES) == CONFIG_ID
    # The config backend keys the exact bytes by that ID and gives them back unchanged.
    (tmp_path / "tmp").mkdir()
    backend = FSBackend(tmp_path / "imagedb", tmp_path / "tmp")
    assert backend.set(CONFIG_BYTES) == CONFIG_ID
    assert backend.get(Digest(CONFIG_ID)) == CONFIG_BYTES
    # The same document serialized differently is a different image.
    assert digest_bytes(CONFIG_BYTES.replace(b": ", b":")) != CONFIG_ID
    # moby's vector carries a bare-hex diff ID; ocistore's config validation refuses
    # diff IDs that are not digests, and says which one.
    with pytest.raises(InvalidInput, match=r"rootfs\.diff_ids\[0\]"):
        parse_config(CONFIG_BYTES)
    fixed = CONFIG_BYTES.replace(b'["2c26', b'["sha256:2c26')
    cfg = parse_config(fixed)
    assert cfg.id == digest_bytes(fixed)
    assert cfg.raw == fixed  # never re-serialized
    assert cfg.diff_ids == (
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    )


def test_empty_tar_digest() -> None:
    assert digest_bytes(b"\x00" * 1024) == EMPTY_TAR == EMPTY_TAR_DIGEST


def test_sha512() -> None:
    d = digest_bytes(b"foobar", "sha512")
    assert d == "sha512:" + hashlib.sha512(b"foobar").hexdigest()
    assert d.algorithm == "sha512"
    assert len(d.hex) == 128


# -- the grammar -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [f"sha256:{HEX64}", FOOBAR, f"sha512:{HEX128}"])
def test_valid_digests(value: str) -> None:
    d = Digest(value)
    assert d == value
    assert Digest.is_valid(value)
    assert isinstance(d, str)
    assert f"{d.algorithm}:{d.hex}" == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        HEX64,  # no algorithm
        "sha256:",
        ":" + HEX64,
        "sha256:" + "A" * 64,  # uppercase hex
        "sha256:" + HEX64.upper()[:10] + HEX64[10:],
        "SHA256:" + HEX64,  # uppercase algorithm
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "sha512:" + HEX64,  # wrong length for sha512
        "md5:" + "a" * 32,  # unknown algorithm
        "sha384:" + "a" * 96,
        "foo+bar:" + HEX64,  # grammatical but unknown
        " sha256:" + HEX64,
        "sha256:" + HEX64 + "\n",
        "sha256:../../etc/passwd",
        "sha256:" + "a" * 62 + "/a",
    ],
)
def test_invalid_digests(value: str) -> None:
    assert not Digest.is_valid(value)
    with pytest.raises(InvalidInput, match="invalid digest"):
        Digest(value)


def test_unknown_algorithm_is_named() -> None:
    with pytest.raises(InvalidInput, match="md5"):
        Digest("md5:" + "a" * 32)


def test_digest_helpers() -> None:
    d = Digest(FOOBAR)
    assert d.short() == "c3ab8ff13720"
    assert d.short(4) == "c3ab"
    assert Digest(d) is d
    assert hash(d) == hash(FOOBAR)


def test_digest_stream_without_readinto() -> None:
    class OnlyRead:
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._b.read(min(n, 3) if n > 0 else n)

    assert digest_stream(OnlyRead(b"foobar")) == (FOOBAR, 6)  # type: ignore[arg-type]


# -- verifying while streaming -----------------------------------------------------------


def read_all(r: VerifyingReader, chunk: int = 4) -> bytes:
    out = b""
    while data := r.read(chunk):
        out += data
    return out


def test_verifying_reader_passes_good_content() -> None:
    r = VerifyingReader(io.BytesIO(b"foobar"), Digest(FOOBAR), "thing", expected_size=6)
    assert read_all(r) == b"foobar"
    assert r.size == 6
    r.check()  # idempotent


def test_verifying_reader_digest_mismatch_at_eof() -> None:
    r = VerifyingReader(io.BytesIO(b"foobaz"), Digest(FOOBAR), "blob X")
    assert r.read(3) == b"foo"  # no error before the end
    assert r.read(3) == b"baz"
    with pytest.raises(DigestMismatch) as exc:
        r.read(3)
    assert exc.value.expected == FOOBAR
    assert exc.value.got == digest_bytes(b"foobaz")
    assert "blob X" in str(exc.value)
    assert FOOBAR in str(exc.value)


def test_verifying_reader_mismatch_through_iteration_and_readinto() -> None:
    r = VerifyingReader(io.BytesIO(b"nope"), Digest(FOOBAR), "it")
    with pytest.raises(DigestMismatch):
        list(r)
    r2 = VerifyingReader(io.BytesIO(b"nope"), Digest(FOOBAR), "it")
    buf = bytearray(2)
    with pytest.raises(DigestMismatch):
        while r2.readinto(buf):
            pass


def test_verifying_reader_short_content_is_size_mismatch() -> None:
    r = VerifyingReader(io.BytesIO(b"foo"), Digest(FOOBAR), "short", expected_size=6)
    with pytest.raises(SizeMismatch, match="short: size mismatch: expected 6 bytes, got 3"):
        read_all(r)


def test_verifying_reader_long_content_is_size_mismatch_early() -> None:
    r = VerifyingReader(io.BytesIO(b"foobar" * 10), Digest(FOOBAR), "long", expected_size=6)
    with pytest.raises(SizeMismatch, match="long"):
        r.read(10)  # raises as soon as it passes the size, before the end
    assert isinstance(SizeMismatch("x", 1, 2), DigestMismatch)


def test_verifying_reader_read_zero_does_not_check() -> None:
    r = VerifyingReader(io.BytesIO(b"nope"), Digest(FOOBAR), "it")
    assert r.read(0) == b""  # not the end of the stream
    assert r.read() == b"nope"
    with pytest.raises(DigestMismatch):
        r.read()


def test_verifying_reader_sha512() -> None:
    d = digest_bytes(b"foobar", "sha512")
    assert read_all(VerifyingReader(io.BytesIO(b"foobar"), d, "x")) == b"foobar"
    with pytest.raises(DigestMismatch):
        read_all(VerifyingReader(io.BytesIO(b"foobaz"), d, "x"))
