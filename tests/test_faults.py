"""I/O errors and full disks (issue 10): a command that cannot write fails cleanly.

Two ways of making writes fail:

* **Injected errors.** A command is run to the end once under ``strace`` to count its
  calls (per thread), then again on a fresh copy of its store for each of an even spread
  of N with ``strace -f -e inject=<call>:error=<errno>:when=N``: ``ENOSPC`` on
  ``write``/``pwrite64`` and on ``mkdir``, ``EIO`` on ``fsync``/``fdatasync`` and on
  ``rename``/``renameat``/``renameat2``/``link``/``linkat`` (whichever the command
  makes). ``3 × OCISTORE_CAMPAIGN_SCALE`` points of each call (``1 ×`` of mkdir), first,
  middle and last included: the middle one falls in the publishing step.
* **Real small file systems** (as root): a tmpfs and a loop-mounted ext4 image, the
  store on them, filled with a file so that the space left is 0, 4 KiB, half a layer and
  just short of what the command needs (and ``2 × (scale - 1)`` levels more in between),
  before an ``import`` or a ``load`` of an image of a few MB; then the fill is removed and
  the command run again.

Every failure must be one line on standard error (``ocistore: …``), exit 1, no
traceback; the store is as it was (byte for byte, :func:`util.snapshot`, but for the
store's own empty directories such as ``imagedb/metadata/sha256``, made when first
needed) or wholly changed, never holds a blob shorter or other than its digest
(:func:`invariants.problems`), and ``tmp/`` is empty; the same command run again without
the fault succeeds and leaves the image whole (``fsck`` clean). Three tests look at each
injected case: harm (all of that but the next two), leftovers (what a failed command
published and did not undo, though no image names it), and naming (the line names the
file or the stream that failed, not only the error: item 8 of the issue). On the small
file systems one test asks all three at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import invariants
import pytest
from test_crash import (
    COMMANDS,
    SCALE,
    WORKERS,
    Cli,
    Command,
    Corpus,
    Reference,
    build_corpus,
    fresh_store,
    inject_argv,
    make_cli,
    normalized,
    outcome_problems,
    reference_run,
    require_root_tool,
    spread,
)
from util import snapshot

#: The faults: a name, the calls it is injected into, the error, the points per scale.
FAULTS = {
    "write-ENOSPC": (("write", "pwrite64", "pwritev", "writev"), "ENOSPC", 3),
    "sync-EIO": (("fsync", "fdatasync"), "EIO", 3),
    "publish-EIO": (("rename", "renameat", "renameat2", "link", "linkat"), "EIO", 3),
    "mkdir-ENOSPC": (("mkdir", "mkdirat"), "ENOSPC", 1),
}
FAULT_CALLS = tuple(c for calls, _, _ in FAULTS.values() for c in calls)
#: Where every call is a fault point, whatever the scale: the fsyncs of one import, in the
#: publishing step all loads share. (A directory's fsync failing after a link or rename
#: has put the entry in place is where undoing is hardest; at a spread of three, only a
#: soak came across the one that left an image without its layer.)
EVERY_POINT = {("import", "sync-EIO")}
#: The commands faults are injected into (the writes a full disk can hit).
FAULT_COMMANDS = {c.name: c for c in COMMANDS}
FAULTED = ["import", "load-docker-archive", "load-oci-layout", "load-stdin-gzip", "save-docker"]
#: A line that names what failed: an absolute path somewhere in it, or the standard stream.
_NAMES_A_PATH = re.compile(r"(^|[\s'\"(])/[^\s:'\"]+|standard (output|input|error)")
#: The store's own directories, made when first needed: not a change when they appear.
SKELETON = frozenset(
    {
        "tmp",
        "blobs",
        "blobs/sha256",
        "layerdb",
        "layerdb/sha256",
        "imagedb",
        "imagedb/content",
        "imagedb/content/sha256",
        "imagedb/metadata",
        "imagedb/metadata/sha256",
    }
)


def store_snapshot(root: Path) -> dict[str, object]:
    """:func:`util.snapshot` without the store's own empty directories."""
    return {k: v for k, v in snapshot(root).items() if not (k in SKELETON and v == "dir")}


#: A failure that harms the store or the user (the first test of each case).
HARM = "harm"
#: The cases that fail today (xfail marks), for the harm and the leftover test alike.
KNOWN: dict[tuple[str, str], list[pytest.MarkDecorator]] = {}
#: What a failed command left of its change, whole but not undone: files no image names,
#: or an image published but never tagged (the second test).
LEFTOVER = "leftover"
#: An error line that names no file or step (the third).
NAMING = "naming"


