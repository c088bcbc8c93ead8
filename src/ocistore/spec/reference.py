"""Image references: Docker's grammar (``distribution/reference``) and its normalization.

The grammar, as ``docker tag`` and ``docker pull`` accept it::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain "/"] remote-name
    domain           := host [":" port-number]
    host             := domain-name | "[" IPv6address "]"
    domain-name      := domain-component ["." domain-component]*
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    port-number      := /[0-9]+/
    remote-name      := path-component ["/" path-component]*
    path-component   := /[a-z0-9]+/ [separator /[a-z0-9]+/]*
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" hex      ; 32 or more hex characters

:func:`parse` is ``ParseNormalizedNamed``: a name without a domain is on Docker Hub
(``busybox`` → ``docker.io/library/busybox``, ``docker.io/busybox`` →
``docker.io/library/busybox``, ``index.docker.io`` → ``docker.io``); the first path
element is a domain when it is ``localhost``, contains a ``.`` or a ``:``, or has an
upper-case letter. :func:`parse_tagged` adds the ``latest`` tag when a reference has
neither tag nor digest (``TagNameOnly``). The familiar form drops ``docker.io/`` and
``library/`` again (``busybox:latest``).

Digests inside references are checked by :class:`~ocistore.spec.digest.Digest`: ``sha256``
and ``sha512``, lowercase hex of the right length (go-digest also knows ``sha384``).

Every error is an :class:`~ocistore.errors.InvalidInput` whose one-line message starts
with Docker's own text (``invalid reference format…``, ``invalid repository name (…),
cannot specify 64-byte hexadecimal strings``) and names the input.
"""

from __future__ import annotations

import json
import re
from typing import Final

from ..errors import InvalidInput
from .digest import Digest

#: Docker Hub, as normalized names spell it.
DEFAULT_DOMAIN: Final = "docker.io"
#: The legacy name of Docker Hub ("the Docker Index"), normalized to DEFAULT_DOMAIN.
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
#: The namespace of official images on Docker Hub.
OFFICIAL_REPO_PREFIX: Final = "library/"
#: The tag a name without tag or digest gets.
DEFAULT_TAG: Final = "latest"
#: The longest repository path (the name without its domain).
NAME_TOTAL_LENGTH_MAX: Final = 255
#: The longest tag.
TAG_LENGTH_MAX: Final = 128

# The grammar, piece by piece (regexp.go). Python's \w is Unicode-aware, Go's is ASCII,
# hence the explicit classes. Matching always uses fullmatch (Python's $ also matches
# before a trailing newline).
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_HOST = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")"
_DOMAIN_AND_PORT = _HOST + _OPTIONAL_PORT
_PATH_COMPONENT = _ALPHANUMERIC + r"(?:" + _SEPARATOR + _ALPHANUMERIC + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_NAME = r"(?:" + _DOMAIN_AND_PORT + r"/)?" + _REMOTE_NAME

