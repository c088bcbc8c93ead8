"""unpack, export, commit and diff checked against the real peers: umoci, Docker, podman.

One realistic three-layer image is made here, its tars written member by member with
:mod:`tarfile` (:func:`base_layers`), and loaded into an ocistore store. Then:

* umoci's ``unpack --rootless`` of it (through ``skopeo copy`` to an OCI layout) and
  ocistore's are walked and compared path by path;
* ``docker export`` of a container created from it (``docker load`` of ``ocistore save``)
  and ``ocistore export`` are compared member by member;
* ``ocistore commit`` of changes made in an unpacked tree and a ``docker build`` making
  the same changes in a ``RUN`` step are both exported by Docker and compared;
* ``ocistore commit`` of an unchanged tree against ``umoci repack`` of one;
* ``ocistore diff`` against ``podman image diff``.

Each difference a peer has is listed with the reason it is allowed; everything else
must be equal. They are:

* umoci writes a rootless owner's 0 as the proto's NoopID (uint32 -1), ocistore leaves
  it out (both decode to the same owner), and umoci sets the epoch on rootfs/ itself;
* docker export has the container's init layer (mount points, ``.dockerenv``), which
  also moves etc/'s mtime;
* an unchanged tree: ocistore commit, umoci repack and docker commit add no layer, a
  history entry ``empty_layer`` only;
* podman image diff lists every directory above a change and never a directory's
  mtime; ocistore diff compares each path's own state, mtime included.

Hard links to a file a higher layer replaced, and the owners umoci writes, are checked
at the end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import Runner, require_tool
from docker_engine import DockerEngine, static_busybox
from util import ocistore_cli

from ocistore.spec.platform import host_platform

#: The image's name, and the times of its layers (PAX records with nanoseconds).
BASE = "peers/base:1"
MTIME1 = "1700000000.123456789"
MTIME2 = "1700086400.5"
MTIME3 = "1700172800.000000001"
#: A few files' own times.
MTIME_NOTES = "1600000000.987654321"


# -- the image ------------------------------------------------------------------------------


def blob(name: str, size: int) -> bytes:
    """Deterministic content of ``size`` bytes for ``name``."""
    seed = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


class LayerTar:
    """A layer's tar, member by member, as real tools write one (PAX, parents first)."""

    def __init__(self, mtime: str) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(  # noqa: SIM115 (closed by bytes())
            fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT
        )
        self.mtime = mtime

    def _add(
        self,
        name: str,
        kind: bytes,
        mode: int,
        uid: int,
        gid: int,
        mtime: str | None,
        data: bytes | None = None,
        link: str = "",
    ) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.linkname = link
        when = mtime or self.mtime
        seconds, _, fraction = when.partition(".")
        info.mtime = int(seconds)
        if fraction:  # the fraction only a PAX record holds (as Go's archive/tar writes it)
            info.pax_headers = {"mtime": when}
        if data is not None:
            info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)

    def dir(
        self, name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0, mtime: str | None = None
    ) -> None:
        self._add(name, tarfile.DIRTYPE, mode, uid, gid, mtime)

    def file(
        self,
        name: str,
        data: bytes,
        mode: int = 0o644,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: str | None = None,
    ) -> None:
        self._add(name, tarfile.REGTYPE, mode, uid, gid, mtime, data)

    def symlink(
        self, name: str, target: str, *, uid: int = 0, gid: int = 0, mtime: str | None = None
    ) -> None:
        self._add(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime, link=target)

    def hardlink(
        self,
        name: str,
        target: str,
        mode: int,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: str | None = None,
    ) -> None:
        """A hard link; its header has the target's metadata, as a tar of a tree has."""
        self._add(name, tarfile.LNKTYPE, mode, uid, gid, mtime, link=target)

    def fifo(self, name: str, mode: int = 0o600) -> None:
        self._add(name, tarfile.FIFOTYPE, mode, 0, 0, None)

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        self.file(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")

    def opaque(self, directory: str) -> None:
        self.file(f"{directory}/.wh..wh..opq", b"")

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


#: Documentation packages in layer 1: three files each.
PACKAGES = [f"pkg{n:02}" for n in range(50)]
DEEP = "/".join(f"d{n:02}-deeper" for n in range(16))
UNI = "usr/share/doc/ünïcødé"


def base_layers(busybox: bytes | None, replace_linked: bool = False) -> list[bytes]:
    """The three layers of the test image (``busybox``, when there is one, as its shell);
    with ``replace_linked``, layer 3 replaces the file layers 1 and 2 link to."""
    one = LayerTar(MTIME1)
    one.dir("bin")
    if busybox is not None:
        one.file("bin/busybox", busybox, 0o755)
        one.symlink("bin/sh", "busybox")
    one.dir("etc")
    one.dir("etc/alternatives")
    one.symlink("etc/alternatives/editor", "/usr/bin/vi")  # absolute, dangling
    one.symlink("etc/alternatives/pager", "/bin/busybox")  # absolute
    one.dir("etc/conf.d")
    one.file("etc/conf.d/a.conf", b"a=1\n")
    one.file("etc/conf.d/b.conf", b"b=2\n")
    one.file(
        "etc/group",
        b"root:x:0:\ntty:x:5:\nshadow:x:42:\nstaff:x:50:\nuser:x:1000:\n",
    )
    one.file("etc/motd", b"layer one\n")
    one.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    one.file("etc/shadow", b"root:*:19000::::::\n", 0o640, gid=42)
    one.dir("home")
    one.dir("home/user", 0o750, uid=1000, gid=1000)
    one.file("home/user/.profile", b"PS1='$ '\n", uid=1000, gid=1000)
    one.symlink("home/user/.shrc", ".profile", uid=1000, gid=1000)
    one.file("home/user/notes.txt", b"mine\n", 0o600, uid=1000, gid=1000, mtime=MTIME_NOTES)
    one.dir("mnt")  # empty, in every layer after
    one.dir("opt")
    one.dir("opt/app")
    one.dir("opt/app/bin")
    one.file("opt/app/bin/run", b"#!/bin/sh\necho run\n", 0o755)
    one.dir("opt/app/lib")
    one.file("opt/app/lib/libapp.so", blob("libapp", 5000))
    one.file("opt/app/README", b"the app\n")
    one.dir("run")
    one.fifo("run/initctl")
    one.dir("srv")
    one.dir("srv/shared", 0o2775, gid=50)  # setgid directory
    one.file("srv/shared/file", b"shared\n", 0o664, gid=50)
    one.file("srv/thing", b"a file, a directory in layer 2\n")
    one.dir("tmp", 0o1777)
    one.dir("usr")
    one.dir("usr/bin")
    one.file("usr/bin/su", blob("su", 3000), 0o4755)
    one.file("usr/bin/wall", blob("wall", 2000), 0o2755, gid=5)
    one.file("usr/bin/both", blob("both", 1000), 0o6750, gid=50)
    one.file("usr/bin/tool", blob("tool", 4000), 0o755)
    one.hardlink("usr/bin/tool-hl", "usr/bin/tool", 0o755)
    one.dir("usr/lib")
    one.file("usr/lib/big.bin", blob("big", (3 << 19) + 123))  # 1.5 MiB and a bit
    one.file("usr/lib/libx.so.1.2.3", blob("libx", 7000))
    one.symlink("usr/lib/libx.so.1", "libx.so.1.2.3")
    one.symlink("usr/lib/libx.so", "../lib/libx.so.1")
    one.dir("usr/share")
    one.dir("usr/share/doc")
    for pkg in PACKAGES:
        one.dir(f"usr/share/doc/{pkg}")
        one.file(f"usr/share/doc/{pkg}/README", f"{pkg}\n".encode())
        one.file(f"usr/share/doc/{pkg}/changelog", blob(pkg, 600 + len(pkg) * 37))
        one.file(f"usr/share/doc/{pkg}/copyright", b"GPL\n" * 10)
    one.dir(UNI)
    one.file(f"{UNI}/файл.txt", "привет\n".encode())
    one.file(f"{UNI}/日本語.md", "こんにちは\n".encode())
    one.file(f"{UNI}/🐳 space.txt", b"whale\n")
    one.hardlink(f"{UNI}/straße-hl", f"{UNI}/файл.txt", 0o644)
    one.symlink(f"{UNI}/ссылка", "файл.txt")
    one.dir("var")
    one.dir("var/cache")
    one.dir("var/cache/apt")
    one.dir("var/cache/apt/archives")
    one.dir("var/cache/apt/archives/partial", 0o700)
    one.file("var/cache/apt/pkgcache.bin", blob("pkgcache", 9000))
    one.dir("var/empty")
    one.dir("var/log")
    one.file("var/log/keep.log", b"kept\n", 0o640)
    one.file("var/log/old.log", b"old\n", 0o640)
    one.dir("var/tmp", 0o1777)
    parts = DEEP.split("/")
    for n in range(1, len(parts) + 1):
        one.dir("/".join(parts[:n]))
    one.file(f"{DEEP}/leaf.txt", b"deep\n")

    two = LayerTar(MTIME2)
    two.dir("etc")
    two.file("etc/conf.d", b"a file where a directory was\n")  # a directory replaced
    two.file("etc/motd", b"layer two\n")
    two.dir("home")
    two.dir("home/user", 0o750, uid=1000, gid=1000)
    two.dir("home/user/.cache", 0o700, uid=1000, gid=1000)
    two.file("home/user/.cache/tmp.bin", blob("cache", 100), uid=1000, gid=1000)
    two.dir("srv")
    two.dir("srv/thing")  # a file replaced by a directory
    two.file("srv/thing/inner.txt", b"inside\n")
    two.dir("usr")
    two.dir("usr/bin")
    two.hardlink("usr/bin/tool-hl2", "usr/bin/tool", 0o755, mtime=MTIME1)  # to layer 1's file
    two.file("usr/bin/new", blob("new", 2500), 0o755)
    two.hardlink("usr/bin/new-hl", "usr/bin/new", 0o755)
    two.dir("usr/share")
    two.dir("usr/share/doc")
    two.dir("usr/share/doc/pkg07")
    two.whiteout("usr/share/doc/pkg07/changelog")
    two.dir("var")
    two.whiteout("var/cache")  # a directory and what is below it
    two.dir("var/log")
    two.whiteout("var/log/old.log")  # a file

    three = LayerTar(MTIME3)
    three.dir("etc")
    three.file(  # only its mode changes
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        0o600,
        mtime=MTIME1,
    )
    # Without its parents (as umoci repack and ocistore commit write a layer).
    three.dir("home/user/.cache", 0o700, uid=1000, gid=1000)
    three.whiteout("home/user/.cache/tmp.bin")  # what layer 2 added
    three.dir("opt")
    three.dir("opt/app", 0o750)
    three.opaque("opt/app")
    three.dir("opt/app/bin")
    three.file("opt/app/bin/run2", b"#!/bin/sh\necho run2\n", 0o755)
    three.file("opt/app/NEW", b"what the opaque directory holds\n")
    three.dir("usr")
    three.dir("usr/bin")
    if replace_linked:
        # A new file where layer 1's tool was: tool-hl and tool-hl2 keep the old content.
        three.file("usr/bin/tool", blob("tool v2", 4100), 0o755)
    three.dir("usr/lib")
    three.file("usr/lib/libx.so.1.2.4", blob("libx 2", 7100))
    three.symlink("usr/lib/libx.so.1", "libx.so.1.2.4")
    return [one.bytes(), two.bytes(), three.bytes()]


def docker_archive(layers: list[bytes], tag: str) -> bytes:
    """A docker-archive (``docker save``'s format) of an image of ``layers``."""
    platform = host_platform()
    config = {
        "architecture": platform.architecture,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "created": "2023-11-16T22:13:20Z",
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers],
        },
        "history": [
            {"created": "2023-11-16T22:13:20Z", "created_by": f"layer {n}"}
            for n in range(1, len(layers) + 1)
        ],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    names = [f"{hashlib.sha256(t).hexdigest()}/layer.tar" for t in layers]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
    files = {config_name: config_bytes, "manifest.json": json.dumps(manifest).encode()}
    files.update(zip(names, layers, strict=True))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def load_image(root: Path, work: Path, name: str, layers: list[bytes]) -> Path:
    """Load an image of ``layers`` named ``name`` into the store at ``root``; the
    docker-archive ``ocistore save`` writes of it."""
    slug = name.replace("/", "-").replace(":", "-")
    source = work / f"{slug}.source.tar"
    source.write_bytes(docker_archive(layers, name))
    ocistore_cli("--root", root, "load", "-q", "-i", source)
    saved = work / f"{slug}.saved.tar"
    ocistore_cli("--root", root, "save", "-q", "-o", saved, name)
    return saved


