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
import io
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from .. import __version__
from ..errors import InvalidInput, NotFound, OcistoreError, PartiallyDone, StorageError
from ..parallel import InterruptiblePipe
from ..spec.gotime import ZERO_UNIX, unix_nanos
from ..spec.platform import parse_platform
from ..spec.reference import split_familiar
from ..store.images import ImageRecord
from ..store.store import Store
from . import views
from .progress import TerminalProgress, displays_ended

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
        # The message quotes what was typed: shown printable, as every line for a person.
        shown = views.printable(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {shown} (see '{self.prog} --help')\n")


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
    store = Store(
        args.root,
        lock_timeout=args.lock_timeout or None,
        # Told like progress: on a terminal only (a script gets the timeout's one line).
        on_lock_wait=(lambda m: say_error(f"{m} ...")) if sys.stderr.isatty() else None,
    )
    args.store = store
    return store


#: Seconds a command waits for the store's lock by default (``--lock-timeout``): far
#: longer than any publish step, short enough that a stopped holder is reported.
LOCK_TIMEOUT = 120.0


def say_error(message: object) -> None:
    """One line ``ocistore: <message>`` on stderr, the message made printable (it may
    quote archive member names, tags, file names or what was typed)."""
    print(f"ocistore: {views.printable(str(message))}", file=sys.stderr)


def report_skipped(args: argparse.Namespace) -> None:
    """Warn about images the store skipped on opening because they failed verification."""
    store: Store | None = getattr(args, "store", None)
    if store is None:
        return
    for digest, reason in store.skipped:
        say_error(f"warning: skipped image {digest}: {reason}")


def platform_option(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--platform OS/ARCH[/VARIANT]``: which image of a multi-platform index."""
    p.add_argument(
        "--platform",
        default=None,
        metavar="OS/ARCH[/VARIANT]",
        help=f"{when}which image of a multi-platform index (default: this machine's)",
    )


def format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="table (default) or json (one JSON object per line, as docker --format json)",
    )


# -- commands ----------------------------------------------------------------------------


def change_option(p: argparse.ArgumentParser) -> None:
    """``-c``/``--change INSTRUCTION``: Dockerfile instructions for the image's config
    (``import``, ``commit``)."""
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction to the image's config (repeatable): CMD, "
        "ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, USER, VOLUME, WORKDIR",
    )


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", metavar="FILE|-", help="rootfs tarball (plain, gzip or zstd), - for stdin"
    )
    p.add_argument("reference", metavar="REPOSITORY[:TAG]", nargs="?")
    change_option(p)
    p.add_argument(
        "-m", "--message", default=None, help="the image's comment (default: Imported from -)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("import", _import_args)
def cmd_import(args: argparse.Namespace) -> int:
    """Create a one-layer image from a root file system tarball, like docker import.

    The image's config is the one docker import writes for the same changes and
    message (but for its creation time, and without docker_version). Prints the new
    image ID (sha256:...) last.

    example:
      tar -C rootfs -c . | ocistore import - myapp:v1
      ocistore import rootfs.tar.gz myapp:latest
      ocistore import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' -m 'base' rootfs.tar myapp:v2
    """
    from ..spec.legacy.changes import build_from_config
    from ..spec.reference import parse_tagged

    # What was typed is checked, and the input opened, before the store is: a mistake
    # leaves a store that did not exist yet not made.
    if args.reference:
        parse_tagged(args.reference)
    build_from_config(args.change)
    source = args.file
    with _open_input(source) as f:
        store = open_store(args)
        progress = TerminalProgress.for_terminal(args.quiet)
        tune_allocator()
        image_id = store.import_tarball(
            f,
            args.reference,
            source=source,
            progress=progress,
            changes=args.change,
            message=args.message,
        )
    print(image_id)
    return EXIT_OK


@contextlib.contextmanager
def _open_input(path: str) -> Iterator[IO[bytes]]:
    """``-`` is stdin (read so that Ctrl-C always stops a wait on it); an unreadable path
    is main's OSError: one line naming it."""
    if path == "-":
        if sys.stdin is None:
            raise OcistoreError("no standard input to read (it is closed): give a FILE")
        with InterruptiblePipe(sys.stdin.buffer) as pipe:
            yield pipe  # type: ignore[misc]
        return
    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as e:  # worded as docker's (Go's os.Open): "open PATH: no such file..."
        cause = e.strerror or str(e)
        raise OcistoreError(f"open {path}: {cause[:1].lower()}{cause[1:]}") from None
    with f:
        yield f


def image_filter(text: str) -> tuple[str, str]:
    """A ``--filter`` as docker's CLI reads it: ``name=value``, the name lower-cased,
    both trimmed."""
    if text == "":
        return "", ""  # ignored, as docker's ParseFlag ignores it
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("bad format of filter (expected name=value)")
    return name.strip().lower(), value.strip()


def _images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "reference",
        metavar="REPOSITORY[:TAG]",
        nargs="?",
        help="only names matching this pattern (as --filter reference=PATTERN)",
    )
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--no-trunc", action="store_true", help="full image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument(
        "-f",
        "--filter",
        type=image_filter,
        action="append",
        default=[],
        metavar="FILTER",
        help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE], before=IMAGE, "
        "since=IMAGE (repeatable: references are any of, the others all of)",
    )
    p.add_argument(
        "--format",
        default=None,
        help="table (default), json (a JSON object per line), a Go template "
        "('{{.Repository}}:{{.Tag}}'), or table TEMPLATE",
    )


