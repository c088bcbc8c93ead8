"""Media types of the OCI image spec and Docker's distribution formats (the limits on
the documents they name are in :mod:`ocistore.spec.limits`)."""

from __future__ import annotations

from typing import Final

from .compression import Compression

__all__ = [
    "CONFIG_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "DOCKER_SCHEMA1_UNSIGNED",
    "FOREIGN_LAYER_TYPES",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "layer_media_type",
]

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
#: A plain layer; ``+gzip`` and ``+zstd`` name compressed ones (:func:`layer_media_type`).
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
#: Docker's image manifest schema 1, unsigned and signed (a JWS): pulled from registries
#: (:mod:`ocistore.spec.legacy.schema1`), refused in archives.
DOCKER_SCHEMA1_UNSIGNED: Final = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1: Final = frozenset({DOCKER_SCHEMA1_UNSIGNED, DOCKER_SCHEMA1_SIGNED})

INDEX_TYPES: Final = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES: Final = frozenset({OCI_CONFIG, DOCKER_CONFIG})
#: Layers that registries need not carry: their blobs may live only behind ``urls``.
FOREIGN_LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
    }
)
LAYER_TYPES: Final = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER + "+gzip",
        OCI_LAYER + "+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    }
    | FOREIGN_LAYER_TYPES
)

_LAYER_MEDIA_TYPE: Final = {c: OCI_LAYER + c.media_suffix for c in Compression}


def layer_media_type(compression: Compression) -> str:
    """The OCI media type of a layer blob compressed so."""
    return _LAYER_MEDIA_TYPE[compression]
