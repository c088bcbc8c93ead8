"""The image-config backend, with the interface of Docker's ``StoreBackend``.

``imagedb/content/sha256/<hex>`` holds configs, exactly as given: a content store of its
own, written through the same :class:`~ocistore.store.content.BlobWriter` as every
blob. ``imagedb/metadata/sha256/<hex>/<key>`` holds small per-image values, under the
keys named below. The backend computes keys itself: callers never choose where content
goes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

from ..errors import InvalidInput, NotFound
from ..spec.digest import Digest
from . import fsutil
from .content import ContentStore

#: Metadata key: the image's parent image ID (``docker build``'s intermediate images).
PARENT: Final = "parent"
#: Metadata key: the digest of the manifest the image came with (kept in the blob store).
MANIFEST: Final = "manifest"
#: Metadata key: a JSON list of further blobs the image keeps alive (its manifest, the
#: layer blobs it was distributed as when the layer store holds another).
BLOBS: Final = "blobs"
#: Metadata key: when the image was last tagged (RFC 3339 with nanoseconds), Docker's
#: ``lastUpdated``, shown as ``Metadata.LastTagTime``.
LAST_TAGGED: Final = "lastUpdated"


class StoreBackend(Protocol):
    def walk(self, fn: Callable[[Digest], None]) -> None: ...
    def get(self, digest: Digest) -> bytes: ...
    def set(self, data: bytes) -> Digest: ...
    def delete(self, digest: Digest) -> None: ...
    def set_metadata(self, digest: Digest, key: str, data: bytes) -> None: ...
    def get_metadata(self, digest: Digest, key: str) -> bytes: ...
    def delete_metadata(self, digest: Digest, key: str) -> None: ...


def _check_key(key: str) -> str:
    if not key or "/" in key or key in (".", "..") or "\x00" in key:
        raise InvalidInput(f"invalid metadata key {key!r}")
    return key


class FSBackend:
    """A :class:`StoreBackend` on the file system. Every write is atomic and durable."""

    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.root = root
        self.tmpdir = tmpdir
        self.content = ContentStore(root / "content", tmpdir, mode=0o444)
        self.content_dir = root / "content" / "sha256"

    def content_path(self, digest: Digest) -> Path:
        return self.content.path(digest)

    def _metadata_path(self, digest: Digest, key: str | None = None) -> Path:
        d = Digest(digest)
        base = self.root / "metadata" / d.algorithm / d.hex
        return base / _check_key(key) if key is not None else base

    def walk(self, fn: Callable[[Digest], None]) -> None:
        """Call ``fn`` with every stored digest; names that are not digests are skipped.

        An exception from ``fn`` stops the walk and propagates.
        """
        try:
            entries = sorted(e.name for e in os.scandir(self.content_dir))
        except FileNotFoundError:
            return
        for name in entries:
            if Digest.is_valid(f"sha256:{name}"):
                fn(Digest(f"sha256:{name}"))

    def get(self, digest: Digest) -> bytes:
        """The content, re-hashed: a :class:`DigestMismatch` names a tampered config."""
        return self.content.read(digest, f"image config {digest}")

    def exists(self, digest: Digest) -> bool:
        return self.content_path(digest).is_file()

    def set(self, data: bytes) -> Digest:
        if not data:
            raise InvalidInput("image config is empty")
        return self.content.write(data, what="image config")

    def delete(self, digest: Digest) -> None:
        """Remove the metadata, then the content (top-down)."""
        fsutil.remove(self._metadata_path(digest), self.tmpdir)
        fsutil.remove(self.content_path(digest))

    def set_metadata(self, digest: Digest, key: str, data: bytes) -> None:
        if not self.exists(digest):
            raise NotFound(f"image {digest} not found: cannot set metadata {key!r}")
        fsutil.refuse_symlink(self._metadata_path(digest), "image metadata directory")
        fsutil.atomic_write(self._metadata_path(digest, key), data, self.tmpdir)

    def get_metadata(self, digest: Digest, key: str) -> bytes:
        if not self.exists(digest):
            raise NotFound(f"image {digest} not found: no metadata {key!r}")
        try:
            return fsutil.read_own(self._metadata_path(digest, key))
        except FileNotFoundError:
            raise NotFound(f"image {digest} has no metadata {key!r}") from None

    def delete_metadata(self, digest: Digest, key: str) -> None:
        if not self.exists(digest):
            raise NotFound(f"image {digest} not found: no metadata {key!r}")
        fsutil.remove(self._metadata_path(digest, key))
