#!/usr/bin/env python3
"""Benchmark ocistore side by side with skopeo (issue 4): ``make bench``.

One run:

1. builds a realistic image from files on this machine with umoci (several layers of
   copies of /usr/lib, /usr/share, /usr/bin, /usr/local, generated files; whiteouts,
   hardlinks, symlinks; about ``300 MB × --scale`` uncompressed) and, with skopeo, turns
   it into a docker-archive, a gzip oci-archive and a zstd OCI layout. The inputs are
   cached in the work directory (``bench-out/``); ``--rebuild`` makes them again;
2. times every operation ``--repeat`` times, alternating ocistore and the peer, each run
   on a fresh destination, skopeo's blob cache deleted before each skopeo run; the page
   cache is warm for both (the inputs were just read), and ``sync`` runs, untimed, before
   each timed run so that no run pays for the previous one's writeback;
3. runs the physical baseline of each load (``bench_baseline.py``: read every input byte
   once, sha256 it, decompress compressed blobs and sha256 the result, one thread), and
   the same again also writing the blobs to files with fsync ("baseline + write": what
   keeping the input durably costs at least);
4. pulls and pushes (issue 12) through a local registry (Debian's ``docker-registry``,
   Distribution 2.8, started by the bench on 127.0.0.1 with its own storage, stopped at
   the end whatever happens; the image put into it once, gzip as ``bench/gzip:1``, zstd
   as ``bench/zstd:1``): ``ocistore pull`` into an empty store against ``skopeo copy
   docker://… oci:…`` and ``docker pull`` (a Docker engine started as the tests start
   one, when it can be; the image removed after each run), next to a loopback baseline
   (a plain ``http.client`` GET of the same blobs into /dev/null through sha256, one blob
   at a time and 4 at once); ``ocistore push`` from a store that loaded the OCI layout
   against ``skopeo copy oci:… docker://…`` and ``docker push``, each run to a new
   registry and repository so that nothing is skipped or mounted (checked);
5. measures ``images`` and an ID-prefix ``inspect`` on stores of 100 and 10,000 images
   (built through the library by ``bench_store.py``, cached), the two sizes alternating,
   and counts with strace how many image configs each opens;
6. unpacks, exports and commits the image's file system from a store that loaded the
   gzip layout: ``ocistore unpack --rootless`` against ``umoci unpack --rootless`` and
   GNU ``tar -x`` of the flattened tree; ``ocistore export`` against ``docker create`` +
   ``docker export`` on the Docker engine (the docker-archive loaded into it); ``ocistore
   commit`` of 1% of the files changed against ``umoci repack`` of the same changes. The
   trees made are deleted only between operations, each timed run starting 36 s after
   the last deletion (``SETTLE_S``: ext4 without a journal slows every file created soon
   after as many were deleted). Checked: the trees' entries, the export tars' names
   against docker's, the committed image's history;
7. serves the image (issue 14): ``ocistore serve`` on a store that loaded the gzip
   layout against Distribution 2.8 holding the same image (``ocistore push`` put it
   there), both on 127.0.0.1 and started and stopped by the bench: ``skopeo copy
   docker://… oci:…`` from each (serve-copy), curl GETs of the largest layer
   (serve-blob), manifest HEADs from 8 keep-alive clients (serve-head, the bench's own
   client: Debian's wrk cannot HEAD), alternating; with each server's CPU a run and
   peak RSS;
8. prints Markdown tables with medians, ratios, throughput and peak memory, each target
   of the issue marked PASS or FAIL, the machine and the command; writes it to
   ``bench-out/results.md`` and every single run to ``bench-out/results.json``.

Peak memory is each child's ``ru_maxrss`` from ``wait4``, like ``/usr/bin/time -v``'s
"Maximum resident set size", exact above a floor: the children are spawned through vfork,
whose child's peak counts the parent's (the bench's own, about 25 MiB; the report says
it), so the bench keeps itself small (pytest, which the Docker engine's helper needs,
is imported only in a child). Throughput is the image's
uncompressed size (the sum of its layer tars) divided by the median wall time, in
MB/s (10^6 bytes per second).

    make bench                                   # the full run, about 16 minutes
    make bench BENCH_ARGS=--quick                # 30 MB image, 2 repeats
    .venv/bin/python scripts/bench.py --only load-docker,images --repeat 3
    .venv/bin/python scripts/bench.py --only pull-gzip,pull-zstd,push-gzip,push-zstd
    .venv/bin/python scripts/bench.py --only unpack,export,commit
    make bench BENCH_ARGS="--only serve-copy,serve-blob,serve-head"   # about 75 s

Exit status: 0 when every operation ran (whatever the targets say; ``--strict`` makes a
failed target exit 1 too), 1 when something could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import platform
import random
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
MB = 1_000_000
MIB = 1 << 20
BASE_BYTES = 300 * MB  # uncompressed image size at --scale 1
SKOPEO_BLOB_CACHES = [
    Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"),
    Path.home() / ".local/share/containers/cache/blob-info-cache-v1.boltdb",
]
TAG = "bench"  # the OCI ref name in the layouts and archives
REF = "bench:latest"  # the docker reference
INPUTS_VERSION = 1  # bump when the image recipe changes, to invalidate cached inputs
STORE_VERSION = 1  # likewise for the stores of many images

# Targets of issue 4.
PEER_TARGETS = {
    "load-docker": 0.25,
    "load-oci-gzip": 0.35,
    "load-oci-zstd": 0.35,
    "save-docker": 0.30,
    "save-oci-archive": 0.30,
    # Issue 12: against skopeo copy between the registry and an OCI layout.
    "pull-gzip": 0.30,
    "pull-zstd": 0.30,
    "push-gzip": 0.30,
    "push-zstd": 0.30,
}
BASELINE_TARGET = 1.5
RSS_TARGET_MIB = 64
LIST_TARGET_S = 0.5
GROWTH_TARGET = 3.0


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- running and measuring children -----------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    seconds: float
    maxrss_kib: int
    user: float
    system: float
    rc: int
    stderr: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def measure(
    argv: Sequence[str], stdout: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run a command and return its wall time and its own rusage (via ``wait4``)."""
    args = [str(a) for a in argv]
    with tempfile.TemporaryFile() as err:
        out_flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(stdout) if stdout else os.devnull, out_flags, 0o644),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        t0 = time.perf_counter()
        try:
            pid = os.posix_spawnp(args[0], args, env or dict(os.environ), file_actions=actions)
        except OSError as e:
            raise BenchError(f"cannot run {args[0]}: {e}") from None
        _, status, ru = os.wait4(pid, 0)
        seconds = time.perf_counter() - t0
        err.seek(0)
        text = err.read().decode(errors="replace")
    return Run(
        argv=args,
        seconds=seconds,
        maxrss_kib=ru.ru_maxrss,
        user=ru.ru_utime,
        system=ru.ru_stime,
        rc=os.waitstatus_to_exitcode(status),
        stderr=text,
    )


def check(run: Run) -> Run:
    if not run.ok:
        raise BenchError(
            f"command failed (exit {run.rc}): {shlex.join(run.argv)}\n{run.stderr.rstrip()}"
        )
    return run


