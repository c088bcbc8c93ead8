"""A tar archive's headers, followed as the bytes go by, with limits.

:class:`TarScanner` is fed an archive's bytes in order (all of them, or the headers and
a count of the data bytes passed over) and reports each member: its name (pax ``path``
and GNU long names applied), type, where its data starts and how long it is. It checks
every header's checksum and fields as it comes, so junk is refused at its first header;
it stops at the end-of-archive marker (a zero block: a stream of zeros is refused at
byte 0), and it counts members, name bytes and extension headers against the limits of
:mod:`ocistore.spec.limits`. Nothing is kept but the member being read: memory does not
grow with the archive. Members are reported as Python's ``tarfile`` and Go's
``archive/tar`` read them: header-only types (links, directories, devices, fifos) have
no data whatever their size field says; unknown types are passed over with their data.

The scanner also counts what Docker calls a layer's size (:attr:`TarScanner.content_size`):
the sum of the ``size`` of every header Go's ``archive/tar`` ``Next()`` returns, as moby's
``pkg/archive`` ``UnpackLayer`` adds it up (``size += hdr.Size``, before it looks at
what the member is). Extended headers and GNU long names are not members and do not
count; a pax ``size`` record replaces the header's; a link, directory or device counts
its header's size field (normally 0) though it has no data; whiteouts count like any
member; a sparse file counts its logical size. With ``layer=True`` a tar is read as a
layer, as Docker applies it: no limit on the number of members or on the length of names
(Go's reader has none; its extended headers and long names are bounded at 1 MiB, as
here), sparse files read (their data passed over), an empty tar (only zero blocks)
accepted, the end of the stream at a header taken for the end of the archive, and only
the first header's checksum checked (the DiffID checks the bytes; summing every header
was more than half of the walk).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from ..errors import InvalidInput
from .limits import MAX_MEMBERS, MAX_NAME, MAX_PAX_HEADER

__all__ = ["BLOCK", "Entry", "Meta", "TarScanner"]

BLOCK = 512
_ZERO = bytes(BLOCK)
#: Types whose size field does not count data (tarfile and Go's archive/tar agree).
_HEADER_ONLY = frozenset(b"123456")
_POSIX_MAGIC = b"ustar\x00"
_PAX, _PAX_GLOBAL, _GNU_NAME, _GNU_LINK, _GNU_SPARSE = b"x", b"g", b"L", b"K", b"S"
_EXTENSIONS = frozenset((_PAX, _PAX_GLOBAL, _GNU_NAME, _GNU_LINK))
_OCTAL = re.compile(rb"[0-7]+")
#: What the numeric fields of nearly every header hold: octal digits, spaces, NULs.
_OCTAL_FIELD = b"01234567 \x00"
_DECIMAL = re.compile(rb"[0-9]+")
#: The pax keys the scanner applies; the others (times, owners, comments) are dropped.
_PAX_KEYS = frozenset((b"path", b"linkpath", b"size"))
#: The pax records a detailed scan (a layer applied to a directory) applies as well.
_PAX_META_KEYS = frozenset((b"mtime", b"uid", b"gid"))
_XATTR_PREFIX = b"SCHILY.xattr."
#: The pax records of GNU sparse files a layer's scan reads (Go's ``readGNUSparsePAXHeaders``).
_SPARSE_KEYS = frozenset(
    b"GNU.sparse." + k for k in (b"major", b"minor", b"map", b"size", b"realsize", b"name")
)


class Meta(NamedTuple):
    """What a detailed scan adds to a member: what applying it to a directory needs."""

    #: The permission bits, setuid/setgid/sticky included (the file type bits dropped).
    mode: int
    uid: int
    gid: int
    #: The modification time in nanoseconds (a pax ``mtime`` keeps its fraction).
    mtime_ns: int
    devmajor: int
    devminor: int
    #: Extended attributes (pax ``SCHILY.xattr.NAME`` records), name to raw value.
    xattrs: dict[str, bytes] | None


class Entry(NamedTuple):
    name: str
    #: The header's type flag: ``b"0"`` (or ``b"\0"``, ``b"7"``) a file, ``b"5"`` a
    #: directory, ``b"2"`` a symlink, ``b"1"`` a hard link; others are reported too.
    type: bytes
    #: Where the member's data starts in the archive, and how long it is.
    offset: int
    size: int
    linkname: str
    #: The member's metadata, read only by a scan with ``details``.
    meta: Meta | None = None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _field(block: bytes, start: int, end: int) -> bytes:
    raw = block[start:end]
    nul = raw.find(b"\x00")
    return raw if nul < 0 else raw[:nul]


def _block_count(size: int) -> int:
    return -size % BLOCK + size


class TarScanner:
    """Follows one tar archive; ``on_entry`` is called for each member, in order."""

    def __init__(
        self,
        archive: str,
        on_entry: Callable[[Entry], None] | None = None,
        *,
        layer: bool = False,
        details: bool = False,
        on_data: Callable[[memoryview], None] | None = None,
    ) -> None:
        self.archive = archive
        self._on_entry = on_entry
        #: Read as a layer (see the module's text): no member or name limits, sparse
        #: files read.
        self.layer = layer
        #: Read each member's metadata (:class:`Meta`) and pax times, owners, xattrs.
        self.details = details
        #: Given each member's data (not its padding) as it goes by, in pieces.
        self._on_data = on_data
        self._data_left = 0
        self._xattrs: dict[str, bytes] | None = None
        #: Docker's size of the members so far (see the module's text).
        self.content_size = 0
        #: Bytes of the archive seen so far (the end-of-archive block included).
        self.pos = 0
        #: Whether the end-of-archive marker was reached; nothing after it is read.
        self.ended = False
        #: Data bytes the caller may pass over without feeding them (or feed them).
        self.skip = 0
        self._buf = bytearray()
        self._want = BLOCK
        self._payload: bytes | None = None  # the extension type whose payload is read
        self._pad = 0
        #: The pax records for the next member, only the keys it uses (:data:`_PAX_KEYS`),
        #: the bytes of its extended headers so far (all of them count against
        #: :data:`MAX_PAX_HEADER`: headers may be chained), and whether one was sparse.
        self._pax: dict[str, str] = {}
        self._pax_bytes = 0
        self._pax_sparse = False
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._headers = 0
        self._current = ""  # the member whose data is being passed, for messages
        #: An old GNU sparse member whose map continues in extension blocks: its name,
        #: data size and logical size, reported once the map ends.
        self._sparse_member: tuple[str, int, int] | None = None
        self._header_block = _ZERO  # a counting scan's last member header, for messages

    # -- feeding --------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Take the next bytes; how many belong to the archive (up to and including the
        end-of-archive block: fewer than given once it is reached)."""
        view = memoryview(data)
        n = len(view)
        i = 0
        while i < n and not self.ended:
            if self.skip:
                k = min(self.skip, n - i)
                if self._data_left:
                    d = min(k, self._data_left)
                    self._data_left -= d
                    assert self._on_data is not None
                    self._on_data(view[i : i + d])
                self.skip -= k
                i += k
                self.pos += k
                continue
            want = self._want
            if not self._buf and n - i >= want:  # a whole block (or payload) at hand
                block = bytes(view[i : i + want])
                i += want
                self.pos += want
                if self._payload is None:
                    self._header(block)
                else:
                    self._extension(self._payload, block)
                continue
            k = min(want - len(self._buf), n - i)
            self._buf += view[i : i + k]
            i += k
            self.pos += k
            if len(self._buf) == self._want:
                block = bytes(self._buf)
                self._buf.clear()
                if self._payload is None:
                    self._header(block)
                else:
                    self._extension(self._payload, block)
        return i

    def passed(self, k: int) -> None:
        """``k`` bytes of data (at most :attr:`skip`) went by without being fed."""
        assert 0 <= k <= self.skip and not self._on_data
        self.skip -= k
        self.pos += k

    def finish(self) -> None:
        """The archive's bytes ended here: refuse it if that is before its end marker."""
        if self.ended:
            return
        pending = self._pax_bytes or self._long_name is not None or self._long_link is not None
        if (
            self.layer
            and self._headers
            and not (self.skip or self._buf or self._payload is not None or pending)
        ):
            self.ended = True  # Go's reader takes the end of the stream at a header as the end
            return
        if self._headers == 0 and self._buf:
            raise InvalidInput(f"{self.archive}: not a tar archive (shorter than a header)")
        if self.skip or self._buf or self._payload is not None:
            current = self._current or _text(_field(self._header_block, 0, 100))
            where = f" in {current}" if self.skip and current else ""
            raise InvalidInput(f"{self.archive}: archive is truncated{where}")
        if self._headers == 0:
            raise InvalidInput(f"{self.archive}: not a tar archive (no header)")
        raise InvalidInput(
            f"{self.archive}: archive is truncated or damaged at byte {self.pos} "
            "(no end-of-archive marker)"
        )

    # -- headers --------------------------------------------------------------------

    def _damaged(self, why: str) -> InvalidInput:
        at = self.pos - BLOCK
        if self._headers <= 1 and at == 0:
            return InvalidInput(f"{self.archive}: not a tar archive ({why})")
        return InvalidInput(f"{self.archive}: archive is damaged at byte {at}: {why}")

    def _sparse(self) -> InvalidInput:
        return InvalidInput(
            f"{self.archive}: the member at byte {self.pos - BLOCK} is a GNU sparse file, "
            "which image archives never hold (not supported)"
        )

    def _number(self, block: bytes, start: int, end: int, field: str) -> int:
        """A numeric field: octal digits (NUL- or space-terminated, space-padded), or
        GNU base-256. Never negative: ``int(text, 8)`` alone would take ``-1000``,
        ``+1`` or ``1_0``, and a negative size would move the scan backwards."""
        raw = block[start:end]
        if raw[0] & 0x80:  # GNU base-256, two's complement: 0x40 of the first byte is the sign
            if raw[0] & 0x40:
                raise self._damaged(f"negative {field} field")
            return int.from_bytes(bytes([raw[0] & 0x3F]) + raw[1:], "big")
        text = raw.split(b"\x00", 1)[0].strip(b" ")
        if not text:
            return 0
        if text.isdigit():  # (ASCII digits only: no sign, space or underscore for int())
            try:
                return int(text, 8)
            except ValueError:
                pass
        if not _OCTAL.fullmatch(text):
            raise self._damaged(f"{field} field {text!r} is not a number")
        return int(text, 8)

    def _checksum(self, block: bytes) -> None:
        stored = self._number(block, 148, 156, "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 8 * 32
        if stored != unsigned:
            high = sum(1 for b in block[:148] + block[156:] if b >= 0x80)
            if stored != unsigned - 256 * high:  # some old tars summed signed bytes
                raise self._damaged("bad header checksum")

    def _header(self, block: bytes) -> None:
        if block == _ZERO:
            if self._headers == 0 and not self.layer:  # (a layer may be empty)
                raise InvalidInput(
                    f"{self.archive}: not a tar archive (it starts with a zero block)"
                )
            if self._pax_bytes or self._long_name is not None or self._long_link is not None:
                raise self._damaged("an extended header is followed by no member")
            self.ended = True
            return
        self._headers += 1
        if self._headers > MAX_MEMBERS and not self.layer:
            raise InvalidInput(
                f"{self.archive}: more than {MAX_MEMBERS} members (headers), "
                f"over the limit of {MAX_MEMBERS}"
            )
        # A layer's tar is checked by its DiffID before anything it holds is used: past
        # its first header (which tells a tar from junk), its checksums, more than half
        # of the work per header, are not summed (a layer Docker would refuse for one is
        # counted, not refused).
        if not self.layer or self._headers == 1:
            self._checksum(block)
        kind = block[156:157] or b"\x00"
        size = self._number(block, 124, 136, "size")
        if kind in _EXTENSIONS:
            long_name = kind in (_GNU_NAME, _GNU_LINK)
            # A layer's long names are bounded as Go bounds them: at 1 MiB, MAX_PAX_HEADER.
            limit = MAX_NAME if long_name and not self.layer else MAX_PAX_HEADER
            if size > limit + (1 if long_name and not self.layer else 0):
                what = "GNU long name" if kind in (_GNU_NAME, _GNU_LINK) else "pax header"
                raise self._damaged(f"{what} of {size} bytes, over the limit of {limit} bytes")
            if kind == _PAX:  # chained headers for one member: their total is bounded too
                if self._pax_bytes + size > MAX_PAX_HEADER:
                    raise self._damaged(
                        f"pax headers of {self._pax_bytes + size} bytes for one member, "
                        f"over the limit of {MAX_PAX_HEADER} bytes"
                    )
                self._pax_bytes += size
            self._payload = kind
            self._pad = -size % BLOCK
            if size == 0:
                self._extension(kind, b"")
            else:
                self._want = size
            return
        if kind == _GNU_SPARSE and not self.layer:
            raise self._sparse()
        if self.layer and self._on_entry is None:
            # Only counted: the names are made only for a message (see finish()).
            name, link = self._long_name or "", self._long_link or ""
            self._header_block = block
        else:
            name_raw = _field(block, 0, 100)
            if block[257:263] == _POSIX_MAGIC:
                prefix = _field(block, 345, 500)
                if prefix:
                    name_raw = prefix + b"/" + name_raw
            name = self._long_name if self._long_name is not None else _text(name_raw)
            link = (
                self._long_link if self._long_link is not None else _text(_field(block, 157, 257))
            )
        declared = size
        meta = self._meta(block) if self.details else None
        if self._pax_bytes:
            if meta is not None:
                meta = self._pax_meta(meta)
            name, link, size, declared = self._apply_pax(name, link, size)
        self._long_name = self._long_link = None
        if not self.layer:
            for value in (name, link):  # a character is at most 4 bytes
                if (
                    len(value) > MAX_NAME // 4
                    and len(value.encode("utf-8", "surrogateescape")) > MAX_NAME
                ):
                    raise self._damaged(
                        f"a name of more than {MAX_NAME} bytes, over the limit of {MAX_NAME}"
                    )
        if kind[0] in _HEADER_ONLY:
            size = 0  # no data, whatever the field says; Docker still counts the field
        elif kind == _GNU_SPARSE:  # old GNU sparse (a layer's): the logical size counts
            declared = self._number(block, 483, 495, "realsize")
            if block[482]:  # the map goes on in extension blocks, before the data
                self._sparse_member = (name, size, declared)
                self._payload, self._pad = _GNU_SPARSE, 0
                return
        self._member(name, kind, size, declared, link, meta)

    def _member(
        self,
        name: str,
        kind: bytes,
        size: int,
        declared: int,
        link: str = "",
        meta: Meta | None = None,
    ) -> None:
        """A member as Go's ``Next()`` returns it: counted, reported, its data skipped."""
        self.content_size += declared
        self._current = name
        if self._on_entry is not None:
            self._on_entry(Entry(name, kind, self.pos, size, link, meta))
        self.skip = _block_count(size)
        if self._on_data is not None:
            self._data_left = size

    def _meta(self, block: bytes) -> Meta:
        # The common header without _number's checks: fields of octal digits padded
        # with spaces and NULs (anything else, or a digit after a NUL, goes through it).
        if not block[100:148].translate(None, _OCTAL_FIELD) and not block[329] | block[337]:
            try:
                return Meta(
                    int(block[100:108].replace(b"\x00", b" "), 8) & 0o7777,
                    int(block[108:116].replace(b"\x00", b" "), 8),
                    int(block[116:124].replace(b"\x00", b" "), 8),
                    int(block[136:148].replace(b"\x00", b" "), 8) * 1_000_000_000,
                    0,
                    0,
                    None,
                )
            except ValueError:
                pass
        number = self._number
        return Meta(
            number(block, 100, 108, "mode") & 0o7777,
            number(block, 108, 116, "uid"),
            number(block, 116, 124, "gid"),
            number(block, 136, 148, "mtime") * 1_000_000_000,
            number(block, 329, 337, "devmajor") if block[329] else 0,
            number(block, 337, 345, "devminor") if block[337] else 0,
            None,
        )

    def _pax_meta(self, meta: Meta) -> Meta:
        """``meta`` with the pax records that override the header's applied."""
        pax = self._pax
        xattrs, self._xattrs = self._xattrs, None
        uid = self._pax_number(pax, "uid") if "uid" in pax else meta.uid
        gid = self._pax_number(pax, "gid") if "gid" in pax else meta.gid
        mtime_ns = meta.mtime_ns
        if "mtime" in pax:
            text = pax["mtime"]
            whole, dot, fraction = text.partition(".")
            sign = -1 if whole.startswith("-") else 1
            digits = whole.lstrip("-")
            if (
                not digits.isdigit()
                or len(digits) > 19
                or (dot and not (fraction.isdigit() or not fraction))
            ):
                raise self._damaged(f"pax mtime {text[:40]!r} is not a time")
            nanos = int((fraction + "000000000")[:9]) if fraction else 0
            mtime_ns = sign * (int(digits) * 1_000_000_000 + nanos)
        return meta._replace(uid=uid, gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)

    def _pax_number(self, pax: dict[str, str], key: str) -> int:
        text = pax[key]
        if not _DECIMAL.fullmatch(text.encode("utf-8", "surrogateescape")):
            raise self._damaged(f"pax {key} {text[:40]!r} is not a number")
        if len(text) > 19:  # Go's reader takes an int64
            raise self._damaged(f"pax {key} {text[:40]!r} is out of range")
        return int(text)

    def _apply_pax(self, name: str, link: str, size: int) -> tuple[str, str, int, int]:
        """The member's name, link, data size and declared size (:meth:`_member`) once its
        pax records apply."""
        pax, self._pax = self._pax, {}
        sparse, self._pax_sparse, self._pax_bytes = self._pax_sparse, False, 0
        if "size" in pax:
            size = self._pax_number(pax, "size")
        declared = size
        if sparse:
            if not self.layer or self.details:  # (a detailed scan would write its map)
                raise self._sparse()
            # Go's readGNUSparsePAXHeaders: which versions it knows, and the logical size.
            major, minor = pax.get("GNU.sparse.major", ""), pax.get("GNU.sparse.minor", "")
            known = (major, minor) in (("0", "0"), ("0", "1"), ("1", "0"))
            if known or (not major and not minor and pax.get("GNU.sparse.map")):
                name = pax.get("GNU.sparse.name") or pax.get("path", name)
                for key in ("GNU.sparse.size", "GNU.sparse.realsize"):
                    if pax.get(key):
                        declared = self._pax_number(pax, key)
                        break
                return name, pax.get("linkpath", link), size, declared
        return pax.get("path", name), pax.get("linkpath", link), size, declared

    def _extension(self, kind: bytes, payload: bytes) -> None:
        if kind == _GNU_SPARSE:  # a block of an old GNU sparse map
            if payload[504]:
                return  # another block follows
            assert self._sparse_member is not None
            name, size, declared = self._sparse_member
            self._payload = self._sparse_member = None
            self._member(name, kind, size, declared)
            return
        self._payload = None
        self._want = BLOCK
        self.skip = self._pad
        if kind in (_GNU_NAME, _GNU_LINK):
            value = _text(payload.split(b"\x00", 1)[0])
            if kind == _GNU_NAME:
                self._long_name = value
            else:
                self._long_link = value
            return
        records = self._pax_records(payload)
        if kind == _PAX:  # a global header's records are not applied (as Go's reader)
            details = self.details
            for key, raw in records:
                if (
                    key in _PAX_KEYS
                    or (self.layer and key in _SPARSE_KEYS)
                    or (details and key in _PAX_META_KEYS)
                ):
                    self._pax[key.decode()] = _text(raw)
                elif details and key.startswith(_XATTR_PREFIX):
                    if self._xattrs is None:
                        self._xattrs = {}
                    self._xattrs[_text(key[len(_XATTR_PREFIX) :])] = raw
                if key.startswith(b"GNU.sparse."):
                    self._pax_sparse = True

    def _pax_records(self, payload: bytes) -> list[tuple[bytes, bytes]]:
        """The records of one extended header (at most :data:`MAX_PAX_HEADER`), checked."""
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        while pos < len(payload):
            space = payload.find(b" ", pos)
            digits = payload[pos:space] if space > pos else b""
            length = int(digits) if len(digits) < 8 and _DECIMAL.fullmatch(digits) else 0
            end = pos + length
            if length <= 0 or end > len(payload) or payload[end - 1 : end] != b"\n":
                raise self._damaged("a malformed pax extended header")
            key, eq, value = payload[space + 1 : end - 1].partition(b"=")
            if not eq:
                raise self._damaged("a malformed pax extended header")
            out.append((key, value))
            pos = end
        return out
