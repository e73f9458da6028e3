"""`fusegw migrate` (issue 15): a flat v2 volume moved to layout v3, planned, resumable,
backend-aware, with a report; the gateway then serves it.

The volumes are generated (tests/v2_volumes.py): vfolders with files, hard links, symlinks,
fifos, odd names, modes, owners, times and xattrs. Every migrated vfolder is compared with the
manifest taken before: the same entries, metadata, bytes and hard-link groups. The scopes come
from a `--mapping` CSV here (the `--dsn` path reads the same from PostgreSQL: its own tests).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from btrfs_fixtures import make_btrfs
from conftest import du_bytes, free_port, new_qsid, scope_hex, wait_for
from emulators.common import start_emulator
from postgres_fixture import PostgresServer, postgres_server
from redis_fixture import start_redis, stop
from v2_volumes import flat, make_v2_volume, manifests, v3, write_mapping
from vendor_fixture import emulator_module

from fusegw.ids import QuotaScopeID
from fusegw.migration import transfer
from fusegw.state import StateDir
from fusegw.state.lease import Lease
from fusegw.state.registry import Registry, ScopeRecord

__all__ = ["postgres_server"]  # the fixture, imported for pytest

EXIT_LEFTOVERS = 6
MIB = 1 << 20


def migrate(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusegw", "migrate", *map(str, args)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def tree(volume: Path) -> list[bytes]:
    """Every path below the volume (bytes), sorted."""
    base = os.fsencode(volume)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        found += [os.path.relpath(os.path.join(dirpath, n), base) for n in dirnames + filenames]
    return sorted(found)


def registry(volume: Path) -> dict[str, tuple[str, int]]:
    data = json.loads((volume / ".fusegw" / "registry.json").read_text())
    return {p: (r["qsid"], r["limit_bytes"]) for p, r in data["scopes"].items()}


def expected_registry(mapping: dict[str, tuple[str, int | None]], limits: bool
                      ) -> dict[str, tuple[str, int]]:
    want: dict[str, tuple[str, int]] = {}
    for qsid, size in mapping.values():
        old = want.get(scope_hex(qsid), (qsid, 0))[1]
        want[scope_hex(qsid)] = (qsid, max(old, (size or 0) * MIB if limits else 0))
    return want


def v3_paths(mapping: dict[str, tuple[str, int | None]]) -> dict[str, str]:
    return {fid: v3(qsid, fid) for fid, (qsid, _) in mapping.items()}


def assert_migrated(volume: Path, mapping: dict[str, tuple[str, int | None]],
                    before: dict[str, object], limits: bool = False) -> None:
    assert (volume / "version.txt").read_text() == "3\n"
    assert manifests(volume, v3_paths(mapping)) == before
    assert registry(volume) == expected_registry(mapping, limits)
    leftovers = [p for p in os.listdir(volume)
                 if p not in (".fusegw", "version.txt") and len(p) != 32]
    assert leftovers == []
    assert not (volume / ".fusegw" / "migration-journal.json").exists()


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assert shutil.which("mkfs.btrfs"), "mkfs.btrfs is missing: `make install` installs btrfs-progs"
    with make_btrfs(tmp_path_factory.mktemp("btrfs"), "1G") as mountpoint:
        yield mountpoint


# -- the plan ---------------------------------------------------------------------------------

def test_plan_by_default_writes_nothing_and_names_every_leftover(tmp_path: Path) -> None:
    """Without --apply: the plan on stdout, leftovers on stderr with their reasons (unknown to
    the source, unparsable, a user/project UUID collision, an existing destination), exit 6,
    and the volume exactly as it was (no .fusegw/, no version.txt change)."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 12, seed=3)
    fids = sorted(mapping)
    unknown = fids[0]
    shared = uuid.uuid4()
    colliding = {fids[1]: f"user:{shared}", fids[2]: f"project:{shared}"}
    rows = {f: m for f, m in mapping.items() if f != unknown}
    rows.update({f: (q, None) for f, q in colliding.items()})
    taken = fids[3]
    (volume / v3(rows[taken][0], taken)).mkdir(parents=True)
    (volume / "ab" / "zz").mkdir(parents=True)
    (volume / "cd" / "ef").mkdir(parents=True)
    (volume / "cd" / "ef" / "not-a-vfolder\n\xff").write_text("x")
    csv_path = write_mapping(tmp_path / "map.csv", rows)
    before = tree(volume)

    proc = migrate(volume, "--mapping", csv_path, "--report", tmp_path / "plan.csv")
    assert proc.returncode == EXIT_LEFTOVERS, proc.stderr
    assert tree(volume) == before
    assert "8 vfolders would move" in proc.stdout
    err = proc.stderr
    assert f"{flat(unknown)}: unknown to the source" in err
    assert "ab/zz: does not parse" in err
    assert "not-a-vfolder" in err and err.count("does not parse") == 2
    assert f"{flat(fids[1])}: scope user:{shared} collides with project:{shared}" in err
    assert f"{flat(fids[2])}: scope project:{shared} collides with user:{shared}" in err
    assert f"{flat(taken)}: destination exists" in err
    with open(tmp_path / "plan.csv", newline="") as f:
        report = list(csv.DictReader(f))
    assert list(report[0]) == ["volume_id", "folder_id", "quota_scope_id", "current_size",
                               "old_quota", "src_path", "dst_path", "status"]
    statuses = sorted(r["status"].split(":")[0] for r in report)
    assert statuses == ["leftover"] * 6 + ["planned"] * 8


