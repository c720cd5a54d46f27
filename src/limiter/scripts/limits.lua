-- The limiter's one script: settles, then admissions, in one call (a batch of each). Times are
-- microseconds of Redis's clock (TIME); TATs are integers in strings.
--
-- Each scope of the call is described once: KEYS holds three per scope (requests TAT, tokens
-- TAT, open requests: a sorted set of request ids scored by expiry in ms), and ARGV five per
-- scope. A scope is "tracked" when it has a token or a parallel limit: its admitted requests
-- stay in the open set until they settle (or their lease expires), and with a parallel limit
-- the set's size is the number of requests in flight.
--
-- ARGV[1] scopes, ARGV[2] settles, ARGV[3] admissions, ARGV[4] lease ms; then per scope:
-- requests interval, requests tolerance, tokens interval, tokens tolerance (µs; interval 0 = no
-- such limit), max parallel (0 = none); then per settle: request id, 1 to undo the request
-- itself (else 0), its number of scopes, and per scope two: scope index (1-based), token delta
-- (tokens used minus tokens reserved; 0 keeps the reservation as charged); then per admission:
-- request id, its number of scopes, and per scope two: scope index, token cost.
--
-- A settle removes its request from the open set, and applies only if it was there: one that
-- is retried (its first answer lost) changes nothing the second time. An admission is all or
-- nothing over its scopes; admissions are decided in order, each seeing the ones before it.
-- Within one call each TAT is read and written at most once, each open set is pruned and
-- counted at most once, and one ZADD adds every admitted request of a scope.
--
-- Returns the number of scope settles applied, then five numbers per admission: {1, remaining
-- requests, µs until requests reset, remaining tokens, µs until tokens reset} (-1 where no
-- scope has that limit), or {0, scope index within the request (1-based), what (1 requests,
-- 2 tokens, 3 parallel), µs to wait (-1: never), 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local nscopes = tonumber(ARGV[1])
local settles = tonumber(ARGV[2])
local admits = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])

-- Per scope: {rpm key, tpm key, open key, rt, rtau, tt, ttau, maxp, tracked}.
local scopes = {}
for i = 1, nscopes do
  local a, k = 4 + (i - 1) * 5, (i - 1) * 3
  local tt, maxp = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 5])
  scopes[i] = {
    KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tt, tonumber(ARGV[a + 4]), maxp,
    tt > 0 or maxp > 0,
  }
end

-- TATs read in this call, and the ones changed (written back once, at the end).
local tats, dirty = {}, {}
local function get_tat(key)
  local v = tats[key]
  if v == nil then
    v = tonumber(redis.call('GET', key) or '0')
    tats[key] = v
  end
  return v
end
local function put_tat(key, tat)
  tats[key] = tat
  dirty[key] = true
end

-- Open requests per set (pruned of expired ones once per call), and the ids to add.
local open_count, pruned, adds = {}, {}, {}
local function prune(key)
  if not pruned[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    pruned[key] = true
  end
end
local function open_of(key)
  local c = open_count[key]
  if c == nil then
    prune(key)
    c = redis.call('ZCARD', key)
    open_count[key] = c
  end
  return c
end

local function gcra(key, interval, tolerance, cost)
  local tat = get_tat(key)
  if tat < now then tat = now end
  local new = tat + cost * interval
  -- 0.001 µs of slack: tolerance = burst * interval is rarely exact in floating point.
  if new - now > tolerance + 0.001 then
    return nil, new - tolerance - now
  end
  return new, math.floor((tolerance - (new - now) + 0.001) / interval)
end

local a = 4 + nscopes * 5
local settled = 0
for _ = 1, settles do
  local id, undo, n = ARGV[a + 1], ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  a = a + 3
  for _ = 1, n do
    local s = scopes[tonumber(ARGV[a + 1])]
    local delta = tonumber(ARGV[a + 2])
    a = a + 2
    local was_open = false
    if s[9] and redis.call('ZREM', s[3], id) == 1 then
      was_open = true
      settled = settled + 1
      if open_count[s[3]] then open_count[s[3]] = open_count[s[3]] - 1 end
      if s[6] > 0 and delta ~= 0 then
        local tat = get_tat(s[2])
        if delta < 0 then
          tat = math.max(tat + delta * s[6], now)
        else
          tat = math.max(tat, now) + delta * s[6]
        end
        put_tat(s[2], tat)
      end
    end
    if undo and s[4] > 0 and (was_open or not s[9]) then
      put_tat(s[1], math.max(get_tat(s[1]) - s[4], now))
    end
  end
end

local out = {settled}
-- The lease expiry of the requests admitted now, formatted once for every ZADD member.
local expiry = string.format('%d', now_ms + lease)
-- Scratch space of one admission (reused: no table is made per request): the TATs it would
-- write, the open sets it would join.
local wkey, wval, okey = {}, {}, {}
local function admit(id, n)
  local nw, no = 0, 0
  local rem_req, reset_req, rem_tok, reset_tok = -1, -1, -1, -1
  for i = 1, n do
    local s = scopes[tonumber(ARGV[a + i * 2 - 1])]
    local cost = tonumber(ARGV[a + i * 2])
    if s[4] > 0 then
      local new, rem = gcra(s[1], s[4], s[5], 1)
      if not new then return 0, i, 1, math.ceil(rem) end
      nw = nw + 1; wkey[nw] = s[1]; wval[nw] = new
      if rem_req < 0 or rem < rem_req then rem_req = rem; reset_req = new - now end
    end
    if s[6] > 0 then
      if cost * s[6] > s[7] + 0.001 then return 0, i, 2, -1 end
      local new, rem = gcra(s[2], s[6], s[7], cost)
      if not new then return 0, i, 2, math.ceil(rem) end
      nw = nw + 1; wkey[nw] = s[2]; wval[nw] = new
      if rem_tok < 0 or rem < rem_tok then rem_tok = rem; reset_tok = new - now end
    end
    if s[8] > 0 and open_of(s[3]) >= s[8] then return 0, i, 3, 1000000 end
    if s[9] then no = no + 1; okey[no] = s[3] end
  end
  for j = 1, nw do
    tats[wkey[j]] = wval[j]
    dirty[wkey[j]] = true
  end
  for j = 1, no do
    local key = okey[j]
    if open_count[key] then open_count[key] = open_count[key] + 1 end
    local list = adds[key]
    if not list then
      list = {}
      adds[key] = list
    end
    list[#list + 1] = expiry
    list[#list + 1] = id
  end
  return 1, rem_req, math.ceil(reset_req), rem_tok, math.ceil(reset_tok)
end
local o = 1
for _ = 1, admits do
  local id, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 2
  local ok, b1, b2, b3, b4 = admit(id, n)
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = ok, b1, b2, b3, b4 or 0
  o = o + 5
  a = a + n * 2
end

for key in pairs(dirty) do
  local tat = tats[key]
  if tat > now then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
for key, list in pairs(adds) do
  -- Requests of crashed processes leave by their expiry, pruned here as well.
  prune(key)
  redis.call('ZADD', key, unpack(list))
  redis.call('PEXPIRE', key, lease + 1000)
end
return out
