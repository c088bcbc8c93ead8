"""The OCI distribution API's pull side over a :class:`~.view.StoreView`.

Routes: ``/v2/``, ``/v2/_catalog``, and under ``/v2/<name>/``: ``manifests/<ref>``,
``blobs/<digest>``, ``tags/list``, ``referrers/<digest>``; ``GET`` and ``HEAD`` only
(anything else is ``405 UNSUPPORTED``: the store is not pushed to over HTTP). Names are
Docker's grammar, matched on the path as sent, the longest the route allows (as
Distribution's router: ``/v2/a/tags/tags/list`` lists the tags of ``a/tags``): an escape
(``%2e``), a ``..`` or an empty component is not a name (``400 NAME_INVALID``), and a
malformed digest or one of an unsupported algorithm is ``400 DIGEST_INVALID``;
well-formed but unknown is a ``404``. A name may begin with a registry's ``host:port/``,
as the catalog lists the repositories of one. Numbers (ranges, page sizes) are ASCII
digits only.

Headers are Distribution's: ``Content-Type`` is the manifest's own media type,
``Docker-Content-Digest`` and ``ETag`` the digest (``304`` to a matching
``If-None-Match``), ``Content-Length`` always, ``Accept-Ranges: bytes`` on blobs. Accept
negotiation as Distribution's: an OCI manifest or index asked for by a client whose
``Accept`` names no OCI type is ``MANIFEST_UNKNOWN``, with a message saying why.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from ..errors import InvalidInput, NotFound
from ..spec import mediatypes as mt
from ..spec.digest import Digest
from .http import FileRange, Request, Response
from .view import Repo, ServedManifest, StoreView, normalize

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["RegistryAPI", "error"]

API_VERSION: Final = ("Docker-Distribution-API-Version", "registry/2.0")
JSON: Final = "application/json; charset=utf-8"
#: Ranges of one request served as asked; more are answered with the whole blob.
MAX_RANGES: Final = 1000
#: Tags or repositories in one page when the client gives no ``n``.
DEFAULT_PAGE: Final = 1000
MAX_PAGE: Final = 10000

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
#: A registry with a port: the catalog lists its repositories so (``localhost:5000/x``),
#: and each is asked for by that name (or by its path with containerd's ``?ns=``).
_PORTED = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*:[0-9]{1,5}"
_NAME = re.compile(rf"(?:{_PORTED}/)?{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: A route under a name, the name as long as it can be (``a/tags/tags/list`` is the tags
#: of ``a/tags``, as Distribution's router reads it).
_ROUTE = re.compile(
    r"/v2/(?P<name>.+)/(?:(?P<kind>manifests|blobs|referrers)/(?P<rest>[^/]+)|tags/list)"
)
_UPLOADS = re.compile(r"/v2/.+/blobs/uploads(?:/.*)?")
_DECIMAL = re.compile(r"[0-9]+")
_OCI_TYPES: Final = frozenset({mt.OCI_MANIFEST, mt.OCI_INDEX})

Answer = Response | Awaitable[Response]


def error(status: int, code: str, message: str, detail: Any = None, **extra: str) -> Response:
    """The spec's error body, ``{"errors": [{"code", "message", "detail"}]}``."""
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    body = json.dumps({"errors": [entry]}).encode() + b"\n"
    headers = [("Content-Type", JSON)]
    headers.extend(extra.items())
    return Response(status, headers, [body])


def _json(doc: Any, status: int = 200, content_type: str = JSON) -> Response:
    return Response(status, [("Content-Type", content_type)], [json.dumps(doc).encode()])


def _digest(text: str) -> Digest | Response:
    try:
        return Digest(text)
    except InvalidInput as e:
        return error(
            400, "DIGEST_INVALID", "provided digest did not match uploaded content", str(e)
        )


def _accepted(request: Request) -> set[str]:
    return {
        part.split(";", 1)[0].strip().lower()
        for part in request.header("accept").split(",")
        if part.strip()
    }


