"""The shared quota ledger on Redis (issue 13), measured with real gateways on a real
redis-server: `python bench/run.py --only shared [--quick]` (results in
bench/results/shared-{quick,full}.*).

Gateways, all up for the whole run (an idle one ticks alike in every variant):

- `local`: one gateway on the local ledger, its own backing directory (no `-o ledger`);
- `single`: one gateway on the shared ledger, its own backing directory;
- `n0`..`n3`: four gateways on the shared ledger over ONE backing directory, each with its
  own mount point and control socket;

and a redis-server of the run's own on a free port (`--save "" --appendonly no`). The native
reference is a plain directory beside the backing directories (var/bench/shared/private/
native, the same filesystem), at the vfolders' depth.

Phases:

1. throughput: 4 writer processes, 1 MiB writes, into a scope with a limit far above what is
   written: native, local (a), single (b), four nodes (c, writer i on node i). Two modes: each
   file fsynced before its close (disk-bound), and buffered (no fsync; files deleted before
   writeback: the FUSE and ledger path, CPU-bound). Every repetition runs every variant of
   both modes, the variants' order rotated by one each repetition. Ratios are per
   repetition (paired), then median and range.
2. Redis round trips (`GET /` -> ledger.round_trips, summed over the writing nodes) over
   each shared write (its run plus SETTLE seconds, for the close's commit), and over an idle
   window of the same length right after: raw and net (raw - idle) per GiB written.
3. convergence: a 1 MiB file written (and closed) through node A; node B's
   `user.fusegw.used_bytes` polled (1 ms) until it shows it. Limit propagation: a PATCH of
   the limit down to the usage on A; until B's GET /quota-scope shows it, and until a write
   on B (64 KiB appends, 2 ms apart) is refused with EDQUOT.
4. overshoot: a 64 MiB limit, 2 writers on each of the 4 nodes fill until EDQUOT; `du -s -B1`
   of the scope minus the limit, against nodes x the minimum grant.

Every gateway and redis-server started here is stopped, and every mount unmounted, also on
failure or SIGTERM; leftovers of an earlier run killed hard (pids in var/bench/shared/pids)
are cleared first.
"""

from __future__ import annotations

import errno
import json
import math
import multiprocessing as mp
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench" / "shared"
PRIVATE = WORK / "private"  # 0700: the backing directories go below it, as fusegw demands
PIDS = WORK / "pids"  # every process this run starts, for the next run to clear if need be
PY = sys.executable
MiB = 2**20
GiB = 2**30
NODES = 4
MIN_GRANT = MiB  # grant_min_bytes's default
FAR_ABOVE = 2**50  # a limit nothing here comes near
TICK = 0.4  # fusegw.ledger.redis_ledger.TICK_SECONDS
GIVE_UP = 10.0  # seconds a convergence sample waits
SETTLE = 0.5  # after a write: the close's commit and the next tick are in the window
VARIANTS = ["native", "local", "single", "shared4"]
LABELS = {"native": "native (backing fs directly)", "local": "(a) 1 gateway, local ledger",
          "single": "(b) 1 gateway, shared ledger",
          "shared4": f"(c) {NODES} gateways, shared ledger, one backing dir"}
MODES = ["fsync", "buffered"]
MODE_LABELS = {"fsync": "each file fsynced before close",
               "buffered": "buffered, no fsync (files deleted before writeback)"}

T = TypeVar("T")


def settings(quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "reps": 5 if quick else 7,
        "writers": 4,
        "total_mib": 256 if quick else 1024,  # per variant and repetition, all writers
        "file_mib": 32 if quick else 64,
        "write_kib": 1024,
        "convergence_samples": 30 if quick else 100,
        "convergence_file_mib": 1,
        "limit_samples": 8 if quick else 20,
        "overshoot_runs": 3 if quick else 6,
        "overshoot_limit_mib": 64,
        "overshoot_writers_per_node": 2,
        "overshoot_chunk_kib": 128,
        "overshoot_file_mib": 1,
    }


# -- helpers ------------------------------------------------------------------------------------


def wait_for(pred: Callable[[], T], timeout: float, what: str, step: float = 0.01) -> T:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out ({timeout} s) waiting for {what}")
        time.sleep(step)


def mounts_below(path: Path) -> list[Path]:
    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [Path(p) for line in f if (p := line.split()[4]).startswith(prefix)]


