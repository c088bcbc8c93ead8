"""An image's flattened file system, read from its layers without a directory: what
``export`` writes and ``diff`` compares.

:func:`flatten` reads the layers top first (each read, checked and decompressed on
another thread) and gives every member that is still visible in the image, with its
data: a member is hidden by the same path in a higher layer, by a whiteout of it or of
a directory above it in a higher layer, by an opaque whiteout of a directory above it,
or by a higher layer's non-directory at a directory above it. The order is the top
layer's members first, each layer in its own order: the same image always gives the
same entries. A directory whose members come from more than one layer is given once
more at the end, so that an extractor that sets a directory's times when it leaves it
(GNU tar) sets the right ones. Paths are taken as the layers name them (``..`` and ``.`` applied, a
leading ``/`` dropped); a layer that writes through a lower layer's symlink is taken by
name, where ``unpack`` would resolve it. What is refused is what ``unpack`` refuses
(:mod:`.apply`), with the same messages.

A hard link whose target comes from a lower layer is held until the target is given,
then given right after it (a tar's hard link must follow its target); if a higher layer
replaced the target, the first such link is given as a copy of the old target (the file
the link shares in a real unpack), the others as links to it; when the replaced target
is in the same layer as the links, and went by before them, that layer is read once
more for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .. import parallel
from ..progress import SILENT, Progress
from ..spec.tarscan import Entry, TarScanner
from .apply import OPAQUE, check_members, classify
from .fsroot import UnsafeEntry, clean_name
from .unpack import layer_pieces, read_layers

if TYPE_CHECKING:
    from ..store.layers import Layer
    from ..store.store import Store

__all__ = ["FlatEntry", "flatten", "layer_members"]

#: What :func:`flatten` gives: a member (its ``name`` the cleaned path, no leading
#: slash; a hard link's ``linkname`` cleaned too), or a piece of the data of the member
#: given last.
FlatEntry = Entry | memoryview


def layer_members(
    what: str, pieces: Iterator[bytes] | Iterator[bytes | memoryview]
) -> Iterator[Entry | memoryview]:
    """One layer's members (with their metadata) and their data, in order."""
    out: list[Entry | memoryview] = []
    scanner = TarScanner(what, out.append, layer=True, details=True, on_data=out.append)
    for piece in pieces:
        if not scanner.ended:
            scanner.feed(piece)
        yield from out
        out.clear()
    scanner.finish()
    yield from out


