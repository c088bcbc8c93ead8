"""Real registry peers for the registry client's tests (issue 12): Debian's
``docker-registry`` (Distribution 2.8) on 127.0.0.1, a token server for it, and a fault
proxy in front of it.

:func:`started_registry` starts a registry with its storage under a temporary directory,
plain HTTP or TLS (a CA the test makes), with no authentication, ``htpasswd`` (bcrypt
entries made by Apache's ``htpasswd -B``) or ``token`` authentication (a
:class:`TokenServer` in this process, which follows Docker's token specification and its
OAuth2 variant). It is ready when its log says it listens and ``GET /v2/`` answers: events,
not a sleep. It is killed, with whatever it started, when the block ends.

:class:`FaultProxy` (:func:`started_fault_proxy`) forwards HTTP requests byte for byte to
a plain-HTTP registry and applies faults a test queues: a response cut after N bytes of
its body, a status the registry never gave, a request never answered. Faults fire on
requests counted, never on clocks. Everything listens on 127.0.0.1 only.

Requires ``docker-registry`` (and ``htpasswd`` for that mode): a test is skipped where one
is missing, and fails under ``CI=true`` (``make test`` installs them).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Seconds a registry is given to say it listens (a loaded 2-core machine is slow); a
#: bound on a failure, never a wait on success.
START_TIMEOUT = 120.0
#: Attempts at a free port: another process may take the one picked before the registry
#: binds it.
PORT_ATTEMPTS = 10
#: Who may do what by default (see :meth:`TokenServer.default_grant`).
DEFAULT_USERS = {"alice": "wonderland", "bob": "builder"}
#: The names the registry and its token server agree on.
TOKEN_SERVICE = "ocistore-test-registry"
TOKEN_ISSUER = "ocistore-test-token-issuer"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def registry_binary() -> str:
    """The path of Distribution's registry (Debian's ``docker-registry``, in /usr/bin, on
    PATH or not); skips the test when it is missing (fails when CI=true)."""
    path = shutil.which("docker-registry")
    if path is None and os.access("/usr/bin/docker-registry", os.X_OK):
        path = "/usr/bin/docker-registry"
    if path is None:
        _missing("peer tool 'docker-registry' is not installed (make test installs it as root)")
    assert path is not None
    return path


def htpasswd_binary() -> str:
    """Apache's ``htpasswd`` (Debian's apache2-utils); skips (fails when CI=true)."""
    path = shutil.which("htpasswd")
    if path is None:
        _missing("peer tool 'htpasswd' (apache2-utils) is not installed (make test installs it)")
    assert path is not None
    return path


# --- certificates -------------------------------------------------------------------------


@dataclass
class CertificateAuthority:
    """A CA a test made: its key, certificate, and the PEM file of the certificate."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    cert_file: Path

    def issue(
        self,
        common_name: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        server: bool = False,
    ) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        """A key and a certificate signed by this CA (for a TLS server when ``server``)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=server,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if server:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return key, builder.sign(self.key, hashes.SHA256())


def make_ca(directory: Path, common_name: str) -> CertificateAuthority:
    """A new self-signed CA; its certificate written to ``directory/ca.crt``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file = directory / "ca.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(key, cert, cert_file)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


# --- the token server ---------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """``repository:NAME:pull,push`` as (type, name, actions); a ``(class)`` after the type
    is dropped; None for what is not a scope. The name may hold colons (the type is before
    the first, the actions after the last)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    kind = kind.split("(", 1)[0]
    return kind, name, [a for a in actions.split(",") if a]


#: What a grant function answers: the actions ``user`` (None: anonymous) gets of those it
#: asked for on the resource ``(type, name)``.
Grant = Callable[[str | None, str, str, list[str]], list[str]]


