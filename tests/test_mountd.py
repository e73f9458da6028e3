"""`fusegw-mountd`: the node supervisor and its endpoint, run for real.

Real processes, real FUSE mounts, real sockets (all below the test's own directories; never
/run/fusegw). mountd runs as it would under systemd: `$NOTIFY_SOCKET` is a datagram socket the
test binds (with SO_PASSCRED, so every message's sender is known) and `$WATCHDOG_USEC` is set.

- READY=1 once every volume has served or failed its first start, with a STATUS= line naming
  each volume's state; WATCHDOG=1 at half the watchdog period, from mountd's own pid only.
- kill -9 of a gateway while a writer is busy writing and fsyncing into a vfolder: the mount
  serves again (a new pid) within seconds, every fsync'ed byte is intact, usage equals
  `du -s -B1` once settled, and the death is listed by the node's `GET /` and `fusegw status`.
  The recovery time (kill to the first successful stat through the new mount) is printed.
- SIGSTOP of a gateway: it is replaced.
- SIGHUP adds and removes volumes and restarts only a changed one; an invalid file changes
  nothing. SIGTERM leaves no mount and no gateway, exit status 0.
- The node endpoint: GET /volumes lists every volume, each request reaches its volume's gateway
  with the gateway's answer unchanged, an unknown volume is 404, a malformed or ambiguous body
  400, a volume whose gateway cannot start 503 with Retry-After.

Waiting is polling with a deadline (conftest.wait_for), never a bare sleep. Every fixture stops
mountd, ends any gateway it left and unmounts everything, also when a test fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import (
    Gateway,
    du_bytes,
    free_port,
    is_mounted,
    new_qsid,
    private_source,
    scope_hex,
    wait_for,
)

MOUNTD = Path(sys.executable).with_name("fusegw-mountd")
PROBS = "https://api.backend.ai/probs/storage/"
WATCHDOG_USEC = 1_000_000  # WATCHDOG=1 expected every 0.5 s
RECOVERY_LIMIT = 15.0
CHUNK = 64 * 1024
TOKEN = "node-secret"
TOKEN_HEADER = "X-BackendAI-Storage-Auth-Token"


# -- the notify socket ----------------------------------------------------------------------------


@dataclass
class Message:
    at: float  # monotonic
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifyListener:
    """A systemd-style $NOTIFY_SOCKET: a SOCK_DGRAM Unix socket, every datagram kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[Message] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(65536, size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            self.messages.append(Message(time.monotonic(), pid, fields))

    def with_key(self, key: str) -> list[Message]:
        return [m for m in list(self.messages) if key in m.fields]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# -- mountd ---------------------------------------------------------------------------------------


def toml_str(value: Path | str) -> str:
    return json.dumps(str(value))


@dataclass
class Vol:
    name: str
    source: Path
    mountpoint: Path
    socket: Path
    options: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[str]:
        opts = {"control_socket": str(self.socket), **self.options}
        return [f"[volume.{self.name}]", 'backend = "vfs"', f"path = {toml_str(self.source)}",
                f"mountpoint = {toml_str(self.mountpoint)}", f"[volume.{self.name}.options]",
                *(f"{k} = {json.dumps(v)}" for k, v in opts.items()), ""]


@dataclass
class Mountd:
    """One `fusegw-mountd --config FILE` over volumes below `base`."""

    base: Path
    vols: dict[str, Vol]
    notify: NotifyListener | None = None
    proc: subprocess.Popen[bytes] | None = None
    seen_pids: set[int] = field(default_factory=set)
    made: list[Path] = field(default_factory=list)  # directories outside `base`, removed
    tcp_port: int | None = None  # the node endpoint's TCP listener (token TOKEN)
    health_timeout: float = 2.0  # SIGSTOP is noticed within health_interval + this

    @property
    def config(self) -> Path:
        return self.base / "node.toml"

    @property
    def node_socket(self) -> Path:
        return self.base / "node.sock"

    @property
    def log(self) -> Path:
        return self.base / "mountd.log"

    def vol(self, name: str, *, private: bool = True, **options: Any) -> Vol:
        """A new volume (below a 0700 directory unless private=False, which the gateway
        refuses: a volume that never starts)."""
        if private:
            source = private_source(self.base, name)
        else:  # pytest's own /tmp/pytest-of-root is 0700: this one is outside it
            exposed = Path(tempfile.mkdtemp(prefix="fusegw-exposed-", dir="/tmp"))
            exposed.chmod(0o755)
            self.made.append(exposed)
            source = exposed / name
            source.mkdir()
        mnt = self.base / f"{name}.mnt"
        mnt.mkdir(exist_ok=True)
        return Vol(name, source, mnt, self.base / f"{name}.sock", options)

    def write_config(self, vols: list[Vol], text: str | None = None) -> None:
        self.vols.update({v.name: v for v in vols})
        if text is None:
            lines = [line for v in vols for line in v.table()]
            lines += ["[control]", f"socket = {toml_str(self.node_socket)}"]
            if self.tcp_port is not None:
                lines += [f'tcp_listen = "127.0.0.1:{self.tcp_port}"',
                          f"auth_token = {toml_str(TOKEN)}"]
            lines += ["",
                      "[mountd]", f"log_dir = {toml_str(self.base / 'logs')}",
                      "health_interval = 0.5", f"health_timeout = {self.health_timeout}",
                      "restart_backoff_max = 8.0", ""]
            text = "\n".join(lines)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FUSEGW_SOCKET")}
        if self.notify is not None:
            env.update(NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(MOUNTD), "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, cwd="/")

    def diagnostics(self) -> str:
        out = [f"mountd exit status {self.proc.poll() if self.proc else None}; its log:",
               self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""]
        for log in sorted((self.base / "logs").glob("*.log")):
            out += [f"--- {log}", log.read_text(errors="replace")[-1500:]]
        return "\n".join(out)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                params: dict[str, str] | None = None, headers: dict[str, str] | None = None
                ) -> httpx.Response:
        content = raw if raw is not None else (None if body is None else json.dumps(body))
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.node_socket)),
                          base_url="http://fusegw", timeout=30) as c:
            return c.request(method, path, content=content, params=params, headers=headers)

    def status(self) -> dict[str, Any]:
        r = self.request("GET", "/")
        assert r.status_code == 200, r.text
        status: dict[str, Any] = r.json()
        for v in status["volumes"]:
            if v.get("pid"):
                self.seen_pids.add(v["pid"])
        return status

    def volume(self, name: str) -> dict[str, Any] | None:
        for v in self.status()["volumes"]:
            if v["name"] == name:
                return dict(v)
        return None

    def serving(self, name: str, not_pid: int | None = None, timeout: float = 30
                ) -> dict[str, Any]:
        """Wait until `name` serves (with a pid other than `not_pid`) and is mounted."""
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("mountd exited\n" + self.diagnostics())
            try:
                v = self.volume(name)
            except httpx.HTTPError:  # the node socket is not there yet
                return None
            if (v and v["state"] == "serving" and v["pid"] != not_pid
                    and is_mounted(self.vols[name].mountpoint)):
                return v
            return None
        try:
            found: dict[str, Any] = wait_for(ready, timeout, f"volume {name} serving")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnostics()}") from None
        return found

    def gateway(self, name: str) -> Gateway:
        """conftest's Gateway over the volume's own socket (requests only: mountd owns it)."""
        v = self.vols[name]
        gw = Gateway(v.source, v.mountpoint, v.socket, self.base / "logs" / f"{name}.log", name)
        gw.pid = self.serving(name)["pid"]
        return gw

    def stop(self) -> int | None:
        """SIGTERM and wait; whatever is left (mountd, a gateway, a mount) is ended here."""
        code = None
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError, AssertionError, KeyError):
                self.status()
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        elif self.proc is not None:
            code = self.proc.returncode
        for pid in self.seen_pids | set(gateway_pids(self.base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        for mnt in self.base.glob("*.mnt"):
            for _ in range(3):
                if is_mounted(mnt):
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        if self.notify is not None:
            self.notify.close()
        for path in self.made:
            shutil.rmtree(path, ignore_errors=True)
        return code


def gateway_pids(base: Path) -> list[int]:
    """Processes whose command line names `base` and `fusegw mount`: this test's gateways."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mount" in argv and b"fusegw" in argv and any(str(base).encode() in a
                                                          for a in argv):
            found.append(int(entry))
    return found


@contextlib.contextmanager
def running_mountd(base: Path, names: list[str], broken: list[str] | None = None,
                   notify: bool = False, tcp: bool = False, health_timeout: float = 2.0
                   ) -> Iterator[Mountd]:
    base.chmod(0o755)
    m = Mountd(base, {}, tcp_port=free_port() if tcp else None, health_timeout=health_timeout)
    try:
        vols = [m.vol(n) for n in names] + [m.vol(n, private=False) for n in broken or []]
        m.write_config(vols)
        if notify:
            m.notify = NotifyListener(base / "notify.sock")
        m.start()
        for name in names:
            m.serving(name, timeout=60)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mountd]:
    """Volumes `a` and `b` serving, `c` never starting (its source is exposed), notify on,
    the TCP listener on."""
    with running_mountd(tmp_path_factory.mktemp("mountd"), ["a", "b"], ["c"],
                        notify=True, tcp=True) as m:
        yield m


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mountd]:
    """A mountd of the test's own with volumes `x` and `y` (a generous health timeout: these
    tests compare pids, a busy machine must not make a gateway look hung)."""
    with running_mountd(tmp_path_factory.mktemp("mountd"), ["x", "y"],
                        health_timeout=10.0) as m:
        yield m


# -- systemd --------------------------------------------------------------------------------------


def test_ready_status_and_watchdog_from_mountd_itself(node: Mountd) -> None:
    """READY=1 comes once every volume has served or failed its first start, with a STATUS=
    line naming each volume's state; WATCHDOG=1 follows about every half $WATCHDOG_USEC; every
    message comes from mountd's own pid, none from a gateway."""
    assert node.notify is not None and node.proc is not None
    ready = wait_for(lambda: node.notify.with_key("READY"), 30, "READY=1")  # type: ignore
    assert ready[0].fields["READY"] == "1"
    status = ready[0].fields["STATUS"]
    for part in ("a serving", "b serving", "c restarting"):
        assert part in status, status
    wait_for(lambda: len(node.notify.with_key("WATCHDOG")) >= 4, 10,  # type: ignore
             "four watchdog pings")
    pings = [m.at for m in node.notify.with_key("WATCHDOG")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.2 < g < 2.0 for g in gaps[-3:]), gaps
    assert {m.pid for m in node.notify.messages} == {node.proc.pid}
    assert all(m.fields.get("WATCHDOG") == "1" for m in node.notify.with_key("WATCHDOG"))


# -- the node endpoint ----------------------------------------------------------------------------


def test_node_volumes_list_every_volume(node: Mountd) -> None:
    """GET /volumes answers for the node: each volume's name, backend, mount point as path
    and capabilities, also for the volume whose gateway cannot start (from the config)."""
    r = node.request("GET", "/volumes")
    assert r.status_code == 200, r.text
    listed = {v["name"]: v for v in r.json()["volumes"]}
    assert sorted(listed) == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        v = listed[name]
        assert v["backend"] == "vfs" and v["path"] == str(node.vols[name].mountpoint), v
        assert "quota" in v["capabilities"], v
    direct = node.gateway("a").request("GET", "/volumes").json()["volumes"][0]
    assert listed["a"] == direct


def test_requests_reach_their_volumes_gateway_unchanged(node: Mountd) -> None:
    """A scope created through the node on `a` exists on a's gateway and not on b's; a GET
    with the parameters in the query string is routed too; the answers (status, content type,
    body) are the gateway's own."""
    qsid = new_qsid()
    r = node.request("POST", "/quota-scope",
                     {"volume": "a", "qsid": qsid, "options": {"limit_bytes": 1 << 20}})
    assert r.status_code == 204 and r.content == b"", r.text
    via_node = node.request("GET", "/quota-scope", {"volume": "a", "qsid": qsid})
    direct = node.gateway("a").request("GET", "/quota-scope", {"volume": "a", "qsid": qsid})
    assert via_node.status_code == direct.status_code == 200
    assert via_node.json() == direct.json() and via_node.json()["limit_bytes"] == 1 << 20
    assert via_node.headers["content-type"] == direct.headers["content-type"]
    query = node.request("GET", "/quota-scope", params={"volume": "a", "qsid": qsid})
    assert query.status_code == 200 and query.json() == direct.json(), query.text
    other = node.request("GET", "/quota-scope", {"volume": "b", "qsid": qsid})
    assert other.status_code == 404, other.text
    assert other.json()["type"] == PROBS + "quota/scope/not-found"
    assert other.headers["content-type"] == "application/problem+json"
    unknown_route = node.request("GET", "/no-such-route", {"volume": "b"})
    assert unknown_route.status_code == 404, unknown_route.text  # b's gateway said so
    assert (node.vols["a"].source / scope_hex(qsid)).is_dir()
    assert not (node.vols["b"].source / scope_hex(qsid)).exists()


def test_tcp_listener_routes_with_the_token_only(node: Mountd) -> None:
    """The node's TCP listener answers and routes only with the token (once); the gateways,
    started from the same file, do not listen on it themselves (mountd owns [control])."""
    url = f"http://127.0.0.1:{node.tcp_port}"
    qsid = new_qsid()
    node.gateway("b").create_scope(qsid, limit_bytes=4096 * 10)
    body = json.dumps({"volume": "b", "qsid": qsid})
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/").status_code == 403
        assert c.request("GET", "/quota-scope", content=body).status_code == 403
        wrong = c.request("GET", "/quota-scope", content=body, headers={TOKEN_HEADER: "x"})
        assert wrong.status_code == 403
        twice = c.request("GET", "/quota-scope", content=body,
                          headers=[(TOKEN_HEADER, TOKEN), (TOKEN_HEADER, TOKEN)])
        assert twice.status_code == 400, twice.text
        ok = c.request("GET", "/quota-scope", content=body, headers={TOKEN_HEADER: TOKEN})
        assert ok.status_code == 200 and ok.json()["limit_bytes"] == 40960, ok.text
        root = c.get("/", headers={TOKEN_HEADER: TOKEN})
        assert root.status_code == 200 and root.json()["service"] == "fusegw-mountd"
    for name in ("a", "b"):
        pid = node.serving(name)["pid"]
        listening = [conn for conn in psutil.Process(pid).net_connections("tcp")
                     if conn.status == psutil.CONN_LISTEN]
        assert listening == [], (name, listening)
        own = node.base / "mountd" / f"{name}.toml"  # the gateway's file: its table only
        assert own.stat().st_mode & 0o777 == 0o600
        text = own.read_text()
        assert "tcp_listen" not in text and TOKEN not in text and f"[volume.{name}]" in text


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"volume": "a", "qsid": ', None),  # truncated JSON
    (b'["a"]', None),  # not an object
    (b'{"qsid": "user:00000000-0000-0000-0000-000000000000"}', "volume"),  # no volume
    (b'{"volume": 7}', "volume"),  # not a string
    (b'{"volume": ""}', "volume"),
    (b'{"volume": "a", "volume": "b"}', "volume"),  # given twice
])
def test_malformed_requests_are_400(node: Mountd, raw: bytes, field: str | None) -> None:
    r = node.request("GET", "/quota-scope", raw=raw)
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == PROBS + "invalid-api-params" and problem["msg"], problem
    assert r.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert field in problem.get("data", {}), problem


