"""The registry commands: pull, push, login, logout, copy, manifest, tags, and
``inspect --remote``. Registered with :mod:`ocistore.cli.main`'s commands, whose rules
they keep (one line per error, exit codes, the environment read only here and there).

What they print follows ``docker pull``/``docker push``/``docker login`` (and skopeo
for ``inspect --remote``, ``manifest`` and ``tags``); progress goes to a terminal only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidInput, OcistoreError
from ..spec.platform import parse_platform
from ..spec.reference import Reference, parse, parse_tagged
from . import views
from .main import (
    EXIT_OK,
    command,
    go_bool,
    open_store,
    platform_option,
    say_error,
    tune_allocator,
)
from .progress import TerminalProgress

if TYPE_CHECKING:  # (imported when a command runs: ssl and http cost every start)
    from ..registry.copy import Location
    from ..registry.credentials import Credential, CredentialStore
    from ..registry.session import Session
    from ..store.store import Store

#: The most of a password read from standard input (``login --password-stdin``).
MAX_PASSWORD = 64 << 10
#: The defaults of RetryPolicy, for the help (without importing it).
TIMEOUT = 60.0
RETRIES = 4


def tls_flag(text: str) -> bool:
    try:
        return go_bool(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}") from None


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def retry_count(text: str) -> int:
    if not text.isdigit() or int(text) > 100:
        raise argparse.ArgumentTypeError(f"not a number of retries from 0 to 100: {text!r}")
    return int(text)


def cert_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return path


def registry_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that talks to a registry (skopeo's names)."""
    g = p.add_argument_group("registry")
    g.add_argument(
        "--tls-verify",
        type=tls_flag,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="verify TLS certificates and refuse plain HTTP (default true; plain HTTP is "
        "always allowed to a loopback registry, as Docker does)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP to any registry (TLS is still verified when spoken)",
    )
    g.add_argument(
        "--cert-dir",
        type=cert_dir,
        default=None,
        metavar="DIR",
        help="CA certificates (*.crt) and client certificates (*.cert, *.key) to use "
        "instead of /etc/docker/certs.d/HOST:PORT and /etc/containers/certs.d/HOST:PORT",
    )
    g.add_argument(
        "--creds",
        default=None,
        metavar="USER[:PASSWORD]",
        help="the credential to use instead of the stored ones",
    )
    g.add_argument(
        "--authfile",
        type=Path,
        default=None,
        metavar="PATH",
        help="a containers auth.json to read credentials from first",
    )
    g.add_argument(
        "--timeout",
        type=positive_seconds,
        default=TIMEOUT,
        metavar="SECONDS",
        help="how long a connection may go without a byte before it counts as failed "
        f"(default {TIMEOUT:g})",
    )
    g.add_argument(
        "--retry-times",
        type=retry_count,
        default=RETRIES,
        metavar="N",
        help=f"retries of a request that failed (default {RETRIES})",
    )


def credential_store(args: argparse.Namespace) -> CredentialStore:
    from ..registry.credentials import CredentialStore

    store = CredentialStore.from_environment(os.environ)
    if getattr(args, "authfile", None):
        store = CredentialStore(
            store.docker_config, [args.authfile, *store.auth_files], store.helper_path
        )
    return store


def _given_credential(text: str | None) -> Credential | None:
    from ..registry.credentials import Credential

    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep:
        password = _ask_password(user)
    return Credential(user, password)


def _ask_password(user: str) -> str:
    if sys.stdin is None or not sys.stdin.isatty():
        raise OcistoreError(
            f"a password for {user!r} is needed and standard input is not a terminal: "
            "give USER:PASSWORD or --password-stdin"
        )
    import getpass

    return getpass.getpass("Password: ")


def open_session(
    args: argparse.Namespace, *domains: str, login: Credential | None = None
) -> Session:
    """The session of a registry command: its TLS and retry options, and the
    credential given (``login``'s, else ``--creds``) for the registries ``domains``
    only (never sent to another), else the stored ones."""
    from ..registry.session import Session
    from ..registry.transport import RetryPolicy, TLSSettings

    tls = TLSSettings(verify=args.tls_verify, cert_dir=args.cert_dir, insecure=args.insecure)
    retry = RetryPolicy(attempts=args.retry_times + 1, timeout=args.timeout)
    if login is not None:
        return Session(None, tls, retry, dict.fromkeys(domains, login))
    given = {}
    for domain, text in _given_credentials(args, domains):
        credential = _given_credential(text)
        if credential is not None:
            given[domain] = credential
    return Session(credential_store(args), tls, retry, given)


