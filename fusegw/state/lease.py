"""The serving lease: one `vfs` gateway per volume, from any node.

Two mechanisms together: an exclusive `flock` on `.fusegw/lease.lock` settles it between
processes of one node (the kernel drops it when the holder dies, even by kill -9), and the
`lease.json` heartbeat settles it between nodes, which may not share locks: a lease renewed by
another host within `ttl` seconds is held.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from dataclasses import dataclass

from fusegw.errors import VolumeRefused
from fusegw.state.store import StateDir

LEASE_FILE = "lease.json"
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
        fd = os.open(self.state.path / "lease.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
        self._lock_fd = fd
        self.renew()

    def renew(self) -> None:
        self.state.write(
            LEASE_FILE,
            {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(),
             "renewed_at": time.time()},
        )

    def release(self) -> None:
        if self._lock_fd < 0:
            return
        self.state.remove(LEASE_FILE)
        os.close(self._lock_fd)
        self._lock_fd = -1

    def _current_holder(self) -> str:
        current = self.state.read(LEASE_FILE)
        return str(current.get("holder")) if current else "unknown holder"
