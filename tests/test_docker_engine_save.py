"""``save`` against a real Docker engine: ocistore's archives are ``docker save``'s bytes,
and Docker loads them.

The images are the session's (:func:`conftest.docker_images`). ``docker save`` of them is
loaded into a fresh ocistore store, and ``ocistore save`` of the same names must give the
same bytes as ``docker save`` (headers, times, order, ``manifest.json``, ``repositories``,
layer tars). Two differences are Docker's own and are normalized here, explicitly:

* Docker writes the images in a Go map's order (random from one save to the next), and
  that order decides the manifest's order and which directory holds a layer two images
  share; ocistore sorts them by ID. A comparison of several images takes a ``docker
  save`` whose order is ocistore's (Docker is asked again until it is: the order is
  random, so each order comes up).
* A directory whose ``layer.tar`` is a link to a layer saved before is left with the time
  of the save by Docker (it sets times only on directories it fills); ocistore gives it
  the image's ``created`` time, so the same images give the same bytes. Those members'
  mtimes are left out of the comparison.

The other direction: Docker 20.10 loads ocistore's docker-archives and reports the same
image IDs, tags and ``RootFS``. (It cannot load an oci-archive: Docker reads OCI only from
version 25 on.)
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import DockerImages
from docker_engine import DockerEngine, static_busybox
from util import make_tar

OCISTORE = Path(sys.executable).parent / "ocistore"
#: How many times Docker is asked for a save in the order ocistore writes. Docker's
#: order follows its arguments most of the time (measured: 38 in 40 for two images, and
#: 32 in 40 the other way round), so the tries alternate the arguments' order: each
#: pair of tries misses at most about one time in 25, and 60 tries about once in 10**40.
ORDER_TRIES = 60


def ocistore(root: Path, *args: str | Path, input: bytes | None = None) -> bytes:
    """``ocistore --root ROOT ARGS``; its standard output. Fails the test if it fails."""
    cmd = [str(OCISTORE), "--root", str(root), *(str(a) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, input=input, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc.stdout


class Member(NamedTuple):
    name: str
    header: bytes  # the USTAR header block (the last block before the data)
    data: bytes  # the data, padded to whole blocks


def members(archive: bytes) -> tuple[list[Member], bytes]:
    """The members of a tar, in order, with their raw bytes, and what follows the last
    (the end-of-archive blocks and any padding)."""
    out: list[Member] = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        infos = tf.getmembers()
        end = tf.offset
    for m in infos:
        out.append(
            Member(
                m.name,
                archive[m.offset_data - 512 : m.offset_data],
                archive[m.offset_data : m.offset_data + -(-m.size // 512) * 512],
            )
        )
    return out, archive[end:]


def order(archive: bytes) -> list[str]:
    """The images of a docker-archive, in manifest order (their config files)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        f = tf.extractfile("manifest.json")
        assert f is not None
        return [entry["Config"] for entry in json.loads(f.read())]


def linked_dirs(archive: bytes) -> set[str]:
    """The directories whose ``layer.tar`` is a link to a layer saved before."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        return {m.name.rsplit("/", 1)[0] for m in tf if m.issym() and m.name.endswith("/layer.tar")}


def without_time(header: bytes) -> bytes:
    """A header with its mtime and checksum fields blanked."""
    return header[:136] + bytes(20) + header[156:]


def assert_same_archive(ours: bytes, docker: bytes) -> None:
    """``ours`` is ``docker``'s bytes, but for the mtimes Docker leaves as the time of the
    save (the members of directories whose ``layer.tar`` is a link)."""
    if ours == docker:
        return
    mine, my_end = members(ours)
    theirs, their_end = members(docker)
    assert [m.name for m in mine] == [m.name for m in theirs]
    clock = linked_dirs(docker)
    assert clock == linked_dirs(ours)
    for a, b in zip(mine, theirs, strict=True):
        assert a.data == b.data, a.name
        if a.name in clock or a.name.rsplit("/", 1)[0] in clock:
            assert without_time(a.header) == without_time(b.header), a.name
        else:
            assert a.header == b.header, a.name
    assert my_end == their_end == bytes(1024)  # two zero blocks, no record padding
    assert len(ours) == len(docker)


class Saved(NamedTuple):
    archive: Path
    store: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def saved(
    docker_engine: DockerEngine,
    docker_images: DockerImages,
    tmp_path_factory: pytest.TempPathFactory,
) -> Saved:
    """The session's images, saved by Docker and loaded into a fresh ocistore store."""
    tmp = tmp_path_factory.mktemp("save")
    names = [docker_images.imported, docker_images.built, docker_images.child]
    archive = tmp / "all.tar"
    archive.write_bytes(docker_engine.run_bytes("save", *names))
    store = tmp / "store"
    ocistore(store, "load", "-q", "-i", archive)
    return Saved(archive, store, {n: docker_engine.image_id(n) for n in names})


