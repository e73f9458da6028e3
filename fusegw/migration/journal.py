"""The migration's journal, `<volume>/.fusegw/migration-journal.json`: the copies under way.

A rename needs no journal: it is atomic, and a vfolder it moved is no longer in the flat
layout, so a re-run does not see it again. A copy (where rename answers EXDEV) does: its
destination appears (by a rename from a temporary name, once verified) before its source is
gone, and a re-run must know that this destination is the migration's own copy (remove the
rest of the source) and not a stranger's (a leftover: "destination exists"). So a copy is
entered before it starts and dropped once its source is removed. Each write replaces the file
atomically and durably (backends.atomic.write_atomic, through StateDir).
"""

from __future__ import annotations

from fusegw.errors import VolumeRefused
from fusegw.state.store import StateDir, UnreadableState

JOURNAL_FILE = "migration-journal.json"


class Journal:
    def __init__(self, state: StateDir) -> None:
        self._state = state
        self.copies: dict[str, dict[str, str]] = {}

    def load(self) -> None:
        try:
            data = self._state.read_checked(JOURNAL_FILE) or {}
        except UnreadableState as e:
            raise VolumeRefused(f"{e}; inspect it before migrating again") from None
        self.copies = {str(k): dict(v) for k, v in (data.get("copies") or {}).items()}

    def _save(self) -> None:
        self._state.write(JOURNAL_FILE, {"copies": self.copies})

    def enter(self, hex_: str, src: str, dst: str, qsid: str) -> None:
        self.copies[hex_] = {"src": src, "dst": dst, "qsid": qsid}
        self._save()

    def drop(self, hex_: str) -> None:
        if self.copies.pop(hex_, None) is not None:
            self._save()

    def remove(self) -> None:
        self.copies = {}
        self._state.remove(JOURNAL_FILE)
