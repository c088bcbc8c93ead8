"""The ``--format`` engine: Go's text/template subset and docker's CLI conventions
(``cli/command/formatter``, ``templates``), without an engine; the comparisons with a
real docker are in ``test_docker_images.py``."""

from __future__ import annotations

import io
import sys

import pytest

from ocistore.cli import templates
from ocistore.cli.templates import Struct, TemplateError, parse, tabwrite

ROW = Struct(
    {
        "ID": "0123456789ab",
        "Repository": "lab/x",
        "Tag": "<none>",
        "Size": "3B",
        "CreatedSince": "",
        "Labels": {"a": "1", "b": "two"},
        "Names": ["x", "y"],
        "Count": 2,
        "Ratio": 1.5,
        "Flag": True,
    },
    "*formatter.imageContext",
    sorted_json=True,
)
HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Size": "SIZE"}


@pytest.mark.parametrize(
    ("format", "expected"),
    [
        ("{{.ID}}", "0123456789ab"),
        ("{{.Repository}}:{{.Tag}}", "lab/x:<none>"),
        ("  {{.ID}}  ", "{{.ID}}".replace("{{.ID}}", "0123456789ab")),  # trimmed, as docker
        ("{{.ID}}\\t{{.Tag}}\\n", "0123456789ab\t<none>\n"),  # docker's \t and \n
        ("{{.Labels.a}} {{.Labels.zz}}", "1 <no value>"),  # a map's missing key
        ('{{index .Labels "b"}}', "two"),
        ("{{index .Names 1}}", "y"),
        ("{{json .Tag}}", '"<none>"'),  # docker's json: no HTML escapes
        ("{{json .Labels}}", '{"a":"1","b":"two"}'),
        ("{{json .Names}} {{json .Count}} {{json .Flag}}", '["x","y"] 2 true'),
        (
            "{{.Names}} {{.Labels}} {{.Count}} {{.Ratio}} {{.Flag}}",
            "[x y] map[a:1 b:two] 2 1.5 true",
        ),
        ("{{if .CreatedSince}}{{.CreatedSince}}{{else}}N/A{{end}}", "N/A"),
        ('{{if eq .Tag "<none>"}}dangling{{else if .ID}}tagged{{end}}', "dangling"),
        ('{{if ne .Tag "<none>"}}t{{else if .Flag}}f{{else}}e{{end}}', "f"),
        ("{{with .Labels}}{{.a}}{{end}}", "1"),
        ("{{range .Names}}[{{.}}]{{end}}", "[x][y]"),
        ("{{range .Labels}}{{.}},{{end}}", "1,two,"),
        ("{{range .Labels.zz}}x{{else}}none{{end}}", "none"),
        ("{{.ID | upper}} {{lower .Repository | title}}", "0123456789AB Lab/X"),
        ('{{join .Names ", "}} {{split "a:b" ":"}}', "x, y [a b]"),
        ("{{pad .Tag 1 2}}|{{pad .CreatedSince 1 1}}|", " <none>  ||"),
        ("{{truncate .ID 4}} {{truncate .Size 10}}", "0123 3B"),
        ("{{println .ID .Count}}", "0123456789ab 2\n"),
        ('{{printf "%s=%d" .Tag .Count}}', "<none>=2"),
        ("{{len .Names}} {{len .ID}}", "2 12"),
        ("{{and .Flag .Count}} {{or .CreatedSince .Tag}} {{not .Flag}}", "2 <none> false"),
        ("{{- .Tag -}}   !", "<none>!"),
        ("a {{- /* note */ -}} b", "ab"),
        ('{{"quoted\\tstring"}} {{`raw`}}', "quoted\tstring raw"),
    ],
)
def test_render(format: str, expected: str) -> None:
    assert parse(format).render(ROW) == expected


def test_json_of_a_row_is_docker_marshal_json() -> None:
    """``{{json .}}`` (and the format ``json``) of a formatter context: its map, keys
    sorted, HTML escaped (``\\u003cnone\\u003e``) as ``json.Marshal`` writes it."""
    row = Struct({"Tag": "<none>", "ID": "x", "Label": "✓ & é"}, "*t", sorted_json=True)
    expected = '{"ID":"x","Label":"✓ \\u0026 é","Tag":"\\u003cnone\\u003e"}'
    assert parse("{{json .}}").render(row) == expected
    assert parse("json").render(row) == expected
    plain = Struct({"B": 1, "A": 2}, "*t")  # a struct: its fields in order
    assert parse("{{json .}}").render(plain) == '{"B":1,"A":2}'


