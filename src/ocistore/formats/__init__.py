"""The archive formats: loading and saving images in every format, chosen from content.

:func:`load` opens a tar (plain, gzip or zstd; ``-`` for stdin) or a directory, finds
which format it is (:mod:`ocistore.formats.detect`), reads its images as sources and
adds them through the store's one way in. :func:`save` writes ``docker`` (Docker
1.10–24's format), ``oci`` (a directory), ``oci-archive`` or ``dir`` (skopeo's ``dir:``
layout of one image, a directory). Formats read archives and write the user's output;
they never write under a store's root.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ..errors import InvalidInput
from ..progress import Progress
from ..spec.platform import Platform
from ..spec.reference import Reference
from ..store.ingest import ImageSource, LoadedImage
from ..store.resolve import Selected
from ..store.store import Store
from .detect import read_images
from .reader import open_archive
from .tarwriter import output_file

__all__ = ["SaveFormat", "load", "save"]


class SaveFormat(enum.Enum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    #: skopeo's ``dir:`` layout: one image, a directory.
    DIR = "dir"


def load(
    store: Store,
    source: str | Path,
    platform: Platform | None = None,
    progress: Progress | None = None,
    select: Callable[[list[ImageSource]], list[ImageSource]] | None = None,
) -> list[LoadedImage]:
    """Load every image of an archive or layout into ``store``; returns what was loaded.

    ``platform`` chooses in multi-platform indexes (default: this machine's); ``select``
    picks among the images found, before any layer is read (``copy oci:DIR:REF``).
    """
    archive = open_archive(source, store.spool)
    try:
        sources = read_images(archive, platform)
        return store.add_images(select(sources) if select else sources, progress)
    finally:
        archive.close()


class _Renamed:
    """A store whose ``select`` gives its one image under another name; the rest is the
    store's (see ``save``'s ``as_name``)."""

    def __init__(self, store: Store, name: Reference) -> None:
        self._store = store
        self._name = name

    def select(self, names: list[str]) -> list[Selected]:
        ids = list(dict.fromkeys(image_id for image_id, _ in self._store.select(names)))
        if len(ids) != 1:
            raise InvalidInput(
                f"{len(ids)} images selected to be saved as {self._name.familiar()}: name one"
            )
        return [Selected(ids[0], self._name)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def save(
    store: Store,
    names: list[str],
    output: str | Path,
    format: SaveFormat | str = SaveFormat.DOCKER,
    progress: Progress | None = None,
    as_name: Reference | None = None,
) -> None:
    """Save the images ``names`` select (as ``docker save`` selects them) to ``output``
    (``-`` is stdout; a directory for :attr:`SaveFormat.OCI` and :attr:`SaveFormat.DIR`,
    which holds exactly one image). Every name is found before any output is made.

    ``as_name`` names the one image selected in the output instead of the name it was
    selected by (``copy IMAGE oci:DIR:TAG``, ``docker-archive:PATH:REF``), without
    tagging it in the store."""
    if as_name is not None:
        store = cast(Store, _Renamed(store, as_name))
    try:
        format = SaveFormat(format)
    except ValueError:
        formats = ", ".join(f.value for f in SaveFormat)
        raise InvalidInput(f"unknown save format {format!r} (one of {formats})") from None
    output = str(output)
    if not names:
        raise InvalidInput("save needs at least one image")
    # Each writer selects its images before it writes a byte: a name that is nothing
    # fails before any output is made (a file being written is removed).
    # Only the writer this save needs is imported: each costs start-up time.
    if format is SaveFormat.OCI:
        if output == "-":
            raise InvalidInput("the oci format writes a directory: give -o DIR")
        from .oci_layout import write_oci_layout

        write_oci_layout(store, names, Path(output), progress)
        return
    if format is SaveFormat.DIR:
        if output == "-":
            raise InvalidInput("the dir format writes a directory: give -o DIR")
        from .dir_layout import write_dir_layout

        write_dir_layout(store, names, Path(output), progress)
        return
    if format is SaveFormat.DOCKER:
        from .docker_archive import write_docker_archive as write
    else:
        from .oci_layout import write_oci_archive as write
    with output_file(output) as out:
        write(store, names, out, progress)
