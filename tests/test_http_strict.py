"""Bad HTTP whose meaning is ambiguous, or that asks to leave HTTP/1.1, gets a clear 4xx.

Each test writes raw bytes to a live gateway's real socket (the Unix control socket, or its TCP
listener with an auth token) and reads the answer with the standard library's HTTP parser:
- a WebSocket upgrade (hypercorn answered 500, or a bare 400 and a hung connection),
- an h2c upgrade (hypercorn switched to HTTP/2 with 101 and served the request),
- the HTTP/2 prior-knowledge preface (hypercorn spoke HTTP/2),
- any other `Upgrade` value (ignored, the request was served),
- duplicate JSON keys at any nesting level (the last one won),
- duplicate auth token headers (the last one decided),
- duplicate query parameters, or one given both in the query and the body (the last one won).
Each must be 400 `invalid-api-params` as problem+json naming what is ambiguous, change nothing,
and leave the daemon serving on the same pid.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Gateway, free_port, new_qsid, start_gateway, wait_for

PROBS = "https://api.backend.ai/probs/storage/"
INVALID = PROBS + "invalid-api-params"
PROBLEM_JSON = "application/problem+json"
TOKEN = "secret"
TOKEN_HEADER = "X-BackendAI-Storage-Auth-Token"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# a SETTINGS frame (empty) as an HTTP/2 client sends it after the preface
H2_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
MiB = 2**20


@dataclass
class Live:
    gw: Gateway
    port: int


@pytest.fixture(scope="module")
def live(public_dir: Path) -> Iterator[Live]:
    """One gateway for the module, with the TCP listener on (its token: TOKEN)."""
    port = free_port()
    gw = start_gateway(public_dir, "strict", ["--tcp-listen", f"127.0.0.1:{port}"],
                       {"FUSEGW_AUTH_TOKEN": TOKEN})
    yield Live(gw, port)
    gw.stop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    closed: bool | None  # the server closed the connection after the answer (None: not asked)

    def problem(self) -> dict[str, Any]:
        """The problem+json body, after checking the answer is one."""
        assert self.headers.get("content-type") == PROBLEM_JSON, (self.status, self.headers)
        problem = json.loads(self.body)
        assert isinstance(problem, dict), problem
        assert problem["type"].startswith(PROBS) and problem["title"], problem
        return problem


def exchange(target: Path | int, data: bytes, see_close: bool = False) -> Answer:
    """Write `data` on a new connection (a Unix socket path, or a TCP port on 127.0.0.1) and
    read one HTTP/1.x answer; with `see_close`, also whether the server then closes the
    connection (waiting up to the socket timeout for it)."""
    if isinstance(target, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(target))
    else:
        sock = socket.create_connection(("127.0.0.1", target), timeout=10)
    with sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()  # an HTTP/2 frame instead of a status line fails here
        body = response.read()
        closed = None
        if see_close:
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                closed = False
        return Answer(response.status, response.msg, body, closed)


def request_bytes(method: str, path: str, headers: list[tuple[str, str]],
                  body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """A request as written on the wire, headers exactly as given (duplicates included)."""
    lines = [f"{method} {path} {version}", "Host: fusegw", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def scope_body(gw: Gateway, qsid: str, limit: int = MiB) -> bytes:
    return json.dumps({"volume": gw.volume, "qsid": qsid,
                       "options": {"limit_bytes": limit}}).encode()


def snapshot(gw: Gateway) -> Any:
    """Everything a refused request could have changed: the scopes and the volume's tree."""
    with gw.client() as c:
        scopes = c.request("GET", "/quota-scopes",
                           content=json.dumps({"volume": gw.volume})).json()
    tree = sorted(str(p.relative_to(gw.source)) for p in gw.source.rglob("*")
                  if ".fusegw" not in p.parts)
    return scopes, tree


