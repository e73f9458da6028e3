"""The `.fusegw` directory: its format version and its JSON files, written durably.

Every file is replaced by `backends.atomic.write_atomic` (temporary file, fsync, rename, fsync
of the directory), so after a power loss each holds its old or its new content. A write that
fails (a full backing disk: ENOSPC) leaves the old file; the caller decides whether that is
refused (the registry) or kept in memory and retried (the ledger, the lease). Retried writes
report here: one log line when a file starts failing, one when it is written again, and the
failures for `GET /`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.atomic import fsync_directory, remove_durably, write_atomic
from fusegw.errors import GatewayError, VolumeRefused

STATE_FORMAT = 1
FILE_MODE = 0o600  # the gateway's own: root only
VOLUME_ID_FILE = "volume-id"

log = logging.getLogger("fusegw.state")


class VolumeWriteError(GatewayError):
    """Something the gateway must write on the volume could not be written (ENOSPC on a full
    backing disk, EIO, EROFS); nothing was changed."""

    kind = "volume/write-failed"
    title = "The volume could not be written"

    def __init__(self, what: str, error: OSError) -> None:
        super().__init__(f"cannot write {what}: {error.strerror or error}")
        self.errno = error.errno or errno.EIO
        self.status = 507 if self.errno in (errno.ENOSPC, errno.EDQUOT) else 500


class UnreadableState(Exception):
    """A state file that exists but cannot be parsed: trust nothing it would have said."""


@dataclass(slots=True)
class WriteFailure:
    """A state file that cannot be written at the moment, since `since` (wall clock)."""

    error: OSError
    since: float
    last: float
    failures: int = 1

    def report(self) -> dict[str, Any]:
        code = errno.errorcode.get(self.error.errno or 0, "")
        return {"errno": self.error.errno, "code": code, "error": self.error.strerror,
                "since": self.since, "failures": self.failures}


class StateDir:
    """Reads and durably replaces the JSON files under `<volume>/.fusegw/`."""

    def __init__(self, volume: Path) -> None:
        self.path = volume / ".fusegw"
        self.failing: dict[str, WriteFailure] = {}

    def open(self) -> None:
        """Create the directory on a new volume; refuse one written by a newer fusegw."""
        try:
            self.path.mkdir(mode=0o700, exist_ok=True)
        except OSError as e:
            raise VolumeWriteError(str(self.path), e) from None
        fmt = self.path / "FORMAT"
        try:
            found = int(fmt.read_text().strip())
        except FileNotFoundError:
            self._write_format()
            return
        except ValueError:
            raise VolumeRefused(f"{fmt} is not a format number") from None
        if found > STATE_FORMAT:
            raise VolumeRefused(
                f"{self.path} has state format {found}; this fusegw reads up to {STATE_FORMAT}"
            )

    def _write_format(self) -> None:
        """A missing FORMAT means this format; on a full disk it is written at a later start
        (the files say their format themselves, so nothing is misread meanwhile)."""
        try:
            write_atomic(self.path / "FORMAT", f"{STATE_FORMAT}\n".encode(), FILE_MODE)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise VolumeWriteError(str(self.path / "FORMAT"), e) from None
            log.warning("cannot write %s (%s); written at a later start",
                        self.path / "FORMAT", e.strerror)

    def below(self, *parts: str) -> StateDir:
        """The state of one node of a shared volume, in its own directory below this one
        (made if missing): its files are written by it alone."""
        sub = StateDir(self.path.parent)
        sub.path = self.path.joinpath(*parts)
        try:
            sub.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise VolumeWriteError(str(sub.path), e) from None
        return sub

    def volume_id(self) -> str:
        """The volume's identity, the same for every node that mounts it (the shared
        ledger's key prefix on Redis): made once, by whichever node is first, with link(2),
        which fails for all but one of them."""
        path = self.path / VOLUME_ID_FILE
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        tmp = path.with_name(f".{VOLUME_ID_FILE}.{secrets.token_hex(6)}.tmp")
        write_atomic(tmp, f"{uuid.uuid4()}\n".encode(), FILE_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        fsync_directory(self.path)
        return path.read_text().strip()

    # -- reading ------------------------------------------------------------------------------

    def read(self, name: str) -> dict[str, Any] | None:
        """The file's JSON object, or None when it is missing or unreadable (never trusted)."""
        try:
            return self.read_checked(name)
        except UnreadableState:
            return None

    def read_checked(self, name: str) -> dict[str, Any] | None:
        """The file's JSON object, None when it is missing; UnreadableState when it exists
        but is not a JSON object of this format (torn, truncated, foreign)."""
        try:
            raw = (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            raise UnreadableState(f"{self.path / name} is not JSON") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise UnreadableState(f"{self.path / name} is not state format {STATE_FORMAT}")
        return data

    # -- writing ------------------------------------------------------------------------------

    def write(self, name: str, data: dict[str, Any]) -> None:
        """Replace the file durably; OSError (the old file kept) when it cannot be written."""
        write_atomic(self.path / name, _encode(data), FILE_MODE)

    def try_write(self, name: str, data: dict[str, Any]) -> bool:
        """write(), for files whose content stays in memory and is retried: False on failure,
        which is logged once and reported until a write succeeds."""
        try:
            self.write(name, data)
        except OSError as e:
            self.failed(name, e)
            return False
        self.succeeded(name)
        return True

    def overwrite(self, name: str, data: dict[str, Any], size: int) -> None:
        """Rewrite an existing file in place, padded with spaces to at least `size` bytes: it
        reuses the file's allocated block, so it works on a full disk where a new file cannot
        be created. Not atomic: a crash may tear it (a reader then finds it unreadable). A
        missing file is created by write()."""
        body = _encode(data)
        try:
            fd = os.open(self.path / name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self.write(name, data)
            return
        try:
            length = max(size, os.fstat(fd).st_size, len(body))
            os.pwrite(fd, body.ljust(length), 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def remove(self, name: str) -> bool:
        """Unlink the file durably (needs no space); False if it was not there."""
        return remove_durably(self.path / name)

    # -- failures of retried writes -----------------------------------------------------------

    def failed(self, name: str, error: OSError) -> None:
        current = self.failing.get(name)
        if current is not None:
            current.error, current.last = error, time.time()
            current.failures += 1
            return
        now = time.time()
        self.failing[name] = WriteFailure(error, now, now)
        log.error("state write failing file=%s errno=%s error=%s: kept in memory, retrying",
                  name, errno.errorcode.get(error.errno or 0, error.errno), error.strerror)

    def succeeded(self, name: str) -> None:
        current = self.failing.pop(name, None)
        if current is not None:
            log.warning("state write recovered file=%s after=%.1fs failures=%d", name,
                        time.time() - current.since, current.failures)

    def persist_error(self) -> dict[str, Any] | None:
        """What cannot be written now: the latest error, the files, since when; None if all
        is written."""
        if not self.failing:
            return None
        latest = max(self.failing.values(), key=lambda f: f.last)
        return dict(latest.report(), files=sorted(self.failing),
                    since=min(f.since for f in self.failing.values()),
                    failures=sum(f.failures for f in self.failing.values()))


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(dict(data, format=STATE_FORMAT), sort_keys=True).encode()
