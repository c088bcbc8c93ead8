"""Go's ``encoding/json``, byte for byte, for the few types ocistore needs.

Docker derives identities (legacy v1 layer IDs, converted image configs) from the exact
bytes Go's ``encoding/json`` produces when it marshals Docker's structs. To reproduce
them this module models a small part of Go's type system and both directions of
``encoding/json``:

* :func:`unmarshal` parses JSON bytes the way Go's decoder does (strict RFC 8259 syntax,
  invalid UTF-8 and lone surrogates become U+FFFD, object keys match struct fields exactly
  or case-insensitively, unknown fields are dropped, ``null`` leaves non-nullable values
  alone, later duplicate keys win and merge into structs and maps) into a Python value
  shaped by a Go type description;
* :func:`marshal` writes such a value the way Go's encoder does (compact, struct fields in
  declaration order, map keys sorted, ``omitempty``, ``null`` for nil slices, maps and
  pointers, HTML-safe string escaping, Go's float formatting, RawMessage compacted and
  HTML-escaped, ``time.Time`` as RFC 3339 with nanoseconds).

Go types are described declaratively with :class:`Struct` and :class:`Field` and the
constructors below (:data:`STRING`, :data:`BOOL`, :data:`INT64`, :class:`Ptr`,
:class:`Slice`, :class:`Map`, :data:`TIME`, :data:`RAW`, :data:`STRSLICE`, :data:`ANY`).

Python values stand for Go values as follows: ``str``, ``bool``, ``int``, ``float`` for
the scalar kinds; :class:`GoTime` for ``time.Time``; :class:`RawMessage` (bytes) for
``json.RawMessage``; ``None`` or the element value for a pointer; ``None`` or a ``list``
for a slice; ``None`` or a ``dict`` for a map; a ``dict`` keyed by Go field name holding
every field for a struct. Plain Python data (``dict``, ``list``, ...) stands for Go's
``interface{}`` values.

The behaviour modelled is that of current Go (1.22 and later): ``\\b`` and ``\\f`` are
written as short escapes, and ``time.Time`` parsing and formatting follow the RFC 3339
rules of Go 1.20 and later.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from ...errors import InvalidInput
from ..gotime import GoTime, GoTimeError

__all__ = [
    "ANY",
    "BOOL",
    "FLOAT64",
    "INT",
    "INT64",
    "RAW",
    "STRING",
    "STRSLICE",
    "TIME",
    "UINT64",
    "Field",
    "GoJSONError",
    "GoTime",
    "GoType",
    "Map",
    "Ptr",
    "RawMessage",
    "Slice",
    "Struct",
    "compact",
    "encode_string",
    "format_float",
    "go_quote",
    "indent",
    "marshal",
    "marshal_value",
    "parse",
    "unmarshal",
    "valid",
    "zero",
]


class GoJSONError(InvalidInput):
    """JSON that Go's ``encoding/json`` would reject, or a value it cannot marshal."""


# ---------------------------------------------------------------------------------------
# Go type descriptions


class GoType:
    """Base of the Go type descriptions: immutable, equal when they describe the same type.

    Plain classes with slots, not dataclasses: the descriptions of Docker's structs are
    built at import, and creating a dataclass is slow (its methods are made with ``exec``)."""

    __slots__ = ()

    def _key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, *self._key()))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}{self._key()!r}"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def __reduce__(self) -> tuple[type[GoType], tuple[Any, ...]]:
        # copy and pickle rebuild through __init__ (they cannot set the slots).
        return (self.__class__, self._key())


class _Scalar(GoType):
    __slots__ = ("bits", "kind")

    kind: str  # "string", "bool", "int", "uint", "float", "time", "raw", "strslice", "any"
    bits: int

    def __init__(self, kind: str, bits: int = 64) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "bits", bits)

    def _key(self) -> tuple[Any, ...]:
        return (self.kind, self.bits)