def test_what_a_terminal_acts_on_is_escaped() -> None:
    row = {"L": "a\tb\x1b[31m\u202e", "J": "x\u202ey"}
    assert parse("{{.L}}|").render(row) == "a\\tb\\x1b[31m\\u202e|"
    assert parse("{{json .J}}").render(row) == '"x\\u202ey"'  # still JSON


@pytest.mark.parametrize(
    ("format", "message"),
    [
        (
            "{{.Foo}}",
            'template: :1:2: executing "" at <.Foo>: can\'t evaluate field Foo in type '
            "*formatter.imageContext",
        ),
        (
            "{{json .Labels.a.b}}",
            'template: :1:7: executing "" at <.Labels.a.b>: can\'t evaluate field b in type string',
        ),
        ("x\\n{{.Nope}}", 'template: :2:2: executing "" at <.Nope>: can\'t evaluate field Nope'),
        ("{{.ID", "template: :1: unclosed action"),
        ("{{foo .ID}}", 'template: :1: function "foo" not defined'),
        ("{{if .ID}}x", "template: :1: unexpected EOF"),
        ("{{end}}", "template: :1: unexpected {{end}}"),
    ],
)
def test_errors_are_go_s(format: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        parse(format).render(ROW)
    assert str(e.value).startswith("template parsing error: " + message)
    assert "\n" not in str(e.value)


def test_table_header_is_the_template_on_the_titles() -> None:
    """docker's header: the template applied to the column titles with header functions
    (``json``, ``upper``, ... keep the title), every cell tab-separated and aligned."""
    t = parse("table {{.ID}}\\t{{json .Repository}}\\t{{lower .Tag}}")
    assert t.table
    assert t.header(HEADERS) == "IMAGE ID\tREPOSITORY\tTAG"
    out = io.StringIO()
    templates.write(t, [ROW, ROW], out, HEADERS)
    assert out.getvalue() == (
        "IMAGE ID       REPOSITORY   TAG\n"
        '0123456789ab   "lab/x"      <none>\n'
        '0123456789ab   "lab/x"      <none>\n'
    )


def test_a_table_keeps_the_padding_of_an_empty_last_cell() -> None:
    out = io.StringIO()
    templates.write(parse("table {{.Tag}}\\t"), [ROW], out, HEADERS)
    assert out.getvalue() == "TAG       \n<none>    \n"


def test_not_a_table_writes_rows_as_they_are() -> None:
    out = io.StringIO()
    templates.write(parse("{{.ID}}\\t{{.Tag}}"), [ROW], out, HEADERS)
    assert out.getvalue() == "0123456789ab\t<none>\n"


def test_nothing_is_written_when_a_row_fails() -> None:
    out = io.StringIO()
    with pytest.raises(TemplateError):
        templates.write(parse("table {{.ID}}\\t{{.Bad}}"), [ROW], out, HEADERS)
    assert out.getvalue() == ""


def test_tabwrite_is_go_s_elastic_tabstops() -> None:
    """Go's text/tabwriter example: columns are blocks of consecutive lines with a cell
    there, so the b's and the d's are in different columns (minwidth 0, padding 1)."""
    text = "a\tb\tc\naa\tbb\tcc\naaa\t\naaaa\tdddd\teeee\n"
    assert tabwrite(text, 0, 1) == "a    b  c\naa   bb cc\naaa  \naaaa dddd eeee\n"
    assert tabwrite("x\ty\n", 10, 3) == "x         y\n"
    assert tabwrite("only\n", 10, 3) == "only\n"


# What the cases below expect is what docker 28's CLI (Go's text/template and fmt)
# printed for them: `docker context ls --format '...'` needs no engine.


@pytest.mark.parametrize(
    ("format", "expected"),
    [
        ('{{printf "%-20s|" .Repository}}', "lab/x               |"),
        ('{{printf "%10s|" "busybox"}}', "   busybox|"),
        ('{{printf "%05s|%-05s|%08.3s" "ab" "ab" "abcdef"}}', "000ab|ab   |00000abc"),
        ('{{printf "%.3s|%.0s|%5.1s|" "日本語日本語" "ab" "abc"}}', "日本語||    a|"),
        (
            '{{printf "%05d|%-5d|%+d|% d|%.3d|%.0d|%8.3d" -42 7 5 5 7 0 -7}}',
            "-0042|7    |+5| 5|007||    -007",
        ),
        (
            '{{printf "%x|%X|%#x|%#08x|% x|% #x|%#o|%O|%b" "hi" 255 255 255 "ab" "ab" 8 8 5}}',
            "6869|FF|0xff|0x000000ff|61 62|0x61 0x62|010|0o10|101",
        ),
        ('{{printf "%c|%U|%#U|%q|%q" 233 233 233 65 39}}', "é|U+00E9|U+00E9 'é'|'A'|'\\''"),
        (
            '{{printf "%6.2f|%-6.2f|%+6.2f|% 6.2f|%06.2f" 3.14159 3.14159 3.1 3.1 -3.14159}}',
            "  3.14|3.14  | +3.10|  3.10|-03.14",
        ),
        (
            '{{printf "%v|%e|%g|%G|%.3g|%010.4g" 1e6 1.5 0.000012 1e30 0.00012345 123.456}}',
            "1e+06|1.500000e+00|1.2e-05|1E+30|0.000123|00000123.5",
        ),
        (
            '{{printf "%x|%X|%.1x|%b|%x" 1.5 -1.5 1.0 1.0 5e-324}}',
            "0x1.8p+00|-0X1.8P+00|0x1.0p+00|4503599627370496p-52|0x1p-1074",
        ),
        ('{{printf "%q %+q %#q %#q" "a" "é" "x`" "y"}}', '"a" "\\u00e9" "x`" `y`'),
        (
            '{{printf "%v|%10v|%-7t|%v" true 1.5 false .Labels}}',
            "true|       1.5|false  |map[a:1 b:two]",
        ),
        (
            '{{printf "%d|%x|%s" .Names .Names .Names}}',
            "[%!d(string=x) %!d(string=y)]|[78 79]|[x y]",
        ),
        (
            '{{printf "%d %s %t %x %5z" .Tag .Count .Count 1.5 "ab"}}',
            "%!d(string=<none>) %!s(int=2) %!t(int=2) 0x1.8p+00 %!z(string=   ab)",
        ),
        ('{{printf "%s %s" .Tag}}', "<none> %!s(MISSING)"),
        ('{{printf "|%s" .Tag .Count .Tag}}', "|<none>%!(EXTRA int=2, string=<none>)"),
        ('{{printf "%s|%v|%d" .Labels.zz .Labels.zz .Labels.zz}}', "%!s(<nil>)|<nil>|%!d(<nil>)"),
        (
            '{{printf "%*d|%-*d|%.*f|%*d" 5 1 5 2 2 3.14159 "x" 3}}',
            "    1|2    |3.14|%!(BADWIDTH)3",
        ),
        ('{{printf "%[2]s %[1]s|%[3]s|%[9]d" "a" "b" 1}}', "b a|%!s(int=1)|%!d(BADINDEX)"),
        (
            '{{printf "%"}}|{{printf "%5%|%z" 1}}|{{printf "%!"}}',
            "%!(NOVERB)|%|%!z(int=1)|%!!(MISSING)",
        ),
        (
            '{{printf "%T %T %T %T" .Tag .Count .Ratio .}}',
            "string int float64 *formatter.imageContext",
        ),
    ],
)
def test_printf_is_go_s_fmt(format: str, expected: str) -> None:
    assert parse(format).render(ROW) == expected


def test_printf_makes_its_arguments_printable_once() -> None:
    """What printf prints of the data is :func:`printable`; ``%q`` is Go's quoting of
    the data itself (``"a\\tb"``), not of an escape made before."""
    row = {"L": "a\tb\x1b"}
    assert parse('{{printf "%s|%q|%x" .L .L .L}}').render(row) == 'a\\tb\\x1b|"a\\tb\\x1b"|6109621b'


def test_a_float_prints_as_go_s_v() -> None:
    row = {"A": 1e6, "B": 1.5, "C": 1e-05, "D": 123456.0, "E": 1e21, "F": float("inf")}
    assert parse("{{.A}} {{.B}} {{.C}} {{.D}} {{.E}} {{.F}}").render(row) == (
        "1e+06 1.5 1e-05 123456 1e+21 +Inf"
    )


@pytest.mark.parametrize(
    "format",
    [
        "{{" + "(" * 2000 + "1" + ")" * 2000 + "}}",
        "{{if 1}}" * 2000 + "x" + "{{end}}" * 2000,
        "table {{.ID}}\\t" + "{{with .}}" * 2000 + "x" + "{{end}}" * 2000,
    ],
)
def test_a_format_nested_too_deep_is_an_error(format: str) -> None:
    with pytest.raises(TemplateError) as e:
        parse(format)
    assert str(e.value) == "template parsing error: template: :1: max expression depth exceeded"


def test_a_row_rendered_too_deep_is_an_error() -> None:
    """Rendering with little stack left (the template parses) is an error too, not a
    RecursionError."""
    nested = "{{if 1}}" * 200 + "x" + "{{end}}" * 200
    t = parse(nested)
    assert t.render(ROW) == "x"

    def deep(n: int) -> str:
        return deep(n - 1) if n else t.render(ROW)

    with pytest.raises(TemplateError) as e:
        deep(sys.getrecursionlimit() - 100)
    assert str(e.value) == "template parsing error: template: :1: exceeded maximum template depth"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("don't stop", "Don'T Stop"),
        ("hello_world foo-bar é.x ÿa 1a a1b x·y", "Hello_world Foo-Bar É.X Ÿa 1a A1b X·y"),
        ("ab\u00a0cd\u2003ef.gh,ij(kl)mn[op]", "Ab\u00a0Cd\u2003Ef.Gh,Ij(Kl)Mn[Op]"),
        ("ǆa ßb ﬁc", "ǅa ßb ﬁc"),  # one rune to one rune: title case, else as it is
        ("日本 語x αβ γ-δ", "日本 語x Αβ Γ-Δ"),
        ("a\u0301b c\u200bd", "A\u0301b C\u200bd"),  # a mark, a format char: no separator
    ],
)
def test_title_is_go_s_strings_title(text: str, expected: str) -> None:
    assert templates._title(text) == expected


