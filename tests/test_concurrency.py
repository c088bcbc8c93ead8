"""Many processes at once on one store: writers importing and tagging, a reader listing."""

from __future__ import annotations

import gzip
import io
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import zstandard
from util import make_tar

from ocistore.errors import NotFound
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"
WRITERS = 4
PER_WRITER = 5


def tarball(worker: int, item: int) -> bytes:
    """A distinct rootfs per (worker, item), compressed three ways in turn."""
    tar = make_tar(
        {
            "etc/id": f"{worker}-{item}\n".encode(),
            "data": os.urandom(50_000) + b"x" * 200_000,
            "shared": b"the same in every image" * 100,
        }
    )
    kind = (worker + item) % 3
    if kind == 1:
        return gzip.compress(tar, compresslevel=1)
    if kind == 2:
        return zstandard.ZstdCompressor().compress(tar)
    return tar


# -- library writers and a reader, in spawned processes -----------------------------------


def writer(root: str, worker: int) -> list[tuple[str, str]]:
    """Import PER_WRITER tarballs, tag each twice, move a shared tag, delete scratch."""
    store = Store(root)
    made: list[tuple[str, str]] = []
    for item in range(PER_WRITER):
        ref = f"keep{worker}/img:{item}"
        image_id = store.import_tarball(io.BytesIO(tarball(worker, item)), ref)
        store.tag(ref, f"registry.example:5000/w{worker}:v{item}")
        store.tag(image_id, "shared:latest")  # every writer moves this one
        made.append((ref, image_id))
        scratch = store.import_tarball(io.BytesIO(tarball(worker, 100 + item)), f"scratch{worker}")
        events = [str(e) for e in store.remove(f"scratch{worker}")]
        assert f"Deleted: {scratch}" in events, events
    return made


def reader(root: str, stop: Any, result: Any) -> None:
    """List and verify until told to stop; report the number of rounds or the error."""
    rounds = 0
    try:
        store = Store(root)
        while not stop.is_set() or rounds < 3:
            for rec, refs in store.list_images(all_images=True):
                try:
                    image = store.images.get(rec.id)  # re-verifies the config
                except NotFound:
                    # Only the writers' scratch images are ever deleted.
                    assert not any(r.familiar_name.startswith("keep") for r in refs)
                    continue
                assert image.id == rec.id
            for ref, image_id in store.references.all().items():
                if ref.familiar_name.startswith("keep"):
                    assert store.images.get(image_id).id == image_id
                    assert store.resolve(ref.familiar()) == image_id
            rounds += 1
        result.put(("ok", rounds))
    except BaseException:
        result.put(("error", traceback.format_exc()))


def check_store(root: Path, expected: dict[str, str]) -> Store:
    store = Store(root)
    records = store.images.list()
    assert len(records) == len(set(expected.values())) == WRITERS * PER_WRITER
    assert store.images.skipped == []
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    for ref, image_id in expected.items():
        assert tags[ref] == image_id
    for rec in records:
        image = store.images.get(rec.id)
        (chain,) = image.record.chains
        with store.layers.open_tar(chain) as f:  # verified while read
            while f.read(1 << 20):
                pass
    # Every layer and blob is some image's; nothing half-written is left.
    assert len(store.layers.walk()) == len(records)
    assert len(list(store.content.walk())) == len(records)
    assert store.fsck() == []
    assert list(store.tmpdir.iterdir()) == []
    assert not (root / "imagedb" / "index.dirty").exists()
    assert store.gc() == []
    return store


def test_parallel_library_writers_and_a_reader(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    result = ctx.Queue()
    rd = ctx.Process(target=reader, args=(str(root), stop, result))
    rd.start()
    try:
        with ctx.Pool(WRITERS) as pool:
            made = pool.starmap(writer, [(str(root), w) for w in range(WRITERS)], chunksize=1)
    finally:
        stop.set()
        status, detail = result.get(timeout=60)
        rd.join(timeout=60)
    assert status == "ok", detail
    assert detail >= 3

    expected: dict[str, str] = {}
    for w, pairs in enumerate(made):
        for item, (ref, image_id) in enumerate(pairs):
            expected[ref] = image_id
            expected[f"registry.example:5000/w{w}:v{item}"] = image_id
    store = check_store(root, expected)
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    assert tags["shared:latest"] in {i for pairs in made for _, i in pairs}
    assert len(tags) == 2 * WRITERS * PER_WRITER + 1


# -- the command line, several processes at once ------------------------------------------


def test_parallel_cli_imports_and_tags(tmp_path: Path) -> None:
    root = tmp_path / "store"
    scripts = []
    for w in range(WRITERS):
        lines = ["set -e"]
        for item in range(2):
            path = tmp_path / f"w{w}-{item}.tar"
            path.write_bytes(tarball(w, item))
            lines.append(f'"{OCISTORE}" --root "{root}" import -q "{path}" cli{w}/img:{item}')
            lines.append(f'"{OCISTORE}" --root "{root}" tag cli{w}/img:{item} alias{w}:{item}')
        lines.append(f'"{OCISTORE}" --root "{root}" images -q --no-trunc > /dev/null')
        scripts.append("\n".join(lines))
    procs = [
        subprocess.Popen(["sh", "-c", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for s in scripts
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
        assert b"Traceback" not in err

    ids = [line for out, _ in outputs for line in out.decode().split() if line.startswith("sha")]
    assert len(set(ids)) == WRITERS * 2
    store = Store(root)
    tags = {r.familiar(): i for r, i in store.references.all().items()}
    assert len(tags) == WRITERS * 2 * 2
    for w in range(WRITERS):
        for item in range(2):
            assert tags[f"cli{w}/img:{item}"] == tags[f"alias{w}:{item}"]
            store.images.get(tags[f"alias{w}:{item}"])
    assert store.fsck() == []
    p = subprocess.run(
        [str(OCISTORE), "--root", str(root), "images", "-q", "--no-trunc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(p.stdout.split()) == sorted(set(ids))
