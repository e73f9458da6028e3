"""`make bench`: the gateway against the native filesystem (and pyfuse3's passthroughfs.py
example) on the same disk, in one run; medians of interleaved repetitions, as ratios and
absolute figures, written to bench/results/ as JSON and markdown.

    .venv/bin/python bench/run.py [--quick] [--only concurrency|shared|migrate]

`--only concurrency` runs only the concurrent workloads of bench/concurrency.py (results in
bench/results/concurrency-{quick,full}.*, the whole-run files left alone); `--only shared`
the shared ledger on Redis, bench/shared_ledger.py (bench/results/shared-{quick,full}.*);
`--only migrate` the v2 -> v3 migration's rate, bench/migrate.py (bench/results/migrate-*).

Needs root (mounts, drop_caches), fio, and network access to PyPI once (the example is taken
from pyfuse3's source distribution into bench/.cache/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import concurrency
import httpx
import migrate
import psutil
import pyfuse3
import shared_ledger

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = ROOT / "var" / "bench"
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"
PY = sys.executable
QSID = "user:0d7b2a4e-8a51-4d5c-9c1f-7f0a0f0e0c11"
UNLIMITED_QSID = "project:5e0f9c6a-3b1d-4c2e-9a7f-0b1c2d3e4f50"
FID = "9f86d081884c7d659a2feaa0c55ad015"


def sh(*argv: str, **kw: Any) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def wait_for(pred: Callable[[], Any], timeout: float = 120.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(pred)


def workload(*args: str) -> dict[str, Any]:
    out = sh(PY, str(BENCH / "workloads.py"), *args)
    return dict(json.loads(out))


# -- targets ------------------------------------------------------------------------------------


class Gateway:
    def __init__(self, name: str) -> None:
        self.source = WORK / "private" / name  # below a 0700 directory, as fusegw demands
        self.mnt = WORK / f"{name}.mnt"
        self.sock = WORK / f"{name}.sock"
        self.log = WORK / f"{name}.log"
        self.pid = 0

    def start(self, env: dict[str, str] | None = None) -> None:
        self.source.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.source.parent.chmod(0o700)
        self.source.mkdir(exist_ok=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(Path(PY).with_name("fusegw")), "mount", str(self.source),
                        str(self.mnt), "--control-socket", str(self.sock), "--log-file",
                        str(self.log), "--volume", "bench"], check=True,
                       env={**os.environ, **(env or {})})
        self.pid = int(self.api("GET", "/").json()["pid"])

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.sock)),
                          base_url="http://fusegw", timeout=600) as c:
            return c.request(method, path, content=json.dumps(body) if body else None)

    def vfolder(self, qsid: str, limit: int | None) -> Path:
        vfid = f"{qsid}/{FID}"
        r = self.api("POST", "/folder/create", {
            "volume": "bench", "vfid": vfid,
            "options": {"initial_max_size_for_quota_scope": limit} if limit else None})
        assert r.status_code in (204, 409), r.text
        return Path(self.api("GET", "/folder/mount", {"volume": "bench", "vfid": vfid})
                    .json()["path"])

    def stop(self, kill: bool = False) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL if kill else signal.SIGTERM)
            wait_for(lambda: not psutil.pid_exists(self.pid) or
                     psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE)
        if mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)
        self.pid = 0


def example_script() -> Path:
    """pyfuse3's own examples/passthroughfs.py, from the source distribution on PyPI."""
    target = CACHE / "passthroughfs.py"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    sh(PY, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
       f"pyfuse3=={pyfuse3.__version__}", "-d", str(CACHE))
    sdist = next(CACHE.glob("pyfuse3-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("examples/passthroughfs.py"))
        data = tar.extractfile(member)
        assert data is not None
        target.write_bytes(data.read())
    return target


@contextmanager
def example_mount() -> Iterator[Path]:
    source, mnt = WORK / "example", WORK / "example.mnt"
    source.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([PY, str(example_script()), str(source), str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: mounted(mnt), 30)
        yield mnt
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        if mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


# -- measurements -------------------------------------------------------------------------------


def fio(directory: Path, name: str, rw: str, bs: str, size: str, extra: list[str]) -> float:
    """Throughput in MiB/s of one fio job in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    out = sh("fio", f"--name={name}", f"--directory={directory}", f"--rw={rw}", f"--bs={bs}",
             f"--size={size}", "--ioengine=psync", "--output-format=json", *extra)
    job = json.loads(out)["jobs"][0]
    side = job["write"] if rw in ("write", "randwrite") else job["read"]
    return float(side["bw_bytes"]) / 2**20


def data_phase(target: Path, size: str) -> dict[str, float]:
    target.mkdir(parents=True, exist_ok=True)
    for f in target.glob("seq*"):
        f.unlink()
    result = {"seq_write_MiBps": fio(target, "seq", "write", "1M", size, ["--end_fsync=1"])}
    drop_caches()
    result["seq_read_MiBps"] = fio(target, "seq", "read", "1M", size, [])
    drop_caches()
    result["rand_read_4k_MiBps"] = fio(target, "seq", "randread", "4k", size,
                                       ["--runtime=8", "--time_based"])
    for f in target.glob("seq*"):
        f.unlink()
    result["write_only_MiBps"] = write_only(target / "checkpoint", size)
    return result


def write_only(path: Path, size: str) -> float:
    """MiB/s of a checkpoint-style write: a write-only open (as torch.save's `open(f, "wb")`),
    1 MiB writes, fsync before close (dd conv=fsync). fio cannot do this: it opens read-write."""
    mib = int(size.rstrip("MG")) * (1024 if size.endswith("G") else 1)
    t0 = time.perf_counter()
    sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync", "status=none")
    seconds = time.perf_counter() - t0
    path.unlink()
    return mib / seconds


def tree_state() -> str:
    """The commit the daemon ran from (it is started from the working tree)."""
    try:
        head = sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD").strip()
        dirty = sh("git", "-C", str(ROOT), "status", "--porcelain", "--", "fusegw").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in fusegw/" if dirty else "")


def median_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def run(quick: bool, only: str | None = None) -> dict[str, Any]:
    reps = 1 if quick else 3
    n_meta = 2000 if quick else 10_000
    n_dir = 20_000 if quick else 100_000
    n_rescan = 50_000 if quick else 200_000
    data_size = "128M" if quick else "1G"
    if only == "shared":  # gateways and a redis-server of its own
        return {"shared": shared_ledger.run(quick)}
    if only == "migrate":  # generated volumes of its own, no gateway
        return {"migrate": migrate.run(quick)}
    WORK.mkdir(parents=True, exist_ok=True)
    gw = Gateway("gw")
    for leftover in (gw.mnt, WORK / "example.mnt"):
        if mounted(leftover):
            subprocess.run(["fusermount3", "-u", "-z", str(leftover)], check=False)
    native_root = WORK / "native"
    subprocess.run(["rm", "-rf", str(gw.source), str(native_root), str(WORK / "example")],
                   check=True)
    gw.start()
    results: dict[str, Any] = {}
    try:
        limited = gw.vfolder(QSID, 2**50)
        unlimited = gw.vfolder(UNLIMITED_QSID, None)
        # the native side at the same depth as the vfolder: path walks cost alike
        native = native_root / limited.relative_to(gw.mnt)
        native.mkdir(parents=True)

        if only == "concurrency":
            print("concurrency ...", flush=True)
            results["concurrency"] = concurrency.run_phase(limited, native, gw.sock, gw.pid,
                                                           quick)
            return results

        print("data (fio) ...", flush=True)
        data: dict[str, list[dict[str, float]]] = {"native": [], "gateway": []}
        for _ in range(reps):
            data["native"].append(data_phase(native / "data", data_size))
            data["gateway"].append(data_phase(limited / "data", data_size))
        results["data"] = {k: median_of(v) for k, v in data.items()}
        # interleaved pairs, alternating which side goes first: the disk's swings and the
        # previous run's writeback hit both sides alike
        enforcement, enforced = [], []
        for i in range(reps + 3):
            sides = [(enforcement, unlimited), (enforced, limited)]
            for samples, target in sides if i % 2 else reversed(sides):
                samples.append(fio(target / "enf", "enf", "write", "1M", data_size,
                                   ["--end_fsync=1"]))
        results["enforcement"] = {
            "unlimited_MiBps": statistics.median(enforcement),
            "limited_MiBps": statistics.median(enforced),
            "pair_ratio_median": statistics.median(a / b for a, b in zip(enforced, enforcement,
                                                                          strict=True)),
        }

        print("concurrency ...", flush=True)
        results["concurrency"] = concurrency.run_phase(limited, native, gw.sock, gw.pid, quick)

        print("metadata ...", flush=True)
        meta: dict[str, list[dict[str, float]]] = {"native": [], "gateway": [], "example": []}
        with example_mount() as example:
            example_dir = example / native.relative_to(native_root)
            for _ in range(reps):
                meta["native"].append(workload("metadata", str(native / "meta"), str(n_meta)))
                meta["gateway"].append(workload("metadata", str(limited / "meta"), str(n_meta),
                                                str(gw.sock)))
                meta["example"].append(workload("metadata", str(example_dir / "meta"),
                                                str(n_meta)))
        requests = [sample.pop("requests") for sample in meta["gateway"]][-1]
        results["metadata"] = {k: median_of(v) for k, v in meta.items()}
        results["fuse_requests_per_file"] = requests

        print("readdir ...", flush=True)
        backing = gw.source / limited.relative_to(gw.mnt)
        workload("populate", str(backing / "big"), str(n_dir))
        workload("populate", str(native / "big"), str(n_dir))
        drop_caches()
        results["readdir"] = {"native": workload("readdir", str(native / "big")),
                              "gateway": workload("readdir", str(limited / "big"))}

        print("xattr ...", flush=True)
        probe = limited / "probe"
        probe.write_bytes(b"p")
        (native / "probe").write_bytes(b"p")
        os.setxattr(native / "probe", "user.probe", b"1")
        daemon = psutil.Process(gw.pid)
        cpu0 = sum(daemon.cpu_times()[:2])
        results["xattr"] = {
            "gateway": workload("xattr", str(probe), "10000", "user.fusegw.used_bytes"),
            "native": workload("xattr", str(native / "probe"), "10000", "user.probe"),
        }
        # one GETXATTR per call, answered from memory: what a FUSE request costs the daemon
        results["xattr"]["gateway"]["daemon_cpu_us"] = \
            (sum(daemon.cpu_times()[:2]) - cpu0) / 10000 * 1e6

        print("memory ...", flush=True)
        rss0 = psutil.Process(gw.pid).memory_info().rss
        cached0 = int(gw.api("GET", "/").json()["inodes_cached"])
        workload("populate", str(backing / "many"), str(n_rescan - n_dir))
        workload("populate", str(native / "many"), str(n_rescan - n_dir))
        workload("touch", str(limited / "many"))
        workload("touch", str(limited / "big"))
        cached = int(gw.api("GET", "/").json()["inodes_cached"])
        rss = psutil.Process(gw.pid).memory_info().rss
        results["memory"] = {"inodes_cached": cached, "rss_bytes": rss,
                             "bytes_per_inode": (rss - rss0) / max(1, cached - cached0)}

        print("rescan ...", flush=True)
        (limited / "dirty").write_bytes(b"d")  # the scope is now being changed ...
        gw.stop(kill=True)                     # ... when the gateway dies
        drop_caches()
        t0 = time.perf_counter()
        native_files = int(sh("du", "-s", "--inodes", str(native_root)).split()[0])
        native_scan = time.perf_counter() - t0
        gw.start()
        rebuild = wait_for(lambda: gw.api("GET", "/").json()["rebuilds"], 600)[0]
        files = int(rebuild["files"])
        results["rescan"] = {"files": files, "seconds": rebuild["seconds"],
                             "gateway_files_per_s": files / max(rebuild["seconds"], 1e-9),
                             "du_native_files_per_s": native_files / native_scan}
    finally:
        gw.stop()
    return results


# -- report -------------------------------------------------------------------------------------


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, gateway, native, ratio, example) rows for the markdown table."""
    out = []
    d = r["data"]
    for key, label in (("seq_write_MiBps", "sequential write 1 MiB, end_fsync (MiB/s)"),
                       ("write_only_MiBps", "sequential write 1 MiB, write-only open, fsync "
                                            "(dd; MiB/s)"),
                       ("seq_read_MiBps", "sequential read 1 MiB, cold (MiB/s)"),
                       ("rand_read_4k_MiBps", "random read 4 KiB, cold (MiB/s)")):
        if key not in d["gateway"]:
            continue
        g, n = d["gateway"][key], d["native"][key]
        out.append((label, f"{g:.0f}", f"{n:.0f}", f"{g / n:.2f}", ""))
    m = r["metadata"]
    for key, label in (("create", "create+write+close (files/s)"),
                       ("stat_first", "first stat after write (/s)"),
                       ("stat_warm", "stat, warm (/s)"),
                       ("small_read", "open+read 4 KiB+close, warm (/s)"),
                       ("rename", "rename (/s)"),
                       ("unlink", "unlink (/s)")):
        if key not in m["gateway"]:
            continue
        g, n, e = m["gateway"][key], m["native"][key], m["example"][key]
        out.append((label, f"{g:,.0f}", f"{n:,.0f}", f"{g / n:.3f}",
                    f"{e:,.0f} (gateway {g / e:.2f}x)"))
    rd = r["readdir"]
    for key in ("readdir_first", "readdir_warm"):
        g, n = rd["gateway"][key], rd["native"][key]
        out.append((f"readdir of {int(rd['native']['entries']):,} entries, "
                    f"{key.split('_')[1]} (entries/s)", f"{g:,.0f}", f"{n:,.0f}",
                    f"{g / n:.3f}", ""))
    x = r["xattr"]
    out.append(("getxattr p50 / p99 (µs)", f"{x['gateway']['p50_us']:.1f} / "
                f"{x['gateway']['p99_us']:.1f}", f"{x['native']['p50_us']:.1f} / "
                f"{x['native']['p99_us']:.1f}", "", ""))
    if "daemon_cpu_us" in x["gateway"]:
        out.append(("daemon CPU per FUSE request (the getxattr above; µs)",
                    f"{x['gateway']['daemon_cpu_us']:.0f}", "", "", ""))
    rs = r["rescan"]
    out.append((f"rescan after kill -9, cold, {rs['files']:,} files (files/s)",
                f"{rs['gateway_files_per_s']:,.0f}", f"{rs['du_native_files_per_s']:,.0f} (du)",
                f"{rs['gateway_files_per_s'] / rs['du_native_files_per_s']:.2f}", ""))
    mem = r["memory"]
    out.append((f"daemon RSS per cached inode ({mem['inodes_cached']:,} inodes)",
                f"{mem['bytes_per_inode']:.0f} B", "", "", ""))
    e = r["enforcement"]
    pair = e.get("pair_ratio_median", e["limited_MiBps"] / e["unlimited_MiBps"])
    out.append(("enforcement cost: write with / without a limit (MiB/s; ratio: median of "
                "interleaved pairs)", f"{e['limited_MiBps']:.0f} / {e['unlimited_MiBps']:.0f}",
                "", f"{pair:.2f}", ""))
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issues' targets: (target, measured, met)."""
    concurrent = concurrency.targets(r["concurrency"]) if "concurrency" in r else []
    concurrent += shared_ledger.targets(r["shared"]) if "shared" in r else []
    concurrent += migrate.targets(r["migrate"]) if "migrate" in r else []
    if "data" not in r:  # a --only run
        return concurrent
    d, m, e = r["data"], r["metadata"], r["enforcement"]

    def ratio(side: dict[str, dict[str, float]], key: str, other: str = "native") -> float:
        return side["gateway"][key] / side[other][key]

    checks = [
        ("sequential read >= 0.9 of native", ratio(d, "seq_read_MiBps"), 0.9),
        ("sequential write >= 0.8 of native (fio: read-write open, fsync honoured)",
         ratio(d, "seq_write_MiBps"), 0.8),
        *([("sequential write >= 0.8 of native (write-only open, fsync honoured)",
            ratio(d, "write_only_MiBps"), 0.8)] if "write_only_MiBps" in d["gateway"] else []),
        ("random read 4 KiB >= 0.6 of native", ratio(d, "rand_read_4k_MiBps"), 0.6),
        ("warm stat >= 0.8 of native", ratio(m, "stat_warm"), 0.8),
        ("create+write+close >= 2x the example", ratio(m, "create", "example"), 2.0),
        ("first stat after a write >= 5x the example", ratio(m, "stat_first", "example"), 5.0),
        ("unlink >= 3x the example", ratio(m, "unlink", "example"), 3.0),
        ("small-file read >= 2x the example", ratio(m, "small_read", "example"), 2.0),
        ("enforcement cost <= 5 % (with/without a limit >= 0.95)",
         e.get("pair_ratio_median", e["limited_MiBps"] / e["unlimited_MiBps"]), 0.95),
    ]
    out = [(t, f"{v:.2f}", v >= need) for t, v, need in checks]
    p99 = r["xattr"]["gateway"]["p99_us"]
    out.append(("usage getxattr p99 <= 1 ms", f"{p99:.0f} us", p99 <= 1000))
    rescan = r["rescan"]["gateway_files_per_s"]
    out.append(("rescan >= 100,000 files/s", f"{rescan:,.0f}/s", rescan >= 100_000))
    per_inode = r["memory"]["bytes_per_inode"]
    out.append(("<= 1 KiB RSS per cached inode", f"{per_inode:.0f} B", per_inode <= 1024))
    return out + concurrent


def markdown(r: dict[str, Any], meta: dict[str, str]) -> str:
    lines = [f"Measured {meta['date']} on {meta['machine']} ({meta['mode']} run"
             f"{', ' + meta['only'] + ' only' if meta.get('only') else ''}"
             f"{', fusegw at ' + meta['tree'] if meta.get('tree') else ''}).", ""]
    if "data" in r:
        lines += ["| figure | gateway | native | gateway/native | pyfuse3 passthroughfs.py |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(r)]
        lines += [""]
    if "concurrency" in r:
        lines += [*concurrency.markdown_lines(r["concurrency"]), ""]
    if "shared" in r:
        lines += [*shared_ledger.markdown_lines(r["shared"]), ""]
    if "migrate" in r:
        lines += [*migrate.markdown_lines(r["migrate"]), ""]
    lines += ["| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {'yes' if ok else 'no'} |" for t, v, ok in targets(r)]
    if "fuse_requests_per_file" in r:
        lines += ["", "FUSE requests per file in each metadata phase (gateway, counted by the "
                  "daemon):", "", "| phase | requests per file |", "|---|---|"]
        for phase, ops in r["fuse_requests_per_file"].items():
            text = ", ".join(f"{op.upper()} {v:g}" for op, v in ops.items()) or "none"
            lines.append(f"| {phase} | {text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes, fewer repetitions")
    parser.add_argument("--only", choices=["concurrency", "shared", "migrate"],
                        help="run only this phase (results to bench/results/PHASE-{quick,full}.*)")
    parser.add_argument("--report", type=Path, help="only rewrite the markdown of a results "
                        "JSON file")
    args = parser.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        args.report.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        print(args.report.with_suffix(".md").read_text())
        return
    started = time.time()
    results = run(args.quick, args.only)
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()}, {psutil.cpu_count()} cores, "
                   f"{psutil.virtual_memory().total // 2**30} GiB, kernel {platform.release()}",
        "mode": "quick" if args.quick else "full",
        "seconds": f"{time.time() - started:.0f}",
        "tree": tree_state(),
        **({"only": args.only} if args.only else {}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = ("quick" if args.quick else "full") if not args.only else \
        f"{args.only}-{'quick' if args.quick else 'full'}"
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                     indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    print(f"written: bench/results/{stem}.json, bench/results/{stem}.md "
          f"({meta['seconds']} s)")


if __name__ == "__main__":
    main()