#: Go ``string``.
STRING: Final = _Scalar("string")
#: Go ``bool``.
BOOL: Final = _Scalar("bool")
#: Go ``int`` (64 bits, as on every platform Docker ships for) and ``time.Duration``.
INT: Final = _Scalar("int", 64)
#: Go ``int64``.
INT64: Final = _Scalar("int", 64)
#: Go ``uint64``.
UINT64: Final = _Scalar("uint", 64)
#: Go ``float64``.
FLOAT64: Final = _Scalar("float", 64)
#: Go ``time.Time`` (marshals as an RFC 3339 string with nanoseconds).
TIME: Final = _Scalar("time")
#: Go ``json.RawMessage``.
RAW: Final = _Scalar("raw")
#: Docker's ``strslice.StrSlice``: a ``[]string`` that also unmarshals from one string.
STRSLICE: Final = _Scalar("strslice")
#: Go ``interface{}``.
ANY: Final = _Scalar("any")


class _Composite(GoType):
    __slots__ = ("elem",)

    elem: GoType

    def __init__(self, elem: GoType) -> None:
        object.__setattr__(self, "elem", elem)

    def _key(self) -> tuple[Any, ...]:
        return (self.elem,)


class Ptr(_Composite):
    """Go ``*T``."""

    __slots__ = ()


class Slice(_Composite):
    """Go ``[]T``."""

    __slots__ = ()


class Map(_Composite):
    """Go ``map[string]T`` (also any named string key type, such as ``nat.Port``)."""

    __slots__ = ()


class Field(NamedTuple):
    """One exported struct field: its Go name, type and ``json`` tag."""

    go_name: str
    type: GoType
    json_name: str = ""
    omitempty: bool = False

    @property
    def name(self) -> str:
        """The key the field has in JSON."""
        return self.json_name or self.go_name


class Struct(GoType):
    """A Go struct: its exported fields in declaration order (embedded ones flattened)."""

    __slots__ = ("_by_fold", "_by_name", "fields", "name")

    name: str
    fields: tuple[Field, ...]
    _by_name: dict[str, Field]
    _by_fold: dict[str, Field]

    def __init__(self, name: str, fields: tuple[Field, ...]) -> None:
        by_name: dict[str, Field] = {}
        by_fold: dict[str, Field] = {}
        for f in fields:
            if f.name in by_name:
                raise ValueError(f"struct {name}: duplicate json name {f.name!r}")
            by_name[f.name] = f
            by_fold.setdefault(_fold_name(f.name), f)
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "fields", fields)
        set_(self, "_by_name", by_name)
        set_(self, "_by_fold", by_fold)

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.fields)

    def field_for_key(self, key: str) -> Field | None:
        """The field an object key decodes into: exact name first, then case-folded."""
        f = self._by_name.get(key)
        if f is None:
            f = self._by_fold.get(_fold_name(key))
        return f


def _fold_name(name: str) -> str:
    # Go's foldName: ASCII upper-cased, other runes mapped to the smallest rune of their
    # simple case-fold orbit. Only the two non-ASCII runes whose orbit holds an ASCII
    # letter can ever match an ASCII name; others are kept as they are.
    out = []
    for ch in name:
        if "a" <= ch <= "z":
            out.append(chr(ord(ch) - 32))
        elif ch == "\u212a":  # KELVIN SIGN folds with K
            out.append("K")
        elif ch == "\u017f":  # LATIN SMALL LETTER LONG S folds with S
            out.append("S")
        else:
            out.append(ch)
    return "".join(out)


class RawMessage(bytes):
    """Go ``json.RawMessage``: JSON bytes kept as they were read."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------
# Parsing JSON the way Go's scanner and decoder do


_WS: Final = frozenset(b" \t\n\r")
_NUMBER: Final = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_VALID_UTF8_RUN: Final = re.compile(
    rb"(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})+"
)
_MAX_DEPTH: Final = 10000


def _go_decode_utf8(b: bytes) -> str:
    """Bytes to text as Go ranges over them: each invalid byte becomes one U+FFFD."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    i = 0
    while i < len(b):
        m = _VALID_UTF8_RUN.match(b, i)
        if m is None:
            out.append("\ufffd")
            i += 1
        else:
            out.append(m.group().decode("utf-8"))
            i = m.end()
    return "".join(out)


