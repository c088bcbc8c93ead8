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

Writing. :class:`TarWriter` writes a tar with fixed owners, modes and times, so the same
images give the same bytes; :func:`output_file` writes ``-o PATH`` through a temporary
file so a failed save leaves nothing behind. Into that file every member's place is known
in advance, so large members (layers, blobs) are read, checked, decompressed and written
by several threads at once, each at its own offset; into a pipe they are written in
order, with a second thread reading and checking a few MiB ahead.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import queue
import shutil
import stat as stat_mod
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, Protocol

from . import fsutil
from .compression import Compression, decompressed_reader, detect
from .digest import CHUNK, ChainID, DiffID, Digest, ImageID, new_hasher
from .errors import Conflict, DigestMismatch, InvalidInput, NotFound, OcistoreError
from .image import ImageConfig, parse_config
from .layers import StagedLayer, stage_layer
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


class _Member(NamedTuple):
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
            if not head:
                raise InvalidInput(f"{display}: empty file, not an archive")
            compression = detect(head, display)
            if compression is not Compression.NONE:
                f.seek(0)
                try:
                    plain = _spool(decompressed_reader(f, compression, display), tmpdir)
                except OcistoreError:
                    raise
                except Exception as e:  # a damaged gzip or zstd stream
                    raise InvalidInput(
                        f"{display}: corrupt {compression.value} data: {e}"
                    ) from None
        if compression is not Compression.NONE:
            if cleanup:
                path.unlink(missing_ok=True)
            path, cleanup = plain, True
        return TarArchive(path, display, cleanup)
    except BaseException:
        if cleanup:
            path.unlink(missing_ok=True)
        raise


# -- loading ---------------------------------------------------------------------------


class LayerSource(NamedTuple):
    """Where one layer of an image comes from, and what it must hash to."""

    open: Callable[[], IO[bytes]]
    what: str
    blob_digest: Digest | None = None
    blob_size: int | None = None
    #: A key that identifies the same bytes across images (so they are staged once).
    key: str = ""
    #: How many bytes reading gives, when known but not promised by a digest (a member's
    #: size in a tar): for progress, and to stage the largest layers first. Not checked.
    read_size: int | None = None

    @property
    def stage_key(self) -> str:
        """What identifies the bytes to stage: equal layers of two images are read once."""
        return self.key or self.blob_digest or self.what

    @property
    def expected_read(self) -> int | None:
        return self.blob_size if self.blob_size is not None else self.read_size


class ImageSource:
    """One image as a format found it."""

    __slots__ = ("config", "layers", "manifest", "parent", "tags", "what")

    def __init__(
        self,
        config: bytes,
        what: str,
        layers: list[LayerSource],
        tags: list[Reference] | None = None,
        manifest: bytes | None = None,
        parent: int | None = None,
    ) -> None:
        self.config = config
        self.what = what
        self.layers = layers
        self.tags: list[Reference] = [] if tags is None else tags
        #: An OCI/Docker manifest to keep with the image, so a later save can re-emit it.
        self.manifest = manifest
        #: Index into the list given to :func:`load_images` of this image's parent.
        self.parent = parent

    def __repr__(self) -> str:
        return f"ImageSource({self.what!r})"


class LoadedImage(NamedTuple):
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
            wanted.setdefault(layer.stage_key, (layer, diff_id))

    staged: dict[str, StagedLayer] = {}

    def stage(key: str, check: Callable[[], None]) -> tuple[str, StagedLayer]:
        layer, diff_id = wanted[key]
        task = progress.task(layer.what, layer.expected_read)

        def update(done: int) -> None:
            check()
            task.update(done)

        with layer.open() as f:
            s = stage_layer(
                f,
                store.content,
                what=layer.what,
                expected_blob=layer.blob_digest,
                expected_blob_size=layer.blob_size,
                expected_diff_id=diff_id,
                progress=update,
            )
        task.finish()
        return key, s

    try:
        _stage_all(stage, wanted, staged, jobs)
        return _publish(store, sources, configs, staged)
    finally:
        for s in staged.values():
            s.discard()


class _Abandoned(Exception):
    """Raised inside a staging thread once the load was interrupted."""


