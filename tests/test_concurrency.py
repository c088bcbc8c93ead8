"""Many processes at once on one store, and the races between them, each forced.

* Writers importing and tagging while a reader lists; several command lines at once.
* Targeted races, each order forced with gates (:class:`Gate`: a layer's stream that
  stops half-way, the first lock a ``Store`` takes, fsck's or save's first progress
  task, a pipe the test feeds and a process it kills), never with sleeps: two ``Store``
  objects on one root behave as two processes (the lock is ``flock`` on files each
  opens). gc (``--grace 0`` too) against a load or an import that is staging or
  spooling, and against what a killed writer left; ``rmi -f`` against a load relying
  on the image's layers or kept gzip blobs, or loading that very image again; ``rmi``
  against ``tag`` (both orders), against another ``rmi``, against a save; two loads of
  one image (same or different formats) and of two images sharing a new layer at once;
  fsck against rmi, gc and load.
* Several processes doing mixed operations (loads of overlapping docker-archives and
  oci-archives, tags, rmi, rmi -f, gc, gc --grace 0, fsck, saves), then the invariants
  checked by ``tests/invariants.py``, an independent reader of the files, and each
  worker's own model of what its successful operations made.

``OCISTORE_CAMPAIGN_SCALE`` (``make soak``: 20) multiplies the numbers of operations.
Where a race may end either way by design (a load refused because a layer it relied on
went away), both ends are accepted and each is checked for what it must leave.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import invariants
import pytest
import zstandard
from util import make_tar

import ocistore
from ocistore import Digest, ImageSource, LayerSource
from ocistore.cli.main import main as cli_main
from ocistore.errors import NotFound, OcistoreError
from ocistore.formats.detect import read_images
from ocistore.formats.reader import open_archive
from ocistore.progress import SILENT
from ocistore.spec.reference import parse_tagged
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"
WRITERS = 4
PER_WRITER = 5 * max(1, int(os.environ.get("OCISTORE_CAMPAIGN_SCALE", "1") or "1"))


def tarball(worker: int, item: int) -> bytes:
    """A distinct rootfs per (worker, item), compressed three ways in turn."""
    tar = make_tar(
        {
            "etc/id": f"{worker}-{item}\n".encode(),
            "data": os.urandom(50_000) + b"x" * 200_000,
            "shared": b"the same in every image" * 100,
        }
    )
    kind = (worker + item) % 3
    if kind == 1:
        return gzip.compress(tar, compresslevel=1)
    if kind == 2:
        return zstandard.ZstdCompressor().compress(tar)
    return tar


# -- library writers and a reader, in spawned processes -----------------------------------


def writer(root: str, worker: int) -> list[tuple[str, str]]:
    """Import PER_WRITER tarballs, tag each twice, move a shared tag, delete scratch."""
    store = Store(root)
    made: list[tuple[str, str]] = []
    for item in range(PER_WRITER):
        ref = f"keep{worker}/img:{item}"
        image_id = store.import_tarball(io.BytesIO(tarball(worker, item)), ref)
        store.tag(ref, f"registry.example:5000/w{worker}:v{item}")
        store.tag(image_id, "shared:latest")  # every writer moves this one
        made.append((ref, image_id))
        scratch = store.import_tarball(io.BytesIO(tarball(worker, 100 + item)), f"scratch{worker}")
        events = [str(e) for e in store.remove(f"scratch{worker}")]
        assert f"Deleted: {scratch}" in events, events
    return made


def reader(root: str, stop: Any, result: Any) -> None:
    """List and verify until told to stop; report the number of rounds or the error."""
    rounds = 0
    try:
        store = Store(root)
        while not stop.is_set() or rounds < 3:
            for rec, refs in store.list_images(all_images=True):
                try:
                    image = store.images.get(rec.id)  # re-verifies the config
                except NotFound:
                    # Only the writers' scratch images are ever deleted.
                    assert not any(r.familiar_name.startswith("keep") for r in refs)
                    continue
                assert image.id == rec.id
            for ref, image_id in store.references.all().items():
                if ref.familiar_name.startswith("keep"):
                    assert store.images.get(image_id).id == image_id
                    assert store.resolve(ref.familiar()) == image_id
            rounds += 1
        result.put(("ok", rounds))
    except BaseException:
        result.put(("error", traceback.format_exc()))


def check_store(root: Path, expected: dict[str, str]) -> Store:
    store = Store(root)
    records = store.images.list()
    assert len(records) == len(set(expected.values())) == WRITERS * PER_WRITER
    assert store.images.skipped == []
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    for ref, image_id in expected.items():
        assert tags[ref] == image_id
    for rec in records:
        image = store.images.get(rec.id)
        (chain,) = image.record.chains
        with store.layers.open_tar(chain) as f:  # verified while read
            while f.read(1 << 20):
                pass
    # Every layer and blob is some image's; nothing half-written is left.
    assert len(store.layers.walk()) == len(records)
    assert len(list(store.content.walk())) == len(records)
    assert store.fsck() == []
    assert list(store.tmpdir.iterdir()) == []
    assert not (root / "imagedb" / "index.dirty").exists()
    assert store.gc() == []
    return store


def test_parallel_library_writers_and_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    result = ctx.Queue()
    rd = ctx.Process(target=reader, args=(str(root), stop, result))
    rd.start()
    try:
        with ctx.Pool(WRITERS) as pool:
            made = pool.starmap(writer, [(str(root), w) for w in range(WRITERS)], chunksize=1)
    finally:
        stop.set()
        status, detail = result.get(timeout=60)
        rd.join(timeout=60)
    assert status == "ok", detail
    assert detail >= 3

    expected: dict[str, str] = {}
    for w, pairs in enumerate(made):
        for item, (ref, image_id) in enumerate(pairs):
            expected[ref] = image_id
            expected[f"registry.example:5000/w{w}:v{item}"] = image_id
    store = check_store(root, expected)
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    assert tags["shared:latest"] in {i for pairs in made for _, i in pairs}
    assert len(tags) == 2 * WRITERS * PER_WRITER + 1


# -- the command line, several processes at once ------------------------------------------


def test_parallel_cli_imports_and_tags(tmp_path: Path) -> None:
    root = tmp_path / "store"
    scripts = []
    for w in range(WRITERS):
        lines = ["set -e"]
        for item in range(2):
            path = tmp_path / f"w{w}-{item}.tar"
            path.write_bytes(tarball(w, item))
            lines.append(f'"{OCISTORE}" --root "{root}" import -q "{path}" cli{w}/img:{item}')
            lines.append(f'"{OCISTORE}" --root "{root}" tag cli{w}/img:{item} alias{w}:{item}')
        lines.append(f'"{OCISTORE}" --root "{root}" images -q --no-trunc > /dev/null')
        scripts.append("\n".join(lines))
    procs = [
        subprocess.Popen(["sh", "-c", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for s in scripts
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        assert b"Traceback" not in err

    ids = [line for out, _ in outputs for line in out.decode().split() if line.startswith("sha")]
    assert len(set(ids)) == WRITERS * 2
    store = Store(root)
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    assert len(tags) == WRITERS * 2 * 2
    for w in range(WRITERS):
        for item in range(2):
            assert tags[f"cli{w}/img:{item}"] == tags[f"alias{w}:{item}"]
            store.images.get(tags[f"alias{w}:{item}"])
    assert store.fsck() == []
    p = subprocess.run(
        [str(OCISTORE), "--root", str(root), "images", "-q", "--no-trunc"],
        capture_output=True,
        text=True,
        check=True,
    )
    # A line per row, as docker images -q: each image has two tags.
    assert sorted(p.stdout.split()) == sorted(ids + ids)


# -- shared: campaign scale, images that share layers, gates ----------------------------------

#: ``make soak`` sets it to 20: every count below grows with it (default 1).
SCALE = max(1, int(os.environ.get("OCISTORE_CAMPAIGN_SCALE", "1") or "1"))
#: How long a gate waits for the other side: a guard against a deadlock, never a timing.
WAIT = 300.0


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pool_layer(k: int, size: int = 20_000) -> bytes:
    """Layer ``k`` of the pool every image below takes its layers from (a plain tar)."""
    data = random.Random(k).randbytes(size // 2) + b"z" * (size // 2)
    return make_tar({f"pool/{k}/data": data, f"pool/{k}/id": f"{k}\n".encode()}, dirs=True)


def gz(tar: bytes) -> bytes:
    return gzip.compress(tar, mtime=0, compresslevel=6)


def config(tars: list[bytes], comment: str) -> bytes:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-06T07:08:09Z",
        "comment": comment,
        "history": [{"created_by": f"layer {i}"} for i in range(len(tars))],
        "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]},
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def image_source(tars: list[bytes], comment: str, tags: list[str]) -> ImageSource:
    """An image whose layers come gzip-compressed (so an OCI save keeps gzip blobs)."""
    layers = []
    for i, tar in enumerate(tars):
        blob = gz(tar)
        layers.append(
            LayerSource(
                lambda blob=blob: contextlib.nullcontext(io.BytesIO(blob)),
                f"{comment} layer {i}",
                Digest(sha(blob)),
                len(blob),
            )
        )
    return ImageSource(config(tars, comment), comment, layers, [parse_tagged(t) for t in tags])


def src_id(src: ImageSource) -> str:
    assert isinstance(src.config, bytes)
    return sha(src.config)


class Archives:
    """Images made once in a scratch store and saved as docker-archives (plain layers)
    and oci-archives (gzip layers): the same images, two sets of blobs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = Store(work / "source")
        self.ids: dict[str, str] = {}

    def add(self, name: str, tars: list[bytes], comment: str | None = None) -> str:
        (loaded,) = self.store.add_images([image_source(tars, comment or name, [name])])
        self.ids[name] = loaded.id
        return loaded.id

    def save(self, name: str, fmt: str) -> Path:
        suffix = {"docker": "docker.tar", "oci-archive": "oci.tar", "oci": "layout"}[fmt]
        out = self.work / f"{name.replace('/', '_').replace(':', '_')}.{suffix}"
        if not out.exists():
            ocistore.save(self.store, [name], out, format=fmt)
        return out


