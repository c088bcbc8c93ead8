"""Hostile layers unpacked: nothing outside DIR/rootfs is written, chmodded or removed.

Each test builds layers as raw tar bytes (``tarfile``'s headers, pax records and GNU
long names written one by one, so any name, link or record can be given), makes an
image of one, two or three of them in a fresh store and unpacks it: through the command
(``main`` in this process, once as a subprocess) where the unpack is refused, through
the library elsewhere. Every unpack runs under :meth:`Site.guard`: canaries outside the
target (``outside/canary``, ``outside/dir/...``, a symlink, an xattr) and every other
path under the test's directory must be as they were (type, mode, owner, times, inode,
link count, content, xattrs), no file named :data:`PROBE` may appear in any directory
above the target or in the host's ``/``, ``/etc`` or ``/tmp``, and the store must be
unchanged. A refused unpack must remove the directory it made.

Refused means :class:`~ocistore.rootfs.fsroot.UnsafeEntry` (or, for the tar's own
limits, :class:`~ocistore.errors.InvalidInput`), one line ``ocistore: layer sha256:…:
member '…': why`` and exit 1 from the command. Contained means the write lands inside
DIR/rootfs where the path resolves when DIR/rootfs is taken for ``/``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from util import ocistore_cli, run_main, unchanged

import ocistore
from ocistore.errors import InvalidInput
from ocistore.rootfs.apply import Applier
from ocistore.rootfs.fsroot import Root, UnsafeEntry
from ocistore.rootfs.unpack import RECORD, Unpacked, unpack
from ocistore.store.ingest import ImageSource, LayerSource

REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
CHR, BLK, FIFO = tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE
PAX, GNU = tarfile.PAX_FORMAT, tarfile.GNU_FORMAT
MTIME = 1_500_000_000
#: The name hostile members try to write outside: it must appear in no directory above
#: the target, nor in the host's /, /etc, /tmp.
PROBE = "ocistore-unpack-safety-probe"
HOST_PROBES = tuple(Path(d) / PROBE for d in ("/", "/etc", "/tmp"))
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="owners and device nodes need root")
ROOTLESS_XATTR = "user.rootlesscontainers"
LOOP = "more than 40 symlinks on the way, over the limit of 40"


# -- layers as raw tar bytes -------------------------------------------------------------


class Member(NamedTuple):
    info: tarfile.TarInfo
    data: bytes
    #: pax records written in an extended header of their own before the member.
    records: tuple[tuple[str, bytes], ...]
    fmt: int


def member(
    name: str,
    kind: bytes = REG,
    data: bytes = b"",
    *,
    link: str = "",
    mode: int | None = None,
    mtime: int = MTIME,
    uid: int = 0,
    gid: int = 0,
    major: int = 0,
    minor: int = 0,
    pax: dict[str, bytes] | None = None,
    fmt: int = PAX,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.linkname = link
    info.mode = mode if mode is not None else (0o755 if kind == DIR else 0o644)
    info.mtime = mtime
    info.uid, info.gid = uid, gid
    info.devmajor, info.devminor = major, minor
    return Member(info, data, tuple((pax or {}).items()), fmt)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    size = len(body) + 1
    while size != len(body) + len(str(size)):
        size = len(body) + len(str(size))
    return str(size).encode() + body


def extended_header(payload: bytes) -> bytes:
    """A pax extended header (type ``x``) holding ``payload``."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(payload)
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape") + padded(payload)


def tar(*members: Member | bytes) -> bytes:
    """A layer: each member's headers and data (raw bytes as they are), then the end."""
    out = bytearray()
    for m in members:
        if isinstance(m, bytes):
            out += m
            continue
        if m.records:
            out += extended_header(b"".join(pax_record(k, v) for k, v in m.records))
        out += m.info.tobuf(m.fmt, "utf-8", "surrogateescape")
        if m.info.type in tarfile.REGULAR_TYPES:
            out += padded(m.data)
    out += bytes(2 * tarfile.BLOCKSIZE)
    return bytes(out)


def gnu_sparse(name: str, chunks: list[tuple[int, bytes]], realsize: int) -> bytes:
    """An old GNU sparse member (type ``S``): its map in the header, then its data."""
    data = b"".join(chunk for _, chunk in chunks)
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    block = bytearray(info.tobuf(GNU, "utf-8", "surrogateescape"))
    assert len(block) == tarfile.BLOCKSIZE
    at = 386
    for offset, chunk in chunks:
        block[at : at + 24] = b"%011o\0%011o\0" % (offset, len(chunk))
        at += 24
    block[482] = 0  # no extension blocks
    block[483:495] = b"%011o\0" % realsize
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block) + padded(data)


# -- the test's directory: canaries, a store, the target -----------------------------------


def remove_deep(path: Path) -> None:
    """Remove a tree however deep (shutil.rmtree recurses and stops at about 1000)."""
    if not os.path.lexists(path):
        return
    order: list[str] = []
    todo = [str(path)]
    while todo:
        p = todo.pop()
        order.append(p)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
            todo.extend(e.path for e in os.scandir(p))
    for p in reversed(order):
        if os.path.isdir(p) and not os.path.islink(p):
            os.rmdir(p)
        else:
            os.unlink(p)


