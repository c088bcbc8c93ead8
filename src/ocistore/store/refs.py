"""The reference store: tags and digests → image IDs, in ``repositories.json``.

The semantics are those of moby's ``reference/store.go`` and the file is shaped like the
one Docker keeps under ``/var/lib/docker/image/<driver>/repositories.json``::

    {"Repositories": {"busybox": {"busybox:latest": "sha256:…",
                                  "busybox@sha256:…": "sha256:…"}}}

Repository keys are familiar names and reference keys familiar strings, as Docker writes
them (compact JSON, keys sorted, like Go's ``encoding/json``). In memory every reference
is kept normalized (``docker.io/library/busybox:latest``), with a tag or a digest, never
both: a reference with both is stored (and looked up) by its digest alone.

Rules (moby's):

* ``add_tag`` refuses a reference with a digest; a name alone gets the ``latest`` tag.
* ``add_digest`` needs a digest and refuses a tag next to it.
* No repository may be called ``sha256`` (or ``sha512``): ``sha256:<hex>`` would be
  ambiguous between a tag and an image ID. (These rules are the reference module's:
  :func:`~ocistore.spec.reference.check_tag`,
  :func:`~ocistore.spec.reference.check_digest_reference`.)
* Adding a mapping that already exists is a no-op. Moving an existing tag to another
  image needs ``force``; an existing digest reference is never moved, forced or not.
* ``delete`` returns whether the reference existed (moby returns ``false`` together with
  ``ErrDoesNotExist``); it never raises :class:`NotFound`. ``get`` raises it.
* Lists are sorted by familiar string, as moby sorts them.

Concurrency: many processes share one file. Every mutation holds the store's exclusive
lock, re-reads the file from disk under it, applies its change and rewrites the whole
file with :func:`~ocistore.store.fsutil.atomic_write`, so no other process's write is lost and
readers see the old file or the new one. Reads take no lock: they parse the file and
cache the result keyed by its ``(st_ino, st_mtime_ns, st_size)``. To make that key
trustworthy, the store keeps the file it cached open, so its inode number cannot be
reused by a later version of the file while the cache refers to it (:meth:`close`
releases it). A missing file means no references; a damaged one raises
:class:`CorruptStore` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from ..errors import Conflict, CorruptStore, InvalidInput, NotFound, StorageError
from ..spec.digest import Digest, ImageID
from ..spec.reference import (
    FAMILIAR_CHARS,
    Reference,
    check_digest_reference,
    check_tag,
    normalize,
    parse,
    parse_trusted,
    sort_key,
)
from .fsutil import FileLock, atomic_write, open_own, stat_key

_T = TypeVar("_T")
_StatKey = tuple[int, int, int]


class _Snapshot:
    """One version of the file: its bytes, parsed into references when first needed.

    Listing images only needs each image's references as text, which the file holds
    already: :meth:`familiar_by_id` gives those without building a reference per tag.
    """

    def __init__(
        self,
        key: _StatKey | None,
        refs: Mapping[Reference, ImageID] | None = None,
        raw: bytes = b"",
        path: Path | None = None,
    ) -> None:
        self.key = key
        self._refs = refs
        self._raw = raw
        self._path = path
        self._by_id: dict[ImageID, tuple[Reference, ...]] | None = None

    @property
    def refs(self) -> Mapping[Reference, ImageID]:
        if self._refs is None:
            assert self._path is not None
            self._refs = decode(self._raw, self._path)
        return self._refs

    @property
    def by_id(self) -> Mapping[ImageID, tuple[Reference, ...]]:
        if self._by_id is None:
            by_id: dict[ImageID, list[Reference]] = {}
            for ref, image_id in self.refs.items():
                by_id.setdefault(image_id, []).append(ref)
            self._by_id = {
                k: tuple(sorted(v, key=sort_key) if len(v) > 1 else v) for k, v in by_id.items()
            }
        return self._by_id

    def familiar_by_id(self) -> dict[ImageID, list[str]]:
        """Each image's references in their familiar form, sorted, read off the file as
        the store wrote it; anything unusual goes through the full parse instead."""
        if self._refs is not None or self._path is None:
            return {i: [r.familiar() for r in refs] for i, refs in self.by_id.items()}
        try:
            repos = json.loads(self._raw)["Repositories"] or {}
            # Keyed by the ID as a plain string: equal to, and hashed as, the ImageID.
            out: dict[str, list[str]] = {}
            get = out.get
            keys: list[str] = []
            for entries in repos.values():
                for key, value in (entries or {}).items():
                    if type(value) is not str or len(value) != 71:
                        raise ValueError(key)
                    names = get(value)
                    if names is None:
                        out[value] = [key]
                    else:
                        names.append(key)
                keys.extend(entries or ())
            if not FAMILIAR_CHARS.issuperset("".join(keys)) or not all(
                v.startswith("sha256:") for v in out
            ):
                raise ValueError("unusual reference")
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            return {i: [r.familiar() for r in refs] for i, refs in self.by_id.items()}
        for names in out.values():
            if len(names) > 1:
                names.sort()
        return cast("dict[ImageID, list[str]]", out)


_EMPTY: Final = _Snapshot(None, {})


def _close_fd(box: list[int]) -> None:
    while box:
        os.close(box.pop())


def lookup_key(ref: Reference) -> Reference:
    """The key a reference is stored under: normalized, digest over tag, ``latest`` default."""
    return normalize(ref).digest_only().tagged_or_default()


def encode(refs: Mapping[Reference, ImageID]) -> bytes:
    """Serialize references the way Docker writes ``repositories.json``."""
    repos: dict[str, dict[str, str]] = {}
    for ref, image_id in refs.items():
        repos.setdefault(ref.familiar_name, {})[ref.familiar()] = str(image_id)
    return json.dumps({"Repositories": repos}, sort_keys=True, separators=(",", ":")).encode()


_HEX = frozenset("0123456789abcdef")


def decode(data: bytes, path: Path) -> dict[Reference, ImageID]:
    """Parse ``repositories.json``; :class:`CorruptStore` naming ``path`` when it is damaged."""
    try:
        doc: Any = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CorruptStore(f"{path}: reference store is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "Repositories" not in doc:
        raise CorruptStore(f'{path}: reference store has no "Repositories" object')
    repos = doc["Repositories"]
    if repos is None:
        return {}
    if not isinstance(repos, dict):
        raise CorruptStore(f'{path}: reference store: "Repositories" is not an object')
    refs: dict[Reference, ImageID] = {}
    trusted = Digest.trusted
    hexdigits = _HEX
    for repo_name, entries in repos.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise CorruptStore(f"{path}: repository {repo_name!r} is not an object")
        for key, value in entries.items():
            # The fast path: the simple shapes this store writes (checked, not re-parsed).
            ref = parse_trusted(key)
            if (
                ref is not None
                and (ref.tag is not None or ref.digest is not None)
                and type(value) is str
                and len(value) == 71
                and value.startswith("sha256:")
                and hexdigits.issuperset(value[7:])
                and ref not in refs
            ):
                refs[ref] = trusted(value)  # type: ignore[assignment]
                continue
            _decode_slowly(refs, path, repo_name, key, value)
    return refs


def _decode_slowly(
    refs: dict[Reference, ImageID], path: Path, repo_name: str, key: str, value: object
) -> None:
    """One entry through the full grammar, with an error naming what is wrong."""
    where = f"{path}: repository {repo_name!r}: reference {key!r}"
    if not isinstance(value, str):
        raise CorruptStore(f"{where}: image ID is not a string")
    try:
        ref = parse(key).digest_only()
        image_id = ImageID(Digest(value))
    except InvalidInput as e:
        raise CorruptStore(f"{where}: {e}") from None
    if ref.is_name_only:
        raise CorruptStore(f"{where}: reference has neither tag nor digest")
    previous = refs.get(ref)
    if previous is not None and previous != image_id:
        raise CorruptStore(f"{where}: listed twice, for {previous} and {image_id}")
    refs[ref] = image_id


def _tag_key(ref: Reference) -> Reference:
    """The key a tag is stored under (``latest`` added), refused as :func:`check_tag` does."""
    check_tag(ref)
    return normalize(ref).tagged_or_default()


def _digest_key(ref: Reference) -> Reference:
    """The key a digest reference is stored under, refused as
    :func:`check_digest_reference` does."""
    check_digest_reference(ref)
    return normalize(ref)


def _point(
    refs: dict[Reference, ImageID], key: Reference, image_id: ImageID, force: bool
) -> ImageID | None:
    """Point ``key`` at ``image_id`` in ``refs``; the image a forced tag pointed at before.

    A digest reference never moves; a tag moves only with ``force``.
    """
    old = refs.get(key)
    if old == image_id:
        return None
    if old is not None:
        if key.digest is not None:
            raise Conflict(
                f"Conflict: cannot overwrite digest reference {key.familiar()}: "
                f"it already names image {old}"
            )
        if not force:
            raise Conflict(
                f"Conflict: tag {key.familiar()} is already set to image {old}, "
                "use the force option to replace it"
            )
    refs[key] = image_id
    return old


class ReferenceStore:
    """Tags and digests pointing at image IDs, shared safely by many processes.

    ``path`` is the ``repositories.json`` file, ``tmpdir`` the store's temporary directory
    (same file system, must exist), ``lock`` the store's lock, taken exclusively by every
    mutation.
    """

    def __init__(self, path: Path, tmpdir: Path, lock: FileLock) -> None:
        self._path = Path(path)
        self._tmpdir = Path(tmpdir)
        self._lock = lock
        self._snapshot: _Snapshot = _EMPTY
        # The open file behind the cached snapshot (see the module notes).
        self._pin: list[int] = []
        self._finalizer = weakref.finalize(self, _close_fd, self._pin)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Drop the cache and the file it keeps open. The store stays usable."""
        self._snapshot = _EMPTY
        _close_fd(self._pin)

    def __enter__(self) -> ReferenceStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading the file ----------------------------------------------------------------

    def _current(self) -> _Snapshot:
        """The file's content, from the cache when the file has not changed."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return _EMPTY
        snapshot = self._snapshot
        if snapshot.key is not None and snapshot.key == stat_key(st):
            return snapshot
        return self._load()

    def _load(self) -> _Snapshot:
        """Read and parse the file from disk, and cache it."""
        try:
            fd = open_own(self._path, "reference store ")
        except FileNotFoundError:
            self.close()
            return _EMPTY
        except OSError as e:  # (not damage: a repair must not set the file aside for it)
            raise StorageError("reading the reference store", self._path, e) from None
        try:
            key = stat_key(os.fstat(fd))
            chunks: list[bytes] = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            snapshot = _Snapshot(key, raw=b"".join(chunks), path=self._path)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.EISDIR:  # a directory in its place: damage
                raise CorruptStore(
                    f"{self._path}: cannot read the reference store: {e.strerror}"
                ) from None
            raise StorageError("reading the reference store", self._path, e) from None
        except BaseException:
            os.close(fd)
            raise
        self._remember(snapshot, fd)
        return snapshot

    def _remember(self, snapshot: _Snapshot, fd: int) -> None:
        _close_fd(self._pin)
        self._pin.append(fd)
        self._snapshot = snapshot

    def _save(self, refs: dict[Reference, ImageID]) -> None:
        """Rewrite the whole file; the caller holds the exclusive lock."""
        atomic_write(self._path, encode(refs), self._tmpdir)
        fd = open_own(self._path, "reference store ")
        try:
            key = stat_key(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        self._remember(_Snapshot(key, refs), fd)

    def _mutate(self, change: Callable[[dict[Reference, ImageID]], _T]) -> _T:
        """Apply ``change`` to the references as they are on disk now, under the lock."""
        with self._lock.exclusive():
            snapshot = self._load()
            refs = dict(snapshot.refs)
            result = change(refs)
            if refs != snapshot.refs:
                self._save(refs)
            return result

    def repair(
        self, exists: Callable[[ImageID], bool], relink: Mapping[Digest, ImageID]
    ) -> list[str]:
        """``fsck --repair``: a damaged file is set aside (``repositories.json.damaged``)
        and the references start empty; a digest reference to a missing image moves to
        the image that keeps that manifest (``relink``), any other reference to a
        missing image goes. Returns what was done, one line each."""
        done: list[str] = []
        with self._lock.exclusive():
            try:
                self._load().refs  # noqa: B018 (parsed here, to see whether it is damaged)
            except CorruptStore as e:  # (a file that cannot be read is left as it is)
                aside = self._path.with_name(self._path.name + ".damaged")
                n = 1
                while aside.exists() or aside.is_symlink():  # an earlier one is kept
                    n += 1
                    aside = self._path.with_name(f"{self._path.name}.damaged.{n}")
                os.replace(self._path, aside)
                self.close()
                done.append(f"set aside {e}: now {aside}")

            def change(refs: dict[Reference, ImageID]) -> None:
                for ref, image_id in list(refs.items()):
                    if exists(image_id):
                        continue
                    target = relink.get(ref.digest) if ref.digest is not None else None
                    if target is not None:
                        refs[ref] = target
                        done.append(f"re-linked {ref.familiar()} to image {target}")
                    else:
                        del refs[ref]
                        done.append(f"removed {ref.familiar()}: its image {image_id} is missing")

            self._mutate(change)
        return done

    # -- mutations -----------------------------------------------------------------------

    def add_tag(self, ref: Reference, image_id: Digest, force: bool = False) -> ImageID | None:
        """Point a tag at an image; a name alone gets ``latest``.

        Returns the image the tag pointed at before when ``force`` moved it, else ``None``.
        """
        key, new_id = _tag_key(ref), ImageID(Digest(image_id))
        return self._mutate(lambda refs: _point(refs, key, new_id, force))

    def add_digest(self, ref: Reference, image_id: Digest, force: bool = False) -> None:
        """Point a digest reference (``name@sha256:…``) at an image. Never moved once set."""
        key, new_id = _digest_key(ref), ImageID(Digest(image_id))
        self._mutate(lambda refs: _point(refs, key, new_id, force))

    def add_all(
        self,
        items: Sequence[tuple[Reference, Digest]],
        force_tags: bool = False,
        check_only: bool = False,
    ) -> None:
        """Point each reference (tags and digest references) at its image, in one write:
        all of them or, when one is refused, none. Tags move only with ``force_tags``;
        digest references never move. Later items win over earlier ones for the same tag.

        With ``check_only``, raise what adding them would raise and write nothing: a
        caller holding the store's lock can refuse before doing work it would have to undo.
        """
        keyed = [
            (_digest_key(ref) if ref.digest is not None else _tag_key(ref), ImageID(Digest(i)))
            for ref, i in items
        ]

        def change(refs: dict[Reference, ImageID]) -> None:
            for key, new_id in keyed:
                _point(refs, key, new_id, force_tags)

        if check_only:
            with self._lock.exclusive():
                change(dict(self._load().refs))
            return
        self._mutate(change)

    def delete(self, ref: Reference) -> bool:
        """Remove a reference (a name alone means ``:latest``); whether it existed."""
        key = lookup_key(ref)

        def change(refs: dict[Reference, ImageID]) -> bool:
            return refs.pop(key, None) is not None

        return self._mutate(change)

    def delete_all(self, refs: Sequence[Reference]) -> list[Reference]:
        """Remove references in one write; the ones that existed, sorted."""
        keys = [lookup_key(ref) for ref in refs]

        def change(current: dict[Reference, ImageID]) -> list[Reference]:
            gone = [k for k in keys if current.pop(k, None) is not None]
            return sorted(gone, key=sort_key)

        return self._mutate(change)

    def delete_image(self, image_id: Digest) -> list[Reference]:
        """Remove every reference to an image; the ones removed, sorted."""

        def change(refs: dict[Reference, ImageID]) -> list[Reference]:
            gone = [r for r, i in refs.items() if i == image_id]
            for r in gone:
                del refs[r]
            return sorted(gone, key=sort_key)

        return self._mutate(change)

    # -- queries -------------------------------------------------------------------------

    def get(self, ref: Reference) -> ImageID:
        """The image a reference points at (digest wins over tag; a name means ``latest``)."""
        key = lookup_key(ref)
        image_id = self._current().refs.get(key)
        if image_id is None:
            raise NotFound(f"reference does not exist: {key.familiar()}")
        return image_id

    def references(self, image_id: Digest) -> list[Reference]:
        """Every reference to an image, sorted by familiar string."""
        return list(self._current().by_id.get(ImageID(image_id), ()))

    def references_by_name(self, name: Reference) -> list[tuple[Reference, ImageID]]:
        """Every tag and digest of one repository (tag or digest of ``name`` ignored)."""
        repo = normalize(name).name
        found = [(r, i) for r, i in self._current().refs.items() if r.name == repo]
        return sorted(found, key=lambda pair: sort_key(pair[0]))

    def all(self) -> dict[Reference, ImageID]:
        """Every reference, in familiar-string order."""
        refs = self._current().refs
        return {r: refs[r] for r in sorted(refs, key=sort_key)}

    def by_image(self) -> dict[ImageID, list[Reference]]:
        """Every image that has references, with its references sorted."""
        return {i: list(refs) for i, refs in self._current().by_id.items()}

    def familiar_by_image(self) -> dict[ImageID, list[str]]:
        """Every image that has references, with their familiar strings, sorted (cheaper
        than :meth:`by_image`: no reference objects are built)."""
        return self._current().familiar_by_id()

    def image_ids(self) -> set[ImageID]:
        """Every image that some reference points at."""
        return set(self._current().by_id)
