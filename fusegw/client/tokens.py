"""The client API's tokens: HS256 JWTs signed with the storage proxy's secret, with its claims.

The manager asks the manager API for a token (`POST /folder/file/download`, `.../upload`) and
hands it, with the client API's URL, to the user; the client API trusts nothing but what the
token says. Claims as the storage proxy 23.03 puts them (`ai/backend/storage/api/manager.py`):
`op`, `volume`, `vfid`, `relpath`, plus `archive`, `unmanaged_path` for a download and
`session`, `size` for an upload, and `exp` from `session-expire`; so tokens signed by a storage
proxy with the same secret are read here too, and ours there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

from fusegw.client.errors import TokenExpired, TokenInvalid, TokenMismatch

ALGORITHM = "HS256"


class Tokens:
    """Issues and checks one volume's tokens."""

    def __init__(self, secret: str, volume: str, expire: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.volume = volume
        self.expire = expire
        self.clock = clock

    def issue(self, claims: dict[str, Any]) -> str:
        """A token for `claims` (op, vfid, relpath, ...) on this volume, expiring after
        `session-expire`."""
        body = {**claims, "volume": self.volume, "exp": int(self.clock() + self.expire)}
        return jwt.encode(body, self.secret, algorithm=ALGORITHM)

    def verify(self, token: str | None, op: str) -> dict[str, Any]:
        """The claims of a genuine, unexpired token for `op` on this volume.

        401 for what this gateway did not sign or that has expired (also `alg: none` and
        tokens without `exp`), 403 for a genuine token presented for another op or volume.
        """
        if not token:
            raise TokenInvalid("the token query parameter is missing", data={"token": "required"})
        try:
            claims: dict[str, Any] = jwt.decode(token, self.secret, algorithms=[ALGORITHM],
                                                options={"require": ["exp"]})
        except jwt.ExpiredSignatureError:
            raise TokenExpired("the token has expired: ask the manager for a new one") from None
        except jwt.InvalidTokenError as e:
            raise TokenInvalid(f"the token is not valid: {e}") from None
        if claims.get("op") != op:
            raise TokenMismatch(f"the token is for {claims.get('op')!r}, not {op!r}",
                                data={"op": "mismatch"})
        if claims.get("volume") != self.volume:
            raise TokenMismatch(f"the token is for volume {claims.get('volume')!r}, not "
                                f"{self.volume!r}", data={"volume": "mismatch"})
        return claims
