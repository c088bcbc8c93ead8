"""The Go templates docker users write with ``--format``, and the tables they make.

The subset of Go's ``text/template`` that ``--format`` is used with: literal text,
``{{.Field}}`` and ``{{.A.B}}``, ``{{.}}``, pipelines (``{{.Tag | lower}}``), string and
number arguments, ``{{if}}``/``{{else if}}``/``{{else}}``/``{{end}}``, ``{{range}}``,
``{{with}}``, trim markers (``{{-`` and ``-}}``) and comments; the functions docker's CLI
adds (``json``, ``join``, ``split``, ``lower``, ``upper``, ``title``, ``pad``,
``truncate``) and Go's own (``index``, ``len``, ``print``, ``printf`` as Go's ``fmt``
formats (verbs, flags, widths, precisions and its ``%!d(string=x)`` for what does not
fit), ``println``, ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge`` (comparing a string
and a number is an error, as Go's), ``and``, ``or``, ``not``). As docker's CLI
(``cli/command/formatter``): a format starting with ``table`` is a table (its header
row is the template applied to the column titles, cells are separated by tabs and
aligned by Go's tab writer: at least 10 wide, padded by 3), the format ``json`` alone
is ``{{json .}}``, the literal two characters ``\\t`` and ``\\n``
are a tab and a newline, and the format is trimmed of spaces.

What a template prints of a value is made :func:`~ocistore.cli.views.printable` (a tab
or a newline in a label cannot break a row); what ``json`` prints is JSON with such
characters written as ``\\u`` escapes. Errors are :class:`TemplateError` with docker's
text (``template parsing error: template: :1:2: executing "" at <.Foo>: can't evaluate
field Foo in type *formatter.imageContext``).

API: :func:`parse` a format once; :meth:`Template.render` a row (a :class:`Struct` for a
Go struct, whose missing fields are errors, or any mapping, a Go map whose missing keys
print ``<no value>``); :func:`write` rows with a template (the table and its header
included) to a stream.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from ..errors import InvalidInput
from .views import json_for_terminal, printable

__all__ = ["Struct", "Template", "TemplateError", "parse", "tabwrite", "write"]


class TemplateError(InvalidInput):
    """A ``--format`` that does not parse, or fails on a row (docker exits 1 for both)."""


@dataclass(frozen=True, slots=True)
class Struct:
    """A Go struct as a template sees it: ``fields`` by name, in Go's order. A missing
    field is an error naming ``type_name`` (``*formatter.imageContext``). With
    ``sorted_json``, ``json`` of it is Go's ``json.Marshal`` of a map (keys sorted, ``<``
    ``>`` ``&`` escaped), as docker's formatter contexts marshal themselves; else the
    fields in their order, as ``encoding/json`` writes a struct."""

    fields: Mapping[str, Any]
    type_name: str
    sorted_json: bool = False


class _Missing:
    """A Go map's missing key (``<no value>``)."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING: Final = _Missing()

#: docker's format names.
_TABLE: Final = "table"
_JSON_FORMAT: Final = "{{json .}}"

#: docker's tab writer: ``tabwriter.NewWriter(out, 10, 1, 3, ' ', 0)``.
MIN_WIDTH: Final = 10
PADDING: Final = 3


# -- values as Go prints them ------------------------------------------------------------


def _go_float(f: float) -> str:
    """``%v`` of a float64, as Go's ``fmt``: ``%g`` of the shortest digits (``1.5``,
    ``1e+06``, ``1e-05``, ``+Inf``)."""
    return _fmt_float(f, "v", _Spec())


def go_string(value: Any) -> str:
    """A value as Go's ``fmt`` prints it with ``%v`` (what ``{{.Field}}`` prints)."""
    if isinstance(value, str):
        return value
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Struct):
        return "{" + " ".join(go_string(v) for v in value.fields.values()) + "}"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "map[" + " ".join(f"{k}:{go_string(v)}" for k, v in items) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_string(v) for v in value) + "]"
    return str(value)


def _go_type(value: Any) -> str:
    if isinstance(value, Struct):
        return value.type_name
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return "interface {}"


def _truth(value: Any) -> bool:
    """Go's ``if``: false, 0, nil and empty values are false; a struct is true."""
    if isinstance(value, Struct):
        return True
    if value is MISSING or value is None:
        return False
    return bool(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Struct):
        fields = {k: _plain(v) for k, v in value.fields.items()}
        return dict(sorted(fields.items())) if value.sorted_json else fields
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if value is MISSING else value


def go_json(value: Any) -> str:
    """docker's ``json`` function: ``encoding/json`` without HTML escapes (a map's keys
    sorted, a struct's in order; a :class:`Struct` with ``sorted_json`` as docker's
    contexts, HTML escaped), non-ASCII as UTF-8, and what a terminal would act on
    written as a ``\\u`` escape."""
    text = json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"))
    return json_for_terminal(text, html=isinstance(value, Struct) and value.sorted_json)


# -- functions ---------------------------------------------------------------------------


#: Go's ``unicode.White_Space``.
_GO_SPACES: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(map(chr, range(0x2000, 0x200B)))
)


def _is_separator(c: str) -> bool:
    """Go's ``strings.isSeparator``: ASCII alphanumerics and ``_`` are not, other ASCII
    is; beyond ASCII, letters and digits are not, spaces are, and nothing else is."""
    if c < "\x80":
        return not (c.isalnum() or c == "_")
    if c.isalpha() or c.isdecimal():
        return False
    return c in _GO_SPACES


def _title(s: str) -> str:
    """Go's ``strings.Title`` (docker's ``title``): a rune after a separator is
    title-cased (``don't`` is ``Don'T``, ``é.x`` is ``É.X``)."""
    out: list[str] = []
    prev = " "
    for c in s:
        if _is_separator(prev):
            t = c.title()
            out.append(t if len(t) == 1 else c)  # Go maps one rune to one rune
        else:
            out.append(c)
        prev = c
    return "".join(out)


def _split(s: Any, sep: Any) -> list[str]:
    text, by = go_string(s), go_string(sep)
    if by == "":
        return list(text)
    return text.split(by)


