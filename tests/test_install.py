"""`make install` as the system sees it: links on the default PATH, units systemd accepts, and
`mount -t fuse.fusegw` / an fstab line working from an empty environment (`env -i`).

The mount tests need the real install (`make test` runs `make install` first); the install and
uninstall tests put everything into temporary directories instead of the system's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import Gateway, is_mounted, new_qsid, private_source, vfolder_rel, wait_for

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
SBINDIR = Path("/usr/local/sbin")
UNITDIR = Path("/usr/local/lib/systemd/system")
TMPFILESDIR = Path("/usr/local/lib/tmpfiles.d")
PROGRAMS = ("fusegw", "fusegw-mountd")
UNITS = ("fusegw-mountd.service", "fusegw@.service")


def run(argv: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


@pytest.fixture(scope="module")
def installed() -> None:
    """The real install is there (these tests show what it gives, they do not make it)."""
    for p in PROGRAMS:
        assert (SBINDIR / p).resolve() == (VENV_BIN / p).resolve(), "run `make install` first"


# --- what the real install gives ------------------------------------------------------------

def test_env_i_sh_finds_fusegw_and_fusegw_mountd_in_usr_local_sbin(installed: None) -> None:
    # mount.fuse3 runs the helper through /bin/sh with no PATH: sh's own default must find it.
    for p in PROGRAMS:
        found = run(["/usr/bin/env", "-i", "/bin/sh", "-c", f"command -v {p}"])
        assert found.stdout.strip() == str(SBINDIR / p), found


@pytest.mark.parametrize("unit", [*UNITS, "fusegw@local.service"])
def test_installed_unit_passes_systemd_analyze_verify(installed: None, unit: str) -> None:
    # An instance name (fusegw@local) is verified through the installed template.
    verify = run(["systemd-analyze", "verify", str(UNITDIR / unit)], cwd="/")
    # Parse errors are warnings with status 0: any line naming our units is a failure too.
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines()
                  if "fusegw" in line]
    assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr


def test_installed_tmpfiles_conf_makes_run_fusegw_root_0755(installed: None,
                                                            tmp_path: Path) -> None:
    conf = TMPFILESDIR / "fusegw.conf"
    listed = run(["systemd-tmpfiles", "--cat-config"])
    assert f"# {conf}" in listed.stdout, "systemd-tmpfiles does not read " + str(conf)
    made = run(["systemd-tmpfiles", "--create", f"--root={tmp_path}", str(conf)])
    assert made.returncode == 0, made.stderr
    st = (tmp_path / "run" / "fusegw").stat()
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o755", 0, 0)


# --- mount(8) from an empty environment -----------------------------------------------------

def daemons_serving(mountpoint: Path) -> list[psutil.Process]:
    """Gateway processes whose command line names `mountpoint` (found without the socket)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if str(mountpoint) in cmdline and "fusegw" in " ".join(cmdline):
            found.append(proc)
    return found


def stop_whatever_serves(mountpoint: Path) -> None:
    """Teardown, also after a failure: unmount (the daemon then exits), kill what stays."""
    for _ in range(2):
        if is_mounted(mountpoint):
            run(["fusermount3", "-u", "-z", str(mountpoint)])
        if is_mounted(mountpoint):
            run(["umount", "-l", str(mountpoint)])
    procs = daemons_serving(mountpoint)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()


@pytest.fixture
def volume(public_dir: Path) -> Iterator[Gateway]:
    """A fresh volume below a 0700 parent, its mount point, socket and log; not started."""
    name = "inst" + uuid.uuid4().hex[:8]
    source = private_source(public_dir, name)
    mnt = public_dir / f"{name}.mnt"
    mnt.mkdir()
    gw = Gateway(source, mnt, public_dir / f"{name}.sock", public_dir / f"{name}.log", name)
    try:
        yield gw
    finally:
        stop_whatever_serves(mnt)


