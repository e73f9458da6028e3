"""What every vendor appliance backend shares: one HTTP client for the appliance's management
API, with the behaviour an operator expects of it.

- TLS verification on by default; turning it off (the vendor's `*_verify_ssl` option) is
  logged as a warning at start. A private CA is trusted through SSL_CERT_FILE, as httpx reads it.
- Connect and read timeouts; bounded retries with backoff for idempotent requests (and for
  requests the caller marks safe to repeat) on connection errors, timeouts and 5xx answers.
- Credentials never logged: the client logs method, path and status only.
- An appliance error becomes `ApplianceError`, a BackendError naming the appliance and its own
  message, with the HTTP status the gateway answers: 502 when the appliance is unreachable or
  failing, 4xx (400, 404, 409) when it refused our input.
- Asynchronous jobs (202 and a job link, as ONTAP and Storage Scale answer) are polled to
  completion with a deadline (`poll`).

Runs on trio: httpx's AsyncClient is built on anyio.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import trio

from backends.base import BackendError

log = logging.getLogger("backends.rest")

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
RETRIES = 3  # attempts after the first, for requests safe to repeat
BACKOFF = (0.2, 0.5, 1.0)
JOB_DEADLINE = 120.0
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ApplianceError(BackendError):
    """The appliance refused or failed a request; `status` is what the gateway answers."""

    def __init__(self, appliance: str, message: str, status: int = 502,
                 errno_: int = errno.EIO) -> None:
        super().__init__(f"{appliance}: {message}", errno_)
        self.status = status


def truthy(value: Any, default: bool = True) -> bool:
    """An on/off option as the storage proxy's files write them (true, "false", 0, "no")."""
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


class ApplianceClient:
    """One appliance's management API (`base_url`), as a backend calls it."""

    def __init__(self, appliance: str, base_url: str, verify: bool = True,
                 auth: httpx.Auth | tuple[str, str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 timeout: float = READ_TIMEOUT) -> None:
        self.appliance = appliance
        if not verify:
            log.warning("TLS verification is off for %s at %s: anyone on the path can pose as "
                        "the appliance", appliance, base_url)
        self.http = httpx.AsyncClient(
            base_url=base_url, verify=verify, auth=auth, headers=dict(headers or {}),
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))
        self.requests = 0  # sent, for status and tests

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: Mapping[str, Any] | None = None, repeatable: bool | None = None,
                      ok: tuple[int, ...] = (), headers: Mapping[str, str] | None = None
                      ) -> httpx.Response:
        """Send a request; retried on connection errors and 5xx if `repeatable` (default: the
        method is idempotent). A status >= 400 not in `ok` raises ApplianceError."""
        again = method in IDEMPOTENT if repeatable is None else repeatable
        attempts = 1 + (RETRIES if again else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                self.requests += 1
                response = await self.http.request(method, path, json=json, params=params,
                                                   headers=headers)
            except httpx.TransportError as e:
                log.warning("%s %s %s failed: %s", self.appliance, method, path,
                            type(e).__name__)
                if last:
                    raise ApplianceError(self.appliance, f"unreachable ({type(e).__name__}: "
                                         f"{_reason(e)})", 502, errno.EHOSTUNREACH) from None
            else:
                log.debug("%s %s %s -> %d", self.appliance, method, path, response.status_code)
                if response.status_code >= 500 and not last and response.status_code not in ok:
                    log.warning("%s %s %s answered %d; retrying", self.appliance, method, path,
                                response.status_code)
                elif response.status_code >= 400 and response.status_code not in ok:
                    raise self.error(response)
                else:
                    return response
            await trio.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        raise AssertionError("unreachable")  # the loop returns or raises

    def error(self, response: httpx.Response) -> ApplianceError:
        """The appliance's own message, with the status the gateway answers: its 4xx where
        it refused our input (400, 404, 409 kept; others 400), 502 for its own failures."""
        code = response.status_code
        status = 502 if code >= 500 or code in (401, 403, 407) else (
            code if code in (400, 404, 409) else 400)
        return ApplianceError(self.appliance, f"HTTP {code}: {message_of(response)}", status,
                              errno.ENOENT if code == 404 else errno.EIO)

    async def poll(self, check: Callable[[], Awaitable[bool]], what: str,
                   deadline: float = JOB_DEADLINE, interval: float = 0.2) -> None:
        """Call `check` until it says done; ApplianceError (502) past the deadline."""
        with trio.move_on_after(deadline):
            while not await check():
                await trio.sleep(interval)
                interval = min(interval * 1.5, 2.0)
            return
        raise ApplianceError(self.appliance, f"{what} did not finish within {deadline:g} s",
                             502, errno.ETIMEDOUT)


def _reason(error: Exception) -> str:
    """What a transport error says, or what caused it (a TLS handshake's ConnectError says
    nothing itself; its cause names CERTIFICATE_VERIFY_FAILED)."""
    text = str(error)
    cause = error.__cause__ or error.__context__
    while not text and cause is not None:
        text, cause = str(cause), cause.__cause__ or cause.__context__
    return text or "no answer"


def message_of(response: httpx.Response) -> str:
    """The message in a vendor's error body, whatever its shape; else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    return _find_message(body) or response.text[:300]


def _find_message(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "msg", "error", "errors", "detail", "description", "reason",
                    "status", "data"):
            if key in body:
                found = _find_message(body[key]) if not isinstance(body[key], str) else body[
                    key]
                if found:
                    return found
        return None
    if isinstance(body, list):
        for item in body:
            found = _find_message(item)
            if found:
                return found
    return None
