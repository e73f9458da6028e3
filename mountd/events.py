"""What happened to the gateways: every death, kept and logged as one JSON line.

A gateway restart is not invisible to users: the dead FUSE connection takes every open file
with it, and containers that bind-mounted a vfolder from the old mount keep that dead mount
until they are restarted. So each death is recorded with its cause and how long the volume was
down, and shown in the node's `GET /`, for the cluster agent to restart the sessions that used
the volume.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

events_log = logging.getLogger("fusegw.mountd.events")

KEPT_DEATHS = 20
"""Deaths kept per volume in memory (the log has them all)."""


@dataclass(slots=True)
class Death:
    """One gateway that stopped serving (or never started): when, why, and once a gateway
    serves the volume again, for how long it was down and which process took over."""

    time: float  # wall clock at detection (seconds since the epoch)
    volume: str
    cause: str
    old_pid: int | None
    new_pid: int | None = None
    downtime_seconds: float | None = None  # set once the replacement serves
    failed_starts: int = 0  # restarts that failed before one served
    last_error: str | None = None  # why the latest of them failed
    detected: float = 0.0  # monotonic, for the downtime

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["detected"]
        return data


class History:
    """The recent deaths of one volume and its restart count."""

    def __init__(self, volume: str) -> None:
        self.volume = volume
        self.deaths: deque[Death] = deque(maxlen=KEPT_DEATHS)
        self.restarts = 0
        self.pending: Death | None = None  # the death whose replacement is not serving yet

    def died(self, cause: str, pid: int | None) -> Death:
        """Record a death; a failed start while the volume is down belongs to that death."""
        if self.pending is not None:
            death = self.pending
            death.failed_starts += 1
            if cause != death.last_error:  # said once per distinct cause, not every retry
                emit("gateway-start-failed", logging.WARNING, volume=self.volume, cause=cause,
                     pid=pid, failed_starts=death.failed_starts)
            death.last_error = cause
            return death
        death = Death(time.time(), self.volume, cause, pid, detected=time.monotonic())
        self.deaths.append(death)
        self.pending = death
        emit("gateway-died", logging.WARNING, volume=self.volume, cause=cause, pid=pid)
        return death

    def serving(self, pid: int) -> Death | None:
        """The replacement answers: close the pending death with its downtime."""
        death, self.pending = self.pending, None
        if death is None:
            return None
        self.restarts += 1
        death.new_pid = pid
        death.downtime_seconds = round(time.monotonic() - death.detected, 3)
        emit("gateway-restarted", logging.INFO, volume=self.volume, cause=death.cause,
             old_pid=death.old_pid, new_pid=pid, downtime_seconds=death.downtime_seconds,
             died_at=round(death.time, 3), failed_starts=death.failed_starts)
        return death

    def public(self) -> list[dict[str, Any]]:
        return [d.public() for d in reversed(self.deaths)]  # newest first


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """One JSON line on `fusegw.mountd.events`: what a log shipper or the agent parses."""
    events_log.log(level, "%s", json.dumps({"event": event, "time": round(time.time(), 3),
                                            **fields}))
