//! The job record: what was asked for (source), where it is (status, step, attempt, agent), when things
//! happened (timestamps) and what came of it (per-step results, failure reason). No I/O here.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A job id: a ULID (26 Crockford base32 characters, sortable by creation time).
pub fn new_job_id() -> String {
    ulid::Ulid::new().to_string()
}

/// True when `id` looks like a job id (guards Redis key construction from arbitrary path input).
pub fn is_valid_job_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Lifecycle status of a job. Image-job phases (building, testing, publishing) will be added as
/// further running-type variants; consumers must treat unknown statuses as "not final".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the stream, not yet claimed by an agent.
    Queued,
    /// Claimed by an agent and running.
    Running,
    /// Every step exited 0.
    Succeeded,
    /// A step failed, or the job could not be run (clone, config).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// A step or the job exceeded its timeout.
    TimedOut,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
    ];

    /// A final status never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Succeeded | Status::Failed | Status::Cancelled | Status::TimedOut
        )
    }

    /// The snake_case name used in JSON, query strings and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
        }
    }

    /// Parse the snake_case name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A Gitea push webhook.
    GiteaPush,
    /// A GitHub push webhook for a repository that is not mirrored.
    GithubPush,
    /// A direct submission through the REST API (human or coding agent).
    Api,
    /// A retry of an earlier job.
    Retry,
}

/// Who or what triggered a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Trigger {
    /// The kind of trigger.
    pub kind: TriggerKind,
    /// The pusher or API caller, when known.
    pub actor: Option<String>,
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Source {
    /// Clone URL.
    pub repo_url: String,
    /// Git ref, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit sha; `None` means "the tip of `ref` when the agent clones".
    pub sha: Option<String>,
    /// Trigger.
    pub trigger: Trigger,
    /// The forge's delivery id (de-duplication key), when it came from a webhook.
    pub delivery_id: Option<String>,
    /// `owner/name` of the repository in Gitea, when commit statuses can be reported there.
    pub forge_repo: Option<String>,
    /// An uncommitted change to apply with `git apply` after the clone (the diff lives in `raibid:job:{id}:patch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchRef>,
    /// Where the dispatcher POSTs the final job record (signed `X-Raibid-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
}

/// A patch submitted with a job: its size and digest (the diff itself is in `raibid:job:{id}:patch`,
/// so the record every reader loads stays small; the agent checks the digest before applying it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PatchRef {
    /// Size of the unified diff in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the diff.
    pub sha256: String,
}

/// When things happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Timestamps {
    /// The dispatcher received the request.
    pub received: Option<DateTime<Utc>>,
    /// The job entered the stream.
    pub queued: Option<DateTime<Utc>>,
    /// An agent claimed it.
    pub claimed: Option<DateTime<Utc>>,
    /// The first step (clone) started.
    pub started: Option<DateTime<Utc>>,
    /// The final status was written.
    pub finished: Option<DateTime<Utc>>,
}

/// Result of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StepResult {
    /// Step name (`clone`, `config`, then the pipeline's steps).
    pub name: String,
    /// `running`, `succeeded`, `failed`, `cancelled`, `timed_out`, `skipped`.
    pub status: String,
    /// Exit code, when the step's process exited normally.
    pub exit_code: Option<i32>,
    /// Wall-clock duration in milliseconds, once finished.
    pub duration_ms: Option<u64>,
    /// When the step started.
    pub started_at: Option<DateTime<Utc>>,
}

/// A job record as stored in `raibid:job:{id}` and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// The step running now (or the step that failed).
    pub step: Option<String>,
    /// How many times an agent claimed it.
    pub attempt: u32,
    /// Consumer name of the agent that holds (or last held) it.
    pub agent: Option<String>,
    /// Lease token of the current claim; a final write must present it (fencing). Never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// What to build.
    pub source: Source,
    /// Pipeline name (for the commit-status context), known once the config was read.
    pub pipeline: Option<String>,
    /// Timestamps.
    pub timestamps: Timestamps,
    /// Per-step results, in order.
    pub steps: Vec<StepResult>,
    /// Why it failed, timed out or was cancelled.
    pub failure_reason: Option<String>,
    /// The job this one retries.
    pub retry_of: Option<String>,
    /// A user asked to cancel it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Cargo compilation units of the job's steps (fresh = reused from the target directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<crate::cargo_messages::CargoUnits>,
}