#: The filters ``docker images`` knows.
IMAGE_FILTERS = ("dangling", "label", "before", "since", "reference")


@command("images", _images_args)
def cmd_images(args: argparse.Namespace) -> int:
    """List images, newest first (by creation time in whole seconds), as docker images.

    A REPOSITORY[:TAG] argument, like --filter reference=, is a pattern (path.Match's
    '*', '?', '[...]') matched against each name (lab/app:1) and its repository
    (lab/app): 'lab/*' lists every tag of the repositories in lab/.

    example:
      ocistore images
      ocistore images 'lab/*'
      ocistore images -q --no-trunc
      ocistore images --filter dangling=true --filter label=org.example.team
      ocistore images --format '{{.Repository}}:{{.Tag}}'
      ocistore images --format 'table {{.ID}}\\t{{.Size}}'
      ocistore images --format json
    """
    from . import templates

    filters: dict[str, list[str]] = {}
    for name, value in args.filter:
        if not name and not value:
            continue
        values = filters.setdefault(name, [])
        if value not in values:
            values.append(value)
    if args.reference:
        filters.setdefault("reference", []).append(args.reference)
    for name in filters:
        if name not in IMAGE_FILTERS:
            raise InvalidInput(f"Invalid filter '{name}'")
    dangling = filters.get("dangling")
    if dangling and "true" not in dangling and "false" not in dangling:
        raise InvalidInput(f"Invalid filter 'dangling=[{' '.join(dangling)}]'")
    patterns = [go_path_pattern(p) for p in filters.get("reference", [])]
    final = views.images_format(args.format, args.quiet, args.digests)
    templates.parse(final)  # a bad format is told before the store is opened
    store = open_store(args)
    images = select_images(
        store,
        store.list_image_names(all_images=True),
        all_images=args.all,
        dangling=None if not dangling else "true" in dangling,
        patterns=patterns if "reference" in filters else None,
        labels=filters.get("label", []),
        before=[created_ns(store.image(n).config.created) for n in filters.get("before", [])],
        since=[created_ns(store.image(n).config.created) for n in filters.get("since", [])],
    )
    views.print_images(images, sys.stdout, args.no_trunc, args.digests, args.format, args.quiet)
    return EXIT_OK


