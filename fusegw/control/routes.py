"""The storage proxy's quota-scope routes, for one volume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fusegw.control import params as p
from fusegw.control.app import ControlApp, RawResponse
from fusegw.control.metrics import CONTENT_TYPE, Metrics
from fusegw.errors import VolumeNotFound
from fusegw.scopes import Caller, ScopeService
from fusegw.vfolders import VFolderService


class VolumeRoutes:
    """Binds the routes to one volume's scope service; `status` feeds `GET /`."""

    def __init__(self, name: str, mountpoint: str, service: ScopeService,
                 vfolders: VFolderService, status: Callable[[], dict[str, Any]],
                 metrics: Metrics) -> None:
        self.name = name
        self.mountpoint = mountpoint
        self.service = service
        self.vfolders = vfolders
        self.status = status
        self.metrics = metrics

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
        return {"volumes": [{"name": self.name, "backend": backend.name,
                             "path": self.mountpoint,
                             "capabilities": sorted(backend.capabilities)}]}

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
        return {"path": self.vfolders.mount_path(p.vfid(params))}
