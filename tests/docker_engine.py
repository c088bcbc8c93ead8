"""A real Docker engine for the tests: Debian's ``dockerd`` (20.10), started once per test
session with everything under a temporary directory, on a private unix socket.

The engine uses the ``vfs`` storage driver (no overlay mounts needed), no bridge, no
iptables, and never the machine's default socket or a network address. It is ready when it
says so through the systemd notification protocol (``READY=1`` on ``$NOTIFY_SOCKET``,
which dockerd sends once its API is served): an event, not a poll. It is stopped, and its
directory removed, at the end of the session.

:class:`DockerEngine` runs the ``docker`` command line against it, with a private
``DOCKER_CONFIG`` (nothing is written to ``~/.docker``) and the legacy builder
(``DOCKER_BUILDKIT=0``: it makes intermediate images with a ``Parent``, as the issue's
comparisons need). :meth:`DockerEngine.build` builds an image from a Dockerfile and files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

#: Seconds the engine is given to start (a loaded 2-core machine takes a few) and to stop.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 120.0


class DockerEngine:
    """A running ``dockerd`` and the ``docker`` client pointed at it."""

    def __init__(self, directory: Path, docker: str) -> None:
        self.directory = directory
        self.socket = directory / "sock"
        self.docker_path = docker
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(directory / "config"),
            "DOCKER_BUILDKIT": "0",
            "DOCKER_CLI_HINTS": "false",
        }
        self.env.pop("DOCKER_CONTEXT", None)
        self.env.pop("DOCKER_TLS_VERIFY", None)

    def run(
        self,
        *args: str | Path,
        check: bool = True,
        input: bytes | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``docker ARGS`` against this engine; fails the test if it fails and ``check``."""
        cmd = [self.docker_path, *(str(a) for a in args)]
        raw = subprocess.run(
            cmd, capture_output=True, input=input, env=self.env, cwd=cwd, timeout=600
        )  # bytes in (a tar), text out
        proc = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode("utf-8", "replace"),
            raw.stderr.decode("utf-8", "replace"),
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def run_bytes(self, *args: str | Path, input: bytes | None = None) -> bytes:
        """``docker ARGS`` with binary standard input and output (``save -o -``, ``load``)."""
        cmd = [self.docker_path, *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, input=input, env=self.env, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\nstderr: {proc.stderr!r}")
        return proc.stdout

    def build(self, tag: str, dockerfile: str, files: dict[str, bytes | Path] | None = None) -> str:
        """Build ``dockerfile`` (with ``files`` in its context) with the legacy builder,
        tag it ``tag``, and return its image ID (``sha256:...``)."""
        with tempfile.TemporaryDirectory(dir=self.directory) as context:
            ctx = Path(context)
            (ctx / "Dockerfile").write_text(dockerfile)
            for name, content in (files or {}).items():
                target = ctx / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, Path):
                    shutil.copy2(content, target)
                else:
                    target.write_bytes(content)
            self.run("build", "-q", "-t", tag, ".", cwd=ctx)
        return self.image_id(tag)

    def image_id(self, name: str) -> str:
        return self.run("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()


def _wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Block until dockerd sends ``READY=1``, or exits (told at once, not at the end of
    the time allowed), or the time allowed passes."""
    deadline = time.monotonic() + START_TIMEOUT
    notify.settimeout(1.0)  # to look whether it exited meanwhile; not an order of events
    while proc.poll() is None:
        try:
            message = notify.recv(4096)
        except TimeoutError:
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start in {START_TIMEOUT:.0f} s:\n{_tail(log)}")
            continue
        if b"READY=1" in message.split(b"\n"):
            return
    pytest.fail(f"dockerd exited {proc.returncode}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    return ""


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def started_engine(daemon_args: Sequence[str] = ()) -> Iterator[DockerEngine]:
    """Start a private Docker engine; stop it and remove its files when done.
    ``daemon_args`` go to ``dockerd`` after its own (``--registry-mirror URL``)."""
    dockerd = shutil.which("dockerd") or (
        "/usr/sbin/dockerd" if os.access("/usr/sbin/dockerd", os.X_OK) else None
    )
    docker = shutil.which("docker")
    if dockerd is None or docker is None:
        _missing("the Docker engine (Debian's docker.io) is not installed (make test installs it)")
    if os.geteuid() != 0:
        _missing("the Docker engine needs root to start")
    assert dockerd is not None and docker is not None
    # Short, so that the unix socket's path fits in sun_path (108 bytes).
    directory = Path(tempfile.mkdtemp(prefix="ocistore-dockerd-", dir="/tmp"))
    log = directory / "dockerd.log"
    notify_path = directory / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["NOTIFY_SOCKET"] = str(notify_path)
    argv = [
        dockerd,
        "--data-root", str(directory / "root"),
        "--exec-root", str(directory / "exec"),
        "--pidfile", str(directory / "pid"),
        "--host", f"unix://{directory / 'sock'}",
        "--storage-driver", "vfs",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--config-file", str(directory / "daemon.json"),
        # Its own namespaces, should it use a containerd the machine runs.
        "--containerd-namespace", "ocistore-test",
        "--containerd-plugins-namespace", "ocistore-test-plugins",
        *daemon_args,
    ]  # fmt: skip
    (directory / "daemon.json").write_text("{}\n")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_ready(notify, proc, log)
        notify.close()
        yield DockerEngine(directory, docker)
    finally:
        notify.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Whatever of its session is left (the containerd it started): gone too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def static_busybox() -> Path:
    """Debian's static busybox (``busybox-static``), which ``RUN`` steps run in images
    built from scratch; skips (fails under CI) when it is missing."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        with contextlib.suppress(OSError), open(path, "rb") as f:
            head = f.read(4096)
            # A static executable names no program interpreter (ld-linux) in its header.
            if head.startswith(b"\x7fELF") and b"/ld-linux" not in head:
                return path
    _missing("a static busybox (Debian's busybox-static) is not installed")
    raise AssertionError  # not reached
