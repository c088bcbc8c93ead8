"""The OCI distribution API, as a client: manifests, blobs, uploads, tags.

:class:`Registry` is one registry host (its base URL, found once; its
:class:`~ocistore.registry.auth.Authenticator`); :meth:`Registry.repository` gives a
:class:`Repository`, whose methods are the API's endpoints. Every request carries the
``Authorization`` its scopes need and is asked again once after a 401 challenge
(:meth:`Registry.send`). An answer that is not the one expected becomes a
:class:`RegistryError` naming the registry, the repository and the reference, with the
registry's own error code and message (``MANIFEST_UNKNOWN``, ``DENIED``, …).

Downloads (:meth:`Repository.open_blob`) stream: a connection that drops in the middle
is resumed with ``Range: bytes=N-`` (a server that ignores the range is read past what
was had already), up to :data:`MAX_RESUMES` times. The bytes are checked by whoever
reads them (the store's blob writer checks size and digest of every layer).
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, Any, Final, NamedTuple

from ..errors import DigestMismatch, InvalidInput, OcistoreError, SizeMismatch
from ..spec import mediatypes as mt
from ..spec.digest import CHUNK, Digest, digest_bytes
from ..spec.limits import MAX_MANIFEST
from .auth import Authenticator
from .credentials import Credential
from .transport import (
    MAX_ERROR_BODY,
    RETRY_STATUSES,
    ConnectionFailed,
    Response,
    Transport,
    describe_error,
    header_int,
    parse_retry_after,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "Manifest",
    "Registry",
    "RegistryError",
    "Repository",
    "registry_host",
]

#: What a pull accepts, best first (as containerd and Docker ask).
MANIFEST_ACCEPT: Final = (
    mt.OCI_INDEX,
    mt.DOCKER_LIST,
    mt.OCI_MANIFEST,
    mt.DOCKER_MANIFEST,
    mt.DOCKER_SCHEMA1_SIGNED,
    mt.DOCKER_SCHEMA1_UNSIGNED,
)
#: Times a download is resumed after its connection dropped.
MAX_RESUMES: Final = 8
#: Blobs up to this size are uploaded in one request (held in memory, so that it can be
#: sent again); larger ones in chunks streamed from their file.
MONOLITHIC_MAX: Final = 4 << 20
#: The size of each chunk of a chunked upload (raised to the registry's
#: ``OCI-Chunk-Min-Length``).
CHUNK_SIZE: Final = 32 << 20
#: The largest chunk sent, whatever a registry's ``OCI-Chunk-Min-Length`` asks (a chunk
#: of a blob streamed between registries is held in memory).
MAX_CHUNK: Final = 64 << 20
#: The pieces of a blob streamed from one registry to another, each held in memory.
STREAM_CHUNK: Final = 4 << 20
#: Where Docker Hub's API lives (``docker.io`` is its name in references).
DOCKER_HUB_HOST: Final = "registry-1.docker.io"
#: Tags asked per page of a tag list.
TAGS_PAGE: Final = 1000
MAX_TAG_PAGES: Final = 1_000


def registry_host(domain: str) -> str:
    """The host to talk to for a reference's domain: Docker Hub's API for ``docker.io``."""
    return DOCKER_HUB_HOST if domain in ("docker.io", "index.docker.io") else domain


class RegistryError(OcistoreError):
    """A registry answered an error: its status, its own code and message."""

    def __init__(self, where: str, status: int, code: str = "", message: str = "") -> None:
        self.where = where
        self.status = status
        self.code = code
        self.message = message
        told = f"{code}: {message}" if code and message else code or message
        super().__init__(f"{where}: {told or 'HTTP ' + str(status)} (HTTP {status})")


class _CutShort(ConnectionFailed):
    """A manifest's answer that ended before its end: asked again."""


class Manifest(NamedTuple):
    """A manifest or index as the registry served it."""

    data: bytes
    media_type: str
    digest: Digest


