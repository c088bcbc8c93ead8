"""``diff``: what an image's top layer changed, or what differs between two images, as
``podman image diff`` and ``docker diff`` print it (``A``, ``C``, ``D`` and a path).

Both sides are flattened (:func:`~.flatten.flatten`) into a listing of every path with
what identifies its state: type, mode, owner, size, mtime, link target, device numbers,
xattrs and a digest of the content (a hard link has its target's). ``A`` is a path only
the first side has, ``D`` one only the second has (once for a deleted directory, not
for what was below it), ``C`` one whose state differs. One image alone is compared with
its own layers but the top one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..spec.tarscan import Entry
from .flatten import flatten
from .tree import path_key

if TYPE_CHECKING:
    from ..store.layers import Layer
    from ..store.store import Store

__all__ = ["diff", "listing"]

_State = tuple[object, ...]


def listing(store: Store, layers: Sequence[Layer]) -> dict[str, _State]:
    """Every path of the flattened layers and its state (see the module's text)."""
    states: dict[str, _State] = {}
    links: dict[str, str] = {}
    current: Entry | None = None
    hasher = hashlib.sha256()

    def close() -> None:
        if current is not None and current.type != b"1":
            meta = current.meta
            assert meta is not None
            kind = b"0" if current.type in (b"\x00", b"7") else current.type
            states[current.name] = (
                kind,
                meta.mode,
                meta.uid,
                meta.gid,
                current.size,
                meta.mtime_ns // 1_000_000_000,
                current.linkname,
                meta.devmajor,
                meta.devminor,
                tuple(sorted((meta.xattrs or {}).items())),
                hasher.hexdigest() if kind == b"0" else "",
            )

    for item in flatten(store, layers):
        if isinstance(item, Entry):
            close()
            current = item
            hasher = hashlib.sha256()
            if item.type == b"1":
                links[item.name] = item.linkname
        else:
            hasher.update(item)
    close()
    for name, target in links.items():
        seen = {name}
        while target in links and target not in seen:  # (a link to a link)
            seen.add(target)
            target = links[target]
        states[name] = states.get(target, ("missing", target))
    return states


def diff(store: Store, name: str, other: str | None = None) -> list[tuple[str, str]]:
    """The changes of image ``name`` against ``other`` (or against its layers but the
    top one): ``(kind, path)`` with ``path`` from ``/``, sorted by path."""
    layers = store.layers_of(store.image(name))
    if other is None:
        first, second = layers, layers[:-1]
    else:
        first, second = layers, store.layers_of(store.image(other))
    new = listing(store, first)
    old = listing(store, second) if second else {}
    out: list[tuple[str, str]] = []
    deleted: tuple[bytes, ...] | None = None
    for path in sorted(new.keys() | old.keys(), key=path_key):
        if path not in old:
            out.append(("A", path))
        elif path not in new:
            key = path_key(path)
            if deleted is not None and key[: len(deleted)] == deleted:
                continue
            out.append(("D", path))
            deleted = key
        elif new[path] != old[path]:
            out.append(("C", path))
    return [(kind, "/" + path) for kind, path in out]
