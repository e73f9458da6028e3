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


def metadata(d: str, n: int) -> dict[str, float]:
    """create+write(100 B)+close, first stat, warm stat (entries the kernel has cached: the
    pass after an untimed one), small-file read, unlink."""
    os.makedirs(d, exist_ok=True)
    data = b"x" * 100
    names = [f"{d}/f{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
    t1 = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:  # untimed: after a burst of writes the kernel revalidates once more
        os.stat(p)
    t2w = time.perf_counter()
    for p in names:
        os.stat(p)
    t3 = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    t4 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t5 = time.perf_counter()
    return {"create": n / (t1 - t0), "stat_first": n / (t2 - t1), "stat_warm": n / (t3 - t2w),
            "small_read": n / (t4 - t3), "unlink": n / (t5 - t4)}


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
        result = metadata(target, arg)
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