BAD_INPUT: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("GET", "/quota-scope", b"\xff\xfe{", {}),
    ("GET", "/quota-scope", b"[" * 5000 + b"]" * 5000, {}),
    ("POST", "/folder/create", b"x" * (65 * 1024), {}),
    ("GET", "/quota-scope?volume=%ZZ", b"", {}),
    ("GET", "/quota-scope?volume=a&volume=b", b"", {}),
    ("GET", "/quota-scope?=&&=", b"", {}),
    ("GET", "/quota-scope", b'{"volume": "../a"}', {}),
    ("GET", "/quota-scope", b'{"volume": "a/../../b"}', {}),
    ("GET", "/quota-scope", b'{"volume": "' + b"v" * 4000 + b'"}', {}),
    ("GET", "/quota-scope", b'{"volume": null}', {}),
    ("GET", "/quota-scope", b'{"volume": ["a"]}', {}),
    ("GET", "/quota-scope", b'{"volume": {"a": 1}}', {}),
    ("GET", "/quota-scope", b'{"volume": "a", "qsid": 12}', {}),
    ("GET", "/quota-scope", b'{"volume": "a", "qsid": "user:nope"}', {}),
    ("PATCH", "/quota-scope", b'{"volume": "a", "options": {"limit_bytes": -1}}', {}),
    ("BREW", "/quota-scope", b'{"volume": "a"}', {}),
    ("POST", "/", b"{}", {}),
    ("DELETE", "/volumes", b"", {}),
    ("GET", "/%2e%2e/etc/passwd", b'{"volume": "a"}', {}),
    ("GET", "/quota-scope", b'{"volume": "a"}', {"Upgrade": "websocket", "Connection": "Upgrade"}),
    ("GET", "/quota-scope", b'{"volume": "a"}', {"Upgrade": "h2c", "Connection": "Upgrade"}),
    ("GET", "/quota-scope", b'{"volume": "a"}', {"Content-Type": "text/plain"}),
]


