"""Start-up safety: what root runs, and what users can reach beside the gateway (issue 9).

- Item 6: a background `fusegw mount` starts its daemon by absolute path in isolated mode
  (`python -I -m fusegw`) with `/` as its working directory, so nothing planted in the
  caller's working directory is ever imported by root, and the caller's relative paths are
  made absolute before the daemon starts.
- Item 10: a SOURCE that users other than root can reach directly (every directory on the
  path traversable by them) is refused in one line naming `chmod 0700` and the opt-out; the
  opt-out (`--allow-exposed-source`, `-o allow_exposed_source`, the config option) serves it
  with a warning in the log; in the recommended layout (a 0700 root-owned parent) users
  cannot open the backing files, but reach them through the mount.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, is_mounted, new_qsid, run_as

from fusegw.settings import source_exposure

NOBODY = 65534
FUSEGW = Path(sys.executable).with_name("fusegw")  # the installed console entry point
PLANTED = "import pathlib\npathlib.Path({marker!r}).write_text('planted code ran as root')\n"


def cli_mount(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`fusegw mount ARGS` (background mode) run by root with `cwd` as working directory."""
    return subprocess.run([str(FUSEGW), "mount", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def assert_one_line_refusal(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write_through(gw: Gateway) -> None:
    """A file written through the mount lands in the source."""
    vfolder = gw.make_vfolder(gw_scope(gw))
    (vfolder / "f").write_bytes(b"through the mount")
    assert (gw.source / vfolder.relative_to(gw.mountpoint) / "f").read_bytes() == \
        b"through the mount"


def gw_scope(gw: Gateway) -> str:
    qsid = new_qsid()
    gw.create_scope(qsid)
    return qsid


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[tuple[Gateway, Path]]:
    """A private volume (tmp_path is 0700), its mount point, and `caller`: an unprivileged
    user's directory (uid 65534) that root runs `fusegw mount` from. Relative paths from
    `caller` reach the others by `../`."""
    (tmp_path / "private").mkdir(mode=0o700)
    gw = Gateway(tmp_path / "private" / "vol", tmp_path / "vol.mnt", tmp_path / "vol.sock",
                 tmp_path / "vol.log", "vol")
    gw.source.mkdir()
    gw.mountpoint.mkdir()
    caller = tmp_path / "caller"
    caller.mkdir()
    os.chown(caller, NOBODY, NOBODY)
    yield gw, caller
    gw.stop()


def adopt_daemon(gw: Gateway) -> int:
    pid: int = gw.client().get("/").json()["pid"]
    gw.pid = pid
    return pid


# -- item 6: the daemon never runs code from the caller's working directory ---------------------


def test_planted_fusegw_module_in_cwd_is_never_run(layout: tuple[Gateway, Path]) -> None:
    """A `fusegw/__main__.py` (and `__init__.py`) planted by uid 65534 in the directory root
    runs `fusegw mount` from is never imported: the mount works (a file written through it
    lands in the source), the marker is never written, the daemon's cwd is `/`, and the
    relative SOURCE, MOUNTPOINT, --control-socket and --log-file were taken relative to the
    caller's cwd."""
    gw, caller = layout
    marker = caller.parent / "marker"
    planted = caller / "fusegw"
    planted.mkdir()
    for name in ("__init__.py", "__main__.py"):
        (planted / name).write_text(PLANTED.format(marker=str(marker)))
    for path in (planted, *planted.iterdir()):
        os.chown(path, NOBODY, NOBODY)

    proc = cli_mount(caller, "../private/vol", "../vol.mnt", "--control-socket", "../vol.sock",
                     "--log-file", "../vol.log", "--volume", "vol")
    assert proc.returncode == 0, proc.stderr + gw.read_log()
    pid = adopt_daemon(gw)
    assert is_mounted(gw.mountpoint)
    write_through(gw)
    assert not marker.exists(), marker.read_text()
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert gw.socket.is_socket() and gw.log.is_file()


def test_empty_fusegw_directory_in_cwd_does_not_break_the_mount(
        layout: tuple[Gateway, Path]) -> None:
    """An empty `fusegw/` directory in the caller's cwd (as `/var/log` has once a gateway has
    logged there) does not shadow the package; path-valued `-o` options (control_socket=,
    log_file=) are taken relative to the caller's cwd too."""
    gw, caller = layout
    (caller / "fusegw").mkdir()
    proc = cli_mount(caller, "../private/vol", "../vol.mnt",
                     "-o", "control_socket=../vol.sock,log_file=../vol.log")
    assert proc.returncode == 0, proc.stderr + gw.read_log()
    pid = adopt_daemon(gw)
    write_through(gw)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert gw.log.is_file()


def test_relative_config_is_the_callers_and_its_paths_the_files(
        layout: tuple[Gateway, Path]) -> None:
    """`--config ../vol.toml` (relative to the caller's cwd) whose table names SOURCE and the
    socket by paths relative to the file's directory, as the storage proxy reads its file:
    the daemon in / serves that table (its name, its socket)."""
    gw, caller = layout
    gw.volume = "cfg"
    (caller.parent / "vol.toml").write_text(
        '[volume.cfg]\npath = "private/vol"\n'
        '[volume.cfg.options]\ncontrol_socket = "vol.sock"\n')
    proc = cli_mount(caller, "../private/vol", "../vol.mnt", "--config", "../vol.toml",
                     "--log-file", "../vol.log")
    assert proc.returncode == 0, proc.stderr + gw.read_log()
    adopt_daemon(gw)
    assert [v["name"] for v in gw.request("GET", "/volumes").json()["volumes"]] == ["cfg"]
    write_through(gw)


# -- item 10: a SOURCE users can reach directly is refused unless asked -------------------------


@pytest.fixture
def public_base() -> Iterator[Path]:
    """A root-owned 0755 directory in /tmp: everything below it that is 0755 too is open to
    every user (pytest's own tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="fusegw-exposed-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    if not any(is_mounted(p) for p in base.rglob("*.mnt")):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def made() -> Iterator[list[Gateway]]:
    """Gateways a test starts, stopped in teardown."""
    gateways: list[Gateway] = []
    yield gateways
    for gw in gateways:
        gw.stop()


def gateway_at(base: Path, source: Path, made: list[Gateway], extra: list[str] | None = None
               ) -> Gateway:
    source.mkdir(parents=True, exist_ok=True)
    gw = Gateway(source, base / "vol.mnt", base / "vol.sock", base / "vol.log", "vol",
                 extra or [])
    gw.mountpoint.mkdir(exist_ok=True)
    made.append(gw)
    return gw


def test_exposed_source_refused(public_base: Path, made: list[Gateway]) -> None:
    """SOURCE /tmp/X/vol with /tmp/X 0755: exit 1, one line that names the source, the
    `chmod 0700` of its parent and the opt-out; nothing mounted, no socket."""
    gw = gateway_at(public_base, public_base / "vol", made)
    line = assert_one_line_refusal(gw.start(check=False), str(gw.source),
                                   f"chmod 0700 {public_base}", "allow_exposed_source",
                                   "mode 0755")
    assert "Traceback" not in line
    assert not is_mounted(gw.mountpoint)
    assert not gw.socket.exists()


def test_private_source_served_and_backing_closed_to_users(
        public_base: Path, made: list[Gateway]) -> None:
    """The recommended layout: /tmp/X (0755) holds the public mount point and socket,
    /tmp/X/backing (0700, root) the volume (0755). It is served; uid 65534 reads a 0644 file
    through the mount but can neither open it nor create a file on the backing side."""
    backing = public_base / "backing"
    backing.mkdir(mode=0o700)
    gw = gateway_at(public_base, backing / "vol", made)
    gw.start()
    vfolder = gw.make_vfolder(gw_scope(gw))
    (vfolder / "f").write_bytes(b"data")
    os.chmod(vfolder / "f", 0o644)
    below = gw.source / vfolder.relative_to(gw.mountpoint)

    through = run_as(NOBODY, ["cat", str(vfolder / "f")])
    assert (through.returncode, through.stdout) == (0, "data"), through.stderr
    direct = run_as(NOBODY, ["cat", str(below / "f")])
    assert direct.returncode != 0 and "Permission denied" in direct.stderr, direct
    create = run_as(NOBODY, ["sh", "-c", f"echo x > {below}/new"])
    assert create.returncode != 0 and not (below / "new").exists(), create


@pytest.mark.parametrize("how", ["flag", "option", "config"])
def test_opt_out_serves_exposed_source_with_warning(
        public_base: Path, made: list[Gateway], how: str) -> None:
    """`--allow-exposed-source`, `-o allow_exposed_source` or the config's volume option
    `allow_exposed_source = true` serves an exposed SOURCE; the log warns, naming it and the
    fix."""
    source = public_base / "vol"
    config = public_base / "fusegw.toml"
    config.write_text(f'[volume.vol]\npath = "{source}"\n'
                      "[volume.vol.options]\nallow_exposed_source = true\n")
    extra = {"flag": ["--allow-exposed-source"], "option": ["-o", "allow_exposed_source"],
             "config": ["--config", str(config)]}[how]
    gw = gateway_at(public_base, source, made, extra)
    gw.start()
    write_through(gw)
    warnings = [line for line in gw.read_log().splitlines()
                if " WARNING " in line and "allow_exposed_source" in line]
    assert len(warnings) == 1, gw.read_log()
    assert str(source) in warnings[0] and f"chmod 0700 {public_base}" in warnings[0]


def test_opt_out_set_false_in_config_still_refuses(public_base: Path, made: list[Gateway]
                                                    ) -> None:
    """`allow_exposed_source = false` in the config is no opt-out, and a value that is not a
    boolean is a one-line refusal, never read as yes."""
    source = public_base / "vol"
    config = public_base / "fusegw.toml"
    for value, words in (("false", ["chmod 0700"]), ('"no"', ["allow_exposed_source", "true"])):
        config.write_text(f'[volume.vol]\npath = "{source}"\n'
                          f"[volume.vol.options]\nallow_exposed_source = {value}\n")
        gw = gateway_at(public_base, source, made, ["--config", str(config)])
        assert_one_line_refusal(gw.start(check=False), *words)
        assert not is_mounted(gw.mountpoint)


# -- the exposure rule ---------------------------------------------------------------------------


def _dir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path.mkdir()
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("mode", "uid", "gid", "who"), [
    (0o755, 0, 0, "every user"),
    (0o711, 0, 0, "every user"),  # search without read still reaches a known path
    (0o701, 0, 0, "every user"),
    (0o750, 0, 4242, "group 4242"),
    (0o700, NOBODY, 0, "its owner"),
])
def test_exposure_rule_open_parent(public_base: Path, mode: int, uid: int, gid: int,
                                   who: str) -> None:
    """A parent that lets anyone but root search it leaves the 0755 volume exposed; the
    reason names that parent, its mode and who gets in."""
    parent = _dir(public_base / "parent", mode, uid, gid)
    exposure = source_exposure(_dir(parent / "vol", 0o755))
    assert exposure is not None
    assert str(parent) in exposure.why and f"mode {mode:04o}" in exposure.why
    assert who in exposure.why
    assert str(parent) in exposure.fix


@pytest.mark.parametrize(("mode", "gid"), [(0o700, 0), (0o750, 0), (0o740, 4242),
                                            (0o600, 0)])
def test_exposure_rule_private_parent(public_base: Path, mode: int, gid: int) -> None:
    """A root-owned parent that grants search to neither others nor a non-root group keeps
    the volume private (root's own group may search it)."""
    parent = _dir(public_base / "parent", mode, 0, gid)
    assert source_exposure(_dir(parent / "vol", 0o755)) is None


def test_exposure_rule_counts_the_source_itself_and_resolves_links(public_base: Path) -> None:
    """The walk includes SOURCE (a 0700 volume is private) and follows symlinks: a link in a
    public place to a private volume is private, a link in a private place to a public
    volume is exposed, and the reason names the real path."""
    assert source_exposure(_dir(public_base / "closed", 0o700)) is None
    private = _dir(public_base / "private", 0o700)
    open_vol = _dir(_dir(public_base / "public", 0o755) / "vol", 0o755)
    inside = _dir(private / "vol", 0o755)
    (public_base / "to-private").symlink_to(inside)
    (private / "to-public").symlink_to(open_vol)
    assert source_exposure(public_base / "to-private") is None
    exposure = source_exposure(private / "to-public")
    assert exposure is not None and str(open_vol) in exposure.why


def _set_acl_user_search(path: Path, uid: int) -> None:
    """system.posix_acl_access granting `uid` search, mask x (what `setfacl -m u:UID:x`
    writes): header version 2, then (tag, perm, id) entries in tag order."""
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 1, uid), (0x04, 0, 0xFFFFFFFF),
               (0x10, 1, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", value)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            pytest.skip(f"no POSIX ACLs on {path}")
        raise


def test_exposure_rule_sees_acl_entries(public_base: Path) -> None:
    """A root:root parent whose ACL grants one user search (mode shows 0710: the mask) lets
    that user in: exposed."""
    parent = _dir(public_base / "parent", 0o700)
    _set_acl_user_search(parent, NOBODY)
    exposure = source_exposure(_dir(parent / "vol", 0o755))
    assert exposure is not None and "ACL" in exposure.why
