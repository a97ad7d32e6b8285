//! What the API shows of the queue — log lines, queue figures, agents — as plain data, free of I/O: the
//! queue protocol (`crate::queue`, behind the `queue` feature) writes and reads them, the dispatcher serves
//! them, and `raibid-top` reads them from the API without linking a Redis client.

use serde::{Deserialize, Serialize};

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Queue figures: the totals over every agent type, and each type's own stream in `kinds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct QueueStats {
    /// Stream name (for the totals: the job streams, comma-separated).
    pub stream: String,
    /// Consumer group name.
    pub group: String,
    /// Entries in the stream: not yet claimed + claimed and not yet acknowledged (+ acknowledged ones
    /// behind an older pending entry, until it is acknowledged and the head trimmed).
    pub length: u64,
    /// Entries never delivered to the group (what KEDA scales on); `None` if Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered, not acknowledged.
    pub pending: u64,
    /// Age of the oldest unclaimed entry.
    pub oldest_waiting_age_secs: Option<f64>,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Per agent type (empty inside a per-type entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<QueueStats>,
}

/// An agent as seen through its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentInfo {
    /// Consumer name.
    pub id: String,
    /// Job being run.
    pub current_job: Option<String>,
    /// Last heartbeat.
    pub last_heartbeat: String,
    /// Jobs finished by this agent.
    pub jobs_done: u64,
    /// The job kinds it serves (`rust`, `image`, `gpu`); empty from agents older than this field.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// Milliseconds part of a stream entry id.
pub fn entry_millis(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}
