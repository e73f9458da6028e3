"""Generated flat version-2 volumes, and manifests that tell whether a migration kept them.

`make_v2_volume(volume, count, seed)` writes `count` vfolders at `<fid[0:2]>/<fid[2:4]>/
<fid[4:]>`, each holding files, a subdirectory, hard links, symlinks (one dangling), names with
spaces, quotes, a newline and bytes that are not UTF-8, modes, owners, times (set last,
directories too) and xattrs. The same seed makes the same volume, byte for byte and time for
time, so two copies can be migrated two ways and compared. It answers each vfolder's folder hex
with its quota scope and max_size (MiB or None): a source for `--mapping`.

`manifest(root)` describes a tree: per relative path (bytes) the type and mode, uid, gid,
mtime_ns, size, sha256 or symlink target, xattrs; and the hard-link groups.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import stat
import uuid
from pathlib import Path
from typing import Any

ODD_NAMES = [b"with space", b"quote'\"s", b"new\nline", b"\xff\xfe-not-utf8", b"-dash",
             b"$(echo no)", b"*glob?"]

Manifest = tuple[dict[bytes, tuple[Any, ...]], set[frozenset[bytes]]]


def make_v2_volume(volume: Path, count: int, seed: int = 1, scopes: int = 10,
                   version: bool = True) -> dict[str, tuple[str, int | None]]:
    rng = random.Random(seed)
    volume.mkdir(parents=True, exist_ok=True)
    if version:
        (volume / "version.txt").write_text("2\n")
    qsids = [f"{rng.choice(['user', 'project'])}:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
             for _ in range(scopes)]
    mapping: dict[str, tuple[str, int | None]] = {}
    for _ in range(count):
        fid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        root = volume / fid[0:2] / fid[2:4] / fid[4:]
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir()
        _fill(os.fsencode(root), rng)
        mapping[fid] = (rng.choice(qsids), rng.choice([None, 1, 10, rng.randint(2, 500)]))
    t = 1_600_000_000_000_000_000
    for a in os.listdir(volume):  # the fan-out too: a script's mv must not care
        if len(a) == 2:
            os.utime(volume / a, ns=(t, t))
    return mapping


def _fill(root: bytes, rng: random.Random) -> None:
    j = os.path.join
    os.mkdir(j(root, b"sub"))
    os.mkdir(j(root, b"sub", b"deeper"))
    files = [j(root, b"data.bin"), j(root, b"sub", b"notes.txt"),
             j(root, b"sub", b"deeper", rng.choice(ODD_NAMES)), j(root, rng.choice(ODD_NAMES))]
    for path in files:
        with open(path, "wb") as f:
            f.write(rng.randbytes(rng.choice([0, 10, 3000, 70000])))
    os.link(files[0], j(root, b"sub", b"hardlink-of-data"))
    os.link(files[0], j(root, b"hardlink two"))
    os.symlink(b"data.bin", j(root, b"link-to-data"))
    os.symlink(b"../nowhere", j(root, b"sub", b"dangling"))
    os.mkfifo(j(root, b"fifo"))
    os.setxattr(files[1], b"user.origin", rng.randbytes(8))
    os.setxattr(j(root, b"sub"), b"user.dir", b"yes")
    os.chmod(files[1], 0o600)
    os.chmod(files[2], 0o4755)
    os.chmod(j(root, b"sub", b"deeper"), 0o700)
    os.chown(files[2], 1234, 2345)
    os.lchown(j(root, b"link-to-data"), 1234, 1234)
    os.chown(j(root, b"sub"), 4321, 0)
    # times last, deepest first, so setting them is not undone by a later change
    t = 1_600_000_000_000_000_000 + rng.randrange(10**15)
    for dirpath, dirnames, filenames in sorted(os.walk(root), key=lambda w: -len(w[0])):
        for name in dirnames + filenames:
            t += rng.randrange(10**9)
            os.utime(j(dirpath, name), ns=(t, t), follow_symlinks=False)
        os.utime(dirpath, ns=(t + 17, t + 31))


def manifest(root: Path) -> Manifest:
    entries: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[int, set[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [b"", *dirnames, *filenames]:
            if not name and dirpath != base:
                continue
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what: Any = hashlib.sha256(f.read()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = None
            xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                                  for n in os.listxattr(path, follow_symlinks=False)))
            size = None if stat.S_ISDIR(st.st_mode) else st.st_size
            entries[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, size, what, xattrs)
    return entries, {frozenset(g) for g in inodes.values()}


def manifests(volume: Path, where: dict[str, str]) -> dict[str, Manifest]:
    """The manifest of each vfolder, by folder hex; `where` gives its path below `volume`."""
    return {fid: manifest(volume / rel) for fid, rel in where.items()}


def flat(fid: str) -> str:
    return f"{fid[0:2]}/{fid[2:4]}/{fid[4:]}"


def v3(qsid: str, fid: str) -> str:
    return f"{uuid.UUID(qsid.split(':', 1)[1]).hex}/{flat(fid)}"


def write_mapping(path: Path, mapping: dict[str, tuple[str, int | None]],
                  hyphenated: bool = True) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "quota_scope_id", "max_size"])
        for i, (fid, (qsid, size)) in enumerate(sorted(mapping.items())):
            shown = str(uuid.UUID(fid)) if hyphenated and i % 2 else fid
            w.writerow([shown, qsid, "" if size is None else size])
    return path
