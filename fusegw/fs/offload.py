"""A bounded pool of worker threads for the syscalls that may wait on the disk.

A handler whose syscall runs here gives the event loop back while the disk works, so other
requests of the mount are served meanwhile and the disk sees as many requests at once as
there are workers. `trio.to_thread.run_sync` does this too, but costs ~70 µs of CPU per call
on this machine kind (its thread cache hands each call over through a fresh lock and carries
the context over); this pool's threads take calls from one queue and wake the waiting task
through the trio token, ~50 µs alone and ~25 µs per call when many are in flight (measured
with 20,000 `pread`s, `bench/` profiles). Calls are never cancelled once queued: a syscall
cannot be taken back, and the kernel waits for every FUSE answer anyway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

DEFAULT_THREADS = 16
"""Enough to keep a disk's queue busy behind 16 readers, few enough to stay cheap: threads
wait on the disk, not on the two cores."""

_Job = tuple[trio.lowlevel.Task, Callable[..., Any], tuple[Any, ...]] | None


class Offload:
    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self.threads = threads
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._token: trio.lowlevel.TrioToken | None = None

    def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"fusegw-io-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def _work(self) -> None:
        token = self._token
        assert token is not None
        jobs = self._jobs
        while (job := jobs.get()) is not None:
            task, fn, args = job
            result = outcome.capture(fn, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread; its result, or its exception raised here."""
        if self._token is None:
            self._start()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._jobs.put((trio.lowlevel.current_task(), fn, args))
        result: T = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def close(self) -> None:
        """Let the workers end once the queue is drained."""
        for _ in self._workers:
            self._jobs.put(None)
        self._workers.clear()
        self._token = None
