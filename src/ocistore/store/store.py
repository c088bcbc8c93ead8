"""The store as a whole: one root directory, its parts, and the verbs on them.

Layout::

    <root>/
      lock                                  the OS file lock writers publish under
      tmp/                                  work in progress; garbage after a crash
      blobs/sha256/<hex>                    the content store (layer blobs, manifests)
      layerdb/sha256/<chain hex>/layer.json layer chains
      imagedb/content/sha256/<hex>          image configs, exact bytes
      imagedb/metadata/sha256/<hex>/<key>   per-image metadata (parent, manifest, blobs)
      imagedb/index.json                    derived index of the images (rebuildable)
      imagedb/index.dirty                   present while a writer changes the store
      repositories.json                     tags and digests -> image IDs

:class:`Store` is the face of the package: the formats, the command line and programs
use its verbs and never its parts. The library takes explicit paths: only the command
line reads the environment. Everything is published bottom-up (blobs, layers, config,
references) and deleted top-down, so a crash leaves at worst unreferenced garbage, which
:meth:`Store.gc` removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeVar

from ..errors import (
    Conflict,
    CorruptStore,
    DigestMismatch,
    InvalidInput,
    NotFound,
    OcistoreError,
    PartiallyDone,
    ReadOnlyStore,
    StorageError,
    UnsupportedStore,
)
from ..progress import SILENT, VERIFYING, Progress, task_label
from ..spec.digest import ChainID, DiffID, Digest, ImageID
from ..spec.gotime import GoTime, now_rfc3339nano, unix_seconds
from ..spec.platform import host_platform
from ..spec.reference import Reference, check_digest_reference, parse, parse_tagged
from . import fsutil, gc, ingest
from .backend import LAST_TAGGED, MANIFEST, FSBackend
from .content import ContentStore
from .distribution import DistributionHints
from .images import Image, ImageRecord, ImageStore, newest_first
from .ingest import ImageSource, LayerSource, LoadedImage
from .layers import Layer, LayerReader, LayerStore
from .refs import ReferenceStore, lookup_key
from .resolve import Resolver, Selected

if TYPE_CHECKING:  # imported when first used: most commands never need it
    from . import usage

__all__ = ["RemoveEvent", "Store"]

#: Temporary files whose writer cannot be told to be gone (another PID namespace, a
#: resumable download) are garbage once they are older than this.
TMP_GRACE_SECONDS = 24 * 3600

#: The store's format: what ``<root>/format`` says. A store of a later format is
#: refused; a store without the file (written before it existed) is this format.
STORE_FORMAT = 1
FORMAT_FILE = "format"

#: The store's own names, none of which may be a symlink (the root itself may).
_OWN_NAMES = (
    "lock",
    "tmp",
    FORMAT_FILE,
    "blobs",
    "blobs/sha256",
    "layerdb",
    "layerdb/sha256",
    "imagedb",
    "imagedb/content",
    "imagedb/content/sha256",
    "imagedb/metadata",
    "imagedb/metadata/sha256",
    "imagedb/index.json",
    "distribution",
    "distribution/v2metadata-by-diffid",
    "distribution/v2metadata-by-diffid/sha256",
    "imagedb/index.dirty",
    "repositories.json",
)


class ImageDetails(NamedTuple):
    """What ``docker image inspect`` shows of an image, as the store knows it."""

    image: Image
    #: The image's tags and digest references, familiar, in Docker's order.
    repo_tags: list[str]
    repo_digests: list[str]
    #: Docker's size of the image: the sum over its layers.
    size: int
    #: When the image was last tagged (RFC 3339, nanoseconds), "" if never since loaded.
    last_tag_time: str


class HistoryEntry(NamedTuple):
    """A row of ``docker history``, as Docker's API gives it (``image.HistoryResponseItem``)."""

    #: The image the row belongs to, ``None`` where the ``Parent`` chain ends (``<missing>``).
    id: ImageID | None
    #: Seconds since the Unix epoch.
    created: int
    created_by: str
    size: int
    comment: str
    tags: list[str]


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


def _single_reference(refs: Sequence[Reference]) -> bool:
    """Whether ``rmi`` by ID may drop every reference of an image without ``-f``
    (Docker's ``isSingleReference``): at most one tag, and digest references only of
    that tag's repository (or, without a tag, of one repository). Two tags of one
    repository are "referenced in multiple repositories" for Docker too."""
    tags = [r for r in refs if r.digest is None]
    if len(tags) > 1:
        return False
    digest_repos = {r.name for r in refs if r.digest is not None}
    if not tags:
        return len(digest_repos) == 1
    return not digest_repos or digest_repos == {tags[0].name}


