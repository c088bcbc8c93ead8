"""skopeo's ``dir:`` layout (containers/image's directory transport): reading and writing.

A dir layout is a directory holding one image: ``version`` (exactly ``Directory
Transport Version: 1.1`` and a newline), ``manifest.json`` (the image's manifest, byte
for byte: Docker v2 schema 2 or OCI), and one file per blob named by the hex of its
digest, with no algorithm (``sha512`` blobs too, as containers/image up to today names
them), the config among them; ``signature-N`` files may follow. ``skopeo copy --all`` of a
multi-platform image writes the index as ``manifest.json`` and each instance manifest as
``<hex>.manifest.json``.

Reading (:func:`read_dir_layout`)
---------------------------------

There is one way of turning manifests into images, the OCI layout's walk
(:mod:`ocistore.formats.oci_layout`), with all its checks (media types, platform choice,
limits, digests and sizes of every blob, layers verified while they are staged); the dir
layout is given to it with ``manifest.json`` standing where ``index.json``'s one
descriptor would be (its digest computed from its bytes, its type its own
``mediaType`` or, where it has none, guessed from its fields as containers/image
guesses), blobs found at ``<hex>`` and instance manifests at ``<hex>.manifest.json``.
Messages name the files as the user sees them: ``DIR/manifest.json``, ``DIR/<hex>``,
where a descriptor is (``manifest.json → layers[1]``). ``version`` must be there and say
exactly what skopeo writes. A dir layout has no name for its image (skopeo copies one
only to a destination given a name): it is loaded untagged. Signatures are not read.

Writing (:func:`write_dir_layout`)
----------------------------------

One image, as ``skopeo copy`` to ``dir:`` writes it: the kept manifest byte for byte,
whatever its type (a dir layout takes Docker media types, unlike an OCI layout), else
the OCI manifest an OCI save generates; its config and layer blobs, each verified while
copied from the store and fsynced; ``version`` first and ``manifest.json`` last, so that
a directory a save did not finish has a ``version`` (the next save may replace it) and no
manifest (nothing loads it). A new directory is created (its parent must exist: nothing
is written outside it); an empty one is written into; one that holds a dir layout (its
``version`` says so) is emptied first, as skopeo empties it, stale blobs and signatures
included (``manifest.json`` first); anything else is refused before anything is written.
A failed save removes what it wrote (and the directory, if it made it). Files get the
umask's modes; concurrent ocistore saves to one directory take turns (``flock`` on it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as stat_mod
from pathlib import Path
from typing import Any, Final

from ..errors import InvalidInput, NotFound
from ..progress import SILENT, Progress
from ..spec import mediatypes as mt
from ..spec.descriptor import Descriptor
from ..spec.digest import Digest, ImageID, digest_bytes
from ..spec.limits import MAX_MANIFEST, check_size, load_json
from ..spec.platform import Platform
from ..store import fsutil
from ..store.ingest import ImageSource
from ..store.store import Store
from .oci_layout import OUTPUT_MODE, Blob, _LayoutReader, image_manifest, write_blob
from .reader import ArchiveReader, DirArchive

__all__ = [
    "MANIFEST_FILE",
    "VERSION_BYTES",
    "VERSION_FILE",
    "blob_file",
    "is_dir_layout",
    "read_dir_layout",
    "write_dir_layout",
]

VERSION_FILE: Final = "version"
MANIFEST_FILE: Final = "manifest.json"
#: What containers/image writes into ``version``, and the only version it reads.
VERSION_BYTES: Final = b"Directory Transport Version: 1.1\n"
_VERSION_PREFIX: Final = b"Directory Transport Version:"
#: The largest ``version`` file read to say what it holds.
_VERSION_LIMIT: Final = 1024
_INSTANCE_SUFFIX: Final = ".manifest.json"
_MANIFEST_KINDS: Final = mt.INDEX_TYPES | mt.MANIFEST_TYPES | mt.DOCKER_SCHEMA1


def blob_file(digest: Digest) -> str:
    """The file of a blob in a dir layout: its digest's hex, whatever the algorithm."""
    return digest.hex


# -- reading -----------------------------------------------------------------------------


def _head(archive: ArchiveReader, name: str, n: int) -> bytes | None:
    """The first ``n`` bytes of a regular file of the archive, or ``None``."""
    try:
        if not archive.exists(name) or archive.is_dir(name):
            return None
        with archive.open(name) as f:
            return f.read(n)
    except (InvalidInput, OSError):
        return None  # the format's reader says what is wrong with it


