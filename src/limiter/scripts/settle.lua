-- Settles an admission made by admit.lua, at most once per scope: the reservation marker is
-- consumed, so a settle that is retried (its first answer lost) changes nothing the second time.
--
-- KEYS: the same four per scope as admit.lua.
-- ARGV[1] number of scopes, ARGV[2] request id, ARGV[3] 1 to undo the request itself, then
-- three per scope: requests interval, tokens interval (µs, 0 = none), tokens used.
-- Returns how many scopes were settled now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
local id = ARGV[2]
local undo = ARGV[3] == '1'
local settled = 0

local function store(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end

for i = 1, n do
  local k = (i - 1) * 4
  local a = 3 + (i - 1) * 3
  local rt, tt, used = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  redis.call('ZREM', KEYS[k + 3], id)
  local reserved = redis.call('GET', KEYS[k + 4])
  if reserved then
    redis.call('DEL', KEYS[k + 4])
    settled = settled + 1
    local delta = used - tonumber(reserved)
    if tt > 0 and delta ~= 0 then
      local tat = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
      if delta < 0 then
        tat = math.max(tat + delta * tt, now)
      else
        tat = math.max(tat, now) + delta * tt
      end
      store(KEYS[k + 2], tat)
    end
    if undo and rt > 0 then
      local tat = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
      store(KEYS[k + 1], math.max(tat - rt, now))
    end
  end
end
return settled
