"""The Lua scripts of the Redis state: one per state operation, each atomic on the server.

They copy ``MemoryState``'s rules (``langchain_pllm/state/memory.py``); ``redis_layout.py``
holds the key layout they work on and builds their arguments, ``redis.py`` runs them
(connections, fallback, leases). Scripts are sent by SHA-1 (``EVALSHA``) and loaded on first
use.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ACQUIRE",
    "COUNT_SPEND",
    "COUNT_VALIDATION",
    "HEARTBEAT",
    "QUOTA",
    "RECONCILE",
    "RELEASE",
    "SNAPSHOT",
    "Script",
]


class Script:
    """A Lua script and the SHA-1 Redis knows it by."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by SHA-1


# Shared Lua pieces. Times travel as strings formatted with %.17g: a Lua number handed back to
# Redis would be cut to an integer, and a default conversion may drop digits.
PRELUDE = """
local function fmt(x) return string.format('%.17g', x) end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local clock = fmt(now)
"""

# Drops token reservations older than the window and returns the sum of those left. The sum is
# kept in the hash; an empty ZSET (also: one that expired whole) means a sum of 0.
EXPIRE_TOKENS = """
local function expire_tokens(tk, st, cutoff)
  local sum = tonumber(redis.call('HGET', st, 'token_sum')) or 0
  local gone = redis.call('ZRANGEBYSCORE', tk, '-inf', cutoff)
  if #gone > 0 then
    for i = 1, #gone do
      sum = sum - tonumber(string.match(gone[i], '|(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', tk, '-inf', cutoff)
  end
  local held = redis.call('ZCARD', tk)
  if held == 0 then sum = 0 end
  return sum, held
end
"""

# The ``limits:`` windows. A rolling window is a ZSET of ``<lease id>|<amount>`` scored by start,
# its sum kept in the state hash under the window key's own name (an empty ZSET: a sum of 0); a
# calendar window is one counter per period, its name carrying the period, expiring at its end.
# Per window the scripts get: kind ('r' or 'c'), limit, span (the period, or the seconds left
# in the calendar period), amount, strict ('1' for requests: never more than the limit).
QUOTA = """
local function quota_sum(kind, qk, st, cutoff)
  if kind == 'c' then return tonumber(redis.call('GET', qk)) or 0 end
  local sum = tonumber(redis.call('HGET', st, qk)) or 0
  local gone = redis.call('ZRANGEBYSCORE', qk, '-inf', cutoff)
  for i = 1, #gone do sum = sum - tonumber(string.match(gone[i], '|([^|]+)$')) end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', qk, '-inf', cutoff) end
  if redis.call('ZCARD', qk) == 0 then sum = 0 end
  return sum
end
local function quota_wake(kind, qk, sum, amount, limit, strict, span)
  if sum + amount <= limit or (not strict and sum <= 0) then return nil end
  if kind == 'c' then return now + span end
  local first = redis.call('ZRANGE', qk, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) + span end
  return now + span
end
"""

