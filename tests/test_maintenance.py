"""``system df`` and ``image prune``: docker's maintenance verbs on real stores.

The stores are built through the library and by loading real archives (docker-archives
and OCI layouts written here, the public corpus, skopeo's copies). Every size expected is
computed by the test from the blob files on disk (``os.stat``), never through ocistore.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import invariants
import pytest
from conftest import Runner
from util import CORPUS, make_tar, needs_corpus
from util import run_main as run

from ocistore import ImageSource, LayerSource
from ocistore.cli import views
from ocistore.errors import InvalidInput
from ocistore.spec.reference import parse, parse_tagged
from ocistore.store import Store
from ocistore.store.usage import parse_until

OCISTORE = Path(sys.executable).parent / "ocistore"
NOW = time.time()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """ChainIDs, computed here (``C(n) = sha256(C(n-1) + " " + DiffID(n))``)."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else sha(f"{out[-1]} {d}".encode()))
    return out


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def config(layers: list[bytes], created: float, labels: dict[str, str] | None = None) -> bytes:
    doc: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "created": rfc3339(created),
        "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in layers]},
    }
    doc["config"] = {"Labels": labels} if labels is not None else {}
    return json.dumps(doc, sort_keys=True).encode()


def source(
    cfg: bytes, layers: list[bytes], tags: list[str], parent: int | None = None
) -> ImageSource:
    srcs = [
        LayerSource(open=lambda t=t: contextlib.nullcontext(io.BytesIO(t)), what=f"layer {i}")
        for i, t in enumerate(layers)
    ]
    refs = [parse(t) if "@" in t else parse_tagged(t) for t in tags]
    return ImageSource(cfg, "test image", srcs, refs, parent=parent)


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def docker_archive(path: Path, images: list[tuple[bytes, list[bytes], list[str]]]) -> None:
    """A docker-archive (``manifest.json``, configs, plain layer tars)."""
    members: dict[str, bytes] = {}
    manifest = []
    for cfg, layers, tags in images:
        members[f"{sha(cfg)[7:]}.json"] = cfg
        for t in layers:
            members[f"{sha(t)[7:]}/layer.tar"] = t
        manifest.append(
            {
                "Config": f"{sha(cfg)[7:]}.json",
                "RepoTags": tags,
                "Layers": [f"{sha(t)[7:]}/layer.tar" for t in layers],
            }
        )
    members["manifest.json"] = json.dumps(manifest).encode()
    write_tar(path, members)


def oci_layout(path: Path, cfg: bytes, blobs: list[bytes], name: str) -> bytes:
    """An OCI layout of one image whose layers are the gzip ``blobs``; returns its
    manifest's bytes."""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(b),
                    "size": len(b),
                }
                for b in blobs
            ],
        }
    ).encode()
    (path / "blobs" / "sha256").mkdir(parents=True)
    for data in (cfg, manifest, *blobs):
        (path / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest),
                "size": len(manifest),
                "annotations": {"io.containerd.image.name": name},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    return manifest


def blob_size(root: Path, digest: str) -> int:
    return os.stat(root / "blobs" / "sha256" / digest[7:]).st_size


def blob_files(root: Path) -> dict[str, int]:
    d = root / "blobs" / "sha256"
    return {f"sha256:{p.name}": p.stat().st_size for p in d.iterdir()} if d.is_dir() else {}


