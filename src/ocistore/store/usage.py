"""Disk usage and image prune: what ``docker system df`` and ``docker image prune`` do,
for a store without containers.

What is in use takes the place of Docker's containers:

* An image is **in use** when it has a tag, or is the parent (at any depth) of an image
  that has one: what ``image prune`` keeps. An image named only by digest references is
  dangling, as Docker's prune counts it.
* **Sizes** are bytes on disk: the sizes of the blob files under ``blobs/`` (layers as
  they are stored, compressed or not, and the blobs images keep: manifests and second
  copies of layers), each blob counted once however many images or layers need it.
  Configs and records are not counted (a few kB, as Docker leaves them out too).
* **Reclaimable** is the size of the blobs nothing in use needs: what ``image prune``
  frees (the blobs only images not in use need), and, in the layer and blob rows, what
  ``gc`` frees on top (layers and blobs no image needs at all).
* A **layer copy** is a blob an image keeps that holds one of its layers a second time:
  the same layer stored once as a plain tar (a docker-archive load) and kept as the gzip
  blob an OCI manifest names (an OCI load of the same image), so that saving the image
  again gives the same manifest.

:func:`disk_usage` reads one consistent snapshot (under the store's shared lock).
:func:`prune_images` follows moby's ``daemon/images/image_prune.go``, deleting through
:meth:`Store.remove` (so Docker's ``rmi`` rules and the one reachability pass in
:mod:`ocistore.store.gc` apply), all in one transaction; the space it reports is the
size of the blob files that were there before and are gone after.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ..errors import Conflict, CorruptStore, InvalidInput, NotFound, OcistoreError, PartiallyDone
from ..spec.digest import ChainID, Digest, ImageID
from ..spec.gotime import unix_nanos
from ..spec.limits import MAX_MANIFEST, load_json
from ..spec.reference import Reference
from . import gc
from .images import ImageRecord, newest_first

if TYPE_CHECKING:
    from .content import ContentStore
    from .layers import Layer
    from .store import RemoveEvent, Store

__all__ = [
    "BlobUsage",
    "DiskUsage",
    "ImageUsage",
    "LayerUsage",
    "PruneFilters",
    "PruneReport",
    "TypeUsage",
    "disk_usage",
    "parse_filters",
    "parse_until",
    "prune_images",
]

# -- disk usage ------------------------------------------------------------------------


class ImageUsage(NamedTuple):
    """An image as ``system df -v`` lists it."""

    id: ImageID
    #: Its references, familiar (``busybox:1``, ``app@sha256:…``).
    names: tuple[str, ...]
    created: str
    #: Bytes on disk of the blobs it needs: its layers' blobs and the blobs it keeps.
    size: int
    #: Of those, the bytes of the blobs another listed image needs too.
    shared_size: int
    in_use: bool

    @property
    def unique_size(self) -> int:
        return self.size - self.shared_size


class LayerUsage(NamedTuple):
    """A layer record and the blob it is stored in."""

    chain_id: ChainID
    diff_id: Digest
    blob: Digest
    compression: str
    #: Bytes on disk of its blob (0 when the blob is missing).
    size: int
    #: How many images need it.
    images: int
    in_use: bool
    #: Other blobs images keep that hold this same layer (see the module's text).
    copies: tuple[Digest, ...]


class BlobUsage(NamedTuple):
    """A blob file under ``blobs/``."""

    digest: Digest
    size: int
    #: ``layer`` (a layer record is stored in it), ``copy`` (an image keeps it as a
    #: second copy of a layer), ``manifest`` (an image's kept manifest), ``unused``
    #: (nothing needs it: ``gc`` removes it).
    kind: str
    #: How many images need it.
    images: int
    in_use: bool


class TypeUsage(NamedTuple):
    """One row of ``system df``."""

    type: str
    total: int
    active: int
    size: int
    reclaimable: int


class DiskUsage(NamedTuple):
    #: ``Images``, ``Layers``, ``Blobs``, ``Layer copies``.
    summary: list[TypeUsage]
    #: The images ``ocistore images`` lists (untagged parents left out), newest first.
    images: list[ImageUsage]
    layers: list[LayerUsage]
    blobs: list[BlobUsage]


def blob_sizes(content: ContentStore) -> dict[Digest, int]:
    """Every blob file and its size on disk (symlinks and other non-files skipped)."""
    sizes: dict[Digest, int] = {}
    for digest in content.walk():
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(content.path(digest))
            if stat.S_ISREG(st.st_mode):
                sizes[digest] = st.st_size
    return sizes


def in_use(records: Sequence[ImageRecord], tagged: set[ImageID]) -> set[ImageID]:
    """The images in use: the tagged ones and their parents, at any depth."""
    parent_of = {r.id: r.parent for r in records}
    used: set[ImageID] = set()
    for image_id in tagged:
        cur: ImageID | None = image_id
        while cur is not None and cur in parent_of and cur not in used:
            used.add(cur)
            cur = parent_of[cur]
    return used


def _blobs_needed(
    records: Iterable[ImageRecord], layers: Mapping[ChainID, Layer]
) -> tuple[set[ChainID], dict[Digest, None]]:
    """The chains and blobs ``records`` need (:func:`ocistore.store.gc.needed`, and the
    blob each needed chain is stored in)."""
    need = gc.needed(records)
    blobs: dict[Digest, None] = dict.fromkeys(need.blobs)
    for chain in need.chains:
        layer = layers.get(chain)
        if layer is not None:
            blobs[layer.blob.digest] = None
    return need.chains, blobs


def _image_blobs(rec: ImageRecord, layers: Mapping[ChainID, Layer]) -> set[Digest]:
    out = set(rec.blobs)
    for chain in rec.chains:
        layer = layers.get(chain)
        if layer is not None:
            out.add(layer.blob.digest)
    return out


def _kept_manifest(store: Store, rec: ImageRecord) -> tuple[Digest | None, list[Digest]]:
    """An image's kept manifest and the layer blobs it names, bottom first (none when
    the image kept no manifest, or it cannot be read: disk usage reports, ``fsck``
    judges)."""
    if not rec.blobs:
        return None, []
    try:
        manifest = store.kept_manifest(rec.id)
    except (OcistoreError, OSError):
        return None, []
    if manifest is None:
        return None, []
    try:
        doc = load_json(store.read_blob(manifest), f"manifest {manifest}", MAX_MANIFEST)
        return manifest, [Digest(d["digest"]) for d in doc.get("layers") or []]
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
        OcistoreError,
        OSError,
    ):
        return manifest, []


def disk_usage(store: Store) -> DiskUsage:
    """What the store's images, layers and blobs take on disk, and what is reclaimable
    (definitions in the module's text), from one consistent snapshot of the store."""
    store.images.refresh()  # first: it may rewrite a stale index
    with store.lock.shared():
        records = store.images.list()
        refs = store.references.by_image()
        layers: dict[ChainID, Layer] = {}
        for chain in store.layers.walk():
            with contextlib.suppress(NotFound, CorruptStore):
                layers[chain] = store.layers.get(chain)
        sizes = blob_sizes(store.content)
        manifests = {rec.id: _kept_manifest(store, rec) for rec in records if rec.blobs}
    return _usage(records, refs, layers, sizes, manifests)


def _usage(
    records: list[ImageRecord],
    refs: Mapping[ImageID, list[Reference]],
    layers: Mapping[ChainID, Layer],
    sizes: Mapping[Digest, int],
    manifests: Mapping[ImageID, tuple[Digest | None, list[Digest]]],
) -> DiskUsage:
    by_id = {r.id: r for r in records}
    tagged = {i for i, rs in refs.items() if i in by_id and any(r.digest is None for r in rs)}
    used_ids = in_use(records, tagged)
    used_records = [by_id[i] for i in used_ids]
    parents = {r.parent for r in records if r.parent}
    listed = [r for r in newest_first(records) if refs.get(r.id) or r.id not in parents]

    def size_of(blobs: Iterable[Digest]) -> int:
        return sum(sizes.get(b, 0) for b in blobs)

    _, all_blobs = _blobs_needed(records, layers)
    used_chains, used_blobs = _blobs_needed(used_records, layers)
    stored_in = {layer.blob.digest for layer in layers.values()}

    # Which blobs are layer copies, and of which layer when a kept manifest says so.
    manifest_blobs: set[Digest] = set()
    copies_of: dict[ChainID, dict[Digest, None]] = {}
    for rec in records:
        manifest, layer_blobs = manifests.get(rec.id, (None, []))
        if manifest is not None:
            manifest_blobs.add(manifest)
        kept = set(rec.blobs)
        if len(layer_blobs) == len(rec.chains):
            for chain, blob in zip(rec.chains, layer_blobs, strict=True):
                layer = layers.get(chain)
                if blob in kept and layer is not None and layer.blob.digest != blob:
                    copies_of.setdefault(chain, {})[blob] = None
    kept_blobs = {b for rec in records for b in rec.blobs}
    copies = {b for b in kept_blobs if b not in stored_in and b not in manifest_blobs}

    # Per image: its blobs, and which of them another listed image needs too.
    image_blobs = {r.id: _image_blobs(r, layers) for r in records}
    users: dict[Digest, int] = {}
    for rec in listed:
        for b in image_blobs[rec.id]:
            users[b] = users.get(b, 0) + 1
    images_out: list[ImageUsage] = []
    for rec in listed:
        mine = [b for b in image_blobs[rec.id] if b in sizes]
        images_out.append(
            ImageUsage(
                id=rec.id,
                names=tuple(r.familiar() for r in refs.get(rec.id) or []),
                created=rec.created,
                size=size_of(mine),
                shared_size=size_of(b for b in mine if users[b] > 1),
                in_use=rec.id in used_ids,
            )
        )

    chain_users: dict[ChainID, int] = {}
    blob_users: dict[Digest, int] = {}
    for rec in records:
        for chain in rec.chains:
            chain_users[chain] = chain_users.get(chain, 0) + 1
        for b in image_blobs[rec.id]:
            blob_users[b] = blob_users.get(b, 0) + 1
    layers_out = [
        LayerUsage(
            chain_id=chain,
            diff_id=layer.diff_id,
            blob=layer.blob.digest,
            compression=layer.blob.compression.value,
            size=sizes.get(layer.blob.digest, 0),
            images=chain_users.get(chain, 0),
            in_use=chain in used_chains,
            copies=tuple(copies_of.get(chain, {})),
        )
        for chain, layer in sorted(layers.items())
    ]

    def kind(b: Digest) -> str:
        if b in stored_in:
            return "layer"
        if b in manifest_blobs:
            return "manifest"
        if b in copies:
            return "copy"
        return "unused"

    blobs_out = [
        BlobUsage(b, size, kind(b), blob_users.get(b, 0), b in used_blobs)
        for b, size in sorted(sizes.items())
    ]

    listed_used = sum(1 for i in images_out if i.in_use)
    images_size = size_of(all_blobs)
    used_size = size_of(used_blobs)
    layers_size = size_of(stored_in)
    layers_used = size_of(b for b in stored_in if b in used_blobs)
    blobs_size = sum(sizes.values())
    copies_on_disk = [b for b in copies if b in sizes]
    copies_used = [b for b in copies_on_disk if b in used_blobs]
    summary = [
        TypeUsage("Images", len(listed), listed_used, images_size, images_size - used_size),
        TypeUsage(
            "Layers",
            len(layers),
            sum(1 for c in layers if c in used_chains),
            layers_size,
            layers_size - layers_used,
        ),
        TypeUsage(
            "Blobs",
            len(sizes),
            sum(1 for b in sizes if b in used_blobs),
            blobs_size,
            blobs_size - used_size,
        ),
        TypeUsage(
            "Layer copies",
            len(copies_on_disk),
            len(copies_used),
            size_of(copies_on_disk),
            size_of(copies_on_disk) - size_of(copies_used),
        ),
    ]
    return DiskUsage(summary, images_out, layers_out, blobs_out)


# -- prune -----------------------------------------------------------------------------


class PruneReport(NamedTuple):
    """What :func:`prune_images` did."""

    #: ``Untagged`` and ``Deleted`` events, in order, as :meth:`Store.remove` gives them
    #: (a deleted image, then the layer chains it released).
    events: list[RemoveEvent]
    #: The blobs removed, and the bytes their files took.
    blobs: list[Digest]
    reclaimed: int


#: The filters ``image prune`` accepts (moby's ``imagesAcceptedFilters``).
ACCEPTED_FILTERS: Final = ("dangling", "label", "label!", "until")


class PruneFilters(NamedTuple):
    """What ``image prune``'s filters select (:func:`parse_filters`)."""

    dangling_only: bool
    until_ns: int | None
    labels: tuple[str, ...]
    not_labels: tuple[str, ...]


def parse_filters(
    filters: Sequence[str], all_images: bool = False, now: float | None = None
) -> PruneFilters:
    """``image prune``'s filters (``name=value`` each), checked as moby checks them;
    ``all_images`` adds ``dangling=false`` (else ``dangling=true``), as the docker command
    does. :class:`~ocistore.errors.InvalidInput` names a filter that is not accepted."""
    now = time.time() if now is None else now
    fields: dict[str, dict[str, None]] = {}
    for item in [*filters, f"dangling={'false' if all_images else 'true'}"]:
        name, sep, value = item.partition("=")
        if not sep:
            raise InvalidInput(f"bad format of filter {item!r} (expected name=value)")
        fields.setdefault(name.strip().lower(), {})[value.strip()] = None
    for name in fields:
        if name not in ACCEPTED_FILTERS:
            raise InvalidInput(f"invalid filter {name!r}")
    dangling_only = True
    if "dangling" in fields:
        values = fields["dangling"]
        is_false = "0" in values or "false" in values
        is_true = "1" in values or "true" in values
        if is_false == is_true:  # none, or both
            raise InvalidInput(f"invalid filter 'dangling={','.join(values)}'")
        dangling_only = is_true
    until_ns: int | None = None
    if "until" in fields:
        if len(fields["until"]) > 1:
            raise InvalidInput("more than one until filter specified")
        (value,) = fields["until"]
        until_ns = parse_until(value, now)
    return PruneFilters(
        dangling_only,
        until_ns,
        tuple(fields.get("label", ())),
        tuple(fields.get("label!", ())),
    )


_DURATION: Final = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
#: ``YYYY-MM-DD``, then optionally ``Thh``, ``:mm``, ``:ss``, a fraction, and a zone.
_TIME: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
)


