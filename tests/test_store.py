"""The store's user verbs, with Docker's ``rmi`` rules and messages."""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from util import make_tar, snapshot

import ocistore
from ocistore.errors import Conflict, CorruptStore, InvalidInput, NotFound
from ocistore.spec.digest import Digest, ImageID, digest_bytes
from ocistore.spec.platform import host_platform
from ocistore.spec.reference import parse
from ocistore.store import Store


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


TAR_A = make_tar({"a": b"a" * 100})
TAR_B = make_tar({"b": b"b" * 200})
TAR_C = make_tar({"c": b"c" * 300})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def imp(store: Store, tar: bytes, ref: str | None = None) -> ImageID:
    return store.import_tarball(io.BytesIO(tar), ref)


def tags(store: Store) -> dict[str, str]:
    return {r.familiar(): i for r, i in store.references.all().items()}


def events(store: Store, name: str, **kw: bool) -> list[str]:
    return [str(e) for e in store.remove(name, **kw)]


def child_of(store: Store, parent: ImageID, tar: bytes, ref: str | None = None) -> ImageID:
    """An image on top of ``parent``'s layers, with ``parent`` as its parent."""
    cfg = json.loads(store.images.get(parent).config.raw)
    pchain = store.images.record(parent).chains[-1]
    layer = store.register_layer(io.BytesIO(tar), pchain)
    cfg["rootfs"]["diff_ids"].append(layer.diff_id)
    cfg["history"].append({"created_by": "child"})
    image_id = store.images.create(json.dumps(cfg).encode())
    store.images.set_parent(image_id, parent)
    if ref:
        store.tag(image_id, ref)
    return image_id


# -- import ------------------------------------------------------------------------------

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gzip": gzip.compress,
    "zstd": zstd,
}


@pytest.mark.parametrize("kind", COMPRESS)
def test_import(store: Store, kind: str) -> None:
    image_id = store.import_tarball(io.BytesIO(COMPRESS[kind](TAR_A)), "app:v1", source="x.tar")
    assert Digest.is_valid(image_id)
    image = store.images.get(image_id)
    assert image.config.diff_ids == (digest_bytes(TAR_A),)
    assert image.config.os == "linux"
    assert image.config.architecture == host_platform().architecture
    assert image.config.history[0]["comment"] == "Imported from -"  # as Docker writes
    assert image.record.size == 100  # Docker's size: what the header says "a" holds
    assert tags(store) == {"app:v1": image_id}
    assert store.resolve("app:v1") == image_id
    assert list(store.tmpdir.iterdir()) == []
    assert store.fsck() == []


def test_import_untagged_and_same_layer_twice(store: Store) -> None:
    one = imp(store, TAR_A)
    two = imp(store, gzip.compress(TAR_A))
    assert tags(store) == {}
    assert {r.id for r in store.images.list()} == {one, two} or one == two
    assert len(store.layers.walk()) == 1  # the layer is shared
    assert len(list(store.content.walk())) == 1


def test_import_with_a_bad_reference_changes_nothing(store: Store) -> None:
    imp(store, TAR_B, "keep")
    before = snapshot(store.root)
    with pytest.raises(InvalidInput):
        imp(store, TAR_A, "Bad:Name")
    with pytest.raises(InvalidInput):
        imp(store, TAR_A, "sha256")
    with pytest.raises(InvalidInput):
        imp(store, b"not a tar at all" * 64, "ok:1")
    after = snapshot(store.root)
    assert {k: v for k, v in after.items() if k != "lock"} == {
        k: v for k, v in before.items() if k != "lock"
    }


# -- tag / resolve -----------------------------------------------------------------------


def test_tag_moves(store: Store) -> None:
    one = imp(store, TAR_A, "app:v1")
    two = imp(store, TAR_B)
    ref = store.tag(two, "app:v1")
    assert ref.familiar() == "app:v1"
    assert tags(store) == {"app:v1": two}
    store.tag("app:v1", "myregistry:5000/team/app:prod")
    assert tags(store)["myregistry:5000/team/app:prod"] == two
    store.tag(one, "app")  # a name alone means :latest
    assert tags(store)["app:latest"] == one
    with pytest.raises(NotFound):
        store.tag("nosuch:tag", "x:y")
    with pytest.raises(InvalidInput):
        store.tag(one, "UPPER:case")
    with pytest.raises(InvalidInput):
        store.tag(one, f"app@sha256:{'a' * 64}")


