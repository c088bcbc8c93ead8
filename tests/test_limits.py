"""Bombs and quadratic work (issue 10, item 5): every input has limits.

One test per shape found: deep JSON, an OCI index "diamond", a wide ``index.json``, a
huge ``manifest.json``, an archive of junk members, a compressed stream of zeros. Each
bad input ends in one line naming the limit (exit 1, no traceback, the store as it
was); work is shown bounded by counting (reads, descriptors, comparisons), never by
timing; memory by the peak RSS of a child process.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from util import make_tar, unchanged

from ocistore.cli import main as cli
from ocistore.errors import InvalidInput
from ocistore.formats import docker_archive, oci_layout, reader
from ocistore.spec import limits, tarscan
from ocistore.spec import mediatypes as mt
from ocistore.spec.limits import load_json
from ocistore.spec.platform import Platform
from ocistore.store import Store

LAYER = make_tar({"etc/hello": b"hello\n"})
DIFF_ID = "sha256:" + hashlib.sha256(LAYER).hexdigest()
CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]}}
).encode()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of the members in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive_tar(manifest: bytes, config: bytes = CONFIG) -> bytes:
    return tar_bytes([("c.json", config), ("l.tar", LAYER), ("manifest.json", manifest)])


def entry(**extra: Any) -> dict[str, Any]:
    return {"Config": "c.json", "RepoTags": None, "Layers": ["l.tar"], **extra}


def desc(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": desc(CONFIG, mt.OCI_CONFIG),
        "layers": [desc(LAYER, mt.OCI_LAYER)],
    }
).encode()


def oci_tar(index: bytes, blobs: list[bytes]) -> bytes:
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    unique = {sha(b): b for b in [CONFIG, LAYER, MANIFEST, *blobs]}
    members += [(f"blobs/sha256/{d[7:]}", b) for d, b in unique.items()]
    return tar_bytes(members)


def index_of(descs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": descs}).encode()


def diamond(levels: int, fan: int) -> tuple[bytes, list[bytes]]:
    """``index.json`` over ``levels`` indexes, each naming the next ``fan`` times, the
    last naming the manifest: ``fan ** levels`` paths, ``levels`` index blobs."""
    below, below_type = MANIFEST, mt.OCI_MANIFEST
    indexes = []
    for _ in range(levels):
        below = index_of([desc(below, below_type)] * fan)
        below_type = mt.OCI_INDEX
        indexes.append(below)
    return index_of([desc(below, below_type)]), indexes


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def load(store: Store, capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    """``ocistore --root R load -i PATH`` in this process: exit code, stderr."""
    capsys.readouterr()
    try:
        code = cli.main(["--root", str(store.root), "load", "-i", str(path)])
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def refused(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes, name: str
) -> str:
    """Load ``data`` as the file ``name``: one ``ocistore:`` line, exit 1, store as it was."""
    path = tmp_path / name
    path.write_bytes(data)
    with unchanged(store):
        code, err = load(store, capsys, path)
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ocistore: {path}: "), err
    return lines[0]


#: ``ocistore`` that reports its peak RSS on exit: ``VmHWM`` belongs to the process's
#: memory since its exec, where ``wait4``'s ``ru_maxrss`` would count the pages of the
#: forked test process too.
_REPORTING = """
import atexit, sys
def report():
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    sys.stderr.write(f"peak-rss {kib}\\n")
atexit.register(report)
from ocistore.cli import run
sys.exit(run())
"""


def peak_rss_of(*args: str | Path) -> tuple[int, str, int]:
    """Run ``ocistore ARGS``: its exit code, stderr and peak RSS in bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", _REPORTING, *args], capture_output=True, check=False
    )
    lines = proc.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("peak-rss "), lines
    return proc.returncode, "\n".join(lines[:-1]), int(lines[-1].split()[1]) * 1024