def select_images(
    store: Store,
    images: list[tuple[ImageRecord, list[str]]],
    all_images: bool = False,
    dangling: bool | None = None,
    patterns: list[re.Pattern[str]] | None = None,
    labels: Sequence[str] = (),
    before: Sequence[int] = (),
    since: Sequence[int] = (),
) -> list[tuple[ImageRecord, list[str]]]:
    """The images and names ``docker images`` lists, by the engine's rules: without
    ``all_images`` no untagged image with children; ``dangling`` True only untagged
    images without children, False only named ones; with ``patterns`` only the names
    matching one (and no image without one); with ``labels`` only images whose config's
    labels have every ``KEY`` or ``KEY=VALUE``; ``before`` and ``since`` (nanoseconds)
    only images created strictly before or after. Newest first, by creation time in whole
    seconds (docker sorts on the engine's ``Created``), a stable sort."""
    parents = {rec.parent for rec, _ in images if rec.parent}
    out: list[tuple[ImageRecord, list[str]]] = []
    for rec, names in images:
        if dangling and rec.id in parents:
            continue
        if before or since:
            created = created_ns(rec.created)
            if any(created >= b for b in before) or any(created <= s for s in since):
                continue
        if labels and not _has_labels(store, rec, labels):
            continue
        if patterns is not None:
            names = [n for n in names if any(_reference_matches(p, n) for p in patterns)]
        if dangling and any(split_familiar(n)[2] is None for n in names):
            continue
        if not names and (
            (not all_images and rec.id in parents) or dangling is False or patterns is not None
        ):
            continue
        out.append((rec, names))
    out.sort(key=lambda image: views.created_seconds(image[0].created), reverse=True)
    return out


def _has_labels(store: Store, rec: ImageRecord, wanted: Sequence[str]) -> bool:
    """Whether the image's config has every label ``KEY`` (or ``KEY=VALUE``) wanted
    (docker's ``MatchKVList``); its config is read only for this."""
    from ..store.usage import match_kv  # (as image prune's label filter)

    try:
        config = store.images.get(rec.id).config.container_config
    except NotFound:  # removed since the listing was read: not listed
        return False
    labels = (config or {}).get("Labels") or {}
    return isinstance(labels, dict) and match_kv(wanted, labels)


def _reference_matches(pattern: re.Pattern[str], familiar: str) -> bool:
    """docker's ``FamiliarMatch``: the pattern against the name as shown (``lab/app:1``,
    ``app@sha256:…``), else against its repository."""
    if pattern.fullmatch(familiar):
        return True
    return pattern.fullmatch(split_familiar(familiar)[0]) is not None


