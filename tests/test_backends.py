"""One behavioural suite for quota scopes, run through the gateway on every backend:
`vfs` (the gateway enforces), `btrfs` (a real btrfs on a loop device; the kernel enforces
through qgroups and the gateway passes its EDQUOT through), `purestorage` (plain directories,
the gateway enforces), and the vendor appliances (`netapp`, `dellemc-onefs`, `weka`, `gpfs`),
each against its emulator (tests/emulators/: a real HTTP server implementing the vendor's
documented API, standing in for an appliance no machine here can reach).

The appliances enforce their limits through their NFS or native clients, which the emulators
cannot do on a local directory: the EDQUOT test runs on the backends that enforce here (vfs,
btrfs, purestorage), every other test on all of them.

`BLOCK` is what one allocation unit, or an empty scope's own metadata, may add: a 4 KiB
directory block on ext4; the empty subvolume's 16 KiB of metadata on btrfs.
"""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from btrfs_fixtures import make_btrfs
from conftest import Gateway, du_bytes, new_qsid, scope_hex, wait_for
from emulators.common import logical_bytes
from vendor_fixture import VENDORS, vendor_gateway

MiB = 2**20
BLOCK = {"btrfs": 16384}
ENFORCED_HERE = ["vfs", "btrfs", "purestorage"]
LOGICAL = {"dellemc-onefs"}  # appliances whose figures are file sizes, not blocks


@pytest.fixture(scope="module", params=[*ENFORCED_HERE, *VENDORS])
def backend_gw(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway]]:
    backend: str = request.param
    with _gateway(backend, tmp_path_factory.mktemp(backend)) as gw:
        yield backend, gw


@pytest.fixture(scope="module", params=ENFORCED_HERE)
def enforcing_gw(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway]]:
    backend: str = request.param
    with _gateway(backend, tmp_path_factory.mktemp(f"{backend}-enf")) as gw:
        yield backend, gw


@contextmanager
def _gateway(backend: str, base: Path) -> Iterator[Gateway]:
    if backend in VENDORS:
        with vendor_gateway(backend, base) as (gw, _emulator):
            yield gw
        return
    with _volume(backend, base) as source:
        mnt = base / "gw.mnt"
        mnt.mkdir()
        gw = Gateway(source, mnt, base / "gw.sock", base / "gw.log", backend,
                     ["--backend", backend], {})
        try:
            gw.start()
            yield gw
        finally:
            gw.stop()


def _volume(backend: str, base: Path) -> AbstractContextManager[Path]:
    if backend == "btrfs":
        return make_btrfs(base / "btrfs")
    source = base / "vol"
    source.mkdir()
    return _nullcontext(source)


class _nullcontext:
    def __init__(self, value: Path) -> None:
        self.value = value

    def __enter__(self) -> Path:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


def storage_truth(backend: str, path: Path) -> int:
    """What the backend's storage itself counts for a scope directory."""
    if backend == "btrfs":
        return qgroup_referenced(path)[0]
    if backend in LOGICAL:
        return logical_bytes(path)
    return du_bytes(path)


def qgroup_referenced(path: Path) -> tuple[int, int | None]:
    """(referenced, max referenced) of the subvolume's qgroup, as `btrfs qgroup show` says."""
    subvol = subprocess.run(["btrfs", "inspect-internal", "rootid", str(path)],
                            capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["btrfs", "qgroup", "show", "-reF", "--raw", str(path)],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == f"0/{subvol}":
            return int(fields[1]), None if fields[3] == "none" else int(fields[3])
    raise AssertionError(f"no qgroup 0/{subvol} in {out}")


def settled_used(gw: Gateway, qsid: str, low: int, high: int) -> int:
    """Poll (the storage's figures are cached for up to a second) until used is in range."""
    def used_in_range() -> int | None:
        os.sync()
        used = int(gw.describe(qsid)["used_bytes"])
        return used if low <= used <= high else None

    return int(wait_for(used_in_range, 20, f"used_bytes in [{low}, {high}]"))


def steady_used(gw: Gateway, qsid: str, backend: str) -> int:
    """used_bytes once it agrees with the storage's own figure after a sync (the qgroup's
    referenced bytes on btrfs, du on vfs): a base to measure growth from."""
    def agreed() -> int | None:
        os.sync()
        truth = storage_truth(backend, gw.source / scope_hex(qsid))
        used = int(gw.describe(qsid)["used_bytes"])
        return (used,) if used == truth else None  # a tuple: an empty scope's 0 is an answer

    return int(wait_for(agreed, 20, "used_bytes to agree with the storage")[0])


def test_create_and_describe_empty_scope(backend_gw):
    """Right after creation: used <= one block (or the empty subvolume), limit as created."""
    backend, gw = backend_gw
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=10 * MiB)
    figures = gw.describe(qsid)
    assert figures["used_bytes"] <= BLOCK.get(backend, 4096)
    assert figures["limit_bytes"] == 10 * MiB


