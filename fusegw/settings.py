"""What a mount is asked to do, and the checks that refuse it early in one line.

Kept apart from the daemon so that the command line can build and check settings without
importing pyfuse3, trio and hypercorn (every admin command starts faster for it).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SOCKET_DIR = Path("/run/fusegw")


class StartupError(Exception):
    """A one-line reason the gateway cannot start (missing source, busy mount point, ...)."""


@dataclass
class MountSettings:
    source: Path
    mountpoint: Path
    backend: str = "vfs"
    volume: str = ""
    control_socket: Path | None = None
    admin_group: str | None = None
    xattr_limits: bool = False
    cache_timeout: float | None = None  # default: 60 s when only this gateway writes, else 1 s
    fuse_options: set[str] = field(default_factory=set)
    backend_options: dict[str, Any] = field(default_factory=dict)
    read_ahead_kb: int = 4096  # the FUSE mount's readahead: 1 MiB requests, not 128 KiB
    tcp_listen: str | None = None  # "HOST:PORT": the optional token-checked TCP listener
    auth_token: str | None = None

    def __post_init__(self) -> None:
        self.source = Path(os.path.abspath(self.source))
        self.mountpoint = Path(os.path.abspath(self.mountpoint))
        if not self.volume:
            self.volume = self.source.name or "root"
        if self.control_socket is None:
            self.control_socket = DEFAULT_SOCKET_DIR / f"{self.volume}.sock"


def preflight(s: MountSettings) -> None:
    """Refuse early, in one line, what would otherwise fail obscurely inside libfuse."""
    if not s.source.exists():
        raise StartupError(f"source {s.source} does not exist")
    if not s.source.is_dir():
        raise StartupError(f"source {s.source} is not a directory")
    try:
        os.stat(s.mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise StartupError(
                f"mount point {s.mountpoint} is a dead FUSE mount (its gateway died); "
                f"clear it with: fusermount3 -u -z {s.mountpoint}") from None
    if not s.mountpoint.exists():
        raise StartupError(f"mount point {s.mountpoint} does not exist")
    if not s.mountpoint.is_dir():
        raise StartupError(f"mount point {s.mountpoint} is not a directory")
    if s.tcp_listen and not s.auth_token:
        raise StartupError("a TCP listener needs an auth token (FUSEGW_AUTH_TOKEN or "
                           "[control] auth_token in the config)")
    if os.path.ismount(s.mountpoint):
        raise StartupError(f"mount point {s.mountpoint} is busy (already a mount point)")
    if s.mountpoint == s.source or s.source in s.mountpoint.parents:
        raise StartupError(f"mount point {s.mountpoint} lies inside source {s.source}")
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except FileNotFoundError:
        raise StartupError("/dev/fuse is missing (is the fuse module loaded?)") from None
    except OSError as e:
        raise StartupError(f"/dev/fuse cannot be opened: {e.strerror}") from None


