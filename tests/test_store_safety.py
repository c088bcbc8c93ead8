"""The store against what is around it (issue 10): read-only and foreign-owned stores,
a lock held by a stopped process, another writer's symlinks, odd umasks, the format
file, a removal that fails half-way, and ``fsck --repair``.

Several tests need root (bind mounts, another user); they are skipped with a reason
elsewhere, and fail under CI=true, where ``make test`` runs as root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import pty
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from util import make_tar, snapshot

from ocistore.errors import CorruptStore, PartiallyDone, ReadOnlyStore, UnsupportedStore
from ocistore.store import Store, fsutil

OCISTORE = Path(sys.executable).parent / "ocistore"
NOBODY = 65534


def need_root() -> None:
    if os.geteuid() != 0:
        reason = "needs root (bind mounts, another user)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def ocistore(root: Path, *args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OCISTORE), "--root", str(root), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kw,  # type: ignore[arg-type]
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocistore: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A store with two images, one tagged twice, owned by root, modes 0755/0644."""
    root = tmp_path / "store"
    with Store(root) as store:
        a = store.import_tarball(io.BytesIO(make_tar({"a": b"a" * 5000})), "app:1")
        store.tag(a, "other/app:1")
        store.import_tarball(io.BytesIO(make_tar({"b": b"b" * 7000})), "base:1")
    os.chmod(tmp_path, 0o755)
    return root


# -- read-only and foreign-owned stores ----------------------------------------------------


@contextlib.contextmanager
def read_only_view(path: Path, at: Path) -> Iterator[Path]:
    """``path`` bind-mounted read-only at ``at`` (a real EROFS), unmounted after."""
    at.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(at)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(at)], check=True)
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)
        at.rmdir()


def test_a_read_only_store_can_be_read_and_refuses_changes_in_one_line(
    filled: Path, tmp_path: Path
) -> None:
    need_root()
    before = snapshot(filled)
    with read_only_view(filled, tmp_path / "ro") as ro:
        listed = ocistore(ro, "images")
        assert listed.returncode == 0, listed.stderr
        assert "app" in listed.stdout and "base" in listed.stdout
        assert ocistore(ro, "inspect", "app:1").returncode == 0
        assert ocistore(ro, "history", "app:1").returncode == 0
        checked = ocistore(ro, "fsck", "-q")
        assert checked.returncode == 0 and checked.stdout == "", checked.stderr
        out = tmp_path / "app.tar"
        saved = ocistore(ro, "save", "-q", "-o", out, "app:1")
        assert saved.returncode == 0 and out.stat().st_size > 0, saved.stderr
        one_line_error(ocistore(ro, "tag", "app:1", "new:1"), "cannot be changed", str(ro))
        one_line_error(ocistore(ro, "rmi", "base:1"), "cannot be changed")
        one_line_error(ocistore(ro, "load", "-q", "-i", out), "cannot be changed")
        one_line_error(ocistore(ro, "gc"), "cannot be changed")
    assert snapshot(filled) == before


