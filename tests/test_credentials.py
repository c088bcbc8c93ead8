"""Registry credentials: Docker's config.json and podman's auth.json as those tools
write them (the real ``docker`` and ``skopeo`` where they are installed), credential
helpers speaking the real protocol, and what is written back."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool

from ocistore.errors import InvalidInput, OcistoreError
from ocistore.registry.credentials import (
    INDEX_SERVER,
    Credential,
    CredentialError,
    CredentialStore,
    registry_key,
)

HUB = INDEX_SERVER


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_json(path: Path, data: object, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent="\t"))
    path.chmod(mode)
    return path


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "\r" not in text and "Traceback" not in text
    assert all(c.isprintable() for c in text), text
    return text


# -- a credential helper speaking the real protocol -----------------------------------------

HELPER = """#!{python}
# A docker-credential-helpers program: get/store/erase/list, its keychain a JSON file.
import json, os, sys
state = {state!r}
try:
    with open(state) as f:
        db = json.load(f)
except FileNotFoundError:
    db = {{}}
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
with open(state + ".log", "a") as log:
    log.write(json.dumps([action, data]) + "\\n")
def save():
    with open(state, "w") as f:
        json.dump(db, f)
if action == "get":
    if data not in db:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = db[data]
    json.dump({{"ServerURL": data, "Username": user, "Secret": secret}}, sys.stdout)
elif action == "store":
    creds = json.loads(data)
    if not creds.get("ServerURL"):
        print("no credentials server URL")
        sys.exit(1)
    db[creds["ServerURL"]] = [creds["Username"], creds["Secret"]]
    save()
elif action == "erase":
    if data not in db:
        print("credentials not found in native keychain")
        sys.exit(1)
    del db[data]
    save()
elif action == "list":
    json.dump({{k: v[0] for k, v in db.items()}}, sys.stdout)
else:
    print("unknown credential action `" + action + "`")
    sys.exit(1)
