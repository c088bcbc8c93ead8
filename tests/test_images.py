"""The image store: create, get, delete, search, parents, restore and crash recovery."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from util import make_tar

from ocistore.errors import Ambiguous, Conflict, DigestMismatch, InvalidInput, NotFound
from ocistore.spec.digest import Digest, ImageID, chain_id, digest_bytes
from ocistore.store import Store

TAR_A = make_tar({"a": b"a" * 100})
TAR_B = make_tar({"b": b"b" * 200})
TAR_C = make_tar({"c": b"c" * 300})


def config(diff_ids: list[str], **extra: Any) -> bytes:
    doc: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def add_image(store: Store, tars: list[bytes], gz: bool = False, **extra: Any) -> ImageID:
    parent = None
    for t in tars:
        parent = store.register_layer(io.BytesIO(gzip.compress(t) if gz else t), parent).chain_id
    return store.images.create(config([digest_bytes(t) for t in tars], **extra))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def config_file(store: Store, image_id: ImageID) -> Path:
    return store.backend.content_path(image_id)


# -- create ------------------------------------------------------------------------------


def test_create_keeps_exact_bytes_and_is_idempotent(store: Store) -> None:
    store.register_layer(io.BytesIO(TAR_A))
    raw = b'{ "rootfs" : {"diff_ids": ["%s"], "type": "layers"},\n "os": "linux" }' % (
        digest_bytes(TAR_A).encode()
    )
    first = store.images.create(raw)
    assert first == digest_bytes(raw)
    assert store.images.create(raw) == first
    assert [r.id for r in store.images.list()] == [first]
    assert config_file(store, first).read_bytes() == raw
    image = store.images.get(first)
    assert image.config.raw == raw
    assert image.record.chains == (digest_bytes(TAR_A),)
    assert image.record.size == 100  # Docker's size: what the header says "a" holds
    assert image.record.os == "linux"


def test_create_without_layers(store: Store) -> None:
    image_id = store.images.create(config([]))
    rec = store.images.record(image_id)
    assert rec.chains == () and rec.size == 0


def test_create_with_missing_layer_names_the_chain(store: Store) -> None:
    store.register_layer(io.BytesIO(TAR_A))
    diffs = [digest_bytes(TAR_A), digest_bytes(TAR_B)]
    missing = chain_id(diffs)
    assert missing is not None
    with pytest.raises(NotFound, match=missing):
        store.images.create(config(diffs))
    assert store.images.list() == []
    assert not store.backend.content_dir.exists() or not any(store.backend.content_dir.iterdir())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"rootfs"', "not a JSON object"),
        (b'{"os": "linux"}', "field rootfs is missing"),
        (b'{"rootfs": []}', "field rootfs is not an object"),
        (b'{"rootfs": {"type": "snapshots", "diff_ids": []}}', "field rootfs.type"),
        (b'{"rootfs": {"diff_ids": []}}', "field rootfs.type"),
        (b'{"rootfs": {"type": "layers", "diff_ids": "x"}}', "field rootfs.diff_ids"),
        (
            b'{"rootfs": {"type": "layers", "diff_ids": ["sha256:abc"]}}',
            r"field rootfs\.diff_ids\[0\]",
        ),
        (
            b'{"rootfs": {"type": "layers", "diff_ids": ["%s", 5]}}' % digest_bytes(b"x").encode(),
            r"field rootfs\.diff_ids\[1\]",
        ),
        (
            b'{"rootfs": {"type": "layers", "diff_ids": ["%s"]}, '
            b'"history": [{"created_by": "a"}, {"created_by": "b"}]}' % digest_bytes(b"x").encode(),
            "field history has 2 non-empty entries but rootfs.diff_ids has only 1",
        ),
        (b'{"rootfs": {"type": "layers"}, "history": {}}', "field history is not a list"),
        (b'{"rootfs": {"type": "layers"}, "history": [1]}', r"field history\[0\]"),
        (b'{"rootfs": {"type": "layers"}, "created": 5}', "field created"),
        (b'{"rootfs": {"type": "layers"}, "config": []}', "field config"),
    ],
)
def test_invalid_config_names_the_field(store: Store, raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        store.images.create(raw)
    assert store.images.list() == []


def test_history_with_empty_layers_is_fine(store: Store) -> None:
    store.register_layer(io.BytesIO(TAR_A))
    history = [
        {"created_by": "ADD a"},
        {"created_by": "ENV x=1", "empty_layer": True},
        {"created_by": "CMD sh", "empty_layer": True},
    ]
    image_id = store.images.create(config([digest_bytes(TAR_A)], history=history))
    assert store.images.get(image_id).config.history == history


def test_too_many_layers_in_config(store: Store) -> None:
    diffs = [digest_bytes(str(i).encode()) for i in range(126)]
    with pytest.raises(InvalidInput, match="maximum depth"):
        store.images.create(config(diffs))


# -- get / delete ------------------------------------------------------------------------


def test_get_unknown(store: Store) -> None:
    with pytest.raises(NotFound):
        store.images.get(ImageID(digest_bytes(b"nothing")))


def test_delete_releases_only_unshared_layers(store: Store) -> None:
    small = add_image(store, [TAR_A], gz=True, comment="small")
    big = add_image(store, [TAR_A, TAR_B, TAR_C], gz=True, comment="big")
    layer_a = store.layers.get(digest_bytes(TAR_A))  # type: ignore[arg-type]
    chains = chain_ids_of(store, big)
    blobs = {store.layers.get(c).blob.digest for c in chains}
    assert len(set(store.content.walk())) == 3

    released = store.images.delete(big)
    assert [layer.chain_id for layer in released] == [chains[2], chains[1]]  # top first
    assert sorted(store.layers.walk()) == [layer_a.chain_id]
    assert set(store.content.walk()) == {layer_a.blob.digest}
    assert blobs - {layer_a.blob.digest} == {layer.blob.digest for layer in released}
    with pytest.raises(NotFound):
        store.images.get(big)
    assert not config_file(store, big).exists()
    assert store.images.get(small).id == small

    released = store.images.delete(small)
    assert [layer.chain_id for layer in released] == [layer_a.chain_id]
    assert store.layers.walk() == []
    assert list(store.content.walk()) == []
    assert store.images.list() == []
    with pytest.raises(NotFound):
        store.images.delete(small)


def chain_ids_of(store: Store, image_id: ImageID) -> list[Any]:
    return list(store.images.record(image_id).chains)


def test_delete_keeps_layers_another_image_needs(store: Store) -> None:
    one = add_image(store, [TAR_A, TAR_B], comment="one")
    two = add_image(store, [TAR_A, TAR_B], comment="two")
    assert one != two
    assert store.images.delete(one) == []
    assert len(store.layers.walk()) == 2
    assert store.images.get(two).record.size == 100 + 200
    assert len(store.images.delete(two)) == 2


def test_delete_keeps_blobs_another_layer_needs(store: Store) -> None:
    """The same blob can back two chains (the same diff on different parents)."""
    one = add_image(store, [TAR_B], comment="one")
    two = add_image(store, [TAR_A, TAR_B], comment="two")
    blob_b = store.layers.get(digest_bytes(TAR_B)).blob.digest  # type: ignore[arg-type]
    store.images.delete(one)
    assert store.content.exists(blob_b)
    assert store.images.get(two)
    with store.layers.open_tar(store.images.record(two).chains[1]) as f:
        assert f.read() == TAR_B


# -- search ------------------------------------------------------------------------------


def test_search(store: Store) -> None:
    image_id = add_image(store, [TAR_A])
    assert store.images.search(image_id) == image_id
    assert store.images.search(image_id.hex) == image_id
    assert store.images.search(f"sha256:{image_id.hex[:5]}") == image_id
    assert store.images.search(image_id.hex[:3]) == image_id
    with pytest.raises(NotFound):
        store.images.search("sha256:" + "0" * 64 if image_id.hex[0] != "0" else "1" * 64)
    with pytest.raises(InvalidInput):
        store.images.search("xyz!")
    with pytest.raises(InvalidInput):
        store.images.search("")
    with pytest.raises(InvalidInput):
        store.images.search("A" * 5)


def test_search_ambiguous_prefix(store: Store) -> None:
    by_first: dict[str, list[ImageID]] = {}
    i = 0
    while not any(len(v) > 1 for v in by_first.values()):
        image_id = store.images.create(config([], comment=f"c{i}"))
        by_first.setdefault(image_id.hex[0], []).append(image_id)
        i += 1
    first, ids = next((k, v) for k, v in by_first.items() if len(v) > 1)
    with pytest.raises(Ambiguous, match="ambiguous"):
        store.images.search(first)
    with pytest.raises(Ambiguous):
        store.images.search(f"sha256:{first}")
    # A longer prefix tells them apart.
    n = next(n for n in range(2, 65) if ids[0].hex[:n] != ids[1].hex[:n])
    assert store.images.search(ids[0].hex[:n]) == ids[0]


# -- parents -----------------------------------------------------------------------------


def test_parents_and_children(store: Store) -> None:
    base = add_image(store, [TAR_A], comment="base")
    p2 = add_image(store, [TAR_A], comment="p2")
    child = add_image(store, [TAR_A, TAR_B], comment="child")
    assert store.images.get_parent(child) is None
    store.images.set_parent(child, base)
    assert store.images.get_parent(child) == base
    assert store.images.children(base) == [child]
    assert sorted(r.id for r in store.images.list()) == sorted([base, p2, child])

    store.images.set_parent(child, p2)  # re-parenting moves the child
    assert store.images.get_parent(child) == p2
    assert store.images.children(base) == []
    assert store.images.children(p2) == [child]

    fresh = Store(store.root)  # persisted
    assert fresh.images.get_parent(child) == p2
    assert fresh.images.children(p2) == [child]

    with pytest.raises(Conflict, match="cycle"):
        store.images.set_parent(p2, child)
    with pytest.raises(Conflict):
        store.images.set_parent(child, child)
    with pytest.raises(NotFound):
        store.images.set_parent(child, ImageID(digest_bytes(b"x")))
    with pytest.raises(Conflict, match="dependent child images"):
        store.images.delete(p2)
    assert store.images.exists(p2)
    store.images.delete(child)
    assert store.images.children(p2) == []
    store.images.delete(p2)


# -- restoring, tampering, crashes -------------------------------------------------------


def test_replaced_config_is_skipped_on_open(store: Store) -> None:
    """A config written anew (a new file renamed over it, as editors and most tools
    write) has a new inode: the next opener re-reads it, fails to verify it, skips it."""
    good = add_image(store, [TAR_A], comment="good")
    bad = add_image(store, [TAR_B], comment="bad")
    path = config_file(store, bad)
    forged = path.with_name("forged")
    forged.write_bytes(path.read_bytes().replace(b'"bad"', b'"evil!"'))
    os.replace(forged, path)

    # The old instance still verifies on every read.
    with pytest.raises(DigestMismatch, match=bad):
        store.images.get(bad)

    fresh = Store(store.root)
    assert [r.id for r in fresh.images.list()] == [good]
    assert [d for d, _ in fresh.images.skipped] == [bad]
    assert "digest mismatch" in fresh.images.skipped[0][1]
    assert fresh.images.get(good).id == good
    with pytest.raises(NotFound):
        fresh.images.get(bad)
    assert any(bad in p for p in fresh.fsck())


@pytest.mark.parametrize("same_size", [True, False])
def test_config_edited_in_place_is_caught_by_every_read(store: Store, same_size: bool) -> None:
    """Edited in place, the file keeps its inode, so the index still lists the image
    (opening does not stat 10,000 configs); but every read verifies, and so does fsck."""
    image_id = add_image(store, [TAR_A], comment="aaaa")
    path = config_file(store, image_id)
    os.chmod(path, 0o644)
    path.write_bytes(
        path.read_bytes().replace(b'"aaaa"', b'"bbbb"' if same_size else b'"bbbbbbbb"')
    )
    fresh = Store(store.root)
    assert [r.id for r in fresh.images.list()] == [image_id]
    with pytest.raises(DigestMismatch, match=image_id):
        fresh.images.get(image_id)
    with pytest.raises(DigestMismatch, match=image_id):
        fresh.image(image_id)
    with pytest.raises(DigestMismatch, match=image_id):
        fresh.inspect(image_id)
    assert any(image_id in p for p in fresh.fsck())
    # Rebuilding the index (it is only a cache) reads every config, and skips this one.
    (store.backend.root / "index.json").unlink()
    rebuilt = Store(store.root)
    assert rebuilt.images.list() == []
    assert [d for d, _ in rebuilt.images.skipped] == [image_id]


def test_config_with_missing_layer_is_skipped(store: Store) -> None:
    good = add_image(store, [TAR_A], comment="good")
    orphan = add_image(store, [TAR_B], comment="orphan")
    shutil.rmtree(store.layers.root / "sha256" / digest_bytes(TAR_B).hex)
    (store.backend.root / "index.json").unlink()
    fresh = Store(store.root)
    assert [r.id for r in fresh.images.list()] == [good]
    assert [d for d, _ in fresh.images.skipped] == [orphan]


def count_config_reads(store: Store) -> list[ImageID]:
    """Every config the store reads from now on (the backend's verified read)."""
    reads: list[ImageID] = []
    get = store.backend.get

    def counting(digest: Any) -> bytes:
        reads.append(digest)
        return get(digest)

    store.backend.get = counting  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("damage", ["dirty-marker", "no-index"])
def test_a_reader_rebuilds_a_stale_index_once(store: Store, damage: str) -> None:
    """The first reader after a crash (or with the index gone) reads every config and
    writes the index again; neither it nor the next process reads them again."""
    ids = [add_image(store, [TAR_A], comment=str(i)) for i in range(3)]
    index = store.backend.root / "index.json"
    if damage == "dirty-marker":
        (store.backend.root / "index.dirty").write_bytes(b"")
    else:
        index.unlink()
    first = Store(store.root)
    reads = count_config_reads(first)
    for _ in range(3):
        assert sorted(r.id for r in first.images.list()) == sorted(ids)
        first.images.search(ids[0].hex[:12])
    assert sorted(reads) == sorted(ids)  # once each, not once per call
    assert not (store.backend.root / "index.dirty").exists()
    assert len(json.loads(index.read_bytes())["images"]) == 3
    second = Store(store.root)
    reads = count_config_reads(second)
    assert sorted(r.id for r in second.images.list()) == sorted(ids)
    assert reads == []


def test_damaged_metadata_skips_the_image_instead_of_failing(store: Store) -> None:
    good = add_image(store, [TAR_A], comment="good")
    bad = add_image(store, [TAR_B], comment="bad")
    store.images.set_blobs(bad, [digest_bytes(b"a blob")])
    blobs = store.backend._metadata_path(bad, "blobs")
    os.chmod(blobs, 0o644)
    blobs.write_bytes(b"{not json")
    (store.backend.root / "index.json").unlink()
    fresh = Store(store.root)
    assert [r.id for r in fresh.images.list()] == [good]
    assert [d for d, _ in fresh.images.skipped] == [bad]
    assert "damaged metadata" in fresh.images.skipped[0][1]


def test_crash_with_dirty_marker_rebuilds_the_index(store: Store) -> None:
    base = add_image(store, [TAR_A], comment="base")
    child = add_image(store, [TAR_A, TAR_B], comment="child")
    index = store.backend.root / "index.json"
    stale = index.read_bytes()  # before the parent was set
    store.images.set_parent(child, base)
    third = add_image(store, [TAR_C], comment="third")
    gone = add_image(store, [TAR_C], comment="gone")
    store.images.delete(gone)

    # A writer that died mid-way: the marker is left, the index is an old one.
    index.write_bytes(stale)
    (store.backend.root / "index.dirty").write_bytes(b"")

    fresh = Store(store.root)
    assert sorted(r.id for r in fresh.images.list()) == sorted([base, child, third])
    assert fresh.images.get_parent(child) == base
    assert fresh.images.record(child).size == 100 + 200
    assert fresh.images.skipped == []
    # The next writer clears the marker and writes a correct index.
    fresh.images.create(config([], comment="next"))
    assert not (store.backend.root / "index.dirty").exists()
    doc = json.loads(index.read_bytes())
    assert len(doc["images"]) == 4
    assert Store(store.root).images.get_parent(child) == base


def test_stale_index_without_marker_is_trusted_as_a_cache(store: Store) -> None:
    """Without the marker the index is used as is: this is what makes the marker
    necessary (and the test above meaningful)."""
    base = add_image(store, [TAR_A], comment="base")
    child = add_image(store, [TAR_A, TAR_B], comment="child")
    index = store.backend.root / "index.json"
    stale = index.read_bytes()
    store.images.set_parent(child, base)
    index.write_bytes(stale)
    assert Store(store.root).images.get_parent(child) is None


@pytest.mark.parametrize(
    "damage",
    [
        "delete",
        "garbage",
        "wrong-version",
        "bad-record",
        "null-created",
        "string-size",
        "list-chains",
        "bad-name",
    ],
)
def test_missing_or_damaged_index_is_rebuilt(store: Store, damage: str) -> None:
    base = add_image(store, [TAR_A], comment="base")
    child = add_image(store, [TAR_A, TAR_B], comment="child")
    store.images.set_parent(child, base)
    index = store.backend.root / "index.json"
    if damage == "delete":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"\x00{garbage")
    elif damage == "wrong-version":
        index.write_text(json.dumps({"version": 99, "images": {}}))
    else:
        doc = json.loads(index.read_bytes())
        row = doc["images"][0]
        if damage == "bad-record":
            doc["images"][0] = ["x"]
        elif damage == "null-created":
            row[1] = None
        elif damage == "string-size":
            row[2] = "12"
        elif damage == "list-chains":
            row[6] = row[6].split(" ")
        else:
            row[0] = "../" + row[0][3:]
        index.write_text(json.dumps(doc))
    fresh = Store(store.root)
    assert sorted(r.id for r in fresh.images.list()) == sorted([base, child])
    assert fresh.images.get_parent(child) == base
    assert fresh.images.search(child.hex[:12]) == child
    fresh.images.create(config([], comment="next"))
    assert len(json.loads(index.read_bytes())["images"]) == 3


