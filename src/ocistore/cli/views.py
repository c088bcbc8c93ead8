"""What the command line prints: tables and JSON lines shaped like Docker's, the units
Docker prints them in, and :func:`printable`, which every text printed for a person goes
through."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from ..spec.gotime import ZERO_UNIX, GoTime, unix_nanos, unix_seconds
from ..spec.reference import split_familiar
from ..store.images import ImageRecord

if TYPE_CHECKING:
    from ..store.store import HistoryEntry
    from ..store.usage import DiskUsage, PruneReport


#: What a terminal would act on rather than show: C0 controls (ESC, CR, BEL, and the
#: newline and tab that would break a table row or a one-line error), DEL, C1 controls,
#: the line and paragraph separators, the bidirectional overrides and isolates (which
#: reorder what follows them on the screen), and lone surrogates (a file name's
#: undecodable bytes, which cannot even be encoded for output).
_UNPRINTABLE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unprintable_in(text: str) -> bool:
    if text.isascii():  # (ASCII's printable characters are the C method's: no scan here)
        return not text.isprintable()
    return _UNPRINTABLE.search(text) is not None


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    named = _ESCAPES.get(c)
    if named is not None:
        return named
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that did not decode (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` safe to print for a person: every character a terminal would act on
    (see ``_UNPRINTABLE``) is written as an escape (``\\x1b``, ``\\r``, ``\\n``,
    ``\\u202e``; an undecodable byte of a file name as ``\\xff``), much as git quotes
    such names; printable Unicode stays as it is. The result is printable itself, so
    applying this twice changes nothing. Text that needs no escape (nearly all) is
    returned after one scan."""
    if not _unprintable_in(text):
        return text
    return _UNPRINTABLE.sub(_escape, text)


def shorten(text: str, width: int) -> str:
    """``text`` made :func:`printable` and, when longer than ``width`` characters, cut
    to ``width - 1`` and an ellipsis, as docker truncates; an escape is never cut in two."""
    shown = printable(text)
    if len(shown) <= width:
        return shown
    out: list[str] = []
    n = 0
    for c in text:
        piece = printable(c)
        if n + len(piece) > width - 1:
            break
        out.append(piece)
        n += len(piece)
    return "".join(out) + "…"


def ellipsis(text: str, width: int) -> str:
    """docker's ``Ellipsis``: ``text`` cut to ``width - 1`` characters and ``…`` when
    longer than ``width``, the characters as they are (escaped only when printed, so a
    JSON line holds the text itself)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def human_size(n: float, precision: int = 3) -> str:
    """Sizes as Docker prints them: decimal units, three significant digits (``5.58MB``,
    as ``docker images``), or four (``units.HumanSize``: ``5.583MB``, as ``docker
    system df`` and ``image prune``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.{precision}g}{units[i]}"


def human_duration(seconds: float) -> str:
    """Docker's ``units.HumanDuration``, exactly: "About a minute", "3 hours", "2 weeks".

    As in Go, seconds and minutes are truncated, hours rounded half up (``int(h + 0.5)``)
    and years counted from the truncated hours. Longest durations are tested first:
    images are mostly days to years old.
    """
    if seconds >= 3600:
        hours = int(seconds / 3600 + 0.5)
        if hours >= 24 * 365 * 2:
            return f"{int(seconds / 3600) // 24 // 365} years"
        if hours >= 24 * 30 * 2:
            return f"{hours // 24 // 30} months"
        if hours >= 24 * 7 * 2:
            return f"{hours // 24 // 7} weeks"
        if hours >= 48:
            return f"{hours // 24} days"
        return "About an hour" if hours == 1 else f"{hours} hours"
    if seconds >= 60:
        minutes = int(seconds / 60)
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    return "1 second" if s == 1 else f"{s} seconds"


