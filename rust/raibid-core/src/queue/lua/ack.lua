-- Acknowledge an entry that will not run (its job is final, gone or unreadable), trim the head, and with a
-- reason record it in the dead-letter stream so nothing is dropped silently.
-- KEYS: stream, dead   ARGV: entry, group, job (as read), reason ('' = no dead letter)
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
raibid_trim(KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'job', ARGV[3], 'attempts', 0, 'reason', ARGV[4])
end
return 1
