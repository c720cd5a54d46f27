-- The limiter's one script: settles, then admissions, in one call (a batch of each). Times are
-- microseconds of Redis's clock (TIME); TATs are integers in strings.
--
-- KEYS, four per scope, settles' scopes first, then admissions' scopes, in order: requests TAT,
-- tokens TAT, parallel leases (sorted set, score = expiry in ms), the request's reservation
-- marker (the tokens it reserved; written only for scopes with a token or parallel limit, the
-- ones a settle changes).
-- ARGV[1] number of settles, ARGV[2] number of admissions, ARGV[3] lease ms, ARGV[4] marker
-- TTL ms; then per settle: request id, 1 to undo the request itself (else 0), its number of
-- scopes, and four per scope: requests interval, tokens interval (µs, 0 = none), tokens used
-- (-1: keep the reservation as charged), 1 when the scope holds a marker; then per admission: request id, its number of scopes, and
-- six per scope: requests interval, requests tolerance, tokens interval, tokens tolerance (µs;
-- interval 0 = no such limit), token cost, max parallel (0 = none).
--
-- A settle consumes the marker, so one that is retried (its first answer lost) changes nothing
-- the second time. An admission is all or nothing over its scopes; admissions are decided in
-- order, each seeing the charges of the ones before it.
--
-- Within one call, each TAT key is read at most once and written at most once (at the end), and
-- each lease set is pruned and counted once: a batch of many requests on one scope costs about
-- what one request does, plus a marker and a lease member per request.
--
-- Returns the number of scopes settled, then five numbers per admission: {1, remaining
-- requests, µs until requests reset, remaining tokens, µs until tokens reset} (-1 where no
-- scope has that limit), or {0, scope index (1-based), what (1 requests, 2 tokens, 3 parallel),
-- µs to wait (-1: never), 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local settles = tonumber(ARGV[1])
local admits = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local marker_ttl = tonumber(ARGV[4])

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
local function flush()
  for key in pairs(dirty) do
    local tat = tats[key]
    if tat > now then
      redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      redis.call('DEL', key)
    end
  end
end

-- Live leases per lease set (pruned of expired ones once per call), and the sets added to.
local lease_count, leased = {}, {}
local function leases_of(key)
  local c = lease_count[key]
  if c == nil then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    c = redis.call('ZCARD', key)
    lease_count[key] = c
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

-- One settle: its scopes' arguments start after ARGV[a], its keys after KEYS[k].
local function settle(id, undo, n, a, k)
  local settled = 0
  for i = 1, n do
    local ki = k + (i - 1) * 4
    local ai = a + (i - 1) * 4
    local rt, tt, used = tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3])
    local marked = ARGV[ai + 4] == '1'
    if redis.call('ZREM', KEYS[ki + 3], id) == 1 and lease_count[KEYS[ki + 3]] then
      lease_count[KEYS[ki + 3]] = lease_count[KEYS[ki + 3]] - 1
    end
    local reserved = redis.call('GET', KEYS[ki + 4])
    if reserved then
      redis.call('DEL', KEYS[ki + 4])
      settled = settled + 1
      local delta = used - tonumber(reserved)
      if tt > 0 and used >= 0 and delta ~= 0 then
        local tat = get_tat(KEYS[ki + 2])
        if delta < 0 then
          tat = math.max(tat + delta * tt, now)
        else
          tat = math.max(tat, now) + delta * tt
        end
        put_tat(KEYS[ki + 2], tat)
      end
    end
    if undo and rt > 0 and (reserved or not marked) then
      local tat = get_tat(KEYS[ki + 1])
      put_tat(KEYS[ki + 1], math.max(tat - rt, now))
    end
  end
  return settled
end

-- One admission: its scopes' arguments start after ARGV[a], its keys after KEYS[k].
local function admit(id, n, a, k)
  local writes = {}
  local leases = {}
  local rem_req, reset_req, rem_tok, reset_tok = -1, -1, -1, -1
  for i = 1, n do
    local ki = k + (i - 1) * 4
    local ai = a + (i - 1) * 6
    local rt, rtau = tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2])
    local tt, ttau = tonumber(ARGV[ai + 3]), tonumber(ARGV[ai + 4])
    local cost, maxp = tonumber(ARGV[ai + 5]), tonumber(ARGV[ai + 6])
    if rt > 0 then
      local new, rem = gcra(KEYS[ki + 1], rt, rtau, 1)
      if not new then return {0, i, 1, math.ceil(rem), 0} end
      writes[#writes + 1] = {KEYS[ki + 1], new}
      if rem_req < 0 or rem < rem_req then rem_req = rem; reset_req = new - now end
    end
    if tt > 0 then
      if cost * tt > ttau + 0.001 then return {0, i, 2, -1, 0} end
      local new, rem = gcra(KEYS[ki + 2], tt, ttau, cost)
      if not new then return {0, i, 2, math.ceil(rem), 0} end
      writes[#writes + 1] = {KEYS[ki + 2], new}
      if rem_tok < 0 or rem < rem_tok then rem_tok = rem; reset_tok = new - now end
    end
    if maxp > 0 then
      if leases_of(KEYS[ki + 3]) >= maxp then return {0, i, 3, 1000000, 0} end
      leases[#leases + 1] = KEYS[ki + 3]
    end
  end
  for _, w in ipairs(writes) do
    put_tat(w[1], w[2])
  end
  for _, key in ipairs(leases) do
    lease_count[key] = lease_count[key] + redis.call('ZADD', key, now_ms + lease, id)
    leased[key] = true
  end
  for i = 1, n do
    local ai = a + (i - 1) * 6
    if tonumber(ARGV[ai + 3]) > 0 or tonumber(ARGV[ai + 6]) > 0 then
      redis.call('SET', KEYS[k + (i - 1) * 4 + 4], ARGV[ai + 5], 'PX', marker_ttl)
    end
  end
  return {1, rem_req, math.ceil(reset_req), rem_tok, math.ceil(reset_tok)}
end

local out = {0}
local a, k = 4, 0
for _ = 1, settles do
  local id, undo, n = ARGV[a + 1], ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  a = a + 3
  out[1] = out[1] + settle(id, undo, n, a, k)
  a = a + n * 4
  k = k + n * 4
end
for _ = 1, admits do
  local id, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 2
  for _, v in ipairs(admit(id, n, a, k)) do out[#out + 1] = v end
  a = a + n * 6
  k = k + n * 4
end
flush()
for key in pairs(leased) do
  redis.call('PEXPIRE', key, lease + 1000)
end
return out
