"""Docker's image manifest schema 1, read as Docker 20.10's pull reads it.

Registries that predate schema 2 still serve schema 1 manifests, unsigned
(``application/vnd.docker.distribution.manifest.v1+json``) or signed
(``…v1+prettyjws``: the manifest with a ``"signatures"`` array spliced in, libtrust's
"pretty" JWS). A schema 1 manifest has no image config: the puller makes one from the
v1 JSON of its layers, and the image ID is the sha256 of that config. This module
follows moby's ``distribution/pull_v2.go`` (``pullSchema1``, ``verifySchema1Manifest``,
``fixManifestLayers``), docker/distribution's ``manifest/schema1`` and libtrust's
``ParsePrettySignature`` step by step, so that what Docker refuses is refused and the
config (:func:`schema1_config`) is byte for byte Docker's.

What Docker does, in order, and so this module:

1. The signed form is parsed as libtrust does: the document must be a JSON object; each
   signature's ``protected`` header (base64url of JSON) gives ``formatLength`` and
   ``formatTail``, equal in every signature, and the payload is the document's first
   ``formatLength`` bytes followed by ``formatTail``. Its sha256 is the manifest's digest
   (what a registry calls it, :func:`schema1_digest`). Each ``header.jwk`` is read as a
   JSON Web Key (EC P-256/P-384/P-521 or RSA; its ``kid``, when given, must be the key's
   libtrust ID).
2. The payload is decoded into distribution's ``schema1.Manifest``; ``schemaVersion``
   must be 1 and ``fsLayers`` and ``history`` of one non-zero length.
3. ``fixManifestLayers``: every ``history[i].v1Compatibility`` is decoded into Docker's
   ``V1Image`` and its ``id`` must be a v1 ID; the bottom one has no ``parent``; an ID may
   appear more than once only in consecutive entries, which are then one layer (the
   lowest entry is kept); every other entry's ``parent`` is the ``id`` below it.
4. For each layer left, bottom first: its ``blobSum`` is a valid digest, its
   ``throwaway`` a boolean. Throwaway layers are not downloaded and have no DiffID; every
   layer has a history entry (``empty_layer`` for throwaway ones).
5. The config is ``MakeConfigFromV1Config`` of the top layer's v1 JSON with that history
   and the DiffIDs of the layers downloaded (:func:`schema1_config`).

**Signatures are not verified, as Docker does not verify them.** Docker 20.10 parses the
JWS (step 1) and never calls libtrust's ``Verify`` on pull (``verifySchema1Manifest``
only checks the digest of a pull by digest, and the fields above); containerd's schema 1
converter does not either. Each signature is made with a key carried in the signature
itself, trusted by nobody, so checking it would prove only that the manifest was not
changed since someone signed it, which its digest already proves when the manifest is
pulled by digest. A registry (Distribution) verifies signatures when a manifest is
pushed, and serves the manifest signed again with a key of its own.

Two departures, both deliberate:

* An unsigned manifest (no ``"signatures"`` key) is read as its own payload, as
  containerd reads it. Docker 20.10 refuses it ("missing signature key": distribution
  parses every schema 1 media type as the signed form).
* The limits of :mod:`ocistore.spec.limits` apply: a manifest of at most
  :data:`~ocistore.spec.limits.MAX_MANIFEST` bytes, JSON of at most
  :data:`~ocistore.spec.limits.MAX_JSON_VALUES` values and
  :data:`~ocistore.spec.limits.MAX_JSON_DEPTH` levels (the manifest, its payload, each
  protected header, key and v1 JSON), and at most
  :data:`~ocistore.spec.limits.MAX_LAYER_DEPTH` layers downloaded (Docker's layer store
  refuses a deeper chain only once it has downloaded the layers below). Only sha256 and
  sha512 blob digests are read (Docker also takes sha384, which no registry uses).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ...errors import InvalidInput
from ..digest import DiffID, Digest, digest_bytes
from ..limits import MAX_JSON_DEPTH, MAX_JSON_VALUES, MAX_LAYER_DEPTH, MAX_MANIFEST, check_size
from ..reference import is_identifier
from . import gojson, v1
from .gojson import ANY, BOOL, INT, RAW, STRING, Field, Map, Ptr, Slice, Struct

__all__ = [
    "Schema1Layer",
    "Schema1Manifest",
    "libtrust_key_id",
    "parse_schema1",
    "schema1_config",
    "schema1_digest",
]


class Schema1Layer(NamedTuple):
    """One layer of a schema 1 manifest, as the puller uses it."""

    #: The layer's blob (``fsLayers[i].blobSum``).
    blob_sum: Digest
    #: Its v1 JSON (``history[i].v1Compatibility``), as Go's string holds it (UTF-8).
    v1_compatibility: bytes
    #: A layer with no content of its own (``"throwaway": true``): not downloaded, no
    #: DiffID, an ``empty_layer`` history entry.
    throwaway: bool


class Schema1Manifest(NamedTuple):
    """A schema 1 manifest that Docker would pull."""

    name: str
    tag: str
    architecture: str
    #: Bottom first, repeated layers merged as ``fixManifestLayers`` does, throwaway
    #: layers included.
    layers: list[Schema1Layer]
    #: The bytes whose sha256 is the manifest's digest: the JWS payload of a signed
    #: manifest (the document without its signatures), the document itself unsigned.
    payload: bytes
    #: The top layer's v1 JSON (``history[0].v1Compatibility``), which becomes the config.
    v1_compatibility: bytes


# --- the Go types decoded ---------------------------------------------------------------

#: libtrust's jsParsedHeader and jsParsedSignature.
_JWS_HEADER: Final = Struct(
    "libtrust.jsParsedHeader",
    (
        Field("JWK", RAW, "jwk"),
        Field("Algorithm", STRING, "alg"),
        Field("Chain", Slice(STRING), "x5c"),
    ),
)
_JWS_SIGNATURES: Final = Slice(
    Struct(
        "libtrust.jsParsedSignature",
        (
            Field("Header", Ptr(_JWS_HEADER), "header"),
            Field("Signature", STRING, "signature"),
            Field("Protected", STRING, "protected"),
        ),
    )
)

#: distribution's schema1.Manifest (manifest.Versioned's fields promoted).
_MANIFEST: Final = Struct(
    "schema1.Manifest",
    (
        Field("SchemaVersion", INT, "schemaVersion"),
        Field("MediaType", STRING, "mediaType", omitempty=True),
        Field("Name", STRING, "name"),
        Field("Tag", STRING, "tag"),
        Field("Architecture", STRING, "architecture"),
        Field(
            "FSLayers",
            Slice(Struct("schema1.FSLayer", (Field("BlobSum", STRING, "blobSum"),))),
            "fsLayers",
        ),
        Field(
            "History",
            Slice(
                Struct("schema1.History", (Field("V1Compatibility", STRING, "v1Compatibility"),))
            ),
            "history",
        ),
    ),
)

#: The struct pullSchema1 reads ``throwaway`` with.
_THROWAWAY: Final = Struct("throwAway", (Field("ThrowAway", BOOL, "throwaway", omitempty=True),))

_MAP_ANY: Final = Map(ANY)


# --- JSON, within the limits ------------------------------------------------------------


_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET: Final = re.compile(rb"[^\[\]{}]+")
_EMPTY_PAIR: Final = re.compile(rb"\[\]|\{\}")


def _too_deep(data: bytes) -> bool:
    """Whether JSON nests deeper than :data:`MAX_JSON_DEPTH`: its brackets alone, outside
    its strings, innermost empty pairs removed once per level (each pass at C speed).
    Exact for valid JSON; invalid JSON that it passes fails to parse."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    for _ in range(MAX_JSON_DEPTH):
        brackets = _EMPTY_PAIR.sub(b"", brackets)
        if not brackets:
            return False
    return True


def _decode(data: bytes, t: gojson.GoType, what: str) -> Any:
    """Go's ``json.Unmarshal`` of ``data`` into a value of type ``t``, within the limits
    on values and depth (checked on the bytes first: nothing deeper is ever parsed)."""
    values = data.count(b"[") + data.count(b"{") + data.count(b",")
    if values > MAX_JSON_VALUES:
        raise InvalidInput(
            f"{what}: up to {values} JSON values, over the limit of {MAX_JSON_VALUES}"
        )
    if _too_deep(data):
        raise InvalidInput(f"{what}: JSON nests deeper than the limit of {MAX_JSON_DEPTH} levels")
    try:
        return gojson.unmarshal(data, t)
    except gojson.GoJSONError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


# --- libtrust ---------------------------------------------------------------------------

_B64URL: Final = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?")


def _jose_b64decode(s: str) -> bytes:
    """libtrust's joseBase64UrlDecode: padded by its length, then Go's
    ``base64.URLEncoding`` (padding required, ``\\r`` and ``\\n`` skipped anywhere, the
    unused bits of the last character not checked). ``ValueError`` if it fails."""
    pad = len(s) % 4
    if pad == 1:
        raise ValueError("illegal base64url string")
    s += "=" * ((4 - pad) % 4)
    s = s.replace("\r", "").replace("\n", "")
    if not _B64URL.fullmatch(s):
        raise ValueError("illegal base64url data")
    try:
        return base64.b64decode(s.translate(str.maketrans("-_", "+/")))
    except binascii.Error as exc:  # pragma: no cover - the pattern admits only valid data
        raise ValueError(str(exc)) from None


class _Curve(NamedTuple):
    name: str
    p: int
    b: int
    size: int  # bytes of a coordinate
    der_oid: bytes  # the curve's OID, DER-encoded


#: NIST curves (y² = x³ - 3x + b mod p), as libtrust names them.
_CURVES: Final = {
    c.name: c
    for c in (
        _Curve(
            "P-256",
            2**256 - 2**224 + 2**192 + 2**96 - 1,
            0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
            32,
            bytes.fromhex("06082a8648ce3d030107"),
        ),
        _Curve(
            "P-384",
            2**384 - 2**128 - 2**96 + 2**32 - 1,
            int(
                "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875a"
                "c656398d8a2ed19d2a85c8edd3ec2aef",
                16,
            ),
            48,
            bytes.fromhex("06052b81040022"),
        ),
        _Curve(
            "P-521",
            2**521 - 1,
            int(
                "0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef1"
                "09e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b50"
                "3f00",
                16,
            ),
            66,
            bytes.fromhex("06052b81040023"),
        ),
    )
}
_OID_EC_PUBLIC_KEY: Final = bytes.fromhex("06072a8648ce3d0201")
_OID_RSA_NULL: Final = bytes.fromhex("06092a864886f70d0101010500")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _der_uint(n: int) -> bytes:
    # Go's asn1 INTEGER of a non-negative number: the fewest bytes, a 0 before a high bit.
    return _der(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))


def libtrust_key_id(spki_der: bytes) -> str:
    """A key's libtrust ID (the ``kid`` of its JWK) from its DER SubjectPublicKeyInfo:
    the first 240 bits of its sha256 in base32, in twelve groups of four joined by ``:``."""
    s = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode("ascii")
    return ":".join(s[i : i + 4] for i in range(0, len(s), 4))


def _ec_key_id(curve: _Curve, x: int, y: int) -> str:
    # Go's x509.MarshalPKIXPublicKey refuses a point off the curve, and libtrust's
    # keyIDFromCryptoKey then gives "".
    if not (x < curve.p and y < curve.p and (y * y - x * x * x + 3 * x - curve.b) % curve.p == 0):
        return ""
    point = b"\x04" + x.to_bytes(curve.size, "big") + y.to_bytes(curve.size, "big")
    algorithm = _der(0x30, _OID_EC_PUBLIC_KEY + curve.der_oid)
    return libtrust_key_id(_der(0x30, algorithm + _der(0x03, b"\x00" + point)))


def _rsa_key_id(n: int, e: int) -> str:
    pkcs1 = _der(0x30, _der_uint(n) + _der_uint(e))
    algorithm = _der(0x30, _OID_RSA_NULL)
    return libtrust_key_id(_der(0x30, algorithm + _der(0x03, b"\x00" + pkcs1)))


def _jwk_string(jwk: dict[str, Any], key: str, where: str) -> str:
    # libtrust's stringFromMap.
    if key not in jwk:
        raise ValueError(f"{where}: {key!r} value not specified")
    value = jwk[key]
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key!r} value must be a string")
    return value


def _jwk_bytes(jwk: dict[str, Any], key: str, where: str) -> bytes:
    value = _jwk_string(jwk, key, where)
    try:
        return _jose_b64decode(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {key!r}: invalid base64 URL encoding: {exc}") from None


def _check_jwk(data: bytes, what: str) -> None:
    """libtrust's UnmarshalPublicKeyJWK: an EC or RSA public key, its ``kid`` its own."""
    jwk = _decode(data, _MAP_ANY, what)
    if jwk is None:
        jwk = {}
    try:
        kty = _jwk_string(jwk, "kty", "key type")
        if kty == "EC":
            crv = _jwk_string(jwk, "crv", "EC curve")
            curve = _CURVES.get(crv)
            if curve is None:
                raise ValueError(f"EC curve {crv!r} not supported")
            coordinates = []
            for name in ("x", "y"):
                raw = _jwk_bytes(jwk, name, f"EC {name}-coordinate")
                if len(raw) != curve.size:
                    raise ValueError(
                        f"EC {name}-coordinate: {len(raw)} octets, should be {curve.size}"
                    )
                coordinates.append(int.from_bytes(raw, "big"))
            key_id = _ec_key_id(curve, *coordinates) if "kid" in jwk else ""
        elif kty == "RSA":
            n = int.from_bytes(_jwk_bytes(jwk, "n", "RSA modulus"), "big")
            e_raw = _jwk_bytes(jwk, "e", "RSA exponent")
            if len(e_raw) > 4:  # libtrust panics on it
                raise ValueError(f"RSA exponent: {len(e_raw)} octets, more than 4")
            e = int.from_bytes(e_raw, "big")
            key_id = _rsa_key_id(n, e) if "kid" in jwk else ""
        else:
            raise ValueError(f"key type {kty!r} not supported")
        if "kid" in jwk:
            kid = _jwk_string(jwk, "kid", "key ID")
            if kid != key_id:
                raise ValueError(f"key ID {kid!r} is not the key's")
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def _jws_payload(raw: bytes, signatures: bytes, what: str) -> bytes:
    """libtrust's ParsePrettySignature: the payload the signatures sign."""
    blocks = _decode(signatures, _JWS_SIGNATURES, f"{what}: signatures")
    if not blocks:
        raise InvalidInput(f"{what}: signatures: none (the payload would be empty)")
    format_length = 0
    format_tail = b""
    for i, block in enumerate(blocks):
        where = f"{what}: signatures[{i}]"
        if block["Header"] is None:  # Docker dereferences it: a panic
            raise InvalidInput(f"{where}.header: missing")
        try:
            protected_json = _jose_b64decode(block["Protected"])
        except ValueError as exc:
            raise InvalidInput(f"{where}.protected: {exc}") from None
        protected = _decode(protected_json, _MAP_ANY, f"{where}.protected") or {}
        number = protected.get("formatLength")
        if not isinstance(number, float):
            raise InvalidInput(f"{where}.protected: formatLength missing or not a number")
        # Go's int(float64); what it cannot hold comes out negative, and slicing panics.
        length = math.trunc(number) if number < 2.0**63 else -1
        if length < 0:
            raise InvalidInput(f"{where}.protected: formatLength {number:g} is out of range")
        encoded_tail = protected.get("formatTail")
        if not isinstance(encoded_tail, str):
            raise InvalidInput(f"{where}.protected: formatTail missing or not a string")
        try:
            tail = _jose_b64decode(encoded_tail)
        except ValueError as exc:
            raise InvalidInput(f"{where}.protected: formatTail: {exc}") from None
        # libtrust keeps the first non-zero length and the first non-empty tail.
        if format_length == 0:
            format_length = length
        elif format_length != length:
            raise InvalidInput(f"{where}.protected: formatLength conflicts with signatures[0]")
        if not format_tail:
            format_tail = tail
        elif format_tail != tail:
            raise InvalidInput(f"{where}.protected: formatTail conflicts with signatures[0]")
        jwk = block["Header"]["JWK"]
        if jwk is not None:
            _check_jwk(bytes(jwk), f"{where}.header.jwk")
    if format_length > len(raw):
        raise InvalidInput(
            f"{what}: signatures: formatLength {format_length} is longer than the manifest "
            f"({len(raw)} bytes)"
        )
    return raw[:format_length] + format_tail


def _split(raw: bytes, what: str) -> bytes:
    """The payload of a manifest, signed or not."""
    check_size(len(raw), MAX_MANIFEST, what, "a manifest")
    doc = _decode(raw, Map(RAW), what)
    if doc is None:
        raise InvalidInput(f"{what}: JSON null where a manifest object is required")
    signatures = doc.get("signatures")
    if signatures is None:
        return raw
    return _jws_payload(raw, bytes(signatures), what)


# --- public API -------------------------------------------------------------------------


def schema1_digest(raw: bytes) -> Digest:
    """The digest a registry gives a schema 1 manifest: that of its payload (a signed
    manifest's bytes without the signatures)."""
    return digest_bytes(_split(bytes(raw), "schema 1 manifest"))


def parse_schema1(raw: bytes, what: str) -> Schema1Manifest:
    """Read a schema 1 manifest as Docker 20.10's pull does (see the module's text);
    every refusal is one :class:`InvalidInput` line that starts with ``what`` and names
    the field."""
    raw = bytes(raw)
    payload = _split(raw, what)
    m = _decode(payload, _MANIFEST, f"{what}: payload" if payload is not raw else what)

    # verifySchema1Manifest
    if m["SchemaVersion"] != 1:
        raise InvalidInput(f"{what}: schemaVersion is {m['SchemaVersion']}, not 1")
    fs_layers = m["FSLayers"] or []
    history = m["History"] or []
    if len(fs_layers) != len(history):
        raise InvalidInput(
            f"{what}: history has {len(history)} entries for {len(fs_layers)} fsLayers"
        )
    if not fs_layers:
        raise InvalidInput(f"{what}: fsLayers is empty")

    # fixManifestLayers: the v1 IDs (top first, as the manifest lists them).
    v1_jsons = [h["V1Compatibility"].encode("utf-8") for h in history]
    images = []
    for i, data in enumerate(v1_jsons):
        where = f"{what}: history[{i}].v1Compatibility"
        img = _decode(data, v1.V1_IMAGE_LEGACY, where)
        if not is_identifier(img["ID"]):
            raise InvalidInput(f"{where}: id {img['ID']!r} is not a v1 ID (64 lowercase hex)")
        images.append(img)
    if images[-1]["Parent"] != "":
        raise InvalidInput(
            f"{what}: history[{len(images) - 1}].v1Compatibility: the bottom layer has a "
            f"parent ({images[-1]['Parent']!r})"
        )
    first_at: dict[str, int] = {}
    for i, img in enumerate(images):
        seen = first_at.setdefault(img["ID"], i)
        if seen != i and images[i - 1]["ID"] != img["ID"]:
            raise InvalidInput(
                f"{what}: history[{i}].v1Compatibility: id {img['ID']} is also that of "
                f"history[{seen}], with other ids between them"
            )
    for i in range(len(images) - 2, -1, -1):
        below = images[i + 1]["ID"]
        if images[i]["ID"] != below and images[i]["Parent"] != below:
            raise InvalidInput(
                f"{what}: history[{i}].v1Compatibility: parent "
                f"{images[i]['Parent']!r} is not the id below it ({below})"
            )
    keep = _kept_indexes([img["ID"] for img in images])

    # pullSchema1's loop, bottom first: blob digests, throwaway flags, history entries.
    layers: list[Schema1Layer] = []
    for i in keep:
        try:
            blob_sum = Digest(fs_layers[i]["BlobSum"])
        except InvalidInput as exc:
            raise InvalidInput(f"{what}: fsLayers[{i}].blobSum: {exc}") from None
        flag = _decode(v1_jsons[i], _THROWAWAY, f"{what}: history[{i}].v1Compatibility")
        layers.append(Schema1Layer(blob_sum, v1_jsons[i], flag["ThrowAway"]))
    downloaded = sum(1 for layer in layers if not layer.throwaway)
    if downloaded > MAX_LAYER_DEPTH:
        raise InvalidInput(
            f"{what}: {downloaded} layers, more than the maximum depth {MAX_LAYER_DEPTH}"
        )
    manifest = Schema1Manifest(
        m["Name"], m["Tag"], m["Architecture"], layers, payload, v1_jsons[keep[-1]]
    )
    return manifest


def _kept_indexes(ids: list[str]) -> list[int]:
    """The entries fixManifestLayers keeps, bottom first: of consecutive entries with one
    ID, the lowest (the last listed)."""
    return [i for i in range(len(ids) - 1, -1, -1) if i == len(ids) - 1 or ids[i] != ids[i + 1]]


def _config(manifest: Schema1Manifest, diff_ids: Sequence[str]) -> bytes:
    history = [
        v1.history_from_config(layer.v1_compatibility, layer.throwaway) for layer in manifest.layers
    ]
    rootfs = {"type": "layers", "diff_ids": list(diff_ids)}
    return v1.make_config_from_v1_config(manifest.v1_compatibility, rootfs, history)


def schema1_config(manifest: Schema1Manifest, diff_ids: Sequence[DiffID]) -> bytes:
    """The image config Docker makes for a schema 1 manifest, byte for byte: its sha256
    is Docker's image ID. ``diff_ids`` are those of the layers that are not throwaway,
    bottom first, as the layers turned out to be."""
    wanted = sum(1 for layer in manifest.layers if not layer.throwaway)
    if len(diff_ids) != wanted:
        raise InvalidInput(f"schema 1 manifest: {len(diff_ids)} DiffIDs given for {wanted} layers")
    return _config(manifest, [str(Digest(d)) for d in diff_ids])