impl Job {
    /// A new queued job for `source`, received now.
    pub fn new(source: Source, now: DateTime<Utc>) -> Job {
        Job {
            id: new_job_id(),
            status: Status::Queued,
            step: None,
            attempt: 0,
            agent: None,
            lease: None,
            source,
            pipeline: None,
            timestamps: Timestamps {
                received: Some(now),
                queued: Some(now),
                ..Timestamps::default()
            },
            steps: Vec::new(),
            failure_reason: None,
            retry_of: None,
            cancel_requested: false,
            cargo: None,
        }
    }

    /// The record as the API shows it: without the lease token and stream bookkeeping.
    pub fn public(&self) -> Job {
        let mut j = self.clone();
        j.lease = None;
        j
    }

    /// Mark the start of a step.
    pub fn begin_step(&mut self, name: &str, now: DateTime<Utc>) {
        self.step = Some(name.to_string());
        self.steps.push(StepResult {
            name: name.to_string(),
            status: "running".into(),
            exit_code: None,
            duration_ms: None,
            started_at: Some(now),
        });
    }

    /// Mark the end of the current (last) step.
    pub fn end_step(&mut self, status: &str, exit_code: Option<i32>, now: DateTime<Utc>) {
        if let Some(s) = self.steps.last_mut() {
            s.status = status.to_string();
            s.exit_code = exit_code;
            s.duration_ms = s
                .started_at
                .map(|t| u64::try_from((now - t).num_milliseconds()).unwrap_or(0));
        }
    }

    /// Set a final status. Keeps `step` pointing at the step that decided the outcome.
    pub fn finish(&mut self, status: Status, reason: Option<String>, now: DateTime<Utc>) {
        self.status = status;
        self.failure_reason = reason;
        self.timestamps.finished = Some(now);
        if status == Status::Succeeded {
            self.step = None;
        }
    }

    /// Seconds from queued to claimed, once claimed.
    pub fn claim_latency_secs(&self) -> Option<f64> {
        let (q, c) = (self.timestamps.queued?, self.timestamps.claimed?);
        Some((c - q).num_microseconds()? as f64 / 1e6)
    }

    /// Seconds from started (or claimed) to finished, once finished.
    pub fn duration_secs(&self) -> Option<f64> {
        let s = self.timestamps.started.or(self.timestamps.claimed)?;
        let f = self.timestamps.finished?;
        Some((f - s).num_microseconds()? as f64 / 1e6)
    }

    /// The commit-status context, `raibid/<pipeline>`.
    pub fn status_context(&self) -> String {
        format!("raibid/{}", self.pipeline.as_deref().unwrap_or("ci"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source {
        Source {
            repo_url: "file:///tmp/x".into(),
            git_ref: "refs/heads/main".into(),
            sha: None,
            trigger: Trigger {
                kind: TriggerKind::Api,
                actor: None,
            },
            delivery_id: None,
            forge_repo: None,
            patch: None,
            notify_url: None,
        }
    }

    #[test]
    fn status_round_trips_and_finality() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!(!Status::Queued.is_final());
        assert!(!Status::Running.is_final());
        assert!(Status::TimedOut.is_final());
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn job_ids_are_valid_and_unique() {
        let a = new_job_id();
        let b = new_job_id();
        assert!(is_valid_job_id(&a));
        assert_ne!(a, b);
        assert!(!is_valid_job_id("../../etc"));
        assert!(!is_valid_job_id(""));
    }

    #[test]
    fn public_view_hides_lease() {
        let mut j = Job::new(src(), Utc::now());
        j.lease = Some("secret-token".into());
        let v = serde_json::to_value(j.public()).unwrap();
        assert!(v.get("lease").is_none());
        assert_eq!(v["source"]["ref"], "refs/heads/main");
    }

    #[test]
    fn steps_record_duration_and_exit_code() {
        let t0 = Utc::now();
        let mut j = Job::new(src(), t0);
        j.begin_step("build", t0);
        j.end_step(
            "failed",
            Some(101),
            t0 + chrono::Duration::milliseconds(1500),
        );
        assert_eq!(j.steps[0].exit_code, Some(101));
        assert_eq!(j.steps[0].duration_ms, Some(1500));
        j.finish(Status::Failed, Some("step build exited 101".into()), t0);
        assert_eq!(j.step.as_deref(), Some("build"));
    }
}
