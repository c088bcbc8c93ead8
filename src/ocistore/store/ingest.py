"""The one way in: every image enters the store through :func:`add_images`.

Whoever has images to add (``load``, ``import`` and ``pull`` now; commit and migration
later) describes them as :class:`ImageSource` objects: the config (its exact bytes, or a
function that makes it once the layers' DiffIDs are known, as ``import`` needs), the
layers as :class:`LayerSource` streams with what each must hash to, the references, the
manifest to keep, the parent. Sources only read; nothing but this module and the stores
it drives writes under the root. Then:

1. **Check** what can be checked without reading layers: the references' form, the
   configs given, the layer counts.
2. **Stage**, outside the lock, every layer the store does not already have (its chain
   stored, and the blob the image names, if any): each is streamed into ``tmp/`` once by
   :func:`~ocistore.store.staging.stage_layer`, its blob digest, size and DiffID checked
   on the way. Several layers are staged at once (:func:`ocistore.parallel.run_all`),
   largest first, so a large layer is rarely left running alone at the end; after a
   failure no new layer starts, and the first failure in that order is reported; after
   Ctrl-C the layers in flight stop at their next piece and remove their files. Equal
   sources are staged once.
3. **Publish**, in one transaction (the exclusive lock): first refuse what would fail
   half-way (a reference that cannot be set, a layer that was not staged because the
   store had it and that is gone since); record in the dirty marker which images this
   makes and which tags it sets; then, bottom-up: blobs and layer records, configs,
   manifests and kept blobs, parents, and last the references. A failure part-way undoes
   what was added; a crash part-way is undone by the next writer
   (:meth:`~ocistore.store.store.Store.recover`), which a load also lets finish before
   it looks at what the store has.

Bad input is refused before anything becomes visible, and staged files are removed
whatever happens: the store is as it was.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from .. import parallel
from ..errors import Conflict, DigestMismatch, InvalidInput, OcistoreError
from ..progress import LOADING, SILENT, Progress, task_label
from ..spec.config import ImageConfig, parse_config
from ..spec.digest import ChainID, DiffID, Digest, ImageID, chain_ids, digest_bytes
from ..spec.reference import Reference, check_digest_reference, check_tag
from . import gc
from .backend import MANIFEST
from .layers import Layer
from .refs import lookup_key
from .staging import StagedLayer, stage_layer

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "ConfigMaker",
    "ImageSource",
    "LayerSource",
    "LoadedImage",
    "add_images",
    "register_layer",
]


class LayerSource(NamedTuple):
    """Where one layer of an image comes from, and what it must hash to."""

    #: Opens the layer's bytes (plain, gzip or zstd tar); the stream is closed after.
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    #: Names the layer in messages: the archive and the member, the registry and digest.
    what: str
    #: The digest and size the bytes must have, when a descriptor promises them.
    blob_digest: Digest | None = None
    blob_size: int | None = None
    #: A key that identifies the same bytes across images (so they are staged once).
    key: str = ""
    #: How many bytes reading gives, when known but not promised by a digest (a member's
    #: size in a tar): for progress, and to stage the largest layers first. Not checked.
    read_size: int | None = None
    #: The layer's DiffID when it is known before reading and the image's config is made
    #: after (see :data:`ConfigMaker`): a layer the store has then need not be read.
    diff_id: DiffID | None = None
    #: What its progress line says while it is read (:data:`~ocistore.progress.LOADING`
    #: when empty; ``Downloading`` for a pull).
    status: str = ""

    @property
    def stage_key(self) -> str:
        """What identifies the bytes to stage: equal layers of two images are read once."""
        return self.key or self.blob_digest or self.what

    @property
    def expected_read(self) -> int | None:
        return self.blob_size if self.blob_size is not None else self.read_size


#: Makes an image's config from the DiffIDs of its layers, bottom first, once they are
#: known (``import`` and ``commit`` make a config for a layer they have not read yet).
ConfigMaker = Callable[[Sequence[DiffID]], bytes]


class ImageSource:
    """One image to add: what a format, a registry or a commit found."""

    __slots__ = ("config", "layers", "manifest", "parent", "tagged_now", "tags", "what")

    def __init__(
        self,
        config: bytes | ConfigMaker,
        what: str,
        layers: list[LayerSource],
        tags: list[Reference] | None = None,
        manifest: bytes | None = None,
        parent: int | None = None,
        tagged_now: bool = False,
    ) -> None:
        #: The config's exact bytes, or the function that makes them.
        self.config = config
        #: Names the image in messages.
        self.what = what
        self.layers = layers
        #: Tags (moved if they exist, as ``docker load`` does) and digest references.
        self.tags: list[Reference] = [] if tags is None else tags
        #: An OCI/Docker manifest to keep with the image, so a later save can re-emit it.
        self.manifest = manifest
        #: Index into the list given to :func:`add_images` of this image's parent.
        self.parent = parent
        #: Whether its tags are given by the user now (an import with a name, as
        #: ``docker import`` tags): the time is recorded as when it was last tagged
        #: (``LastTagTime``), in the same publish. A load's tags are not (as Docker's).
        self.tagged_now = tagged_now

    def __repr__(self) -> str:
        return f"ImageSource({self.what!r})"


class LoadedImage(NamedTuple):
    """An image :func:`add_images` added (or found stored already), with its names."""

    id: ImageID
    tags: tuple[Reference, ...]


def _check_references(src: ImageSource) -> None:
    for ref in src.tags:
        if ref.digest is not None:
            check_digest_reference(ref)
        else:
            check_tag(ref)


def _given(src: ImageSource, raw: bytes) -> ImageConfig:
    """A config given as bytes (by an archive, a registry, a caller): parsed, and decoded
    as Docker decodes it, or refused as ``docker load`` refuses it (a field of the wrong
    type), so that what is stored can be saved again."""
    from ..spec.legacy.v1 import check_config  # (imported here: listings never need it)

    cfg = _parsed(src, raw)
    check_config(raw, f"{src.what}: config")
    return cfg


def _parsed(src: ImageSource, raw: bytes) -> ImageConfig:
    cfg = parse_config(raw, f"{src.what}: config")
    if len(src.layers) != len(cfg.diff_ids):
        raise InvalidInput(
            f"{src.what}: {len(src.layers)} layers listed but the config has "
            f"{len(cfg.diff_ids)} diff IDs (rootfs.diff_ids)"
        )
    return cfg


def _expected(src: ImageSource, cfg: ImageConfig | None) -> Sequence[DiffID | None]:
    """Each layer's DiffID as the config gives it, or as its source knows it."""
    return cfg.diff_ids if cfg is not None else [layer.diff_id for layer in src.layers]