@dataclass
class Base:
    """The test image in an ocistore store."""

    root: Path
    image_id: str
    diff_ids: list[str]
    #: ``ocistore save`` of it (a docker-archive).
    archive: Path
    #: Whether its layer 1 has a static busybox as ``/bin/sh``.
    has_shell: bool
    work: Path

    def oc(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ocistore_cli("--root", self.root, *args, check=check)


def _busybox() -> bytes | None:
    """The static busybox, or None where there is none (CI=true fails here instead)."""
    try:
        return static_busybox().read_bytes()
    except pytest.skip.Exception:
        return None  # (only the test that runs a shell in it skips)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    busybox = _busybox()
    work = tmp_path_factory.mktemp("peers")
    root = work / "store"
    layers = base_layers(busybox)
    archive = load_image(root, work, BASE, layers)
    image_id = ocistore_cli("--root", root, "inspect", "-f", "{{.Id}}", BASE).stdout.strip()
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    yield Base(root, image_id, diff_ids, archive, busybox is not None, work)
    assert list((root / "tmp").iterdir()) == []  # nothing left behind by any command


@pytest.fixture(scope="module")
def variant(base: Base) -> Path:
    """The image with layer 3 replacing the file layer 1's and 2's hard links share
    (``peers/variant:1``, in the same store): ``ocistore save`` of it."""
    return load_image(base.root, base.work, VARIANT, base_layers(_busybox(), replace_linked=True))


VARIANT = "peers/variant:1"


@pytest.fixture
def oci_layout(base: Base, skopeo: Runner, tmp_path: Path) -> Path:
    """The image in an OCI layout (tag ``base``): ``skopeo copy`` of ``ocistore save``."""
    layout = tmp_path / "layout"
    skopeo("copy", "-q", f"docker-archive:{base.archive}", f"oci:{layout}:base")
    return layout


@pytest.fixture(scope="module")
def in_docker(docker_engine: DockerEngine, base: Base) -> DockerEngine:
    """The engine, with the image loaded from ``ocistore save``."""
    docker_engine.run("load", "-q", "-i", base.archive)
    assert docker_engine.image_id(BASE) == base.image_id
    return docker_engine


class Podman:
    """podman with a store of its own (``--root``) and one short run root under /tmp
    (podman refuses another run root for the same store, and a long one)."""

    def __init__(self, path: str, root: Path, runroot: str, env: dict[str, str]) -> None:
        self.argv = [
            path,
            "--root", str(root),
            "--runroot", runroot,
            "--storage-driver", "vfs",
            "--events-backend", "none",
            "--cgroup-manager", "cgroupfs",
        ]  # fmt: skip
        # (podman insists that a DOCKER_CONFIG it is given holds a config.json)
        self.env = {k: v for k, v in env.items() if k != "DOCKER_CONFIG"}

    def __call__(self, *args: str | Path) -> str:
        cmd = [*self.argv, *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=self.env)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout


@pytest.fixture
def podman(tmp_path: Path, env: dict[str, str]) -> Iterator[Podman]:
    path = require_tool("podman")
    with tempfile.TemporaryDirectory(prefix="ocistore-podman-", dir="/tmp") as runroot:
        yield Podman(path, tmp_path / "podman", runroot, env)


# -- walking trees and reading tars ---------------------------------------------------------

ROOTLESS_XATTR = "user.rootlesscontainers"
#: The rootless-containers proto's "no owner recorded" for a uid or gid (uint32 -1).
NOOP_ID = 0xFFFFFFFF


class Node(NamedTuple):
    """A path of an unpacked tree: what both unpackers must agree on."""

    kind: str
    mode: int  # permission bits with setuid, setgid, sticky
    uid: int
    gid: int
    target: str  # a symlink's
    digest: str  # a regular file's content
    mtime_ns: int
    owner: bytes | None  # the raw user.rootlesscontainers


KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFSOCK: "socket",
}