def test_bad_input_never_gets_a_5xx(node: Mountd) -> None:
    """Malformed, ambiguous, oversized or hostile requests to the node: each a 4xx (from the
    router or, for well-formed ones, the gateway), and the node keeps serving."""
    pids = {n: node.serving(n)["pid"] for n in ("a", "b")}
    for method, path, raw, headers in BAD_INPUT:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(node.node_socket)),
                          base_url="http://fusegw", timeout=30) as c:
            r = c.request(method, path, content=raw, headers=headers)
        assert 400 <= r.status_code < 500, (method, path, raw[:60], r.status_code, r.text)
        if r.content:
            assert r.headers["content-type"] == "application/problem+json", r.headers
    assert {n: node.serving(n)["pid"] for n in ("a", "b")} == pids


def test_parameter_in_query_and_body_is_400(node: Mountd) -> None:
    r = node.request("GET", "/quota-scopes", {"volume": "a"}, params={"volume": "b"})
    assert r.status_code == 400 and "volume" in r.json()["data"], r.text


def test_unknown_volume_is_404(node: Mountd) -> None:
    r = node.request("GET", "/quota-scopes", {"volume": "nosuch"})
    assert r.status_code == 404, r.text
    assert r.json()["type"] == PROBS + "volume/not-found"
    assert r.json()["data"] == {"volume": "nosuch"}


