"""The registry peers of issue 12 (``tests/registry_peer.py``) do what the client's tests
rely on: Distribution's ``docker-registry`` in each of its modes, checked with skopeo and
plain HTTP; the token server's grants and OAuth2 flows; the fault proxy's faults."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import re
import shutil
import ssl
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import registry_peer
from conftest import Runner
from registry_peer import (
    RegistryServer,
    TokenServer,
    started_fault_proxy,
    started_registry,
    write_oci_layout,
)

# --- helpers ------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, str]:
    """A small image as an OCI layout (tag ``v1``) and its manifest digest."""
    path = tmp_path / "layout"
    return path, write_oci_layout(path, "v1")


def copy(
    skopeo: Runner, tmp_path: Path, src: str, dest: str, *flags: str, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy`` with no credentials but those in ``flags`` (an empty auth file)."""
    authfile = tmp_path / "no-auth.json"
    return skopeo(
        "copy",
        "--src-authfile",
        authfile,
        "--dest-authfile",
        authfile,
        *flags,
        src,
        dest,
        check=check,
    )


def push(
    skopeo: Runner, tmp_path: Path, layout: Path, server: RegistryServer, ref: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    tls = [] if server.ca_file else ["--dest-tls-verify=false"]
    return copy(skopeo, tmp_path, f"oci:{layout}:v1", f"docker://{server.host}/{ref}", *tls, *flags)


def must(proc: subprocess.CompletedProcess[str], server: RegistryServer) -> None:
    assert proc.returncode == 0, f"{proc.args}: {proc.stderr}\n--- registry log:\n" + (
        server.log_text()
    )


def call(
    url: str,
    method: str = "GET",
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with urllib: status, headers, body (an error status is an answer)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def get_token(
    tokens: TokenServer, *scopes: str, auth: tuple[str, str] | None = None
) -> dict[str, Any]:
    query = urllib.parse.urlencode([("service", tokens.service), *(("scope", s) for s in scopes)])
    code, _, body = call(f"{tokens.url}?{query}", headers=basic(*auth) if auth else None)
    assert code == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def wanted(scopes: list[str]) -> set[tuple[str, str, frozenset[str]]]:
    """Scopes as a set of (type, name, actions), in whatever order they were written."""
    parsed = [registry_peer.parse_scope(s) for s in scopes]
    return {(p[0], p[1], frozenset(p[2])) for p in parsed if p is not None}


def oauth(tokens: TokenServer, **form: str) -> tuple[int, dict[str, Any]]:
    body = urllib.parse.urlencode(form).encode()
    code, _, answer = call(
        tokens.url,
        "POST",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    return code, json.loads(answer)


def start_upload(server: RegistryServer, repo: str, token: str) -> tuple[int, dict[str, str]]:
    code, headers, _ = call(f"{server.url}/v2/{repo}/blobs/uploads/", "POST", headers=bearer(token))
    return code, headers


def push_blob(server: RegistryServer, repo: str, data: bytes) -> str:
    """A blob pushed (POST then PUT) to an open registry; its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    code, headers, _ = call(f"{server.url}/v2/{repo}/blobs/uploads/", "POST")
    assert code == 202
    location = headers["Location"]
    sep = "&" if "?" in location else "?"
    code, _, body = call(
        f"{location}{sep}digest={digest}",
        "PUT",
        body=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert code == 201, body
    return digest


# --- the registry, open ------------------------------------------------------------------


def test_plain_push_and_pull(
    registry: RegistryServer, skopeo: Runner, tmp_path: Path, layout: tuple[Path, str]
) -> None:
    path, digest = layout
    must(push(skopeo, tmp_path, path, registry, "peer/plain:1"), registry)
    pulled = tmp_path / "pulled"
    must(
        copy(
            skopeo,
            tmp_path,
            f"docker://{registry.host}/peer/plain:1",
            f"oci:{pulled}:back",
            "--src-tls-verify=false",
        ),
        registry,
    )
    index = json.loads((pulled / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    repo = registry.data_dir / "docker/registry/v2/repositories/peer/plain"
    assert (repo / "_manifests/tags/1/current/link").read_text() == digest
    code, _, body = call(f"{registry.url}/v2/peer/plain/tags/list")
    assert (code, json.loads(body)) == (200, {"name": "peer/plain", "tags": ["1"]})
    registry.wait_for_log('"GET /v2/peer/plain/tags/list HTTP/1.1" 200')


def test_stopped_at_the_end_and_files_in_the_workdir(tmp_path: Path) -> None:
    with started_registry(tmp_path / "work") as server:
        assert server.data_dir.is_relative_to(tmp_path / "work")
        assert server.url == f"http://{server.host}" and server.host.startswith("127.0.0.1:")
        assert server.ca_file is None and server.token_server is None and server.users == {}
        code, _, _ = call(f"{server.url}/v2/")
        assert code == 200
    conn = server.connection(timeout=30)
    with pytest.raises(ConnectionRefusedError):
        conn.request("GET", "/v2/")
    conn.close()


def test_a_port_taken_meanwhile_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port picked is taken before the registry binds it: it fails, another is tried."""
    with contextlib.ExitStack() as stack:
        taken = stack.enter_context(contextlib.closing(registry_peer.socket.socket()))
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        picks = iter([busy])
        real = registry_peer._free_port
        monkeypatch.setattr(registry_peer, "_free_port", lambda: next(picks, None) or real())
        server = stack.enter_context(started_registry(tmp_path))
        assert server.host != f"127.0.0.1:{busy}"
        assert "address already in use" in server.log_text()
        assert call(f"{server.url}/v2/")[0] == 200


def test_the_factory_starts_many(
    registry_factory: Callable[..., RegistryServer], registry: RegistryServer
) -> None:
    one, two = registry_factory(), registry_factory(auth="htpasswd")
    assert len({one.host, two.host, registry.host}) == 3
    assert call(f"{one.url}/v2/")[0] == 200
    assert call(f"{two.url}/v2/")[0] == 401


def test_distribution_answers_as_a_client_must_expect(registry: RegistryServer) -> None:
    """What the client is written against (see the report of issue 12's peers): uploads
    in chunks, Range reads of blobs, error bodies."""
    data = bytes(range(256)) * 64
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    code, headers, _ = call(f"{registry.url}/v2/peer/facts/blobs/uploads/", "POST")
    assert (code, headers["Range"]) == (202, "0-0")
    location = headers["Location"]
    assert location.startswith(f"{registry.url}/v2/peer/facts/blobs/uploads/")
    for start in (0, 8192):
        code, headers, _ = call(
            location,
            "PATCH",
            body=data[start : start + 8192],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert (code, headers["Range"]) == (202, f"0-{start + 8191}")
        location = headers["Location"]  # a new _state each time: the old one is refused
    code, headers, _ = call(f"{location}&digest={digest}", "PUT")
    assert (code, headers["Docker-Content-Digest"]) == (201, digest)
    blob = f"{registry.url}/v2/peer/facts/blobs/{digest}"
    code, headers, body = call(blob, headers={"Range": "bytes=16000-"})
    assert (code, headers["Content-Range"], body) == (206, "bytes 16000-16383/16384", data[16000:])
    code, _, body = call(f"{registry.url}/v2/peer/facts/manifests/nope")
    assert code == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


# --- htpasswd ----------------------------------------------------------------------------


def test_htpasswd_push_needs_credentials(
    registry_factory: Callable[..., RegistryServer],
    skopeo: Runner,
    tmp_path: Path,
    layout: tuple[Path, str],
) -> None:
    server = registry_factory(auth="htpasswd")
    assert server.users == registry_peer.DEFAULT_USERS
    assert server.config_file is not None
    entries = (server.config_file.parent / "htpasswd").read_text().splitlines()
    assert [e.split(":", 1)[0] for e in entries] == ["alice", "bob"]
    assert all(e.split(":", 1)[1].startswith("$2y$") for e in entries)  # bcrypt
    denied = push(skopeo, tmp_path, layout[0], server, "peer/secret:1")
    assert denied.returncode != 0
    assert "unauthorized" in denied.stderr.lower() or "401" in denied.stderr
    wrong = push(skopeo, tmp_path, layout[0], server, "peer/secret:1", "--dest-creds", "bob:x")
    assert wrong.returncode != 0
    must(
        push(skopeo, tmp_path, layout[0], server, "peer/secret:1", "--dest-creds", "bob:builder"),
        server,
    )
    code, headers, _ = call(f"{server.url}/v2/peer/secret/tags/list")
    assert (code, headers["Www-Authenticate"]) == (401, 'Basic realm="ocistore-test"')
    code, _, body = call(
        f"{server.url}/v2/peer/secret/tags/list", headers=basic("alice", "wonderland")
    )
    assert (code, json.loads(body)["tags"]) == (200, ["1"])


# --- token -------------------------------------------------------------------------------


@pytest.fixture
def token_registry(registry_factory: Callable[..., RegistryServer]) -> RegistryServer:
    return registry_factory(auth="token")


def test_token_grants_as_documented(
    token_registry: RegistryServer, skopeo: Runner, tmp_path: Path, layout: tuple[Path, str]
) -> None:
    server = token_registry
    tokens = server.token_server
    assert tokens is not None
    path = layout[0]
    anonymous = push(skopeo, tmp_path, path, server, "shared/app:1")
    assert anonymous.returncode != 0
    assert "denied" in anonymous.stderr or "unauthorized" in anonymous.stderr.lower()
    alice, bob = ("--dest-creds", "alice:wonderland"), ("--dest-creds", "bob:builder")
    must(push(skopeo, tmp_path, path, server, "shared/app:1", *alice), server)
    bob_outside = push(skopeo, tmp_path, path, server, "shared/app:2", *bob)
    assert bob_outside.returncode != 0
    must(push(skopeo, tmp_path, path, server, "bob/app:1", *bob), server)
    pulled = copy(
        skopeo,
        tmp_path,
        f"docker://{server.host}/shared/app:1",
        f"oci:{tmp_path / 'pulled'}:x",
        "--src-tls-verify=false",
    )
    must(pulled, server)
    users = {user for _, _, user, _ in tokens.requests}
    assert users == {None, "alice", "bob"}
    asked = [(method, wanted(scopes), user) for method, scopes, user, _ in tokens.requests]
    assert ("GET", {("repository", "shared/app", frozenset({"pull", "push"}))}, "alice") in asked
    assert ("GET", {("repository", "shared/app", frozenset({"pull"}))}, None) in asked


def test_token_scopes_not_granted_are_left_out(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    answer = get_token(tokens, "repository:shared/x:pull,push", "repository:bob/x:pull,push")
    assert set(answer) == {"token", "access_token", "expires_in", "issued_at"}
    assert answer["token"] == answer["access_token"] and answer["expires_in"] == 300
    granted = claims(answer["token"])
    assert granted["access"] == [
        {"type": "repository", "name": "shared/x", "actions": ["pull"]},
        {"type": "repository", "name": "bob/x", "actions": ["pull"]},
    ]
    assert granted["iss"] == tokens.issuer and granted["aud"] == tokens.service
    assert granted["sub"] == "" and granted["nbf"] < granted["iat"] < granted["exp"]
    scopes = ("repository:shared/x:pull,push", "repository:bob/x:pull,push")
    bob = claims(get_token(tokens, *scopes, auth=("bob", "builder"))["token"])
    assert bob["sub"] == "bob"
    assert bob["access"] == [
        {"type": "repository", "name": "shared/x", "actions": ["pull"]},
        {"type": "repository", "name": "bob/x", "actions": ["pull", "push"]},
    ]
    nothing = claims(get_token(tokens, "registry:catalog:*", auth=("bob", "builder"))["token"])
    assert nothing["access"] == []
    # Distribution takes the anonymous token to read, and refuses it to write.
    anonymous = answer["token"]
    code, headers = start_upload(token_registry, "shared/x", anonymous)
    assert code == 401
    assert 'error="insufficient_scope"' in headers["Www-Authenticate"]
    # The challenge names the scope needed, its actions in no fixed order (a Go map's).
    challenge = dict(re.findall(r'(\w+)="([^"]*)"', headers["Www-Authenticate"]))
    assert wanted([challenge["scope"]]) == {("repository", "shared/x", frozenset({"pull", "push"}))}
    code, _, _ = call(f"{token_registry.url}/v2/shared/x/tags/list", headers=bearer(anonymous))
    assert code == 404  # allowed in, nothing there
    bob_token = get_token(tokens, "repository:bob/x:pull,push", auth=("bob", "builder"))["token"]
    assert start_upload(token_registry, "bob/x", bob_token)[0] == 202
    code, _, _ = call(tokens.url, headers=basic("bob", "wrong"))
    assert code == 401
    assert tokens.requests[-1] == ("GET", [], None, None)


def test_token_answer_keys_and_lifetime(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    tokens.answer_key = "token"
    tokens.token_lifetime = 7
    answer = get_token(tokens, "repository:a:pull")
    assert "access_token" not in answer and answer["expires_in"] == 7
    granted = claims(answer["token"])
    assert granted["exp"] - granted["iat"] == 7
    tokens.answer_key = "access_token"
    assert "token" not in get_token(tokens, "repository:a:pull")


def test_refresh_tokens(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    scope = "repository:alice/app:pull,push"
    code, answer = oauth(
        tokens,
        grant_type="password",
        username="alice",
        password="wonderland",
        service=tokens.service,
        scope=scope,
        client_id="ocistore-test",
        access_type="offline",
    )
    assert code == 200, answer
    assert {"access_token", "refresh_token", "expires_in", "issued_at"} <= set(answer)
    refresh = answer["refresh_token"]
    code, answer = oauth(
        tokens,
        grant_type="refresh_token",
        refresh_token=refresh,
        service=tokens.service,
        scope=scope,
        client_id="ocistore-test",
    )
    assert code == 200, answer
    assert "refresh_token" not in answer
    assert claims(answer["access_token"])["sub"] == "alice"
    assert start_upload(token_registry, "alice/app", answer["access_token"])[0] == 202
    assert tokens.requests[-1] == ("POST", [scope], "alice", "refresh_token")
    # Without offline access no refresh token; a wrong password or no client_id is refused.
    common = {"service": tokens.service, "scope": scope, "client_id": "ocistore-test"}
    code, answer = oauth(
        tokens, grant_type="password", username="alice", password="wonderland", **common
    )
    assert code == 200 and "refresh_token" not in answer
    code, answer = oauth(tokens, grant_type="password", username="alice", password="x", **common)
    assert (code, answer) == (400, {"error": "invalid_grant"})
    code, answer = oauth(tokens, grant_type="refresh_token", refresh_token=refresh, scope=scope)
    assert (code, answer) == (400, {"error": "invalid_request"})
    tokens.revoke_all_refresh_tokens()
    code, answer = oauth(tokens, grant_type="refresh_token", refresh_token=refresh, **common)
    assert (code, answer) == (400, {"error": "invalid_grant"})
    assert tokens.requests[-1] == ("POST", [scope], None, "refresh_token")


def test_expired_tokens_are_refused(token_registry: RegistryServer) -> None:
    tokens = token_registry.token_server
    assert tokens is not None
    scope = "repository:alice/old:pull,push"
    tokens.issue_expired = True
    answer = get_token(tokens, scope, auth=("alice", "wonderland"))
    assert answer["expires_in"] == 300  # what it says; the token itself is long expired
    code, headers = start_upload(token_registry, "alice/old", answer["token"])
    assert code == 401
    assert 'error="invalid_token"' in headers["Www-Authenticate"]
    tokens.issue_expired = False
    fresh = get_token(tokens, scope, auth=("alice", "wonderland"))["token"]
    assert start_upload(token_registry, "alice/old", fresh)[0] == 202


# --- TLS ---------------------------------------------------------------------------------


def test_tls_with_and_without_the_ca(
    registry_factory: Callable[..., RegistryServer],
    skopeo: Runner,
    tmp_path: Path,
    layout: tuple[Path, str],
) -> None:
    server = registry_factory(tls=True)
    assert server.url == f"https://{server.host}" and server.ca_file is not None
    refused = push(skopeo, tmp_path, layout[0], server, "peer/tls:1")
    assert refused.returncode != 0 and "x509" in refused.stderr
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(server.ca_file, certs / "ca.crt")
    trusted = push(skopeo, tmp_path, layout[0], server, "peer/tls:1", "--dest-cert-dir", str(certs))
    must(trusted, server)
    assert call(f"{server.url}/v2/", context=server.ssl_context())[0] == 200
    localhost = server.url.replace("127.0.0.1", "localhost")
    assert call(f"{localhost}/v2/", context=server.ssl_context())[0] == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        call(f"{server.url}/v2/", context=ssl.create_default_context())


def test_token_registry_over_tls(
    registry_factory: Callable[..., RegistryServer],
    skopeo: Runner,
    tmp_path: Path,
    layout: tuple[Path, str],
) -> None:
    server = registry_factory(auth="token", tls=True)
    assert server.ca_file is not None
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(server.ca_file, certs / "ca.crt")
    flags = ("--dest-cert-dir", str(certs), "--dest-creds", "alice:wonderland")
    must(push(skopeo, tmp_path, layout[0], server, "alice/tls:1", *flags), server)


# (A signed schema 1 manifest pushed and pulled back: tests/test_schema1.py.)


def test_schema1_setting_is_in_the_config(registry_factory: Callable[..., RegistryServer]) -> None:
    server = registry_factory(schema1=True)
    assert server.config_file is not None
    config = json.loads(server.config_file.read_text())
    assert config["compatibility"] == {"schema1": {"enabled": True}}


# --- the fault proxy ---------------------------------------------------------------------


@pytest.fixture
def blob_registry(registry: RegistryServer) -> tuple[RegistryServer, str, bytes]:
    data = bytes(range(256)) * 512  # 128 KiB
    return registry, push_blob(registry, "peer/faults", data), data


def request(
    host: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float | None = 60,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    hostname, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=timeout)
    conn.request(method, path, body=body, headers=headers or {})
    return conn, conn.getresponse()


@pytest.fixture
def proxied(
    blob_registry: tuple[RegistryServer, str, bytes],
) -> Iterator[tuple[registry_peer.FaultProxy, str, bytes]]:
    registry, digest, data = blob_registry
    with started_fault_proxy(registry) as proxy:
        yield proxy, digest, data


def test_proxy_forwards_and_names_itself_in_locations(
    proxied: tuple[registry_peer.FaultProxy, str, bytes],
) -> None:
    proxy, digest, data = proxied
    conn, response = request(proxy.host, "GET", f"/v2/peer/faults/blobs/{digest}")
    assert (response.status, response.read()) == (200, data)
    # The same connection again (keep-alive), then an upload whose Location names the proxy.
    conn.request("POST", "/v2/peer/faults/blobs/uploads/")
    response = conn.getresponse()
    response.read()
    assert response.status == 202
    assert response.headers["Location"].startswith(f"{proxy.url}/v2/peer/faults/blobs/uploads/")
    conn.close()
    assert [(m, p, s) for m, p, _, s in proxy.seen] == [
        ("GET", f"/v2/peer/faults/blobs/{digest}", 200),
        ("POST", "/v2/peer/faults/blobs/uploads/", 202),
    ]
    assert proxy.seen[0][2]["host"] == proxy.host == proxy.seen[0][2]["HOST"]


def test_proxy_drop_after_then_range_resume(
    proxied: tuple[registry_peer.FaultProxy, str, bytes],
) -> None:
    proxy, digest, data = proxied
    path = f"/v2/peer/faults/blobs/{digest}"
    fault = proxy.drop_after("GET", r"/blobs/sha256:", 1000)
    conn, response = request(proxy.host, "GET", path)
    assert response.status == 200 and response.headers["Content-Length"] == str(len(data))
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert cut.value.partial == data[:1000]
    conn.close()
    assert fault.remaining == 0 and fault.hits == [("GET", path)]
    conn, response = request(proxy.host, "GET", path, {"Range": "bytes=1000-"})
    assert response.status == 206 and response.read() == data[1000:]
    conn.close()
    assert proxy.seen[-1][2].get("Range") == "bytes=1000-" and proxy.seen[-1][3] == 206
    assert "range" not in proxy.seen[0][2]


def test_proxy_status_answers_without_the_registry(
    proxied: tuple[registry_peer.FaultProxy, str, bytes],
) -> None:
    proxy, _, data = proxied
    digest = push_blob(proxy.target, "peer/status-faults", data)
    path = f"/v2/peer/status-faults/blobs/{digest}"
    proxy.status("GET", r"/blobs/", 503, retry_after=2, times=2)
    proxy.status("HEAD", r"/blobs/", 429)
    conn, response = request(proxy.host, "GET", path)
    assert (response.status, response.headers["Retry-After"]) == (503, "2")
    assert json.loads(response.read())["errors"][0]["code"] == "UNAVAILABLE"
    conn.request("GET", path)  # the same connection: the fault answer kept it usable
    response = conn.getresponse()
    assert (response.status, response.read()[:1]) == (503, b"{")
    conn.request("HEAD", path)
    response = conn.getresponse()
    assert (response.status, response.read(), response.headers["Retry-After"]) == (429, b"", None)
    conn.request("GET", path)
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, data)
    conn.close()
    assert [s for *_, s in proxy.seen] == [503, 503, 429, 200]
    # The registry saw the one request the proxy passed on (and, but for a line written
    # late, no other: a faulted request that reached it would be in its log too).
    assert proxy.target.wait_for_log(f"GET {path} ").count(f"GET {path} ") == 1


def test_proxy_stall_until_the_client_gives_up_or_the_proxy_stops(
    blob_registry: tuple[RegistryServer, str, bytes],
) -> None:
    registry, digest, _ = blob_registry
    path = f"/v2/peer/faults/blobs/{digest}"
    outcome: list[BaseException] = []
    with started_fault_proxy(registry) as proxy:
        proxy.stall("GET", r"/blobs/", times=2)
        # The client's own timeout fires: the proxy never answers.
        with pytest.raises(TimeoutError):
            request(proxy.host, "GET", path, timeout=0.5)
        # A client with no timeout at all is let go when the proxy stops.
        hostname, port = proxy.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(hostname, int(port))
        conn.request("GET", path)

        def wait() -> None:
            try:
                conn.getresponse()
            except BaseException as e:
                outcome.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        # Stopped once the proxy holds the second request (an event, not a time).
        proxy.wait_for(lambda: len(proxy.seen) == 2)
    waiter.join(120)
    conn.close()
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], http.client.RemoteDisconnected | OSError)
    assert [s for *_, s in proxy.seen] == [None, None]


def test_proxy_carries_a_whole_push_and_pull(
    registry: RegistryServer, skopeo: Runner, tmp_path: Path, layout: tuple[Path, str]
) -> None:
    """skopeo through the proxy: every request and body as the registry would see them."""
    with started_fault_proxy(registry) as proxy:
        ref = f"docker://{proxy.host}/peer/proxied:1"
        pushed = copy(skopeo, tmp_path, f"oci:{layout[0]}:v1", ref, "--dest-tls-verify=false")
        must(pushed, registry)
        back = f"oci:{tmp_path / 'back'}:b"
        must(copy(skopeo, tmp_path, ref, back, "--src-tls-verify=false"), registry)
        methods = {m for m, *_ in proxy.seen}
        assert {"GET", "HEAD", "POST", "PUT"} <= methods
        assert all(s is not None and (s < 400 or s == 404) for *_, s in proxy.seen), proxy.seen
        index = json.loads((tmp_path / "back" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == layout[1]


def test_proxy_forwards_chunked_bodies_and_any_method_faults(
    proxied: tuple[registry_peer.FaultProxy, str, bytes],
) -> None:
    proxy, _, _ = proxied
    data = bytes(range(256)) * 300
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn, response = request(proxy.host, "POST", "/v2/peer/chunked/blobs/uploads/")
    response.read()
    location = urllib.parse.urlsplit(response.headers["Location"])
    pieces = [data[i : i + 10000] for i in range(0, len(data), 10000)]
    conn.request(
        "PATCH",
        f"{location.path}?{location.query}",
        body=iter(pieces),
        headers={"Content-Type": "application/octet-stream"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    response.read()
    assert (response.status, response.headers["Range"]) == (202, f"0-{len(data) - 1}")
    location = urllib.parse.urlsplit(response.headers["Location"])
    proxy.status("*", r"digest=", 500)
    put = f"{location.path}?{location.query}&digest={digest}"
    conn.request("PUT", put)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["errors"][0]["code"]) == (500, "UNKNOWN")
    conn.request("PUT", put)  # the fault was for one request: this one reaches the registry
    response = conn.getresponse()
    response.read()
    assert (response.status, response.headers["Docker-Content-Digest"]) == (201, digest)
    conn.close()
    assert proxy.seen[1][2]["Transfer-Encoding"] == "chunked"


def test_token_server_refuses_another_service_and_knows_custom_users(
    registry_factory: Callable[..., RegistryServer],
) -> None:
    server = registry_factory(auth="token", users={"carol": "pw"})
    tokens = server.token_server
    assert tokens is not None and server.users == {"carol": "pw"}
    code, _, _ = call(f"{tokens.url}?service=elsewhere&scope=repository:a:pull")
    assert code == 400
    assert call(tokens.url, headers=basic("alice", "wonderland"))[0] == 401
    granted = claims(get_token(tokens, "repository:carol/a:push", auth=("carol", "pw"))["token"])
    assert granted["access"] == [{"type": "repository", "name": "carol/a", "actions": ["push"]}]
