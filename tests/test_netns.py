"""Self-tests of the network lab (tests/netns.py): a node reaches the host, a gateway started
in a node mounts where the host sees it, cut() partitions one node from Redis (established
connections stall, new ones fail) while the rest keep it, heal() undoes it, and teardown and
the stale sweep leave no names behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Gateway, is_mounted, new_qsid, private_source, wait_for
from netns import (
    IFNAMSIZ,
    PREFIX,
    NetLab,
    NetNode,
    ip,
    lab_redis,
    make_node,
    net_lab,
    remove_stale,
)
from redis_fixture import RedisServer

__all__ = ["lab_redis", "make_node", "net_lab"]

# One-shot, as a gateway's redis-py would: a new connection and a PING, short timeouts.
PING = ("import sys, redis; "
        "print(redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=1)"
        ".ping())")

# A long-lived client holding one TCP connection, driven by lines on stdin: `ping` sends PING
# on that connection and answers `ok` if +PONG comes back within a second, else `timeout` or
# `error ...`: the difference between a stalled connection and a refused or reset one.
PROBE = textwrap.dedent("""
    import socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    conn = socket.create_connection((host, port), timeout=2)
    conn.settimeout(1)
    print("connected", flush=True)
    for line in sys.stdin:
        try:
            conn.sendall(b"PING\\r\\n")
            print("ok" if b"+PONG" in conn.recv(4096) else "bad", flush=True)
        except TimeoutError:
            print("timeout", flush=True)
        except OSError as e:
            print("error", e, flush=True)
""")


def links() -> list[str]:
    return [line.split(":", 2)[1].strip().split("@", 1)[0]
            for line in ip("-o", "link", "show").stdout.splitlines()]


def namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.split()]


def pings(node: NetNode, url: str) -> bool:
    return node.run([sys.executable, "-c", PING, url], timeout=15).stdout.strip() == "True"


def test_a_node_has_its_own_network_and_reaches_the_host(
        net_lab: NetLab, make_node: Callable[[], NetNode]) -> None:
    a, b = make_node(), make_node()
    assert a.address != b.address and a.address.startswith(net_lab.host_address[:-1])
    assert all(len(n) <= IFNAMSIZ for n in (net_lab.bridge, a.host_veth, b.host_veth))
    assert a.prefix == ["nsenter", f"--net=/run/netns/{a.netns}"]
    inside = a.run(["ip", "-4", "-o", "addr", "show"]).stdout
    assert f"{a.address}/24" in inside and "eth0" in inside and "127.0.0.1" in inside
    assert net_lab.host_address not in inside  # not the host's network
    # node to node over the bridge: b connects to a listener in a
    code = ("import socket, sys; s = socket.create_server((sys.argv[1], 0)); "
            "print(s.getsockname()[1], flush=True); s.accept()")
    listener = a.popen([sys.executable, "-c", code, a.address], stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        assert b.connects(a.address, port)
        assert listener.wait(15) == 0  # it accepted
    finally:
        listener.kill()
        listener.wait()
        if listener.stdout is not None:
            listener.stdout.close()


def test_a_gateway_started_in_a_node_mounts_where_the_host_sees_it(
        tmp_path: Path, make_node: Callable[[], NetNode]) -> None:
    """nsenter --net keeps the host's mount namespace: the FUSE mount a node's gateway makes
    is the host's, written through from here; the gateway runs in the node's network."""
    node = make_node()
    source = private_source(tmp_path, "vol")
    mnt = tmp_path / "vol.mnt"
    mnt.mkdir()
    gw = Gateway(source, mnt, tmp_path / "vol.sock", tmp_path / "vol.log", "vol", extra=[],
                 env={}, prefix=node.prefix)
    try:
        gw.start()
        assert gw.pid is not None
        assert os.stat(f"/proc/{gw.pid}/ns/net").st_ino == os.stat(
            f"/run/netns/{node.netns}").st_ino
        assert os.stat(f"/proc/{gw.pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
        assert is_mounted(mnt)
        qsid = new_qsid()
        gw.create_scope(qsid, limit_bytes=2**20)
        folder = gw.make_vfolder(qsid)
        (folder / "hello").write_bytes(b"from the host")
        assert (folder / "hello").read_bytes() == b"from the host"
        backing = source / folder.relative_to(mnt) / "hello"
        assert backing.read_bytes() == b"from the host"
        assert gw.describe(qsid)["used_bytes"] > 0
    finally:
        gw.stop()
    assert not is_mounted(mnt)


def test_cut_partitions_one_node_from_redis_and_heal_restores_it(
        net_lab: NetLab, lab_redis: RedisServer, make_node: Callable[[], NetNode]) -> None:
    node, other = make_node(), make_node()
    url = net_lab.redis_url(lab_redis)
    assert pings(node, url) and pings(other, url)
    probe = node.popen([sys.executable, "-c", PROBE, net_lab.host_address,
                        str(lab_redis.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert probe.stdin is not None and probe.stdout is not None
    stdin, stdout = probe.stdin, probe.stdout

    def ask() -> str:
        stdin.write("ping\n")
        stdin.flush()
        return stdout.readline().strip()

    try:
        assert stdout.readline().strip() == "connected"
        assert ask() == "ok"
        node.cut()
        assert node.is_cut
        assert ask() == "timeout"  # stalled: neither refused nor reset
        assert not pings(node, url)  # a new connection fails (within its 1 s timeout)
        assert pings(other, url) and lab_redis.client().ping()  # only this node is cut off
        assert ask() == "timeout"
        node.heal()
        assert not node.is_cut
        wait_for(lambda: pings(node, url), what="a new connection after heal")
        wait_for(lambda: ask() == "ok", what="the stalled connection resuming")
    finally:
        probe.kill()
        probe.wait()
        stdin.close()
        stdout.close()


def test_close_removes_everything_even_with_a_process_left_in_a_node() -> None:
    """A process left in a namespace keeps it (and its veth) alive unless the veth is deleted
    by name: close() does, and the names are gone."""
    lab = NetLab.create()
    sleeper = None
    try:
        node = lab.node()
        sleeper = node.popen(["sleep", "600"])
        assert node.host_veth in links() and node.netns in namespaces()
    finally:
        lab.close()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert not {lab.bridge, node.host_veth} & set(links())
    assert node.netns not in namespaces()


def test_the_stale_sweep_deletes_a_dead_runs_names_only() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is now nobody's (reuse within this test is not to be expected)
    stale_ns, stale_veth = f"{PREFIX}-{dead.pid}-1", f"{PREFIX}v{dead.pid}-1"
    live_ns = f"{PREFIX}-1-999"  # pid 1 lives: another run's, not to be touched
    try:
        ip("netns", "add", stale_ns)
        ip("netns", "add", live_ns)
        ip("link", "add", stale_veth, "type", "veth", "peer", "name", "eth0", "netns",
           stale_ns)
        removed = remove_stale()
        assert stale_ns in removed and stale_veth in removed and live_ns not in removed
        assert stale_veth not in links() and stale_ns not in namespaces()
        assert live_ns in namespaces()
    finally:
        for args in (("link", "del", stale_veth), ("netns", "del", stale_ns),
                     ("netns", "del", live_ns)):
            ip(*args, check=False)


@pytest.fixture(autouse=True, scope="module")
def nothing_left_behind() -> Iterator[None]:
    """After the module (and its lab's teardown), no name of this process remains."""
    yield None
    mine = f"{os.getpid()}-"
    assert not [n for n in links() + namespaces() if n.startswith(PREFIX) and mine in n]
