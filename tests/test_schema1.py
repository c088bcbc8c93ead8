"""Docker image manifests schema 1 (spec.legacy.schema1): parsing as Docker 20.10's pull
parses them, each refusal one line naming the field, and the config Docker makes, byte
for byte (vectors recorded from Docker 20.10, and a pull by a real engine from a real
Distribution registry)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from schema1_sign import (
    Key,
    b64url,
    go_json,
    manifest_payload,
    pretty,
    protected_header,
    sign,
    signature_block,
)
from util import make_tar, ocistore_cli

from ocistore.errors import InvalidInput
from ocistore.spec.digest import DiffID, Digest, digest_bytes
from ocistore.spec.legacy import schema1
from ocistore.spec.legacy.schema1 import (
    Schema1Layer,
    parse_schema1,
    schema1_config,
    schema1_digest,
)
from ocistore.spec.limits import MAX_JSON_DEPTH, MAX_LAYER_DEPTH, MAX_MANIFEST

if TYPE_CHECKING:
    from docker_engine import DockerEngine
    from registry_peer import RegistryServer

WHAT = "manifest of 127.0.0.1:5000/old:1"


def v1id(n: int | str) -> str:
    return hashlib.sha256(f"v1 id {n}".encode()).hexdigest()


def blob(n: int | str) -> str:
    return "sha256:" + hashlib.sha256(f"blob {n}".encode()).hexdigest()


def v1json(n: int, parent: int | None, **fields: Any) -> str:
    """A v1Compatibility document as Docker 1.10+ pushes it for a layer."""
    doc: dict[str, Any] = {"id": v1id(n)}
    if parent is not None:
        doc["parent"] = v1id(parent)
    doc["created"] = f"2016-01-0{1 + n % 9}T00:00:00Z"
    doc["container_config"] = {"Cmd": [f"/bin/sh -c #(nop) step {n}"]}
    doc.update(fields)
    return go_json(doc).decode()


def stack(count: int, throwaway: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
    """``count`` layers, top first as a manifest lists them: layer ``count - 1`` on top,
    layer 0 at the bottom; the layers in ``throwaway`` say so."""
    out = []
    for n in range(count - 1, -1, -1):
        extra: dict[str, Any] = {"throwaway": True} if n in throwaway else {}
        out.append((blob(n), v1json(n, n - 1 if n else None, **extra)))
    return out


def refused(raw: bytes) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_schema1(raw, WHAT)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(WHAT + ": ")
    return message


# --- parsing ----------------------------------------------------------------------------


def test_signed_manifest_gives_its_payload_and_layers_bottom_first() -> None:
    layers = stack(4, throwaway=frozenset({1, 3}))
    payload = manifest_payload("old/app", "1.0", layers, architecture="arm64")
    raw = sign(payload)
    m = parse_schema1(raw, WHAT)
    assert (m.name, m.tag, m.architecture) == ("old/app", "1.0", "arm64")
    assert m.payload == payload
    assert m.v1_compatibility == layers[0][1].encode()
    assert m.layers == [
        Schema1Layer(Digest(blob(n)), v1json(n, n - 1 if n else None, **t).encode(), bool(t))
        for n, t in ((0, {}), (1, {"throwaway": True}), (2, {}), (3, {"throwaway": True}))
    ]
    assert schema1_digest(raw) == digest_bytes(payload)


def test_digest_is_the_payloads_whoever_signs() -> None:
    payload = manifest_payload("old/app", "1.0", stack(2))
    one = sign(payload, [Key.ec()])
    other = sign(payload, [Key.rsa(), Key.ec("P-384"), Key.ec("P-521")], "2020-02-02T02:02:02Z")
    assert one != other
    assert schema1_digest(one) == schema1_digest(other) == digest_bytes(payload)
    assert parse_schema1(other, WHAT) == parse_schema1(one, WHAT)


def test_unsigned_manifest_is_its_own_payload() -> None:
    payload = manifest_payload("old/app", "1.0", stack(2))
    m = parse_schema1(payload, WHAT)
    assert m.payload == payload
    assert schema1_digest(payload) == digest_bytes(payload)
    # Compact or indented, whatever the document's form: its own bytes.
    compact = go_json(json.loads(payload))
    assert parse_schema1(compact, WHAT).layers == m.layers
    assert schema1_digest(compact) == digest_bytes(compact)


def test_signature_is_not_verified_as_docker_does_not_verify_it() -> None:
    raw = sign(manifest_payload("old/app", "1.0", stack(2)))
    doc = json.loads(raw)
    sig = doc["signatures"][0]["signature"]
    tampered = raw.replace(sig.encode(), b64url(b"\x00" * 64).encode())
    assert tampered != raw
    assert parse_schema1(tampered, WHAT) == parse_schema1(raw, WHAT)


def test_repeated_layers_are_merged_keeping_the_lowest_entry() -> None:
    # Layer 1 listed three times in a row (as Docker 1.x pushed some images), each with
    # its own blob; Docker keeps the last listed, the one nearest the bottom.
    layers = stack(3)
    top, middle, bottom = layers
    repeats = [top, (blob("a"), middle[1]), (blob("b"), middle[1]), middle, bottom]
    m = parse_schema1(manifest_payload("old/app", "1", repeats), WHAT)
    assert [layer.blob_sum for layer in m.layers] == [blob(0), blob(1), blob(2)]
    # A repeated entry dropped is never read further: its blobSum may be anything.
    dropped = [top, ("not a digest", middle[1]), middle, bottom]
    assert parse_schema1(manifest_payload("old/app", "1", dropped), WHAT).layers == m.layers
    # The top itself repeated: the config comes from the entry kept.
    top_twice = [("sha256:" + "0" * 64, top[1]), top, middle, bottom]
    m2 = parse_schema1(manifest_payload("old/app", "1", top_twice), WHAT)
    assert m2.layers == m.layers and m2.v1_compatibility == top[1].encode()


@pytest.mark.parametrize(
    ("v1", "throwaway"),
    [
        ('"throwaway":true', True),
        ('"ThrowAway":true', True),  # Go matches struct fields without case
        ('"THROWAWAY":true', True),
        ('"throwaway":false', False),
        ('"throwaway":null', False),
        ('"throwaway":true,"throwaway":false', False),  # the later key wins
        ('"other":1', False),
    ],
)
def test_throwaway_read_as_go_reads_it(v1: str, throwaway: bool) -> None:
    doc = '{"id":"' + v1id(0) + '",' + v1 + "}"
    m = parse_schema1(manifest_payload("a", "b", [(blob(0), doc)]), WHAT)
    assert m.layers[0].throwaway is throwaway


def test_v1_json_is_the_string_go_holds() -> None:
    # Invalid UTF-8 in the manifest's string becomes U+FFFD, an escaped lone surrogate
    # too: the bytes are those of Go's string, valid UTF-8.
    literal = b'{\\"id\\":\\"' + v1id(0).encode() + b'\\",\\"comment\\":\\"\xff\\ud800\\u00e9<\\"}'
    raw = (
        b'{"schemaVersion":1,"fsLayers":[{"blobSum":"%s"}],"history":[{"v1Compatibility":"%s"}]}'
        % (
            blob(0).encode(),
            literal,
        )
    )
    m = parse_schema1(raw, WHAT)
    expected = '{"id":"' + v1id(0) + '","comment":"\ufffd\ufffd\u00e9<"}'
    assert m.v1_compatibility == expected.encode()


def test_layer_depth_counts_layers_downloaded() -> None:
    parse_schema1(manifest_payload("a", "b", stack(MAX_LAYER_DEPTH)), WHAT)
    deep = stack(MAX_LAYER_DEPTH + 1)
    message = refused(manifest_payload("a", "b", deep))
    assert f"{MAX_LAYER_DEPTH + 1} layers" in message and str(MAX_LAYER_DEPTH) in message
    # One of them throwaway: 125 to download, as Docker's layer store allows.
    parse_schema1(manifest_payload("a", "b", stack(MAX_LAYER_DEPTH + 1, frozenset({7}))), WHAT)


def test_keys_of_every_kind_are_read() -> None:
    payload = manifest_payload("a", "b", stack(1))
    for key in (Key.ec(), Key.ec("P-384"), Key.ec("P-521"), Key.rsa(1024)):
        parse_schema1(sign(payload, [key]), WHAT)
        # The key ID libtrust gives the key is its own.
        assert schema1.libtrust_key_id(key.spki_der()) == key.jwk()["kid"]


# --- refusals ---------------------------------------------------------------------------

PAYLOAD = manifest_payload("old/app", "1.0", stack(2))


def with_blocks(*blocks: dict[str, Any], payload: bytes = PAYLOAD) -> bytes:
    return pretty(payload, blocks)


def good_block(**changes: Any) -> dict[str, Any]:
    length = len(PAYLOAD) - 2  # "\n}"
    block = signature_block(PAYLOAD, Key.ec(), protected_header(length, b"\n}"))
    block.update(changes)
    return block


def protected(value: Any) -> str:
    return b64url(go_json(value))


def jwk_block(jwk: Any) -> dict[str, Any]:
    return good_block(header={"jwk": jwk, "alg": "ES256"})


def off_curve_jwk(kid: str | None) -> dict[str, str]:
    jwk = Key.ec().jwk()
    jwk["y"] = b64url(b"\x01" * 32)
    del jwk["kid"]
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def manifest_doc(**changes: Any) -> bytes:
    doc = json.loads(PAYLOAD)
    doc.update(changes)
    return go_json({k: v for k, v in doc.items() if v is not ...})


def history_doc(*v1s: str) -> bytes:
    return manifest_payload("a", "b", [(blob(i), v) for i, v in enumerate(v1s)])


REFUSALS: list[tuple[str, bytes, str]] = [
    ("not JSON", b"{", "invalid JSON"),
    ("trailing data", PAYLOAD + b"x", "invalid JSON"),
    ("JSON null", b"null", "JSON null"),
    ("an array", b"[]", "cannot unmarshal array"),
    ("signatures null", PAYLOAD[:-2] + b',"signatures":null}', "signatures: none"),
    ("signatures empty", PAYLOAD[:-2] + b',"signatures":[]}', "signatures: none"),
    ("signatures an object", PAYLOAD[:-2] + b',"signatures":{}}', "signatures: json"),
    ("signature null", PAYLOAD[:-2] + b',"signatures":[null]}', "signatures[0].header: missing"),
    (
        "header missing",
        with_blocks({"protected": "e30", "signature": ""}),
        "signatures[0].header: missing",
    ),
    ("header null", with_blocks(good_block(header=None)), "signatures[0].header: missing"),
    ("header a string", with_blocks(good_block(header="x")), "field header"),
    ("x5c not strings", with_blocks(good_block(header={"x5c": [1]})), "field header.x5c"),
    ("protected not a string", with_blocks(good_block(protected=5)), "field protected"),
    (
        "protected missing",
        with_blocks({"header": {}, "signature": ""}),
        "signatures[0].protected: invalid JSON",
    ),
    (
        "protected base64 length",
        with_blocks(good_block(protected="abcde")),
        "signatures[0].protected: illegal base64url",
    ),
    (
        "protected base64 alphabet",
        with_blocks(good_block(protected="ab+/")),
        "signatures[0].protected: illegal base64url",
    ),
    (
        "protected padded wrong",
        with_blocks(good_block(protected="a=b")),
        "signatures[0].protected: illegal base64url",
    ),
    (
        "protected not JSON",
        with_blocks(good_block(protected=b64url(b"{"))),
        "signatures[0].protected: invalid JSON",
    ),
    (
        "protected an array",
        with_blocks(good_block(protected=protected([]))),
        "signatures[0].protected: json: cannot unmarshal array",
    ),
    (
        "protected null",
        with_blocks(good_block(protected=protected(None))),
        "signatures[0].protected: formatLength missing",
    ),
    (
        "formatLength a string",
        with_blocks(good_block(protected=protected({"formatLength": "5", "formatTail": "Cn0"}))),
        "formatLength missing or not a number",
    ),
    (
        "formatLength negative",
        with_blocks(good_block(protected=protected({"formatLength": -1, "formatTail": "Cn0"}))),
        "formatLength -1 is out of range",
    ),
    (
        "formatLength huge",
        with_blocks(good_block(protected=protected({"formatLength": 1e19, "formatTail": "Cn0"}))),
        "formatLength 1e+19 is out of range",
    ),
    (
        "formatLength beyond",
        with_blocks(good_block(protected=protected({"formatLength": 10**7, "formatTail": "Cn0"}))),
        "signatures: formatLength 10000000 is longer",
    ),
    (
        "formatTail missing",
        with_blocks(good_block(protected=protected({"formatLength": 5}))),
        "signatures[0].protected: formatTail missing",
    ),
    (
        "formatTail a number",
        with_blocks(good_block(protected=protected({"formatLength": 5, "formatTail": 5}))),
        "formatTail missing or not a string",
    ),
    (
        "formatTail not base64",
        with_blocks(good_block(protected=protected({"formatLength": 5, "formatTail": "!"}))),
        "signatures[0].protected: formatTail: illegal",
    ),
    (
        "formatLength conflicts",
        with_blocks(
            good_block(), good_block(protected=protected({"formatLength": 7, "formatTail": "Cn0"}))
        ),
        "signatures[1].protected: formatLength conflicts",
    ),
    (
        "formatTail conflicts",
        with_blocks(
            good_block(),
            good_block(
                protected=protected({"formatLength": len(PAYLOAD) - 2, "formatTail": "IH0"})
            ),
        ),
        "signatures[1].protected: formatTail conflicts",
    ),
    (
        "payload cut",
        with_blocks(good_block(protected=protected({"formatLength": 9, "formatTail": "Cn0"}))),
        f"{WHAT}: payload: invalid JSON",
    ),
    ("jwk null", with_blocks(jwk_block(None)), "header.jwk: key type: 'kty' value not specified"),
    ("jwk a number", with_blocks(jwk_block(5)), "header.jwk: json: cannot unmarshal number"),
    ("jwk kty a number", with_blocks(jwk_block({"kty": 1})), "'kty' value must be a string"),
    ("jwk kty OKP", with_blocks(jwk_block({"kty": "OKP"})), "key type 'OKP' not supported"),
    ("jwk no curve", with_blocks(jwk_block({"kty": "EC"})), "EC curve: 'crv' value not specified"),
    (
        "jwk curve P-192",
        with_blocks(jwk_block({"kty": "EC", "crv": "P-192"})),
        "EC curve 'P-192' not supported",
    ),
    (
        "jwk x short",
        with_blocks(jwk_block({**Key.ec().jwk(), "x": b64url(b"\x01" * 31)})),
        "EC x-coordinate: 31 octets, should be 32",
    ),
    (
        "jwk y not base64",
        with_blocks(jwk_block({**Key.ec().jwk(), "y": "*"})),
        "EC y-coordinate: 'y': invalid base64",
    ),
    (
        "jwk kid another's",
        with_blocks(jwk_block({**Key.ec().jwk(), "kid": Key.ec().key_id()})),
        "is not the key's",
    ),
    (
        "jwk kid a number",
        with_blocks(jwk_block({**Key.ec().jwk(), "kid": 1})),
        "key ID: 'kid' value must be a string",
    ),
    ("jwk off the curve", with_blocks(jwk_block(off_curve_jwk("ABCD"))), "is not the key's"),
    (
        "jwk RSA no n",
        with_blocks(jwk_block({"kty": "RSA", "e": "AQAB"})),
        "RSA modulus: 'n' value not specified",
    ),
    (
        "jwk RSA e too long",
        with_blocks(jwk_block({"kty": "RSA", "n": "AQAB", "e": "AQABAQAB"})),
        "RSA exponent: 6 octets, more than 4",
    ),
    ("schemaVersion 2", manifest_doc(schemaVersion=2), "schemaVersion is 2, not 1"),
    ("schemaVersion missing", manifest_doc(schemaVersion=...), "schemaVersion is 0, not 1"),
    ("schemaVersion a string", manifest_doc(schemaVersion="1"), "field schemaVersion"),
    (
        "schemaVersion 1.0",
        PAYLOAD.replace(b'"schemaVersion": 1', b'"schemaVersion": 1.0'),
        "field schemaVersion",
    ),
    ("signed schemaVersion 2", sign(manifest_doc(schemaVersion=2)), "schemaVersion is 2"),
    (
        "fewer history entries",
        manifest_doc(history=json.loads(PAYLOAD)["history"][:1]),
        "history has 1 entries for 2 fsLayers",
    ),
    ("no layers", manifest_doc(fsLayers=[], history=[]), "fsLayers is empty"),
    ("layers missing", manifest_doc(fsLayers=..., history=...), "fsLayers is empty"),
    ("fsLayers an object", manifest_doc(fsLayers={}), "field fsLayers"),
    (
        "v1Compatibility a number",
        manifest_doc(history=[{"v1Compatibility": 1}] * 2),
        "field history.v1Compatibility",
    ),
    ("v1Compatibility empty", history_doc(""), "history[0].v1Compatibility: invalid JSON"),
    ("v1Compatibility not JSON", history_doc("{"), "history[0].v1Compatibility: invalid JSON"),
    (
        "v1Compatibility an array",
        history_doc("[]"),
        "history[0].v1Compatibility: json: cannot unmarshal array",
    ),
    ("v1Compatibility null", history_doc("null"), "history[0].v1Compatibility: id '' is not"),
    (
        "id uppercase",
        history_doc(go_json({"id": v1id(0).upper()}).decode()),
        "history[0].v1Compatibility: id",
    ),
    (
        "id short",
        history_doc('{"id":"abc"}'),
        "history[0].v1Compatibility: id 'abc' is not a v1 ID",
    ),
    (
        "id a number",
        history_doc('{"id":1}'),
        "history[0].v1Compatibility: json: cannot unmarshal number",
    ),
    (
        "created invalid",
        history_doc(v1json(0, None, created="yesterday")),
        "history[0].v1Compatibility: ",
    ),
    (
        "bottom with a parent",
        history_doc(v1json(1, 0)),
        "history[0].v1Compatibility: the bottom layer has a parent",
    ),
    (
        "parent not below",
        history_doc(v1json(2, 1), v1json(0, None)),
        "history[0].v1Compatibility: parent",
    ),
    (
        "id twice apart",
        history_doc(v1json(0, 1), v1json(1, 0), v1json(0, None)),
        "history[2].v1Compatibility: id " + v1id(0) + " is also that of history[0]",
    ),
    (
        "throwaway a string",
        history_doc(v1json(0, None, throwaway="true")),
        "history[0].v1Compatibility: json: cannot unmarshal string",
    ),
    ("blobSum empty", manifest_payload("a", "b", [("", v1json(0, None))]), "fsLayers[0].blobSum"),
    (
        "blobSum not hex",
        manifest_payload("a", "b", [("sha256:xyz", v1json(0, None))]),
        "fsLayers[0].blobSum: invalid digest",
    ),
    (
        "blobSum md5",
        manifest_payload("a", "b", [("md5:" + "0" * 32, v1json(0, None))]),
        "fsLayers[0].blobSum: invalid digest",
    ),
    (
        "blobSum of a throwaway layer",
        manifest_payload(
            "a", "b", [("", v1json(1, 0, throwaway=True)), (blob(0), v1json(0, None))]
        ),
        "fsLayers[0].blobSum",
    ),
    (
        "too deep",
        b'{"a":' + b"[" * (MAX_JSON_DEPTH) + b"]" * MAX_JSON_DEPTH + b"}",
        f"deeper than the limit of {MAX_JSON_DEPTH}",
    ),
    (
        "v1 JSON too deep",
        history_doc('{"a":' + "[" * 64 + "]" * 64 + "}"),
        "history[0].v1Compatibility: JSON nests deeper",
    ),
    (
        "far too deep",
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        f"deeper than the limit of {MAX_JSON_DEPTH}",
    ),
    ("too many values", b'{"a":[' + b"0," * 250_000 + b"0]}", "JSON values, over the limit"),
    ("too big", b" " * (MAX_MANIFEST + 1), "over the limit of 4 MiB"),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_with_one_line_naming_the_field(raw: bytes, expected: str) -> None:
    assert expected in refused(raw)


@pytest.mark.parametrize(
    "jwk",
    [
        off_curve_jwk(None),  # no kid: the point is never marshalled
        off_curve_jwk(""),  # Go's key ID of a point off the curve is ""
        {"kty": "RSA", "n": "", "e": ""},  # libtrust reads a zero modulus and exponent
        {**Key.rsa(1024).jwk(), "extra": [1, {"a": None}]},
    ],
)
def test_keys_libtrust_reads_are_read(jwk: dict[str, str]) -> None:
    parse_schema1(with_blocks(jwk_block(jwk)), WHAT)


def test_first_signature_of_zero_length_lets_a_later_one_set_it() -> None:
    # libtrust keeps the first formatLength that is not 0, and the first tail not empty.
    zero = good_block(protected=protected({"formatLength": 0, "formatTail": ""}))
    raw = with_blocks(zero, good_block())
    assert parse_schema1(raw, WHAT).payload == PAYLOAD


def spread(s: str, newlines: int) -> str:
    """``s`` with that many newlines (``\\n`` and ``\\r`` by turns) spread through it."""
    out = s
    for i in range(newlines):
        at = (i + 1) * len(s) // (newlines + 1) + i
        out = out[:at] + "\n\r"[i % 2] + out[at:]
    return out


def test_newlines_inside_base64_are_skipped_as_go_skips_them() -> None:
    header = protected_header(len(PAYLOAD) - 2, b"\n}")
    # libtrust pads by the length, newlines counted; Go's decoder then skips them.
    raw = with_blocks(good_block(protected=spread(header, 4)))
    assert parse_schema1(raw, WHAT).payload == PAYLOAD
    for newlines in (1, 2, 3):  # the padding then comes out wrong, and Go refuses it
        message = refused(with_blocks(good_block(protected=spread(header, newlines))))
        assert "signatures[0].protected: illegal base64url" in message


def test_schema1_config_needs_a_diff_id_per_layer_downloaded() -> None:
    m = parse_schema1(manifest_payload("a", "b", stack(3, frozenset({1}))), WHAT)
    with pytest.raises(InvalidInput, match="3 DiffIDs given for 2 layers"):
        schema1_config(m, [DiffID(Digest("sha256:" + "1" * 64))] * 3)


# --- the config Docker makes ------------------------------------------------------------


class Case(NamedTuple):
    """A schema 1 image: its layers top first as ``(v1 JSON, files or None)`` (None: a
    throwaway layer, whose blob is the empty gzipped tar), and what Docker 20.10 made of
    it when it pulled it: the DiffIDs of its layers and the image ID (recorded from
    :func:`test_docker_pulls_schema1_to_the_config_we_make`)."""

    layers: list[tuple[str, dict[str, bytes] | None]]
    diff_ids: list[str]
    image_id: str


# Docker 1.10 and later push a full v1 JSON for the top layer and a short one (id,
# parent, created, container_config.Cmd, throwaway) for the others. Written by hand, not
# by an encoder: spaces, key orders, escapes and numbers as a registry may hold them.
MODERN_TOP = (
    '{"architecture":"amd64","config":{"Hostname":"4fd0a5c1b5e8","Domainname":"",'
    '"User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,'
    '"ExposedPorts":{"80/tcp":{}},"Tty":false,"OpenStdin":false,"StdinOnce":false,'
    '"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",'
    '"NAME=\\u00e9t\\u00e9 <&>"],'
    '"Cmd":["sh","-c","echo \\"hi\\" \\u0026\\u0026 sleep 1"],"Image":"sha256:'
    + "ab"
    * 32
    + '","Volumes":{"/data":{}},"WorkingDir":"/srv","Entrypoint":null,"OnBuild":[],'
    '"Labels":{"z":"last","a":"first \\u2028"}},"container":"4fd0a5c1b5e8e6",'
    '"container_config":{"Hostname":"4fd0a5c1b5e8","Cmd":["/bin/sh","-c","#(nop) ",'
    '"CMD [\\"sh\\" \\"-c\\"]"],"Labels":{}},'
    '"created":"2016-03-18T19:22:48.810791943+01:00", "docker_version":"1.10.3",'
    ' "id":"' + v1id("m5") + '","os":"linux","parent":"' + v1id("m4") + '",'
    '"throwaway":true, "Size": 1234, "parent_id":"sha256:00", "layer_id":"sha256:11",'
    ' "x-extra" : { "z" : 1.50, "a" : [ 2e3, -0, true ] }}'
)

MODERN = [
    (MODERN_TOP, None),
    # The same layer once more (Docker 1.x pushed some so): one layer, the one listed
    # last kept (the entry above, and its blob, dropped).
    (
        '{"id":"' + v1id("m4") + '","parent":"' + v1id("m3") + '","created":'
        '"2016-03-18T18:22:40.1Z","comment":"dropped","container_config":{"Cmd":["no"]}}',
        {"dropped": b"never downloaded\n"},
    ),
    (
        '{"id":"' + v1id("m4") + '","parent":"' + v1id("m3") + '","created":'
        '"2016-03-18T18:22:40.1Z","author":"Ann <ann@example.com>","comment":"a \\t tab",'
        '"container_config":{"Cmd":"/bin/sh -c echo hello \\u003e /greeting"}}',
        {"greeting": b"hello\n"},
    ),
    (
        '{"id":"' + v1id("m3") + '","parent":"' + v1id("m2") + '","created":'
        '"2016-03-18T18:22:39Z","container_config":{"Cmd":["/bin/sh","-c","#(nop) ENV '
        'A=1"]},"throwaway":true}',
        None,
    ),
    (
        '{"id":"' + v1id("m2") + '","parent":"' + v1id("m1") + '","created":'
        '"2016-03-18T18:22:38.000000001-07:30","container_config":{"Cmd":null}}',
        {"etc/app/config": b"x=1\n", "usr/bin/tool": b"\x7fELF" + b"\0" * 100},
    ),
    (
        '{"id":"' + v1id("m1") + '","created":"2016-03-18T18:22:37.5Z","container_config":'
        '{"Cmd":["/bin/sh","-c","#(nop) ADD file:0123 in / "]}}',
        {"bin/sh": b"#!", "etc/hostname": b"old\n"},
    ),
]

# Before Docker 1.8.3 every layer had a full v1 JSON, and the config is made from the
# top one decoded into Docker's V1Image and written again: unknown fields dropped, Go's
# zero values written, a missing created time Go's zero time.
OLD = [
    (
        '{"id":"' + v1id("o2") + '","parent":"' + v1id("o1") + '","created":'
        '"2015-06-01T10:00:00.123456789Z","container":"c0ffee","container_config":'
        '{"Hostname":"c0ffee","CpuShares":0,"Memory":0,"PortSpecs":null,"Cmd":["/bin/sh",'
        '"-c","#(nop) CMD [/bin/bash]"],"Image":"' + v1id("o1") + '","Labels":null},'
        '"docker_version":"1.6.2","author":"Bob \\u003cbob@example.com\\u003e","config":'
        '{"Hostname":"c0ffee","Env":["PATH=/bin"],"Cmd":["/bin/bash"],"Image":"'
        + v1id("o1")
        + '","Labels":{"k":"v"},"MacAddress":"","OnBuild":null},"architecture":"amd64",'
        '"os":"linux","Size":0,"checksum":"tarsum.dev+sha256:00"}',
        {"root/.bashrc": b"PS1='$ '\n"},
    ),
    (
        '{"id":"' + v1id("o1") + '","comment":"Imported from -","container_config":'
        '{"Cmd":null},"docker_version":"1.6.2","architecture":"amd64","os":"linux",'
        '"Size":2048}',
        {"bin/bash": b"\x7fELF", "etc/os-release": b"ID=old\n"},
    ),
]

# No docker_version at all: older than 1.8.3 too, for versions.LessThan.
UNVERSIONED = [
    (
        '{"id":"' + v1id("u1") + '","created":"2014-12-31T23:59:59Z","config":{"Cmd":"sh",'
        '"Entrypoint":"/init"},"container_config":{"Cmd":"sh"},"architecture":"arm"}',
        {"init": b"#!/bin/sh\n"},
    ),
]

#: A gzipped empty tar: the blob Docker pushed for every throwaway layer.
EMPTY_LAYER = gzip.compress(b"\0" * 1024, mtime=0)


def build(
    name: str, layers: list[tuple[str, dict[str, bytes] | None]]
) -> tuple[bytes, dict[str, bytes], list[str]]:
    """The manifest payload of ``layers`` (top first), its blobs by digest, and the
    DiffIDs of the layers Docker downloads (bottom first, the repeated one once)."""
    blobs: dict[str, bytes] = {}
    entries = []
    diff_ids: list[str] = []
    previous_id = None
    for v1, files in reversed(layers):
        tar = make_tar(files, dirs=True) if files is not None else b"\0" * 1024
        gz = EMPTY_LAYER if files is None else gzip.compress(tar, mtime=0)
        digest = str(digest_bytes(gz))
        blobs[digest] = gz
        entries.append((digest, v1))
        try:
            this_id = json.loads(v1).get("id")
        except ValueError:  # a manifest Docker refuses
            this_id = None
        if files is not None and this_id != previous_id:
            diff_ids.append(str(digest_bytes(tar)))
        previous_id = this_id
    return manifest_payload(name, "v1", entries[::-1]), blobs, diff_ids


#: Recorded from Docker 20.10.24 (Debian's docker.io), which pulled each from
#: Distribution 2.8.2 (``docker image inspect``'s Id and RootFS.Layers).
CASES = {
    "modern": Case(
        MODERN,
        [
            "sha256:bae0ce958b7a1132cbbaf72c90f70d3a8f29faced9e471bb86f61d8860c791e9",
            "sha256:ee6c9ee975e12de5d0d0d18c727584adc28d5144d45d8b5771a85520d6451b7f",
            "sha256:9f9eabd3e5fe7ff4ba615d9d3fd870a941d2b814e3436819ad586b8f54f7f737",
        ],
        "sha256:0068dee2cd0d4ac0326debd84b734174557b3e213d434058419723fe1f51d15e",
    ),
    "old": Case(
        OLD,
        [
            "sha256:c3d79e5c09bea3315cbda8b472ea8f836484dae992b46599aae0d68cfc0e8191",
            "sha256:56525ef86c203acd6448806de0f0e625f36d18e900b76b83c2d43ed99f88b23b",
        ],
        "sha256:ccef4e7945ecc0fce3d09e5ba5cd46ace63afc6b9f3201e2a1e871e1395b67ee",
    ),
    "unversioned": Case(
        UNVERSIONED,
        ["sha256:e6096d44ae13d1d2c9cb7dfc2aec8cd094f31afa9f7157284ccbcbd3d97db8cb"],
        "sha256:588d95bb1468744098a3f273c068f7f98ee3c89163f04bdd72cb2d7297a33cc0",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_config_is_the_one_docker_made(name: str) -> None:
    case = CASES[name]
    payload, _, _ = build(f"schema1/{name}", case.layers)
    config = schema1_config(
        parse_schema1(payload, WHAT), [DiffID(Digest(d)) for d in case.diff_ids]
    )
    assert str(digest_bytes(config)) == case.image_id, config.decode()


def _request(
    registry: RegistryServer, method: str, url: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        urllib.parse.urljoin(registry.url + "/", url), data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        pytest.fail(f"{method} {url}: {exc.code} {exc.read()[:2000]!r}")


def push_schema1(registry: RegistryServer, name: str, blobs: dict[str, bytes], raw: bytes) -> str:
    """Upload the blobs (monolithic: POST, then PUT with the digest) and the manifest as
    tag ``v1``; the digest the registry gives it."""
    for digest, data in blobs.items():
        status, headers, _ = _request(registry, "POST", f"/v2/{name}/blobs/uploads/")
        assert status == 202
        location = headers["Location"]
        location += ("&" if "?" in location else "?") + "digest=" + digest
        status, _, _ = _request(
            registry, "PUT", location, data, **{"Content-Type": "application/octet-stream"}
        )
        assert status == 201
    status, headers, _ = _request(
        registry,
        "PUT",
        f"/v2/{name}/manifests/v1",
        raw,
        **{"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"},
    )
    assert status == 201
    return headers["Docker-Content-Digest"]


@pytest.mark.parametrize("name", CASES)
def test_docker_pulls_schema1_to_the_config_we_make(
    name: str,
    docker_engine: DockerEngine,
    registry_factory: Callable[..., RegistryServer],
    tmp_path: Path,
) -> None:
    case = CASES[name]
    registry = registry_factory(schema1=True)
    repo = f"schema1/{name}"
    payload, blobs, diff_ids = build(repo, case.layers)
    raw = sign(payload)
    digest = push_schema1(registry, repo, blobs, raw)
    assert digest == schema1_digest(raw) == digest_bytes(payload)

    # The registry keeps the payload and serves it signed again, with its own key.
    _, headers, served = _request(
        registry,
        "GET",
        f"/v2/{repo}/manifests/v1",
        Accept="application/vnd.docker.distribution.manifest.v1+prettyjws",
    )
    assert headers["Docker-Content-Digest"] == digest
    assert served != raw and schema1_digest(served) == digest
    manifest = parse_schema1(served, f"{registry.host}/{repo}:v1")
    assert manifest == parse_schema1(raw, WHAT)
    config = schema1_config(manifest, [DiffID(Digest(d)) for d in diff_ids])

    ref = f"{registry.host}/{repo}:v1"
    docker_engine.run("pull", ref)
    image_id = docker_engine.image_id(ref)
    assert image_id == str(digest_bytes(config))
    if diff_ids == case.diff_ids:  # the layers made as when the vector was recorded
        assert image_id == case.image_id

    # The config Docker keeps, as docker save writes it: the same bytes.
    with tarfile.open(fileobj=io.BytesIO(docker_engine.run_bytes("save", ref))) as tar:
        member = tar.extractfile(image_id.removeprefix("sha256:") + ".json")
        assert member is not None and member.read() == config

    # What inspect and history say, from the config.
    want = json.loads(config)
    (inspect,) = json.loads(docker_engine.run("image", "inspect", ref).stdout)
    assert inspect["RootFS"]["Layers"] == diff_ids
    assert inspect["RepoDigests"] == [f"{registry.host}/{repo}@{digest}"]
    assert inspect["Created"] == want.get("created", "0001-01-01T00:00:00Z")
    assert inspect["Os"] == want.get("os", "linux")  # the engine's own when none is said
    for key, field in (("Architecture", "architecture"), ("Author", "author"),
                       ("DockerVersion", "docker_version")):  # fmt: skip
        assert inspect[key] == want.get(field, ""), key
    assert inspect["Config"]["Cmd"] == want["config"]["Cmd"]
    history = [
        json.loads(line)
        for line in docker_engine.run(
            "history", "--no-trunc", "--format", "{{json .}}", ref
        ).stdout.splitlines()
    ]
    assert [h["CreatedBy"] for h in history] == [
        e.get("created_by", "") for e in reversed(want["history"])
    ]
    assert [h["Comment"] for h in history] == [
        e.get("comment", "") for e in reversed(want["history"])
    ]

    # ocistore pull gets the image Docker got: its ID, RepoDigests, and what inspect says.
    root = tmp_path / "store"
    ocistore_cli("--root", root, "pull", "-q", ref)
    ours = json.loads(ocistore_cli("--root", root, "inspect", ref).stdout)[0]
    assert ours["Id"] == image_id
    for key in ("RepoTags", "RepoDigests", "Created", "Config", "RootFS", "Architecture",
                "Os", "Author", "DockerVersion", "Comment", "Size"):  # fmt: skip
        assert ours[key] == inspect[key], key
    docker_engine.run("rmi", ref)


def _files(n: int) -> dict[str, bytes]:
    return {f"layer{n}": f"{n}\n".encode()}


#: Manifests Distribution stores (it reads no v1 JSON) that Docker refuses to pull: the
#: layers, top first, what Docker says and what ocistore says.
DOCKER_REFUSES = {
    "parent not the layer below": (
        [(v1json(2, 0), _files(2)), (v1json(1, 0), _files(1)), (v1json(0, None), _files(0))],
        "invalid parent ID. Expected",
        "history[0].v1Compatibility: parent",
    ),
    "bottom layer with a parent": (
        [(v1json(1, 0), _files(1))],
        "invalid parent ID in the base layer of the image",
        "the bottom layer has a parent",
    ),
    "an id twice, apart": (
        [(v1json(0, 1), _files(3)), (v1json(1, 0), _files(1)), (v1json(0, None), _files(0))],
        "appears multiple times in manifest",
        "history[2].v1Compatibility: id",
    ),
    "an id not a v1 id": (
        [('{"id":"' + v1id(0)[:-1] + '"}', _files(0))],
        "is invalid",
        "history[0].v1Compatibility: id",
    ),
    "throwaway a string": (
        [(v1json(0, None, throwaway="yes"), _files(0))],
        "cannot unmarshal string into Go struct field .throwaway of type bool",
        "history[0].v1Compatibility: json: cannot unmarshal string",
    ),
    "v1Compatibility not JSON": (
        [('{"id":', _files(0))],
        "unexpected end of JSON input",
        "history[0].v1Compatibility: invalid JSON",
    ),
    "created not a time": (
        [(v1json(0, None, created="2016-01-01"), _files(0))],
        "parsing time",
        "history[0].v1Compatibility: ",
    ),
    "more layers than Docker's layer store takes": (
        [(v1json(n, n - 1 if n else None), _files(n)) for n in range(MAX_LAYER_DEPTH, -1, -1)],
        "max depth exceeded",
        f"{MAX_LAYER_DEPTH + 1} layers, more than the maximum depth {MAX_LAYER_DEPTH}",
    ),
}


@pytest.mark.parametrize("name", DOCKER_REFUSES)
def test_docker_refuses_what_we_refuse(
    name: str, docker_engine: DockerEngine, registry_factory: Callable[..., RegistryServer]
) -> None:
    layers, docker_says, we_say = DOCKER_REFUSES[name]
    registry = registry_factory(schema1=True)
    repo = "schema1/refused"
    payload, blobs, _ = build(repo, layers)
    push_schema1(registry, repo, blobs, sign(payload))
    ref = f"{registry.host}/{repo}:v1"
    pulled = docker_engine.run("pull", ref, check=False)
    assert pulled.returncode != 0 and docker_says in pulled.stderr, pulled.stderr
    _, _, served = _request(registry, "GET", f"/v2/{repo}/manifests/v1")
    with pytest.raises(InvalidInput) as info:
        parse_schema1(served, ref)
    assert str(info.value).startswith(ref + ": ") and we_say in str(info.value)
