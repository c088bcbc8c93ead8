"""``ocistore serve``'s registry API over real sockets: the pull side of the distribution
spec as clients read it (headers, negotiation, ranges, pagination, referrers, errors),
Basic auth and TLS, and the store changed by other processes while it serves.

Most tests talk to a server in this process (``serve_inprocess.serving``); those about the
command itself, its TLS and the store beside it run ``ocistore serve`` as a process."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import ssl
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from serve_inprocess import (
    ACCEPT_ALL,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    WAIT,
    Layout,
    Reply,
    Server,
    import_tar,
    layer_tar,
    load,
    parse_multipart,
    serve_command,
    serving,
    sha256,
)
from util import ocistore_cli

from ocistore.spec.digest import Digest, ImageID
from ocistore.store import Store

API_HEADER = ("docker-distribution-api-version", "registry/2.0")
SIG_TYPE = "application/vnd.example.signature"
TAGS = sorted(
    ["1", "10", "9", "A", "B_x", "a", "a.b", "latest", "v1.0", "v1.0-rc.1", "z"]
    + [f"t{i:03}" for i in range(30)]
)


class World:
    """The store the read-only tests share, and what is in it."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        rng = random.Random(14)
        self.blob_data = rng.randbytes(200_000)
        lay = Layout(work / "layout")
        self.app = lay.image(
            {"app": b"the app\n", "data": self.blob_data}, name="example.com/x/app:1"
        )
        subject = {
            "mediaType": OCI_MANIFEST,
            "digest": self.app["digest"],
            "size": len(self.app["manifest"]),
        }
        self.signed = lay.image(
            {"sig": b"signature\n"},
            name="example.com/x/app:sig",
            label="sig",
            extra={
                "subject": subject,
                "artifactType": SIG_TYPE,
                "annotations": {"org.example.kind": "signature"},
            },
        )
        self.sbom = lay.image(
            {"sbom": b"sbom\n"},
            name="example.com/x/app:sbom",
            label="sbom",
            extra={"subject": subject},
        )
        self.docker = lay.image({"d": b"docker\n"}, name="example.com/x/docker:1", docker=True)
        self.nested = lay.image({"n": b"nested\n"}, name="example.com/a/b/c/d:1", label="nested")
        self.odd = lay.image({"o": b"odd\n"}, name="example.com/team/blobs/app:1", label="odd")
        self.other = lay.image({"other": b"other\n"}, name="example.com/y/other:1", label="y")
        lay.write()
        load(root, lay.directory)
        self.imported_tar = layer_tar({"etc/hostname": b"imported\n"})
        self.imported = import_tar(root, self.imported_tar, "busybox:1")
        with Store(root) as store:
            for tag in TAGS:
                store.tag("example.com/y/other:1", f"many/tags:{tag}")
            for i in range(25):
                store.tag("example.com/y/other:1", f"cat/r{i:02}:1")
            store.tag("example.com/y/other:1", "localhost:5000/ported/app:1")

    @property
    def blob(self) -> tuple[str, bytes]:
        """The app's layer blob (gzip of random data: some 200 kB)."""
        digest, data = self.app["layer"]
        return digest, data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    work = tmp_path_factory.mktemp("serve")
    return World(work / "store", work)


@pytest.fixture(scope="module")
def srv(world: World) -> Iterator[Server]:
    with serving(world.root) as server:
        yield server


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.error_code() == code, reply.body
    assert int(reply.headers["content-length"]) == len(reply.body)
    entry: dict[str, Any] = reply.json()["errors"][0]
    return entry


# --- the base, manifests --------------------------------------------------------------------


def test_base(srv: Server) -> None:
    reply = srv.get("/v2/")
    assert reply.status == 200
    assert reply.body == b"{}"
    assert reply.headers[API_HEADER[0]] == API_HEADER[1]
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["content-length"] == "2"
    head = srv.head("/v2/")
    assert head.status == 200 and head.body == b""
    assert head.headers == reply.headers


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_manifest_get_and_head(srv: Server, world: World, by: str) -> None:
    ref = "1" if by == "tag" else world.app["digest"]
    path = f"/v2/example.com/x/app/manifests/{ref}"
    reply = srv.get(path, Accept=ACCEPT_ALL)
    assert reply.status == 200
    assert reply.body == world.app["manifest"]  # byte for byte as the layout had it
    assert reply.headers["content-type"] == OCI_MANIFEST
    assert reply.headers["docker-content-digest"] == world.app["digest"] == sha256(reply.body)
    assert reply.headers["etag"] == f'"{world.app["digest"]}"'
    assert reply.headers["content-length"] == str(len(reply.body))
    assert reply.headers[API_HEADER[0]] == API_HEADER[1]
    head = srv.head(path, Accept=ACCEPT_ALL)
    assert head.status == 200 and head.body == b""
    assert head.headers == reply.headers


def test_if_none_match(srv: Server, world: World) -> None:
    digest = world.app["digest"]
    path = "/v2/example.com/x/app/manifests/1"
    for etag in (f'"{digest}"', f'W/"{digest}"', f'"sha256:{"0" * 64}", "{digest}"', "*"):
        for method in ("GET", "HEAD"):
            reply = srv.request(method, path, {"Accept": OCI_MANIFEST, "If-None-Match": etag})
            assert reply.status == 304, etag
            assert reply.body == b""
            assert reply.headers["etag"] == f'"{digest}"'
            assert reply.headers["docker-content-digest"] == digest
    reply = srv.get(path, Accept=OCI_MANIFEST, If_None_Match=f'"sha256:{"0" * 64}"')
    assert reply.status == 200 and reply.body == world.app["manifest"]
    blob, _ = world.blob
    reply = srv.get(f"/v2/example.com/x/app/blobs/{blob}", If_None_Match=f'"{blob}"')
    assert reply.status == 304 and reply.body == b""
    assert reply.headers["etag"] == f'"{blob}"'


