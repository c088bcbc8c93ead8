"""Docker image manifests schema 1 (spec.legacy.schema1): parsing as Docker 20.10's pull
parses them, each refusal one line naming the field, and the config Docker makes, byte
for byte (vectors recorded from Docker 20.10, and a pull by a real engine from a real
Distribution registry)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

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