def xattrs_of(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


def supports_user_xattrs(where: Path) -> bool:
    probe = where / "xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return False
        raise
    finally:
        probe.unlink()
    return True


class Site:
    """A test's directory: canaries in ``outside/``, a store, the target ``bundle/``."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp
        self.capsys = capsys
        self.outside = tmp / "outside"
        self.canary = self.outside / "canary"
        self.outside_dir = self.outside / "dir"
        self.bundle = tmp / "bundle"
        self.rootfs = self.bundle / "rootfs"
        self.user_xattrs = supports_user_xattrs(tmp)
        self.outside_dir.mkdir(parents=True)
        (self.outside_dir / "sub").mkdir()
        self.canary.write_bytes(b"canary\n")
        (self.outside_dir / "inner").write_bytes(b"inner\n")
        (self.outside_dir / "sub" / "deep").write_bytes(b"deep\n")
        (self.outside / "link").symlink_to("canary")
        os.chmod(self.canary, 0o640)
        os.chmod(self.outside_dir / "inner", 0o600)
        os.chmod(self.outside_dir, 0o750)
        if self.user_xattrs:
            os.setxattr(self.canary, "user.canary", b"yes")
        for p in (self.canary, self.outside_dir / "inner", self.outside_dir / "sub" / "deep"):
            os.utime(p, (MTIME - 100, MTIME - 100))
        for d in (self.outside_dir / "sub", self.outside_dir, self.outside):
            os.utime(d, (MTIME - 200, MTIME - 200))
        self.store = ocistore.open(tmp / "store")
        #: Each image's DiffIDs, by name.
        self.diff_ids: dict[str, list[str]] = {}

    # -- images ---------------------------------------------------------------------------

    def image(self, *layers: bytes) -> str:
        """An image of these layers in the store; its name."""
        name = f"hostile:{len(self.diff_ids)}"
        diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }
        ).encode()
        sources = [
            LayerSource(open=lambda t=t: io.BytesIO(t), what=f"layer {i} of {name}")
            for i, t in enumerate(layers)
        ]
        self.store.add_images(
            [ImageSource(config, name, sources, [ocistore.parse_reference(name)])]
        )
        self.diff_ids[name] = diff_ids
        return name

    # -- watching what is outside ---------------------------------------------------------

    def state(self, skip: Path | None) -> dict[str, tuple[Any, ...]]:
        """Every path under the test's directory but ``skip``: what can change of it."""
        out: dict[str, tuple[Any, ...]] = {}
        todo = [self.tmp]
        while todo:
            directory = todo.pop()
            for e in os.scandir(directory):
                p = Path(e.path)
                if skip is not None and p == skip:
                    continue
                st = e.stat(follow_symlinks=False)
                content: object = None
                if stat.S_ISREG(st.st_mode):
                    content = p.read_bytes()
                elif stat.S_ISLNK(st.st_mode):
                    content = os.readlink(p)
                elif stat.S_ISDIR(st.st_mode):
                    todo.append(p)
                rel = p.relative_to(self.tmp).as_posix()
                # (A refused load stages in the store's tmp/ and removes what it made
                # there: the times of the store's directories are its own business.)
                churn = rel.startswith("store/") and stat.S_ISDIR(st.st_mode)
                out[rel] = (
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    None if churn else st.st_mtime_ns,
                    st.st_ino,
                    st.st_nlink,
                    st.st_size,
                    content,
                    None if stat.S_ISLNK(st.st_mode) else xattrs_of(p),
                )
        return out

    @contextlib.contextmanager
    def guard(self, target: Path | None) -> Iterator[None]:
        """Nothing outside ``target`` changes, no probe appears above it, the store is
        as it was."""
        before = self.state(target)
        canary = (self.canary.read_bytes(), os.lstat(self.canary))
        with unchanged(self.store):
            yield
        after = self.state(target)
        assert after == before
        st = os.lstat(self.canary)
        assert canary[0] == self.canary.read_bytes()
        assert (st.st_mode, st.st_mtime_ns, st.st_nlink) == (
            canary[1].st_mode,
            canary[1].st_mtime_ns,
            canary[1].st_nlink,
        )
        above = (target or self.bundle) / "rootfs"
        for directory in above.parents:
            assert not os.path.lexists(directory / PROBE), directory / PROBE
        for probe in HOST_PROBES:
            assert not os.path.lexists(probe), probe

    # -- unpacking ------------------------------------------------------------------------

    def unpack(self, name: str, directory: Path | None = None, **kwargs: Any) -> Unpacked:
        """The library's unpack, guarded; DIR then holds rootfs and the record only."""
        directory = directory or self.bundle
        with self.guard(directory):
            done = unpack(self.store, name, str(directory), **kwargs)
        if not kwargs.get("force"):
            assert sorted(os.listdir(directory)) == sorted([RECORD, "rootfs"])
        return done

    def refused(self, name: str, *, layer: int, member: str | None, why: str) -> str:
        """The library's unpack refuses ``member`` of the image's ``layer``; its message."""
        with self.guard(self.bundle), pytest.raises(InvalidInput) as caught:
            unpack(self.store, name, str(self.bundle))
        message = str(caught.value)
        assert message.startswith(self.prefix(name, layer, member)), message
        assert why in message
        assert not os.path.lexists(self.bundle)
        return message

    def prefix(self, name: str, layer: int, member: str | None) -> str:
        prefix = f"layer {self.diff_ids[name][layer]}: "
        return prefix + (f"member {member!r}: " if member is not None else "")

    def cli(self, *args: str | Path, target: Path | None = None) -> tuple[int, str, str]:
        """The command, in this process, guarded (nothing but ``target`` may change)."""
        with self.guard(target):
            return run_main(self.store.root, self.capsys, *args)

    def cli_refused(self, name: str, *, layer: int, member: str | None, why: str) -> str:
        """``ocistore unpack`` refuses: exit 1, one line naming the layer and the member,
        no traceback, no directory left."""
        code, out, err = self.cli("unpack", "-q", name, self.bundle, target=self.bundle)
        assert (code, out) == (1, ""), err
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("ocistore: " + self.prefix(name, layer, member)), lines[0]
        assert why in lines[0], lines[0]
        assert not os.path.lexists(self.bundle)
        return lines[0]

    def inside(self, path: str) -> Path:
        """Where ``path`` of the image's file system is on the host."""
        return self.rootfs / path.lstrip("/")


@pytest.fixture
def site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Site]:
    s = Site(tmp_path, capsys)
    try:
        yield s
    finally:
        s.store.close()


def benign() -> bytes:
    return tar(member("etc/", DIR), member("etc/hostname", data=b"lab\n"))


def layers_at(position: int, hostile: bytes) -> list[bytes]:
    """The hostile layer alone (position 0) or on top of a benign one (position 1)."""
    return [hostile] if position == 0 else [benign(), hostile]


# -- names that climb out ------------------------------------------------------------------

CLIMB = "its name climbs out of the root with '..'"
LONG = "a" * 120

TRAVERSALS = {
    "dotdot": (member(f"../{PROBE}", data=b"x"), f"../{PROBE}"),
    "dotdot-deep": (member(f"../../../../{PROBE}", data=b"x"), f"../../../../{PROBE}"),
    "nested": (member(f"a/../../{PROBE}", data=b"x"), f"a/../../{PROBE}"),
    "after-dirs": (member(f"a/b/./../../../{PROBE}", data=b"x"), f"a/b/./../../../{PROBE}"),
    "dotdot-dir": (member("..", DIR), "../"),
    "pax-path": (
        member("safe", data=b"x", pax={"path": f"../{PROBE}".encode()}),
        f"../{PROBE}",
    ),
    "gnu-long-name": (
        member(f"../{LONG}/../{PROBE}", data=b"x", fmt=GNU),
        f"../{LONG}/../{PROBE}",
    ),
    "symlink": (member(f"../{PROBE}", SYM, link="/"), f"../{PROBE}"),
    "hardlink": (member(f"../{PROBE}", LNK, link="etc"), f"../{PROBE}"),
    "whiteout": (member("../outside/.wh.canary"), "../outside/.wh.canary"),
    "whiteout-deep": (member("../../outside/.wh.canary"), "../../outside/.wh.canary"),
    "opaque": (member("../../outside/.wh..wh..opq"), "../../outside/.wh..wh..opq"),
}


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize("case", list(TRAVERSALS))
def test_a_name_that_climbs_out_is_refused(site: Site, case: str, position: int) -> None:
    hostile, name = TRAVERSALS[case]
    image = site.image(*layers_at(position, tar(member("ok", data=b"ok"), hostile)))
    site.cli_refused(image, layer=position, member=name, why=CLIMB)


def test_the_gnu_long_name_is_what_the_member_is_called(site: Site) -> None:
    """The check is on the name the tar gives, not the header's truncated one: the GNU
    long name replaces a safe-looking ustar name (tarfile writes its first 100 bytes)."""
    name = f"{LONG}/../../{PROBE}"
    raw = tar(member(name, data=b"x", fmt=GNU))
    assert b"././@LongLink" in raw
    site.cli_refused(site.image(raw), layer=0, member=name, why=CLIMB)


