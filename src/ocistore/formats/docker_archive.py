"""docker-archive: what ``docker save`` writes and ``docker load`` reads, in every shape.

Reading (:func:`read_docker_archive`) knows three shapes:

* Docker 1.10 to 24: ``manifest.json`` is a list of ``{Config, RepoTags, Layers}`` (plus
  an optional ``Parent`` image ID and ``LayerSources``, which only foreign Windows layers
  use and which are ignored here); ``Config`` names the config JSON and ``Layers`` one tar
  per layer, plain, gzip or zstd. Later legacy directories repeat a layer with a relative
  symlink; the archive reader follows those while they stay inside the archive.
* Docker 25 and later: the same, with ``Config`` and ``Layers`` pointing into
  ``blobs/sha256/<hex>`` of an OCI layout in the same tar. A path of that shape is
  content-addressed: the config and layer blobs are checked against the digest they are
  named by. ``manifest.json`` wins over ``index.json``.
* Docker before 1.10: no ``manifest.json``; one directory per layer, ``<v1 id>/json``,
  ``layer.tar`` and ``VERSION``, chained by the ``parent`` in each ``json``, and a
  ``repositories`` file (``{"repo": {"tag": "<v1 id>"}}``). Every directory becomes an
  image, built as Docker's ``legacyLoadImage`` did: bottom-up, the diff IDs of the layers
  so far, one history entry per layer (``HistoryFromConfig(json, false)``: every legacy
  layer counts as a layer, none is empty), and the config from the layer's own JSON
  (``MakeConfigFromV1Config``), made once the layers' DiffIDs are known, while they are
  loaded; each image's parent is the image of its parent layer. A missing
  ``repositories`` file means no tags (Docker refuses the archive).

Field names in ``manifest.json`` match case-insensitively, as Go's decoder matches them.
A ``RepoTags`` entry without a tag means ``:latest`` (go-containerregistry writes such
archives; Docker itself refuses them). Every error names the archive, the file and the
field.

Writing (:func:`write_docker_archive`) produces the Docker 1.10–24 format exactly as
moby's ``image/tarexport/save.go`` (20.10) lays it out: per image ``<config hex>.json`` and
one legacy directory per layer named by its v1 ID (``VERSION`` = ``1.0``, ``json``,
``layer.tar``), ``manifest.json`` and ``repositories`` (written by Go's JSON encoder:
compact, one trailing newline), all in the lexical order Docker's tar walk gives, with
its headers (see :class:`~.tarwriter.TarWriter`). Docker saves the images one after the
other in manifest order, each bottom-up: a directory is written by the first image that
has it, and a diff ID that occurs in several directories is written once, in the first
directory saved, the others linking to it with a relative symlink
(``../<v1 id>/layer.tar``). Times are Docker's: an image's config, and the directories
(and their files) it writes, have its ``created`` time (in whole seconds, the epoch when
it has none); ``manifest.json`` and ``repositories`` the epoch. Where Docker's order is a
Go map's (the images), images are sorted by ID, so the same images give the same bytes;
and where Docker leaves the time of the save (a directory whose ``layer.tar`` is a
link, which Docker does not touch), the image's ``created`` time is written instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import IO, Any, Final, NamedTuple

from ..errors import (
    InvalidInput,
)
from ..progress import SAVING, SILENT, Progress, task_label
from ..spec.config import ImageConfig, parse_config
from ..spec.digest import EMPTY_TAR_DIGEST, ChainID, DiffID, Digest, ImageID, check_bytes
from ..spec.gotime import unix_nanos
from ..spec.limits import (
    MAX_ARCHIVE_JSON,
    MAX_CONFIG,
    MAX_CONFIGS_TOTAL,
    MAX_IMAGES,
    MAX_LAYER_DEPTH,
    Budget,
    load_json,
)
from ..spec.reference import (
    Reference,
    is_identifier,
    parse,
    parse_tagged,
)
from ..store.ingest import ImageSource, LayerSource
from ..store.layers import Layer
from ..store.store import Store
from .reader import ArchiveReader, read_bytes, read_json
from .tarwriter import Fill, MemberSink, TarWriter

__all__ = ["is_docker_archive", "read_docker_archive", "write_docker_archive"]

MANIFEST: Final = "manifest.json"
REPOSITORIES: Final = "repositories"
LEGACY_VERSION: Final = b"1.0"
_BLOB_PATH: Final = re.compile(r"blobs/([a-z0-9]+)/([a-f0-9]+)")


# -- detection ----------------------------------------------------------------------------


def _is_legacy_json(name: str) -> bool:
    head, sep, tail = name.partition("/")
    return bool(sep) and tail == "json" and is_identifier(head)


def is_docker_archive(archive: ArchiveReader) -> bool:
    """Whether the archive is a docker-archive of any age.

    ``manifest.json`` decides (Docker 25+ archives are also OCI layouts; they are read as
    docker archives). Without it, ``repositories`` or ``<v1 id>/json`` make a pre-1.10
    archive, unless an OCI ``index.json`` or ``oci-layout`` is there to prefer.
    """
    names = set(archive.names())
    if MANIFEST in names:
        return True
    if "index.json" in names or "oci-layout" in names:
        return False
    return REPOSITORIES in names or any(_is_legacy_json(n) for n in names)


# -- reading: Docker 1.10 and later ---------------------------------------------------------


def _get(entry: dict[str, Any], key: str) -> tuple[bool, Any]:
    """A field of a JSON object as Go's decoder finds it: exact name, else any case."""
    if key in entry:
        return True, entry[key]
    folded = key.lower()
    for k, value in entry.items():
        if k.lower() == folded:
            return True, value
    return False, None


