"""Everything the gateway keeps on the volume, under `<volume>/.fusegw/`, in a versioned format.

The directory holds `FORMAT` (this format's number), `registry.json` (scopes and limits),
`ledger.json` (the last usage snapshot), `dirty.json` (scopes changed since that snapshot) and
`lease.json` (who serves the volume). Every file is replaced atomically.
"""

from fusegw.state.store import StateDir

__all__ = ["StateDir"]
