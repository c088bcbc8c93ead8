"""Digests: ``algorithm:hex`` strings, parsed, validated and computed while streaming.

The grammar is the OCI image-spec's::

    digest    ::= algorithm ":" encoded
    algorithm ::= component (separator component)*
    component ::= [a-z0-9]+
    separator ::= [+._-]
    encoded   ::= [a-zA-Z0-9=_-]+

ocistore computes and stores sha256 and accepts sha512 where content is verified. A
registered algorithm's encoded part must be lowercase hex of the right length. A
:class:`Digest` is validated when it is made, so one can safely become a path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import IO, Final, NewType

from ..errors import DigestMismatch, InvalidInput, SizeMismatch

_GRAMMAR: Final = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX_LENGTH: Final = {"sha256": 64, "sha512": 128}
_HEX: Final = re.compile(r"^[a-f0-9]+$")

#: Buffer size for streaming copies and hashing.
CHUNK: Final = 1 << 20


class Digest(str):
    """A validated ``algorithm:hex`` digest. Compares and hashes as its string."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        if not isinstance(value, str) or not _GRAMMAR.match(value):
            raise InvalidInput(f"invalid digest {value!r}: not of the form algorithm:hex")
        algorithm, _, encoded = value.partition(":")
        length = _HEX_LENGTH.get(algorithm)
        if length is None:
            raise InvalidInput(f"invalid digest {value!r}: unsupported algorithm {algorithm!r}")
        if len(encoded) != length or not _HEX.match(encoded):
            raise InvalidInput(
                f"invalid digest {value!r}: {algorithm} needs {length} lowercase hex characters"
            )
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    def short(self, length: int = 12) -> str:
        """The first ``length`` hex characters, as ``docker images`` shows IDs."""
        return self.hex[:length]

    @classmethod
    def trusted(cls, value: str) -> Digest:
        """A digest from the store's own records, already validated when written."""
        return str.__new__(cls, value)

    @classmethod
    def is_valid(cls, value: str) -> bool:
        try:
            cls(value)
        except InvalidInput:
            return False
        return True


#: The sha256 of an image config's exact bytes.
ImageID = NewType("ImageID", Digest)
#: The sha256 of a layer's uncompressed tar stream.
DiffID = NewType("DiffID", Digest)
#: The identity of a layer together with every layer below it.
ChainID = NewType("ChainID", Digest)

#: 1024 NUL bytes: the empty tar archive.
EMPTY_TAR_DIGEST: Final = DiffID(
    Digest("sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef")
)


def new_hasher(algorithm: str = "sha256") -> hashlib._Hash:
    if algorithm not in _HEX_LENGTH:
        raise InvalidInput(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = "sha256") -> Digest:
    h = new_hasher(algorithm)
    h.update(data)
    return Digest(f"{algorithm}:{h.hexdigest()}")


def digest_stream(stream: IO[bytes], algorithm: str = "sha256") -> tuple[Digest, int]:
    """Hash a stream to its end; returns the digest and the number of bytes read."""
    h = new_hasher(algorithm)
    size = hash_rest(stream, h)
    return Digest(f"{algorithm}:{h.hexdigest()}"), size


def hash_rest(stream: IO[bytes], hasher: hashlib._Hash) -> int:
    """Feed what is left of ``stream`` to ``hasher``, a chunk at a time into one buffer;
    returns the number of bytes."""
    size = 0
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        return size
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := readinto(buf):
        hasher.update(view[:n])
        size += n
    return size


def chain_id(diff_ids: list[DiffID] | list[Digest] | list[str]) -> ChainID | None:
    """The ChainID of a stack of layers, bottom first; ``None`` for no layers.

    ``C(0) = DiffID(0)`` and ``C(n) = sha256(C(n-1) + " " + DiffID(n))``.
    """
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else None


def chain_ids(diff_ids: list[DiffID] | list[Digest] | list[str]) -> list[ChainID]:
    """The ChainID of every prefix of a stack of layers, bottom first."""
    out: list[ChainID] = []
    for diff in diff_ids:
        out.append(make_chain_id(out[-1] if out else None, DiffID(Digest(diff))))
    return out


def make_chain_id(parent: ChainID | None, diff_id: DiffID) -> ChainID:
    """The ChainID of a layer on top of ``parent``: its DiffID alone at the bottom."""
    if parent is None:
        return ChainID(Digest(diff_id))
    return ChainID(digest_bytes(f"{parent} {diff_id}".encode()))


def check_bytes(data: bytes, digest: Digest, what: str) -> bytes:
    """``data``, if it hashes to ``digest``; else :class:`DigestMismatch` naming ``what``."""
    got = digest_bytes(data, Digest(digest).algorithm)
    if got != digest:
        raise DigestMismatch(what, digest, got)
    return data


class VerifyingReader:
    """Wraps a binary stream and checks its digest (and size) when it reaches the end.

    The check runs the moment a read returns no more bytes, so a consumer that reads to
    the end cannot miss a mismatch. ``what`` names the content in the error.
    """

    def __init__(
        self,
        stream: IO[bytes],
        expected: Digest,
        what: str,
        expected_size: int | None = None,
    ) -> None:
        self._stream = stream
        self._expected = Digest(expected)
        self._hasher = new_hasher(self._expected.algorithm)
        self._what = what
        self._expected_size = expected_size
        self.size = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._got(data, n != 0)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        n = int(readinto(buf) or 0)
        self._got(memoryview(buf)[:n], len(buf) != 0)  # hashed where it was read
        return n

    def _got(self, data: bytes | memoryview, asked: bool) -> None:
        """Account for what a read gave; nothing, when something was asked for, is the
        end: the check runs then."""
        if data:
            self._hasher.update(data)
            self.size += len(data)
            if self._expected_size is not None and self.size > self._expected_size:
                raise SizeMismatch(self._what, self._expected_size, self.size)
        elif asked:
            self.check()

    def check(self) -> None:
        """Compare what was read with the expected digest and size (once, at the end)."""
        if self._checked:
            return
        self._checked = True
        if self._expected_size is not None and self.size != self._expected_size:
            raise SizeMismatch(self._what, self._expected_size, self.size)
        got = f"{self._expected.algorithm}:{self._hasher.hexdigest()}"
        if got != self._expected:
            raise DigestMismatch(self._what, self._expected, got)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(CHUNK):
            yield chunk
