"""``ocistore serve`` against hostile requests over raw sockets: traversal in names and
digests, odd digests and ranges, slow clients, request smuggling shapes, floods of
pipelined requests. Each is answered with an error (the connection closed where the
stream can no longer be trusted), nothing outside the store is ever read (a canary file
beside the store never shows in an answer), the server goes on serving others, and its
stderr never shows a traceback.

Most run against the real command (one server for the module, its stderr checked after
each test); those that shorten the server's timeouts or limits run it in this process.
Order is forced by events (a request is sent once the slow connections are open and their
partial heads written), never by sleeping."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_inprocess import (
    ACCEPT_ALL,
    OCI_MANIFEST,
    WAIT,
    Closed,
    Command,
    Layout,
    Reply,
    Server,
    closed,
    load,
    read_reply,
    serve_command,
    serving,
)

from ocistore.serve import http as serve_http

CANARY = os.urandom(24).hex().encode()
GET_BASE = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"


class Stage:
    def __init__(self, work: Path) -> None:
        self.work = work
        # Canaries where a traversal from the store or its blobs would land.
        for where in (work, work / "store", work / "store" / "blobs"):
            where.mkdir(parents=True, exist_ok=True)
        for path in (
            work / "canary",
            work / "passwd",
            work / "etc" / "passwd",
            work / "x" / "manifests" / "latest",
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"canary " + CANARY + b"\n")
        self.root = work / "store"
        lay = Layout(work / "layout")
        self.data = random.Random(3).randbytes(300_000)
        self.app = lay.image({"data": self.data}, name="example.com/x/app:1")
        self.other = lay.image({"o": b"o\n"}, name="example.com/y/other:1", label="other")
        lay.write()
        load(self.root, lay.directory)
        self.blob, self.blob_data = self.app["layer"]


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Stage:
    return Stage(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def command(stage: Stage) -> Iterator[Command]:
    with serve_command(stage.root) as cmd:
        yield cmd


@pytest.fixture
def srv(command: Command) -> Iterator[Server]:
    """The command's server; after the test: still serving, no traceback on stderr."""
    yield command.server
    command.server.assert_serving()
    said = command.stderr.read_text()
    assert "Traceback" not in said and "internal error" not in said, said
    assert command.proc.poll() is None


def clean(*replies: Reply) -> None:
    """No answer holds the canary (or the machine's /etc/passwd)."""
    for reply in replies:
        assert CANARY not in reply.body
        assert b"root:x:0:0" not in reply.body
        for value in reply.headers.values():
            assert CANARY.decode() not in value


def one_error(
    server: Server, data: bytes, statuses: tuple[int, ...], must_close: bool = True
) -> Reply:
    """``data`` is answered by exactly one response, an error among ``statuses``, and
    (``must_close``) the connection is closed after it."""
    replies, was_closed = server.exchange(data)
    assert len(replies) == 1, [r.line for r in replies]
    clean(*replies)
    assert replies[0].status in statuses, (data[:200], replies[0].status, replies[0].body)
    if must_close:
        assert was_closed, data[:200]
    return replies[0]


# --- traversal ----------------------------------------------------------------------------


