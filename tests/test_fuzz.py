"""No input breaks the control socket: thousands of generated requests against a live daemon.

Each request must get a non-5xx answer; every refusal must be problem+json and leave the
volume's state exactly as it was; the daemon must keep serving (same pid) to the end. The run
prints how many requests were sent, how many 5xx came back and how many times the daemon
restarted.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Gateway, new_qsid, start_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROBLEM = "https://api.backend.ai/probs/storage/"
ROUTES = ["/", "/volumes", "/metrics", "/quota-scope", "/quota-scope/quota", "/quota-scopes",
          "/quota-scope/check", "/folder/create", "/folder/delete", "/folder/usage",
          "/folder/used-bytes", "/folder/mount"]
STATS = {"sent": 0, "5xx": 0, "refused": 0, "accepted": 0}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("fuzz"), "vol")
    try:
        yield gw
    finally:
        pid = gw.pid
        alive = gw.alive()
        gw.stop()
        print(f"\nfuzz: {STATS['sent']} requests sent, {STATS['5xx']} answered 5xx, "
              f"{STATS['refused']} refused (4xx), {STATS['accepted']} accepted, "
              f"daemon restarts: {0 if alive and pid else 1}")


CLIENTS: dict[str, httpx.Client] = {}


def client_for(gw: Gateway) -> httpx.Client:
    """One client per daemon: building an httpx client costs more than a request."""
    if str(gw.socket) not in CLIENTS:
        CLIENTS[str(gw.socket)] = gw.client()
    return CLIENTS[str(gw.socket)]


def snapshot(gw: Gateway) -> Any:
    """Everything a request could change: scopes with limits and usage, the volume's tree."""
    scopes = client_for(gw).request("GET", "/quota-scopes",
                                    content=json.dumps({"volume": "vol"})).json()
    tree = sorted(str(p.relative_to(gw.source)) for p in gw.source.rglob("*")
                  if ".fusegw" not in p.parts)
    return scopes, tree


UUIDS = st.one_of(st.uuids().map(str), st.uuids().map(lambda u: u.hex), st.just(""),
                  st.text(max_size=40))
QSIDS = st.one_of(
    st.builds(lambda k, u: f"{k}:{u}", st.sampled_from(["user", "project", "USER", "group",
                                                         "", "user:user"]), UUIDS),
    st.integers(), st.none(), st.booleans(), st.text(max_size=60),
    st.lists(st.text(max_size=5), max_size=3),
)
VFIDS = st.one_of(st.builds(lambda q, f: f"{q}/{f}", QSIDS, UUIDS), QSIDS)
SIZES = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=True),
                  st.text(max_size=10), st.none(), st.booleans(),
                  st.sampled_from([0, 1, 2**63 - 1, 2**63, -1, 1.5, "10G"]))
OPTIONS = st.one_of(
    st.none(), st.text(max_size=10), st.integers(), st.lists(st.integers(), max_size=3),
    st.fixed_dictionaries({}, optional={"limit_bytes": SIZES, "limit_inodes": SIZES,
                                        "initial_max_size_for_quota_scope": SIZES,
                                        "bogus": SIZES}),
)
VOLUMES = st.one_of(st.just("vol"), st.just("nope"), st.integers(), st.none(),
                    st.text(max_size=10))
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={"volume": VOLUMES, "qsid": QSIDS, "vfid": VFIDS,
                                        "options": OPTIONS, "repair": st.one_of(
                                            st.booleans(), st.integers(), st.text(max_size=3))}),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                      max_size=4),
                 max_leaves=10),
)
RAW = st.one_of(st.binary(max_size=200),
                st.sampled_from([b"{", b"[1,2", b"\xff\xfe", b'{"volume": "vol"', b"null",
                                 b'"string"', b"1e999999", b'{"qsid": NaN}']))


def send(gw: Gateway, client: httpx.Client, method: str, path: str, content: bytes,
         query: str) -> httpx.Response:
    STATS["sent"] += 1
    r = client.request(method, path + (f"?{query}" if query else ""), content=content)
    if r.status_code >= 500:
        STATS["5xx"] += 1
    return r


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
       path=st.one_of(st.sampled_from(ROUTES), st.text(alphabet="/abcdefgh-?%.", max_size=20)
                      .map(lambda s: "/" + s)),
       body=st.one_of(BODIES.map(lambda b: json.dumps(b).encode()), RAW),
       query=st.one_of(st.just(""), st.text(alphabet="=&qsidvolume:%-", max_size=30)))
def test_generated_requests_never_5xx_and_refusals_change_nothing(live, method, path, body,
                                                                   query):
    """Every generated request: < 500; a 4xx is problem+json and changed nothing."""
    client = client_for(live)
    before = snapshot(live)
    try:
        r = send(live, client, method, path, body, query)
    except httpx.InvalidURL:
        return  # httpx refused to build the request: nothing was sent
    assert r.status_code < 500, (method, path, body, r.text)
    if r.status_code >= 400:
        STATS["refused"] += 1
        assert r.headers["content-type"] == "application/problem+json"
        problem = r.json()
        assert problem["type"].startswith(PROBLEM) and problem["title"]
        assert snapshot(live) == before, (method, path, body)
    else:
        STATS["accepted"] += 1
    assert live.alive()


def test_valid_flow_survives_the_fuzzing(live):
    """After the generated requests, the daemon still does real work on the same pid."""
    pid = live.pid
    qsid = new_qsid()
    live.create_scope(qsid, limit_bytes=2**20)
    vf = live.make_vfolder(qsid)
    base = live.describe(qsid)["used_bytes"]
    (vf / "f").write_bytes(b"x" * 8192)
    assert 8192 <= live.describe(qsid)["used_bytes"] - base <= 8192 + 2 * 4096
    assert live.request("GET", "/").json()["pid"] == pid


@pytest.mark.parametrize("payload", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n",                                     # never finished
    b"POST /quota-scope HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"vol",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n",
    b"POST /quota-scope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    b"POST /quota-scope HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
])
def test_broken_and_half_closed_connections(live, payload):
    """Malformed, truncated, oversized and half-closed HTTP never stop the daemon."""
    before = snapshot(live)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(live.socket))
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
    STATS["sent"] += 1
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status < 500, answer[:200]
    assert snapshot(live) == before
    assert live.request("GET", "/").status_code == 200
    assert live.alive()


def test_unknown_scope_folder_ops_are_404(live):
    """Well-formed IDs that name nothing are 404s with the storage proxy's problem types."""
    qsid = f"project:{uuid.uuid4()}"
    vfid = f"{qsid}/{uuid.uuid4().hex}"
    # POST /folder/delete of it is 204 (idempotent): tests/test_manager_api.py
    for method, path, body in [("GET", "/quota-scope", {"volume": "vol", "qsid": qsid}),
                               ("GET", "/folder/usage", {"volume": "vol", "vfid": vfid})]:
        r = live.request(method, path, body)
        assert r.status_code == 404, r.text
        assert r.json()["type"] == PROBLEM + "quota/scope/not-found"
