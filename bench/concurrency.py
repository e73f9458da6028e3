"""The concurrent workloads of issue 12: the gateway against the native directory, in one run.

Called by bench/run.py as its `concurrency` phase (`python bench/run.py --only concurrency
[--quick]` runs it alone). Every workload runs on both sides, interleaved (which side goes
first alternates each repetition), cold runs after drop_caches; the figures are medians of
the repetitions. On the gateway side each run is bracketed by the daemon's FUSE request
counter (`GET /` of the control socket) and its CPU time (psutil), giving FUSE requests per
operation and daemon CPU per request.

The multi-process workloads run in a fresh process, `python bench/concurrency.py KIND ...`,
which forks its workers, releases them together and prints one JSON object (seconds, ops).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
PY = sys.executable
MiB = 2**20


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- settings -----------------------------------------------------------------------------------


def settings(quick: bool) -> dict[str, Any]:
    return {
        # repetitions: fio's random reads last seconds, the others about one or less: more
        "fio_reps": 3,
        "reps": 5 if quick else 7,
        # fio: each job reads its own file once (a random map: no block twice), capped at
        # `runtime` seconds; a time-based run would wrap round and re-read cached pages
        "runtime": 10 if quick else 20,
        "rand_total_mib": 512 if quick else 2048,
        "rand_jobs": [1, 4, 16],
        "seq_jobs": 4,
        "seq_mib_per_job": 512 if quick else 1024,
        "workers": 8,
        "reader_files": 2000 if quick else 4000,
        "reader_kib": 128,
        "create_per_proc": 500 if quick else 1000,
        "create_kib": 4,
        "stat_files": 8000,
        "stat_passes": 20,
        "checkpoint_mib": 256 if quick else 1024,
        "checkpoint_chunk_mib": 64,
        "dd_bs_mib": 16,
    }


# -- workers (run in a fresh process: `python bench/concurrency.py KIND ...`) -------------------


def _together(n: int, work: Callable[[int], int]) -> dict[str, float]:
    """Fork n workers, release them at once, wait for all: wall seconds and operations."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(n + 1)
    done = ctx.Queue()

    def body(i: int) -> None:
        barrier.wait()
        done.put(work(i))

    procs = [ctx.Process(target=body, args=(i,)) for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    ops = sum(done.get() for _ in procs)
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"worker exited {p.exitcode}")
    return {"seconds": seconds, "ops": ops}


def w_reader(d: str, n_files: int, workers: int) -> dict[str, float]:
    """A DataLoader's workers: shuffled indices dealt round the workers, each sample a whole
    file, open/read/close."""
    names = [f"s{i:06d}" for i in range(n_files)]
    random.Random(12).shuffle(names)

    def work(i: int) -> int:
        os.chdir(d)
        for name in names[i::workers]:
            with open(name, "rb") as f:
                f.read()
        return len(names[i::workers])

    return _together(workers, work)


def w_create(d: str, procs: int, per_proc: int, size: int, names: str = "c") -> dict[str, float]:
    """Each process creates its files (create, write, close) in its own directory d/pI."""
    data = b"x" * size

    def work(i: int) -> int:
        os.chdir(f"{d}/p{i}")
        for j in range(per_proc):
            fd = os.open(f"{names}{j:06d}", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)
        return per_proc

    return _together(procs, work)


def w_stat(d: str, procs: int, per_proc: int, passes: int) -> dict[str, float]:
    """Each process stats the files of its own directory d/pI, `passes` times."""
    names = [f"t{j:06d}" for j in range(per_proc)]

    def work(i: int) -> int:
        os.chdir(f"{d}/p{i}")
        for _ in range(passes):
            for name in names:
                os.stat(name)
        return per_proc * passes

    return _together(procs, work)