def _known_chains(src: ImageSource, cfg: ImageConfig | None) -> list[ChainID | None]:
    """Each layer's chain, where every DiffID up to it is known before reading."""
    if cfg is not None:
        return list(cfg.chain_ids)
    known: list[DiffID] = []
    for layer in src.layers:
        if layer.diff_id is None:
            break
        known.append(layer.diff_id)
    chains: list[ChainID | None] = list(chain_ids(known))
    return chains + [None] * (len(src.layers) - len(chains))


def add_images(
    store: Store,
    sources: Sequence[ImageSource],
    progress: Progress | None = None,
    jobs: int | None = None,
) -> list[LoadedImage]:
    """Add images to ``store`` in one publish step (see the module documentation);
    ``jobs`` is how many layers are staged at once (default: one per CPU)."""
    progress = progress or SILENT
    # First, what a dead writer left is finished or undone: what this load finds stored
    # must still be there when it publishes.
    store.images.finish_pending()
    given: list[ImageConfig | None] = []
    for src in sources:
        _check_references(src)
        given.append(_given(src, src.config) if isinstance(src.config, bytes) else None)

    # Which layer bytes must be read: a layer is skipped when its chain is stored and the
    # blob the image refers to (if any) is there too. Equal sources are read once.
    wanted: dict[str, tuple[LayerSource, DiffID | None]] = {}
    for src, cfg in zip(sources, given, strict=True):
        chains = _known_chains(src, cfg)
        for layer, diff_id, chain in zip(src.layers, _expected(src, cfg), chains, strict=True):
            have_chain = chain is not None and store.layers.exists(chain)
            have_blob = layer.blob_digest is None or store.content.exists(layer.blob_digest)
            if have_chain and have_blob:
                continue
            wanted.setdefault(layer.stage_key, (layer, diff_id))

    staged: dict[str, StagedLayer] = {}
    try:
        _stage_all(store, wanted, staged, progress, jobs)
        for src, cfg in zip(sources, given, strict=True):
            # Sources that share bytes were staged once, checked against the first's
            # DiffID: each of the others must expect the same.
            for layer, diff_id in zip(src.layers, _expected(src, cfg), strict=True):
                s = staged.get(layer.stage_key)
                if s is not None and diff_id is not None and s.diff_id != diff_id:
                    raise DigestMismatch(f"{layer.what}: diff ID", diff_id, s.diff_id)
        configs = [
            cfg if cfg is not None else _made(src, staged)
            for src, cfg in zip(sources, given, strict=True)
        ]
        return _publish(store, sources, configs, staged)
    finally:
        for s in staged.values():
            s.discard()


