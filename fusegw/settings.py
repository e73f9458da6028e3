"""What a mount is asked to do, and the checks that refuse it early in one line.

Kept apart from the daemon so that the command line can build and check settings without
importing pyfuse3, trio and hypercorn (every admin command starts faster for it).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
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
    allow_exposed_source: bool = False  # serve a SOURCE users can reach directly (warned)

    def __post_init__(self) -> None:
        # Absolute from the start: the background daemon runs in /, not in the caller's cwd.
        self.source = Path(os.path.abspath(self.source))
        self.mountpoint = Path(os.path.abspath(self.mountpoint))
        if not self.volume:
            self.volume = self.source.name or "root"
        if self.control_socket is None:
            self.control_socket = DEFAULT_SOCKET_DIR / f"{self.volume}.sock"
        self.control_socket = Path(os.path.abspath(self.control_socket))


@dataclass(frozen=True)
class Exposure:
    """Why users other than root can reach a SOURCE without the gateway, and the fix."""

    why: str  # "/vfroot (mode 0755) lets every user reach /vfroot/local directly, ..."
    fix: str  # "chmod 0700 /vfroot"

    def refusal(self) -> str:
        return f"{self.why}: {self.fix}, or mount with -o allow_exposed_source"

    def warning(self) -> str:
        return (f"serving an exposed source (allow_exposed_source): {self.why}; "
                f"to close it: {self.fix}")


def source_exposure(source: Path) -> Exposure | None:
    """None if some directory from / to SOURCE (resolved, inclusive) keeps every user but
    root out; else the reason. Whoever reaches the backing directory writes past every
    limit, so the gateway refuses to serve it unless asked (allow_exposed_source)."""
    real = Path(os.path.realpath(source))
    for directory in (*reversed(real.parents), real):
        if not _who_may_search(directory, os.stat(directory)):
            return None
    return _exposure(real)


def _who_may_search(path: Path, st: os.stat_result) -> list[str]:
    """Who other than root may search `path` (empty: nobody). An ACL's named entries count
    when its mask (the mode's group bits) grants search."""
    who = []
    if st.st_uid != 0:
        who.append(f"its owner {_user(st.st_uid)}")
    if st.st_mode & stat.S_IXOTH:
        who.append("every user")
    if st.st_mode & stat.S_IXGRP:
        if st.st_gid != 0:
            who.append(f"group {_group(st.st_gid)}")
        if _has_acl(path):
            who.append("the users and groups its ACL names")
    return who


def _exposure(real: Path) -> Exposure:
    """The reason names the parent (the volume root itself must stay traversable: the mount
    shows its mode), and the fix closes it."""
    parent = real.parent
    st = os.stat(parent)
    who = " and ".join(_who_may_search(parent, st))
    acl = " and an ACL" if _has_acl(parent) else ""
    why = (f"{parent} (mode {stat.S_IMODE(st.st_mode):04o}{acl}) lets {who} reach {real} "
           "directly, bypassing quotas")
    if parent == Path("/"):
        fix = f"move {real} into a root-owned directory of mode 0700"
    elif st.st_uid != 0:
        fix = f"chown root {parent} && chmod 0700 {parent}"
    else:
        fix = f"chmod 0700 {parent}"
    return Exposure(why, fix)


def _has_acl(path: Path) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return False
    return True


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


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
    exposure = source_exposure(s.source)
    if exposure is not None and not s.allow_exposed_source:
        raise StartupError(exposure.refusal())
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except FileNotFoundError:
        raise StartupError("/dev/fuse is missing (is the fuse module loaded?)") from None
    except OSError as e:
        raise StartupError(f"/dev/fuse cannot be opened: {e.strerror}") from None