TRAVERSALS = [
    "/v2/../x",
    "/v2/../../../../etc/passwd",
    "/v2/%2e%2e/x/manifests/latest",
    "/v2/%2E%2E/%2E%2E/x/manifests/latest",
    "/v2/..%2f..%2fx/manifests/latest",
    "/v2/x/../../manifests/latest",
    "/v2/a/../../blobs/sha256:" + "0" * 64,
    "/v2/example.com/x/app/../../y/other/manifests/1",
    "/v2/example.com/x/app/blobs/sha256:../../../etc/passwd",
    "/v2/example.com/x/app/blobs/sha256:..%2f..%2f..%2fcanary",
    "/v2/example.com/x/app/blobs/sha256%3a..%2f..%2f..%2fcanary",
    "/v2/example.com/x/app/blobs/../../../canary",
    "/v2/example.com/x/app/manifests/../../../canary",
    "/v2/example.com/x/app/manifests/..",
    "/v2/example.com/x/app/manifests/%2e%2e%2f%2e%2e%2fcanary",
    "/v2/example.com/x/app/referrers/sha256:../../canary",
    "/v2/example.com/x/app/blobs/sha256:" + "0" * 62 + "/..",
    "/v2/./example.com/x/app/manifests/1",
    "/v2//example.com/x/app/manifests/1",
    "//v2/example.com/x/app/manifests/1",
    "/v2/example.com\\x\\app/manifests/1",
    "/v2/example.com/x/app/blobs/sha256:" + "0" * 64 + "%00",
    "/v2/example.com/x/app/blobs/sha256:" + "0" * 64 + "/../../../../canary",
    "/v2/example.com/x/app/tags/list/../../../canary",
    "/v2/_catalog/../../canary",
    "/../../canary",
    "/canary",
    "/%2e%2e/canary",
    "/index.html/../../canary",
]


@pytest.mark.parametrize("path", TRAVERSALS)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_traversal_is_refused(srv: Server, path: str, method: str) -> None:
    data = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: {ACCEPT_ALL}\r\n\r\n".encode()
    replies, _ = srv.exchange(data, [method])
    clean(*replies)
    assert replies[0].status in (400, 404), (path, replies[0].status)
    if method == "GET" and replies[0].headers["content-type"].startswith("application/json"):
        assert replies[0].error_code() in (
            "NAME_INVALID",
            "NAME_UNKNOWN",
            "DIGEST_INVALID",
            "TAG_INVALID",
            "NOT_FOUND",
            "MANIFEST_UNKNOWN",
            "BLOB_UNKNOWN",
        )


@pytest.mark.parametrize(
    "target",
    [
        b"/v2/\x00/manifests/1",
        b"/v2/x\xff/manifests/1",
        "/v2/\u00e9/manifests/1".encode(),
        b"/v2/x y/manifests/1",
        b"http://127.0.0.1/v2/",
        b"*",
        b"v2/",
        b"",
    ],
)
def test_a_malformed_target_is_400(srv: Server, target: bytes) -> None:
    one_error(srv, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", (400,))


@pytest.mark.parametrize(
    "digest",
    [
        f"md5:{'0' * 32}",
        f"sha1:{'0' * 40}",
        f"sha384:{'0' * 96}",
        f"sha256+b64:{'A' * 43}=",
        f"blake3:{'0' * 64}",
        f"sha512:{'0' * 64}",
        f"sha256:{'0' * 63}",
        f"sha256:{'0' * 64}{'0' * 10000}",
        "sha256:" + "%30" * 64,
        f"sha256:{'0' * 64}:{'0' * 64}",
    ],
)
def test_digests_of_other_algorithms_or_shapes_are_invalid(srv: Server, digest: str) -> None:
    for kind in ("blobs", "manifests", "referrers"):
        data = f"GET /v2/example.com/x/app/{kind}/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        replies, _ = srv.exchange(data, ["GET"])
        clean(*replies)
        assert replies[0].status in (400, 431), (kind, digest, replies[0].status)
        if replies[0].status == 400:
            assert replies[0].error_code() == "DIGEST_INVALID"


def test_a_blob_of_another_repository(srv: Server, stage: Stage) -> None:
    for name in ("example.com/y/other", "library/busybox", "example.com/x/app/sub"):
        reply = srv.get(f"/v2/{name}/blobs/{stage.blob}")
        assert reply.status == 404
        assert reply.error_code() in ("BLOB_UNKNOWN", "NAME_UNKNOWN")
        clean(reply)
        assert stage.blob_data[:64] not in reply.body
    assert srv.get(f"/v2/example.com/y/other/blobs/{stage.blob}").error_code() == "BLOB_UNKNOWN"


# --- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "bytes=" + "9" * 5000 + "-",
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 5000,
        "bytes=" + "1" * 19 + "-" + "2" * 19,
        "bytes=18446744073709551615-18446744073709551616",
        "bytes=-18446744073709551616",
        "bytes=" + "0-0," * 3900,
        "bytes=" + "," * 16000,
        "bytes=" + "-1," * 5000,
        "bytes=" + ",".join(f"{i}-{i}" for i in range(2000)),
        "bytes=" + ",".join(f"{i * 100}-{i * 100 + 1}" for i in range(999)),
        "bytes=0-1\x0b",
        "bytes=\t0-1",
        "bytes=0-1;2-3",
        "bytes=٣-٤",  # (Arabic-Indic digits, in UTF-8: no range)
        "bytes==0-1",
        "bytes",
    ],
)
def test_hostile_ranges(srv: Server, stage: Stage, value: str) -> None:
    data = (
        f"GET /v2/example.com/x/app/blobs/{stage.blob} HTTP/1.1\r\nHost: x\r\n"
        f"Range: {value}\r\n\r\n"
    ).encode()
    replies, _ = srv.exchange(data, ["GET"])
    reply = replies[0]
    clean(reply)
    size = len(stage.blob_data)
    assert reply.status in (200, 206, 400, 416, 431), reply.status
    if reply.status == 200:
        assert reply.body == stage.blob_data
    elif reply.status == 416:
        assert reply.headers["content-range"] == f"bytes */{size}"
    elif reply.status == 206:
        if "content-range" in reply.headers:
            first, last = reply.headers["content-range"].split(" ")[1].split("/")[0].split("-")
            assert reply.body == stage.blob_data[int(first) : int(last) + 1]
        else:
            assert reply.headers["content-type"].startswith("multipart/byteranges")


