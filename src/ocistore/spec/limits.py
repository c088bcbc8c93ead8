"""The limits on input, in one place, and the one way untrusted JSON is parsed.

Every document and archive ocistore reads comes from outside: a hostile one must end in
one line naming the limit it hit, in time and memory that do not grow faster than the
input, within the project's goal of 64 MiB. Each limit is set well above what real
images reach (docker save archives of hundreds of images, multi-platform indexes, images
of 125 layers), and where registries and containerd have one, it matches or exceeds
theirs. The values and the reasons are in docs/design.md ("Limits on input").

:func:`load_json` parses a JSON document with limits on its size, on how many values it
may hold (an upper bound counted on the bytes before parsing, so memory is bounded
before it is spent) and on its nesting depth; its errors name the document.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Final

from ..errors import InvalidInput

__all__ = [
    "MAX_ARCHIVE_JSON",
    "MAX_CONFIG",
    "MAX_CONFIGS_TOTAL",
    "MAX_DESCRIPTORS",
    "MAX_IMAGES",
    "MAX_IMAGE_NAMES",
    "MAX_INDEX_NESTING",
    "MAX_JSON_DEPTH",
    "MAX_JSON_VALUES",
    "MAX_LAYER_DEPTH",
    "MAX_LAYER_ENTRIES",
    "MAX_MANIFEST",
    "MAX_MEMBERS",
    "MAX_MEMBER_NAMES",
    "MAX_NAME",
    "MAX_PATH_DEPTH",
    "MAX_PAX_HEADER",
    "MAX_SYMLINKS",
    "MAX_SYMLINK_HOPS",
    "MAX_TAR_TRAILER",
    "Budget",
    "check_size",
    "load_json",
]

#: Image manifests and indexes, as blobs (Distribution, containerd and containers/image
#: refuse larger manifests too).
MAX_MANIFEST: Final = 4 << 20
#: Image configs (containers/image allows 4 MiB; a config of 125 layers with long
#: ``RUN`` lines stays far below).
MAX_CONFIG: Final = 8 << 20
#: The files of an archive that list its images: ``manifest.json``, ``index.json``,
#: ``repositories``, ``oci-layout`` and pre-1.10 ``<id>/json`` (containers/image allows
#: 1 MiB for ``manifest.json``; a docker save of a thousand images needs about 1 MiB).
MAX_ARCHIVE_JSON: Final = 8 << 20
#: Values in one JSON document, counted before parsing as an upper bound (every ``[``,
#: ``{`` and ``,``): about 110 bytes of memory each at worst (small objects), so about
#: 27 MiB for the largest document. An index of 30,000 descriptors stays below it.
MAX_JSON_VALUES: Final = 250_000
#: The configs of one archive's images together, each counted once per image (the store
#: parses every image's config): a thousand images of 20 KiB configs need 20 MiB.
MAX_CONFIGS_TOTAL: Final = 64 << 20
#: How deep JSON may nest. Real documents nest 3 to 6 levels; Python's own parser fails
#: around 1,000.
MAX_JSON_DEPTH: Final = 64
#: How deep OCI indexes may nest below ``index.json`` (real ones: one level).
MAX_INDEX_NESTING: Final = 8
#: Layers of one image (Docker's limit on the depth of a layer chain).
MAX_LAYER_DEPTH: Final = 125
#: Symlinks followed from one name inside an archive.
MAX_SYMLINKS: Final = 16
#: Members of one layer applied to a directory (unpack, export, diff): each costs a
#: little memory for as long as the layer is read (the paths it wrote, which its own
#: whiteouts must not remove). Real layers hold up to a few hundred thousand.
MAX_LAYER_ENTRIES: Final = 1_000_000
#: Symlinks followed while one path is resolved inside a root file system (Linux's
#: ``MAXSYMLINKS``): a longer chain, or a loop, refuses the member.
MAX_SYMLINK_HOPS: Final = 40
#: Directories one path of a root file system goes down through (each holds a file
#: descriptor while a layer is applied or a tree walked): Linux's ``PATH_MAX`` of 4096
#: bytes allows 2048; real images stay under 30.
MAX_PATH_DEPTH: Final = 256
#: Descriptors read in one OCI layout, all its indexes together (each blob is read once,
#: however many descriptors name it).
MAX_DESCRIPTORS: Final = 100_000
#: The names of an OCI layout's ``index.json`` given to its images, each name counted at
#: every descriptor it passes on its way down to the manifests: 1 for a name on a
#: manifest, 2 on a multi-platform index. As many as :data:`MAX_DESCRIPTORS`, twice what
#: an ``index.json`` within :data:`MAX_JSON_VALUES` can name (50,000 descriptors of five
#: values each), so only names multiplied by a shared index reach it.
MAX_IMAGE_NAMES: Final = 100_000
#: Images in one archive (entries of ``manifest.json``, legacy layer directories).
MAX_IMAGES: Final = 10_000
#: Members of one tar archive (every header, extension headers included; with implied
#: parent directories, entries of its index): a docker save of 500 images of 30 layers
#: each, none shared, has about 60,000. The index costs about 200 bytes a member beside
#: its name.
MAX_MEMBERS: Final = 100_000
#: The bytes of all member names of one tar (implied parent directories included).
MAX_MEMBER_NAMES: Final = 16 << 20
#: A member's name or link target, in bytes (Linux's ``PATH_MAX``).
MAX_NAME: Final = 4096
#: One pax extended header (a few names and times: a few KiB at most in practice).
MAX_PAX_HEADER: Final = 1 << 20
#: What may follow a tar's end-of-archive marker and is read (and ignored) to the end of
#: the stream: tar pads to its record size (10 KiB by default, 1 MiB with ``-b 2048``).
MAX_TAR_TRAILER: Final = 16 << 20


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def check_size(size: int, limit: int, what: str, kind: str = "a JSON document") -> None:
    """Refuse ``size`` bytes over ``limit`` for ``kind`` of document, naming ``what``."""
    if size > limit:
        raise InvalidInput(f"{what}: {size} bytes, over the limit of {_size(limit)} for {kind}")


class Budget:
    """A running total of bytes against a limit: :meth:`spend` refuses the first
    amount that takes it over, naming ``what`` and ``kind``."""

    def __init__(self, limit: int, what: str, kind: str) -> None:
        self.limit = limit
        self.what = what
        self.kind = kind
        self.spent = 0

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > self.limit:
            raise InvalidInput(
                f"{self.what}: more than {_size(self.limit)} of {self.kind}, "
                f"over the limit of {_size(self.limit)}"
            )


def _depth(doc: Any) -> int:
    """How deep ``doc`` nests (a scalar is 0, ``[]`` 1), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > deepest:
            deepest = depth
            if depth > MAX_JSON_DEPTH:
                break
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def load_json(raw: bytes, what: str, limit: int, kind: str = "a JSON document") -> Any:
    """Parse untrusted JSON: at most ``limit`` bytes, :data:`MAX_JSON_VALUES` values and
    :data:`MAX_JSON_DEPTH` levels. Every error is one :class:`InvalidInput` line that
    starts with ``what`` (the archive and the file, or the blob and where it is named)."""
    check_size(len(raw), limit, what, kind)
    containers = raw.count(b"[") + raw.count(b"{")
    values = containers + raw.count(b",")
    if values > MAX_JSON_VALUES:
        raise InvalidInput(
            f"{what}: up to {values} JSON values, over the limit of {MAX_JSON_VALUES}"
        )
    try:
        doc = json.loads(raw)
        # Only a document with that many containers can nest that deep.
        too_deep = containers > MAX_JSON_DEPTH and _depth(doc) > MAX_JSON_DEPTH
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{what}: not valid JSON: {e}") from None
    except ValueError as e:  # not a JSONDecodeError: the integer digits limit
        # Python's own limit on the digits of an integer (sys.get_int_max_str_digits(),
        # 4300 by default: converting more takes time quadratic in their number).
        digits = sys.get_int_max_str_digits()
        if "integer string conversion" not in str(e) or not digits:
            raise InvalidInput(f"{what}: not valid JSON: {e}") from None
        raise InvalidInput(
            f"{what}: a JSON integer of more than {digits} digits, "
            f"over the limit of {digits} digits"
        ) from None
    except RecursionError:  # Python's parser gives up around 1,000 levels
        too_deep = True
    if too_deep:
        raise InvalidInput(f"{what}: JSON nests deeper than the limit of {MAX_JSON_DEPTH} levels")
    return doc