def is_dir_layout(archive: ArchiveReader) -> bool:
    """Whether the archive is a dir layout: a ``version`` file saying it is one, or a
    ``manifest.json`` that is a JSON object (a docker-archive's is a list).

    The rest (``version`` exactly as skopeo writes it, the manifest) is checked by
    :func:`read_dir_layout`, so that a damaged layout gets an error saying so rather
    than "not an archive"."""
    version = _head(archive, VERSION_FILE, len(_VERSION_PREFIX))
    if version is not None and version.startswith(_VERSION_PREFIX):
        return True
    manifest = _head(archive, MANIFEST_FILE, 4096)
    return manifest is not None and manifest.lstrip(b" \t\r\n").startswith(b"{")


class _DirReader(_LayoutReader):
    """The OCI layout's walk, over a dir layout's files and naming them."""

    def __init__(self, archive: ArchiveReader, platform: Platform | None) -> None:
        super().__init__(archive, platform)
        self._in_dir = isinstance(archive, DirArchive)
        self._root: Digest | None = None
        self._root_bytes = b""

    def _file(self, path: str) -> str:
        return os.path.join(self.name, path) if self._in_dir else f"{self.name}: {path}"

    def _member(self, path: str) -> str:
        return self._file(path)

    def _here(self, desc: Descriptor) -> str:
        path = self._path(desc)
        if desc.where == path:  # manifest.json itself: where it is, is what it is
            return self._file(path)
        return super()._here(desc)

    def _index_at(self, desc: Descriptor) -> str:
        return self._here(desc)

    def _path(self, desc: Descriptor) -> str:
        if desc.digest == self._root:
            return MANIFEST_FILE
        name = blob_file(desc.digest)
        if desc.media_type in _MANIFEST_KINDS:
            return name + _INSTANCE_SUFFIX
        if desc.media_type in mt.LAYER_TYPES or desc.media_type in mt.CONFIG_TYPES:
            return name
        # A descriptor of another type (or none) is looked at if it is a document.
        instance = name + _INSTANCE_SUFFIX
        return instance if self.archive.exists(instance) else name

    def _read_blob(self, desc: Descriptor, what: str, limit: int = MAX_MANIFEST) -> bytes:
        if desc.digest == self._root and desc.size == len(self._root_bytes):
            return self._root_bytes  # read and hashed once, for its digest
        return super()._read_blob(desc, what, limit)

    def _missing(self, name: str, what: str) -> InvalidInput:
        """The error for a file of the layout that is not there (or not readable)."""
        try:
            self.archive.size(name)
        except InvalidInput as e:
            if "missing" not in str(e):  # a symlink out of the layout, say: say so
                return InvalidInput(f"{self._file(name)} cannot be read: {e}")
        return InvalidInput(f"{self._file(name)} is missing ({what})")

    def _check_version(self) -> None:
        expected = VERSION_BYTES.decode()
        if not self.archive.exists(VERSION_FILE):
            raise self._missing(VERSION_FILE, f"a dir layout has one, saying {expected.strip()!r}")
        size = self.archive.size(VERSION_FILE)
        if size > _VERSION_LIMIT:
            raise InvalidInput(
                f"{self._file(VERSION_FILE)}: {size} bytes, not a dir layout's version "
                f"({expected.strip()!r})"
            )
        with self.archive.open(VERSION_FILE) as f:
            data = f.read(_VERSION_LIMIT + 1)
        if data != VERSION_BYTES:
            text = data.decode("utf-8", "replace")
            raise InvalidInput(
                f"{self._file(VERSION_FILE)}: unsupported version {text[:80]!r}; ocistore "
                f"reads {expected!r}, what skopeo's dir: transport writes"
            )

    def _guess_type(self, doc: dict[str, Any]) -> str:
        """The manifest's type: its own ``mediaType``, else what its fields make it (as
        containers/image's ``GuessMIMEType``)."""
        here = self._file(MANIFEST_FILE)
        inner = doc.get("mediaType")
        if inner is not None and not isinstance(inner, str):
            raise InvalidInput(f"{here}: mediaType is not a string")
        if inner:
            if inner not in _MANIFEST_KINDS:
                raise InvalidInput(
                    f"{here}: mediaType {inner!r} is neither an image manifest nor an index"
                )
            return inner
        if doc.get("schemaVersion") == 1:
            raise InvalidInput(f"{here}: Docker image manifest schema 1 is not supported")
        if "manifests" in doc:
            return mt.OCI_INDEX
        config = doc.get("config")
        if isinstance(config, dict):
            docker = config.get("mediaType") == mt.DOCKER_CONFIG
            return mt.DOCKER_MANIFEST if docker else mt.OCI_MANIFEST
        raise InvalidInput(
            f"{here}: neither an image manifest nor an index (no mediaType, config or manifests)"
        )

    def read(self) -> list[ImageSource]:
        self._check_version()
        if not self.archive.exists(MANIFEST_FILE):
            raise self._missing(MANIFEST_FILE, "a dir layout keeps its image's manifest there")
        here = self._file(MANIFEST_FILE)
        check_size(self.archive.size(MANIFEST_FILE), MAX_MANIFEST, here, "a manifest")
        with self.archive.open(MANIFEST_FILE) as f:
            raw = f.read(MAX_MANIFEST + 1)
        doc = load_json(raw, here, MAX_MANIFEST, "a manifest")
        if not isinstance(doc, dict):
            raise InvalidInput(f"{here}: not an image manifest or index (a JSON object)")
        media_type = self._guess_type(doc)
        self._root = digest_bytes(raw)
        self._root_bytes = raw
        return self.read_root(Descriptor(media_type, self._root, len(raw), {}, None, MANIFEST_FILE))


