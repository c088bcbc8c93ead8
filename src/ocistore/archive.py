"""What every archive format shares: reading an archive safely, loading images into the
store in one publish step, and writing deterministic tar archives.

Reading. :func:`open_archive` gives an :class:`ArchiveReader` over a tar file (plain,
gzip or zstd; standard input is spooled to the store's ``tmp/`` first) or a directory.
Entry names are normalized (``./a`` is ``a``); a name that is absolute or climbs out with
``..`` is refused, naming the entry. A symlink is followed only while it stays inside the
archive and ends on a regular file, as ``docker load`` does with the links ``docker save``
writes for repeated layers; any other link where a file is expected is refused.

Loading. :func:`load_images` takes what a format found (configs, layer sources, tags,
manifests), stages every layer in ``tmp/`` outside the lock (several at once: hashing and
decompression release the GIL), checks every digest, size and DiffID, and only then
publishes everything under one lock, bottom-up. Bad input is refused before anything
becomes visible, and staged files are removed: the store is as it was.

Writing. :class:`TarWriter` streams a tar with fixed owners, modes and times, so the same
images give the same bytes; :func:`output_file` writes ``-o PATH`` through a temporary
file so a failed save leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import stat as stat_mod
import sys
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from . import fsutil
from .compression import Compression, PeekableReader, decompressed_reader, detect
from .digest import CHUNK, DiffID, Digest, ImageID
from .errors import InvalidInput, NotFound, OcistoreError
from .image import ImageConfig, parse_config
from .layers import StagedLayer, make_chain_id, stage_layer
from .progress import Progress
from .reference import Reference

#: The most a JSON document inside an archive may weigh (manifests, configs, indexes).
MAX_JSON = 64 << 20
_MAX_LINKS = 16


class ArchiveReader(Protocol):
    #: The archive's path (or ``-``), for messages.
    name: str

    def names(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def is_dir(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def open(self, name: str) -> IO[bytes]: ...
    #: The member a name ends on once in-archive symlinks are followed (same bytes, same name).
    def resolve(self, name: str) -> str: ...
    def close(self) -> None: ...


def clean_name(archive: str, name: str) -> str:
    """A member name normalized; refuses absolute names and names with ``..``."""
    if "\x00" in name:
        raise InvalidInput(f"{archive}: entry {name!r} has a NUL byte in its name")
    if name.startswith("/"):
        raise InvalidInput(f"{archive}: entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"{archive}: entry {name!r} climbs out of the archive with '..'")
    return "/".join(parts)


def read_json(archive: ArchiveReader, name: str) -> Any:
    """A JSON document from the archive; errors name the archive and the entry."""
    size = archive.size(name)
    if size > MAX_JSON:
        raise InvalidInput(
            f"{archive.name}: {name} is too large for a JSON document ({size} bytes)"
        )
    with archive.open(name) as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{archive.name}: {name} is not valid JSON: {e}") from None


def read_bytes(archive: ArchiveReader, name: str) -> bytes:
    size = archive.size(name)
    if size > MAX_JSON:
        raise InvalidInput(f"{archive.name}: {name} is too large ({size} bytes)")
    with archive.open(name) as f:
        return f.read()


@dataclass
class _Member:
    kind: str  # "file", "dir", "link"
    offset: int = 0
    size: int = 0
    target: str = ""


class _Window(io.RawIOBase):
    """A read-only window onto ``size`` bytes of a file from ``offset``."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf)
        if len(view) > self._left:
            view = view[: self._left]
        n = self._f.readinto(view) or 0
        if n == 0:
            raise InvalidInput(f"{self._f.name}: archive is truncated")
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class TarArchive:
    """A tar archive on disk, indexed once; members are read in place."""

    def __init__(self, path: Path, display: str, cleanup: bool = False) -> None:
        self.path = path
        self.name = display
        self._cleanup = cleanup
        self._members: dict[str, _Member] = {}
        self._index()

    def _index(self) -> None:
        size = self.path.stat().st_size
        try:
            with tarfile.open(self.path, mode="r:") as tf:
                for info in tf:
                    name = clean_name(self.name, info.name)
                    if not name:
                        continue
                    if info.isreg():
                        if info.offset_data + info.size > size:
                            raise InvalidInput(f"{self.name}: archive is truncated in {name}")
                        self._members[name] = _Member("file", info.offset_data, info.size)
                    elif info.isdir():
                        self._members[name] = _Member("dir")
                    elif info.issym():
                        self._members[name] = _Member("link", target=info.linkname)
                    elif info.islnk():
                        target = clean_name(self.name, info.linkname)
                        orig = self._members.get(target)
                        if orig is None or orig.kind != "file":
                            raise InvalidInput(
                                f"{self.name}: hard link {name} points at missing {target}"
                            )
                        self._members[name] = orig
                    # devices, fifos and the like carry nothing an image format needs
                end = tf.offset
        except tarfile.ReadError as e:
            if not self._members:
                raise InvalidInput(f"{self.name}: not a tar archive ({e})") from None
            raise InvalidInput(f"{self.name}: archive is truncated or damaged ({e})") from None
        except EOFError:
            raise InvalidInput(f"{self.name}: archive is truncated") from None
        # tarfile stops quietly at a header cut short or damaged after the first member;
        # a whole archive ends with a zero block there (the end-of-archive marker).
        with open(self.path, "rb") as f:
            f.seek(end)
            if f.read(512) != bytes(512):
                raise InvalidInput(
                    f"{self.name}: archive is truncated or damaged at byte {end} "
                    "(no end-of-archive marker)"
                )
        for name in list(self._members):  # implied parent directories
            parent = posixpath.dirname(name)
            while parent and parent not in self._members:
                self._members[parent] = _Member("dir")
                parent = posixpath.dirname(parent)

    def _resolve(self, name: str) -> tuple[str, _Member]:
        cur = clean_name(self.name, name)
        for _ in range(_MAX_LINKS):
            m = self._members.get(cur)
            if m is None:
                raise InvalidInput(f"{self.name}: {name} is missing from the archive")
            if m.kind != "link":
                return cur, m
            target = m.target
            if target.startswith("/"):
                raise InvalidInput(f"{self.name}: {cur} is a symlink out of the archive ({target})")
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(cur), target))
            if joined == ".." or joined.startswith("../"):
                raise InvalidInput(f"{self.name}: {cur} is a symlink out of the archive ({target})")
            cur = joined
        raise InvalidInput(f"{self.name}: {name}: too many levels of symlinks")

    def names(self) -> list[str]:
        return sorted(self._members)

    def resolve(self, name: str) -> str:
        return self._resolve(name)[0]

    def exists(self, name: str) -> bool:
        try:
            self._resolve(name)
        except InvalidInput:
            return False
        return True

    def is_dir(self, name: str) -> bool:
        try:
            return self._resolve(name)[1].kind == "dir"
        except InvalidInput:
            return False

    def size(self, name: str) -> int:
        resolved, m = self._resolve(name)
        if m.kind != "file":
            raise InvalidInput(f"{self.name}: {resolved} is not a regular file")
        return m.size

    def open(self, name: str) -> IO[bytes]:
        resolved, m = self._resolve(name)
        if m.kind != "file":
            raise InvalidInput(f"{self.name}: {resolved} is not a regular file")
        return io.BufferedReader(_Window(str(self.path), m.offset, m.size), CHUNK)

    def close(self) -> None:
        if self._cleanup:
            self.path.unlink(missing_ok=True)