def assert_serving(live: Live) -> None:
    """The daemon still answers, on the same pid, on both listeners."""
    gw = live.gw
    assert gw.alive(), "gateway died"
    r = gw.request("GET", "/")
    assert r.status_code == 200 and r.json()["pid"] == gw.pid, r.text
    answer = exchange(live.port, request_bytes("GET", "/", [(TOKEN_HEADER, TOKEN),
                                                            ("Connection", "close")]))
    assert answer.status == 200, answer


def assert_refused(answer: Answer, field: str) -> dict[str, Any]:
    """400 invalid-api-params as problem+json, its `data` naming `field`."""
    assert answer.status == 400, (answer.status, answer.headers, answer.body[:300])
    problem = answer.problem()
    assert problem["type"] == INVALID and problem["status"] == 400, problem
    assert field in problem.get("data", {}), problem
    return problem


# -- leaving HTTP/1.1 ---------------------------------------------------------------------------


WEBSOCKET_UPGRADES = {
    "handshake": ("GET", [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                          ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")]),
    "no-key": ("GET", [("Connection", "Upgrade"), ("Upgrade", "websocket")]),
    "keep-alive-upgrade": ("GET", [("Connection", "keep-alive, Upgrade"),
                                   ("Upgrade", "WebSocket"), ("Sec-WebSocket-Key", WS_KEY),
                                   ("Sec-WebSocket-Version", "13")]),
    "post": ("POST", [("Connection", "Upgrade"), ("Upgrade", "websocket"),
                      ("Sec-WebSocket-Key", WS_KEY), ("Sec-WebSocket-Version", "13")]),
}


@pytest.mark.parametrize("case", sorted(WEBSOCKET_UPGRADES))
def test_websocket_upgrade_is_400_not_500(live: Live, case: str) -> None:
    """A WebSocket upgrade (hypercorn made it a websocket scope the app left unanswered: 500;
    without a key, a bare 400 and a connection left hanging) is 400 invalid-api-params naming
    the Upgrade header, problem+json, never 101; on a route that would create a scope, nothing
    is created."""
    gw = live.gw
    method, headers = WEBSOCKET_UPGRADES[case]
    qsid = new_qsid()
    path = "/quota-scope" if method == "POST" else "/"
    before = snapshot(gw)
    answer = exchange(gw.socket, request_bytes(method, path, headers,
                                               scope_body(gw, qsid) if method == "POST" else b""),
                      see_close=True)
    problem = assert_refused(answer, "Upgrade")
    assert "websocket" in problem["detail"].lower(), problem
    assert answer.closed, "the connection is closed after refusing a protocol switch"
    assert snapshot(gw) == before
    assert_serving(live)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_h2c_upgrade_is_refused_not_switched(live: Live, method: str) -> None:
    """`Upgrade: h2c` with HTTP2-Settings (hypercorn answered 101 and went on in HTTP/2 for a
    bodiless request, served one with a body in HTTP/1.1 as if the header were not there) is
    400 invalid-api-params naming Upgrade, in HTTP/1.1; the POST creates no scope."""
    gw = live.gw
    qsid = new_qsid()
    headers = [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
               ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")]
    body = scope_body(gw, qsid) if method == "POST" else b""
    before = snapshot(gw)
    answer = exchange(gw.socket, request_bytes(method, "/" if method == "GET" else "/quota-scope",
                                               headers, body))
    problem = assert_refused(answer, "Upgrade")
    assert "h2c" in problem["detail"], problem
    assert snapshot(gw) == before
    assert gw.request("GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}
                      ).status_code == 404
    assert_serving(live)


@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_http2_prior_knowledge_preface_is_not_served_as_h2(live: Live, listener: str) -> None:
    """The HTTP/2 connection preface (`PRI * HTTP/2.0`, then SETTINGS: hypercorn answered with
    HTTP/2 frames) gets an HTTP/1.1 400 invalid-api-params naming the HTTP version, and the
    connection is closed: neither listener speaks HTTP/2."""
    target: Path | int = live.gw.socket if listener == "unix" else live.port
    answer = exchange(target, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + H2_SETTINGS_FRAME,
                      see_close=True)
    problem = assert_refused(answer, "http_version")
    assert "HTTP/2.0" in problem["detail"], problem
    assert answer.closed
    assert_serving(live)


@pytest.mark.parametrize("value", ["foo/1", "TLS/1.2", "HTTP/2.0", "IRC/6.9, websocket"])
def test_other_upgrade_value_is_refused(live: Live, value: str) -> None:
    """Any other Upgrade value (hypercorn ignored it and served the request, so the client
    cannot tell whether its upgrade was taken) is the same 400 naming Upgrade; on POST
    /quota-scope the scope is not created."""
    gw = live.gw
    qsid = new_qsid()
    before = snapshot(gw)
    answer = exchange(gw.socket, request_bytes(
        "POST", "/quota-scope", [("Connection", "Upgrade"), ("Upgrade", value)],
        scope_body(gw, qsid)))
    assert_refused(answer, "Upgrade")
    assert snapshot(gw) == before
    assert_serving(live)


# -- ambiguous requests -------------------------------------------------------------------------


def _dup_volume(gw: Gateway, qsid: str) -> bytes:
    return (f'{{"volume": "nope", "qsid": "{qsid}", "options": null, '
            f'"volume": "{gw.volume}"}}').encode()


def _dup_qsid(gw: Gateway, qsid: str) -> bytes:
    return (f'{{"volume": "{gw.volume}", "qsid": "{new_qsid()}", "options": null, '
            f'"qsid": "{qsid}"}}').encode()


def _dup_in_options(gw: Gateway, qsid: str) -> bytes:
    return (f'{{"volume": "{gw.volume}", "qsid": "{qsid}", '
            f'"options": {{"limit_bytes": {MiB}, "limit_bytes": {2 * MiB}}}}}').encode()


def _dup_options(gw: Gateway, qsid: str) -> bytes:
    return (f'{{"volume": "{gw.volume}", "qsid": "{qsid}", '
            f'"options": {{"limit_bytes": {MiB}}}, "options": null}}').encode()


DUPLICATE_BODIES = {"volume": _dup_volume, "qsid": _dup_qsid, "limit_bytes": _dup_in_options,
                    "options": _dup_options}


@pytest.mark.parametrize("key", sorted(DUPLICATE_BODIES))
def test_duplicate_json_key_is_400_and_creates_nothing(live: Live, key: str) -> None:
    """A JSON body giving one key twice, at the top or inside `options` (json.loads let the
    last one win: the scope was created), is 400 invalid-api-params naming that key; POST
    /quota-scope creates nothing, PATCH on an existing scope leaves its limit as it was."""
    gw = live.gw
    qsid = new_qsid()
    body = DUPLICATE_BODIES[key](gw, qsid)
    before = snapshot(gw)
    answer = exchange(gw.socket, request_bytes("POST", "/quota-scope", [], body))
    assert_refused(answer, key)
    assert snapshot(gw) == before
    assert gw.request("GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}
                      ).status_code == 404

    gw.create_scope(qsid, limit_bytes=3 * MiB)
    before = snapshot(gw)
    answer = exchange(gw.socket, request_bytes("PATCH", "/quota-scope", [], body))
    assert_refused(answer, key)
    assert snapshot(gw) == before
    assert gw.describe(qsid)["limit_bytes"] == 3 * MiB
    assert_serving(live)


@pytest.mark.parametrize("tokens", [(TOKEN, TOKEN), ("wrong", TOKEN), (TOKEN, "wrong"),
                                    (TOKEN, "")])
def test_duplicate_token_header_never_passes(live: Live, tokens: tuple[str, str]) -> None:
    """Two X-BackendAI-Storage-Auth-Token headers (the last one decided: `wrong` then the
    secret passed) are refused with 400 invalid-api-params naming the header, even when both
    are the secret: on GET / and on a POST /quota-scope, which creates nothing."""
    gw = live.gw
    qsid = new_qsid()
    headers = [(TOKEN_HEADER, t) for t in tokens]
    before = snapshot(gw)
    assert_refused(exchange(live.port, request_bytes("GET", "/", headers)), TOKEN_HEADER)
    answer = exchange(live.port, request_bytes("POST", "/quota-scope", headers,
                                               scope_body(gw, qsid)))
    assert_refused(answer, TOKEN_HEADER)
    assert snapshot(gw) == before
    assert gw.request("GET", "/quota-scope", {"volume": gw.volume, "qsid": qsid}
                      ).status_code == 404
    one = exchange(live.port, request_bytes("POST", "/quota-scope", [(TOKEN_HEADER, TOKEN)],
                                            scope_body(gw, qsid)))
    assert one.status == 204, one.body
    assert gw.describe(qsid)["limit_bytes"] == MiB
    assert_serving(live)


@pytest.mark.parametrize("case", ["qsid-twice", "volume-twice-same", "query-and-body"])
def test_duplicate_query_parameter_is_400(live: Live, case: str) -> None:
    """A query parameter given twice (parse_qsl kept the last), or given both in the query and
    in the body (the body won), is 400 invalid-api-params naming it."""
    gw = live.gw
    known, other = new_qsid(), new_qsid()
    gw.create_scope(known, limit_bytes=MiB)
    body = b""
    if case == "qsid-twice":
        field, query = "qsid", f"volume={gw.volume}&qsid={other}&qsid={known}"
    elif case == "volume-twice-same":
        field, query = "volume", f"volume={gw.volume}&qsid={known}&volume={gw.volume}"
    else:
        field, query = "qsid", f"volume={gw.volume}&qsid={other}"
        body = json.dumps({"qsid": known}).encode()
    answer = exchange(gw.socket, request_bytes("GET", f"/quota-scope?{query}", [], body))
    assert_refused(answer, field)
    assert_serving(live)


def test_single_parameters_and_plain_http_are_still_served(live: Live) -> None:
    """The strictness refuses only ambiguity: HTTP/1.0, a query string, a nested body and one
    token header are served as before (a guard for the refusals above, not a bug)."""
    gw = live.gw
    qsid = f"project:{uuid.uuid4()}"
    gw.create_scope(qsid, limit_bytes=MiB)
    answer = exchange(gw.socket, request_bytes(
        "GET", f"/quota-scope?volume={gw.volume}&qsid={qsid}", [], version="HTTP/1.0"))
    assert answer.status == 200 and json.loads(answer.body)["limit_bytes"] == MiB, answer.body
    answer = exchange(live.port, request_bytes("GET", "/", [(TOKEN_HEADER, TOKEN),
                                                            ("Connection", "close")]))
    assert answer.status == 200


def test_websocket_scope_under_stock_hypercorn_is_400_not_500(tmp_path: Path) -> None:
    """Served by stock hypercorn, which negotiates WebSockets itself and hands the app a
    websocket scope (the app returned without answering it: hypercorn sent a bare 500), the
    control app answers a handshake with the same 400 problem+json, through the ASGI
    websocket HTTP-response extension. The gateway's own server never makes such a scope."""
    import threading

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from fusegw.control.app import ControlApp

    path = tmp_path / "stock.sock"
    config = Config()
    config.bind = [f"unix:{path}"]
    config.accesslog = config.errorlog = None
    stop: dict[str, Any] = {}

    async def main() -> None:
        stop["event"] = trio.Event()
        stop["token"] = trio.lowlevel.current_trio_token()
        await serve(ControlApp(), config,
                    shutdown_trigger=stop["event"].wait)

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    try:
        wait_for(path.exists, what="stock hypercorn listening")
        answer = exchange(path, request_bytes("GET", "/", WEBSOCKET_UPGRADES["handshake"][1]))
        problem = assert_refused(answer, "Upgrade")
        assert "websocket" in problem["detail"], problem
    finally:
        wait_for(lambda: "token" in stop, what="trio loop started")
        trio.from_thread.run_sync(stop["event"].set, trio_token=stop["token"])
        thread.join(timeout=20)
    assert not thread.is_alive()
