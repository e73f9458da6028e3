"""The node's configuration: one TOML file, parsed into one typed, validated model.

`/etc/fusegw/fusegw.toml` describes a node: `[volume.NAME]` tables (`backend`, `path`,
`mountpoint`, `options`), the control endpoint (`[control]`), and mountd's own settings
(`[mountd]`). pydantic does the checking, so an unknown key, a wrong type or a missing value is
refused with the table and key it is in, never half-read.

A storage proxy's `storage-proxy.toml` is read as it is: its `[volume.NAME]` tables are the
same (a table without `mountpoint` is mounted at `<mountd.mount_root>/NAME`), its
`[api.manager]` `service-addr` and `secret` are the node endpoint's TCP listener and token,
its `[api.client]` is kept for the client API, and its `[storage-proxy]`, `[etcd]`,
`[logging]`, `[debug]` (and the later releases' `[pyroscope]`, `[otel]`, ...) are accepted and
ignored. Relative paths are relative to the file's directory, as the storage proxy reads them.

Every command that reads the file (`fusegw mount --config`, `fusegw check-config`,
`fusegw-mountd`) goes through `load_config`, which raises `ConfigError` with one message per
problem, each naming the file, the table, the key and what is wrong.
"""

from __future__ import annotations

import functools
import operator
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from backends.base import QuotaBackend
from backends.registry import BACKENDS
from fusegw.settings import (
    DEFAULT_GRANT_LEASE,
    DEFAULT_GRANT_MIN_BYTES,
    DEFAULT_GRANT_MIN_INODES,
    DEFAULT_REDIS_WAIT,
    StartupError,
    group_id,
)

DEFAULT_CONFIG = Path("/etc/fusegw/fusegw.toml")
DEFAULT_MOUNT_ROOT = Path("/mnt/fusegw")
DEFAULT_NODE_SOCKET = Path("/run/fusegw/fusegw.sock")
RUN_DIR = Path("/run/fusegw")

STORAGE_PROXY_BACKENDS = frozenset({"kmanila"})
"""Backends the storage proxy (23.03) has and fusegw does not serve yet: named as such."""


# -- paths --------------------------------------------------------------------------------------


def _absolute(path: Path, info: ValidationInfo) -> Path:
    """A relative path is relative to the file's directory (`base` in the context), as the
    storage proxy reads its file; so the daemon, which runs in /, reads the same paths."""
    context = info.context if isinstance(info.context, Mapping) else {}
    base = context.get("base") or os.getcwd()
    return Path(os.path.normpath(os.path.join(base, path)))


def _existing_dir(path: Path) -> Path:
    """A volume's path must be there now (the storage proxy demands it too); an error that
    is not ENOENT (a dead mount: ENOTCONN) is named, never a traceback."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is not a directory")
    return path


def _inside_volume(path: Path) -> Path:
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{path} must be relative to the volume's path, without '..'")
    return path


FilePath = Annotated[Path, Field(strict=False), AfterValidator(_absolute)]
"""A path, written as a TOML string, made absolute against the file's directory."""
VolumeDir = Annotated[FilePath, AfterValidator(_existing_dir)]
RelativePath = Annotated[Path, Field(strict=False), AfterValidator(_inside_volume)]


# -- sizes and durations written as text --------------------------------------------------------


_DURATION_UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_SIZE_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50, "e": 2**60}


def duration_seconds(value: Any) -> float:
    """The storage proxy's `session-expire` (its `TimeDuration`): a number of seconds, or
    `"30s"`, `"15m"`, `"12h"`, `"1d"`, `"2w"`; its `yr`/`mo` forms are refused by name
    (a token outliving weeks is a mistake here, not a calendar question)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number of seconds or a text like '1d', '12h', '30m'")
    text = str(value).strip()
    unit = text[-1:].lower()
    try:
        seconds = float(text[:-1]) * _DURATION_UNITS[unit] if unit in _DURATION_UNITS \
            else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is no duration: use seconds or a text like '1d', "
                         "'12h', '30m', '10s', '2w'") from None
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{value!r} must be a positive duration")
    return seconds


def binary_size(value: Any) -> int:
    """The storage proxy's `max-upload-size` (its `BinarySize`): bytes, or `"100g"`, `"512m"`;
    the gateway's `grant_min_bytes` is written the same way (`"64k"`, `"1m"`)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("must be a number of bytes or a text like '100g'")
    text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
    factor = _SIZE_UNITS.get(text[-1:], 1)
    try:
        size = int(float(text[:-1] if factor > 1 else text) * factor)
    except ValueError:
        raise ValueError(f"{value!r} is no size: use bytes or a text like '100g'") from None
    if size <= 0:
        raise ValueError(f"{value!r} must be a positive size")
    return size


