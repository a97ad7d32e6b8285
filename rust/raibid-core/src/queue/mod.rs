//! The Redis queue protocol: the only code that reads or writes raibid's job keys.
//!
//! Invariants (see `docs/queue-contract.md` and `docs/delivery-semantics.md`):
//! - A job is enqueued by one Lua script: record hash + stream entry (on its kind's stream) + index +
//!   de-duplication key + event, all or nothing.
//! - Every record write is a compare-and-set on the hash's `rev` field; writes by an agent additionally
//!   carry the lease token of its claim (fencing), so an agent that lost its claim cannot write.
//! - Stream entries are only ever acknowledged (`XACK`), never `XDEL`eted; acknowledged entries are
//!   trimmed from the head (`XTRIM MINID`) up to the oldest pending or undelivered entry (`lua/trim.lua`),
//!   so `XINFO GROUPS` → `lag` stays a true count of undelivered entries for KEDA, in any finish order.
//! - A claim's lease expiry lives in the record hash (`lease_expires`, ms, Redis clock), written by the
//!   claim and renewed by the agent's heartbeat; the reaper requeues only inside Lua, when that expiry
//!   has passed and the record is unchanged since it looked.
//!
//! Submodules: `jobs` (enqueue, claim, fenced writes, cancel, list), `reaper` (requeue, dead letters,
//! consumer pruning, retention), `logs`, `agents` (heartbeats, names), `events`, `metrics` (figures,
//! histograms, status counts), `groups` (matrix fan-out, combined status, group cancel and retry). The scripts are in `lua/`, one file each, with a shared prelude.

mod agents;
mod events;
mod groups;
mod jobs;
mod logs;
mod metrics;
mod reaper;

use crate::contract::{keys, kinds::Route};
use crate::job::JobKind;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

pub use crate::event::Event;

pub mod artifacts;
pub mod cache_counters;
pub mod image_cleanup;

pub use crate::queue_view::{entry_millis, AgentInfo, LogLine, QueueStats};

/// A log line `(step, stream, line)` with the moment the agent read it (its `ts` in the job's log).
pub type StampedLine = (chrono::DateTime<chrono::Utc>, (String, String, String));
pub use jobs::ListFilter;
pub use metrics::{CLAIM_LATENCY_BUCKETS, JOB_DURATION_BUCKETS};

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

/// Tunables with their defaults (each is a flag + env var of the binaries; see `docs/configuration.md`).
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Per-job log cap in bytes (payload plus `log_entry_overhead` per line); past it one truncation
    /// marker is written.
    pub log_cap_bytes: u64,
    /// Per-job log cap in lines (stream entries).
    pub log_cap_lines: u64,
    /// Bytes counted per log entry on top of its payload (Redis' own cost of a stream entry).
    pub log_entry_overhead: u64,
    /// Approximate cap of the events stream.
    pub events_maxlen: u64,
    /// How long a delivery id is remembered.
    pub dedup_ttl: Duration,
    /// How long finished job records and logs are kept.
    pub retention: Duration,
    /// At most this many job records are kept (the oldest finished ones go first); 0 = no count bound.
    pub max_jobs: u64,
    /// A job claimed this many times without finishing goes to the dead-letter stream.
    pub max_attempts: u32,
    /// Lease of a claim (the agent's `--lease-secs`): the heartbeat renews it; past it the reaper may
    /// requeue the job.
    pub lease: Duration,
    /// The job kinds this process consumes (an agent's `--kinds`); the dispatcher reaps and reports all.
    pub kinds: Vec<JobKind>,
    /// The node an agent runs on (`RAIBID_NODE_NAME`): it records its node's warm repositories and
    /// reads `raibid:jobs:node:<node>` before the shared stream (ADR 0013). `None`: shared stream only.
    pub node: Option<String>,
}

/// How long a node's record of a repository's warm cache routes that repository's jobs to it.
pub const ROUTING_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            log_cap_bytes: 10 * 1024 * 1024,
            log_cap_lines: 200_000,
            log_entry_overhead: 32,
            events_maxlen: 100_000,
            dedup_ttl: Duration::from_secs(3 * 24 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_jobs: 100_000,
            max_attempts: 3,
            lease: Duration::from_secs(30),
            kinds: vec![JobKind::Rust],
            node: None,
        }
    }
}

/// A claimed job: the record, its stream entry and the lease token that fences writes.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The job as claimed.
    pub job: crate::job::Job,
    /// The stream entry this delivery came from.
    pub entry_id: String,
    /// The stream it came from: the kind's shared stream or this node's stream.
    pub stream: String,
    /// Lease token.
    pub lease: String,
    /// Lease duration: the heartbeat renews the expiry stored with the claim to now + this.
    pub lease_ttl: Duration,
    /// The record's revision after this holder's last write: the next fenced write tries it first
    /// (one round trip) and reloads only when someone else wrote in between (a cancel request).
    pub(crate) rev: Option<u64>,
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
    /// The entry was stale or its job gone; it was acknowledged.
    Dropped,
    /// The reaper found the lease alive (renewed since it looked) or the record changed: nothing done.
    Alive,
}

