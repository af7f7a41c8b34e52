"""The Lua scripts of the Redis broker: every step that must be atomic is one script.

Key layout (``P`` is the configured prefix, ``kichat:`` by default; ``T`` a topic; ``N`` a
member: one process of a node, "<node id>/<random nonce>", so that a node restarted under the
same id is not mistaken for the process that died)::

    P meta          HASH   epoch, fingerprint (settings every node must share)
    P g             STRING the position counter: INCR per publication, for all topics
    P log:T         STREAM entry id "<position>-0"; fields p (payload), v (previous position
                           of T, to detect trimmed history), k (dedupe key, optional)
    P clock         LIST   "<unix second>:<position>", one per second: trims logs by age
    P gmin          STRING the position below which logs may be trimmed (older than the window)
    P own:T         STRING "N:<token>" with a TTL: the lease
    P live:T        STRING the owner's announced state of T ("1" or "0|code|message")
    P fence         STRING token counter
    P s:<pid>       STRING "N|<record>" with a TTL: a saved session
    P batch:<id>    STRING marks a publish batch applied (retries after a lost reply are no-ops)
    P handoff:T     STRING "N:<token>": the owner is leaving and offers T to a successor
    P alive:N       STRING with a short TTL, refreshed by N's heartbeat: N is alive
    P ev:T          channel: publications, "<position>|<payload>"
    P node:N        channel: node N's inbox: "taken|<pid>", probes, and a handover's
                           "ready|T|<successor>" (to the owner) and "lease|T|<token>" (back)
    P ctl           channel: "free|T" (lease released), "state|T" (state announced),
                           "handoff|T" (the owner is leaving: a reader may take T over)

Key names are built inside the scripts, so this layout needs one Redis primary (not Redis
Cluster, where keys of one script must share a hash slot).
"""

from __future__ import annotations

from typing import Final

# ARGV: prefix, epoch, fingerprint.  Returns {epoch, stored fingerprint, created (0/1),
# other prefixes...}. A missing meta hash means the shared state is new or was lost: start a
# new epoch (the caller's proposal) with a fresh position counter. Every cluster also notes its
# prefix in one hash outside any prefix, so that two clusters with the same settings on one
# Redis (most likely one cluster split by a mistyped prefix, each subscribing Kick) are seen.
HELLO: Final = """
local meta = ARGV[1] .. 'meta'
local now = tonumber(redis.call('TIME')[1])
local registry = 'kichat-cluster:prefixes'
redis.call('HSET', registry, ARGV[1], ARGV[3] .. '|' .. now)
local others = {}
local all = redis.call('HGETALL', registry)
for i = 1, #all, 2 do
  local fp, seen = string.match(all[i + 1], '^(.*)|(%d+)$')
  if all[i] ~= ARGV[1] and fp == ARGV[3] and tonumber(seen) > now - 120 then
    others[#others + 1] = all[i]
  elseif tonumber(seen or 0) < now - 86400 then
    redis.call('HDEL', registry, all[i])
  end
end
local epoch = redis.call('HGET', meta, 'epoch')
local out
if not epoch then
  redis.call('HSET', meta, 'epoch', ARGV[2], 'fingerprint', ARGV[3])
  redis.call('DEL', ARGV[1] .. 'g', ARGV[1] .. 'clock', ARGV[1] .. 'gmin')
  out = {ARGV[2], ARGV[3], 1}
else
  out = {epoch, redis.call('HGET', meta, 'fingerprint') or '', 0}
end
for _, other in ipairs(others) do out[#out + 1] = other end
return out
"""