def test_a_scope_colliding_with_a_registered_one_is_a_leftover(tmp_path: Path) -> None:
    """A registered user:X makes project:X a leftover (they would share the directory X);
    the vfolders of user:X move into the registered scope, which keeps its limit."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 4, seed=17)
    fids = sorted(mapping)
    shared = uuid.uuid4()
    state = StateDir(volume)
    state.open()
    Registry(state).put(ScopeRecord(QuotaScopeID.parse(f"user:{shared}"), 12345))
    (volume / shared.hex).mkdir()
    rows = {fids[0]: (f"project:{shared}", 3), fids[1]: (f"user:{shared}", 3),
            fids[2]: mapping[fids[2]], fids[3]: mapping[fids[3]]}
    proc = migrate(volume, "--mapping", write_mapping(tmp_path / "m.csv", rows), "--apply",
                   "--set-limits")
    assert proc.returncode == EXIT_LEFTOVERS
    assert (f"{flat(fids[0])}: scope project:{shared} collides with the registered scope "
            f"user:{shared}") in proc.stderr
    assert (volume / v3(f"user:{shared}", fids[1]) / "data.bin").exists()
    assert registry(volume)[shared.hex] == (f"user:{shared}", 12345)
    assert (volume / flat(fids[0]) / "data.bin").exists()


def test_dry_run_and_the_old_map_format_still_work(tmp_path: Path) -> None:
    """`--map` (lines '<hex> <qsid>') and `--default-scope` from the earlier command: the
    mapped vfolders go to their scope, the rest to the default."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 4, seed=4)
    fids = sorted(mapping)
    mapped, default = new_qsid("project"), new_qsid("user")
    (tmp_path / "map").write_text(f"# fid qsid\n{fids[0]} {mapped}\n{fids[1]} {mapped}\n")
    before = tree(volume)
    proc = migrate(volume, "--map", tmp_path / "map", "--default-scope", default, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "4 vfolders would move into 2 scopes (2 new)" in proc.stdout
    assert tree(volume) == before
    proc = migrate(volume, "--map", tmp_path / "map", "--default-scope", default, "--apply")
    assert proc.returncode == 0, proc.stderr
    for fid in fids:
        assert (volume / v3(mapped if fid in fids[:2] else default, fid) / "data.bin").exists()
    assert (volume / "version.txt").read_text() == "3\n"


# -- --apply on plain directories --------------------------------------------------------------

def test_apply_moves_every_vfolder_intact_and_the_gateway_serves_it(make_gateway,
                                                                    tmp_path: Path) -> None:
    """2,000 vfolders in 40 scopes: the mount refuses the v2 volume naming `fusegw migrate`;
    after --apply --set-limits every vfolder is at its v3 path with identical content and
    metadata, each scope registered with its type and the largest old max_size, version 3,
    the report complete; the gateway mounts it and every scope's used_bytes equals du."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 2000, seed=5, scopes=40)
    before = manifests(volume, {f: flat(f) for f in mapping})
    refused = make_gateway(source=volume, start=False).start(check=False)
    assert refused.returncode == 1 and "fusegw migrate" in refused.stderr, refused.stderr

    proc = migrate(volume, "--mapping", write_mapping(tmp_path / "m.csv", mapping), "--apply",
                   "--set-limits", "--report", tmp_path / "r.csv", "--scan-size",
                   "--volume-id", "local:vol")
    assert proc.returncode == 0, proc.stderr
    assert "migrate: 2000/2000 vfolders moved" in proc.stderr and "vfolders/s" in proc.stderr
    assert_migrated(volume, mapping, before, limits=True)
    with open(tmp_path / "r.csv", newline="") as f:
        report = {r["folder_id"]: r for r in csv.DictReader(f)}
    assert len(report) == 2000
    for fid, (qsid, size) in mapping.items():
        row = report[str(uuid.UUID(fid))]
        assert row["volume_id"] == "local:vol" and row["quota_scope_id"] == qsid
        assert row["status"] == "moved" and row["old_quota"] == ("" if size is None else str(size))
        assert row["src_path"] == str(volume / flat(fid))
        assert row["dst_path"] == str(volume / v3(qsid, fid))
        assert int(row["current_size"]) == du_bytes(volume / v3(qsid, fid))

    gw = make_gateway(source=volume)
    wait_for(lambda: not gw.request("GET", "/").json()["rebuilding"], what="first scan")
    for pathname, (qsid, limit) in registry(volume).items():
        figures = gw.describe(qsid)
        assert figures["used_bytes"] == du_bytes(volume / pathname), qsid
        assert figures["limit_bytes"] == (limit or None)


def test_apply_from_the_managers_database(postgres_server: PostgresServer,
                                          tmp_path: Path) -> None:
    """--dsn: the scopes and max_size from a real PostgreSQL's vfolders table (only this
    volume's rows, --db-volume); vfolders the table does not know are quarantined; rows
    without a directory are ignored."""
    pg = postgres_server
    pg.reset()
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 200, seed=15, scopes=15)
    fids = sorted(mapping)
    known = {f: m for f, m in mapping.items() if f not in fids[:2]}
    elsewhere = {fids[0]: (new_qsid(), 5), uuid.uuid4().hex: (new_qsid(), None)}
    pg.insert([(uuid.UUID(f), "local:vol", q, size) for f, (q, size) in known.items()]
              + [(uuid.uuid4(), "local:vol", new_qsid(), 7)]  # no directory: ignored
              + [(uuid.UUID(f), "other:vol", q, size) for f, (q, size) in elsewhere.items()])
    before = manifests(volume, {f: flat(f) for f in mapping})
    proc = migrate(volume, "--dsn", pg.dsn, "--db-volume", "local:vol", "--apply",
                   "--set-limits", "--quarantine")
    assert proc.returncode == 0, proc.stderr
    assert_migrated(volume, known, {f: before[f] for f in known}, limits=True)
    unclaimed = volume / ".fusegw" / "unclaimed"
    assert manifests(unclaimed, {f: flat(f) for f in fids[:2]}) == \
        {f: before[f] for f in fids[:2]}


def test_script_run_with_sh_gives_the_same_result_as_apply(tmp_path: Path) -> None:
    """Two identical volumes (one seed): one by --apply, one by the --script run with sh: the
    same tree, the same manifests, the same registry; the script quotes every path."""
    a, b = tmp_path / "a", tmp_path / "b"
    mapping = make_v2_volume(a, 150, seed=6)
    assert make_v2_volume(b, 150, seed=6) == mapping
    (a / "ab" / "odd 'name'\n$(touch /tmp/pwned-fusegw)").mkdir(parents=True)
    (b / "ab" / "odd 'name'\n$(touch /tmp/pwned-fusegw)").mkdir(parents=True)
    before = manifests(a, {f: flat(f) for f in mapping})
    csv_path = write_mapping(tmp_path / "m.csv", mapping)
    flags = ["--mapping", csv_path, "--set-limits", "--quarantine"]

    assert migrate(a, *flags, "--apply").returncode == 0
    untouched = tree(b)
    proc = migrate(b, *flags, "--script", tmp_path / "migrate.sh")
    assert proc.returncode == 0, proc.stderr
    assert tree(b) == untouched  # nothing written by --script
    assert not (b / ".fusegw").exists()
    script = (tmp_path / "migrate.sh").read_bytes()
    assert script.startswith(b"#!/bin/sh") and b"\nset -e\n" in script
    assert script.rstrip().endswith(b"/version.txt")
    sh = subprocess.run(["sh", tmp_path / "migrate.sh"], capture_output=True, timeout=60)
    assert sh.returncode == 0, sh.stderr
    assert not Path("/tmp/pwned-fusegw").exists()
    for v in (a, b):
        assert_migrated(v, mapping, before, limits=True)
    ignore = {b".fusegw/lease.json", b".fusegw/lease.lock", b".fusegw/migrate.lock"}
    assert [p for p in tree(a) if p not in ignore] == tree(b)
    unclaimed = b / ".fusegw" / "unclaimed" / "ab" / "odd 'name'\n$(touch /tmp/pwned-fusegw)"
    assert unclaimed.is_dir()


# -- leftovers, quarantine, refusals ------------------------------------------------------------

def test_leftovers_stay_in_place_or_are_quarantined(make_gateway, tmp_path: Path) -> None:
    """Leftovers stay where they are, version.txt is not written, exit 6; the vfolders the
    source knows move meanwhile. --quarantine then moves the leftovers into
    .fusegw/unclaimed/ (listed in the report), the volume completes and is served."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 20, seed=7)
    fids = sorted(mapping)
    known = {f: m for f, m in mapping.items() if f not in fids[:2]}
    (volume / "12" / "junk").mkdir(parents=True)
    csv_path = write_mapping(tmp_path / "m.csv", known)
    before = manifests(volume, {f: flat(f) for f in mapping})

    proc = migrate(volume, "--mapping", csv_path, "--apply")
    assert proc.returncode == EXIT_LEFTOVERS, proc.stderr
    assert "3 leftovers" in proc.stderr and "unknown to the source" in proc.stderr
    assert (volume / "version.txt").read_text() == "2\n"
    for fid in fids[:2]:
        assert (volume / flat(fid) / "data.bin").exists()
    assert manifests(volume, v3_paths(known)) == {f: before[f] for f in known}

    proc = migrate(volume, "--mapping", csv_path, "--apply", "--quarantine",
                   "--report", tmp_path / "r.csv")
    assert proc.returncode == 0, proc.stderr
    assert (volume / "version.txt").read_text() == "3\n"
    unclaimed = volume / ".fusegw" / "unclaimed"
    assert manifests(unclaimed, {f: flat(f) for f in fids[:2]}) == \
        {f: before[f] for f in fids[:2]}
    assert (unclaimed / "12" / "junk").is_dir()
    with open(tmp_path / "r.csv", newline="") as f:
        report = list(csv.DictReader(f))
    quarantined = {r["src_path"]: r for r in report if r["status"].startswith("quarantined")}
    assert set(quarantined) == {str(volume / flat(f)) for f in fids[:2]} | {
        str(volume / "12" / "junk")}
    assert quarantined[str(volume / "12" / "junk")]["dst_path"] == str(unclaimed / "12/junk")
    gw = make_gateway(source=volume)
    assert not (gw.mountpoint / ".fusegw").exists()


def test_a_served_or_locked_volume_is_refused(tmp_path: Path) -> None:
    """A volume whose serving lease is held (a gateway) is refused, exit 4, naming
    --force-while-served, which overrides it; a second migration (the lock held) is refused."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 3, seed=8)
    csv_path = write_mapping(tmp_path / "m.csv", mapping)
    state = StateDir(volume)
    state.open()
    lease = Lease(state)
    lease.acquire()
    try:
        proc = migrate(volume, "--mapping", csv_path, "--apply")
        assert proc.returncode == 4 and "--force-while-served" in proc.stderr, proc.stderr
        assert (volume / "version.txt").read_text() == "2\n"
        fd = os.open(volume / ".fusegw" / "migrate.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            proc = migrate(volume, "--mapping", csv_path, "--apply", "--force-while-served")
            assert proc.returncode == 4 and "another `fusegw migrate`" in proc.stderr
        finally:
            os.close(fd)
        proc = migrate(volume, "--mapping", csv_path, "--apply", "--force-while-served")
        assert proc.returncode == 0, proc.stderr
    finally:
        lease.release()
    assert (volume / "version.txt").read_text() == "3\n"


def test_a_volume_a_gateway_serves_without_a_lease_is_refused(make_gateway, tmp_path: Path
                                                              ) -> None:
    """A gateway that holds no lease (here on the shared ledger) still serves the volume: the
    mount table names it (its fsname is fusegw:<volume>), and --apply is refused, exit 4,
    naming where it is mounted."""
    server = start_redis(tmp_path)
    try:
        volume = tmp_path / "vol"
        mapping = make_v2_volume(volume, 3, seed=21)
        (volume / "version.txt").write_text("3\n")  # half-migrated: the mount takes it
        csv_path = write_mapping(tmp_path / "m.csv", mapping)
        gw = make_gateway(source=volume, extra=["-o", f"ledger=redis,redis_url={server.url}"])
        proc = migrate(volume, "--mapping", csv_path, "--apply")
        assert proc.returncode == 4, proc.stderr
        assert f"served by fusegw at {gw.mountpoint}" in proc.stderr
        assert all((volume / flat(f)).is_dir() for f in mapping)  # nothing moved
        gw.stop()
    finally:
        stop(server)


def test_apply_on_an_appliance_makes_its_objects(tmp_path: Path) -> None:
    """`--config FILE --volume NAME` gives the backend and its options: on `netapp` (against
    the ONTAP emulator, tests/emulators/netapp.py) each new scope is a qtree with a tree quota
    rule carrying the largest old max_size, and the vfolders move into the qtrees."""
    volume = tmp_path / "private" / "vol"
    volume.parent.mkdir(mode=0o700)
    mapping = make_v2_volume(volume, 6, seed=22, scopes=2)
    csv_path = write_mapping(tmp_path / "m.csv", mapping)
    emulator = start_emulator("netapp", volume, free_port())
    try:
        config = tmp_path / "fusegw.toml"
        options = emulator_module("netapp").gateway_options(emulator.url)
        config.write_text(tomli_w.dumps({"volume": {"vol": {
            "backend": "netapp", "path": str(volume), "mountpoint": str(tmp_path / "mnt"),
            "options": options}}}))
        proc = migrate(volume, "--mapping", csv_path, "--apply", "--set-limits", "--config",
                       config, "--volume", "vol")
        assert proc.returncode == 0, proc.stderr
        state = emulator.state()
        qtrees = {q["name"] for q in state["qtrees"]}
        expected = {uuid.UUID(q.split(":", 1)[1]).hex for q, _ in mapping.values()}
        assert qtrees >= expected, (qtrees, expected)
        limits = {r["qtree"]: r["hard_limit"] for r in state["rules"]}
        largest: dict[str, int] = {}
        for qsid, size in mapping.values():
            if size:
                hex_ = uuid.UUID(qsid.split(":", 1)[1]).hex
                largest[hex_] = max(largest.get(hex_, 0), size * 2**20)
        assert largest and all(limits[h] == want for h, want in largest.items()), limits
        for fid, (qsid, _) in mapping.items():
            assert (volume / v3(qsid, fid)).is_dir()
    finally:
        emulator.stop()


# -- killed and re-run -------------------------------------------------------------------------

def _kill_and_resume(base: Path, name: str, backend: str, points: list[int]) -> None:
    mapping = make_v2_volume(base / f"{name}-ref", 12, seed=9, scopes=4)
    csv_path = write_mapping(base / f"{name}.csv", mapping)
    flags = ["--mapping", csv_path, "--apply", "--set-limits", "--backend", backend]
    before = manifests(base / f"{name}-ref", {f: flat(f) for f in mapping})
    assert migrate(base / f"{name}-ref", *flags).returncode == 0
    reference = tree(base / f"{name}-ref")
    ignore = {b".fusegw/lease.json", b".fusegw/lease.lock", b".fusegw/migrate.lock"}
    for point in points:
        volume = base / f"{name}-{point}"
        assert make_v2_volume(volume, 12, seed=9, scopes=4) == mapping
        killed = migrate(volume, *flags, env={"FUSEGW_MIGRATE_KILL_AFTER": str(point)})
        assert killed.returncode == -9, (point, killed.stderr)
        again = migrate(volume, *flags, env={"FUSEGW_MIGRATE_KILL_AFTER": str(point + 3)})
        if again.returncode == -9:  # killed a second time, later on
            again = migrate(volume, *flags)
        assert again.returncode == 0, (point, again.stderr)
        assert_migrated(volume, mapping, before, limits=True)
        assert [p for p in tree(volume) if p not in ignore] == \
            [p for p in reference if p not in ignore], point


def test_apply_killed_anywhere_then_rerun_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """On plain directories (renames): SIGKILL after step N (FUSEGW_MIGRATE_KILL_AFTER), then
    again 3 steps later, then a full run: the same tree, manifests and registry as a run that
    was never interrupted."""
    _kill_and_resume(tmp_path, "vfs", "vfs", [1, 3, 4, 5, 9, 14, 17, 18])


# -- btrfs: scopes are subvolumes, moves cross them ----------------------------------------------

def test_apply_on_btrfs_makes_subvolumes_and_copies_by_reflink(btrfs: Path, make_gateway,
                                                               tmp_path: Path) -> None:
    """On btrfs each scope is a new subvolume, so every rename answers EXDEV and the vfolder
    is reflink-copied, verified and its source removed: content and metadata identical, the
    scopes limited by their qgroups; the gateway serves it with the btrfs backend."""
    volume = btrfs / "vol"
    mapping = make_v2_volume(volume, 200, seed=10, scopes=12)
    before = manifests(volume, {f: flat(f) for f in mapping})
    proc = migrate(volume, "--mapping", write_mapping(tmp_path / "m.csv", mapping), "--apply",
                   "--backend", "btrfs", "--set-limits", "--report", tmp_path / "r.csv")
    assert proc.returncode == 0, proc.stderr
    assert_migrated(volume, mapping, before, limits=True)
    for pathname in registry(volume):
        assert os.stat(volume / pathname).st_ino == 256  # a subvolume's root
    with open(tmp_path / "r.csv", newline="") as f:
        assert {r["status"] for r in csv.DictReader(f)} == {"reflinked"}
    gw = make_gateway(source=volume, extra=["--backend", "btrfs"])
    for _pathname, (qsid, limit) in registry(volume).items():
        assert gw.describe(qsid)["limit_bytes"] == (limit or None)


def test_script_on_btrfs_gives_the_same_result_as_apply(btrfs: Path, tmp_path: Path) -> None:
    """The script's `btrfs subvolume create` and `mv` (its copy across subvolumes) end where
    --apply ends."""
    a, b = btrfs / "sa", btrfs / "sb"
    mapping = make_v2_volume(a, 60, seed=11, scopes=6)
    make_v2_volume(b, 60, seed=11, scopes=6)
    before = manifests(a, {f: flat(f) for f in mapping})
    flags = ["--mapping", write_mapping(tmp_path / "m.csv", mapping), "--backend", "btrfs",
             "--set-limits"]
    assert migrate(a, *flags, "--apply").returncode == 0
    assert migrate(b, *flags, "--script", tmp_path / "m.sh").returncode == 0
    sh = subprocess.run(["sh", tmp_path / "m.sh"], capture_output=True, timeout=60)
    assert sh.returncode == 0, sh.stderr
    for v in (a, b):
        assert_migrated(v, mapping, before, limits=True)
        for pathname in registry(v):
            assert os.stat(v / pathname).st_ino == 256


def test_apply_on_btrfs_killed_anywhere_then_rerun(btrfs: Path) -> None:
    """Killed during the journaled copies (entry, copy, verify, place, source removal) and
    re-run: nothing lost, nothing duplicated, no temporary copy left."""
    rng = random.Random(12)
    _kill_and_resume(btrfs, "kill", "btrfs", sorted(rng.sample(range(1, 60), 8)))


def test_a_scope_on_another_filesystem_gets_a_verified_copy(tmp_path: Path) -> None:
    """A scope directory that is another filesystem (as an appliance's export or a separately
    mounted project may be; here a tmpfs) and not registered yet: adopted, and every vfolder
    into it, answered EXDEV and offered no reflink, is copied, compared byte for byte and
    its source removed."""
    volume = tmp_path / "vol"
    mapping = make_v2_volume(volume, 30, seed=16, scopes=1)
    (qsid,) = {q for q, _ in mapping.values()}
    scope = volume / scope_hex(qsid)
    scope.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "fusegw-test", scope],
                   check=True)
    try:
        before = manifests(volume, {f: flat(f) for f in mapping})
        proc = migrate(volume, "--mapping", write_mapping(tmp_path / "m.csv", mapping),
                       "--apply", "--report", tmp_path / "r.csv")
        assert proc.returncode == 0, proc.stderr
        assert "30/30 vfolders moved (30 by copy)" in proc.stderr
        assert_migrated(volume, mapping, before)
        with open(tmp_path / "r.csv", newline="") as f:
            assert {r["status"] for r in csv.DictReader(f)} == {"copied"}
    finally:
        subprocess.run(["umount", "-l", scope], check=True)


def test_verified_copy_catches_a_difference(tmp_path: Path) -> None:
    """The plain (non-reflink) copy keeps everything a manifest sees, and verify() refuses a
    copy that differs in one byte or one mode bit."""
    src = tmp_path / "v2"
    mapping = make_v2_volume(src, 1, seed=13)
    fid = next(iter(mapping))
    copy = tmp_path / "copy"
    assert transfer.copy_tree(src / flat(fid), copy, reflink=False) == "copy"
    transfer.verify(src / flat(fid), copy, content=True)
    assert manifests(tmp_path, {"x": f"v2/{flat(fid)}"})["x"] == \
        manifests(tmp_path, {"x": "copy"})["x"]
    data = copy / "data.bin"
    blob = bytearray(data.read_bytes() or b"\0")
    blob[0] ^= 1
    st = data.stat()
    data.write_bytes(bytes(blob))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(transfer.CopyFailed, match=r"data\.bin"):
        transfer.verify(src / flat(fid), copy, content=True)
    os.chmod(copy / "sub", 0o777)
    with pytest.raises(transfer.CopyFailed, match="sub"):
        transfer.verify(src / flat(fid), copy, content=False)


def test_a_directory_that_is_no_volume_is_refused(tmp_path: Path) -> None:
    """Somebody's data (no version.txt, no v2 fan-out, no scopes) or an unknown layout version
    is refused before anything is planned, so --quarantine cannot sweep it away."""
    data = tmp_path / "home"
    (data / "alice").mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    proc = migrate(data, "--default-scope", new_qsid(), "--apply", "--quarantine")
    assert proc.returncode == 4 and "does not look like a Backend.AI volume" in proc.stderr
    assert sorted(os.listdir(data)) == ["alice", "notes.txt"]
    (data / "version.txt").write_text("7\n")
    proc = migrate(data, "--default-scope", new_qsid())
    assert proc.returncode == 4 and "unsupported layout version '7'" in proc.stderr


def test_bad_sources_are_one_line(tmp_path: Path) -> None:
    """A mapping row that does not parse, or a --dsn that cannot be used, ends in exit 2 with
    one line naming it; nothing is written."""
    volume = tmp_path / "vol"
    make_v2_volume(volume, 2, seed=14)
    (tmp_path / "bad.csv").write_text("id,quota_scope_id,max_size\nnot-a-uuid,user:x,\n")
    proc = migrate(volume, "--mapping", tmp_path / "bad.csv", "--apply")
    assert proc.returncode == 2 and "bad.csv:2" in proc.stderr
    assert "not a folder UUID" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = migrate(volume, "--dsn", "postgresql://nobody:secret@127.0.0.1:1/manager", "--apply")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "secret" not in proc.stderr
    assert not (volume / ".fusegw").exists()