class TokenServer:
    """A token server for Distribution's ``token`` authentication, as Docker's specification
    describes it (``docs/spec/auth/token.md`` and ``oauth.md``), in a thread of this process.

    ``GET url?service=S&scope=repository:NAME:pull,push&scope=…`` with optional Basic auth
    answers ``{"token", "access_token", "expires_in", "issued_at"}``; ``POST url`` with a
    form ``grant_type=password`` (username, password, service, scope, client_id,
    access_type=offline: then a ``refresh_token`` too) or ``grant_type=refresh_token``
    (refresh_token, service, scope, client_id) answers ``{"access_token", "scope",
    "expires_in", "issued_at"[, "refresh_token"]}``. Wrong Basic credentials are 401; a
    wrong password or unknown refresh token in a POST is 400 ``invalid_grant`` (RFC 6749);
    a service other than :attr:`service` is 400.

    The tokens are RS256 JWTs whose ``x5c`` header holds a certificate signed by
    :attr:`ca` (the registry's ``rootcertbundle``). Who gets what is :attr:`grant`
    (:meth:`default_grant` unless a test sets another); an action not granted is left out
    of the token (and a resource with none at all), as real token servers do, so that
    Distribution answers 401 ``insufficient_scope``.

    Settings a test may change at any time: :attr:`token_lifetime` (``expires_in`` and the
    token's ``exp``), :attr:`answer_key` (which key a GET answer holds the token under:
    ``"token"``, ``"access_token"`` or ``"both"``), :attr:`issue_expired` (tokens whose
    ``exp`` passed an hour ago, ``expires_in`` still claiming :attr:`token_lifetime`),
    :meth:`revoke_all_refresh_tokens`. :attr:`requests` records each request as
    ``(method, scopes, user or None, grant_type or None)``.
    """

    def __init__(
        self,
        directory: Path,
        users: dict[str, str],
        *,
        service: str = TOKEN_SERVICE,
        issuer: str = TOKEN_ISSUER,
        token_lifetime: int = 300,
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.token_lifetime = token_lifetime
        self.answer_key = "both"
        self.issue_expired = False
        self.grant: Grant = self.default_grant
        self.requests: list[tuple[str, list[str], str | None, str | None]] = []
        self.ca = make_ca(directory, "ocistore test token CA")
        self._key, cert = self.ca.issue("ocistore test token signer")
        self._x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self._refresh_tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        #: The realm: where the registry sends its clients.
        self.url = f"http://{self.host}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # How often it looks whether it should stop: how long its stop takes.
            kwargs={"poll_interval": 0.05},
            name="token-server",
            daemon=True,
        )

    @property
    def ca_file(self) -> Path:
        """The PEM of the CA that signs the tokens' certificates (``rootcertbundle``)."""
        return self.ca.cert_file

    @staticmethod
    def default_grant(user: str | None, kind: str, name: str, wanted: list[str]) -> list[str]:
        """Anonymous: pull on every repository. Everyone signed in: that, and ``alice``
        everything everywhere (the catalog too), any other user everything on the
        repositories under ``USER/`` (``bob/…`` for bob)."""
        if user == "alice":
            return list(wanted)
        if kind != "repository":
            return []
        if user is not None and name.startswith(user + "/"):
            return list(wanted)
        return [a for a in wanted if a == "pull"]

    def revoke_all_refresh_tokens(self) -> None:
        """Every refresh token issued so far is refused from now on (400 invalid_grant)."""
        with self._lock:
            self._refresh_tokens.clear()

    def make_token(self, user: str | None, scopes: list[str]) -> tuple[str, int]:
        """A signed token for ``user`` with what :attr:`grant` gives of ``scopes``, and its
        ``expires_in``."""
        access = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, wanted = parsed
            actions = self.grant(user, kind, name, wanted)
            if actions:
                access.append({"type": kind, "name": name, "actions": actions})
        now = int(time.time())
        lifetime = self.token_lifetime
        if self.issue_expired:
            issued, expires = now - 7200, now - 3600
        else:
            issued, expires = now, now + lifetime
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": expires,
            # A little in the past: Distribution compares it with its own clock.
            "nbf": issued - 30,
            "iat": issued,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        signing_input = f"{_b64url(_json_bytes(header))}.{_b64url(_json_bytes(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}", lifetime

    def _new_refresh_token(self, user: str) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    def _refresh_user(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)

    def _record(self, method: str, scopes: list[str], user: str | None, grant: str | None) -> None:
        with self._lock:
            self.requests.append((method, scopes, user, grant))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()


