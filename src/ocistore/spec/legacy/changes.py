"""Docker's ``--change`` instructions, and the image config ``docker import`` writes.

``docker import -c INSTRUCTION`` (and ``docker commit -c``) hands its changes to moby's
``dockerfile.BuildFromConfig``: the changes are joined with newlines and parsed as a
Dockerfile by buildkit's parser, every instruction must be one of
:data:`VALID_CHANGE_COMMANDS`, and each is dispatched in turn on an empty
``container.Config`` as the classic builder does (variables from earlier ``ENV``
substituted where the builder substitutes them). This module follows Docker 20.10's
parser, shell lexer, instruction parsers and dispatchers, and its error texts (what
``docker`` prints after ``Error response from daemon:``); :func:`import_config` then
writes the config as Go's ``encoding/json`` writes moby's ``image.Image``.

Only what a change can reach is modelled: no build context, no build arguments, no
``SHELL`` (a change cannot set it, so shell forms always run ``/bin/sh -c``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from ...errors import InvalidInput
from . import gojson
from .gojson import GoTime, go_quote
from .v1 import _RAW_MAP, CONTAINER_CONFIG, IMAGE

__all__ = [
    "VALID_CHANGE_COMMANDS",
    "ChangeError",
    "build_from_config",
    "import_config",
]

#: The instructions a change may use (moby's ``validCommitCommands``). Docker refuses
#: ``STOPSIGNAL``, ``SHELL``, ``ARG``, ``RUN``, ``FROM``, ... with "X is not a valid
#: change command".
VALID_CHANGE_COMMANDS: Final = frozenset(
    [
        "cmd",
        "entrypoint",
        "healthcheck",
        "env",
        "expose",
        "label",
        "onbuild",
        "user",
        "volume",
        "workdir",
    ]
)

#: The shell a shell form runs under on Linux (a change cannot set ``SHELL``).
DEFAULT_SHELL: Final = ("/bin/sh", "-c")


class ChangeError(InvalidInput):
    """A change Docker would refuse: the message names the change and gives Docker's
    reason in Docker's words."""


class _Fail(Exception):
    """Docker's error text, before it is tied to the change it came from."""


# -- Go's character classes --------------------------------------------------------------


def _is_space(ch: str) -> bool:
    # Go's unicode.IsSpace: Python's isspace also counts U+001C..U+001F.
    if ch <= "\xff":
        return ch in "\t\n\v\f\r \x85\xa0"
    return ch.isspace()


_RE_WHITESPACE: Final = re.compile(r"[\t\v\f\r ]+")


def _trim_space(s: str) -> str:
    i, j = 0, len(s)
    while i < j and _is_space(s[i]):
        i += 1
    while j > i and _is_space(s[j - 1]):
        j -= 1
    return s[i:j]


def _trim_left_space(s: str) -> str:
    i = 0
    while i < len(s) and _is_space(s[i]):
        i += 1
    return s[i:]


# -- the Dockerfile parser (buildkit's frontend/dockerfile/parser) -----------------------


class _Node(NamedTuple):
    """One parsed instruction: its lower-cased name, ``--flags``, arguments (buildkit's
    ``nodeArgs``), whether they were a JSON array, and the line as written."""

    cmd: str
    flags: list[str]
    args: list[str]
    json: bool
    original: str


_RE_DIRECTIVE: Final = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


def _parse(text: str) -> tuple[list[_Node], str]:
    """Parse a Dockerfile as buildkit's ``parser.Parse``: its instructions and escape."""
    escape = "\\"
    directives_done = False
    seen: set[str] = set()
    continuation = re.compile(r"\\[ \t]*$")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # bufio.ScanLines: no empty last token
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    nodes: list[_Node] = []

    def directive(line: str) -> None:
        nonlocal directives_done, escape, continuation
        if directives_done:
            return
        m = _RE_DIRECTIVE.match(line)
        if m is None or m.group(1).lower() not in ("escape", "syntax"):
            directives_done = True
            return
        key = m.group(1).lower()
        if key in seen:
            raise _Fail(f"only one {key} parser directive can be used")
        seen.add(key)
        if key == "escape":
            token = m.group(2)
            if token not in ("`", "\\"):
                raise _Fail(f"invalid escape token '{token}' does not match ` or \\")
            escape = token
            continuation = re.compile(re.escape(token) + r"[ \t]*$")

    def process(line: str, strip_left: bool) -> str:
        if strip_left:
            line = _trim_left_space(line)
        directive(line)
        return "" if line.startswith("#") else line

    def is_comment(line: str) -> bool:
        return _trim_left_space(line).startswith("#")

    def trim_continuation(line: str) -> tuple[str, bool]:
        if continuation.search(line):
            return continuation.sub("", line), False
        return line, True

    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        line, end = trim_continuation(process(raw, True))
        if end and line == "":
            continue
        while not end and i < len(lines):
            raw = lines[i]
            i += 1
            more = process(raw, False)
            if is_comment(raw) or _trim_left_space(more) == "":
                continue
            more, end = trim_continuation(more)
            line += more
        nodes.append(_node_from_line(line, escape))
    if not nodes:
        raise _Fail("file with no instructions")
    return nodes, escape


