"""`fusegw mount`: serve a volume. Without --foreground it returns once the mount answers."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusegw import logs
from fusegw.settings import (
    DEFAULT_GRANT_LEASE,
    DEFAULT_GRANT_MIN_BYTES,
    DEFAULT_GRANT_MIN_INODES,
    DEFAULT_REDIS_WAIT,
    MountSettings,
    StartupError,
    log_level,
    preflight,
    source_exposure,
)

if TYPE_CHECKING:  # imported when used: pydantic and the backends (trio) cost every command
    from fusegw.config import NodeConfig, VolumeConfig

DEFAULT_CONFIG = "/etc/fusegw/fusegw.toml"
# Options mount(8) and mount.fuse3 pass that mean nothing to a FUSE session (fstab's own, and
# the defaults: `dev` and `suid` are dropped too, so the mount is always nodev,nosuid), and
# the two fusegw always sets.
IGNORED_MOUNT_OPTIONS = {"rw", "dev", "suid", "exec", "async", "auto", "noauto", "user",
                         "nouser", "users", "owner", "group", "defaults", "_netdev", "nofail",
                         "allow_other", "default_permissions"}
IGNORED_PREFIXES = ("x-", "X-", "comment=")
# The shared ledger's options (issue 13): -o, fstab and [volume.NAME.options] alike.
LEDGER_OPTIONS = ("ledger", "redis_url", "node_id", "grant_min_bytes", "grant_min_inodes",
                  "grant_lease", "redis_wait")
# What fusegw hands to FUSE: the mount flags and options libfuse 3.14 accepts (lib/mount.c
# fuse_mount_opts, lib/fuse_lowlevel.c fuse_ll_opts) that make sense for this filesystem.
# Not passed: max_read= (below), fsname=, subtype= (fusegw's: they name the mount fuse.fusegw, which
# --clear-dead and mountd look for), allow_root (the kernel checks permissions:
# default_permissions), blkdev, blksize= (fuseblk only), user= and -n (mtab).
FUSE_OPTIONS = {"ro", "nosuid", "nodev", "noexec", "sync", "dirsync", "atime", "noatime",
                "debug"}
# The SELinux labels of the mount, for the kernel. Not max_read=: pyfuse3's init() leaves
# libfuse's conn->max_read at 0, and libfuse then fails the session ("init() and
# fuse_session_new() requested different maximum read size").
FUSE_VALUE_OPTIONS = {c: re.compile(r".+") for c in ("context", "fscontext", "defcontext",
                                                     "rootcontext")}
OWN_OPTIONS = {"backend", "volume", "config", "control_socket", "admin_group", "xattr_limits",
               "cache_timeout", "read_ahead_kb", "io_threads", "io_inline_max_us",
               *LEDGER_OPTIONS, "log_file", "log_level",
               "allow_exposed_source", "allow_nonempty_mountpoint", "nonempty",
               "adopt_nonempty", "clear_dead"}
OPTION_ALIASES = {"nonempty": "allow_nonempty_mountpoint"}  # libfuse 2's name for it
_FUSE_VALUE_FORMS = [f"{c}=CONTEXT" for c in sorted(FUSE_VALUE_OPTIONS)]
# Own options that name a file: made absolute before the daemon starts in /.
PATH_OPTIONS = {"config", "control_socket", "log_file"}


def register(sub: Any) -> None:
    p = sub.add_parser("mount", help="mount a volume through the gateway",
                       description="Mount SOURCE (a volume directory) at MOUNTPOINT.")
    p.add_argument("source", nargs="?", help="volume directory (default: from --config)")
    p.add_argument("mountpoint", nargs="?", help="where to mount (default: from --config)")
    p.add_argument("--backend", help="quota backend (default: from config, else vfs)")
    p.add_argument("--volume", help="volume name (default: basename of SOURCE)")
    p.add_argument("--config", help=f"TOML configuration (default {DEFAULT_CONFIG} if present)")
    p.add_argument("--control-socket", help="control socket path "
                   "(default /run/fusegw/<volume>.sock)")
    p.add_argument("--admin-group", help="group whose members may use the control socket")
    p.add_argument("--tcp-listen", metavar="HOST:PORT",
                   help="also serve the API on TCP (off by default; needs FUSEGW_AUTH_TOKEN "
                   "or [control] auth_token, checked in X-BackendAI-Storage-Auth-Token)")
    p.add_argument("--client-listen", metavar="HOST:PORT",
                   help="serve the client API (GET /download, tus /upload) on TCP (off by "
                   "default; [api.client] service-addr in the config; needs "
                   "FUSEGW_CLIENT_SECRET or [storage-proxy] secret, which signs its tokens)")
    p.add_argument("--client-socket", metavar="PATH",
                   help="serve the client API on this Unix socket (mode 0600) instead of TCP, "
                   "for a node's router (fusegw-mountd); needs FUSEGW_CLIENT_SECRET")
    p.add_argument("--xattr-limits", action="store_true", default=None,
                   help="allow root in this mount namespace to set limits with setfattr")
    p.add_argument("--allow-exposed-source", action="store_true", default=None,
                   help="serve a SOURCE that users other than root can reach directly "
                   "(they bypass every quota there; refused by default)")
    p.add_argument("--allow-nonempty-mountpoint", action="store_true", default=None,
                   help="mount over a MOUNTPOINT that holds files (hidden while mounted; "
                   "refused by default)")
    p.add_argument("--adopt-nonempty", action="store_true", default=None,
                   help="serve a non-empty SOURCE that has neither version.txt nor .fusegw/ "
                   "as a new volume (writes both into it; refused by default)")
    p.add_argument("--clear-dead", action="store_true", default=None,
                   help="lazily unmount a dead fusegw mount at MOUNTPOINT (its gateway died) "
                   "and mount")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated mount options: fusegw's own (backend=, volume=, "
                   "config=, ... and the flags above with _ for -) and the FUSE options "
                   f"{', '.join(sorted(FUSE_OPTIONS))}, "
                   f"{', '.join(_FUSE_VALUE_FORMS)}")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log-file", help="log here (default: stderr in the foreground, "
                   "/var/log/fusegw/<volume>.log in the background)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _is_fuse_option(key: str, sep: str, value: str) -> bool:
    if key in FUSE_OPTIONS:
        return not sep
    pattern = FUSE_VALUE_OPTIONS.get(key)
    return pattern is not None and pattern.fullmatch(value) is not None


def _split_options(values: list[str]) -> tuple[dict[str, str], set[str]]:
    """fusegw's own options and the FUSE options it passes on; any other is refused here,
    in one line, instead of by libfuse after the daemon started."""
    own: dict[str, str] = {}
    fuse: set[str] = set()
    unknown: list[str] = []
    for value in values:
        for opt in filter(None, value.split(",")):
            key, sep, val = opt.partition("=")
            if key in OWN_OPTIONS:
                own[OPTION_ALIASES.get(key, key)] = val or "1"
            elif _is_fuse_option(key, sep, val):
                fuse.add(opt)
            elif key not in IGNORED_MOUNT_OPTIONS and not opt.startswith(IGNORED_PREFIXES):
                unknown.append(opt)
    if unknown:
        raise StartupError(
            f"unknown mount option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
            f"fusegw passes on only the FUSE options {', '.join(sorted(FUSE_OPTIONS))}, "
            f"{', '.join(_FUSE_VALUE_FORMS)} and reads its own "
            f"{', '.join(sorted(OWN_OPTIONS - set(OPTION_ALIASES)))}"
            + _sentinel_hint(own))
    return own, fuse


def _sentinel_hint(own: dict[str, str]) -> str:
    """-o splits `redis+sentinel://H1:P1,H2:P2/...` at its comma: the second Sentinel
    arrives as an unknown option. Say what to write instead."""
    if not own.get("redis_url", "").startswith("redis+sentinel://"):
        return ""
    return "; in -o, separate redis_url's Sentinels with ; (H1:P1;H2:P2), not a comma"


@dataclass(frozen=True)
class _Config:
    """What the configuration file says for this mount: the node, and the volume's name in
    it (None where the file has no table for this volume)."""

    node: NodeConfig | None = None
    name: str | None = None

    @property
    def table(self) -> VolumeConfig | None:
        return self.node.volume[self.name] if self.node and self.name else None


def _read_config(args: argparse.Namespace, own: dict[str, str]) -> _Config:
    """The file (--config, -o config=, else /etc/fusegw/fusegw.toml if present), validated:
    the node-wide tables and this volume's, found by name, else by SOURCE. A name the file
    lacks is refused, naming the volumes it has, where the file was asked for or SOURCE and
    MOUNTPOINT must come from it; else only the node-wide tables are read."""
    from fusegw.config import ConfigError, find_volume, load_config, volume_names

    explicit = args.config or own.get("config")
    path = explicit or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path is None:
        return _Config()
    name = args.volume or own.get("volume")
    try:
        if name is None and args.source:
            name = find_volume(Path(path), Path(args.source))
        needed = explicit or not (args.source and args.mountpoint)
        if name is not None and (needed or name in volume_names(Path(path))):
            return _Config(load_config(Path(path), volume=name), name)
        return _Config(load_config(Path(path), volumes=False))
    except ConfigError as e:
        raise StartupError(e.one_line()) from None


def _options(own: dict[str, str]) -> dict[str, Any]:
    """The gateway's options given with -o, read as text (`xattr_limits`, `=1`, `=yes`)."""
    from fusegw.config import ConfigError, mount_options

    try:
        return mount_options({k: v for k, v in own.items() if k in MOUNT_OPTION_KEYS})
    except ConfigError as e:
        raise StartupError("; ".join(f"-o {problem}" for problem in e.problems)) from None