def test_changes_by_another_instance_are_seen(store: Store) -> None:
    other = Store(store.root)
    assert other.images.list() == []
    image_id = add_image(store, [TAR_A])
    assert [r.id for r in other.images.list()] == [image_id]
    store.images.delete(image_id)
    assert other.images.list() == []
    assert not other.images.exists(image_id)


def test_walk_skips_foreign_files_in_imagedb(store: Store) -> None:
    image_id = add_image(store, [TAR_A])
    (store.backend.content_dir / "README").write_text("x")
    (store.backend.content_dir / ("F" * 64)).write_text("x")
    fresh = Store(store.root)
    assert [r.id for r in fresh.images.list()] == [image_id]
    assert fresh.images.skipped == []
    assert isinstance(image_id, Digest)


def test_records_are_listed_newest_first_then_by_id(store: Store) -> None:
    from ocistore.store.images import ImageRecord, newest_first

    def rec(hex_char: str, created: str) -> ImageRecord:
        return ImageRecord(
            id=ImageID(Digest("sha256:" + hex_char * 64)),
            created=created,
            chain_list="",
            size=0,
            parent=None,
            os="linux",
            architecture="amd64",
            blob_list="",
            inode=0,
        )

    a = rec("a", "2024-01-01T00:00:00Z")
    b = rec("b", "2024-01-01T00:00:00Z")
    c = rec("c", "2023-06-01T00:00:00Z")
    d = rec("d", "2025-01-01T00:00:00Z")
    expected = [d, b, a, c]
    assert newest_first(expected) == expected  # already in order: kept
    for shuffled in ([a, b, c, d], [c, a, d, b], [a, d, b, c], [d, a, b, c]):
        assert newest_first(shuffled) == expected
