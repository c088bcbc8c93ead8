"""docker-archive: every shape Docker wrote, the corpus, round trips, bad input, and peers.

The peers (skopeo, umoci) are real tools: archives ocistore writes must be read by them
with the same digests, and archives they write must load with the IDs they report.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import util
import zstandard
from conftest import Runner
from util import make_tar, snapshot, unchanged

from ocistore.cli.progress import TerminalProgress
from ocistore.errors import DigestMismatch, InvalidInput, NotFound
from ocistore.formats.docker_archive import (
    is_docker_archive,
    read_docker_archive,
    write_docker_archive,
)
from ocistore.formats.reader import open_archive
from ocistore.progress import Progress
from ocistore.spec.digest import EMPTY_TAR_DIGEST, digest_bytes
from ocistore.spec.legacy import v1
from ocistore.spec.reference import parse_tagged
from ocistore.store import Store
from ocistore.store.ingest import LoadedImage, add_images

CORPUS = util.CORPUS / "docker-archive"

# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def corpus(name: str) -> Path:
    path = CORPUS / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus file {path} is missing")
        pytest.skip(f"corpus file {path} is missing")
    return path


def load(store: Store, source: Path | str, jobs: int | None = None) -> list[LoadedImage]:
    archive = open_archive(source, store.spool)
    try:
        assert is_docker_archive(archive)
        return add_images(store, read_docker_archive(archive), jobs=jobs)
    finally:
        archive.close()


def save(store: Store, names: list[str], progress: Progress | None = None) -> bytes:
    out = io.BytesIO()
    write_docker_archive(store, names, out, progress)
    return out.getvalue()


def layer_tar(files: dict[str, bytes]) -> bytes:
    return make_tar(files, mtime=1_600_000_000)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_config(diff_ids: list[str], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2021-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(diff_ids))],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Sym:
    target: str


@dataclass(frozen=True)
class Hard:
    target: str


DIR = object()
Member = bytes | Sym | Hard | object


def write_tar(path: Path, members: dict[str, Member]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(value, bytes):
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            if isinstance(value, Sym):
                info.type = tarfile.SYMTYPE
                info.linkname = value.target
            elif isinstance(value, Hard):
                info.type = tarfile.LNKTYPE
                info.linkname = value.target
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            tar.addfile(info)
    return path


TAR_A = layer_tar({"etc/a": b"alpha\n", "bin/tool": b"\x7fELF" + b"x" * 3000})
TAR_B = layer_tar({"etc/b": b"bravo\n"})
TAR_C = layer_tar({"etc/c": b"charlie\n", "usr/share/doc": b"doc " * 500})


def classic(
    layers: list[bytes],
    tags: list[str] | None = None,
    blobs: list[bytes] | None = None,
    **config_extra: Any,
) -> tuple[dict[str, Member], bytes]:
    """The members of a Docker 1.10–24 archive (layer blobs may be compressed)."""
    blobs = blobs if blobs is not None else layers
    config = make_config([sha(t) for t in layers], **config_extra)
    members: dict[str, Member] = {f"{hashlib.sha256(config).hexdigest()}.json": config}
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(f"layer{i}/layer.tar")
        members[f"layer{i}/layer.tar"] = blob
    entry = {"Config": f"{hashlib.sha256(config).hexdigest()}.json", "Layers": paths}
    entry["RepoTags"] = tags if tags is not None else ["example/app:1"]
    members["manifest.json"] = json.dumps([entry]).encode()
    return members, config


def manifest_of(members: dict[str, Member]) -> list[dict[str, Any]]:
    data = members["manifest.json"]
    assert isinstance(data, bytes)
    doc: list[dict[str, Any]] = json.loads(data)
    return doc


def with_manifest(members: dict[str, Member], doc: Any) -> dict[str, Member]:
    return {**members, "manifest.json": json.dumps(doc).encode()}


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def tar_read(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def diff_ids_of(store: Store, image_id: str) -> list[str]:
    return [str(d) for d in store.images.get(store.resolve(image_id)).config.diff_ids]


def tags_of(store: Store, image_id: str) -> list[str]:
    refs = store.references.references(store.resolve(image_id))
    return sorted(r.familiar() for r in refs)


# -- the corpus -----------------------------------------------------------------------------

BAZEL_LAYER = "sha256:8897395fd26dc44ad0e2a834335b33198cb41ac4d98dfddf58eced3853fa7b17"
CORPUS_IMAGES: dict[str, list[tuple[str, list[str], list[str]]]] = {
    "test_image_1.tar": [
        (
            "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e",
            ["bazel/v1/tarball:test_image_1"],
            [BAZEL_LAYER],
        )
    ],
    "test_bundle.tar": [
        (
            "sha256:930705ce23e3b6ed4c08746b6fe880089c864fbaf62482702ae3fdd66b8c7fe9",
            ["test_image_2:latest"],
            ["sha256:3610aa5267a210147ba6ca02cdd87610dfc08522de9c5f5015edd8ee14853fd8"],
        ),
        (
            "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e",
            ["test_image_1:latest"],
            [BAZEL_LAYER],
        ),
    ],
    # Pre-1.10: the ID is that of the config Docker builds from the legacy layer's JSON.
    "no_manifest.tar": [
        (
            "sha256:a2673db3c3d86a802c915e140274aed9d62464681af1371c881d7f5821b05645",
            ["bazel/v1/tarball:test_image"],
            ["sha256:fbec6100edacb7a6374f75545cfdfac2d83f74d0f5ed813645e4c3944c68c761"],
        )
    ],
    "whiteout_image.tar": [
        (
            "sha256:decb630649c3e1256345d416b228d6c3ceb387a55120ad44dc3ec992976d28b9",
            ["bazel/pkg/v1/mutate:whiteout_image"],
            [
                "sha256:891f36a008624b6450292efb6ff06b633a179c7cc08456fefcc08c2b34f3b31c",
                "sha256:88d2a7b2ae6dddeb3490c9370cfc070aaa1aab9c22a6fb03523787d8b21c17db",
                "sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652",
            ],
        )
    ],
    # The config file is named 6e0b05…json but holds other bytes: the ID is their digest,
    # as docker load computes it (the name is not checked).
    "source_image_with_empty_layer_history.tar": [
        (
            "sha256:05b5ec1290589606ce19fabb1fb331f004acd9f618b9b4e813721be1a03a0712",
            ["bazel/pkg/v1/mutate:source_image"],
            [BAZEL_LAYER],
        )
    ],
}


@pytest.mark.parametrize("name", sorted(CORPUS_IMAGES))
def test_corpus_loads_with_expected_ids(store: Store, name: str) -> None:
    loaded = load(store, corpus(name))
    expected = CORPUS_IMAGES[name]
    assert [str(i.id) for i in loaded] == [e[0] for e in expected]
    for image_id, tags, diff_ids in expected:
        assert tags_of(store, image_id) == tags
        assert diff_ids_of(store, image_id) == diff_ids
        config = store.images.get(store.resolve(image_id)).config
        assert sha(config.raw) == image_id
        for chain in config.chain_ids:
            with store.layers.open_tar(chain) as f:
                while f.read(1 << 16):
                    pass
    assert store.fsck() == []
    assert list(store.tmpdir.iterdir()) == []


def test_corpus_no_manifest_builds_config_as_docker_did(store: Store) -> None:
    (image,) = load(store, corpus("no_manifest.tar"))
    config = json.loads(store.images.get(image.id).config.raw)
    assert list(config) == sorted(config)
    assert "id" not in config and "parent" not in config
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:fbec6100edacb7a6374f75545cfdfac2d83f74d0f5ed813645e4c3944c68c761"],
    }
    assert config["history"] == [{"created": "1970-01-01T00:00:00Z"}]
    # No docker_version: the JSON went through Docker's V1Image struct (defaults filled in).
    assert config["config"]["Hostname"] == ""
    assert store.images.get_parent(image.id) is None


def test_corpus_null_manifest_fails_cleanly(store: Store) -> None:
    load(store, corpus("test_image_1.tar"))  # a store with something in it
    with unchanged(store), pytest.raises(InvalidInput) as err:
        load(store, corpus("null_manifest.tar"))
    msg = str(err.value)
    assert "null_manifest.tar" in msg and "manifest.json" in msg and "null" in msg


def test_corpus_loading_twice_is_idempotent(store: Store) -> None:
    first = load(store, corpus("whiteout_image.tar"))
    before = snapshot(store.root / "layerdb")
    second = load(store, corpus("whiteout_image.tar"))
    assert first == second
    assert snapshot(store.root / "layerdb") == before


# -- Docker 1.10–24 shape built here --------------------------------------------------------

COMPRESS = {
    "plain": lambda b: b,
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_classic_archive_with_compressed_layers(store: Store, tmp_path: Path, kind: str) -> None:
    blobs = [COMPRESS[kind](t) for t in (TAR_A, TAR_B)]
    members, config = classic([TAR_A, TAR_B], blobs=blobs)
    (image,) = load(store, write_tar(tmp_path / "a.tar", members))
    assert image.id == sha(config)
    assert [r.familiar() for r in image.tags] == ["example/app:1"]
    assert diff_ids_of(store, image.id) == [sha(TAR_A), sha(TAR_B)]
    # The blob is kept as it came.
    chains = store.images.get(image.id).config.chain_ids
    assert [str(store.layers.get(c).blob.digest) for c in chains] == [sha(b) for b in blobs]


def test_classic_archive_field_names_match_any_case(store: Store, tmp_path: Path) -> None:
    members, config = classic([TAR_A])
    (entry,) = manifest_of(members)
    doc = [{"config": entry["Config"], "LAYERS": entry["Layers"], "repotags": ["x:1"]}]
    (image,) = load(store, write_tar(tmp_path / "a.tar", with_manifest(members, doc)))
    assert image.id == sha(config)
    assert tags_of(store, image.id) == ["x:1"]


def test_classic_archive_gzip_compressed_whole(store: Store, tmp_path: Path) -> None:
    members, config = classic([TAR_A])
    plain = write_tar(tmp_path / "a.tar", members)
    packed = tmp_path / "a.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    (image,) = load(store, packed)
    assert image.id == sha(config)
    assert list(store.tmpdir.iterdir()) == []


def test_empty_manifest_list_loads_nothing(store: Store, tmp_path: Path) -> None:
    load(store, corpus("test_image_1.tar"))
    path = write_tar(tmp_path / "a.tar", {"manifest.json": b"[]"})
    with unchanged(store):
        assert load(store, path) == []


def test_repeated_layer_linked_by_docker_loads(store: Store, tmp_path: Path) -> None:
    # One tar at two places of one image and in another image at another depth: Docker
    # writes it once and links the other directories to it.
    empty = b"\x00" * 1024
    config1 = make_config([sha(empty), sha(TAR_A), sha(empty)])
    config2 = make_config([sha(TAR_B), sha(empty)], created="2022-01-01T00:00:00Z")
    h1, h2 = hashlib.sha256(config1).hexdigest(), hashlib.sha256(config2).hexdigest()
    members: dict[str, Member] = {
        f"{h1}.json": config1,
        f"{h2}.json": config2,
        "e/layer.tar": empty,
        "a/layer.tar": TAR_A,
        "e2/layer.tar": Sym("../e/layer.tar"),
        "b/layer.tar": TAR_B,
        "e3": DIR,
        "e3/layer.tar": Sym("../e2/layer.tar"),
    }
    doc = [
        {
            "Config": f"{h1}.json",
            "RepoTags": ["one:1"],
            "Layers": ["e/layer.tar", "a/layer.tar", "e2/layer.tar"],
        },
        {"Config": f"{h2}.json", "RepoTags": ["two:1"], "Layers": ["b/layer.tar", "e3/layer.tar"]},
    ]
    loaded = load(store, write_tar(tmp_path / "a.tar", with_manifest(members, doc)))
    assert [i.id for i in loaded] == [sha(config1), sha(config2)]
    assert diff_ids_of(store, sha(config1))[0] == EMPTY_TAR_DIGEST
    assert store.fsck() == []


def test_parent_links_between_entries(store: Store, tmp_path: Path) -> None:
    base = make_config([sha(TAR_A)], history=[{"created_by": "base"}])
    child = make_config(
        [sha(TAR_A), sha(TAR_B)], history=[{"created_by": "base"}, {"created_by": "child"}]
    )
    hb, hc = hashlib.sha256(base).hexdigest(), hashlib.sha256(child).hexdigest()
    members: dict[str, Member] = {
        f"{hb}.json": base,
        f"{hc}.json": child,
        "a/layer.tar": TAR_A,
        "b/layer.tar": TAR_B,
    }
    doc = [
        {
            "Config": f"{hc}.json",
            "RepoTags": None,
            "Layers": ["a/layer.tar", "b/layer.tar"],
            "Parent": sha(base),
        },
        {
            "Config": f"{hb}.json",
            "RepoTags": None,
            "Layers": ["a/layer.tar"],
            "Parent": sha(b"not in the archive"),
        },
    ]
    load(store, write_tar(tmp_path / "a.tar", with_manifest(members, doc)))
    assert store.images.get_parent(store.resolve(sha(child))) == sha(base)
    assert store.images.get_parent(store.resolve(sha(base))) is None


def test_parent_that_is_not_a_valid_parent_is_refused(store: Store, tmp_path: Path) -> None:
    base = make_config([sha(TAR_A)], history=[{"created_by": "base"}])
    other = make_config(
        [sha(TAR_B)], history=[{"created_by": "x", "empty_layer": True}, {"created_by": "y"}]
    )
    hb, ho = hashlib.sha256(base).hexdigest(), hashlib.sha256(other).hexdigest()
    members: dict[str, Member] = {
        f"{hb}.json": base,
        f"{ho}.json": other,
        "a/layer.tar": TAR_A,
        "b/layer.tar": TAR_B,
    }
    doc = [
        {"Config": f"{hb}.json", "Layers": ["a/layer.tar"]},
        {"Config": f"{ho}.json", "Layers": ["b/layer.tar"], "Parent": sha(base)},
    ]
    path = write_tar(tmp_path / "a.tar", with_manifest(members, doc))
    with unchanged(store), pytest.raises(InvalidInput, match=r"manifest.json\[1\].*valid parent"):
        load(store, path)


# -- Docker 25+ shape ------------------------------------------------------------------------


def docker25(
    layers: list[bytes], blobs: list[bytes] | None = None, tags: list[str] | None = None
) -> tuple[dict[str, Member], bytes]:
    """A Docker 25+ archive: an OCI layout whose manifest.json points into blobs/."""
    blobs = blobs if blobs is not None else layers
    config = make_config([sha(t) for t in layers])
    members: dict[str, Member] = {
        "blobs": DIR,
        "blobs/sha256": DIR,
        f"blobs/sha256/{hashlib.sha256(config).hexdigest()}": config,
    }
    descriptors = []
    for blob in blobs:
        members[f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}"] = blob
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha(blob),
                "size": len(blob),
            }
        )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    members[f"blobs/sha256/{hashlib.sha256(manifest).hexdigest()}"] = manifest
    members["index.json"] = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(manifest),
                    "size": len(manifest),
                }
            ],
        }
    ).encode()
    members["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    members["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{hashlib.sha256(config).hexdigest()}",
                "RepoTags": tags if tags is not None else ["example/new:25"],
                "Layers": [f"blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in blobs],
            }
        ]
    ).encode()
    members["repositories"] = b"{}"
    return members, config


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_docker25_archive(store: Store, tmp_path: Path, kind: str) -> None:
    blobs = [COMPRESS[kind](t) for t in (TAR_A, TAR_B, TAR_C)]
    members, config = docker25([TAR_A, TAR_B, TAR_C], blobs=blobs)
    path = write_tar(tmp_path / "a.tar", members)
    archive = open_archive(path, store.spool)
    try:
        assert is_docker_archive(archive)  # manifest.json wins over index.json
        sources = read_docker_archive(archive)
        assert [layer.blob_digest for layer in sources[0].layers] == [sha(b) for b in blobs]
        assert [layer.blob_size for layer in sources[0].layers] == [len(b) for b in blobs]
        (image,) = add_images(store, sources)
    finally:
        archive.close()
    assert image.id == sha(config)
    assert tags_of(store, image.id) == ["example/new:25"]
    assert diff_ids_of(store, image.id) == [sha(TAR_A), sha(TAR_B), sha(TAR_C)]
    for blob in blobs:
        assert store.content.exists(digest_bytes(blob))


def test_docker25_layer_blob_that_does_not_match_its_name(store: Store, tmp_path: Path) -> None:
    members, config = docker25([TAR_A])
    name = f"blobs/sha256/{hashlib.sha256(TAR_A).hexdigest()}"
    members[name] = TAR_B  # bytes other than the name promises
    # keep the config consistent with what is there, so only the blob digest is wrong
    members, _ = _retarget_config(members, config, [sha(TAR_B)])
    path = write_tar(tmp_path / "a.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch) as err:
        load(store, path)
    assert name in str(err.value)


def _retarget_config(
    members: dict[str, Member], config: bytes, diff_ids: list[str]
) -> tuple[dict[str, Member], bytes]:
    new = make_config(diff_ids)
    out = {
        k: v
        for k, v in members.items()
        if k != f"blobs/sha256/{hashlib.sha256(config).hexdigest()}"
    }
    out[f"blobs/sha256/{hashlib.sha256(new).hexdigest()}"] = new
    doc = manifest_of(members)
    doc[0]["Config"] = f"blobs/sha256/{hashlib.sha256(new).hexdigest()}"
    return with_manifest(out, doc), new


def test_docker25_config_blob_that_does_not_match_its_name(store: Store, tmp_path: Path) -> None:
    members, config = docker25([TAR_A])
    name = f"blobs/sha256/{hashlib.sha256(config).hexdigest()}"
    members[name] = config.replace(b'"amd64"', b'"arm64"')
    path = write_tar(tmp_path / "a.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch) as err:
        load(store, path)
    assert name in str(err.value) and "a.tar" in str(err.value)


# -- Docker before 1.10 ----------------------------------------------------------------------


def v1_json(v1_id: str, parent: str = "", **extra: Any) -> bytes:
    doc: dict[str, Any] = {"id": v1_id, "created": "2015-06-01T10:00:00.123456789Z", **extra}
    if parent:
        doc["parent"] = parent
    return json.dumps(doc).encode()


def legacy_members(
    layers: list[tuple[str, str, bytes, bytes | Sym]], repositories: dict[str, Any] | None
) -> dict[str, Member]:
    members: dict[str, Member] = {}
    for v1_id, _parent, js, tar in layers:
        members[f"{v1_id}/VERSION"] = b"1.0"
        members[f"{v1_id}/json"] = js
        members[f"{v1_id}/layer.tar"] = tar
    if repositories is not None:
        members["repositories"] = json.dumps(repositories).encode()
    return members


ID1, ID2, ID3, ID4 = ("1" * 64, "2" * 64, "3" * 64, "4" * 64)


def legacy_chain() -> dict[str, Member]:
    cc = {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file in /"]}
    layers: list[tuple[str, str, bytes, bytes | Sym]] = [
        (
            ID1,
            "",
            v1_json(
                ID1,
                docker_version="1.9.1",
                author="me <a@b>",
                container_config=cc,
                os="linux",
                architecture="amd64",
            ),
            TAR_A,
        ),
        (
            ID2,
            ID1,
            v1_json(
                ID2,
                ID1,
                docker_version="1.9.1",
                comment="second",
                container_config={"Cmd": ["/bin/sh", "-c", "echo hi"]},
            ),
            gzip.compress(TAR_B, mtime=0),
        ),
        (
            ID3,
            ID2,
            v1_json(ID3, ID2, docker_version="1.9.1", throwaway=True, Size=0),
            Sym(f"../{ID1}/layer.tar"),
        ),
        # A second top on the same base (an older version of the image).
        (ID4, ID1, v1_json(ID4, ID1, docker_version="1.7.0", os="linux"), TAR_C),
    ]
    return legacy_members(layers, {"example/old": {"latest": ID3, "v1": ID2}, "other": {"x": ID4}})


def expected_legacy_configs(members: dict[str, Member]) -> dict[str, bytes]:
    """What Docker's legacyLoadImage builds, layer by layer, from the v1 functions."""
    tars = {ID1: TAR_A, ID2: TAR_B, ID3: TAR_A, ID4: TAR_C}
    parents = {ID1: "", ID2: ID1, ID3: ID2, ID4: ID1}
    out: dict[str, bytes] = {}

    def build(v1_id: str) -> tuple[list[str], list[dict[str, Any]]]:
        diff_ids, history = build(parents[v1_id]) if parents[v1_id] else ([], [])
        js = members[f"{v1_id}/json"]
        assert isinstance(js, bytes)
        diff_ids = [*diff_ids, sha(tars[v1_id])]
        history = [*history, v1.history_from_config(js, False)]
        out[v1_id] = v1.make_config_from_v1_config(
            js, {"type": "layers", "diff_ids": diff_ids}, history
        )
        return diff_ids, history

    for v1_id in tars:
        build(v1_id)
    return out


