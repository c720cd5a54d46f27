-- GCRA admission of one request against every limit of its scopes, all or nothing.
-- Times are microseconds of Redis's clock (TIME); TATs are stored as integers in strings.
--
-- KEYS, four per scope: requests TAT, tokens TAT, parallel leases (sorted set, score = expiry
-- in ms), the request's reservation marker (holds the tokens it reserved).
-- ARGV[1] number of scopes, ARGV[2] request id, ARGV[3] lease ms, ARGV[4] marker TTL ms, then
-- six per scope: requests interval, requests tolerance, tokens interval, tokens tolerance
-- (µs; interval 0 = no such limit), token cost, max parallel (0 = none).
--
-- Returns {1, remaining requests, µs until requests reset, remaining tokens, µs until tokens
-- reset} (-1 where no scope has that limit), or {0, scope index (1-based), what (1 requests,
-- 2 tokens, 3 parallel), µs to wait (-1: never)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local n = tonumber(ARGV[1])
local id = ARGV[2]
local lease = tonumber(ARGV[3])
local marker_ttl = tonumber(ARGV[4])
local writes = {}
local leases = {}
local rem_req, reset_req, rem_tok, reset_tok = -1, -1, -1, -1

local function gcra(key, interval, tolerance, cost)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + cost * interval
  if new - now > tolerance then
    return nil, new - tolerance - now
  end
  return new, math.floor((tolerance - (new - now)) / interval)
end

for i = 1, n do
  local k = (i - 1) * 4
  local a = 4 + (i - 1) * 6
  local rt, rtau = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local tt, ttau = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local cost, maxp = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  if rt > 0 then
    local new, rem = gcra(KEYS[k + 1], rt, rtau, 1)
    if not new then return {0, i, 1, math.ceil(rem)} end
    writes[#writes + 1] = {KEYS[k + 1], new}
    if rem_req < 0 or rem < rem_req then rem_req = rem; reset_req = new - now end
  end
  if tt > 0 then
    if cost * tt > ttau then return {0, i, 2, -1} end
    local new, rem = gcra(KEYS[k + 2], tt, ttau, cost)
    if not new then return {0, i, 2, math.ceil(rem)} end
    writes[#writes + 1] = {KEYS[k + 2], new}
    if rem_tok < 0 or rem < rem_tok then rem_tok = rem; reset_tok = new - now end
  end
  if maxp > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now_ms)
    if redis.call('ZCARD', KEYS[k + 3]) >= maxp then return {0, i, 3, 1000000} end
    leases[#leases + 1] = KEYS[k + 3]
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
  local a = 4 + (i - 1) * 6
  redis.call('SET', KEYS[(i - 1) * 4 + 4], ARGV[a + 5], 'PX', marker_ttl)
end
return {1, rem_req, math.ceil(reset_req), rem_tok, math.ceil(reset_tok)}