def _given_credentials(
    args: argparse.Namespace, domains: tuple[str, ...]
) -> list[tuple[str, str | None]]:
    """Which registry each credential typed is for: ``--creds`` for the command's one
    registry; for a copy, ``--src-creds`` and ``--dest-creds`` (skopeo's), ``--creds``
    only when both sides are one registry."""
    if hasattr(args, "src_creds"):  # a copy: (source, destination), "" for no registry
        registries = {d for d in domains if d}
        if args.creds is not None and len(registries) > 1:
            raise InvalidInput("--creds with two registries: give --src-creds and --dest-creds")
        return [
            (domains[0], args.src_creds or args.creds),
            (domains[1], args.dest_creds or args.creds),
        ]
    return [(domain, args.creds) for domain in domains]


def _reference(text: str, tagged: bool = False) -> Reference:
    """A registry reference as typed (``docker://`` allowed, as skopeo writes it); with
    ``tagged``, ``latest`` when it has neither tag nor digest."""
    text = text.removeprefix("docker://")
    return parse_tagged(text) if tagged else parse(text)


# -- pull ---------------------------------------------------------------------------------


def _pull_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="NAME[:TAG|@DIGEST]")
    platform_option(p)
    p.add_argument(
        "-a",
        "--all-platforms",
        action="store_true",
        help="pull the image of every platform of an index (the tag names this machine's)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="print only the image's full reference"
    )
    registry_options(p)


@command("pull", _pull_args)
def cmd_pull(args: argparse.Namespace) -> int:
    """Pull an image from a registry into the store, as docker pull.

    busybox means docker.io/library/busybox:latest. The image gets the tag pulled and
    the digest reference NAME@DIGEST of what was pulled (its RepoDigests).

    example:
      ocistore pull busybox
      ocistore pull 127.0.0.1:5000/lab/app:1
      ocistore pull --platform linux/arm64 alpine:3.20
      ocistore pull quay.io/prometheus/busybox@sha256:...
    """
    from ..registry.pull import pull

    ref = _reference(args.reference)
    platform = parse_platform(args.platform) if args.platform else None
    if not args.quiet and ref.tag is None and ref.digest is None:
        print("Using default tag: latest")
    if ref.tag is None and ref.digest is None:
        ref = ref.with_tag("latest")
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    tune_allocator()
    with open_session(args, ref.domain) as session:
        if not args.quiet:
            what = ref.digest or ref.tag
            print(f"{what}: Pulling from {views.printable(ref.path)}", flush=True)
        result = pull(store, session, ref, platform, args.all_platforms, progress)
    shown = views.printable(str(result.reference))
    if not args.quiet:
        print(f"Digest: {result.digest}")
        familiar = views.printable(result.reference.familiar())
        if result.new:
            print(f"Status: Downloaded newer image for {familiar}")
        else:
            print(f"Status: Image is up to date for {familiar}")
    print(shown)
    return EXIT_OK


# -- push ---------------------------------------------------------------------------------


def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "destination",
        metavar="[docker://]NAME[:TAG]",
        nargs="?",
        help="where to push (default: IMAGE as a reference)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the pushed reference")
    registry_options(p)


@command("push", _push_args)
def cmd_push(args: argparse.Namespace) -> int:
    """Push a stored image to a registry, as docker push (by tag; latest without one).

    The manifest pushed is the one the image came with when the store kept it, so its
    digest stays what it was; a layer stored uncompressed is pushed gzip-compressed.

    example:
      ocistore push 127.0.0.1:5000/lab/app:1
      ocistore push lab/app:1 registry.example.com/team/app:1
    """
    from ..registry.push import push

    dest = _reference(args.destination, tagged=True) if args.destination else None
    if dest is None:
        dest = parse_tagged(args.image)
    store = open_store(args)
    store.resolve(args.image)  # (an image that is not there is told before anything else)
    if args.destination is None and not _is_stored_name(store, dest):
        # An ID (or its prefix) read as a name would go to Docker Hub: say where to.
        raise InvalidInput(
            f"{views.printable(args.image)} names no tag in the store (an image ID?): give "
            "the destination, ocistore push IMAGE NAME[:TAG]"
        )
    progress = TerminalProgress.for_terminal(args.quiet)
    tune_allocator()
    with open_session(args, dest.domain) as session:
        if not args.quiet:
            print(f"The push refers to repository [{views.printable(dest.name)}]", flush=True)
        result = push(store, session, args.image, dest, progress)
    for warning in result.warnings:
        say_error(f"warning: {warning}")
    if args.quiet:
        print(views.printable(str(result.reference)))
        return EXIT_OK
    for line in result.events:
        print(views.printable(line))
    tag = views.printable(result.reference.tag or "")
    print(f"{tag}: digest: {result.digest} size: {result.size}")
    return EXIT_OK


