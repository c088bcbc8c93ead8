"""The ``--format`` engine: Go's text/template subset and docker's CLI conventions
(``cli/command/formatter``, ``templates``), without an engine; the comparisons with a
real docker are in ``test_docker_images.py``."""

from __future__ import annotations

import io

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


def test_is_default_table() -> None:
    assert templates.is_default_table(None)
    assert templates.is_default_table("table")
    assert not templates.is_default_table("table {{.ID}}")
    assert not templates.is_default_table("json")
