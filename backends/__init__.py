"""Quota backends: one module per mechanism, behind `backends.base.QuotaBackend`.

Nothing here knows about FUSE; the gateway (`fusegw`) uses these, never the other way round.
"""

from backends.atomic import remove_durably, write_atomic
from backends.base import BackendError, QuotaBackend, QuotaLimits, QuotaUsage, run_command
from backends.registry import get_backend

__all__ = ["BackendError", "QuotaBackend", "QuotaLimits", "QuotaUsage", "get_backend",
           "remove_durably", "run_command", "write_atomic"]
