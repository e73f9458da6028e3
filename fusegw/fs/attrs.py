"""Conversions between the backing `stat` and what pyfuse3 sends to the kernel."""

from __future__ import annotations

import os

import pyfuse3


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
