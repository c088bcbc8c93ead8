"""OCI image layout and oci-archive: loading, saving, bad input, and the real peer tools."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import util
import zstandard
from util import make_tar as util_make_tar
from util import snapshot

from ocistore import formats
from ocistore.errors import Conflict, InvalidInput, NotFound, OcistoreError, SizeMismatch
from ocistore.formats import oci_layout as oci
from ocistore.formats.reader import open_archive
from ocistore.formats.tarwriter import output_file
from ocistore.spec.compression import Compression
from ocistore.spec.digest import Digest, ImageID, digest_bytes
from ocistore.spec.platform import Platform, host_platform, parse_platform
from ocistore.spec.reference import parse_tagged
from ocistore.store import Store
from ocistore.store.ingest import LoadedImage, add_images

CORPUS = util.CORPUS / "oci-layout"

# -- helpers -------------------------------------------------------------------------------


def sha(data: bytes, alg: str = "sha256") -> str:
    return f"{alg}:{hashlib.new(alg, data).hexdigest()}"


def make_tar(files: dict[str, bytes]) -> bytes:
    return util_make_tar(files, dirs=True)


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if how == "bzip2":
        return bz2.compress(data)
    assert how == "none"
    return data


LAYER_MT = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "bzip2": "application/vnd.oci.image.layer.v1.tar+bzip2",
}


@dataclass
class Built:
    """An image written into a test layout."""

    desc: dict[str, Any]
    manifest: bytes
    config: bytes
    layer_blobs: list[str]
    diff_ids: list[str]

    @property
    def id(self) -> str:
        return sha(self.config)


@dataclass
class Layout:
    """Writes OCI layouts by hand, so tests control every byte."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')

    def path(self, digest: str) -> Path:
        alg, _, hex_ = digest.partition(":")
        return self.root / "blobs" / alg / hex_

    def blob(self, data: bytes, alg: str = "sha256") -> tuple[str, int]:
        digest = sha(data, alg)
        p = self.path(digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return digest, len(data)

    def image(
        self,
        layers: list[dict[str, bytes]],
        how: str | list[str] = "gzip",
        alg: str = "sha256",
        arch: str = "amd64",
        variant: str = "",
        comment: str = "",
        diff_ids: list[str] | None = None,
        layer_mt: str | None = None,
        docker: bool = False,
    ) -> Built:
        hows = how if isinstance(how, list) else [how] * len(layers)
        layer_descs = []
        real_diff_ids = []
        blobs = []
        for files, h in zip(layers, hows, strict=True):
            tar = make_tar(files)
            real_diff_ids.append(sha(tar))
            digest, size = self.blob(compress(tar, h), alg)
            blobs.append(digest)
            if docker:
                mt = "application/vnd.docker.image.rootfs.diff.tar.gzip"
            else:
                mt = layer_mt or LAYER_MT[h]
            layer_descs.append({"mediaType": mt, "digest": digest, "size": size})
        config_doc: dict[str, Any] = {
            "architecture": arch,
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids or real_diff_ids},
        }
        if variant:
            config_doc["variant"] = variant
        if comment:
            config_doc["comment"] = comment
        config = json.dumps(config_doc, sort_keys=True).encode()
        cdigest, csize = self.blob(config, alg)
        manifest_doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": (
                "application/vnd.docker.distribution.manifest.v2+json"
                if docker
                else "application/vnd.oci.image.manifest.v1+json"
            ),
            "config": {
                "mediaType": (
                    "application/vnd.docker.container.image.v1+json"
                    if docker
                    else "application/vnd.oci.image.config.v1+json"
                ),
                "digest": cdigest,
                "size": csize,
            },
            "layers": layer_descs,
        }
        manifest = json.dumps(manifest_doc, indent=2).encode()
        mdigest, msize = self.blob(manifest, alg)
        desc = {"mediaType": manifest_doc["mediaType"], "digest": mdigest, "size": msize}
        return Built(desc, manifest, config, blobs, real_diff_ids)

    def index(self, descs: list[dict[str, Any]]) -> dict[str, Any]:
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descs,
        }
        digest, size = self.blob(json.dumps(doc).encode())
        return {"mediaType": doc["mediaType"], "digest": digest, "size": size}

    def add(self, desc: dict[str, Any], annotations: dict[str, str]) -> None:
        self.entries.append(dict(desc, annotations=annotations))

    def tag(self, desc: dict[str, Any], ref_name: str, full: str | None = None) -> None:
        entry = dict(desc)
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
        if full:
            entry["annotations"]["io.containerd.image.name"] = full
        self.entries.append(entry)

    def write(self) -> Path:
        doc = {"schemaVersion": 2, "manifests": self.entries}
        (self.root / "index.json").write_text(json.dumps(doc, indent=1))
        return self.root


def with_platform(desc: dict[str, Any], platform: str) -> dict[str, Any]:
    p = parse_platform(platform)
    out = dict(desc)
    out["platform"] = {"architecture": p.architecture, "os": p.os}
    if p.variant:
        out["platform"]["variant"] = p.variant
    return out


def load(store: Store, path: Path | str, platform: Platform | None = None) -> list[LoadedImage]:
    archive = open_archive(path, store.spool)
    try:
        return add_images(store, oci.read_oci_layout(archive, platform))
    finally:
        archive.close()


def save_dir(store: Store, names: list[str], dest: Path) -> Path:
    oci.write_oci_layout(store, names, dest)
    return dest


def save_tar(store: Store, names: list[str], dest: Path) -> Path:
    with open(dest, "wb") as f:
        oci.write_oci_archive(store, names, f)
    return dest


def stored_layer_blobs(store: Store, image_id: str) -> list[str]:
    cfg = store.images.get(ImageID(Digest(image_id))).config
    return [store.layers.get(c).blob.digest for c in cfg.chain_ids]


def kept_manifest(store: Store, image_id: str) -> bytes:
    digest = Digest(store.backend.get_metadata(Digest(image_id), "manifest").decode())
    return store.content.read(digest)


def read_layout_index(root: Path) -> dict[str, Any]:
    return json.loads((root / "index.json").read_bytes())  # type: ignore[no-any-return]


def layout_manifest(root: Path, ref_name: str | None = None) -> tuple[str, dict[str, Any]]:
    """The digest and document of the manifest ``ref_name`` (or the only one) names."""
    entries = read_layout_index(root)["manifests"]
    if ref_name is not None:
        entries = [
            e
            for e in entries
            if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name
        ]
    assert len(entries) == 1, entries
    digest = entries[0]["digest"]
    alg, _, hex_ = digest.partition(":")
    return digest, json.loads((root / "blobs" / alg / hex_).read_bytes())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, list[Built]]:
    """A layout with three tagged images: gzip, zstd and mixed compression, sharing a layer."""
    lay = Layout(tmp_path / "sample")
    base = {"etc/os-release": b"NAME=test\n", "bin/tool": b"\x7fELF" + bytes(range(256)) * 40}
    a = lay.image([base, {"app/a.txt": b"alpha\n" * 1000}], how="gzip", comment="a")
    b = lay.image([base, {"app/b.txt": b"beta\n" * 1000}], how="zstd", comment="b")
    c = lay.image(
        [base, {"app/c.txt": b"gamma\n"}, {"app/d.txt": b"delta\n"}],
        how=["gzip", "none", "zstd"],
        comment="c",
    )
    lay.tag(a.desc, "a1", "example.com/test/a:a1")
    lay.tag(b.desc, "docker.io/library/bee:2")
    lay.tag(c.desc, "c3", "example.com/test/c:c3")
    return lay.write(), [a, b, c]