class Failure(NamedTuple):
    kind: str
    line: str


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    require_root_tool("strace")
    return make_cli(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def corpus(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(cli, tmp_path_factory.mktemp("corpus"))


def check_failed_command(
    cli: Cli,
    root: Path,
    proc: subprocess.CompletedProcess[str],
    before: dict[str, object],
    ref: Reference,
    where: str,
    out: Path | None,
    retry: list[str],
    stderr_failed: bool = False,
    stdin: Path | None = None,
) -> list[Failure]:
    """What must hold after a command failed on a write: one line, exit 1, the store as it
    was or wholly changed and sound, and a retry (``retry``, without the fault) succeeds."""
    failures: list[Failure] = []

    def fail(kind: str, msg: str) -> None:
        failures.append(Failure(kind, f"{where}: {msg}"))

    lines = proc.stderr.splitlines()
    if stderr_failed:
        # The fault hit the error message itself (strace counts per thread: the main
        # thread's N-th write was that line): only the exit status can tell.
        if proc.returncode == 0:
            fail(HARM, "exited 0")
    elif proc.returncode != 1:
        fail(HARM, f"exited {proc.returncode}, not 1: {proc.stderr.strip()[-2000:]}")
    if stderr_failed:
        pass
    elif "Traceback" in proc.stderr:
        fail(HARM, f"a traceback: {proc.stderr.strip()[-2000:]}")
    elif len(lines) != 1 or not lines[0].startswith("ocistore: "):
        fail(HARM, f"not one line 'ocistore: …' on stderr: {lines}")
    elif not _NAMES_A_PATH.search(lines[0]):
        fail(NAMING, f"the line names no file or step: {lines[0]!r}")
    for p in invariants.problems(root):
        fail(HARM, p)
    if not invariants.tmp_is_empty(root):
        fail(HARM, f"tmp/ after the failure: {invariants.tmp_entries(root)}")
    after = store_snapshot(root)
    now = normalized(invariants.state(root), ref.known)
    if after != before and now != ref.done:
        changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
        # Leftovers: the images and references as they were, and the store sound (what
        # changed is files no image names, published before the fault, garbage for gc).
        # Or the images whole and the references all set or all not: an image published
        # but not tagged. Else harm: a half-made change.
        kind = HARM if outcome_problems(ref.before, ref.done, now) else LEFTOVER
        fail(kind, f"the store is neither as it was nor wholly changed: {changed}")
    if out is not None and os.listdir(out):
        fail(HARM, f"a failed save left {sorted(os.listdir(out))}")
    proc = cli.run(root, *retry, stdin=stdin)
    if proc.returncode != 0:
        fail(HARM, f"the retry exited {proc.returncode}: {proc.stderr.strip()}")
    elif normalized(invariants.state(root), ref.known)["refs"] != ref.done["refs"]:
        # (The references only: an import that had published its image before the fault
        # makes a second one when retried, its creation time being another.)
        fail(HARM, f"after the retry: {invariants.state(root)}, not {ref.done}")
    for p in invariants.problems(root):
        fail(HARM, f"after the retry: {p}")
    proc = cli.run(root, "fsck")
    if proc.returncode != 0:
        fail(HARM, f"fsck after the retry: {proc.stdout.strip()} {proc.stderr.strip()}")
    return failures


# -- injected errors -----------------------------------------------------------------------


class FaultResults(NamedTuple):
    points: list[tuple[str, int]]
    injected: int
    failures: list[Failure]

    def lines(self, kind: str) -> list[str]:
        return [f.line for f in self.failures if f.kind == kind]


def fault_run(
    cli: Cli,
    corpus: Corpus,
    cmd: Command,
    ref: Reference,
    work: Path,
    call: str,
    errno_name: str,
    when: int,
) -> tuple[bool, list[Failure]]:
    point = work / f"{call}-{errno_name}-{when}"
    point.mkdir()
    root = fresh_store(cmd.template(corpus), point / "store")
    cli.ok(root, "images")
    before = store_snapshot(root)
    out = point / "out"
    out.mkdir()
    log = point / "strace.log"
    argv = cmd.argv(corpus, out)
    fault = inject_argv([call], f"error={errno_name}", when, log)
    proc = cli.run(root, *argv, strace=fault, stdin=cmd.input(corpus))
    where = f"{cmd.name} with {call} #{when} failing with {errno_name}"
    injected = [line for line in log.read_text().splitlines() if line.endswith("(INJECTED)")]
    stderr_failed = any(re.search(r"\bwrite\(2,", line) for line in injected)
    if not injected:
        # Not reached (a thread made fewer calls this time): an ordinary run.
        if proc.returncode != 0:
            return False, [Failure(HARM, f"{where}: not injected, exited {proc.returncode}")]
        shutil.rmtree(point)
        return False, []
    if cmd.output:
        # A save is retried into a fresh directory, so that its output is checked alone.
        shutil.rmtree(out)
        out.mkdir()
        retry = argv
        failures = check_failed_command(
            cli, root, proc, before, ref, where, out, retry, stderr_failed
        )
    else:
        failures = check_failed_command(
            cli, root, proc, before, ref, where, None, argv, stderr_failed, cmd.input(corpus)
        )
    if cmd.output and (out / cmd.output).read_bytes() != ref.output:
        failures.append(Failure(HARM, f"{where}: the retried save differs"))
    if not failures:
        shutil.rmtree(point)
    return True, failures


def fault_campaign(
    cli: Cli, corpus: Corpus, cmd: Command, ref: Reference, fault: str, work: Path
) -> FaultResults:
    calls, errno_name, per_scale = FAULTS[fault]
    every = (cmd.name, fault) in EVERY_POINT
    points = [
        (call, when)
        for call in calls
        for when in spread(ref.counts.get(call, 0), 1000 if every else per_scale * SCALE)
    ]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        runs = list(
            pool.map(
                lambda p: fault_run(cli, corpus, cmd, ref, work, p[0], errno_name, p[1]), points
            )
        )
    return FaultResults(points, sum(i for i, _ in runs), [f for _, fs in runs for f in fs])


@pytest.fixture(scope="module")
def faults(
    cli: Cli, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], FaultResults]:
    """Each (command, fault) campaign, run once for both tests that look at it."""
    refs: dict[str, Reference] = {}
    done: dict[tuple[str, str], FaultResults] = {}

    def get(name: str, fault: str) -> FaultResults:
        cmd = FAULT_COMMANDS[name]
        if name not in refs:
            work = tmp_path_factory.mktemp(f"{name}-reference")
            refs[name] = reference_run(cli, corpus, cmd, work, FAULT_CALLS, opened=True)
        if (name, fault) not in done:
            work = tmp_path_factory.mktemp(f"{name}-{fault}")
            done[(name, fault)] = fault_campaign(cli, corpus, cmd, refs[name], fault, work)
        return done[(name, fault)]

    return get


FAULT_CASES = [
    (name, fault)
    for name in FAULTED
    for fault in FAULTS
    # A save writes no directory and syncs nothing (an export, as docker save -o); a load
    # from a pipe differs from one from a file in its spooling (writes) only.
    if not (name.startswith("save") and fault in ("mkdir-ENOSPC", "sync-EIO"))
    and not (name == "load-stdin-gzip" and fault != "write-ENOSPC")
]


def _report(results: FaultResults, lines: list[str]) -> str:
    return f"{len(lines)} failures over {len(results.points)} faults:\n" + "\n".join(lines)


KNOWN_CASES = [
    pytest.param(n, f, id=f"{n}-{f}", marks=KNOWN.get((n, f), [])) for n, f in FAULT_CASES
]


@pytest.mark.parametrize(("name", "fault"), KNOWN_CASES)
def test_an_injected_error_fails_cleanly_and_a_retry_succeeds(
    name: str, fault: str, faults: Callable[[str, str], FaultResults]
) -> None:
    results = faults(name, fault)
    assert results.points, f"{name} makes none of {FAULTS[fault][0]}"
    assert results.injected * 2 >= len(results.points), results
    harm = results.lines(HARM)
    assert not harm, _report(results, harm)


@pytest.mark.parametrize(("name", "fault"), KNOWN_CASES)
def test_an_injected_error_leaves_the_store_as_it_was_or_wholly_changed(
    name: str, fault: str, faults: Callable[[str, str], FaultResults]
) -> None:
    """Byte for byte (:func:`store_snapshot`): not even a blob no image names stays."""
    results = faults(name, fault)
    left = results.lines(LEFTOVER)
    assert not left, _report(results, left)


@pytest.mark.parametrize(("name", "fault"), FAULT_CASES, ids=[f"{n}-{f}" for n, f in FAULT_CASES])
def test_an_injected_error_names_what_failed(
    name: str, fault: str, faults: Callable[[str, str], FaultResults]
) -> None:
    results = faults(name, fault)
    unnamed = results.lines(NAMING)
    assert not unnamed, _report(results, unnamed)


# -- real small file systems ---------------------------------------------------------------


FS_SIZE = 32 << 20
#: The layers of the images loaded onto the small file systems: a few MB in all.
FS_LAYER = 1_500_000


def _run_root(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        reason = f"{' '.join(cmd)}: {proc.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@contextlib.contextmanager
def small_fs(kind: str, base: Path) -> Iterator[Path]:
    """A file system of :data:`FS_SIZE` bytes mounted at ``base/mnt``, unmounted after."""
    require_root_tool("mount", root=True)
    mnt = base / "mnt"
    mnt.mkdir()
    image = base / "ext4.img"
    if kind == "tmpfs":
        _run_root(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(mnt)])
    else:
        require_root_tool("mkfs.ext4", root=True)
        with open(image, "wb") as f:
            f.truncate(FS_SIZE)
        _run_root(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
        _run_root(["mount", "-o", "loop", str(image), str(mnt)])
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], timeout=120).returncode != 0:
            # Busy (a command of the test still running after a failure): detach it now,
            # it goes when the last file closes, and the test fails.
            subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=120)
            pytest.fail(f"{mnt} was busy at the end of the test")
        image.unlink(missing_ok=True)
        mnt.rmdir()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def wipe(mnt: Path) -> None:
    for p in mnt.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def fill(path: Path, leave: int) -> int:
    """Take all the free space of ``path``'s file system but ``leave`` bytes, with one
    allocated file; returns the space left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = max(0, free_bytes(path.parent) - leave)
        while size > 0:
            try:
                os.posix_fallocate(fd, 0, size)
                break
            except OSError:
                size -= 64 << 10  # the file's own extent blocks came out of the space
        os.fsync(fd)
    finally:
        os.close(fd)
    return free_bytes(path.parent)


class FsCase(NamedTuple):
    kind: str
    name: str


FS_COMMANDS = ["import", "load-docker-archive", "load-oci-layout"]
FS_CASES = [FsCase(k, n) for k in ("tmpfs", "ext4") for n in FS_COMMANDS]


@pytest.fixture(scope="module")
def big(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The campaign's images with layers of :data:`FS_LAYER` bytes."""
    return build_corpus(cli, tmp_path_factory.mktemp("big"), layer_size=FS_LAYER)


