"""The server-side scripts of the shared ledger: every change to a scope's figures on Redis is
one of these, so it is atomic whatever the number of nodes.

Per scope, under one hash tag (a Redis Cluster keeps a scope on one shard):

    <prefix>:{<scope>}:scope     hash  limit_bytes limit_inodes used_bytes used_inodes epoch
                                       rebuild ("<node> <expiry_ms> hold|scan", while one runs)
    <prefix>:{<scope>}:grants    hash  <node> -> "<bytes> <inodes> <lease_expiry_ms>"
    <prefix>:{<scope>}:seq       hash  <node> -> the last commit applied from that node
    <prefix>:{<scope>}:vfolders  hash  <hex>:b, <hex>:i -> each vfolder's usage
    <prefix>:{<scope>}:held      hash  <node> -> the rebuild epoch it has stopped for

Clocks are Redis's (`TIME`), one for every node. A grant whose lease passed stays counted
until the disk has been counted without its node (`reap`).
"""

from __future__ import annotations

COMMON = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function reap(grants, now)
  -- every grant out, and the nodes whose lease holds. A grant whose lease passed still counts:
  -- its node may have written into it without committing, and only a rebuild (which counts
  -- the disk) or the adoption of the node's marks gives it back (REBASE, DROP)
  local out_b, out_i, nodes = 0, 0, 0
  local all = redis.call('HGETALL', grants)
  for i = 1, #all, 2 do
    local b, n, exp = string.match(all[i + 1], '(%-?%d+) (%-?%d+) (%d+)')
    out_b, out_i = out_b + tonumber(b), out_i + tonumber(n)
    if tonumber(exp) >= now then nodes = nodes + 1 end
  end
  return out_b, out_i, nodes
end
local function get(h, k) return tonumber(redis.call('HGET', h, k) or '0') end
local function mine(grants, node)
  local v = redis.call('HGET', grants, node)
  if not v then return nil, nil end
  local b, n = string.match(v, '(%-?%d+) (%-?%d+)')
  return tonumber(b), tonumber(n)
end
local function put(grants, node, b, n, now, lease)
  redis.call('HSET', grants, node, b .. ' ' .. n .. ' ' .. (now + lease))
end
local function spend(grants, node, b, n, now, lease)
  -- take what was spent off the node's grant (negative: freed room joins it)
  local hb, hn = mine(grants, node)
  if hb == nil then return end
  put(grants, node, math.max(0, hb - b), math.max(0, hn - n), now, lease)
end
local function rebuild_of(scope)
  local r = redis.call('HGET', scope, 'rebuild')
  if not r then return nil end
  local who, exp, phase = string.match(r, '(%S+) (%d+) (%a+)')
  return who, tonumber(exp), phase
end
local function figures(scope, grants, vfolders, node)
  local hb, hn = mine(grants, node)
  return {get(scope, 'used_bytes'), get(scope, 'used_inodes'), get(scope, 'limit_bytes'),
          get(scope, 'limit_inodes'), hb or 0, hn or 0, get(scope, 'epoch'),
          redis.call('HGET', scope, 'rebuild') or '', redis.call('HGETALL', vfolders)}
end
"""

_SIZE = """
local function size(room, nodes, want, lo, hi)
  -- the share of the room one of (nodes + 1) active nodes may hold, within [lo, hi], never
  -- below what is asked for now, never above the room left; no limit: what is asked
  if room == nil then return want end
  if room <= 0 then return 0 end
  local s = math.floor(room / (2 * (nodes + 1)))
  s = math.max(lo, math.min(hi, s))
  s = math.max(s, want)
  return math.min(s, room)
