"""Authentication to a registry: the ``WWW-Authenticate`` challenge, Basic, and Bearer
tokens from the registry's token server (Docker's token spec and its OAuth2 form).

A :class:`Authenticator` belongs to one registry host. Every request asks it for the
``Authorization`` header of the scopes the operation needs (``repository:NAME:pull``,
``…:pull,push``); the first request goes without, and the 401 it gets names the scheme:

* ``Basic``: the credential is sent with every request from then on;
* ``Bearer realm=…,service=…,scope=…``: a token is asked of the realm for the scopes the
  operation needs together with the challenge's, and kept per set of scopes until
  ``expires_in`` (60 s when the server does not say) is nearly over. A 401 to a request
  that carried a token (``insufficient_scope``, or a token the registry no longer takes)
  asks once more, with every scope the operation and the challenge name; a second 401 is
  the registry's answer.

Tokens are asked with ``GET realm?service=…&scope=…`` and the credential as Basic (or
none: anonymous), or, when the credential is an identity token (an OAuth2 refresh token,
Docker's ``identitytoken``), with ``POST realm`` and ``grant_type=refresh_token``. The
answer's ``token`` or ``access_token`` is the token. ``login`` asks an OAuth2 password
grant (:meth:`Authenticator.login_token`) for a refresh token to store instead of the
password.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable
from typing import Final, NamedTuple

from ..errors import OcistoreError
from .credentials import Credential
from .transport import Transport

__all__ = ["AuthFailed", "Authenticator", "Challenge", "merge_scopes", "parse_challenges"]

#: Seconds a token is taken to live when the token server does not say (Docker's spec).
DEFAULT_TOKEN_LIFETIME: Final = 60
#: The longest a token is kept, whatever the token server says (a day).
MAX_TOKEN_LIFETIME: Final = 86_400
#: A token is asked again this long before it expires.
EXPIRY_MARGIN: Final = 10
CLIENT_ID: Final = "ocistore"
MAX_TOKEN_ANSWER: Final = 1 << 20


class AuthFailed(OcistoreError):
    """The registry or its token server refused the credential, or answered nonsense."""


class Challenge(NamedTuple):
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE: Final = re.compile(
    r"\s*(" + _TOKEN + r")\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|(" + _TOKEN + r"))\s*(,|$)"
)
_SCHEME_RE: Final = re.compile(r"\s*(" + _TOKEN + r")(?:\s+|$)")


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header (RFC 7235: a scheme, then
    ``key=value`` or ``key="quoted"`` parameters; several challenges may follow)."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME_RE.match(header, pos)
        if m is None:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM_RE.match(header, pos)
            if pm is None:
                break
            key = pm.group(1).lower()
            value = pm.group(2)
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else pm.group(3)
            params[key] = value
            pos = pm.end()
            # A comma followed by a scheme and a space starts the next challenge.
            nxt = _SCHEME_RE.match(header, pos)
            if nxt is not None and not _PARAM_RE.match(header, pos):
                break
        out.append(Challenge(scheme, params))
        while pos < len(header) and header[pos] in ", ":
            pos += 1
    return out


def merge_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Scopes with the actions of one resource together (``repository:a:pull`` and
    ``repository:a:pull,push`` are ``repository:a:pull,push``), as one token asks them."""
    return frozenset(
        f"{resource}:{','.join(sorted(acts))}" if acts else resource
        for resource, acts in _actions(scopes).items()
    )


