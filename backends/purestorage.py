"""`purestorage`: Pure Storage FlashBlade.

FlashBlade's NFS exports have no directory quota the gateway could use, so a quota scope is a
plain directory and the gateway's ledger enforces every limit, exactly as on `vfs`
(`enforces_bytes` stays False); the volume is an NFS mount, so `network` is set and every
syscall that may wait on the server goes to the worker threads.

What the appliance adds is volume-level figures, through the Purity//FB REST API (1.x, as the
storage proxy's `purestorage` backend calls it; the request shapes follow its `purity.py` and
Pure's purity_fb SDK models):

- `POST /api/login` with header `api-token` answers a session token in `x-auth-token`;
- `GET /api/{version}/file-systems?names=FS`: `provisioned` (capacity) and
  `space.total_physical` (used) — `volume_usage()`, the storage proxy's `get_fs_usage`;
- `GET /api/{version}/file-systems/performance?names=FS&protocol=NFS` — `performance()`, the
  storage proxy's `get_performance_metric`.

The storage proxy logs in for every call; this backend keeps its session for as long as the
appliance accepts it and logs in again once when a request answers 401 (the session expired).
The figures are optional: nothing here is asked at start-up, so a mount with a wrong token
still serves, and only the figures calls fail (ApplianceError, 502, naming the appliance).

Pure's RapidFile Toolkit (`pls`, `pdu`, `prm`, `pcp`), where installed, does tree work in
parallel over NFS; `remove_tree` uses `prm` when it is on PATH, else removes the tree in a
worker thread.

Options (the storage proxy's names): `purity_endpoint`, `purity_api_token`,
`purity_api_version` (default "1.8", the storage proxy's), `purity_fs_name`,
`purity_ssl_verify` (default on; off is logged as a warning), and `appliance_timeout` (read
timeout in seconds, default 30).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from backends.base import BackendError, run_command
from backends.rest import READ_TIMEOUT, ApplianceClient, ApplianceError, truthy
from backends.vfs import VFSBackend

log = logging.getLogger("backends.purestorage")

DEFAULT_API_VERSION = "1.8"  # the storage proxy's default
REMOVE_TIMEOUT = 6 * 3600.0  # a vfolder of millions of files takes a while, even with prm
MAX_PAGES = 100
LOGOUT_TIMEOUT = 2.0


class PureStorageBackend(VFSBackend):
    """Plain directories with the gateway enforcing; FlashBlade's REST API for the volume's
    figures and RapidFile Toolkit's `prm` for tree removal."""

    name = "purestorage"
    network = True
    option_keys = frozenset({"purity_endpoint", "purity_api_token", "purity_api_version",
                             "purity_fs_name", "purity_ssl_verify", "appliance_timeout"})

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(volume, options)
        self._client: ApplianceClient | None = None
        self._token: str | None = None  # the session's x-auth-token
        self._login_lock: trio.Lock | None = None

    # -- options --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return str(self.options.get("purity_endpoint") or "").rstrip("/")

    @property
    def appliance(self) -> str:
        """How messages name the appliance."""
        return f"FlashBlade {self.endpoint or '(purity_endpoint unset)'}"

    @property
    def api_version(self) -> str:
        return str(self.options.get("purity_api_version") or DEFAULT_API_VERSION)

    @property
    def fs_name(self) -> str:
        return str(self.options.get("purity_fs_name") or "")

    def timeout(self) -> float:
        raw = self.options.get("appliance_timeout")
        try:
            value = READ_TIMEOUT if raw is None else float(raw)
        except (TypeError, ValueError):
            value = 0.0
        if not value > 0:
            raise BackendError(f"appliance_timeout must be a positive number of seconds, "
                               f"not {raw!r}", errno.EINVAL)
        return value

    async def check_volume(self) -> None:
        """Refuse a bad timeout; never contact the appliance (its figures are optional)."""
        self.timeout()
        missing = [k for k in ("purity_endpoint", "purity_api_token", "purity_fs_name")
                   if not self.options.get(k)]
        if missing:
            log.info("purestorage: %s not set: no FlashBlade figures for this volume",
                     ", ".join(missing))

    # -- the Purity//FB REST API ----------------------------------------------------------------

    def _http(self) -> ApplianceClient:
        """The client, made on first use (inside the trio loop) and kept."""
        missing = [k for k in ("purity_endpoint", "purity_api_token", "purity_fs_name")
                   if not self.options.get(k)]
        if missing:
            raise BackendError(f"FlashBlade figures need {', '.join(missing)} in the "
                               "volume's options", errno.ENOTSUP)
        if self._client is None:
            self._client = ApplianceClient(
                self.appliance, self.endpoint,
                verify=truthy(self.options.get("purity_ssl_verify"), True),
                timeout=self.timeout())
        return self._client

    async def aclose(self) -> None:
        """End the session (so none is left open on the appliance) and close the client."""
        client, token = self._client, self._token
        self._client, self._token = None, None
        if client is None:
            return
        try:
            if token is not None:
                with trio.move_on_after(LOGOUT_TIMEOUT):
                    await client.request("POST", "/api/logout", repeatable=False,
                                         headers={"x-auth-token": token})
        except ApplianceError as e:  # it expires by itself; nothing more to do
            log.info("%s: logout: %s", self.appliance, e)
        finally:
            await client.aclose()

    async def _login(self, stale: str | None) -> str:
        """A session token: the one we hold unless it is `stale`, else a new login (one at a
        time, so concurrent callers that found the same expired session share the new one)."""
        if self._login_lock is None:
            self._login_lock = trio.Lock()
        async with self._login_lock:
            if self._token is not None and self._token != stale:
                return self._token
            client = self._http()
            self._token = None
            response = await client.request(
                "POST", "/api/login", repeatable=True,  # a login changes nothing: repeat it
                headers={"api-token": str(self.options["purity_api_token"])})
            token = str(response.headers.get("x-auth-token") or "")
            if not token:
                raise ApplianceError(self.appliance, "login answered no x-auth-token", 502)
            self._token = token
            return token

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        """GET /api/{version}/{path} in the session; one new login on a 401 (expired)."""
        client = self._http()
        token = self._token or await self._login(None)
        url = f"/api/{self.api_version}/{path}"
        for relogin in (True, False):
            response = await client.request("GET", url, params=params,
                                            headers={"x-auth-token": token},
                                            ok=(401,) if relogin else ())
            if response.status_code != 401:
                try:
                    return response.json()
                except ValueError:
                    raise ApplianceError(self.appliance, f"GET {url}: not JSON: "
                                         f"{response.text[:200]!r}", 502) from None
            log.info("%s: session no longer valid; logging in again", self.appliance)
            token = await self._login(token)
        raise AssertionError("unreachable")  # the second 401 raised

    async def _items(self, path: str, params: dict[str, str]) -> tuple[list[Any], Any]:
        """All items of a listing (following continuation tokens) and its `total`."""
        items: list[Any] = []
        query = dict(params)
        for _ in range(MAX_PAGES):
            body = await self._get(path, query)
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise ApplianceError(self.appliance, f"GET {path}: no items in the answer",
                                     502)
            items += body["items"]
            cont = (body.get("pagination_info") or {}).get("continuation_token")
            if not cont:
                return items, body.get("total")
            query["token"] = str(cont)
        raise ApplianceError(self.appliance, f"GET {path}: more than {MAX_PAGES} pages", 502)

    async def volume_usage(self) -> dict[str, int]:
        """The file system's provisioned size and physical use: `capacity_bytes` and
        `used_bytes`, as the storage proxy's get_fs_usage reports them."""
        items, total = await self._items("file-systems", {"names": self.fs_name})
        fs = self._named(items, "file system")
        try:
            capacity = (total or {}).get("provisioned", fs["provisioned"])
            return {"capacity_bytes": int(capacity),
                    "used_bytes": int(fs["space"]["total_physical"])}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ApplianceError(self.appliance, f"file system {self.fs_name!r}: unexpected "
                                 f"answer ({type(e).__name__}: {e})", 502) from None

    async def performance(self) -> dict[str, float]:
        """The file system's NFS figures, as the storage proxy's get_performance_metric
        reports them (operations and bytes per second, microseconds per operation)."""
        items, _ = await self._items("file-systems/performance",
                                     {"names": self.fs_name, "protocol": "NFS"})
        item = self._named(items, "performance metric for file system")
        pairs = {"iops_read": "reads_per_sec", "iops_write": "writes_per_sec",
                 "io_bytes_read": "read_bytes_per_sec",
                 "io_bytes_write": "write_bytes_per_sec",
                 "io_usec_read": "usec_per_read_op", "io_usec_write": "usec_per_write_op"}
        try:
            return {ours: float(item[theirs]) for ours, theirs in pairs.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ApplianceError(self.appliance, f"performance of {self.fs_name!r}: "
                                 f"unexpected answer ({type(e).__name__}: {e})", 502) from None

    def _named(self, items: list[Any], what: str) -> dict[str, Any]:
        for item in items:
            if isinstance(item, dict) and item.get("name", self.fs_name) == self.fs_name:
                return item
        raise ApplianceError(self.appliance, f"no {what} {self.fs_name!r}", 404,
                             errno.ENOENT)

    # -- RapidFile Toolkit ----------------------------------------------------------------------

    async def remove_vfolder_tree(self, path: Path) -> bool:
        """`prm -rf` for a vfolder's deletion where RapidFile Toolkit is installed, as the
        storage proxy does; else the gateway's own removal."""
        if shutil.which("prm") is None:
            return False
        await self.remove_tree(path)
        return True

    async def remove_tree(self, path: str | os.PathLike[str]) -> None:
        """Remove a tree below the volume: `prm -rf` where RapidFile Toolkit is installed (it
        removes in parallel, much faster over NFS), else shutil.rmtree in a worker thread.
        A tree already gone is done."""
        target = Path(os.path.abspath(path))
        volume = Path(os.path.abspath(self.volume))
        if target == volume or volume not in target.parents:
            raise BackendError(f"remove_tree: {target} is not below the volume {volume}",
                               errno.EINVAL)
        prm = shutil.which("prm")
        if prm is not None:
            await run_command([prm, "-rf", str(target)], timeout=REMOVE_TIMEOUT)
            return
        await trio.to_thread.run_sync(_rmtree, target)


def _rmtree(path: Path) -> None:
    """shutil.rmtree, an entry gone meanwhile being fine (as `rm -f` takes it)."""
    def gone_is_fine(func: Any, name: str, exc: Any) -> None:
        err = exc[1] if isinstance(exc, tuple) else exc
        if not isinstance(err, FileNotFoundError):
            raise err

    try:
        shutil.rmtree(path, onerror=gone_is_fine)
    except OSError as e:
        raise BackendError(f"remove {e.filename or path}: {e.strerror}",
                           e.errno or errno.EIO) from None
