"""Shared test helpers: the real peer tools (skopeo, umoci) as fixtures.

A test that needs a peer tool asks for it through :func:`require_tool` (or the ``skopeo``
and ``umoci`` fixtures). Where the tool is missing the test is skipped with the reason,
except on CI (``CI=true``), where a missing peer is a failure: ``make test`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

#: skopeo's blob cache: it remembers blobs across runs and skews repeated copies.
SKOPEO_BLOB_CACHE = Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb")


def require_tool(name: str) -> str:
    """The path of a peer tool; skips the test when it is missing (fails when CI=true)."""
    path = shutil.which(name)
    if path is None:
        reason = f"peer tool {name!r} is not installed (make test installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


Runner = Callable[..., subprocess.CompletedProcess[str]]


def _runner(argv0: list[str], before: Callable[[], None] | None = None) -> Runner:
    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        if before is not None:
            before()
        cmd = [*argv0, *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    return run


def _forget_skopeo_cache() -> None:
    with contextlib.suppress(PermissionError):
        SKOPEO_BLOB_CACHE.unlink(missing_ok=True)


@pytest.fixture
def skopeo() -> Runner:
    """Run skopeo (no policy.json needed, blob cache dropped before each run)."""
    return _runner([require_tool("skopeo"), "--insecure-policy"], _forget_skopeo_cache)


@pytest.fixture
def umoci() -> Runner:
    """Run umoci."""
    return _runner([require_tool("umoci")])
