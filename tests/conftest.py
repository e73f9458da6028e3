"""Fixtures that run the real gateway: a volume directory, a FUSE mount, the control socket.

Every gateway a test starts is stopped and unmounted in teardown, also when the test fails.
Waiting is always polling with a deadline, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

DEADLINE = 20.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE, what: str = "") -> Any:
    """Poll until predicate() is truthy; fail the test with `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def new_qsid(kind: str = "user") -> str:
    return f"{kind}:{uuid.uuid4()}"


def scope_hex(qsid: str) -> str:
    return uuid.UUID(qsid.split(":", 1)[1]).hex


def vfolder_rel(qsid: str, fid: str) -> str:
    return f"{scope_hex(qsid)}/{fid[0:2]}/{fid[2:4]}/{fid[4:]}"


def inodes_below(path: Path) -> int:
    """Distinct inodes below `path` (not `path` itself), hard links once, links not followed:
    the gateway's `used_inodes`."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            seen.add((st.st_dev, st.st_ino))
    return len(seen)


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


@dataclass
class Gateway:
    """One `fusegw mount` process over `source`, mounted at `mountpoint`."""

    source: Path
    mountpoint: Path
    socket: Path
    log: Path
    volume: str
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None
    # argv put before `python -m fusegw`, e.g. a NetNode's `nsenter --net=...` (tests/netns.py)
    prefix: list[str] = field(default_factory=list)

    def start(self, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [*self.prefix, sys.executable, "-m", "fusegw", "mount", str(self.source),
                str(self.mountpoint), "--control-socket", str(self.socket),
                "--log-file", str(self.log), "--volume", self.volume, *self.extra]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **self.env})
        if check:
            assert proc.returncode == 0, proc.stderr + self.read_log()
            self.pid = self.client().get("/").json()["pid"]
        return proc

    def read_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)),
                            base_url="http://fusegw", timeout=30)

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        with self.client() as c:
            return c.request(method, path, content=None if body is None else json.dumps(body))

    def create_scope(self, qsid: str, limit_bytes: int | None = None,
                     limit_inodes: int | None = None) -> Path:
        options: dict[str, int] = {}
        if limit_bytes is not None:
            options["limit_bytes"] = limit_bytes
        if limit_inodes is not None:
            options["limit_inodes"] = limit_inodes
        r = self.request("POST", "/quota-scope",
                         {"volume": self.volume, "qsid": qsid, "options": options or None})
        assert r.status_code == 204, r.text
        return self.mountpoint / scope_hex(qsid)

    def describe(self, qsid: str) -> dict[str, Any]:
        r = self.request("GET", "/quota-scope", {"volume": self.volume, "qsid": qsid})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def make_vfolder(self, qsid: str, fid: str | None = None) -> Path:
        """A vfolder directory created through the mount (as a manager's mkdir would)."""
        path = self.mountpoint / vfolder_rel(qsid, fid or uuid.uuid4().hex)
        path.mkdir(parents=True)
        return path

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a zombie is not alive
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split()[2] != "Z"
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM and wait for a clean unmount; force it if the gateway does not comply."""
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_for(lambda: not self.alive(), 15, "gateway exit")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
        self._force_unmount()
        self.pid = None

    def kill9(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not self.alive(), 15, "gateway death")
        self._force_unmount()
        self.pid = None

    def kill9_leaving_dead_mount(self) -> None:
        """SIGKILL, as a crash, and leave the dead FUSE mount where it is (the kernel may go
        on answering stat of it from cached attributes). stop() clears it (lazily)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not self.alive(), 15, "gateway death")
        self.pid = None

    def _force_unmount(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)],
                           capture_output=True)
            if is_mounted(self.mountpoint):
                subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)


@pytest.fixture(scope="module")
def public_dir() -> Iterator[Path]:
    """A directory every uid may traverse (pytest's own is 0700), for mount points and
    sockets that other users' processes must reach. Volumes go in `private_source(base,
    NAME)`, below a 0700 directory, as the gateway demands (users must not reach them)."""
    base = Path(tempfile.mkdtemp(prefix="fusegw-test-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    if not any(is_mounted(p) for p in base.glob("*.mnt")):
        shutil.rmtree(base, ignore_errors=True)


def private_source(base: Path, name: str) -> Path:
    """A new volume directory base/private/NAME: the recommended layout, a root-owned 0700
    parent that keeps users off the backing files, the volume itself 0755."""
    private = base / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    private.chmod(0o700)  # whatever the umask made of it
    source = private / name
    source.mkdir()
    return source


def start_gateway(base: Path, name: str, extra: list[str] | None = None,
                  env: dict[str, str] | None = None) -> Gateway:
    """A gateway over base/private/name mounted at base/name.mnt, for module-scoped
    fixtures."""
    source = private_source(base, name)
    (base / f"{name}.mnt").mkdir()
    gw = Gateway(source, base / f"{name}.mnt", base / f"{name}.sock", base / f"{name}.log",
                 name, extra or [], env or {})
    try:
        gw.start()
    except BaseException:
        gw.stop()
        raise
    return gw


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Factory: make_gateway(name="vol", extra=[...], env={...}, start=True)."""
    made: list[Gateway] = []

    def make(name: str = "vol", extra: list[str] | None = None,
             env: dict[str, str] | None = None, start: bool = True,
             source: Path | None = None) -> Gateway:
        src = source or tmp_path / name
        src.mkdir(exist_ok=True)
        mnt = tmp_path / f"{name}.mnt"
        mnt.mkdir(exist_ok=True)
        gw = Gateway(src, mnt, tmp_path / f"{name}.sock", tmp_path / f"{name}.log", name,
                     extra or [], env or {})
        made.append(gw)
        if start:
            gw.start()
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    gw: Gateway = make_gateway()
    return gw


def run_as(uid: int, argv: list[str], gid: int | None = None, **kw: Any
           ) -> subprocess.CompletedProcess[str]:
    """Run a command as another user (no supplementary groups)."""
    g = uid if gid is None else gid
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={g}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60, **kw)


def fill_until_refused(path: Path, code: int) -> None:
    """Append 4 KiB blocks to a new file at `path` until a write fails, with errno `code`
    (EDQUOT at a scope's limit, ENOSPC on a full filesystem)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == code, e
    finally:
        os.close(fd)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now, for a test's listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