def sources_of(path: Path, store: Store) -> tuple[list[ImageSource], Any]:
    """The image sources of an archive, as ``load`` reads them (the caller closes the
    archive it returns), so that a test can gate their layers."""
    archive = open_archive(path, store.spool)
    return read_images(archive), archive


class Gate:
    """One side stops at :meth:`wait` until the other, which :meth:`hold` told it had
    arrived, calls :meth:`open`."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def wait(self) -> None:
        self.reached.set()
        if not self.go.wait(WAIT):
            raise RuntimeError("gate never opened")

    def hold(self) -> None:
        assert self.reached.wait(WAIT), "the gated operation never reached its gate"

    def open(self) -> None:
        self.go.set()


class GatedStream(io.RawIOBase):
    """``data``, stopping at ``gate`` once ``at`` bytes have been read."""

    def __init__(self, data: bytes, gate: Gate, at: int) -> None:
        self.data, self.gate, self.at, self.pos = data, gate, at, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.pos == self.at:
            self.gate.wait()
        end = min(len(self.data), self.pos + len(buf))
        if self.pos < self.at:
            end = min(end, self.at)
        n = end - self.pos
        memoryview(buf)[:n] = self.data[self.pos : end]
        self.pos = end
        return n


def gated(layer: LayerSource, gate: Gate, fraction: float = 0.5) -> LayerSource:
    """``layer``, whose bytes stop at ``gate`` once ``fraction`` of them were read."""

    @contextlib.contextmanager
    def opener() -> Iterator[IO[bytes]]:
        with layer.open() as f:
            data = f.read()
        yield GatedStream(data, gate, int(len(data) * fraction))  # type: ignore[misc]

    return layer._replace(open=opener)


def gate_first_exclusive(store: Store, gate: Gate) -> None:
    """Make the first exclusive lock ``store`` takes wait at ``gate`` before taking it."""
    original = store.lock.exclusive
    state = {"first": True}

    @contextlib.contextmanager
    def exclusive() -> Iterator[None]:
        if state["first"]:
            state["first"] = False
            gate.wait()
        with original():
            yield

    store.lock.exclusive = exclusive  # type: ignore[method-assign]


class Background(threading.Thread):
    """A function on a thread of its own; :meth:`outcome` is its result or its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e

    def outcome(self) -> tuple[Any, BaseException | None]:
        self.join(WAIT)
        assert not self.is_alive(), "the operation never finished"
        return self.result, self.error