def _registry_error(response: Response, where: str) -> RegistryError:
    with response:
        data = response.read_limited(MAX_ERROR_BODY)
    code = message = ""
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("code") or "")
            message = str(first.get("message") or "")
            if len(errors) > 1:
                message += f" (and {len(errors) - 1} more)"
    if not code:
        code = {
            401: "UNAUTHORIZED",
            403: "DENIED",
            404: "NOT_FOUND",
            429: "TOOMANYREQUESTS",
        }.get(response.status, "")
        if not message:
            message = response.reason or ""
    return RegistryError(where, response.status, code, message[:500])


class Registry:
    """One registry host: where its API is, and how to authenticate to it."""

    def __init__(
        self,
        domain: str,
        transport: Transport,
        credential: Credential | None = None,
    ) -> None:
        #: The name in references (``docker.io``, ``127.0.0.1:5000``).
        self.domain = domain
        self.host = registry_host(domain)
        self.transport = transport
        self.auth = Authenticator(self.host, credential or Credential(), transport)
        self._base: str | None = None
        self._pinged = False
        self._ping_lock = threading.Lock()

    @property
    def base(self) -> str:
        """``https://HOST`` (or ``http://`` where plain HTTP was found and allowed)."""
        if self._base is None:
            self._base = self.transport.base_url(self.host)  # (found once, for all threads)
        return self._base

    def repository(self, path: str) -> Repository:
        return Repository(self, path)

    def send(
        self,
        method: str,
        path_or_url: str,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        body: bytes | Callable[[], Any] | None = None,
        retry: bool = True,
    ) -> Response:
        """One API request with its ``Authorization``, asked again once after a 401
        whose challenge a credential or a larger token can answer."""
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        self._ping()
        for attempt in (0, 1, 2):
            auth = self.auth.header(scopes)
            response = self.transport.request(
                method,
                url,
                {**(headers or {}), **auth},
                body,
                auth_host=self.host,
                retry=retry,
            )
            if response.status != 401 or attempt == 2:
                return response
            challenge = response.header("WWW-Authenticate")
            try:
                again = bool(challenge) and self.auth.challenged(challenge, scopes, bool(auth))
            except BaseException:
                response.close(reuse=False)
                raise
            if not again or (attempt == 1 and auth):
                return response
            response.read_limited(MAX_ERROR_BODY)
            if callable(body):
                # A streamed body was read as it was sent: its sender goes on from where
                # the registry says it is, with the new token (an upload's resume).
                raise ConnectionFailed(f"{self.host}: asked to authenticate again mid-upload")
        return response  # pragma: no cover

    def _ping(self) -> None:
        """Ask ``/v2/`` once, as Docker does, to learn how the registry authenticates
        before the first real request: the threads of a pull then share one token
        instead of each meeting the challenge and asking one of their own."""
        if self._pinged:
            return
        with self._ping_lock:
            if self._pinged:
                return
            response = self.transport.request("GET", self.base + "/v2/", auth_host=self.host)
            challenge = response.header("WWW-Authenticate")
            response.read_limited(MAX_ERROR_BODY)
            if response.status == 401 and challenge:
                self.auth.learn(challenge)
            self._pinged = True

    def check_login(self) -> None:
        """Ask the API's base (``GET /v2/``) with the credential: what ``login`` checks."""
        response = self.send("GET", "/v2/", ())
        if response.status == 200:
            response.read_limited(MAX_ERROR_BODY)
            return
        raise _registry_error(response, self.domain)


def _scope(path: str, push: bool = False) -> str:
    return f"repository:{path}:{'pull,push' if push else 'pull'}"


