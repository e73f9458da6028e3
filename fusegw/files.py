"""File work for the manager's file routes and vfolder clone: confined, and through the mount.

Every operation goes through the gateway's own mount point, as any writer's would: the FUSE
handlers account and enforce it exactly as they do a user's change (an EDQUOT here is the one
a user would get, and usage stays equal to `du -s -B1`). So every function here blocks on
FUSE requests that the gateway's trio loop serves: call them in worker threads only, never
on the loop's own thread (that would deadlock).

Every relpath is confined to its vfolder twice over: lexically (no `..`, no absolute path, no
NUL, bounded lengths) and at resolution time, with openat2(RESOLVE_BENEATH) from the
vfolder's root, so a symlink that leads out of the vfolder is refused (EXDEV) instead of
followed. The final component of a delete, rename or move is acted on through its parent
directory's descriptor and never followed: a symlink is removed or moved, not its target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fusegw.errors import Forbidden, GatewayError, InvalidParameters, VFolderNotFound
from fusegw.fs.syscalls import RENAME_NOREPLACE, renameat2
from fusegw.ids import VFolderID
from fusegw.layout import vfolder_names

log = logging.getLogger("fusegw.files")

PATH_MAX = 4096
NAME_MAX = 255
SCANDIR_LIMIT = 1000  # the storage proxy's default `scandir-limit`
CHUNK = 1 << 20
CLONE_PREFIX = ".fusegw-clone-"
DIR_MODE = 0o755  # the storage proxy's mkdir mode
PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
Parts = tuple[str, ...]


# -- errors: one class per answer ---------------------------------------------------------------


class PathEscape(InvalidParameters):
    """A relpath that is not a plain path inside its vfolder (400, naming the field)."""


class FileNotFound(GatewayError):
    kind = "file/not-found"
    title = "No such file or directory in the vfolder"
    status = 404
    errno = errno.ENOENT


class FileConflict(GatewayError):
    kind = "file/conflict"
    title = "The path is taken, or is not of the kind asked for"
    status = 409
    errno = errno.EEXIST


class QuotaExceeded(GatewayError):
    """The change would take the scope past its limit (EDQUOT through the mount)."""

    kind = "quota/exceeded"
    title = "Quota exceeded"
    status = 413
    errno = errno.EDQUOT


class NoSpace(GatewayError):
    kind = "volume/no-space"
    title = "No space left on the volume"
    status = 413
    errno = errno.ENOSPC


class FileOperationFailed(GatewayError):
    kind = "file/operation-failed"
    title = "The file operation failed"
    status = 400
    errno = errno.EIO


class CloneBusy(GatewayError):
    kind = "vfolder/clone/busy"
    title = "A clone of this vfolder is in progress"
    status = 409
    errno = errno.EBUSY


_ERRNO_CLASSES: dict[int, type[GatewayError]] = {
    errno.ENOENT: FileNotFound,
    errno.EEXIST: FileConflict, errno.ENOTEMPTY: FileConflict, errno.EISDIR: FileConflict,
    errno.ENOTDIR: FileConflict, errno.EBUSY: FileConflict,
    errno.EDQUOT: QuotaExceeded, errno.ENOSPC: NoSpace,
    errno.EACCES: Forbidden, errno.EPERM: Forbidden,
}


def mapped(e: OSError, paths: list[str]) -> GatewayError:
    """The 4xx problem for an OSError, with the storage proxy's `errno` and `paths` fields."""
    cls = _ERRNO_CLASSES.get(e.errno or 0, FileOperationFailed)
    what = ", ".join(paths) or "."
    return cls(f"{e.strerror or e}: {what}", data={"errno": e.errno, "paths": paths})


