"""pull, push, login, logout, copy, manifest, tags and inspect --remote against the real
registry (Debian's docker-registry, Distribution 2.8, on 127.0.0.1) and the real clients
on the other side: skopeo, docker (the engine of tests/docker_engine.py) and podman.

Every test works in repositories of its own; each side's image IDs and digests are
compared with the peer's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from registry_peer import RegistryServer, served
from test_oci_layout import Layout, with_platform
from util import make_tar, ocistore_cli, snapshot

from ocistore.spec.platform import host_platform

Make = Callable[..., RegistryServer]
pytestmark = pytest.mark.usefixtures("no_leftovers")


class Ocistore:
    """The command on a store of its own, in the test's environment."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def __call__(
        self, *args: str | Path, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return ocistore_cli("--root", self.root, *args, check=check, env=self.env, input=input)

    def image_id(self, name: str) -> str:
        return self("inspect", "-f", "{{.Id}}", name).stdout.strip()

    def repo_digests(self, name: str) -> list[str]:
        out = self("inspect", "-f", "{{json .RepoDigests}}", name).stdout
        return list(json.loads(out))


@pytest.fixture
def oc(tmp_path: Path, env: dict[str, str]) -> Ocistore:
    return Ocistore(tmp_path / "store", env)


@pytest.fixture
def oc2(tmp_path: Path, env: dict[str, str]) -> Ocistore:
    """A second store, to pull into what the first pushed."""
    return Ocistore(tmp_path / "store2", env)


