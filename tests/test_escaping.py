"""Nothing printed for a person carries a raw control character (issue 10, item 4).

Configs, archive member names, ``RepoTags``, file names and typed references may hold
ESC, OSC, CR, BEL, C1 controls, bidirectional overrides or undecodable bytes; a terminal
would act on them (retitle the window, move the cursor, hide a line). Every table, error
and progress line shows them escaped (``\\x1b``); JSON shows them JSON-escaped.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_terminal import run_on_terminal
from util import make_tar
from util import run_main as run

from ocistore import ImageSource, LayerSource
from ocistore.cli import views
from ocistore.spec.reference import parse_tagged
from ocistore.store import Store

OCISTORE = Path(sys.executable).parent / "ocistore"

#: What a terminal acts on: C0 (newline only as the end of a line), DEL, C1, the bidi
#: overrides and isolates, the line and paragraph separators, lone surrogates.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

EVIL = "a\x1b]0;pwned\x07b\x1b[2Jc\rd\x9be\x7ff\u202eg\nh\ti"
SHOWN = "a\\x1b]0;pwned\\x07b\\x1b[2Jc\\rd\\x9be\\x7ff\\u202eg\\nh\\ti"


def assert_clean(text: str) -> None:
    """No raw control character anywhere (newlines only end lines)."""
    found = RAW.search(text)
    assert found is None, f"raw {found.group()!r} in {text!r}"


def add_image(store: Store, config: dict[str, object], tags: list[str]) -> str:
    """An image of one small layer, its config ``config`` plus the rootfs."""
    tar = make_tar({"etc/motd": b"hello\n"})
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    doc = {**config, "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    layer = LayerSource(open=lambda: contextlib.nullcontext(io.BytesIO(tar)), what="layer")
    source = ImageSource(
        json.dumps(doc).encode(), "test image", [layer], [parse_tagged(t) for t in tags]
    )
    (loaded,) = store.add_images([source])
    return str(loaded.id)


@pytest.fixture
def evil_store(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "store"
    with Store(root) as store:
        image_id = add_image(
            store,
            {
                "architecture": "amd64",
                "os": "linux",
                "created": "2024-01-02T03:04:05Z",
                "author": EVIL,
                "comment": EVIL,
                "config": {"Labels": {"evil": EVIL}},
                "history": [
                    {"created": "2024-01-02T03:04:05Z", "created_by": EVIL, "comment": EVIL}
                ],
            },
            ["evil:1"],
        )
    return root, image_id


# -- the one function ------------------------------------------------------------------


def test_printable_escapes_every_control_and_keeps_printable_unicode() -> None:
    assert views.printable(EVIL) == SHOWN
    assert views.printable("plain ascii, é, 日本語, emoji 👩\u200d👩, tab-free") == (
        "plain ascii, é, 日本語, emoji 👩\u200d👩, tab-free"
    )
    for c in "\x00\x01\x07\x08\x1b\x1f\x7f\x80\x85\x9b\x9f":
        assert views.printable(c) == f"\\x{ord(c):02x}"
    assert views.printable("\n\r\t") == "\\n\\r\\t"
    assert views.printable("\u2028\u2029\u202a\u202e\u2066\u2069") == (
        "\\u2028\\u2029\\u202a\\u202e\\u2066\\u2069"
    )
    # A file name's undecodable byte (surrogateescape) shows as that byte; another lone
    # surrogate as itself.
    assert views.printable(os.fsdecode(b"x\xffy")) == "x\\xffy"
    assert views.printable("\ud800") == "\\ud800"
    assert views.printable(SHOWN) == SHOWN  # once is enough: twice changes nothing
    assert_clean(views.printable("".join(map(chr, range(0x100)))))


def test_shorten_never_cuts_an_escape_in_two() -> None:
    assert views.shorten("x" * 43 + "\x1b" + "y", 45) == "x" * 43 + "…"
    assert views.shorten("x" * 40 + "\x1b" + "y" * 10, 45) == "x" * 40 + "\\x1b…"
    assert views.shorten("short\x1b", 45) == "short\\x1b"


def test_tables_escape_every_cell() -> None:
    out = io.StringIO()
    views.print_columns([["A", "x\x1b[2J", "ok"], ["B", "y\rz", "fine"]], out)
    assert out.getvalue() == "A          B\nx\\x1b[2J   y\\rz\nok         fine\n"


# -- what a config holds -----------------------------------------------------------------


def test_history_escapes_created_by_and_comment(
    evil_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = evil_store
    code, out, err = run(root, capsys, "history", "evil:1")
    assert code == 0, err
    assert_clean(out)
    assert len(out.splitlines()) == 2  # the newline in created_by did not break the row
    assert "a\\x1b]0;pwned\\x07b" in out
    assert SHOWN in out  # the comment, whole

    code, out, err = run(root, capsys, "history", "--no-trunc", "evil:1")
    assert code == 0, err
    assert_clean(out)
    assert len(out.splitlines()) == 2
    # created_by (its tab a space, as docker shows it) and comment, whole.
    assert SHOWN.replace("\\t", " ") in out and SHOWN in out

    code, out, err = run(root, capsys, "history", "--format", "json", "--no-trunc", "evil:1")
    assert code == 0, err
    assert_clean(out)
    assert "\\u001b" in out and "\\u007f" in out and "\\u009b" in out and "\\u202e" in out
    # Escaped, not lost (its tab a space, as docker gives it).
    assert json.loads(out)["CreatedBy"] == EVIL.replace("\t", " ")


def test_inspect_json_escapes_esc_del_and_c1(
    evil_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, image_id = evil_store
    code, out, err = run(root, capsys, "inspect", "evil:1")
    assert code == 0, err
    assert_clean(out.replace("\n", ""))
    for escaped in ("\\u001b", "\\u0007", "\\u007f", "\\u009b", "\\u202e", "\\r", "\\n", "\\t"):
        assert escaped in out
    (doc,) = json.loads(out)
    assert doc["Id"] == image_id
    assert doc["Comment"] == doc["Author"] == doc["Config"]["Labels"]["evil"] == EVIL


def test_images_and_system_df_stay_clean(
    evil_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = evil_store
    for args in (
        ["images"],
        ["images", "--format", "json"],
        ["system", "df", "-v"],
        ["system", "df", "--format", "json"],
    ):
        code, out, err = run(root, capsys, *args)
        assert code == 0, err
        assert_clean(out)


def test_an_import_message_with_controls_is_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(make_tar({"a": b"a"}))
    code, _, err = run(root, capsys, "import", "-m", EVIL, rootfs, "msg:1")
    assert code == 0, err
    code, out, _ = run(root, capsys, "history", "--no-trunc", "msg:1")
    assert code == 0
    assert_clean(out)
    assert SHOWN in out


# -- what was typed, and names from archives and the file system --------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", EVIL],
        ["history", EVIL],
        ["rmi", EVIL],
        ["tag", EVIL, "x:1"],
        ["save", "-o", "/dev/null", EVIL],
        ["images", "--filter", "before=" + EVIL],
        ["load", "-i", "/nonexistent/" + EVIL],
        ["import", "/nonexistent/" + EVIL],
    ],
)
def test_a_malicious_typed_name_is_escaped_in_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(tmp_path / "store", capsys, *args)
    assert code == 1
    assert_clean(out + err)
    assert err.startswith("ocistore: ") and err.count("\n") == 1, err
    assert "\\x1b" in err


def test_a_malicious_tag_target_is_escaped(
    evil_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = evil_store
    code, out, err = run(root, capsys, "tag", "evil:1", EVIL)
    assert code == 1
    assert_clean(out + err)
    assert err.startswith("ocistore: ") and err.count("\n") == 1, err
    assert "\\x1b]0;pwned" in err


@pytest.mark.parametrize(
    "args",
    [
        [EVIL],
        ["images", "--filter", EVIL],  # not name=value
        ["images", EVIL, EVIL],
        ["gc", "--grace", EVIL],
        ["image", "prune", "--filter", EVIL],
        ["system", EVIL],
    ],
)
def test_usage_errors_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = run(tmp_path / "store", capsys, *args)
    assert code == 2
    assert_clean(out + err)
    assert err.count("\n") == 1, err


def test_an_undecodable_file_name_is_shown_as_its_bytes(tmp_path: Path) -> None:
    """A real process: the name reaches ocistore as bytes, decoded with surrogateescape,
    and a lone surrogate could not even be written to stderr unescaped."""
    missing = os.fsencode(tmp_path) + b"/bad\xff\x1b[2J.tar"
    proc = subprocess.run(
        [
            os.fsencode(OCISTORE),
            b"--root",
            os.fsencode(tmp_path / "store"),
            b"load",
            b"-i",
            missing,
        ],
        capture_output=True,
    )
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.startswith("ocistore: ") and err.count("\n") == 1, err
    assert "bad\\xff\\x1b[2J.tar" in err
    assert b"\x1b" not in proc.stderr and b"\xff" not in proc.stderr
    assert "Traceback" not in err


def _docker_archive(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _config(layer: bytes) -> bytes:
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()


def test_a_missing_member_with_controls_is_escaped_in_the_error(tmp_path: Path) -> None:
    layer = make_tar({"f": b"x"})
    member = "evil\x1b]0;pwned\x07\r.tar"
    manifest = [{"Config": "config.json", "RepoTags": ["m:1"], "Layers": [member]}]
    archive = tmp_path / "a.tar"
    _docker_archive(
        archive, {"config.json": _config(layer), "manifest.json": json.dumps(manifest).encode()}
    )
    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "load", "-i", archive],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert_clean(proc.stdout + proc.stderr)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "evil\\x1b]0;pwned\\x07\\r.tar" in proc.stderr


def test_repo_tags_with_controls_are_escaped_in_the_error(tmp_path: Path) -> None:
    layer = make_tar({"f": b"x"})
    manifest = [{"Config": "config.json", "RepoTags": [EVIL + ":1"], "Layers": ["layer.tar"]}]
    archive = tmp_path / "a.tar"
    _docker_archive(
        archive,
        {
            "config.json": _config(layer),
            "layer.tar": layer,
            "manifest.json": json.dumps(manifest).encode(),
        },
    )
    proc = subprocess.run(
        [OCISTORE, "--root", tmp_path / "store", "load", "-i", archive],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert_clean(proc.stdout + proc.stderr)
    assert proc.stderr.startswith("ocistore: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "\\x1b]0;pwned" in proc.stderr


def test_progress_labels_never_show_member_names(tmp_path: Path) -> None:
    """On a terminal, the progress line names the layer by its DiffID, as docker does,
    never by the archive member's name (which may hold anything)."""
    layer = make_tar({"data": os.urandom(1 << 16)})
    member = "lay\x1b]0;pwned\x07er.tar"
    manifest = [{"Config": "config.json", "RepoTags": ["p:1"], "Layers": [member]}]
    archive = tmp_path / "a.tar"
    _docker_archive(
        archive,
        {
            "config.json": _config(layer),
            member: layer,
            "manifest.json": json.dumps(manifest).encode(),
        },
    )
    code, screen = run_on_terminal(["--root", str(tmp_path / "store"), "load", "-i", str(archive)])
    assert code == 0, screen
    assert "\x1b]0;" not in screen and "\x07" not in screen and "pwned" not in screen
    diff_id = hashlib.sha256(layer).hexdigest()
    assert f"{diff_id[:12]}: Loading layer" in screen
    assert "Loaded image: p:1" in screen


