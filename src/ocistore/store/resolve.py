"""From what a user typed to images: the one resolver every command uses.

Docker's rules (``daemon/images/image.go`` ``GetImage``, and ``image/tarexport``'s
``parseNames`` for ``save``):

* :meth:`Resolver.resolve` finds one image. ``sha256:<hex>`` (or a prefix) is an ID;
  anything that parses as a reference is looked up as one first (a name alone means
  ``:latest``); a string that could be an ID prefix (``3f57d9``, also a valid repository
  name) is then tried as one. Else :class:`~ocistore.errors.NotFound` ``No such image``,
  or the reference's own error when it was not a reference at all.
* :meth:`Resolver.select` finds what ``save`` writes for a list of names, each image
  with the reference it is written under: an ID gives the image without one;
  ``name:tag`` that tag; ``name@digest`` that digest reference; a bare repository name
  every image of that repository, each with its tag (an image the repository names only
  by digest comes without one), or, when the repository has none, what the name is as
  an ID prefix.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

from ..errors import Ambiguous, InvalidInput, NotFound
from ..spec.digest import Digest, ImageID
from ..spec.reference import Reference, looks_like_id, parse_any, parse_tagged
from .images import ImageStore
from .refs import ReferenceStore

__all__ = ["Resolver", "Selected", "no_such_image"]


class Selected(NamedTuple):
    """An image a list of names selects, with the reference it was selected by."""

    id: ImageID
    #: A tag (``name:tag``), a digest reference (``name@sha256:…``), or ``None`` for an
    #: image named by ID.
    ref: Reference | None


class Resolver:
    def __init__(self, images: ImageStore, references: ReferenceStore) -> None:
        self._images = images
        self._references = references

    def _as_id(self, name: str) -> ImageID | None:
        """The image ``name`` names as an ID prefix, if it could be one and names exactly
        one (an ambiguous prefix names none, as in Docker's ``GetImage``)."""
        if not looks_like_id(name):
            return None
        with contextlib.suppress(NotFound, Ambiguous, InvalidInput):
            return self._images.search(name)
        return None

    def resolve(self, name: str) -> ImageID:
        """The image a reference (``busybox``, ``name@sha256:…``), full ID or ID prefix
        names, by Docker's ``GetImage``: a digest (``sha256:`` and 64 hex, or 64 hex) is
        an ID; a reference is looked up as one, then as an ID prefix. Else ``No such
        image: busybox:latest`` (:func:`no_such_image`), or the reference's own error
        (``invalid reference format: …``) when it is not one."""
        if not name:
            raise InvalidInput("invalid reference format: empty image name")
        parsed = parse_any(name)  # the reference's own error if it is none
        if isinstance(parsed, Digest):
            image_id = ImageID(parsed)
            if self._images.exists(image_id):
                return image_id
            raise no_such_image(name)
        with contextlib.suppress(NotFound, InvalidInput):
            return self._references.get(parsed.digest_only().tagged_or_default())
        found = self._as_id(name)
        if found is not None:
            return found
        raise no_such_image(name)

    def named_by_reference(self, name: str, image_id: ImageID) -> bool:
        """Whether ``name`` resolved to ``image_id`` as a reference rather than by ID."""
        if name.startswith("sha256:"):
            return False
        with contextlib.suppress(InvalidInput, NotFound):
            return self._references.get(parse_tagged(name)) == image_id
        return False

    def select(self, names: list[str]) -> list[Selected]:
        """What ``save`` writes for ``names``, in order, each pair once; every name must
        select something (else the error :meth:`resolve` would raise)."""
        out: list[Selected] = []

        def add(image_id: ImageID, ref: Reference | None) -> None:
            item = Selected(image_id, ref)
            if item not in out:
                out.append(item)

        for name in names:
            if not name:
                raise InvalidInput("invalid reference format: empty image name")
            parsed: Reference | Digest | None = None
            with contextlib.suppress(InvalidInput):
                parsed = parse_any(name)
            if isinstance(parsed, Digest) or name.startswith("sha256:"):
                add(self._images.search(name), None)  # an ID, or a prefix of one
                continue
            if parsed is not None and parsed.is_name_only:
                assocs = self._references.references_by_name(parsed)
                tagged = {image_id for r, image_id in assocs if r.tag is not None}
                for r, image_id in assocs:
                    if r.tag is not None:
                        add(image_id, r)
                    elif image_id not in tagged:
                        add(image_id, None)  # named only by digest here: no name to give
                if assocs:
                    continue
            elif parsed is not None:
                lookup = parsed.digest_only()
                with contextlib.suppress(NotFound):
                    add(self._references.get(lookup), lookup)
                    continue
            found = self._as_id(name)
            if found is not None:
                add(found, None)
                continue
            if parsed is None:
                parse_tagged(name)  # raise the reference error
            raise NotFound(f"No such image: {name}")
        return out


def no_such_image(name: str) -> NotFound:
    """Docker's error for a name that names no image: ``No such image: busybox:latest``
    (a reference with neither tag nor digest gets ``latest``, as Docker's
    ``ErrImageDoesNotExist`` shows it), ``No such image: sha256:…`` for an ID."""
    shown = name
    with contextlib.suppress(InvalidInput):
        parsed = parse_any(name)
        shown = str(parsed) if isinstance(parsed, Digest) else parsed.tagged_or_default().familiar()
    return NotFound(f"No such image: {shown}")
