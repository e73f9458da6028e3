"""The usage attributes under `user.fusegw.`: answered from the ledger in O(1), never a walk.

Anyone who can reach a file can read them (`getfattr -d`). Setting `limit_bytes` or
`limit_inodes` on a scope directory is off unless the volume enables it, and then allowed only
to root callers in the gateway's own mount namespace: a container's root is often the host's
uid 0, but never in the host's mount namespace.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import pyfuse3

from fusegw.fs.inodes import Node
from fusegw.layout import SCOPE_DEPTH
from fusegw.ledger import Ledger, ScopeUsage
from fusegw.native import NativeFigures

PREFIX = b"user.fusegw."
SCOPE_NAMES = [PREFIX + n for n in (b"scope", b"used_bytes", b"limit_bytes", b"used_inodes",
                                    b"limit_inodes")]
VFOLDER_NAMES = [PREFIX + n for n in (b"vfolder", b"vfolder.used_bytes",
                                      b"vfolder.used_inodes")]
MAX_LIMIT = 2**63 - 1  # the control API's range for limits
LIMIT_FIELDS = {PREFIX + b"limit_bytes": "limit_bytes", PREFIX + b"limit_inodes": "limit_inodes"}

# (scope, field, value, caller uid, caller pid) -> None; raises GatewayError on refusal
LimitSetter = Callable[[ScopeUsage, str, int, int, int], Awaitable[None]]


def _own_mount_ns() -> str:
    return os.readlink("/proc/self/ns/mnt")


class UsageXattrs:
    def __init__(self, ledger: Ledger, set_limit: LimitSetter | None = None,
                 allow_set: bool = False, native: NativeFigures | None = None) -> None:
        self.ledger = ledger
        self.native = native  # the storage's figures where it keeps them (cached 1 s)
        self.set_limit = set_limit
        self.allow_set = allow_set
        self._mnt_ns = _own_mount_ns()

    @staticmethod
    def is_reserved(name: bytes) -> bool:
        return name.startswith(PREFIX)

    def _scope(self, node: Node) -> ScopeUsage | None:
        return self.ledger.scopes.get(node.scope) if node.scope is not None else None

    def names(self, node: Node) -> list[bytes]:
        scope = self._scope(node)
        if scope is None:
            return []
        return SCOPE_NAMES + VFOLDER_NAMES if node.vf else list(SCOPE_NAMES)

    async def get(self, node: Node, name: bytes) -> bytes | None:
        """The attribute's value, or None when it is not one of ours for this node."""
        if not name.startswith(PREFIX):
            return None
        scope = self._scope(node)
        if scope is None:
            return None
        key = name[len(PREFIX):]
        if key == b"scope":
            return str(scope.qsid).encode()
        if key in (b"used_bytes", b"limit_bytes", b"used_inodes", b"limit_inodes"):
            field = key.decode()
            if self.native is not None and self.native.native:
                usage = await self.native.get(scope.pathname)
                value = getattr(usage, field) if usage is not None else None
                if value is not None:
                    return str(value).encode()
            return str(getattr(scope, field)).encode()
        if node.vf is None:
            return None
        if key == b"vfolder":
            return f"{scope.qsid}/{node.vf}".encode()
        vf = scope.vfolders.get(node.vf)
        if key == b"vfolder.used_bytes":
            return str(vf.used_bytes if vf else 0).encode()
        if key == b"vfolder.used_inodes":
            return str(vf.used_inodes if vf else 0).encode()
        return None

    async def set(self, node: Node, name: bytes, value: bytes,
                  ctx: pyfuse3.RequestContext) -> None:
        scope = self._scope(node)
        field = LIMIT_FIELDS.get(name)
        if scope is None or field is None or node.depth != SCOPE_DEPTH or self.set_limit is None:
            raise pyfuse3.FUSEError(errno.EPERM)
        if not self.allow_set or ctx.uid != 0 or not self._same_mount_ns(ctx.pid):
            raise pyfuse3.FUSEError(errno.EPERM)
        text = value.decode("ascii", "replace").strip()
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_LIMIT:
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self.set_limit(scope, field, int(text), ctx.uid, ctx.pid)

    def _same_mount_ns(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/mnt") == self._mnt_ns
        except OSError:
            return False