# -- the tables ---------------------------------------------------------------------------------


class _Strict(BaseModel):
    """No unknown keys, no silent coercion of one type into another."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True,
                              populate_by_name=True)


class _Foreign(BaseModel):
    """A storage-proxy section fusegw reads as the storage proxy does (its `ToBool`,
    `ToInt`: lax types) and mostly ignores; later releases add keys, so extra keys pass."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


def _known_group(name: str | None) -> str | None:
    """The admin group must exist now: the control sockets are created with it."""
    if name and not name.isdigit():
        try:
            group_id(name)
        except StartupError as e:
            raise ValueError(str(e)) from None
    return name


def _host_port(text: str | None) -> str | None:
    if text is None:
        return None
    _host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} must be HOST:PORT with a port from 1 to 65535")
    return text


class VolumeConfig(_Strict):
    """One `[volume.NAME]` table (the storage proxy's, plus `mountpoint`)."""

    backend: str = "vfs"
    path: VolumeDir
    mountpoint: FilePath | None = None  # default: <mountd.mount_root>/<NAME>
    fsprefix: RelativePath = Path(".")  # the storage proxy's: where vfolders live in the volume
    options: dict[str, Any] = Field(default_factory=dict)


_NODE_ID = re.compile(r"[A-Za-z0-9._:/@-]{1,200}")


def _node_id(value: str | None) -> str | None:
    """A node's name is a field of the shared ledger's Redis hashes and of its log lines:
    printable, no separators that would need quoting."""
    if value is not None and not _NODE_ID.fullmatch(value):
        raise ValueError(f"{value!r} must be 1 to 200 characters of A-Z, a-z, 0-9 and . _ : / "
                         "@ -")
    return value


class GatewayOptions(_Strict):
    """The gateway's own keys of `[volume.NAME.options]`; every other key is the backend's
    (`QuotaBackend.option_keys`). The ledger's keys (`ledger` to `redis_wait`) share a
    volume's limits with other nodes' gateways through Redis (issue 13); whether they agree
    with each other (redis_url with ledger = "redis" only) and whether Redis answers is
    `fusegw mount`'s preflight to say, once -o and the file are merged."""

    xattr_limits: bool = False
    cache_timeout: Annotated[float, Field(gt=0)] | None = None
    read_ahead_kb: Annotated[int, Field(ge=0)] = 4096
    io_threads: Annotated[int, Field(ge=1, le=1024)] = 16
    io_inline_max_us: Annotated[float, Field(ge=0)] | None = None
    control_socket: FilePath | None = None
    allow_exposed_source: bool = False
    allow_nonempty_mountpoint: bool = False
    adopt_nonempty: bool = False
    ledger: Literal["local", "redis"] = "local"
    redis_url: str | None = None
    node_id: Annotated[str | None, AfterValidator(_node_id)] = None
    grant_min_bytes: Annotated[int, BeforeValidator(binary_size), Field(ge=4096)] = (
        DEFAULT_GRANT_MIN_BYTES)
    grant_min_inodes: Annotated[int, Field(ge=1)] = DEFAULT_GRANT_MIN_INODES
    grant_lease: Annotated[float, Field(ge=1)] = DEFAULT_GRANT_LEASE
    redis_wait: Annotated[float, Field(ge=0)] = DEFAULT_REDIS_WAIT


GATEWAY_OPTION_KEYS = frozenset(GatewayOptions.model_fields)


