"""The `xfs` backend: for real on a loop-mounted XFS image where the kernel has XFS quota
support, and everywhere through the exact `xfs_quota` commands it issues (a recording fake of
`self.run` with canned output), the projid/projects files it keeps, and the parsing of
`xfs_quota report` text.

The report samples below are in the exact format xfsprogs prints for `report -p -b -i` without
`-h`: quota/report.c, report_header() for the four header lines and report_mount() for a row
("#%-10u" identifier with -n, "%-10s" name without; per form " %10llu %10llu %10llu     %02d
%9s" = used/soft/hard in KiB (basic blocks >> 1) or inodes, warnings, grace), grace strings
from quota/util.c time_to_string(), and the blank line report_project_mount() ends with when
it printed rows. `test_samples_match_the_xfsprogs_format_strings` rebuilds them from those
format strings, so a typo in a sample cannot pass unnoticed.

Skipped here: the real quota run needs a kernel with CONFIG_XFS_QUOTA; this test says so in
its skip reason when the `-o prjquota` mount of the loop image fails.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import backends.xfs as xfs_mod
from backends.base import COMMAND_TIMEOUT, BackendError, QuotaLimits, QuotaUsage
from backends.xfs import (
    DEFAULT_LOCK_FILE,
    SETUP_TIMEOUT,
    MountEntry,
    ReportRow,
    XFSBackend,
    find_mount,
    parse_mountinfo,
    parse_report,
    usage_from_row,
)

MiB = 2**20
MOUNTPOINT = "/srv/xfs"

# -- report samples (format: see the module docstring) -----------------------------------------

# `xfs_quota -x -c 'report -p -b -i -n -N -L 1000 -U 1000' /srv/xfs`: project 1000 uses 3 MiB
# of 4 MiB and 5 inodes (the scope directory and 4 entries) of 9.
REPORT_ONE = (
    "#1000             3072       4096       4096     00 [--------]"
    "          5          9          9     00 [--------]\n"
    "\n"
)

# `report -p -b -i -n -N` over several projects: one over its soft limit with the grace timer
# running, one past its hard limit (limits lowered below the usage), one with under a day of
# grace left, and the default project 0.
REPORT_MANY = (
    "#0                   0          0          0     00 [--------]"
    "          3          0          0     00 [--------]\n"
    "#1000             5120       4096       8192     00  [6 days]"
    "         12         10         20     00   [1 day]\n"
    "#1001            10240       4096       4096     00 [--none--]"
    "          2          0          0     00 [--------]\n"
    "#1002               16          8       1024     00 [05:12:33]"
    "          1          0          0     00 [--------]\n"
    "\n"
)

# `report -p -b -i` (names looked up from /etc/projid, header printed): a 32-character scope
# name overflows the %-10s column, which the parser must not mind.
REPORT_HEADER = (
    "Project quota on /srv/xfs (/dev/loop0)\n"
    "                               Blocks                      "
    "                    Inodes                     \n"
    "Project ID       Used       Soft       Hard    Warn/Grace     "
    "      Used       Soft       Hard    Warn/ Grace     \n"
    "---------- -------------------------------------------------- "
    "-------------------------------------------------- \n"
    "#0                  0          0          0     00 [--------]"
    "          3          0          0     00 [--------]\n"
    "0123456789abcdef0123456789abcdef        512      10240      10240     00 [--------]"
    "          2         11         11     00 [--------]\n"
    "logs             2048          0          0     00 [--------]"
    "          7          0          0     00 [--------]\n"
    "\n"
)


def printf(fmt: str, *args: Any) -> str:
    """C's printf, for rebuilding xfs_quota output from its format strings."""
    return fmt % args


def c_row(ident: str, blocks: tuple[int, int, int, int, str],
          inodes: tuple[int, int, int, int, str]) -> str:
    """A row as report_mount() prints it (non-human), from its C format strings."""
    form = " %10llu %10llu %10llu     %02d %9s".replace("llu", "u")
    return ident + printf(form, *blocks) + printf(form, *inodes) + "\n"


