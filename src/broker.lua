-- broker.lua: the daemon's one Redis script, run with EVALSHA (EVAL until
-- SCRIPT LOAD has answered).  Each mode writes only the keys it declares,
-- all of one stream (one hash slot in a cluster).  own and reap also read
-- liveness keys, liveprefix .. owner: the owners come from the hash, so
-- they cannot be declared; on a cluster the prefix puts them in the
-- stream's slot, which Redis allows.
--   pub:     KEYS stream dedup dedupexp   ARGV pub window n {msgid nf fields...}...
--            (dedup: msgid -> entry id; dedupexp: msgid -> when it expires)
-- (claim, release and dead also take KEYS[4], the group's failure log:
--  entry id -> "ms:what,ms:what,..", copied into the dead letter)
--   claim:   KEYS stream dlq delayset     ARGV claim group consumer min_idle count max_attempts now owner scan start
--   release: KEYS stream dlq delayset     ARGV release group consumer due retry why ids...
--   dead:    KEYS stream dlq delayset     ARGV dead group reason now ids...
--   retain:  KEYS stream                  ARGV retain - maxlen hard
--   replay:  KEYS stream dlq              ARGV replay - now all limit ids...
--   own:     KEYS stream owners           ARGV own group consumer me from liveprefix
--   reap:    KEYS stream owners           ARGV reap group me liveprefix grace idle_ms live...
local mode = ARGV[1]

if mode == 'pub' then
  -- Recent msgids live in one hash per stream, their expiry times in a
  -- sorted set: three keys whatever the msgids, so a slot migration moves
  -- them with the stream in one go instead of key by key.
  local window, n, a, out = tonumber(ARGV[2]), tonumber(ARGV[3]), 4, {}
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Forget expired msgids, at least as many as this call may add.
  local most = 2 * n + 64
  while most > 0 do
    local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0,
                           math.min(most, 1000))
    if #old == 0 then break end
    redis.call('HDEL', KEYS[2], unpack(old))
    redis.call('ZREM', KEYS[3], unpack(old))
    most = most - #old
  end
  local added = false
  for i = 1, n do
    local msgid, nf = ARGV[a], tonumber(ARGV[a + 1])
    local fields = {}
    for j = 1, nf do fields[j] = ARGV[a + 1 + j] end
    a = a + 2 + nf
    local id = false
    if msgid ~= '' then
      id = redis.call('HGET', KEYS[2], msgid)
      if id and tonumber(redis.call('ZSCORE', KEYS[3], msgid) or 0) <= now then
        id = false	-- expired, not yet forgotten
      end
    end
    if id then
      out[i] = {id, 1}
    else
      id = redis.call('XADD', KEYS[1], '*', unpack(fields))
      if msgid ~= '' then
        redis.call('HSET', KEYS[2], msgid, id)
        redis.call('ZADD', KEYS[3], now + window, msgid)
        added = true
      end
      out[i] = {id, 0}
    end
  end
  if added then	-- both go when no msgid came for a whole window
    redis.call('PEXPIRE', KEYS[2], window)
    redis.call('PEXPIRE', KEYS[3], window)
  end
  return out
end

-- Stream ids compare as (ms, seq) pairs.
local function idpair(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function idless(a, b)
  local am, as = idpair(a)
  local bm, bs = idpair(b)
  return am < bm or (am == bm and as < bs)
end

if mode == 'retain' then
  -- Trim what every group has acknowledged: below the oldest entry any
  -- group still has pending or has not yet read.  Then maxlen: a stream
  -- no group reads is simply capped; with groups, only hard (maxlen_hard)
  -- caps remove entries a group still needs, and those are counted.
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
  local floor, ngroups = nil, 0
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    ngroups = ngroups + 1
    local ms, seq = idpair(f['last-delivered-id'])
    local need = ms .. '-' .. (seq + 1)
    if f['pending'] > 0 then
      local p = redis.call('XPENDING', KEYS[1], f['name'], '-', '+', 1)
      if #p > 0 and idless(p[1][1], need) then need = p[1][1] end
    end
    if floor == nil or idless(need, floor) then floor = need end
  end
  if floor ~= nil then redis.call('XTRIM', KEYS[1], 'MINID', floor) end
  local capped, maxlen = 0, tonumber(ARGV[3])
  if maxlen > 0 and (ngroups == 0 or ARGV[4] == '1') and
     redis.call('XLEN', KEYS[1]) > maxlen then
    -- LIMIT 0: no cap on the work per call, so a fast stream keeps up
    capped = redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen, 'LIMIT', 0)
  end
  if ngroups == 0 then capped = 0 end
  return {redis.call('XLEN', KEYS[1]), capped}
