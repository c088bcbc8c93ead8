"""Docker's image/v1 package: legacy v1 image IDs and conversions to and from v1 JSON.

Before Docker 1.10 every layer had a random 64-hex ID and a JSON document of its own.
Content-addressable Docker still speaks that format in two places: ``docker save``
(Docker 1.10 to 24) writes one legacy directory per layer, ``<v1id>/json``, and images
pulled as schema1 manifests (or loaded from pre-1.10 archives) are converted from v1 JSON
into an image config. The v1 IDs are hashes of JSON that Go's ``encoding/json`` writes
from Docker's structs, so this module describes those structs (:data:`V1_IMAGE`,
:data:`CONTAINER_CONFIG`, ...) for :mod:`ocistore.spec.legacy.gojson` and follows moby's
``image/v1/imagev1.go`` and ``image/tarexport/save.go`` step by step.

Two versions of Docker's ``V1Image`` matter:

* :data:`V1_IMAGE` is current Docker's (25 and later): ``Created`` is a ``*time.Time``,
  written as ``null`` when absent. :func:`create_id`, :func:`history_from_config` and
  :func:`make_config_from_v1_config` use it.
* :data:`V1_IMAGE_LEGACY` is that of Docker 20.10 to 24, the versions whose
  ``docker save`` writes legacy directories: ``Created`` is a ``time.Time``, written as
  ``0001-01-01T00:00:00Z`` when absent. :func:`legacy_layers` uses it.

The two differ only for v1 JSON without a ``created`` time.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NamedTuple

from ...errors import InvalidInput
from ..digest import chain_ids, digest_bytes
from ..reference import is_identifier
from . import gojson
from .gojson import (
    BOOL,
    INT,
    INT64,
    RAW,
    STRING,
    STRSLICE,
    TIME,
    Field,
    GoTime,
    Map,
    Ptr,
    Slice,
    Struct,
)

__all__ = [
    "CONTAINER_CONFIG",
    "HEALTH_CONFIG",
    "HISTORY",
    "IMAGE",
    "IMAGE_LEGACY",
    "ROOTFS",
    "V1_IMAGE",
    "V1_IMAGE_LEGACY",
    "LegacyLayer",
    "create_id",
    "history_from_config",
    "legacy_layers",
    "make_config_from_v1_config",
    "make_v1_config_from_config",
    "validate_id",
]


# --- Docker's structs -------------------------------------------------------------------

#: ``map[string]struct{}``: ``nat.PortSet`` and ``Config.Volumes``.
_SET: Final = Map(Struct("struct{}", ()))

#: api/types/container.HealthConfig (``StartInterval`` since Docker 25).
HEALTH_CONFIG: Final = Struct(
    "container.HealthConfig",
    (
        Field("Test", Slice(STRING), omitempty=True),
        Field("Interval", INT64, omitempty=True),
        Field("Timeout", INT64, omitempty=True),
        Field("StartPeriod", INT64, omitempty=True),
        Field("StartInterval", INT64, omitempty=True),
        Field("Retries", INT, omitempty=True),
    ),
)

#: api/types/container.Config. Every field added after Docker 1.10 is ``omitempty``, so
#: the JSON of an image that does not use it is the same in every Docker version.
CONTAINER_CONFIG: Final = Struct(
    "container.Config",
    (
        Field("Hostname", STRING),
        Field("Domainname", STRING),
        Field("User", STRING),
        Field("AttachStdin", BOOL),
        Field("AttachStdout", BOOL),
        Field("AttachStderr", BOOL),
        Field("ExposedPorts", _SET, omitempty=True),
        Field("Tty", BOOL),
        Field("OpenStdin", BOOL),
        Field("StdinOnce", BOOL),
        Field("Env", Slice(STRING)),
        Field("Cmd", STRSLICE),
        Field("Healthcheck", Ptr(HEALTH_CONFIG), omitempty=True),
        Field("ArgsEscaped", BOOL, omitempty=True),
        Field("Image", STRING),
        Field("Volumes", _SET),
        Field("WorkingDir", STRING),
        Field("Entrypoint", STRSLICE),
        Field("NetworkDisabled", BOOL, omitempty=True),
        Field("MacAddress", STRING, omitempty=True),
        Field("OnBuild", Slice(STRING)),
        Field("Labels", Map(STRING)),
        Field("StopSignal", STRING, omitempty=True),
        Field("StopTimeout", Ptr(INT), omitempty=True),
        Field("Shell", STRSLICE, omitempty=True),
    ),
)


def _v1_image_fields(created: Field) -> tuple[Field, ...]:
    return (
        Field("ID", STRING, "id", omitempty=True),
        Field("Parent", STRING, "parent", omitempty=True),
        Field("Comment", STRING, "comment", omitempty=True),
        created,
        Field("Container", STRING, "container", omitempty=True),
        Field("ContainerConfig", CONTAINER_CONFIG, "container_config", omitempty=True),
        Field("DockerVersion", STRING, "docker_version", omitempty=True),
        Field("Author", STRING, "author", omitempty=True),
        Field("Config", Ptr(CONTAINER_CONFIG), "config", omitempty=True),
        Field("Architecture", STRING, "architecture", omitempty=True),
        Field("Variant", STRING, "variant", omitempty=True),
        Field("OS", STRING, "os", omitempty=True),
        Field("Size", INT64, omitempty=True),
    )


#: image.V1Image of current Docker (25 and later).
V1_IMAGE: Final = Struct("image.V1Image", _v1_image_fields(Field("Created", Ptr(TIME), "created")))
#: image.V1Image of Docker 20.10 to 24.
V1_IMAGE_LEGACY: Final = Struct(
    "image.V1Image", _v1_image_fields(Field("Created", TIME, "created"))
)

#: image.RootFS.
ROOTFS: Final = Struct(
    "image.RootFS",
    (
        Field("Type", STRING, "type"),
        Field("DiffIDs", Slice(STRING), "diff_ids", omitempty=True),
    ),
)

#: image.History of current Docker (an alias of the OCI image-spec's History).
HISTORY: Final = Struct(
    "image.History",
    (
        Field("Created", Ptr(TIME), "created", omitempty=True),
        Field("CreatedBy", STRING, "created_by", omitempty=True),
        Field("Author", STRING, "author", omitempty=True),
        Field("Comment", STRING, "comment", omitempty=True),
        Field("EmptyLayer", BOOL, "empty_layer", omitempty=True),
    ),
)

#: image.History of Docker 20.10 to 24.
_HISTORY_LEGACY: Final = Struct(
    "image.History",
    (
        Field("Created", TIME, "created"),
        Field("Author", STRING, "author", omitempty=True),
        Field("CreatedBy", STRING, "created_by", omitempty=True),
        Field("Comment", STRING, "comment", omitempty=True),
        Field("EmptyLayer", BOOL, "empty_layer", omitempty=True),
    ),
)


def _image_fields(v1: Struct, history: Struct) -> tuple[Field, ...]:
    # image.Image embeds V1Image; its own Parent (depth 0) hides V1Image.Parent in JSON.
    promoted = tuple(f for f in v1.fields if f.name != "parent")
    return (
        *promoted,
        Field("ImageParent", STRING, "parent", omitempty=True),
        Field("RootFS", Ptr(ROOTFS), "rootfs", omitempty=True),
        Field("History", Slice(history), "history", omitempty=True),
        Field("OSVersion", STRING, "os.version", omitempty=True),
        Field("OSFeatures", Slice(STRING), "os.features", omitempty=True),
    )


#: image.Image (an image config) of current Docker, V1Image fields promoted.
IMAGE: Final = Struct("image.Image", _image_fields(V1_IMAGE, HISTORY))
#: image.Image of Docker 20.10 to 24.
IMAGE_LEGACY: Final = Struct("image.Image", _image_fields(V1_IMAGE_LEGACY, _HISTORY_LEGACY))

#: JSON names of image.Image's own fields, which MakeV1ConfigFromConfig deletes (all
#: tagged fields but ``parent``, including ``Details`` tagged ``json:"-"``).
_IMAGE_ONLY_KEYS: Final = ("rootfs", "history", "os.version", "os.features", "-")

_RAW_MAP: Final = Map(RAW)


# --- helpers ---------------------------------------------------------------------------


def _raw_json(value: Any, t: gojson.GoType) -> gojson.RawMessage:
    return gojson.RawMessage(gojson.marshal(value, t))


def _json_bytes(what: str, value: Any) -> bytes:
    """Python data as JSON bytes, for decoding into a Go struct as Docker would."""
    try:
        return json.dumps(value, ensure_ascii=True, allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: not JSON data: {exc}") from None


def _decode(what: str, data: bytes, t: gojson.GoType) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise InvalidInput(f"{what}: expected JSON bytes, got {type(data).__name__}")
    try:
        return gojson.unmarshal(bytes(data), t)
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def _raw_map(what: str, data: bytes) -> dict[str, gojson.RawMessage]:
    c = _decode(what, data, _RAW_MAP)
    if c is None:
        # Go would panic assigning into the nil map this JSON null decodes to.
        raise InvalidInput(f"{what}: JSON null where an object is required")
    return dict(c)


def _marshal_raw_map(c: dict[str, gojson.RawMessage]) -> bytes:
    try:
        return gojson.marshal(c, _RAW_MAP)
    except gojson.GoJSONError as exc:
        raise InvalidInput(str(exc)) from None


def _version_less_than(v: str, other: str) -> bool:
    """moby's api/types/versions.LessThan: dotted fields compared as integers."""

    def atoi(s: str) -> int:
        # strconv.Atoi; what does not parse counts as 0.
        if re.fullmatch(r"[+-]?[0-9]+", s):
            n = int(s)
            if -(1 << 63) <= n < (1 << 63):
                return n
        return 0

    if v == other:
        return False
    a, b = v.split("."), other.split(".")
    for i in range(max(len(a), len(b))):
        x = atoi(a[i]) if i < len(a) else 0
        y = atoi(b[i]) if i < len(b) else 0
        if x != y:
            return x < y
    return False


