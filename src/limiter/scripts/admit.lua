-- GCRA admission of a batch of requests, each against every limit of its scopes, all or
-- nothing per request; requests are decided in order, each seeing the charges of the ones
-- before it. Times are microseconds of Redis's clock (TIME); TATs are integers in strings.
--
-- KEYS, four per scope of every request, in order: requests TAT, tokens TAT, parallel leases
-- (sorted set, score = expiry in ms), the request's reservation marker (holds the tokens it
-- reserved; written only for scopes with a token or parallel limit, which need a settle).
-- ARGV[1] number of requests, ARGV[2] lease ms, ARGV[3] marker TTL ms, then per request: its
-- id, its number of scopes, and six per scope: requests interval, requests tolerance, tokens
-- interval, tokens tolerance (µs; interval 0 = no such limit), token cost, max parallel (0 =
-- none).
--
-- Returns five numbers per request: {1, remaining requests, µs until requests reset, remaining
-- tokens, µs until tokens reset} (-1 where no scope has that limit), or {0, scope index
-- (1-based), what (1 requests, 2 tokens, 3 parallel), µs to wait (-1: never), 0}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local m = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local marker_ttl = tonumber(ARGV[3])

local function gcra(key, interval, tolerance, cost)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + cost * interval
  if new - now > tolerance then
    return nil, new - tolerance - now
  end
  return new, math.floor((tolerance - (new - now)) / interval)
end

-- One request: its scopes' arguments start after ARGV[a], its keys after KEYS[k].
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
      if cost * tt > ttau then return {0, i, 2, -1, 0} end
      local new, rem = gcra(KEYS[ki + 2], tt, ttau, cost)
      if not new then return {0, i, 2, math.ceil(rem), 0} end
      writes[#writes + 1] = {KEYS[ki + 2], new}
      if rem_tok < 0 or rem < rem_tok then rem_tok = rem; reset_tok = new - now end
    end
    if maxp > 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[ki + 3], '-inf', now_ms)
      if redis.call('ZCARD', KEYS[ki + 3]) >= maxp then return {0, i, 3, 1000000, 0} end
      leases[#leases + 1] = KEYS[ki + 3]
    end
  end
  for _, w in ipairs(writes) do
    redis.call('SET', w[1], string.format('%.0f', w[2]), 'PX', math.ceil((w[2] - now) / 1000) + 1000)
  end
  for _, key in ipairs(leases) do
    redis.call('ZADD', key, now_ms + lease, id)
    redis.call('PEXPIRE', key, lease + 1000)
  end
  for i = 1, n do
    local ai = a + (i - 1) * 6
    if tonumber(ARGV[ai + 3]) > 0 or tonumber(ARGV[ai + 6]) > 0 then
      redis.call('SET', KEYS[k + (i - 1) * 4 + 4], ARGV[ai + 5], 'PX', marker_ttl)
    end
  end
  return {1, rem_req, math.ceil(reset_req), rem_tok, math.ceil(reset_tok)}
end

local out = {}
local a, k = 3, 0
for _ = 1, m do
  local id, n = ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 2
  for _, v in ipairs(admit(id, n, a, k)) do out[#out + 1] = v end
  a = a + n * 6
  k = k + n * 4
end
return out