class Repository:
    """One repository of a registry: the API's endpoints under ``/v2/NAME/``."""

    def __init__(self, registry: Registry, path: str) -> None:
        self.registry = registry
        self.path = path
        self.pull_scopes: tuple[str, ...] = (_scope(path),)
        self.push_scopes: tuple[str, ...] = (_scope(path, push=True),)
        self.name = f"{registry.domain}/{path}"
        #: The largest ``OCI-Chunk-Min-Length`` an upload of it was started with.
        self.minimum_chunk = 0

    def __repr__(self) -> str:
        return f"Repository({self.name!r})"

    def _url(self, kind: str, ref: str) -> str:
        return f"/v2/{self.path}/{kind}/{urllib.parse.quote(ref, safe=':')}"

    def where(self, ref: str = "") -> str:
        if not ref:
            return self.name
        return f"{self.name}@{ref}" if ":" in ref else f"{self.name}:{ref}"

    # -- manifests ------------------------------------------------------------------------

    def get_manifest(self, ref: str, accept: tuple[str, ...] = MANIFEST_ACCEPT) -> Manifest:
        """The manifest (or index) ``ref`` (a tag or a digest) names, checked: against
        the digest asked for, else against ``Docker-Content-Digest`` when sent. An
        answer cut short is asked again (as many times as a request is retried)."""
        attempts = self.registry.transport.retry.attempts
        for attempt in range(attempts):
            try:
                return self._get_manifest(ref, accept)
            except _CutShort:
                if attempt + 1 == attempts:
                    raise
                time.sleep(self.registry.transport.retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_manifest(self, ref: str, accept: tuple[str, ...]) -> Manifest:
        where = self.where(ref)
        response = self.registry.send(
            "GET", self._url("manifests", ref), self.pull_scopes, {"Accept": ", ".join(accept)}
        )
        if response.status != 200:
            raise _registry_error(response, where)
        length = response.length
        if length is not None and length > MAX_MANIFEST:
            response.close(reuse=False)
            raise InvalidInput(
                f"{where}: manifest of {length} bytes, over the limit of {MAX_MANIFEST}"
            )
        try:
            data = response.read_limited(MAX_MANIFEST)
        except ConnectionFailed as e:
            raise _CutShort(f"{where}: {e}") from None
        if len(data) > MAX_MANIFEST:
            raise InvalidInput(f"{where}: manifest over the limit of {MAX_MANIFEST} bytes")
        if length is not None and len(data) != length:
            raise _CutShort(f"{where}: the manifest's answer ended early")
        media_type = response.header("Content-Type").split(";")[0].strip()
        served = response.header("Docker-Content-Digest").strip()
        digest = self._manifest_digest(data, media_type, ref, served, where)
        return Manifest(data, media_type, digest)

    def _manifest_digest(
        self, data: bytes, media_type: str, ref: str, served: str, where: str
    ) -> Digest:
        from ..spec.legacy.schema1 import schema1_digest

        expected: Digest | None = None
        if Digest.is_valid(ref):
            expected = Digest(ref)
        elif served and Digest.is_valid(served):
            expected = Digest(served)
        signed = media_type == mt.DOCKER_SCHEMA1_SIGNED or (
            media_type in mt.DOCKER_SCHEMA1 and b'"signatures"' in data
        )
        if signed:
            got = schema1_digest(data)
        elif expected is not None and expected.algorithm != "sha256":
            got = digest_bytes(data, expected.algorithm)
        else:
            got = digest_bytes(data)
        if expected is not None and got != expected:
            said = "asked for" if Digest.is_valid(ref) else "the registry's Docker-Content-Digest"
            raise DigestMismatch(f"{where}: manifest ({said})", expected, got)
        return got

    def put_manifest(self, ref: str, data: bytes, media_type: str) -> Digest:
        """Store a manifest under ``ref`` (a tag, or its digest); returns its digest."""
        where = self.where(ref)
        response = self.registry.send(
            "PUT",
            self._url("manifests", ref),
            self.push_scopes,
            {"Content-Type": media_type, "Content-Length": str(len(data))},
            data,
        )
        if response.status not in (200, 201, 202):
            raise _registry_error(response, where)
        served = response.header("Docker-Content-Digest").strip()
        response.read_limited(MAX_ERROR_BODY)
        digest = digest_bytes(data)
        if served and Digest.is_valid(served) and served != digest:
            raise DigestMismatch(f"{where}: pushed manifest", digest, served)
        return digest

    # -- blobs ----------------------------------------------------------------------------

    def blob_size(self, digest: Digest) -> int | None:
        """The size of a blob the repository has, or None when it has not."""
        response = self.registry.send("HEAD", self._url("blobs", digest), self.push_scopes)
        response.read_limited(0)  # (a HEAD's empty body: read, so the connection is kept)
        if response.status == 200:
            return response.length
        if response.status == 404:
            return None
        if response.status in (401, 403):
            # Pull-only access to a repository we push to: let the upload say so.
            return None
        raise RegistryError(self.where(digest), response.status, "", response.reason)

    def open_blob(self, digest: Digest, size: int | None = None) -> BlobDownload:
        return BlobDownload(self, digest, size)

    def read_blob(self, digest: Digest, size: int, limit: int, what: str) -> bytes:
        """A small blob (a config), whole, its size and digest checked."""
        if size > limit:
            raise InvalidInput(
                f"{self.where(digest)}: {what} of {size} bytes, over the limit of {limit}"
            )
        with self.open_blob(digest, size) as stream:
            data = _read_exactly(stream, size)  # (resumed if its answer is cut)
        if len(data) != size:
            raise SizeMismatch(f"{self.where(digest)}: {what}", size, len(data))
        if digest_bytes(data, digest.algorithm) != digest:
            raise DigestMismatch(
                f"{self.where(digest)}: {what}", digest, digest_bytes(data, digest.algorithm)
            )
        return data

    def _blob_response(self, digest: Digest, offset: int) -> Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.registry.send("GET", self._url("blobs", digest), self.pull_scopes, headers)
        if response.status in (200, 206):
            return response
        if response.status == 416 and offset:
            response.close()
            return self._blob_response(digest, 0)
        raise _registry_error(response, self.where(digest))

    # -- uploads --------------------------------------------------------------------------

    def mount_blob(self, digest: Digest, source: str) -> str | None:
        """Ask the registry to link ``digest`` from repository ``source`` (the same
        registry): None when it did; else the upload it started instead."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        scopes = (*self.push_scopes, _scope(source))
        response = self.registry.send(
            "POST", f"/v2/{self.path}/blobs/uploads/?{query}", scopes, {"Content-Length": "0"}, b""
        )
        if response.status == 201:
            response.read_limited(MAX_ERROR_BODY)
            return None
        if response.status == 202:
            location = response.header("Location")
            self._chunk_minimum(response)
            response.read_limited(MAX_ERROR_BODY)
            return self._absolute(location)
        raise _registry_error(response, self.where(digest))

    def _chunk_minimum(self, response: Response) -> None:
        """Remember the smallest chunk an upload takes (``OCI-Chunk-Min-Length``, bounded
        by :data:`MAX_CHUNK`) for the uploads of this repository."""
        told = min(header_int(response.header("OCI-Chunk-Min-Length")) or 0, MAX_CHUNK)
        self.minimum_chunk = max(self.minimum_chunk, told)

    def start_upload(self) -> str:
        """A new upload session: its URL (the smallest chunk it takes is remembered)."""
        response = self.registry.send(
            "POST",
            f"/v2/{self.path}/blobs/uploads/",
            self.push_scopes,
            {"Content-Length": "0"},
            b"",
        )
        if response.status != 202:
            raise _registry_error(response, self.where())
        location = response.header("Location")
        self._chunk_minimum(response)
        response.read_limited(MAX_ERROR_BODY)
        if not location:
            raise RegistryError(self.where(), 202, "", "upload started without a Location")
        return self._absolute(location)

    def _absolute(self, location: str) -> str:
        """A URL the registry gave (``Location``, ``Link``), made absolute."""
        try:
            return urllib.parse.urljoin(self.registry.base + "/", location)
        except ValueError:
            raise ConnectionFailed(
                f"{self.registry.host}: {location[:200]!r} is not a URL"
            ) from None

    def upload(
        self,
        digest: Digest,
        size: int,
        open_source: Callable[[], IO[bytes]],
        on_progress: Callable[[int], None] | None = None,
        location: str | None = None,
    ) -> None:
        """Upload a blob of ``size`` bytes that ``open_source`` reads (a file that can
        seek): in one request when small, else in chunks of at least the registry's
        minimum, a chunk that fails sent again from where the registry says the upload
        is (or, if it dropped the upload, all again in a new one)."""
        where = self.where(digest)
        if location is None:
            location = self.start_upload()
        with open_source() as src:
            if size <= MONOLITHIC_MAX:
                data = src.read(size + 1)
                if len(data) != size:
                    raise SizeMismatch(f"{where}: blob to upload", size, len(data))
                self._finish_upload(location, digest, data)
                if on_progress:
                    on_progress(size)
                return

            def at(offset: int) -> IO[bytes]:
                src.seek(offset)
                return src

            chunk = max(CHUNK_SIZE, self.minimum_chunk)
            location = self._send_chunks(location, where, (0, size), chunk, at, on_progress)
        self._finish_upload(location, digest)

    def upload_stream(
        self,
        digest: Digest,
        size: int,
        stream: IO[bytes],
        on_progress: Callable[[int], None] | None = None,
        location: str | None = None,
    ) -> None:
        """Upload a blob read from a stream that cannot seek (a download from another
        registry): a piece of :data:`STREAM_CHUNK` at a time, held in memory so that a
        piece that fails is sent again from where the registry says the upload is."""
        where = self.where(digest)
        if location is None:
            location = self.start_upload()
        # One buffer, filled in place and sent from views of it: memory is the piece.
        buffer = memoryview(bytearray(min(max(STREAM_CHUNK, self.minimum_chunk), max(size, 1))))
        offset = 0
        while offset < size:
            want = min(len(buffer), size - offset)
            got = _fill(stream, buffer[:want])
            if got != want:
                raise SizeMismatch(f"{where}: blob copied", size, offset + got)
            at = functools.partial(_ViewReader.of, buffer[:got], offset)
            span = (offset, offset + got)
            location = self._send_chunks(location, where, span, got, at, None, rewind=False)
            offset += got
            if on_progress:
                on_progress(offset)
        self._finish_upload(location, digest)

    def _send_chunks(
        self,
        location: str,
        where: str,
        span: tuple[int, int],
        chunk: int,
        at: Callable[[int], IO[bytes] | io.RawIOBase],
        on_progress: Callable[[int], None] | None,
        rewind: bool = True,
    ) -> str:
        """PATCH the bytes ``span`` of an upload, ``chunk`` at a time, ``at(offset)``
        reading them from ``offset``; a chunk that fails goes again from the offset the
        registry reports (bounded by :data:`MAX_RESUMES`). Without ``rewind`` the bytes
        before ``span`` cannot be read again: a registry that went back before it (or
        dropped the upload) fails the upload. Returns the upload's newest URL."""
        offset, end = span
        failures = 0
        while offset < end:
            length = min(chunk, end - offset)
            try:
                location = self._patch(location, at(offset), offset, length, where)
            except ConnectionFailed as e:
                failures += 1
                if failures > MAX_RESUMES:
                    raise
                time.sleep(self.registry.transport.retry.delay(failures, _told_wait(e)))
                if rewind:
                    offset, location = self._resume_point(location, where, offset)
                else:
                    reported, location = self._upload_status(location, where, offset)
                    if not span[0] <= reported <= end:
                        raise
                    offset = reported
                continue
            offset += length
            if on_progress:
                on_progress(offset)
        return location

    def _finish_upload(self, location: str, digest: Digest, data: bytes = b"") -> None:
        """Close an upload with ``PUT ?digest=`` (and its last bytes, or the whole blob
        in one request): the registry checks the digest of all it was sent."""
        headers = {"Content-Length": str(len(data))}
        if data:
            headers["Content-Type"] = "application/octet-stream"
        response = self.registry.send(
            "PUT", _with_query(location, {"digest": digest}), self.push_scopes, headers, data
        )
        if response.status not in (201, 204):
            raise _registry_error(response, self.where(digest))
        response.read_limited(MAX_ERROR_BODY)

    def _patch(
        self, location: str, src: IO[bytes] | io.RawIOBase, offset: int, length: int, where: str
    ) -> str:
        def pieces() -> Iterator[bytes]:
            left = length
            while left:
                data = src.read(min(CHUNK, left))
                if not data:
                    raise SizeMismatch(f"{where}: blob to upload", offset + length, offset)
                left -= len(data)
                yield data

        response = self.registry.send(
            "PATCH",
            location,
            self.push_scopes,
            {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{offset}-{offset + length - 1}",
            },
            pieces,
            retry=False,
        )
        if response.status in RETRY_STATUSES:
            wait = parse_retry_after(response.header("Retry-After"))
            response.read_limited(MAX_ERROR_BODY)
            raise _ChunkRefused(f"{where}: chunk answered {response.status}", wait)
        if response.status != 202:
            raise _registry_error(response, where)
        new = response.header("Location")
        response.read_limited(MAX_ERROR_BODY)
        return self._absolute(new) if new else location

    def _resume_point(self, location: str, where: str, known: int) -> tuple[int, str]:
        """Where an upload whose chunk failed goes on from: where the registry says it
        stands, or the start of a new upload when the registry dropped this one (404:
        Distribution refuses, and cancels, an upload asked with a ``_state`` behind what
        it has, as after a chunk it took whose answer was lost)."""
        try:
            return self._upload_status(location, where, known)
        except RegistryError as e:
            if e.status != 404:
                raise
        return 0, self.start_upload()

    def _upload_status(self, location: str, where: str, known: int) -> tuple[int, str]:
        """Where an upload stands (``Range: 0-N``): the offset to go on from. ``known`` is
        the offset the registry last acknowledged: Distribution answers ``0-0`` for an
        upload that has no byte yet as for one that has one, so ``0-0`` is 0 unless the
        registry already had a byte."""
        response = self.registry.send("GET", location, self.push_scopes)
        if response.status not in (202, 204):
            raise _registry_error(response, where)
        got = re.fullmatch(r"\s*(?:bytes=)?0-([0-9]{1,18})\s*", response.header("Range"))
        new = response.header("Location")
        response.read_limited(MAX_ERROR_BODY)
        end = int(got.group(1)) if got else -1
        offset = end + 1 if end > 0 or (end == 0 and known > 0) else 0
        return offset, self._absolute(new) if new else location

    # -- tags -----------------------------------------------------------------------------

    def tags(self) -> Iterator[str]:
        """Every tag, following the ``Link`` header's pages."""
        url: str | None = self._absolute(f"/v2/{self.path}/tags/list?n={TAGS_PAGE}")
        asked: set[str] = set()
        while url is not None:
            if url in asked:
                raise InvalidInput(f"{self.where()}: the tag list's pages go round in a circle")
            asked.add(url)
            if len(asked) > MAX_TAG_PAGES:
                raise InvalidInput(f"{self.where()}: more than {MAX_TAG_PAGES} pages of tags")
            response = self.registry.send("GET", url, self.pull_scopes)
            if response.status != 200:
                raise _registry_error(response, self.where())
            link = response.header("Link")
            data = response.read_limited(MAX_MANIFEST)
            try:
                doc = json.loads(data)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):
                raise InvalidInput(f"{self.where()}: the tag list is not a JSON object")
            tags = doc.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InvalidInput(f"{self.where()}: field tags is not a list of strings")
            yield from tags
            m = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
            url = self._absolute(m.group(1)) if m else None