def mount_options(gw: Gateway) -> str:
    return (f"backend=vfs,volume={gw.volume},control_socket={gw.socket},"
            f"log_file={gw.log}")


def serves_then_umount_stops_it(gw: Gateway) -> None:
    """The mount is a working gateway: GET / over its socket names it, a file written through
    it is on the backing side; `umount` (from an empty environment too) stops the daemon."""
    assert is_mounted(gw.mountpoint)
    status = gw.request("GET", "/")
    assert status.status_code == 200, status.text
    body = status.json()
    assert (body["volume"], body["mountpoint"]) == (gw.volume, str(gw.mountpoint))
    gw.pid = int(body["pid"])

    qsid = new_qsid()
    gw.create_scope(qsid)
    fid = uuid.uuid4().hex
    (gw.make_vfolder(qsid, fid) / "hello").write_bytes(b"through the mount\n")
    assert (gw.source / vfolder_rel(qsid, fid) / "hello").read_bytes() == b"through the mount\n"

    done = run(["/usr/bin/env", "-i", "/usr/bin/umount", str(gw.mountpoint)])
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not gw.alive(), what="the gateway to exit after umount")
    assert not is_mounted(gw.mountpoint)
    assert "unmounted" in gw.read_log()


def test_env_i_mount_t_fuse_fusegw_serves_and_umount_stops_it(installed: None,
                                                              volume: Gateway) -> None:
    gw = volume
    mounted = run(["/usr/bin/env", "-i", "/usr/bin/mount", "-t", "fuse.fusegw",
                   str(gw.source), str(gw.mountpoint), "-o", mount_options(gw)])
    assert mounted.returncode == 0, mounted.stdout + mounted.stderr + gw.read_log()
    serves_then_umount_stops_it(gw)


def test_env_i_mount_fstab_line_of_type_fuse_fusegw_serves_and_umount_stops_it(
        installed: None, volume: Gateway, tmp_path: Path) -> None:
    gw = volume
    fstab = tmp_path / "fstab"
    # The options an operator writes in /etc/fstab: mount(8) and mount.fuse3 add and drop
    # some of their own (rw, dev, suid, nofail, _netdev, x-systemd.*) before fusegw sees them.
    fstab.write_text(f"{gw.source} {gw.mountpoint} fuse.fusegw "
                     f"defaults,nofail,_netdev,x-systemd.requires=local-fs.target,"
                     f"{mount_options(gw)} 0 0\n")
    mounted = run(["/usr/bin/env", "-i", "/usr/bin/mount", "--fstab", str(fstab),
                   str(gw.mountpoint)])
    assert mounted.returncode == 0, mounted.stdout + mounted.stderr + gw.read_log()
    serves_then_umount_stops_it(gw)


def test_env_i_mount_fstab_line_with_clear_dead_remounts_after_kill_9(
        installed: None, volume: Gateway, tmp_path: Path) -> None:
    # Without a supervisor, the operator's `mount MNT` is the recovery: clear_dead in the
    # fstab line lets it replace the dead mount a killed gateway leaves.
    gw = volume
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{gw.source} {gw.mountpoint} fuse.fusegw "
                     f"nofail,clear_dead,{mount_options(gw)} 0 0\n")
    argv = ["/usr/bin/env", "-i", "/usr/bin/mount", "--fstab", str(fstab), str(gw.mountpoint)]
    assert run(argv).returncode == 0, gw.read_log()
    first = psutil.Process(int(gw.request("GET", "/").json()["pid"]))
    first.kill()
    first.wait(timeout=15)
    again = run(argv)
    assert again.returncode == 0, again.stdout + again.stderr + gw.read_log()
    assert "cleared the dead FUSE mount" in again.stdout + again.stderr
    assert gw.request("GET", "/").json()["pid"] != first.pid
    serves_then_umount_stops_it(gw)


# --- make install / make uninstall into temporary directories --------------------------------