def test_samples_match_the_xfsprogs_format_strings() -> None:
    def num(i: int) -> str:
        return printf("#%-10u", i)  # NO_LOOKUP_FLAG

    one = c_row(num(1000), (3072, 4096, 4096, 0, "[--------]"), (5, 9, 9, 0, "[--------]"))
    assert one + "\n" == REPORT_ONE
    many = "".join([
        c_row(num(0), (0, 0, 0, 0, "[--------]"), (3, 0, 0, 0, "[--------]")),
        c_row(num(1000), (5120, 4096, 8192, 0, "[6 days]"), (12, 10, 20, 0, "[1 day]")),
        c_row(num(1001), (10240, 4096, 4096, 0, "[--none--]"), (2, 0, 0, 0, "[--------]")),
        c_row(num(1002), (16, 8, 1024, 0, "[05:12:33]"), (1, 0, 0, 0, "[--------]")),
    ])
    assert many + "\n" == REPORT_MANY
    header = (
        "Project quota on /srv/xfs (/dev/loop0)\n"
        + " " * 10 + printf("%20c %s %20c", " ", "Blocks", " ")
        + printf("%20c %s %20c", " ", "Inodes", " ") + "\n"
        + printf("%-10s ", "Project ID")
        + "      Used       Soft       Hard    Warn/Grace     "
        + "      Used       Soft       Hard    Warn/ Grace     \n"
        + "-" * 10 + " " + "-" * 50 + " " + "-" * 50 + " \n"
    )
    rows = "".join([
        c_row(printf("#%-9u", 0), (0, 0, 0, 0, "[--------]"), (3, 0, 0, 0, "[--------]")),
        c_row(printf("%-10s", "0123456789abcdef" * 2), (512, 10240, 10240, 0, "[--------]"),
              (2, 11, 11, 0, "[--------]")),
        c_row(printf("%-10s", "logs"), (2048, 0, 0, 0, "[--------]"),
              (7, 0, 0, 0, "[--------]")),
    ])
    assert header + rows + "\n" == REPORT_HEADER


def test_parse_report_rows() -> None:
    assert parse_report(REPORT_ONE) == {"#1000": ReportRow("#1000", 3072, 4096, 4096, 5, 9, 9)}
    rows = parse_report(REPORT_MANY)
    assert sorted(rows) == ["#0", "#1000", "#1001", "#1002"]
    assert rows["#1000"] == ReportRow("#1000", 5120, 4096, 8192, 12, 10, 20)
    assert rows["#1001"] == ReportRow("#1001", 10240, 4096, 4096, 2, 0, 0)
    assert rows["#1002"] == ReportRow("#1002", 16, 8, 1024, 1, 0, 0)
    rows = parse_report(REPORT_HEADER)  # header lines are skipped
    assert sorted(rows) == ["#0", "0123456789abcdef0123456789abcdef", "logs"]
    assert rows["logs"] == ReportRow("logs", 2048, 0, 0, 7, 0, 0)
    assert parse_report("") == {}
    assert parse_report("XFS_GETQUOTA: Function not implemented\n") == {}


def test_usage_from_row_translates_units_and_the_scope_inode() -> None:
    # KiB -> bytes; the scope directory itself is not one of the scope's inodes
    assert usage_from_row(parse_report(REPORT_ONE)["#1000"]) == QuotaUsage(
        used_bytes=3 * MiB, limit_bytes=4 * MiB, used_inodes=4, limit_inodes=8)
    # hard limits of 0 are "no limit"
    assert usage_from_row(parse_report(REPORT_HEADER)["logs"]) == QuotaUsage(
        2 * MiB, None, 6, None)
    # no row: XFS has no dquot for an all-zero project
    assert usage_from_row(None) == QuotaUsage(0, None, 0, None)


# -- mountinfo --------------------------------------------------------------------------------

MOUNTINFO = """\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
44 22 7:0 / /srv/xfs rw,relatime - xfs /dev/loop0 rw,attr2,inode64,logbufs=8,logbsize=32k,prjquota
45 22 7:1 / /srv/plain rw,relatime - xfs /dev/loop1 rw,inode64,logbufs=8,logbsize=32k,noquota
46 22 7:2 / /srv/with\\040space rw,relatime shared:5 - xfs /dev/loop2 rw,inode64,pqnoenforce
47 22 0:50 / /srv/plain rw,relatime - tmpfs tmpfs rw,size=1024k
48 44 0:51 / /srv/xfs/tmp rw - tmpfs tmpfs rw
"""


def test_parse_mountinfo_and_find_mount(tmp_path: Path) -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert entries[1] == MountEntry("/srv/xfs", "xfs", "/dev/loop0", frozenset(
        {"rw", "relatime", "attr2", "inode64", "logbufs=8", "logbsize=32k", "prjquota"}))
    assert entries[3].mount_point == "/srv/with space"  # octal escapes undone
    assert "pqnoenforce" in entries[3].options  # optional fields before "-" skipped
    assert find_mount("/srv/xfs/vol/x", MOUNTINFO).mount_point == "/srv/xfs"
    assert find_mount("/srv/xfs", MOUNTINFO).fstype == "xfs"
    assert find_mount("/srv/xfsother", MOUNTINFO).mount_point == "/"  # not a path prefix
    assert find_mount("/srv/xfs/tmp/a", MOUNTINFO).fstype == "tmpfs"
    assert find_mount("/srv/plain/a", MOUNTINFO).fstype == "tmpfs"  # the mount on top wins
    assert find_mount("/srv/with space/a", MOUNTINFO).source == "/dev/loop2"
    # the real file: tmp_path is somewhere
    assert os.path.realpath(tmp_path).startswith(find_mount(tmp_path).mount_point)


