"""Per-scope and per-vfolder usage: admission of growth, charging, persistence, rebuild."""

from fusegw.ledger.base import QuotaLedger
from fusegw.ledger.ledger import Ledger, QuotaExceeded
from fusegw.ledger.reservation import Reservation
from fusegw.ledger.usage import ScopeUsage, VFolderUsage

__all__ = ["Ledger", "QuotaExceeded", "QuotaLedger", "Reservation", "ScopeUsage",
           "VFolderUsage"]