def read_dir_layout(archive: ArchiveReader, platform: Platform | None = None) -> list[ImageSource]:
    """The image of a dir layout (the one for ``platform``, default this machine's, if
    ``manifest.json`` is an index), untagged, ready for ``Store.add_images``; see the
    module documentation for the rules."""
    return _DirReader(archive, platform).read()


# -- writing -----------------------------------------------------------------------------


def _one_image(store: Store, names: list[str]) -> ImageID:
    ids = list(dict.fromkeys(image_id for image_id, _ in store.select(names)))
    if len(ids) != 1:
        shown = ", ".join(i.short() for i in ids)
        raise InvalidInput(
            f"the dir format holds one image, and {' '.join(names)} select {len(ids)} "
            f"({shown}): save each to a directory of its own"
        )
    return ids[0]


def _read_version(dest: Path) -> bytes | None:
    """What ``DIR/version`` holds, if it is a small regular file (never a symlink)."""
    try:
        fd = os.open(dest / VERSION_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(_VERSION_LIMIT)


def _remove(path: str, is_dir: bool) -> None:
    if is_dir:
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _empty(dest: Path) -> bool:
    """Make ``dest`` empty for a save: it is empty, or it holds a dir layout, which is
    emptied (``manifest.json`` first: from then on it holds no image), as skopeo does;
    ``True`` if it held one. Anything else is refused, and left as it is."""
    with os.scandir(dest) as it:
        entries = [(e.name, e.path, e.is_dir(follow_symlinks=False)) for e in it]
    if not entries:
        return False
    if _read_version(dest) != VERSION_BYTES:
        raise InvalidInput(
            f"{dest}: exists and is not a dir layout (no {VERSION_FILE} file saying "
            f"{VERSION_BYTES.decode().strip()!r}); refusing to write into it"
        )
    entries.sort(key=lambda e: e[0] != MANIFEST_FILE)
    for name, path, is_dir in entries:
        if name != VERSION_FILE:
            _remove(path, is_dir)
    return True


def _fill(store: Store, dest: Path, raw: bytes, blobs: list[Blob], progress: Progress) -> None:
    """``version``, the blobs, then ``manifest.json``: each file whole and durable."""
    fsutil.atomic_write(dest / VERSION_FILE, VERSION_BYTES, None, OUTPUT_MODE)
    unique = {b.digest: b for b in blobs}
    for digest in sorted(unique, key=blob_file):
        write_blob(store, dest / blob_file(digest), unique[digest], progress)
    fsutil.atomic_write(dest / MANIFEST_FILE, raw, None, OUTPUT_MODE)


def _undo(dest: Path, created: bool, was_layout: bool) -> None:
    """Remove what a failed save wrote: the directory it made, else its files (a
    ``version`` that was there stays, so the directory is still a dir layout)."""
    if created:
        return  # the whole directory goes
    with contextlib.suppress(OSError):
        with os.scandir(dest) as it:
            entries = [(e.name, e.path, e.is_dir(follow_symlinks=False)) for e in it]
        for name, path, is_dir in entries:
            if not (was_layout and name == VERSION_FILE):
                _remove(path, is_dir)


def write_dir_layout(
    store: Store, names: list[str], dest: Path, progress: Progress | None = None
) -> None:
    """Write the one image ``names`` select as a dir layout into the directory ``dest``
    (new, empty, or holding a dir layout, which is replaced); see the module
    documentation. Several images are refused, before anything is written."""
    progress = progress or SILENT
    dest = Path(dest)
    image_id = _one_image(store, names)
    manifest = image_manifest(store, image_id, as_oci=False)  # checked before writing
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"{dest}: exists and is not a directory (a dir layout is one)")
    created = False
    if not dest.exists():
        parent = dest.parent
        if not parent.is_dir():
            raise NotFound(f"{dest}: parent directory {parent} does not exist")
        try:
            dest.mkdir(mode=0o775)  # less the umask, as the layout's files
            created = True
        except FileExistsError:
            pass  # made meanwhile: written into (or refused) as any existing directory
    try:
        with fsutil.FileLock(dest, directory=True).exclusive():
            was_layout = _empty(dest)
            try:
                _fill(store, dest, manifest.raw, manifest.blobs, progress)
            except BaseException:
                _undo(dest, created, was_layout)
                raise
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
