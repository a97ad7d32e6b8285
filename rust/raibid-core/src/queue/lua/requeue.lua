-- Put a claimed job back (fresh entry at the tail), finish it, or dead-letter it; the old entry is
-- acknowledged and the head trimmed. With mode 'reap' the lease expiry stored with the claim decides:
-- a live lease (or a record that changed since the reaper read it) makes the reaper back off.
-- KEYS: job, stream (of the old entry), events, dead, log, counts, queue stream (the kind's shared stream:
--       an entry reclaimed from a node stream finishes elsewhere)
-- ARGV: expected_rev, record, old_entry, group, job_id, event, events_maxlen, mode ('queue'|'dead'|'final'),
--       attempts, reason, expire_secs, status, caller ('agent'|'reap'), orphan ('1' when the entry has no
--       lease and idled past the orphan timeout)
local cur = redis.call('HMGET', KEYS[1], 'rev', 'status', 'lease_expires', 'entry')
local rev = cur[1]
if not rev then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[3])
  raibid_trim(KEYS[2], ARGV[4])
  return -1
end
if rev ~= ARGV[1] then return 0 end
if cur[4] ~= ARGV[3] then return -4 end
if ARGV[13] == 'reap' then
  if cur[3] then
    if tonumber(cur[3]) > raibid_now_ms() then return -3 end
  elseif ARGV[14] ~= '1' then
    return -3
  end
end
if cur[2] ~= ARGV[12] then
  if cur[2] then redis.call('HINCRBY', KEYS[6], cur[2], -1) end
  redis.call('HINCRBY', KEYS[6], ARGV[12], 1)
  redis.call('HSET', KEYS[1], 'status', ARGV[12])
  raibid_reindex(KEYS[1], cur[2], ARGV[12])
end
redis.call('XACK', KEYS[2], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[1], 'lease_expires')
local nrev = tonumber(rev) + 1
if ARGV[8] == 'queue' then
  local entry = redis.call('XADD', KEYS[7], '*', 'job', ARGV[5])
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', nrev, 'lease', '', 'entry', entry, 'stream', KEYS[7])
else
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', nrev, 'lease', '', 'entry', '')
  redis.call('EXPIRE', KEYS[1], ARGV[11])
  redis.call('EXPIRE', KEYS[5], ARGV[11])
  if ARGV[8] == 'dead' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'job', ARGV[5], 'attempts', ARGV[9], 'reason', ARGV[10])
  end
end
raibid_trim(KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[6])
return nrev
