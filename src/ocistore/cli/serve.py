"""``ocistore serve``: the store as a read-only registry, a pull-through cache, a page.
Registered with :mod:`ocistore.cli.main`'s commands; the server's modules are imported
only when it runs."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput
from . import views
from .main import EXIT_OK, command, open_store, say_error
from .remote import open_session, positive_seconds, registry_options

if TYPE_CHECKING:  # (the server's modules are imported only when it runs)
    from ..serve.http import Request


def address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--addr",
        type=address,
        default=("127.0.0.1", 5000),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:5000; port 0 picks a free one)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, metavar="CERT", help="serve HTTPS")
    p.add_argument(
        "--tls-key", type=Path, default=None, metavar="KEY", help="the key of --tls-cert"
    )
    p.add_argument(
        "--htpasswd",
        type=Path,
        default=None,
        metavar="FILE",
        help="ask for Basic authentication against this htpasswd file (bcrypt entries)",
    )
    p.add_argument(
        "--proxy",
        default=None,
        metavar="UPSTREAM",
        help="be a pull-through cache of this registry (HOST[:PORT], or an http(s):// URL)",
    )
    p.add_argument(
        "--proxy-ttl",
        type=positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long a tag pulled through is served before the upstream is asked again "
        "(default 300)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but the address")
    registry_options(p)


def upstream_domain(text: str) -> str:
    """The upstream of ``--proxy`` as a reference's domain (``host[:port]``)."""
    from ..spec.reference import parse

    domain = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    if domain in ("registry-1.docker.io", "index.docker.io"):
        domain = "docker.io"
    try:
        ref = parse(f"{domain}/x")
    except InvalidInput:
        ref = None
    if ref is None or ref.domain != domain or "/" in domain:
        raise InvalidInput(f"--proxy {text!r}: not a registry's HOST[:PORT]")
    return domain


@command("serve", _serve_args)
def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the store as a read-only registry (the OCI distribution API's pull side).

    Any client pulls from it: docker pull HOST:PORT/NAME:TAG, podman, skopeo, containerd.
    A page of the store is at /. With --proxy it is a pull-through cache: what the store
    lacks is pulled from the upstream, stored, and served. The store stays usable by
    other commands meanwhile. Stop it with Ctrl-C.

    example:
      ocistore serve --addr 127.0.0.1:5000 &
      docker pull 127.0.0.1:5000/busybox:latest
      ocistore serve --proxy https://registry-1.docker.io --proxy-ttl 600
    """
    from ..serve.auth import Htpasswd
    from ..serve.proxy import Proxy
    from ..serve.server import App, run, tls_context
    from ..serve.view import StoreView

    host, port = args.addr
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert is not None:
        try:
            tls = tls_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as e:
            raise InvalidInput(
                f"{args.tls_cert}: cannot load the certificate and key: {e}"
            ) from None
    htpasswd = Htpasswd(args.htpasswd) if args.htpasswd is not None else None
    store = open_store(args)
    view = StoreView(store)
    proxy = None
    if args.proxy is not None:
        domain = upstream_domain(args.proxy)
        if args.proxy.startswith("http://"):
            args.insecure = True
        proxy = Proxy(view, open_session(args, domain), domain, args.proxy_ttl)
    app = App(view, htpasswd, proxy)
    if not _is_loopback(host) and htpasswd is None and not args.quiet:
        say_error(f"warning: serving {host} to the network without authentication")

    def listening(bound: str, bound_port: int) -> None:
        scheme = "https" if tls is not None else "http"
        shown = f"[{bound}]" if ":" in bound else bound
        print(f"serving on {scheme}://{shown}:{bound_port}", flush=True)

    def failed(request: Request) -> None:
        # One line, never a traceback: the request's method and path (escaped) and what
        # went wrong; the client got a 500 and the server goes on.
        e = sys.exc_info()[1]
        what = views.printable(f"{request.method} {request.path}")
        say_error(f"internal error answering {what}: {type(e).__name__}: {views.printable(str(e))}")

    try:
        run(app, host, port, tls, listening, failed)
    except OSError as e:
        raise InvalidInput(f"--addr {host}:{port}: cannot listen: {e.strerror or e}") from None
    finally:
        if proxy is not None:
            proxy.close()
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