def _create_id(v1_image: dict[str, Any], v1_type: Struct, layer_id: str, parent: str) -> str:
    # moby's CreateID: marshal V1Image with ID emptied, reread it as a map of raw JSON,
    # add layer_id (and parent), marshal the map (sorted keys), hash.
    img = dict(v1_image)
    img["ID"] = ""
    try:
        v1_json = gojson.marshal(img, v1_type)
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"v1 image: {exc}") from None
    config = _raw_map("v1 image", v1_json)
    config["layer_id"] = _raw_json(layer_id, STRING)
    if parent != "":
        config["parent"] = _raw_json(parent, STRING)
    return str(digest_bytes(_marshal_raw_map(config)))


# --- public API ------------------------------------------------------------------------


def validate_id(s: str) -> None:
    """Check a legacy v1 image ID: 64 lowercase hex characters, nothing else."""
    if not isinstance(s, str) or not is_identifier(s):
        raise InvalidInput(f"image ID {s!r} is invalid: need 64 lowercase hex characters")


def create_id(v1_image: dict[str, Any], layer_id: str, parent: str = "") -> str:
    """The legacy v1 ID (``sha256:<hex>``) of a layer, as moby's ``CreateID``.

    ``v1_image`` is the parsed v1 JSON object; it goes through Docker's ``V1Image``
    struct first (unknown fields dropped, Go zero values filled in, ``omitempty``
    applied). ``layer_id`` is the layer's chain ID string; ``parent`` the parent's v1 ID
    as a digest, as this function returns it (``sha256:<hex>``; 64 bare hex characters
    are taken too), or ``""`` for a bottom layer.
    """
    if not isinstance(v1_image, dict):
        raise InvalidInput(f"v1 image: expected a JSON object, got {type(v1_image).__name__}")
    if parent != "":
        parent = _parent_digest(parent)
    img = _decode("v1 image", _json_bytes("v1 image", v1_image), V1_IMAGE)
    return _create_id(img, V1_IMAGE, layer_id, parent)


