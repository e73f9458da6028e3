"""Quota backends: one module per mechanism, behind `backends.base.QuotaBackend`.

Nothing here knows about FUSE; the gateway (`fusegw`) uses these, never the other way round.
"""

from backends.base import QuotaBackend, QuotaLimits, QuotaUsage
from backends.registry import get_backend

__all__ = ["QuotaBackend", "QuotaLimits", "QuotaUsage", "get_backend"]