@contextlib.contextmanager
def os_errors(*paths: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise mapped(e, list(paths)) from None


# -- relpaths, checked as text ------------------------------------------------------------------


def relpath(value: Any, name: str) -> Parts:
    """A relpath's components: relative, no `..`, no NUL, encodable, within PATH_MAX and
    NAME_MAX. `""` and `"."` are the vfolder's root (the empty tuple)."""
    if not isinstance(value, str):
        raise PathEscape(f"{name} must be a string", data={name: "not a string"})
    if "\0" in value:
        raise PathEscape(f"{name} contains NUL", data={name: "contains NUL"})
    if value.startswith("/"):
        raise PathEscape(f"{name} must be relative to the vfolder", data={name: "absolute"})
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        raise PathEscape(f"{name} is not encodable", data={name: "not encodable"}) from None
    if len(raw) >= PATH_MAX:
        raise PathEscape(f"{name} is too long", data={name: f"over {PATH_MAX - 1} bytes"})
    parts = tuple(c for c in value.split("/") if c not in ("", "."))
    if ".." in parts:
        raise PathEscape(f"{name} leaves the vfolder", data={name: "contains .."})
    if any(len(os.fsencode(c)) > NAME_MAX for c in parts):
        raise PathEscape(f"{name} has a name over {NAME_MAX} bytes",
                         data={name: "name too long"})
    return parts


def entry_name(value: Any, name: str) -> str:
    """A single name (rename's `new_name`): no `/`, not `.` or `..`."""
    parts = relpath(value, name)
    if len(parts) != 1 or parts[0] != value:
        raise PathEscape(f"{name} must be one plain name", data={name: "not a plain name"})
    return parts[0]


def shown(parts: Parts) -> str:
    return "/".join(parts) or "."


# -- openat2(RESOLVE_BENEATH) -------------------------------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
SYS_OPENAT2 = 437  # x86_64 and aarch64 alike
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08


def open_beneath(root: int, parts: Parts, flags: int) -> int:
    """Open `parts` below the directory `root`, following only symlinks that stay below it.

    A symlink (or anything) leading out is a PathEscape; other failures are OSErrors."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    path = os.fsencode("/".join(parts) or ".")
    for _ in range(8):  # EAGAIN: a concurrent rename raced the walk; try again
        fd = int(_libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(root),
                               ctypes.c_char_p(path), ctypes.byref(how),
                               ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    if err in (errno.EXDEV, errno.ELOOP):
        raise PathEscape(f"{shown(parts)} leads out of the vfolder (a symlink)",
                         data={"relpath": "leads out of the vfolder"})
    raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _iso(t: float) -> str:
    """The storage proxy's time format: ISO 8601 in UTC with its offset."""
    return datetime.fromtimestamp(t, UTC).isoformat()


# -- the operations -----------------------------------------------------------------------------


class MountFiles:
    """File work on one volume's vfolders through the mount at `mountpoint`. Every method
    blocks on the mount: run it in a worker thread."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint

    @contextlib.contextmanager
    def root(self, vfid: VFolderID) -> Iterator[int]:
        """The vfolder's root in the mount (O_PATH), found without following a symlink."""
        names = [vfid.quota_scope_id.pathname, *vfolder_names(vfid.hex)]
        fd = os.open(self.mountpoint, PATH_DIR)
        try:
            for name in names:
                try:
                    child = os.open(name, PATH_DIR | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise VFolderNotFound(f"vfolder {vfid} does not exist",
                                              data={"vfid": str(vfid)}) from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def exists(self, vfid: VFolderID) -> bool:
        try:
            with self.root(vfid):
                return True
        except VFolderNotFound:
            return False

    @contextlib.contextmanager
    def _parent(self, root: int, parts: Parts) -> Iterator[tuple[int, str]]:
        """The directory holding the last component (confined) and that component's name."""
        with os_errors(shown(parts)), closing(open_beneath(root, parts[:-1], PATH_DIR)) as fd:
            yield fd, parts[-1]

    def _is_dir(self, root: int, parts: Parts) -> bool:
        try:
            os.close(open_beneath(root, parts, PATH_DIR))
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise mapped(e, [shown(parts)]) from None
        return True

    # mkdir ------------------------------------------------------------------------------------

    def mkdir(self, vfid: VFolderID, parts: Parts, parents: bool, exist_ok: bool) -> None:
        """Path.mkdir(0o755, parents, exist_ok), as the storage proxy does; a new directory
        takes the owner of the one it is made in (the vfolder's owner, in practice)."""
        with self.root(vfid) as root:
            if not parts:
                if not exist_ok:
                    raise FileConflict("the vfolder's root exists", data={"paths": ["."]})
                return
            for depth in range(0 if parents else len(parts) - 1, len(parts)):
                last = depth == len(parts) - 1
                self._mkdir_one(root, parts[:depth + 1], exist_ok or not last)

    def _mkdir_one(self, root: int, parts: Parts, exist_ok: bool) -> None:
        with self._parent(root, parts) as (parent, name), os_errors(shown(parts)):
            try:
                os.mkdir(name, DIR_MODE, dir_fd=parent)
            except FileExistsError:
                if not exist_ok or not self._is_dir(root, parts):
                    raise
                return
            st = os.fstat(parent)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)

    # list -------------------------------------------------------------------------------------

    def listdir(self, vfid: VFolderID, parts: Parts) -> list[dict[str, Any]]:
        """The directory's entries (at most SCANDIR_LIMIT), in the storage proxy's shape."""
        with (self.root(vfid) as root, os_errors(shown(parts)),
              closing(open_beneath(root, parts, READ_DIR)) as fd):
            items: list[dict[str, Any]] = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    if len(items) == SCANDIR_LIMIT:
                        break
                    item = _item(fd, entry)
                    if item is not None:
                        items.append(item)
        return sorted(items, key=lambda i: str(i["name"]))

    # rename, move -----------------------------------------------------------------------------

    def rename(self, vfid: VFolderID, parts: Parts, new_name: str) -> None:
        self.move(vfid, parts, (*parts[:-1], new_name))

    def move(self, vfid: VFolderID, src: Parts, dst: Parts) -> None:
        """shutil.move's rules, as the storage proxy: onto `dst`, or into it if it is a
        directory (409 if the name is taken there). Within one vfolder, a plain rename."""
        if not src:
            raise PathEscape("the vfolder's root cannot be moved", data={"relpath": "root"})
        with self.root(vfid) as root:
            with self._parent(root, src) as (sparent, sname), os_errors(shown(src)):
                os.stat(sname, dir_fd=sparent, follow_symlinks=False)
            target = (*dst, src[-1]) if self._is_dir(root, dst) else dst
            with self._parent(root, src) as (sparent, sname), \
                    self._parent(root, target) as (dparent, dname), \
                    os_errors(shown(src), shown(target)):
                if target != dst and _lexists(dparent, dname):
                    raise FileExistsError(errno.EEXIST, "Destination path already exists")
                os.rename(sname, dname, src_dir_fd=sparent, dst_dir_fd=dparent)

    # delete -----------------------------------------------------------------------------------

    def delete(self, vfid: VFolderID, paths: list[Parts], recursive: bool) -> None:
        """Each path (a directory only with `recursive`; a symlink itself, never its target).
        All must exist before anything goes, so a bad list changes nothing."""
        with self.root(vfid) as root:
            for parts in paths:
                with self._parent(root, parts) as (parent, name), os_errors(shown(parts)):
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode) and not recursive:
                        raise IsADirectoryError(errno.EISDIR, "Is a directory")
            for parts in paths:
                try:
                    self._delete_one(root, parts)
                except FileNotFound:
                    continue  # went with an earlier path of the list

    def _delete_one(self, root: int, parts: Parts) -> None:
        with self._parent(root, parts) as (parent, name), os_errors(shown(parts)):
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)

    # fetch ------------------------------------------------------------------------------------

    def open_file(self, vfid: VFolderID, parts: Parts) -> int:
        """A regular file opened for reading. Its kind is checked on an O_PATH descriptor
        first: opening a FIFO or a device to find out would block or act on it."""
        with self.root(vfid) as root, os_errors(shown(parts)):
            with closing(open_beneath(root, parts, os.O_PATH)) as probe:
                st = os.fstat(probe)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "Is a directory")
                if not stat.S_ISREG(st.st_mode):
                    raise FileOperationFailed(f"{shown(parts)} is not a regular file",
                                              data={"paths": [shown(parts)]})
                fd = open_beneath(root, parts, os.O_RDONLY | os.O_NONBLOCK)
            again = os.fstat(fd)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise FileConflict(f"{shown(parts)} changed while opened",
                                   data={"paths": [shown(parts)]})
            return fd


