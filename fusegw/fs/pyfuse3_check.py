"""The running pyfuse3 must carry fusegw's patch series (third_party/pyfuse3/README.md)."""

from __future__ import annotations

import pyfuse3

from fusegw.errors import VolumeRefused

REQUIRED = ("statfs_inode", "fallocate")
"""`Operations` methods the patches add (0001 statfs inode, 0002 fallocate)."""


def require_patched() -> None:
    """Refuse to start, in one line, on a pyfuse3 without the patches (e.g. PyPI's)."""
    if not all(hasattr(pyfuse3.Operations, name) for name in REQUIRED):
        raise VolumeRefused(
            "pyfuse3 lacks fusegw's patches (statfs inode, fallocate): run `make install`")
