"""The one small interface every quota backend implements."""

from __future__ import annotations

import abc
import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import trio

COMMAND_TIMEOUT = 30.0


class BackendError(Exception):
    """The storage's quota mechanism failed (a command missing, failing, timing out; a vendor
    API refusing). The scope is left as it was; the message says what failed."""

    def __init__(self, message: str, errno_: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno_


async def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a backend command off the event loop's hot path; its stdout, or BackendError."""
    try:
        with trio.fail_after(timeout):
            proc = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True,
                                          check=False, stdin=subprocess.DEVNULL,
                                          umask=0o022)  # the daemon runs with umask 0
    except FileNotFoundError:
        raise BackendError(f"command not found: {argv[0]}", errno.ENOENT) from None
    except trio.TooSlowError:
        raise BackendError(f"{' '.join(argv)} timed out after {timeout:.0f}s",
                           errno.ETIMEDOUT) from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise BackendError(f"{' '.join(argv)}: {err}")
    return str(proc.stdout.decode(errors="replace"))


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """0 means unlimited, as in XFS and CephFS."""

    limit_bytes: int = 0
    limit_inodes: int = 0


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    used_bytes: int | None
    limit_bytes: int | None
    used_inodes: int | None = None
    limit_inodes: int | None = None


class QuotaBackend(abc.ABC):
    """Create, describe, update, unset and delete a quota scope's directory and native limit.

    `enforces_bytes`/`enforces_inodes` tell the gateway what the storage refuses by itself;
    what it does not, the gateway's ledger enforces.
    """

    name: ClassVar[str]
    enforces_bytes: ClassVar[bool] = False
    # The volume is a network filesystem: a syscall may wait on a server for as long as it
    # is away, so the gateway sends every one that may wait to its worker threads.
    network: ClassVar[bool] = False
    enforces_inodes: ClassVar[bool] = False
    capabilities: ClassVar[frozenset[str]] = frozenset({"vfolder", "quota"})
    scope_hidden_names: ClassVar[frozenset[str]] = frozenset()
    """Names in a scope directory that belong to the storage, not to users (OneFS's
    `.quota_id`): hidden through the mount, not counted, not in the way of deleting it."""
    option_keys: ClassVar[frozenset[str]] = frozenset()
    """The keys of the volume's `[volume.NAME.options]` this backend reads (besides the
    gateway's own): the configuration refuses any other key, naming it, so a misspelt option
    is an error at start-up instead of a default silently used."""

    def __init__(self, volume: Path, options: Mapping[str, Any] | None = None) -> None:
        self.volume = volume
        self.options = dict(options or {})

    def scope_path(self, pathname: str) -> Path:
        return self.volume / pathname

    def remove_empty_scope_dir(self, pathname: str) -> None:
        """rmdir the scope directory, refusing (ENOTEMPTY) while it holds entries; gone is
        fine (a retry after a failure past this point finishes the clean-up)."""
        path = self.scope_path(pathname)
        try:
            if os.listdir(path):
                raise BackendError(f"quota scope directory {path} is not empty",
                                   errno.ENOTEMPTY)
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise BackendError(f"rmdir {path}: {e.strerror}", e.errno or errno.EIO) from None

    async def remove_vfolder_tree(self, path: Path) -> bool:
        """Remove a vfolder's tree with the storage's own tool (Pure's `prm`); False where
        there is none and the gateway removes it itself."""
        return False

    async def check_volume(self) -> None:
        """Refuse (BackendError) a volume this backend cannot serve; called before mounting."""
        return None

    @abc.abstractmethod
    async def create_scope(self, pathname: str, limits: QuotaLimits) -> None: ...

    @abc.abstractmethod
    async def describe_scope(self, pathname: str) -> QuotaUsage | None:
        """Native figures, or None where the gateway's own ledger is the source."""

    @abc.abstractmethod
    async def update_scope(self, pathname: str, limits: QuotaLimits) -> None: ...

    @abc.abstractmethod
    async def unset_scope(self, pathname: str) -> None: ...

    @abc.abstractmethod
    async def delete_scope(self, pathname: str) -> None: ...
