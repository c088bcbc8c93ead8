"""``images`` against a real Docker engine, and its rules without one.

The images compared are made here as a docker-archive with fixed creation times (years
ago, so that CREATED reads the same whenever the test runs; two in the same second; one
with no time at all), labels, several names of one image, a dangling image and an
intermediate one with a child; ``docker load`` and ``ocistore load`` read the same
archive. The engine's own images (the session's ``lab/`` ones, other tests') are left out
of what is compared by their IDs or by a reference filter. Docker orders images created in
the same second, and the repositories of one image, at random (a Go map's order): rows
are compared in the order given, except inside such groups.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from docker_engine import DockerEngine
from util import make_tar, ocistore_cli

from ocistore.cli import main as cli
from ocistore.cli import templates, views
from ocistore.errors import InvalidInput
from ocistore.spec.digest import Digest, ImageID
from ocistore.spec.gotime import ZERO_UNIX
from ocistore.store.images import ImageRecord

OCISTORE = Path(sys.executable).parent / "ocistore"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Crafted(NamedTuple):
    """An image of the archive: its config's creation time, labels, names, parent."""

    key: str
    created: str | None
    labels: dict[str, str]
    tags: list[str]
    parent: str | None = None  # the key of its parent (whose layers it extends)


CRAFTED = [
    Crafted(
        "old",
        "2020-01-01T00:00:00Z",
        {"team": "a"},
        ["t-images/old:1", "t-images/old:2", "t-images/other:x"],
    ),
    Crafted("mid", "2021-06-01T12:00:00.25Z", {"team": "b", "x": "1"}, ["t-images/mid:1"]),
    Crafted("new", "2022-03-01T00:00:00.5Z", {}, ["t-images/new:1"]),
    # the same second as "new", earlier by 0.4 s: docker's ties, and before=/since= on
    # the time itself
    Crafted("tie", "2022-03-01T00:00:00.1Z", {"team": "a"}, ["t-images/tie:a"]),
    Crafted("dangling", "2019-05-05T05:05:05Z", {}, []),
    Crafted("zero", None, {}, ["t-images/zero:1"]),
    Crafted("parent", "2018-01-01T00:00:00Z", {}, []),
    Crafted("child", "2018-01-01T00:00:01Z", {}, ["t-images/child:1"], parent="parent"),
]


class Images(NamedTuple):
    archive: Path
    store: Path
    #: Each crafted image's full ID, by key.
    ids: dict[str, str]
    #: Each image's creation time in whole seconds, by 12-hex ID (Go's zero time if none).
    seconds: dict[str, int]


