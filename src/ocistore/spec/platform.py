"""Platforms (``os/arch[/variant]``) as OCI image indexes describe them."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from ..errors import InvalidInput

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_VARIANT = {"armv7l": "v7", "armv6l": "v6", "aarch64": "v8", "arm64": "v8"}


class Platform(NamedTuple):
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    def matches(self, desc: dict[str, Any] | None) -> bool:
        """Whether a descriptor's ``platform`` (or a config) is this platform.

        A variant only has to match when both sides name one (``arm64`` and
        ``arm64/v8`` are the same machine).
        """
        if not desc:
            return False
        if desc.get("os") != self.os or desc.get("architecture") != self.architecture:
            return False
        other = desc.get("variant") or ""
        return not (self.variant and other and other != self.variant)


def parse_platform(s: str) -> Platform:
    """``os/arch[/variant]``, normalized as containerd does: lower case, and the
    machine's names for an architecture (``x86_64``, ``aarch64``) in Go's words."""
    parts = s.lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidInput(f"invalid platform {s!r}: expected os/arch[/variant]")
    machine = parts[1]
    arch = _ARCH.get(machine, machine)
    # armv7l says its variant; arm64 needs none (see Platform.matches).
    default_variant = _VARIANT.get(machine, "") if arch == "arm" else ""
    variant = parts[2] if len(parts) == 3 else default_variant
    return Platform(parts[0], arch, variant)


def host_platform() -> Platform:
    """This machine, in Go's (and so OCI's) words."""
    machine = os.uname().machine.lower()
    arch = _ARCH.get(machine, machine)
    variant = _VARIANT.get(machine, "") if arch in ("arm", "arm64") else ""
    return Platform("linux", arch, variant)
