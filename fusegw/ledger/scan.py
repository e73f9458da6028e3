"""Walk a scope directory on the backing storage and total it the way `du -s -B1` does.

Runs in a worker thread; never follows symlinks; hard links count once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Container
from dataclasses import dataclass, field

from fusegw.layout import vfolder_hex


@dataclass
class ScanResult:
    used_bytes: int = 0
    used_inodes: int = 0
    files: int = 0
    vfolders: dict[str, list[int]] = field(default_factory=dict)


def scan_scope(
    scope_dir: str, progress: Callable[[int], None] | None = None, every: int = 50_000,
    hidden: Container[str] = (),
) -> ScanResult:
    """Total the scope directory: bytes of distinct inodes, the directory included, and inodes.

    Per-vfolder totals are kept for every vfolder below the scope (`fusegw.layout`); `hidden`
    names in the scope directory itself (the storage's own files) are not counted.
    """
    result = ScanResult()
    seen: set[tuple[int, int]] = set()
    top = os.lstat(scope_dir)
    result.used_bytes = top.st_blocks * 512
    # (path, depth below the scope, fan-out prefix, vfolder totals or None)
    stack: list[tuple[str, int, str, list[int] | None]] = [(scope_dir, 0, "", None)]
    while stack:
        path, depth, prefix, totals = stack.pop()
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for entry in it:
                if depth == 0 and entry.name in hidden:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                child_totals = totals
                if depth == 2 and is_dir and len(prefix) == 4:
                    hex_ = vfolder_hex(prefix, entry.name)
                    if hex_ is not None:
                        # The vfolder root's own blocks are its usage; it is not one of its inodes.
                        child_totals = result.vfolders.setdefault(hex_, [0, 0])
                        child_totals[0] += st.st_blocks * 512
                result.files += 1
                if progress is not None and result.files % every == 0:
                    progress(result.files)
                if not is_dir and st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                nbytes = st.st_blocks * 512
                result.used_bytes += nbytes
                result.used_inodes += 1
                if totals is not None:
                    totals[0] += nbytes
                    totals[1] += 1
                if is_dir:
                    stack.append((entry.path, depth + 1, prefix + entry.name, child_totals))
    return result