def test_volume_that_cannot_start_is_503_with_retry_after(node: Mountd) -> None:
    """`c`'s gateway refuses its exposed source at every start: the node answers for it with
    503 and Retry-After, names the refusal, and keeps retrying with backoff."""
    r = node.request("GET", "/quota-scopes", {"volume": "c"})
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    problem = r.json()
    assert problem["type"] == PROBS + "volume/unavailable", problem
    assert "bypassing quotas" in problem["detail"], problem
    c = node.volume("c")
    assert c is not None and c["state"] == "restarting" and c["pid"] is None, c
    assert "start failed" in c["problem"], c


def test_node_root_reports_every_volume(node: Mountd) -> None:
    """GET / of the node: per volume its state, pid, version, uptime, backend, mount point,
    accounting, restarts and deaths; the gateway's own GET / has uptime and accounting too."""
    status = node.status()
    assert status["status"] == "ok" and status["service"] == "fusegw-mountd"
    assert status["pid"] == node.proc.pid  # type: ignore[union-attr]
    assert status["state"] == "degraded"  # c never serves
    a = next(v for v in status["volumes"] if v["name"] == "a")
    own = node.gateway("a").request("GET", "/").json()
    assert a["pid"] == own["pid"] and a["version"] == own["version"]
    assert a["backend"] == "vfs" and a["mountpoint"] == str(node.vols["a"].mountpoint)
    assert a["accounting"] == own["accounting"] == "ready"
    assert own["uptime_seconds"] >= 0 and a["uptime_seconds"] >= 0
    assert isinstance(a["restarts"], int) and isinstance(a["deaths"], list)
    env = {k: v for k, v in os.environ.items() if k != "FUSEGW_SOCKET"}
    own_human = subprocess.run([sys.executable, "-m", "fusegw", "status", "--socket",
                                str(node.vols["a"].socket)], capture_output=True, text=True,
                               timeout=60, env=env)
    assert own_human.returncode == 0, own_human.stderr
    assert "accounting  ready" in own_human.stdout and "uptime  " in own_human.stdout


