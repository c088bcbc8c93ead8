"""The ``ocistore`` command: each command opens the store, calls the library, and turns
library errors into one line on stderr.

Exit codes: 0 success, 1 error, 2 usage. The store's root is ``--root``, else
``$OCISTORE_ROOT``, else ``${XDG_DATA_HOME:-~/.local/share}/ocistore``; this module is
the only place that reads the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from ..errors import OcistoreError
from ..progress import Progress, human_size
from ..spec.platform import parse_platform
from ..spec.reference import parse, split_familiar
from ..store.store import Store

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def default_root() -> Path:
    env = os.environ.get("OCISTORE_ROOT")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "ocistore"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


_COMMANDS: list[tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(
    name: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Handler], Handler]:
    """Register a command; its docstring is its help (first line: summary)."""

    def register(fn: Handler) -> Handler:
        _COMMANDS.append((name, configure, fn))
        return fn

    return register


def open_store(args: argparse.Namespace) -> Store:
    store = Store(args.root)
    args.store = store
    return store


def report_skipped(args: argparse.Namespace) -> None:
    """Warn about images the store skipped on opening because they failed verification."""
    store: Store | None = getattr(args, "store", None)
    if store is None:
        return
    for digest, reason in store.images.skipped:
        print(f"ocistore: warning: skipped image {digest}: {reason}", file=sys.stderr)


# -- output helpers --------------------------------------------------------------------


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


def format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="table (default) or json (one JSON object per line, as docker --format json)",
    )


# -- commands ----------------------------------------------------------------------------


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", metavar="FILE|-", help="rootfs tarball (plain, gzip or zstd), - for stdin"
    )
    p.add_argument("reference", metavar="REPOSITORY[:TAG]", nargs="?")
    p.add_argument("-m", "--message", default=None, help="commit message for the history")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("import", _import_args)
def cmd_import(args: argparse.Namespace) -> int:
    """Create a one-layer image from a root file system tarball, like docker import.

    Prints the new image ID (sha256:...) last.

    example:
      tar -C rootfs -c . | ocistore import - myapp:v1
      ocistore import rootfs.tar.gz myapp:latest
    """
    store = open_store(args)
    progress = Progress.for_terminal(args.quiet)
    tune_allocator()
    source = args.file
    with _open_input(source) as f:
        total = None if source == "-" else os.fstat(f.fileno()).st_size
        task = progress.task(f"importing {source}", total)
        image_id = store.import_tarball(f, args.reference, source=source, progress=task.update)
        task.finish()
    print(image_id)
    return EXIT_OK


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    """``-`` is stdin; an unreadable path is main's OSError: one line naming it."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield f


def _images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "reference", metavar="REPOSITORY[:TAG]", nargs="?", help="only this repository (or tag)"
    )
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    format_option(p)


def _matches(familiar: str, repo: str, tag: str | None, digest: str | None = None) -> bool:
    """Whether a familiar reference (``busybox:1``, ``app@sha256:…``) is of ``repo``
    (and has ``tag``, or is ``repo@digest``, when one is given)."""
    name, found_tag, found_digest = split_familiar(familiar)
    if name != repo:
        return False
    if digest is not None:
        return found_digest == digest
    return tag is None or (found_digest is None and found_tag == tag)


@command("images", _images_args)
def cmd_images(args: argparse.Namespace) -> int:
    """List images, newest first.

    example:
      ocistore images
      ocistore images busybox
      ocistore images -q --no-trunc
      ocistore images --format json
    """
    wanted = parse(args.reference) if args.reference else None  # before opening the store
    store = open_store(args)
    images = store.list_image_names(all_images=args.all)
    if wanted is not None:
        repo, tag, wanted_digest = wanted.familiar_name, wanted.tag, wanted.digest
        images = [
            (rec, kept)
            for rec, names in images
            if (kept := [n for n in names if _matches(n, repo, tag, wanted_digest)])
        ]
    if args.quiet:
        ids = [rec.id if args.no_trunc else rec.id.short() for rec, _ in images]
        sys.stdout.write("".join(f"{i}\n" for i in ids))
        return EXIT_OK
    now = time.time()
    ages: dict[str, str] = {}
    sizes: dict[int, str] = {}
    no_trunc = args.no_trunc
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
    if args.format == "json":
        keys = ("Repository", "Tag", "Digest", "ID", "CreatedAt", "CreatedSince", "Size")
        rows = zip(repos, tags, digests, image_ids, createds, sinces, shown_sizes, strict=True)
        sys.stdout.write(
            "".join(json.dumps(dict(zip(keys, row, strict=True))) + "\n" for row in rows)
        )
        return EXIT_OK
    columns = [["REPOSITORY", *repos], ["TAG", *tags]]
    if args.digests:
        columns.append(["DIGEST", *digests])
    columns += [["IMAGE ID", *image_ids], ["CREATED", *sinces], ["SIZE", *shown_sizes]]
    print_columns(columns, sys.stdout)
    return EXIT_OK


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+")


