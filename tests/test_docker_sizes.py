"""Sizes as Docker counts them, checked against a real Docker engine, and without one.

Docker's size of a layer is the sum of the ``size`` of every header Go's ``archive/tar``
returns as the layer is applied (moby's ``pkg/archive`` ``UnpackLayer``: ``size +=
hdr.Size``), an image's the sum over its chain. ocistore counts it once, while a layer is
staged (``content_size`` in its record), and shows it in ``inspect`` ``Size``, ``images``
SIZE and ``history`` SIZE. The layers here are crafted to hit each rule: a pax ``size``
record over the header's, GNU long names and links (not counted), hard links and
symlinks whose size field is not 0 (counted, without data), whiteouts and AUFS metadata
(counted before Docker skips them), sparse files in both GNU encodings (their logical
size), an empty tar. Each is imported by both (``docker import`` and ``ocistore
import``), and saved by Docker and loaded by ocistore; so are the session's images.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from docker_engine import DockerEngine
from util import make_tar

from ocistore.spec.tarscan import TarScanner
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"
BLOCK = 512


def _member(info: tarfile.TarInfo, data: bytes = b"", fmt: int = tarfile.GNU_FORMAT) -> bytes:
    out = info.tobuf(fmt, "utf-8", "surrogateescape")
    return out + data + bytes(-len(data) % BLOCK)


def _file(name: str, data: bytes, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return _member(info, data, fmt)


def _entry(name: str, kind: bytes, size: int = 0, linkname: str = "") -> bytes:
    """A header-only member whose size field says ``size`` (no data follows)."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _end(body: bytes) -> bytes:
    return body + bytes(2 * BLOCK)


def pax_size_override() -> tuple[bytes, int]:
    """A member whose ustar size field says 0 and whose pax ``size`` record says 5 (the
    record wins, for the data and for the count), and a pax name that is not ASCII."""
    pax = tarfile.TarInfo._create_pax_generic_header(  # type: ignore[attr-defined]
        {"size": "5"}, tarfile.XHDTYPE, "utf-8"
    )
    overridden = pax + _entry("five", tarfile.REGTYPE, 0) + b"12345".ljust(BLOCK, b"\x00")
    return _end(overridden + _file("ünïcode-é", b"x" * 700, tarfile.PAX_FORMAT)), 705


def gnu_long_names() -> tuple[bytes, int]:
    """GNU long name and long link entries (``L``, ``K``: not members, not counted)."""
    long_dir = "d" * 90 + "/" + "e" * 90
    body = _entry(long_dir, tarfile.DIRTYPE)
    body += _file(long_dir + "/" + "f" * 120, b"y" * 10)
    info = tarfile.TarInfo("link-with-a-long-target")
    info.type, info.linkname = tarfile.SYMTYPE, "/" + "t" * 200
    body += _member(info)
    return _end(body), 10


def links_with_sizes() -> tuple[bytes, int]:
    """A hard link and a symlink whose size fields are not 0: no data follows them, and
    Docker counts the fields (Go keeps ``hdr.Size`` for header-only types)."""
    body = _file("target", b"abcd", tarfile.USTAR_FORMAT)
    body += _entry("plain-link", tarfile.LNKTYPE, 0, "target")
    body += _entry("sized-link", tarfile.LNKTYPE, 7, "target")
    body += _entry("sized-symlink", tarfile.SYMTYPE, 3, "target")
    body += _entry("dir", tarfile.DIRTYPE, 0)
    return _end(body), 4 + 7 + 3


def whiteouts() -> tuple[bytes, int]:
    """Whiteouts, an opaque directory and AUFS metadata, some with data: counted before
    Docker acts on them (and skips them)."""
    body = _entry("d", tarfile.DIRTYPE)
    body += _file("d/.wh.gone", b"xyz", tarfile.USTAR_FORMAT)
    body += _file("d/.wh..wh..opq", b"", tarfile.USTAR_FORMAT)
    body += _file("d/kept", b"k" * 11, tarfile.USTAR_FORMAT)
    body += _entry(".wh..wh.plnk", tarfile.DIRTYPE)
    body += _file(".wh..wh.aufs", b"meta", tarfile.USTAR_FORMAT)
    return _end(body), 3 + 11 + 4


