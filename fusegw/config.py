"""The node's configuration: one TOML file, parsed into one typed, validated model.

`/etc/fusegw/fusegw.toml` describes a node: `[volume.NAME]` tables (`backend`, `path`,
`mountpoint`, `options`), the control endpoint (`[control]`), and mountd's own settings
(`[mountd]`). pydantic does the checking, so an unknown key, a wrong type or a missing value is
refused with the table and key it is in, never half-read.

Every command that reads the file (`fusegw mount --config`, `fusegw check-config`,
`fusegw-mountd`) goes through `load_config`, which raises `ConfigError` with one message per
problem, each naming the file, the table, the key and what is wrong.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path("/etc/fusegw/fusegw.toml")
DEFAULT_MOUNT_ROOT = Path("/mnt/fusegw")
DEFAULT_NODE_SOCKET = Path("/run/fusegw/fusegw.sock")
RUN_DIR = Path("/run/fusegw")

FilePath = Annotated[Path, Field(strict=False)]
"""A path, written as a TOML string (strict mode would want a Path object)."""


class _Strict(BaseModel):
    """No unknown keys, no silent coercion of one type into another."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              populate_by_name=True)


class VolumeConfig(_Strict):
    """One `[volume.NAME]` table."""

    backend: str = "vfs"
    path: FilePath
    mountpoint: FilePath | None = None  # default: <mountd.mount_root>/<NAME>
    options: dict[str, Any] = Field(default_factory=dict)


class ControlConfig(_Strict):
    """`[control]`: who may use the control sockets, and the node endpoint's listeners."""

    admin_group: str | None = None
    socket: FilePath = DEFAULT_NODE_SOCKET  # the node endpoint (mountd)
    tcp_listen: str | None = None  # HOST:PORT, off by default
    auth_token: str | None = None  # required with tcp_listen (or FUSEGW_AUTH_TOKEN)


class MountdConfig(_Strict):
    """`[mountd]`: how the node supervisor runs and heals its gateways."""

    mount_root: FilePath = DEFAULT_MOUNT_ROOT  # mount points of tables that name none
    health_interval: float = Field(2.0, gt=0)  # seconds between health checks of a gateway
    health_timeout: float = Field(5.0, gt=0)  # a stat of the mount and GET / must answer within
    restart_backoff_max: float = Field(30.0, gt=0)  # the longest wait between restarts
    log_dir: FilePath = Path("/var/log/fusegw")


class NodeConfig(_Strict):
    """The whole file."""

    volume: dict[str, VolumeConfig] = Field(default_factory=dict)
    control: ControlConfig = Field(default_factory=ControlConfig)
    mountd: MountdConfig = Field(default_factory=MountdConfig)

    def mountpoint(self, name: str) -> Path:
        """Where volume `name` is mounted: its table's mountpoint, else under mount_root."""
        table = self.volume[name]
        return table.mountpoint or self.mountd.mount_root / name

    def control_socket(self, name: str) -> Path:
        """The control socket of volume `name`'s gateway."""
        socket = self.volume[name].options.get("control_socket")
        return Path(socket) if isinstance(socket, str) else RUN_DIR / f"{name}.sock"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` has one line per mistake."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.path = path
        self.problems = problems


def _where(loc: tuple[int | str, ...]) -> str:
    """`volume.local.backend` as the TOML table and key: `[volume.local] backend`."""
    parts = [str(p) for p in loc]
    if len(parts) == 1:
        return parts[0]
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


def parse_config(path: Path, data: dict[str, Any]) -> NodeConfig:
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as e:
        problems = [f"{_where(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(path, problems) from None


def load_config(path: Path = DEFAULT_CONFIG) -> NodeConfig:
    """Read and validate the file; ConfigError names every problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, [e.strerror or str(e)]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None
    return parse_config(path, data)