class _ChunkRefused(ConnectionFailed):
    """A chunk of an upload answered a status worth sending it again for (429, 503, …),
    with the wait the registry asked for (``Retry-After``), if any."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _told_wait(e: ConnectionFailed) -> float | None:
    """The ``Retry-After`` of a refused chunk: the backoff before it goes again."""
    return e.retry_after if isinstance(e, _ChunkRefused) else None


def _read_exactly(stream: IO[bytes] | io.RawIOBase, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        data = stream.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _fill(stream: Any, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` (``readinto``) as far as it goes: the bytes put."""
    done = 0
    while done < len(view):
        n = stream.readinto(view[done:])
        if not n:
            break
        done += n
    return done


class _ViewReader(io.RawIOBase):
    """Reads a memoryview without copying it (the pieces of a streamed chunk)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._at = 0

    @classmethod
    def of(cls, view: memoryview, start: int, offset: int) -> _ViewReader:
        """The bytes of ``view`` (which holds a blob's bytes from ``start``) from the
        blob's ``offset`` on."""
        return cls(view[offset - start :])

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._at + n)
        piece = self._view[self._at : end]
        self._at = end
        # (a view, not a copy: http.client sends it as it is)
        return piece  # type: ignore[return-value]


def _with_query(url: str, params: dict[str, str]) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