# -- deep JSON ----------------------------------------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000
V1_ID = "a" * 64
LEGACY = [
    (f"{V1_ID}/VERSION", b"1.0"),
    (f"{V1_ID}/json", json.dumps({"id": V1_ID, "created": "2015-01-01T00:00:00Z"}).encode()),
    (f"{V1_ID}/layer.tar", LAYER),
]


def test_json_depth_limit_is_exact() -> None:
    assert load_json(b"[" * 64 + b"]" * 64, "x", 1 << 20) is not None
    for deep in (b"[" * 65 + b"]" * 65, b'{"a":' * 65 + b"1" + b"}" * 65, b"[" * 100_000):
        with pytest.raises(InvalidInput, match=r"^x: JSON nests deeper than the limit of 64"):
            load_json(deep, "x", 1 << 20)


def _deep_config() -> bytes:
    doc = json.loads(CONFIG)
    doc["config"] = {"Labels": {"x": "y"}, "Deep": json.loads(b"[" * 900 + b"]" * 900)}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("where", "data", "named"),
    [
        ("manifest.json", docker_archive_tar(DEEP), "manifest.json"),
        ("config", docker_archive_tar(json.dumps([entry()]).encode(), _deep_config()), "c.json"),
        ("v1 JSON", tar_bytes([(f"{V1_ID}/json", DEEP), (f"{V1_ID}/layer.tar", LAYER)]), "json"),
        ("repositories", tar_bytes([*LEGACY, ("repositories", DEEP)]), "repositories"),
        ("index.json", oci_tar(DEEP, []), "index.json"),
        ("nested index", oci_tar(index_of([desc(DEEP, mt.OCI_INDEX)]), [DEEP]), sha(DEEP)[7:]),
    ],
)
def test_deep_json(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    where: str,
    data: bytes,
    named: str,
) -> None:
    line = refused(store, capsys, tmp_path, data, "deep.tar")
    assert "JSON nests deeper than the limit of 64 levels" in line, where
    assert named in line


# -- the index diamond --------------------------------------------------------------------


class CountingArchive:
    """An archive reader that counts what is opened."""

    def __init__(self, inner: reader.ArchiveReader) -> None:
        self._inner = inner
        self.name = inner.name
        self.opened: dict[str, int] = {}

    def open(self, name: str) -> IO[bytes]:
        self.opened[name] = self.opened.get(name, 0) + 1
        return self._inner.open(name)

    def __getattr__(self, attr: str) -> Callable[..., Any]:
        return getattr(self._inner, attr)  # type: ignore[no-any-return]


