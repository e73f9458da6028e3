"""An emulation of CephFS's quota xattrs over an ordinary directory tree, for the cephfs tests.

What is emulated, and how faithfully (sources: doc/cephfs/quota.rst of the Ceph tree; the MDS
Server::parse_quota_vxattr and CInode rstat code; the client's is_quota_*_exceeded checks;
the kernel's fs/ceph/xattr.c):

- `ceph.dir.rbytes`: the recursive sum of the sizes (st_size) of the non-directory inodes
  below the directory, as CephFS's rstat sums inode sizes (logical size, not blocks).
- `ceph.dir.rfiles` / `ceph.dir.rsubdirs`: recursive counts of non-directories and of
  directories; rsubdirs counts the directory itself (the MDS starts every directory's rstat
  at rsubdirs = 1). `ceph.dir.rentries` is their sum. Each hard link counts once per name.
  The `ceph.dir.*` names exist on directories only (ENODATA elsewhere) and are read-only
  (setting one gives EOPNOTSUPP, the kernel client's answer for a read-only vxattr).
  Real CephFS propagates rstats lazily (figures may lag); the emulation is always exact.
- `ceph.quota.max_bytes` / `ceph.quota.max_files`: settable on directories only (EINVAL on
  other inodes, as the MDS answers). max_bytes takes a decimal number or one with an IEC
  suffix (K, M, G, T, P, E, optionally followed by i: 100K = 102400, cast to IEC even for
  SI spellings); max_files a plain decimal number. Anything else, or a negative value, is
  EINVAL. 0 removes that limit. Reading: while the directory has a quota (either limit
  non-zero) both names read as their value ("0" for the unset one); with no quota at all
  both give ENODATA, as the kernel client's exists-callback makes them vanish. removexattr
  (`remove`) of a quota name also removes that limit. Quotas stick to the inode
  (keyed by st_dev/st_ino), so they follow renames.
- EDQUOT: CephFS clients, not the MDS, refuse growth. `write`/`create`/`mkdir` here are the
  emulated client calls: a write that would take any quota root above the path (the path's
  directories up to the emulated root) past max_bytes (rbytes + growth > max_bytes) fails
  with EDQUOT, and a creation fails with EDQUOT once rfiles + rsubdirs >= max_files, the
  two checks Client::is_quota_bytes_exceeded / is_quota_files_exceeded make. Real CephFS
  enforcement is imprecise (writers stop shortly after the limit); the emulation is exact.
  Plain os.write/open calls on the tree are not checked: only these helpers are.
- Failure injection: `fail_get`/`fail_set` map an xattr name to an errno to raise, e.g. EACCES
  for a client whose cephx capability lacks the `p` flag.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

QUOTA_NAMES = ("ceph.quota.max_bytes", "ceph.quota.max_files")
DIR_NAMES = ("ceph.dir.rbytes", "ceph.dir.rfiles", "ceph.dir.rsubdirs", "ceph.dir.rentries")
_IEC = re.compile(r"^([0-9]+)(?:([KMGTPE])i?)?$")
_IEC_SHIFT = {"K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


def _err(code: int, path: str | os.PathLike[str]) -> OSError:
    return OSError(code, os.strerror(code), str(path))


class EmulatedCephFS:
    """get/set/remove like os.getxattr/os.setxattr/os.removexattr on a CephFS mount, plus
    the client's quota-checked write/create/mkdir, over the real directory tree at `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.realpath(root)
        self.quotas: dict[tuple[int, int], dict[str, int]] = {}
        self.fail_get: dict[str, int] = {}
        self.fail_set: dict[str, int] = {}
        self.calls: list[tuple[str, str, str]] = []  # (op, path, name)

    # -- recursive statistics --------------------------------------------------------------

    def rstats(self, path: str | os.PathLike[str]) -> tuple[int, int, int]:
        """(rbytes, rfiles, rsubdirs) of the directory `path`, itself among the subdirs."""
        rbytes, rfiles, rsubdirs = 0, 0, 1
        stack = [os.fspath(path)]
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        rsubdirs += 1
                        stack.append(entry.path)
                    else:
                        rfiles += 1
                        rbytes += st.st_size
        return rbytes, rfiles, rsubdirs

    def _key(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    # -- the xattr interface (what CephFSBackend.xattrs needs) -------------------------------

    def get(self, path: str, name: str) -> bytes:
        self.calls.append(("get", path, name))
        if name in self.fail_get:
            raise _err(self.fail_get[name], path)
        st = os.stat(path)  # ENOENT as the kernel gives it
        is_dir = stat.S_ISDIR(st.st_mode)
        if name in DIR_NAMES:
            if not is_dir:
                raise _err(errno.ENODATA, path)
            rbytes, rfiles, rsubdirs = self.rstats(path)
            value = {"ceph.dir.rbytes": rbytes, "ceph.dir.rfiles": rfiles,
                     "ceph.dir.rsubdirs": rsubdirs,
                     "ceph.dir.rentries": rfiles + rsubdirs}[name]
            return str(value).encode()
        if name in QUOTA_NAMES:
            quota = self.quotas.get((st.st_dev, st.st_ino))
            if not quota or not any(quota.values()):
                raise _err(errno.ENODATA, path)
            return str(quota.get(name, 0)).encode()
        raise _err(errno.ENODATA, path)

    def set(self, path: str, name: str, value: bytes) -> None:
        self.calls.append(("set", path, name))
        if name in self.fail_set:
            raise _err(self.fail_set[name], path)
        st = os.stat(path)
        if name in DIR_NAMES:
            raise _err(errno.EOPNOTSUPP, path)
        if name not in QUOTA_NAMES:
            raise _err(errno.EOPNOTSUPP, path)  # other ceph.* names are not emulated
        if not stat.S_ISDIR(st.st_mode):
            raise _err(errno.EINVAL, path)
        number = self._parse(name, value)
        if number is None:
            raise _err(errno.EINVAL, path)
        quota = self.quotas.setdefault((st.st_dev, st.st_ino), {})
        if number == 0:
            quota.pop(name, None)
        else:
            quota[name] = number

    def remove(self, path: str, name: str) -> None:
        self.calls.append(("remove", path, name))
        if name not in QUOTA_NAMES:
            raise _err(errno.EOPNOTSUPP, path)
        self.quotas.get(self._key(path), {}).pop(name, None)

    @staticmethod
    def _parse(name: str, value: bytes) -> int | None:
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        if name == "ceph.quota.max_files":
            return int(text) if text.isdigit() else None
        m = _IEC.match(text)
        if m is None:
            return None
        return int(m.group(1)) << _IEC_SHIFT.get(m.group(2) or "", 0)

    # -- the client's quota checks -----------------------------------------------------------

    def _quota_roots(self, path: str | os.PathLike[str]) -> list[tuple[str, dict[str, int]]]:
        """(directory, quota) for the directories from `path`'s parent up to the root."""
        roots = []
        d = os.path.dirname(os.path.realpath(path))
        while True:
            quota = self.quotas.get(self._key(d))
            if quota:
                roots.append((d, quota))
            if d == self.root or not d.startswith(self.root + os.sep):
                return roots
            d = os.path.dirname(d)

    def write(self, path: str | os.PathLike[str], data: bytes, append: bool = False) -> None:
        """Write a file as a CephFS client would: EDQUOT if the growth passes a max_bytes."""
        old = os.path.getsize(path) if os.path.exists(path) else None
        new_size = (old or 0) + len(data) if append else len(data)
        growth = new_size - (old or 0)
        if old is None:
            self._check_files(path)
        for d, quota in self._quota_roots(path):
            limit = quota.get("ceph.quota.max_bytes", 0)
            if limit and growth > 0 and self.rstats(d)[0] + growth > limit:
                raise _err(errno.EDQUOT, path)
        with open(path, "ab" if append else "wb") as f:
            f.write(data)

    def create(self, path: str | os.PathLike[str]) -> None:
        """Create an empty file: EDQUOT once a quota root holds max_files entries."""
        self._check_files(path)
        with open(path, "xb"):
            pass

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        self._check_files(path)
        os.mkdir(path)

    def _check_files(self, path: str | os.PathLike[str]) -> None:
        for d, quota in self._quota_roots(path):
            limit = quota.get("ceph.quota.max_files", 0)
            if limit:
                _, rfiles, rsubdirs = self.rstats(d)
                if rfiles + rsubdirs >= limit:
                    raise _err(errno.EDQUOT, path)


def tree_bytes(path: Path) -> int:
    """Sum of file sizes below `path`, computed independently of the emulation."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
