-- Give back an entry delivered along with the one an agent claims (one XREADGROUP over several streams
-- delivers up to one entry per stream): acknowledged, the head trimmed, and the job added again at the
-- tail of the same stream with the record's `entry` moved to it, so it stays queued for another agent and
-- `lag` stays exact (nothing is deleted from the middle). A stale entry is only acknowledged.
-- KEYS: job, stream   ARGV: entry, group, job id
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'entry') == ARGV[1] then
  local e = redis.call('XADD', KEYS[2], '*', 'job', ARGV[3])
  redis.call('HSET', KEYS[1], 'entry', e)
end
raibid_trim(KEYS[2], ARGV[2])
return 1