def test_usage_after_writing_8192_bytes(backend_gw):
    """The storage proxy's own expectation: 8192 <= growth <= 8192 + one block, after a sync
    (the file in a vfolder: nothing but the layout's directories lives above one)."""
    backend, gw = backend_gw
    qsid = new_qsid()
    scope_dir = gw.create_scope(qsid, limit_bytes=10 * MiB)
    vf = gw.make_vfolder(qsid)
    base = steady_used(gw, qsid, backend)
    with open(vf / "test.bin", "wb") as f:
        f.write(b"x" * 8192)
        os.fsync(f.fileno())
    slack = BLOCK.get(backend, 4096)
    used = settled_used(gw, qsid, base + 8192, base + 8192 + slack)
    xattr = int(os.getxattr(scope_dir, "user.fusegw.used_bytes"))
    assert 8192 <= xattr - base <= 8192 + slack
    if backend == "btrfs":
        referenced, limit = qgroup_referenced(gw.source / scope_hex(qsid))
        assert used == referenced or xattr == referenced
        assert limit == 10 * MiB
    else:
        assert used == storage_truth(backend, gw.source / scope_hex(qsid))


def test_update_upsert_unset_delete(backend_gw):
    """PATCH changes a limit and creates a missing scope; DELETE quota lifts it; DELETE
    removes an empty scope and refuses one that holds a vfolder."""
    backend, gw = backend_gw
    qsid = new_qsid("project")
    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 5 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 5 * MiB
    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 7 * MiB}})
    assert r.status_code == 204
    assert gw.describe(qsid)["limit_bytes"] == 7 * MiB
    if backend == "btrfs":
        assert qgroup_referenced(gw.source / scope_hex(qsid))[1] == 7 * MiB
    r = gw.request("DELETE", "/quota-scope/quota", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204
    assert gw.describe(qsid)["limit_bytes"] is None
    if backend == "btrfs":
        assert qgroup_referenced(gw.source / scope_hex(qsid))[1] is None
    vfid = f"{qsid}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 409
    assert (gw.mountpoint / scope_hex(qsid)).is_dir()
    r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
    assert not (gw.source / scope_hex(qsid)).exists()
    assert gw.request("GET", "/quota-scope",
                      {"volume": gw.volume, "qsid": qsid}).status_code == 404


def test_write_past_limit_is_edquot(enforcing_gw):
    """Writing through the gateway past the limit fails with EDQUOT; what was accepted stays
    within the limit (plus the storage's own metadata slack on btrfs)."""
    backend, gw = enforcing_gw
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=2 * MiB)
    vf = gw.make_vfolder(qsid)
    chunk = b"y" * (256 * 1024)
    written = 0
    with pytest.raises(OSError) as excinfo, open(vf / "big.bin", "wb", buffering=0) as f:
        for _ in range(64):
            written += f.write(chunk)
    assert excinfo.value.errno == errno.EDQUOT
    assert 0 < written <= 2 * MiB
    assert os.path.getsize(vf / "big.bin") == written
    if backend == "btrfs":
        # the kernel is the enforcer: the same limit refuses a write made beside the gateway
        backing = gw.source / vf.relative_to(gw.mountpoint)
        with pytest.raises(OSError) as direct, open(backing / "d.bin", "wb", buffering=0) as f:
            for _ in range(64):
                f.write(chunk)
        assert direct.value.errno == errno.EDQUOT


