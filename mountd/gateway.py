"""Starting and stopping one gateway process: `python -I -m fusegw mount ... --foreground`.

Each gateway gets a configuration file of its own, written by mountd from the node's file:
its `[volume.NAME]` table and the admin group, nothing else. The node's `[control]` listeners
belong to mountd (the node endpoint): a gateway reading the node's file would bind the same
TCP address and fail, or serve a second, unrouted API. The file is 0600 (a table's options may
hold vendor credentials) and lives in mountd's runtime directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import psutil
import tomli_w
import trio

from backends.atomic import write_atomic
from fusegw.config import NodeConfig, VolumeConfig

log = logging.getLogger("fusegw.mountd")

# mountd's own environment that must not reach a gateway: systemd's notify and watchdog
# sockets (NotifyAccess=main refuses a gateway's messages anyway), the auth token of the node's
# TCP listener, and the CLI's socket choice.
PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
               "LISTEN_FDNAMES", "FUSEGW_AUTH_TOKEN", "FUSEGW_SOCKET")
KILL_WAIT = 10.0


@dataclass(frozen=True)
class VolumeSpec:
    """What one volume's gateway is started with. Two specs that compare equal start the same
    gateway, so a reload restarts exactly the volumes whose spec changed; the admin group is
    left out of the comparison (it reaches a gateway at its next start, see Node.reload)."""

    name: str
    table: VolumeConfig
    mountpoint: Path
    control_socket: Path
    admin_group: str | None = field(default=None, compare=False)
    client: ClientSpec | None = field(default=None, repr=False)  # the node's client API

    @classmethod
    def of(cls, config: NodeConfig, name: str) -> VolumeSpec:
        return cls(name, config.volume[name], Path(os.path.abspath(config.mountpoint(name))),
                   Path(os.path.abspath(config.control_socket(name))),
                   config.control.admin_group, ClientSpec.of(config))

    @property
    def source(self) -> Path:
        return Path(os.path.abspath(self.table.path))

    def config_text(self) -> str:
        """The gateway's own configuration file."""
        table = {"backend": self.table.backend, "path": str(self.source),
                 "mountpoint": str(self.mountpoint), "options": dict(self.table.options)}
        fsprefix = getattr(self.table, "fsprefix", None)  # the storage proxy's key, if known
        if fsprefix is not None:
            table["fsprefix"] = str(fsprefix)
        doc: dict[str, Any] = {"control": {"admin_group": self.admin_group},
                               "volume": {self.name: table}}
        if self.client is not None:  # the token settings; the secret goes in the environment
            doc["storage-proxy"] = {"session-expire": self.client.session_expire,
                                    "max-upload-size": self.client.max_upload_size}
        return tomli_w.dumps(_plain(doc))


@dataclass(frozen=True)
class ClientSpec:
    """The node's client API (`[api.client]` with a secret): each gateway serves its own on a
    Unix socket in mountd's runtime directory, and mountd's client router forwards to it."""

    secret: str = field(repr=False)
    session_expire: float
    max_upload_size: int

    @classmethod
    def of(cls, config: NodeConfig) -> ClientSpec | None:
        proxy = config.storage_proxy
        secret = client_secret(config)
        if config.api is None or config.api.client is None or not secret:
            return None
        return cls(secret, proxy.session_expire if proxy else 86400.0,
                   proxy.max_upload_size if proxy else 100 * 2**30)


def client_secret(config: NodeConfig) -> str | None:
    """The secret that signs the client API's tokens: FUSEGW_CLIENT_SECRET, else
    `[storage-proxy] secret`."""
    proxy = config.storage_proxy
    return os.environ.get("FUSEGW_CLIENT_SECRET") or (proxy.secret if proxy else None)