# -- the corpus --------------------------------------------------------------------------


def test_corpus_test_index_images_and_nested_indexes(store: Store) -> None:
    loaded = load(store, CORPUS / "test_index")
    by_id = {str(x.id): sorted(str(t) for t in x.tags) for x in loaded}
    # Entry 1, and the nested OCI index (3) and Docker manifest list (4) all lead to the
    # same manifest: loaded once, with the three names. Entry 2 has an odd descriptor
    # media type and is recognized from the document.
    assert by_id == {
        "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e": [
            "localhost/1:latest",
            "localhost/3:latest",
            "localhost/4:latest",
        ],
        "sha256:930705ce23e3b6ed4c08746b6fe880089c864fbaf62482702ae3fdd66b8c7fe9": [
            "localhost/2:latest"
        ],
    }
    image_id = "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e"
    assert store.resolve("localhost/3") == image_id
    manifest = (
        CORPUS
        / "test_index/blobs/sha256/eebff607b1628d67459b0596643fc07de70d702eccf030f0bc7bb6fc2b278650"
    )
    assert kept_manifest(store, image_id) == manifest.read_bytes()
    assert stored_layer_blobs(store, image_id) == [
        "sha256:dc52c6e48a1d51a96047b059f16889bc889c4b4c28f3b36b3f93187f62fc0b2b"
    ]
    assert list(store.tmpdir.iterdir()) == []


def test_corpus_test_index_one_image(store: Store) -> None:
    loaded = load(store, CORPUS / "test_index_one_image")
    assert [(str(x.id), x.tags) for x in loaded] == [
        ("sha256:381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810", ())
    ]
    layer = store.layers.get(store.images.get(loaded[0].id).config.chain_ids[0])
    assert layer.blob.digest == (
        "sha256:492b89b9dd3cda4596f94916d17f6901455fb8bd7f4c5a2a90df8d39c90f48a0"
    )
    assert layer.blob.compression is Compression.GZIP
    assert layer.diff_id == (
        "sha256:59cd31f50f7442a662d7c31b7a12079ade16892bfb465b33da49918e7d13e747"
    )


def test_format_detected_from_content(store: Store, tmp_path: Path) -> None:
    """``formats.load`` recognizes a layout and an oci-archive without looking at names."""
    src = tmp_path / "no-name-hint"
    shutil.copytree(CORPUS / "test_index_one_image", src)
    loaded = formats.load(store, src)
    assert [str(x.id) for x in loaded] == [
        "sha256:381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810"
    ]
    out = tmp_path / "archive.bin"
    save_tar(store, [loaded[0].id], out)
    store2 = Store(tmp_path / "store2")
    assert [x.id for x in formats.load(store2, out)] == [loaded[0].id]


# -- what a layout may hold --------------------------------------------------------------


def test_gzip_zstd_and_plain_layers_keep_their_blobs(
    store: Store, sample: tuple[Path, list[Built]]
) -> None:
    path, images = sample
    loaded = load(store, path)
    assert [str(x.id) for x in loaded] == [i.id for i in images]
    assert [[str(t) for t in x.tags] for x in loaded] == [
        ["example.com/test/a:a1"],
        ["docker.io/library/bee:2"],
        ["example.com/test/c:c3"],
    ]
    for built in images:
        cfg = store.images.get(ImageID(Digest(built.id))).config
        assert list(cfg.diff_ids) == built.diff_ids
        record = store.images.record(ImageID(Digest(built.id)))
        stored = set(stored_layer_blobs(store, built.id)) | set(record.blobs)
        # Every blob the image came with is kept as it came (same digest).
        assert set(built.layer_blobs) <= stored
        for blob in built.layer_blobs:
            assert store.content.exists(Digest(blob))
        assert kept_manifest(store, built.id) == built.manifest
    # Compression is recognized from the bytes.
    top_c = store.images.get(ImageID(Digest(images[2].id))).config.chain_ids
    assert [store.layers.get(c).blob.compression for c in top_c] == [
        Compression.GZIP,
        Compression.NONE,
        Compression.ZSTD,
    ]
    assert list(store.tmpdir.iterdir()) == []


def test_magic_bytes_win_over_the_media_type(store: Store, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "l")
    # A zstd blob announced as gzip: the bytes decide, and the DiffID proves them right.
    built = lay.image([{"f": b"x"}], how="zstd", layer_mt=LAYER_MT["gzip"])
    lay.tag(built.desc, "v1", "example.com/m:v1")
    loaded = load(store, lay.write())
    assert str(loaded[0].id) == built.id
    chain = store.images.get(loaded[0].id).config.chain_ids[0]
    assert store.layers.get(chain).blob.compression is Compression.ZSTD


def test_sha512_blobs(store: Store, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "l")
    built = lay.image([{"a": b"1"}, {"b": b"2"}], how=["gzip", "none"], alg="sha512")
    assert built.desc["digest"].startswith("sha512:")
    lay.tag(built.desc, "v1", "example.com/s512:v1")
    loaded = load(store, lay.write())
    assert str(loaded[0].id) == built.id  # the image ID is always the config's sha256
    assert stored_layer_blobs(store, built.id) == built.layer_blobs
    assert all(b.startswith("sha512:") for b in built.layer_blobs)
    # Saved again: the kept manifest names sha512 blobs, which come out under blobs/sha512.
    out = save_dir(store, ["example.com/s512:v1"], tmp_path / "out")
    for blob in built.layer_blobs:
        assert (out / "blobs/sha512" / blob.partition(":")[2]).is_file()
    store2 = Store(tmp_path / "store2")
    assert [x.id for x in load(store2, out)] == [loaded[0].id]
    assert stored_layer_blobs(store2, built.id) == built.layer_blobs


def test_tags_from_annotations(store: Store, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "l")
    imgs = [lay.image([{"f": str(i).encode()}], comment=str(i)) for i in range(5)]
    lay.tag(imgs[0].desc, "v1")  # bare tag: podman's rule, localhost/v1:latest
    lay.tag(imgs[1].desc, "v2", "example.com/team/app:v2")  # containerd name
    lay.tag(imgs[2].desc, "quay.io/org/img:3")  # a full reference as ref name
    lay.tag(imgs[3].desc, "Not A Name!")  # unusable: the image loads untagged
    lay.add(imgs[4].desc, {"io.containerd.image.name": "example.com/other"})  # default tag
    loaded = load(store, lay.write())
    assert [[str(t) for t in x.tags] for x in loaded] == [
        ["localhost/v1:latest"],
        ["example.com/team/app:v2"],
        ["quay.io/org/img:3"],
        [],
        ["example.com/other:latest"],
    ]
    assert store.resolve("localhost/v1:latest") == imgs[0].id


