"""The image as a file system: unpack, export, commit, append and diff, as a user runs
them (escapes are in test_unpack_safety.py, the peers' trees in test_rootfs_peers.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import OCISTORE, ocistore_cli, snapshot

import ocistore
from ocistore.spec.tarscan import Entry


def member(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    link: str = "",
    mtime: float = 1_700_000_000,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = link
    info.mtime = mtime
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def layer(*members: tuple[object, ...]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for args in members:
            name, *rest = args
            kwargs = rest.pop() if rest and isinstance(rest[-1], dict) else {}
            member(tar, str(name), *rest, **kwargs)  # type: ignore[arg-type]
    return buf.getvalue()


def docker_archive(path: Path, layers: list[bytes], tag: str, config: dict[str, object]) -> Path:
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    raw = json.dumps(doc).encode()
    names = [f"{i}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag], "Layers": names}])
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("config.json", raw),
            *zip(names, layers, strict=True),
            ("manifest.json", manifest.encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


BASE = [
    layer(
        ("etc", tarfile.DIRTYPE, {"mode": 0o755}),
        (
            "etc/passwd",
            tarfile.REGTYPE,
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        ),
        ("etc/group", tarfile.REGTYPE, b"root:x:0:\nstaff:x:50:\n"),
        ("bin", tarfile.DIRTYPE, {"mode": 0o755}),
        ("bin/tool", tarfile.REGTYPE, b"#!/bin/sh\necho tool\n", {"mode": 0o4755}),
        ("bin/sh", tarfile.SYMTYPE, {"link": "tool"}),
        ("home", tarfile.DIRTYPE),
        ("home/app", tarfile.DIRTYPE, {"uid": 1000, "gid": 1001, "mode": 0o750}),
        ("home/app/notes", tarfile.REGTYPE, b"mine\n", {"uid": 1000, "gid": 1001}),
        ("var", tarfile.DIRTYPE),
        ("var/cache", tarfile.DIRTYPE),
        ("var/cache/a", tarfile.REGTYPE, b"a" * 5000),
        ("var/cache/b", tarfile.REGTYPE, b"b"),
        ("data", tarfile.REGTYPE, b"x" * 100),
    ),
    layer(
        ("var/cache/.wh.b",),
        ("bin/tool-link", tarfile.LNKTYPE, {"link": "bin/tool", "mode": 0o4755}),
        ("data-link", tarfile.LNKTYPE, {"link": "data"}),
        ("srv", tarfile.DIRTYPE),
        ("srv/.wh..wh..opq",),
        ("srv/new", tarfile.REGTYPE, b"new\n"),
    ),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ocistore.Store]:
    with ocistore.open(tmp_path / "store") as s:
        archive = docker_archive(
            tmp_path / "base.tar",
            BASE,
            "base:1",
            {"Cmd": ["/bin/sh"], "Env": ["A=1"], "WorkingDir": "/home/app", "User": "app:staff"},
        )
        ocistore.load(s, archive)
        yield s


def tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root`` and what a layer records of it (no directory mtimes:
    the tree's own changes move them)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, root)
            kind = stat.S_IFMT(info.st_mode)
            content: object = ""
            if stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            mtime = 0 if stat.S_ISDIR(info.st_mode) else info.st_mtime_ns // 10**9
            out[rel] = (kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, content, mtime)
    return out


def test_unpack_applies_layers_whiteouts_and_records_the_tree(
    store: ocistore.Store, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    assert ocistore.unpack(store, "base:1", bundle) == []
    root = bundle / "rootfs"
    assert sorted(os.listdir(bundle)) == ["ocistore-unpack.json.gz", "rootfs"]
    assert not (root / "var/cache/b").exists()  # whited out by the upper layer
    assert (root / "var/cache/a").read_bytes() == b"a" * 5000
    assert os.readlink(root / "bin/sh") == "tool"
    assert stat.S_IMODE(os.lstat(root / "bin/tool").st_mode) == 0o4755
    assert os.lstat(root / "bin/tool-link").st_ino == os.lstat(root / "bin/tool").st_ino
    assert os.lstat(root / "data").st_nlink == 2
    assert os.listdir(root / "srv") == ["new"]
    assert os.lstat(root / "data").st_mtime == 1_700_000_000
    assert os.lstat(root / "etc").st_mtime == 1_700_000_000  # set after its children
    if os.geteuid() == 0:
        info = os.lstat(root / "home/app/notes")
        assert (info.st_uid, info.st_gid) == (1000, 1001)
        assert stat.S_IMODE(os.lstat(root / "home/app").st_mode) == 0o750
    with gzip.open(bundle / "ocistore-unpack.json.gz", "rt") as f:
        header = json.loads(f.readline())
        entries = [e for line in f for e in json.loads(line)]
    assert header["image"] == str(store.image("base:1").id)
    assert header["rootless"] is False
    paths = [e[0] for e in entries]
    assert paths == sorted(paths, key=lambda p: [os.fsencode(c) for c in p.split("/")])
    assert set(paths) == set(tree(root))
    digests = {e[0]: e[11] for e in entries}
    assert digests["var/cache/a"] == "sha256:" + hashlib.sha256(b"a" * 5000).hexdigest()


def test_unpack_rootless_keeps_owners_in_the_xattr(store: ocistore.Store, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    ocistore.unpack(store, "base:1", bundle, rootless=True)
    notes = bundle / "rootfs/home/app/notes"
    assert os.lstat(notes).st_uid == os.geteuid()
    try:
        raw = os.getxattr(notes, "user.rootlesscontainers")
    except OSError as e:
        pytest.skip(f"this file system keeps no user xattrs: {e}")
    assert raw == b"\x08\xe8\x07\x10\xe9\x07"  # uid 1000, gid 1001 (protobuf varints)
    with pytest.raises(OSError):
        os.getxattr(bundle / "rootfs/data", "user.rootlesscontainers")  # 0:0 has none


def test_unpack_refuses_a_directory_not_empty_unless_forced(
    store: ocistore.Store, tmp_path: Path
) -> None:
    target = tmp_path / "b"
    target.mkdir()
    (target / "keep").write_text("mine")
    proc = ocistore_cli("--root", store.root, "unpack", "base:1", target, check=False)
    assert proc.returncode == 1
    assert (
        proc.stderr == f"ocistore: {target}: the directory is not empty (--force unpacks into it)\n"
    )
    assert (target / "keep").read_text() == "mine"
    ocistore_cli("--root", store.root, "unpack", "--force", "base:1", target)
    assert (target / "keep").read_text() == "mine"
    assert (target / "rootfs/data").exists()


def test_unpack_of_a_missing_image_makes_nothing(store: ocistore.Store, tmp_path: Path) -> None:
    proc = ocistore_cli("--root", store.root, "unpack", "nope:1", tmp_path / "b", check=False)
    assert (proc.returncode, proc.stderr) == (1, "ocistore: No such image: nope:1\n")
    assert not (tmp_path / "b").exists()
    assert proc.stdout == ""


def test_unpack_bundle_writes_a_runtime_config(store: ocistore.Store, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    ocistore_cli("--root", store.root, "unpack", "--bundle", "base:1", bundle)
    config = json.loads((bundle / "config.json").read_text())
    assert config["root"] == {"path": "rootfs", "readonly": False}
    process = config["process"]
    assert process["args"] == ["/bin/sh"]
    assert "A=1" in process["env"]
    assert process["cwd"] == "/home/app"
    assert process["user"] == {"uid": 1000, "gid": 50}  # from the rootfs' passwd and group
    assert {"type": "mount"} in config["linux"]["namespaces"]


def test_commit_records_the_changes_and_a_round_trip_gives_the_same_tree(
    store: ocistore.Store, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    ocistore.unpack(store, "base:1", bundle)
    root = bundle / "rootfs"
    (root / "etc/motd").write_text("hello\n")
    (root / "var/cache/a").write_bytes(b"A" * 10)
    os.chmod(root / "etc/passwd", 0o600)
    os.unlink(root / "data")
    for child in (root / "srv").iterdir():
        child.unlink()
    (root / "srv").rmdir()
    os.symlink("/etc/motd", root / "motd")
    base = store.image("base:1")
    before = snapshot(Path(store.root) / "imagedb/content")
    new_id = ocistore.commit(store, bundle, "base:2", message="changed")
    assert snapshot(Path(store.root) / "imagedb/content").keys() > before.keys()
    image = store.image("base:2")
    assert str(image.id) == new_id
    assert image.config.diff_ids[:-1] == base.config.diff_ids
    assert image.config.data["history"][-1]["comment"] == "changed"
    assert image.config.data["config"] == base.config.data["config"]
    top = store.layers_of(image)[-1]
    with store.open_layer(top) as tar, tarfile.open(fileobj=tar, mode="r|") as tf:
        names = {m.name: m for m in tf}
    assert set(names) >= {"etc/motd", "var/cache/a", "etc/passwd", ".wh.data", "motd", ".wh.srv"}
    assert not any(n.startswith("srv/") for n in names)  # one whiteout for the directory
    assert names["motd"].linkname == "/etc/motd"
    # The new image, unpacked, is the tree that was committed.
    again = tmp_path / "again"
    ocistore.unpack(store, "base:2", again)
    assert tree(again / "rootfs") == tree(root)
    # The base image is as it was.
    assert store.image("base:1").id == base.id


def test_commit_of_an_unchanged_tree_adds_no_layer(store: ocistore.Store, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    ocistore.unpack(store, "base:1", bundle)
    proc = ocistore_cli("--root", store.root, "commit", bundle, "-t", "same:1", "-m", "none")
    image = store.image("same:1")
    assert proc.stdout == f"{image.id}\n"
    assert image.config.diff_ids == store.image("base:1").config.diff_ids
    last = image.config.data["history"][-1]
    assert (last["created_by"], last["empty_layer"], last["comment"]) == (
        "ocistore commit",
        True,
        "none",
    )


def test_commit_of_a_rootless_tree_keeps_the_image_owners(
    store: ocistore.Store, tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    ocistore.unpack(store, "base:1", bundle, rootless=True)
    notes = bundle / "rootfs/home/app/notes"
    try:
        os.getxattr(notes, "user.rootlesscontainers")
    except OSError as e:
        pytest.skip(f"this file system keeps no user xattrs: {e}")
    notes.write_text("changed\n")
    ocistore.commit(store, bundle, "base:rootless")
    top = store.layers_of(store.image("base:rootless"))[-1]
    with store.open_layer(top) as tar, tarfile.open(fileobj=tar, mode="r|") as tf:
        members = {m.name: m for m in tf}
    assert (members["home/app/notes"].uid, members["home/app/notes"].gid) == (1000, 1001)
    assert "SCHILY.xattr.user.rootlesscontainers" not in members["home/app/notes"].pax_headers


def test_commit_changes_checks_and_errors(store: ocistore.Store, tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    ocistore.unpack(store, "base:1", bundle)
    (bundle / "rootfs/new").write_text("n")
    ocistore_cli(
        "--root", store.root, "commit", bundle, "--from", "base:1", "-t", "c:1", "-c", "ENV B=2"
    )
    assert store.image("c:1").config.data["config"]["Env"] == ["A=1", "B=2"]
    wrong = ocistore_cli(
        "--root", store.root, "commit", bundle, "--from", "c:1", "-t", "c:2", check=False
    )
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"ocistore: {bundle} was unpacked from image ")
    bad = ocistore_cli("--root", store.root, "commit", bundle, "-c", "NOPE x", check=False)
    assert bad.returncode == 1 and "nope is not a valid change command" in bad.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    missing = ocistore_cli("--root", store.root, "commit", plain, check=False)
    assert missing.returncode == 1
    assert missing.stderr == (
        f"ocistore: {plain}: not a directory ocistore unpack made (no ocistore-unpack.json.gz)\n"
    )
    assert "Traceback" not in missing.stderr + wrong.stderr + bad.stderr


def test_append_adds_tarballs_and_diff_shows_them(store: ocistore.Store, tmp_path: Path) -> None:
    extra = tmp_path / "extra.tar.gz"
    extra.write_bytes(
        gzip.compress(
            layer(("opt", tarfile.DIRTYPE), ("opt/x", tarfile.REGTYPE, b"x"), (".wh.data",))
        )
    )
    proc = ocistore_cli("--root", store.root, "append", "base:1", extra, "-t", "base:extra")
    image = store.image("base:extra")
    assert proc.stdout == f"{image.id}\n"
    assert len(image.config.diff_ids) == len(BASE) + 1
    assert image.config.data["history"][-1]["created_by"] == "ocistore append extra.tar.gz"
    diff = ocistore_cli("--root", store.root, "diff", "base:extra")
    assert diff.stdout.splitlines() == ["D /data", "A /opt", "A /opt/x"]
    both = ocistore.diff(store, "base:1", "base:extra")
    assert both == [("A", "/data"), ("D", "/opt")]
    as_json = json.loads(
        ocistore_cli("--root", store.root, "diff", "--format", "json", "base:extra").stdout
    )
    assert as_json == {"changed": [], "added": ["/opt", "/opt/x"], "deleted": ["/data"]}


def test_export_flattens_with_links_after_their_targets(
    store: ocistore.Store, tmp_path: Path
) -> None:
    out = tmp_path / "flat.tar"
    proc = ocistore_cli("--root", store.root, "export", "base:1", "-o", out)
    assert (proc.stdout, proc.stderr) == ("", "")
    with tarfile.open(out) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert "var/cache/b" not in names and "var/cache/.wh.b" not in names
        assert names.index("data") < names.index("data-link")
        assert names.index("bin/tool") < names.index("bin/tool-link")
        assert tf.getmember("bin/tool").mode == 0o4755
        assert tf.getmember("home/app/notes").uid == 1000
        tf.extractall(tmp_path / "x", numeric_owner=True)  # (links resolvable in order)
    unpacked = tmp_path / "u"
    ocistore.unpack(store, "base:1", unpacked)
    exported = tree(tmp_path / "x")
    mine = tree(unpacked / "rootfs")
    assert exported.keys() == mine.keys()
    for path, state in mine.items():
        assert exported[path][4] == state[4], path  # contents and link targets
        assert exported[path][1] == state[1], path  # modes
    # Standard output gives the same bytes.
    piped = subprocess.run(
        [OCISTORE, "--root", store.root, "export", "base:1", "-o", "-"],
        capture_output=True,
        check=True,
    )
    assert piped.stdout == out.read_bytes()


def test_flatten_gives_the_visible_members_and_their_data(store: ocistore.Store) -> None:
    seen: dict[str, bytes] = {}
    current = ""
    for item in ocistore.flatten(store, "base:1"):
        if isinstance(item, Entry):
            current = item.name
            seen[current] = b""
        else:
            seen[current] += bytes(item)
    assert seen["srv/new"] == b"new\n"
    assert seen["var/cache/a"] == b"a" * 5000
    assert "var/cache/b" not in seen


def test_the_scanner_gives_members_metadata_and_data_in_detail() -> None:
    """What unpack and export read of each member: pax times, large owners, xattrs,
    device numbers, and the data (not the padding) in pieces, however it is fed."""
    from ocistore.spec.tarscan import TarScanner

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("f")
        info.size, info.mode, info.uid, info.gid = 5, 0o2755, 3_000_000, 7
        info.pax_headers = {"mtime": "1700000000.123456789", "SCHILY.xattr.user.k": "v"}
        tar.addfile(info, io.BytesIO(b"hello"))
        dev = tarfile.TarInfo("dev/null")
        dev.type, dev.devmajor, dev.devminor, dev.mtime = tarfile.CHRTYPE, 1, 3, 42
        tar.addfile(dev)
    data = buf.getvalue()
    for step in (1, 7, 512, len(data)):
        entries: list[Entry] = []
        pieces: list[bytes] = []
        scanner = TarScanner(
            "t",
            entries.append,
            layer=True,
            details=True,
            on_data=lambda v, pieces=pieces: pieces.append(bytes(v)),  # type: ignore[misc]
        )
        for i in range(0, len(data), step):
            scanner.feed(data[i : i + step])
        scanner.finish()
        first, second = entries
        assert first.meta is not None and second.meta is not None
        assert (first.meta.mode, first.meta.uid, first.meta.gid) == (0o2755, 3_000_000, 7)
        assert first.meta.mtime_ns == 1_700_000_000_123_456_789
        assert first.meta.xattrs == {"user.k": b"v"}
        assert b"".join(pieces) == b"hello"
        assert (second.meta.devmajor, second.meta.devminor, second.meta.mtime_ns) == (
            1,
            3,
            42 * 10**9,
        )
