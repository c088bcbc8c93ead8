"""The file system commands: unpack, export, commit, append, diff. Registered with
:mod:`ocistore.cli.main`'s commands, whose rules they keep (one line per error, exit
codes, progress on a terminal only)."""

from __future__ import annotations

import argparse
import sys

from ..errors import OcistoreError
from ..spec.platform import parse_platform
from . import views
from .main import EXIT_OK, command, open_store, platform_option, say_error
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
