"""``ocistore serve``: the store as a read-only registry (the OCI distribution API's pull
side), a pull-through cache in front of another registry, and a page of the store."""
