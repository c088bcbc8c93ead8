"""ocistore: a content-addressable container image store, as a library.

It keeps what Docker keeps under ``/var/lib/docker/image/``, without a daemon: images,
their layers and tags in one directory that many processes may use at once and that
survives a crash at any instant. Every digest is checked as content comes in and again
as it is read back::

    import ocistore

    with ocistore.open("/var/lib/ocistore") as store:
        for loaded in ocistore.load(store, "busybox.tar"):       # any docker/OCI archive
            print(loaded.id, [ref.familiar() for ref in loaded.tags])
        image = store.image("busybox:latest")                    # a name, an ID, a prefix
        for layer in store.layers_of(image):                     # bottom first
            with store.open_layer(layer) as tar:                 # the exact tar, verified
                for piece in tar.chunks():                       # a megabyte at a time
                    ...
        ocistore.save(store, ["busybox:latest"], "out.tar", format="oci-archive")

The public names are those listed here (``__all__``); the rest of the package is
organised so (see ``docs/design.md``): :mod:`ocistore.spec` holds pure values (digests,
references, configs, descriptors, media types, platforms, compression),
:mod:`ocistore.store` the store (the only code that writes under its root),
:mod:`ocistore.formats` the archive formats, :mod:`ocistore.registry` the registry client,
:mod:`ocistore.rootfs` the image as a file system, :mod:`ocistore.cli` the command line.
Every error ocistore raises on purpose is an :class:`OcistoreError` whose message names
what it is about.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    Ambiguous,
    Conflict,
    CorruptStore,
    DigestMismatch,
    InvalidInput,
    LockTimeout,
    NotFound,
    OcistoreError,
    PartiallyDone,
    ReadOnlyStore,
    SizeMismatch,
    StorageError,
    UnsupportedStore,
)
from .progress import SILENT, Progress, ProgressTask
from .spec.digest import ChainID, DiffID, Digest, ImageID
from .spec.platform import Platform, parse_platform
from .spec.reference import Reference
from .spec.reference import parse as parse_reference
from .store import Store
from .store.images import Image, ImageRecord
from .store.ingest import ImageSource, LayerSource, LoadedImage
from .store.layers import Layer

if TYPE_CHECKING:
    from .formats import SaveFormat
    from .registry.client import RegistryError
    from .registry.credentials import Credential, CredentialStore
    from .registry.session import Session

__version__ = "0.1.0"

__all__ = [
    "SILENT",
    "Ambiguous",
    "ChainID",
    "Conflict",
    "CorruptStore",
    "Credential",
    "CredentialStore",
    "DiffID",
    "Digest",
    "DigestMismatch",
    "Image",
    "ImageID",
    "ImageRecord",
    "ImageSource",
    "InvalidInput",
    "Layer",
    "LayerSource",
    "LoadedImage",
    "LockTimeout",
    "NotFound",
    "OcistoreError",
    "PartiallyDone",
    "Platform",
    "Progress",
    "ProgressTask",
    "ReadOnlyStore",
    "Reference",
    "RegistryError",
    "Session",
    "SizeMismatch",
    "StorageError",
    "Store",
    "UnsupportedStore",
    "__version__",
    "append",
    "commit",
    "diff",
    "export",
    "flatten",
    "inspect",
    "load",
    "open",
    "parse_platform",
    "parse_reference",
    "pull",
    "push",
    "save",
    "unpack",
]

#: Names of :mod:`ocistore.registry` this module gives, imported on first use (their
#: ``ssl`` and ``http.client`` would cost every command's start).
_REGISTRY_NAMES = {
    "Credential": "credentials",
    "CredentialStore": "credentials",
    "RegistryError": "client",
    "Session": "session",
}


def __getattr__(name: str) -> Any:
    module = _REGISTRY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'ocistore' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"ocistore.registry.{module}"), name)


def open(root: str | Path) -> Store:
    """The store in the directory ``root`` (created if missing); use it as a context
    manager. :class:`InvalidInput` naming the path if ``root`` is not a directory."""
    return Store(root)


def inspect(store: Store, name: str) -> dict[str, Any]:
    """``docker image inspect`` of one image: what Docker's engine answers (its
    ``types.ImageInspect``, ``Config`` re-encoded as Docker's ``container.Config``), as
    Python data in Docker's key order; :meth:`Store.inspect` gives the facts behind it.
    :class:`NotFound` ``No such image: NAME`` if nothing has that name."""
    from .formats import docker_api as api

    return api.as_data(api.image_inspect(store.inspect(name)))


def load(
    store: Store,
    source: str | Path,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> list[LoadedImage]:
    """Load every image of an archive into ``store``: a docker-archive of any Docker
    version, an OCI layout directory or an oci-archive, recognized from the content; a
    tar may be gzip- or zstd-compressed, ``"-"`` is standard input. ``platform`` chooses
    in multi-platform indexes (default: this machine's). Tags are moved, as ``docker
    load`` moves them. Returns the images loaded, with their tags."""
    from . import formats

    return formats.load(store, source, platform, progress)


def save(
    store: Store,
    names: list[str],
    output: str | Path,
    format: SaveFormat | str = "docker",
    progress: Progress | None = None,
) -> None:
    """Save the images ``names`` select, as ``docker save`` selects them (tags, bare
    repository names, IDs), to ``output``: ``format`` ``"docker"`` (what ``docker save``
    writes), ``"oci-archive"``, or ``"oci"`` (a layout directory). ``"-"`` is standard
    output. The output is deterministic, and every blob is verified as it is copied."""
    from . import formats

    formats.save(store, names, output, format, progress)


def pull(
    store: Store,
    reference: str,
    platform: Platform | None = None,
    all_platforms: bool = False,
    progress: Progress | None = None,
    session: Session | None = None,
) -> list[LoadedImage]:
    """Pull ``reference`` (``busybox`` is ``docker.io/library/busybox:latest``) from its
    registry into ``store``, as ``docker pull`` does: tagged as pulled, with the digest
    reference ``NAME@DIGEST``. ``session`` holds the credentials, TLS settings and
    retries (default: anonymous, TLS verified, plain HTTP to loopback registries only;
    ``Session(CredentialStore.from_environment(os.environ))`` reads what ``docker
    login`` and ``podman login`` left). Returns the images added."""
    from .registry.pull import pull as pull_image
    from .registry.session import Session as _Session
    from .spec.reference import parse

    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(_Session())
        return pull_image(
            store, session, parse(reference), platform, all_platforms, progress
        ).images


def push(
    store: Store,
    name: str,
    destination: str | None = None,
    progress: Progress | None = None,
    session: Session | None = None,
) -> Digest:
    """Push the image ``name`` names to ``destination`` (default: ``name``, a reference
    with a registry), as ``docker push`` does; returns the manifest's digest."""
    from .registry.push import push as push_image
    from .registry.session import Session as _Session
    from .spec.reference import parse_tagged

    dest = parse_tagged(destination) if destination else None
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(_Session())
        return push_image(store, session, name, dest, progress).digest


# -- the image as a file system (ocistore.rootfs, imported when first used) ------------


def unpack(
    store: Store,
    name: str,
    directory: str | Path,
    *,
    rootless: bool = False,
    force: bool = False,
    bundle: bool = False,
    platform: Platform | None = None,
    progress: Progress | None = None,
) -> list[str]:
    """Unpack the image ``name`` into ``directory``, as ``umoci unpack`` does:
    ``directory/rootfs`` is its file system (every path of every layer resolved inside
    it), ``directory/ocistore-unpack.json.gz`` the record ``commit`` compares it with,
    and with ``bundle`` ``directory/config.json`` an OCI runtime config. With
    ``rootless`` every file is the caller's and the image's owner is kept in the
    ``user.rootlesscontainers`` xattr. Returns the warnings (device nodes skipped)."""
    from .rootfs.unpack import unpack as unpack_image

    done = unpack_image(
        store,
        name,
        str(directory),
        rootless=rootless,
        force=force,
        bundle=bundle,
        platform=platform,
        progress=progress,
    )
    return list(done.warnings)


def export(store: Store, name: str, output: str | Path, progress: Progress | None = None) -> int:
    """Write the image ``name``'s flattened file system to ``output`` as one tar (``-``
    for standard output), as ``docker export`` of a new container; how many members."""
    from .rootfs.export import export as export_image

    return export_image(store, name, str(output), progress)


def flatten(store: Store, name: str, progress: Progress | None = None) -> Iterator[Any]:
    """The image ``name``'s flattened file system as it is read: for each member still
    visible, an :class:`ocistore.spec.tarscan.Entry` (``name`` the path, ``meta`` its
    mode, owner, times, xattrs), followed by its data as ``memoryview`` pieces, each
    valid until the next item is asked for. The top layer's members come first."""
    from .rootfs.flatten import flatten as flatten_layers

    return flatten_layers(store, store.layers_of(store.image(name)), progress)


def commit(
    store: Store,
    directory: str | Path,
    reference: str | None = None,
    *,
    message: str | None = None,
    author: str | None = None,
    changes: list[str] | None = None,
    progress: Progress | None = None,
) -> str:
    """Make a new image of what changed in ``directory/rootfs`` since :func:`unpack`
    made it: the base image's layers and one more (whiteouts for what was deleted), as
    ``umoci repack`` does; ``changes`` are Dockerfile instructions applied to its config
    as ``docker commit --change``. Returns the new image's ID."""
    from .rootfs.commit import commit as commit_tree

    return commit_tree(
        store,
        str(directory),
        reference,
        message=message,
        author=author,
        changes_=changes or (),
        progress=progress,
    )


def append(
    store: Store,
    name: str,
    tarballs: list[str],
    reference: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Make a new image of ``name``'s layers and the tarballs (plain, gzip or zstd) as
    more layers, as ``crane append``; returns its ID."""
    from .rootfs.commit import append as append_layers

    return append_layers(store, name, tarballs, reference, progress=progress)


def diff(store: Store, name: str, other: str | None = None) -> list[tuple[str, str]]:
    """What the image ``name``'s top layer changed (or what differs in it from
    ``other``): ``("A"|"C"|"D", "/path")``, sorted by path, as ``podman image diff``."""
    from .rootfs.diff import diff as diff_images

    return diff_images(store, name, other)