def _is_stored_name(store: Store, ref: Reference) -> bool:
    from ..errors import NotFound

    try:
        store.references.get(ref)
    except NotFound:
        return False
    return True


# -- login, logout ------------------------------------------------------------------------


def _login_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default="docker.io")
    p.add_argument("-u", "--username", default=None)
    p.add_argument("-p", "--password", default=None, help="(prefer --password-stdin)")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    registry_options(p)


def _registry_domain(text: str) -> str:
    """``HOST[:PORT]`` from what ``login`` was given (a URL, a host, ``docker.io``)."""
    text = text.strip()
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.split("/", 1)[0]
    from ..registry.client import DOCKER_HUB_HOST
    from ..spec.reference import DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN

    return DEFAULT_DOMAIN if text in (LEGACY_DEFAULT_DOMAIN, DOCKER_HUB_HOST, "") else text


@command("login", _login_args)
def cmd_login(args: argparse.Namespace) -> int:
    """Log in to a registry: check the credential, then store it where Docker would.

    The credential goes to the credential helper config.json names for the registry
    (credHelpers, else credsStore), else into config.json ($DOCKER_CONFIG, else
    ~/.docker) as Docker writes it. A token server that gives a refresh token has it
    stored instead of the password.

    example:
      ocistore login -u alice --password-stdin 127.0.0.1:5000 < password.txt
    """
    domain = _registry_domain(args.registry)
    if args.password_stdin and args.password is not None:
        raise InvalidInput("--password and --password-stdin cannot both be given")
    username = args.username
    if username is None:
        if sys.stdin is None or not sys.stdin.isatty() or args.password_stdin:
            raise InvalidInput("give a username (-u USER)")
        try:
            username = input("Username: ").strip()
        except EOFError:
            raise InvalidInput("no username given (end of input)") from None
    if args.password_stdin:
        if sys.stdin is None:
            raise InvalidInput("--password-stdin: standard input is closed")
        try:
            password = sys.stdin.read(MAX_PASSWORD).rstrip("\r\n")
        except UnicodeDecodeError:
            raise InvalidInput("--password-stdin: the password is not text (UTF-8)") from None
    elif args.password is not None:
        say_error("WARNING! Using --password via the CLI is insecure. Use --password-stdin.")
        password = args.password
    else:
        password = _ask_password(username)
    if not username or not password:
        raise InvalidInput("the username and the password must not be empty")
    from ..registry.credentials import Credential

    credential = Credential(username, password)
    store = credential_store(args)
    with open_session(args, domain, login=credential) as session:
        registry = session.registry(domain)
        registry.check_login()
        refresh = registry.auth.login_token()
    stored = Credential(username, "", refresh) if refresh else credential
    where = store.store(domain, stored)
    if where.endswith(".json") and not refresh:
        say_error(f"WARNING! Your password will be stored unencrypted in {views.printable(where)}.")
    print("Login Succeeded")
    return EXIT_OK


def _logout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("registry", metavar="REGISTRY", nargs="?", default="docker.io")
    p.add_argument("--authfile", type=Path, default=None, metavar="PATH", help=argparse.SUPPRESS)


@command("logout", _logout_args)
def cmd_logout(args: argparse.Namespace) -> int:
    """Log out of a registry: remove its stored credential (as docker logout).

    example:
      ocistore logout 127.0.0.1:5000
    """
    domain = _registry_domain(args.registry)
    store = credential_store(args)
    shown = views.printable(domain)
    if store.erase(domain):
        print(f"Removing login credentials for {shown}")
    else:
        print(f"Not logged in to {shown}")
    return EXIT_OK