def go_path_pattern(pattern: str) -> re.Pattern[str]:
    """Go's ``path.Match`` pattern as a regular expression: ``*`` any run of characters
    but ``/``, ``?`` one of them, ``[...]`` a class (``[^...]`` negated, ``a-z``
    ranges), ``\\`` quoting. A malformed pattern is Go's ``syntax error in pattern``."""
    out: list[str] = []
    i, n = 0, len(pattern)
    bad = InvalidInput("syntax error in pattern")
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                raise bad
            out.append(re.escape(pattern[i]))
        elif c == "[":
            i += 1
            negate = i < n and pattern[i] == "^"
            if negate:
                i += 1
            ranges: list[str] = []
            while True:
                if i >= n:
                    raise bad
                if pattern[i] == "]" and ranges:
                    break
                lo, i = _class_char(pattern, i, bad)
                hi = lo
                if i < n and pattern[i] == "-":
                    hi, i = _class_char(pattern, i + 1, bad)
                    if hi < lo:
                        raise bad
                ranges.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
            out.append(("[^" if negate else "[") + "".join(ranges) + "]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _class_char(pattern: str, i: int, bad: InvalidInput) -> tuple[str, int]:
    """One character of a ``[...]`` class (``\\`` quoting the next), and what follows."""
    if i >= len(pattern) or pattern[i] in "]-":
        raise bad
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise bad
    return pattern[i], i + 1


def created_ns(value: str) -> int:
    """An RFC 3339 time in nanoseconds since the epoch, to compare creation times as the
    engine does for before= and since=; Go's zero time for a missing one."""
    ns = unix_nanos(value)
    return ZERO_UNIX * 1_000_000_000 if ns is None else ns


def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", metavar="IMAGE", nargs="+")
    p.add_argument(
        "-f",
        "--format",
        default=None,
        help="a Go template applied to each image ('{{.Id}}', '{{json .Config}}'), or json",
    )
    p.add_argument(
        "--remote",
        action="store_true",
        help="inspect images in a registry instead (IMAGE is [docker://]NAME[:TAG|@DIGEST]): "
        "what skopeo inspect prints",
    )
    platform_option(p, "with --remote: ")
    from .remote import registry_options

    registry_options(p)


@command("inspect", _inspect_args)
def cmd_inspect(args: argparse.Namespace) -> int:
    """Show images as docker image inspect does: a JSON array of what Docker's engine
    says of each (Config as Docker's container.Config, Created with nanoseconds).

    example:
      ocistore inspect busybox
      ocistore inspect sha256:3f57d9401f8d
      ocistore inspect -f '{{.Id}} {{.Size}} {{json .Config.Env}}' busybox
    """
    from ..formats import docker_api as api
    from . import templates

    if args.remote:
        from .remote import inspect_remote

        return inspect_remote(args)
    as_json = args.format == "json"
    template = templates.parse(args.format, listing=False) if args.format else None
    store = open_store(args)
    docs: list[bytes] = []
    errors: list[str] = []
    for name in args.images:
        try:
            docs.append(api.image_inspect(store.inspect(name)))
        except OcistoreError as e:
            errors.append(str(e))
    if template is None or as_json:  # json: docker's compact array, as the engine sent it
        views.print_inspect(docs, sys.stdout, indented=not as_json)
    else:
        # As docker's template inspector: each image that renders, a line each (an
        # image the template fails on is told after them); a lone newline for none.
        out: list[str] = []
        for doc in docs:
            try:
                out.append(template.render(views.inspect_value(api.as_data(doc))) + "\n")
            except templates.TemplateError as e:
                errors.append(str(e))
        sys.stdout.write("".join(out) or "\n")
    for message in errors:
        say_error(message)
    return EXIT_ERROR if errors else EXIT_OK


def go_bool(text: str) -> bool:
    """A boolean flag's value as Go's ``strconv.ParseBool`` reads it (``-H=false``)."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


def _history_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument(
        "-H",
        "--human",
        type=go_bool,
        nargs="?",  # -H alone is -H=true (_go_bool_values)
        default=True,
        metavar="BOOL",
        help="sizes and dates in human-readable form (the default; -H=false for bytes "
        "and RFC 3339 times)",
    )
    p.add_argument(
        "--format",
        default=None,
        help="table (default), json (a JSON object per line), a Go template "
        "('{{.ID}} {{.Size}}'), or table TEMPLATE",
    )


@command("history", _history_args)
def cmd_history(args: argparse.Namespace) -> int:
    """Show the history of an image, newest first, as docker history does.

    Rows whose image is known (the image, then its Parent chain) show its ID; older
    rows <missing>. An image without history shows no rows.

    example:
      ocistore history busybox
      ocistore history --no-trunc --format json myapp:v1
      ocistore history --format '{{.ID}}\t{{.CreatedBy}}' -H=false myapp:v1
    """
    from . import templates

    templates.parse(views.history_format(args.format, args.quiet, args.human))  # told first
    store = open_store(args)
    rows = store.history(args.image)
    views.print_history(rows, sys.stdout, args.format, args.no_trunc, args.quiet, args.human)
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
        except PartiallyDone as e:
            for line in e.done:  # what was done before the failure, then the failure
                print(views.printable(line))
            say_error(e.error)
            status = EXIT_ERROR
            continue
        except OcistoreError as e:
            say_error(e)
            status = EXIT_ERROR
            continue
        for event in events:
            print(views.printable(str(event)))
    return status


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--input",
        default="-",
        metavar="PATH|-",
        help="docker-archive or oci-archive tar (plain, gzip or zstd), OCI layout directory, "
        "or - for stdin (the default, as docker load)",
    )
    platform_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("load", _load_args)
def cmd_load(args: argparse.Namespace) -> int:
    """Load images from a docker-archive, an OCI layout or an oci-archive.

    The format is recognized from the content: docker save archives of every Docker
    version (with or without manifest.json), skopeo's and umoci's OCI layouts.

    example:
      ocistore load -i busybox.tar
      ocistore load < busybox.tar
      skopeo copy -q docker://busybox docker-archive:/dev/stdout:busybox | ocistore load -i -
      ocistore load -i ./layout --platform linux/arm64
    """
    platform = parse_platform(args.platform) if args.platform else None
    if args.input == "-" and (sys.stdin is None or sys.stdin.isatty()):
        shown = "closed" if sys.stdin is None else "a terminal"
        raise OcistoreError(f"requested load from stdin, but stdin is {shown}: give -i PATH")
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    tune_allocator()
    from .. import formats

    loaded = formats.load(store, args.input, platform, progress)
    for image in loaded:
        for ref in image.tags:
            print(f"Loaded image: {views.printable(ref.familiar())}")
    # docker load's rule: every image's ID, after the tags, when the last image of the
    # archive came untagged.
    if loaded and not loaded[-1].tags:
        for image in loaded:
            print(f"Loaded image ID: {image.id}")
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
        choices=["docker", "oci", "oci-archive", "dir"],
        default="docker",
        help="docker (default: docker save's format), oci (a layout directory), oci-archive, "
        "or dir (skopeo's dir: layout, one image)",
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
    if args.output == "-" and sys.stdout.isatty():  # (before the store is made)
        raise OcistoreError("refusing to write an archive to a terminal: give -o PATH")
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    tune_allocator(keep_freed=args.format == "docker")
    from .. import formats

    formats.save(store, args.images, args.output, formats.SaveFormat(args.format), progress)
    return EXIT_OK


def tune_allocator(keep_freed: bool = False) -> None:
    """Tune the process for a command that streams layers on several threads (import,
    load, save); called before any thread starts. Other commands skip it: it costs them
    importing ``ctypes``. (The figures behind each choice are in ``docs/design.md``.)

    * One malloc arena (``M_ARENA_MAX`` 1): glibc gives each thread an arena of its own
      that keeps what the thread freed, and a load runs a reading and a digesting
      thread per layer; with one arena its peak memory is lower at the same speed (the
      threads allocate a few large pieces per megabyte, so they hardly contend).
    * ``keep_freed`` (a docker-archive save): decompressing a layer makes a fresh
      megabyte-sized ``bytes`` per piece, which glibc by default hands straight back to
      the kernel and fetches again, zeroed, a page fault per page, for the next piece;
      keeping freed memory in the heap saves that work for a little more memory.
      Loads do not: their zstd decoders grow with it.

    The malloc settings are a no-op where the C library has no ``mallopt`` (not glibc).
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
        print(f"Deleted: {views.printable(line)}")
    return EXIT_OK


def _fsck_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--repair",
        action="store_true",
        help="repair what can be repaired (damaged or partial records, the index, "
        "references to missing images), then check again",
    )


