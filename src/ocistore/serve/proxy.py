"""``serve --proxy UPSTREAM``: a pull-through cache in front of one registry.

The names a client asks for are the upstream's (Docker's ``registry-mirrors``, podman's
``[[registry.mirror]]`` and containerd's ``hosts.toml`` all send the upstream's path, the
last with ``?ns=`` naming it). A manifest the store lacks is pulled from the upstream by
ocistore's own pull (its authentication, retries and verification of every blob), into
the store under the upstream's name (``UPSTREAM/PATH:TAG`` and ``@DIGEST``), then served
from the store as everything else; its blobs are in the store by the time the manifest is
answered, so a client's blob requests never reach the upstream. A tag is asked of the
upstream again once it is older than the TTL (one manifest request: the image is pulled
again only when the tag moved); a digest never is. The upstream's errors reach the client
as registry errors with the upstream's status and code.

Pulls run in one worker thread, with a :class:`~ocistore.store.store.Store` of its own
(the store's locks are per open file, so the server's reads and the pull's writes exclude
each other as two processes' would); requests for the same manifest wait for one pull.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from ..errors import OcistoreError
from ..registry.client import RegistryError
from ..registry.session import Session
from ..registry.transport import ConnectionFailed
from ..spec.digest import Digest
from ..spec.reference import Reference
from ..store.store import Store
from .http import Request, Response
from .registry import error
from .view import DOCKER_DOMAIN, ServedManifest, StoreView, normalize

__all__ = ["Proxy"]

DEFAULT_TTL: Final = 300.0

AnswerManifest = Callable[[Request, str, str, "ServedManifest | None"], Response]


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

    def manifest(
        self,
        request: Request,
        key: tuple[str, str],
        name: str,
        reference: str | Digest,
        answer: AnswerManifest,
    ) -> asyncio.Future[Response] | Any:
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
            pending = asyncio.ensure_future(
                loop.run_in_executor(self._pool, self._fetch, key, reference)
            )
            self._pending[job] = pending
            pending.add_done_callback(lambda _: self._pending.pop(job, None))
        failure = await asyncio.shield(pending)
        repo = self.view.repo(*key)
        served = None if repo is None else self.view.find_manifest(repo, reference)
        if failure is not None and served is None:
            return failure
        return answer(request, name, str(reference), served)

    def _fetch(self, key: tuple[str, str], reference: str | Digest) -> Response | None:
        """Brings ``reference`` into the store (worker thread); the error to answer with
        if the upstream failed."""
        from ..registry.pull import pull

        domain, path = key
        ref = (
            Reference(domain, path, None, reference)
            if isinstance(reference, Digest)
            else (Reference(domain, path, reference, None))
        )
        try:
            with self._lock:
                if not isinstance(reference, Digest) and self._unchanged(ref):
                    return None
                pull(self._store, self.session, ref)
            if not isinstance(reference, Digest):
                self._checked[(domain, path, reference)] = time.monotonic()
            return None
        except RegistryError as e:
            return error(e.status, e.code or "UNKNOWN", e.message or str(e), {"upstream": e.where})
        except ConnectionFailed as e:
            return error(503, "UNAVAILABLE", "the upstream registry cannot be reached", str(e))
        except OcistoreError as e:
            return error(502, "UNKNOWN", "the upstream's image could not be stored", str(e))

    def _unchanged(self, ref: Reference) -> bool:
        """Whether the tag still names, upstream, the manifest the store has for it."""
        assert ref.tag is not None
        try:
            image_id = self._store.resolve(ref.familiar())
        except OcistoreError:
            return False
        digests = {r.digest for r in self._store.references.by_image().get(image_id, [])}
        kept = self._store.kept_manifest(image_id)
        if kept is not None:
            digests.add(kept)
        upstream = self.session.repository(ref).get_manifest(ref.tag).digest
        if upstream in digests:
            self._checked[(ref.domain, ref.path, ref.tag)] = time.monotonic()
            return True
        return False

    def blob(
        self,
        request: Request,
        key: tuple[str, str],
        name: str,
        digest: Digest,
        answer: Callable[[Request, Digest], Response],
    ) -> Response:
        """A blob the store's images of ``key`` do not use: the proxy stores whole images
        only (a blob is pulled with its manifest), so it is not known."""
        return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