def test_vfolder_figures_come_from_the_ledger(backend_gw):
    """Per-vfolder usage is the gateway's ledger on every backend: du of the vfolder dir."""
    _, gw = backend_gw
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=50 * MiB)
    vfolder = gw.make_vfolder(qsid)
    (vfolder / "a").write_bytes(b"a" * 100_000)
    (vfolder / "sub").mkdir()
    (vfolder / "sub" / "b").write_bytes(b"b" * 5000)
    backing = gw.source / vfolder.relative_to(gw.mountpoint)
    os.sync()
    assert int(os.getxattr(vfolder, "user.fusegw.vfolder.used_bytes")) == du_bytes(backing)
    assert int(os.getxattr(vfolder, "user.fusegw.vfolder.used_inodes")) == 3
    vfid = os.getxattr(vfolder, "user.fusegw.vfolder").decode()
    usage = gw.request("GET", "/folder/usage", {"volume": gw.volume, "vfid": vfid}).json()
    assert usage == {"file_count": 3, "used_bytes": du_bytes(backing)}


def test_inode_limit_enforced_by_gateway(backend_gw):
    """Inode limits hold on every backend (btrfs has none: the gateway enforces them)."""
    _, gw = backend_gw
    qsid = new_qsid()
    gw.create_scope(qsid, limit_inodes=6)
    vf = gw.make_vfolder(qsid)  # two fan-out directories and the vfolder's root: 3 inodes
    for i in range(3):
        (vf / f"f{i}").touch()
    with pytest.raises(OSError) as excinfo:
        (vf / "f3").touch()
    assert excinfo.value.errno == errno.EDQUOT


def test_btrfs_backend_refuses_a_volume_that_is_not_btrfs(make_gateway):
    """`--backend btrfs` on ext4: the gateway refuses to start, saying why, and mounts nothing."""
    gw = make_gateway("notbtrfs", extra=["--backend", "btrfs"], start=False)
    proc = gw.start(check=False)
    assert proc.returncode == 1
    assert "not on btrfs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (gw.source / ".fusegw").exists()


@pytest.mark.parametrize("backend_gw", ["btrfs"], indirect=True)
def test_backend_failure_is_a_clear_error_and_changes_nothing(backend_gw):
    """When the native mechanism fails (here: the scope's subvolume was replaced by a plain
    directory beside the gateway, so `btrfs qgroup` cannot act on it), the caller gets a 502
    problem naming the failure, the limit stays as it was, and the daemon keeps serving."""
    _, gw = backend_gw
    qsid = new_qsid()
    gw.create_scope(qsid, limit_bytes=10 * MiB)
    backing = gw.source / scope_hex(qsid)
    subprocess.run(["btrfs", "subvolume", "delete", str(backing)], check=True,
                   capture_output=True)
    backing.mkdir()
    r = gw.request("PATCH", "/quota-scope",
                   {"volume": gw.volume, "qsid": qsid, "options": {"limit_bytes": 20 * MiB}})
    assert r.status_code == 502, r.text
    assert r.json()["type"].endswith("/backend/failure")
    assert "subvolume" in r.json()["detail"]
    assert gw.describe(qsid)["limit_bytes"] == 10 * MiB
    assert gw.request("GET", "/").status_code == 200


def test_folder_create_with_an_initial_size_makes_the_scope(backend_gw):
    """`folder/create` with `initial_max_size_for_quota_scope` in a scope that does not exist
    yet creates it with that limit (on the appliance too), as the manager does."""
    _, gw = backend_gw
    qsid = new_qsid("project")
    vfid = f"{qsid}/{uuid.uuid4().hex}"
    r = gw.request("POST", "/folder/create",
                   {"volume": gw.volume, "vfid": vfid,
                    "options": {"initial_max_size_for_quota_scope": 3 * MiB}})
    assert r.status_code == 204, r.text
    assert gw.describe(qsid)["limit_bytes"] == 3 * MiB
    r = gw.request("POST", "/folder/delete", {"volume": gw.volume, "vfid": vfid})
    assert r.status_code == 204, r.text
    r = gw.request("DELETE", "/quota-scope", {"volume": gw.volume, "qsid": qsid})
    assert r.status_code == 204, r.text