def test_a_refusal_through_the_real_command_has_no_traceback(site: Site) -> None:
    image = site.image(tar(member(f"../{PROBE}", data=b"x")))
    with site.guard(site.bundle):
        proc = ocistore_cli(
            "--root", site.store.root, "unpack", "-q", image, site.bundle, check=False
        )
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"ocistore: {site.prefix(image, 0, f'../{PROBE}')}{CLIMB}\n"
    assert not os.path.lexists(site.bundle)


@pytest.mark.parametrize(
    "name", [f"/etc/{PROBE}", f"//etc//./{PROBE}", f"/etc/../etc/{PROBE}", f"./etc/{PROBE}"]
)
def test_an_absolute_name_is_taken_from_the_root(site: Site, name: str) -> None:
    site.unpack(site.image(tar(member(name, data=b"absolute\n", mode=0o600))))
    written = site.inside(f"/etc/{PROBE}")
    assert written.read_bytes() == b"absolute\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


# -- symlinks that point outside, and writes through them ----------------------------------


def symlink_targets(site: Site) -> dict[str, tuple[str, str]]:
    """A symlink member ``l``'s target, and where ``l/`` is inside the root."""
    return {
        "absolute-outside": (str(site.outside), str(site.outside)),
        "absolute-root": ("/", "/"),
        "relative-outside": ("../../outside", "/outside"),
        "relative-far": ("../" * 12, "/"),
        "absolute-dotdot": ("/../../../..", "/"),
    }


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
@pytest.mark.parametrize(
    "target",
    ["absolute-outside", "absolute-root", "relative-outside", "relative-far", "absolute-dotdot"],
)
def test_a_write_through_a_symlink_to_outside_lands_inside(
    site: Site, target: str, split: bool
) -> None:
    link, resolved = symlink_targets(site)[target]
    first = [member("l", SYM, link=link)]
    second = [
        member("l/canary", data=b"written\n", mode=0o666),
        member(f"l/{PROBE}", data=b"probe\n"),
        member("l/dir/", DIR, mode=0o777),
        member("l/dir/inner", data=b"inner\n"),
    ]
    layers = [tar(*first), tar(*second)] if split else [tar(*first, *second)]
    site.unpack(site.image(*layers))
    assert os.readlink(site.rootfs / "l") == link
    base = site.inside(resolved)
    assert (base / "canary").read_bytes() == b"written\n"
    assert stat.S_IMODE((base / "canary").stat().st_mode) == 0o666
    assert (base / PROBE).read_bytes() == b"probe\n"
    assert (base / "dir" / "inner").read_bytes() == b"inner\n"
    assert stat.S_IMODE((base / "dir").stat().st_mode) == 0o777


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
def test_every_kind_of_member_through_a_symlink_lands_inside(site: Site, split: bool) -> None:
    """Regular files, directories, symlinks, hard links and fifos below a symlink to an
    absolute path outside, and below a nested relative one that climbs past the root."""
    out = str(site.outside)
    first = [
        member("etc/", DIR),
        member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        member("l", SYM, link=out),
        member("a/", DIR),
        member("a/b", SYM, link="../../../../outside/dir"),
    ]
    second = [
        member("l/canary", data=b"file\n"),
        member("l/newdir/", DIR),
        member("l/link", SYM, link="canary"),
        member("l/hard", LNK, link="etc/passwd"),
        member("l/fifo", FIFO),
        member("a/b/inner", data=b"nested\n"),
        member("a/b/sub/", DIR, mode=0o700),
    ]
    layers = [tar(*first), tar(*second)] if split else [tar(*first, *second)]
    site.unpack(site.image(*layers))
    base = site.inside(out)
    assert (base / "canary").read_bytes() == b"file\n"
    assert (base / "newdir").is_dir()
    assert os.readlink(base / "link") == "canary"
    assert os.stat(base / "hard").st_ino == os.stat(site.rootfs / "etc/passwd").st_ino
    assert stat.S_ISFIFO(os.lstat(base / "fifo").st_mode)
    assert (site.rootfs / "outside/dir/inner").read_bytes() == b"nested\n"
    assert stat.S_IMODE((site.rootfs / "outside/dir/sub").stat().st_mode) == 0o700


def lower_and_upper(split: bool, first: list[Member], second: list[Member]) -> list[bytes]:
    return [tar(*first), tar(*second)] if split else [tar(*first, *second)]


REPLACEMENTS = {
    "regular": (member("l", data=b"replaced\n", mode=0o4777), stat.S_IFREG),
    "directory": (member("l", DIR, mode=0o777), stat.S_IFDIR),
    "symlink": (member("l", SYM, link="elsewhere"), stat.S_IFLNK),
    "hardlink": (member("l", LNK, link="etc/hostname"), stat.S_IFREG),
    "fifo": (member("l", FIFO, mode=0o666), stat.S_IFIFO),
}


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
@pytest.mark.parametrize("link", ["absolute", "relative"])
@pytest.mark.parametrize("kind", list(REPLACEMENTS))
def test_a_symlink_at_the_last_component_is_replaced_not_followed(
    site: Site, kind: str, link: str, split: bool
) -> None:
    """The symlink points at the canary (``../../outside/canary`` from DIR/rootfs is the
    canary on the host too): the member of the same name replaces the symlink."""
    target = str(site.canary) if link == "absolute" else "../../outside/canary"
    replacement, kind_bits = REPLACEMENTS[kind]
    layers = lower_and_upper(
        split,
        [member("etc/", DIR), member("etc/hostname", data=b"lab\n"), member("l", SYM, link=target)],
        [replacement],
    )
    site.unpack(site.image(*layers))
    st = os.lstat(site.rootfs / "l")
    assert stat.S_IFMT(st.st_mode) == kind_bits
    if kind == "regular":
        assert (site.rootfs / "l").read_bytes() == b"replaced\n"
        assert stat.S_IMODE(st.st_mode) == 0o4777
    elif kind == "hardlink":
        assert st.st_ino == os.stat(site.rootfs / "etc/hostname").st_ino
    elif kind == "symlink":
        assert os.readlink(site.rootfs / "l") == "elsewhere"


@needs_root
@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
def test_a_device_over_a_symlink_replaces_it(site: Site, split: bool) -> None:
    layers = lower_and_upper(
        split, [member("l", SYM, link=str(site.canary))], [member("l", CHR, major=1, minor=3)]
    )
    site.unpack(site.image(*layers))
    st = os.lstat(site.rootfs / "l")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
