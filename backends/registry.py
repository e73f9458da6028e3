"""Backend selection by the volume's `backend` setting."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import QuotaBackend
from backends.btrfs import BtrfsBackend
from backends.cephfs import CephFSBackend
from backends.gpfs import GPFSBackend, SpectrumScaleBackend
from backends.netapp import NetAppBackend
from backends.onefs import OneFSBackend
from backends.purestorage import PureStorageBackend
from backends.vfs import VFSBackend
from backends.weka import WekaBackend
from backends.xfs import XFSBackend

BACKENDS: dict[str, type[QuotaBackend]] = {
    "vfs": VFSBackend,
    "btrfs": BtrfsBackend,
    "xfs": XFSBackend,
    "cephfs": CephFSBackend,
    "purestorage": PureStorageBackend,
    "netapp": NetAppBackend,
    "dellemc-onefs": OneFSBackend,
    "weka": WekaBackend,
    "gpfs": GPFSBackend,
    "spectrumscale": SpectrumScaleBackend,  # the storage proxy's other name for gpfs
}


def get_backend(name: str, volume: Path, options: Mapping[str, Any] | None = None) -> QuotaBackend:
    try:
        cls = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown backend {name!r} (known: {known})") from None
    return cls(volume, options)
