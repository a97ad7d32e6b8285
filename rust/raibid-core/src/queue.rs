//! The Redis queue protocol: the only code that reads or writes raibid's Redis keys.
//!
//! Invariants (see `docs/queue-contract.md`):
//! - A job is enqueued by one Lua script: record hash + stream entry + index + de-duplication key + event,
//!   all or nothing.
//! - Every record write is a compare-and-set on the hash's `rev` field; final writes additionally carry
//!   the lease token of the claim (fencing), so an agent that lost its claim cannot overwrite a result.
//! - Stream entries are deleted only after they were delivered and acknowledged (`XACK` + `XDEL` in the
//!   same script), so `XINFO GROUPS` → `lag` stays a true count of unclaimed jobs for KEDA.

use crate::contract::{self, keys};
pub use crate::event::Event;
use crate::job::{Job, Status};
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script, Value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the queue layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record is not valid JSON for this version.
    #[error("corrupt record for job {0}: {1}")]
    Corrupt(String, String),
    /// No such job.
    #[error("job {0} not found")]
    NotFound(String),
    /// The caller no longer holds the job's lease (another agent took it over).
    #[error("lease on job {0} lost")]
    LeaseLost(String),
    /// The operation does not fit the job's state.
    #[error("{0}")]
    Conflict(String),
}

/// Crate result type.
pub type Result<T> = std::result::Result<T, QueueError>;

/// Tunables with their defaults.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Per-job log cap in bytes; past it one truncation marker is written.
    pub log_cap_bytes: u64,
    /// Approximate cap of the events stream.
    pub events_maxlen: u64,
    /// How long a delivery id is remembered.
    pub dedup_ttl: Duration,
    /// How long finished job records and logs are kept.
    pub retention: Duration,
    /// A job claimed this many times without finishing goes to the dead-letter stream.
    pub max_attempts: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            log_cap_bytes: 10 * 1024 * 1024,
            events_maxlen: 100_000,
            dedup_ttl: Duration::from_secs(3 * 24 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_attempts: 3,
        }
    }
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Stream entry id (monotonic; use as a resume cursor).
    pub seq: String,
    /// Step that produced it.
    pub step: String,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// When the agent read it.
    pub ts: String,
    /// The line, without its newline.
    pub line: String,
}

/// Queue figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Stream name.
    pub stream: String,
    /// Consumer group name.
    pub group: String,
    /// Entries in the stream: not yet claimed + claimed and not yet acknowledged.
    pub length: u64,
    /// Entries never delivered to the group (what KEDA scales on); `None` if Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Age of the oldest unclaimed entry.
    pub oldest_waiting_age_secs: Option<f64>,
    /// Consumers known to the group.
    pub consumers: u64,
}

/// An agent as seen through its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Consumer name.
    pub id: String,
    /// Job being run.
    pub current_job: Option<String>,
    /// Last heartbeat.
    pub last_heartbeat: String,
    /// Jobs finished by this agent.
    pub jobs_done: u64,
}

/// A claimed job: the record, its stream entry and the lease token that fences final writes.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The job as claimed.
    pub job: Job,
    /// The stream entry this delivery came from.
    pub entry_id: String,
    /// Lease token.
    pub lease: String,
}

/// What `requeue` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeued {
    /// Back in the queue with a fresh entry.
    Queued,
    /// Moved to the dead-letter stream, status failed.
    DeadLettered,
    /// Finished (a cancel had been requested).
    Finished,
    /// The entry was stale or its job gone; it was acknowledged and deleted.
    Dropped,
}

/// The result of an enqueue.
#[allow(clippy::large_enum_variant)] // built once per request and matched at once
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job.
    New(Job),
    /// The delivery id was seen before: the job it made.
    Duplicate(String),
}

/// Bucket upper bounds (seconds) of the enqueue → claim latency histogram.
pub const CLAIM_LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];
/// Bucket upper bounds (seconds) of the job duration histogram.
pub const JOB_DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

const ENQUEUE_LUA: &str = r#"
-- KEYS: job, stream, index, events, dedup, counts   ARGV: id, record, score, dedup_ttl, event, events_maxlen, has_dedup, prune_before
if ARGV[7] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {0, existing} end
end
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', 1, 'entry', entry, 'lease', '', 'status', 'queued')
redis.call('HINCRBY', KEYS[6], 'queued', 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
if ARGV[7] == '1' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[4]) end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[5])
return {1, entry}
"#;

const UPDATE_LUA: &str = r#"
-- KEYS: job, stream, events, log, counts
-- ARGV: expected_rev, record, event, events_maxlen, ack_entry, group, expire_secs, lease, required_lease, entry, status
local cur = redis.call('HMGET', KEYS[1], 'rev', 'lease', 'status')
if not cur[1] then return -1 end
if cur[1] ~= ARGV[1] then return 0 end
if ARGV[9] ~= '' and cur[2] ~= ARGV[9] then return -2 end
if cur[3] ~= ARGV[11] then
  if cur[3] then redis.call('HINCRBY', KEYS[5], cur[3], -1) end
  redis.call('HINCRBY', KEYS[5], ARGV[11], 1)
  redis.call('HSET', KEYS[1], 'status', ARGV[11])
end
local rev = tonumber(cur[1]) + 1
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', rev, 'lease', ARGV[8])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'entry', ARGV[10]) end
if ARGV[5] ~= '' then
  redis.call('XACK', KEYS[2], ARGV[6], ARGV[5])
  redis.call('XDEL', KEYS[2], ARGV[5])
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
end
if ARGV[7] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
return rev
"#;