def _member(archive: ArchiveReader, path: str, where: str) -> tuple[str, int]:
    """The resolved name and size of a regular file the manifest names."""
    try:
        return archive.resolve(path), archive.size(path)
    except InvalidInput as e:
        raise InvalidInput(f"{e} (named by {where})") from None


def _blob_digest(name: str) -> Digest | None:
    """The digest a content-addressed path (``blobs/sha256/<hex>``) promises, if any."""
    m = _BLOB_PATH.fullmatch(name)
    if m is None:
        return None
    candidate = f"{m.group(1)}:{m.group(2)}"
    return Digest(candidate) if Digest.is_valid(candidate) else None


def _string(value: Any, where: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{where}: field {what} must be a non-empty string, got {value!r}")
    return value


def _repo_tags(archive: ArchiveReader, value: Any, where: str) -> list[Reference]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where}: field RepoTags must be a list of strings or null")
    tags: dict[Reference, None] = {}  # ordered, and linear however many there are
    for j, raw in enumerate(value):
        if not isinstance(raw, str):
            raise InvalidInput(f"{where}: field RepoTags[{j}] must be a string, got {raw!r}")
        try:
            ref = parse_tagged(raw)
        except InvalidInput as e:
            raise InvalidInput(f"{where}: field RepoTags[{j}]: {e}") from None
        if ref.digest is not None:
            raise InvalidInput(f"{where}: field RepoTags[{j}]: {raw!r} is not a tag (name:tag)")
        tags[ref] = None
    return list(tags)


def _history_extends(child: ImageConfig, parent: ImageConfig) -> bool:
    """moby's ``checkValidParent``: the child's history is the parent's plus one entry."""
    if not child.history and not parent.history:
        return True
    if len(child.history) - len(parent.history) != 1:
        return False
    return all(p == c for p, c in zip(parent.history, child.history, strict=False))