def _etag_matches(request: Request, digest: Digest) -> bool:
    wanted = request.header("if-none-match")
    if not wanted:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")}
    return "*" in tags or str(digest) in tags


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges ``[start, end)`` a ``Range`` header asks for, as Go's
    ``http.ServeContent`` reads it: ``None`` for the whole blob (no header, another unit,
    more than :data:`MAX_RANGES` ranges or more bytes than the blob: a server may answer a
    range request with the whole); :class:`ValueError` when it cannot be satisfied or is
    malformed (``416``)."""
    if not header:
        return None
    unit, eq, spec = header.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    pieces = spec.split(",")
    if len(pieces) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for piece in pieces:
        piece = piece.strip()
        if not piece:
            continue
        first, dash, last = piece.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not _DECIMAL.fullmatch(first)):
            raise ValueError("malformed range")
        if last and not _DECIMAL.fullmatch(last):
            raise ValueError("malformed range")
        if len(first) > 20 or len(last) > 20:
            raise ValueError("malformed range")
        if not first:
            if not last:
                raise ValueError("malformed range")
            n = int(last)
            if n == 0:
                continue
            ranges.append((max(0, size - n), size))
            continue
        start = int(first)
        end = int(last) + 1 if last else size
        if last and end <= start:
            raise ValueError("malformed range")
        if start >= size:
            continue  # (unsatisfiable alone; others may be)
        ranges.append((start, min(end, size)))
    if not ranges:
        raise ValueError("no satisfiable range")
    if sum(e - s for s, e in ranges) > size:
        return None
    return ranges


class RegistryAPI:
    """Answers the API's requests from ``view``; ``proxy`` (a pull-through cache) is asked
    for what the store does not have."""

    def __init__(self, view: StoreView, proxy: Proxy | None = None) -> None:
        self.view = view
        self.proxy = proxy

    def __call__(self, request: Request) -> Answer:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            return error(
                405,
                "UNSUPPORTED",
                "the operation is unsupported: this registry is read-only",
                Allow="GET, HEAD",
            )
        if path in ("/v2/", "/v2"):
            return _json({})
        self.view.refresh()
        if path == "/v2/_catalog":
            return self.catalog(request)
        match = _ROUTE.fullmatch(path)
        if match is None or (match["kind"] == "blobs" and match["rest"] == "uploads"):
            if match is not None or _UPLOADS.fullmatch(path):
                return error(
                    405, "UNSUPPORTED", "the operation is unsupported: this registry is read-only"
                )
            return error(404, "NOT_FOUND", "no such route", path)
        name, kind, rest = match["name"], match["kind"] or "tags", match["rest"] or "list"
        if len(name) > 255 or not _NAME.fullmatch(name):
            return error(400, "NAME_INVALID", "invalid repository name", name)
        query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
        ns = query["ns"][0] if query.get("ns") else None
        key = self._repo_key(name, ns)
        if key is None:
            return error(400, "NAME_INVALID", "invalid repository name", name)
        if kind == "tags":
            return self._with_repo(key, name, lambda repo: self.tags(request, name, repo, query))
        if kind == "manifests":
            return self.manifest(request, key, name, rest)
        digest = _digest(rest)
        if isinstance(digest, Response):
            return digest
        if kind == "blobs":
            return self.blob(request, key, name, digest)
        return self._with_repo(key, name, lambda repo: self.referrers(repo, digest, query))

    # -- names --------------------------------------------------------------------------

    def _repo_key(self, name: str, ns: str | None) -> tuple[str, str] | None:
        if self.proxy is not None:
            return self.proxy.repo_key(name)
        return normalize(name, ns)

    def _with_repo(
        self, key: tuple[str, str], name: str, answer: Callable[[Repo], Answer]
    ) -> Answer:
        repo = self.view.repo(*key)
        if repo is None:
            return error(
                404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        return answer(repo)

    # -- catalog and tags ---------------------------------------------------------------

    def catalog(self, request: Request) -> Response:
        query = urllib.parse.parse_qs(request.query, keep_blank_values=True)
        if self.proxy is not None:  # (the upstream's names: what its clients ask for)
            domain = self.proxy.domain
            names = sorted({r.path for r in self.view.repositories() if r.domain == domain})
        else:
            names = sorted({r.name for r in self.view.repositories()})
        return self._page(names, query, "/v2/_catalog", "repositories", {})

    def tags(
        self, request: Request, name: str, repo: Repo, query: dict[str, list[str]]
    ) -> Response:
        return self._page(sorted(repo.tags), query, f"/v2/{name}/tags/list", "tags", {"name": name})

    def _page(
        self,
        items: list[str],
        query: dict[str, list[str]],
        path: str,
        key: str,
        doc: dict[str, Any],
    ) -> Response:
        n_text = (query.get("n") or [""])[0]
        last = (query.get("last") or [""])[0]
        if n_text and (not _DECIMAL.fullmatch(n_text) or len(n_text) > 9):
            return error(
                400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", n_text
            )
        n = min(int(n_text), MAX_PAGE) if n_text else DEFAULT_PAGE
        if last:
            items = [i for i in items if i > last]
        page = items[:n]
        headers = [("Content-Type", JSON)]
        if len(items) > n and page:
            params: dict[str, str | int] = {"last": page[-1], "n": n}
            if query.get("ns"):  # (containerd's: the next page is of the same registry)
                params["ns"] = query["ns"][0]
            link = f"{path}?" + urllib.parse.urlencode(params)
            headers.append(("Link", f'<{link}>; rel="next"'))
        body = dict(doc)
        body[key] = page
        return Response(200, headers, [json.dumps(body).encode()])

    # -- manifests ----------------------------------------------------------------------

    def manifest(self, request: Request, key: tuple[str, str], name: str, ref: str) -> Answer:
        reference: str | Digest
        if ":" in ref:
            digest = _digest(ref)
            if isinstance(digest, Response):
                return digest
            reference = digest
        elif _TAG.fullmatch(ref):
            reference = ref
        else:
            return error(400, "TAG_INVALID", "manifest tag did not match URI", ref)
        repo = self.view.repo(*key)
        served = None if repo is None else self.view.find_manifest(repo, reference)
        if self.proxy is not None and (served is None or self.proxy.stale(key, reference)):
            return self.proxy.manifest(request, key, name, reference, self._answer_manifest)
        if repo is None:
            return error(
                404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        return self._answer_manifest(request, name, ref, served)

    def _answer_manifest(
        self, request: Request, name: str, ref: str, served: ServedManifest | None
    ) -> Response:
        if served is None:
            return error(
                404, "MANIFEST_UNKNOWN", "manifest unknown", {"name": name, "reference": ref}
            )
        if served.media_type in _OCI_TYPES and served.media_type not in _accepted(request):
            kind = "index" if served.media_type == mt.OCI_INDEX else "manifest"
            return error(
                404,
                "MANIFEST_UNKNOWN",
                f"OCI {kind} found, but accept header does not support OCI {kind}s",
                {"name": name, "reference": ref},
            )
        headers = [
            ("Content-Type", served.media_type),
            ("Docker-Content-Digest", served.digest),
            ("ETag", f'"{served.digest}"'),
        ]
        if _etag_matches(request, served.digest):
            headers.append(("Content-Length", str(len(served.raw))))
            return Response(304, headers)
        return Response(200, headers, [served.raw])

    # -- blobs --------------------------------------------------------------------------

    def blob(self, request: Request, key: tuple[str, str], name: str, digest: Digest) -> Answer:
        repo = self.view.repo(*key)
        if repo is None or not self.view.has_blob(repo, digest):
            if self.proxy is not None:
                return self.proxy.blob(request, key, name, digest, self._answer_blob)
            if repo is None:
                return error(
                    404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
                )
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        return self._answer_blob(request, digest)

    def _answer_blob(self, request: Request, digest: Digest) -> Response:
        try:
            fd = self.view.open_blob(digest)
        except NotFound:
            return error(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        try:
            size = os.fstat(fd).st_size
            headers = [
                ("Docker-Content-Digest", digest),
                ("ETag", f'"{digest}"'),
                ("Accept-Ranges", "bytes"),
            ]
            if _etag_matches(request, digest):
                os.close(fd)
                return Response(304, [*headers, ("Content-Length", str(size))])
            try:
                ranges = parse_ranges(request.header("range"), size)
            except ValueError:
                os.close(fd)
                return error(
                    416,
                    "RANGE_INVALID",
                    "the range requested cannot be satisfied",
                    request.header("range")[:200],
                    **{"Content-Range": f"bytes */{size}"},
                )
        except BaseException:
            os.close(fd)
            raise
        if ranges is None:
            headers.append(("Content-Type", "application/octet-stream"))
            return Response(200, headers, [FileRange(fd, 0, size)], fds=[fd])
        if len(ranges) == 1:
            start, end = ranges[0]
            headers.append(("Content-Type", "application/octet-stream"))
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
            return Response(206, headers, [FileRange(fd, start, end - start)], fds=[fd])
        boundary = secrets.token_hex(16)
        body: list[bytes | FileRange] = []
        for start, end in ranges:
            body.append(
                (
                    f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n"
                ).encode()
            )
            body.append(FileRange(fd, start, end - start))
        body.append(f"\r\n--{boundary}--\r\n".encode())
        headers.append(("Content-Type", f"multipart/byteranges; boundary={boundary}"))
        return Response(206, headers, body, fds=[fd])

    # -- referrers ----------------------------------------------------------------------

    def referrers(self, repo: Repo, digest: Digest, query: dict[str, list[str]]) -> Response:
        wanted = query.get("artifactType")
        descriptors = []
        for served in self.view.manifests(repo):
            if served.subject != digest:
                continue
            if wanted and served.artifact_type not in wanted:
                continue
            desc: dict[str, Any] = {
                "mediaType": served.media_type,
                "digest": served.digest,
                "size": len(served.raw),
            }
            if served.artifact_type:
                desc["artifactType"] = served.artifact_type
            if served.annotations:
                desc["annotations"] = served.annotations
            descriptors.append(desc)
        descriptors.sort(key=lambda d: d["digest"])
        doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
        response = _json(doc, content_type=mt.OCI_INDEX)
        if wanted:
            response.headers.append(("OCI-Filters-Applied", "artifactType"))
        return response
