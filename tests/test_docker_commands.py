"""``rmi``, ``load`` and the errors for what names no image, against a real Docker engine:
the same steps on the same images in both, the same lines out.

Docker's command line says ``Error response from daemon: <message>`` where ocistore says
``ocistore: <message>``; the messages are compared after that prefix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from docker_engine import DockerEngine
from util import make_tar, ocistore_cli

OCISTORE = Path(sys.executable).parent / "ocistore"


class Pair(NamedTuple):
    """Docker and an ocistore store holding the same images."""

    docker: DockerEngine
    root: Path

    def both(self, *args: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        theirs = self.docker.run(*args, check=False)
        ours = subprocess.run(
            [str(OCISTORE), "--root", str(self.root), *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return (
            (
                theirs.returncode,
                theirs.stdout,
                _message(theirs.stderr, "Error response from daemon: "),
            ),
            (ours.returncode, ours.stdout, _message(ours.stderr, "ocistore: ")),
        )


def _message(stderr: str, prefix: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("DEPRECATED")]
    return "\n".join(line.removeprefix(prefix) for line in lines)


def _import(docker: DockerEngine, files: dict[str, bytes], *names: str) -> str:
    image_id = docker.run("import", "-", input=make_tar(files)).stdout.strip()
    for name in names:
        docker.run("tag", image_id, name)
    return image_id


@pytest.fixture
def pair(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[Pair]:
    """Three images in Docker, saved and loaded into a fresh ocistore store:
    ``t-cmd/a:1`` and ``t-cmd/a:2`` (one image, two tags of one repository),
    ``t-cmd/b:1`` together with ``t-cmd/c:1`` (two repositories), ``t-cmd/d:1``."""
    ids = [
        _import(docker_engine, {"a": b"a"}, "t-cmd/a:1", "t-cmd/a:2"),
        _import(docker_engine, {"b": b"bb"}, "t-cmd/b:1", "t-cmd/c:1"),
        _import(docker_engine, {"d": b"ddd"}, "t-cmd/d:1"),
    ]
    archive = tmp_path / "all.tar"
    names = ["t-cmd/a:1", "t-cmd/a:2", "t-cmd/b:1", "t-cmd/c:1", "t-cmd/d:1"]
    docker_engine.run("save", "-o", archive, *names)
    root = tmp_path / "store"
    ocistore_cli("--root", root, "load", "-q", "-i", archive)
    yield Pair(docker_engine, root)
    docker_engine.run("rmi", "-f", *ids, check=False)


def test_rmi_by_id_of_an_image_with_two_tags_of_one_repository_is_a_conflict(
    pair: Pair,
) -> None:
    image_id = pair.docker.image_id("t-cmd/a:1")
    theirs, ours = pair.both("rmi", image_id[7:19])
    assert ours == theirs
    assert theirs[0] == 1
    assert "image is referenced in multiple repositories" in theirs[2]
    theirs, ours = pair.both("rmi", "-f", image_id[7:19])
    assert ours == theirs
    assert theirs[1].splitlines()[:2] == ["Untagged: t-cmd/a:1", "Untagged: t-cmd/a:2"]


def test_rmi_untags_then_deletes_with_dockers_lines(pair: Pair) -> None:
    for args in (
        ["rmi", "t-cmd/b:1"],  # untagged: t-cmd/c:1 is left
        ["rmi", "t-cmd/c:1"],  # the last name: the image and its layer go
        ["rmi", "t-cmd/a:1", "t-cmd/nosuch:1", "t-cmd/a:2"],  # an error between two
        ["rmi", "t-cmd/d"],  # no tag means latest, which is not there
    ):
        theirs, ours = pair.both(*args)
        assert ours == theirs, args
    # Docker 20.10's engine words it as the reference library of its day; ocistore as
    # today's (and the docker command's own parser): "repository name (library/Bad) must".
    theirs, ours = pair.both("rmi", "Bad:Ref")
    assert theirs == (1, "", "invalid reference format: repository name must be lowercase")
    assert ours == (
        1,
        "",
        "invalid reference format: repository name (library/Bad) must be lowercase",
    )


@pytest.mark.parametrize("command", ["inspect", "history", "rmi", "tag"])
@pytest.mark.parametrize(
    "name",
    ["t-cmd/nosuch", "t-cmd/nosuch:2", "sha256:FREE", "0123456789ab", f"sha256:{'0' * 64}"],
)
def test_no_such_image_is_worded_as_docker_words_it(pair: Pair, command: str, name: str) -> None:
    if "FREE" in name:  # an ID prefix of no image of the engine (it names one if any has it)
        ids = pair.docker.run("images", "-a", "-q", "--no-trunc").stdout.split()
        taken = {i[7:9] for i in ids}
        name = name.replace("FREE", next(f"{n:02x}" for n in range(256) if f"{n:02x}" not in taken))
    args = [command, name] if command != "tag" else [command, name, "t-cmd/x:1"]
    # docker's own "inspect" looks for any object; "image inspect" is ocistore's inspect.
    theirs, ours = pair.both(*(["image", *args] if command == "inspect" else args))
    # The docker command adds its own "no such image: NAME: " before the engine's.
    assert theirs[2].endswith(ours[2]), (theirs, ours)
    assert ours[0] == theirs[0] == 1
    assert ours[2].startswith("No such image: ")


def test_an_ambiguous_id_prefix_names_no_image_as_in_docker(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    # Seventeen images: two of them share a first hex digit, whatever their IDs.
    ids = [_import(docker_engine, {"n": b"%d" % i}) for i in range(17)]
    try:
        archive = tmp_path / "many.tar"
        docker_engine.run("save", "-o", archive, *ids)
        root = tmp_path / "store"
        ocistore_cli("--root", root, "load", "-q", "-i", archive)
        firsts = [i[7] for i in ids]
        shared = next(c for c in firsts if firsts.count(c) > 1)
        pair = Pair(docker_engine, root)
        for command in ("history", "rmi"):
            theirs, ours = pair.both(command, shared)
            assert ours == theirs
            assert ours == (1, "", f"No such image: {shared}:latest")
    finally:
        docker_engine.run("rmi", "-f", *ids, check=False)


def test_a_bad_reference_is_dockers_reference_error(pair: Pair) -> None:
    theirs, ours = pair.both("tag", "t-cmd/a:1", "t-cmd/UPPER:1")
    assert ours[0] == theirs[0] == 1
    assert theirs[2].endswith(ours[2])  # docker's command prefixes its own words
    assert ours[2] == "invalid reference format: repository name (t-cmd/UPPER) must be lowercase"


def _archive(path: Path, entries: list[tuple[bytes, list[str] | None]]) -> Path:
    """A docker-archive of one-layer images, in this manifest order, with these tags."""
    import hashlib
    import io

    manifest = []
    members: dict[str, bytes] = {}
    for files, tags in entries:
        layer = make_tar({"f": files})
        diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "created": "2026-01-01T00:00:00Z",
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "test"}],
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        layer_name = diff_id[7:] + "/layer.tar"
        members[config_name] = config
        members[layer_name] = layer
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": [layer_name]})
    members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "tags",
    [
        [["t-cmd/l:1"], None],  # the last untagged: every image's ID is told
        [None, ["t-cmd/l:1"]],  # the last tagged: only tags
        [None, None],
        [["t-cmd/l:1", "t-cmd/l:2"], ["t-cmd/m:1"]],
    ],
    ids=["tagged-untagged", "untagged-tagged", "untagged", "tagged"],
)
def test_load_says_what_docker_load_says(
    docker_engine: DockerEngine, tmp_path: Path, tags: list[list[str] | None]
) -> None:
    archive = _archive(tmp_path / "a.tar", [(b"x%d" % i, t) for i, t in enumerate(tags)])
    theirs = docker_engine.run("load", "-i", archive)
    try:
        root = tmp_path / "store"
        with open(archive, "rb") as stdin:  # no -i: standard input, as docker load
            ours = subprocess.run(
                [str(OCISTORE), "--root", str(root), "load", "-q"],
                stdin=stdin,
                capture_output=True,
                text=True,
                check=True,
            )
        assert ours.stdout == theirs.stdout
    finally:
        loaded = [line.split(": ", 1)[1] for line in theirs.stdout.splitlines()]
        docker_engine.run("rmi", "-f", *loaded, check=False)


def test_load_of_a_missing_file(docker_engine: DockerEngine, tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar"
    theirs = docker_engine.run("load", "-i", missing, check=False)
    ours = subprocess.run(
        [str(OCISTORE), "--root", str(tmp_path / "store"), "load", "-i", str(missing)],
        capture_output=True,
        text=True,
    )
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == f"ocistore: open {missing}: no such file or directory\n"
    assert theirs.stderr.strip() == f"open {missing}: no such file or directory"


def test_the_image_subcommands_are_the_commands(pair: Pair) -> None:
    """docker image ls, inspect, history, rm, tag are images, inspect, history, rmi, tag."""
    listing = ["--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}", "t-cmd/*"]
    # (Images made in one second: Docker lists them in any order.)
    theirs, ours = pair.both("image", "ls", *listing)
    assert sorted(ours[1].splitlines()) == sorted(theirs[1].splitlines())
    assert ours[1] == pair.both("images", *listing)[1][1]
    theirs, ours = pair.both("image", "history", "-q", "t-cmd/d:1")
    assert ours == theirs
    theirs, ours = pair.both("image", "tag", "t-cmd/d:1", "t-cmd/e:1")
    assert ours == theirs
    theirs, ours = pair.both("image", "rm", "t-cmd/e:1")
    assert ours == theirs == (0, "Untagged: t-cmd/e:1\n", "")