def test_a_directory_over_a_symlink_to_a_directory_outside(site: Site, split: bool) -> None:
    """``d -> outside/dir`` then ``d/`` (mode 0777, owner, mtime: a chmod of the
    target, were it followed) then ``d/inner``: a new directory, the outside one
    untouched."""
    layers = lower_and_upper(
        split,
        [member("d", SYM, link=str(site.outside_dir))],
        [
            member("d/", DIR, mode=0o777, mtime=1000, uid=1234, gid=5678),
            member("d/inner", data=b"mine\n"),
        ],
    )
    site.unpack(site.image(*layers))
    st = os.lstat(site.rootfs / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o777
    assert st.st_mtime_ns == 1000 * 10**9
    assert (site.rootfs / "d/inner").read_bytes() == b"mine\n"


# -- the root itself -----------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "./", "", "/", "a/..", "./."])
@pytest.mark.parametrize("kind", ["symlink", "regular", "hardlink", "fifo"])
def test_a_member_that_would_replace_the_root_is_refused(site: Site, name: str, kind: str) -> None:
    """CVE-2021-29136's shape: the root replaced by a symlink to outside, the next
    members written through it."""
    made = {
        "symlink": member(name, SYM, link=str(site.outside)),
        "regular": member(name, data=b"x"),
        "hardlink": member(name, LNK, link="etc/hostname"),
        "fifo": member(name, FIFO),
    }[kind]
    image = site.image(
        tar(member("etc/", DIR), member("etc/hostname", data=b"lab\n"), made, member(PROBE))
    )
    site.cli_refused(image, layer=0, member=name, why="it would replace the root directory")


@pytest.mark.parametrize("name", [".", "./", "/", ""])
def test_a_root_directory_member_gives_the_root_its_metadata(site: Site, name: str) -> None:
    site.unpack(
        site.image(
            tar(
                member(name, DIR, mode=0o751, mtime=1234),
                member("etc/", DIR, mtime=2000),
                member("etc/hostname", data=b"lab\n"),
            )
        )
    )
    st = os.lstat(site.rootfs)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o751
    assert st.st_mtime_ns == 1234 * 10**9
    assert (site.rootfs / "etc/hostname").read_bytes() == b"lab\n"


# -- hard links ----------------------------------------------------------------------------


def hardlink_cases(site: Site) -> dict[str, tuple[list[bytes], str, str]]:
    """Layers, the member refused and why."""
    chmod = member("hl", data=b"", mode=0o4777)  # a later member that would chmod it
    return {
        "relative-outside": (
            [tar(member("hl", LNK, link="../../outside/canary"), chmod)],
            "hl",
            "a hard link to '../../outside/canary', outside the root",
        ),
        "relative-outside-in-a-dir": (
            [tar(member("a/", DIR), member("a/hl", LNK, link="a/../../outside/canary"))],
            "a/hl",
            "outside the root",
        ),
        "absolute-outside": (
            [tar(member("hl", LNK, link=str(site.canary)), chmod)],
            "hl",
            f"a hard link to {str(site.canary)!r}, which does not exist",
        ),
        "through-a-symlink-outside": (
            [
                tar(member("l", SYM, link=str(site.outside))),
                tar(member("hl", LNK, link="l/canary"), chmod),
            ],
            "hl",
            "a hard link to 'l/canary', which does not exist",
        ),
        "through-a-relative-symlink": (
            [tar(member("l", SYM, link="../../outside"), member("hl", LNK, link="l/canary"))],
            "hl",
            "which does not exist",
        ),
        "missing": (
            [tar(member("hl", LNK, link="nothing/here"))],
            "hl",
            "a hard link to 'nothing/here', which does not exist",
        ),
        "a-directory": (
            [tar(member("d/", DIR), member("hl", LNK, link="d"))],
            "hl",
            "a hard link to 'd', a directory",
        ),
        "a-directory-in-a-lower-layer": (
            [tar(member("d/", DIR)), tar(member("hl", LNK, link="d/"))],
            "hl",
            "a directory",
        ),
        "the-root": (
            [tar(member("hl", LNK, link="."))],
            "hl",
            "a hard link to the root directory",
        ),
        "gnu-long-link": (
            [tar(member("hl", LNK, link="a/../" * 30 + "../outside/canary", fmt=GNU))],
            "hl",
            "outside the root",
        ),
        "pax-linkpath": (
            [
                tar(
                    member(
                        "hl",
                        LNK,
                        link="etc",
                        pax={"linkpath": b"../../outside/canary"},
                    ),
                    chmod,
                )
            ],
            "hl",
            "a hard link to '../../outside/canary', outside the root",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "relative-outside",
        "relative-outside-in-a-dir",
        "absolute-outside",
        "through-a-symlink-outside",
        "through-a-relative-symlink",
        "missing",
        "a-directory",
        "a-directory-in-a-lower-layer",
        "the-root",
        "gnu-long-link",
        "pax-linkpath",
    ],
)
def test_a_hard_link_outside_to_nothing_or_to_a_directory_is_refused(site: Site, case: str) -> None:
    """CVE-2021-32760's shape: a hard link to a file outside, then a member that would
    chmod it: refused at the link, the canary's mode (checked by the guard) as it was."""
    layers, name, why = hardlink_cases(site)[case]
    site.cli_refused(site.image(*layers), layer=len(layers) - 1, member=name, why=why)
    assert stat.S_IMODE(site.canary.stat().st_mode) == 0o640


def test_a_hard_link_to_a_lower_layer_file_is_the_same_inode(site: Site) -> None:
    site.unpack(
        site.image(
            tar(member("etc/", DIR), member("etc/f", data=b"lower\n", mode=0o640)),
            tar(
                member("hl", LNK, link="etc/f"),
                member("sub/hl2", LNK, link="/etc/f"),  # an absolute link name, inside
                member("via", SYM, link="/etc"),
                member("hl3", LNK, link="via/f"),  # through a symlink, inside
            ),
        )
    )
    f = os.stat(site.rootfs / "etc/f")
    for name in ("hl", "sub/hl2", "hl3"):
        st = os.lstat(site.rootfs / name)
        assert (st.st_ino, st.st_dev) == (f.st_ino, f.st_dev)
    assert f.st_nlink == 4
    assert (site.rootfs / "hl").read_bytes() == b"lower\n"


def test_a_file_rewritten_above_a_hard_link_is_a_new_inode(site: Site) -> None:
    site.unpack(
        site.image(
            tar(member("f", data=b"old\n"), member("hl", LNK, link="f")),
            tar(member("f", data=b"new\n")),
        )
    )
    assert (site.rootfs / "f").read_bytes() == b"new\n"
    assert (site.rootfs / "hl").read_bytes() == b"old\n"
    assert os.stat(site.rootfs / "f").st_nlink == 1
    assert os.stat(site.rootfs / "hl").st_nlink == 1


@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_a_hard_link_to_a_symlink_links_the_symlink(site: Site, link: str) -> None:
    target = str(site.canary) if link == "absolute" else "../../outside/canary"
    site.unpack(site.image(tar(member("s", SYM, link=target), member("hl", LNK, link="s"))))
    s, hl = os.lstat(site.rootfs / "s"), os.lstat(site.rootfs / "hl")
    assert stat.S_ISLNK(hl.st_mode) and hl.st_ino == s.st_ino and s.st_nlink == 2
    assert os.readlink(site.rootfs / "hl") == target


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
@pytest.mark.parametrize("link", ["absolute", "relative"])
@pytest.mark.parametrize("over", ["regular", "directory", "fifo"])
def test_a_member_over_a_hard_link_to_a_symlink_outside(
    site: Site, over: str, link: str, split: bool
) -> None:
    """The link name is replaced; the outside target is never written or chmodded."""
    target = str(site.canary) if link == "absolute" else "../../outside/canary"
    later = {
        "regular": member("hl", data=b"over\n", mode=0o777),
        "directory": member("hl", DIR, mode=0o777),
        "fifo": member("hl", FIFO, mode=0o777),
    }[over]
    layers = lower_and_upper(
        split, [member("s", SYM, link=target), member("hl", LNK, link="s")], [later]
    )
    site.unpack(site.image(*layers))
    assert os.readlink(site.rootfs / "s") == target
    assert os.lstat(site.rootfs / "s").st_nlink == 1
    st = os.lstat(site.rootfs / "hl")
    assert stat.S_IMODE(st.st_mode) == 0o777
    if over == "regular":
        assert (site.rootfs / "hl").read_bytes() == b"over\n"


# -- a directory replaced by a symlink in the same layer (CVE-2025-47290) ------------------


@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
@pytest.mark.parametrize("link", ["/", "../../..", "tmp"])
def test_a_directory_replaced_by_a_symlink_then_a_file_below_it(
    site: Site, link: str, split: bool
) -> None:
    """``d/``, ``d/x``, then ``d -> /``, then ``d/etc/PROBE``: the walk cached for ``d``
    must not be reused; the file lands in DIR/rootfs/etc, nothing on the host."""
    target = str(site.tmp) if link == "tmp" else link
    resolved = str(site.tmp) if link == "tmp" else "/"
    first = [member("d/", DIR), member("d/x", data=b"x\n"), member("d/etc/", DIR)]
    second = [
        member("d", SYM, link=target),
        member(f"d/etc/{PROBE}", data=b"contained\n"),
        member("d/outside/canary", data=b"not the canary\n"),
    ]
    site.unpack(site.image(*lower_and_upper(split, first, second)))
    assert os.readlink(site.rootfs / "d") == target
    base = site.inside(resolved)
    assert (base / "etc" / PROBE).read_bytes() == b"contained\n"
    assert (base / "outside/canary").read_bytes() == b"not the canary\n"
    assert not os.path.lexists(base / "x")


# -- whiteouts -----------------------------------------------------------------------------


def test_a_whiteout_through_a_symlink_to_outside_removes_nothing_outside(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("l", SYM, link=str(site.outside)),
                member("r", SYM, link="../../outside"),
                member("d", SYM, link=str(site.outside_dir)),
            ),
            tar(
                member("l/.wh.canary"),
                member("l/.wh.dir"),
                member("r/.wh.canary"),
                member("r/.wh.link"),
                member("d/.wh..wh..opq"),
                member("d/sub/.wh.deep"),
            ),
        )
    )
    for name in ("l", "r", "d"):
        assert stat.S_ISLNK(os.lstat(site.rootfs / name).st_mode)