@command("inspect", _inspect_args)
def cmd_inspect(args: argparse.Namespace) -> int:
    """Show images as a JSON array shaped like docker image inspect.

    example:
      ocistore inspect busybox
      ocistore inspect sha256:3f57d9401f8d
    """
    store = open_store(args)
    out: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in args.images:
        try:
            out.append(store.inspect(name))
        except OcistoreError as e:
            errors.append(str(e))
    print(json.dumps(out, indent=4))
    for message in errors:
        print(f"ocistore: {message}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def _history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    format_option(p)


@command("history", _history_args)
def cmd_history(args: argparse.Namespace) -> int:
    """Show the history of an image, newest first.

    example:
      ocistore history busybox
      ocistore history --no-trunc --format json myapp:v1
    """
    store = open_store(args)
    rows = store.history(args.image)
    if args.quiet:
        for row in rows:
            print(row["Id"] if args.no_trunc or row["Id"] == "<missing>" else row["Id"][7:19])
        return EXIT_OK
    if args.format == "json":
        for row in rows:
            print(
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
            )
        return EXIT_OK
    table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for row in rows:
        image = row["Id"]
        if image != "<missing>" and not args.no_trunc:
            image = image[7:19]
        created_by = row["CreatedBy"]
        if not args.no_trunc and len(created_by) > 45:
            created_by = created_by[:44] + "…"
        table.append(
            [image, since(row["Created"]), created_by, human_size(row["Size"]), row["Comment"]]
        )
    print_table(table, sys.stdout)
    return EXIT_OK


def _tag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")


@command("tag", _tag_args)
def cmd_tag(args: argparse.Namespace) -> int:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE (moving it if it exists).

    example:
      ocistore tag busybox:latest myregistry:5000/team/busybox:v1
    """
    open_store(args).tag(args.source, args.target)
    return EXIT_OK


def _rmi_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "-f", "--force", action="store_true", help="remove an image tagged in several repositories"
    )
    p.add_argument("--no-prune", action="store_true", help="do not delete untagged parents")


@command("rmi", _rmi_args)
def cmd_rmi(args: argparse.Namespace) -> int:
    """Remove one or more images (or untag them), with docker rmi's rules.

    example:
      ocistore rmi busybox:latest
      ocistore rmi -f 3f57d9401f8d
    """
    store = open_store(args)
    status = EXIT_OK
    for name in args.images:
        try:
            events = store.remove(name, force=args.force, prune=not args.no_prune)
        except OcistoreError as e:
            print(f"ocistore: {e}", file=sys.stderr)
            status = EXIT_ERROR
            continue
        for event in events:
            print(event)
    return status


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--input",
        required=True,
        metavar="PATH|-",
        help="docker-archive or oci-archive tar (plain, gzip or zstd), OCI layout directory, "
        "or - for stdin",
    )
    p.add_argument(
        "--platform",
        default=None,
        metavar="OS/ARCH[/VARIANT]",
        help="which image of a multi-platform index (default: this machine's)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("load", _load_args)
def cmd_load(args: argparse.Namespace) -> int:
    """Load images from a docker-archive, an OCI layout or an oci-archive.

    The format is recognized from the content: docker save archives of every Docker
    version (with or without manifest.json), skopeo's and umoci's OCI layouts.

    example:
      ocistore load -i busybox.tar
      skopeo copy docker://busybox oci-archive:/dev/stdout | ocistore load -i -
      ocistore load -i ./layout --platform linux/arm64
    """
    platform = parse_platform(args.platform) if args.platform else None
    store = open_store(args)
    progress = Progress.for_terminal(args.quiet)
    tune_allocator()
    from .. import formats

    for loaded in formats.load(store, args.input, platform, progress):
        if loaded.tags:
            for ref in loaded.tags:
                print(f"Loaded image: {ref.familiar()}")
        else:
            print(f"Loaded image ID: {loaded.id}")
    return EXIT_OK


def _save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH|-",
        help="where to write (- for stdout; a directory for --format oci)",
    )
    p.add_argument(
        "--format",
        choices=["docker", "oci", "oci-archive"],
        default="docker",
        help="docker (default: docker save's format), oci (a layout directory) or oci-archive",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("save", _save_args)
def cmd_save(args: argparse.Namespace) -> int:
    """Save images to a docker-archive, an OCI layout directory or an oci-archive.

    example:
      ocistore save -o busybox.tar busybox:latest
      ocistore save --format oci-archive -o app.oci.tar myapp:v1 myapp:v2
      ocistore save --format oci -o ./layout myapp:v1
    """
    store = open_store(args)
    if args.output == "-" and sys.stdout.isatty():
        raise OcistoreError("refusing to write an archive to a terminal: give -o PATH")
    progress = Progress.for_terminal(args.quiet)
    tune_allocator(keep_freed=args.format == "docker")
    from .. import formats

    formats.save(store, args.images, args.output, formats.SaveFormat(args.format), progress)
    return EXIT_OK


def tune_allocator(keep_freed: bool = False) -> None:
    """Tune glibc's allocator for a command that streams layers on several threads
    (import, load, save); called before any thread starts. Other commands skip it: it
    costs them ``ctypes``, about 5 ms.

    One arena (``M_ARENA_MAX`` 1): glibc gives each thread an arena of its own that keeps
    what the thread freed, and with a reading and a digesting thread per layer staged, a
    zstd load's peak memory went from about 60 MiB to 50 MiB with one, at the same speed
    (the threads allocate a few large pieces per megabyte, so they hardly contend).

    ``keep_freed`` (a docker-archive save): decompressing a layer makes a fresh
    megabyte-sized ``bytes`` per piece, which glibc by default hands straight back to the
    kernel and fetches again (zeroed, a page fault per page) for the next piece: 50,000
    page faults and a third of the save's system time for the bench image. Serving them
    from the heap and keeping up to 128 MiB freed made that save about 12% faster, for
    ~2 MB more peak memory. Loads do not: their zstd decoders grew by 16 MB with it.

    A no-op where the C library has no ``mallopt`` (not glibc).
    """
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    _mallopt(m_arena_max, 1)
    if keep_freed:
        _mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
        _mallopt(m_trim_threshold, 128 << 20)


def _mallopt(param: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(param, value)


def seconds(text: str) -> float:
    """A number of seconds, zero or more (argparse reports the ValueError)."""
    value = float(text)
    if not value >= 0:  # also refuses NaN
        raise ValueError(text)
    return value


def _gc_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--grace",
        type=seconds,
        default=24 * 3600,
        help="seconds a temporary file is left alone (default: one day)",
    )


@command("gc", _gc_args)
def cmd_gc(args: argparse.Namespace) -> int:
    """Remove layers and blobs no image needs, and stale temporary files.

    example:
      ocistore gc
    """
    for line in open_store(args).gc(args.grace):
        print(f"Deleted: {line}")
    return EXIT_OK


@command("fsck", lambda p: None)
def cmd_fsck(args: argparse.Namespace) -> int:
    """Verify every image config, layer and blob against its digest.

    Prints one line per problem and exits 1 if there is any.

    example:
      ocistore fsck
    """
    problems = open_store(args).fsck()
    for p in problems:
        print(p)
    return EXIT_ERROR if problems else EXIT_OK


# -- entry point -------------------------------------------------------------------------


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, the sub-parser of that command alone
    (what parsing a command needs: building all ten took 8 ms of every command)."""
    parser = Parser(
        prog="ocistore",
        description="A content-addressable container image store.",
        epilog="example:\n  ocistore import rootfs.tar myapp:v1 && ocistore images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="store directory (default: $OCISTORE_ROOT, else "
        "${XDG_DATA_HOME:-~/.local/share}/ocistore)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, configure, handler in _COMMANDS:
        if only is not None and name != only:
            continue
        doc = (handler.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        p = sub.add_parser(
            name,
            help=summary,
            description=summary + ("\n" + textwrap.dedent(rest) if rest else ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def _command_named(argv: list[str]) -> str | None:
    """The command the arguments name, when the global options before it are plain (so
    only its parser need be built); ``None`` for anything else (help, a typo)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--root":
            i += 2
        elif arg.startswith("--root="):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg if any(name == arg for name, _, _ in _COMMANDS) else None
    return None


def main(argv: list[str] | None = None) -> int:
    # A command is a short-lived process that makes many small objects (a record per
    # image, a reference per tag) and few cycles: collect garbage rarely. With the
    # default thresholds, listing 10,000 images spent a quarter of its time in the GC.
    gc.set_threshold(100_000, 50, 100)
    parser = build_parser(_command_named(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.root is None:
        args.root = default_root()
    try:
        code = int(args.handler(args))
        report_skipped(args)
        return code
    except OcistoreError as e:
        print(f"ocistore: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ocistore: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        print(f"ocistore: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_ERROR


def run() -> int:
    """The ``ocistore`` command: :func:`main`, then a quicker exit.

    Freezing every object before the interpreter shuts down spares its last garbage
    collections a walk over all of them: 10 to 20 ms per command. Exit handlers and file
    flushes still run as usual.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(run())