MOUNT_OPTION_KEYS = {"xattr_limits", "cache_timeout", "read_ahead_kb", "io_threads",
                     "io_inline_max_us", *LEDGER_OPTIONS, "control_socket",
                     "allow_exposed_source", "allow_nonempty_mountpoint", "adopt_nonempty",
                     "clear_dead"}


def settings_from_args(args: argparse.Namespace) -> tuple[MountSettings, dict[str, str]]:
    """Flags win over -o, -o over the volume's table in the config, that over defaults."""
    from fusegw.config import GATEWAY_OPTION_KEYS

    own, fuse = _split_options(args.options)
    opts = _options(own)
    conf = _read_config(args, own)
    table = conf.table
    if conf.name:  # the daemon finds this table by name: from / a relative path is not it
        own.setdefault("volume", conf.name)
    vopts = dict(table.options) if table else {}
    source = args.source or (table.path if table else None)
    mountpoint = args.mountpoint or (conf.node.mountpoint(conf.name)
                                     if conf.node and conf.name else None)
    if not source or not mountpoint:
        raise StartupError("SOURCE and MOUNTPOINT are needed (or --config FILE --volume NAME "
                           "with a [volume.NAME] table)")

    def pick(key: str, flag: object = None, default: Any = None) -> Any:
        for value in (flag, opts.get(key), vopts.get(key)):
            if value is not None:
                return value
        return default

    control = conf.node.control if conf.node else None
    settings = MountSettings(
        source=Path(source),
        mountpoint=Path(mountpoint),
        backend=args.backend or own.get("backend") or (table.backend if table else "vfs"),
        volume=args.volume or own.get("volume") or "",
        control_socket=_path(pick("control_socket", args.control_socket)),
        admin_group=args.admin_group or own.get("admin_group") or (
            control.admin_group if control else None),
        xattr_limits=pick("xattr_limits", args.xattr_limits, False),
        allow_exposed_source=pick("allow_exposed_source", args.allow_exposed_source, False),
        allow_nonempty_mountpoint=pick("allow_nonempty_mountpoint",
                                       args.allow_nonempty_mountpoint, False),
        adopt_nonempty=pick("adopt_nonempty", args.adopt_nonempty, False),
        clear_dead=pick("clear_dead", args.clear_dead, False),
        fsprefix=str(table.fsprefix) if table else ".",
        cache_timeout=pick("cache_timeout"),
        read_ahead_kb=pick("read_ahead_kb", default=4096),
        io_threads=pick("io_threads", default=16),
        io_inline_max_us=pick("io_inline_max_us"),
        ledger=pick("ledger", default="local"),
        redis_url=pick("redis_url"),
        node_id=pick("node_id"),
        grant_min_bytes=pick("grant_min_bytes", default=DEFAULT_GRANT_MIN_BYTES),
        grant_min_inodes=pick("grant_min_inodes", default=DEFAULT_GRANT_MIN_INODES),
        grant_lease=pick("grant_lease", default=DEFAULT_GRANT_LEASE),
        redis_wait=pick("redis_wait", default=DEFAULT_REDIS_WAIT),
        fuse_options=fuse,
        backend_options={k: v for k, v in vopts.items() if k not in GATEWAY_OPTION_KEYS},
        tcp_listen=args.tcp_listen or (control.tcp_listen if control else None),
        auth_token=os.environ.get("FUSEGW_AUTH_TOKEN") or (
            control.auth_token if control else None),
        **_client_api(args, conf),
    )
    return settings, own