def test_latin_1_digits_are_no_range(srv: Server, stage: Stage) -> None:
    """Header values are Latin-1: ``str.isdigit`` is true of its ``¹²³``, which ``int``
    cannot read; no byte position either way."""
    for value in (b"bytes=\xb2-\xb3", b"bytes=-\xb9", b"bytes=1-\xb2", b"bytes=\xb2"):
        data = (
            f"GET /v2/example.com/x/app/blobs/{stage.blob} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Range: "
            + value
            + b"\r\n\r\n"
        )
        replies, _ = srv.exchange(data, ["GET"])
        assert replies[0].status in (200, 416), (value, replies[0].status)
        if replies[0].status == 200:
            assert replies[0].body == stage.blob_data


# --- heads: size, shape, smuggling --------------------------------------------------------


def test_a_head_over_16_kib_is_431(srv: Server) -> None:
    big = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (17 << 10) + b"\r\n\r\n"
    one_error(srv, big, (431,))
    many = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X-A: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n" * 500
    one_error(srv, many + b"\r\n", (431,))
    unended = b"GET /v2/" + b"a" * (17 << 10)
    one_error(srv, unended, (400, 414, 431))
    lines = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 150 + b"\r\n"
    one_error(srv, lines, (431,))
    # Just under the limit: answered.
    fits = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (15 << 10) + b"\r\n\r\n"
    replies, _ = srv.exchange(fits, ["GET"])
    assert replies[0].status == 200


SMUGGLING = [
    # both Content-Length and Transfer-Encoding
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    b"0\r\n\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    # chunked on GET
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"27\r\nGET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: y\r\n\tTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # two Content-Lengths, and odd ones
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n"
    b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: \xd9\xa3\r\n\r\nabc",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: \xb9\r\n\r\na",  # (Latin-1's "1")
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\xb3\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
    # a request hidden in a body
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\n"
    b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\n"
    b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    # obsolete line folding
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\n Host: x\r\n\r\n",
    # bare LF, bare CR
    b"GET /v2/ HTTP/1.1\nHost: x\n\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a\nContent-Length: 41\r\n\r\n"
    b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1\rHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",
    # other head damage
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX\x00: y\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
    b"GET  /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.1 \r\nHost: x\r\n\r\n",
    b" GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ http/1.1\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/1.10\r\nHost: x\r\n\r\n",
    b"GET /v2/ HTTP/0.9\r\n\r\n",
    b"GET /v2/\r\n\r\n",
    b"G\xc3\x89T /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # (a TLS hello)
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]


