"""How the command behaves on a terminal and with large input: progress shows on a
terminal only, and loading a large layer keeps memory flat."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path

from util import make_tar

OCISTORE = Path(sys.executable).parent / "ocistore"


def run_on_terminal(args: list[str]) -> tuple[int, str]:
    """Run ocistore with stdout and stderr on a pseudo-terminal; returns (code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execv(str(OCISTORE), [str(OCISTORE), *args])
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def docker_archive(path: Path, layer: Path) -> None:
    """A one-image docker-archive around a layer tar on disk (streamed, never in memory)."""
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    config = (
        b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers",'
        b'"diff_ids":["sha256:' + h.hexdigest().encode() + b'"]}}'
    )
    manifest = b'[{"Config":"config.json","RepoTags":["big:1"],"Layers":["layer.tar"]}]'
    with tarfile.open(path, "w") as tf:
        for name, data in (("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.add(layer, "layer.tar")


def small_archive(tmp_path: Path) -> Path:
    layer = tmp_path / "small-layer.tar"
    layer.write_bytes(make_tar({"data": os.urandom(1 << 20)}))
    archive = tmp_path / "img.tar"
    docker_archive(archive, layer)
    return archive


#: Starts ocistore and reports its exit code and peak RSS (KiB). It runs in a small
#: process of its own: a child's ru_maxrss counts its parent's memory at the fork (and
#: pytest's grows over a run), which would be measured instead of ocistore's.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_kib(args: list[str]) -> tuple[int, int]:
    """Run ocistore; returns its exit code and its own peak RSS (KiB, from wait4)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(OCISTORE), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_progress_shows_on_a_terminal_and_not_with_quiet(tmp_path: Path) -> None:
    archive = small_archive(tmp_path)
    root = tmp_path / "store"
    code, screen = run_on_terminal(["--root", str(root), "load", "-i", str(archive)])
    assert code == 0, screen
    assert "layer.tar" in screen and "/s" in screen  # per-layer bytes and rate
    assert "Loaded image: big:1" in screen
    code, screen = run_on_terminal(["--root", str(root), "load", "-q", "-i", str(archive)])
    assert code == 0, screen
    assert "/s" not in screen
    assert "Loaded image: big:1" in screen


def test_progress_stays_off_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    archive = small_archive(tmp_path)
    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "load", "-i", archive],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout == "Loaded image: big:1\n"


def test_loading_and_saving_a_large_layer_keeps_memory_flat(tmp_path: Path) -> None:
    """A 512 MiB layer goes in and out while the process stays well under 100 MiB."""
    size = 512 << 20
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tf, open("/dev/zero", "rb") as zero:
        info = tarfile.TarInfo("big")
        info.size = size
        tf.addfile(info, zero)
    archive = tmp_path / "img.tar"
    docker_archive(archive, layer)
    layer.unlink()
    root = str(tmp_path / "store")
    code, peak = peak_rss_kib(["--root", root, "load", "-q", "-i", str(archive)])
    assert code == 0
    assert peak < 100 * 1024, f"load: peak RSS {peak} KiB"
    archive.unlink()
    out = tmp_path / "out.tar"
    code, peak = peak_rss_kib(["--root", root, "save", "-q", "-o", str(out), "big:1"])
    assert code == 0
    assert peak < 100 * 1024, f"save: peak RSS {peak} KiB"
    assert out.stat().st_size > size