def _lexists(dirfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _item(dirfd: int, entry: os.DirEntry[str]) -> dict[str, Any] | None:
    """One listing entry: FILE, DIRECTORY or SYMLINK (the storage proxy's DirEntryType
    names; anything else is FILE, as there), times in its ISO format. A symlink's target is
    its own text, never resolved."""
    try:
        st = entry.stat(follow_symlinks=False)
        target = os.readlink(entry.name, dir_fd=dirfd) if stat.S_ISLNK(st.st_mode) else ""
    except FileNotFoundError:  # gone during the listing
        return None
    kind = ("SYMLINK" if stat.S_ISLNK(st.st_mode) else
            "DIRECTORY" if stat.S_ISDIR(st.st_mode) else "FILE")
    return {"name": entry.name, "type": kind,
            "stat": {"mode": st.st_mode, "size": st.st_size, "created": _iso(st.st_ctime),
                     "modified": _iso(st.st_mtime)},
            "symlink_target": target}


# -- clone --------------------------------------------------------------------------------------


@dataclass
class CloneJob:
    """One clone, as `GET /` shows it. Its counters are written by the copying thread only."""

    src: VFolderID
    dst: VFolderID
    started_at: float = field(default_factory=time.time)
    state: str = "copying"  # then "done" or "failed"
    files: int = 0
    bytes: int = 0
    skipped: int = 0  # FIFOs, sockets, devices: not copied
    finished_at: float | None = None
    error: GatewayError | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def status(self) -> dict[str, Any]:
        return {"src": str(self.src), "dst": str(self.dst), "state": self.state,
                "files": self.files, "bytes": self.bytes, "skipped": self.skipped,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "error": self.error.detail if self.error else None}


@dataclass
class _Frame:
    src: int  # readable directory descriptors
    dst: int
    names: list[str]
    st: os.stat_result | None  # None: the top, whose metadata the destination keeps
    path: str = ""  # below the copy's top


@dataclass
class _Copy:
    """One tree copy: its job, the top of the destination, and the first copy of each
    source inode with more than one link, so further links are links again (as `cp -a`)."""

    job: CloneJob
    top: int
    links: dict[tuple[int, int], str] = field(default_factory=dict)


class Cloner:
    """Copies a vfolder into another through the mount: charged to the destination's scope
    and refused past its limit. The copy goes into a hidden directory inside the destination
    and its entries are moved into place only when all is copied; on any failure what was
    copied is removed, so the destination is either the whole copy or as empty as before."""

    def __init__(self, files: MountFiles) -> None:
        self.files = files

    def prepare(self, src: VFolderID, dst: VFolderID) -> None:
        """The source must exist and the destination be empty; a hidden copy a stopped
        gateway left behind goes."""
        with self.files.root(src), self.files.root(dst) as root, os_errors("."), \
                closing(open_beneath(root, (), READ_DIR)) as fd:
            names = os.listdir(fd)
            if any(not n.startswith(CLONE_PREFIX) for n in names):
                raise FileConflict(f"destination vfolder {dst} is not empty",
                                   data={"dst_vfid": "not empty"})
            for name in names:
                shutil.rmtree(name, dir_fd=root)

    def run(self, job: CloneJob) -> None:
        """The whole clone, in its own thread; the outcome goes to `job`."""
        try:
            self._clone(job)
            job.state = "done"
        except GatewayError as e:
            job.state, job.error = "failed", e
        except OSError as e:
            job.state, job.error = "failed", mapped(e, [])
        except Exception as e:  # a bug: the job says so instead of hanging in "copying"
            log.exception("clone failed src=%s dst=%s", job.src, job.dst)
            job.state, job.error = "failed", FileOperationFailed(f"internal error: {e}")
        finally:
            job.finished_at = time.time()
            job.done.set()
        log.info("clone src=%s dst=%s state=%s files=%d bytes=%d", job.src, job.dst,
                 job.state, job.files, job.bytes)

    def _clone(self, job: CloneJob) -> None:
        tmp = CLONE_PREFIX + secrets.token_hex(8)
        with self.files.root(job.src) as sroot, self.files.root(job.dst) as droot:
            os.mkdir(tmp, 0o700, dir_fd=droot)
            try:
                with closing(open_beneath(sroot, (), READ_DIR)) as s, \
                        closing(os.open(tmp, READ_DIR | os.O_NOFOLLOW, dir_fd=droot)) as d:
                    self._copy_tree(_Copy(job, d), s)
                    self._move_into_place(d, droot)
                os.rmdir(tmp, dir_fd=droot)
            except BaseException:
                shutil.rmtree(tmp, dir_fd=droot, onerror=_log_cleanup)
                raise

    def _copy_tree(self, copy: _Copy, src: int) -> None:
        """Depth first with an explicit stack (no recursion limit on deep trees)."""
        frames = [_Frame(os.dup(src), os.dup(copy.top), sorted(os.listdir(src)), None)]
        try:
            while frames:
                top = frames[-1]
                if not top.names:
                    frames.pop()
                    _finish_dir(top)
                    continue
                child = self._copy_entry(copy, top, top.names.pop())
                if child is not None:
                    frames.append(child)
        finally:
            for frame in frames:
                os.close(frame.src)
                os.close(frame.dst)

    def _copy_entry(self, copy: _Copy, top: _Frame, name: str) -> _Frame | None:
        job = copy.job
        try:
            st = os.stat(name, dir_fd=top.src, follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed from the source during the copy
        path = f"{top.path}/{name}" if top.path else name
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=top.dst)
            job.files += 1
            s = os.open(name, READ_DIR | os.O_NOFOLLOW, dir_fd=top.src)
            try:
                names = sorted(os.listdir(s))
                return _Frame(s, os.open(name, READ_DIR | os.O_NOFOLLOW, dir_fd=top.dst),
                              names, st, path)
            except BaseException:
                os.close(s)
                raise
        first = copy.links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first is not None:
            os.link(first, name, src_dir_fd=copy.top, dst_dir_fd=top.dst, follow_symlinks=False)
            job.files += 1
        elif stat.S_ISREG(st.st_mode):
            _copy_file(job, top, name, st)
            if st.st_nlink > 1:
                copy.links[(st.st_dev, st.st_ino)] = path
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=top.src), name, dir_fd=top.dst)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=top.dst, follow_symlinks=False)
            job.files += 1
        else:
            job.skipped += 1
        return None

    @staticmethod
    def _move_into_place(tmp: int, root: int) -> None:
        """Each copied top-level entry into the destination's root, never over anything;
        on a failure the ones already moved go again."""
        moved: list[str] = []
        try:
            for name in sorted(os.listdir(tmp)):
                renameat2(tmp, os.fsencode(name), root, os.fsencode(name), RENAME_NOREPLACE)
                moved.append(name)
        except BaseException:
            for name in moved:
                with contextlib.suppress(OSError):
                    _remove(root, name)
            raise


