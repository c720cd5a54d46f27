-- The limiter's one script: settles, then admissions, in one call (a batch of each). Times are
-- microseconds of Redis's clock (TIME); TATs are integers in strings.
--
-- Each scope of the call is described once: KEYS holds three per scope (requests TAT, tokens
-- TAT, and the base name of its open sets), and ARGV nine per scope. A scope is "tracked" when
-- it has a token or a parallel limit: its admitted requests stay open until they settle (or
-- their lease runs out), and with a parallel limit the number of open requests is the number in
-- flight.
--
-- Open requests are kept in sets of integers, one per lease period ("epoch": Redis's time in ms
-- divided by the lease): `<base>:<epoch>`. A request joins the set of the epoch it is admitted
-- in; the set expires at the end of the next epoch, so an unsettled request (a crashed process)
-- stops counting between one and two leases after its admission. The open requests are those of
-- this epoch's set and the previous one's. Members are integers (the client's 62-bit digest of
-- the request id), which Redis keeps as a sorted array (an intset): adding, finding and removing
-- one is a binary search, whatever the Redis version's encoding of small sets of strings.
--
-- ARGV[1] scopes, ARGV[2] settles, ARGV[3] admissions, ARGV[4] lease ms, ARGV[5] prefetch
-- window µs; then per scope: requests interval, requests tolerance, tokens interval, tokens
-- tolerance (µs; interval 0 = no such limit), max parallel (0 = none), then the block it asks
-- for (requests, tokens, parallel slots; 0 0 0 asks none) and the block's member; then per
-- settle: request member, 1 to undo the request
-- itself (else 0), its number of scopes, and per scope two: scope index (1-based), token delta
-- (tokens used minus tokens reserved; 0 keeps the reservation as charged); then per admission:
-- request member, its number of scopes, and per scope two: scope index, token cost.
--
-- A settle removes its request from the open sets, and applies only if it was there: one that
-- is retried (its first answer lost) changes nothing the second time. An admission is all or
-- nothing over its scopes; admissions are decided in order, each seeing the ones before it.
-- Within one call each TAT is read and written at most once, each open set is counted once,
-- and each is searched, shrunk and grown by one command at most.
--
-- Blocks ("prefetch"): after the admissions, a scope may be asked for a block of requests,
-- tokens and parallel slots that its process then admits from by itself within the window.
-- A block is charged as if all of it came at the end of the window (its TAT starts no earlier
-- than now + window), and only while the scope's buckets stay at most half full after it, and
-- its parallel slots keep the open requests at most half the parallel limit; a smaller block
-- than asked is granted when only that fits, none when too little does. A block joins the open
-- sets: one member per parallel slot (the process gives each back when it is done with it),
-- else one member when it has tokens; its process settles the block's tokens like a request's
-- (the tokens its admissions used minus the block's), once, by its first member.
--
-- Returns the number of scope settles applied, then five numbers per admission: {1, remaining
-- requests, µs until requests reset, remaining tokens, µs until tokens reset} (-1 where no
-- scope has that limit), or {0, scope index within the request (1-based), what (1 requests,
-- 2 tokens, 3 parallel), µs to wait (-1: never), 0}; then seven per scope: the block granted
-- {requests (-1: no such limit), remaining requests, µs until requests reset, tokens, remaining
-- tokens, µs until tokens reset, parallel slots}, zeros when none; as one string of little-endian 8-byte
-- integers (Redis's `struct` library), which costs both sides less than an array of numbers.
local call, floor, ceil, max, min, unpack = redis.call, math.floor, math.ceil, math.max, math.min,
  unpack
local tonumber, format, argv, keys = tonumber, string.format, ARGV, KEYS
local t = call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = floor(now / 1000)
-- Small counts and indexes are read without a string-to-number conversion.
local SMALL = { ['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6,
  ['7'] = 7, ['8'] = 8, ['9'] = 9 }
local nscopes = tonumber(argv[1])
local settles = tonumber(argv[2])
local admits = tonumber(argv[3])
local lease = tonumber(argv[4])
local window = tonumber(argv[5])
local epoch = floor(now_ms / lease)
local cur_suffix, prev_suffix = format(':%d', epoch), format(':%d', epoch - 1)

-- Per scope: {rpm key, tpm key, open set now, open set before, rt, rtau, tt, ttau, maxp,
-- tracked, block requests asked, block tokens asked, block slots asked, block member}.
local scopes = {}
for i = 1, nscopes do
  local a, k = 5 + (i - 1) * 9, (i - 1) * 3
  local tt, maxp = tonumber(argv[a + 3]), tonumber(argv[a + 5])
  scopes[i] = {
    keys[k + 1], keys[k + 2], keys[k + 3] .. cur_suffix, keys[k + 3] .. prev_suffix,
    tonumber(argv[a + 1]), tonumber(argv[a + 2]), tt, tonumber(argv[a + 4]), maxp,
    tt > 0 or maxp > 0, tonumber(argv[a + 6]), tonumber(argv[a + 7]), tonumber(argv[a + 8]),
    argv[a + 9],
  }
end

-- TATs read in this call, and the ones changed (written back once, at the end).
local tats, dirty = {}, {}
local function get_tat(key)
  local v = tats[key]
  if v == nil then
    v = tonumber(call('GET', key) or '0')
    tats[key] = v
  end
  return v
end
local function put_tat(key, tat)
  tats[key] = tat
  dirty[key] = true
end

-- Appends `v` to the list of scope `si` in `lists`, counting its length in `counts` (no `#`).
local function push(lists, counts, si, v)
  local list, c = lists[si], (counts[si] or 0) + 1
  if not list then
    list = {}
    lists[si] = list
  end
  list[c] = v
  counts[si] = c
end

-- Open requests per scope in the previous epoch's set and in this one's (each counted once).
local before_count, open_count = {}, {}
local function before_of(si, s)
  local c = before_count[si]
  if c == nil then
    c = call('SCARD', s[4])
    before_count[si] = c
  end
  return c
end

-- Settles, in three steps: the members settled on each tracked scope are gathered (in order);
-- each scope's open sets are searched and shrunk once (the previous epoch's only when it has
-- members); then the (request, scope) pairs apply in order, the k-th pair of a scope reading
-- the k-th answer of its search.
local first = 5 + nscopes * 9
local a = first
local wanted, nwanted = {}, {}
for _ = 1, settles do
  local m, n = argv[a + 1], argv[a + 3]
  n = SMALL[n] or tonumber(n)
  a = a + 3
  for _ = 1, n do
    local si = argv[a + 1]
    si = SMALL[si] or tonumber(si)
    a = a + 2
    if scopes[si][10] then push(wanted, nwanted, si, m) end
  end
end
-- Per tracked scope settled here: whether its k-th pair applies (its member was open). A
-- member named twice in one call (never, in practice) applies the first time only.
local hits = {}
for si, w in pairs(wanted) do
  local s, nw = scopes[si], nwanted[si]
  local here = call('SMISMEMBER', s[3], unpack(w))
  local before = nil
  if before_of(si, s) > 0 then before = call('SMISMEMBER', s[4], unpack(w)) end
  local gone_now, gone_before, ng, nb = {}, {}, 0, 0
  for j = 1, nw do
    if here[j] == 1 then
      ng = ng + 1
      gone_now[ng] = w[j]
    elseif before and before[j] == 1 then
      here[j] = 1
      nb = nb + 1
      gone_before[nb] = w[j]
    end
  end
  local removed = 0
  if ng > 0 then removed = call('SREM', s[3], unpack(gone_now)) end
  if nb > 0 then
    removed = removed + call('SREM', s[4], unpack(gone_before))
    before_count[si] = before_count[si] - nb
  end
  if removed < ng + nb then
    local seen = {}
    for j = 1, nw do
      if here[j] == 1 then
        if seen[w[j]] then here[j] = 0 else seen[w[j]] = true end
      end
    end
    before_count[si] = nil
  end
  hits[si] = here
end
local settled = 0
local used = {}
a = first
for _ = 1, settles do
  local undo, n = argv[a + 2] == '1', argv[a + 3]
  n = SMALL[n] or tonumber(n)
  a = a + 3
  for _ = 1, n do
    local si = argv[a + 1]
    si = SMALL[si] or tonumber(si)
    local s = scopes[si]
    local was_open = false
    if s[10] then
      local k = (used[si] or 0) + 1
      used[si] = k
      if hits[si][k] == 1 then
        was_open = true
        settled = settled + 1
        local delta = tonumber(argv[a + 2])
        if s[7] > 0 and delta ~= 0 then
          local tat = get_tat(s[2])
          if delta < 0 then
            tat = max(tat + delta * s[7], now)
          else
            tat = max(tat, now) + delta * s[7]
          end
          put_tat(s[2], tat)
        end
      end
    end
    if undo and s[5] > 0 and (was_open or not s[10]) then
      put_tat(s[1], max(get_tat(s[1]) - s[5], now))
    end
    a = a + 2
  end
end

-- The members to add, per scope.
local adds, nadds = {}, {}
local function open_of(si, s)
  local c = open_count[si]
  if c == nil then
    c = call('SCARD', s[3])
    open_count[si] = c
  end
  return c + before_of(si, s)
end

local out = { settled }
-- Scratch space of one admission (reused: no table is made per request): the TATs it would
-- write, the scopes whose open sets it would join.
local wkey, wval, oscope = {}, {}, {}
local function admit(m, n)
  local nw, no = 0, 0
  local rem_req, reset_req, rem_tok, reset_tok = -1, -1, -1, -1
  for i = 1, n do
    local si = argv[a + i * 2 - 1]
    si = SMALL[si] or tonumber(si)
    local s = scopes[si]
    local interval = s[5]
    if interval > 0 then
      -- GCRA, inline: the request's new TAT, refused past the tolerance (0.001 µs of slack:
      -- tolerance = burst * interval is rarely exact in floating point).
      local tat = get_tat(s[1])
      if tat < now then tat = now end
      local new, tolerance = tat + interval, s[6]
      if new - now > tolerance + 0.001 then return 0, i, 1, ceil(new - tolerance - now) end
      local rem = floor((tolerance - (new - now) + 0.001) / interval)
      nw = nw + 1; wkey[nw] = s[1]; wval[nw] = new
      if rem_req < 0 or rem < rem_req then rem_req = rem; reset_req = new - now end
    end
    interval = s[7]
    if interval > 0 then
      local cost, tolerance = tonumber(argv[a + i * 2]), s[8]
      if cost * interval > tolerance + 0.001 then return 0, i, 2, -1 end
      local tat = get_tat(s[2])
      if tat < now then tat = now end
      local new = tat + cost * interval
      if new - now > tolerance + 0.001 then return 0, i, 2, ceil(new - tolerance - now) end
      local rem = floor((tolerance - (new - now) + 0.001) / interval)
      nw = nw + 1; wkey[nw] = s[2]; wval[nw] = new
      if rem_tok < 0 or rem < rem_tok then rem_tok = rem; reset_tok = new - now end
    end
    if s[9] > 0 and open_of(si, s) >= s[9] then return 0, i, 3, 1000000 end
    if s[10] then no = no + 1; oscope[no] = si end
  end
  for j = 1, nw do
    tats[wkey[j]] = wval[j]
    dirty[wkey[j]] = true
  end
  for j = 1, no do
    local si = oscope[j]
    if open_count[si] then open_count[si] = open_count[si] + 1 end
    push(adds, nadds, si, m)
  end
  return 1, rem_req, ceil(reset_req), rem_tok, ceil(reset_tok)
end
local o = 1
for _ = 1, admits do
  local m, n = argv[a + 1], argv[a + 2]
  n = SMALL[n] or tonumber(n)
  a = a + 2
  local ok, b1, b2, b3, b4 = admit(m, n)
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = ok, b1, b2, b3, b4 or 0
  o = o + 5
  a = a + n * 2
end

-- Blocks, after every admission of the call. One of fewer than MIN_BLOCK requests (or fewer
-- tokens than that many of the average asked), or of fewer than MIN_SLOTS parallel slots, is
-- not worth a window of waste: none then. A block's parallel slots are open-set members from
-- its member up (members of blocks are below 2^52, exact in Lua's numbers).
local MIN_BLOCK, MIN_SLOTS = 16, 4
for si = 1, nscopes do
  local s = scopes[si]
  local k, rr, rs, x, tr, ts, p = 0, 0, 0, 0, 0, 0, 0
  if s[11] > 0 then
    local new_r, new_t
    local ok = true
    k, x, p = -1, -1, -1
    if s[5] > 0 then
      local base = max(get_tat(s[1]), now + window)
      k = min(s[11], floor((now + s[6] / 2 - base) / s[5]))
      if k >= MIN_BLOCK then
        new_r = base + k * s[5]
        rr, rs = floor((s[6] - (new_r - now) + 0.001) / s[5]), ceil(new_r - now)
      else
        ok = false
      end
    end
    if ok and s[7] > 0 then
      local base = max(get_tat(s[2]), now + window)
      x = min(s[12], floor((now + s[8] / 2 - base) / s[7]))
      if x >= max(1, s[12] * MIN_BLOCK / s[11]) then
        new_t = base + x * s[7]
        tr, ts = floor((s[8] - (new_t - now) + 0.001) / s[7]), ceil(new_t - now)
      else
        ok = false
      end
    end
    if ok and s[9] > 0 then
      p = min(s[13], floor(s[9] / 2) - open_of(si, s))
      if p < MIN_SLOTS then ok = false end
    end
    if not ok or (k < 0 and x < 0 and p < 0) then
      k, rr, rs, x, tr, ts, p = 0, 0, 0, 0, 0, 0, 0
    else
      if new_r then put_tat(s[1], new_r) end
      if new_t then put_tat(s[2], new_t) end
      -- The block's members: one per parallel slot, else one to settle its tokens by.
      local members = p > 0 and p or (new_t and 1 or 0)
      local m = tonumber(s[14])
      for j = 0, members - 1 do push(adds, nadds, si, format('%.0f', m + j)) end
      if open_count[si] then open_count[si] = open_count[si] + members end
    end
  end
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5], out[o + 6], out[o + 7] =
    k, rr, rs, x, tr, ts, p
  o = o + 7
end

for key in pairs(dirty) do
  local tat = tats[key]
  if tat > now then
    call('SET', key, format('%.0f', tat), 'PX', ceil((tat - now) / 1000) + 1000)
  else
    call('DEL', key)
  end
end
-- This epoch's set lives until the end of the next epoch (and a second more); set when the
-- set may be new (not known to have had members before these).
local until_ms = (epoch + 2) * lease + 1000
for si, list in pairs(adds) do
  local key = scopes[si][3]
  call('SADD', key, unpack(list))
  local c = open_count[si]
  if c == nil or c == nadds[si] then call('PEXPIREAT', key, until_ms) end
end
return struct.pack('<' .. string.rep('i8', #out), unpack(out))