@command("fsck", _fsck_args)
def cmd_fsck(args: argparse.Namespace) -> int:
    """Verify every image config, layer and blob against its digest.

    Prints one line per problem and exits 1 if there is any. With --repair, first
    drops what is damaged or partial (layer records, kept blobs, configs not what their
    name says, metadata of missing images, references to missing images, moving digest
    references to the image that keeps the manifest), rebuilds the index, prints what
    it did ("Repaired: ..."), then checks again: an image whose layer is gone is left,
    to be loaded again.

    example:
      ocistore fsck
      ocistore fsck --repair
    """
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    if args.repair:
        repaired, problems = store.repair(progress)
        for line in repaired:
            print(views.printable(f"Repaired: {line}"))
    else:
        problems = store.fsck(progress)
    for p in problems:
        print(views.printable(p))
    return EXIT_ERROR if problems else EXIT_OK


# -- two-word commands: system df, image prune ------------------------------------------


def _add_subcommands(
    p: argparse.ArgumentParser,
    subcommands: list[tuple[str, Callable[[argparse.ArgumentParser], None], Handler]],
) -> None:
    """Sub-commands of a command (``system df``), each with its docstring as its help, as
    :func:`build_parser` makes the commands; the one chosen is ``args.subcommand``."""
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, configure, handler in subcommands:
        _add_command(sub, name, configure, handler).set_defaults(subcommand_handler=handler)


