"""Workloads timed in a fresh process, the same code against every target directory.

`python bench/workloads.py KIND DIR [N]` prints one JSON object of rates (operations/s) or
latencies (µs). Run as a separate process so the gateway, the native directory and the
pyfuse3 example are measured by identical, uncached client code.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time


class RequestCounter:
    """FUSE requests per file of each phase, from the gateway's own counter (`GET /`), read
    between the timed loops; without a control socket it counts nothing."""

    def __init__(self, socket: str | None, n: int) -> None:
        self.socket, self.n = socket, n
        self.per_phase: dict[str, dict[str, float]] = {}
        self.last = self._read()

    def _read(self) -> dict[str, int]:
        if not self.socket:
            return {}
        import httpx

        with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket),
                          base_url="http://fusegw") as c:
            return dict(c.get("/").json()["fuse_requests"])

    def phase(self, name: str, passes: int = 1) -> None:
        now = self._read()
        grown = {op: (now[op] - self.last.get(op, 0)) / (self.n * passes) for op in now
                 if now[op] != self.last.get(op, 0)}
        if self.socket:
            self.per_phase[name] = {op: round(v, 2) for op, v in sorted(grown.items())}
        self.last = self._read()


def metadata(d: str, n: int, socket: str | None = None) -> dict[str, object]:
    """create+write(100 B)+close, first stat, warm stat (entries the kernel has cached: the
    pass after an untimed one), small-file read, rename, unlink: files per second, and with
    a gateway's control socket the FUSE requests each phase cost per file. Names are relative
    to the directory, so every target walks one path component per call."""
    os.makedirs(d, exist_ok=True)
    os.chdir(d)  # names relative to the directory: the targets' path depths do not count
    data = b"x" * 100
    names = [f"f{i:06d}" for i in range(n)]
    count = RequestCounter(socket, n)
    out: dict[str, object] = {}

    def create(p: str) -> None:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)

    def small_read(p: str) -> None:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)

    # "stat_again" is untimed: after a burst of writes the kernel revalidates once more
    for phase, op in (("create", create), ("stat_first", os.stat), ("stat_again", os.stat),
                      ("stat_warm", os.stat), ("small_read", small_read),
                      ("rename", lambda p: os.rename(p, p + "r")),
                      ("unlink", lambda p: os.unlink(p + "r"))):
        rates: list[float] = []
        passes = 5 if phase == "stat_warm" else 1  # short: the median of five passes
        for _ in range(passes):
            t0 = time.perf_counter()
            for p in names:
                op(p)
            rates.append(n / (time.perf_counter() - t0))
        out[phase] = statistics.median(rates)
        count.phase(phase, passes)
    del out["stat_again"]
    if socket:
        out["requests"] = count.per_phase
    return out


def readdir(d: str) -> dict[str, float]:
    """List a large directory twice (first and warm), entries per second."""
    out = {}
    for label in ("readdir_first", "readdir_warm"):
        t0 = time.perf_counter()
        with os.scandir(d) as it:
            count = sum(1 for _ in it)
        out[label] = count / (time.perf_counter() - t0)
    out["entries"] = count
    return out


def xattr(path: str, name: str, n: int) -> dict[str, float]:
    """getxattr(2) latency, µs: p50 and p99 over n calls."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        os.getxattr(path, name)
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return {"p50_us": statistics.median(samples), "p99_us": samples[int(len(samples) * 0.99)]}


def touch_all(d: str) -> dict[str, float]:
    """stat every entry of a directory (the gateway then knows every inode)."""
    n = 0
    t0 = time.perf_counter()
    with os.scandir(d) as it:
        for e in it:
            os.stat(e.path)
            n += 1
    return {"touched": n, "seconds": time.perf_counter() - t0}


def populate(d: str, n: int) -> dict[str, float]:
    """Create n empty files (on the backing side, to set up a large directory quickly)."""
    os.makedirs(d, exist_ok=True)
    for i in range(n):
        os.close(os.open(f"{d}/e{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
    return {"created": n}


if __name__ == "__main__":
    kind, target = sys.argv[1], sys.argv[2]
    arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if kind == "metadata":
        result = metadata(target, arg, sys.argv[4] if len(sys.argv) > 4 else None)
    elif kind == "readdir":
        result = readdir(target)
    elif kind == "xattr":
        result = xattr(target, sys.argv[4], arg)
    elif kind == "touch":
        result = touch_all(target)
    elif kind == "populate":
        result = populate(target, arg)
    else:
        raise SystemExit(f"unknown workload {kind}")
    print(json.dumps(result))
