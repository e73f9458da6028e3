"""Conversions between the backing `stat` and what pyfuse3 sends to the kernel."""

from __future__ import annotations

import os

import pyfuse3

from fusegw.ledger.usage import ScopeUsage


def entry_attributes(ino: int, st: os.stat_result, timeout: float,
                     generation: int = 0) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino  # pyfuse3: the node id and st_ino at once
    e.generation = generation
    e.entry_timeout = timeout
    e.attr_timeout = timeout
    e.st_mode = st.st_mode
    e.st_nlink = st.st_nlink
    e.st_uid = st.st_uid
    e.st_gid = st.st_gid
    e.st_rdev = st.st_rdev
    e.st_size = st.st_size
    e.st_blksize = st.st_blksize
    e.st_blocks = st.st_blocks
    e.st_atime_ns = st.st_atime_ns
    e.st_mtime_ns = st.st_mtime_ns
    e.st_ctime_ns = st.st_ctime_ns
    return e


def statvfs_data(sv: os.statvfs_result) -> pyfuse3.StatvfsData:
    d = pyfuse3.StatvfsData()
    for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                 "f_favail", "f_namemax"):
        setattr(d, name, getattr(sv, name))
    return d


def scope_statvfs(scope: ScopeUsage, disk: os.statvfs_result) -> pyfuse3.StatvfsData:
    """What df shows inside a scope: its limit as the size, its usage as used, what is left
    (never more than the disk has) as available; inodes alike. Without a limit, the disk's.

    The block unit is the largest of 4096, 512 and 1 that divides the figures, so that
    `df -B1` prints the limit and the usage exactly."""
    d = statvfs_data(disk)
    room_bytes, room_inodes = scope.room()
    if room_bytes is not None:
        limit, used = scope.limit_bytes, scope.used_bytes
        unit = next(u for u in (4096, 512, 1) if not limit % u and not used % u)
        d.f_frsize = unit
        d.f_blocks = limit // unit
        d.f_bfree = max(0, limit - used) // unit
        d.f_bavail = min(room_bytes, disk.f_bavail * disk.f_frsize) // unit
    if room_inodes is not None:
        d.f_files = scope.limit_inodes
        d.f_ffree = max(0, scope.limit_inodes - scope.used_inodes)
        d.f_favail = min(room_inodes, disk.f_favail)
    return d