def _stage_all(
    stage: Callable[[str, Callable[[], None]], tuple[str, StagedLayer]],
    wanted: dict[str, tuple[LayerSource, DiffID]],
    staged: dict[str, StagedLayer],
    jobs: int | None,
) -> None:
    """Stage every wanted layer into ``staged``, several at once, largest first.

    Largest first, so that the last layer to finish is a small one rather than a large
    one started late on a worker that is otherwise done. After a failure no new layer is
    started; what was staged stays in ``staged`` for the caller to discard, and the
    first failure, in that order, is raised. ``stage`` calls the function it is given as
    it goes: after an interrupt (Ctrl-C) that function raises, so layers being staged
    stop and remove their files before the interrupt goes on up.
    """
    order = sorted(wanted, key=lambda k: wanted[k][0].expected_read or 0, reverse=True)
    workers = max(1, min(jobs or (os.cpu_count() or 1), len(order) or 1))
    if workers == 1:
        for key in order:
            k, s = stage(key, lambda: None)
            staged[k] = s
        return
    todo = iter(order)
    lock = threading.Lock()
    errors: list[tuple[int, BaseException]] = []
    position = {key: i for i, key in enumerate(order)}
    abandoned = threading.Event()
    # Threads still working, plus one for the starting below (so that a thread done
    # early does not look like the last one).
    running = [1]
    finished = threading.Event()

    def done() -> None:
        with lock:
            running[0] -= 1
            if not running[0]:
                finished.set()

    def check() -> None:
        if abandoned.is_set():
            raise _Abandoned

    def take() -> str | None:
        with lock:
            return None if errors or abandoned.is_set() else next(todo, None)

    def work() -> None:
        try:
            while (key := take()) is not None:
                try:
                    k, s = stage(key, check)
                except BaseException as e:
                    with lock:
                        errors.append((position[key], e))
                    return
                with lock:
                    if abandoned.is_set():
                        s.discard()
                        return
                    staged[k] = s
        finally:
            done()

    # Waited for with an event, not Thread.join: in Python 3.11 a join cut short by
    # Ctrl-C takes its thread for finished, and the interpreter would then exit without
    # waiting for it to remove its staged file.
    threads: list[threading.Thread] = []
    try:
        try:
            for i in range(workers):
                thread = threading.Thread(target=work, name=f"stage-{i}")
                with lock:
                    running[0] += 1
                try:
                    thread.start()
                except Exception:  # it could not start, so it will not count itself out
                    done()
                    raise
                threads.append(thread)
        finally:
            done()
        finished.wait()
    except BaseException:
        # Interrupted (or a thread could not start): the layers in flight stop at their
        # next piece and remove their files; nothing is left running behind the caller.
        abandoned.set()
        while not finished.wait(0.05) and any(t.is_alive() for t in threads):
            pass
        raise
    if errors:
        raise min(errors, key=lambda item: item[0])[1]


def _plan(
    sources: list[ImageSource], configs: list[ImageConfig]
) -> Iterator[tuple[int, LayerSource, ChainID, ChainID | None]]:
    """Each layer of each image, with its chain and its parent's chain."""
    for i, (src, cfg) in enumerate(zip(sources, configs, strict=True)):
        parent: ChainID | None = None
        for layer, chain in zip(src.layers, cfg.chain_ids, strict=True):
            yield i, layer, chain, parent
            parent = chain


def _staged(layer: LayerSource, staged: dict[str, StagedLayer]) -> StagedLayer | None:
    return staged.get(layer.stage_key)