def lock_is_free(root: Path) -> bool:
    """Whether no process holds the store's lock (``<root>/lock``, flock) right now."""
    try:
        fd = os.open(root / "lock", os.O_RDWR)
    except FileNotFoundError:
        return True  # made when first taken
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def while_held(gate: Gate, root: Path, action: Callable[[], Any]) -> Any:
    """Run ``action`` while the gated operation waits at ``gate``, then let it go on. The
    gate must be outside the store's lock: else ``action`` could only wait for it, and
    the race the test is about would not be run."""
    gate.hold()
    try:
        assert lock_is_free(root), "the gated operation holds the lock: no race to run"
        return action()
    finally:
        gate.open()


def check_sound(root: Path) -> None:
    """The independent reader finds nothing wrong, ``tmp/`` is empty, fsck is clean."""
    assert invariants.problems(root) == []
    assert invariants.tmp_is_empty(root), invariants.tmp_entries(root)
    with Store(root) as store:
        assert store.fsck() == []


def check_saves_and_loads_back(root: Path, name: str, work: Path) -> None:
    """The image ``name`` saves in every format, and each loads into a fresh store."""
    with Store(root) as store:
        image_id = store.resolve(name)
        for fmt in ("docker", "oci-archive", "oci"):
            out = work / f"check-{fmt}-{image_id[7:19]}"
            ocistore.save(store, [name], out, format=fmt)
            with Store(work / f"check-{fmt}-{image_id[7:19]}-store") as fresh:
                (loaded,) = ocistore.load(fresh, out)
                assert loaded.id == image_id
                assert fresh.fsck() == []


# -- gc against a load that is staging ------------------------------------------------------


def test_gc_grace_0_spares_the_files_of_a_load_staging(tmp_path: Path) -> None:
    """A load has staged one layer (its file finished in tmp/) and is half-way through
    another (its file open) when ``gc --grace 0`` runs: gc must leave both, and the load
    must then succeed."""
    root = tmp_path / "store"
    big, small = pool_layer(1, 60_000), pool_layer(2)
    src = image_source([big, small], "staging", ["gc/live:1"])
    gate = Gate()
    src.layers[1] = gated(src.layers[1], gate)
    loader, other = Store(root), Store(root)
    # One layer at a time, largest first: the big one is staged whole before the small
    # one starts and stops half-way.
    load = Background(lambda: loader.add_images([src], jobs=1))
    load.start()
    removed = while_held(gate, root, lambda: other.gc(grace_seconds=0))
    result, error = load.outcome()
    assert error is None, f"the load failed: {error!r} (gc removed {removed})"
    assert [r.id for r in result] == [src_id(src)]
    assert [r for r in removed if r.startswith("temporary")] == []
    check_sound(root)
    check_saves_and_loads_back(root, "gc/live:1", tmp_path)


