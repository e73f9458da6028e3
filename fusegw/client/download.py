"""`GET /download?token=…`: a file (with ranges) or a directory as a streamed zip.

Everything is read through the mount, so the gateway's own view (and permissions model) is
what is served. Every syscall on the mount runs in a worker thread: the FUSE session that
answers it is served by this very trio thread, which would deadlock waiting on itself.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import trio
import zipstream

from fusegw.client.http import Headers, Scope, Send, cors_for_download, header, query
from fusegw.client.paths import READ_FLAGS, confine, open_in_mount
from fusegw.client.tokens import Tokens
from fusegw.control.params import flag
from fusegw.errors import InvalidParameters
from fusegw.ids import VFolderID

CHUNK = 1024 * 1024
ZIP_BATCH = 256 * 1024  # zip output is sent in pieces of about this size
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(Exception):
    pass


def byte_range(spec: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `Range: bytes=` spec, None to send the whole file (no
    Range, several ranges or a malformed one: a server may ignore those, RFC 9110 14.2)."""
    if spec is None:
        return None
    m = _RANGE.fullmatch(spec.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise RangeNotSatisfiable()
    return first, min(last, size - 1)


def validators(st: os.stat_result) -> tuple[str, str]:
    """Last-Modified and a strong ETag, for If-Range (the client SDK resumes with it)."""
    modified = email.utils.formatdate(st.st_mtime, usegmt=True)
    etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    return modified, etag


def disposition(name: str) -> bytes:
    """As the storage proxy names the file: an ASCII fallback and the RFC 5987 form."""
    ascii_name = name.encode("ascii", errors="ignore").decode().replace('"', '\\"')
    quoted = urllib.parse.quote(name, encoding="utf-8")
    return f"attachment;filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}".encode()


class Downloads:
    def __init__(self, tokens: Tokens, mountpoint: Path) -> None:
        self.tokens = tokens
        self.mountpoint = mountpoint

    async def handle(self, scope: Scope, send: Send) -> None:
        params = query(scope)
        claims = self.tokens.verify(params.get("token"), "download")
        if claims.get("unmanaged_path") is not None:
            raise InvalidParameters("unmanaged paths are not served by fusegw",
                                    data={"unmanaged_path": "not supported"})
        vfid = VFolderID.parse(claims.get("vfid"))
        parts = confine(params.get("dst_dir"), "dst_dir", allow_root=True)
        parts += confine(claims.get("relpath"), "relpath", allow_root=True)
        archive = bool(claims.get("archive")) or flag(params, "archive")
        fd = await trio.to_thread.run_sync(open_in_mount, self.mountpoint, vfid, parts)
        try:
            st = await trio.to_thread.run_sync(os.fstat, fd)
            name = parts[-1] if parts else vfid.hex
            if stat.S_ISDIR(st.st_mode):
                if not archive:
                    raise InvalidParameters("The file is not a regular file.",
                                            data={"relpath": "a directory: ask with archive"})
                await self._zip(scope, send, fd, name)
            elif stat.S_ISREG(st.st_mode):
                await self._file(scope, send, fd, st, name, flag(params, "no_cache"))
            else:
                raise InvalidParameters("The file is not a regular file.",
                                        data={"relpath": "not a regular file"})
        finally:  # a close on the mount is a FUSE request (FLUSH): never on this thread
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(os.close, fd)

    async def _file(self, scope: Scope, send: Send, fd: int, st: os.stat_result, name: str,
                    no_cache: bool) -> None:
        size = st.st_size
        modified, etag = validators(st)
        headers: Headers = [(b"content-type", b"application/octet-stream"),
                            (b"content-disposition", disposition(name)),
                            (b"accept-ranges", b"bytes"), (b"last-modified", modified.encode()),
                            (b"etag", etag.encode())]
        if no_cache:
            headers.append((b"cache-control", b"no-store"))
        if_range = header(scope, b"if-range")
        spec = header(scope, b"range") if if_range in (None, modified, etag) else None
        try:
            span = byte_range(spec, size)
        except RangeNotSatisfiable:
            headers.append((b"content-range", f"bytes */{size}".encode()))
            await _start(send, scope, 416, headers, 0)
            await send({"type": "http.response.body", "body": b""})
            return
        status, (first, last) = (200, (0, size - 1)) if span is None else (206, span)
        if status == 206:
            headers.append((b"content-range", f"bytes {first}-{last}/{size}".encode()))
        await _start(send, scope, status, headers, last - first + 1)
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(send, fd, first, last + 1)

    @staticmethod
    async def _stream(send: Send, fd: int, start: int, end: int) -> None:
        if start >= end:
            await send({"type": "http.response.body", "body": b""})
            return
        pos = start
        while pos < end:
            data = await trio.to_thread.run_sync(os.pread, fd, min(CHUNK, end - pos), pos)
            if not data:  # the file shrank under us: the connection is dropped, not padded
                raise OSError(f"file shrank to {pos} bytes while being sent")
            pos += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": pos < end})

    async def _zip(self, scope: Scope, send: Send, fd: int, name: str) -> None:
        headers: Headers = [(b"content-type", b"application/zip"),
                            (b"content-disposition", disposition(name + ".zip"))]
        await _start(send, scope, 200, headers, None)
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        sender, receiver = trio.open_memory_channel[bytes](4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_produce_zip, fd, sender)
            async with receiver:
                async for chunk in receiver:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _start(send: Send, scope: Scope, status: int, headers: Headers,
                 length: int | None) -> None:
    if length is not None:
        headers = [*headers, (b"content-length", str(length).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": cors_for_download(scope, headers)})


async def _produce_zip(fd: int, sender: trio.MemorySendChannel[bytes]) -> None:
    """Run the zip writer in a worker thread, handing its output to the trio side in
    batches; the channel's small buffer is the back-pressure (nothing piles up in memory)."""
    def produce() -> None:
        batch: list[bytes] = []
        size = 0
        for piece in zip_directory(fd):
            batch.append(piece)
            size += len(piece)
            if size >= ZIP_BATCH:
                trio.from_thread.run(sender.send, b"".join(batch))
                batch, size = [], 0
        if batch:
            trio.from_thread.run(sender.send, b"".join(batch))

    async with sender:
        # BrokenResourceError: the answer was given up (the client went away): stop reading
        with contextlib.suppress(trio.BrokenResourceError):
            await trio.to_thread.run_sync(produce)


def zip_directory(dir_fd: int) -> Iterator[bytes]:
    """The zip of the tree below `dir_fd`, streamed by zipstream-ng one member at a time:
    each file is opened (no symlink followed) only while its member is written, so memory
    holds the central directory's entries, never the data. Symlinks and special files are
    left out (the storage proxy's os.walk would follow a symlink out of the vfolder)."""
    zs = zipstream.ZipStream(compress_type=zipstream.ZIP_DEFLATED)
    for top, dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        prefix = "" if top == "." else top[2:] + "/"
        members = 0
        for name in sorted(files):
            member = _file_member(fd, name)
            if member is None:
                continue
            zs.add(member[0], prefix + name, size=member[1])
            members += 1
            yield from zs.all_files()
        if not members and not dirs and prefix:
            zs.mkdir(prefix)  # an empty directory is kept, as the storage proxy does
            yield from zs.all_files()
        dirs.sort()
    yield from zs.footer()


def _file_member(dir_fd: int, name: str) -> tuple[Iterator[bytes], int] | None:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        return None

    def chunks() -> Iterator[bytes]:
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return  # gone, or swapped for a symlink, since the listing: an empty member
        try:
            while data := os.read(fd, CHUNK):
                yield data
        finally:
            os.close(fd)

    return chunks(), st.st_size
