"""Loading images into the store in one publish step.

:func:`load_images` takes what a format found (configs, layer sources, tags, manifests),
stages every layer in ``tmp/`` outside the lock (several at once: hashing and
decompression release the GIL), checks every digest, size and DiffID, and only then
publishes everything under one lock, bottom-up. Bad input is refused before anything
becomes visible, and staged files are removed: the store is as it was.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple

from ..errors import Conflict, InvalidInput
from ..progress import Progress
from ..spec.config import ImageConfig, parse_config
from ..spec.digest import ChainID, DiffID, Digest, ImageID
from ..spec.reference import Reference
from .staging import StagedLayer, stage_layer


class LayerSource(NamedTuple):
    """Where one layer of an image comes from, and what it must hash to."""

    open: Callable[[], IO[bytes]]
    what: str
    blob_digest: Digest | None = None
    blob_size: int | None = None
    #: A key that identifies the same bytes across images (so they are staged once).
    key: str = ""
    #: How many bytes reading gives, when known but not promised by a digest (a member's
    #: size in a tar): for progress, and to stage the largest layers first. Not checked.
    read_size: int | None = None

    @property
    def stage_key(self) -> str:
        """What identifies the bytes to stage: equal layers of two images are read once."""
        return self.key or self.blob_digest or self.what

    @property
    def expected_read(self) -> int | None:
        return self.blob_size if self.blob_size is not None else self.read_size


class ImageSource:
    """One image as a format found it."""

    __slots__ = ("config", "layers", "manifest", "parent", "tags", "what")

    def __init__(
        self,
        config: bytes,
        what: str,
        layers: list[LayerSource],
        tags: list[Reference] | None = None,
        manifest: bytes | None = None,
        parent: int | None = None,
    ) -> None:
        self.config = config
        self.what = what
        self.layers = layers
        self.tags: list[Reference] = [] if tags is None else tags
        #: An OCI/Docker manifest to keep with the image, so a later save can re-emit it.
        self.manifest = manifest
        #: Index into the list given to :func:`load_images` of this image's parent.
        self.parent = parent

    def __repr__(self) -> str:
        return f"ImageSource({self.what!r})"


class LoadedImage(NamedTuple):
    id: ImageID
    tags: tuple[Reference, ...]


def _check_layer_count(src: ImageSource, cfg: ImageConfig) -> None:
    if len(src.layers) != len(cfg.diff_ids):
        raise InvalidInput(
            f"{src.what}: {len(src.layers)} layers listed but the config has "
            f"{len(cfg.diff_ids)} diff IDs (rootfs.diff_ids)"
        )


def load_images(
    store: Any,
    sources: list[ImageSource],
    progress: Progress | None = None,
    jobs: int | None = None,
) -> list[LoadedImage]:
    """Load images into ``store`` (an :class:`ocistore.store.Store`) in one publish step."""
    progress = progress or Progress(False)
    configs: list[ImageConfig] = []
    for src in sources:
        cfg = parse_config(src.config, f"{src.what}: config")
        _check_layer_count(src, cfg)
        configs.append(cfg)

    # Which layer bytes must be read: a layer is skipped when its chain is stored and the
    # blob the image refers to (if any) is there too. Equal sources are read once.
    wanted: dict[str, tuple[LayerSource, DiffID]] = {}
    for src, cfg in zip(sources, configs, strict=True):
        for layer, diff_id, chain in zip(src.layers, cfg.diff_ids, cfg.chain_ids, strict=True):
            have_chain = store.layers.exists(chain)
            have_blob = layer.blob_digest is None or store.content.exists(layer.blob_digest)
            if have_chain and have_blob:
                continue
            wanted.setdefault(layer.stage_key, (layer, diff_id))

    staged: dict[str, StagedLayer] = {}

    def stage(key: str, check: Callable[[], None]) -> tuple[str, StagedLayer]:
        layer, diff_id = wanted[key]
        task = progress.task(layer.what, layer.expected_read)

        def update(done: int) -> None:
            check()
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
        task.finish()
        return key, s

    try:
        _stage_all(stage, wanted, staged, jobs)
        return _publish(store, sources, configs, staged)
    finally:
        for s in staged.values():
            s.discard()


class _Abandoned(Exception):
    """Raised inside a staging thread once the load was interrupted."""


def _stage_all(
    stage: Callable[[str, Callable[[], None]], tuple[str, StagedLayer]],
    wanted: dict[str, tuple[LayerSource, DiffID]],
    staged: dict[str, StagedLayer],
    jobs: int | None,
) -> None:
    """Stage every wanted layer into ``staged``, several at once, largest first.

    Largest first, so that the last layer to finish is a small one rather than a large
    one started late on a worker that is otherwise done. After a failure no new layer is
    started; what was staged stays in ``staged`` for the caller to discard, and the
    first failure, in that order, is raised. ``stage`` calls the function it is given as
    it goes: after an interrupt (Ctrl-C) that function raises, so layers being staged
    stop and remove their files before the interrupt goes on up.
    """
    order = sorted(wanted, key=lambda k: wanted[k][0].expected_read or 0, reverse=True)
    workers = max(1, min(jobs or (os.cpu_count() or 1), len(order) or 1))
    if workers == 1:
        for key in order:
            k, s = stage(key, lambda: None)
            staged[k] = s
        return
    todo = iter(order)
    lock = threading.Lock()
    errors: list[tuple[int, BaseException]] = []
    position = {key: i for i, key in enumerate(order)}
    abandoned = threading.Event()
    # Threads still working, plus one for the starting below (so that a thread done
    # early does not look like the last one).
    running = [1]
    finished = threading.Event()

    def done() -> None:
        with lock:
            running[0] -= 1
            if not running[0]:
                finished.set()

    def check() -> None:
        if abandoned.is_set():
            raise _Abandoned

    def take() -> str | None:
        with lock:
            return None if errors or abandoned.is_set() else next(todo, None)

    def work() -> None:
        try:
            while (key := take()) is not None:
                try:
                    k, s = stage(key, check)
                except BaseException as e:
                    with lock:
                        errors.append((position[key], e))
                    return
                with lock:
                    if abandoned.is_set():
                        s.discard()
                        return
                    staged[k] = s
        finally:
            done()

    # Waited for with an event, not Thread.join: in Python 3.11 a join cut short by
    # Ctrl-C takes its thread for finished, and the interpreter would then exit without
    # waiting for it to remove its staged file.
    threads: list[threading.Thread] = []
    try:
        try:
            for i in range(workers):
                thread = threading.Thread(target=work, name=f"stage-{i}")
                with lock:
                    running[0] += 1
                try:
                    thread.start()
                except Exception:  # it could not start, so it will not count itself out
                    done()
                    raise
                threads.append(thread)
        finally:
            done()
        finished.wait()
    except BaseException:
        # Interrupted (or a thread could not start): the layers in flight stop at their
        # next piece and remove their files; nothing is left running behind the caller.
        abandoned.set()
        while not finished.wait(0.05) and any(t.is_alive() for t in threads):
            pass
        raise
    if errors:
        raise min(errors, key=lambda item: item[0])[1]


def _plan(
    sources: list[ImageSource], configs: list[ImageConfig]
) -> Iterator[tuple[int, LayerSource, ChainID, ChainID | None]]:
    """Each layer of each image, with its chain and its parent's chain."""
    for i, (src, cfg) in enumerate(zip(sources, configs, strict=True)):
        parent: ChainID | None = None
        for layer, chain in zip(src.layers, cfg.chain_ids, strict=True):
            yield i, layer, chain, parent
            parent = chain


