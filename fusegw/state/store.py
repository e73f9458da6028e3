"""The `.fusegw` directory: its format version and atomic JSON files."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from fusegw.errors import VolumeRefused

STATE_FORMAT = 1


class StateDir:
    """Reads and atomically replaces the JSON files under `<volume>/.fusegw/`."""

    def __init__(self, volume: Path) -> None:
        self.path = volume / ".fusegw"

    def open(self) -> None:
        """Create the directory on a new volume; refuse one written by a newer fusegw."""
        self.path.mkdir(mode=0o700, exist_ok=True)
        fmt = self.path / "FORMAT"
        try:
            found = int(fmt.read_text().strip())
        except FileNotFoundError:
            self._write_bytes("FORMAT", f"{STATE_FORMAT}\n".encode())
            return
        except ValueError:
            raise VolumeRefused(f"{fmt} is not a format number") from None
        if found > STATE_FORMAT:
            raise VolumeRefused(
                f"{self.path} has state format {found}; this fusegw reads up to {STATE_FORMAT}"
            )

    def read(self, name: str) -> dict[str, Any] | None:
        """The file's JSON object, or None when it is missing or unreadable (never trusted)."""
        try:
            data = json.loads((self.path / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            return None
        return data

    def write(self, name: str, data: dict[str, Any]) -> None:
        body = dict(data, format=STATE_FORMAT)
        self._write_bytes(name, json.dumps(body, sort_keys=True).encode())

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path / name)

    def _write_bytes(self, name: str, data: bytes) -> None:
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / name)
