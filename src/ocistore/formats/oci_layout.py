"""OCI image layout (a directory) and oci-archive (a tar of one): reading and writing.

Reading (:func:`read_oci_layout`)
---------------------------------

``oci-layout`` must say ``{"imageLayoutVersion": "1.0.0"}``; every descriptor of
``index.json`` is followed, through nested indexes (OCI image index and Docker manifest
list), to image manifests (OCI and Docker v2 schema 2). Every blob a descriptor names is
read from ``blobs/<alg>/<hex>`` (sha256 or sha512) and checked against the descriptor's
digest and size: indexes, manifests and configs when they are read, layers while
the store stages them (:meth:`ocistore.store.Store.add_images`: once, blob digest,
decompression and DiffID in one pass). A missing blob, a digest or size that does not
match, a malformed document or field is refused with a message naming the archive, the
blob and where the descriptor is (``index.json manifests[2] → manifests[0] → layers[1]``).

* Media types. A descriptor with an index type is read as an index, with a manifest type
  as a manifest; a descriptor whose type is neither (``application/vnd.oci.descriptor.v1
  +json``, no type at all) is classified by the document it points at (its own
  ``mediaType``, else the presence of ``manifests`` or ``config``/``layers``), as the
  go-containerregistry test layouts need. A document whose own ``mediaType`` contradicts
  its descriptor (an index where a manifest was announced, or the reverse, or a type that
  is neither) is refused; OCI and Docker manifest types are interchangeable, since they
  have the same shape. Docker
  schema 1 manifests and encrypted layers are refused. A manifest whose config is not an
  image config (an artifact: signatures, attestations, Helm charts) is skipped.
* Layers. The layer media type must be a known layer type (OCI or Docker, plain, gzip,
  zstd, non-distributable/foreign). The compression itself is recognized by the blob's
  magic bytes, not by the media type: when the two disagree the bytes win. That is safe
  because the DiffID in the config is checked on the decompressed stream, so a mislabeled
  blob either yields exactly the layer the config names or is refused. A non-distributable
  (foreign) layer must be in the archive: ocistore never fetches it from its ``urls``.
* Platforms. Inside an image index (any index reached through a descriptor) the manifest
  for ``platform`` (default: this machine, :func:`~ocistore.spec.platform.host_platform`) is
  chosen among the descriptors that carry a ``platform``; an exact variant match is
  preferred. No match is an error naming the index and listing the platforms it has.
  Descriptors without a ``platform`` are each an image of their own. In ``index.json``
  itself every descriptor is an image of its own, except that several descriptors that
  carry a ``platform`` and share one ref name (or have none) are one multi-platform image,
  from which one is chosen the same way. A lone platform-specific manifest in
  ``index.json`` is loaded whatever its platform (there is nothing to choose from).
* Tags. Names come from the annotations of the descriptors in ``index.json`` (nested
  descriptors' annotations are not names, as for skopeo, umoci and containerd):
  as podman (libimage ``nameFromAnnotations``) and containerd do, a full reference in
  ``io.containerd.image.name`` (``docker.io/library/foo:1``) wins; if it has neither tag
  nor digest, a bare-tag ref name is its tag, else it gets ``latest``. Without it,
  ``org.opencontainers.image.ref.name`` is either a full reference (it contains ``/``,
  ``:`` or ``@``: ``docker.io/library/foo:1``, normalized as Docker does) or a bare tag
  (``v1``), which is made a name exactly as ``podman load`` does for an oci-archive
  (libimage ``NormalizeName``): a short name in ``localhost/`` with the ``latest`` tag, so
  ref name ``v1`` loads as ``localhost/v1:latest``. (skopeo has no name of its own to give:
  ``oci:DIR:TAG`` only selects by the ref name.) A name that is not a valid reference is
  ignored: the image still loads, untagged. The same manifest reached twice is loaded
  once, with the names of both paths.
* Every loaded image keeps its manifest bytes (:attr:`ImageSource.manifest`), so a later
  save re-emits the same manifest with the same digest.
* The walk is the one way from manifests to images: skopeo's dir layout
  (:mod:`ocistore.formats.dir_layout`) is read by it too, from its ``manifest.json``
  (:meth:`_LayoutReader.read_root`), with where each blob is and how messages name it
  its own (``_path``, ``_file``, ``_member``, ``_here``, ``_index_at``).

Writing (:func:`write_oci_layout`, :func:`write_oci_archive`)
-------------------------------------------------------------

For every image: if the store kept an OCI manifest for it (:meth:`Store.kept_manifest`)
that manifest is written byte for byte, with the config and the layer blobs it names
(from the content store, verified while copied); a kept Docker v2 manifest is written in
its OCI form (same config and layer blobs, OCI media types), as ``skopeo copy`` to
``oci:`` does, because skopeo and umoci refuse Docker media types in an OCI layout;
otherwise an OCI image manifest is generated
(``application/vnd.oci.image.manifest.v1+json``, config ``…config.v1+json``, layers
``…layer.v1.tar[+gzip|+zstd]`` after the stored blob's compression), serialized compactly
with the fields in the image-spec's Go struct order. Blobs shared by several images are
written once. The output is deterministic: ``oci-layout``, ``index.json``, then the blobs
sorted by path; fixed owners, modes and times (see :class:`~ocistore.formats.tarwriter.TarWriter`).
The choice of manifest (:func:`image_manifest`) and the verified copy of a blob into a
directory (:func:`write_blob`) serve the dir layout's save too.

``index.json`` gets one descriptor per image named on the command line; a name that is a
tag gives the annotations ``org.opencontainers.image.ref.name`` = the tag alone (``1``) and
``io.containerd.image.name`` = the full reference (``docker.io/library/foo:1``). The tag
alone is what skopeo's ``oci:DIR:TAG`` and umoci's ``--image DIR:TAG`` match (they compare
the annotation with ``TAG`` verbatim), what podman and buildah write, and what Docker 25+
``docker save`` (containerd) writes next to the full name; podman, containerd and ocistore
take the full name from ``io.containerd.image.name``. Two repositories saved with the same
tag give two descriptors with the same ref name (as Docker 25 does); ``oci:DIR:TAG`` then
picks the first. A name that is a digest reference gets ``io.containerd.image.name`` only,
an image ID no annotations. A bare repository name selects every tag of that repository,
as ``docker save`` does.

:func:`write_oci_layout` creates the directory (built beside it and renamed into place),
or adds to an existing layout as skopeo and umoci do: blobs are added (an existing blob
file is re-hashed and rewritten if it is damaged), and ``index.json`` is replaced
atomically, with the earlier descriptors kept but those of a name now written (or
identical to one now written), whose place the new descriptor takes (see
:func:`_merge`): the name is the full reference (``lab/a:1`` and ``lab/b:1`` are two
images, though both have ref name ``1``), or, for a descriptor with a bare ref name alone
(skopeo's, umoci's), that ref name. A destination that exists and is neither an OCI
layout nor an empty directory, or a layout whose ``oci-layout`` or ``index.json`` cannot
be read back, is refused with one line naming it, before anything is written into it.

Loading keeps a Docker v2 schema 2 manifest as it came; only writing an OCI layout turns
it into its OCI form (so that manifest's digest differs from the one loaded).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import stat as stat_mod
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

from ..errors import (
    CorruptStore,
    InvalidInput,
    NotFound,
    SizeMismatch,
)
from ..progress import COPYING, SILENT, Progress, task_label
from ..spec import mediatypes as mt
from ..spec.compression import detect
from ..spec.descriptor import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    Descriptor,
    choose_platform,
    parse_descriptor,
)
from ..spec.digest import Digest, ImageID, check_bytes, digest_bytes, digest_stream
from ..spec.limits import (
    MAX_ARCHIVE_JSON,
    MAX_CONFIG,
    MAX_CONFIGS_TOTAL,
    MAX_DESCRIPTORS,
    MAX_IMAGE_NAMES,
    MAX_INDEX_NESTING,
    MAX_LAYER_DEPTH,
    MAX_MANIFEST,
    Budget,
    load_json,
)
from ..spec.platform import Platform, host_platform
from ..spec.reference import Reference, is_tag, parse
from ..store import fsutil
from ..store.images import Image
from ..store.ingest import ImageSource, LayerSource
from ..store.store import Store
from .reader import ArchiveReader, read_bytes, read_json
from .tarwriter import Fill, MemberSink, TarWriter, fill_from

__all__ = [
    "ANNOTATION_CONTAINERD_NAME",
    "ANNOTATION_REF_NAME",
    "is_oci_layout",
    "read_oci_layout",
    "write_oci_archive",
    "write_oci_layout",
]

LAYOUT_FILE: Final = "oci-layout"
INDEX_FILE: Final = "index.json"
LAYOUT_VERSION: Final = "1.0.0"
LAYOUT_BYTES: Final = b'{"imageLayoutVersion":"1.0.0"}'


#: A layout's files, as any output: the umask's modes, never writable by others.
OUTPUT_MODE = 0o666


def _json_bytes(value: Any) -> bytes:
    """Compact JSON, keys in the order given (Go's struct order for the documents here)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def blob_path(digest: Digest) -> str:
    """Where a blob lives inside a layout: ``blobs/<alg>/<hex>``."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


# -- reading -----------------------------------------------------------------------------


def is_oci_layout(archive: ArchiveReader) -> bool:
    """Whether the archive is an OCI image layout: an ``oci-layout`` file and ``index.json``.

    The version inside ``oci-layout`` is checked by :func:`read_oci_layout`, so that a
    layout of another version gets an error saying so rather than "not an archive".
    """
    return (
        archive.exists(LAYOUT_FILE)
        and not archive.is_dir(LAYOUT_FILE)
        and archive.exists(INDEX_FILE)
        and not archive.is_dir(INDEX_FILE)
    )


def _as_name(ref: Reference) -> Reference:
    return ref.digest_only() if ref.digest is not None else ref.tagged_or_default()


def _names(annotations: dict[str, str]) -> list[Reference]:
    """The reference the annotations of a descriptor in ``index.json`` give its image."""
    ref_name = annotations.get(ANNOTATION_REF_NAME, "")
    containerd = annotations.get(ANNOTATION_CONTAINERD_NAME, "")
    with contextlib.suppress(InvalidInput):
        if containerd:
            ref = parse(containerd)
            if ref.is_name_only and is_tag(ref_name):
                return [ref.with_tag(ref_name)]
            return [_as_name(ref)]
        if ref_name and is_tag(ref_name):
            # podman load (libimage NormalizeName): a short name goes to localhost/.
            return [Reference("localhost", ref_name, "latest")]
        if ref_name:
            return [_as_name(parse(ref_name))]
    return []


class _LayoutReader:
    def __init__(self, archive: ArchiveReader, platform: Platform | None) -> None:
        self.archive = archive
        self.platform = platform
        self.found: dict[Digest, ImageSource] = {}
        #: The names each found manifest has (a set: adding one stays linear).
        self._tags: dict[Digest, set[Reference]] = {}
        #: For each blob visited, the blobs it leads to (an index: its descriptors' blobs
        #: that are followed, each once; others: none). A blob is read once, however
        #: many descriptors name it (an index naming the next one ten times, seven deep,
        #: is eight reads, not ten million), and what is kept is one entry a descriptor.
        self._visited: dict[Digest, tuple[Digest, ...]] = {}
        #: What each blob followed turned out to be ("index", "manifest", or None).
        self._kinds: dict[Digest, str | None] = {}
        #: The names of ``index.json`` are given down from its descriptors, each name
        #: through each blob once; every step (a name at a descriptor) counts against
        #: :data:`MAX_IMAGE_NAMES`, so K names over an index of N manifests cannot make
        #: K·N work unbounded.
        self._named: set[tuple[Reference, Digest]] = set()
        self.naming = 0
        #: Descriptors read so far, in every index (:data:`MAX_DESCRIPTORS`).
        self.descriptors = 0
        #: Each config read once, and all the images' configs counted together.
        self._configs: dict[Digest, bytes] = {}
        self._configs_read = Budget(
            MAX_CONFIGS_TOTAL, archive.name, "image configs (one per image)"
        )

    @property
    def name(self) -> str:
        return self.archive.name

    # -- where blobs are, and how messages name them (a dir layout names them otherwise) --

    def _path(self, desc: Descriptor) -> str:
        """The member holding the blob ``desc`` names: ``blobs/<alg>/<hex>``."""
        return blob_path(desc.digest)

    def _file(self, path: str) -> str:
        """A member of the archive, as messages name it: ``ARCHIVE: blobs/sha256/…``."""
        return f"{self.name}: {path}"

    def _member(self, path: str) -> str:
        """A member, named after the archive has been named already."""
        return path

    def _here(self, desc: Descriptor) -> str:
        """The blob ``desc`` names and where the descriptor is, for messages."""
        return f"{self._file(self._path(desc))} ({desc.where})"

    def _index_at(self, desc: Descriptor) -> str:
        """An index below ``index.json``, for messages: ``ARCHIVE: index sha256:… (where)``."""
        return f"{self.name}: index {desc.digest} ({desc.where})"

    # -- blobs --------------------------------------------------------------------------

    def _check_blob(self, desc: Descriptor, what: str = "blob") -> str:
        """The path of the blob ``desc`` names, checked to exist with the right size."""
        path = self._path(desc)
        if not self.archive.exists(path):
            reason = f"is missing ({self._member(path)})"
            try:
                self.archive.size(path)
            except InvalidInput as e:  # a symlink out of the layout, say: say so
                if "missing" not in str(e):
                    reason = f"cannot be read: {e}"
            raise InvalidInput(f"{self.name}: {desc.where}: {what} {desc.digest} {reason}")
        try:
            size = self.archive.size(path)
        except InvalidInput as e:
            raise InvalidInput(f"{self.name}: {desc.where}: {what} {desc.digest}: {e}") from None
        if size != desc.size:
            raise SizeMismatch(self._here(desc), desc.size, size)
        return path

    def _read_blob(self, desc: Descriptor, what: str, limit: int = MAX_MANIFEST) -> bytes:
        path = self._check_blob(desc, what)
        if desc.size > limit:
            raise InvalidInput(f"{self._here(desc)}: {what} of {desc.size} bytes is too large")
        data = read_bytes(self.archive, path, limit, what)
        if len(data) != desc.size:
            raise SizeMismatch(self._here(desc), desc.size, len(data))
        return check_bytes(data, desc.digest, self._here(desc))

    def _document(self, data: bytes, desc: Descriptor, what: str) -> dict[str, Any]:
        doc = load_json(data, f"{self._here(desc)}: {what}", MAX_MANIFEST)
        if not isinstance(doc, dict):
            raise InvalidInput(
                f"{self._here(desc)}: {what} is not a JSON object ({json.dumps(doc)[:40]})"
            )
        return doc

    # -- walking ------------------------------------------------------------------------

    def read(self) -> list[ImageSource]:
        layout = read_json(self.archive, LAYOUT_FILE, kind=LAYOUT_FILE)
        if not isinstance(layout, dict):
            raise InvalidInput(f"{self.name}: {LAYOUT_FILE} is not a JSON object")
        version = layout.get("imageLayoutVersion")
        if version != LAYOUT_VERSION:
            raise InvalidInput(
                f"{self.name}: {LAYOUT_FILE}: unsupported imageLayoutVersion {version!r} "
                f"(only {LAYOUT_VERSION!r})"
            )
        index = read_json(self.archive, INDEX_FILE, kind=INDEX_FILE)
        if not isinstance(index, dict):
            raise InvalidInput(
                f"{self.name}: {INDEX_FILE} is not an image index (a JSON object), "
                f"it is {json.dumps(index)[:40]}"
            )
        descs = self._index_entries(index, INDEX_FILE, self._file(INDEX_FILE))
        # index.json: each descriptor is an image, except several platform-specific ones
        # sharing a ref name, which together are one multi-platform image.
        groups: dict[str, list[Descriptor]] = {}
        for d in descs:
            if d.platform is not None:
                groups.setdefault(d.annotations.get(ANNOTATION_REF_NAME, ""), []).append(d)
        for d in descs:
            if d.platform is not None:
                group = groups[d.annotations.get(ANNOTATION_REF_NAME, "")]
                if len(group) > 1:
                    if group[0] is not d:
                        continue
                    d = self._choose(group, self._file(INDEX_FILE))
            self._visit(d, 0)
            self._give(_names(d.annotations), d)
        return list(self.found.values())

    def read_root(self, desc: Descriptor) -> list[ImageSource]:
        """The images below one descriptor that stands where ``index.json`` would be (a
        dir layout's ``manifest.json``): a manifest is an image whatever its platform, an
        index gives the one for the platform; no names."""
        self._visit(desc, 0)
        return list(self.found.values())

    def _index_entries(self, doc: dict[str, Any], where: str, at: str) -> list[Descriptor]:
        version = doc.get("schemaVersion")
        if version != 2:
            raise InvalidInput(f"{at}: schemaVersion is {version!r}, not 2")
        manifests = doc.get("manifests")
        if manifests is None:
            return []
        if not isinstance(manifests, list):
            raise InvalidInput(f"{at}: field manifests is not a list")
        self.descriptors += len(manifests)
        if self.descriptors > MAX_DESCRIPTORS:
            raise InvalidInput(
                f"{at}: more than {MAX_DESCRIPTORS} descriptors in the "
                f"layout's indexes, over the limit of {MAX_DESCRIPTORS}"
            )
        prefix = f"{where} " if where == INDEX_FILE else f"{where} → "
        return [
            parse_descriptor(m, f"{prefix}manifests[{i}]", self.name, need_type=False)
            for i, m in enumerate(manifests)
        ]

    def _choose(self, group: list[Descriptor], at: str) -> Descriptor:
        return choose_platform(group, self.platform or host_platform(), at)

    def _visit(self, desc: Descriptor, depth: int) -> None:
        """Follow a descriptor, unless its blob was followed already: then only what the
        descriptor says of it is checked again (its size, and whether it is an index or
        a manifest), without reading it twice."""
        if desc.digest in self._visited:
            self._check_blob(desc)
            said = (
                "index"
                if desc.media_type in mt.INDEX_TYPES
                else "manifest"
                if desc.media_type in mt.MANIFEST_TYPES
                else None
            )
            found = self._kinds.get(desc.digest)
            if said is not None and found is not None and said != found:
                article = "an" if found == "index" else "a"
                raise InvalidInput(
                    f"{self._here(desc)}: the descriptor "
                    f"says {desc.media_type} but the document is {article} {found}"
                )
            return
        self._visited[desc.digest] = ()  # a blob cannot name itself; be sure anyway
        self._visited[desc.digest] = self._follow(desc, depth)

    def _give(self, names: list[Reference], desc: Descriptor) -> None:
        """Give ``names`` to every manifest found through ``desc`` (visited already)."""
        for name in names:
            below = [desc.digest]
            while below:
                digest = below.pop()
                self.naming += 1
                if self.naming > MAX_IMAGE_NAMES:
                    raise InvalidInput(
                        f"{self.name}: {desc.where}: the names of {INDEX_FILE} reach more "
                        f"than {MAX_IMAGE_NAMES} descriptors (each name counted at every "
                        f"descriptor below it), over the limit of {MAX_IMAGE_NAMES}"
                    )
                if (name, digest) in self._named:
                    continue
                self._named.add((name, digest))
                source = self.found.get(digest)
                if source is None:
                    below.extend(reversed(self._visited[digest]))
                    continue
                tags = self._tags[digest]
                if name not in tags:
                    tags.add(name)
                    source.tags.append(name)

    def _follow(self, desc: Descriptor, depth: int) -> tuple[Digest, ...]:
        if desc.media_type in mt.DOCKER_SCHEMA1:
            raise InvalidInput(
                f"{self.name}: {desc.where}: Docker image manifest schema 1 "
                f"({desc.media_type}) is not supported"
            )
        known = desc.media_type in mt.INDEX_TYPES or desc.media_type in mt.MANIFEST_TYPES
        if not known:
            # Some other type: look at the document itself if it can be one of ours.
            path = self._path(desc)
            if desc.size > MAX_MANIFEST or not self.archive.exists(path):
                return ()
        what = "index" if desc.media_type in mt.INDEX_TYPES else "manifest" if known else "blob"
        data = self._read_blob(desc, what)
        if known:
            doc = self._document(data, desc, "document")
        else:
            try:
                doc = load_json(data, "blob", MAX_MANIFEST)
            except InvalidInput:  # not JSON, or not one of ours within the limits
                return ()
            if not isinstance(doc, dict):
                return ()
        kind = self._kind(desc, doc)
        self._kinds[desc.digest] = kind
        if kind == "index":
            return self._index(desc, doc, depth)
        if kind == "manifest":
            self._manifest(desc, data, doc)
        return ()

    def _kind(self, desc: Descriptor, doc: dict[str, Any]) -> str | None:
        inner = doc.get("mediaType")
        here = self._here(desc)
        if inner is not None and not isinstance(inner, str):
            raise InvalidInput(f"{here}: mediaType is not a string")
        if inner in mt.DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
            raise InvalidInput(f"{here}: Docker image manifest schema 1 is not supported")
        if desc.media_type in mt.INDEX_TYPES:
            if inner is not None and inner not in mt.INDEX_TYPES:
                raise InvalidInput(
                    f"{here}: the descriptor says "
                    f"{desc.media_type} but the document's mediaType is {inner!r}"
                )
            return "index"
        if desc.media_type in mt.MANIFEST_TYPES:
            # Its own type is what a save writes again: it must be a manifest's.
            if inner is not None and inner not in mt.MANIFEST_TYPES:
                raise InvalidInput(
                    f"{here}: the descriptor says "
                    f"{desc.media_type} but the document's mediaType is {inner!r}"
                )
            return "manifest"
        if inner in mt.INDEX_TYPES:
            return "index"
        if inner in mt.MANIFEST_TYPES:
            return "manifest"
        if inner is None:
            if "manifests" in doc:
                return "index"
            if "config" in doc and "layers" in doc:
                return "manifest"
        return None

    def _index(self, desc: Descriptor, doc: dict[str, Any], depth: int) -> tuple[Digest, ...]:
        at = self._index_at(desc)
        if depth >= MAX_INDEX_NESTING:
            raise InvalidInput(
                f"{at}: indexes nested more than {MAX_INDEX_NESTING} deep, "
                f"over the limit of {MAX_INDEX_NESTING}"
            )
        descs = self._index_entries(doc, desc.where, at)
        with_platform = [d for d in descs if d.platform is not None]
        chosen = self._choose(with_platform, at) if with_platform else None
        below: dict[Digest, None] = {}
        for d in descs:
            if (d.platform is None or d is chosen) and d.digest not in below:
                self._visit(d, depth + 1)
                below[d.digest] = None
        return tuple(below)

    def _manifest(self, desc: Descriptor, raw: bytes, doc: dict[str, Any]) -> None:
        here = self._here(desc)
        version = doc.get("schemaVersion")
        if version != 2:
            raise InvalidInput(f"{here}: manifest schemaVersion is {version!r}, not 2")
        cdesc = parse_descriptor(doc.get("config"), f"{desc.where} → config", self.name)
        if cdesc.media_type not in mt.CONFIG_TYPES:
            return  # an artifact, not an image
        layers_raw = doc.get("layers")
        if layers_raw is None:
            layers_raw = []
        if not isinstance(layers_raw, list):
            raise InvalidInput(f"{here}: field layers is not a list")
        if len(layers_raw) > MAX_LAYER_DEPTH:
            raise InvalidInput(
                f"{here}: {len(layers_raw)} layers, over the limit of {MAX_LAYER_DEPTH}"
            )
        config = self._configs.get(cdesc.digest)
        if config is None:
            config = self._configs[cdesc.digest] = self._read_blob(cdesc, "config", MAX_CONFIG)
        elif len(config) != cdesc.size:
            raise SizeMismatch(self._here(cdesc), cdesc.size, len(config))
        self._configs_read.spend(len(config))
        layers = [
            self._layer(parse_descriptor(ld, f"{desc.where} → layers[{i}]", self.name))
            for i, ld in enumerate(layers_raw)
        ]
        source = ImageSource(
            config=config, what=f"{here}: manifest {desc.digest}", layers=layers, manifest=raw
        )
        self.found[desc.digest] = source
        self._tags[desc.digest] = set()

    def _layer(self, desc: Descriptor) -> LayerSource:
        media_type = desc.media_type
        if "encrypted" in media_type:
            raise InvalidInput(
                f"{self.name}: {desc.where}: layer {desc.digest} is encrypted ({media_type}); "
                "encrypted layers are not supported"
            )
        if media_type not in mt.LAYER_TYPES:
            raise InvalidInput(
                f"{self.name}: {desc.where}: layer {desc.digest} has media type "
                f"{media_type!r}, not an image layer type"
            )
        path = self._path(desc)
        if media_type in mt.FOREIGN_LAYER_TYPES and not self.archive.exists(path):
            raise InvalidInput(
                f"{self.name}: {desc.where}: non-distributable (foreign) layer {desc.digest} "
                f"({media_type}) is not in the archive ({self._member(path)}); ocistore does "
                "not fetch layers from their URLs"
            )
        self._check_blob(desc, "layer blob")
        return LayerSource(
            open=functools.partial(self.archive.open, path),
            what=self._file(path),
            blob_digest=desc.digest,
            blob_size=desc.size,
            key=str(desc.digest),
        )


def read_oci_layout(archive: ArchiveReader, platform: Platform | None = None) -> list[ImageSource]:
    """Every image of an OCI layout (directory or oci-archive), ready for ``Store.add_images``.

    Indexes, manifests and configs are read and verified here; layers are verified while
    they are loaded. ``platform`` picks from multi-platform indexes (default: this
    machine). See the module documentation for the rules.
    """
    return _LayoutReader(archive, platform).read()


# -- writing -----------------------------------------------------------------------------


class Blob(NamedTuple):
    digest: Digest
    size: int
    #: The blob's bytes, when small (configs, manifests); else it is copied from the
    #: store, verified on the way.
    data: bytes | None = None


class _Plan(NamedTuple):
    entries: list[dict[str, Any]]
    blobs: dict[Digest, Blob]


def _annotations(ref: Reference | None) -> dict[str, str]:
    if ref is None:
        return {}
    if ref.digest is not None:
        return {ANNOTATION_CONTAINERD_NAME: str(ref)}
    assert ref.tag is not None
    return {ANNOTATION_CONTAINERD_NAME: str(ref), ANNOTATION_REF_NAME: ref.tag}


def _stored_blob(store: Store, digest: Digest, what: str) -> Blob:
    try:
        size = store.blob_size(digest)
    except NotFound:
        raise CorruptStore(f"{what}: blob {digest} is not in the store") from None
    return Blob(digest, size)


def _kept_manifest(
    store: Store, image_id: ImageID, config: bytes, digest: Digest, as_oci: bool = True
) -> tuple[bytes, str, list[Blob]]:
    """The kept manifest ``digest``, its media type and the blobs it names (all checked
    against the store); a Docker v2 one in its OCI form unless not ``as_oci``."""
    what = f"image {image_id}: kept manifest {digest}"
    try:
        raw = store.read_blob(digest)
    except NotFound:
        raise CorruptStore(f"{what} is not in the store") from None
    try:
        doc = load_json(raw, what, MAX_MANIFEST)
        cdesc = doc["config"]
        cdigest = Digest(cdesc["digest"])
        layers = [(Digest(ld["digest"]), int(ld["size"])) for ld in doc.get("layers") or []]
        media_type = doc.get("mediaType")
    except (ValueError, KeyError, TypeError, InvalidInput) as e:
        raise CorruptStore(f"{what} is damaged: {e}") from None
    if digest_bytes(config, cdigest.algorithm) != cdigest:
        raise CorruptStore(f"{what} names config {cdigest}, not this image's config")
    if not isinstance(media_type, str) or not media_type:
        ctype = cdesc.get("mediaType") if isinstance(cdesc, dict) else None
        media_type = mt.DOCKER_MANIFEST if ctype == mt.DOCKER_CONFIG else mt.OCI_MANIFEST
    blobs = [Blob(cdigest, len(config), data=config)]
    for layer_digest, size in layers:
        blob = _stored_blob(store, layer_digest, what)
        if blob.size != size:
            raise CorruptStore(
                f"{what}: blob {layer_digest} is {blob.size} bytes, the manifest says {size}"
            )
        blobs.append(blob)
    if as_oci and media_type == mt.DOCKER_MANIFEST:
        raw, media_type = _oci_from_docker(store, doc, len(config)), mt.OCI_MANIFEST
    return raw, media_type, blobs


def _oci_from_docker(store: Store, doc: dict[str, Any], config_size: int) -> bytes:
    """The OCI manifest for a Docker v2 manifest: the same config and layer blobs, OCI
    media types (layer types from each blob's magic bytes), as ``skopeo copy`` to ``oci:``
    writes it. An OCI layout holding Docker media types is unreadable to skopeo and umoci."""
    layers: list[dict[str, Any]] = []
    for ld in doc.get("layers") or []:
        d = Digest(ld["digest"])
        with store.open_blob(d, verify=False) as f:
            compression = detect(f.read(8), f"blob {d}")
        entry: dict[str, Any] = {
            "mediaType": mt.layer_media_type(compression),
            "digest": d,
            "size": int(ld["size"]),
        }
        if ld.get("annotations"):
            entry["annotations"] = ld["annotations"]
        layers.append(entry)
    out: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {
            "mediaType": mt.OCI_CONFIG,
            "digest": doc["config"]["digest"],
            "size": config_size,
        },
        "layers": layers,
    }
    if doc.get("annotations"):
        out["annotations"] = doc["annotations"]
    return _json_bytes(out)


def _generated_manifest(store: Store, image: Image) -> tuple[bytes, list[Blob]]:
    image_id = image.id
    config = image.config.raw
    blobs = [Blob(Digest(image_id), len(config), data=config)]
    layers: list[dict[str, Any]] = []
    for layer in store.layers_of(image):
        ref = layer.blob
        layers.append(
            {
                "mediaType": mt.layer_media_type(ref.compression),
                "digest": ref.digest,
                "size": ref.size,
            }
        )
        blobs.append(_stored_blob(store, ref.digest, f"image {image_id}: layer {layer.diff_id}"))
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": image_id, "size": len(config)},
        "layers": layers,
    }
    return _json_bytes(doc), blobs


class ImageManifest(NamedTuple):
    """The manifest a save writes for an image, and the blobs it names (config first)."""

    raw: bytes
    media_type: str
    blobs: list[Blob]


def image_manifest(store: Store, image_id: ImageID, as_oci: bool = True) -> ImageManifest:
    """The manifest to write for an image: the kept one byte for byte (a Docker v2 one in
    its OCI form, unless not ``as_oci``), else one generated from the stored blobs; its
    config and layer blobs are checked to be in the store."""
    image = store.image(image_id)  # the config, verified
    config = image.config.raw
    kept = store.kept_manifest(image_id)
    if kept is not None:
        return ImageManifest(*_kept_manifest(store, image_id, config, kept, as_oci))
    raw, blobs = _generated_manifest(store, image)
    return ImageManifest(raw, mt.OCI_MANIFEST, blobs)


def _plan(store: Store, names: list[str]) -> _Plan:
    selected = store.select(names)
    manifests: dict[ImageID, dict[str, Any]] = {}
    blobs: dict[Digest, Blob] = {}
    entries: list[dict[str, Any]] = []
    for image_id, ref in selected:
        desc = manifests.get(image_id)
        if desc is None:
            raw, media_type, image_blobs = image_manifest(store, image_id)
            manifest_digest = digest_bytes(raw)
            image_blobs.append(Blob(manifest_digest, len(raw), data=raw))
            for b in image_blobs:
                blobs.setdefault(b.digest, b)
            desc = {"mediaType": media_type, "digest": manifest_digest, "size": len(raw)}
            manifests[image_id] = desc
        entry = dict(desc)
        annotations = _annotations(ref)
        if annotations:
            entry["annotations"] = dict(sorted(annotations.items()))
        if entry not in entries:
            entries.append(entry)
    return _Plan(entries, blobs)


def _index_bytes(manifests: list[Any], base: dict[str, Any] | None = None) -> bytes:
    """``index.json``: a new one, or ``base`` (an existing one) with ``manifests`` replaced."""
    if base is None:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX}
    else:
        doc = dict(base)
    doc["manifests"] = manifests
    return _json_bytes(doc)


def _blob_fill(store: Store, blob: Blob, progress: Progress) -> Fill:
    """Copies a stored blob into the archive, checked against its digest on the way."""
    digest, size = blob.digest, blob.size

    def fill(sink: MemberSink) -> None:
        task = progress.task(task_label(digest.short(), COPYING), size)
        fill_from(lambda: store.open_blob(digest), task.update)(sink)
        task.finish()

    return fill


def write_oci_archive(
    store: Store, names: list[str], out: IO[bytes], progress: Progress | None = None
) -> None:
    """Write the images ``names`` select as an oci-archive (a tar of an OCI layout).

    Deterministic: the same images give the same bytes. Layer blobs are verified against
    their digests while they are copied; after a failure the archive has no end-of-archive
    marker (a reader sees it truncated).
    """
    progress = progress or SILENT
    plan = _plan(store, names)
    with TarWriter(out) as tar:
        tar.add_bytes(LAYOUT_FILE, LAYOUT_BYTES)
        tar.add_bytes(INDEX_FILE, _index_bytes(plan.entries))
        tar.add_dir("blobs")
        for digest in sorted(plan.blobs, key=blob_path):
            blob = plan.blobs[digest]
            if blob.data is not None:
                tar.add_bytes(blob_path(digest), blob.data)
            else:
                tar.add_file(blob_path(digest), blob.size, _blob_fill(store, blob, progress))


def _existing_blob_ok(path: Path, blob: Blob) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat_mod.S_ISREG(st.st_mode) or st.st_size != blob.size:
        return False
    with open(path, "rb") as f:
        return digest_stream(f, blob.digest.algorithm)[0] == blob.digest


def write_blob(store: Store, path: Path, blob: Blob, progress: Progress) -> None:
    """A blob into the file ``path`` of an output directory (kept if it is there and
    whole), verified while copied, fsynced, with the umask's mode."""
    if _existing_blob_ok(path, blob):
        return
    fsutil.make_output_dirs(path.parent)
    with fsutil.AtomicFile(path, mode=OUTPUT_MODE) as f:
        if blob.data is not None:
            f.write(blob.data)
            return
        sink = MemberSink(str(path), blob.size, lambda data, _pos: f.write(data))
        _blob_fill(store, blob, progress)(sink)
        if sink.done != sink.size:
            raise SizeMismatch(f"blob {blob.digest}", blob.size, sink.done)


def _read_existing_index(dest: Path) -> dict[str, Any]:
    layout_path = dest / LAYOUT_FILE
    try:
        layout = load_json(layout_path.read_bytes(), f"{dest}: {LAYOUT_FILE}", MAX_ARCHIVE_JSON)
    except OSError as e:
        raise InvalidInput(f"{dest}: {LAYOUT_FILE} cannot be read: {e}") from None
    version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
    if version != LAYOUT_VERSION:
        raise InvalidInput(
            f"{dest}: {LAYOUT_FILE}: unsupported imageLayoutVersion {version!r}; "
            "refusing to add to it"
        )
    index_path = dest / INDEX_FILE
    if not index_path.exists():
        return {"schemaVersion": 2, "manifests": []}
    try:
        index = load_json(index_path.read_bytes(), f"{dest}: {INDEX_FILE}", MAX_ARCHIVE_JSON)
    except OSError as e:
        raise InvalidInput(f"{dest}: {INDEX_FILE} cannot be read: {e}") from None
    where = f"{dest}: {INDEX_FILE}"
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(index, dict) or not isinstance(manifests, list | None):
        raise InvalidInput(f"{where} is not an image index; refusing to add to it")
    for i, entry in enumerate(index.get("manifests") or []):
        # What the merge reads of each descriptor must be there, of its type: a damaged
        # index is refused before anything is written.
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("digest"), str)
            or not isinstance(annotations or {}, dict)
            or not all(isinstance(v, str) for v in (annotations or {}).values())
        ):
            raise InvalidInput(
                f"{where}: manifests[{i}] is not a descriptor (an object with a digest and "
                "string annotations); refusing to add to it"
            )
    return index


def _merge(existing: list[Any], new: list[dict[str, Any]]) -> list[Any]:
    """An existing ``index.json``'s descriptors with the ``new`` ones added, as skopeo and
    umoci add to a layout: a new descriptor takes the place of the first existing one of
    the same name (or identical to it), later ones of that name go, the rest stay in
    their order, and new descriptors that replace nothing come last.

    A descriptor's name is the reference it loads as (:func:`_names`) when it has one of
    its own (``io.containerd.image.name``, or a full reference as its ref name): so
    ``lab/a:1`` and ``lab/b:1``, both ref name ``1``, are two images, as one save of both
    writes them. A descriptor with a bare ref name alone (skopeo's ``oci:DIR:TAG``,
    umoci's) is named by it: a new descriptor with that ref name replaces it."""
    by_name: dict[Reference, int] = {}
    by_ref_name: dict[str, int] = {}
    for j, entry in enumerate(new):
        annotations = entry.get("annotations", {})
        for name in _names(annotations):
            by_name.setdefault(name, j)
        if ANNOTATION_REF_NAME in annotations:
            by_ref_name.setdefault(annotations[ANNOTATION_REF_NAME], j)

    def replaced_by(entry: dict[str, Any]) -> int | None:
        if entry in new:
            return new.index(entry)
        annotations = entry.get("annotations") or {}
        ref_name = annotations.get(ANNOTATION_REF_NAME)
        if ANNOTATION_CONTAINERD_NAME in annotations or (
            ref_name is not None and not is_tag(ref_name)
        ):
            for name in _names(annotations):
                if name in by_name:
                    return by_name[name]
            return None
        return by_ref_name.get(ref_name) if ref_name is not None else None

    out: list[Any] = []
    placed: set[int] = set()
    for entry in existing:
        by = replaced_by(entry)
        if by is None:
            out.append(entry)
        elif by not in placed:
            placed.add(by)
            out.append(new[by])
    return out + [entry for j, entry in enumerate(new) if j not in placed]


def _fill_layout(
    store: Store, root: Path, plan: _Plan, progress: Progress, index: dict[str, Any] | None
) -> None:
    """Blobs first, then ``oci-layout``, then ``index.json``: each file whole and durable."""
    for digest in sorted(plan.blobs, key=blob_path):
        write_blob(store, root / blob_path(digest), plan.blobs[digest], progress)
    if not (root / LAYOUT_FILE).exists():
        fsutil.atomic_write(root / LAYOUT_FILE, LAYOUT_BYTES, None, OUTPUT_MODE)
    if index is None:
        data = _index_bytes(plan.entries)
    else:
        data = _index_bytes(_merge(list(index.get("manifests") or []), plan.entries), index)
    fsutil.atomic_write(root / INDEX_FILE, data, None, OUTPUT_MODE)


def write_oci_layout(
    store: Store, names: list[str], dest: Path, progress: Progress | None = None
) -> None:
    """Write the images ``names`` select into the OCI layout directory ``dest``.

    A new directory is built beside ``dest`` and renamed into place; an existing layout
    (or an empty directory) is added to: blobs first, ``index.json`` replaced atomically
    last, under an exclusive ``flock`` of the directory (so concurrent ocistore writers
    do not lose each other's descriptors). Anything else at ``dest`` is refused.
    """
    progress = progress or SILENT
    dest = Path(dest)
    plan = _plan(store, names)  # every image found and checked before anything is written
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest}: exists and is not a directory (an OCI layout is one)")
    if not dest.exists():
        parent = dest.parent
        if not parent.is_dir():
            raise NotFound(f"{dest}: parent directory {parent} does not exist")
        fsutil.remove_dead_beside(dest)  # what a killed save of this layout left
        tmp = fsutil.beside(dest)
        try:
            fsutil.make_output_dirs(tmp)
            _fill_layout(store, tmp, plan, progress, None)
            os.rename(tmp, dest)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # Somebody else created it meanwhile: add to what is there now.
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        else:
            fsutil.fsync_dir(parent)
            return
    with fsutil.FileLock(dest, directory=True).exclusive():
        if (dest / LAYOUT_FILE).exists():
            index: dict[str, Any] | None = _read_existing_index(dest)
        elif any(dest.iterdir()):
            raise InvalidInput(
                f"{dest}: exists and is not an OCI image layout (no {LAYOUT_FILE} file); "
                "refusing to write into it"
            )
        else:
            index = None
        _fill_layout(store, dest, plan, progress, index)
