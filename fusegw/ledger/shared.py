"""The shared figures of a scope on Redis, and the grants that let many nodes enforce one limit.

The first layer of the shared ledger (issue 13), not yet chosen by any volume: the data model
and the server-side scripts that change it, so that every change is atomic whatever the
number of nodes. Per scope, under one hash tag (so a Redis Cluster keeps it on one shard):

    fusegw:{<scope>}:scope    hash  limit_bytes, limit_inodes, used_bytes, used_inodes
    fusegw:{<scope>}:grants   hash  <node> -> "bytes inodes lease_expiry_ms"
    fusegw:{<scope>}:seq      hash  <node> -> the last commit applied from that node

A node *acquires* a grant (a slice of the room left: limit - committed - every grant out),
spends it with no round trip, *commits* what its changes allocated (idempotent: a commit
carries the node's sequence number and a repeated one is ignored, so a commit whose answer was
lost can be sent again), and *releases* what it did not spend. A grant's size shrinks as the
room does (the script's `size`), to a minimum near the limit, so at most nodes times the
minimum can be over the limit at once. A grant carries a lease; the first script to run
after it expires takes it back, so a node that vanished frees its room.

The scripts run in Redis; `SharedScopes` calls them through redis-py's synchronous client,
which the gateway confines to worker threads (one round trip each, off the FUSE path: grants
are asked for ahead of need).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

MiB = 2**20

DEFAULT_MIN_BYTES = 1 * MiB
DEFAULT_MIN_INODES = 64
DEFAULT_MAX_BYTES = 256 * MiB
DEFAULT_MAX_INODES = 16384

_REAP = """
local function reap(grants, now)
  local out_b, out_i, nodes = 0, 0, 0
  local all = redis.call('HGETALL', grants)
  for i = 1, #all, 2 do
    local b, n, exp = string.match(all[i + 1], '(%-?%d+) (%-?%d+) (%d+)')
    if tonumber(exp) < now then
      redis.call('HDEL', grants, all[i])
    else
      out_b, out_i, nodes = out_b + tonumber(b), out_i + tonumber(n), nodes + 1
    end
  end
  return out_b, out_i, nodes
end
local function clock()  -- Redis's clock, one for every node; scripts replicate as effects
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function get(h, k) return tonumber(redis.call('HGET', h, k) or '0') end
local function mine(grants, node)
  local v = redis.call('HGET', grants, node)
  if not v then return 0, 0 end
  local b, n = string.match(v, '(%-?%d+) (%-?%d+)')
  return tonumber(b), tonumber(n)
end
local function size(room, nodes, want, lo, hi)
  -- the share of the room one of (nodes + 1) active nodes may hold, within [lo, hi],
  -- never below what is asked for now, never above the room left; no limit: what is asked
  if room == nil then return want end
  if room <= 0 then return 0 end
  local s = math.floor(room / (2 * (nodes + 1)))
  s = math.max(lo, math.min(hi, s))
  s = math.max(s, want)
  return math.min(s, room)
