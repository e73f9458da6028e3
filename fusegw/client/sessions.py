"""Upload sessions: bytes kept under `.fusegw/uploads/`, charged to the target scope as they
arrive, moved into the vfolder when complete.

Accounting, through the ledger's own API (as fusegw/fs/operations.py `write`): each piece
reserves what it may allocate (`QuotaLedger.reserve`), is written, and settles with what the
file really grew by (`st_blocks`); so an upload past the scope's limit is refused before the
excess is stored. A session's charge (`charged`) moves with the file when it
is renamed into place (same filesystem), and goes when an abandoned session is removed. A rescan
of a scope (after an unclean stop, or a repair) counts only the scope's directory, so the
service is a ledger `Settler`: `forget_scope` adds the scope's sessions back after it.
Sessions survive a restart: each is a JSON record beside its data file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from backends.atomic import write_atomic
from fusegw.client.errors import (
    NoSuchUploadSession,
    UploadConflict,
    UploadQuotaExceeded,
    UploadTooLarge,
)
from fusegw.client.paths import open_dir_in
from fusegw.control.app import ClientGone
from fusegw.errors import VFolderNotFound
from fusegw.files import PATH_DIR, MountFiles, open_beneath, os_errors
from fusegw.fs import syscalls
from fusegw.ids import VFolderID
from fusegw.layout import STATE_DIR
from fusegw.ledger import Ledger, Reservation, ScopeUsage
from fusegw.ledger.growth import entry_growth, tree_growth, write_bound
from fusegw.ledger.usage import QuotaExceeded, leaves_with_name

log = logging.getLogger("fusegw.client")

UPLOADS_DIR = "uploads"
PIECE = 1024 * 1024  # bytes gathered before each admitted write
SYNC_EVERY = 64 * 2**20  # written back and re-measured this often within one PATCH
FILE_MODE = 0o644
COPY_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC

Invalidate = Callable[[list[str]], Awaitable[None]]
Release = Callable[[os.stat_result], int]


@dataclass
class Session:
    id: str
    vfid: VFolderID
    parts: list[str]
    size: int
    expires: float
    charged: int = 0  # bytes of the data file the ledger holds for this session
    lock: trio.Lock = field(default_factory=trio.Lock)

    def record(self) -> dict[str, Any]:
        return {"session": self.id, "vfid": str(self.vfid), "relpath": "/".join(self.parts),
                "size": self.size, "expires": self.expires}


class Uploads:
    def __init__(self, source: Path, mountpoint: Path, ledger: Ledger, expire: float,
                 invalidate: Invalidate, release: Release,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.mountpoint = mountpoint
        self.ledger = ledger
        self.expire = expire
        self.invalidate = invalidate
        self.release = release
        self.clock = clock
        self.dir = source / STATE_DIR / UPLOADS_DIR
        self.sessions: dict[str, Session] = {}
        self.blksize = 4096

    # -- the store ------------------------------------------------------------------------

    def open(self) -> None:
        """Load the sessions a previous run left (their charge is in the ledger's snapshot,
        or comes back when their scope's rescan ends: `forget_scope`)."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.blksize = os.statvfs(self.dir).f_bsize or 4096
        names = set(os.listdir(self.dir))
        for name in sorted(n for n in names if n.endswith(".json")):
            sid = name[:-5]
            try:
                rec = json.loads((self.dir / name).read_text())
                session = Session(sid, VFolderID.parse(rec["vfid"]), rec["relpath"].split("/"),
                                  int(rec["size"]), float(rec["expires"]))
                session.charged = os.stat(self.dir / sid).st_blocks * 512
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("upload session dropped session=%s error=%s", sid, e)
                with contextlib.suppress(OSError):
                    os.unlink(self.dir / name)
                continue
            self.sessions[sid] = session
        log.info("upload sessions loaded count=%d", len(self.sessions))

    async def create(self, vfid: VFolderID, parts: list[str], size: int) -> Session:
        """A new session (the storage proxy's `prepare_upload`), refused at once where even
        an empty scope could not take `size` more bytes and a file."""
        scope = self._scope(vfid)
        if scope.enforce_bytes and scope.limit_bytes and size > scope.limit_bytes:
            raise QuotaExceeded(f"{scope.qsid}: an upload of {size} bytes exceeds the byte "
                                f"limit {scope.limit_bytes}")
        session = Session(secrets.token_hex(16), vfid, parts, size, self.clock() + self.expire)
        data = json.dumps(session.record()).encode()
        await trio.to_thread.run_sync(write_atomic, self.dir / f"{session.id}.json", data, 0o600)
        os.close(os.open(self.dir / session.id,
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self.sessions[session.id] = session
        return session

    def find(self, claims: dict[str, Any]) -> Session:
        session = self.sessions.get(str(claims.get("session")))
        if session is None or str(session.vfid) != claims.get("vfid"):
            raise NoSuchUploadSession("no such upload session (finished, expired or unknown)")
        return session

    def offset(self, session: Session) -> int:
        try:
            return os.stat(self.dir / session.id).st_size
        except FileNotFoundError:
            raise NoSuchUploadSession("the upload session's data is gone") from None

    def _scope(self, vfid: VFolderID) -> ScopeUsage:
        scope = self.ledger.scopes.get(vfid.quota_scope_id.pathname)
        if scope is None or scope.qsid != vfid.quota_scope_id:
            raise VFolderNotFound(f"vfolder {vfid} does not exist")
        return scope

    def _charge(self, session: Session, scope: ScopeUsage, nbytes: int, ninodes: int = 0
                ) -> None:
        if nbytes or ninodes:
            scope.charge(scope.vfolder(session.vfid.hex), nbytes, ninodes)

    def _uncharge(self, session: Session) -> None:
        """Take a session's charge back; a vfolder deleted meanwhile took it along (its
        delete uncharges the vfolder's figures, which held it)."""
        scope = self.ledger.scopes.get(session.vfid.quota_scope_id.pathname)
        if scope is not None and session.vfid.hex in scope.vfolders and session.charged:
            self.ledger.begin_change(scope)
            self._charge(session, scope, -session.charged)
        session.charged = 0

    def _check_vfolder(self, session: Session) -> None:
        """The target vfolder must still be there (on the backing side: no mount involved)."""
        try:
            st = os.stat(self.source / session.vfid.relpath(), follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise VFolderNotFound(f"vfolder {session.vfid} does not exist any more")

    # -- Settler: the ledger's rescans count only scope directories ------------------------

    def pending(self, scope: ScopeUsage) -> bool:
        return False

    async def settle(self, scope: ScopeUsage) -> None:
        return None

    def forget_scope(self, scope: ScopeUsage) -> None:
        """A rescan just set the scope's figures from its directory: add its sessions back."""
        for session in self.sessions.values():
            if session.vfid.quota_scope_id.pathname != scope.pathname:
                continue
            with contextlib.suppress(OSError):
                session.charged = os.stat(self.dir / session.id).st_blocks * 512
            self._charge(session, scope, session.charged)

    # -- PATCH ------------------------------------------------------------------------------

    async def append(self, session: Session, offset: int, body: AsyncIterator[bytes],
                     prefix: list[str] | None = None) -> int:
        """Write the body at `offset` (which must be where the upload is); the new offset.
        Bytes stored before a refusal or a dropped connection stay: the client resumes.
        `prefix` (the query's `dst_dir`) goes before the token's relpath when complete."""
        if session.lock.locked():
            raise UploadConflict("another PATCH of this upload is running")
        self._check_vfolder(session)
        async with session.lock:
            fd = os.open(self.dir / session.id, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                pos = await self._write_body(session, fd, offset, body)
            finally:
                with trio.CancelScope(shield=True):
                    await self._measure(session, fd)
                    os.close(fd)
            if pos == session.size:
                await self._finish(session, [*(prefix or []), *session.parts])
            return pos

    async def _write_body(self, session: Session, fd: int, offset: int,
                          body: AsyncIterator[bytes]) -> int:
        size = os.fstat(fd).st_size
        if offset != size:
            raise UploadConflict(f"Upload-Offset {offset} is not the upload's offset {size}",
                                 data={"Upload-Offset": size})
        pos, synced = offset, offset
        buffer = bytearray()
        try:
            async for chunk in body:
                if pos + len(buffer) + len(chunk) > session.size:
                    raise UploadTooLarge(f"more than the upload's {session.size} bytes",
                                         data={"Upload-Length": session.size})
                buffer += chunk
                if len(buffer) >= PIECE:
                    pos = await self._write(session, fd, pos, bytes(buffer))
                    buffer.clear()
                if pos - synced >= SYNC_EVERY:
                    await self._measure(session, fd)
                    synced = pos
        except ClientGone:  # what arrived before the connection dropped is kept
            if buffer:
                await self._write(session, fd, pos, bytes(buffer))
            raise
        if buffer:
            pos = await self._write(session, fd, pos, bytes(buffer))
        return pos

    async def _write(self, session: Session, fd: int, pos: int, data: bytes) -> int:
        """One admitted write, as a FUSE write is: admission against what it may allocate
        (with room for an extent-tree block), recorded, written, charged as measured."""
        scope = self._scope(session.vfid)
        before = os.fstat(fd)
        bound = write_bound(before, pos, len(data))
        room = tree_growth(1, before.st_blksize) if bound.extents else 0
        try:
            reservation = await self.ledger.reserve(scope, bound.data + room)
        except QuotaExceeded as e:
            raise UploadQuotaExceeded(f"{e.detail}: the upload stops at {pos} bytes",
                                      data={"Upload-Offset": pos}) from None
        with reservation:
            try:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, pos)
                    view, pos = view[n:], pos + n
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise UploadQuotaExceeded(f"the volume is full ({e.strerror}): the upload "
                                          f"stops at {pos} bytes",
                                          data={"Upload-Offset": pos}) from None
            finally:
                after = os.fstat(fd)
                delta = after.st_blocks * 512 - session.charged
                session.charged += delta
                reservation.charge(session.vfid.hex, delta, 0)
        return pos

    async def _measure(self, session: Session, fd: int) -> None:
        """Write back and charge what writeback allocated (extent-tree blocks), so the
        charge is what the file holds, and the offset survives a crash."""
        await trio.to_thread.run_sync(os.fdatasync, fd)
        delta = os.fstat(fd).st_blocks * 512 - session.charged
        if delta:
            with contextlib.suppress(VFolderNotFound):
                scope = self._scope(session.vfid)
                self.ledger.begin_change(scope)
                self._charge(session, scope, delta)
            session.charged += delta

    # -- completion -------------------------------------------------------------------------

    async def complete_if_whole(self, session: Session) -> int:
        """The offset; an upload whose bytes are all there but which was not moved into
        place yet (an empty upload, which no PATCH ever completes, or a stop between the
        last write and the move) is moved now."""
        offset = self.offset(session)
        if offset == session.size and not session.lock.locked():
            self._check_vfolder(session)
            async with session.lock:
                if session.id in self.sessions:
                    await self._finish(session, session.parts)
        return offset

    async def _finish(self, session: Session, parts: list[str]) -> None:
        """Move the complete file into the vfolder (parents made through the mount, so they
        are accounted like any mkdir), replacing a file of that name, and forget the session."""
        vf_path = session.vfid.relpath()
        files = MountFiles(self.mountpoint)
        if len(parts) > 1:  # through the mount: accounted and owned as the file routes' mkdir
            await trio.to_thread.run_sync(files.mkdir, session.vfid, tuple(parts[:-1]),
                                          True, True)
        with os_errors(vf_path):
            parent = open_dir_in(self.source / vf_path, parts[:-1])
        try:
            st = os.fstat(parent)
            owner = (st.st_uid, st.st_gid)
            moved = await self._rename_into(session, parent, parts[-1], owner)
        finally:
            os.close(parent)
        if not moved:  # another filesystem (a btrfs subvolume, an XFS project): copy
            await trio.to_thread.run_sync(self._copy_through_mount, session, parts, owner)
            self._drop_data(session)
        self._forget(session)
        await self.invalidate([*vf_path.split("/"), *parts])
        log.info("upload complete session=%s vfid=%s relpath=%s size=%d", session.id,
                 session.vfid, "/".join(parts), session.size)

    async def _rename_into(self, session: Session, parent: int, name: str,
                           owner: tuple[int, int]) -> bool:
        """Rename the data into place, the charge moving with it; False where the target
        is on another filesystem (a scope that is its own subvolume or project), nothing
        changed then."""
        scope = self._scope(session.vfid)
        try:
            replaced: os.stat_result | None = os.stat(name, dir_fd=parent,
                                                      follow_symlinks=False)
        except FileNotFoundError:
            replaced = None
        if replaced is not None and stat.S_ISDIR(replaced.st_mode):
            raise UploadConflict(f"{name} is a directory",
                                 data={"relpath": "a directory"})
        try:
            reservation = await self.ledger.reserve(
                scope, 0 if replaced else entry_growth(self.blksize), 0 if replaced else 1)
        except QuotaExceeded as e:
            raise UploadQuotaExceeded(f"{e.detail}: the complete upload cannot be named") from None
        with reservation:
            return self._rename_reserved(session, reservation, parent, name, owner, replaced)

    def _rename_reserved(self, session: Session, r: Reservation, parent: int, name: str,
                         owner: tuple[int, int], replaced: os.stat_result | None) -> bool:
        data = self.dir / session.id
        os.chown(data, *owner, follow_symlinks=False)
        os.chmod(data, FILE_MODE, follow_symlinks=False)
        parent_before = os.fstat(parent)
        uploads = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            syscalls.renameat2(uploads, session.id.encode(), parent, name.encode(), 0)
        except OSError as e:
            if e.errno == errno.EXDEV:
                return False
            raise
        finally:
            os.close(uploads)
        hex_ = session.vfid.hex
        r.charge(hex_, 0, 1)  # the file's bytes were charged as they came
        if replaced is not None and leaves_with_name(replaced):
            r.charge(hex_, -self.release(replaced), -1)
        r.charge(hex_, (os.fstat(parent).st_blocks - parent_before.st_blocks) * 512, 0)
        return True

    def _copy_through_mount(self, session: Session, parts: list[str],
                            owner: tuple[int, int]) -> None:
        """Copy the data into place through the mount (worker thread: it blocks on FUSE),
        where the copy is accounted and enforced as any writer's; a copy that fails (the
        storage's own EDQUOT) leaves no partial file behind."""
        shown = "/".join(parts)
        with MountFiles(self.mountpoint).root(session.vfid) as root, os_errors(shown):
            parent = open_beneath(root, tuple(parts[:-1]), PATH_DIR)
            try:
                out = os.open(parts[-1], COPY_FLAGS, FILE_MODE, dir_fd=parent)
                try:
                    with open(self.dir / session.id, "rb") as src:
                        while chunk := src.read(PIECE):
                            os.write(out, chunk)
                    os.fchown(out, *owner)
                except BaseException:
                    os.unlink(parts[-1], dir_fd=parent)
                    raise
                finally:
                    os.close(out)
            finally:
                os.close(parent)

    def _drop_data(self, session: Session) -> None:
        """The data file, uncharged (after a copy, the copy holds the charge)."""
        self._uncharge(session)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / session.id)

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        with contextlib.suppress(OSError):
            os.unlink(self.dir / f"{session.id}.json")

    # -- abandoned sessions -----------------------------------------------------------------

    async def cleanup_loop(self) -> None:
        """Remove sessions past `session-expire` (their tokens are dead too), uncharged."""
        interval = min(60.0, max(0.2, self.expire / 4))
        while True:
            await trio.sleep(interval)
            try:
                self.expire_now()
            except Exception:  # a bug: say so, keep serving
                log.exception("upload cleanup")

    def expire_now(self) -> None:
        now = self.clock()
        for session in list(self.sessions.values()):
            if session.expires <= now and not session.lock.locked():
                self._drop(session)

    def _drop(self, session: Session) -> None:
        self._drop_data(session)
        self._forget(session)
        log.info("upload session expired session=%s vfid=%s", session.id, session.vfid)