def _read_manifest(archive: ArchiveReader) -> list[ImageSource]:
    doc = read_json(archive, MANIFEST, kind=MANIFEST)
    top = f"{archive.name}: {MANIFEST}"
    if doc is None:
        raise InvalidInput(f"{top}: is null (a list of images is required; none is [])")
    if not isinstance(doc, list):
        raise InvalidInput(f"{top}: must be a list of images, got a {type(doc).__name__}")
    if len(doc) > MAX_IMAGES:
        raise InvalidInput(f"{top}: {len(doc)} images, over the limit of {MAX_IMAGES}")
    sources: list[ImageSource] = []
    configs: list[ImageConfig] = []
    parents: list[str] = []
    # A config or layer that several entries name is read and described once.
    read_configs: dict[str, tuple[bytes, ImageConfig]] = {}
    layer_sources: dict[str, LayerSource] = {}
    repeated: dict[tuple[str, ...], int] = {}
    configs_read = Budget(MAX_CONFIGS_TOTAL, top, "image configs (one per image)")
    tag_sets: list[set[Reference]] = []
    for i, entry in enumerate(doc):
        where = f"{top}[{i}]"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where}: must be an object, got {entry!r}")
        found, config_path = _get(entry, "Config")
        if not found:
            raise InvalidInput(f"{where}: field Config is missing")
        config_path = _string(config_path, where, "Config")
        found, layer_paths = _get(entry, "Layers")
        if not found:
            raise InvalidInput(f"{where}: field Layers is missing")
        if layer_paths is None:
            raise InvalidInput(f"{where}: field Layers is null (a list of paths is required)")
        if not isinstance(layer_paths, list):
            raise InvalidInput(f"{where}: field Layers must be a list of paths")
        tags = _repo_tags(archive, _get(entry, "RepoTags")[1], where)
        parent = _get(entry, "Parent")[1]
        if parent is None:
            parent = ""
        if not isinstance(parent, str) or (parent and not Digest.is_valid(parent)):
            raise InvalidInput(f"{where}: field Parent must be an image ID, got {parent!r}")

        resolved_config, _ = _member(archive, config_path, f"{MANIFEST}[{i}].Config")
        config_what = f"{archive.name}: {config_path}"
        if resolved_config not in read_configs:
            raw = read_bytes(archive, config_path, MAX_CONFIG, "an image config")
            expected = _blob_digest(resolved_config)
            if expected is not None:
                check_bytes(raw, expected, config_what)
            read_configs[resolved_config] = raw, parse_config(raw, config_what)
        raw, cfg = read_configs[resolved_config]
        if len(layer_paths) != len(cfg.diff_ids):
            raise InvalidInput(
                f"{where}: field Layers lists {len(layer_paths)} layers but the config "
                f"{config_path} has {len(cfg.diff_ids)} (rootfs.diff_ids)"
            )

        layers: list[LayerSource] = []
        for j, path in enumerate(layer_paths):
            path = _string(path, where, f"Layers[{j}]")
            resolved, size = _member(archive, path, f"{MANIFEST}[{i}].Layers[{j}]")
            layer = layer_sources.get(resolved)
            if layer is None:
                blob = _blob_digest(resolved)
                layer = layer_sources[resolved] = LayerSource(
                    open=functools.partial(archive.open, resolved),
                    what=f"{archive.name}: {path}",
                    blob_digest=blob,
                    blob_size=size if blob is not None else None,
                    key=f"blob {blob}" if blob is not None else f"member {resolved}",
                    read_size=size,
                )
            layers.append(layer)
        # An entry repeating an earlier one (same config, same layers) adds its tags to
        # it: the store is given each image once, however often manifest.json lists it.
        same = (resolved_config, *(layer.key for layer in layers))
        earlier = repeated.get(same)
        if earlier is not None:
            for ref in tags:
                if ref not in tag_sets[earlier]:
                    tag_sets[earlier].add(ref)
                    sources[earlier].tags.append(ref)
            continue
        repeated[same] = len(sources)
        tag_sets.append(set(tags))
        configs_read.spend(len(raw))
        sources.append(ImageSource(config=raw, what=config_what, layers=layers, tags=tags))
        configs.append(cfg)
        parents.append(parent)

    # As moby's validatedParentLinks: a Parent counts only when that image is in the archive.
    index = {cfg.id: i for i, cfg in enumerate(configs)}
    for i, parent in enumerate(parents):
        p = index.get(ImageID(Digest(parent))) if parent else None
        if p is None or p == i:
            continue
        if not _history_extends(configs[i], configs[p]):
            raise InvalidInput(
                f"{top}[{i}]: image {parent} is not a valid parent for {configs[i].id} "
                "(its history is not the parent's plus one entry)"
            )
        sources[i].parent = p
    return sources


# -- reading: Docker before 1.10 -------------------------------------------------------------


class _LegacyLayer(NamedTuple):
    v1_id: str
    json: bytes
    parent: str
    layer_path: str
    layer_key: str


class _Built(NamedTuple):
    #: Where the image this layer tops is in the list of sources.
    source: int
    history: list[dict[str, Any]]
    layers: list[LayerSource]