def _join(items: Any, sep: Any) -> str:
    if not isinstance(items, (list, tuple)):
        raise _ExecError(f"wrong type for value; expected []string; got {_go_type(items)}")
    return go_string(sep).join(go_string(i) for i in items)


def _pad(s: Any, prefix: Any, suffix: Any) -> str:
    text = go_string(s)
    if text == "":
        return text
    return " " * int(prefix) + text + " " * int(suffix)


def _truncate(s: Any, length: Any) -> str:
    data = go_string(s).encode("utf-8", "surrogateescape")
    n = int(length)
    if len(data) < n:
        return go_string(s)
    return data[:n].decode("utf-8", "replace")


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, Struct):
            raise _ExecError(f"can't index item of type {item.type_name}")
        if isinstance(item, Mapping):
            item = item.get(key, MISSING)
        elif isinstance(item, (list, tuple, str)):
            if not isinstance(key, int) or isinstance(key, bool):
                raise _ExecError(f"cannot index slice/array with type {_go_type(key)}")
            if not 0 <= key < len(item):
                raise _ExecError(f"index out of range: {key}")
            item = item[key] if not isinstance(item, str) else item.encode()[key]
        else:
            raise _ExecError(f"can't index item of type {_go_type(item)}")
    return item


def _len(item: Any) -> int:
    if isinstance(item, (str, list, tuple, Mapping)) and not isinstance(item, Struct):
        return len(item.encode()) if isinstance(item, str) else len(item)
    raise _ExecError(f"len of type {_go_type(item)}")


def _sprint(*args: Any) -> str:
    out: list[str] = []
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(printable(go_string(a)))  # (a map's or a list's text too)
    return "".join(out)


# -- Go's fmt, as printf formats ---------------------------------------------------------


@dataclass(slots=True)
class _Spec:
    """A verb's flags, width and precision (``None``: not given), as Go's ``fmt`` has
    them; ``zero`` is only kept without ``minus`` (Go pads with zeros only to the left)."""

    minus: bool = False
    plus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    wid: int | None = None
    prec: int | None = None


def _fill(spec: _Spec, s: str, zero: bool | None = None) -> str:
    """Go's ``fmt.pad``: ``s`` padded to the width in runes, to the right with ``-``,
    else to the left with zeros for ``0`` (``zero`` overrides it), else spaces."""
    if spec.wid is None or len(s) >= spec.wid:
        return s
    n = spec.wid - len(s)
    if spec.minus:
        return s + " " * n
    return ("0" if (spec.zero if zero is None else zero) else " ") * n + s


def _can_backquote(s: str) -> bool:
    return not any(
        (c < " " and c != "\t") or c in "`\x7f\ufeff" or "\ud800" <= c <= "\udfff" for c in s
    )


def _rune(v: int) -> str:
    """An integer as a rune: U+FFFD when it is none (negative, a surrogate, too big)."""
    return chr(v) if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else "\ufffd"


def _bad_verb(a: Any, verb: str, spec: _Spec) -> str:
    """Go's ``%!d(string=x)``: the value printed with ``%v`` and the verb's flags."""
    if a is None or a is MISSING:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({_go_type(a)}={_fmt_arg(a, 'v', spec)})"


def _fmt_integer(v: int, verb: str, spec: _Spec) -> str:
    """Go's ``fmt.fmtInteger``: precision or ``0`` and width as leading zeros, then the
    base prefix (``#``), then the sign."""
    if verb == "c":
        return _fill(spec, printable(_rune(v)))
    if verb == "q":
        from ..spec.legacy.gojson import go_quote  # (only %q needs Go's strconv.Quote)

        return _fill(spec, go_quote(_rune(v), "'", spec.plus))
    if verb == "U":
        u = v & 0xFFFFFFFFFFFFFFFF
        text = "U+" + f"{u:X}".rjust(max(4, spec.prec or 0), "0")
        if spec.sharp and u <= 0x10FFFF and chr(u).isprintable():
            text += f" '{chr(u)}'"
        return _fill(spec, text, zero=False)
    base = {"v": 10, "d": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}.get(verb)
    if base is None:
        return _bad_verb(v, verb, spec)
    negative = v < 0
    u = -v if negative else v
    prec = 0
    if spec.prec is not None:
        prec = spec.prec
        if prec == 0 and u == 0:
            return _fill(spec, "", zero=False)
    elif spec.zero and spec.wid is not None:
        prec = spec.wid - (1 if negative or spec.plus or spec.space else 0)
    digits = format(u, {10: "d", 2: "b", 8: "o", 16: verb}[base]).rjust(prec, "0")
    prefix = ""
    if spec.sharp and verb != "v":
        if base == 2:
            prefix = "0b"
        elif base == 8 and digits[0] != "0":
            prefix = "0"
        elif base == 16:
            prefix = "0" + verb
    if verb == "O":
        prefix = "0o" + prefix
    sign = "-" if negative else "+" if spec.plus else " " if spec.space else ""
    return _fill(spec, sign + prefix + digits, zero=False)


def _shortest(f: float) -> tuple[str, int]:
    """The shortest digits that read back as ``abs(f)`` and the decimal point's place
    (``0.012``: ``"12"``, -1), as Go's ``strconv`` has them."""
    if f == 0:
        return "0", 1
    from ..spec.legacy.gojson import _shortest_digits  # Go's, as encoding/json writes floats

    return _shortest_digits(f)


def _exponent(e: int, letter: str) -> str:
    return f"{letter}{'-' if e < 0 else '+'}{abs(e):02d}"


