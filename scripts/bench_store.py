#!/usr/bin/env python3
"""Build a store of N small tagged images through the library, for ``scripts/bench.py``.

Usage: ``bench_store.py ROOT N``, or ``bench_store.py --refresh ROOT`` to only rewrite the
store's derived index with the code installed now.

The images share a few tiny layer chains and differ in their configs (about 2 KB each,
shaped like real ones: env, cmd, labels, history); each gets its own tag, as in a busy
build machine's store. The store is a benchmark fixture, so it is written without fsync
(one ``sync`` at the end). It ends with one empty write transaction, so the store's derived
index is the one the current code writes. Prints one image ID per line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ocistore.spec.reference import parse_tagged
from ocistore.store import Store

LAYER_CHAINS = 8


def tiny_tar(name: str, body: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(body)
        info.mtime = 1_700_000_000
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@contextlib.contextmanager
def no_fsync() -> Iterator[None]:
    saved = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = saved
        os.sync()


def config_for(i: int, diff_ids: list[str]) -> bytes:
    created = (
        f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.{i:06d}Z"
    )
    doc: dict[str, Any] = {
        "architecture": "amd64",
        "author": "bench <bench@example.invalid>",
        "config": {
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"APP_BUILD={i}",
                "LANG=C.UTF-8",
            ],
            "Cmd": ["/usr/local/bin/app", "--serve", f"--port={8000 + i % 1000}"],
            "WorkingDir": "/srv/app",
            "ExposedPorts": {f"{8000 + i % 1000}/tcp": {}},
            "Labels": {
                "org.opencontainers.image.title": f"app{i % 100}",
                "org.opencontainers.image.version": f"1.{i // 100}.{i % 100}",
                "org.opencontainers.image.revision": f"{i * 2654435761 % (1 << 32):08x}",
                "org.opencontainers.image.source": "https://example.invalid/bench/app",
            },
        },
        "created": created,
        "history": [
            {
                "created": "2023-01-01T00:00:00Z",
                "created_by": f"/bin/sh -c #(nop) ADD file:{'ab' * 32} in / ",
            },
            {"created": created, "created_by": "/bin/sh -c apt-get update && apt-get install"},
            {
                "created": created,
                "created_by": '/bin/sh -c #(nop)  CMD ["/usr/local/bin/app"]',
                "empty_layer": True,
            },
        ][: len(diff_ids) + 1],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def build(root: Path, n: int) -> list[str]:
    store = Store(root)
    chains: list[list[str]] = []
    with no_fsync():
        base = store.register_layer(io.BytesIO(tiny_tar("etc/os-release", b"ID=bench\n")))
        for c in range(LAYER_CHAINS):
            top = store.register_layer(
                io.BytesIO(tiny_tar(f"srv/app/v{c}", f"app {c}\n".encode())), base.chain_id
            )
            chains.append([str(base.diff_id), str(top.diff_id)])
        ids: list[Any] = []
        with store.transaction():
            for i in range(n):
                ids.append(store.images.create(config_for(i, chains[i % LAYER_CHAINS])))
        tags = [(parse_tagged(f"bench/app{i % 100}:build-{i}"), ids[i]) for i in range(n)]
        store.references.add_all(tags)  # one write for all
    refresh(root)
    return [str(i) for i in ids]


def refresh(root: Path) -> None:
    """One empty write transaction: the index is rewritten by the code installed now."""
    with Store(root).transaction():
        pass


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--refresh":
        refresh(Path(argv[1]))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ids = build(Path(argv[0]), int(argv[1]))
    sys.stdout.write("".join(f"{i}\n" for i in ids))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