def _legacy_config(
    v1_json: bytes, history: list[dict[str, Any]], what: str, diff_ids: Sequence[DiffID]
) -> bytes:
    """The config Docker's ``legacyLoadImage`` makes for a legacy layer, once the DiffIDs
    of the layers up to it are known (they are learnt while the layers are loaded, so
    each is read once)."""
    from ..spec.legacy import v1  # the legacy format only: not imported for other loads

    rootfs = {"type": "layers", "diff_ids": [str(d) for d in diff_ids]}
    try:
        return v1.make_config_from_v1_config(v1_json, rootfs, history)
    except InvalidInput as e:
        raise InvalidInput(f"{what}: {e}") from None


def _legacy_layer(archive: ArchiveReader, v1_id: str) -> _LegacyLayer:
    json_path = f"{v1_id}/json"
    kind = "a v1 image JSON"
    raw = read_bytes(archive, json_path, MAX_ARCHIVE_JSON, kind)
    what = f"{archive.name}: {json_path}"
    doc = load_json(raw, what, MAX_ARCHIVE_JSON, kind)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{what}: must be a JSON object")
    parent = _get(doc, "parent")[1]
    if parent is None:
        parent = ""
    if not isinstance(parent, str):
        raise InvalidInput(f"{what}: field parent must be a string, got {parent!r}")
    if parent:
        from ..spec.legacy import v1  # the legacy format only: not imported for other loads

        try:
            v1.validate_id(parent)
        except InvalidInput as e:
            raise InvalidInput(f"{what}: field parent: {e}") from None
    layer_path = f"{v1_id}/layer.tar"
    resolved, _ = _member(archive, layer_path, f"legacy layer {v1_id}")
    return _LegacyLayer(v1_id, raw, parent, layer_path, f"member {resolved}")


def _read_legacy(archive: ArchiveReader) -> list[ImageSource]:
    names = archive.names()
    dirs = sorted(n for n in names if "/" not in n and archive.is_dir(n))
    if not dirs:
        raise InvalidInput(
            f"{archive.name}: no {MANIFEST} and no legacy image directories (<id>/json)"
        )
    if len(dirs) > MAX_IMAGES:
        raise InvalidInput(
            f"{archive.name}: {len(dirs)} legacy image directories, over the limit of {MAX_IMAGES}"
        )
    sources: list[ImageSource] = []
    built: dict[str, _Built] = {}

    def build(top: str) -> None:
        # The chain from ``top`` down to the first layer already built (or the bottom).
        chain: list[_LegacyLayer] = []
        seen: set[str] = set()
        cur = top
        while cur and cur not in built:
            if cur in seen:
                raise InvalidInput(f"{archive.name}: legacy layer {cur}: its parents form a loop")
            if len(chain) >= MAX_LAYER_DEPTH:
                raise InvalidInput(
                    f"{archive.name}: legacy layer {top}: more than {MAX_LAYER_DEPTH} layers"
                )
            if not archive.is_dir(cur):
                child = chain[-1].v1_id if chain else top
                raise InvalidInput(
                    f"{archive.name}: {child}/json names parent {cur}, which is not in the archive"
                )
            seen.add(cur)
            layer = _legacy_layer(archive, cur)
            chain.append(layer)
            cur = layer.parent
        below = built.get(cur) if cur else None
        for layer in reversed(chain):
            what = f"{archive.name}: {layer.layer_path}"
            json_what = f"{archive.name}: {layer.v1_id}/json"
            from ..spec.legacy import v1

            try:
                entry = v1.history_from_config(layer.json, False)
            except InvalidInput as e:
                raise InvalidInput(f"{json_what}: {e}") from None
            history = [*(below.history if below else []), entry]
            config = functools.partial(_legacy_config, layer.json, history, json_what)
            # Made once now with stand-in DiffIDs, so that a bad JSON is refused before
            # any layer is read.
            config([EMPTY_TAR_DIGEST] * (len(below.layers) + 1 if below else 1))
            source = LayerSource(
                open=functools.partial(archive.open, layer.layer_path),
                what=what,
                key=layer.layer_key,
                read_size=archive.size(layer.layer_path),
            )
            layers = [*(below.layers if below else []), source]
            sources.append(
                ImageSource(
                    config=config,
                    what=json_what,
                    layers=layers,
                    parent=below.source if below else None,
                )
            )
            below = _Built(len(sources) - 1, history, layers)
            built[layer.v1_id] = below

    for d in dirs:
        build(d)

    if REPOSITORIES in names:
        _legacy_tags(archive, built, sources)
    return sources


