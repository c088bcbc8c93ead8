"""The content store's one blob writer: commit, abort, wrong digest or size, resume,
short writes and a full disk, what a crash leaves, and the two-thread copy."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocistore.errors import Conflict, CorruptStore, DigestMismatch, SizeMismatch, StorageError
from ocistore.spec.digest import Digest, digest_bytes
from ocistore.store import fsutil
from ocistore.store.content import ContentStore, Pieces
from ocistore.store.store import Store

DATA = os.urandom(300_000)
DIGEST = digest_bytes(DATA)


@pytest.fixture
def content(tmp_path: Path) -> ContentStore:
    (tmp_path / "tmp").mkdir()
    return ContentStore(tmp_path / "blobs", tmp_path / "tmp")


def tmp_files(content: ContentStore) -> list[str]:
    return sorted(os.listdir(content.tmpdir))


def test_commit_publishes_a_read_only_verified_blob(content: ContentStore) -> None:
    with content.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:1000])
        w.write(memoryview(DATA)[1000:])
        assert w.offset == len(DATA)
        assert w.commit() == DIGEST
    path = content.path(DIGEST)
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert content.read(DIGEST) == DATA
    assert tmp_files(content) == []


def test_commit_without_expectations_names_the_digest(content: ContentStore) -> None:
    with content.writer() as w:
        w.write(DATA)
        assert w.commit() == DIGEST
    assert content.exists(DIGEST)


def test_abort_and_an_error_leave_nothing(content: ContentStore) -> None:
    w = content.writer(DIGEST)
    w.write(DATA)
    w.abort()
    assert tmp_files(content) == [] and not content.exists(DIGEST)
    with pytest.raises(RuntimeError), content.writer(DIGEST) as w:
        w.write(DATA)
        raise RuntimeError("the source failed")
    assert tmp_files(content) == [] and not content.exists(DIGEST)


def test_wrong_digest_is_refused_and_removed(content: ContentStore) -> None:
    with content.writer(DIGEST, what="layer x") as w:
        w.write(DATA[:-1] + b"!")
        with pytest.raises(DigestMismatch, match=f"layer x: digest mismatch: expected {DIGEST}"):
            w.commit()
    assert tmp_files(content) == [] and not content.exists(DIGEST)


@pytest.mark.parametrize("size", [len(DATA) - 1, len(DATA) + 1])
def test_wrong_size_is_refused_and_removed(content: ContentStore, size: int) -> None:
    with content.writer(DIGEST, size) as w:
        w.write(DATA)
        with pytest.raises(SizeMismatch, match=f"expected {size} bytes, got {len(DATA)}"):
            w.finish()
    assert tmp_files(content) == [] and not content.exists(DIGEST)


def test_writing_a_stored_blob_again_succeeds(content: ContentStore) -> None:
    assert content.write(DATA) == DIGEST
    with content.writer(DIGEST) as w:
        w.write(DATA)
        assert w.commit() == DIGEST
    assert tmp_files(content) == [] and content.read(DIGEST) == DATA
    with pytest.raises(DigestMismatch):  # still checked, though it is stored
        content.write(b"other", expected=DIGEST)


def test_a_short_stored_blob_is_replaced(content: ContentStore) -> None:
    """A blob cut short (a full disk, before writes were checked) is not taken for the
    content: a new write replaces it."""
    path = content.path(DIGEST)
    path.parent.mkdir(parents=True)
    path.write_bytes(DATA[:100])
    with content.writer(DIGEST, len(DATA)) as w:
        w.write(DATA)
        w.commit()
    assert path.read_bytes() == DATA


def test_a_short_write_is_continued(content: ContentStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write

    def short(fd: int, data: Any) -> int:
        return real(fd, bytes(data)[:7])  # a few bytes at a time

    monkeypatch.setattr(os, "write", short)
    with content.writer(DIGEST, len(DATA)) as w:
        w.write(DATA[:5000])
        w.write(DATA[5000:])
        monkeypatch.setattr(os, "write", real)
        w.commit()
    assert content.read(DIGEST) == DATA


def test_a_full_disk_fails_and_leaves_nothing(
    content: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.write
    written = [0]

    def full(fd: int, data: Any) -> int:
        room = 100_000 - written[0]
        if room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data)[:room])  # the kernel writes what fits, then refuses
        written[0] += n
        return n

    monkeypatch.setattr(os, "write", full)
    with (
        pytest.raises(StorageError, match=r"^writing blob sha256:\w+ at /.*: No space left"),
        content.writer(DIGEST, len(DATA)) as w,
    ):
        w.write(DATA)
    assert tmp_files(content) == [] and not content.exists(DIGEST)


def test_a_file_changed_behind_the_writer_is_refused(content: ContentStore) -> None:
    with content.writer(DIGEST, len(DATA)) as w:
        w.write(DATA)
        with open(w.path, "ab") as f:  # another writer appends to the staged file
            f.write(b"more")
        with pytest.raises(CorruptStore, match="were written"):
            w.finish()
    assert tmp_files(content) == []


def test_a_staged_file_replaced_before_publishing_is_refused(content: ContentStore) -> None:
    with content.writer(DIGEST, len(DATA)) as w:
        w.write(DATA)
        staged = w.finish()
    os.unlink(staged.path)
    staged.path.write_bytes(b"not what was checked")
    with pytest.raises(CorruptStore, match="replaced"):
        content.publish(staged)
    assert not content.exists(DIGEST)
    staged.discard()


def test_resume_from_what_a_cut_writer_left(content: ContentStore) -> None:
    ref = "pull example.com/app@" + DIGEST
    with pytest.raises(ConnectionError), content.writer(DIGEST, len(DATA), ref=ref) as w:
        w.write(DATA[:120_000])
        raise ConnectionError("the download was cut")
    (partial,) = tmp_files(content)  # kept, for a writer with the same ref
    with content.writer(DIGEST, len(DATA), ref=ref) as w:
        assert w.offset == 120_000
        w.write(DATA[w.offset :])
        assert w.commit() == DIGEST
    assert content.read(DIGEST) == DATA
    assert tmp_files(content) == []
    assert partial.startswith("ingest-")


def test_resume_from_an_earlier_offset(content: ContentStore) -> None:
    ref = "download"
    with content.writer(DIGEST, ref=ref) as w:
        w.write(DATA[:200_000])
    with content.writer(DIGEST, ref=ref) as w:
        assert w.offset == 200_000
        w.truncate(50_000)  # the server resumes from there
        assert w.offset == 50_000
        w.write(DATA[50_000:])
        w.commit()
    assert content.read(DIGEST) == DATA
    with content.writer(DIGEST, ref="again") as w:
        w.write(b"abc")
        with pytest.raises(ValueError):
            w.truncate(4)
        w.abort()


def test_a_resumable_write_with_bad_content_is_not_kept(content: ContentStore) -> None:
    with content.writer(DIGEST, ref="r") as w:
        w.write(b"garbage")
        with pytest.raises(DigestMismatch):
            w.commit()
    assert tmp_files(content) == []


def test_one_writer_per_ref_at_a_time(content: ContentStore) -> None:
    with content.writer(DIGEST, ref="r") as w:
        with pytest.raises(Conflict, match="another writer"):
            content.writer(DIGEST, ref="r")
        w.abort()


_DIE_WRITING = """
import os, signal, sys
from ocistore.store.store import Store
store = Store(sys.argv[1])
w = store.content.writer()
w.write(b"half a blob")
store.tmpdir.joinpath("ingest-0123.partial").write_bytes(b"a resumable download")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_writers_leftovers_go_at_once_a_live_ones_never(tmp_path: Path) -> None:
    """Every temporary name says which process wrote it: gc removes what a killed writer
    left at once, whatever the grace period, and never what a running writer (this
    process) is writing, even with no grace at all. A name that says nobody (a
    resumable download) waits out the grace period."""
    root = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", _DIE_WRITING, str(root)], check=False)
    assert proc.returncode == -signal.SIGKILL
    store = Store(root)
    assert len(os.listdir(store.tmpdir)) == 2
    with store.content.writer(DIGEST) as live:
        live.write(DATA)
        assert store.fsck() == []
        (removed,) = store.gc()  # the default grace: a day
        assert removed.startswith("temporary ") and removed.endswith(".blob")
        assert sorted(os.listdir(store.tmpdir)) == sorted(["ingest-0123.partial", live.path.name])
        (removed,) = store.gc(grace_seconds=0)
        assert removed == "temporary ingest-0123.partial"
        assert os.listdir(store.tmpdir) == [live.path.name]  # still being written
        assert live.commit() == DIGEST
    assert os.listdir(store.tmpdir) == []


