"""Which format an archive is in, from its content, never its name.

A ``version`` file saying ``Directory Transport Version:``, or a ``manifest.json`` that is
a JSON object, makes skopeo's dir layout (a docker-archive's ``manifest.json`` is a list).
Otherwise a ``manifest.json`` makes a docker-archive, even when Docker 25+ made the same
tar an OCI layout too (``docker load`` reads such an archive through its
``manifest.json``); without it, ``oci-layout`` with ``index.json`` makes an OCI layout or
oci-archive; the legacy ``repositories`` file or ``<v1 id>/json`` directories make a
Docker < 1.10 archive.
"""

from __future__ import annotations

from ..errors import InvalidInput
from ..spec.platform import Platform
from ..store.ingest import ImageSource
from .reader import ArchiveReader


def read_images(archive: ArchiveReader, platform: Platform | None = None) -> list[ImageSource]:
    """The images of an archive of any format ocistore reads (``platform`` chooses in
    multi-platform OCI indexes); at least one, or :class:`~ocistore.errors.InvalidInput`."""
    # Each format's code is imported only when needed.
    from . import dir_layout, oci_layout

    if dir_layout.is_dir_layout(archive):
        sources = dir_layout.read_dir_layout(archive, platform)
    elif not archive.exists("manifest.json") and oci_layout.is_oci_layout(archive):
        sources = oci_layout.read_oci_layout(archive, platform)
    else:
        from . import docker_archive

        if not docker_archive.is_docker_archive(archive):
            raise InvalidInput(
                f"{archive.name}: not an image archive: no manifest.json, repositories, "
                "oci-layout with index.json, or version (a dir layout)"
            )
        sources = docker_archive.read_docker_archive(archive)
    if not sources:
        raise InvalidInput(f"{archive.name}: the archive holds no image")
    return sources