def is_mounted(path: Path) -> bool:
    return path in mounts_below(path.parent)


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout`."""
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if alive(pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remember(pid: int) -> None:
    with PIDS.open("a") as f:
        f.write(f"{pid}\n")


def clear_leftovers() -> None:
    """What an earlier run killed hard left: its processes (only those whose command line
    names this work directory) and its mounts below it."""
    if PIDS.exists():
        for word in PIDS.read_text().split():
            pid = int(word)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(WORK).encode() in cmdline:
                terminate(pid)
        PIDS.unlink()
    for mnt in mounts_below(WORK):
        force_unmount(mnt)
    if mounts_below(WORK):
        raise SystemExit(f"mounts left below {WORK}: {mounts_below(WORK)}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def scope_hex(qsid: str) -> str:
    return uuid.UUID(qsid.split(":", 1)[1]).hex


def vfolder_rel(qsid: str, fid: str) -> str:
    """As tests/conftest.py: SCOPE/ab/cd/rest."""
    return f"{scope_hex(qsid)}/{fid[0:2]}/{fid[2:4]}/{fid[4:]}"


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def used_xattr(path: Path) -> int:
    return int(os.getxattr(path, "user.fusegw.used_bytes"))


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def busy_percent() -> float:
    return float(psutil.cpu_percent(interval=1.0))


# -- the processes ------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    argv: list[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_redis() -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing (the Debian package redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(WORK)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    remember(proc.pid)
    server = RedisServer(port, proc, argv)

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(server.url).ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, 20, "redis-server answering PING", 0.05)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class Gateway:
    """One `python -m fusegw mount` over `source`, mounted at WORK/NAME.mnt."""

    name: str
    source: Path
    volume: str
    options: str = ""
    pid: int = 0
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def mnt(self) -> Path:
        return WORK / f"{self.name}.mnt"

    @property
    def sock(self) -> Path:
        return WORK / f"{self.name}.sock"

    @property
    def log(self) -> Path:
        return WORK / f"{self.name}.log"

    def argv(self) -> list[str]:
        return [PY, "-m", "fusegw", "mount", str(self.source), str(self.mnt),
                "--control-socket", str(self.sock), "--log-file", str(self.log),
                "--volume", self.volume, *(["-o", self.options] if self.options else [])]

    def start(self) -> None:
        self.mnt.mkdir(exist_ok=True)
        proc = subprocess.run(self.argv(), capture_output=True, text=True, timeout=120,
                              cwd=ROOT)
        if proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"gateway {self.name} did not start: {proc.stderr.strip()}\n"
                               f"{tail}")
        self.pid = int(self.get("/")["pid"])
        remember(self.pid)

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)),
                                        base_url="http://fusegw", timeout=60)
        return self._client

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.client.request(method, path,
                                   content=None if body is None else json.dumps(body))

    def get(self, path: str) -> dict[str, Any]:
        r = self.request("GET", path)
        r.raise_for_status()
        return dict(r.json())

    def ledger(self) -> dict[str, Any]:
        return dict(self.get("/")["ledger"])

    def describe(self, qsid: str) -> dict[str, Any]:
        r = self.request("GET", "/quota-scope", {"volume": self.volume, "qsid": qsid})
        r.raise_for_status()
        return dict(r.json())

    def set_limit(self, qsid: str, limit: int) -> None:
        r = self.request("PATCH", "/quota-scope", {"volume": self.volume, "qsid": qsid,
                                                   "options": {"limit_bytes": limit}})
        if r.status_code != 204:
            raise RuntimeError(f"PATCH /quota-scope on {self.name}: {r.status_code} {r.text}")

    def make_scope(self, limit: int) -> tuple[str, str]:
        """A new scope with `limit` and a vfolder in it (made through this mount): (qsid,
        the vfolder's path relative to a mount point)."""
        qsid = f"user:{uuid.uuid4()}"
        r = self.request("POST", "/quota-scope", {"volume": self.volume, "qsid": qsid,
                                                  "options": {"limit_bytes": limit}})
        if r.status_code != 204:
            raise RuntimeError(f"POST /quota-scope on {self.name}: {r.status_code} {r.text}")
        rel = vfolder_rel(qsid, uuid.uuid4().hex)
        (self.mnt / rel).mkdir(parents=True)
        return qsid, rel

    def stop(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.close()
            self._client = None
        if self.pid:
            terminate(self.pid)
        force_unmount(self.mnt)
        self.pid = 0


@dataclass
class Rig:
    redis: RedisServer
    local: Gateway
    single: Gateway
    nodes: list[Gateway]
    shared_source: Path
    native_root: Path


@contextmanager
def rig() -> Iterator[Rig]:
    """The redis-server and the six gateways; all stopped (and unmounted) on the way out."""
    WORK.mkdir(parents=True, exist_ok=True)
    clear_leftovers()
    if PRIVATE.exists():
        shutil.rmtree(PRIVATE)
    PRIVATE.mkdir(mode=0o700)
    PRIVATE.chmod(0o700)
    for name in ("local", "single", "shared", "native"):
        (PRIVATE / name).mkdir()
    gateways: list[Gateway] = []
    server: RedisServer | None = None
    try:
        server = start_redis()

        def shared(node: str) -> str:
            return f"ledger=redis,redis_url={server.url},node_id={node}"

        local = Gateway("local", PRIVATE / "local", "local")
        single = Gateway("single", PRIVATE / "single", "single", shared("single"))
        nodes = [Gateway(f"n{i}", PRIVATE / "shared", "shared", shared(f"n{i}"))
                 for i in range(NODES)]
        for gw in (local, single, *nodes):
            gateways.append(gw)
            gw.start()
        yield Rig(server, local, single, nodes, PRIVATE / "shared", PRIVATE / "native")
    finally:
        for gw in reversed(gateways):
            try:
                gw.stop()
            except Exception as e:  # the others are stopped all the same
                print(f"stopping {gw.name}: {e}", file=sys.stderr)
        if server is not None:
            server.stop()
        for mnt in mounts_below(WORK):
            force_unmount(mnt)
        if not mounts_below(WORK):
            shutil.rmtree(PRIVATE, ignore_errors=True)
        with suppress(FileNotFoundError):
            PIDS.unlink()


def serves(gw: Gateway, qsid: str, rel: str, limit: int) -> bool:
    return (gw.mnt / rel).is_dir() and limit_is(gw, qsid, limit)


def limit_is(gw: Gateway, qsid: str, limit: int) -> bool:
    return bool(gw.describe(qsid)["limit_bytes"] == limit)


def settled_usage(nodes: list[Gateway], qsid: str, scope_dir: Path) -> int | None:
    """The scope's usage if every node's GET /quota-scope reports what `du -s -B1` of the
    backing directory says (nodes merely agreeing may all be one tick behind)."""
    disk = du_bytes(scope_dir)
    return disk if all(int(gw.describe(qsid)["used_bytes"]) == disk for gw in nodes) else None


def figures_are_du(nodes: list[Gateway], qsid: str, scope_dir: Path) -> bool:
    return {int(gw.describe(qsid)["used_bytes"]) for gw in nodes} == {du_bytes(scope_dir)}


def xattrs_settled(paths: list[Path], scope_dir: Path) -> int | None:
    """The usage if every path's xattr shows what du of the backing directory says (> 0:
    the vfolder's directories count)."""
    disk = du_bytes(scope_dir)
    return disk if all(used_xattr(p) == disk for p in paths) else None


def xattr_reaches(path: Path, value: int) -> bool:
    return used_xattr(path) >= value


def shared_scope(nodes: list[Gateway], limit: int) -> tuple[str, str]:
    """A scope made on the first node, once every node serves it and its vfolder."""
    qsid, rel = nodes[0].make_scope(limit)
    for gw in nodes[1:]:
        wait_for(partial(serves, gw, qsid, rel, limit), 20, f"the scope on {gw.name}")
    return qsid, rel


# -- 1 and 2: throughput and round trips --------------------------------------------------------


def _writer(directory: Path, i: int, files: int, file_mib: int, fsync: bool,
            barrier: Any) -> None:
    """Forked: `files` files of `file_mib` MiB in 1 MiB writes, each fsynced if asked."""
    block = os.urandom(MiB)
    barrier.wait(60)
    for j in range(files):
        fd = os.open(directory / f"w{i}-{j}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(file_mib):
                if os.write(fd, block) != MiB:
                    raise OSError(errno.EIO, "short write")
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def write_round(dirs: list[Path], files: int, file_mib: int, fsync: bool) -> float:
    """One writer process per entry of `dirs`, released together: wall seconds until the
    last has closed its last file."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(len(dirs) + 1)
    procs = [ctx.Process(target=_writer, args=(d, i, files, file_mib, fsync, barrier))
             for i, d in enumerate(dirs)]
    for p in procs:
        p.start()
    try:
        barrier.wait(60)
        t0 = time.perf_counter()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a writer failed (exit codes {[p.exitcode for p in procs]})")
    return seconds


def trips(nodes: list[Gateway]) -> tuple[int, int]:
    """(round trips, commits) summed over `nodes`."""
    reports = [gw.ledger() for gw in nodes]
    return sum(int(r["round_trips"]) for r in reports), sum(int(r["commits"]) for r in reports)


def throughput_phase(r: Rig, s: dict[str, Any]) -> dict[str, Any]:
    writers = s["writers"]
    files = s["total_mib"] // writers // s["file_mib"]
    written = writers * files * s["file_mib"] * MiB
    _, rel_local = r.local.make_scope(FAR_ABOVE)
    _, rel_single = r.single.make_scope(FAR_ABOVE)
    _, rel_shared = shared_scope(r.nodes, FAR_ABOVE)
    native = r.native_root / rel_local  # the vfolders' depth: path walks cost alike
    native.mkdir(parents=True)
    dirs = {
        "native": [native] * writers,
        "local": [r.local.mnt / rel_local] * writers,
        "single": [r.single.mnt / rel_single] * writers,
        "shared4": [r.nodes[i % NODES].mnt / rel_shared for i in range(writers)],
    }
    ledger_nodes = {"single": [r.single], "shared4": r.nodes}
    mbps: dict[str, dict[str, list[float]]] = {m: {v: [] for v in VARIANTS} for m in MODES}
    rts: dict[str, dict[str, dict[str, list[float]]]] = {
        m: {v: {"raw": [], "idle": [], "net": [], "commits": [], "idle_per_node_s": []}
            for v in ledger_nodes}
        for m in MODES}
    order_log: list[list[str]] = []
    for rep in range(s["reps"]):
        modes = MODES if rep % 2 == 0 else MODES[::-1]
        for mode in modes:
            order = VARIANTS[rep % 4:] + VARIANTS[:rep % 4]
            order_log.append([f"{mode}:{v}" for v in order])
            for variant in order:
                nodes = ledger_nodes.get(variant, [])
                before = trips(nodes) if nodes else (0, 0)
                seconds = write_round(dirs[variant], files, s["file_mib"], mode == "fsync")
                mbps[mode][variant].append(written / 1e6 / seconds)
                if nodes:
                    time.sleep(SETTLE)
                    after = trips(nodes)
                window = seconds + SETTLE
                for i, d in enumerate(dirs[variant]):
                    for j in range(files):
                        (d / f"w{i}-{j}").unlink()
                os.sync()
                if nodes:
                    time.sleep(SETTLE)  # the deletes' commits are not in the idle window
                    idle0 = trips(nodes)
                    time.sleep(window)
                    idle1 = trips(nodes)
                    raw = (after[0] - before[0]) * GiB / written
                    idle = (idle1[0] - idle0[0]) * GiB / written
                    rt = rts[mode][variant]
                    rt["raw"].append(raw)
                    rt["idle"].append(idle)
                    rt["net"].append(raw - idle)
                    rt["commits"].append((after[1] - before[1]) * GiB / written)
                    rt["idle_per_node_s"].append((idle1[0] - idle0[0]) / window / len(nodes))
            print(f"  rep {rep + 1}/{s['reps']} {mode}: " + ", ".join(
                f"{v} {mbps[mode][v][-1]:.0f}" for v in VARIANTS) + " MB/s", flush=True)
    out: dict[str, Any] = {"written_bytes_per_variant": written, "files_per_writer": files,
                           "order": order_log, "modes": {}}
    for mode in MODES:
        m = mbps[mode]
        pairs = {"b/a": ("single", "local"), "c/a": ("shared4", "local"),
                 "a/native": ("local", "native"), "b/native": ("single", "native"),
                 "c/native": ("shared4", "native")}
        out["modes"][mode] = {
            "MBps": {v: summary(m[v]) for v in VARIANTS},
            "MBps_samples": m,
            "ratios": {k: summary([x / y for x, y in zip(m[p], m[q], strict=True)])
                       for k, (p, q) in pairs.items()},
            "round_trips_per_GiB": {
                ("1 node" if v == "single" else f"{NODES} nodes"):
                    {k: summary(vals) for k, vals in rts[mode][v].items()}
                for v in ledger_nodes},
        }
    return out


# -- 3: convergence and limit propagation -------------------------------------------------------


def convergence_phase(r: Rig, s: dict[str, Any]) -> dict[str, Any]:
    nodes = r.nodes
    qsid, rel = shared_scope(nodes, FAR_ABOVE)
    scope_dir = r.shared_source / scope_hex(qsid)
    every = [gw.mnt / rel for gw in nodes]
    size = s["convergence_file_mib"] * MiB
    block = os.urandom(size)
    latencies: list[float] = []
    pairs: list[str] = []
    timeouts = 0
    for i in range(s["convergence_samples"]):
        a = nodes[i % NODES]
        b = nodes[(i + 1 + (i // NODES) % (NODES - 1)) % NODES]  # every ordered pair in turn
        va, vb = a.mnt / rel, b.mnt / rel
        base = int(wait_for(partial(xattrs_settled, every, scope_dir), 20,
                            "every node showing du's figure") or 0)
        time.sleep(random.uniform(0, TICK))  # any phase of the two nodes' ticks
        path = va / f"c{i}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, block)
        finally:
            os.close(fd)
        t0 = time.perf_counter()
        try:
            wait_for(partial(xattr_reaches, vb, base + size), GIVE_UP,
                     f"{b.name} to show {a.name}'s write", 0.001)
            latencies.append((time.perf_counter() - t0) * 1000)
        except TimeoutError as e:  # counted at GIVE_UP: the percentiles are lower bounds then
            print(f"  {e}", flush=True)
            timeouts += 1
            latencies.append(GIVE_UP * 1000)
        pairs.append(f"{a.name}->{b.name}")
        path.unlink()
    return {"file_bytes": size, "samples_ms": latencies, "pairs": pairs, "timeouts": timeouts,
            "p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
            "max_ms": max(latencies)}


def poll_limit(client: httpx.Client, body: str, limit: int, go: threading.Event,
               abort: threading.Event, seen_at: list[float]) -> None:
    """In a thread: once `go` is set, poll GET /quota-scope through `client` (connected
    already) every 2 ms, 30 s at most, until it shows `limit`; the time it did into
    `seen_at`."""
    go.wait(60)
    end = time.monotonic() + 30
    while time.monotonic() < end and not abort.is_set():
        if client.request("GET", "/quota-scope", content=body).json()["limit_bytes"] == limit:
            seen_at.append(time.perf_counter())
            return
        time.sleep(0.002)


def limit_phase(r: Rig, s: dict[str, Any]) -> dict[str, Any]:
    nodes = r.nodes
    high = 4 * GiB
    qsid, rel = shared_scope(nodes, high)
    scope_dir = r.shared_source / scope_hex(qsid)
    warm_block = os.urandom(256 * 1024)  # less than a minimum grant: b keeps some of it
    probe = os.urandom(64 * 1024)
    seen: list[float] = []
    refused: list[float] = []
    past: list[int] = []
    patch_ms: list[float] = []
    held: list[float] = []
    for i in range(s["limit_samples"]):
        a, b = nodes[i % NODES], nodes[(i + 1) % NODES]
        vb = b.mnt / rel
        (vb / f"warm{i}").write_bytes(warm_block)  # b holds a grant now
        # the probe's file made now: its creation is not what the lower limit refuses
        fd = os.open(vb / f"probe{i}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        seen_at: list[float] = []
        accepted = 0
        t_refused = None
        poller: threading.Thread | None = None
        go, abort = threading.Event(), threading.Event()
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(b.sock)),
                              base_url="http://fusegw", timeout=60)
        try:
            used = int(wait_for(partial(settled_usage, nodes, qsid, scope_dir), 20,  # > 0
                                "every node reporting du's figure") or 0)
            body = json.dumps({"volume": b.volume, "qsid": qsid})
            client.request("GET", "/quota-scope", content=body).raise_for_status()  # connected
            poller = threading.Thread(target=poll_limit, args=(client, body, used, go, abort,
                                                                  seen_at))
            poller.start()
            time.sleep(random.uniform(0, TICK))
            held.append(float(b.ledger()["grants"].get(qsid, {}).get("bytes", 0)))
            t_req = time.perf_counter()
            a.set_limit(qsid, used)  # no room left at all
            t0 = time.perf_counter()
            go.set()
            patch_ms.append((t0 - t_req) * 1000)
            while time.perf_counter() - t0 < 30:
                try:
                    accepted += os.write(fd, probe)
                except OSError as e:
                    if e.errno != errno.EDQUOT:
                        raise
                    t_refused = time.perf_counter()
                    break
                time.sleep(0.002)
        except BaseException:
            abort.set()
            raise
        finally:
            with suppress(OSError):  # a flush of refused growth may answer EDQUOT too
                os.close(fd)
            go.set()
            if poller is not None:
                poller.join()
            client.close()
        if not seen_at or t_refused is None:
            raise RuntimeError(f"sample {i}: the lower limit never reached {b.name} "
                               f"(seen: {bool(seen_at)}, refused: {t_refused is not None})")
        seen.append((seen_at[0] - t0) * 1000)
        refused.append((t_refused - t0) * 1000)
        past.append(accepted)
        (vb / f"probe{i}").unlink()
        (vb / f"warm{i}").unlink()
        a.set_limit(qsid, high)
        for gw in nodes:
            wait_for(partial(limit_is, gw, qsid, high), 20, f"the limit back up on {gw.name}")
    return {"seen_ms": summary(seen), "refused_ms": summary(refused),
            "seen_samples_ms": seen, "refused_samples_ms": refused,
            "seen_p95_ms": percentile(seen, 0.95), "refused_p95_ms": percentile(refused, 0.95),
            "accepted_past_limit_bytes": summary([float(x) for x in past]),
            "patch_ms": summary(patch_ms), "b_grant_bytes_at_patch": summary(held)}


# -- 4: overshoot under contention --------------------------------------------------------------


def fill(directory: Path, tag: str, chunk: int, file_size: int) -> int:
    """Files of `file_size` in `chunk` writes until EDQUOT; the bytes written. Any other
    error is raised."""
    written, n = 0, 0
    data = os.urandom(chunk)
    while True:
        try:
            fd = os.open(directory / f"{tag}-{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            if e.errno != errno.EDQUOT:
                raise
            return written
        n += 1
        try:
            for _ in range(file_size // chunk):
                written += os.write(fd, data)
        except OSError as e:
            if e.errno != errno.EDQUOT:
                raise
            return written
        finally:
            with suppress(OSError):
                os.close(fd)


def overshoot_phase(r: Rig, s: dict[str, Any]) -> dict[str, Any]:
    nodes = r.nodes
    limit = s["overshoot_limit_mib"] * MiB
    bound = NODES * MIN_GRANT
    n_writers = NODES * s["overshoot_writers_per_node"]
    runs = []
    for run_ in range(s["overshoot_runs"]):
        qsid, rel = shared_scope(nodes, limit)
        errors: list[BaseException] = []
        written = [0] * n_writers

        def writer(k: int, rel: str = rel, errors: list[BaseException] = errors,
                   written: list[int] = written) -> None:
            try:
                written[k] = fill(nodes[k % NODES].mnt / rel, f"w{k}",
                                  s["overshoot_chunk_kib"] * 1024, s["overshoot_file_mib"] * MiB)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_writers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        seconds = time.perf_counter() - t0
        if errors or any(t.is_alive() for t in threads):
            raise RuntimeError(f"overshoot run {run_}: {errors or 'a writer hung'}")
        scope_dir = r.shared_source / scope_hex(qsid)
        t1 = time.perf_counter()
        try:
            wait_for(partial(figures_are_du, nodes, qsid, scope_dir), 20,
                     "every node reporting du's figure", 0.05)
            agreed: float | None = time.perf_counter() - t1
        except TimeoutError:
            agreed = None
        du = du_bytes(scope_dir)
        runs.append({"du_bytes": du, "over_bytes": du - limit, "within_bound": du - limit <= bound,
                     "written_bytes": sum(written), "fill_seconds": seconds,
                     "figures_equal_du_after_s": agreed})
        print(f"  overshoot run {run_ + 1}: du - limit = {(du - limit) / MiB:+.2f} MiB "
              f"(bound {bound / MiB:.0f} MiB)", flush=True)
        shutil.rmtree(nodes[0].mnt / rel)
    return {"limit_bytes": limit, "bound_bytes": bound, "writers": n_writers, "runs": runs,
            "over_bytes": summary([float(x["over_bytes"]) for x in runs])}


# -- the phase ----------------------------------------------------------------------------------


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # the finally blocks stop what was started


def run(quick: bool) -> dict[str, Any]:
    s = settings(quick)
    previous = signal.signal(signal.SIGTERM, _sigterm)
    out: dict[str, Any] = {"settings": s}
    try:
        out["cpu_busy_percent_before"] = busy_percent()
        with rig() as r:
            out["commands"] = {
                "redis": shlex.join(r.redis.argv),
                "gateway_local": shlex.join(r.local.argv()),
                "gateway_single": shlex.join(r.single.argv()),
                "gateway_node": shlex.join(r.nodes[0].argv()),
            }
            print("shared: throughput and round trips ...", flush=True)
            out["throughput"] = throughput_phase(r, s)
            print("shared: convergence ...", flush=True)
            out["convergence"] = convergence_phase(r, s)
            print("shared: limit propagation ...", flush=True)
            out["limit"] = limit_phase(r, s)
            print("shared: overshoot ...", flush=True)
            out["overshoot"] = overshoot_phase(r, s)
        out["cpu_busy_percent_after"] = busy_percent()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return out


# -- report -------------------------------------------------------------------------------------


def _range(x: dict[str, float], fmt: str = ".0f") -> str:
    return f"{x['median']:{fmt}} ({x['min']:{fmt}}-{x['max']:{fmt}})"


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    for mode in MODES:
        ratio = r["throughput"]["modes"][mode]["ratios"]["b/a"]["median"]
        out.append((f"shared / local ledger write throughput >= 0.9 ({mode})", f"{ratio:.2f}",
                    ratio >= 0.9))
    c = r["convergence"]
    out.append(("usage on another node within 1 s (p95)", f"{c['p95_ms']:.0f} ms",
                c["p95_ms"] <= 1000))
    out.append(("usage on another node within 1 s (max)", f"{c['max_ms']:.0f} ms",
                c["max_ms"] <= 1000))
    lim = r["limit"]
    out.append(("a new limit on another node within 1 s (p95)", f"{lim['seen_p95_ms']:.0f} ms",
                lim["seen_p95_ms"] <= 1000))
    o = r["overshoot"]
    worst = max(x["over_bytes"] for x in o["runs"])
    out.append((f"overshoot <= nodes x minimum grant ({o['bound_bytes'] / MiB:.0f} MiB), "
                "every run", f"{worst / MiB:+.2f} MiB worst",
                all(x["within_bound"] for x in o["runs"])))
    return out


def markdown_lines(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    t = r["throughput"]
    lines = [f"Shared ledger on Redis (issue 13): {s['reps']} interleaved repetitions (every "
             "variant of both modes in each, the order rotated by one each time); figures are "
             "median (min-max); ratios are per repetition, then median (min-max).", ""]
    busy = max(r.get("cpu_busy_percent_before", 0), r.get("cpu_busy_percent_after", 0))
    if busy > 20:
        lines += [f"**The machine was busy** (CPU {busy:.0f} % in a second before or after the "
                  "phase): the figures are skewed by whatever else ran.", ""]
    mib = t["written_bytes_per_variant"] / MiB
    lines += [f"Sequential writes: {s['writers']} writer processes, {s['write_kib']} KiB "
              f"writes, {t['files_per_writer']} files of {s['file_mib']} MiB each, {mib:.0f} "
              "MiB per variant and repetition, into a scope with a limit of 2^50 bytes.", "",
              "| variant | " + " | ".join(f"MB/s, {MODE_LABELS[m]}" for m in MODES) + " |",
              "|---|" + "---|" * len(MODES)]
    for v in VARIANTS:
        lines.append(f"| {LABELS[v]} | " + " | ".join(
            _range(t["modes"][m]["MBps"][v]) for m in MODES) + " |")
    for k, label in (("b/a", "b/a (target >= 0.9)"), ("c/a", "c/a"),
                     ("a/native", "a/native"), ("b/native", "b/native"),
                     ("c/native", "c/native")):
        cells = []
        for m in MODES:
            x = t["modes"][m]["ratios"][k]
            cell = _range(x, ".2f")
            if k == "b/a":
                cell += " **PASS**" if x["median"] >= 0.9 else " **FAIL**"
            cells.append(cell)
        lines.append(f"| ratio {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Redis round trips per GiB written (`GET /` ledger.round_trips summed over "
              f"the writing nodes, over the write plus {SETTLE} s; idle: a window of the same "
              "length right after, nothing written; net = raw - idle; one round trip is "
              f"{GiB / t['written_bytes_per_variant']:.0f} per GiB here):", "",
              "| nodes | mode | raw | idle | net | commits | idle round trips per node per s |",
              "|---|---|---|---|---|---|---|"]
    for m in MODES:
        for nodes, x in t["modes"][m]["round_trips_per_GiB"].items():
            lines.append(f"| {nodes} | {m} | {_range(x['raw'])} | {_range(x['idle'])} | "
                         f"{_range(x['net'])} | {_range(x['commits'])} | "
                         f"{_range(x['idle_per_node_s'], '.1f')} |")
    c = r["convergence"]
    lim = r["limit"]
    timed_out = (f"; **{c['timeouts']} samples timed out** at {GIVE_UP:.0f} s, counted as "
                 "that" if c.get("timeouts") else "")
    lines += ["", f"Convergence ({len(c['samples_ms'])} samples, every ordered pair of the "
              f"{NODES} nodes in turn, a random pause of up to {TICK} s before each): from the "
              f"close() of a {c['file_bytes'] // MiB} MiB file on node A until node B's "
              "`user.fusegw.used_bytes` (vfolder directory, polled every 1 ms) shows it, each "
              "sample starting once every node shows du's figure"
              f"{timed_out}"
              ". Limit "
              f"({len(lim['seen_samples_ms'])} samples): PATCH /quota-scope on A lowering the "
              "limit to the usage (B holding a grant: a 256 KiB write on it just before); from "
              "its 204 until B's GET /quota-scope shows it (polled every 2 ms), and until a "
              "64 KiB append on B (every 2 ms) is refused with EDQUOT.", "",
              "| figure | p50 / median | p95 | max | target |", "|---|---|---|---|---|",
              f"| usage seen on B (ms) | {c['p50_ms']:.0f} | {c['p95_ms']:.0f} | "
              f"{c['max_ms']:.0f} | <= 1000 |",
              f"| lower limit in B's GET /quota-scope (ms) | {lim['seen_ms']['median']:.0f} | "
              f"{lim['seen_p95_ms']:.0f} | {lim['seen_ms']['max']:.0f} | <= 1000 |",
              f"| write on B refused with EDQUOT (ms) | {lim['refused_ms']['median']:.0f} | "
              f"{lim['refused_p95_ms']:.0f} | {lim['refused_ms']['max']:.0f} | |",
              f"| bytes B accepted past the new limit (KiB) | "
              f"{lim['accepted_past_limit_bytes']['median'] / 1024:.0f} | | "
              f"{lim['accepted_past_limit_bytes']['max'] / 1024:.0f} | <= "
              f"{MIN_GRANT // 1024} per node |",
              f"| B's unspent grant at the PATCH (KiB) | "
              f"{lim['b_grant_bytes_at_patch']['median'] / 1024:.0f} | | "
              f"{lim['b_grant_bytes_at_patch']['max'] / 1024:.0f} | |",
              f"| the PATCH itself on A (ms) | {lim['patch_ms']['median']:.1f} | | "
              f"{lim['patch_ms']['max']:.1f} | |"]
    o = r["overshoot"]
    lines += ["", f"Overshoot under contention: limit {o['limit_bytes'] // MiB} MiB, "
              f"{o['writers']} writer threads ({s['overshoot_writers_per_node']} on each of the "
              f"{NODES} nodes), {s['overshoot_chunk_kib']} KiB writes into "
              f"{s['overshoot_file_mib']} MiB files until EDQUOT; `du -s -B1` of the scope on "
              f"the backing directory minus the limit, bound {NODES} x {MIN_GRANT // MiB} MiB "
              "minimum grant.", "",
              "| run | du - limit (MiB) | within bound | written (MiB) | fill (s) | all nodes "
              "= du after (s) |", "|---|---|---|---|---|---|"]
    for i, x in enumerate(o["runs"], 1):
        agreed = x["figures_equal_du_after_s"]
        lines.append(f"| {i} | {x['over_bytes'] / MiB:+.2f} | "
                     f"{'yes' if x['within_bound'] else '**no**'} | "
                     f"{x['written_bytes'] / MiB:.1f} | {x['fill_seconds']:.1f} | "
                     f"{'not within 20 s' if agreed is None else f'{agreed:.2f}'} |")
    cmd = r["commands"]
    lines += ["", "Commands (the run: `.venv/bin/python bench/run.py --only shared"
              f"{' --quick' if s['quick'] else ''}`):", "", "```",
              cmd["redis"], cmd["gateway_local"], cmd["gateway_single"],
              cmd["gateway_node"] + f"   # and n1..n{NODES - 1} alike", "```"]
    return lines