end
"""

ACQUIRE = COMMON + _SIZE + """
-- KEYS: scope, grants; ARGV: node, want_b, want_i, lease_ms, min_b, min_i, max_b, max_i
local now = clock()
local out_b, out_i, nodes = reap(KEYS[2], now)
local have_b, have_i = mine(KEYS[2], ARGV[1])
local others = nodes
if have_b ~= nil then others = nodes - 1 end
have_b, have_i = have_b or 0, have_i or 0
local lb, li = get(KEYS[1], 'limit_bytes'), get(KEYS[1], 'limit_inodes')
local room_b, room_i = nil, nil
if lb > 0 then room_b = lb - get(KEYS[1], 'used_bytes') - out_b end
if li > 0 then room_i = li - get(KEYS[1], 'used_inodes') - out_i end
local want_b, want_i = tonumber(ARGV[2]), tonumber(ARGV[3])
local gb = size(room_b, others, want_b, tonumber(ARGV[5]), tonumber(ARGV[7]))
local gi = size(room_i, others, want_i, tonumber(ARGV[6]), tonumber(ARGV[8]))
if gb < want_b or gi < want_i then gb, gi = 0, 0 end  -- all of it or nothing
put(KEYS[2], ARGV[1], have_b + gb, have_i + gi, now, tonumber(ARGV[4]))
return {gb, gi, have_b + gb, have_i + gi, out_b - have_b, out_i - have_i}
"""

TICK = COMMON + """
-- One node's periodic call for one scope: commit, give the grant back if idle, renew its
-- lease, and read the figures.
-- KEYS: scope, grants, seq, vfolders
-- ARGV: node, seq (0: nothing to commit), epoch, d_b, d_i, release (1: drop the grant),
--       lease_ms, then per vfolder: hex, d_b, d_i
local now = clock()
reap(KEYS[2], now)
local node, seq, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[7])
local status = 1
if seq > 0 then
  if seq <= get(KEYS[3], node) then
    status = 0  -- applied before: its answer was lost, and it was sent again
  elseif tonumber(ARGV[3]) ~= get(KEYS[1], 'epoch') then
    status = -1  -- counted against figures a rebuild has since replaced: not applied
  else
    local d_b, d_i = tonumber(ARGV[4]), tonumber(ARGV[5])
    redis.call('HSET', KEYS[3], node, ARGV[2])  -- the text: Lua prints numbers in 14 digits
    redis.call('HINCRBY', KEYS[1], 'used_bytes', d_b)
    redis.call('HINCRBY', KEYS[1], 'used_inodes', d_i)
    for i = 8, #ARGV, 3 do
      redis.call('HINCRBY', KEYS[4], ARGV[i] .. ':b', ARGV[i + 1])
      redis.call('HINCRBY', KEYS[4], ARGV[i] .. ':i', ARGV[i + 2])
    end
    spend(KEYS[2], node, d_b, d_i, now, lease)
  end
end
if ARGV[6] == '1' then
  redis.call('HDEL', KEYS[2], node)
else
  spend(KEYS[2], node, 0, 0, now, lease)  -- renews the lease
end
local f = figures(KEYS[1], KEYS[2], KEYS[4], node)
table.insert(f, 1, status)
return f
"""

READ = COMMON + """
-- KEYS: scope, grants, vfolders; ARGV: node
return figures(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
"""

DESCRIBE = COMMON + """
-- KEYS: scope, grants
local out_b, out_i, nodes = reap(KEYS[2], clock())
return {get(KEYS[1], 'limit_bytes'), get(KEYS[1], 'limit_inodes'), get(KEYS[1], 'used_bytes'),
        get(KEYS[1], 'used_inodes'), out_b, out_i, nodes}
"""

INIT = """
-- A scope's first figures, once: KEYS: scope, vfolders; ARGV: used_b, used_i, limit_b,
-- limit_i. 1 if this call set them, 0 if they were there.
if redis.call('HEXISTS', KEYS[1], 'epoch') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'used_bytes', ARGV[1], 'used_inodes', ARGV[2], 'epoch', 1)
if redis.call('HEXISTS', KEYS[1], 'limit_bytes') == 0 then
  redis.call('HSET', KEYS[1], 'limit_bytes', ARGV[3], 'limit_inodes', ARGV[4])
end
redis.call('DEL', KEYS[2])
return 1
"""

_STOPPED = """
local function stopped(keys, node, epoch, oseq, ob, oi, pb, pi, now, lease)
  -- this node has stopped changing the scope for the rebuild `epoch`: what it changed and
  -- did not commit is on the disk the rebuild scans, so it is not committed but taken off
  -- its grant (the commit in flight, unless it was applied, and what was pending)
  local sb, si = pb, pi
  if tonumber(oseq) > get(keys[3], node) then
    redis.call('HSET', keys[3], node, oseq)
    sb, si = sb + ob, si + oi
  end
  spend(keys[2], node, sb, si, now, lease)
  redis.call('HSET', keys[4], node, epoch)
