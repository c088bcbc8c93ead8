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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from docker_engine import DockerEngine, started_engine, static_busybox
from util import make_tar

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


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """One private Docker engine for the whole session (see ``tests/docker_engine.py``).
    Tests share it: each uses image names of its own, and leaves the images of
    :func:`docker_images` alone."""
    with started_engine() as engine:
        yield engine


class DockerImages(NamedTuple):
    """The images Docker built once per session for the comparisons (names in ``lab/``)."""

    #: ``docker import`` of a small tree: one layer, no history but the import's.
    imported: str
    #: ``FROM scratch``, ``COPY`` of the static busybox, then ``RUN`` steps, ``ENV``,
    #: ``LABEL``, ``CMD``: the legacy builder leaves each step's intermediate image.
    built: str
    #: A child of ``built`` with one more ``RUN`` layer and a tab in its command.
    child: str


@pytest.fixture(scope="session")
def docker_images(docker_engine: DockerEngine) -> DockerImages:
    busybox = static_busybox()
    tree = make_tar({"etc/hostname": b"lab\n", "usr/share/doc/x.txt": b"x" * 3000}, dirs=True)
    docker_engine.run("import", "-m", "a tree", "-c", "ENV A=1", "-", "lab/imported:1", input=tree)
    docker_engine.build(
        "lab/built:1",
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "RUN mkdir -p /etc/app && echo hello > /etc/app/greeting && ln /etc/app/greeting /g\n"
        "ENV PATH=/bin GREETING=hello\n"
        'LABEL org.example.name="built" org.example.ünïcode="✓"\n'
        "WORKDIR /etc/app\n"
        'CMD ["sh"]\n',
        {"busybox": busybox},
    )
    docker_engine.build(
        "lab/child:1",
        "FROM lab/built:1\nRUN echo child > /child &&\trm /etc/app/greeting\nUSER 1000:1000\n",
    )
    return DockerImages("lab/imported:1", "lab/built:1", "lab/child:1")


# --- registries (issue 12): Distribution's docker-registry, see tests/registry_peer.py ---
# Imported in the fixtures, so that a missing test dependency (cryptography) fails only the
# tests that start a registry.


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One open registry (no authentication, plain HTTP) for the whole session, on
    127.0.0.1. Tests share it: each pushes to repositories of its own."""
    from registry_peer import registry_binary, started_registry

    registry_binary()  # skips (fails under CI=true) when it is missing
    with started_registry(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture
def registry_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RegistryServer]]:
    """``make(**kwargs)`` starts a registry (the arguments of ``started_registry``: auth,
    tls, schema1, users, token_lifetime); all of them are stopped when the test ends."""
    from registry_peer import registry_binary, started_registry

    registry_binary()
    workdir = tmp_path_factory.mktemp("registries")
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> RegistryServer:
            return stack.enter_context(started_registry(workdir, **kwargs))

        yield make


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a registry test's commands: no credentials but those the test
    writes (a HOME, DOCKER_CONFIG and XDG_RUNTIME_DIR of its own)."""
    home = tmp_path / "home"
    home.mkdir()
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "OCISTORE_ROOT")
    }
    out.update(
        HOME=str(home),
        DOCKER_CONFIG=str(home / ".docker"),
        XDG_RUNTIME_DIR=str(tmp_path / "run"),
    )
    return out


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Every store a test made under its tmp_path has nothing left in its ``tmp/``."""
    yield
    for root in tmp_path.glob("*"):
        tmp = root / "tmp"
        if (root / "format").exists() and tmp.is_dir():
            assert list(tmp.iterdir()) == [], f"{tmp} not empty"


# Names for the annotations above (not evaluated at run time: annotations are strings).
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from registry_peer import RegistryServer
