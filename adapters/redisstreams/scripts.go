package redisstreams

import "github.com/redis/go-redis/v9"

// The adapter's Lua scripts. Each touches the keys of one topic only, which
// share a Redis Cluster hash slot (see keys.go), and reads the time from the
// server (TIME), so that due times do not depend on the clients' clocks.

// declareScript records a topic's shard count and creates its groups.
//
//	KEYS[1] meta, KEYS[2..] the shard streams; ARGV[1..] groups
//
// It returns the topic's shard count. When the topic already has another
// count, it creates nothing (the caller retries with that many streams). A
// stream without any group yet gets its new groups at 0, so that they
// receive what reached the stream before any group existed (dead letters,
// other producers' entries); a stream with groups gets them at $.
var declareScript = redis.NewScript(`
local n = #KEYS - 1
local cur = tonumber(redis.call('HGET', KEYS[1], 'shards'))
if cur and cur ~= n then return cur end
if not cur then redis.call('HSET', KEYS[1], 'shards', n) end
for i = 2, #KEYS do
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[i])
  local names = {}
  local start = '0'
  if ok and #groups > 0 then
    start = '$'
    for _, g in ipairs(groups) do
      for j = 1, #g, 2 do
        if g[j] == 'name' then names[g[j + 1]] = true end
      end
    end
  end
  for _, grp in ipairs(ARGV) do
    if not names[grp] then
      redis.call('XGROUP', 'CREATE', KEYS[i], grp, start, 'MKSTREAM')
      names[grp] = true
    end
  end
end
return n
`)

// infoScript tells whether a topic has a group, and its shard count.
//
//	KEYS[1] meta, KEYS[2] stream (shard 0)
//
// It returns {shards (0 when not recorded), groups on shard 0}.
var infoScript = redis.NewScript(`
local shards = tonumber(redis.call('HGET', KEYS[1], 'shards')) or 0
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[2])
if not ok then return {shards, 0} end
return {shards, #groups}
`)

// claimScript hands a consumer pending entries of one shard, claimed with
// XCLAIM (which counts a delivery) and returned with their delivery counts.
// An entry already delivered max-attempts times is claimed without counting
// and returned as dead, for the caller to dead-letter. An entry gone from
// the stream (trimmed by MAXLEN, or XDEL) is dropped from the pending list
// and counted. Mode says which entries:
//
//   - claim: those nacked with a delay that has passed, then those idle
//     (unsettled) for at least min-idle ms, not waiting for a nack delay
//     and held by another consumer; the consumer's own idle ones are
//     returned apart (mine), not claimed, for the caller to claim those
//     it does not hold (a reply lost with a connection) in mode ids;
//
//   - takeover: every pending entry, whoever holds it, in stream order,
//     except those waiting for a nack delay that has not passed;
//
//   - ids: the entries listed after the cursor, when still held by the
//     consumer, idle for min-idle ms and not waiting for a nack delay.
//
//     KEYS[1] stream, KEYS[2] delay set
//     ARGV group, consumer, min-idle (ms), count, max-attempts (0: none),
//     cursor (where the pending scan resumes), mode, ids...
//
// It returns {next cursor ("-" at the end), {{id, count, fields, dead}...},
// gone, {mine...}}.
var claimScript = redis.NewScript(`
local g, me = ARGV[1], ARGV[2]
local minIdle, count, maxA = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local mode = ARGV[7]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out, mine, gone = {}, {}, 0
local function take(id, cnt)
  if maxA > 0 and cnt >= maxA then
    local c = redis.call('XCLAIM', KEYS[1], g, me, 0, id, 'JUSTID')
    if #c == 0 then gone = gone + 1 return end
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if #e == 0 then
      redis.call('XACK', KEYS[1], g, id)
      gone = gone + 1
      return
    end
    out[#out + 1] = {id, cnt, e[1][2], 1}
  else
    local c = redis.call('XCLAIM', KEYS[1], g, me, 0, id)
    if #c == 0 or not c[1] then gone = gone + 1 return end
    out[#out + 1] = {id, cnt + 1, c[1][2], 0}
  end
end
local next = '-'
if mode == 'ids' then
  for i = 8, #ARGV do
    local id = ARGV[i]
    local p = redis.call('XPENDING', KEYS[1], g, id, id, 1)
    if #p > 0 and p[1][2] == me and p[1][3] >= minIdle and not redis.call('ZSCORE', KEYS[2], id) then
      take(id, p[1][4])
    end
  end
elseif mode == 'takeover' then
  local p = redis.call('XPENDING', KEYS[1], g, ARGV[6], '+', count)
  for _, e in ipairs(p) do
    local due = redis.call('ZSCORE', KEYS[2], e[1])
    if not due or tonumber(due) <= now then
      if due then redis.call('ZREM', KEYS[2], e[1]) end
      take(e[1], e[4])
    end
  end
  if #p == count then next = '(' .. p[#p][1] end
else
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, count)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    local p = redis.call('XPENDING', KEYS[1], g, id, id, 1)
    if #p > 0 then take(id, p[1][4]) end
  end
  local want = count - #due
  if want > 0 then
    local p = redis.call('XPENDING', KEYS[1], g, 'IDLE', minIdle, ARGV[6], '+', want)
    for _, e in ipairs(p) do
      if not redis.call('ZSCORE', KEYS[2], e[1]) then
        if e[2] == me then mine[#mine + 1] = e[1] else take(e[1], e[4]) end
      end
    end
    if #p == want then next = '(' .. p[#p][1] end
  elseif #due == count then
    next = ARGV[6]
  end
end
return {next, out, gone, mine}
`)

