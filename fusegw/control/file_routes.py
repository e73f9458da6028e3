"""The manager's file routes and vfolder clone, as the storage proxy 23.03 answers them.

`POST /folder/file/{mkdir, list, rename, move, delete, fetch}` and `POST /folder/clone`.
Parameters are checked here, before anything is touched; the file work itself (fusegw.files)
goes through the gateway's own mount in worker threads, so it is accounted and enforced as a
user's change would be, and never blocks the loop that serves the mount.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from fusegw.control import params as p
from fusegw.control.app import ControlApp, Handler, StreamResponse
from fusegw.errors import InvalidParameters, VFolderNotFound, VolumeNotFound
from fusegw.files import (
    CHUNK,
    CloneBusy,
    CloneJob,
    Cloner,
    MountFiles,
    Parts,
    entry_name,
    relpath,
)
from fusegw.ids import VFolderID
from fusegw.scopes import Caller
from fusegw.vfolders import VFolderService

T = TypeVar("T")

CLONE_WAIT = 5.0
"""Seconds a clone request waits for its copy: a clone done by then answers 204 (or its 4xx),
a longer one answers 200 `{"status": "cloning"}` and goes on in the background, its progress
in `GET /` (`clones`). The storage proxy always waits, and the manager's client gives up
after 300 s."""
MAX_WAIT = 300.0
MAX_CLONES = 4  # copying at once; more is 409 (each holds a thread and the mount busy)
KEPT_CLONES = 16  # finished clones `GET /` still shows
MAX_RELPATHS = 10_000
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


class CrossVolumeClone(InvalidParameters):
    """The storage proxy 23.03 cannot clone across volumes either ("not implemented yet")."""


def clone_volume(params: dict[str, Any]) -> str:
    """The one volume of a clone: `src_volume`, which `dst_volume` (null or absent: the
    same) must equal. Also what the node endpoint routes a clone by."""
    src = p.text(params, "src_volume")
    dst = params.get("dst_volume")
    if dst is None:
        return src
    if not isinstance(dst, str) or not dst:
        raise InvalidParameters("dst_volume must be a non-empty string or null",
                                data={"dst_volume": "not a string"})
    if dst != src:
        raise CrossVolumeClone(f"cloning across volumes ({src} to {dst}) is not supported yet",
                               data={"dst_volume": "differs from src_volume"})
    return src


def _flag(params: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean: JSON true/false, or its text from a query string (trafaret's ToBool)."""
    value = params.get(name, default)
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    if not isinstance(value, bool):
        raise InvalidParameters(f"{name} must be a boolean", data={name: "not a boolean"})
    return value


def _relpaths(params: dict[str, Any]) -> list[Parts]:
    value = p.require(params, "relpaths")
    if not isinstance(value, list) or not value or len(value) > MAX_RELPATHS:
        raise InvalidParameters(f"relpaths must be a list of 1 to {MAX_RELPATHS} paths",
                                data={"relpaths": "not a list of paths"})
    paths = [relpath(v, "relpaths") for v in value]
    if () in paths:
        raise InvalidParameters("the vfolder's root cannot be deleted",
                                data={"relpaths": "the vfolder's root"})
    return list(dict.fromkeys(paths))


