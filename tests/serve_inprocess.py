"""``ocistore serve`` for the API tests: an in-process server on a thread of its own, the
real command as a subprocess, images made for them, and strict raw-socket HTTP reading.

:func:`serving` runs :class:`ocistore.serve.server.App` on ``http.serve_forever`` in an
asyncio loop on a thread; it is stopped (its stop event set through
``loop.call_soon_threadsafe``) and joined when the block ends, and a request it failed on
(a traceback: ``on_failure``) fails the test. :func:`serve_command` runs ``ocistore
serve --addr 127.0.0.1:0`` and learns the port from its first line (no polling); it is
stopped with SIGTERM and must exit 0 without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ocistore.serve.auth import Htpasswd
from ocistore.serve.http import Request, serve_forever
from ocistore.serve.registry import API_VERSION
from ocistore.serve.server import App, tls_context
from ocistore.serve.view import StoreView
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"
#: A bound on a failure only: how long a test waits for what must happen.
WAIT = 60.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ACCEPT_ALL = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST])


# --- replies --------------------------------------------------------------------------------


class Headers(dict[str, str]):
    """Header names lower-cased; a repeated header is a failure of the test unless it is
    read with :meth:`all`."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        super().__init__()
        self.pairs = pairs
        for name, value in pairs:
            key = name.lower()
            assert key not in self or key in ("set-cookie",), f"repeated header {name}"
            self[key] = value

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.pairs if n.lower() == name.lower()]


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes
    #: The status line as sent.
    line: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        doc = self.json()
        assert set(doc) == {"errors"}, doc
        [entry] = doc["errors"]
        assert isinstance(entry["message"], str) and entry["message"], entry
        assert set(entry) <= {"code", "message", "detail"}, entry
        return str(entry["code"])


class Closed(Exception):
    """The server closed the connection before a whole response."""


def read_reply(f: io.BufferedReader, method: str = "GET") -> Reply:
    """One response, read strictly: CRLF line ends, a Content-Length always (no chunked
    bodies from this server), the whole body or :class:`Closed`."""
    line = f.readline(65536)
    if not line:
        raise Closed("no response")
    assert line.endswith(b"\r\n"), line
    version, status, _reason = line[:-2].decode("latin-1").split(" ", 2)
    assert version == "HTTP/1.1", line
    pairs: list[tuple[str, str]] = []
    while True:
        raw = f.readline(65536)
        if not raw:
            raise Closed("in the head")
        assert raw.endswith(b"\r\n"), raw
        if raw == b"\r\n":
            break
        name, colon, value = raw[:-2].decode("latin-1").partition(":")
        assert colon and name == name.strip(), raw
        pairs.append((name, value.strip()))
    headers = Headers(pairs)
    assert "transfer-encoding" not in headers
    code = int(status)
    assert "content-length" in headers, pairs
    length = int(headers["content-length"])
    body = b""
    if method != "HEAD" and code not in (204, 304) and not 100 <= code < 200:
        body = f.read(length)
        if len(body) != length:
            raise Closed(f"body of {len(body)} bytes of {length}")
    return Reply(code, headers, body, line[:-2].decode("latin-1"))


