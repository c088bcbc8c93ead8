"""The store as a whole: one root directory, its parts, and the user-level verbs.

Layout::

    <root>/
      lock                                  the OS file lock writers publish under
      tmp/                                  work in progress; garbage after a crash
      blobs/sha256/<hex>                    the content store (layer blobs, manifests)
      layerdb/sha256/<chain hex>/layer.json layer chains
      imagedb/content/sha256/<hex>          image configs, exact bytes
      imagedb/metadata/sha256/<hex>/<key>   per-image metadata (parent, blobs)
      imagedb/index.json                    derived index of the images (rebuildable)
      repositories.json                     tags and digests -> image IDs

The library takes explicit paths: only the command line reads the environment.
Everything is published bottom-up (blobs, layers, config, references) and deleted
top-down, so a crash leaves at worst unreferenced garbage, which :meth:`Store.gc`
removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

from ..errors import Conflict, InvalidInput, NotFound, OcistoreError
from ..spec.digest import ChainID, Digest, ImageID
from ..spec.platform import host_platform
from ..spec.reference import Reference, looks_like_id_prefix, parse_tagged
from . import fsutil
from .backend import FSBackend
from .content import ContentStore
from .images import Image, ImageRecord, ImageStore, newest_first
from .layers import Layer, LayerStore
from .refs import ReferenceStore, check_tag
from .staging import stage_layer

#: Temporary files older than this are garbage even while other writers run.
TMP_GRACE_SECONDS = 24 * 3600


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RemoveEvent(NamedTuple):
    """One line of what ``rmi`` did: ``("Untagged", "busybox:latest")`` or ``("Deleted", id)``."""

    action: str
    subject: str

    def __str__(self) -> str:
        return f"{self.action}: {self.subject}"


_R = TypeVar("_R")


def _newest_first(
    records: list[ImageRecord], refs: Mapping[ImageID, list[_R]], all_images: bool
) -> list[tuple[ImageRecord, list[_R]]]:
    records = newest_first(records)
    get = refs.get
    if all_images:
        return [(rec, get(rec.id) or []) for rec in records]
    parents = {r.parent for r in records if r.parent}
    return [(rec, get(rec.id) or []) for rec in records if rec.id not in parents or get(rec.id)]


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.tmpdir = self.root / "tmp"
        for d in (self.root, self.tmpdir):
            fsutil.makedirs(d)
        self.lock = fsutil.StoreLock(self.root / "lock")
        self.content = ContentStore(self.root / "blobs", self.tmpdir)
        self.backend = FSBackend(self.root / "imagedb", self.tmpdir)
        self.layers = LayerStore(self.root / "layerdb", self.content, self.tmpdir)
        self.images = ImageStore(self.backend, self.layers, self.lock, self.tmpdir)
        self.references = ReferenceStore(self.root / "repositories.json", self.tmpdir, self.lock)

    # -- composite writes ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """One exclusive publish step: everything inside becomes visible under one lock."""
        with self.images.writing():
            yield self

    def register_layer(self, stream: IO[bytes], parent: ChainID | None = None) -> Layer:
        """Register a layer (plain, gzip or zstd tar) on top of ``parent``."""
        staged = stage_layer(stream, self.content)
        try:
            with self.transaction():
                return self.layers.publish(staged, parent)
        finally:
            staged.discard()  # whatever was not committed

    # -- lookups ----------------------------------------------------------------------

    def resolve(self, name: str) -> ImageID:
        """An image by reference (``busybox``, ``name@sha256:…``), full ID or ID prefix."""
        if not name:
            raise InvalidInput("empty image name")
        if name.startswith("sha256:"):
            return self.images.search(name)
        ref: Reference | None = None
        with contextlib.suppress(InvalidInput):
            ref = parse_tagged(name)
        if ref is not None:
            with contextlib.suppress(NotFound):
                return self.references.get(ref)
        if looks_like_id_prefix(name):
            with contextlib.suppress(NotFound):
                return self.images.search(name)
        if ref is None:
            parse_tagged(name)  # raise the reference error
        raise NotFound(f"No such image: {name}")

    def image(self, name: str) -> Image:
        return self.images.get(self.resolve(name))

    # -- user verbs -------------------------------------------------------------------

    def import_tarball(
        self,
        stream: IO[bytes],
        reference: str | None = None,
        source: str = "-",
        progress: Callable[[int], None] | None = None,
        changes: dict[str, Any] | None = None,
    ) -> ImageID:
        """Make a one-layer image from a root file system tarball, as ``docker import``."""
        ref = parse_tagged(reference) if reference else None
        if ref is not None:
            check_tag(ref)  # before anything is published
        staged = stage_layer(stream, self.content, what=f"tarball {source}", progress=progress)
        created = now_rfc3339()
        config: dict[str, Any] = {
            "architecture": host_platform().architecture,
            "config": changes or {},
            "created": created,
            "history": [{"created": created, "comment": f"Imported from {source}"}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [staged.diff_id]},
        }
        raw = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        try:
            with self.transaction():
                self.layers.publish(staged, None)
                image_id = self.images.create(raw)
                if ref is not None:
                    self.references.add_tag(ref, image_id, force=True)
        finally:
            staged.discard()
        return image_id

    def tag(self, source: str, target: str) -> Reference:
        """Point ``target`` at the image ``source`` names, moving it if it exists."""
        image_id = self.resolve(source)
        ref = parse_tagged(target)
        with self.transaction():
            self.images.record(image_id)
            self.references.add_tag(ref, image_id, force=True)
        return ref

    def remove(self, name: str, force: bool = False, prune: bool = True) -> list[RemoveEvent]:
        """Remove an image or a reference, with Docker's ``rmi`` rules and messages."""
        events: list[RemoveEvent] = []
        with self.transaction():
            image_id = self.resolve(name)
            refs = self.references.references(image_id)
            by_id = self._named_by_id(name, image_id)
            if not by_id:
                ref = parse_tagged(name)
                if self.references.delete(ref):
                    events.append(RemoveEvent("Untagged", ref.familiar()))
                remaining = self.references.references(image_id)
                if ref.digest is None and not any(
                    r.digest is None and r.name == ref.name for r in remaining
                ):
                    # Only digest references of that repository are left: drop them too.
                    digests = [r for r in remaining if r.digest is not None and r.name == ref.name]
                    for r in self.references.delete_all(digests):
                        events.append(RemoveEvent("Untagged", r.familiar()))
                    remaining = self.references.references(image_id)
                if remaining or self.images.children(image_id):
                    # Untagged only: an image with children stays, as in Docker.
                    return events
            elif self.images.children(image_id):
                # Refused before anything is untagged, so the store stays as it was.
                raise Conflict(
                    f"conflict: unable to delete {image_id.short()} (cannot be forced) "
                    "- image has dependent child images"
                )
            elif refs:
                repos = {r.name for r in refs}
                if len(repos) > 1 and not force:
                    raise Conflict(
                        f"conflict: unable to delete {image_id.short()} (must be forced) "
                        "- image is referenced in multiple repositories"
                    )
                for r in self.references.delete_image(image_id):  # one write for all
                    events.append(RemoveEvent("Untagged", r.familiar()))
            events.extend(self._delete_image(image_id, prune))
        return events

    def _named_by_id(self, name: str, image_id: ImageID) -> bool:
        """Whether the user named the image by ID (or prefix) rather than by reference."""
        if name.startswith("sha256:"):
            return True
        with contextlib.suppress(InvalidInput, NotFound):
            if self.references.get(parse_tagged(name)) == image_id:
                return False
        return True

    def _delete_image(self, image_id: ImageID, prune: bool) -> list[RemoveEvent]:
        parent = self.images.get_parent(image_id)
        released = self.images.delete(image_id)
        events = [RemoveEvent("Deleted", image_id)]
        events += [RemoveEvent("Deleted", layer.chain_id) for layer in released]
        if (
            prune
            and parent is not None
            and self.images.exists(parent)
            and not self.references.references(parent)
            and not self.images.children(parent)
        ):
            with contextlib.suppress(Conflict):
                events += self._delete_image(parent, prune)
        return events

    # -- views ------------------------------------------------------------------------

    def list_images(self, all_images: bool = False) -> list[tuple[ImageRecord, list[Reference]]]:
        """Images with their references, newest first; without ``all_images`` the
        untagged intermediate images (those with children) are left out, as Docker does."""
        self.images.refresh()  # first: it may rewrite a stale index
        with self.lock.shared():
            records = self.images.list()
            refs = self.references.by_image()
        return _newest_first(records, refs, all_images)

    def list_image_names(self, all_images: bool = False) -> list[tuple[ImageRecord, list[str]]]:
        """:meth:`list_images` with each reference in its familiar form (``busybox:1``):
        what a listing prints, without building a reference object per tag."""
        self.images.refresh()  # first: it may rewrite a stale index
        with self.lock.shared():
            records = self.images.list()
            names = self.references.familiar_by_image()
        return _newest_first(records, names, all_images)

    def inspect(self, name: str) -> dict[str, Any]:
        """A dict shaped like ``docker image inspect``."""
        image = self.image(name)
        cfg = image.config
        refs = self.references.references(image.id)
        data = cfg.data
        out: dict[str, Any] = {
            "Id": image.id,
            "RepoTags": [r.familiar() for r in refs if r.digest is None],
            "RepoDigests": [r.familiar() for r in refs if r.digest is not None],
            "Parent": image.record.parent or "",
            "Comment": data.get("comment", ""),
            "Created": cfg.created,
            "DockerVersion": data.get("docker_version", ""),
            "Author": cfg.author,
            "Config": cfg.container_config,
            "Architecture": cfg.architecture,
        }
        if cfg.variant:
            out["Variant"] = cfg.variant
        out["Os"] = cfg.os
        if data.get("os.version"):
            out["OsVersion"] = data["os.version"]
        out["Size"] = image.record.size
        out["RootFS"] = {"Type": "layers", "Layers": list(cfg.diff_ids)}
        out["Metadata"] = {"LastTagTime": ""}
        return out

    def history(self, name: str) -> list[dict[str, Any]]:
        """The image's history, newest first, as ``docker history`` shows it."""
        image = self.image(name)
        cfg = image.config
        chains = list(cfg.chain_ids)
        rows: list[dict[str, Any]] = []
        layer_index = 0
        history = cfg.history or [{} for _ in chains]
        for entry in history:
            size = 0
            if not entry.get("empty_layer"):
                if layer_index < len(chains):
                    size = self.layers.get(chains[layer_index]).size
                layer_index += 1
            rows.append(
                {
                    "Id": "<missing>",
                    "Created": entry.get("created", ""),
                    "CreatedBy": entry.get("created_by", ""),
                    "Size": size,
                    "Comment": entry.get("comment", ""),
                    "Tags": [],
                }
            )
        rows.reverse()
        if rows:
            rows[0]["Id"] = image.id
            rows[0]["Tags"] = [
                r.familiar() for r in self.references.references(image.id) if r.digest is None
            ]
        return rows

    # -- maintenance ------------------------------------------------------------------

    def gc(self, grace_seconds: float = TMP_GRACE_SECONDS) -> list[str]:
        """Remove what nothing points at: layers no image needs, blobs nothing needs,
        and temporary files older than ``grace_seconds``. Returns what was removed."""
        removed: list[str] = []
        with self.transaction():
            records = self.images.list()
            needed_chains: set[ChainID] = set()
            needed_blobs: set[Digest] = set()
            for r in records:
                needed_chains.update(r.chains)
                needed_blobs.update(r.blobs)
            for chain in self.layers.walk():
                if chain in needed_chains:
                    with contextlib.suppress(OcistoreError):
                        needed_blobs.add(self.layers.get(chain).blob.digest)
                    continue
                self.layers.delete(chain)
                removed.append(f"layer {chain}")
            for blob in list(self.content.walk()):
                if blob not in needed_blobs:
                    self.content.delete(blob)
                    removed.append(f"blob {blob}")
            cutoff = time.time() - grace_seconds
            for entry in os.scandir(self.tmpdir):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        fsutil.remove(Path(entry.path))
                        removed.append(f"temporary {entry.name}")
        return removed

    def fsck(self) -> list[str]:
        """Verify every config, layer and blob; returns the problems found (none: [])."""
        problems: list[str] = []
        self.images.refresh(force=True)
        for digest, reason in self.images.skipped:
            problems.append(f"image {digest}: {reason}")
        for rec in self.images.list():
            try:
                self.images.get(rec.id)
            except OcistoreError as e:
                problems.append(str(e))
        for chain in self.layers.walk():
            try:
                with self.layers.open_tar(chain) as f:
                    while f.read(1 << 20):
                        pass
            except OcistoreError as e:
                problems.append(f"layer {chain}: {e}")
        for ref, image_id in self.references.all().items():
            if not self.images.exists(image_id):
                problems.append(f"reference {ref.familiar()} points at missing image {image_id}")
        return problems