def _add_command(
    sub: argparse._SubParsersAction[Parser],
    name: str,
    configure: Callable[[argparse.ArgumentParser], None],
    handler: Handler,
) -> argparse.ArgumentParser:
    """A command's parser, its handler's docstring as its help (first line: summary)."""
    doc = (handler.__doc__ or "").strip()
    summary, _, rest = doc.partition("\n")
    p = sub.add_parser(
        name,
        help=summary,
        description=summary + ("\n" + textwrap.dedent(rest) if rest else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(p)
    return p


def _run_subcommand(args: argparse.Namespace) -> int:
    handler: Handler = args.subcommand_handler
    return handler(args)


def _system_df_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="one row per image, layer and blob")
    format_option(p)


def cmd_system_df(args: argparse.Namespace) -> int:
    """Show the store's disk usage, as docker system df.

    One row each for images, layers, blobs and layer copies: how many there are
    (TOTAL), how many are in use (ACTIVE), the bytes they take on disk (SIZE) and
    the bytes that can be freed (RECLAIMABLE).

    * in use: an image with a tag, or the parent of one (what image prune keeps; an
      image named only by digest is dangling), and what such images need;
    * sizes: the blob files on disk (layers as stored, compressed or not, and the
      manifests and layer copies images keep), each blob counted once;
    * reclaimable: what nothing in use needs: freed by image prune, and for layers
      and blobs no image needs at all, by gc;
    * layer copies: blobs an image keeps that hold one of its layers a second time
      (the layer stored as a plain tar by a docker-archive load, and kept as the gzip
      blob its OCI manifest names by an OCI load).

    With -v: each image (SIZE, SHARED SIZE with other images, UNIQUE SIZE), layer
    (its blob, and the copies kept of it) and blob (what kind, how many images need it).

    example:
      ocistore system df
      ocistore system df -v
      ocistore system df --format json
    """
    usage = open_store(args).disk_usage()
    views.print_disk_usage(usage, sys.stdout, args.verbose, args.format == "json")
    return EXIT_OK


def _system_args(p: argparse.ArgumentParser) -> None:
    _add_subcommands(p, [("df", _system_df_args, cmd_system_df)])


@command("system", _system_args)
def cmd_system(args: argparse.Namespace) -> int:
    """Manage the store as a whole (system df: disk usage).

    example:
      ocistore system df
      ocistore system df -v
    """
    return _run_subcommand(args)


def prune_filter(text: str) -> str:
    """A ``--filter`` value: ``name=value`` (argparse reports the error)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"bad format of filter {text!r} (expected name=value)")
    return text


_PRUNE_WARNING = "WARNING! This will remove all dangling images."
#: docker's is "all images without at least one container associated to them": here, all.
_PRUNE_ALL_WARNING = "WARNING! This will remove all images."


def _image_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-a", "--all", action="store_true", help="remove all images, not just dangling ones"
    )
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        type=prune_filter,
        metavar="FILTER",
        help="only images created before a time (until=24h, until=2024-01-02T15:04:05Z, "
        "until=1700000000), with a label (label=KEY or label=KEY=VALUE) or without one "
        "(label!=KEY[=VALUE]); repeatable",
    )
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")


def confirm(question: str) -> bool:
    """Ask on stdout and read one line of stdin, as docker does (whether or not stdin is
    a terminal): yes only for ``y`` or ``Y``; no answer (end of input) is no."""
    sys.stdout.write(f"{question}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    if sys.stdin is None:  # closed: no answer
        return False
    try:
        answer = sys.stdin.buffer.readline().decode(errors="replace")
    except (OSError, ValueError):
        return False
    return answer.strip().lower() == "y"


def cmd_image_prune(args: argparse.Namespace) -> int:
    """Remove dangling images, as docker image prune.

    Dangling: no tag (digest references do not count) and no child image. With -a,
    every image (docker removes every image no container uses, and a store has
    none), tagged or not, that the filters select. Each is removed as rmi removes it
    (untagged parents with no other child go too); an image with children stays.
    Without -f, asks first and reads the answer from stdin. Prints what was untagged
    and deleted, and the space reclaimed (the blob files removed).

    example:
      ocistore image prune
      ocistore image prune -f --filter until=24h
      ocistore image prune -a --filter label=stage=build
    """
    from ..store.usage import parse_filters

    parse_filters(args.filter, args.all)  # a bad filter is refused before asking
    if not args.force and not confirm(_PRUNE_ALL_WARNING if args.all else _PRUNE_WARNING):
        return EXIT_OK
    try:
        report = open_store(args).prune_images(args.all, args.filter)
    except PartiallyDone as e:  # what was done before the failure, then the failure
        views.print_prune_done(e.done, sys.stdout)
        say_error(e.error)
        return EXIT_ERROR
    views.print_prune(report, sys.stdout)
    return EXIT_OK


#: ``docker image``'s sub-commands that are the commands of their own (``image ls`` is
#: ``images``, ``image rm`` is ``rmi``), as docker has both spellings.
_IMAGE_SUBCOMMANDS = (
    ("history", "history"),
    ("import", "import"),
    ("inspect", "inspect"),
    ("load", "load"),
    ("ls", "images"),
    ("rm", "rmi"),
    ("save", "save"),
    ("tag", "tag"),
)


def _image_args(p: argparse.ArgumentParser) -> None:
    commands = {name: (configure, handler) for name, configure, handler in _COMMANDS}
    subcommands: list[tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = [
        ("prune", _image_prune_args, cmd_image_prune)
    ]
    subcommands += [(alias, *commands[name]) for alias, name in _IMAGE_SUBCOMMANDS]
    _add_subcommands(p, sorted(subcommands, key=lambda sub: sub[0]))


@command("image", _image_args)
def cmd_image(args: argparse.Namespace) -> int:
    """Manage images: image prune removes unused images; image ls, inspect, history,
    rm, tag, import, load and save are the commands of those names (images, rmi), as
    docker image has them.

    example:
      ocistore image prune
      ocistore image prune -a -f
      ocistore image inspect busybox
      ocistore image ls 'lab/*'
    """
    return _run_subcommand(args)


# -- entry point -------------------------------------------------------------------------


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``only``, the sub-parser of that command alone
    (what parsing a command needs: building them all was a visible part of every
    command's start)."""
    parser = Parser(
        prog="ocistore",
        description="A content-addressable container image store.",
        epilog="example:\n  ocistore import rootfs.tar myapp:v1 && ocistore images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocistore {__version__}")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="store directory (default: $OCISTORE_ROOT, else "
        "${XDG_DATA_HOME:-~/.local/share}/ocistore)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=seconds,
        default=LOCK_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the store's lock (default: {LOCK_TIMEOUT:g}; 0: "
        "forever); a wait of more than a moment is told on stderr, naming the holder",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, configure, handler in _COMMANDS:
        if only is not None and name != only:
            continue
        _add_command(sub, name, configure, handler).set_defaults(handler=handler)
    return parser


def _command_named(argv: list[str]) -> str | None:
    """The command the arguments name, when the global options before it are plain (so
    only its parser need be built); ``None`` for anything else (help, a typo)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--root", "--lock-timeout"):
            i += 2
        elif arg.startswith(("--root=", "--lock-timeout=")):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg if any(name == arg for name, _, _ in _COMMANDS) else None
    return None


#: Boolean flags that also take a value, as Go's flag package has them: ``-H`` alone is
#: true, ``-H=false`` sets it, and ``-H false`` is the flag and then an argument.
_GO_BOOL_FLAGS = frozenset({"-H", "--human"})


def _go_bool_values(argv: list[str]) -> list[str]:
    """``argv`` with each Go boolean flag given alone written ``FLAG=true``, so that it
    never takes the next argument as its value (``history -H busybox``); only for the
    command that has such flags."""
    if "history" not in argv:
        return argv
    out: list[str] = []
    for arg in argv:
        if arg == "--":
            out += argv[len(out) :]
            break
        out.append(f"{arg}=true" if arg in _GO_BOOL_FLAGS else arg)
    return out


def main(argv: list[str] | None = None) -> int:
    # A command is a short-lived process that makes many small objects (a record per
    # image, a reference per tag) and few cycles: collect garbage rarely. With the
    # default thresholds, listing many images spent much of its time in the GC.
    gc.set_threshold(100_000, 50, 100)
    argv = _go_bool_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_named(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.root is None:
        args.root = default_root()
    try:
        with displays_ended():  # no progress drawn below what is printed next
            code = int(args.handler(args))
        report_skipped(args)
        sys.stdout.flush()  # here, so that a full disk behind stdout is reported
        return code
    except OcistoreError as e:
        say_error(e)
        return EXIT_ERROR
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            sys.stdout.close()
        return EXIT_ERROR
    except KeyboardInterrupt:
        say_error("interrupted")
        return 130
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        say_error(f"{where}{err.strerror or err}")
        return EXIT_ERROR


class _Stdout(io.FileIO):
    """Standard output whose write errors (a full disk behind a redirection) name it."""

    def write(self, data: Any) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StorageError("writing", _describe_stdout(self.fileno()), e) from None


def _describe_stdout(fd: int) -> str:
    """``standard output``, with the file it was redirected to when there is one."""
    with contextlib.suppress(OSError):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target.startswith("/"):
            return f"standard output ({target})"
    return "standard output"


def _name_stdout_errors() -> None:
    out = sys.stdout
    if out is None or not hasattr(out, "fileno"):
        return
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    out.flush()
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(_Stdout(fd, "w", closefd=False)),
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=bool(out.line_buffering),
    )


def run() -> int:
    """The ``ocistore`` command: :func:`main`, then a quicker exit.

    Freezing every object before the interpreter shuts down spares its last garbage
    collections a walk over all of them. Exit handlers and file flushes still run as
    usual.
    """
    _name_stdout_errors()
    try:
        code = main()
    except SystemExit as e:  # --help, --version, usage errors: argparse's exit
        code = e.code if isinstance(e.code, int) else EXIT_USAGE if e.code else EXIT_OK
    except StorageError as e:  # writing the help to a full disk
        say_error(e)
        code = EXIT_ERROR
    try:
        sys.stdout.flush()
    except (OSError, OcistoreError) as e:
        if code == EXIT_OK and not isinstance(e, BrokenPipeError):
            say_error(e)  # (a command that failed already said so, in one line)
        code = code or EXIT_ERROR
    finally:
        _stdout_to_devnull()  # what is left unwritten is dropped, not retried at exit
    gc.freeze()
    return code


def _stdout_to_devnull() -> None:
    """Point standard output at /dev/null, once nothing more will be written to it:
    the interpreter's last flush of a buffer that could not be written (a full disk, a
    closed pipe) then succeeds quietly instead of printing a traceback."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(run())


# The registry commands register themselves with the others (after them, in the help).
from . import remote as _remote  # noqa: E402,F401
from . import rootfs as _rootfs  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
