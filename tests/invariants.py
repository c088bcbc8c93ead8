"""An independent reader of a store's files: what must hold after any crash or failure.

It reads the files with nothing but :mod:`json`, :mod:`hashlib` and :mod:`os`, never
through ocistore's own store code, so that a bug in the store cannot hide itself from the
check. The formats are those of ``docs/design.md`` ("On-disk layout"):

* ``blobs/sha256/<hex>`` and ``imagedb/content/sha256/<hex>``: regular files, read-only
  (0444), hashing to their names;
* ``layerdb/sha256/<chain hex>/layer.json``: ``{chain_id, diff_id, parent, size,
  blob{digest, size, compression}}``, the directory holding nothing else; the chain ID
  follows from the parent's and the DiffID, and a gzip blob decompresses to the DiffID
  (zstd blobs are not decompressed: that needs a library);
* ``imagedb/metadata/sha256/<id>/{parent,manifest,blobs}``;
* ``repositories.json``: ``{"Repositories": {repo: {ref: image id}}}``;
* ``imagedb/index.json`` (a cache, but written whole) and ``format`` (the store format's
  number), when they are there.

:func:`problems` lists every violated invariant (empty: the store is sound);
:func:`tmp_is_empty` says whether ``tmp/`` holds nothing; :func:`state` summarizes the
references and images, to compare a store before and after an operation.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "image_ids",
    "missing_from",
    "problems",
    "references",
    "state",
    "tmp_entries",
    "tmp_is_empty",
]

_HEX = frozenset("0123456789abcdef")
_COMPRESSIONS = frozenset({"none", "gzip", "zstd"})
#: The metadata keys an image may have (``imagedb/metadata/sha256/<id>/<key>``).
_METADATA_KEYS = frozenset({"parent", "manifest", "blobs", "lastUpdated"})
#: Go's RFC 3339 with nanoseconds, in UTC, as the time of the last tag is written.
_RFC3339_NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in _HEX for c in name)


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and value.startswith("sha256:") and _is_hex(value[7:])


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []


def _symlinks(root: Path) -> list[str]:
    """Every symlink under ``root`` (none is ever allowed in a store)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                out.append(f"symlink in the store: {p.relative_to(root)} -> {os.readlink(p)}")
    return out


def _content_dir(root: Path, rel: str, what: str, out: list[str]) -> dict[str, int]:
    """Check a content-addressed directory; returns ``{digest: size}`` of the sound files."""
    d = root / rel
    found: dict[str, int] = {}
    if d.is_symlink():
        out.append(f"{rel}: is a symlink")
        return found
    for name in _listdir(d):
        p = d / name
        where = f"{rel}/{name}"
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            out.append(f"{where}: {what} is not a regular file")
            continue
        if not _is_hex(name):
            out.append(f"{where}: {what} name is not a sha256 hex digest")
            continue
        if stat.S_IMODE(st.st_mode) != 0o444:
            out.append(f"{where}: {what} mode is {stat.S_IMODE(st.st_mode):04o}, not 0444")
        actual = _sha256_file(p)
        if actual != name:
            out.append(
                f"{where}: {what} hashes to sha256:{actual} ({st.st_size} bytes), not its name"
            )
            continue
        found[f"sha256:{name}"] = st.st_size
    return found


def _gunzip_digest(path: Path) -> tuple[str, int] | str:
    """The digest and size of a gzip blob's content (or why it cannot be read)."""
    h = hashlib.sha256()
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except (OSError, EOFError) as e:
        return f"an unreadable gzip stream ({e})"
    return f"sha256:{h.hexdigest()}", size


def _read_json(path: Path, where: str, out: list[str]) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        out.append(f"{where}: cannot be read: {e.strerror}")
        return None
    try:
        return json.loads(data)
    except ValueError as e:
        out.append(f"{where}: not whole JSON ({len(data)} bytes): {e}")
        return None


def _chain(parent: str | None, diff_id: str) -> str:
    if not parent:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


