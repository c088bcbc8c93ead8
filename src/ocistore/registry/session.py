"""What one command shares across the registries it talks to: the transport (its
connections, TLS settings and retries), the credentials, one :class:`Registry` per host."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from ..spec.reference import Reference
from .client import Registry, Repository
from .credentials import Credential, CredentialStore
from .transport import RetryPolicy, TLSSettings, Transport

__all__ = ["Session"]


class Session:
    """Registries for one command; close it (or use ``with``) to drop its connections."""

    def __init__(
        self,
        credentials: CredentialStore | None = None,
        tls: TLSSettings | None = None,
        retry: RetryPolicy | None = None,
        given: Mapping[str, Credential] | None = None,
    ) -> None:
        #: Where credentials are read (None: anonymous, but for ``given``).
        self.credentials = credentials
        #: Credentials given for one command (``--creds``), by registry domain: never
        #: sent to another registry.
        self.given = dict(given or {})
        self.transport = Transport(tls, retry)
        self._lock = threading.Lock()
        self._registries: dict[str, Registry] = {}

    def registry(self, domain: str) -> Registry:
        with self._lock:
            registry = self._registries.get(domain)
        if registry is not None:
            return registry
        credential = self.given.get(domain)
        if credential is None and self.credentials is not None:
            credential = self.credentials.get(domain)
        registry = Registry(domain, self.transport, credential)
        with self._lock:
            return self._registries.setdefault(domain, registry)

    def repository(self, ref: Reference) -> Repository:
        return self.registry(ref.domain).repository(ref.path)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
