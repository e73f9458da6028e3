"""`xfs`: one XFS project quota per quota scope; the kernel enforces bytes and inodes.

Every scope directory carries its own project ID (the inode flag PROJINHERIT makes everything
created below it inherit the ID), so XFS counts the tree's blocks and inodes against that
project's dquot and refuses past its hard limits with EDQUOT. The gateway leaves enforcement
to the kernel and reads the figures back with `xfs_quota report`.

Project IDs are recorded where the XFS tools and administrators look for them: `name:id` in the
projid file and `id:path` in the projects file (projid(5), projects(5); /etc/projid and
/etc/projects unless the options `projid_file`/`projects_file` say otherwise). The project
name is the scope's pathname. Allocation takes the smallest ID from `min_project_id` (default
1000, clear of the small IDs administrators tend to pick by hand) that neither file uses; the
read-allocate-write cycle holds an exclusive flock(2) on a lock file, the same lock `flock(1)`
takes, so several gateways and admin scripts on one host never hand out the same ID. The files
are rewritten atomically (temporary file, fsync, rename): a crash leaves the old or the new
file, never half of one.

Commands (through `self.run`, which tests replace by a recorder). Every call passes
`-D <projects file> -P <projid file>` so xfs_quota reads the same files as this backend:

  create: mkdir; record the project; `project -s -p <dir> <id>`; `limit -p bsoft=B bhard=B
          isoft=I ihard=I <id>`. Soft limits equal hard ones, as the Backend.AI storage proxy
          sets them: a soft limit below the hard one would only start a grace timer.
  describe: `report -p -b -i -n -N -L <id> -U <id>` (see `parse_report`).
  update/unset: `limit` again (0 lifts a limit). An adopted directory that has no project yet
          gets one first (the `project -s` walk marks the existing tree).
  delete: refuse (ENOTEMPTY) while the directory has entries; rmdir; limits 0 (so a reused ID
          starts clean); forget the project.

Units. `limit` takes bytes and the kernel keeps 512-byte basic blocks, while `report` prints
KiB; byte limits are therefore rounded *up* to whole KiB (never down: a limit below 512 bytes
would otherwise become 0, which means unlimited), and read back exactly. Inodes: XFS charges
the scope directory itself to the project, while the gateway's ledger counts the entries
below the scope; the native inode limit is therefore `limit_inodes + 1` and the reported
figures are one less than the kernel's, so both sides mean the same thing.

The volume's XFS mount point comes from the option `mountpoint` or from /proc/self/mountinfo;
`check_volume` refuses a volume that is not on XFS mounted with project quota enforcement
(`-o prjquota`/`pquota`; the kernel needs CONFIG_XFS_QUOTA).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from backends.atomic import write_atomic
from backends.base import (
    COMMAND_TIMEOUT,
    BackendError,
    QuotaBackend,
    QuotaLimits,
    QuotaUsage,
    run_command,
)

log = logging.getLogger("backends.xfs")

DEFAULT_PROJID_FILE = Path("/etc/projid")
DEFAULT_PROJECTS_FILE = Path("/etc/projects")
DEFAULT_LOCK_FILE = Path("/run/fusegw/xfs-projects.lock")
DEFAULT_MIN_PROJECT_ID = 1000
MAX_PROJECT_ID = 2**32 - 2  # prid_t is 32 bits; (prid_t)-1 is xfs_quota's "no such project"
# `project -s` walks the whole tree: for an adopted directory with millions of files that takes
# far longer than an ordinary command.
SETUP_TIMEOUT = 3600.0

T = TypeVar("T")


class CommandRunner(Protocol):
    """The shape of `backends.base.run_command`, so tests can substitute a recorder."""

    def __call__(self, argv: Sequence[str], timeout: float = ...) -> Awaitable[str]: ...


# -- /proc/self/mountinfo ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo, the fields this package needs."""

    mount_point: str
    fstype: str
    source: str
    options: frozenset[str]  # per-mount and superblock options together


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in paths as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a mountinfo text (proc(5)), in mount order.

    Line layout: `id parent major:minor root mount-point mount-options [optional fields...]
    - fstype source super-options`; the optional fields end at the lone `-`.
    """
    entries = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, rest = head.split(), tail.split()
        if len(fields) < 6 or len(rest) < 3:
            continue
        options = frozenset(fields[5].split(",")) | frozenset(rest[2].split(","))
        entries.append(MountEntry(_unescape(fields[4]), rest[0], _unescape(rest[1]), options))
    return entries


def find_mount(path: str | os.PathLike[str], mountinfo: str | None = None) -> MountEntry:
    """The mount that holds `path`: the longest mount point above its real path (the last one
    mounted there wins, as it is the one on top)."""
    real = os.path.realpath(path)
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    best: MountEntry | None = None
    for entry in parse_mountinfo(mountinfo):
        mp = entry.mount_point
        inside = real == mp or mp == "/" or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = entry
    if best is None:
        raise BackendError(f"no mount found for {real} in /proc/self/mountinfo", errno.ENOENT)
    return best


# -- xfs_quota report --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRow:
    """One row of `xfs_quota report -b -i` without `-h`: blocks in KiB, inodes in units."""

    ident: str  # "#1000" with -n; otherwise the project's name (or "#id" where it has none)
    used_kib: int
    soft_kib: int
    hard_kib: int
    used_inodes: int
    soft_inodes: int
    hard_inodes: int


# A row, as quota/report.c (report_mount) prints it without HUMAN_FLAG: the identifier
# ("#%-10u" with -n, else "%-10s" name), then per form " %10llu %10llu %10llu     %02d %9s"
# (used, soft, hard, warnings, grace from quota/util.c time_to_string: "[--------]" without a
# timer, "[--none--]" past the hard limit, "[N days]"/"[N day]", "[hh:mm:ss]").
_GRACE = r"(?:\[[^\]]*\]|\d+:\d\d:\d\d)"
_FORM = r"\s+(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+" + _GRACE
_ROW = re.compile(r"^(\S+)" + _FORM + _FORM + r"\s*$")


def parse_report(output: str) -> dict[str, ReportRow]:
    """The rows of `xfs_quota -x -c 'report -p -b -i ...'` output, by identifier.

    Header lines (present without -N), blank lines and anything else that is not a
    blocks-and-inodes row are skipped, so the same parser reads output with or without -N.
    """
    rows: dict[str, ReportRow] = {}
    for line in output.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        ident = m.group(1)
        bu, bs, bh, iu, is_, ih = (int(g) for g in m.groups()[1:])
        rows[ident] = ReportRow(ident, bu, bs, bh, iu, is_, ih)
    return rows


def usage_from_row(row: ReportRow | None) -> QuotaUsage:
    """The gateway's figures from a report row (None: the kernel has no dquot for the project,
    which XFS answers for an all-zero one, i.e. nothing used and no limits).

    Inodes are translated to the gateway's count of entries below the scope: the kernel
    also counts the scope directory itself.
    """
    if row is None:
        return QuotaUsage(used_bytes=0, limit_bytes=None, used_inodes=0, limit_inodes=None)
    return QuotaUsage(
        used_bytes=row.used_kib * 1024,
        limit_bytes=row.hard_kib * 1024 or None,
        used_inodes=max(row.used_inodes - 1, 0),
        limit_inodes=row.hard_inodes - 1 if row.hard_inodes else None,
    )


def native_limits(limits: QuotaLimits) -> tuple[int, int]:
    """(bytes for `bhard`, inodes for `ihard`) for the gateway's limits (0 stays unlimited)."""
    if limits.limit_bytes < 0 or limits.limit_inodes < 0:
        raise BackendError(f"negative limit: {limits}", errno.EINVAL)
    nbytes = math.ceil(limits.limit_bytes / 1024) * 1024
    ninodes = limits.limit_inodes + 1 if limits.limit_inodes else 0
    return nbytes, ninodes


