"""``ocistore serve`` with the real clients (issue 14): docker, podman, skopeo and
containerd's ctr pull from it on 127.0.0.1, and the image IDs they get are the store's;
then ``serve --proxy`` as a pull-through cache in front of the tests' Distribution
registry, pulled through directly and through each client's mirror configuration
(containerd's ``hosts.toml``, podman's ``[[registry.mirror]]``, Docker's
``registry-mirrors``).

The images are small and made here, with random bytes, so that no client has them from
an earlier run. Servers are shared within the module (one ``serve`` of the store, one
private containerd, one upstream registry and one ``serve --proxy`` in front of it for
the mirror tests); a test that counts requests or needs an empty store starts its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from conftest import SKOPEO_BLOB_CACHE, require_tool
from docker_engine import DockerEngine, started_engine
from registry_peer import RegistryServer, started_registry, write_oci_layout
from serve_peer import ServeProcess, started_serve
from util import make_tar, ocistore_cli

from ocistore.spec.digest import Digest, ImageID
from ocistore.store import Store

#: Seconds containerd is given to say it booted: a bound on a failure, not a wait.
CONTAINERD_START_TIMEOUT = 120.0
CONTAINERD_STOP_TIMEOUT = 60.0
#: Long enough that no tag pulled through is asked of the upstream again during the
#: module (the second pulls must not touch it).
PROXY_TTL = "86400"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT_ALL = ", ".join(
    [
        OCI_MANIFEST,
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


# -- helpers -------------------------------------------------------------------------------


def oc(root: Path, *args: str | Path) -> str:
    """``ocistore --root ROOT ARGS…``: its standard output (fails the test if it fails)."""
    return ocistore_cli("--root", root, *args).stdout


def skopeo_run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """skopeo without a policy file, its blob cache dropped first (it remembers blobs
    across runs); fails the test if it fails and ``check``."""
    skopeo = require_tool("skopeo")
    with contextlib.suppress(PermissionError):
        SKOPEO_BLOB_CACHE.unlink(missing_ok=True)
    cmd = [skopeo, "--insecure-policy", *(str(a) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def get(
    server: ServeProcess, path: str, accept: str = ACCEPT_ALL, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request to the server: status, headers (lower-case names), body."""
    conn = server.connection()
    try:
        conn.request(method, path, headers={"Accept": accept})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def kept(root: Path, image_id: str) -> tuple[str, bytes]:
    """The digest and bytes of the manifest the store keeps for ``image_id``."""
    with Store(root) as store:
        digest = store.kept_manifest(ImageID(Digest(image_id)))
        assert digest is not None, f"the store keeps no manifest for {image_id}"
        return str(digest), store.read_blob(digest)


def store_names(root: Path) -> set[str]:
    return set(oc(root, "images", "--format", "{{.Repository}}:{{.Tag}}").split())


def store_id(root: Path, name: str) -> str:
    return oc(root, "inspect", "-f", "{{.Id}}", name).strip()


@dataclass
class Layout:
    """An OCI layout of a one-layer image (random bytes in it), tagged ``1``."""

    path: Path
    manifest_digest: str
    manifest: bytes
    config_digest: str


