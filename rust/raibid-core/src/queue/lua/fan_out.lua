-- Fan a matrix out (issue 23 §1): the group's record (the parent job, fenced by its claim's lease and
-- compare-and-set on its revision) + one job per cell (record hash, stream entry on the kind's shared
-- stream, indexes, status count, patch copy, event), all or nothing. The parent's own entry is
-- acknowledged and its lease cleared: it waits, `running`, for its cells (`groups.rs` settles it).
-- KEYS: parent job, cells' stream, index, events, counts, parent's stream, open groups, group index,
--       cell job keys...
-- ARGV: lease, expected rev, parent record, parent entry, group, events_maxlen, parent event, score,
--       parent patch key ('' = none), patch ttl secs, parent id, n, prune_before (group index, ms),
--       then per cell: id, record, event, ref
local cur = redis.call('HMGET', KEYS[1], 'rev', 'lease', 'status')
if not cur[1] then return -1 end
if cur[2] ~= ARGV[1] then return -2 end
if cur[1] ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[12])
local patch = false
if ARGV[9] ~= '' then patch = redis.call('GET', ARGV[9]) end
for i = 1, n do
  local base = 13 + (i - 1) * 4
  local id, rec, ev, ref = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
  local key = KEYS[8 + i]
  local entry = redis.call('XADD', KEYS[2], '*', 'job', id)
  redis.call('HSET', key, 'record', rec, 'rev', 1, 'entry', entry, 'stream', KEYS[2], 'lease', '', 'status', 'queued')
  redis.call('HINCRBY', KEYS[5], 'queued', 1)
  redis.call('ZADD', KEYS[3], ARGV[8], id)
  redis.call('ZADD', RAIBID_STATUS_INDEX .. 'queued', ARGV[8], id)
  redis.call('ZADD', RAIBID_REF_INDEX .. ref, ARGV[8], id)
  if patch then redis.call('SET', key .. ':patch', patch, 'EX', ARGV[10]) end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ev)
end
local rev = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'record', ARGV[3], 'rev', rev, 'lease', '', 'entry', '')
redis.call('HDEL', KEYS[1], 'lease_expires')
redis.call('XACK', KEYS[6], ARGV[5], ARGV[4])
raibid_trim(KEYS[6], ARGV[5])
redis.call('SADD', KEYS[7], ARGV[11])
redis.call('ZADD', KEYS[8], ARGV[8], ARGV[11])
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', ARGV[13])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[7])
return rev