# ARGV: prefix, epoch, batch id, node, window (s), max entries per log,
#       then per publication: topic, token, payload, key ('' for none), dedupe ('1' or '').
# Returns {status, accepted, duplicates, rejected topics...}; status 'ok', 'again' (this batch
# was already applied) or 'epoch' (the shared state was reset: nothing applied).
PUBLISH: Final = """
local P = ARGV[1]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return {'epoch', 0, 0} end
if not redis.call('SET', P .. 'batch:' .. ARGV[3], '1', 'NX', 'PX', 120000) then
  return {'again', 0, 0}
end
local node, window, maxlen = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local owners, last, recent, rejected = {}, {}, {}, {}
local accepted, dups = 0, 0
for i = 7, #ARGV, 5 do
  local topic, token, payload, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local check = ARGV[i + 4] == '1' and key ~= ''
  local owner = owners[topic]
  if owner == nil then
    owner = redis.call('GET', P .. 'own:' .. topic) or ''
    owners[topic] = owner
  end
  local log = P .. 'log:' .. topic
  if owner ~= node .. ':' .. token then
    if not rejected[topic] then rejected[topic] = true; rejected[#rejected + 1] = topic end
  else
    local dup = false
    if check then
      local seen = recent[topic]
      if seen == nil then
        seen = {}
        for _, e in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', 500)) do
          local f = e[2]
          for j = 1, #f, 2 do if f[j] == 'k' then seen[f[j + 1]] = true end end
        end
        recent[topic] = seen
      end
      dup = seen[key] == true
    end
    if key ~= '' and recent[topic] then recent[topic][key] = true end
    if dup then
      dups = dups + 1
    else
      local prev = last[topic]
      if prev == nil then
        local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)[1]
        prev = top and string.match(top[1], '^(%d+)') or '0'
      end
      local g = redis.call('INCR', P .. 'g')
      if key ~= '' then
        redis.call('XADD', log, 'MAXLEN', '~', maxlen, g .. '-0', 'p', payload, 'v', prev, 'k', key)
      else
        redis.call('XADD', log, 'MAXLEN', '~', maxlen, g .. '-0', 'p', payload, 'v', prev)
      end
      redis.call('PUBLISH', P .. 'ev:' .. topic, g .. '|' .. payload)
      last[topic] = tostring(g)
      accepted = accepted + 1
    end
  end
end
-- Age-based trimming: one clock mark per second; positions older than the window may go.
local now = tonumber(redis.call('TIME')[1])
local clock = P .. 'clock'
local tail = redis.call('LINDEX', clock, -1)
local g = redis.call('GET', P .. 'g') or '0'
if not tail or tonumber(string.match(tail, '^(%d+)')) < now then
  redis.call('RPUSH', clock, now .. ':' .. g)
end
local gmin = redis.call('GET', P .. 'gmin')
while true do
  local head = redis.call('LINDEX', clock, 0)
  if not head then break end
  local sec, pos = string.match(head, '^(%d+):(%d+)')
  if tonumber(sec) >= now - window then break end
  gmin = pos
  redis.call('LPOP', clock)
end
if gmin then redis.call('SET', P .. 'gmin', gmin) end
for topic, _ in pairs(last) do
  local log = P .. 'log:' .. topic
  if gmin then redis.call('XTRIM', log, 'MINID', '~', gmin .. '-0') end
  redis.call('PEXPIRE', log, window * 2000)
end
local out = {'ok', accepted, dups}
for _, topic in ipairs(rejected) do out[#out + 1] = topic end
return out
"""

# ARGV: prefix, epoch, then per topic: topic, position after which to read.
# Returns {status, position now, then per topic: topic, complete (0/1), entries}; entries are
# flat {position, payload, ...}. A topic is complete if its first entry after the position
# follows it directly (its ``v`` is at most the position), or if nothing came after it.
READ: Final = """
local P = ARGV[1]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return {'epoch', 0} end
local out = {'ok', redis.call('GET', P .. 'g') or '0'}
for i = 3, #ARGV, 2 do
  local topic, after = ARGV[i], ARGV[i + 1]
  local entries = redis.call('XRANGE', P .. 'log:' .. topic, '(' .. after .. '-0', '+')
  local complete = 1
  local flat = {}
  for n, e in ipairs(entries) do
    local f = e[2]
    local payload, prev = '', '0'
    for j = 1, #f, 2 do
      if f[j] == 'p' then payload = f[j + 1] elseif f[j] == 'v' then prev = f[j + 1] end
    end
    if n == 1 and tonumber(prev) > tonumber(after) then complete = 0 end
    flat[#flat + 1] = string.match(e[1], '^(%d+)')
    flat[#flat + 1] = payload
  end
  out[#out + 1] = topic
  out[#out + 1] = complete
  out[#out + 1] = flat
end
return out
"""

# ARGV: prefix, epoch, node, lease ms, then topics.  Returns flat {topic, token, takeover}.
# A topic is taken if nobody holds it, or if its holder is dead: its heartbeat key expired (a
# killed or partitioned node stops beating; a subscriber reconnecting does not, which is why
# liveness is not read from the holder's pub/sub subscriptions). A lease held under the caller's
# own identity but unknown to it (it gave the lease up locally, fenced, while Redis kept it) is
# taken over too.
ACQUIRE: Final = """
local P, node, ttl = ARGV[1], ARGV[3], ARGV[4]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return {'epoch'} end
local out = {}
for i = 5, #ARGV do
  local topic = ARGV[i]
  local key = P .. 'own:' .. topic
  local owner = redis.call('GET', key)
  local take, takeover = false, 0
  if not owner then
    take = true
  else
    local holder = string.match(owner, '^(.*):%d+$')
    if holder == node then
      take, takeover = true, 1
    else
      if redis.call('EXISTS', P .. 'alive:' .. holder) == 0 then take, takeover = true, 1 end
    end
  end
  if take then
    local token = redis.call('INCR', P .. 'fence')
    redis.call('SET', key, node .. ':' .. token, 'PX', ttl)
    redis.call('DEL', P .. 'live:' .. topic)
    out[#out + 1] = topic
    out[#out + 1] = token
    out[#out + 1] = takeover
  end
end
return out
"""

