-- Enqueue a job: record hash + stream entry + index + de-duplication key + status count + event, all or
-- nothing.
-- KEYS: job, stream (the kind's shared stream), index, events, dedup, counts, nodes
-- ARGV: id, record, score, dedup_ttl, event, events_maxlen, has_dedup, prune_before, max_jobs, status,
--       repo key ('' = no node routing), routing ttl ms, node key prefix, repos suffix, agents suffix,
--       node stream prefix, group, ref
-- Node routing (ADR 0013): the entry goes to `<node stream prefix><node>` instead of the shared stream
-- when that node recorded the repository within the routing TTL (most recent first) and has a free
-- agent: a live agent on it (heartbeat expiry in the node's agents set not passed) with no entry pending
-- on the shared or the node stream, more of them than entries still undelivered on the node stream.
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
local stream = KEYS[2]
if ARGV[11] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local group = ARGV[17]
  local function node_free(node)
    local nstream = ARGV[16] .. node
    local agents = redis.call('ZRANGEBYSCORE', ARGV[13] .. node .. ARGV[15], now, '+inf')
    if #agents == 0 then return false end
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', nstream)
    if not ok then return false end
    local lag = nil
    for _, g in ipairs(groups) do
      local name, l = nil, nil
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'lag' then l = g[i + 1] end
      end
      if name == group then lag = tonumber(l) end
    end
    if not lag then return false end
    local busy = {}
    for _, s in ipairs({KEYS[2], nstream}) do
      local okp, p = pcall(redis.call, 'XPENDING', s, group)
      if okp and p[4] then
        for _, c in ipairs(p[4]) do busy[c[1]] = true end
      end
    end
    local free = 0
    for _, a in ipairs(agents) do
      if not busy[a] then free = free + 1 end
    end
    return free > lag
  end
  local holders = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], now, '+inf')) do
    local s = redis.call('ZSCORE', ARGV[13] .. node .. ARGV[14], ARGV[11])
    if s and tonumber(s) >= now - tonumber(ARGV[12]) then
      table.insert(holders, {node, tonumber(s)})
    end
  end
  table.sort(holders, function(a, b) return a[2] > b[2] end)
  for _, h in ipairs(holders) do
    if node_free(h[1]) then
      stream = ARGV[16] .. h[1]
      break
    end
  end
end
local entry = redis.call('XADD', stream, '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', 1, 'entry', entry, 'stream', stream, 'lease', '', 'status', ARGV[10])
redis.call('HINCRBY', KEYS[6], ARGV[10], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
-- The listing's secondary indexes (status, ref); past retention they are pruned like the main one.
redis.call('ZADD', RAIBID_STATUS_INDEX .. ARGV[10], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', RAIBID_STATUS_INDEX .. ARGV[10], '-inf', ARGV[8])
local by_ref = RAIBID_REF_INDEX .. ARGV[18]
redis.call('ZADD', by_ref, ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', by_ref, '-inf', ARGV[8])
-- Bound the number of records kept: drop the oldest finished ones past max_jobs (a few per enqueue).
local max_jobs = tonumber(ARGV[9])
if max_jobs > 0 then
  local over = redis.call('ZCARD', KEYS[3]) - max_jobs
  if over > 0 then
    local prefix = string.sub(KEYS[1], 1, string.len(KEYS[1]) - string.len(ARGV[1]))
    local oldest = redis.call('ZRANGE', KEYS[3], 0, math.min(over, 16) - 1)
    for _, id in ipairs(oldest) do
      local st = redis.call('HGET', prefix .. id, 'status')
      if (not st) or st == 'succeeded' or st == 'failed' or st == 'cancelled' or st == 'timed_out' then
        redis.call('DEL', prefix .. id, prefix .. id .. ':log')
        redis.call('ZREM', KEYS[3], id)
      end
    end
  end
end
if ARGV[7] == '1' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4]) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[5])
return {1, entry, stream}
