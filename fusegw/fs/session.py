"""Whether requests are queued on the FUSE session: what tells a handler it is not alone.

Handlers that never yield are answered one after the other, so the count of requests being
answered (`fusegw.fs.guard.IN_FLIGHT`) stays at one however many wait in the kernel's queue;
the queue itself is the signal. pyfuse3 does not expose its `/dev/fuse` descriptor, so it is
found among the process's descriptors once the session is open (one session per daemon).
"""

from __future__ import annotations

import os
import select


def fuse_fd() -> int | None:
    """The /dev/fuse descriptor of this process, None if there is none."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                return int(name)
        except OSError:  # closed meanwhile (listdir's own descriptor among them)
            continue
    return None


class Queue:
    """Polls the session's descriptor: a request is waiting when it is readable."""

    def __init__(self, fd: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def waiting(self) -> bool:
        return bool(self._poll.poll(0))