def _hex_float(f: float, verb: str, prec: int) -> str:
    """Go's ``%x`` of a float64: ``-0x1.8p+00``, the mantissa rounded to ``prec`` hex
    digits (all of it with -1)."""
    bits = struct.unpack(">Q", struct.pack(">d", f))[0]
    neg, exp, mant = bits >> 63, (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp += 1
    else:
        mant |= 1 << 52
    exp -= 1023
    if mant == 0:
        exp = 0
    mant <<= 8
    while mant and not mant & (1 << 60):
        mant <<= 1
        exp -= 1
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & ((1 << 60) - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 1 << 59:
            mant += 1
        mant <<= 60 - shift
        if mant & (1 << 61):
            mant >>= 1
            exp += 1
    hexdigits = "0123456789abcdef" if verb == "x" else "0123456789ABCDEF"
    out = ["-" if neg else "", "0", verb, str((mant >> 60) & 1)]
    mant = (mant << 4) & 0xFFFFFFFFFFFFFFFF
    if (prec < 0 and mant) or prec > 0:
        out.append(".")
        count = prec if prec >= 0 else 16
        for _ in range(count):
            if prec < 0 and not mant:
                break
            out.append(hexdigits[(mant >> 60) & 15])
            mant = (mant << 4) & 0xFFFFFFFFFFFFFFFF
    out.append(_exponent(exp, "p" if verb == "x" else "P"))
    return "".join(out)


def _float_body(f: float, verb: str, prec: int, sharp: bool) -> str:
    """``abs(f)`` as Go's ``strconv.FormatFloat`` writes it (``prec`` -1: shortest)."""
    if verb in "xX":
        return _hex_float(abs(f), verb, prec)
    if verb == "b":  # mantissa p exponent: 4503599627370496p-52
        bits = struct.unpack(">Q", struct.pack(">d", abs(f)))[0]
        biased, mant = bits >> 52, bits & ((1 << 52) - 1)
        exp = (biased or 1) - 1075
        if biased:
            mant |= 1 << 52
        return f"{mant}p{'+' if exp >= 0 else ''}{exp}"
    if prec >= 0 or sharp:
        return format(abs(f), ("#" if sharp else "") + (f".{prec}" if prec >= 0 else "") + verb)
    digits, point = _shortest(f)
    if verb in "eE" or (verb in "gG" and not -4 <= point - 1 < 6):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return mantissa + _exponent(point - 1, "e" if verb in "eg" else "E")
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _fmt_float(f: float, verb: str, spec: _Spec) -> str:
    """Go's ``fmt.fmtFloat``: the sign before leading zeros, ``+Inf`` and ``NaN`` never
    zero padded."""
    if verb not in "vbgGxXfeEF":
        return _bad_verb(f, verb, spec)
    prec = 6 if verb in "feEF" else -1
    if spec.prec is not None:
        prec = spec.prec
    go_verb = "g" if verb == "v" else "f" if verb == "F" else verb
    negative = math.copysign(1.0, f) < 0 and f == f
    if f != f or f in (math.inf, -math.inf):
        num = ("-" if negative else "+") + ("NaN" if f != f else "Inf")
    else:
        sharp = spec.sharp and verb != "v"  # %#v is Go syntax, not %#g
        num = ("-" if negative else "+") + _float_body(f, go_verb, prec, sharp)
    if spec.space and num[0] == "+" and not spec.plus:
        num = " " + num[1:]
    if num[1] in "IN":
        if num[1] == "N" and not spec.space and not spec.plus:
            num = num[1:]
        return _fill(spec, num, zero=False)
    if spec.plus or num[0] != "+":
        if spec.zero and spec.wid is not None and spec.wid > len(num):
            return num[0] + "0" * (spec.wid - len(num)) + num[1:]
        return _fill(spec, num)
    return _fill(spec, num[1:])


def _fmt_string(s: str, verb: str, spec: _Spec) -> str:
    """Go's ``fmt.fmtString``, what a terminal would act on made :func:`printable`."""
    if verb == "x" or verb == "X":
        data = s.encode("utf-8", "surrogateescape")
        if spec.prec is not None:
            data = data[: spec.prec]
        if not data:
            return _fill(spec, "")
        pieces = [format(b, "02" + verb) for b in data]
        prefix = "0" + verb if spec.sharp else ""
        if spec.space:
            return _fill(spec, " ".join(prefix + p for p in pieces))
        return _fill(spec, prefix + "".join(pieces))
    if verb not in "vsq":
        return _bad_verb(s, verb, spec)
    if spec.prec is not None:
        s = s[: spec.prec]
    if verb == "q" or (verb == "v" and spec.sharp):
        if spec.sharp and verb == "q" and _can_backquote(s):
            s = "`" + s + "`"
        else:
            from ..spec.legacy.gojson import go_quote

            s = go_quote(s, ascii_only=spec.plus)
    return _fill(spec, printable(s))


def _fmt_arg(a: Any, verb: str, spec: _Spec, depth: int = 0) -> str:
    """Go's ``pp.printArg``: one argument of ``printf`` with its verb; a slice, a map or
    a struct has each element printed with the verb (``[%!d(string=a)]``)."""
    if a is None or a is MISSING:
        if depth:
            return "<nil>"
        return _fill(spec, "<nil>") if verb in "vT" else _bad_verb(a, verb, spec)
    if verb == "T":
        return _fill(spec, _go_type(a))
    if isinstance(a, bool):
        if verb in "tv":
            return _fill(spec, "true" if a else "false")
        return _bad_verb(a, verb, spec)
    if isinstance(a, int):
        return _fmt_integer(a, verb, spec)
    if isinstance(a, float):
        return _fmt_float(a, verb, spec)
    if isinstance(a, str):
        return _fmt_string(a, verb, spec)
    if isinstance(a, Struct):
        return "{" + " ".join(_fmt_arg(v, verb, spec, depth + 1) for v in a.fields.values()) + "}"
    if isinstance(a, Mapping):
        items = sorted(a.items(), key=lambda kv: str(kv[0]))
        return (
            "map["
            + " ".join(
                f"{_fmt_arg(k, verb, spec, depth + 1)}:{_fmt_arg(v, verb, spec, depth + 1)}"
                for k, v in items
            )
            + "]"
        )
    if isinstance(a, (list, tuple)):
        return "[" + " ".join(_fmt_arg(v, verb, spec, depth + 1) for v in a) + "]"
    return _fill(spec, printable(str(a)))


#: Go's limit on a width or precision (``fmt.tooLarge``).
_TOO_LARGE: Final = 1_000_000


class _Printf:
    """Go's ``fmt.Sprintf`` (``pp.doPrintf``) of one format and its arguments."""

    def __init__(self, format: str, args: tuple[Any, ...]) -> None:
        self.fmt = format
        self.args = args
        self.arg_num = 0
        self.good_arg = True
        self.reordered = False

    def number(self, k: int) -> tuple[int | None, int]:
        """Go's ``parsenum``: the decimal number at ``k`` (none: ``None``) and its end;
        one too large (``tooLarge``) is none and ends the format."""
        fmt, start, n = self.fmt, k, 0
        while k < len(fmt) and "0" <= fmt[k] <= "9":
            if n > _TOO_LARGE:
                return None, len(fmt)
            n = n * 10 + ord(fmt[k]) - ord("0")
            k += 1
        return (n if k > start else None), k

    def index(self, k: int) -> tuple[int, bool]:
        """Go's ``argNumber``: an argument index ``[n]`` at ``k``: where it ends and
        whether there is one (a bad one spoils the verb's argument)."""
        fmt = self.fmt
        if k >= len(fmt) or fmt[k] != "[":
            return k, False
        self.reordered = True
        close = fmt.find("]", k + 1)
        if len(fmt) - k < 3 or close < 0:
            self.good_arg = False
            return k + 1, False
        n, after = self.number(k + 1)
        if n is None or after != close:
            self.good_arg = False
            return close + 1, False
        if 0 < n <= len(self.args):
            self.arg_num = n - 1
        else:
            self.good_arg = False
        return close + 1, True

    def int_arg(self) -> int | None:
        """Go's ``intFromArg``: the argument a ``*`` takes, if an int not too large."""
        if self.arg_num >= len(self.args):
            return None
        a = self.args[self.arg_num]
        self.arg_num += 1
        if not isinstance(a, int) or isinstance(a, bool) or abs(a) > _TOO_LARGE:
            return None
        return a

    def run(self) -> str:
        fmt, args, out = self.fmt, self.args, []
        end, i = len(fmt), 0
        while i < end:
            self.good_arg = True
            j = fmt.find("%", i)
            if j < 0:
                out.append(fmt[i:])
                break
            out.append(fmt[i:j])
            i = j + 1
            spec = _Spec()
            while i < end and fmt[i] in "#0+- ":
                c = fmt[i]
                if c == "#":
                    spec.sharp = True
                elif c == "0":
                    spec.zero = not spec.minus
                elif c == "+":
                    spec.plus = True
                elif c == "-":
                    spec.minus, spec.zero = True, False
                else:
                    spec.space = True
                i += 1
            i, after_index = self.index(i)
            if i < end and fmt[i] == "*":
                i += 1
                spec.wid = self.int_arg()
                if spec.wid is None:
                    out.append("%!(BADWIDTH)")
                elif spec.wid < 0:
                    spec.wid, spec.minus, spec.zero = -spec.wid, True, False
                after_index = False
            else:
                spec.wid, i = self.number(i)
                if after_index and spec.wid is not None:  # %[3]2d
                    self.good_arg = False
            if i + 1 < end and fmt[i] == ".":
                i += 1
                if after_index:  # %[3].2d
                    self.good_arg = False
                i, after_index = self.index(i)
                if i < end and fmt[i] == "*":
                    i += 1
                    spec.prec = self.int_arg()
                    if spec.prec is not None and spec.prec < 0:
                        spec.prec = None
                    if spec.prec is None:
                        out.append("%!(BADPREC)")
                    after_index = False
                else:
                    spec.prec, i = self.number(i)
                    if spec.prec is None:
                        spec.prec = 0
            if not after_index:
                i, after_index = self.index(i)
            if i >= end:
                out.append("%!(NOVERB)")
                break
            verb = fmt[i]
            i += 1
            if verb == "%":  # takes no argument, ignores the width
                out.append("%")
            elif not self.good_arg:
                out.append(f"%!{verb}(BADINDEX)")
            elif self.arg_num >= len(args):
                out.append(f"%!{verb}(MISSING)")
            else:
                if verb == "v":  # %+v is Go's struct-field syntax, not a sign
                    spec.plus = False
                out.append(_fmt_arg(args[self.arg_num], verb, spec))
                self.arg_num += 1
        if not self.reordered and self.arg_num < len(args):
            extra = (
                "<nil>" if _is_nil(a) else f"{_go_type(a)}={_fmt_arg(a, 'v', _Spec())}"
                for a in args[self.arg_num :]
            )
            out.append("%!(EXTRA " + ", ".join(extra) + ")")
        return "".join(out)


def _printf(format: Any, *args: Any) -> str:
    """Go's ``fmt.Sprintf``: flags ``-+# 0``, a width and a precision (digits or ``*``),
    argument indexes (``%[2]s``); ``%!d(string=x)`` for a verb that does not fit its
    argument, ``%!s(MISSING)``, ``%!(EXTRA string=x)``, ``%!(NOVERB)``, ``%!(BADWIDTH)``,
    ``%!(BADPREC)``, ``%!d(BADINDEX)`` as Go writes them. A string argument is made
    :func:`printable` (a quoted one is escaped by Go's rules)."""
    return _Printf(go_string(format), args).run()


def _basic_kind(value: Any) -> str | None:
    """What ``eq`` and ``lt`` compare: ``None`` for nil and for what is no basic kind (a
    map, a slice, a struct)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return None


def _ref_kind(value: Any) -> str:
    """The kind of what is no basic kind: a pointer (a struct), a map, a slice."""
    if isinstance(value, Struct):
        return "ptr"
    if isinstance(value, Mapping):
        return "map"
    return "slice" if isinstance(value, (list, tuple)) else "other"


def _is_nil(value: Any) -> bool:
    return value is None or value is MISSING


def _eq(a: Any, *bs: Any) -> bool:
    """Go's ``eq``: true if ``a`` equals any of ``bs``; values of different kinds (a
    string and a number, an int and a float) are an error unless one is nil."""
    if not bs:
        raise _ExecError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in bs:
        k2 = _basic_kind(b)
        if k1 != k2:
            if not _is_nil(a) and not _is_nil(b):
                raise _ExecError("incompatible types for comparison")
            truth = False
        elif k1 is not None:
            truth = a == b
        elif _is_nil(a) or _is_nil(b):
            truth = _is_nil(a) and _is_nil(b)
        elif _ref_kind(a) != _ref_kind(b):
            raise _ExecError(
                f"non-comparable types {_fmt_arg(a, 's', _Spec())}: {_go_type(a)}, "
                f"{_fmt_arg(b, 's', _Spec())}: {_go_type(b)}"
            )
        elif isinstance(a, Struct):
            truth = a is b  # pointers
        else:
            raise _ExecError(f"non-comparable type {_fmt_arg(b, 's', _Spec())}: {_go_type(b)}")
        if truth:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    """Go's ``lt``: numbers or strings of one kind; anything else is an error."""
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 is None or k2 is None:
        raise _ExecError("invalid type for comparison")
    if k1 != k2:
        raise _ExecError("incompatible types for comparison")
    if k1 == "bool":
        raise _ExecError("invalid type for comparison")
    return bool(a < b)


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _gt(a: Any, b: Any) -> bool:
    return not _le(a, b)


def _ge(a: Any, b: Any) -> bool:
    return not _lt(a, b)


def _and(*args: Any) -> Any:
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if _truth(a):
            return a
    return args[-1]


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    # docker's (templates.basicFunctions)
    "json": go_json,
    "split": _split,
    "join": _join,
    "title": lambda s: _title(go_string(s)),
    "lower": lambda s: go_string(s).lower(),
    "upper": lambda s: go_string(s).upper(),
    "pad": _pad,
    "truncate": _truncate,
    # Go's
    "index": _index,
    "len": _len,
    "print": _sprint,
    "printf": _printf,
    "println": lambda *a: " ".join(printable(go_string(x)) for x in a) + "\n",
    "eq": _eq,
    "ne": _ne,
    "lt": _lt,
    "le": _le,
    "gt": _gt,
    "ge": _ge,
    "and": _and,
    "or": _or,
    "not": lambda a: not _truth(a),
}

