"""A small network lab for tests where gateway processes stand in for cluster nodes and one
of them must lose Redis while the others keep it.

The host gets a Linux bridge with an address (10.231.X.1/24, X chosen free on this host);
Redis binds 127.0.0.1 and that address (`lab_redis`). Each `NetNode` is a named network
namespace joined to the bridge by a veth pair. A process started with `node.prefix`
(`nsenter --net=/run/netns/NAME ...`) sees only that namespace's network, but the host's
mount namespace: a FUSE mount it makes is visible to the test (`ip netns exec` would unshare
the mount namespace and hide it). `node.cut()` takes the host end of the veth down, a pulled
cable: packets either way are dropped, not refused, so established connections stall and new
ones time out; `node.heal()` brings it back and TCP's retransmissions carry on.

Names carry the pid of the pytest process (bridge and veth names must fit IFNAMSIZ, 15
characters), so runs side by side do not meet; what a crashed run left (its pid gone) is
deleted when a lab is set up. Teardown removes everything a lab made, also when a test fails.
Needs root, iproute2, nsenter and a kernel with bridge, veth and netns support.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from redis_fixture import RedisServer, start_redis, stop

PREFIX = "fgw"
NETNS_DIR = Path("/run/netns")
SUBNET = "10.231"  # 10.231.X.0/24, X per lab; a private range unlikely to clash
LOCK = Path("/run/lock/fusegw-netlab.lock")  # choosing X and creating the bridge, across runs
IFNAMSIZ = 15

# Bridge fgwb<pid>-<seq>, host-side veth fgwv<pid>-<seq>, namespace fgw-<pid>-<seq>: a
# leftover's pid tells whether the run that made it is still alive.
_LINK_RE = re.compile(rf"^{PREFIX}[bv](\d+)-\d+$")
_NETNS_RE = re.compile(rf"^{PREFIX}-(\d+)-\d+$")
_seq = itertools.count(1)  # per process, so two labs (or many nodes) never share a name
_ours: set[str] = set()  # made by this process and not yet removed: never stale


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; with `check`, fail with ip's own message (which names the fault)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check:
        assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.strip()}"
    return proc


def _name(kind: str) -> str:
    name = f"{PREFIX}{kind}{os.getpid()}-{next(_seq)}"
    assert len(name) <= IFNAMSIZ, f"interface name {name!r} longer than {IFNAMSIZ}"
    return name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str, pid: int) -> bool:
    """A leftover of a dead run, or of an earlier process with our pid (what carries our pid
    but this process did not make)."""
    if pid == os.getpid():
        return name not in _ours
    return not _pid_alive(pid)


def remove_stale() -> list[str]:
    """Delete the links and namespaces with our prefix whose run is gone; returns the names.
    Links first: a namespace a leaked process still holds would keep its veth alive."""
    removed: list[str] = []
    for line in ip("-o", "link", "show").stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        m = _LINK_RE.match(name)
        if m and _stale(name, int(m.group(1))) and ip("link", "del", name,
                                                      check=False).returncode == 0:
            removed.append(name)
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NETNS_RE.match(name)
        if m and _stale(name, int(m.group(1))) and ip("netns", "del", name,
                                                      check=False).returncode == 0:
            removed.append(name)
    return removed


def _kernel_lacks(what: str, proc: subprocess.CompletedProcess[str]) -> str:
    return (f"cannot create a {what} ({proc.stderr.strip()}): the kernel lacks {what} support "
            f"(CONFIG_{what.upper()}) or this is not root; tests/netns.py needs both")


@dataclass
class NetNode:
    """One network namespace on the lab's bridge: a cluster node's view of the network."""

    lab: NetLab
    netns: str
    host_veth: str
    address: str
    is_cut: bool = False

    @property
    def prefix(self) -> list[str]:
        """argv to put in front of a command so it runs on this node's network (and the host's
        mounts: nsenter --net only, never `ip netns exec`, which hides FUSE mounts)."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns}"]

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """subprocess.run(argv) inside the node, text output captured, with a timeout."""
        kw.setdefault("timeout", 60)
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True, **kw)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        """subprocess.Popen(argv) inside the node, in text mode."""
        return subprocess.Popen([*self.prefix, *argv], text=True, **kw)

    def connects(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside the node to host:port succeeds in `timeout`."""
        code = ("import socket, sys; "
                "socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))")
        return self.run([sys.executable, "-c", code, host, str(port), str(timeout)],
                        timeout=timeout + 15).returncode == 0

    def cut(self) -> None:
        """Partition the node from the lab (and so from Redis): the host end of its veth goes
        down, packets both ways are dropped. Nothing is refused or reset: an established
        connection stalls, a new one times out, as when a cable or a switch port fails."""
        ip("link", "set", self.host_veth, "down")
        self.is_cut = True

    def heal(self) -> None:
        """Undo cut(): the link comes up and joins the bridge's forwarding again; established
        connections resume with TCP's next retransmission (if neither end gave up)."""
        ip("link", "set", self.host_veth, "up")
        self.is_cut = False

    def remove(self) -> list[str]:
        """Delete the veth (both ends: a process still in the namespace would otherwise keep
        it) and the namespace. Returns what failed, for the lab's teardown to report."""
        errors = []
        for args in (("link", "del", self.host_veth), ("netns", "del", self.netns)):
            proc = ip(*args, check=False)
            gone = "Cannot find device" in proc.stderr or "No such file" in proc.stderr
            if proc.returncode != 0 and not gone:
                errors.append(f"ip {' '.join(args)}: {proc.stderr.strip()}")
            else:
                _ours.discard(args[-1])
        return errors


@dataclass
class NetLab:
    """The host side: one bridge with `host_address`, which lab nodes reach Redis by."""

    bridge: str
    subnet: int  # X of 10.231.X.0/24
    nodes: list[NetNode] = field(default_factory=list)
    _next_host: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    @property
    def host_address(self) -> str:
        return f"{SUBNET}.{self.subnet}.1"

    def redis_url(self, server: RedisServer) -> str:
        """The URL of `server` (started with `extra_bind=lab.host_address`) for a node."""
        return server.url_at(self.host_address)

    @classmethod
    def create(cls) -> NetLab:
        """Clear a crashed run's leftovers, pick a /24 no address on this host is in, and make
        the bridge, all under a lock so two runs starting together do not pick the same."""
        for tool in ("ip", "nsenter"):
            assert shutil.which(tool), f"{tool} is missing (tests/netns.py needs iproute2, "\
                                       "util-linux)"
        assert os.geteuid() == 0, "tests/netns.py needs root (network namespaces, bridges)"
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_stale()
            used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show").stdout
            start = os.getpid() % 256
            free = [x % 256 for x in range(start, start + 256)
                    if not re.search(rf"\b{re.escape(SUBNET)}\.{x % 256}\.", used)]
            assert free, f"no free {SUBNET}.X.0/24 on this host"
            lab = cls(_name("b"), free[0])
            _ours.add(lab.bridge)
            proc = ip("link", "add", lab.bridge, "type", "bridge", check=False)
            assert proc.returncode == 0, _kernel_lacks("bridge", proc)
            try:
                ip("addr", "add", f"{lab.host_address}/24", "dev", lab.bridge)
                ip("link", "set", lab.bridge, "up")
            except BaseException:
                ip("link", "del", lab.bridge, check=False)
                raise
        return lab

    def node(self) -> NetNode:
        """A new namespace with lo up and eth0 = 10.231.X.N/24 on the bridge, N = 2, 3, ...;
        returned once the host answers a ping from it (so a test's first packet is not lost
        to ARP or a port still coming up)."""
        seq = next(_seq)
        node = NetNode(self, f"{PREFIX}-{os.getpid()}-{seq}", f"{PREFIX}v{os.getpid()}-{seq}",
                       f"{SUBNET}.{self.subnet}.{next(self._next_host)}")
        assert len(node.host_veth) <= IFNAMSIZ, node.host_veth
        _ours.update((node.netns, node.host_veth))
        self.nodes.append(node)
        try:
            ip("netns", "add", node.netns)
            proc = ip("link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0",
                      "netns", node.netns, check=False)
            assert proc.returncode == 0, _kernel_lacks("veth", proc)
            ip("link", "set", node.host_veth, "master", self.bridge, "up")
            ip("-n", node.netns, "link", "set", "lo", "up")
            ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            ip("-n", node.netns, "link", "set", "eth0", "up")
            _wait_reaches(node, self.host_address)
        except BaseException:
            self.nodes.remove(node)
            node.remove()
            raise
        return node

    def close(self) -> None:
        """Remove every node, then the bridge; try all of it, then fail naming what stayed."""
        errors: list[str] = []
        for node in reversed(self.nodes):
            errors += node.remove()
        self.nodes.clear()
        proc = ip("link", "del", self.bridge, check=False)
        if proc.returncode != 0 and "Cannot find device" not in proc.stderr:
            errors.append(f"ip link del {self.bridge}: {proc.stderr.strip()}")
        else:
            _ours.discard(self.bridge)
        assert not errors, "lab teardown left: " + "; ".join(errors)


def _wait_reaches(node: NetNode, address: str) -> None:
    """Poll (20 s in all) until a TCP connection from inside `node` to a listener of ours on
    `address` succeeds (there is no ping on this machine: TCP is what the tests use anyway)."""
    with socket.create_server((address, 0)) as listener:
        port = listener.getsockname()[1]
        wait_for(lambda: node.connects(address, port),
                 what=f"{address}:{port} accepting from {node.netns}")


@pytest.fixture(scope="module")
def net_lab() -> Iterator[NetLab]:
    """The bridge for a module's nodes; removed, with any node left on it, after the module."""
    lab = NetLab.create()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def make_node(net_lab: NetLab) -> Iterator[Callable[[], NetNode]]:
    """Factory: make_node() -> a NetNode on the module's lab; removed after the test (stop
    the gateways in it first, or let their own fixtures do so: a process left in the
    namespace loses its network, nothing else)."""
    made: list[NetNode] = []

    def make() -> NetNode:
        node = net_lab.node()
        made.append(node)
        return node

    yield make
    errors: list[str] = []
    for node in reversed(made):
        errors += node.remove()
        if node in net_lab.nodes:
            net_lab.nodes.remove(node)
    assert not errors, "node teardown left: " + "; ".join(errors)


@pytest.fixture(scope="module")
def lab_redis(net_lab: NetLab, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 and the lab's host address: the test reaches it by
    `.url`/`.client()`, nodes by `net_lab.redis_url(server)`."""
    server = start_redis(tmp_path_factory.mktemp("lab-redis"), extra_bind=net_lab.host_address)
    try:
        yield server
    finally:
        stop(server)