@pytest.mark.trio
@pytest.mark.parametrize("entry, message", [
    (MountEntry("/srv/e", "ext4", "/dev/sda1", frozenset({"rw"})),
     r"is on ext4 \(mounted at /srv/e\), not XFS"),
    (MountEntry("/srv/xfs", "xfs", "/dev/loop1", frozenset({"rw", "noquota"})),
     "mounted without project quota .*-o prjquota .*CONFIG_XFS_QUOTA"),
    (MountEntry("/srv/xfs", "xfs", "/dev/loop1", frozenset({"rw", "pqnoenforce"})),
     "without enforcing it"),
    (MountEntry("/srv/xfs", "xfs", "/dev/loop1", frozenset({"rw", "usrquota"})),
     "without project quota"),
])
async def test_check_volume_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    entry: MountEntry, message: str) -> None:
    monkeypatch.setattr(xfs_mod, "find_mount", lambda path: entry)
    with pytest.raises(BackendError, match=message) as e:
        await XFSBackend(tmp_path).check_volume()
    assert e.value.errno == errno.EINVAL


@pytest.mark.trio
async def test_check_volume_accepts_prjquota(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for opt in ("prjquota", "pquota"):
        entry = MountEntry("/srv/xfs", "xfs", "/dev/loop0", frozenset({"rw", opt}))
        monkeypatch.setattr(xfs_mod, "find_mount", lambda path, e=entry: e)
        backend = XFSBackend(tmp_path, {"xfs_quota": "/bin/true"})
        await backend.check_volume()
        assert backend.mountpoint == "/srv/xfs"  # learnt from the mount table
    with pytest.raises(BackendError, match="install xfsprogs") as e:
        await XFSBackend(tmp_path, {"xfs_quota": "/nonexistent/xfs_quota"}).check_volume()
    assert e.value.errno == errno.ENOENT
    with pytest.raises(BackendError, match="not on the configured mountpoint"):
        await XFSBackend(tmp_path, {"mountpoint": "/elsewhere"}).check_volume()
    with pytest.raises(BackendError) as e:
        await XFSBackend(tmp_path / "missing").check_volume()
    assert e.value.errno == errno.ENOENT


# -- the exact commands -----------------------------------------------------------------------


class FakeRun:
    """Records every argv (and timeout) and answers like xfs_quota would (the `project -s`
    text is what xfs_quota 6.1.0 prints with -D and -p; a report with no row is a lone "\\n").

    `fail[verb]` makes that xfs_quota command (project, limit, report) raise; `reports[id]`
    is the report text for a project; `during(argv)` runs inside each call.
    """

    def __init__(self, projects_file: Path) -> None:
        self.projects_file = projects_file
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []
        self.fail: dict[str, BaseException] = {}
        self.reports: dict[str, str] = {}
        self.project_output: str | None = None
        self.during: Any = None

    async def __call__(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        if self.during is not None:
            self.during(list(argv))
        command = argv[argv.index("-c") + 1].split()
        verb = command[0]
        if verb in self.fail:
            raise self.fail[verb]
        if verb == "project":
            pid, path = command[-1], command[-2]
            if self.project_output is not None:
                return self.project_output
            return (f"Setting up project {pid} (path {path})...\n"
                    f"Setting up project {pid} (path {path})...\n"
                    f"Processed 2 ({self.projects_file} and cmdline) paths for project {pid} "
                    "with recursion depth infinite (-1).\n")
        if verb == "report":
            return self.reports.get(command[-1], "\n")
        return ""

    def commands(self) -> list[str]:
        return [argv[argv.index("-c") + 1] for argv in self.calls]


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.volume = tmp_path / "vol"
        self.volume.mkdir()
        etc = tmp_path / "etc"
        etc.mkdir()
        self.projid = etc / "projid"
        self.projects = etc / "projects"
        self.lock = tmp_path / "lock" / "xfs.lock"
        self.run = FakeRun(self.projects)
        self.backend = self.make()

    def make(self, **options: Any) -> XFSBackend:
        opts = {"mountpoint": MOUNTPOINT, "projid_file": str(self.projid),
                "projects_file": str(self.projects), "lock_file": str(self.lock), **options}
        return XFSBackend(self.volume, opts, run=self.run)

    def argv(self, command: str) -> list[str]:
        return ["xfs_quota", "-x", "-D", str(self.projects), "-P", str(self.projid),
                "-c", command, MOUNTPOINT]

    def files(self) -> tuple[str, str]:
        return (self.projid.read_text() if self.projid.exists() else "",
                self.projects.read_text() if self.projects.exists() else "")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.mark.trio
async def test_create_two_scopes(env: Env) -> None:
    v = env.volume
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=10 * MiB, limit_inodes=5))
    await env.backend.create_scope("s2", QuotaLimits(limit_bytes=1000))
    assert env.run.calls == [
        env.argv(f"project -s -p {v}/s1 1000"),
        env.argv("limit -p bsoft=10485760 bhard=10485760 isoft=6 ihard=6 1000"),
        env.argv(f"project -s -p {v}/s2 1001"),
        # 1000 bytes round up to whole KiB (what report can show); no inode limit
        env.argv("limit -p bsoft=1024 bhard=1024 isoft=0 ihard=0 1001"),
    ]
    assert env.run.timeouts == [SETUP_TIMEOUT, COMMAND_TIMEOUT] * 2
    assert env.files() == ("s1:1000\ns2:1001\n", f"1000:{v}/s1\n1001:{v}/s2\n")
    assert (v / "s1").is_dir() and (v / "s2").is_dir()
    assert oct((v / "s1").stat().st_mode & 0o777) == "0o755"