def _node_from_line(line: str, escape: str) -> _Node:
    parts = _RE_WHITESPACE.split(_trim_space(line), maxsplit=1)
    cmd = parts[0].lower()
    rest, flags = "", list[str]()
    if len(parts) == 2:
        rest, flags = _extract_flags(parts[1])
    args, is_json = _LINE_PARSERS.get(cmd, _parse_ignore)(_trim_space(rest), escape)
    return _Node(cmd, flags, args, is_json, line)


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """buildkit's ``extractBuilderFlags`` (Docker 20.10): the leading ``--flag[=value]``
    words, and the rest of the line. It reads bytes, each as a rune of its own, so a flag's
    non-ASCII text comes out as Latin-1 mojibake, as in Docker's errors."""
    rest, words = _extract_flag_bytes(line.encode("utf-8", "surrogatepass").decode("latin-1"))
    return rest.encode("latin-1").decode("utf-8", "replace"), words


def _extract_flag_bytes(line: str) -> tuple[str, list[str]]:
    words: list[str] = []
    word = ""
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = ""
    blank_ok = False
    pos = 0
    n = len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _is_space(ch):
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = in_word
        if pos == n:
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == in_word:
            if _is_space(ch):
                phase = in_spaces
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                word, blank_ok = "", False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok, phase = ch, True, in_quote
                pos += 1
                continue
            if ch == "\\":
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            word += ch
            pos += 1
            continue
        # in a quote
        if ch == quote:
            phase = in_word
            pos += 1
            continue
        if ch == "\\":
            if pos + 1 == n:
                phase = in_word
                pos += 1
                continue
            pos += 1
            ch = line[pos]
        word += ch
        pos += 1
    return "", words


_ParsedArgs = tuple[list[str], bool]


def _parse_ignore(rest: str, escape: str) -> _ParsedArgs:
    return [], False


def _parse_string(rest: str, escape: str) -> _ParsedArgs:
    return ([rest] if rest else []), False


def _parse_whitespace_delimited(rest: str, escape: str) -> _ParsedArgs:
    return (_RE_WHITESPACE.split(rest) if rest else []), False


class _NotJSON(Exception):
    pass


def _first_value(data: bytes) -> bytes:
    """The bytes of the array ``data`` starts with: Docker 20.10 reads it with a
    ``json.Decoder``, which leaves what follows unread (``CMD ["a"] b`` is ``["a"]``)."""
    depth = 0
    in_string = False
    i = 0
    while i < len(data):
        c = data[i]
        if in_string:
            if c == 0x5C:  # a backslash: skip the escaped byte
                i += 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):  # [ {
            depth += 1
        elif c in (0x5D, 0x7D):  # ] }
            depth -= 1
            if depth == 0:
                return data[: i + 1]
        i += 1
    return data  # unfinished: the decoder's error


def _parse_json(rest: str) -> list[str]:
    rest = _trim_left_space(rest)
    if not rest.startswith("["):
        raise _NotJSON
    data = _first_value(rest.encode("utf-8", "surrogatepass"))
    try:
        value = gojson.unmarshal(data, gojson.Slice(gojson.ANY))
    except gojson.GoJSONError:
        raise _NotJSON from None
    items: list[Any] = value or []
    if not all(isinstance(s, str) for s in items):
        raise _Fail("when using JSON array syntax, arrays must be comprised of strings only")
    return list(items)


