-- Append log lines, fenced by the lease, capped by entries AND bytes (each entry costs its payload plus a
-- fixed overhead for the stream entry and its fields); past either cap one truncation marker is written.
-- KEYS: log, job   ARGV: cap_bytes, cap_entries, entry_overhead, lease, then (step, stream, ts, line) per line
if ARGV[4] ~= '' and redis.call('HGET', KEYS[2], 'lease') ~= ARGV[4] then return -1 end
if redis.call('HGET', KEYS[2], 'log_truncated') == '1' then return 0 end
local cap = tonumber(ARGV[1])
local cap_entries = tonumber(ARGV[2])
local overhead = tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[2], 'log_bytes', 'log_entries')
local used = tonumber(st[1] or '0')
local entries = tonumber(st[2] or '0')
local n = 0
for i = 5, #ARGV, 4 do
  local cost = string.len(ARGV[i]) + string.len(ARGV[i + 1]) + string.len(ARGV[i + 2]) + string.len(ARGV[i + 3]) + overhead
  if used + cost > cap or entries + 1 > cap_entries then
    redis.call('XADD', KEYS[1], '*', 'step', ARGV[i], 'stream', 'system', 'ts', ARGV[i + 2],
      'line', '[raibid] log truncated: this job reached its log limit of ' .. cap .. ' bytes / ' .. cap_entries .. ' lines')
    redis.call('HSET', KEYS[2], 'log_truncated', '1')
    break
  end
  used = used + cost
  entries = entries + 1
  redis.call('XADD', KEYS[1], '*', 'step', ARGV[i], 'stream', ARGV[i + 1], 'ts', ARGV[i + 2], 'line', ARGV[i + 3])
  n = n + 1
end
redis.call('HSET', KEYS[2], 'log_bytes', used, 'log_entries', entries)
return n
