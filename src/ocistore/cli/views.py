"""What the command line prints: tables and JSON lines shaped like Docker's, the units
Docker prints them in, and :func:`printable`, which every text printed for a person goes
through."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from ..spec.reference import split_familiar
from ..store.images import ImageRecord

if TYPE_CHECKING:
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
#: The printable ASCII characters, as bytes: what deleting them leaves of ASCII text is
#: its control characters (found about five times faster than by the pattern).
_PRINTABLE_ASCII: Final = bytes(range(0x20, 0x7F))


def _unprintable_in(text: str) -> bool:
    if text.isascii():  # (known without a scan)
        return bool(text.encode("ascii").translate(None, _PRINTABLE_ASCII))
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


def parse_time(value: str) -> datetime | None:
    """An RFC 3339 time as Go writes it (``Z`` or an offset, up to nanoseconds)."""
    try:
        t = datetime.fromisoformat(value)
    except (ValueError, TypeError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def since(value: str, now: float | None = None) -> str:
    """How long ago an RFC 3339 time was (``now`` in seconds since the epoch)."""
    t = parse_time(value)
    if t is None:
        return "N/A"
    return human_duration((time.time() if now is None else now) - t.timestamp()) + " ago"


def print_table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Rows (the header first) as :func:`print_columns` prints them."""
    print_columns([list(column) for column in zip(*rows, strict=True)], out)


def print_columns(columns: Sequence[Sequence[str]], out: IO[str], min_width: int = 0) -> None:
    """Columns (each headed by its title) padded to their widest cell, three spaces apart,
    as docker prints them (no trailing blanks), each at least ``min_width`` wide with its
    padding (docker's tab writer makes that 10). Every cell is made :func:`printable`
    (one scan per column finds the rare column that needs it)."""
    columns = [
        [printable(cell) for cell in column] if _unprintable_in("".join(column)) else column
        for column in columns
    ]
    widths = [max(max(map(len, column)), min_width - 3) for column in columns[:-1]]
    line = "   ".join(f"{{:<{w}}}" for w in widths) + "   {}"
    lines: Iterable[str] = map(line.format, *columns)
    if not all(c[-1:].strip() for c in columns[-1]):  # a blank last cell: strip the padding
        lines = map(str.rstrip, lines)
    out.write("\n".join(lines) + "\n")


def print_images(
    images: list[tuple[ImageRecord, list[str]]],
    out: IO[str],
    no_trunc: bool = False,
    digests_column: bool = False,
    as_json: bool = False,
) -> None:
    """``images`` as ``docker images`` prints it: a table (or JSON lines), one row per
    repository and tag of each image, the untagged as ``<none>``."""
    now = time.time()
    ages: dict[str, str] = {}
    sizes: dict[int, str] = {}
    # One list per column (repository, tag, digest, image ID, created, created since,
    # size): no tuple per row to build and then transpose again for the widths.
    repos: list[str] = []
    tags: list[str] = []
    digests: list[str] = []
    image_ids: list[str] = []
    createds: list[str] = []
    sinces: list[str] = []
    shown_sizes: list[str] = []

    def add(
        repo: str, tag: str, digest: str, image_id: str, created: str, age: str, size: str
    ) -> None:
        repos.append(repo)
        tags.append(tag)
        digests.append(digest)
        image_ids.append(image_id)
        createds.append(created)
        sinces.append(age)
        shown_sizes.append(size)

    for rec, names in images:
        image_id = rec.id if no_trunc else rec.id[7:19]
        created = rec.created
        age = ages.get(created)
        if age is None:
            age = ages[created] = since(created, now)
        size = sizes.get(rec.size)
        if size is None:
            size = sizes[rec.size] = human_size(rec.size)
        if not names:
            add("<none>", "<none>", "<none>", image_id, created, age, size)
            continue
        if len(names) == 1:  # the usual: one tag, no list or dict to build
            repo_name, tag, digest = split_familiar(names[0])
            if digest is None:
                add(repo_name, tag or "<none>", "<none>", image_id, created, age, size)
                continue
        named: list[tuple[str, str]] = []
        by_repo: dict[str, str] = {}
        for n in names:
            repo_name, tag, digest = split_familiar(n)
            if digest is not None:
                by_repo[repo_name] = digest
            else:
                named.append((repo_name, tag or "<none>"))
        for repo_name, tag in named:
            add(repo_name, tag, by_repo.get(repo_name, "<none>"), image_id, created, age, size)
        if by_repo:
            tagged = {t for t, _ in named}
            for repo_name, digest in by_repo.items():
                if repo_name not in tagged:
                    add(repo_name, "<none>", digest, image_id, created, age, size)
    if as_json:
        keys = ("Repository", "Tag", "Digest", "ID", "CreatedAt", "CreatedSince", "Size")
        rows = zip(repos, tags, digests, image_ids, createds, sinces, shown_sizes, strict=True)
        out.write("".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in rows))
        return
    columns = [["REPOSITORY", *repos], ["TAG", *tags]]
    if digests_column:
        columns.append(["DIGEST", *digests])
    columns += [["IMAGE ID", *image_ids], ["CREATED", *sinces], ["SIZE", *shown_sizes]]
    print_columns(columns, out)


def print_history(
    rows: list[dict[str, Any]], out: IO[str], no_trunc: bool = False, as_json: bool = False
) -> None:
    """An image's history as ``docker history`` prints it (a table, or JSON lines)."""
    if as_json:
        for row in rows:
            out.write(
                json.dumps(
                    {
                        "ID": row["Id"],
                        "CreatedAt": row["Created"],
                        "CreatedSince": since(row["Created"]),
                        "CreatedBy": row["CreatedBy"],
                        "Size": human_size(row["Size"]),
                        "Comment": row["Comment"],
                    }
                )
                + "\n"
            )
        return
    table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for row in rows:
        image = row["Id"]
        if image != "<missing>" and not no_trunc:
            image = image[7:19]
        # Tabs become spaces, as docker shows them (RUN lines are often indented so).
        created_by = str(row["CreatedBy"]).replace("\t", " ")
        created_by = printable(created_by) if no_trunc else shorten(created_by, 45)
        table.append(
            [image, since(row["Created"]), created_by, human_size(row["Size"]), row["Comment"]]
        )
    print_table(table, out)


#: docker's tables (its tab writer: cells padded by 3, at least 10 wide).
_DOCKER_MIN_WIDTH = 10


_GO_HTML_ESCAPES: Final = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_line(doc: dict[str, Any]) -> str:
    """One JSON object as Go's ``json.Marshal`` of a map writes it (docker's ``--format
    json``): keys sorted, compact, ``<``, ``>`` and ``&`` escaped (``\\u003cnone\\u003e``),
    and (as everywhere) every non-ASCII and control character escaped. Those three
    characters occur only inside strings, so escaping them in the text is exact."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return text.translate(_GO_HTML_ESCAPES) + "\n"


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
        print_columns([list(c) for c in zip(*cells, strict=True)], out, _DOCKER_MIN_WIDTH)
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
        print_columns([list(c) for c in zip(header, *rows, strict=True)], out, _DOCKER_MIN_WIDTH)

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
