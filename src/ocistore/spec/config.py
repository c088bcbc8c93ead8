"""Image configs (Docker image spec v1.2 / OCI image config), parsed but never re-serialized.

An :class:`ImageConfig` keeps the exact bytes it was made from; its ID is their sha256.
Parsing checks what the store relies on and names the field that is wrong.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import InvalidInput
from .digest import ChainID, DiffID, Digest, ImageID, chain_ids, digest_bytes
from .limits import MAX_CONFIG, MAX_LAYER_DEPTH, load_json

__all__ = ["MAX_LAYER_DEPTH", "ImageConfig", "parse_config"]


class ImageConfig(NamedTuple):
    id: ImageID
    raw: bytes
    data: dict[str, Any]
    diff_ids: tuple[DiffID, ...]
    #: One per layer, bottom first: worked out once, when the config is parsed.
    chain_ids: tuple[ChainID, ...]

    def __repr__(self) -> str:
        return f"ImageConfig(id={self.id!r}, diff_ids={self.diff_ids!r})"

    # Equal and hashed by ID and bytes: ``data`` is derived from ``raw`` (and a dict).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageConfig):
            return NotImplemented
        return self.id == other.id and self.raw == other.raw

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def top_chain(self) -> ChainID | None:
        ids = self.chain_ids
        return ids[-1] if ids else None

    @property
    def created(self) -> str:
        return str(self.data.get("created") or "")

    @property
    def author(self) -> str:
        return str(self.data.get("author") or "")

    @property
    def architecture(self) -> str:
        return str(self.data.get("architecture") or "")

    @property
    def os(self) -> str:
        return str(self.data.get("os") or "")

    @property
    def variant(self) -> str:
        return str(self.data.get("variant") or "")

    @property
    def history(self) -> list[dict[str, Any]]:
        h = self.data.get("history")
        return h if isinstance(h, list) else []

    @property
    def container_config(self) -> dict[str, Any] | None:
        c = self.data.get("config")
        return c if isinstance(c, dict) else None


def parse_config(raw: bytes, what: str = "image config") -> ImageConfig:
    """Validate an image config; errors name ``what`` and the offending field, or the
    limit it exceeds (:func:`~ocistore.spec.limits.load_json`)."""
    if not raw:
        raise InvalidInput(f"{what}: empty")
    data = load_json(raw, what, MAX_CONFIG, "an image config")
    if not isinstance(data, dict):
        raise InvalidInput(f"{what}: not a JSON object")
    rootfs = data.get("rootfs")
    if rootfs is None:
        raise InvalidInput(f"{what}: field rootfs is missing")
    if not isinstance(rootfs, dict):
        raise InvalidInput(f"{what}: field rootfs is not an object")
    if rootfs.get("type") != "layers":
        raise InvalidInput(
            f"{what}: field rootfs.type is {rootfs.get('type')!r}, only 'layers' is supported"
        )
    raw_ids = rootfs.get("diff_ids")
    if raw_ids is None:
        raw_ids = []
    if not isinstance(raw_ids, list):
        raise InvalidInput(f"{what}: field rootfs.diff_ids is not a list")
    diff_ids: list[DiffID] = []
    for i, d in enumerate(raw_ids):
        if not isinstance(d, str) or not Digest.is_valid(d):
            raise InvalidInput(f"{what}: field rootfs.diff_ids[{i}] is not a valid digest: {d!r}")
        diff_ids.append(DiffID(Digest(d)))
    if len(diff_ids) > MAX_LAYER_DEPTH:
        raise InvalidInput(
            f"{what}: {len(diff_ids)} layers, more than the maximum depth {MAX_LAYER_DEPTH}"
        )
    history = data.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise InvalidInput(f"{what}: field history is not a list")
        for i, entry in enumerate(history):
            if not isinstance(entry, dict):
                raise InvalidInput(f"{what}: field history[{i}] is not an object")
        non_empty = sum(1 for h in history if not h.get("empty_layer"))
        if non_empty > len(diff_ids):
            raise InvalidInput(
                f"{what}: field history has {non_empty} non-empty entries "
                f"but rootfs.diff_ids has only {len(diff_ids)} layers"
            )
    for name in ("created", "author", "architecture", "os", "variant"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{what}: field {name} is not a string")
    config = data.get("config")
    if config is not None and not isinstance(config, dict):
        raise InvalidInput(f"{what}: field config is not an object")
    return ImageConfig(
        ImageID(digest_bytes(raw)), raw, data, tuple(diff_ids), tuple(chain_ids(diff_ids))
    )