#: docker's ``HeaderFunctions``: a table's header keeps the column's title as it is.
_HEADER_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    **_FUNCTIONS,
    "json": lambda v: v,
    "split": lambda v, _sep: v,
    "join": lambda v, _sep: v,
    "title": lambda v: v,
    "lower": lambda v: v,
    "upper": lambda v: v,
    "truncate": lambda v, _n: v,
}


# -- parsing -----------------------------------------------------------------------------


class _ExecError(Exception):
    """A failure inside a function, given its position by the node that called it."""


class _Raise(Exception):
    def __init__(self, node: _Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


@dataclass(slots=True)
class _Node:
    pos: int  # byte offset in the format
    text: str  # Go's String() of the node, for the error's context


@dataclass(slots=True)
class _Field(_Node):
    receiver: _Arg | None  # None: the dot
    names: tuple[str, ...]


@dataclass(slots=True)
class _Const(_Node):
    value: Any


@dataclass(slots=True)
class _Dot(_Node):
    pass


@dataclass(slots=True)
class _Call(_Node):
    name: str
    args: list[_Arg]


@dataclass(slots=True)
class _Pipe(_Node):
    commands: list[_Arg]  # each command's result is the last argument of the next


_Arg = _Field | _Const | _Dot | _Call | _Pipe


@dataclass(slots=True)
class _Text:
    text: str


@dataclass(slots=True)
class _Action:
    pipe: _Pipe


@dataclass(slots=True)
class _If:
    kind: str  # if, with, range
    pipe: _Pipe
    then: list[_Item]
    otherwise: list[_Item]


_Item = _Text | _Action | _If

_TOKEN: Final = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\\n]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    | (?P<dot>\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<pipe>\|)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<var>\$[A-Za-z0-9_]*)
    | (?P<bad>\S)
    )""",
    re.VERBOSE,
)


class _Parser:
    def __init__(self, format: str, functions: Mapping[str, Callable[..., Any]]) -> None:
        self.src = format
        self.functions = functions
        self.i = 0

    def line(self, pos: int) -> int:
        return 1 + self.src.count("\n", 0, pos)

    def error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"template parsing error: template: :{self.line(pos)}: {message}")

    def byte_pos(self, pos: int) -> int:
        return len(self.src[:pos].encode("utf-8", "surrogateescape"))

    def parse(self) -> list[_Item]:
        items, end = self.items(top=True)
        if end is not None:
            raise self.error(end[1], f"unexpected {{{{{end[0]}}}}}")
        return items

    def items(self, top: bool) -> tuple[list[_Item], tuple[str, int, int] | None]:
        """Items up to an ``{{end}}`` or ``{{else ...}}`` (returned: keyword, position,
        and what follows ``else``), or the end of the format at the top."""
        out: list[_Item] = []
        src = self.src
        while True:
            start = src.find("{{", self.i)
            if start < 0:
                if not top:
                    raise self.error(len(src), "unexpected EOF")
                if self.i < len(src):
                    out.append(_Text(src[self.i :]))
                self.i = len(src)
                return out, None
            text = src[self.i : start]
            inner = start + 2
            if (
                src.startswith("- ", inner)
                or src.startswith("-\t", inner)
                or src.startswith("-\n", inner)
            ):
                text = text.rstrip(" \t\r\n")
                inner += 1
            if text:
                out.append(_Text(text))
            close = self.find_close(inner)
            body_end = close
            trim_after = False
            if (
                close - 1 >= inner
                and src[close - 1] == "-"
                and src[close - 2 : close - 1]
                in (
                    " ",
                    "\t",
                    "\n",
                )
            ):
                body_end = close - 1
                trim_after = True
            self.i = close + 2
            if trim_after:
                while self.i < len(src) and src[self.i] in " \t\r\n":
                    self.i += 1
            body = src[inner:body_end]
            stripped = body.strip()
            if stripped.startswith("/*"):
                if not stripped.endswith("*/"):
                    raise self.error(inner, "unclosed comment")
                continue
            word = re.match(r"\s*([a-z]+)\b", body)
            keyword = word.group(1) if word else ""
            after = inner + (word.end() if word else 0)
            if keyword in ("end", "else"):
                if top:
                    raise self.error(inner, f"unexpected {{{{{keyword}}}}}")
                return out, (keyword, after, body_end)
            if keyword in ("if", "with", "range"):
                out.append(self.control(keyword, after, body_end))
                continue
            if keyword in ("define", "template", "block", "break", "continue"):
                raise self.error(inner, f"{keyword} is not supported by ocistore's --format")
            out.append(_Action(self.pipeline(inner, body_end, keyword_context=None)))

    def find_close(self, pos: int) -> int:
        """The ``}}`` that ends the action from ``pos``, skipping quoted strings."""
        src = self.src
        i = pos
        while i < len(src):
            c = src[i]
            if c == "}" and src.startswith("}}", i):
                return i
            if c in "\"'`":
                j = i + 1
                while j < len(src) and src[j] != c:
                    if src[j] == "\n" and c != "`":
                        raise self.error(i, "unterminated quoted string")
                    j += 2 if src[j] == "\\" and c != "`" else 1
                if j >= len(src):
                    raise self.error(
                        i,
                        "unterminated quoted string"
                        if c != "`"
                        else "unterminated raw quoted string",
                    )
                i = j + 1
                continue
            i += 1
        raise self.error(pos, "unclosed action")

    def control(self, kind: str, start: int, end: int) -> _If:
        pipe = self.pipeline(start, end, keyword_context=kind)
        then, stop = self.items(top=False)
        assert stop is not None
        otherwise: list[_Item] = []
        if stop[0] == "else":
            _, after, body_end = stop
            rest = self.src[after:body_end]
            word = re.match(r"\s*(if|with)\b", rest)
            if word:  # else if: an if in the else, that ends with it
                otherwise = [self.control(word.group(1), after + word.end(), body_end)]
                return _If(kind, pipe, then, otherwise)
            if rest.strip():
                raise self.error(after, f"unexpected {rest.strip()!r} in else")
            otherwise, stop = self.items(top=False)
            assert stop is not None
            if stop[0] != "end":
                raise self.error(stop[1], "expected end; found {{else}}")
        return _If(kind, pipe, then, otherwise)

    def pipeline(self, start: int, end: int, keyword_context: str | None) -> _Pipe:
        tokens = self.tokens(start, end)
        if not tokens:
            what = f"{keyword_context}" if keyword_context else "command"
            raise self.error(start, f"missing value for {what}")
        pipe, rest = self.pipe(tokens, 0, closing=False)
        if rest != len(tokens):
            raise self.error(tokens[rest][1], f"unexpected {tokens[rest][2]!r} in operand")
        return pipe

    def tokens(self, start: int, end: int) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        pos = start
        while pos < end:
            m = _TOKEN.match(self.src, pos, end)
            if m is None or m.end() == pos:
                break
            kind = m.lastgroup or ""
            value = m.group(kind)
            at = m.start(kind)
            if kind == "bad":
                raise self.error(at, f"unexpected {value!r} in command")
            if kind == "var":
                raise self.error(at, f"undefined variable {value!r}")
            out.append((kind, at, value))
            pos = m.end()
        return out

    def pipe(self, tokens: list[tuple[str, int, str]], k: int, closing: bool) -> tuple[_Pipe, int]:
        commands: list[_Arg] = []
        start_pos = self.byte_pos(tokens[k][1]) if k < len(tokens) else 0
        while True:
            cmd, k = self.command(tokens, k)
            commands.append(cmd)
            if k < len(tokens) and tokens[k][0] == "pipe":
                k += 1
                if k >= len(tokens) or tokens[k][0] in ("pipe", "close"):
                    raise self.error(tokens[k - 1][1], "missing command")
                continue
            break
        if closing:
            if k >= len(tokens) or tokens[k][0] != "close":
                raise self.error(tokens[k - 1][1], "unclosed left paren")
            k += 1
        for stage, later in enumerate(commands[1:], 2):
            if isinstance(later, (_Const, _Dot, _Pipe)):
                raise self.error(
                    tokens[k - 1][1], f"non executable command in pipeline stage {stage}"
                )
        text = " | ".join(c.text for c in commands)
        return _Pipe(start_pos, text, commands), k

    def command(self, tokens: list[tuple[str, int, str]], k: int) -> tuple[_Arg, int]:
        kind, at, value = tokens[k]
        if kind == "ident" and value == "nil":
            raise self.error(at, "nil is not a command")
        if kind == "ident" and value not in ("true", "false", "nil"):
            if value not in self.functions:
                raise self.error(at, f'function "{value}" not defined')
            args: list[_Arg] = []
            k += 1
            while k < len(tokens) and tokens[k][0] not in ("pipe", "close"):
                arg, k = self.operand(tokens, k)
                args.append(arg)
            text = " ".join([value, *(a.text for a in args)])
            return _Call(self.byte_pos(at), text, value, args), k
        operand, k = self.operand(tokens, k)
        if k < len(tokens) and tokens[k][0] not in ("pipe", "close"):
            raise self.error(tokens[k][1], f"can't give argument to non-function {operand.text}")
        return operand, k

    def operand(self, tokens: list[tuple[str, int, str]], k: int) -> tuple[_Arg, int]:
        kind, at, value = tokens[k]
        pos = self.byte_pos(at)
        if kind == "field":
            return _Field(pos, value, None, tuple(value[1:].split("."))), k + 1
        if kind == "dot":
            return _Dot(pos, "."), k + 1
        if kind == "str":
            try:
                return _Const(pos, value, json.loads(value, strict=False)), k + 1
            except ValueError:
                raise self.error(at, f"bad quoted string: {value}") from None
        if kind == "raw":
            return _Const(pos, value, value[1:-1]), k + 1
        if kind == "num":
            number: Any = float(value) if any(c in value for c in ".eE") else int(value)
            return _Const(pos, value, number), k + 1
        if kind == "ident" and value in ("true", "false", "nil"):  # nil: an argument
            return _Const(pos, value, None if value == "nil" else value == "true"), k + 1
        if kind == "ident":
            return _Call(pos, value, value, []), k + 1
        if kind == "open":
            if k + 1 >= len(tokens):
                raise self.error(at, "unclosed left paren")
            pipe, k = self.pipe(tokens, k + 1, closing=True)
            pipe.text = f"({pipe.text})"
            # a field of a parenthesized pipeline: (index . "x").Name
            if k < len(tokens) and tokens[k][0] == "field" and tokens[k][1] == tokens[k - 1][1] + 1:
                fv = tokens[k][2]
                return _Field(pos, pipe.text + fv, pipe, tuple(fv[1:].split("."))), k + 1
            return pipe, k
        raise self.error(at, f"unexpected {value!r} in operand")


# -- execution ---------------------------------------------------------------------------


def _field(node: _Field, value: Any) -> Any:
    for name in node.names:
        if isinstance(value, Struct):
            fields = value.fields
            if name not in fields:
                raise _Raise(node, f"can't evaluate field {name} in type {value.type_name}")
            value = fields[name]
        elif isinstance(value, Mapping):
            value = value.get(name, MISSING)
        elif value is None or value is MISSING:
            raise _Raise(node, f"nil pointer evaluating interface {{}}.{name}")
        else:
            raise _Raise(node, f"can't evaluate field {name} in type {_go_type(value)}")
    return value


#: What a format nested too deeply (parentheses, ``if`` in ``if``) is told, in Go's words
#: for its own limits (``parse.maxStackDepth``, ``exec.maxExecDepth``).
_PARSE_DEPTH: Final = "template parsing error: template: :1: max expression depth exceeded"
_EXEC_DEPTH: Final = "template parsing error: template: :1: exceeded maximum template depth"


class Template:
    """A parsed ``--format``: :meth:`render` a row, :attr:`table` whether it is a table
    (:meth:`header` then gives its header row)."""

    def __init__(
        self, format: str, source: str, table: bool, items: list[_Item], header_items: list[_Item]
    ) -> None:
        self.table = table
        self._source = source
        self._run = _compile(items, _FUNCTIONS)
        self._run_header = _compile(header_items, _HEADER_FUNCTIONS)

    def render(self, row: Any) -> str:
        """The template applied to ``row`` (a :class:`Struct`, a mapping or any value)."""
        out: list[str] = []
        try:
            self._run(row, out)
        except _Raise as e:
            raise self._exec_error(e) from None
        except RecursionError:
            raise TemplateError(_EXEC_DEPTH) from None
        return "".join(out)

    def header(self, headers: Mapping[str, str]) -> str:
        """The header row of a table: the template applied to the column titles (a Go map,
        ``{"ID": "IMAGE ID", ...}``), with docker's header functions."""
        out: list[str] = []
        try:
            self._run_header(dict(headers), out)
        except _Raise as e:
            raise self._exec_error(e) from None
        except RecursionError:
            raise TemplateError(_EXEC_DEPTH) from None
        return "".join(out)

    def _exec_error(self, e: _Raise) -> TemplateError:
        src = self._source.encode("utf-8", "surrogateescape")
        before = src[: e.node.pos]
        line = 1 + before.count(b"\n")
        nl = before.rfind(b"\n")
        col = e.node.pos if nl < 0 else e.node.pos - nl - 1
        return TemplateError(
            f'template parsing error: template: :{line}:{col}: executing "" at '
            f"<{e.node.text}>: {e.message}"
        )