def test_a_digest_name_of_another_image_is_refused_before_publishing(
    store: Store, tmp_path: Path
) -> None:
    name = "example.com/team/app@sha256:" + "ab" * 32
    first = Layout(tmp_path / "first")
    a = first.image([{"f": b"a"}], comment="a")
    first.add(a.desc, {"io.containerd.image.name": name})
    assert [x.id for x in load(store, first.write())] == [a.id]
    second = Layout(tmp_path / "second")
    b = second.image([{"f": b"b"}], comment="b")
    second.add(b.desc, {"io.containerd.image.name": name})
    before = snapshot(store.root)
    with pytest.raises(Conflict, match="already names image"):
        load(store, second.write())
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []


@pytest.mark.parametrize(
    "names",
    [
        # A digest reference under a reserved repository name.
        ["sha256@sha256:" + "ab" * 32],
        # One digest reference given to two images of the same load.
        ["example.com/app@sha256:" + "cd" * 32, "example.com/app@sha256:" + "cd" * 32],
    ],
)
def test_a_name_refused_by_the_reference_store_is_refused_before_publishing(
    store: Store, tmp_path: Path, names: list[str]
) -> None:
    base = Layout(tmp_path / "base")
    base.tag(base.image([{"base": b"b"}], comment="base").desc, "base")
    load(store, base.write())  # a store in use: its lock and index exist
    lay = Layout(tmp_path / "l")
    for i, name in enumerate(names):
        built = lay.image([{"f": str(i).encode()}], comment=str(i))
        lay.add(built.desc, {"io.containerd.image.name": name})
    before = snapshot(store.root)
    with pytest.raises(OcistoreError, match=r"sha256@sha256|already names image"):
        load(store, lay.write())
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []


def test_a_layer_removed_while_loading_is_refused_before_publishing(
    store: Store, tmp_path: Path
) -> None:
    """A layer that was not read because the store had it, and is gone by the time the
    load takes the lock, stops the load before anything is published."""
    from ocistore.store import ingest as archive

    base = Layout(tmp_path / "base")
    base.tag(base.image([{"base": b"b"}], comment="base").desc, "base")
    load(store, base.write())  # a store in use: its lock and index exist
    lay = Layout(tmp_path / "l")
    lay.tag(lay.image([{"f": b"x"}]).desc, "v1")
    sources = oci.read_oci_layout(open_archive(str(lay.write()), store.spool), None)
    configs = [archive.parse_config(src.config) for src in sources]
    before = snapshot(store.root)
    with pytest.raises(Conflict, match="removed from the store while loading"):
        archive._publish(store, sources, configs, staged={})
    assert snapshot(store.root) == before


def test_saving_a_repository_writes_each_tagged_image_once(store: Store, tmp_path: Path) -> None:
    """A bare repository name selects its tags; an image of it that also has a digest
    reference is still written once, and one named only by digest once, untagged."""
    import io

    from ocistore.spec.reference import parse

    tagged = store.import_tarball(io.BytesIO(make_tar({"t": b"t"})), "example.com/r:1")
    pinned = store.import_tarball(io.BytesIO(make_tar({"p": b"p"})))
    store.references.add_digest(parse(f"example.com/r@{sha(b'm1')}"), tagged)
    store.references.add_digest(parse(f"example.com/r@{sha(b'm2')}"), pinned)
    index = json.loads(
        (save_dir(store, ["example.com/r"], tmp_path / "out") / "index.json").read_bytes()
    )
    entries = index["manifests"]
    assert len(entries) == 2
    assert entries[0]["annotations"] == {
        "io.containerd.image.name": "example.com/r:1",
        "org.opencontainers.image.ref.name": "1",
    }
    assert "annotations" not in entries[1]
    loaded = load(Store(tmp_path / "other"), tmp_path / "out")
    assert sorted(i.id for i in loaded) == sorted([tagged, pinned])


def test_same_manifest_twice_loads_once_with_both_tags(store: Store, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "l")
    built = lay.image([{"f": b"x"}])
    lay.tag(built.desc, "one", "example.com/x:one")
    lay.tag(built.desc, "two", "example.com/x:two")
    inner = lay.index([built.desc])
    lay.tag(inner, "three", "example.com/x:three")
    sources = oci.read_oci_layout(open_archive(lay.write(), store.spool))
    assert len(sources) == 1
    assert [str(t) for t in sources[0].tags] == [
        "example.com/x:one",
        "example.com/x:two",
        "example.com/x:three",
    ]


def test_artifacts_are_skipped(store: Store, tmp_path: Path) -> None:
    lay = Layout(tmp_path / "l")
    built = lay.image([{"f": b"x"}])
    lay.tag(built.desc, "v1", "example.com/x:v1")
    sig_cfg, sig_size = lay.blob(b"{}")
    payload, payload_size = lay.blob(b'{"critical": {}}')
    config = {"mediaType": "application/vnd.dev.cosign.config", "digest": sig_cfg, "size": sig_size}
    layer = {
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "digest": payload,
        "size": payload_size,
    }
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": [layer],
        }
    ).encode()
    digest, size = lay.blob(artifact)
    lay.tag(
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size},
        "sha256-abc.sig",
    )
    loaded = load(store, lay.write())
    assert [str(x.id) for x in loaded] == [built.id]


# -- platforms -----------------------------------------------------------------------------


def multi_platform(tmp_path: Path) -> tuple[Path, dict[str, Built], str]:
    lay = Layout(tmp_path / "multi")
    platforms = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x"]
    host = str(host_platform())
    if host not in platforms and host.rsplit("/", 1)[0] not in platforms:
        platforms.append(host)
    built: dict[str, Built] = {}
    descs = []
    for p in platforms:
        pl = parse_platform(p)
        b = lay.image([{"arch": p.encode()}], arch=pl.architecture, variant=pl.variant, comment=p)
        built[p] = b
        descs.append(with_platform(b.desc, p))
    # An attestation manifest, as buildkit adds: platform unknown/unknown.
    att = lay.image([{"att": b"x"}], comment="attestation")
    descs.append(with_platform(att.desc, "unknown/unknown"))
    index = lay.index(descs)
    lay.tag(index, "multi", "example.com/multi:latest")
    return lay.write(), built, index["digest"]


def test_multi_platform_index_picks_the_platform(store: Store, tmp_path: Path) -> None:
    path, built, _ = multi_platform(tmp_path)
    for p in ["linux/arm64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x"]:
        sources = oci.read_oci_layout(open_archive(path, store.spool), parse_platform(p))
        assert len(sources) == 1
        want = built["linux/arm64/v8" if p.startswith("linux/arm64") else p]
        assert sources[0].manifest == want.manifest
        assert [str(t) for t in sources[0].tags] == ["example.com/multi:latest"]
    loaded = load(store, path, parse_platform("linux/arm/v7"))
    assert str(loaded[0].id) == built["linux/arm/v7"].id
    assert store.images.get(loaded[0].id).config.architecture == "arm"