_REFERENCE_RE: Final = re.compile(r"(" + _NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?")
_ANCHORED_NAME_RE: Final = re.compile(r"(?:(" + _DOMAIN_AND_PORT + r")/)?(" + _REMOTE_NAME + r")")
_TAG_RE: Final = re.compile(_TAG)
_DIGEST_RE: Final = re.compile(_DIGEST)
_IDENTIFIER_RE: Final = re.compile(r"[a-f0-9]{64}")
_ID_PREFIX_RE: Final = re.compile(r"(?:sha256:)?[a-f0-9]{1,64}")


def _quote(s: str) -> str:
    """Quote an input for an error message, on one line, the way Go's %q would."""
    return json.dumps(s, ensure_ascii=False)


def _invalid(s: str, detail: str | None = None) -> InvalidInput:
    message = f"invalid reference format: {_quote(s)}"
    if detail:
        message += f": {detail}"
    return InvalidInput(message)


class Reference:
    """A named reference: ``domain/path``, with an optional tag and an optional digest.

    Equality and hashing are over the normalized parts, so ``parse("busybox")`` and
    ``parse("docker.io/library/busybox")`` are the same key. ``domain`` is empty only for a
    reference built by hand without one (``parse`` always fills it in). Immutable.
    """

    __slots__ = ("digest", "domain", "path", "tag")

    domain: str
    path: str
    tag: str | None
    digest: Digest | None

    def __init__(
        self, domain: str, path: str, tag: str | None = None, digest: Digest | str | None = None
    ) -> None:
        name = f"{domain}/{path}" if domain else path
        m = _ANCHORED_NAME_RE.fullmatch(name)
        if m is None or (m.group(1) or "") != domain or m.group(2) != path:
            raise InvalidInput(f"invalid reference format: invalid repository name {_quote(name)}")
        if len(path) > NAME_TOTAL_LENGTH_MAX:
            raise InvalidInput(
                f"invalid reference format: repository name must not be more than "
                f"{NAME_TOTAL_LENGTH_MAX} characters: {_quote(name)}"
            )
        if tag is not None and not _TAG_RE.fullmatch(tag):
            raise InvalidInput(f"invalid tag format: {_quote(tag)}")
        if digest is not None and not isinstance(digest, Digest):
            digest = Digest(digest)
        set_ = object.__setattr__
        set_(self, "domain", domain)
        set_(self, "path", path)
        set_(self, "tag", tag)
        set_(self, "digest", digest)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Reference is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Reference is immutable: cannot delete {name}")

    def _key(self) -> tuple[str, str, str | None, Digest | None]:
        return (self.domain, self.path, self.tag, self.digest)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Reference:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[type[Reference], tuple[str, str, str | None, Digest | None]]:
        return (Reference, self._key())

    # -- names -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The full repository name: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def familiar_name(self) -> str:
        """The name as Docker shows it: ``busybox``, ``team/app``, ``localhost:5000/app``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_REPO_PREFIX):
            rest = self.path[len(OFFICIAL_REPO_PREFIX) :]
            if "/" not in rest:
                return rest
        return self.path

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        """The full form: ``docker.io/library/busybox:latest``."""
        return self.name + self._suffix()

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def familiar(self) -> str:
        """The familiar form: ``busybox:latest``, ``busybox@sha256:…``."""
        return self.familiar_name + self._suffix()

    # -- kinds -------------------------------------------------------------------------

    @property
    def is_name_only(self) -> bool:
        """Neither tag nor digest."""
        return self.tag is None and self.digest is None

    # -- derived references --------------------------------------------------------------

    def with_tag(self, tag: str) -> Reference:
        """The same name (and digest, if any) with ``tag``; ``InvalidInput`` for a bad tag."""
        if not _TAG_RE.fullmatch(tag):
            raise InvalidInput(f"invalid tag format: {_quote(tag)}")
        return Reference(self.domain, self.path, tag, self.digest)

    def with_digest(self, digest: Digest | str) -> Reference:
        """The same name (and tag, if any) with ``digest``; ``InvalidInput`` for a bad one."""
        return Reference(self.domain, self.path, self.tag, Digest(digest))

    def name_only(self) -> Reference:
        """The repository alone, without tag or digest (``TrimNamed``)."""
        return Reference(self.domain, self.path)

    def tagged_or_default(self) -> Reference:
        """This reference, with the ``latest`` tag when it has neither tag nor digest."""
        return self.with_tag(DEFAULT_TAG) if self.is_name_only else self

    def digest_only(self) -> Reference:
        """Drop the tag of a reference that also has a digest (the digest wins)."""
        if self.digest is not None and self.tag is not None:
            return Reference(self.domain, self.path, None, self.digest)
        return self


def sort_key(ref: Reference) -> str:
    """How Docker sorts references for display: by their familiar string."""
    return ref.familiar()


# -- parsing -----------------------------------------------------------------------------


def _split_docker_domain(name: str) -> tuple[str, str]:
    """Split a familiar name into domain and remainder, defaulting to Docker Hub."""
    maybe_domain, sep, maybe_remote = name.partition("/")
    if not sep:
        return DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + name
    if maybe_domain == "localhost":
        domain, remote = maybe_domain, maybe_remote
    elif maybe_domain == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, maybe_remote
    elif "." in maybe_domain or ":" in maybe_domain or maybe_domain.lower() != maybe_domain:
        domain, remote = maybe_domain, maybe_remote
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def _parse_strict(s: str, original: str) -> Reference:
    """distribution's ``Parse`` of an already normalized string; errors name ``original``."""
    if not s:
        raise _invalid(original, "repository name must have at least one component")
    m = _REFERENCE_RE.fullmatch(s)
    if m is None:
        lowered = s.lower()
        if lowered != s and _REFERENCE_RE.fullmatch(lowered):
            raise _invalid(original, "repository name must be lowercase")
        raise _invalid(original, _diagnose(original))
    name, tag, digest_s = m.group(1), m.group(2), m.group(3)
    nm = _ANCHORED_NAME_RE.fullmatch(name)
    if nm is not None:
        domain, path = nm.group(1) or "", nm.group(2)
    else:  # pragma: no cover - the reference regexp already matched a name
        domain, path = "", name
    if len(path) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(
            original, f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    digest: Digest | None = None
    if digest_s is not None:
        try:
            digest = Digest(digest_s)
        except InvalidInput as e:
            raise _invalid(original, str(e)) from None
    return Reference(domain, path, tag, digest)


def _diagnose(s: str) -> str | None:
    """A hint for input the grammar rejects: which part looks wrong, when that is clear."""
    rest, at, digest_s = s.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest_s):
        return f"invalid digest {_quote(digest_s)}"
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        tag = rest[colon + 1 :]
        name = rest[:colon]
        if _ANCHORED_NAME_RE.fullmatch(name) and not _TAG_RE.fullmatch(tag):
            if len(tag) > TAG_LENGTH_MAX:
                return f"tag must not be more than {TAG_LENGTH_MAX} characters"
            return f"invalid tag {_quote(tag)}"
    return None


def parse(s: str) -> Reference:
    """Parse a reference as Docker does (``ParseNormalizedNamed``), without a default tag.

    ``busybox`` → ``docker.io/library/busybox``; ``localhost:5000/app:1`` keeps its
    domain. A tag and a digest may both be present.
    """
    if _IDENTIFIER_RE.fullmatch(s):
        raise InvalidInput(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(s)
    colon = remainder.find(":")
    remote = remainder[:colon] if colon >= 0 else remainder
    if remote.lower() != remote:
        raise InvalidInput(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    return _parse_strict(f"{domain}/{remainder}", s)


#: The characters of the familiar references this store writes (names, tags, digests):
#: a string of only these is split without the grammar's regular expressions.
FAMILIAR_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@"
)


def split_familiar(s: str) -> tuple[str, str | None, str | None]:
    """A familiar reference as the store lists it, split without checking it into
    repository, tag and digest: ``busybox:1`` gives ``("busybox", "1", None)``,
    ``app@sha256:…`` gives ``("app", None, "sha256:…")``."""
    name, at, digest = s.partition("@")
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :], digest if at else None
    return name, None, digest if at else None


def parse_trusted(s: str) -> Reference | None:
    """A reference the store wrote itself (a familiar string from ``repositories.json``),
    split without the grammar's regular expressions; ``None`` if it is not of the simple
    shape this store writes, so the caller can fall back to :func:`parse`.

    Opening a store with 10,000 tags parses 10,000 of these, every command.
    """
    if not s or not FAMILIAR_CHARS.issuperset(s) or len(s) > NAME_TOTAL_LENGTH_MAX + 200:
        return None
    rest, at, digest_s = s.partition("@")
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        tag = rest[colon + 1 :]
        rest = rest[:colon]
        if not tag or tag[0] in ".-" or ":" in tag:
            return None
    if not rest:
        return None
    domain, path = _split_docker_domain(rest)
    if not path or path.lower() != path or "//" in path or path.startswith("/"):
        return None
    digest: Digest | None = None
    if at:
        if len(digest_s) != 71 or not digest_s.startswith("sha256:"):
            return None
        digest = Digest.trusted(digest_s)
    ref = object.__new__(Reference)
    object.__setattr__(ref, "domain", domain)
    object.__setattr__(ref, "path", path)
    object.__setattr__(ref, "tag", tag)
    object.__setattr__(ref, "digest", digest)
    return ref


def parse_tagged(s: str) -> Reference:
    """:func:`parse`, then add the ``latest`` tag when there is neither tag nor digest."""
    return parse(s).tagged_or_default()


def parse_any(s: str) -> Reference | Digest:
    """``ParseAnyReference``: a 64-hex identifier or a digest gives a :class:`Digest`.

    Anything else is parsed as a named reference (:func:`parse`).
    """
    if _IDENTIFIER_RE.fullmatch(s):
        return Digest(f"sha256:{s}")
    if Digest.is_valid(s):
        return Digest(s)
    return parse(s)


# -- telling IDs from names ----------------------------------------------------------------


def is_identifier(s: str) -> bool:
    """Exactly 64 lowercase hex characters (distribution's ``IdentifierRegexp``)."""
    return _IDENTIFIER_RE.fullmatch(s) is not None


def looks_like_id(s: str) -> bool:
    """Whether ``s`` could be an image ID or a prefix of one: ``[sha256:]`` + 1-64 hex.

    Short hex strings (``abc``, ``dbcc1``) are also valid repository names. Docker looks
    such a string up as a reference first and as an ID prefix only when no reference
    matched; a command line should do the same.
    """
    return _ID_PREFIX_RE.fullmatch(s) is not None


# -- what may be a tag or a digest reference ---------------------------------------------

#: Repository names refused for tags and digest references: ``sha256:<hex>`` would be
#: ambiguous between a tag and an image ID.
RESERVED_NAMES: Final = frozenset({"sha256", "sha512"})


def is_tag(s: str) -> bool:
    """Whether ``s`` is a tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)."""
    return _TAG_RE.fullmatch(s) is not None


def normalize(ref: Reference) -> Reference:
    """The canonical form of a reference built by hand (``docker.io/foo`` →
    ``docker.io/library/foo``)."""
    return parse(str(ref))


def check_tag(ref: Reference) -> None:
    """Refuse a reference that cannot be a tag (moby's ``AddTag`` rules): one with a
    digest, or in a reserved repository. Lets a caller check before doing work it would
    otherwise have to undo."""
    if ref.digest is not None:
        raise InvalidInput(f"refusing to create a tag with a digest reference: {ref.familiar()}")
    if ref.familiar_name in RESERVED_NAMES:
        raise InvalidInput(
            "refusing to create an ambiguous tag using digest algorithm as name: "
            f"{normalize(ref).tagged_or_default().familiar()}"
        )


def check_digest_reference(ref: Reference) -> None:
    """Refuse a reference that cannot be a digest reference (moby's ``AddDigest``
    rules): one without a digest, with a tag, or in a reserved repository."""
    if ref.digest is None:
        raise InvalidInput(
            f"refusing to create a digest reference without a digest: {ref.familiar()}"
        )
    if ref.tag is not None:
        raise InvalidInput(f"refusing to create a digest reference with a tag: {ref.familiar()}")
    if ref.familiar_name in RESERVED_NAMES:
        raise InvalidInput(
            f"refusing to create an ambiguous tag using digest algorithm as name: {ref.familiar()}"
        )