def craft_archive() -> tuple[bytes, dict[str, str]]:
    """A docker-archive of :data:`CRAFTED` (a base layer each, a second for a child)."""
    base = make_tar({"etc/base": b"base\n"}, dirs=True)
    extra = make_tar({"etc/child": b"child\n"}, dirs=True)
    members: dict[str, bytes] = {
        f"{sha(base)[7:]}/layer.tar": base,
        f"{sha(extra)[7:]}/layer.tar": extra,
    }
    manifest: list[dict[str, Any]] = []
    ids: dict[str, str] = {}
    for image in CRAFTED:
        layers = [base, extra] if image.parent else [base]
        config: dict[str, Any] = {
            "architecture": "amd64",
            "config": {"Labels": image.labels or None, "Env": ["K=" + image.key]},
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
        }
        if image.created is not None:
            config["created"] = image.created
        raw = json.dumps(config, sort_keys=True).encode()
        ids[image.key] = sha(raw)
        members[f"{sha(raw)[7:]}.json"] = raw
        entry: dict[str, Any] = {
            "Config": f"{sha(raw)[7:]}.json",
            "RepoTags": image.tags or None,
            "Layers": [f"{sha(layer)[7:]}/layer.tar" for layer in layers],
        }
        if image.parent:
            entry["Parent"] = ids[image.parent]
        manifest.append(entry)
    members["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), ids


@pytest.fixture(scope="module")
def images(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Images]:
    tmp = tmp_path_factory.mktemp("images")
    data, ids = craft_archive()
    archive = tmp / "crafted.tar"
    archive.write_bytes(data)
    docker_engine.run("load", "-i", archive)
    store = tmp / "store"
    ocistore_cli("--root", store, "load", "-q", "-i", archive)
    seconds = {ids[c.key][7:19]: views.created_seconds(c.created or "") for c in CRAFTED}
    yield Images(archive, store, ids, seconds)
    docker_engine.run("rmi", "-f", ids["child"], check=False)
    docker_engine.run("rmi", "-f", *(i for k, i in ids.items() if k != "child"), check=False)


def both(
    images: Images, docker_engine: DockerEngine, *args: str, check: bool = True
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    theirs = docker_engine.run("images", *args, check=check)
    ours = ocistore_cli("--root", images.store, "images", *args, check=check)
    return theirs, ours


_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{12})(?:[0-9a-f]{52})?(?![0-9a-f])")


def ours_only(images: Images, lines: list[str]) -> list[str]:
    """The lines about the crafted images (Docker's list has the engine's others too)."""
    return [line for line in lines if (m := _ID.search(line)) and m.group(1) in images.seconds]


def in_docker_order(images: Images, lines: list[str]) -> list[str]:
    """Lines sorted inside each run of images created in the same second (whose order,
    and that of an image's repositories, Docker leaves to a Go map's iteration)."""
    out: list[str] = []
    run: list[str] = []
    last: int | None = None
    for line in lines:
        m = _ID.search(line)
        second = images.seconds.get(m.group(1)) if m else None
        if run and second != last:
            out += sorted(run)
            run = []
        run.append(line)
        last = second
    return out + sorted(run)


def compared(images: Images, text: str, only_ours: bool = True) -> list[str]:
    lines = text.splitlines()
    return in_docker_order(images, ours_only(images, lines) if only_ours else lines)


# -- against the engine ------------------------------------------------------------------


def test_table_is_docker_s(images: Images, docker_engine: DockerEngine) -> None:
    """The default table, its widths (tab writer: at least 10, padding 3), the order
    (by whole seconds), a tag per row, N/A for an image with no creation time."""
    theirs, ours = both(images, docker_engine, "t-images/*")
    assert ours.stdout.splitlines()[0] == theirs.stdout.splitlines()[0]
    assert compared(images, ours.stdout, False)[1:] == compared(images, theirs.stdout, False)[1:]
    assert "N/A" in ours.stdout
    header = ours.stdout.splitlines()[0]
    assert header.startswith("REPOSITORY       TAG       IMAGE ID       CREATED")


@pytest.mark.parametrize(
    "args",
    [
        ["-q"],
        ["-q", "--no-trunc"],
        ["-a", "-q"],
        ["--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}} {{.CreatedAt}}"],
        ["-a", "--format", "{{.ID}}\\t{{.Repository}}\\t{{.Tag}}\\t{{.CreatedSince}}"],
        ["--digests", "--format", "{{.ID}} {{.Digest}} {{.Repository}}"],
        ["--format", "{{json .}}"],
        ["--format", "json"],
        ["-a", "--format", "json"],
        ["--format", "{{.ID}} {{json .Repository}} {{.Size}} {{.VirtualSize}} {{upper .Tag}}"],
        ["-f", "dangling=true", "-q"],
        ["-f", "dangling=false", "-q"],
        ["-a", "-f", "dangling=false", "-q"],
        ["-f", "label=team", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
        ["-f", "label=team=a", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
        ["-f", "label=team=b", "-f", "label=x", "-q"],  # every label (docker ANDs them)
        ["-f", "label=team", "-f", "label=x=1", "-q"],
        ["-f", "Label=x", "-q"],  # the filter's name in any case
        ["-a", "-f", "before=t-images/new:1", "-q"],  # the time itself: tie is before
        ["-a", "-f", "since=t-images/tie:a", "-q"],
        ["-a", "-f", "since=t-images/old:1", "-f", "before=t-images/tie:a", "-q"],
        [
            "-f",
            "reference=t-images/o*",
            "-f",
            "reference=*/new:1",
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
        ],
        ["-f", "reference=t-images/old:2", "-q"],
    ],
)
def test_rows_are_docker_s(images: Images, docker_engine: DockerEngine, args: list[str]) -> None:
    theirs, ours = both(images, docker_engine, *args)
    assert ours.stderr == ""
    assert compared(images, ours.stdout) == compared(images, theirs.stdout)
    assert compared(images, ours.stdout), "nothing of ours listed"


@pytest.mark.parametrize(
    "args",
    [
        ["t-images/*"],
        ["t-images/old"],
        ["t-images/old:1"],
        ["*/old:?"],
        ["t-images/[mn]*"],
        ["t-images/[^o]*:1"],
        ["t-images/*", "--format", "{{.Repository}}:{{.Tag}}"],
        ["t-images/*", "--format", "table {{.ID}}\\t{{.Size}}"],
        ["t-images/*", "--format", "table {{.Repository}}:{{.Tag}}\\t{{json .Size}}\\t"],
        ["t-images/*", "--format", "table"],
        ["t-images/*", "--digests"],
        ["t-images/*", "--no-trunc"],
        ["t-images/*", "--format", "table {{.Tag}}\\t{{.Repository}}", "--digests"],
        ["t-images/nothing*"],
        ["docker.io/t-images/old"],  # the familiar name is matched, not the full one
        ["-f", "dangling=true", "-f", "reference=*", "-q"],
        ["-f", "label=team=a", "-f", "label=x", "-q"],
    ],
)
def test_references_and_tables_are_docker_s(
    images: Images, docker_engine: DockerEngine, args: list[str]
) -> None:
    theirs, ours = both(images, docker_engine, *args)
    assert compared(images, ours.stdout, False) == compared(images, theirs.stdout, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "foo=bar"], "Invalid filter 'foo'"),
        (["-f", "dangling=maybe"], "Invalid filter 'dangling=[maybe]'"),
        (["t-images/["], "syntax error in pattern"),
        (
            ["--format", "{{.Foo}}"],
            'template: :1:2: executing "" at <.Foo>: can\'t evaluate field Foo in type '
            "*formatter.imageContext",
        ),
        (
            ["--format", "{{json .Labels}}"],
            "can't evaluate field Labels in type *formatter.imageContext",
        ),
        (["--format", "{{.ID"], "template parsing error: template: :1: unclosed action"),
    ],
)
def test_errors_are_docker_s(
    images: Images, docker_engine: DockerEngine, args: list[str], message: str
) -> None:
    theirs, ours = both(images, docker_engine, *args, check=False)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert message in theirs.stderr
    assert (
        ours.stderr
        == f"ocistore: {theirs.stderr.strip().removeprefix('Error response from daemon: ')}\n"
    )
    assert ours.stdout == ""


