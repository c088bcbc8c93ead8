"""The OCI runtime ``config.json`` of an unpacked bundle, made from the image's config as
``umoci unpack`` makes it: ``runc spec``'s defaults (mounts, capabilities, masked paths,
namespaces), the image's entrypoint and command, environment, working directory and
user, its labels as annotations; for a rootless bundle a user namespace mapping the
caller to root, and no cgroup mount or network namespace (``runc spec --rootless``).

A user or group given by name is looked up in the rootfs' ``/etc/passwd`` and
``/etc/group``, read through the :class:`~.fsroot.Root` (a symlink there is resolved
inside the rootfs).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Final

from ..errors import InvalidInput
from ..spec.limits import MAX_SYMLINK_HOPS
from .fsroot import Root, clean_name

__all__ = ["runtime_config"]

OCI_VERSION: Final = "1.0.2"
_MAX_DB: Final = 4 << 20
_CAPABILITIES: Final = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_MASKED: Final = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
_READONLY: Final = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


def _mounts(rootless: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
            + ([] if rootless else ["gid=5"]),
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
    ]
    if rootless:
        mounts.append(
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            }
        )
        mounts.append(
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            }
        )
    return mounts


def read_file(root: Root, path: str, limit: int = _MAX_DB) -> bytes | None:
    """A file of the rootfs, symlinks resolved inside it (the last one too); ``None`` if
    it is not there or not a regular file."""
    parts = clean_name(path)
    hops = 0
    while parts:
        parent = root.walk(parts[:-1], what=path)
        if parent is None:
            return None
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError:
            try:
                target = os.readlink(parts[-1], dir_fd=parent)
            except OSError:
                return None
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            base = [] if target.startswith("/") else root.current
            parts = clean_name("/".join([*base, target])) or []
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit)
        finally:
            os.close(fd)
    return None


def _lookup(db: bytes | None, name: str, field: int) -> int | None:
    """The id of ``name`` in a passwd (``field`` 2) or group (``field`` 2) database."""
    if db is None:
        return None
    for line in db.decode("utf-8", "replace").splitlines():
        cols = line.split(":")
        if len(cols) > field and cols[0] == name and cols[field].isdigit():
            return int(cols[field])
    return None


def _user(root: Root, spec: str) -> dict[str, Any]:
    """The process user of an image's ``User`` (``name|uid[:group|gid]``)."""
    if not spec:
        return {"uid": 0, "gid": 0}
    user, _, group = spec.partition(":")
    passwd = read_file(root, "/etc/passwd")
    uid: int | None
    gid: int | None = None
    if user.isdigit():
        uid = int(user)
        for line in (passwd or b"").decode("utf-8", "replace").splitlines():
            cols = line.split(":")
            if len(cols) > 3 and cols[2] == user and cols[3].isdigit():
                gid = int(cols[3])
                break
    else:
        uid = _lookup(passwd, user, 2)
        if uid is None:
            raise InvalidInput(f"image user {spec!r}: no user {user!r} in the rootfs' /etc/passwd")
        for line in (passwd or b"").decode("utf-8", "replace").splitlines():
            cols = line.split(":")
            if len(cols) > 3 and cols[0] == user and cols[3].isdigit():
                gid = int(cols[3])
                break
    if group:
        gid = int(group) if group.isdigit() else _lookup(read_file(root, "/etc/group"), group, 2)
        if gid is None:
            raise InvalidInput(f"image user {spec!r}: no group {group!r} in the rootfs' /etc/group")
    return {"uid": uid, "gid": gid if gid is not None else 0}


def runtime_config(image_config: dict[str, Any], root: Root, *, rootless: bool) -> dict[str, Any]:
    """The bundle's ``config.json`` (see the module's text)."""
    config = image_config.get("config") or {}
    args = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    env = list(config.get("Env") or [])
    if not any(item.startswith("PATH=") for item in env):
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if not any(item.startswith("TERM=") for item in env):
        env.append("TERM=xterm")
    annotations = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    if image_config.get("author"):
        annotations["org.opencontainers.image.author"] = str(image_config["author"])
    if image_config.get("created"):
        annotations["org.opencontainers.image.created"] = str(image_config["created"])
    if config.get("StopSignal"):
        annotations["org.opencontainers.image.stopSignal"] = str(config["StopSignal"])
    annotations["org.opencontainers.image.os"] = str(image_config.get("os", ""))
    annotations["org.opencontainers.image.architecture"] = str(image_config.get("architecture", ""))
    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if not rootless:
        namespaces.insert(1, {"type": "network"})
    linux: dict[str, Any] = {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": namespaces,
        "maskedPaths": _MASKED,
        "readonlyPaths": _READONLY,
    }
    if rootless:
        namespaces.append({"type": "user"})
        linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
        linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
        del linux["resources"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": _user(root, str(config.get("User") or "")),
            "args": args or ["sh"],
            "env": env,
            "cwd": str(config.get("WorkingDir") or "/"),
            "capabilities": {
                key: _CAPABILITIES for key in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "ocistore",
        "mounts": _mounts(rootless),
        "annotations": annotations,
        "linux": linux,
    }
