"""Pure values of the container world: digests, references, image configs, platforms,
compression. Nothing here touches a store."""