# KEYS: starts, tokens, leases, state, then one per ``limits:`` window.
# ARGV: now ('' = server clock), window, rate_limit, tpm, max_concurrency (-1 = none), tokens,
#       lease id, lease ttl, window key ttl ms, state ttl ms, lease key ttl ms, number of
#       ``limits:`` windows, then 5 per window (see QUOTA).
# Returns {1, start, probe} or {0, wake time or 'inf', now}.
ACQUIRE = Script(
    PRELUDE
    + EXPIRE_TOKENS
    + QUOTA
    + """
local starts, tk, leases, st = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local h = redis.call('HMGET', st, 'breaker', 'open_until', 'probe', 'probe_until', 'rest_until')
local probe = 0
if h[1] == 'open' or h[1] == 'half_open' or h[1] == 'exhausted' then
  -- An exhausted (spent) key rests like an open breaker, then lets one probe through.
  if h[1] == 'open' or h[1] == 'exhausted' then
    if now < (tonumber(h[2]) or 0) then return {0, h[2], clock} end
    redis.call('HSET', st, 'breaker', 'half_open')
    redis.call('HDEL', st, 'probe', 'probe_until')
    h[3] = false
  end
  -- One probe for the whole fleet; a probe whose lease expired (its process died) frees it.
  if h[3] and (tonumber(h[4]) or 0) > now then return {0, 'inf', clock} end
  probe = 1
end
local rest = tonumber(h[5])
if rest and now < rest then return {0, h[5], clock} end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', clock)
local maxc = tonumber(ARGV[5])
if maxc >= 0 and redis.call('ZCARD', leases) >= maxc then return {0, 'inf', clock} end
local window = tonumber(ARGV[2])
local cutoff = fmt(now - window)
redis.call('ZREMRANGEBYSCORE', starts, '-inf', cutoff)
local rate = tonumber(ARGV[3])
if rate >= 0 and redis.call('ZCARD', starts) >= rate then
  local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
  if not first[2] then return {0, 'inf', clock} end
  return {0, fmt(tonumber(first[2]) + window), clock}
end
local nq = tonumber(ARGV[12]) or 0
local qsums = {}
local latest = nil
for i = 1, nq do
  local b = 12 + (i - 1) * 5
  local kind, span = ARGV[b + 1], tonumber(ARGV[b + 3])
  local sum = quota_sum(kind, KEYS[4 + i], st, fmt(now - span))
  qsums[i] = sum
  local wake = quota_wake(kind, KEYS[4 + i], sum, tonumber(ARGV[b + 4]), tonumber(ARGV[b + 2]),
    ARGV[b + 5] == '1', span)
  if wake and (latest == nil or wake > latest) then latest = wake end
end
if latest then return {0, fmt(latest), clock} end
local id = ARGV[7]
local tpm = tonumber(ARGV[4])
if tpm >= 0 then
  local tokens = tonumber(ARGV[6])
  local sum = expire_tokens(tk, st, cutoff)
  -- A request larger than the whole budget may still run alone in a window whose tokens sum
  -- to 0, as in MemoryState: entries settled to 0 (refused requests) do not block it.
  if sum + tokens > tpm and sum > 0 then
    redis.call('HSET', st, 'token_sum', fmt(sum))
    local first = redis.call('ZRANGE', tk, 0, 0, 'WITHSCORES')
    return {0, fmt(tonumber(first[2]) + window), clock}
  end
  redis.call('ZADD', tk, clock, id .. '|' .. ARGV[6])
  redis.call('PEXPIRE', tk, ARGV[9])
  redis.call('HSET', st, 'token_sum', fmt(sum + tokens))
end
for i = 1, nq do
  local b = 12 + (i - 1) * 5
  local qk, span = KEYS[4 + i], tonumber(ARGV[b + 3])
  local ttl = math.ceil((span + 60) * 1000)
  if ARGV[b + 1] == 'c' then
    redis.call('INCRBYFLOAT', qk, ARGV[b + 4])
  else
    redis.call('ZADD', qk, clock, id .. '|' .. ARGV[b + 4])
    redis.call('HSET', st, qk, fmt(qsums[i] + tonumber(ARGV[b + 4])))
  end
  redis.call('PEXPIRE', qk, ttl)
end
redis.call('ZADD', starts, clock, id)
redis.call('PEXPIRE', starts, ARGV[9])
local expiry = fmt(now + tonumber(ARGV[8]))
redis.call('ZADD', leases, expiry, id)
redis.call('PEXPIRE', leases, ARGV[11])
redis.call('HINCRBY', st, 'total_requests', 1)
if probe == 1 then
  redis.call('HSET', st, 'probe', id, 'probe_until', expiry)
end
redis.call('PEXPIRE', st, ARGV[10])
return {1, clock, probe}
"""
)