def test_resolve(store: Store) -> None:
    one = imp(store, TAR_A, "busybox")
    two = imp(store, TAR_B, "docker.io/library/app:v2")
    assert store.resolve("busybox") == one
    assert store.resolve("busybox:latest") == one
    assert store.resolve("docker.io/library/busybox:latest") == one
    assert store.resolve("app:v2") == two
    assert store.resolve(one) == one
    assert store.resolve(one.hex) == one
    assert store.resolve(one.hex[:12]) == one
    assert store.resolve(f"sha256:{one.hex[:8]}") == one
    with pytest.raises(NotFound, match="No such image: app"):
        store.resolve("app")
    with pytest.raises(NotFound):
        store.resolve("nosuch")
    with pytest.raises(InvalidInput):
        store.resolve("")
    with pytest.raises(InvalidInput):
        store.resolve("Not A Reference")


def test_resolve_prefers_a_reference_over_an_id_prefix(store: Store) -> None:
    one = imp(store, TAR_A)
    two = imp(store, TAR_B)
    prefix = two.hex[:6]
    store.tag(one, prefix)  # a repository whose name is also two's ID prefix
    assert store.resolve(prefix) == one
    assert store.resolve(f"sha256:{prefix}") == two


def test_resolve_digest_reference(store: Store) -> None:
    image_id = imp(store, TAR_A)
    manifest = digest_bytes(b"manifest")
    store.references.add_digest(parse(f"app@{manifest}"), image_id)
    assert store.resolve(f"app@{manifest}") == image_id


# -- rmi ---------------------------------------------------------------------------------


