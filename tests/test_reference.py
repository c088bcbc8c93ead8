"""Docker's reference grammar and normalization (cases from distribution/reference's tests)."""

from __future__ import annotations

import pytest

from ocistore.errors import InvalidInput
from ocistore.spec.digest import Digest
from ocistore.spec.reference import (
    Reference,
    is_identifier,
    looks_like_id,
    parse,
    parse_any,
    parse_tagged,
    parse_trusted,
    sort_key,
)

F64 = "f" * 64
SHA_F = f"sha256:{F64}"
HEX = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"


# input, domain, path, tag, digest (after normalization)
VALID = [
    ("test_com", "docker.io", "library/test_com", None, None),
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    (f"test:5000/repo@{SHA_F}", "test:5000", "repo", None, SHA_F),
    (f"test:5000/repo:tag@{SHA_F}", "test:5000", "repo", "tag", SHA_F),
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io",
        "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", None, None),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    (
        "xn--7o8h.com/myimage:xn--7o8h.com@sha512:" + "f" * 128,
        "xn--7o8h.com",
        "myimage",
        "xn--7o8h.com",
        "sha512:" + "f" * 128,
    ),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", None, None),
    ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", None, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    (f"[2001:db8::1]:5000/repo@{SHA_F}", "[2001:db8::1]:5000", "repo", None, SHA_F),
    (f"[2001:db8::1]:5000/repo:tag@{SHA_F}", "[2001:db8::1]:5000", "repo", "tag", SHA_F),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", None, None),
    # normalization of Docker Hub names
    ("busybox", "docker.io", "library/busybox", None, None),
    ("docker.io/busybox", "docker.io", "library/busybox", None, None),
    ("docker.io/library/busybox", "docker.io", "library/busybox", None, None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", None, None),
    ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", None, None),
    ("test_com/foo", "docker.io", "test_com/foo", None, None),
    ("docker/migrator", "docker.io", "docker/migrator", None, None),
    ("test.com:8080/foo", "test.com:8080", "foo", None, None),
    ("test-com:8080/foo", "test-com:8080", "foo", None, None),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", None, None),
    ("localhost/foo", "localhost", "foo", None, None),
    ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None),
    # a bare "localhost" is a name on Docker Hub, not a domain (as in Docker)
    ("localhost", "docker.io", "library/localhost", None, None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    # an upper-case first element is taken for a domain
    ("Foo/bar", "Foo", "bar", None, None),
    ("FOO/bar", "FOO", "bar", None, None),
    ("dock__er/docker", "docker.io", "dock__er/docker", None, None),
    ("docker---rules/docker", "docker.io", "docker---rules/docker", None, None),
    ("d/docker", "docker.io", "d/docker", None, None),
    ("jess/t", "docker.io", "jess/t", None, None),
    (f"docker.io/{HEX}", "docker.io", f"library/{HEX}", None, None),
    (HEX[:-1], "docker.io", f"library/{HEX[:-1]}", None, None),
    ("dbcc1", "docker.io", "library/dbcc1", None, None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), VALID)
