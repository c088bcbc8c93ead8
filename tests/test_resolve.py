"""The one resolver: what a name, an ID or a prefix finds (every command), what a list of
names selects (``save``), and the listing filter, with Docker's rules."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from util import make_tar

from ocistore.errors import Ambiguous, InvalidInput, NotFound
from ocistore.spec.digest import Digest, ImageID, digest_bytes
from ocistore.spec.reference import parse
from ocistore.store import Store
from ocistore.store.resolve import Selected


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def imp(store: Store, content: bytes, ref: str | None = None) -> ImageID:
    return store.import_tarball(io.BytesIO(make_tar({"f": content})), ref, message=repr(content))


DIGEST = digest_bytes(b"a manifest")


@pytest.fixture
def images(store: Store) -> dict[str, ImageID]:
    one = imp(store, b"1", "app:1")
    store.tag("app:1", "app:latest")
    two = imp(store, b"2", "app:2")
    other = imp(store, b"3", "example.com/other:x")
    pinned = imp(store, b"4")
    store.references.add_digest(parse(f"app@{DIGEST}"), pinned)
    return {"one": one, "two": two, "other": other, "pinned": pinned}


def test_resolve_by_reference_id_and_prefix(store: Store, images: dict[str, ImageID]) -> None:
    one = images["one"]
    assert store.resolve("app") == one  # a name alone means :latest
    assert store.resolve("app:1") == one
    assert store.resolve("docker.io/library/app:1") == one
    assert store.resolve(f"app@{DIGEST}") == images["pinned"]
    assert store.resolve(one) == one
    assert store.resolve(one.hex) == one
    assert store.resolve(one.hex[:12]) == one
    assert store.resolve(f"sha256:{one.hex[:8]}") == one


def test_a_reference_wins_over_an_id_prefix(store: Store) -> None:
    """``abc`` is a repository name and could be an ID prefix: Docker tries the name."""
    first = imp(store, b"first")
    named = imp(store, b"named", f"{first.hex[:6]}:latest")
    assert store.resolve(first.hex[:6]) == named
    assert store.resolve(first.hex[:7]) == first


def test_resolve_errors(store: Store, images: dict[str, ImageID]) -> None:
    with pytest.raises(NotFound, match="No such image: app:3"):
        store.resolve("app:3")
    with pytest.raises(NotFound, match=r"^No such image: nothing:latest$"):
        store.resolve("nothing")
    with pytest.raises(InvalidInput, match="empty image name"):
        store.resolve("")
    with pytest.raises(InvalidInput, match="invalid reference format"):
        store.resolve("Bad Name")
    # As in Docker, a name that is not a digest is a reference (repository "sha256").
    with pytest.raises(NotFound, match=r"^No such image: sha256:xyz$"):
        store.resolve("sha256:xyz")
    with pytest.raises(NotFound):
        store.resolve(f"sha256:{'f' * 64}")


def test_an_ambiguous_prefix_names_no_image_as_in_docker(store: Store) -> None:
    ids = [imp(store, str(i).encode()) for i in range(40)]
    firsts = [i.hex[0] for i in ids]
    shared = next(c for c in firsts if firsts.count(c) > 1)
    with pytest.raises(NotFound, match=f"^No such image: {shared}:latest$"):
        store.resolve(shared)
    with pytest.raises(NotFound, match=f"^No such image: sha256:{shared}$"):
        store.resolve(f"sha256:{shared}")
    # save's selection says what is wrong (Docker: "ambiguous digest string").
    with pytest.raises(Ambiguous, match="ambiguous"):
        store.select([f"sha256:{shared}"])


def test_select_as_docker_save(store: Store, images: dict[str, ImageID]) -> None:
    one, two, pinned, other = images["one"], images["two"], images["pinned"], images["other"]
    ref = parse
    # A bare repository: every image of it, each with its tags; an image it names only
    # by digest comes without one.
    assert store.select(["app"]) == [
        Selected(one, ref("app:1")),
        Selected(two, ref("app:2")),
        Selected(one, ref("app:latest")),
        Selected(pinned, None),
    ]
    assert store.select(["app:2", "example.com/other:x"]) == [
        Selected(two, ref("app:2")),
        Selected(other, ref("example.com/other:x")),
    ]
    assert store.select([f"app@{DIGEST}"]) == [Selected(pinned, ref(f"app@{DIGEST}"))]
    assert store.select([f"app:9@{DIGEST}"]) == [Selected(pinned, ref(f"app@{DIGEST}"))]
    assert store.select([one, two.hex[:10], f"sha256:{other.hex[:9]}"]) == [
        Selected(one, None),
        Selected(two, None),
        Selected(other, None),
    ]
    # Each pair once, in the order named.
    assert store.select(["app:2", "app:2", two]) == [
        Selected(two, ref("app:2")),
        Selected(two, None),
    ]


def test_select_a_repository_without_tags_as_an_id_prefix(store: Store) -> None:
    image = imp(store, b"x")
    assert store.select([image.hex[:5]]) == [Selected(image, None)]


def test_select_refuses_what_names_nothing(store: Store, images: dict[str, ImageID]) -> None:
    with pytest.raises(NotFound, match="No such image: app:3"):
        store.select(["app:1", "app:3"])
    with pytest.raises(NotFound, match="No such image: nothing"):
        store.select(["nothing"])
    with pytest.raises(InvalidInput, match="empty image name"):
        store.select([""])
    with pytest.raises(InvalidInput, match="invalid reference format"):
        store.select(["Bad Name"])
    with pytest.raises(NotFound):
        store.select([Digest(f"sha256:{'0' * 64}")])