def _layers(root: Path, blobs: dict[str, int], out: list[str]) -> set[str]:
    """Check every layer record; returns the chain IDs whose records are whole."""
    d = root / "layerdb" / "sha256"
    records: dict[str, dict[str, Any]] = {}
    for name in _listdir(d):
        where = f"layerdb/sha256/{name}"
        p = d / name
        if p.is_symlink() or not p.is_dir():
            out.append(f"{where}: a layer entry that is not a directory")
            continue
        if not _is_hex(name):
            out.append(f"{where}: layer directory name is not a sha256 hex digest")
            continue
        entries = _listdir(p)
        if "layer.json" not in entries:
            out.append(f"{where}: layer directory without layer.json (entries: {entries})")
            continue
        extra = [e for e in entries if e != "layer.json"]
        if extra:
            out.append(f"{where}: unexpected entries in a layer directory: {extra}")
        rec = _read_json(p / "layer.json", f"{where}/layer.json", out)
        if rec is None:
            continue
        if not isinstance(rec, dict):
            out.append(f"{where}/layer.json: not a JSON object")
            continue
        chain = f"sha256:{name}"
        diff_id = rec.get("diff_id")
        parent = rec.get("parent")
        size = rec.get("size")
        blob = rec.get("blob")
        bad = False
        if rec.get("chain_id") != chain:
            out.append(f"{where}/layer.json: chain_id {rec.get('chain_id')!r} is not {chain}")
            bad = True
        if not _is_digest(diff_id):
            out.append(f"{where}/layer.json: diff_id {diff_id!r} is not a digest")
            bad = True
        if parent not in ("", None) and not _is_digest(parent):
            out.append(f"{where}/layer.json: parent {parent!r} is not a digest or empty")
            bad = True
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            out.append(f"{where}/layer.json: size {size!r} is not a size")
            bad = True
        if (
            not isinstance(blob, dict)
            or not _is_digest(blob.get("digest"))
            or not isinstance(blob.get("size"), int)
            or blob.get("compression") not in _COMPRESSIONS
        ):
            out.append(f"{where}/layer.json: blob {blob!r} is not {{digest, size, compression}}")
            bad = True
        if bad:
            continue
        assert isinstance(diff_id, str) and isinstance(blob, dict)
        if _chain(parent or None, diff_id) != chain:
            out.append(
                f"{where}/layer.json: chain id is not sha256(parent + ' ' + diff_id) "
                f"(parent {parent!r}, diff_id {diff_id})"
            )
        if blob["compression"] == "none" and (blob["digest"] != diff_id or blob["size"] != size):
            out.append(f"{where}/layer.json: an uncompressed blob that is not the layer's tar")
        if blob["digest"] not in blobs:
            out.append(f"{where}/layer.json: blob {blob['digest']} is not stored")
        elif blobs[blob["digest"]] != blob["size"]:
            out.append(
                f"{where}/layer.json: blob {blob['digest']} holds {blobs[blob['digest']]} "
                f"bytes, the record says {blob['size']}"
            )
        elif blob["compression"] == "gzip":
            tar = _gunzip_digest(root / "blobs" / "sha256" / blob["digest"][7:])
            if tar != (diff_id, size):
                out.append(
                    f"{where}/layer.json: blob {blob['digest']} decompresses to {tar}, "
                    f"not the layer's tar ({diff_id}, {size} bytes)"
                )
        records[chain] = rec
    for chain, rec in records.items():
        parent = rec.get("parent")
        if parent and parent not in records:
            out.append(f"layerdb/sha256/{chain[7:]}: parent chain {parent} is not stored")
    return set(records)


