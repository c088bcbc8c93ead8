"""The ``ocistore`` command end to end, in a temporary root."""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from util import make_tar, snapshot

from ocistore.cli import main as cli
from ocistore.cli import views
from ocistore.spec.reference import parse
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"
ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


TAR_A = make_tar({"etc/hostname": b"a\n"})
TAR_B = make_tar({"etc/hostname": b"b\n", "bin/sh": b"#!" * 500})

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def run(root: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run ``ocistore --root ROOT ARGS…`` in-process: (exit code, stdout, stderr)."""

    def _run(*args: str | Path, use_root: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        argv = (["--root", str(root)] if use_root else []) + [str(a) for a in args]
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "a.tar": TAR_A,
        "b.tar.gz": gzip.compress(TAR_B),
        "a.tar.zst": zstandard.ZstdCompressor().compress(TAR_A),
        "a.tar.bz2": bz2.compress(TAR_A),
        "notatar.txt": b"just some text\n" * 100,
        "truncated.tar.gz": gzip.compress(TAR_B)[:-30],
    }
    paths = {}
    for name, data in out.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths[name] = p
    return paths


def import_(run: Run, path: Path, ref: str | None = None) -> str:
    code, out, err = run("import", path, *([ref] if ref else []))
    assert code == 0, err
    image_id = out.strip().splitlines()[-1]
    assert ID_RE.match(image_id)
    return image_id


def assert_one_line_error(code: int, out: str, err: str, pattern: str) -> None:
    assert code == 1
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ocistore: ")
    assert re.search(pattern, lines[0]), lines[0]


# -- help ----------------------------------------------------------------------------------


def subcommands() -> list[str]:
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


def test_command_set() -> None:
    assert {"import", "images", "inspect", "history", "tag", "rmi", "gc", "fsck"} <= set(
        subcommands()
    )


@pytest.mark.parametrize("command", subcommands())
def test_every_command_has_help_with_an_example(run: Run, command: str) -> None:
    code, out, err = run(command, "--help")
    assert code == 0
    assert "example" in out.lower()
    assert f"ocistore {command}" in out
    assert err == ""


def test_top_level_help(run: Run) -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "example" in out
    for command in ("import", "images", "rmi"):
        assert command in out


# -- import / images / inspect / history ----------------------------------------------------


@pytest.mark.parametrize("name", ["a.tar", "b.tar.gz", "a.tar.zst"])
def test_import_prints_the_id(run: Run, files: dict[str, Path], root: Path, name: str) -> None:
    image_id = import_(run, files[name], "app:v1")
    store = Store(root)
    assert store.resolve("app:v1") == image_id
    tar = TAR_B if name.startswith("b") else TAR_A
    assert store.images.get(image_id).config.diff_ids == (
        "sha256:" + hashlib.sha256(tar).hexdigest(),
    )


def test_import_message_is_the_history_comment(run: Run, files: dict[str, Path]) -> None:
    """As ``docker import -m``: the message replaces "Imported from …"."""
    code, out, _ = run("import", "-m", "my rootfs", files["a.tar"], "app:m")
    assert code == 0, out
    code, out, _ = run("history", "--format", "json", "app:m")
    assert json.loads(out)["Comment"] == "my rootfs"
    code, out, _ = run("import", files["b.tar.gz"], "app:plain")
    code, out, _ = run("history", "--format", "json", "app:plain")
    assert json.loads(out)["Comment"] == "Imported from -"  # as docker import writes for a file


def test_images(run: Run, files: dict[str, Path]) -> None:
    a = import_(run, files["a.tar"], "app:v1")
    b = import_(run, files["b.tar.gz"], "myregistry:5000/team/b:v2")
    c = import_(run, files["a.tar.zst"])

    code, out, _ = run("images")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert len(lines) == 4
    rows = {line.split()[2]: line.split()[:2] for line in lines[1:]}
    assert rows[a[7:19]] == ["app", "v1"]
    assert rows[b[7:19]] == ["myregistry:5000/team/b", "v2"]
    assert rows[c[7:19]] == ["<none>", "<none>"]
    assert lines[1].split()[2] == c[7:19]  # newest first

    code, out, _ = run("images", "-q")
    assert code == 0
    assert sorted(out.split()) == sorted(i[7:19] for i in (a, b, c))

    code, out, _ = run("images", "-q", "--no-trunc")
    assert code == 0
    assert out.splitlines() == [c, b, a]

    code, out, _ = run("images", "--format", "json", "--no-trunc")
    assert code == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert {d["ID"] for d in docs} == {a, b, c}
    by_id = {d["ID"]: d for d in docs}
    assert by_id[a]["Repository"] == "app" and by_id[a]["Tag"] == "v1"
    assert set(by_id[a]) >= {"Repository", "Tag", "ID", "CreatedAt", "Size"}

    code, out, _ = run("images", "--digests")
    assert code == 0
    assert "DIGEST" in out.splitlines()[0]


def test_images_filtered_by_repository_tag_or_digest(
    run: Run, files: dict[str, Path], root: Path
) -> None:
    a = import_(run, files["a.tar"], "app:v1")
    b = import_(run, files["b.tar.gz"], "app:v2")
    other = import_(run, files["a.tar.zst"], "other:v1")
    digest = "sha256:" + "0" * 64
    Store(root).references.add_digest(parse(f"app@{digest}"), b)

    def listed(*args: str) -> list[str]:
        code, out, _ = run("images", "-q", "--no-trunc", *args)
        assert code == 0
        return sorted(out.split())

    assert listed("app") == sorted([a, b])
    assert listed("app:v1") == [a]
    assert listed(f"app@{digest}") == [b]
    assert listed(f"app@sha256:{'1' * 64}") == []
    assert listed("other") == [other]


def test_gc_grace_must_be_a_number_of_seconds(run: Run) -> None:
    for bad in ("-1", "nan", "soon"):
        code, _, err = run("gc", f"--grace={bad}")
        assert code == 2 and "--grace" in err and "Traceback" not in err
    assert run("gc", "--grace=0")[0] == 0


def test_images_of_empty_store(run: Run) -> None:
    code, out, _ = run("images", "-q")
    assert (code, out) == (0, "")
    code, out, _ = run("images")
    assert code == 0 and out.splitlines()[0].startswith("REPOSITORY")


def test_inspect(run: Run, files: dict[str, Path]) -> None:
    image_id = import_(run, files["b.tar.gz"], "app:v1")
    run("tag", "app:v1", "app:v2")
    code, out, _ = run("inspect", "app:v1", image_id[7:15])
    assert code == 0
    docs = json.loads(out)
    assert isinstance(docs, list) and len(docs) == 2
    doc = docs[0]
    for key in (
        "Id",
        "RepoTags",
        "RepoDigests",
        "Parent",
        "Created",
        "Author",
        "Architecture",
        "Os",
        "Config",
        "RootFS",
        "Size",
    ):
        assert key in doc, key
    assert doc["Id"] == image_id
    assert doc["RepoTags"] == ["app:v1", "app:v2"]
    assert doc["RepoDigests"] == []
    assert doc["Parent"] == ""
    assert doc["Os"] == "linux"
    assert doc["Size"] == 2 + 1000  # Docker's size: the members' sizes, not the tar's
    assert doc["RootFS"]["Type"] == "layers"
    assert doc["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(TAR_B).hexdigest()]
    assert docs[1] == doc


def test_inspect_with_a_missing_image(run: Run, files: dict[str, Path]) -> None:
    image_id = import_(run, files["a.tar"], "app:v1")
    code, out, err = run("inspect", "app:v1", "nosuch:tag")
    assert code == 1
    assert [d["Id"] for d in json.loads(out)] == [image_id]
    assert err.splitlines() == ["ocistore: No such image: nosuch:tag"]


def test_history(run: Run, files: dict[str, Path]) -> None:
    image_id = import_(run, files["a.tar"], "app:v1")
    code, out, _ = run("history", "app:v1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["IMAGE", "CREATED"]
    assert lines[1].startswith(image_id[7:19])
    assert "Imported from -" in lines[1]

    code, out, _ = run("history", "--no-trunc", "--format", "json", image_id[7:19])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    assert rows[0]["ID"] == image_id
    assert rows[0]["Comment"] == "Imported from -"

    code, out, _ = run("history", "-q", "--no-trunc", "app:v1")
    assert out.splitlines() == [image_id]


# -- tag / rmi -----------------------------------------------------------------------------


def test_tag_and_rmi_messages(run: Run, files: dict[str, Path], root: Path) -> None:
    image_id = import_(run, files["a.tar"], "app:v1")
    assert run("tag", "app:v1", "app:v2") == (0, "", "")
    assert run("tag", image_id[7:19], "other") == (0, "", "")

    code, out, _ = run("rmi", "app:v1")
    assert (code, out) == (0, "Untagged: app:v1\n")

    code, out, err = run("rmi", image_id)
    assert_one_line_error(code, out, err, "must be forced.*multiple repositories")

    code, out, _ = run("rmi", "-f", image_id[7:19])
    assert code == 0
    layer = "sha256:" + hashlib.sha256(TAR_A).hexdigest()
    assert out.splitlines() == [
        "Untagged: app:v2",
        "Untagged: other:latest",
        f"Deleted: {image_id}",
        f"Deleted: {layer}",
    ]
    assert Store(root).images.list() == []


def test_rmi_several_with_one_missing(run: Run, files: dict[str, Path]) -> None:
    import_(run, files["a.tar"], "app:v1")
    import_(run, files["b.tar.gz"], "app:v2")
    code, out, err = run("rmi", "app:v1", "nosuch", "app:v2")
    assert code == 1
    assert out.count("Untagged:") == 2
    assert err.splitlines() == ["ocistore: No such image: nosuch:latest"]


def test_tag_moves_an_existing_tag(run: Run, files: dict[str, Path], root: Path) -> None:
    import_(run, files["a.tar"], "app:v1")
    b = import_(run, files["b.tar.gz"])
    assert run("tag", b, "app:v1")[0] == 0
    assert Store(root).resolve("app:v1") == b


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("inspect", "nosuch"), "No such image: nosuch:latest"),
        (("history", "nosuch:1"), "No such image: nosuch:1"),
        (("tag", "nosuch", "x:1"), "No such image: nosuch:latest"),
        (("rmi", "nosuch"), "No such image: nosuch:latest"),
        (("import", "FILE:missing.tar"), "missing.tar: no such file or directory"),
        (("import", "FILE:a.tar.bz2"), "unsupported compression bzip2"),
        (("import", "FILE:notatar.txt"), "not a tar archive"),
        (("import", "FILE:truncated.tar.gz"), "truncated gzip"),
        (("import", "FILE:a.tar", "Bad:Name"), "invalid reference format"),
        (("import", "FILE:a.tar", "sha256"), "ambiguous tag"),
        (("import", "FILE:a.tar", "a" * 64), "64-byte hexadecimal"),
        (("tag", "app:v1", "UPPER"), "invalid reference format"),
        (("tag", "app:v1", f"app@sha256:{'a' * 64}"), "digest"),
        (("inspect", "sha256:zz"), "zz"),
    ],
)
def test_user_errors_are_one_line_and_change_nothing(
    run: Run,
    files: dict[str, Path],
    root: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    pattern: str,
) -> None:
    import_(run, files["b.tar.gz"], "app:v1")
    before = snapshot(root)
    argv = [str(tmp_path / a[5:]) if a.startswith("FILE:") else a for a in args]
    code, out, err = run(*argv)
    if args[0] == "inspect":
        assert code == 1 and json.loads(out) == []
        out = ""
    assert_one_line_error(code, out, err, pattern)
    assert snapshot(root) == before
    assert list((root / "tmp").iterdir()) == []


def test_conflict_leaves_the_store_unchanged(run: Run, files: dict[str, Path], root: Path) -> None:
    image_id = import_(run, files["a.tar"], "app:v1")
    run("tag", "app:v1", "other:v1")
    before = snapshot(root)
    code, out, err = run("rmi", image_id[7:19])
    assert_one_line_error(code, out, err, "conflict: unable to delete")
    assert snapshot(root) == before


def test_corrupt_store_is_reported_without_traceback(
    run: Run, files: dict[str, Path], root: Path
) -> None:
    import_(run, files["b.tar.gz"], "app:v1")
    assert run("fsck") == (0, "", "")
    blob = next((root / "blobs" / "sha256").iterdir())
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, out, err = run("fsck")
    assert code == 1
    assert "Traceback" not in err
    assert blob.name in out and "digest mismatch" in out


@pytest.mark.parametrize(
    "args",
    [
        ("bogus",),
        ("tag", "only-one"),
        ("import",),
        ("images", "--filter", "dangling"),
        ("rmi",),
        ("images", "--bogus-flag"),
        ("inspect",),
    ],
)
def test_usage_errors_exit_2(run: Run, args: tuple[str, ...]) -> None:
    code, _out, err = run(*args)
    assert code == 2
    assert "Traceback" not in err
    assert "error:" in err


def test_no_command_is_a_usage_error(run: Run) -> None:
    code, _, err = run()
    assert code == 2
    assert "usage:" in err


# -- the store's root --------------------------------------------------------------------


def test_root_resolution(
    run: Run, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OCISTORE_ROOT", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert cli.default_root() == home / ".local" / "share" / "ocistore"
    code, _, _ = run("import", files["a.tar"], "home:1", use_root=False)
    assert code == 0
    assert Store(home / ".local/share/ocistore").resolve("home:1")

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli.default_root() == tmp_path / "xdg" / "ocistore"
    code, _, _ = run("import", files["a.tar"], "xdg:1", use_root=False)
    assert code == 0
    assert Store(tmp_path / "xdg" / "ocistore").resolve("xdg:1")

    monkeypatch.setenv("OCISTORE_ROOT", str(tmp_path / "env"))
    assert cli.default_root() == tmp_path / "env"
    code, _, _ = run("import", files["a.tar"], "env:1", use_root=False)
    assert code == 0
    assert Store(tmp_path / "env").resolve("env:1")

    # --root wins over everything.
    code, _, _ = run(
        "--root", tmp_path / "flag", "import", files["a.tar"], "flag:1", use_root=False
    )
    assert code == 0
    assert Store(tmp_path / "flag").resolve("flag:1")
    assert not (tmp_path / "env" / "repositories.json").read_text().count("flag")


# -- the installed command, in real processes ---------------------------------------------


def ocistore(
    *args: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(OCISTORE), *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        timeout=60,
        env=env,
    )


def test_subprocess_import_from_stdin_and_list(root: Path) -> None:
    p = ocistore("--root", root, "import", "-", "app:v1", stdin=gzip.compress(TAR_B))
    assert p.returncode == 0, p.stderr
    image_id = p.stdout.decode().splitlines()[-1]
    assert ID_RE.match(image_id)
    p = ocistore("--root", root, "images", "-q", "--no-trunc")
    assert p.returncode == 0
    assert p.stdout.decode().splitlines() == [image_id]
    p = ocistore("--root", root, "rmi", "app:v1")
    assert p.returncode == 0
    assert p.stdout.decode().splitlines()[:2] == ["Untagged: app:v1", f"Deleted: {image_id}"]


def test_subprocess_error_and_env_root(tmp_path: Path) -> None:
    env = {**os.environ, "OCISTORE_ROOT": str(tmp_path / "envroot")}
    p = ocistore("rmi", "nosuch", env=env)
    assert p.returncode == 1
    assert p.stdout == b""
    assert p.stderr.decode().splitlines() == ["ocistore: No such image: nosuch:latest"]
    p = ocistore("import", "-", "x:1", stdin=b"not a tar" * 100, env=env)
    assert p.returncode == 1
    assert b"Traceback" not in p.stderr
    assert len(p.stderr.decode().splitlines()) == 1
    p = ocistore("import", "-", "x:1", stdin=TAR_A, env=env)
    assert p.returncode == 0
    assert (tmp_path / "envroot" / "repositories.json").is_file()
    p = ocistore("frobnicate", env=env)
    assert p.returncode == 2
    assert b"Traceback" not in p.stderr


def test_a_replaced_config_is_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "store"
    tarball = tmp_path / "a.tar"
    tarball.write_bytes(make_tar({"etc/a": b"a"}))
    ok = subprocess.run([OCISTORE, "--root", root, "import", tarball, "a:1"], capture_output=True)
    assert ok.returncode == 0
    image_id = ok.stdout.decode().split()[-1]
    config = root / "imagedb" / "content" / "sha256" / image_id[7:]
    forged = config.with_name("forged")
    forged.write_bytes(config.read_bytes().replace(b'"os"', b'"OS"'))
    forged.replace(config)
    proc = subprocess.run(
        [OCISTORE, "--root", root, "images", "-q"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"ocistore: warning: skipped image {image_id}: ")
    assert "digest mismatch" in proc.stderr and proc.stderr.count("\n") == 1


# -- output helpers -----------------------------------------------------------------------

HOUR = 3600.0
DAY = 24 * HOUR


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5.0, "Less than a second"),
        (0.5, "Less than a second"),
        (1.9, "1 second"),
        (59.9, "59 seconds"),
        (60.0, "About a minute"),
        (119.9, "About a minute"),
        (120.0, "2 minutes"),
        (3599.9, "59 minutes"),
        (HOUR, "About an hour"),
        (1.5 * HOUR - 1, "About an hour"),
        (1.5 * HOUR, "2 hours"),  # Go rounds half up: int(1.5 + 0.5)
        (2.5 * HOUR, "3 hours"),  # not half to even
        (47.5 * HOUR - 1, "47 hours"),
        (47.5 * HOUR, "2 days"),
        (14 * DAY - HOUR, "13 days"),
        (14 * DAY, "2 weeks"),
        (60 * DAY, "2 months"),
        (729 * DAY, "24 months"),
        (730 * DAY - 0.4 * HOUR, "1 years"),  # rounded hours say years, truncated 729 days
        (730 * DAY, "2 years"),
        (3 * 365 * DAY, "3 years"),
    ],
)
def test_human_duration_is_dockers(seconds: float, shown: str) -> None:
    """units.HumanDuration (docker/go-units), including its rounding at the edges."""
    assert views.human_duration(seconds) == shown


def test_print_table_pads_columns_as_go_s_tabwriter() -> None:
    """Go's tab writer: the last cell is not padded, the ones before it are, so an empty
    last cell leaves the padding of the one before it, as docker's tables show it."""
    out = io.StringIO()
    views.print_columns([["A", "aaaa", "x"], ["BB", "b", "yyy"], ["C", "", "z"]], out)
    assert out.getvalue() == "A      BB    C\naaaa   b     \nx      yyy   z\n"
    out = io.StringIO()
    views.print_columns([["A", "a"], ["B", "b"]], out, min_width=10)
    assert out.getvalue() == "A         B\na         b\n"


def test_the_installed_command_goes_through_run(tmp_path: Path) -> None:
    # run() sets up the process (one malloc arena, a frozen exit) around main().
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="ocistore")
    assert script.value == "ocistore.cli:run"
    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "images"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    missing = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "inspect", "x"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and missing.stderr.startswith("ocistore: "), missing.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["images"], "images"),
        (["--root", "/s", "load", "-i", "x"], "load"),
        (["--root=/s", "rmi", "a"], "rmi"),
        (["--root", "load", "images"], "images"),  # a store directory named "load"
        (["--help"], None),
        (["-h", "images"], None),
        (["--root", "/s"], None),
        (["lod"], None),
        ([], None),
    ],
)
def test_the_command_is_found_before_parsing(argv: list[str], command: str | None) -> None:
    assert cli._command_named(argv) == command


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub: argparse.ArgumentParser = action.choices[name]
    return sub