@pytest.mark.trio
async def test_allocation_skips_used_ids_and_keeps_other_lines(env: Env) -> None:
    env.projid.write_text("# managed by hand\nlogs:1000\nweird:1001:extra\n")
    env.projects.write_text("1000:/var/log\n1002:/srv/other")  # no final newline
    os.chmod(env.projid, 0o644)
    await env.backend.create_scope("a", QuotaLimits())
    await env.backend.create_scope("b", QuotaLimits())
    v = env.volume
    assert env.files() == (
        "# managed by hand\nlogs:1000\nweird:1001:extra\na:1003\nb:1004\n",
        f"1000:/var/log\n1002:/srv/other\n1003:{v}/a\n1004:{v}/b\n",
    )
    assert oct(env.projid.stat().st_mode & 0o777) == "0o644"  # kept, not narrowed by umask
    assert env.run.commands() == [
        f"project -s -p {v}/a 1003", "limit -p bsoft=0 bhard=0 isoft=0 ihard=0 1003",
        f"project -s -p {v}/b 1004", "limit -p bsoft=0 bhard=0 isoft=0 ihard=0 1004",
    ]
    # deleting "a" frees 1003, which the next scope gets (the smallest free ID)
    await env.backend.delete_scope("a")
    await env.backend.create_scope("c", QuotaLimits())
    assert "c:1003\n" in env.files()[0]


@pytest.mark.trio
async def test_min_project_id_option(env: Env) -> None:
    backend = env.make(min_project_id=50000)
    await backend.create_scope("s", QuotaLimits(limit_inodes=1))
    assert env.run.commands()[-1] == "limit -p bsoft=0 bhard=0 isoft=2 ihard=2 50000"
    assert env.files()[0] == "s:50000\n"


@pytest.mark.trio
async def test_concurrent_creates_get_distinct_ids(env: Env) -> None:
    names = [f"s{i}" for i in range(8)]
    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(env.backend.create_scope, n, QuotaLimits(limit_bytes=MiB))
    projid = dict(line.split(":") for line in env.files()[0].splitlines())
    assert sorted(projid) == names
    assert sorted(int(i) for i in projid.values()) == list(range(1000, 1008))
    assert len(env.files()[1].splitlines()) == 8


