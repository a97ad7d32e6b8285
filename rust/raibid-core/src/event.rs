//! The event schema of `raibid:events`: one definition, written by the queue scripts, read by the
//! dispatcher's status reporter and `GET /api/v1/events`, and by `raibid-top`.

use crate::job::{Job, Status};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A job event for live watchers (`raibid:events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `job_created`, `job_claimed`, `step_started`, `step_finished`, `job_finished`, `job_cancel_requested`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Job id.
    pub job: String,
    /// Job status after the event.
    pub status: Status,
    /// Step concerned.
    pub step: Option<String>,
    /// Agent concerned.
    pub agent: Option<String>,
    /// When.
    pub ts: DateTime<Utc>,
}

impl Event {
    /// The event `kind` about `job` as it is now.
    pub fn of(kind: &str, job: &Job, now: DateTime<Utc>) -> Event {
        Event {
            kind: kind.into(),
            job: job.id.to_string(),
            status: job.status,
            step: job.step.clone(),
            agent: job.agent.clone(),
            ts: now,
        }
    }
}