const REQUEUE_LUA: &str = r#"
-- KEYS: job, stream, events, dead, log, counts
-- ARGV: expected_rev, record, old_entry, group, job_id, event, events_maxlen, mode ('queue'|'dead'|'final'), attempts, reason, expire_secs, status
local cur = redis.call('HMGET', KEYS[1], 'rev', 'status')
local rev = cur[1]
if not rev then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[3])
  redis.call('XDEL', KEYS[2], ARGV[3])
  return -1
end
if rev ~= ARGV[1] then return 0 end
if cur[2] ~= ARGV[12] then
  if cur[2] then redis.call('HINCRBY', KEYS[6], cur[2], -1) end
  redis.call('HINCRBY', KEYS[6], ARGV[12], 1)
  redis.call('HSET', KEYS[1], 'status', ARGV[12])
end
redis.call('XACK', KEYS[2], ARGV[4], ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[3])
local nrev = tonumber(rev) + 1
if ARGV[8] == 'queue' then
  local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[5])
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', nrev, 'lease', '', 'entry', entry)
else
  redis.call('HSET', KEYS[1], 'record', ARGV[2], 'rev', nrev, 'lease', '', 'entry', '')
  redis.call('EXPIRE', KEYS[1], ARGV[11])
  redis.call('EXPIRE', KEYS[5], ARGV[11])
  if ARGV[8] == 'dead' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', 100000, '*', 'job', ARGV[5], 'attempts', ARGV[9], 'reason', ARGV[10])
  end
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[6])
return nrev
"#;

const APPEND_LOG_LUA: &str = r#"
-- KEYS: log, job   ARGV: cap, lease, then (step, stream, ts, line) per line
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'lease') ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[2], 'log_truncated') == '1' then return 0 end
local cap = tonumber(ARGV[1])
local used = tonumber(redis.call('HGET', KEYS[2], 'log_bytes') or '0')
local n = 0
for i = 3, #ARGV, 4 do
  local len = string.len(ARGV[i + 3])
  if used + len > cap then
    redis.call('XADD', KEYS[1], '*', 'step', ARGV[i], 'stream', 'system', 'ts', ARGV[i + 2],
      'line', '[raibid] log truncated: this job reached its log limit of ' .. cap .. ' bytes')
    redis.call('HSET', KEYS[2], 'log_truncated', '1')
    break
  end
  used = used + len
  redis.call('XADD', KEYS[1], '*', 'step', ARGV[i], 'stream', ARGV[i + 1], 'ts', ARGV[i + 2], 'line', ARGV[i + 3])
  n = n + 1
end
redis.call('HSET', KEYS[2], 'log_bytes', used)
return n
"#;

/// Handle on raibid's Redis. Cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    con: ConnectionManager,
    cfg: QueueConfig,
    // Shared, not copied: every HTTP connection clones the router state, and with it the Queue.
    enqueue: Arc<Script>,
    update: Arc<Script>,
    append: Arc<Script>,
    requeue: Arc<Script>,
}

fn to_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

fn to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => to_string(other)?.parse().ok(),
    }
}

/// Turn a RESP2 flat key/value array or a RESP3 map into a map.
fn to_map(v: &Value) -> HashMap<String, Value> {
    let mut m = HashMap::new();
    match v {
        Value::Array(items) => {
            for pair in items.chunks(2) {
                if let [k, val] = pair {
                    if let Some(k) = to_string(k) {
                        m.insert(k, val.clone());
                    }
                }
            }
        }
        Value::Map(items) => {
            for (k, val) in items {
                if let Some(k) = to_string(k) {
                    m.insert(k, val.clone());
                }
            }
        }
        _ => {}
    }
    m
}

/// Milliseconds part of a stream entry id.
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

