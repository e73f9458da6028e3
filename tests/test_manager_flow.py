"""The Backend.AI manager's own storage-proxy client (backend.ai-manager 23.3.7) against fusegw.

Issue 10 asks for the manager's flow driven through a node endpoint over TCP with two volumes;
issue 11 for a drop-in storage proxy. The manager's code runs unchanged in a virtualenv of its
own (`.venv-manager`, made on first use by tests/manager_client.py; its dependencies never
meet the gateway's) and is driven by tests/manager_driver.py, which builds the manager's
`StorageSessionManager` from a `volumes` configuration checked by the manager's own
`volume_config_iv` and calls the manager's methods and handlers' requests over TCP with the
`X-BackendAI-Storage-Auth-Token` header.

The flow, per volume, as the manager and a container do it:
create a vfolder with an initial quota-scope size (`POST /folder/create`,
`options.initial_max_size_for_quota_scope`), find it (`get_mount_path`), write into it through
the mount at that path, read the usage back (`GET /folder/usage`, `GET /folder/used-bytes`,
`QuotaScope.resolve_details` = `GET /quota-scope`), meet EDQUOT at the limit, raise the limit
(`SetQuotaScope.mutate` = `PATCH /quota-scope`), write more, lift it (`UnsetQuotaScope`),
delete the vfolder (`initiate_vfolder_removal` = `POST /folder/delete`). Every figure is
compared with `du -s -B1` of the backing directory (and `file_count` with the inodes below the
vfolder).

- `test_manager_flow_one_gateway`: one gateway's own TCP listener (`fusegw mount
  --tcp-listen`), as a storage-proxy host with one volume.
- `test_manager_flow_node_two_volumes`: `fusegw-mountd --config FILE` with two volumes, the
  manager talking to the node endpoint's TCP listener only (one proxy, hosts `node:NAME`),
  the same user's quota scope on both volumes with different limits, each volume's figures
  untouched by the other's; an unknown volume through the node is a 404.
- `test_manager_wrong_secret_is_refused`: a manager with another secret gets 403 and
  changes nothing (also through the node, in the test above).
- `test_issue11_*`: the rest of what the manager does with a storage proxy (issue 11):
  `StorageVolume.from_info`/`load_by_id` (fsprefix), list_hosts' fs-usage, hwinfo, the
  performance metric, `get_mount_path` with a subpath (and escapes refused), `msg` and
  `error_code` in error bodies, and deleting a vfolder twice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    Gateway,
    du_bytes,
    fill_until_refused,
    free_port,
    inodes_below,
    is_mounted,
    new_qsid,
    private_source,
    scope_hex,
    start_gateway,
    vfolder_rel,
    wait_for,
)
from manager_client import (
    VENV,
    ManagerDriver,
    ensure_manager_venv,
    manager_driver,
    volumes_config,
)

KiB = 2**10
MiB = 2**20
TOKEN = "manager-flow-secret"
TOKEN_HEADER = "X-BackendAI-Storage-Auth-Token"
PROBS = "https://api.backend.ai/probs/storage/"
MOUNTD = Path(sys.executable).with_name("fusegw-mountd")


# -- the manager's venv and driver ---------------------------------------------------------------


@pytest.fixture(scope="session")
def manager_python() -> Path:
    """`.venv-manager/bin/python` with backend.ai-manager 23.3.7, installed if missing."""
    started = time.monotonic()
    python = ensure_manager_venv()
    took = time.monotonic() - started
    if took > 1:
        print(f"\n{VENV}: backend.ai-manager installed in {took:.1f} s", file=sys.stderr)
    return python


@pytest.fixture(scope="module")
def gw_port(public_dir: Path) -> Iterator[tuple[Gateway, int]]:
    """One gateway with its TCP listener on (token TOKEN), as a one-volume storage proxy."""
    port = free_port()
    gw = start_gateway(public_dir, "mgrflow", ["--tcp-listen", f"127.0.0.1:{port}"],
                       {"FUSEGW_AUTH_TOKEN": TOKEN})
    yield gw, port
    gw.stop()


@pytest.fixture(scope="module")
def gw_driver(manager_python: Path, gw_port: tuple[Gateway, int], public_dir: Path
              ) -> Iterator[ManagerDriver]:
    """The manager's client configured with the gateway as proxy `gw` (host `gw:mgrflow`)."""
    gw, port = gw_port
    volumes = volumes_config({"gw": (f"http://127.0.0.1:{port}", TOKEN)}, f"gw:{gw.volume}")
    with manager_driver(public_dir / "manager-driver-gw.log", volumes) as drv:
        yield drv


