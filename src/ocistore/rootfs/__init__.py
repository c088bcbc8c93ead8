"""The image as a file system: ``unpack``, ``export``, ``commit``, ``append``, ``diff``,
and the flattened tree as entries (see docs/design.md, "Root file systems").

Everything that touches a tree goes through :class:`~.fsroot.Root`, which resolves every
path inside it; layers are read from the store's verified reader
(:meth:`~ocistore.store.store.Store.open_layer`), and new images enter through the one
way in (:meth:`~ocistore.store.store.Store.add_images`).
"""