def test_an_unknown_image_in_before_is_an_error(
    images: Images, docker_engine: DockerEngine
) -> None:
    theirs, ours = both(images, docker_engine, "-f", "before=t-images/nosuch", check=False)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert "No such image: t-images/nosuch" in ours.stderr


# -- without an engine -------------------------------------------------------------------


def record(created: str, hex: str = "ab" * 32) -> ImageRecord:
    return ImageRecord(
        ImageID(Digest(f"sha256:{hex}")), created, "", 3_000_000, None, "linux", "amd64"
    )


def rendered(format: str, names: list[str], digests: bool = False) -> list[str]:
    final = views.images_format(format, False, digests)
    rows = views.image_rows(
        [(record("2020-01-01T00:00:00Z"), names)],
        digests=digests,
        need_digest=digests or "{{.Digest}}" in final,
        now=1_700_000_000,
    )
    template = templates.parse(final)
    return [template.render(row) for row in rows]


D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_rows_of_tags_and_digests_as_docker_s_formatter() -> None:
    """docker/cli's imageFormatTaggedAndDigest: a row per tag; with digests shown, one
    per tag and digest of its repository, and one per digest of a repository only
    named by digest; without, the digest-only repository once, its digest empty."""
    names = ["a:1", "a:2", f"a@{D1}", f"b@{D1}", f"b@{D2}"]
    f = "{{.Repository}} {{.Tag}} {{.Digest}}"
    assert rendered(f, names) == [f"a 1 {D1}", f"a 2 {D1}", "b <none> "]
    assert rendered("{{.Repository}} {{.Tag}}", names) == ["a 1", "a 2", "b <none>"]
    assert rendered(f, names, digests=True) == [
        f"a 1 {D1}",
        f"a 2 {D1}",
        f"b <none> {D1}",
        f"b <none> {D2}",
    ]
    assert rendered(f, []) == ["<none> <none> <none>"]


