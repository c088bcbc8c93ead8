"""Crash points (issue 10): the command is killed at every publish and delete step.

Each command the store offers for writing (``import``, ``load`` of a docker-archive, an
OCI layout, an oci-archive and a gzip docker-archive on standard input, ``tag``, ``rmi``,
``gc``, ``save -o``) is first run to the
end under ``strace`` to count, per thread, how often it makes each system call that
publishes or deletes something (``rename``/``renameat``/``renameat2``, ``link``/
``linkat``, ``fsync``/``fdatasync``, ``unlink``/``unlinkat``/``rmdir``, ``write``/
``pwrite64``, ``mkdir``). It is then run again, on a fresh copy of the same store, under
``strace -f -e inject=<call>:signal=KILL:when=N``: killed on entering its N-th such call
(strace counts per call and per thread), which is deterministic. After each kill:

* the store opens and ``ocistore fsck`` is clean, before any ``gc`` (what a crash leaves
  is garbage, never corruption; when ``fsck`` fails, ``ocistore images`` tells whether the
  store opens at all);
* every image and reference that was there before is there still, and the killed
  command's change is wholly visible or not at all: references are set or removed all at
  once, every image there is whole (its config, layers and blobs), and no reference
  points at a missing image (:func:`invariants.problems`, an independent reader);
* ``ocistore gc --grace 0`` changes none of that, leaves ``tmp/`` empty, and ``fsck``
  and the invariants are clean after it;
* a killed ``save -o FILE`` leaves FILE whole (the very bytes an uninterrupted save
  writes) or absent, and nothing else beside it; a killed ``save --format oci -o DIR``
  leaves DIR whole or without an ``index.json``, and saving again gives the whole layout
  and removes whatever the killed save left beside DIR.

Which calls are counted adapts to the code (a store that publishes with ``linkat``
instead of ``rename`` is killed at its ``linkat`` calls). The points are spread evenly
over each call's count, first and last included: up to ``3 × OCISTORE_CAMPAIGN_SCALE``
of each publishing call, ``2 ×`` of each deleting one, ``1 ×`` (the middle one) of the
others: about 110 kills at scale 1, and about 370 at a scale of 20 (``make soak``):
every call but some of the 18 to 25 fsyncs of an OCI load or save. Three tests look at
each command's kills: one for harm (a lost or half-made change), one for debris (what
``fsck`` reports before ``gc``, a temporary file beside a save's output), one for all or
nothing (no image left untagged, none untagged but not deleted). The commands run from a
compiled copy of the package (see :func:`make_cli`), so that a command starts in 70 ms
and not 150 ms where ``PYTHONDONTWRITEBYTECODE`` is set.

This module also holds the campaign's shared helpers (the command runner, the images and
stores, the strace counting), which :mod:`test_faults` imports.
"""

from __future__ import annotations

import collections
import compileall
import concurrent.futures
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import invariants
import pytest
from util import make_tar, snapshot

import ocistore

#: Every count of the campaign is multiplied by this (``make soak`` sets 20).
SCALE = max(1, int(os.environ.get("OCISTORE_CAMPAIGN_SCALE", "1") or "1"))
#: Crash points run four at a time, each on its own store (most of their time is spent
#: stopped in strace, so four keep a CI machine's two cores busy).
WORKERS = 4
#: The system calls a crash point may be put at, grouped as the kill loops take them.
PUBLISH_CALLS = ("rename", "renameat", "renameat2", "link", "linkat")
OTHER_CALLS = (
    "fsync",
    "fdatasync",
    "unlink",
    "unlinkat",
    "rmdir",
    "write",
    "pwrite64",
    "mkdir",
    "mkdirat",
)
CRASH_CALLS = PUBLISH_CALLS + OTHER_CALLS


def require_root_tool(name: str, root: bool = False) -> str:
    """The path of a tool the campaign needs (and root, when asked): skips without them,
    fails under CI=true."""
    path = shutil.which(name)
    reason = None
    if path is None:
        reason = f"{name} is not installed"
    elif root and os.geteuid() != 0:
        reason = "needs root (mount)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    assert path is not None
    return path


# -- the command ---------------------------------------------------------------------------