@pytest.mark.trio
async def test_registry_waits_for_the_lock(env: Env) -> None:
    """While another process (here: the test) holds the flock, no ID is handed out."""
    waiting = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waiting for the XFS project lock" in record.getMessage():
                waiting.set()

    handler = Seen()
    logger = logging.getLogger("backends.xfs")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    env.lock.parent.mkdir()
    fd = os.open(env.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(env.backend.create_scope, "s1", QuotaLimits(limit_bytes=MiB))
            try:
                assert await trio.to_thread.run_sync(waiting.wait, 10.0)
                await trio.testing.wait_all_tasks_blocked()
                assert env.run.calls == []
                assert env.files() == ("", "")
            finally:  # also on failure, or the create's thread would wait forever
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert env.files()[0] == "s1:1000\n"
    assert len(env.run.calls) == 2


@pytest.mark.trio
async def test_lock_is_held_for_the_files_only(env: Env) -> None:
    """The lock covers the read-allocate-write cycle; the xfs_quota commands run without it
    (a long `project -s` walk must not stall other gateways' creates)."""
    held: list[bool] = []

    def probe(argv: list[str]) -> None:
        fd = os.open(env.lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)

    env.run.during = probe
    await env.backend.create_scope("s1", QuotaLimits())
    assert env.lock.exists()
    assert held == [False, False]


def test_default_lock_file_location(tmp_path: Path) -> None:
    assert XFSBackend(tmp_path).registry.lock_file == DEFAULT_LOCK_FILE
    b = XFSBackend(tmp_path, {"projid_file": str(tmp_path / "etc" / "projid")})
    assert b.registry.lock_file == tmp_path / "etc" / "projid.lock"  # beside custom files
    b = XFSBackend(tmp_path, {"projid_file": "/x/projid", "lock_file": "/y/l"})
    assert b.registry.lock_file == Path("/y/l")
    assert XFSBackend(tmp_path).registry.projid_file == Path("/etc/projid")
    assert XFSBackend(tmp_path).registry.projects_file == Path("/etc/projects")


@pytest.mark.trio
@pytest.mark.parametrize("failing", ["project", "limit"])
async def test_create_undoes_on_command_failure(env: Env, failing: str) -> None:
    env.projid.write_text("logs:1000\n")
    before = env.files()
    env.run.fail[failing] = BackendError("xfs_quota: cannot set limits: Function not implemented")
    with pytest.raises(BackendError, match="cannot set limits"):
        await env.backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    assert not (env.volume / "s1").exists()
    assert env.files() == before
    expected = [f"project -s -p {env.volume}/s1 1001",
                "limit -p bsoft=1048576 bhard=1048576 isoft=0 ihard=0 1001"]
    assert env.run.commands() == expected[:1 if failing == "project" else 2]
    # nothing left behind: the retry gets the same ID
    env.run.fail.clear()
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    assert env.files()[0] == "logs:1000\ns1:1001\n"


@pytest.mark.trio
async def test_create_undoes_when_project_marks_nothing(env: Env) -> None:
    env.run.project_output = ("Processed 0 (/etc/projects and cmdline) paths for project 1000"
                              " with recursion depth infinite (-1).\n")
    with pytest.raises(BackendError, match="marked no path"):
        await env.backend.create_scope("s1", QuotaLimits())
    assert not (env.volume / "s1").exists() and env.files() == ("", "")
    assert len(env.run.calls) == 1


@pytest.mark.trio
async def test_create_undoes_when_the_files_cannot_be_written(env: Env) -> None:
    backend = env.make(projid_file=str(env.volume / "no-such-dir" / "projid"))
    with pytest.raises(BackendError) as e:
        await backend.create_scope("s1", QuotaLimits())
    assert e.value.errno == errno.ENOENT
    assert not (env.volume / "s1").exists() and env.run.calls == []


@pytest.mark.trio
async def test_create_undoes_on_cancellation(env: Env) -> None:
    """A cancelled create (say, a client gone away) still leaves no half-made scope."""
    started = trio.Event()

    async def hang(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
        env.run.calls.append(list(argv))
        started.set()
        await trio.sleep_forever()
        return ""

    backend = env.make()
    backend.run = hang
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backend.create_scope, "s1", QuotaLimits())
        await started.wait()
        assert (env.volume / "s1").is_dir() and env.files()[0] == "s1:1000\n"
        nursery.cancel_scope.cancel()
    assert len(env.run.calls) == 1
    assert not (env.volume / "s1").exists() and env.files() == ("", "")


@pytest.mark.trio
async def test_create_reuses_a_stale_record(env: Env) -> None:
    """A create retried after a crash between recording and mkdir's undo keeps one line."""
    v = env.volume
    env.projid.write_text("s1:1005\n")
    await env.backend.create_scope("s1", QuotaLimits())
    assert env.files() == ("s1:1005\n", f"1005:{v}/s1\n")
    assert env.run.commands()[0] == f"project -s -p {v}/s1 1005"
    # and a failed create then removes only what it added (the projects line)
    (v / "s1").rmdir()
    env.projects.write_text("")
    env.run.fail["limit"] = BackendError("boom")
    with pytest.raises(BackendError):
        await env.backend.create_scope("s1", QuotaLimits())
    assert env.files() == ("s1:1005\n", "")


@pytest.mark.trio
async def test_create_refuses_bad_names_and_existing_dirs(env: Env) -> None:
    for bad in ("a:b", "#x", "a b", ""):
        with pytest.raises(BackendError) as e:
            await env.backend.create_scope(bad, QuotaLimits())
        assert e.value.errno == errno.EINVAL
    with pytest.raises(BackendError) as e:
        await env.backend.create_scope("s", QuotaLimits(limit_bytes=-1))
    assert e.value.errno == errno.EINVAL
    (env.volume / "exists").mkdir()
    with pytest.raises(BackendError) as e:
        await env.backend.create_scope("exists", QuotaLimits())
    assert e.value.errno == errno.EEXIST
    assert env.run.calls == [] and env.files() == ("", "")


@pytest.mark.trio
async def test_describe(env: Env) -> None:
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=4 * MiB, limit_inodes=8))
    env.run.calls.clear()
    env.run.reports["1000"] = REPORT_ONE
    usage = await env.backend.describe_scope("s1")
    assert env.run.calls == [env.argv("report -p -b -i -n -N -L 1000 -U 1000")]
    assert usage == QuotaUsage(used_bytes=3 * MiB, limit_bytes=4 * MiB, used_inodes=4,
                               limit_inodes=8)
    # the kernel has no dquot (all zero): nothing used, no limits
    env.run.reports.clear()
    assert await env.backend.describe_scope("s1") == QuotaUsage(0, None, 0, None)
    # a row of another project is not this one's
    env.run.reports["1000"] = REPORT_MANY.replace("#1000 ", "#1003 ")
    assert await env.backend.describe_scope("s1") == QuotaUsage(0, None, 0, None)
    # no project (adopted, never limited) or no directory: the ledger is the source
    env.run.calls.clear()
    (env.volume / "adopted").mkdir()
    assert await env.backend.describe_scope("adopted") is None
    assert await env.backend.describe_scope("missing") is None
    assert env.run.calls == []
    env.run.fail["report"] = BackendError("xfs_quota: timed out")
    with pytest.raises(BackendError):
        await env.backend.describe_scope("s1")