@pytest.mark.parametrize(
    ("given", "picked"),
    [
        ("Linux/x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64/v8"),
        ("linux/armv7l", "linux/arm/v7"),
    ],
)
def test_platform_spellings_of_the_machine_are_normalized(
    store: Store, tmp_path: Path, given: str, picked: str
) -> None:
    """As containerd's platforms.Normalize: case, and uname's names for architectures."""
    path, built, _ = multi_platform(tmp_path)
    sources = oci.read_oci_layout(open_archive(path, store.spool), parse_platform(given))
    assert [s.manifest for s in sources] == [built[picked].manifest]


def test_multi_platform_index_defaults_to_this_machine(store: Store, tmp_path: Path) -> None:
    path, built, _ = multi_platform(tmp_path)
    loaded = load(store, path)
    host = host_platform()
    want = next(b for p, b in built.items() if host.matches(json.loads(b.config)) and p)
    assert str(loaded[0].id) == want.id


def test_multi_platform_index_without_the_platform(store: Store, tmp_path: Path) -> None:
    path, _, index_digest = multi_platform(tmp_path)
    before = snapshot(store.root)
    with pytest.raises(InvalidInput) as e:
        load(store, path, parse_platform("windows/amd64"))
    msg = str(e.value)
    assert index_digest in msg and "windows/amd64" in msg
    assert "linux/amd64, linux/arm64/v8, linux/arm/v7, linux/s390x" in msg
    assert "unknown" not in msg
    assert snapshot(store.root) == before


def test_platform_descriptors_in_index_json(store: Store, tmp_path: Path) -> None:
    """Platform manifests listed straight in index.json under one name are one image."""
    lay = Layout(tmp_path / "l")
    amd = lay.image([{"f": b"amd"}], arch="amd64")
    arm = lay.image([{"f": b"arm"}], arch="arm64")
    lay.entries.append(with_platform(amd.desc, "linux/amd64"))
    lay.entries.append(with_platform(arm.desc, "linux/arm64"))
    solo = lay.image([{"f": b"solo"}], arch="riscv64")
    lone = with_platform(solo.desc, "linux/riscv64")
    lone["annotations"] = {"org.opencontainers.image.ref.name": "solo"}
    lay.entries.append(lone)
    path = lay.write()
    sources = oci.read_oci_layout(open_archive(path, store.spool), parse_platform("linux/arm64"))
    # The pair gives arm64; the lone riscv64 manifest is loaded as it is.
    assert [s.manifest for s in sources] == [arm.manifest, solo.manifest]


# -- round trips ---------------------------------------------------------------------------


def test_round_trip_layout_and_archive(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, images = sample
    loaded = load(store, path)
    names = ["example.com/test/a:a1", "bee:2", "example.com/test/c:c3"]
    out_dir = save_dir(store, names, tmp_path / "out-dir")
    out_tar = save_tar(store, names, tmp_path / "out.tar")
    for out in (out_dir, out_tar):
        store2 = Store(tmp_path / f"store-{out.name}")
        again = load(store2, out)
        assert [x.id for x in again] == [x.id for x in loaded]
        assert [x.tags for x in again] == [x.tags for x in loaded]
        for built in images:
            assert stored_layer_blobs(store2, built.id) == stored_layer_blobs(store, built.id)
            assert kept_manifest(store2, built.id) == built.manifest
    # The manifests written are the ones loaded, byte for byte (same digests).
    index = read_layout_index(out_dir)
    assert [e["digest"] for e in index["manifests"]] == [b.desc["digest"] for b in images]
    assert [e["annotations"] for e in index["manifests"]] == [
        {
            "io.containerd.image.name": "example.com/test/a:a1",
            "org.opencontainers.image.ref.name": "a1",
        },
        {
            "io.containerd.image.name": "docker.io/library/bee:2",
            "org.opencontainers.image.ref.name": "2",
        },
        {
            "io.containerd.image.name": "example.com/test/c:c3",
            "org.opencontainers.image.ref.name": "c3",
        },
    ]
    # The shared base layer is written once.
    with tarfile.open(out_tar) as tf:
        members = tf.getnames()
    assert len(members) == len(set(members))
    assert members[:2] == ["oci-layout", "index.json"]


def test_round_trip_of_the_corpus(store: Store, tmp_path: Path) -> None:
    loaded = load(store, CORPUS / "test_index")
    names = [str(t) for x in loaded for t in x.tags]
    out = save_tar(store, names, tmp_path / "out.tar")
    store2 = Store(tmp_path / "store2")
    again = load(store2, out)
    assert sorted(x.id for x in again) == sorted(x.id for x in loaded)
    for x in loaded:
        before = json.loads(kept_manifest(store, x.id))
        after = json.loads(kept_manifest(store2, x.id))
        # The corpus has Docker v2 manifests: an OCI layout gets their OCI form, with the
        # same config and the same layer blobs (as skopeo converts them).
        assert before["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert after["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        assert after["config"]["digest"] == before["config"]["digest"]
        assert [d["digest"] for d in after["layers"]] == [d["digest"] for d in before["layers"]]
        assert stored_layer_blobs(store2, x.id) == stored_layer_blobs(store, x.id)


def test_saved_docker_manifests_are_readable_by_skopeo_and_umoci(
    store: Store, tmp_path: Path, skopeo: Any, umoci: Any
) -> None:
    load(store, CORPUS / "test_index")
    out = tmp_path / "layout"
    oci.write_oci_layout(store, ["localhost/1"], out)
    inspected = json.loads(skopeo("inspect", f"oci:{out}:latest").stdout)
    assert inspected["Layers"] == stored_layer_blobs(store, store.resolve("localhost/1"))
    stat = umoci("stat", "--json", "--image", f"{out}:latest").stdout
    assert json.loads(stat)["history"]


def test_save_is_deterministic(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, _ = sample
    load(store, path)
    names = ["example.com/test/c:c3", "bee:2", "example.com/test/a"]
    one = save_tar(store, names, tmp_path / "one.tar").read_bytes()
    two = save_tar(store, names, tmp_path / "two.tar").read_bytes()
    assert one == two
    d1 = save_dir(store, names, tmp_path / "d1")
    d2 = save_dir(store, names, tmp_path / "d2")
    assert snapshot(d1) == snapshot(d2)
    # The archive holds exactly the files of the directory.
    with tarfile.open(fileobj=io.BytesIO(one)) as tf:
        files = {
            m.name: sha(tf.extractfile(m).read())  # type: ignore[union-attr]
            for m in tf.getmembers()
            if m.isfile()
        }
        assert all(m.uid == 0 and m.mtime == 0 for m in tf.getmembers())
    assert files == {k: sha(v) for k, v in snapshot(d1).items() if isinstance(v, bytes)}


def test_generated_manifest_for_an_image_without_one(store: Store, tmp_path: Path) -> None:
    layer = gzip.compress(make_tar({"hello.txt": b"hello\n"}), mtime=0)
    image_id = store.import_tarball(io.BytesIO(layer), "example.com/imported:v1")
    out = save_dir(store, ["example.com/imported:v1"], tmp_path / "out")
    digest, manifest = layout_manifest(out, "v1")
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": image_id,
            "size": len(store.backend.get(image_id)),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(layer),
                "size": len(layer),
            }
        ],
    }
    entry = read_layout_index(out)["manifests"][0]
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    raw = (out / "blobs/sha256" / digest.partition(":")[2]).read_bytes()
    assert b" " not in raw  # compact, deterministic
    store2 = Store(tmp_path / "store2")
    loaded = load(store2, out)
    assert [x.id for x in loaded] == [image_id]
    assert [str(t) for t in loaded[0].tags] == ["example.com/imported:v1"]
    # Now the manifest is kept: a save from store2 gives the same bytes.
    out2 = save_dir(store2, ["example.com/imported:v1"], tmp_path / "out2")
    assert snapshot(out2) == snapshot(out)


