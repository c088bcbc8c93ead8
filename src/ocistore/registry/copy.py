"""``copy SOURCE DESTINATION`` between transports, with skopeo's names.

* ``docker://NAME[:TAG|@DIGEST]``: a registry;
* ``docker-archive:PATH[:REF]``, ``oci:DIR[:REF]``, ``oci-archive:PATH[:REF]``,
  ``dir:DIR``: archives and layouts (``:REF`` selects the image of a source, names the
  image in a destination; for ``oci`` a bare tag is the ref name, as skopeo's);
* ``ocistore:REF``, or a bare reference or image ID: the store.

A copy to or from the store is a pull, push, load or save. A copy between two
registries streams each blob from one to the other (mounted instead when both are
repositories of one registry, skipped when the destination has it) and puts the same
manifest, so the digest stays. A copy between other transports goes through a store of
its own in the store's ``tmp/`` (every blob verified on its way), removed at the end:
the store itself is left as it was.
"""

from __future__ import annotations

import contextlib
import json
from typing import Final, NamedTuple

from .. import parallel
from ..errors import InvalidInput
from ..progress import COPYING, SILENT, Progress, task_label
from ..spec.digest import Digest, VerifyingReader, digest_bytes
from ..spec.platform import Platform
from ..spec.reference import DEFAULT_TAG, Reference, is_tag, looks_like_id, parse, parse_tagged
from ..store.ingest import ImageSource
from ..store.store import Store
from .client import Repository
from .session import Session

__all__ = ["Location", "copy", "parse_transport"]

#: Blobs copied at once between registries.
COPY_JOBS: Final = 4
#: The transports written NAME:REST (a registry is docker://REF).
TRANSPORTS: Final = ("docker-archive", "oci", "oci-archive", "dir", "ocistore")


class Location(NamedTuple):
    """One side of a copy."""

    transport: str
    #: The path of an archive or layout ("" for a registry or the store).
    path: str
    #: What follows the path (``:REF``), or the reference of a registry or the store.
    ref: str

    @property
    def registry(self) -> bool:
        return self.transport == "docker"

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.ref}"
        if self.transport == "ocistore":
            return self.ref
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_transport(text: str) -> Location:
    """A copy's source or destination, as skopeo names them."""
    if text.startswith("docker://"):
        ref = text[len("docker://") :]
        parse(ref)  # checked now: one line naming it
        return Location("docker", "", ref)
    name, sep, rest = text.partition(":")
    if sep and name in TRANSPORTS:
        if name == "ocistore":
            return Location("ocistore", "", rest)
        if not rest:
            raise InvalidInput(f"{text}: {name}: needs a path")
        if name == "dir":
            return Location("dir", rest, "")
        path, _, ref = rest.partition(":")
        return Location(name, path, ref)
    if sep and not looks_like_id(text):
        try:
            parse(text)
        except InvalidInput:
            # Neither a reference nor a transport: a transport's name mistyped, most likely.
            known = ", ".join(f"{t}:" for t in TRANSPORTS)
            raise InvalidInput(
                f"{text}: unknown transport {name!r} (docker://, {known} or a reference in "
                "the store)"
            ) from None
    return Location("ocistore", "", text)


def _dest_name(dest: Location, source_ref: Reference | None) -> Reference | None:
    """The reference a destination archive or layout names the image by."""
    if not dest.ref:
        return source_ref
    if is_tag(dest.ref) and dest.transport in ("oci", "oci-archive"):
        base = source_ref.name_only() if source_ref is not None else Reference("localhost", "image")
        return base.with_tag(dest.ref)
    return parse_tagged(dest.ref)


def _matches(tags: list[Reference], wanted: str) -> bool:
    if is_tag(wanted):
        return any(t.tag == wanted or (t.domain == "localhost" and t.path == wanted) for t in tags)
    try:
        ref = parse_tagged(wanted)
    except InvalidInput:
        return False
    return ref in tags


def _load_into(
    store: Store,
    session: Session,
    source: Location,
    platform: Platform | None,
    progress: Progress,
) -> tuple[str, Reference | None]:
    """Bring the source's image into ``store``: its ID, and the reference it had."""
    if source.transport == "ocistore":
        ref = None
        with contextlib.suppress(InvalidInput):
            ref = parse_tagged(source.ref)
        return str(store.resolve(source.ref)), ref
    if source.registry:
        from .pull import pull

        ref = parse(source.ref)
        result = pull(store, session, ref, platform, progress=progress)
        return str(result.images[0].id), result.reference
    from .. import formats

    def one(sources: list[ImageSource]) -> list[ImageSource]:
        if source.ref:
            sources = [s for s in sources if _matches(s.tags, source.ref)]
            if not sources:
                raise InvalidInput(f"{source}: no image named {source.ref!r} in {source.path}")
        if len(sources) != 1:
            raise InvalidInput(
                f"{source}: {len(sources)} images; name the one to copy ({source.transport}:"
                f"{source.path}:REF)"
            )
        return sources

    (image,) = formats.load(store, source.path, platform, progress, select=one)
    return str(image.id), image.tags[0] if image.tags else None