@pytest.mark.parametrize(
    ("format", "expected"),
    [
        (
            '{{eq .Tag "<none>"}} {{eq .Tag "x" "<none>"}} {{eq .Count 2}} {{eq .Flag true}}',
            "true true true true",
        ),
        (
            '{{ne .Tag "x"}} {{lt .Tag "z"}} {{le 1 1}} {{gt 2.5 1.5}} {{ge "a" "b"}}',
            "true true true true false",
        ),
        ('{{eq .Labels.zz "x"}} {{eq .Labels.zz nil}} {{eq .Tag "<none>" 1}}', "false true true"),
    ],
)
def test_comparisons(format: str, expected: str) -> None:
    assert parse(format).render(ROW) == expected


@pytest.mark.parametrize(
    ("format", "message"),
    [
        ("{{eq .ID 1}}", "error calling eq: incompatible types for comparison"),
        ('{{ne .Flag "true"}}', "error calling ne: incompatible types for comparison"),
        ("{{eq .Count 2.0}}", "error calling eq: incompatible types for comparison"),
        ("{{lt 1 1.5}}", "error calling lt: incompatible types for comparison"),
        ('{{eq 1 2 "x"}}', "error calling eq: incompatible types for comparison"),
        ("{{ge .Flag 1}}", "error calling ge: incompatible types for comparison"),
        ("{{gt true false}}", "error calling gt: invalid type for comparison"),
        ("{{lt .Labels.zz 1}}", "error calling lt: invalid type for comparison"),
        ("{{eq 1}}", "error calling eq: missing argument for comparison"),
        ("{{eq .Names .Names}}", "error calling eq: non-comparable type [x y]: []interface {}"),
        ("{{if eq .ID 1}}x{{end}}", "error calling eq: incompatible types for comparison"),
    ],
)
def test_comparing_what_go_cannot_is_an_error(format: str, message: str) -> None:
    with pytest.raises(TemplateError) as e:
        parse(format).render(ROW)
    assert str(e.value).endswith(message)
    assert str(e.value).startswith("template parsing error: template: :1:")