def as_another_user(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``ocistore`` run by a user who may read the store but not write it: the store is
    given to another owner, and the command runs without the capabilities that let
    root ignore file permissions."""
    if subprocess.run(["which", "setpriv"], capture_output=True).returncode != 0:
        pytest.skip("setpriv (util-linux) is not installed")
    drop = "-dac_override,-dac_read_search,-fowner,-chown"
    return subprocess.run(
        ["setpriv", f"--bounding-set={drop}", str(OCISTORE), "--root", str(root)]
        + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_user_who_may_read_a_store_but_not_write_it_can_list_it(
    filled: Path, tmp_path: Path
) -> None:
    need_root()
    for p in [filled, *filled.rglob("*")]:
        os.chown(p, NOBODY, NOBODY, follow_symlinks=False)
    before = snapshot(filled)
    listed = as_another_user(filled, "images")
    assert listed.returncode == 0, listed.stderr
    assert "other/app" in listed.stdout
    checked = as_another_user(filled, "fsck", "-q")
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "app.tar"
    saved = as_another_user(filled, "save", "-q", "-o", out, "app:1")
    assert saved.returncode == 0, saved.stderr
    one_line_error(as_another_user(filled, "tag", "app:1", "x:1"), "cannot be changed")
    assert snapshot(filled) == before


# -- the lock ----------------------------------------------------------------------------

_HOLD_AND_STOP = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdout.write("held\\n"); sys.stdout.flush()
os.kill(os.getpid(), signal.SIGSTOP)
"""


@pytest.fixture
def stopped_holder(filled: Path) -> Iterator[int]:
    """A process that took the store's lock and was then stopped (it never lets go)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_STOP, str(filled / "lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_held_by_a_stopped_process_is_named_and_the_wait_ends(
    filled: Path, stopped_holder: int
) -> None:
    """Not on a terminal, the wait ends in one line naming the holder."""
    proc = ocistore(filled, "--lock-timeout", "0.5", "images")
    assert proc.returncode == 1, proc.stdout
    (line,) = proc.stderr.splitlines()
    assert line.startswith("ocistore: store lock ") and "still held" in line
    assert f"process {stopped_holder} (" in line and "after 0.5 s" in line


def test_on_a_terminal_a_long_wait_for_the_lock_is_told_first(
    filled: Path, stopped_holder: int
) -> None:
    """On a terminal, a wait that lasts is told (naming the holder) before it ends."""
    main, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [str(OCISTORE), "--root", str(filled), "--lock-timeout", "2.5", "images"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=secondary,
        )
        os.close(secondary)
        secondary = -1
        out = b""
        with contextlib.suppress(OSError):  # EIO once the command has closed the terminal
            while chunk := os.read(main, 4096):
                out += chunk
        assert proc.wait(timeout=120) == 1
    finally:
        os.close(main)
        if secondary >= 0:
            os.close(secondary)
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("ocistore: waiting for the store lock") and lines[0].endswith("...")
    assert f"process {stopped_holder}" in lines[0]
    assert "still held" in lines[1] and "after 2.5 s" in lines[1]


def test_the_lock_timeout_is_checked_before_anything_changes(
    filled: Path, stopped_holder: int
) -> None:
    before = snapshot(filled)
    proc = ocistore(filled, "--lock-timeout", "0.1", "tag", "app:1", "new:1")
    assert proc.returncode == 1 and "still held" in proc.stderr.splitlines()[-1]
    assert snapshot(filled) == before


# -- symlinks planted by another writer --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["lock", "tmp", "blobs/sha256", "layerdb/sha256", "imagedb/metadata/sha256", "format"],
)
def test_a_symlinked_store_directory_is_refused_and_nothing_outside_is_written(
    filled: Path, tmp_path: Path, name: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = filled / name
    if not target.exists():
        target.mkdir(parents=True)
    os.rename(target, outside / "moved")
    os.symlink(outside / "moved", target)
    before = snapshot(outside)
    tarball = tmp_path / "new.tar"
    tarball.write_bytes(make_tar({"new": b"n" * 3000}))
    proc = ocistore(filled, "import", tarball, "new:1")
    one_line_error(proc, "is a symlink", str(target))
    assert snapshot(outside) == before


def test_a_symlinked_metadata_directory_of_one_image_is_not_followed(
    filled: Path, tmp_path: Path
) -> None:
    with Store(filled) as store:
        image_id = store.resolve("app:1")
        meta = store.backend.root / "metadata" / "sha256" / image_id.hex
        outside = tmp_path / "outside"
        outside.mkdir()
        if meta.exists():
            fsutil.remove(meta)
        meta.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, meta)
        with pytest.raises(CorruptStore, match="is a symlink"):
            store.images.set_parent(image_id, store.resolve("base:1"))
    assert list(outside.iterdir()) == []


def test_a_symlinked_blob_is_not_read_through(filled: Path, tmp_path: Path) -> None:
    with Store(filled) as store:
        layer = store.layers_of(store.image("app:1"))[0]
        blob = store.content.path(layer.blob.digest)
        secret = tmp_path / "secret"
        secret.write_bytes(blob.read_bytes())  # even the right bytes, elsewhere
        os.chmod(blob, 0o644)
        blob.unlink()
        os.symlink(secret, blob)
        problems = store.fsck()
    assert any("is a symlink" in p for p in problems), problems


# -- modes -------------------------------------------------------------------------------


def test_the_store_sets_its_own_modes_and_outputs_are_never_world_writable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(make_tar({"etc/x": b"x" * 1000}))
    loose = {"preexec_fn": lambda: os.umask(0o000)}
    assert ocistore(root, "import", tarball, "app:1", **loose).returncode == 0
    out = tmp_path / "app.tar"
    assert ocistore(root, "save", "-q", "-o", out, "app:1", **loose).returncode == 0
    layout = tmp_path / "layout"
    saved = ocistore(root, "save", "-q", "--format", "oci", "-o", layout, "app:1", **loose)
    assert saved.returncode == 0, saved.stderr
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.lstat().st_mode)
        if p.is_dir():
            assert mode == 0o755, (p, oct(mode))
        elif p.parent.name == "sha256" and p.parent.parent.name in ("blobs", "content"):
            assert mode == 0o444, (p, oct(mode))
        else:
            assert mode == 0o644, (p, oct(mode))
    for p in [out, layout, *layout.rglob("*")]:  # the umask (none), less o+w
        assert stat.S_IMODE(p.lstat().st_mode) == (0o775 if p.is_dir() else 0o664), p
    usual = {"preexec_fn": lambda: os.umask(0o022)}
    layout2 = tmp_path / "layout2"
    saved = ocistore(root, "save", "-q", "--format", "oci", "-o", layout2, "app:1", **usual)
    assert saved.returncode == 0, saved.stderr
    for p in [layout2, *layout2.rglob("*")]:
        assert stat.S_IMODE(p.lstat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    strict = {"preexec_fn": lambda: os.umask(0o077)}
    assert ocistore(root, "tag", "app:1", "app:2", **strict).returncode == 0
    assert stat.S_IMODE((root / "repositories.json").stat().st_mode) == 0o644


# -- the format file ---------------------------------------------------------------------


def test_a_store_of_a_newer_format_is_refused_and_an_unmarked_one_is_marked(
    filled: Path,
) -> None:
    assert (filled / "format").read_text() == "1\n"
    (filled / "format").unlink()  # a store written before the file existed
    listed = ocistore(filled, "images")
    assert listed.returncode == 0 and "app" in listed.stdout
    assert (filled / "format").read_text() == "1\n"
    (filled / "format").write_text("2\n")
    before = snapshot(filled)
    one_line_error(ocistore(filled, "images"), "format 2", "newer ocistore")
    with pytest.raises(UnsupportedStore):
        Store(filled)
    assert snapshot(filled) == before


# -- a removal that fails half-way ---------------------------------------------------------


def test_an_rmi_that_fails_after_changing_the_store_says_what_it_did(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(filled)
    image_id = store.resolve("base:1")
    real = fsutil.remove

    def failing(path: Path, tmpdir: Path | None = None) -> None:
        if path.parent.name == "sha256" and path.parent.parent.name == "layerdb":
            raise fsutil.StorageError("removing", path, OSError(errno.EIO, "I/O error"))
        real(path, tmpdir)

    monkeypatch.setattr(fsutil, "remove", failing)
    with pytest.raises(PartiallyDone) as caught:
        store.remove("base:1")
    assert caught.value.done == ["Untagged: base:1", f"Deleted: {image_id}"]
    assert "I/O error" in str(caught.value.error)
    monkeypatch.setattr(fsutil, "remove", real)
    assert not store.images.exists(image_id)
    assert Store(filled).gc() != [] and Store(filled).fsck() == []


def test_a_read_only_store_refuses_the_library_writes_too(filled: Path, tmp_path: Path) -> None:
    need_root()
    with read_only_view(filled, tmp_path / "ro") as ro, Store(ro) as store:
        assert not store.writable
        assert [rec.id for rec, _ in store.list_images()]
        with pytest.raises(ReadOnlyStore):
            store.tag("app:1", "x:1")
        with pytest.raises(ReadOnlyStore):
            store.import_tarball(io.BytesIO(make_tar({"c": b"c"})), "c:1")


# -- fsck --repair -----------------------------------------------------------------------


def test_fsck_repair_mends_what_can_be_mended_and_reports_the_rest(filled: Path) -> None:
    with Store(filled) as store:
        app = store.resolve("app:1")
        base = store.resolve("base:1")
        app_layer = store.layers_of(store.image("app:1"))[0]
    # What a crash of an older ocistore, or a damaged disk, leaves:
    empty = filled / "layerdb" / "sha256" / ("e" * 64)
    empty.mkdir()  # an empty layer record
    orphan = filled / "imagedb" / "metadata" / "sha256" / ("f" * 64)
    orphan.mkdir(parents=True)
    (orphan / "parent").write_text(app)  # metadata of no image
    refs = json.loads((filled / "repositories.json").read_text())
    refs["Repositories"]["ghost"] = {"ghost:1": "sha256:" + "d" * 64}  # a missing image
    (filled / "repositories.json").write_text(json.dumps(refs))
    (filled / "imagedb" / "index.json").write_text("{damaged")
    blob = filled / "blobs" / "sha256" / app_layer.blob.digest.hex
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # app's only layer is damaged: app cannot be mended
        f.write(b"X")
    checked = ocistore(filled, "fsck", "-q")
    assert checked.returncode == 1 and len(checked.stdout.splitlines()) == 3, checked.stdout

    repaired = ocistore(filled, "fsck", "-q", "--repair")
    assert repaired.returncode == 1, repaired.stderr  # app is still broken: load it again
    lines = repaired.stdout.splitlines()
    done = [line for line in lines if line.startswith("Repaired: ")]
    left = [line for line in lines if not line.startswith("Repaired: ")]
    assert any(f"layer record sha256:{'e' * 64}" in line for line in done), done
    assert any(f"removed layer {app_layer.chain_id}" in line for line in done), done
    assert any(f"metadata of missing image sha256:{'f' * 64}" in line for line in done), done
    assert any("removed ghost:1" in line for line in done), done
    assert left and all(app in line for line in left), left
    assert not empty.exists() and not orphan.exists() and not blob.exists()

    # Loading the image again brings its layer back; then everything is whole.
    with Store(filled) as store:
        store.import_tarball(io.BytesIO(make_tar({"a": b"a" * 5000})), "app:1")
        assert store.resolve("base:1") == base
    again = ocistore(filled, "fsck", "-q", "--repair")
    assert again.returncode == 0 and again.stdout == "", again.stdout
    assert ocistore(filled, "fsck", "-q").returncode == 0


def test_fsck_repair_moves_a_digest_reference_to_the_image_keeping_its_manifest(
    tmp_path: Path,
) -> None:
    """A digest reference whose image went (a config removed by hand) moves to the image
    that keeps that manifest."""
    root = tmp_path / "store"
    with Store(root) as store:
        image_id = store.import_tarball(io.BytesIO(make_tar({"a": b"a"})), "app:1")
        manifest = store.content.write(b'{"schemaVersion":2}')
        store.images.set_blobs(image_id, [manifest])
        store.backend.set_metadata(image_id, "manifest", manifest.encode())
    refs = json.loads((root / "repositories.json").read_text())
    refs["Repositories"]["app"][f"app@{manifest}"] = "sha256:" + "c" * 64
    (root / "repositories.json").write_text(json.dumps(refs))
    proc = ocistore(root, "fsck", "-q", "--repair")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Repaired: re-linked app@{manifest} to image {image_id}" in proc.stdout
    assert json.loads((root / "repositories.json").read_text())["Repositories"]["app"] == {
        "app:1": image_id,
        f"app@{manifest}": image_id,
    }


def _save_killed_at(root: Path, out: Path, call: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={call}:signal=KILL:when=1",
            str(OCISTORE), "--root", str(root), "save", "-q", "-o", str(out), "app:1",
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip


def test_a_killed_save_leaves_no_partial_output_and_the_next_save_clears_any_leftover(
    filled: Path, tmp_path: Path
) -> None:
    """save -o writes an unnamed file and names it only when whole: killed before, it
    leaves nothing; a new output is named in one step. Replacing an output needs a
    temporary name for an instant; a kill in that instant leaves it, with the old
    output whole, and the next save of that output removes it."""
    if subprocess.run(["which", "strace"], capture_output=True).returncode != 0:
        pytest.skip("strace is not installed")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.tar"
    killed = _save_killed_at(filled, out, "linkat")
    assert killed.returncode == -signal.SIGKILL, killed
    assert list(out_dir.iterdir()) == []
    assert ocistore(filled, "save", "-q", "-o", out, "app:1").returncode == 0
    whole = out.read_bytes()
    killed = _save_killed_at(filled, out, "rename")
    assert killed.returncode == -signal.SIGKILL, killed
    (leftover,) = (p for p in out_dir.iterdir() if p != out)
    assert leftover.name.startswith(".x.tar.") and out.read_bytes() == whole
    assert ocistore(filled, "save", "-q", "-o", out, "app:1").returncode == 0
    assert list(out_dir.iterdir()) == [out] and out.read_bytes() == whole


@pytest.mark.parametrize(
    "name",
    ["imagedb/index.json", "imagedb/index.dirty", "repositories.json", "layer.json", "blobs"],
)
def test_the_stores_own_files_nested_deep_are_damage_not_a_traceback(
    filled: Path, name: str
) -> None:
    """A hostile neighbour's JSON nested far deeper than Python's parser goes, in place
    of one of the store's own files: a clean line, a rebuilt index, or an ignored
    marker, never a traceback."""
    deep = b"[" * 100_000 + b"]" * 100_000
    with Store(filled) as store:
        image = store.image("app:1")
        layer = store.layers_of(image)[0]
        targets = {
            "imagedb/index.json": store.images.index_path,
            "imagedb/index.dirty": store.images.dirty_path,
            "repositories.json": filled / "repositories.json",
            "layer.json": filled / "layerdb" / "sha256" / layer.chain_id.hex / "layer.json",
            "blobs": store.backend.root / "metadata" / "sha256" / image.id.hex / "blobs",
        }
    path = targets[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(deep)
    for args in (["images"], ["fsck", "-q"], ["tag", "base:1", "base:2"]):
        proc = ocistore(filled, *args)
        assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc
        assert proc.returncode in (0, 1) and len(proc.stderr.splitlines()) <= 3, proc


@pytest.mark.parametrize("when", ["while writing", "once finished"])
def test_a_staged_blob_swapped_for_a_symlink_is_neither_followed_nor_published(
    filled: Path, tmp_path: Path, when: str
) -> None:
    """Another writer replaces a staged file in tmp/ with a symlink to a file outside:
    its target's mode and bytes stay as they were, and nothing is published."""
    outside = tmp_path / "precious"
    outside.write_bytes(b"not a blob")
    os.chmod(outside, 0o600)
    data = b"the blob" * 1000
    with Store(filled) as store:
        w = store.content.writer()
        w.write(data)

        def swap() -> None:
            os.unlink(w.path)
            os.symlink(outside, w.path)

        if when == "while writing":
            swap()
            staged = w.finish()
        else:
            staged = w.finish()
            swap()
        with pytest.raises(CorruptStore, match="replaced or removed"):
            store.content.publish(staged)
        assert not store.content.exists(staged.digest)
        os.unlink(w.path)
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert outside.read_bytes() == b"not a blob"


# -- what a dead writer's marker says ------------------------------------------------------


def _dead_marker(root: Path, intent: dict[str, object]) -> None:
    """What a writer killed after saying what it would do leaves."""
    (root / "imagedb" / "index.dirty").write_text(json.dumps(intent))


def test_a_damaged_layer_record_is_dropped_by_repair_but_its_image_keeps_its_tags(
    filled: Path,
) -> None:
    with Store(filled) as store:
        app = store.resolve("app:1")
        layer = store.layers_of(store.image("app:1"))[0]
    (filled / "layerdb" / "sha256" / layer.chain_id.hex / "layer.json").write_text("{")
    proc = ocistore(filled, "fsck", "-q", "--repair")
    assert proc.returncode == 1 and app in proc.stdout  # the image is left to load again
    assert "removed app:1" not in proc.stdout and "removed other/app:1" not in proc.stdout
    refs = json.loads((filled / "repositories.json").read_text())["Repositories"]
    assert refs["app"] == {"app:1": app} and refs["other/app"] == {"other/app:1": app}
    with Store(filled) as store:  # loading it again mends it
        store.import_tarball(io.BytesIO(make_tar({"a": b"a" * 5000})), "app:1")
    assert ocistore(filled, "fsck", "-q").returncode == 0


def test_undoing_a_dead_load_removes_children_before_their_parents(filled: Path) -> None:
    with Store(filled) as store:
        base = store.resolve("base:1")
        parent = store.import_tarball(io.BytesIO(make_tar({"p": b"p" * 100})))
        child = store.import_tarball(io.BytesIO(make_tar({"c": b"c" * 100})))
        store.images.set_parent(child, parent)
    _dead_marker(filled, {"create": [parent, child], "tags": [["docker.io/library/pc:1", child]]})
    with Store(filled) as store:
        ids = {rec.id for rec, _ in store.list_images(all_images=True)}
    assert parent not in ids and child not in ids and base in ids
    assert not (filled / "imagedb" / "index.dirty").exists()


def test_a_marker_whose_recovery_fails_stays_for_the_next_writer(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(filled) as store:
        base = store.resolve("base:1")
        store.remove("base:1")  # as an rmi killed after untagging would leave it... and more
        orphan = store.import_tarball(io.BytesIO(make_tar({"o": b"o" * 100})))
    _dead_marker(filled, {"untag": [["docker.io/library/gone:1", orphan]], "delete": [orphan]})
    store = Store(filled)

    def broken(intent: dict[str, object]) -> None:
        raise fsutil.StorageError("removing", filled / "x", OSError(errno.EIO, "I/O error"))

    monkeypatch.setattr(store, "recover", broken)
    store.images.recover = broken
    with pytest.raises(fsutil.StorageError), store.transaction():
        pass
    assert "delete" in (filled / "imagedb" / "index.dirty").read_text()
    with Store(filled) as again:  # the next writer finishes the rmi
        again.tag(str(again.resolve("app:1")), "app:2")
        assert not again.images.exists(orphan) and not again.images.exists(base)
    assert not (filled / "imagedb" / "index.dirty").exists()


def test_a_load_checks_what_it_relies_on_after_a_dead_writer_was_recovered(
    filled: Path, tmp_path: Path
) -> None:
    """A killed rmi of app (untagged, not yet deleted) is finished by the next writer, a
    load of an image sharing app's layer: that load must see the layer go first and
    stage it, not find it gone at its publish step."""
    with Store(filled) as store:
        app = store.resolve("app:1")
        store.references.delete_image(app)
        archive = tmp_path / "app.tar"
        store.tag(app, "keep:1")
    assert ocistore(filled, "save", "-q", "-o", archive, "keep:1").returncode == 0
    with Store(filled) as store:
        store.references.delete_image(app)
    _dead_marker(
        filled,
        {"untag": [["docker.io/library/app:1", app]], "delete": [app]},
    )
    loaded = ocistore(filled, "load", "-q", "-i", archive)
    assert loaded.returncode == 0, loaded.stderr
    assert ocistore(filled, "fsck", "-q").returncode == 0


@pytest.mark.parametrize("name", ["parent", "layer.json", "index.json"])
def test_the_stores_own_small_files_are_never_read_through_a_symlink(
    filled: Path, name: str
) -> None:
    """A record replaced by a symlink to /dev/zero (endless) or to a file outside: read
    as damage, in one line or a rebuilt index, never followed into a MemoryError."""
    with Store(filled) as store:
        image = store.image("app:1")
        layer = store.layers_of(image)[0]
        meta = store.backend.root / "metadata" / "sha256" / image.id.hex
    path = {
        "parent": meta / "parent",
        "layer.json": filled / "layerdb" / "sha256" / layer.chain_id.hex / "layer.json",
        "index.json": filled / "imagedb" / "index.json",
    }[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.symlink("/dev/zero", path)
    (filled / "imagedb" / "index.json").unlink(missing_ok=True)  # read the records again
    if name == "index.json":
        os.symlink("/dev/zero", path)
    for args in (["images"], ["fsck", "-q"]):
        proc = ocistore(filled, *args)
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc
        assert proc.returncode in (0, 1), proc


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["images"], "writing standard output (/dev/full)"),
        (["--help"], "writing standard output (/dev/full)"),
        (["save", "-q", "-o", "/dev/full", "app:1"], "writing /dev/full"),
    ],
)
def test_a_full_output_is_one_line_naming_it_and_no_traceback(
    filled: Path, args: list[str], named: str
) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [str(OCISTORE), "--root", str(filled), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line == f"ocistore: {named}: No space left on device"


def test_a_directory_in_place_of_the_references_is_one_line(filled: Path) -> None:
    refs = filled / "repositories.json"
    refs.unlink()
    refs.mkdir()
    one_line_error(ocistore(filled, "images"), str(refs), "Is a directory")
