"""Reachability: what the images still need, and removing what nothing needs.

Reference counts are never stored: they are derived here, once, for every verb that
removes things (``rmi``, ``gc``; ``prune`` and disk usage later). An image needs the
layer chains of its config and the blobs its record keeps (manifests, layer blobs it was
distributed as); a layer chain needs the blob it is stored in. So:

* a chain is needed while some image's chain list has it;
* a blob is needed while some image keeps it or some stored chain is stored in it.

:func:`sweep` removes, of the chains and blobs it is given as candidates, those not
needed, top-down (chains, then blobs), under the store lock its caller holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from ..errors import CorruptStore, NotFound
from ..spec.digest import ChainID, Digest

if TYPE_CHECKING:
    from .content import ContentStore
    from .images import ImageRecord
    from .layers import Layer, LayerStore

__all__ = ["Needed", "Swept", "needed", "sweep"]


class Needed(NamedTuple):
    """What a set of images needs directly: their chains and the blobs they keep."""

    chains: set[ChainID]
    blobs: set[Digest]


def needed(records: Iterable[ImageRecord]) -> Needed:
    """The chains and kept blobs of ``records`` (from the index: no file is read)."""
    chains: set[ChainID] = set()
    blobs: set[Digest] = set()
    for r in records:
        chains.update(r.chains)
        blobs.update(r.blobs)
    return Needed(chains, blobs)


class Swept(NamedTuple):
    """What :func:`sweep` removed, in the order of its candidates."""

    #: Every chain removed.
    chains: list[ChainID]
    #: The records of the chains removed (a damaged record has none).
    layers: list[Layer]
    blobs: list[Digest]


def sweep(
    layers: LayerStore,
    content: ContentStore,
    records: Iterable[ImageRecord],
    chains: Iterable[ChainID],
    blobs: Iterable[Digest] = (),
) -> Swept:
    """Remove the candidate ``chains`` no image of ``records`` needs, then the candidate
    ``blobs`` (and the blobs of the chains removed) that no image keeps and no remaining
    chain is stored in. ``records`` are all the images that remain."""
    need = needed(records)
    removed: list[ChainID] = []
    released: list[Layer] = []
    candidates: list[Digest] = list(blobs)
    for chain in chains:
        if chain in need.chains:
            continue
        layer: Layer | None = None
        # A damaged or missing record (what a crash inside a removal leaves) goes too;
        # its blob, unknown, waits for a full gc.
        with contextlib.suppress(NotFound, CorruptStore):
            layer = layers.get(chain)
        if not layers.delete(chain):
            continue  # nothing was there
        removed.append(chain)
        if layer is not None:
            released.append(layer)
            candidates.append(layer.blob.digest)
    left = [b for b in dict.fromkeys(candidates) if b not in need.blobs]
    if left:
        stored_in = set()
        for chain in layers.walk():
            with contextlib.suppress(NotFound, CorruptStore):
                stored_in.add(layers.get(chain).blob.digest)
        left = [b for b in left if b not in stored_in]
    for blob in left:
        content.delete(blob)
    return Swept(removed, released, left)