def w_checkpoint(path: str, mib: int, chunk_mib: int) -> dict[str, float]:
    """torch.save's shape: open(f, "wb"), a few large write() calls, fsync, close."""
    chunk = memoryview(bytes(chunk_mib * MiB))
    t0 = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(mib // chunk_mib):
        view = chunk
        while view:
            view = view[os.write(fd, view):]
    os.fsync(fd)
    os.close(fd)
    return {"seconds": time.perf_counter() - t0, "ops": mib // chunk_mib}


def worker(kind: str, *args: str) -> dict[str, float]:
    if kind == "reader":
        return w_reader(args[0], int(args[1]), int(args[2]))
    if kind == "create":
        return w_create(args[0], int(args[1]), int(args[2]), int(args[3]), *args[4:])
    if kind == "stat":
        return w_stat(args[0], int(args[1]), int(args[2]), int(args[3]))
    if kind == "checkpoint":
        return w_checkpoint(args[0], int(args[1]), int(args[2]))
    raise SystemExit(f"unknown workload {kind}")


def spawn(kind: str, *args: object) -> dict[str, float]:
    return dict(json.loads(sh(PY, str(Path(__file__)), kind, *map(str, args))))


# -- the gateway's side: FUSE requests and daemon CPU -------------------------------------------


class Probe:
    """Brackets one gateway run: the daemon's FUSE request counters and CPU time."""

    def __init__(self, sock: Path, pid: int) -> None:
        import httpx
        import psutil

        self.client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                                   base_url="http://fusegw", timeout=60)
        self.proc = psutil.Process(pid)
        self.req0: dict[str, int] = {}
        self.cpu0 = 0.0

    def _requests(self) -> dict[str, int]:
        return dict(self.client.get("/").json()["fuse_requests"])

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        self.req0 = self._requests()
        self.cpu0 = self._cpu()

    def stop(self, ops: float) -> dict[str, Any]:
        cpu = self._cpu() - self.cpu0
        now = self._requests()
        grown = {op: now[op] - self.req0.get(op, 0) for op in now
                 if now[op] != self.req0.get(op, 0)}
        total = sum(grown.values())
        return {"requests_per_op": total / ops if ops else 0.0,
                "requests_by_op": {op: v / ops for op, v in sorted(grown.items())},
                "daemon_cpu_s": cpu,
                "daemon_us_per_request": cpu / total * 1e6 if total else None}


# -- the workloads, one side each ---------------------------------------------------------------


def fio_args(d: Path, name: str, rw: str, bs: str, jobs: int, size_mib: int) -> list[str]:
    return ["fio", f"--name={name}", f"--directory={d}", f"--rw={rw}", f"--bs={bs}",
            f"--size={size_mib}M", f"--numjobs={jobs}", "--ioengine=psync", "--direct=0",
            "--group_reporting", "--output-format=json"]


def fio_layout(d: Path, name: str, jobs: int, size_mib: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    sh(*fio_args(d, name, "read", "1M", jobs, size_mib), "--create_only=1")


def fio_run(d: Path, name: str, rw: str, bs: str, jobs: int, size_mib: int,
            runtime: int) -> tuple[float, float, dict[str, Any]]:
    """(MiB/s, I/Os, detail) of one cold fio run over a laid-out job set."""
    out = sh(*fio_args(d, name, rw, bs, jobs, size_mib), f"--runtime={runtime}")
    read = json.loads(out)["jobs"][0]["read"]
    detail = {"io_MiB": read["io_bytes"] / MiB, "runtime_s": read["runtime"] / 1000,
              "iops": read["iops"], "lat_p99_us": read["clat_ns"]["percentile"].get(
                  "99.000000", 0) / 1000}
    return float(read["bw_bytes"]) / MiB, float(read["total_ios"]), detail


def dd_write(path: Path, mib: int, bs_mib: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    sh("dd", "if=/dev/zero", f"of={path}", f"bs={bs_mib}M", f"count={mib // bs_mib}",
       "conv=fsync", "status=none")
    seconds = time.perf_counter() - t0
    return seconds, mib / bs_mib


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def mkdirs(d: Path, procs: int) -> None:
    for i in range(procs):
        (d / f"p{i}").mkdir(parents=True, exist_ok=True)


Measure = Callable[[Path, int], tuple[float, float, dict[str, Any]]]


class Workload:
    """One figure: `prepare(root)` once per side (untimed), `measure(root, rep)` per
    repetition returns (figure, operations, detail), after `before(root, rep)` (untimed);
    `cold` drops the caches before each measurement (every one is preceded by a sync: no
    writeback left over from the previous run). What the writes made is removed by
    `cleanup(root)` after the last repetition, not in between: on a disk mounted with
    `discard`, freed blocks slow the next run down (the native side's creates took 5-7x as
    long in a repetition after an rm as in the first). `long`: fio's fewer repetitions."""

    def __init__(self, key: str, label: str, op: str, cold: bool,
                 prepare: Callable[[Path], None], measure: Measure,
                 before: Callable[[Path, int], None] | None = None,
                 cleanup: Callable[[Path], None] | None = None, long: bool = False) -> None:
        self.key, self.label, self.op, self.cold = key, label, op, cold
        self.prepare, self.measure, self.before, self.cleanup = prepare, measure, before, cleanup
        self.long = long


def workloads(s: dict[str, Any]) -> list[Workload]:
    out: list[Workload] = []
    total, rt, w = s["rand_total_mib"], s["runtime"], s["workers"]

    for jobs in s["rand_jobs"]:
        per_job = total // jobs
        name = f"rr{jobs}"
        out.append(Workload(
            f"randread_4k_{jobs}j",
            f"fio random read 4 KiB, {jobs} job{'s' if jobs > 1 else ''}, cold (MiB/s)",
            "4 KiB read", True,
            lambda root, name=name, jobs=jobs, per_job=per_job:
                fio_layout(root / name, name, jobs, per_job),
            lambda root, _rep, name=name, jobs=jobs, per_job=per_job:
                fio_run(root / name, name, "randread", "4k", jobs, per_job, rt), long=True))

    sj, smib = s["seq_jobs"], s["seq_mib_per_job"]
    out.append(Workload(
        f"seqread_1m_{sj}j", f"fio sequential read 1 MiB, {sj} jobs, cold (MiB/s)",
        "1 MiB read", True,
        lambda root: fio_layout(root / "sr", "sr", sj, smib),
        lambda root, _rep: fio_run(root / "sr", "sr", "read", "1M", sj, smib, rt)))

    nr, kib = s["reader_files"], s["reader_kib"]

    def reader_prepare(root: Path) -> None:
        # laid out through the side itself: the gateway accounts for them
        mkdirs(root / "reader", 1)
        spawn("create", root / "reader", 1, nr, kib * 1024, "s")

    def reader_measure(root: Path, _rep: int) -> tuple[float, float, dict[str, Any]]:
        r = spawn("reader", root / "reader" / "p0", nr, w)
        return r["ops"] / r["seconds"], r["ops"], {"seconds": r["seconds"]}

    out.append(Workload(
        "reader_8w", f"DataLoader-shaped reader: {w} workers, {nr:,} files of {kib} KiB, "
        "open/read/close, cold (files/s)", "file", True, reader_prepare, reader_measure))

    per = s["create_per_proc"]
    ckib = s["create_kib"]

    def create_measure(root: Path, rep: int) -> tuple[float, float, dict[str, Any]]:
        r = spawn("create", root / "create" / f"r{rep}", w, per, ckib * 1024)
        return r["ops"] / r["seconds"], r["ops"], {"seconds": r["seconds"]}

    out.append(Workload(
        "create_8p", f"parallel creates: {w} processes x {per:,} files of {ckib} KiB, own "
        "directories (files/s)", "file", False, lambda root: None, create_measure,
        lambda root, rep: mkdirs(root / "create" / f"r{rep}", w),
        lambda root: rm(root / "create")))

    nstat, passes = s["stat_files"], s["stat_passes"]
    per_stat = nstat // w

    def stat_prepare(root: Path) -> None:
        mkdirs(root / "stat", w)
        spawn("create", root / "stat", w, per_stat, 0, "t")

    def stat_before(root: Path, _rep: int) -> None:
        spawn("stat", root / "stat", w, per_stat, 1)  # the first pass: warm

    def stat_measure(root: Path, _rep: int) -> tuple[float, float, dict[str, Any]]:
        r = spawn("stat", root / "stat", w, per_stat, passes)
        return r["ops"] / r["seconds"], r["ops"], {"seconds": r["seconds"]}

    out.append(Workload(
        "stat_8p", f"parallel stats: {w} processes, {nstat:,} files, warm, {passes} passes "
        "(stats/s)", "stat", False, stat_prepare, stat_measure, stat_before))

    cmib, chunk, bs = s["checkpoint_mib"], s["checkpoint_chunk_mib"], s["dd_bs_mib"]

    def ckpt_measure(root: Path, rep: int) -> tuple[float, float, dict[str, Any]]:
        r = spawn("checkpoint", root / "ckpt" / f"r{rep}.pt", cmib, chunk)
        return cmib / r["seconds"], r["ops"], {"seconds": r["seconds"]}

    def ckpt_prepare(root: Path) -> None:
        (root / "ckpt").mkdir(exist_ok=True)

    out.append(Workload(
        "checkpoint_py", f"checkpoint write: {cmib} MiB in {chunk} MiB write() calls, fsync "
        "(MiB/s)", f"{chunk} MiB write()", False, ckpt_prepare, ckpt_measure,
        cleanup=lambda root: rm(root / "ckpt")))

    def dd_measure(root: Path, rep: int) -> tuple[float, float, dict[str, Any]]:
        seconds, ops = dd_write(root / "ckpt" / f"r{rep}.dd", cmib, bs)
        return cmib / seconds, ops, {"seconds": seconds}

    out.append(Workload(
        "checkpoint_dd", f"checkpoint write: dd bs={bs}M count={cmib // bs} conv=fsync (MiB/s)",
        f"{bs} MiB write()", False, ckpt_prepare, dd_measure,
        cleanup=lambda root: rm(root / "ckpt")))
    return out


# -- the phase ----------------------------------------------------------------------------------


def busy_percent() -> float:
    """System-wide CPU use over one second: anything else running skews the figures."""
    import psutil

    return float(psutil.cpu_percent(interval=1.0))


def disk_read_bytes() -> int:
    import psutil

    counters = psutil.disk_io_counters()
    return int(counters.read_bytes) if counters else 0


def run_phase(gateway: Path, native: Path, sock: Path, pid: int, quick: bool,
              only: set[str] | None = None) -> dict[str, Any]:
    """`gateway` (a directory in the limited vfolder) against `native` (same depth)."""
    s = settings(quick)
    busy_before = busy_percent()
    probe = Probe(sock, pid)
    roots = {"native": native / "conc", "gateway": gateway / "conc"}
    for root in roots.values():
        rm(root)
        root.mkdir(parents=True)
    out: dict[str, Any] = {"settings": s, "workloads": {}}
    try:
        for wl in workloads(s):
            if only and wl.key not in only:
                continue
            t_start = time.perf_counter()
            print(f"  {wl.key} ...", flush=True)
            for root in roots.values():
                wl.prepare(root)
            samples: dict[str, list[float]] = {"native": [], "gateway": []}
            details: dict[str, list[dict[str, Any]]] = {"native": [], "gateway": []}
            probes: list[dict[str, Any]] = []
            reps = s["fio_reps"] if wl.long else s["reps"]
            for rep in range(reps):
                order = ["native", "gateway"] if rep % 2 == 0 else ["gateway", "native"]
                for side in order:
                    root = roots[side]
                    if wl.before:
                        wl.before(root, rep)
                    if wl.cold:
                        drop_caches()
                    else:
                        os.sync()
                    if side == "gateway":
                        probe.start()
                    disk0 = disk_read_bytes()
                    figure, ops, detail = wl.measure(root, rep)
                    # what reached the disk: a cold run's reads, or more with readahead
                    detail["disk_read_MiB"] = (disk_read_bytes() - disk0) / MiB
                    if side == "gateway":
                        probes.append(probe.stop(ops))
                    samples[side].append(figure)
                    details[side].append(detail)
            if wl.cleanup:
                for root in roots.values():
                    wl.cleanup(root)
                os.sync()
                time.sleep(1)  # the discards of what was freed, before the next workload
            g, n = statistics.median(samples["gateway"]), statistics.median(samples["native"])
            us = [p["daemon_us_per_request"] for p in probes
                  if p["daemon_us_per_request"] is not None]
            out["workloads"][wl.key] = {
                "label": wl.label, "op": wl.op, "cold": wl.cold, "reps": reps,
                "native": n, "gateway": g, "ratio": g / n,
                "samples": samples, "details": details,
                "requests_per_op": statistics.median(p["requests_per_op"] for p in probes),
                "requests_by_op": probes[-1]["requests_by_op"],
                "daemon_us_per_request": statistics.median(us) if us else None,
                "seconds": time.perf_counter() - t_start,
            }
    finally:
        for root in roots.values():
            rm(root)
    out["cpu_busy_percent"] = {"before": busy_before, "after": busy_percent()}
    return out


# -- report -------------------------------------------------------------------------------------

TARGETS = [
    ("randread_4k_4j", "fio random read 4 KiB, 4 jobs >= 0.6 of native", 0.6),
    ("randread_4k_16j", "fio random read 4 KiB, 16 jobs >= 0.6 of native", 0.6),
    ("reader_8w", "8-worker small-file reader >= 0.6 of native", 0.6),
    ("seqread_1m_4j", "4-job sequential read >= 0.9 of native", 0.9),
    ("create_8p", "parallel creates >= 0.5 of native", 0.5),
    ("checkpoint_py", "checkpoint write, 64 MiB write() + fsync >= 0.8 of native", 0.8),
    ("checkpoint_dd", "checkpoint write, dd bs=16M conv=fsync >= 0.8 of native", 0.8),
]


def targets(c: dict[str, Any]) -> list[tuple[str, str, bool]]:
    w = c["workloads"]
    return [(label, f"{w[key]['ratio']:.2f}", w[key]["ratio"] >= need)
            for key, label, need in TARGETS if key in w]


def _per_op(v: float) -> str:
    return "<0.001" if v < 0.001 else f"{v:.3f}".rstrip("0").rstrip(".")


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def markdown_lines(c: dict[str, Any]) -> list[str]:
    s = c["settings"]
    lines = [f"Concurrent workloads (issue 12): medians of interleaved repetitions ("
             f"{s['fio_reps']} of each fio random read, {s['reps']} of the others); gateway in the "
             "limited vfolder, native at the same depth; requests/op and daemon CPU counted "
             "by the daemon on the gateway runs.", ""]
    busy = c.get("cpu_busy_percent", {})
    if max(busy.values(), default=0) > 20:
        lines += [f"**The machine was busy** (CPU {busy['before']:.0f} % in the second before "
                  f"the phase, {busy['after']:.0f} % in the second after it): the figures are "
                  "skewed by whatever else ran.", ""]
    lines += ["| workload | native | gateway | ratio | requests/op | daemon µs/request |",
              "|---|---|---|---|---|---|"]
    for r in c["workloads"].values():
        us = r["daemon_us_per_request"]
        lines.append(f"| {r['label']} | {_num(r['native'])} | {_num(r['gateway'])} | "
                     f"{r['ratio']:.2f} | {r['requests_per_op']:.2f} per {r['op']} | "
                     f"{'' if us is None else f'{us:.0f}'} |")
    lines += ["", "FUSE requests per operation, by request (gateway, last repetition):", "",
              "| workload | requests per operation |", "|---|---|"]
    for key, r in c["workloads"].items():
        text = ", ".join(f"{op.upper()} {_per_op(v)}" for op, v in r["requests_by_op"].items())
        lines.append(f"| {key} (per {r['op']}) | {text or 'none'} |")
    return lines


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], *sys.argv[2:])))
