"""The Go templates docker users write with ``--format``, and the tables they make.

The subset of Go's ``text/template`` that ``--format`` is used with: literal text,
``{{.Field}}`` and ``{{.A.B}}``, ``{{.}}``, pipelines (``{{.Tag | lower}}``), string and
number arguments, ``{{if}}``/``{{else if}}``/``{{else}}``/``{{end}}``, ``{{range}}``,
``{{with}}``, trim markers (``{{-`` and ``-}}``) and comments; the functions docker's CLI
adds (``json``, ``join``, ``split``, ``lower``, ``upper``, ``title``, ``pad``,
``truncate``) and Go's own (``index``, ``len``, ``print``, ``printf`` with ``%s %d %v
%q``, ``println``, ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``, ``or``,
``not``). As docker's CLI (``cli/command/formatter``): a format starting with ``table``
is a table (its header row is the template applied to the column titles, cells are
separated by tabs and aligned by Go's tab writer: at least 10 wide, padded by 3), the
format ``json`` alone is ``{{json .}}``, the literal two characters ``\\t`` and ``\\n``
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
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

from ..errors import InvalidInput
from .views import printable

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
    """``%v`` of a float64: the shortest form, exponent from 1e21 (and below 1e-4)."""
    if f != f or f in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(f)]
    if f == int(f) and abs(f) < 1e21:
        return str(int(f)) if f or str(f)[0] != "-" else "-0"
    r = repr(f)
    if abs(f) >= 1e21 or abs(f) < 1e-4:
        mantissa, _, exp = f"{f:e}".partition("e")
        digits = repr(float(mantissa)).rstrip("0").rstrip(".")
        # the shortest mantissa: Python's repr of the number has it
        short = r.partition("e")[0] if "e" in r else digits
        if "." in short:
            short = short.rstrip("0").rstrip(".")
        sign, num = exp[0], exp[1:].lstrip("0") or "0"
        return f"{short}e{sign}{num.zfill(2)}"
    return r


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
    return "interface {}"


def _truth(value: Any) -> bool:
    """Go's ``if``: false, 0, nil and empty values are false; a struct is true."""
    if isinstance(value, Struct):
        return True
    if value is MISSING or value is None:
        return False
    return bool(value)


_UNSAFE_IN_JSON: Final = re.compile(
    "[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


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
    if isinstance(value, Struct) and value.sorted_json:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    if _UNSAFE_IN_JSON.search(text):
        text = _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


# -- functions ---------------------------------------------------------------------------


def _title(s: str) -> str:
    """Go's ``strings.Title``: a letter after a non-letter is upper-cased."""
    out: list[str] = []
    prev = " "
    for c in s:
        out.append(c.upper() if not (prev.isalnum() or prev == "_" or prev == "'") else c)
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
        out.append(go_string(a))
    return "".join(out)


_VERB: Final = re.compile(r"%([-+# 0]*\d*(?:\.\d+)?)([vsdqxXtf%])")


def _printf(fmt: Any, *args: Any) -> str:
    values = list(args)

    def verb(m: re.Match[str]) -> str:
        flags, v = m.group(1), m.group(2)
        if v == "%":
            return "%"
        if not values:
            return f"%!{v}(MISSING)"
        a = values.pop(0)
        if v == "q":
            return json.dumps(go_string(a), ensure_ascii=False)
        if v in "dxX" and isinstance(a, int):
            return format(a, flags + v.replace("d", "d"))
        if v == "f" and isinstance(a, (int, float)):
            return format(float(a), flags + "f")
        text = go_string(a)
        return format(text, flags.replace("0", "")) if flags else text

    return _VERB.sub(verb, go_string(fmt))


def _compare(op: str) -> Callable[..., bool]:
    def cmp(a: Any, *bs: Any) -> bool:
        if op == "eq":
            return any(a == b for b in bs)
        b = bs[0]
        if type(a) is not type(b) and not (
            isinstance(a, (int, float)) and isinstance(b, (int, float))
        ):
            raise _ExecError("incompatible types for comparison")
        if op == "ne":
            return bool(a != b)
        if op == "lt":
            return bool(a < b)
        if op == "le":
            return bool(a <= b)
        if op == "gt":
            return bool(a > b)
        return bool(a >= b)

    return cmp


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
    "println": lambda *a: " ".join(go_string(x) for x in a) + "\n",
    "eq": _compare("eq"),
    "ne": _compare("ne"),
    "lt": _compare("lt"),
    "le": _compare("le"),
    "gt": _compare("gt"),
    "ge": _compare("ge"),
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
        if kind == "ident" and value in ("true", "false", "nil"):
            if value == "nil":
                raise self.error(at, "nil is not a command")
            return _Const(pos, value, value == "true"), k + 1
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


class Template:
    """A parsed ``--format``: :meth:`render` a row, :attr:`table` whether it is a table
    (:meth:`header` then gives its header row)."""

    def __init__(
        self, format: str, source: str, table: bool, items: list[_Item], header_items: list[_Item]
    ) -> None:
        self.format = format
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
        return "".join(out)

    def header(self, headers: Mapping[str, str]) -> str:
        """The header row of a table: the template applied to the column titles (a Go map,
        ``{"ID": "IMAGE ID", ...}``), with docker's header functions."""
        out: list[str] = []
        try:
            self._run_header(dict(headers), out)
        except _Raise as e:
            raise self._exec_error(e) from None
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
        args = [printable(a) if isinstance(a, str) else a for a in args]
    fn = functions[node.name]
    try:
        return fn(*args)
    except _ExecError as e:
        raise _Raise(node, f"error calling {node.name}: {e}") from None
    except TypeError:
        raise _Raise(node, f"wrong number of args for {node.name}: got {len(args)}") from None
    except (ValueError, IndexError, KeyError) as e:
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


def is_default_table(format: str | None) -> bool:
    """Whether ``format`` asks for the command's default table (none, or ``table``)."""
    return format is None or format.strip(" ") == _TABLE


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
