-- A request starts. KEYS: 1 = minute window, 2 = leases.
-- ARGV: 1 = lease member, 2 = lease TTL (ms), 3 = window key TTL (ms).
-- The clock is Redis's own (TIME), never the caller's.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(tonumber(t[1]) / 60)
local lease_ttl = tonumber(ARGV[2])

-- The fixed window of the current wall-clock minute: reset when the minute changes.
if redis.call('HGET', KEYS[1], 'minute') ~= tostring(minute) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'minute', minute)
end
redis.call('HINCRBY', KEYS[1], 'req', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])

-- In flight = unexpired leases.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + lease_ttl, ARGV[1])
-- The set lives as long as its longest lease (instances may use different lease TTLs).
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[2], math.max(1, tonumber(last[2]) - now_ms))
return 1