def sparse(tar_format: str, tmp: Path) -> tuple[bytes, int]:
    """A sparse file of 4 MiB with six data extents (more than an old GNU header holds,
    so its map goes on in an extension block), made by GNU tar in ``tar_format``
    (``gnu``: old GNU sparse headers; ``posix``: pax 1.0 records)."""
    tar = shutil.which("tar")
    version = subprocess.run([tar, "--version"], capture_output=True).stdout if tar else b""
    if tar is None or b"GNU tar" not in version:
        if os.environ.get("CI") == "true":
            pytest.fail("GNU tar is needed to craft sparse files")
        pytest.skip("GNU tar is needed to craft sparse files")
    src = tmp / f"sparse-{tar_format}"
    src.mkdir()
    size = 4 << 20
    with open(src / "holes", "wb") as f:
        f.truncate(size)
        for i in range(6):
            f.seek(i * (600 << 10))
            f.write(b"data" * 256)
    out = subprocess.run(
        [
            tar,
            "--sparse",
            f"--format={tar_format}",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "-C",
            str(src),
            "-cf",
            "-",
            "holes",
        ],
        capture_output=True,
        check=True,
    ).stdout
    return out, size


def empty() -> tuple[bytes, int]:
    return bytes(2 * BLOCK), 0


#: What Docker 20.10 does with a crafted layer beyond counting it: ``docker save`` cannot
#: give back a layer whose tar its tar-split cannot rebuild from the files it applied (a
#: link with a size, a whiteout, a sparse file), and it refuses old GNU sparse members
#: outright (``unhandled tar header type 83``), which ocistore keeps as it always did.
NO_SAVE = frozenset(("links", "whiteouts", "sparse-pax"))
DOCKER_REFUSES = {"sparse-gnu": "unhandled tar header type 83"}


CRAFTED: dict[str, Callable[[Path], tuple[bytes, int]]] = {
    "pax": lambda _: pax_size_override(),
    "gnu-long-names": lambda _: gnu_long_names(),
    "links": lambda _: links_with_sizes(),
    "whiteouts": lambda _: whiteouts(),
    "sparse-gnu": lambda tmp: sparse("gnu", tmp),
    "sparse-pax": lambda tmp: sparse("posix", tmp),
    "empty": lambda _: empty(),
    "files": lambda _: (make_tar({"a/b": b"b" * 1000, "c": b"c" * 3000}, dirs=True), 4000),
}


# -- without Docker ---------------------------------------------------------------------


def _scan(data: bytes, piece: int) -> int:
    scanner = TarScanner("layer", layer=True)
    for i in range(0, len(data), piece):
        scanner.feed(data[i : i + piece])
    scanner.finish()
    return scanner.content_size


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_content_size_of_crafted_layers(kind: str, tmp_path: Path) -> None:
    """The scanner's count is Docker's, however the bytes are cut; staging records it."""
    data, expected = CRAFTED[kind](tmp_path)
    for piece in (1, 511, 4096, len(data)):
        if piece == 1 and len(data) > 200_000:
            continue
        assert _scan(data, piece) == expected, piece
    store = Store(tmp_path / "store")
    layer = store.register_layer(io.BytesIO(data))
    assert (layer.size, layer.content_size) == (len(data), expected)
    assert store.layers.get(layer.chain_id).content_size == expected
    record = json.loads(next((tmp_path / "store" / "layerdb").rglob("layer.json")).read_bytes())
    assert record["content_size"] == expected and record["size"] == len(data)


def test_a_layer_is_read_as_docker_reads_it(tmp_path: Path) -> None:
    """Go's reader takes the end of the stream at a header for the end of the archive;
    a layer cut inside a member is refused, naming the layer, its blob checked first."""
    data, _ = links_with_sizes()
    assert _scan(data[: -2 * BLOCK], BLOCK) == 14
    store = Store(tmp_path / "store")
    cut = _file("f", b"z" * 5000)[:2048]
    with pytest.raises(Exception, match=r"layer: archive is truncated in f"):
        store.register_layer(io.BytesIO(cut))


def _strip_content_sizes(root: Path) -> None:
    """Make the store's layer records what an older ocistore wrote (no content_size)."""
    for path in (root / "layerdb").rglob("layer.json"):
        record = json.loads(path.read_bytes())
        record.pop("content_size")
        path.chmod(0o644)
        path.write_text(json.dumps(record, sort_keys=True))