def test_json_row_keys_and_values() -> None:
    (line,) = rendered("{{json .}}", ["lab/x:1"])
    assert json.loads(line) == {
        "Containers": "N/A",
        "CreatedAt": views.go_local_time(1577836800),
        "CreatedSince": views.since_seconds(1577836800, 1_700_000_000),
        "Digest": "<none>",
        "ID": "abababababab",
        "Repository": "lab/x",
        "SharedSize": "N/A",
        "Size": "3MB",
        "Tag": "1",
        "UniqueSize": "N/A",
        "VirtualSize": "3MB",
    }
    assert "\\u003cnone\\u003e" in line  # json.Marshal's HTML escapes, as docker


def test_go_local_time_is_go_s_time_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    try:
        assert views.go_local_time(1796156568) == "2026-12-01 20:22:48 +0000 UTC"
        assert views.go_local_time(ZERO_UNIX) == "0001-01-01 00:00:00 +0000 UTC"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_created_seconds_and_nanoseconds() -> None:
    assert views.created_seconds("2022-03-01T00:00:00.9Z") == 1646092800
    assert views.created_seconds("2022-03-01T01:00:00.9+01:00") == 1646092800
    assert views.created_seconds("") == ZERO_UNIX
    assert cli.created_ns("2022-03-01T00:00:00.123456789Z") == 1646092800_123456789
    assert cli.created_ns("2022-03-01T00:00:00.1Z") == 1646092800_100000000
    assert cli.created_ns("2022-03-01T00:00:00Z") == 1646092800_000000000


def test_images_format_as_docker_s_new_image_format() -> None:
    assert views.images_format(None, False, False) == views.IMAGES_TABLE
    assert views.images_format("table", False, True) == views.IMAGES_TABLE_WITH_DIGEST
    assert views.images_format(None, True, True) == "{{.ID}}"
    assert views.images_format("{{.Tag}}", True, False) == "{{.Tag}}"  # a format wins over -q
    assert views.images_format("table {{.ID}}", False, True) == "table {{.ID}}\t{{.Digest}}"
    assert views.images_format("json", True, False) == "json"


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("lab/*", "lab/app:1", True),  # by the repository
        ("lab/*", "lab/sub/app:1", False),  # * stops at /
        ("*", "busybox:latest", True),
        ("*/*", "busybox:latest", False),
        ("lab/app", "lab/app:1", True),
        ("lab/app:?", "lab/app:1", True),
        ("lab/app:[0-9]", "lab/app:1", True),
        ("lab/app:[^0-9]", "lab/app:1", False),
        ("lab/[ab]pp", "lab/app:1", True),
        ("lab/\\app", "lab/app:1", True),
        ("lab/app", f"lab/app@{D1}", True),
        ("lab/app:1", "lab/app:10", False),
    ],
)
def test_reference_patterns_are_go_s_path_match(pattern: str, name: str, matched: bool) -> None:
    assert cli._reference_matches(cli.go_path_pattern(pattern), name) is matched


@pytest.mark.parametrize("pattern", ["[", "a[", "[]", "[a-]", "a\\", "[z-a]"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidInput, match="syntax error in pattern"):
        cli.go_path_pattern(pattern)


def test_order_is_by_whole_seconds_and_stable() -> None:
    """Sorted on whole seconds: an image with a later fraction in the same second keeps
    the store's order, and an offset time sorts by its instant, not its text."""
    a = record("2022-03-01T00:00:00.1Z", "a" * 64)
    b = record("2022-03-01T00:00:00.9Z", "b" * 64)
    c = record("2022-03-01T01:30:00+02:00", "c" * 64)  # 23:30 the day before
    d = record("2022-02-28T23:45:00Z", "d" * 64)
    listed = cli.select_images(None, [(a, ["x:1"]), (b, ["y:1"]), (c, ["z:1"]), (d, ["w:1"])])  # type: ignore[arg-type]
    assert [rec.id.hex[0] for rec, _ in listed] == ["a", "b", "d", "c"]
