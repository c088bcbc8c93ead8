"""skopeo's ``dir:`` layout: loading and saving, bad input, and the real skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import Runner
from util import make_tar, ocistore_cli, run_main, snapshot, unchanged

from ocistore import formats
from ocistore.errors import InvalidInput, NotFound, OcistoreError
from ocistore.spec.digest import Digest, ImageID
from ocistore.spec.platform import Platform
from ocistore.store import Store

VERSION = b"Directory Transport Version: 1.1\n"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

# -- helpers -------------------------------------------------------------------------------


def sha(data: bytes, alg: str = "sha256") -> str:
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


class Made(NamedTuple):
    """An image written by hand: its manifest, config and layer blobs."""

    manifest: bytes
    config: bytes
    layers: list[str]

    @property
    def id(self) -> str:
        return sha(self.config)

    def desc(self, media_type: str = OCI_MANIFEST) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": sha(self.manifest), "size": len(self.manifest)}


def make_image(
    put: Any,
    layers: list[dict[str, bytes]],
    arch: str = "amd64",
    docker: bool = False,
    alg: str = "sha256",
) -> Made:
    """Blobs of an image, given to ``put(data, alg) -> digest``; returns the manifest."""
    layer_descs, diff_ids, digests = [], [], []
    for files in layers:
        tar = make_tar(files, dirs=True)
        blob = gzip.compress(tar, mtime=0)
        digest = put(blob, alg)
        digests.append(digest)
        diff_ids.append(sha(tar))
        layer_descs.append(
            {
                "mediaType": DOCKER_LAYER if docker else GZIP_LAYER,
                "digest": digest,
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": [f"ARCH={arch}"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_digest = put(config, "sha256")
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": config_digest,
            "size": len(config),
        },
        "layers": layer_descs,
    }
    return Made(json.dumps(manifest).encode(), config, digests)


def write_dir(root: Path, layers: list[dict[str, bytes]] | None = None, **kw: Any) -> Made:
    """A dir layout, as skopeo writes one, of a new image."""
    root.mkdir(parents=True)
    (root / "version").write_bytes(VERSION)

    def put(data: bytes, alg: str) -> str:
        digest = sha(data, alg)
        (root / hex_of(digest)).write_bytes(data)
        return digest

    made = make_image(put, layers or [{"etc/a": b"a\n"}, {"etc/b": b"b" * 5000}], **kw)
    (root / "manifest.json").write_bytes(made.manifest)
    return made


def write_oci(root: Path, index: dict[str, Any] | None = None) -> Any:
    """An OCI layout's blob writer (``put``) and, with ``index``, its ``index.json``."""
    (root / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    if index is not None:
        (root / "index.json").write_text(json.dumps(index))

    def put(data: bytes, alg: str) -> str:
        digest = sha(data, alg)
        (root / "blobs" / alg).mkdir(exist_ok=True)
        (root / "blobs" / alg / hex_of(digest)).write_bytes(data)
        return digest

    return put


def kept_manifest(store: Store, image_id: str) -> bytes:
    digest = store.kept_manifest(ImageID(Digest(image_id)))
    assert digest is not None
    return store.read_blob(digest)


def load(store: Store, path: Path, platform: Platform | None = None) -> list[str]:
    return [str(x.id) for x in formats.load(store, path, platform)]


def save(store: Store, names: list[str], dest: Path) -> None:
    formats.save(store, names, dest, formats.SaveFormat.DIR)


def names(store: Store) -> dict[str, list[str]]:
    """Each image of the store and its names."""
    return {str(rec.id): [str(r) for r in refs] for rec, refs in store.list_images(True)}


def files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def imported(tmp_path: Path, name: str = "example.com/dir/app:v1") -> tuple[Store, str]:
    """A store holding one image made by ``ocistore import``, and its ID."""
    root = tmp_path / "imported"
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(make_tar({"etc/hostname": b"app\n", "bin/tool": b"\x7fELF" * 3000}))
    ocistore_cli("--root", root, "import", tarball, name)
    out = ocistore_cli("--root", root, "images", "-q", "--no-trunc", name).stdout.split()
    assert len(out) == 1
    return Store(root), out[0]


# -- saving --------------------------------------------------------------------------------


def test_save_writes_one_file_per_blob_version_and_manifest(tmp_path: Path) -> None:
    store, image_id = imported(tmp_path)
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        save(store, ["example.com/dir/app:v1"], out)
    finally:
        os.umask(old)
    written = files(out)
    assert written["version"] == VERSION
    manifest = json.loads(written["manifest.json"])
    assert manifest["mediaType"] == OCI_MANIFEST  # generated: the import kept none
    assert manifest["config"]["digest"] == image_id
    blobs = [image_id, *(ld["digest"] for ld in manifest["layers"])]
    assert sorted(written) == sorted([*map(hex_of, blobs), "manifest.json", "version"])
    for blob in blobs:
        assert sha(written[hex_of(blob)]) == blob
    # The umask's modes, as any output.
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE((out / n).stat().st_mode) for n in written} == {0o640}
    # Loaded back: the same image, with the very manifest written.
    other = Store(tmp_path / "other")
    assert load(other, out) == [image_id]
    assert kept_manifest(other, image_id) == written["manifest.json"]
    assert names(other) == {image_id: []}  # a dir has no name for its image


