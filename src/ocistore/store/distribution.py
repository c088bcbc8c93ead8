"""Where a layer was seen in registries: Docker's ``v2metadata-by-diffid``.

For each layer (by DiffID) the store remembers the compressed blobs it was pulled as or
pushed as, and in which repository: ``distribution/v2metadata-by-diffid/sha256/<hex>``,
a JSON list of ``{"Digest", "SourceRepository"}`` (newest last, at most
:data:`MAX_ENTRIES`), as Docker keeps under ``image/<driver>/distribution/``. A push
uses it to skip compressing a layer stored uncompressed whose gzip blob the registry has
already, and to mount a blob from another repository of the same registry instead of
uploading it.

They are the store's own records, as Docker trusts its own: a push takes a remembered
blob of a layer, when the registry has it, as that layer compressed (a registry checks
digests, not DiffIDs: a hint damaged into naming another blob would make a manifest
whose layer is not the config's, which a pull of it then refuses). A file that cannot
be read or parsed is no hint. They are written atomically without the store's lock (the
last writer wins; a lost hint is only a compression or an upload more), and removed
with nothing else: a few hundred bytes a layer, as Docker leaves its own.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Final, NamedTuple

from ..spec.digest import DiffID, Digest
from .fsutil import AtomicFile

__all__ = ["DistributionHints", "SeenBlob"]

#: Entries kept per layer (Docker keeps 50).
MAX_ENTRIES: Final = 50
MAX_FILE: Final = 64 << 10


class SeenBlob(NamedTuple):
    """A compressed blob of a layer and the repository (``host/path``) it is in."""

    digest: Digest
    repository: str


class DistributionHints:
    def __init__(self, root: Path, tmpdir: Path) -> None:
        self.dir = root / "distribution" / "v2metadata-by-diffid"
        self.tmpdir = tmpdir

    def _path(self, diff_id: DiffID) -> Path:
        return self.dir / diff_id.algorithm / diff_id.hex

    def get(self, diff_id: DiffID) -> list[SeenBlob]:
        """What is known of the layer, newest last; nothing when the file is unreadable
        or damaged (a hint, not a fact)."""
        try:
            with open(self._path(diff_id), "rb") as f:
                doc = json.loads(f.read(MAX_FILE))
        except (OSError, ValueError):
            return []
        out: list[SeenBlob] = []
        if not isinstance(doc, list):
            return out
        for entry in doc:
            if not isinstance(entry, dict):
                continue
            digest, repo = entry.get("Digest"), entry.get("SourceRepository")
            if isinstance(digest, str) and isinstance(repo, str) and Digest.is_valid(digest):
                out.append(SeenBlob(Digest(digest), repo))
        return out

    def add(self, diff_id: DiffID, seen: SeenBlob) -> None:
        """Remember ``seen`` for the layer (moved last if known)."""
        entries = [e for e in self.get(diff_id) if e != seen] + [seen]
        entries = entries[-MAX_ENTRIES:]
        path = self._path(diff_id)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            doc = [{"Digest": e.digest, "SourceRepository": e.repository} for e in entries]
            # Not fsynced: a hint a crash loses is a compression or an upload more, and a
            # pull writes one a layer.
            with AtomicFile(path, self.tmpdir, mode=0o644, durable=False) as f:
                f.write(json.dumps(doc, separators=(",", ":")).encode())