"""


class Helper:
    """A ``docker-credential-NAME`` in ``bindir``, its keychain in ``state``."""

    def __init__(self, bindir: Path, name: str) -> None:
        self.name = name
        self.state = bindir.parent / f"{name}-keychain.json"
        self.path = bindir / f"docker-credential-{name}"
        bindir.mkdir(exist_ok=True)
        self.path.write_text(HELPER.format(python=sys.executable, state=str(self.state)))
        self.path.chmod(0o755)

    @property
    def keychain(self) -> dict[str, list[str]]:
        try:
            return dict(json.loads(self.state.read_text()))
        except FileNotFoundError:
            return {}

    def put(self, server: str, user: str, secret: str) -> None:
        db = self.keychain
        db[server] = [user, secret]
        self.state.write_text(json.dumps(db))

    @property
    def calls(self) -> list[list[str]]:
        log = Path(str(self.state) + ".log")
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


def script(bindir: Path, name: str, body: str) -> Path:
    """A misbehaving helper: a Python ``body``."""
    bindir.mkdir(exist_ok=True)
    path = bindir / f"docker-credential-{name}"
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return tmp_path / "docker" / "config.json"


def store_of(config: Path, bindir: Path, *auth_files: Path) -> CredentialStore:
    return CredentialStore(config, auth_files, str(bindir))


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "key"),
    [
        ("docker.io", HUB),
        ("index.docker.io", HUB),
        ("registry-1.docker.io", HUB),
        (HUB, HUB),
        ("https://index.docker.io/v2/", HUB),
        ("docker.io/library/busybox", HUB),
        ("quay.io", "quay.io"),
        ("https://quay.io/v1/", "quay.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("localhost:5000/ns/repo", "localhost:5000"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_registry_key_is_the_key_docker_uses(registry: str, key: str) -> None:
    assert registry_key(registry) == key


def test_credential_is_a_value_whose_repr_hides_secrets() -> None:
    assert Credential().anonymous
    assert not Credential(identity_token="t").anonymous
    assert not Credential("u").anonymous
    shown = repr(Credential("alice", "hunter2", "refresh-me"))
    assert "alice" in shown and "hunter2" not in shown and "refresh-me" not in shown
    assert Credential("a", "b") == ("a", "b", "")


# -- config.json as Docker writes it ---------------------------------------------------------


def test_docker_config_entries_in_every_spelling(config: Path, bindir: Path) -> None:
    write_json(
        config,
        {
            "auths": {
                HUB: {"auth": b64("hubuser:hub:pass:word")},
                "https://quay.io/v1/": {"auth": b64("quser:qpass")},
                "http://legacy.example:5000": {"auth": b64("luser:lpass")},
                "fields.example": {"username": "fuser", "password": "fpass"},
                "token.example": {"auth": b64("tuser:"), "identitytoken": "refresh"},
                "padded.example": {"auth": b64("puser:ppass\0\0")},
                "cased.example": {"Auth": b64("cuser:cpass")},
                "marker.example": {},
            },
            "psFormat": "table {{.ID}}",
        },
    )
    store = store_of(config, bindir)
    hub = Credential("hubuser", "hub:pass:word")
    assert store.get("docker.io") == hub
    assert store.get("index.docker.io") == hub
    assert store.get("registry-1.docker.io") == hub
    assert store.get("docker.io/library/busybox") == hub
    assert store.get("quay.io") == Credential("quser", "qpass")
    assert store.get("https://quay.io") == Credential("quser", "qpass")
    assert store.get("legacy.example:5000") == Credential("luser", "lpass")
    assert store.get("legacy.example") == Credential()  # another port is another registry
    assert store.get("fields.example") == Credential("fuser", "fpass")
    assert store.get("token.example") == Credential("tuser", "", "refresh")
    assert store.get("padded.example") == Credential("puser", "ppass")
    assert store.get("cased.example") == Credential("cuser", "cpass")
    assert store.get("marker.example").anonymous
    assert store.get("elsewhere.example").anonymous


def test_dockers_web_login_session_is_not_a_credential(config: Path, bindir: Path) -> None:
    session = {
        HUB + "access-token": {"auth": b64("hubuser:access.jwt")},
        HUB + "refresh-token": {"auth": b64("hubuser:refresh..client")},
    }
    write_json(config, {"auths": session})
    store = store_of(config, bindir)
    assert store.get("docker.io").anonymous
    write_json(config, {"auths": {**session, HUB: {"auth": b64("hubuser:pat")}}})
    assert store.get("docker.io") == Credential("hubuser", "pat")
    assert store.erase("docker.io") is True
    assert json.loads(config.read_text())["auths"] == session  # docker logout revokes it


def test_no_file_is_no_credentials(tmp_path: Path, bindir: Path) -> None:
    store = store_of(tmp_path / "nowhere" / "config.json", bindir, tmp_path / "auth.json")
    assert store.get("quay.io") == Credential()
    assert store.erase("quay.io") is False
    assert not (tmp_path / "nowhere").exists()


def test_an_empty_file_is_no_credentials_as_docker_takes_it(config: Path, bindir: Path) -> None:
    config.parent.mkdir()
    config.write_text("")
    assert store_of(config, bindir).get("quay.io").anonymous


class FakeRegistry(http.server.BaseHTTPRequestHandler):
    """Answers ``/v2/`` as a registry with basic authentication does (any password)."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    from registry_peer import served

    with served(FakeRegistry) as host:
        yield host


def docker(config_dir: Path, bindir: Path, *args: str, stdin: str = "") -> str:
    """The real docker CLI, with no daemon (``login`` then logs in from the client)."""
    exe = require_tool("docker")
    env = {
        "PATH": str(bindir),
        "HOME": str(config_dir.parent),
        "DOCKER_CONFIG": str(config_dir),
        "DOCKER_HOST": f"unix://{config_dir.parent}/no-daemon.sock",
    }
    proc = subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )
    return f"rc={proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_what_docker_login_writes_is_read_and_docker_reads_what_is_stored(
    config: Path, bindir: Path, registry: str
) -> None:
    out = docker(
        config.parent, bindir, "login", "-u", "alice", "--password-stdin", registry, stdin="s3cret"
    )
    assert "Login Succeeded" in out, out
    store = store_of(config, bindir)
    assert store.get(registry) == Credential("alice", "s3cret")
    assert json.loads(config.read_text())["auths"][registry] == {"auth": b64("alice:s3cret")}

    # docker logout edits the file without a daemon.
    out = docker(config.parent, bindir, "logout", registry)
    assert "rc=0" in out, out
    assert store.get(registry).anonymous

    # What ocistore writes, docker reads (it tells the stored user before it needs a daemon).
    assert store.store(registry, Credential("bob", "pw")) == str(config)
    assert store.store("docker.io", Credential("hubby", "pw")) == str(config)
    assert "[Username: bob]" in docker(config.parent, bindir, "login", registry)
    assert "[Username: hubby]" in docker(config.parent, bindir, "login")
    # And docker logout (the Hub by default) removes what ocistore wrote.
    docker(config.parent, bindir, "logout")
    assert store.get("docker.io").anonymous
    assert store.get(registry) == Credential("bob", "pw")