def _legacy_tags(
    archive: ArchiveReader, built: dict[str, _Built], sources: list[ImageSource]
) -> None:
    doc = read_json(archive, REPOSITORIES, kind=REPOSITORIES)
    where = f"{archive.name}: {REPOSITORIES}"
    seen: set[tuple[int, Reference]] = set()
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: must be an object of repositories")
    for name in sorted(doc):
        tag_map = doc[name]
        if not isinstance(tag_map, dict):
            raise InvalidInput(f"{where}: {name!r} must map tags to image IDs")
        try:
            repo = parse(name).name_only()
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e}") from None
        for tag in sorted(tag_map):
            v1_id = tag_map[tag]
            try:
                ref = repo.with_tag(tag)
            except InvalidInput as e:
                raise InvalidInput(f"{where}: {name!r}: {e}") from None
            target = built.get(v1_id) if isinstance(v1_id, str) else None
            if target is None:
                raise InvalidInput(
                    f"{where}: {ref.familiar()} points at {v1_id!r}, "
                    "which is not a layer directory of the archive"
                )
            if (target.source, ref) not in seen:
                seen.add((target.source, ref))
                sources[target.source].tags.append(ref)


def read_docker_archive(archive: ArchiveReader) -> list[ImageSource]:
    """The images of a docker-archive (Docker before 1.10, 1.10 to 24, or 25 and later).

    Nothing is read beyond the JSON documents: layers are read once, when the store
    adds the images (:meth:`ocistore.store.Store.add_images`). A pre-1.10 image's config
    depends on its layers' DiffIDs, so it is made then (an :class:`ImageSource` with a
    config maker); its v1 JSON is checked here.
    """
    if MANIFEST in archive.names():
        return _read_manifest(archive)
    return _read_legacy(archive)


# -- writing ---------------------------------------------------------------------------


class _LegacyDir(NamedTuple):
    v1_id: str
    json: bytes
    chain: ChainID
    #: The first directory (in the order Docker saves them) holding the same diff ID,
    #: which ``layer.tar`` links to; ``None`` when this directory holds it.
    link: str | None
    #: The created time of the first image saved that has this directory.
    mtime: int


#: The latest time Docker's ``system.Chtimes`` sets (Go's ``time.Unix(0, 1<<63-1)``);
#: later ones, and those before the epoch, become the epoch.
_MAX_CHTIMES_NS: Final = (1 << 63) - 1


def _created_mtime(cfg: ImageConfig) -> int:
    """The mtime ``docker save`` gives the files of an image: its ``created`` time in
    whole seconds, as ``system.Chtimes`` sets it (the epoch when it is missing or out of
    its range) and ``archive/tar`` writes it (truncated to the second)."""
    ns = unix_nanos(cfg.created)  # None: missing (Go's zero time), or not a time Go reads
    return ns // 1_000_000_000 if ns is not None and 0 <= ns <= _MAX_CHTIMES_NS else 0


def _select(store: Store, names: list[str]) -> dict[ImageID, list[Reference]]:
    """The images ``docker save`` writes for ``names`` (in ID order), each with the tags
    it keeps (:meth:`~ocistore.store.Store.select`; a digest reference keeps none)."""
    selected: dict[ImageID, list[Reference]] = {}
    for image_id, ref in store.select(names):
        tags = selected.setdefault(image_id, [])
        if ref is not None and ref.digest is None:
            tagged = ref.tagged_or_default()
            if tagged not in tags:
                tags.append(tagged)
    return {image_id: selected[image_id] for image_id in sorted(selected)}


def _layer_copy(store: Store, layer: Layer, progress: Progress) -> Fill:
    """Copies a stored layer's exact tar into the archive, verified on the way
    (:class:`~ocistore.store.layers.LayerReader`)."""

    def fill(sink: MemberSink) -> None:
        task = progress.task(task_label(layer.diff_id.short(), SAVING), layer.size)
        with store.open_layer(layer) as tar:
            for piece in tar.chunks():
                sink.write(piece)
                task.update(sink.done)
        task.finish()

    return fill