def _eval(
    node: _Arg,
    dot: Any,
    functions: Mapping[str, Callable[..., Any]],
    last: Any = None,
    piped: bool = False,
) -> Any:
    if isinstance(node, _Field):
        base = dot if node.receiver is None else _eval(node.receiver, dot, functions)
        if piped:
            raise _Raise(node, f"can't give argument to non-function {node.text}")
        return _field(node, base)
    if isinstance(node, _Const):
        return node.value
    if isinstance(node, _Dot):
        return dot
    if isinstance(node, _Pipe):
        value: Any = None
        for i, cmd in enumerate(node.commands):
            value = _eval(cmd, dot, functions, value, piped=i > 0)
        return value
    args = [_eval(a, dot, functions) for a in node.args]
    if piped:
        args.append(last)
    if node.name in _PRINTS:  # the data printable, the format's own newlines kept
        if node.name == "printf":  # (printf makes what it prints of its arguments so)
            args[:1] = [printable(a) if isinstance(a, str) else a for a in args[:1]]
        else:
            args = [printable(a) if isinstance(a, str) else a for a in args]
    fn = functions[node.name]
    try:
        return fn(*args)
    except _ExecError as e:
        raise _Raise(node, f"error calling {node.name}: {e}") from None
    except TypeError:
        raise _Raise(node, f"wrong number of args for {node.name}: got {len(args)}") from None
    except (ValueError, IndexError, KeyError, OverflowError) as e:
        raise _Raise(node, f"error calling {node.name}: {e}") from None


