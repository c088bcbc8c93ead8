"""``inspect`` and ``history`` against a real Docker engine, on images Docker built.

The images are built here with the legacy builder (so each step leaves an intermediate
image with a ``Parent``), saved with ``docker save`` together with those intermediate
images, removed from the engine and loaded back (so Docker's view is of the loaded archive,
as ocistore's is: no build-time ``LastTagTime``), and loaded into ocistore. Both then
print the same bytes: ``inspect`` exactly (ocistore has no ``GraphDriver``, the one
difference, documented in the README), ``history`` exactly where its times are not
relative (``-H=false``), and cell for cell where they are.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from docker_engine import DockerEngine, static_busybox
from util import ocistore_cli

OCISTORE = Path(sys.executable).parent / "ocistore"

DOCKERFILE = """\
FROM scratch
LABEL t=inspect
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /srv/www && echo '<h1>&</h1>' > /srv/www/index.html
ENV PATH=/bin LANG=C.UTF-8 QUOTE="a <b> & c"
LABEL org.example.title="ünïcødé ✓" org.example.html="<b>&amp;</b>"
EXPOSE 80/tcp 53/udp
VOLUME ["/data"]
WORKDIR /srv/www
USER 33:33
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s CMD ["true"]
ONBUILD RUN echo built-on
SHELL ["/bin/sh", "-ec"]
ENTRYPOINT ["/bin/busybox"]
CMD ["httpd", "-f", "-p", "80"]
"""

CHILD_DOCKERFILE = """\
FROM t-inspect/app:1
USER 0:0
RUN echo child >/child &&\trm /srv/www/index.html
"""


class Images(NamedTuple):
    archive: Path
    store: Path
    #: Every image of the archive: the two tagged images and the intermediate ones.
    ids: list[str]


@pytest.fixture(scope="module")
def images(
    docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Images]:
    docker = docker_engine
    tmp = tmp_path_factory.mktemp("inspect")
    docker.build("t-inspect/app:1", DOCKERFILE, {"busybox": static_busybox()})
    docker.build("t-inspect/child:1", CHILD_DOCKERFILE)
    ids = docker.run("history", "-q", "--no-trunc", "t-inspect/child:1").stdout.split()
    # Docker cannot save an image without layers (the first LABEL's): the bottom rows of
    # the history stay <missing>.
    ids = [
        i
        for i in dict.fromkeys(ids)
        if i != "<missing>"
        and docker.run("image", "inspect", "-f", "{{.RootFS.Layers}}", i).stdout.strip() != "[]"
    ]
    archive = tmp / "all.tar"
    docker.run("save", "-o", archive, "t-inspect/app:1", "t-inspect/child:1", *ids)
    docker.run("rmi", "t-inspect/app:1", "t-inspect/child:1")
    docker.run("load", "-i", archive)
    store = tmp / "store"
    ocistore_cli("--root", store, "load", "-q", "-i", archive)
    yield Images(archive, store, ids)
    docker.run("rmi", "-f", "t-inspect/app:1", "t-inspect/child:1", check=False)
    left = [i for i in ids if docker.run("image", "inspect", i, check=False).returncode == 0]
    if left:
        docker.run("rmi", "-f", *left, check=False)


_GRAPH_DRIVER = re.compile(
    r'\n        "GraphDriver": \{\n            "Data": null,\n            "Name": "vfs"\n'
    r"        \},"
)


def without_graph_driver(text: str) -> str:
    out, n = _GRAPH_DRIVER.subn("", text)
    assert n == text.count('"GraphDriver"'), text
    return out


@pytest.mark.parametrize("name", ["t-inspect/app:1", "t-inspect/child:1"])
def test_inspect_prints_what_docker_prints(
    images: Images, docker_engine: DockerEngine, name: str
) -> None:
    theirs = docker_engine.run("image", "inspect", name).stdout
    ours = ocistore_cli("--root", images.store, "inspect", name).stdout
    assert ours == without_graph_driver(theirs)


def test_inspect_of_every_intermediate_image_and_several_at_once(
    images: Images, docker_engine: DockerEngine
) -> None:
    theirs = docker_engine.run("image", "inspect", *images.ids).stdout
    ours = ocistore_cli("--root", images.store, "inspect", *images.ids).stdout
    assert ours == without_graph_driver(theirs)
    data = json.loads(ours)
    # Docker's zero values, its key order, the parent chain restored from the archive.
    assert [d["Id"] for d in data] == images.ids
    assert all(d["Metadata"]["LastTagTime"] == "0001-01-01T00:00:00Z" for d in data)
    assert all(d["Parent"] for d in data[:-1])
    assert list(data[0])[:7] == [
        "Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "Container",
    ]  # fmt: skip
    assert "ünïcødé ✓" in ours and "<b>&amp;</b>" in ours


def test_inspect_by_id_prefix_and_a_missing_image(
    images: Images, docker_engine: DockerEngine
) -> None:
    short = images.ids[0][7:19]
    theirs = docker_engine.run("image", "inspect", short, "t-inspect/nosuch", check=False)
    ours = ocistore_cli("--root", images.store, "inspect", short, "t-inspect/nosuch", check=False)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stdout == without_graph_driver(theirs.stdout)
    assert ours.stderr == "ocistore: No such image: t-inspect/nosuch:latest\n"
    assert theirs.stderr.rstrip().endswith("No such image: t-inspect/nosuch:latest")
    nothing = ocistore_cli("--root", images.store, "inspect", "t-inspect/nosuch", check=False)
    assert nothing.stdout == "[]\n"


def test_last_tag_time_is_the_time_of_the_last_tag(
    images: Images, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    def last_tag_time(text: str) -> str:
        value: str = json.loads(text)[0]["Metadata"]["LastTagTime"]
        return value

    # (An image of its own: tagging the module's images would change what Docker shows
    # of them to the other tests.)
    tree = subprocess.run(["tar", "-c", "-T", "/dev/null"], capture_output=True).stdout
    docker_engine.run("import", "-", "t-inspect/tagme:1", input=tree)
    docker_engine.run("tag", "t-inspect/tagme:1", "t-inspect/again:1")
    try:
        theirs = docker_engine.run("image", "inspect", "t-inspect/again:1").stdout
    finally:
        docker_engine.run("rmi", "t-inspect/again:1", "t-inspect/tagme:1")
    store = tmp_path / "store"
    ocistore_cli("--root", store, "load", "-q", "-i", images.archive)
    before = last_tag_time(ocistore_cli("--root", store, "inspect", "t-inspect/app:1").stdout)
    ocistore_cli("--root", store, "tag", "t-inspect/app:1", "t-inspect/again:1")
    after = last_tag_time(ocistore_cli("--root", store, "inspect", "t-inspect/app:1").stdout)
    pattern = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z")
    assert before == "0001-01-01T00:00:00Z"
    assert pattern.fullmatch(after) and pattern.fullmatch(last_tag_time(theirs))
    # An import tags as docker import does (the time shown); one without a name does not.
    for reference, tagged in (["t-inspect/imported:1"], True), ([], False):
        proc = subprocess.run(
            [str(OCISTORE), "--root", str(store), "import", "-q", "-", *reference],
            input=tree,
            capture_output=True,
            check=True,
        )
        image_id = proc.stdout.decode().split()[-1]
        shown = last_tag_time(ocistore_cli("--root", store, "inspect", image_id).stdout)
        assert (shown != "0001-01-01T00:00:00Z") is tagged, shown
        assert pattern.fullmatch(shown)


@pytest.mark.parametrize(
    "options",
    [
        ["-H=false"],
        ["-H=false", "--no-trunc"],
        ["-q"],
        ["-q", "--no-trunc"],
    ],
    ids=lambda o: " ".join(o),
)
@pytest.mark.parametrize("name", ["t-inspect/app:1", "t-inspect/child:1"])
def test_history_prints_what_docker_prints(
    images: Images, docker_engine: DockerEngine, name: str, options: list[str]
) -> None:
    theirs = docker_engine.run("history", *options, name).stdout
    ours = ocistore_cli("--root", images.store, "history", *options, name).stdout
    assert ours == theirs
    # Every row's image but the layerless bottom one is in the archive.
    assert ours.count("<missing>") == 1


def _cells(table: str) -> list[list[str]]:
    return [re.split(r"   +", line.rstrip()) for line in table.splitlines()]


_AGO = re.compile(r"(\d+ \w+|Less than a second|About an? \w+) ago")


def test_history_in_human_form_and_as_json_lines(
    images: Images, docker_engine: DockerEngine
) -> None:
    # Relative times may tick between the two commands: compared as a placeholder.
    theirs = docker_engine.run("history", "t-inspect/child:1").stdout
    ours = ocistore_cli("--root", images.store, "history", "t-inspect/child:1").stdout
    assert _cells(_AGO.sub("AGO", ours)) == _cells(_AGO.sub("AGO", theirs))
    for options in (["--format", "{{json .}}"], ["--format", "{{json .}}", "--no-trunc"]):
        theirs = docker_engine.run("history", *options, "t-inspect/child:1").stdout
        ours_json = ["--format", "json", *options[2:]]
        ours = ocistore_cli("--root", images.store, "history", *ours_json, "t-inspect/child:1")
        assert _AGO.sub("AGO", ours.stdout) == _AGO.sub("AGO", theirs)


def test_history_of_an_image_loaded_without_its_parents(
    images: Images, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    """Only the image itself is known: its row has its ID, the older rows <missing>."""
    archive = tmp_path / "child.tar"
    docker_engine.run("save", "-o", archive, "t-inspect/child:1")
    store = tmp_path / "store"
    ocistore_cli("--root", store, "load", "-q", "-i", archive)
    ours = ocistore_cli("--root", store, "history", "-H=false", "t-inspect/child:1").stdout
    lines = ours.splitlines()
    assert lines[1].startswith(images.ids[0][7:19] + "   ")
    assert all(line.startswith("<missing>   ") for line in lines[2:])
    assert len(lines) == 2 + len(images.ids)


def test_history_of_an_image_without_history_has_no_rows(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    layer = subprocess.run(
        ["tar", "-c", "--files-from", "/dev/null"], capture_output=True, check=True
    ).stdout
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {},
        }
    ).encode()
    del layer
    import hashlib
    import io
    import tarfile

    config_hex = hashlib.sha256(config).hexdigest()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (
            (f"{config_hex}.json", config),
            (
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": f"{config_hex}.json",
                            "RepoTags": ["t-inspect/bare:1"],
                            "Layers": [],
                        }
                    ]
                ).encode(),
            ),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "bare.tar"
    archive.write_bytes(buf.getvalue())
    docker_engine.run("load", "-i", archive)
    try:
        theirs = docker_engine.run("history", "t-inspect/bare:1").stdout
        theirs_inspect = docker_engine.run("image", "inspect", "t-inspect/bare:1").stdout
    finally:
        docker_engine.run("rmi", "t-inspect/bare:1")
    store = tmp_path / "store"
    ocistore_cli("--root", store, "load", "-q", "-i", archive)
    ours = ocistore_cli("--root", store, "history", "t-inspect/bare:1").stdout
    assert ours == theirs
    ours_inspect = ocistore_cli("--root", store, "inspect", "t-inspect/bare:1").stdout
    # No layers: RootFS.Layers left out; no created: Go's zero time; Config {} of zeros.
    assert ours_inspect == without_graph_driver(theirs_inspect)


@pytest.mark.parametrize(
    "template",
    [
        "{{.Id}} {{.Size}} {{.Os}}/{{.Architecture}} {{.RepoTags}} {{.Parent}}",
        "{{json .Config.Env}} {{.Config.Labels}} {{json .Config.Labels}}",
        "{{.Config.User}} {{.Config.WorkingDir}} {{json .Config.Entrypoint}} {{.Config.Cmd}}",
        "{{json .RootFS}} {{len .RootFS.Layers}} {{.Created}} {{.DockerVersion}}",
        "{{range .RootFS.Layers}}{{.}}\\n{{end}}",
        "{{json .ContainerConfig.Cmd}} {{.Comment}} {{.ContainerConfig.Hostname}}",
    ],
)
def test_inspect_templates_print_what_docker_prints(
    images: Images, docker_engine: DockerEngine, template: str
) -> None:
    names = ["t-inspect/app:1", "t-inspect/child:1"]
    theirs = docker_engine.run("image", "inspect", "--format", template, *names).stdout
    ours = ocistore_cli("--root", images.store, "inspect", "--format", template, *names).stdout
    assert ours == theirs


@pytest.mark.parametrize(
    "template",
    [
        "{{.ID}}|{{.Size}}|{{.CreatedBy}}|{{.CreatedAt}}",
        "table {{.ID}}\\t{{.CreatedAt}}\\t{{.Size}}",
        "table {{.CreatedBy}}\\t{{.Comment}}",
    ],
)
@pytest.mark.parametrize("options", [[], ["--no-trunc"], ["-H=false"]], ids=repr)
def test_history_templates_print_what_docker_prints(
    images: Images, docker_engine: DockerEngine, template: str, options: list[str]
) -> None:
    args = ["history", *options, "--format", template, "t-inspect/child:1"]
    theirs = docker_engine.run(*args).stdout
    ours = ocistore_cli("--root", images.store, *args).stdout
    assert ours == theirs


def test_a_bad_template_is_one_line_and_exit_1(images: Images, docker_engine: DockerEngine) -> None:
    for args in (["history", "--format", "{{.Nope}}"], ["history", "--format", "{{.ID"]):
        theirs = docker_engine.run(*args, "t-inspect/app:1", check=False)
        ours = ocistore_cli("--root", images.store, *args, "t-inspect/app:1", check=False)
        assert ours.returncode == theirs.returncode == 1
        assert len(ours.stderr.splitlines()) == 1 and ours.stdout == ""
        assert ours.stderr.startswith("ocistore: template")


def test_inspect_format_json_is_dockers_compact_array(
    images: Images, docker_engine: DockerEngine
) -> None:
    names = ["t-inspect/app:1", "t-inspect/child:1"]
    theirs = docker_engine.run("image", "inspect", "--format", "json", *names).stdout
    ours = ocistore_cli("--root", images.store, "inspect", "--format", "json", *names).stdout
    graph_driver = '"GraphDriver":{"Data":null,"Name":"vfs"},'
    assert theirs.count(graph_driver) == 2
    assert ours == theirs.replace(graph_driver, "")


def test_inspect_template_of_only_missing_images_prints_a_newline(
    images: Images, docker_engine: DockerEngine
) -> None:
    args = ["--format", "{{.Id}}", "t-inspect/nosuch:1"]
    theirs = docker_engine.run("image", "inspect", *args, check=False)
    ours = ocistore_cli("--root", images.store, "inspect", *args, check=False)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (1, "\n")
    assert ours.stderr == "ocistore: No such image: t-inspect/nosuch:1\n"


def test_history_times_of_go_s_zero_time() -> None:
    """A history entry without a time is Go's zero time, four-digit year and all."""
    from ocistore.cli import views
    from ocistore.spec.gotime import ZERO_UNIX
    from ocistore.store.store import HistoryEntry

    row = HistoryEntry(None, ZERO_UNIX, "x", 0, "", [])
    fields = views.history_fields(row, human=False)
    assert fields["CreatedAt"] == fields["CreatedSince"] == "0001-01-01T00:00:00Z"
    assert views.history_fields(row)["CreatedSince"] == "292 years ago"  # Go's longest