class Cli:
    """Runs ``python -m ocistore`` from a compiled copy of the package."""

    def __init__(self, pkg_parent: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCISTORE_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(pkg_parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["LC_ALL"] = "C.UTF-8"
        self.env = env

    def argv(self, root: Path, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "ocistore", "--root", str(root), *(str(a) for a in args)]

    def run(
        self,
        root: Path,
        *args: str | Path,
        strace: Sequence[str] = (),
        cwd: Path | None = None,
        stdin: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (standard input from ``stdin``, else empty)."""
        cmd = [*strace, *self.argv(root, *args)]
        with open(stdin or os.devnull, "rb") as f:
            return subprocess.run(
                cmd, stdin=f, capture_output=True, text=True, env=self.env, cwd=cwd, timeout=300
            )

    def ok(self, root: Path, *args: str | Path) -> str:
        proc = self.run(root, *args)
        assert proc.returncode == 0, f"ocistore {' '.join(map(str, args))}: {proc.stderr}"
        return proc.stdout


def make_cli(base: Path) -> Cli:
    """A copy of the ocistore package under test, with its bytecode compiled once.

    The environment of the project's shells sets ``PYTHONDONTWRITEBYTECODE``; without
    bytecode each of the campaign's thousand commands would compile ocistore again. The
    copy is the package as it is when the session starts, so a change made meanwhile in
    the working tree does not change the code under test halfway through a run.
    """
    src = Path(ocistore.__file__).resolve().parent
    dest = base / "pkg"
    shutil.copytree(src, dest / "ocistore", ignore=shutil.ignore_patterns("__pycache__"))
    assert compileall.compile_dir(dest / "ocistore", quiet=1)
    return Cli(dest)


# -- the images ----------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(dest: Path, name: str, layers: Sequence[bytes], compress: bool = True) -> Path:
    """An OCI layout of one image (gzip layers unless told otherwise), named ``name``."""

    def blob(data: bytes) -> str:
        p = dest / "blobs" / "sha256" / _sha(data)[7:]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return _sha(data)

    dest.mkdir(parents=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs = []
    for tar in layers:
        data = gzip.compress(tar, compresslevel=1, mtime=0) if compress else tar
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
        descs.append({"mediaType": media, "digest": blob(data), "size": len(data)})
    created = "2020-01-01T00:00:00Z"
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [_sha(t) for t in layers]},
            "history": [{"created": created, "comment": name} for _ in layers],
        },
        separators=(",", ":"),
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"io.containerd.image.name": name},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return dest


def tar_dir(src: Path, dest: Path) -> Path:
    """A tar of a directory's contents (an oci-archive of a layout)."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
    return dest


class Corpus(NamedTuple):
    """What the campaign loads, and the stores it starts from."""

    dir: Path
    #: A root file system tarball for ``import``.
    rootfs: Path
    #: An OCI layout (gzip layers; the bottom layer is the one ``base`` holds as a tar).
    layout: Path
    #: The same layout as an oci-archive.
    oci_archive: Path
    #: The same image as a docker-archive (plain layers), tagged ``campaign/docker:1``.
    docker_archive: Path
    #: The docker-archive compressed with gzip (spooled into ``tmp/`` when read from a pipe).
    docker_archive_gz: Path
    #: ``base:1``, imported.
    base: Path
    #: ``base`` with the layout loaded (``campaign/oci:1``), also tagged
    #: ``campaign/extra:1``.
    full: Path
    #: ``full`` with garbage: the blobs and layers of an image that is gone, and a file in
    #: ``tmp/``.
    garbage: Path
    #: The ID of ``campaign/oci:1``.
    oci_id: str


def build_corpus(cli: Cli, d: Path, layer_size: int = 150_000) -> Corpus:
    """Images with shared and unique layers, and the stores the campaign starts from."""
    rnd = random.Random(10)
    bottom = make_tar({"base/data": rnd.randbytes(layer_size)}, dirs=True)
    top = make_tar({"top/data": rnd.randbytes(layer_size), "top/text": b"campaign\n" * 500})
    rootfs = d / "rootfs.tar"
    rootfs.write_bytes(
        make_tar({"etc/hostname": b"imported\n", "usr/data": rnd.randbytes(layer_size)})
    )
    (d / "base.tar").write_bytes(bottom)
    layout = oci_layout(d / "layout", "campaign/oci:1", [bottom, top])
    oci_archive = tar_dir(layout, d / "oci-archive.tar")

    base = d / "store-base"
    cli.ok(base, "import", "-q", d / "base.tar", "base:1")
    full = d / "store-full"
    shutil.copytree(base, full, symlinks=True)
    cli.ok(full, "load", "-q", "-i", layout)
    cli.ok(full, "tag", "campaign/oci:1", "campaign/extra:1")
    oci_id = invariants.references(full)["campaign/oci:1"]

    scratch = d / "store-scratch"
    cli.ok(scratch, "load", "-q", "-i", layout)
    cli.ok(scratch, "tag", "campaign/oci:1", "campaign/docker:1")
    docker_archive = d / "docker-archive.tar"
    cli.ok(scratch, "save", "-o", docker_archive, "campaign/docker:1")
    docker_archive_gz = d / "docker-archive.tar.gz"
    docker_archive_gz.write_bytes(gzip.compress(docker_archive.read_bytes(), 1, mtime=0))

    # Garbage: every blob and layer of an image whose config and references are gone.
    gone = d / "store-gone"
    other = make_tar({"gone/data": rnd.randbytes(layer_size)})
    cli.ok(gone, "load", "-q", "-i", oci_layout(d / "layout-gone", "gone:1", [bottom, other]))
    garbage = d / "store-garbage"
    shutil.copytree(full, garbage, symlinks=True)
    for sub in ("blobs/sha256", "layerdb/sha256"):
        for p in (gone / sub).iterdir():
            if not (garbage / sub / p.name).exists():
                if p.is_dir():
                    shutil.copytree(p, garbage / sub / p.name)
                else:
                    shutil.copy2(p, garbage / sub / p.name)
    (garbage / "tmp" / "left-by-a-crash.tmp").write_bytes(b"x" * 1000)

    for store in (base, full, garbage):
        cli.ok(store, "images")
        assert invariants.problems(store) == [], store
    return Corpus(
        d,
        rootfs,
        layout,
        oci_archive,
        docker_archive,
        docker_archive_gz,
        base,
        full,
        garbage,
        oci_id,
    )


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    require_root_tool("strace")
    return make_cli(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def corpus(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(cli, tmp_path_factory.mktemp("corpus"))


def _damages(root: Path, oci_id: str) -> dict[str, Callable[[], object]]:
    """Ways a store can be broken, each of which :func:`invariants.problems` must see."""
    blobs = root / "blobs" / "sha256"
    layers = root / "layerdb" / "sha256"
    meta = root / "imagedb" / "metadata" / "sha256" / oci_id[7:]
    config = root / "imagedb" / "content" / "sha256" / oci_id[7:]
    records = {d.name: json.loads((d / "layer.json").read_bytes()) for d in layers.iterdir()}
    top = next(n for n, r in records.items() if r["parent"])
    blob = records[top]["blob"]["digest"][7:]
    manifest = (meta / "manifest").read_text().strip()[7:]
    other = "0" * 64

    def write(path: Path, data: bytes) -> None:
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)
        path.chmod(0o444)

    return {
        "a short blob": lambda: write(blobs / blob, (blobs / blob).read_bytes()[:-1]),
        "a blob other than its name": lambda: write(blobs / blob, b"x"),
        "a writable blob": lambda: (blobs / blob).chmod(0o644),
        "a blob that is a symlink": lambda: (blobs / other).symlink_to(blobs / blob),
        "a symlink in tmp": lambda: (root / "tmp" / "x").symlink_to("/etc"),
        "a missing layer blob": lambda: (blobs / blob).unlink(),
        "a config other than its name": lambda: write(config, config.read_bytes() + b" "),
        "a half-written layer.json": lambda: (layers / top / "layer.json").write_bytes(
            (layers / top / "layer.json").read_bytes()[:20]
        ),
        "an empty layer directory": lambda: (layers / other).mkdir(),
        "a layer in the wrong directory": lambda: (layers / top).rename(layers / other),
        "a missing layer": lambda: shutil.rmtree(layers / top),
        "a missing parent layer": lambda: shutil.rmtree(layers / records[top]["parent"][7:]),
        "a record of the wrong size": lambda: (layers / top / "layer.json").write_text(
            json.dumps({**records[top], "blob": {**records[top]["blob"], "size": 1}})
        ),
        "metadata of no image": lambda: shutil.copytree(meta, meta.parent / other),
        "a missing kept blob": lambda: (blobs / manifest).unlink(),
        "a missing parent image": lambda: (meta / "parent").write_text(f"sha256:{other}"),
        "a tag of no image": lambda: (root / "repositories.json").write_text(
            json.dumps({"Repositories": {"x": {"x:1": f"sha256:{other}"}}})
        ),
        "a half-written repositories.json": lambda: (root / "repositories.json").write_text(
            '{"Repositories": {"x"'
        ),
        "an empty format file": lambda: (root / "format").write_bytes(b""),
    }


def test_the_invariants_see_each_kind_of_damage(corpus: Corpus, tmp_path: Path) -> None:
    """The independent reader is not blind: a sound store passes, each damage is seen."""
    assert invariants.problems(corpus.full) == []
    names = list(_damages(corpus.full, corpus.oci_id))
    for i, name in enumerate(names):
        root = fresh_store(corpus.full, tmp_path / str(i))
        _damages(root, corpus.oci_id)[name]()
        assert invariants.problems(root), f"{name} is not seen"
    assert invariants.tmp_is_empty(corpus.full)
    assert invariants.state(corpus.full)["refs"]["campaign/oci:1"] == corpus.oci_id


# -- strace --------------------------------------------------------------------------------


_SYSCALL = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)")


def strace_counts(log: Path) -> dict[str, int]:
    """From ``strace -f -o LOG``: the most calls of each system call any one thread made
    (strace's ``when=N`` counts per call and per thread)."""
    per: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in log.read_text().splitlines():
        m = _SYSCALL.match(line)
        if m and "resumed>" not in line:
            per[(m[1], m[2])] += 1
    most: dict[str, int] = {}
    for (_, call), n in per.items():
        most[call] = max(most.get(call, 0), n)
    return most


def trace_argv(log: Path, calls: Iterable[str]) -> list[str]:
    spec = ",".join(f"?{c}" for c in calls)
    return ["strace", "-f", "-qq", "-o", str(log), "-e", f"trace={spec}"]


def inject_argv(calls: Iterable[str], action: str, when: int, log: Path | None = None) -> list[str]:
    """``strace`` killing (``action="signal=KILL"``) or failing (``error=ENOSPC``) the
    ``when``-th call of each of ``calls`` in each thread (logged to ``log``, where an
    injected call is marked ``(INJECTED)``)."""
    spec = ",".join(f"?{c}" for c in calls)
    return [
        "strace",
        "-f",
        "-qq",
        "-o",
        str(log) if log is not None else "/dev/null",
        "-e",
        f"trace={spec}",
        "-e",
        f"inject={spec}:{action}:when={when}",
    ]


def spread(count: int, points: int) -> list[int]:
    """``points`` of 1..count evenly spread, the first and the last included."""
    if count <= points:
        return list(range(1, count + 1))
    if points <= 1:
        return [(count + 1) // 2]
    return sorted({1 + round(i * (count - 1) / (points - 1)) for i in range(points)})


def crash_points(counts: dict[str, int], scale: int = SCALE) -> list[tuple[str, int]]:
    """Where to kill, from a reference run's counts: up to ``3 × scale`` spread points of
    each publishing call (rename, link), ``2 × scale`` of each deleting call (unlink,
    rmdir), ``scale`` of the others (fsync, write, mkdir)."""
    out: list[tuple[str, int]] = []
    for call in CRASH_CALLS:
        n = counts.get(call, 0)
        if not n:
            continue
        if call in PUBLISH_CALLS:
            k = 3 * scale
        elif call in ("unlink", "unlinkat", "rmdir"):
            k = 2 * scale
        else:
            k = scale
        out += [(call, when) for when in spread(n, k)]
    return out


# -- what a store may look like ------------------------------------------------------------


def normalized(st: dict[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """A :func:`invariants.state` with every image ID not in ``known`` written ``new``
    (``import`` makes a new ID each time: its config holds the time)."""
    known = set(known)

    def name(i: str) -> str:
        return i if i in known else "new"

    return {
        "refs": {r: name(i) for r, i in st["refs"].items()},
        "images": sorted(name(i) for i in st["images"]),
    }


def outcome_problems(
    before: dict[str, Any], done: dict[str, Any], after: dict[str, Any]
) -> list[str]:
    """Why ``after`` is neither the store before a command, nor after it, nor a state in
    between that shows nothing half-made. States are :func:`normalized`.

    In between: the references are those before or those after (set and removed all at
    once), and the images are those before and after the command has in common, plus
    some of those it adds or removes. (An image published whole but not yet tagged, or
    untagged but not yet deleted, is whole: the invariants check that no image lacks a
    part and no reference points at a missing image.)
    """
    if after in (before, done):
        return []
    out = []
    if after["refs"] not in (before["refs"], done["refs"]):
        out.append(
            f"references half-changed: {after['refs']} (before {before['refs']}, "
            f"after {done['refs']})"
        )
    images = set(after["images"])
    common = set(before["images"]) & set(done["images"])
    either = set(before["images"]) | set(done["images"])
    if not common <= images:
        out.append(f"images lost: {sorted(common - images)}")
    if not images <= either:
        out.append(f"images neither before nor after: {sorted(images - either)}")
    return out


class Command(NamedTuple):
    """A command of the campaign: its name, the store it starts from, its arguments
    (``{out}`` stands for an output directory of its own)."""

    name: str
    store: str
    args: tuple[str, ...]
    #: The file it writes, in ``{out}`` (``save -o``).
    output: str | None = None
    #: The corpus file it reads on standard input.
    stdin: str | None = None

    def input(self, corpus: Corpus) -> Path | None:
        path: Path | None = getattr(corpus, self.stdin) if self.stdin else None
        return path

    def argv(self, corpus: Corpus, out: Path) -> list[str]:
        values = {
            "rootfs": corpus.rootfs,
            "layout": corpus.layout,
            "oci_archive": corpus.oci_archive,
            "docker_archive": corpus.docker_archive,
            "oci_id": corpus.oci_id,
            "out": out,
        }
        return [a.format(**values) for a in self.args]

    def template(self, corpus: Corpus) -> Path:
        store: Path = getattr(corpus, self.store)
        return store


COMMANDS = [
    Command("import", "base", ("import", "-q", "{rootfs}", "campaign/import:1")),
    Command("load-docker-archive", "base", ("load", "-q", "-i", "{docker_archive}")),
    Command("load-oci-layout", "base", ("load", "-q", "-i", "{layout}")),
    Command("load-oci-archive", "base", ("load", "-q", "-i", "{oci_archive}")),
    Command("load-stdin-gzip", "base", ("load", "-q", "-i", "-"), stdin="docker_archive_gz"),
    Command("tag", "full", ("tag", "base:1", "campaign/oci:1")),
    Command("rmi", "full", ("rmi", "-f", "{oci_id}")),
    Command("gc", "garbage", ("gc", "--grace", "0")),
    Command(
        "save-docker", "full", ("save", "-o", "{out}/saved.tar", "campaign/oci:1"), "saved.tar"
    ),
    Command(
        "save-oci-layout",
        "full",
        ("save", "--format", "oci", "-o", "{out}/layout", "campaign/oci:1"),
        "layout",
    ),
    Command(
        "save-oci-archive",
        "full",
        ("save", "--format", "oci-archive", "-o", "{out}/saved.tar", "campaign/oci:1"),
        "saved.tar",
    ),
]


class Reference(NamedTuple):
    """A command run to the end: the states before and after, its system call counts and
    what it wrote."""

    before: dict[str, Any]
    done: dict[str, Any]
    counts: dict[str, int]
    #: The file's bytes, or (an OCI layout) the directory's :func:`util.snapshot`.
    output: bytes | dict[str, object] | None
    known: frozenset[str]


def fresh_store(template: Path, dest: Path) -> Path:
    """A copy of a store. (Its files have new inode numbers, so the first command to open
    it rewrites the index: the reference run and the crash runs alike.)"""
    shutil.copytree(template, dest, symlinks=True)
    return dest


def reference_run(
    cli: Cli, corpus: Corpus, cmd: Command, work: Path, calls: Sequence[str], opened: bool = False
) -> Reference:
    """Run ``cmd`` to the end on a copy of its store (``opened`` once before, when told)."""
    root = fresh_store(cmd.template(corpus), work / "reference-store")
    if opened:
        cli.ok(root, "images")
    out = work / "reference-out"
    out.mkdir()
    before = invariants.state(root)
    log = work / "reference.strace"
    proc = cli.run(
        root, *cmd.argv(corpus, out), strace=trace_argv(log, calls), stdin=cmd.input(corpus)
    )
    assert proc.returncode == 0, proc.stderr
    assert invariants.problems(root) == []
    known = frozenset(before["images"])
    output: bytes | dict[str, object] | None = None
    if cmd.output:
        target = out / cmd.output
        output = snapshot(target) if target.is_dir() else target.read_bytes()
    return Reference(
        normalized(before, known),
        normalized(invariants.state(root), known),
        strace_counts(log),
        output,
        known,
    )


#: What a crash may not do to the store or to a user (the first test below).
HARM = "harm"
#: What a crash may leave, but should not: debris ``fsck`` reports before ``gc`` runs, a
#: temporary file beside a save's output (the second test).
DEBRIS = "debris"


#: A change neither wholly there nor wholly absent, though nothing in it is half-made: an
#: image published whole but not yet tagged, untagged but not yet deleted (the third test).
BETWEEN = "between"


class Failure(NamedTuple):
    kind: str
    line: str


def check_killed_store(
    cli: Cli,
    root: Path,
    ref: Reference,
    where: str,
    out: Path | None = None,
    output: str | None = None,
) -> list[Failure]:
    """Everything that must hold of a store whose writer was killed (or failed)."""
    failures: list[Failure] = []

    def fail(kind: str, msg: str) -> None:
        failures.append(Failure(kind, f"{where}: {msg}"))

    proc = cli.run(root, "fsck")
    if proc.returncode != 0:
        detail = f"{proc.stdout.strip()} {proc.stderr.strip()}"
        # A store that does not open is harm; a store fsck finds debris in is debris.
        kind = HARM if cli.run(root, "images").returncode != 0 else DEBRIS
        fail(kind, f"fsck before gc exited {proc.returncode}: {detail}")
    for p in invariants.problems(root):
        fail(DEBRIS, f"before gc: {p}")
    after = normalized(invariants.state(root), ref.known)
    for p in outcome_problems(ref.before, ref.done, after):
        fail(HARM, p)
    if after not in (ref.before, ref.done) and not outcome_problems(ref.before, ref.done, after):
        fail(BETWEEN, f"neither before nor after: {after}")
    if out is not None and output is not None:
        entries = sorted(os.listdir(out))
        target = out / output
        if isinstance(ref.output, bytes):
            if output in entries and target.read_bytes() != ref.output:
                fail(HARM, f"{output} is there but not whole ({target.stat().st_size} bytes)")
        elif output in entries:
            # An OCI layout is there once its index.json is: then all of it, and nothing
            # hidden is left in it (blobs without an index.json are not a layout yet).
            snap = snapshot(target)
            hidden = [k for k in snap if any(part.startswith(".") for part in k.split("/"))]
            shown = {k: v for k, v in snap.items() if k not in hidden}
            if "index.json" in snap and shown != ref.output:
                fail(HARM, f"{output}/index.json is there but the layout is not whole")
            if hidden:
                fail(DEBRIS, f"in the output: {hidden}")
        # A file is written unnamed and linked whole: nothing may be left beside it. A
        # directory is staged beside itself under a hidden name: the next save to it
        # removes what a killed one left (:func:`crash_run` checks that).
        if isinstance(ref.output, bytes) and [e for e in entries if e != output]:
            fail(DEBRIS, f"beside the output: {entries}")
    proc = cli.run(root, "gc", "--grace", "0")
    if proc.returncode != 0:
        fail(HARM, f"gc --grace 0 exited {proc.returncode}: {proc.stderr.strip()}")
    proc = cli.run(root, "fsck")
    if proc.returncode != 0:
        detail = f"{proc.stdout.strip()} {proc.stderr.strip()}"
        fail(HARM, f"fsck after gc exited {proc.returncode}: {detail}")
    for p in invariants.problems(root):
        fail(HARM, f"after gc: {p}")
    if not invariants.tmp_is_empty(root):
        fail(HARM, f"tmp/ after gc --grace 0: {invariants.tmp_entries(root)}")
    if normalized(invariants.state(root), ref.known) != after:
        fail(HARM, "gc changed the images or references")
    return failures


def crash_run(
    cli: Cli, corpus: Corpus, cmd: Command, ref: Reference, work: Path, call: str, when: int
) -> tuple[bool, list[Failure]]:
    """Kill ``cmd`` at the ``when``-th ``call``: whether it was killed, and what failed."""
    point = work / f"{call}-{when}"
    point.mkdir()
    root = fresh_store(cmd.template(corpus), point / "store")
    out = point / "out"
    out.mkdir()
    kill = inject_argv([call], "signal=KILL", when)
    proc = cli.run(root, *cmd.argv(corpus, out), strace=kill, stdin=cmd.input(corpus))
    where = f"{cmd.name} killed at {call} #{when}"
    if proc.returncode not in (0, -9):
        return False, [Failure(HARM, f"{where}: exited {proc.returncode}: {proc.stderr.strip()}")]
    killed = proc.returncode == -9
    failures = check_killed_store(cli, root, ref, where, out, cmd.output)
    if cmd.output and isinstance(ref.output, dict):
        # The save again: it succeeds, the layout is whole, and what the killed one left
        # beside it has gone.
        proc = cli.run(root, *cmd.argv(corpus, out))
        entries = sorted(os.listdir(out))
        if proc.returncode != 0:
            failures.append(Failure(HARM, f"{where}: saving again: {proc.stderr.strip()}"))
        elif snapshot(out / cmd.output) != ref.output:
            failures.append(Failure(HARM, f"{where}: saved again, the layout is not whole"))
        if entries != [cmd.output]:
            failures.append(Failure(DEBRIS, f"{where}: beside the output saved again: {entries}"))
    if not failures:
        shutil.rmtree(point)
    return killed, failures


class CrashResults(NamedTuple):
    points: list[tuple[str, int]]
    killed: int
    failures: list[Failure]

    def lines(self, kind: str) -> list[str]:
        return [f.line for f in self.failures if f.kind == kind]


def crash_campaign(cli: Cli, corpus: Corpus, cmd: Command, work: Path) -> CrashResults:
    """Run ``cmd`` to the end once, then kill it at each of its crash points."""
    ref = reference_run(cli, corpus, cmd, work, CRASH_CALLS)
    points = crash_points(ref.counts)
    assert points, f"{cmd.name} made none of {CRASH_CALLS}: {ref.counts}"
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        runs = list(pool.map(lambda p: crash_run(cli, corpus, cmd, ref, work, p[0], p[1]), points))
    killed = sum(k for k, _ in runs)
    return CrashResults(points, killed, [f for _, fs in runs for f in fs])


@pytest.fixture(scope="module")
def crashes(
    cli: Cli, corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Command], CrashResults]:
    """Each command's crash campaign, run once for both tests that look at it."""
    done: dict[str, CrashResults] = {}

    def get(cmd: Command) -> CrashResults:
        if cmd.name not in done:
            done[cmd.name] = crash_campaign(cli, corpus, cmd, tmp_path_factory.mktemp(cmd.name))
        return done[cmd.name]

    return get


def _report(results: CrashResults, lines: list[str]) -> str:
    return f"{len(lines)} failures over {len(results.points)} crash points:\n" + "\n".join(lines)


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.name) for c in COMMANDS])
def test_a_killed_command_loses_nothing_and_shows_nothing_half_made(
    cmd: Command, crashes: Callable[[Command], CrashResults]
) -> None:
    results = crashes(cmd)
    # Most points are reached: a point past the calls a thread makes kills nothing.
    assert results.killed * 2 >= len(results.points), results
    harm = results.lines(HARM)
    assert not harm, _report(results, harm)


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.name) for c in COMMANDS])
def test_a_killed_command_leaves_nothing_fsck_or_a_user_would_see(
    cmd: Command, crashes: Callable[[Command], CrashResults]
) -> None:
    """No debris: ``fsck`` is clean right after the kill (before any ``gc``), and a killed
    ``save -o FILE`` leaves nothing beside FILE."""
    results = crashes(cmd)
    debris = results.lines(DEBRIS)
    assert not debris, _report(results, debris)


@pytest.mark.parametrize("cmd", [pytest.param(c, id=c.name) for c in COMMANDS])
def test_a_killed_command_is_all_or_nothing(
    cmd: Command, crashes: Callable[[Command], CrashResults]
) -> None:
    """After a kill the command's change is wholly there or wholly absent, as a user sees
    it (``ocistore images``): no image loaded but untagged, or untagged but not deleted."""
    results = crashes(cmd)
    between = results.lines(BETWEEN)
    assert not between, _report(results, between)
