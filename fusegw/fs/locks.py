"""Per-inode locks for changes that are measured.

A change is charged by what it did to `st_blocks` (the file's, or the directory's for an
entry added or removed): before, change, after. With changes running in worker threads, two
changes of one inode must not overlap, or each would count the other's blocks. So a change
holds the lock of every inode it measures; changes of different inodes run side by side.

Keys are the backing inodes' (st_dev, st_ino). Locks are taken in key order, so two changes
waiting for each other's locks cannot happen; one that learns of another inode while holding
locks (the entry an unlink removes) takes it at once if it is free, or else gives everything
back and takes the whole set in order.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

Key = tuple[int, int]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0  # holders and waiters: the entry goes when none is left


class InodeLocks:
    def __init__(self) -> None:
        self._entries: dict[Key, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, keys: Iterable[Key]) -> list[Key]:
        """Take the locks of `keys` (in order); the sorted distinct keys, for `release`."""
        held: list[Key] = []
        try:
            for key in sorted(set(keys)):
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                entry.users += 1
                try:
                    if entry.lock.locked():  # wait; a free lock is taken without a yield
                        await entry.lock.acquire()
                    else:
                        entry.lock.acquire_nowait()
                except BaseException:
                    self._drop(key, entry)
                    raise
                held.append(key)
        except BaseException:
            self.release(held)
            raise
        return held

    def try_add(self, held: list[Key], key: Key) -> bool:
        """Take one more lock without waiting; False if another change holds it."""
        if key in held:
            return True
        entry = self._entries.get(key)
        if entry is not None and entry.lock.locked():
            return False
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        entry.lock.acquire_nowait()
        held.append(key)
        return True

    def hold(self, *keys: Key) -> Held:
        """`async with locks.hold(key, ...)`: the locks of `keys` for the block."""
        return Held(self, keys)

    def release(self, held: Iterable[Key]) -> None:
        for key in held:
            entry = self._entries[key]
            entry.lock.release()
            self._drop(key, entry)

    def _drop(self, key: Key, entry: _Entry) -> None:
        entry.users -= 1
        if not entry.users:
            del self._entries[key]


class Held:
    """The locks of some keys, taken on entering an `async with` block, given back on leaving."""

    __slots__ = ("_held", "_keys", "_locks")

    def __init__(self, locks: InodeLocks, keys: tuple[Key, ...]) -> None:
        self._locks = locks
        self._keys = keys
        self._held: list[Key] = []

    async def __aenter__(self) -> None:
        self._held = await self._locks.acquire(self._keys)

    async def __aexit__(self, *exc: object) -> None:
        self._locks.release(self._held)
        self._held = []
