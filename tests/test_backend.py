"""Contract tests for the image-config backend (Docker's ``StoreBackend`` interface).

:class:`BackendContract` holds the tests every backend must pass; a backend gets them by
subclassing it and providing the ``backend`` fixture and :meth:`tamper`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ocistore.errors import DigestMismatch, InvalidInput, NotFound
from ocistore.spec.digest import Digest, digest_bytes
from ocistore.store.backend import FSBackend, StoreBackend

CONFIG_A = b'{"rootfs":{"type":"layers","diff_ids":[]},"comment":"a"}'
CONFIG_B = b'{"rootfs":{"type":"layers","diff_ids":[]},"comment":"b"}'
CONFIG_C = b'{"rootfs":{"type":"layers","diff_ids":[]},"comment":"c"}'
UNKNOWN = Digest(digest_bytes(b"never stored"))


class BackendContract:
    """Behaviour every :class:`StoreBackend` must have."""

    def tamper(self, backend: StoreBackend, digest: Digest, data: bytes) -> None:
        """Replace stored content behind the backend's back."""
        raise NotImplementedError

    def test_set_computes_the_digest(self, backend: StoreBackend) -> None:
        d = backend.set(CONFIG_A)
        assert d == digest_bytes(CONFIG_A)
        assert isinstance(d, Digest)
        assert backend.get(d) == CONFIG_A

    def test_set_is_idempotent(self, backend: StoreBackend) -> None:
        assert backend.set(CONFIG_A) == backend.set(CONFIG_A)
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert seen == [digest_bytes(CONFIG_A)]

    def test_set_empty_is_refused(self, backend: StoreBackend) -> None:
        with pytest.raises(InvalidInput, match="empty"):
            backend.set(b"")
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert seen == []

    def test_get_unknown_is_not_found(self, backend: StoreBackend) -> None:
        with pytest.raises(NotFound, match=UNKNOWN):
            backend.get(UNKNOWN)

    def test_get_refuses_an_invalid_digest(self, backend: StoreBackend) -> None:
        with pytest.raises(InvalidInput):
            backend.get("sha256:../../etc/passwd")  # type: ignore[arg-type]

    def test_get_verifies_content(self, backend: StoreBackend) -> None:
        d = backend.set(CONFIG_A)
        self.tamper(backend, d, CONFIG_B)
        with pytest.raises(DigestMismatch) as exc:
            backend.get(d)
        assert d in str(exc.value)
        assert exc.value.expected == d
        assert exc.value.got == digest_bytes(CONFIG_B)

    def test_get_verifies_same_size_tamper(self, backend: StoreBackend) -> None:
        d = backend.set(CONFIG_A)
        self.tamper(backend, d, CONFIG_A.replace(b'"a"', b'"z"'))
        with pytest.raises(DigestMismatch, match=d):
            backend.get(d)

    def test_walk_visits_everything(self, backend: StoreBackend) -> None:
        ids = {backend.set(c) for c in (CONFIG_A, CONFIG_B, CONFIG_C)}
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert sorted(seen) == sorted(ids)

    def test_walk_stops_when_the_callback_raises(self, backend: StoreBackend) -> None:
        for c in (CONFIG_A, CONFIG_B, CONFIG_C):
            backend.set(c)
        calls: list[Digest] = []

        class Stop(Exception):
            pass

        def fn(d: Digest) -> None:
            calls.append(d)
            raise Stop

        with pytest.raises(Stop):
            backend.walk(fn)
        assert len(calls) == 1

    def test_walk_of_empty_backend(self, backend: StoreBackend) -> None:
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert seen == []

    def test_delete(self, backend: StoreBackend) -> None:
        a = backend.set(CONFIG_A)
        b = backend.set(CONFIG_B)
        backend.set_metadata(a, "parent", b.encode())
        backend.delete(a)
        with pytest.raises(NotFound):
            backend.get(a)
        with pytest.raises(NotFound):
            backend.get_metadata(a, "parent")
        assert backend.get(b) == CONFIG_B
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert seen == [b]
        # Stored again after deletion: no stale metadata comes back.
        assert backend.set(CONFIG_A) == a
        with pytest.raises(NotFound):
            backend.get_metadata(a, "parent")

    def test_metadata_set_get_delete(self, backend: StoreBackend) -> None:
        a = backend.set(CONFIG_A)
        b = backend.set(CONFIG_B)
        backend.set_metadata(a, "parent", b"sha256:x")
        backend.set_metadata(a, "lastUpdated", b"2024")
        assert backend.get_metadata(a, "parent") == b"sha256:x"
        backend.set_metadata(a, "parent", b"sha256:y")  # overwrite
        assert backend.get_metadata(a, "parent") == b"sha256:y"
        with pytest.raises(NotFound, match="parent"):
            backend.get_metadata(b, "parent")  # per image
        backend.delete_metadata(a, "parent")
        with pytest.raises(NotFound, match="parent"):
            backend.get_metadata(a, "parent")
        assert backend.get_metadata(a, "lastUpdated") == b"2024"
        assert backend.get(a) == CONFIG_A  # content untouched

    def test_metadata_of_unknown_image_is_not_found(self, backend: StoreBackend) -> None:
        with pytest.raises(NotFound, match=UNKNOWN):
            backend.set_metadata(UNKNOWN, "parent", b"x")
        with pytest.raises(NotFound, match=UNKNOWN):
            backend.get_metadata(UNKNOWN, "parent")
        with pytest.raises(NotFound, match=UNKNOWN):
            backend.delete_metadata(UNKNOWN, "parent")

    @pytest.mark.parametrize("key", ["", "a/b", "..", ".", "x\x00y"])
    def test_metadata_key_is_validated(self, backend: StoreBackend, key: str) -> None:
        a = backend.set(CONFIG_A)
        with pytest.raises(InvalidInput):
            backend.set_metadata(a, key, b"x")


class TestFSBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> FSBackend:
        (tmp_path / "tmp").mkdir()
        return FSBackend(tmp_path / "imagedb", tmp_path / "tmp")

    def tamper(self, backend: StoreBackend, digest: Digest, data: bytes) -> None:
        assert isinstance(backend, FSBackend)
        path = backend.content_path(digest)
        os.chmod(path, 0o644)
        path.write_bytes(data)

    def test_layout(self, backend: FSBackend) -> None:
        d = backend.set(CONFIG_A)
        assert (backend.root / "content" / "sha256" / d.hex).read_bytes() == CONFIG_A
        backend.set_metadata(d, "parent", b"p")
        assert (backend.root / "metadata" / "sha256" / d.hex / "parent").read_bytes() == b"p"

    def test_walk_skips_names_that_are_not_digests(self, backend: FSBackend) -> None:
        d = backend.set(CONFIG_A)
        content = backend.content_dir
        (content / "not-a-digest").write_bytes(b"x")
        (content / ("A" * 64)).write_bytes(b"x")  # uppercase
        (content / ("a" * 63)).write_bytes(b"x")
        (content / (d.hex + ".tmp")).write_bytes(b"x")
        seen: list[Digest] = []
        backend.walk(seen.append)
        assert seen == [d]

    def test_writes_leave_no_temporary_files(self, backend: FSBackend) -> None:
        a = backend.set(CONFIG_A)
        backend.set(CONFIG_A)
        backend.set_metadata(a, "parent", b"x")
        backend.set_metadata(a, "parent", b"y")
        backend.delete_metadata(a, "parent")
        b = backend.set(CONFIG_B)
        backend.delete(b)
        with pytest.raises(InvalidInput):
            backend.set(b"")
        assert list(backend.tmpdir.iterdir()) == []
        files = sorted(p.relative_to(backend.root).as_posix() for p in backend.root.rglob("*"))
        assert f"content/sha256/{a.hex}" in files
        assert all(b.hex not in f for f in files)
        assert not any(f.endswith(".tmp") or "tmp" in f.split("/") for f in files)

    def test_write_is_atomic_rename(self, backend: FSBackend) -> None:
        """A config appears under its final name only whole: it is renamed in, not
        written in place (the inode changes when the file is replaced)."""
        a = backend.set(CONFIG_A)
        backend.set_metadata(a, "k", b"1")
        p = backend.root / "metadata" / "sha256" / a.hex / "k"
        ino = p.stat().st_ino
        backend.set_metadata(a, "k", b"2")
        assert p.stat().st_ino != ino
        assert p.read_bytes() == b"2"