def skopeo_run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    skopeo = require_tool("skopeo")
    proc = subprocess.run(
        [skopeo, *(str(a) for a in args)], capture_output=True, text=True, timeout=300, env=env
    )
    if proc.returncode != 0:
        pytest.fail(f"skopeo {args} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


def sample_layout(tmp_path: Path, name: str = "app", how: str = "gzip") -> tuple[Path, Any]:
    """An OCI layout of a three-layer image tagged ``name``."""
    lay = Layout(tmp_path / f"layout-{name}")
    built = lay.image(
        [
            {"etc/os-release": b"ID=test\n", "bin/sh": b"#!/bin/true\n"},
            {f"srv/{name}/data": os.urandom(64 << 10)},
            {"etc/motd": f"hello from {name}\n".encode()},
        ],
        how=how,
        arch=host_platform().architecture,
    )
    lay.tag(built.desc, "1")
    return lay.write(), built


def loaded(oc: Ocistore, tmp_path: Path, ref: str, how: str = "gzip") -> str:
    """Load the sample image into ``oc``'s store and tag it ``ref``: its ID."""
    layout, built = sample_layout(tmp_path, ref.replace("/", "-").replace(":", "-"), how)
    oc("load", "-q", "-i", layout)
    oc("tag", built.id, ref)
    return str(built.id)


# -- push, and the peers pull ------------------------------------------------------------


def test_push_then_skopeo_reads_the_same_manifest_and_image(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    ref = f"{registry.host}/push/skopeo:1"
    image_id = loaded(oc, tmp_path, ref)
    out = oc("push", ref).stdout.splitlines()
    assert out[0] == f"The push refers to repository [{registry.host}/push/skopeo]"
    assert sum(line.endswith(": Pushed") for line in out) == 3
    tag, _, rest = out[-1].partition(": digest: ")
    digest, _, size = rest.partition(" size: ")
    assert tag == "1"
    raw = skopeo_run("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digest
    assert int(size) == len(raw.encode())
    # The kept manifest went as it was: the digest is the OCI load's manifest's.
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    info = json.loads(skopeo_run("inspect", "--tls-verify=false", f"docker://{ref}"))
    assert info["Digest"] == digest
    config = json.loads(
        skopeo_run("inspect", "--config", "--raw", "--tls-verify=false", f"docker://{ref}")
    )
    assert config["rootfs"]["type"] == "layers"
    # skopeo copies it out; ocistore loads that and finds the same image.
    skopeo_run(
        "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'out'}:x"
    )
    other = Ocistore(tmp_path / "other", oc.env)
    other("load", "-q", "-i", tmp_path / "out")
    assert other("images", "-q", "--no-trunc").stdout.split() == [image_id]
    # And the store recorded what it pushed.
    assert oc.repo_digests(ref) == [f"{registry.host}/push/skopeo@{digest}"]
    assert oc.image_id(f"{registry.host}/push/skopeo@{digest}") == image_id


def test_push_then_docker_and_podman_pull_the_same_image(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path, docker_engine: Any
) -> None:
    ref = f"{registry.host}/push/peers:1"
    image_id = loaded(oc, tmp_path, ref)
    digest = oc("push", "-q", ref).stdout.strip()
    assert digest == ref
    docker_engine.run("pull", "-q", ref)
    assert docker_engine.image_id(ref) == image_id
    repo_digests = json.loads(
        docker_engine.run("image", "inspect", "-f", "{{json .RepoDigests}}", ref).stdout
    )
    assert repo_digests == oc.repo_digests(ref)
    proc = podman_run(tmp_path, oc.env, "pull", "-q", "--tls-verify=false", ref)
    assert "sha256:" + proc.stdout.strip().splitlines()[-1] == image_id


def podman_run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """podman with a store of its own (its run root must be a short path: under /tmp)."""
    podman = require_tool("podman")
    with tempfile.TemporaryDirectory(prefix="ocistore-podman-", dir="/tmp") as run:
        cmd = [
            podman,
            "--root",
            str(tmp_path / "podman"),
            "--runroot",
            run,
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ]
        # (podman insists that a DOCKER_CONFIG it is given holds a config.json)
        env = {k: v for k, v in env.items() if k != "DOCKER_CONFIG"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_plain_layer_is_pushed_compressed_once(
    registry: RegistryServer,
    oc: Ocistore,
    tmp_path: Path,
    docker_engine: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(make_tar({"etc/plain": b"plain layer\n" * 1000}))
    first = f"{registry.host}/plain/one:1"
    image_id = oc("import", "-q", rootfs, first).stdout.strip()
    out = oc("push", first).stdout.splitlines()
    assert out[1].endswith(": Pushed")
    manifest = json.loads(oc("manifest", first).stdout)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    layer = manifest["layers"][0]
    assert layer["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    # The remembered blob: another repository of the registry mounts it, nothing compressed
    # or uploaded again, and the manifest is the same bytes.
    second = f"{registry.host}/plain/two:1"
    oc("tag", first, second)
    from util import run_main

    from ocistore.registry import push

    def no_compression(*args: object) -> None:
        raise AssertionError("the layer was compressed again")

    monkeypatch.setattr(push, "_compress", no_compression)
    monkeypatch.setenv("DOCKER_CONFIG", oc.env["DOCKER_CONFIG"])
    code, stdout, err = run_main(oc.root, capsys, "push", second)
    assert (code, err) == (0, "")
    out2 = stdout.splitlines()
    assert out2[1] == f"{out[1].split(':')[0]}: Mounted from plain/one"
    assert out2[-1].split(": digest: ")[1] == out[-1].split(": digest: ")[1]
    assert list((oc.root / "tmp").iterdir()) == []
    docker_engine.run("pull", "-q", second)
    assert docker_engine.image_id(second) == image_id


def test_a_push_of_what_the_registry_has_uploads_nothing(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    ref = f"{registry.host}/push/again:1"
    loaded(oc, tmp_path, ref)
    first = oc("push", ref).stdout.splitlines()
    again = oc("push", ref).stdout.splitlines()
    assert sum(line.endswith(": Layer already exists") for line in again) == 3
    assert again[-1] == first[-1]


# -- the peers push, ocistore pulls ------------------------------------------------------


def test_pull_what_skopeo_pushed(registry: RegistryServer, oc: Ocistore, tmp_path: Path) -> None:
    layout, built = sample_layout(tmp_path, "skopeo-push")
    ref = f"{registry.host}/pull/skopeo:1"
    skopeo_run("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{ref}")
    raw = skopeo_run("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    out = oc("pull", ref).stdout.splitlines()
    assert out == [
        "1: Pulling from pull/skopeo",
        f"Digest: {digest}",
        f"Status: Downloaded newer image for {ref}",
        ref,
    ]
    assert oc.image_id(ref) == built.id
    assert oc.repo_digests(ref) == [f"{registry.host}/pull/skopeo@{digest}"]
    digests = oc("images", "--digests", "--format", "{{.Digest}}").stdout.split()
    assert digests == [digest]
    # Again: nothing new.
    again = oc("pull", ref).stdout.splitlines()
    assert again[2] == f"Status: Image is up to date for {ref}"
    # By digest, into another store: only the digest reference.
    other = Ocistore(tmp_path / "by-digest", oc.env)
    other("pull", "-q", f"{registry.host}/pull/skopeo@{digest}")
    listed = other("images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}")
    assert listed.stdout.split() == [
        f"{registry.host}/pull/skopeo",
        "<none>",
        digest,
    ]
    # The kept manifest makes an OCI save give the registry's manifest again.
    oc("save", "--format", "oci", "-o", tmp_path / "saved", ref)
    saved = json.loads((tmp_path / "saved" / "index.json").read_text())
    assert saved["manifests"][0]["digest"] == digest


def test_pull_what_docker_pushed(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path, docker_engine: Any, docker_images: Any
) -> None:
    ref = f"{registry.host}/pull/docker:1"
    docker_engine.run("tag", docker_images.child, ref)
    pushed = docker_engine.run("push", ref).stdout
    digest = next(
        line.split("digest: ")[1].split()[0] for line in pushed.splitlines() if "digest:" in line
    )
    oc("pull", "-q", ref)
    assert oc.image_id(ref) == docker_engine.image_id(ref)
    assert oc.repo_digests(ref) == [f"{registry.host}/pull/docker@{digest}"]
    # What Docker says of the image, ocistore says too.
    ours = json.loads(oc("inspect", ref).stdout)[0]
    theirs = json.loads(docker_engine.run("image", "inspect", ref).stdout)[0]
    for key in ("Id", "Config", "RootFS", "Architecture", "Os", "Created", "Size"):
        assert ours[key] == theirs[key], key


def test_pull_a_multi_platform_index(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    lay = Layout(tmp_path / "multi")
    built = {}
    descs = []
    host = str(host_platform())
    # (this machine's not first: --all-platforms must still tag it)
    platforms = list(dict.fromkeys(["linux/s390x", host, "linux/arm64/v8", "linux/arm/v7"]))
    for p in platforms:
        parts = p.split("/")
        b = lay.image(
            [{"which": p.encode()}],
            arch=parts[1],
            variant=parts[2] if len(parts) > 2 else "",
        )
        built[p] = b
        descs.append(with_platform(b.desc, p))
    lay.tag(lay.index(descs), "multi")
    lay.write()
    ref = f"{registry.host}/pull/multi:1"
    skopeo_run(
        "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{lay.root}:multi", f"docker://{ref}"
    )
    oc("pull", "-q", ref)
    assert oc.image_id(ref) == built[host].id
    # The digest recorded is the index's (as the registry has it), as Docker records it.
    served = skopeo_run("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").encode()
    assert json.loads(served)["manifests"]
    index_digest = "sha256:" + hashlib.sha256(served).hexdigest()
    assert oc.repo_digests(ref) == [f"{registry.host}/pull/multi@{index_digest}"]
    arm = Ocistore(tmp_path / "arm", oc.env)
    arm("pull", "-q", "--platform", "linux/arm/v7", ref)
    assert arm.image_id(ref) == built["linux/arm/v7"].id
    every = Ocistore(tmp_path / "every", oc.env)
    every("pull", "-q", "--all-platforms", ref)
    ids = set(every("images", "-a", "-q", "--no-trunc").stdout.split())
    assert ids == {b.id for b in built.values()}
    assert every.image_id(ref) == built[host].id
    missing = Ocistore(tmp_path / "missing", oc.env)
    proc = missing("pull", "--platform", "linux/riscv64", ref, check=False)
    assert proc.returncode == 1
    assert "no image for platform linux/riscv64" in proc.stderr
    assert "linux/s390x" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_pull_errors_name_the_registry_and_leave_the_store_as_it_was(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    ref = f"{registry.host}/pull/errors:1"
    loaded(oc, tmp_path, ref)
    oc("push", "-q", ref)
    before = snapshot(oc.root)
    proc = oc("pull", f"{registry.host}/pull/errors:nope", check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"ocistore: {registry.host}/pull/errors:nope: MANIFEST_UNKNOWN: manifest unknown "
        "(HTTP 404)\n"
    )
    proc = oc("pull", f"{registry.host}/pull/nothing-here:1", check=False)
    assert proc.returncode == 1
    assert "NAME_UNKNOWN" in proc.stderr or "MANIFEST_UNKNOWN" in proc.stderr
    bogus = "sha256:" + "0" * 64
    proc = oc("pull", f"{registry.host}/pull/errors@{bogus}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"ocistore: {registry.host}/pull/errors@{bogus}: ")
    assert snapshot(oc.root) == before
    # A layer that is not what its digest says, as a registry could serve it: refused, the
    # store unchanged. (Distribution checks digests on upload: damage it on its disk.)
    manifest = json.loads(oc("manifest", ref).stdout)
    layer = manifest["layers"][1]["digest"].split(":")[1]
    data = registry.data_dir / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    fresh = Ocistore(tmp_path / "fresh", oc.env)
    fresh("images")
    before = snapshot(fresh.root)
    proc = fresh("pull", ref, check=False)
    assert proc.returncode == 1
    assert f"sha256:{layer}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(fresh.root) == before


def test_manifest_tags_and_remote_inspect_agree_with_skopeo(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    ref = f"{registry.host}/remote/inspect"
    loaded(oc, tmp_path, f"{ref}:1")
    for tag in ("1", "2", "latest", "v3"):
        oc("tag", f"{ref}:1", f"{ref}:{tag}")
        oc("push", "-q", f"{ref}:{tag}")
    assert sorted(oc("tags", ref).stdout.split()) == ["1", "2", "latest", "v3"]
    assert (
        oc("manifest", f"{ref}:2").stdout.encode()
        == skopeo_run("inspect", "--raw", "--tls-verify=false", f"docker://{ref}:2").encode()
    )
    ours = json.loads(oc("inspect", "--remote", f"{ref}:2").stdout)
    theirs = json.loads(skopeo_run("inspect", "--tls-verify=false", f"docker://{ref}:2"))
    assert ours == theirs
    proc = oc("tags", f"{ref}:1", check=False)
    assert proc.returncode == 1


def test_tags_follow_the_pages(tmp_path: Path, env: dict[str, str]) -> None:
    """Distribution 2.8's filesystem driver answers every tag at once (it ignores ``n``):
    the pages are served here, by the distribution spec (``Link: <…?n=3&last=…>;
    rel="next"``), by a server of the test's own on 127.0.0.1."""
    import http.server
    import urllib.parse

    tags = [f"t{i:02d}" for i in range(7)]
    asked: list[str] = []

    class Pages(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            asked.append(self.path)
            if url.path == "/v2/":
                body, link = b"{}", ""
            else:
                q = dict(urllib.parse.parse_qsl(url.query))
                n = min(int(q.get("n", "100")), 3)  # a server may give fewer than asked
                rest = [t for t in tags if t > q.get("last", "")]
                page = rest[:n]
                body = json.dumps({"name": "lab/pages", "tags": page}).encode()
                link = (
                    f'</v2/lab/pages/tags/list?n=3&last={page[-1]}>; rel="next"'
                    if len(rest) > n
                    else ""
                )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if link:
                self.send_header("Link", link)
            self.end_headers()
            self.wfile.write(body)

    with served(Pages) as host:
        out = Ocistore(tmp_path / "store", env)("tags", f"{host}/lab/pages").stdout
    assert out.split() == tags
    assert [a for a in asked if "/tags/list" in a] == [
        "/v2/lab/pages/tags/list?n=1000",
        "/v2/lab/pages/tags/list?n=3&last=t02",
        "/v2/lab/pages/tags/list?n=3&last=t05",
    ]


# -- authentication ---------------------------------------------------------------------


def test_htpasswd_login_push_pull_logout(
    registry_factory: Make, oc: Ocistore, oc2: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(auth="htpasswd")
    ref = f"{server.host}/basic/app:1"
    image_id = loaded(oc, tmp_path, ref)
    proc = oc("push", ref, check=False)
    assert proc.returncode == 1
    assert "UNAUTHORIZED" in proc.stderr
    proc = oc("login", "-u", "alice", "--password-stdin", server.host, input="nope\n", check=False)
    assert proc.returncode == 1
    assert server.host in proc.stderr
    assert not (Path(oc.env["DOCKER_CONFIG"]) / "config.json").exists()
    out = oc("login", "-u", "alice", "--password-stdin", server.host, input="wonderland\n")
    assert out.stdout == "Login Succeeded\n"
    config = json.loads((Path(oc.env["DOCKER_CONFIG"]) / "config.json").read_text())
    assert base64.b64decode(config["auths"][server.host]["auth"]) == b"alice:wonderland"
    assert (Path(oc.env["DOCKER_CONFIG"]) / "config.json").stat().st_mode & 0o077 == 0
    oc("push", "-q", ref)
    oc2("pull", "-q", ref)
    assert oc2.image_id(ref) == image_id
    # skopeo reads the same credential file (it looks in Docker's config too).
    skopeo_run(
        "inspect",
        "--tls-verify=false",
        f"docker://{ref}",
        env={**oc.env, "REGISTRY_AUTH_FILE": str(Path(oc.env["DOCKER_CONFIG"]) / "config.json")},
    )
    assert oc("logout", server.host).stdout == f"Removing login credentials for {server.host}\n"
    assert oc("logout", server.host).stdout == f"Not logged in to {server.host}\n"
    proc = oc2("pull", ref, check=False)
    assert proc.returncode == 1 and "UNAUTHORIZED" in proc.stderr
    # A credential given on the command line, for one command.
    oc2("pull", "-q", "--creds", "bob:builder", ref)


def test_token_auth_anonymous_pull_and_scoped_push(
    registry_factory: Make, oc: Ocistore, oc2: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(auth="token")
    tokens = server.token_server
    assert tokens is not None
    ref = f"{server.host}/lab/app:1"
    image_id = loaded(oc, tmp_path, ref)
    proc = oc("push", ref, check=False)
    assert proc.returncode == 1
    assert "UNAUTHORIZED" in proc.stderr or "DENIED" in proc.stderr
    oc("push", "-q", "--creds", "alice:wonderland", ref)
    # Anonymous pull: a token without a credential.
    oc2("pull", "-q", ref)
    assert oc2.image_id(ref) == image_id
    assert any(user is None and method == "GET" for method, _, user, _ in tokens.requests)
    # bob may push to bob/ only: elsewhere the token lacks push (insufficient_scope).
    oc("tag", ref, f"{server.host}/bob/app:1")
    oc("push", "-q", "--creds", "bob:builder", f"{server.host}/bob/app:1")
    oc("tag", ref, f"{server.host}/team/app:1")
    proc = oc("push", "--creds", "bob:builder", f"{server.host}/team/app:1", check=False)
    assert proc.returncode == 1
    assert f"{server.host}/team/app" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # One token per scope for a whole push: not one per request.
    before = len(tokens.requests)
    oc("tag", ref, f"{server.host}/lab/other:1")
    oc("push", "-q", "--creds", "alice:wonderland", f"{server.host}/lab/other:1")
    assert len(tokens.requests) - before <= 3


def test_token_login_stores_the_refresh_token_and_uses_it(
    registry_factory: Make, oc: Ocistore, oc2: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(auth="token")
    tokens = server.token_server
    assert tokens is not None
    oc("login", "-u", "alice", "--password-stdin", server.host, input="wonderland\n")
    config = json.loads((Path(oc.env["DOCKER_CONFIG"]) / "config.json").read_text())
    entry = config["auths"][server.host]
    assert entry["identitytoken"]
    assert b"wonderland" not in base64.b64decode(entry.get("auth", ""))
    ref = f"{server.host}/lab/refresh:1"
    loaded(oc, tmp_path, ref)
    oc("push", "-q", ref)
    grants = [g for _, _, _, g in tokens.requests]
    assert "refresh_token" in grants
    # The token server forgets its refresh tokens: the error says to log in again.
    tokens.revoke_all_refresh_tokens()
    proc = oc("push", ref, check=False)
    assert proc.returncode == 1
    assert "log in again" in proc.stderr


def test_token_server_answers_access_token_and_expired_tokens(
    registry_factory: Make, oc: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(auth="token")
    tokens = server.token_server
    assert tokens is not None
    ref = f"{server.host}/lab/keys:1"
    loaded(oc, tmp_path, ref)
    tokens.answer_key = "access_token"
    oc("push", "-q", "--creds", "alice:wonderland", ref)
    # A token the registry finds expired: refused, one line, nothing tagged in the registry.
    tokens.answer_key = "token"
    tokens.issue_expired = True
    oc("tag", ref, f"{server.host}/lab/expired:1")
    proc = oc("push", "--creds", "alice:wonderland", f"{server.host}/lab/expired:1", check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    tokens.issue_expired = False
    assert oc("tags", "--creds", "alice:wonderland", f"{server.host}/lab/keys").stdout.split() == [
        "1"
    ]
    proc = oc("tags", "--creds", "alice:wonderland", f"{server.host}/lab/expired", check=False)
    assert proc.returncode == 1


def test_credentials_from_a_helper_and_from_podmans_auth_file(
    registry_factory: Make, oc: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(auth="htpasswd")
    ref = f"{server.host}/lab/helper:1"
    loaded(oc, tmp_path, ref)
    # containers' auth.json, in $XDG_RUNTIME_DIR/containers, as podman login writes it.
    run = Path(oc.env["XDG_RUNTIME_DIR"]) / "containers"
    run.mkdir(parents=True)
    auth = base64.b64encode(b"alice:wonderland").decode()
    (run / "auth.json").write_text(json.dumps({"auths": {server.host: {"auth": auth}}}))
    oc("push", "-q", ref)
    (run / "auth.json").unlink()
    # A credential helper named by Docker's config (credHelpers).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-testhelper"
    helper.write_text(
        "#!/bin/sh\n"
        "read server\n"
        'if [ "$1" = get ]; then\n'
        '  printf \'{"ServerURL":"%s","Username":"bob","Secret":"builder"}\' "$server"\n'
        "else exit 1; fi\n"
    )
    helper.chmod(0o755)
    docker_config = Path(oc.env["DOCKER_CONFIG"])
    docker_config.mkdir(parents=True, exist_ok=True)
    (docker_config / "config.json").write_text(
        json.dumps({"credHelpers": {server.host: "testhelper"}})
    )
    helped = Ocistore(oc.root, {**oc.env, "PATH": f"{bindir}:{oc.env['PATH']}"})
    oc("tag", ref, f"{server.host}/lab/helper:2")
    helped("push", "-q", f"{server.host}/lab/helper:2")


# -- TLS ------------------------------------------------------------------------------------


def test_tls_with_the_registrys_ca(
    registry_factory: Make, oc: Ocistore, oc2: Ocistore, tmp_path: Path
) -> None:
    server = registry_factory(tls=True)
    assert server.ca_file is not None
    ref = f"{server.host}/tls/app:1"
    image_id = loaded(oc, tmp_path, ref)
    proc = oc("push", ref, check=False)
    assert proc.returncode == 1
    assert "certificate verify failed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(server.ca_file.read_bytes())
    oc("push", "-q", "--cert-dir", certs, ref)
    oc2("pull", "-q", "--tls-verify=false", ref)
    assert oc2.image_id(ref) == image_id
    # skopeo trusts the same directory.
    skopeo_run("inspect", "--cert-dir", certs, f"docker://{ref}")


def test_plain_http_rules() -> None:
    from ocistore.registry.transport import TLSSettings, Transport, is_loopback

    assert is_loopback("127.0.0.1:5000") and is_loopback("127.9.9.9") and is_loopback("localhost:1")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com:5000") and not is_loopback("10.0.0.1")
    assert not Transport().plain_http_allowed("registry.example.com")
    assert Transport(TLSSettings(verify=False)).plain_http_allowed("registry.example.com")
    assert Transport(TLSSettings(insecure=True)).plain_http_allowed("registry.example.com")
    assert Transport().plain_http_allowed("127.0.0.1:5000")


# -- copy -----------------------------------------------------------------------------------


def test_copy_between_transports(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path, docker_engine: Any
) -> None:
    layout, built = sample_layout(tmp_path, "copy")
    src = f"{registry.host}/copy/src:1"
    oc("copy", f"oci:{layout}:1", f"docker://{src}")
    assert oc("images", "-q").stdout == ""  # nothing left in the store
    assert list((oc.root / "tmp").iterdir()) == []
    docker_engine.run("pull", "-q", src)
    assert docker_engine.image_id(src) == built.id
    # Registry to registry: the same manifest, blobs mounted within one registry.
    dst = f"{registry.host}/copy/dst:2"
    out = oc("copy", f"docker://{src}", f"docker://{dst}").stdout
    assert "Mounted from copy/src" in out
    assert oc("manifest", src).stdout == oc("manifest", dst).stdout
    # Registry to archives and back.
    oc("copy", f"docker://{dst}", f"docker-archive:{tmp_path / 'app.tar'}:lab/app:2")
    with tarfile.open(tmp_path / "app.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["lab/app:2"]
    oc("copy", f"docker://{dst}", f"oci-archive:{tmp_path / 'app.oci.tar'}")
    skopeo_run("inspect", f"oci-archive:{tmp_path / 'app.oci.tar'}")
    # Into the store, and out of it.
    oc("copy", f"docker://{dst}", "ocistore:lab/copied:1")
    assert oc.image_id("lab/copied:1") == built.id
    oc("copy", "lab/copied:1", f"oci:{tmp_path / 'out'}:v1")
    info = json.loads(skopeo_run("inspect", f"oci:{tmp_path / 'out'}:v1"))
    assert info["Layers"] == built.layer_blobs
    proc = oc("copy", "nosuch:thing", f"oci:{tmp_path / 'x'}", check=False)
    assert proc.returncode == 1
    proc = oc("copy", f"oci:{tmp_path / 'missing'}", f"docker://{dst}", check=False)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1


def test_docker_login_and_ocistore_login_read_each_other(
    registry_factory: Make, oc: Ocistore, tmp_path: Path, docker_engine: Any
) -> None:
    """What `docker login` writes, ocistore uses; what ocistore login writes, docker
    push uses."""
    server = registry_factory(auth="htpasswd")
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    docker = docker_engine.env["DOCKER_CONFIG"]
    try:
        docker_engine.env["DOCKER_CONFIG"] = str(docker_config)
        docker_engine.run("login", "-u", "bob", "--password-stdin", server.host, input=b"builder\n")
        ref = f"{server.host}/lab/docker-login:1"
        loaded(oc, tmp_path, ref)
        by_docker = Ocistore(oc.root, {**oc.env, "DOCKER_CONFIG": str(docker_config)})
        by_docker("push", "-q", ref)
        # ocistore login into a config of its own; docker pushes with it.
        ours = tmp_path / "ours"
        oc_ours = Ocistore(oc.root, {**oc.env, "DOCKER_CONFIG": str(ours)})
        oc_ours("login", "-u", "alice", "--password-stdin", server.host, input="wonderland\n")
        docker_engine.env["DOCKER_CONFIG"] = str(ours)
        docker_engine.run("pull", "-q", ref)
        other = f"{server.host}/lab/docker-push:1"
        docker_engine.run("tag", ref, other)
        docker_engine.run("push", other)
        docker_engine.run("rmi", ref, other)
        assert oc_ours("tags", f"{server.host}/lab/docker-push").stdout.split() == ["1"]
    finally:
        docker_engine.env["DOCKER_CONFIG"] = docker


def test_plain_http_from_a_registry_not_on_loopback_is_refused_saying_so(
    registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry of the tests listens on 127.0.0.1 only: it is made to count as a
    remote host, as one answering plain HTTP on the network would."""
    from ocistore.registry import transport
    from ocistore.registry.transport import ConnectionFailed, TLSSettings, Transport

    monkeypatch.setattr(transport, "is_loopback", lambda host: False)
    with pytest.raises(ConnectionFailed) as e:
        Transport().base_url(registry.host)
    assert str(e.value) == (
        f"{registry.host}: the registry answered plain HTTP to an HTTPS request; to allow "
        "plain HTTP to it, give --tls-verify=false (or --insecure)"
    )
    assert Transport(TLSSettings(insecure=True)).base_url(registry.host) == registry.url


def test_the_library_pulls_and_pushes(registry: RegistryServer, tmp_path: Path) -> None:
    import ocistore

    layout, built = sample_layout(tmp_path, "library")
    with ocistore.open(tmp_path / "a") as store:
        ocistore.load(store, layout)
        ref = f"{registry.host}/library/app:1"
        store.tag(built.id, ref)
        digest = ocistore.push(store, ref)
    with ocistore.open(tmp_path / "b") as store, ocistore.Session() as session:
        (image,) = ocistore.pull(store, ref, session=session)
        assert image.id == built.id
        assert set(image.tags) == {
            ocistore.parse_reference(ref),
            ocistore.parse_reference(f"{registry.host}/library/app@{digest}"),
        }
        with pytest.raises(ocistore.RegistryError) as e:
            ocistore.pull(store, f"{registry.host}/library/app:2", session=session)
        assert e.value.code == "MANIFEST_UNKNOWN" and e.value.status == 404


def test_pull_and_push_show_progress_that_fits_the_terminal(
    registry: RegistryServer, tmp_path: Path
) -> None:
    from test_terminal import Terminal, check_fits, visible_lines

    layout, built = sample_layout(tmp_path, "terminal")
    root = tmp_path / "store"
    ref = f"{registry.host}/terminal/app:1"
    ocistore_cli("--root", root, "load", "-q", "-i", layout)
    ocistore_cli("--root", root, "tag", built.id, ref)
    for columns in (80, 40):
        term = Terminal(["--root", str(root), "push", ref], columns)
        assert term.finish() == 0, term.screen()
        lines = visible_lines(term.screen())
        check_fits([line for line in lines if _is_progress(line)], columns)
        assert lines[-1].startswith("1: digest: sha256:")
    assert ": Pushing [" in term.screen() or "Layer already exists" in term.screen()
    fresh = tmp_path / "fresh"
    term = Terminal(["--root", str(fresh), "pull", ref], 60)
    assert term.finish() == 0, term.screen()
    lines = visible_lines(term.screen())
    check_fits([line for line in lines if _is_progress(line)], 60)
    assert any(": Downloading" in line for line in lines)
    assert lines[-1] == ref
    # Not a terminal: no progress at all.
    quiet = ocistore_cli("--root", tmp_path / "quiet", "pull", ref)
    assert quiet.stderr == ""


def _is_progress(line: str) -> bool:
    """A line of the progress display (what it prints after is a result, which may wrap,
    as docker's does)."""
    return ": Pushing" in line or ": Downloading" in line or line.startswith("Total:")


def test_a_pulled_image_pushed_to_another_repository_is_mounted(
    registry: RegistryServer, oc: Ocistore, tmp_path: Path
) -> None:
    layout, _ = sample_layout(tmp_path, "mount")
    src = f"{registry.host}/mount/src:1"
    skopeo_run("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:1", f"docker://{src}")
    oc("pull", "-q", src)
    out = oc("push", src, f"{registry.host}/mount/dst:1").stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in out[1:-1]] == ["Mounted from mount/src"] * 3


def test_a_credential_given_goes_to_its_registry_only(oc: Ocistore) -> None:
    from ocistore.registry.credentials import Credential
    from ocistore.registry.session import Session

    alice = Credential("alice", "wonderland")
    with Session(None, given={"127.0.0.1:5000": alice}) as session:
        assert session.registry("127.0.0.1:5000").auth.credential == alice
        assert session.registry("127.0.0.1:5001").auth.credential.anonymous
    proc = oc(
        "copy", "--creds", "a:b", "docker://127.0.0.1:1/x:1", "docker://127.0.0.1:2/x:1",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == (
        "ocistore: --creds with two registries: give --src-creds and --dest-creds\n"
    )


def test_what_a_broken_registry_sends_is_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """Headers and redirects no registry should send, from a server of the test's own on
    127.0.0.1: each is one line on stderr, exit 1, never a traceback."""
    import http.server

    answers = {
        "/v2/a/manifests/1": (429, {"Retry-After": "\u00b2"}),
        "/v2/b/manifests/1": (200, {"Content-Length": "\u00b2"}),
        "/v2/c/manifests/1": (307, {"Location": "http://[::1/x"}),
        "/v2/d/manifests/1": (307, {"Location": "http://127.0.0.1:notaport/x"}),
        "/v2/e/manifests/1": (401, {"WWW-Authenticate": 'Bearer realm="https://SELF/token"'}),
    }

    class Broken(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            code, headers = answers.get(self.path, (200, {}))
            self.send_response(code)
            for k, v in headers.items():
                v = v.replace("SELF", f"127.0.0.1:{self.server.server_address[1]}")
                self.send_header(k, v.encode("utf-8").decode("latin-1"))
            if "Content-Length" not in headers:
                self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    with served(Broken) as host:
        oc = Ocistore(tmp_path / "store", env)
        for repo in "abcde":
            proc = oc("pull", "--retry-times", "1", f"{host}/{repo}:1", check=False)
            assert proc.returncode == 1, (repo, proc.stdout)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ocistore: "), (repo, proc.stderr)
