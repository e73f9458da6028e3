"""Per-scope and per-vfolder usage: admission of growth, charging, persistence, rebuild."""

from fusegw.ledger.ledger import Ledger, QuotaExceeded
from fusegw.ledger.usage import ScopeUsage, VFolderUsage

__all__ = ["Ledger", "QuotaExceeded", "ScopeUsage", "VFolderUsage"]