def _parse_maybe_json(rest: str, escape: str) -> _ParsedArgs:
    if not rest:
        return [], False
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return [rest], False


def _parse_maybe_json_to_list(rest: str, escape: str) -> _ParsedArgs:
    try:
        return _parse_json(rest), True
    except _NotJSON:
        return _parse_whitespace_delimited(rest, escape)


def _parse_words(rest: str, escape: str) -> list[str]:
    """buildkit's ``parseWords``: words split on spaces, quotes kept (the lexer drops
    them later)."""
    words: list[str] = []
    word = ""
    in_spaces, in_word, in_quote = 0, 1, 2
    phase = in_spaces
    quote = ""
    blank_ok = False
    pos = 0
    n = len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _is_space(ch):
                pos += 1
                continue
            phase = in_word
        if pos == n:
            if blank_ok or word:
                words.append(word)
            break
        if phase == in_word:
            if _is_space(ch):
                phase = in_spaces
                if blank_ok or word:
                    words.append(word)
                word, blank_ok = "", False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok, phase = ch, True, in_quote
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
            pos += 1
            continue
        # in a quote
        if ch == quote:
            phase = in_word
        if ch == escape and quote != "'":
            if pos + 1 == n:
                phase = in_word
                pos += 1
                continue
            pos += 1
            word += ch
            ch = rest[pos]
        word += ch
        pos += 1
    return words


def _name_val(rest: str, key: str, escape: str) -> _ParsedArgs:
    """``parseNameVal``: ``KEY name value`` (the old form) or ``KEY n=v n2=v2``; the
    arguments come in threes (name, value, separator), as buildkit's nodes."""
    words = _parse_words(rest, escape)
    if not words:
        return [], False
    if "=" not in words[0]:
        parts = _RE_WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _Fail(f"{key} must have two arguments")
        return [parts[0], parts[1], ""], False
    args: list[str] = []
    for word in words:
        if "=" not in word:
            raise _Fail(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        name, value = word.split("=", 1)
        args += [name, value, "="]
    return args, False


def _parse_env(rest: str, escape: str) -> _ParsedArgs:
    return _name_val(rest, "ENV", escape)


def _parse_label(rest: str, escape: str) -> _ParsedArgs:
    return _name_val(rest, "LABEL", escape)


def _parse_healthcheck(rest: str, escape: str) -> _ParsedArgs:
    sep = 0
    while sep < len(rest) and not _is_space(rest[sep]):
        sep += 1
    if sep == 0:
        return [], False
    following = sep
    while following < len(rest) and _is_space(rest[following]):
        following += 1
    command, is_json = _parse_maybe_json(rest[following:], escape)
    return [rest[:sep], *command], is_json


def _parse_subcommand(rest: str, escape: str) -> _ParsedArgs:
    if not rest:
        return [], False
    child = _node_from_line(rest, escape)  # the trigger must parse too
    return [child.cmd, child.original], False


_LINE_PARSERS: Final[dict[str, Callable[[str, str], _ParsedArgs]]] = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_whitespace_delimited,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_whitespace_delimited,
    "from": _parse_whitespace_delimited,
    "healthcheck": _parse_healthcheck,
    "label": _parse_label,
    "maintainer": _parse_string,
    "onbuild": _parse_subcommand,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}


# -- the shell lexer (buildkit's frontend/dockerfile/shell, Docker 20.10) ----------------