def _plain(value: Any) -> Any:
    """What TOML can hold: no None (TOML has no null), paths as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value if v is not None]
    return str(value) if isinstance(value, PurePath) else value


@dataclass(frozen=True)
class Launcher:
    """How gateways are started on this node: the interpreter, where their files go."""

    runtime_dir: Path  # the gateways' configuration files
    log_dir: Path
    clear_dead: bool  # `fusegw mount` clears a dead mount itself (--clear-dead)
    python: str = sys.executable

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def client_socket(self, name: str) -> Path:
        """Where the gateway of volume `name` serves its client API (mode 0600)."""
        return self.runtime_dir / f"{name}.client.sock"

    def argv(self, spec: VolumeSpec, config_file: Path) -> list[str]:
        argv = [self.python, "-I", "-m", "fusegw", "mount", str(spec.source),
                str(spec.mountpoint), "--foreground", "--config", str(config_file),
                "--volume", spec.name, "--control-socket", str(spec.control_socket),
                "--log-file", str(self.log_file(spec.name))]
        if self.clear_dead:
            argv.append("--clear-dead")
        if spec.client is not None:
            argv += ["--client-socket", str(self.client_socket(spec.name))]
        return argv

    def write_config(self, spec: VolumeSpec) -> Path:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.runtime_dir / f"{spec.name}.toml"
        write_atomic(path, spec.config_text().encode(), 0o600)
        return path

    def forget(self, spec: VolumeSpec) -> None:
        """Remove the gateway's configuration file once it is stopped (it may hold vendor
        credentials; a start writes it again)."""
        with contextlib.suppress(OSError):
            os.unlink(self.runtime_dir / f"{spec.name}.toml")

    async def spawn(self, spec: VolumeSpec) -> tuple[trio.Process, int]:
        """Start the gateway; returns it and the log's size before it, so what it writes at
        start (a refusal) can be told from older lines."""
        config_file = self.write_config(spec)
        self.log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in PRIVATE_ENV and k != "FUSEGW_CLIENT_SECRET"}
        if spec.client is not None:  # never on a command line: every user can read those
            env["FUSEGW_CLIENT_SECRET"] = spec.client.secret
        log_path = self.log_file(spec.name)
        with open(log_path, "ab") as log_fd:  # what it prints before its logging starts
            offset = log_fd.tell()
            proc = await trio.lowlevel.open_process(
                self.argv(spec, config_file), stdin=subprocess.DEVNULL, stdout=log_fd,
                stderr=log_fd, cwd="/", env=env, start_new_session=True)
        log.info("gateway started volume=%s pid=%d", spec.name, proc.pid)
        return proc, offset


def refusal(log_path: Path, offset: int) -> str | None:
    """The one-line refusal (`fusegw: ...`) a gateway printed since `offset`, if any."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(offset, os.path.getsize(log_path) - 8192))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    said = [line[len("fusegw: "):] for line in tail if line.startswith("fusegw: ")]
    return said[-1] if said else None


def exit_cause(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


async def terminate(proc: trio.Process, grace: float) -> None:
    """SIGTERM (and SIGCONT, so a stopped gateway can act on it: a clean unmount keeps its
    ledger and needs no rescan), then SIGKILL after `grace` seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        with trio.move_on_after(grace):
            await proc.wait()
    if proc.returncode is None:
        log.warning("gateway did not stop within %gs, killing pid=%d", grace, proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with trio.move_on_after(KILL_WAIT):  # a process stuck in the kernel (D state)
            await proc.wait()
        if proc.returncode is None:
            log.error("gateway survives SIGKILL pid=%d (stuck in the kernel)", proc.pid)


async def end_stray(pid: int, grace: float) -> None:
    """Stop a gateway this mountd did not start (one left running by a mountd that was
    killed, outside systemd's cgroup clean-up): SIGTERM, then SIGKILL after `grace`. It is
    not our child, so its end is polled (a zombie nobody reaps counts as ended)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, KILL_WAIT)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)
        with trio.move_on_after(wait):
            while _running(pid):
                await trio.sleep(0.05)
            return


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def is_gateway(pid: int) -> bool:
    """Does `pid` run `fusegw mount`?"""
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "fusegw" in argv and "mount" in argv


def supervisor_of(pid: int) -> int | None:
    """The live fusegw-mountd whose child `pid` is, if any (an orphan's parent is init)."""
    try:
        parent = psutil.Process(pid).parent()
        argv = parent.cmdline() if parent is not None else []
    except psutil.Error:
        return None
    if parent is not None and any("fusegw-mountd" in a or a == "mountd.main" for a in argv):
        return int(parent.pid)
    return None


async def supports_clear_dead(python: str = sys.executable) -> bool:
    """Does `fusegw mount` clear a dead mount itself? Asked of its --help, once."""
    with trio.move_on_after(30):
        result = await trio.run_process([python, "-I", "-m", "fusegw", "mount", "--help"],
                                        capture_stdout=True, capture_stderr=True, check=False)
        return b"--clear-dead" in result.stdout
    return False
