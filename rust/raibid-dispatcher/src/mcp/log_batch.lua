#!lua flags=no-writes
-- One batch of a job's log for get_logs, packed so the client parses four values instead of ten per line:
-- the entry ids joined by ',', the byte length of each line joined by ',', the lines concatenated, and
-- the steps as runs {step, count, step, count, ...} in batch order, and 1 when the byte bound cut the
-- batch short (more entries follow even though fewer than `count` came back). Read-only (runs on replicas too).
-- KEYS: log stream   ARGV: start, end, count, '1' for newest first (XREVRANGE), max bytes of lines
local es
if ARGV[4] == '1' then
  es = redis.call('XREVRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
else
  es = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
end
local max = tonumber(ARGV[5])
local ids, lens, texts, steps = {}, {}, {}, {}
local cur, run, bytes, capped = nil, 0, 0, 0
for i = 1, #es do
  local f = es[i][2]
  local step, line
  if f[1] == 'step' and f[7] == 'line' then
    -- The order append_log.lua writes: step, stream, ts, line.
    step, line = f[2], f[8]
  else
    step, line = '', ''
    for j = 1, #f, 2 do
      local k = f[j]
      if k == 'step' then step = f[j + 1] elseif k == 'line' then line = f[j + 1] end
    end
  end
  -- The byte bound: always at least one line, so a scan always advances.
  if i > 1 and bytes + #line > max then capped = 1; break end
  bytes = bytes + #line
  ids[i] = es[i][1]
  lens[i] = #line
  texts[i] = line
  if step ~= cur then
    if cur ~= nil then steps[#steps + 1] = cur; steps[#steps + 1] = run end
    cur, run = step, 0
  end
  run = run + 1
end
if cur ~= nil then steps[#steps + 1] = cur; steps[#steps + 1] = run end
return {table.concat(ids, ','), table.concat(lens, ','), table.concat(texts), steps, capped}
