"""The storage proxy's manager-API routes, for one volume."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import trio

from backends import BackendError
from fusegw.control import params as p
from fusegw.control.app import ControlApp, RawResponse
from fusegw.control.metrics import CONTENT_TYPE, Metrics, PerfSampler
from fusegw.errors import Deprecated, InvalidParameters, VolumeNotFound, VolumeUnavailable
from fusegw.fs.guard import IO, REQUESTS
from fusegw.scopes import Caller, ScopeService
from fusegw.vfolders import VFolderService

GATEWAY_CAPABILITIES = frozenset({"vfolder", "quota", "metric", "fast-size", "fast-scan",
                                  "fast-fs-size"})
"""What every gateway can do whatever its backend, in the storage proxy's names (its abc.py
CAP_*): vfolders; quota scopes (the gateway enforces what the storage does not); I/O metrics
from its own counters; vfolder size and file count from the ledger, O(1); volume size by
statvfs."""

PROBE_TIMEOUT = 5.0
"""Seconds the mount, the backing volume and the backend get to answer a health probe (as
mountd's health_timeout)."""


class Probe:
    """One blocking call (statvfs) in a worker thread with a deadline. A call that does not
    return is abandoned, and no second one is started beside it while it hangs: a hung
    volume costs one thread, not one per request."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = False

    async def statvfs(self, timeout: float | None = None
                      ) -> tuple[os.statvfs_result | None, str | None, float]:
        """(result, None, seconds) or (None, why not, seconds)."""
        timeout = PROBE_TIMEOUT if timeout is None else timeout
        started = time.monotonic()
        if self.pending:
            return None, f"statfs of {self.path} has not answered yet", 0.0
        self.pending = True

        def call() -> os.statvfs_result:
            try:
                return os.statvfs(self.path)
            finally:
                self.pending = False

        try:
            with trio.fail_after(timeout):
                result = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        except trio.TooSlowError:
            return None, f"statfs of {self.path} did not answer within {timeout:g} s", timeout
        except OSError as e:
            return None, f"statfs of {self.path}: {e.strerror}", time.monotonic() - started
        return result, None, time.monotonic() - started


def volume_info(name: str, backend: str, capabilities: Iterable[str], path: str,
                fsprefix: str) -> dict[str, Any]:
    """One volume of `GET /volumes`, as the storage proxy lists it (the node endpoint's entry
    for a volume that is down is made here too)."""
    return {"name": name, "backend": backend, "path": path, "fsprefix": fsprefix,
            "capabilities": sorted(set(capabilities) | GATEWAY_CAPABILITIES)}


class VolumeRoutes:
    """Binds the routes to one volume's scope service; `status` feeds `GET /`."""

    def __init__(self, name: str, mountpoint: str, service: ScopeService,
                 vfolders: VFolderService, status: Callable[[], dict[str, Any]],
                 metrics: Metrics, fsprefix: str = ".") -> None:
        self.name = name
        self.mountpoint = mountpoint
        self.service = service
        self.vfolders = vfolders
        self.status = status
        self.metrics = metrics
        self.fsprefix = fsprefix
        self.perf = PerfSampler(REQUESTS, IO)
        self.mount_probe = Probe(Path(mountpoint))
        self.volume_probe = Probe(vfolders.volume)

    def install(self, app: ControlApp) -> None:
        app.route("GET", "/", self.root)
        app.route("GET", "/volumes", self.volumes)
        app.route("GET", "/metrics", self.render_metrics)
        app.route("POST", "/quota-scope", self.create_scope)
        app.route("GET", "/quota-scope", self.get_scope)
        app.route("PATCH", "/quota-scope", self.update_scope)
        app.route("DELETE", "/quota-scope/quota", self.unset_quota)
        app.route("DELETE", "/quota-scope", self.delete_scope)
        app.route("GET", "/quota-scopes", self.list_scopes)
        app.route("POST", "/quota-scope/check", self.check_scope)
        app.route("POST", "/folder/create", self.create_folder)
        app.route("POST", "/folder/delete", self.delete_folder)
        app.route("GET", "/folder/usage", self.folder_usage)
        app.route("GET", "/folder/used-bytes", self.folder_used_bytes)
        app.route("GET", "/folder/mount", self.folder_mount)
        app.route("GET", "/folder/fs-usage", self.fs_usage)
        app.route("GET", "/volume/hwinfo", self.hwinfo)
        app.route("GET", "/volume/performance-metric", self.performance_metric)
        app.route("GET", "/volume/quota", self.volume_quota)
        app.route("PATCH", "/volume/quota", self.volume_quota)

    def _volume(self, params: dict[str, Any]) -> None:
        name = p.text(params, "volume")
        if name != self.name:
            raise VolumeNotFound(f"no volume {name!r} here", data={"volume": name})

    async def root(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return {"status": "ok", **self.status()}

    async def render_metrics(self, params: dict[str, Any], caller: Caller) -> RawResponse:
        return RawResponse(self.metrics.render(), CONTENT_TYPE)

    async def volumes(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        backend = self.service.backend
        return {"volumes": [volume_info(self.name, backend.name, backend.capabilities,
                                        self.mountpoint, self.fsprefix)]}

    async def create_scope(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        qsid = p.qsid(params)
        limits = p.limits(p.options(params, required=False))
        await self.service.create(qsid, limits, caller)

    async def get_scope(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        return await self.service.describe(p.qsid(params))

    async def update_scope(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        qsid = p.qsid(params)
        changes = p.limit_changes(p.options(params, required=True), required=True)
        await self.service.update(qsid, changes, caller, create_missing=True)

    async def unset_quota(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        await self.service.unset(p.qsid(params), caller)

    async def delete_scope(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        await self.service.delete(p.qsid(params), caller)

    async def list_scopes(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        return {"quota_scopes": self.service.list()}

    async def check_scope(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        qsid = p.qsid(params)
        return await self.service.check(qsid, p.flag(params, "repair"), caller)

    async def create_folder(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        vfid = p.vfid(params)
        initial = p.initial_limit(p.options(params, required=False))
        await self.vfolders.create(vfid, initial, caller)

    async def delete_folder(self, params: dict[str, Any], caller: Caller) -> None:
        self._volume(params)
        await self.vfolders.delete(p.vfid(params), caller)

    async def folder_usage(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        used_bytes, file_count = self.vfolders.usage(p.vfid(params))
        return {"file_count": file_count, "used_bytes": used_bytes}

    async def folder_used_bytes(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        return {"used_bytes": self.vfolders.usage(p.vfid(params))[0]}

    async def folder_mount(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        self._volume(params)
        vfid = p.vfid(params)
        subpath = params.get("subpath", ".")
        if not isinstance(subpath, str) or not subpath:  # the storage proxy: t.String()
            raise InvalidParameters("subpath must be a non-empty string",
                                    data={"subpath": "not a non-empty string"})
        return {"path": self.vfolders.mount_path(vfid, subpath)}

    async def fs_usage(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """The backing volume's size and use, as the storage proxy's vfs reports them."""
        self._volume(params)
        st, why, _ = await self.volume_probe.statvfs()
        if st is None:
            raise VolumeUnavailable(f"volume {self.name!r}: {why}", data={"volume": self.name})
        return {"capacity_bytes": st.f_frsize * st.f_blocks,
                "used_bytes": st.f_frsize * (st.f_blocks - st.f_bavail)}

    async def performance_metric(self, params: dict[str, Any], caller: Caller
                                 ) -> dict[str, Any]:
        self._volume(params)
        return {"metric": self.perf.metric()}

    async def volume_quota(self, params: dict[str, Any], caller: Caller) -> None:
        """Per-vfolder quotas are gone from the storage proxy: it answers 400 with this."""
        self._volume(params)
        if params.get("vfid") is not None:
            p.vfid(params)
        which = "set_quota" if "size_bytes" in params else "get_quota"
        raise Deprecated(f"{which} (for individual vfolder) is a deprecated API: use the "
                         "quota-scope routes")

    async def hwinfo(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        """A real health check: the mount and the backing volume answer statfs in time, the
        backend answers, the state files are written, the accounting is ready.
        "unavailable" when the mount or the volume does not answer, "degraded" for the rest;
        status_info says what is wrong."""
        self._volume(params)
        status = self.status()
        mount, mount_why, mount_s = await self.mount_probe.statvfs()
        volume, volume_why, volume_s = await self.volume_probe.statvfs()
        down = [why for why in (mount_why, volume_why) if why]
        sick = [why for why in (await self._backend_problem(),
                                _persist_problem(status), _rebuild_problem(status)) if why]
        state = "unavailable" if down else "degraded" if sick else "healthy"
        metadata = {"backend": self.service.backend.name, "mountpoint": self.mountpoint,
                    "fsprefix": self.fsprefix, "accounting": str(status.get("accounting")),
                    "state": str(status.get("state")),
                    "mount_statfs_ms": f"{mount_s * 1000:.2f}" if mount else "none",
                    "volume_statfs_ms": f"{volume_s * 1000:.2f}" if volume else "none"}
        return {"status": state, "status_info": "; ".join(down + sick) or None,
                "metadata": metadata}

    async def _backend_problem(self) -> str | None:
        """A native backend is asked for one scope's figures (what every quota read needs);
        the gateway-enforced ones (vfs, purestorage) are the backing volume, probed above."""
        backend = self.service.backend
        if not self.service.native.native or not self.service.registry.scopes:
            return None
        pathname = next(iter(self.service.registry.scopes))
        try:
            with trio.fail_after(PROBE_TIMEOUT):
                await backend.describe_scope(pathname)
        except trio.TooSlowError:
            return f"backend {backend.name} did not answer within {PROBE_TIMEOUT:g} s"
        except BackendError as e:
            return f"backend {backend.name}: {e}"
        return None


def _persist_problem(status: dict[str, Any]) -> str | None:
    error = status.get("persist_error")
    if not error:
        return None
    files = ", ".join(error.get("files") or []) or "state"
    return f"state files not written ({files}: {error.get('error', 'failing')})"


def _rebuild_problem(status: dict[str, Any]) -> str | None:
    rebuilding = status.get("rebuilding") or []
    if not rebuilding:
        return None
    return f"accounting rebuilding for {len(rebuilding)} scope(s): their growth waits"