def _duration_ns(value: str) -> int | None:
    """A Go duration (``24h``, ``1h30m``, ``-1.5h``) in nanoseconds, or ``None``."""
    if value == "0" or not _DURATION.fullmatch(value):
        return None
    sign = -1 if value.startswith("-") else 1
    total = 0.0
    for number, unit in _DURATION_PART.findall(value):
        total += float(number) * _UNIT_NS[unit]
    return sign * int(total)


def _unix_ns(value: str) -> int | None:
    """``seconds[.nanoseconds]`` (moby's ``parseTimestamp``) in nanoseconds, or ``None``."""
    sec, dot, frac = value.partition(".")
    if not re.fullmatch(r"[-+]?\d+", sec) or (dot and not re.fullmatch(r"\d{0,20}", frac)):
        return None
    nanos = int((frac + "0" * 9)[:9]) if frac else 0
    return int(sec) * 1_000_000_000 + nanos


def _local_offset(now: float) -> timezone:
    offset = datetime.fromtimestamp(now).astimezone().utcoffset() or timedelta(0)
    return timezone(offset)


def parse_until(value: str, now: float | None = None) -> int:
    """The time an ``until`` filter gives, in nanoseconds since the epoch, as moby's
    ``timestamp.Parse`` reads it: a Go duration back from ``now`` (``24h``, ``90m``),
    an RFC 3339 date or time (``2024-01-02``, ``2024-01-02T15:04:05Z``; without ``Z`` or
    an offset, in local time), or a Unix time (``1700000000``, ``1700000000.5``)."""
    now = time.time() if now is None else now
    if not value.strip():
        raise InvalidInput(
            "invalid value for 'until' filter: failed to parse value as time or duration: "
            "value is empty"
        )
    d = _duration_ns(value)
    if d is not None:
        return int(now * 1_000_000_000) - d
    m = _TIME.fullmatch(value)
    if m is not None:
        year, month, day, hour, minute, second, frac, zone = m.groups()
        if zone is None and value.count("-") == 3:
            m = None  # three dashes and no zone: no form moby accepts
    if m is not None:
        try:
            tz: timezone = _local_offset(now) if zone is None else _zone(zone)
            t = datetime(
                int(year),
                int(month),
                int(day),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                tzinfo=tz,
            )
        except ValueError as e:
            raise InvalidInput(f"invalid value for 'until' filter: {value!r}: {e}") from None
        nanos = int((frac + "0" * 9)[:9]) if frac else 0
        return int(t.timestamp()) * 1_000_000_000 + nanos
    if "-" not in value:
        unix = _unix_ns(value)
        if unix is not None:
            return unix
    raise InvalidInput(
        f"invalid value for 'until' filter: failed to parse value as time or duration: {value!r}"
    )