end
"""

# KEYS: scope, grants; ARGV: node, want_b, want_i, -, lease_ms, min_b, min_i, max_b, max_i
_ACQUIRE = _REAP + """
local now = clock()
local out_b, out_i, nodes = reap(KEYS[2], now)
local have_b, have_i = mine(KEYS[2], ARGV[1])
local others = nodes
if have_b ~= 0 or have_i ~= 0 then others = nodes - 1 end
local lb, li = get(KEYS[1], 'limit_bytes'), get(KEYS[1], 'limit_inodes')
local room_b, room_i = nil, nil
if lb > 0 then room_b = lb - get(KEYS[1], 'used_bytes') - out_b end
if li > 0 then room_i = li - get(KEYS[1], 'used_inodes') - out_i end
local want_b, want_i = tonumber(ARGV[2]), tonumber(ARGV[3])
local gb = size(room_b, others, want_b, tonumber(ARGV[6]), tonumber(ARGV[8]))
local gi = size(room_i, others, want_i, tonumber(ARGV[7]), tonumber(ARGV[9]))
if gb < want_b or gi < want_i then gb, gi = 0, 0 end  -- all of it or nothing
local b, n = have_b + gb, have_i + gi
redis.call('HSET', KEYS[2], ARGV[1], b .. ' ' .. n .. ' ' .. (now + tonumber(ARGV[5])))
return {gb, gi, b, n}
"""

# KEYS: scope, grants, seq; ARGV: node, seq, d_b, d_i, spent_b, spent_i, -, lease_ms
_COMMIT = _REAP + """
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'used_bytes', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'used_inodes', ARGV[4])
local b, n = mine(KEYS[2], ARGV[1])
b, n = math.max(0, b - tonumber(ARGV[5])), math.max(0, n - tonumber(ARGV[6]))
redis.call('HSET', KEYS[2], ARGV[1], b .. ' ' .. n .. ' ' .. (clock() + tonumber(ARGV[8])))
return 1
"""

# KEYS: grants; ARGV: node, bytes, inodes, -, lease_ms
_RELEASE = _REAP + """
local b, n = mine(KEYS[1], ARGV[1])
b, n = math.max(0, b - tonumber(ARGV[2])), math.max(0, n - tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[1], b .. ' ' .. n .. ' ' .. (clock() + tonumber(ARGV[5])))
return {b, n}
"""

# KEYS: scope, grants
_DESCRIBE = _REAP + """
local out_b, out_i, nodes = reap(KEYS[2], clock())
return {get(KEYS[1], 'limit_bytes'), get(KEYS[1], 'limit_inodes'), get(KEYS[1], 'used_bytes'),
        get(KEYS[1], 'used_inodes'), out_b, out_i, nodes}
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one acquire gave (`bytes`, `inodes`: 0 and 0 when refused) and what the node
    now holds in all (`held_*`)."""

    bytes: int
    inodes: int
    held_bytes: int
    held_inodes: int


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
class GrantPolicy:
    lease_ms: int = 10_000
    min_bytes: int = DEFAULT_MIN_BYTES
    min_inodes: int = DEFAULT_MIN_INODES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_inodes: int = DEFAULT_MAX_INODES


class SharedScopes:
    """One node's view of the scopes on Redis; every call is one round trip (blocking:
    call it from a worker thread)."""

    def __init__(self, client: redis.Redis, node: str, policy: GrantPolicy | None = None,
                 prefix: str = "fusegw") -> None:
        self.client = client
        self.node = node
        self.policy = policy or GrantPolicy()
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._commit = client.register_script(_COMMIT)
        self._release = client.register_script(_RELEASE)
        self._describe = client.register_script(_DESCRIBE)

    def _keys(self, scope: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{{{scope}}}"
        return f"{base}:scope", f"{base}:grants", f"{base}:seq"

    def set_limits(self, scope: str, limit_bytes: int, limit_inodes: int) -> None:
        self.client.hset(self._keys(scope)[0],
                         mapping={"limit_bytes": limit_bytes, "limit_inodes": limit_inodes})

    def acquire(self, scope: str, want_bytes: int, want_inodes: int) -> Grant:
        """A grant of at least what is wanted now (or nothing, if the room is short)."""
        p = self.policy
        scope_key, grants, _ = self._keys(scope)
        gb, gi, hb, hi = self._run(self._acquire, [scope_key, grants],
                                   [self.node, want_bytes, want_inodes, 0,
                                    p.lease_ms, p.min_bytes, p.min_inodes, p.max_bytes,
                                    p.max_inodes])
        return Grant(gb, gi, hb, hi)

    def commit(self, scope: str, seq: int, delta_bytes: int, delta_inodes: int,
               spent_bytes: int, spent_inodes: int) -> bool:
        """Add what the node's changes allocated (negative: freed) and take what they spent
        off its grant; False if commit `seq` of this node was applied already."""
        keys = list(self._keys(scope))
        applied = self._run(self._commit, keys,
                            [self.node, seq, delta_bytes, delta_inodes, spent_bytes,
                             spent_inodes, 0, self.policy.lease_ms])
        return bool(applied)

    def release(self, scope: str, nbytes: int, ninodes: int) -> tuple[int, int]:
        """Give back part of the grant; what the node still holds."""
        held = self._run(self._release, [self._keys(scope)[1]],
                         [self.node, nbytes, ninodes, 0, self.policy.lease_ms])
        return int(held[0]), int(held[1])

    def describe(self, scope: str) -> SharedFigures:
        scope_key, grants, _ = self._keys(scope)
        values = self._run(self._describe, [scope_key, grants], [])
        return SharedFigures(*(int(v) for v in values))

    @staticmethod
    def _run(script: Any, keys: list[str], args: list[Any]) -> Any:
        return script(keys=keys, args=args)