def test_index_diamond_reads_each_blob_once(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    index, indexes = diamond(levels=7, fan=10)  # 10,000,000 paths to the manifest
    path = tmp_path / "diamond.tar"
    path.write_bytes(oci_tar(index, indexes))
    archive = reader.open_archive(path, store.spool)
    counting = CountingArchive(archive)
    walk = oci_layout._LayoutReader(counting, None)  # type: ignore[arg-type]
    try:
        (_source,) = walk.read()
    finally:
        archive.close()
    assert max(counting.opened.values()) == 1
    assert len(counting.opened) == 2 + 7 + 2  # oci-layout, index.json, 7 indexes, manifest, config
    assert walk.descriptors == 1 + 7 * 10
    code, err = load(store, capsys, path)
    assert code == 0, err


def test_descriptors_limit(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(oci_layout, "MAX_DESCRIPTORS", 50)
    index, indexes = diamond(levels=7, fan=10)
    line = refused(store, capsys, tmp_path, oci_tar(index, indexes), "diamond.tar")
    assert "more than 50 descriptors in the layout's indexes, over the limit of 50" in line


def test_index_nesting_limit(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    index, indexes = diamond(levels=limits.MAX_INDEX_NESTING + 1, fan=1)
    line = refused(store, capsys, tmp_path, oci_tar(index, indexes), "nested.tar")
    assert f"over the limit of {limits.MAX_INDEX_NESTING}" in line


# -- a wide index.json --------------------------------------------------------------------


class CountingList(list[Any]):
    """A list that counts the searches made in it (``in``, ``index``, ``count``)."""

    searches = 0

    def __contains__(self, item: object) -> bool:
        CountingList.searches += 1
        return super().__contains__(item)

    def index(self, *args: Any) -> int:
        CountingList.searches += 1
        return super().index(*args)

    def count(self, item: Any) -> int:
        CountingList.searches += 1
        return super().count(item)


def wide_index(n: int) -> bytes:
    ref = "org.opencontainers.image.ref.name"
    return index_of([desc(MANIFEST, mt.OCI_MANIFEST, annotations={ref: f"t{i}"}) for i in range(n)])


def test_wide_index_json_is_linear(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """15,000 names for one manifest took 63 s: each was compared with all before it."""
    n = 3000
    path = tmp_path / "wide.tar"
    path.write_bytes(oci_tar(wide_index(n), []))
    real = oci_layout.ImageSource

    def counted(*args: Any, **kwargs: Any) -> Any:
        source = real(*args, **kwargs)
        source.tags = CountingList(source.tags)
        return source

    monkeypatch.setattr(oci_layout, "ImageSource", counted)
    CountingList.searches = 0
    archive = reader.open_archive(path, store.spool)
    try:
        (source,) = oci_layout.read_oci_layout(archive)
    finally:
        archive.close()
    assert len(source.tags) == n
    assert CountingList.searches == 0  # names are looked up in a set, not the list
    monkeypatch.undo()
    code, err = load(store, capsys, path)
    assert code == 0, err


def test_index_json_values_limit(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    many = b'{"schemaVersion":2,"manifests":[' + b"0," * limits.MAX_JSON_VALUES + b"0]}"
    line = refused(store, capsys, tmp_path, oci_tar(many, []), "wide.tar")
    assert "index.json: up to" in line and f"over the limit of {limits.MAX_JSON_VALUES}" in line


# -- a huge manifest.json -----------------------------------------------------------------


def test_manifest_json_size_limit(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The issue's 15 MB manifest.json of 200,000 entries (994 MiB): refused unread."""
    big = json.dumps([entry()] * 200_000).encode()
    assert len(big) > limits.MAX_ARCHIVE_JSON
    line = refused(store, capsys, tmp_path, docker_archive_tar(big), "big.tar")
    assert "manifest.json" in line and "over the limit of 8 MiB for manifest.json" in line


def test_manifest_json_images_limit(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    many = json.dumps([entry()] * (limits.MAX_IMAGES + 1)).encode()
    line = refused(store, capsys, tmp_path, docker_archive_tar(many), "many.tar")
    assert f"manifest.json: {limits.MAX_IMAGES + 1} images, over the limit of " in line


def test_repeated_entries_are_one_image_read_once(store: Store, tmp_path: Path) -> None:
    n = 5000
    doc = [entry(RepoTags=[f"app:{i}"]) for i in range(n)]
    path = tmp_path / "repeated.tar"
    path.write_bytes(docker_archive_tar(json.dumps(doc).encode()))
    archive = reader.open_archive(path, store.spool)
    counting = CountingArchive(archive)
    try:
        (source,) = docker_archive.read_docker_archive(counting)  # type: ignore[arg-type]
    finally:
        archive.close()
    assert counting.opened == {"manifest.json": 1, "c.json": 1}
    assert len(source.tags) == n


def test_manifest_json_of_many_entries_stays_small(tmp_path: Path) -> None:
    """The largest manifest.json the limits let through loads within the memory goal."""
    doc = [entry(RepoTags=[f"app:{i}"]) for i in range(limits.MAX_IMAGES)]
    path = tmp_path / "many.tar"
    path.write_bytes(docker_archive_tar(json.dumps(doc).encode()))
    code, err, rss = peak_rss_of("--root", tmp_path / "store", "load", "-i", path)
    assert code == 0, err
    assert rss < 64 << 20, rss


def test_configs_total_limit(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store parses every image's config: one config named by many images counts
    once per image, in both formats."""
    monkeypatch.setattr(docker_archive, "MAX_CONFIGS_TOTAL", 5 * len(CONFIG))
    members = [("c.json", CONFIG)] + [(f"l{i}.tar", LAYER) for i in range(6)]
    doc = json.dumps([{"Config": "c.json", "Layers": [f"l{i}.tar"]} for i in range(6)])
    data = tar_bytes([*members, ("manifest.json", doc.encode())])
    line = refused(store, capsys, tmp_path, data, "configs.tar")
    assert f"manifest.json: more than {5 * len(CONFIG)} bytes of image configs" in line

    monkeypatch.setattr(oci_layout, "MAX_CONFIGS_TOTAL", 5 * len(CONFIG))
    manifests = [
        json.dumps({**json.loads(MANIFEST), "annotations": {"n": str(i)}}).encode()
        for i in range(6)
    ]
    index = index_of([desc(m, mt.OCI_MANIFEST) for m in manifests])
    line = refused(store, capsys, tmp_path, oci_tar(index, manifests), "configs.tar")
    assert f"more than {5 * len(CONFIG)} bytes of image configs (one per image)" in line


# -- junk members -------------------------------------------------------------------------


def junk_members(n: int) -> bytes:
    """``n`` empty members with made-up names, and the end-of-archive marker."""
    base = bytearray(tarfile.TarInfo("junk/000000").tobuf(format=tarfile.USTAR_FORMAT))
    base[148:156] = b" " * 8
    rest = sum(base) - sum(base[:11])
    out = bytearray()
    for i in range(n):
        name = b"junk/%06d" % i
        base[:11] = name
        base[148:156] = b"%06o\x00 " % (rest + sum(name))
        out += base
        base[148:156] = b" " * 8
    return bytes(out + bytes(1024))


def test_junk_member_limit(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tarscan, "MAX_MEMBERS", 1000)
    line = refused(store, capsys, tmp_path, junk_members(1001), "junk.tar")
    assert "more than 1000 members (headers), over the limit of 1000" in line


def test_junk_members_memory(tmp_path: Path) -> None:
    """1,000,000 junk members used 686 MiB; the first one over the limit stops it."""
    path = tmp_path / "junk.tar"
    path.write_bytes(junk_members(limits.MAX_MEMBERS + 1))
    code, err, rss = peak_rss_of("--root", tmp_path / "store", "load", "-i", path)
    assert code == 1 and "Traceback" not in err
    assert f"over the limit of {limits.MAX_MEMBERS}" in err and len(err.splitlines()) == 1
    assert rss < 64 << 20, rss


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: b"not a tar at all" * 64, "not a tar archive ("),
        (
            lambda t: t[:1024] + t[:148] + b"0000000\x00" + t[156:512] + t[1536:],
            "damaged at byte 1024: bad header checksum",
        ),
        (lambda t: t[:148] + b"zzzzzzz\x00" + t[156:], "not a tar archive (checksum field"),
    ],
)
def test_junk_headers(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    damage: Callable[[bytes], bytes],
    message: str,
) -> None:
    good = tar_bytes([("a", b"x" * 10), ("b", b"y" * 10)])
    line = refused(store, capsys, tmp_path, damage(good), "junk.tar")
    assert message in line


def test_long_names_and_pax_headers_are_bounded() -> None:
    seen: list[tarscan.Entry] = []
    long_name = tarfile.TarInfo("x" * (limits.MAX_NAME + 1))
    data = long_name.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024)
    with pytest.raises(InvalidInput, match=f"over the limit of {limits.MAX_NAME}"):
        tarscan.TarScanner("t.tar", seen.append).feed(data)
    big_pax = tarfile.TarInfo("p")
    big_pax.pax_headers = {"comment": "c" * limits.MAX_PAX_HEADER}
    data = big_pax.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024)
    with pytest.raises(InvalidInput, match=r"pax header of \d+ bytes, over the limit"):
        tarscan.TarScanner("t.tar", seen.append).feed(data)
    assert seen == []


def test_sparse_members_are_refused() -> None:
    header = bytearray(tarfile.TarInfo("s").tobuf(format=tarfile.USTAR_FORMAT))
    header[156:157] = b"S"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    with pytest.raises(InvalidInput, match=r"t\.tar: the member at byte 0 is a GNU sparse file"):
        tarscan.TarScanner("t.tar", lambda e: None).feed(bytes(header) + bytes(1024))


# -- compressed streams -------------------------------------------------------------------


class Counted:
    """Counts the bytes read from a stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.read_bytes += len(data)
        return data

    def close(self) -> None:
        self._stream.close()


def gzip_of(parts: list[bytes], zeros: int) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(p) for p in parts]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(z.compress(chunk))
    out.append(z.flush())
    return b"".join(out)


@pytest.mark.parametrize(
    ("parts", "zeros", "message"),
    [
        ([], 32 << 20, "not a tar archive (it starts with a zero block)"),
        ([b"\x01" * 4096], 32 << 20, "not a tar archive ("),
        (
            [docker_archive_tar(json.dumps([entry()]).encode())],
            limits.MAX_TAR_TRAILER + (4 << 20),
            "more than 16 MiB after the tar's end-of-archive marker, over the limit of 16 MiB",
        ),
    ],
    ids=["zeros", "junk", "trailer"],
)
def test_compressed_bomb_is_refused_early(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parts: list[bytes],
    zeros: int,
    message: str,
) -> None:
    """4.5 MB of gzip made 4.1 GB in tmp/ before anything looked at it."""
    streams: list[Counted] = []
    real = reader.decompressed_reader

    def counted(*args: Any, **kwargs: Any) -> IO[bytes]:
        streams.append(Counted(real(*args, **kwargs)))
        return streams[-1]  # type: ignore[return-value]

    monkeypatch.setattr(reader, "decompressed_reader", counted)
    line = refused(store, capsys, tmp_path, gzip_of(parts, zeros), "bomb.tar.gz")
    assert message in line
    (stream,) = streams
    assert stream.read_bytes <= sum(map(len, parts)) + limits.MAX_TAR_TRAILER + (2 << 20)
    if not parts or len(parts[0]) < 8192:
        assert stream.read_bytes <= 1 << 20  # the first read tells


def test_compressed_archive_with_padding_loads(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Zeros after the end-of-archive marker (a record's padding) are read and ignored."""
    path = tmp_path / "padded.tar.gz"
    path.write_bytes(gzip_of([docker_archive_tar(json.dumps([entry()]).encode())], 1 << 20))
    code, err = load(store, capsys, path)
    assert code == 0, err
    assert gzip.decompress(path.read_bytes())[-1024:] == bytes(1024)


# -- JSON integers ------------------------------------------------------------------------

HUGE_INT = b"1" * 5000  # Python refuses to convert more than 4300 digits (a ValueError)


def test_load_json_refuses_huge_integers() -> None:
    for doc in (b"[" + HUGE_INT + b"]", b'{"a": -' + HUGE_INT + b"}", HUGE_INT):
        with pytest.raises(InvalidInput, match=r"^x: a JSON integer of more than 4300 digits"):
            load_json(doc, "x", 1 << 20)
    assert load_json(b"[" + b"1" * 4300 + b"]", "x", 1 << 20) == [int("1" * 4300)]


def _config_with_huge_int() -> bytes:
    return CONFIG[:-1] + b', "x": ' + HUGE_INT + b"}"


@pytest.mark.parametrize(
    ("where", "data", "named"),
    [
        (
            "manifest.json",
            docker_archive_tar(
                b'[{"Config": "c.json", "Layers": ["l.tar"], "x": ' + HUGE_INT + b"}]"
            ),
            "manifest.json",
        ),
        (
            "config",
            docker_archive_tar(json.dumps([entry()]).encode(), _config_with_huge_int()),
            "c.json",
        ),
        ("v1 JSON", tar_bytes([(f"{V1_ID}/json", b'{"x":' + HUGE_INT + b"}")]), "json"),
        ("index.json", oci_tar(b'{"schemaVersion": ' + HUGE_INT + b"}", []), "index.json"),
        (
            "manifest",
            oci_tar(
                index_of([{**desc(b"[" + HUGE_INT + b"]", mt.OCI_MANIFEST)}]),
                [b"[" + HUGE_INT + b"]"],
            ),
            sha(b"[" + HUGE_INT + b"]")[7:],
        ),
    ],
)
def test_huge_json_integer(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    where: str,
    data: bytes,
    named: str,
) -> None:
    """A plain ValueError from json.loads (not a JSONDecodeError) was a traceback."""
    line = refused(store, capsys, tmp_path, data, "int.tar")
    assert "a JSON integer of more than 4300 digits, over the limit of 4300 digits" in line, where
    assert named in line


# -- numeric fields of tar headers --------------------------------------------------------


def ustar_header(name: bytes, size_field: bytes, kind: bytes = b"0") -> bytes:
    """A ustar header with ``size_field`` as its 12 bytes of size, checksummed."""
    block = bytearray(512)
    block[: len(name)] = name
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    block[124:136] = size_field.ljust(11, b" ") + b"\x00" if len(size_field) < 12 else size_field
    block[136:148] = b"00000000000\x00"
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


@pytest.mark.parametrize(
    ("size_field", "message"),
    [
        (b"-1000", "size field b'-1000' is not a number"),  # AssertionError from a file
        (b"-1", "size field b'-1' is not a number"),
        (b"+1", "size field b'+1' is not a number"),
        (b"1_0", "size field b'1_0' is not a number"),
        (b"\xff" * 12, "negative size field"),
        (b"\xc0" + bytes(11), "negative size field"),  # base-256 -2**94, not 2**94
        (b"\xfe" + b"\xff" * 11, "negative size field"),
    ],
    ids=["minus1000", "minus1", "plus", "underscore", "b256-minus1", "b256-c0", "b256-fe"],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["file", "stream"])
def test_tar_numbers_are_octal_digits_or_positive(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    size_field: bytes,
    message: str,
    compressed: bool,
) -> None:
    """``int(text, 8)`` took ``-1000``: a negative size made the scan go backwards (an
    AssertionError for a file; a stream re-read the same header until MAX_MEMBERS)."""
    good = ustar_header(b"a", b"12") + b"x" * 10 + bytes(502)  # one member, no end marker
    data = good + ustar_header(b"manifest.json", size_field) + bytes(1024)
    if compressed:
        data = gzip.compress(data)
    line = refused(store, capsys, tmp_path, data, "neg.tar.gz" if compressed else "neg.tar")
    assert f"archive is damaged at byte {len(good)}: {message}" in line, line


def test_tar_numbers_are_checked_at_byte_0(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = refused(
        store, capsys, tmp_path, ustar_header(b"manifest.json", b"-1000") + bytes(1024), "n.tar"
    )
    assert line.endswith("not a tar archive (size field b'-1000' is not a number)"), line


def test_pax_size_and_record_lengths_are_decimal_digits() -> None:
    for value in ("-1", "+1", "1_0", " 1", "9" * 5000):
        info = tarfile.TarInfo("a")
        info.pax_headers = {"size": value}
        data = info.tobuf(format=tarfile.PAX_FORMAT) + bytes(1024)
        with pytest.raises(InvalidInput, match=r"t\.tar: archive is damaged .*pax size"):
            tarscan.TarScanner("t.tar", lambda e: None).feed(data)
    record = b"+12 path=abc\n"
    header = ustar_header(b"././@PaxHeader", b"%011o" % len(record), b"x")
    data = header + record.ljust(512, b"\x00") + ustar_header(b"a", b"0") + bytes(1024)
    with pytest.raises(InvalidInput, match="a malformed pax extended header"):
        tarscan.TarScanner("t.tar", lambda e: None).feed(data)


# -- chained pax headers ------------------------------------------------------------------


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def pax_header(records: list[tuple[bytes, bytes]]) -> bytes:
    payload = b"".join(pax_record(k, v) for k, v in records)
    header = ustar_header(b"././@PaxHeader", b"%011o" % len(payload), b"x")
    return header + payload + bytes(-len(payload) % 512)


def _without_end(tar: bytes) -> bytes:
    """A tar's members without its end-of-archive marker and record padding."""
    end = 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        for info in t:
            end = info.offset_data + -info.size % 512 + info.size
    return tar[:end]


def test_chained_pax_headers_are_bounded_together(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each header was capped but not their total: 300 chained headers of 1 MB of
    records held 366 MB before the member they extend came."""
    filler = [(b"k%d" % i, b"v" * 1000) for i in range(600)]  # ~600 KB each
    chain = pax_header(filler) * 2
    good = _without_end(docker_archive_tar(json.dumps([entry()]).encode()))
    data = good + chain + ustar_header(b"z", b"0") + bytes(1024)
    for compressed in (False, True):
        line = refused(
            store,
            capsys,
            tmp_path,
            gzip.compress(data) if compressed else data,
            "pax.tar.gz" if compressed else "pax.tar",
        )
        at = len(good) + len(chain) // 2
        assert f"damaged at byte {at}: pax headers of " in line, line
        assert f"bytes for one member, over the limit of {limits.MAX_PAX_HEADER} bytes" in line


def test_chained_pax_headers_within_the_limit_apply() -> None:
    """Several headers for one member still apply, the later over the earlier, and keys
    the scanner does not use (times, comments) are not kept."""
    seen: list[tarscan.Entry] = []
    chain = pax_header([(b"path", b"first"), (b"comment", b"c" * 1000), (b"mtime", b"1.5")])
    chain += pax_header([(b"path", b"second/name"), (b"linkpath", b"t"), (b"size", b"3")])
    scanner = tarscan.TarScanner("t.tar", seen.append)
    scanner.feed(chain + ustar_header(b"x", b"0") + b"abc".ljust(512, b"\x00") + bytes(1024))
    assert scanner.ended
    assert [(e.name, e.size, e.linkname) for e in seen] == [("second/name", 3, "t")]
    with pytest.raises(InvalidInput, match=r"the member at byte \d+ is a GNU sparse file"):
        sparse = pax_header([(b"GNU.sparse.size", b"10")]) + pax_header([(b"path", b"p")])
        tarscan.TarScanner("t.tar", seen.append).feed(sparse + ustar_header(b"p", b"0"))
    with pytest.raises(InvalidInput, match="an extended header is followed by no member"):
        tarscan.TarScanner("t.tar", seen.append).feed(
            ustar_header(b"a", b"0") + pax_header([(b"mtime", b"1")]) + bytes(1024)
        )


def test_chained_pax_headers_memory(tmp_path: Path) -> None:
    """The review's bomb, smaller: 40 chained headers of 1 MB, compressed."""
    one = pax_header([(b"k%d" % i, b"v" * 1000) for i in range(1000)])
    path = tmp_path / "pax.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        for _ in range(40):
            f.write(one)
        f.write(ustar_header(b"a", b"0") + bytes(1024))
    code, err, rss = peak_rss_of("--root", tmp_path / "store", "load", "-i", path)
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "pax headers of" in err and "over the limit of" in err
    assert rss < 40 << 20, rss


# -- names through a shared index ---------------------------------------------------------


def shared_index(names: int, manifests: int, named: bool = True) -> tuple[bytes, list[bytes]]:
    """``index.json`` of ``names`` descriptors (ref names ``t0``…, or none), each of an
    index of its own (named: the same one) over ``manifests`` manifests."""
    many = [
        json.dumps({**json.loads(MANIFEST), "annotations": {"n": str(i)}}).encode()
        for i in range(manifests)
    ]
    below = index_of([desc(m, mt.OCI_MANIFEST) for m in many])
    if named:
        ref = "org.opencontainers.image.ref.name"
        top = [desc(below, mt.OCI_INDEX, annotations={ref: f"t{j}"}) for j in range(names)]
        return index_of(top), [below, *many]
    middles = [
        json.dumps({"schemaVersion": 2, "manifests": [desc(below, mt.OCI_INDEX)], "n": j}).encode()
        for j in range(names)
    ]
    return index_of([desc(m, mt.OCI_INDEX) for m in middles]), [below, *many, *middles]


def test_names_through_a_shared_index_are_bounded(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each of K names was given to each of the N manifests below one shared index: 800
    names over 800 manifests took 18.7 s and 397 MB (640,000 tags)."""
    index, blobs = shared_index(40, 40)
    path = tmp_path / "shared.tar"
    path.write_bytes(oci_tar(index, blobs))
    archive = reader.open_archive(path, store.spool)
    walk = oci_layout._LayoutReader(archive, None)
    try:
        sources = walk.read()
    finally:
        archive.close()
    assert len(sources) == 40 and all(len(s.tags) == 40 for s in sources)
    assert walk.naming == 40 * (1 + 40)  # each name at the index and at each manifest
    monkeypatch.setattr(oci_layout, "MAX_IMAGE_NAMES", 40 * 41 - 1)
    line = refused(store, capsys, tmp_path, path.read_bytes(), "shared.tar")
    assert line.endswith(
        "index.json manifests[39]: the names of index.json reach more than 1639 descriptors "
        "(each name counted at every descriptor below it), over the limit of 1639"
    ), line


def test_names_limit_at_its_value(
    store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The review's layout, smaller: 320 names over 320 manifests (102,720 steps)."""
    index, blobs = shared_index(320, 320)
    line = refused(store, capsys, tmp_path, oci_tar(index, blobs), "shared.tar")
    assert f"over the limit of {limits.MAX_IMAGE_NAMES}" in line


def test_names_of_real_layouts_count_once_or_twice(tmp_path: Path) -> None:
    """A name on a manifest is one step, on a multi-platform index two (the platform
    chosen is the one manifest it reaches)."""
    ref = "org.opencontainers.image.ref.name"
    arm = json.dumps({**json.loads(MANIFEST), "annotations": {"p": "arm64"}}).encode()
    platforms = [
        desc(MANIFEST, mt.OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
        desc(arm, mt.OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64"}),
    ]
    multi = index_of(platforms)
    top = [desc(multi, mt.OCI_INDEX, annotations={ref: f"m{i}"}) for i in range(3)]
    top += [desc(MANIFEST, mt.OCI_MANIFEST, annotations={ref: f"f{i}"}) for i in range(5)]
    path = tmp_path / "real.tar"
    path.write_bytes(oci_tar(index_of(top), [multi, arm]))
    archive = reader.open_archive(path, None)  # type: ignore[arg-type]
    walk = oci_layout._LayoutReader(archive, Platform("linux", "amd64"))
    try:
        (source,) = walk.read()
    finally:
        archive.close()
    assert [str(t) for t in source.tags] == [
        *(f"localhost/m{i}:latest" for i in range(3)),
        *(f"localhost/f{i}:latest" for i in range(5)),
    ]
    assert walk.naming == 3 * 2 + 5


def test_unnamed_paths_through_a_shared_index_are_not_kept(tmp_path: Path) -> None:
    """Each index kept the list of every manifest below it: K indexes over one index of
    N manifests held K·N entries (3,000 by 3,000: 104 MB, 4.1 s) though no name needed
    them. Now each index keeps its own descriptors' blobs."""
    index, blobs = shared_index(1500, 1500, named=False)
    path = tmp_path / "dag.tar"
    path.write_bytes(oci_tar(index, blobs))
    archive = reader.open_archive(path, None)  # type: ignore[arg-type]
    try:
        tracemalloc.start()
        sources = oci_layout.read_oci_layout(archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        archive.close()
    assert len(sources) == 1500
    assert peak < 12 << 20, peak