def _wait_seconds(params: dict[str, Any]) -> float:
    """`options` (null, or `{"wait_seconds"}`: an extension, how long to wait in place)."""
    opts = p.options(params, required=False)
    unknown = sorted(set(opts) - {"wait_seconds"})
    if unknown:
        raise InvalidParameters(f"unknown options {unknown}", data={k: "unknown" for k in unknown})
    wait = opts.get("wait_seconds", CLONE_WAIT)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT:
        raise InvalidParameters(f"wait_seconds must be a number 0..{MAX_WAIT:g}",
                                data={"wait_seconds": "out of range"})
    return float(wait)


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """In a worker thread: the call blocks on the mount this loop serves. Abandoned on
    cancel, so a gateway stopping never waits for it (the mount's end fails it)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def _close_later(fd: int) -> None:
    """Close a descriptor on the mount off the loop (close sends FLUSH), without awaiting:
    this runs where awaiting may not be possible (a cancelled stream's cleanup)."""
    threading.Thread(target=os.close, args=(fd,), daemon=True).start()


class FileRoutes:
    """The file routes and clone for one volume, through its mount."""

    def __init__(self, name: str, mountpoint: Path, vfolders: VFolderService) -> None:
        self.name = name
        self.vfolders = vfolders
        self.files = MountFiles(mountpoint)
        self.cloner = Cloner(self.files)
        self.clones: deque[CloneJob] = deque()
        self.busy: set[VFolderID] = set()

    def install(self, app: ControlApp) -> None:
        app.route("POST", "/folder/file/mkdir", self.mkdir)
        app.route("POST", "/folder/file/list", self.list)
        app.route("POST", "/folder/file/rename", self.rename)
        app.route("POST", "/folder/file/move", self.move)
        app.route("POST", "/folder/file/delete", self.delete)
        app.route("POST", "/folder/file/fetch", self.fetch)
        app.route("POST", "/folder/clone", self.clone)
        app.route("GET", "/", self._with_clones(app.routes["/"]["GET"]))

    def _with_clones(self, root: Handler) -> Handler:
        """`GET /` as VolumeRoutes answers it, plus the clones in progress and recent."""
        async def status(params: dict[str, Any], caller: Caller) -> Any:
            answer = await root(params, caller)
            return {**answer, "clones": [job.status() for job in self.clones]}
        return status

    def _target(self, params: dict[str, Any]) -> VFolderID:
        name = p.text(params, "volume")
        if name != self.name:
            raise VolumeNotFound(f"no volume {name!r} here", data={"volume": name})
        return p.vfid(params)

    async def mkdir(self, params: dict[str, Any], caller: Caller) -> None:
        vfid = self._target(params)
        parts = relpath(p.require(params, "relpath"), "relpath")
        parents, exist_ok = _flag(params, "parents", True), _flag(params, "exist_ok", False)
        await _run(self.files.mkdir, vfid, parts, parents, exist_ok)

    async def list(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        vfid = self._target(params)
        parts = relpath(p.require(params, "relpath"), "relpath")
        return {"items": await _run(self.files.listdir, vfid, parts)}

    async def rename(self, params: dict[str, Any], caller: Caller) -> None:
        vfid = self._target(params)
        parts = relpath(p.require(params, "relpath"), "relpath")
        new_name = entry_name(p.require(params, "new_name"), "new_name")
        _flag(params, "is_dir", False)  # ignored, as by the storage proxy since 22.03
        if not parts:
            raise InvalidParameters("the vfolder's root cannot be renamed",
                                    data={"relpath": "the vfolder's root"})
        await _run(self.files.rename, vfid, parts, new_name)

    async def move(self, params: dict[str, Any], caller: Caller) -> None:
        vfid = self._target(params)
        src = relpath(p.require(params, "src_relpath"), "src_relpath")
        dst = relpath(p.require(params, "dst_relpath"), "dst_relpath")
        if not src:
            raise InvalidParameters("the vfolder's root cannot be moved",
                                    data={"src_relpath": "the vfolder's root"})
        await _run(self.files.move, vfid, src, dst)

    async def delete(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        vfid = self._target(params)
        paths = _relpaths(params)
        recursive = _flag(params, "recursive", False)
        await _run(self.files.delete, vfid, paths, recursive)
        return {"status": "ok"}

    async def fetch(self, params: dict[str, Any], caller: Caller) -> StreamResponse:
        vfid = self._target(params)
        parts = relpath(p.require(params, "relpath"), "relpath")
        fd = await _run(self.files.open_file, vfid, parts)
        chunks = _read_chunks(fd)
        await chunks.__anext__()  # started, so that closing it closes the file
        return StreamResponse(chunks)

    async def clone(self, params: dict[str, Any], caller: Caller) -> dict[str, Any] | None:
        volume = clone_volume(params)
        if volume != self.name:
            raise VolumeNotFound(f"no volume {volume!r} here", data={"src_volume": volume})
        src = VFolderID.parse(p.require(params, "src_vfid"), "src_vfid")
        dst = VFolderID.parse(p.require(params, "dst_vfid"), "dst_vfid")
        wait = _wait_seconds(params)
        if src == dst:
            raise InvalidParameters("src_vfid and dst_vfid are the same vfolder",
                                    data={"dst_vfid": "same as src_vfid"})
        job = await self._start_clone(src, dst, caller)
        if not await _run(job.done.wait, wait):
            return {"status": "cloning", "clone": job.status()}
        if job.error is not None:
            raise job.error
        return None

    async def _start_clone(self, src: VFolderID, dst: VFolderID, caller: Caller) -> CloneJob:
        """Check, create a missing destination, and start the copy in its own thread."""
        if {src, dst} & self.busy:
            raise CloneBusy(f"a clone into {dst if dst in self.busy else src} is in progress",
                            data={"dst_vfid": "busy"})
        if len(self.busy) >= MAX_CLONES:
            raise CloneBusy(f"{MAX_CLONES} clones are in progress; try again later")
        self.busy.add(dst)
        try:
            if not await _run(self.files.exists, src):  # before a destination is made
                raise VFolderNotFound(f"vfolder {src} does not exist",
                                      data={"src_vfid": str(src)})
            if not await _run(self.files.exists, dst):
                await self.vfolders.create(dst, 0, caller)
            await _run(self.cloner.prepare, src, dst)
        except BaseException:
            self.busy.discard(dst)
            raise
        job = CloneJob(src, dst)
        self._keep(job)
        self.vfolders.scopes.audit(caller, "vfolder.clone", dst.quota_scope_id, None,
                                   {"src_vfid": str(src), "dst_vfid": str(dst)})
        threading.Thread(target=self._clone_thread, args=(job,), daemon=True,
                         name=f"clone {dst}").start()
        return job

    def _clone_thread(self, job: CloneJob) -> None:
        try:
            self.cloner.run(job)
        finally:
            self.busy.discard(job.dst)  # a set's discard is atomic under the GIL

    def _keep(self, job: CloneJob) -> None:
        self.clones.append(job)
        finished = [j for j in self.clones if j.done.is_set()]
        for old in finished[:max(0, len(finished) - KEPT_CLONES)]:
            self.clones.remove(old)


async def _read_chunks(fd: int) -> AsyncGenerator[bytes, None]:
    """The file's bytes, a worker-thread read at a time; the file is closed at the end."""
    try:
        yield b""
        while chunk := await _run(os.read, fd, CHUNK):
            yield chunk
    finally:
        _close_later(fd)
