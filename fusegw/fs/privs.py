"""Whether a write clears SUID/SGID: the kernel's rule for local files, applied by the gateway.

Linux clears S_ISUID, and S_ISGID where group execute is set (without it the bit marks
mandatory locking, not set-group-ID), when a process without CAP_FSETID writes to a file. On
cached FUSE writes the kernel does it itself (a SETATTR before the write); on direct-I/O
writes it only tells the filesystem (FUSE_WRITE_KILL_SUIDGID), and pyfuse3 passes that flag
on to no handler. So the gateway decides from the process that opened the file: a writer's
descriptor is its opener's, as the kernel's own check of `current` mostly is.
"""

from __future__ import annotations

import stat

CAP_FSETID = 4


def without_privs(mode: int) -> int:
    """The permission bits a write by an unprivileged caller leaves."""
    bits = stat.S_IMODE(mode) & ~stat.S_ISUID
    if bits & stat.S_IXGRP:
        bits &= ~stat.S_ISGID
    return bits


def kills_privs(uid: int, pid: int) -> bool:
    """True unless the opener holds CAP_FSETID (read from /proc only for root openers of a
    file that has the bits, so the common write pays nothing)."""
    if uid != 0:
        return True
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"CapEff:"):
                    return not int(line.split()[1], 16) >> CAP_FSETID & 1
    except (OSError, ValueError, IndexError):
        pass
    return False  # the opener is gone: root it was, and root keeps the bits