def test_docker_speaks_to_the_test_helper_as_ocistore_does(
    config: Path, bindir: Path, registry: str
) -> None:
    helper = Helper(bindir, "fake")
    write_json(config, {"credsStore": "fake"})
    out = docker(
        config.parent, bindir, "login", "-u", "alice", "--password-stdin", registry, stdin="pw1"
    )
    assert "Login Succeeded" in out, out
    assert helper.keychain == {registry: ["alice", "pw1"]}
    assert json.loads(config.read_text())["auths"] == {registry: {}}  # Docker's marker
    store = store_of(config, bindir)
    assert store.get(registry) == Credential("alice", "pw1")

    assert store.store(registry, Credential("carol", "pw2")) == "docker-credential-fake"
    assert "[Username: carol]" in docker(config.parent, bindir, "login", registry)
    assert store.erase(registry) is True
    assert helper.keychain == {}
    assert store.get(registry).anonymous


# -- podman's and skopeo's auth.json ---------------------------------------------------------


def test_auth_json_scopes_most_specific_first(tmp_path: Path, config: Path, bindir: Path) -> None:
    auth = write_json(
        tmp_path / "auth.json",
        {
            "auths": {
                "quay.io": {"auth": b64("host:h")},
                "quay.io/ns": {"auth": b64("ns:n")},
                "quay.io/ns/repo": {"auth": b64("repo:r")},
                "docker.io": {"auth": b64("hub:x")},
                "docker.io/library": {"auth": b64("lib:y")},
                "localhost:5000/only": {"auth": b64("only:o")},
            }
        },
    )
    store = store_of(config, bindir, auth)
    assert store.get("quay.io/ns/repo") == Credential("repo", "r")
    assert store.get("quay.io/ns/repo/deeper") == Credential("repo", "r")
    assert store.get("quay.io/ns/other") == Credential("ns", "n")
    assert store.get("quay.io/elsewhere") == Credential("host", "h")
    assert store.get("quay.io") == Credential("host", "h")
    assert store.get("docker.io/library/busybox") == Credential("lib", "y")
    assert store.get("index.docker.io/library/busybox") == Credential("lib", "y")
    assert store.get("docker.io/someone/app") == Credential("hub", "x")
    assert store.get(HUB) == Credential("hub", "x")
    # A scope holds for its repositories only, as containers/image has it.
    assert store.get("localhost:5000").anonymous
    assert store.get("localhost:5000/only/app") == Credential("only", "o")


def test_auth_files_come_first_in_order_then_config_json(
    tmp_path: Path, config: Path, bindir: Path
) -> None:
    first = write_json(tmp_path / "run" / "auth.json", {"auths": {"a.io": {"auth": b64("1:1")}}})
    second = write_json(
        tmp_path / "xdg" / "auth.json",
        {"auths": {"a.io": {"auth": b64("2:2")}, "b.io": {"auth": b64("2:2")}, "c.io": {}}},
    )
    write_json(
        config,
        {"auths": {k: {"auth": b64("3:3")} for k in ("a.io", "b.io", "c.io", "d.io")}},
    )
    store = store_of(config, bindir, first, second)
    assert store.get("a.io") == Credential("1", "1")
    assert store.get("b.io") == Credential("2", "2")
    assert store.get("c.io") == Credential("3", "3")  # an empty entry holds nothing
    assert store.get("d.io") == Credential("3", "3")


