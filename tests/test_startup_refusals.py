"""Start-up refusals are one line naming the fix (issue 10, item 7).

Each mistake an operator makes when starting a gateway ends in exit status 1 and exactly one
line on stderr that names the fix, never a traceback, and leaves nothing mounted or written
(no version.txt or .fusegw/ in the source, no control socket, no log). The dead mount a
killed gateway leaves is named at once, not after the kernel's cached attributes expire, and
`--clear-dead` (or `-o clear_dead`) mounts over it. The shared ledger's options (issue 13)
are refused the same way: a missing or bad redis_url, a Redis that does not answer within
redis_wait, or one that refuses the gateway.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Gateway, free_port, is_mounted, wait_for
from redis_fixture import RedisServer, redis_server, stop

from fusegw.settings import MountSettings, preflight

__all__ = ["redis_server"]

MakeGateway = Callable[..., Gateway]


def assert_refused(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 1, one line on stderr holding every word, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_nothing_done(gw: Gateway) -> None:
    """Not mounted, nothing written: no socket, no log, the source as it was."""
    assert not is_mounted(gw.mountpoint)
    assert not gw.socket.exists()
    assert not gw.log.exists()
    assert not (gw.source / "version.txt").exists()
    assert not (gw.source / ".fusegw").exists()


def serving(gw: Gateway) -> bool:
    return is_mounted(gw.mountpoint) and gw.request("GET", "/").status_code == 200


def missing_group() -> str:
    name = f"fusegw-nogroup-{uuid.uuid4().hex[:6]}"
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    return name


# -- each mistake, one line ---------------------------------------------------------------------


def test_missing_admin_group_names_groupadd(make_gateway: MakeGateway) -> None:
    """`--admin-group NAME` of a group that does not exist (the example config's
    `fusegw-admin`, which nobody creates): the refusal says `groupadd NAME`; before, the
    daemon died with a KeyError traceback in its log."""
    group = missing_group()
    gw = make_gateway("nogroup", extra=["--admin-group", group], start=False)
    assert_refused(gw.start(check=False), f"admin group {group!r} does not exist",
                   f"groupadd {group}")
    assert_nothing_done(gw)


def test_unknown_backend_names_the_known_ones(make_gateway: MakeGateway) -> None:
    gw = make_gateway("bogusbackend", extra=["--backend", "bogus"], start=False)
    assert_refused(gw.start(check=False), "unknown backend 'bogus'", "btrfs", "cephfs", "vfs",
                   "xfs")
    assert_nothing_done(gw)


def test_unknown_log_level_names_the_levels(make_gateway: MakeGateway) -> None:
    gw = make_gateway("boguslevel", extra=["--log-level", "bogus"], start=False)
    assert_refused(gw.start(check=False), "unknown log level 'bogus'", "DEBUG", "INFO",
                   "WARNING")
    assert_nothing_done(gw)


@pytest.mark.parametrize("option", ["bogus", "allow_root", "fsname=other", "subtype=other",
                                    "max_read=131072"])
def test_unknown_mount_option_names_it_and_what_passes(make_gateway: MakeGateway,
                                                       option: str) -> None:
    """An -o option that is neither fusegw's nor one of the FUSE options it passes on
    (including libfuse's own that fusegw keeps for itself: fsname=, subtype=, allow_root;
    and max_read=, which pyfuse3's init cannot match) is refused naming it; before, libfuse
    failed after the daemon started."""
    gw = make_gateway("bogusopt", extra=["-o", f"backend=vfs,{option}"], start=False)
    assert_refused(gw.start(check=False), f"unknown mount option {option}", "noexec",
                   "context=CONTEXT", "backend")
    assert_nothing_done(gw)


def test_fstab_and_fuse_options_pass_or_are_dropped(make_gateway: MakeGateway) -> None:
    """FUSE options fusegw passes on reach the mount (ro, noexec, noatime); fstab's own
    (x-systemd.*, comment=, nofail, defaults) are dropped instead of handed to libfuse,
    which refused them; `suid` and `dev` (which mount.fuse3 adds) are dropped: the mount
    stays nosuid,nodev."""
    gw = make_gateway("fstabopts", extra=[
        "-o", "defaults,nofail,_netdev,x-systemd.automount,comment=fusegw,suid,dev,ro,"
        "noexec,noatime"])
    with open("/proc/self/mountinfo") as f:
        line = next(x for x in f if x.split()[4] == str(gw.mountpoint))
    flags = set(line.split()[5].split(","))
    assert {"ro", "noexec", "noatime", "nosuid", "nodev"} <= flags, line
    assert serving(gw)


def test_config_volume_missing_names_the_files_volumes(make_gateway: MakeGateway,
                                                       tmp_path: Path) -> None:
    """`--config FILE --volume NAME` where FILE has no [volume.NAME]: one line naming the
    volumes it has (before: "SOURCE and MOUNTPOINT are needed")."""
    gw = make_gateway("cfgmissing", start=False)
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
    config = tmp_path / "node.toml"
    config.write_text('[volume.alpha]\npath = "alpha"\n[volume.beta]\npath = "beta"\n')
    proc = subprocess.run([sys.executable, "-m", "fusegw", "mount", "--config", str(config),
                           "--volume", "nope", "--log-file", str(gw.log)],
                          capture_output=True, text=True, timeout=60)
    assert_refused(proc, str(config), "no [volume.nope]", "alpha, beta")
    assert_nothing_done(gw)


# -- directories that are not the gateway's to take -------------------------------------------


def test_nonempty_mountpoint_refused_naming_the_option(make_gateway: MakeGateway) -> None:
    """Mounting over files would hide them: refused, naming -o allow_nonempty_mountpoint;
    the files stay."""
    gw = make_gateway("nonemptymnt", start=False)
    (gw.mountpoint / "hidden-by-a-mount").write_text("data")
    assert_refused(gw.start(check=False), str(gw.mountpoint), "not empty",
                   "hidden-by-a-mount", "-o allow_nonempty_mountpoint",
                   "--allow-nonempty-mountpoint")
    assert_nothing_done(gw)
    assert (gw.mountpoint / "hidden-by-a-mount").read_text() == "data"


@pytest.mark.parametrize("how", [["--allow-nonempty-mountpoint"],
                                 ["-o", "allow_nonempty_mountpoint"], ["-o", "nonempty"]])
def test_nonempty_mountpoint_mounted_when_asked(make_gateway: MakeGateway,
                                                how: list[str]) -> None:
    """The flag, the option, or libfuse 2's `nonempty` mount over files; once unmounted
    they are there again."""
    gw = make_gateway("nonemptyok", extra=how, start=False)
    (gw.mountpoint / "below").write_text("data")
    gw.start()
    assert serving(gw)
    assert not (gw.mountpoint / "below").exists()
    gw.stop()
    assert (gw.mountpoint / "below").read_text() == "data"


def test_nonempty_directory_not_adopted_as_new_volume(make_gateway: MakeGateway) -> None:
    """A non-empty SOURCE with neither version.txt nor .fusegw/ is somebody's data, not a
    volume: refused naming -o adopt_nonempty, nothing written into it. A directory holding
    only lost+found (a fresh filesystem's root) is an empty new volume and is served."""
    gw = make_gateway("adopt", start=False)
    (gw.source / "someones-data").write_text("data")
    assert_refused(gw.start(check=False), str(gw.source), "not empty", "someones-data",
                   "version.txt", ".fusegw", "-o adopt_nonempty", "--adopt-nonempty")
    assert_nothing_done(gw)
    assert sorted(os.listdir(gw.source)) == ["someones-data"]

    (gw.source / "someones-data").unlink()
    (gw.source / "lost+found").mkdir()
    gw.start()
    assert serving(gw)
    assert (gw.source / "version.txt").read_text().strip() == "3"


@pytest.mark.parametrize("how", [["--adopt-nonempty"], ["-o", "adopt_nonempty"]])
def test_nonempty_directory_adopted_when_asked(make_gateway: MakeGateway,
                                               how: list[str]) -> None:
    gw = make_gateway("adoptok", extra=how, start=False)
    (gw.source / "someones-data").write_text("data")
    gw.start()
    assert serving(gw)
    assert (gw.source / "version.txt").read_text().strip() == "3"
    assert (gw.source / "someones-data").read_text() == "data"


def test_existing_volume_served_again_without_options(make_gateway: MakeGateway) -> None:
    """A volume the gateway made (version.txt, .fusegw/, scopes) is no stranger's data: a
    restart needs no option, even with files in it (and so does a fresh one after a
    `-o adopt_nonempty` start)."""
    gw = make_gateway("again", extra=["-o", "adopt_nonempty"], start=False)
    (gw.source / "someones-data").write_text("data")
    gw.start()
    gw.stop()
    gw.extra = []
    gw.start()
    assert serving(gw)


# -- the dead mount of a killed gateway ---------------------------------------------------------


@pytest.fixture
def dead_mount(make_gateway: MakeGateway) -> Iterator[Gateway]:
    """A gateway killed with SIGKILL whose dead FUSE mount stays at its mount point, right
    after the kill; the mount is cleared in teardown whatever the test did."""
    gw = make_gateway("dead")
    os.stat(gw.mountpoint)  # the kernel now holds the root's attributes (60 s on vfs)
    gw.kill9_leaving_dead_mount()
    try:
        yield gw
    finally:
        gw.stop()  # clears a mount still there (fusermount3 -u -z, else umount -l)
        assert not is_mounted(gw.mountpoint)


def test_dead_mount_named_at_once_after_kill9(dead_mount: Gateway) -> None:
    """Right after kill -9, while stat of the mount point still answers from the kernel's
    cache (so it looked "busy" for a minute before), the refusal says "dead FUSE mount" and
    names `fusermount3 -u -z MOUNTPOINT` and --clear-dead: statfs, which the kernel never
    caches, answers ENOTCONN at once."""
    gw = dead_mount
    assert is_mounted(gw.mountpoint)
    os.stat(gw.mountpoint)  # still answered from the cache: no way to tell by stat
    with pytest.raises(OSError):
        os.statvfs(gw.mountpoint)
    assert_refused(gw.start(check=False), "dead FUSE mount", str(gw.mountpoint),
                   f"fusermount3 -u -z {gw.mountpoint}", "--clear-dead")
    assert is_mounted(gw.mountpoint)  # refused: left as it was


@pytest.mark.parametrize("how", [["--clear-dead"], ["-o", "clear_dead"]])
def test_clear_dead_mounts_over_the_dead_mount(dead_mount: Gateway, how: list[str]) -> None:
    """--clear-dead (or -o clear_dead, as systemd's unit and mountd use it) lazily unmounts
    the dead fusegw mount and mounts: a new gateway serves the volume."""
    gw = dead_mount
    gw.extra = how
    gw.start()
    assert serving(gw)
    with open("/proc/self/mountinfo") as f:
        assert sum(line.split()[4] == str(gw.mountpoint) for line in f) == 1
    assert (gw.mountpoint / "version.txt").read_text().strip() == "3"


def test_clear_dead_leaves_a_live_mount_alone(make_gateway: MakeGateway) -> None:
    """--clear-dead over a live gateway's mount: busy, and the live gateway goes on."""
    first = make_gateway("live")
    second = make_gateway("intruder", extra=["--clear-dead"], start=False)
    own = second.mountpoint
    second.mountpoint = first.mountpoint
    try:
        assert_refused(second.start(check=False), "busy", str(first.mountpoint))
    finally:
        second.mountpoint = own
    wait_for(lambda: serving(first), what="the first gateway still serving")


# -- the shared ledger's Redis (issue 13) ------------------------------------------------------

PASSWORD = "hunter2-not-shown"


@pytest.mark.parametrize("options, words", [
    ("ledger=redis", ["-o ledger=redis needs redis_url=redis://HOST:PORT/DB",
                      "redis+sentinel://"]),
    ("redis_url=redis://127.0.0.1:6379/0", ["redis_url is only read with ledger=redis",
                                            "-o ledger=redis"]),
    (f"ledger=redis,redis_url=http://:{PASSWORD}@127.0.0.1:6379",
     ["shared ledger: redis_url 'http://:***@127.0.0.1:6379'", "the scheme must be"]),
    ("ledger=redis,redis_url=redis+sentinel://127.0.0.1:26379;127.0.0.1:26380/svc/zero",
     ["shared ledger: redis_url", "the database 'zero' is not a number"]),
    ("ledger=etcd", ["-o ledger:", "'local' or 'redis'"]),
    ("grant_min_bytes=1k", ["-o grant_min_bytes:", "4096"]),
    ("node_id=no spaces", ["-o node_id:", "1 to 200 characters"]),
])
def test_shared_ledger_mistakes_named_in_one_line(make_gateway: MakeGateway, options: str,
                                                  words: list[str]) -> None:
    """A shared ledger without its Redis, a URL with the local ledger (unread: surely not what
    was meant), a URL that names no Redis, a bad value: one line naming the fix, no password."""
    gw = make_gateway("ledgeropts", extra=["-o", options], start=False)
    line = assert_refused(gw.start(check=False), *words)
    assert PASSWORD not in line
    assert_nothing_done(gw)


def test_redis_that_does_not_answer_refused_in_one_line(make_gateway: MakeGateway) -> None:
    """Nothing listens at redis_url (redis_wait=0: one try): the refusal names the address,
    not the password, and says to start Redis or fix the URL."""
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    gw = make_gateway("noredis", extra=["-o", f"ledger=redis,redis_url={url},redis_wait=0"],
                      start=False)
    began = time.monotonic()
    line = assert_refused(gw.start(check=False),
                          f"shared ledger: Redis at redis://:***@127.0.0.1:{port}/0 does not "
                          "answer (", "Connection refused", "): start it, or fix redis_url")
    assert time.monotonic() - began < 10
    assert PASSWORD not in line
    assert_nothing_done(gw)


def test_fstab_line_with_a_silent_redis_refused_in_one_line(make_gateway: MakeGateway) -> None:
    """As mount.fuse3 runs an fstab line: `fusegw SOURCE MOUNTPOINT -o OPTIONS`, fstab's own
    options among them, a Sentinel list written with `;`; redis_wait=1 is waited out."""
    gw = make_gateway("fstabredis", start=False)
    sentinels = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    options = (f"rw,nosuid,nodev,_netdev,nofail,ledger=redis,redis_url=redis+sentinel://"
               f"{sentinels}/fusegw,redis_wait=1,control_socket={gw.socket},log_file={gw.log}")
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fusegw", str(gw.source), str(gw.mountpoint),
                           "-o", options], capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - began
    assert_refused(proc, f"Redis at redis+sentinel://{sentinels}/fusegw does not answer",
                   "start it, or fix redis_url")
    assert 1 <= waited < 10, waited
    assert_nothing_done(gw)


def test_redis_that_refuses_the_gateway_is_not_waited_for(make_gateway: MakeGateway,
                                                          redis_server: RedisServer) -> None:
    """A real Redis that answers with an error (a database it does not have) is refused at
    once, whatever redis_wait says: waiting cannot fix the URL."""
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    gw = make_gateway("baddb", extra=["-o", f"ledger=redis,redis_url={url},redis_wait=30"],
                      start=False)
    began = time.monotonic()
    assert_refused(gw.start(check=False), f"shared ledger: Redis at {url} refuses the gateway",
                   "DB index is out of range", "fix redis_url")
    assert time.monotonic() - began < 10
    assert_nothing_done(gw)


def test_start_waits_for_a_redis_coming_up(tmp_path: Path) -> None:
    """A node booting beside its Redis: the checks wait up to redis_wait for it to answer,
    and pass once it does (a real redis-server, started a second into the wait)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make install` installs the Debian package"
    source, mountpoint = tmp_path / "vol", tmp_path / "vol.mnt"
    source.mkdir()
    mountpoint.mkdir()
    port = free_port()
    started: list[RedisServer] = []

    def start() -> None:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save",
                                 "", "--appendonly", "no", "--dir", str(tmp_path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(RedisServer(port, proc))

    timer = threading.Timer(1.0, start)
    began = time.monotonic()
    timer.start()
    try:
        preflight(MountSettings(source, mountpoint, ledger="redis", redis_wait=20.0,
                                redis_url=f"redis://127.0.0.1:{port}/0"))
        assert 1 <= time.monotonic() - began < 20
    finally:
        timer.cancel()
        timer.join()
        for server in started:
            stop(server)
    assert started
