-- Shared prelude of the scripts that acknowledge job-stream entries.
--
-- Acknowledged entries are trimmed from the HEAD of a job stream only (XTRIM MINID), up to the oldest
-- entry that is still pending or not yet delivered; an entry is never XDEL'd from the middle. A tombstone
-- between the stream's first entry and the group's last-delivered id makes Redis give up counting `lag`
-- (XINFO GROUPS → nil, which KEDA reads as 0), so this keeps `lag` a true count of undelivered entries.
local function raibid_id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local function raibid_trim(stream, group)
  local last = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, ld = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
    end
    if name == group then last = ld end
  end
  if not last then return 0 end
  local minid = nil
  local summary = redis.call('XPENDING', stream, group)
  if tonumber(summary[1]) > 0 then minid = summary[2] end
  local undelivered = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
  if #undelivered > 0 then
    local u = undelivered[1][1]
    if (not minid) or raibid_id_lt(u, minid) then minid = u end
  end
  if not minid then
    -- Everything delivered is acknowledged: trim through the last-delivered id.
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    if ms == '0' and seq == '0' then return 0 end
    minid = ms .. '-' .. (tonumber(seq) + 1)
  end
  return redis.call('XTRIM', stream, 'MINID', minid)
end

local function raibid_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
