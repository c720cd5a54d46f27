-- A request ended. KEYS: 1 = stats hash, 2 = minute window, 3 = leases.
-- ARGV: 1 = lease member ('' when this process holds none), 2 = latency (ms),
-- 3 = learn latency (1/0), 4 = TTFT (ms, '' when none), 5 = tokens, 6 = failed (1/0),
-- 7 = EWMA alpha, 8 = window key TTL (ms).
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local alpha = tonumber(ARGV[7])

if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end

if redis.call('HGET', KEYS[2], 'minute') ~= tostring(minute) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'minute', minute)
end
local tokens = tonumber(ARGV[5])
if tokens > 0 then
  redis.call('HINCRBY', KEYS[2], 'tok', tokens)
end
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[2], 'fail', 1)
  redis.call('HINCRBY', KEYS[1], 'fail', 1)
else
  redis.call('HINCRBY', KEYS[1], 'succ', 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[8])

-- new = alpha * sample + (1 - alpha) * old; the first sample initialises the average.
-- Stored with 17 significant digits so that the value read back is the double computed here.
local function ewma(field, sample)
  local old = redis.call('HGET', KEYS[1], field)
  local new = sample
  if old then
    new = alpha * sample + (1 - alpha) * tonumber(old)
  end
  redis.call('HSET', KEYS[1], field, string.format('%.17g', new))
end
if ARGV[3] == '1' then
  ewma('lat', tonumber(ARGV[2]))
end
if ARGV[4] ~= '' then
  ewma('ttft', tonumber(ARGV[4]))
end
return 1
