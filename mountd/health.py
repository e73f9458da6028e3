"""Is a gateway serving? Its mount answers a stat and its control socket a `GET /`.

Both are asked at once and must answer within the deadline: a gateway that is stopped
(SIGSTOP), deadlocked or too busy to answer either is not serving, even if its process lives.
The `GET /` answer must come from the process mountd started (its pid), so a stale gateway
still holding the socket never passes for the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from mountd import mounts


@dataclass(slots=True)
class Verdict:
    """The outcome of one check: `status` is the gateway's `GET /` when it answered."""

    problem: str | None  # None: serving
    status: dict[str, Any] | None = None


def unix_client(socket: Path, timeout: float | httpx.Timeout | None) -> httpx.AsyncClient:
    """An HTTP client for one gateway's control socket (httpx runs on trio through anyio)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)),
                             base_url="http://fusegw", timeout=timeout)


async def check(client: httpx.AsyncClient, mountpoint: Path, pid: int,
                timeout: float) -> Verdict:
    """Stat the mount and ask `GET /`, concurrently, within `timeout`."""
    verdict = Verdict(None)
    problems: list[str] = []

    async def stat() -> None:
        problem = await mounts.probe(mountpoint, timeout)
        if problem is not None:
            problems.append(problem)

    async def ask() -> None:
        problem, verdict.status = await _root(client, pid, timeout)
        if problem is not None:
            problems.append(problem)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stat)
        nursery.start_soon(ask)
    verdict.problem = "; ".join(problems) or None
    return verdict


async def _root(client: httpx.AsyncClient, pid: int,
                timeout: float) -> tuple[str | None, dict[str, Any] | None]:
    with trio.move_on_after(timeout):
        try:
            r = await client.get("/")
            status = r.json()
        except (httpx.HTTPError, OSError, ValueError) as e:
            return f"GET / failed: {type(e).__name__}: {e}".rstrip(": "), None
        if r.status_code != 200 or not isinstance(status, dict):
            return f"GET / answered {r.status_code}", None
        if status.get("pid") != pid:
            return f"GET / answered by pid {status.get('pid')}, not {pid}", None
        return None, status
    return f"GET / did not answer within {timeout:g}s", None