class BlobDownload(io.RawIOBase):
    """A blob's bytes as they stream from the registry, resumed with ``Range`` when the
    connection drops (at most :data:`MAX_RESUMES` times)."""

    def __init__(self, repository: Repository, digest: Digest, size: int | None) -> None:
        self.repository = repository
        self.digest = digest
        self.size = size
        self.offset = 0
        self.resumes = 0
        self._response: Response | None = None
        #: Bytes of a resumed answer that repeat what was read (a server ignoring Range).
        self._skip = 0

    def readable(self) -> bool:
        return True

    def _open(self) -> Response:
        response = self.repository._blob_response(self.digest, self.offset)
        # What is left to skip belongs to the answer it was counted for: an answer that
        # ignored Range, cut within the bytes being skipped, may be followed by one that
        # honours it.
        self._skip = 0
        if self.offset and response.status == 200:
            self._skip = self.offset
        elif self.offset:
            got = re.match(r"\s*bytes\s+([0-9]{1,18})-", response.header("Content-Range"))
            start = int(got.group(1)) if got else -1
            if start != self.offset:
                response.close(reuse=False)
                raise RegistryError(
                    self.repository.where(self.digest),
                    206,
                    "",
                    f"resumed at byte {start}, not {self.offset}",
                )
        self._response = response
        return response

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        while True:
            response = self._response or self._open()
            try:
                n = response.readinto(view)
                if n == 0 and len(view):
                    if self.size is not None and self.offset < self.size:
                        raise ConnectionResetError(
                            f"the answer ended at byte {self.offset} of {self.size}"
                        )
                    if response.ended_early:
                        # (no size told, as in a schema 1 manifest: the answer's own
                        # Content-Length tells the cut from the blob's end)
                        raise ConnectionResetError(
                            f"the answer ended at byte {self.offset}, before its length"
                        )
            except (OSError, ValueError, ConnectionFailed) as e:
                response.close(reuse=False)
                self._response = None
                self.resumes += 1
                if self.resumes > MAX_RESUMES:
                    where = self.repository.where(self.digest)
                    raise ConnectionFailed(
                        f"{where}: download failed at byte {self.offset} after "
                        f"{MAX_RESUMES} resumes: {describe_error(e)}"
                    ) from None
                time.sleep(self.repository.registry.transport.retry.delay(self.resumes - 1))
                continue
            if self._skip:
                drop = min(self._skip, n)
                self._skip -= drop
                if drop == n:
                    continue
                view[: n - drop] = view[drop:n]
                n -= drop
            self.offset += n
            if self.size is not None and self.offset > self.size:
                raise SizeMismatch(
                    f"{self.repository.where(self.digest)}: blob", self.size, self.offset
                )
            return n

    def close(self) -> None:
        if self._response is not None:
            self._response.close(reuse=False)
            self._response = None
        super().close()
