"""``ocistore serve`` as the tests run it: a subprocess on 127.0.0.1, its port learnt from
the first line it prints.

:func:`started_serve` runs ``ocistore --root ROOT serve --addr 127.0.0.1:0 ARGS…`` and
blocks on its first line of standard output, ``serving on http://127.0.0.1:PORT``
(``https://`` with ``--tls-cert``), which it prints once its socket listens: an event, not
a sleep (the time allowed is a bound on a failure only). The block's object gives the
address (:attr:`ServeProcess.url`, :attr:`~ServeProcess.host`, :attr:`~ServeProcess.port`)
and what the server said (:meth:`~ServeProcess.log_text`, :meth:`~ServeProcess.wait_for_log`).
At the end it is sent SIGTERM and waited for (killed, with its process group, when it
does not stop in time), and, when the block ended normally, its exit status must be 0.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import pytest
from util import OCISTORE

#: Seconds the server is given to say it listens (a loaded 2-core machine imports slowly)
#: and to stop after SIGTERM: bounds on a failure, never waits on success.
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0

_LISTENING = re.compile(
    r"serving on (?P<scheme>https?)://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d+)"
)


class ServeProcess:
    """A running ``ocistore serve`` and what it printed."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        #: ``http`` or ``https``.
        self.scheme = ""
        #: The address it listens on, as printed (``127.0.0.1``).
        self.hostname = ""
        self.port = 0
        #: The first line of standard output, as printed.
        self.first_line: str | None = None
        #: Its exit status once stopped (None while it runs).
        self.returncode: int | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._stdout_done = False
        self._readers = [
            threading.Thread(
                target=self._read, args=(stream, name), name=f"serve-{name}", daemon=True
            )
            for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as it goes in an image reference."""
        return f"{self.hostname}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        return f"{self.scheme}://{self.host}"

    def _read(self, stream: IO[bytes] | None, name: str) -> None:
        assert stream is not None
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace")
                with self._changed:
                    if name == "stdout" and self.first_line is None:
                        self.first_line = line.rstrip("\n")
                    self._lines.append(line if name == "stderr" else f"[stdout] {line}")
                    self._changed.notify_all()
        with self._changed:
            if name == "stdout":
                self._stdout_done = True
            self._changed.notify_all()

    def _wait_listening(self) -> None:
        with self._changed:
            settled = self._changed.wait_for(
                lambda: self.first_line is not None or self._stdout_done, START_TIMEOUT
            )
            first = self.first_line
        if not settled:
            pytest.fail(
                f"ocistore serve did not say it listens in {START_TIMEOUT:.0f} s:\n"
                + self.log_text()
            )
        if first is None:  # (its output ended: it exits, or has)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
            self._reap()
            pytest.fail(f"ocistore serve exited {self.proc.returncode}:\n{self.log_text()}")
        match = _LISTENING.fullmatch(first or "")
        if match is None:
            pytest.fail(f"ocistore serve's first line is not its address: {first!r}")
        self.scheme = match["scheme"]
        self.hostname = match["host"]
        self.port = int(match["port"])

    def log_text(self) -> str:
        """What it printed so far: standard error, and standard output's lines marked
        ``[stdout]`` (a thread reads them as they come)."""
        with self._changed:
            return "".join(self._lines)

    def wait_for_log(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> str:
        """Block until ``text`` is in its output ``count`` times (woken at each line);
        fails the test if not within ``timeout`` seconds. Returns the output."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: "".join(self._lines).count(text) >= count, timeout
            ):
                pytest.fail(f"ocistore serve did not print {text!r} {count} times:\n"
                            + "".join(self._lines))  # fmt: skip
            return "".join(self._lines)

    def connection(
        self, timeout: float = 60.0, context: ssl.SSLContext | None = None
    ) -> http.client.HTTPConnection:
        """A new ``http.client`` connection to it (HTTPS with ``context``, or an unverified
        one, when it serves TLS)."""
        if self.scheme == "https":
            if context is None:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(
                self.hostname.strip("[]"), self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.hostname.strip("[]"), self.port, timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, then wait (SIGKILL to its process group past :data:`STOP_TIMEOUT`);
        its exit status (negative: the signal that ended it). A second call does nothing."""
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with self._changed:
                        self._lines.append(f"--- not stopped in {STOP_TIMEOUT:.0f} s: killed\n")
            self._reap()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        # Its process group first, then the reaping: never the other way round (once
        # reaped, its ID may be another process's).
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for reader in self._readers:
            reader.join(STOP_TIMEOUT)
        self.returncode = self.proc.returncode


@contextlib.contextmanager
def started_serve(
    root: Path,
    *args: str | Path,
    addr: str = "127.0.0.1:0",
    env: Mapping[str, str] | None = None,
    check_exit: bool = True,
) -> Iterator[ServeProcess]:
    """Run ``ocistore --root ROOT serve --addr ADDR ARGS…`` (``env`` added to this
    process's environment, less ``OCISTORE_ROOT``) until the block ends; yields it once it
    listens. When the block ends normally and ``check_exit``, the server must have exited
    0 after SIGTERM (the test fails with its output otherwise)."""
    argv = [str(OCISTORE), "--root", str(root), "serve", "--addr", addr, *(str(a) for a in args)]
    full_env = {k: v for k, v in os.environ.items() if k != "OCISTORE_ROOT"}
    full_env.update(env or {})
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        start_new_session=True,
    )
    server = ServeProcess(proc, argv)
    try:
        server._wait_listening()
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    if check_exit and code != 0:
        pytest.fail(f"ocistore serve exited {code} after SIGTERM:\n{server.log_text()}")