def test_image_by_id_and_by_digest(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, images = sample
    load(store, path)
    a = images[0]
    ref = parse_tagged("example.com/test/a:a1").name_only().with_digest(a.desc["digest"])
    store.references.add_digest(ref, ImageID(Digest(a.id)))
    out = save_dir(store, [a.id[7:19], f"example.com/test/a@{a.desc['digest']}"], tmp_path / "o")
    entries = read_layout_index(out)["manifests"]
    assert [e.get("annotations") for e in entries] == [
        None,
        {"io.containerd.image.name": f"example.com/test/a@{a.desc['digest']}"},
    ]
    store2 = Store(tmp_path / "store2")
    loaded = load(store2, out)
    assert [str(x.id) for x in loaded] == [a.id]
    assert store2.resolve(f"example.com/test/a@{a.desc['digest']}") == a.id


def test_save_unknown_image_writes_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nothere"):
        save_dir(store, ["nothere:1"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_save_refuses_a_damaged_store_blob_and_leaves_nothing(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, images = sample
    load(store, path)
    blob = store.content.path(Digest(images[0].layer_blobs[1]))
    os.chmod(blob, 0o644)
    flip_last_byte(blob)
    out = tmp_path / "out"
    with pytest.raises(OcistoreError, match=images[0].layer_blobs[1]):
        save_dir(store, ["example.com/test/a:a1"], out)
    assert not out.exists()
    archive = tmp_path / "out.tar"
    with (
        pytest.raises(OcistoreError, match=images[0].layer_blobs[1]),
        output_file(str(archive)) as f,
    ):
        oci.write_oci_archive(store, ["example.com/test/a:a1"], f)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample", "store"]
    # Images that do not need the damaged blob are still saved.
    save_dir(store, ["bee:2"], out)
    assert layout_manifest(out, "2")[0] == images[1].desc["digest"]


# -- adding to an existing layout ----------------------------------------------------------


def test_add_to_an_existing_layout(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, images = sample
    load(store, path)
    out = tmp_path / "out"
    save_dir(store, ["example.com/test/a:a1"], out)
    save_dir(store, ["bee:2"], out)
    entries = read_layout_index(out)["manifests"]
    assert [e["digest"] for e in entries] == [images[0].desc["digest"], images[1].desc["digest"]]
    # Another repository's image with the same tag (ref name 2) is another name: both kept,
    # as one save of both writes them.
    store.tag("example.com/test/c:c3", "example.com/test/a:2")
    save_dir(store, ["example.com/test/a:2"], out)
    entries = read_layout_index(out)["manifests"]
    digests = [images[i].desc["digest"] for i in (0, 1, 2)]
    assert [e["digest"] for e in entries] == digests
    assert [e["annotations"][oci.ANNOTATION_REF_NAME] for e in entries] == ["a1", "2", "2"]
    # Damaged blobs of the layout are rewritten.
    victim = out / "blobs/sha256" / images[0].layer_blobs[1].partition(":")[2]
    victim.write_bytes(b"garbage")
    save_dir(store, ["example.com/test/a:a1"], out)
    assert sha(victim.read_bytes()) == images[0].layer_blobs[1]
    assert [e["digest"] for e in read_layout_index(out)["manifests"]] == digests
    # The same name moved to another image replaces its descriptor; the others stay.
    store.tag("example.com/test/c:c3", "example.com/test/a:a1")
    save_dir(store, ["example.com/test/a:a1"], out)
    entries = read_layout_index(out)["manifests"]
    assert [e["digest"] for e in entries] == [digests[2], digests[1], digests[2]]
    assert [e["annotations"][oci.ANNOTATION_CONTAINERD_NAME] for e in entries] == [
        "example.com/test/a:a1",  # in the place of the one it replaces, as skopeo does
        "docker.io/library/bee:2",
        "example.com/test/a:2",
    ]
    store2 = Store(tmp_path / "store2")
    assert sorted(str(x.id) for x in load(store2, out)) == sorted([images[1].id, images[2].id])
    assert not [p for p in out.rglob("*.tmp")]


def test_layout_into_an_existing_umoci_style_layout(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path
) -> None:
    path, images = sample
    load(store, path)
    out = tmp_path / "out"
    shutil.copytree(CORPUS / "test_index_one_image", out)
    save_dir(store, ["bee:2"], out)
    entries = read_layout_index(out)["manifests"]
    assert [e["digest"] for e in entries] == [
        "sha256:98ceaf93e482fe91b9bfd6bba07137c098e49ee2d55e69f09fb6c951e75e0e46",
        images[1].desc["digest"],
    ]


def test_add_to_a_layout_skopeo_and_umoci_add_to(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path, skopeo: Any, umoci: Any
) -> None:
    """ocistore, skopeo and umoci adding to the same layout keep each other's refs; a bare
    ref name skopeo wrote is replaced by ocistore's image of that ref name."""
    path, images = sample
    load(store, path)
    out = tmp_path / "out"
    save_dir(store, ["example.com/test/a:a1"], out)
    archive = tmp_path / "bee.tar"
    formats.save(store, ["bee:2"], str(archive), formats.SaveFormat.DOCKER)
    skopeo("copy", f"docker-archive:{archive}", f"oci:{out}:sk")
    save_dir(store, ["example.com/test/c:c3"], out)
    refs = umoci("ls", "--layout", out).stdout.split()
    assert sorted(refs) == ["a1", "c3", "sk"]
    for ref, image in (("a1", images[0]), ("c3", images[2])):
        inspected = json.loads(skopeo("inspect", "--raw", f"oci:{out}:{ref}").stdout)
        assert inspected["config"]["digest"] == image.id
    # skopeo's bare "sk" is replaced by ocistore's image tagged sk; the rest stays.
    store.tag("example.com/test/c:c3", "example.com/test/c:sk")
    save_dir(store, ["example.com/test/c:sk"], out)
    assert sorted(umoci("ls", "--layout", out).stdout.split()) == ["a1", "c3", "sk"]
    inspected = json.loads(skopeo("inspect", "--raw", f"oci:{out}:sk").stdout)
    assert inspected["config"]["digest"] == images[2].id
    # skopeo adds beside ocistore's refs too, and ocistore loads them all.
    skopeo("copy", f"docker-archive:{archive}", f"oci:{out}:bee")
    assert sorted(umoci("ls", "--layout", out).stdout.split()) == ["a1", "bee", "c3", "sk"]
    other = Store(tmp_path / "other")
    loaded = {str(x.id): sorted(str(t) for t in x.tags) for x in load(other, out)}
    assert loaded.pop(images[0].id) == ["example.com/test/a:a1"]
    assert loaded.pop(images[2].id) == ["example.com/test/c:c3", "example.com/test/c:sk"]
    assert list(loaded.values()) == [["localhost/bee:latest"]]  # skopeo's copy
    umoci("ls", "--layout", out)  # still a layout umoci reads


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("oci-layout", b'{"imageLayoutVersion":"2.0.0"}', "unsupported imageLayoutVersion"),
        ("oci-layout", b"{not json", "oci-layout"),
        ("index.json", b"{not json", "index.json"),
        ("index.json", b'{"schemaVersion":2,"manifests":{}}', "is not an image index"),
        ("index.json", b'{"schemaVersion":2,"manifests":["x"]}', r"manifests\[0\] is not a"),
        (
            "index.json",
            b'{"schemaVersion":2,"manifests":[{"digest":"sha256:00","annotations":{"a":1}}]}',
            r"manifests\[0\] is not a descriptor",
        ),
        ("index.json", None, "index.json cannot be read"),  # a directory
    ],
)
def test_refuse_to_add_to_a_damaged_layout(
    store: Store,
    sample: tuple[Path, list[Built]],
    tmp_path: Path,
    file: str,
    content: bytes | None,
    message: str,
) -> None:
    """Nothing is written into a layout ocistore cannot read back: one line naming it."""
    path, _ = sample
    load(store, path)
    out = save_dir(store, ["example.com/test/a:a1"], tmp_path / "out")
    target = out / file
    target.unlink()
    if content is None:
        target.mkdir()
    else:
        target.write_bytes(content)
    before = snapshot(out)
    with pytest.raises(InvalidInput, match=message) as err:
        save_dir(store, ["bee:2"], out)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert snapshot(out) == before


def test_refuse_a_destination_that_is_not_a_layout(store: Store, tmp_path: Path) -> None:
    load(store, CORPUS / "test_index_one_image")
    image = "sha256:381d958b555884ba59574ab5c066e9f6116b5aec3567675aa13bec63331f0810"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(InvalidInput, match="not an OCI image layout"):
        save_dir(store, [image], notes)
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InvalidInput, match="not a directory"):
        save_dir(store, [image], afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_dir(store, [image], empty)
    assert oci.is_oci_layout(open_archive(empty, store.spool))


# -- bad input -------------------------------------------------------------------------------


def blob_file(root: Path, digest: str) -> Path:
    alg, _, hex_ = digest.partition(":")
    return root / "blobs" / alg / hex_


def flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


@dataclass
class Bad:
    path: Path
    expect: list[str]


def _bad_layer_digest(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}], how="none")
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob = blob_file(path, b.layer_blobs[0])
    data = bytearray(blob.read_bytes())
    data[600] ^= 0x01  # inside the file content: same size, other digest
    blob.write_bytes(bytes(data))
    return Bad(path, ["digest mismatch", b.layer_blobs[0].partition(":")[2], "expected"])


def _bad_layer_size(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    with open(blob_file(path, b.layer_blobs[0]), "ab") as f:
        f.write(b"\0")
    return Bad(path, ["size mismatch", b.layer_blobs[0].partition(":")[2]])


def _missing_layer(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}, {"b": b"2"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob_file(path, b.layer_blobs[1]).unlink()
    return Bad(path, ["missing", b.layer_blobs[1], "layers[1]"])


def _missing_config(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob_file(path, b.id).unlink()
    return Bad(path, ["missing", b.id, "config"])


def _missing_manifest(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob_file(path, b.desc["digest"]).unlink()
    return Bad(path, ["missing", b.desc["digest"], "index.json manifests[0]"])


def _bad_config_digest(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    flip_last_byte(blob_file(path, b.id))
    return Bad(path, ["digest mismatch", b.id])


def _bad_manifest_size(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    desc = dict(b.desc, size=b.desc["size"] + 1)
    lay.tag(desc, "v1")
    return Bad(lay.write(), ["size mismatch", b.desc["digest"].partition(":")[2]])


def _index(text: str) -> Any:
    def make(tmp: Path) -> Bad:
        lay = Layout(tmp / "l")
        lay.image([{"a": b"1"}])
        path = lay.write()
        (path / "index.json").write_text(text)
        return Bad(path, ["index.json"])

    return make


def _diff_id_mismatch(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    wrong = sha(b"not the layer")
    b = lay.image([{"a": b"1"}], how="gzip", diff_ids=[wrong])
    lay.tag(b.desc, "v1")
    return Bad(lay.write(), ["diff ID", wrong, b.layer_blobs[0].partition(":")[2]])


def _bzip2_layer(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}], how="bzip2", layer_mt=LAYER_MT["gzip"])
    lay.tag(b.desc, "v1")
    return Bad(lay.write(), ["unsupported compression bzip2", b.layer_blobs[0].partition(":")[2]])


def _layer_count(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}], diff_ids=[sha(b"1"), sha(b"2")])
    lay.tag(b.desc, "v1")
    return Bad(lay.write(), ["1 layers listed", "2 diff IDs", b.desc["digest"]])


def _foreign_layer_missing(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    mt = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    b = lay.image([{"a": b"1"}], layer_mt=mt)
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob_file(path, b.layer_blobs[0]).unlink()
    return Bad(path, ["non-distributable", b.layer_blobs[0]])


def _encrypted_layer(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}], layer_mt=LAYER_MT["gzip"] + "+encrypted")
    lay.tag(b.desc, "v1")
    return Bad(lay.write(), ["encrypted", b.layer_blobs[0]])


def _schema1(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    digest, size = lay.blob(b'{"schemaVersion": 1, "name": "x", "fsLayers": []}')
    lay.tag(
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "digest": digest,
            "size": size,
        },
        "v1",
    )
    return Bad(lay.write(), ["schema 1"])


def _index_says_manifest(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    inner = lay.index([b.desc])
    lay.tag(dict(inner, mediaType="application/vnd.oci.image.manifest.v1+json"), "v1")
    return Bad(lay.write(), ["the descriptor says", inner["digest"].partition(":")[2]])


def _layout_version(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    (path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    return Bad(path, ["oci-layout", "2.0.0"])


def _bad_digest_field(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(dict(b.desc, digest="md5:abc"), "v1")
    return Bad(lay.write(), ["index.json manifests[0]", "md5:abc"])


def _symlink_out(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    blob = blob_file(path, b.layer_blobs[0])
    outside = tmp / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    blob.symlink_to(outside)
    return Bad(path, [b.layer_blobs[0].partition(":")[2]])


def _archive_with_dotdot(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": b"1"}])
    lay.tag(b.desc, "v1")
    path = lay.write()
    out = tmp / "evil.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(path, arcname=".")
        info = tarfile.TarInfo("blobs/../../evil")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    return Bad(out, ["evil", ".."])


def _truncated_archive(tmp: Path) -> Bad:
    lay = Layout(tmp / "l")
    b = lay.image([{"a": bytes(range(256)) * 64}], how="none")
    lay.tag(b.desc, "v1")
    path = lay.write()
    out = tmp / "short.tar"
    with tarfile.open(out, "w") as tf:
        tf.add(path, arcname=".")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return Bad(out, ["truncated"])


BAD_INPUTS = {
    "layer blob digest mismatch": _bad_layer_digest,
    "layer blob size mismatch": _bad_layer_size,
    "missing layer blob": _missing_layer,
    "missing config blob": _missing_config,
    "missing manifest blob": _missing_manifest,
    "config digest mismatch": _bad_config_digest,
    "manifest size mismatch": _bad_manifest_size,
    "index.json malformed": _index("{"),
    "index.json null": _index("null"),
    "index.json a list": _index("[]"),
    "index.json manifests not a list": _index('{"schemaVersion": 2, "manifests": {}}'),
    "index.json schemaVersion": _index('{"schemaVersion": 1, "manifests": []}'),
    "diff ID mismatch": _diff_id_mismatch,
    "bzip2 layer": _bzip2_layer,
    "layer count": _layer_count,
    "foreign layer missing": _foreign_layer_missing,
    "encrypted layer": _encrypted_layer,
    "schema 1 manifest": _schema1,
    "index announced as manifest": _index_says_manifest,
    "layout version": _layout_version,
    "bad digest": _bad_digest_field,
    "symlink out of the layout": _symlink_out,
    "'..' entry in oci-archive": _archive_with_dotdot,
    "truncated oci-archive": _truncated_archive,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_and_the_store_is_unchanged(
    store: Store, tmp_path: Path, case: str
) -> None:
    load(store, CORPUS / "test_index_one_image")  # the store has something to lose
    bad = BAD_INPUTS[case](tmp_path)
    before = snapshot(store.root)
    with pytest.raises(OcistoreError) as e:
        load(store, bad.path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(bad.path) in msg or bad.path.name in msg
    for part in bad.expect:
        assert part in msg, (part, msg)
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []


# -- the real tools: umoci and skopeo ----------------------------------------------------------


def doc_dirs(limit_bytes: int = 6 << 20) -> list[Path]:
    """Real directories of files from /usr/share/doc, up to about ``limit_bytes``."""
    root = Path("/usr/share/doc")
    out: list[Path] = []
    total = 0
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if d.is_symlink() or not d.is_dir():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file() and not f.is_symlink())
        if size == 0 or total + size > limit_bytes:
            continue
        out.append(d)
        total += size
        if len(out) >= 40:
            break
    if len(out) < 3:
        pytest.skip("/usr/share/doc has too few files to build a realistic image")
    return out


@dataclass
class UmociImage:
    layout: Path
    tag: str
    rootfs_files: dict[str, bytes]  # what the top of the image must hold
    deleted: list[str]  # paths removed by whiteouts in upper layers
    hardlink: tuple[str, str]
    symlink: tuple[str, str]


@pytest.fixture
def umoci_image(tmp_path: Path, umoci: Any) -> UmociImage:
    """A multi-layer image of real files built with umoci (hardlinks, symlinks, whiteouts)."""
    layout = tmp_path / "umoci-layout"
    bundle = tmp_path / "bundle"
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:t")
    umoci("unpack", "--rootless", "--image", f"{layout}:t", bundle)
    rootfs = bundle / "rootfs"
    dirs = doc_dirs()
    # Layer 1: real documentation directories, a hardlink and a symlink.
    for d in dirs:
        shutil.copytree(d, rootfs / "doc" / d.name, symlinks=True)
    first_file = next(p for p in sorted((rootfs / "doc" / dirs[0].name).rglob("*")) if p.is_file())
    first_rel = first_file.relative_to(rootfs).as_posix()
    os.link(first_file, rootfs / "hardlink")
    os.symlink(first_rel, rootfs / "symlink")
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:t", bundle)
    # Layer 2: delete a file and a whole directory (whiteouts), add and change files.
    gone_dir = f"doc/{dirs[1].name}"
    shutil.rmtree(rootfs / gone_dir)
    gone_file = next(
        p.relative_to(rootfs).as_posix()
        for p in sorted((rootfs / "doc" / dirs[2].name).rglob("*"))
        if p.is_file() and not p.is_symlink()
    )
    (rootfs / gone_file).unlink()
    (rootfs / "etc").mkdir()
    (rootfs / "etc/motd").write_bytes(b"layer two\n")
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:t", bundle)
    # Layer 3: change a file from layer 2.
    (rootfs / "etc/motd").write_bytes(b"layer three\n")
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:t", bundle)
    files = {
        p.relative_to(rootfs).as_posix(): p.read_bytes()
        for p in rootfs.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    return UmociImage(
        layout, "t", files, [gone_dir, gone_file], ("hardlink", first_rel), ("symlink", first_rel)
    )


def check_unpacked(rootfs: Path, img: UmociImage) -> None:
    got = {
        p.relative_to(rootfs).as_posix(): p.read_bytes()
        for p in rootfs.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    assert got == img.rootfs_files
    for gone in img.deleted:
        assert not (rootfs / gone).exists(), gone
    a, b = img.hardlink
    assert os.stat(rootfs / a).st_ino == os.stat(rootfs / b).st_ino
    link, target = img.symlink
    assert os.readlink(rootfs / link) == target
    assert (rootfs / "etc/motd").read_bytes() == b"layer three\n"


def umoci_diff_ids(umoci: Any, image: str) -> list[str]:
    stat = json.loads(umoci("stat", "--json", "--image", image).stdout)
    return [h["diff_id"] for h in stat["history"] if h.get("diff_id")]


def test_load_what_umoci_writes(store: Store, umoci_image: UmociImage, umoci: Any) -> None:
    img = umoci_image
    digest, manifest = layout_manifest(img.layout, img.tag)
    loaded = load(store, img.layout)
    assert len(loaded) == 1
    assert loaded[0].id == manifest["config"]["digest"]  # the ID umoci's config has
    assert [str(t) for t in loaded[0].tags] == ["localhost/t:latest"]
    cfg = store.images.get(loaded[0].id).config
    assert list(cfg.diff_ids) == umoci_diff_ids(umoci, f"{img.layout}:{img.tag}")
    assert stored_layer_blobs(store, loaded[0].id) == [ld["digest"] for ld in manifest["layers"]]
    assert len(cfg.diff_ids) == 3
    # The whiteouts umoci wrote are in the stored layer.
    with (
        store.layers.open_tar(cfg.chain_ids[1]) as f,
        tarfile.open(fileobj=f, mode="r|") as tf,
    ):
        names = [m.name for m in tf]
    assert any(Path(n).name.startswith(".wh.") for n in names)
    assert digest == digest_bytes(kept_manifest(store, loaded[0].id))


def test_load_what_skopeo_writes_zstd_and_oci_archive(
    tmp_path: Path, umoci_image: UmociImage, skopeo: Any
) -> None:
    img = umoci_image
    _, manifest = layout_manifest(img.layout, img.tag)
    image_id = manifest["config"]["digest"]
    zstd_dir = tmp_path / "zstd"
    skopeo("copy", "--dest-compress-format", "zstd", f"oci:{img.layout}:t", f"oci:{zstd_dir}:z")
    archive = tmp_path / "skopeo.tar"
    skopeo("copy", f"oci:{img.layout}:t", f"oci-archive:{archive}:a")
    _, zmanifest = layout_manifest(zstd_dir, "z")
    assert all(ld["mediaType"].endswith("+zstd") for ld in zmanifest["layers"])

    s1 = Store(tmp_path / "s1")
    loaded = load(s1, zstd_dir)
    assert [x.id for x in loaded] == [image_id]
    chains = s1.images.get(loaded[0].id).config.chain_ids
    assert [s1.layers.get(c).blob.compression for c in chains] == [Compression.ZSTD] * 3
    assert stored_layer_blobs(s1, image_id) == [ld["digest"] for ld in zmanifest["layers"]]

    s2 = Store(tmp_path / "s2")
    loaded = load(s2, archive)
    assert [x.id for x in loaded] == [image_id]
    assert stored_layer_blobs(s2, image_id) == [ld["digest"] for ld in manifest["layers"]]

    # Both into one store: same image, both blob sets kept; the last manifest is kept.
    load(s2, zstd_dir)
    record = s2.images.record(ImageID(Digest(image_id)))
    assert {ld["digest"] for ld in zmanifest["layers"]} <= set(record.blobs)
    assert json.loads(kept_manifest(s2, image_id)) == zmanifest


def skopeo_inspect(skopeo: Any, ref: str) -> dict[str, Any]:
    return json.loads(skopeo("inspect", ref).stdout)  # type: ignore[no-any-return]


def test_skopeo_and_umoci_read_what_ocistore_saves(
    store: Store, tmp_path: Path, umoci_image: UmociImage, skopeo: Any, umoci: Any
) -> None:
    img = umoci_image
    loaded = load(store, img.layout)
    image_id = loaded[0].id
    store.tag(image_id, "example.com/interop/img:v1")
    out = save_dir(store, ["example.com/interop/img:v1"], tmp_path / "saved")
    archive = save_tar(store, ["example.com/interop/img:v1"], tmp_path / "saved.tar")
    digest, manifest = layout_manifest(out, "v1")
    layers = [ld["digest"] for ld in manifest["layers"]]
    assert manifest["config"]["digest"] == image_id

    for ref in (f"oci:{out}:v1", f"oci-archive:{archive}:v1"):
        info = skopeo_inspect(skopeo, ref)
        assert info["Digest"] == digest
        assert info["Layers"] == layers

    dir_copy = tmp_path / "dir-copy"
    skopeo("copy", f"oci:{out}:v1", f"dir:{dir_copy}")
    assert sha((dir_copy / "manifest.json").read_bytes()) == digest
    for blob in [image_id, *layers]:
        assert sha((dir_copy / blob.partition(":")[2]).read_bytes()) == blob

    assert umoci_diff_ids(umoci, f"{out}:v1") == list(store.images.get(image_id).config.diff_ids)
    bundle = tmp_path / "unpacked"
    umoci("unpack", "--rootless", "--image", f"{out}:v1", bundle)
    check_unpacked(bundle / "rootfs", img)


def test_tools_read_a_generated_manifest_with_zstd_and_plain_layers(
    store: Store, tmp_path: Path, skopeo: Any, umoci: Any
) -> None:
    """An image ocistore made itself (no kept manifest) comes out as an OCI image."""
    plain = make_tar({"usr/share/doc/base.txt": b"base\n" * 100})
    image_id = store.import_tarball(io.BytesIO(plain), "example.com/made:plain")
    out = save_dir(store, ["example.com/made:plain"], tmp_path / "out")
    digest, manifest = layout_manifest(out, "plain")
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    info = skopeo_inspect(skopeo, f"oci:{out}:plain")
    assert info["Digest"] == digest
    assert umoci_diff_ids(umoci, f"{out}:plain") == [sha(plain)]
    bundle = tmp_path / "b"
    umoci("unpack", "--rootless", "--image", f"{out}:plain", bundle)
    assert (bundle / "rootfs/usr/share/doc/base.txt").read_bytes() == b"base\n" * 100

    # Other content: the same DiffID would reuse the stored layer and its plain blob.
    zst = zstandard.ZstdCompressor().compress(make_tar({"z.txt": b"zstd\n" * 100}))
    zid = store.import_tarball(io.BytesIO(zst), "example.com/made:zstd")
    out2 = save_tar(store, ["example.com/made:zstd"], tmp_path / "z.tar")
    info = skopeo_inspect(skopeo, f"oci-archive:{out2}:zstd")
    assert info["Layers"] == [sha(zst)]
    copy = tmp_path / "copy"
    skopeo("copy", f"oci-archive:{out2}:zstd", f"dir:{copy}")
    assert sha((copy / zid.partition(":")[2]).read_bytes()) == zid
    assert image_id != zid


def test_round_trip_through_skopeo(
    store: Store, sample: tuple[Path, list[Built]], tmp_path: Path, skopeo: Any
) -> None:
    """ocistore → skopeo (oci → oci-archive) → ocistore: same IDs, same blobs."""
    path, images = sample
    load(store, path)
    out = save_dir(store, ["example.com/test/c:c3"], tmp_path / "out")
    back = tmp_path / "back.tar"
    # Without this, skopeo gzips the uncompressed layer on the way (other blob, same DiffID).
    skopeo(
        "copy", "--dest-oci-accept-uncompressed-layers", f"oci:{out}:c3", f"oci-archive:{back}:c3"
    )
    store2 = Store(tmp_path / "store2")
    loaded = load(store2, back)
    assert [str(x.id) for x in loaded] == [images[2].id]
    assert stored_layer_blobs(store2, images[2].id) == images[2].layer_blobs


def test_a_second_descriptor_of_a_blob_is_checked_too(tmp_path: Path) -> None:
    """A blob is read once, however many descriptors name it; each descriptor's size is
    still checked (a repeated descriptor one byte off is refused, as the first would be)."""
    store = Store(tmp_path / "store")
    store.import_tarball(io.BytesIO(util.make_tar({"a": b"1"})), "img:1")
    layout = tmp_path / "layout"
    formats.save(store, ["img:1"], layout, formats.SaveFormat.OCI)
    index = json.loads((layout / "index.json").read_text())
    twin = dict(index["manifests"][0], size=index["manifests"][0]["size"] + 5)
    twin["annotations"] = {"org.opencontainers.image.ref.name": "other:2"}
    index["manifests"].append(twin)
    (layout / "index.json").write_text(json.dumps(index))
    other = Store(tmp_path / "other")
    with pytest.raises(SizeMismatch, match=r"manifests\[1\]"):
        formats.load(other, layout)
    assert other.images.list() == []