@pytest.mark.trio
async def test_update_and_unset(env: Env) -> None:
    v = env.volume
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    env.run.calls.clear()
    await env.backend.update_scope("s1", QuotaLimits(limit_bytes=2 * MiB + 1, limit_inodes=99))
    await env.backend.unset_scope("s1")
    assert env.run.calls == [
        env.argv("limit -p bsoft=2098176 bhard=2098176 isoft=100 ihard=100 1000"),
        env.argv("limit -p bsoft=0 bhard=0 isoft=0 ihard=0 1000"),
    ]
    # an adopted directory gets its project (and the walk over its tree) on the first update
    (v / "adopted").mkdir()
    (v / "adopted" / "old-file").write_text("x")
    env.run.calls.clear()
    await env.backend.unset_scope("adopted")  # no project, no limit: nothing to do
    assert env.run.calls == []
    await env.backend.update_scope("adopted", QuotaLimits(limit_inodes=10))
    assert env.run.calls == [
        env.argv(f"project -s -p {v}/adopted 1001"),
        env.argv("limit -p bsoft=0 bhard=0 isoft=11 ihard=11 1001"),
    ]
    assert env.files() == ("s1:1000\nadopted:1001\n", f"1000:{v}/s1\n1001:{v}/adopted\n")
    with pytest.raises(BackendError) as e:
        await env.backend.update_scope("missing", QuotaLimits(limit_bytes=MiB))
    assert e.value.errno == errno.ENOENT


@pytest.mark.trio
async def test_adoption_failures(env: Env) -> None:
    v = env.volume
    (v / "adopted").mkdir()
    # the walk fails: the record goes again, so the next update walks the whole tree anew
    env.run.fail["project"] = BackendError("xfs_quota: cannot set project on ...: EIO")
    with pytest.raises(BackendError):
        await env.backend.update_scope("adopted", QuotaLimits(limit_bytes=MiB))
    assert env.files() == ("", "")
    # the walk succeeds, the limit fails: the project stays, a retry only sets the limit
    env.run.fail = {"limit": BackendError("xfs_quota: cannot set limits: EIO")}
    with pytest.raises(BackendError):
        await env.backend.update_scope("adopted", QuotaLimits(limit_bytes=MiB))
    assert env.files()[0] == "adopted:1000\n"
    env.run.fail.clear()
    env.run.calls.clear()
    await env.backend.update_scope("adopted", QuotaLimits(limit_bytes=MiB))
    assert env.run.commands() == ["limit -p bsoft=1048576 bhard=1048576 isoft=0 ihard=0 1000"]


def test_min_project_id_must_be_positive(env: Env) -> None:
    with pytest.raises(BackendError) as e:
        env.make(min_project_id=0)
    assert e.value.errno == errno.EINVAL


