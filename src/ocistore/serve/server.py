"""``serve``'s application: authentication, the page at ``/``, the registry API, and the
event loop that runs them until a signal stops it."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from .auth import REALM, Htpasswd
from .http import Request, Response, serve_forever
from .page import CONTENT_SECURITY_POLICY, CONTENT_TYPE, render
from .proxy import Proxy
from .registry import API_VERSION, RegistryAPI, error
from .view import StoreView

__all__ = ["App", "run"]


class App:
    """Every request: authenticated (with ``htpasswd``), then the page or the API."""

    def __init__(
        self, view: StoreView, htpasswd: Htpasswd | None = None, proxy: Proxy | None = None
    ) -> None:
        self.view = view
        self.api = RegistryAPI(self.view, proxy)
        self.htpasswd = htpasswd
        self._page: tuple[object, bytes] | None = None

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        if self.htpasswd is not None:
            header = request.header("authorization")
            ok = self.htpasswd.allowed(header)
            if ok is None:
                return self._checked(request, header)
            if not ok:
                return _unauthorized()
        return self._route(request)

    async def _checked(self, request: Request, header: str) -> Response:
        assert self.htpasswd is not None
        if not await self.htpasswd.check(header):
            return _unauthorized()
        answer = self._route(request)
        return answer if isinstance(answer, Response) else await answer

    def _route(self, request: Request) -> Response | Awaitable[Response]:
        if request.path.startswith("/v2"):
            return self.api(request)
        if request.path in ("/", "/index.html") and request.method in ("GET", "HEAD"):
            return self.page()
        return Response(
            404, [("Content-Type", "text/plain; charset=utf-8")], [b"404 page not found\n"]
        )

    def page(self) -> Response:
        """The page of the store, made again only when the store changed."""
        generation = self.view.generation
        if self._page is None or self._page[0] != generation:
            self._page = (generation, render(self.view.store))
        return Response(
            200,
            [
                ("Content-Type", CONTENT_TYPE),
                ("Cache-Control", "no-cache"),
                # (only the page's own inline style and script, by hash: markup that
                # slipped into a name could never run)
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
            ],
            [self._page[1]],
        )


def _unauthorized() -> Response:
    return error(
        401,
        "UNAUTHORIZED",
        "authentication required",
        None,
        **{"WWW-Authenticate": f'Basic realm="{REALM}"'},
    )


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def run(
    app: App,
    host: str,
    port: int,
    tls: ssl.SSLContext | None,
    on_listening: Callable[[str, int], None],
    on_failure: Callable[[Request], None],
) -> None:
    """Serve until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_forever(
            host,
            port,
            app,
            tls=tls,
            headers=[API_VERSION],
            on_listening=on_listening,
            on_failure=on_failure,
            stop=stop,
        )

    asyncio.run(main())