# ARGV: prefix, epoch, node, lease ms, then per lease: topic, token.
# Returns {status, then per lease: kept (0/1), subscribers of the topic's channel}.
RENEW: Final = """
local P, node, ttl = ARGV[1], ARGV[3], ARGV[4]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return {'epoch'} end
local out = {'ok'}
for i = 5, #ARGV, 2 do
  local topic, token = ARGV[i], ARGV[i + 1]
  local key = P .. 'own:' .. topic
  if redis.call('GET', key) == node .. ':' .. token then
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', P .. 'live:' .. topic, ttl)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  out[#out + 1] = redis.call('PUBSUB', 'NUMSUB', P .. 'ev:' .. topic)[2]
end
return out
"""

# ARGV: prefix, node, topic, token.  Returns 1 if released. A failure the owner announced stays
# readable until its TTL (nodes still waiting for the outcome must see it); "live" goes at once.
RELEASE: Final = """
local P = ARGV[1]
local key = P .. 'own:' .. ARGV[3]
if redis.call('GET', key) ~= ARGV[2] .. ':' .. ARGV[4] then return 0 end
redis.call('DEL', key)
local live = P .. 'live:' .. ARGV[3]
if redis.call('GET', live) == '1' then redis.call('DEL', live) end
redis.call('PUBLISH', P .. 'ctl', 'free|' .. ARGV[3])
return 1
"""

# ARGV: prefix, node, topic, token, state, lease ms.  Returns 1 if announced.
ANNOUNCE: Final = """
local P = ARGV[1]
if redis.call('GET', P .. 'own:' .. ARGV[3]) ~= ARGV[2] .. ':' .. ARGV[4] then return 0 end
redis.call('SET', P .. 'live:' .. ARGV[3], ARGV[5], 'PX', ARGV[6])
redis.call('PUBLISH', P .. 'ctl', 'state|' .. ARGV[3])
return 1
"""

# ARGV: prefix, node, pid.  Returns the record, or false.  Exactly one caller gets a session;
# the node that held it (if another) hears so in its inbox.
TAKE_SESSION: Final = """
local P = ARGV[1]
local saved = redis.call('GETDEL', P .. 's:' .. ARGV[3])
if not saved then return false end
local sep = string.find(saved, '|', 1, true)
local holder = string.sub(saved, 1, sep - 1)
if holder ~= ARGV[2] then redis.call('PUBLISH', P .. 'node:' .. holder, 'taken|' .. ARGV[3]) end
return string.sub(saved, sep + 1)
"""

# ARGV: prefix, node, topic, token, ms.  Returns 1 if offered. The owner keeps publishing until a
# successor takes the lease (make-before-break: the successor subscribes upstream first).
HAND_OVER: Final = """
local P = ARGV[1]
local owner = ARGV[2] .. ':' .. ARGV[4]
if redis.call('GET', P .. 'own:' .. ARGV[3]) ~= owner then return 0 end
redis.call('SET', P .. 'handoff:' .. ARGV[3], owner, 'PX', ARGV[5])
redis.call('PUBLISH', P .. 'ctl', 'handoff|' .. ARGV[3])
return 1
"""

# ARGV: prefix, epoch, node, topic, token, successor, lease ms.  Run by the leaving owner once
# everything it received before the successor was ready is published: the lease moves to the
# successor. Returns the successor's token, or false (no longer ours, or no longer offered).
TRANSFER: Final = """
local P = ARGV[1]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return false end
local key = P .. 'own:' .. ARGV[4]
local owner = ARGV[3] .. ':' .. ARGV[5]
if redis.call('GET', key) ~= owner or redis.call('GET', P .. 'handoff:' .. ARGV[4]) ~= owner then
  return false
end
local token = redis.call('INCR', P .. 'fence')
redis.call('SET', key, ARGV[6] .. ':' .. token, 'PX', ARGV[7])
redis.call('DEL', P .. 'handoff:' .. ARGV[4])
return token
"""

# ARGV: prefix, epoch, topic, then keys.  Returns the keys found among the topic's recent
# publications (the last 500).
KNOWN: Final = """
local P = ARGV[1]
if redis.call('HGET', P .. 'meta', 'epoch') ~= ARGV[2] then return {} end
local seen = {}
for _, e in ipairs(redis.call('XREVRANGE', P .. 'log:' .. ARGV[3], '+', '-', 'COUNT', 500)) do
  local f = e[2]
  for j = 1, #f, 2 do if f[j] == 'k' then seen[f[j + 1]] = true end end
end
local out = {}
for i = 4, #ARGV do if seen[ARGV[i]] then out[#out + 1] = ARGV[i] end end
return out
"""