def test_legacy_archive(store: Store, tmp_path: Path) -> None:
    members = legacy_chain()
    path = write_tar(tmp_path / "old.tar", members)
    loaded = load(store, path)
    expected = expected_legacy_configs(members)
    ids = {v: sha(c) for v, c in expected.items()}
    # Every legacy directory is an image, parents first, directories in name order.
    assert [str(i.id) for i in loaded] == [ids[ID1], ids[ID2], ids[ID3], ids[ID4]]
    assert store.images.get_parent(store.resolve(ids[ID1])) is None
    assert store.images.get_parent(store.resolve(ids[ID2])) == ids[ID1]
    assert store.images.get_parent(store.resolve(ids[ID3])) == ids[ID2]
    assert store.images.get_parent(store.resolve(ids[ID4])) == ids[ID1]
    assert tags_of(store, ids[ID3]) == ["example/old:latest"]
    assert tags_of(store, ids[ID2]) == ["example/old:v1"]
    assert tags_of(store, ids[ID4]) == ["other:x"]
    top = json.loads(store.images.get(store.resolve(ids[ID3])).config.raw)
    # Every legacy layer is a layer (even a throwaway one) with its own history entry.
    assert top["rootfs"]["diff_ids"] == [sha(TAR_A), sha(TAR_B), sha(TAR_A)]
    assert [h.get("created_by") for h in top["history"]] == [
        "/bin/sh -c #(nop) ADD file in /",
        "/bin/sh -c echo hi",
        None,
    ]
    assert top["history"][0]["author"] == "me <a@b>"
    assert not any(h.get("empty_layer") for h in top["history"])
    for key in ("id", "parent", "Size", "throwaway"):
        assert key not in top
    assert store.fsck() == []