/// The result of an enqueue.
#[allow(clippy::large_enum_variant)] // built once per request and matched at once
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job.
    New(crate::job::Job),
    /// The delivery id was seen before: the job it made.
    Duplicate(String),
}

const TRIM_LUA: &str = include_str!("lua/trim.lua");
const INDEX_LUA: &str = include_str!("lua/index.lua");

struct Scripts {
    enqueue: Script,
    update: Script,
    requeue: Script,
    append: Script,
    ack: Script,
    renew: Script,
    repost: Script,
    fan_out: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let names = format!(
            "local RAIBID_STATUS_INDEX = '{}'\nlocal RAIBID_REF_INDEX = '{}'\nlocal RAIBID_JOB_INDEX = '{}'\nlocal RAIBID_JOB_PREFIX = '{}'\n",
            crate::contract::keys::JOB_INDEX_BY_STATUS_PREFIX,
            crate::contract::keys::JOB_INDEX_BY_REF_PREFIX,
            crate::contract::keys::JOB_INDEX,
            crate::contract::keys::JOB_PREFIX
        );
        let with_prelude =
            |body: &str| Script::new(&format!("{names}{INDEX_LUA}\n{TRIM_LUA}\n{body}"));
        Scripts {
            enqueue: with_prelude(include_str!("lua/enqueue.lua")),
            update: with_prelude(include_str!("lua/update.lua")),
            requeue: with_prelude(include_str!("lua/requeue.lua")),
            append: Script::new(include_str!("lua/append_log.lua")),
            ack: with_prelude(include_str!("lua/ack.lua")),
            renew: with_prelude(include_str!("lua/renew.lua")),
            repost: with_prelude(include_str!("lua/repost.lua")),
            fan_out: with_prelude(include_str!("lua/fan_out.lua")),
        }
    }
}

/// Handle on raibid's Redis. Cheap to clone (one multiplexed, self-reconnecting connection).
#[derive(Clone)]
pub struct Queue {
    client: redis::Client,
    con: ConnectionManager,
    cfg: QueueConfig,
    // Shared, not copied: every HTTP connection clones the router state, and with it the Queue.
    scripts: Arc<Scripts>,
    /// This process saw the listing's secondary indexes built (`Queue::list_filtered`).
    list_indexes_ready: Arc<std::sync::atomic::AtomicBool>,
}

fn ts_string(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn json<T: Serialize>(id: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| QueueError::Corrupt(id.to_string(), e.to_string()))
}

/// A job record as stored: whoever wrote the job, its `failure_reason` is bounded here, where every
/// record write passes (`job::bound_reason`).
fn record_json(job: &crate::job::Job) -> Result<String> {
    match &job.failure_reason {
        Some(r) if r.len() > crate::job::MAX_FAILURE_REASON => {
            let mut j = job.clone();
            j.failure_reason = Some(crate::job::bound_reason(r));
            json(&job.id, &j)
        }
        _ => json(&job.id, job),
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Queue {
    /// Connect (with automatic reconnects and backoff) and make sure the consumer groups exist.
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
            scripts: Arc::new(Scripts::load()),
            list_indexes_ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
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

    /// The routes (stream, group) of the kinds this process consumes.
    fn my_routes(&self) -> Vec<Route> {
        let mut r: Vec<Route> = self.cfg.kinds.iter().map(|k| k.route()).collect();
        if r.is_empty() {
            r.push(JobKind::Rust.route());
        }
        r
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

    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM` for every job stream (and `$` for the reporter's
    /// group on the events stream), tolerating BUSYGROUP. Called at connect and again whenever a read
    /// meets NOGROUP (a flushed or lost Redis), so the CI recovers by itself.
    pub async fn ensure_group(&self) -> Result<()> {
        let mut con = self.con.clone();
        let mut groups: Vec<(&str, &str, &str)> = crate::contract::kinds::ALL
            .iter()
            .map(|r| (r.stream, r.group, "0"))
            .collect();
        groups.push((keys::EVENTS_STREAM, keys::STATUS_REPORTER_GROUP, "$"));
        let node_stream = self
            .cfg
            .node
            .as_deref()
            .map(crate::contract::node_jobs_stream);
        if let Some(ns) = &node_stream {
            groups.push((ns, keys::AGENTS_GROUP, "0"));
        }
        for (stream, group, start) in groups {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg(start)
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
}

/// `XREADGROUP GROUP <group> <consumer> COUNT <count> BLOCK <ms> STREAMS <stream…> > …`: new entries
/// only. Every job stream has a group of the same name, so one blocking read serves several kinds.
fn xreadgroup(
    streams: &[&str],
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
        .arg("STREAMS");
    for s in streams {
        c.arg(*s);
    }
    for _ in streams {
        c.arg(">");
    }
    c
}

/// `XREADGROUP GROUP <group> <consumer> COUNT 1 STREAMS <stream> >` without `BLOCK`: one new entry of
/// one stream, or nil at once.
fn xreadgroup_now(stream: &str, group: &str, consumer: &str) -> redis::Cmd {
    let mut c = redis::cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(stream)
        .arg(">");
    c
}

/// A string field of a stream entry.
fn field(id: &redis::streams::StreamId, name: &str) -> Option<String> {
    id.get::<String>(name)
}
