"""The library as a Python user finds it: ``ocistore.open``, the public names, the one
progress interface, ``--version`` and ``python -m ocistore``; and the rule that only the
store package writes under a store's root."""

from __future__ import annotations

import hashlib
import io
import json
import pydoc
import subprocess
import sys
import tarfile
import textwrap
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
from util import make_tar

import ocistore
from ocistore.store.ingest import ImageSource, LayerSource

OCISTORE = Path(sys.executable).parent / "ocistore"
TAR_A = make_tar({"etc/a": b"alpha\n"}, dirs=True)
TAR_B = make_tar({"etc/b": b"beta\n" * 1000}, dirs=True)


def docker_archive(path: Path) -> Path:
    """A two-layer docker-archive tagged ``app:1``."""
    diff_ids = [
        ocistore.Digest(f"sha256:{__import__('hashlib').sha256(t).hexdigest()}")
        for t in (TAR_A, TAR_B)
    ]
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        [{"Config": "config.json", "RepoTags": ["app:1"], "Layers": ["a.tar", "b.tar"]}]
    ).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in [
            ("config.json", config),
            ("a.tar", TAR_A),
            ("b.tar", TAR_B),
            ("manifest.json", manifest),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_the_public_face(tmp_path: Path) -> None:
    assert ocistore.__version__ == version("ocistore")
    text = pydoc.render_doc(ocistore, renderer=pydoc.plaintext)
    for name in ("open", "load", "save", "Store", "Digest", "Reference", "OcistoreError"):
        assert name in ocistore.__all__
        assert name in text
    for verb in ("add_images", "image", "layers_of", "open_layer", "resolve", "remove", "gc"):
        assert getattr(ocistore.Store, verb).__doc__, verb


def test_open_load_walk_and_read_a_layer(tmp_path: Path) -> None:
    """What the README's library section shows."""
    archive = docker_archive(tmp_path / "app.tar")
    with ocistore.open(tmp_path / "store") as store:
        (loaded,) = ocistore.load(store, archive)
        assert [ref.familiar() for ref in loaded.tags] == ["app:1"]
        image = store.image("app:1")
        assert image.id == loaded.id
        layers = store.layers_of(image)
        assert [layer.size for layer in layers] == [len(TAR_A), len(TAR_B)]
        with store.open_layer(layers[1]) as tar:
            assert tar.read() == TAR_B
        with store.open_layer(layers[0]) as tar, tarfile.open(fileobj=tar, mode="r|") as tf:
            assert [m.name for m in tf] == ["etc", "etc/a"]
        ocistore.save(store, ["app:1"], tmp_path / "out.tar", format="oci-archive")
    with ocistore.open(tmp_path / "other") as other:
        (again,) = ocistore.load(other, tmp_path / "out.tar")
        assert again.id == loaded.id


def test_a_root_that_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ocistore.InvalidInput, match=f"{path}: not a directory"):
        ocistore.open(path)
    proc = subprocess.run([OCISTORE, "--root", path, "images"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr == f"ocistore: {path}: not a directory, cannot hold a store\n"


class Recorder:
    """A progress of a program's own (the protocol: ``task(label, total)``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, int | None]] = []

    def task(self, label: str, total: int | None = None) -> Recorder.Task:
        return Recorder.Task(self, label, total)

    class Task:
        def __init__(self, rec: Recorder, label: str, total: int | None) -> None:
            self.rec, self.label = rec, label
            with rec.lock:
                rec.events.append(("start", label, total))

        def update(self, done: int) -> None:
            with self.rec.lock:
                self.rec.events.append(("update", self.label, done))

        def finish(self) -> None:
            with self.rec.lock:
                self.rec.events.append(("finish", self.label, None))


def test_one_progress_interface_for_every_long_verb(tmp_path: Path) -> None:
    archive = docker_archive(tmp_path / "app.tar")
    with ocistore.open(tmp_path / "store") as store:
        rec = Recorder()
        ocistore.load(store, archive, progress=rec)
        # A layer is named by its short DiffID and a status, as docker load shows it.
        a, b = (f"{hashlib.sha256(t).hexdigest()[:12]}: Loading layer" for t in (TAR_A, TAR_B))
        labels = {label for kind, label, _ in rec.events if kind == "finish"}
        assert labels == {a, b}
        assert ("start", b, len(TAR_B)) in rec.events
        assert ("update", b, len(TAR_B)) in rec.events

        rec = Recorder()
        ocistore.save(store, ["app:1"], tmp_path / "out.tar", progress=rec)
        assert sum(1 for kind, _, _ in rec.events if kind == "finish") == 2

        rec = Recorder()
        store.import_tarball(io.BytesIO(TAR_B), "imported:1", source="b.tar", progress=rec)
        assert ("finish", "Loading layer", None) in rec.events  # (no digest known yet)


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    for argv in ([str(OCISTORE)], [sys.executable, "-m", "ocistore"]):
        proc = subprocess.run([*argv, "--version"], capture_output=True, text=True)
        assert proc.returncode == 0
        assert proc.stdout == f"ocistore {ocistore.__version__}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "ocistore", "--root", tmp_path / "s", "images", "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_an_image_source_of_ones_own(tmp_path: Path) -> None:
    """The one way in takes images from anywhere: here, a config made once the layer's
    DiffID is known, as import and commit make theirs."""
    with ocistore.open(tmp_path / "store") as store:

        def config(diff_ids: list[ocistore.DiffID]) -> bytes:
            return json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()

        layer = LayerSource(open=lambda: io.BytesIO(TAR_A), what="my layer")
        (loaded,) = store.add_images(
            [ImageSource(config, "my image", [layer], [ocistore.parse_reference("mine:1")])]
        )
        assert store.resolve("mine:1") == loaded.id
        assert store.image("mine:1").config.diff_ids == (
            ocistore.Digest(f"sha256:{__import__('hashlib').sha256(TAR_A).hexdigest()}"),
        )


_AUDIT = textwrap.dedent(
    """
    import io, os, sys
    from pathlib import Path
    root = os.path.realpath(sys.argv[1])
    bad = []
    WRITES = {"open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.mkdir",
              "os.rmdir", "os.chmod", "os.truncate", "shutil.rmtree", "os.link", "os.symlink"}

    def writes(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                return any(c in mode for c in "wxa+")
            return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        return event in WRITES

    def hook(event, args):
        if event not in WRITES or not args or not writes(event, args):
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        path = os.path.realpath(os.fsdecode(path))
        if not (path == root or path.startswith(root + os.sep)):
            return
        frame = sys._getframe(1)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            if module.startswith("ocistore"):
                if not module.startswith("ocistore.store"):
                    bad.append(f"{module} {event} {path}")
                return
            frame = frame.f_back

    import ocistore
    sys.addaudithook(hook)
    store = ocistore.open(root)
    for archive in sys.argv[2:]:
        ocistore.load(store, archive)
    with open(sys.argv[2], "rb") as f:
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(f.read())))
        ocistore.load(store, "-")
    store.import_tarball(io.BytesIO(b"\\0" * 1024), "imported:1")
    out = Path(root).parent / "out"
    ocistore.save(store, ["app:1"], out / "a.tar")
    ocistore.save(store, ["app:1"], out / "b.tar", format="oci-archive")
    ocistore.save(store, ["app:1"], out / "layout", format="oci")
    store.tag("app:1", "app:2")
    store.remove("app:1")
    store.remove("imported:1")
    store.gc(grace_seconds=0)
    store.fsck()
    print("\\n".join(bad))
    """
)


def test_only_the_store_package_writes_under_the_root(tmp_path: Path) -> None:
    """An audit hook sees every file ocistore opens for writing, renames or removes
    under the root during loads (from a file, a compressed file and a pipe), an import,
    saves, tag, rmi and gc: each must come from ``ocistore.store``."""
    import gzip

    archive = docker_archive(tmp_path / "app.tar")
    compressed = tmp_path / "app.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes()))
    (tmp_path / "out").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _AUDIT, tmp_path / "store", archive, compressed],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
    assert (tmp_path / "out" / "a.tar").exists() and (tmp_path / "out" / "layout").is_dir()