def _token_handler(server: TokenServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            data = _json_bytes(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="ocistore-test-token"')
            self.end_headers()
            self.wfile.write(data)

        def _issued(self) -> str:
            return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            user: str | None = None
            auth = self.headers.get("Authorization")
            if auth is not None:
                user = self._basic_user(auth)
                if user is None:
                    server._record("GET", scopes, None, None)
                    self._answer(401, {"details": "incorrect username or password"})
                    return
            server._record("GET", scopes, user, None)
            if query.get("service", [server.service])[0] != server.service:
                self._answer(400, {"details": "unknown service"})
                return
            token, lifetime = server.make_token(user, scopes)
            body: dict[str, Any] = {"expires_in": lifetime, "issued_at": self._issued()}
            if server.answer_key in ("token", "both"):
                body["token"] = token
            if server.answer_key in ("access_token", "both"):
                body["access_token"] = token
            self._answer(200, body)

        def _basic_user(self, header: str) -> str | None:
            kind, _, value = header.partition(" ")
            if kind.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                return None
            name, sep, password = decoded.partition(":")
            if (
                sep
                and name in server.users
                and secrets.compare_digest(server.users[name].encode(), password.encode())
            ):
                return name
            return None

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(
                self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True
            )

            def one(key: str) -> str | None:
                values = form.get(key)
                return values[0] if values else None

            grant = one("grant_type")
            scopes = [s for value in form.get("scope", []) for s in value.split(" ") if s]
            user: str | None = None
            refresh: str | None = None
            if grant == "password":
                name, password = one("username"), one("password")
                if (
                    name is not None
                    and password is not None
                    and name in server.users
                    and secrets.compare_digest(server.users[name].encode(), password.encode())
                ):
                    user = name
                    if one("access_type") == "offline":
                        refresh = server._new_refresh_token(name)
            elif grant == "refresh_token":
                user = server._refresh_user(one("refresh_token") or "")
            server._record("POST", scopes, user, grant)
            if grant not in ("password", "refresh_token") or not one("client_id"):
                self._answer(400, {"error": "invalid_request"})
                return
            if user is None:
                self._answer(400, {"error": "invalid_grant"})
                return
            if one("service") not in (None, server.service):
                self._answer(400, {"error": "invalid_request", "details": "unknown service"})
                return
            token, lifetime = server.make_token(user, scopes)
            body: dict[str, Any] = {
                "access_token": token,
                "scope": " ".join(scopes),
                "expires_in": lifetime,
                "issued_at": self._issued(),
            }
            if refresh is not None:
                body["refresh_token"] = refresh
            self._answer(200, body)

    return Handler


@contextlib.contextmanager
def started_token_server(
    directory: Path,
    users: dict[str, str] | None = None,
    *,
    service: str = TOKEN_SERVICE,
    issuer: str = TOKEN_ISSUER,
    token_lifetime: int = 300,
) -> Iterator[TokenServer]:
    """A :class:`TokenServer` on 127.0.0.1, its CA under ``directory``; stopped at the end."""
    server = TokenServer(
        directory,
        DEFAULT_USERS if users is None else users,
        service=service,
        issuer=issuer,
        token_lifetime=token_lifetime,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- servers of the tests' own -----------------------------------------------------------


@contextlib.contextmanager
def served(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server of the test's own on 127.0.0.1 (its ``HOST:PORT``), stopped at the
    end."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the registry -------------------------------------------------------------------------


@dataclass
class RegistryServer:
    """A running ``docker-registry``."""

    #: ``127.0.0.1:PORT``, as it goes in an image reference.
    host: str
    #: ``http://127.0.0.1:PORT`` or ``https://127.0.0.1:PORT``.
    url: str
    #: The storage root (filesystem driver).
    data_dir: Path
    #: The CA that signed its TLS certificate (``tls=True``), else None.
    ca_file: Path | None
    #: user → password it accepts (``htpasswd`` and ``token`` modes; empty for ``none``).
    users: dict[str, str]
    token_server: TokenServer | None
    #: ``"none"``, ``"htpasswd"`` or ``"token"``.
    auth: str = "none"
    #: Its configuration file (JSON, which is YAML).
    config_file: Path | None = None
    _log: list[str] = field(default_factory=list, repr=False)
    _log_lock: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def log_text(self) -> str:
        """The registry's log so far (standard output and error), for failure messages.
        A thread reads it as the registry writes it: a line about a request may come after
        the answer (see :meth:`wait_for_log`)."""
        with self._log_lock:
            return "".join(self._log)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> str:
        """Block until ``text`` is in the log ``count`` times (woken at each line it
        writes; its access log has a line per request, ``"GET /v2/ HTTP/1.1" 200``);
        fails the test if not in ``timeout`` seconds. Returns the log."""
        with self._log_lock:
            if not self._log_lock.wait_for(lambda: "".join(self._log).count(text) >= count,
                                           timeout):  # fmt: skip
                pytest.fail(f"docker-registry did not log {text!r} {count} times:\n"
                            + "".join(self._log))  # fmt: skip
            return "".join(self._log)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting :attr:`ca_file` (None for a plain-HTTP registry)."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    def connection(self, timeout: float = 60.0) -> http.client.HTTPConnection:
        """A new ``http.client`` connection to it (HTTPS with :attr:`ca_file` trusted)."""
        hostname, port = self.host.rsplit(":", 1)
        context = self.ssl_context()
        if context is not None:
            return http.client.HTTPSConnection(
                hostname, int(port), timeout=timeout, context=context
            )
        return http.client.HTTPConnection(hostname, int(port), timeout=timeout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _htpasswd_file(path: Path, users: dict[str, str]) -> None:
    tool = htpasswd_binary()
    lines = []
    for user, password in users.items():
        proc = subprocess.run(
            [tool, "-B", "-i", "-n", user],
            input=password,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            pytest.fail(f"htpasswd -B -i -n {user} exited {proc.returncode}: {proc.stderr}")
        lines.append(proc.stdout.strip() + "\n")
    path.write_text("".join(lines))


class _RegistryProcess:
    """One run of ``docker-registry serve``: its output read by a thread, which tells when
    it listens or exits."""

    def __init__(self, argv: list[str], env: dict[str, str], server: RegistryServer) -> None:
        self.log = server._log
        self.lock = server._log_lock
        self.listening = False
        self.killed = False
        self.settled = threading.Event()  # it listens, or its output ended
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="registry-log", daemon=True
        )
        self.reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace")
                with self.lock:
                    self.log.append(line)
                    self.lock.notify_all()
                if "listening on " in line:
                    self.listening = True
                    self.settled.set()
        self.settled.set()

    def kill(self) -> None:
        """Kill its process group, then reap it: never the other way round (once reaped,
        its ID may be another process's); a second call does nothing."""
        if self.killed:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join()


def _registry_config(
    data_dir: Path,
    port: int,
    *,
    auth: dict[str, Any] | None,
    tls: tuple[Path, Path] | None,
    schema1: bool,
) -> dict[str, Any]:
    http_section: dict[str, Any] = {
        "addr": f"127.0.0.1:{port}",
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    if tls is not None:
        http_section["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http_section,
    }
    if auth is not None:
        config["auth"] = auth
    if schema1:
        config["compatibility"] = {"schema1": {"enabled": True}}
    return config


@contextlib.contextmanager
def started_registry(
    workdir: Path,
    *,
    auth: str = "none",
    tls: bool = False,
    schema1: bool = False,
    users: dict[str, str] | None = None,
    token_lifetime: int = 300,
) -> Iterator[RegistryServer]:
    """Start ``docker-registry`` on 127.0.0.1 with its files in a new directory under
    ``workdir``: ``auth`` ``"none"``, ``"htpasswd"`` or ``"token"`` (with a
    :class:`TokenServer` of ``users``, default alice/wonderland and bob/builder), TLS with
    a CA of its own when ``tls``, schema 1 manifest pushes accepted when ``schema1``. It is
    killed (its process group) when the block ends, whatever happened."""
    if auth not in ("none", "htpasswd", "token"):
        raise ValueError(f"auth must be 'none', 'htpasswd' or 'token', not {auth!r}")
    binary = registry_binary()
    users = dict(DEFAULT_USERS if users is None else users)
    for user in users:
        if not user or ":" in user:
            raise ValueError(f"a user name may not be empty or hold ':': {user!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="registry-", dir=workdir))
    data_dir = directory / "data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
    with contextlib.ExitStack() as stack:
        token_server: TokenServer | None = None
        auth_section: dict[str, Any] | None = None
        if auth == "htpasswd":
            path = directory / "htpasswd"
            _htpasswd_file(path, users)
            auth_section = {"htpasswd": {"realm": "ocistore-test", "path": str(path)}}
        elif auth == "token":
            token_server = stack.enter_context(
                started_token_server(directory / "token", users, token_lifetime=token_lifetime)
            )
            auth_section = {
                "token": {
                    "realm": token_server.url,
                    "service": token_server.service,
                    "issuer": token_server.issuer,
                    "rootcertbundle": str(token_server.ca_file),
                }
            }
        ca_file: Path | None = None
        tls_files: tuple[Path, Path] | None = None
        if tls:
            ca = make_ca(directory / "tls", "ocistore test registry CA")
            key, cert = ca.issue("127.0.0.1", dns=("localhost",), ips=("127.0.0.1",), server=True)
            tls_files = (directory / "tls" / "server.crt", directory / "tls" / "server.key")
            tls_files[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_key(tls_files[1], key)
            ca_file = ca.cert_file
        config_file = directory / "config.yml"
        server = RegistryServer(
            host="",
            url="",
            data_dir=data_dir,
            ca_file=ca_file,
            users=users if auth != "none" else {},
            token_server=token_server,
            auth=auth,
            config_file=config_file,
        )
        process: _RegistryProcess | None = None
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            config = _registry_config(
                data_dir, port, auth=auth_section, tls=tls_files, schema1=schema1
            )
            config_file.write_text(json.dumps(config, indent=2) + "\n")
            with server._log_lock:
                server._log.append(f"--- docker-registry serve on 127.0.0.1:{port}\n")
                start = len(server._log)
            attempt = _RegistryProcess([binary, "serve", str(config_file)], env, server)
            stack.callback(attempt.kill)
            if not attempt.settled.wait(START_TIMEOUT):
                pytest.fail(
                    f"docker-registry did not say it listens in {START_TIMEOUT:.0f} s:\n"
                    + server.log_text()
                )
            if attempt.listening:
                process = attempt
                break
            attempt.kill()
            with server._log_lock:
                said = "".join(server._log[start:])
            if "address already in use" not in said:
                pytest.fail(
                    f"docker-registry exited {attempt.proc.returncode}:\n{server.log_text()}"
                )
        if process is None:
            pytest.fail(
                f"docker-registry found no free port in {PORT_ATTEMPTS} attempts:\n"
                + server.log_text()
            )
        server.host = f"127.0.0.1:{port}"
        server.url = f"{'https' if tls else 'http'}://{server.host}"
        _check_answers(server)
        yield server


def _check_answers(server: RegistryServer) -> None:
    """``GET /v2/`` answers (200, or 401 with a challenge when it needs authentication).
    It already listens (its log said so), so a connection is queued at once: the few
    attempts are for a connection reset, not for time to pass."""
    expected = 200 if server.auth == "none" else 401
    last: Exception | None = None
    for _ in range(3):
        conn = server.connection()
        try:
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
        except OSError as e:
            last = e
            continue
        finally:
            conn.close()
        if response.status != expected:
            pytest.fail(
                f"GET {server.url}/v2/ answered {response.status}, not {expected}:\n"
                + server.log_text()
            )
        return
    pytest.fail(f"GET {server.url}/v2/ failed: {last}\n{server.log_text()}")


# --- the fault proxy ----------------------------------------------------------------------


class HeaderDict(dict[str, str]):
    """Request headers: names in lower case, looked up in any case; a repeated header's
    values joined with ``, ``."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class Fault:
    """A queued fault: what it matches, what it does, how many more times."""

    kind: str  # "drop_after", "status" or "stall"
    method: str  # "*" for any
    path_re: re.Pattern[str]
    remaining: int
    nbytes: int = 0
    code: int = 0
    retry_after: int | str | None = None
    #: The requests it was applied to, as (method, path).
    hits: list[tuple[str, str]] = field(default_factory=list)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method)
            and self.path_re.search(path) is not None
        )


#: Distribution's error code for a status a fault answers with (``UNKNOWN`` for others).
_ERROR_CODES = {
    400: "UNSUPPORTED",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
    503: "UNAVAILABLE",
}
#: What Go's HTTP server answers a TLS handshake with.
_NOT_TLS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)


class _Closed(Exception):
    """The other end closed the connection in the middle of a message."""


def _read_head(stream: IO[bytes]) -> tuple[bytes, list[tuple[str, str]]] | None:
    """A message's start line and headers as read (raw), and the headers parsed; None at
    a clean end of the stream before any byte."""
    first = stream.readline(65537)
    if not first:
        return None
    raw = [first]
    headers: list[tuple[str, str]] = []
    while True:
        line = stream.readline(65537)
        if not line:
            raise _Closed("connection closed in headers")
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return b"".join(raw), headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def _copy_exact(src: IO[bytes], n: int, write: Callable[[bytes], None]) -> None:
    while n > 0:
        chunk = src.read(min(n, 65536))
        if not chunk:
            raise _Closed("connection closed in a body")
        write(chunk)
        n -= len(chunk)


def _copy_chunked(src: IO[bytes], write: Callable[[bytes], None]) -> None:
    """A chunked body, framing and trailers included, as read."""
    while True:
        line = src.readline(65537)
        if not line:
            raise _Closed("connection closed in a chunked body")
        write(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        _copy_exact(src, size + 2, write)
    while True:
        line = src.readline(65537)
        if not line:
            raise _Closed("connection closed in trailers")
        write(line)
        if line in (b"\r\n", b"\n"):
            return


def _copy_to_end(src: IO[bytes], write: Callable[[bytes], None]) -> None:
    while chunk := src.read1(65536):  # type: ignore[attr-defined]
        write(chunk)


class _Limited:
    """A writer that passes on its first ``n`` bytes and then raises :class:`_Cut`."""

    def __init__(self, write: Callable[[bytes], None], n: int) -> None:
        self.write_to = write
        self.left = n

    def __call__(self, data: bytes) -> None:
        if len(data) >= self.left:
            if self.left:
                self.write_to(data[: self.left])
            self.left = 0
            raise _Cut
        self.write_to(data)
        self.left -= len(data)


class _Cut(Exception):
    pass


class FaultProxy:
    """A plain-HTTP reverse proxy on 127.0.0.1 in front of a plain-HTTP registry, a thread
    per connection, forwarding each request and response byte for byte (the Host header
    too: Distribution builds its absolute ``Location`` URLs from it, so they name the
    proxy). Faults a test queues apply, in the order queued, to the next requests whose
    method (``"*"``: any) and request target (path and query, ``re.search``) match:

    - :meth:`drop_after`: the registry's response headers and the first ``nbytes`` bytes
      of its body (as sent: a chunked body's framing counts), then the connection closed;
    - :meth:`status`: ``code`` with a small JSON error body in Distribution's shape, the
      registry never asked (the request's body is read and dropped);
    - :meth:`stall`: the request read, never answered; the connection is closed when the
      proxy stops.

    :attr:`seen` records every request as ``(method, target, headers, status)``
    (:class:`HeaderDict` headers; status None for a stalled one, 502 where the registry
    could not be reached).
    """

    def __init__(self, target: RegistryServer) -> None:
        if not target.url.startswith("http://"):
            raise ValueError("the fault proxy forwards to a plain-HTTP registry only")
        self.target = target
        hostname, port = target.host.rsplit(":", 1)
        self._upstream = (hostname, int(port))
        self.seen: list[tuple[str, str, HeaderDict, int | None]] = []
        self.faults: list[Fault] = []
        #: What went wrong in the proxy itself (raised by :func:`started_fault_proxy`).
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.url = f"http://{self.host}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._acceptor = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    # The faults a test queues.

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def drop_after(self, method: str, path_re: str, nbytes: int, times: int = 1) -> Fault:
        """The next ``times`` matching responses stop after ``nbytes`` bytes of body."""
        return self._add(Fault("drop_after", method, re.compile(path_re), times, nbytes=nbytes))

    def status(
        self,
        method: str,
        path_re: str,
        code: int,
        retry_after: int | str | None = None,
        times: int = 1,
    ) -> Fault:
        """The next ``times`` matching requests are answered ``code`` (with ``Retry-After``
        when given) by the proxy itself."""
        return self._add(
            Fault("status", method, re.compile(path_re), times, code=code, retry_after=retry_after)
        )

    def stall(self, method: str, path_re: str, times: int = 1) -> Fault:
        """The next ``times`` matching requests are never answered (until the proxy stops)."""
        return self._add(Fault("stall", method, re.compile(path_re), times))

    def _take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    fault.hits.append((method, path))
                    return fault
        return None

    def _record(self, method: str, path: str, headers: list[tuple[str, str]], status: int | None):
        record = HeaderDict()
        for name, value in headers:
            key = name.lower()
            record[key] = f"{dict.get(record, key)}, {value}" if key in record else value
        with self._changed:
            self.seen.append((method, path, record, status))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Block until ``predicate()`` (called as each request is recorded in :attr:`seen`)
        holds; fails the test if it does not within ``timeout`` seconds (a bound on a
        failure, not a wait for time to pass)."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                pytest.fail(f"the fault proxy did not see what was waited for: {self.seen}")

    # Serving.

    def start(self) -> None:
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake_w.send(b"x")
        self._acceptor.join()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for t in threads:
            t.join(60)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    conn, _ = self._listener.accept()
                    t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                    with self._lock:
                        if self._stopping.is_set():
                            conn.close()
                            return
                        self._sockets.add(conn)
                        self._threads.add(t)
                    t.start()

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)
            if self._stopping.is_set():
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _forget(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        s.close()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while not self._stopping.is_set():
                if reader.peek(1)[:1] == b"\x16":
                    # A TLS handshake (a client trying HTTPS first, as skopeo does): told
                    # at once, as the registry would, not left waiting for a line.
                    client.sendall(_NOT_TLS)
                    return
                head = _read_head(reader)
                if head is None or not self._one_request(client, reader, *head):
                    return
        except (_Closed, OSError):
            return  # a peer went away (or the proxy stops): the connection ends
        except Exception as e:  # a bug of the proxy's: the test is told at the proxy's stop
            with self._lock:
                self.errors.append(e)
        finally:
            reader.close()
            with self._lock:
                self._threads.discard(threading.current_thread())
            self._forget(client)

    def _one_request(
        self,
        client: socket.socket,
        reader: IO[bytes],
        raw_head: bytes,
        headers: list[tuple[str, str]],
    ) -> bool:
        """Answer one request (forwarded, or a fault); whether the connection goes on."""
        parts = raw_head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return False
        method, target, version = parts
        chunked = "chunked" in (_header(headers, "transfer-encoding") or "").lower()
        length = int(_header(headers, "content-length") or 0)
        expect = (_header(headers, "expect") or "").lower() == "100-continue"
        keep = (_header(headers, "connection") or "").lower() != "close" and version != "HTTP/1.0"

        def send_body(write: Callable[[bytes], None]) -> None:
            if chunked:
                _copy_chunked(reader, write)
            else:
                _copy_exact(reader, length, write)

        fault = self._take(method, target)
        if fault is not None and fault.kind == "stall":
            self._record(method, target, headers, None)
            if not expect:
                send_body(lambda _: None)
            self._stopping.wait()
            return False
        if fault is not None and fault.kind == "status":
            self._record(method, target, headers, fault.code)
            if expect:
                keep = False  # its body was never asked for
            else:
                send_body(lambda _: None)
            client.sendall(self._fault_response(fault, method, close=not keep))
            return keep
        # A connection to the registry for each request: none is ever found closed under it.
        try:
            upstream = socket.create_connection(self._upstream)
        except OSError:
            self._record(method, target, headers, 502)
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")  # fmt: skip
            return False
        self._track(upstream)
        up_reader = upstream.makefile("rb")
        try:
            upstream.sendall(raw_head)
            response = None
            if expect:
                response = _read_head(up_reader)
                if response is not None and response[0].split(b" ", 2)[1] == b"100":
                    client.sendall(response[0])
                    response = None
                else:
                    keep = False  # the client may be sending the body anyway
            if response is None:
                send_body(upstream.sendall)
                response = _read_head(up_reader)
                # Interim answers (1xx) go on to the client; the final one follows.
                while response is not None and response[0].split(b" ", 2)[1].startswith(b"1"):
                    client.sendall(response[0])
                    response = _read_head(up_reader)
            if response is None:
                raise _Closed("the registry closed the connection without an answer")
            raw_response, response_headers = response
            status = int(raw_response.split(b" ", 2)[1])
            self._record(method, target, headers, status)
            client.sendall(raw_response)
            write: Callable[[bytes], None] = client.sendall
            if fault is not None and fault.kind == "drop_after":
                write = _Limited(client.sendall, fault.nbytes)
                keep = False  # closed after nbytes, or at the body's end if it is shorter
            if (_header(response_headers, "connection") or "").lower() == "close":
                keep = False
            with contextlib.suppress(_Cut):
                if method == "HEAD" or status in (204, 304):
                    pass
                elif "chunked" in (_header(response_headers, "transfer-encoding") or "").lower():
                    _copy_chunked(up_reader, write)
                elif (n := _header(response_headers, "content-length")) is not None:
                    _copy_exact(up_reader, int(n), write)
                else:
                    _copy_to_end(up_reader, write)
                    keep = False
            return keep
        finally:
            up_reader.close()
            self._forget(upstream)

    @staticmethod
    def _fault_response(fault: Fault, method: str, close: bool) -> bytes:
        try:
            reason = http.HTTPStatus(fault.code).phrase
        except ValueError:
            reason = "Fault"
        body = _json_bytes(
            {
                "errors": [
                    {
                        "code": _ERROR_CODES.get(fault.code, "UNKNOWN"),
                        "message": f"fault injected by the test proxy: {fault.code}",
                        "detail": None,
                    }
                ]
            }
        )
        lines = [
            f"HTTP/1.1 {fault.code} {reason}",
            "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Docker-Distribution-Api-Version: registry/2.0",
        ]
        if fault.retry_after is not None:
            lines.append(f"Retry-After: {fault.retry_after}")
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if method == "HEAD" else head + body


@contextlib.contextmanager
def started_fault_proxy(target: RegistryServer) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of ``target``; stopped (stalled requests closed) at
    the end."""
    proxy = FaultProxy(target)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
    if proxy.errors:
        raise AssertionError(f"the fault proxy failed: {proxy.errors!r}") from proxy.errors[0]


# --- a small image ------------------------------------------------------------------------


def write_oci_layout(
    directory: Path, tag: str = "latest", files: dict[str, bytes] | None = None
) -> str:
    """A one-layer linux/amd64 image as an OCI layout at ``directory`` (tagged ``tag`` in
    its index), for skopeo to copy; returns its manifest's digest."""
    import io
    import tarfile

    files = {"hello.txt": b"hello from ocistore's registry tests\n"} if files is None else files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    layer_tar = buf.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    config = _json_bytes(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/hello.txt"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"],
            },
            "history": [{"created_by": "ocistore test"}],
        }
    )
    manifest = _json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer),
                    "size": len(layer),
                }
            ],
        }
    )
    digest = put(manifest)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_bytes(_json_bytes(index))
    return digest