fn ts_string(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl Queue {
    /// Connect (with automatic reconnects and backoff) and make sure the consumer group exists.
    pub async fn connect(url: &str, cfg: QueueConfig) -> Result<Queue> {
        let client = redis::Client::open(url)?;
        let mcfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let con = client.get_connection_manager_with_config(mcfg).await?;
        let q = Queue {
            client,
            con,
            cfg,
            enqueue: Arc::new(Script::new(ENQUEUE_LUA)),
            update: Arc::new(Script::new(UPDATE_LUA)),
            append: Arc::new(Script::new(APPEND_LOG_LUA)),
            requeue: Arc::new(Script::new(REQUEUE_LUA)),
        };
        q.ensure_group().await?;
        Ok(q)
    }

    /// A clone of the shared, self-reconnecting connection, for modules outside the queue protocol
    /// that keep their own keys (named in `contract.rs`): diagnostics, caches, notifications.
    pub fn redis(&self) -> ConnectionManager {
        self.con.clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// A dedicated connection for blocking reads (`XREADGROUP … BLOCK`, `XREAD … BLOCK`): a blocking
    /// command would stall every other command on the shared multiplexed connection.
    pub async fn blocking_connection(&self, block: Duration) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?)
    }

    /// A pub/sub connection (cancel broadcasts).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// `XGROUP CREATE raibid:jobs raibid-agents 0 MKSTREAM`, tolerating BUSYGROUP.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut con = self.con.clone();
        for (stream, group) in [
            (keys::JOBS_STREAM, keys::AGENTS_GROUP),
            (keys::EVENTS_STREAM, keys::STATUS_REPORTER_GROUP),
        ] {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg(if stream == keys::JOBS_STREAM {
                    "0"
                } else {
                    "$"
                })
                .arg("MKSTREAM")
                .query_async(&mut con)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        Ok(())
    }

    /// Atomically create the job record, its stream entry, index entry and (when `delivery` is given)
    /// the de-duplication key. A delivery seen before returns the job it made and enqueues nothing.
    pub async fn enqueue(&self, job: Job, delivery: Option<(&str, &str)>) -> Result<Enqueued> {
        let mut con = self.con.clone();
        let record = serde_json::to_string(&job)
            .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?;
        let now = job.timestamps.queued.unwrap_or_else(Utc::now);
        let event = serde_json::to_string(&Event::of("job_created", &job, now))
            .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?;
        let dedup = delivery.map(|(forge, id)| contract::delivery_key(forge, id));
        let prune_before = now.timestamp_millis() - self.cfg.retention.as_millis() as i64;
        let r: Vec<Value> = self
            .enqueue
            .key(contract::job_key(&job.id))
            .key(keys::JOBS_STREAM)
            .key(keys::JOB_INDEX)
            .key(keys::EVENTS_STREAM)
            .key(
                dedup
                    .clone()
                    .unwrap_or_else(|| contract::delivery_key("none", "none")),
            )
            .key(keys::JOB_STATUS_COUNTS)
            .arg(&job.id)
            .arg(record)
            .arg(now.timestamp_millis())
            .arg(self.cfg.dedup_ttl.as_secs())
            .arg(event)
            .arg(self.cfg.events_maxlen)
            .arg(if dedup.is_some() { "1" } else { "0" })
            .arg(prune_before)
            .invoke_async(&mut con)
            .await?;
        match r.as_slice() {
            [Value::Int(1), _] => Ok(Enqueued::New(job)),
            [Value::Int(0), existing] => {
                Ok(Enqueued::Duplicate(to_string(existing).unwrap_or_default()))
            }
            other => Err(QueueError::Corrupt(
                job.id,
                format!("unexpected enqueue reply {other:?}"),
            )),
        }
    }

    /// Load a job with its revision.
    pub async fn load(&self, id: &str) -> Result<(Job, String)> {
        let mut con = self.con.clone();
        let (record, rev): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(contract::job_key(id))
            .arg("record")
            .arg("rev")
            .query_async(&mut con)
            .await?;
        match (record, rev) {
            (Some(r), Some(rev)) => {
                let job: Job = serde_json::from_str(&r)
                    .map_err(|e| QueueError::Corrupt(id.to_string(), e.to_string()))?;
                Ok((job, rev))
            }
            _ => Err(QueueError::NotFound(id.to_string())),
        }
    }

    /// Get a job.
    pub async fn get(&self, id: &str) -> Result<Job> {
        Ok(self.load(id).await?.0)
    }

    /// Compare-and-set write of a record. Returns false when the revision moved (reload and retry).
    #[allow(clippy::too_many_arguments)]
    async fn cas(
        &self,
        job: &Job,
        rev: &str,
        event: Option<&str>,
        ack_entry: Option<&str>,
        new_lease: &str,
        required_lease: Option<&str>,
        entry: Option<&str>,
    ) -> Result<bool> {
        let mut con = self.con.clone();
        let record = serde_json::to_string(job)
            .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?;
        let event = match event {
            Some(kind) => serde_json::to_string(&Event::of(kind, job, Utc::now()))
                .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?,
            None => String::new(),
        };
        let expire = if job.status.is_final() {
            self.cfg.retention.as_secs()
        } else {
            0
        };
        let r: i64 = self
            .update
            .key(contract::job_key(&job.id))
            .key(keys::JOBS_STREAM)
            .key(keys::EVENTS_STREAM)
            .key(contract::job_log_key(&job.id))
            .key(keys::JOB_STATUS_COUNTS)
            .arg(rev)
            .arg(record)
            .arg(event)
            .arg(self.cfg.events_maxlen)
            .arg(ack_entry.unwrap_or(""))
            .arg(keys::AGENTS_GROUP)
            .arg(expire)
            .arg(new_lease)
            .arg(required_lease.unwrap_or(""))
            .arg(entry.unwrap_or(""))
            .arg(job.status.as_str())
            .invoke_async(&mut con)
            .await?;
        match r {
            -1 => Err(QueueError::NotFound(job.id.clone())),
            -2 => Err(QueueError::LeaseLost(job.id.clone())),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Apply `f` to the job with optimistic concurrency, retrying on revision conflicts. `f` returns
    /// `Ok(Some(event))` to write, `Ok(None)` to leave the record as it is.
    pub async fn modify<F>(&self, id: &str, mut f: F) -> Result<Job>
    where
        F: FnMut(&mut Job) -> Result<Option<&'static str>>,
    {
        for _ in 0..100 {
            let (mut job, rev) = self.load(id).await?;
            let event = match f(&mut job)? {
                Some(e) => e,
                None => return Ok(job),
            };
            let lease = job.lease.clone().unwrap_or_default();
            if self
                .cas(&job, &rev, Some(event), None, &lease, None, None)
                .await?
            {
                return Ok(job);
            }
        }
        Err(QueueError::Conflict(format!(
            "job {id}: too many concurrent updates"
        )))
    }

    /// Update a claimed job's record as its lease holder (step progress). Fails with `LeaseLost` when
    /// another agent holds the job now.
    pub async fn update_claimed(&self, claim: &mut Claim, event: &'static str) -> Result<()> {
        self.fenced_write(claim, event, false).await
    }

    /// Write the final status, acknowledge and delete the stream entry, in one fenced step.
    pub async fn finish_claimed(&self, claim: &mut Claim) -> Result<()> {
        self.fenced_write(claim, "job_finished", true).await?;
        self.observe(
            keys::JOB_DURATION_HIST,
            &JOB_DURATION_BUCKETS,
            claim.job.duration_secs(),
        )
        .await;
        Ok(())
    }

    /// A record write by the lease holder, retried on revision conflicts; `last` also acknowledges and
    /// deletes the stream entry and clears the lease.
    async fn fenced_write(&self, claim: &mut Claim, event: &'static str, last: bool) -> Result<()> {
        for _ in 0..100 {
            let (cur, rev) = self.load(&claim.job.id).await?;
            if cur.lease.as_deref() != Some(claim.lease.as_str()) {
                return Err(QueueError::LeaseLost(claim.job.id.clone()));
            }
            // Keep a concurrent cancel request.
            claim.job.cancel_requested |= cur.cancel_requested;
            let (ack, new_lease) = if last {
                (Some(claim.entry_id.as_str()), "")
            } else {
                (None, claim.lease.as_str())
            };
            if self
                .cas(
                    &claim.job,
                    &rev,
                    Some(event),
                    ack,
                    new_lease,
                    Some(&claim.lease),
                    None,
                )
                .await?
            {
                return Ok(());
            }
        }
        Err(QueueError::Conflict(format!(
            "job {}: too many concurrent updates",
            claim.job.id
        )))
    }

    /// Block up to `block` for the next undelivered entry and claim its job for `agent`. Entries of jobs
    /// that are already final or were cancelled while queued are acknowledged and skipped.
    pub async fn claim_next(
        &self,
        con: &mut MultiplexedConnection,
        agent: &str,
        block: Duration,
    ) -> Result<Option<Claim>> {
        let reply: Value = xreadgroup(keys::JOBS_STREAM, keys::AGENTS_GROUP, agent, 1, block)
            .query_async(con)
            .await?;
        let Some((entry_id, job_id)) = first_entry(&reply) else {
            return Ok(None);
        };
        self.claim_entry(agent, &entry_id, &job_id).await
    }

    /// Claim the job of a delivered entry.
    pub async fn claim_entry(
        &self,
        agent: &str,
        entry_id: &str,
        job_id: &str,
    ) -> Result<Option<Claim>> {
        for _ in 0..100 {
            let (mut job, rev) = match self.load(job_id).await {
                Ok(x) => x,
                Err(QueueError::NotFound(_)) | Err(QueueError::Corrupt(..)) => {
                    self.ack_delete(entry_id).await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let now = Utc::now();
            if job.status.is_final() {
                self.ack_delete(entry_id).await?;
                return Ok(None);
            }
            if job.cancel_requested {
                job.finish(
                    Status::Cancelled,
                    Some("cancelled before it started".into()),
                    now,
                );
                if self
                    .cas(
                        &job,
                        &rev,
                        Some("job_finished"),
                        Some(entry_id),
                        "",
                        None,
                        None,
                    )
                    .await?
                {
                    return Ok(None);
                }
                continue;
            }
            let lease = ulid::Ulid::new().to_string();
            job.status = Status::Running;
            job.attempt += 1;
            job.agent = Some(agent.to_string());
            job.lease = Some(lease.clone());
            job.timestamps.claimed = Some(now);
            job.failure_reason = None;
            if self
                .cas(
                    &job,
                    &rev,
                    Some("job_claimed"),
                    None,
                    &lease,
                    None,
                    Some(entry_id),
                )
                .await?
            {
                self.observe(
                    keys::CLAIM_LATENCY_HIST,
                    &CLAIM_LATENCY_BUCKETS,
                    job.claim_latency_secs(),
                )
                .await;
                return Ok(Some(Claim {
                    job,
                    entry_id: entry_id.to_string(),
                    lease,
                }));
            }
        }
        Err(QueueError::Conflict(format!(
            "job {job_id}: too many concurrent updates"
        )))
    }

    async fn ack_delete(&self, entry_id: &str) -> Result<()> {
        let mut con = self.con.clone();
        let _: () = redis::pipe()
            .atomic()
            .cmd("XACK")
            .arg(keys::JOBS_STREAM)
            .arg(keys::AGENTS_GROUP)
            .arg(entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(keys::JOBS_STREAM)
            .arg(entry_id)
            .ignore()
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    async fn observe(&self, key: &str, buckets: &[f64], value: Option<f64>) {
        let Some(v) = value else { return };
        let mut con = self.con.clone();
        let mut p = redis::pipe();
        p.atomic();
        for b in buckets {
            if v <= *b {
                p.cmd("HINCRBY").arg(key).arg(b.to_string()).arg(1).ignore();
            }
        }
        p.cmd("HINCRBY").arg(key).arg("+Inf").arg(1).ignore();
        p.cmd("HINCRBY").arg(key).arg("count").arg(1).ignore();
        p.cmd("HINCRBYFLOAT").arg(key).arg("sum").arg(v).ignore();
        let r: redis::RedisResult<()> = p.query_async(&mut con).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record metric");
        }
    }

    /// Put a claimed job back in the queue with a fresh stream entry (its old entry acknowledged and
    /// deleted in the same script), or — when it was already claimed `max_attempts` times — move it to
    /// the dead-letter stream as failed. With `required_lease` only the lease holder may do it (an agent
    /// releasing its job on shutdown); without it (the reaper) the record's revision is the fence.
    /// Returns what happened.
    pub async fn requeue(
        &self,
        job_id: &str,
        entry_id: &str,
        reason: &str,
        required_lease: Option<&str>,
    ) -> Result<Requeued> {
        for _ in 0..100 {
            let (mut job, rev) = match self.load(job_id).await {
                Ok(x) => x,
                Err(QueueError::NotFound(_)) => {
                    self.ack_delete(entry_id).await?;
                    return Ok(Requeued::Dropped);
                }
                Err(e) => return Err(e),
            };
            if let Some(l) = required_lease {
                if job.lease.as_deref() != Some(l) {
                    return Err(QueueError::LeaseLost(job_id.to_string()));
                }
            }
            let mut con = self.con.clone();
            let cur_entry: Option<String> = redis::cmd("HGET")
                .arg(contract::job_key(job_id))
                .arg("entry")
                .query_async(&mut con)
                .await?;
            if job.status.is_final() || cur_entry.as_deref() != Some(entry_id) {
                // A stale entry (the job moved on): drop it.
                self.ack_delete(entry_id).await?;
                return Ok(Requeued::Dropped);
            }
            let now = Utc::now();
            let (mode, outcome) = if job.cancel_requested {
                job.finish(
                    Status::Cancelled,
                    Some(format!("cancelled ({reason})")),
                    now,
                );
                ("final", Requeued::Finished)
            } else if job.attempt >= self.cfg.max_attempts {
                job.finish(
                    Status::Failed,
                    Some(format!("gave up after {} attempts: {reason}", job.attempt)),
                    now,
                );
                ("dead", Requeued::DeadLettered)
            } else {
                job.status = Status::Queued;
                job.step = None;
                job.lease = None;
                job.failure_reason = Some(format!("attempt {} interrupted: {reason}", job.attempt));
                job.timestamps.queued = Some(now);
                job.timestamps.claimed = None;
                job.timestamps.started = None;
                ("queue", Requeued::Queued)
            };
            let record = serde_json::to_string(&job)
                .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?;
            let kind = match outcome {
                Requeued::Queued => "job_requeued",
                _ => "job_finished",
            };
            let event = serde_json::to_string(&Event::of(kind, &job, now))
                .map_err(|e| QueueError::Corrupt(job.id.clone(), e.to_string()))?;
            let r: i64 = self
                .requeue
                .key(contract::job_key(job_id))
                .key(keys::JOBS_STREAM)
                .key(keys::EVENTS_STREAM)
                .key(keys::DEAD_STREAM)
                .key(contract::job_log_key(job_id))
                .key(keys::JOB_STATUS_COUNTS)
                .arg(&rev)
                .arg(record)
                .arg(entry_id)
                .arg(keys::AGENTS_GROUP)
                .arg(job_id)
                .arg(event)
                .arg(self.cfg.events_maxlen)
                .arg(mode)
                .arg(job.attempt)
                .arg(reason)
                .arg(self.cfg.retention.as_secs())
                .arg(job.status.as_str())
                .invoke_async(&mut con)
                .await?;
            match r {
                -1 => return Ok(Requeued::Dropped),
                0 => continue,
                _ => return Ok(outcome),
            }
        }
        Err(QueueError::Conflict(format!(
            "job {job_id}: too many concurrent updates"
        )))
    }

    /// Reclaim entries whose lease expired (idle longer than `lease`: their agent stopped heartbeating)
    /// with `XAUTOCLAIM`, following its cursor to `0-0`, and requeue or dead-letter their jobs. Safe to
    /// run in several dispatcher replicas at once: `XAUTOCLAIM` hands each entry to one of them.
    pub async fn reap(&self, reaper: &str, lease: Duration) -> Result<Vec<(String, Requeued)>> {
        let mut con = self.con.clone();
        let mut cursor = "0-0".to_string();
        let mut out = Vec::new();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(keys::JOBS_STREAM)
                .arg(keys::AGENTS_GROUP)
                .arg(reaper)
                .arg(lease.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(100)
                .arg("JUSTID")
                .query_async(&mut con)
                .await?;
            let Value::Array(parts) = reply else { break };
            let next = parts
                .first()
                .and_then(to_string)
                .unwrap_or_else(|| "0-0".into());
            let ids: Vec<String> = match parts.get(1) {
                Some(Value::Array(v)) => v.iter().filter_map(to_string).collect(),
                _ => Vec::new(),
            };
            for id in ids {
                let entry: Value = redis::cmd("XRANGE")
                    .arg(keys::JOBS_STREAM)
                    .arg(&id)
                    .arg(&id)
                    .query_async(&mut con)
                    .await?;
                let Some((_, fields)) = first_range_entry(&entry) else {
                    self.ack_delete(&id).await?;
                    continue;
                };
                let job_id = fields.get("job").cloned().unwrap_or_default();
                let reason = match self.get(&job_id).await {
                    Ok(j) => format!(
                        "agent {} stopped renewing its lease{}",
                        j.agent.as_deref().unwrap_or("?"),
                        j.step
                            .map(|s| format!(" during step `{s}`"))
                            .unwrap_or_default()
                    ),
                    Err(_) => "its agent stopped renewing its lease".to_string(),
                };
                let r = self.requeue(&job_id, &id, &reason, None).await?;
                tracing::warn!(job = %job_id, entry = %id, outcome = ?r, "reclaimed an expired lease");
                out.push((job_id, r));
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// Delete consumers of agents that are gone: nothing pending, no live heartbeat, idle longer than
    /// `idle`. (A crashed pod leaves its consumer behind; its entries were already reclaimed.)
    pub async fn prune_consumers(&self, idle: Duration) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        let reply: Value = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(keys::JOBS_STREAM)
            .arg(keys::AGENTS_GROUP)
            .query_async(&mut con)
            .await?;
        let mut gone = Vec::new();
        if let Value::Array(cs) = reply {
            for c in cs {
                let m = to_map(&c);
                let Some(name) = m.get("name").and_then(to_string) else {
                    continue;
                };
                let pending = m.get("pending").and_then(to_u64).unwrap_or(1);
                let idle_ms = m.get("idle").and_then(to_u64).unwrap_or(0);
                if pending == 0
                    && idle_ms > idle.as_millis() as u64
                    && !self.agent_alive(&name).await?
                {
                    let _: i64 = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(keys::JOBS_STREAM)
                        .arg(keys::AGENTS_GROUP)
                        .arg(&name)
                        .query_async(&mut con)
                        .await?;
                    gone.push(name);
                }
            }
        }
        Ok(gone)
    }

    /// Entries of the dead-letter stream: (entry id, job id, attempts, reason).
    pub async fn dead_letters(&self) -> Result<Vec<(String, String, u32, String)>> {
        let mut con = self.con.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(keys::DEAD_STREAM)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await?;
        Ok(range_entries(&reply)
            .into_iter()
            .map(|(id, f)| {
                (
                    id,
                    f.get("job").cloned().unwrap_or_default(),
                    f.get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
                    f.get("reason").cloned().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Read a histogram: (bucket bound → cumulative count, sum, count).
    pub async fn histogram(&self, key: &str) -> Result<HashMap<String, f64>> {
        let mut con = self.con.clone();
        let m: HashMap<String, String> =
            redis::cmd("HGETALL").arg(key).query_async(&mut con).await?;
        Ok(m.into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }

    /// Append log lines for a claimed job (capped; fenced by the lease). Returns false when the lease
    /// was lost.
    pub async fn append_log(
        &self,
        job_id: &str,
        lease: &str,
        lines: &[(String, String, String)],
    ) -> Result<bool> {
        if lines.is_empty() {
            return Ok(true);
        }
        let mut con = self.con.clone();
        let ts = ts_string(Utc::now());
        let mut inv = self.append.key(contract::job_log_key(job_id));
        inv.key(contract::job_key(job_id))
            .arg(self.cfg.log_cap_bytes)
            .arg(lease);
        for (step, stream, line) in lines {
            inv.arg(step).arg(stream).arg(&ts).arg(line);
        }
        let r: i64 = inv.invoke_async(&mut con).await?;
        Ok(r >= 0)
    }

    /// Read log lines after `after` (exclusive; `None` = from the start), at most `count`.
    pub async fn read_log(
        &self,
        job_id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<LogLine>> {
        let mut con = self.con.clone();
        let start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        let reply: Value = redis::cmd("XRANGE")
            .arg(contract::job_log_key(job_id))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut con)
            .await?;
        Ok(parse_log_entries(&reply))
    }

    /// Block up to `block` for log lines after `after` on a dedicated connection.
    pub async fn follow_log(
        &self,
        con: &mut MultiplexedConnection,
        job_id: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<LogLine>> {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(contract::job_log_key(job_id))
            .arg(after)
            .query_async(con)
            .await?;
        // Reply: [[stream, [entries]]] (RESP2) or {stream: [entries]} (RESP3).
        let entries = match &reply {
            Value::Array(streams) => streams
                .first()
                .and_then(|s| match s {
                    Value::Array(kv) => kv.get(1).cloned(),
                    _ => None,
                })
                .unwrap_or(Value::Nil),
            Value::Map(m) => m.first().map(|(_, v)| v.clone()).unwrap_or(Value::Nil),
            _ => Value::Nil,
        };
        Ok(parse_log_entries(&entries))
    }

    /// Whether the job's log was truncated.
    pub async fn log_truncated(&self, job_id: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(contract::job_key(job_id))
            .arg("log_truncated")
            .query_async(&mut con)
            .await?;
        Ok(v.as_deref() == Some("1"))
    }

    /// Ask for a job to be cancelled. A queued job becomes `cancelled` at once (its stream entry stays
    /// until an agent reads and acknowledges it, keeping `lag` exact); a running job is told through the
    /// cancel channel and its agent writes the final status.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let now = Utc::now();
        let job = self
            .modify(id, |job| {
                if job.status.is_final() {
                    return Err(QueueError::Conflict(format!(
                        "job {} already {}",
                        job.id, job.status
                    )));
                }
                job.cancel_requested = true;
                if job.status == Status::Queued {
                    job.finish(
                        Status::Cancelled,
                        Some("cancelled before it started".into()),
                        now,
                    );
                    Ok(Some("job_finished"))
                } else {
                    Ok(Some("job_cancel_requested"))
                }
            })
            .await?;
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys::CANCEL_CHANNEL)
            .arg(id)
            .query_async(&mut con)
            .await?;
        Ok(job)
    }

    /// List jobs, newest first. `cursor` is the id of the last job of the previous page.
    pub async fn list(
        &self,
        status: Option<Status>,
        repo: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let mut con = self.con.clone();
        let mut start: i64 = match cursor {
            Some(c) => {
                let rank: Option<i64> = redis::cmd("ZREVRANK")
                    .arg(keys::JOB_INDEX)
                    .arg(c)
                    .query_async(&mut con)
                    .await?;
                match rank {
                    Some(r) => r + 1,
                    None => return Ok((Vec::new(), None)),
                }
            }
            None => 0,
        };
        let mut out = Vec::new();
        const BATCH: i64 = 200;
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(keys::JOB_INDEX)
                .arg(start)
                .arg(start + BATCH - 1)
                .query_async(&mut con)
                .await?;
            if ids.is_empty() {
                return Ok((out, None));
            }
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGET").arg(contract::job_key(id)).arg("record");
            }
            let records: Vec<Option<String>> = p.query_async(&mut con).await?;
            for (id, rec) in ids.iter().zip(records) {
                start += 1;
                let Some(rec) = rec else {
                    // Expired record: drop it from the index.
                    let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                        .arg(keys::JOB_INDEX)
                        .arg(id)
                        .query_async(&mut con)
                        .await;
                    start -= 1;
                    continue;
                };
                let Ok(job) = serde_json::from_str::<Job>(&rec) else {
                    continue;
                };
                if status.is_some_and(|s| s != job.status) {
                    continue;
                }
                if repo.is_some_and(|r| !job.source.repo_url.contains(r)) {
                    continue;
                }
                out.push(job);
                if out.len() >= limit {
                    let next = out.last().map(|j| j.id.clone());
                    return Ok((out, next));
                }
            }
        }
    }

    /// Jobs per status, kept by the write scripts in `raibid:metrics:jobs_by_status` (O(1) per scrape):
    /// queued and running are current counts; final statuses count every job that ever reached them.
    pub async fn count_by_status(&self) -> Result<HashMap<Status, u64>> {
        let mut con = self.con.clone();
        let m: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(keys::JOB_STATUS_COUNTS)
            .query_async(&mut con)
            .await?;
        Ok(Status::ALL
            .iter()
            .map(|s| (*s, m.get(s.as_str()).copied().unwrap_or(0).max(0) as u64))
            .collect())
    }

    /// Queue figures from `XLEN` and `XINFO GROUPS`.
    pub async fn stats(&self) -> Result<QueueStats> {
        let mut con = self.con.clone();
        let length: u64 = redis::cmd("XLEN")
            .arg(keys::JOBS_STREAM)
            .query_async(&mut con)
            .await?;
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(keys::JOBS_STREAM)
            .query_async(&mut con)
            .await?;
        let mut stats = QueueStats {
            stream: keys::JOBS_STREAM.into(),
            group: keys::AGENTS_GROUP.into(),
            length,
            lag: None,
            pending: 0,
            oldest_waiting_age_secs: None,
            consumers: 0,
        };
        let mut last_delivered = None;
        if let Value::Array(gs) = &groups {
            for g in gs {
                let m = to_map(g);
                if m.get("name").and_then(to_string).as_deref() != Some(keys::AGENTS_GROUP) {
                    continue;
                }
                stats.lag = m.get("lag").and_then(to_u64);
                stats.pending = m.get("pending").and_then(to_u64).unwrap_or(0);
                stats.consumers = m.get("consumers").and_then(to_u64).unwrap_or(0);
                last_delivered = m.get("last-delivered-id").and_then(to_string);
            }
        }
        if let Some(ld) = last_delivered {
            let reply: Value = redis::cmd("XRANGE")
                .arg(keys::JOBS_STREAM)
                .arg(format!("({ld}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut con)
                .await?;
            if let Some((id, _)) = first_range_entry(&reply) {
                if let Some(ms) = entry_millis(&id) {
                    let age = (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0;
                    stats.oldest_waiting_age_secs = Some(age);
                }
            }
        }
        Ok(stats)
    }

    /// Record an agent heartbeat (and keep the stream entry of its job from looking idle).
    pub async fn heartbeat(
        &self,
        agent: &str,
        current: Option<(&str, &str)>,
        jobs_done: u64,
        ttl: Duration,
    ) -> Result<()> {
        let mut con = self.con.clone();
        let key = contract::agent_key(agent);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SADD")
            .arg(keys::AGENTS_SET)
            .arg(agent)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("id")
            .arg(agent)
            .arg("current_job")
            .arg(current.map(|c| c.0).unwrap_or(""))
            .arg("last_heartbeat")
            .arg(ts_string(Utc::now()))
            .arg("jobs_done")
            .arg(jobs_done)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(ttl.as_secs().max(1))
            .ignore();
        if let Some((_, entry)) = current {
            // Reset the entry's idle time: a live agent's entry is never reclaimed.
            p.cmd("XCLAIM")
                .arg(keys::JOBS_STREAM)
                .arg(keys::AGENTS_GROUP)
                .arg(agent)
                .arg(0)
                .arg(entry)
                .arg("JUSTID")
                .ignore();
        }
        let _: () = p.query_async(&mut con).await?;
        Ok(())
    }

    /// Remove an agent's heartbeat (clean exit). Its consumer is deleted from the group only when it
    /// has nothing pending.
    pub async fn deregister(&self, agent: &str) -> Result<()> {
        let mut con = self.con.clone();
        let _: () = redis::pipe()
            .cmd("SREM")
            .arg(keys::AGENTS_SET)
            .arg(agent)
            .ignore()
            .cmd("DEL")
            .arg(contract::agent_key(agent))
            .ignore()
            .query_async(&mut con)
            .await?;
        let pending: Value = redis::cmd("XPENDING")
            .arg(keys::JOBS_STREAM)
            .arg(keys::AGENTS_GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(agent)
            .query_async(&mut con)
            .await?;
        if matches!(&pending, Value::Array(v) if v.is_empty()) {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(keys::JOBS_STREAM)
                .arg(keys::AGENTS_GROUP)
                .arg(agent)
                .query_async(&mut con)
                .await?;
        }
        Ok(())
    }

    /// Agents with a live heartbeat; stale members of the set are removed.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>> {
        let mut con = self.con.clone();
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::AGENTS_SET)
            .query_async(&mut con)
            .await?;
        let mut out = Vec::new();
        for name in names {
            let m: HashMap<String, String> = redis::cmd("HGETALL")
                .arg(contract::agent_key(&name))
                .query_async(&mut con)
                .await?;
            if m.is_empty() {
                let _: i64 = redis::cmd("SREM")
                    .arg(keys::AGENTS_SET)
                    .arg(&name)
                    .query_async(&mut con)
                    .await?;
                continue;
            }
            out.push(AgentInfo {
                id: name,
                current_job: m.get("current_job").filter(|s| !s.is_empty()).cloned(),
                last_heartbeat: m.get("last_heartbeat").cloned().unwrap_or_default(),
                jobs_done: m.get("jobs_done").and_then(|s| s.parse().ok()).unwrap_or(0),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Is another live agent using this consumer name?
    pub async fn agent_alive(&self, agent: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(contract::agent_key(agent))
            .query_async(&mut con)
            .await?;
        Ok(n > 0)
    }

    /// Read events from the events stream for the status reporter group (non-blocking batches).
    pub async fn read_events(
        &self,
        con: &mut MultiplexedConnection,
        consumer: &str,
        block: Duration,
    ) -> Result<Vec<(String, Event)>> {
        let reply: Value = xreadgroup(
            keys::EVENTS_STREAM,
            keys::STATUS_REPORTER_GROUP,
            consumer,
            100,
            block,
        )
        .query_async(con)
        .await?;
        let mut out = Vec::new();
        for (id, fields) in stream_entries(&reply) {
            if let Some(ev) = fields
                .get("event")
                .and_then(|e| serde_json::from_str::<Event>(e).ok())
            {
                out.push((id, ev));
            } else {
                out.push((
                    id,
                    Event {
                        kind: "unknown".into(),
                        job: String::new(),
                        status: Status::Queued,
                        step: None,
                        agent: None,
                        ts: Utc::now(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Acknowledge processed events.
    pub async fn ack_events(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(keys::EVENTS_STREAM)
            .arg(keys::STATUS_REPORTER_GROUP)
            .arg(ids)
            .query_async(&mut con)
            .await?;
        Ok(())
    }
}

/// `XREADGROUP GROUP <group> <consumer> COUNT <count> BLOCK <ms> STREAMS <stream> >`: new entries only.
fn xreadgroup(
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> redis::Cmd {
    let mut c = redis::cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(">");
    c
}

/// Entries of an `XREAD`/`XREADGROUP` reply (first stream) as (id, fields).
fn stream_entries(reply: &Value) -> Vec<(String, HashMap<String, String>)> {
    let entries = match reply {
        Value::Array(streams) => streams.first().and_then(|s| match s {
            Value::Array(kv) => kv.get(1).cloned(),
            _ => None,
        }),
        Value::Map(m) => m.first().map(|(_, v)| v.clone()),
        _ => None,
    };
    range_entries(&entries.unwrap_or(Value::Nil))
}

/// Entries of an `XRANGE` reply as (id, fields).
fn range_entries(reply: &Value) -> Vec<(String, HashMap<String, String>)> {
    let mut out = Vec::new();
    if let Value::Array(items) = reply {
        for it in items {
            if let Value::Array(pair) = it {
                if let [id, fields] = pair.as_slice() {
                    let Some(id) = to_string(id) else { continue };
                    let fields = to_map(fields)
                        .into_iter()
                        .filter_map(|(k, v)| Some((k, to_string(&v)?)))
                        .collect();
                    out.push((id, fields));
                }
            }
        }
    }
    out
}

fn first_entry(reply: &Value) -> Option<(String, String)> {
    let (id, fields) = stream_entries(reply).into_iter().next()?;
    Some((id, fields.get("job").cloned().unwrap_or_default()))
}

fn first_range_entry(reply: &Value) -> Option<(String, HashMap<String, String>)> {
    range_entries(reply).into_iter().next()
}

fn parse_log_entries(reply: &Value) -> Vec<LogLine> {
    range_entries(reply)
        .into_iter()
        .map(|(seq, mut f)| LogLine {
            seq,
            step: f.remove("step").unwrap_or_default(),
            stream: f.remove("stream").unwrap_or_default(),
            ts: f.remove("ts").unwrap_or_default(),
            line: f.remove("line").unwrap_or_default(),
        })
        .collect()
}