# -- the flow ------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A volume as the test sees it: its manager host name, backing directory and mount."""

    host: str  # PROXY:VOLUME, as the manager names storage hosts
    source: Path
    mountpoint: Path


@dataclass
class Flow:
    """One vfolder's life on one volume, every step through the manager's code."""

    drv: ManagerDriver
    vol: Volume
    qsid: str
    limit: int
    fid: str = field(default_factory=lambda: uuid.uuid4().hex)
    path: Path | None = None  # where get_mount_path says it is, under the mount point
    written: int = 0

    @property
    def vfid(self) -> str:
        return f"{self.qsid}/{self.fid}"

    @property
    def backing(self) -> Path:
        return self.vol.source / vfolder_rel(self.qsid, self.fid)

    @property
    def backing_scope(self) -> Path:
        return self.vol.source / scope_hex(self.qsid)

    def args(self) -> dict[str, str]:
        return {"host": self.vol.host, "vfid": self.vfid}

    def create(self) -> None:
        """POST /folder/create with the initial scope size; then the manager's mount path."""
        assert self.drv.call("create_vfolder", **self.args(),
                             max_vfolder_size=self.limit) is None
        path = self.drv.call("get_mount_path", **self.args())
        assert path == str(self.vol.mountpoint / vfolder_rel(self.qsid, self.fid)), path
        self.path = Path(path)
        assert self.path.is_dir() and self.backing.is_dir()

    def figures(self, limit: int | None) -> dict[str, int]:
        """Usage through the manager, each figure asserted against du -s -B1."""
        usage = self.drv.call("folder_usage", **self.args())
        used = self.drv.call("folder_used_bytes", **self.args())
        details = self.drv.call("quota_scope_details", host=self.vol.host, qsid=self.qsid)
        vf_du, scope_du = du_bytes(self.backing), du_bytes(self.backing_scope)
        assert usage["reply"]["used_bytes"] == vf_du, (usage, vf_du)
        assert usage["get_info"] == {"num_files": usage["reply"]["file_count"],
                                     "used_bytes": vf_du}
        assert usage["reply"]["file_count"] == inodes_below(self.backing), usage
        assert used == {"used_bytes": vf_du}, (used, vf_du)
        assert details == {"usage_bytes": scope_du, "hard_limit_bytes": limit,
                           "usage_count": None}, (details, scope_du)
        return {"vfolder": vf_du, "scope": scope_du}

    def write(self, name: str, size: int) -> None:
        """A container's write: a new file in the vfolder, fsynced, through the mount."""
        assert self.path is not None
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(os.urandom(size))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.written += size

    def append(self, name: str, size: int) -> None:
        """One write() of `size` bytes at the end of an existing file."""
        assert self.path is not None
        fd = os.open(self.path / name, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    def fill(self, name: str) -> None:
        """Append until the scope's limit refuses with EDQUOT."""
        assert self.path is not None
        fill_until_refused(self.path / name, errno.EDQUOT)

    def raise_limit(self, limit: int) -> None:
        self.drv.call("set_quota_scope", host=self.vol.host, qsid=self.qsid,
                      hard_limit_bytes=limit)
        self.limit = limit

    def delete(self) -> None:
        """initiate_vfolder_removal: POST /folder/delete; the row goes; nothing is left."""
        result = self.drv.call("delete_vfolder", **self.args())
        assert result["task_error"] is None, result["task_error"]
        assert result["row_deleted"], result
        assert not self.backing.exists()
        assert self.path is not None and not self.path.exists()
        err = self.drv.error("folder_usage", **self.args())
        assert err["type"] == "InvalidAPIParameters", err
        assert err["extra_data"]["type"] == PROBS + "vfolder/not-found", err


def run_flow(flows: list[Flow]) -> None:
    """The manager's flow on every volume at once: each step on each volume, and after each
    step every volume's figures (so one volume's change never shows in another's)."""
    limits: dict[int, int | None] = {id(f): f.limit for f in flows}

    def check_all() -> dict[int, dict[str, int]]:
        return {id(f): f.figures(limits[id(f)]) for f in flows}

    for f in flows:
        f.create()
    before = check_all()
    for f in flows:
        assert before[id(f)]["vfolder"] > 0  # the vfolder directory itself

    for f in flows:
        f.write("data/part1", 256 * KiB)
        now = check_all()
        assert now[id(f)]["vfolder"] >= before[id(f)]["vfolder"] + 256 * KiB
        for g in flows:
            if g is not f:
                assert now[id(g)] == before[id(g)]
        before = now

    for f in flows:
        f.fill("fill")
        now = check_all()
        assert f.limit - 64 * KiB <= now[id(f)]["scope"] <= f.limit, (now[id(f)], f.limit)
        for g in flows:
            if g is not f:
                assert now[id(g)] == before[id(g)]
        with pytest.raises(OSError) as refused:
            f.append("fill", 64 * KiB)
        assert refused.value.errno == errno.EDQUOT
        assert check_all() == now  # a refused write changes nothing
        before = now

    for f in flows:
        old = f.limit
        f.raise_limit(old + 2 * MiB)
        limits[id(f)] = f.limit
        f.write("more-after-raise", MiB)
        now = check_all()
        assert now[id(f)]["scope"] > old
        for g in flows:
            if g is not f:
                assert now[id(g)] == before[id(g)]
        before = now

    for f in flows:
        # UnsetQuotaScope: no limit at all, writes go on
        f.drv.call("unset_quota_scope", host=f.vol.host, qsid=f.qsid)
        limits[id(f)] = None
        f.write("unlimited", 512 * KiB)
    check_all()

    for f in flows:
        f.delete()
        details = f.drv.call("quota_scope_details", host=f.vol.host, qsid=f.qsid)
        assert details["usage_bytes"] == du_bytes(f.backing_scope), details


def test_manager_flow_one_gateway(gw_port: tuple[Gateway, int],
                                  gw_driver: ManagerDriver) -> None:
    """The whole flow through one gateway's TCP listener, as a storage proxy with one volume:
    get_all_volumes lists it; create with an initial scope size sets that limit; usage, used
    bytes and the scope's figures equal du -s -B1 after every write; EDQUOT at the limit;
    SetQuotaScope raises it and the write passes; UnsetQuotaScope lifts it; the vfolder is
    deleted and the manager's row removed."""
    gw, _ = gw_port
    volumes = gw_driver.call("get_all_volumes")
    assert volumes == [["gw", {"name": gw.volume, "backend": "vfs",
                               "path": str(gw.mountpoint), "fsprefix": ".",
                               "capabilities": volumes[0][1]["capabilities"]}]], volumes
    vol = Volume(f"gw:{gw.volume}", gw.source, gw.mountpoint)
    run_flow([Flow(gw_driver, vol, new_qsid(), MiB)])


def test_manager_wrong_secret_is_refused(gw_port: tuple[Gateway, int],
                                         gw_driver: ManagerDriver) -> None:
    """A manager configured with another secret gets 403 on every call (the manager raises
    InvalidAPIParameters carrying the gateway's problem), and nothing is created."""
    gw, port = gw_port
    bad = volumes_config({"gw": (f"http://127.0.0.1:{port}", TOKEN + "x")}, f"gw:{gw.volume}")
    gw_driver.call("configure", manager="wrong", volumes=bad)
    qsid, fid = new_qsid(), uuid.uuid4().hex
    err = gw_driver.error("create_vfolder", manager="wrong", host=f"gw:{gw.volume}",
                          vfid=f"{qsid}/{fid}", max_vfolder_size=MiB)
    assert err["type"] == "InvalidAPIParameters", err
    assert err["extra_data"]["status"] == 403, err
    assert err["extra_data"]["type"] == PROBS + "forbidden", err
    assert not (gw.source / scope_hex(qsid)).exists()
    err = gw_driver.error("get_all_volumes", manager="wrong")
    assert err["type"] == "ClientResponseError" and err["status"] == 403, err


# -- the node endpoint: fusegw-mountd with two volumes -------------------------------------------


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    port: int
    volumes: dict[str, Volume]
    logs: Path
    stderr: Path

    def diagnostics(self) -> str:
        out = [f"fusegw-mountd exit status {self.proc.poll()}; stderr:",
               self.stderr.read_text()[-3000:] if self.stderr.exists() else ""]
        for log in sorted(self.logs.glob("*")):
            out += [f"--- {log}", log.read_text(errors="replace")[-2000:]]
        return "\n".join(out)


def _toml_str(p: Path | str) -> str:
    return '"' + str(p).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _write_node_config(base: Path, names: list[str], port: int) -> Path:
    lines = []
    for name in names:
        source = private_source(base, name)
        (base / f"{name}.mnt").mkdir()
        lines += [f"[volume.{name}]", 'backend = "vfs"', f"path = {_toml_str(source)}",
                  f"mountpoint = {_toml_str(base / f'{name}.mnt')}",
                  f"[volume.{name}.options]",
                  f"control_socket = {_toml_str(base / f'{name}.sock')}", ""]
    lines += ["[control]", f"socket = {_toml_str(base / 'node.sock')}",
              f'tcp_listen = "127.0.0.1:{port}"', f"auth_token = {_toml_str(TOKEN)}", "",
              "[mountd]", f"log_dir = {_toml_str(base / 'logs')}", ""]
    path = base / "node.toml"
    path.write_text("\n".join(lines))
    path.chmod(0o600)  # it holds the node's token
    return path


def _node_ready(port: int, vols: dict[str, Volume]) -> bool:
    """The node lists every volume, and a request routed to each volume's gateway answers
    (503 while it starts), and each is mounted."""
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={TOKEN_HEADER: TOKEN},
                          timeout=5) as c:
            r = c.get("/volumes")
            if r.status_code != 200 or sorted(
                    v["name"] for v in r.json().get("volumes", [])) != sorted(vols):
                return False
            for name in vols:
                r = c.request("GET", "/quota-scopes", json={"volume": name})
                if r.status_code != 200:
                    return False
    except httpx.HTTPError:
        return False
    return all(is_mounted(v.mountpoint) for v in vols.values())