def _node(path: str) -> Node:
    info = os.lstat(path)
    kind = KINDS[stat.S_IFMT(info.st_mode)]
    try:
        owner: bytes | None = os.getxattr(path, ROOTLESS_XATTR, follow_symlinks=False)
    except OSError:
        owner = None
    digest = ""
    if kind == "file":
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Node(
        kind,
        stat.S_IMODE(info.st_mode),
        info.st_uid,
        info.st_gid,
        os.readlink(path) if kind == "symlink" else "",
        digest,
        info.st_mtime_ns,
        owner,
    )


def walk_tree(root: Path) -> tuple[dict[str, Node], set[frozenset[str]]]:
    """Every path of the tree at ``root`` (``.`` itself; lstat only, no symlink is
    followed), and the groups of paths that are one file (hard links)."""
    nodes = {".": _node(str(root))}
    inodes: dict[tuple[int, int], set[str]] = {}

    def visit(directory: str, prefix: str) -> None:
        for entry in os.scandir(directory):
            path = prefix + entry.name
            nodes[path] = _node(entry.path)
            if nodes[path].kind == "dir":
                visit(entry.path, path + "/")
            else:
                info = entry.stat(follow_symlinks=False)
                inodes.setdefault((info.st_dev, info.st_ino), set()).add(path)

    visit(str(root), "")
    return nodes, {frozenset(paths) for paths in inodes.values() if len(paths) > 1}