def test_what_skopeo_login_writes_is_read(tmp_path: Path, config: Path, registry: str) -> None:
    skopeo = require_tool("skopeo")
    auth = tmp_path / "auth.json"
    for user, where in (("repo-user", f"{registry}/ns/repo"), ("host-user", registry)):
        subprocess.run(
            [
                skopeo,
                "login",
                "--tls-verify=false",
                "--authfile",
                str(auth),
                "-u",
                user,
                "--password-stdin",
                where,
            ],
            input="pw",
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
    store = CredentialStore(config, [auth], "")
    assert store.get(f"{registry}/ns/repo") == Credential("repo-user", "pw")
    assert store.get(f"{registry}/ns/other") == Credential("host-user", "pw")
    assert store.get(registry) == Credential("host-user", "pw")


def test_from_environment_finds_the_files_as_docker_and_podman(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = CredentialStore.from_environment(
        {"HOME": str(home), "XDG_RUNTIME_DIR": "/run/user/7", "PATH": "/opt/bin:/usr/bin"}
    )
    assert store.docker_config == home / ".docker" / "config.json"
    assert store.auth_files == [
        Path("/run/user/7/containers/auth.json"),
        home / ".config" / "containers" / "auth.json",
    ]
    assert store.helper_path == "/opt/bin:/usr/bin"

    store = CredentialStore.from_environment(
        {"HOME": str(home), "DOCKER_CONFIG": "/etc/dc", "XDG_CONFIG_HOME": "/cfg"}
    )
    assert store.docker_config == Path("/etc/dc/config.json")
    assert store.auth_files == [
        Path(f"/run/containers/{os.getuid()}/auth.json"),
        Path("/cfg/containers/auth.json"),
    ]
    assert store.helper_path == os.defpath

    # podman reads $REGISTRY_AUTH_FILE alone, in place of its other files.
    store = CredentialStore.from_environment(
        {"HOME": str(home), "REGISTRY_AUTH_FILE": "/x/auth.json", "XDG_RUNTIME_DIR": "/r"}
    )
    assert store.auth_files == [Path("/x/auth.json")]
    assert store.docker_config == home / ".docker" / "config.json"


# -- credential helpers ----------------------------------------------------------------------


def test_cred_helpers_win_over_creds_store_and_the_file(config: Path, bindir: Path) -> None:
    ecr, keychain = Helper(bindir, "ecr"), Helper(bindir, "keychain")
    ecr.put("123.dkr.example", "AWS", "ecr-token")
    keychain.put(HUB, "<token>", "hub-refresh-token")
    keychain.put("quay.io", "quser", "qpass")
    write_json(
        config,
        {
            "auths": {
                "quay.io": {"auth": b64("stale:plaintext")},
                "plain.io": {"auth": b64("p:p")},
            },
            "credsStore": "keychain",
            "credHelpers": {"123.dkr.example": "ecr", "plain.io": ""},
        },
    )
    store = store_of(config, bindir)
    assert store.get("123.dkr.example") == Credential("AWS", "ecr-token")
    assert store.get("docker.io") == Credential(identity_token="hub-refresh-token")
    assert store.get("quay.io") == Credential("quser", "qpass")  # the helper alone answers
    assert store.get("plain.io") == Credential("p", "p")  # "": the file itself, as Docker
    assert store.get("nothing.io").anonymous  # "credentials not found": none
    assert ["get", HUB] in keychain.calls
    assert ["get", "nothing.io"] in keychain.calls
    assert store.where("123.dkr.example") == "docker-credential-ecr"
    assert store.where("docker.io") == "docker-credential-keychain"
    assert store.where("plain.io") == str(config)


def test_an_auth_json_cred_helper_is_asked_with_podmans_name(
    tmp_path: Path, config: Path, bindir: Path
) -> None:
    helper = Helper(bindir, "podmanish")
    helper.put("docker.io", "hubuser", "pw")
    auth = write_json(tmp_path / "auth.json", {"credHelpers": {"docker.io": "podmanish"}})
    assert store_of(config, bindir, auth).get("index.docker.io") == Credential("hubuser", "pw")
    assert helper.calls == [["get", "docker.io"]]


def test_store_and_erase_through_a_helper(config: Path, bindir: Path) -> None:
    helper = Helper(bindir, "secure")
    write_json(config, {"credsStore": "secure", "auths": {"quay.io": {"auth": b64("old:old")}}})
    store = store_of(config, bindir)
    assert store.where("quay.io") == "docker-credential-secure"
    assert store.store("quay.io", Credential("alice", "pw")) == "docker-credential-secure"
    assert store.store("docker.io", Credential("hubuser", identity_token="tok")) == (
        "docker-credential-secure"
    )
    assert helper.keychain == {"quay.io": ["alice", "pw"], HUB: ["<token>", "tok"]}
    stored = [json.loads(data) for action, data in helper.calls if action == "store"]
    assert stored[0] == {"ServerURL": "quay.io", "Username": "alice", "Secret": "pw"}
    # As Docker: the plaintext entry gives way to an empty one beside the helper.
    assert json.loads(config.read_text())["auths"] == {"quay.io": {}, HUB: {}}
    assert store.get("quay.io") == Credential("alice", "pw")
    assert store.get("docker.io") == Credential(identity_token="tok")

    assert store.erase("quay.io") is True
    assert ["erase", "quay.io"] in helper.calls
    assert helper.keychain == {HUB: ["<token>", "tok"]}
    assert json.loads(config.read_text())["auths"] == {HUB: {}}
    assert store.erase("quay.io") is False


def test_store_picks_the_helper_docker_28_would_for_a_new_config(
    config: Path, bindir: Path
) -> None:
    Helper(bindir, "secretservice")
    store = store_of(config, bindir)
    assert store.where("quay.io") == "docker-credential-secretservice"
    store.store("quay.io", Credential("u", "p"))
    assert json.loads(config.read_text()) == {
        "auths": {"quay.io": {}},
        "credsStore": "secretservice",
    }
    # With ``pass`` installed, Docker picks docker-credential-pass.
    other = config.parent.parent / "other" / "config.json"
    (bindir / "pass").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "pass").chmod(0o755)
    assert store_of(other, bindir).where("quay.io") == str(other)  # no docker-credential-pass
    Helper(bindir, "pass")
    assert store_of(other, bindir).where("quay.io") == "docker-credential-pass"
    # A file that already holds credentials keeps its way.
    write_json(other, {"auths": {"x.io": {"auth": b64("a:b")}}})
    assert store_of(other, bindir).where("quay.io") == str(other)


# -- writing config.json ---------------------------------------------------------------------


def test_store_writes_as_docker_and_keeps_everything_else(config: Path, bindir: Path) -> None:
    config.parent.mkdir()
    original = (
        '{"proxies": {"default": {"httpProxy": "http://p:3128"}}, "auths": {'
        '"https://quay.io": {"auth": "' + b64("q:q") + '", "email": "old@example"},'
        '"quay.io": {"auth": "' + b64("old:old") + '", "email": "x@example", "future": 1},'
        '"weird.io": {"auth": 12}}, "zeta": [1.50, 1e999, 123456789012345678901234567890],'
        '"alpha": "\\u00e9\\u2028", "HttpHeaders": {"X-Meta": "v"},'
        '"nested": {"b": null, "a": true}}'
    )
    config.write_text(original)
    config.chmod(0o640)
    store = store_of(config, bindir)
    assert store.store("quay.io", Credential("alice", "pa:ss")) == str(config)
    text = config.read_text()
    data = json.loads(text)
    assert list(data) == ["proxies", "auths", "zeta", "alpha", "HttpHeaders", "nested"]
    assert list(data["auths"]) == ["https://quay.io", "quay.io", "weird.io"]
    assert data["auths"]["quay.io"] == {"auth": b64("alice:pa:ss")}  # Docker drops the rest
    assert data["auths"]["https://quay.io"] == {"auth": b64("q:q"), "email": "old@example"}
    assert data["auths"]["weird.io"] == {"auth": 12}
    assert '"zeta": [\n\t\t1.50,\n\t\t1e999,\n\t\t123456789012345678901234567890\n\t]' in text
    assert data["alpha"] == "\u00e9\u2028" and "\u2028" not in text
    assert data["nested"] == {"b": None, "a": True}
    assert text.startswith('{\n\t"proxies": {\n\t\t"default": {')  # as Go's MarshalIndent
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert store.get("quay.io") == Credential("alice", "pa:ss")
    assert [p.name for p in config.parent.iterdir()] == ["config.json"]

    # A token is kept as Docker keeps one: the user in auth, the token beside it.
    store.store("docker.io", Credential("hubuser", identity_token="refresh"))
    entry = json.loads(config.read_text())["auths"][HUB]
    assert entry == {"auth": b64("hubuser:"), "identitytoken": "refresh"}
    store.store("token.io", Credential(identity_token="only"))
    assert json.loads(config.read_text())["auths"]["token.io"] == {"identitytoken": "only"}


def test_a_new_file_is_private(tmp_path: Path, bindir: Path) -> None:
    config = tmp_path / "a" / "b" / "config.json"
    old = os.umask(0o002)
    try:
        store_of(config, bindir).store("quay.io", Credential("u", "p"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.parent.parent.stat().st_mode) == 0o700
    assert config.read_text() == (
        '{\n\t"auths": {\n\t\t"quay.io": {\n\t\t\t"auth": "' + b64("u:p") + '"\n\t\t}\n\t}\n}'
    )


def test_store_of_the_same_credential_leaves_the_file_alone(config: Path, bindir: Path) -> None:
    store = store_of(config, bindir)
    store.store("quay.io", Credential("u", "p"))
    before = config.stat()
    store.store("quay.io", Credential("u", "p"))
    after = config.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_store_writes_through_a_symlink_to_its_target(tmp_path: Path, bindir: Path) -> None:
    real = write_json(tmp_path / "dotfiles" / "docker.json", {"auths": {}}, 0o644)
    link = tmp_path / "docker" / "config.json"
    link.parent.mkdir()
    link.symlink_to(real)
    store_of(link, bindir).store("quay.io", Credential("u", "p"))
    assert link.is_symlink()
    assert json.loads(real.read_text())["auths"]["quay.io"] == {"auth": b64("u:p")}
    assert stat.S_IMODE(real.stat().st_mode) == 0o644


def test_store_refuses_what_it_cannot_keep(config: Path, bindir: Path) -> None:
    store = store_of(config, bindir)
    for registry, credential in [
        ("quay.io", Credential()),
        ("quay.io/ns/repo", Credential("u", "p")),
        ("quay.io:tag", Credential("u", "p")),
        ("", Credential("u", "p")),
        ("evil\x1b[2J.io", Credential("u", "p")),
        ("quay.io", Credential("us:er", "p")),
    ]:
        with pytest.raises(InvalidInput) as e:
            store.store(registry, credential)
        assert "\x1b" not in one_line(e.value)
    assert not config.exists()
    with pytest.raises(InvalidInput):
        store.erase("quay.io/ns/repo")
    with pytest.raises(InvalidInput):
        store.get("quay.io/ns/repo:tag")


def test_erase_removes_every_spelling_in_config_json(config: Path, bindir: Path) -> None:
    write_json(
        config,
        {
            "auths": {
                "quay.io": {"auth": b64("a:a")},
                "https://quay.io/v1/": {"auth": b64("b:b")},
                "http://quay.io": {"auth": b64("c:c")},
                "quay.io/ns": {"auth": b64("d:d")},
                "quay.io:8443": {"auth": b64("e:e")},
                HUB: {"auth": b64("f:f")},
                "registry-1.docker.io": {"auth": b64("g:g")},
            },
            "credHelpers": {"other.io": "nothing"},
            "keep": "me",
        },
        0o644,
    )
    store = store_of(config, bindir)
    assert store.erase("quay.io") is True
    assert store.get("quay.io").anonymous
    assert store.erase("docker.io") is True  # Docker's own logout docker.io keeps the Hub's
    data = json.loads(config.read_text())
    assert data == {
        "auths": {"quay.io:8443": {"auth": b64("e:e")}},
        "credHelpers": {"other.io": "nothing"},
        "keep": "me",
    }
    assert stat.S_IMODE(config.stat().st_mode) == 0o644
    before = config.stat().st_mtime_ns
    assert store.erase("quay.io") is False
    assert config.stat().st_mtime_ns == before


def test_erase_leaves_auth_files_alone(tmp_path: Path, config: Path, bindir: Path) -> None:
    auth = write_json(tmp_path / "auth.json", {"auths": {"quay.io": {"auth": b64("p:p")}}})
    write_json(config, {"auths": {"quay.io": {"auth": b64("d:d")}}})
    before = auth.read_bytes()
    store = store_of(config, bindir, auth)
    assert store.erase("quay.io") is True
    assert auth.read_bytes() == before
    assert store.get("quay.io") == Credential("p", "p")  # podman logout removes that one
    assert store.where("quay.io") == str(config)


# -- errors: one line, naming the file or the helper, no secret --------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            '{"auths": {"quay.io": {"auth": "not base64!"}}}',
            "auths['quay.io'].auth is not valid base64",
        ),
        (
            '{"auths": {"quay.io": {"auth": "' + b64("nocolon") + '"}}}',
            "does not hold user:password",
        ),
        ('{"auths": {"quay.io": {"auth": "' + b64(":pw") + '"}}}', "does not hold user:password"),
        ('{"auths": {"quay.io": {"auth": 7}}}', "auths['quay.io'].auth is not a string"),
        ('{"auths": {"quay.io": "x"}}', "auths['quay.io'] is not an object"),
        ('{"auths": ["quay.io"]}', "auths is not an object"),
        ('{"auths": {"quay.io": {"auth": "x"}', "not valid JSON"),
        ('{"auths": NaN}', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"credsStore": "../../bin/sh"}', "credsStore '../../bin/sh' is not a credential helper"),
        ('{"credHelpers": {"quay.io": 3}}', "credHelpers['quay.io'] is not a string"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_malformed_file_is_one_line_naming_it(
    config: Path, bindir: Path, content: str | bytes, problem: str
) -> None:
    config.parent.mkdir()
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    with pytest.raises(InvalidInput) as e:
        store_of(config, bindir).get("quay.io")
    text = one_line(e.value)
    assert text.startswith(f"credentials for quay.io: {config}: "), text
    assert problem in text
    store = store_of(config, bindir)
    if "auths['quay.io']" in text:
        # A login replaces a broken entry of its own registry.
        store.store("quay.io", Credential("u", "p"))
        assert store.get("quay.io") == Credential("u", "p")
    else:
        # A file is never written over what could not be read.
        before = config.read_bytes()
        with pytest.raises(InvalidInput):
            store.store("quay.io", Credential("u", "p"))
        assert config.read_bytes() == before


def test_another_registrys_bad_entry_does_not_matter(config: Path, bindir: Path) -> None:
    write_json(config, {"auths": {"bad.io": {"auth": "%%%"}, "good.io": {"auth": b64("u:p")}}})
    assert store_of(config, bindir).get("good.io") == Credential("u", "p")


def test_names_from_a_file_are_escaped(config: Path, bindir: Path) -> None:
    # Docker takes any key of the host (another namespace's last), so this one is read.
    write_json(config, {"auths": {"quay.io/\x1b[31mred\u202e": {"auth": "!"}}})
    with pytest.raises(InvalidInput) as e:
        store_of(config, bindir).get("quay.io")
    assert "auths['quay.io/\\x1b[31mred\\u202e'].auth is not valid base64" in one_line(e.value)
    write_json(config, {"credsStore": "ev\x1bil"})
    with pytest.raises(InvalidInput) as e:
        store_of(config, bindir).get("quay.io")
    assert "ev\\x1bil" in one_line(e.value)


def test_an_unreadable_file_is_one_line(tmp_path: Path, bindir: Path) -> None:
    (tmp_path / "dir" / "config.json").mkdir(parents=True)
    with pytest.raises(CredentialError) as e:
        store_of(tmp_path / "dir" / "config.json", bindir).get("quay.io")
    assert "not a regular file" in one_line(e.value)


def test_a_missing_helper_is_one_line_naming_it(config: Path, bindir: Path) -> None:
    write_json(config, {"credsStore": "osxkeychain"})
    store = store_of(config, bindir)
    for call in (
        lambda: store.get("quay.io"),
        lambda: store.store("quay.io", Credential("u", "secret")),
    ):
        with pytest.raises(CredentialError) as e:
            call()
        text = one_line(e.value)
        assert "docker-credential-osxkeychain" in text and "quay.io" in text
        assert str(config) in text and "secret" not in text
    # A helper on a relative PATH entry is not found (Go's exec.LookPath refuses it too).
    Helper(bindir, "osxkeychain")
    with contextlib.chdir(bindir.parent), pytest.raises(CredentialError):
        CredentialStore(config, (), "bin").get("quay.io")
    assert CredentialStore(config, (), str(bindir)).get("quay.io").anonymous


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "print('Cannot autolaunch D-Bus without X11 $DISPLAY\\nsecond line'); sys.exit(1)",
            "failed to get the credentials for quay.io: exit status 1: Cannot autolaunch D-Bus",
        ),
        (
            "sys.stderr.write('gpg: decryption failed: \\x1b[31mNo secret key\\n'); sys.exit(2)",
            "exit status 2: gpg: decryption failed: \\x1b[31mNo secret key",
        ),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by signal 9"),
        ("print('<html>not json</html>')", "answered what is not a credential for quay.io"),
        ('print(\'["a", "b"]\')', "answered what is not a credential"),
        ('print(\'{"Username": 1, "Secret": "topsecret"}\')', "answered what is not a credential"),
        ("sys.stdout.write('x' * (2 << 20))", "answered more than 1048576 bytes"),
        ("time.sleep(30)", "no answer within 0.5 s"),
    ],
)
def test_a_failing_helper_is_one_line_naming_it(
    config: Path, bindir: Path, body: str, problem: str
) -> None:
    script(bindir, "broken", body)
    write_json(config, {"credsStore": "broken"})
    store = store_of(config, bindir)
    # Only the helper that never answers meets the time allowed: the others answer at
    # once however loaded the machine, and are given the default.
    if "sleep" in body:
        store.helper_timeout = 0.5
    with pytest.raises(CredentialError) as e:
        store.get("quay.io")
    text = one_line(e.value)
    assert "credential helper docker-credential-broken" in text
    assert problem in text, text
    assert "topsecret" not in text and "second line" not in text