# --- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    #: Tracebacks of requests the server failed on (in-process servers).
    failures: list[str] = field(default_factory=list)
    #: The in-process server's view and app (None for the command).
    app: App | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connection(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=WAIT, context=self.tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=WAIT)

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        conn: http.client.HTTPConnection | None = None,
    ) -> Reply:
        """One request (on ``conn`` if given, kept alive; else on a connection of its own)."""
        own = conn is None
        c = self.connection() if conn is None else conn
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            body = r.read()
            return Reply(r.status, Headers(list(r.getheaders())), body)
        finally:
            if own:
                c.close()

    def get(self, path: str, **headers: str) -> Reply:
        return self.request("GET", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def head(self, path: str, **headers: str) -> Reply:
        return self.request("HEAD", path, {k.replace("_", "-"): v for k, v in headers.items()})

    def socket(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=WAIT)
        if self.tls is not None:
            return self.tls.wrap_socket(s, server_hostname=self.host)
        return s

    def exchange(
        self, data: bytes, methods: list[str] | None = None, *, then_closed: bool = False
    ) -> tuple[list[Reply], bool]:
        """Send ``data`` in one write on a new connection. With ``methods``, read one
        response per entry and then (``then_closed``) wait for the server to close the
        connection; without, read responses until the server closes it (it must). Returns
        the responses and whether the connection was closed after them."""
        with self.socket() as s:
            s.sendall(data)
            f = s.makefile("rb")
            replies: list[Reply] = []
            if methods is not None:
                replies = [read_reply(f, method) for method in methods]
                return replies, closed(s, f) if then_closed else False
            while True:
                try:
                    replies.append(read_reply(f))
                except (Closed, ConnectionResetError):
                    return replies, True

    def assert_serving(self) -> None:
        """A good request is answered (after something hostile)."""
        reply = self.get("/v2/")
        assert reply.status == 200 and reply.body == b"{}", reply


def closed(s: socket.socket, f: io.BufferedReader) -> bool:
    """Whether the server closes the connection (EOF; a reset counts): waits for it."""
    s.settimeout(WAIT)
    try:
        rest = f.read(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", f"more bytes after the last response: {rest!r}"
    return True


@contextlib.contextmanager
def serving(
    root: Path,
    *,
    htpasswd: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    client_tls: ssl.SSLContext | None = None,
    check_failures: bool = True,
) -> Iterator[Server]:
    """The store ``root`` served in this process, on 127.0.0.1 and a free port."""
    store = Store(root)
    app = App(StoreView(store), Htpasswd(htpasswd) if htpasswd is not None else None)
    failures: list[str] = []
    listening = threading.Event()
    state: dict[str, Any] = {}

    def failed(request: Request) -> None:
        failures.append(f"{request.method} {request.path}: {traceback.format_exc()}")

    async def main() -> None:
        stop = asyncio.Event()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop

        def on_listening(host: str, port: int) -> None:
            state["address"] = (host, port)
            listening.set()

        await serve_forever(
            "127.0.0.1",
            0,
            app,
            tls=tls_context(*tls) if tls is not None else None,
            headers=[API_VERSION],
            on_listening=on_listening,
            on_failure=failed,
            stop=stop,
        )

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException:
            state["error"] = traceback.format_exc()
            listening.set()

    thread = threading.Thread(target=run, name="serve", daemon=True)
    thread.start()
    try:
        assert listening.wait(WAIT), "the server did not listen"
        assert "error" not in state, state["error"]
        host, port = state["address"]
        yield Server(host, port, client_tls, failures, app)
    finally:
        if "loop" in state:
            with contextlib.suppress(RuntimeError):  # (a loop that ended already)
                state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(WAIT)
        assert not thread.is_alive(), "the server did not stop"
        store.close()
    assert "error" not in state, state["error"]
    if check_failures:
        assert failures == [], "\n".join(failures)


@dataclass
class Command:
    """``ocistore serve`` running as a process."""

    server: Server
    proc: subprocess.Popen[bytes]
    stderr: Path


@contextlib.contextmanager
def serve_command(
    root: Path,
    *args: str | Path,
    client_tls: ssl.SSLContext | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Command]:
    """``ocistore --root ROOT serve --addr 127.0.0.1:0 ARGS``; its port read from its first
    line; stopped by SIGTERM at the end, which it must answer with exit 0 and no
    traceback."""
    stderr = root.parent / f"serve-{os.urandom(4).hex()}.err"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [str(OCISTORE), "--root", str(root), "serve", "--addr", "127.0.0.1:0"]
            + [str(a) for a in args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        scheme = "https" if client_tls is not None else "http"
        prefix = f"serving on {scheme}://127.0.0.1:"
        assert line.startswith(prefix) and line.endswith("\n"), (line, stderr.read_text())
        port = int(line[len(prefix) : -1])
        yield Command(Server("127.0.0.1", port, client_tls), proc, stderr)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"ocistore serve did not stop on SIGTERM: {stderr.read_text()}")
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
    said = stderr.read_text()
    assert code == 0, said
    assert "Traceback" not in said and "internal error" not in said, said


# --- images -------------------------------------------------------------------------------


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Layout:
    """An OCI layout being written: blobs, manifests, the index's descriptors."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.blobs = directory / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.index: list[dict[str, Any]] = []

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        (self.blobs / digest.removeprefix("sha256:")).write_bytes(data)
        return digest

    def image(
        self,
        files: dict[str, bytes],
        *,
        name: str | None = None,
        docker: bool = False,
        label: str = "",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A one-layer linux/amd64 image; its manifest (with ``extra`` fields: a subject,
        an artifactType) put in the index with ref name ``name``. Returns what was made:
        ``manifest`` (bytes), ``digest``, ``config`` and ``layer`` (digest, bytes)."""
        tar = layer_tar(files)
        layer = gzip.compress(tar, mtime=0)
        config = compact(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"test": label}} if label else {},
                "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
                "history": [{"created_by": "ocistore serve tests"}],
            }
        )
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                "digest": self.put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": DOCKER_LAYER if docker else OCI_LAYER,
                    "digest": self.put(layer),
                    "size": len(layer),
                }
            ],
        }
        doc.update(extra or {})
        raw = json.dumps(doc, indent=3).encode()  # (not the way ocistore would write it)
        digest = self.put(raw)
        desc: dict[str, Any] = {"mediaType": doc["mediaType"], "digest": digest, "size": len(raw)}
        if name is not None:
            desc["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.index.append(desc)
        return {
            "manifest": raw,
            "digest": digest,
            "config": (doc["config"]["digest"], config),
            "layer": (doc["layers"][0]["digest"], layer),
        }

    def artifact(self, subject: dict[str, Any], name: str | None, artifact_type: str) -> str:
        """An OCI 1.1 artifact manifest (empty config) whose subject is ``subject``."""
        empty = self.put(b"{}")
        blob = b"a signature, say\n"
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.example.signature",
                    "digest": self.put(blob),
                    "size": len(blob),
                }
            ],
            "subject": subject,
        }
        raw = compact(doc)
        digest = self.put(raw)
        desc: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw)}
        if name is not None:
            desc["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.index.append(desc)
        return digest

    def write(self) -> Path:
        (self.directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (self.directory / "index.json").write_bytes(
            compact({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.index})
        )
        return self.directory


def load(root: Path, layout: Path) -> None:
    """``ocistore load`` of ``layout`` into the store ``root`` (through the library)."""
    import ocistore

    with ocistore.open(root) as store:
        ocistore.load(store, layout)


def import_tar(root: Path, tar: bytes, reference: str) -> str:
    """``ocistore import`` of a root file system tarball: an image without a manifest."""
    with Store(root) as store:
        return str(store.import_tarball(io.BytesIO(tar), reference))


def parse_multipart(reply: Reply) -> list[tuple[str, bytes]]:
    """The parts of a ``multipart/byteranges`` body, strictly: ``(Content-Range, data)``."""
    ctype = reply.headers["content-type"]
    kind, _, params = ctype.partition(";")
    assert kind == "multipart/byteranges", ctype
    key, _, boundary = params.strip().partition("=")
    assert key == "boundary" and boundary, ctype
    boundary = boundary.strip('"')
    body = reply.body
    delimiter = f"--{boundary}".encode()
    pos = body.index(delimiter)
    assert body[:pos] in (b"", b"\r\n"), body[:pos]
    parts: list[tuple[str, bytes]] = []
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :] in (b"", b"\r\n"), body[pos:]
            return parts
        assert body[pos : pos + 2] == b"\r\n"
        end = body.index(b"\r\n\r\n", pos)
        headers = {}
        for line in body[pos + 2 : end].split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        content_range = headers["content-range"]
        unit, _, spec = content_range.partition(" ")
        assert unit == "bytes"
        first, _, rest = spec.partition("-")
        last, _, _size = rest.partition("/")
        length = int(last) - int(first) + 1
        start = end + 4
        parts.append((content_range, body[start : start + length]))
        pos = start + length
        assert body[pos : pos + 2] == b"\r\n", body[pos : pos + 20]
        pos += 2
        assert body[pos : pos + len(delimiter)] == delimiter, body[pos : pos + 60]
