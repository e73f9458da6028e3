"""A bounded pool of worker threads for the syscalls that may wait on the disk, used only
where waiting is what they do.

A handler whose syscall runs here gives the event loop back while the disk works, so other
requests of the mount are served meanwhile and the disk sees as many requests at once as
there are workers. The hop has a price: ~50 µs of CPU alone and ~25 µs per call when many are
in flight (the wake-ups of a worker and of the loop; `trio.to_thread.run_sync` costs ~70 µs),
which with the wake-ups and the GIL under load costs more than a read the backing disk
answers in a fraction of a millisecond waits (FAST's measurements). So each kind of call
(`fn`) keeps the moving average of how long it takes, and runs inline while that is below
FAST: a call that short holds the other requests up for less than the hop would cost them.
A call made while no other request waits (`alone`: none in the FUSE queue, none being
answered; `fusegw.fs.session`) also runs inline: there is no one for it to hold up.
Everything slower goes to the workers, and keeps being measured there, so a disk that becomes
fast again is noticed.

Calls are never cancelled once queued: a syscall cannot be taken back, and the kernel waits
for every FUSE answer anyway.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

DEFAULT_THREADS = 16
"""Enough to keep a disk's queue busy behind 16 readers, few enough to stay cheap: threads
wait on the disk, not on the two cores."""

FAST = 500e-6
"""Calls whose average duration is below this run inline. Measured with the bench's
DataLoader-shaped reader (8 processes reading 128 KiB files, cold; a cold 128 KiB `pread`
takes ~180 µs here, 120 µs of it waiting): every call inline 3,570-3,890 files/s, every call
in a worker 1,970-2,610, reads in workers from 150 µs on 3,410. A spinning disk (a seek is
milliseconds) or a network filesystem is well above it; fsync (~20 ms) always is."""

WEIGHT = 0.1
"""The weight of the newest duration in the moving average."""

_Job = tuple[trio.lowlevel.Task, Callable[..., Any], tuple[Any, ...]] | None


class Offload:
    def __init__(self, threads: int = DEFAULT_THREADS, fast: float = FAST,
                 alone: Callable[[], bool] | None = None) -> None:
        self.threads = threads
        self.fast = fast  # 0: every call in a worker (and `alone` None)
        self.alone = alone  # None: never inline for want of company
        self.pace: dict[Callable[..., Any], float] = {}  # fn -> average seconds per call
        self.inline_calls = 0
        self.offloaded_calls = 0
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
        clock = time.perf_counter
        while (job := jobs.get()) is not None:
            task, fn, args = job
            started = clock()
            result = outcome.capture(fn, *args)
            took = clock() - started
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task,
                                    outcome.Value((result, took)))
            except trio.RunFinishedError:
                return

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args), inline if that is cheaper (see the module's docstring), else in a worker
        thread; its result, or its exception raised here."""
        if self.inline_now(fn):
            return self.inline(fn, *args)
        return await self.in_thread(fn, *args)

    def inline_now(self, key: Callable[..., Any]) -> bool:
        """Whether a call of this kind runs inline now."""
        return self.pace.get(key, 0.0) < self.fast or (self.alone is not None
                                                        and self.alone())

    def inline(self, fn: Callable[..., T], *args: Any, key: Callable[..., Any] | None = None
               ) -> T:
        """fn(*args) on this thread, its duration counted for `key` (fn by default)."""
        self.inline_calls += 1
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._note(key or fn, time.perf_counter() - started)

    async def in_thread(self, fn: Callable[..., T], *args: Any,
                        key: Callable[..., Any] | None = None) -> T:
        """fn(*args) in a worker thread, whatever it costs; its duration counted for `key`."""
        if self._token is None:
            self._start()
        await trio.lowlevel.checkpoint_if_cancelled()
        self.offloaded_calls += 1
        self._jobs.put((trio.lowlevel.current_task(), fn, args))
        result, took = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        self._note(key or fn, took)
        value: T = result.unwrap()
        return value

    def _note(self, fn: Callable[..., Any], took: float) -> None:
        pace = self.pace.get(fn)
        self.pace[fn] = took if pace is None else pace + WEIGHT * (took - pace)

    def close(self) -> None:
        """Let the workers end once the queue is drained."""
        for _ in self._workers:
            self._jobs.put(None)
        self._workers.clear()
        self._token = None
