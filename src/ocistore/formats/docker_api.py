"""What Docker's engine API says about an image, byte for byte: ``docker image inspect``.

Docker's daemon answers ``GET /images/{name}/json`` by decoding the image config into its
``image.Image`` struct and encoding a ``types.ImageInspect`` (API 1.41, Docker 20.10),
which the ``docker`` command prints indented (``json.Indent``, four spaces) without
touching the bytes. So the ``Config`` and ``ContainerConfig`` it shows are
``container.Config`` as Go encodes it: every field present with Go's zero values, in
Go's field order, keys Docker does not know dropped; ``Created`` is Go's RFC 3339 with
nanoseconds (``0001-01-01T00:00:00Z`` when the config has none); strings keep non-ASCII
as UTF-8 and escape ``<``, ``>``, ``&``.

:func:`image_inspect` does the same from what the store knows
(:class:`~ocistore.store.store.ImageDetails`), with :mod:`ocistore.spec.legacy.gojson`
and Docker's types from :mod:`ocistore.spec.legacy.v1`; the command prints it as docker
does (``cli.views.print_inspect``).

Where ocistore has nothing to say Docker's way it leaves the field out: there is no graph
driver (``GraphDriver``), layers are kept as the blobs they came in.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from ..spec.legacy import gojson
from ..spec.legacy.gojson import INT64, STRING, TIME, Field, GoTime, Ptr, Slice, Struct
from ..spec.legacy.v1 import CONTAINER_CONFIG, IMAGE_LEGACY

if TYPE_CHECKING:
    from ..store.store import ImageDetails

__all__ = ["IMAGE_INSPECT", "as_data", "image_inspect"]

_ROOTFS: Final = Struct(
    "types.RootFS",
    (
        Field("Type", STRING),
        Field("Layers", Slice(STRING), omitempty=True),
        Field("BaseLayer", STRING, omitempty=True),
    ),
)

#: types.ImageInspect of API 1.41 (Docker 20.10), without ``GraphDriver``.
IMAGE_INSPECT: Final = Struct(
    "types.ImageInspect",
    (
        Field("ID", STRING, "Id"),
        Field("RepoTags", Slice(STRING)),
        Field("RepoDigests", Slice(STRING)),
        Field("Parent", STRING),
        Field("Comment", STRING),
        Field("Created", STRING),
        Field("Container", STRING),
        Field("ContainerConfig", Ptr(CONTAINER_CONFIG)),
        Field("DockerVersion", STRING),
        Field("Author", STRING),
        Field("Config", Ptr(CONTAINER_CONFIG)),
        Field("Architecture", STRING),
        Field("Variant", STRING, omitempty=True),
        Field("Os", STRING),
        Field("OsVersion", STRING, omitempty=True),
        Field("Size", INT64),
        Field("VirtualSize", INT64),
        Field("RootFS", _ROOTFS),
        Field("Metadata", Struct("types.ImageMetadata", (Field("LastTagTime", TIME),))),
    ),
)

_ZERO_TIME: Final = GoTime()


def image_inspect(details: ImageDetails) -> bytes:
    """The compact JSON Docker's engine sends for an image (``types.ImageInspect``)."""
    config = gojson.unmarshal(details.image.config.raw, IMAGE_LEGACY)
    comment = config["Comment"]
    history = config["History"] or []
    if not comment and history:
        comment = history[-1]["Comment"]
    rootfs = config["RootFS"] or {}
    last_tag = GoTime.parse_rfc3339(details.last_tag_time) if details.last_tag_time else _ZERO_TIME
    value: dict[str, Any] = {
        "ID": str(details.image.id),
        "RepoTags": list(details.repo_tags),
        "RepoDigests": list(details.repo_digests),
        "Parent": str(details.image.record.parent or ""),
        "Comment": comment,
        "Created": config["Created"].format_rfc3339nano(),
        "Container": config["Container"],
        "ContainerConfig": config["ContainerConfig"],
        "DockerVersion": config["DockerVersion"],
        "Author": config["Author"],
        "Config": config["Config"],
        "Architecture": config["Architecture"],
        "Variant": config["Variant"],
        # image.OperatingSystem(): the daemon's own OS when the config names none.
        "Os": config["OS"] or "linux",
        "OsVersion": config["OSVersion"],
        "Size": details.size,
        "VirtualSize": details.size,
        "RootFS": {"Type": rootfs.get("Type", ""), "Layers": rootfs.get("DiffIDs")},
        "Metadata": {"LastTagTime": last_tag},
    }
    return gojson.marshal(value, IMAGE_INSPECT)


def as_data(document: bytes) -> dict[str, Any]:
    """A document as Python data, keys in Docker's order (for templates and the library)."""
    data: dict[str, Any] = json.loads(document)
    return data
