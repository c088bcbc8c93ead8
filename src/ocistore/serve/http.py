"""The HTTP/1.1 server ``serve`` answers with: asyncio, one protocol object per connection.

Only what a registry's pull side needs, done strictly. A request's head is read whole
(at most :data:`MAX_HEAD` bytes, :data:`MAX_HEADERS` lines) before anything is answered;
requests on one connection are answered in order (pipelining works) and connections are
kept alive as HTTP/1.1 says. No request body is ever read: a request that announces one
(``Content-Length`` other than 0, or any ``Transfer-Encoding``) is answered and the
connection closed, so that no body bytes are ever taken for a next request (the shapes of
request smuggling: both headers, duplicates, ``chunked`` in odd spellings, bare LF or
obsolete line folding are refused with 400 and the connection closed).

File bodies go out with ``sendfile(2)`` (``loop.sendfile``; over TLS asyncio reads and
writes instead), from a descriptor opened before the head is sent: a blob removed from
the store while it streams stays readable to the end, so the length announced is the
length sent. A client that is slow to send its head, or idle between requests, is dropped
after a while; a slow reader holds only its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, NamedTuple

__all__ = ["FileRange", "Request", "Response", "Stream", "serve_forever"]

MAX_HEAD: Final = 16 << 10
MAX_HEADERS: Final = 100
#: Seconds a client has to finish a request's head once it began it (slowloris).
HEAD_TIMEOUT: Final = 30.0
#: Seconds an idle keep-alive connection is kept.
IDLE_TIMEOUT: Final = 75.0
#: Connections served at once; more are closed as they come.
MAX_CONNECTIONS: Final = 2048
#: Pending request bytes kept while a response is being sent, before reading pauses.
MAX_PENDING: Final = 64 << 10

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")
#: A byte no request line holds.
_BAD_LINE = re.compile(rb"[^\x20-\x7e\r\n]")


class FileRange(NamedTuple):
    """``size`` bytes of the open descriptor ``fd`` from ``offset``."""

    fd: int
    offset: int
    size: int


class Stream(NamedTuple):
    """``size`` bytes that are not all there yet (a blob the proxy is fetching): the
    pieces ``chunks()`` gives, in order, until they add up to ``size``; a failure (or
    fewer bytes) aborts the connection, never a short body with a 200."""

    size: int
    chunks: Callable[[], AsyncIterator[bytes | FileRange]]


@dataclass(slots=True)
class Request:
    method: str
    #: The path as sent (never decoded: a registry's names and digests have no escapes).
    path: str
    query: str
    #: Header names lower-cased; a repeated header's values joined with ``", "``.
    headers: dict[str, str]
    version: str
    peer: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The body: bytes and ranges of open files, in order.
    body: Sequence[bytes | FileRange | Stream] = ()
    #: Descriptors to close once the response is sent (or the connection dropped).
    fds: list[int] = field(default_factory=list)
    #: Close the connection after this response.
    close: bool = False

    @property
    def length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.size for p in self.body)

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


Handler = Callable[[Request], "Response | Awaitable[Response]"]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def parse_head(head: bytes) -> Request:
    """A request's head (without its final empty line), checked strictly."""
    if b"\r" in head.replace(b"\r\n", b""):
        raise BadRequest(400, "bare CR in the request head")
    lines = head.split(b"\r\n")
    if any(b"\n" in line for line in lines):
        raise BadRequest(400, "bare LF in the request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "malformed method")
    if not _VERSION.fullmatch(version):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "unsupported HTTP version")
    if not _TARGET.fullmatch(target):
        raise BadRequest(400, "malformed request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # (also a line starting with a space or tab: obsolete line folding)
            raise BadRequest(400, "malformed header line")
        value = value.strip(b" \t")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise BadRequest(400, "control character in a header value")
        key = name.decode("ascii").lower()
        text = value.decode("latin-1")
        if key in headers:
            if key in ("content-length", "transfer-encoding", "host"):
                raise BadRequest(400, f"repeated {key} header")
            headers[key] += ", " + text
        else:
            headers[key] = text
    if "transfer-encoding" in headers:
        raise BadRequest(
            501 if "content-length" not in headers else 400, "request bodies are refused"
        )
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) != 0):
        raise BadRequest(400 if not length.isdigit() else 413, "request bodies are refused")
    path, _, query = target.decode("ascii").partition("?")
    return Request(method.decode("ascii"), path, query, headers, version.decode("ascii"))