class Member(NamedTuple):
    """A path of an exported tar; a hard link has its target's file (which of a group
    is the tar's target is the writer's walk order, not the tree's)."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    target: str  # a symlink's
    digest: str
    mtime: int  # whole seconds: docker export's precision


TAR_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
}


def _clean(name: str) -> str:
    name = name.strip("/")
    while name.startswith("./"):
        name = name[2:]
    return "." if name in ("", ".") else name


def seconds(info: tarfile.TarInfo) -> int:
    """A member's mtime in whole seconds, from the PAX record's text where there is one
    (as a float, ``.999999999`` would round up)."""
    raw = info.pax_headers.get("mtime")
    return int(raw.partition(".")[0]) if raw else int(info.mtime)


def read_tar(path: Path) -> tuple[dict[str, Member], set[frozenset[str]]]:
    """Every member of a tar by its path, and the groups of paths that are one file.
    A path may come twice only as a directory given again as it was (ocistore export
    repeats a directory a layer leaves and comes back to, for GNU tar to set its times
    last)."""
    members: dict[str, Member] = {}
    links: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            name = _clean(info.name)
            assert name not in links, f"{name} twice in {path}"
            if info.islnk():
                links[name] = _clean(info.linkname)
                continue
            digest = ""
            if info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
            member = Member(
                TAR_KINDS[info.type],
                info.mode & 0o7777,
                info.uid,
                info.gid,
                info.size if info.isreg() else 0,
                info.linkname if info.issym() else "",
                digest,
                seconds(info),
            )
            if name in members:
                assert member.kind == "dir" and members[name] == member, f"{name} twice"
            members[name] = member
    groups: dict[str, set[str]] = {}
    for name, target in links.items():
        while target in links:
            target = links[target]
        members[name] = members[target]
        groups.setdefault(target, {target}).add(name)
    return members, {frozenset(g) for g in groups.values()}


Difference = tuple[str, str, object, object]


def differences(
    ours: Mapping[str, NamedTuple], theirs: Mapping[str, NamedTuple]
) -> set[Difference]:
    """``(path, field, ocistore's, the peer's)`` for every field that differs; a path
    only one side has is ``(path, "exists", ocistore has it, the peer has it)``."""
    out: set[Difference] = set()
    for path in ours.keys() | theirs.keys():
        a, b = ours.get(path), theirs.get(path)
        if a is None or b is None:
            out.add((path, "exists", a is not None, b is not None))
            continue
        for field, x, y in zip(a._fields, a, b, strict=True):
            if x != y:
                out.add((path, field, x, y))
    return out


def where(found: set[Difference]) -> set[tuple[str, str]]:
    """The paths and fields of differences, without their values."""
    return {(path, field) for path, field, _, _ in found}


def value(found: set[Difference], path: str, field: str) -> tuple[object, object]:
    """(ocistore's, the peer's) of one difference."""
    (hit,) = [(a, b) for p, f, a, b in found if (p, f) == (path, field)]
    return hit


def decode_owner(raw: bytes | None) -> tuple[int, int]:
    """The owner a user.rootlesscontainers value records, as umoci reads it: a field left
    out is 0 (proto3), a field of NOOP_ID records nothing, so the file's own owner,
    which a rootless tree maps to 0."""
    uid = gid = 0
    pos = 0
    while raw and pos < len(raw):
        key = raw[pos]
        pos += 1
        number = shift = 0
        while True:
            byte = raw[pos]
            pos += 1
            number |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        number = 0 if number == NOOP_ID else number
        if key == 0x08:
            uid = number
        elif key == 0x10:
            gid = number
    return uid, gid


def layout_manifest(layout: Path, tag: str) -> dict[str, object]:
    """The manifest an OCI layout names ``tag``."""
    index = json.loads((layout / "index.json").read_text())
    (digest,) = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return json.loads(layout_blob(layout, digest).read_bytes())  # type: ignore[no-any-return]


def layout_blob(layout: Path, digest: str) -> Path:
    algorithm, _, hex_ = digest.partition(":")
    return layout / "blobs" / algorithm / hex_


# -- what the image is ----------------------------------------------------------------------

#: The hard links of the image's tree (paths that are one file).
LINKS = {
    frozenset({"usr/bin/tool", "usr/bin/tool-hl", "usr/bin/tool-hl2"}),  # layers 1 and 2
    frozenset({"usr/bin/new", "usr/bin/new-hl"}),
    frozenset({f"{UNI}/файл.txt", f"{UNI}/straße-hl"}),
}


def check_tree(nodes: dict[str, Node]) -> None:
    """What the layers make of the tree, whoever unpacked it (so that two unpackers
    that agree agree on the right tree)."""
    kinds = {path: node.kind for path, node in nodes.items()}
    assert kinds["run/initctl"] == "fifo"
    assert kinds["srv/thing"] == "dir" and kinds["srv/thing/inner.txt"] == "file"
    assert kinds["etc/conf.d"] == "file" and "etc/conf.d/a.conf" not in nodes
    assert kinds["var/empty"] == "dir" and kinds["mnt"] == "dir"
    assert kinds[f"{DEEP}/leaf.txt"] == "file"
    assert kinds[f"{UNI}/🐳 space.txt"] == "file"
    for gone in ("var/cache", "var/log/old.log", "usr/share/doc/pkg07/changelog"):
        assert gone not in nodes, gone
    assert "home/user/.cache/tmp.bin" not in nodes
    assert sorted(p for p in nodes if p.startswith("opt/app/")) == [
        "opt/app/NEW",
        "opt/app/bin",
        "opt/app/bin/run2",
    ]
    assert nodes["usr/bin/su"].mode == 0o4755
    assert nodes["usr/bin/wall"].mode == 0o2755
    assert nodes["usr/bin/both"].mode == 0o6750
    assert nodes["srv/shared"].mode == 0o2775
    assert nodes["tmp"].mode == nodes["var/tmp"].mode == 0o1777
    assert nodes["etc/passwd"].mode == 0o600
    assert nodes["etc/alternatives/editor"].target == "/usr/bin/vi"
    assert nodes["usr/lib/libx.so.1"].target == "libx.so.1.2.4"
    assert nodes["usr/lib/libx.so"].target == "../lib/libx.so.1"
    assert nodes["etc/motd"].digest == hashlib.sha256(b"layer two\n").hexdigest()
    assert nodes["home/user/notes.txt"].mtime_ns == 1_600_000_000_987_654_321
    assert nodes["usr/lib/libx.so.1.2.4"].mtime_ns == 1_700_172_800_000_000_001
    assert (
        nodes["usr/lib/big.bin"].digest == hashlib.sha256(blob("big", (3 << 19) + 123)).hexdigest()
    )


# -- 1. unpack against umoci unpack -----------------------------------------------------------


def test_unpack_rootless_gives_the_tree_umoci_unpack_gives(
    base: Base, oci_layout: Path, umoci: Runner, tmp_path: Path
) -> None:
    umoci("unpack", "--rootless", "--image", f"{oci_layout}:base", tmp_path / "umoci")
    base.oc("unpack", "-q", "--rootless", BASE, tmp_path / "ocistore")
    ours, our_links = walk_tree(tmp_path / "ocistore/rootfs")
    theirs, their_links = walk_tree(tmp_path / "umoci/rootfs")
    check_tree(ours)
    assert our_links == their_links == LINKS
    # The owners kept in user.rootlesscontainers: those of the image (the symlink
    # home/user/.shrc, 1000:1000, has none on either side: Linux allows no user.* xattr
    # on a symlink; umoci warns about it).
    owned = {path: decode_owner(node.owner) for path, node in ours.items() if node.owner}
    assert owned == {
        "etc/shadow": (0, 42),
        "home/user": (1000, 1000),
        "home/user/.cache": (1000, 1000),
        "home/user/.profile": (1000, 1000),
        "home/user/notes.txt": (1000, 1000),
        "srv/shared": (0, 50),
        "srv/shared/file": (0, 50),
        "usr/bin/both": (0, 50),
        "usr/bin/wall": (0, 5),
    }
    assert ours["home/user/notes.txt"].owner == b"\x08\xe8\x07\x10\xe8\x07"
    found = differences(ours, theirs)
    # Allowed, 1: an owner with one id 0. ocistore leaves the 0 out of the message
    # (proto3: a field left out is 0); umoci writes NOOP_ID for it, the proto's "no owner
    # recorded", which it reads back as the file's own owner, root in a rootless tree.
    # Two encodings of one owner (a documented choice of each): the raw values differ,
    # what they decode to does not.
    one_zero = {path for path, (uid, gid) in owned.items() if (uid == 0) != (gid == 0)}
    assert one_zero == {
        "etc/shadow",
        "srv/shared",
        "srv/shared/file",
        "usr/bin/both",
        "usr/bin/wall",
    }
    for path in one_zero:
        mine, umocis = value(found, path, "owner")
        assert isinstance(umocis, bytes) and b"\xff\xff\xff\xff\x0f" in umocis
        assert decode_owner(umocis) == decode_owner(mine) == owned[path]  # type: ignore[arg-type]
    # Allowed, 2: the mtime of rootfs/ itself, which no layer has a "." member for:
    # umoci sets the epoch on it, ocistore leaves it the time of the unpack.
    assert value(found, ".", "mtime_ns")[1] == 0
    assert where(found) == {(path, "owner") for path in one_zero} | {(".", "mtime_ns")}


# -- 2. export against docker export ---------------------------------------------------------

#: What ``docker export`` of a new container has that the image has not: the container's
#: init layer (Docker 20.10's ``daemon/initlayer`` and ``.dockerenv``), empty mount points
#: and files for the runtime to mount over; kind and a symlink's target.
DOCKER_INIT = {
    ".dockerenv": ("file", ""),
    "dev": ("dir", ""),
    "dev/console": ("file", ""),
    "dev/pts": ("dir", ""),
    "dev/shm": ("dir", ""),
    "etc/hostname": ("file", ""),
    "etc/hosts": ("file", ""),
    "etc/mtab": ("symlink", "/proc/mounts"),
    "etc/resolv.conf": ("file", ""),
    "proc": ("dir", ""),
    "sys": ("dir", ""),
}


def docker_export(engine: DockerEngine, image: str, out: Path) -> Path:
    """``docker export`` of a container created (not started) from ``image``."""
    container = engine.run("create", image, "/bin/sh").stdout.strip()
    try:
        engine.run("export", "-o", out, container)
    finally:
        engine.run("rm", container)
    return out


def against_docker(ours: Path, dockers: Path) -> set[Difference]:
    """The differences between ``ocistore export``'s tar and ``docker export``'s of the
    same image, once the container's init layer is taken out of Docker's."""
    a, a_links = read_tar(ours)
    b, b_links = read_tar(dockers)
    assert not DOCKER_INIT.keys() & a.keys()
    assert a_links == b_links
    return differences(a, without_init(b))


def without_init(members: dict[str, Member]) -> dict[str, Member]:
    """A docker export's members but those of the container's init layer (checked)."""
    for path, (kind, target) in DOCKER_INIT.items():
        assert (members[path].kind, members[path].target) == (kind, target), path
    return {path: m for path, m in members.items() if path not in DOCKER_INIT}


#: The init layer writes its files into etc/: Docker's etc/ has the container's time.
INIT_TOUCHES = {("etc", "mtime")}


def test_export_gives_the_tar_docker_export_gives(
    base: Base, in_docker: DockerEngine, tmp_path: Path
) -> None:
    ours = tmp_path / "ocistore.tar"
    base.oc("export", "-q", BASE, "-o", ours)
    theirs = docker_export(in_docker, BASE, tmp_path / "docker.tar")
    found = against_docker(ours, theirs)
    assert where(found) == INIT_TOUCHES
    assert value(found, "etc", "mtime")[0] == int(MTIME3.partition(".")[0])
    assert read_tar(ours)[1] == LINKS
    # Where docker export has whole seconds, ocistore's has the layers' nanoseconds.
    with tarfile.open(ours) as tar:
        notes = tar.getmember("home/user/notes.txt")
        assert notes.pax_headers["mtime"] == MTIME_NOTES
        assert tar.getmember("usr/bin/tool").pax_headers["mtime"] == MTIME1
        assert tar.getmembers()[0].name == "etc"  # the top layer's members first


# -- 3. commit against docker build ----------------------------------------------------------

#: The changes of the round trip, as a RUN step makes them (busybox's shell: its applets
#: need no PATH).
CHANGE_SCRIPT = (
    "echo added > /etc/added.conf && chmod 640 /etc/added.conf"
    " && echo 'changed motd' > /etc/motd"
    " && chmod 600 /usr/share/doc/pkg01/README"
    " && rm /usr/share/doc/pkg02/copyright"
    " && rm -r /usr/share/doc/pkg03"
    " && ln -s ../share/doc/pkg01/README /usr/bin/readme"
)


def make_changes(rootfs: Path) -> None:
    """:data:`CHANGE_SCRIPT`, made in an unpacked tree."""
    (rootfs / "etc/added.conf").write_bytes(b"added\n")
    os.chmod(rootfs / "etc/added.conf", 0o640)
    (rootfs / "etc/motd").write_bytes(b"changed motd\n")
    os.chmod(rootfs / "usr/share/doc/pkg01/README", 0o600)
    os.unlink(rootfs / "usr/share/doc/pkg02/copyright")
    shutil.rmtree(rootfs / "usr/share/doc/pkg03")
    os.symlink("../share/doc/pkg01/README", rootfs / "usr/bin/readme")


#: What the changes wrote, and the directories they added to or removed from: their
#: mtimes are the moments the changes were made, in either image.
TOUCHED = {
    "etc",
    "etc/added.conf",
    "etc/motd",
    "usr/bin",
    "usr/bin/readme",
    "usr/share/doc",
    "usr/share/doc/pkg01/README",
    "usr/share/doc/pkg02",
}


def test_commit_gives_the_tree_a_docker_build_gives(
    base: Base, in_docker: DockerEngine, tmp_path: Path
) -> None:
    if not base.has_shell:
        static_busybox()  # (skips: the RUN step needs the image's shell)
    bundle = tmp_path / "bundle"
    base.oc("unpack", "-q", BASE, bundle)  # as root: the image's owners
    make_changes(bundle / "rootfs")
    image_id = base.oc("commit", "-q", bundle, "-t", "peers/committed:1").stdout.strip()
    saved = tmp_path / "committed.tar"
    base.oc("save", "-q", "-o", saved, "peers/committed:1")
    in_docker.run("load", "-q", "-i", saved)
    assert in_docker.image_id("peers/committed:1") == image_id
    run = json.dumps(["/bin/busybox", "sh", "-c", CHANGE_SCRIPT])
    in_docker.build("peers/built:1", f"FROM {BASE}\nRUN {run}\n")

    ours, our_links = read_tar(docker_export(in_docker, "peers/committed:1", tmp_path / "c.tar"))
    theirs, their_links = read_tar(docker_export(in_docker, "peers/built:1", tmp_path / "b.tar"))
    assert our_links == their_links == LINKS
    # (Both containers' init layers: their times are the containers'.)
    found = differences(without_init(ours), without_init(theirs))
    # ocistore's layer holds every directory above a change, as Docker's differ writes
    # them ("to save and restore permissions", pkg/archive/changes.go): applying it keeps
    # usr/share/doc/pkg01's time, though only its README's mode changed.
    assert where(found) - {(path, "mtime") for path in TOUCHED} == set()
    assert ours["etc/added.conf"][:5] == ("file", 0o640, 0, 0, 6)
    assert ours["etc/motd"].digest == hashlib.sha256(b"changed motd\n").hexdigest()
    assert ours["usr/share/doc/pkg01/README"].mode == 0o600
    assert ours["usr/bin/readme"].target == "../share/doc/pkg01/README"
    assert "usr/share/doc/pkg02/copyright" not in ours
    assert not [path for path in ours if path.startswith("usr/share/doc/pkg03")]
    assert "usr/share/doc/pkg03" not in ours

    # And ocistore's own export of the new image is what Docker shows of it.
    exported = tmp_path / "ocistore.tar"
    base.oc("export", "-q", "peers/committed:1", "-o", exported)
    found = against_docker(exported, tmp_path / "c.tar")
    assert where(found) - INIT_TOUCHES == set()


# -- 4. commit of an unchanged tree ----------------------------------------------------------


def test_commit_of_an_unchanged_tree_adds_no_layer_as_umoci(
    base: Base, oci_layout: Path, umoci: Runner, tmp_path: Path
) -> None:
    for rootless in (True, False):
        bundle = tmp_path / f"ocistore-{rootless}"
        base.oc("unpack", "-q", *(["--rootless"] if rootless else []), BASE, bundle)
        base.oc("commit", "-q", bundle, "-t", "peers/same:1")
        layers = json.loads(
            base.oc("inspect", "-f", "{{json .RootFS.Layers}}", "peers/same:1").stdout
        )
        assert layers == base.diff_ids  # no layer
        history = base.oc(
            "history", "--format", "{{.CreatedBy}}|{{.Size}}", "peers/same:1"
        ).stdout.splitlines()
        assert history[0] == "ocistore commit|0B"  # an empty_layer entry, on top
        assert base.oc("diff", "peers/same:1", BASE).stdout == ""
    # umoci agrees: repack of an unchanged bundle adds no layer, only a history entry
    # with "empty_layer": true (as Docker 20.10's commit of an unchanged container does:
    # the next test).
    umoci("unpack", "--rootless", "--image", f"{oci_layout}:base", tmp_path / "umoci")
    umoci("repack", "--image", f"{oci_layout}:same", tmp_path / "umoci")
    stat_ = json.loads(umoci("stat", "--json", "--image", f"{oci_layout}:same").stdout)
    last = stat_["history"][-1]
    assert (last["created_by"], last["empty_layer"], last["layer"]) == ("umoci repack", True, None)
    assert [h["diff_id"] for h in stat_["history"] if h["layer"]] == base.diff_ids
    manifest = layout_manifest(oci_layout, "same")
    assert len(manifest["layers"]) == len(base.diff_ids)  # type: ignore[arg-type]


def test_docker_commit_of_an_unchanged_container_adds_no_layer(
    base: Base, in_docker: DockerEngine
) -> None:
    """What ocistore's unchanged commit is compared with: Docker 20.10 adds no layer
    (its ``NewChild`` leaves an empty tar's DiffID out of ``rootfs`` and marks the
    history entry ``empty_layer``)."""
    container = in_docker.run("create", BASE, "/bin/sh").stdout.strip()
    try:
        in_docker.run("commit", container, "peers/docker-same:1")
    finally:
        in_docker.run("rm", container)
    layers = in_docker.run(
        "image", "inspect", "-f", "{{json .RootFS.Layers}}", "peers/docker-same:1"
    )
    assert json.loads(layers.stdout) == base.diff_ids


# -- 5. diff against podman image diff -------------------------------------------------------


def changes(text: str) -> set[tuple[str, str]]:
    """A/C/D lines as a set of (kind, path)."""
    out = set()
    for line in text.splitlines():
        kind, _, path = line.partition(" ")
        assert kind in ("A", "C", "D"), line
        out.add((kind, path))
    return out


#: What ``ocistore diff`` lists and podman does not: a directory whose own state (here
#: its mtime) changed and nothing below it. podman (containers/storage's copy of
#: Docker's pkg/archive/changes.go) never compares a directory's mtime or size
#: (statDifferent, moby/moby#9874).
ONLY_OCISTORE = {("C", "/usr/bin")}
#: What podman lists and ``ocistore diff`` does not: a directory above a change whose
#: own state did not change (layer 3 does not restate home/ and home/user/, as umoci and
#: ocistore commit write layers); podman adds every such directory ("to save and restore
#: permissions", what its differ exists for), ocistore compares each path's own state.
ONLY_PODMAN = {("C", "/home"), ("C", "/home/user")}


def test_diff_lists_what_podman_image_diff_lists(base: Base, podman: Podman) -> None:
    podman("load", "-q", "-i", base.archive)
    theirs = changes(podman("image", "diff", base.image_id.removeprefix("sha256:")))
    ours = changes(base.oc("diff", BASE).stdout)
    assert ours - theirs == ONLY_OCISTORE
    assert theirs - ours == ONLY_PODMAN
    assert ours & theirs == {
        ("A", "/opt/app/NEW"),
        ("A", "/opt/app/bin/run2"),
        ("A", "/usr/lib/libx.so.1.2.4"),
        ("C", "/etc"),
        ("C", "/etc/passwd"),
        ("C", "/home/user/.cache"),
        ("C", "/opt"),
        ("C", "/opt/app"),
        ("C", "/opt/app/bin"),
        ("C", "/usr"),
        ("C", "/usr/lib"),
        ("C", "/usr/lib/libx.so.1"),
        ("D", "/home/user/.cache/tmp.bin"),
        ("D", "/opt/app/README"),
        ("D", "/opt/app/bin/run"),
        ("D", "/opt/app/lib"),  # once, not what was below it
    }


# -- bugs found ------------------------------------------------------------------------------


def test_export_of_links_to_a_replaced_file_is_docker_exports(
    base: Base, variant: Path, in_docker: DockerEngine, tmp_path: Path
) -> None:
    in_docker.run("load", "-q", "-i", variant)
    theirs = docker_export(in_docker, VARIANT, tmp_path / "docker.tar")
    ours = tmp_path / "ocistore.tar"
    proc = base.oc("export", "-q", VARIANT, "-o", ours, check=False)
    assert proc.returncode == 0, proc.stderr
    assert where(against_docker(ours, theirs)) == INIT_TOUCHES
    members, links = read_tar(ours)
    assert frozenset({"usr/bin/tool-hl", "usr/bin/tool-hl2"}) in links
    assert members["usr/bin/tool-hl"].digest == hashlib.sha256(blob("tool", 4000)).hexdigest()


def test_diff_of_links_to_a_replaced_file_is_podman_image_diffs(
    base: Base, variant: Path, podman: Podman
) -> None:
    podman("load", "-q", "-i", variant)
    theirs = changes(podman("image", "diff", "localhost/" + VARIANT))
    proc = base.oc("diff", VARIANT, check=False)
    assert proc.returncode == 0, proc.stderr
    ours = changes(proc.stdout)
    assert ("C", "/usr/bin/tool") in ours
    assert ours - theirs == set()  # (layer 3 changes something in usr/bin too)
    assert theirs - ours == ONLY_PODMAN


def test_commit_reads_the_owners_umoci_writes(
    base: Base, oci_layout: Path, umoci: Runner, tmp_path: Path
) -> None:
    """A file copied with its xattrs (cp -a) from umoci's rootless tree into each
    tree: umoci repack and ocistore commit must give it the same owner."""
    umocis = tmp_path / "umoci"
    umoci("unpack", "--rootless", "--image", f"{oci_layout}:base", umocis)
    base.oc("unpack", "-q", "--rootless", BASE, tmp_path / "ocistore")
    for bundle in (umocis, tmp_path / "ocistore"):
        shutil.copy2(umocis / "rootfs/etc/shadow", bundle / "rootfs/etc/shadow-")
    assert (
        os.getxattr(umocis / "rootfs/etc/shadow-", ROOTLESS_XATTR)
        == b"\x08\xff\xff\xff\xff\x0f\x10*"
    )
    umoci("repack", "--image", f"{oci_layout}:copied", umocis)
    manifest = layout_manifest(oci_layout, "copied")
    top = manifest["layers"][-1]  # type: ignore[index]
    with tarfile.open(layout_blob(oci_layout, top["digest"])) as tar:
        theirs = tar.getmember("etc/shadow-")
    assert (theirs.uid, theirs.gid) == (0, 42)
    base.oc("commit", "-q", tmp_path / "ocistore", "-t", "peers/copied:1")
    exported = tmp_path / "copied.tar"
    base.oc("export", "-q", "peers/copied:1", "-o", exported)
    with tarfile.open(exported) as tar:
        ours = tar.getmember("etc/shadow-")
    assert (ours.uid, ours.gid) == (theirs.uid, theirs.gid)
