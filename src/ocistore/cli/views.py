"""What the command line prints: tables and JSON lines shaped like Docker's, and the
units Docker prints them in."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from ..spec.reference import split_familiar
from ..store.images import ImageRecord


def human_size(n: float) -> str:
    """Sizes as Docker prints them: decimal units, three significant digits (``5.58MB``)."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.3g}{units[i]}"


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


def print_columns(columns: Sequence[Sequence[str]], out: IO[str]) -> None:
    """Columns (each headed by its title) padded to their widest cell, three spaces apart,
    as docker prints them (no trailing blanks)."""
    widths = [max(map(len, column)) for column in columns[:-1]]
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
        created_by = row["CreatedBy"]
        if not no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        table.append(
            [image, since(row["Created"]), created_by, human_size(row["Size"]), row["Comment"]]
        )
    print_table(table, out)