def _parent_digest(parent: str) -> str:
    """A parent v1 ID as ``CreateID`` hashes it: ``sha256:<64 hex>``."""
    hex_ = parent.removeprefix("sha256:") if isinstance(parent, str) else parent
    try:
        validate_id(hex_)
    except InvalidInput:
        raise InvalidInput(
            f"parent v1 ID {parent!r} is invalid: need sha256:<64 lowercase hex characters>"
        ) from None
    return "sha256:" + hex_


def history_from_config(v1_json: bytes, empty_layer: bool) -> dict[str, Any]:
    """The image-config history entry for one v1 JSON document (moby's HistoryFromConfig).

    Docker 1.10's ``image.History`` (the one that first loaded pre-1.10 archives, so the
    image IDs are the ones Docker computed): keys ``created`` (always, Go's zero time if
    unset), ``author``, ``created_by``, ``comment``, ``empty_layer``, empty ones left out as
    ``omitempty`` does; ``created`` is the RFC 3339 string Go writes and ``created_by``
    is ``container_config.Cmd`` joined with spaces.
    """
    img = _decode("v1 JSON", v1_json, V1_IMAGE_LEGACY)
    entry = {
        "Created": img["Created"],
        "CreatedBy": " ".join(img["ContainerConfig"]["Cmd"] or []),
        "Author": img["Author"],
        "Comment": img["Comment"],
        "EmptyLayer": bool(empty_layer),
    }
    try:
        data = gojson.marshal(entry, _HISTORY_LEGACY)
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"v1 JSON: {exc}") from None
    result: dict[str, Any] = json.loads(data)
    return result