@pytest.mark.parametrize("name", [name for name, _, _ in cli._COMMANDS])
def test_a_command_parsed_alone_is_parsed_as_among_all(name: str) -> None:
    # Only the named command's parser is built; its help and usage must not change.
    full, alone = cli.build_parser(), cli.build_parser(name)
    assert _subparser(alone, name).format_help() == _subparser(full, name).format_help()


def test_a_load_parsed_alone_gives_the_same_arguments() -> None:
    argv = ["--root", "/s", "load", "-q", "-i", "a.tar", "--platform", "linux/arm64"]
    assert vars(cli.build_parser("load").parse_args(argv)) == vars(
        cli.build_parser().parse_args(argv)
    )


def test_only_the_streaming_commands_tune_the_allocator(
    run: Run, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(cli, "_mallopt", lambda param, value: calls.append((param, value)))
    assert run("images")[0] == 0
    assert calls == []  # a listing pays nothing for it (not even importing ctypes)
    assert run("import", files["a.tar"], "a:1")[0] == 0
    assert calls == [(-8, 1)]  # one arena, before the staging threads start
    calls.clear()
    assert run("save", "-o", tmp_path / "a.tar", "a:1")[0] == 0
    assert calls == [(-8, 1), (-3, 32 << 20), (-1, 128 << 20)]  # and keep freed memory
