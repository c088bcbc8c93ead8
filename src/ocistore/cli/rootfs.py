"""The file system commands: unpack, export, commit, append, diff. Registered with
:mod:`ocistore.cli.main`'s commands, whose rules they keep (one line per error, exit
codes, progress on a terminal only)."""

from __future__ import annotations

import argparse
import sys

from ..errors import OcistoreError
from ..spec.platform import parse_platform
from . import views
from .main import EXIT_OK, change_option, command, open_store, platform_option, say_error
from .progress import TerminalProgress


def _warn(message: str) -> None:
    say_error(f"warning: {message}")


def _unpack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("directory", metavar="DIR", help="the bundle to make (its rootfs/ is the tree)")
    p.add_argument(
        "--rootless",
        action="store_true",
        help="own every file yourself; keep the image's owners in user.rootlesscontainers",
    )
    p.add_argument("--bundle", action="store_true", help="also write an OCI runtime config.json")
    p.add_argument("--force", action="store_true", help="unpack into a directory not empty")
    platform_option(p, "check that the image is for ")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("unpack", _unpack_args)
def cmd_unpack(args: argparse.Namespace) -> int:
    """Unpack an image's file system into DIR/rootfs, as umoci unpack does.

    Every layer is applied in order, OCI whiteouts included; no member of a layer can
    write outside DIR/rootfs (one that tries is refused, naming the layer and the
    member). DIR/ocistore-unpack.json.gz records the tree for a later commit; with
    --bundle, DIR/config.json is an OCI runtime config made from the image's.

    example:
      ocistore unpack busybox:latest ./bundle
      ocistore unpack --rootless --bundle myapp:v1 ./bundle && runc run -b ./bundle app
    """
    from ..rootfs.unpack import unpack

    platform = parse_platform(args.platform) if args.platform else None
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    done = unpack(
        store,
        args.image,
        args.directory,
        rootless=args.rootless,
        force=args.force,
        bundle=args.bundle,
        platform=platform,
        progress=progress,
        warn=_warn,
    )
    if not args.quiet and sys.stderr.isatty():
        say_error(f"unpacked {done.image_id} into {views.printable(args.directory)}")
    return EXIT_OK


def refuse_terminal(output: str) -> None:
    if output == "-" and sys.stdout.isatty():
        raise OcistoreError("refusing to write a tar archive to a terminal: give -o PATH")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE|-", help="where to write (- for stdout)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("export", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    """Write an image's flattened file system as one tar, like docker export of a new
    container (or crane export): whiteouts applied, the top layer's members first.

    example:
      ocistore export busybox:latest -o busybox-rootfs.tar
      ocistore export myapp:v1 -o - | tar -t
    """
    from ..rootfs.export import export

    refuse_terminal(args.output)
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    export(store, args.image, args.output, progress)
    return EXIT_OK


def _commit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", metavar="DIR", help="a directory ocistore unpack made")
    p.add_argument("-t", "--tag", metavar="REF", help="the new image's name")
    p.add_argument(
        "--from",
        dest="base",
        metavar="IMAGE",
        help="the image DIR was unpacked from (checked; default: the one recorded)",
    )
    p.add_argument("-m", "--message", help="the new history entry's comment")
    p.add_argument("-a", "--author", help="the new image's author")
    change_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("commit", _commit_args)
def cmd_commit(args: argparse.Namespace) -> int:
    """Make a new image of DIR's base image and one layer of what changed in DIR/rootfs
    since ocistore unpack made it (as umoci repack): added and changed paths, and
    whiteouts for what was deleted. The base image is left as it was. Prints the new
    image ID.

    example:
      ocistore unpack busybox ./b && echo hi > ./b/rootfs/hello && ocistore commit ./b -t hi:1
      ocistore commit ./b --from myapp:v1 -t myapp:v2 -m 'add config' -c 'ENV MODE=prod'
    """
    from ..rootfs.commit import commit
    from ..spec.legacy.changes import build_from_config

    build_from_config(args.change)  # (checked before anything is read)
    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    image_id = commit(
        store,
        args.directory,
        args.tag,
        base=args.base,
        message=args.message,
        author=args.author,
        changes_=args.change,
        progress=progress,
    )
    print(image_id)
    return EXIT_OK


def _append_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("layers", metavar="LAYER.tar", nargs="+", help="tarballs: plain, gzip or zstd")
    p.add_argument("-t", "--tag", metavar="REF", help="the new image's name")
    p.add_argument("-m", "--message", help="the new history entries' comment")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


@command("append", _append_args)
def cmd_append(args: argparse.Namespace) -> int:
    """Make a new image of IMAGE's layers and the tarballs as more layers, in order (as
    crane append). The base image is left as it was. Prints the new image ID.

    example:
      tar -C extra -c . | gzip > extra.tar.gz && ocistore append busybox extra.tar.gz -t bb:extra
    """
    from ..rootfs.commit import append

    store = open_store(args)
    progress = TerminalProgress.for_terminal(args.quiet)
    image_id = append(
        store, args.image, args.layers, args.tag, message=args.message, progress=progress
    )
    print(image_id)
    return EXIT_OK


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("other", metavar="IMAGE2", nargs="?", help="compare with it instead")
    p.add_argument(
        "--format", choices=["text", "json"], default="text", help="text (A/C/D lines) or json"
    )


@command("diff", _diff_args)
def cmd_diff(args: argparse.Namespace) -> int:
    """Show the paths an image's top layer added (A), changed (C) and deleted (D), as
    podman image diff; with IMAGE2, what differs in IMAGE from IMAGE2.

    example:
      ocistore diff myapp:v2
      ocistore diff myapp:v2 myapp:v1
    """
    import json

    from ..rootfs.diff import diff

    store = open_store(args)
    changes = diff(store, args.image, args.other)
    if args.format == "json":
        doc = {
            name: [path for kind, path in changes if kind == letter]
            for letter, name in (("C", "changed"), ("A", "added"), ("D", "deleted"))
        }
        print(json.dumps(doc, indent=4))
        return EXIT_OK
    out = [f"{kind} {views.printable(path)}" for kind, path in changes]
    if out:
        print("\n".join(out))
    return EXIT_OK