class ControlConfig(_Strict):
    """`[control]`: who may use the control sockets, and the node endpoint's listeners."""

    admin_group: Annotated[str | None, AfterValidator(_known_group)] = None
    socket: FilePath = DEFAULT_NODE_SOCKET  # the node endpoint (mountd)
    tcp_listen: Annotated[str | None, AfterValidator(_host_port)] = None  # off by default
    auth_token: str | None = None  # required with tcp_listen (or FUSEGW_AUTH_TOKEN)


class MountdConfig(_Strict):
    """`[mountd]`: how the node supervisor runs and heals its gateways."""

    mount_root: FilePath = DEFAULT_MOUNT_ROOT  # mount points of tables that name none
    health_interval: float = Field(2.0, gt=0)  # seconds between health checks of a gateway
    health_timeout: float = Field(5.0, gt=0)  # a stat of the mount and GET / must answer within
    restart_backoff_max: float = Field(30.0, gt=0)  # the longest wait between restarts
    log_dir: FilePath = Path("/var/log/fusegw")


class HostPort(BaseModel):
    """The storage proxy's address: `"HOST:PORT"`, `[HOST, PORT]` or `{host, port}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = ""
    port: int = Field(ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            host, sep, port = value.rpartition(":")
            if not sep:
                raise ValueError(f"{value!r} must be HOST:PORT")
            return {"host": host.strip("[]"), "port": port}
        if isinstance(value, Sequence):
            if len(value) != 2:
                raise ValueError("must be [HOST, PORT]")
            return {"host": value[0], "port": value[1]}
        return value

    def listen(self) -> str:
        """As `tcp_listen` says it; a blank host is every interface, as for the proxy."""
        host = self.host or "0.0.0.0"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


class ClientAPIConfig(_Foreign):
    """`[api.client]`: the users' API (downloads, uploads), kept for when fusegw serves it."""

    model_config = ConfigDict(extra="forbid")

    service_addr: HostPort = Field(alias="service-addr")
    ssl_enabled: bool = Field(False, alias="ssl-enabled")
    ssl_cert: FilePath | None = Field(None, alias="ssl-cert")
    ssl_privkey: FilePath | None = Field(None, alias="ssl-privkey")


class ManagerAPIConfig(ClientAPIConfig):
    """`[api.manager]`: the manager's API, which the node endpoint serves: `service-addr` is
    its TCP listener and `secret` its token (`X-BackendAI-Storage-Auth-Token`)."""

    secret: str
    announce_addr: HostPort | None = Field(None, alias="announce-addr")  # later releases
    announce_internal_addr: HostPort | None = Field(None, alias="announce-internal-addr")
    internal_addr: HostPort | None = Field(None, alias="internal-addr")


class APIConfig(_Strict):
    """`[api]` of a storage-proxy.toml."""

    client: ClientAPIConfig | None = None
    manager: ManagerAPIConfig | None = None


class StorageProxySection(_Foreign):
    """`[storage-proxy]`: the proxy's own process settings. `secret` signs the client API's
    JWTs, `session-expire` bounds their life (and an abandoned upload's), `max-upload-size`
    one upload's size; the rest is ignored."""

    node_id: str | None = Field(None, alias="node-id")
    secret: str | None = None
    session_expire: Annotated[float, BeforeValidator(duration_seconds)] = Field(
        86400.0, alias="session-expire")
    max_upload_size: Annotated[int, BeforeValidator(binary_size)] = Field(
        100 * 2**30, alias="max-upload-size")


# -- one options model and one volume model per backend ----------------------------------------


def _options_dict(options: GatewayOptions) -> dict[str, Any]:
    """What the table said (absolute paths as text), as the plain dict `options` is."""
    return options.model_dump(mode="json", exclude_unset=True)


def _same(value: dict[str, Any]) -> dict[str, Any]:
    return value