end
"""

BEGIN = COMMON + _STOPPED + """
-- Start a rebuild of the scope, unless another node's is running.
-- KEYS: scope, grants, seq, held; ARGV: node, lease_ms, outbox seq, b, i, pending b, i
-- {1, epoch}: begun (every other node must stop, see ACK); {0, epoch}: another runs
local now = clock()
local node, lease = ARGV[1], tonumber(ARGV[2])
local who, exp = rebuild_of(KEYS[1])
if who and who ~= node and exp >= now then return {0, get(KEYS[1], 'epoch')} end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'rebuild', node .. ' ' .. (now + lease) .. ' hold')
redis.call('DEL', KEYS[4])
stopped(KEYS, node, epoch, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
        tonumber(ARGV[6]), tonumber(ARGV[7]), now, lease)
return {1, epoch}
"""

ACK = COMMON + _STOPPED + """
-- A node has stopped for rebuild `epoch` (only while the rebuild still waits for nodes).
-- KEYS: scope, grants, seq, held; ARGV: node, epoch, lease_ms, outbox seq, b, i, pending b, i
local now = clock()
local who, exp, phase = rebuild_of(KEYS[1])
if not who or exp < now or phase ~= 'hold' or get(KEYS[1], 'epoch') ~= tonumber(ARGV[2]) then
  return 0
end
stopped(KEYS, ARGV[1], tonumber(ARGV[2]), ARGV[4], tonumber(ARGV[5]),
        tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), now, tonumber(ARGV[3]))
return 1
"""

EXTEND = COMMON + """
-- The rebuilder is alive: renew its claim, set its phase; the nodes that have stopped.
-- KEYS: scope, held; ARGV: node, epoch, lease_ms, phase.  nil if the claim was lost.
local now = clock()
local who, exp = rebuild_of(KEYS[1])
if who ~= ARGV[1] or get(KEYS[1], 'epoch') ~= tonumber(ARGV[2]) then return nil end
redis.call('HSET', KEYS[1], 'rebuild', ARGV[1] .. ' ' .. (now + tonumber(ARGV[3])) .. ' '
           .. ARGV[4])
return redis.call('HKEYS', KEYS[2])
"""

REBASE = COMMON + """
-- The rebuild's scan: the scope's figures from now on. The grants of nodes not alive go back:
-- what they wrote is in the scan. KEYS: scope, vfolders, held, grants;
-- ARGV: node, epoch, used_b, used_i, n_live, live nodes..., then per vfolder: hex, b, i.
-- 0 if the claim was lost.
local who = rebuild_of(KEYS[1])
if who ~= ARGV[1] or get(KEYS[1], 'epoch') ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'used_bytes', ARGV[3], 'used_inodes', ARGV[4])
redis.call('DEL', KEYS[2], KEYS[3])
local live, n = {}, tonumber(ARGV[5])
for i = 6, 5 + n do live[ARGV[i]] = true end
for _, holder in ipairs(redis.call('HKEYS', KEYS[4])) do
  if not live[holder] then redis.call('HDEL', KEYS[4], holder) end
end
for i = 6 + n, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i] .. ':b', ARGV[i + 1], ARGV[i] .. ':i', ARGV[i + 2])
end
redis.call('HDEL', KEYS[1], 'rebuild')
return 1
"""

DROP = """
-- KEYS: grants; ARGV: node. A vanished node's grant in a scope it had nothing uncommitted in.
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

ABORT = COMMON + """
-- KEYS: scope; ARGV: node. Give up this node's rebuild claim (the figures stay as they were).
if rebuild_of(KEYS[1]) == ARGV[1] then redis.call('HDEL', KEYS[1], 'rebuild') end
return 1
"""

HEARTBEAT = COMMON + """
-- KEYS: nodes; ARGV: node, lease_ms. This node is alive for another lease; every node's
-- expiry and Redis's clock now.
local now = clock()
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
return {now, redis.call('HGETALL', KEYS[1])}
"""