def save_both_ways(store: Path, tmp: Path, *names: str) -> bytes:
    """``ocistore save`` to standard output and to a file (filled in parallel): the same."""
    streamed = ocistore(store, "save", "-o", "-", *names)
    path = tmp / "ocistore.tar"
    ocistore(store, "save", "-o", path, *names)
    assert path.read_bytes() == streamed
    path.unlink()
    return streamed


# -- ocistore save is docker save -----------------------------------------------------------


@pytest.mark.parametrize("which", ["imported", "built", "child"])
def test_one_image_is_docker_saves_bytes(
    docker_engine: DockerEngine,
    docker_images: DockerImages,
    saved: Saved,
    tmp_path: Path,
    which: str,
) -> None:
    name = getattr(docker_images, which)
    docker = docker_engine.run_bytes("save", name)
    assert save_both_ways(saved.store, tmp_path, name) == docker


@pytest.mark.parametrize("how", ["full", "hex", "short"])
def test_an_image_by_id_is_docker_saves_bytes(
    docker_engine: DockerEngine,
    docker_images: DockerImages,
    saved: Saved,
    tmp_path: Path,
    how: str,
) -> None:
    """By ID: no tags (``"RepoTags":null``) and no ``repositories`` file."""
    image_id = saved.ids[docker_images.child]
    name = {"full": image_id, "hex": image_id[7:], "short": image_id[7:19]}[how]
    docker = docker_engine.run_bytes("save", name)
    assert b'"RepoTags":null' in docker
    assert save_both_ways(saved.store, tmp_path, name) == docker


def test_a_repository_with_several_tags_is_docker_saves_bytes(
    docker_engine: DockerEngine, docker_images: DockerImages, tmp_path: Path
) -> None:
    """A bare repository name saves every tag of it: ``RepoTags`` and ``repositories``
    list them as Docker does."""
    tags = ["t-save/multi:b", "t-save/multi:a", "t-save/multi:latest"]
    for tag in tags:
        docker_engine.run("tag", docker_images.built, tag)
    docker_engine.run("tag", docker_images.imported, "t-save/multi:other")
    try:
        store = tmp_path / "store"
        ocistore(store, "load", "-q", "-i", "-", input=docker_engine.run_bytes("save", *tags))
        ocistore(
            store,
            "load",
            "-q",
            "-i",
            "-",
            input=docker_engine.run_bytes("save", "t-save/multi:other"),
        )
        ours = save_both_ways(store, tmp_path, "t-save/multi")
        docker = docker_save_in_order(docker_engine, order(ours), "t-save/multi")
        assert ours == docker
        # One tag of a repository: only that tag.
        one = docker_engine.run_bytes("save", "t-save/multi:a")
        assert save_both_ways(store, tmp_path, "t-save/multi:a") == one
    finally:
        docker_engine.run("rmi", *tags, "t-save/multi:other")


def docker_save_in_order(engine: DockerEngine, wanted: list[str], *names: str) -> bytes:
    """A ``docker save`` of ``names`` whose manifest lists the images of ``wanted`` in
    that order (others may come between)."""
    seen: list[list[str]] = []
    for i in range(ORDER_TRIES):
        data = engine.run_bytes("save", *(names if i % 2 == 0 else reversed(names)))
        got = order(data)
        if [c for c in got if c in wanted] == wanted:
            return data
        seen.append(got)
    pytest.fail(f"docker save never wrote the images in the order {wanted} (wrote {seen[:3]})")