@pytest.mark.parametrize(
    "accept",
    [
        "",
        DOCKER_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/json, */*",
    ],
)
def test_an_oci_manifest_needs_oci_in_accept(srv: Server, accept: str) -> None:
    for method in ("GET", "HEAD"):
        reply = srv.request(
            method, "/v2/example.com/x/app/manifests/1", {"Accept": accept} if accept else {}
        )
        assert reply.status == 404
        if method == "GET":
            entry = assert_error(reply, 404, "MANIFEST_UNKNOWN")
            assert "accept header does not support OCI manifests" in entry["message"]
            assert entry["detail"] == {"name": "example.com/x/app", "reference": "1"}


@pytest.mark.parametrize(
    "accept",
    [
        OCI_MANIFEST,
        f"{DOCKER_MANIFEST}, {OCI_MANIFEST}",
        f"{DOCKER_MANIFEST};q=0.9, {OCI_MANIFEST.upper()}; q=0.5",
        f"{OCI_INDEX},{OCI_MANIFEST}",
    ],
)
def test_oci_accepted(srv: Server, world: World, accept: str) -> None:
    reply = srv.request("GET", "/v2/example.com/x/app/manifests/1", {"Accept": accept})
    assert reply.status == 200 and reply.body == world.app["manifest"]


@pytest.mark.parametrize("accept", ["", DOCKER_MANIFEST, ACCEPT_ALL])
def test_a_docker_manifest_is_served_with_its_own_type(
    srv: Server, world: World, accept: str
) -> None:
    for ref in ("1", world.docker["digest"]):
        reply = srv.request("GET", f"/v2/example.com/x/docker/manifests/{ref}", {"Accept": accept})
        assert reply.status == 200
        assert reply.headers["content-type"] == DOCKER_MANIFEST
        assert reply.body == world.docker["manifest"]
        assert reply.headers["docker-content-digest"] == world.docker["digest"]


def test_a_manifest_is_generated_once_and_kept(world: World, tmp_path: Path) -> None:
    """An image imported (no manifest) gets one: the same digest across requests and
    across servers, kept in the store; its config and layer are served under it."""
    path = "/v2/library/busybox/manifests/1"
    with serving(world.root) as first:
        a = first.get(path, Accept=OCI_MANIFEST)
        b = first.get(path, Accept=OCI_MANIFEST)
    assert a.status == 200 and a.body == b.body
    assert a.headers["content-type"] == OCI_MANIFEST
    digest = a.headers["docker-content-digest"]
    assert digest == sha256(a.body)
    with Store(world.root) as store:
        assert store.kept_manifest(ImageID(world.imported)) == digest
    with serve_command(world.root) as cmd:
        c = cmd.server.get(path, Accept=OCI_MANIFEST)
        by_digest = cmd.server.get(f"/v2/library/busybox/manifests/{digest}", Accept=OCI_MANIFEST)
    assert c.body == a.body and c.headers["docker-content-digest"] == digest
    assert by_digest.status == 200 and by_digest.body == a.body
    doc = json.loads(a.body)
    assert doc["config"]["digest"] == world.imported
    [layer] = doc["layers"]
    with serving(world.root) as again:
        config = again.get(f"/v2/busybox/blobs/{world.imported}")
        blob = again.get(f"/v2/busybox/blobs/{layer['digest']}")
    assert config.status == 200 and sha256(config.body) == world.imported
    assert len(config.body) == doc["config"]["size"]
    assert blob.status == 200 and sha256(blob.body) == layer["digest"]
    assert blob.body == world.imported_tar and len(blob.body) == layer["size"]


def test_keep_alive_serves_many_requests_on_one_connection(srv: Server, world: World) -> None:
    blob, data = world.blob
    conn = srv.connection()
    try:
        for _ in range(3):
            m = srv.request(
                "GET", "/v2/example.com/x/app/manifests/1", {"Accept": ACCEPT_ALL}, conn
            )
            assert m.body == world.app["manifest"]
            h = srv.request("HEAD", f"/v2/example.com/x/app/blobs/{blob}", None, conn)
            assert h.status == 200 and h.headers["content-length"] == str(len(data))
            b = srv.request("GET", f"/v2/example.com/x/app/blobs/{blob}", None, conn)
            assert b.body == data
            r = srv.request(
                "GET", f"/v2/example.com/x/app/blobs/{blob}", {"Range": "bytes=5-9"}, conn
            )
            assert r.status == 206 and r.body == data[5:10]
            e = srv.request("GET", "/v2/nothing/here/manifests/1", None, conn)
            assert e.status == 404
            n = srv.request(
                "GET",
                "/v2/example.com/x/app/manifests/1",
                {"If-None-Match": "*", "Accept": OCI_MANIFEST},
                conn,
            )
            assert n.status == 304
    finally:
        conn.close()


# --- blobs ----------------------------------------------------------------------------------


def test_blob_get_and_head(srv: Server, world: World) -> None:
    blob, data = world.blob
    path = f"/v2/example.com/x/app/blobs/{blob}"
    reply = srv.get(path)
    assert reply.status == 200
    assert reply.body == data and sha256(reply.body) == blob
    assert reply.headers["docker-content-digest"] == blob
    assert reply.headers["content-length"] == str(len(data))
    assert reply.headers["accept-ranges"] == "bytes"
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["etag"] == f'"{blob}"'
    head = srv.head(path)
    assert head.status == 200 and head.body == b"" and head.headers == reply.headers


def test_the_config_blob_is_served(srv: Server, world: World) -> None:
    for image, name in ((world.app, "example.com/x/app"), (world.docker, "example.com/x/docker")):
        digest, config = image["config"]
        reply = srv.get(f"/v2/{name}/blobs/{digest}")
        assert reply.status == 200 and reply.body == config
        assert reply.headers["docker-content-digest"] == digest


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=0-9", 0, 10),
        ("bytes=100-199", 100, 200),
        ("bytes=1000-", 1000, None),
        ("bytes=-5", -5, None),
        ("bytes=0-", 0, None),
        ("bytes=-99999999999", 0, None),  # (a suffix longer than the blob: all of it)
        ("bytes=10-99999999999999", 10, None),  # (an end past the end: to the end)
        ("bytes= 7 - 8 ", 7, 9),
        ("Bytes=3-4", 3, 5),
        ("bytes=3-4,", 3, 5),
    ],
)
def test_single_range(srv: Server, world: World, header: str, start: int, end: int | None) -> None:
    blob, data = world.blob
    size = len(data)
    want = data[start:end]
    first = start % size
    path = f"/v2/example.com/x/app/blobs/{blob}"
    reply = srv.get(path, Range=header)
    assert reply.status == 206, reply.body
    assert reply.body == want
    assert reply.headers["content-range"] == f"bytes {first}-{first + len(want) - 1}/{size}"
    assert reply.headers["content-length"] == str(len(want))
    assert reply.headers["docker-content-digest"] == blob
    head = srv.head(path, Range=header)
    assert head.status == 206 and head.body == b""
    assert head.headers["content-range"] == reply.headers["content-range"]
    assert head.headers["content-length"] == str(len(want))


@pytest.mark.parametrize(
    "ranges",
    [
        [(0, 1), (5, 10)],
        [(0, 10), (100, 200), (-3, None)],
        [(7, 8), (7, 8)],  # (the same twice: each given, as Go's ServeContent does)
        [(50_000, None), (0, 10)],  # (in the order asked)
    ],
)
def test_multiple_ranges(srv: Server, world: World, ranges: list[tuple[int, int | None]]) -> None:
    blob, data = world.blob
    size = len(data)
    spec = []
    for start, end in ranges:
        if start < 0:
            spec.append(f"{start}")
        else:
            spec.append(f"{start}-{'' if end is None else end - 1}")
    reply = srv.get(f"/v2/example.com/x/app/blobs/{blob}", Range="bytes=" + ",".join(spec))
    assert reply.status == 206
    assert "content-range" not in reply.headers
    assert int(reply.headers["content-length"]) == len(reply.body)
    parts = parse_multipart(reply)
    expected = []
    for start, end in ranges:
        piece = data[start:end]
        first = start % size
        expected.append((f"bytes {first}-{first + len(piece) - 1}/{size}", piece))
    assert parts == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes={size}-",  # (just past the end)
        "bytes={size}-{size}",
        "bytes=999999999-1000000000",
        "bytes=99999999999999999999999999999999-",
        "bytes=0-99999999999999999999999999999999",
        "bytes=-0",
        "bytes=5-2",
        "bytes=abc",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=0x10-0x20",
        "bytes=+1-2",
        "bytes=-+5",
        "bytes=1--2",
        "bytes=",
        "bytes=,",
        "bytes={size}-,{end}-{end}",
        "bytes=1-2,abc",
    ],
)
def test_unsatisfiable_or_malformed_range_is_416(srv: Server, world: World, header: str) -> None:
    blob, data = world.blob
    header = header.format(size=len(data), end=len(data) * 2)
    for method in ("GET", "HEAD"):
        reply = srv.request(method, f"/v2/example.com/x/app/blobs/{blob}", {"Range": header})
        assert reply.status == 416, (header, reply.status)
        assert reply.headers["content-range"] == f"bytes */{len(data)}"
        if method == "GET":
            assert_error(reply, 416, "RANGE_INVALID")


@pytest.mark.parametrize("header", ["items=0-5", "bytes 0-5", "0-5", "bytes=0-,0-1"])
def test_a_range_not_understood_or_larger_than_the_blob_gives_it_whole(
    srv: Server, world: World, header: str
) -> None:
    blob, data = world.blob
    reply = srv.get(f"/v2/example.com/x/app/blobs/{blob}", Range=header)
    assert reply.status == 200 and reply.body == data
    assert "content-range" not in reply.headers


def test_thousands_of_ranges(srv: Server, world: World) -> None:
    blob, data = world.blob
    path = f"/v2/example.com/x/app/blobs/{blob}"
    # Over the limit of ranges served: the whole blob (a server may).
    many = srv.get(path, Range="bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(1500)))
    assert many.status == 200 and many.body == data
    overlapping = srv.get(path, Range="bytes=" + ",".join(["0-"] * 2000))
    assert overlapping.status == 200 and overlapping.body == data
    empty = srv.get(path, Range="bytes=" + "," * 10000 + "0-1")
    assert empty.status in (200, 206, 416)
    if empty.status == 200:
        assert empty.body == data
    # At the limit: every range, in a multipart body.
    ranges = [(i * 37, i * 37 + 5) for i in range(1000)]
    reply = srv.get(path, Range="bytes=" + ",".join(f"{s}-{e - 1}" for s, e in ranges))
    assert reply.status == 206
    parts = parse_multipart(reply)
    assert [p[1] for p in parts] == [data[s:e] for s, e in ranges]
    srv.assert_serving()


# --- tags, catalog, names -------------------------------------------------------------------


def follow(srv: Server, path: str, key: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page of a paginated list, following the Link headers."""
    items: list[str] = []
    pages: list[dict[str, Any]] = []
    while True:
        reply = srv.get(path)
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"].startswith("application/json")
        doc = reply.json()
        pages.append(doc)
        items.extend(doc[key])
        link = reply.headers.get("link")
        if link is None:
            return items, pages
        target, _, rel = link.partition(";")
        assert rel.strip() == 'rel="next"', link
        assert target.startswith("<") and target.endswith(">"), link
        path = target[1:-1]
        assert path.startswith("/v2/")


def test_tags_list_sorted_and_paginated(srv: Server) -> None:
    reply = srv.get("/v2/many/tags/tags/list")
    assert reply.status == 200
    assert reply.json() == {"name": "many/tags", "tags": TAGS}
    assert "link" not in reply.headers
    for n in (1, 7, len(TAGS) - 1, len(TAGS), len(TAGS) + 5):
        items, pages = follow(srv, f"/v2/many/tags/tags/list?n={n}", "tags")
        assert items == TAGS
        assert all(len(p["tags"]) <= n for p in pages)
        assert all(p["name"] == "many/tags" for p in pages)
        assert len(pages) == -(-len(TAGS) // n)
    # containerd's ns stays in the next pages' links (the same registry's repository)
    items, pages = follow(srv, "/v2/many/tags/tags/list?ns=docker.io&n=8", "tags")
    assert items == TAGS
    first = srv.get("/v2/many/tags/tags/list?ns=docker.io&n=8")
    assert "ns=docker.io" in first.headers["link"]
    after = srv.get("/v2/many/tags/tags/list?last=a&n=3").json()
    assert after["tags"] == [t for t in TAGS if t > "a"][:3]
    assert srv.get("/v2/many/tags/tags/list?last=zzz").json()["tags"] == []
    assert srv.get("/v2/many/tags/tags/list?n=0").json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "x", "1e3", "99999999999999999999", "²", "٣", " 1", "1.0"])
def test_a_bad_page_size_is_refused(srv: Server, n: str) -> None:
    for path in ("/v2/many/tags/tags/list", "/v2/_catalog"):
        reply = srv.get(f"{path}?n={urllib.parse.quote(n)}")
        assert_error(reply, 400, "PAGINATION_NUMBER_INVALID")


def test_catalog(srv: Server) -> None:
    reply = srv.get("/v2/_catalog")
    names = reply.json()["repositories"]
    assert names == sorted(names)
    assert {
        "library/busybox",
        "many/tags",
        "example.com/x/app",
        "example.com/x/docker",
        "example.com/a/b/c/d",
        "example.com/team/blobs/app",
        "example.com/y/other",
    } <= set(names)
    assert [n for n in names if n.startswith("cat/")] == [f"cat/r{i:02}" for i in range(25)]
    for n in (1, 4, 10):
        items, pages = follow(srv, f"/v2/_catalog?n={n}", "repositories")
        assert items == names
        assert all(len(p["repositories"]) <= n for p in pages)


@pytest.mark.parametrize(
    "name", ["busybox", "library/busybox", "library/busybox?ns=docker.io", "busybox?ns=docker.io"]
)
def test_docker_hub_names_are_one_repository(srv: Server, world: World, name: str) -> None:
    base, _, query = name.partition("?")
    suffix = f"?{query}" if query else ""
    tags = srv.get(f"/v2/{base}/tags/list{suffix}")
    assert tags.status == 200 and tags.json()["tags"] == ["1"]
    reply = srv.get(f"/v2/{base}/manifests/1{suffix}", Accept=OCI_MANIFEST)
    assert reply.status == 200
    with Store(world.root) as store:
        assert reply.headers["docker-content-digest"] == store.kept_manifest(
            ImageID(world.imported)
        )


def test_names_with_several_components(srv: Server, world: World) -> None:
    for name, image in (
        ("example.com/a/b/c/d", world.nested),
        ("example.com/team/blobs/app", world.odd),
    ):
        reply = srv.get(f"/v2/{name}/manifests/1", Accept=OCI_MANIFEST)
        assert reply.status == 200, (name, reply.body)
        assert reply.body == image["manifest"]
        blob, data = image["layer"]
        assert srv.get(f"/v2/{name}/blobs/{blob}").body == data
        assert srv.get(f"/v2/{name}/tags/list").json() == {"name": name, "tags": ["1"]}
        referrers = srv.get(f"/v2/{name}/referrers/{image['digest']}")
        assert referrers.status == 200 and referrers.json()["manifests"] == []
    # containerd's ns: the registry named in the query
    reply = srv.get("/v2/a/b/c/d/manifests/1?ns=example.com", Accept=OCI_MANIFEST)
    assert reply.status == 200 and reply.body == world.nested["manifest"]


def test_a_registry_with_a_port_is_served_by_the_name_the_catalog_lists(
    srv: Server, world: World
) -> None:
    assert "localhost:5000/ported/app" in srv.get("/v2/_catalog").json()["repositories"]
    for path in ("/v2/localhost:5000/ported/app", "/v2/ported/app?ns=localhost:5000"):
        base, _, query = path.partition("?")
        suffix = f"?{query}" if query else ""
        tags = srv.get(f"{base}/tags/list{suffix}")
        assert tags.status == 200 and tags.json()["tags"] == ["1"]
        reply = srv.get(f"{base}/manifests/1{suffix}", Accept=OCI_MANIFEST)
        assert reply.status == 200 and reply.body == world.other["manifest"]
        blob, data = world.other["layer"]
        assert srv.get(f"{base}/blobs/{blob}{suffix}").body == data
    for name in ("localhost:/x", "localhost:5000", "a:b/c", "-a:1/x", "localhost:123456/x"):
        assert_error(srv.get(f"/v2/{name}/tags/list"), 400, "NAME_INVALID")


# --- referrers ------------------------------------------------------------------------------


def test_referrers(srv: Server, world: World) -> None:
    """Manifests of the repository whose subject is the digest (the store keeps image
    manifests with a subject; artifacts with an empty config are not loaded)."""
    path = f"/v2/example.com/x/app/referrers/{world.app['digest']}"
    reply = srv.get(path)
    assert reply.status == 200
    assert reply.headers["content-type"] == OCI_INDEX
    doc = reply.json()
    assert doc["schemaVersion"] == 2 and doc["mediaType"] == OCI_INDEX
    signed = {
        "mediaType": OCI_MANIFEST,
        "digest": world.signed["digest"],
        "size": len(world.signed["manifest"]),
        "artifactType": SIG_TYPE,
        "annotations": {"org.example.kind": "signature"},
    }
    sbom = {
        "mediaType": OCI_MANIFEST,
        "digest": world.sbom["digest"],
        "size": len(world.sbom["manifest"]),
        "artifactType": "application/vnd.oci.image.config.v1+json",  # (its config's type)
    }
    assert sorted(doc["manifests"], key=lambda d: d["digest"]) == sorted(
        [signed, sbom], key=lambda d: d["digest"]
    )
    assert "oci-filters-applied" not in reply.headers
    filtered = srv.get(f"{path}?artifactType={urllib.parse.quote(SIG_TYPE)}")
    assert filtered.headers["oci-filters-applied"] == "artifactType"
    assert filtered.json()["manifests"] == [signed]
    none = srv.get(f"{path}?artifactType=application/vnd.example.none")
    assert none.status == 200 and none.headers["oci-filters-applied"] == "artifactType"
    assert none.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    # Every manifest served as a referrer is fetched by its digest.
    for desc in doc["manifests"]:
        m = srv.get(f"/v2/example.com/x/app/manifests/{desc['digest']}", Accept=OCI_MANIFEST)
        assert m.status == 200 and len(m.body) == desc["size"]
        assert json.loads(m.body)["subject"]["digest"] == world.app["digest"]


def test_referrers_of_nothing(srv: Server, world: World) -> None:
    reply = srv.get(f"/v2/example.com/x/app/referrers/sha256:{'1' * 64}")
    assert reply.status == 200
    assert reply.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    # Referrers are of the repository asked: another's image has none here.
    other = srv.get(f"/v2/example.com/y/other/referrers/{world.app['digest']}")
    assert other.status == 200 and other.json()["manifests"] == []
    assert_error(srv.get(f"/v2/no/such/referrers/{world.app['digest']}"), 404, "NAME_UNKNOWN")
    assert_error(srv.get("/v2/example.com/x/app/referrers/sha256:xyz"), 400, "DIGEST_INVALID")


# --- errors ---------------------------------------------------------------------------------


def test_unknown_names_manifests_and_blobs(srv: Server, world: World) -> None:
    blob, _ = world.blob
    for path in (
        "/v2/no/such/manifests/1",
        f"/v2/no/such/manifests/{world.app['digest']}",
        "/v2/no/such/tags/list",
        f"/v2/no/such/blobs/{blob}",
    ):
        entry = assert_error(srv.get(path), 404, "NAME_UNKNOWN")
        assert entry["detail"] == {"name": "no/such"}
    assert_error(
        srv.get("/v2/example.com/x/app/manifests/2", Accept=ACCEPT_ALL), 404, "MANIFEST_UNKNOWN"
    )
    missing = f"sha256:{'2' * 64}"
    entry = assert_error(
        srv.get(f"/v2/example.com/x/app/manifests/{missing}"), 404, "MANIFEST_UNKNOWN"
    )
    assert entry["detail"] == {"name": "example.com/x/app", "reference": missing}
    # Another repository's manifest, by digest: not under this one.
    assert_error(
        srv.get(f"/v2/example.com/y/other/manifests/{world.app['digest']}", Accept=ACCEPT_ALL),
        404,
        "MANIFEST_UNKNOWN",
    )
    entry = assert_error(srv.get(f"/v2/example.com/x/app/blobs/{missing}"), 404, "BLOB_UNKNOWN")
    assert entry["detail"] == {"digest": missing}
    head = srv.head(f"/v2/example.com/x/app/blobs/{missing}")
    assert head.status == 404 and head.body == b"" and int(head.headers["content-length"]) > 0


def test_a_blob_of_another_repository_is_unknown_here(srv: Server, world: World) -> None:
    """The layer, config and manifest of example.com/x/app are not blobs of y/other (nor of
    docker.io's busybox), though the store has them."""
    for digest in (world.app["layer"][0], world.app["config"][0], world.app["digest"]):
        for name in ("example.com/y/other", "busybox", "many/tags"):
            assert_error(srv.get(f"/v2/{name}/blobs/{digest}"), 404, "BLOB_UNKNOWN")
            head = srv.head(f"/v2/{name}/blobs/{digest}")
            assert head.status == 404
            ranged = srv.get(f"/v2/{name}/blobs/{digest}", Range="bytes=0-1")
            assert ranged.status == 404
    assert srv.get(f"/v2/example.com/x/app/blobs/{world.app['layer'][0]}").status == 200


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        f"sha256:{'A' * 64}",
        f"sha256:{'g' * 64}",
        f"md5:{'0' * 32}",
        f"sha1:{'0' * 40}",
        f"sha384:{'0' * 96}",
        f"sha512:{'0' * 64}",
        f"SHA256:{'0' * 64}",
        f"sha256:{'0' * 65}",
        "sha256:..",
        f"sha256:%2e%2e{'0' * 60}",
        ":",
        "sha256:",
    ],
)
def test_a_malformed_digest_is_digest_invalid(srv: Server, digest: str) -> None:
    for path in (
        f"/v2/example.com/x/app/blobs/{digest}",
        f"/v2/example.com/x/app/manifests/{digest}",
        f"/v2/example.com/x/app/referrers/{digest}",
    ):
        assert_error(srv.get(path), 400, "DIGEST_INVALID")
        assert srv.head(path).status == 400


def test_an_unknown_sha512_is_unknown(srv: Server) -> None:
    digest = f"sha512:{'0' * 128}"
    assert_error(srv.get(f"/v2/example.com/x/app/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert_error(srv.get(f"/v2/example.com/x/app/manifests/{digest}"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    "name",
    ["Busybox", "a//b", "-a", "a-", "a/", "_a", "a__b___c", "a..b", "a/./b", "a b", "%61", "a:b"],
)
def test_an_invalid_name_is_name_invalid(srv: Server, name: str) -> None:
    for kind in ("manifests/1", "tags/list", f"blobs/sha256:{'0' * 64}"):
        reply = srv.get(f"/v2/{urllib.parse.quote(name, safe='/%:')}/{kind}")
        assert_error(reply, 400, "NAME_INVALID")


def test_a_name_too_long_is_name_invalid(srv: Server) -> None:
    name = "/".join(["a" * 50] * 6)
    assert_error(srv.get(f"/v2/{name}/manifests/1"), 400, "NAME_INVALID")


def test_an_invalid_tag_is_tag_invalid(srv: Server) -> None:
    for tag in ("-x", ".x", "x" * 129, "a+b"):
        assert_error(srv.get(f"/v2/example.com/x/app/manifests/{tag}"), 400, "TAG_INVALID")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize(
    "path",
    [
        "/v2/example.com/x/app/manifests/1",
        "/v2/example.com/x/app/blobs/uploads/",
        "/v2/example.com/x/app/blobs/uploads/some-uuid",
        "/v2/example.com/x/app/blobs/sha256:" + "0" * 64,
        "/v2/new/repo/blobs/uploads/?mount=sha256:" + "0" * 64 + "&from=example.com/x/app",
        "/v2/_catalog",
        "/v2/",
    ],
)
def test_writes_are_unsupported(srv: Server, method: str, path: str) -> None:
    reply = srv.request(method, path, {"Content-Length": "0"})
    entry = assert_error(reply, 405, "UNSUPPORTED")
    assert "read-only" in entry["message"]


def test_uploads_are_unsupported_with_get_too(srv: Server) -> None:
    for path in ("/v2/x/blobs/uploads/", "/v2/x/blobs/uploads/some-uuid"):
        assert_error(srv.get(path), 405, "UNSUPPORTED")


def test_a_push_with_a_body_is_unsupported(srv: Server, world: World) -> None:
    """A client pushing sends its manifest or its blob with the request: it is told the
    registry is read-only (405 UNSUPPORTED), the body never read as a request, and the
    connection closed."""
    body = world.app["manifest"]
    head = (
        "PUT /v2/example.com/x/app/manifests/2 HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    replies, closed = srv.exchange(head + body)
    assert len(replies) == 1 and closed
    assert_error(replies[0], 405, "UNSUPPORTED")
    patch = (
        b"PATCH /v2/x/blobs/uploads/uuid HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    replies, closed = srv.exchange(patch + b"\0" * 100_000)
    assert len(replies) == 1 and closed
    assert_error(replies[0], 405, "UNSUPPORTED")
    srv.assert_serving()
    assert srv.get("/v2/example.com/x/app/manifests/2", Accept=ACCEPT_ALL).status == 404


def test_unknown_routes(srv: Server) -> None:
    for path in ("/v2/x/things/1", "/v2/x/tags/other", "/v2/x", "/v3/", "/v2/x/manifests/"):
        reply = srv.get(path)
        assert reply.status == 404, path
    assert srv.get("/favicon.ico").status == 404


# --- authentication, TLS, the command ----------------------------------------------------


def htpasswd_file(tmp_path: Path, users: dict[str, str]) -> Path:
    tool = require_tool("htpasswd")
    lines = []
    for user, password in users.items():
        proc = subprocess.run(
            [tool, "-Bbn", user, password], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        lines.append(proc.stdout.strip())
    path = tmp_path / "htpasswd"
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth(world: World, tmp_path: Path) -> None:
    path = htpasswd_file(tmp_path, {"alice": "wonderland", "bob": "b:u:i:l:d"})
    with serving(world.root, htpasswd=path) as server:
        for headers in (
            {},
            {"Authorization": basic("alice", "wrong")},
            {"Authorization": basic("carol", "wonderland")},
            {"Authorization": basic("alice", "")},
            {"Authorization": "Basic !!!"},
            {"Authorization": "Bearer abc"},
            {"Authorization": "Basic " + "YWxpY2U="},  # (no colon)
        ):
            for path_ in ("/v2/", "/v2/example.com/x/app/manifests/1", "/v2/_catalog", "/"):
                reply = server.request("GET", path_, headers)
                assert_error(reply, 401, "UNAUTHORIZED")
                assert reply.headers["www-authenticate"] == 'Basic realm="ocistore"'
                assert reply.headers[API_HEADER[0]] == API_HEADER[1]
            head = server.request("HEAD", "/v2/", headers)
            assert head.status == 401 and head.body == b""
        conn = server.connection()
        try:
            for user, password in (("alice", "wonderland"), ("bob", "b:u:i:l:d")) * 2:
                auth = {"Authorization": basic(user, password), "Accept": OCI_MANIFEST}
                assert server.request("GET", "/v2/", auth, conn).status == 200
                m = server.request("GET", "/v2/example.com/x/app/manifests/1", auth, conn)
                assert m.status == 200 and m.body == world.app["manifest"]
                bad = server.request("GET", "/v2/", {"Authorization": basic(user, "x")}, conn)
                assert bad.status == 401
        finally:
            conn.close()


def tls_files(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    from cryptography.hazmat.primitives import serialization
    from registry_peer import make_ca

    ca = make_ca(tmp_path / "ca", "ocistore serve test CA")
    key, cert = ca.issue("127.0.0.1", dns=("localhost",), ips=("127.0.0.1",), server=True)
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, ssl.create_default_context(cafile=str(ca.cert_file))


def test_tls(world: World, tmp_path: Path) -> None:
    cert, key, context = tls_files(tmp_path)
    blob, data = world.blob
    with serve_command(world.root, "--tls-cert", cert, "--tls-key", key, client_tls=context) as cmd:
        server = cmd.server
        assert server.get("/v2/").status == 200
        conn = server.connection()
        try:
            for _ in range(2):
                b = server.request("GET", f"/v2/example.com/x/app/blobs/{blob}", None, conn)
                assert b.status == 200 and b.body == data
                r = server.request(
                    "GET",
                    f"/v2/example.com/x/app/blobs/{blob}",
                    {"Range": "bytes=0-9,100-"},
                    conn,
                )
                parts = parse_multipart(r)
                assert [p[1] for p in parts] == [data[:10], data[100:]]
        finally:
            conn.close()
        # Plain HTTP to the TLS port, and a client that does not trust the certificate:
        # refused, and the server serves the next.
        with socket.create_connection((server.host, server.port), timeout=WAIT) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not s.recv(65536).startswith(b"HTTP/1.1 200")
        untrusting = ssl.create_default_context()
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection((server.host, server.port), timeout=WAIT) as s,
        ):
            untrusting.wrap_socket(s, server_hostname="127.0.0.1")
        assert server.get("/v2/").status == 200


def test_tls_in_process(world: World, tmp_path: Path) -> None:
    cert, key, context = tls_files(tmp_path)
    with serving(world.root, tls=(cert, key), client_tls=context) as server:
        replies, closed = server.exchange(
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ["GET", "HEAD", "GET"],
            then_closed=True,
        )
        assert [r.status for r in replies] == [200, 200, 200]
        assert closed


def test_the_command_serves_and_stops(world: World) -> None:
    blob, data = world.blob
    with serve_command(world.root) as cmd:
        server = cmd.server
        base = server.get("/v2/")
        assert base.status == 200 and base.headers[API_HEADER[0]] == API_HEADER[1]
        m = server.get("/v2/example.com/x/app/manifests/1", Accept=OCI_MANIFEST)
        assert m.body == world.app["manifest"]
        assert server.get(f"/v2/example.com/x/app/blobs/{blob}").body == data
        page = server.get("/")
        assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    # SIGINT too
    with serve_command(world.root) as cmd:
        assert cmd.server.get("/v2/").status == 200
        cmd.proc.send_signal(signal.SIGINT)
        assert cmd.proc.wait(WAIT) == 0


# --- the store beside the server -----------------------------------------------------------


def test_the_store_changed_beside_the_server_is_seen_at_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    lay = Layout(tmp_path / "one")
    one = lay.image({"one": b"1\n"}, name="example.com/beside/one:1", label="one")
    lay.write()
    lay2 = Layout(tmp_path / "two")
    two = lay2.image({"two": b"2\n"}, name="example.com/beside/two:1", label="two")
    lay2.write()
    load(root, lay.directory)
    with serve_command(root) as cmd:
        server = cmd.server

        def get(path: str) -> Reply:
            return server.get(path, Accept=ACCEPT_ALL)

        assert get("/v2/example.com/beside/one/manifests/1").body == one["manifest"]
        assert get("/v2/example.com/beside/two/manifests/1").status == 404
        ocistore_cli("--root", root, "load", "-q", "-i", lay2.directory)
        assert get("/v2/example.com/beside/two/manifests/1").body == two["manifest"]
        assert "example.com/beside/two" in get("/v2/_catalog").json()["repositories"]
        ocistore_cli("--root", root, "tag", "example.com/beside/two:1", "example.com/beside/one:2")
        assert get("/v2/example.com/beside/one/manifests/2").body == two["manifest"]
        assert get("/v2/example.com/beside/one/tags/list").json()["tags"] == ["1", "2"]
        assert get(f"/v2/example.com/beside/one/blobs/{two['layer'][0]}").status == 200
        ocistore_cli("--root", root, "rmi", "example.com/beside/one:2")
        assert get("/v2/example.com/beside/one/tags/list").json()["tags"] == ["1"]
        assert get(f"/v2/example.com/beside/one/blobs/{two['layer'][0]}").status == 404
        ocistore_cli("--root", root, "rmi", "example.com/beside/two:1")
        assert_error(get("/v2/example.com/beside/two/manifests/1"), 404, "NAME_UNKNOWN")
        assert get(f"/v2/example.com/beside/two/blobs/{two['layer'][0]}").status == 404
        ocistore_cli("--root", root, "gc")
        assert get(f"/v2/example.com/beside/one/blobs/{one['layer'][0]}").body == one["layer"][1]
        ocistore_cli("--root", root, "rmi", "example.com/beside/one:1")
        ocistore_cli("--root", root, "gc")
        assert get("/v2/_catalog").json()["repositories"] == []
        assert get(f"/v2/example.com/beside/one/blobs/{one['layer'][0]}").status == 404
        ocistore_cli("--root", root, "load", "-q", "-i", lay.directory)
        assert get("/v2/example.com/beside/one/manifests/1").body == one["manifest"]
        assert get(f"/v2/example.com/beside/one/blobs/{one['layer'][0]}").body == one["layer"][1]


def test_a_blob_removed_while_it_streams_is_sent_whole(tmp_path: Path) -> None:
    """A GET of a large blob is held (the client stops reading after its first bytes)
    while another process removes the image and collects the blob; the rest of the body
    is then read: it is all there and its digest right."""
    root = tmp_path / "store"
    data = random.Random(7).randbytes(48 << 20)
    tar = layer_tar({"big": data})
    import_tar(root, tar, "big/blob:1")
    digest = sha256(tar)
    with Store(root) as store:
        blob_path = store.content.path(Digest(digest))
    assert blob_path.exists()
    with serve_command(root) as cmd:
        server = cmd.server
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(WAIT)
        s.connect((server.host, server.port))
        with s:
            s.sendall(f"GET /v2/big/blob/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            f = s.makefile("rb")
            status = f.readline()
            assert status.startswith(b"HTTP/1.1 200"), status
            length = None
            while (line := f.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            assert length == len(tar)
            first = f.read(65536)
            assert len(first) == 65536
            # The server is now blocked on this client; the image goes meanwhile.
            ocistore_cli("--root", root, "rmi", "big/blob:1")
            ocistore_cli("--root", root, "gc")
            assert not blob_path.exists()
            assert server.get(f"/v2/big/blob/blobs/{digest}").status == 404
            h = hashlib.sha256(first)
            got = len(first)
            while got < length:
                chunk = f.read(min(1 << 20, length - got))
                if not chunk:
                    break
                h.update(chunk)
                got += len(chunk)
            # Whole and right (a connection that failed would have ended it early: then
            # the client knows, from the length, that it did not get the blob).
            assert got == length
            assert f"sha256:{h.hexdigest()}" == digest


# --- a Docker v2 manifest from a registry ---------------------------------------------------


def test_a_pulled_docker_manifest_is_served_as_the_registry_served_it(
    registry: Any, skopeo: Any, tmp_path: Path, env: dict[str, str]
) -> None:
    """An image pushed with Docker media types to Distribution, pulled by ocistore, is
    served with the manifest the registry gave: same bytes, type and digest."""
    from registry_peer import write_oci_layout

    layout = tmp_path / "layout"
    write_oci_layout(layout, "v1", {"hello": b"docker types\n"})
    ref = f"{registry.host}/serve-tests/docker-types:1"
    skopeo(
        "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}"
    )
    conn = registry.connection()
    conn.request(
        "GET", "/v2/serve-tests/docker-types/manifests/1", headers={"Accept": DOCKER_MANIFEST}
    )
    upstream = conn.getresponse()
    raw = upstream.read()
    conn.close()
    assert upstream.getheader("Content-Type") == DOCKER_MANIFEST
    root = tmp_path / "store"
    ocistore_cli("--root", root, "pull", "-q", "--tls-verify=false", ref, env=env)
    with serving(root) as server:
        for path in (
            "/v2/serve-tests/docker-types/manifests/1?ns=" + registry.host,
            f"/v2/serve-tests/docker-types/manifests/{sha256(raw)}?ns={registry.host}",
        ):
            reply = server.get(path, Accept=DOCKER_MANIFEST)
            assert reply.status == 200, reply.body
            assert reply.body == raw
            assert reply.headers["content-type"] == DOCKER_MANIFEST
            assert reply.headers["docker-content-digest"] == sha256(raw)
        doc = json.loads(raw)
        for desc in [doc["config"], *doc["layers"]]:
            blob = server.get(
                f"/v2/serve-tests/docker-types/blobs/{desc['digest']}?ns={registry.host}"
            )
            assert blob.status == 200 and sha256(blob.body) == desc["digest"]