@pytest.mark.parametrize("data", SMUGGLING, ids=[str(i) for i in range(len(SMUGGLING))])
def test_smuggling_shapes_are_refused_and_closed(srv: Server, data: bytes) -> None:
    reply = one_error(srv, data, (400, 411, 413, 431, 501, 505))
    assert b'"repositories"' not in reply.body  # (the hidden request never answered)


def test_a_body_on_a_pipelined_connection_ends_it(srv: Server) -> None:
    """A good request, then one with a body (its own answer, then the close), then one
    that must not be answered: it came after a body the server did not read."""
    data = (
        GET_BASE
        + b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\n\r\n"
        + b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n"
        + GET_BASE
    )
    replies, was_closed = srv.exchange(data)
    assert [r.status for r in replies][:1] == [200]
    assert len(replies) == 2 and was_closed
    assert replies[1].status in (400, 413)
    assert all(b"repositories" not in r.body for r in replies)


# --- pipelining, keep-alive, HTTP/1.0 -----------------------------------------------------


def test_pipelined_requests_are_answered_in_order(srv: Server, stage: Stage) -> None:
    blob = stage.blob
    requests = [
        ("GET", "/v2/example.com/x/app/manifests/1", f"Accept: {OCI_MANIFEST}\r\n"),
        ("HEAD", f"/v2/example.com/x/app/blobs/{blob}", ""),
        ("GET", f"/v2/example.com/x/app/blobs/{blob}", "Range: bytes=10-19\r\n"),
        ("GET", f"/v2/example.com/x/app/blobs/{blob}", ""),
        ("GET", "/v2/no/such/manifests/1", ""),
        ("GET", f"/v2/example.com/x/app/blobs/{blob}", "Range: bytes=0-0,-1\r\n"),
        ("GET", "/v2/_catalog", ""),
        ("HEAD", "/v2/example.com/y/other/manifests/1", f"Accept: {OCI_MANIFEST}\r\n"),
        ("GET", f"/v2/example.com/x/app/blobs/{blob}", "Range: bytes=-5\r\n"),
        ("GET", "/v2/", "Connection: close\r\n"),
        ("GET", "/v2/_catalog", ""),  # (after the close: never answered)
    ]
    data = b"".join(f"{m} {p} HTTP/1.1\r\nHost: x\r\n{h}\r\n".encode() for m, p, h in requests)
    with srv.socket() as s:
        s.sendall(data)
        f = s.makefile("rb")
        replies = [read_reply(f, m) for m, _, _ in requests[:-1]]
        assert closed(s, f)
    d = stage.blob_data
    assert [r.status for r in replies] == [200, 200, 206, 200, 404, 206, 200, 200, 206, 200]
    assert replies[0].body == stage.app["manifest"]
    assert replies[1].headers["content-length"] == str(len(d)) and replies[1].body == b""
    assert replies[2].body == d[10:20]
    assert replies[3].body == d
    assert replies[4].error_code() == "NAME_UNKNOWN"
    assert replies[5].headers["content-type"].startswith("multipart/byteranges")
    assert b'"repositories"' in replies[6].body
    assert replies[7].body == b""
    assert replies[8].body == d[-5:]
    assert replies[9].body == b"{}" and replies[9].headers["connection"] == "close"


def test_pipelining_in_pieces(srv: Server, stage: Stage) -> None:
    """Requests split anywhere (here a byte at a time, and at every CRLF) are the same
    requests; an empty line before a request is allowed, split or not."""
    data = (
        b"\r\n"
        + GET_BASE
        + f"HEAD /v2/example.com/x/app/blobs/{stage.blob} HTTP/1.1\r\n\r\n".encode()
    ) * 3
    lines = data.split(b"\n")
    by_line = [line + b"\n" for line in lines[:-1]] + [lines[-1]]
    by_byte = [data[i : i + 1] for i in range(len(data))]
    for pieces in (by_byte, by_line):
        assert b"".join(pieces) == data
        with srv.socket() as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in pieces:
                s.sendall(piece)
            f = s.makefile("rb")
            replies = [read_reply(f, m) for m in ["GET", "HEAD"] * 3]
        assert [r.status for r in replies] == [200] * 6