def _actions(scopes: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for scope in scopes:
        resource, sep, acts = scope.rpartition(":")
        if not sep or not resource:
            out.setdefault(scope, set())
        else:
            out.setdefault(resource, set()).update(a for a in acts.split(",") if a)
    return out


def covers(have: Iterable[str], want: Iterable[str]) -> bool:
    """Whether a token for the scopes ``have`` serves an operation needing ``want``:
    every resource wanted, with at least the actions wanted."""
    held = _actions(have)
    return all(
        resource in held and acts <= held[resource] for resource, acts in _actions(want).items()
    )


def _chosen(challenges: list[Challenge]) -> Challenge | None:
    """Bearer when offered, else Basic; None for a scheme ocistore does not speak."""
    return next((c for c in challenges if c.scheme == "bearer"), None) or next(
        (c for c in challenges if c.scheme == "basic"), None
    )


def _basic(credential: Credential) -> str:
    raw = f"{credential.username}:{credential.password}".encode("utf-8", "surrogateescape")
    return "Basic " + base64.b64encode(raw).decode("ascii")


class _Token(NamedTuple):
    value: str
    expires: float


class Authenticator:
    """The ``Authorization`` of one registry's requests, shared by a command's threads."""

    def __init__(self, host: str, credential: Credential, transport: Transport) -> None:
        self.host = host
        self.credential = credential
        self.transport = transport
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[frozenset[str], _Token] = {}
        self._fetch_locks: dict[frozenset[str], threading.Lock] = {}

    def _fetching(self, key: frozenset[str]) -> threading.Lock:
        with self._lock:
            return self._fetch_locks.setdefault(key, threading.Lock())

    def header(self, scopes: Iterable[str]) -> dict[str, str]:
        """The headers to send for an operation needing ``scopes``: none before the
        registry has asked for anything."""
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            if self.credential.username:
                return {"Authorization": _basic(self.credential)}
            return {}
        key = merge_scopes(scopes)
        with self._lock:
            token = self._tokens.get(key)
            if token is None:
                # A token for more scopes (or more actions) serves fewer.
                for have, t in self._tokens.items():
                    if covers(have, key) and t.expires > time.monotonic():
                        token = t
                        break
        if token is None or token.expires <= time.monotonic():
            with self._fetching(key):
                # Another thread may have fetched it meanwhile.
                with self._lock:
                    token = self._tokens.get(key)
                if token is None or token.expires <= time.monotonic():
                    token = self._fetch(challenge, key)
        return {"Authorization": f"Bearer {token.value}"} if token.value else {}

    def learn(self, header: str) -> None:
        """The challenge of ``GET /v2/``: the scheme (and token realm) every request will
        need, known before any is sent."""
        chosen = _chosen(parse_challenges(header))
        if chosen is not None:
            with self._lock:
                if self._challenge is None:
                    self._challenge = chosen

    def challenged(self, header: str, scopes: Iterable[str], had_auth: bool) -> bool:
        """A 401 with ``WWW-Authenticate: header`` answered a request for ``scopes``:
        whether asking again may help (a new scheme, or a token with more scopes)."""
        chosen = _chosen(parse_challenges(header))
        if chosen is None:
            return False
        with self._lock:
            before = self._challenge
            self._challenge = chosen
        if chosen.scheme == "basic":
            return (before is None or before.scheme != "basic") and bool(self.credential.username)
        wanted = set(scopes)
        if chosen.params.get("scope"):
            wanted.update(chosen.params["scope"].split(" "))
        key = merge_scopes(wanted)
        if had_auth:
            # The tokens this one grows out of go: the next request finds the new one.
            with self._lock:
                for k in [k for k in self._tokens if covers(key, k)]:
                    del self._tokens[k]
        self._fetch(chosen, key)
        return True

    # -- tokens --------------------------------------------------------------------------

    def _fetch(self, challenge: Challenge, scopes: frozenset[str]) -> _Token:
        realm = challenge.params.get("realm", "")
        if not realm:
            raise AuthFailed(f"{self.host}: the registry asks for a token but names no realm")
        service = challenge.params.get("service", "")
        cred = self.credential
        ordered = sorted(scopes)
        if cred.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": cred.identity_token,
                "service": service,
                "client_id": CLIENT_ID,
            }
            body = urllib.parse.urlencode(form) + "".join(
                "&scope=" + urllib.parse.quote(s, safe="") for s in ordered
            )
            response = self.transport.request(
                "POST",
                realm,
                {"Content-Type": "application/x-www-form-urlencoded"},
                body.encode(),
            )
        else:
            query = [("service", service)] if service else []
            query += [("scope", s) for s in ordered]
            sep = "&" if "?" in realm else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            headers = {"Authorization": _basic(cred)} if cred.username else {}
            auth_host = urllib.parse.urlsplit(realm).netloc
            response = self.transport.request("GET", url, headers, auth_host=auth_host)
        with response:
            data = response.read_limited(MAX_TOKEN_ANSWER)
        where = f"{self.host}: token server {urllib.parse.urlsplit(realm).netloc}"
        if response.status in (401, 403) or (cred.identity_token and response.status == 400):
            who = f"as {cred.username!r}" if cred.username else "anonymously"
            raise AuthFailed(
                f"{where}: refused {who} ({response.status}{_error_text(data)})"
                if not cred.identity_token
                else f"{where}: the identity token was refused ({response.status}"
                f"{_error_text(data)}); log in again"
            )
        if response.status != 200:
            raise AuthFailed(f"{where}: answered {response.status}{_error_text(data)}")
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthFailed(f"{where}: the answer is not a JSON object")
        value = answer.get("token") or answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthFailed(f"{where}: the answer has no token")
        lifetime = answer.get("expires_in")
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        lifetime = min(lifetime, MAX_TOKEN_LIFETIME)
        token = _Token(value, time.monotonic() + max(lifetime - EXPIRY_MARGIN, lifetime / 2))
        with self._lock:
            self._tokens[scopes] = token
        return token

    def login_token(self, scopes: Iterable[str] = ()) -> str:
        """For ``login`` to a token registry: an OAuth2 password grant
        (``access_type=offline``) whose refresh token, if the server gives one, may be
        stored instead of the password. Empty when the server does not do OAuth2."""
        with self._lock:
            challenge = self._challenge
        if challenge is None or challenge.scheme != "bearer" or not self.credential.username:
            return ""
        realm = challenge.params.get("realm", "")
        form = [
            ("grant_type", "password"),
            ("username", self.credential.username),
            ("password", self.credential.password),
            ("service", challenge.params.get("service", "")),
            ("client_id", CLIENT_ID),
            ("access_type", "offline"),
        ] + [("scope", s) for s in scopes]
        response = self.transport.request(
            "POST",
            realm,
            {"Content-Type": "application/x-www-form-urlencoded"},
            urllib.parse.urlencode(form).encode(),
        )
        with response:
            data = response.read_limited(MAX_TOKEN_ANSWER)
        if response.status != 200:
            return ""
        try:
            answer = json.loads(data)
        except ValueError:
            return ""
        refresh = answer.get("refresh_token") if isinstance(answer, dict) else None
        return refresh if isinstance(refresh, str) else ""


def _error_text(data: bytes) -> str:
    """The registry's or token server's own error, briefly, for a message."""
    try:
        doc = json.loads(data)
    except ValueError:
        text = data[:200].decode("utf-8", "replace").strip()
        return f": {text}" if text and "<" not in text[:1] else ""
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
        for key in ("error_description", "error", "details", "message"):
            if isinstance(doc.get(key), str):
                return f": {doc[key]}"
    return ""