def run_quiet(argv: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    """Run a setup command (untimed); its stdout, or BenchError with its stderr."""
    args = [str(a) for a in argv]
    p = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if p.returncode != 0:
        raise BenchError(
            f"command failed (exit {p.returncode}): {shlex.join(args)}\n"
            f"{(p.stderr or p.stdout).rstrip()}"
        )
    return p.stdout


def rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def clear_skopeo_cache() -> None:
    for p in SKOPEO_BLOB_CACHES:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# -- the tools --------------------------------------------------------------------------


@dataclass
class Tools:
    ocistore: str
    skopeo: str
    umoci: str
    python: str
    strace: str | None

    def skopeo_copy(self, *args: str) -> list[str]:
        return [self.skopeo, "--insecure-policy", "copy", "-q", *args]


def find_tools(args: argparse.Namespace) -> Tools:
    missing = []
    found: dict[str, str] = {}
    venv_bin = Path(sys.executable).parent
    for name in ("ocistore", "skopeo", "umoci"):
        given = getattr(args, name)
        path = given or (str(venv_bin / name) if (venv_bin / name).exists() else shutil.which(name))
        if not path or not (Path(path).exists() or shutil.which(path)):
            missing.append(name)
        else:
            found[name] = path
    if missing:
        hint = {
            "skopeo": "apt-get install skopeo (make peers does it as root)",
            "umoci": "apt-get install umoci (make peers does it as root)",
            "ocistore": "make the venv first: make .venv/.installed, or pass --ocistore",
        }
        raise BenchError("missing tools: " + ", ".join(f"{m} ({hint[m]})" for m in missing))
    return Tools(
        ocistore=found["ocistore"],
        skopeo=found["skopeo"],
        umoci=found["umoci"],
        python=sys.executable,
        strace=shutil.which("strace"),
    )


# -- building the input image -----------------------------------------------------------


@dataclass
class Inputs:
    dir: Path
    layout_gzip: Path  # the OCI layout umoci wrote (gzip layers)
    docker_archive: Path
    oci_archive_gzip: Path
    layout_zstd: Path
    uncompressed_bytes: int  # sum of the layer tars
    layers: int
    entries: int  # tar entries over all layers
    whiteouts: int
    hardlinks: int
    symlinks: int
    sizes: dict[str, int]  # bytes on disk of each input

    def describe(self) -> str:
        s = self.sizes
        return (
            f"image: {self.layers} layers, {self.uncompressed_bytes / MB:.0f} MB uncompressed, "
            f"{self.entries:,} tar entries ({self.whiteouts} whiteouts, {self.hardlinks} "
            f"hardlinks, {self.symlinks} symlinks); docker-archive {s['docker'] / MB:.0f} MB, "
            f"gzip oci-archive {s['oci-gzip'] / MB:.0f} MB, "
            f"zstd OCI layout {s['oci-zstd'] / MB:.0f} MB"
        )


def _scan(src: Path) -> list[tuple[str, int, bool]]:
    """Regular files and symlinks under ``src``: (relative path, size, is symlink)."""
    out: list[tuple[str, int, bool]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames) + sorted(
            d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
        ):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = os.path.relpath(p, src)
            if os.path.islink(p):
                out.append((rel, 0, True))
            elif os.path.isfile(p) and os.access(p, os.R_OK):
                out.append((rel, st.st_size, False))
    return out


def copy_sample(src: Path, dst: Path, budget: int) -> list[Path]:
    """Copy an evenly spread sample of ``src`` worth about ``budget`` bytes into ``dst``.

    Every k-th entry of the sorted walk (k from the tree's size and the budget), so every
    part of the tree contributes and the sample has the tree's mix of small and large
    files; files larger than a sixth of the budget are left out. Returns the regular
    files copied.
    """
    entries = _scan(src)
    cap = max(MIB, budget // 6)
    total = sum(size for _, size, _ in entries if size <= cap) or 1
    ratio = min(1.0, budget / total)
    acc = 0.0
    copied: list[Path] = []
    used = 0
    for rel, size, is_link in entries:
        if used >= budget:
            break
        if size > cap:
            continue
        acc += ratio
        if acc < 1:
            continue
        acc -= 1
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if is_link:
                os.symlink(os.readlink(src / rel), target)
                continue
            shutil.copyfile(src / rel, target, follow_symlinks=False)
            shutil.copymode(src / rel, target)
        except OSError:
            continue
        copied.append(target)
        used += size
    return copied


def _generated_files(root: Path, budget: int, rng: random.Random) -> list[Path]:
    """An application layer: many small text files, some incompressible assets."""
    out: list[Path] = []
    small = root / "srv/app/conf"
    for i in range(max(50, budget // 40_000)):
        p = small / f"d{i % 40:02d}" / f"setting-{i:05d}.yaml"
        p.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"key{j}: value-{rng.randrange(1 << 30)}\n" for j in range(rng.randrange(5, 60))]
        p.write_text("".join(lines))
        out.append(p)
    assets = root / "srv/app/static"
    assets.mkdir(parents=True, exist_ok=True)
    left = budget // 2
    i = 0
    while left > 0:
        n = min(left, rng.randrange(16 << 10, 4 << 20))
        p = assets / f"asset-{i:04d}.bin"
        p.write_bytes(rng.randbytes(n))
        out.append(p)
        left -= n
        i += 1
    return out


def build_inputs(work: Path, scale: float, tools: Tools, rebuild: bool) -> Inputs:
    d = work / "inputs" / f"scale-{scale:g}"
    meta_path = d / "meta.json"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == INPUTS_VERSION:
            meta.pop("version")
            fields: dict[str, Any] = {
                k: (Path(v) if k in _PATH_FIELDS else v) for k, v in meta.items()
            }
            inputs = Inputs(**fields)
            if all(
                p.exists()
                for p in (inputs.docker_archive, inputs.oci_archive_gzip, inputs.layout_zstd)
            ):
                log(f"using cached inputs in {d} (--rebuild to make them again)")
                return inputs
    log(f"building the input image in {d} (scale {scale:g}) ...")
    t0 = time.perf_counter()
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    layout = d / "oci-gzip-layout"
    bundle = d / "bundle"
    rootfs = bundle / "rootfs"
    image = f"{layout}:{TAG}"
    budget = int(BASE_BYTES * scale)
    rng = random.Random(4)
    run_quiet([tools.umoci, "init", "--layout", layout])
    run_quiet([tools.umoci, "new", "--image", image])
    run_quiet([tools.umoci, "unpack", "--rootless", "--image", image, bundle])

    def repack(what: str) -> None:
        log(f"  layer: {what}")
        run_quiet(
            [
                tools.umoci,
                "repack",
                "--refresh-bundle",
                "--history.created_by",
                f"bench: {what}",
                "--image",
                image,
                bundle,
            ]
        )

    # 1: a sample of /usr/lib
    libs = copy_sample(Path("/usr/lib"), rootfs / "usr/lib", int(budget * 0.40))
    repack(f"/usr/lib sample, {len(libs)} files")
    # 2: a sample of /usr/share, with hardlinks inside the layer
    share = copy_sample(Path("/usr/share"), rootfs / "usr/share", int(budget * 0.22))
    for i, p in enumerate(share[::25]):
        link = rootfs / "usr/share/.bench-links" / f"{i:05d}-{p.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, link)
    repack(f"/usr/share sample, {len(share)} files and {len(share[::25])} hardlinks")
    # 3: changes: whiteouts of files and whole directories, modified files, new links
    deleted = 0
    for p in libs[::9]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            deleted += 1
    dirs = sorted({p.parent for p in libs if p.exists() and p.parent != rootfs / "usr/lib"})
    for sub in dirs[:: max(1, len(dirs) // 4)][:4]:
        shutil.rmtree(sub, ignore_errors=True)
    for p in share[1::30]:
        if p.exists():
            with open(p, "ab") as f:
                f.write(b"\n# modified by the bench image\n")
    for i, p in enumerate(share[2::40]):
        if p.exists():
            os.link(p, rootfs / "usr/share/.bench-links" / f"late-{i:05d}")
            os.symlink(os.path.relpath(p, rootfs / "usr/share"), rootfs / f"usr/share/ln-{i:05d}")
    repack(f"changes: {deleted} files and 4 directories deleted, files modified, links")
    # 4: binaries and /usr/local
    bins = copy_sample(Path("/usr/bin"), rootfs / "usr/bin", int(budget * 0.15))
    local = copy_sample(Path("/usr/local"), rootfs / "usr/local", int(budget * 0.13))
    repack(f"/usr/bin and /usr/local samples, {len(bins) + len(local)} files")
    # 5: the application: many small files, incompressible assets
    app = _generated_files(rootfs, int(budget * 0.10), rng)
    repack(f"application, {len(app)} generated files")
    shutil.rmtree(bundle)

    docker = d / "docker.tar"
    oci_gzip = d / "oci-gzip.tar"
    zstd = d / "oci-zstd-layout"
    log("  skopeo: docker-archive, oci-archive, zstd OCI layout")
    run_quiet(tools.skopeo_copy(f"oci:{image}", f"docker-archive:{docker}:{REF}"))
    run_quiet(tools.skopeo_copy(f"oci:{image}", f"oci-archive:{oci_gzip}:{TAG}"))
    run_quiet(
        tools.skopeo_copy("--dest-compress-format", "zstd", f"oci:{image}", f"oci:{zstd}:{TAG}")
    )
    inputs = Inputs(
        dir=d,
        layout_gzip=layout,
        docker_archive=docker,
        oci_archive_gzip=oci_gzip,
        layout_zstd=zstd,
        sizes={
            "docker": docker.stat().st_size,
            "oci-gzip": oci_gzip.stat().st_size,
            "oci-zstd": _du(zstd),
            "layout-gzip": _du(layout),
        },
        **_describe_docker_archive(docker),
    )
    _check_zstd(zstd)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(inputs).items()}
    meta_path.write_text(json.dumps({"version": INPUTS_VERSION, **meta}, indent=1))
    log(f"built in {time.perf_counter() - t0:.0f} s")
    return inputs


_PATH_FIELDS = {"dir", "layout_gzip", "docker_archive", "oci_archive_gzip", "layout_zstd"}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _describe_docker_archive(path: Path) -> dict[str, int]:
    with tarfile.open(path, "r:") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer_names = manifest[0]["Layers"]
        total = entries = whiteouts = hardlinks = symlinks = 0
        for name in layer_names:
            member = tar.getmember(name)
            while member.issym() or member.islnk():  # skopeo links <id>/layer.tar to blobs
                member = tar.getmember(
                    os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
                    if member.issym()
                    else member.linkname
                )
            total += member.size
            f = tar.extractfile(member)
            assert f is not None
            with tarfile.open(fileobj=f, mode="r|") as layer:
                for m in layer:
                    entries += 1
                    whiteouts += os.path.basename(m.name).startswith(".wh.")
                    hardlinks += m.islnk()
                    symlinks += m.issym()
    return {
        "uncompressed_bytes": total,
        "layers": len(layer_names),
        "entries": entries,
        "whiteouts": whiteouts,
        "hardlinks": hardlinks,
        "symlinks": symlinks,
    }


def _check_zstd(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    for layer in manifest["layers"]:
        blob = layout / "blobs/sha256" / layer["digest"].split(":", 1)[1]
        with open(blob, "rb") as f:
            if f.read(4) != b"\x28\xb5\x2f\xfd":
                raise BenchError(f"skopeo did not write zstd layers into {layout} ({blob.name})")


# -- stores of many images --------------------------------------------------------------


def build_store(work: Path, n: int, tools: Tools, rebuild: bool) -> tuple[Path, list[str]]:
    d = work / "stores" / f"images-{n}"
    ids_path = d / "ids.txt"
    meta_path = d / "meta.json"
    root = d / "root"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == STORE_VERSION and meta.get("n") == n:
            ids = ids_path.read_text().split()
            # Let the current code rewrite its derived index, untimed.
            run_quiet([tools.python, SCRIPTS / "bench_store.py", "--refresh", root])
            return root, ids
    log(f"building a store of {n:,} images in {d} ...")
    t0 = time.perf_counter()
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    out = run_quiet([tools.python, SCRIPTS / "bench_store.py", root, str(n)])
    ids = out.split()
    if len(ids) != n:
        raise BenchError(f"bench_store.py made {len(ids)} images, not {n}")
    ids_path.write_text(out)
    meta_path.write_text(json.dumps({"version": STORE_VERSION, "n": n}))
    log(f"built in {time.perf_counter() - t0:.0f} s")
    return root, ids


# -- operations -------------------------------------------------------------------------


@dataclass
class OpResult:
    key: str
    title: str
    peer_title: str
    bytes: int
    ocistore: list[Run] = field(default_factory=list)
    peer: list[Run] = field(default_factory=list)
    baseline: list[Run] = field(default_factory=list)
    floor: list[Run] = field(default_factory=list)  # baseline + writing the blobs, fsynced
    error: str | None = None


def median_s(runs: list[Run]) -> float | None:
    return statistics.median(r.seconds for r in runs) if runs else None


def max_rss_mib(runs: list[Run]) -> float | None:
    return max(r.maxrss_kib for r in runs) / 1024 if runs else None


Factory = Callable[[Path], tuple[list[str], Path | None]]


class Bench:
    def __init__(self, tools: Tools, inputs: Inputs, work: Path, repeat: int) -> None:
        self.tools = tools
        self.inputs = inputs
        self.work = work
        self.repeat = repeat
        self.scratch = work / "run"
        #: When the bench last deleted a tree (see SETTLE_S): a previous run's scratch.
        self.deleted_at = time.monotonic() - SETTLE_S
        if self.scratch.exists():
            rm(self.scratch)
            self.deleted_at = time.monotonic()
        self.scratch.mkdir(parents=True)

    def ocistore(self, root: Path, *args: str) -> list[str]:
        return [self.tools.ocistore, "--root", str(root), *args]

    def _one(self, make: Factory, name: str, skopeo: bool) -> Run:
        dest = self.scratch / name
        rm(dest)
        argv, stdout = make(dest)
        if skopeo:
            clear_skopeo_cache()
        os.sync()
        run = measure(argv, stdout)
        if not run.ok:
            raise BenchError(
                f"{name} failed (exit {run.rc}): {shlex.join(run.argv)}\n{run.stderr.rstrip()}"
            )
        return run

    def compare(
        self,
        res: OpResult,
        ours: Factory,
        peer: Factory,
        baselines: tuple[Factory, Factory] | None = None,
        verify: Callable[[Path], None] | None = None,
    ) -> OpResult:
        """Alternate ocistore and the peer ``repeat`` times; each round also runs the
        baselines (read + hash, and read + hash + write), if given, first."""
        log(
            f"{res.title}: {self.repeat} × ocistore, {res.peer_title}"
            + (", baselines" if baselines else "")
        )
        names = ["ocistore", "peer", "baseline", "floor"]
        try:
            for i in range(self.repeat):
                if baselines:
                    base, floor = baselines
                    res.baseline.append(self._one(base, f"{res.key}-baseline", False))
                    res.floor.append(self._one(floor, f"{res.key}-floor", False))
                order = [("ocistore", ours, False), ("peer", peer, True)]
                if i % 2:
                    order.reverse()
                for who, make, skopeo in order:
                    run = self._one(make, f"{res.key}-{who}", skopeo)
                    (res.ocistore if who == "ocistore" else res.peer).append(run)
                    if who == "ocistore" and verify is not None and i == self.repeat - 1:
                        verify(self.scratch / f"{res.key}-ocistore")
                extra = ""
                if baselines:
                    extra = (
                        f", baseline {res.baseline[-1].seconds:.2f} s"
                        f", baseline + write {res.floor[-1].seconds:.2f} s"
                    )
                log(
                    f"  round {i + 1}: ocistore {res.ocistore[-1].seconds:.2f} s, "
                    f"peer {res.peer[-1].seconds:.2f} s{extra}"
                )
        except BenchError as e:
            res.error = str(e)
            log(f"  ERROR: {e}")
        finally:
            for who in names:
                rm(self.scratch / f"{res.key}-{who}")
        return res

    # The loads: a fresh empty store each time; the peer copies into a fresh directory.

    def _verify_loaded(self, root: Path) -> None:
        out = run_quiet(self.ocistore(root, "images", "-q", "--no-trunc"))
        if len(out.split()) != 1:
            raise BenchError(f"after load, `ocistore images -q` listed {out.split()} in {root}")

    def load(
        self, key: str, title: str, src: Path, peer_src: str, peer_dest: str, flags: list[str]
    ) -> OpResult:
        """Load ``src`` into a fresh store; the peer copies ``peer_src`` to a fresh
        ``peer_dest`` (``oci`` or ``dir``) directory."""
        scheme = peer_src.split(":", 1)[0]
        shown = " ".join([*flags, f"{scheme}:…", f"{peer_dest}:…"])
        res = OpResult(key, title, f"`skopeo copy {shown}`", self.inputs.uncompressed_bytes)
        suffix = f":{TAG}" if peer_dest == "oci" else ""
        baseline = SCRIPTS / "bench_baseline.py"
        return self.compare(
            res,
            lambda dest: (self.ocistore(dest, "load", "-q", "-i", str(src)), None),
            lambda dest: (
                self.tools.skopeo_copy(*flags, peer_src, f"{peer_dest}:{dest}{suffix}"),
                None,
            ),
            (
                lambda dest: ([self.tools.python, str(baseline), str(src)], None),
                lambda dest: (
                    [self.tools.python, str(baseline), "--write", str(dest), str(src)],
                    None,
                ),
            ),
            self._verify_loaded,
        )

    # The saves: from a store preloaded with the image (from the gzip OCI layout, so it
    # holds the very blobs the peer reads), to a fresh output file.

    def preload(self, layout: Path | None = None, name: str = "preloaded") -> Path:
        root = self.scratch / name
        rm(root)
        layout = layout or self.inputs.layout_gzip
        check(measure(self.ocistore(root, "load", "-q", "-i", str(layout))))
        image_id = run_quiet(self.ocistore(root, "images", "-q", "--no-trunc")).split()
        if len(image_id) != 1:
            raise BenchError(f"preloaded store {root} holds {image_id}, not one image")
        run_quiet(self.ocistore(root, "tag", image_id[0], REF))
        return root

    def save(
        self, key: str, title: str, fmt: str, peer_dest: str, root: Path | None, error: str | None
    ) -> OpResult:
        res = OpResult(
            key, title, f"`skopeo copy oci:… {peer_dest}:…`", self.inputs.uncompressed_bytes
        )
        if root is None:
            res.error = error
            return res
        src = f"oci:{self.inputs.layout_gzip}:{TAG}"
        peer_ref = f":{REF}" if peer_dest == "docker-archive" else f":{TAG}"

        def verify(out: Path) -> None:
            transport = "docker-archive" if fmt == "docker" else "oci-archive"
            run_quiet(
                [self.tools.skopeo, "--insecure-policy", "inspect", "--raw", f"{transport}:{out}"]
            )

        return self.compare(
            res,
            lambda dest: (
                self.ocistore(root, "save", "-o", str(dest), "--format", fmt, REF),
                None,
            ),
            lambda dest: (self.tools.skopeo_copy(src, f"{peer_dest}:{dest}{peer_ref}"), None),
            None,
            verify,
        )


# -- registries: pull and push (issue 12) ---------------------------------------------------

REGISTRY_TIMEOUT = 60.0  # seconds a registry is given to answer GET /v2/ (a bound, not a wait)
PORT_ATTEMPTS = 10  # another process may take the free port before the registry binds it
PULL_REFS = {"gzip": "bench/gzip:1", "zstd": "bench/zstd:1"}  # the pull registry's names
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
HTTP_CHUNK = 1 << 20
DOCKER_STOP_TIMEOUT = 300.0  # seconds the engine's helper is given to stop it
HTTP_JOBS = (1, 4)  # the loopback baselines: one blob at a time, and 4 at once (PULL_JOBS)
# Why docker has no figure for zstd (the report's note has the whole of it).
DOCKER_NO_ZSTD_PUSH = "skipped: Docker 20.10 cannot push zstd layers"
DOCKER_NO_ZSTD_PULL = "skipped: Docker 20.10 cannot unpack zstd layers"


def registry_binary() -> str:
    path = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.access("/usr/bin/docker-registry", os.X_OK) else None
    )
    if path is None:
        raise BenchError(
            "missing tool: docker-registry (apt-get install docker-registry; make peers does it "
            "as root)"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_log(
    stream: Any, path: Path, text: str, seen: threading.Event, settled: threading.Event
) -> None:
    """A server's output, line by line, appended to ``path`` (a thread's work): ``seen``
    and ``settled`` are set when a line holds ``text``, ``settled`` also when the output
    ends (the process exited)."""
    with stream, open(path, "ab", buffering=0) as out:
        for line in stream:
            out.write(line)
            if not seen.is_set() and text.encode() in line:
                seen.set()
                settled.set()
    settled.set()


def _vm_hwm_kib(pid: int) -> int | None:
    """A running process's peak resident set (``VmHWM`` of /proc/PID/status), in KiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _cpu_seconds(pid: int) -> float:
    """The user + system CPU time a running process (all its threads) used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Registry:
    """One ``docker-registry serve`` (Distribution 2.8) on 127.0.0.1, on a free port, with
    its storage (``storage.filesystem.rootdirectory``) in a new directory of its own under
    ``parent``; :meth:`stop` kills it (its process group) and removes the directory. Its
    output goes through a pipe to ``registry.log``, read by a thread that says when it
    logs ``listening on`` (or exits): it is waited for by that event, then ``GET /v2/``
    is asked once. ``blob_cache`` turns on ``storage.cache.blobdescriptor: inmemory``
    (Debian's default configuration has it), for the server comparisons."""

    def __init__(self, binary: str, parent: Path, blob_cache: bool = False) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="registry-", dir=parent))
        self.data = self.directory / "data"
        self.log_path = self.directory / "registry.log"
        self.blob_cache = blob_cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.host = ""
        try:
            self._start(binary)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, binary: str) -> None:
        config_file = self.directory / "config.yml"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
        for _ in range(PORT_ATTEMPTS):
            port = _free_port()
            storage: dict[str, Any] = {
                "filesystem": {"rootdirectory": str(self.data)},
                "maintenance": {"uploadpurging": {"enabled": False}},
            }
            if self.blob_cache:
                storage["cache"] = {"blobdescriptor": "inmemory"}
            config = {
                "version": "0.1",
                "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
                "storage": storage,
                "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            }
            config_file.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
            start = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.proc = subprocess.Popen(
                [binary, "serve", str(config_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            self.host = f"127.0.0.1:{port}"
            listening = threading.Event()
            settled = threading.Event()  # it listens, or its output ended
            assert self.proc.stdout is not None
            self.reader = threading.Thread(
                target=_copy_log,
                args=(self.proc.stdout, self.log_path, "listening on ", listening, settled),
                name="registry-log",
                daemon=True,
            )
            self.reader.start()
            if not settled.wait(REGISTRY_TIMEOUT):
                raise BenchError(
                    f"docker-registry did not say it listens in {REGISTRY_TIMEOUT:.0f} s"
                )
            if listening.is_set():
                self._answers()
                return
            self._kill()
            said = self.log_path.read_bytes()[start:].decode(errors="replace")
            if "address already in use" not in said:
                raise BenchError(f"docker-registry exited at start:\n{said.rstrip()[-2000:]}")
        raise BenchError(f"docker-registry found no free port in {PORT_ATTEMPTS} attempts")

    def _answers(self) -> None:
        """``GET /v2/`` answers 200 (it said it listens: one request, no waiting)."""
        hostname, port = self.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(hostname, int(port), timeout=REGISTRY_TIMEOUT)
        try:
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
        except OSError as e:
            raise BenchError(f"GET http://{self.host}/v2/: {e}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise BenchError(f"GET http://{self.host}/v2/ answered {response.status}")

    def peak_kib(self) -> int | None:
        return None if self.proc is None else _vm_hwm_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return _cpu_seconds(self.proc.pid)

    def blobs(self) -> dict[str, int]:
        """The blobs in its storage (manifests too): digest → size of its ``data`` file."""
        root = self.data / "docker/registry/v2/blobs"
        if not root.exists():
            return {}
        return {
            f"{p.parent.parent.parent.name}:{p.parent.name}": p.stat().st_size
            for p in root.glob("*/*/*/data")
        }

    def _kill(self) -> None:
        # The process group first, then reap: once reaped, its ID may be another's.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        if self.reader is not None:
            self.reader.join()  # (its output ended with it)
            self.reader = None

    def stop(self) -> None:
        self._kill()
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Docker:
    """The private Docker engine tests/docker_engine.py starts, and its ``docker`` client."""

    docker: str
    env: dict[str, str]
    version: str

    def argv(self, *args: str) -> list[str]:
        return [self.docker, *args]

    def major(self) -> int:
        head = self.version.split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    def run(self, *args: str) -> str:
        return run_quiet([self.docker, *args], self.env)

    def images(self) -> list[str]:
        return self.run("images", "-aq", "--no-trunc").split()

    def untag(self, ref: str) -> None:
        with contextlib.suppress(BenchError):  # a failed pull left nothing to remove
            self.run("rmi", ref)


def docker_engine_main() -> int:
    """``bench.py --docker-engine``, a child of the bench: start the tests' Docker engine
    (``started_engine()`` of tests/docker_engine.py), print one JSON line (``docker`` and
    ``env``, or ``error``), and keep it until standard input ends; then stop it. A child,
    so that the bench (whose children's peak RSS counts its own, through vfork) never
    imports pytest."""
    tests = str(REPO / "tests")
    sys.path.insert(0, tests)
    try:
        import docker_engine  # type: ignore[import-not-found]  # tests/docker_engine.py
        from _pytest.outcomes import OutcomeException
    except ImportError as e:
        print(json.dumps({"error": f"tests/docker_engine.py cannot be imported ({e})"}))
        return 0
    try:  # it says why it cannot start through pytest.skip or pytest.fail
        with docker_engine.started_engine() as engine:
            print(json.dumps({"docker": engine.docker_path, "env": engine.env}), flush=True)
            sys.stdin.buffer.read()
    except OutcomeException as e:
        print(json.dumps({"error": (str(e.msg or e).splitlines() or ["?"])[0][:100]}))
    return 0


def start_docker(stack: contextlib.ExitStack) -> tuple[Docker | None, str]:
    """Start a Docker engine with the tests' ``started_engine()`` (vfs storage driver, a
    private socket under /tmp, ``--iptables=false --ip6tables=false --bridge=none``) in a
    child (:func:`docker_engine_main`), stopped when ``stack`` closes: the engine, or None
    and why there is none."""
    log("starting a Docker engine (tests/docker_engine.py: vfs, private socket) ...")
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--docker-engine"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # stopped through its stdin, not by the terminal's ^C
    )
    assert child.stdin is not None and child.stdout is not None

    def stop() -> None:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(DOCKER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()

    stack.callback(stop)
    line = child.stdout.readline()
    try:
        said = json.loads(line)
    except ValueError:
        return None, f"no Docker engine: its helper said {line[:100]!r}"
    if "error" in said:
        return None, f"no Docker engine: {said['error']}"
    docker = Docker(said["docker"], said["env"], "")
    try:
        docker.version = docker.run("version", "--format", "{{.Server.Version}}").strip()
    except BenchError as e:
        return None, f"no Docker engine: {str(e).splitlines()[0][:100]}"
    return docker, ""


class Engine:
    """The bench's one Docker engine (:func:`start_docker`), started when an operation
    first asks for it (the pulls and pushes, export) and stopped when ``stack`` closes."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.started = False
        self.docker: Docker | None = None
        self.why = ""

    def get(self) -> tuple[Docker | None, str]:
        """The engine, or None and why there is none."""
        if not self.started:
            self.started = True
            self.docker, self.why = start_docker(self.stack)
            if self.docker is None:
                log(f"  {self.why}: docker is left out")
        return self.docker, self.why

    def versions(self) -> list[str]:
        return [f"Docker Engine {self.docker.version} (vfs)"] if self.docker else []


def http_baseline(host: str, ref: str, jobs: int) -> int:
    """The loopback baseline of a pull (``bench.py --http-get HOST NAME:TAG --jobs N``, a
    child of the bench): GET the manifest, then every blob it names (config and layers),
    ``jobs`` at a time, each on a keep-alive ``http.client`` connection of its own, 1 MiB
    reads into /dev/null through sha256, each blob checked against its digest and size.
    Returns the blob bytes read."""
    name, tag = ref.rsplit(":", 1)
    hostname, port = host.rsplit(":", 1)

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(hostname, int(port), timeout=120)

    conn = connect()
    conn.request(
        "GET",
        f"/v2/{name}/manifests/{tag}",
        headers={"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"},
    )
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise BenchError(f"GET the manifest of {host}/{ref}: {response.status}")
    doc = json.loads(body)
    todo = iter([(d["digest"], int(d["size"])) for d in [doc["config"], *doc["layers"]]])
    lock = threading.Lock()
    total = 0
    failures: list[BaseException] = []

    def fetch(conn: http.client.HTTPConnection) -> None:
        nonlocal total
        buf = bytearray(HTTP_CHUNK)
        view = memoryview(buf)
        try:
            with open(os.devnull, "wb", buffering=0) as null:
                while True:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        return
                    digest, size = item
                    conn.request("GET", f"/v2/{name}/blobs/{digest}")
                    r = conn.getresponse()
                    if r.status != 200:
                        raise BenchError(f"GET blob {digest}: {r.status}")
                    h = hashlib.sha256()
                    n = 0
                    while k := r.readinto(buf):
                        h.update(view[:k])
                        null.write(view[:k])
                        n += k
                    if n != size or f"sha256:{h.hexdigest()}" != digest:
                        raise BenchError(f"blob {digest}: {n} bytes, sha256:{h.hexdigest()}")
                    with lock:
                        total += n
        except BaseException as e:
            failures.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=fetch, args=(connect(),)) for _ in range(jobs - 1)]
    for t in threads:
        t.start()
    fetch(conn)
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return total


def http_upload_baseline(host: str, layout: Path, repo: str, jobs: int) -> int:
    """The loopback baseline of a push (``bench.py --http-put HOST LAYOUT REPO --jobs N``,
    a child of the bench): each blob of the layout's image (config and layers), ``jobs``
    at a time on a keep-alive ``http.client`` connection each, as one ``POST`` and one
    monolithic ``PUT ?digest=`` of the file (1 MiB sends). The registry checks each
    digest; the client needs none (the layout named them). Returns the bytes sent."""
    hostname, port = host.rsplit(":", 1)
    todo = iter(layout_blobs(layout).items())
    lock = threading.Lock()
    total = 0
    failures: list[BaseException] = []

    def send() -> None:
        nonlocal total
        conn = http.client.HTTPConnection(hostname, int(port), timeout=120, blocksize=HTTP_CHUNK)
        try:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                digest, size = item
                conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
                r = conn.getresponse()
                r.read()
                location = r.getheader("Location") or ""
                if r.status != 202 or not location:
                    raise BenchError(f"POST an upload of {digest}: {r.status}")
                path = location.split(host, 1)[-1]
                path += ("&" if "?" in path else "?") + f"digest={digest}"
                with open(layout / "blobs/sha256" / digest.split(":", 1)[1], "rb") as f:
                    conn.request(
                        "PUT",
                        path,
                        body=f,
                        headers={
                            "Content-Length": str(size),
                            "Content-Type": "application/octet-stream",
                        },
                    )
                r = conn.getresponse()
                r.read()
                if r.status != 201:
                    raise BenchError(f"PUT blob {digest}: {r.status}")
                with lock:
                    total += size
        except BaseException as e:
            failures.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=send) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return total


def layout_blobs(layout: Path) -> dict[str, int]:
    """The blobs a layout's image names, config first, then the layers: digest → size."""
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    return {d["digest"]: int(d["size"]) for d in [manifest["config"], *manifest["layers"]]}


@dataclass
class RemoteResult:
    key: str
    title: str
    bytes: int  # the blobs moved (config and layers, compressed as in the registry)
    layers: int
    #: Each side's runs: "ocistore", "skopeo", "docker", and for a pull the loopback
    #: baselines "baseline-1" and "baseline-4".
    runs: dict[str, list[Run]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # side → why it did not run
    error: str | None = None

    def get(self, who: str) -> list[Run]:
        return self.runs.get(who, [])


Make = Callable[[int, Path, contextlib.ExitStack], tuple[list[str], "dict[str, str] | None"]]


@dataclass
class Side:
    """One contender of a registry operation. ``make(round, dest, stack)`` sets up a run
    (untimed; ``dest`` a fresh path; what ``stack`` holds is undone after the run) and
    gives its command and environment; ``check`` reads the run's standard output."""

    who: str
    make: Make
    check: Callable[[str], None] | None = None
    skopeo: bool = False  # clear skopeo's blob cache before it


def _check_pushed(text: str, layers: int, what: str) -> None:
    """A push that uploaded every layer: ``ID: Pushed`` for each, nothing skipped."""
    pushed = text.count(": Pushed")
    for skipped in ("Layer already exists", "Mounted from"):
        if skipped in text:
            raise BenchError(f"{what} skipped a layer ({skipped!r}):\n{text.rstrip()}")
    if pushed != layers:
        raise BenchError(f"{what} said Pushed {pushed} times, not {layers}:\n{text.rstrip()}")


class RemoteBench:
    """The pull and push operations: ocistore, skopeo and docker alternating (the order
    rotates each round), each run on a fresh destination."""

    def __init__(self, bench: Bench, binary: str) -> None:
        self.bench = bench
        self.tools = bench.tools
        self.binary = binary
        self.parent = bench.scratch / "registries"

    def registry(self) -> Registry:
        return Registry(self.binary, self.parent)

    def _one(self, res: RemoteResult, side: Side, i: int) -> Run:
        scratch = self.bench.scratch
        dest = scratch / f"{res.key}-{side.who}"
        out = scratch / f"{res.key}-{side.who}.out"
        rm(dest)
        with contextlib.ExitStack() as stack:
            argv, env = side.make(i, dest, stack)
            if side.skopeo:
                clear_skopeo_cache()
            os.sync()
            run = measure(argv, out, env)
            text = out.read_text(errors="replace")
            if not run.ok:
                raise BenchError(
                    f"{res.key}: {side.who} failed (exit {run.rc}): {shlex.join(run.argv)}\n"
                    f"{run.stderr.rstrip()}\n{text.rstrip()}"
                )
            if side.check is not None:
                side.check(text)
        res.runs.setdefault(side.who, []).append(run)
        return run

    def compare(
        self,
        res: RemoteResult,
        sides: list[Side],
        baselines: list[Side],
        verify: Callable[[Path], None] | None = None,
    ) -> RemoteResult:
        repeat = self.bench.repeat
        log(
            f"{res.title}: {repeat} × " + ", ".join(s.who for s in sides)
            + (", baselines" if baselines else "")
            + "".join(f" ({who} {note})" for who, note in res.notes.items())
        )  # fmt: skip
        try:
            for i in range(repeat):
                for side in baselines:
                    self._one(res, side, i)
                k = i % len(sides)
                for side in sides[k:] + sides[:k]:
                    self._one(res, side, i)
                log(
                    f"  round {i + 1}: "
                    + ", ".join(
                        f"{s.who} {res.get(s.who)[-1].seconds:.2f} s" for s in baselines + sides
                    )
                )
            if verify is not None:
                verify(self.bench.scratch / f"{res.key}-ocistore")
        except BenchError as e:
            res.error = str(e)
            log(f"  ERROR: {e}")
        finally:
            for side in baselines + sides:
                rm(self.bench.scratch / f"{res.key}-{side.who}")
                rm(self.bench.scratch / f"{res.key}-{side.who}.out")
        return res

    def pull(
        self, key: str, registry: Registry, layout: Path, docker: Docker | None, no_docker: str
    ) -> RemoteResult:
        """Into an empty store (ocistore), a fresh OCI layout (skopeo), an engine that
        holds no image (docker; the image removed after each run)."""
        kind = key.split("-", 1)[1]
        ref = PULL_REFS[kind]
        src = f"{registry.host}/{ref}"
        blobs = layout_blobs(layout)
        layers = len(blobs) - 1
        res = RemoteResult(key, f"pull {kind}", sum(blobs.values()), layers)

        def ours(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
            return self.bench.ocistore(dest, "pull", "-q", src), None

        def skopeo(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
            argv = self.tools.skopeo_copy(
                "--src-tls-verify=false", f"docker://{src}", f"oci:{dest}:{TAG}"
            )
            return argv, None

        sides = [Side("ocistore", ours), Side("skopeo", skopeo, skopeo=True)]
        if docker is not None and kind == "zstd" and docker.major() < 23:
            res.notes["docker"] = DOCKER_NO_ZSTD_PULL
        elif docker is not None:

            def docker_pull(
                i: int, dest: Path, stack: contextlib.ExitStack
            ) -> tuple[list[str], dict[str, str]]:
                left = docker.images()
                if left:
                    raise BenchError(f"the Docker engine still holds {left} before a pull")
                stack.callback(docker.untag, src)
                return docker.argv("pull", src), docker.env

            def docker_pulled(text: str) -> None:
                done = text.count(": Pull complete")
                if "Already exists" in text or done != layers:
                    raise BenchError(
                        f"docker pull did not download every layer ({done} of {layers}):\n"
                        + text.rstrip()
                    )

            sides.append(Side("docker", docker_pull, docker_pulled))
        else:
            res.notes["docker"] = no_docker

        def baseline(n: int) -> Side:
            def make(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
                script = str(Path(__file__).resolve())
                return [
                    self.tools.python,
                    script,
                    "--http-get",
                    registry.host,
                    ref,
                    "--jobs",
                    str(n),
                ], None

            def read_all(text: str) -> None:
                if text.strip() != str(res.bytes):
                    raise BenchError(f"the baseline read {text.strip()} bytes, not {res.bytes}")

            return Side(f"baseline-{n}", make, read_all)

        baselines = [baseline(n) for n in HTTP_JOBS]
        return self.compare(res, sides, baselines, self.bench._verify_loaded)

    def push(
        self, key: str, layout: Path, root: Path, docker: Docker | None, no_docker: str
    ) -> RemoteResult:
        """Each run to a new registry (fresh storage, a port of its own, nothing for any
        tool to skip or mount), repository ``bench/<tool>-push-N``: from a store that
        loaded the layout (ocistore), the layout (skopeo), the engine's image (docker,
        loaded from the docker-archive, tagged into the new repository)."""
        kind = key.split("-", 1)[1]
        blobs = layout_blobs(layout)
        layers = len(blobs) - 1
        res = RemoteResult(key, f"push {kind}", sum(blobs.values()), layers)
        pushed: list[Registry] = []  # the current run's registry, for the checks

        def fresh(stack: contextlib.ExitStack) -> Registry:
            registry = stack.enter_context(self.registry())
            pushed[:] = [registry]
            return registry

        def stored(what: str) -> Callable[[str], None]:
            """Every layer uploaded: the push says ``Pushed`` for each (skopeo says nothing
            of blobs it skips) and the fresh registry holds each blob; docker's layers are
            its own gzip of them, so for docker their number is checked."""

            def check(text: str) -> None:
                if what.startswith("baseline"):
                    if text.strip() != str(res.bytes):
                        raise BenchError(f"{what} sent {text.strip()} bytes, not {res.bytes}")
                elif what != "skopeo":
                    _check_pushed(text, layers, f"{what} push")
                held = pushed[0].blobs()
                if what == "docker":
                    if len(held) != len(blobs) + 1:  # and the manifest
                        raise BenchError(f"docker push left {len(held)} blobs in the registry")
                    return
                for digest, size in blobs.items():
                    if held.get(digest) != size:
                        raise BenchError(
                            f"{what} push: the registry holds {digest} as "
                            f"{held.get(digest)} bytes, not {size}"
                        )

            return check

        def ours(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
            host = fresh(stack).host
            return self.bench.ocistore(root, "push", REF, f"{host}/bench/push-{i + 1}:1"), None

        def skopeo(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
            host = fresh(stack).host
            return [
                self.tools.skopeo, "--insecure-policy", "copy", "--dest-tls-verify=false",
                f"oci:{layout}:{TAG}", f"docker://{host}/bench/skopeo-push-{i + 1}:1",
            ], None  # fmt: skip

        sides = [
            Side("ocistore", ours, stored("ocistore")),
            Side("skopeo", skopeo, stored("skopeo"), skopeo=True),
        ]
        if docker is not None and kind == "zstd":
            res.notes["docker"] = DOCKER_NO_ZSTD_PUSH
        elif docker is not None:

            def docker_push(
                i: int, dest: Path, stack: contextlib.ExitStack
            ) -> tuple[list[str], dict[str, str]]:
                target = f"{fresh(stack).host}/bench/docker-push-{i + 1}:1"
                docker.run("tag", REF, target)
                stack.callback(docker.untag, target)
                return docker.argv("push", target), docker.env

            sides.append(Side("docker", docker_push, stored("docker")))
        else:
            res.notes["docker"] = no_docker

        def baseline(n: int) -> Side:
            def make(i: int, dest: Path, stack: contextlib.ExitStack) -> tuple[list[str], None]:
                host = fresh(stack).host
                script = str(Path(__file__).resolve())
                repo = f"bench/http-push-{i + 1}"
                return [self.tools.python, script, "--http-put", host, str(layout), repo,
                        "--jobs", str(n)], None  # fmt: skip

            return Side(f"baseline-{n}", make, stored(f"baseline-{n}"))

        return self.compare(res, sides, [baseline(n) for n in HTTP_JOBS])


def bench_remote(
    bench: Bench, keys: list[str], engine: Engine
) -> tuple[list[RemoteResult], list[str]]:
    """Start the registry (and the Docker engine, if one can be and it is not yet), put
    the bench image into it, run the pulls, then the pushes; the registry is stopped at
    the end, whatever happens. Returns the results and the registry's version for the
    machine line."""
    inputs = bench.inputs
    layouts = {"gzip": inputs.layout_gzip, "zstd": inputs.layout_zstd}
    versions: list[str] = []
    results: list[RemoteResult] = []
    with contextlib.ExitStack() as stack:
        try:
            binary = registry_binary()
            said = run_quiet([binary, "--version"]).split()
            versions.append(f"docker-registry {said[-1] if said else '?'}")
            remote = RemoteBench(bench, binary)
            registry = stack.enter_context(remote.registry())
            log(f"registry on {registry.host}: pushing the bench image into it (gzip, zstd)")
            for kind, ref in PULL_REFS.items():
                run_quiet(
                    bench.tools.skopeo_copy(
                        "--dest-tls-verify=false",
                        f"oci:{layouts[kind]}:{TAG}",
                        f"docker://{registry.host}/{ref}",
                    )
                )
        except BenchError as e:
            log(f"  ERROR: {e}")
            return [
                RemoteResult(k, k.replace("-", " "), 0, 0, error=str(e)) for k in keys
            ], versions
        docker, no_docker = engine.get()
        for key in keys:
            if key.startswith("pull-"):
                results.append(remote.pull(key, registry, layouts[key[5:]], docker, no_docker))
        pushes = [k for k in keys if k.startswith("push-")]
        if pushes and docker is not None:
            try:
                docker.run("load", "-q", "-i", str(inputs.docker_archive))
            except BenchError as e:
                docker, no_docker = None, f"docker load failed: {str(e).splitlines()[0][:100]}"
        for key in pushes:
            kind = key[5:]
            try:
                root = bench.preload(layouts[kind], f"preloaded-{kind}")
            except BenchError as e:
                res = RemoteResult(key, f"push {kind}", 0, 0, error=f"preloading failed: {e}")
                results.append(res)
                continue
            results.append(remote.push(key, layouts[kind], root, docker, no_docker))
            rm(root)
    return results, versions


# -- serve: the store as a registry, against Distribution (issue 14) -----------------------

SERVE_OPS = ["serve-copy", "serve-blob", "serve-head"]
#: Issue 14's targets: a copy's time, ocistore / Distribution, at most; the throughputs
#: (blob MB/s, manifest HEADs a second), ocistore / Distribution, at least.
SERVE_TARGETS = {"serve-copy": 0.7, "serve-blob": 1.0, "serve-head": 1.0}
SERVE_REPO = "library/bench"  # both servers' name of the image (the store's bench:latest)
SERVE_TAG = "latest"
SERVERS = ("ocistore", "distribution")
SERVE_START_TIMEOUT = 60.0  # seconds ocistore serve is given to say where it listens (a bound)
SERVE_STOP_TIMEOUT = 30.0  # seconds it is given to exit after SIGTERM
BLOB_GETS = 10  # GETs of the largest layer in one curl run, one after another, one connection
HEAD_CLIENTS = 8  # concurrent keep-alive connections of a HEAD run
HEAD_SECONDS = 10.0  # the length of a HEAD run
HEAD_ROUNDS = 3  # HEAD runs of each server (fewer when --repeat is lower)
#: Where skopeo copies to: a tmpfs when there is one, so that the disk's writeback and
#: fsyncs, the same for both servers and most of a copy's time here, stay out of it.
SHM = Path("/dev/shm")


class OcistoreServer:
    """``ocistore serve --addr 127.0.0.1:0`` (the command given): its first line on
    standard output, ``serving on http://127.0.0.1:PORT``, says where it listens; a thread
    reads it (an event, no polling) and copies the rest of its output, with its standard
    error, to ``serve.log``. :meth:`stop` sends SIGTERM and gives its exit status."""

    def __init__(self, argv: list[str], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "serve.log"
        self.host = ""
        self.rc: int | None = None
        self._first: list[bytes] = []
        settled = threading.Event()
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        self.reader = threading.Thread(
            target=self._read, args=(self.proc.stdout, settled), name="serve-out", daemon=True
        )
        self.reader.start()
        try:
            if not settled.wait(SERVE_START_TIMEOUT):
                raise BenchError(f"ocistore serve said nothing in {SERVE_START_TIMEOUT:.0f} s")
            line = self._first[0].decode(errors="replace").rstrip("\n") if self._first else ""
            prefix = "serving on http://"
            if not line.startswith(prefix) or not line.rsplit(":", 1)[-1].isdigit():
                self.stop()
                said = self.log_path.read_text(errors="replace").rstrip()[-2000:]
                raise BenchError(
                    f"ocistore serve's first line is {line!r}, not `serving on http://HOST:PORT` "
                    f"(exit {self.rc}):\n{said}"
                )
            self.host = line.removeprefix(prefix)
        except BaseException:
            self.stop()
            raise

    def _read(self, stream: Any, settled: threading.Event) -> None:
        with stream, open(self.log_path, "ab", buffering=0) as out:
            first = stream.readline()
            if first:
                self._first.append(first)
            settled.set()
            for line in stream:
                out.write(line)
        settled.set()

    def __enter__(self) -> OcistoreServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def peak_kib(self) -> int | None:
        return _vm_hwm_kib(self.proc.pid) if self.rc is None else None

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM, then its exit status (SIGKILL and BenchError if it does not exit in
        :data:`SERVE_STOP_TIMEOUT`); a second call gives the same status."""
        if self.rc is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.rc = self.proc.wait(SERVE_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.rc = self.proc.wait()
                self.reader.join()
                raise BenchError(
                    f"ocistore serve did not exit in {SERVE_STOP_TIMEOUT:.0f} s after SIGTERM"
                ) from None
            self.reader.join()
        return self.rc


@dataclass
class ServeResult:
    key: str
    title: str
    client: str  # what asks the servers (the table's words)
    unit: str  # of the figures: "s", "MB/s", "HEAD/s"
    per: str  # what one unit of work is, for the servers' CPU: "copy", "GET", "HEAD"
    #: Each server's figure, one a run: "ocistore", "distribution".
    figures: dict[str, list[float]] = field(default_factory=dict)
    #: Each server's CPU seconds over each run (/proc/PID/stat, all its threads) and the
    #: units of work of the run (copies, GETs, HEADs answered).
    server_cpu: dict[str, list[float]] = field(default_factory=dict)
    work: dict[str, list[int]] = field(default_factory=dict)
    runs: dict[str, list[Run]] = field(default_factory=dict)  # the client's runs
    error: str | None = None

    def median(self, who: str) -> float | None:
        got = self.figures.get(who)
        return statistics.median(got) if got else None

    def cpu_per_unit(self, who: str) -> float | None:
        pairs = list(zip(self.server_cpu.get(who, []), self.work.get(who, []), strict=False))
        return statistics.median(c / w for c, w in pairs if w) if pairs else None


@dataclass
class ServeSection:
    results: list[ServeResult] = field(default_factory=list)
    peak_kib: dict[str, int | None] = field(default_factory=dict)  # each server's VmHWM
    image: str = ""  # what both served, for the report
    dest: str = ""  # where the copies went
    versions: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    error: str | None = None  # the servers' setup, or ocistore serve's exit


@dataclass
class ServeSide:
    """One side of a serve operation: ``make(dest)`` gives the client's command (``dest``
    a new path of its own); ``figure(run, stdout, dest)`` checks what it got and gives
    the run's figure and its units of work; ``server`` is whose CPU is counted."""

    who: str
    make: Callable[[Path], list[str]]
    figure: Callable[[Run, str, Path], tuple[float, int]]
    server: OcistoreServer | Registry
    skopeo: bool = False


def head_load(
    host: str, path: str, accept: str, digest: str, clients: int, seconds: float
) -> dict[str, Any]:
    """The HEAD load (``bench.py --head-load``, a child of the bench): ``clients``
    keep-alive connections, each sending ``HEAD path`` as soon as the previous answer
    came (one at a time, no pipelining), for ``seconds``; one thread, epoll. Every answer
    must be a 200 with ``digest`` in it. wrk 4.1 (Debian's) cannot: it registers no
    headers-complete callback with its parser, which then waits for the body a HEAD
    answer's ``Content-Length`` announces and never completes a request (0 requests)."""
    import selectors

    hostname, port = host.rsplit(":", 1)
    request = (
        f"HEAD {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ocistore-bench\r\n"
        f"Accept: {accept}\r\n\r\n"
    ).encode()
    ok, tag = b"HTTP/1.1 200 ", digest.encode()
    sel = selectors.DefaultSelector()
    conns: list[socket.socket] = []
    bufs: list[bytearray] = []
    done = bad = 0
    sample = ""
    try:
        for i in range(clients):
            s = socket.create_connection((hostname, int(port)), timeout=30)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            conns.append(s)
            bufs.append(bytearray())
            sel.register(s, selectors.EVENT_READ, i)
        start = time.perf_counter()
        end = start + seconds
        for s in conns:
            s.send(request)
        while (left := end - time.perf_counter()) > 0:
            for key, _ in sel.select(left):
                s, buf = conns[key.data], bufs[key.data]
                data = s.recv(65536)
                if not data:
                    raise BenchError(f"{host} closed a keep-alive connection after {done} HEADs")
                buf += data
                if not buf.endswith(b"\r\n\r\n"):
                    continue  # (the head came in pieces; a HEAD's answer has no body)
                if not (buf.startswith(ok) and tag in buf):
                    bad += 1
                    sample = sample or buf.decode("latin-1")[:500]
                done += 1
                buf.clear()
                if s.send(request) != len(request):
                    raise BenchError("a HEAD request did not fit in the socket's buffer")
        elapsed = time.perf_counter() - start
    finally:
        for s in conns:
            s.close()
        sel.close()
    return {"requests": done, "seconds": elapsed, "bad": bad, "sample": sample}


def head_load_main(argv: list[str]) -> int:
    """``bench.py --head-load HOST PATH --accept TYPE --digest D [--clients N]
    [--seconds S]``: :func:`head_load`, its result as one JSON line."""
    p = argparse.ArgumentParser(prog="bench.py --head-load")
    p.add_argument("host")
    p.add_argument("path")
    p.add_argument("--accept", required=True)
    p.add_argument("--digest", required=True)
    p.add_argument("--clients", type=int, default=HEAD_CLIENTS)
    p.add_argument("--seconds", type=float, default=HEAD_SECONDS)
    args = p.parse_args(argv)
    said = head_load(args.host, args.path, args.accept, args.digest, args.clients, args.seconds)
    print(json.dumps(said))
    return 0


def _http(
    host: str, method: str, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One request (untimed, for the checks): status, headers (names lower-cased), body."""
    hostname, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=120)
    try:
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        h = hashlib.sha256()
        body = bytearray()
        while chunk := r.read(HTTP_CHUNK):
            h.update(chunk)
            if len(body) < MIB:  # (the manifest is kept; a layer is only hashed)
                body += chunk
        said = {k.lower(): v for k, v in r.getheaders()}
        said["x-bench-sha256"] = f"sha256:{h.hexdigest()}"
        return r.status, said, bytes(body)
    except OSError as e:
        raise BenchError(f"{method} http://{host}{path}: {e}") from None
    finally:
        conn.close()


class ServeBench:
    """The serve operations: ocistore serve and Distribution, both on 127.0.0.1 and
    holding the same image (the same manifest and blobs: checked), asked by the same
    client, alternating (the order rotates each round)."""

    def __init__(
        self, bench: Bench, registry: Registry, server: OcistoreServer, curl: str, dest: Path
    ) -> None:
        self.bench = bench
        self.tools = bench.tools
        self.registry = registry
        self.server = server
        self.curl = curl
        self.dest = dest
        layout = bench.inputs.layout_gzip
        index = json.loads((layout / "index.json").read_text())
        self.manifest = index["manifests"][0]["digest"]
        self.blobs = layout_blobs(layout)
        layers = list(self.blobs.items())[1:]
        self.layer = max(layers, key=lambda item: item[1])
        self.hosts = {"ocistore": server.host, "distribution": registry.host}

    def manifest_path(self) -> str:
        return f"/v2/{SERVE_REPO}/manifests/{SERVE_TAG}"

    def check_same(self) -> list[str]:
        """Both servers answer with the layout's manifest (HEAD and GET, byte for byte)
        and the largest layer's bytes; Distribution's storage holds every blob. Also the
        servers' first requests, untimed."""
        raw = (self.bench.inputs.layout_gzip / "blobs/sha256" / self.manifest[7:]).read_bytes()
        accept = {"Accept": f"{OCI_MANIFEST}, {DOCKER_MANIFEST}"}
        digest = self.layer[0]
        for who, host in self.hosts.items():
            for method in ("HEAD", "GET"):
                status, headers, body = _http(host, method, self.manifest_path(), accept)
                got = headers.get("docker-content-digest")
                if status != 200 or got != self.manifest:
                    raise BenchError(
                        f"{who}: {method} {self.manifest_path()} answered {status} with "
                        f"Docker-Content-Digest {got}, not 200 and {self.manifest}"
                    )
                kind = headers.get("content-type")
                if kind != OCI_MANIFEST:
                    raise BenchError(f"{who}: the manifest's Content-Type is {kind}")
                if method == "GET" and body != raw:
                    raise BenchError(
                        f"{who}: GET {self.manifest_path()} is not the layout's manifest"
                    )
            status, headers, _ = _http(host, "GET", f"/v2/{SERVE_REPO}/blobs/{digest}", {})
            if status != 200 or headers["x-bench-sha256"] != digest:
                raise BenchError(
                    f"{who}: GET blob {digest} answered {status}, {headers['x-bench-sha256']}"
                )
        held = self.registry.blobs()
        for d, n in self.blobs.items():
            if held.get(d) != n:
                raise BenchError(
                    f"Distribution's storage holds {d} as {held.get(d)} bytes, not {n}"
                )
        return [
            f"both servers answer `{SERVE_REPO}:{SERVE_TAG}` with the layout's manifest "
            f"({self.manifest[:19]}…, HEAD and GET, the same bytes) and the largest layer's "
            f"bytes (sha256 checked); Distribution's storage holds the image's "
            f"{len(self.blobs)} blobs with their sizes"
        ]

    def _one(self, res: ServeResult, side: ServeSide) -> None:
        scratch = self.bench.scratch
        dest = self.dest / f"{res.key}-{side.who}"
        out = scratch / f"{res.key}-{side.who}.out"
        rm(dest)
        argv = side.make(dest)
        if side.skopeo:
            clear_skopeo_cache()
        os.sync()
        before = side.server.cpu_seconds()
        run = measure(argv, out)
        used = side.server.cpu_seconds() - before
        text = out.read_text(errors="replace")
        if not run.ok:
            raise BenchError(
                f"{res.key}: {side.who} failed (exit {run.rc}): {shlex.join(run.argv)}\n"
                f"{run.stderr.rstrip()}\n{text.rstrip()}"
            )
        figure, work = side.figure(run, text, dest)
        res.figures.setdefault(side.who, []).append(figure)
        res.runs.setdefault(side.who, []).append(run)
        res.server_cpu.setdefault(side.who, []).append(used)
        res.work.setdefault(side.who, []).append(work)
        rm(dest)
        rm(out)

    def compare(self, res: ServeResult, sides: list[ServeSide], rounds: int) -> ServeResult:
        log(f"{res.title}: {rounds} × " + ", ".join(s.who for s in sides))
        try:
            for i in range(rounds):
                k = i % len(sides)
                for side in sides[k:] + sides[:k]:
                    self._one(res, side)
                log(
                    f"  round {i + 1}: "
                    + ", ".join(
                        f"{s.who} {_fmt_figure(res.figures[s.who][-1], res.unit)}" for s in sides
                    )
                )
        except (BenchError, OSError, ValueError, KeyError) as e:  # (a server gone, bad output)
            res.error = str(e) or repr(e)
            log(f"  ERROR: {res.error}")
        finally:
            for side in sides:
                rm(self.dest / f"{res.key}-{side.who}")
                rm(self.bench.scratch / f"{res.key}-{side.who}.out")
        return res

    def _servers(self) -> list[tuple[str, OcistoreServer | Registry]]:
        return [("ocistore", self.server), ("distribution", self.registry)]

    # serve-copy: skopeo copy docker://HOST/library/bench:latest oci:DIR:bench from each.

    def copy(self) -> ServeResult:
        res = ServeResult(
            "serve-copy",
            "serve: skopeo copy",
            "`skopeo copy docker://HOST/library/bench:latest oci:DIR:bench`",
            "s",
            "copy",
        )

        def copied(run: Run, text: str, dest: Path) -> tuple[float, int]:
            index = json.loads((dest / "index.json").read_text())
            got = [m["digest"] for m in index["manifests"]]
            if got != [self.manifest]:
                raise BenchError(
                    f"serve-copy: {dest} holds the manifests {got}, not {self.manifest}"
                )
            for d, n in self.blobs.items():
                blob = dest / "blobs/sha256" / d.split(":", 1)[1]
                if not blob.exists() or blob.stat().st_size != n:
                    raise BenchError(f"serve-copy: {dest} lacks {d} ({n} bytes)")
            return run.seconds, 1

        def side(who: str, server: OcistoreServer | Registry) -> ServeSide:
            src = f"docker://{self.hosts[who]}/{SERVE_REPO}:{SERVE_TAG}"
            return ServeSide(
                who,
                lambda dest: self.tools.skopeo_copy(
                    "--src-tls-verify=false", src, f"oci:{dest}:{TAG}"
                ),
                copied,
                server,
                skopeo=True,
            )

        sides = [side(who, server) for who, server in self._servers()]
        return self.compare(res, sides, self.bench.repeat)

    # serve-blob: the largest layer, BLOB_GETS times on one connection, by curl.

    def blob(self) -> ServeResult:
        digest, size = self.layer
        res = ServeResult(
            "serve-blob",
            "serve: blob GET",
            f"`curl -s -o /dev/null` of the largest layer ({size / MB:.0f} MB), "
            f"{BLOB_GETS} times on one connection",
            "MB/s",
            "GET",
        )

        def got(run: Run, text: str, dest: Path) -> tuple[float, int]:
            rows = [line.split() for line in text.splitlines() if line.strip()]
            if len(rows) != BLOB_GETS or any(r[0] != "200" or int(r[1]) != size for r in rows):
                raise BenchError(
                    f"serve-blob: curl said {text.strip()[:300]!r}, not {BLOB_GETS} × 200 {size}"
                )
            return BLOB_GETS * size / sum(float(r[2]) for r in rows) / MB, BLOB_GETS

        def side(who: str, server: OcistoreServer | Registry) -> ServeSide:
            url = f"http://{self.hosts[who]}/v2/{SERVE_REPO}/blobs/{digest}"
            argv = [self.curl, "-s", "-w", "%{http_code} %{size_download} %{time_total}\\n"]
            for _ in range(BLOB_GETS):
                argv += ["-o", "/dev/null", url]
            return ServeSide(who, lambda dest: argv, got, server)

        sides = [side(who, server) for who, server in self._servers()]
        return self.compare(res, sides, self.bench.repeat)

    # serve-head: manifest HEADs, HEAD_CLIENTS keep-alive connections, HEAD_SECONDS.

    def head(self) -> ServeResult:
        res = ServeResult(
            "serve-head",
            "serve: manifest HEAD",
            f"{HEAD_CLIENTS} keep-alive clients for {HEAD_SECONDS:g} s (`bench.py --head-load`: "
            "wrk cannot HEAD)",
            "HEAD/s",
            "HEAD",
        )

        def answered(run: Run, text: str, dest: Path) -> tuple[float, int]:
            said = json.loads(text)
            if said["bad"] or not said["requests"]:
                raise BenchError(
                    f"serve-head: {said['bad']} of {said['requests']} answers were not 200 "
                    f"with the digest: {said['sample']!r}"
                )
            return said["requests"] / said["seconds"], int(said["requests"])

        def side(who: str, server: OcistoreServer | Registry) -> ServeSide:
            argv = [
                self.tools.python, str(Path(__file__).resolve()), "--head-load",
                self.hosts[who], self.manifest_path(), "--accept", OCI_MANIFEST,
                "--digest", self.manifest, "--clients", str(HEAD_CLIENTS),
                "--seconds", str(HEAD_SECONDS),
            ]  # fmt: skip
            return ServeSide(who, lambda dest: argv, answered, server)

        sides = [side(who, server) for who, server in self._servers()]
        return self.compare(res, sides, min(HEAD_ROUNDS, self.bench.repeat))


def median_cpu(runs: list[Run]) -> float | None:
    return statistics.median(r.user + r.system for r in runs) if runs else None


def _fmt_figure(x: float, unit: str) -> str:
    return f"{_fmt_s(x)} s" if unit == "s" else f"{x:,.0f} {unit}"


def _tmpfs_dir() -> Path | None:
    """A directory of /dev/shm if it is a tmpfs the bench can write, else None."""
    if "tmpfs" not in filesystem_of(SHM) or not os.access(SHM, os.W_OK):
        return None
    return Path(tempfile.mkdtemp(prefix="ocistore-bench-", dir=SHM))


def bench_serve(bench: Bench, keys: list[str]) -> ServeSection:
    """Load the gzip layout into a store, start Distribution (its blob descriptor cache in
    memory, as Debian configures it) and push the image into it with ``ocistore push``,
    start ``ocistore serve`` on the store, check both serve the same bytes, run the
    operations; read both servers' peak RSS, stop them (ocistore serve by SIGTERM: it
    must exit 0), whatever happens."""
    section = ServeSection()
    inputs = bench.inputs
    blobs = layout_blobs(inputs.layout_gzip)
    section.image = (
        f"{len(blobs) - 1} gzip layers and a config, {sum(blobs.values()) / MB:.0f} MB "
        f"(the bench image's gzip OCI layout)"
    )
    with contextlib.ExitStack() as stack:
        try:
            binary = registry_binary()
            curl = shutil.which("curl")
            if curl is None:
                raise BenchError("missing tool: curl (apt-get install curl)")
            said = run_quiet([binary, "--version"]).split()
            section.versions.append(f"docker-registry {said[-1] if said else '?'}")
            section.versions.append(run_quiet([curl, "--version"]).split("(", 1)[0].strip())
            dest = _tmpfs_dir()
            if dest is not None:
                stack.callback(rm, dest)
                section.dest = f"a tmpfs ({SHM})"
            else:
                dest = bench.scratch / "serve-copies"
                dest.mkdir(parents=True, exist_ok=True)
                section.dest = f"the work directory ({filesystem_of(bench.scratch)})"
            root = bench.preload(inputs.layout_gzip, "preloaded-serve")
            stack.callback(rm, root)
            registry = stack.enter_context(
                Registry(binary, bench.scratch / "registries", blob_cache=True)
            )
            target = f"{registry.host}/{SERVE_REPO}:{SERVE_TAG}"
            log(f"serve: Distribution on {registry.host}; ocistore push {REF} {target}")
            run_quiet(bench.ocistore(root, "push", REF, target))
            argv = bench.ocistore(root, "serve", "--addr", "127.0.0.1:0", "-q")
            server = stack.enter_context(OcistoreServer(argv, bench.scratch / "serve"))
            log(f"serve: ocistore serve on {server.host}")
            serve = ServeBench(bench, registry, server, curl, dest)
            section.checks += serve.check_same()
        except (BenchError, OSError) as e:
            section.error = str(e)
            log(f"  ERROR: {section.error}")
            return section
        ops = {"serve-copy": serve.copy, "serve-blob": serve.blob, "serve-head": serve.head}
        for key in keys:
            section.results.append(ops[key]())
        section.peak_kib = {"ocistore": server.peak_kib(), "distribution": registry.peak_kib()}
        try:
            rc = server.stop()
        except BenchError as e:
            rc = None
            section.error = str(e)
        if rc is not None and rc != 0:
            told = server.log_path.read_text(errors="replace").rstrip()[-1000:]
            section.error = f"ocistore serve exited {rc} on SIGTERM, not 0:\n{told}"
        if section.error:
            log(f"  ERROR: {section.error}")
    return section


SERVE_NOTE = (
    "Serve: `ocistore serve --addr 127.0.0.1:0 -q` on a store that loaded the gzip OCI "
    "layout, against Debian's Distribution (`docker-registry serve`, filesystem storage "
    "in a new directory, `storage.cache.blobdescriptor: inmemory` as Debian's "
    "configuration has it, access log off, log level info) holding the same image, put "
    "into it by `ocistore push` (the same manifest and blobs: checked); both on "
    "127.0.0.1, plain HTTP, the image as `library/bench:latest`; each started by the "
    "bench (Distribution's `listening on` line and ocistore serve's `serving on` line "
    "waited for, then `GET /v2/`) and stopped at the end. Each round asks both, the order "
    "rotating. serve-copy = `skopeo copy --src-tls-verify=false "
    "docker://HOST/library/bench:latest oci:DIR:bench` into a new directory on DEST, "
    "skopeo's blob cache deleted first (a copy's time is mostly skopeo's own work, "
    "hashing and writing the blobs: its CPU is in the last column). serve-blob = one "
    f"curl process GETting the largest layer {BLOB_GETS} times on one keep-alive "
    "connection into /dev/null; MB/s = the bytes (10^6) over the sum of curl's "
    "`%{time_total}`. serve-head = `HEAD /v2/library/bench/manifests/latest` with "
    f"`Accept: {OCI_MANIFEST}`, {HEAD_CLIENTS} keep-alive connections each sending its "
    f"next request as the answer comes, for {HEAD_SECONDS:g} s, every answer checked "
    "(200 and the digest): by the bench's own client (`bench.py --head-load`, one Python "
    "process, epoll), since Debian's wrk 4.1 cannot measure HEAD: its parser has no "
    "headers-complete callback, so it waits for the body the `Content-Length` of a HEAD "
    "answer announces and completes no request. Server CPU = the server process's user + "
    "system time over a run (/proc/PID/stat, all its threads) per unit of work, median "
    "of the runs; client CPU = the client's (skopeo's, curl's, the HEAD client's) user + "
    "system time a run, median, asking ocistore / Distribution. Peak RSS = each server's "
    "VmHWM (/proc/PID/status) at the end of the serve operations."
)


def serve_table(section: ServeSection, target: Callable[[bool], str]) -> list[str]:
    lines = [
        "| serve operation | client | ocistore | Distribution "
        "| ocistore / Distribution (target) | server CPU, ocistore / Distribution "
        "| client CPU s a run, asking ocistore / Distribution |",
        "|---|---|--:|--:|---|--:|--:|",
    ]
    for res in section.results:
        o, d = res.median("ocistore"), res.median("distribution")
        if res.error or o is None or d is None:
            target(False)
            reason = (res.error or "no runs").splitlines()[0][:120]
            lines.append(f"| {res.title} | {res.client} | **FAIL**: {reason} | | | | |")
            continue
        tgt = SERVE_TARGETS[res.key]
        ratio = o / d  # (times: at most the target; throughputs: at least)
        if res.unit == "s":
            ratio_cell = f"{ratio:.2f} (≤ {tgt:g}) {target(ratio <= tgt)}"
        else:
            ratio_cell = f"{ratio:.2f} (≥ {tgt:g}) {target(ratio >= tgt)}"
        client = [median_cpu(res.runs.get(who, [])) for who in SERVERS]
        client_cell = " / ".join("—" if c is None else f"{c:.2f}" for c in client)
        co, cd = res.cpu_per_unit("ocistore"), res.cpu_per_unit("distribution")
        if co is None or cd is None:
            cpu_cell = "—"
        elif res.per == "HEAD":
            cpu_cell = f"{co * 1e6:.0f} / {cd * 1e6:.0f} µs a {res.per}"
        elif res.per == "GET":
            cpu_cell = f"{co * 1e3:.1f} / {cd * 1e3:.1f} ms a {res.per}"
        else:
            cpu_cell = f"{co:.2f} / {cd:.2f} s a {res.per}"
        lines.append(
            f"| {res.title} | {res.client} | {_fmt_figure(o, res.unit)} "
            f"| {_fmt_figure(d, res.unit)} | {ratio_cell} | {cpu_cell} | {client_cell} |"
        )
    if section.error:
        target(False)
        lines.append(f"| serve | | **FAIL**: {section.error.splitlines()[0][:160]} | | | | |")
    ours, dist = section.peak_kib.get("ocistore"), section.peak_kib.get("distribution")
    if ours is not None:
        lines.append("")
        lines.append(
            f"Peak RSS over the serve operations (VmHWM): ocistore serve {ours / 1024:.0f} MiB"
            + (f", Distribution {dist / 1024:.0f} MiB." if dist is not None else ".")
        )
    return lines


def serve_cpu_table(section: ServeSection) -> str:
    rows = [
        "| serve operation | client CPU s (wall), asking ocistore | asking Distribution "
        "| ocistore serve CPU s a run | Distribution CPU s a run |",
        "|---|--:|--:|--:|--:|",
    ]
    for res in section.results:
        cells = []
        for who in SERVERS:
            runs = res.runs.get(who, [])
            if runs:
                cpu = statistics.median(r.user + r.system for r in runs)
                cells.append(f"{cpu:.2f} ({_fmt_s(median_s(runs))})")
            else:
                cells.append("—")
        for who in SERVERS:
            used = res.server_cpu.get(who)
            cells.append(f"{statistics.median(used):.2f}" if used else "—")
        rows.append(f"| {res.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# -- the file system operations: unpack, export, commit -------------------------------------

FS_OPS = ["unpack", "export", "commit"]
FS_TARGETS = {"unpack": 0.25, "export": 0.5, "commit": 0.25}  # ocistore / the peer
TAR_TARGET = 2.0  # unpack: ocistore / GNU tar -x of the flattened tree
COMMITTED = "bench:committed"
#: ext4 without a journal (this machine's disk) passes over every inode freed less than 30 s
#: ago (35 while its inode table block is dirty) when it allocates one (``recently_deleted``
#: in fs/ext4/ialloc.c): creating 20,000 files just after deleting 20,000 took 10-15 s of
#: system time instead of 1-2. The trees are therefore deleted only between operations,
#: and a timed run starts this long after the bench's last deletion.
SETTLE_S = 36.0
CHANGE_SEED = 20  # the commit's changes: which files, and their new bytes
CHANGE_FRACTION = 0.01  # of the regular files, rewritten in place with as many bytes
CHANGE_DELETED = 10  # regular files deleted
CHANGE_ADDED = 10  # new files
#: What Docker's init layer adds to every container's file system (moby's
#: daemon/initlayer), the only names ``docker export`` may have that the image has not.
DOCKER_INIT_LAYER = frozenset(
    {".dockerenv", "dev", "dev/console", "dev/pts", "dev/shm", "etc", "etc/hostname",
     "etc/hosts", "etc/mtab", "etc/resolv.conf", "proc", "sys"}
)  # fmt: skip


@dataclass
class FsResult:
    key: str
    title: str
    peer: str  # the peer's name among the runs: "umoci" or "docker"
    peer_title: str
    bytes: int  # the image's uncompressed layer tars (for MB/s)
    #: Each side's runs ("ocistore", the peer, "tar" for unpack); a side of several commands
    #: (docker create, then docker export) has their sum as its run, and each in ``parts``.
    runs: dict[str, list[Run]] = field(default_factory=dict)
    parts: dict[str, list[list[Run]]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # side → why it did not run
    checks: list[str] = field(default_factory=list)  # what was verified, for the report
    skipped: str | None = None  # the whole operation is not run (not a failure)
    error: str | None = None

    def get(self, who: str) -> list[Run]:
        return self.runs.get(who, [])


FsMake = Callable[[int, Path], tuple[list[list[str]], "dict[str, str] | None"]]


@dataclass
class FsSide:
    """One contender of a file system operation. ``make(round, dest)`` prepares a run
    (untimed; ``dest`` a new path of its own) and gives its commands, run one after the
    other and timed together, and their environment; ``check(round, dest, stdout)``
    looks at the result (untimed; stdout of the last command)."""

    who: str
    make: FsMake
    check: Callable[[int, Path, str], None] | None = None


def count_entries(root: Path) -> int:
    """Entries under ``root`` (itself not counted), no symbolic link followed."""
    n = 0
    todo = [str(root)]
    while todo:
        with os.scandir(todo.pop()) as it:
            for entry in it:
                n += 1
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
    return n


def tar_names(path: Path) -> tuple[int, set[str]]:
    """A tar's member count and its names (``./a/`` and ``a`` alike; the root as ``""``).
    In a child of the bench only (:func:`compare_exports_main`): reading 20,000 members
    would raise the bench's own peak memory, which every child's figure counts."""
    names: set[str] = set()
    n = 0
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            n += 1
            name = member.name
            while name.startswith(("./", "/")):
                name = name[1:] if name.startswith("/") else name[2:]
            name = name.rstrip("/")
            names.add("" if name == "." else name)
    return n, names


def regular_files(root: Path) -> list[tuple[str, int]]:
    """The regular files under ``root`` (no link followed), sorted: (relative path, size)."""
    out: list[tuple[str, int]] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(root / rel if rel else root) as it:
            for entry in it:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    todo.append(path)
                elif entry.is_file(follow_symlinks=False):
                    out.append((path, entry.stat(follow_symlinks=False).st_size))
    out.sort()
    return out


@dataclass
class Changes:
    """The commit's changes to an unpacked tree, the same for every tool and run: 1% of
    the regular files (not empty ones) rewritten in place with as many other bytes, a few
    deleted, a few added next to the rewritten ones; every choice and byte from a seeded
    RNG, from the tree's sorted list of files."""

    rewrite: list[tuple[str, int]]
    delete: list[str]
    add: list[tuple[str, int]]

    @classmethod
    def plan(cls, rootfs: Path, seed: int = CHANGE_SEED) -> Changes:
        files = [(p, size) for p, size in regular_files(rootfs) if size > 0]
        rng = random.Random(seed)
        k = max(1, round(len(files) * CHANGE_FRACTION))
        chosen = rng.sample(files, k + CHANGE_DELETED)
        rewrite, delete = sorted(chosen[:k]), sorted(p for p, _ in chosen[k:])
        dirs = sorted({os.path.dirname(p) for p, _ in rewrite})
        add = [
            (os.path.join(rng.choice(dirs), f"bench-added-{j:02d}.bin"),
             rng.randrange(1 << 10, 64 << 10))
            for j in range(CHANGE_ADDED)
        ]  # fmt: skip
        return cls(rewrite, delete, add)

    @staticmethod
    def _bytes(path: str, size: int) -> bytes:
        return random.Random(f"{CHANGE_SEED}:{path}").randbytes(size)

    def apply(self, rootfs: Path) -> None:
        for path, size in self.rewrite:
            new = self._bytes(path, size)
            with open(rootfs / path, "r+b") as f:
                if f.read(1) == new[:1]:  # every file's first byte differs, so its bytes do
                    new = bytes([new[0] ^ 0xFF]) + new[1:]
                f.seek(0)
                f.write(new)
                if f.tell() != size:
                    raise BenchError(f"{rootfs / path} is not {size} bytes: the trees differ")
        for path in self.delete:
            (rootfs / path).unlink()
        for path, size in self.add:
            (rootfs / path).write_bytes(self._bytes(path, size))

    def describe(self) -> str:
        return (
            f"{len(self.rewrite)} files rewritten in place "
            f"({sum(s for _, s in self.rewrite) / MB:.1f} MB), {len(self.delete)} deleted, "
            f"{len(self.add)} added ({sum(s for _, s in self.add) / MB:.2f} MB)"
        )


def compare_exports_main(argv: list[str]) -> int:
    """``bench.py --compare-exports OURS THEIRS``: ocistore's and docker's export tars,
    as one JSON line (member counts, names, the names only one of them has)."""
    n, ours = tar_names(Path(argv[0]))
    m, theirs = tar_names(Path(argv[1]))
    said = {
        "ocistore": {"members": n, "names": len(ours), "root": "" in ours},
        "docker": {"members": m, "names": len(theirs), "root": "" in theirs},
        "only_ocistore": sorted(ours - theirs - {""}),
        "only_docker": sorted(theirs - ours - {""}),
    }
    print(json.dumps(said))
    return 0


def change_main(argv: list[str]) -> int:
    """``bench.py --change ROOTFS PLAN``: make the commit's changes to ROOTFS, those of the
    JSON file PLAN, first planned from this tree if PLAN does not exist; prints what they
    are. A child, as :func:`tar_names` is (a rewritten file's bytes are held whole)."""
    rootfs, plan_path = Path(argv[0]), Path(argv[1])
    if plan_path.exists():
        plan = Changes(**json.loads(plan_path.read_text()))
    else:
        plan = Changes.plan(rootfs)
        plan_path.write_text(json.dumps(asdict(plan)))
    plan.apply(rootfs)
    print(plan.describe())
    return 0


def has_command(tools: Tools, name: str) -> bool:
    """Whether this ocistore has the command ``name`` (``ocistore NAME --help`` works)."""
    p = subprocess.run(
        [tools.ocistore, name, "--help"], capture_output=True, check=False, timeout=60
    )
    return p.returncode == 0


def _combined(parts: list[Run]) -> Run:
    """Several commands run one after another as one run: the sum of their times, the
    largest of their peaks."""
    argv: list[str] = []
    for run in parts:
        argv += (["&&"] if argv else []) + run.argv
    return Run(
        argv=argv,
        seconds=sum(r.seconds for r in parts),
        maxrss_kib=max(r.maxrss_kib for r in parts),
        user=sum(r.user for r in parts),
        system=sum(r.system for r in parts),
        rc=0,
        stderr="".join(r.stderr for r in parts),
    )


class FsBench:
    """The unpack, export and commit operations: the sides alternating (the order rotates
    each round), each run into a new path of the work directory's file system. What the
    runs made is moved aside (``trash/``) and deleted at the end of the operation only,
    and each timed run starts at least :data:`SETTLE_S` after the bench's last deletion
    (see there), so that no run pays for removing an earlier one's tree."""

    def __init__(self, bench: Bench, engine: Engine) -> None:
        self.bench = bench
        self.tools = bench.tools
        self.inputs = bench.inputs
        self.engine = engine
        self.scratch = bench.scratch
        self.trash = bench.scratch / "trash"
        self.trashed = 0
        self.deleted_at = bench.deleted_at

    def discard(self, path: Path) -> None:
        if os.path.lexists(path):
            self.trash.mkdir(parents=True, exist_ok=True)
            path.rename(self.trash / str(self.trashed))
            self.trashed += 1

    def empty_trash(self) -> None:
        if self.trash.exists():
            rm(self.trash)
            self.deleted_at = time.monotonic()

    def settle(self) -> None:
        wait = self.deleted_at + SETTLE_S - time.monotonic()
        if wait > 0:
            log(f"  waiting {wait:.0f} s for ext4 to forget the inodes deleted (SETTLE_S)")
            time.sleep(wait)

    def _one(self, res: FsResult, side: FsSide, i: int) -> Path:
        dest = self.scratch / f"{res.key}-{side.who}-{i + 1}"
        out = self.scratch / f"{res.key}-{side.who}.out"
        self.discard(dest)
        commands, env = side.make(i, dest)
        self.settle()
        os.sync()
        parts = []
        for argv in commands:
            run = measure(argv, out, env)
            if not run.ok:
                raise BenchError(
                    f"{res.key}: {side.who} failed (exit {run.rc}): {shlex.join(run.argv)}\n"
                    f"{run.stderr.rstrip()}\n{out.read_text(errors='replace').rstrip()}"
                )
            parts.append(run)
        text = out.read_text(errors="replace")
        rm(out)
        res.runs.setdefault(side.who, []).append(_combined(parts) if len(parts) > 1 else parts[0])
        if len(parts) > 1:
            res.parts.setdefault(side.who, []).append(parts)
        if side.check is not None:
            side.check(i, dest, text)
        return dest

    def compare(
        self,
        res: FsResult,
        sides: list[FsSide],
        verify: Callable[[int, dict[str, Path]], None] | None = None,
        cleanup: Callable[[], None] | None = None,
    ) -> FsResult:
        """``repeat`` rounds of every side; ``verify(round, dests)`` after each round, with
        what each side made; ``cleanup`` at the end, before the trash is emptied."""
        repeat = self.bench.repeat
        log(
            f"{res.title}: {repeat} × " + ", ".join(s.who for s in sides)
            + "".join(f" ({who} {note})" for who, note in res.notes.items())
        )  # fmt: skip
        try:
            for i in range(repeat):
                k = i % len(sides)
                dests = {side.who: self._one(res, side, i) for side in sides[k:] + sides[:k]}
                if verify is not None:
                    verify(i, dests)
                for dest in dests.values():
                    self.discard(dest)
                log(
                    f"  round {i + 1}: "
                    + ", ".join(f"{s.who} {res.get(s.who)[-1].seconds:.2f} s" for s in sides)
                )
        except (BenchError, OSError) as e:
            res.error = str(e)
            log(f"  ERROR: {e}")
        finally:
            if cleanup is not None:
                try:
                    cleanup()
                except BenchError as e:
                    log(f"  cleaning up: {e}")
            for side in sides:
                self.discard(self.scratch / f"{res.key}-{side.who}.out")
            self.empty_trash()
        return res

    # unpack: from a store that loaded the gzip OCI layout, from the layout itself, and
    # the flattened tree's tar.

    def unpack(self, root: Path) -> FsResult:
        inputs = self.inputs
        res = FsResult(
            "unpack",
            "unpack",
            "umoci",
            "`umoci unpack --rootless`",
            inputs.uncompressed_bytes,
        )
        image = f"{inputs.layout_gzip}:{TAG}"
        flat = self.scratch / "unpack-flat.tar"
        try:
            reference = self.scratch / "unpack-reference"
            run_quiet([self.tools.umoci, "unpack", "--rootless", "--image", image, reference])
            run_quiet(["tar", "-C", reference / "rootfs", "-cf", flat, "."])
            expected = count_entries(reference / "rootfs")
            self.discard(reference)
        except BenchError as e:
            res.error = f"making the flattened tar: {e}"
            return res
        res.checks.append(
            f"every tree has the {expected:,} entries of the one the flattened tar was made "
            f"from ({os.path.getsize(flat) / MB:.0f} MB)"
        )

        def ours(i: int, dest: Path) -> tuple[list[list[str]], None]:
            return [self.bench.ocistore(root, "unpack", "--rootless", "-q", REF, str(dest))], None

        def umoci(i: int, dest: Path) -> tuple[list[list[str]], None]:
            return [[self.tools.umoci, "unpack", "--rootless", "--image", image, str(dest)]], None

        def tar(i: int, dest: Path) -> tuple[list[list[str]], None]:
            dest.mkdir()
            return [["tar", "-x", "-C", str(dest), "-f", str(flat)]], None

        def entries(rootfs: str) -> Callable[[int, Path, str], None]:
            def check(i: int, dest: Path, text: str) -> None:
                n = count_entries(dest / rootfs if rootfs else dest)
                if n != expected:
                    raise BenchError(f"unpack: {dest} has {n:,} entries, not {expected:,}")

            return check

        sides = [
            FsSide("ocistore", ours, entries("rootfs")),
            FsSide("umoci", umoci, entries("rootfs")),
            FsSide("tar", tar, entries("")),
        ]
        res = self.compare(res, sides)
        rm(flat)
        return res

    # export: from the same store, against a container of the image docker load took from
    # the docker-archive, on the bench's engine.

    def export(self, root: Path) -> FsResult:
        res = FsResult(
            "export",
            "export",
            "docker",
            "`docker create` + `docker export`",
            self.inputs.uncompressed_bytes,
        )
        if not has_command(self.tools, "export"):
            res.skipped = "skipped: ocistore export not available"
            log(f"export: {res.skipped}")
            return res
        sides = [
            FsSide(
                "ocistore",
                lambda i, dest: ([self.bench.ocistore(root, "export", REF, "-o", str(dest))], None),
            )
        ]
        docker, no_docker = self.engine.get()
        if docker is not None:
            try:
                if not docker.run("images", "-q", REF).strip():
                    log(f"  docker load -i {self.inputs.docker_archive}")
                    docker.run("load", "-q", "-i", str(self.inputs.docker_archive))
            except BenchError as e:
                docker, no_docker = None, f"docker load failed: {str(e).splitlines()[0][:100]}"
        containers: list[str] = []
        if docker is not None:
            engine = docker
            tag = f"{os.getpid()}-{secrets.token_hex(3)}"

            def make(i: int, dest: Path) -> tuple[list[list[str]], dict[str, str]]:
                name = f"bench-export-{tag}-{i + 1}"
                containers.append(name)
                # The image has no command; a container needs one to be created.
                return [
                    engine.argv("create", "--name", name, REF, "/bin/true"),
                    engine.argv("export", "-o", str(dest), name),
                ], engine.env

            sides.append(FsSide("docker", make))
        else:
            res.notes["docker"] = no_docker

        def verify(i: int, dests: dict[str, Path]) -> None:
            if i != self.bench.repeat - 1 or "docker" not in dests:
                return
            said = json.loads(
                run_quiet([
                    self.tools.python, str(Path(__file__).resolve()), "--compare-exports",
                    str(dests["ocistore"]), str(dests["docker"]),
                ])
            )  # fmt: skip
            o, d = said["ocistore"], said["docker"]
            extra, added = said["only_ocistore"], said["only_docker"]
            if extra or not set(added) <= DOCKER_INIT_LAYER:
                raise BenchError(
                    f"export: ocistore's tar has {o['members']:,} members, docker's "
                    f"{d['members']:,}; only in ocistore's: {extra[:5]}, only in docker's: "
                    f"{added[:5]}"
                )
            # The counts differ by Docker's init layer and the root entries, and by what
            # a tar gives twice (a name given again replaces the first on extraction).
            init = len(added)
            root = int(o["root"]) - int(d["root"])
            if o["names"] + init != d["names"] + root:
                raise BenchError(f"export: the names counted do not add up: {said}")
            res.checks.append(
                f"tar members: ocistore {o['members']:,} ({o['names']:,} names, "
                f"{o['members'] - o['names']:,} given twice; "
                f"{'with' if o['root'] else 'no'} root entry), docker {d['members']:,} "
                f"({d['names']:,} names, {d['members'] - d['names']:,} given twice; "
                f"{'with' if d['root'] else 'no'} root entry): the same names but the "
                f"{init} of Docker's init layer ({', '.join(added)})"
            )

        def cleanup() -> None:
            if docker is not None and containers:
                docker.run("rm", "-f", *containers)  # deletes trees too: the trash is emptied
                self.deleted_at = time.monotonic()

        return self.compare(res, sides, verify, cleanup)

    # commit: each run from an unpacked tree of a fresh copy of the store (ocistore) or of
    # the layout (umoci), the same changes made to it; both untimed.

    def commit(self, root: Path) -> FsResult:
        inputs = self.inputs
        res = FsResult("commit", "commit", "umoci", "`umoci repack`", inputs.uncompressed_bytes)
        if not has_command(self.tools, "commit"):
            res.skipped = "skipped: ocistore commit not available"
            log(f"commit: {res.skipped}")
            return res
        try:
            base = run_quiet(self.bench.ocistore(root, "history", REF)).splitlines()
            base_layers = len(layout_blobs(inputs.layout_gzip)) - 1
        except BenchError as e:
            res.error = str(e)
            return res
        plan = self.scratch / "commit-changes.json"
        rm(plan)

        def changed(rootfs: Path) -> None:
            first = not plan.exists()
            said = run_quiet(
                [self.tools.python, str(Path(__file__).resolve()), "--change", rootfs, plan]
            )
            if first:
                res.checks.append(f"the changes: {said.strip()}")

        def ours(i: int, dest: Path) -> tuple[list[list[str]], None]:
            store = dest / "store"
            dest.mkdir()
            run_quiet(["cp", "-a", str(root), str(store)])
            bundle = dest / "bundle"
            run_quiet(self.bench.ocistore(store, "unpack", "--rootless", "-q", REF, str(bundle)))
            changed(bundle / "rootfs")
            argv = self.bench.ocistore(store, "commit", str(bundle), "-t", COMMITTED, "-q")
            return [argv], None

        def ours_check(i: int, dest: Path, text: str) -> None:
            lines = run_quiet(self.bench.ocistore(dest / "store", "history", COMMITTED))
            if len(lines.splitlines()) != len(base) + 1:
                raise BenchError(
                    f"commit: `ocistore history {COMMITTED}` has {len(lines.splitlines())} "
                    f"lines, the base {len(base)}:\n{lines}"
                )
            if not text.strip():
                raise BenchError("commit: ocistore commit -q printed no image ID")

        def umoci(i: int, dest: Path) -> tuple[list[list[str]], None]:
            layout = dest / "layout"
            dest.mkdir()
            run_quiet(["cp", "-a", str(inputs.layout_gzip), str(layout)])
            bundle = dest / "bundle"
            run_quiet(
                [self.tools.umoci, "unpack", "--rootless", "--image", f"{layout}:{TAG}", bundle]
            )
            changed(bundle / "rootfs")
            argv = [self.tools.umoci, "repack", "--image", f"{layout}:committed", str(bundle)]
            return [argv], None

        def umoci_check(i: int, dest: Path, text: str) -> None:
            layout = dest / "layout"
            index = json.loads((layout / "index.json").read_text())
            for m in index["manifests"]:
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "committed":
                    digest = m["digest"].split(":", 1)[1]
                    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
                    if len(manifest["layers"]) == base_layers + 1:
                        return
                    raise BenchError(
                        f"commit: umoci's committed image has {len(manifest['layers'])} "
                        f"layers, the base {base_layers}"
                    )
            raise BenchError(f"commit: umoci repack left no ref 'committed' in {layout}")

        sides = [FsSide("ocistore", ours, ours_check), FsSide("umoci", umoci, umoci_check)]
        res = self.compare(res, sides)
        rm(plan)
        if not res.error:
            res.checks.append(
                f"each run: `ocistore history {COMMITTED}` has one line more than the base's "
                f"{len(base)}, umoci's manifest one layer more than {base_layers}"
            )
        return res


def bench_fs(bench: Bench, keys: list[str], engine: Engine) -> list[FsResult]:
    """The unpack, export and commit operations, from a store that loaded the gzip layout."""
    fs = FsBench(bench, engine)
    try:
        root = bench.preload(name="preloaded-fs")
    except BenchError as e:
        log(f"  ERROR: preloading the store failed: {e}")
        return [FsResult(k, k, "", "", 0, error=f"preloading the store failed: {e}") for k in keys]
    results = []
    for key in keys:
        op = {"unpack": fs.unpack, "export": fs.export, "commit": fs.commit}[key]
        results.append(op(root))
    rm(root)
    return results


# -- the store operations ---------------------------------------------------------------


@dataclass
class ListResult:
    sizes: list[int]
    images: dict[int, list[Run]] = field(default_factory=dict)
    lookup: dict[int, list[Run]] = field(default_factory=dict)
    configs_opened: dict[str, int] = field(default_factory=dict)  # "images-N"/"lookup-N"
    startup: list[Run] = field(default_factory=list)  # ocistore --help
    error: str | None = None


def count_config_opens(tools: Tools, argv: list[str], work: Path) -> int | None:
    if not tools.strace:
        return None
    trace = work / "strace.txt"
    check(
        measure(
            [tools.strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace), *argv]
        )
    )
    n = 0
    for line in trace.read_text(errors="replace").splitlines():
        if "imagedb/content/sha256/" in line and "= -1" not in line:
            n += 1
    trace.unlink()
    return n


def bench_stores(
    tools: Tools, work: Path, sizes: list[int], repeat: int, rebuild: bool
) -> ListResult:
    res = ListResult(sizes)
    try:
        res.startup = [check(measure([tools.ocistore, "--help"])) for _ in range(repeat)]
        commands: dict[int, tuple[list[str], list[str]]] = {}
        for n in sizes:
            root, ids = build_store(work, n, tools, rebuild)
            prefix = ids[len(ids) // 2].split(":", 1)[1][:12]
            images = [tools.ocistore, "--root", str(root), "images"]
            lookup = [tools.ocistore, "--root", str(root), "inspect", prefix]
            commands[n] = (images, lookup)
            check(measure(images))  # warm the page cache
            res.images[n], res.lookup[n] = [], []
        # The sizes alternate, as ocistore and the peer do: the growth is a ratio of two
        # medians, and this machine's speed drifts over a run.
        log(f"stores of {', '.join(f'{n:,}' for n in sizes)} images: {repeat} × images, inspect")
        for _ in range(repeat):
            for n in sizes:
                res.images[n].append(check(measure(commands[n][0])))
            for n in sizes:
                res.lookup[n].append(check(measure(commands[n][1])))
        for n in sizes:
            for name, argv in (("images", commands[n][0]), ("lookup", commands[n][1])):
                opened = count_config_opens(tools, argv, work)
                if opened is not None:
                    res.configs_opened[f"{name}-{n}"] = opened
    except BenchError as e:
        res.error = str(e)
        log(f"  ERROR: {e}")
    return res


# -- the report -------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """The file system type and device the path lives on, from /proc/self/mounts."""
    best = ("", "", "")
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if str(path).startswith(mnt) and len(mnt) >= len(best[1]):
                best = (dev, mnt, fstype)
    return f"{best[2]} on {best[0]}" if best[2] else ""


def machine_line(tools: Tools, work: Path, start_load: float, extra: Sequence[str] = ()) -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / (1 << 20):.0f} GiB RAM"
    versions = []
    for tool, args in ((tools.skopeo, ["--version"]), (tools.umoci, ["--version"])):
        with contextlib.suppress(BenchError):
            versions.append(run_quiet([tool, *args]).strip().replace(" version ", " "))
    versions += extra
    fs = filesystem_of(work)
    load = f"; load average {start_load:.2f} (1 min) before the run" if start_load >= 0 else ""
    return (
        f"{cpus} CPUs ({usable} usable), {model}{mem}; Linux {platform.release()}"
        f"{f', {fs}' if fs else ''}; Python {platform.python_version()}; "
        + ", ".join(versions)
        + load
    )


def _fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def _medians_note(inputs: Inputs, repeat: int, floor_mib: float) -> str:
    """What the figures of the load, save, registry, file system and store operations are."""
    return (
        f"Medians of {repeat} runs, ocistore and peer alternating, fresh destination each run, "
        "skopeo's blob cache deleted before each skopeo run, warm page cache. "
        f"MB/s = the image's {inputs.uncompressed_bytes / MB:.0f} MB of uncompressed layer tars "
        "(10^6 bytes) / median wall time. Baseline = one thread reading every input byte, "
        "sha256 over it and, for gzip (isal) or zstd layers, over the decompressed stream; "
        "baseline + write = the same, also writing each blob as read to a file and fsyncing it "
        "(what keeping the input durably costs at least; no target). "
        "Peak RSS = the process's ru_maxrss (as `/usr/bin/time -v`), the largest of the runs; "
        "a child is spawned through vfork, and Linux counts the parent's peak in the child's, "
        "so no figure here is below the bench's own "
        f"(at most {floor_mib:.0f} MiB: `true` measured so at the end)."
    )


def report(
    ops: list[OpResult],
    remote: list[RemoteResult],
    fs: list[FsResult],
    serve: ServeSection | None,
    stores: ListResult | None,
    inputs: Inputs,
    machine: str,
    command: str,
    repeat: int,
    floor_mib: float,
) -> tuple[str, int, int]:
    lines: list[str] = []
    passed = total = 0

    def target(ok: bool) -> str:
        nonlocal passed, total
        total += 1
        passed += ok
        return _verdict(ok)

    if ops:
        lines.append(
            "| operation | peer | ocistore s | peer s | ocistore / peer (target) "
            "| baseline s | ocistore / baseline (≤ 1.5) | baseline + write s "
            "| ocistore MB/s | peer MB/s "
            "| ocistore peak RSS (≤ 64 MiB) | peer peak RSS |"
        )
        lines.append("|---|---|--:|--:|---|--:|---|--:|--:|--:|---|--:|")
    for op in ops:
        o, p, b = median_s(op.ocistore), median_s(op.peer), median_s(op.baseline)
        if op.error or o is None or p is None:
            total += 1
            reason = (op.error or "no runs").splitlines()[0][:120]
            lines.append(f"| {op.title} | {op.peer_title} | **FAIL**: {reason} | | | | | | | | | |")
            continue
        ratio = o / p
        tgt = PEER_TARGETS[op.key]
        ratio_cell = f"{ratio:.2f} (≤ {tgt:g}) {target(ratio <= tgt)}"
        base_cell = f"{o / b:.2f} {target(o / b <= BASELINE_TARGET)}" if b is not None else "—"
        rss_o = max_rss_mib(op.ocistore) or 0.0
        rss_p = max_rss_mib(op.peer) or 0.0
        lines.append(
            f"| {op.title} | {op.peer_title} | {_fmt_s(o)} | {_fmt_s(p)} | {ratio_cell} "
            f"| {_fmt_s(b)} | {base_cell} | {_fmt_s(median_s(op.floor))} "
            f"| {op.bytes / MB / o:.0f} | {op.bytes / MB / p:.0f} "
            f"| {rss_o:.0f} MiB {target(rss_o <= RSS_TARGET_MIB)} | {rss_p:.0f} MiB |"
        )
    if remote:
        if ops:
            lines.append("")
        lines += remote_table(remote, target)
    if fs:
        if ops or remote:
            lines.append("")
        lines += fs_table(fs, target)
    if serve is not None:
        if ops or remote or fs:
            lines.append("")
        lines += serve_table(serve, target)
    if stores is not None:
        if ops or remote or fs or serve is not None:
            lines.append("")
        small, big = min(stores.sizes), max(stores.sizes)
        lines.append(
            f"| store operation | {small:,} images | {big:,} images "
            f"| growth (< {GROWTH_TARGET:g}×) "
            f"| target on {big:,} | configs opened ({small:,} / {big:,}) | peak RSS on {big:,} |"
        )
        lines.append("|---|--:|--:|---|---|---|--:|")
        for name, label, runs in (
            ("images", "`ocistore images`", stores.images),
            ("lookup", "`ocistore inspect <12-hex ID prefix>`", stores.lookup),
        ):
            ts, tb = median_s(runs.get(small, [])), median_s(runs.get(big, []))
            if ts is None or tb is None:
                total += 1
                reason = (stores.error or "no runs").splitlines()[0][:120]
                lines.append(f"| {label} | **FAIL**: {reason} | | | | | |")
                continue
            growth = tb / ts
            if name == "images":
                abs_cell = f"< {LIST_TARGET_S:g} s {target(tb < LIST_TARGET_S)}"
                growth_cell = f"{growth:.2f}× {target(growth < GROWTH_TARGET)}"
            else:
                abs_cell = "—"
                growth_cell = f"{growth:.2f}×"
            os_, ob = (
                stores.configs_opened.get(f"{name}-{small}"),
                stores.configs_opened.get(f"{name}-{big}"),
            )
            if ob is None:
                opened = "n/a (no strace)"
            else:
                opened = f"{os_} / {ob}"
                if name == "lookup":
                    opened += f" {target(ob <= 2)}"
            rss = max_rss_mib(runs[big]) or 0.0
            lines.append(
                f"| {label} | {_fmt_s(ts)} s | {_fmt_s(tb)} s | {growth_cell} | {abs_cell} "
                f"| {opened} | {rss:.0f} MiB |"
            )
        if stores.startup:
            lines.append("")
            lines.append(
                f"Start-up, part of every ocistore figure: `ocistore --help` takes "
                f"{_fmt_s(median_s(stores.startup))} s."
            )
    lines.append("")
    lines.append(f"Targets: {passed} of {total} PASS.")
    if ops or remote or fs or stores is not None or serve is None:
        lines.append("")
        lines.append(_medians_note(inputs, repeat, floor_mib))
    if remote:
        lines.append("")
        lines.append(REMOTE_NOTE)
    if fs:
        lines.append("")
        lines.append(FS_NOTE)
        checks = [f"{r.title}: {c}" for r in fs for c in r.checks]
        if checks:
            lines.append("")
            lines.append("Checked: " + "; ".join(checks) + ".")
    if serve is not None:
        lines.append("")
        lines.append(SERVE_NOTE.replace("DEST", serve.dest or "?"))
        lines.append("")
        lines.append(f"Served: {serve.image}.")
        if serve.checks:
            lines.append("")
            lines.append("Checked: " + "; ".join(serve.checks) + ".")
    lines.append("")
    lines.append(f"Input {inputs.describe()}.")
    lines.append("")
    lines.append(f"Machine: {machine}.")
    lines.append("")
    lines.append(f"Command: `{command}`")
    return "\n".join(lines) + "\n", passed, total


REMOTE_NOTE = (
    "Pull and push: a local Distribution registry (`docker-registry`) on 127.0.0.1, plain "
    "HTTP. pull = `ocistore --root EMPTY pull -q HOST/bench/KIND:1` into an empty store, "
    "`skopeo copy --src-tls-verify=false docker://HOST/bench/KIND:1 oci:EMPTY:bench`, "
    "`docker pull` into an engine holding no image (the image removed after each run); "
    "push = each run to a new registry (fresh storage, a port of its own) and a new "
    "repository, every blob uploaded (checked: ocistore and docker say `Pushed` for each "
    "layer, and the registry holds every blob's bytes after each push): `ocistore push` "
    "from a store that loaded the OCI layout, `skopeo copy --dest-tls-verify=false "
    "oci:LAYOUT:bench docker://…`, `docker push` of the image `docker load` took from the "
    "docker-archive (it gzips each layer as it pushes). Docker before 23.0 has no zstd: "
    "20.10 downloads a zstd layer and fails to unpack it (`failed to register layer: "
    "ApplyLayer exit status 1 … archive/tar: invalid tar header`), and gzips every layer it "
    "pushes, so it has no zstd figures. The Docker engine is the tests' "
    "(`tests/docker_engine.py`: dockerd 20.10, vfs storage driver, which copies each "
    "layer's parent when it unpacks one); docker s is the `docker` client's wall time, and "
    "the engine's memory is not measured. MB/s = the compressed blobs moved (config and "
    "layers, 10^6 bytes) / median wall time. Loopback baseline (a child process, as "
    "ocistore is; one blob at a time / 4 at once, on a keep-alive connection each): for a "
    "pull, a Python `http.client` GET of the manifest and each blob from the same registry "
    "into /dev/null through sha256, each checked; for a push, to a new registry as the "
    "tools, a `POST` and one monolithic `PUT ?digest=` of each blob's file (the registry "
    "checks the digest). ocistore / baseline = ocistore's MB/s over the baseline's."
)


def remote_table(remote: list[RemoteResult], target: Callable[[bool], str]) -> list[str]:
    lines = [
        "| registry operation | ocistore s | skopeo s | ocistore / skopeo (target) "
        "| docker s | ocistore / docker | ocistore MB/s | skopeo MB/s "
        "| loopback baseline MB/s (1 / 4 at once) | ocistore / baseline (1 / 4) "
        "| ocistore peak RSS (≤ 64 MiB) | skopeo peak RSS |",
        "|---|--:|--:|---|--:|--:|--:|--:|--:|---|---|--:|",
    ]
    for res in remote:
        o, p = median_s(res.get("ocistore")), median_s(res.get("skopeo"))
        if res.error or o is None or p is None:
            target(False)
            reason = (res.error or "no runs").splitlines()[0][:120]
            lines.append(f"| {res.title} | **FAIL**: {reason} | | | | | | | | | | |")
            continue
        mb = res.bytes / MB
        ratio = o / p
        tgt = PEER_TARGETS[res.key]
        d = median_s(res.get("docker"))
        if d is not None:
            docker_cells = f"{_fmt_s(d)} | {o / d:.2f}"
        else:
            docker_cells = f"{res.notes.get('docker', 'not run')} | —"
        b1, b4 = median_s(res.get("baseline-1")), median_s(res.get("baseline-4"))
        if b1 is not None and b4 is not None:
            base_cells = f"{mb / b1:.0f} / {mb / b4:.0f} | {b1 / o:.2f} / {b4 / o:.2f}"
        else:
            base_cells = "— | —"
        rss_o = max_rss_mib(res.get("ocistore")) or 0.0
        rss_p = max_rss_mib(res.get("skopeo")) or 0.0
        lines.append(
            f"| {res.title} | {_fmt_s(o)} | {_fmt_s(p)} | {ratio:.2f} (≤ {tgt:g}) "
            f"{target(ratio <= tgt)} | {docker_cells} | {mb / o:.0f} | {mb / p:.0f} "
            f"| {base_cells} | {rss_o:.0f} MiB {target(rss_o <= RSS_TARGET_MIB)} "
            f"| {rss_p:.0f} MiB |"
        )
    return lines


FS_NOTE = (
    "File system operations: every run into a new path of the work directory's file "
    "system, the order of the tools rotating each round, `sync` before each run; what the "
    "runs made is deleted only after the operation's last round, and each run starts at "
    f"least {SETTLE_S:.0f} s after the bench deleted anything (on ext4 without a journal, "
    "as here, every file created within 30 s of deleting as many is many times slower: "
    "`recently_deleted()` in fs/ext4/ialloc.c). "
    "unpack = `ocistore --root STORE unpack --rootless -q bench:latest DIR` from a store "
    "that loaded the gzip OCI layout, `umoci unpack --rootless --image LAYOUT:bench DIR` "
    "(which also writes an mtree of the tree), and GNU `tar -x -C DIR -f FLAT.tar` of the "
    "flattened tree (made once, `tar -C rootfs -cf FLAT.tar .` of a umoci unpack; as root, "
    "tar sets the owners and no xattrs: ocistore and umoci keep non-root owners in "
    "`user.rootlesscontainers`). export = `ocistore export bench:latest -o FILE` against "
    "`docker create --name N bench:latest /bin/true` then `docker export -o FILE N` on the "
    "bench's engine, the image `docker load`ed from the docker-archive (its `docker rm`, "
    "untimed, after the last round); on vfs, `docker create` copies the image's whole "
    "tree, which it would not on overlay2 (the two commands' medians are given). "
    "commit = `ocistore --root STORE commit DIR -t bench:committed -q` against "
    "`umoci repack --image LAYOUT:committed DIR`, each run on a fresh copy (`cp -a`) of "
    "the store or the layout, unpacked (`--rootless`) and changed the same way for both, "
    "untimed: 1% of the regular files rewritten in place with other bytes of the same "
    "size, a few deleted and a few added (a seeded RNG). MB/s = the image's uncompressed "
    "layer tars (10^6 bytes) / median wall time. The ocistore / tar target is "
    f"≤ {TAR_TARGET:g}."
)


def fs_table(fs: list[FsResult], target: Callable[[bool], str]) -> list[str]:
    lines = [
        "| file system operation | peer | ocistore s | peer s | ocistore / peer (target) "
        "| tar -x s | ocistore / tar (target) | ocistore MB/s | peer MB/s "
        "| ocistore peak RSS (≤ 64 MiB) | peer peak RSS |",
        "|---|---|--:|--:|---|--:|---|--:|--:|---|--:|",
    ]
    for res in fs:
        o, p = median_s(res.get("ocistore")), median_s(res.get(res.peer))
        if res.skipped:
            lines.append(f"| {res.title} | {res.peer_title} | {res.skipped} | | | | | | | | |")
            continue
        if res.error or o is None:
            target(False)
            reason = (res.error or "no runs").splitlines()[0][:120]
            lines.append(f"| {res.title} | {res.peer_title} | **FAIL**: {reason} | | | | | | | | |")
            continue
        mb = res.bytes / MB
        per_mb = res.key != "commit"  # a commit's work is the changes, not the image
        tgt = FS_TARGETS[res.key]
        if p is not None:
            peer_s = _fmt_s(p)
            parts = res.parts.get(res.peer)
            if parts:  # each command's median: "(5.10 create + 2.02 export)"
                each = [
                    f"{_fmt_s(statistics.median(run[k].seconds for run in parts))} "
                    f"{parts[0][k].argv[1]}"
                    for k in range(len(parts[0]))
                ]
                peer_s += f" ({' + '.join(each)})"
            ratio_cell = f"{o / p:.2f} (≤ {tgt:g}) {target(o / p <= tgt)}"
            peer_mb = f"{mb / p:.0f}" if per_mb else "—"
            peer_rss = f"{max_rss_mib(res.get(res.peer)) or 0.0:.0f} MiB"
        else:
            peer_s = res.notes.get(res.peer, "not run")
            ratio_cell, peer_mb, peer_rss = "—", "—", "—"
        t = median_s(res.get("tar"))
        if t is not None:
            verdict = target(o / t <= TAR_TARGET)
            tar_cells = f"{_fmt_s(t)} | {o / t:.2f} (≤ {TAR_TARGET:g}) {verdict}"
        else:
            tar_cells = "— | —"
        rss_o = max_rss_mib(res.get("ocistore")) or 0.0
        lines.append(
            f"| {res.title} | {res.peer_title} | {_fmt_s(o)} | {peer_s} | {ratio_cell} "
            f"| {tar_cells} | {f'{mb / o:.0f}' if per_mb else '—'} | {peer_mb} "
            f"| {rss_o:.0f} MiB {target(rss_o <= RSS_TARGET_MIB)} | {peer_rss} |"
        )
    return lines


def fs_cpu_table(fs: list[FsResult]) -> str:
    rows = [
        "| file system operation | ocistore CPU s (wall) | peer CPU s (wall) "
        "| tar -x CPU s (wall) |",
        "|---|--:|--:|--:|",
    ]
    for res in fs:
        cells = []
        for who in ("ocistore", res.peer, "tar"):
            runs = res.get(who)
            if runs:
                cpu = statistics.median(r.user + r.system for r in runs)
                cells.append(f"{cpu:.2f} ({_fmt_s(median_s(runs))})")
            else:
                cells.append("—")
        rows.append(f"| {res.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def remote_cpu_table(remote: list[RemoteResult]) -> str:
    rows = [
        "| registry operation | ocistore CPU s (wall) | skopeo CPU s (wall) "
        "| baseline, 1 at a time, CPU s (wall) | baseline, 4 at once, CPU s (wall) |",
        "|---|--:|--:|--:|--:|",
    ]
    for res in remote:
        cells = []
        for who in ("ocistore", "skopeo", "baseline-1", "baseline-4"):
            runs = res.get(who)
            if runs:
                cpu = statistics.median(r.user + r.system for r in runs)
                cells.append(f"{cpu:.2f} ({_fmt_s(median_s(runs))})")
            else:
                cells.append("—")
        rows.append(f"| {res.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def cpu_table(ops: list[OpResult]) -> str:
    """CPU seconds (user + system, medians) per tool: how much of the machine each uses."""
    rows = [
        "| operation | ocistore CPU s (wall) | peer CPU s (wall) | baseline CPU s (wall) |",
        "|---|--:|--:|--:|",
    ]
    for op in ops:
        cells = []
        for runs in (op.ocistore, op.peer, op.baseline):
            if runs:
                cpu = statistics.median(r.user + r.system for r in runs)
                cells.append(f"{cpu:.2f} ({_fmt_s(median_s(runs))})")
            else:
                cells.append("—")
        rows.append(f"| {op.title} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


# -- main ---------------------------------------------------------------------------------


REMOTE_OPS = ["pull-gzip", "pull-zstd", "push-gzip", "push-zstd"]
OPS = [
    "load-docker",
    "load-oci-gzip",
    "load-oci-zstd",
    "save-docker",
    "save-oci-archive",
    *REMOTE_OPS,
    *FS_OPS,
    *SERVE_OPS,
    "images",
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scale",
        type=float,
        help="image size: 1.0 is about 300 MB uncompressed (default 1, --quick 0.1)",
    )
    p.add_argument(
        "--repeat", type=int, help="runs of each tool per operation (default 5, --quick 2)"
    )
    p.add_argument("--quick", action="store_true", help="small image, 2 repeats: for development")
    p.add_argument(
        "--images", type=int, default=10_000, help="images in the big store (default 10000)"
    )
    p.add_argument(
        "--small-images", type=int, default=100, help="images in the small store (default 100)"
    )
    p.add_argument(
        "--work", type=Path, default=REPO / "bench-out", help="work directory (default bench-out/)"
    )
    p.add_argument("--rebuild", action="store_true", help="build the inputs and stores again")
    p.add_argument("--only", help=f"comma-separated operations, of: {','.join(OPS)}")
    p.add_argument(
        "--strict", action="store_true", help="exit 1 when a target fails (default: only on errors)"
    )
    p.add_argument("--ocistore", help="the ocistore command (default: next to this Python)")
    p.add_argument("--skopeo", help="the skopeo command")
    p.add_argument("--umoci", help="the umoci command")
    args = p.parse_args(argv)
    if args.scale is None:
        args.scale = 0.1 if args.quick else 1.0
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.repeat < 1 or args.scale <= 0:
        p.error("--repeat must be at least 1 and --scale positive")
    args.only = args.only.split(",") if args.only else OPS
    unknown = set(args.only) - set(OPS)
    if unknown:
        p.error(f"unknown operations: {', '.join(sorted(unknown))} (known: {', '.join(OPS)})")
    return args


def http_put_main(argv: list[str]) -> int:
    """``bench.py --http-put HOST LAYOUT REPO [--jobs N]``: the loopback baseline of a push."""
    p = argparse.ArgumentParser(prog="bench.py --http-put")
    p.add_argument("host")
    p.add_argument("layout", type=Path)
    p.add_argument("repo")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    print(http_upload_baseline(args.host, args.layout, args.repo, args.jobs))
    return 0


def http_get_main(argv: list[str]) -> int:
    """``bench.py --http-get HOST NAME:TAG [--jobs N]``: the loopback baseline of a pull."""
    p = argparse.ArgumentParser(prog="bench.py --http-get")
    p.add_argument("host")
    p.add_argument("ref")
    p.add_argument("--jobs", type=int, default=1)
    args = p.parse_args(argv)
    print(http_baseline(args.host, args.ref, args.jobs))
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the registries and the engine are stopped


def main(argv: list[str]) -> int:
    if argv[:1] == ["--http-get"]:
        return http_get_main(argv[1:])
    if argv[:1] == ["--http-put"]:
        return http_put_main(argv[1:])
    if argv[:1] == ["--docker-engine"]:
        return docker_engine_main()
    if argv[:1] == ["--compare-exports"]:
        return compare_exports_main(argv[1:])
    if argv[:1] == ["--change"]:
        return change_main(argv[1:])
    if argv[:1] == ["--head-load"]:
        return head_load_main(argv[1:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    start_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    command = f"make bench BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else "make bench"
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        tools = find_tools(args)
        inputs = build_inputs(work, args.scale, tools, args.rebuild)
    except BenchError as e:
        log(f"bench: {e}")
        return 1
    log(inputs.describe())
    bench = Bench(tools, inputs, work, args.repeat)
    ops: list[OpResult] = []
    loads = [
        ("load-docker", "load docker-archive", inputs.docker_archive,
         f"docker-archive:{inputs.docker_archive}", "oci", []),
        ("load-oci-gzip", "load gzip oci-archive", inputs.oci_archive_gzip,
         f"oci-archive:{inputs.oci_archive_gzip}:{TAG}", "dir", ["--dest-decompress"]),
        ("load-oci-zstd", "load zstd OCI layout", inputs.layout_zstd,
         f"oci:{inputs.layout_zstd}:{TAG}", "dir", ["--dest-decompress"]),
    ]  # fmt: skip
    for key, title, src, peer_src, peer_dest, flags in loads:
        if key in args.only:
            ops.append(bench.load(key, title, src, peer_src, peer_dest, flags))
    saves = [k for k in ("save-docker", "save-oci-archive") if k in args.only]
    if saves:
        root: Path | None = None
        error: str | None = None
        try:
            root = bench.preload()
        except BenchError as e:
            error = f"preloading the store failed: {e}"
            log(f"  ERROR: {error}")
        if "save-docker" in saves:
            ops.append(
                bench.save(
                    "save-docker", "save docker-archive", "docker", "docker-archive", root, error
                )
            )
        if "save-oci-archive" in saves:
            ops.append(
                bench.save(
                    "save-oci-archive",
                    "save oci-archive",
                    "oci-archive",
                    "oci-archive",
                    root,
                    error,
                )
            )
    remote: list[RemoteResult] = []
    remote_versions: list[str] = []
    remote_keys = [k for k in REMOTE_OPS if k in args.only]
    fs: list[FsResult] = []
    fs_keys = [k for k in FS_OPS if k in args.only]
    with contextlib.ExitStack() as stack:  # the Docker engine, if one is started
        engine = Engine(stack)
        if remote_keys:
            remote, remote_versions = bench_remote(bench, remote_keys, engine)
        if fs_keys:
            fs = bench_fs(bench, fs_keys, engine)
        remote_versions += engine.versions()
    serve: ServeSection | None = None
    serve_keys = [k for k in SERVE_OPS if k in args.only]
    if serve_keys:
        serve = bench_serve(bench, serve_keys)
        remote_versions = list(dict.fromkeys(remote_versions + serve.versions))
    stores = None
    if "images" in args.only:
        sizes = sorted({args.small_images, args.images})
        stores = bench_stores(tools, work, sizes, args.repeat, args.rebuild)
    rm(bench.scratch)
    machine = machine_line(tools, work, start_load, remote_versions)
    floor = (check(measure(["true"])).maxrss_kib) / 1024
    table, passed, total = report(
        ops, remote, fs, serve, stores, inputs, machine, command, args.repeat, floor
    )
    cpu = cpu_table(ops) if ops else ""
    if remote:
        cpu += ("\n" if cpu else "") + remote_cpu_table(remote)
    if fs:
        cpu += ("\n" if cpu else "") + fs_cpu_table(fs)
    if serve is not None and serve.results:
        cpu += ("\n" if cpu else "") + serve_cpu_table(serve)
    print()
    print(table)
    if cpu:
        print(cpu)
    (work / "results.md").write_text(table + ("\n" + cpu if cpu else ""))
    raw = {
        "machine": machine,
        "command": command,
        "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(inputs).items()},
        "operations": [asdict(op) for op in ops],
        "registry_operations": [asdict(r) for r in remote],
        "filesystem_operations": [asdict(r) for r in fs],
        "serve": asdict(serve) if serve else None,
        "stores": asdict(stores) if stores else None,
    }
    (work / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"written {work / 'results.md'} and {work / 'results.json'}")
    errors = [op.key for op in ops if op.error] + [r.key for r in remote if r.error]
    errors += [r.key for r in fs if r.error]
    if serve is not None:
        errors += [r.key for r in serve.results if r.error] + (["serve"] if serve.error else [])
    errors += ["images"] if stores and stores.error else []
    if errors:
        log(f"bench: these operations failed to run: {', '.join(errors)}")
        return 1
    return 1 if args.strict and passed < total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