def test_a_helper_that_leaves_a_child_holding_its_pipes_is_not_waited_for(
    config: Path, bindir: Path
) -> None:
    # It answers and exits; a daemon it started (as pass starts gpg-agent) keeps stderr,
    # writing to it until no one reads it any more (then it ends: nothing outlives the
    # test), or for far longer than the time allowed, which waiting for it would meet.
    script(
        bindir,
        "forks",
        "import os, json\n"
        "if os.fork() == 0:\n"
        "    os.close(1)\n"
        "    for _ in range(1200):\n"
        "        time.sleep(0.1)\n"
        "        try:\n"
        "            os.write(2, b'.')\n"
        "        except OSError:\n"
        "            break\n"
        "    os._exit(0)\n"
        "print(json.dumps({'Username': 'u', 'Secret': 's'}))",
    )
    write_json(config, {"credsStore": "forks"})
    store = store_of(config, bindir)
    store.helper_timeout = 60
    assert store.get("quay.io") == Credential("u", "s")


def test_a_helper_that_fails_to_store_is_one_line_without_the_secret(
    config: Path, bindir: Path
) -> None:
    # It even repeats what it was given: the secret is not told.
    script(bindir, "ro", "print('store refused: ' + sys.stdin.read()); sys.exit(1)")
    write_json(config, {"credHelpers": {"quay.io": "ro"}, "auths": {"quay.io": {}}})
    before = config.read_bytes()
    with pytest.raises(CredentialError) as e:
        store_of(config, bindir).store("quay.io", Credential("alice", "topsecret"))
    text = one_line(e.value)
    assert "docker-credential-ro failed to store the credentials for quay.io" in text
    assert "store refused" in text and "topsecret" not in text
    assert config.read_bytes() == before


def test_every_error_is_an_ocistore_error() -> None:
    assert issubclass(CredentialError, OcistoreError)


def test_the_helper_used_here_is_found_like_docker_finds_it(bindir: Path) -> None:
    # The test helper itself answers the protocol (a sanity check of the fixture).
    helper = Helper(bindir, "check")

    def run(*args: str, i: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([helper.path, *args], input=i, capture_output=True, text=True)

    assert run("get", i="x.io").stdout.strip() == "credentials not found in native keychain"
    assert run("store", i='{"ServerURL":"x.io","Username":"u","Secret":"s"}').returncode == 0
    assert json.loads(run("get", i="x.io").stdout) == {
        "ServerURL": "x.io",
        "Username": "u",
        "Secret": "s",
    }
    assert shutil.which("docker-credential-check", path=str(bindir)) == str(helper.path)