class Node(NamedTuple):
    """A parsed JSON value and where its bytes are in the input.

    ``kind`` is one of ``object`` (value: list of ``(key, Node)`` in input order),
    ``array`` (list of Node), ``string`` (str), ``number`` (the literal text), ``bool``,
    ``null``.
    """

    kind: str
    value: Any
    start: int
    end: int


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, msg: str) -> GoJSONError:
        return GoJSONError(f"invalid JSON: {msg} at offset {self.pos}")

    def skip_ws(self) -> None:
        data = self.data
        n = len(data)
        while self.pos < n and data[self.pos] in _WS:
            self.pos += 1

    def value(self, depth: int) -> Node:
        if depth > _MAX_DEPTH:
            raise self.error("exceeded max depth")
        self.skip_ws()
        data = self.data
        if self.pos >= len(data):
            raise self.error("unexpected end of JSON input")
        c = data[self.pos]
        start = self.pos
        if c == 0x7B:  # {
            return self.obj(depth)
        if c == 0x5B:  # [
            return self.arr(depth)
        if c == 0x22:  # "
            s = self.string()
            return Node("string", s, start, self.pos)
        if c == 0x2D or 0x30 <= c <= 0x39:
            m = _NUMBER.match(data, self.pos)
            if m is None:
                raise self.error("invalid number literal")
            self.pos = m.end()
            return Node("number", m.group().decode("ascii"), start, self.pos)
        for lit, kind, val in ((b"true", "bool", True), (b"false", "bool", False)):
            if data.startswith(lit, self.pos):
                self.pos += len(lit)
                return Node(kind, val, start, self.pos)
        if data.startswith(b"null", self.pos):
            self.pos += 4
            return Node("null", None, start, self.pos)
        raise self.error(f"invalid character {chr(c)!r} looking for beginning of value")

    def obj(self, depth: int) -> Node:
        start = self.pos
        self.pos += 1
        items: list[tuple[str, Node]] = []
        self.skip_ws()
        if self.pos < len(self.data) and self.data[self.pos] == 0x7D:
            self.pos += 1
            return Node("object", items, start, self.pos)
        while True:
            self.skip_ws()
            if self.pos >= len(self.data) or self.data[self.pos] != 0x22:
                raise self.error("expected string for object key")
            key = self.string()
            self.skip_ws()
            if self.pos >= len(self.data) or self.data[self.pos] != 0x3A:
                raise self.error("expected ':' after object key")
            self.pos += 1
            items.append((key, self.value(depth + 1)))
            self.skip_ws()
            if self.pos >= len(self.data):
                raise self.error("unexpected end of JSON input")
            c = self.data[self.pos]
            self.pos += 1
            if c == 0x7D:
                return Node("object", items, start, self.pos)
            if c != 0x2C:
                raise self.error("expected ',' or '}' after object value")

    def arr(self, depth: int) -> Node:
        start = self.pos
        self.pos += 1
        items: list[Node] = []
        self.skip_ws()
        if self.pos < len(self.data) and self.data[self.pos] == 0x5D:
            self.pos += 1
            return Node("array", items, start, self.pos)
        while True:
            items.append(self.value(depth + 1))
            self.skip_ws()
            if self.pos >= len(self.data):
                raise self.error("unexpected end of JSON input")
            c = self.data[self.pos]
            self.pos += 1
            if c == 0x5D:
                return Node("array", items, start, self.pos)
            if c != 0x2C:
                raise self.error("expected ',' or ']' after array element")

    def string(self) -> str:
        data = self.data
        n = len(data)
        self.pos += 1  # opening quote
        parts: list[str] = []
        run_start = self.pos
        while True:
            if self.pos >= n:
                raise self.error("unexpected end of JSON input in string")
            c = data[self.pos]
            if c == 0x22:
                parts.append(_go_decode_utf8(data[run_start : self.pos]))
                self.pos += 1
                return "".join(parts)
            if c < 0x20:
                raise self.error("invalid control character in string literal")
            if c != 0x5C:
                self.pos += 1
                continue
            parts.append(_go_decode_utf8(data[run_start : self.pos]))
            self.pos += 1
            if self.pos >= n:
                raise self.error("unexpected end of JSON input in string escape")
            e = data[self.pos]
            simple = _SIMPLE_UNESCAPES.get(e)
            if simple is not None:
                parts.append(simple)
                self.pos += 1
            elif e == 0x75:  # u
                r = self._hex4(self.pos + 1)
                if r is None:
                    raise self.error("invalid \\u escape in string literal")
                self.pos += 5
                if 0xD800 <= r < 0xE000:
                    r2 = None
                    if data.startswith(b"\\u", self.pos):
                        r2 = self._hex4(self.pos + 2)
                    if 0xD800 <= r < 0xDC00 and r2 is not None and 0xDC00 <= r2 < 0xE000:
                        parts.append(chr(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)))
                        self.pos += 6
                    else:
                        parts.append("\ufffd")
                else:
                    parts.append(chr(r))
            else:
                raise self.error("invalid escape in string literal")
            run_start = self.pos

    def _hex4(self, at: int) -> int | None:
        chunk = self.data[at : at + 4]
        if len(chunk) != 4 or not all(c in _HEX_DIGITS for c in chunk):
            return None
        return int(chunk, 16)