def test_legacy_archive_without_repositories_has_no_tags(store: Store, tmp_path: Path) -> None:
    members = {k: v for k, v in legacy_chain().items() if k != "repositories"}
    loaded = load(store, write_tar(tmp_path / "old.tar", members))
    assert len(loaded) == 4 and all(not i.tags for i in loaded)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({f"{ID2}/json": v1_json(ID2, "9" * 64)}, f"{ID2}/json names parent {'9' * 64}"),
        ({f"{ID2}/json": v1_json(ID2, "../x")}, f"{ID2}/json: field parent"),
        ({f"{ID1}/json": v1_json(ID1, ID3)}, "loop"),
        ({f"{ID2}/json": b"{nope"}, f"{ID2}/json: not valid JSON"),
        ({f"{ID2}/json": b"[]"}, f"{ID2}/json: must be a JSON object"),
        ({f"{ID2}/json": v1_json(ID2, ID1, created="yesterday")}, f"{ID2}/json"),
        (
            {f"{ID4}/layer.tar": bz2.compress(TAR_C)},
            f"{ID4}/layer.tar: unsupported compression bzip2",
        ),
        ({"repositories": b'{"example/old": {"latest": "' + b"8" * 64 + b'"}}'}, "8888"),
        ({"repositories": b'{"Bad Name": {"latest": "' + ID1.encode() + b'"}}'}, "repositories"),
        ({"repositories": b"[]"}, "repositories: must be an object"),
    ],
)
def test_legacy_archive_bad_input(
    store: Store, tmp_path: Path, change: dict[str, Member], message: str
) -> None:
    members = {**legacy_chain(), **change}
    path = write_tar(tmp_path / "old.tar", members)
    with unchanged(store), pytest.raises(InvalidInput) as err:
        load(store, path)
    assert message in str(err.value)
    assert "old.tar" in str(err.value)