end

if mode == 'replay' then
  -- Dead letters back into their stream as new entries (every group gets
  -- them, attempt 1), minus the dead-letter fields, plus a record of the
  -- replay; removed from the dead-letter stream in the same step.
  local ids = {}
  if ARGV[4] == '1' then
    for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', ARGV[5])) do
      ids[#ids + 1] = e[1]
    end
  else
    for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
  end
  local meta = {origin_id = 1, group = 1, attempts = 1, reason = 1, dead_at = 1,
                failures = 1, replay_of = 1, replayed_at = 1}
  local out = {}
  for _, id in ipairs(ids) do
    local e = redis.call('XRANGE', KEYS[2], id, id)
    if #e > 0 then
      local f, args, origin = e[1][2], {KEYS[1], '*'}, id
      for i = 1, #f, 2 do
        if f[i] == 'origin_id' then origin = f[i + 1] end
        if not meta[f[i]] then
          args[#args + 1] = f[i]
          args[#args + 1] = f[i + 1]
        end
      end
      for _, v in ipairs({'replay_of', origin, 'replayed_at', ARGV[3]}) do
        args[#args + 1] = v
      end
      out[#out + 1] = redis.call('XADD', unpack(args))
      redis.call('XDEL', KEYS[2], id)
    end
  end
  return out
end

local group = ARGV[2]

-- Hand all of a consumer's pending entries back to its group: idle far
-- past any deadline, so the next claim sweep of any daemon takes them.
local function release_all(consumer)
  local n, start = 0, '-'
  while true do
    local p = redis.call('XPENDING', KEYS[1], group, start, '+', 500, consumer)
    if #p == 0 then return n end
    local args = {KEYS[1], group, consumer, 0}
    for _, e in ipairs(p) do args[#args + 1] = e[1] end
    for _, v in ipairs({'IDLE', '1000000000', 'JUSTID'}) do args[#args + 1] = v end
    redis.call('XCLAIM', unpack(args))
    n = n + #p
    start = '(' .. p[#p][1]
  end
end

if mode == 'own' then
  -- Create the group if needed, then take the consumer name unless a live
  -- daemon holds it.
  local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], group, ARGV[5], 'MKSTREAM')
  if type(r) == 'table' and r.err and not string.find(r.err, 'BUSYGROUP') then
    return r
  end
  local owner = redis.call('HGET', KEYS[2], ARGV[3])
  if owner and owner ~= ARGV[4] and redis.call('EXISTS', ARGV[6] .. owner) == 1 then
    return 'in_use'
  end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 'ok'
end

if mode == 'reap' then
  -- Consumers whose daemon is gone (its liveness key expired), or ours
  -- from before a restart that did not come back within the grace time:
  -- release their entries.  Then remove consumers nobody owns that sat
  -- idle with nothing pending (removing one with pending entries would
  -- drop them).
  local me, prefix, grace, idle = ARGV[3], ARGV[4], ARGV[5] == '1', tonumber(ARGV[6])
  local live, released = {}, 0
  for i = 7, #ARGV do live[ARGV[i]] = true end
  local owners = redis.call('HGETALL', KEYS[2])
  for i = 1, #owners, 2 do
    local consumer, owner = owners[i], owners[i + 1]
    local dead
    if owner == me then
      dead = grace and not live[consumer]
    else
      dead = redis.call('EXISTS', prefix .. owner) == 0
    end
    if dead then
      released = released + release_all(consumer)
      redis.call('HDEL', KEYS[2], consumer)
    end
  end
  local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], group)
  if ok then
    for _, c in ipairs(consumers) do
      local f = {}
      for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
      if f['pending'] == 0 and f['idle'] > idle and
         redis.call('HEXISTS', KEYS[2], f['name']) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, f['name'])
      end
    end
  end
  return released
end

-- Move one pending entry to the dead-letter stream and acknowledge it, in
-- this one script: it is always in exactly one of the two places.
-- The time and cause of each failed attempt of an entry, kept until it is
-- acknowledged or dead-lettered (a day at most without news).
local function note(id, what, now)
  local log = redis.call('HGET', KEYS[4], id)
  local item = now .. ':' .. what
  if log and #log < 2000 then log = log .. ',' .. item else log = item end
  redis.call('HSET', KEYS[4], id, log)
  redis.call('PEXPIRE', KEYS[4], 86400000)
end

local function bury(id, attempts, reason, now)
  local e = redis.call('XRANGE', KEYS[1], id, id)
  local args = {KEYS[2], '*'}
  if #e > 0 then
    for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
  end
  local meta = {'origin_id', id, 'group', group, 'attempts', tostring(attempts),
                'reason', reason, 'dead_at', now,
                'failures', redis.call('HGET', KEYS[4], id) or ''}
  for _, v in ipairs(meta) do args[#args + 1] = v end
  redis.call('XADD', unpack(args))
  redis.call('XACK', KEYS[1], group, id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end

if mode == 'claim' then
  local consumer, count, maxatt, now = ARGV[3], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
  local pend
  if ARGV[8] ~= '' then
    pend = redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[4], ARGV[10], '+', ARGV[9], ARGV[8])
  else
    pend = redis.call('XPENDING', KEYS[1], group, 'IDLE', ARGV[4], ARGV[10], '+', ARGV[9])
  end
  local out, dead, last = {}, 0, ''
  for _, p in ipairs(pend) do
    if #out >= count then break end
    local id, n = p[1], p[4]
    last = id
    local due = redis.call('ZSCORE', KEYS[3], id)
    if not due or tonumber(due) <= tonumber(now) then
      -- released entries had their cause noted when released
      if ARGV[8] ~= '' then note(id, 'reconnect', now)
      elseif p[3] < 1000000000 then note(id, 'timeout', now) end
      if n >= maxatt then
        bury(id, n, 'max_attempts', now)
        dead = dead + 1
      else
        if due then redis.call('ZREM', KEYS[3], id) end
        local e = redis.call('XCLAIM', KEYS[1], group, consumer, 0, id)
        if #e > 0 then out[#out + 1] = {e[1][1], n + 1, e[1][2]} end
      end
    end
  end
  -- last: the last pending entry looked at; a recovery goes on after it
  return {out, dead, #pend, last}
end

if mode == 'release' then
  -- Idle far past any deadline: the next claim sweep of any daemon takes
  -- them; a due time keeps them back until then.
  -- retry: entries read for a consumer that left before they reached it
  -- were never delivered; RETRYCOUNT undoes that count.
  local args = {KEYS[1], group, ARGV[3], 0}
  for i = 7, #ARGV do args[#args + 1] = ARGV[i] end
  for _, v in ipairs({'IDLE', '1000000000', 'JUSTID'}) do args[#args + 1] = v end
  if ARGV[5] ~= '' then
    args[#args + 1] = 'RETRYCOUNT'
    args[#args + 1] = ARGV[5]
  end
  local got = redis.call('XCLAIM', unpack(args))
  if ARGV[6] ~= '' then
    local now = redis.call('TIME')
    local ms = now[1] * 1000 + math.floor(now[2] / 1000)
    for _, id in ipairs(got) do note(id, ARGV[6], ms) end
  end
  if tonumber(ARGV[4]) > 0 then
    for _, id in ipairs(got) do redis.call('ZADD', KEYS[3], ARGV[4], id) end
  end
  return #got
end

if mode == 'dead' then
  local n = 0
  for i = 5, #ARGV do
    local p = redis.call('XPENDING', KEYS[1], group, ARGV[i], ARGV[i], 1)
    if #p > 0 then
      bury(ARGV[i], p[1][4], ARGV[3], ARGV[4])
      n = n + 1
    end
  end
  return n
end

return redis.error_reply('unknown mode ' .. tostring(mode))