def assert_sound(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fsck and the independent reader both find the store sound."""
    assert run(root, capsys, "fsck", "-q")[:2] == (0, "")
    assert invariants.problems(root) == []


# -- the store every test starts from ------------------------------------------------------

T1 = make_tar({"base/file": os.urandom(3000)}, mtime=1)
T2 = make_tar({"app/a": os.urandom(5000)}, mtime=2)
T3 = make_tar({"app/b": os.urandom(7000)}, mtime=3)
T4 = make_tar({"dangling": os.urandom(11000)}, mtime=4)
T5 = make_tar({"by-digest": os.urandom(13000)}, mtime=5)
T6 = make_tar({"no-image": os.urandom(17000)}, mtime=6)
T7 = make_tar({"child": os.urandom(19000)}, mtime=7)
G1, G2 = gzip.compress(T1, mtime=0), gzip.compress(T2, mtime=0)
JUNK = b"a blob nothing needs"
DAY = 24 * 3600

CFG_A = config([T1, T2], NOW - 9 * DAY, {"stage": "release"})
CFG_B = config([T1, T3], NOW - 8 * DAY, {"stage": "build", "keep": "yes"})
CFG_D = config([T1, T4], NOW - 7 * DAY, {"stage": "build"})
CFG_E = config([T5], NOW - 6 * DAY)
CFG_P = config([T1], NOW - 5 * DAY)
CFG_C = config([T1, T7], NOW - 3600)  # an hour old
E_REF = "e@" + sha(b"some manifest")


class Built:
    """What :func:`built` made, by the test's own names."""

    def __init__(self, root: Path, manifest: bytes) -> None:
        self.root = root
        self.id = {
            "A": sha(CFG_A),
            "B": sha(CFG_B),
            "D": sha(CFG_D),
            "E": sha(CFG_E),
            "P": sha(CFG_P),
            "C": sha(CFG_C),
        }
        self.manifest = sha(manifest)
        self.s = {
            name: blob_size(root, sha(data))
            for name, data in {
                "T1": T1,
                "T2": T2,
                "T3": T3,
                "T4": T4,
                "T5": T5,
                "T6": T6,
                "T7": T7,
                "G1": G1,
                "G2": G2,
                "JUNK": JUNK,
                "M": manifest,
            }.items()
        }

    def size(self, *names: str) -> int:
        return sum(self.s[n] for n in names)


@pytest.fixture
def built(tmp_path: Path) -> Built:
    """Images A (app:1) and B (app:2) loaded from a docker-archive, sharing layer T1;
    A loaded again from an OCI layout with gzip layers (so it keeps a manifest and a
    second copy of each layer, and gains app:oci); D dangling and E named only by digest
    (added through the library); P, untagged, the parent of C (child:1); a layer no image
    needs (T6) and a blob nothing needs."""
    root = tmp_path / "store"
    archive = tmp_path / "app.tar"
    docker_archive(archive, [(CFG_A, [T1, T2], ["app:1"]), (CFG_B, [T1, T3], ["app:2"])])
    manifest = oci_layout(tmp_path / "layout", CFG_A, [G1, G2], "docker.io/library/app:oci")
    assert subprocess.run([OCISTORE, "--root", root, "load", "-q", "-i", archive]).returncode == 0
    layout = tmp_path / "layout"
    assert subprocess.run([OCISTORE, "--root", root, "load", "-q", "-i", layout]).returncode == 0
    with Store(root) as store:
        store.add_images([source(CFG_D, [T1, T4], [])])
        store.add_images([source(CFG_E, [T5], [E_REF])])
        store.add_images([source(CFG_P, [T1], []), source(CFG_C, [T1, T7], ["child:1"], parent=0)])
        store.register_layer(io.BytesIO(T6))
        store.content.write(JUNK)
    return Built(root, manifest)


# -- system df ---------------------------------------------------------------------------


def test_disk_usage_numbers_come_from_the_files(built: Built) -> None:
    b = built
    with Store(b.root) as store:
        du = store.disk_usage()
    rows = {t.type: t for t in du.summary}
    # Listed: every image but P (an untagged parent). In use: the tagged A, B, C (and P).
    assert (rows["Images"].total, rows["Images"].active) == (5, 3)
    images_size = b.size("T1", "T2", "T3", "T4", "T5", "T7", "G1", "G2", "M")
    assert rows["Images"].size == images_size
    assert rows["Images"].reclaimable == b.size("T4", "T5")  # what only D and E need
    # Layer records: T1, T1+T2, T1+T3, T1+T4, T5, T6, T1+T7; in use: those of A, B, C, P.
    assert (rows["Layers"].total, rows["Layers"].active) == (7, 4)
    assert rows["Layers"].size == b.size("T1", "T2", "T3", "T4", "T5", "T6", "T7")
    assert rows["Layers"].reclaimable == b.size("T4", "T5", "T6")
    assert (rows["Blobs"].total, rows["Blobs"].active) == (11, 7)
    assert rows["Blobs"].size == sum(blob_files(b.root).values())
    assert rows["Blobs"].reclaimable == b.size("T4", "T5", "T6", "JUNK")
    copies = rows["Layer copies"]
    assert (copies.total, copies.active, copies.size, copies.reclaimable) == (
        2,
        2,
        b.size("G1", "G2"),
        0,
    )

    by_id = {i.id: i for i in du.images}
    assert set(by_id) == {b.id[n] for n in "ABDEC"}
    a = by_id[b.id["A"]]
    assert a.size == b.size("T1", "T2", "G1", "G2", "M")
    assert a.shared_size == b.size("T1")  # B, D and C need T1 too
    assert a.unique_size == b.size("T2", "G1", "G2", "M")
    assert sorted(a.names) == ["app:1", "app:oci"]
    assert by_id[b.id["E"]].shared_size == 0
    assert by_id[b.id["E"]].size == b.size("T5")
    assert [i.id for i in du.images] == [b.id[n] for n in "CEDBA"]  # newest first

    chains_a = chain_ids([sha(T1), sha(T2)])
    layers = {layer.chain_id: layer for layer in du.layers}
    assert layers[chains_a[0]].copies == (sha(G1),)
    assert layers[chains_a[1]].copies == (sha(G2),)
    assert layers[chains_a[0]].images == 5  # A, B, D, P, C
    assert layers[chains_a[0]].size == b.size("T1")
    assert layers[sha(T6)].images == 0 and not layers[sha(T6)].in_use

    kinds = {blob.digest: blob.kind for blob in du.blobs}
    assert kinds[sha(G1)] == kinds[sha(G2)] == "copy"
    assert kinds[b.manifest] == "manifest"
    assert kinds[sha(JUNK)] == "unused"
    assert kinds[sha(T6)] == "layer"


def test_system_df_prints_dockers_table(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    b = built
    code, out, err = run(b.root, capsys, "system", "df")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "TYPE           TOTAL     ACTIVE    SIZE      RECLAIMABLE"
    blobs_total = sum(blob_files(b.root).values())
    reclaim = b.size("T4", "T5", "T6", "JUNK")
    expected = (
        f"Blobs          11        7         {views.human_size(blobs_total, 4):<10}"
        f"{views.human_size(reclaim, 4)} ({reclaim * 100 // blobs_total}%)"
    )
    assert lines[3] == expected
    assert [line.split()[0] for line in lines[1:]] == ["Images", "Layers", "Blobs", "Layer"]
    assert lines[4].startswith("Layer copies   2         2         ")
    assert lines[4].endswith("   0B (0%)")


def test_docker_units() -> None:
    """units.HumanSize: four significant digits, decimal; docker images' three."""
    assert views.human_size(0, 4) == "0B"
    assert views.human_size(999, 4) == "999B"
    assert views.human_size(1234567, 4) == "1.235MB"
    assert views.human_size(1234567) == "1.23MB"
    assert views.human_size(20940, 4) == "20.94kB"


def test_system_df_verbose_lists_images_layers_and_blobs(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    b = built
    code, out, err = run(b.root, capsys, "system", "df", "-v")
    assert code == 0, err
    sections = out.split("\n\n")
    assert sections[0] == "Images space usage:"
    header = sections[1].splitlines()[0].split("   ")
    assert [h.strip() for h in header if h.strip()] == [
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        "SHARED SIZE",
        "UNIQUE SIZE",
    ]
    rows = {line.split()[2]: line.split() for line in sections[1].splitlines()[1:]}
    a = rows[b.id["A"][7:19]]
    assert a[:2] == ["app", "1"]  # the first tag, as docker shows one
    assert a[-2:] == [
        views.human_size(b.size("T1"), 4),
        views.human_size(b.size("T2", "G1", "G2", "M"), 4),
    ]
    assert rows[b.id["D"][7:19]][:2] == ["<none>", "<none>"]
    assert rows[b.id["E"][7:19]][:2] == ["<none>", "<none>"]  # named only by digest
    assert sections[2] == "Layers space usage:"
    layer_rows = {line.split()[0]: line for line in sections[3].splitlines()[1:]}
    first = chain_ids([sha(T1)])[0]
    assert layer_rows[first[7:19]].endswith(
        f"{sha(G1)[7:19]} ({views.human_size(b.size('G1'), 4)})"
    )
    assert sections[4] == "Blobs space usage:"
    blob_rows = {line.split()[0]: line.split() for line in sections[5].splitlines()[1:]}
    assert len(blob_rows) == 11
    assert blob_rows[sha(JUNK)[7:19]][1:] == ["unused", views.human_size(len(JUNK), 4), "0"]


def test_system_df_json(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    b = built
    code, out, _ = run(b.root, capsys, "system", "df", "--format", "json")
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["Type"] for d in docs] == ["Images", "Layers", "Blobs", "Layer copies"]
    assert set(docs[0]) == {"Type", "TotalCount", "Active", "Size", "Reclaimable"}
    assert docs[0]["TotalCount"] == "5" and docs[0]["Active"] == "3"
    code, out, _ = run(b.root, capsys, "system", "df", "-v", "--format", "json")
    assert code == 0
    (doc,) = [json.loads(line) for line in out.splitlines()]
    assert {i["ID"] for i in doc["Images"]} == {b.id[n] for n in "ABDEC"}
    assert '"Repository":"\\u003cnone\\u003e"' in out  # as Go's encoder writes <none>
    assert len(doc["Layers"]) == 7 and len(doc["Blobs"]) == 11


def test_disk_usage_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(tmp_path / "store", capsys, "system", "df")
    assert code == 0
    assert out.splitlines()[1] == "Images         0         0         0B        0B"


@needs_corpus
def test_a_layer_kept_as_tar_and_as_gzip_counts_as_a_copy(
    tmp_path: Path, skopeo: Runner, capsys: pytest.CaptureFixture[str]
) -> None:
    """Loaded from a docker-archive (plain layer), then from skopeo's OCI copy of it
    with gzip layers: the layer is stored once, and its gzip blob is kept as a copy."""
    root = tmp_path / "store"
    archive = CORPUS / "docker-archive" / "test_image_1.tar"
    layout = tmp_path / "layout"
    skopeo("copy", "-q", "--dest-compress", f"docker-archive:{archive}", f"oci:{layout}:gz")
    assert run(root, capsys, "load", "-q", "-i", archive)[0] == 0
    assert run(root, capsys, "load", "-q", "-i", layout)[0] == 0
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(
        (layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_bytes()
    )
    (gz,) = [d["digest"] for d in manifest["layers"]]
    with Store(root) as store:
        du = store.disk_usage()
    copies = {t.type: t for t in du.summary}["Layer copies"]
    assert (copies.total, copies.size) == (1, os.stat(layout / "blobs" / "sha256" / gz[7:]).st_size)
    (layer,) = du.layers
    assert layer.copies == (gz,) and layer.compression == "none"
    assert {t.type: t for t in du.summary}["Blobs"].size == sum(blob_files(root).values())


# -- image prune ---------------------------------------------------------------------------


def test_prune_removes_dangling_images_only(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    b = built
    before = blob_files(b.root)
    code, out, err = run(b.root, capsys, "image", "prune", "-f")
    assert code == 0, err
    c14 = chain_ids([sha(T1), sha(T4)])[1]
    reclaimed = b.size("T4", "T5")
    assert out == (
        "Deleted Images:\n"
        f"untagged: {E_REF}\n"
        f"deleted: {b.id['E']}\n"
        f"deleted: {sha(T5)}\n"
        f"deleted: {b.id['D']}\n"
        f"deleted: {c14}\n"
        "\n"
        f"Total reclaimed space: {views.human_size(reclaimed, 4)}\n"
    )
    after = blob_files(b.root)
    assert set(before) - set(after) == {sha(T4), sha(T5)}
    assert sum(before.values()) - sum(after.values()) == reclaimed
    assert sorted(invariants.image_ids(b.root)) == sorted(b.id[n] for n in "ABPC")
    assert_sound(b.root, capsys)
    # Nothing dangling is left; the garbage is gc's, not prune's.
    assert run(b.root, capsys, "image", "prune", "-f")[1] == "Total reclaimed space: 0B\n"
    with Store(b.root) as store:
        rows = {t.type: t for t in store.disk_usage().summary}
    assert rows["Images"].reclaimable == 0
    assert rows["Blobs"].reclaimable == b.size("T6", "JUNK")


def test_prune_all_removes_every_image_and_their_untagged_parents(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    b = built
    code, out, err = run(b.root, capsys, "image", "prune", "-a", "-f")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "Deleted Images:"
    for name in ("app:1", "app:oci", "app:2", "child:1", E_REF):
        assert f"untagged: {name}" in lines
    for name in "ABDEPC":  # P goes with its child C
        assert f"deleted: {b.id[name]}" in lines
    assert invariants.image_ids(b.root) == []
    assert set(blob_files(b.root)) == {sha(T6), sha(JUNK)}  # gc's garbage
    reclaimed = b.size("T1", "T2", "T3", "T4", "T5", "T7", "G1", "G2", "M")
    assert lines[-1] == f"Total reclaimed space: {views.human_size(reclaimed, 4)}"
    assert_sound(b.root, capsys)


def test_prune_all_only_untags_an_image_with_children(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tagged parent selected (by until) whose child is not: untagged, kept, as moby's
    ImageDelete leaves an image with children."""
    root = tmp_path / "store"
    base, child = config([T1], NOW - 2 * DAY), config([T1, T2], NOW)
    with Store(root) as store:
        store.add_images(
            [source(base, [T1], ["base:1"]), source(child, [T1, T2], ["app:1"], parent=0)]
        )
    code, out, err = run(root, capsys, "image", "prune", "-a", "-f", "--filter", "until=24h")
    assert code == 0, err
    assert out == "Deleted Images:\nuntagged: base:1\n\nTotal reclaimed space: 0B\n"
    assert sorted(invariants.image_ids(root)) == sorted([sha(base), sha(child)])
    # Without -a, neither is dangling: the parent has a child, the child a tag.
    assert run(root, capsys, "image", "prune", "-f")[1] == "Total reclaimed space: 0B\n"
    # Untagging the child makes it dangling; its untagged parent goes with it.
    with Store(root) as store:
        store.references.delete(parse_tagged("app:1"))
    code, out, _ = run(root, capsys, "image", "prune", "-f")
    assert f"deleted: {sha(child)}" in out and f"deleted: {sha(base)}" in out
    assert invariants.image_ids(root) == []
    assert_sound(root, capsys)


def test_prune_until_takes_times_and_durations(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    b = built
    # D was made 7 days ago, E 6 days ago: a time between them selects D alone.
    between = rfc3339(NOW - 6.5 * DAY)
    code, out, _ = run(b.root, capsys, "image", "prune", "-f", "--filter", f"until={between}")
    assert code == 0
    assert f"deleted: {b.id['D']}" in out and b.id["E"] not in out
    # A Unix time, then a duration: E is older than both.
    code, out, _ = run(
        b.root, capsys, "image", "prune", "-f", "--filter", f"until={int(NOW - 7 * DAY)}"
    )
    assert out == "Total reclaimed space: 0B\n"
    code, out, _ = run(b.root, capsys, "image", "prune", "-f", "--filter", "until=120h")
    assert f"deleted: {b.id['E']}" in out
    assert sorted(invariants.image_ids(b.root)) == sorted(b.id[n] for n in "ABPC")


def test_prune_label_filters(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    b = built
    # -a with label=stage=build: B and D (A is stage=release; E, P, C have no labels).
    code, out, err = run(
        b.root, capsys, "image", "prune", "-a", "-f", "--filter", "label!=keep", "--filter",
        "label=stage=build",
    )  # fmt: skip
    assert code == 0, err
    assert f"deleted: {b.id['D']}" in out  # stage=build, no keep
    assert b.id["B"] not in out  # stage=build but keep=yes
    assert b.id["A"] not in out and b.id["E"] not in out
    code, out, _ = run(b.root, capsys, "image", "prune", "-a", "-f", "--filter", "label=stage")
    assert f"deleted: {b.id['A']}" in out and f"deleted: {b.id['B']}" in out
    assert sorted(invariants.image_ids(b.root)) == sorted(b.id[n] for n in "EPC")
    assert_sound(b.root, capsys)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--filter", "colour=red"], "ocistore: invalid filter 'colour'\n"),
        (["--filter", "until=1h", "--filter", "until=2h"], "more than one until filter"),
        (["--filter", "until=yesterday"], "invalid value for 'until' filter"),
        (["--filter", "dangling=false"], "invalid filter 'dangling="),  # against no -a
    ],
)
def test_bad_filters_are_refused_before_anything_changes(
    built: Built, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = invariants.state(built.root)
    code, out, err = run(built.root, capsys, "image", "prune", *args)
    assert code == 1 and out == ""  # refused before asking
    assert message in err and err.count("\n") == 1
    assert invariants.state(built.root) == before


def test_a_filter_without_a_value_is_a_usage_error(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(built.root, capsys, "image", "prune", "--filter", "until")
    assert code == 2
    assert "bad format of filter 'until' (expected name=value)" in err


def test_until_is_read_as_moby_reads_it() -> None:
    now = 1_700_000_000.0
    ns = 1_000_000_000
    assert parse_until("24h", now) == int(now * ns) - 24 * 3600 * ns
    assert parse_until("1h30m", now) == int(now * ns) - 5400 * ns
    assert parse_until("1.5h", now) == int(now * ns) - 5400 * ns
    assert parse_until("1700000000", now) == 1_700_000_000 * ns
    assert parse_until("1700000000.5", now) == 1_700_000_000 * ns + ns // 2
    assert parse_until("0", now) == 0  # "0" is a Unix time, not a duration
    assert parse_until("2023-11-14T22:13:20Z", now) == 1_700_000_000 * ns
    assert parse_until("2023-11-14T23:13:20+01:00", now) == 1_700_000_000 * ns
    assert parse_until("2023-11-14T22:13:20.25Z", now) == 1_700_000_000 * ns + ns // 4
    assert parse_until("2023-11-14T22:13Z", now) == (1_700_000_000 - 20) * ns
    assert parse_until("2023-11-14Z", now) == (1_700_000_000 - 80000) * ns
    # Without a zone, local time (here: whatever the machine's is).
    local = datetime(2023, 11, 14).astimezone()
    assert parse_until("2023-11-14", now) == int(local.timestamp()) * ns
    for bad in ("", " ", "yesterday", "2023-13-01", "-5", "1h-", "2023-11-14T22:13:20-01"):
        with pytest.raises(InvalidInput):
            parse_until(bad, now)


def _prune_subprocess(
    root: Path, stdin: bytes | None, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OCISTORE, "--root", root, "image", "prune", *args],
        input=None if stdin is None else stdin.decode(),
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
    )


PROMPT = "WARNING! This will remove all dangling images.\nAre you sure you want to continue? [y/N] "


@pytest.mark.parametrize("answer", [b"n\n", b"\n", b"yes\n", None])
def test_without_f_prune_asks_and_a_no_changes_nothing(built: Built, answer: bytes | None) -> None:
    """stdin not a terminal: the answer is still read from it, as docker does; end of
    input (``None``: /dev/null) is no."""
    before = invariants.state(built.root)
    proc = _prune_subprocess(built.root, answer)
    assert proc.returncode == 0
    assert proc.stdout == PROMPT and proc.stderr == ""
    assert invariants.state(built.root) == before


@pytest.mark.parametrize("answer", [b"y\n", b"Y\n", b" y \n"])
def test_prune_goes_ahead_on_y(built: Built, answer: bytes) -> None:
    proc = _prune_subprocess(built.root, answer)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(PROMPT + "Deleted Images:\n")
    assert f"deleted: {built.id['D']}" in proc.stdout


def test_prune_all_warns_of_all_images(built: Built) -> None:
    proc = _prune_subprocess(built.root, b"n\n", "-a")
    assert proc.stdout.startswith("WARNING! This will remove all images")
    assert proc.stdout.endswith("Are you sure you want to continue? [y/N] ")
    assert len(invariants.image_ids(built.root)) == 6


def test_prune_through_the_library_reports_events_and_blobs(built: Built) -> None:
    with Store(built.root) as store:
        report = store.prune_images()
    assert {e.subject for e in report.events if e.action == "Deleted"} >= {
        built.id["D"],
        built.id["E"],
    }
    assert sorted(report.blobs) == sorted([sha(T4), sha(T5)])
    assert report.reclaimed == built.size("T4", "T5")


@needs_corpus
def test_prune_on_a_store_loaded_from_the_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real archives: a bundle of two images; one removed by rmi, the other left named
    only by a digest reference, then pruned."""
    root = tmp_path / "store"
    assert (
        run(root, capsys, "load", "-q", "-i", CORPUS / "docker-archive" / "test_bundle.tar")[0] == 0
    )
    with Store(root) as store:
        images = {r.id: names for r, names in store.list_image_names()}
    assert len(images) == 2
    assert run(root, capsys, "tag", "test_image_1:latest", "keep:1")[0] == 0
    assert run(root, capsys, "rmi", "test_image_1:latest")[0] == 0  # still tagged keep:1
    code, out, _ = run(root, capsys, "rmi", "test_image_2:latest")
    assert code == 0 and "Deleted:" in out  # its last tag: gone at once
    # Untag keep:1 without deleting: only a digest reference is left, so it is dangling.
    with Store(root) as store:
        (image_id,) = [i for i, _ in images.items() if store.images.exists(i)]
        store.references.add_digest(parse("keep@" + sha(b"m")), image_id)
        store.references.delete(parse_tagged("keep:1"))
    before = blob_files(root)
    code, out, err = run(root, capsys, "image", "prune", "-f")
    assert code == 0, err
    assert out.startswith(f"Deleted Images:\nuntagged: keep@{sha(b'm')}\ndeleted: {image_id}\n")
    reclaimed = sum(before.values()) - sum(blob_files(root).values())
    assert reclaimed > 0
    assert out.endswith(f"\nTotal reclaimed space: {views.human_size(reclaimed, 4)}\n")
    assert_sound(root, capsys)


def test_a_failure_part_way_says_what_was_done(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    """A blob that cannot be removed (immutable: even root may not unlink it) stops the
    prune after E was pruned and D's config deleted: one line lists both, and after the
    cause is gone, gc finishes the work and the store is sound."""
    blob = built.root / "blobs" / "sha256" / sha(T4)[7:]
    if subprocess.run(["chattr", "+i", blob], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system with it)")
    try:
        code, out, err = run(built.root, capsys, "image", "prune", "-f")
    finally:
        subprocess.run(["chattr", "-i", blob], check=True)
    assert code == 1
    assert out.startswith(
        f"Deleted Images:\nuntagged: {E_REF}\ndeleted: {built.id['E']}\ndeleted: {sha(T5)}\n"
    )
    assert out.endswith(f"deleted: {built.id['D']}\n\n")  # its config went, then the failure
    assert "Total reclaimed space" not in out
    assert err.startswith("ocistore: ") and err.count("\n") == 1, err
    assert sha(T4)[7:] in err and "Operation not permitted" in err
    assert sorted(invariants.image_ids(built.root)) == sorted(built.id[n] for n in "ABPC")
    assert run(built.root, capsys, "gc")[0] == 0
    assert sha(T4) not in blob_files(built.root)
    assert_sound(built.root, capsys)


def test_an_image_without_a_container_config_is_not_filtered_by_labels(
    tmp_path: Path,
) -> None:
    """moby's ``img.Config != nil && !matchLabels(...)``: no container config at all
    means the label filters do not apply to the image."""
    root = tmp_path / "store"
    bare = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    labelled = config([T1], NOW, {"other": "x"})
    with Store(root) as store:
        store.add_images([source(bare, [], ["bare:1"]), source(labelled, [T1], ["lab:1"])])
        report = store.prune_images(all_images=True, filters=["label=wanted"])
    assert [str(e) for e in report.events] == ["Untagged: bare:1", f"Deleted: {sha(bare)}"]
    assert invariants.image_ids(root) == [sha(labelled)]