def test_a_store_from_before_content_sizes(tmp_path: Path) -> None:
    """Records without ``content_size`` show their tar's length, read-only or not (as
    before); an index of version 2 (tar lengths) is rebuilt; ``fsck`` says so and
    ``fsck --repair`` counts them from the verified layers and records them."""
    root = tmp_path / "store"
    data, expected = whiteouts()
    tar = tmp_path / "w.tar"
    tar.write_bytes(data)
    env = {**os.environ, "OCISTORE_ROOT": str(root)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OCISTORE, *args], capture_output=True, text=True, env=env)

    assert run("import", str(tar), "t-sizes/old:1").returncode == 0
    assert json.loads(run("inspect", "t-sizes/old:1").stdout)[0]["Size"] == expected
    _strip_content_sizes(root)
    index = root / "imagedb" / "index.json"
    doc = json.loads(index.read_bytes())
    doc["version"] = 2
    index.write_text(json.dumps(doc))
    assert json.loads(run("inspect", "t-sizes/old:1").stdout)[0]["Size"] == len(data)
    assert json.loads(index.read_bytes())["version"] == 3  # rebuilt
    check = run("fsck")
    assert check.returncode == 1 and "has no content size" in check.stderr + check.stdout
    repaired = run("fsck", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"recorded its content size, {expected} bytes" in repaired.stdout + repaired.stderr
    assert json.loads(run("inspect", "t-sizes/old:1").stdout)[0]["Size"] == expected
    assert run("fsck").returncode == 0


# -- against Docker ---------------------------------------------------------------------


def _ocistore(root: Path, *args: str | Path, input: bytes | None = None) -> str:
    env = {**os.environ, "OCISTORE_ROOT": str(root)}
    proc = subprocess.run([OCISTORE, *map(str, args)], capture_output=True, input=input, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def docker_sizes(engine: DockerEngine, name: str) -> dict[str, object]:
    def out(*args: str) -> list[str]:
        return engine.run(*args).stdout.splitlines()

    return {
        "inspect": int(out("image", "inspect", "-f", "{{.Size}}", name)[0]),
        "images": out("images", "--format", "{{.Size}}", name),
        "history": out("history", "--format", "{{.Size}}", name),
        "history bytes": out("history", "-H=false", "--format", "{{.Size}}", name),
    }


def ocistore_sizes(root: Path, name: str) -> dict[str, object]:
    def rows(*args: str) -> list[str]:
        return [json.loads(line)["Size"] for line in _ocistore(root, *args).splitlines()]

    return {
        "inspect": json.loads(_ocistore(root, "inspect", name))[0]["Size"],
        "images": _ocistore(root, "images", "--format", "{{.Size}}", name).splitlines(),
        "history": rows("history", "--format", "json", name),
        "history bytes": [str(s) for s in rows("history", "-H=false", "--format", "json", name)],
    }


def test_session_images_sizes(
    docker_engine: DockerEngine, docker_images: object, tmp_path: Path
) -> None:
    """``docker save`` of the images Docker built (busybox and its symlinks, a hard link,
    a whiteout in the child), ``ocistore load``: the same sizes everywhere."""
    names = ["lab/imported:1", "lab/built:1", "lab/child:1"]
    archive = tmp_path / "lab.tar"
    docker_engine.run("save", "-o", archive, *names)
    root = tmp_path / "store"
    _ocistore(root, "load", "-q", "-i", archive)
    for name in names:
        assert ocistore_sizes(root, name) == docker_sizes(docker_engine, name), name


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_layers_sizes(docker_engine: DockerEngine, kind: str, tmp_path: Path) -> None:
    """``docker import`` and ``ocistore import`` of the same tar; then ``docker save`` of
    Docker's image into ``ocistore load``: the sizes are Docker's, and the count is the
    one documented for the tar."""
    data, expected = CRAFTED[kind](tmp_path)
    name = f"t-sizes/{kind}:1"
    tar = tmp_path / "layer.tar"
    tar.write_bytes(data)
    imported = tmp_path / "imported"
    _ocistore(imported, "import", tar, name)
    if kind in DOCKER_REFUSES:
        refused = docker_engine.run("import", tar, name, check=False)
        assert refused.returncode != 0 and DOCKER_REFUSES[kind] in refused.stderr
        assert ocistore_sizes(imported, name)["inspect"] == expected
        return
    docker_engine.run("import", tar, name)
    try:
        want = docker_sizes(docker_engine, name)
        assert want["inspect"] == expected
        assert ocistore_sizes(imported, name) == want
        if kind in NO_SAVE:
            return
        archive = tmp_path / "saved.tar"
        docker_engine.run("save", "-o", archive, name)
        loaded = tmp_path / "loaded"
        _ocistore(loaded, "load", "-q", "-i", archive)
        assert ocistore_sizes(loaded, name) == want
    finally:
        docker_engine.run("rmi", name, check=False)