def test_a_whiteout_through_a_symlink_applies_inside(site: Site) -> None:
    """``l -> ../..`` is the root, as a container sees it: ``l/.wh.outside`` removes
    DIR/rootfs/outside (a lower layer's), not the host's ``outside``."""
    site.unpack(
        site.image(
            tar(
                member("outside/", DIR),
                member("outside/canary", data=b"lower\n"),
                member("d/", DIR),
                member("d/old", data=b"old\n"),
                member("l", SYM, link="../.."),
                member("m", SYM, link="/d"),
            ),
            tar(member("l/.wh.outside"), member("m/.wh..wh..opq")),
        )
    )
    assert not os.path.lexists(site.rootfs / "outside")
    assert os.listdir(site.rootfs / "d") == []


def test_a_whiteout_of_a_symlink_removes_the_symlink_only(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("s", SYM, link=str(site.outside_dir)),
                member("d/", DIR),
                member("d/s", SYM, link=str(site.outside_dir)),
                member("d/t", SYM, link="../../../outside"),
                member("d/c", SYM, link=str(site.canary)),
            ),
            tar(member(".wh.s"), member("d/.wh..wh..opq")),
        )
    )
    assert not os.path.lexists(site.rootfs / "s")
    assert os.listdir(site.rootfs / "d") == []


@pytest.mark.parametrize("position", [0, 1])
@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "etc/.wh..", "etc/.wh."])
def test_an_invalid_whiteout_is_refused(site: Site, name: str, position: int) -> None:
    image = site.image(*layers_at(position, tar(member("etc/", DIR), member(name))))
    site.cli_refused(image, layer=position, member=name, why="an invalid whiteout")


def test_a_whiteout_removes_what_lower_layers_wrote(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("a", data=b"a"),
                member("b", data=b"b"),
                member("d/", DIR),
                member("d/x", data=b"x"),
                member("d/sub/", DIR),
                member("d/sub/y", data=b"y"),
                member("s", SYM, link="b"),
            ),
            tar(member(".wh.a"), member(".wh.d"), member(".wh.s"), member(".wh.missing")),
        )
    )
    assert sorted(os.listdir(site.rootfs)) == ["b"]
    assert (site.rootfs / "b").read_bytes() == b"b"


@pytest.mark.parametrize("order", ["file-first", "whiteout-first"])
def test_a_whiteout_keeps_what_its_own_layer_wrote(site: Site, order: str) -> None:
    file_, whiteout = member("c", data=b"upper\n"), member(".wh.c")
    new, new_whiteout = member("n", data=b"new\n"), member(".wh.n")
    upper = [file_, whiteout, new, new_whiteout]
    if order == "whiteout-first":
        upper = [whiteout, file_, new_whiteout, new]
    site.unpack(site.image(tar(member("c", data=b"lower\n")), tar(*upper)))
    assert (site.rootfs / "c").read_bytes() == b"upper\n"
    assert (site.rootfs / "n").read_bytes() == b"new\n"


def test_an_opaque_whiteout_hides_the_lower_layers_only(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("d/", DIR),
                member("d/old", data=b"old"),
                member("d/sub/", DIR),
                member("d/sub/deep", data=b"deep"),
                member("d/link", SYM, link=str(site.outside_dir)),
                member("keep", data=b"keep"),
            ),
            tar(
                member("d/", DIR, mode=0o750, mtime=1000),
                member("d/new1", data=b"n1"),
                member("d/newdir/", DIR),
                member("d/newdir/f", data=b"f"),
                member("d/.wh..wh..opq"),
                member("d/new2", data=b"n2"),
                member("e/.wh..wh..opq"),  # a directory that does not exist: nothing
            ),
        )
    )
    assert sorted(os.listdir(site.rootfs / "d")) == ["new1", "new2", "newdir"]
    assert (site.rootfs / "d/newdir/f").read_bytes() == b"f"
    assert (site.rootfs / "keep").read_bytes() == b"keep"
    assert not os.path.lexists(site.rootfs / "e")
    st = os.stat(site.rootfs / "d")
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == 1000 * 10**9


def test_aufs_metadata_is_passed_over(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("f", data=b"f"),
                member(".wh..wh.plnk/", DIR),
                member(".wh..wh.plnk/12.34", LNK, link="f"),
                member(".wh..wh.aufs"),
                member(".wh..wh.orph/", DIR),
                member("g", data=b"g"),
            )
        )
    )
    assert sorted(os.listdir(site.rootfs)) == ["f", "g"]
    assert os.stat(site.rootfs / "f").st_nlink == 1


@pytest.mark.parametrize("name", [".wh.a", ".wh..wh.plnk/12.34", ".wh..wh.aufs"])
def test_a_whiteout_or_aufs_member_with_data_is_passed_over(site: Site, name: str) -> None:
    image = site.image(
        tar(member("a", data=b"a")),
        tar(member(name, data=b"data a whiteout should not have"), member("b", data=b"b")),
    )
    site.unpack(image)
    assert (site.rootfs / "b").read_bytes() == b"b"
    assert os.path.lexists(site.rootfs / "a") == (name != ".wh.a")


