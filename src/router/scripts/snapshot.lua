-- One deployment's stats. KEYS: 1 = stats hash, 2 = minute window, 3 = leases, 4 = cooldown.
-- Returns strings: in_flight, latency EWMA ('' = none), TTFT EWMA ('' = none),
-- requests, tokens and fails this minute, successes, failures, cooldown left in ms (<= 0 = none).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(tonumber(t[1]) / 60)

redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
local in_flight = redis.call('ZCOUNT', KEYS[3], '(' .. now_ms, '+inf')

local h = redis.call('HMGET', KEYS[1], 'lat', 'ttft', 'succ', 'fail')
local m = redis.call('HMGET', KEYS[2], 'minute', 'req', 'tok', 'fail')
local req, tok, fails = '0', '0', '0'
if m[1] == tostring(minute) then
  req, tok, fails = m[2] or '0', m[3] or '0', m[4] or '0'
end
return {
  tostring(in_flight),
  h[1] or '', h[2] or '',
  req, tok, fails,
  h[3] or '0', h[4] or '0',
  tostring(redis.call('PTTL', KEYS[4])),
}
