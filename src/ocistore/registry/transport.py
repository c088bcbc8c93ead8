"""HTTP to registries: connections, TLS, plain HTTP where allowed, redirects, retries.

One :class:`Transport` serves a command: it keeps idle connections per host (a pull
fetches several blobs at once, each on a connection of its own, reused for the next),
chooses the scheme of each registry once, and answers :meth:`Transport.request` with a
:class:`Response` whose body streams.

* **TLS** is verified against the system's CAs plus, for a registry ``HOST[:PORT]``, the
  ``*.crt`` files of ``--cert-dir`` or else of ``/etc/docker/certs.d/HOST[:PORT]/`` and
  ``/etc/containers/certs.d/HOST[:PORT]/`` (Docker's and podman's places), whose
  ``*.cert``/``*.key`` pairs are client certificates. ``tls_verify=False`` skips the
  verification.
* **Plain HTTP** is used only for a loopback registry (``localhost``, 127.0.0.0/8,
  ``::1``, as Docker treats them) or when ``tls_verify`` is false: HTTPS is tried first,
  and a server that answers it in plain HTTP is then spoken to in plain HTTP. Any other
  registry answering plain HTTP is an error that says so, and how to allow it.
* **Redirects** (blob downloads are often sent to object storage) are followed, at most
  :data:`MAX_REDIRECTS`; ``Authorization`` is never sent to another host than the
  registry's.
* **Retries** (:class:`RetryPolicy`): connection errors, 408, 429 and 5xx are retried with
  exponential backoff and full jitter, honouring ``Retry-After``, bounded in count and in
  time. A request whose body cannot be sent again (a stream) is not retried here; its
  caller resumes it.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Final, NamedTuple

from ..errors import OcistoreError

__all__ = [
    "CERTS_DIRS",
    "ConnectionFailed",
    "Response",
    "RetryPolicy",
    "TLSSettings",
    "Transport",
    "is_loopback",
    "parse_retry_after",
]

#: Where Docker and podman look for a registry's CAs and client certificates.
CERTS_DIRS: Final = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))
MAX_REDIRECTS: Final = 10
#: Statuses worth asking again: the server may answer the same request later.
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
#: Bytes of an error body read to find the registry's own error (the rest is dropped).
MAX_ERROR_BODY: Final = 64 << 10
USER_AGENT: Final = "ocistore"


class ConnectionFailed(OcistoreError):
    """A registry could not be reached, or its connection failed, after the retries."""


class TLSSettings(NamedTuple):
    """How HTTPS connections are checked."""

    #: False: do not verify certificates, and allow plain HTTP (``--tls-verify=false``).
    verify: bool = True
    #: An explicit directory of ``*.crt`` CAs and ``*.cert``/``*.key`` pairs (``--cert-dir``),
    #: used instead of the per-registry directories.
    cert_dir: Path | None = None
    #: The directories holding one subdirectory per registry (``HOST:PORT``).
    certs_dirs: tuple[Path, ...] = CERTS_DIRS
    #: Allow plain HTTP to every registry, with TLS still verified when spoken
    #: (``--insecure``).
    insecure: bool = False


class RetryPolicy(NamedTuple):
    """How often and how long a failed request is tried again."""

    attempts: int = 5
    #: The first backoff, doubled at each attempt, capped by ``max_delay``; each wait is
    #: chosen at random up to it (full jitter).
    base_delay: float = 0.25
    max_delay: float = 8.0
    #: No retry starts after this many seconds from the first attempt.
    deadline: float = 120.0
    #: Seconds without a byte from the server before a connection counts as failed.
    timeout: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 4)
        ceiling = min(self.max_delay, self.base_delay * (2**attempt))
        return random.uniform(0, ceiling)


@functools.lru_cache(maxsize=64)
def is_loopback(host: str) -> bool:
    """Whether ``HOST[:PORT]`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``, or
    a name every address of which is one of those (Docker resolves the name too)."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(_loopback_address(a) for a in addresses)


def _loopback_address(address: object) -> bool:
    try:
        return ipaddress.ip_address(str(address).split("%")[0]).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Response:
    """An answer whose body streams; close it (or read it to its end) to reuse the
    connection."""

    def __init__(
        self,
        transport: Transport,
        key: tuple[str, str],
        conn: http.client.HTTPConnection,
        raw: http.client.HTTPResponse,
        url: str,
    ) -> None:
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        self.url = url
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._raw = raw

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    @property
    def length(self) -> int | None:
        return header_int(self.headers.get("Content-Length"))

    def _failed(self, e: BaseException) -> ConnectionFailed:
        """A read of the body that failed: the connection is dropped, and the failure
        told as one (a caller may resume)."""
        self.close(reuse=False)
        return ConnectionFailed(f"{self._key[1]}: {describe_error(e)}")

    @property
    def ended_early(self) -> bool:
        """Whether the body ended before its Content-Length: the server closed the
        connection in the middle (meaningful once a read found the end)."""
        return self._raw.isclosed() and bool(self._raw.length)

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            n = self._raw.readinto(buf)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._failed(e) from None
        if n == 0 and len(buf):
            self.close()
        return n

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._raw.read(None if n < 0 else n)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._failed(e) from None
        if n < 0 or (not data and n):
            self.close()
        return data

    def read_limited(self, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes and one more (so a caller sees it is
        longer); the connection is closed when the body was longer."""
        try:
            data = self._raw.read(limit + 1)
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._failed(e) from None
        self.close(reuse=len(data) <= limit)
        return data

    def close(self, reuse: bool = True) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Reused only after a whole body: one that ended before its Content-Length (the
        # length left is not 0) came on a connection the server closed.
        if reuse and self._raw.isclosed() and not self._raw.will_close and not self.ended_early:
            self._transport._release(self._key, conn)
        else:
            self._raw.close()
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Body = bytes | IO[bytes] | Callable[[], Iterable[bytes]] | None


class Transport:
    """Connections to registries, shared by the threads of one command."""

    def __init__(self, tls: TLSSettings | None = None, retry: RetryPolicy | None = None) -> None:
        self.tls = tls or TLSSettings()
        self.retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._schemes: dict[str, str] = {}
        self._host_locks: dict[str, threading.RLock] = {}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- schemes and TLS ----------------------------------------------------------------

    def plain_http_allowed(self, host: str) -> bool:
        return not self.tls.verify or self.tls.insecure or is_loopback(host)

    def base_url(self, host: str) -> str:
        """``https://HOST`` or, for a registry that answered plain HTTP where that is
        allowed, ``http://HOST``: found once by a request to ``/v2/``."""
        with self._lock:
            scheme = self._schemes.get(host)
        if scheme is None:
            # Once per host: the threads of a push would each probe it, and each load
            # the system's CAs (most of a push's CPU, measured).
            with self._per_host(host):
                with self._lock:
                    scheme = self._schemes.get(host)
                if scheme is None:
                    scheme = self._probe(host)
                    with self._lock:
                        self._schemes[host] = scheme
        return f"{scheme}://{host}"

    def _per_host(self, host: str) -> threading.RLock:
        """The lock that makes one thread find a host's scheme and TLS context."""
        with self._lock:
            lock = self._host_locks.get(host)
            if lock is None:
                lock = self._host_locks[host] = threading.RLock()
            return lock

    def _probe(self, host: str) -> str:
        try:
            with self._send_once("GET", f"https://{host}/v2/", {}, None) as r:
                r.read_limited(MAX_ERROR_BODY)
            return "https"
        except _PlainHTTP:
            if self.plain_http_allowed(host):
                return "http"
            raise ConnectionFailed(
                f"{host}: the registry answered plain HTTP to an HTTPS request; "
                "to allow plain HTTP to it, give --tls-verify=false (or --insecure)"
            ) from None
        except _TLSDropped as e:
            # A plain-HTTP server may also just drop a TLS hello: where plain HTTP is
            # allowed, it is asked so before the failure is told (Docker falls back so),
            # and taken when it answers as a registry does.
            if not self.plain_http_allowed(host):
                raise
            try:
                with self._send_once("GET", f"http://{host}/v2/", {}, None) as r:
                    r.read_limited(MAX_ERROR_BODY)
            except ConnectionFailed:
                raise e from None
            if r.status not in (200, 401):
                raise
            return "http"

    def _context(self, host: str) -> ssl.SSLContext:
        with self._lock:
            ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        with self._per_host(host):
            with self._lock:
                ctx = self._contexts.get(host)
            if ctx is None:
                ctx = self._new_context(host)
                with self._lock:
                    self._contexts[host] = ctx
            return ctx

    def _new_context(self, host: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if not self.tls.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        dirs = [self.tls.cert_dir] if self.tls.cert_dir else [d / host for d in self.tls.certs_dirs]
        for d in dirs:
            try:
                names = sorted(p.name for p in d.iterdir())
            except OSError:
                continue
            for name in names:
                path = d / name
                try:
                    if name.endswith(".crt"):
                        ctx.load_verify_locations(cafile=str(path))
                    elif name.endswith(".cert"):
                        key = d / (name[: -len(".cert")] + ".key")
                        ctx.load_cert_chain(str(path), str(key))
                except (OSError, ssl.SSLError) as e:
                    raise OcistoreError(f"{path}: cannot be used for {host}: {e}") from None
        return ctx

    # -- connections --------------------------------------------------------------------

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        with self._lock:
            conns = self._idle.get(key)
            if conns:
                return conns.pop()
        timeout = self.retry.timeout
        if scheme == "https":
            return http.client.HTTPSConnection(
                netloc, timeout=timeout, context=self._context(netloc)
            )
        return http.client.HTTPConnection(netloc, timeout=timeout)

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)

    def _send_once(self, method: str, url: str, headers: Mapping[str, str], body: Body) -> Response:
        parts = _split(url)
        scheme, netloc = parts.scheme, parts.netloc
        if scheme not in ("http", "https") or not netloc:
            raise ConnectionFailed(f"{url}: not an HTTP URL")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        all_headers = {"User-Agent": USER_AGENT, **headers}
        for attempt in (0, 1):
            try:
                conn = self._connection(scheme, netloc)
            except (ValueError, http.client.HTTPException) as e:  # a port that is no number
                raise ConnectionFailed(f"{url}: not a URL to connect to ({e})") from None
            reused = conn.sock is not None
            try:
                if callable(body):
                    conn.putrequest(method, target, skip_accept_encoding=True)
                    for k, v in all_headers.items():
                        conn.putheader(k, v)
                    conn.endheaders()
                    for piece in body():
                        conn.send(piece)
                else:
                    conn.request(method, target, body=body, headers=all_headers)
                raw = conn.getresponse()
            except ssl.SSLError as e:
                conn.close()
                if _looks_plain_http(e):
                    raise _PlainHTTP(netloc) from None
                if isinstance(e, ssl.SSLEOFError):
                    raise _TLSDropped(f"{netloc}: TLS: {_ssl_reason(e)}") from None
                raise ConnectionFailed(f"{netloc}: TLS: {_ssl_reason(e)}") from None
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # A kept-alive connection the server closed meanwhile: once more on a
                # new one, when the body can be sent again.
                if reused and attempt == 0 and _replayable(body):
                    continue
                raise ConnectionFailed(f"{netloc}: {describe_error(e)}") from None
            except ValueError as e:  # a header http.client will not send (a token, a URL)
                conn.close()
                raise OcistoreError(f"{netloc}: cannot send the request: {e}") from None
            except BaseException:  # (a body that failed to read, Ctrl-C): never pooled
                conn.close()
                raise
            return Response(self, (scheme, netloc), conn, raw, url)
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        auth_host: str | None = None,
        retry: bool = True,
    ) -> Response:
        """Send a request, following redirects and retrying what may be retried.

        ``Authorization`` in ``headers`` goes only to ``auth_host`` (the registry).
        A 4xx or 5xx answer is returned (after its retries), not raised: the caller
        reads the registry's error from it.
        """
        policy = self.retry
        started = time.monotonic()
        attempt = 0
        replayable = retry and _replayable(body)
        while True:
            try:
                response = self._follow(method, url, dict(headers or {}), body, auth_host)
            except ConnectionFailed:
                if not replayable or not self._may_retry(attempt, started, None):
                    raise
                time.sleep(policy.delay(attempt))
                attempt += 1
                continue
            if response.status in RETRY_STATUSES and replayable:
                retry_after = parse_retry_after(response.header("Retry-After"))
                if self._may_retry(attempt, started, retry_after):
                    response.read_limited(MAX_ERROR_BODY)
                    time.sleep(policy.delay(attempt, retry_after))
                    attempt += 1
                    continue
            return response

    def _may_retry(self, attempt: int, started: float, retry_after: float | None) -> bool:
        policy = self.retry
        if attempt + 1 >= policy.attempts:
            return False
        wait = policy.delay(attempt, retry_after) if retry_after is not None else 0.0
        return time.monotonic() - started + wait < policy.deadline

    def _follow(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        auth_host: str | None,
    ) -> Response:
        first = _split(url)
        for _ in range(MAX_REDIRECTS + 1):
            parts = _split(url)
            sent = headers
            # The credential goes to the registry as it was first asked: the same host
            # and port, and never from HTTPS down to plain HTTP.
            elsewhere = parts.netloc != auth_host or (
                first.scheme == "https" and parts.scheme != "https"
            )
            if auth_host is not None and elsewhere:
                sent = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            response = self._send_once(method, url, sent, body)
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.header("Location")
            response.read_limited(MAX_ERROR_BODY)
            if not location:
                raise ConnectionFailed(
                    f"{parts.netloc}: redirect ({response.status}) without Location"
                )
            try:
                url = urllib.parse.urljoin(url, location)
            except ValueError:
                raise ConnectionFailed(
                    f"{parts.netloc}: redirect to {location[:200]!r}: not a URL"
                ) from None
            new = _split(url)
            if (
                parts.scheme == "https"
                and new.scheme == "http"
                and not (self.plain_http_allowed(new.netloc))
            ):
                raise ConnectionFailed(
                    f"{parts.netloc}: redirect from HTTPS to plain HTTP ({new.netloc}) refused; "
                    "give --tls-verify=false (or --insecure) to allow it"
                )
            if response.status == 303:
                method, body = "GET", None
        raise ConnectionFailed(f"{url}: more than {MAX_REDIRECTS} redirects")


def _split(url: str) -> urllib.parse.SplitResult:
    """A URL's parts; a URL that cannot be read (a registry's Location, a realm) is a
    failure naming it."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (checked: a port that is no number raises here)
    except ValueError:
        raise ConnectionFailed(f"{url[:200]!r}: not a URL") from None
    return parts


class _TLSDropped(ConnectionFailed):
    """A server that closed the connection in the middle of the TLS handshake."""


class _PlainHTTP(ConnectionFailed):
    """A server that answered plain HTTP to an HTTPS request."""

    def __init__(self, netloc: str) -> None:
        super().__init__(f"{netloc}: the server answered plain HTTP to an HTTPS request")


def _looks_plain_http(e: ssl.SSLError) -> bool:
    reason = (getattr(e, "reason", "") or "").upper()
    return reason in {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"} or (
        "wrong version number" in str(e)
    )


def _ssl_reason(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message}"
    return str(getattr(e, "reason", None) or e)


def describe_error(e: BaseException) -> str:
    """A connection failure in words."""
    if isinstance(e, TimeoutError | socket.timeout):
        return "no answer in time (the connection stalled)"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection ended in the middle of an answer"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve the host name ({e.strerror})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _replayable(body: Body) -> bool:
    """Whether a request's body can be sent again (none, or bytes; not a stream)."""
    return body is None or isinstance(body, bytes)


_HEADER_INT = re.compile(r"[0-9]{1,18}")


def header_int(value: str | None) -> int | None:
    """A header's non-negative integer (ASCII digits, at most 18 of them), or None when
    it is absent or anything else: a registry's headers are input like any other."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if _HEADER_INT.fullmatch(value) else None


def parse_retry_after(value: str) -> float | None:
    """``Retry-After`` in seconds (delay-seconds or an HTTP date), None when absent or
    unreadable."""
    value = value.strip()
    if not value:
        return None
    seconds = header_int(value)
    if seconds is not None:
        return float(seconds)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    return None
