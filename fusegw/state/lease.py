"""The serving lease: one `vfs` gateway per volume, from any node.

Two mechanisms together: an exclusive `flock` on `.fusegw/lease.lock` settles it between
processes of one node (the kernel drops it when the holder dies, even by kill -9), and the
`lease.json` heartbeat settles it between nodes, which may not share locks: a lease renewed by
another host within `ttl` seconds is held.

`lease.json` is rewritten in place (padded to LEASE_SIZE), not replaced: the rewrite reuses
the file's allocated block, so the lease is taken and renewed on a full backing disk, where a
new file cannot be created. Its one risk, a write torn by a crash, only makes the file
unreadable, which reads as "no lease": the writer had died anyway, and the flock still guards
this node. A clean stop does not delete the file but marks it released (`renewed_at` 0, which
older gateways read as long expired), so the next start on a full disk finds it to rewrite.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from dataclasses import dataclass

from fusegw.errors import VolumeRefused
from fusegw.state.store import StateDir, VolumeWriteError

LEASE_FILE = "lease.json"
LEASE_SIZE = 512  # bytes the record is padded to: well inside one filesystem block
DEFAULT_TTL = 30.0


@dataclass
class Lease:
    state: StateDir
    ttl: float = DEFAULT_TTL
    _lock_fd: int = -1

    @property
    def holder(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def acquire(self) -> None:
        """Take the lease or refuse (VolumeRefused); VolumeWriteError if it cannot be written
        (a full disk without a lease.json to rewrite)."""
        try:
            fd = os.open(self.state.path / "lease.lock",
                         os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise VolumeWriteError(str(self.state.path / "lease.lock"), e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise VolumeRefused(
                f"volume is served by another gateway ({self._current_holder()}); "
                "one vfs gateway per volume"
            ) from None
        current = self.state.read(LEASE_FILE)
        if current and current.get("host") != socket.gethostname():
            age = time.time() - float(current.get("renewed_at", 0))
            if age < self.ttl:
                os.close(fd)
                raise VolumeRefused(
                    f"volume is served by another gateway ({current.get('holder')}, "
                    f"renewed {age:.0f}s ago); one vfs gateway per volume"
                )
        try:
            self.renew()
        except OSError as e:
            os.close(fd)
            raise VolumeWriteError(str(self.state.path / LEASE_FILE), e) from None
        self._lock_fd = fd

    def renew(self) -> None:
        """Rewrite the heartbeat in place; OSError if even that fails."""
        self.state.overwrite(LEASE_FILE, self._record(time.time()), LEASE_SIZE)

    def release(self) -> None:
        """Mark the lease released in place; if even that fails, remove the file (no space
        needed). The flock goes with the descriptor."""
        if self._lock_fd < 0:
            return
        try:
            self.state.overwrite(LEASE_FILE, dict(self._record(0.0), released=True,
                                                  released_at=time.time()), LEASE_SIZE)
        except OSError:
            with contextlib.suppress(OSError):
                self.state.remove(LEASE_FILE)
        os.close(self._lock_fd)
        self._lock_fd = -1

    def _record(self, renewed_at: float) -> dict[str, object]:
        return {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
                "renewed_at": renewed_at}

    def _current_holder(self) -> str:
        current = self.state.read(LEASE_FILE)
        return str(current.get("holder")) if current else "unknown holder"
