"""``serve --proxy UPSTREAM``: a pull-through cache in front of one registry.

The names a client asks for are the upstream's (Docker's ``registry-mirrors``, podman's
``[[registry.mirror]]`` and containerd's ``hosts.toml`` all send the upstream's path, the
last with ``?ns=`` naming it). A manifest the store lacks starts ocistore's own pull of
it from the upstream (its authentication, retries and verification of every blob), into
the store under the upstream's name (``UPSTREAM/PATH:TAG`` and ``@DIGEST``). The
manifest is answered as soon as the pull has read it and the image's config; the layers
stream to the client while the pull stores them: each download is copied, as the store
reads it, into a spool file in the store's ``tmp/``, and a client asking for that blob
is sent what the spool holds, and more as it comes (one download from the upstream for
both). Once the image is stored, everything is served from the store. A failed pull
aborts the connections still streaming from it (never a short body with a 200).

A tag is asked of the upstream again once it is older than the TTL (one manifest
request: the image is pulled again only when the tag moved); a digest never is. The
upstream's errors reach the client as registry errors with the upstream's status and
code; when the upstream cannot be reached, what the store has is served.

Pulls run in one worker thread, with a :class:`~ocistore.store.store.Store` of its own
(the store's locks are per open file, so the server's reads and the pull's writes exclude
each other as two processes' would); requests for the same manifest wait for one pull.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any, Final

from ..errors import OcistoreError
from ..registry.client import Manifest, RegistryError
from ..registry.pull import RemoteImage, pull
from ..registry.session import Session
from ..registry.transport import ConnectionFailed
from ..spec.digest import Digest
from ..spec.reference import Reference
from ..store import fsutil
from ..store.store import Store
from .http import FileRange, Request, Response, Stream
from .registry import error
from .view import DOCKER_DOMAIN, ServedManifest, StoreView, describe_manifest, normalize

__all__ = ["Proxy"]

DEFAULT_TTL: Final = 300.0

AnswerManifest = Callable[[Request, str, str, "ServedManifest | None"], Response]
AnswerBlob = Callable[[Request, Digest], Response]


class _Unchanged(Exception):
    """The tag still names what the store has: nothing to pull."""


class _Spool:
    """A layer blob being pulled: what the store has read of it so far, in a file."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.written = 0
        self.finished = False
        self.failed = False
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._changed = asyncio.Event()
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _tell(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # (the loop closed: nobody to tell)
                self.loop.call_soon_threadsafe(self._changed.set)

    def append(self, position: int, data: memoryview) -> None:
        """Bytes ``position``… of the blob, as the store read them (worker thread); a
        second read of the same bytes (the store retried) adds nothing."""
        with self._lock:
            if self.finished:
                return
            skip = self.written - position
            if skip >= len(data):
                return
            view = data[max(skip, 0) :]
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.written += n
        self._tell()

    def finish(self, ok: bool) -> None:
        with self._lock:
            if not self.finished:
                self.finished = True
                self.failed = not ok or self.written != self.size
                os.close(self._fd)
        self._tell()

    def reader(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    async def chunks(self, fd: int) -> AsyncIterator[bytes | FileRange]:
        """What is there, then what comes, until the blob is whole or the pull fails."""
        sent = 0
        while sent < self.size:
            written = self.written
            if written > sent:
                yield FileRange(fd, sent, written - sent)
                sent = written
                continue
            if self.finished:
                return  # (failed: the caller sees fewer bytes than promised)
            self._changed.clear()
            if self.written == written and not self.finished:
                await self._changed.wait()

    async def ended(self) -> None:
        """Once the pull is done with the blob (stored, or failed)."""
        while not self.finished:
            self._changed.clear()
            if not self.finished:
                await self._changed.wait()


class _Tee(io.RawIOBase):
    """A layer's download that copies what the store reads into its spool."""

    def __init__(self, inner: IO[bytes], spool: _Spool) -> None:
        self.inner = inner
        self.spool = spool
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.inner.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.spool.append(self.position, memoryview(buffer)[:n])
            self.position += n
        return int(n or 0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.inner.close()
        super().close()


@dataclass
class _InFlight:
    """An image being pulled through: what can be served of it before it is stored."""

    manifests: dict[str, ServedManifest] = field(default_factory=dict)
    configs: dict[Digest, bytes] = field(default_factory=dict)
    spools: dict[Digest, _Spool] = field(default_factory=dict)


class Proxy:
    def __init__(self, view: StoreView, session: Session, domain: str, ttl: float) -> None:
        self.view = view
        self.session = session
        #: The upstream as a reference's domain (``host[:port]``).
        self.domain = domain
        self.ttl = ttl
        self._store = Store(view.store.root)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="proxy")
        self._lock = threading.Lock()
        #: When each tag was last checked upstream (monotonic seconds).
        self._checked: dict[tuple[str, str, str], float] = {}
        self._pending: dict[tuple[str, str, str], asyncio.Future[Response | None]] = {}
        self._inflight: dict[tuple[str, str], _InFlight] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()
        self._store.close()

    def repo_key(self, name: str) -> tuple[str, str] | None:
        """The store repository for an upstream path: Docker Hub's ``library/`` rule
        applies only when the upstream is Docker Hub."""
        if self.domain == DOCKER_DOMAIN:
            key = normalize(name, DOCKER_DOMAIN)
            return key if key is not None and key[0] == DOCKER_DOMAIN else None
        key = normalize(f"{self.domain}/{name}")
        return key if key is not None and key[0] == self.domain else None

    def stale(self, key: tuple[str, str], reference: str | Digest) -> bool:
        if isinstance(reference, Digest):
            return False
        checked = self._checked.get((*key, reference))
        return checked is None or time.monotonic() - checked > self.ttl

    # -- manifests ----------------------------------------------------------------------

    def manifest(
        self,
        request: Request,
        key: tuple[str, str],
        name: str,
        reference: str | Digest,
        answer: AnswerManifest,
    ) -> Response | Awaitable[Response]:
        inflight = self._inflight.get(key)
        if inflight is not None and str(reference) in inflight.manifests:
            return answer(request, name, str(reference), inflight.manifests[str(reference)])
        return self._manifest(request, key, name, reference, answer)

    async def _manifest(
        self,
        request: Request,
        key: tuple[str, str],
        name: str,
        reference: str | Digest,
        answer: AnswerManifest,
    ) -> Response:
        job = (*key, str(reference))
        pending = self._pending.get(job)
        if pending is None:
            loop = asyncio.get_running_loop()
            ready: concurrent.futures.Future[Response | None] = concurrent.futures.Future()
            self._pool.submit(self._fetch, loop, key, reference, ready)
            pending = asyncio.wrap_future(ready)
            self._pending[job] = pending
            pending.add_done_callback(lambda _: self._pending.pop(job, None))
        failure = await asyncio.shield(pending)
        self.view.refresh()
        repo = self.view.repo(*key)
        served = None if repo is None else self.view.find_manifest(repo, reference)
        inflight = self._inflight.get(key)
        if served is None and inflight is not None:
            served = inflight.manifests.get(str(reference))
        if failure is not None and served is None:
            return failure
        return answer(request, name, str(reference), served)

    def _fetch(
        self,
        loop: asyncio.AbstractEventLoop,
        key: tuple[str, str],
        reference: str | Digest,
        ready: concurrent.futures.Future[Response | None],
    ) -> None:
        """Pulls ``reference`` into the store (worker thread); ``ready`` is told once the
        manifest can be answered (``None``), or the error to answer with."""
        domain, path = key
        tag = None if isinstance(reference, Digest) else reference
        ref = Reference(domain, path, tag, None if tag is not None else reference)
        inflight = _InFlight()

        def on_remote(top: Manifest, images: list[RemoteImage]) -> None:
            if tag is not None:
                self._checked[(domain, path, tag)] = time.monotonic()
                if self._has(ref, top.digest):
                    raise _Unchanged
            for i, image in enumerate(images):
                served = describe_manifest(image.manifest.data, image.manifest.digest)
                if i == 0:
                    inflight.manifests[str(reference)] = served
                inflight.manifests[str(image.manifest.digest)] = served
                if isinstance(image.config, bytes) and served.config is not None:
                    inflight.configs[served.config] = image.config
                for digest, size, _ in image.layers:
                    if size is None or digest in inflight.spools:
                        continue
                    spool = _Spool(self._spool_path(digest), size)
                    spool.loop = loop
                    inflight.spools[digest] = spool
            # (in this order on the loop: the image in flight, then the manifest's answer)
            loop.call_soon_threadsafe(self._inflight.__setitem__, key, inflight)
            _settle(ready, None)

        def tee(digest: Digest, download: IO[bytes]) -> IO[bytes]:
            spool = inflight.spools.get(digest)
            return download if spool is None else _Tee(download, spool)  # type: ignore[return-value]

        ok = False
        try:
            with self._lock:
                pull(self._store, self.session, ref, on_remote=on_remote, tee=tee)
            ok = True
        except _Unchanged:
            ok = True
        except RegistryError as e:
            upstream = {"upstream": e.where}
            _settle(ready, error(e.status, e.code or "UNKNOWN", e.message or str(e), upstream))
        except ConnectionFailed as e:
            _settle(ready, error(503, "UNAVAILABLE", "the upstream cannot be reached", str(e)))
        except OcistoreError as e:
            _settle(ready, error(502, "UNKNOWN", "the upstream's image was refused", str(e)))
        finally:
            for spool in inflight.spools.values():
                spool.finish(ok)
            _settle(ready, None)
            loop.call_soon_threadsafe(self._landed, key, inflight)

    def _landed(self, key: tuple[str, str], inflight: _InFlight) -> None:
        """The pull ended: the store serves the image now (the loop's thread)."""
        if self._inflight.get(key) is inflight:
            del self._inflight[key]
        for spool in inflight.spools.values():
            with contextlib.suppress(OSError):
                os.unlink(spool.path)  # (clients streaming from it keep their descriptor)

    def _spool_path(self, digest: Digest) -> str:
        # (the store's temporary name, tagged with this process: gc leaves it alone
        # while the server runs and removes it after a crash)
        return str(fsutil.temp_path(self._store.tmpdir, f"-spool-{digest.hex[:12]}"))

    def _has(self, ref: Reference, digest: Digest) -> bool:
        """Whether the store has the tag naming ``digest`` (the upstream's answer)."""
        try:
            image_id = self._store.resolve(ref.familiar())
        except OcistoreError:
            return False
        digests = {r.digest for r in self._store.references.by_image().get(image_id, [])}
        digests.add(self._store.kept_manifest(image_id))
        return digest in digests

    # -- blobs --------------------------------------------------------------------------

    def blob(
        self,
        request: Request,
        key: tuple[str, str],
        name: str,
        digest: Digest,
        answer: AnswerBlob,
    ) -> Response | Awaitable[Response]:
        """A blob of an image being pulled through: its config from memory, a layer from
        its spool as it fills (a range of it once it is stored)."""
        inflight = self._inflight.get(key)
        if inflight is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        headers = [
            ("Docker-Content-Digest", digest),
            ("ETag", f'"{digest}"'),
            ("Content-Type", "application/octet-stream"),
        ]
        config = inflight.configs.get(digest)
        if config is not None:
            return Response(200, headers, [config])
        spool = inflight.spools.get(digest)
        if spool is None:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        if self.view.store.content.exists(digest):  # (a layer the store had already)
            return answer(request, digest)
        if request.header("range") or request.method == "HEAD":
            return self._when_stored(request, digest, spool, answer)
        try:
            fd = spool.reader()
        except OSError:  # (stored meanwhile, its spool gone)
            return answer(request, digest)
        return Response(200, headers, [Stream(spool.size, lambda: spool.chunks(fd))], fds=[fd])

    async def _when_stored(
        self, request: Request, digest: Digest, spool: _Spool, answer: AnswerBlob
    ) -> Response:
        await spool.ended()
        self.view.refresh()
        return answer(request, digest)


def _settle(future: concurrent.futures.Future[Response | None], value: Response | None) -> None:
    """The first answer ``future`` gets (from the worker thread: it is thread-safe)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(value)