def _manifest_json(manifest: list[dict[str, Any]]) -> bytes:
    """``manifest.json`` as moby's ``tarexport.manifestItem`` list is written by Go's
    ``json.NewEncoder(w).Encode(v)`` in ``docker save`` (20.10 to 24): compact JSON, Go's
    field order and escaping, and a newline."""
    from ..spec.legacy import gojson

    item = gojson.Struct(
        "tarexport.manifestItem",
        (
            gojson.Field("Config", gojson.STRING),
            gojson.Field("RepoTags", gojson.Slice(gojson.STRING)),
            gojson.Field("Layers", gojson.Slice(gojson.STRING)),
            gojson.Field("Parent", gojson.STRING, omitempty=True),
        ),
    )
    return gojson.marshal(manifest, gojson.Slice(item)) + b"\n"


def _repositories_json(repositories: dict[str, dict[str, str]]) -> bytes:
    """``repositories`` as Go's ``json.NewEncoder(w).Encode(v)`` writes it."""
    from ..spec.legacy import gojson

    return gojson.marshal(repositories, gojson.Map(gojson.Map(gojson.STRING))) + b"\n"


def write_docker_archive(
    store: Store, names: list[str], out: IO[bytes], progress: Progress | None = None
) -> None:
    """Write the images ``names`` name as ``docker save`` (Docker 1.10 to 24) does.

    Names are tags (only that tag goes into ``RepoTags``), bare repository names (all its
    tags), image IDs or ID prefixes (no tags), as for ``docker save``. Every layer is
    streamed from the store and verified against its DiffID on the way.
    """
    from ..spec.legacy.v1 import legacy_layers  # imported here: loads need it only for old archives

    progress = progress or SILENT
    selected = _select(store, names)
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    files: dict[str, tuple[bytes, int]] = {}  # config files, and their mtimes
    dirs: dict[str, _LegacyDir] = {}
    layers: dict[ChainID, Layer] = {}
    # Docker saves the images one after the other, in manifest order, each bottom-up.
    holder: dict[DiffID, str] = {}
    for image_id, tags in selected.items():
        image = store.image(image_id)
        cfg = image.config
        if not cfg.diff_ids:
            raise InvalidInput(
                f"image {image_id}: has no layers, and a docker-archive cannot hold such an "
                "image (docker save: empty export - not implemented)"
            )
        mtime = _created_mtime(cfg)
        legacy = legacy_layers(cfg.raw)
        for layer, chain, diff_id in zip(legacy, cfg.chain_ids, cfg.diff_ids, strict=True):
            if layer.v1_id in dirs:
                continue
            first = holder.setdefault(diff_id, layer.v1_id)
            link = first if first != layer.v1_id else None
            dirs[layer.v1_id] = _LegacyDir(layer.v1_id, layer.json, chain, link, mtime)
        for stored in store.layers_of(image):
            layers[stored.chain_id] = stored
        top = legacy[-1].v1_id
        for ref in tags:
            assert ref.tag is not None
            repositories.setdefault(ref.familiar_name, {})[ref.tag] = top
        parent = image.record.parent
        manifest.append(
            {
                "Config": f"{image_id.hex}.json",
                "RepoTags": [r.familiar() for r in tags] or None,
                "Layers": [f"{layer.v1_id}/layer.tar" for layer in legacy],
                "Parent": parent if parent in selected and parent != image_id else "",
            }
        )
        files[f"{image_id.hex}.json"] = cfg.raw, mtime

    top_level = sorted([*files, *dirs, MANIFEST, *([REPOSITORIES] if repositories else [])])
    with TarWriter(out) as tar:
        for name in top_level:
            if name in files:
                data, mtime = files[name]
                tar.add_bytes(name, data, mtime=mtime)
            elif name in dirs:
                d = dirs[name]
                tar.add_dir(name, mtime=d.mtime)
                tar.add_bytes(f"{name}/VERSION", LEGACY_VERSION, mtime=d.mtime)
                tar.add_bytes(f"{name}/json", d.json, mtime=d.mtime)
                if d.link is not None:
                    target = f"../{d.link}/layer.tar"
                    tar.add_symlink(f"{name}/layer.tar", target, mtime=d.mtime)
                    continue
                stored = layers[d.chain]
                fill = _layer_copy(store, stored, progress)
                tar.add_file(f"{name}/layer.tar", stored.size, fill, mtime=d.mtime)
            elif name == MANIFEST:
                tar.add_bytes(MANIFEST, _manifest_json(manifest))
            else:
                tar.add_bytes(REPOSITORIES, _repositories_json(repositories))
