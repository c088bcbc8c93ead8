"""What ``serve`` sees of the store: repositories, their tags and digests, the manifest of
each image and the blobs each repository may give, kept between requests and built again
when another process changed the store.

A snapshot is built from the store's index and references (no config is read); whether
it is still the store is three ``stat`` calls a request: the references file, the index
and the index's dirty marker, which every writer replaces or creates (a ``load``, ``rmi``,
``tag`` or ``gc`` in another process is seen by the next request). Manifests are read
when first asked for and kept by digest: they are content-addressed, so they never go
stale. An image that came without a manifest (a Docker archive, an import, a commit) gets
an OCI manifest generated from its stored blobs, once, and kept in the store, so that its
digest never changes, whatever later versions of ocistore would generate.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from ..errors import InvalidInput, NotFound, OcistoreError
from ..spec import mediatypes as mt
from ..spec.digest import Digest, ImageID
from ..spec.limits import MAX_MANIFEST
from ..spec.reference import Reference
from ..store.images import ImageRecord
from ..store.store import Store

__all__ = ["Repo", "ServedManifest", "StoreView"]

DOCKER_DOMAIN: Final = "docker.io"


class ServedManifest(NamedTuple):
    raw: bytes
    media_type: str
    digest: Digest
    #: The digest of the manifest's ``subject`` (OCI 1.1), if it has one.
    subject: str | None
    artifact_type: str | None
    annotations: dict[str, str] | None
    #: The digest of the config it names, if it names one.
    config: Digest | None = None


@dataclass
class Repo:
    """One repository of the store: ``domain`` and ``path`` as Docker normalizes them."""

    domain: str
    path: str
    tags: dict[str, ImageID] = field(default_factory=dict)
    digests: dict[Digest, ImageID] = field(default_factory=dict)
    _blobs: set[str] | None = None

    @property
    def name(self) -> str:
        """The name the catalog lists: the path for Docker Hub, else ``domain/path``."""
        return self.path if self.domain == DOCKER_DOMAIN else f"{self.domain}/{self.path}"

    @property
    def images(self) -> set[ImageID]:
        return set(self.tags.values()) | set(self.digests.values())


def _stat_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class _Snapshot:
    def __init__(self, store: Store, signature: object) -> None:
        self.signature = signature
        self.repos: dict[tuple[str, str], Repo] = {}
        self.records: dict[ImageID, ImageRecord] = {}
        for record, refs in store.list_images(all_images=True):
            self.records[record.id] = record
            for ref in refs:
                repo = self.repos.get((ref.domain, ref.path))
                if repo is None:
                    repo = self.repos[ref.domain, ref.path] = Repo(ref.domain, ref.path)
                if ref.digest is not None:
                    repo.digests[ref.digest] = record.id
                elif ref.tag is not None:
                    repo.tags[ref.tag] = record.id
        #: The manifest each image is served with, once asked for.
        self.manifests: dict[ImageID, ServedManifest | None] = {}


class StoreView:
    """The store as ``serve`` answers from it (used from the event loop's thread only)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        root = str(store.root)
        self._watched = (
            os.path.join(root, "repositories.json"),
            os.path.join(root, "imagedb", "index.json"),
            os.path.join(root, "imagedb", "index.dirty"),
        )
        self._snapshot: _Snapshot | None = None
        #: Manifests by digest: content-addressed, valid for as long as the process runs.
        self._by_digest: dict[Digest, ServedManifest] = {}

    def _signature(self) -> object:
        return tuple(_stat_key(p) for p in self._watched)

    def refresh(self) -> None:
        """Build the snapshot again if another process changed the store: called once at
        the start of every request (three ``stat`` calls), so that each request sees the
        store as it was when it came, and what a request does (its answer) is one
        snapshot's."""
        signature = self._signature()
        snap = self._snapshot
        if snap is None or snap.signature != signature:
            self._snapshot = _Snapshot(self.store, signature)

    def current(self) -> _Snapshot:
        if self._snapshot is None:
            self.refresh()
        assert self._snapshot is not None
        return self._snapshot

    @property
    def generation(self) -> object:
        """Changes whenever the store does (what a page of the store is cached by)."""
        self.refresh()
        return self.current().signature

    # -- repositories -------------------------------------------------------------------

    def repo(self, domain: str, path: str) -> Repo | None:
        return self.current().repos.get((domain, path))

    def repositories(self) -> list[Repo]:
        return sorted(self.current().repos.values(), key=lambda r: r.name)

    # -- manifests ----------------------------------------------------------------------

    def manifest_of(self, image_id: ImageID) -> ServedManifest | None:
        """The manifest ``image_id`` is served with (``None`` if the store cannot give one:
        the image went, or its blobs are damaged)."""
        snap = self.current()
        if image_id in snap.manifests:
            return snap.manifests[image_id]
        served: ServedManifest | None
        try:
            served = self._load_manifest(image_id)
        except OcistoreError:
            served = None
        self.refresh()  # (keeping a generated manifest changed the store)
        self.current().manifests[image_id] = served
        return served

    def _load_manifest(self, image_id: ImageID) -> ServedManifest:
        kept = self.store.kept_manifest(image_id)
        if kept is not None:
            cached = self._by_digest.get(kept)
            if cached is not None:
                return cached
            return self._remember(self.store.read_blob(kept), kept)
        from ..formats.oci_layout import image_manifest

        raw = image_manifest(self.store, image_id).raw
        if self.store.writable:
            with contextlib.suppress(OcistoreError):
                self.store.keep_manifest(image_id, raw)
        return self._remember(raw, None)

    def _remember(self, raw: bytes, digest: Digest | None) -> ServedManifest:
        from ..spec.digest import digest_bytes

        if digest is None:
            digest = digest_bytes(raw)
        served = describe_manifest(raw, digest)
        self._by_digest[digest] = served
        return served

    def find_manifest(self, repo: Repo, reference: str | Digest) -> ServedManifest | None:
        """The manifest ``repo`` has under a tag or a digest."""
        if not isinstance(reference, Digest):
            image_id = repo.tags.get(reference)
            return None if image_id is None else self.manifest_of(image_id)
        cached = self._by_digest.get(reference)
        for image_id in repo.images:
            served = self.manifest_of(image_id)
            if served is not None and served.digest == reference:
                return served
        if cached is not None and reference in repo.digests:
            return cached
        return None

    def manifests(self, repo: Repo) -> list[ServedManifest]:
        out = [self.manifest_of(i) for i in sorted(repo.images)]
        return [m for m in out if m is not None]

    # -- blobs --------------------------------------------------------------------------

    def has_blob(self, repo: Repo, digest: Digest) -> bool:
        """Whether an image of ``repo`` uses the blob (its config, a layer's blob, a blob
        it keeps, its manifest)."""
        if repo._blobs is None:
            repo._blobs = self._blobs_of(repo)
        return str(digest) in repo._blobs

    def _blobs_of(self, repo: Repo) -> set[str]:
        snap = self.current()
        blobs: set[str] = set()
        for image_id in repo.images:
            record = snap.records.get(image_id)
            if record is None:
                continue
            blobs.add(str(image_id))
            blobs.update(record.blob_list.split())
            for chain in record.chains:
                with contextlib.suppress(OcistoreError):
                    blobs.add(str(self.store.layers.get(chain).blob.digest))
        return blobs

    def open_blob(self, digest: Digest) -> int:
        """A read-only descriptor of a stored blob or an image's config (:class:`NotFound`
        if it is not there)."""
        paths = [self.store.content.path(digest)]
        if digest in self.current().records:  # (configs are kept beside the images)
            paths.insert(0, self.store.backend.content_path(digest))
        for path in paths:
            try:
                return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
        raise NotFound(f"blob {digest} is not in the store")


def describe_manifest(raw: bytes, digest: Digest) -> ServedManifest:
    """A manifest's media type (its own ``mediaType``, else what its config's type says),
    subject and artifact type, for the headers and the referrers API."""
    doc: Any = None
    if len(raw) <= MAX_MANIFEST:
        with contextlib.suppress(ValueError):
            doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise InvalidInput(f"manifest {digest}: not a JSON object")
    media_type = doc.get("mediaType")
    found = doc.get("config")
    config: dict[str, Any] = found if isinstance(found, dict) else {}
    if not isinstance(media_type, str) or not media_type:
        if "manifests" in doc:
            media_type = mt.OCI_INDEX
        elif config.get("mediaType") == mt.DOCKER_CONFIG:
            media_type = mt.DOCKER_MANIFEST
        else:
            media_type = mt.OCI_MANIFEST
    subject = doc.get("subject")
    subject_digest = subject.get("digest") if isinstance(subject, dict) else None
    artifact_type = doc.get("artifactType")
    if not isinstance(artifact_type, str):
        config_type = config.get("mediaType")
        artifact_type = config_type if isinstance(config_type, str) else None
    annotations = doc.get("annotations")
    config_digest: Digest | None = None
    with contextlib.suppress(InvalidInput, TypeError):
        config_digest = Digest(config.get("digest"))  # type: ignore[arg-type]
    return ServedManifest(
        raw,
        media_type,
        digest,
        subject_digest if isinstance(subject_digest, str) else None,
        artifact_type,
        annotations if isinstance(annotations, dict) else None,
        config_digest,
    )


@functools.lru_cache(maxsize=4096)
def normalize(name: str, ns: str | None = None) -> tuple[str, str] | None:
    """The repository ``(domain, path)`` a request's name means, as ``docker pull`` reads
    it (``busybox`` and ``library/busybox`` are Docker Hub's ``library/busybox``); with
    containerd's ``ns``, the name is a path in that registry. (Remembered: clients ask
    for few names, many times.)"""
    from ..spec.reference import parse

    text = f"{ns}/{name}" if ns else name
    try:
        ref: Reference = parse(text)
    except InvalidInput:
        return None
    if ref.tag is not None or ref.digest is not None:
        return None
    return ref.domain, ref.path