@pytest.mark.trio
async def test_delete(env: Env) -> None:
    v = env.volume
    env.projid.write_text("logs:7\n")
    env.projects.write_text("7:/var/log\n")
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    (v / "s1" / "vf").mkdir()
    env.run.calls.clear()
    with pytest.raises(BackendError) as e:
        await env.backend.delete_scope("s1")
    assert e.value.errno == errno.ENOTEMPTY
    assert env.run.calls == [] and (v / "s1").is_dir()
    assert env.files() == ("logs:7\ns1:1000\n", f"7:/var/log\n1000:{v}/s1\n")
    (v / "s1" / "vf").rmdir()
    await env.backend.delete_scope("s1")
    assert not (v / "s1").exists()
    assert env.run.calls == [env.argv("limit -p bsoft=0 bhard=0 isoft=0 ihard=0 1000")]
    assert env.files() == ("logs:7\n", "7:/var/log\n")


@pytest.mark.trio
async def test_delete_retry_finishes_the_cleanup(env: Env) -> None:
    await env.backend.create_scope("s1", QuotaLimits(limit_bytes=MiB))
    env.run.fail["limit"] = BackendError("xfs_quota: cannot set limits")
    with pytest.raises(BackendError):
        await env.backend.delete_scope("s1")
    # the directory is gone, but the ID stays recorded (its limit was not lifted)
    assert not (env.volume / "s1").exists() and env.files()[0] == "s1:1000\n"
    env.run.fail.clear()
    env.run.calls.clear()
    await env.backend.delete_scope("s1")
    assert env.run.commands() == ["limit -p bsoft=0 bhard=0 isoft=0 ihard=0 1000"]
    assert env.files() == ("", "")
    env.run.calls.clear()
    await env.backend.delete_scope("s1")  # nothing left: nothing to do
    assert env.run.calls == []


def test_backend_package_does_not_import_the_gateway() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, backends.xfs, backends.cephfs; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fusegw', 'pyfuse3')))"],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"


# -- for real, on a loop-mounted XFS image ----------------------------------------------------


def _sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _mount_error(r: subprocess.CompletedProcess[str], loop: str) -> str:
    """mount's complaint on one line, plus the kernel's own word on it where dmesg is
    readable (e.g. "XFS (loop0): quota support not available in this kernel.")."""
    error = " ".join(r.stderr.split()) or f"mount exit status {r.returncode}"
    try:
        log = _sh("dmesg").stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        log = []
    dev = os.path.basename(loop)
    kernel = [line.split("]", 1)[-1].strip() for line in log if f"({dev})" in line]
    return f"{error} (kernel: {kernel[-1]})" if kernel else error


@contextmanager
def _loop_xfs(tmp_path: Path, options: str | None) -> Iterator[Path | str]:
    """Yield the mount point of a fresh 300 MiB XFS image on a loop device, or the mount's
    error text when mounting with `options` fails. Always unmounts, detaches, deletes."""
    if os.geteuid() != 0:
        pytest.skip("needs root (losetup, mount)")
    if shutil.which("mkfs.xfs") is None:
        pytest.skip("mkfs.xfs not found (Debian package xfsprogs)")
    image = tmp_path / "xfs.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    loop = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(300 * MiB)  # mkfs.xfs's smallest filesystem
        r = _sh("mkfs.xfs", "-q", str(image))
        if r.returncode != 0:
            pytest.skip(f"mkfs.xfs failed: {r.stderr.strip()}")
        r = _sh("losetup", "--find", "--show", str(image))
        if r.returncode != 0:
            pytest.skip(f"no loop device: {r.stderr.strip()}")
        loop = r.stdout.strip()
        argv = ["mount", "-t", "xfs", *(["-o", options] if options else []), loop, str(mnt)]
        r = _sh(*argv)
        if r.returncode != 0:
            yield _mount_error(r, loop)
            return
        mounted = True
        yield mnt
    finally:
        if mounted:
            _sh("umount", str(mnt))
        if loop is not None:
            _sh("losetup", "-d", loop)
        image.unlink(missing_ok=True)


@pytest.fixture
def prjquota_xfs(tmp_path: Path) -> Iterator[Path]:
    with _loop_xfs(tmp_path, "prjquota") as result:
        if isinstance(result, str):
            pytest.skip("kernel lacks XFS quota support (CONFIG_XFS_QUOTA): prjquota mount of "
                        f"a loop XFS image failed: {result}")
        yield result


@pytest.fixture
def plain_xfs(tmp_path: Path) -> Iterator[Path]:
    with _loop_xfs(tmp_path, None) as result:
        if isinstance(result, str):
            pytest.skip(f"cannot mount a loop XFS image: {result}")
        yield result