# -- symlink chains ------------------------------------------------------------------------


LOOPS = {
    "two": [member("a", SYM, link="b"), member("b", SYM, link="a")],
    "self": [member("a", SYM, link="a")],
    "self-dot": [member("a", SYM, link="./a")],
    "self-absolute": [member("a", SYM, link="/a")],
    "through-dotdot": [member("d/", DIR), member("a", SYM, link="d/../a")],
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_symlink_loop_is_refused(site: Site, loop: str) -> None:
    image = site.image(tar(*LOOPS[loop], member("a/x", data=b"x")))
    site.cli_refused(image, layer=0, member="a/x", why=LOOP)


def chain(n: int) -> list[Member]:
    """``l0 -> l1 -> … -> l(n-1) -> d``: ``n`` symlinks to the directory ``d``."""
    links = [member(f"l{i}", SYM, link=f"l{i + 1}") for i in range(n - 1)]
    return [member("d/", DIR), *links, member(f"l{n - 1}", SYM, link="/d")]


def test_a_chain_of_forty_symlinks_is_followed(site: Site) -> None:
    site.unpack(site.image(tar(*chain(40), member("l0/x", data=b"x"))))
    assert (site.rootfs / "d/x").read_bytes() == b"x"


def test_a_chain_of_forty_one_symlinks_is_refused(site: Site) -> None:
    image = site.image(tar(*chain(41)), tar(member("l0/x", data=b"x")))
    site.cli_refused(image, layer=1, member="l0/x", why=LOOP)


def test_a_chain_longer_than_path_max_is_resolved_inside(site: Site) -> None:
    """20 links of 400-odd bytes each: more than PATH_MAX in all, each within it; the
    walk resolves one component at a time, so the chain ends in DIR/rootfs/d."""
    n = 20
    links = [member(f"s{i}", SYM, link="./" * 200 + f"s{i + 1}") for i in range(n - 1)]
    last = member(f"s{n - 1}", SYM, link="../" * 50 + "d")
    total = sum(len(m.info.linkname) for m in [*links, last])
    assert total > 4096
    site.unpack(site.image(tar(member("d/", DIR), *links, last, member("s0/x", data=b"x"))))
    assert (site.rootfs / "d/x").read_bytes() == b"x"


def test_a_symlink_target_longer_than_path_max_is_refused_in_one_line(site: Site) -> None:
    target = "a/" * 2100 + PROBE
    image = site.image(tar(member("l", SYM, pax={"linkpath": target.encode()})))
    site.cli_refused(image, layer=0, member="l", why="File name too long")


@pytest.mark.parametrize("kind", ["regular", "fifo", "symlink-to-file"])
def test_a_path_through_something_not_a_directory_is_refused(site: Site, kind: str) -> None:
    first = {
        "regular": [member("f", data=b"f")],
        "fifo": [member("f", FIFO)],
        "symlink-to-file": [member("g", data=b"g"), member("f", SYM, link="/g")],
    }[kind]
    shown = "g" if kind == "symlink-to-file" else "f"
    image = site.image(tar(*first), tar(member("f/x", data=b"x")))
    site.cli_refused(image, layer=1, member="f/x", why=f"{shown!r} is not a directory")


# -- device nodes --------------------------------------------------------------------------


@needs_root
def test_device_nodes_are_made_as_root(site: Site) -> None:
    site.unpack(
        site.image(
            tar(
                member("dev/", DIR),
                member("dev/c", CHR, major=42, minor=7, mode=0o620, uid=1234, gid=5678),
                member("dev/b", BLK, major=7, minor=3, mode=0o660),
                member("dev/p", FIFO, mode=0o610, mtime=1000),
            )
        )
    )
    c, b, p = (os.lstat(site.rootfs / "dev" / n) for n in "cbp")
    assert stat.S_ISCHR(c.st_mode) and (os.major(c.st_rdev), os.minor(c.st_rdev)) == (42, 7)
    assert stat.S_IMODE(c.st_mode) == 0o620 and (c.st_uid, c.st_gid) == (1234, 5678)
    assert stat.S_ISBLK(b.st_mode) and (os.major(b.st_rdev), os.minor(b.st_rdev)) == (7, 3)
    assert stat.S_ISFIFO(p.st_mode) and stat.S_IMODE(p.st_mode) == 0o610
    assert p.st_mtime_ns == 1000 * 10**9


def devices_layer(n: int) -> bytes:
    devices = [member(f"dev/c{i}", CHR, major=1, minor=i) for i in range(n)]
    return tar(
        member("dev/", DIR),
        *devices,
        member("dev/p", FIFO),
        member("etc/hostname", data=b"lab\n"),
    )


def test_a_rootless_unpack_skips_device_nodes_with_a_warning(site: Site) -> None:
    warnings: list[str] = []
    done = site.unpack(site.image(devices_layer(2)), rootless=True, warn=warnings.append)
    expected = "skipped 2 device node(s) a rootless unpack cannot make: dev/c0, dev/c1"
    assert warnings == [expected]
    assert done.warnings == (expected,)
    assert sorted(os.listdir(site.rootfs / "dev")) == ["p"]
    assert (site.rootfs / "etc/hostname").read_bytes() == b"lab\n"


def test_the_command_warns_of_skipped_devices_and_unpacks_the_rest(site: Site) -> None:
    image = site.image(devices_layer(5))
    code, out, err = site.cli("unpack", "-q", "--rootless", image, site.bundle, target=site.bundle)
    assert (code, out) == (0, ""), err
    assert err == (
        "ocistore: warning: skipped 5 device node(s) a rootless unpack cannot make: "
        "dev/c0, dev/c1, dev/c2 and 2 more\n"
    )
    assert (site.rootfs / "etc/hostname").read_bytes() == b"lab\n"
    assert sorted(os.listdir(site.rootfs / "dev")) == ["p"]


# -- modes, times, owners, xattrs ----------------------------------------------------------


def metadata_layer() -> bytes:
    return tar(
        member("d/", DIR, mode=0o2775, mtime=1000, uid=1234, gid=5678),
        member("d/f", data=b"suid\n", mode=0o4755, mtime=2000, uid=1234, gid=5678),
        member("d/g", data=b"sgid\n", mode=0o2711, mtime=2001, uid=1234),
        member("t/", DIR, mode=0o1777, mtime=3000, gid=5678),
        member("t/x", data=b"x", mode=0o600, mtime=3001),
        member("s", SYM, link="d/f", mtime=4000, uid=1234, gid=5678),
        member("ro/", DIR, mode=0o500, mtime=5000),
        member("ro/child", data=b"c", mode=0o400),
        member("ro/sub/", DIR, mode=0o000, mtime=5001),
        member("ro/sub/leaf", data=b"l"),
        member("p", data=b"p", pax={"mtime": b"1234567890.123456789"}),
        member("big-owner", data=b"b", pax={"uid": b"3000000", "gid": b"4000000"}),
        member("plain", data=b"plain", uid=0, gid=0),
    )


def assert_modes_and_times(rootfs: Path) -> None:
    expected = {
        "d": (stat.S_IFDIR | 0o2775, 1000),
        "d/f": (stat.S_IFREG | 0o4755, 2000),
        "d/g": (stat.S_IFREG | 0o2711, 2001),
        "t": (stat.S_IFDIR | 0o1777, 3000),
        "t/x": (stat.S_IFREG | 0o600, 3001),
        "ro": (stat.S_IFDIR | 0o500, 5000),
        "ro/sub": (stat.S_IFDIR | 0o000, 5001),
    }
    for name, (mode, mtime) in expected.items():
        st = os.lstat(rootfs / name)
        assert (st.st_mode, st.st_mtime_ns) == (mode, mtime * 10**9), name
    assert os.lstat(rootfs / "s").st_mtime_ns == 4000 * 10**9
    assert os.lstat(rootfs / "p").st_mtime_ns == 1234567890_123456789
    assert (rootfs / "ro/sub/leaf").read_bytes() == b"l"


@needs_root
def test_modes_times_and_owners_are_kept_as_root(site: Site) -> None:
    site.unpack(site.image(metadata_layer(), tar(member("d/later", data=b"later\n"))))
    assert_modes_and_times(site.rootfs)  # d's mtime too, though the second layer added to it
    owners = {
        "d": (1234, 5678),
        "d/f": (1234, 5678),
        "d/g": (1234, 0),
        "t": (0, 5678),
        "s": (1234, 5678),
        "big-owner": (3_000_000, 4_000_000),
        "plain": (0, 0),
    }
    for name, owner in owners.items():
        st = os.lstat(site.rootfs / name)
        assert (st.st_uid, st.st_gid) == owner, name


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def owner_message(uid: int, gid: int) -> bytes:
    """The rootless-containers ``Resource`` protobuf: field 1 (uid) and field 2 (gid) as
    varints, each left out when 0."""
    return (b"\x08" + varint(uid) if uid else b"") + (b"\x10" + varint(gid) if gid else b"")


def test_a_rootless_unpack_keeps_owners_in_an_xattr(site: Site) -> None:
    site.unpack(site.image(metadata_layer()), rootless=True)
    assert_modes_and_times(site.rootfs)
    me = (os.geteuid(), os.getegid())
    for name in ("d", "d/f", "d/g", "t", "s", "big-owner", "plain"):
        st = os.lstat(site.rootfs / name)
        assert (st.st_uid, st.st_gid) == me, name
    if not site.user_xattrs:
        pytest.skip("the file system refuses user xattrs: user.rootlesscontainers not checked")
    expected = {
        "d": b"\x08\xd2\x09\x10\xae\x2c",  # uid 1234 (field 1), gid 5678 (field 2)
        "d/f": b"\x08\xd2\x09\x10\xae\x2c",
        "d/g": b"\x08\xd2\x09",  # gid 0 left out
        "t": b"\x10\xae\x2c",  # uid 0 left out
        "big-owner": owner_message(3_000_000, 4_000_000),
    }
    assert owner_message(1234, 5678) == expected["d"]
    for name, value in expected.items():
        assert xattrs_of(site.rootfs / name).get(ROOTLESS_XATTR) == value, name
    for name in ("plain", "t/x", "p"):
        assert ROOTLESS_XATTR not in xattrs_of(site.rootfs / name), name


def test_a_rootless_image_cannot_forge_its_owner_xattr(site: Site) -> None:
    forged = {f"SCHILY.xattr.{ROOTLESS_XATTR}": b"\x08\x01"}
    site.unpack(
        site.image(
            tar(
                member("root-owned", data=b"r", pax=forged),
                member("user-owned", data=b"u", uid=7, pax=forged),
            )
        ),
        rootless=True,
    )
    if not site.user_xattrs:
        pytest.skip("the file system refuses user xattrs")
    assert ROOTLESS_XATTR not in xattrs_of(site.rootfs / "root-owned")
    assert xattrs_of(site.rootfs / "user-owned")[ROOTLESS_XATTR] == b"\x08\x07"


#: A valid VFS_CAP_REVISION_2 file capability (cap_net_raw permitted, effective).
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


@pytest.mark.parametrize("rootless", [False, True])
def test_xattrs_are_set_but_never_capabilities_or_overlay_whiteouts(
    site: Site, rootless: bool
) -> None:
    records = {
        "SCHILY.xattr.user.foo": b"bar",
        "SCHILY.xattr.security.capability": CAPABILITY,
        "SCHILY.xattr.trusted.overlay.opaque": b"y",
        "SCHILY.xattr.trusted.overlay.whiteout": b"y",
    }
    site.unpack(
        site.image(
            tar(
                member("f", data=b"f", pax=records),
                member("d/", DIR, pax=records),
                member("s", SYM, link="f", pax={"SCHILY.xattr.user.link": b"1"}),
            )
        ),
        rootless=rootless,
    )
    for name in ("f", "d"):
        names = xattrs_of(site.rootfs / name)
        assert "security.capability" not in names, name
        assert not any(n.startswith("trusted.overlay.") for n in names), name
        if site.user_xattrs:
            assert names.get("user.foo") == b"bar", name
    if not site.user_xattrs:
        pytest.skip("the file system refuses user xattrs: user.foo not checked")


# -- limits and what the tar format allows -------------------------------------------------


def apply_directly(site: Site, layer: bytes) -> InvalidInput:
    """Apply one layer with the unpack's engine to a directory of its own, guarded; the
    error it raises."""
    target = site.tmp / "direct"
    target.mkdir()
    with site.guard(target), Root.open(str(target)) as root, pytest.raises(InvalidInput) as e:
        Applier(root).apply("layer x", [layer])
    assert str(e.value).startswith("layer x: ")
    return e.value


@pytest.mark.parametrize("chained", [False, True])
def test_a_pax_header_over_a_mebibyte_is_refused(site: Site, chained: bool) -> None:
    """Refused where the layer enters the store, and by the unpack's engine too."""
    if chained:  # two extended headers for one member, 600 KiB each
        payload = pax_record("comment", b"c" * (600 << 10))
        half = extended_header(payload)
        hostile = tar(member("ok", data=b"ok"), half, half, member("f", data=b"f"))
        why = (
            f"pax headers of {2 * len(payload)} bytes for one member, "
            "over the limit of 1048576 bytes"
        )
    else:
        payload = pax_record("comment", b"c" * (1 << 20))
        hostile = tar(member("ok", data=b"ok"), extended_header(payload), member("f", data=b"f"))
        why = f"pax header of {len(payload)} bytes, over the limit of 1048576 bytes"
    diff_id = "sha256:" + hashlib.sha256(hostile).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    source = LayerSource(open=lambda: io.BytesIO(hostile), what="the big layer")
    with site.guard(None), pytest.raises(InvalidInput) as e:
        site.store.add_images([ImageSource(config, "big", [source])])
    assert str(e.value).startswith("the big layer: ") and why in str(e.value)
    assert why in str(apply_directly(site, hostile))


def test_more_members_than_the_limit_are_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ocistore.rootfs.apply.MAX_LAYER_ENTRIES", 50)
    at_limit = site.image(tar(*(member(f"f{i}", data=b"x") for i in range(50))))
    over = site.image(benign(), tar(member("d/", DIR), *(member(f"d/.wh.f{i}") for i in range(50))))
    site.unpack(at_limit)
    remove_deep(site.bundle)
    site.cli_refused(over, layer=1, member=None, why="more than 50 members, over the limit of 50")


def test_an_old_gnu_sparse_member_is_refused(site: Site) -> None:
    layer = tar(
        member("ok", data=b"ok"), gnu_sparse("sparse", [(0, b"head"), (4096, b"tail")], 8192)
    )
    image = site.image(layer)
    site.cli_refused(image, layer=0, member="sparse", why="a GNU sparse file (not supported)")


def test_a_pax_sparse_member_is_refused_or_expanded(site: Site) -> None:
    data = b"1\n4096\n4\n".ljust(512, b"\0") + b"data"
    records = {
        "GNU.sparse.major": b"1",
        "GNU.sparse.minor": b"0",
        "GNU.sparse.name": b"sparse",
        "GNU.sparse.realsize": b"8192",
    }
    image = site.image(tar(member("GNUSparseFile.0/sparse", data=data, pax=records)))
    try:
        site.unpack(image)
    except InvalidInput as e:
        assert "sparse" in str(e)
        assert not os.path.lexists(site.bundle)
    else:
        expanded = bytes(4096) + b"data" + bytes(4092)
        assert (site.rootfs / "sparse").read_bytes() == expanded


@pytest.mark.parametrize("kind", [b"Z", b"V", b"M", b"N", b"D", b"A"])
def test_an_unknown_member_type_is_refused(site: Site, kind: bytes) -> None:
    image = site.image(benign(), tar(member("ok", data=b"ok"), member("odd", kind)))
    shown = kind.decode()
    site.cli_refused(image, layer=1, member="odd", why=f"unknown member type {shown!r}")


def test_a_contiguous_file_is_a_regular_file(site: Site) -> None:
    site.unpack(site.image(tar(member("c", tarfile.CONTTYPE, data=b"contiguous\n"))))
    assert (site.rootfs / "c").read_bytes() == b"contiguous\n"


def test_a_very_deep_path_unpacks_or_is_refused_in_one_line(site: Site) -> None:
    deep = "a/" * 1500 + PROBE
    image = site.image(tar(member(deep, data=b"deep\n")))
    try:
        try:
            site.unpack(image)
        except InvalidInput as e:
            assert "limit" in str(e)
            assert not os.path.lexists(site.bundle)
        else:
            assert (site.rootfs / deep).read_bytes() == b"deep\n"
    finally:
        remove_deep(site.bundle)


def reuses_directory_inodes(where: Path) -> bool:
    """Whether this file system gives a new directory the inode of one just removed."""
    probe = where / "inode-probe"
    probe.mkdir()
    old = set()
    for i in range(20):
        (probe / f"old{i}").mkdir()
        old.add((probe / f"old{i}").stat().st_ino)
    for i in range(20):
        (probe / f"old{i}").rmdir()
    new = set()
    for i in range(20):
        (probe / f"new{i}").mkdir()
        new.add((probe / f"new{i}").stat().st_ino)
    remove_deep(probe)
    return bool(old & new)


def test_a_removed_directory_gives_its_metadata_to_no_other(site: Site) -> None:
    if not reuses_directory_inodes(site.tmp):
        pytest.skip("this file system does not reuse inodes: the fault cannot show")
    lower = [member(f"d{i}/", DIR, mode=0o700, mtime=1000, uid=1234) for i in range(20)]
    upper = [member(f".wh.d{i}") for i in range(20)]
    upper += [member(f"e{i}/f", data=b"f") for i in range(20)]
    site.unpack(site.image(tar(*lower), tar(*upper)))
    for i in range(20):
        st = os.stat(site.rootfs / f"e{i}")
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, os.geteuid()), f"e{i}"
        assert st.st_mtime_ns != 1000 * 10**9, f"e{i}"