def _keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.header("connection").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _head_bytes(
    response: Response, close: bool, server_headers: Sequence[tuple[str, str]]
) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
    for name, value in server_headers:
        lines.append(f"{name}: {value}")
    for name, value in response.headers:
        lines.append(f"{name}: {value}")
    if not any(n.lower() == "content-length" for n, _ in response.headers):
        lines.append(f"Content-Length: {response.length}")
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def error_response(status: int, message: str) -> Response:
    """A plain-text answer of the HTTP layer itself (before any route is known)."""
    return Response(
        status,
        [("Content-Type", "text/plain; charset=utf-8")],
        [message.encode() + b"\n"],
        close=True,
    )


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.loop = server.loop
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closed = False
        self.paused = False
        #: When the connection is dropped unless it makes progress (loop time; 0: never).
        self.deadline = 0.0
        self.peer = ""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        if len(self.server.connections) > MAX_CONNECTIONS:
            self._send(error_response(503, "too many connections"), "HEAD")
            return
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.buf and not self.busy:
            self._arm(HEAD_TIMEOUT)  # a request began: its head must come whole, soon
        self.buf += data
        if self.busy:
            if len(self.buf) > MAX_PENDING and not self.paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.paused = True
            return
        self._next()

    def eof_received(self) -> bool | None:
        if not self.busy and self.transport is not None:
            self.transport.close()
        return True  # (a half-closed client still gets the answers it asked for)

    # -- requests ------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        # (a deadline the server's sweep reads: a timer a request costs more than a
        # small request's whole answer)
        self.deadline = self.loop.time() + seconds

    def timed_out(self, now: float) -> None:
        if self.busy or self.closed or not self.deadline or now < self.deadline:
            return
        assert self.transport is not None
        self.transport.close()

    def _next(self) -> None:
        while not self.busy and not self.closed:
            while self.buf[:2] == b"\r\n":  # (empty lines before a request are allowed)
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                line_end = self.buf.find(b"\r\n")
                if _BAD_LINE.search(self.buf, 0, line_end if line_end >= 0 else len(self.buf)):
                    # Not HTTP (a TLS handshake to the plain port, say): said at once, as
                    # Go's server does, so that a client trying HTTPS first falls back.
                    self._send(error_response(400, "not an HTTP request"), "GET")
                elif len(self.buf) > MAX_HEAD:
                    self._send(error_response(431, "request head too large"), "GET")
                elif not self.buf:
                    self._arm(IDLE_TIMEOUT)
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            try:
                request = parse_head(head)
            except BadRequest as e:
                self._send(error_response(e.status, str(e)), "GET")
                return
            except UnicodeDecodeError:
                self._send(error_response(400, "malformed request"), "GET")
                return
            request.peer = self.peer
            keep = _keep_alive(request)
            try:
                answer = self.server.handler(request)
            except Exception:
                self.server.report_failure(request)
                answer = error_response(500, "internal error")
            if not isinstance(answer, Response):
                self.busy = True
                task = self.loop.create_task(self._answer_later(request, answer, keep))
                self.server.tasks.add(task)
                task.add_done_callback(self.server.tasks.discard)
                return
            if not keep:
                answer.close = True
            self._send(answer, request.method)

    async def _answer_later(
        self, request: Request, answer: Awaitable[Response], keep: bool
    ) -> None:
        try:
            response = await answer
        except Exception:
            self.server.report_failure(request)
            response = error_response(500, "internal error")
        self.busy = False
        if self.closed:
            response.release()
            return
        if not keep:
            response.close = True
        self._send(response, request.method)
        if not self.busy:
            self._next()

    def _send(self, response: Response, method: str) -> None:
        transport = self.transport
        assert transport is not None
        head = _head_bytes(response, response.close, self.server.headers)
        if method == "HEAD" or response.status in (204, 304):
            transport.write(head)
            self._sent(response)
            return
        if all(isinstance(p, bytes) for p in response.body):
            transport.write(head + b"".join(p for p in response.body if isinstance(p, bytes)))
            self._sent(response)
            return
        self.busy = True
        self.deadline = 0.0
        transport.write(head)
        task = self.loop.create_task(self._send_files(response))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _send_files(self, response: Response) -> None:
        transport = self.transport
        assert transport is not None
        complete = True
        try:
            for part in response.body:
                if isinstance(part, bytes):
                    transport.write(part)
                    continue
                if isinstance(part, Stream):
                    sent = 0
                    async for piece in part.chunks():
                        if isinstance(piece, bytes):
                            transport.write(piece)
                            sent += len(piece)
                        elif await self._sendfile(piece):
                            sent += piece.size
                        else:
                            break
                    if sent != part.size:
                        complete = False
                        break
                    continue
                if not await self._sendfile(part):  # (the file shrank: never pretend)
                    complete = False
                    break
        except (OSError, RuntimeError, asyncio.CancelledError):
            complete = False
        response.release()
        if not complete:
            transport.abort()
            return
        self.busy = False
        if response.close:
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._next()

    async def _sendfile(self, part: FileRange) -> bool:
        assert self.transport is not None
        with open(part.fd, "rb", buffering=0, closefd=False) as f:
            sent = await self.loop.sendfile(self.transport, f, part.offset, part.size)
        return sent == part.size

    def _sent(self, response: Response) -> None:
        response.release()
        if response.close:
            assert self.transport is not None
            self.transport.close()
            self.closed = True


class _Server:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Handler,
        headers: Sequence[tuple[str, str]],
        on_failure: Callable[[Request], None],
    ) -> None:
        self.loop = loop
        self.handler = handler
        self.headers = headers
        self.report_failure = on_failure
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()


#: Seconds between two looks for connections past their deadline.
SWEEP_INTERVAL: Final = 5.0


async def _sweep(state: _Server) -> None:
    """Drops connections idle or slow past their deadline."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        now = state.loop.time()
        for conn in list(state.connections):
            conn.timed_out(now)


async def serve_forever(
    host: str,
    port: int,
    handler: Handler,
    *,
    tls: ssl.SSLContext | None = None,
    headers: Sequence[tuple[str, str]] = (),
    on_listening: Callable[[str, int], None] = lambda host, port: None,
    on_failure: Callable[[Request], None] = lambda request: None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``handler`` on ``host:port`` until ``stop`` is set; ``on_listening`` is told
    the address once the socket listens (port 0 picks one)."""
    loop = asyncio.get_running_loop()
    state = _Server(loop, handler, headers, on_failure)
    server = await loop.create_server(
        lambda: _Connection(state), host, port, ssl=tls, reuse_address=True, backlog=1024
    )
    sweep = loop.create_task(_sweep(state))
    sockname = server.sockets[0].getsockname()
    on_listening(str(sockname[0]), int(sockname[1]))
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        server.close()
        for conn in list(state.connections):
            if conn.transport is not None:
                conn.transport.abort()
        sweep.cancel()
        for task in list(state.tasks):
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
