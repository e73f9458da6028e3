"""What a mount is asked to do, and the checks that refuse it early in one line.

Kept apart from the daemon so that the command line can build and check settings without
importing pyfuse3, trio and hypercorn (every admin command starts faster for it).
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import pwd
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a shared ledger is checked: every command imports this
    import redis

DEFAULT_SOCKET_DIR = Path("/run/fusegw")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STATFS_TIMEOUT = 2.0
"""Seconds a live FUSE mount gets to answer statfs before it counts as hung, not dead."""
NEW_VOLUME_LITTER = frozenset({"lost+found"})
"""Entries a directory may hold and still be a new, empty volume: mkfs's, on a filesystem's
root."""

LEDGERS = ("local", "redis")
"""Where a gateway keeps its usage: its own volume only, or shared through Redis with the
gateways of other nodes that serve the same storage (issue 13)."""
DEFAULT_GRANT_MIN_BYTES = 2**20
DEFAULT_GRANT_MIN_INODES = 64
DEFAULT_GRANT_LEASE = 10.0
DEFAULT_REDIS_WAIT = 5.0
REDIS_RETRY_INTERVAL = 0.2
"""Seconds between PINGs while a start waits (redis_wait) for the shared ledger's Redis."""

log = logging.getLogger("fusegw")


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
    io_threads: int = 16  # worker threads for syscalls that wait (fusegw.fs.offload)
    # calls averaging below this run inline; 0: none; default 500, 0 on network filesystems
    io_inline_max_us: float | None = None
    tcp_listen: str | None = None  # "HOST:PORT": the optional token-checked TCP listener
    auth_token: str | None = None
    allow_exposed_source: bool = False  # serve a SOURCE users can reach directly (warned)
    allow_nonempty_mountpoint: bool = False  # mount over files (they are hidden meanwhile)
    adopt_nonempty: bool = False  # serve a non-empty directory that is no volume yet
    clear_dead: bool = False  # lazily unmount a dead fusegw mount at MOUNTPOINT first
    fsprefix: str = "."  # the storage proxy's key, reported in GET /volumes
    client_listen: str | None = None  # "HOST:PORT": the client API (downloads, uploads), off
    client_socket: Path | None = None  # the client API on a Unix socket (0600), not TCP
    client_secret: str | None = None  # signs its JWTs: the storage proxy's secret
    session_expire: float = 86400.0  # seconds a token (and an idle upload) lives
    max_upload_size: int = 100 * 2**30  # Tus-Max-Size: the largest upload one token may ask
    ledger: str = "local"  # one of LEDGERS; "redis": limits shared by several nodes' gateways
    redis_url: str | None = None  # the shared ledger's Redis (fusegw.ledger.redis_url forms)
    node_id: str | None = None  # this gateway in the shared ledger; default: host + mountpoint
    grant_min_bytes: int = DEFAULT_GRANT_MIN_BYTES  # the smallest grant a node takes at once
    grant_min_inodes: int = DEFAULT_GRANT_MIN_INODES
    grant_lease: float = DEFAULT_GRANT_LEASE  # seconds a vanished node's grant stays held
    # seconds growth past a node's grant waits for an unreachable Redis before EAGAIN (also
    # how long a start waits for it to answer)
    redis_wait: float = DEFAULT_REDIS_WAIT

    def __post_init__(self) -> None:
        # Absolute from the start: the background daemon runs in /, not in the caller's cwd.
        self.source = Path(os.path.abspath(self.source))
        self.mountpoint = Path(os.path.abspath(self.mountpoint))
        if not self.volume:
            self.volume = self.source.name or "root"
        if self.control_socket is None:
            self.control_socket = DEFAULT_SOCKET_DIR / f"{self.volume}.sock"
        self.control_socket = Path(os.path.abspath(self.control_socket))
        if self.client_socket is not None:
            self.client_socket = Path(os.path.abspath(self.client_socket))


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