def _save_from(
    store: Store,
    session: Session,
    image: str,
    source_ref: Reference | None,
    dest: Location,
    progress: Progress,
) -> list[str]:
    """Write the image ``image`` of ``store`` to the destination."""
    from .. import formats

    if dest.registry:
        from .push import push

        result = push(store, session, image, parse_tagged(dest.ref), progress)
        return [
            *result.events,
            f"{result.reference.tag}: digest: {result.digest} size: {result.size}",
        ]
    name = _dest_name(dest, source_ref)
    if dest.transport == "ocistore":
        if name is None:
            return [image]
        store.tag(image, str(name))
        return [name.familiar()]
    fmt = formats.SaveFormat("docker" if dest.transport == "docker-archive" else dest.transport)
    formats.save(store, [image], dest.path, fmt, progress, as_name=name)
    return []


def copy(
    store: Store | None,
    session: Session,
    source: Location,
    dest: Location,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Copy an image; returns the lines to print (as docker push's, for a registry)."""
    progress = progress or SILENT
    if source.registry and dest.registry:
        return copy_between_registries(
            session, parse(source.ref), parse_tagged(dest.ref), platform, progress
        )
    if store is None:
        raise InvalidInput(f"copy {source} {dest} needs a store")
    if source.transport == "ocistore" or dest.transport == "ocistore":
        image, ref = _load_into(store, session, source, platform, progress)
        return _save_from(store, session, image, ref, dest, progress)
    with store.scratch_store() as scratch:
        image, ref = _load_into(scratch, session, source, platform, progress)
        return _save_from(scratch, session, image, ref, dest, progress)


def copy_between_registries(
    session: Session,
    source: Reference,
    dest: Reference,
    platform: Platform | None,
    progress: Progress,
) -> list[str]:
    """Stream an image from one registry to another: the same manifest, so the same
    digest (the chosen platform's manifest when the source names an index)."""
    from .pull import remote_images

    src_repo = session.repository(source)
    dst_repo = session.repository(dest)
    top = src_repo.get_manifest(str(source.digest or source.tag or DEFAULT_TAG))
    image = remote_images(src_repo, top, platform)[0]
    if not isinstance(image.config, bytes):
        raise InvalidInput(
            f"{src_repo.where(top.digest)}: a schema 1 manifest is not copied between "
            "registries; pull it, then push it"
        )
    config = (digest_bytes(image.config), len(image.config))
    layers = [(d, size) for d, size, _ in image.layers if size is not None]
    # What happened to each layer, in the manifest's order (the config's is not told).
    events: list[str] = [""] * len(layers)

    def job(i: int, digest: Digest, size: int) -> parallel.Job:
        def run(stop: parallel.Stop) -> None:
            stop.check()
            told = _copy_blob(src_repo, dst_repo, digest, size, progress)
            if i >= 0:
                events[i] = told

        return run

    jobs = [job(-1, *config)] + [job(i, d, size) for i, (d, size) in enumerate(layers)]
    parallel.run_all(jobs, COPY_JOBS)
    manifest = image.manifest
    digest = dst_repo.put_manifest(
        dest.tag or DEFAULT_TAG, manifest.data, manifest.media_type or _own_type(manifest.data)
    )
    return [*events, f"{dest.tag or DEFAULT_TAG}: digest: {digest} size: {len(manifest.data)}"]


def _own_type(data: bytes) -> str:
    """The ``mediaType`` a manifest gives itself (when the registry sent no type)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    media_type = doc.get("mediaType") if isinstance(doc, dict) else None
    return media_type if isinstance(media_type, str) else ""


def _copy_blob(
    src: Repository, dst: Repository, digest: Digest, size: int, progress: Progress
) -> str:
    """One blob from ``src`` to ``dst`` unless ``dst`` has it (mounted within one
    registry); what happened, as docker push tells it."""
    shown = digest.hex[:12]
    if dst.blob_size(digest) is not None:
        return f"{shown}: Layer already exists"
    location = None
    if src.registry is dst.registry and src.path != dst.path:
        location = dst.mount_blob(digest, src.path)
        if location is None:
            return f"{shown}: Mounted from {src.path}"
    task = progress.task(task_label(shown, COPYING), size)
    with src.open_blob(digest, size) as download:
        # Checked as it streams: a blob that is not what its digest says fails here.
        stream = VerifyingReader(download, digest, src.where(digest), size)  # type: ignore[arg-type]
        dst.upload_stream(digest, size, stream, task.update, location)  # type: ignore[arg-type]
    task.finish()
    return f"{shown}: Pushed"
