"""Push: a stored image into a registry.

The manifest pushed is the one the store kept for the image (a pull's or an OCI load's,
byte for byte, so its digest is the one it came with), else one made as ``docker push``
makes it: a Docker v2 schema 2 manifest (an OCI manifest when a layer is zstd), indented
as Docker's distribution code writes it. A layer stored as a plain tar is pushed
gzip-compressed (isal), through a file in the store's ``tmp/`` so that a failed chunk can
be sent again and memory stays flat; the compressed digest is remembered
(:mod:`ocistore.store.distribution`), so the next push of the layer, to a registry that
has it, neither compresses nor uploads it again.

Every blob is asked for first (``HEAD``) and skipped when the registry has it; a blob
seen in another repository of the same registry is mounted from there
(``?mount=…&from=…``); the rest are uploaded, several at once: in one request when
small, else in chunks (at least the registry's ``OCI-Chunk-Min-Length``). The manifest
is put last, under the tag, and only when every blob is there: a failed push leaves no
tag pointing at a partial image. The store then records ``NAME@DIGEST`` for the image,
as Docker does after a push.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from typing import IO, Any, NamedTuple

from isal import isal_zlib

from .. import parallel
from ..errors import CorruptStore, InvalidInput, NotFound, OcistoreError
from ..progress import PUSHING, SILENT, Progress, task_label
from ..spec import mediatypes as mt
from ..spec.compression import Compression
from ..spec.digest import CHUNK, DiffID, Digest, ImageID, digest_bytes, new_hasher
from ..spec.reference import DEFAULT_TAG, Reference
from ..store.distribution import SeenBlob
from ..store.layers import Layer
from ..store.store import Store
from .client import Repository
from .session import Session

__all__ = ["PushResult", "push"]

#: Blobs uploaded at once.
PUSH_JOBS = 4
#: isal's level for layers compressed to be pushed: its fastest but one, about zlib's 6
#: in size.
GZIP_LEVEL = 2
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class PushResult(NamedTuple):
    reference: Reference
    digest: Digest
    size: int
    #: What happened to each blob, for the lines ``docker push`` prints
    #: (``ID: Pushed``, ``ID: Layer already exists``, ``ID: Mounted from REPO``).
    events: list[str]
    #: What went wrong after the push was done (the store could not record it).
    warnings: list[str]


class _Blob(NamedTuple):
    digest: Digest
    size: int
    #: Opens the blob's bytes (a file that can seek: a chunk may be sent again).
    open: Callable[[], IO[bytes]]
    #: The ID shown for it (the DiffID's short hex, as docker push shows layers).
    shown: str
    #: The layer it is a blob of (None for the config).
    diff_id: DiffID | None = None


def _config_blob(config: bytes) -> _Blob:
    def open_config() -> IO[bytes]:
        return io.BytesIO(config)

    digest = digest_bytes(config)
    return _Blob(digest, len(config), open_config, digest.hex[:12])


def _stored(store: Store, digest: Digest, shown: str, diff_id: DiffID | None) -> _Blob:
    try:
        size = store.blob_size(digest)
    except NotFound:
        raise CorruptStore(f"blob {digest} is not in the store") from None
    return _Blob(digest, size, lambda: store.open_blob(digest, verify=False), shown, diff_id)


def _kept_plan(
    store: Store, image_id: ImageID, layers: list[Layer]
) -> tuple[bytes, str, list[_Blob]]:
    """The manifest the store kept for the image, byte for byte (a Docker one stays
    Docker's), and its blobs, config first: the one reader of kept manifests, a save's."""
    from ..formats.oci_layout import image_manifest

    manifest = image_manifest(store, image_id, as_oci=False)
    config, *layer_blobs = manifest.blobs
    if len(layer_blobs) != len(layers):
        raise CorruptStore(
            f"image {image_id}: its kept manifest lists {len(layer_blobs)} layers, "
            f"the image has {len(layers)}"
        )
    assert config.data is not None
    blobs = [_config_blob(config.data)]
    for blob, layer in zip(layer_blobs, layers, strict=True):
        blobs.append(_stored(store, blob.digest, layer.diff_id.hex[:12], layer.diff_id))
    return manifest.raw, manifest.media_type, blobs


def _manifest_bytes(doc: dict[str, Any]) -> bytes:
    """As Docker's distribution code writes a manifest: Go's MarshalIndent, 3 spaces."""
    return json.dumps(doc, indent=3, ensure_ascii=False).encode()


class _Pusher:
    def __init__(self, store: Store, repo: Repository, progress: Progress) -> None:
        self.store = store
        self.repo = repo
        self.progress = progress
        #: What happened to each layer, by DiffID (told top first, as docker push does).
        self.events: dict[DiffID, str] = {}
        self.lock = threading.Lock()

    def event(self, diff_id: DiffID | None, what: str) -> None:
        if diff_id is not None:
            with self.lock:
                self.events[diff_id] = f"{diff_id.hex[:12]}: {what}"

    def remember(self, diff_id: DiffID | None, digest: Digest) -> None:
        if diff_id is not None:
            self.store.distribution.add(diff_id, SeenBlob(digest, self.repo.name))

    def mount_source(self, diff_id: DiffID | None, digest: Digest) -> str | None:
        if diff_id is None:
            return None
        prefix = self.repo.registry.domain + "/"
        for seen in reversed(self.store.distribution.get(diff_id)):
            if (
                seen.digest == digest
                and seen.repository.startswith(prefix)
                and seen.repository != self.repo.name
            ):
                return seen.repository[len(prefix) :]
        return None

    def push_blob(self, blob: _Blob, location: str | None = None) -> None:
        """Push one blob unless the registry has it (or can mount it); ``location``: an
        upload the registry started already, to use."""
        repo = self.repo
        if location is None:
            if repo.blob_size(blob.digest) is not None:
                self.event(blob.diff_id, "Layer already exists")
                self.remember(blob.diff_id, blob.digest)
                return
            location = self.mount(blob.diff_id, blob.digest)
            if location == "":
                return
        task = self.progress.task(task_label(blob.shown, PUSHING), blob.size)
        repo.upload(blob.digest, blob.size, blob.open, task.update, location)
        task.finish()
        self.event(blob.diff_id, "Pushed")
        self.remember(blob.diff_id, blob.digest)

    def mount(self, diff_id: DiffID | None, digest: Digest) -> str | None:
        """Mount ``digest`` from the repository of this registry it was seen in: ``""``
        when mounted, else the upload the registry started instead (None: none)."""
        source = self.mount_source(diff_id, digest)
        if source is None:
            return None
        location = self.repo.mount_blob(digest, source)
        if location is None:
            self.event(diff_id, f"Mounted from {source}")
            self.remember(diff_id, digest)
            return ""
        return location

    def push_plain_layer(self, layer: Layer) -> tuple[Digest, int]:
        """A layer stored as a plain tar, pushed gzip-compressed: a remembered blob the
        registry has (or mounts), else compressed now, uploaded, and remembered."""
        for seen in reversed(self.store.distribution.get(layer.diff_id)):
            size = self.repo.blob_size(seen.digest)
            if size is not None:
                self.event(layer.diff_id, "Layer already exists")
                self.remember(layer.diff_id, seen.digest)
                return seen.digest, size
        upload: str | None = None  # one the registry started instead of a mount
        for seen in reversed(self.store.distribution.get(layer.diff_id)):
            location = self.mount(layer.diff_id, seen.digest)
            if location == "":
                size = self.repo.blob_size(seen.digest)
                if size is not None:
                    return seen.digest, size
            elif location is not None and upload is None:
                upload = location
        scratch = self.store.scratch(suffix=".push.gz")
        try:
            digest, size = _compress(self.store, layer, scratch.file)
            scratch.file.close()
            path = scratch.path

            def reopen() -> IO[bytes]:
                return open(path, "rb")

            blob = _Blob(digest, size, reopen, layer.diff_id.hex[:12], layer.diff_id)
            self.push_blob(blob, upload)
        finally:
            scratch.discard()
        return digest, size


def _compress(store: Store, layer: Layer, out: IO[bytes]) -> tuple[Digest, int]:
    """Gzip the layer's tar (read verified) into ``out``: the blob's digest and size."""
    hasher = new_hasher()
    size = 0
    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 31)
    with store.open_layer(layer) as src:
        while True:
            data = src.read(CHUNK)
            if not data:
                break
            piece = compressor.compress(data)
            if piece:
                out.write(piece)
                hasher.update(piece)
                size += len(piece)
        piece = compressor.flush()
        out.write(piece)
        hasher.update(piece)
        size += len(piece)
    return Digest("sha256:" + hasher.hexdigest()), size


def push(
    store: Store,
    session: Session,
    name: str,
    dest: Reference | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Push the image ``name`` names to ``dest`` (default: ``name`` as a reference,
    ``latest`` when it has no tag)."""
    progress = progress or SILENT
    image_id = store.resolve(name)
    if dest is None:
        from ..spec.reference import parse

        dest = parse(name)
    if dest.digest is not None:
        raise InvalidInput(f"{dest.familiar()}: push to a tag, not a digest reference")
    if dest.tag is None:
        dest = dest.with_tag(DEFAULT_TAG)
    image = store.image(image_id)
    config = image.config.raw
    layers = store.layers_of(image)
    repo = session.repository(dest)
    pusher = _Pusher(store, repo, progress)
    kept = store.kept_manifest(image_id)
    if kept is not None:
        raw, media_type, blobs = _kept_plan(store, image_id, layers)
        _run([_bind(pusher.push_blob, b) for b in blobs])
    else:
        raw, media_type = _generated(store, pusher, config, layers)
    events = [pusher.events.get(layer.diff_id, "") for layer in reversed(layers)]
    events = [e for e in events if e]
    digest = repo.put_manifest(dest.tag or DEFAULT_TAG, raw, media_type)
    warnings = []
    try:
        store.add_repo_digest(image_id, dest.name_only().with_digest(digest))
    except OcistoreError as e:  # (the push is done: what the store could not record is told)
        warnings.append(f"pushed, but {dest.name}@{digest} was not recorded: {e}")
    return PushResult(dest, digest, len(raw), events, warnings)


def _bind(fn: Callable[[_Blob], None], blob: _Blob) -> Callable[[], None]:
    return lambda: fn(blob)


def _run(jobs: list[Callable[[], None]]) -> None:
    def job(fn: Callable[[], None]) -> parallel.Job:
        def run(stop: parallel.Stop) -> None:
            stop.check()
            fn()

        return run

    parallel.run_all([job(fn) for fn in jobs], PUSH_JOBS)


def _generated(
    store: Store, pusher: _Pusher, config: bytes, layers: list[Layer]
) -> tuple[bytes, str]:
    """Push the config and layers and make the manifest ``docker push`` would."""
    results: dict[int, tuple[Digest, int, Compression]] = {}
    jobs: list[Callable[[], None]] = [_bind(pusher.push_blob, _config_blob(config))]

    def layer_job(i: int, layer: Layer) -> Callable[[], None]:
        def run() -> None:
            ref = layer.blob
            if ref.compression is Compression.NONE:
                d, size = pusher.push_plain_layer(layer)
                results[i] = (d, size, Compression.GZIP)
            else:
                pusher.push_blob(_stored(store, ref.digest, layer.diff_id.hex[:12], layer.diff_id))
                results[i] = (ref.digest, ref.size, ref.compression)

        return run

    jobs += [layer_job(i, layer) for i, layer in enumerate(layers)]
    _run(jobs)
    entries = [results[i] for i in range(len(layers))]
    zstd = any(c is Compression.ZSTD for _, _, c in entries)
    if zstd:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": mt.OCI_CONFIG,
                "digest": digest_bytes(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": mt.layer_media_type(c), "digest": d, "size": s} for d, s, c in entries
            ],
        }
        return _manifest_bytes(doc), mt.OCI_MANIFEST
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST,
        "config": {
            "mediaType": mt.DOCKER_CONFIG,
            "size": len(config),
            "digest": digest_bytes(config),
        },
        "layers": [{"mediaType": DOCKER_LAYER_GZIP, "size": s, "digest": d} for d, s, _ in entries],
    }
    return _manifest_bytes(doc), mt.DOCKER_MANIFEST
