-- One process says it is alive and learns how many are.
-- KEYS[1] the sorted set of processes (score = last beat, ms of Redis's clock).
-- ARGV[1] this process, ARGV[2] how long a beat counts (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window * 2)
return redis.call('ZCARD', KEYS[1])
