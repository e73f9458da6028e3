"""The v2 -> v3 migration's rate (issue 15): `python bench/run.py --only migrate [--quick]`
(results in bench/results/migrate-{quick,full}.*); `python bench/migrate.py [--quick]` only
prints.

Each repetition generates two identical flat version-2 volumes under var/bench/migrate/private
(0700, as fusegw demands of a volume's parents): N vfolders (5,000 quick, 50,000 full) at
`<aa>/<bb>/<28 hex>`, each with a few small files (one in a subdirectory), spread over
N / 5 quota scopes (users and projects, some limits NULL), and `version.txt` = 2; then a
mapping CSV (`id,quota_scope_id,max_size`) for the first. Timed, caches dropped before each:

- fusegw: `fusegw migrate VOLUME --mapping FILE --apply` on the first volume, checked after:
  every vfolder at its v3 path with its files, `version.txt` = 3;
- native: the same moves on the second volume as a plain Python loop (makedirs of the
  destination's parent, os.rename), nothing else: the floor a migration by rename has.

vfolders/s and files/s for both (files: those inside the vfolders moved), and fusegw/native.
The two sides alternate which goes first each repetition. If the installed `fusegw migrate`
lacks `--mapping` or `--apply`, the run says so and measures only the native side.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench" / "migrate"
PRIVATE = WORK / "private"  # 0700: the volumes go below it
FUSEGW = [sys.executable, "-m", "fusegw"]
NEEDED_FLAGS = ("--mapping", "--apply")
FILES = ("README.md", "train.py", "data/part-0000.bin")  # per vfolder, a few bytes to 4 KiB


def settings(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "vfolders": 5_000 if quick else 50_000,
            "files_per_vfolder": len(FILES), "vfolders_per_scope": 5,
            "reps": 1 if quick else 3}


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):  # not root: warm caches, said in the results
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def scope_hex(qsid: str) -> str:
    return uuid.UUID(qsid.partition(":")[2]).hex


def flat_rel(fid: str) -> str:
    return f"{fid[:2]}/{fid[2:4]}/{fid[4:]}"


def v3_rel(qsid: str, fid: str) -> str:
    return f"{scope_hex(qsid)}/{flat_rel(fid)}"


def population(n: int, per_scope: int, seed: int) -> list[tuple[str, str, int | None]]:
    """(folder hex, quota scope ID, max_size MiB or None) for n vfolders."""
    rng = random.Random(seed)
    scopes = []
    for i in range(max(1, n // per_scope)):
        kind = "user" if i % 4 else "project"
        scopes.append((f"{kind}:{uuid.UUID(int=rng.getrandbits(128), version=4)}",
                       None if i % 3 == 0 else 1024 * (1 + i % 50)))
    out = []
    for i in range(n):
        qsid, limit = scopes[i % len(scopes)]
        out.append((uuid.UUID(int=rng.getrandbits(128), version=4).hex, qsid, limit))
    return out


def generate(volume: Path, rows: list[tuple[str, str, int | None]]) -> None:
    """A flat v2 volume: every vfolder with FILES inside, version.txt = 2."""
    volume.mkdir(parents=True)
    made: set[str] = set()
    for i, (fid, _, _) in enumerate(rows):
        vf = volume / flat_rel(fid)
        fan = fid[:4]
        if fan not in made:
            vf.parent.mkdir(parents=True, exist_ok=True)
            made.add(fan)
        (vf / "data").mkdir(parents=True)
        for j, name in enumerate(FILES):
            with open(vf / name, "wb") as f:
                f.write(b"x" * (16 + (i * 7 + j * 131) % 4096))
    (volume / "version.txt").write_text("2\n")


def write_mapping(path: Path, rows: list[tuple[str, str, int | None]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "quota_scope_id", "max_size"])
        for fid, qsid, limit in rows:
            w.writerow([str(uuid.UUID(fid)), qsid, "" if limit is None else limit])


def cli_missing() -> list[str]:
    """The flags this bench needs that the installed `fusegw migrate --help` does not name."""
    proc = subprocess.run([*FUSEGW, "migrate", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    return [f for f in NEEDED_FLAGS if f not in proc.stdout]


def run_fusegw(volume: Path, mapping: Path, log: Path) -> float:
    drop_caches()
    argv = [*FUSEGW, "migrate", str(volume), "--mapping", str(mapping), "--apply"]
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"`{' '.join(argv[1:])}` exited {proc.returncode}:\n"
                           + "\n".join(tail))
    return seconds


def run_native(volume: Path, rows: list[tuple[str, str, int | None]]) -> float:
    drop_caches()
    t0 = time.perf_counter()
    made: set[str] = set()
    for fid, qsid, _ in rows:
        dst = volume / v3_rel(qsid, fid)
        parent = str(dst.parent)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        os.rename(volume / flat_rel(fid), dst)
    # the emptied fan-out directories, as a migration leaves none
    for fan in sorted({fid[:2] + "/" + fid[2:4] for fid, _, _ in rows}, reverse=True):
        os.rmdir(volume / fan)
    for top in sorted({fid[:2] for fid, _, _ in rows}):
        os.rmdir(volume / top)
    (volume / "version.txt").write_text("3\n")
    os.sync()
    return time.perf_counter() - t0


def check(volume: Path, rows: list[tuple[str, str, int | None]], side: str) -> None:
    """Every vfolder at its v3 path with its files, none left flat, version.txt = 3."""
    for fid, qsid, _ in rows:
        vf = volume / v3_rel(qsid, fid)
        missing = [n for n in FILES if not (vf / n).is_file()]
        if missing:
            raise RuntimeError(f"{side}: {vf} lacks {missing}")
        if (volume / flat_rel(fid)).exists():
            raise RuntimeError(f"{side}: {flat_rel(fid)} still in the flat layout")
    version = (volume / "version.txt").read_text().strip()
    if version != "3":
        raise RuntimeError(f"{side}: version.txt is {version!r} after the migration")


def fresh() -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    PRIVATE.mkdir(parents=True)
    os.chmod(PRIVATE, 0o700)


def rates(seconds: float, n: int, files: int) -> dict[str, float]:
    return {"seconds": seconds, "vfolders_per_s": n / seconds, "files_per_s": files / seconds}


def run(quick: bool) -> dict[str, Any]:
    s = settings(quick)
    n = s["vfolders"]
    files = n * s["files_per_vfolder"]
    missing = cli_missing()
    out: dict[str, Any] = {"settings": s, "files": files, "root": os.geteuid() == 0,
                           "command": "fusegw migrate VOLUME --mapping FILE --apply"}
    if missing:
        out["fusegw_missing_flags"] = missing
        print(f"fusegw migrate lacks {', '.join(missing)}: measuring the native side only",
              file=sys.stderr, flush=True)
    samples: dict[str, list[float]] = {"fusegw": [], "native": []}
    gen_s: list[float] = []
    try:
        for rep in range(s["reps"]):
            fresh()
            rows = population(n, s["vfolders_per_scope"], seed=rep)
            t0 = time.perf_counter()
            generate(PRIVATE / "native", rows)
            gen_s.append(time.perf_counter() - t0)
            sides = ["native"]
            if not missing:
                generate(PRIVATE / "fusegw", rows)
                write_mapping(WORK / "mapping.csv", rows)
                sides = ["fusegw", "native"] if rep % 2 == 0 else ["native", "fusegw"]
            for side in sides:
                print(f"migrate rep {rep + 1}/{s['reps']}: {side}, {n:,} vfolders ...",
                      flush=True)
                volume = PRIVATE / side
                if side == "fusegw":
                    seconds = run_fusegw(volume, WORK / "mapping.csv", WORK / "fusegw.log")
                else:
                    seconds = run_native(volume, rows)
                check(volume, rows, side)
                samples[side].append(seconds)
    finally:
        if WORK.exists():
            shutil.rmtree(WORK, ignore_errors=True)
    out["generate_seconds"] = statistics.median(gen_s)
    out["samples_seconds"] = samples
    for side, values in samples.items():
        if values:
            out[side] = rates(statistics.median(values), n, files)
    if "fusegw" in out:
        out["ratio"] = out["fusegw"]["vfolders_per_s"] / out["native"]["vfolders_per_s"]
    return out


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    if "fusegw" not in r:
        return [("fusegw migrate measured", "no: the CLI lacks "
                 + ", ".join(r.get("fusegw_missing_flags", [])), False)]
    return [("migration rate printed (vfolders/s, files/s)",
             f"{r['fusegw']['vfolders_per_s']:,.0f} / {r['fusegw']['files_per_s']:,.0f}", True)]


def markdown_lines(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [f"Migration v2 -> v3 (issue 15): {s['vfolders']:,} vfolders with "
             f"{s['files_per_vfolder']} small files each ({r['files']:,} files), "
             f"{s['vfolders'] // s['vfolders_per_scope']:,} quota scopes, same filesystem; "
             f"median of {s['reps']} repetition(s), "
             f"{'caches dropped before each' if r['root'] else 'warm caches (not root)'}.", ""]
    if "fusegw_missing_flags" in r:
        lines += [f"**fusegw not measured**: `fusegw migrate` lacks "
                  f"{', '.join(r['fusegw_missing_flags'])}.", ""]
    lines += ["| side | seconds, median (min-max) | vfolders/s | files/s |", "|---|---|---|---|"]
    labels = {"fusegw": f"`{r['command']}`",
              "native": "plain loop: makedirs + os.rename per vfolder"}
    for side in ("fusegw", "native"):
        if side in r:
            x = r[side]
            seconds = r["samples_seconds"][side]
            lines.append(f"| {labels[side]} | {x['seconds']:.2f} ({min(seconds):.2f}-"
                         f"{max(seconds):.2f}) | {x['vfolders_per_s']:,.0f} "
                         f"| {x['files_per_s']:,.0f} |")
    if "ratio" in r:
        lines += ["", f"fusegw / native (vfolders/s): {r['ratio']:.2f}"]
    return lines


def main() -> None:
    """Run and print, writing no results file (bench/run.py --only migrate writes them)."""
    r = run("--quick" in sys.argv[1:])
    print(json.dumps(r, indent=2))
    print("\n".join(markdown_lines(r)))


if __name__ == "__main__":
    main()