def test_legacy_archive_missing_layer_tar(store: Store, tmp_path: Path) -> None:
    members = {k: v for k, v in legacy_chain().items() if k != f"{ID2}/layer.tar"}
    with unchanged(store), pytest.raises(InvalidInput, match=f"{ID2}/layer.tar is missing"):
        load(store, write_tar(tmp_path / "old.tar", members))


# -- saving ----------------------------------------------------------------------------------


def load_built(store: Store, tmp_path: Path, members: dict[str, Member]) -> list[LoadedImage]:
    return load(store, write_tar(tmp_path / f"in{len(list(tmp_path.iterdir()))}.tar", members))


def test_save_layout_is_docker_save_s(store: Store, tmp_path: Path) -> None:
    members, config = classic([TAR_A, TAR_B], tags=["example/app:1", "example/app:2"])
    (image,) = load_built(store, tmp_path, members)
    data = save(store, ["example/app:1"])
    entries = tar_members(data)
    legacy = v1.legacy_layers(config)
    config_name = f"{image.id.hex}.json"
    expected_names = sorted(
        [config_name, "manifest.json", "repositories"]
        + [
            n
            for layer in legacy
            for n in (
                layer.v1_id,
                *(f"{layer.v1_id}/{f}" for f in ("VERSION", "json", "layer.tar")),
            )
        ]
    )
    assert list(entries) == expected_names  # Docker's walk order: lexical
    assert tar_read(data, config_name) == config
    for layer, tar in zip(legacy, (TAR_A, TAR_B), strict=True):
        assert entries[layer.v1_id].isdir()
        assert tar_read(data, f"{layer.v1_id}/VERSION") == b"1.0"
        assert tar_read(data, f"{layer.v1_id}/json") == layer.json
        assert tar_read(data, f"{layer.v1_id}/layer.tar") == tar
    # Go's json.Encoder: compact, HTML-safe, one newline; only the tag named.
    assert tar_read(data, "manifest.json") == (
        b'[{"Config":"'
        + config_name.encode()
        + b'","RepoTags":["example/app:1"],"Layers":['
        + b",".join(b'"%s/layer.tar"' % layer.v1_id.encode() for layer in legacy)
        + b"]}]\n"
    )
    assert tar_read(data, "repositories") == (
        b'{"example/app":{"1":"' + legacy[-1].v1_id.encode() + b'"}}\n'
    )
    # docker save's times: the image's created time on its config and its directories
    # (and their files), the epoch on manifest.json and repositories; root owns all.
    created = 1_609_459_200  # make_config's 2021-01-01T00:00:00Z
    for name, info in entries.items():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "root", "root")
        assert info.mtime == (0 if name in ("manifest.json", "repositories") else created)


@pytest.mark.parametrize(
    ("created", "mtime"),
    [
        ("2021-01-01T00:00:00.999999999+01:00", 1_609_455_600),  # cut to the second
        ("1969-12-31T23:59:59Z", 0),  # before the epoch: Chtimes sets the epoch
        ("2300-01-01T00:00:00Z", 0),  # past Go's UnixNano: the epoch too
        (None, 0),  # none: Go's zero time, before the epoch
    ],
)
def test_save_times_are_the_created_time_docker_sets(
    store: Store, tmp_path: Path, created: str | None, mtime: int
) -> None:
    members, _ = classic([TAR_A], created=created)
    load_built(store, tmp_path, members)
    entries = tar_members(save(store, ["example/app:1"]))
    assert {n: m.mtime for n, m in entries.items()} == {
        n: (0 if n in ("manifest.json", "repositories") else mtime) for n in entries
    }


def test_save_by_id_has_no_tags_and_no_repositories(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A])
    (image,) = load_built(store, tmp_path, members)
    for name in (str(image.id), image.id.hex, image.id.hex[:12], f"sha256:{image.id.hex[:8]}"):
        data = save(store, [name])
        assert b'"RepoTags":null' in tar_read(data, "manifest.json")
        assert "repositories" not in tar_members(data)


def test_save_bare_name_takes_every_tag_of_the_repository(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A], tags=["example/app:2", "example/app:1", "other:1"])
    (image,) = load_built(store, tmp_path, members)
    store.references.add_digest(parse_tagged(f"example/app@{sha(b'm')}"), image.id)
    data = save(store, ["example/app"])
    (entry,) = json.loads(tar_read(data, "manifest.json"))
    assert entry["RepoTags"] == ["example/app:1", "example/app:2"]
    repos = json.loads(tar_read(data, "repositories"))
    assert list(repos) == ["example/app"] and sorted(repos["example/app"]) == ["1", "2"]
    by_digest = save(store, [f"example/app@{sha(b'm')}"])
    assert json.loads(tar_read(by_digest, "manifest.json"))[0]["RepoTags"] is None


def test_save_unknown_names(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A])
    load_built(store, tmp_path, members)
    for name in ("example/app:nope", "nothere", "sha256:" + "f" * 64):
        with pytest.raises(NotFound):
            save(store, [name])
    with pytest.raises(InvalidInput):
        save(store, ["Bad Name"])