def _client_api(args: argparse.Namespace, conf: _Config) -> dict[str, Any]:
    """The client API's listener and token settings: the flag, else the storage proxy's
    `[api.client] service-addr`; its secret from FUSEGW_CLIENT_SECRET (never a flag: a
    command line is visible to every user), else `[storage-proxy] secret`."""
    api = conf.node.api if conf.node else None
    proxy = conf.node.storage_proxy if conf.node else None
    listen = args.client_listen or (api.client.service_addr.listen()
                                    if api and api.client else None)
    values: dict[str, Any] = {
        "client_listen": None if args.client_socket else listen,
        "client_socket": _path(args.client_socket),
        "client_secret": os.environ.get("FUSEGW_CLIENT_SECRET") or (
            proxy.secret if proxy else None),
    }
    if proxy is not None:
        values["session_expire"] = proxy.session_expire
        values["max_upload_size"] = proxy.max_upload_size
    return values


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value else None


def run(args: argparse.Namespace) -> int:
    try:
        settings, own = settings_from_args(args)
        level = log_level(args.log_level or own.get("log_level") or "INFO")
        preflight(settings)
        log_file = args.log_file or own.get("log_file")
        if args.foreground:
            return _foreground(settings, log_file, level, args.ready_fd)
        return _background(args, settings, own, log_file, level)
    except StartupError as e:
        print(f"fusegw: {e}", file=sys.stderr)
        return 1