def _made(src: ImageSource, staged: dict[str, StagedLayer]) -> ImageConfig:
    """The config a :data:`ConfigMaker` makes from the DiffIDs the layers turned out to
    have; it must list exactly those."""
    assert not isinstance(src.config, bytes)
    diff_ids: list[DiffID] = []
    for layer in src.layers:
        s = staged.get(layer.stage_key)
        diff_id = s.diff_id if s is not None else layer.diff_id
        assert diff_id is not None  # a layer without a known DiffID is always staged
        diff_ids.append(diff_id)
    cfg = _parsed(src, src.config(diff_ids))
    if list(cfg.diff_ids) != diff_ids:
        raise InvalidInput(f"{src.what}: the config made does not list the layers' DiffIDs")
    return cfg


def _stage_all(
    store: Store,
    wanted: dict[str, tuple[LayerSource, DiffID | None]],
    staged: dict[str, StagedLayer],
    progress: Progress,
    jobs: int | None,
) -> None:
    """Stage every wanted layer into ``staged``, largest first (see the module
    documentation); what was staged stays there for the caller to discard."""
    order = sorted(wanted, key=lambda k: wanted[k][0].expected_read or 0, reverse=True)
    lock = threading.Lock()

    def job(key: str) -> parallel.Job:
        layer, diff_id = wanted[key]

        def stage(stop: parallel.Stop) -> None:
            # Named by the digest of the bytes read, else the DiffID they must have.
            shown = layer.blob_digest or diff_id
            # (the hex of a digest given as a plain string, by a caller, shortened too)
            short = str(shown).partition(":")[2][:12] if shown else ""
            task = progress.task(task_label(short, layer.status or LOADING), layer.expected_read)

            def update(done: int) -> None:
                # Only an interrupt stops a layer in flight: it runs to its end after
                # another failed, so that the first failure in order is the one told.
                stop.check(on_failure=False)
                task.update(done)

            with layer.open() as f:
                s = stage_layer(
                    f,
                    store.content,
                    what=layer.what,
                    expected_blob=layer.blob_digest,
                    expected_blob_size=layer.blob_size,
                    expected_diff_id=diff_id,
                    progress=update,
                )
            with lock:
                staged[key] = s
            task.finish()

        return stage

    workers = jobs or os.cpu_count() or 1
    parallel.run_all([job(key) for key in order], workers)


def _plan(
    sources: Sequence[ImageSource], configs: list[ImageConfig]
) -> Iterator[tuple[int, LayerSource, ChainID, ChainID | None]]:
    """Each layer of each image, with its chain and its parent's chain."""
    for i, (src, cfg) in enumerate(zip(sources, configs, strict=True)):
        parent: ChainID | None = None
        for layer, chain in zip(src.layers, cfg.chain_ids, strict=True):
            yield i, layer, chain, parent
            parent = chain


