"""Moving a vfolder where rename(2) cannot: a copy, verified, before the source goes.

A new btrfs subvolume, an XFS project directory or an appliance's qtree answers a rename into
it with EXDEV. Then the vfolder is copied with `cp -a` (modes, owners, times, xattrs, symlinks
and the hard links within the vfolder preserved): first as a reflink copy
(`--reflink=always`: the data shared, nothing rewritten) where the filesystem offers it, else
as a plain copy. The copy is then compared with the source (`verify`): the same entries with
the same type, mode, owner, mtime, size, symlink target, xattrs and hard-link groups, and for a
plain copy the same bytes (a reflink copy shares the source's extents, so its bytes are the
source's by construction). Only a verified copy takes the vfolder's place.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections import defaultdict
from pathlib import Path

CHUNK = 1 << 20

HELD_FDS: tuple[int, ...] = ()
"""Descriptors every child (`cp`, `rm`) inherits: the migration lock's, so a child that
outlives its killed parent keeps the volume locked until it is done, and a re-run cannot race
it."""


class CopyFailed(Exception):
    """The copy could not be made or does not match its source; the source is untouched."""


def copy_tree(src: Path, dst: Path, reflink: bool = True) -> str:
    """Copy the directory `src` to the new path `dst`; "reflink" or "copy", how it was made.
    CopyFailed (with `dst` removed) if neither way works."""
    errors = []
    for mode in (("always", "never") if reflink else ("never",)):
        proc = subprocess.run(["cp", "-a", f"--reflink={mode}", "--", str(src), str(dst)],
                              capture_output=True, stdin=subprocess.DEVNULL, pass_fds=HELD_FDS)
        if proc.returncode == 0:
            return "reflink" if mode == "always" else "copy"
        errors.append(os.fsdecode(proc.stderr).strip().splitlines()[-1:] or ["failed"])
        remove_tree(dst)
    raise CopyFailed(f"cp -a {src} {dst}: {'; '.join(e[0] for e in errors)}")


def remove_tree(path: Path) -> None:
    """Remove a directory tree (or a file), as root would; gone is fine."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    # rm -rf copes with read-only directories and every odd name; one exec per tree
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True,
                   stdin=subprocess.DEVNULL, pass_fds=HELD_FDS)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in names:
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


Entry = tuple[object, ...]


def describe(root: Path, content: bool) -> tuple[dict[str, Entry], set[frozenset[str]]]:
    """Every entry below `root` (root itself as "."): its metadata (and digest), and the
    groups of paths that are hard links of one inode."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, set[str]] = defaultdict(set)
    base = str(root)
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        for name in [None, *dirnames, *filenames]:
            if name is None:
                if rel_dir != ".":
                    continue  # listed by its parent
                path, rel = dirpath, "."
            else:
                path = os.path.join(dirpath, name)
                rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            extra: object = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    inodes[st.st_ino].add(rel)
                if content:
                    extra = _digest(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            mtime = st.st_mtime_ns
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            entries[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, size,
                            extra, tuple(sorted(_xattrs(path).items())))
    return entries, {frozenset(g) for g in inodes.values() if len(g) > 1}


def verify(src: Path, copy: Path, content: bool) -> None:
    """CopyFailed, naming the first difference, unless `copy` matches `src`."""
    a, links_a = describe(src, content)
    b, links_b = describe(copy, content)
    if a != b:
        for rel in sorted(set(a) | set(b)):
            if a.get(rel) != b.get(rel):
                raise CopyFailed(f"copy of {src} differs at {rel!r}: "
                                 f"{a.get(rel)!r} != {b.get(rel)!r}")
    if links_a != links_b:
        raise CopyFailed(f"copy of {src} does not keep its hard links")


def allocated_bytes(root: Path) -> int:
    """What `du -s -B1` says: st_blocks x 512 of the distinct inodes, root included."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(str(root)):
        for name in [None, *dirnames, *filenames]:
            path = dirpath if name is None else os.path.join(dirpath, name)
            if name is None and dirpath != str(root):
                continue
            st = os.lstat(path)
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total
