"""``serve --proxy`` streams a layer to its client while the pull stores it: an upstream
of the test's own sends the first part of the layer, then holds the rest behind a gate;
the client gets the manifest and the first of it before the gate opens (so the bytes
came through while the upstream was still sending), then the rest, and the store ends up
with the image, verified. The upstream is asked for the layer once."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_peer import started_serve
from util import make_tar

import ocistore
from ocistore.spec.digest import CHUNK

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
#: What the upstream sends of the layer before its gate: more than a chunk of the store's
#: reads, less than the layer.
AHEAD = CHUNK + CHUNK // 2


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class GatedUpstream:
    """A registry holding one image, ``gated/app:1``; the layer's answer stops halfway
    until :attr:`gate` is set. Every request is counted."""

    def __init__(self) -> None:
        self.layer = make_tar({"data/blob.bin": os.urandom(3 << 20)}, dirs=True)
        self.config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [_digest(self.layer)]},
                "config": {},
            }
        ).encode()
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": _digest(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _digest(self.layer),
                        "size": len(self.layer),
                    }
                ],
            }
        ).encode()
        self.gate = threading.Event()
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle(self) -> None:
                # ocistore tries HTTPS first; answer a TLS handshake at once (by closing),
                # as Go's server does, instead of waiting for a request line.
                if self.connection.recv(1, socket.MSG_PEEK) != b"\x16":
                    super().handle()

            def _send(self, status: int, body: bytes, content_type: str, digest: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if digest:
                    self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                with upstream.lock:
                    upstream.requests.append(f"{self.command} {self.path}")
                layer = f"/v2/gated/app/blobs/{_digest(upstream.layer)}"
                if self.path == "/v2/":
                    self._send(200, b"{}", "application/json")
                elif self.path in (
                    "/v2/gated/app/manifests/1",
                    f"/v2/gated/app/manifests/{_digest(upstream.manifest)}",
                ):
                    self._send(200, upstream.manifest, OCI_MANIFEST, _digest(upstream.manifest))
                elif self.path == f"/v2/gated/app/blobs/{_digest(upstream.config)}":
                    self._send(200, upstream.config, "application/octet-stream")
                elif self.path == layer and self.command == "GET":
                    half = AHEAD
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(upstream.layer)))
                    self.end_headers()
                    self.wfile.write(upstream.layer[:half])
                    self.wfile.flush()
                    assert upstream.gate.wait(120), "the test never opened the gate"
                    self.wfile.write(upstream.layer[half:])
                else:
                    self._send(404, b'{"errors":[{"code":"NOT_FOUND"}]}', "application/json")

        return Handler


@pytest.fixture
def upstream() -> Iterator[tuple[GatedUpstream, str]]:
    gated = GatedUpstream()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), gated.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gated, f"127.0.0.1:{server.server_address[1]}"
    finally:
        gated.gate.set()
        server.shutdown()
        server.server_close()


def test_a_layer_streams_to_the_client_while_the_pull_stores_it(
    tmp_path: Path, upstream: tuple[GatedUpstream, str]
) -> None:
    gated, address = upstream
    root = tmp_path / "store"
    with started_serve(root, "--proxy", f"http://{address}") as serve:
        conn = serve.connection()
        conn.request("GET", "/v2/gated/app/manifests/1", headers={"Accept": OCI_MANIFEST})
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == gated.manifest
        assert response.getheader("Docker-Content-Digest") == _digest(gated.manifest)

        conn.request("GET", f"/v2/gated/app/blobs/{_digest(gated.config)}")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == gated.config

        conn.request("GET", f"/v2/gated/app/blobs/{_digest(gated.layer)}")
        response = conn.getresponse()
        assert response.status == 200
        assert int(response.getheader("Content-Length") or 0) == len(gated.layer)
        # The store reads the download CHUNK bytes at a time: the first chunk is whole
        # while the upstream holds the rest behind the gate.
        first = response.read(CHUNK)
        assert first == gated.layer[:CHUNK]
        assert not gated.gate.is_set()
        gated.gate.set()
        rest = response.read()
        assert first + rest == gated.layer
        conn.close()

        # Stored, verified, and from now on served from the store.
        conn = serve.connection()
        conn.request(
            "GET", f"/v2/gated/app/blobs/{_digest(gated.layer)}", headers={"Range": "bytes=0-9"}
        )
        response = conn.getresponse()
        assert response.status == 206 and response.read() == gated.layer[:10]
        conn.close()
    with ocistore.open(root) as store:
        assert store.resolve(f"{address}/gated/app:1") == _digest(gated.config)
    layer_gets = [
        r for r in gated.requests if r == f"GET /v2/gated/app/blobs/{_digest(gated.layer)}"
    ]
    assert len(layer_gets) == 1
