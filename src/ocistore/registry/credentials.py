"""Registry credentials: those ``docker login`` and ``podman login`` left, and where
``ocistore login`` keeps its own.

**Where they are read.** :meth:`CredentialStore.get` looks in the containers auth files
first (podman's and skopeo's ``auth.json``, in the order given), then in Docker's
``config.json``; the first credential found is the answer. :meth:`~CredentialStore.
from_environment` finds the files as those tools do: ``$REGISTRY_AUTH_FILE`` alone when
it is set (podman then reads no other auth file), else
``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/$UID/auth.json`` without
it) and ``${XDG_CONFIG_HOME:-~/.config}/containers/auth.json``; and
``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, which is always read (podman
reads it too, but not with ``$REGISTRY_AUTH_FILE``). The legacy ``~/.dockercfg`` and
Docker's ``DOCKER_AUTH_CONFIG`` are not read.

**What matches.** A file's ``auths`` are keyed ``host[:port]``, by a URL
(``https://host/v1/``, ``http://host``: its host counts, as Docker's
``ConvertToHostname`` takes it) or, in auth files, by a scope ``host/namespace/repo``.
``docker.io``, ``index.docker.io``, ``registry-1.docker.io`` and
``https://index.docker.io/v1/`` are one registry. The ``registry`` asked for is
``host[:port]`` (or a URL: its host), or ``host/path`` for one repository's credential:
then the entries of that repository, of each namespace above it and of the host are
tried, most specific first, as containers/image does (a key spelled as asked wins a tie,
then the first in the file). In ``config.json`` an entry of another namespace of the
host matches last, as Docker takes any key for its host. An entry holds ``auth``
(base64 of ``user:password``, split at the first colon), or ``username`` and
``password``, and ``identitytoken`` (:attr:`Credential.identity_token`); field names are
matched without regard to case, as Go's ``encoding/json`` does. An empty entry (``{}``,
which Docker writes beside a helper) holds nothing, and the search goes on. Docker 28's
web login session (``https://index.docker.io/v1/access-token`` and ``.../refresh-token``)
is not a credential: it is never used, and left to ``docker logout`` to revoke.

**Credential helpers.** In ``config.json`` a ``credHelpers`` entry for the registry
(by its key, by the host, or by any spelling of the same host) names the helper, else
``credsStore`` does; an empty name means the file itself, as in Docker. When a helper
applies it alone answers, as in Docker (the file's entries for that registry are
ignored). An auth file's ``credHelpers`` entry for the host is asked before that file's
``auths``, as containers/image does; an auth file's ``credsStore`` is ignored, as there.
The helper is ``docker-credential-NAME`` found in ``helper_path`` (a ``PATH`` string;
relative directories are skipped, as Go's ``exec.LookPath`` refuses them). It is run as
the docker-credential-helpers protocol says: ``get`` with the server URL on standard
input answers ``{"ServerURL", "Username", "Secret"}`` (``Username`` ``<token>``: the
secret is an identity token); exit status non-zero with ``credentials not found in
native keychain`` means none; ``store`` gets that JSON, ``erase`` the server URL. The
server URL is the registry's key in ``config.json`` (``https://index.docker.io/v1/``
for Docker Hub), and the host as podman spells it (``docker.io``) for an auth file's
helper. A helper runs at most :attr:`CredentialStore.helper_timeout` seconds and may
answer at most :data:`HELPER_OUTPUT_LIMIT` bytes; a helper that is missing, fails, times
out or answers something else is a :class:`CredentialError` naming it (with the first
line of what it said, escaped, never its whole output).

**Where they are written.** :meth:`CredentialStore.store` (``ocistore login``) writes
where Docker would, never into an auth file: to the helper that applies (the
``credHelpers`` entry, else ``credsStore``; for a ``config.json`` that holds no
credentials at all, the helper Docker 28 would pick on Linux: ``pass`` when the ``pass``
program is there, else ``secretservice``, if its ``docker-credential-`` program is
found, recorded as ``credsStore``), leaving an empty entry in ``config.json`` as Docker
does; else into ``config.json``'s ``auths`` as Docker writes it: ``{"auth": base64}``,
with ``identitytoken`` for a token, dropping the entry's other fields. Every other key of
the file is kept, unknown ones included, in their order and with their numbers as
written; the file is replaced atomically (a temporary file beside it, fsynced, renamed
over it; through a symlink to its target, as Docker does), keeps its mode and owner, or
is created ``0600`` in a directory created ``0700``. A registry with a path is refused:
Docker's file and helpers hold credentials per registry. :meth:`CredentialStore.erase`
(``ocistore logout``) undoes it in the same places, as Docker's logout does: the helper's
entry and every ``config.json`` entry for the host, whatever its spelling (Docker's
``logout docker.io`` leaves the Hub's entry behind; this does not). Auth files are never
changed, so a credential there still answers :meth:`~CredentialStore.get` after an
erase: ``podman logout`` removes it.

Nothing here reads the environment: :meth:`CredentialStore.from_environment` is given
it. Errors are one line: a malformed file is :class:`~ocistore.errors.InvalidInput`
naming the file, the key and the registry; what is taken from a file or typed is
escaped; no secret is ever in a message, and :class:`Credential`'s ``repr`` hides them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import pwd
import re
import selectors
import stat as stat_mod
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import InvalidInput, OcistoreError, StorageError
from ..store import fsutil

__all__ = [
    "HELPER_OUTPUT_LIMIT",
    "HELPER_TIMEOUT",
    "INDEX_SERVER",
    "Credential",
    "CredentialError",
    "CredentialStore",
    "registry_key",
]

#: The key Docker keeps Docker Hub's credential under (and the server URL its helpers get).
INDEX_SERVER = "https://index.docker.io/v1/"
#: The names of Docker Hub.
_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: Where Docker 28's web login keeps its OAuth session (beside the Hub's credential, a
#: token it made): not a registry credential, and revoked by ``docker logout`` only.
_DOCKER_OAUTH_KEYS = frozenset({INDEX_SERVER + "access-token", INDEX_SERVER + "refresh-token"})
_HELPER_PREFIX = "docker-credential-"
#: What a helper prints (exiting non-zero) when it holds nothing for the server.
_NOT_FOUND = "credentials not found in native keychain"
#: A helper's ``Username`` that says its ``Secret`` is an identity token.
_TOKEN_USERNAME = "<token>"
#: Seconds a credential helper may take (it may be waiting for a keychain's unlock prompt).
HELPER_TIMEOUT = 120.0
#: The most a credential helper may write to standard output (an answer is a few hundred bytes).
HELPER_OUTPUT_LIMIT = 1 << 20
#: What is kept of a helper's standard error (its first line may be told).
_STDERR_KEPT = 4096
#: The largest credentials file read.
_FILE_LIMIT = 16 << 20
#: A registry's host[:port], as Docker's reference grammar has it.
_HOST_RE = re.compile(
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]+)?"
)


class CredentialError(OcistoreError):
    """A credentials file that cannot be read, or a credential helper that is missing,
    fails, times out or answers what is not an answer."""


class Credential(NamedTuple):
    """What a registry is logged in with: a user and password, or an identity token
    (an OAuth2 refresh token: Docker's ``identitytoken``, a helper's ``<token>``).

    Text that was not UTF-8 in a file (``auth``'s bytes) is held with surrogate escapes:
    encode it with ``errors="surrogateescape"`` to get the bytes back."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    @property
    def anonymous(self) -> bool:
        """No credential at all."""
        return not (self.username or self.password or self.identity_token)

    def __repr__(self) -> str:
        # The secrets never reach a log or a traceback.
        hidden = ", ".join(
            f"{name}=<hidden>" for name in ("password", "identity_token") if getattr(self, name)
        )
        return f"Credential(username={self.username!r}{', ' + hidden if hidden else ''})"


# -- names ----------------------------------------------------------------------------------


def _esc(text: str) -> str:
    """``text`` as it may be printed: what a terminal would act on is escaped as ``repr``
    escapes it (a name taken from a file, a path, what was typed)."""
    return text if text.isprintable() else repr(text)[1:-1]


def _hostname(address: str) -> str:
    """Docker's ``ConvertToHostname``: the host of a URL, else what comes before the
    first ``/``."""
    if "://" in address:
        rest = address.split("://", 1)[1]
        for sep in "/?#":
            rest = rest.split(sep, 1)[0]
        host = rest.rpartition("@")[2]
        if host:
            return host
    return address.split("/", 1)[0]


def _normal(host: str) -> str:
    """The one name of a host for comparisons (Docker Hub's many are one)."""
    return "index.docker.io" if host in _HUB_HOSTS else host


def registry_key(registry: str) -> str:
    """The key Docker's ``config.json`` keeps a registry's credential under:
    ``https://index.docker.io/v1/`` for Docker Hub (``docker.io``, ``index.docker.io``,
    ``registry-1.docker.io``, or that URL), else ``host[:port]`` (of a URL, its host; of
    ``host/path``, the host)."""
    host = _hostname(registry)
    if not host:
        raise InvalidInput(f"invalid registry {registry!r}: no host")
    return INDEX_SERVER if host in _HUB_HOSTS else host


class _Target(NamedTuple):
    """A registry (or a repository of one) asked about."""

    given: str  #: as given, for messages
    host: str  #: host[:port]
    path: str  #: "ns/repo", or "" for the registry
    key: str  #: its config.json key (registry_key)

    @property
    def normal(self) -> str:
        return _normal(self.host)

    @property
    def podman_host(self) -> str:
        """The host as podman spells it (in its files and to its helpers)."""
        return "docker.io" if self.host in _HUB_HOSTS else self.host

    def scopes(self) -> list[str]:
        """The path, then each namespace above it, then "" (the registry)."""
        out = []
        path = self.path
        while path:
            out.append(path)
            path = path.rpartition("/")[0]
        out.append("")
        return out


def _target(registry: str, allow_path: bool) -> _Target:
    if not registry or registry != registry.strip() or not registry.isprintable():
        raise InvalidInput(f"invalid registry {registry!r}: expected host[:port]")
    if "://" in registry:
        host, path = _hostname(registry), ""  # a server URL: its path is an API's, not a scope
    else:
        host, _, path = registry.partition("/")
        path = path.strip("/")
        if "@" in registry or ":" in path:
            raise InvalidInput(
                f"invalid registry {registry!r}: a tag or digest is not part of a repository"
            )
    if not _HOST_RE.fullmatch(host):
        raise InvalidInput(f"invalid registry {registry!r}: expected host[:port]")
    if path and not allow_path:
        raise InvalidInput(
            f"registry {registry!r}: credentials are kept for a registry (host[:port]), "
            "not for a repository"
        )
    return _Target(registry, host, path, registry_key(host))


# -- the files ------------------------------------------------------------------------------


class _Number(str):
    """A JSON number as it was written, so that a rewritten file keeps it."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """An object's field as Go's ``encoding/json`` finds it: by name without regard to
    case, the last one written winning."""
    value = None
    lower = name.lower()
    for key, item in obj.items():
        if key == name or key.lower() == lower:
            value = item
    return value


def _key_of(obj: Mapping[str, Any], name: str) -> str:
    """The spelling of the key :func:`_field` takes ``name`` from (``name`` if none)."""
    found = name
    lower = name.lower()
    for key in obj:
        if key == name or key.lower() == lower:
            found = key
    return found


def _string(value: Any, what: str, fail: _Fail) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or isinstance(value, _Number):
        raise fail(f"{what} is not a string")
    return value


class _Fail:
    """Makes the one-line error about a file: ``credentials for R: FILE: problem``."""

    def __init__(self, path: Path, target: _Target) -> None:
        self.path = path
        self.target = target

    def __call__(self, problem: str) -> InvalidInput:
        return InvalidInput(
            f"credentials for {_esc(self.target.given)}: {_esc(str(self.path))}: {problem}"
        )


def _read_json(path: Path, target: _Target) -> dict[str, Any] | None:
    """A credentials file as JSON (``None`` if there is none; ``{}`` if it is empty, as
    Docker takes it); unreadable: :class:`CredentialError`; not a JSON object:
    :class:`~ocistore.errors.InvalidInput`."""
    fail = _Fail(path, target)
    shown = f"credentials for {_esc(target.given)}: {_esc(str(path))}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialError(f"{shown}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise CredentialError(f"{shown}: not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > _FILE_LIMIT:
                raise CredentialError(f"{shown}: larger than {_FILE_LIMIT >> 20} MiB")
            chunks.append(chunk)
    except OSError as e:
        raise CredentialError(f"{shown}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    if not text.strip():
        return {}
    try:
        data = json.loads(
            text, parse_float=_Number, parse_int=_Number, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except ValueError:
        raise fail("not valid JSON") from None
    if not isinstance(data, dict):
        raise fail("not a JSON object")
    return data


class _File:
    """One credentials file's fields, checked as they are read."""

    def __init__(self, path: Path, data: dict[str, Any] | None, target: _Target) -> None:
        self.path = path
        self.exists = data is not None
        self.data: dict[str, Any] = data if data is not None else {}
        self.fail = _Fail(path, target)
        self.target = target

    @classmethod
    def load(cls, path: Path, target: _Target) -> _File:
        return cls(path, _read_json(path, target), target)

    def _object(self, name: str) -> dict[str, Any]:
        value = _field(self.data, name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{name} is not an object")
        return value

    def auths(self) -> dict[str, Any]:
        return self._object("auths")

    def auths_to_edit(self) -> dict[str, Any]:
        """``auths`` (checked: one that is not an object is never overwritten), made
        part of the data if it was missing or null."""
        auths = self.auths()
        self.data[_key_of(self.data, "auths")] = auths
        return auths

    def helpers(self) -> dict[str, Any]:
        return self._object("credHelpers")

    def creds_store(self) -> str:
        return _string(_field(self.data, "credsStore"), "credsStore", self.fail)

    def holds_auth(self) -> bool:
        """Docker's ``ContainsAuth``: a store, helpers or any entry."""
        return bool(self.creds_store() or self.helpers() or self.auths())

    def helper_name(self, value: Any, what: str) -> str:
        """A helper's name, checked: it becomes part of a program's name."""
        name = _string(value, what, self.fail)
        if "/" in name or "\0" in name or not name.isprintable() or name != name.strip():
            raise self.fail(f"{what} {name!r} is not a credential helper's name")
        return name

    def helper_for(self, hosts: Sequence[str]) -> str | None:
        """The ``credHelpers`` entry for the target: by one of ``hosts`` spelled as
        written, else by any key of the same host; ``None`` if there is none (``""``:
        the file itself)."""
        helpers = self.helpers()
        for host in hosts:
            if host in helpers:
                return self.helper_name(helpers[host], f"credHelpers[{host!r}]")
        for key, name in helpers.items():
            if _normal(_hostname(key)) == self.target.normal:
                return self.helper_name(name, f"credHelpers[{key!r}]")
        return None

    def entry(self, key: str) -> Credential:
        """The credential of ``auths[key]``, as Docker decodes it."""
        where = f"auths[{key!r}]"
        entry = self.auths()[key]
        if entry is None:
            return Credential()
        if not isinstance(entry, dict):
            raise self.fail(f"{where} is not an object")
        auth = _string(_field(entry, "auth"), f"{where}.auth", self.fail)
        username = _string(_field(entry, "username"), f"{where}.username", self.fail)
        password = _string(_field(entry, "password"), f"{where}.password", self.fail)
        token = _string(_field(entry, "identitytoken"), f"{where}.identitytoken", self.fail)
        if auth:
            try:  # Go's base64 skips line ends; padding is required
                raw = base64.b64decode(auth.replace("\r", "").replace("\n", ""), validate=True)
            except (binascii.Error, ValueError):
                raise self.fail(f"{where}.auth is not valid base64") from None
            user, colon, secret = raw.decode("utf-8", "surrogateescape").partition(":")
            if not colon or not user:
                raise self.fail(f"{where}.auth does not hold user:password")
            username, password = user, secret.strip("\0")
        return Credential(username, password, token)

    def matches(self, docker: bool) -> Iterator[str]:
        """The keys of ``auths`` for the target, best first (see the module's doc); with
        ``docker``, then any key whose Docker host name is the target's."""
        auths = self.auths()
        target = self.target
        seen: set[str] = set()
        parsed = []
        for key in auths:
            if key in _DOCKER_OAUTH_KEYS:
                continue
            if "://" in key:
                parsed.append((key, _normal(_hostname(key)), ""))
            else:
                host, _, path = key.partition("/")
                parsed.append((key, _normal(host), path.strip("/")))
        for scope in target.scopes():
            spelled = [f"{target.host}/{scope}" if scope else target.host]
            if not scope:
                spelled.append(target.key)
            found = [key for key, host, path in parsed if host == target.normal and path == scope]
            found.sort(key=lambda k: spelled.index(k) if k in spelled else len(spelled))
            for key in found:
                seen.add(key)
                yield key
        if docker:
            for key, _, _ in parsed:
                if key not in seen and _normal(_hostname(key)) == target.normal:
                    yield key

    def find(self, docker: bool) -> Credential:
        """The first credential the target's entries hold (an empty one holds none)."""
        for key in self.matches(docker):
            credential = self.entry(key)
            if not credential.anonymous:
                return credential
        return Credential()


def _dump_string(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u escapes keep the file UTF-8
        return json.dumps(text)
    # As Go writes them: the line and paragraph separators escaped.
    return (
        json.dumps(text, ensure_ascii=False)
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _dumps(value: Any, indent: str = "") -> str:
    """JSON as Docker writes its file (Go's ``MarshalIndent`` with a tab), every value
    kept: numbers as they were written."""
    if isinstance(value, _Number):
        return str.__str__(value)
    if isinstance(value, str):
        return _dump_string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return json.dumps(value)
    inner = indent + "\t"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{_dump_string(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + "\n" + indent + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, mode 0700 whatever the umask."""
    missing = []
    d = directory
    while not os.path.lexists(d):
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)
        except FileExistsError:
            continue
        except OSError as e:
            raise StorageError("creating the directory", _esc(str(d)), e) from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` by ``data`` atomically (through a symlink, to its target), keeping
    an existing file's mode and owner; a new file is 0600 in a 0700 directory."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    _make_private_dirs(path.parent)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise StorageError("reading", _esc(str(path)), e) from None
    mode = stat_mod.S_IMODE(st.st_mode) if st is not None else 0o600

    def open_file(fd: int) -> IO[bytes]:
        os.fchmod(fd, mode)  # exactly, whatever the umask
        if st is not None:
            with contextlib.suppress(OSError):  # as Docker: root editing a user's file
                os.fchown(fd, st.st_uid, st.st_gid)
        return open(fd, "wb", buffering=0, closefd=True)

    payload = _dumps(data).encode("utf-8")
    shown = Path(_esc(str(path)))
    with fsutil.AtomicFile(path, mode=mode, open_file=open_file, clean_beside=True) as f:
        fsutil.write_all(f.fileno(), payload, path=shown)


# -- credential helpers ---------------------------------------------------------------------


class _Answer(NamedTuple):
    status: int
    out: bytes
    err: bytes


def _first_line(data: bytes, hide: Sequence[str] = ()) -> str:
    """The first line of what a helper said, escaped, cut, and without ``hide`` (the
    secret it was given, should it repeat it)."""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            for secret in hide:
                if secret:
                    line = line.replace(secret, "<hidden>")
            line = line.strip()
            return _esc(line[:200] + ("..." if len(line) > 200 else ""))
    return ""


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class _Helper:
    """One ``docker-credential-NAME`` program, as the protocol speaks to it."""

    def __init__(self, name: str, search_path: str, timeout: float, named_in: Path) -> None:
        self.name = name
        self.program = _HELPER_PREFIX + name
        self.search_path = search_path
        self.timeout = timeout
        #: The file that names it, for the message when it is missing.
        self.named_in = named_in

    def _find(self, target: _Target) -> str:
        for directory in self.search_path.split(os.pathsep):
            if not os.path.isabs(directory):
                continue
            candidate = os.path.join(directory, self.program)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CredentialError(
            f"credential helper {_esc(self.program)} (for {_esc(target.given)}, named in "
            f"{_esc(str(self.named_in))}) is not found in PATH"
        )

    def _run(self, action: str, data: bytes, target: _Target) -> _Answer:
        """Run ``PROGRAM action`` with ``data`` on its standard input, within the time
        allowed, reading at most :data:`HELPER_OUTPUT_LIMIT` bytes of its answer."""
        executable = self._find(target)
        about = f"credential helper {_esc(self.program)} ({action} for {_esc(target.given)})"
        try:
            proc = subprocess.Popen(
                [executable, action],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as e:
            raise CredentialError(f"{about}: cannot run it: {e.strerror}") from None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out = bytearray()
        err = bytearray()
        problem = ""
        pending = memoryview(data)
        deadline = time.monotonic() + self.timeout
        sel = selectors.DefaultSelector()
        try:
            os.set_blocking(proc.stdin.fileno(), False)
            if pending:
                sel.register(proc.stdin, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
            sel.register(proc.stdout, selectors.EVENT_READ)
            sel.register(proc.stderr, selectors.EVENT_READ)
            while sel.get_map() and not problem:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    problem = f"no answer within {self.timeout:g} s"
                    break
                exited = proc.poll() is not None
                events = sel.select(0 if exited else min(remaining, 0.1))
                if not events and exited:
                    break  # it is gone; whatever keeps its pipes open is not its answer
                for key, _ in events:
                    stream = key.fileobj
                    if stream is proc.stdin:
                        try:
                            n = os.write(proc.stdin.fileno(), pending)
                        except BlockingIOError:
                            n = 0
                        except BrokenPipeError:  # it did not read it all: its answer says
                            n = len(pending)
                        pending = pending[n:]
                        if not pending:
                            sel.unregister(stream)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(stream)
                    elif stream is proc.stdout:
                        out += chunk
                        if len(out) > HELPER_OUTPUT_LIMIT:
                            problem = f"answered more than {HELPER_OUTPUT_LIMIT} bytes"
                            break
                    else:
                        err += chunk[: max(_STDERR_KEPT - len(err), 0)]
            if not problem:
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    problem = f"no answer within {self.timeout:g} s"
        finally:
            sel.close()
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    stream.close()
        if problem:
            raise CredentialError(f"{about}: {problem}")
        return _Answer(proc.returncode, bytes(out), bytes(err))

    def _failed(
        self, action: str, answer: _Answer, target: _Target, hide: Sequence[str] = ()
    ) -> CredentialError:
        status = (
            f"killed by signal {-answer.status}"
            if answer.status < 0
            else f"exit status {answer.status}"
        )
        said = _first_line(answer.out, hide) or _first_line(answer.err, hide)
        return CredentialError(
            f"credential helper {_esc(self.program)} failed to {action} the credentials "
            f"for {_esc(target.given)}: {status}" + (f": {said}" if said else "")
        )

    @staticmethod
    def _not_found(answer: _Answer) -> bool:
        return answer.out.strip() == _NOT_FOUND.encode()

    def get(self, server: str, target: _Target) -> Credential:
        answer = self._run("get", _utf8(server), target)
        if answer.status != 0:
            if self._not_found(answer):
                return Credential()
            raise self._failed("get", answer, target)
        garbage = CredentialError(
            f"credential helper {_esc(self.program)} answered what is not a credential "
            f"for {_esc(target.given)}"
        )
        text = answer.out.decode("utf-8", "surrogateescape").lstrip()
        try:  # as Go's json.Decoder: the first value, whatever follows it
            value, _ = json.JSONDecoder().raw_decode(text)
        except ValueError:
            raise garbage from None
        if not isinstance(value, dict):
            raise garbage
        username, secret = _field(value, "Username"), _field(value, "Secret")
        if not isinstance(username, str | None) or not isinstance(secret, str | None):
            raise garbage
        if username == _TOKEN_USERNAME:
            return Credential(identity_token=secret or "")
        return Credential(username or "", secret or "")

    def store(self, server: str, credential: Credential, target: _Target) -> None:
        if credential.identity_token:
            username, secret = _TOKEN_USERNAME, credential.identity_token
        else:
            username, secret = credential.username, credential.password
        message = json.dumps(
            {"ServerURL": server, "Username": username, "Secret": secret},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        answer = self._run("store", _utf8(message) + b"\n", target)
        if answer.status != 0:
            raise self._failed("store", answer, target, hide=(secret, message))

    def erase(self, server: str, target: _Target) -> bool:
        answer = self._run("erase", _utf8(server), target)
        if answer.status != 0:
            if self._not_found(answer):
                return False
            raise self._failed("erase", answer, target)
        return True


# -- the store ------------------------------------------------------------------------------


def _home(env: Mapping[str, str]) -> str:
    home = env.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


class CredentialStore:
    """Docker's ``config.json``, the containers auth files and the credential helpers
    they name (see the module's doc for what is read and written where)."""

    #: Seconds a credential helper may take (see :data:`HELPER_TIMEOUT`).
    helper_timeout: float = HELPER_TIMEOUT

    def __init__(
        self,
        docker_config: Path,
        auth_files: Sequence[Path] = (),
        helper_path: str | None = None,
    ) -> None:
        #: Docker's ``config.json``: read last, and the one file written.
        self.docker_config = Path(docker_config)
        #: The containers auth files, read first, in this order; never written.
        self.auth_files = [Path(p) for p in auth_files]
        #: Where ``docker-credential-NAME`` programs are found (a ``PATH``).
        self.helper_path = helper_path if helper_path is not None else os.defpath

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> CredentialStore:
        """The files Docker and podman use, found from the environment ``env`` (see the
        module's doc)."""
        home = _home(env)
        docker_dir = env.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
        auth_files: list[Path] = []
        if env.get("REGISTRY_AUTH_FILE"):
            auth_files.append(Path(env["REGISTRY_AUTH_FILE"]))
        else:
            runtime = env.get("XDG_RUNTIME_DIR")
            auth_files.append(
                Path(runtime, "containers", "auth.json")
                if runtime
                else Path(f"/run/containers/{os.getuid()}/auth.json")
            )
            config_home = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
            auth_files.append(Path(config_home, "containers", "auth.json"))
        return cls(Path(docker_dir, "config.json"), auth_files, env.get("PATH"))

    def _helper(self, name: str, named_in: Path) -> _Helper:
        return _Helper(name, self.helper_path, self.helper_timeout, named_in)

    def _found(self, program: str) -> bool:
        return any(
            os.path.isabs(d)
            and os.path.isfile(os.path.join(d, program))
            and os.access(os.path.join(d, program), os.X_OK)
            for d in self.helper_path.split(os.pathsep)
        )

    def _docker_helper(self, config: _File, detect: bool) -> tuple[str, bool]:
        """The helper ``config.json`` names for the target (``""``: the file itself),
        and whether it was detected rather than named (Docker 28 on Linux picks one for
        a file that holds no credentials)."""
        target = config.target
        named = config.helper_for([target.key, target.host])
        if named is not None:
            return named, False
        store = config.creds_store()
        if store:
            return config.helper_name(store, "credsStore"), False
        if detect and not config.holds_auth():
            default = "pass" if self._found("pass") else "secretservice"
            if self._found(_HELPER_PREFIX + default):
                return default, True
        return "", False

    def get(self, registry: str) -> Credential:
        """The credential for ``registry`` (``host[:port]``, a URL, or ``host/path`` for a
        repository's), ``Credential()`` when there is none."""
        target = _target(registry, allow_path=True)
        for path in self.auth_files:
            auth_file = _File.load(path, target)
            name = auth_file.helper_for([target.podman_host, target.host])
            if name:
                credential = self._helper(name, path).get(target.podman_host, target)
            else:
                credential = auth_file.find(docker=False)
            if not credential.anonymous:
                return credential
        config = _File.load(self.docker_config, target)
        name, _ = self._docker_helper(config, detect=False)
        if name:
            return self._helper(name, config.path).get(target.key, target)
        return config.find(docker=True)

    def where(self, registry: str) -> str:
        """Where :meth:`store` would put ``registry``'s credential: the helper's program
        (``docker-credential-NAME``) or the path of ``config.json``."""
        target = _target(registry, allow_path=False)
        name, _ = self._docker_helper(_File.load(self.docker_config, target), detect=True)
        return _HELPER_PREFIX + name if name else str(self.docker_config)

    @contextlib.contextmanager
    def _editing(self, target: _Target) -> Iterator[_File]:
        """``config.json`` read under a lock on its directory (two logins at once lose
        neither); what the block changes in its data is written when it says so."""
        directory = self.docker_config.parent
        _make_private_dirs(directory)
        lock = fsutil.FileLock(directory, directory=True)
        with lock.exclusive():
            yield _File.load(self.docker_config, target)

    def store(self, registry: str, credential: Credential) -> str:
        """Keep ``credential`` for ``registry`` where Docker would (see the module's doc);
        returns where it went, for a message: the helper's program or the file's path."""
        target = _target(registry, allow_path=False)
        if credential.anonymous:
            raise InvalidInput(f"no credential to keep for {_esc(registry)}")
        for field in credential:
            try:
                _utf8(field)
            except UnicodeEncodeError:
                raise InvalidInput(
                    f"the credential for {_esc(registry)} holds text that cannot be kept"
                ) from None
        name, detected = self._docker_helper(_File.load(self.docker_config, target), True)
        if name:
            self._helper(name, self.docker_config).store(target.key, credential, target)
            entry: dict[str, Any] = {}
        else:
            if ":" in credential.username:
                raise InvalidInput(
                    f"the user name for {_esc(registry)} holds ':', which config.json "
                    "cannot keep (it separates the user from the password)"
                )
            entry = {}
            if credential.username or credential.password:
                user_pass = f"{credential.username}:{credential.password}"
                entry["auth"] = base64.b64encode(_utf8(user_pass)).decode("ascii")
            if credential.identity_token:
                entry["identitytoken"] = credential.identity_token
        with self._editing(target) as config:
            auths = config.auths_to_edit()
            if target.key not in auths or auths[target.key] != entry or detected:
                # As Docker: the entry (empty beside a helper) stays where its key was.
                auths[target.key] = entry
                if detected:
                    config.data[_key_of(config.data, "credsStore")] = name
                _write_json(self.docker_config, config.data)
        return _HELPER_PREFIX + name if name else str(self.docker_config)

    def erase(self, registry: str) -> bool:
        """Forget ``registry``'s credential: in the helper that holds it, and every entry
        of ``config.json`` for its host, whatever its spelling; ``False`` when there was
        nothing to forget. Auth files are left alone (see the module's doc)."""
        target = _target(registry, allow_path=False)
        config = _File.load(self.docker_config, target)
        if not config.exists:
            return False
        name, _ = self._docker_helper(config, detect=False)
        erased = bool(name) and self._helper(name, config.path).erase(target.key, target)
        with self._editing(target) as config:
            auths = config.auths_to_edit()
            keys = [
                k
                for k in auths
                if _normal(_hostname(k)) == target.normal and k not in _DOCKER_OAUTH_KEYS
            ]
            if keys:
                for key in keys:
                    del auths[key]
                _write_json(self.docker_config, config.data)
        return erased or bool(keys)
