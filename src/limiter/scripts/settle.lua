-- Settles a batch of admissions made by admit.lua, each at most once per scope: the reservation
-- marker is consumed, so a settle that is retried (its first answer lost) changes nothing the
-- second time. A scope with only a requests limit has no marker: only an undo touches it.
--
-- KEYS: the same four per scope as admit.lua, for every request in order.
-- ARGV[1] number of requests, then per request: its id, 1 to undo the request itself (else 0),
-- its number of scopes, and four per scope: requests interval, tokens interval (µs, 0 =
-- none), tokens used, 1 when admit.lua wrote the scope a marker (else 0).
-- Returns how many scopes were settled now, in all.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local m = tonumber(ARGV[1])
local settled = 0

local function store(key, tat)
  if tat > now then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end

local a, k = 1, 0
for _ = 1, m do
  local id, undo, n = ARGV[a + 1], ARGV[a + 2] == '1', tonumber(ARGV[a + 3])
  a = a + 3
  for i = 1, n do
    local ki = k + (i - 1) * 4
    local ai = a + (i - 1) * 4
    local rt, tt, used = tonumber(ARGV[ai + 1]), tonumber(ARGV[ai + 2]), tonumber(ARGV[ai + 3])
    local marked = ARGV[ai + 4] == '1'
    redis.call('ZREM', KEYS[ki + 3], id)
    local reserved = redis.call('GET', KEYS[ki + 4])
    if reserved then
      redis.call('DEL', KEYS[ki + 4])
      settled = settled + 1
      local delta = used - tonumber(reserved)
      if tt > 0 and delta ~= 0 then
        local tat = tonumber(redis.call('GET', KEYS[ki + 2]) or '0')
        if delta < 0 then
          tat = math.max(tat + delta * tt, now)
        else
          tat = math.max(tat, now) + delta * tt
        end
        store(KEYS[ki + 2], tat)
      end
    end
    if undo and rt > 0 and (reserved or not marked) then
      local tat = tonumber(redis.call('GET', KEYS[ki + 1]) or '0')
      store(KEYS[ki + 1], math.max(tat - rt, now))
    end
  end
  a = a + n * 4
  k = k + n * 4
end
return settled