def _zone(zone: str) -> timezone:
    if zone == "Z":
        return UTC
    sign = -1 if zone[0] == "-" else 1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def match_kv(wanted: Sequence[str], labels: Mapping[str, Any]) -> bool:
    """moby's ``MatchKVList``: every ``key`` or ``key=value`` is among ``labels``."""
    if not wanted:
        return True
    if not labels:
        return False
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _labels_match(store: Store, rec: ImageRecord, f: PruneFilters) -> bool:
    """moby's ``matchLabels`` on the image's container config. An image without one is
    not filtered by labels (as in moby); one whose config cannot be read is left alone
    (``fsck`` reports it)."""
    if not f.labels and not f.not_labels:
        return True
    try:
        config = store.images.get(rec.id).config.container_config
    except OcistoreError:
        return False
    if config is None:
        return True
    labels = config.get("Labels")
    labels = labels if isinstance(labels, dict) else {}
    if not match_kv(f.labels, labels):
        return False
    return not (f.not_labels and match_kv(f.not_labels, labels))


def prune_images(
    store: Store,
    all_images: bool = False,
    filters: Sequence[str] = (),
    now: float | None = None,
) -> PruneReport:
    """Remove the dangling images (no tag, no children), or with ``all_images`` every
    image (Docker's ``-a`` removes every image no container uses, and a store has no
    containers): moby's ``ImagePrune``, filters and all.

    ``filters`` are ``until=<time or duration>`` (images created after it stay),
    ``label=<key>[=<value>]`` (only images with the label), ``label!=<key>[=<value>]``
    (only images without it) and ``dangling=true|false``; ``all_images`` adds
    ``dangling=false``, as the docker command does. Every image is deleted through
    :meth:`Store.remove` (untagged parents with no other children go with it), in one
    transaction. An image another one depends on is skipped, as in moby; any other
    failure stops the prune with :class:`~ocistore.errors.PartiallyDone` naming what
    was done before it."""
    f = parse_filters(filters, all_images, now)
    events: list[RemoveEvent] = []
    with store.transaction():
        before = blob_sizes(store.content)
        records = store.images.list()
        refs = store.references.by_image()
        parents = {r.parent for r in records if r.parent}
        candidates = [
            r for r in newest_first(records) if not f.dangling_only or r.id not in parents
        ]
        chosen: list[ImageRecord] = []
        for rec in candidates:
            if not refs.get(rec.id) and rec.id in parents:
                continue  # an untagged parent: it goes when its children do
            if f.until_ns is not None:
                created = unix_nanos(rec.created)
                if created is None or created > f.until_ns:
                    continue
            if not _labels_match(store, rec, f):
                continue
            chosen.append(rec)
        try:
            for rec in chosen:
                events += _prune_one(store, rec.id, f.dangling_only)
        except (OcistoreError, OSError) as e:
            done = [str(event) for event in events]
            cause: BaseException = e
            if isinstance(e, PartiallyDone):  # failed inside one removal, after a part of it
                done, cause = done + e.done, e.error
            if not done:
                raise
            raise PartiallyDone(cause, done) from None
        after = blob_sizes(store.content)
    removed = [b for b in before if b not in after]
    return PruneReport(events, removed, sum(before[b] for b in removed))


def _prune_one(store: Store, image_id: ImageID, dangling_only: bool) -> list[RemoveEvent]:
    """One image of the prune, as moby's loop body: an image with references loses each
    of them (and is deleted with the last), when pruning all or when none is a tag;
    one without is deleted by ID. Conflicts and what is gone already are skipped."""
    if not store.images.exists(image_id):
        return []  # deleted already, as the untagged parent of an image pruned before
    refs = store.references.references(image_id)
    events: list[RemoveEvent] = []
    if refs:
        if dangling_only and any(r.digest is None for r in refs):
            return []
        for ref in refs:
            with contextlib.suppress(Conflict, NotFound):
                events += store.remove(str(ref), prune=True)
        return events
    with contextlib.suppress(Conflict, NotFound):
        events += store.remove(image_id, prune=True)
    return events
