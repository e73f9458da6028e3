"""Telling systemd how mountd is doing: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

Through systemd's own binding (`systemd.daemon.notify`, sd_notify(3)), which does nothing
without `$NOTIFY_SOCKET`. The watchdog ping comes from a task of mountd's one event loop, so
it stops when the loop stops turning (a blocked or dead mountd) and never because a volume is
sick: healing volumes is mountd's job, and a watchdog restart of mountd would take every
volume of the node down with it.
"""

from __future__ import annotations

import importlib
import logging
import os

import trio

# By name: the repository's systemd/ unit directory would shadow the binding for type checkers.
daemon = importlib.import_module("systemd.daemon")

log = logging.getLogger("fusegw.mountd")

SEND_TIMEOUT = 5.0


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC (when it is meant for this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


async def send(*lines: str) -> None:
    """One notification (several `KEY=value` lines). The datagram could block while systemd's
    queue is full, so it is sent from a worker thread with a deadline, never from the loop."""
    message = "\n".join(lines)
    with trio.move_on_after(SEND_TIMEOUT):
        sent = await trio.to_thread.run_sync(daemon.notify, message, abandon_on_cancel=True)
        if not sent and os.environ.get("NOTIFY_SOCKET"):
            log.warning("sd_notify failed message=%s", message.split("\n")[0])
        return
    log.warning("sd_notify timed out message=%s", message.split("\n")[0])


async def watchdog(interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds, for as long as the loop runs."""
    while True:
        await send("WATCHDOG=1")
        await trio.sleep(interval)


def status_line(states: dict[str, str]) -> str:
    """`STATUS=` text naming every volume's state: `2/3 serving: a serving, b restarting, ...`."""
    if not states:
        return "STATUS=no volumes configured"
    serving = sum(1 for s in states.values() if s == "serving")
    names = ", ".join(f"{name} {state}" for name, state in states.items())
    return f"STATUS={serving}/{len(states)} serving: {names}"
