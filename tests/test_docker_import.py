"""``import`` against a real Docker engine: the same tarball, changes and message give the
same image config, byte for byte, but for its creation time and ``docker_version``.

Each case is imported by Docker (``docker import -c ... -m ...``) and by ocistore
(``ocistore import -c ... -m ...``); Docker's image is saved and loaded into the same
ocistore store, so both configs are read back from one store. Docker's is normalized
(ocistore's ``created``, no ``docker_version``: ocistore is no Docker engine, see
docs/design.md) and must then be ocistore's bytes, so the image IDs differ through
those two fields only. ocistore's imports are saved and loaded into Docker, whose
``inspect`` must show the same ``Config`` and ``Comment`` as for its own import. Changes
Docker refuses are refused with Docker's reason, and change nothing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from docker_engine import DockerEngine
from util import make_tar, ocistore_cli

import ocistore as lib

OCISTORE = Path(sys.executable).parent / "ocistore"

TREE = make_tar({"etc/hostname": b"imported\n", "bin/tool": b"#!/bin/sh\n"}, dirs=True)

#: (name, changes, message): every instruction a change may use, both forms of each,
#: substitution from earlier ENV, and what Docker does at the edges.
CASES: list[tuple[str, list[str], str | None]] = [
    ("plain", [], None),
    ("message", [], "a tree <with> & ünïcødé"),
    (
        "everything",
        [
            'ENV PATH=/usr/bin:/bin LANG=C.UTF-8 QUOTE="a <b> & c"',
            "ENV LEGACY the rest  of the line",
            'LABEL org.example.title="ünïcødé ✓" html="<b>&amp;</b>" plain=x',
            "EXPOSE 80/tcp 443 53/udp 7000-7002 8000-8001/UDP",
            'VOLUME ["/data"]',
            "VOLUME /cache /logs",
            "WORKDIR srv",
            "WORKDIR www/./html/../",
            "USER 33:33",
            "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --retries=3 "
            'CMD ["true"]',
            "ONBUILD  RUN echo built-on",
            'ENTRYPOINT ["/bin/tool"]',
            'CMD ["serve", "--port", "80"]',
        ],
        "everything",
    ),
    ("shell-forms", ["CMD echo $HOME", "ENTRYPOINT exec tool", "HEALTHCHECK CMD true"], None),
    ("cmd-then-entrypoint", ["CMD c", "ENTRYPOINT e"], None),
    ("entrypoint-then-cmd", ["ENTRYPOINT e", "CMD c", "ENTRYPOINT"], None),
    ("empty-forms", ["CMD", "ENTRYPOINT []"], None),
    ("cmd-empty-json", ["CMD []"], None),
    (
        "substitution",
        [
            "USER $U",
            'ENV U=www W=/srv P="8080 9090" E=',
            "ENV U=app D=${U} DEF=${NOPE:-fallback} ALT=${U:+set} EMPTY=${E:-e}",
            "USER ${U}",
            "WORKDIR $W/$U",
            "LABEL $U=$W 'single $U'=\"double $U\" esc=\\$U",
            "EXPOSE $P",
            "VOLUME $W/data",
            "ENV PATH=/bin:$PATH",
            "CMD $U",
        ],
        None,
    ),
    ("env-replaces-in-place", ["ENV A=1 B=2", "ENV C=3 A=4"], None),
    ("label-merges", ["LABEL a=1 b=2", "LABEL a=3"], None),
    ("case-and-comments", ["# a comment", "env x=1", "Cmd x", "  label  y=2  "], None),
    ("continuation", ["ENV A=1 \\", "B=2"], None),
    ("escape-directive", ["# escape=`", "ENV A=1 `", "B=a`$x"], None),
    ("workdir-absolute-kept", ["WORKDIR /a/../b/"], None),
    ("healthcheck-none", ["HEALTHCHECK CMD true", "HEALTHCHECK NONE"], None),
    ("onbuild-kept-as-written", ["onbuild add . /app", "ONBUILD BOGUS x  "], None),
    ("json-then-text", ['CMD ["a"] trailing'], None),
    ("not-json", ["CMD ['a']", 'ENTRYPOINT ["a",'], None),
    ("html-in-json", ['CMD ["<&>", "\\u00e9"]'], None),
    ("expose-forms", ["EXPOSE 1.2.3.4:80:90 0 80/tcp/x"], None),
]

#: (changes, Docker's reason): what Docker refuses.
REFUSED: list[tuple[list[str], str]] = [
    (["RUN echo x"], "run is not a valid change command"),
    (["FROM scratch"], "from is not a valid change command"),
    (["COPY a /"], "copy is not a valid change command"),
    (["STOPSIGNAL SIGKILL"], "stopsignal is not a valid change command"),
    (['SHELL ["/bin/bash", "-c"]'], "shell is not a valid change command"),
    (["ENV A=1", "BOGUS x"], "bogus is not a valid change command"),
    (["ENV"], "ENV requires at least one argument"),
    (["ENV a"], "ENV must have two arguments"),
    (["LABEL a=1 b"], 'Syntax error - can\'t find = in "b". Must be of the form: name=value'),
    (["EXPOSE 80/xyz"], "Invalid proto: xyz"),
    (["EXPOSE 80-70"], "Invalid containerPort: 80-70"),
    (['VOLUME ""'], "VOLUME specified can not be an empty string"),
    (["WORKDIR"], "WORKDIR requires exactly one argument"),
    (["ONBUILD ONBUILD x"], "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    (["ONBUILD FROM x"], "FROM isn't allowed as an ONBUILD trigger"),
    (['CMD ["a", 1]'], "when using JSON array syntax, arrays must be comprised of strings only"),
    (["ENV --foo A=1"], "Unknown flag: foo"),
    (["HEALTHCHECK --interval=1ns CMD x"], 'Interval "interval" cannot be less than 1ms'),
    (["HEALTHCHECK --interval=abc CMD x"], 'time: invalid duration "abc"'),
    (["HEALTHCHECK --retries=0 CMD x"], "--retries must be at least 1 (not 0)"),
    (["HEALTHCHECK FOO x"], 'Unknown type "FOO" in HEALTHCHECK (try CMD)'),
    (["ENV A=${B:?unset}"], 'failed to process "${B:?unset}": B: unset'),
    (
        ['ENV A="x'],
        'failed to process "\\"x": unexpected end of statement while looking '
        "for matching double-quote",
    ),
    (["# only a comment"], "file with no instructions"),
]


def change_args(changes: list[str], message: str | None) -> list[str]:
    args = [a for c in changes for a in ("-c", c)]
    return args + (["-m", message] if message is not None else [])


def normalized(docker_config: bytes, created: str) -> bytes:
    """Docker's config with ocistore's creation time and without ``docker_version``."""
    out, n = re.subn(rb'"docker_version":"[^"]*",', b"", docker_config)
    assert n == 1, docker_config
    out, n = re.subn(rb'"created":"[^"]*"', f'"created":"{created}"'.encode(), out)
    assert n == 2, docker_config  # the image's and its one history entry's
    return out


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("import") / "rootfs.tar"
    path.write_bytes(TREE)
    return path


@pytest.mark.parametrize(("name", "changes", "message"), CASES, ids=[c[0] for c in CASES])
def test_import_writes_the_config_docker_writes(
    docker_engine: DockerEngine,
    tarball: Path,
    tmp_path: Path,
    name: str,
    changes: list[str],
    message: str | None,
) -> None:
    docker = docker_engine
    ref = f"t-import/{name}:1"
    args = change_args(changes, message)
    theirs_id = docker.run("import", *args, tarball, ref).stdout.strip()
    archive = tmp_path / "docker.tar"
    try:
        docker.run("save", "-o", archive, ref)
        store = tmp_path / "store"
        ocistore_cli("--root", store, "load", "-q", "-i", archive)
        ours_id = ocistore_cli("--root", store, "import", "-q", *args, tarball).stdout.split()[-1]
        with lib.open(store) as s:
            ours = s.images.get(s.resolve(ours_id)).config
            theirs = s.images.get(s.resolve(theirs_id)).config
        assert theirs.id == theirs_id
        assert normalized(theirs.raw, ours.created) == ours.raw
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", ours.created)
    finally:
        docker.run("rmi", "-f", ref, check=False)


ROUND_TRIP = ["everything", "substitution", "shell-forms"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_docker_loads_the_import_and_inspects_the_same_config(
    docker_engine: DockerEngine, tarball: Path, tmp_path: Path, name: str
) -> None:
    docker = docker_engine
    changes, message = next((c, m) for n, c, m in CASES if n == name)
    args = change_args(changes, message)
    theirs_ref, ours_ref = f"t-import/{name}-docker:1", f"t-import/{name}-ocistore:1"
    store = tmp_path / "store"
    ocistore_cli("--root", store, "import", "-q", *args, tarball, ours_ref)
    archive = tmp_path / "ocistore.tar"
    ocistore_cli("--root", store, "save", "-o", archive, ours_ref)
    try:
        docker.run("import", *args, tarball, theirs_ref)
        docker.run("load", "-i", archive)
        (theirs,) = json.loads(docker.run("image", "inspect", theirs_ref).stdout)
        (ours,) = json.loads(docker.run("image", "inspect", ours_ref).stdout)
        for key in ("Config", "ContainerConfig", "Comment", "Os", "Architecture", "RootFS"):
            assert ours[key] == theirs[key], key
        assert ours["Config"]["Cmd"] or ours["Config"]["Entrypoint"]
        assert theirs["DockerVersion"] and ours["DockerVersion"] == ""
    finally:
        docker.run("rmi", "-f", theirs_ref, ours_ref, check=False)


@pytest.mark.parametrize(("changes", "reason"), REFUSED, ids=[r[1][:40] for r in REFUSED])
def test_refused_changes_are_refused_as_docker_refuses_them(
    docker_engine: DockerEngine, tarball: Path, tmp_path: Path, changes: list[str], reason: str
) -> None:
    args = change_args(changes, None)
    theirs = docker_engine.run("import", *args, tarball, "t-import/refused:1", check=False)
    assert theirs.returncode != 0
    assert theirs.stderr.strip() == f"Error response from daemon: {reason}"
    store = tmp_path / "store"
    ours = ocistore_cli(
        "--root", store, "import", "-q", *args, tarball, "t-import/refused:1", check=False
    )
    assert ours.returncode == 1
    (line,) = ours.stderr.splitlines()
    assert line.startswith("ocistore: change") and line.endswith(f": {reason}"), line
    assert ocistore_cli("--root", store, "images", "-q").stdout == ""