def test_skopeo_reads_what_ocistore_saves(tmp_path: Path, skopeo: Runner) -> None:
    store, image_id = imported(tmp_path)
    out = tmp_path / "out"
    save(store, [image_id], out)
    manifest_bytes = (out / "manifest.json").read_bytes()
    layers = [ld["digest"] for ld in json.loads(manifest_bytes)["layers"]]
    info = json.loads(skopeo("inspect", f"dir:{out}").stdout)
    assert info["Digest"] == sha(manifest_bytes)
    assert info["Layers"] == layers
    config = json.loads(skopeo("inspect", "--config", f"dir:{out}").stdout)
    assert config["rootfs"]["diff_ids"] == [
        str(d) for d in store.images.get(ImageID(Digest(image_id))).config.diff_ids
    ]
    oci = tmp_path / "oci"
    skopeo("copy", f"dir:{out}", f"oci:{oci}:t")
    index = json.loads((oci / "index.json").read_text())
    oci_manifest = json.loads(
        (oci / "blobs/sha256" / hex_of(index["manifests"][0]["digest"])).read_bytes()
    )
    assert oci_manifest["config"]["digest"] == image_id
    again = Store(tmp_path / "again")
    assert load(again, oci) == [image_id]


def test_load_what_skopeo_writes_from_oci_and_docker_archive(
    tmp_path: Path, skopeo: Runner
) -> None:
    store, image_id = imported(tmp_path)
    layout = tmp_path / "layout"
    formats.save(store, ["example.com/dir/app:v1"], layout, formats.SaveFormat.OCI)
    from_oci = tmp_path / "from-oci"
    skopeo("copy", "--dest-oci-accept-uncompressed-layers", f"oci:{layout}:v1", f"dir:{from_oci}")
    archive = tmp_path / "x.tar"
    skopeo("copy", f"oci:{layout}:v1", f"docker-archive:{archive}:example.com/dir/app:v1")
    from_docker = tmp_path / "from-docker"
    skopeo("copy", f"docker-archive:{archive}", f"dir:{from_docker}")
    assert json.loads((from_docker / "manifest.json").read_bytes())["mediaType"] == DOCKER_MANIFEST

    for source in (from_oci, from_docker):
        root = tmp_path / f"store-{source.name}"
        # The command: a dir has no name for its image, so it loads untagged.
        proc = ocistore_cli("--root", root, "load", "-i", source)
        assert proc.stdout == f"Loaded image ID: {image_id}\n"
        loaded = Store(root)
        assert names(loaded) == {image_id: []}
        assert kept_manifest(loaded, image_id) == (source / "manifest.json").read_bytes()
        # Saved again: what skopeo wrote, byte for byte (a Docker manifest stays one).
        out = tmp_path / f"saved-{source.name}"
        save(loaded, [image_id], out)
        skopeo_files = {n: b for n, b in files(source).items() if not n.startswith("signature")}
        assert files(out) == skopeo_files
        info = json.loads(skopeo("inspect", f"dir:{out}").stdout)
        assert info["Digest"] == sha((source / "manifest.json").read_bytes())