def _publish(
    store: Store,
    sources: Sequence[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[LoadedImage]:
    tags = [(ref, cfg.id) for src, cfg in zip(sources, configs, strict=True) for ref in src.tags]
    with store.transaction():
        # Under the lock (and after what a dead writer left was finished or undone),
        # refuse what would fail half-way: a name that cannot be set, or a layer that
        # was not read because the store had it, and that is gone since.
        store.references.add_all(tags, force_tags=True, check_only=True)
        for _, layer, chain, _ in _plan(sources, configs):
            if layer.stage_key in staged:
                continue
            if not store.layers.exists(chain) or (
                layer.blob_digest is not None and not store.content.exists(layer.blob_digest)
            ):
                raise Conflict(
                    f"{layer.what}: layer {chain} was removed from the store while "
                    "loading; load again"
                )
        # What this load makes, recorded first: if it dies before its references are
        # written (the last step), the next writer removes those images again.
        # (each once: an index may name one image many times)
        new = list(dict.fromkeys(cfg.id for cfg in configs if not store.images.exists(cfg.id)))
        intent = intent_to_create(new, tags)
        if new:
            store.images.intend(intent)
        made = _not_yet_stored(store, sources, configs, staged)
        try:
            ids = _publish_images(store, sources, configs, staged)
            store.references.add_all(tags, force_tags=True)
        except BaseException:
            _undo(store, intent, made)
            raise
    return [LoadedImage(i, tuple(src.tags)) for i, src in zip(ids, sources, strict=True)]


def _not_yet_stored(
    store: Store,
    sources: Sequence[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> tuple[list[ChainID], list[Digest]]:
    """The chains and blobs a publish would add: what undoing it removes."""
    chains = [c for _, _, c, _ in _plan(sources, configs) if not store.layers.exists(c)]
    blobs = [s.blob.digest for s in staged.values()]
    blobs += [digest_bytes(src.manifest) for src in sources if src.manifest is not None]
    return list(dict.fromkeys(chains)), [
        b for b in dict.fromkeys(blobs) if not store.content.exists(b)
    ]


def _undo(store: Store, intent: dict[str, Any], made: tuple[list[ChainID], list[Digest]]) -> None:
    """Put the store back as it was after a publish failed half-way (a full disk, an
    I/O error): the images it made, then the layers and blobs it added that nothing
    needs. Best effort: the publish's own error is the one reported, and whatever is
    left is garbage nothing names (``gc``)."""
    with contextlib.suppress(OcistoreError, OSError):
        store.recover(intent)
        chains, blobs = made
        gc.sweep(store.layers, store.content, store.images.list(), chains, blobs)
        store.images.settled()  # else the marker stays, and the next writer undoes it


def intent_to_create(
    images: Sequence[ImageID], tags: Sequence[tuple[Reference, ImageID]]
) -> dict[str, Any]:
    """The dirty marker of a change that adds ``images`` and points ``tags`` at them
    (see :meth:`ocistore.store.store.Store.recover`)."""
    return {"create": list(images), "tags": [[str(lookup_key(r)), i] for r, i in tags]}


def _publish_images(
    store: Store,
    sources: Sequence[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[ImageID]:
    """Layers, then images, then parents (the caller holds the transaction)."""
    extra_blobs: list[list[Digest]] = [[] for _ in sources]
    for i, layer, chain, parent in _plan(sources, configs):
        s = staged.get(layer.stage_key)
        # A staged layer may sit at several places (the same tar in two chains): its
        # blob is published by the first, and the later ones point at that blob.
        if s is not None and (s.blob.path.exists() or store.content.exists(s.blob.digest)):
            if not store.layers.exists(chain):
                store.layers.publish(s, parent)
            elif layer.blob_digest is not None and store.layers.get(chain).blob.digest != (
                s.blob.digest
            ):
                # Same layer, other blob, named by the image's manifest: keep the blob
                # this image came with. (A layer read only to learn its DiffID, as an
                # import's, is dropped: the store has it.)
                store.content.publish(s.blob)
                extra_blobs[i].append(s.blob.digest)
        stored_blob = store.layers.get(chain).blob.digest
        if layer.blob_digest and layer.blob_digest != stored_blob:
            extra_blobs[i].append(layer.blob_digest)
    ids: list[ImageID] = []
    # One image may come with many manifests (an index naming it many times): its blobs
    # are kept, and its manifest named, in one write each, not one per manifest.
    kept: dict[ImageID, list[Digest]] = {}
    named: dict[ImageID, Digest] = {}
    for src, cfg, blobs in zip(sources, configs, extra_blobs, strict=True):
        image_id = store.images.create(cfg)
        manifest_digest = store.content.write(src.manifest) if src.manifest is not None else None
        kept.setdefault(image_id, []).extend(blobs)
        if manifest_digest is not None:
            kept[image_id].append(manifest_digest)
            named[image_id] = manifest_digest  # the last one, as a save re-emits one
        ids.append(image_id)
    for image_id, blobs in kept.items():
        if blobs:  # kept alive first, then pointed at: a crash between leaves no dangling name
            store.images.set_blobs(image_id, list(dict.fromkeys(blobs)))
        if image_id in named:
            store.backend.set_metadata(image_id, MANIFEST, named[image_id].encode())
    for image_id, src in zip(ids, sources, strict=True):
        if src.tagged_now:
            store.record_tagged(image_id)
    for i, src in enumerate(sources):
        if src.parent is not None and ids[src.parent] != ids[i]:
            store.images.set_parent(ids[i], ids[src.parent])
    return ids


def register_layer(store: Store, stream: IO[bytes], parent: ChainID | None = None) -> Layer:
    """Stage one layer and publish it on top of ``parent`` (no image: Docker's layer
    store ``Register``; a layer no image needs is garbage for ``gc``)."""
    staged = stage_layer(stream, store.content)
    try:
        with store.transaction():
            return store.layers.publish(staged, parent)
    finally:
        staged.discard()  # whatever was not published
