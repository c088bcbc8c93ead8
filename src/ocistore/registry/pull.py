"""Pull: a registry's image into the store, through the one way in.

:func:`remote_images` reads what a reference names: the manifest or index (checked
against the digest asked for, or the registry's ``Docker-Content-Digest``), the
platform's manifest from an index (default: this machine, with the variant rules of
``load --platform``; every platform with ``all_platforms``), each manifest fetched by
digest and checked, its config fetched and checked. Docker schema 1 manifests (signed or
not) are turned into an image as Docker turns them
(:mod:`ocistore.spec.legacy.schema1`), so the image ID is Docker's. :func:`pull` gives
the images to :meth:`~ocistore.store.Store.add_images` as sources whose layers stream
from the registry while the store stages them (several at once, each checked against
its digest, size and DiffID, resumed with ``Range`` if a connection drops). Nothing is
published unless every layer arrived whole.

The image is tagged with the reference pulled (a pull by tag), and given the digest
reference ``NAME@DIGEST`` of what was pulled (the index's digest when the tag names an
index), as Docker records it in ``RepoDigests``. Its manifest is kept, so that a later
push or save gives the same manifest digest.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any, NamedTuple

from ..errors import InvalidInput, NotFound, OcistoreError, SizeMismatch
from ..progress import DOWNLOADING, Progress
from ..spec import mediatypes as mt
from ..spec.descriptor import Descriptor, choose_platform, parse_descriptor
from ..spec.digest import DiffID, Digest, digest_bytes
from ..spec.limits import MAX_CONFIG, MAX_DESCRIPTORS, MAX_LAYER_DEPTH, MAX_MANIFEST, load_json
from ..spec.platform import Platform, host_platform
from ..spec.reference import DEFAULT_TAG, Reference
from ..store.distribution import SeenBlob
from ..store.ingest import ImageSource, LayerSource, LoadedImage
from ..store.store import Store
from .client import Manifest, Repository
from .session import Session

__all__ = ["PullResult", "RemoteImage", "pull", "remote_images"]

#: Layers downloaded at once, at most: one per CPU and at least two (each is also
#: decompressed and hashed as it arrives, so on a fast network the CPUs are what they
#: wait for; on two CPUs two at once were faster than four, and a zstd layer's decoder
#: holds its window: docs/design.md).
PULL_JOBS = 4


def pull_jobs() -> int:
    return max(2, min(PULL_JOBS, os.cpu_count() or 1))


class RemoteImage(NamedTuple):
    """One image a reference names, its manifest and config read and checked."""

    repository: Repository
    #: The manifest of this image (a platform's, when the reference names an index).
    manifest: Manifest
    #: The config's bytes, or (schema 1) the function that makes them from the DiffIDs.
    config: bytes | Callable[[Sequence[DiffID]], bytes]
    #: The layer blobs, bottom first: digest, the size it must have (None: not told) and
    #: media type.
    layers: list[tuple[Digest, int | None, str]]

    @property
    def is_schema1(self) -> bool:
        return not isinstance(self.config, bytes)


class PullResult(NamedTuple):
    reference: Reference
    #: The digest of what the reference named (an index, or the manifest).
    digest: Digest
    images: list[LoadedImage]
    #: Whether the store lacked the image before (Docker's "Downloaded newer image").
    new: bool


def _document(data: bytes, where: str) -> dict[str, Any]:
    doc = load_json(data, f"{where}: manifest", MAX_MANIFEST)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: the manifest is not a JSON object")
    return doc


def manifest_kind(manifest: Manifest, doc: dict[str, Any], where: str) -> str:
    """``index``, ``manifest`` or ``schema1``: from the document's own ``mediaType``, else
    the served Content-Type, else its shape."""
    inner = doc.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise InvalidInput(f"{where}: field mediaType is not a string")
    if doc.get("schemaVersion") == 1:
        return "schema1"
    kind = inner or manifest.media_type
    if kind in mt.INDEX_TYPES:
        return "index"
    if kind in mt.MANIFEST_TYPES:
        return "manifest"
    if kind in mt.DOCKER_SCHEMA1:
        return "schema1"
    if "manifests" in doc:
        return "index"
    if "config" in doc and "layers" in doc:
        return "manifest"
    raise InvalidInput(f"{where}: not an image manifest or index (media type {kind!r})")


def _index_descriptors(doc: dict[str, Any], where: str) -> list[Descriptor]:
    if doc.get("schemaVersion") != 2:
        raise InvalidInput(f"{where}: schemaVersion is {doc.get('schemaVersion')!r}, not 2")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidInput(f"{where}: field manifests is not a list")
    if len(manifests) > MAX_DESCRIPTORS:
        raise InvalidInput(f"{where}: over {MAX_DESCRIPTORS} descriptors")
    return [
        parse_descriptor(m, f"manifests[{i}]", where, need_type=False)
        for i, m in enumerate(manifests)
    ]


def remote_images(
    repo: Repository,
    top: Manifest,
    platform: Platform | None = None,
    all_platforms: bool = False,
) -> list[RemoteImage]:
    """The images ``top`` (a manifest or index the registry served) names."""
    where = repo.where(top.digest)
    doc = _document(top.data, where)
    kind = manifest_kind(top, doc, where)
    if kind == "schema1":
        return [_schema1_image(repo, top, where)]
    if kind == "manifest":
        return [_image(repo, top, doc, where)]
    descs = [d for d in _index_descriptors(doc, where) if d.media_type not in mt.CONFIG_TYPES]
    with_platform = [d for d in descs if d.platform is not None]
    if all_platforms:
        every = [d for d in with_platform if d.platform_value().os != "unknown"] or descs
        # This machine's first: it is the one the reference names in the store.
        first = choose_platform(every, platform or host_platform(), where) if every else None
        chosen = [first] if first is not None else []
        chosen += [d for d in every if d is not first]
    else:
        if with_platform:
            one = choose_platform(with_platform, platform or host_platform(), where)
        elif descs:
            one = descs[0]
        else:
            raise InvalidInput(f"{where}: the index lists no manifests")
        chosen = [one]
    images = []
    for desc in chosen:
        if desc.media_type in mt.INDEX_TYPES:
            raise InvalidInput(f"{where}: {desc.where}: an index inside an index is not pulled")
        m = repo.get_manifest(desc.digest)
        if len(m.data) != desc.size:
            raise SizeMismatch(
                f"{repo.where(desc.digest)} ({where} {desc.where})", desc.size, len(m.data)
            )
        sub_where = repo.where(desc.digest)
        sub = _document(m.data, sub_where)
        if manifest_kind(m, sub, sub_where) != "manifest":
            raise InvalidInput(f"{sub_where}: {desc.where} of {where} is not an image manifest")
        images.append(_image(repo, m, sub, sub_where))
    return images


def _image(repo: Repository, manifest: Manifest, doc: dict[str, Any], where: str) -> RemoteImage:
    if doc.get("schemaVersion") != 2:
        raise InvalidInput(f"{where}: schemaVersion is {doc.get('schemaVersion')!r}, not 2")
    cdesc = parse_descriptor(doc.get("config"), "config", where)
    if cdesc.media_type not in mt.CONFIG_TYPES:
        raise InvalidInput(
            f"{where}: not an image: its config is {cdesc.media_type!r} (an artifact)"
        )
    raw_layers = doc.get("layers") or []
    if not isinstance(raw_layers, list):
        raise InvalidInput(f"{where}: field layers is not a list")
    if len(raw_layers) > MAX_LAYER_DEPTH:
        raise InvalidInput(
            f"{where}: {len(raw_layers)} layers, over the limit of {MAX_LAYER_DEPTH}"
        )
    layers: list[tuple[Digest, int | None, str]] = []
    for i, raw in enumerate(raw_layers):
        d = parse_descriptor(raw, f"layers[{i}]", where)
        if "encrypted" in d.media_type:
            raise InvalidInput(f"{where}: layers[{i}] is encrypted ({d.media_type}): not supported")
        if d.media_type not in mt.LAYER_TYPES:
            raise InvalidInput(
                f"{where}: layers[{i}] has media type {d.media_type!r}, not an image layer type"
            )
        layers.append((d.digest, d.size, d.media_type))
    config = repo.read_blob(cdesc.digest, cdesc.size, MAX_CONFIG, "config")
    return RemoteImage(repo, manifest, config, layers)


def _schema1_image(repo: Repository, top: Manifest, where: str) -> RemoteImage:
    from ..spec.legacy.schema1 import parse_schema1, schema1_config

    parsed = parse_schema1(top.data, where)
    layers: list[tuple[Digest, int | None, str]] = [
        (layer.blob_sum, None, "") for layer in parsed.layers if not layer.throwaway
    ]
    config = functools.partial(schema1_config, parsed)
    return RemoteImage(repo, top, config, layers)


#: Given a layer blob's digest and its download, the stream the store reads instead (a
#: pull-through cache's copy of what it reads, for its clients).
Tee = Callable[[Digest, IO[bytes]], IO[bytes]]


def _layer_source(
    repo: Repository, digest: Digest, size: int | None, tee: Tee | None = None
) -> LayerSource:
    def open_blob() -> AbstractContextManager[IO[bytes]]:
        download: IO[bytes] = repo.open_blob(digest, size)  # type: ignore[assignment]
        return tee(digest, download) if tee is not None else download

    return LayerSource(
        open=open_blob,
        what=repo.where(digest),
        blob_digest=digest,
        blob_size=size,
        key=str(digest),
        status=DOWNLOADING,
    )


def image_sources(
    images: Sequence[RemoteImage], names: Sequence[list[Reference]], tee: Tee | None = None
) -> list[ImageSource]:
    """The sources of the one way in for images read from a registry."""
    sources = []
    for image, refs in zip(images, names, strict=True):
        layers = [_layer_source(image.repository, d, size, tee) for d, size, _ in image.layers]
        sources.append(
            ImageSource(
                config=image.config,
                what=image.repository.where(image.manifest.digest),
                layers=layers,
                tags=list(refs),
                manifest=None if image.is_schema1 else image.manifest.data,
            )
        )
    return sources


def pull(
    store: Store,
    session: Session,
    ref: Reference,
    platform: Platform | None = None,
    all_platforms: bool = False,
    progress: Progress | None = None,
    on_remote: Callable[[Manifest, list[RemoteImage]], None] | None = None,
    tee: Tee | None = None,
) -> PullResult:
    """Pull ``ref`` (``latest`` when it has neither tag nor digest) into ``store``.

    ``on_remote`` is told what the reference named and its images (manifests and
    configs read) before any layer is; ``tee`` sees each layer's download (both for
    ``serve --proxy``)."""
    if ref.tag is None and ref.digest is None:
        ref = ref.with_tag(DEFAULT_TAG)
    repo = session.repository(ref)
    top = repo.get_manifest(ref.digest or ref.tag or DEFAULT_TAG)
    images = remote_images(repo, top, platform, all_platforms)
    if on_remote is not None:
        on_remote(top, images)
    name = ref.name_only()
    names: list[list[Reference]] = []
    for i, image in enumerate(images):
        refs: list[Reference] = []
        if i == 0:
            if ref.tag is not None and ref.digest is None:
                refs.append(ref)
            refs.append(name.with_digest(top.digest))
        elif image.manifest.digest != top.digest:
            # (the first is named by what the reference named, as Docker names it)
            refs.append(name.with_digest(image.manifest.digest))
        names.append(refs)
    new = True
    first = images[0]
    if isinstance(first.config, bytes):
        try:
            store.image(str(digest_bytes(first.config)))
            new = False
        except NotFound:
            pass
    loaded = store.add_images(image_sources(images, names, tee), progress, jobs=pull_jobs())
    _remember(store, images, loaded)
    return PullResult(ref, top.digest, loaded, new)


def _remember(store: Store, images: Sequence[RemoteImage], loaded: Sequence[LoadedImage]) -> None:
    """Record where each layer's blob was pulled from (the store's distribution hints),
    so that a push to another repository of the registry mounts it from there."""
    for image, added in zip(images, loaded, strict=True):
        try:
            diff_ids = store.image(str(added.id)).config.diff_ids
        except OcistoreError:
            continue
        blobs = [d for d, _, _ in image.layers]
        if len(diff_ids) != len(blobs):
            continue  # (never for what a pull gives; a hint is only ever a hint)
        for diff_id, blob in zip(diff_ids, blobs, strict=True):
            store.distribution.add(diff_id, SeenBlob(blob, image.repository.name))