def group_id(name: str) -> int:
    """The gid of group `name`; the refusal names the `groupadd` that creates it."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(f"admin group {name!r} does not exist: create it with "
                           f"`groupadd {name}` (members may use the control socket), or name "
                           "another with --admin-group or [control] admin_group") from None


def log_level(name: str) -> str:
    """A logging level by name, refused in one line before anything starts."""
    if name.upper() not in LOG_LEVELS:
        raise StartupError(f"unknown log level {name!r}: use one of {', '.join(LOG_LEVELS)}")
    return name.upper()


def check_backend(name: str) -> None:
    """A backend fusegw has; imported here, not at the top: backends bring trio along, and
    every admin command imports this module."""
    from backends.registry import BACKENDS

    if name not in BACKENDS:
        raise StartupError(f"unknown backend {name!r}: use one of {', '.join(sorted(BACKENDS))} "
                           "(--backend, -o backend= or the volume's backend)")


def preflight(s: MountSettings) -> None:
    """Refuse early, in one line, what would otherwise fail obscurely inside libfuse, or
    change a directory nobody meant to give the gateway. Everything is checked before the
    one change a check may make (--clear-dead's unmount)."""
    _check_source(s)
    check_backend(s.backend)
    if s.admin_group and not s.admin_group.isdigit():
        group_id(s.admin_group)
    if s.tcp_listen and not s.auth_token:
        raise StartupError("a TCP listener needs an auth token (FUSEGW_AUTH_TOKEN or "
                           "[control] auth_token in the config)")
    if (s.client_listen or s.client_socket) and not s.client_secret:
        raise StartupError("the client API (--client-listen, --client-socket or [api.client] "
                           "service-addr) "
                           "needs the storage proxy's secret: FUSEGW_CLIENT_SECRET or "
                           "[storage-proxy] secret in the config")
    _check_ledger_options(s)
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
    if not s.adopt_nonempty:
        _check_new_volume(s.source)
    if s.ledger == "redis":
        _check_redis_answers(s)
    _check_mountpoint(s)


def _check_ledger_options(s: MountSettings) -> None:
    """The ledger's keys agree with each other, and the URL names a Redis: a shared ledger
    without one would fail at the first write, and a URL with the local ledger is unread."""
    if s.ledger not in LEDGERS:
        raise StartupError(f"unknown ledger {s.ledger!r}: use -o ledger=local (the default) "
                           "or -o ledger=redis")
    if s.ledger == "local":
        if s.redis_url:
            raise StartupError("redis_url is only read with ledger=redis: add -o ledger=redis "
                               "(or ledger = \"redis\" in the volume's options), or drop "
                               "redis_url")
        return
    if not s.redis_url:
        raise StartupError("-o ledger=redis needs redis_url=redis://HOST:PORT/DB (or "
                           "redis+sentinel://HOST:PORT;HOST:PORT/SERVICE)")
    # imported here: redis-py and the ledger cost every command that never shares one
    from fusegw.ledger.redis_url import RedisURLError, connect

    try:
        connect(s.redis_url)
    except RedisURLError as e:
        raise StartupError(f"shared ledger: {e}") from None


def _check_redis_answers(s: MountSettings) -> None:
    """The shared ledger's Redis answers PING, waiting up to redis_wait seconds for it (at
    least one try): a node booting beside its Redis need not fail. A Redis that answers
    with an error (a wrong password or database) is refused at once: waiting cannot fix it."""
    import redis

    from fusegw.ledger.redis_url import SOCKET_TIMEOUT, connect, redacted

    assert s.redis_url is not None  # _check_ledger_options
    where = redacted(s.redis_url)
    client = connect(s.redis_url)
    deadline = time.monotonic() + s.redis_wait
    try:
        while True:
            error = _ping(client, max(deadline - time.monotonic(), SOCKET_TIMEOUT))
            if error is None:
                return
            outage = isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError))
            if isinstance(error, redis.AuthenticationError) or not outage:
                raise StartupError(f"shared ledger: Redis at {where} refuses the gateway "
                                   f"({_reason(error)}): fix redis_url (its password or "
                                   "database)")
            if time.monotonic() + REDIS_RETRY_INTERVAL > deadline:
                raise StartupError(f"shared ledger: Redis at {where} does not answer "
                                   f"({_reason(error)}): start it, or fix redis_url")
            time.sleep(REDIS_RETRY_INTERVAL)
    finally:
        client.close()


def _ping(client: redis.Redis, timeout: float) -> BaseException | None:
    """One PING given at most `timeout` seconds, in a thread: redis-py's own retries (a
    Sentinel's backoff takes seconds per Sentinel) would outlast redis_wait. None: it
    answered."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            client.ping()
        except Exception as e:  # every failure is a reason for the one-line refusal
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=probe, name="redis-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError(f"no answer within {timeout:g} s")


def _reason(error: BaseException) -> str:
    """An error's own words on one line. redis-py's MasterNotFoundError appends the repr of
    every Sentinel client it tried (a screenful): its first clause is the reason."""
    from redis.sentinel import MasterNotFoundError

    text = " ".join(str(error).split())
    if isinstance(error, MasterNotFoundError):
        text = text.split(" : ", 1)[0]
    return text.rstrip(".") or type(error).__name__


def _check_source(s: MountSettings) -> None:
    if not s.source.exists():
        raise StartupError(f"source {s.source} does not exist")
    if not s.source.is_dir():
        raise StartupError(f"source {s.source} is not a directory")


def _check_new_volume(source: Path) -> None:
    """A directory that is neither a volume (version.txt, .fusegw/) nor empty is somebody's
    data: serving it as a new volume writes both into it, so that takes adopt_nonempty.
    A flat version-2 volume is left to the layout check, which names `fusegw migrate`."""
    from fusegw.layout import STATE_DIR, VERSION_FILE, _has_v2_vfolders

    names = set(os.listdir(source)) - NEW_VOLUME_LITTER
    if not names or VERSION_FILE in names or STATE_DIR in names or _has_v2_vfolders(source):
        return
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    raise StartupError(
        f"source {source} is not empty ({shown}) but holds no version.txt and no .fusegw/, so "
        "it is no volume yet, and serving it would write both into it: use an empty "
        "directory, or adopt it with -o adopt_nonempty (--adopt-nonempty)")


# -- the mount point ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: Path
    fstype: str
    source: str

    @property
    def is_fusegw(self) -> bool:
        return self.fstype == "fuse.fusegw"


def _unescape(field_: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (`\\040`)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts() -> Iterator[MountEntry]:
    """The kernel's mount table, in mount order: no syscall reaches a mounted filesystem, so
    a dead or hung FUSE mount cannot stall this."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            rest = fields[fields.index("-") + 1:]
            yield MountEntry(Path(_unescape(fields[4])), rest[0], _unescape(rest[1]))