# -- the target directory ------------------------------------------------------------------


def test_a_directory_not_empty_is_refused_without_force(site: Site) -> None:
    site.bundle.mkdir()
    (site.bundle / "keep").write_bytes(b"mine\n")
    image = site.image(benign())
    code, out, err = site.cli("unpack", "-q", image, site.bundle)  # nothing may change
    assert (code, out) == (1, "")
    assert err == (
        f"ocistore: {site.bundle}: the directory is not empty (--force unpacks into it)\n"
    )
    site.unpack(image, force=True)
    assert (site.bundle / "keep").read_bytes() == b"mine\n"
    assert (site.rootfs / "etc/hostname").read_bytes() == b"lab\n"


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("points_at", ["outside-dir", "empty-dir", "nothing"])
def test_a_target_that_is_a_symlink_is_refused(site: Site, force: bool, points_at: str) -> None:
    elsewhere = {
        "outside-dir": site.outside_dir,
        "empty-dir": site.outside / "empty",
        "nothing": site.outside / "missing",
    }[points_at]
    if points_at == "empty-dir":
        elsewhere.mkdir()
    site.bundle.symlink_to(elsewhere)
    image = site.image(benign())
    options = ["--force"] if force else []
    code, out, err = site.cli("unpack", "-q", *options, image, site.bundle)
    assert (code, out) == (1, "")
    assert err.startswith(f"ocistore: {site.bundle}: not a directory (") and err.count("\n") == 1
    assert os.readlink(site.bundle) == str(elsewhere)
    assert not os.path.lexists(site.outside / "missing")