class _Flattener:
    def __init__(self) -> None:
        #: Paths given by higher layers (hiding the same path below).
        self.seen: set[str] = set()
        #: Paths below which nothing of a lower layer shows: whited out, or not a
        #: directory in a higher layer.
        self.gone: set[str] = set()
        #: Directories a higher layer made opaque.
        self.opaque: set[str] = set()
        #: Hard links waiting for their target, by the target's path.
        self.pending: dict[str, list[Entry]] = {}
        #: Links of the layer just read to a member of it that a higher layer hid, by
        #: the member's path: the layer is read again to give them its content.
        self.refetch: dict[str, list[Entry]] = {}
        #: This layer's hidden members whose content a link took: its name.
        self.stood_in: dict[str, str] = {}
        #: The directories given (their last member), those left (a member not below
        #: one was given after it), those to give again, and the last path given.
        self.dirs: dict[str, Entry] = {}
        self.left: set[str] = set()
        self.again: set[str] = set()
        self.last = ""

    def _given_in_layer(self, item: Entry) -> None:
        """Note what is given: a directory a member below it follows only after others
        did is given again at the end (an extractor such as GNU tar sets a directory's
        times when it leaves it; a layer's own order may leave and come back, as
        ``cffi``, ``cffi-1.0.dist-info``, ``cffi/x``)."""
        path = item.name
        last = self.last
        if last:
            end = len(last)
            while end > 0:  # the directories of the last path that this one is not in
                above = last[:end]
                if above in self.dirs and not (path == above or path.startswith(above + "/")):
                    self.left.add(above)
                end = last.rfind("/", 0, end)
        if self.left:
            end = path.find("/")
            while end > 0:
                above = path[:end]
                if above in self.left:
                    self.again.add(above)
                end = path.find("/", end + 1)
        if item.type == b"5":
            self.dirs[path] = item
            self.left.discard(path)
        self.last = path

    def repeats(self) -> Iterator[Entry]:
        """The directories to give again at the end (see :meth:`_given_in_layer`)."""
        for path in sorted(self.again, key=lambda p: p.split("/")):
            yield self.dirs[path]

    def hidden(self, path: str) -> bool:
        if path in self.seen or path in self.gone:
            return True
        if not self.gone and not self.opaque:
            return False
        end = path.find("/")
        while end > 0:
            above = path[:end]
            if above in self.gone or above in self.opaque:
                return True
            end = path.find("/", end + 1)
        return False

    def layer(self, what: str, members: Iterator[Entry | memoryview]) -> Iterator[FlatEntry]:
        self.stood_in = {}
        given: set[str] = set()  # this layer's paths (its own duplicates are given)
        passed: set[str] = set()  # this layer's members a higher layer hid
        gone: set[str] = set()
        opaque: set[str] = set()
        showing = False  # whether the data that follows belongs to a member given
        count = 0
        #: Members to give once the data of the one given last has gone by (the links
        #: to it).
        after: list[Entry] = []
        for item in members:
            if not isinstance(item, Entry):
                if showing:
                    yield item
                continue
            showing = False
            if after:
                yield from after
                after = []
            count += 1
            check_members(what, count)
            member = classify(what, item)
            if member is None or not member.parts:
                continue  # (AUFS's metadata, the root directory)
            parts = member.parts
            path = "/".join(parts)
            if member.whiteout is not None:
                parent = "/".join(parts[:-1])
                if member.whiteout == OPAQUE:
                    opaque.add(parent)
                else:
                    gone.add(f"{parent}/{member.whiteout}" if parent else member.whiteout)
                continue
            if member.link is not None:
                item = item._replace(linkname="/".join(member.link))
            if path not in given and self.hidden(path):
                if item.type not in (b"1", b"5"):
                    passed.add(path)
                if path in self.pending:
                    stand_in = self._stand_in(what, item, path, after)
                    if stand_in is not None:
                        self._given_in_layer(stand_in)
                        yield stand_in
                        showing = True
                continue
            given.add(path)
            if item.type != b"5":
                gone.add(path)  # (nothing of a lower layer shows below a file)
            item = item._replace(name=path)
            self._given_in_layer(item)
            linked = False  # a link whose target is given already
            if item.type == b"1" and item.linkname in passed:
                stood_in = self.stood_in.get(item.linkname)
                if stood_in is None:
                    # Its target went by, hidden: the layer is read again for it (see
                    # :meth:`refetched`).
                    self.refetch.setdefault(item.linkname, []).append(item)
                    continue
                item = item._replace(linkname=stood_in)  # (the file its target is)
                linked = True
            if item.type == b"1" and not linked and item.linkname not in given:
                self.pending.setdefault(item.linkname, []).append(item)
                continue
            yield item
            showing = True
            if path in self.pending and item.type != b"1":
                self._links_after(path, after)
            elif path in self.pending:
                # A link to a link: those waiting on it wait on its target.
                self.pending.setdefault(item.linkname, []).extend(self.pending.pop(path))
        yield from after
        for path in given:
            self.seen.add(path)
        self.gone |= gone
        self.opaque |= opaque

    def _links_after(self, path: str, out: list[Entry]) -> None:
        """The links waiting on ``path`` (and those waiting on them), into ``out``."""
        for link in self.pending.pop(path, []):
            out.append(link)
            if link.name in self.pending:
                self._links_after(link.name, out)

    def _stand_in(self, what: str, item: Entry, path: str, out: list[Entry]) -> Entry | None:
        """A hidden target that links wait on: the first link takes its place (given
        now, with the target's data); the others link to it (into ``out``)."""
        links = self.pending.pop(path)
        if item.type == b"1":  # the target is itself a link: wait on its target
            self.pending.setdefault(item.linkname, []).extend(links)
            return None
        if item.type == b"5":
            raise UnsafeEntry(
                f"{what}: member {links[0].name!r}: a hard link to {path!r}, a directory"
            )
        first, rest = links[0], links[1:]
        self.stood_in[path] = first.name
        out.extend(link._replace(linkname=first.name) for link in rest)
        for link in links:
            if link.name in self.pending:
                self._links_after(link.name, out)
        return item._replace(name=first.name)

    def refetched(self, what: str, members: Iterator[Entry | memoryview]) -> Iterator[FlatEntry]:
        """The layer just read, again: the hidden members its links need, each given
        under its first link's name (the file the links share in a real unpack), the
        other links to it."""
        wanted, self.refetch = self.refetch, {}
        showing = False
        after: list[Entry] = []
        for item in members:
            if not isinstance(item, Entry):
                if showing:
                    yield item
                continue
            showing = False
            if after:
                yield from after
                after = []
            if not wanted:
                break
            path = "/".join(clean_name(item.name) or [])
            links = wanted.pop(path, None)
            if links is None:
                continue
            if item.type == b"1":  # itself a link: those wait on its target
                target = "/".join(clean_name(item.linkname) or [])
                self.pending.setdefault(target, []).extend(links)
                continue
            first, rest = links[0], links[1:]
            stand_in = item._replace(name=first.name)
            self._given_in_layer(stand_in)
            yield stand_in
            showing = True
            for link in rest:
                link = link._replace(linkname=first.name)
                self._given_in_layer(link)
                after.append(link)
            for link in links:
                if link.name in self.pending:
                    self._links_after(link.name, after)
        yield from after
        for target, links in wanted.items():
            raise UnsafeEntry(
                f"{what}: member {links[0].name!r}: a hard link to {target!r}, which does not exist"
            )

    def finish(self) -> None:
        for target, links in self.pending.items():
            raise UnsafeEntry(
                f"member {links[0].name!r}: a hard link to {target!r}, which does not exist"
            )


def flatten(
    store: Store,
    layers: Sequence[Layer],
    progress: Progress | None = None,
    status: str = "Reading",
) -> Iterator[FlatEntry]:
    """The flattened file system of ``layers`` (bottom first, as an image lists them),
    as the module says, the layers read ahead on another thread. Consume every item
    before asking for the next: a piece of data is only valid until then."""
    top_first = list(reversed(layers))
    flattener = _Flattener()
    pieces = parallel.ahead(read_layers(store, top_first, progress or SILENT, status))
    for layer, layer_tar in zip(top_first, layer_pieces(pieces), strict=False):
        what = f"layer {layer.diff_id}"
        yield from flattener.layer(what, layer_members(what, layer_tar))
        if flattener.refetch:
            with store.open_layer(layer) as tar:
                yield from flattener.refetched(what, layer_members(what, tar.chunks()))
    flattener.finish()
    yield from flattener.repeats()