@pytest.mark.trio
async def test_real_check_volume_refuses_xfs_without_prjquota(plain_xfs: Path) -> None:
    (plain_xfs / "vol").mkdir()
    with pytest.raises(BackendError, match="without project quota") as e:
        await XFSBackend(plain_xfs / "vol").check_volume()
    assert e.value.errno == errno.EINVAL


@pytest.mark.trio
async def test_real_create_is_undone_where_limits_cannot_be_set(plain_xfs: Path,
                                                               tmp_path: Path) -> None:
    """The real xfs_quota against an XFS without quota accounting: `project -s` works (the
    project ID is an inode attribute), `limit` fails ("cannot set limits: Function not
    implemented" without CONFIG_XFS_QUOTA), and the create is undone completely."""
    vol = plain_xfs / "vol"
    vol.mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "projid").write_text("logs:1000\n")
    backend = XFSBackend(vol, {"projid_file": str(etc / "projid"),
                               "projects_file": str(etc / "projects")})
    with pytest.raises(BackendError, match="cannot set limits"):
        await backend.create_scope("s1", QuotaLimits(limit_bytes=MiB, limit_inodes=3))
    assert not (vol / "s1").exists()
    assert (etc / "projid").read_text() == "logs:1000\n"
    assert (etc / "projects").read_text() == ""
    assert backend.mountpoint == os.path.realpath(plain_xfs)


def _fill(path: Path, nbytes: int) -> None:
    with open(path, "ab") as f:
        f.write(b"\xa5" * nbytes)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.trio
async def test_real_project_quota(prjquota_xfs: Path, tmp_path: Path) -> None:
    """create/describe/update/unset/delete against the kernel, and its refusal past a limit.

    XFS refuses project-quota overruns with ENOSPC, not EDQUOT (fs/xfs/xfs_trans_dquot.c,
    xfs_trans_dqresv: "if (xfs_dquot_type(dqp) == XFS_DQTYPE_PROJ) return -ENOSPC"), so both
    are accepted here. The inode limit is tried before the byte limit is reached: creating
    an inode also reserves blocks against the project, so a full byte quota refuses
    creations too. After unlinks XFS may free inodes in the background, so no inode counts
    are asserted after those.
    """
    over = (errno.EDQUOT, errno.ENOSPC)
    vol = prjquota_xfs / "vol"
    vol.mkdir()
    etc = tmp_path / "etc"
    etc.mkdir()
    backend = XFSBackend(vol, {"projid_file": str(etc / "projid"),
                               "projects_file": str(etc / "projects")})
    await backend.check_volume()
    assert backend.mountpoint == os.path.realpath(prjquota_xfs)
    await backend.create_scope("s1", QuotaLimits(limit_bytes=4 * MiB, limit_inodes=8))
    assert (etc / "projid").read_text() == "s1:1000\n"
    scope = vol / "s1"
    assert await backend.describe_scope("s1") == QuotaUsage(0, 4 * MiB, 0, 8)

    # inodes: eight entries below the scope fit, the ninth is refused
    for i in range(8):
        (scope / f"f{i}").touch()
    with pytest.raises(OSError) as e:
        (scope / "one-too-many").touch()
    assert e.value.errno in over
    usage = await backend.describe_scope("s1")
    assert usage is not None and usage.used_inodes == 8
    for i in range(8):
        (scope / f"f{i}").unlink()

    # bytes
    _fill(scope / "big", 3 * MiB)
    usage = await backend.describe_scope("s1")
    assert usage is not None and 3 * MiB <= usage.used_bytes <= 4 * MiB
    with pytest.raises(OSError) as e:
        _fill(scope / "big", 2 * MiB)
    assert e.value.errno in over

    await backend.update_scope("s1", QuotaLimits(limit_bytes=16 * MiB, limit_inodes=100))
    _fill(scope / "big", 2 * MiB)
    (scope / "more").touch()
    usage = await backend.describe_scope("s1")
    assert usage is not None and (usage.limit_bytes, usage.limit_inodes) == (16 * MiB, 100)
    assert usage.used_bytes >= 5 * MiB

    await backend.unset_scope("s1")
    usage = await backend.describe_scope("s1")
    assert usage is not None and (usage.limit_bytes, usage.limit_inodes) == (None, None)
    _fill(scope / "big", 20 * MiB)  # nothing refuses now

    with pytest.raises(BackendError) as be:
        await backend.delete_scope("s1")
    assert be.value.errno == errno.ENOTEMPTY
    for p in scope.iterdir():
        p.unlink()
    await backend.delete_scope("s1")
    assert not scope.exists()
    assert (etc / "projid").read_text() == "" and (etc / "projects").read_text() == ""
