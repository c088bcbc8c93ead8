"""The content store: blobs (layer blobs as received, manifests) by digest.

``blobs/<algorithm>/<hex>``. A blob is written in ``tmp/`` while it is hashed, checked
against the digest and size it must have, and only then renamed into place (read-only),
so a blob under ``blobs/`` is always whole and always what its name says. Reads can
verify again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from ..errors import NotFound
from ..spec.digest import Digest, VerifyingReader, digest_bytes, read_verified
from . import fsutil


class StagedBlob(NamedTuple):
    """A blob written and hashed in ``tmp/``, not yet visible in the store."""

    path: Path
    digest: Digest
    size: int

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class ContentStore:
    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root = root
        self.tmpdir = tmpdir

    def path(self, digest: Digest) -> Path:
        d = Digest(digest)  # validated before it becomes a path
        return self.root / d.algorithm / d.hex

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None

    def open(self, digest: Digest, verify: bool = True) -> IO[bytes]:
        """Open a blob for reading; with ``verify`` the digest is checked at its end."""
        try:
            f = open(self.path(digest), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        if not verify:
            return f
        return VerifyingReader(f, digest, f"blob {digest}")  # type: ignore[return-value]

    def read(self, digest: Digest) -> bytes:
        """The whole blob, verified (for small blobs: manifests, configs)."""
        return read_verified(self.path(digest), digest, f"blob {digest}")

    def commit(self, staged: StagedBlob) -> Digest:
        """Make a staged blob visible. Committing a blob that exists already succeeds."""
        dest = self.path(staged.digest)
        if dest.exists():
            staged.discard()
            return staged.digest
        os.chmod(staged.path, 0o444)
        fsutil.publish(staged.path, dest)
        return staged.digest

    def write(self, data: bytes) -> Digest:
        """Keep small content (a manifest) in one step; writing a blob that exists succeeds."""
        digest = digest_bytes(data)
        dest = self.path(digest)
        if not dest.exists():
            fsutil.atomic_write(dest, data, self.tmpdir, mode=0o444)
        return digest

    def delete(self, digest: Digest) -> None:
        fsutil.remove(self.path(digest))

    def walk(self) -> Iterator[Digest]:
        """Every blob whose file name is a valid digest; other names are skipped."""
        if not self.root.is_dir():
            return
        for algdir in sorted(self.root.iterdir()):
            if not algdir.is_dir():
                continue
            for entry in os.scandir(algdir):
                if Digest.is_valid(f"{algdir.name}:{entry.name}"):
                    yield Digest(f"{algdir.name}:{entry.name}")