def _images(root: Path, configs: dict[str, int], chains: set[str], out: list[str]) -> None:
    d = root / "imagedb" / "content" / "sha256"
    for image_id in configs:
        where = f"imagedb/content/sha256/{image_id[7:]}"
        cfg = _read_json(d / image_id[7:], where, out)
        if cfg is None:
            continue
        rootfs = cfg.get("rootfs") if isinstance(cfg, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(_is_digest(x) for x in diff_ids):
            out.append(f"{where}: rootfs.diff_ids is not a list of digests")
            continue
        chain: str | None = None
        for diff_id in diff_ids:
            chain = _chain(chain, diff_id)
            if chain not in chains:
                out.append(f"{where}: layer chain {chain} (diff_id {diff_id}) is not stored")


def _metadata(root: Path, configs: dict[str, int], blobs: dict[str, int], out: list[str]) -> None:
    d = root / "imagedb" / "metadata" / "sha256"
    for name in _listdir(d):
        where = f"imagedb/metadata/sha256/{name}"
        p = d / name
        if p.is_symlink() or not p.is_dir():
            out.append(f"{where}: not a directory")
            continue
        if f"sha256:{name}" not in configs:
            out.append(f"{where}: metadata of an image whose config is not stored")
        for key in _listdir(p):
            kp = p / key
            kw = f"{where}/{key}"
            if kp.is_symlink() or not kp.is_file():
                out.append(f"{kw}: not a regular file")
                continue
            if key not in _METADATA_KEYS:
                out.append(f"{kw}: unknown metadata key")
                continue
            data = kp.read_bytes()
            if key == "blobs":
                lst = _read_json(kp, kw, out)
                if lst is None:
                    continue
                if not isinstance(lst, list) or not all(_is_digest(b) for b in lst):
                    out.append(f"{kw}: not a JSON list of digests")
                    continue
                for b in lst:
                    if b not in blobs:
                        out.append(f"{kw}: kept blob {b} is not stored")
                continue
            value = data.decode("utf-8", "replace").strip()
            if key == "lastUpdated":
                if not _RFC3339_NANO.fullmatch(value):
                    out.append(f"{kw}: {value[:80]!r} is not an RFC 3339 time")
                continue
            if not _is_digest(value):
                out.append(f"{kw}: {value[:80]!r} is not a digest")
            elif key == "parent" and value not in configs:
                out.append(f"{kw}: parent image {value} is not stored")
            elif key == "manifest" and value not in blobs:
                out.append(f"{kw}: manifest {value} is not stored")


def _references(root: Path, configs: dict[str, int], out: list[str]) -> None:
    p = root / "repositories.json"
    if not p.exists() and not p.is_symlink():
        return
    doc = _read_json(p, "repositories.json", out)
    if doc is None:
        return
    repos = doc.get("Repositories") if isinstance(doc, dict) else None
    if not isinstance(repos, dict):
        out.append('repositories.json: no {"Repositories": {…}} object')
        return
    for repo, refs in repos.items():
        if not isinstance(refs, dict):
            out.append(f"repositories.json: {repo!r} does not map references to images")
            continue
        for ref, image_id in refs.items():
            if not (isinstance(ref, str) and ref.startswith((f"{repo}:", f"{repo}@"))):
                out.append(f"repositories.json: {ref!r} is not a reference of {repo!r}")
            if image_id not in configs:
                out.append(f"repositories.json: {ref} points at {image_id!r}, not stored")


def problems(root: Path) -> list[str]:
    """Every invariant of the store at ``root`` that does not hold, one line each."""
    root = Path(root)
    out: list[str] = []
    if not root.is_dir():
        return [f"{root}: the store root is not a directory"]
    out += _symlinks(root)
    lock = root / "lock"
    if lock.exists() and not lock.is_file():
        out.append("lock: not a regular file")
    blobs = _content_dir(root, "blobs/sha256", "blob", out)
    configs = _content_dir(root, "imagedb/content/sha256", "image config", out)
    chains = _layers(root, blobs, out)
    _images(root, configs, chains, out)
    _metadata(root, configs, blobs, out)
    _references(root, configs, out)
    index = root / "imagedb" / "index.json"
    if index.exists():
        _read_json(index, "imagedb/index.json", out)
    fmt = root / "format"
    if fmt.exists() and not fmt.read_bytes().strip().isdigit():
        out.append(f"format: not a format number: {fmt.read_bytes()[:40]!r}")
    return out


def tmp_is_empty(root: Path) -> bool:
    """Whether the store's ``tmp/`` holds nothing (a missing ``tmp/`` holds nothing)."""
    return not _listdir(Path(root) / "tmp")


def tmp_entries(root: Path) -> list[str]:
    """What ``tmp/`` holds, for a failure message."""
    return _listdir(Path(root) / "tmp")


def image_ids(root: Path) -> list[str]:
    """The IDs of the stored image configs, sorted."""
    return [
        f"sha256:{n}" for n in _listdir(Path(root) / "imagedb" / "content" / "sha256") if _is_hex(n)
    ]


def references(root: Path) -> dict[str, str]:
    """``{reference: image id}`` from ``repositories.json`` (empty when it is missing or
    not readable; :func:`problems` reports that)."""
    try:
        doc = json.loads((Path(root) / "repositories.json").read_bytes())
    except (OSError, ValueError):
        return {}
    out: dict[str, str] = {}
    repos = doc.get("Repositories") if isinstance(doc, dict) else None
    if isinstance(repos, dict):
        for refs in repos.values():
            if isinstance(refs, dict):
                out.update({str(k): str(v) for k, v in refs.items()})
    return out


def state(root: Path) -> dict[str, Any]:
    """What the store holds, as a user sees it: ``{"refs": {ref: image id}, "images":
    [image ids]}``. Equal states mean the same images under the same references."""
    return {"refs": dict(sorted(references(root).items())), "images": image_ids(root)}


def missing_from(after: dict[str, Any], before: dict[str, Any]) -> list[str]:
    """What of the :func:`state` ``before`` is not in ``after`` (an image gone, a reference
    gone or moved), one line each: empty when every image and reference stayed."""
    out = [f"image {i} is gone" for i in before["images"] if i not in after["images"]]
    for ref, image_id in before["refs"].items():
        now = after["refs"].get(ref)
        if now != image_id:
            out.append(f"reference {ref} pointed at {image_id}, now {now}")
    return out