def test_a_failure_removes_only_the_directory_it_made(site: Site) -> None:
    hostile = site.image(tar(member("etc/", DIR), member("etc/x", data=b"x"), member("../y")))
    site.refused(hostile, layer=0, member="../y", why=CLIMB)  # made here: removed
    site.bundle.mkdir()  # there before, empty: kept, with what was written
    with site.guard(site.bundle), pytest.raises(UnsafeEntry):
        unpack(site.store, hostile, str(site.bundle))
    assert (site.rootfs / "etc/x").read_bytes() == b"x"
    assert RECORD not in os.listdir(site.bundle)


def test_a_forced_unpack_does_not_follow_a_rootfs_symlink(site: Site) -> None:
    site.bundle.mkdir()
    (site.bundle / "rootfs").symlink_to(site.outside_dir)
    image = site.image(tar(member("inner", data=b"written\n"), member(PROBE, data=b"p")))
    code, out, err = site.cli("unpack", "-q", "--force", image, site.bundle)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert os.readlink(site.bundle / "rootfs") == str(site.outside_dir)


def test_a_forced_unpack_replaces_a_record_that_is_a_symlink(site: Site) -> None:
    site.bundle.mkdir()
    (site.bundle / RECORD).symlink_to(site.canary)
    site.unpack(site.image(benign()), force=True)
    assert stat.S_ISREG(os.lstat(site.bundle / RECORD).st_mode)


def test_a_forced_unpack_does_not_write_through_a_temporary_record_symlink(site: Site) -> None:
    site.bundle.mkdir()
    (site.bundle / (RECORD + ".tmp")).symlink_to(site.canary)
    site.unpack(site.image(benign()), force=True)


def test_a_forced_bundle_does_not_write_through_a_config_symlink(site: Site) -> None:
    site.bundle.mkdir()
    (site.bundle / "config.json").symlink_to(site.canary)
    image = site.image(benign())
    code, out, err = site.cli(
        "unpack", "-q", "--force", "--bundle", image, site.bundle, target=site.bundle
    )
    assert (code, out, err) == (0, "", "")  # replaced, as the record is: never written through
    assert stat.S_ISREG(os.lstat(site.bundle / "config.json").st_mode)
