"""The registry client under faults (issue 12): a proxy of the tests' own
(:class:`registry_peer.FaultProxy`) between ocistore and the real registry (Debian's
docker-registry, Distribution 2.8) cuts blob downloads in the middle, answers 429 and
503, and stalls; servers of the tests' own on 127.0.0.1 ignore ``Range`` and redirect
to another host. The pull resumes and succeeds, the push retries, and what finally
fails says so in one line and leaves the store and the registry's tags as they were.

Every image is pushed to the registry directly first; ocistore then talks to the
proxy's ``127.0.0.1:PORT``. Faults fire on requests counted, never on clocks: the only
time a test waits for is the client's own ``--timeout`` against a stall that never ends,
and ``Retry-After`` is checked by the order of the requests and by the delay the client
asked to sleep, never by a clock.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import re
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from registry_peer import Fault, FaultProxy, RegistryServer, served, started_fault_proxy
from test_oci_layout import Built, Layout
from test_registry import Ocistore, loaded, sample_layout
from util import make_tar, run_main, snapshot

from ocistore.spec.platform import host_platform

Make = Callable[..., RegistryServer]
pytestmark = pytest.mark.usefixtures("no_leftovers")
MiB = 1 << 20
#: The client's idle timeout where a request is stalled for ever: it applies to every
#: request of the command, so it is long enough that a loaded machine's registry never
#: meets it (which would add requests to the sequences asserted), short enough to wait.
STALL_TIMEOUT = "10"


@pytest.fixture
def oc(tmp_path: Path, env: dict[str, str]) -> Ocistore:
    """The store that loads the images and pushes them to the registry directly."""
    return Ocistore(tmp_path / "store", env)


@pytest.fixture
def proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fault proxy of this test's own in front of the session's open registry."""
    with started_fault_proxy(registry) as p:
        yield p