def test_multi_platform_dir_from_skopeo_all(tmp_path: Path, skopeo: Runner) -> None:
    layout = tmp_path / "layout"
    put = write_oci(layout)
    amd = make_image(put, [{"a": b"amd64\n"}], arch="amd64")
    arm = make_image(put, [{"a": b"arm64\n"}], arch="arm64")
    amd_digest = put(amd.manifest, "sha256")
    arm_digest = put(arm.manifest, "sha256")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                dict(amd.desc(), platform={"architecture": "amd64", "os": "linux"}),
                dict(arm.desc(), platform={"architecture": "arm64", "os": "linux"}),
            ],
        }
    ).encode()
    index_digest = put(index, "sha256")
    entry = {
        "mediaType": OCI_INDEX,
        "digest": index_digest,
        "size": len(index),
        "annotations": {"org.opencontainers.image.ref.name": "t"},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    out = tmp_path / "multi"
    skopeo("copy", "--all", f"oci:{layout}:t", f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == index
    assert (out / f"{hex_of(amd_digest)}.manifest.json").read_bytes() == amd.manifest
    assert (out / f"{hex_of(arm_digest)}.manifest.json").read_bytes() == arm.manifest

    store = Store(tmp_path / "store")
    assert load(store, out, Platform("linux", "arm64")) == [arm.id]
    assert kept_manifest(store, arm.id) == arm.manifest
    proc = ocistore_cli("--root", store.root, "load", "--platform", "linux/amd64", "-i", out)
    assert proc.stdout == f"Loaded image ID: {amd.id}\n"
    with unchanged(store):
        proc = ocistore_cli(
            "--root", store.root, "load", "--platform", "linux/s390x", "-i", out, check=False
        )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert f"{out}/manifest.json" in proc.stderr and "linux/amd64, linux/arm64" in proc.stderr


def test_a_multi_platform_dir_without_the_instance_names_its_file(tmp_path: Path) -> None:
    out = tmp_path / "multi"
    out.mkdir()
    (out / "version").write_bytes(VERSION)

    def put(data: bytes, alg: str) -> str:
        digest = sha(data, alg)
        (out / hex_of(digest)).write_bytes(data)
        return digest

    amd = make_image(put, [{"a": b"amd64\n"}])
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [dict(amd.desc(), platform={"architecture": "amd64", "os": "linux"})],
    }
    (out / "manifest.json").write_text(json.dumps(index))
    store = Store(tmp_path / "store")
    with pytest.raises(InvalidInput) as e:
        load(store, out, Platform("linux", "amd64"))
    assert f"{out}/{hex_of(sha(amd.manifest))}.manifest.json" in str(e.value)
    assert "manifest.json → manifests[0]" in str(e.value)
    (out / f"{hex_of(sha(amd.manifest))}.manifest.json").write_bytes(amd.manifest)
    assert load(store, out, Platform("linux", "amd64")) == [amd.id]


def test_docker_and_sha512_blobs_by_hand(store: Store, tmp_path: Path) -> None:
    """A Docker v2 manifest (no conversion: a dir layout takes it as it is) and sha512
    layer blobs (named by their hex alone, as containers/image names them)."""
    made = write_dir(tmp_path / "d", docker=True, alg="sha512")
    assert all(d.startswith("sha512:") for d in made.layers)
    assert load(store, tmp_path / "d") == [made.id]
    out = tmp_path / "out"
    save(store, [made.id], out)
    assert files(out) == files(tmp_path / "d")


def test_a_tar_of_a_dir_layout_loads(store: Store, tmp_path: Path) -> None:
    made = write_dir(tmp_path / "d")
    archive = tmp_path / "d.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tmp_path / "d", arcname=".")
    assert load(store, archive) == [made.id]


def test_save_refuses_more_than_one_image(tmp_path: Path) -> None:
    store, image_id = imported(tmp_path)
    other = store.import_tarball(io.BytesIO(make_tar({"x": b"other"})), "example.com/dir/other:1")
    out = tmp_path / "out"
    with pytest.raises(InvalidInput, match=r"holds one image.* select 2"):
        save(store, ["example.com/dir/app:v1", "example.com/dir/other:1"], out)
    assert not out.exists()
    store.tag(other, "example.com/dir/app:v2")
    with pytest.raises(InvalidInput, match="holds one image"):
        save(store, ["example.com/dir/app"], out)  # a repository of two images
    assert not out.exists()
    # Two names of one image are one image.
    save(store, ["example.com/dir/app:v1", image_id], out)
    assert json.loads((out / "manifest.json").read_bytes())["config"]["digest"] == image_id


def test_save_destinations(tmp_path: Path) -> None:
    store, _ = imported(tmp_path)
    name = ["example.com/dir/app:v1"]
    with pytest.raises(InvalidInput, match="give -o DIR"):
        formats.save(store, name, "-", "dir")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        save(store, name, a_file)
    with pytest.raises(NotFound, match="parent directory"):
        save(store, name, tmp_path / "no" / "such")
    assert not (tmp_path / "no").exists()
    # Not empty, not a dir layout: refused and left alone.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "version").write_text("1.0\n")
    before = snapshot(mine)
    with pytest.raises(InvalidInput, match=r"not a dir layout.*refusing"):
        save(store, name, mine)
    assert snapshot(mine) == before
    # An empty directory is written into.
    empty = tmp_path / "empty"
    empty.mkdir()
    save(store, name, empty)
    assert (empty / "version").read_bytes() == VERSION


def test_save_replaces_a_dir_layout_and_its_stale_files(tmp_path: Path) -> None:
    """As skopeo: a directory that is a dir layout is emptied first (stale blobs,
    signatures, anything), and nothing outside it is touched."""
    store, image_id = imported(tmp_path)
    parent = tmp_path / "parent"
    old = write_dir(parent / "d", [{"old": b"old layer"}])
    (parent / "d" / "signature-1").write_bytes(b"sig")
    (parent / "d" / "sub").mkdir()
    (parent / "d" / "sub" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("outside")
    (parent / "d" / "link").symlink_to(outside)
    (parent / "beside").write_text("beside")
    save(store, [image_id], parent / "d")
    written = files(parent / "d")
    manifest = json.loads(written["manifest.json"])
    expected = {image_id, *(ld["digest"] for ld in manifest["layers"])}
    assert set(written) == {*map(hex_of, expected), "manifest.json", "version"}
    assert old.id not in {sha(b) for b in written.values()}
    assert outside.read_text() == "outside"
    assert sorted(p.name for p in parent.iterdir()) == ["beside", "d"]


def test_a_failed_save_leaves_nothing(tmp_path: Path) -> None:
    store, image_id = imported(tmp_path)
    manifest = store.layers_of(store.image(image_id))
    blob = store.content.path(manifest[0].blob.digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(OcistoreError, match=manifest[0].blob.digest):
        save(store, [image_id], out)
    assert not out.exists()
    # Into a dir layout: what was written goes, the directory stays one (its version).
    write_dir(out)
    with pytest.raises(OcistoreError, match=manifest[0].blob.digest):
        save(store, [image_id], out)
    assert files(out) == {"version": VERSION}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OcistoreError):
        save(store, [image_id], empty)
    assert list(empty.iterdir()) == []


# -- bad input -----------------------------------------------------------------------------


def _missing_blob(d: Path, made: Made) -> list[str]:
    (d / hex_of(made.layers[1])).unlink()
    return [f"{d}/{hex_of(made.layers[1])}", "missing", "manifest.json → layers[1]"]


def _wrong_digest(d: Path, made: Made) -> list[str]:
    blob = d / hex_of(made.layers[0])
    # The same layer, gzipped with another time in its header: same size, other digest.
    blob.write_bytes(gzip.compress(gzip.decompress(blob.read_bytes()), mtime=12345))
    return [f"{d}/{hex_of(made.layers[0])}", "digest mismatch"]


def _wrong_config(d: Path, made: Made) -> list[str]:
    config = d / hex_of(made.id)
    config.write_bytes(config.read_bytes().replace(b"amd64", b"AMD64"))
    return [f"{d}/{hex_of(made.id)}", "digest mismatch", "manifest.json → config"]


def _missing_version(d: Path, made: Made) -> list[str]:
    (d / "version").unlink()
    return [f"{d}/version", "missing"]


def _bad_version(d: Path, made: Made) -> list[str]:
    (d / "version").write_bytes(b"Directory Transport Version: 1.0\n")
    return [f"{d}/version", "unsupported version", "1.0"]


def _version_without_newline(d: Path, made: Made) -> list[str]:
    (d / "version").write_bytes(VERSION.strip())
    return [f"{d}/version", "unsupported version"]


def _symlink_out(d: Path, made: Made) -> list[str]:
    blob = d / hex_of(made.layers[0])
    outside = d.parent / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    return [hex_of(made.layers[0]), "symlink out"]


def _missing_manifest(d: Path, made: Made) -> list[str]:
    (d / "manifest.json").unlink()
    return [f"{d}/manifest.json", "missing"]


def _manifest_not_json(d: Path, made: Made) -> list[str]:
    (d / "manifest.json").write_bytes(b"{not json")
    return [f"{d}/manifest.json"]


def _manifest_not_a_manifest(d: Path, made: Made) -> list[str]:
    (d / "manifest.json").write_bytes(b'{"schemaVersion": 2}')
    return [f"{d}/manifest.json", "neither an image manifest nor an index"]


def _schema1(d: Path, made: Made) -> list[str]:
    (d / "manifest.json").write_bytes(b'{"schemaVersion": 1, "name": "x", "fsLayers": []}')
    return [f"{d}/manifest.json", "schema 1"]


BAD = {
    "missing blob": _missing_blob,
    "wrong digest": _wrong_digest,
    "wrong config": _wrong_config,
    "missing version": _missing_version,
    "bad version text": _bad_version,
    "version without its newline": _version_without_newline,
    "symlinked blob pointing outside": _symlink_out,
    "missing manifest.json": _missing_manifest,
    "manifest.json not JSON": _manifest_not_json,
    "manifest.json not a manifest": _manifest_not_a_manifest,
    "schema 1 manifest": _schema1,
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_one_line_exit_1_and_the_store_is_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    store, _ = imported(tmp_path)  # the store has something to lose
    d = tmp_path / "d"
    made = write_dir(d)
    expect = BAD[case](d, made)
    before = snapshot(store.root)
    code, out, err = run_main(store.root, capsys, "load", "-i", d)
    assert code == 1, err
    assert out == ""
    assert err.startswith("ocistore: ") and err.count("\n") == 1, err
    for part in expect:
        assert part in err, (part, err)
    assert "blobs/sha256" not in err and "index.json" not in err  # no names made up
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []
