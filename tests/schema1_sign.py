"""Docker image manifests schema 1, signed as libtrust signs them, for the tests.

Docker (1.x) and Distribution's ``schema1.Sign`` write a manifest with Go's
``json.MarshalIndent(manifest, "", "   ")``, then sign it with libtrust: a JWS whose
protected header holds ``formatLength`` (the payload's length up to its last character
before the closing brace) and ``formatTail`` (the rest, base64url), and whose header
carries the signer's public key as a JWK; ``PrettySignature`` splices the signatures into
the payload as a ``"signatures"`` member. This module writes the same bytes with the
``cryptography`` package, independently of ocistore's reader, so that a registry
(Distribution verifies every signature of a schema 1 manifest pushed to it) and Docker
accept them: :func:`manifest_payload`, :class:`Key` (ECDSA P-256/P-384/P-521 or RSA) and
:func:`sign`. Everything here is deterministic except the ECDSA signatures themselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: What libtrust's protected header says the signature was made (a fixed time: the
#: bytes never depend on the clock).
SIGNED_AT = "2016-01-01T00:00:00Z"

_CURVES = {"P-256": (ec.SECP256R1(), 32, "ES256"), "P-384": (ec.SECP384R1(), 48, "ES384"),
           "P-521": (ec.SECP521R1(), 66, "ES512")}  # fmt: skip


def b64url(data: bytes) -> str:
    """libtrust's joseBase64UrlEncode: base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def go_json(value: Any, indent: int | None = None, prefix: str = "") -> bytes:
    """Go's ``json.Marshal`` (or ``MarshalIndent(value, prefix, " " * indent)``) of plain
    data whose dicts are already in Go's field order: non-ASCII kept, ``<``, ``>``, ``&``
    and U+2028/U+2029 escaped as Go escapes them."""
    text = json.dumps(
        value,
        ensure_ascii=False,
        indent=indent,
        separators=None if indent is not None else (",", ":"),
    )
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escape)
    if prefix:
        text = text.replace("\n", "\n" + prefix)
    return text.encode("utf-8")


def key_id(spki_der: bytes) -> str:
    """libtrust's keyIDFromCryptoKey: sha256 of the DER public key, 240 bits of it in
    base32, twelve groups of four."""
    s = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode("ascii")
    return ":".join(s[i : i + 4] for i in range(0, 48, 4))


@dataclass
class Key:
    """A libtrust private key: EC (P-256, P-384, P-521) or RSA."""

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def ec(cls, curve: str = "P-256") -> Key:
        return cls(ec.generate_private_key(_CURVES[curve][0]))

    @classmethod
    def rsa(cls, bits: int = 2048) -> Key:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=bits))

    def spki_der(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_id(self) -> str:
        return key_id(self.spki_der())

    def jwk(self) -> dict[str, str]:
        """The public key as libtrust marshals it (a Go map: keys sorted)."""
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            name = next(n for n, c in _CURVES.items() if c[0].name == self.private.curve.name)
            size = _CURVES[name][1]
            numbers = self.private.public_key().public_numbers()
            return {
                "crv": name,
                "kid": self.key_id(),
                "kty": "EC",
                "x": b64url(numbers.x.to_bytes(size, "big")),
                "y": b64url(numbers.y.to_bytes(size, "big")),
            }
        rsa_numbers = self.private.public_key().public_numbers()
        e = rsa_numbers.e
        return {
            "e": b64url(e.to_bytes((e.bit_length() + 7) // 8, "big")),
            "kid": self.key_id(),
            "kty": "RSA",
            "n": b64url(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
        }

    def sign(self, data: bytes) -> tuple[bytes, str]:
        """libtrust's Sign: (signature, alg); EC signatures are r and s, each padded to
        the curve's size."""
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            name = next(n for n, c in _CURVES.items() if c[0].name == self.private.curve.name)
            _, size, alg = _CURVES[name]
            hash_ = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hash_[alg])))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big"), alg
        return self.private.sign(data, padding.PKCS1v15(), hashes.SHA256()), "RS256"


def manifest_payload(
    name: str,
    tag: str,
    layers: Sequence[tuple[str, str]],
    architecture: str = "amd64",
) -> bytes:
    """A schema 1 manifest as Go's ``json.MarshalIndent(m, "", "   ")`` writes
    distribution's ``schema1.Manifest``; ``layers`` are ``(blobSum, v1Compatibility)``,
    top first, as the manifest lists them."""
    doc = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": architecture,
        "fsLayers": [{"blobSum": blob} for blob, _ in layers],
        "history": [{"v1Compatibility": v1} for _, v1 in layers],
    }
    return go_json(doc, indent=3)


def format_split(payload: bytes) -> tuple[int, bytes]:
    """libtrust's NewJSONSignature: ``formatLength`` (up to the last character before the
    closing brace) and ``formatTail`` (the rest)."""
    close = len(payload.rstrip()) - 1
    assert payload[close : close + 1] == b"}", "the payload must end with a JSON object"
    length = len(payload[:close].rstrip())
    assert payload[length - 1 : length] != b",", "a trailing comma"
    return length, payload[length:]


def protected_header(format_length: int, format_tail: bytes, signed_at: str = SIGNED_AT) -> str:
    """libtrust's protected header: a Go map (keys sorted), base64url."""
    header = {"formatLength": format_length, "formatTail": b64url(format_tail), "time": signed_at}
    return b64url(go_json(header))


def signature_block(payload: bytes, key: Key, protected: str) -> dict[str, Any]:
    """One entry of ``signatures``: a signature of ``protected.payload`` (base64url both)."""
    sig, alg = key.sign(protected.encode("ascii") + b"." + b64url(payload).encode("ascii"))
    return {
        "header": {"jwk": key.jwk(), "alg": alg},
        "signature": b64url(sig),
        "protected": protected,
    }


def pretty(payload: bytes, blocks: Sequence[dict[str, Any]]) -> bytes:
    """libtrust's PrettySignature: the payload up to ``formatLength``, then the
    signatures, indented as the payload is (detectJSONIndent), then the closing brace."""
    length, _ = format_split(payload)
    indent = ""
    if payload[:2] == b"{\n":
        indent = payload[2 : payload.index(b'"', 1)].decode()
    if not indent:
        return payload[:length] + b',"signatures":' + go_json(list(blocks)) + b"}"
    marshalled = go_json(list(blocks), indent=len(indent), prefix=indent)
    return payload[:length] + b",\n" + indent.encode() + b'"signatures": ' + marshalled + b"\n}"


def sign(payload: bytes, keys: Sequence[Key] = (), signed_at: str = SIGNED_AT) -> bytes:
    """``payload`` signed by each of ``keys`` (one new P-256 key when none is given), as
    libtrust's ``Sign`` then ``PrettySignature`` write it."""
    length, tail = format_split(payload)
    protected = protected_header(length, tail, signed_at)
    keys = list(keys) or [Key.ec()]
    blocks = [signature_block(payload, key, protected) for key in keys]
    # libtrust sorts the signatures by key ID, then by signature.
    blocks.sort(key=lambda b: (b["header"]["jwk"]["kid"], b["signature"]))
    return pretty(payload, blocks)
