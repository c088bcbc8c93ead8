"""One exception hierarchy for ocistore.

Every error names what it is about (a digest, a reference, a path, a field) in its
message, so the command line can print ``str(error)`` as its one line. The command line
maps every :class:`OcistoreError` to exit code 1; usage errors exit 2.
"""

from __future__ import annotations


class OcistoreError(Exception):
    """Base of every error ocistore raises on purpose."""


class NotFound(OcistoreError):
    """An image, layer, blob, reference or metadata key that does not exist."""


class InvalidInput(OcistoreError):
    """Input that is malformed: a bad digest, config, reference, archive or field."""


class Conflict(OcistoreError):
    """The operation contradicts the store's state (a tag in use, an image with children)."""


class Ambiguous(OcistoreError):
    """An ID prefix that matches more than one image."""


class CorruptStore(OcistoreError):
    """The store's own files are damaged or inconsistent."""


class DigestMismatch(OcistoreError):
    """Content whose digest (or size) is not the one expected.

    Raised both when input does not match its descriptor and when stored content was
    changed behind the store's back.
    """

    def __init__(self, what: str, expected: str, got: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {got}")
        self.what = what
        self.expected = expected
        self.got = got


class SizeMismatch(DigestMismatch):
    """Content whose length is not the size its descriptor gives."""

    def __init__(self, what: str, expected: int, got: int) -> None:
        OcistoreError.__init__(self, f"{what}: size mismatch: expected {expected} bytes, got {got}")
        self.what = what
        self.expected = str(expected)
        self.got = str(got)


class StorageError(OcistoreError):
    """The file system failed a step of a write (a full disk, an I/O error, a denied
    permission): the message names the step and the path, ``errno`` keeps the cause."""

    def __init__(self, step: str, path: object, err: OSError) -> None:
        super().__init__(f"{step} {path}: {err.strerror or err}")
        self.errno = err.errno


class ReadOnlyStore(OcistoreError):
    """A change asked of a store this process may only read (a read-only file system,
    a store owned by another user)."""


class UnsupportedStore(OcistoreError):
    """A store written by a newer ocistore, in a format this one does not know."""


class LockTimeout(OcistoreError):
    """The store's lock was not free within the time allowed (``--lock-timeout``)."""


class PartiallyDone(OcistoreError):
    """A command failed after it had already changed the store: ``done`` lists, one
    line each, what it did before the failure."""

    def __init__(self, error: BaseException, done: list[str]) -> None:
        super().__init__(f"{error} (already done: {'; '.join(done)})")
        self.error = error
        self.done = done
