"""The reference store: moby's rules, Docker's file, many processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from ocistore.errors import Conflict, CorruptStore, InvalidInput, NotFound
from ocistore.spec.digest import Digest, ImageID, digest_bytes
from ocistore.spec.reference import Reference, parse, parse_tagged
from ocistore.store import refs as refstore
from ocistore.store.fsutil import FileLock
from ocistore.store.refs import ReferenceStore

ID_A = ImageID(digest_bytes(b"image a"))
ID_B = ImageID(digest_bytes(b"image b"))
ID_C = ImageID(digest_bytes(b"image c"))
MANIFEST = Digest(digest_bytes(b"a manifest"))


def make_store(root: Path) -> ReferenceStore:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return ReferenceStore(root / "repositories.json", root / "tmp", FileLock(root / "lock"))


@pytest.fixture
def store(tmp_path: Path) -> ReferenceStore:
    return make_store(tmp_path)


def read_json(store: ReferenceStore) -> object:
    return json.loads(store.path.read_bytes())


def test_missing_file_means_no_references(store: ReferenceStore) -> None:
    assert store.all() == {}
    assert store.references(ID_A) == []
    assert store.references_by_name(parse("busybox")) == []
    assert store.image_ids() == set()
    assert not store.path.exists()
    with pytest.raises(NotFound, match="busybox:latest"):
        store.get(parse("busybox"))
    assert store.delete(parse("busybox")) is False


def test_add_tag_and_get(store: ReferenceStore) -> None:
    assert store.add_tag(parse("busybox"), ID_A) is None
    for spelling in [
        "busybox",
        "busybox:latest",
        "docker.io/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
    ]:
        assert store.get(parse(spelling)) == ID_A
    with pytest.raises(NotFound, match="busybox:1"):
        store.get(parse("busybox:1"))
    assert store.path.read_bytes() == (
        b'{"Repositories":{"busybox":{"busybox:latest":"' + ID_A.encode() + b'"}}}'
    )


def test_file_is_shaped_like_dockers(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox:1.36"), ID_A)
    store.add_tag(parse("busybox"), ID_A)
    store.add_digest(parse(f"busybox@{MANIFEST}"), ID_A)
    store.add_tag(parse("localhost:5000/team/app:v1"), ID_B)
    store.add_tag(parse("team/app"), ID_C)
    assert read_json(store) == {
        "Repositories": {
            "busybox": {
                "busybox:1.36": ID_A,
                "busybox:latest": ID_A,
                f"busybox@{MANIFEST}": ID_A,
            },
            "localhost:5000/team/app": {"localhost:5000/team/app:v1": ID_B},
            "team/app": {"team/app:latest": ID_C},
        }
    }


def test_reads_a_file_docker_wrote(tmp_path: Path) -> None:
    doc = {
        "Repositories": {
            "busybox": {"busybox:latest": ID_A, f"busybox@{MANIFEST}": ID_A},
            "quay.io/org/tool": {"quay.io/org/tool:2": ID_B},
        }
    }
    (tmp_path / "repositories.json").write_text(json.dumps(doc))
    store = make_store(tmp_path)
    assert store.all() == {
        parse_tagged("busybox"): ID_A,
        parse(f"busybox@{MANIFEST}"): ID_A,
        parse("quay.io/org/tool:2"): ID_B,
    }
    assert store.get(parse(f"docker.io/library/busybox@{MANIFEST}")) == ID_A


def test_same_mapping_again_is_a_no_op(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox"), ID_A)
    store.add_digest(parse(f"busybox@{MANIFEST}"), ID_A)
    before = os.stat(store.path)
    assert store.add_tag(parse("busybox:latest"), ID_A) is None
    store.add_digest(parse(f"busybox@{MANIFEST}"), ID_A)
    store.add_digest(parse(f"busybox@{MANIFEST}"), ID_A, force=True)
    after = os.stat(store.path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_moving_a_tag_needs_force(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox"), ID_A)
    with pytest.raises(Conflict) as info:
        store.add_tag(parse("busybox:latest"), ID_B)
    assert str(info.value) == (
        f"Conflict: tag busybox:latest is already set to image {ID_A}, "
        "use the force option to replace it"
    )
    assert store.get(parse("busybox")) == ID_A
    assert store.add_tag(parse("busybox"), ID_B, force=True) == ID_A
    assert store.get(parse("busybox")) == ID_B
    assert store.references(ID_A) == []
    assert store.references(ID_B) == [parse_tagged("busybox")]


def test_digest_references_are_never_moved(store: ReferenceStore) -> None:
    ref = parse(f"busybox@{MANIFEST}")
    store.add_digest(ref, ID_A)
    for force in (False, True):
        with pytest.raises(Conflict, match=f"cannot overwrite digest reference busybox@{MANIFEST}"):
            store.add_digest(ref, ID_B, force=force)
    assert store.get(ref) == ID_A


def test_add_all_is_one_write_of_all_or_none(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox:1"), ID_A)
    digested = parse(f"busybox@{MANIFEST}")
    store.add_digest(digested, ID_A)
    before = read_json(store)
    # The second item is refused: the first is not kept either, checking or not.
    for check_only in (True, False):
        with pytest.raises(Conflict, match="already names image"):
            store.add_all(
                [(parse("app:v1"), ID_B), (digested, ID_B)], force_tags=True, check_only=check_only
            )
        assert read_json(store) == before
    # One digest reference for two images of the same batch.
    other = parse(f"app@{MANIFEST}")
    with pytest.raises(Conflict, match=f"cannot overwrite digest reference app@{MANIFEST}"):
        store.add_all([(other, ID_B), (other, ID_C)], check_only=True)
    with pytest.raises(InvalidInput, match="ambiguous tag using digest algorithm as name"):
        store.add_all([(parse(f"sha256@{MANIFEST}"), ID_B)], check_only=True)
    assert read_json(store) == before
    # Accepted: tags move only with force_tags, a later item wins.
    with pytest.raises(Conflict, match="use the force option"):
        store.add_all([(parse("busybox:1"), ID_B)])
    store.add_all([(parse("busybox:1"), ID_B), (parse("app"), ID_B), (parse("app"), ID_C)], True)
    assert store.get(parse("busybox:1")) == ID_B
    assert store.get(parse("app:latest")) == ID_C
    assert store.get(digested) == ID_A


def test_refusals(store: ReferenceStore) -> None:
    digested = parse(f"busybox@{MANIFEST}")
    with pytest.raises(InvalidInput, match="refusing to create a tag with a digest reference"):
        store.add_tag(digested, ID_A)
    with pytest.raises(InvalidInput, match="refusing to create a tag with a digest reference"):
        store.add_tag(parse(f"busybox:1@{MANIFEST}"), ID_A)
    with pytest.raises(InvalidInput, match="without a digest: busybox:1"):
        store.add_digest(parse("busybox:1"), ID_A)
    with pytest.raises(InvalidInput, match=f"with a tag: busybox:1@{MANIFEST}"):
        store.add_digest(parse(f"busybox:1@{MANIFEST}"), ID_A)
    ambiguous = "refusing to create an ambiguous tag using digest algorithm as name"
    with pytest.raises(InvalidInput, match=f"{ambiguous}: sha256:latest"):
        store.add_tag(parse("sha256"), ID_A)
    with pytest.raises(InvalidInput, match=ambiguous):
        store.add_tag(parse("docker.io/library/sha256:" + "a" * 64), ID_A, force=True)
    with pytest.raises(InvalidInput, match=ambiguous):
        store.add_digest(parse(f"sha256@{MANIFEST}"), ID_A)
    with pytest.raises(InvalidInput, match=ambiguous):
        store.add_tag(parse("sha512:x"), ID_A)
    with pytest.raises(InvalidInput):
        store.add_tag(parse("busybox"), Digest("sha256:abc"))
    # Not reserved: a repository in a namespace, or on another registry.
    store.add_tag(parse("me/sha256"), ID_A)
    store.add_tag(parse("localhost/sha256"), ID_A)
    assert not store.path.read_bytes().count(b'"sha256"')
    assert len(store.all()) == 2


def test_tag_and_digest_lookups_favor_the_digest(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox:1"), ID_A)
    store.add_digest(parse(f"busybox@{MANIFEST}"), ID_B)
    assert store.get(parse(f"busybox:1@{MANIFEST}")) == ID_B
    assert store.delete(parse(f"busybox:1@{MANIFEST}")) is True
    assert store.get(parse("busybox:1")) == ID_A
    with pytest.raises(NotFound):
        store.get(parse(f"busybox@{MANIFEST}"))


def test_delete(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox"), ID_A)
    store.add_tag(parse("busybox:1"), ID_A)
    assert store.delete(parse("busybox")) is True  # a name alone means :latest
    assert store.delete(parse("busybox:latest")) is False
    assert store.get(parse("busybox:1")) == ID_A
    assert store.delete(parse("docker.io/library/busybox:1")) is True
    assert store.all() == {}
    assert read_json(store) == {"Repositories": {}}


def test_delete_image(store: ReferenceStore) -> None:
    store.add_tag(parse("b:2"), ID_A)
    store.add_tag(parse("a"), ID_A)
    store.add_digest(parse(f"a@{MANIFEST}"), ID_A)
    store.add_tag(parse("c"), ID_B)
    assert store.delete_image(ID_A) == [
        parse_tagged("a"),
        parse(f"a@{MANIFEST}"),
        parse("b:2"),
    ]
    assert store.all() == {parse_tagged("c"): ID_B}
    assert store.delete_image(ID_A) == []
    assert store.image_ids() == {ID_B}
    assert store.by_image() == {ID_B: [parse_tagged("c")]}


def test_sorting(store: ReferenceStore) -> None:
    names = ["zeta", "alpha:2", "localhost/x", "alpha:10", "team/b", "alpha@" + MANIFEST]
    for name in names:
        ref = parse(name)
        if ref.digest is not None:
            store.add_digest(ref, ID_A)
        else:
            store.add_tag(ref, ID_A)
    expected = [
        "alpha:10",
        "alpha:2",
        f"alpha@{MANIFEST}",
        "localhost/x:latest",
        "team/b:latest",
        "zeta:latest",
    ]
    assert [r.familiar() for r in store.references(ID_A)] == expected
    assert [r.familiar() for r in store.all()] == expected
    assert [r.familiar() for r in store.by_image()[ID_A]] == expected
    by_name = store.references_by_name(parse("alpha:whatever"))
    assert [(r.familiar(), i) for r, i in by_name] == [
        ("alpha:10", ID_A),
        ("alpha:2", ID_A),
        (f"alpha@{MANIFEST}", ID_A),
    ]
    assert store.references_by_name(parse("docker.io/library/zeta")) == [
        (parse_tagged("zeta"), ID_A)
    ]


def test_references_are_normalized(store: ReferenceStore) -> None:
    # Built by hand, not normalized: stored under the normalized key all the same.
    store.add_tag(Reference("docker.io", "busybox", "x"), ID_A)
    store.add_tag(Reference("index.docker.io", "library/busybox", "y"), ID_A)
    store.add_tag(Reference("team", "app", "z"), ID_A)  # what Parse("team/app:z") gives
    assert set(store.all()) == {parse("busybox:x"), parse("busybox:y"), parse("team/app:z")}
    assert store.get(parse("busybox:x")) == ID_A


def test_persistence_across_instances(tmp_path: Path) -> None:
    one = make_store(tmp_path)
    one.add_tag(parse("busybox"), ID_A)
    one.add_digest(parse(f"busybox@{MANIFEST}"), ID_A)
    two = make_store(tmp_path)
    assert two.get(parse("busybox")) == ID_A
    assert two.references(ID_A) == [parse_tagged("busybox"), parse(f"busybox@{MANIFEST}")]
    two.add_tag(parse("busybox"), ID_B, force=True)
    # The first instance sees the other's write, and does not lose it when writing.
    assert one.get(parse("busybox")) == ID_B
    one.add_tag(parse("other"), ID_C)
    assert make_store(tmp_path).all() == {
        parse_tagged("busybox"): ID_B,
        parse(f"busybox@{MANIFEST}"): ID_A,
        parse_tagged("other"): ID_C,
    }
    one.close()
    assert one.get(parse("other")) == ID_C


def test_reads_are_cached_until_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make_store(tmp_path)
    writer.add_tag(parse("busybox"), ID_A)
    reader = make_store(tmp_path)
    calls = []
    real = refstore.decode

    def counting(data: bytes, path: Path) -> dict[Reference, ImageID]:
        calls.append(path)
        return real(data, path)

    monkeypatch.setattr(refstore, "decode", counting)
    for _ in range(5):
        assert reader.get(parse("busybox")) == ID_A
        assert reader.references(ID_A) == [parse_tagged("busybox")]
    assert len(calls) == 1
    writer.add_tag(parse("busybox:2"), ID_B)  # re-reads under the lock
    assert len(calls) == 2
    assert reader.get(parse("busybox:2")) == ID_B
    assert len(calls) == 3
    assert reader.get(parse("busybox")) == ID_A
    assert len(calls) == 3
    # A writer's own write is cached without parsing it again.
    assert writer.get(parse("busybox:2")) == ID_B
    assert len(calls) == 3


def test_conflict_leaves_the_file_alone(store: ReferenceStore) -> None:
    store.add_tag(parse("busybox"), ID_A)
    before = store.path.read_bytes()
    with pytest.raises(Conflict):
        store.add_tag(parse("busybox"), ID_B)
    assert store.path.read_bytes() == before
    assert os.listdir(store.path.parent / "tmp") == []


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xffgarbage",
        b"",
        b'{"Repositories": {"busybox": {"busybox:latest": "sha256:',
        b"[]",
        b"{}",
        b'{"Repositories": []}',
        b'{"Repositories": {"busybox": ["busybox:latest"]}}',
        b'{"Repositories": {"busybox": {"busybox:latest": 42}}}',
        b'{"Repositories": {"busybox": {"busybox:latest": "sha256:1234"}}}',
        b'{"Repositories": {"busybox": {"Busybox:latest": "' + ID_A.encode() + b'"}}}',
        b'{"Repositories": {"busybox": {"busybox": "' + ID_A.encode() + b'"}}}',
        b'{"Repositories": {"a": {"busybox:1": "'
        + ID_A.encode()
        + b'"}, "b": {"docker.io/library/busybox:1": "'
        + ID_B.encode()
        + b'"}}}',
    ],
)
def test_tampered_file_is_corrupt(store: ReferenceStore, content: bytes) -> None:
    store.add_tag(parse("busybox"), ID_A)
    assert store.get(parse("busybox")) == ID_A
    store.path.write_bytes(content)
    with pytest.raises(CorruptStore, match=str(store.path)) as info:
        store.get(parse("busybox"))
    assert "\n" not in str(info.value)
    with pytest.raises(CorruptStore):
        store.references(ID_A)
    with pytest.raises(CorruptStore):
        make_store(store.path.parent).all()
    # A mutation refuses to overwrite the damaged file.
    with pytest.raises(CorruptStore):
        store.add_tag(parse("other"), ID_B)
    assert store.path.read_bytes() == content


def test_null_repositories_are_empty(tmp_path: Path) -> None:
    (tmp_path / "repositories.json").write_bytes(b'{"Repositories": null}')
    assert make_store(tmp_path).all() == {}
    (tmp_path / "repositories.json").write_bytes(b'{"Repositories": {"busybox": null}}')
    assert make_store(tmp_path).all() == {}


# -- many processes ----------------------------------------------------------------------


def _worker(root: str, worker: int, count: int, start: multiprocessing.synchronize.Event) -> None:
    store = make_store(Path(root))
    start.wait()
    for i in range(count):
        image = ImageID(digest_bytes(f"{worker}/{i}".encode()))
        store.add_tag(parse(f"w{worker}:t{i}"), image)
        store.add_tag(parse("shared"), image, force=True)
        assert store.get(parse(f"w{worker}:t{i}")) == image


def test_many_processes_lose_no_write(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers, count = 6, 15
    procs = [
        ctx.Process(target=_worker, args=(str(tmp_path), w, count, start)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = make_store(tmp_path)
    refs = store.all()
    for w in range(workers):
        for i in range(count):
            assert refs[parse(f"w{w}:t{i}")] == digest_bytes(f"{w}/{i}".encode())
    assert len(refs) == workers * count + 1
    assert store.get(parse("shared")) in {
        digest_bytes(f"{w}/{count - 1}".encode()) for w in range(workers)
    }
    assert os.listdir(tmp_path / "tmp") == []