def _copy_file(job: CloneJob, top: _Frame, name: str, st: os.stat_result) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with closing(os.open(name, flags, dir_fd=top.src)) as s:
        if not stat.S_ISREG(os.fstat(s).st_mode):  # swapped for something else meanwhile
            job.skipped += 1
            return
        new = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        d = os.open(name, new, 0o600, dir_fd=top.dst)
        try:
            while buf := os.read(s, CHUNK):
                _write_all(d, buf)
                job.bytes += len(buf)
            os.fchown(d, st.st_uid, st.st_gid)
            os.fchmod(d, stat.S_IMODE(st.st_mode))
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(d)  # a deferred error (EDQUOT at flush) raises here too
    job.files += 1


def _write_all(fd: int, buf: bytes) -> None:
    """A write may end short at the limit; the next one then fails with EDQUOT."""
    view = memoryview(buf)
    while view:
        view = view[os.write(fd, view):]


def _finish_dir(frame: _Frame) -> None:
    """Owner, mode, then times: last, since creating the entries changed the mtime."""
    try:
        if frame.st is not None:
            os.fchown(frame.dst, frame.st.st_uid, frame.st.st_gid)
            os.fchmod(frame.dst, stat.S_IMODE(frame.st.st_mode))
            os.utime(frame.dst, ns=(frame.st.st_atime_ns, frame.st.st_mtime_ns))
    finally:
        os.close(frame.src)
        os.close(frame.dst)


def _remove(dirfd: int, name: str) -> None:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dirfd, onerror=_log_cleanup)
    else:
        os.unlink(name, dir_fd=dirfd)


def _log_cleanup(func: Any, path: str, exc_info: Any) -> None:
    log.error("clone cleanup: %s %s failed: %s", getattr(func, "__name__", func), path,
              exc_info[1])