# KEYS: tokens, leases, state, then one per ``limits:`` window to settle.
# ARGV: now, lease id, outcome, probe (0/1), token entry start ('' = none), reserved tokens,
#       settled tokens, add to total_tokens (0/1), threshold, interval, retry_after, state ttl ms,
#       then per window to settle: kind ('r'/'c'), entry start, reserved, settled.
RELEASE = Script(
    PRELUDE
    + """
local tk, leases, st = KEYS[1], KEYS[2], KEYS[3]
local id = ARGV[2]
redis.call('ZREM', leases, id)
if ARGV[5] ~= '' and ARGV[6] ~= ARGV[7] then
  -- Settle only an entry still in the window: one that aged out was already subtracted.
  if redis.call('ZREM', tk, id .. '|' .. ARGV[6]) == 1 then
    redis.call('ZADD', tk, ARGV[5], id .. '|' .. ARGV[7])
    redis.call('HINCRBY', st, 'token_sum', tonumber(ARGV[7]) - tonumber(ARGV[6]))
  end
end
if ARGV[8] == '1' then redis.call('HINCRBY', st, 'total_tokens', ARGV[7]) end
for i = 4, #KEYS do
  local b = 12 + (i - 4) * 4
  local qk, reserved, settled = KEYS[i], ARGV[b + 3], ARGV[b + 4]
  if reserved ~= settled then
    local delta = tonumber(settled) - tonumber(reserved)
    if ARGV[b + 1] == 'c' then
      -- The counter of the period reserved in: a past period's change harms no one.
      if redis.call('EXISTS', qk) == 1 then redis.call('INCRBYFLOAT', qk, delta) end
    elseif redis.call('ZREM', qk, id .. '|' .. reserved) == 1 then
      redis.call('ZADD', qk, ARGV[b + 2], id .. '|' .. settled)
      redis.call('HINCRBYFLOAT', st, qk, delta)
    end
  end
end
local outcome = tonumber(ARGV[3])
local probe = ARGV[4] == '1'
if probe and redis.call('HGET', st, 'probe') == id then
  redis.call('HDEL', st, 'probe', 'probe_until')
end
if outcome == 0 or outcome == 3 then
  -- A 429's Retry-After, or a success whose headers said a resource is used up: rest.
  local rest = now + tonumber(ARGV[11])
  if tonumber(ARGV[11]) > 0 and rest > (tonumber(redis.call('HGET', st, 'rest_until')) or 0) then
    redis.call('HSET', st, 'rest_until', fmt(rest))
  end
end
if outcome == 0 then
  redis.call('HSET', st, 'failures', 0)
  if probe then redis.call('HSET', st, 'breaker', 'closed') end
elseif outcome == 1 or outcome == 2 then
  redis.call('HINCRBY', st, 'error_count', 1)
  local failures = redis.call('HINCRBY', st, 'failures', 1)
  if outcome == 2 or probe or failures >= tonumber(ARGV[9]) then
    redis.call('HSET', st, 'breaker', 'open', 'open_until', fmt(now + tonumber(ARGV[10])))
  end
elseif outcome == 3 then
  redis.call('HINCRBY', st, 'error_count', 1)
elseif outcome == 6 then
  -- A spent key: no breaker count; it rests retry_after, fleet-wide, then one probe.
  redis.call('HINCRBY', st, 'error_count', 1)
  redis.call('HSET', st, 'breaker', 'exhausted', 'open_until', fmt(now + tonumber(ARGV[11])))
end
redis.call('PEXPIRE', st, ARGV[12])
return 1
"""
)

# KEYS: starts, tokens, leases, state, then one per ``limits:`` window.
# ARGV: now, window, then per window: kind, span.
SNAPSHOT = Script(
    PRELUDE
    + EXPIRE_TOKENS
    + QUOTA
    + """
local starts, tk, leases, st = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cutoff = fmt(now - tonumber(ARGV[2]))
redis.call('ZREMRANGEBYSCORE', starts, '-inf', cutoff)
local sum = expire_tokens(tk, st, cutoff)
if redis.call('EXISTS', st) == 1 then redis.call('HSET', st, 'token_sum', fmt(sum)) end
redis.call('ZREMRANGEBYSCORE', leases, '-inf', clock)
local h = redis.call('HMGET', st, 'breaker', 'open_until', 'total_requests', 'total_tokens',
  'error_count', 'validation_failures', 'rest_until', 'cost', 'cached_tokens')
local state = h[1] or 'closed'
if (state == 'open' or state == 'exhausted') and now >= (tonumber(h[2]) or 0) then
  state = 'half_open'
end
local reply = {state, redis.call('ZCARD', leases), redis.call('ZCARD', starts), fmt(sum),
  h[3] or '0', h[4] or '0', h[5] or '0', h[6] or '0', h[7] or '0', clock, h[8] or '0',
  h[9] or '0', h[2] or '0'}
for i = 5, #KEYS do
  local b = 2 + (i - 5) * 2
  local kind, span = ARGV[b + 1], tonumber(ARGV[b + 2])
  local qsum = quota_sum(kind, KEYS[i], st, fmt(now - span))
  local reset = now
  if kind == 'c' then
    reset = now + span
  else
    if redis.call('EXISTS', st) == 1 then redis.call('HSET', st, KEYS[i], fmt(qsum)) end
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if first[2] then reset = tonumber(first[2]) + span end
  end
  reply[#reply + 1] = fmt(qsum)
  reply[#reply + 1] = fmt(reset)
end
return reply
"""
)

