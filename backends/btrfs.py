"""`btrfs`: one subvolume per quota scope, limited by its level-0 qgroup; the kernel enforces.

Every scope directory is a btrfs subvolume, so the filesystem itself counts what the scope
references (its qgroup 0/<subvolid>) and refuses writes past `max_rfer` with EDQUOT. The gateway
therefore leaves byte enforcement to the kernel and only reads the figures back
(`describe_scope`). btrfs qgroups have no inode limit, so inodes stay with the gateway's ledger.

Everything goes through the `btrfs` command line (btrfs-progs) via `self.run`, which tests may
wrap. The text output of `btrfs qgroup show` is parsed rather than `--format json`, because the
JSON output of btrfs-progs 6.2 aborts with an internal error for `qgroup show`.

Accounting lags: btrfs updates qgroup figures when a transaction commits (every 30 s by
default, or on `sync`), so `describe_scope` can trail fresh writes by that long unless the
`sync_on_describe` option is set (which makes every describe a filesystem sync: costly).
Enforcement does not lag: the kernel reserves quota space at write time.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import trio

from backends.base import (
    BackendError,
    QuotaBackend,
    QuotaLimits,
    QuotaUsage,
    run_command,
)

BTRFS_SUPER_MAGIC = 0x9123683E
# The root directory of every subvolume has this inode number (BTRFS_FIRST_FREE_OBJECTID);
# btrfs-progs itself tells subvolumes from plain directories this way.
SUBVOLUME_ROOT_INO = 256
# A full quota rescan reads all the filesystem's metadata: it may take far longer than one
# ordinary command.
RESCAN_TIMEOUT = 600.0


class CommandRunner(Protocol):
    """The shape of `backends.base.run_command`, so tests can substitute a wrapper."""

    def __call__(self, argv: Sequence[str], timeout: float = ...) -> Awaitable[str]: ...


def parse_qgroup_show(output: str, qgroupid: str) -> tuple[int, int | None]:
    """(referenced bytes, max referenced bytes or None) of `qgroupid` in `btrfs qgroup show
    -re --raw` output.

    The columns are fixed by the `-r -e` flags: qgroupid, referenced, exclusive, max
    referenced, max exclusive, and (btrfs-progs >= 5.x) a path, which may contain spaces and
    is ignored. An unlimited maximum prints as `none`.
    """
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] != qgroupid:
            continue
        try:
            referenced = int(fields[1])
            max_referenced = None if fields[3] == "none" else int(fields[3])
        except ValueError:
            raise BackendError(f"unexpected `btrfs qgroup show` row: {line.strip()!r}") from None
        # A limit of 0 cannot be set through `btrfs qgroup limit` (0 means unlimited here too).
        return referenced, (max_referenced or None)
    raise BackendError(f"qgroup {qgroupid} not in `btrfs qgroup show` output", errno.ENOENT)


class BtrfsBackend(QuotaBackend):
    """Scopes are subvolumes; byte limits are referenced-size limits of their qgroups.

    Options: `sync_on_describe` (bool, default False) syncs the filesystem before reading the
    qgroup, for exact but expensive figures; `rescan_timeout` (seconds, default 600) bounds the
    wait for a quota rescan in `check_volume`.
    """

    name = "btrfs"
    enforces_bytes = True
    enforces_inodes = False
    capabilities = frozenset({"vfolder", "quota", "fast-size"})
    option_keys = frozenset({"sync_on_describe", "rescan_timeout"})

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self.run: CommandRunner = run_command
        self.sync_on_describe = bool(self.options.get("sync_on_describe", False))
        self.rescan_timeout = float(self.options.get("rescan_timeout", RESCAN_TIMEOUT))

    # -- volume ---------------------------------------------------------------------------------

    async def check_volume(self) -> None:
        """Refuse a volume not on btrfs; make sure quotas are on and their figures settled.

        Quotas are enabled here (not by the admin beforehand) because without them a subvolume
        has no qgroup to limit; enabling starts a rescan, and figures read during a rescan are
        incomplete, so this waits for it.
        """
        if not self.volume.is_dir():
            raise BackendError(f"volume {self.volume} is not a directory", errno.ENOENT)
        out = await self.run(["stat", "-f", "-c", "%t %T", str(self.volume)])
        magic_hex, _, type_name = out.strip().partition(" ")
        try:
            magic = int(magic_hex, 16)
        except ValueError:
            raise BackendError(f"cannot read the filesystem type of {self.volume}: {out!r}",
                               errno.EINVAL) from None
        if magic != BTRFS_SUPER_MAGIC:
            found = _mounted_fstype(self.volume) or type_name or hex(magic)
            raise BackendError(f"volume {self.volume} is not on btrfs (found {found}); the btrfs "
                               f"backend needs subvolumes and qgroups", errno.EINVAL)

        volume = str(self.volume)
        try:
            await self.run(["btrfs", "qgroup", "show", volume])
        except BackendError as exc:
            if "quotas not enabled" not in str(exc):
                raise
            await self.run(["btrfs", "quota", "enable", volume])
            await self.run(["btrfs", "quota", "rescan", "-w", volume],
                           timeout=self.rescan_timeout)
            return
        # `rescan -w` starts a new full rescan when none runs, so only wait when one does.
        status = await self.run(["btrfs", "quota", "rescan", "-s", volume])
        if "running" in status:
            await self.run(["btrfs", "quota", "rescan", "-w", volume],
                           timeout=self.rescan_timeout)

    # -- scopes ---------------------------------------------------------------------------------

    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """Create the scope's subvolume and, when limited, its qgroup limit.

        Either both happen or neither: a subvolume without its limit would be a scope the
        kernel does not enforce, so a failing limit removes the new subvolume again.
        """
        path = self.scope_path(pathname)
        _check_limit(limits.limit_bytes)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if _is_subvolume(st):
                raise BackendError(f"{path} already exists (a btrfs subvolume)", errno.EEXIST)
            if stat.S_ISDIR(st.st_mode):
                raise BackendError(f"{path} already exists as a plain directory, not a btrfs "
                                   f"subvolume; the btrfs backend cannot put a quota on it",
                                   errno.EEXIST)
            raise BackendError(f"{path} already exists and is not a directory", errno.EEXIST)

        await self.run(["btrfs", "subvolume", "create", str(path)])
        if not limits.limit_bytes:
            return
        try:
            await self._set_limit(path, limits.limit_bytes)
        except BaseException as exc:
            # Also on cancellation: shielded, so the half-created scope does not outlive it.
            with trio.CancelScope(shield=True):
                try:
                    await self._remove_subvolume(path)
                except BackendError as cleanup:
                    if isinstance(exc, BackendError):
                        raise BackendError(f"{exc} (and removing the new subvolume {path} "
                                           f"failed: {cleanup})", exc.errno) from exc
            raise

    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """The subvolume's referenced bytes and referenced limit, from its level-0 qgroup.

        Referenced (not exclusive) bytes, because that is what `max_rfer` limits: the figure
        shown is the one the kernel compares against the limit.
        """
        path = self._subvolume(pathname)
        qgroupid = f"0/{await self._subvolume_id(path)}"
        argv = ["btrfs", "qgroup", "show", "-reF", "--raw"]
        if self.sync_on_describe:
            argv.append("--sync")
        argv.append(str(path))
        used, limit = parse_qgroup_show(await self.run(argv), qgroupid)
        return QuotaUsage(used_bytes=used, limit_bytes=limit)

    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None:
        """Set the referenced limit; 0 lifts it. Inode limits are the gateway's business."""
        _check_limit(limits.limit_bytes)
        await self._set_limit(self._subvolume(pathname), limits.limit_bytes)

    async def unset_scope(self, pathname: str) -> None:
        await self._set_limit(self._subvolume(pathname), 0)

    async def delete_scope(self, pathname: str) -> None:
        """Delete an empty scope's subvolume and its qgroup.

        `btrfs subvolume delete` would happily drop a full subvolume, so emptiness is checked
        here, as `rmdir` would for a plain directory.
        """
        path = self._subvolume(pathname)
        with os.scandir(path) as entries:
            if any(True for _ in entries):
                raise BackendError(f"{path} is not empty", errno.ENOTEMPTY)
        await self._remove_subvolume(path)

    # -- helpers --------------------------------------------------------------------------------

    def _subvolume(self, pathname: str) -> Path:
        """The scope's path, refusing anything but a subvolume root.

        `btrfs qgroup limit <path>` and `inspect-internal rootid` act on the subvolume that
        *contains* a path, so on a plain directory they would silently reach the parent
        subvolume (often the whole volume's top level).
        """
        path = self.scope_path(pathname)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise BackendError(f"no scope at {path}", errno.ENOENT) from None
        if not _is_subvolume(st):
            raise BackendError(f"{path} is not a btrfs subvolume", errno.EINVAL)
        return path

    async def _subvolume_id(self, path: Path) -> int:
        out = await self.run(["btrfs", "inspect-internal", "rootid", str(path)])
        try:
            return int(out.strip())
        except ValueError:
            raise BackendError(f"unexpected `btrfs inspect-internal rootid` output: {out!r}"
                               ) from None

    async def _set_limit(self, path: Path, limit_bytes: int) -> None:
        value = str(limit_bytes) if limit_bytes else "none"
        await self.run(["btrfs", "qgroup", "limit", value, str(path)])

    async def _remove_subvolume(self, path: Path) -> None:
        """Delete the subvolume and, where the kernel lets us already, its qgroup.

        The qgroup cannot be destroyed while the deleted subvolume still holds extents (EBUSY):
        the cleaner drops them only once nothing references the subvolume any more, and a
        gateway serving the volume may still hold descriptors of its inodes until the kernel
        forgets them. So we do not wait for the cleaner (`subvolume sync` would block on our
        own references); recent kernels (6.x) remove the qgroup by themselves once the
        subvolume is gone, and a busy or already-gone qgroup is fine.
        """
        subvolid = await self._subvolume_id(path)
        volume = str(self.volume)
        await self.run(["btrfs", "subvolume", "delete", "--commit-after", str(path)])
        try:
            await self.run(["btrfs", "qgroup", "destroy", f"0/{subvolid}", volume])
        except BackendError as exc:
            if not any(m in str(exc) for m in ("No such file or directory",
                                                "Device or resource busy")):
                raise BackendError(f"subvolume {path} deleted, but its qgroup 0/{subvolid} "
                                   f"remains: {exc}", exc.errno) from exc


def _is_subvolume(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_ino == SUBVOLUME_ROOT_INO


def _check_limit(limit_bytes: int) -> None:
    if limit_bytes < 0:
        raise BackendError(f"negative byte limit {limit_bytes}", errno.EINVAL)


def _mounted_fstype(path: Path) -> str | None:
    """The mount table's name for the filesystem holding `path` (`ext4`, where `stat -f` only
    knows `ext2/ext3`), for a clearer refusal; None when not found."""
    try:
        dev = os.stat(path).st_dev
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    found = None
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2] == wanted and " - " in line:
            found = line.split(" - ", 1)[1].split()[0]
    return found