// nackScript makes a pending entry due again after a delay.
//
//	KEYS[1] delay set; ARGV id, delay (ms)
var nackScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
`)

// parkScript gives back everything a consumer holds on one shard, when its
// subscriber closes: its pending entries move to the group's parking
// consumer (XCLAIM JUSTID, which does not count a delivery) and are due at
// once (unless a nack delay is running), then the consumer is deleted.
//
//	KEYS[1] stream, KEYS[2] delay set; ARGV group, consumer, parking consumer
var parkScript = redis.NewScript(`
local g, me, park = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
while true do
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], g, '-', '+', 1000, me)
  if not ok then return n end
  for _, e in ipairs(p) do
    redis.call('XCLAIM', KEYS[1], g, park, 0, e[1], 'JUSTID')
    redis.call('ZADD', KEYS[2], 'NX', now, e[1])
  end
  n = n + #p
  if #p < 1000 then break end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], g, me)
return n
`)

// leaseScript keeps a PerKey consumer's shard leases: it records the
// consumer as alive, renews the leases it holds, and takes free ones up to
// its fair share, ceil(shards / live consumers).
//
//	KEYS[1] members, KEYS[2..] the leases of shards 0..N-1
//	ARGV consumer, ttl (ms)
//
// It returns {share, {shards held}}.
var leaseScript = redis.NewScript(`
local me, ttl = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], 3 * ttl)
local members = redis.call('ZCARD', KEYS[1])
local n = #KEYS - 1
local share = math.ceil(n / members)
local owned, free = {}, {}
for i = 2, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v == me then
    redis.call('PEXPIRE', KEYS[i], ttl)
    owned[#owned + 1] = i - 2
  elseif not v then
    free[#free + 1] = i - 2
  end
end
for _, i in ipairs(free) do
  if #owned >= share then break end
  redis.call('SET', KEYS[i + 2], me, 'PX', ttl)
  owned[#owned + 1] = i
end
return {share, owned}
`)

// releaseScript gives up leases the consumer holds, and with ARGV[2] = 1
// leaves the group's members.
//
//	KEYS[1] members, KEYS[2..] leases; ARGV consumer, leave
var releaseScript = redis.NewScript(`
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
if ARGV[2] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) end
return 1
`)

// scheduleScript holds messages published for later: each is stored in the
// topic's schedule hash under a member of its own, due in the schedule
// set at the server's time plus its delay.
//
//	KEYS[1] schedule set, KEYS[2] schedule hash
//	ARGV member, delay (ms), entry, member, delay, entry, ...
var scheduleScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[i + 1]), ARGV[i])
end
return #ARGV / 3
`)

// dueScript adds the scheduled messages that are due to the topic's
// streams, each once, in due order: an entry is the shard number and the
// fields, each as <length>:<bytes>.
//
//	KEYS[1] schedule set, KEYS[2] schedule hash, KEYS[3..] the shard streams
//	ARGV count, maxlen (0: none)
//
// It returns {moved, ms until the next one is due (-1: none)}.
var dueScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maxlen = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local blob = redis.call('HGET', KEYS[2], member)
  if blob then
    local fields, pos, shard = {}, 1, nil
    while pos <= #blob do
      local colon = string.find(blob, ':', pos, true)
      local n = tonumber(string.sub(blob, pos, colon - 1))
      local v = string.sub(blob, colon + 1, colon + n)
      pos = colon + n + 1
      if shard == nil then shard = tonumber(v) else fields[#fields + 1] = v end
    end
    local key = KEYS[3 + shard] or KEYS[3]
    if maxlen > 0 then
      redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', unpack(fields))
    else
      redis.call('XADD', key, '*', unpack(fields))
    end
    redis.call('HDEL', KEYS[2], member)
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next == 0 then return {#due, -1} end
return {#due, math.max(tonumber(next[2]) - now, 0)}
`)
