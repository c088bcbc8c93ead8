"""Basic authentication against an Apache ``htpasswd`` file of bcrypt entries, as
Distribution's ``htpasswd`` auth reads one (``user:$2y$…`` lines; other hash kinds are
refused when the file is read, not at a login).

A bcrypt check costs tens of milliseconds of CPU: it runs in a worker thread, never on
the event loop, and a pair that passed is remembered (by a SHA-256 of the header, the
password itself never kept), so a client sending the same credentials with every request
pays once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
from pathlib import Path
from typing import Final

from ..errors import InvalidInput

__all__ = ["Htpasswd"]

REALM: Final = "ocistore"
MAX_FILE: Final = 1 << 20
#: Remembered passing headers, at most.
MAX_REMEMBERED: Final = 4096


class Htpasswd:
    def __init__(self, path: Path) -> None:
        try:
            data = path.read_bytes()[: MAX_FILE + 1]
        except OSError as e:
            raise InvalidInput(f"{path}: cannot read the htpasswd file: {e.strerror}") from None
        if len(data) > MAX_FILE:
            raise InvalidInput(f"{path}: htpasswd file larger than {MAX_FILE} bytes")
        self.users: dict[str, bytes] = {}
        for number, raw in enumerate(data.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            user, colon, hashed = line.partition(b":")
            if not colon or not user:
                raise InvalidInput(f"{path}: line {number}: not user:hash")
            if not hashed.startswith((b"$2y$", b"$2a$", b"$2b$")):
                raise InvalidInput(
                    f"{path}: line {number}: not a bcrypt entry (make it with htpasswd -B)"
                )
            self.users[user.decode("utf-8", "replace")] = hashed.replace(b"$2y$", b"$2b$", 1)
        self._passed: set[bytes] = set()

    def _check(self, header: str) -> bool:
        import bcrypt

        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, colon, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        hashed = self.users.get(user.decode("utf-8", "replace"))
        if not colon or hashed is None:
            # The same work as for a known user (as Distribution does), so that how long
            # a refusal takes tells nothing of which users exist.
            dummy = next(iter(self.users.values()), None)
            if dummy is not None:
                with contextlib.suppress(ValueError):
                    bcrypt.checkpw(password, dummy)
            return False
        try:
            return bool(bcrypt.checkpw(password, hashed))
        except ValueError:
            return False

    def allowed(self, header: str) -> bool | None:
        """Whether the ``Authorization`` header passes, when that is known at once;
        ``None`` when it must be checked (:meth:`check`)."""
        if not header:
            return False
        if self._key(header) in self._passed:
            return True
        return None

    async def check(self, header: str) -> bool:
        ok = await asyncio.get_running_loop().run_in_executor(None, self._check, header)
        if ok:
            if len(self._passed) >= MAX_REMEMBERED:
                self._passed.clear()
            self._passed.add(self._key(header))
        return ok

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode("latin-1", "replace")).digest()