def make(target: str, root: Path) -> subprocess.CompletedProcess[str]:
    done = run(["make", "--no-print-directory", "-C", str(REPO), target,
                f"SBINDIR={root}/sbin", f"UNITDIR={root}/units",
                f"TMPFILESDIR={root}/tmpfiles.d"])
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def contents(root: Path) -> dict[str, str]:
    """Every entry below root and what it says: link target, text, or <dir>."""
    return {str(path.relative_to(root)): os.readlink(path) if path.is_symlink() else
            path.read_text() if path.is_file() else "<dir>" for path in root.rglob("*")}


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry's inode, mtime and ctime, so that any rewrite, even of identical content
    or of a link to the same target, shows."""
    return {str(path.relative_to(root)): (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
            for path in root.rglob("*") for st in [path.lstat()]}


@pytest.fixture
def system_root(tmp_path: Path) -> Path:
    """Stand-ins for /usr/local/sbin and the unit dirs, each holding a file not ours."""
    for d in ("sbin", "units", "tmpfiles.d"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "not-fusegw").write_text("someone else's\n")
    return tmp_path


def test_make_install_links_programs_and_installs_units_naming_that_sbindir(
        system_root: Path) -> None:
    make("install", system_root)
    for p in PROGRAMS:
        assert os.readlink(system_root / "sbin" / p) == str(VENV_BIN / p)
    mountd = (system_root / "units" / "fusegw-mountd.service").read_text()
    assert f"ExecStart={system_root}/sbin/fusegw-mountd --config /etc/fusegw/fusegw.toml" in mountd
    template = (system_root / "units" / "fusegw@.service").read_text()
    assert f"ExecStart={system_root}/sbin/fusegw mount --foreground --clear-dead" in template
    assert (system_root / "tmpfiles.d" / "fusegw.conf").read_text() == \
        (REPO / "systemd" / "fusegw.tmpfiles").read_text()
    # The ExecStart binaries exist where the units say: systemd accepts them there too.
    for unit in UNITS:
        verify = run(["systemd-analyze", "verify", str(system_root / "units" / unit)], cwd="/")
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_second_make_install_changes_nothing(system_root: Path) -> None:
    make("install", system_root)
    before = snapshot(system_root), contents(system_root)
    again = make("install", system_root)
    assert (snapshot(system_root), contents(system_root)) == before
    assert "linked" not in again.stdout and "installed" not in again.stdout, again.stdout


def test_make_uninstall_removes_exactly_what_install_added(system_root: Path) -> None:
    before = contents(system_root)
    make("install", system_root)
    assert len(contents(system_root)) == len(before) + 5  # 2 links, 2 units, 1 tmpfiles.d
    make("uninstall", system_root)
    assert contents(system_root) == before  # the directories and others' files stay
    make("uninstall", system_root)  # nothing left to remove is no error
    assert contents(system_root) == before


def test_make_uninstall_keeps_a_unit_the_operator_changed(system_root: Path) -> None:
    make("install", system_root)
    unit = system_root / "units" / "fusegw@.service"
    unit.write_text(unit.read_text() + "# the operator's\n")
    done = make("uninstall", system_root)
    assert unit.exists() and "left as it is" in done.stderr
    assert not (system_root / "units" / "fusegw-mountd.service").exists()
    unit.unlink()


def test_make_install_replaces_a_link_to_another_tree_and_uninstall_spares_one(
        system_root: Path) -> None:
    # The checkout installed last owns the links; uninstalling another one leaves them.
    other = system_root / "other-checkout-fusegw"
    shutil.copy(VENV_BIN / "fusegw", other)
    link = system_root / "sbin" / "fusegw"
    link.symlink_to(other)
    make("install", system_root)
    assert os.readlink(link) == str(VENV_BIN / "fusegw")
    link.unlink()
    link.symlink_to(other)  # the other checkout installs again
    make("uninstall", system_root)
    assert os.readlink(link) == str(other)