# KEYS: state. ARGV: cost, cached tokens, state ttl ms.
COUNT_SPEND = Script(
    """
redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'cached_tokens', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: state. ARGV: state ttl ms.
COUNT_VALIDATION = Script(
    """
redis.call('HINCRBY', KEYS[1], 'validation_failures', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# Liveness is real time, whatever clock the caller keeps: always the server's clock.
# KEYS: procs. ARGV: process id, seconds it stays live, key ttl ms. Returns 1 when the process
# was still listed (0: first beat, expired, or a Redis that lost its data), then the live ids.
HEARTBEAT = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
local had = redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[2])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local reply = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(reply, 1, had)
return reply
"""
)

# After an outage, per key: stand-ins for what Redis may have lost, this process's fallback
# starts written back, and placeholders for other processes still serving locally
# (``outage.py`` says why each is needed). Ages, not times, travel: the fallback's times are in
# the caller's clock, the scripts may run on the server's.
# KEYS: starts, tokens, state. ARGV: now, window, window key ttl ms, state ttl ms, this
# process's id, age of the outage's start ('' = share mode: write the starts back only), rate
# limit and tpm (-1 = none), seconds from now the placeholders are scored at ('' = none),
# placeholder requests and tokens per process, number of processes, their ids, then per start:
# member, age, tokens ('' when the key has no tpm).
# In the state hash, ``back|<id>`` is when a process last reconciled the key (no placeholders
# for it if that is after the outage began) and ``ph|<id>`` its placeholders: count, tokens,
# score. Both are pruned once they can no longer matter.
RECONCILE = Script(
    PRELUDE
    + EXPIRE_TOKENS
    + """
local starts, tk, st = KEYS[1], KEYS[2], KEYS[3]
local window = tonumber(ARGV[2])
local cutoff = fmt(now - window)
redis.call('ZREMRANGEBYSCORE', starts, '-inf', cutoff)
local sum = expire_tokens(tk, st, cutoff)
local has_tokens = false
local began = nil
if ARGV[6] ~= '' then began = now - tonumber(ARGV[6]) end
-- No state hash: the key's windows may have been lost (a restart without persistence). Its
-- starts before the outage all lie before the outage's start: fill its windows as of then. The
-- names are fixed, so a second process back adds nothing.
if began and began > now - window and redis.call('EXISTS', st) == 0 then
  local lost = fmt(began)
  for i = 1, tonumber(ARGV[7]) do redis.call('ZADD', starts, 'NX', lost, 'lost|' .. i) end
  if tonumber(ARGV[8]) > 0 then
    has_tokens = true
    if redis.call('ZADD', tk, 'NX', lost, 'lost|' .. ARGV[8]) == 1 then
      sum = sum + tonumber(ARGV[8])
    end
  end
end
local function drop(field)
  local held = redis.call('HGET', st, field)
  if not held then return end
  local k, tok = string.match(held, '^(%d+),(%d+)')
  for i = 1, tonumber(k) do redis.call('ZREM', starts, field .. '|' .. i) end
  if tonumber(tok) > 0 and redis.call('ZREM', tk, field .. '|t|' .. tok) == 1 then
    sum = sum - tonumber(tok)
  end
  redis.call('HDEL', st, field)
end
if began then
  local fields = redis.call('HKEYS', st)
  for i = 1, #fields do
    local f = fields[i]
    if string.sub(f, 1, 5) == 'back|' then
      if tonumber(redis.call('HGET', st, f)) < now - 86400 then redis.call('HDEL', st, f) end
    elseif string.sub(f, 1, 3) == 'ph|' then
      local at = tonumber(string.match(redis.call('HGET', st, f), ',([^,]+)$'))
      if at < now - window then drop(f) end
    end
  end
end
drop('ph|' .. ARGV[5])
local n = tonumber(ARGV[12])
for i = 13 + n, #ARGV, 3 do
  local at = fmt(now - tonumber(ARGV[i + 1]))
  redis.call('ZADD', starts, at, ARGV[i])
  if ARGV[i + 2] ~= '' then
    has_tokens = true
    -- Only a new member adds to the sum: a replay sent twice counts once.
    if redis.call('ZADD', tk, at, ARGV[i] .. '|' .. ARGV[i + 2]) == 1 then
      sum = sum + tonumber(ARGV[i + 2])
    end
  end
end
if ARGV[9] ~= '' then
  local at = fmt(now + tonumber(ARGV[9]))
  local k, tok = tonumber(ARGV[10]), tonumber(ARGV[11])
  for j = 13, 12 + n do
    local field = 'ph|' .. ARGV[j]
    local seen = tonumber(redis.call('HGET', st, 'back|' .. ARGV[j]))
    if not (seen and began and seen >= began) then
      drop(field)
      for i = 1, k do redis.call('ZADD', starts, at, field .. '|' .. i) end
      if tok > 0 then
        has_tokens = true
        redis.call('ZADD', tk, at, field .. '|t|' .. tok)
        sum = sum + tok
      end
      redis.call('HSET', st, field, k .. ',' .. tok .. ',' .. at)
    end
  end
end
if began then redis.call('HSET', st, 'back|' .. ARGV[5], clock) end
redis.call('PEXPIRE', starts, ARGV[3])
if has_tokens then redis.call('PEXPIRE', tk, ARGV[3]) end
if has_tokens or redis.call('EXISTS', st) == 1 then
  redis.call('HSET', st, 'token_sum', fmt(sum))
  -- Never shorten a longer life (a long breaker interval or Retry-After set it).
  if redis.call('PTTL', st) < tonumber(ARGV[4]) then redis.call('PEXPIRE', st, ARGV[4]) end
end
return 1
"""
)
