-- Enqueue a job: record hash + stream entry + index + de-duplication key + status count + event, all or
-- nothing.
-- KEYS: job, stream, index, events, dedup, counts
-- ARGV: id, record, score, dedup_ttl, event, events_maxlen, has_dedup, prune_before, max_jobs, status, ref
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', 1, 'entry', entry, 'lease', '', 'status', ARGV[10])
redis.call('HINCRBY', KEYS[6], ARGV[10], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
-- The listing's secondary indexes (status, ref); past retention they are pruned like the main one.
redis.call('ZADD', RAIBID_STATUS_INDEX .. ARGV[10], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', RAIBID_STATUS_INDEX .. ARGV[10], '-inf', ARGV[8])
local by_ref = RAIBID_REF_INDEX .. ARGV[11]
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
return {1, entry}
