"""Drive the Backend.AI manager's own storage-proxy client code against fusegw.

Run with the manager's virtualenv (`.venv-manager/bin/python`, made by
tests/manager_client.py), never with the gateway's: it imports `backend.ai-manager==23.3.7`
unchanged and calls its code the way the manager does.

- `ai.backend.manager.config.volume_config_iv` checks the `volumes` configuration (the etcd
  tree `volumes/proxies/NAME/{client_api,manager_api,secret,ssl_verify}`), and
  `ai.backend.manager.models.storage.StorageSessionManager` is built from the result, exactly as
  `server.storage_manager_ctx` does.
- Methods of the manager are called as they are: `get_all_volumes`, `get_mount_path`,
  `StorageVolume.from_info` / `load_by_id` / `resolve_usage` / `resolve_performance_metric`,
  `QuotaScope.resolve_details`, `SetQuotaScope.mutate`, `UnsetQuotaScope.mutate`,
  `initiate_vfolder_removal`, `fetch_exposed_volume_fields`,
  `AgentRegistry.gather_storage_hwinfo`. What the manager needs besides the storage proxy
  (its PostgreSQL, Redis, a persistent task group, the GraphQL context) is replaced by the
  smallest stand-in that lets that code run: a session whose queries find the quota scope's
  owner (so a superadmin may change it), an empty Redis cache, a task group that runs the task.
- Calls made inline by the API handlers of `api/vfolder.py` (`create`, `get_info`,
  `get_usage`, `get_used_bytes`, `get_volume_perf_metric`) are repeated here with the same
  `StorageSessionManager.request(...)` arguments, the handler's line cited beside each; so
  are the file routes' (`mkdir`, `list_files` with its reshaping of the reply, `rename_file`,
  `move_file`, `delete_files`, and `get_task_logs`' streamed `fetch`), and
  `initiate_vfolder_clone` runs as it is, its background task at once.

Protocol: one JSON object a line on stdin, `{"op": NAME, ...arguments}`; one JSON line on
stdout for each, `{"ok": true, "result": ...}` or `{"ok": false, "error": {...}}` where the
error names the exception, what the manager would show its user (`user_body`, the manager's
own problem+json), the `msg` it took from the storage proxy (`extra_msg`) and the line of the
manager's code it was raised from. The first request must be `configure`. Each request runs in
a task of its own, as each API request does in the manager (so `get_all_volumes`' per-task
cache is fresh for every request). End of input ends the driver.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import Any

# The protocol owns the real stdout; anything the manager's code prints goes to stderr.
PROTOCOL = sys.stdout
sys.stdout = sys.stderr

from ai.backend.common.types import QuotaScopeID, VFolderID  # noqa: E402
from ai.backend.manager.api.vfolder import fetch_exposed_volume_fields  # noqa: E402
from ai.backend.manager.config import DEFAULT_CHUNK_SIZE, volume_config_iv  # noqa: E402
from ai.backend.manager.models.storage import StorageSessionManager, StorageVolume  # noqa: E402
from ai.backend.manager.models.user import UserRole  # noqa: E402
from ai.backend.manager.models.vfolder import (  # noqa: E402
    QuotaScope,
    QuotaScopeInput,
    SetQuotaScope,
    UnsetQuotaScope,
    VFolderCloneInfo,
    VFolderDeletionInfo,
    VFolderPermission,
    VFolderUsageMode,
    initiate_vfolder_clone,
    initiate_vfolder_removal,
)
from ai.backend.manager.registry import AgentRegistry  # noqa: E402

# -- stand-ins for what the manager has besides the storage proxy -----------------------------


class FakeBackgroundTasks:
    """The manager's BackgroundTaskManager: `start` runs the task to its end at once and
    keeps what it raised (the real one reports it to the task's event stream)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    async def start(self, func: Callable[[Any], Awaitable[Any]], **kwargs: Any) -> uuid.UUID:
        try:
            await func(SimpleNamespace(update=_nothing, total_progress=0))
        except Exception as e:
            self.error = e
        return uuid.uuid4()


async def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


class FakeDBSession:
    """A database session: every query finds one row (the quota scope's owner, in the
    superadmin's domain); statements are recorded, not run."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def scalar(self, query: Any) -> Any:
        self.log.append(f"scalar {query.__class__.__name__}")
        return SimpleNamespace(uuid=uuid.uuid4(), domain="default", domain_name="default",
                               resource_policy_row=SimpleNamespace(max_vfolder_size=None))

    async def execute(self, query: Any) -> Any:
        self.log.append(f"{query.__class__.__name__.lower()} {getattr(query, 'table', '')}")
        return None


class FakeDB:
    """`ExtendedAsyncSAEngine`'s session factories, over FakeDBSession."""

    def __init__(self) -> None:
        self.log: list[str] = []

    @asynccontextmanager
    async def begin_readonly_session(self) -> AsyncIterator[FakeDBSession]:
        yield FakeDBSession(self.log)

    @asynccontextmanager
    async def begin_session(self) -> AsyncIterator[FakeDBSession]:
        yield FakeDBSession(self.log)


class FakeRedis:
    """A Redis client with an empty cache (so `fetch_exposed_volume_fields` asks the proxy)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def __aenter__(self) -> FakeRedis:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: Any, ex: int | None = None) -> None:
        self.data[key] = value


class TaskGroup:
    """`aiotools.PersistentTaskGroup.create_task`, keeping the tasks to await them."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def create_task(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task


SUPERADMIN = {"role": UserRole.SUPERADMIN, "domain_name": "default", "domain": "default",
              "uuid": uuid.uuid4(), "email": "admin@fusegw.test"}


def graph_info(manager: StorageSessionManager, db: FakeDB | None = None) -> Any:
    """The `graphene.ResolveInfo` the manager's resolvers and mutations read `.context` of."""
    ctx = SimpleNamespace(storage_manager=manager, db=db or FakeDB(), user=SUPERADMIN)
    return SimpleNamespace(context=ctx)


# -- the driver ---------------------------------------------------------------------------------


class Driver:
    def __init__(self) -> None:
        self.managers: dict[str, StorageSessionManager] = {}

    def manager(self, req: dict[str, Any]) -> StorageSessionManager:
        return self.managers[req.get("manager", "main")]

    @staticmethod
    def vfid(req: dict[str, Any]) -> VFolderID:
        qsid, _, fid = req["vfid"].partition("/")
        return VFolderID(QuotaScopeID.parse(qsid), uuid.UUID(fid))

    async def op_configure(self, req: dict[str, Any]) -> dict[str, Any]:
        """`server.storage_manager_ctx`: the raw etcd `volumes` tree, checked by the manager's
        `volume_config_iv`, makes a StorageSessionManager."""
        config = volume_config_iv.check(req["volumes"])
        name = req.get("manager", "main")
        if name in self.managers:
            await self.managers[name].aclose()
        self.managers[name] = StorageSessionManager(config)
        return {"proxies": sorted(config["proxies"]),
                "exposed_volume_info": list(config["exposed_volume_info"])}

    async def op_get_all_volumes(self, req: dict[str, Any]) -> list[Any]:
        """`StorageSessionManager.get_all_volumes` (GET /volumes of every proxy)."""
        return [[proxy, info] for proxy, info in await self.manager(req).get_all_volumes()]

    async def op_volumes_from_info(self, req: dict[str, Any]) -> list[dict[str, Any]]:
        """`StorageVolume.load_slice`'s path: get_all_volumes, then StorageVolume.from_info."""
        volumes = [*await self.manager(req).get_all_volumes()]
        out = []
        for proxy, info in volumes:
            v = StorageVolume.from_info(proxy, info)
            out.append({"id": v.id, "backend": v.backend, "path": v.path,
                        "fsprefix": v.fsprefix, "capabilities": v.capabilities})
        return out

    async def op_load_by_id(self, req: dict[str, Any]) -> dict[str, Any]:
        """`StorageVolume.load_by_id` (the GraphQL `storage_volume(id)` query)."""
        ctx = graph_info(self.manager(req)).context
        v = await StorageVolume.load_by_id(ctx, req["host"])
        return {"id": v.id, "backend": v.backend, "path": v.path, "fsprefix": v.fsprefix,
                "capabilities": v.capabilities}

    async def op_create_vfolder(self, req: dict[str, Any]) -> None:
        """api/vfolder.py `create` (lines 506-520): POST folder/create with
        `options.initial_max_size_for_quota_scope` when the resource policy has a
        max_vfolder_size."""
        mgr = self.manager(req)
        folder_host = req["host"]
        max_vfolder_size = req.get("max_vfolder_size")
        options = {}
        if max_vfolder_size and max_vfolder_size > 0:
            options["initial_max_size_for_quota_scope"] = max_vfolder_size
        async with mgr.request(
            folder_host,
            "POST",
            "folder/create",
            json={
                "volume": mgr.split_host(folder_host)[1],
                "vfid": str(self.vfid(req)),
                "options": options,
            },
        ):
            pass

    async def op_get_mount_path(self, req: dict[str, Any]) -> str:
        """`StorageSessionManager.get_mount_path` (session start-up, models/vfolder.py:691)."""
        return await self.manager(req).get_mount_path(
            req["host"], self.vfid(req), PurePosixPath(req.get("subpath", ".")))

    async def op_folder_usage(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `get_info` / `get_usage` (lines 915, 1112): GET folder/usage."""
        mgr = self.manager(req)
        proxy_name, volume_name = mgr.split_host(req["host"])
        async with mgr.request(
            proxy_name,
            "GET",
            "folder/usage",
            json={"volume": volume_name, "vfid": str(self.vfid(req))},
        ) as (_, storage_resp):
            usage = await storage_resp.json()
        # get_info reads these two keys; a missing one is its KeyError
        return {"reply": usage, "get_info": {"num_files": usage["file_count"],
                                             "used_bytes": usage["used_bytes"]}}

    async def op_folder_used_bytes(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `get_used_bytes` (line 1140): GET folder/used-bytes."""
        mgr = self.manager(req)
        proxy_name, volume_name = mgr.split_host(req["host"])
        async with mgr.request(
            proxy_name,
            "GET",
            "folder/used-bytes",
            json={"volume": volume_name, "vfid": str(self.vfid(req))},
        ) as (_, storage_resp):
            return await storage_resp.json()

    async def op_quota_scope_details(self, req: dict[str, Any]) -> dict[str, Any]:
        """`QuotaScope.resolve_details` (GraphQL `quota_scope { details }`): GET quota-scope."""
        scope = QuotaScope(quota_scope_id=req["qsid"], storage_host_name=req["host"])
        d = await scope.resolve_details(graph_info(self.manager(req)))
        return {"usage_bytes": d.usage_bytes, "hard_limit_bytes": d.hard_limit_bytes,
                "usage_count": d.usage_count}

    async def op_set_quota_scope(self, req: dict[str, Any]) -> dict[str, Any]:
        """`SetQuotaScope.mutate` (GraphQL `set_quota_scope`): PATCH quota-scope
        `{options: {limit_bytes}}`."""
        props = QuotaScopeInput._meta.container({"hard_limit_bytes": req["hard_limit_bytes"]})
        result = await SetQuotaScope.mutate(None, graph_info(self.manager(req)), req["qsid"],
                                            req["host"], props)
        return {"quota_scope_id": result.quota_scope.quota_scope_id}

    async def op_unset_quota_scope(self, req: dict[str, Any]) -> dict[str, Any]:
        """`UnsetQuotaScope.mutate` (GraphQL `unset_quota_scope`): DELETE quota-scope/quota."""
        result = await UnsetQuotaScope.mutate(None, graph_info(self.manager(req)), req["qsid"],
                                              req["host"])
        return {"quota_scope_id": result.quota_scope.quota_scope_id}

    async def op_delete_vfolder(self, req: dict[str, Any]) -> dict[str, Any]:
        """`initiate_vfolder_removal` (api/vfolder.py `delete_by_id` and friends): the row
        marked DELETING, POST folder/delete in a background task, then the row deleted.
        `row_deleted` tells whether the row went (else it stays DELETING), `task_error` what
        the background task raised."""
        db = FakeDB()
        tasks = TaskGroup()
        count = await initiate_vfolder_removal(
            db, [VFolderDeletionInfo(self.vfid(req), req["host"])], self.manager(req), tasks)
        task_error = None
        for task in tasks.tasks:
            try:
                await task
            except Exception as e:
                task_error = describe(e)
        return {"count": count, "db": db.log, "task_error": task_error,
                "row_deleted": any(s.startswith("delete") for s in db.log)}

    async def op_fs_usage(self, req: dict[str, Any]) -> Any:
        """`fetch_exposed_volume_fields` (api/vfolder.py `list_hosts`), with an empty cache:
        GET folder/fs-usage, reading used_bytes and capacity_bytes."""
        mgr = self.manager(req)
        proxy_name, volume_name = mgr.split_host(req["host"])
        return await fetch_exposed_volume_fields(mgr, FakeRedis(), proxy_name, volume_name)

    async def op_volume_usage(self, req: dict[str, Any]) -> Any:
        """`StorageVolume.resolve_usage` (GraphQL; a failed request gives {})."""
        v = StorageVolume(id=req["host"])
        return await v.resolve_usage(graph_info(self.manager(req)))

    async def op_hwinfo(self, req: dict[str, Any]) -> Any:
        """`AgentRegistry.gather_storage_hwinfo` (GraphQL `hardware_metadata`): GET
        volume/hwinfo."""
        registry = SimpleNamespace(storage_manager=self.manager(req))
        return await AgentRegistry.gather_storage_hwinfo(registry, req["host"])  # type: ignore

    async def op_performance_metric(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `get_volume_perf_metric` (line 867): GET volume/performance-metric."""
        mgr = self.manager(req)
        proxy_name, volume_name = mgr.split_host(req["host"])
        async with mgr.request(
            proxy_name,
            "GET",
            "volume/performance-metric",
            json={"volume": volume_name},
        ) as (_, storage_resp):
            return await storage_resp.json()

    async def op_clone_vfolder(self, req: dict[str, Any]) -> dict[str, Any]:
        """models/vfolder.py `initiate_vfolder_clone` (the `clone` handler's call): POST
        folder/create of a new vfolder in the source's scope, then POST folder/clone, in the
        background task it starts (run at once here, as the task manager would)."""
        tasks = FakeBackgroundTasks()
        src = self.vfid(req)
        info = VFolderCloneInfo(src, req["host"], str(src.quota_scope_id), "clone",
                                req["host"], VFolderUsageMode.GENERAL, VFolderPermission.READ_WRITE,
                                "admin@example.com", uuid.uuid4(), True)
        _task_id, folder_id = await initiate_vfolder_clone(FakeDB(), info, self.manager(req),
                                                           tasks)
        if tasks.error is not None:
            raise tasks.error
        return {"dst_vfid": str(VFolderID(src.quota_scope_id, folder_id))}

    async def _file(self, req: dict[str, Any], route: str, body: dict[str, Any]) -> Any:
        """`StorageSessionManager.request(host, "POST", "folder/file/<route>", json=...)`
        with the handler's own body; the reply's JSON, if any."""
        mgr = self.manager(req)
        proxy_name, volume_name = mgr.split_host(req["host"])
        async with mgr.request(proxy_name, "POST", f"folder/file/{route}",
                               json={"volume": volume_name, "vfid": str(self.vfid(req)),
                                     **body}) as (_, resp):
            return await resp.json() if resp.content_length else None

    async def op_mkdir(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `mkdir` (line 1292)."""
        return await self._file(req, "mkdir", {"relpath": req["path"],
                                               "parents": req.get("parents", True),
                                               "exist_ok": req.get("exist_ok", False)})

    async def op_list_files(self, req: dict[str, Any]) -> dict[str, Any]:
        """api/vfolder.py `list_files` (line 1583), with the handler's own reshaping of the
        reply (a KeyError or a time it cannot parse would fail here as there)."""
        result = await self._file(req, "list", {"relpath": req.get("path", "")})
        return {
            "items": [{"name": item["name"], "type": item["type"],
                       "size": item["stat"]["size"], "mode": oct(item["stat"]["mode"])[2:][-3:],
                       "created": item["stat"]["created"], "modified": item["stat"]["modified"]}
                      for item in result["items"]],
            "files": json.dumps([
                {"filename": item["name"], "size": item["stat"]["size"],
                 "mode": stat.filemode(item["stat"]["mode"]),
                 "ctime": datetime.fromisoformat(item["stat"]["created"]).timestamp(),
                 "atime": 0,
                 "mtime": datetime.fromisoformat(item["stat"]["modified"]).timestamp()}
                for item in result["items"]]),
        }

    async def op_rename_file(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `rename_file` (line 1464)."""
        return await self._file(req, "rename", {"relpath": req["target_path"],
                                                "new_name": req["new_name"]})

    async def op_move_file(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `move_file` (line 1504)."""
        return await self._file(req, "move", {"src_relpath": req["src"],
                                              "dst_relpath": req["dst"]})

    async def op_delete_files(self, req: dict[str, Any]) -> Any:
        """api/vfolder.py `delete_files` (line 1545)."""
        return await self._file(req, "delete", {"relpaths": req["files"],
                                                "recursive": req.get("recursive", False)})

    async def op_fetch_file(self, req: dict[str, Any]) -> dict[str, Any]:
        """api/session.py `get_task_logs` (line 1820): POST folder/file/fetch with
        raise_for_status, read in DEFAULT_CHUNK_SIZE chunks."""
        mgr = self.manager(req)
        volume_name = mgr.split_host(req["host"])[1]
        data = bytearray()
        async with mgr.request(req["host"], "POST", "folder/file/fetch",
                               json={"volume": volume_name, "vfid": str(self.vfid(req)),
                                     "relpath": req["relpath"]},
                               raise_for_status=True) as (_, resp):
            while chunk := await resp.content.read(DEFAULT_CHUNK_SIZE):
                data += chunk
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    async def op_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """`StorageSessionManager.request` of any route (probes): status and JSON body."""
        mgr = self.manager(req)
        async with mgr.request(req["host"], req["method"], req["path"],
                               json=req.get("json")) as (_, resp):
            body = await resp.json() if resp.content_length else None
            return {"status": resp.status, "body": body}

    async def close(self) -> None:
        for mgr in self.managers.values():
            await mgr.aclose()


def manager_frame(exc: BaseException) -> str | None:
    """The innermost line of the manager's (or backend.ai-common's) code in the traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/ai/backend/" in f.filename]
    if not frames:
        return None
    f = frames[-1]
    path = f.filename[f.filename.index("ai/backend/"):]
    return f"{path}:{f.lineno} in {f.name}: {f.line}"


def describe(exc: BaseException) -> dict[str, Any]:
    user_body = None
    raw = getattr(exc, "body", None)
    if isinstance(raw, bytes):
        try:
            user_body = json.loads(raw)
        except ValueError:
            user_body = raw.decode(errors="replace")
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "str": str(exc),
        "status": getattr(exc, "status", None),
        "extra_msg": getattr(exc, "extra_msg", None),
        "extra_data": getattr(exc, "extra_data", None),
        "user_body": user_body,
        "where": manager_frame(exc),
        "traceback": traceback.format_exception(exc)[-6:],
    }


async def serve() -> None:
    driver = Driver()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            reply: dict[str, Any]
            try:
                req = json.loads(line)
                handler: Callable[[dict[str, Any]], Awaitable[Any]] = getattr(
                    driver, f"op_{req['op']}")
                # a task of its own per request, as the manager's aiohttp handlers run
                result = await asyncio.ensure_future(handler(req))
                reply = {"ok": True, "result": result}
            except Exception as e:
                reply = {"ok": False, "error": describe(e)}
            PROTOCOL.write(json.dumps(reply, default=str) + "\n")
            PROTOCOL.flush()
    finally:
        await driver.close()


if __name__ == "__main__":
    asyncio.run(serve())