def _foreground(settings: MountSettings, log_file: str | None, level: str,
                ready_fd: int | None) -> int:
    logs.setup(level, log_file)
    _warn_if_exposed(settings)

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"OK\n")
            os.close(ready_fd)

    from fusegw.daemon import run_gateway  # pyfuse3, trio, hypercorn: only to serve

    try:
        run_gateway(settings, ready)
    except StartupError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"ERR {e}\n".encode())
        print(f"fusegw: {e}", file=sys.stderr)
        return 1
    return 0


def _warn_if_exposed(settings: MountSettings) -> None:
    """The opt-out serves an exposed source; the log says so at every start, with the fix."""
    exposure = source_exposure(settings.source) if settings.allow_exposed_source else None
    if exposure is not None:
        logging.getLogger("fusegw").warning("%s", exposure.warning())


def _background(args: argparse.Namespace, settings: MountSettings, own: dict[str, str],
                log_file: str | None, level: str) -> int:
    """Start the daemon detached and wait until it answers on the mount, or says why not."""
    if log_file is None:
        os.makedirs("/var/log/fusegw", exist_ok=True)
        log_file = f"/var/log/fusegw/{settings.volume}.log"
    log_file = os.path.abspath(log_file)
    read_fd, write_fd = os.pipe()
    argv = _daemon_argv(args, settings, own, log_file, level, write_fd)
    with open(log_file, "ab") as log:  # what the child says before its logging starts
        # cwd /: nothing of the caller's working directory is on the root daemon's path
        child = subprocess.Popen(argv, pass_fds=(write_fd,), start_new_session=True, cwd="/",
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        answer = pipe.readline().decode(errors="replace").strip()
    if answer == "OK":
        print(f"fusegw: {settings.source} mounted at {settings.mountpoint} (pid {child.pid}, "
              f"socket {settings.control_socket}, log {log_file})")
        return 0
    child.wait()
    reason = answer[4:] if answer.startswith("ERR ") else (
        f"the gateway exited with status {child.returncode}; see {log_file}")
    print(f"fusegw: {reason}", file=sys.stderr)
    return 1


def _daemon_argv(args: argparse.Namespace, settings: MountSettings, own: dict[str, str],
                 log_file: str, level: str, ready_fd: int) -> list[str]:
    """The foreground command the daemon runs, for a child started in / as root.

    `-I` (isolated mode) keeps the caller's cwd, PYTHONPATH and user site-packages off
    sys.path: `python -m fusegw` in a directory holding a planted `fusegw/` would import that
    as root. Every path is absolute, since the caller's cwd means nothing in /.
    """
    argv = [_interpreter(), "-I", "-m", "fusegw", "mount", str(settings.source),
            str(settings.mountpoint), "--foreground", "--ready-fd", str(ready_fd),
            "--log-file", log_file, "--log-level", level,
            "--control-socket", str(settings.control_socket),
            *[a for o in args.options for a in ("-o", _absolute_options(o))]]
    config = args.config and os.path.abspath(args.config)
    for flag, value in (("--backend", args.backend),
                        ("--volume", args.volume or own.get("volume")), ("--config", config),
                        ("--admin-group", args.admin_group), ("--tcp-listen", args.tcp_listen),
                        ("--client-listen", args.client_listen),
                        ("--client-socket",
                         args.client_socket and os.path.abspath(args.client_socket))):
        if value:
            argv += [flag, value]
    for flag, on in (("--xattr-limits", args.xattr_limits),
                     ("--allow-exposed-source", args.allow_exposed_source),
                     ("--allow-nonempty-mountpoint", args.allow_nonempty_mountpoint),
                     ("--adopt-nonempty", args.adopt_nonempty)):
        if on:
            argv.append(flag)
    return argv


def _interpreter() -> str:
    """This interpreter by absolute path (never looked up in the caller's PATH)."""
    if not sys.executable or not os.path.isabs(sys.executable):
        raise StartupError(f"cannot start the daemon: the interpreter's path "
                           f"{sys.executable!r} is not absolute")
    return sys.executable


def _absolute_options(value: str) -> str:
    """One -o value with its path-valued options (config=, control_socket=, log_file=) made
    absolute against the caller's cwd."""
    opts = []
    for opt in value.split(","):
        key, _, val = opt.partition("=")
        if key in PATH_OPTIONS and val:
            opt = f"{key}={os.path.abspath(val)}"
        opts.append(opt)
    return ",".join(opts)