_SIMPLE_UNESCAPES: Final = {
    0x22: '"',
    0x5C: "\\",
    0x2F: "/",
    0x62: "\b",
    0x66: "\f",
    0x6E: "\n",
    0x72: "\r",
    0x74: "\t",
}
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")


def parse(data: bytes) -> Node:
    """Parse one JSON document as Go does (whitespace around it is allowed)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("gojson.parse needs bytes")
    p = _Parser(bytes(data))
    try:
        node = p.value(0)
    except RecursionError:
        raise GoJSONError("invalid JSON: nesting too deep") from None
    p.skip_ws()
    if p.pos != len(p.data):
        raise p.error("invalid character after top-level value")
    return node


def valid(data: bytes) -> bool:
    """Whether Go's ``json.Valid`` accepts the bytes."""
    try:
        parse(data)
    except GoJSONError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Decoding into Go-typed values


def zero(t: GoType) -> Any:
    """The zero value of a Go type."""
    if isinstance(t, _Scalar):
        return {
            "string": "",
            "bool": False,
            "int": 0,
            "uint": 0,
            "float": 0.0,
            "time": GoTime(),
            "raw": None,
        }.get(t.kind)
    if isinstance(t, Struct):
        return {f.go_name: zero(f.type) for f in t.fields}
    return None  # pointers, slices, maps, interfaces


def unmarshal(data: bytes, t: GoType, into: Any = None) -> Any:
    """Go's ``json.Unmarshal(data, &v)`` for a ``v`` of type ``t``.

    ``into`` is the value ``v`` holds before (its zero value when omitted); Go decodes
    into it, so fields absent from the JSON keep what they had.
    """
    (value,) = unmarshal_each(data, (t,), into)
    return value


def unmarshal_each(data: bytes, types: Sequence[GoType], into: Any = None) -> list[Any]:
    """:func:`unmarshal` of the same bytes into each of ``types``, parsed once."""
    node = parse(data)
    decoder = _Decoder(bytes(data))
    return [
        decoder.decode(node, t, zero(t) if into is None and isinstance(t, Struct) else into)
        for t in types
    ]