def test_parse_valid(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    if digest is not None:
        assert isinstance(ref.digest, Digest)
    # The full and familiar forms both parse back to the same reference (except a
    # familiar form that is a bare 64-hex name, which reads as an ID, as in Docker).
    assert parse(str(ref)) == ref
    if ref.familiar() != HEX:
        assert parse(ref.familiar()) == ref
    assert hash(parse(str(ref))) == hash(ref)


INVALID = [
    "",
    ":justtag",
    f"@{SHA_F}",
    "repo@sha256:" + "f" * 34,
    f"validname@invaliddigest:{F64}",
    "repo@sha384:" + "f" * 96,  # valid for go-digest, not supported by ocistore
    f"repo@sha256:{'F' * 64}",  # digests are lowercase hex
    "Uppercase:tag",
    "test:5000/Uppercase/lowercase:tag",
    "a/" * 128 + "a:tag",
    "aa/asdf$$^/aa",
    "[2001:db8::1]",
    "[2001:db8::1]:5000",
    "[2001:db8::1]:tag",
    "[fe80::1%eth0]:5000/repo",
    "[fe80::1%@invalidzone]:5000/repo",
    "https://github.com/docker/docker",
    "docker/Docker",
    "-docker",
    "-docker/docker",
    "-docker.io/docker/docker",
    "docker///docker",
    "docker.io/docker/Docker",
    "docker.io/docker///docker",
    "[fc00::1]",
    "[fc00::1]:5000",
    "fc00::1:5000/debian",
    "[fe80::1%eth0]:5000/debian",
    "[2001:db8:3:4::192.0.2.33]:5000/debian",
    HEX,
    "docker-/docker",
    "-docker-/docker",
    "____/____",
    "_docker/_docker",
    "dock..er/docker",
    "dock_.er/docker",
    "dock-.er/docker",
    "docker/",
    "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_" * 4 + "/docker",
    "busybox:" + "a" * 129,
    "busybox:-tag",
    "busybox:.tag",
    "busybox:ta g",
    "busybox:tag\n",
    "busybox\n",
    "busybox:t@g",
    "a" * 250,  # library/ + 250 characters is over 255
]


@pytest.mark.parametrize("text", INVALID)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(("invalid reference format", "invalid repository name"))


def test_error_messages_mirror_docker() -> None:
    with pytest.raises(InvalidInput, match=r"^invalid reference format: \"foo!\"$"):
        parse("foo!")
    with pytest.raises(
        InvalidInput,
        match=r"^invalid reference format: repository name \(library/Busybox\) must be lowercase$",
    ):
        parse("Busybox")
    with pytest.raises(
        InvalidInput,
        match=r"repository name \(Uppercase/lowercase\) must be lowercase",
    ):
        parse("test:5000/Uppercase/lowercase:tag")
    with pytest.raises(
        InvalidInput,
        match=rf"^invalid repository name \({HEX}\), cannot specify 64-byte hexadecimal strings$",
    ):
        parse(HEX)
    with pytest.raises(InvalidInput, match="must not be more than 255 characters"):
        parse("a/" * 128 + "a:tag")
    with pytest.raises(InvalidInput, match="tag must not be more than 128 characters"):
        parse("busybox:" + "a" * 129)
    with pytest.raises(InvalidInput, match=r"invalid tag \"t!g\""):
        parse("busybox:t!g")
    with pytest.raises(InvalidInput, match="sha256 needs 64 lowercase hex characters"):
        parse("repo@sha256:" + "f" * 34)
    with pytest.raises(InvalidInput, match="unsupported algorithm"):
        parse(f"validname@invaliddigest:{F64}")


def test_longest_tag_is_128() -> None:
    assert parse("busybox:" + "a" * 128).tag == "a" * 128


# familiar name, full name, other spellings (TestParseRepositoryInfo)
REPOSITORY_INFO = [
    ("fooo/bar", "docker.io/fooo/bar", ["index.docker.io/fooo/bar"]),
    ("ubuntu", "docker.io/library/ubuntu", ["library/ubuntu"]),
    ("nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu", []),
    ("other/library", "docker.io/other/library", []),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase", []),
    ("127.0.0.1:8000/privatebase", "127.0.0.1:8000/privatebase", []),
    ("example.com/private/moonbase", "example.com/private/moonbase", []),
    ("example.com:8000/privatebasee", "example.com:8000/privatebasee", []),
    (
        "ubuntu-12.04-base",
        "docker.io/library/ubuntu-12.04-base",
        ["index.docker.io/library/ubuntu-12.04-base"],
    ),
    ("foo", "docker.io/library/foo", ["docker.io/foo"]),
    ("library/foo/bar", "docker.io/library/foo/bar", []),
    ("store/foo/bar", "docker.io/store/foo/bar", []),
    ("Foo/bar", "Foo/bar", []),
    ("FOO/bar", "FOO/bar", []),
]


@pytest.mark.parametrize(("familiar", "full", "others"), REPOSITORY_INFO)
def test_familiar_and_full_names(familiar: str, full: str, others: list[str]) -> None:
    for text in [familiar, full, *others]:
        ref = parse(text)
        assert ref.familiar_name == familiar
        assert ref.name == full
        assert str(ref) == full
        assert ref.familiar() == familiar


def test_forms() -> None:
    ref = parse("busybox")
    assert ref.name == "docker.io/library/busybox"
    assert ref.familiar_name == "busybox"
    assert str(ref) == "docker.io/library/busybox"
    assert ref.is_name_only
    tagged = parse_tagged("busybox")
    assert str(tagged) == "docker.io/library/busybox:latest"
    assert tagged.familiar() == "busybox:latest"
    assert repr(tagged) == "Reference('docker.io/library/busybox:latest')"

    app = parse_tagged("myregistry:5000/team/app")
    assert app.familiar_name == "myregistry:5000/team/app"
    assert app.familiar() == "myregistry:5000/team/app:latest"
    assert parse_tagged("team/app:v2").familiar() == "team/app:v2"

    both = parse(f"busybox:latest@{SHA_F}")
    assert str(both) == f"docker.io/library/busybox:latest@{SHA_F}"
    assert both.familiar() == f"busybox:latest@{SHA_F}"
    assert parse_tagged(f"busybox@{SHA_F}").tag is None
    assert parse_tagged(f"busybox@{SHA_F}").familiar() == f"busybox@{SHA_F}"
    assert both.digest_only().familiar() == f"busybox@{SHA_F}"
    assert both.name_only() == parse("busybox")


def test_with_tag_and_digest() -> None:
    base = parse("test.com:8000/foo")
    assert str(base.with_tag("TAG5")) == "test.com:8000/foo:TAG5"
    assert str(base.with_digest(SHA_F).with_tag("t")) == f"test.com:8000/foo:t@{SHA_F}"
    assert str(base.with_tag("t").with_digest(Digest(SHA_F))) == f"test.com:8000/foo:t@{SHA_F}"
    with pytest.raises(InvalidInput, match="invalid tag format"):
        base.with_tag("-foo")
    with pytest.raises(InvalidInput, match="invalid digest"):
        base.with_digest("foo")


def test_reference_validates_its_parts() -> None:
    assert Reference("docker.io", "library/busybox", "latest") == parse_tagged("busybox")
    with pytest.raises(InvalidInput):
        Reference("docker.io", "Library/busybox")
    with pytest.raises(InvalidInput):
        Reference("", "test.com/foo")  # the domain would not be empty
    with pytest.raises(InvalidInput):
        Reference("docker.io", "busybox", "bad tag")
    with pytest.raises(InvalidInput):
        Reference("docker.io", "busybox", None, "sha256:abc")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        parse("busybox").tag = "x"  # type: ignore[misc]


def test_sorting_by_familiar_string() -> None:
    refs = [parse_tagged(s) for s in ["zeta", "alpha:2", "localhost/x", "alpha:10", "team/b"]]
    assert [r.familiar() for r in sorted(refs, key=sort_key)] == [
        "alpha:10",
        "alpha:2",
        "localhost/x:latest",
        "team/b:latest",
        "zeta:latest",
    ]


def test_parse_any() -> None:
    assert parse_any(HEX) == Digest(f"sha256:{HEX}")
    assert parse_any(f"sha256:{HEX}") == Digest(f"sha256:{HEX}")
    assert parse_any("redis") == parse("docker.io/library/redis")
    assert parse_any(HEX[:-1]) == parse(f"docker.io/library/{HEX[:-1]}")
    assert parse_any("dbcc1") == parse("docker.io/library/dbcc1")


def test_id_helpers() -> None:
    assert is_identifier(HEX)
    assert not is_identifier(f"sha256:{HEX}")
    assert not is_identifier(HEX.upper())
    assert not is_identifier(HEX + "0")
    assert parse(f"docker.io/{HEX}").familiar() == HEX
    for prefix in ["d", "dbcc1", HEX[:12], HEX, f"sha256:{HEX[:5]}", f"sha256:{HEX}"]:
        assert looks_like_id(prefix), prefix
    for name in ["", "busybox", "sha256:", "DBCC", HEX + "0", "dbcc:latest", "sha256:xyz"]:
        assert not looks_like_id(name), name


@pytest.mark.parametrize(
    "text",
    [
        "busybox",
        "busybox:latest",
        "library/busybox:1.36",
        "docker.io/library/busybox:latest",
        "index.docker.io/team/app:v1",
        "localhost/app:1",
        "localhost:5000/team/app:v1",
        "myregistry:5000/team/app",
        "Foo/bar:baz",
        "example.com/a/b/c:x.y-z_1",
        "busybox@sha256:" + "a" * 64,
        "quay.io/team/app@sha256:" + "0" * 64,
    ],
)
def test_parse_trusted_agrees_with_parse(text: str) -> None:
    """The store reads its own repositories.json with the fast path: it must give the same
    references as the grammar for every familiar form the store writes."""
    ref = parse(text).digest_only().tagged_or_default()
    fast = parse_trusted(ref.familiar())
    assert fast == ref
    assert fast is not None and fast.familiar() == ref.familiar()


@pytest.mark.parametrize("text", ["", "a b", "UPPER:tag", "x@md5:00", "app:", "app:-x"])
def test_parse_trusted_declines_what_it_does_not_know(text: str) -> None:
    assert parse_trusted(text) is None