def mount_at(path: Path) -> MountEntry | None:
    """The topmost mount at `path` (resolved)."""
    where = Path(os.path.realpath(path))
    found = None
    for entry in mounts():
        if entry.mountpoint == where:
            found = entry
    return found


def fusegw_mounts_of(source: Path) -> list[Path]:
    """Where this node's gateways serve `source` (their fsname is `fusegw:<source>`), read
    from the kernel's mount table; whatever the backend or ledger (not every gateway holds
    the volume's lease)."""
    wanted = "fusegw:" + os.path.realpath(source)
    return [m.mountpoint for m in mounts() if m.is_fusegw and m.source == wanted]


def fuse_answers(path: Path, timeout: float = STATFS_TIMEOUT) -> bool | None:
    """True if the FUSE daemon behind `path` answers, False if its connection is gone, None
    if it does not answer in time (alive but stopped or stuck).

    statfs, because the kernel never caches its answer: every statvfs is a request, so a
    dead connection says ENOTCONN at once, while stat answers from the attributes the kernel
    cached (for cache_timeout, 60 s) as if the mount were alive. In a thread: a stopped
    daemon would hold the call forever."""
    outcome: list[OSError | None] = []

    def probe() -> None:
        try:
            os.statvfs(path)
        except OSError as e:
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=probe, name="statfs-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return None
    error = outcome[0]
    return error is None or error.errno not in (errno.ENOTCONN, errno.ECONNABORTED)


def dead_mount_refusal(mountpoint: Path, entry: MountEntry) -> str:
    fix = f"fusermount3 -u -z {mountpoint}"
    if entry.is_fusegw:
        fix += ", or mount with --clear-dead (-o clear_dead)"
    return (f"mount point {mountpoint} is a dead FUSE mount ({entry.fstype} {entry.source}: "
            f"its daemon died); clear it with: {fix}")


def clear_dead_mount(mountpoint: Path) -> None:
    """Lazily unmount a dead mount: fusermount3 -u -z, else umount -l. Lazy, because
    processes (containers' bind mounts) may still hold it; they keep the dead mount, the
    path gets the new one."""
    errors = []
    for argv in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            errors.append(f"{argv[0]}: {e}")
            continue
        entry = mount_at(mountpoint)
        if entry is None or fuse_answers(mountpoint) is not False:
            log.warning("cleared the dead FUSE mount at %s (%s)", mountpoint, " ".join(argv[:-1]))
            return
        errors.append(f"{argv[0]}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    raise StartupError(f"cannot clear the dead FUSE mount at {mountpoint}: {'; '.join(errors)}")


def _check_mountpoint(s: MountSettings) -> None:
    """A mount there already: live (busy), hung (busy, says so), or dead (refused naming the
    fix, or cleared with clear_dead when it is fusegw's). Then: there, a directory, empty."""
    entry = mount_at(s.mountpoint)
    if entry is not None and entry.fstype.startswith("fuse"):
        answers = fuse_answers(s.mountpoint)
        if answers is False:
            if not (s.clear_dead and entry.is_fusegw):
                raise StartupError(dead_mount_refusal(s.mountpoint, entry))
            clear_dead_mount(s.mountpoint)
            entry = mount_at(s.mountpoint)
        elif answers is None:
            raise StartupError(f"mount point {s.mountpoint} is busy (already a mount point: "
                               f"{entry.fstype} {entry.source}, whose daemon does not answer)")
    if entry is not None:
        raise StartupError(f"mount point {s.mountpoint} is busy (already a mount point: "
                           f"{entry.fstype} {entry.source})")
    try:
        os.stat(s.mountpoint)
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # below a dead mount, not at it
            raise StartupError(f"mount point {s.mountpoint} lies in a dead FUSE mount; clear "
                               "that with: fusermount3 -u -z MOUNTPOINT_OF_IT") from None
    if not s.mountpoint.exists():
        raise StartupError(f"mount point {s.mountpoint} does not exist")
    if not s.mountpoint.is_dir():
        raise StartupError(f"mount point {s.mountpoint} is not a directory")
    if not s.allow_nonempty_mountpoint:
        _check_empty_mountpoint(s.mountpoint)


def _check_empty_mountpoint(mountpoint: Path) -> None:
    """Files under a mount point are hidden while the gateway serves: usually a mistake
    (the volume's own directory, a wrong path), so that takes allow_nonempty_mountpoint."""
    names = sorted(os.listdir(mountpoint))
    if names:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise StartupError(
            f"mount point {mountpoint} is not empty ({shown}); the mount would hide that: "
            "empty it, or mount anyway with -o allow_nonempty_mountpoint "
            "(--allow-nonempty-mountpoint)")