def _volume_model(backend: type[QuotaBackend]) -> type[VolumeConfig]:
    """`[volume.NAME]` for one backend: its `options` may hold the gateway's keys and the
    keys the backend declares it reads, nothing else."""
    keys: dict[str, Any] = {key: (Any, None) for key in sorted(backend.option_keys)}
    options_model = create_model(f"{backend.__name__}Options", __base__=GatewayOptions, **keys)
    options = Annotated[options_model, AfterValidator(_options_dict),
                        PlainSerializer(_same, return_type=dict[str, Any])]
    return create_model(f"{backend.__name__}Volume", __base__=VolumeConfig,
                        options=(options, Field(default_factory=dict)))


def _backend_tag(table: Any) -> str:
    """Which volume model reads a table; a backend that is no text is the `vfs` model's
    type error."""
    value = table.get("backend", "vfs") if isinstance(table, Mapping) else getattr(
        table, "backend", "vfs")
    return value if isinstance(value, str) else "vfs"


VOLUME_MODELS = {name: _volume_model(cls) for name, cls in BACKENDS.items()}

if TYPE_CHECKING:
    AnyVolume = VolumeConfig
else:
    AnyVolume = Annotated[
        functools.reduce(operator.or_, (Annotated[model, Tag(name)]
                                        for name, model in VOLUME_MODELS.items())),
        Discriminator(_backend_tag, custom_error_type="unknown_backend",
                      custom_error_message="unknown backend")]


class NodeConfig(_Strict):
    """The whole file."""

    mountd: MountdConfig = Field(default_factory=MountdConfig)  # before volume: mount_root
    control: ControlConfig = Field(default_factory=ControlConfig)
    volume: dict[str, AnyVolume] = Field(default_factory=dict)
    api: APIConfig | None = None
    storage_proxy: StorageProxySection | None = Field(None, alias="storage-proxy")
    # Read and ignored: the storage proxy's own concerns.
    etcd: dict[str, Any] = Field(default_factory=dict)
    logging: dict[str, Any] = Field(default_factory=dict)
    debug: dict[str, Any] = Field(default_factory=dict)
    pyroscope: dict[str, Any] = Field(default_factory=dict)
    otel: dict[str, Any] = Field(default_factory=dict)
    service_discovery: dict[str, Any] = Field(default_factory=dict, alias="service-discovery")
    artifact_storages: dict[str, Any] = Field(default_factory=dict, alias="artifact-storages")
    artifact_registries: dict[str, Any] = Field(default_factory=dict,
                                                alias="artifact-registries")
    reservoir_client: dict[str, Any] = Field(default_factory=dict, alias="reservoir-client")

    @model_validator(mode="before")
    @classmethod
    def _manager_api(cls, data: Any) -> Any:
        """`[api.manager]` gives the node endpoint's TCP listener and token where
        `[control]` names none (a differing one is refused below)."""
        manager = _table(_table(data, "api"), "manager")
        if not manager or not isinstance(data.get("control", {}), Mapping):
            return data
        control = dict(data.get("control", {}))
        try:
            addr = HostPort.model_validate(manager.get("service-addr",
                                                       manager.get("service_addr")))
        except ValidationError:
            pass  # reported where it is, in [api.manager]
        else:
            control.setdefault("tcp_listen", addr.listen())
        if isinstance(manager.get("secret"), str):
            control.setdefault("auth_token", manager["secret"])
        return {**data, "control": control}

    @field_validator("volume")
    @classmethod
    def _distinct_mountpoints(cls, volumes: dict[str, VolumeConfig], info: ValidationInfo
                              ) -> dict[str, VolumeConfig]:
        mount_root = info.data.get("mountd", MountdConfig()).mount_root
        seen: dict[Path, str] = {}
        clashes = []
        for name, table in volumes.items():
            mountpoint = table.mountpoint or mount_root / name
            if mountpoint in seen:
                clashes.append(f"[volume.{seen[mountpoint]}] and [volume.{name}] both mount "
                               f"at {mountpoint}")
            seen.setdefault(mountpoint, name)
        if clashes:
            raise ValueError("; ".join(clashes) + " (each volume needs its own mountpoint)")
        return volumes

    @model_validator(mode="after")
    def _one_listener(self) -> NodeConfig:
        manager = self.api.manager if self.api else None
        if manager is None:
            return self
        listen = manager.service_addr.listen()
        if self.control.tcp_listen != listen:
            raise ValueError(f"[control] tcp_listen {self.control.tcp_listen} and "
                             f"[api.manager] service-addr {listen} differ: name one")
        if self.control.auth_token != manager.secret:
            raise ValueError("[control] auth_token and [api.manager] secret differ: name one")
        return self

    def mountpoint(self, name: str) -> Path:
        """Where volume `name` is mounted: its table's mountpoint, else under mount_root."""
        table = self.volume[name]
        return table.mountpoint or self.mountd.mount_root / name

    def control_socket(self, name: str) -> Path:
        """The control socket of volume `name`'s gateway."""
        socket = self.volume[name].options.get("control_socket")
        return Path(socket) if isinstance(socket, (str, Path)) else RUN_DIR / f"{name}.sock"

    def notes(self) -> list[str]:
        """What the file asks for that the node will not do as asked (not errors)."""
        notes = []
        manager = self.api.manager if self.api else None
        if manager is not None and manager.ssl_enabled:
            notes.append(f"[api.manager] ssl-enabled: the node endpoint serves plain HTTP on "
                         f"{manager.service_addr.listen()} (no TLS); give the manager an "
                         "http:// address for this node, or put a TLS proxy in front")
        if self.control.tcp_listen and self.control.auth_token is None:
            notes.append(f"[control] tcp_listen {self.control.tcp_listen} has no auth_token: "
                         "the listener starts only with FUSEGW_AUTH_TOKEN set")
        if self.api and self.api.client:
            secret = self.storage_proxy.secret if self.storage_proxy else None
            notes.append(f"[api.client] service-addr {self.api.client.service_addr.listen()}: "
                         "the client API (downloads, uploads) of every volume, served by "
                         "fusegw-mountd (a gateway started by hand serves its own volume only)"
                         + ("" if secret else "; it needs [storage-proxy] secret or "
                            "FUSEGW_CLIENT_SECRET"))
        return notes


