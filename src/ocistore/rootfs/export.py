"""``export``: an image's flattened file system as one tar, as ``docker export`` of a new
container and ``crane export`` give it.

The members are :func:`~.flatten.flatten`'s, in its order (the top layer's first), each
with its own mode, owner, times, device numbers and extended attributes; whiteouts are
applied and not written. The output is ``-o PATH`` (written beside and renamed into
place) or standard output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

from ..formats.tarwriter import END_OF_ARCHIVE, member_header, output_file
from ..progress import Progress
from ..spec.tarscan import Entry
from .flatten import FlatEntry, flatten

if TYPE_CHECKING:
    from ..store.store import Store

__all__ = ["export", "write_tar"]

_BLOCK = 512
EXPORTING = "Exporting"
_FLUSH = 1 << 20


def header_of(entry: Entry) -> bytes:
    """A flattened member's header, as it was in its layer."""
    meta = entry.meta
    assert meta is not None
    kind = b"0" if entry.type in (b"\x00", b"7") else entry.type
    return member_header(
        entry.name,
        kind,
        size=entry.size,
        mode=meta.mode,
        uid=meta.uid,
        gid=meta.gid,
        mtime_ns=meta.mtime_ns,
        link=entry.linkname,
        devmajor=meta.devmajor,
        devminor=meta.devminor,
        xattrs=meta.xattrs,
    )


def write_tar(items: Iterator[FlatEntry], out: IO[bytes]) -> int:
    """Write members and their data as a tar to ``out``; how many members."""
    buf = bytearray()
    pad = 0
    count = 0

    def write(data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[out.write(view) or 0 :]

    for item in items:
        if isinstance(item, Entry):
            if pad:
                buf += bytes(pad)
            buf += header_of(item)
            pad = -item.size % _BLOCK
            count += 1
        else:
            if len(item) >= _FLUSH:
                if buf:
                    write(buf)
                    buf = bytearray()
                write(item)
                continue
            buf += item
        if len(buf) >= _FLUSH:
            write(buf)
            buf = bytearray()
    buf += bytes(pad) + END_OF_ARCHIVE
    write(buf)
    return count


def export(store: Store, name: str, output: str, progress: Progress | None = None) -> int:
    """Write the image ``name``'s flattened file system to ``output`` (``-`` for standard
    output); how many members the tar holds."""
    image = store.image(name)
    layers = store.layers_of(image)
    with output_file(output) as out:
        return write_tar(flatten(store, layers, progress, EXPORTING), out)
