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
:mod:`ocistore.formats` the archive formats, :mod:`ocistore.cli` the command line.
Every error ocistore raises on purpose is an :class:`OcistoreError` whose message names
what it is about.
"""

from __future__ import annotations

import contextlib
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
    "inspect",
    "load",
    "open",
    "parse_platform",
    "parse_reference",
    "pull",
    "push",
    "save",
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
