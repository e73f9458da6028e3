"""The manager API's two token routes: `POST /folder/file/download` and `.../upload`.

As the storage proxy's `create_download_session` / `create_upload_session`: the manager asks
for a token and hands it, with the client API's URL, to the user. Stricter: the relpath must
stay inside the vfolder (no `..`, not absolute; the client API also refuses symlinks on the
way), the vfolder must exist, `size` must be an integer up to `max-upload-size`, and an
`unmanaged_path` (a host path outside any volume, which the storage proxy would serve) is
refused.
"""

from __future__ import annotations

from typing import Any

from fusegw.client.errors import ClientAPIDisabled
from fusegw.client.paths import confine
from fusegw.client.sessions import Uploads
from fusegw.client.tokens import Tokens
from fusegw.control import params as p
from fusegw.control.app import ControlApp
from fusegw.errors import InvalidParameters, VolumeNotFound
from fusegw.scopes import Caller
from fusegw.vfolders import VFolderService


class TokenRoutes:
    def __init__(self, volume: str, vfolders: VFolderService, tokens: Tokens | None,
                 uploads: Uploads | None, max_upload_size: int) -> None:
        self.volume = volume
        self.vfolders = vfolders
        self.tokens = tokens
        self.uploads = uploads
        self.max_upload_size = max_upload_size

    def install(self, app: ControlApp) -> None:
        app.route("POST", "/folder/file/download", self.download)
        app.route("POST", "/folder/file/upload", self.upload)

    def _tokens(self) -> Tokens:
        if self.tokens is None:
            raise ClientAPIDisabled("no client API secret: set FUSEGW_CLIENT_SECRET or "
                                    "[storage-proxy] secret and restart the gateway")
        return self.tokens

    def _common(self, params: dict[str, Any]) -> tuple[Tokens, Any, list[str]]:
        tokens = self._tokens()
        name = p.text(params, "volume")
        if name != self.volume:
            raise VolumeNotFound(f"no volume {name!r} here", data={"volume": name})
        vfid = p.vfid(params)
        self.vfolders.mount_path(vfid)  # 404 for a vfolder that is not there
        return tokens, vfid, confine(params.get("relpath", ""), "relpath", allow_root=True)

    async def download(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        tokens, vfid, parts = self._common(params)
        archive = p.flag(params, "archive")
        if params.get("unmanaged_path") is not None:
            raise InvalidParameters("unmanaged_path is not served by fusegw: only the "
                                    "volume's own vfolders", data={"unmanaged_path": "refused"})
        token = tokens.issue({"op": "download", "vfid": str(vfid), "relpath": "/".join(parts),
                              "archive": archive, "unmanaged_path": None})
        return {"token": token}

    async def upload(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        tokens, vfid, parts = self._common(params)
        if not parts:
            raise InvalidParameters("relpath must name a file in the vfolder",
                                    data={"relpath": "empty"})
        size = _size(params.get("size"), self.max_upload_size)
        assert self.uploads is not None  # made with the tokens
        session = await self.uploads.create(vfid, parts, size)
        token = tokens.issue({"op": "upload", "vfid": str(vfid), "relpath": "/".join(parts),
                              "size": size, "session": session.id})
        return {"token": token}


def _size(value: Any, limit: int) -> int:
    """The storage proxy's `t.ToInt`: an integer, also as decimal text; 0..max-upload-size."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if value is None:
        raise InvalidParameters("missing parameter 'size'", data={"size": "required"})
    size = p.size(value, "size")
    if size > limit:
        raise InvalidParameters(f"size {size} exceeds max-upload-size {limit}",
                                data={"size": "over max-upload-size"})
    return size
