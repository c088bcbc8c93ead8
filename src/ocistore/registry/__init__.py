"""The registry client: pull, push, and what they need (credentials, auth, transport)."""
