"""What every vendor emulator shares: a small router over a plain ASGI app, a request log,
fault injection, and a process launcher.

Each emulator (`tests/emulators/<vendor>.py`) is a real HTTP server standing in for an
appliance's management API: its module defines `make_app(root: Path) -> EmulatorApp`, where
`root` is the directory standing in for the appliance's exported volume (the gateway's SOURCE),
so objects the API creates (a qtree, a fileset, a directory) appear there and usage is counted
from there. `python tests/emulators/run.py VENDOR --port P --root DIR [--certfile F --keyfile K]`
serves it with hypercorn (trio worker), over TLS when given a certificate.

Control endpoints, on every emulator, for the tests:

    POST /_emulator/faults   {"kind": "5xx"|"timeout"|"drop"|<vendor kind>, "count": N,
                              "method": "GET"|..., "path": "<prefix>"}: the next N matching
                              requests get the fault (5xx: 503 with the vendor's error body;
                              timeout: no answer for 60 s; drop: the connection is closed
                              mid-answer)
    GET  /_emulator/requests the requests answered so far: method, path, query, json body
    GET  /_emulator/state    the emulator's objects (`EmulatorApp.state`), to find orphans
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import trio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the JSON body, None when there is none
    params: dict[str, str] = field(default_factory=dict)  # the route's named groups


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response] | Response]


class HTTPError(Exception):
    """Raised by a handler: answered with `status` and the vendor's error body."""

    def __init__(self, status: int, message: str, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass
class Fault:
    kind: str
    count: int
    method: str | None = None
    path: str = ""


class EmulatorApp:
    """An ASGI app: routes, the request log and faults. Subclasses register handlers
    (`route`), render their vendor's error body (`error_body`), and name their objects
    (`state`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.log: list[dict[str, Any]] = []
        self.faults: list[Fault] = []

    # -- for subclasses -------------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """`pattern`: a path with `{name}` parts (matching one segment)."""
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.routes.append((method, re.compile(f"^{regex}$"), handler))

    def error_body(self, status: int, message: str, code: Any) -> Any:
        return {"error": {"message": message, "code": code}}

    def state(self) -> Any:
        return {}

    def authorize(self, request: Request) -> None:
        """Raise HTTPError(401) for a request without valid credentials."""

    async def vendor_fault(self, fault: Fault, request: Request) -> Response | None:
        """A fault kind of this vendor's own (e.g. an expired token); None: not one."""
        return None

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Request(
            scope["method"], scope["path"],
            {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()},
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            json.loads(raw) if raw.strip() else None)
        response = await self._answer(request, send)
        if response is None:
            return  # dropped
        body = b"" if response.body is None else json.dumps(response.body).encode()
        headers = [(b"content-type", b"application/json"), *(
            (k.encode(), v.encode()) for k, v in response.headers.items())]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, request: Request, send: Send) -> Response | None:
        if request.path.startswith("/_emulator/"):
            return self._control(request)
        self.log.append({"method": request.method, "path": request.path,
                         "query": request.query, "json": request.body})
        fault = self._take_fault(request)
        if fault is not None:
            if fault.kind == "5xx":
                return Response(503, self.error_body(503, "emulated failure", 503))
            if fault.kind == "timeout":
                await trio.sleep(60)
                return Response(504, self.error_body(504, "emulated timeout", 504))
            if fault.kind == "drop":  # start the answer, then break the connection
                await send({"type": "http.response.start", "status": 200, "headers": []})
                raise ConnectionAbortedError("emulated dropped connection")
            answer = await self.vendor_fault(fault, request)
            if answer is not None:
                return answer
        try:
            self.authorize(request)
            for method, regex, handler in self.routes:
                match = regex.match(request.path)
                if match and method == request.method:
                    request.params = match.groupdict()
                    result = handler(request)
                    if not isinstance(result, Response):
                        result = await result
                    return result
            raise HTTPError(404, f"no such endpoint {request.method} {request.path}", 404)
        except HTTPError as e:
            return Response(e.status, self.error_body(e.status, e.message, e.code))

    def _take_fault(self, request: Request) -> Fault | None:
        for fault in self.faults:
            if ((fault.method is None or fault.method == request.method)
                    and request.path.startswith(fault.path) and fault.count > 0):
                fault.count -= 1
                if not fault.count:
                    self.faults.remove(fault)
                return fault
        return None

    def _control(self, request: Request) -> Response:
        if request.path == "/_emulator/faults" and request.method == "POST":
            body = request.body or {}
            self.faults.append(Fault(body["kind"], int(body.get("count", 1)),
                                     body.get("method"), body.get("path", "")))
            return Response(204)
        if request.path == "/_emulator/requests":
            return Response(200, self.log)
        if request.path == "/_emulator/state":
            return Response(200, self.state())
        return Response(404, {"error": "no such control endpoint"})


# -- usage counted from the exported directory -----------------------------------------------


def allocated_bytes(path: Path) -> int:
    """`du -s -B1` of a directory (what a block-counting quota engine reports)."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def logical_bytes(path: Path) -> int:
    """The sum of file sizes below a directory (OneFS's `fslogical`)."""
    total = 0
    for entry in path.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            total += entry.stat().st_size
    return total


def inodes(path: Path) -> int:
    return sum(1 for _ in path.rglob("*"))


# -- the process, for the tests ----------------------------------------------------------------


@dataclass
class Emulator:
    vendor: str
    url: str
    proc: subprocess.Popen[bytes]
    cafile: Path | None = None

    def client(self) -> httpx.Client:
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(self.cafile))
                                         if self.cafile else True)
        return httpx.Client(base_url=self.url, verify=verify, timeout=10)

    def fault(self, kind: str, count: int = 1, method: str | None = None,
              path: str = "") -> None:
        with self.client() as c:
            r = c.post("/_emulator/faults", json={"kind": kind, "count": count,
                                                  "method": method, "path": path})
            assert r.status_code == 204, r.text

    def requests(self) -> list[dict[str, Any]]:
        with self.client() as c:
            return list(c.get("/_emulator/requests").json())

    def state(self) -> Any:
        with self.client() as c:
            return c.get("/_emulator/state").json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (its own CA): (certfile, keyfile)."""
    cert, key = directory / "emulator.crt", directory / "emulator.key"
    openssl = shutil.which("openssl")
    assert openssl, "openssl is missing (Debian package openssl)"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def start_emulator(vendor: str, root: Path, port: int, tls_dir: Path | None = None
                   ) -> Emulator:
    """Start the vendor's emulator process on `port` (TLS when `tls_dir` is given: the
    certificate is made there and is also the CA a client must trust)."""
    argv = [sys.executable, str(Path(__file__).with_name("run.py")), vendor, "--port",
            str(port), "--root", str(root)]
    cafile = None
    if tls_dir is not None:
        cafile, key = make_certificate(tls_dir)
        argv += ["--certfile", str(cafile), "--keyfile", str(key)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    scheme = "https" if cafile else "http"
    emulator = Emulator(vendor, f"{scheme}://127.0.0.1:{port}", proc, cafile)
    deadline = time.monotonic() + 20
    while True:
        try:
            emulator.requests()
            return emulator
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                emulator.stop()
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"{vendor} emulator did not start: {err}") from None
            time.sleep(0.05)