def manifest(archive: bytes) -> list[dict[str, Any]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tf:
        f = tf.extractfile("manifest.json")
        assert f is not None
        doc: list[dict[str, Any]] = json.loads(f.read())
        return doc


@pytest.mark.parametrize(
    "which",
    [("built", "child"), ("imported", "built")],
    ids=["image-and-child", "unrelated"],
)
def test_several_images_are_docker_saves_bytes(
    docker_engine: DockerEngine,
    docker_images: DockerImages,
    saved: Saved,
    tmp_path: Path,
    which: tuple[str, ...],
) -> None:
    """Images sharing layers: each directory once, written by the first image in
    manifest order (with its time), a layer in two directories held by the one saved
    first and linked from the other."""
    names = [getattr(docker_images, w) for w in which]
    ours = save_both_ways(saved.store, tmp_path, *reversed(names))
    assert order(ours) == sorted(order(ours))  # by ID
    docker = docker_save_in_order(docker_engine, order(ours), *names)
    assert_same_archive(ours, docker)
    if "child" in which:
        assert linked_dirs(docker), "the parent's top layer is the child's too"


def test_three_images_are_docker_saves_but_for_the_manifests_order(
    docker_engine: DockerEngine, docker_images: DockerImages, saved: Saved, tmp_path: Path
) -> None:
    """With three images Docker's map order is a rotation of one order, which need not
    be ocistore's (by ID) at all: a save where the two images sharing layers come in
    ocistore's order is the same archive but for the order of ``manifest.json``."""
    names = [docker_images.imported, docker_images.built, docker_images.child]
    ours = save_both_ways(saved.store, tmp_path, *names)
    related = [c for c in order(ours) if c != saved.ids[docker_images.imported][7:] + ".json"]
    docker = docker_save_in_order(docker_engine, related, *names)
    assert sorted(manifest(docker), key=lambda e: e["Config"]) == manifest(ours)
    mine, _ = members(ours)
    theirs, _ = members(docker)
    (m,) = [i for i, x in enumerate(mine) if x.name == "manifest.json"]
    assert without_time(mine[m].header) == without_time(theirs[m].header)  # its size
    # The rest, member for member (Docker's, with ocistore's manifest.json).
    patched = b"".join(
        x.header + (mine[m].data if x.name == "manifest.json" else x.data) for x in theirs
    )
    assert_same_archive(ours, patched + bytes(1024))


# -- docker load of ocistore's saves ----------------------------------------------------------


def docker_view(engine: DockerEngine, name: str) -> dict[str, Any]:
    (doc,) = json.loads(engine.run("image", "inspect", name).stdout)
    return {"Id": doc["Id"], "RepoTags": doc["RepoTags"], "RootFS": doc["RootFS"]}


def ocistore_view(store: Path, name: str) -> dict[str, Any]:
    (doc,) = json.loads(ocistore(store, "inspect", name))
    return {"Id": doc["Id"], "RepoTags": doc["RepoTags"], "RootFS": doc["RootFS"]}


@pytest.fixture
def docker_removes(docker_engine: DockerEngine) -> Iterator[list[str]]:
    """Names (tags, IDs) a test added to the engine: removed at its end."""
    names: list[str] = []
    yield names
    if names:
        docker_engine.run("rmi", *names, check=False)


def test_docker_loads_an_image_ocistore_made(
    docker_engine: DockerEngine, tmp_path: Path, docker_removes: list[str]
) -> None:
    """An image Docker never saw (``ocistore import``), in two tags, saved by ocistore and
    loaded by Docker: the same ID, tags and layers."""
    store = tmp_path / "store"
    tree = tmp_path / "tree.tar"
    tree.write_bytes(make_tar({"etc/t-save": b"made by ocistore\n", "bin/x": b"x" * 700}))
    ocistore(store, "import", tree, "t-save/made:1")
    ocistore(store, "tag", "t-save/made:1", "t-save/made:2")
    archive = tmp_path / "made.tar"
    ocistore(store, "save", "-o", archive, "t-save/made")
    docker_removes += ["t-save/made:1", "t-save/made:2"]
    out = docker_engine.run("load", "-i", archive).stdout
    assert out.splitlines() == ["Loaded image: t-save/made:1", "Loaded image: t-save/made:2"]
    assert docker_view(docker_engine, "t-save/made:1") == ocistore_view(store, "t-save/made:1")
    # And Docker's save of it is ocistore's archive, byte for byte.
    assert docker_engine.run_bytes("save", "t-save/made") == archive.read_bytes()


def test_docker_loads_ocistore_saves_of_images_docker_built(
    docker_engine: DockerEngine, tmp_path: Path, docker_removes: list[str]
) -> None:
    """Images Docker built (an image and its child, sharing layers), saved by Docker,
    removed from it, loaded into ocistore, saved by ocistore (with a tag more, and one by
    ID) and loaded by Docker again: the same IDs, tags and ``RootFS``."""
    busybox = static_busybox()
    docker_removes += ["t-save/kid:1", "t-save/base:1", "t-save/base:more"]
    docker_engine.build(
        "t-save/base:1",
        'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "mkdir", "/t"]\n',
        {"busybox": busybox},
    )
    docker_engine.build("t-save/kid:1", 'FROM t-save/base:1\nRUN ["/bin/busybox", "rmdir", "/t"]\n')
    ids = {n: docker_engine.image_id(n) for n in ("t-save/base:1", "t-save/kid:1")}
    store = tmp_path / "store"
    ocistore(store, "load", "-q", "-i", "-", input=docker_engine.run_bytes("save", *ids))
    docker_engine.run("rmi", *ids)
    ocistore(store, "tag", "t-save/base:1", "t-save/base:more")
    archive = tmp_path / "back.tar"
    ocistore(store, "save", "-o", archive, "t-save/base", ids["t-save/kid:1"])
    docker_engine.run("load", "-i", archive)
    assert docker_view(docker_engine, "t-save/base:1") == ocistore_view(store, "t-save/base:1")
    kid = ids["t-save/kid:1"]
    # Saved by ID: untagged in Docker.
    assert docker_view(docker_engine, kid) == {**ocistore_view(store, kid), "RepoTags": []}


# -- save into an existing OCI layout ---------------------------------------------------------


def test_saving_into_a_layout_adds_to_it(
    docker_engine: DockerEngine,
    docker_images: DockerImages,
    saved: Saved,
    tmp_path: Path,
    skopeo: Any,
    umoci: Any,
) -> None:
    """``save --format oci -o layout A`` then ``B``: both are there, though both have the
    tag ``1`` (ref name ``1``); skopeo adds Docker's own save beside them, and umoci and
    a fresh store see every image."""
    layout = tmp_path / "layout"
    ocistore(saved.store, "save", "--format", "oci", "-o", layout, docker_images.built)
    ocistore(saved.store, "save", "--format", "oci", "-o", layout, docker_images.imported)
    skopeo("copy", f"docker-archive:{saved.archive}:{docker_images.child}", f"oci:{layout}:kid")
    ocistore(saved.store, "save", "--format", "oci", "-o", layout, docker_images.built)  # again
    assert sorted(umoci("ls", "--layout", layout).stdout.split()) == ["1", "1", "kid"]
    index = json.loads((layout / "index.json").read_bytes())
    names = [m["annotations"].get("io.containerd.image.name") for m in index["manifests"]]
    assert names == ["docker.io/lab/built:1", "docker.io/lab/imported:1", None]
    other = tmp_path / "other"
    ocistore(other, "load", "-q", "-i", layout)
    images = json.loads(ocistore(other, "inspect", docker_images.built, docker_images.imported))
    assert [i["Id"] for i in images] == [
        saved.ids[docker_images.built],
        saved.ids[docker_images.imported],
    ]
