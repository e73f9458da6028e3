"""The client API: the storage proxy's `[api.client]` (downloads and tus uploads by token)."""
