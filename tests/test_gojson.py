"""Go's encoding/json, byte for byte (vectors from Go's own tests where they exist)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ocistore.errors import InvalidInput
from ocistore.spec.legacy import gojson
from ocistore.spec.legacy.gojson import (
    ANY,
    BOOL,
    FLOAT64,
    INT,
    INT64,
    RAW,
    STRING,
    STRSLICE,
    TIME,
    UINT64,
    Field,
    GoJSONError,
    GoTime,
    Map,
    Ptr,
    RawMessage,
    Slice,
    Struct,
)

# --- strings -----------------------------------------------------------------------------

# Go's encoding/json encodeStringTests (Go 1.22+ writes \b and \f short).
_CONTROL = {
    0x08: '"\\b"',
    0x09: '"\\t"',
    0x0A: '"\\n"',
    0x0C: '"\\f"',
    0x0D: '"\\r"',
}


@pytest.mark.parametrize("c", range(0x20))
def test_encode_control_characters(c: int) -> None:
    want = _CONTROL.get(c, f'"\\u{c:04x}"')
    assert gojson.encode_string(chr(c)) == want.encode()


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", b'""'),
        ("\\", b'"\\\\"'),
        ("\u272d", '"\u272d"'.encode()),
        ("ascii", b'"ascii"'),
        ('"a', b'"\\"a"'),
        ("\x1fa", b'"\\u001fa"'),
        ('foo"bar"baz', b'"foo\\"bar\\"baz"'),
        ("\x7f", b'"\x7f"'),
        ("a/b", b'"a/b"'),
        ("<html>&", b'"\\u003chtml\\u003e\\u0026"'),
        ("\u2028\u2029", b'"\\u2028\\u2029"'),
        ("\ud800", b'"\\ufffd"'),  # not text: Go writes invalid UTF-8 as \ufffd
        ("\U0001f600", '"\U0001f600"'.encode()),
    ],
)
def test_encode_string(text: str, want: bytes) -> None:
    assert gojson.encode_string(text) == want


def test_html_escape_vector_from_go() -> None:
    # Go's TestHTMLEscape, through Compact with HTML escaping (what RawMessage gets).
    m = b'{"M":"<html>foo &' + b"\xe2\x80\xa8 \xe2\x80\xa9" + b'</html>"}'
    assert gojson.compact(m) == (
        b'{"M":"\\u003chtml\\u003efoo \\u0026\\u2028 \\u2029\\u003c/html\\u003e"}'
    )


def test_compact_keeps_string_bytes_and_drops_whitespace() -> None:
    src = b' { "a" : [ 1 , 2.50 , "x\\/y \\u00e9 \xff" ] ,\n\t"b":{ } } '
    assert gojson.compact(src) == b'{"a":[1,2.50,"x\\/y \\u00e9 \xff"],"b":{}}'
    assert gojson.compact(src, escape_html=False) == gojson.compact(src)
    with pytest.raises(GoJSONError):
        gojson.compact(b'{"a":}')


# --- decoding strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b'"\\u00e9\\n\\/"', "\u00e9\n/"),
        (b'"\\ud83d\\ude00"', "\U0001f600"),
        (b'"\\ud83d"', "\ufffd"),
        (b'"\\ude00\\ud83d"', "\ufffd\ufffd"),
        (b'"\\ud83dx"', "\ufffdx"),
        (b'"a\xffb"', "a\ufffdb"),
        (b'"\xe2\x80z"', "\ufffd\ufffdz"),
        (b'"\xed\xa0\x80"', "\ufffd\ufffd\ufffd"),
        (b'"\xf0\x9f\x98\x80"', "\U0001f600"),
    ],
)
def test_decode_strings_like_go(raw: bytes, want: str) -> None:
    assert gojson.unmarshal(raw, STRING) == want


@pytest.mark.parametrize(
    "raw",
    [
        b'"a\x01"',
        b'"\\x"',
        b'"\\u12"',
        b'"\\\'"',
        b'"abc',
        b"01",
        b"1.",
        b".5",
        b"+1",
        b"NaN",
        b"[1,]",
        b'{"a":1,}',
        b"{'a':1}",
        b"1 2",
        b"",
        b"\xef\xbb\xbf{}",
        b"tru",
    ],
)
def test_invalid_json_is_rejected(raw: bytes) -> None:
    assert not gojson.valid(raw)
    with pytest.raises(GoJSONError):
        gojson.parse(raw)


def test_errors_are_invalid_input() -> None:
    assert issubclass(GoJSONError, InvalidInput)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(GoJSONError):
        gojson.parse(b"[" * 5000 + b"]" * 5000)


# --- floats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("f", "want"),
    [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (100.0, "100"),
        (0.1, "0.1"),
        (1.5, "1.5"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (123456789e12, "123456789000000000000"),
        (123456789e15, "1.23456789e+23"),
        (1.2345678901234568e21, "1.2345678901234568e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (-2.5e-5, "-0.000025"),
        (1e-10, "1e-10"),
        (1e100, "1e+100"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (1.0000000000000002, "1.0000000000000002"),
        (12345678901234567890.0, "12345678901234567000"),
    ],
)
def test_format_float(f: float, want: str) -> None:
    assert gojson.format_float(f) == want
    assert float(want) == f


@pytest.mark.parametrize("f", [math.nan, math.inf, -math.inf])
def test_format_float_rejects_non_finite(f: float) -> None:
    with pytest.raises(GoJSONError):
        gojson.format_float(f)


# --- time.Time ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2022-11-29T21:16:36.165868669Z", "2022-11-29T21:16:36.165868669Z"),
        ("2015-10-31T22:22:54.690851953Z", "2015-10-31T22:22:54.690851953Z"),
        ("2016-01-01T00:00:00.000Z", "2016-01-01T00:00:00Z"),
        ("2016-01-01T00:00:00.120Z", "2016-01-01T00:00:00.12Z"),
        ("2016-01-01T00:00:00.1234567891Z", "2016-01-01T00:00:00.123456789Z"),
        ("2016-01-01T00:00:00+00:00", "2016-01-01T00:00:00Z"),
        ("2016-01-01T00:00:00-00:00", "2016-01-01T00:00:00Z"),
        ("2016-01-01T00:00:00+05:30", "2016-01-01T00:00:00+05:30"),
        ("2016-01-01T1:02:03-08:00", "2016-01-01T01:02:03-08:00"),
        ("2016-01-01T00:00:00,5Z", "2016-01-01T00:00:00.5Z"),
        ("2016-02-29T00:00:00Z", "2016-02-29T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ],
)
def test_time_round_trip(text: str, want: str) -> None:
    t = gojson.unmarshal(f'"{text}"'.encode(), TIME)
    assert gojson.marshal(t, TIME) == f'"{want}"'.encode()


@pytest.mark.parametrize(
    "text",
    [
        "2015-02-29T00:00:00Z",
        "2016-13-01T00:00:00Z",
        "2016-01-01T24:00:00Z",
        "2016-01-01T00:60:00Z",
        "2016-01-01T00:00:60Z",
        "2016-01-01 00:00:00Z",
        "2016-01-01t00:00:00Z",
        "2016-01-01T00:00:00",
        "2016-01-01T00:00:00+0100",
        "16-01-01T00:00:00Z",
        "2016-01-01T00:00:00.Z",
        "2016-01-01T00:00:00\\u005a",  # Go does not unescape before parsing
    ],
)
def test_time_rejects(text: str) -> None:
    with pytest.raises(GoJSONError):
        gojson.unmarshal(f'"{text}"'.encode(), TIME)


def test_time_null_and_non_strings() -> None:
    assert gojson.unmarshal(b"null", TIME) == GoTime()
    assert gojson.unmarshal(b"null", Ptr(TIME)) is None
    with pytest.raises(GoJSONError):
        gojson.unmarshal(b"0", TIME)
    assert gojson.marshal(GoTime(), TIME) == b'"0001-01-01T00:00:00Z"'
    with pytest.raises(GoJSONError):
        gojson.marshal(GoTime(year=10000), TIME)


def test_time_unix_in_zones() -> None:
    assert GoTime.unix(0).format_rfc3339nano() == "1970-01-01T00:00:00Z"
    assert GoTime.unix(0, 0, 3600).format_rfc3339nano() == "1970-01-01T01:00:00+01:00"
    assert GoTime.unix(0, 0, -5 * 3600).format_rfc3339nano() == "1969-12-31T19:00:00-05:00"
    assert GoTime.unix(0, 0, 8 * 3600).format_rfc3339nano() == "1970-01-01T08:00:00+08:00"
    assert GoTime.unix(1669756596, 165868669).format_rfc3339nano() == (
        "2022-11-29T21:16:36.165868669Z"
    )
    assert GoTime.unix(951782400).format_rfc3339nano() == "2000-02-29T00:00:00Z"


# --- structs, maps, slices, omitempty ----------------------------------------------------

INNER = Struct("Inner", (Field("A", STRING), Field("B", INT, omitempty=True)))
OUTER = Struct(
    "Outer",
    (
        Field("Name", STRING, "name"),
        Field("Opt", STRING, "opt", omitempty=True),
        Field("Flag", BOOL, "flag", omitempty=True),
        Field("N", INT64, "n", omitempty=True),
        Field("F", FLOAT64, "f", omitempty=True),
        Field("U", UINT64, "u", omitempty=True),
        Field("List", Slice(STRING), "list"),
        Field("OptList", Slice(STRING), "optlist", omitempty=True),
        Field("M", Map(STRING), "m"),
        Field("OptM", Map(STRING), "optm", omitempty=True),
        Field("P", Ptr(INNER), "p", omitempty=True),
        Field("Inner", INNER, "inner", omitempty=True),
        Field("T", TIME, "t", omitempty=True),
        Field("PT", Ptr(TIME), "pt"),
        Field("Raw", Ptr(RAW), "raw", omitempty=True),
        Field("Any", ANY, "any", omitempty=True),
        Field("Cmd", STRSLICE, "cmd", omitempty=True),
    ),
)


def test_zero_struct_marshal() -> None:
    assert gojson.marshal(gojson.zero(OUTER), OUTER) == (
        b'{"name":"","list":null,"m":null,"inner":{"A":""},"t":"0001-01-01T00:00:00Z","pt":null}'
    )


def test_struct_round_trip() -> None:
    data = (
        b'{"NAME":"x<y","opt":"o","flag":true,"n":-5,"f":2.5,"u":18446744073709551615,'
        b'"list":[],"optlist":[],"m":{"b":"2","a":"1","\xc3\xa9":"3"},"optm":{},'
        b'"p":{"A":"pa","B":0},"inner":{"A":"ia","B":7,"C":1},"t":"2020-01-01T00:00:00Z",'
        b'"pt":"2020-01-01T00:00:00.5Z","raw":{ "k" : [1, "&"] },"any":{"z":1,"a":[true,null]},'
        b'"cmd":"sh","unknown":[1,2,3]}'
    )
    v = gojson.unmarshal(data, OUTER)
    assert v["Name"] == "x<y"
    assert gojson.marshal(v, OUTER) == (
        b'{"name":"x\\u003cy","opt":"o","flag":true,"n":-5,"f":2.5,"u":18446744073709551615,'
        b'"list":[],"m":{"a":"1","b":"2","\xc3\xa9":"3"},"p":{"A":"pa"},'
        b'"inner":{"A":"ia","B":7},"t":"2020-01-01T00:00:00Z","pt":"2020-01-01T00:00:00.5Z",'
        b'"raw":{"k":[1,"\\u0026"]},"any":{"a":[true,null],"z":1},"cmd":["sh"]}'
    )


def test_field_matching_is_exact_then_case_insensitive() -> None:
    s = Struct("S", (Field("A", STRING, "name"), Field("B", STRING, "Name")))
    assert gojson.unmarshal(b'{"Name":"x"}', s) == {"A": "", "B": "x"}
    assert gojson.unmarshal(b'{"name":"x"}', s) == {"A": "x", "B": ""}
    assert gojson.unmarshal(b'{"NAME":"x"}', s) == {"A": "x", "B": ""}
    # The Kelvin sign folds with K, as in Go.
    k = Struct("K", (Field("K", STRING, "kind"),))
    assert gojson.unmarshal('{"\u212aind":"x"}'.encode(), k) == {"K": "x"}


def test_duplicate_keys_last_wins_and_merges() -> None:
    v = gojson.unmarshal(b'{"inner":{"A":"a"},"inner":{"B":2},"name":"1","name":"2"}', OUTER)
    assert v["Inner"] == {"A": "a", "B": 2}
    assert v["Name"] == "2"
    m = gojson.unmarshal(b'{"a":"1","a":"2","b":"3"}', Map(STRING))
    assert m == {"a": "2", "b": "3"}


def test_null_handling() -> None:
    v = gojson.unmarshal(
        b'{"name":null,"flag":null,"n":null,"list":null,"m":null,"p":null,"inner":null,'
        b'"t":null,"pt":null,"raw":null,"cmd":null}',
        OUTER,
    )
    assert v == gojson.zero(OUTER)
    assert gojson.unmarshal(b'{"a":null}', Map(STRING)) == {"a": ""}
    assert gojson.unmarshal(b'{"a":null}', Map(RAW)) == {"a": RawMessage(b"null")}
    assert gojson.unmarshal(b'[null,"x"]', STRSLICE) == ["", "x"]


@pytest.mark.parametrize(
    ("data", "t"),
    [
        (b'"1"', INT),
        (b"1.0", INT),
        (b"1e3", INT),
        (b"9223372036854775808", INT64),
        (b"-1", UINT64),
        (b"1e400", FLOAT64),
        (b"1", STRING),
        (b"true", STRING),
        (b'"true"', BOOL),
        (b"{}", Slice(STRING)),
        (b"[]", Map(STRING)),
        (b"[]", INNER),
        (b"1", STRSLICE),
        (b'["a",1]', STRSLICE),
        (b'{"A":1}', INNER),
    ],
)
def test_type_mismatches_are_errors(data: bytes, t: gojson.GoType) -> None:
    with pytest.raises(GoJSONError):
        gojson.unmarshal(data, t)


def test_integers_and_floats() -> None:
    assert gojson.unmarshal(b"-0", INT) == 0
    assert gojson.unmarshal(b"9223372036854775807", INT64) == 2**63 - 1
    assert gojson.unmarshal(b"1e2", FLOAT64) == 100.0
    assert gojson.marshal(100.0, FLOAT64) == b"100"
    assert gojson.unmarshal(b"[1, 2.5]", ANY) == [1.0, 2.5]


def test_raw_message_passthrough() -> None:
    m = gojson.unmarshal(b'{"b": { "x" : "<" } , "a" :[ 1,2 ]}', Map(RAW))
    assert m == {"b": RawMessage(b'{ "x" : "<" }'), "a": RawMessage(b"[ 1,2 ]")}
    assert gojson.marshal(m, Map(RAW)) == b'{"a":[1,2],"b":{"x":"\\u003c"}}'
    assert gojson.marshal(None, RAW) == b"null"


def test_marshal_value_plain_data() -> None:
    value: Any = {
        "b": [1, 2.5, None, True, "<"],
        "a": {"y": 1, "x": RawMessage(b" [ ] ")},
        "\u00e9": GoTime.unix(0),
    }
    assert gojson.marshal_value(value) == (
        b'{"a":{"x":[],"y":1},"b":[1,2.5,null,true,"\\u003c"],"\xc3\xa9":"1970-01-01T00:00:00Z"}'
    )
    with pytest.raises(TypeError):
        gojson.marshal_value({"a": object()})


def test_map_keys_sort_by_utf8_bytes() -> None:
    keys = {"\U0001f600": 1, "\uff5e": 2, "a": 3, "B": 4}
    out = gojson.marshal_value(keys)
    assert out == '{"B":4,"a":3,"\uff5e":2,"\U0001f600":1}'.encode()


def test_struct_description_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError):
        Struct("Dup", (Field("A", STRING, "x"), Field("B", STRING, "x")))


def test_time_zone_offset_limits_follow_go_parse() -> None:
    t = gojson.unmarshal(b'"2016-01-01T00:00:00+24:00"', TIME)
    assert t.format_rfc3339nano() == "2016-01-01T00:00:00+24:00"
    with pytest.raises(GoJSONError):
        gojson.unmarshal(b'"2016-01-01T00:00:00+25:00"', TIME)


def test_go_types_are_immutable_values_that_copy_and_pickle() -> None:
    import copy
    import pickle

    from ocistore.spec.legacy import v1

    for t in (gojson.STRING, gojson.Slice(gojson.STRING), gojson.Map(gojson.Ptr(INT)), v1.IMAGE):
        assert copy.deepcopy(t) == t
        assert pickle.loads(pickle.dumps(t)) == t
        assert hash(copy.copy(t)) == hash(t)
    assert gojson.Slice(gojson.STRING) != gojson.Map(gojson.STRING)
    with pytest.raises(AttributeError):
        gojson.STRING.kind = "int"