def test_copy_from_hashes_on_the_second_thread(content: ContentStore) -> None:
    with content.writer(DIGEST, len(DATA)) as w:
        seen: list[int] = []
        w.copy_from(io.BytesIO(DATA), progress=seen.append, chunk_size=64 << 10)
        assert seen[-1] == len(DATA) and seen == sorted(seen)
        assert w.commit() == DIGEST


def test_copy_from_gives_the_pieces_to_a_consumer(content: ContentStore) -> None:
    got = bytearray()

    def consume(pieces: Pieces) -> None:
        while (piece := pieces.read(1000)) != b"":
            got.extend(piece)

    with content.writer(DIGEST) as w:
        w.copy_from(io.BytesIO(DATA), consume, chunk_size=4096)
        w.commit()
    assert bytes(got) == DATA


def test_copy_from_stops_when_the_consumer_fails(content: ContentStore) -> None:
    reads = [0]

    class Source(io.BytesIO):
        def readinto(self, buf: Any) -> int:
            reads[0] += 1
            return super().readinto(buf)

    def consume(pieces: Pieces) -> None:
        pieces.next()
        raise ValueError("cannot decompress")

    big = os.urandom(4 << 20)
    with pytest.raises(ValueError, match="cannot decompress"), content.writer() as w:
        w.copy_from(Source(big), consume, chunk_size=4096)
    assert reads[0] < (4 << 20) // 4096  # it did not read the whole source
    assert tmp_files(content) == []


def test_copy_from_stops_when_progress_raises(content: ContentStore) -> None:
    def progress(done: int) -> None:
        if done > 100_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), content.writer(DIGEST) as w:
        w.copy_from(io.BytesIO(DATA), progress=progress, chunk_size=4096)
    assert tmp_files(content) == []


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), fsutil.AtomicFile(path) as f:
        f.write(b"half")
        raise RuntimeError
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["index.json"]
    with fsutil.AtomicFile(path, mode=0o640) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["index.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_config_goes_through_the_blob_writer(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    digest = store.backend.set(config)
    path = store.backend.content_path(digest)
    assert path.read_bytes() == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert Digest(digest) == digest_bytes(config)