def _table(data: Any, key: str) -> Mapping[str, Any]:
    value = data.get(key) if isinstance(data, Mapping) else None
    return value if isinstance(value, Mapping) else {}


# -- errors -------------------------------------------------------------------------------------


class ConfigError(Exception):
    """The configuration cannot be used; `problems` has one line per mistake."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {p}" for p in problems))
        self.path = path
        self.problems = problems

    def one_line(self) -> str:
        """Every problem on one line, for a refusal that must be one line."""
        return f"{self.path}: {'; '.join(self.problems)}"


_SECRET_WORDS = ("secret", "token", "password", "redis_url")
_MESSAGES = {"bool_type": "must be true or false", "bool_parsing": "must be true or false",
             "path_type": "must be a path (text)", "string_type": "must be text",
             "dict_type": "must be a table"}


def _where(loc: Sequence[int | str]) -> str:
    """`volume.local.backend` as the TOML table and key: `[volume.local] backend`."""
    parts = [str(p) for p in loc]
    if len(parts) <= 1:
        return "".join(parts)
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


def _without_tag(loc: tuple[int | str, ...]) -> tuple[tuple[int | str, ...], str | None]:
    """A volume's errors come through its backend's model, whose tag pydantic puts in the
    location (`volume.local.vfs.path`); the file has no such table."""
    if len(loc) > 2 and loc[0] == "volume" and loc[2] in VOLUME_MODELS:
        return (*loc[:2], *loc[3:]), str(loc[2])
    return loc, None


def _unknown_backend(table: Any) -> str:
    name = table.get("backend") if isinstance(table, Mapping) else table
    serves = ", ".join(sorted(BACKENDS))
    if name in STORAGE_PROXY_BACKENDS:
        return (f"backend {name!r} is the storage proxy's and fusegw does not serve it yet "
                f"(it serves {serves})")
    return f"unknown backend {name!r} (fusegw serves {serves})"


def _unknown_key(loc: tuple[int | str, ...], backend: str | None) -> str:
    if backend is not None and len(loc) == 4 and loc[2] == "options":
        own = ", ".join(sorted(BACKENDS[backend].option_keys)) or "none"
        return (f"unknown option: backend {backend} reads {own}; the gateway reads "
                f"{', '.join(sorted(GATEWAY_OPTION_KEYS))}")
    return "unknown key" if len(loc) > 1 else "unknown table or key at the top level"


def _problem(err: ErrorDetails) -> str:
    loc, backend = _without_tag(err["loc"])
    kind = err["type"]
    if kind == "unknown_backend":
        return f"{_where((*loc, 'backend'))}: {_unknown_backend(err['input'])}"
    if kind == "extra_forbidden":
        return f"{_where(loc)}: {_unknown_key(loc, backend)}"
    if kind == "missing":
        return f"{_where(loc)}: missing (required)"
    if kind in ("value_error", "assertion_error"):
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{_where(loc)}: {message}" if loc else message  # the file's: names its tables
    message = _MESSAGES.get(kind, err["msg"])
    value = err.get("input")
    secret = any(word in str(loc[-1] if loc else "") for word in _SECRET_WORDS)
    if isinstance(value, (str, int, float)) and not secret:
        message += f" (got {value!r})"
    return f"{_where(loc)}: {message}"


# -- reading ------------------------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML, or ConfigError saying why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, [e.strerror or str(e)]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None


def parse_config(path: Path, data: dict[str, Any], volume: str | None = None, *,
                 volumes: bool = True) -> NodeConfig:
    """Validate `data` read from `path`. With `volume`, that volume's table and the node-wide
    ones only (a gateway needs no other volume to be right: one whose storage is not
    mounted yet must not keep it from starting); `volumes=False`, the node-wide ones only."""
    if volume is not None:
        data = {**data, "volume": {volume: _volume_table(path, data, volume)}}
    elif not volumes:
        data = {**data, "volume": {}}
    base = Path(os.path.abspath(path)).parent
    try:
        return NodeConfig.model_validate(data, context={"base": base})
    except ValidationError as e:
        raise ConfigError(path, [_problem(err) for err in e.errors()]) from None


def _volume_table(path: Path, data: dict[str, Any], name: str) -> Any:
    tables = _table(data, "volume")
    if name not in tables:
        has = ", ".join(sorted(tables)) or "no [volume.NAME] table at all"
        raise ConfigError(path, [f"no [volume.{name}] table; the file has {has}"])
    return tables[name]


def load_config(path: Path = DEFAULT_CONFIG, *, volume: str | None = None,
                volumes: bool = True) -> NodeConfig:
    """Read and validate the file; ConfigError names every problem."""
    return parse_config(path, read_toml(path), volume, volumes=volumes)


def volume_names(path: Path) -> list[str]:
    """The names of the file's `[volume.NAME]` tables, valid or not."""
    return sorted(_table(read_toml(path), "volume"))


def find_volume(path: Path, source: Path) -> str | None:
    """The name of the file's volume whose `path` is `source`, if one is."""
    base = Path(os.path.abspath(path)).parent
    wanted = os.path.normpath(os.path.abspath(source))
    for name, table in _table(read_toml(path), "volume").items():
        where = table.get("path") if isinstance(table, Mapping) else None
        if isinstance(where, str) and os.path.normpath(os.path.join(base, where)) == wanted:
            return str(name)
    return None


class MountOptions(GatewayOptions):
    """The gateway's options as `fusegw mount -o` gives them, plus `clear_dead`, which only a
    start can ask for."""

    clear_dead: bool = False


def mount_options(values: Mapping[str, str]) -> dict[str, Any]:
    """`-o` values (text: `xattr_limits`, `=1`, `=yes`, `=4096`) typed as in the file; a
    relative path is the caller's. ConfigError names the option."""
    try:
        options = MountOptions.model_validate(values, strict=False)
    except ValidationError as e:
        raise ConfigError(Path("-o"), [_problem(err) for err in e.errors()]) from None
    return options.model_dump(exclude_unset=True)