# -- projid / projects files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `ProjectRegistry.record` did, so a failed create can undo exactly that."""

    project_id: int
    added_projid: bool
    added_projects: bool


def _entries(text: str) -> list[tuple[str, str]]:
    """The `a:b` pairs of a projid/projects text; comments and blank lines are skipped."""
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        a, sep, b = line.partition(":")
        if sep:
            pairs.append((a.strip(), b.strip()))
    return pairs


def _int_or_none(s: str) -> int | None:
    # projid lines may carry more colon-separated fields; the ID is the first after the name
    head = s.split(":", 1)[0]
    return int(head) if head.isdigit() else None


class ProjectRegistry:
    """The projid and projects files, edited under an exclusive flock on the lock file.

    The methods block (flock, file I/O): call them through `trio.to_thread.run_sync`. flock
    locks belong to an open file description, so concurrent threads of one process exclude
    each other as well as other processes do.
    """

    def __init__(self, projid_file: Path, projects_file: Path, lock_file: Path,
                 min_project_id: int = DEFAULT_MIN_PROJECT_ID) -> None:
        self.projid_file = projid_file
        self.projects_file = projects_file
        self.lock_file = lock_file
        self.min_project_id = min_project_id

    # reads need no lock: writers replace the files by rename, so a reader sees one version

    def lookup(self, name: str) -> int | None:
        """The ID recorded for project `name`, if any."""
        for n, rest in _entries(_read(self.projid_file)):
            if n == name:
                pid = _int_or_none(rest)
                if pid is not None:
                    return pid
        return None

    def locked(self, fn: Callable[[], T]) -> T:
        """Run `fn` holding the exclusive lock."""
        self.lock_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for the XFS project lock %s", self.lock_file)
                fcntl.flock(fd, fcntl.LOCK_EX)
            return fn()
        finally:
            os.close(fd)  # closing the only descriptor releases the flock

    def record(self, name: str, path: str) -> Recorded:
        """Give project `name` an ID and the tree `path`, reusing an ID already recorded for
        the name (a create retried after a crash must not leave two)."""

        def txn() -> Recorded:
            projid = _read(self.projid_file)
            projects = _read(self.projects_file)
            pid = None
            for n, rest in _entries(projid):
                if n == name and _int_or_none(rest) is not None:
                    pid = _int_or_none(rest)
                    break
            added_projid = pid is None
            if pid is None:
                pid = self._free_id(projid, projects)
                _write_atomic(self.projid_file, _append(projid, f"{name}:{pid}"))
            added_projects = (str(pid), path) not in _entries(projects)
            if added_projects:
                _write_atomic(self.projects_file, _append(projects, f"{pid}:{path}"))
            return Recorded(pid, added_projid, added_projects)

        return self.locked(txn)

    def forget(self, name: str, project_id: int, path: str | None = None, *,
               projid: bool = True, projects: bool = True) -> None:
        """Remove exactly the `name:id` line and the `id:path` line (every `id:...` line when
        `path` is None: the ID was this project's alone); every other line stays as is."""

        def txn() -> None:
            if projid:
                _remove_lines(self.projid_file,
                              lambda a, b: a == name and _int_or_none(b) == project_id)
            if projects:
                _remove_lines(self.projects_file,
                              lambda a, b: a == str(project_id) and path in (None, b))

        self.locked(txn)

    def _free_id(self, projid: str, projects: str) -> int:
        used = {_int_or_none(rest) for _, rest in _entries(projid)}
        used |= {int(a) for a, _ in _entries(projects) if a.isdigit()}
        pid = self.min_project_id
        while pid in used:
            pid += 1
        if pid > MAX_PROJECT_ID:
            raise BackendError("no free XFS project ID left", errno.ENOSPC)
        return pid


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _append(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def _remove_lines(path: Path, match: Callable[[str, str], bool]) -> None:
    text = _read(path)
    kept = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        a, sep, b = stripped.partition(":")
        if stripped and not stripped.startswith("#") and sep and match(a.strip(), b.strip()):
            continue
        kept.append(line)
    new = "".join(kept)
    if new != text:
        _write_atomic(path, new)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` (backends.atomic: file and directory fsynced), keeping the
    file's mode; a new file is 0644, world-readable as the XFS tools expect /etc files."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    write_atomic(path, text.encode(), mode)


# -- the backend -------------------------------------------------------------------------------


def _has_space(s: str) -> bool:
    return any(c.isspace() for c in s)


class XFSBackend(QuotaBackend):
    """Scopes are XFS project-quota trees; limits are the project's hard (= soft) limits.

    Options: `mountpoint` (the XFS mount point; found from /proc/self/mountinfo otherwise),
    `projid_file`, `projects_file`, `lock_file` (default /run/fusegw/xfs-projects.lock with
    the default files, else `<projid_file>.lock` beside a configured projid file, since the
    lock must be shared by everyone editing the same files), `min_project_id` (1000),
    `xfs_quota` (the command, default "xfs_quota"), `setup_timeout` (seconds allowed for the
    `project -s` walk, default 3600).
    """

    name = "xfs"
    enforces_bytes = True
    enforces_inodes = True
    option_keys = frozenset({"mountpoint", "projid_file", "projects_file", "lock_file",
                             "min_project_id", "xfs_quota", "setup_timeout"})

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None, *,
                 run: CommandRunner | None = None) -> None:
        super().__init__(volume, options)
        self.run: CommandRunner = run if run is not None else run_command
        opts = self.options
        projid = Path(opts.get("projid_file", DEFAULT_PROJID_FILE))
        projects = Path(opts.get("projects_file", DEFAULT_PROJECTS_FILE))
        if "lock_file" in opts:
            lock = Path(opts["lock_file"])
        elif projid == DEFAULT_PROJID_FILE:
            lock = DEFAULT_LOCK_FILE
        else:
            lock = projid.with_name(projid.name + ".lock")
        min_id = int(opts.get("min_project_id", DEFAULT_MIN_PROJECT_ID))
        if not 1 <= min_id <= MAX_PROJECT_ID:  # 0 is the default project of every inode
            raise BackendError(f"min_project_id {min_id} out of range 1..{MAX_PROJECT_ID}",
                               errno.EINVAL)
        self.registry = ProjectRegistry(projid, projects, lock, min_id)
        self.xfs_quota = str(opts.get("xfs_quota", "xfs_quota"))
        self.setup_timeout = float(opts.get("setup_timeout", SETUP_TIMEOUT))
        self._mountpoint: str | None = (str(opts["mountpoint"]) if opts.get("mountpoint")
                                        else None)

    # -- helpers ---------------------------------------------------------------------------

    @property
    def mountpoint(self) -> str:
        """The XFS mount point the commands address (found once, then remembered)."""
        if self._mountpoint is None:
            self._mountpoint = find_mount(self.volume).mount_point
        return self._mountpoint

    def xfs_quota_argv(self, command: str) -> list[str]:
        """The full argv for one expert-mode xfs_quota command on the volume's filesystem."""
        return [self.xfs_quota, "-x", "-D", str(self.registry.projects_file),
                "-P", str(self.registry.projid_file), "-c", command, self.mountpoint]

    async def _xfs_quota(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        return await self.run(self.xfs_quota_argv(command), timeout)

    def _checked_path(self, pathname: str) -> Path:
        """The scope's directory, refusing names the projid/projects formats or xfs_quota's
        command parser (which splits -c at whitespace) cannot carry."""
        if (not pathname or pathname.startswith("#") or ":" in pathname
                or _has_space(pathname)):
            raise BackendError(f"scope name {pathname!r} cannot be an XFS project name",
                               errno.EINVAL)
        path = self.scope_path(pathname)
        if _has_space(str(path)):
            raise BackendError(f"{path}: xfs_quota cannot address a path with whitespace",
                               errno.EINVAL)
        return path

    async def _setup_project(self, project_id: int, path: Path) -> None:
        out = await self._xfs_quota(f"project -s -p {path} {project_id}", self.setup_timeout)
        # xfs_quota reports "Processed N (<projects file> and cmdline) paths ..."; N = 0 means
        # it found no XFS path to mark (and may still exit 0).
        m = re.search(r"Processed (\d+) ", out)
        if m is not None and int(m.group(1)) == 0:
            raise BackendError(f"xfs_quota project -s marked no path for project {project_id} "
                               f"({path}): {out.strip()}")

    async def _limit(self, project_id: int, limits: QuotaLimits) -> None:
        nbytes, ninodes = native_limits(limits)
        await self._xfs_quota(f"limit -p bsoft={nbytes} bhard={nbytes} "
                              f"isoft={ninodes} ihard={ninodes} {project_id}")

    async def _lookup(self, pathname: str) -> int | None:
        return await trio.to_thread.run_sync(self.registry.lookup, pathname)

    # -- QuotaBackend ----------------------------------------------------------------------

    async def check_volume(self) -> None:
        """The volume must be on XFS mounted with project quota enforced, and xfs_quota must
        be installed; the message says which of these is missing."""
        if not os.path.isdir(self.volume):
            raise BackendError(f"volume {self.volume} is not a directory", errno.ENOENT)
        entry = await trio.to_thread.run_sync(find_mount, self.volume)
        if self._mountpoint is not None and os.path.realpath(self._mountpoint) != \
                entry.mount_point:
            raise BackendError(f"volume {self.volume} is on the mount {entry.mount_point}, not "
                               f"on the configured mountpoint {self._mountpoint}", errno.EINVAL)
        if entry.fstype != "xfs":
            raise BackendError(
                f"volume {self.volume} is on {entry.fstype} (mounted at {entry.mount_point}), "
                "not XFS: the xfs backend needs an XFS filesystem mounted with -o prjquota",
                errno.EINVAL)
        if "pqnoenforce" in entry.options and not entry.options & {"prjquota", "pquota"}:
            raise BackendError(
                f"XFS at {entry.mount_point} accounts project quota without enforcing it "
                "(pqnoenforce): remount it with -o prjquota", errno.EINVAL)
        if not entry.options & {"prjquota", "pquota"}:
            raise BackendError(
                f"XFS at {entry.mount_point} is mounted without project quota (options: "
                f"{','.join(sorted(entry.options))}): mount it with -o prjquota (the kernel "
                "needs CONFIG_XFS_QUOTA)", errno.EINVAL)
        if shutil.which(self.xfs_quota) is None:
            raise BackendError(f"{self.xfs_quota} not found: install xfsprogs", errno.ENOENT)
        self._mountpoint = self._mountpoint or entry.mount_point

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """mkdir, record the project, mark the tree, set the limits; on a failure, undo
        what was done (newest first) and raise the original error."""
        path = self._checked_path(pathname)
        native_limits(limits)  # refuse bad limits before touching anything
        mountpoint = self.mountpoint
        try:
            os.mkdir(path, 0o755)
        except OSError as e:
            raise BackendError(f"mkdir {path}: {e.strerror}", e.errno or errno.EIO) from None
        undo: list[Callable[[], Any]] = [lambda: os.rmdir(path)]
        try:
            rec = await trio.to_thread.run_sync(self.registry.record, pathname, str(path))
            undo.append(lambda: self.registry.forget(pathname, rec.project_id, str(path),
                                                     projid=rec.added_projid,
                                                     projects=rec.added_projects))
            await self._setup_project(rec.project_id, path)
            await self._limit(rec.project_id, limits)
        except BaseException as e:
            with trio.CancelScope(shield=True):
                for step in reversed(undo):
                    try:
                        await trio.to_thread.run_sync(step)
                    except Exception as ue:  # keep undoing; the first error is the one to tell
                        log.error("undo after failed create of %s on %s: %s", pathname,
                                  mountpoint, ue)
            if isinstance(e, OSError):
                raise BackendError(f"creating XFS project for {path}: {e}",
                                   e.errno or errno.EIO) from e
            raise

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """The project's figures from the kernel, or None when the scope has no project (an
        adopted directory before its first limit) or no directory."""
        if not os.path.isdir(self.scope_path(pathname)):
            return None
        pid = await self._lookup(pathname)
        if pid is None:
            return None
        out = await self._xfs_quota(f"report -p -b -i -n -N -L {pid} -U {pid}")
        return usage_from_row(parse_report(out).get(f"#{pid}"))

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        path = self._checked_path(pathname)
        native_limits(limits)
        if not os.path.isdir(path):
            raise BackendError(f"scope directory {path} does not exist", errno.ENOENT)
        pid = await self._lookup(pathname)
        if pid is None:
            # adopted directory: give it a project and mark the existing tree
            rec = await trio.to_thread.run_sync(self.registry.record, pathname, str(path))
            pid = rec.project_id
            try:
                await self._setup_project(pid, path)
            except BaseException:
                # Forget the new record so the next update starts over and walks the whole
                # tree again (inodes the failed walk marked are re-marked then).
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(
                            lambda: self.registry.forget(pathname, pid, str(path),
                                                         projid=rec.added_projid,
                                                         projects=rec.added_projects))
                    except Exception as e:
                        log.error("undo after failed setup of %s: %s", path, e)
                raise
        # A failing `limit` keeps the project: the tree is marked, a retry only sets limits.
        await self._limit(pid, limits)

    async def unset_scope(self, pathname: str) -> None:
        pid = await self._lookup(pathname)
        if pid is not None:
            await self._limit(pid, QuotaLimits())

    async def delete_scope(self, pathname: str) -> None:
        """rmdir first (so a refusal changes nothing), then lift the limits and forget the
        project. A retry after a failure past the rmdir finishes the clean-up."""
        self.remove_empty_scope_dir(pathname)
        pid = await self._lookup(pathname)
        if pid is None:
            return
        # limits 0 before the ID is freed: a later scope reusing it must not inherit them
        await self._limit(pid, QuotaLimits())
        await trio.to_thread.run_sync(self.registry.forget, pathname, pid)
