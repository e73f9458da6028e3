"""The one boundary between the gateway's handlers and pyfuse3: every failure becomes an errno.

An exception that escapes a pyfuse3 handler ends the FUSE session, and every process with a file
open in the mount gets errors from then on; so the protection must not depend on a list kept by
hand. `GuardedOperations.__init_subclass__` wraps every request handler pyfuse3 defines (its
coroutine methods) on each subclass, whether the subclass overrides it or inherits pyfuse3's
default, so a handler added later is protected without anyone remembering to.

The mapping, most specific first:

    pyfuse3.FUSEError          passes through (the handler chose its errno)
    OSError                    its errno (EIO if it has none)
    GatewayError/BackendError  their errno
    anything else              logged with its traceback, EIO (a programming error: a KeyError
                               included, which must not pass for ESTALE silently)

`forget` has no reply: pyfuse3 lets nothing it raises reach the kernel, and an exception there
ends the session. Its guard logs and swallows everything.
"""

from __future__ import annotations

import collections
import errno
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import pyfuse3

from backends import BackendError
from fusegw.errors import GatewayError

log = logging.getLogger("fusegw.fs")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

HANDLERS = frozenset(name for name, fn in vars(pyfuse3.Operations).items()
                     if inspect.iscoroutinefunction(fn))
"""The request handlers pyfuse3 calls (lookup, write, forget, ...)."""

REQUESTS: collections.Counter[str] = collections.Counter()
"""FUSE requests answered, by operation (for `GET /metrics` and the bench's request counts)."""

class InFlight:
    """Requests being answered right now (a handler between its start and its reply)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


IN_FLIGHT = InFlight()
"""Lets a handler alone in the daemon skip the worker-thread hop (`fusegw.fs.offload`)."""

IO: dict[str, int] = {"read_bytes": 0, "write_bytes": 0, "read_ns": 0, "write_ns": 0}
"""Bytes `read` and `write` answered and the time spent in them (for
`GET /volume/performance-metric`): counted in their guard, where the answer is at hand, so the
handlers stay as they are."""


def errno_of(exc: BaseException, op: str) -> int:
    """The errno a failed handler answers with; unexpected failures are logged."""
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    if isinstance(exc, GatewayError | BackendError):
        return exc.errno
    log.error("handler %s failed", op, exc_info=exc)
    return errno.EIO


def guard(fn: F) -> F:
    """Wrap one handler: count it, and turn every failure into a FUSEError with its errno."""
    op = fn.__name__

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        REQUESTS[op] += 1
        IN_FLIGHT.n += 1
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise pyfuse3.FUSEError(errno_of(e, op)) from None
        finally:
            IN_FLIGHT.n -= 1

    guarded.__guarded__ = True  # type: ignore[attr-defined]
    return cast(F, guarded)


def guard_io(fn: F) -> F:
    """`guard` for `read` and `write`, also counting their bytes and time in IO: two clock
    reads and two dict increments, nothing else, on the hot path."""
    op = fn.__name__
    bytes_key, ns_key = f"{op}_bytes", f"{op}_ns"
    size: Callable[[Any], int] = len if op == "read" else int

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        REQUESTS[op] += 1
        IN_FLIGHT.n += 1
        started = time.perf_counter_ns()
        try:
            result = await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise pyfuse3.FUSEError(errno_of(e, op)) from None
        finally:
            IO[ns_key] += time.perf_counter_ns() - started
            IN_FLIGHT.n -= 1
        IO[bytes_key] += size(result)
        return result

    guarded.__guarded__ = True  # type: ignore[attr-defined]
    return cast(F, guarded)


def guard_forget(fn: F) -> F:
    """Wrap `forget`, which must never raise: a failure is logged and the rest goes on."""

    @functools.wraps(fn)
    async def guarded(*args: Any, **kwargs: Any) -> None:
        REQUESTS["forget"] += 1
        try:
            await fn(*args, **kwargs)
        except Exception:
            log.exception("forget failed; lookup counts may be off")

    guarded.__guarded__ = True  # type: ignore[attr-defined]
    return cast(F, guarded)


WRAPPERS: dict[str, Callable[[Any], Any]] = {"forget": guard_forget, "read": guard_io,
                                             "write": guard_io}


class GuardedOperations(pyfuse3.Operations):
    """pyfuse3.Operations whose subclasses have every request handler guarded."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HANDLERS:
            fn = getattr(cls, name)
            if not getattr(fn, "__guarded__", False):
                setattr(cls, name, WRAPPERS.get(name, guard)(fn))
