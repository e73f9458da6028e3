"""A tiny in-memory pyfuse3 filesystem exercising fusegw's pyfuse3 patches (third_party/pyfuse3).

    python tests/patchfs.py MOUNTPOINT --events FILE [--statfs inode|plain] [--no-fallocate]
                            [--max-background N]

The tree: `/` (inode 1) holds the directory `sub` (inode 2) and the files `slow-sleep` and
`slow-thread`, whose reads wait 0.2 s (in `trio.sleep`, in a worker thread) and are direct I/O,
so every read reaches the filesystem; files can be created anywhere. Each statfs, fallocate and
slow read is appended to FILE as a JSON line. `--statfs inode` answers `statfs_inode` with
figures that depend on the inode (`sub` has twice root's blocks); `--statfs plain` implements
only the old `statfs(ctx)`. The process exits 0 when the filesystem is unmounted.

Run as a subprocess by tests/test_pyfuse3_patches.py, so a crash cannot hang pytest.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
SUB = ROOT + 1
SLOW = {b"slow-sleep": "sleep", b"slow-thread": "thread"}
SLOW_SECONDS = 0.2


@dataclass
class Node:
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    slow: str | None = None


class PatchFS(pyfuse3.Operations):
    def __init__(self, events: str) -> None:
        super().__init__()
        self.events = open(events, "a", buffering=1)  # noqa: SIM115 (lives as long as we do)
        self.nodes: dict[int, Node] = {
            ROOT: Node(stat.S_IFDIR | 0o755),
            SUB: Node(stat.S_IFDIR | 0o755),
        }
        self.nodes[ROOT].children[b"sub"] = SUB
        for name, how in SLOW.items():
            self.nodes[ROOT].children[name] = self._new(stat.S_IFREG | 0o644)
            self.nodes[self.nodes[ROOT].children[name]].data[:] = b"x" * 4096
            self.nodes[self.nodes[ROOT].children[name]].slow = how
        self.reading = 0

    def _new(self, mode: int) -> int:
        inode = max(self.nodes) + 1
        self.nodes[inode] = Node(mode)
        return inode

    def event(self, **what: Any) -> None:
        self.events.write(json.dumps(what) + "\n")

    def _node(self, inode: int) -> Node:
        try:
            return self.nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = node.mode
        attr.st_nlink = 2 if stat.S_ISDIR(node.mode) else 1
        attr.st_size = len(node.data)
        attr.st_blksize = 4096
        attr.st_blocks = (len(node.data) + 511) // 512
        attr.st_uid = attr.st_gid = 0
        attr.attr_timeout = attr.entry_timeout = 0
        return attr

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        children = self._node(parent_inode).children
        if name == b".":
            return await self.getattr(parent_inode)
        if name not in children:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(children[name])

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            del node.data[attr.st_size:]
            node.data.extend(b"\0" * (attr.st_size - len(node.data)))
        return await self.getattr(inode)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._node(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self.nodes[fh].children.items())
        for i, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, await self.getattr(inode), i):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        inode = self._new(stat.S_IFREG | (mode & 0o7777))
        self._node(parent_inode).children[name] = inode
        return pyfuse3.FileInfo(fh=inode), await self.getattr(inode)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & os.O_TRUNC:
            node.data.clear()
        return pyfuse3.FileInfo(fh=inode, direct_io=node.slow is not None)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self.nodes[fh]
        if node.slow is not None:
            self.reading += 1
            self.event(op="read", slow=node.slow, concurrent=self.reading)
            try:
                if node.slow == "sleep":
                    await trio.sleep(SLOW_SECONDS)
                else:
                    await trio.to_thread.run_sync(time.sleep, SLOW_SECONDS)
            finally:
                self.reading -= 1
        return bytes(node.data[off:off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        data = self.nodes[fh].data
        data.extend(b"\0" * max(0, off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def release(self, fh: int) -> None:
        pass

    async def flush(self, fh: int) -> None:
        pass

    def _statvfs(self, blocks: int) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = blocks
        st.f_bfree = st.f_bavail = blocks // 10
        st.f_files = 1000
        st.f_ffree = st.f_favail = 1000 - len(self.nodes)
        st.f_namemax = 255
        return st


class InodeStatfs(PatchFS):
    async def statfs_inode(self, inode: int, ctx: pyfuse3.RequestContext
                           ) -> pyfuse3.StatvfsData:
        self.event(op="statfs_inode", inode=inode)
        return self._statvfs(2000 if inode == SUB else 1000)


class PlainStatfs(PatchFS):
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self.event(op="statfs")
        return self._statvfs(3000)


class Fallocate:
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        fs: PatchFS = self  # type: ignore[assignment]
        fs.event(op="fallocate", fh=fh, mode=mode, offset=offset, length=length)
        if mode & ~0x01:  # only FALLOC_FL_KEEP_SIZE
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        data = fs.nodes[fh].data
        if not mode & 0x01:
            data.extend(b"\0" * max(0, offset + length - len(data)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--events", required=True)
    parser.add_argument("--statfs", choices=["inode", "plain"], default="inode")
    parser.add_argument("--no-fallocate", action="store_true")
    parser.add_argument("--max-background", type=int)
    args = parser.parse_args()

    base: type[PatchFS] = InodeStatfs if args.statfs == "inode" else PlainStatfs
    bases: tuple[type, ...] = (base,) if args.no_fallocate else (Fallocate, base)
    cls = type("Mounted", bases, {"max_background": args.max_background})
    fs = cls(args.events)

    options = set(pyfuse3.default_options)
    options.add("fsname=patchfs")
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close(unmount=False)  # the loop ends when someone else unmounted it
    print("patchfs: unmounted, exiting", file=sys.stderr)


if __name__ == "__main__":
    main()