def random_layout(directory: Path, what: str) -> Layout:
    files = {f"srv/{what}": f"{what} {uuid.uuid4()}\n".encode(), "data.bin": os.urandom(3000)}
    digest = write_oci_layout(directory, "1", files)
    raw = (directory / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    return Layout(directory, digest, raw, json.loads(raw)["config"]["digest"])


# -- the store and its server ----------------------------------------------------------------


@dataclass
class Served:
    root: Path
    server: ServeProcess
    #: name → image ID of the images served: ``lab/imported:1`` (``ocistore import`` of a
    #: tar) and ``lab/archive:1`` (a docker-archive load) came without a manifest, and get
    #: one generated and kept; ``lab/loaded:1`` (an OCI layout load) kept its own.
    images: dict[str, str]
    #: The layout ``lab/loaded:1`` came from.
    layout: Layout

    def ref(self, name: str) -> str:
        return f"{self.server.host}/{name}"


def random_rootfs(path: Path, what: str) -> Path:
    path.write_bytes(
        make_tar({"etc/hostname": f"{what}\n".encode(), "srv/id": uuid.uuid4().bytes * 100})
    )
    return path


def without_manifest(root: Path, scratch: Path, name: str, how: str) -> str:
    """Image ``name`` in ``root`` from an import (``how`` ``import``) or a docker-archive
    load (``archive``: ``save --format docker`` of an import in a scratch store, loaded):
    no manifest kept; its image ID."""
    rootfs = random_rootfs(scratch / f"{how}-rootfs.tar", how)
    if how == "import":
        return oc(root, "import", "-q", rootfs, name).strip().splitlines()[-1]
    other = scratch / "scratch-store"
    image_id = oc(other, "import", "-q", rootfs, name).strip().splitlines()[-1]
    oc(other, "save", "--format", "docker", "-o", scratch / "archive.tar", name)
    oc(root, "load", "-q", "-i", scratch / "archive.tar")
    assert store_id(root, name) == image_id
    return image_id


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("serve-peers")
    root = work / "store"
    images = {
        "lab/imported:1": without_manifest(root, work, "lab/imported:1", "import"),
        "lab/archive:1": without_manifest(root, work, "lab/archive:1", "archive"),
    }
    layout = random_layout(work / "layout", "loaded")
    oc(root, "load", "-q", "-i", layout.path)
    oc(root, "tag", layout.config_digest, "lab/loaded:1")
    images["lab/loaded:1"] = layout.config_digest
    with Store(root) as store:
        assert store.kept_manifest(ImageID(Digest(images["lab/imported:1"]))) is None
        assert store.kept_manifest(ImageID(Digest(images["lab/archive:1"]))) is None
    with started_serve(root) as server:
        yield Served(root, server, images, layout)


def served_manifest(served: Served, name: str) -> tuple[str, bytes]:
    repo, _, tag = name.partition(":")
    status, headers, body = get(served.server, f"/v2/{repo}/manifests/{tag}")
    assert status == 200, body
    assert headers["docker-content-digest"] == sha256(body)
    return headers["docker-content-digest"], body


# -- 1. docker ------------------------------------------------------------------------------


def test_docker_pulls_with_the_ids_of_the_store(
    served: Served, docker_engine: DockerEngine
) -> None:
    for name, image_id in served.images.items():
        ref = served.ref(name)
        docker_engine.run("pull", "-q", ref)
        assert docker_engine.image_id(ref) == image_id == store_id(served.root, name)
        digest, _ = served_manifest(served, name)
        repo_digests = json.loads(
            docker_engine.run("image", "inspect", "-f", "{{json .RepoDigests}}", ref).stdout
        )
        assert repo_digests == [f"{served.ref(name.partition(':')[0])}@{digest}"]
    assert served.server.proc.poll() is None, served.server.log_text()


@pytest.mark.parametrize("how", ["import", "archive"])
def test_a_generated_manifest_is_kept_and_stable_across_requests_and_restarts(
    tmp_path: Path, how: str
) -> None:
    root = tmp_path / "store"
    image_id = without_manifest(root, tmp_path, "lab/gen:1", how)
    with Store(root) as store:
        assert store.kept_manifest(ImageID(Digest(image_id))) is None
    with started_serve(root) as server:
        answers = [get(server, "/v2/lab/gen/manifests/1") for _ in range(2)]
        head = get(server, "/v2/lab/gen/manifests/1", method="HEAD")
    (s1, h1, b1), (s2, h2, b2) = answers
    assert s1 == s2 == head[0] == 200
    assert b1 == b2
    digest = h1["docker-content-digest"]
    assert digest == h2["docker-content-digest"] == head[1]["docker-content-digest"] == sha256(b1)
    assert h1["content-type"] == json.loads(b1)["mediaType"]
    assert json.loads(b1)["config"]["digest"] == image_id
    assert kept(root, image_id) == (digest, b1)
    with started_serve(root) as server:
        status, headers, body = get(server, "/v2/lab/gen/manifests/1")
        by_digest = get(server, f"/v2/lab/gen/manifests/{digest}")
    assert (status, headers["docker-content-digest"], body) == (200, digest, b1)
    assert by_digest[0] == 200 and by_digest[2] == b1


def test_a_loaded_manifest_is_served_byte_for_byte(served: Served) -> None:
    digest, body = served_manifest(served, "lab/loaded:1")
    assert digest == served.layout.manifest_digest
    assert body == served.layout.manifest
    assert kept(served.root, served.images["lab/loaded:1"]) == (digest, body)


# -- 2. podman ------------------------------------------------------------------------------


class Podman:
    """podman with a store, run root and configuration files of its own (never the
    machine's: ``CONTAINERS_CONF``, ``CONTAINERS_REGISTRIES_CONF`` and
    ``CONTAINERS_STORAGE_CONF`` name files written here, and a policy accepting
    anything)."""

    def __init__(self, directory: Path, registries_conf: str) -> None:
        self.podman = require_tool("podman")
        self.directory = directory
        # The run root holds sockets: a short path, under /tmp.
        self.runroot = Path(tempfile.mkdtemp(prefix="ocistore-podman-", dir="/tmp"))
        self.root = directory / "root"
        conf = directory / "conf"
        conf.mkdir(parents=True)
        (conf / "registries.conf").write_text(registries_conf)
        (conf / "containers.conf").write_text(
            '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n'
        )
        (conf / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{self.runroot}"\ngraphroot = "{self.root}"\n'
        )
        self.policy = conf / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (conf / "auth.json").write_text('{"auths": {}}\n')  # (podman insists it exists)
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH", "DOCKER_", "XDG_"))
        }
        self.env.update(
            CONTAINERS_CONF=str(conf / "containers.conf"),
            CONTAINERS_REGISTRIES_CONF=str(conf / "registries.conf"),
            CONTAINERS_STORAGE_CONF=str(conf / "storage.conf"),
            REGISTRY_AUTH_FILE=str(conf / "auth.json"),
            HOME=str(directory),
        )

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            self.podman,
            "--root", str(self.root),
            "--runroot", str(self.runroot),
            "--storage-driver", "vfs",
            *args,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=self.env)
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def pull(self, *args: str) -> str:
        """``podman pull``: the image ID it prints (``sha256:…``)."""
        out = self("pull", "-q", "--signature-policy", str(self.policy), *args).stdout
        return "sha256:" + out.strip().splitlines()[-1]

    def close(self) -> None:
        shutil.rmtree(self.runroot, ignore_errors=True)