@pytest.fixture
def in_process(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``util.run_main`` sees the test's environment (the credential files it reads)."""
    for key in ("REGISTRY_AUTH_FILE", "OCISTORE_ROOT"):
        monkeypatch.delenv(key, raising=False)
    for key in ("HOME", "DOCKER_CONFIG", "XDG_RUNTIME_DIR"):
        monkeypatch.setenv(key, env[key])


# -- helpers ------------------------------------------------------------------------------


def random_image(tmp_path: Path, name: str, sizes: list[int]) -> tuple[Path, Built]:
    """An OCI layout of an image whose layers hold ``sizes`` random bytes each (gzip
    leaves them as large as they are), tagged ``1``."""
    lay = Layout(tmp_path / f"layout-{name}")
    built = lay.image(
        [{f"data/{name}-{i}": os.urandom(n)} for i, n in enumerate(sizes)],
        how="gzip",
        arch=host_platform().architecture,
    )
    lay.tag(built.desc, "1")
    return lay.write(), built


def pushed(
    oc: Ocistore, registry: RegistryServer, tmp_path: Path, repo: str, sizes: list[int]
) -> Built:
    """A random image loaded into ``oc`` and pushed to the registry directly as
    ``REPO:1``."""
    layout, built = random_image(tmp_path, repo.replace("/", "-"), sizes)
    oc("load", "-q", "-i", layout)
    oc("tag", built.id, f"{registry.host}/{repo}:1")
    oc("push", "-q", f"{registry.host}/{repo}:1")
    return built


def blob_path(digest: str) -> str:
    return rf"/blobs/{re.escape(digest)}$"


def requests_of(proxy: FaultProxy, method: str, pattern: str) -> list[tuple[str, Any, int | None]]:
    """``(target, headers, status)`` of each request the proxy saw of ``method`` whose
    target matches ``pattern``, in order."""
    return [(t, h, s) for m, t, h, s in list(proxy.seen) if m == method and re.search(pattern, t)]


def blob_gets(proxy: FaultProxy, digest: str) -> list[tuple[str | None, int | None]]:
    """``(Range header, status)`` of each GET of the blob, in order."""
    return [(h.get("Range"), s) for _, h, s in requests_of(proxy, "GET", blob_path(digest))]


def after(items: list[Any], first: Any, then: Any) -> bool:
    """Whether ``then`` comes somewhere after an occurrence of ``first``."""
    return first in items and then in items[items.index(first) + 1 :]


def manifest_status(registry: RegistryServer, repo: str, tag: str) -> int:
    """The status of ``GET /v2/REPO/manifests/TAG`` asked of the registry directly."""
    conn = registry.connection()
    try:
        conn.request(
            "GET",
            f"/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def without_hints(shot: dict[str, object]) -> dict[str, object]:
    """A store snapshot without ``distribution/`` (the registry hints of a push: written
    for each blob the registry did get, true whatever happens to the rest)."""
    return {k: v for k, v in shot.items() if not k.startswith("distribution")}


class Front:
    """A front of a test's own on 127.0.0.1 that passes each request on to a registry
    (its Host header too, so that Distribution's Locations name the front), unless
    ``intercept(handler, body)`` answered it (or dropped it) itself and says so.
    :attr:`seen`: ``(method, target, headers, status)``, status None where no answer
    was sent."""

    def __init__(
        self,
        target: RegistryServer,
        intercept: Callable[[http.server.BaseHTTPRequestHandler, bytes], bool] | None = None,
    ) -> None:
        self.target = target
        self.intercept = intercept
        self.seen: list[tuple[str, str, dict[str, str], int | None]] = []
        self.lock = threading.Lock()

    def record(self, handler: http.server.BaseHTTPRequestHandler, status: int | None) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self.lock:
            self.seen.append((handler.command, handler.path, headers, status))

    def forward(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = self.target.connection()
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            conn.close()

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def any_method(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if front.intercept is not None and front.intercept(self, body):
                    return
                status, reason, headers, data = front.forward(self, body)
                front.record(self, status)
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() in ("connection", "transfer-encoding"):
                        continue
                    if k.lower() == "content-length" and self.command != "HEAD":
                        continue
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PATCH = do_PUT = do_DELETE = any_method

        return Handler


@dataclass
class LaterFault(Fault):
    """A fault that lets the first ``skip`` requests it matches through (counted among
    those no earlier fault took), then applies as any other."""

    skip: int = 0

    def matches(self, method: str, path: str) -> bool:
        if not super().matches(method, path):
            return False
        if self.skip:
            self.skip -= 1
            return False
        return True


class Sleeps:
    """What a module of the client asked to sleep (it still sleeps): put in the place of
    the module's ``time``."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        time.sleep(seconds)

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(sleep=self.sleep, monotonic=time.monotonic, time=time.time)


# -- downloads: resumed with Range --------------------------------------------------------


def test_a_pull_resumes_blobs_dropped_in_the_middle_with_range(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path, env: dict[str, str]
) -> None:
    built = pushed(oc, registry, tmp_path, "faults/drop", [256 << 10, 128 << 10, 100])
    first, second = built.layer_blobs[0], built.layer_blobs[1]
    # Each answer (the first, then every resumed one) is cut after N bytes of its body.
    proxy.drop_after("GET", blob_path(first), 1000, times=3)
    proxy.drop_after("GET", blob_path(second), 5000, times=2)
    ref = f"{proxy.host}/faults/drop:1"
    through = Ocistore(tmp_path / "through", env)
    through("pull", "-q", ref)
    direct = Ocistore(tmp_path / "direct", env)
    direct("pull", "-q", f"{registry.host}/faults/drop:1")
    assert through.image_id(ref) == direct.image_id(f"{registry.host}/faults/drop:1") == built.id
    # Each resume asks from where the client got to, and Distribution answers 206 from
    # there (its Content-Range checked by the client).
    assert blob_gets(proxy, first) == [
        (None, 200),
        ("bytes=1000-", 206),
        ("bytes=2000-", 206),
        ("bytes=3000-", 206),
    ]
    assert blob_gets(proxy, second) == [(None, 200), ("bytes=5000-", 206), ("bytes=10000-", 206)]
    # The others were read once, whole.
    assert blob_gets(proxy, built.layer_blobs[2]) == [(None, 200)]


class _Blob:
    """A blob server of a test's own that answers ``GET /v2/…/blobs/DIGEST`` from a
    script: one ``(status, cut)`` per request, in order. ``200`` ignores ``Range`` (the
    whole blob), ``206`` honours it; ``cut`` is the number of body bytes sent before the
    connection is closed (None: all)."""

    def __init__(self, data: bytes, script: list[tuple[int, int | None]]) -> None:
        self.data = data
        self.script = list(script)
        self.ranges: list[str | None] = []
        self.puts = 0
        self.lock = threading.Lock()

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        blob = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                with blob.lock:
                    blob.ranges.append(self.headers.get("Range"))
                    status, cut = blob.script.pop(0) if blob.script else (206, None)
                body, start = blob.data, 0
                asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if status == 206 and asked:
                    start = int(asked.group(1))
                    body = blob.data[start:]
                else:
                    status = 200
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    end = len(blob.data) - 1
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(blob.data)}")
                self.end_headers()
                if cut is None:
                    self.wfile.write(body)
                else:
                    self.wfile.write(body[:cut])
                    self.close_connection = True

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with blob.lock:
                    blob.puts += 1
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def _download(host: str, data: bytes, size: int | None = -1) -> bytes:
    from ocistore.registry.client import Registry
    from ocistore.registry.transport import RetryPolicy, Transport
    from ocistore.spec.digest import digest_bytes

    # (backoff of a millisecond or so: the resumes are counted, not timed)
    transport = Transport(retry=RetryPolicy(base_delay=0.001, max_delay=0.01, timeout=60))
    try:
        repo = Registry(host, transport).repository("lab/blob")
        told = len(data) if size == -1 else size
        with repo.open_blob(digest_bytes(data), told) as stream:
            return stream.readall()
    finally:
        transport.close()


def test_a_server_that_ignores_range_is_read_past_what_was_had() -> None:
    """Distribution honours Range, so a server of the test's own answers a resumed
    download 200 with the whole blob: BlobDownload skips what it had. The same server
    then honours Range after an answer that ignored it was cut within what is skipped."""
    data = os.urandom(64 << 10)
    blob = _Blob(data, [(200, 1000), (200, 600), (200, None)])
    with served(blob.handler()) as host:
        assert _download(host, data) == data
    assert blob.ranges == [None, "bytes=1000-", "bytes=1000-"]
    # Cut within the bytes being skipped, then a server that honours Range: the part left
    # to skip of the 200 answer does not apply to the 206 one.
    blob = _Blob(data, [(200, 1000), (200, 600), (206, None)])
    with served(blob.handler()) as host:
        assert _download(host, data) == data
    assert blob.ranges == [None, "bytes=1000-", "bytes=1000-"]


def test_a_cut_download_of_unknown_size_is_resumed() -> None:
    """A schema 1 manifest tells no layer sizes: the cut is seen by the answer's own
    Content-Length, not mistaken for the end of the blob."""
    data = os.urandom(64 << 10)
    blob = _Blob(data, [(200, 1000), (206, None)])
    with served(blob.handler()) as host:
        assert _download(host, data, size=None) == data
    assert blob.ranges == [None, "bytes=1000-"]


def test_a_download_cut_every_time_gives_up_after_its_resumes() -> None:
    from ocistore.registry.client import MAX_RESUMES
    from ocistore.registry.transport import ConnectionFailed

    data = os.urandom(64 << 10)
    blob = _Blob(data, [(200, 1000)] + [(206, 1000)] * 20)
    with served(blob.handler()) as host, pytest.raises(ConnectionFailed) as e:
        _download(host, data)
    got = MAX_RESUMES * 1000 + 1000
    assert "/lab/blob@sha256:" in str(e.value)
    assert f"download failed at byte {got} after {MAX_RESUMES} resumes" in str(e.value)
    assert blob.ranges == [None] + [f"bytes={1000 * i}-" for i in range(1, MAX_RESUMES + 1)]


def test_the_connection_of_a_cut_answer_is_not_used_again() -> None:
    """A body that ended before its Content-Length leaves a connection the server closed:
    kept for the next request, it would fail a request whose body streams (a chunk of
    an upload, which is not sent again by the transport)."""
    from ocistore.registry.transport import Transport

    data = os.urandom(64 << 10)
    blob = _Blob(data, [(200, 1000)])
    transport = Transport()
    try:
        with served(blob.handler()) as host:
            response = transport.request("GET", f"http://{host}/v2/lab/blob/blobs/x")
            got = bytearray()
            buf = bytearray(1 << 14)
            while n := response.readinto(buf):
                got += buf[:n]
            response.close()
            assert bytes(got) == data[:1000]
            put = transport.request(
                "PUT", f"http://{host}/v2/lab/blob/x", {"Content-Length": "4"},
                lambda: [b"data"], retry=False,
            )  # fmt: skip
            put.close()
            assert put.status == 201
    finally:
        transport.close()
    assert blob.puts == 1


def test_a_stalled_blob_download_times_out_and_resumes(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path, env: dict[str, str]
) -> None:
    """The resumed request is never answered: the client's own idle timeout (STALL_TIMEOUT) ends
    that connection and the request is asked again. The stall holds until the proxy
    stops, so this does not depend on the machine's speed."""
    built = pushed(oc, registry, tmp_path, "faults/stall", [128 << 10])
    layer = built.layer_blobs[0]
    proxy.drop_after("GET", blob_path(layer), 3000)
    proxy.stall("GET", blob_path(layer))
    ref = f"{proxy.host}/faults/stall:1"
    through = Ocistore(tmp_path / "through", env)
    through("pull", "-q", "--timeout", STALL_TIMEOUT, ref)
    assert through.image_id(ref) == built.id
    gets = blob_gets(proxy, layer)
    assert gets[:2] == [(None, 200), ("bytes=3000-", None)]
    assert after(gets, ("bytes=3000-", None), ("bytes=3000-", 206))


# -- 429 and 503: retried -------------------------------------------------------------------


def test_429_with_retry_after_is_waited_for_on_manifest_and_blob(
    registry: RegistryServer,
    proxy: FaultProxy,
    oc: Ocistore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    in_process: None,
) -> None:
    from ocistore.registry import transport

    built = pushed(oc, registry, tmp_path, "faults/busy", [64 << 10, 100])
    layer = built.layer_blobs[0]
    proxy.status("GET", r"/manifests/1$", 429, retry_after=1)
    proxy.status("GET", blob_path(layer), 429, retry_after=1)
    sleeps = Sleeps()
    monkeypatch.setattr(transport, "time", sleeps.module())
    ref = f"{proxy.host}/faults/busy:1"
    root = tmp_path / "busy"
    code, out, err = run_main(root, capsys, "pull", "-q", ref)
    assert (code, err) == (0, ""), err
    assert out == f"{ref}\n"
    code, out, _ = run_main(root, capsys, "inspect", "-f", "{{.Id}}", ref)
    assert out.strip() == built.id
    statuses = [s for _, _, s in requests_of(proxy, "GET", r"/manifests/1$")]
    assert statuses == [429, 200]
    assert [s for _, s in blob_gets(proxy, layer)] == [429, 200]
    # The client slept what Retry-After said before each of the two retries (and no
    # jitter of its own made it shorter).
    assert [s for s in sleeps.asked if s >= 1.0] == [1.0, 1.0]


def test_a_push_retries_503_on_blob_head_and_upload_put(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path, env: dict[str, str]
) -> None:
    ref = f"{proxy.host}/faults/unavailable:1"
    layout, built = sample_layout(tmp_path, "unavailable")
    oc("load", "-q", "-i", layout)
    oc("tag", built.id, ref)
    layer = built.layer_blobs[1]
    put = rf"/blobs/uploads/.*[?&]digest={re.escape(layer.replace(':', '%3A'))}"
    proxy.status("HEAD", blob_path(layer), 503, times=2)
    proxy.status("PUT", put, 503, times=2)
    out = oc("push", ref).stdout.splitlines()
    assert sum(line.endswith(": Pushed") for line in out) == 3
    assert [s for _, _, s in requests_of(proxy, "HEAD", blob_path(layer))] == [503, 503, 404]
    assert [s for _, _, s in requests_of(proxy, "PUT", put)] == [503, 503, 201]
    # What reached the registry is the image: pulled directly, the same ID.
    direct = Ocistore(tmp_path / "direct", env)
    direct("pull", "-q", f"{registry.host}/faults/unavailable:1")
    assert direct.image_id(f"{registry.host}/faults/unavailable:1") == built.id


# -- chunked uploads: resumed from the registry's offset -------------------------------------


def test_a_chunked_upload_goes_on_from_where_the_registry_is(
    registry: RegistryServer,
    proxy: FaultProxy,
    oc: Ocistore,
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    in_process: None,
) -> None:
    """A 12 MiB layer, over MONOLITHIC_MAX, goes in PATCH chunks (CHUNK_SIZE made 4 MiB
    here). The first PATCH is answered 503 with ``Retry-After: 1`` (waited for) before the
    registry has a byte (its status is then ``Range: 0-0``, Distribution's answer for an
    empty upload, as for one of a byte: the client knows it had none); the chunk after the
    first is never answered (the client's STALL_TIMEOUT ends it). Each time the client asks
    the upload's status (GET of its URL) and goes on from the offset it says, with the
    ``_state`` of the Location of each answer (Distribution refuses an old one)."""
    from ocistore.registry import client

    monkeypatch.setattr(client, "CHUNK_SIZE", 4 * MiB)
    layout, built = random_image(tmp_path, "chunked", [12 * MiB, 100])
    big = built.layer_blobs[0]
    size = Layout(layout).path(big).stat().st_size
    assert size > 12 * MiB > client.MONOLITHIC_MAX
    root = tmp_path / "chunked-store"
    ref = f"{proxy.host}/faults/chunked:1"
    for args in (("load", "-q", "-i", layout), ("tag", built.id, ref)):
        code, _, err = run_main(root, capsys, *args)
        assert code == 0, err
    proxy.status("PATCH", r"/blobs/uploads/", 503, retry_after=1)
    proxy.faults.append(LaterFault("stall", "PATCH", re.compile(r"/blobs/uploads/"), 1, skip=1))
    sleeps = Sleeps()
    monkeypatch.setattr(client, "time", sleeps.module())
    code, out, err = run_main(root, capsys, "push", "-q", "--timeout", STALL_TIMEOUT, ref)
    assert (code, err) == (0, ""), err
    assert out == f"{ref}\n"
    # The 503's Retry-After was waited for before the chunk went again.
    assert 1.0 in sleeps.asked
    uploads = [
        (m, h.get("Content-Range"), s)
        for m, t, h, s in list(proxy.seen)
        if "/blobs/uploads/" in t and m in ("PATCH", "GET")
    ]
    c = 4 * MiB
    assert uploads == [
        ("PATCH", f"0-{c - 1}", 503),
        ("GET", None, 204),
        ("PATCH", f"0-{c - 1}", 202),
        ("PATCH", f"{c}-{2 * c - 1}", None),
        ("GET", None, 204),
        ("PATCH", f"{c}-{2 * c - 1}", 202),
        ("PATCH", f"{2 * c}-{3 * c - 1}", 202),
        ("PATCH", f"{3 * c}-{size - 1}", 202),
    ]
    # Every chunk after an accepted one went to the new Location (a new _state).
    accepted = [t for m, t, _, s in list(proxy.seen) if m == "PATCH" and s == 202]
    assert len(set(accepted)) == len(accepted)
    done = requests_of(proxy, "PUT", rf"digest={big.replace(':', '%3A')}")
    assert [s for _, _, s in done] == [201]
    # The registry has the image whole: pulled directly, the same ID.
    direct = Ocistore(tmp_path / "direct", env)
    direct("pull", "-q", f"{registry.host}/faults/chunked:1")
    assert direct.image_id(f"{registry.host}/faults/chunked:1") == built.id


def test_a_chunk_whose_answer_was_lost_starts_the_upload_again(
    registry: RegistryServer,
    oc: Ocistore,
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    in_process: None,
) -> None:
    """The registry took the second chunk but its answer never came (a front of the
    test's own passes the PATCH on, then closes the connection): the client's last
    ``_state`` is behind what Distribution has, which it then refuses (404
    BLOB_UPLOAD_INVALID) and cancels the upload. The client starts a new upload and
    sends the blob from its start. (Chunks of 256 KiB here, a 1 MiB layer.)"""
    from ocistore.registry import client

    chunk = 256 << 10
    monkeypatch.setattr(client, "CHUNK_SIZE", chunk)
    monkeypatch.setattr(client, "MONOLITHIC_MAX", chunk)
    layout, built = random_image(tmp_path, "lost", [1 * MiB, 100])
    big = built.layer_blobs[0]
    size = Layout(layout).path(big).stat().st_size
    patches = [0]

    def lose_the_second_answer(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> bool:
        if handler.command != "PATCH":
            return False
        with front.lock:
            patches[0] += 1
            if patches[0] != 2:
                return False
        status, *_ = front.forward(handler, body)
        assert status == 202
        front.record(handler, None)
        handler.close_connection = True  # the registry has the chunk; the client no answer
        return True

    front = Front(registry, lose_the_second_answer)
    root = tmp_path / "lost-store"
    with served(front.handler()) as host:
        ref = f"{host}/faults/lost:1"
        for args in (("load", "-q", "-i", layout), ("tag", built.id, ref)):
            code, _, err = run_main(root, capsys, *args)
            assert code == 0, err
        code, out, err = run_main(root, capsys, "push", "-q", ref)
    assert (code, err) == (0, ""), err
    assert out == f"{ref}\n"
    uploads = [
        (m, h.get("content-range"), s)
        for m, t, h, s in front.seen
        if m in ("PATCH", "GET") and "/blobs/uploads/" in t
    ]
    # From the start of a new upload, every chunk.
    again = [("PATCH", f"{a}-{min(a + chunk, size) - 1}", 202) for a in range(0, size, chunk)]
    assert uploads == [
        ("PATCH", f"0-{chunk - 1}", 202),
        ("PATCH", f"{chunk}-{2 * chunk - 1}", None),
        ("GET", None, 404),
        *again,
    ]
    posts = [t for m, t, _, _ in front.seen if m == "POST" and "/blobs/uploads/" in t]
    assert len(posts) == 4  # the config, the small layer, and the big one twice
    done = [s for m, t, _, s in front.seen if m == "PUT" and big.replace(":", "%3A") in t]
    assert done == [201]
    direct = Ocistore(tmp_path / "direct", env)
    direct("pull", "-q", f"{registry.host}/faults/lost:1")
    assert direct.image_id(f"{registry.host}/faults/lost:1") == built.id


# -- what finally fails ---------------------------------------------------------------------


def test_a_pull_that_finally_fails_says_so_and_leaves_the_store_as_it_was(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path, env: dict[str, str]
) -> None:
    built = pushed(oc, registry, tmp_path, "faults/fail", [128 << 10, 64 << 10, 100])
    layer = built.layer_blobs[1]
    store = Ocistore(tmp_path / "pulling", env)
    loaded(store, tmp_path, "lab/already:1")  # a store with something in it
    before = snapshot(store.root)
    proxy.status("GET", blob_path(layer), 503, times=1000)
    ref = f"{proxy.host}/faults/fail:1"
    proc = store("pull", "--retry-times", "2", ref, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (
        f"ocistore: {proxy.host}/faults/fail@{layer}: UNAVAILABLE: "
        "fault injected by the test proxy: 503 (HTTP 503)\n"
    )
    # --retry-times 2: asked three times in all.
    assert [s for _, s in blob_gets(proxy, layer)] == [503, 503, 503]
    assert snapshot(store.root) == before
    assert list((store.root / "tmp").iterdir()) == []


def test_a_push_that_fails_at_the_manifest_leaves_no_tag(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path
) -> None:
    ref = f"{proxy.host}/faults/nomanifest:1"
    loaded(oc, tmp_path, ref)
    before = snapshot(oc.root)
    proxy.status("PUT", r"/manifests/", 503, times=1000)
    proc = oc("push", "--retry-times", "1", ref, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ocistore: {ref}: UNAVAILABLE: fault injected by the test proxy: 503 (HTTP 503)\n"
    )
    assert [s for _, _, s in requests_of(proxy, "PUT", r"/manifests/1$")] == [503, 503]
    assert manifest_status(registry, "faults/nomanifest", "1") == 404
    # Unchanged but for the hints of the blobs the registry did get (no RepoDigests: a
    # push records its NAME@DIGEST only when the manifest is in).
    assert without_hints(snapshot(oc.root)) == without_hints(before)
    assert list((oc.root / "tmp").iterdir()) == []


def test_a_push_that_fails_in_a_blob_upload_leaves_no_tag_and_no_scratch(
    registry: RegistryServer, proxy: FaultProxy, oc: Ocistore, tmp_path: Path
) -> None:
    """An imported layer is stored as a plain tar: the push compresses it into a scratch
    file of the store's tmp/ to upload it, and must remove it when the upload fails."""
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(make_tar({"etc/data": os.urandom(256 << 10)}))
    ref = f"{proxy.host}/faults/noblob:1"
    oc("import", "-q", rootfs, ref)
    before = snapshot(oc.root)
    proxy.status("PUT", r"/blobs/uploads/.*digest=", 503, times=1000)
    proc = oc("push", "--retry-times", "1", ref, check=False)
    assert proc.returncode == 1
    line = proc.stderr
    assert line.count("\n") == 1, line
    assert line.startswith(f"ocistore: {proxy.host}/faults/noblob@sha256:"), line
    assert line.endswith(": UNAVAILABLE: fault injected by the test proxy: 503 (HTTP 503)\n")
    assert requests_of(proxy, "PUT", r"/manifests/") == []
    assert manifest_status(registry, "faults/noblob", "1") == 404
    assert snapshot(oc.root) == before
    assert list((oc.root / "tmp").iterdir()) == []


# -- redirects ------------------------------------------------------------------------------


def test_a_redirect_to_another_host_gets_no_authorization(
    registry_factory: Make, oc: Ocistore, tmp_path: Path, env: dict[str, str]
) -> None:
    """A front of the test's own (127.0.0.1:A) passes every request on to an htpasswd
    registry, except blob GETs, which it answers 307 to a second server (127.0.0.1:B,
    another host as a client sees hosts) serving the blob bytes taken from the registry.
    The credential goes to the front, never to the second server."""
    server = registry_factory(auth="htpasswd")
    creds = "alice:wonderland"
    basic = "Basic " + base64.b64encode(creds.encode()).decode()
    layout, built = random_image(tmp_path, "redirect", [64 << 10, 100])
    oc("load", "-q", "-i", layout)
    oc("tag", built.id, f"{server.host}/faults/redirect:1")
    oc("push", "-q", "--creds", creds, f"{server.host}/faults/redirect:1")
    blobs: dict[str, bytes] = {}
    for digest in ["sha256:" + hashlib.sha256(built.config).hexdigest(), *built.layer_blobs]:
        conn = server.connection()
        conn.request("GET", f"/v2/faults/redirect/blobs/{digest}", headers={"Authorization": basic})
        response = conn.getresponse()
        assert response.status == 200
        blobs[digest] = response.read()
        conn.close()
    back_seen: list[tuple[str, str | None]] = []
    back_host: list[str] = []

    class Back(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            back_seen.append((self.path, self.headers.get("Authorization")))
            data = blobs.get(self.path.rsplit("/", 1)[-1])
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

    def redirect(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> bool:
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})$", handler.path)
        if handler.command != "GET" or not m:
            return False
        front.record(handler, 307)
        handler.send_response(307)
        handler.send_header("Location", f"http://{back_host[0]}/storage/{m.group(1)}")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    front = Front(server, redirect)
    with served(Back) as back, served(front.handler()) as front_host:
        back_host.append(back)
        ref = f"{front_host}/faults/redirect:1"
        through = Ocistore(tmp_path / "through", env)
        through("pull", "-q", "--creds", creds, ref)
        assert through.image_id(ref) == built.id
    # Every blob came from the second server, which never saw the credential.
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in back_seen) == sorted(blobs)
    assert all(auth is None for _, auth in back_seen), back_seen
    # The front (the registry's host) was given it, with the blob GETs too.
    given = [(h.get("authorization"), s) for m, p, h, s in front.seen if "/blobs/" in p]
    assert given == [(basic, 307)] * len(blobs), front.seen
