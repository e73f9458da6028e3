"""The manager's file routes and vfolder clone (issue 11), over a real mounted gateway.

`POST /folder/file/{mkdir, list, rename, move, delete, fetch}` and `POST /folder/clone`, on
the Unix socket and on the token-checked TCP listener: the storage proxy 23.03's shapes, every
relpath confined to its vfolder (escapes are 400 and touch nothing), every change made through
the mount (so accounted and enforced: usage == `du -s -B1`, EDQUOT is a 4xx), and bad input a
4xx problem that changes nothing and leaves the daemon serving.
"""

from __future__ import annotations

from typing import Any

import trio

from fusegw.control.app import ControlApp, Peer, StreamResponse
from fusegw.scopes import Caller

# -- the ASGI pieces, in process ----------------------------------------------------------------


def _asgi(app: ControlApp, method: str, path: str, query: bytes = b"",
          body: bytes = b"") -> list[dict[str, Any]]:
    """One request through the app, from a root peer; the messages it sends."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [], "http_version": "1.1",
             "extensions": {"fusegw.peer": Peer(1, 0, 0, frozenset())}}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    trio.run(app, scope, receive, send)
    return sent


def test_stream_response_is_sent_chunk_by_chunk_and_closed() -> None:
    closed = []

    async def chunks() -> Any:
        try:
            for i in range(3):
                yield b"x" * (i + 1)
        finally:
            closed.append(True)

    async def handler(params: dict[str, Any], caller: Caller) -> StreamResponse:
        return StreamResponse(chunks())

    app = ControlApp()
    app.route("POST", "/s", handler)
    sent = _asgi(app, "POST", "/s")
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"]) == {b"content-type": b"application/octet-stream"}
    assert [m["body"] for m in sent[1:]] == [b"x", b"xx", b"xxx", b""]
    assert [m.get("more_body", False) for m in sent[1:]] == [True, True, True, False]
    assert closed == [True]


def test_mkdir_takes_query_parameters_on_post_other_posts_do_not() -> None:
    seen: list[dict[str, Any]] = []

    async def handler(params: dict[str, Any], caller: Caller) -> None:
        seen.append(params)

    app = ControlApp()
    app.route("POST", "/folder/file/mkdir", handler)
    app.route("POST", "/folder/file/list", handler)
    _asgi(app, "POST", "/folder/file/mkdir", b"volume=v&exist_ok=true")
    _asgi(app, "POST", "/folder/file/list", b"volume=v")
    assert seen == [{"volume": "v", "exist_ok": "true"}, {}]
    sent = _asgi(app, "POST", "/folder/file/mkdir", b"volume=v", b'{"volume": "v"}')
    assert sent[0]["status"] == 400  # the same key in the query and the body