def levels(need: int) -> list[tuple[str, int]]:
    """How much space to leave: none, a block, half a layer, just short of the need, and
    more in between at a higher scale."""
    out = [("0", 0), ("4KiB", 4096), ("half a layer", FS_LAYER // 2)]
    out.append(("just short", max(0, need - (64 << 10))))
    extra = 2 * (SCALE - 1)
    out += [(f"{i}/{extra + 1} of the need", need * i // (extra + 1)) for i in range(1, extra + 1)]
    return out


@pytest.mark.parametrize("case", FS_CASES, ids=[f"{c.kind}-{c.name}" for c in FS_CASES])
def test_a_full_file_system_fails_cleanly_and_a_retry_succeeds(
    case: FsCase, cli: Cli, big: Corpus, tmp_path: Path
) -> None:
    cmd = FAULT_COMMANDS[case.name]
    with small_fs(case.kind, tmp_path) as mnt:
        # What the command needs on this file system: the space a whole run takes.
        root = fresh_store(cmd.template(big), mnt / "store")
        cli.ok(root, "images")
        known = frozenset(invariants.image_ids(root))
        before_state = normalized(invariants.state(root), known)
        free = free_bytes(mnt)
        cli.ok(root, *cmd.argv(big, tmp_path))
        need = free - free_bytes(mnt)
        done = normalized(invariants.state(root), known)
        ref = Reference(before_state, done, {}, None, known)
        failures: list[Failure] = []
        outcomes: dict[str, Any] = {}
        for label, leave in levels(need):
            wipe(mnt)
            root = fresh_store(cmd.template(big), mnt / "store")
            cli.ok(root, "images")
            before = store_snapshot(root)
            left = fill(mnt / "fill", leave)
            proc = cli.run(root, *cmd.argv(big, tmp_path))
            where = f"{case.kind} {case.name} with {left} bytes free ({label}; it needs {need})"
            if proc.returncode == 0:
                outcomes[label] = "succeeded"
                if normalized(invariants.state(root), known) != done:
                    failures.append(Failure(HARM, f"{where}: exit 0 but {invariants.state(root)}"))
                failures += [
                    Failure(HARM, f"{where}: exit 0 but {p}") for p in invariants.problems(root)
                ]
                if not invariants.tmp_is_empty(root):
                    tmp = invariants.tmp_entries(root)
                    failures.append(Failure(HARM, f"{where}: exit 0 but tmp/ holds {tmp}"))
                continue
            outcomes[label] = proc.stderr.strip()
            (mnt / "fill").unlink()
            failures += check_failed_command(
                cli, root, proc, before, ref, where, None, cmd.argv(big, tmp_path)
            )
        # Every kind at once: harm, leftovers, a line that names nothing (none is known).
        lines = [f.line for f in failures]
        assert not lines, f"{len(lines)} failures:\n" + "\n".join(lines) + f"\noutcomes: {outcomes}"
        # At least the emptiest disk made the command fail: the case tests a full disk.
        assert outcomes["0"] != "succeeded", outcomes
        wipe(mnt)