#: Functions that print their arguments: the arguments are made printable instead of
#: their result (``println`` ends in a newline, ``printf`` may be given one).
_PRINTS: Final = frozenset({"print", "printf", "println"})


def _emit(value: Any, call: _Arg, out: list[str]) -> None:
    if isinstance(call, _Const) or (
        isinstance(call, _Call) and (call.name == "json" or call.name in _PRINTS)
    ):
        out.append(go_string(value))  # the format's own text, JSON made safe, printed args
    else:
        out.append(printable(go_string(value)))


def parse(format: str, listing: bool = True) -> Template:
    """A ``--format`` as docker's CLI reads it: ``table`` (alone: the command's default
    table, which the caller supplies) or ``table FORMAT``, ``json``, or a template;
    ``\\t`` and ``\\n`` (the two characters) are a tab and a newline, and spaces around
    the format are dropped. Not ``listing`` (``inspect``'s ``--format``), only ``json`` is
    special: the template is taken as it is. Raises :class:`TemplateError` with Go's
    message."""
    try:
        if not listing:
            body = _JSON_FORMAT if format == "json" else format
            items = _Parser(body, _FUNCTIONS).parse()
            return Template(format, body, False, items, items)
        table = format.startswith(_TABLE)
        body = format[len(_TABLE) :] if table else _JSON_FORMAT if format == "json" else format
        body = body.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
        items = _Parser(body, _FUNCTIONS).parse()
        header_items = _Parser(body, _HEADER_FUNCTIONS).parse() if table else items
        return Template(format, body, table, items, header_items)
    except RecursionError:  # nested deeper than Python's stack (Go's limit is 10000)
        raise TemplateError(_PARSE_DEPTH) from None


