"""OCI content descriptors (``mediaType``, ``digest``, ``size``, ``annotations``,
``platform``), parsed from untrusted JSON with errors that say where they are, and the
annotations ocistore reads and writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ..errors import InvalidInput
from .digest import Digest
from .platform import Platform

__all__ = [
    "ANNOTATION_CONTAINERD_NAME",
    "ANNOTATION_REF_NAME",
    "Descriptor",
    "choose_platform",
    "parse_descriptor",
]

#: The name of an image in an OCI layout's ``index.json``: a tag alone (``1``) as skopeo,
#: umoci, podman and buildah write it, or a full reference.
ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
#: The full reference of an image (``docker.io/library/foo:1``), as containerd (and Docker
#: 25+ ``docker save``) write it next to the ref name.
ANNOTATION_CONTAINERD_NAME: Final = "io.containerd.image.name"


class Descriptor(NamedTuple):
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str]
    platform: dict[str, Any] | None
    #: Where the descriptor is, for messages: ``index.json manifests[0] → config``.
    where: str

    def platform_value(self) -> Platform:
        """The descriptor's platform (empty parts where it says nothing)."""
        p = self.platform or {}
        return Platform(
            str(p.get("os") or ""), str(p.get("architecture") or ""), str(p.get("variant") or "")
        )


def parse_descriptor(obj: Any, where: str, source: str, need_type: bool = True) -> Descriptor:
    """A descriptor from parsed JSON; errors name ``source`` (an archive, a registry)
    and ``where`` it is. Without ``need_type`` a missing ``mediaType`` is ``""``."""
    at = f"{source}: {where}"
    if not isinstance(obj, dict):
        raise InvalidInput(f"{at}: not a descriptor (a JSON object)")
    media_type = obj.get("mediaType")
    if media_type is None and not need_type:
        media_type = ""
    if not isinstance(media_type, str) or (need_type and not media_type):
        raise InvalidInput(f"{at}: field mediaType is missing or not a string")
    raw_digest = obj.get("digest")
    if not isinstance(raw_digest, str):
        raise InvalidInput(f"{at}: field digest is missing or not a string")
    try:
        digest = Digest(raw_digest)
    except InvalidInput as e:
        raise InvalidInput(f"{at}: field digest: {e}") from None
    size = obj.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"{at}: field size is missing or not a non-negative integer")
    annotations = obj.get("annotations")
    if annotations is None:
        annotations = {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidInput(f"{at}: field annotations is not a string map")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise InvalidInput(f"{at}: field platform is not an object")
    return Descriptor(media_type, digest, size, annotations, platform, where)


def choose_platform(descs: Sequence[Descriptor], want: Platform, at: str) -> Descriptor:
    """The descriptor of an index for platform ``want``: one whose variant is exactly
    ``want``'s if there is one, else the first that matches (:meth:`Platform.matches`).
    None matching is an error at ``at`` (the index) listing the platforms it has."""
    matches = [d for d in descs if want.matches(d.platform)]
    for d in matches:
        if str((d.platform or {}).get("variant") or "") == want.variant:
            return d
    if matches:
        return matches[0]
    available = list(dict.fromkeys(str(d.platform_value()) for d in descs))
    shown = ", ".join(p for p in available if p != "unknown/unknown") or "none"
    raise InvalidInput(f"{at}: no image for platform {want}; available: {shown}")
