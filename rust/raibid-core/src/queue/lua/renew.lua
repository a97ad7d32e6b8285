-- Renew a claim's lease (the agent's heartbeat): fenced by the lease token; the expiry lives in the
-- record hash, so the reaper decides from the agent's own lease duration (one source of truth).
-- KEYS: job, stream   ARGV: lease, ttl_ms, group, consumer, entry
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_expires', raibid_now_ms() + tonumber(ARGV[2]))
-- Keep the entry owned by (and its idle time reset for) the live agent.
redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[4], 0, ARGV[5], 'JUSTID')
return 1
