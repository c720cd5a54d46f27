-- Tokens settled after a call ended. KEYS: 1 = minute window. ARGV: 1 = tokens,
-- 2 = window key TTL (ms).
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
if redis.call('HGET', KEYS[1], 'minute') ~= tostring(minute) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'minute', minute)
end
redis.call('HINCRBY', KEYS[1], 'tok', tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