class DirArchive:
    """A directory (an OCI layout, or an unpacked docker-archive)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self._real = os.path.realpath(path)

    def _path(self, name: str) -> str:
        clean = clean_name(self.name, name)
        full = os.path.join(self.path, clean)
        real = os.path.realpath(full)
        if real != self._real and not real.startswith(self._real + os.sep):
            raise InvalidInput(f"{self.name}: {clean} is a symlink out of the layout")
        return real

    def names(self) -> list[str]:
        out = []
        for dirpath, dirs, files in os.walk(self.path):
            rel = os.path.relpath(dirpath, self.path)
            for n in dirs + files:
                out.append(n if rel == "." else f"{rel}/{n}")
        return sorted(out)

    def exists(self, name: str) -> bool:
        try:
            return os.path.exists(self._path(name))
        except InvalidInput:
            return False

    def is_dir(self, name: str) -> bool:
        try:
            return os.path.isdir(self._path(name))
        except InvalidInput:
            return False

    def resolve(self, name: str) -> str:
        real = self._path(name)
        return "" if real == self._real else os.path.relpath(real, self._real)

    def _stat(self, name: str) -> tuple[str, os.stat_result]:
        p = self._path(name)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise InvalidInput(f"{self.name}: {name} is missing") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise InvalidInput(f"{self.name}: {name} is not a regular file")
        return p, st

    def size(self, name: str) -> int:
        return self._stat(name)[1].st_size

    def open(self, name: str) -> IO[bytes]:
        p, _ = self._stat(name)
        return open(p, "rb", buffering=CHUNK)

    def close(self) -> None:
        pass


def _spool(stream: IO[bytes], tmpdir: Path) -> Path:
    tmp = fsutil.TempFile(tmpdir, ".archive")
    try:
        shutil.copyfileobj(stream, tmp.file, CHUNK)
        tmp.file.close()
    except BaseException:
        tmp.discard()
        raise
    return tmp.path


def open_archive(source: str | Path, tmpdir: Path) -> ArchiveReader:
    """Open a directory or a tar (possibly gzip or zstd compressed; ``-`` is stdin)."""
    display = str(source)
    if display != "-" and Path(source).is_dir():
        return DirArchive(Path(source))
    if display == "-":
        path = _spool(sys.stdin.buffer, tmpdir)
        cleanup = True
    else:
        path = Path(source)
        if not path.exists():
            raise NotFound(f"{display}: no such file or directory")
        cleanup = False
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        compression = detect(head, display)
        if not head:
            raise InvalidInput(f"{display}: empty file, not an archive")
        if compression is not Compression.NONE:
            with open(path, "rb") as f:
                reader = decompressed_reader(PeekableReader(f), compression)  # type: ignore[arg-type]
                try:
                    plain = _spool(reader, tmpdir)
                except OcistoreError:
                    raise
                except Exception as e:  # a damaged gzip or zstd stream
                    raise InvalidInput(
                        f"{display}: corrupt {compression.value} data: {e}"
                    ) from None
            if cleanup:
                path.unlink(missing_ok=True)
            path, cleanup = plain, True
        return TarArchive(path, display, cleanup)
    except BaseException:
        if cleanup:
            path.unlink(missing_ok=True)
        raise


# -- loading ---------------------------------------------------------------------------


@dataclass
class LayerSource:
    """Where one layer of an image comes from, and what it must hash to."""

    open: Callable[[], IO[bytes]]
    what: str
    blob_digest: Digest | None = None
    blob_size: int | None = None
    #: A key that identifies the same bytes across images (so they are staged once).
    key: str = ""


@dataclass
class ImageSource:
    """One image as a format found it."""

    config: bytes
    what: str
    layers: list[LayerSource]
    tags: list[Reference] = field(default_factory=list)
    #: An OCI/Docker manifest to keep with the image, so a later save can re-emit it.
    manifest: bytes | None = None
    #: Index into the list given to :func:`load_images` of this image's parent.
    parent: int | None = None


@dataclass(frozen=True)
class LoadedImage:
    id: ImageID
    tags: tuple[Reference, ...]


def _check_layer_count(src: ImageSource, cfg: ImageConfig) -> None:
    if len(src.layers) != len(cfg.diff_ids):
        raise InvalidInput(
            f"{src.what}: {len(src.layers)} layers listed but the config has "
            f"{len(cfg.diff_ids)} diff IDs (rootfs.diff_ids)"
        )


def load_images(
    store: Any,
    sources: list[ImageSource],
    progress: Progress | None = None,
    jobs: int | None = None,
) -> list[LoadedImage]:
    """Load images into ``store`` (an :class:`ocistore.store.Store`) in one publish step."""
    progress = progress or Progress(False)
    configs: list[ImageConfig] = []
    for src in sources:
        cfg = parse_config(src.config, f"{src.what}: config")
        _check_layer_count(src, cfg)
        configs.append(cfg)

    # Which layer bytes must be read: a layer is skipped when its chain is stored and the
    # blob the image refers to (if any) is there too. Equal sources are read once.
    wanted: dict[str, tuple[LayerSource, DiffID]] = {}
    for src, cfg in zip(sources, configs, strict=True):
        for layer, diff_id, chain in zip(src.layers, cfg.diff_ids, cfg.chain_ids, strict=True):
            have_chain = store.layers.exists(chain)
            have_blob = layer.blob_digest is None or store.content.exists(layer.blob_digest)
            if have_chain and have_blob:
                continue
            key = layer.key or layer.blob_digest or layer.what
            wanted.setdefault(key, (layer, diff_id))

    staged: dict[str, StagedLayer] = {}

    def stage(key: str) -> tuple[str, StagedLayer]:
        layer, diff_id = wanted[key]
        task = progress.task(layer.what, layer.blob_size)
        with layer.open() as f:
            s = stage_layer(
                f,
                store.content,
                what=layer.what,
                expected_blob=layer.blob_digest,
                expected_blob_size=layer.blob_size,
                expected_diff_id=diff_id,
                progress=task.update,
            )
        task.finish()
        return key, s

    try:
        workers = max(1, min(jobs or (os.cpu_count() or 1), len(wanted) or 1))
        if workers == 1:
            for key in wanted:
                k, s = stage(key)
                staged[k] = s
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(stage, key) for key in wanted]
                errors: list[BaseException] = []
                for fut in futures:
                    try:
                        k, s = fut.result()
                        staged[k] = s
                    except BaseException as e:
                        errors.append(e)
                if errors:
                    raise errors[0]
        return _publish(store, sources, configs, staged)
    finally:
        for s in staged.values():
            s.discard()


def _publish(
    store: Any,
    sources: list[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[LoadedImage]:
    loaded: list[LoadedImage] = []
    with store.transaction():
        ids: list[ImageID] = []
        for src, cfg in zip(sources, configs, strict=True):
            parent_chain = None
            extra_blobs: list[Digest] = []
            for layer, diff_id in zip(src.layers, cfg.diff_ids, strict=True):
                chain = make_chain_id(parent_chain, diff_id)
                key = layer.key or layer.blob_digest or layer.what
                s = staged.get(key)
                # A staged layer may sit at several places (the same tar in two chains): its
                # blob is committed by the first, and the later ones point at that blob.
                if s is not None and (s.blob.path.exists() or store.content.exists(s.blob.digest)):
                    if store.layers.exists(chain):
                        stored = store.layers.get(chain)
                        if stored.blob.digest != s.blob.digest:
                            # Same layer, other blob: keep the blob this image came with.
                            store.content.commit(s.blob)
                            extra_blobs.append(s.blob.digest)
                    else:
                        store.layers.publish(s, parent_chain)
                elif not store.layers.exists(chain):
                    raise NotFound(f"{layer.what}: layer {chain} was not staged")  # a bug
                stored_blob = store.layers.get(chain).blob.digest
                if layer.blob_digest and layer.blob_digest != stored_blob:
                    extra_blobs.append(layer.blob_digest)
                parent_chain = chain
            image_id = store.images.create(cfg)
            if src.manifest is not None:
                manifest_digest = store.content.write(src.manifest)
                store.backend.set_metadata(image_id, "manifest", manifest_digest.encode())
                extra_blobs.append(manifest_digest)
            if extra_blobs:
                store.images.set_blobs(image_id, extra_blobs)
            ids.append(image_id)
        for i, src in enumerate(sources):
            if src.parent is not None and ids[src.parent] != ids[i]:
                store.images.set_parent(ids[i], ids[src.parent])
        for image_id, src in zip(ids, sources, strict=True):
            for ref in src.tags:
                if ref.digest is not None:
                    store.references.add_digest(ref, image_id, force=False)
                else:
                    store.references.add_tag(ref, image_id, force=True)
            loaded.append(LoadedImage(image_id, tuple(src.tags)))
    return loaded


# -- writing ---------------------------------------------------------------------------


class TarWriter:
    """Streams a deterministic tar: owner 0:0, mtime 0, 0644 files, 0755 directories."""

    def __init__(self, out: IO[bytes]) -> None:
        self._tf = tarfile.open(  # noqa: SIM115
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK
        )
        self._dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_dir(self, name: str) -> None:
        name = name.rstrip("/")
        if name in self._dirs:
            return
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)
        self._dirs.add(name)
        self._tf.addfile(self._info(name, tarfile.DIRTYPE, mode=0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)
        self._tf.addfile(self._info(name, tarfile.REGTYPE, len(data)), io.BytesIO(data))

    def add_stream(self, name: str, stream: IO[bytes], size: int) -> None:
        """Add ``size`` bytes from ``stream``; a stream of another length is an error."""
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)
        counted = _Exact(stream, size, name)
        self._tf.addfile(self._info(name, tarfile.REGTYPE, size), counted)
        counted.finish()

    def add_symlink(self, name: str, target: str) -> None:
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)
        info = self._info(name, tarfile.SYMTYPE, mode=0o777)
        info.linkname = target
        self._tf.addfile(info)

    def close(self) -> None:
        self._tf.close()


class _Exact:
    """Reads exactly ``size`` bytes from a stream and then drains it (to run its checks)."""

    def __init__(self, stream: IO[bytes], size: int, name: str) -> None:
        self._stream = stream
        self._left = size
        self._name = name

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._stream.read(want)
        if not data:
            raise OcistoreError(f"{self._name}: stored content is shorter than recorded")
        self._left -= len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        if self._stream.read(1):
            raise OcistoreError(f"{self._name}: stored content is longer than recorded")


@contextlib.contextmanager
def output_file(path: str, tmpdir: Path) -> Iterator[IO[bytes]]:
    """``-`` is stdout; a path is written whole or not at all (temporary file, rename)."""
    if path == "-":
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    dest = Path(path)
    if dest.is_dir():
        raise InvalidInput(f"{path}: is a directory")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb", buffering=CHUNK) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
