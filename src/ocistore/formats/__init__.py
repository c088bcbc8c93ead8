"""Loading and saving images in every archive format, chosen from content, not names.

:func:`load` opens a tar (plain, gzip or zstd; ``-`` for stdin) or a directory and asks
each format whether it is one of its own: a ``manifest.json`` (or the legacy
``repositories``) makes a docker-archive, even when Docker 25+ made the same tar an OCI
layout too; ``oci-layout`` with ``index.json`` makes an OCI layout or oci-archive.
:func:`save` writes ``docker`` (Docker 1.10–24's format), ``oci`` (a directory) or
``oci-archive``.
"""

from __future__ import annotations

import enum
from pathlib import Path

from ..errors import InvalidInput, NotFound
from ..progress import Progress
from ..spec.platform import Platform
from ..spec.reference import parse
from ..store.ingest import LoadedImage, load_images
from ..store.store import Store
from .reader import open_archive
from .tarwriter import output_file


class SaveFormat(enum.Enum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"


def load(
    store: Store,
    source: str | Path,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> list[LoadedImage]:
    """Load every image of an archive or layout into ``store``; returns what was loaded."""
    from . import oci_layout

    archive = open_archive(source, store.tmpdir)
    try:
        # manifest.json wins (Docker 25+ archives are OCI layouts too); the docker-archive
        # code (and Go-JSON machinery of the v1 format) is only imported when needed.
        if not archive.exists("manifest.json") and oci_layout.is_oci_layout(archive):
            sources = oci_layout.read_oci_layout(archive, platform)
        else:
            from . import docker_archive

            if not docker_archive.is_docker_archive(archive):
                raise InvalidInput(
                    f"{archive.name}: not an image archive: no manifest.json, repositories "
                    "or oci-layout with index.json"
                )
            sources = docker_archive.read_docker_archive(archive)
        if not sources:
            raise InvalidInput(f"{archive.name}: the archive holds no image")
        return load_images(store, sources, progress)
    finally:
        archive.close()


def _check_name(store: Store, name: str) -> None:
    """An image, or a bare repository name with tags (``docker save repo`` saves them all)."""
    try:
        store.resolve(name)
    except NotFound:
        try:
            ref = parse(name)
        except InvalidInput:
            ref = None
        if ref is None or not ref.is_name_only or not store.references.references_by_name(ref):
            raise


def save(
    store: Store,
    names: list[str],
    output: str,
    format: SaveFormat = SaveFormat.DOCKER,
    progress: Progress | None = None,
) -> None:
    """Save images to ``output`` (``-`` is stdout; a directory for :attr:`SaveFormat.OCI`)."""
    # Only the writer this save needs is imported: each costs start-up time.
    if not names:
        raise InvalidInput("save needs at least one image")
    for name in names:  # a name that is nothing fails before any output is made
        _check_name(store, name)
    if format is SaveFormat.OCI:
        if output == "-":
            raise InvalidInput("the oci format writes a directory: give -o DIR")
        from .oci_layout import write_oci_layout

        write_oci_layout(store, names, Path(output), progress)
        return
    if format is SaveFormat.DOCKER:
        from .docker_archive import write_docker_archive as write
    else:
        from .oci_layout import write_oci_archive as write
    with output_file(output) as out:
        write(store, names, out, progress)
