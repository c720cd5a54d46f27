-- Cools a deployment down. KEYS: 1 = cooldown key. ARGV: 1 = duration (ms, > 0).
-- Extends, never shortens: an existing cooldown with more time left is kept.
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 1