def _pipe_max() -> int:
    """The most a pipe can hold (``/proc/sys/fs/pipe-max-size``): a process may enlarge
    its pipes up to it; they hold 64 KiB by default."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return 1 << 20


#: What the tests write into a command's pipe before they act: more than any pipe holds.
FED = _pipe_max() + (256 << 10)


def test_gc_grace_0_spares_the_spool_of_a_load_from_a_pipe(tmp_path: Path) -> None:
    """``ocistore load -i -`` copies its pipe into tmp/ first; ``gc --grace 0`` while it
    reads must not remove that copy, and the load must succeed."""
    archives = Archives(tmp_path)
    archives.add("pipe/img:1", [pool_layer(3, 2 * FED), pool_layer(4)])
    data = archives.save("pipe/img:1", "docker").read_bytes()
    root = tmp_path / "store"
    Store(root).close()
    proc = _half_fed(root, data, "load", "-q", "-i", "-")
    gc_run = subprocess.run(
        [str(OCISTORE), "--root", str(root), "gc", "--grace", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    out, err = proc.communicate(data[FED:], timeout=WAIT)
    assert proc.returncode == 0, (err.decode(), gc_run.stdout)
    assert b"Loaded image: pipe/img:1" in out
    check_sound(root)


def _half_fed(root: Path, data: bytes, *args: str) -> subprocess.Popen[bytes]:
    """``ocistore ARGS`` reading ``data`` from a pipe, of which :data:`FED` bytes are
    written: more than a pipe can hold, so once the write returns the command has read
    from it (past the few bytes it peeks at first), and its file in tmp/ exists; it
    waits for more."""
    assert len(data) > FED + (64 << 10)
    proc = subprocess.Popen(
        [str(OCISTORE), "--root", str(root), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(data[:FED])
    proc.stdin.flush()
    assert not invariants.tmp_is_empty(root)
    return proc


def _rootfs_tarball() -> bytes:
    data = random.Random(99).randbytes(FED + (512 << 10))
    return make_tar({"data": data, "etc/id": b"imported\n"})


def test_gc_grace_0_spares_an_import_reading_its_pipe(tmp_path: Path) -> None:
    """``ocistore import -`` streams its pipe into a staged blob in tmp/; ``gc --grace
    0`` from another process meanwhile must leave it, and the import must succeed."""
    root = tmp_path / "store"
    Store(root).close()
    data = _rootfs_tarball()
    proc = _half_fed(root, data, "import", "-q", "-", "gc/imported:1")
    gc_run = subprocess.run(
        [str(OCISTORE), "--root", str(root), "gc", "--grace", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    out, err = proc.communicate(data[FED:], timeout=WAIT)
    assert proc.returncode == 0, (err.decode(), gc_run.stdout)
    (image_id,) = out.decode().split()
    assert invariants.references(root) == {"gc/imported:1": image_id}
    check_sound(root)


@pytest.mark.parametrize("command", ["import", "load"])
def test_gc_removes_what_a_killed_writer_left_at_once(tmp_path: Path, command: str) -> None:
    """A writer killed while it read its pipe (an import staging, a load spooling) leaves
    its file in tmp/: a plain ``gc`` (a day's grace for files it cannot tell) removes it
    at once, since its writer is gone."""
    root = tmp_path / "store"
    Store(root).close()
    if command == "import":
        proc = _half_fed(root, _rootfs_tarball(), "import", "-q", "-", "gc/killed:1")
    else:
        archives = Archives(tmp_path / "made")
        archives.add("gc/killed:1", [pool_layer(30, 2 * FED)])
        data = archives.save("gc/killed:1", "docker").read_bytes()
        proc = _half_fed(root, data, "load", "-q", "-i", "-")
    proc.kill()
    proc.communicate(timeout=WAIT)
    left = invariants.tmp_entries(root)
    assert left
    gc_run = subprocess.run(
        [str(OCISTORE), "--root", str(root), "gc"], capture_output=True, text=True, check=True
    )
    assert invariants.tmp_is_empty(root), (invariants.tmp_entries(root), gc_run.stdout)
    for name in left:
        assert name in gc_run.stdout
    check_sound(root)


def test_gc_while_a_load_skips_an_unused_layer(tmp_path: Path) -> None:
    """A load skips a layer the store has but no image uses (a registered layer); gc
    removes that layer while the load stages the next one. The load must then either
    succeed with every layer stored, or fail with an error and leave no image behind."""
    root = tmp_path / "store"
    base, top = pool_layer(5), pool_layer(6)
    with Store(root) as store:
        store.register_layer(io.BytesIO(gz(base)))
    src = image_source([base, top], "skipper", ["gc/skip:1"])
    gate = Gate()
    src.layers[1] = gated(src.layers[1], gate)
    loader, other = Store(root), Store(root)
    load = Background(lambda: loader.add_images([src], jobs=1))
    load.start()
    removed = while_held(gate, root, lambda: other.gc())
    assert f"layer {sha(base)}" in removed
    _, error = load.outcome()
    if error is None:
        check_sound(root)
        check_saves_and_loads_back(root, "gc/skip:1", tmp_path)
    else:
        assert isinstance(error, OcistoreError), repr(error)
        assert invariants.image_ids(root) == []
        assert invariants.references(root) == {}
        check_sound(root)


# -- rmi against a load that relies on the image's blobs ------------------------------------


def _rmi_during_oci_load(tmp_path: Path, docker_first: bool) -> None:
    archives = Archives(tmp_path / "made")
    (tmp_path / "made").mkdir(exist_ok=True)
    base, x_top, y_top = pool_layer(7), pool_layer(8), pool_layer(9)
    archives.add("race/x:1", [base, x_top])
    archives.add("race/y:1", [base, y_top])
    archives.add("race/w:1", [base])
    root = tmp_path / "store"
    with Store(root) as store:
        if docker_first:
            # The layer is stored as its plain tar (w, from a docker-archive); x, loaded
            # from an oci-archive, keeps the gzip blob beside it.
            ocistore.load(store, archives.save("race/w:1", "docker"))
        ocistore.load(store, archives.save("race/x:1", "oci-archive"))
    base_gz = sha(gz(base))
    assert (root / "blobs" / "sha256" / base_gz[7:]).exists()
    loader, other = Store(root), Store(root)
    sources, archive = sources_of(archives.save("race/y:1", "oci-archive"), loader)
    gate = Gate()
    (src,) = sources
    # y's base layer is the one x stored (or keeps): it is not read again. y's own top
    # layer is staged, and stops half-way.
    src.layers[1] = gated(src.layers[1], gate)
    load = Background(lambda: loader.add_images(sources))
    load.start()
    events = while_held(gate, root, lambda: other.remove("race/x:1", force=True))
    archive.close()
    assert f"Deleted: {archives.ids['race/x:1']}" in [str(e) for e in events]
    result, error = load.outcome()
    if error is None:
        # Loaded: then with every blob its manifest names, so that it saves back.
        (loaded,) = result
        assert loaded.id == archives.ids["race/y:1"]
        assert (root / "blobs" / "sha256" / base_gz[7:]).exists()
        check_sound(root)
        check_saves_and_loads_back(root, "race/y:1", tmp_path)
    else:
        # Or refused, saying so, with nothing of y left behind.
        assert isinstance(error, OcistoreError), repr(error)
        assert "load again" in str(error) or "removed" in str(error), str(error)
        assert archives.ids["race/y:1"] not in invariants.image_ids(root)
        check_sound(root)


def test_rmi_f_during_an_oci_load_sharing_the_images_gzip_layer(tmp_path: Path) -> None:
    """x was loaded from an oci-archive (its base layer stored as gzip); y, from another,
    shares that layer. ``rmi -f x`` while y is staging removes the layer and its blob:
    y must load with the blob, or fail saying the layer went away."""
    _rmi_during_oci_load(tmp_path, docker_first=False)


def test_rmi_f_during_an_oci_load_sharing_a_kept_gzip_blob(tmp_path: Path) -> None:
    """The issue's case: the layer is stored as a plain tar (w, docker-archive) and x
    keeps its gzip blob; y's manifest names that gzip blob. ``rmi -f x`` while y is
    staging removes the kept blob: y must load with it, or fail saying so."""
    _rmi_during_oci_load(tmp_path, docker_first=True)


# -- rmi against tag --------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["by-tag", "by-id"])
def test_rmi_between_tags_lookup_and_its_publish(tmp_path: Path, source: str) -> None:
    """``tag`` has found its image and waits for the lock when ``rmi`` deletes that
    image: the tag must then fail (the image is gone) and name no missing image."""
    archives = Archives(tmp_path)
    image_id = archives.add("rt/img:1", [pool_layer(10)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("rt/img:1", "docker"))
    tagger, remover = Store(root), Store(root)
    gate = Gate()
    gate_first_exclusive(tagger, gate)
    name = "rt/img:1" if source == "by-tag" else image_id
    tag = Background(lambda: tagger.tag(name, "rt/alias:2"))
    tag.start()
    events = while_held(gate, root, lambda: remover.remove("rt/img:1"))
    assert f"Deleted: {image_id}" in [str(e) for e in events]
    _, error = tag.outcome()
    assert isinstance(error, NotFound), repr(error)
    assert invariants.references(root) == {}
    assert invariants.image_ids(root) == []
    check_sound(root)


def test_tag_between_rmis_lookup_and_its_publish(tmp_path: Path) -> None:
    """The other order: ``rmi`` of an image's only tag waits for the lock while ``tag``
    gives the image a second tag: the image must stay, under the new tag."""
    archives = Archives(tmp_path)
    image_id = archives.add("rt/img:1", [pool_layer(11)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("rt/img:1", "docker"))
    tagger, remover = Store(root), Store(root)
    gate = Gate()
    gate_first_exclusive(remover, gate)
    rmi = Background(lambda: remover.remove("rt/img:1"))
    rmi.start()
    while_held(gate, root, lambda: tagger.tag("rt/img:1", "rt/alias:2"))
    events, error = rmi.outcome()
    assert error is None, repr(error)
    assert [str(e) for e in events] == ["Untagged: rt/img:1"]
    assert invariants.references(root) == {"rt/alias:2": image_id}
    check_sound(root)


# -- two loads of one image at once ---------------------------------------------------------


@pytest.mark.parametrize(
    "formats", [("oci-archive", "oci-archive"), ("docker", "docker"), ("docker", "oci-archive")]
)
def test_two_loads_of_one_image_at_once(tmp_path: Path, formats: tuple[str, str]) -> None:
    """Two loads of the same image (from the same format, or as plain and gzip layers)
    stage at the same time, then publish one after the other: both succeed, the image
    is stored once, and it saves back in every format."""
    archives = Archives(tmp_path)
    image_id = archives.add("two/img:1", [pool_layer(12), pool_layer(13)])
    root = tmp_path / "store"
    Store(root).close()
    both = threading.Barrier(2, timeout=WAIT)
    loads = []
    archives_open = []
    for fmt in formats:
        store = Store(root)
        sources, archive = sources_of(archives.save("two/img:1", fmt), store)
        archives_open.append(archive)
        (src,) = sources
        src.layers[0] = _at_barrier(src.layers[0], both)
        loads.append(Background(lambda store=store, sources=sources: store.add_images(sources)))
    for load in loads:
        load.start()
    for load in loads:
        result, error = load.outcome()
        assert error is None, repr(error)
        assert [r.id for r in result] == [image_id]
    for archive in archives_open:
        archive.close()
    assert invariants.image_ids(root) == [image_id]
    assert invariants.references(root) == {"two/img:1": image_id}
    check_sound(root)
    check_saves_and_loads_back(root, "two/img:1", tmp_path)


def test_two_loads_of_images_sharing_a_new_layer_at_once(tmp_path: Path) -> None:
    """Two images that share a base layer the store does not have are loaded at once:
    both stage the layer, one publishes it, the other finds it stored. Both succeed and
    the layer is stored once."""
    archives = Archives(tmp_path)
    base = pool_layer(40)
    a = archives.add("share/a:1", [base, pool_layer(41)])
    b = archives.add("share/b:1", [base, pool_layer(42)])
    root = tmp_path / "store"
    Store(root).close()
    both = threading.Barrier(2, timeout=WAIT)
    loads, opened = [], []
    for name, fmt in (("share/a:1", "oci-archive"), ("share/b:1", "docker")):
        store = Store(root)
        sources, archive = sources_of(archives.save(name, fmt), store)
        opened.append(archive)
        (src,) = sources
        src.layers[0] = _at_barrier(src.layers[0], both)
        loads.append(Background(lambda store=store, sources=sources: store.add_images(sources)))
    for load in loads:
        load.start()
    for load in loads:
        _, error = load.outcome()
        assert error is None, repr(error)
    for archive in opened:
        archive.close()
    assert invariants.image_ids(root) == sorted([a, b])
    chains = os.listdir(root / "layerdb" / "sha256")
    assert chains.count(sha(base)[7:]) == 1
    assert len(chains) == 3
    check_sound(root)
    for name in ("share/a:1", "share/b:1"):
        check_saves_and_loads_back(root, name, tmp_path)


def test_load_again_while_rmi_f_removes_that_image(tmp_path: Path) -> None:
    """A load of an image the store has reads nothing (every layer is stored) and waits
    for the lock while ``rmi -f`` removes that very image: the load must then either
    store the image whole again or fail saying so, never leave it half there."""
    archives = Archives(tmp_path)
    image_id = archives.add("again/img:1", [pool_layer(43), pool_layer(44)])
    path = archives.save("again/img:1", "oci-archive")
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, path)
    loader, remover = Store(root), Store(root)
    gate = Gate()
    gate_first_exclusive(loader, gate)
    load = Background(lambda: ocistore.load(loader, path))
    load.start()
    events = while_held(gate, root, lambda: remover.remove(image_id, force=True))
    assert f"Deleted: {image_id}" in [str(e) for e in events]
    result, error = load.outcome()
    if error is None:
        assert [r.id for r in result] == [image_id]
        assert invariants.references(root) == {"again/img:1": image_id}
        check_sound(root)
        check_saves_and_loads_back(root, "again/img:1", tmp_path)
    else:
        assert isinstance(error, OcistoreError), repr(error)
        assert "load again" in str(error) or "removed" in str(error), str(error)
        assert invariants.image_ids(root) == []
        check_sound(root)


def test_two_rmis_of_one_image_at_once(tmp_path: Path) -> None:
    """Two ``rmi`` of one image, the second waiting for the lock once it started: one
    deletes it, the other finds nothing to delete and says so."""
    archives = Archives(tmp_path)
    image_id = archives.add("rr/img:1", [pool_layer(45)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("rr/img:1", "docker"))
    first, second = Store(root), Store(root)
    gate = Gate()
    gate_first_exclusive(second, gate)
    late = Background(lambda: second.remove("rr/img:1"))
    late.start()
    events = while_held(gate, root, lambda: first.remove("rr/img:1"))
    assert f"Deleted: {image_id}" in [str(e) for e in events]
    _, error = late.outcome()
    assert isinstance(error, NotFound), repr(error)
    assert invariants.image_ids(root) == []
    assert invariants.references(root) == {}
    check_sound(root)


def _at_barrier(layer: LayerSource, barrier: threading.Barrier) -> LayerSource:
    @contextlib.contextmanager
    def opener() -> Iterator[IO[bytes]]:
        barrier.wait()  # both loads are staging
        with layer.open() as f:
            yield f

    return layer._replace(open=opener)


# -- rmi against save ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker", "oci-archive"])
def test_rmi_during_a_save(tmp_path: Path, fmt: str) -> None:
    """A save has started copying the image's first layer out when ``rmi`` deletes the
    image: the save must either write an archive that loads back as that image, or
    fail with an error and leave no output (nor a temporary file beside it)."""
    archives = Archives(tmp_path / "made")
    image_id = archives.add("sv/img:1", [pool_layer(31), pool_layer(32)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("sv/img:1", "oci-archive"))
    saver, remover = Store(root), Store(root)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "saved.tar"
    gate = Gate()
    save = Background(
        lambda: ocistore.save(saver, ["sv/img:1"], out, format=fmt, progress=_GateAtFirstTask(gate))
    )
    save.start()
    events = while_held(gate, root, lambda: remover.remove("sv/img:1"))
    assert f"Deleted: {image_id}" in [str(e) for e in events]
    _, error = save.outcome()
    if error is None:
        with Store(tmp_path / "fresh") as fresh:
            assert [x.id for x in ocistore.load(fresh, out)] == [image_id]
            assert fresh.fsck() == []
    else:
        assert isinstance(error, OcistoreError), repr(error)
        assert list(out_dir.iterdir()) == []
    assert invariants.image_ids(root) == []
    check_sound(root)


# -- fsck against writers -----------------------------------------------------------------


class _GateAtFirstTask:
    """A progress whose first task waits at a gate: fsck stops after it listed the
    layers, before it reads the first one."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.first = True

    def task(self, label: str, total: int | None = None) -> Any:
        if self.first:
            self.first = False
            self.gate.wait()
        return SILENT.task(label, total)


def test_fsck_during_an_rmi_reports_nothing(tmp_path: Path) -> None:
    """``fsck`` has listed the layers when an ``rmi`` removes an image and its layers:
    on a store that is consistent before and after, fsck must report no problem."""
    archives = Archives(tmp_path)
    archives.add("fs/keep:1", [pool_layer(14)])
    archives.add("fs/gone:1", [pool_layer(15), pool_layer(16)])
    root = tmp_path / "store"
    with Store(root) as store:
        for name in ("fs/keep:1", "fs/gone:1"):
            ocistore.load(store, archives.save(name, "oci-archive"))
    checker, remover = Store(root), Store(root)
    gate = Gate()
    fsck = Background(lambda: checker.fsck(_GateAtFirstTask(gate)))
    fsck.start()
    while_held(gate, root, lambda: remover.remove("fs/gone:1"))
    problems, error = fsck.outcome()
    assert error is None, repr(error)
    assert problems == []
    check_sound(root)


def test_fsck_during_a_gc_reports_nothing(tmp_path: Path) -> None:
    """``fsck`` has listed the layers, a layer no image uses among them, when ``gc``
    removes that layer and its blob: fsck must report no problem."""
    archives = Archives(tmp_path)
    archives.add("fs/kept:1", [pool_layer(19)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("fs/kept:1", "oci-archive"))
        store.register_layer(io.BytesIO(gz(pool_layer(46))))
    checker, collector = Store(root), Store(root)
    gate = Gate()
    fsck = Background(lambda: checker.fsck(_GateAtFirstTask(gate)))
    fsck.start()
    removed = while_held(gate, root, lambda: collector.gc())
    problems, error = fsck.outcome()
    assert f"layer {sha(pool_layer(46))}" in removed
    assert error is None, repr(error)
    assert problems == []
    check_sound(root)


def test_fsck_during_a_load_reports_nothing(tmp_path: Path) -> None:
    """``fsck`` has listed the layers when a load publishes a new image (tagged): fsck
    must report no problem."""
    archives = Archives(tmp_path)
    archives.add("fs/old:1", [pool_layer(17)])
    archives.add("fs/new:1", [pool_layer(17), pool_layer(18)])
    root = tmp_path / "store"
    with Store(root) as store:
        ocistore.load(store, archives.save("fs/old:1", "oci-archive"))
    checker, loader = Store(root), Store(root)
    gate = Gate()
    fsck = Background(lambda: checker.fsck(_GateAtFirstTask(gate)))
    fsck.start()
    while_held(gate, root, lambda: ocistore.load(loader, archives.save("fs/new:1", "docker")))
    problems, error = fsck.outcome()
    assert error is None, repr(error)
    assert problems == []
    check_sound(root)


# -- several processes, mixed operations ----------------------------------------------------

MIXED_WORKERS = 3
MIXED_OPS = 14 * SCALE
MIXED_IMAGES = 3


def _mixed_archives(work: Path) -> dict[str, Any]:
    """Each worker's images: configs of its own, layers from one pool (so chains and
    gzip blobs are shared across workers), as docker-archives and oci-archives."""
    archives = Archives(work)
    plan: dict[str, Any] = {}
    for w in range(MIXED_WORKERS):
        for k in range(MIXED_IMAGES):
            name = f"w{w}/img:{k}"
            layers = [pool_layer(20), pool_layer(21 + (w + k) % 4)]
            if k == 2:
                layers.append(pool_layer(25 + w % 2))
            image_id = archives.add(name, layers, comment=f"worker {w} image {k}")
            plan[name] = {
                "id": image_id,
                "docker": str(archives.save(name, "docker")),
                "oci-archive": str(archives.save(name, "oci-archive")),
            }
    return plan


def _run(root: str, *args: str) -> tuple[int, str, str]:
    """``ocistore ARGS`` in this process: exit code, stdout, and stderr without the
    notices of a wait for the store's lock (one line each, which other writers cause)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(["--root", root, *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        except BaseException:
            code, err = -1, io.StringIO(traceback.format_exc())
    lines = err.getvalue().splitlines(keepends=True)
    told = "".join(line for line in lines if "waiting for the store lock" not in line)
    return code, out.getvalue(), told


def mixed_worker(
    root: str, w: int, plan: dict[str, Any], ops: int, out_dir: str, with_fsck: bool
) -> dict[str, Any]:
    """``ops`` operations chosen at random (seeded by the worker) on worker ``w``'s own
    images and tags, each through the command line's ``main`` in this process; returns
    what the store must show of them, and what happened."""
    rng = random.Random(f"mixed/{w}")
    tags: dict[str, str] = {}  # the worker's references -> image IDs, as they must be
    present: set[str] = set()  # the worker's images that must be stored
    unexpected: list[str] = []
    refused_loads: list[str] = []
    saves: list[tuple[str, str, str]] = []
    fscks: list[tuple[int, str]] = []
    mine = [f"w{w}/img:{k}" for k in range(MIXED_IMAGES)]

    def run(*args: str) -> tuple[int, str, str]:
        code, out, err = _run(root, *args)
        if code != 0 and args[0] != "load":
            unexpected.append(f"{' '.join(args)}: exit {code}: {err.strip()}")
        return code, out, err

    for op in range(ops):
        kinds = ["load", "load", "load", "tag", "rmi", "rmi-f", "save", "gc", "gc-0"]
        kind = rng.choice([*kinds, "fsck"] if with_fsck else kinds)
        if kind in ("tag", "rmi-f", "save") and not present:
            kind = "load"
        if kind == "rmi" and not tags:
            kind = "load"
        if kind == "load":
            name = rng.choice(mine)
            fmt = rng.choice(["docker", "oci-archive"])
            code, _, err = run("load", "-q", "-i", plan[name][fmt])
            if code == 0:
                tags[name] = plan[name]["id"]
                present.add(plan[name]["id"])
            else:
                # The one reason a load of a valid archive may fail here: another worker
                # removed a layer it shares, which this load found stored and skipped.
                lines = err.splitlines()
                if (
                    code != 1
                    or len(lines) != 1
                    or not lines[0].startswith("ocistore: ")
                    or not ("load again" in err or "removed" in err)
                ):
                    unexpected.append(f"load {plan[name][fmt]}: exit {code}: {err!r}")
                refused_loads.append(err.strip())
        elif kind == "tag":
            image_id = rng.choice(sorted(present))
            alias = f"w{w}/alias:{rng.randrange(3)}"
            if run("tag", image_id, alias)[0] == 0:
                tags[alias] = image_id
        elif kind == "rmi":
            ref = rng.choice(sorted(tags))
            if run("rmi", ref)[0] == 0:
                image_id = tags.pop(ref)
                if image_id not in tags.values():
                    present.discard(image_id)  # its last reference: the image goes
        elif kind == "rmi-f":
            image_id = rng.choice(sorted(present))
            if run("rmi", "-f", image_id)[0] == 0:
                present.discard(image_id)
                tags = {r: i for r, i in tags.items() if i != image_id}
        elif kind == "save":
            image_id = rng.choice(sorted(present))
            fmt = rng.choice(["docker", "oci-archive", "oci"])
            dest = str(Path(out_dir) / f"w{w}-op{op}.{fmt}")
            if run("save", "-q", "--format", fmt, "-o", dest, image_id)[0] == 0:
                saves.append((dest, fmt, image_id))
        elif kind == "gc":
            run("gc")
        elif kind == "gc-0":
            run("gc", "--grace", "0")  # must spare the files other loads are staging
        else:
            code, out, err = _run(root, "fsck", "-q")
            fscks.append((code, out + err))
    return {
        "tags": tags,
        "present": sorted(present),
        "unexpected": unexpected,
        "refused_loads": refused_loads,
        "saves": saves,
        "fscks": fscks,
    }


@pytest.mark.parametrize("with_fsck", [False, True], ids=["writers", "writers-and-fsck"])
def test_mixed_operations_of_several_processes(tmp_path: Path, with_fsck: bool) -> None:
    """Several processes load overlapping images (docker-archives and oci-archives that
    share layers and gzip blobs), tag, ``rmi``, ``rmi -f``, ``gc``, ``gc --grace 0``,
    (``fsck``) and save at once on one store. Afterwards: the independent reader finds
    nothing wrong and ``tmp/`` is empty; every operation that succeeded shows (each
    worker's tags and images are exactly what its own successful operations made them);
    every save that succeeded loads back as the image saved; every fsck reported
    nothing; fsck is clean."""
    plan = _mixed_archives(tmp_path / "made")
    root = tmp_path / "store"
    Store(root).close()
    saves_dir = tmp_path / "saves"
    saves_dir.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(MIXED_WORKERS) as pool:
        results = pool.starmap(
            mixed_worker,
            [
                (str(root), w, plan, MIXED_OPS, str(saves_dir), with_fsck)
                for w in range(MIXED_WORKERS)
            ],
            chunksize=1,
        )
    assert [u for r in results for u in r["unexpected"]] == []
    assert invariants.problems(root) == []
    assert invariants.tmp_is_empty(root), invariants.tmp_entries(root)
    stored = set(invariants.image_ids(root))
    refs = invariants.references(root)
    for w, r in enumerate(results):
        assert {t: i for t, i in refs.items() if t.startswith(f"w{w}/")} == r["tags"]
        theirs = {plan[f"w{w}/img:{k}"]["id"] for k in range(MIXED_IMAGES)}
        assert stored & theirs == set(r["present"])
    for r in results:
        for dest, _fmt, image_id in r["saves"]:
            with Store(tmp_path / f"check-{Path(dest).name}") as fresh:
                loaded = ocistore.load(fresh, dest)
                assert [x.id for x in loaded] == [image_id]
                assert fresh.fsck() == []
    if with_fsck:
        assert [f for r in results for f in r["fscks"] if f != (0, "")] == []
        assert sum(len(r["fscks"]) for r in results) > 0
    with Store(root) as store:
        assert store.fsck() == []
        store.gc()
        assert store.fsck() == []
    assert invariants.problems(root) == []
