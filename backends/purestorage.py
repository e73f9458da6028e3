"""`purestorage`: Pure Storage FlashBlade. (Being written: issue 14.)"""

from __future__ import annotations

from backends.vfs import VFSBackend


class PureStorageBackend(VFSBackend):
    """`purestorage`: FlashBlade exports have no directory quota here, so plain directories
    and the gateway as the enforcer, exactly as `vfs`."""

    name = "purestorage"
    # The storage proxy's FlashBlade keys (its REST API and RapidFile Tools): accepted so that
    # a storage-proxy.toml works as it is, and unused until the vendor API is.
    option_keys = frozenset({"purity_endpoint", "purity_api_token", "purity_api_version",
                             "purity_fs_name", "purity_ssl_verify"})