def make_config_from_v1_config(
    v1_json: bytes, rootfs: dict[str, Any] | None, history: list[dict[str, Any]] | None
) -> bytes:
    """An image config made from the top layer's v1 JSON (moby's MakeConfigFromV1Config).

    For ``docker_version`` older than 1.8.3 the JSON first goes through Docker's
    ``V1Image`` struct. Then ``id``, ``parent``, ``Size``, ``parent_id``, ``layer_id`` and
    ``throwaway`` are dropped, ``rootfs`` and ``history`` (marshalled as Docker's RootFS
    and History structs) are added and the object is written with sorted keys; every other
    value keeps its JSON as it was (compacted and HTML-escaped, as Go writes a
    ``json.RawMessage``).
    """
    dver = _decode(
        "v1 JSON", v1_json, Struct("dver", (Field("DockerVersion", STRING, "docker_version"),))
    )
    data = bytes(v1_json)
    if _version_less_than(dver["DockerVersion"], "1.8.3"):
        img = _decode("v1 JSON", data, V1_IMAGE_LEGACY)
        try:
            data = gojson.marshal(img, V1_IMAGE_LEGACY)
        except gojson.GoJSONError as exc:
            raise InvalidInput(f"v1 JSON: {exc}") from None
    c = _raw_map("v1 JSON", data)
    for key in ("id", "parent", "Size", "parent_id", "layer_id", "throwaway"):
        c.pop(key, None)
    rootfs_value = _decode("rootfs", _json_bytes("rootfs", rootfs), Ptr(ROOTFS))
    history_value = _decode("history", _json_bytes("history", history), Slice(_HISTORY_LEGACY))
    try:
        c["rootfs"] = _raw_json(rootfs_value, Ptr(ROOTFS))
        c["history"] = _raw_json(history_value, Slice(_HISTORY_LEGACY))
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"history: {exc}") from None
    return _marshal_raw_map(c)