def test_save_several_images_share_layers_once(store: Store, tmp_path: Path) -> None:
    empty = b"\x00" * 1024
    one, c1 = classic([TAR_A, empty, TAR_B, empty], tags=["one:1"])
    two, c2 = classic([TAR_A, TAR_C], tags=["two:1"], created="2022-02-02T00:00:00Z")
    load_built(store, tmp_path, one)
    load_built(store, tmp_path, two)
    data = save(store, ["two:1", "one:1"])
    entries = tar_members(data)
    layer_files = {n: m for n, m in entries.items() if n.endswith("/layer.tar")}
    regular = [n for n, m in layer_files.items() if m.isfile()]
    links = {n: m.linkname for n, m in layer_files.items() if m.issym()}
    # TAR_A is shared by both images at the bottom: one v1 directory. The empty tar sits
    # in two directories of image one: the file once, a relative link to it from the other.
    contents = sorted(tar_read(data, n) for n in regular)
    assert contents == sorted([TAR_A, empty, TAR_B, TAR_C])
    assert len(links) == 1
    # The manifest lists the images sorted by ID; a fresh store loads them back.
    manifest = json.loads(tar_read(data, "manifest.json"))
    assert [m["Config"] for m in manifest] == sorted(f"{sha(c)[7:]}.json" for c in (c1, c2))
    # The file is in the directory saved first: image one's saved bottom-up.
    (layers_one,) = [m["Layers"] for m in manifest if m["Config"] == f"{sha(c1)[7:]}.json"]
    assert links == {layers_one[3]: f"../{layers_one[1]}"}
    other = Store(tmp_path / "other")
    loaded = load(other, write_tar_bytes(tmp_path / "saved.tar", data))
    assert sorted(str(i.id) for i in loaded) == sorted([sha(c1), sha(c2)])
    assert diff_ids_of(other, sha(c1)) == diff_ids_of(store, sha(c1))
    assert other.fsck() == []


def test_a_layer_shared_by_images_is_in_the_first_in_manifest_order(
    store: Store, tmp_path: Path
) -> None:
    """As Docker saves the images one after the other: the parent's top layer is also the
    child's third, in two directories (their v1 JSON differs); the image first in
    manifest order holds the file, and its time is on the directories both share."""
    parent, cp = classic([TAR_A, TAR_B], tags=["p:1"], created="2022-01-01T00:00:00Z")
    child, cc = classic([TAR_A, TAR_B, TAR_C], tags=["c:1"], created="2023-01-01T00:00:00Z")
    load_built(store, tmp_path, parent)
    load_built(store, tmp_path, child)
    data = save(store, ["p:1", "c:1"])
    entries = tar_members(data)
    manifest = json.loads(tar_read(data, "manifest.json"))
    first, second = manifest
    times = {sha(cp)[7:]: 1_640_995_200, sha(cc)[7:]: 1_672_531_200}
    first_time = times[first["Config"].removesuffix(".json")]
    second_time = times[second["Config"].removesuffix(".json")]
    holder, linker = (
        layers[1].removesuffix("/layer.tar") for layers in (first["Layers"], second["Layers"])
    )
    assert entries[f"{holder}/layer.tar"].isfile()
    assert entries[f"{linker}/layer.tar"].linkname == f"../{holder}/layer.tar"
    # The directory both share (TAR_A's) takes the time of the first; the others their
    # own image's.
    assert first["Layers"][0] == second["Layers"][0]
    for name in (first["Config"], *(p.removesuffix("/layer.tar") for p in first["Layers"])):
        assert entries[name].mtime == first_time
    for name in (second["Config"], *(p.removesuffix("/layer.tar") for p in second["Layers"][1:])):
        assert entries[name].mtime == second_time


def write_tar_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_save_is_deterministic(store: Store, tmp_path: Path) -> None:
    load(store, corpus("test_bundle.tar"))
    load(store, corpus("whiteout_image.tar"))
    names = ["test_image_1", "test_image_2:latest", "bazel/pkg/v1/mutate:whiteout_image"]
    first = save(store, names)
    assert save(store, names) == first
    assert save(store, list(reversed(names))) == first  # images are sorted by ID
    manifest = json.loads(tar_read(first, "manifest.json"))
    assert [m["Config"] for m in manifest] == sorted(m["Config"] for m in manifest)


def test_save_writes_parent_of_images_saved_together(store: Store, tmp_path: Path) -> None:
    members = legacy_chain()
    loaded = load(store, write_tar(tmp_path / "old.tar", members))
    ids = [str(i.id) for i in loaded]
    data = save(store, ids[:3])
    manifest = {m["Config"]: m for m in json.loads(tar_read(data, "manifest.json"))}
    assert "Parent" not in manifest[f"{ids[0][7:]}.json"]
    assert manifest[f"{ids[1][7:]}.json"]["Parent"] == ids[0]
    assert manifest[f"{ids[2][7:]}.json"]["Parent"] == ids[1]
    other = Store(tmp_path / "other")
    load(other, write_tar_bytes(tmp_path / "saved.tar", data))
    assert other.images.get_parent(other.resolve(ids[2])) == ids[1]
    assert other.images.get_parent(other.resolve(ids[1])) == ids[0]
    # Only the top one: no Parent (its parent is not in the archive).
    alone = json.loads(tar_read(save(store, [ids[2]]), "manifest.json"))
    assert "Parent" not in alone[0]


def test_save_reports_progress(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A])
    load_built(store, tmp_path, members)
    stream = io.StringIO()
    save(store, ["example/app:1"], TerminalProgress(True, stream))
    assert "Saving layer" in stream.getvalue()


def test_save_refuses_an_image_without_layers(store: Store) -> None:
    config = make_config([], history=[])
    with store.transaction():
        image_id = store.images.create(config)
    with pytest.raises(InvalidInput, match="no layers"):
        save(store, [image_id])


