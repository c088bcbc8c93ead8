"""Helpers shared by the tests: tar archives made in memory and store snapshots."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ocistore.store import Store


def make_tar(files: dict[str, bytes], mtime: int = 0, dirs: bool = False) -> bytes:
    """A PAX tar of regular files (sorted by name), as a layer or a rootfs tarball;
    with ``dirs``, each file's parent directories come first, as real layers have them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        written: set[str] = set()
        for name, data in sorted(files.items()):
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1 if dirs else 1):
                d = "/".join(parts[:i])
                if d not in written:
                    written.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = mtime
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root``: directories, link targets and file contents."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


@contextlib.contextmanager
def unchanged(store: Store) -> Iterator[None]:
    """The store is exactly as it was afterwards, and nothing is left in ``tmp/``."""
    before = snapshot(store.root)
    yield
    assert snapshot(store.root) == before
    assert list(store.tmpdir.iterdir()) == []


def _corpus() -> Path:
    """``shared/corpus``: beside the checkout (a session's and CI's layout alike)."""
    for base in (Path(__file__).resolve().parents[2], Path("/work")):
        candidate = base / "shared" / "corpus"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "corpus"


#: The public archives of ``shared/corpus``. Tests that read it are skipped when it is
#: missing, except under CI=true, where they run (and fail).
CORPUS = _corpus()
needs_corpus = pytest.mark.skipif(
    not CORPUS.is_dir() and os.environ.get("CI") != "true",
    reason=f"shared/corpus is not at {CORPUS}",
)


#: The ocistore command of this environment.
OCISTORE = Path(sys.executable).parent / "ocistore"


def ocistore_cli(
    *args: str | Path,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the ocistore command (with ``env`` as its whole environment, when given);
    fails the test if it fails and ``check``."""
    proc = subprocess.run(
        [str(OCISTORE), *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        input=input,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"ocistore {args} exited {proc.returncode}: {proc.stderr}")
    return proc


def run_main(
    root: Path, capsys: pytest.CaptureFixture[str], *args: str | Path
) -> tuple[int, str, str]:
    """The command's ``main`` in this process on the store ``root``: exit code, stdout,
    stderr."""
    from ocistore.cli import main as cli

    capsys.readouterr()
    try:
        code = cli.main(["--root", str(root), *(str(a) for a in args)])
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