def _being_written(path: Path) -> bool:
    """Whether a resumable partial blob is open in its writer (which holds its lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _size_of(stream: IO[bytes]) -> int | None:
    """The size of a regular file behind ``stream`` (for progress), else ``None``."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class Store:
    """An image store in the directory ``root`` (created if missing).

    Many processes may use one store at once; every change is published whole under the
    store's lock. Use it as a context manager, or call :meth:`close`, to release the file
    it keeps open. Errors are :class:`~ocistore.errors.OcistoreError` subclasses whose
    message names what they are about.
    """

    def __init__(
        self,
        root: Path | str,
        lock_timeout: float | None = None,
        on_lock_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.tmpdir = self.root / "tmp"
        try:
            for d in (self.root, self.tmpdir):
                fsutil.makedirs(d)
        except (FileExistsError, NotADirectoryError):
            raise InvalidInput(f"{self.root}: not a directory, cannot hold a store") from None
        except OSError as e:
            if not self.root.is_dir():
                raise StorageError("creating the store", self.root, e) from None
            # A store this process may only read: readers work; writers are refused.
        #: Whether this process may change the store (else it only reads it).
        self.writable = os.access(self.tmpdir, os.W_OK) and os.access(self.root, os.W_OK)
        for name in _OWN_NAMES:
            fsutil.refuse_symlink(self.root / name, "store path")
        self._check_format()
        self.lock = fsutil.FileLock(self.root / "lock", timeout=lock_timeout, on_wait=on_lock_wait)
        self.content = ContentStore(self.root / "blobs", self.tmpdir)
        self.backend = FSBackend(self.root / "imagedb", self.tmpdir)
        self.layers = LayerStore(self.root / "layerdb", self.content, self.tmpdir)
        self.images = ImageStore(self.backend, self.layers, self.lock, self.tmpdir)
        self.references = ReferenceStore(self.root / "repositories.json", self.tmpdir, self.lock)
        self.distribution = DistributionHints(self.root, self.tmpdir)
        self._resolver = Resolver(self.images, self.references)
        self.images.recover = self.recover

    def _check_format(self) -> None:
        """Refuse a store of a newer format; mark an older (unmarked) one as this
        format, which reads it unchanged."""
        path = self.root / FORMAT_FILE
        try:
            raw = fsutil.read_own(path, 4096)
        except FileNotFoundError:
            if self.writable:
                fsutil.atomic_write(path, f"{STORE_FORMAT}\n".encode(), self.tmpdir)
            return
        try:
            found = int(raw.decode().strip())
        except (UnicodeDecodeError, ValueError):
            raise CorruptStore(f"{path}: not a store format number") from None
        if found > STORE_FORMAT:
            raise UnsupportedStore(
                f"store {self.root} has format {found}, written by a newer ocistore; "
                f"this one reads formats up to {STORE_FORMAT}: upgrade ocistore"
            )

    def _require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyStore(
                f"store {self.root} cannot be changed by this process "
                "(read-only file system or no write permission): only reading works"
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def close(self) -> None:
        """Release the file the store keeps open (it stays usable)."""
        self.references.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- composite writes ---------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """One exclusive publish step: everything inside becomes visible under one lock.

        The store's lock is taken first; the image index is marked dirty for as long as
        the block runs and written again at its end (so a crash inside leaves a marker
        that makes the next opener rebuild it). Re-entrant.
        """
        self._require_writable()
        with self.lock.exclusive(), self.images.writing():
            yield self

    def add_images(
        self,
        sources: Sequence[ImageSource],
        progress: Progress | None = None,
        jobs: int | None = None,
    ) -> list[LoadedImage]:
        """Add images, described by sources, in one publish step: the one way into the
        store (see :mod:`ocistore.store.ingest`). Every layer read is checked against
        the digest, size and DiffID it must have while it streams in; bad input leaves
        the store as it was. ``jobs`` layers are staged at once (default: one per
        CPU)."""
        self._require_writable()
        return ingest.add_images(self, sources, progress, jobs)

    def register_layer(self, stream: IO[bytes], parent: ChainID | None = None) -> Layer:
        """Register a layer (plain, gzip or zstd tar) on top of ``parent``, with no image
        (a layer no image needs is garbage for :meth:`gc`)."""
        self._require_writable()
        return ingest.register_layer(self, stream, parent)

    def scratch(self, suffix: str = "") -> fsutil.TempFile:
        """A new empty temporary file of the store (a layer compressed to be pushed);
        the caller removes it with ``discard()``; after a crash :meth:`gc` does."""
        self._require_writable()
        return fsutil.TempFile(self.tmpdir, suffix)

    @contextlib.contextmanager
    def scratch_store(self) -> Iterator[Store]:
        """A store of its own in ``tmp/``, removed at the end (after a crash, by
        :meth:`gc`): where ``copy`` between two archives or layouts verifies an image
        on its way, leaving nothing in this store."""
        self._require_writable()
        path = fsutil.temp_path(self.tmpdir, ".store")
        try:
            os.mkdir(path, 0o700)
        except OSError as e:
            raise StorageError("creating", path, e) from None
        try:
            with Store(path) as scratch:
                yield scratch
        finally:
            fsutil.remove(path)

    def spool(self, stream: IO[bytes], suffix: str = "") -> fsutil.TempFile:
        """Copy ``stream`` to its end into a temporary file of the store, for a reader
        that needs to seek (an archive on standard input). The caller removes it with
        ``discard()``; after a crash :meth:`gc` does."""
        tmp = self.scratch(suffix)
        try:
            while data := stream.read(1 << 20):
                tmp.write(data)
            tmp.file.close()
        except BaseException:
            tmp.discard()
            raise
        return tmp

    # -- lookups ----------------------------------------------------------------------

    def resolve(self, name: str) -> ImageID:
        """An image by reference (``busybox``, ``name@sha256:…``), full ID or ID prefix,
        as Docker finds it (:meth:`ocistore.store.resolve.Resolver.resolve`)."""
        return self._resolver.resolve(name)

    def select(self, names: list[str]) -> list[Selected]:
        """The images ``save`` writes for ``names``, each with the reference it is
        written under, as ``docker save`` selects them
        (:meth:`ocistore.store.resolve.Resolver.select`)."""
        return self._resolver.select(names)

    def image(self, name: str) -> Image:
        """The image ``name`` resolves to, its config read and verified."""
        return self.images.get(self.resolve(name))

    def layers_of(self, image: Image) -> list[Layer]:
        """The layers of an image, bottom first."""
        top = image.config.top_chain
        return self.layers.chain(top) if top is not None else []

    def open_layer(self, layer: Layer | ChainID) -> LayerReader:
        """A layer's exact tar, checked against its blob digest, size and DiffID as it
        is read (:class:`~ocistore.store.layers.LayerReader`)."""
        return self.layers.open_tar(layer)

    def open_blob(self, digest: Digest, verify: bool = True) -> IO[bytes]:
        """A stored blob; with ``verify`` its digest is checked when it is read to the
        end."""
        return self.content.open(digest, verify)

    def read_blob(self, digest: Digest) -> bytes:
        """A small stored blob (a manifest), whole and verified."""
        return self.content.read(digest)

    def blob_size(self, digest: Digest) -> int:
        """A stored blob's size (:class:`~ocistore.errors.NotFound` if it is not there)."""
        return self.content.size(digest)

    def kept_manifest(self, image_id: ImageID) -> Digest | None:
        """The digest of the manifest the image came with, if the store kept one."""
        try:
            raw = self.backend.get_metadata(image_id, MANIFEST)
        except NotFound:
            return None
        try:
            return Digest(raw.decode())
        except (UnicodeDecodeError, InvalidInput):
            raise CorruptStore(f"image {image_id}: damaged metadata {MANIFEST!r}") from None

    def keep_manifest(self, image_id: ImageID, raw: bytes) -> Digest:
        """Keep ``raw`` as the manifest of an image that came without one (what ``serve``
        generated for it), so that it is served with the same digest from then on; the
        manifest already kept, if another process was first."""
        with self.transaction():
            self.images.record(image_id)  # (NotFound if it went meanwhile)
            kept = self.kept_manifest(image_id)
            if kept is not None:
                return kept
            digest = self.content.write(raw)
            self.images.set_blobs(image_id, [digest])  # kept alive first, then named
            self.backend.set_metadata(image_id, MANIFEST, digest.encode())
        return digest

    def last_tagged(self, image_id: ImageID) -> str:
        """When the image was last tagged (RFC 3339 with nanoseconds, as Go writes it),
        "" if it was not since it came in."""
        try:
            raw = self.backend.get_metadata(image_id, LAST_TAGGED)
        except NotFound:
            return ""
        try:
            text = raw.decode("ascii")
            GoTime.parse_rfc3339(text)
        except (UnicodeDecodeError, InvalidInput):
            raise CorruptStore(
                f"image {image_id}: damaged metadata {LAST_TAGGED!r} (not an RFC 3339 time)"
            ) from None
        return text

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """Configs the store skipped when it last read them because they failed
        verification, as ``(digest, reason)``."""
        return self.images.skipped

    # -- user verbs -------------------------------------------------------------------

    def import_tarball(
        self,
        stream: IO[bytes],
        reference: str | None = None,
        source: str = "-",
        progress: Progress | None = None,
        changes: Sequence[str] = (),
        message: str | None = None,
    ) -> ImageID:
        """Make a one-layer image from a root file system tarball (plain, gzip or zstd),
        as ``docker import`` does: tagged ``reference`` if given; ``changes`` are
        Dockerfile instructions (``CMD``, ``ENTRYPOINT``, ``ENV``, ``EXPOSE``,
        ``HEALTHCHECK``, ``LABEL``, ``ONBUILD``, ``USER``, ``VOLUME``, ``WORKDIR``) applied
        to the image's config as ``docker import -c`` applies them, checked before the
        tarball is read; ``message`` is the comment (``Imported from -`` by default, as
        Docker writes for a file or standard input); ``source`` names the tarball in
        errors. The config is the one Docker writes, byte for byte, but for its creation
        time and ``docker_version`` (left out: no Docker engine made it)."""
        # (imported here: most commands never need Docker's builder and Go's encoding)
        from ..spec.legacy.changes import build_from_config, import_config

        tags = [parse_tagged(reference)] if reference else []
        container_config = build_from_config(changes)
        comment = message or "Imported from -"

        def make_config(diff_ids: Sequence[DiffID]) -> bytes:
            # Taken once the layer is in, as docker import takes it.
            (diff_id,) = diff_ids
            return import_config(
                container_config,
                diff_id,
                comment=comment,
                created=GoTime.now(),
                architecture=host_platform().architecture,
            )

        what = f"tarball {source}"
        layer = LayerSource(
            open=lambda: contextlib.nullcontext(stream), what=what, read_size=_size_of(stream)
        )
        # Tagged as docker import tags (the time shows as LastTagTime), in its publish.
        image = ImageSource(make_config, what, [layer], tags, tagged_now=bool(tags))
        (loaded,) = self.add_images([image], progress)
        return loaded.id

    def record_tagged(self, image_id: ImageID) -> None:
        """Record now as when ``image_id`` was last tagged (Docker's ``lastUpdated``);
        under the lock, as part of a change."""
        self.backend.set_metadata(image_id, LAST_TAGGED, now_rfc3339nano().encode())

    def tag(self, source: str, target: str) -> Reference:
        """Point ``target`` at the image ``source`` names, moving it if it exists."""
        image_id = self.resolve(source)
        ref = parse_tagged(target)
        with self.transaction():
            self.images.record(image_id)
            # The time first, then the tag: a tag that could not be written puts the
            # time back, so a failed tag changes nothing.
            before: bytes | None = None
            with contextlib.suppress(NotFound):
                before = self.backend.get_metadata(image_id, LAST_TAGGED)
            self.record_tagged(image_id)
            try:
                self.references.add_tag(ref, image_id, force=True)
            except BaseException:
                if before is None:
                    self.backend.delete_metadata(image_id, LAST_TAGGED)
                else:
                    self.backend.set_metadata(image_id, LAST_TAGGED, before)
                raise
        return ref

    def add_repo_digest(self, image_id: ImageID, ref: Reference) -> None:
        """Give ``image_id`` the digest reference ``ref`` (``NAME@DIGEST``: what a push
        put into a registry, as Docker records it in ``RepoDigests``)."""
        check_digest_reference(ref)
        with self.transaction():
            self.images.record(image_id)
            self.references.add_all([(ref, image_id)])

    def remove(self, name: str, force: bool = False, prune: bool = True) -> list[RemoveEvent]:
        """Remove an image or a reference, with Docker's ``rmi`` rules and messages.

        A failure after the store was changed (untagged, then a layer could not be
        removed) is :class:`~ocistore.errors.PartiallyDone`, listing what was done."""
        events: list[RemoveEvent] = []
        try:
            self._remove(name, force, prune, events)
        except (OcistoreError, OSError) as e:
            if events:
                raise PartiallyDone(e, [str(ev) for ev in events]) from None
            raise
        return events

    def _remove(self, name: str, force: bool, prune: bool, events: list[RemoveEvent]) -> None:
        with self.transaction():
            image_id = self.resolve(name)
            refs = self.references.references(image_id)
            if self._resolver.named_by_reference(name, image_id):
                ref = lookup_key(parse_tagged(name))
                untag = [ref]
                remaining = [r for r in refs if r != ref]
                if ref.digest is None and not any(
                    r.digest is None and r.name == ref.name for r in remaining
                ):
                    # Only digest references of that repository are left: drop them too.
                    untag += [r for r in remaining if r.digest is not None and r.name == ref.name]
                    remaining = [r for r in remaining if r not in untag]
                # Untagged only if other names are left, or children: as in Docker.
                delete = not remaining and not self.images.children(image_id)
            elif self.images.children(image_id):
                # Refused before anything is untagged, so the store stays as it was.
                raise Conflict(
                    f"conflict: unable to delete {image_id.short()} (cannot be forced) "
                    "- image has dependent child images"
                )
            else:
                if refs and not force and not _single_reference(refs):
                    raise Conflict(
                        f"conflict: unable to delete {image_id.short()} (must be forced) "
                        "- image is referenced in multiple repositories"
                    )
                untag, delete = list(refs), True
            if delete:
                # Recorded first: if this dies after untagging, the next writer deletes
                # the image as it was about to (see recover()).
                self.images.intend(
                    {"untag": [[str(r), image_id] for r in untag], "delete": [image_id]}
                )
            self.references.delete_all(untag)  # one write for all
            events += [RemoveEvent("Untagged", r.familiar()) for r in untag]
            if delete:
                self._delete_image(image_id, prune, events)

    def recover(self, intent: dict[str, Any]) -> None:
        """Finish or undo what a writer that died mid-way said it was doing (its dirty
        marker; called by the next writer, under the lock, before anything else), so
        that a command is never half-visible after a crash.

        * A load (``create``) whose references are not all in place, which it writes
          last, is undone: the images it made and nothing names are removed.
        * An ``rmi`` (``delete``) that untagged the image is finished: the image is
          deleted; one that had not untagged it yet did nothing, and nothing is done.

        What is removed that way leaves unreferenced layers and blobs, as any delete
        does: ``gc`` removes them. A damaged marker is ignored (it only ever says what a
        writer was about to do)."""
        try:
            create = [ImageID(Digest(i)) for i in intent.get("create", [])]
            tags = [(parse(r), ImageID(Digest(i))) for r, i in intent.get("tags", [])]
            untag = [(parse(r), ImageID(Digest(i))) for r, i in intent.get("untag", [])]
            delete = [ImageID(Digest(i)) for i in intent.get("delete", [])]
        except (ValueError, TypeError, AttributeError, RecursionError):  # InvalidInput too
            return
        current = self.references.all()
        if create and (not tags or any(current.get(lookup_key(r)) != i for r, i in tags)):
            for image_id in create:
                if not self.images.exists(image_id) and self.backend.exists(image_id):
                    # Its config was written and the step failed before it became an
                    # image (the directory's fsync): it goes too, before its layers do.
                    self.backend.delete(image_id)
            self._delete_unnamed(create)
        if delete and not any(current.get(lookup_key(r)) == i for r, i in untag):
            self._delete_unnamed(delete)

    def _delete_unnamed(self, images: Sequence[ImageID]) -> None:
        """Delete those of ``images`` that nothing names, children before parents (a
        parent with a child left is refused: it waits for the next round)."""
        left = list(dict.fromkeys(i for i in images if self.images.exists(i)))
        while left:
            before = len(left)
            for image_id in list(left):
                if self.references.references(image_id) or self.images.children(image_id):
                    continue
                self.images.delete(image_id)
                left.remove(image_id)
            if len(left) == before:
                return  # named, or a parent of an image that stays

    def _delete_image(self, image_id: ImageID, prune: bool, events: list[RemoveEvent]) -> None:
        parent = self.images.get_parent(image_id)
        try:
            released = self.images.delete(image_id)
        except BaseException:
            if not self.images.exists(image_id):  # the config went, a layer failed
                events.append(RemoveEvent("Deleted", image_id))
            raise
        events.append(RemoveEvent("Deleted", image_id))
        events += [RemoveEvent("Deleted", layer.chain_id) for layer in released]
        if (
            prune
            and parent is not None
            and self.images.exists(parent)
            and not self.references.references(parent)
            and not self.images.children(parent)
        ):
            with contextlib.suppress(Conflict):
                self._delete_image(parent, prune, events)

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

    def inspect(self, name: str) -> ImageDetails:
        """What the store knows of an image, for ``docker image inspect``'s answer
        (:func:`ocistore.inspect` gives that answer, as Docker's engine encodes it)."""
        image = self.image(name)
        refs = sorted(self.references.references(image.id), key=str)  # as Docker's
        last_tagged = self.last_tagged(image.id)
        return ImageDetails(
            image=image,
            repo_tags=[r.familiar() for r in refs if r.digest is None],
            repo_digests=[r.familiar() for r in refs if r.digest is not None],
            size=image.record.size,
            last_tag_time=last_tagged,
        )

    def history(self, name: str) -> list[HistoryEntry]:
        """The image's history, newest first, as Docker's engine gives it (``docker
        history``): a row per history entry (none for an image without history), the
        newest row with the image's ID and tags, each older row with its parent's, as
        far as the ``Parent`` chain goes (then ``<missing>``); the size of the layer a
        row made (Docker's count), else 0."""
        image = self.image(name)
        chains = list(image.config.chain_ids)
        rows: list[HistoryEntry] = []
        layer_index = 0
        for entry in image.config.history:
            size = 0
            if not entry.get("empty_layer"):
                if layer_index >= len(chains):
                    raise CorruptStore(
                        f"image {image.id}: too many non-empty layers in its history"
                    )
                size = self.layers.get(chains[layer_index]).shown_size
                layer_index += 1
            rows.append(
                HistoryEntry(
                    id=None,
                    created=unix_seconds(entry.get("created")),
                    created_by=str(entry.get("created_by") or ""),
                    size=size,
                    comment=str(entry.get("comment") or ""),
                    tags=[],
                )
            )
        rows.reverse()
        image_id: ImageID | None = image.id
        for i, row in enumerate(rows):
            if image_id is None or not self.images.exists(image_id):
                break
            tags = [
                r.familiar()
                for r in sorted(self.references.references(image_id), key=str)
                if r.digest is None
            ]
            rows[i] = row._replace(id=image_id, tags=tags)
            image_id = self.images.get_parent(image_id)
        return rows

    # -- maintenance ------------------------------------------------------------------

    def gc(self, grace_seconds: float = TMP_GRACE_SECONDS) -> list[str]:
        """Remove what nothing points at: layers no image needs, blobs nothing needs,
        what writers that are gone left in ``tmp/``, and temporary files nobody can be
        told to be writing once older than ``grace_seconds``. Returns what was removed."""
        removed: list[str] = []
        with self.transaction():
            swept = gc.sweep(
                self.layers,
                self.content,
                self.images.list(),
                self.layers.walk(),
                list(self.content.walk()),
            )
            removed += [f"layer {chain}" for chain in swept.chains]
            removed += [f"blob {blob}" for blob in swept.blobs]
            removed += [f"temporary {name}" for name in self._sweep_tmp(grace_seconds)]
        return removed

    def _sweep_tmp(self, grace_seconds: float) -> list[str]:
        """Remove what writers that are gone left in ``tmp/`` (every temporary name
        says who wrote it: :func:`~ocistore.store.fsutil.writer_alive`), never what a
        running writer is using, and, past ``grace_seconds``, what cannot be told (a
        resumable download not being written, another PID namespace's files)."""
        removed: list[str] = []
        cutoff = time.time() - grace_seconds
        for entry in os.scandir(self.tmpdir):
            path = Path(entry.path)
            alive = fsutil.writer_alive(entry.name)
            if alive:
                continue
            with contextlib.suppress(FileNotFoundError):
                if alive is None:
                    if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                        continue
                    if entry.name.endswith(".partial") and _being_written(path):
                        continue
                fsutil.remove(path)
                removed.append(entry.name)
        return removed

    def fsck(self, progress: Progress | None = None) -> list[str]:
        """Verify every config, layer and kept blob (manifests, layer blobs an image was
        distributed as) against its digest, and every reference; returns the problems
        found (none: ``[]``). ``progress`` gets one task per layer.

        The check runs beside writers, without the lock; if it finds anything it runs
        again holding the shared lock, on a store no writer changes meanwhile, so that
        what a concurrent load or ``rmi`` did half-way when first looked at is never
        reported: only what is wrong in a consistent store is."""
        failed: set[str] = set()
        problems = self._check(progress or SILENT, failed)
        if problems:
            # Under the lock only what failed is read again: writers wait for a look at
            # the records, not for every layer to be decompressed a second time (what
            # was whole once stays whole: it is named by its digest).
            with self.lock.shared():
                problems = self._check(SILENT, set(), reread=failed)
        return problems

    def repair(self, progress: Progress | None = None) -> tuple[list[str], list[str]]:
        """``fsck --repair``: mend what can be mended, then check again; returns what
        was repaired and the problems left (one line each).

        Under the exclusive lock: a layer record that is damaged, empty, whose parent
        is gone or whose blob is missing or not what its digest says is dropped (with
        that blob: a later load of the image stages the layer again); a blob an image
        keeps that is missing or damaged is dropped from its list (a kept manifest
        too: a later save makes one); a config that is not what its name says is
        removed, and metadata without a config; references follow (see
        :meth:`ReferenceStore.repair`); the index is rebuilt from the files. What
        cannot be mended (an image whose layer is gone) is reported, to load again."""
        progress = progress or SILENT
        done: list[str] = []
        with self.transaction():
            self.images.rebuild()
            done += self._repair_layers(progress)
            self.images.recount_sizes()  # with the content sizes just recorded
            done += self._repair_images()
            manifests = {}
            for rec in self.images.list():
                manifest = self.kept_manifest(rec.id)
                if manifest is not None:
                    manifests[manifest] = rec.id
            # A reference goes only when its image's config is gone: an image whose layer
            # was dropped keeps its names, to be loaded again.
            done += self.references.repair(self.backend.exists, manifests)
        return done, self.fsck(progress)

    def _repair_layers(self, progress: Progress) -> list[str]:
        done: list[str] = []
        bad: set[ChainID] = set()
        chains = self.layers.walk()
        records: dict[ChainID, Layer] = {}
        for chain in chains:
            try:
                records[chain] = self.layers.get(chain)
            except (NotFound, CorruptStore) as e:
                bad.add(chain)
                done.append(f"removed layer record {chain}: {e}")
        for chain, layer in records.items():
            try:
                counted = self._verify_layer(layer, progress, count=True)
            except OcistoreError as e:
                bad.add(chain)
                done.append(f"removed layer {chain}: {e}")
                if not self._blob_holds(layer.blob.digest):
                    self.content.delete(layer.blob.digest)  # damaged: a load brings it again
                continue
            if layer.content_size is None and counted is not None:
                # A record from before content sizes: counted from the verified tar.
                records[chain] = self.layers.record_content_size(layer, counted)
                done.append(f"layer {chain}: recorded its content size, {counted} bytes")
        changed = True
        while changed:  # a layer on top of a dropped one is incomplete too
            changed = False
            for chain, layer in records.items():
                if (
                    chain not in bad
                    and layer.parent is not None
                    and (layer.parent in bad or layer.parent not in records)
                ):
                    bad.add(chain)
                    done.append(f"removed layer {chain}: its parent {layer.parent} is gone")
                    changed = True
        for chain in bad:
            self.layers.delete(chain)
        return done

    def _verify_blob(self, digest: Digest) -> None:
        """Read a stored blob to its end, its digest checked (an error if it is not)."""
        with self.content.open(digest) as f:
            while f.read(1 << 20):
                pass

    def _verify_layer(self, layer: Layer, progress: Progress, count: bool = False) -> int | None:
        """Read a layer's tar to its end, every check of :class:`LayerReader` made;
        returns Docker's size of it (with ``count``, counted if its record has none)."""
        task = progress.task(task_label(layer.diff_id.short(), VERIFYING), layer.size)
        with self.layers.open_tar(layer, count) as tar:
            for _ in tar.chunks():
                task.update(tar.done)
        task.finish()
        return tar.content_size

    def _blob_holds(self, digest: Digest) -> bool:
        """Whether a blob is there and what its digest says."""
        try:
            self._verify_blob(digest)
        except (NotFound, DigestMismatch, CorruptStore):
            return False
        return True

    def _repair_images(self) -> list[str]:
        done: list[str] = []
        for name, reason in self.images.skipped:
            with contextlib.suppress(InvalidInput):
                digest = Digest(name)
                if not self.backend.exists(digest):
                    continue
                try:
                    self.backend.get(digest)
                except DigestMismatch:
                    self.backend.delete(digest)
                    done.append(f"removed image config {digest}: {reason}")
        metadata = self.backend.root / "metadata" / "sha256"
        with contextlib.suppress(FileNotFoundError), os.scandir(metadata) as entries:
            for entry in entries:
                digest_text = f"sha256:{entry.name}"
                if Digest.is_valid(digest_text) and not self.backend.exists(Digest(digest_text)):
                    fsutil.remove(Path(entry.path), self.tmpdir)
                    done.append(f"removed metadata of missing image {digest_text}")
        for rec in self.images.list():
            keep = []
            for blob in rec.blobs:
                if self._blob_holds(blob):
                    keep.append(blob)
                elif self.content.exists(blob):
                    self.content.delete(blob)
                    done.append(f"image {rec.id}: dropped its damaged blob {blob}")
                else:
                    done.append(f"image {rec.id}: dropped its missing blob {blob}")
            if len(keep) != len(rec.blobs):
                self.images.set_blobs(rec.id, keep, replace=True)
                manifest = self.kept_manifest(rec.id)
                if manifest is not None and manifest not in keep:
                    self.backend.delete_metadata(rec.id, MANIFEST)
            try:
                self.last_tagged(rec.id)
            except CorruptStore:  # shown as never tagged since it came in, as after a load
                self.backend.delete_metadata(rec.id, LAST_TAGGED)
                done.append(f"image {rec.id}: dropped its damaged metadata {LAST_TAGGED!r}")
        return done

    def _check(
        self, progress: Progress, failed: set[str], reread: set[str] | None = None
    ) -> list[str]:
        """The problems of the store; the blobs and layers that fail are added to
        ``failed``; with ``reread``, only those of them are read again (the others are
        only looked for)."""
        problems: list[str] = []

        def read(key: str) -> bool:
            return reread is None or key in reread

        self.images.refresh(force=True)
        for digest, reason in self.images.skipped:
            problems.append(f"image {digest}: {reason}")
        kept: dict[Digest, ImageID] = {}
        for rec in self.images.list():
            try:
                self.images.get(rec.id)
                manifest = self.kept_manifest(rec.id)
                if manifest is not None and manifest not in rec.blobs:
                    problems.append(f"image {rec.id}: its kept manifest {manifest} is not kept")
                self.last_tagged(rec.id)
                for chain in rec.chains:
                    if not self.layers.exists(chain):
                        problems.append(f"image {rec.id}: its layer {chain} is missing")
            except OcistoreError as e:
                problems.append(str(e))
            for blob in rec.blobs:
                kept.setdefault(blob, rec.id)
        for blob, image_id in kept.items():
            try:
                if read(f"blob {blob}"):
                    self._verify_blob(blob)
                elif not self.content.exists(blob):
                    raise NotFound(f"blob {blob} not found")
            except OcistoreError as e:
                failed.add(f"blob {blob}")
                problems.append(f"image {image_id}: kept {e}")
        for chain in self.layers.walk():
            try:
                layer = self.layers.get(chain)
                if layer.content_size is None:
                    problems.append(
                        f"layer {chain}: its record has no content size (written by an "
                        "older ocistore; sizes show its tar's length): fsck --repair counts it"
                    )
                if read(f"layer {chain}"):
                    self._verify_layer(layer, progress)
            except OcistoreError as e:
                failed.add(f"layer {chain}")
                problems.append(f"layer {chain}: {e}")
        for ref, image_id in self.references.all().items():
            if not self.images.exists(image_id):
                problems.append(f"reference {ref.familiar()} points at missing image {image_id}")
        return problems

    def disk_usage(self) -> usage.DiskUsage:
        """What the images, layers and blobs take on disk, what is shared, and what
        ``image prune`` and ``gc`` would reclaim, as ``docker system df`` shows it
        (:func:`ocistore.store.usage.disk_usage`)."""
        from . import usage

        return usage.disk_usage(self)

    def prune_images(
        self, all_images: bool = False, filters: Sequence[str] = ()
    ) -> usage.PruneReport:
        """Remove dangling images (or, with ``all_images``, every image) as ``docker
        image prune`` does, filters (``until=``, ``label=``, ``label!=``) and all, in one
        transaction (:func:`ocistore.store.usage.prune_images`)."""
        from . import usage

        return usage.prune_images(self, all_images, filters)
