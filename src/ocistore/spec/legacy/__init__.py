"""Docker's legacy formats: v1 image IDs and JSON, byte for byte as Go writes them."""
