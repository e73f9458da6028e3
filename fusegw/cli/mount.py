"""`fusegw mount`: serve a volume. Without --foreground it returns once the mount answers."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from fusegw import logs
from fusegw.settings import MountSettings, StartupError, preflight, source_exposure

DEFAULT_CONFIG = "/etc/fusegw/fusegw.toml"
# Options mount(8)/mount.fuse3 pass that are not FUSE session options.
IGNORED_MOUNT_OPTIONS = {"rw", "dev", "suid", "exec", "auto", "noauto", "user", "nouser",
                         "defaults", "_netdev", "nofail", "async"}
OWN_OPTIONS = {"backend", "volume", "config", "control_socket", "admin_group", "xattr_limits",
               "cache_timeout", "read_ahead_kb", "log_file", "log_level",
               "allow_exposed_source"}
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
    p.add_argument("--xattr-limits", action="store_true", default=None,
                   help="allow root in this mount namespace to set limits with setfattr")
    p.add_argument("--allow-exposed-source", action="store_true", default=None,
                   help="serve a SOURCE that users other than root can reach directly "
                   "(they bypass every quota there; refused by default)")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated mount options (FUSE options and the ones above)")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    p.add_argument("--log-file", help="log here (default: stderr in the foreground, "
                   "/var/log/fusegw/<volume>.log in the background)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _split_options(values: list[str]) -> tuple[dict[str, str], set[str]]:
    own: dict[str, str] = {}
    fuse: set[str] = set()
    for value in values:
        for opt in filter(None, value.split(",")):
            key, _, val = opt.partition("=")
            if key in OWN_OPTIONS:
                own[key] = val or "1"
            elif key not in IGNORED_MOUNT_OPTIONS:
                fuse.add(opt)
    return own, fuse


def _config_volume(path: str | None, name: str | None, source: str | None) -> dict[str, Any]:
    """The `[volume.NAME]` table that names this volume (by name, else by path)."""
    config_path = path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if config_path is None:
        return {}
    try:
        with open(config_path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise StartupError(f"config {config_path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise StartupError(f"config {config_path}: {e}") from None
    volumes = data.get("volume", {})
    if name and name in volumes:
        return dict(volumes[name], name=name, _node=data)
    for vname, table in volumes.items():
        if source and os.path.abspath(table.get("path", "")) == os.path.abspath(source):
            return dict(table, name=vname, _node=data)
    return {"_node": data}


def settings_from_args(args: argparse.Namespace) -> tuple[MountSettings, dict[str, str]]:
    own, fuse = _split_options(args.options)
    volume = args.volume or own.get("volume")
    conf = _config_volume(args.config or own.get("config"), volume, args.source)
    node = conf.pop("_node", {})
    if "name" in conf:  # the daemon finds this table by name: from / a relative path is not it
        own.setdefault("volume", conf["name"])
    vopts = dict(conf.get("options", {}))
    source = args.source or conf.get("path")
    mountpoint = args.mountpoint or conf.get("mountpoint")
    if not source or not mountpoint:
        raise StartupError("SOURCE and MOUNTPOINT are needed (or --config with a "
                           "[volume.NAME] table that has path and mountpoint)")
    configured_exposed = _flag(vopts.pop("allow_exposed_source", False), "allow_exposed_source")
    settings = MountSettings(
        source=Path(source),
        mountpoint=Path(mountpoint),
        backend=args.backend or own.get("backend") or conf.get("backend", "vfs"),
        volume=volume or conf.get("name", ""),
        control_socket=_path(args.control_socket or own.get("control_socket")
                             or vopts.pop("control_socket", None)),
        admin_group=(args.admin_group or own.get("admin_group")
                     or node.get("control", {}).get("admin_group")),
        xattr_limits=bool(args.xattr_limits or own.get("xattr_limits") == "1"
                          or vopts.pop("xattr_limits", False)),
        allow_exposed_source=(configured_exposed or bool(args.allow_exposed_source)
                              or own.get("allow_exposed_source") == "1"),
        cache_timeout=_float(own.get("cache_timeout") or vopts.pop("cache_timeout", None)),
        read_ahead_kb=_int(own.get("read_ahead_kb") or vopts.pop("read_ahead_kb", 4096),
                           "read_ahead_kb"),
        fuse_options=fuse,
        backend_options=vopts,
        tcp_listen=args.tcp_listen or node.get("control", {}).get("tcp_listen"),
        auth_token=(os.environ.get("FUSEGW_AUTH_TOKEN")
                    or node.get("control", {}).get("auth_token")),
    )
    return settings, own


def _flag(value: object, name: str) -> bool:
    """A config-file boolean; anything else is refused rather than read as yes (`"no"`)."""
    if not isinstance(value, bool):
        raise StartupError(f"{name} must be true or false, not {value!r}")
    return value


def _int(value: object, name: str) -> int:
    text = str(value)
    if not text.isdigit():
        raise StartupError(f"{name} must be a whole number, not {value!r}")
    return int(text)


def _float(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(str(value))
    except ValueError:
        raise StartupError(f"cache_timeout must be a number of seconds, not {value!r}") from None


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def run(args: argparse.Namespace) -> int:
    try:
        settings, own = settings_from_args(args)
        preflight(settings)
        log_file = args.log_file or own.get("log_file")
        level = args.log_level or own.get("log_level") or "INFO"
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
                        ("--admin-group", args.admin_group), ("--tcp-listen", args.tcp_listen)):
        if value:
            argv += [flag, value]
    for flag, on in (("--xattr-limits", args.xattr_limits),
                     ("--allow-exposed-source", args.allow_exposed_source)):
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