def since(value: str, now: float | None = None) -> str:
    """How long ago an RFC 3339 time was (``now`` in seconds since the epoch), in whole
    seconds as docker counts; ``N/A`` for none."""
    ns = unix_nanos(value)
    return "N/A" if ns is None else since_seconds(ns // 1_000_000_000, now)


def print_columns(columns: Sequence[Sequence[str]], out: IO[str], min_width: int = 0) -> None:
    """Columns (each headed by its title) as Go's tab writer aligns them (through
    :func:`~ocistore.cli.templates.tabwrite`, the one tab writer): padded to the widest
    cell and 3 more, at least ``min_width`` (docker's tables: 10), the last cell of a line
    not padded. Every cell is made :func:`printable` (one scan per column finds the rare
    column that needs it), so no cell holds a tab or a newline."""
    from .templates import tabwrite

    columns = [
        [printable(cell) for cell in column] if _unprintable_in("".join(column)) else column
        for column in columns
    ]
    rows = ("\t".join(row) for row in zip(*columns, strict=True))
    out.write(tabwrite("\n".join(rows) + "\n", min_width=min_width))


#: ``docker images``'s default tables and the titles of its fields (docker/cli's
#: ``formatter/image.go``).
IMAGES_TABLE: Final = (
    "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t"
    "{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}"
)
IMAGES_TABLE_WITH_DIGEST: Final = (
    "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t"
    "{{if .CreatedSince }}{{.CreatedSince}}{{else}}N/A{{end}}\t{{.Size}}"
)
IMAGES_QUIET: Final = "{{.ID}}"
IMAGE_HEADERS: Final = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
    "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}
#: The type docker's errors name for a row of ``docker images``.
IMAGE_ROW_TYPE: Final = "*formatter.imageContext"


def images_format(format: str | None, quiet: bool, digests: bool) -> str:
    """The template ``docker images`` uses: its default table (with a DIGEST column for
    ``--digests``), ``{{.ID}}`` for ``-q``, else the ``--format`` given (a table of it
    with ``--digests`` gains a digest column), as docker/cli's ``NewImageFormat``."""
    if not format or format == "table":
        if quiet:
            return IMAGES_QUIET
        return IMAGES_TABLE_WITH_DIGEST if digests else IMAGES_TABLE
    if format.startswith("table") and digests and "{{.Digest}}" not in format:
        return format + "\t{{.Digest}}"
    return format


@functools.lru_cache(maxsize=1 << 16)
def created_seconds(value: str) -> int:
    """An RFC 3339 time cut to whole seconds since the epoch, as the engine's image list
    gives ``Created``: Go's zero time for a missing or unreadable one. (Remembered: a
    listing sorts by it and then shows it.)"""
    return unix_seconds(value)


def go_local_time(unix: int) -> str:
    """Go's ``time.Unix(s, 0).String()`` in the local time zone: ``2026-12-01 20:22:48
    +0000 UTC`` (docker's ``CreatedAt`` of an image)."""
    try:
        t = datetime.fromtimestamp(unix, UTC).astimezone()
    except (OverflowError, OSError, ValueError):  # Go's zero time, before Python's
        return "0001-01-01 00:00:00 +0000 UTC"
    return f"{t.year:04d}-" + t.strftime("%m-%d %H:%M:%S %z ") + (t.tzname() or "")


class _ImageShared:
    """What the rows of one listing share: the clock, the truncation, and the cells
    already made (images of one time or size say the same)."""

    __slots__ = ("ages", "now", "sizes", "times", "trunc")

    def __init__(self, trunc: bool, now: float) -> None:
        self.trunc = trunc
        self.now = now
        self.ages: dict[int, str] = {}
        self.sizes: dict[tuple[int, int], str] = {}
        self.times: dict[int, str] = {}

    def size(self, n: int, precision: int) -> str:
        shown = self.sizes.get((n, precision))
        if shown is None:
            shown = self.sizes[n, precision] = human_size(n, precision)
        return shown


#: The fields of a row of ``docker images`` (docker/cli's imageContext), in Go's order.
IMAGE_FIELDS: Final = (
    "Containers",
    "CreatedAt",
    "CreatedSince",
    "Digest",
    "ID",
    "Repository",
    "SharedSize",
    "Size",
    "Tag",
    "UniqueSize",
    "VirtualSize",
)
_IMAGE_FIELD_SET: Final = frozenset(IMAGE_FIELDS)


class ImageRow(Mapping[str, str]):
    """A row of ``docker images``: its fields made when a template asks for them."""

    __slots__ = ("_digest", "_rec", "_repo", "_shared", "_tag", "_unix")

    def __init__(
        self, shared: _ImageShared, rec: ImageRecord, unix: int, repo: str, tag: str, digest: str
    ) -> None:
        self._shared = shared
        self._rec = rec
        self._unix = unix
        self._repo = repo
        self._tag = tag
        self._digest = digest

    def __getitem__(self, key: str) -> str:
        if key == "Repository":
            return self._repo
        if key == "Tag":
            return self._tag
        if key == "ID":
            return self._rec.id.hex[:12] if self._shared.trunc else str(self._rec.id)
        if key == "Size":
            return self._shared.size(self._rec.size, 3)
        if key == "CreatedSince":
            if self._unix == ZERO_UNIX:
                return ""
            ages = self._shared.ages
            age = ages.get(self._unix)
            if age is None:
                age = ages[self._unix] = since_seconds(self._unix, self._shared.now)
            return age
        if key == "CreatedAt":
            times = self._shared.times
            at = times.get(self._unix)
            if at is None:
                at = times[self._unix] = go_local_time(self._unix)
            return at
        if key == "Digest":
            return self._digest
        if key == "VirtualSize":
            return self._shared.size(self._rec.size, 4)
        if key in _IMAGE_FIELD_SET:  # Containers, SharedSize, UniqueSize: not counted
            return "N/A"
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in _IMAGE_FIELD_SET

    def __iter__(self) -> Iterator[str]:
        return iter(IMAGE_FIELDS)

    def __len__(self) -> int:
        return len(IMAGE_FIELDS)


def image_rows(
    images: Iterable[tuple[ImageRecord, list[str]]],
    trunc: bool = True,
    digests: bool = False,
    need_digest: bool = False,
    now: float | None = None,
) -> list[Any]:
    """The rows ``docker images`` formats, as docker/cli's image formatter makes them
    (``templates.Struct`` s of an :class:`ImageRow`): one per repository and tag of each
    image (with ``need_digest``, one per tag and digest of its repository), one per
    repository named only by digest (with ``digests``, one per digest), ``<none>`` for
    an image without names."""
    from .templates import Struct

    shared = _ImageShared(trunc, time.time() if now is None else now)
    rows: list[Any] = []
    add = rows.append
    for rec, names in images:
        unix = created_seconds(rec.created)
        if len(names) == 1 and "@" not in names[0]:  # the usual: one tag
            repo, tag, _ = split_familiar(names[0])
            row = ImageRow(shared, rec, unix, repo, tag or "<none>", "<none>")
            add(Struct(row, IMAGE_ROW_TYPE, sorted_json=True))
            continue
        if not names:
            add(
                Struct(
                    ImageRow(shared, rec, unix, "<none>", "<none>", "<none>"), IMAGE_ROW_TYPE, True
                )
            )
            continue
        tags: dict[str, list[str]] = {}
        by_digest: dict[str, list[str]] = {}
        for name in names:
            repo, tag, digest = split_familiar(name)
            if digest is not None:
                by_digest.setdefault(repo, []).append(digest)
            elif tag:
                tags.setdefault(repo, []).append(tag)
        for repo, repo_tags in tags.items():
            repo_digests = by_digest.pop(repo, []) if need_digest else []
            by_digest.pop(repo, None)
            for tag in repo_tags:
                for digest in repo_digests or ["<none>"]:
                    add(
                        Struct(ImageRow(shared, rec, unix, repo, tag, digest), IMAGE_ROW_TYPE, True)
                    )
        for repo, repo_digests in by_digest.items():
            for digest in repo_digests if digests else [""]:
                add(
                    Struct(
                        ImageRow(shared, rec, unix, repo, "<none>", digest), IMAGE_ROW_TYPE, True
                    )
                )
    return rows


def print_images(
    images: list[tuple[ImageRecord, list[str]]],
    out: IO[str],
    no_trunc: bool = False,
    digests: bool = False,
    format: str | None = None,
    quiet: bool = False,
) -> None:
    """``images`` as ``docker images`` prints it: its table (``--digests``: with a
    DIGEST column), ``-q`` the IDs, or a ``--format`` (a Go template, ``table ...``,
    ``json``) applied to each row (see :func:`image_rows`). Raises
    ``templates.TemplateError`` for a bad format, before anything is written."""
    from . import templates

    final = images_format(format, quiet, digests)
    template = templates.parse(final)
    need_digest = digests or "{{.Digest}}" in final
    rows = image_rows(images, not no_trunc, digests, need_digest)
    templates.write(template, rows, out, IMAGE_HEADERS)


#: Go's longest time.Duration, in seconds: how long ago docker says a time is at most
#: (a history entry without a time was "292 years ago"; images show such a time N/A).
_MAX_GO_DURATION: Final = (2**63 - 1) / 1e9


def since_seconds(unix: int, now: float | None = None) -> str:
    """How long ago a time in whole seconds since the epoch was, as docker says it."""
    ago = min((time.time() if now is None else now) - unix, _MAX_GO_DURATION)
    return human_duration(ago) + " ago"


def rfc3339_local(unix: int) -> str:
    """Go's ``time.Unix(s, 0).Format(time.RFC3339)`` in the local time zone (``Z`` when
    it is UTC), as docker prints history times when not made human."""
    try:
        offset = datetime.fromtimestamp(unix, UTC).astimezone().utcoffset()
    except (OverflowError, OSError, ValueError):  # before year 1 of Python's calendar
        offset = None
    seconds = int(offset.total_seconds()) if offset else 0
    return GoTime.unix(unix, 0, seconds).format_rfc3339nano()


def history_fields(
    row: HistoryEntry, trunc: bool = True, human: bool = True, now: float | None = None
) -> dict[str, str]:
    """A history row's fields as docker's history formatter gives them to ``--format``
    (and its table): ``ID`` (12 hex unless not truncated, ``<missing>`` past the parent
    chain), ``CreatedSince``, ``CreatedAt``, ``CreatedBy`` (tabs as spaces, cut at 45
    characters when truncated), ``Size``, ``Comment``."""
    image = "<missing>" if row.id is None else str(row.id)
    if trunc and row.id is not None:
        image = row.id.hex[:12]
    created_by = row.created_by.replace("\t", " ")
    return {
        "ID": image,
        "CreatedSince": since_seconds(row.created, now) if human else rfc3339_local(row.created),
        "CreatedAt": rfc3339_local(row.created),
        "CreatedBy": ellipsis(created_by, 45) if trunc else created_by,
        "Size": human_size(row.size) if human else str(row.size),
        "Comment": row.comment,
    }


#: The objects of ``docker image inspect``'s answer that are Go maps (the others are
#: structs: a template naming a field they lack is an error).
_INSPECT_MAPS: Final = frozenset({"Labels", "ExposedPorts", "Volumes", "Data"})
#: The Go types of its structs, as template errors name them.
_INSPECT_TYPES: Final = {
    "Config": "*container.Config",
    "ContainerConfig": "*container.Config",
    "Healthcheck": "*container.HealthConfig",
    "RootFS": "types.RootFS",
    "Metadata": "types.ImageMetadata",
}


def inspect_value(data: Mapping[str, Any], name: str = "types.ImageInspect") -> Any:
    """An image's inspect answer as ``inspect --format`` templates see it: objects as Go
    structs, fields in Docker's order, except the maps (``Labels`` and the like)."""
    fields = {
        key: (
            value
            if not isinstance(value, Mapping) or key in _INSPECT_MAPS
            else inspect_value(value, _INSPECT_TYPES.get(key, key))
        )
        for key, value in data.items()
    }
    from .templates import Struct

    return Struct(fields, name)


#: docker history's default tables and the titles of its fields (docker/cli's
#: ``formatter_history.go``).
HISTORY_TABLE: Final = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
HISTORY_TABLE_NOT_HUMAN: Final = (
    "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
)
HISTORY_HEADERS: Final = {
    "ID": "IMAGE",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}


def history_format(format: str | None, quiet: bool, human: bool) -> str:
    """The template ``docker history`` uses (docker/cli's ``NewHistoryFormat``): for the
    default table, ``{{.ID}}`` with ``-q``, the table with ``CREATED AT`` without
    ``--human``; else the ``--format`` given."""
    if not format or format == "table":
        if quiet:
            return "{{.ID}}"
        return HISTORY_TABLE if human else HISTORY_TABLE_NOT_HUMAN
    return format


def print_history(
    rows: list[HistoryEntry],
    out: IO[str],
    format: str | None = None,
    no_trunc: bool = False,
    quiet: bool = False,
    human: bool = True,
) -> None:
    """An image's history as ``docker history`` prints it: its table, IDs, JSON lines
    (``--format json``: each row's fields, truncated as in the table) or a template."""
    from . import templates

    template = templates.parse(history_format(format, quiet, human))
    now = time.time()
    contexts = (
        templates.Struct(
            history_fields(row, not no_trunc, human, now),
            "*image.historyContext",
            sorted_json=True,
        )
        for row in rows
    )
    templates.write(template, contexts, out, HISTORY_HEADERS)


#: What JSON may hold raw that a terminal would act on (Go writes them as they are):
#: DEL, C1 controls, the line separators, the bidirectional controls; and lone
#: surrogates, which become U+FFFD as Go writes invalid UTF-8.
_RAW_IN_JSON: Final = "\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE_JSON: Final = re.compile(f"[{_RAW_IN_JSON}]")
_UNSAFE_JSON_HTML: Final = re.compile(f"[<>&{_RAW_IN_JSON}]")


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return "\\ufffd" if 0xD800 <= code <= 0xDFFF else f"\\u{code:04x}"


def json_for_terminal(text: str, html: bool = False) -> str:
    """JSON text, non-ASCII as UTF-8, safe to print: what a terminal would act on is a
    ``\\u`` escape (the same JSON value), and with ``html`` also ``<``, ``>`` and ``&``
    as Go's ``json.Marshal`` escapes them. Those characters occur only inside strings, so
    escaping them in the text is exact. The one such escape of ocistore's JSON output."""
    pattern = _UNSAFE_JSON_HTML if html else _UNSAFE_JSON
    return pattern.sub(_json_escape, text)


def _json_line(doc: dict[str, Any]) -> str:
    """One JSON object as docker's ``--format json`` writes a row (Go's ``json.Marshal``
    of a map): keys sorted, compact, ``<``, ``>`` and ``&`` escaped
    (``\\u003cnone\\u003e``), non-ASCII text as UTF-8 (:func:`json_for_terminal`)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return json_for_terminal(text, html=True) + "\n"


#: The HTML escapes Go's encoder writes, which the docker command undoes when it prints
#: ``inspect`` (``\\u2028`` and control characters stay escaped), preceded by an even
#: number of backslashes: a real escape, not an escaped backslash before ``u003c``.
_HTML_ESCAPE: Final = re.compile(rb"(?<!\\)((?:\\\\)*)\\u00(3c|3e|26)")
_HTML_CHARS: Final = {b"3c": b"<", b"3e": b">", b"26": b"&"}


def print_inspect(documents: Sequence[bytes], out: IO[str], indented: bool = True) -> None:
    """The engine's JSON documents as ``docker inspect`` prints them: one array, indented
    with four spaces by ``json.Indent`` (not ``indented``: compact, as ``--format
    json``), ``<``, ``>`` and ``&`` unescaped; ``[]`` when there are none. Unlike docker,
    what a terminal would act on is escaped (:func:`json_for_terminal`)."""
    if not documents:
        out.write("[]\n")
        return
    from ..spec.legacy import gojson

    text = b"[" + b",".join(documents) + b"]"
    if indented:
        text = gojson.indent(text)
    text = _HTML_ESCAPE.sub(lambda m: m.group(1) + _HTML_CHARS[m.group(2)], text)
    out.write(json_for_terminal(text.decode()) + "\n")


def _reclaimable(size: int, reclaimable: int) -> str:
    """docker's RECLAIMABLE cell: ``1.2MB (40%)``, the percentage rounded down."""
    if size > 0:
        return f"{human_size(reclaimable, 4)} ({reclaimable * 100 // size}%)"
    return human_size(reclaimable, 4)


def print_disk_usage(
    usage: DiskUsage, out: IO[str], verbose: bool = False, as_json: bool = False
) -> None:
    """``system df`` as ``docker system df`` prints it: one row per kind (images,
    layers, blobs, layer copies), or with ``verbose`` a table of each image, layer and
    blob; ``as_json`` gives docker's ``--format json`` (a JSON line per row, or one
    object of lists)."""
    from .templates import MIN_WIDTH  # docker's tables: cells at least 10 wide

    if not verbose:
        rows = [
            {
                "Type": t.type,
                "TotalCount": str(t.total),
                "Active": str(t.active),
                "Size": human_size(t.size, 4),
                "Reclaimable": _reclaimable(t.size, t.reclaimable),
            }
            for t in usage.summary
        ]
        if as_json:
            out.write("".join(_json_line(row) for row in rows))
            return
        cells = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
        cells += [list(row.values()) for row in rows]
        print_columns([list(c) for c in zip(*cells, strict=True)], out, MIN_WIDTH)
        return
    now = time.time()
    images: list[dict[str, str]] = []
    for i in usage.images:
        repo, tag = "<none>", "<none>"
        for name in i.names:
            r, t, digest = split_familiar(name)
            if digest is None and t:
                repo, tag = r, t
                break
        images.append(
            {
                "Repository": repo,
                "Tag": tag,
                "ID": i.id,
                "CreatedAt": i.created,
                "CreatedSince": since(i.created, now),
                "Size": human_size(i.size),
                "SharedSize": human_size(i.shared_size, 4),
                "UniqueSize": human_size(i.unique_size, 4),
            }
        )
    layers = [
        {
            "ChainID": layer.chain_id,
            "DiffID": layer.diff_id,
            "Blob": layer.blob,
            "Compression": layer.compression,
            "Size": human_size(layer.size, 4),
            "Images": str(layer.images),
            "Copies": list(layer.copies),
        }
        for layer in usage.layers
    ]
    blob_size = {b.digest: b.size for b in usage.blobs}
    blobs = [
        {"ID": b.digest, "Kind": b.kind, "Size": human_size(b.size, 4), "Images": str(b.images)}
        for b in usage.blobs
    ]
    if as_json:
        out.write(_json_line({"Images": images, "Layers": layers, "Blobs": blobs}))
        return

    def table(title: str, header: list[str], rows: list[list[str]], first: bool) -> None:
        out.write(("" if first else "\n") + f"{title} space usage:\n\n")
        print_columns([list(c) for c in zip(header, *rows, strict=True)], out, MIN_WIDTH)

    table(
        "Images",
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE"],
        [
            [i["Repository"], i["Tag"], i["ID"][7:19], i["CreatedSince"]]
            + [i[k] for k in ("Size", "SharedSize", "UniqueSize")]
            for i in images
        ],
        first=True,
    )
    table(
        "Layers",
        ["CHAIN ID", "DIFF ID", "BLOB ID", "COMPRESSION", "SIZE", "IMAGES", "ALSO KEPT AS"],
        [
            [
                layer.chain_id[7:19],
                layer.diff_id[7:19],
                layer.blob[7:19],
                layer.compression,
                human_size(layer.size, 4),
                str(layer.images),
                ", ".join(
                    f"{c[7:19]} ({human_size(blob_size.get(c, 0), 4)})" for c in layer.copies
                ),
            ]
            for layer in usage.layers
        ],
        first=False,
    )
    table(
        "Blobs",
        ["BLOB ID", "KIND", "SIZE", "IMAGES"],
        [[b["ID"][7:19], b["Kind"], b["Size"], b["Images"]] for b in blobs],
        first=False,
    )


def print_prune(report: PruneReport, out: IO[str]) -> None:
    """What ``image prune`` did, as ``docker image prune`` prints it."""
    print_prune_done([str(event) for event in report.events], out)
    out.write(f"Total reclaimed space: {human_size(report.reclaimed, 4)}\n")


def print_prune_done(events: Sequence[str], out: IO[str]) -> None:
    """``Deleted Images:`` and a line per event (``Untagged: x`` as ``untagged: x``,
    ``Deleted: y`` as ``deleted: y``), then a blank line; nothing without events. Also
    what a prune that failed part-way had done."""
    if not events:
        return
    lines = ["Deleted Images:"]
    for event in events:
        action, _, subject = event.partition(": ")
        lines.append(f"{action.lower()}: {printable(subject)}")
    out.write("\n".join(lines) + "\n\n")
