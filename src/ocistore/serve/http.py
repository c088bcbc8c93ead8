"""The HTTP/1.1 server ``serve`` answers with: asyncio, one protocol object per connection.

Only what a registry's pull side needs, done strictly. A request's head is read whole
(at most :data:`MAX_HEAD` bytes, :data:`MAX_HEADERS` lines) before anything is answered;
requests on one connection are answered in order (pipelining works) and connections are
kept alive as HTTP/1.1 says. No request body is ever read. A ``Content-Length`` body is
never taken for requests: a ``GET`` or ``HEAD`` with one is refused (``400``: what
follows could be a request hidden in it), any other method is answered by the handler
(a registry's ``405``), and the connection closed either way. The shapes of request
smuggling (any ``Transfer-Encoding``, both headers, duplicates, a length that is not
ASCII digits, bare LF or CR, obsolete line folding) are refused with ``400`` (``501``
for a ``Transfer-Encoding`` alone) and the connection closed. A connection is closed
after its last answer by shutting down its sending side first and dropping what the
client still sends for a while (at most :data:`LINGER_TIMEOUT` seconds and
:data:`MAX_LINGER` bytes), so that the client reads that answer rather than a reset.

File bodies go out with ``sendfile(2)`` (``loop.sendfile``; over TLS asyncio reads and
writes instead), from a descriptor opened before the head is sent: a blob removed from
the store while it streams stays readable to the end, so the length announced is the
length sent. A head must come whole within :data:`HEAD_TIMEOUT` seconds of its first
byte, whenever it begins (slowloris); a connection idle between requests is dropped after
:data:`IDLE_TIMEOUT`. A client that does not read its answers holds only its own
connection: requests are taken no faster than their answers leave (the transport's
flow control), and no more than :data:`MAX_PENDING` bytes of requests are kept waiting.
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
#: Seconds a closing connection waits for the client to read its last answer and close.
LINGER_TIMEOUT: Final = 5.0
#: Bytes a closing connection reads and drops meanwhile, at most, before it resets.
MAX_LINGER: Final = 1 << 20

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_VERSION = re.compile(rb"HTTP/1\.[01]")
#: A byte no request line holds.
_BAD_LINE = re.compile(rb"[^\x20-\x7e\r\n]")
_DIGITS = re.compile(r"[0-9]+")


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
    #: It announced a body (``Content-Length`` other than 0), which is never read.
    has_body: bool = False

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
    if length is not None and not _DIGITS.fullmatch(length):
        raise BadRequest(400, "malformed Content-Length")
    path, _, query = target.decode("ascii").partition("?")
    return Request(
        method.decode("ascii"),
        path,
        query,
        headers,
        version.decode("ascii"),
        has_body=length is not None and length.strip("0") != "",
    )


def _keep_alive(request: Request) -> bool:
    tokens = {t.strip().lower() for t in request.header("connection").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _head_bytes(
    response: Response,
    close: bool,
    server_headers: Sequence[tuple[str, str]],
    keep_alive: bool = False,
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
    elif keep_alive:  # (an HTTP/1.0 client that asked for it is told it is kept)
        lines.append("Connection: keep-alive")
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
        #: Bytes of ``buf`` already searched for the end of the head (and checked).
        self.scanned = 0
        #: Where the request line of the head being read ends in ``buf`` (-1: not yet).
        self.line_end = -1
        self.transport: asyncio.Transport | None = None
        #: An answer is being made or sent: no next request is taken meanwhile.
        self.busy = False
        #: No more requests are taken (closing, or closed).
        self.closed = False
        #: Bytes read and dropped since the close began (``None``: not closing).
        self.lingering: int | None = None
        self.read_paused = False
        #: The transport's buffer is full: the client does not read its answers.
        self.write_paused = False
        #: The client sent its end of the stream.
        self.eof = False
        #: When the connection is dropped unless it makes progress (loop time; 0: never).
        self.deadline = 0.0
        #: The deadline is that of the head being read (set when its first byte came).
        self.head_deadline = False
        self.peer = ""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        if len(self.server.connections) > MAX_CONNECTIONS:
            self._send(error_response(503, "too many connections"), None)
            return
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingering += len(data)
            if self.lingering > MAX_LINGER and self.transport is not None:
                self.transport.abort()
            return
        if self.closed:
            return
        self.buf += data
        if self.busy or self.write_paused:
            if len(self.buf) > MAX_PENDING and not self.read_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self.read_paused = True
            return
        self._next()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.lingering is not None:
            return False  # (the client read the last answer and closed: so do we)
        if not self.busy and not self.write_paused:
            self._next()  # (answers what came whole, then closes)
        return True  # (a half-closed client still gets the answers it asked for)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy and not self.closed:
            self._next()

    # -- deadlines ---------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        # (a deadline the server's sweep reads: a timer a request costs more than a
        # small request's whole answer)
        self.deadline = self.loop.time() + seconds
        self.head_deadline = False

    def _no_deadline(self) -> None:
        self.deadline = 0.0
        self.head_deadline = False

    def timed_out(self, now: float) -> None:
        transport = self.transport
        if self.busy or not self.deadline or now < self.deadline or transport is None:
            return
        if self.closed and self.lingering is None:
            return
        self._no_deadline()
        self.closed = True
        if transport.get_write_buffer_size():
            transport.abort()  # (what is unsent would never leave: the client reads nothing)
        else:
            transport.close()

    # -- requests ------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the requests that came whole, in order, until one must wait (an answer
        being made or sent, a client not reading), or more bytes are needed."""
        while not self.busy and not self.closed:
            if self.write_paused:
                self._arm(IDLE_TIMEOUT)  # (until the client reads again)
                return
            while self.buf[:2] == b"\r\n":  # (empty lines before a request are allowed)
                del self.buf[:2]
                self.scanned = max(0, self.scanned - 2)
            end = self.buf.find(b"\r\n\r\n", max(0, self.scanned - 3), MAX_HEAD + 4)
            if end < 0:
                self._wait_for_head()
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            self.scanned, self.line_end = 0, -1
            self._no_deadline()
            try:
                request = parse_head(head)
            except BadRequest as e:
                self._send(error_response(e.status, str(e)), None)
                return
            except UnicodeDecodeError:
                self._send(error_response(400, "malformed request"), None)
                return
            request.peer = self.peer
            keep = _keep_alive(request) and not request.has_body
            if request.has_body and request.method in ("GET", "HEAD"):
                # (what follows is the body, never read: it could hide a request)
                self._send(error_response(400, f"a {request.method} with a body"), None)
                return
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
            self._send(answer, request)

    def _wait_for_head(self) -> None:
        """The head is not whole yet: refuse it now if it cannot become a request, else
        wait for it (within the head's deadline, set when its first byte came)."""
        buf = self.buf
        start = self.scanned
        if self.line_end < 0:
            line_end = buf.find(b"\r\n", max(0, start - 1))
            if _BAD_LINE.search(buf, start, line_end if line_end >= 0 else len(buf)):
                # Not HTTP (a TLS handshake to the plain port, say): said at once, as
                # Go's server does, so that a client trying HTTPS first falls back.
                self._send(error_response(400, "not an HTTP request"), None)
                return
            self.line_end = line_end
        lf = buf.find(b"\n", start)
        while lf >= 0:
            if lf == 0 or buf[lf - 1] != 0x0D:
                self._send(error_response(400, "bare LF in the request head"), None)
                return
            lf = buf.find(b"\n", lf + 1)
        if len(buf) > MAX_HEAD:
            self._send(error_response(431, "request head too large"), None)
            return
        self.scanned = len(buf)
        if self.eof:
            self._close()  # (nothing more will come)
            return
        if not buf:
            self._arm(IDLE_TIMEOUT)
        elif not self.head_deadline:
            self._arm(HEAD_TIMEOUT)  # a request began: its head must come whole, soon
            self.head_deadline = True
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

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
        self._send(response, request)
        if not self.busy:
            self._next()

    def _send(self, response: Response, request: Request | None) -> None:
        """Send ``response`` (to ``request``; ``None``: a refusal of the HTTP layer)."""
        transport = self.transport
        assert transport is not None
        method = "GET" if request is None else request.method
        keep_alive = request is not None and request.version == "HTTP/1.0"
        head = _head_bytes(response, response.close, self.server.headers, keep_alive)
        if method == "HEAD" or response.status in (204, 304):
            transport.write(head)
            self._sent(response)
            return
        if all(isinstance(p, bytes) for p in response.body):
            transport.write(head + b"".join(p for p in response.body if isinstance(p, bytes)))
            self._sent(response)
            return
        self.busy = True
        self._no_deadline()
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
        self.busy = False
        if not complete:
            self.closed = True
            transport.abort()
            return
        if response.close:
            self._close()
            return
        self._next()

    async def _sendfile(self, part: FileRange) -> bool:
        assert self.transport is not None
        with open(part.fd, "rb", buffering=0, closefd=False) as f:
            sent = await self.loop.sendfile(self.transport, f, part.offset, part.size)
        return sent == part.size

    def _sent(self, response: Response) -> None:
        response.release()
        if response.close:
            self._close()

    def _close(self) -> None:
        """End the connection once what was written is sent: the sending side is shut
        first and what the client still sends is dropped, for a while, so that the client
        reads the last answer (closing with its bytes unread would reset the connection,
        and the answer could be lost with it)."""
        transport = self.transport
        assert transport is not None
        self.closed = True
        self._no_deadline()
        if self.eof or not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        transport.write_eof()
        self.lingering = 0
        self.buf.clear()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        self._arm(LINGER_TIMEOUT)


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