@contextlib.contextmanager
def podman(directory: Path, registries_conf: str) -> Iterator[Podman]:
    p = Podman(directory, registries_conf)
    try:
        yield p
    finally:
        p.close()


NO_SEARCH = 'unqualified-search-registries = []\nshort-name-mode = "enforcing"\n'


def test_podman_pulls_with_the_ids_of_the_store(served: Served, tmp_path: Path) -> None:
    with podman(tmp_path / "podman", NO_SEARCH) as p:
        for name, image_id in served.images.items():
            assert p.pull("--tls-verify=false", served.ref(name)) == image_id
            out = p("image", "inspect", "--format", "{{.Id}} {{.Digest}}", served.ref(name))
            got_id, got_digest = out.stdout.split()
            assert "sha256:" + got_id == image_id
            assert got_digest == served_manifest(served, name)[0]


# -- 3. skopeo ------------------------------------------------------------------------------


def test_skopeo_copies_and_reads_the_kept_manifests(served: Served, tmp_path: Path) -> None:
    for name, image_id in served.images.items():
        source = f"docker://{served.ref(name)}"
        raw = skopeo_run("inspect", "--raw", "--tls-verify=false", source).stdout.encode()
        assert (sha256(raw), raw) == kept(served.root, image_id)
        out = tmp_path / name.replace("/", "-").replace(":", "-")
        skopeo_run("copy", "-q", "--src-tls-verify=false", source, f"oci:{out}:x")
        index = json.loads((out / "index.json").read_bytes())
        (desc,) = index["manifests"]
        manifest = json.loads((out / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
        assert manifest["config"]["digest"] == image_id
        config = (out / "blobs" / "sha256" / image_id[7:]).read_bytes()
        assert sha256(config) == image_id
        # The copy, loaded into another store, is the same image.
        other = tmp_path / f"other-{out.name}"
        oc(other, "load", "-q", "-i", out)
        assert oc(other, "images", "-q", "--no-trunc").split() == [image_id]


# -- 4. containerd --------------------------------------------------------------------------


class Containerd:
    """A private containerd: root, state, sockets and config under one directory."""

    def __init__(self, directory: Path, proc: subprocess.Popen[bytes], ctr: str) -> None:
        self.directory = directory
        self.proc = proc
        self.ctr_path = ctr
        self.socket = directory / "containerd.sock"
        self.log: list[str] = []
        self.changed = threading.Condition()
        self.booted = False
        self.ended = False

    def read(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace")
                with self.changed:
                    self.log.append(line)
                    if "containerd successfully booted" in line:
                        self.booted = True
                    self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def log_text(self) -> str:
        with self.changed:
            return "".join(self.log)

    def ctr(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            self.ctr_path,
            "--address", str(self.socket),
            "--namespace", "ocistore-test",
            *(str(a) for a in args),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
                f"containerd's log:\n{self.log_text()[-4000:]}"
            )
        return proc

    def pull(self, *args: str | Path) -> None:
        self.ctr("images", "pull", "--snapshotter", "native", *args)

    def image(self, ref: str) -> tuple[str, str]:
        """The manifest digest ``ctr images ls`` shows for ``ref`` and the config digest
        of that manifest, read from ``ctr content`` (and checked against its bytes)."""
        rows = [line.split() for line in self.ctr("images", "ls").stdout.splitlines()[1:]]
        digests = [row[2] for row in rows if row and row[0] == ref]
        assert len(digests) == 1, rows
        manifest_raw = self.ctr("content", "get", digests[0]).stdout.encode()
        assert sha256(manifest_raw) == digests[0]
        config_digest = json.loads(manifest_raw)["config"]["digest"]
        listed = {line.split()[0] for line in self.ctr("content", "ls", "-q").stdout.splitlines()}
        assert config_digest in listed
        assert sha256(self.ctr("content", "get", config_digest).stdout.encode()) == config_digest
        return digests[0], config_digest


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


CONTAINERD_CONFIG = """\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


@contextlib.contextmanager
def started_containerd() -> Iterator[Containerd]:
    """containerd with everything under a new directory in /tmp (its socket's path must
    fit in sun_path), ready when its log says it booted; stopped (SIGTERM, then SIGKILL
    to its process group past the bound) and its files removed at the end."""
    containerd = require_tool("containerd")
    ctr = require_tool("ctr")
    if os.geteuid() != 0:
        _skip_or_fail("containerd needs root to start")
    directory = Path(tempfile.mkdtemp(prefix="ocistore-containerd-", dir="/tmp"))
    config = directory / "config.toml"
    config.write_text(CONTAINERD_CONFIG.format(d=directory))
    argv = [
        containerd,
        "--config", str(config),
        "--root", str(directory / "root"),
        "--state", str(directory / "state"),
        "--address", str(directory / "containerd.sock"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERD_")}
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    daemon = Containerd(directory, proc, ctr)
    assert proc.stdout is not None
    reader = threading.Thread(target=daemon.read, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        with daemon.changed:
            settled = daemon.changed.wait_for(
                lambda: daemon.booted or daemon.ended, CONTAINERD_START_TIMEOUT
            )
        if not settled:
            pytest.fail(
                f"containerd did not boot in {CONTAINERD_START_TIMEOUT:.0f} s:\n"
                + daemon.log_text()
            )
        if not daemon.booted:
            proc.wait()
            _skip_or_fail(
                f"a private containerd cannot start here (exit {proc.returncode}):\n"
                + daemon.log_text()[-3000:]
            )
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(CONTAINERD_STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(CONTAINERD_STOP_TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    with started_containerd() as daemon:
        yield daemon


def test_containerd_pulls_with_the_ids_of_the_store(served: Served, containerd: Containerd) -> None:
    for name, image_id in served.images.items():
        ref = served.ref(name)
        containerd.pull("--plain-http", ref)
        manifest_digest, config_digest = containerd.image(ref)
        assert config_digest == image_id == store_id(served.root, name)
        assert manifest_digest == kept(served.root, image_id)[0]


def test_containerd_hosts_toml_picks_the_registry_by_ns(
    served: Served, containerd: Containerd
) -> None:
    """The store as a node-local mirror of several registries: containerd sends the
    upstream's path with ``?ns=HOST``, and the store's image of ``HOST/PATH`` answers."""
    image_id = served.images["lab/imported:1"]
    names = {"docker.io": "docker.io/library/mirrored:1", "quay.io": "quay.io/team/app:1"}
    hosts = containerd.directory / "hosts-store.d"
    for host, name in names.items():
        oc(served.root, "tag", image_id, name)
        (hosts / host).mkdir(parents=True)
        (hosts / host / "hosts.toml").write_text(
            f'[host."{served.server.url}"]\n  capabilities = ["pull", "resolve"]\n'
        )
    for name in names.values():
        containerd.pull("--hosts-dir", hosts, name)
        assert containerd.image(name) == (kept(served.root, image_id)[0], image_id)


# -- 5. pull-through ------------------------------------------------------------------------

_REQUEST = re.compile(r'"(?:GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]" \d{3}')


class Upstream:
    """The tests' Distribution registry, its requests counted from its access log."""

    def __init__(self, registry: RegistryServer) -> None:
        self.registry = registry
        self._barriers = 0

    @property
    def host(self) -> str:
        return self.registry.host

    def requests(self) -> list[str]:
        """The paths of every request it has logged, once every request made before this
        call has been logged: a request of the test's own (``/v2/?barrier=N``) is sent
        and waited for in the log (an event), and left out of the list."""
        self._barriers += 1
        mark = f"/v2/?barrier={self._barriers}"
        conn = self.registry.connection()
        try:
            conn.request("GET", mark)
            conn.getresponse().read()
        finally:
            conn.close()
        log = self.registry.wait_for_log(f'"GET {mark} HTTP/1.1"')
        return [p for p in _REQUEST.findall(log) if not p.startswith("/v2/?barrier=")]

    def push(self, layout: Layout, path: str) -> None:
        skopeo_run(
            "copy", "-q", "--dest-tls-verify=false", f"oci:{layout.path}:1",
            f"docker://{self.host}/{path}",
        )  # fmt: skip


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    with started_registry(tmp_path_factory.mktemp("upstream")) as registry:
        yield Upstream(registry)


def test_pull_through_once_then_from_the_store(
    upstream: Upstream, docker_engine: DockerEngine, tmp_path: Path
) -> None:
    layouts = {
        first: random_layout(tmp_path / f"layout-{first}", f"proxied-{first}")
        for first in ("skopeo", "docker")
    }
    for first, layout in layouts.items():
        upstream.push(layout, f"proxied/{first}-first:1")
    root = tmp_path / "store"
    with started_serve(root, "--proxy", f"http://{upstream.host}", "--proxy-ttl", PROXY_TTL) as s:
        assert store_names(root) == set()

        def skopeo_pull(first: str, out: str) -> None:
            source = f"docker://{s.host}/proxied/{first}-first:1"
            skopeo_run("copy", "-q", "--src-tls-verify=false", source, f"oci:{tmp_path / out}:x")
            index = json.loads((tmp_path / out / "index.json").read_bytes())
            assert index["manifests"][0]["digest"] == layouts[first].manifest_digest
            raw = skopeo_run("inspect", "--raw", "--tls-verify=false", source).stdout
            assert raw.encode() == layouts[first].manifest

        def docker_pull(first: str, remove: bool = False) -> None:
            ref = f"{s.host}/proxied/{first}-first:1"
            if remove:
                docker_engine.run("rmi", ref)
            docker_engine.run("pull", "-q", ref)
            assert docker_engine.image_id(ref) == layouts[first].config_digest

        # First pulls: the first client's request brings the image into the store
        # through the proxy; the other client's is served by the store.
        for first, layout in layouts.items():
            path = f"proxied/{first}-first:1"
            before = upstream.requests()
            if first == "skopeo":
                skopeo_pull(first, f"{first}-a")
                docker_pull(first)
            else:
                docker_pull(first)
                skopeo_pull(first, f"{first}-a")
            fetched = upstream.requests()[len(before) :]
            assert f"/v2/proxied/{first}-first/manifests/1" in fetched, fetched
            stored = f"{upstream.host}/{path}"
            assert stored in store_names(root)
            assert store_id(root, stored) == layout.config_digest
            assert kept(root, layout.config_digest)[1] == layout.manifest
        assert store_names(root) == {f"{upstream.host}/proxied/{f}-first:1" for f in layouts}
        counted = upstream.requests()

        # Second pulls (docker's image removed first, so that every blob is asked for
        # again): served by the store, the upstream not touched.
        for first in layouts:
            skopeo_pull(first, f"{first}-b")
            docker_pull(first, remove=True)
        after = upstream.requests()
        assert after == counted, after[len(counted) :]
        assert s.proc.poll() is None, s.log_text()


def test_pull_through_by_digest(upstream: Upstream, tmp_path: Path) -> None:
    layout = random_layout(tmp_path / "layout", "by-digest")
    upstream.push(layout, "proxied/by-digest:1")
    root = tmp_path / "store"
    with started_serve(root, "--proxy", f"http://{upstream.host}", "--proxy-ttl", PROXY_TTL) as s:
        source = f"docker://{s.host}/proxied/by-digest@{layout.manifest_digest}"
        skopeo_run("copy", "-q", "--src-tls-verify=false", source, f"oci:{tmp_path / 'out'}:x")
        stored = f"{upstream.host}/proxied/by-digest@{layout.manifest_digest}"
        assert store_id(root, stored) == layout.config_digest
        assert kept(root, layout.config_digest)[1] == layout.manifest
        # (a digest is kept forever: asked again, the upstream is not)
        counted = upstream.requests()
        status, headers, body = get(s, f"/v2/proxied/by-digest/manifests/{layout.manifest_digest}")
        assert (status, body) == (200, layout.manifest)
        assert headers["docker-content-digest"] == layout.manifest_digest
        assert upstream.requests() == counted


def test_an_upstream_error_reaches_the_client(upstream: Upstream, tmp_path: Path) -> None:
    layout = random_layout(tmp_path / "layout", "errors")
    upstream.push(layout, "proxied/errors:1")
    root = tmp_path / "store"
    with started_serve(root, "--proxy", f"http://{upstream.host}", "--proxy-ttl", PROXY_TTL) as s:
        before = upstream.requests()
        status, _, body = get(s, "/v2/proxied/errors/manifests/nope")
        assert status == 404, body
        (entry,) = json.loads(body)["errors"]
        assert entry["code"] == "MANIFEST_UNKNOWN", entry
        asked = upstream.requests()[len(before) :]
        assert "/v2/proxied/errors/manifests/nope" in asked, asked
        # A client says what the registry said.
        proc = skopeo_run(
            "inspect", "--raw", "--tls-verify=false", f"docker://{s.host}/proxied/errors:nope",
            check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "manifest unknown" in proc.stderr.lower(), proc.stderr
        # And the store has nothing of it.
        assert store_names(root) == set()


# -- 6. the clients' mirror configurations --------------------------------------------------


@dataclass
class Mirror:
    upstream: Upstream
    root: Path
    server: ServeProcess
    #: ``library/<name>:1`` upstream: what ``docker.io/library/<name>:1`` is for a client
    #: whose mirror is the server.
    layouts: dict[str, Layout]

    def pulled(self, name: str) -> None:
        """``name`` came from the upstream through the proxy into the store."""
        layout = self.layouts[name]
        stored = f"{self.upstream.host}/library/{name}:1"
        assert stored in store_names(self.root)
        assert store_id(self.root, stored) == layout.config_digest
        asked = self.upstream.requests()
        assert f"/v2/library/{name}/manifests/1" in asked, asked


MIRRORED = ("mirror-ctr", "mirror-podman", "mirror-docker")


@pytest.fixture(scope="module")
def mirror(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    work = tmp_path_factory.mktemp("mirror")
    layouts = {}
    for name in MIRRORED:
        layouts[name] = random_layout(work / name, name)
        upstream.push(layouts[name], f"library/{name}:1")
    root = work / "store"
    with started_serve(
        root, "--proxy", f"http://{upstream.host}", "--proxy-ttl", PROXY_TTL
    ) as server:
        yield Mirror(upstream, root, server, layouts)


def test_containerd_hosts_toml_mirror(mirror: Mirror, containerd: Containerd) -> None:
    hosts = containerd.directory / "hosts.d"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        f'[host."http://{mirror.server.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    ref = "docker.io/library/mirror-ctr:1"
    containerd.pull("--hosts-dir", hosts, ref)
    manifest_digest, config_digest = containerd.image(ref)
    layout = mirror.layouts["mirror-ctr"]
    assert (manifest_digest, config_digest) == (layout.manifest_digest, layout.config_digest)
    mirror.pulled("mirror-ctr")


def test_podman_registries_conf_mirror(mirror: Mirror, tmp_path: Path) -> None:
    conf = (
        NO_SEARCH + '\n[[registry]]\nlocation = "docker.io"\n\n'
        f'[[registry.mirror]]\nlocation = "{mirror.server.host}"\ninsecure = true\n'
    )
    with podman(tmp_path / "podman", conf) as p:
        image_id = p.pull("docker.io/library/mirror-podman:1")
    assert image_id == mirror.layouts["mirror-podman"].config_digest
    mirror.pulled("mirror-podman")


def test_docker_registry_mirrors(mirror: Mirror) -> None:
    with started_engine(["--registry-mirror", mirror.server.url]) as engine:
        info = json.loads(engine.run("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout)
        assert info == [f"{mirror.server.url}/"]
        engine.run("pull", "-q", "mirror-docker:1")
        image_id = engine.image_id("mirror-docker:1")
    assert image_id == mirror.layouts["mirror-docker"].config_digest
    mirror.pulled("mirror-docker")
