"""``ocistore load`` and ``ocistore save`` end to end, as real processes."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import require_tool
from util import CORPUS, make_tar, snapshot

OCISTORE = Path(sys.executable).parent / "ocistore"


def interruptible() -> None:
    """For a child that the test interrupts: SIGINT as a terminal gives it. A shell runs
    a background job (a CI runner may) with SIGINT ignored, and children inherit that;
    Python then installs no KeyboardInterrupt handler."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(
    root: Path, *args: str | Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [OCISTORE, "--root", root, *args], input=stdin, capture_output=True, check=False
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A store holding one imported image, ``app:v1``."""
    root = tmp_path / "store"
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(make_tar({"etc/hostname": b"app\n", "bin/tool": b"\x7fELF" * 1000}))
    assert run(root, "import", tarball, "app:v1").returncode == 0
    return root


def image_id(root: Path, name: str) -> str:
    proc = run(root, "images", "-q", "--no-trunc", name)
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.decode().split()
    assert len(ids) == 1
    return ids[0]


@pytest.mark.parametrize("fmt", ["docker", "oci-archive"])
def test_save_to_stdout_loads_from_stdin(root: Path, tmp_path: Path, fmt: str) -> None:
    saved = run(root, "save", "--format", fmt, "-o", "-", "app:v1")
    assert saved.returncode == 0, saved.stderr
    assert saved.stderr == b""
    other = tmp_path / "other"
    loaded = run(other, "load", "-i", "-", stdin=saved.stdout)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.decode().splitlines() == ["Loaded image: app:v1"]
    assert image_id(other, "app:v1") == image_id(root, "app:v1")
    assert list((other / "tmp").iterdir()) == []


def test_skopeo_into_a_pipe_as_the_readme_shows(root: Path, tmp_path: Path) -> None:
    """The README's and ``load --help``'s example: ``skopeo copy -q SRC
    docker-archive:/dev/stdout:REF | ocistore load -i -`` (skopeo 1.9 cannot write an
    oci-archive into a pipe, and without ``-q`` prints its progress into it)."""
    layout = tmp_path / "layout"
    assert run(root, "save", "--format", "oci", "-o", layout, "app:v1").returncode == 0
    other = tmp_path / "other"
    skopeo = require_tool("skopeo")
    pipeline = (
        f"{skopeo} --insecure-policy copy -q oci:{layout}:v1"
        " docker-archive:/dev/stdout:example/piped:1"
        f" | {OCISTORE} --root {other} load -i -"
    )
    proc = subprocess.run(["sh", "-c", pipeline], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Loaded image: example/piped:1\n"
    assert image_id(other, "example/piped:1") == image_id(root, "app:v1")


def test_save_oci_directory_and_load_it(root: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert run(root, "save", "--format", "oci", "-o", layout, "app:v1").returncode == 0
    assert (layout / "oci-layout").is_file() and (layout / "index.json").is_file()
    other = tmp_path / "other"
    proc = run(other, "load", "-i", layout)
    assert proc.returncode == 0, proc.stderr
    assert image_id(other, "app:v1") == image_id(root, "app:v1")


def test_gzipped_docker_archive_loads(root: Path, tmp_path: Path) -> None:
    import gzip

    saved = run(root, "save", "-o", "-", "app:v1").stdout
    other = tmp_path / "other"
    proc = run(other, "load", "-i", "-", stdin=gzip.compress(saved))
    assert proc.returncode == 0, proc.stderr
    assert image_id(other, "app:v1") == image_id(root, "app:v1")


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"garbage that is not a tar" * 40, "not a tar"),
        (b"BZh91AY&SY" + bytes(600), "bzip2"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    root: Path, tmp_path: Path, content: bytes, expected: str
) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(content)
    before = snapshot(root)
    err = one_line_error(run(root, "load", "-i", bad))
    assert str(bad) in err and expected in err
    assert snapshot(root) == before


def test_null_manifest_from_the_corpus(root: Path) -> None:
    path = CORPUS / "docker-archive" / "null_manifest.tar"
    before = snapshot(root)
    err = one_line_error(run(root, "load", "-i", path))
    assert "manifest.json" in err and "null" in err
    assert snapshot(root) == before


def test_truncated_archive_from_stdin(root: Path, tmp_path: Path) -> None:
    saved = run(root, "save", "-o", "-", "app:v1").stdout
    other = tmp_path / "other"
    run(other, "images")  # an empty store
    before = snapshot(other)
    err = one_line_error(run(other, "load", "-i", "-", stdin=saved[: len(saved) // 2]))
    assert "truncated" in err or "missing" in err
    assert snapshot(other) == before


def test_missing_input_and_unknown_image(root: Path, tmp_path: Path) -> None:
    err = one_line_error(run(root, "load", "-i", tmp_path / "nope.tar"))
    assert "nope.tar" in err
    out = tmp_path / "out.tar"
    err = one_line_error(run(root, "save", "-o", out, "missing:image"))
    assert "missing:image" in err
    assert not out.exists()
    assert list(tmp_path.glob(".out.tar*")) == []


def test_bad_platform_is_an_error(root: Path) -> None:
    layout = CORPUS / "oci-layout" / "test_index"
    err = one_line_error(run(root, "load", "--platform", "linux", "-i", layout))
    assert "platform" in err


def test_usage_errors_exit_2(root: Path) -> None:
    proc = run(root, "load", "--platform")
    assert proc.returncode == 2
    proc = run(root, "save", "app:v1")
    assert proc.returncode == 2
    proc = run(root, "save", "--format", "tarball", "-o", "-", "app:v1")
    assert proc.returncode == 2


def test_saved_docker_archive_has_the_legacy_layout(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    assert run(root, "save", "-o", out, "app:v1").returncode == 0
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert "manifest.json" in names and "repositories" in names
    assert any(n.endswith("/layer.tar") for n in names)
    assert any(n.endswith("/VERSION") for n in names)


def _zeros_layer(size: int) -> tuple[bytes, str]:
    """A zstd tar holding one file of ``size`` zero bytes (small on disk, long to stage),
    and its DiffID."""
    import hashlib

    import zstandard

    info = tarfile.TarInfo("zeros")
    info.size = size
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    piece = bytes(1 << 20)
    diff = hashlib.sha256(header)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        w.write(header)
        for _ in range(size // len(piece)):
            w.write(piece)
            diff.update(piece)
        end = bytes(1024)  # size is a multiple of 512: no padding, just the end blocks
        w.write(end)
        diff.update(end)
    return out.getvalue(), "sha256:" + diff.hexdigest()


def test_ctrl_c_during_a_load_leaves_the_store_as_it_was(root: Path, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import time

    layers = [_zeros_layer(512 << 20) for _ in range(2)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
    ).encode()
    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        members = {"config.json": config, "manifest.json": b""}
        for i, (blob, _) in enumerate(layers):
            members[f"l{i}.tar"] = blob
        members["manifest.json"] = json.dumps(
            [{"Config": "config.json", "RepoTags": ["big:1"], "Layers": ["l0.tar", "l1.tar"]}]
        ).encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    before = snapshot(root)
    proc = subprocess.Popen(
        [OCISTORE, "--root", root, "load", "-q", "-i", archive],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    # Interrupt once both layers are being staged (their files appear in tmp/); with one
    # CPU they are staged one after the other.
    staging = min(2, os.cpu_count() or 1)
    while len(os.listdir(root / "tmp")) < staging and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the load ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert err.decode() == "ocistore: interrupted\n"
    assert out == b""
    assert os.listdir(root / "tmp") == []  # the layers being staged were discarded
    assert snapshot(root) == before


def _docker_archive_of_layers(path: Path, layers: list[bytes], tag: str) -> Path:
    import hashlib
    import json

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers],
            },
        }
    ).encode()
    names = [f"l{i}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": "c.json", "RepoTags": [tag], "Layers": names}]).encode()
    with tarfile.open(path, "w") as tf:
        members = [
            ("c.json", config),
            *zip(names, layers, strict=True),
            ("manifest.json", manifest),
        ]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_a_load_of_many_layers_needs_no_file_per_layer(tmp_path: Path) -> None:
    """Staged layers are not kept open until they are published: 120 layers load with a
    limit of 64 open files."""
    import resource

    layers = [make_tar({f"f{i}": str(i).encode()}) for i in range(120)]
    archive = _docker_archive_of_layers(tmp_path / "many.tar", layers, "many:1")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "load", "-q", "-i", archive],
        capture_output=True,
        preexec_fn=limit,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Loaded image: many:1\n"


def test_save_to_a_file_keeps_the_umask(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "private.tar"
    proc = subprocess.run(
        [OCISTORE, "--root", root, "save", "-o", out, "app:v1"],
        capture_output=True,
        preexec_fn=lambda: os.umask(0o077),
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_ctrl_c_reaches_an_import_waiting_on_its_input(tmp_path: Path) -> None:
    """The input stalls (a pipe that stays open): Ctrl-C stops the import at once, and
    what it had staged is removed."""
    root = tmp_path / "store"
    tar = make_tar({"big": os.urandom(1 << 20)})
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [OCISTORE, "--root", root, "import", "-q", "-", "stalled:1"],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    os.close(read_end)
    os.write(write_end, tar[: 200 << 10])  # part of it, then nothing more
    while not any((root / "tmp").glob("*.blob")) and proc.poll() is None:
        time.sleep(0.005)  # the import has its blob file: it is copying
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 130, err.decode()
    assert err.decode() == "ocistore: interrupted\n"
    assert os.listdir(root / "tmp") == []


def test_ctrl_c_reaches_a_save_waiting_on_its_output(root: Path, tmp_path: Path) -> None:
    """The reader of ``save -o -`` stops reading (the pipe fills): Ctrl-C stops the save."""
    big = tmp_path / "big.tar"
    big.write_bytes(make_tar({"big": os.urandom(4 << 20)}))
    assert run(root, "import", big, "big:1").returncode == 0
    proc = subprocess.Popen(
        [OCISTORE, "--root", root, "save", "-q", "-o", "-", "big:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(1)  # it writes; the rest (MiBs) fills the pipe, unread
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read().decode() == "ocistore: interrupted\n"
    proc.stdout.close()
    proc.stderr.close()
