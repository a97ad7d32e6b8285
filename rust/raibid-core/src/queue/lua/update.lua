-- Compare-and-set write of a job record; with `required_lease`, fenced by the claim's lease token.
-- KEYS: job, stream, events, log, counts, histogram (ignored without an observation)
-- ARGV: expected_rev, record, event, events_maxlen, ack_entry, group, expire_secs, lease, required_lease,
--       entry, status, lease_ttl_ms, observed value ('' = none), bucket bounds the value falls in...
-- An observation is recorded in the same step as the write it measures (a claim's latency, a job's
-- duration): one round trip, and only when the write happened.
local cur = redis.call('HMGET', KEYS[1], 'rev', 'lease', 'status')
if not cur[1] then return -1 end
if cur[1] ~= ARGV[1] then return 0 end
if ARGV[9] ~= '' and cur[2] ~= ARGV[9] then return -2 end
if cur[3] ~= ARGV[11] then
  if cur[3] then redis.call('HINCRBY', KEYS[5], cur[3], -1) end
  redis.call('HINCRBY', KEYS[5], ARGV[11], 1)
  redis.call('HSET', KEYS[1], 'status', ARGV[11])
  raibid_reindex(KEYS[1], cur[3], ARGV[11])
end
local rev = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', rev, 'lease', ARGV[8])
if ARGV[8] == '' then
  redis.call('HDEL', KEYS[1], 'lease_expires')
elseif tonumber(ARGV[12]) > 0 then
  redis.call('HSET', KEYS[1], 'lease_expires', raibid_now_ms() + tonumber(ARGV[12]))
end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'entry', ARGV[10], 'stream', KEYS[2]) end
if ARGV[5] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[1], 'entry', '')
  raibid_trim(KEYS[2], ARGV[6])
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
end
if ARGV[13] ~= '' then
  for i = 14, #ARGV do redis.call('HINCRBY', KEYS[6], ARGV[i], 1) end
  redis.call('HINCRBY', KEYS[6], '+Inf', 1)
  redis.call('HINCRBY', KEYS[6], 'count', 1)
  redis.call('HINCRBYFLOAT', KEYS[6], 'sum', ARGV[13])
end
if ARGV[7] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
return rev