def test_http_1_0(srv: Server) -> None:
    replies, was_closed = srv.exchange(b"GET /v2/ HTTP/1.0\r\n\r\n" + GET_BASE)
    assert [r.status for r in replies] == [200] and was_closed
    assert replies[0].headers.get("connection", "").lower() == "close"
    # keep-alive asked for: kept, and said so
    replies, was_closed = srv.exchange(
        b"GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET /v2/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        b"GET /v2/ HTTP/1.0\r\n\r\n",
        ["GET", "GET", "GET"],
        then_closed=True,
    )
    assert [r.status for r in replies] == [200, 200, 200]
    assert [r.headers.get("connection", "").lower() for r in replies] == [
        "keep-alive",
        "keep-alive",
        "close",
    ]
    assert was_closed
    replies, was_closed = srv.exchange(
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET_BASE
    )
    assert len(replies) == 1 and was_closed


def test_a_half_closed_client_gets_its_answers_then_the_close(srv: Server, stage: Stage) -> None:
    for tail in (
        GET_BASE,
        f"GET /v2/example.com/x/app/blobs/{stage.blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    ):
        with srv.socket() as s:
            s.sendall(GET_BASE + tail)
            s.shutdown(socket.SHUT_WR)
            f = s.makefile("rb")
            replies = [read_reply(f), read_reply(f)]
            assert [r.status for r in replies] == [200, 200]
            assert closed(s, f)


def test_a_client_gone_mid_blob(srv: Server, stage: Stage) -> None:
    for _ in range(5):
        with srv.socket() as s:
            s.sendall(
                f"GET /v2/example.com/x/app/blobs/{stage.blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert s.recv(100).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # (closed with a reset, the rest unread)


def test_idle_and_silent_connections_do_not_stop_others(srv: Server) -> None:
    silent = [srv.socket() for _ in range(50)]
    try:
        srv.assert_serving()
    finally:
        for s in silent:
            s.close()


# --- slow clients -------------------------------------------------------------------------


def partial_heads(
    server: Server, count: int, head: bytes, may_drop: bool = False
) -> list[socket.socket]:
    """``count`` connections, each sent ``head`` a byte at a time (not finished); with
    ``may_drop``, a connection the server drops meanwhile is sent no more."""
    slow = []
    for _ in range(count):
        s = server.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slow.append(s)
    dropped: set[socket.socket] = set()
    for i in range(len(head)):
        for s in slow:
            if s in dropped:
                continue
            try:
                s.sendall(head[i : i + 1])
            except OSError:
                if not may_drop:
                    raise
                dropped.add(s)
    return slow


def test_slowloris_does_not_stop_others(srv: Server, stage: Stage) -> None:
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 10
    slow = partial_heads(srv, 150, head)
    try:
        # Every slow connection is open with its partial head sent: others are answered.
        for _ in range(3):
            srv.assert_serving()
            reply = srv.get(f"/v2/example.com/x/app/blobs/{stage.blob}")
            assert reply.body == stage.blob_data
        # The slow ones were waited for, not dropped: their heads end, they are answered.
        for s in slow[:20]:
            s.sendall(b"\r\n\r\n")
        for s in slow[:20]:
            f = s.makefile("rb")
            assert read_reply(f).status == 200
    finally:
        for s in slow:
            s.close()


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_http, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(serve_http, "IDLE_TIMEOUT", 3600.0)
    monkeypatch.setattr(serve_http, "SWEEP_INTERVAL", 0.1)


def test_a_head_too_slow_is_dropped(short_timeouts: None, stage: Stage) -> None:
    """A head not finished within HEAD_TIMEOUT of its first byte is dropped, even when it
    began right after another response (a small file, a large one, an error) on the same
    connection, or came a byte at a time; others are answered meanwhile."""
    with serving(stage.root) as server:
        blob = stage.blob
        starts = [
            b"",
            GET_BASE,
            f"GET /v2/example.com/x/app/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            f"HEAD /v2/example.com/x/app/blobs/{blob} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            f"GET /v2/example.com/x/app/blobs/{blob} HTTP/1.1\r\n"
            "Range: bytes=0-1,5-6\r\n\r\n".encode(),
        ]
        conns = []
        for start in starts:
            s = server.socket()
            s.sendall(start + b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
            conns.append(s)
        slow = partial_heads(server, 20, b"GET /v2/ HTTP/1.1\r\nHost", may_drop=True)
        server.assert_serving()
        for s, start in zip(conns, starts, strict=True):
            f = s.makefile("rb")
            for method in [start.split(b" ")[0].decode()] if start else []:
                read_reply(f, method)
            assert closed(s, f), start
            s.close()
        for s in slow:
            assert closed(s, s.makefile("rb"))
            s.close()
        server.assert_serving()


def test_an_idle_connection_is_dropped(monkeypatch: pytest.MonkeyPatch, stage: Stage) -> None:
    monkeypatch.setattr(serve_http, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(serve_http, "SWEEP_INTERVAL", 0.1)
    with serving(stage.root) as server:
        with server.socket() as s:
            f = s.makefile("rb")
            assert closed(s, f)
        # Idle after an answer: dropped too. (A connection dropped before its request
        # came, on a slow machine, proves nothing: another is tried.)
        for _ in range(20):
            with server.socket() as s:
                try:
                    s.sendall(GET_BASE)
                    f = s.makefile("rb")
                    reply = read_reply(f)
                except (Closed, ConnectionError):
                    continue
                assert reply.status == 200
                assert closed(s, f)
                break
        else:
            pytest.fail("every connection was dropped before its request")


def test_too_many_connections_are_told_so(monkeypatch: pytest.MonkeyPatch, stage: Stage) -> None:
    monkeypatch.setattr(serve_http, "MAX_CONNECTIONS", 10)
    with serving(stage.root) as server:
        held = [server.socket() for _ in range(10)]
        try:
            for s in held:  # (each is accepted and counted once it has answered)
                s.sendall(GET_BASE)
                assert read_reply(s.makefile("rb")).status == 200
            with server.socket() as s:
                f = s.makefile("rb")
                reply = read_reply(f)
                assert reply.status == 503 and reply.body
                assert closed(s, f)
            # Two go (their close seen: the server closes once it has forgotten them),
            # which leaves room for the next even while the server still holds the one
            # it refused (which it forgets once it sees that client's close, unseen).
            for s in held[:2]:
                s.shutdown(socket.SHUT_WR)
                assert closed(s, s.makefile("rb"))
            replies, _ = server.exchange(GET_BASE, ["GET"])
            assert replies[0].status == 200
        finally:
            for s in held:
                s.close()


# --- floods -------------------------------------------------------------------------------


def test_a_flood_of_pipelined_requests_from_a_client_that_reads_late(
    srv: Server, stage: Stage
) -> None:
    """Thousands of requests in one go, the answers read only once they are all sent (or
    the server stopped taking them): every one answered, in order."""
    paths = [
        "/v2/example.com/x/app/manifests/1" if i % 3 == 0 else
        "/v2/example.com/y/other/manifests/1" if i % 3 == 1 else
        "/v2/no/such/manifests/1"
        for i in range(15_000)
    ]  # fmt: skip
    data = b"".join(
        f"GET {p} HTTP/1.1\r\nHost: x\r\nAccept: {OCI_MANIFEST}\r\n\r\n".encode() for p in paths
    )
    s = srv.socket()
    failed: list[BaseException] = []

    def send() -> None:
        try:
            s.sendall(data)
        except BaseException as e:
            failed.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        f = s.makefile("rb")
        for i in range(len(paths)):
            reply = read_reply(f)
            if i % 3 == 0:
                assert reply.body == stage.app["manifest"], i
            elif i % 3 == 1:
                assert reply.body == stage.other["manifest"], i
            else:
                assert reply.status == 404, i
    finally:
        sender.join(WAIT)
        s.close()
    assert not failed, failed


def test_pipelined_requests_past_an_authentication_check(tmp_path: Path, stage: Stage) -> None:
    """The first request's credentials are checked off the event loop while more than the
    pending limit of requests arrive behind it: all are answered."""
    import base64
    import subprocess

    from conftest import require_tool

    tool = require_tool("htpasswd")
    # (a costly hash: the check is likely still running when the rest comes; the test
    # passes whatever the order, it is only more likely to catch a stall)
    out = subprocess.run(
        [tool, "-Bbn", "-C", "12", "u", "p"], capture_output=True, text=True, check=True
    )
    path = tmp_path / "htpasswd"
    path.write_text(out.stdout)
    auth = "Basic " + base64.b64encode(b"u:p").decode()
    one = f"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nX-Pad: {'p' * 400}\r\n\r\n"
    count = 2 * serve_http.MAX_PENDING // len(one) + 10
    with serving(stage.root, htpasswd=path) as server, server.socket() as s:
        failed: list[BaseException] = []

        def send() -> None:
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                data = one.encode() * count
                for i in range(0, len(data), 2048):
                    s.sendall(data[i : i + 2048])
            except BaseException as e:
                failed.append(e)

        sender = threading.Thread(target=send)
        sender.start()
        f = s.makefile("rb")
        try:
            statuses = [read_reply(f).status for _ in range(count)]
        finally:
            sender.join(WAIT)
        assert statuses == [200] * count
        assert not failed


def test_hostile_requests_in_process_leave_no_failure(stage: Stage) -> None:
    """The smuggling shapes and traversals again, against a server in this process whose
    every failed request would be a traceback (``serving`` fails the test on one)."""
    with serving(stage.root) as server:
        for data in SMUGGLING:
            replies, _ = server.exchange(data)
            clean(*replies)
        for path in TRAVERSALS:
            replies, _ = server.exchange(
                f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), ["GET"]
            )
            clean(*replies)
        server.assert_serving()


class FakeTransport(asyncio.Transport):
    """What a connection writes, and whether it reads, without a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_requests_are_taken_no_faster_than_their_answers_leave() -> None:
    """While the transport says its buffer is full (``pause_writing``), no request is
    answered and, past the pending limit, no more read; once it drains, they are, in
    order, and reading goes on."""
    loop = asyncio.new_event_loop()
    try:
        answered: list[str] = []
        conn: serve_http._Connection | None = None

        def handler(request: serve_http.Request) -> serve_http.Response:
            answered.append(request.path)
            if len(answered) % 1000 == 3:
                assert conn is not None
                conn.pause_writing()  # (as the transport calls it from a write)
            return serve_http.Response(200, [], [request.path.encode()])

        state = serve_http._Server(loop, handler, [], lambda request: None)
        conn = serve_http._Connection(state)
        transport = FakeTransport()
        conn.connection_made(transport)
        count = 20_000
        requests = b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(count))
        pos = 0
        pauses = 0
        while len(answered) < count:
            while transport.reading and pos < len(requests):
                conn.data_received(requests[pos : pos + 4096])
                pos += 4096
            assert conn.write_paused
            assert len(conn.buf) <= serve_http.MAX_PENDING + 4096
            if pos < len(requests):
                assert not transport.reading  # (what waits is bounded)
            before = len(answered)
            conn.resume_writing()
            assert len(answered) > before
            pauses += 1
            if pauses > count:
                pytest.fail("no progress")
        assert answered == [f"/{i}" for i in range(count)]
        assert transport.written.count(b"HTTP/1.1 200 OK") == count
        assert pauses >= count // 1000
    finally:
        loop.close()