def test_save_detects_a_tampered_layer(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A])
    (image,) = load_built(store, tmp_path, members)
    chain = store.images.get(image.id).config.chain_ids[0]
    blob = store.content.path(store.layers.get(chain).blob.digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        save(store, [str(image.id)])


@pytest.mark.parametrize(
    "name",
    [n for n in sorted(CORPUS_IMAGES)],
)
def test_round_trip_corpus(store: Store, tmp_path: Path, name: str) -> None:
    loaded = load(store, corpus(name))
    ids = [str(i.id) for i in loaded]
    names = [t.familiar() for i in loaded for t in i.tags] or ids
    data = save(store, names)
    assert save(store, names) == data
    other = Store(tmp_path / "other")
    again = load(other, write_tar_bytes(tmp_path / "saved.tar", data))
    assert sorted(str(i.id) for i in again) == sorted(ids)
    for image_id in ids:
        assert diff_ids_of(other, image_id) == diff_ids_of(store, image_id)
        assert tags_of(other, image_id) == tags_of(store, image_id)
    # Saved again from the second store: the same bytes.
    assert save(other, names) == data


@pytest.mark.parametrize("kind", sorted(COMPRESS))
def test_round_trip_compressed_layers_come_out_plain(
    store: Store, tmp_path: Path, kind: str
) -> None:
    members, config = docker25([TAR_A, TAR_C], blobs=[COMPRESS[kind](t) for t in (TAR_A, TAR_C)])
    (image,) = load_built(store, tmp_path, members)
    data = save(store, ["example/new:25"])
    legacy = v1.legacy_layers(config)
    assert tar_read(data, f"{legacy[0].v1_id}/layer.tar") == TAR_A
    assert tar_read(data, f"{legacy[1].v1_id}/layer.tar") == TAR_C
    other = Store(tmp_path / "other")
    (again,) = load(other, write_tar_bytes(tmp_path / "saved.tar", data))
    assert again.id == image.id


# -- bad input -------------------------------------------------------------------------------


def bad_manifests() -> list[tuple[str, Any, str]]:
    members, _ = classic([TAR_A])
    (entry,) = manifest_of(members)
    cfg = entry["Config"]
    return [
        ("not a list", {"Config": cfg}, "must be a list"),
        ("entry not an object", ["x"], r"manifest.json\[0\]: must be an object"),
        ("Config missing", [{"Layers": ["layer0/layer.tar"]}], r"\[0\]: field Config is missing"),
        ("Layers missing", [{"Config": cfg}], r"\[0\]: field Layers is missing"),
        ("Layers null", [{"Config": cfg, "Layers": None}], r"field Layers is null"),
        ("Config not a string", [{"Config": 5, "Layers": []}], r"field Config must be"),
        ("Layers not a list", [{"Config": cfg, "Layers": "x"}], r"field Layers must be a list"),
        ("Layer not a string", [{"Config": cfg, "Layers": [1]}], r"field Layers\[0\] must be"),
        ("RepoTags not a list", [{**entry, "RepoTags": "x:1"}], r"field RepoTags must be"),
        ("RepoTag not a string", [{**entry, "RepoTags": [1]}], r"field RepoTags\[0\] must be"),
        ("RepoTag invalid", [{**entry, "RepoTags": ["Bad Name:1"]}], r"RepoTags\[0\].*Bad Name"),
        (
            "RepoTag digest",
            [{**entry, "RepoTags": [f"a@{sha(b'x')}"]}],
            r"RepoTags\[0\].*not a tag",
        ),
        ("Parent not an ID", [{**entry, "Parent": "abc"}], r"field Parent must be an image ID"),
        (
            "config missing",
            [{**entry, "Config": "nope.json"}],
            r"nope.json is missing.*\[0\].Config",
        ),
        (
            "layer missing",
            [{**entry, "Layers": ["nope/layer.tar"]}],
            r"nope/layer.tar is missing.*Layers\[0\]",
        ),
        (
            "layer is a directory",
            [{**entry, "Layers": ["layer0"]}],
            r"layer0 is not a regular file",
        ),
        (
            "layer count",
            [{**entry, "Layers": ["layer0/layer.tar"] * 2}],
            r"lists 2 layers but the config",
        ),
        (
            "layer path with ..",
            [{**entry, "Layers": ["../layer0/layer.tar"]}],
            r"'\.\./layer0/layer.tar'.*'\.\.'",
        ),
        (
            "absolute layer path",
            [{**entry, "Layers": ["/etc/passwd"]}],
            r"'/etc/passwd' has an absolute path",
        ),
        (
            "config is not JSON",
            [{**entry, "Config": "layer0/layer.tar"}],
            r"layer0/layer.tar: not valid JSON",
        ),
    ]


@pytest.mark.parametrize(
    ("doc", "message"), [pytest.param(d, m, id=label) for label, d, m in bad_manifests()]
)
def test_bad_manifest(store: Store, tmp_path: Path, doc: Any, message: str) -> None:
    load(store, corpus("test_image_1.tar"))
    members, _ = classic([TAR_A])
    path = write_tar(tmp_path / "bad.tar", with_manifest(members, doc))
    with unchanged(store), pytest.raises(InvalidInput, match=message) as err:
        load(store, path)
    assert "bad.tar" in str(err.value)
    assert (
        "manifest.json" in str(err.value) or "layer0" in str(err.value) or "nope" in str(err.value)
    )


@pytest.mark.parametrize("content", [b"", b"[{", b"\xff\xfe", b"nul"])
def test_malformed_manifest(store: Store, tmp_path: Path, content: bytes) -> None:
    members, _ = classic([TAR_A])
    path = write_tar(tmp_path / "bad.tar", {**members, "manifest.json": content})
    with (
        unchanged(store),
        pytest.raises(InvalidInput, match=r"bad.tar: manifest.json: not valid JSON"),
    ):
        load(store, path)


def test_truncated_archive(store: Store, tmp_path: Path) -> None:
    data = corpus("whiteout_image.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
    layer = next(m for m in members if m.name.endswith("layer.tar"))
    last = members[-1]
    cuts = {
        "in a layer": layer.offset_data + layer.size // 2,
        "in the first header": 100,
        "in a later header": last.offset + 100,
        "at a member boundary": last.offset,
        "in the end marker": last.offset_data + 512,
    }
    for where, cut in cuts.items():
        path = write_tar_bytes(tmp_path / "cut.tar", data[:cut])
        with unchanged(store), pytest.raises(InvalidInput) as err:
            load(store, path)
        assert "cut.tar" in str(err.value), where
        assert "truncated" in str(err.value) or "not a tar" in str(err.value), where


def test_truncated_zstd_archive(store: Store, tmp_path: Path) -> None:
    # Cut inside the checksum: every byte of the tar decodes, and zstandard's reader says
    # nothing. Following the frames does.
    packed = zstandard.ZstdCompressor(write_checksum=True).compress(
        corpus("test_image_1.tar").read_bytes()
    )
    path = write_tar_bytes(tmp_path / "cut.tar.zst", packed[:-2])
    with unchanged(store), pytest.raises(InvalidInput, match=r"cut.tar.zst: truncated zstd"):
        load(store, path)


def test_truncated_gzip_archive(store: Store, tmp_path: Path) -> None:
    packed = gzip.compress(corpus("test_image_1.tar").read_bytes())
    path = write_tar_bytes(tmp_path / "cut.tar.gz", packed[: len(packed) // 2])
    with unchanged(store), pytest.raises(InvalidInput, match=r"cut.tar.gz"):
        load(store, path)


def test_diff_id_that_does_not_match(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A, TAR_B])
    members["layer1/layer.tar"] = TAR_C  # the config promises TAR_B
    path = write_tar(tmp_path / "bad.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch) as err:
        load(store, path)
    msg = str(err.value)
    assert "bad.tar: layer1/layer.tar" in msg and sha(TAR_B) in msg and sha(TAR_C) in msg


def _spy_on_staging(
    monkeypatch: pytest.MonkeyPatch,
    waits_for: dict[str, str] | None = None,
    waits_for_start: dict[str, str] | None = None,
    waits_for_worker: dict[str, str] | None = None,
) -> list[str]:
    """The layers add_images stages, in the order it starts them (the real staging
    runs). A layer named as a key of ``waits_for`` starts only once the layer named as
    its value has finished staging (failed or not); of ``waits_for_start``, once that
    layer has started; of ``waits_for_worker``, once the thread that staged that layer
    has ended (after a failure: once the pool knows of it)."""
    import threading

    import ocistore.store.ingest

    waits_for = waits_for or {}
    waits_for_start = waits_for_start or {}
    waits_for_worker = waits_for_worker or {}
    started: list[str] = []
    ended = {name: threading.Event() for name in waits_for.values()}
    begun = {
        name: threading.Event() for name in [*waits_for_start.values(), *waits_for_worker.values()]
    }
    worker: dict[str, threading.Thread] = {}
    real = ocistore.store.ingest.stage_layer

    def spy(stream: Any, content: Any, what: str = "layer", **kwargs: Any) -> Any:
        name = what.rsplit(": ", 1)[-1]
        started.append(name)
        if name in begun:
            worker[name] = threading.current_thread()
            begun[name].set()
        if name in waits_for:
            assert ended[waits_for[name]].wait(30)
        if name in waits_for_start:
            assert begun[waits_for_start[name]].wait(30)
        if name in waits_for_worker:
            other = waits_for_worker[name]
            assert begun[other].wait(30)
            worker[other].join(30)
            assert not worker[other].is_alive()
        try:
            return real(stream, content, what=what, **kwargs)
        finally:
            if name in ended:
                ended[name].set()

    monkeypatch.setattr(ocistore.store.ingest, "stage_layer", spy)
    return started


SMALL = layer_tar({"s": b"s" * 10})
MEDIUM = layer_tar({"m": b"m" * 20_000})
LARGE = layer_tar({"l": b"l" * 90_000})


def test_largest_layer_is_staged_first(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Largest first, so a large layer is never left to run alone at the end.
    started = _spy_on_staging(monkeypatch)
    path = write_tar(tmp_path / "img.tar", classic([SMALL, LARGE, MEDIUM])[0])
    load(store, path, jobs=1)
    assert started == ["layer1/layer.tar", "layer2/layer.tar", "layer0/layer.tar"]
    assert diff_ids_of(store, "example/app:1") == [sha(SMALL), sha(LARGE), sha(MEDIUM)]


def test_no_layer_is_started_after_one_failed(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _spy_on_staging(monkeypatch)
    members, _ = classic([SMALL, LARGE, MEDIUM])
    members["layer1/layer.tar"] = layer_tar({"l": b"L" * 90_000})  # not what the config says
    path = write_tar(tmp_path / "bad.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch, match=r"layer1/layer.tar"):
        load(store, path, jobs=1)
    assert started == ["layer1/layer.tar"]
    assert os.listdir(store.tmpdir) == []


def test_with_several_workers_the_first_failure_in_order_is_reported(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The largest bad layer fails last, after the smallest: its error is still the one.
    _spy_on_staging(monkeypatch, {"layer1/layer.tar": "layer0/layer.tar"})
    members, _ = classic([SMALL, LARGE, MEDIUM])
    members["layer0/layer.tar"] = layer_tar({"s": b"S" * 10})
    members["layer1/layer.tar"] = layer_tar({"l": b"L" * 90_000})
    path = write_tar(tmp_path / "bad.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch, match=r"layer1/layer.tar"):
        load(store, path, jobs=3)
    assert os.listdir(store.tmpdir) == []


def test_with_several_workers_no_layer_is_started_after_one_failed(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers: the largest layer fails while the second is staged; the worker that
    # staged the second must not go on to the third. The order is forced, whatever the
    # machine's load: the first fails only once the second has started, and the second
    # goes on only once the worker of the first has ended (the failure is known then).
    started = _spy_on_staging(
        monkeypatch,
        waits_for_start={"layer1/layer.tar": "layer2/layer.tar"},
        waits_for_worker={"layer2/layer.tar": "layer1/layer.tar"},
    )
    members, _ = classic([SMALL, LARGE, MEDIUM])
    members["layer1/layer.tar"] = layer_tar({"l": b"L" * 90_000})
    path = write_tar(tmp_path / "bad.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch, match=r"layer1/layer.tar"):
        load(store, path, jobs=2)
    assert sorted(started) == ["layer1/layer.tar", "layer2/layer.tar"]
    assert os.listdir(store.tmpdir) == []


def test_two_images_that_share_a_layer_file_must_agree_on_its_diff_id(
    store: Store, tmp_path: Path
) -> None:
    """The bytes are staged once; each image's config is still checked against them."""
    good = make_config([sha(TAR_A)], comment="good")
    bad = make_config([sha(TAR_B)], comment="bad")
    members: dict[str, Member] = {
        "good.json": good,
        "bad.json": bad,
        "shared/layer.tar": TAR_A,
        "manifest.json": json.dumps(
            [
                {"Config": "good.json", "RepoTags": ["a:1"], "Layers": ["shared/layer.tar"]},
                {"Config": "bad.json", "RepoTags": ["b:1"], "Layers": ["shared/layer.tar"]},
            ]
        ).encode(),
    }
    path = write_tar(tmp_path / "shared.tar", members)
    with unchanged(store), pytest.raises(DigestMismatch) as err:
        load(store, path)
    assert "shared.tar: shared/layer.tar: diff ID" in str(err.value)
    assert sha(TAR_B) in str(err.value) and sha(TAR_A) in str(err.value)


def test_unknown_compression(store: Store, tmp_path: Path) -> None:
    members, _ = classic([TAR_A], blobs=[bz2.compress(TAR_A)])
    path = write_tar(tmp_path / "bad.tar", members)
    with (
        unchanged(store),
        pytest.raises(
            InvalidInput, match=r"bad.tar: layer0/layer.tar: unsupported compression bzip2"
        ),
    ):
        load(store, path)


def test_layer_that_is_not_a_tar(store: Store, tmp_path: Path) -> None:
    junk = b"this is not a tar archive at all" * 40
    members, _ = classic([junk])
    path = write_tar(tmp_path / "bad.tar", members)
    with (
        unchanged(store),
        pytest.raises(InvalidInput, match=r"bad.tar: layer0/layer.tar: not a tar"),
    ):
        load(store, path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil", r"'\.\./evil' climbs out"),
        ("/abs/evil", r"'/abs/evil' has an absolute path"),
        ("a/../../evil", r"climbs out"),
    ],
)
def test_archive_entry_names_that_escape(
    store: Store, tmp_path: Path, name: str, message: str
) -> None:
    members, _ = classic([TAR_A])
    path = write_tar(tmp_path / "bad.tar", {**members, name: b"x"})
    with unchanged(store), pytest.raises(InvalidInput, match=message) as err:
        load(store, path)
    assert "bad.tar" in str(err.value)


@pytest.mark.parametrize(
    ("where", "link", "message"),
    [
        ("manifest.json", Sym("/etc/passwd"), r"manifest.json is a symlink out of the archive"),
        ("manifest.json", Sym("../../../etc/passwd"), r"manifest.json is a symlink out"),
        ("layer0/layer.tar", Sym("../../etc/passwd"), r"layer0/layer.tar is a symlink out"),
        ("layer0/layer.tar", Sym("/etc/passwd"), r"layer0/layer.tar is a symlink out"),
        ("layer0/layer.tar", Sym("."), r"is not a regular file"),
        ("layer0/layer.tar", Sym("loop"), r"too many levels of symlinks|missing"),
        ("layer0/layer.tar", Hard("nothere"), r"hard link layer0/layer.tar points at missing"),
    ],
)
def test_links_where_a_file_is_expected(
    store: Store, tmp_path: Path, where: str, link: Member, message: str
) -> None:
    members, _ = classic([TAR_A])
    members = {k: v for k, v in members.items() if k != where}
    members[where] = link
    if link == Sym("loop"):
        members["layer0/loop"] = Sym("layer.tar")
    path = write_tar(tmp_path / "bad.tar", members)
    with unchanged(store), pytest.raises(InvalidInput, match=message) as err:
        load(store, path)
    assert "bad.tar" in str(err.value)


def test_symlink_to_a_file_inside_is_followed(store: Store, tmp_path: Path) -> None:
    members, config = classic([TAR_A])
    members["real.tar"] = members.pop("layer0/layer.tar")
    members["layer0/layer.tar"] = Sym("../real.tar")
    (image,) = load(store, write_tar(tmp_path / "ok.tar", members))
    assert image.id == sha(config)


def test_failure_in_a_later_image_leaves_no_earlier_one(store: Store, tmp_path: Path) -> None:
    good, _ = classic([TAR_A], tags=["good:1"])
    bad, _ = classic([TAR_B], tags=["bad:1"])
    (g,) = manifest_of(good)
    (b,) = manifest_of(bad)
    b["Layers"] = ["other/layer.tar"]
    members = {**good, **{k: v for k, v in bad.items() if k.endswith(".json")}}
    members["manifest.json"] = good["manifest.json"]
    members["other/layer.tar"] = TAR_C  # the config promises TAR_B
    path = write_tar(tmp_path / "bad.tar", with_manifest(members, [g, b]))
    with unchanged(store), pytest.raises(DigestMismatch, match=r"other/layer\.tar"):
        load(store, path)


def test_directory_archive(store: Store, tmp_path: Path) -> None:
    members, config = classic([TAR_A, TAR_B])
    tar = write_tar(tmp_path / "a.tar", members)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    with tarfile.open(tar) as t:
        t.extractall(unpacked, filter="data")
    (image,) = load(store, unpacked)
    assert image.id == sha(config)


def test_detection(tmp_path: Path, store: Store) -> None:
    def detect(members: dict[str, Member]) -> bool:
        archive = open_archive(write_tar(tmp_path / "d.tar", members), store.spool)
        try:
            return is_docker_archive(archive)
        finally:
            archive.close()

    assert detect({"manifest.json": b"[]"})
    assert detect({"manifest.json": b"[]", "index.json": b"{}", "oci-layout": b"{}"})
    assert detect({"repositories": b"{}"})
    assert detect({f"{ID1}/json": b"{}"})
    assert not detect({"index.json": b"{}", "oci-layout": b"{}", f"{ID1}/json": b"{}"})
    assert not detect({"hello.txt": b"hi"})


# -- peers: skopeo and umoci -----------------------------------------------------------------


def oci_config_digest(layout: Path, tag: str) -> tuple[str, list[str]]:
    """The config digest and diff IDs of a tagged image of an OCI layout."""
    index = json.loads((layout / "index.json").read_bytes())
    (desc,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    digest = manifest["config"]["digest"]
    config = json.loads((layout / "blobs" / "sha256" / digest[7:]).read_bytes())
    return digest, config["rootfs"]["diff_ids"]


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout built with umoci: several layers of real files, hardlinks, symlinks,
    a deleted file (a whiteout) and a replaced directory."""
    import subprocess

    from conftest import require_tool

    umoci_bin = require_tool("umoci")
    base = tmp_path_factory.mktemp("umoci")
    layout = base / "layout"

    def run(*args: str | Path) -> None:
        subprocess.run([umoci_bin, *map(str, args)], check=True, capture_output=True)

    run("init", "--layout", layout)
    run("new", "--image", f"{layout}:t")
    bundle = base / "bundle"

    def step(change: Any) -> None:
        if bundle.exists():
            shutil.rmtree(bundle)
        run("unpack", "--rootless", "--image", f"{layout}:t", bundle)
        change(bundle / "rootfs")
        run("repack", "--image", f"{layout}:t", bundle)

    def first(root: Path) -> None:
        (root / "etc").mkdir()
        for f in ("/etc/os-release", "/etc/passwd", "/etc/services"):
            if os.path.exists(f):
                shutil.copy(f, root / "etc" / Path(f).name)
        (root / "bin").mkdir()
        shutil.copy(shutil.which("umoci") or "/bin/sh", root / "bin" / "tool")
        (root / "data").mkdir()
        (root / "data" / "hello").write_text("hello\n")
        (root / "data" / "gone").write_text("to be deleted\n")
        (root / "data" / "dir").mkdir()
        (root / "data" / "dir" / "inner").write_text("inner\n")
        os.link(root / "data" / "hello", root / "data" / "hardlink")
        os.symlink("hello", root / "data" / "symlink")

    def second(root: Path) -> None:
        (root / "data" / "gone").unlink()
        (root / "data" / "two").write_text("two\n")
        os.symlink("/etc/os-release", root / "data" / "abs-link")

    def third(root: Path) -> None:
        shutil.rmtree(root / "data" / "dir")
        (root / "data" / "dir").mkdir()
        (root / "data" / "dir" / "new").write_text("new\n")
        (root / "data" / "hello").unlink()  # a new file: the hard link keeps the old one
        (root / "data" / "hello").write_text("hello again\n")

    for change in (first, second, third):
        step(change)
    return layout


def test_load_what_skopeo_writes(
    store: Store, tmp_path: Path, skopeo: Runner, umoci_layout: Path
) -> None:
    digest, diff_ids = oci_config_digest(umoci_layout, "t")
    assert len(diff_ids) == 3
    out = tmp_path / "skopeo.tar"
    skopeo("copy", f"oci:{umoci_layout}:t", f"docker-archive:{out}:example/umoci:v1")
    (image,) = load(store, out)
    assert image.id == digest
    assert diff_ids_of(store, image.id) == diff_ids
    assert tags_of(store, image.id) == ["example/umoci:v1"]
    inspected = json.loads(skopeo("inspect", f"docker-archive:{out}").stdout)
    assert inspected["Layers"] == diff_ids


def test_skopeo_reads_what_ocistore_saves(
    store: Store, tmp_path: Path, skopeo: Runner, umoci: Runner, umoci_layout: Path
) -> None:
    digest, diff_ids = oci_config_digest(umoci_layout, "t")
    src = tmp_path / "skopeo.tar"
    skopeo("copy", f"oci:{umoci_layout}:t", f"docker-archive:{src}:example/umoci:v1")
    load(store, src)
    saved = tmp_path / "saved.tar"
    saved.write_bytes(save(store, ["example/umoci:v1"]))

    inspected = json.loads(skopeo("inspect", f"docker-archive:{saved}").stdout)
    assert inspected["Layers"] == diff_ids
    assert inspected["RepoTags"] == [] or "example/umoci" in json.dumps(inspected)
    raw = json.loads(skopeo("inspect", "--raw", f"docker-archive:{saved}").stdout)
    assert raw["config"]["digest"] == digest

    d = tmp_path / "dir"
    skopeo("copy", f"docker-archive:{saved}", f"dir:{d}")
    manifest = json.loads((d / "manifest.json").read_bytes())
    assert manifest["config"]["digest"] == digest
    assert sha((d / digest[7:]).read_bytes()) == digest

    oci = tmp_path / "oci"
    skopeo("copy", f"docker-archive:{saved}", f"oci:{oci}:back")
    # skopeo re-encodes the config when it converts to OCI: only the layers must agree.
    assert oci_config_digest(oci, "back")[1] == diff_ids
    bundle = tmp_path / "bundle"
    umoci("unpack", "--rootless", "--image", f"{oci}:back", bundle)
    root = bundle / "rootfs" / "data"
    assert (root / "hello").read_text() == "hello again\n"
    assert (root / "hardlink").read_text() == "hello\n"
    assert os.readlink(root / "symlink") == "hello"
    assert os.readlink(root / "abs-link") == "/etc/os-release"
    assert not (root / "gone").exists()
    assert sorted(p.name for p in (root / "dir").iterdir()) == ["new"]
    assert (bundle / "rootfs" / "bin" / "tool").stat().st_size > 0


def test_skopeo_reads_multi_image_and_linked_layers(
    store: Store, tmp_path: Path, skopeo: Runner
) -> None:
    empty = b"\x00" * 1024
    one, c1 = classic([TAR_A, empty, TAR_B, empty], tags=["one:1"])
    two, c2 = classic([TAR_A, TAR_C], tags=["two:1"], created="2022-02-02T00:00:00Z")
    load_built(store, tmp_path, one)
    load_built(store, tmp_path, two)
    saved = tmp_path / "saved.tar"
    saved.write_bytes(save(store, ["one:1", "two:1"]))
    for config, tarname in ((c1, "one:1"), (c2, "two:1")):
        ref = f"docker-archive:{saved}:{tarname}"
        raw = json.loads(skopeo("inspect", "--raw", ref).stdout)
        assert raw["config"]["digest"] == sha(config)
        d = tmp_path / f"dir-{tarname.replace(':', '-')}"
        skopeo("copy", ref, f"dir:{d}")
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        layers = json.loads((d / "manifest.json").read_bytes())["layers"]
        assert [layer["digest"] for layer in layers] == diff_ids


def test_round_trip_through_skopeo(store: Store, tmp_path: Path, skopeo: Runner) -> None:
    load(store, corpus("whiteout_image.tar"))
    first = tmp_path / "first.tar"
    first.write_bytes(save(store, ["bazel/pkg/v1/mutate:whiteout_image"]))
    via = tmp_path / "via-skopeo.tar"
    skopeo(
        "copy",
        f"docker-archive:{first}",
        f"docker-archive:{via}:bazel/pkg/v1/mutate:whiteout_image",
    )
    other = Store(tmp_path / "other")
    (image,) = load(other, via)
    assert str(image.id) == CORPUS_IMAGES["whiteout_image.tar"][0][0]
    assert save(other, ["bazel/pkg/v1/mutate:whiteout_image"]) == first.read_bytes()