# -- output ------------------------------------------------------------------------------


def tabwrite(text: str, min_width: int = MIN_WIDTH, padding: int = PADDING) -> str:
    """``text`` aligned as Go's ``text/tabwriter`` aligns it (docker's: ``minwidth`` 10,
    ``padding`` 3, spaces, no flags): a cell is text ended by a tab; a column of cells
    on consecutive lines is as wide as its widest cell and the padding, at least
    ``min_width``; a line's last cell (not ended by a tab) is not aligned, and a padded
    empty cell keeps its spaces, as Go writes it."""
    lines = [line.split("\t") for line in text.split("\n")]
    counts = (
        {len(cells) for cells in lines[:-1]} if text.endswith("\n") else {len(c) for c in lines}
    )
    if len(counts) == 1:  # one block of columns (nearly always): widths of whole columns
        n = counts.pop()
        if n == 1:
            return text
        rows = lines[:-1] if text.endswith("\n") else lines
        widths = [max(min_width, max(len(r[j]) for r in rows) + padding) for j in range(n - 1)]
        shown = ["".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + r[-1] for r in rows]
        return "\n".join(shown) + ("\n" if text.endswith("\n") else "")
    out: list[str] = []
    widths_stack: list[int] = []

    def write_lines(line0: int, line1: int) -> None:
        for cells in lines[line0:line1]:
            out.append(
                "".join(
                    c.ljust(widths_stack[j]) if j < len(widths_stack) else c
                    for j, c in enumerate(cells)
                )
            )

    def block(line0: int, line1: int) -> None:
        column = len(widths_stack)
        this = line0
        while this < line1:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(line0, this)
            line0 = this
            width = min_width
            while this < line1 and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths_stack.append(width)
            block(line0, this)
            widths_stack.pop()
            line0 = this
        write_lines(line0, line1)

    block(0, len(lines))
    return "\n".join(out)


