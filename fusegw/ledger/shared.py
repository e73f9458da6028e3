"""One node's calls to the shared ledger on Redis: the grants that let many nodes enforce one
limit, the figures every node reads, and the rebuild that corrects them.

A node *acquires* a grant (a slice of the room left: limit - committed - every grant out),
spends it with no round trip, and *commits* what its changes allocated on its next tick
(idempotent: a commit carries the node's sequence number and a repeated one is ignored, so a
commit whose answer was lost is sent again as it was). A grant's size shrinks as the room
does, to a minimum near the limit, so at most nodes times the minimum can be over the limit at
once. A grant carries a lease that every tick renews. A node that vanished stops counting
among the nodes sharing the room once its lease has passed; its grant stays out until another
node has counted what it left (it rebuilds the scopes the node had marked dirty and drops its
grants in the others), so nothing it wrote without committing can be granted again. The
scripts are in `fusegw.ledger.scripts`.

Every call is one round trip with redis-py's synchronous client, which the gateway confines
to worker threads (`fusegw.ledger.redis_ledger`): off the FUSE path, grants are asked for
ahead of need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from fusegw.ledger import scripts

MiB = 2**20

DEFAULT_MIN_BYTES = 1 * MiB
DEFAULT_MIN_INODES = 64
DEFAULT_MAX_BYTES = 256 * MiB
DEFAULT_MAX_INODES = 16384


@dataclass(frozen=True, slots=True)
class Grant:
    """What one acquire gave (`bytes`, `inodes`: 0 and 0 when refused), what the node now
    holds in all (`held_*`) and what the other nodes hold (`others_*`)."""

    bytes: int
    inodes: int
    held_bytes: int
    held_inodes: int
    others_bytes: int = 0
    others_inodes: int = 0


@dataclass(frozen=True, slots=True)
class SharedFigures:
    limit_bytes: int
    limit_inodes: int
    used_bytes: int
    used_inodes: int
    granted_bytes: int  # out on every node's grant, not yet committed
    granted_inodes: int
    nodes: int  # nodes holding a live grant


@dataclass(frozen=True, slots=True)
class Rebuild:
    """A rebuild of the scope under way: by which node, until when its claim holds (Redis
    clock, ms), and whether it still waits for nodes to stop ("hold") or scans ("scan")."""

    node: str
    expires_ms: int
    phase: str


@dataclass(frozen=True, slots=True)
class Figures:
    """A scope as one node reads it on a tick: the cluster's committed usage, the limits,
    this node's grant, the figures' epoch (bumped by every rebuild) and a rebuild running."""

    used_bytes: int
    used_inodes: int
    limit_bytes: int
    limit_inodes: int
    held_bytes: int
    held_inodes: int
    epoch: int
    rebuild: Rebuild | None
    vfolders: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, values: list[Any]) -> Figures:
        ub, ui, lb, li, hb, hi, epoch, rebuild, flat = values
        vfolders: dict[str, list[int]] = {}
        for key, value in zip(flat[::2], flat[1::2], strict=True):
            hex_, _, which = _text(key).rpartition(":")
            vfolders.setdefault(hex_, [0, 0])[which == "i"] = int(value)
        return cls(int(ub), int(ui), int(lb), int(li), int(hb), int(hi), int(epoch),
                   _rebuild(_text(rebuild)), vfolders)


@dataclass(slots=True)
class Commit:
    """One commit of a node: sent as it is until Redis has answered it."""

    seq: int
    epoch: int
    bytes: int = 0
    inodes: int = 0
    vfolders: dict[str, list[int]] = field(default_factory=dict)

    def args(self) -> list[Any]:
        flat: list[Any] = []
        for hex_, (b, i) in sorted(self.vfolders.items()):
            flat += [hex_, b, i]
        return [self.seq, self.epoch, self.bytes, self.inodes, *flat]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _rebuild(text: str) -> Rebuild | None:
    parts = text.split()
    return Rebuild(parts[0], int(parts[1]), parts[2]) if len(parts) == 3 else None


@dataclass(frozen=True, slots=True)
class GrantPolicy:
    lease_ms: int = 10_000
    min_bytes: int = DEFAULT_MIN_BYTES
    min_inodes: int = DEFAULT_MIN_INODES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_inodes: int = DEFAULT_MAX_INODES


class SharedScopes:
    """One node's view of the scopes of one volume on Redis; every call is one round trip
    (blocking: call it from a worker thread)."""

    def __init__(self, client: redis.Redis, node: str, policy: GrantPolicy | None = None,
                 prefix: str = "fusegw") -> None:
        self.client = client
        self.node = node
        self.policy = policy or GrantPolicy()
        self.prefix = prefix
        self.calls = 0  # round trips made, for the benchmark and GET /
        self._scripts = {name: client.register_script(getattr(scripts, name))
                         for name in ("ACQUIRE", "TICK", "READ", "DESCRIBE", "INIT", "BEGIN",
                                      "ACK", "EXTEND", "REBASE", "ABORT", "HEARTBEAT", "DROP")}

    @property
    def channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}:nodes"

    def _keys(self, scope: str, *names: str) -> list[str]:
        return [f"{self.prefix}:{{{scope}}}:{name}" for name in names]

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls += 1
        return self._scripts[name](keys=keys, args=args)

    # -- limits and figures ---------------------------------------------------------------------

    def set_limits(self, scope: str, limit_bytes: int, limit_inodes: int) -> None:
        self.calls += 1
        self.client.hset(self._keys(scope, "scope")[0],
                         mapping={"limit_bytes": limit_bytes, "limit_inodes": limit_inodes})

    def init(self, scope: str, used_bytes: int, used_inodes: int, limit_bytes: int,
             limit_inodes: int) -> bool:
        """Give a new scope its first figures; False if it had some (another node's)."""
        return bool(self._run("INIT", self._keys(scope, "scope", "vfolders"),
                              [used_bytes, used_inodes, limit_bytes, limit_inodes]))

    def read(self, scope: str) -> Figures:
        return Figures.parse(self._run("READ", self._keys(scope, "scope", "grants", "vfolders"),
                                       [self.node]))

    def read_all(self, names: list[str]) -> dict[str, Figures]:
        """Every scope named, in one round trip."""
        self.calls += 1
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            self._scripts["READ"](keys=self._keys(name, "scope", "grants", "vfolders"),
                                  args=[self.node], client=pipe)
        return {n: Figures.parse(v) for n, v in zip(names, pipe.execute(), strict=True)}

    def initialized(self, scope: str) -> bool:
        self.calls += 1
        return bool(self.client.hexists(self._keys(scope, "scope")[0], "epoch"))

    def describe(self, scope: str) -> SharedFigures:
        values = self._run("DESCRIBE", self._keys(scope, "scope", "grants"), [])
        return SharedFigures(*(int(v) for v in values))

    # -- grants and commits ---------------------------------------------------------------------

    def acquire(self, scope: str, want_bytes: int, want_inodes: int) -> Grant:
        """A grant of at least what is wanted now (or nothing, if the room is short)."""
        p = self.policy
        values = self._run("ACQUIRE", self._keys(scope, "scope", "grants"),
                           [self.node, want_bytes, want_inodes, p.lease_ms,
                            p.min_bytes, p.min_inodes, p.max_bytes, p.max_inodes])
        return Grant(*(int(v) for v in values))

    def tick(self, scope: str, commit: Commit | None, release: bool) -> tuple[int, Figures]:
        """Commit (if any), drop the grant (`release`) or renew its lease, read the figures.
        The status: 1 applied (or nothing to commit), 0 applied before, -1 refused because a
        rebuild replaced the figures it was counted against."""
        return self.tick_many([(scope, commit, release)])[0]

    def tick_many(self, items: list[tuple[str, Commit | None, bool]]
                  ) -> list[tuple[int, Figures]]:
        """`tick` for many scopes in one pipelined round trip (each script still atomic)."""
        self.calls += 1
        pipe = self.client.pipeline(transaction=False)
        for scope, commit, release in items:
            args = commit.args() if commit else [0, 0, 0, 0]
            self._scripts["TICK"](
                keys=self._keys(scope, "scope", "grants", "seq", "vfolders"),
                args=[self.node, *args[:4], int(release), self.policy.lease_ms, *args[4:]],
                client=pipe)
        return [(int(v[0]), Figures.parse(v[1:])) for v in pipe.execute()]

    # -- rebuilds -------------------------------------------------------------------------------

    def _stop_args(self, outbox: Commit | None, pending: tuple[int, int]) -> list[Any]:
        return [outbox.seq if outbox else 0, outbox.bytes if outbox else 0,
                outbox.inodes if outbox else 0, *pending]

    def begin(self, scope: str, outbox: Commit | None, pending: tuple[int, int]
              ) -> tuple[bool, int]:
        """Claim the scope's rebuild (False: another node's runs) and its new epoch; this
        node counts as stopped, its uncommitted changes taken off its grant."""
        began, epoch = self._run("BEGIN", self._keys(scope, "scope", "grants", "seq", "held"),
                                 [self.node, self.policy.lease_ms,
                                  *self._stop_args(outbox, pending)])
        return bool(began), int(epoch)

    def ack(self, scope: str, epoch: int, outbox: Commit | None, pending: tuple[int, int]
            ) -> bool:
        """Tell the rebuilder this node has stopped changing the scope; False if the rebuild
        no longer waits (or is over)."""
        return bool(self._run("ACK", self._keys(scope, "scope", "grants", "seq", "held"),
                              [self.node, epoch, self.policy.lease_ms,
                               *self._stop_args(outbox, pending)]))

    def extend(self, scope: str, epoch: int, phase: str) -> set[str] | None:
        """Renew this node's rebuild claim; the nodes stopped for it (None: claim lost)."""
        held = self._run("EXTEND", self._keys(scope, "scope", "held"),
                         [self.node, epoch, self.policy.lease_ms, phase])
        return None if held is None else {_text(n) for n in held}

    def rebase(self, scope: str, epoch: int, used_bytes: int, used_inodes: int,
               vfolders: dict[str, list[int]], live: set[str]) -> bool:
        """Set the scan's figures (False: the claim was lost); the grants of nodes not in
        `live` go back."""
        flat: list[Any] = []
        for hex_, (b, i) in sorted(vfolders.items()):
            flat += [hex_, b, i]
        return bool(self._run("REBASE",
                              self._keys(scope, "scope", "vfolders", "held", "grants"),
                              [self.node, epoch, used_bytes, used_inodes, len(live),
                               *sorted(live), *flat]))

    def drop(self, scope: str, node: str) -> None:
        """Give back a vanished node's grant (it had nothing uncommitted in the scope)."""
        self._run("DROP", self._keys(scope, "grants"), [node])

    def abort(self, scope: str) -> None:
        self._run("ABORT", self._keys(scope, "scope"), [self.node])

    # -- nodes and events -----------------------------------------------------------------------

    def heartbeat(self) -> tuple[int, dict[str, int]]:
        """This node is alive for another lease. Redis's clock (ms) and every node's
        heartbeat expiry on it: a node past its expiry has vanished."""
        now, flat = self._run("HEARTBEAT", [self.nodes_key], [self.node, self.policy.lease_ms])
        return int(now), {_text(k): int(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}

    def forget_node(self, node: str) -> bool:
        """Take a node off the list; True for the one caller that did (it adopts its marks)."""
        self.calls += 1
        return bool(self.client.hdel(self.nodes_key, node))

    def publish(self, event: dict[str, Any]) -> None:
        self.calls += 1
        self.client.publish(self.channel, json.dumps(dict(event, node=self.node)))