def _type_name(t: GoType) -> str:
    if isinstance(t, _Scalar):
        return t.kind
    if isinstance(t, Struct):
        return t.name
    if isinstance(t, Ptr):
        return "*" + _type_name(t.elem)
    if isinstance(t, Slice):
        return "[]" + _type_name(t.elem)
    if isinstance(t, Map):
        return "map[string]" + _type_name(t.elem)
    return "?"


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def mismatch(self, node: Node, t: GoType, where: str) -> GoJSONError:
        what = {"object": "object", "array": "array", "string": "string", "number": "number"}
        return GoJSONError(
            f"json: cannot unmarshal {what.get(node.kind, node.kind)} into Go value of "
            f"type {_type_name(t)}" + (f" (field {where})" if where else "")
        )

    def decode(self, node: Node, t: GoType, cur: Any, where: str = "") -> Any:
        kind = node.kind
        if isinstance(t, Ptr):
            if kind == "null":
                return None
            base = cur if cur is not None else zero(t.elem)
            return self.decode(node, t.elem, base, where)
        if isinstance(t, Struct):
            if kind == "null":
                return cur if cur is not None else zero(t)
            if kind != "object":
                raise self.mismatch(node, t, where)
            out = dict(cur) if cur is not None else zero(t)
            for key, sub in node.value:
                f = t.field_for_key(key)
                if f is None:
                    continue
                name = f"{where}.{f.name}" if where else f.name
                out[f.go_name] = self.decode(sub, f.type, out.get(f.go_name), name)
            return out
        if isinstance(t, Map):
            if kind == "null":
                return None
            if kind != "object":
                raise self.mismatch(node, t, where)
            mout: dict[str, Any] = dict(cur) if cur is not None else {}
            for key, sub in node.value:
                mout[key] = self.decode(sub, t.elem, zero(t.elem), f"{where}[{key!r}]")
            return mout
        if isinstance(t, Slice):
            if kind == "null":
                return None
            if kind != "array":
                raise self.mismatch(node, t, where)
            old = cur if isinstance(cur, list) else []
            return [
                self.decode(sub, t.elem, old[i] if i < len(old) else zero(t.elem), where)
                for i, sub in enumerate(node.value)
            ]
        assert isinstance(t, _Scalar)
        return self.scalar(node, t, cur, where)

    def scalar(self, node: Node, t: _Scalar, cur: Any, where: str) -> Any:
        kind = node.kind
        k = t.kind
        if k == "any":
            return self.generic(node)
        if k == "raw":
            return RawMessage(self.data[node.start : node.end])
        if k == "time":
            if kind == "null":
                return cur if cur is not None else GoTime()
            if kind != "string":
                raise GoJSONError(
                    "Time.UnmarshalJSON: input is not a JSON string"
                    + (f" (field {where})" if where else "")
                )
            # Go parses the bytes between the quotes as they are, without unescaping.
            try:
                return GoTime.parse_rfc3339(self.data[node.start + 1 : node.end - 1])
            except GoTimeError as e:
                raise GoJSONError(str(e)) from None
        if k == "strslice":
            if kind == "null":
                return None
            if kind == "string":
                return [node.value]
            if kind == "array":
                return [self.decode(sub, STRING, "", where) for sub in node.value]
            raise self.mismatch(node, t, where)
        if kind == "null":
            return cur if cur is not None else zero(t)
        if k == "string":
            if kind != "string":
                raise self.mismatch(node, t, where)
            return node.value
        if k == "bool":
            if kind != "bool":
                raise self.mismatch(node, t, where)
            return node.value
        if kind != "number":
            raise self.mismatch(node, t, where)
        text: str = node.value
        if k == "float":
            v = float(text)
            if math.isinf(v):
                raise GoJSONError(
                    f"json: cannot unmarshal number {text} into Go value of type float64"
                )
            return v
        if not re.fullmatch(r"-?[0-9]+", text):
            raise GoJSONError(
                f"json: cannot unmarshal number {text} into Go value of type {k}{t.bits}"
                + (f" (field {where})" if where else "")
            )
        n = int(text)
        lo, hi = (
            (-(1 << (t.bits - 1)), (1 << (t.bits - 1)) - 1)
            if k == "int"
            else (0, (1 << t.bits) - 1)
        )
        if not lo <= n <= hi or (k == "uint" and text.startswith("-")):
            raise GoJSONError(
                f"json: cannot unmarshal number {text} into Go value of type {k}{t.bits}"
                + (f" (field {where})" if where else "")
            )
        return n

    def generic(self, node: Node) -> Any:
        kind = node.kind
        if kind == "object":
            return {k: self.generic(v) for k, v in node.value}
        if kind == "array":
            return [self.generic(v) for v in node.value]
        if kind == "number":
            v = float(node.value)
            if math.isinf(v):
                raise GoJSONError(
                    f"json: cannot unmarshal number {node.value} into Go value of type float64"
                )
            return v
        return node.value


