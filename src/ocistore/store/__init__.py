"""The store: the only code that writes under a store's root."""

from .store import Store

__all__ = ["Store"]