# -- healing --------------------------------------------------------------------------------------


WRITER = r"""
import hashlib, os, sys
path, progress, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
i = 0
with open(progress, "w") as report:
    while True:
        data = (hashlib.sha256(str(i).encode()).digest() * (chunk // 32))
        try:
            os.write(fd, data)
            os.fsync(fd)
        except OSError as e:
            report.write(f"error {e.errno}\n")
            report.flush()
            break
        i += 1
        report.write(f"{i * chunk}\n")
        report.flush()
"""


def expected_bytes(length: int) -> bytes:
    chunks = [hashlib.sha256(str(i).encode()).digest() * (CHUNK // 32)
              for i in range(length // CHUNK)]
    return b"".join(chunks)


def fsynced(progress: Path) -> int:
    lines = [line for line in progress.read_text().splitlines() if line.isdigit()]
    return int(lines[-1]) if lines else 0


def fusegw_status(m: Mountd, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FUSEGW_SOCKET"}
    return subprocess.run([sys.executable, "-m", "fusegw", "status", "--socket",
                           str(m.node_socket), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_kill9_while_writing_comes_back_with_every_fsynced_byte(
        node: Mountd, capsys: pytest.CaptureFixture[str],
        record_property: Any) -> None:
    """kill -9 of a's gateway while a writer appends and fsyncs 64 KiB chunks into a vfolder:
    the mount serves again with a new pid within seconds; the file holds every byte fsync'ed
    before the kill; usage equals du -s -B1 once the rescan is done; the node's GET / and
    `fusegw status` list the death (cause, downtime, old and new pid)."""
    gw = node.gateway("a")
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=1 << 30)
    vfolder = gw.make_vfolder(qsid)
    target, progress = vfolder / "data.bin", node.base / "writer.progress"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(progress),
                               str(CHUNK)])
    try:
        wait_for(lambda: progress.exists() and fsynced(progress) >= 32 * CHUNK, 30,
                 "the writer under way")
        old_pid = gw.pid
        assert old_pid is not None
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: not _alive(old_pid), 10, "the gateway dead")
        recovered = wait_for(lambda: _answers(vfolder), RECOVERY_LIMIT * 2,
                             "a stat through the new mount")
        recovery = recovered - killed
        writer.wait(30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    with capsys.disabled():
        print(f"\nmountd: kill -9 to the first stat through the new mount: {recovery:.2f} s",
              file=sys.stderr)
    record_property("recovery_seconds", round(recovery, 3))
    assert recovery < RECOVERY_LIMIT

    a = node.serving("a", not_pid=old_pid)
    assert node.gateway("a").request("GET", "/").json()["pid"] == a["pid"] != old_pid
    length = fsynced(progress)
    assert length >= 32 * CHUNK
    with open(target, "rb") as f:
        assert f.read(length) == expected_bytes(length)

    backing = node.vols["a"].source / scope_hex(qsid)
    wait_for(lambda: node.volume("a")["accounting"] == "ready", 30,  # type: ignore[index]
             "the rescan of a's dirty scopes")
    wait_for(lambda: gw.describe(qsid)["used_bytes"] == du_bytes(backing), 20,
             "used_bytes == du -s -B1 of the scope")

    death = next(d for d in node.volume("a")["deaths"]  # type: ignore[index]
                 if d["old_pid"] == old_pid)
    assert death["cause"] == "killed by SIGKILL", death
    assert death["new_pid"] == a["pid"] and 0 < death["downtime_seconds"] < RECOVERY_LIMIT
    assert node.volume("a")["restarts"] >= 1  # type: ignore[index]

    human = fusegw_status(node)
    assert human.returncode == 0, human.stderr
    assert "killed by SIGKILL" in human.stdout and f"pid {old_pid} -> {a['pid']}" in human.stdout
    assert "c: start failed" in human.stdout, human.stdout
    as_json = fusegw_status(node, "--json")
    assert as_json.returncode == 0, as_json.stderr
    vols = {v["name"]: v for v in json.loads(as_json.stdout)["volumes"]}
    assert any(d["old_pid"] == old_pid for d in vols["a"]["deaths"])
    events = node.log.read_text()
    assert '"event": "gateway-died"' in events and '"event": "gateway-restarted"' in events


def _answers(path: Path) -> float | None:
    """The time of a successful statfs and stat of `path`, else None. Once the old gateway is
    dead its connection fails every statfs (ENOTCONN), while a stat may still be answered from
    the attributes the kernel cached: so only the new mount passes."""
    try:
        os.statvfs(path)
        os.stat(path)
    except OSError:
        return None
    return time.monotonic()


def test_sigstop_gateway_is_replaced(node: Mountd) -> None:
    """A gateway that stops answering (SIGSTOP) is replaced: its mount serves again under a new
    pid, the old process is gone, and the death says it stopped answering."""
    old_pid = node.serving("b")["pid"]
    os.kill(old_pid, signal.SIGSTOP)
    try:
        b = node.serving("b", not_pid=old_pid, timeout=30)
        wait_for(lambda: not _alive(old_pid), 15, "the stopped gateway gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old_pid, signal.SIGCONT)
    death = next(d for d in b["deaths"] if d["old_pid"] == old_pid)
    assert death["cause"].startswith("not answering"), death
    assert os.listdir(node.vols["b"].mountpoint) is not None  # the new mount answers


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- reload and stop ------------------------------------------------------------------------------


def test_sighup_adds_removes_and_restarts_only_what_changed(fresh: Mountd) -> None:
    m = fresh
    assert m.proc is not None
    x_pid, y_pid = m.serving("x")["pid"], m.serving("y")["pid"]
    z = m.vol("z")
    m.write_config([m.vols["x"], z])  # y removed, z added
    m.proc.send_signal(signal.SIGHUP)
    m.serving("z")
    wait_for(lambda: m.volume("y") is None and not is_mounted(m.vols["y"].mountpoint)
             and not _alive(y_pid), 30, "y removed and unmounted")
    assert m.serving("x")["pid"] == x_pid
    assert m.request("GET", "/quota-scopes", {"volume": "y"}).status_code == 404
    assert m.request("GET", "/quota-scopes", {"volume": "z"}).status_code == 200
    z_pid = m.serving("z")["pid"]

    m.write_config([], text="[volume.x]\nbogus_key = 1\n")  # invalid: nothing changes
    m.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in m.log.read_text(), 15, "the refusal logged")
    assert (m.serving("x")["pid"], m.serving("z")["pid"]) == (x_pid, z_pid)
    assert "bogus_key" in m.log.read_text()

    z.options["xattr_limits"] = True  # z's table changed: z alone restarts
    m.write_config([m.vols["x"], z])
    m.proc.send_signal(signal.SIGHUP)
    m.serving("z", not_pid=z_pid)
    assert m.serving("x")["pid"] == x_pid
    assert '"event": "config-reloaded"' in m.log.read_text()


def test_a_killed_mountd_is_succeeded_by_the_next(fresh: Mountd) -> None:
    """kill -9 of mountd leaves its gateways serving (each runs in a session of its own); the
    next mountd on the same file stops them cleanly and serves the volumes with its own."""
    m = fresh
    assert m.proc is not None
    old = {n: m.serving(n)["pid"] for n in ("x", "y")}
    m.proc.kill()
    m.proc.wait(10)
    assert all(_alive(p) for p in old.values())
    m.start()
    for name, pid in old.items():
        m.serving(name, not_pid=pid)
        wait_for(lambda pid=pid: not _alive(pid), 30, f"the old gateway of {name} gone")
    assert "did not start" in m.log.read_text()


def test_a_second_mountd_leaves_the_first_ones_volume_alone(
        fresh: Mountd, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second mountd configured with a volume the first one serves does not take it over:
    the volume is "restarting" there, naming the other mountd; stopping it unmounts nothing."""
    first = fresh
    x_pid = first.serving("x")["pid"]
    second = Mountd(tmp_path_factory.mktemp("second"), {}, health_timeout=10.0)
    second.base.chmod(0o755)
    try:
        second.write_config([first.vols["x"]])
        second.start()
        wait_for(lambda: _problem(second, "x"), 30, "the second mountd's verdict on x")
        assert "another fusegw-mountd (pid" in _problem(second, "x")
        assert second.proc is not None
        second.proc.send_signal(signal.SIGTERM)
        assert second.proc.wait(45) == 0
    finally:
        second.stop()
    assert first.serving("x")["pid"] == x_pid and is_mounted(first.vols["x"].mountpoint)


def _problem(m: Mountd, name: str) -> str:
    try:
        v = m.volume(name)
    except httpx.HTTPError:
        return ""
    return str(v.get("problem") or "") if v else ""


def test_sigterm_unmounts_everything_and_exits_0(fresh: Mountd) -> None:
    """SIGTERM with a file held open in a mount: every gateway stops, nothing stays mounted,
    the node socket goes, mountd exits 0."""
    m = fresh
    assert m.proc is not None
    gw = m.gateway("x")
    qsid = new_qsid()
    gw.create_scope(qsid)
    held = open(gw.make_vfolder(qsid) / "held", "w")  # noqa: SIM115 -- held across the stop
    try:
        pids = [m.serving(n)["pid"] for n in ("x", "y")]
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(45) == 0, m.diagnostics()
    finally:
        with contextlib.suppress(OSError):
            held.close()
    assert not any(is_mounted(v.mountpoint) for v in m.vols.values())
    assert not any(_alive(p) for p in pids)
    assert not m.node_socket.exists()
    assert list((m.base / "mountd").glob("*.toml")) == []  # the gateways' own files
    assert "stopping gateway" in m.log.read_text()