def make_v1_config_from_config(
    config: bytes, v1_id: str, parent_v1_id: str, throwaway: bool
) -> bytes:
    """Legacy v1 JSON for an image config (moby's MakeV1ConfigFromConfig).

    The config's raw JSON, without the keys of ``image.Image``'s own fields (``rootfs``,
    ``history``, ``os.version``, ``os.features``), with ``id`` set, ``parent`` set when
    given and ``throwaway: true`` when asked, written with sorted keys.
    """
    img = _decode("image config", config, IMAGE)
    if img["RootFS"] is None:
        raise InvalidInput("image config: invalid image JSON, no RootFS key")
    c = _raw_map("image config", config)
    for key in _IMAGE_ONLY_KEYS:
        c.pop(key, None)
    c["id"] = _raw_json(v1_id, STRING)
    if parent_v1_id != "":
        c["parent"] = _raw_json(parent_v1_id, STRING)
    if throwaway:
        c["throwaway"] = gojson.RawMessage(b"true")
    return _marshal_raw_map(c)


class LegacyLayer(NamedTuple):
    """One legacy layer directory of a ``docker save`` archive."""

    #: The directory name: the layer's v1 ID, 64 hex characters.
    v1_id: str
    #: The v1 ID of the directory below, or ``""`` for the bottom layer.
    parent: str
    #: The exact content of ``<v1_id>/json``.
    json: bytes


def check_config(config: bytes, what: str) -> None:
    """Refuse a config that Docker could not decode into its ``image.Image`` (a field of
    the wrong type: ``config.Cmd`` a number, ``created`` not an RFC 3339 time), as
    ``docker load`` refuses it, and that could therefore not be saved again; checked
    against the types of current Docker and of Docker 20.10 to 24, whose archives
    ``save`` writes."""
    try:
        gojson.unmarshal_each(bytes(config), (IMAGE, IMAGE_LEGACY))  # parsed once
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def legacy_layers(config: bytes, *, utc_offset: int = 0) -> list[LegacyLayer]:
    """The legacy layer directories ``docker save`` (Docker 20.10 to 24) writes, bottom first.

    As moby's ``saveImage``: one directory per entry of ``rootfs.diff_ids`` (history and
    its empty layers play no part), each hashed by ``CreateID`` with the chain ID of the
    layers up to it as ``layer_id`` and the v1 ID below as parent. Every layer but the top
    is hashed from an otherwise empty ``V1Image`` whose ``created`` is Go's
    ``time.Unix(0, 0)``; the top layer carries the image's own ``V1Image`` fields. The
    ``json`` file is that V1Image with ``id``, ``parent`` and the image's ``os`` set.

    ``time.Unix(0, 0)`` is in the daemon's local time zone, so the epoch reads
    ``1970-01-01T00:00:00Z`` only on a daemon running in UTC (as Docker Desktop's does);
    ``utc_offset`` is that zone's offset from UTC at the epoch, in seconds (3600 for
    Europe/Paris, which then gives ``1970-01-01T01:00:00+01:00``).
    """
    img = _decode("image config", config, IMAGE_LEGACY)
    rootfs = img["RootFS"]
    if rootfs is None:
        raise InvalidInput("image config: invalid image JSON, no RootFS key")
    diff_ids = rootfs["DiffIDs"] or []
    if not diff_ids:
        raise InvalidInput("image config: no layers (rootfs.diff_ids is empty)")
    chains = chain_ids(list(diff_ids))
    own = {f.go_name: img[f.go_name] for f in V1_IMAGE_LEGACY.fields if f.go_name != "Parent"}
    own["Parent"] = ""
    epoch = GoTime.unix(0, 0, utc_offset)
    out: list[LegacyLayer] = []
    parent = ""
    for i, chain in enumerate(chains):
        if i == len(chains) - 1:
            v1img = dict(own)
        else:
            v1img = gojson.zero(V1_IMAGE_LEGACY)
            v1img["Created"] = epoch
        v1_id = _create_id(v1img, V1_IMAGE_LEGACY, str(chain), "sha256:" + parent if parent else "")
        hex_id = v1_id.partition(":")[2]
        v1img["ID"] = hex_id
        if parent:
            v1img["Parent"] = parent
        v1img["OS"] = img["OS"]
        try:
            data = gojson.marshal(v1img, V1_IMAGE_LEGACY)
        except gojson.GoJSONError as exc:
            raise InvalidInput(f"image config: {exc}") from None
        out.append(LegacyLayer(hex_id, parent, data))
        parent = hex_id
    return out