def test_rmi_tag_with_other_tags_only_untags(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    store.tag(image_id, "app:v2")
    store.tag(image_id, "other:x")
    assert events(store, "app:v1") == ["Untagged: app:v1"]
    assert store.images.exists(image_id)
    assert tags(store) == {"app:v2": image_id, "other:x": image_id}


def test_rmi_last_tag_deletes_image_and_layers(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    layer = store.layers.walk()[0]
    assert events(store, "app:v1") == [
        "Untagged: app:v1",
        f"Deleted: {image_id}",
        f"Deleted: {layer}",
    ]
    assert store.images.list() == []
    assert store.layers.walk() == []
    assert list(store.content.walk()) == []
    assert tags(store) == {}
    with pytest.raises(NotFound):
        store.remove("app:v1")


def test_rmi_keeps_shared_layers(store: Store) -> None:
    one = imp(store, TAR_A, "one")
    two = imp(store, TAR_A, "two")
    if one == two:  # same second: same config, same image
        pytest.skip("both imports made the same image")
    assert events(store, "one") == ["Untagged: one:latest", f"Deleted: {one}"]
    assert len(store.layers.walk()) == 1
    assert store.fsck() == []


def test_rmi_by_id_in_two_repositories_needs_force(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    store.tag(image_id, "other:v1")
    before = snapshot(store.root)
    with pytest.raises(Conflict, match=r"must be forced.*multiple repositories"):
        store.remove(image_id.hex[:12])
    assert tags(store) == {"app:v1": image_id, "other:v1": image_id}
    assert snapshot(store.root) == before
    out = events(store, image_id.hex[:12], force=True)
    assert out[:2] == ["Untagged: app:v1", "Untagged: other:v1"]
    assert out[2] == f"Deleted: {image_id}"
    assert tags(store) == {}
    assert store.images.list() == []


def test_rmi_by_id_with_two_tags_in_one_repository_must_be_forced(store: Store) -> None:
    """Docker's isSingleReference: more than one tag is a conflict by ID, even when both
    tags are of one repository; one tag and digest references of its repository is not."""
    image_id = imp(store, TAR_A, "app:v1")
    store.tag(image_id, "app:v2")
    with pytest.raises(Conflict, match=r"must be forced.*referenced in multiple repositories"):
        store.remove(image_id)
    assert store.images.exists(image_id)
    out = [str(e) for e in store.remove(image_id, force=True)]
    assert out[:3] == ["Untagged: app:v1", "Untagged: app:v2", f"Deleted: {image_id}"]
    assert store.images.list() == []
    image_id = imp(store, TAR_A, "app:v1")
    store.references.add_digest(parse(f"app@{digest_bytes(b'm')}"), image_id)
    out = [str(e) for e in store.remove(image_id)]
    assert out[0] == "Untagged: app:v1" and f"Deleted: {image_id}" in out


def test_rmi_image_with_children_is_refused_even_forced(store: Store) -> None:
    parent = imp(store, TAR_A, "base:1")
    store.tag(parent, "other:1")
    child = child_of(store, parent, TAR_B, "child:1")
    before = snapshot(store.root)
    for force in (False, True):
        with pytest.raises(Conflict, match=r"cannot be forced.*dependent child images"):
            store.remove(parent, force=force)
        with pytest.raises(Conflict):
            store.remove(parent.hex[:10], force=force)
    # Refused before anything changed: the tags are all still there.
    assert snapshot(store.root) == before
    assert tags(store) == {"base:1": parent, "other:1": parent, "child:1": child}


def test_rmi_last_tag_of_a_parent_only_untags(store: Store) -> None:
    parent = imp(store, TAR_A, "base:1")
    child = child_of(store, parent, TAR_B, "child:1")
    assert events(store, "base:1") == ["Untagged: base:1"]
    assert store.images.exists(parent)
    assert store.images.get_parent(child) == parent
    # An untagged intermediate image is hidden from the default listing.
    assert [rec.id for rec, _ in store.list_images()] == [child]
    assert {rec.id for rec, _ in store.list_images(all_images=True)} == {parent, child}


def test_rmi_prunes_untagged_parents(store: Store) -> None:
    grand = imp(store, TAR_A)
    parent = child_of(store, grand, TAR_B)
    child = child_of(store, parent, TAR_C, "child:1")
    out = events(store, "child:1")
    assert out[:2] == ["Untagged: child:1", f"Deleted: {child}"]
    assert f"Deleted: {parent}" in out
    assert f"Deleted: {grand}" in out
    assert out.index(f"Deleted: {parent}") < out.index(f"Deleted: {grand}")
    assert store.images.list() == []
    assert store.layers.walk() == []
    assert list(store.content.walk()) == []


def test_rmi_no_prune_keeps_parents(store: Store) -> None:
    parent = imp(store, TAR_A)
    child = child_of(store, parent, TAR_B, "child:1")
    out = events(store, "child:1", prune=False)
    assert out[:2] == ["Untagged: child:1", f"Deleted: {child}"]
    assert f"Deleted: {parent}" not in out
    assert [r.id for r in store.images.list()] == [parent]
    assert store.fsck() == []


def test_rmi_does_not_prune_tagged_parents(store: Store) -> None:
    parent = imp(store, TAR_A, "base:1")
    child_of(store, parent, TAR_B, "child:1")
    out = events(store, "child:1")
    assert f"Deleted: {parent}" not in out
    assert store.images.exists(parent)


def test_rmi_tag_drops_digest_references_of_that_repository(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    manifest = digest_bytes(b"manifest")
    store.references.add_digest(parse(f"app@{manifest}"), image_id)
    out = events(store, "app:v1")
    assert out[:2] == ["Untagged: app:v1", f"Untagged: app@{manifest}"]
    assert out[2] == f"Deleted: {image_id}"


def test_rmi_unknown(store: Store) -> None:
    with pytest.raises(NotFound):
        store.remove("nosuch:tag")
    with pytest.raises(NotFound):
        store.remove("sha256:abcdef")


# -- views -------------------------------------------------------------------------------


def test_inspect_and_history(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    manifest = digest_bytes(b"manifest")
    store.references.add_digest(parse(f"app@{manifest}"), image_id)
    details = store.inspect("app:v1")
    assert details.image.id == image_id
    assert details.repo_tags == ["app:v1"]
    assert details.repo_digests == [f"app@{manifest}"]
    assert details.image.record.parent is None
    assert details.last_tag_time.startswith("20")  # imported with a name: tagged now
    data = ocistore.inspect(store, "app:v1")
    assert data["Id"] == image_id
    assert data["RepoTags"] == ["app:v1"]
    assert data["RepoDigests"] == [f"app@{manifest}"]
    assert data["Parent"] == ""
    assert data["Os"] == "linux"
    assert data["Size"] == data["VirtualSize"] == details.size
    assert data["RootFS"] == {"Type": "layers", "Layers": [digest_bytes(TAR_A)]}
    assert data["Metadata"] == {"LastTagTime": details.last_tag_time}
    store.tag("app:v1", "app:v2")
    assert store.inspect("app:v1").last_tag_time.startswith("20")
    rows = store.history(image_id.hex[:6])
    assert len(rows) == 1
    assert rows[0].id == image_id
    assert rows[0].tags == ["app:v1", "app:v2"]
    assert rows[0].size == store.layers_of(store.image(image_id))[0].content_size
    assert rows[0].comment == "Imported from -"


def test_history_with_empty_layers_newest_first(store: Store) -> None:
    layer = store.register_layer(io.BytesIO(TAR_A))
    cfg = {
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [
            {"created": "2020-01-01T00:00:00Z", "created_by": "ADD a /"},
            {"created": "2020-01-02T00:00:00Z", "created_by": "CMD sh", "empty_layer": True},
        ],
    }
    image_id = store.images.create(json.dumps(cfg).encode())
    rows = store.history(image_id)
    assert [(r.id, r.created_by, r.size, r.created) for r in rows] == [
        (image_id, "CMD sh", 0, 1577923200),
        (None, "ADD a /", store.layers.get(layer.chain_id).content_size, 1577836800),
    ]


# -- maintenance -------------------------------------------------------------------------


def test_gc_removes_unreferenced_layers_and_blobs(store: Store) -> None:
    kept = imp(store, TAR_A, "keep")
    loose = store.register_layer(io.BytesIO(gzip.compress(TAR_B)))  # no image needs it
    stray = store.content.write(b"a stray manifest")
    old_tmp = store.tmpdir / "old-garbage"
    old_tmp.write_bytes(b"x")
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    new_tmp = store.tmpdir / "in-progress"
    new_tmp.write_bytes(b"x")

    removed = store.gc(grace_seconds=3600)
    assert f"layer {loose.chain_id}" in removed
    assert f"blob {loose.blob.digest}" in removed
    assert f"blob {stray}" in removed
    assert "temporary old-garbage" in removed
    assert len(removed) == 4
    assert not old_tmp.exists() and new_tmp.exists()
    assert store.layers.walk() == list(store.images.record(kept).chains)
    assert store.content.exists(store.layers.get(store.layers.walk()[0]).blob.digest)
    assert store.fsck() == []
    assert store.gc(grace_seconds=3600) == []


def test_gc_removes_what_a_crash_left_of_a_layer_record(store: Store) -> None:
    """A crash inside the removal of a layer record can leave its directory without
    layer.json: gc removes it, and fsck is clean again."""
    imp(store, TAR_A, "keep")
    loose = store.register_layer(io.BytesIO(TAR_B))
    (store.layers.root / "sha256" / loose.chain_id.hex / "layer.json").unlink()
    assert any(loose.chain_id in p for p in Store(store.root).fsck())
    removed = Store(store.root).gc()
    assert f"layer {loose.chain_id}" in removed
    assert Store(store.root).fsck() == []


def test_fsck_checks_the_blobs_an_image_keeps(store: Store) -> None:
    image = imp(store, TAR_A, "keep")
    manifest = store.content.write(b'{"a": "manifest"}')
    store.images.set_blobs(image, [manifest])
    assert store.fsck() == []
    path = store.content.path(manifest)
    os.chmod(path, 0o644)
    path.write_bytes(b'{"a": "changed"}')
    (problem,) = store.fsck()
    assert image in problem and manifest in problem and "digest mismatch" in problem
    path.unlink()
    (problem,) = store.fsck()
    assert image in problem and "not found" in problem


def test_gc_keeps_blobs_an_image_records(store: Store) -> None:
    image_id = imp(store, TAR_A, "keep")
    manifest = store.content.write(b'{"a manifest": true}')
    store.images.set_blobs(image_id, [manifest])
    assert store.gc() == []
    assert store.content.read(manifest) == b'{"a manifest": true}'
    store.remove("keep")
    assert not store.content.exists(manifest)


def test_fsck_reports_a_tampered_blob(store: Store) -> None:
    imp(store, gzip.compress(TAR_A), "app")
    assert store.fsck() == []
    chain = store.layers.walk()[0]
    blob = store.layers.get(chain).blob.digest
    path = store.content.path(blob)
    os.chmod(path, 0o644)
    path.write_bytes(gzip.compress(TAR_B))
    problems = store.fsck()
    assert len(problems) == 1
    assert chain in problems[0]
    assert "digest mismatch" in problems[0]


def test_fsck_reports_dangling_reference(store: Store) -> None:
    imp(store, TAR_A, "app")
    ghost = ImageID(digest_bytes(b"ghost"))
    store.references.add_tag(parse("ghost"), ghost)
    assert store.fsck() == [f"reference ghost:latest points at missing image {ghost}"]


def test_a_damaged_time_of_the_last_tag_is_named_reported_and_repaired(store: Store) -> None:
    image_id = imp(store, TAR_A, "app:v1")
    path = store.root / "imagedb" / "metadata" / "sha256" / image_id.hex / "lastUpdated"
    for damage in (b"\xff\xfe", b"yesterday"):
        path.write_bytes(damage)
        with pytest.raises(CorruptStore, match=r"damaged metadata 'lastUpdated'"):
            store.inspect("app:v1")
        assert any("lastUpdated" in p for p in store.fsck())
        repaired, problems = store.repair()
        assert repaired == [f"image {image_id}: dropped its damaged metadata 'lastUpdated'"]
        assert problems == []
        assert store.inspect("app:v1").last_tag_time == ""  # as never tagged since loaded