def _staged(layer: LayerSource, staged: dict[str, StagedLayer]) -> StagedLayer | None:
    return staged.get(layer.stage_key)


def _publish(
    store: Any,
    sources: list[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[LoadedImage]:
    tags = [(ref, cfg.id) for src, cfg in zip(sources, configs, strict=True) for ref in src.tags]
    with store.lock.exclusive():
        # Under the lock, and before the transaction marks the index dirty, refuse what
        # would fail half-way: a name that cannot be set, or a layer that was not read
        # because the store had it, and that is gone since.
        store.references.add_all(tags, force_tags=True, check_only=True)
        for _, layer, chain, _ in _plan(sources, configs):
            if _staged(layer, staged) is None and not store.layers.exists(chain):
                raise Conflict(
                    f"{layer.what}: layer {chain} was removed from the store while "
                    "loading; load again"
                )
        with store.transaction():
            ids = _publish_images(store, sources, configs, staged)
            store.references.add_all(tags, force_tags=True)
    return [LoadedImage(i, tuple(src.tags)) for i, src in zip(ids, sources, strict=True)]


def _publish_images(
    store: Any,
    sources: list[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[ImageID]:
    """Layers, then images, then parents (the caller holds the transaction)."""
    extra_blobs: list[list[Digest]] = [[] for _ in sources]
    for i, layer, chain, parent in _plan(sources, configs):
        s = _staged(layer, staged)
        # A staged layer may sit at several places (the same tar in two chains): its
        # blob is committed by the first, and the later ones point at that blob.
        if s is not None and (s.blob.path.exists() or store.content.exists(s.blob.digest)):
            if not store.layers.exists(chain):
                store.layers.publish(s, parent)
            elif store.layers.get(chain).blob.digest != s.blob.digest:
                # Same layer, other blob: keep the blob this image came with.
                store.content.commit(s.blob)
                extra_blobs[i].append(s.blob.digest)
        stored_blob = store.layers.get(chain).blob.digest
        if layer.blob_digest and layer.blob_digest != stored_blob:
            extra_blobs[i].append(layer.blob_digest)
    ids: list[ImageID] = []
    for src, cfg, blobs in zip(sources, configs, extra_blobs, strict=True):
        image_id = store.images.create(cfg)
        if src.manifest is not None:
            manifest_digest = store.content.write(src.manifest)
            store.backend.set_metadata(image_id, "manifest", manifest_digest.encode())
            blobs.append(manifest_digest)
        if blobs:
            store.images.set_blobs(image_id, blobs)
        ids.append(image_id)
    for i, src in enumerate(sources):
        if src.parent is not None and ids[src.parent] != ids[i]:
            store.images.set_parent(ids[i], ids[src.parent])
    return ids
