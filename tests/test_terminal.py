"""How the command behaves on a terminal and with large input: progress shows on a
terminal only, fits its width (and follows its resizes), ends cleanly on Ctrl-C, and
loading a large layer keeps memory flat."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import tarfile
import termios
from collections.abc import Callable
from pathlib import Path

from util import make_tar

OCISTORE = Path(sys.executable).parent / "ocistore"


def run_on_terminal(args: list[str]) -> tuple[int, str]:
    """Run ocistore with stdout and stderr on a pseudo-terminal; returns (code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execv(str(OCISTORE), [str(OCISTORE), *args])
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def docker_archive(path: Path, layer: Path) -> None:
    """A one-image docker-archive around a layer tar on disk (streamed, never in memory)."""
    h = hashlib.sha256()
    with open(layer, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    config = (
        b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers",'
        b'"diff_ids":["sha256:' + h.hexdigest().encode() + b'"]}}'
    )
    manifest = b'[{"Config":"config.json","RepoTags":["big:1"],"Layers":["layer.tar"]}]'
    with tarfile.open(path, "w") as tf:
        for name, data in (("config.json", config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.add(layer, "layer.tar")


def small_archive(tmp_path: Path) -> Path:
    layer = tmp_path / "small-layer.tar"
    layer.write_bytes(make_tar({"data": os.urandom(1 << 20)}))
    archive = tmp_path / "img.tar"
    docker_archive(archive, layer)
    return archive


#: Starts ocistore and reports its exit code and peak RSS (KiB). It runs in a small
#: process of its own: a child's ru_maxrss counts its parent's memory at the fork (and
#: pytest's grows over a run), which would be measured instead of ocistore's.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_kib(args: list[str]) -> tuple[int, int]:
    """Run ocistore; returns its exit code and its own peak RSS (KiB, from wait4)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(OCISTORE), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_progress_shows_on_a_terminal_and_not_with_quiet(tmp_path: Path) -> None:
    archive = small_archive(tmp_path)
    root = tmp_path / "store"
    code, screen = run_on_terminal(["--root", str(root), "load", "-i", str(archive)])
    assert code == 0, screen
    assert ": Loading layer [" in screen and "/s" in screen  # per-layer bar, overall rate
    assert "Loaded image: big:1" in screen
    code, screen = run_on_terminal(["--root", str(root), "load", "-q", "-i", str(archive)])
    assert code == 0, screen
    assert "/s" not in screen
    assert "Loaded image: big:1" in screen


def test_progress_stays_off_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    archive = small_archive(tmp_path)
    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "load", "-i", archive],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert proc.stdout == "Loaded image: big:1\n"


def test_loading_and_saving_a_large_layer_keeps_memory_flat(tmp_path: Path) -> None:
    """A 512 MiB layer goes in and out while the process stays well under 100 MiB."""
    size = 512 << 20
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tf, open("/dev/zero", "rb") as zero:
        info = tarfile.TarInfo("big")
        info.size = size
        tf.addfile(info, zero)
    archive = tmp_path / "img.tar"
    docker_archive(archive, layer)
    layer.unlink()
    root = str(tmp_path / "store")
    code, peak = peak_rss_kib(["--root", root, "load", "-q", "-i", str(archive)])
    assert code == 0
    assert peak < 100 * 1024, f"load: peak RSS {peak} KiB"
    archive.unlink()
    out = tmp_path / "out.tar"
    code, peak = peak_rss_kib(["--root", root, "save", "-q", "-o", str(out), "big:1"])
    assert code == 0
    assert peak < 100 * 1024, f"save: peak RSS {peak} KiB"
    assert out.stat().st_size > size


# -- the progress display: its width, its labels, its end ---------------------------------

#: What a terminal acts on in the display's output: CSI sequences (cursor up, erase).
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: A layer's line (``0123456789ab: Loading layer [=>  ] 1.2MB/3.4MB``, narrow: ``Loading la…``)
#: and the overall one.
_ITEM = re.compile(r"^([0-9a-f]{12}): (Loading|Saving) ")
_OVERALL = re.compile(r"^Total: \d+/\d+ done .*B/s$")


def visible_lines(output: str) -> list[str]:
    """What each drawn line shows: the output split at CR and LF, escapes left out."""
    return [line for line in re.split(r"[\r\n]", _CSI.sub("", output)) if line]


def screen_rows(output: str, columns: int) -> list[str]:
    """The rows a terminal ``columns`` wide shows after ``output`` (CR, LF, cursor up,
    erase to the end of the line or of the screen; autowrap), trailing blank rows cut."""
    rows: list[list[str]] = [[]]
    row = col = 0
    for token in re.split(r"(\x1b\[[0-9;?]*[A-Za-z]|[\r\n])", output):
        if token == "\r":
            col = 0
        elif token == "\n":
            row += 1
        elif token.startswith("\x1b["):
            arg, op = token[2:-1], token[-1]
            if op == "A":
                row = max(row - int(arg or 1), 0)
            elif op == "K":
                del rows[row][col:]
            elif op == "J":
                del rows[row][col:]
                del rows[row + 1 :]
        else:
            for c in token:
                if col >= columns:
                    row, col = row + 1, 0
                while len(rows) <= row:
                    rows.append([])
                line = rows[row]
                line.extend(" " * (col - len(line)))
                line[col : col + 1] = [c]
                col += 1
        while len(rows) <= row:
            rows.append([])
    shown = ["".join(r).rstrip() for r in rows]
    while shown and not shown[-1]:
        shown.pop()
    return shown


class Terminal:
    """ocistore with stdout and stderr on a pseudo-terminal of a given size, the
    terminal its controlling one (so Ctrl-C typed there interrupts it), and stdin a
    pipe the test writes to (or a file)."""

    def __init__(self, args: list[str], columns: int, stdin: int | None = None) -> None:
        self.master, slave = pty.openpty()
        self.resize(columns)
        self.proc = subprocess.Popen(
            [str(OCISTORE), *args],
            stdin=subprocess.PIPE if stdin is None else stdin,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(1, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output = b""

    def resize(self, columns: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def feed(self, data: bytes) -> None:
        """Write ``data`` to the program's stdin."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(
                f"it stopped reading: {self.finish()}, {self.screen()!r}"
            ) from None

    def screen(self) -> str:
        return self.output.decode(errors="replace")

    def read_until(self, done: Callable[[str], bool]) -> None:
        """Read the terminal until ``done(all output so far)``; fails at the end of the
        output (a generous time limit only guards against a hang)."""
        while not done(self.screen()):
            ready, _, _ = select.select([self.master], [], [], 120)
            assert ready, f"no output in 120 s; so far: {self.screen()!r}"
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the program has ended and closed the terminal
                data = b""
            assert data, f"the output ended first: {self.screen()!r}"
            self.output += data

    def finish(self) -> int:
        """Read to the end of the output; the exit code."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.output += data
        os.close(self.master)
        return self.proc.wait()


def layered_archive(path: Path, sizes: list[int]) -> list[str]:
    """A docker-archive of one image (``big:1``) whose layers hold ``sizes`` bytes of
    noise, members named as docker save names them (64 hex); returns the DiffIDs."""
    layers = [make_tar({f"f{i}": os.urandom(n)}) for i, n in enumerate(sizes)]
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["big:1"], "Layers": names}])
    members = [("config.json", config), ("manifest.json", manifest.encode())]
    members += zip(names, layers, strict=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return diff_ids


def check_fits(lines: list[str], columns: int) -> None:
    too_wide = [line for line in lines if len(line) > columns]
    assert not too_wide, f"lines wider than {columns} columns: {too_wide}"


def test_progress_fits_the_terminal_with_a_line_per_layer_and_an_overall_line(
    tmp_path: Path,
) -> None:
    archive = tmp_path / "img.tar"
    diff_ids = layered_archive(archive, [3 << 20, 2 << 20, 1 << 20])
    shorts = {d[7:19] for d in diff_ids}
    for columns in (80, 40):
        root = tmp_path / f"store{columns}"
        term = Terminal(["--root", str(root), "load", "-i", str(archive)], columns)
        assert term.finish() == 0, term.screen()
        lines = visible_lines(term.screen())
        check_fits(lines, columns)
        assert lines[-1] == "Loaded image: big:1"
        # A line per layer, named by its short DiffID (not the archive's member name).
        assert {m[1] for line in lines if (m := _ITEM.match(line))} == shorts
        assert str(archive) not in term.screen() and "layer.tar" not in term.screen()
        # What stays on the screen: a finished line per layer, then the overall line.
        rows = screen_rows(term.screen(), columns)
        assert rows[-1] == "Loaded image: big:1"
        assert re.match(r"^Total: 3/3 done ", rows[-2]), rows
        assert {m[1] for row in rows[:-2] if (m := _ITEM.match(row))} == shorts, rows


def test_load_and_save_label_layers_alike(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    layered_archive(archive, [1 << 20, 1 << 20])
    root = str(tmp_path / "store")
    labels: dict[str, set[str]] = {}
    for verb, args in (
        ("Loading", ["load", "-i", str(archive)]),
        ("Saving", ["save", "-o", str(tmp_path / "out.tar"), "big:1"]),
    ):
        term = Terminal(["--root", root, *args], 80)
        assert term.finish() == 0, term.screen()
        found = [m for line in visible_lines(term.screen()) if (m := _ITEM.match(line))]
        assert {m[2] for m in found} == {verb}
        labels[verb] = {m[1] for m in found}
        assert any(_OVERALL.match(line) for line in visible_lines(term.screen()))
    assert labels["Loading"] == labels["Saving"] and len(labels["Saving"]) == 2


def _drawn_since(term: Terminal, start: int, columns: int) -> Callable[[str], bool]:
    """Whether the output after ``start`` holds a whole redraw (each ends by erasing
    what is below it) whose every line fits ``columns``."""

    def done(screen: str) -> bool:
        frames = screen[start:].split("\x1b[J")[:-1]
        return any(
            (lines := visible_lines(f))
            and all(len(line) <= columns for line in lines)
            and _OVERALL.match(lines[-1])
            for f in frames
        )

    return done


def test_progress_follows_a_resize(tmp_path: Path) -> None:
    """Narrowed mid-import (stdin a pipe the test feeds, so the import waits for it),
    the display redraws at the new width at once, with no more input."""
    tarball = make_tar({"data": os.urandom(4 << 20)})
    term = Terminal(["--root", str(tmp_path / "store"), "import", "-", "big:2"], 100)
    term.feed(tarball[: 1 << 20])
    term.read_until(lambda screen: "Loading layer" in screen and "Total:" in screen)
    start = len(term.screen())
    term.resize(40)
    os.kill(term.proc.pid, signal.SIGWINCH)
    term.read_until(_drawn_since(term, start, 40))
    narrow = len(term.screen())  # from here on, everything drawn fits 40 columns
    term.feed(tarball[1 << 20 :])
    assert term.finish() == 0, term.screen()
    check_fits(visible_lines(term.screen()[:narrow]), 100)
    after = [
        line for line in visible_lines(term.screen()[narrow:]) if not line.startswith("sha256:")
    ]
    check_fits(after, 40)
    assert _OVERALL.match(after[-1]) and after[-1].startswith("Total: 1/1 done"), after


def test_ctrl_c_mid_import_leaves_the_terminal_clean(tmp_path: Path) -> None:
    term = Terminal(["--root", str(tmp_path / "store"), "import", "-", "big:3"], 80)
    term.feed(make_tar({"data": os.urandom(2 << 20)})[: 1 << 20])
    term.read_until(lambda screen: "Loading layer" in screen and "Total:" in screen)
    os.write(term.master, b"\x03")  # Ctrl-C, typed on the terminal
    # Told before its standard input ends: an end first would be a cut tar, not a Ctrl-C.
    term.read_until(lambda screen: "interrupted" in screen)
    assert term.finish() == 130, term.screen()
    rows = screen_rows(term.screen(), 80)
    # The display's lines whole and ended, then the error on a line of its own (the
    # terminal's echo of ^C cleared); the cursor never hidden.
    assert rows[-1] == "ocistore: interrupted", rows
    assert re.match(r"^Loading layer +\S+B$", rows[-3]), rows
    assert _OVERALL.match(rows[-2]) and rows[-2].startswith("Total: 0/1 done"), rows
    assert "\x1b[?25l" not in term.screen()
    check_fits(visible_lines(term.screen()), 80)


def test_the_display_keeps_within_a_small_screen() -> None:
    """Eight items on a screen 6 rows by 30 columns: what does not fit is counted."""
    from ocistore.cli.progress import TerminalProgress

    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 6, 30, 0, 0))
    with os.fdopen(slave, "w") as stream:
        progress = TerminalProgress(True, stream)
        tasks = [progress.task(f"{i:012x}: Loading layer", 1000) for i in range(8)]
        for task in tasks:
            task.update(1000)
        tasks[0].finish()
        progress.close()
    # The writer's side closed: everything it wrote is read, to the end, however late the
    # kernel hands it over.
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the other side closed and all was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    output = b"".join(chunks).decode()
    os.close(master)
    check_fits(visible_lines(output), 30)
    rows = screen_rows(output, 30)
    assert len(rows) == 6 and rows[0].startswith("000000000000: Load"), rows
    assert rows[-2] == "... and 4 more" and rows[-1].startswith("Total: "), rows