# -- manifest, tags, inspect --remote -------------------------------------------------------


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", metavar="[docker://]NAME[:TAG|@DIGEST]")
    registry_options(p)


@command("manifest", _manifest_args)
def cmd_manifest(args: argparse.Namespace) -> int:
    """Print a registry's manifest (or index) for a reference, byte for byte, as skopeo
    inspect --raw (checked against its digest first).

    example:
      ocistore manifest 127.0.0.1:5000/lab/app:1 | jq .
    """
    ref = _reference(args.reference, tagged=True)
    with open_session(args, ref.domain) as session:
        manifest = session.repository(ref).get_manifest(str(ref.digest or ref.tag))
    _write_raw(manifest.data)
    return EXIT_OK


def _write_raw(data: bytes) -> None:
    """A registry's document byte for byte (``| sha256sum`` gives its digest), as skopeo
    inspect --raw writes it; on a terminal, escaped and ended with a newline."""
    if not sys.stdout.isatty():
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        return
    text = views.json_for_terminal(data.decode("utf-8", "replace"))
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _tags_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", metavar="[docker://]NAME")
    registry_options(p)


@command("tags", _tags_args)
def cmd_tags(args: argparse.Namespace) -> int:
    """List a repository's tags in a registry, one a line (every page of the list).

    example:
      ocistore tags 127.0.0.1:5000/lab/app
    """
    ref = _reference(args.repository)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidInput(f"{args.repository}: give a repository, without a tag or digest")
    with open_session(args, ref.domain) as session:
        for tag in session.repository(ref).tags():
            print(views.printable(tag))
    return EXIT_OK


def inspect_remote(args: argparse.Namespace) -> int:
    """``inspect --remote REF``: what skopeo inspect prints of an image in a registry."""
    from ..registry.pull import remote_images

    platform = parse_platform(args.platform) if getattr(args, "platform", None) else None
    out = []
    refs = [_reference(name) for name in args.images]
    domains = list(dict.fromkeys(ref.domain for ref in refs))
    with open_session(args, *domains) as session:
        for ref in refs:
            if ref.tag is None and ref.digest is None:
                ref = ref.with_tag("latest")
            repo = session.repository(ref)
            top = repo.get_manifest(str(ref.digest or ref.tag))
            image = remote_images(repo, top, platform)[0]
            tags = list(repo.tags())
            out.append(_skopeo_inspect(ref, top.digest, image, tags))
    for doc in out:
        text = json.dumps(doc, indent=4, ensure_ascii=False)
        sys.stdout.write(views.json_for_terminal(text) if sys.stdout.isatty() else text)
        sys.stdout.write("\n")
    return EXIT_OK


def _skopeo_inspect(
    ref: Reference, digest: str, image: object, tags: list[str]
) -> dict[str, object]:
    from ..registry.pull import RemoteImage
    from ..spec.digest import DiffID

    assert isinstance(image, RemoteImage)
    config_raw = image.config
    if not isinstance(config_raw, bytes):
        config_raw = config_raw([DiffID(d) for d, _, _ in image.layers])
    try:
        config = json.loads(config_raw)
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    cfg = config.get("config") if isinstance(config.get("config"), dict) else {}
    assert isinstance(cfg, dict)
    doc: dict[str, object] = {"Name": ref.name, "Digest": digest, "RepoTags": tags}
    doc["Created"] = config.get("created") or None
    doc["DockerVersion"] = config.get("docker_version", "")
    doc["Labels"] = cfg.get("Labels")
    doc["Architecture"] = config.get("architecture", "")
    if config.get("variant"):
        doc["Variant"] = config["variant"]
    doc["Os"] = config.get("os", "")
    doc["Layers"] = [str(d) for d, _, _ in image.layers]
    doc["Env"] = cfg.get("Env")
    return doc


# -- copy -----------------------------------------------------------------------------------


def _copy_domains(source: Location, dest: Location) -> tuple[str, ...]:
    """The registries of a copy's two sides (a side that is no registry has none)."""
    return tuple(parse(side.ref).domain if side.registry else "" for side in (source, dest))


def _copy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("destination", metavar="DESTINATION")
    platform_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--src-creds", default=None, metavar="USER[:PASSWORD]", help="for the source registry"
    )
    p.add_argument(
        "--dest-creds",
        default=None,
        metavar="USER[:PASSWORD]",
        help="for the destination registry",
    )
    registry_options(p)


@command("copy", _copy_args)
def cmd_copy(args: argparse.Namespace) -> int:
    """Copy an image between transports, with skopeo's names.

    docker://REF (a registry), docker-archive:PATH[:REF], oci:DIR[:REF],
    oci-archive:PATH[:REF], dir:DIR, and the store itself: ocistore:REF or a bare
    reference. Registry to registry, blobs stream from one to the other (the same
    manifest, the same digest); between other transports that are not the store, the
    image goes through a temporary store of its own: the store is left as it was.

    example:
      ocistore copy docker://127.0.0.1:5000/lab/app:1 oci:./layout:1
      ocistore copy lab/app:1 docker://127.0.0.1:5000/lab/app:1
      ocistore copy docker://127.0.0.1:5000/a:1 docker://127.0.0.1:5000/b:1
    """
    from ..registry.copy import copy, parse_transport

    source = parse_transport(args.source)
    dest = parse_transport(args.destination)
    platform = parse_platform(args.platform) if args.platform else None
    progress = TerminalProgress.for_terminal(args.quiet)
    tune_allocator()
    with open_session(args, *_copy_domains(source, dest)) as session:
        store = None if source.registry and dest.registry else open_store(args)
        result = copy(store, session, source, dest, platform, progress)
    if not args.quiet:
        for line in result:
            print(views.printable(line))
    return EXIT_OK
