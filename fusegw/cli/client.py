"""The admin CLI's side of the control socket: finding it, calling it, mapping answers to exits.

Exit codes: 0 success, 1 other failure, 2 usage error (bad arguments, HTTP 400), 3 not found
(404), 4 refused (403, 409, 413), 5 daemon unreachable.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

import httpx

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_UNREACHABLE = range(6)
SOCKET_DIR = "/run/fusegw"
NODE_SOCKET = f"{SOCKET_DIR}/fusegw.sock"


class CLIError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def default_socket(volume: str | None) -> str:
    """$FUSEGW_SOCKET, else the volume's socket, else the node's, else the only one there is."""
    if env := os.environ.get("FUSEGW_SOCKET"):
        return env
    if volume and os.path.exists(f"{SOCKET_DIR}/{volume}.sock"):
        return f"{SOCKET_DIR}/{volume}.sock"
    if os.path.exists(NODE_SOCKET):
        return NODE_SOCKET
    found = sorted(glob.glob(f"{SOCKET_DIR}/*.sock"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CLIError(f"no control socket in {SOCKET_DIR}; is a gateway running? "
                       "(give --socket PATH)", EXIT_UNREACHABLE)
    raise CLIError(f"several control sockets in {SOCKET_DIR}; choose one with --socket or "
                   "--volume", EXIT_USAGE)


STATUS_EXIT = {400: EXIT_USAGE, 404: EXIT_NOT_FOUND, 403: EXIT_REFUSED, 409: EXIT_REFUSED,
               413: EXIT_REFUSED, 405: EXIT_USAGE}


class Client:
    def __init__(self, socket: str | None, volume: str | None) -> None:
        self.socket = socket or default_socket(volume)
        self._volume = volume
        self._http = httpx.Client(transport=httpx.HTTPTransport(uds=self.socket),
                                  base_url="http://fusegw", timeout=None)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            r = self._http.request(method, path,
                                   content=None if body is None else json.dumps(body))
        except (httpx.TransportError, OSError) as e:
            # A socket we may not open (0660, not in the admin group) is a refusal.
            cause: BaseException = e
            while cause.__cause__ is not None:
                cause = cause.__cause__
            code = EXIT_REFUSED if isinstance(cause, PermissionError) else EXIT_UNREACHABLE
            raise CLIError(f"cannot reach the gateway at {self.socket}: {e}", code) from None
        if r.status_code >= 400:
            try:
                problem = r.json()
                detail = problem.get("detail") or problem.get("title")
                if problem.get("data"):
                    detail += f" {json.dumps(problem['data'])}"
            except ValueError:
                detail = r.text
            raise CLIError(f"{detail} (HTTP {r.status_code})",
                           STATUS_EXIT.get(r.status_code, EXIT_ERROR))
        return r.json() if r.content else None

    @property
    def volume(self) -> str:
        """--volume, or the one volume this socket serves."""
        if self._volume is None:
            volumes = self.call("GET", "/volumes")["volumes"]
            if len(volumes) != 1:
                names = ", ".join(v["name"] for v in volumes)
                raise CLIError(f"this socket serves several volumes ({names}); give --volume",
                               EXIT_USAGE)
            self._volume = volumes[0]["name"]
        return self._volume


def fail(error: CLIError) -> int:
    print(f"fusegw: {error}", file=sys.stderr)
    return error.code


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)