def _gateway_pids(base: Path, names: list[str]) -> list[int]:
    pids = []
    for name in names:
        sock = base / f"{name}.sock"
        if not sock.exists():
            continue
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as c:
                pids.append(int(c.get("http://fusegw/").json()["pid"]))
        except (httpx.HTTPError, ValueError, KeyError):
            pass
    return pids


def _kill_if_ours(pid: int, base: Path) -> None:
    """SIGKILL `pid` if it is still a gateway of this node (its command line names `base`)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if str(base).encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """`fusegw-mountd --config FILE` with volumes `vola` and `volb`, its node endpoint on TCP.

    Stopped with SIGTERM (mountd unmounts everything); whatever is left (a gateway it did not
    stop, a mount) is ended and unmounted here."""
    base = tmp_path_factory.mktemp("node", numbered=True)
    base.chmod(0o755)
    names = ["vola", "volb"]
    port = free_port()
    config = _write_node_config(base, names, port)
    stderr = base / "mountd.stderr"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([str(MOUNTD), "--config", str(config)], stdout=err,
                                stderr=subprocess.STDOUT, env=env, cwd="/")
    vols = {n: Volume(f"node:{n}", base / "private" / n, base / f"{n}.mnt") for n in names}
    nd = Node(proc, port, vols, base / "logs", stderr)
    seen_pids: list[int] = []
    try:
        end = time.monotonic() + 60
        while not _node_ready(port, vols):
            if proc.poll() is not None:
                raise AssertionError("fusegw-mountd exited before its node endpoint answered\n"
                                     + nd.diagnostics())
            if time.monotonic() > end:
                raise AssertionError("fusegw-mountd's node endpoint did not list and route "
                                     "both volumes within 60 s\n" + nd.diagnostics())
            time.sleep(0.05)
        seen_pids = _gateway_pids(base, names)
        yield nd
    finally:
        seen_pids += _gateway_pids(base, names)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in set(seen_pids):  # gateways this node started, if mountd left any
            _kill_if_ours(pid, base)
        for v in vols.values():
            if is_mounted(v.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(v.mountpoint)],
                               capture_output=True)
            wait_for(lambda v=v: not is_mounted(v.mountpoint), what=f"{v.mountpoint} unmounted")


def test_manager_flow_node_two_volumes(manager_python: Path, node: Node) -> None:
    """The manager's flow through the node endpoint only (mountd's TCP listener, one proxy
    `node`, hosts `node:vola` and `node:volb`): get_all_volumes lists both volumes with their
    mount points; the same user's quota scope gets a 1 MiB limit on vola and 2 MiB on volb;
    on each, in turn: write, EDQUOT at its own limit, raise, write more, lift, delete; every
    figure equals du -s -B1 of that volume's backing directory, and no step on one volume
    changes a figure of the other. An unknown volume is 404; another secret is 403."""
    volumes = volumes_config({"node": (f"http://127.0.0.1:{node.port}", TOKEN)}, "node:vola")
    with manager_driver(node.logs.parent / "manager-driver-node.log", volumes) as drv:
        listed = drv.call("get_all_volumes")
        by_name = {info["name"]: (proxy, info) for proxy, info in listed}
        assert sorted(by_name) == ["vola", "volb"], listed
        for name, vol in node.volumes.items():
            proxy, info = by_name[name]
            assert proxy == "node"
            assert info["backend"] == "vfs" and info["path"] == str(vol.mountpoint), info
        qsid = new_qsid()
        flows = [Flow(drv, node.volumes["vola"], qsid, MiB),
                 Flow(drv, node.volumes["volb"], qsid, 2 * MiB)]
        run_flow(flows)
        # an unknown volume through the node: refused (404 problem), never routed elsewhere
        err = drv.error("folder_usage", host="node:nosuch", vfid=flows[0].vfid)
        assert err["type"] == "InvalidAPIParameters", err
        assert err["extra_data"]["status"] == 404, err
        # a manager with another secret: 403 from the node, nothing created on either volume
        bad = volumes_config({"node": (f"http://127.0.0.1:{node.port}", TOKEN + "x")},
                             "node:vola")
        drv.call("configure", manager="wrong", volumes=bad)
        err = drv.error("get_all_volumes", manager="wrong")
        assert err["type"] == "ClientResponseError" and err["status"] == 403, err
        other = new_qsid()
        for vol in node.volumes.values():
            err = drv.error("create_vfolder", manager="wrong", host=vol.host,
                            vfid=f"{other}/{uuid.uuid4().hex}", max_vfolder_size=MiB)
            assert err["extra_data"]["status"] == 403, err
            assert not (vol.source / scope_hex(other)).exists()


# -- issue 11: the rest of what the manager does with a storage proxy -------------------------


@pytest.fixture(scope="module")
def probe_flow(gw_port: tuple[Gateway, int], gw_driver: ManagerDriver) -> Flow:
    """A vfolder with a 1 MiB scope for the probes below."""
    gw, _ = gw_port
    f = Flow(gw_driver, Volume(f"gw:{gw.volume}", gw.source, gw.mountpoint), new_qsid(), MiB)
    f.create()
    return f


def _problem_msg(err: dict[str, Any]) -> Any:
    return err["user_body"].get("msg") if err["user_body"] else None


def test_issue11_storage_volume_from_info(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    """StorageVolume.load_slice / load_by_id build StorageVolume.from_info from GET /volumes."""
    listed = gw_driver.call("volumes_from_info")
    assert listed[0]["fsprefix"] == "."
    assert listed[0]["id"] == probe_flow.vol.host, listed
    assert listed[0]["path"] == str(probe_flow.vol.mountpoint), listed
    assert {"vfolder", "quota", "metric", "fast-size"} <= set(listed[0]["capabilities"]), listed
    by_id = gw_driver.call("load_by_id", host=probe_flow.vol.host)
    assert by_id == listed[0], (by_id, listed)


def test_issue11_fs_usage(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    """list_hosts' fetch_exposed_volume_fields (percentage of GET /folder/fs-usage) and
    StorageVolume.resolve_usage: the backing volume's statvfs, as the storage proxy's vfs."""
    usage = gw_driver.call("fs_usage", host=probe_flow.vol.host)
    assert 0 < usage["percentage"] <= 100
    usage = gw_driver.call("volume_usage", host=probe_flow.vol.host)
    st = os.statvfs(probe_flow.vol.source)
    assert usage["capacity_bytes"] == st.f_frsize * st.f_blocks, usage
    # used moves with whatever else writes to this disk: within 64 MiB of our own statvfs
    assert abs(usage["used_bytes"] - st.f_frsize * (st.f_blocks - st.f_bavail)) < 64 * MiB


def test_issue11_hwinfo(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    """gather_storage_hwinfo checks the answer against HardwareMetadata (typeguard: metadata
    values are strings) and hands it on."""
    info = gw_driver.call("hwinfo", host=probe_flow.vol.host)
    assert info["status"] == "healthy", info
    assert info["status_info"] is None, info
    assert info["metadata"]["backend"] == "vfs", info
    assert info["metadata"]["mountpoint"] == str(probe_flow.vol.mountpoint), info


def test_issue11_performance_metric(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    """get_volume_perf_metric hands the storage proxy's FSPerfMetric on; reads and writes
    through the mount show in it."""
    assert probe_flow.path is not None
    gw_driver.call("performance_metric", host=probe_flow.vol.host)  # the window starts
    probe_flow.write("perf/file", 256 * KiB)
    (probe_flow.path / "perf" / "file").read_bytes()
    time.sleep(1.1)  # a window spans at least a second
    metric = gw_driver.call("performance_metric", host=probe_flow.vol.host)["metric"]
    assert sorted(metric) == ["io_bytes_read", "io_bytes_write", "io_usec_read",
                              "io_usec_write", "iops_read", "iops_write"], metric
    assert metric["iops_write"] > 0 and metric["io_bytes_write"] > 0, metric
    assert metric["io_usec_write"] > 0, metric
    assert all(isinstance(v, int) for k, v in metric.items() if not k.startswith("io_usec"))


def test_issue11_mount_subpath(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    path = gw_driver.call("get_mount_path", **probe_flow.args(), subpath="data")
    assert path == str(probe_flow.path / "data")
    for escape in ("../../..", "data/../..", "/etc"):
        err = gw_driver.error("get_mount_path", **probe_flow.args(), subpath=escape)
        assert err["type"] == "InvalidAPIParameters", err
        assert err["extra_data"]["status"] == 400, err
        assert err["extra_data"]["type"] == PROBS + "subpath/invalid", err
        assert err["extra_msg"] and escape in err["extra_msg"], err


def test_issue11_error_msg(gw_driver: ManagerDriver, probe_flow: Flow) -> None:
    err = gw_driver.error("create_vfolder", **probe_flow.args(), max_vfolder_size=MiB)  # 409
    assert err["type"] == "InvalidAPIParameters", err
    assert isinstance(_problem_msg(err), str) and _problem_msg(err), err
    assert err["extra_msg"] == err["extra_data"]["detail"], err
    assert "already exists" in err["extra_msg"], err
    assert err["extra_data"]["error_code"] == "vfolder_create_already-exists", err


def test_issue11_delete_twice(gw_port: tuple[Gateway, int], gw_driver: ManagerDriver) -> None:
    gw, _ = gw_port
    f = Flow(gw_driver, Volume(f"gw:{gw.volume}", gw.source, gw.mountpoint), new_qsid(), MiB)
    f.create()
    f.delete()
    scope_before = du_bytes(f.backing_scope)
    again = gw_driver.call("delete_vfolder", **f.args())
    assert again["task_error"] is None, again["task_error"]
    assert again["row_deleted"], again
    assert du_bytes(f.backing_scope) == scope_before
    details = gw_driver.call("quota_scope_details", host=f.vol.host, qsid=f.qsid)
    assert details["usage_bytes"] == scope_before, details