def write(
    template: Template,
    rows: Iterable[Any],
    out: IO[str],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Each row rendered and ended by a newline, as docker's formatter writes them; for
    a table, the header row (from ``headers``, the titles of the fields) first, and all
    of it through :func:`tabwrite`. Nothing is written if a row fails."""
    body = "".join(template.render(row) + "\n" for row in rows)
    if not template.table:
        out.write(body)
        return
    out.write(tabwrite(template.header(headers or {}) + "\n" + body))


_Step = Callable[[Any, list[str]], None]


def _compile(items: Sequence[_Item], functions: Mapping[str, Callable[..., Any]]) -> _Step:
    """The items as one function of the dot and the output: what a row costs is the
    fields it prints, not a walk over the parsed template (a listing renders thousands)."""
    steps = [_compile_item(item, functions) for item in items]
    if len(steps) == 1:
        return steps[0]

    def run(dot: Any, out: list[str]) -> None:
        for step in steps:
            step(dot, out)

    return run


def _compile_item(item: _Item, functions: Mapping[str, Callable[..., Any]]) -> _Step:
    if isinstance(item, _Text):
        text = item.text

        def literal(_dot: Any, out: list[str]) -> None:
            out.append(text)

        return literal
    if isinstance(item, _Action):
        commands = item.pipe.commands
        if len(commands) == 1 and isinstance(commands[0], _Field) and commands[0].receiver is None:
            get = _compile_field(commands[0])

            def field(dot: Any, out: list[str]) -> None:
                value = get(dot)
                if type(value) is not str:
                    value = go_string(value)
                # (printable ASCII, the usual, is known so at C speed)
                out.append(value if value.isascii() and value.isprintable() else printable(value))

            return field
        pipe = item.pipe

        def action(dot: Any, out: list[str]) -> None:
            _emit(_eval(pipe, dot, functions), pipe.commands[-1], out)

        return action
    condition = item.pipe
    commands = condition.commands
    test: Callable[[Any], Any]
    if len(commands) == 1 and isinstance(commands[0], _Field) and commands[0].receiver is None:
        test = _compile_field(commands[0])
    else:

        def test(dot: Any) -> Any:
            return _eval(condition, dot, functions)

    then = _compile(item.then, functions)
    otherwise = _compile(item.otherwise, functions)
    if item.kind == "if":

        def if_(dot: Any, out: list[str]) -> None:
            if _truth(test(dot)):
                then(dot, out)
            else:
                otherwise(dot, out)

        return if_
    if item.kind == "with":

        def with_(dot: Any, out: list[str]) -> None:
            value = test(dot)
            if _truth(value):
                then(value, out)
            else:
                otherwise(dot, out)

        return with_

    def range_(dot: Any, out: list[str]) -> None:
        value = test(dot)
        elements: Iterable[Any]
        if isinstance(value, Struct):
            raise _Raise(condition, f"range can't iterate over {go_string(value)}")
        if isinstance(value, Mapping):
            elements = [value[k] for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            elements = value
        elif value is None or value is MISSING:
            elements = []
        elif isinstance(value, int) and not isinstance(value, bool):
            elements = range(value)
        else:
            raise _Raise(condition, f"range can't iterate over {go_string(value)}")
        ran = False
        for element in elements:
            ran = True
            then(element, out)
        if not ran:
            otherwise(dot, out)

    return range_


def _compile_field(node: _Field) -> Callable[[Any], Any]:
    """``.Name`` (the usual) looked up at once in a :class:`Struct`; anything else as
    :func:`_field` does."""
    if len(node.names) != 1:
        return lambda dot: _field(node, dot)
    name = node.names[0]

    def get(dot: Any) -> Any:
        if type(dot) is Struct:
            try:
                return dot.fields[name]
            except KeyError:
                raise _Raise(node, f"can't evaluate field {name} in type {dot.type_name}") from None
        return _field(node, dot)

    return get