def test_gc_escapes_the_names_of_temporary_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    Store(root).close()
    name = "junk\x1b]0;pwned\x07\n"
    junk = root / "tmp" / name
    junk.write_bytes(b"x")
    old = time.time() - 10 * 24 * 3600
    os.utime(junk, (old, old))
    code, out, err = run(root, capsys, "gc")
    assert code == 0, err
    assert_clean(out)
    assert "junk\\x1b]0;pwned\\x07\\n" in out
    assert not junk.exists()


def test_a_skipped_config_is_warned_about_escaped(
    evil_store: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A config added outside the store that fails verification: its warning line holds
    the parse error, which may quote the file; escaped either way."""
    root, _ = evil_store
    bad = b'{"rootfs": {"type": "\x1b]0;pwned\x07"}}'
    name = hashlib.sha256(bad).hexdigest()
    (root / "imagedb" / "content" / "sha256" / name).write_bytes(bad)
    code, out, err = run(root, capsys, "images")
    assert code == 0
    assert_clean(out + err)
    assert "warning: skipped image" in err


def test_a_truncated_history_command_is_cut_as_text_and_escaped_once() -> None:
    from ocistore.cli import templates, views
    from ocistore.store.store import HistoryEntry

    long = EVIL * 3
    fields = views.history_fields(HistoryEntry(None, 0, long, 0, "", []))
    assert fields["CreatedBy"] == long.replace("\t", " ")[:44] + "…"
    line = templates.go_json(fields["CreatedBy"])
    assert "\\u001b" in line and "\\\\x1b" not in line  # JSON's escape, not printable's
    shown = templates.parse("{{.CreatedBy}}").render(fields)
    assert "\x1b" not in shown and "\\x1b" in shown  # on a terminal: escaped