class _Lexer:
    """``shell.Lex``: quotes, escapes and ``$VAR`` / ``${VAR}`` / ``${VAR:-word}`` /
    ``${VAR:+word}`` / ``${VAR?msg}`` / ``${VAR:?msg}`` against the image's ``Env``."""

    def __init__(self, escape: str, env: Sequence[str]) -> None:
        self.escape = escape
        self.env = env
        self.text = ""
        self.pos = 0

    def word(self, text: str) -> str:
        return self._process(text)[0]

    def words(self, text: str) -> list[str]:
        return self._process(text)[1]

    def _process(self, text: str) -> tuple[str, list[str]]:
        self.text, self.pos = text, 0
        try:
            return self._stop_on("")
        except _Fail as e:
            raise _Fail(f"failed to process {go_quote(text)}: {e}") from None

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _next(self) -> str:
        ch = self._peek()
        if ch:
            self.pos += 1
        return ch

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while self._peek():
            ch = self._peek()
            if stop and ch == stop:
                self._next()
                return "".join(result), words.done()
            if ch in "'\"$":
                if ch == "'":
                    tmp = self._single_quote()
                elif ch == '"':
                    tmp = self._double_quote()
                else:
                    tmp = self._dollar()
                result.append(tmp)
                if ch == "$":
                    words.add_string(tmp)
                else:
                    words.add_raw(tmp)
                continue
            ch = self._next()
            if ch == self.escape:
                ch = self._next()
                if not ch:
                    break
                words.add_raw(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.done()

    def _single_quote(self) -> str:
        self._next()
        result: list[str] = []
        while True:
            ch = self._next()
            if not ch:
                raise _Fail("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(result)
            result.append(ch)

    def _double_quote(self) -> str:
        self._next()
        result: list[str] = []
        while True:
            ch = self._peek()
            if not ch:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self._next()
                return "".join(result)
            if ch == "$":
                result.append(self._dollar())
                continue
            ch = self._next()
            if ch == self.escape:
                following = self._peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self._next()
            result.append(ch)

    def _lookup(self, name: str) -> tuple[str, bool]:
        for entry in self.env:
            key, sep, value = entry.partition("=")
            if key == name:
                return (value if sep else ""), True
        return "", False

    def _dollar(self) -> str:
        self._next()
        if self._peek() != "{":
            name = self._name()
            return self._lookup(name)[0] if name else "$"
        self._next()
        if not self._peek():
            raise _Fail("syntax error: missing '}'")
        if self._peek() in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        if ch == "}":
            return self._lookup(name)[0]
        if ch == "?":
            word = self._modifier_word()
            value, found = self._lookup(name)
            if not found:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            return value
        if ch == ":":
            modifier = self._next()
            word = self._modifier_word()
            value, found = self._lookup(name)
            if modifier == "+":
                return word if value else value
            if modifier == "-":
                return value or word
            if modifier == "?":
                if not found:
                    raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
                if not value:
                    raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            raise _Fail(f"unsupported modifier ({modifier}) in substitution")
        raise _Fail("missing ':' in substitution")

    def _modifier_word(self) -> str:
        try:
            return self._stop_on("}")[0]
        except _Fail:
            if not self._peek():
                raise _Fail("syntax error: missing '}'") from None
            raise

    def _name(self) -> str:
        name: list[str] = []
        while self._peek():
            ch = self._peek()
            if not name and ch.isdecimal():
                while self._peek().isdecimal():
                    name.append(self._next())
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                return self._next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(self._next())
        return "".join(name)


class _Words:
    """The lexer's word splitting (``wordsStruct``), for ``EXPOSE``."""

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _is_space(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word, self.in_word = "", False
        else:
            self.add_raw(ch)

    def add_raw(self, s: str) -> None:
        self.word += s
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


# -- instructions (buildkit's instructions.ParseCommand) and their dispatch --------------


class _Flags:
    """``BFlags``: the ``--name=value`` flags an instruction takes."""

    def __init__(self, args: list[str], names: Sequence[str] = ()) -> None:
        self.values: dict[str, str] = {}
        used: set[str] = set()
        for arg in args:
            if not arg.startswith("--"):
                raise _Fail(f"Arg {go_quote(arg)} must start with '--'")
            if arg == "--":
                return
            name, has_value, value = arg[2:].partition("=")
            if name not in names:
                raise _Fail(f"Unknown flag: {name}")
            if name in used:
                raise _Fail(f"Duplicate flag specified: {name}")
            used.add(name)
            if not has_value:
                raise _Fail(f"Missing a value on flag: {name}")
            self.values[name] = value


def _at_least_one(name: str) -> _Fail:
    return _Fail(f"{name} requires at least one argument")


def _exactly_one(name: str) -> _Fail:
    return _Fail(f"{name} requires exactly one argument")


class _Builder:
    """The classic builder's dispatch state for a change: the ``container.Config`` (a
    dict by Go field name, as :mod:`gojson` marshals it) and whether ``CMD`` was set."""

    def __init__(self, escape: str) -> None:
        self.escape = escape
        self.config: dict[str, Any] = gojson.zero(CONTAINER_CONFIG)
        self.cmd_set = False

    def lexer(self) -> _Lexer:
        return _Lexer(self.escape, self.config["Env"] or [])

    def _kvps(self, node: _Node, name: str) -> list[tuple[str, str]]:
        _Flags(node.flags)
        args = node.args
        if not args:
            raise _at_least_one(name)
        if len(args) % 3:
            raise _Fail(f"Bad input to {name}, too many arguments")
        pairs = [(args[i], args[i + 1]) for i in range(0, len(args), 3)]
        if any(not key for key, _ in pairs):
            raise _Fail(f"{name} names can not be blank")
        return pairs

    def _expand_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        lex = self.lexer()
        return [(lex.word(k), lex.word(v)) for k, v in pairs]

    def _command_line(self, node: _Node, empty_as_nil: bool) -> tuple[list[str] | None, bool]:
        """``parseShellDependentCommand`` then ``resolveCmdLine`` on Linux."""
        args: list[str] | None
        if not node.args:
            args = []
        elif node.json:
            args = list(node.args)
        else:
            args = [" ".join(node.args)]
        if empty_as_nil and not args:
            args = None
        line = args
        if not node.json and line is not None:
            line = [*DEFAULT_SHELL, *line]
        return line, bool(args)

    def dispatch(self, node: _Node) -> None:
        getattr(self, "_" + node.cmd)(node)

    def _env(self, node: _Node) -> None:
        pairs = self._expand_pairs(self._kvps(node, "ENV"))
        env: list[str] = list(self.config["Env"] or [])
        for key, value in pairs:
            entry = f"{key}={value}"
            for i, existing in enumerate(env):
                if existing.split("=", 1)[0] == key:
                    env[i] = entry
                    break
            else:
                env.append(entry)
        self.config["Env"] = env

    def _label(self, node: _Node) -> None:
        pairs = self._expand_pairs(self._kvps(node, "LABEL"))
        labels: dict[str, str] = dict(self.config["Labels"] or {})
        labels.update(pairs)
        self.config["Labels"] = labels

    def _cmd(self, node: _Node) -> None:
        _Flags(node.flags)
        line, given = self._command_line(node, empty_as_nil=False)
        self.config["Cmd"] = line
        if given:
            self.cmd_set = True

    def _entrypoint(self, node: _Node) -> None:
        _Flags(node.flags)
        line, _ = self._command_line(node, empty_as_nil=True)
        self.config["Entrypoint"] = line
        if not self.cmd_set:
            self.config["Cmd"] = None

    def _user(self, node: _Node) -> None:
        _Flags(node.flags)
        if len(node.args) != 1:
            raise _exactly_one("USER")
        self.config["User"] = self.lexer().word(node.args[0])

    def _workdir(self, node: _Node) -> None:
        _Flags(node.flags)
        if len(node.args) != 1:
            raise _exactly_one("WORKDIR")
        path = self.lexer().word(node.args[0])
        if not path:
            raise _Fail("cannot normalize nothing")
        if not path.startswith("/"):
            path = _clean("/" + self.config["WorkingDir"] + "/" + path)
        self.config["WorkingDir"] = path

    def _volume(self, node: _Node) -> None:
        _Flags(node.flags)
        if not node.args:
            raise _at_least_one("VOLUME")
        if any(not _trim_space(v) for v in node.args):
            raise _Fail("VOLUME specified can not be an empty string")
        lex = self.lexer()
        volumes: dict[str, Any] = dict(self.config["Volumes"] or {})
        for v in node.args:
            path = lex.word(v)
            if not path:
                raise _Fail("VOLUME specified can not be an empty string")
            volumes[path] = {}
        self.config["Volumes"] = volumes

    def _expose(self, node: _Node) -> None:
        _Flags(node.flags)
        if not node.args:
            raise _at_least_one("EXPOSE")
        lex = self.lexer()
        ports: list[str] = []
        for p in node.args:
            ports += lex.words(p)
        exposed: dict[str, Any] = dict(self.config["ExposedPorts"] or {})
        for spec in ports:
            for port in _parse_port_spec(spec):
                exposed[port] = {}
        self.config["ExposedPorts"] = exposed

    def _onbuild(self, node: _Node) -> None:
        if not node.args:
            raise _at_least_one("ONBUILD")
        _Flags(node.flags)
        trigger = _trim_space(node.args[0]).upper()
        if trigger == "ONBUILD":
            raise _Fail("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger in ("MAINTAINER", "FROM"):
            raise _Fail(f"{trigger} isn't allowed as an ONBUILD trigger")
        expression = _RE_ONBUILD.sub("", node.original, count=1)
        self.config["OnBuild"] = [*(self.config["OnBuild"] or []), expression]

    def _healthcheck(self, node: _Node) -> None:
        if not node.args:
            raise _at_least_one("HEALTHCHECK")
        kind = node.args[0].upper()
        rest = node.args[1:]
        health: dict[str, Any]
        if kind == "NONE":
            if rest:
                raise _Fail("HEALTHCHECK NONE takes no arguments")
            health = {"Test": ["NONE"]}
        else:
            flags = _Flags(node.flags, ("interval", "timeout", "start-period", "retries"))
            if kind != "CMD":
                raise _Fail(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
            command = list(rest) if node.json else ([" ".join(rest)] if rest else [])
            if not command:
                raise _Fail("Missing command after HEALTHCHECK CMD")
            health = {"Test": ["CMD" if node.json else "CMD-SHELL", *command]}
            for flag, field in (
                ("interval", "Interval"),
                ("timeout", "Timeout"),
                ("start-period", "StartPeriod"),
            ):
                if interval := _interval(flag, flags.values.get(flag, "")):
                    health[field] = interval
            retries = flags.values.get("retries", "")
            if retries:
                count = _parse_int32(retries)
                if count < 1:
                    raise _Fail(f"--retries must be at least 1 (not {count})")
                health["Retries"] = count
        self.config["Healthcheck"] = health


#: What moby cuts from an ONBUILD line to keep its trigger (RE2's ``\s`` is ASCII).
_RE_ONBUILD: Final = re.compile(r"^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", re.IGNORECASE)


def _clean(path: str) -> str:
    """Go's ``filepath.Clean`` of an absolute path."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/" + "/".join(parts)


def _parse_int32(s: str) -> int:
    """Go's ``strconv.ParseInt(s, 10, 32)``, with its error text."""
    if re.fullmatch(r"[+-]?[0-9]+", s) is None:
        raise _Fail(f"strconv.ParseInt: parsing {go_quote(s)}: invalid syntax")
    value = int(s)
    if not -(2**31) <= value < 2**31:
        raise _Fail(f"strconv.ParseInt: parsing {go_quote(s)}: value out of range")
    return value


_DURATION_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART: Final = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")


def _time_quote(s: str) -> str:
    """The ``time`` package's own quoting: bytes outside printable ASCII as ``\\xNN``."""
    out = ['"']
    for ch in s:
        if ch < " " or ch >= "\x80":
            out += [f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass")]
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    out.append('"')
    return "".join(out)


def _parse_duration(s: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds, with its error texts."""
    invalid = _Fail(f"time: invalid duration {_time_quote(s)}")
    text = s
    negative = text[:1] == "-"
    if text[:1] in "+-" and text:
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise invalid
    total = 0
    while text:
        m = _DURATION_PART.match(text)
        assert m is not None
        number, unit = m.group(1), m.group(2)
        if number in ("", ".") or not (number[0].isdigit() or number[1:2].isdigit()):
            raise invalid
        if not unit:
            raise _Fail(f"time: missing unit in duration {_time_quote(s)}")
        scale = _DURATION_UNITS.get(unit)
        if scale is None:
            raise _Fail(f"time: unknown unit {_time_quote(unit)} in duration {_time_quote(s)}")
        whole, _, fraction = number.partition(".")
        value = int(whole or "0") * scale
        if fraction:
            value += int(fraction) * scale // 10 ** len(fraction)
        total += value
        if total > 2**63 - 1:
            raise invalid
        text = text[m.end() :]
    return -total if negative else total


def _interval(flag: str, value: str) -> int:
    if not value:
        return 0
    d = _parse_duration(value)
    if d < 1_000_000:
        raise _Fail(f'Interval "{flag}" cannot be less than 1ms')
    return d


def _parse_port_range(ports: str) -> tuple[int, int]:
    def port(s: str) -> int:
        if re.fullmatch(r"[0-9]+", s) is None or int(s) > 0xFFFF:
            raise ValueError(s)
        return int(s)

    if not ports:
        raise ValueError(ports)
    if "-" not in ports:
        start = port(ports)
        return start, start
    parts = ports.split("-")
    start, end = port(parts[0]), port(parts[1])
    if end < start:
        raise ValueError(ports)
    return start, end


def _parse_port_spec(raw: str) -> list[str]:
    """go-connections' ``nat.ParsePortSpec``: the ports (``80/tcp``) a spec exposes."""
    parts = raw.split(":")
    container = parts[-1]
    ip, host = "", ""
    if len(parts) == 2:
        host = parts[0]
    elif len(parts) >= 3:
        ip, host = ":".join(parts[:-2]), parts[-2]
    proto_parts = container.split("/")
    if not container or not proto_parts[0]:
        proto, container = "", ""
    elif len(proto_parts) == 1:
        proto = "tcp"
    elif not proto_parts[1]:
        proto, container = "tcp", proto_parts[0]
    else:
        proto, container = proto_parts[1], proto_parts[0]
    address = ip[1:-1] if ip.startswith("[") and ip.endswith("]") else ip
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise _Fail(f"Invalid ip address: {address}") from None
    if not container:
        raise _Fail(f"No port specified: {raw}<empty>")
    try:
        start, end = _parse_port_range(container)
    except ValueError:
        raise _Fail(f"Invalid containerPort: {container}") from None
    if host:
        try:
            host_start, host_end = _parse_port_range(host)
        except ValueError:
            raise _Fail(f"Invalid hostPort: {host}") from None
        if end - start != host_end - host_start and end != start:
            raise _Fail(
                f"Invalid ranges specified for container and host Ports: {container} and {host}"
            )
    if proto.lower() not in ("tcp", "udp", "sctp"):
        raise _Fail(f"Invalid proto: {proto}")
    return [f"{p}/{proto.lower()}" for p in range(start, end + 1)]


# -- the verbs ---------------------------------------------------------------------------


def build_from_config(changes: Sequence[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """moby's ``BuildFromConfig`` on an empty ``container.Config`` (or on ``base``, an
    image's ``config``, as ``docker commit --change`` applies them to the container's):
    the config (a dict by Go field name) that ``changes`` make, or :class:`ChangeError`
    with Docker's reason.

    As Docker does, the whole text is parsed first, then every instruction's name is
    checked, then each is parsed and dispatched in turn."""
    if not changes:
        empty: dict[str, Any] = gojson.zero(CONTAINER_CONFIG)
        if base:
            empty.update((k, v) for k, v in base.items() if k in empty)
        return empty
    try:
        nodes, escape = _parse("\n".join(changes))
    except _Fail as e:
        raise ChangeError(f"changes: {e}") from None
    for node in nodes:
        if node.cmd not in VALID_CHANGE_COMMANDS:
            raise ChangeError(f"change {_shown(node)}: {node.cmd} is not a valid change command")
    builder = _Builder(escape)
    if base:
        builder.config.update((k, v) for k, v in base.items() if k in builder.config)
    for node in nodes:
        try:
            builder.dispatch(node)
        except _Fail as e:
            raise ChangeError(f"change {_shown(node)}: {e}") from None
    return builder.config


def _shown(node: _Node) -> str:
    return go_quote(_trim_space(node.original))


def import_config(
    config: dict[str, Any],
    diff_id: str,
    *,
    comment: str,
    created: GoTime,
    architecture: str,
    os: str = "linux",
) -> bytes:
    """The image config moby's ``ImportImage`` writes, byte for byte: ``config`` (from
    :func:`build_from_config`) as the image's and an empty ``container_config``, one
    history entry with the comment, the layer. ``docker_version`` is left out: no
    Docker engine made the image (see docs/design.md)."""
    image: dict[str, Any] = {
        "Comment": comment,
        "Created": created,
        "Config": config,
        "Architecture": architecture,
        "OS": os,
        "RootFS": {"Type": "layers", "DiffIDs": [diff_id]},
        "History": [{"Created": created, "Comment": comment}],
    }
    # image.Image's MarshalJSON: the struct, then its top-level keys sorted (a map of
    # raw messages), "so that a push/pull cycle with a legacy registry keeps the order".
    fields = gojson.unmarshal(gojson.marshal(image, IMAGE), _RAW_MAP)
    return gojson.marshal(fields, _RAW_MAP)
