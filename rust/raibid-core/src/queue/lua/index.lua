-- Shared prelude: the listing's secondary indexes (one sorted set per status, one per ref, scored like
-- the main index), kept by the scripts that change a job's status so a filtered list reads an index
-- instead of scanning every record. The key names are set above this file from contract.rs.
local function raibid_reindex(job_key, old, new)
  if old == new then return end
  local id = string.sub(job_key, string.len(RAIBID_JOB_PREFIX) + 1)
  if old then redis.call('ZREM', RAIBID_STATUS_INDEX .. old, id) end
  local score = redis.call('ZSCORE', RAIBID_JOB_INDEX, id)
  if score then redis.call('ZADD', RAIBID_STATUS_INDEX .. new, score, id) end
end