# ---------------------------------------------------------------------------------------
# Encoding

_HEX: Final = "0123456789abcdef"


def _escape_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for c in range(0x20):
        table[c] = "\\u00" + _HEX[c >> 4] + _HEX[c & 0xF]
    table.update({0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
    table[ord('"')] = '\\"'
    table[ord("\\")] = "\\\\"
    for ch in "<>&":
        table[ord(ch)] = "\\u00" + _HEX[ord(ch) >> 4] + _HEX[ord(ch) & 0xF]
    table[0x2028] = "\\u2028"
    table[0x2029] = "\\u2029"
    for c in range(0xD800, 0xE000):  # not text: Go writes invalid UTF-8 as \ufffd
        table[c] = "\\ufffd"
    return table


_ESCAPES: Final = _escape_table()
_NEEDS_ESCAPE: Final = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')


_GO_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(s: str, quote: str = '"', ascii_only: bool = False) -> str:
    """Go's ``strconv.Quote`` (``QuoteToASCII``, ``QuoteRune`` with ``'``): what is not
    printable escaped, an undecodable byte (a surrogate escape) as ``\\xff``."""
    out = [quote]
    for c in s:
        o = ord(c)
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif (o < 0x80 or not ascii_only) and c.isprintable():
            out.append(c)
        elif c in _GO_ESCAPES:
            out.append(_GO_ESCAPES[c])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o if not 0xD800 <= o <= 0xDFFF else 0xFFFD:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append(quote)
    return "".join(out)


def encode_string(s: str) -> bytes:
    """A string as Go's encoder writes it, HTML-escaped (``<``, ``>``, ``&``)."""
    if _NEEDS_ESCAPE.search(s):
        s = s.translate(_ESCAPES)
    return b'"' + s.encode("utf-8") + b'"'


def format_float(f: float) -> str:
    """Go's encoding of a float64 as a JSON number.

    Go writes the shortest decimal that reads back as the same float64, in ``'f'``
    format unless the exponent is below -6 or at least 21, where it uses ``'e'`` format
    and shortens a two-digit negative exponent (``1e-07`` becomes ``1e-7``).
    """
    if math.isnan(f) or math.isinf(f):
        raise GoJSONError(f"json: unsupported value: {f!r}")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    a = abs(f)
    use_e = a < 1e-6 or a >= 1e21
    digits, exp = _shortest_digits(f)
    sign = "-" if f < 0 else ""
    if use_e:
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        e = exp - 1
        es = f"{abs(e):02d}"
        out = f"{sign}{mant}e{'-' if e < 0 else '+'}{es}"
        # Go then turns e-07 into e-7 (only for negative two-digit exponents).
        if len(out) >= 4 and out[-4] == "e" and out[-3] == "-" and out[-2] == "0":
            out = out[:-2] + out[-1]
        return out
    # 'f' format: digits with the decimal point placed after `exp` digits.
    if exp <= 0:
        return f"{sign}0.{'0' * (-exp)}{digits}"
    if exp >= len(digits):
        return f"{sign}{digits}{'0' * (exp - len(digits))}"
    return f"{sign}{digits[:exp]}.{digits[exp:]}"


def _shortest_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of |f| and the decimal exponent: 0.d1d2... x 10^exp."""
    r = repr(abs(f))
    mant, _, e = r.partition("e")
    exp = int(e) if e else 0
    intpart, _, frac = mant.partition(".")
    if frac == "0":
        frac = ""
    digits = intpart + frac
    exp += len(intpart)
    stripped = digits.lstrip("0")
    exp -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    return digits, exp


def compact(data: bytes, escape_html: bool = True) -> bytes:
    """Go's ``json.Compact`` (with HTML escaping, as Marshal applies it to RawMessage).

    Whitespace outside strings is dropped; inside strings ``<``, ``>``, ``&`` and the
    U+2028/U+2029 line separators are escaped and every other byte is kept as it is.
    The input must be valid JSON.
    """
    parse(data)  # Go validates while compacting
    out = bytearray()
    i = 0
    n = len(data)
    in_string = False
    while i < n:
        c = data[i]
        if in_string:
            if c == 0x5C:  # backslash: copy the escape pair
                out += data[i : i + 2]
                i += 2
                continue
            if c == 0x22:
                in_string = False
            elif escape_html and c in (0x3C, 0x3E, 0x26):
                out += ("\\u00" + _HEX[c >> 4] + _HEX[c & 0xF]).encode()
                i += 1
                continue
            elif (
                escape_html
                and c == 0xE2
                and i + 2 < n
                and data[i + 1] == 0x80
                and data[i + 2] & ~1 == 0xA8
            ):
                out += ("\\u202" + _HEX[data[i + 2] & 0xF]).encode()
                i += 3
                continue
            out.append(c)
        elif c in _WS:
            pass
        else:
            if c == 0x22:
                in_string = True
            out.append(c)
        i += 1
    return bytes(out)


def _is_empty(t: GoType, v: Any) -> bool:
    # Go's isEmptyValue for omitempty: structs (and time.Time) are never empty.
    if isinstance(t, Struct):
        return False
    if isinstance(t, Ptr | Slice | Map):
        return v is None or (not isinstance(t, Ptr) and len(v) == 0)
    assert isinstance(t, _Scalar)
    if t.kind in ("time",):
        return False
    if t.kind in ("raw", "strslice", "any"):
        if t.kind == "any":
            return v is None
        return v is None or len(v) == 0
    return not v


def _time_json(t: GoTime) -> bytes:
    try:
        return t.marshal_json()
    except GoTimeError as e:
        raise GoJSONError(str(e)) from None


def marshal(value: Any, t: GoType) -> bytes:
    """Go's ``json.Marshal`` of a value of Go type ``t``."""
    out = bytearray()
    _encode(out, value, t)
    return bytes(out)


def _encode(out: bytearray, v: Any, t: GoType) -> None:
    if isinstance(t, Struct):
        if not isinstance(v, Mapping):
            raise TypeError(f"{t.name}: need a dict of fields, got {type(v).__name__}")
        out += b"{"
        first = True
        for f in t.fields:
            fv = v.get(f.go_name, None)
            if fv is None and f.go_name not in v:
                fv = zero(f.type)
            if f.omitempty and _is_empty(f.type, fv):
                continue
            if not first:
                out += b","
            first = False
            out += encode_string(f.name)
            out += b":"
            _encode(out, fv, f.type)
        out += b"}"
        return
    if isinstance(t, Ptr):
        if v is None:
            out += b"null"
        else:
            _encode(out, v, t.elem)
        return
    if isinstance(t, Slice):
        if v is None:
            out += b"null"
            return
        out += b"["
        for i, item in enumerate(v):
            if i:
                out += b","
            _encode(out, item, t.elem)
        out += b"]"
        return
    if isinstance(t, Map):
        if v is None:
            out += b"null"
            return
        _encode_map(out, v, lambda o, item: _encode(o, item, t.elem))
        return
    assert isinstance(t, _Scalar)
    k = t.kind
    if k == "any":
        _encode_any(out, v)
    elif k == "raw":
        out += b"null" if v is None else compact(bytes(v))
    elif k == "time":
        if not isinstance(v, GoTime):
            raise TypeError(f"time.Time needs a GoTime, got {type(v).__name__}")
        out += _time_json(v)
    elif k == "strslice":
        _encode(out, v, Slice(STRING))
    elif k == "string":
        if not isinstance(v, str):
            raise TypeError(f"string needs a str, got {type(v).__name__}")
        out += encode_string(v)
    elif k == "bool":
        out += b"true" if v else b"false"
    elif k in ("int", "uint"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{k}{t.bits} needs an int, got {type(v).__name__}")
        out += str(v).encode("ascii")
    elif k == "float":
        out += format_float(float(v)).encode("ascii")
    else:  # pragma: no cover - every kind is handled above
        raise TypeError(f"unknown Go type {t!r}")


def _encode_map(
    out: bytearray, m: Mapping[str, Any], item: Callable[[bytearray, Any], None]
) -> None:
    keys = sorted(m, key=lambda s: s.encode("utf-8", "surrogatepass"))
    out += b"{"
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            raise TypeError(f"map keys must be str, got {type(key).__name__}")
        if i:
            out += b","
        out += encode_string(key)
        out += b":"
        item(out, m[key])
    out += b"}"


def _encode_any(out: bytearray, v: Any) -> None:
    if v is None:
        out += b"null"
    elif isinstance(v, bool):
        out += b"true" if v else b"false"
    elif isinstance(v, RawMessage):
        out += compact(bytes(v))
    elif isinstance(v, GoTime):
        out += _time_json(v)
    elif isinstance(v, str):
        out += encode_string(v)
    elif isinstance(v, int):
        out += str(v).encode("ascii")
    elif isinstance(v, float):
        out += format_float(v).encode("ascii")
    elif isinstance(v, Mapping):
        _encode_map(out, v, _encode_any)
    elif isinstance(v, Sequence | Iterable) and not isinstance(v, bytes | bytearray):
        out += b"["
        for i, item in enumerate(v):
            if i:
                out += b","
            _encode_any(out, item)
        out += b"]"
    else:
        raise TypeError(f"json: unsupported type {type(v).__name__}")


def marshal_value(value: Any) -> bytes:
    """Go's ``json.Marshal`` of plain data, as if held in ``interface{}`` values.

    ``dict`` is a map (keys sorted), ``list``/``tuple`` a slice, ``None`` nil, ``float``
    a float64, ``int`` an integer; :class:`RawMessage` and :class:`GoTime` marshal as
    Go's ``json.RawMessage`` and ``time.Time`` do.
    """
    out = bytearray()
    _encode_any(out, value)
    return bytes(out)


def indent(data: bytes, indent: str = "    ", prefix: str = "") -> bytes:
    """Go's ``json.Indent`` of valid compact JSON: a line per element, ``": "`` after
    keys, empty objects and arrays kept as ``{}`` and ``[]``, strings copied as they are
    (their escapes untouched), as docker prints ``inspect`` output."""
    out = bytearray()
    step = indent.encode()
    newline = b"\n" + prefix.encode()
    depth = 0
    i = 0
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x22:  # a string: copied to its closing quote
            j = i + 1
            while data[j] != 0x22:
                j += 2 if data[j] == 0x5C else 1
            out += data[i : j + 1]
            i = j + 1
            continue
        if c in (0x7B, 0x5B):  # { [
            if i + 1 < n and data[i + 1] in (0x7D, 0x5D):  # empty: kept compact
                out += data[i : i + 2]
                i += 2
                continue
            depth += 1
            out.append(c)
            out += newline + step * depth
        elif c in (0x7D, 0x5D):  # } ]
            depth -= 1
            out += newline + step * depth
            out.append(c)
        elif c == 0x2C:  # ,
            out.append(c)
            out += newline + step * depth
        elif c == 0x3A:  # :
            out += b": "
        elif c not in _WS:
            out.append(c)
        i += 1
    return bytes(out)