def _publish(
    store: Any,
    sources: list[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[LoadedImage]:
    tags = [(ref, cfg.id) for src, cfg in zip(sources, configs, strict=True) for ref in src.tags]
    with store.lock.exclusive():
        # Under the lock, and before the transaction marks the index dirty, refuse what
        # would fail half-way: a name that cannot be set, or a layer that was not read
        # because the store had it, and that is gone since.
        store.references.add_all(tags, force_tags=True, check_only=True)
        for _, layer, chain, _ in _plan(sources, configs):
            if _staged(layer, staged) is None and not store.layers.exists(chain):
                raise Conflict(
                    f"{layer.what}: layer {chain} was removed from the store while "
                    "loading; load again"
                )
        with store.transaction():
            ids = _publish_images(store, sources, configs, staged)
            store.references.add_all(tags, force_tags=True)
    return [LoadedImage(i, tuple(src.tags)) for i, src in zip(ids, sources, strict=True)]


def _publish_images(
    store: Any,
    sources: list[ImageSource],
    configs: list[ImageConfig],
    staged: dict[str, StagedLayer],
) -> list[ImageID]:
    """Layers, then images, then parents (the caller holds the transaction)."""
    extra_blobs: list[list[Digest]] = [[] for _ in sources]
    for i, layer, chain, parent in _plan(sources, configs):
        s = _staged(layer, staged)
        # A staged layer may sit at several places (the same tar in two chains): its
        # blob is committed by the first, and the later ones point at that blob.
        if s is not None and (s.blob.path.exists() or store.content.exists(s.blob.digest)):
            if not store.layers.exists(chain):
                store.layers.publish(s, parent)
            elif store.layers.get(chain).blob.digest != s.blob.digest:
                # Same layer, other blob: keep the blob this image came with.
                store.content.commit(s.blob)
                extra_blobs[i].append(s.blob.digest)
        stored_blob = store.layers.get(chain).blob.digest
        if layer.blob_digest and layer.blob_digest != stored_blob:
            extra_blobs[i].append(layer.blob_digest)
    ids: list[ImageID] = []
    for src, cfg, blobs in zip(sources, configs, extra_blobs, strict=True):
        image_id = store.images.create(cfg)
        if src.manifest is not None:
            manifest_digest = store.content.write(src.manifest)
            store.backend.set_metadata(image_id, "manifest", manifest_digest.encode())
            blobs.append(manifest_digest)
        if blobs:
            store.images.set_blobs(image_id, blobs)
        ids.append(image_id)
    for i, src in enumerate(sources):
        if src.parent is not None and ids[src.parent] != ids[i]:
            store.images.set_parent(ids[i], ids[src.parent])
    return ids


# -- writing ---------------------------------------------------------------------------

#: tar's block: every header and every member's data is padded to a multiple of it.
_BLOCK: Final = 512
#: tar's record: the archive is padded to a multiple of it (20 blocks, as tarfile writes).
_RECORD: Final = 20 * _BLOCK
#: The most threads that fill the members of one output file at once (each holds a few
#: MiB of buffers: the peak memory of a save stays well under 64 MiB).
MAX_FILL_THREADS: Final = 4
#: Into a stream, how many chunks (of a few MiB) the filling thread may be ahead.
_AHEAD: Final = 4


class OutputFile(io.FileIO):
    """A new regular file that :class:`TarWriter` may fill at known offsets from several
    threads at once (what :func:`output_file` gives for ``-o PATH``)."""


class MemberSink:
    """Where a member's data goes: exactly ``size`` bytes, in order.

    A fill function (see :meth:`TarWriter.add_file`) calls :meth:`write` with the data
    as it is read and verified; more than ``size`` bytes is an error at once, fewer when
    the fill function returns.
    """

    __slots__ = ("_write", "done", "name", "size")

    def __init__(
        self, name: str, size: int, write: Callable[[bytes | memoryview, int], object]
    ) -> None:
        self.name = name
        self.size = size
        self.done = 0
        self._write = write

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.done + n > self.size:
            raise OcistoreError(f"{self.name}: stored content is longer than recorded")
        if n:
            self._write(data, self.done)
            self.done += n


#: Writes a member's data into a :class:`MemberSink` (see :meth:`TarWriter.add_file`).
Fill = Callable[[MemberSink], None]


class _Cancelled(Exception):
    """Another member failed: this one stops."""


class _Job:
    """A member the tar writer fills at ``offset``, and how that went."""

    __slots__ = ("error", "fill", "name", "offset", "size")

    def __init__(self, name: str, offset: int, size: int, fill: Fill) -> None:
        self.name = name
        self.offset = offset
        self.size = size
        self.fill = fill
        self.error: BaseException | None = None


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _PositionalWriter:
    """Writes one member's data at its place in the output file."""

    def __init__(self, fd: int, base: int, cancel: threading.Event) -> None:
        self._fd = fd
        self._base = base
        self._cancel = cancel

    def __call__(self, data: bytes | memoryview, pos: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled
        _pwrite_all(self._fd, data, self._base + pos)


class TarWriter:
    """Writes a deterministic tar: owner 0:0, mtime 0, 0644 files, 0755 directories.

    Headers are tarfile's own (``TarInfo.tobuf``, PAX format), so the bytes are those
    ``tarfile`` writes. Member data comes from :meth:`add_file`'s fill functions, run at
    :meth:`close`. Into an :class:`OutputFile` every member has a known place: the fill
    functions run several at once (largest first), each writing at its own offset. Into
    any other stream they run in order in one thread, a few MiB ahead of this one, which
    writes. The end-of-archive blocks are written only when every member was filled: a
    failed save never looks whole.
    """

    def __init__(self, out: IO[bytes], threads: int | None = None) -> None:
        self._out = out
        self._fd = out.fileno() if isinstance(out, OutputFile) else None
        self._base = out.tell() if self._fd is not None else 0
        #: Header (and padding) bytes not written yet, and where in the archive they go.
        self._pending = bytearray()
        self._pending_at = 0
        #: The archive's length so far.
        self._offset = 0
        #: Into a stream: the archive in order, bytes and members to fill.
        self._segments: list[bytes | _Job] = []
        self._jobs: list[_Job] = []
        self._dirs: set[str] = set()
        self._threads = max(1, threads or min(MAX_FILL_THREADS, os.cpu_count() or 1))
        self._done = False

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @staticmethod
    def _header(name: str, kind: bytes, size: int = 0, mode: int = 0o644, link: str = "") -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.linkname = link
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")

    def _emit(self, data: bytes) -> None:
        self._pending += data
        self._offset += len(data)

    def _flush(self) -> None:
        if self._pending:
            if self._fd is None:
                self._segments.append(bytes(self._pending))
            else:
                _pwrite_all(self._fd, self._pending, self._base + self._pending_at)
            self._pending = bytearray()
        self._pending_at = self._offset

    def _parents(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent:
            self.add_dir(parent)

    def add_dir(self, name: str) -> None:
        name = name.rstrip("/")
        if name in self._dirs:
            return
        self._parents(name)
        self._dirs.add(name)
        self._emit(self._header(name, tarfile.DIRTYPE, mode=0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._parents(name)
        self._emit(self._header(name, tarfile.REGTYPE, len(data)))
        self._emit(data + bytes(-len(data) % _BLOCK))

    def add_symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self._emit(self._header(name, tarfile.SYMTYPE, mode=0o777, link=target))

    def add_file(self, name: str, size: int, fill: Fill) -> None:
        """A regular file of ``size`` bytes that ``fill`` writes into a :class:`MemberSink`.

        ``fill`` reads and verifies the content, raising if it is not what it must be. It
        runs at :meth:`close`, in another thread.
        """
        self._parents(name)
        self._emit(self._header(name, tarfile.REGTYPE, size))
        self._flush()
        job = _Job(name, self._offset, size, fill)
        self._jobs.append(job)
        if self._fd is None:
            self._segments.append(job)
        self._offset += size
        self._pending_at = self._offset
        self._emit(bytes(-size % _BLOCK))

    @staticmethod
    def _check_filled(sink: MemberSink) -> None:
        if sink.done != sink.size:
            raise OcistoreError(f"{sink.name}: stored content is shorter than recorded")

    def _fill(self, job: _Job, cancel: threading.Event) -> None:
        assert self._fd is not None
        write = _PositionalWriter(self._fd, self._base + job.offset, cancel)
        sink = MemberSink(job.name, job.size, write)
        job.fill(sink)
        self._check_filled(sink)

    def _run_jobs(self) -> None:
        """Fill the members of an :class:`OutputFile`, largest first, with up to
        ``threads`` threads; the first member (in archive order) that failed gives the
        error."""
        jobs = sorted(self._jobs, key=lambda j: j.size, reverse=True)
        if not jobs:
            return
        assert self._fd is not None
        cancel = threading.Event()
        todo = iter(jobs)
        lock = threading.Lock()

        def work() -> None:
            while not cancel.is_set():
                with lock:
                    job = next(todo, None)
                if job is None:
                    return
                try:
                    self._fill(job, cancel)
                except BaseException as e:
                    job.error = e
                    cancel.set()

        helpers = [
            threading.Thread(target=work, name=f"tar-fill-{i}", daemon=True)
            for i in range(min(self._threads, len(jobs)) - 1)
        ]
        for t in helpers:
            t.start()
        try:
            work()
            for t in helpers:
                t.join()
        except BaseException:
            cancel.set()
            for t in helpers:
                t.join()
            raise
        errors = [j.error for j in self._jobs if j.error is not None]
        for e in errors:
            if not isinstance(e, _Cancelled):
                raise e
        if errors:
            raise errors[0]

    def _stream(self) -> None:
        """Write the archive in order into a stream; members are filled by one thread,
        at most :data:`_AHEAD` chunks ahead of the writes."""
        out = self._out
        if not self._jobs or self._threads == 1:
            for seg in self._segments:
                if isinstance(seg, _Job):
                    sink = MemberSink(seg.name, seg.size, lambda data, _pos: out.write(data))
                    seg.fill(sink)
                    self._check_filled(sink)
                else:
                    out.write(seg)
            return
        chunks: queue.Queue[bytes | _Job] = queue.Queue(maxsize=_AHEAD)
        cancel = threading.Event()

        def put(item: bytes | _Job) -> None:
            while not cancel.is_set():
                try:
                    chunks.put(item, timeout=0.1)
                    return
                except queue.Full:
                    pass
            raise _Cancelled

        def produce() -> None:
            for job in self._jobs:
                try:
                    sink = MemberSink(job.name, job.size, lambda data, _pos: put(bytes(data)))
                    job.fill(sink)
                    self._check_filled(sink)
                except BaseException as e:
                    job.error = e
                try:
                    put(job)  # the end of its data; job.error tells whether it failed
                except _Cancelled:
                    return
                if job.error is not None:
                    return

        reader = threading.Thread(target=produce, name="tar-read", daemon=True)
        reader.start()
        try:
            for seg in self._segments:
                if not isinstance(seg, _Job):
                    out.write(seg)
                    continue
                while not isinstance(item := chunks.get(), _Job):
                    out.write(item)
                if item.error is not None:
                    raise item.error
        finally:
            cancel.set()
            reader.join()

    def close(self) -> None:
        """Fill the members, then end the archive (two zero blocks, padded to a record,
        as tarfile does)."""
        if self._done:
            return
        self._done = True
        end = self._offset + 2 * _BLOCK
        if self._fd is None:
            self._emit(bytes(2 * _BLOCK + (-end % _RECORD)))
            self._flush()
            self._stream()
        else:
            self._flush()
            self._run_jobs()
            self._emit(bytes(2 * _BLOCK + (-end % _RECORD)))
            self._flush()

    def abort(self) -> None:
        """Stop without writing anything more (a reader sees the archive truncated)."""
        self._done = True
        self._pending = bytearray()
        self._segments = []


def fill_from_file(
    path: Path, digest: Digest, progress: Callable[[int], None] | None = None
) -> Fill:
    """A fill function copying a stored blob, checked against ``digest`` as it is read.

    Each chunk is read once into a buffer, hashed and written from the same buffer.
    """
    digest = Digest(digest)

    def fill(sink: MemberSink) -> None:
        hasher = new_hasher(digest.algorithm)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found") from None
        with f:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while sink.done < sink.size:
                n = f.readinto(view[: min(CHUNK, sink.size - sink.done)])
                if not n:
                    break
                chunk = view[:n]
                hasher.update(chunk)
                sink.write(chunk)
                if progress is not None:
                    progress(sink.done)
            if sink.done == sink.size and f.read(1):
                raise OcistoreError(f"{sink.name}: stored content is longer than recorded")
        got = f"{digest.algorithm}:{hasher.hexdigest()}"
        if got != digest:
            raise DigestMismatch(f"blob {digest}", digest, got)

    return fill


@contextlib.contextmanager
def output_file(path: str) -> Iterator[IO[bytes]]:
    """``-`` is stdout; a path is written to a temporary file beside it and renamed into
    place when complete, so a failed save leaves nothing and no reader sees half a file.

    Like ``docker save -o``, ``skopeo copy`` and ``tar``, the file is not fsynced: it is
    an export, not part of the store. It reaches the disk with the kernel's writeback
    (``sync`` forces it); until then a power loss can leave the path empty or short, or
    lose the file it replaced. Waiting for the disk cost a third of the time of an
    oci-archive save.
    """
    if path == "-":
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    dest = Path(os.path.realpath(path))  # through a symlink: the link stays a link
    if dest.is_dir():
        raise InvalidInput(f"{path}: is a directory")
    if not dest.parent.is_dir():
        raise NotFound(f"{path}: no such directory {dest.parent}")
    if dest.exists() and not dest.is_file():
        # A FIFO or a device (/dev/null, /dev/stdout): written to, never replaced.
        with open(dest, "wb") as stream:
            yield stream
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with OutputFile(tmp, "wb") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
