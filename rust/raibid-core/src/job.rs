//! The job record: what was asked for (source), where it is (status, step, attempt, agent), when things
//! happened (timestamps) and what came of it (per-step results, failure reason). No I/O here.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest `failure_reason` stored, in bytes (a longer one is cut on a character boundary and marked).
pub const MAX_FAILURE_REASON: usize = 2048;

/// The marker ending a cut `failure_reason`.
pub const REASON_CUT_MARK: &str = " … [truncated]";

/// A failure reason within `MAX_FAILURE_REASON` bytes (marker included): a longer one is cut on a
/// character boundary and ends with `REASON_CUT_MARK`.
pub fn bound_reason(reason: &str) -> String {
    if reason.len() <= MAX_FAILURE_REASON {
        return reason.to_string();
    }
    let mut end = MAX_FAILURE_REASON - REASON_CUT_MARK.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{REASON_CUT_MARK}", &reason[..end])
}

/// A job id: a ULID (26 Crockford base32 characters, sortable by creation time). The only way to get
/// one is [`JobId::new`] or [`JobId::parse`] (also what deserialisation uses), so an id read from a
/// stream entry, a record or a URL is validated where it is read; Redis keys and workspace paths are
/// built only from a `JobId` (issue 8 §2: an id such as `../cache` can never name a directory).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schemars(description = "A job id: a ULID (26 Crockford base32 characters, sortable by time).")]
pub struct JobId(String);

/// Why a string is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a job id (26 Crockford base32 characters, a ULID)")]
pub struct InvalidJobId(pub String);

impl JobId {
    /// A fresh id.
    pub fn new() -> JobId {
        JobId(ulid::Ulid::new().to_string())
    }

    /// Validate an id read from anywhere outside this process.
    pub fn parse(s: &str) -> Result<JobId, InvalidJobId> {
        if is_valid_job_id(s) {
            Ok(JobId(s.to_string()))
        } else {
            // Bounded and printable, for error messages and dead-letter reasons.
            let shown: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
            Err(InvalidJobId(shown))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<JobId, InvalidJobId> {
        JobId::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl std::ops::Deref for JobId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for JobId {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for JobId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for JobId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(feature = "queue")]
impl redis::ToRedisArgs for JobId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg(self.0.as_bytes())
    }
}

#[cfg(feature = "queue")]
impl redis::ToSingleRedisArg for JobId {}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new job id as a string.
pub fn new_job_id() -> String {
    JobId::new().0
}

/// True when `id` is a ULID: 26 characters of Crockford base32 (`0-9`, `A-Z` without `I L O U`).
pub fn is_valid_job_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

/// Lifecycle status of a job. Image jobs run through `building`, `testing`, `publishing` (running-type
/// variants) instead of `running`; consumers must treat unknown statuses as "not final".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the stream, not yet claimed by an agent.
    Queued,
    /// Claimed by an agent and running.
    Running,
    /// Image job: `buildah build` is running.
    Building,
    /// Image job: the test commands run inside the built image.
    Testing,
    /// Image job: `buildah push` of each tag.
    Publishing,
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
    pub const ALL: [Status; 9] = [
        Status::Queued,
        Status::Running,
        Status::Building,
        Status::Testing,
        Status::Publishing,
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
            Status::Building => "building",
            Status::Testing => "testing",
            Status::Publishing => "publishing",
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

/// The kind of job, which decides the agent pool (stream and consumer group, `contract::kinds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// A Rust build (the default pipeline or `.raibid.yaml` steps).
    #[default]
    Rust,
    /// A container image build, test and publish with Buildah.
    Image,
    /// A Rust pipeline that needs a GPU: only agents that found one at start take it.
    Gpu,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 3] = [JobKind::Rust, JobKind::Image, JobKind::Gpu];

    /// The snake_case name (`contract::kinds::Route::kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Rust => "rust",
            JobKind::Image => "image",
            JobKind::Gpu => "gpu",
        }
    }

    /// Parse the name.
    pub fn parse(s: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// This kind's stream and consumer group.
    pub fn route(self) -> crate::contract::kinds::Route {
        match self {
            JobKind::Rust => crate::contract::kinds::RUST,
            JobKind::Image => crate::contract::kinds::IMAGE,
            JobKind::Gpu => crate::contract::kinds::GPU,
        }
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
    /// A schedule came due (or was run now): `schedule_id` names it.
    Schedule,
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
#[schemars(description = "A submitted patch: its size and digest.")]
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
    /// An agent claimed it: the moment the job's stream entry was delivered to that agent.
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

/// One GPU as a GPU agent found it at start (`nvidia-smi -q`: product name, UUID, driver and CUDA
/// version) and as the job's steps see it (`NVIDIA_VISIBLE_DEVICES`/`CUDA_VISIBLE_DEVICES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(description = "The GPU a GPU agent ran the job on.")]
pub struct GpuInfo {
    /// Product name (e.g. `NVIDIA GB10`).
    pub name: String,
    /// GPU UUID (`GPU-…`).
    pub uuid: String,
    /// Driver version (e.g. `580.95.05`).
    pub driver_version: String,
    /// CUDA version the driver supports (e.g. `13.0`).
    pub cuda_version: String,
}

// Lines: entries of the job's log stream (the agent's own lines and markers included); bytes: as the
// cap counts them (each line's fields plus a per-entry overhead). Short docs: they are in MCP's schema.
/// Log kept and dropped at the cap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogTruncation {
    /// Lines kept.
    pub kept_lines: u64,
    /// Bytes kept.
    pub kept_bytes: u64,
    /// Lines dropped.
    pub dropped_lines: u64,
    /// Bytes dropped.
    pub dropped_bytes: u64,
}

impl fmt::Display for LogTruncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kept {} lines ({} bytes), dropped {} lines ({} bytes)",
            self.kept_lines, self.kept_bytes, self.dropped_lines, self.dropped_bytes
        )
    }
}

/// A job record as stored in `raibid:job:{id}` and returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// Job id.
    pub id: JobId,
    /// Kind (decides the agent pool); records written before kinds existed are Rust jobs.
    #[serde(default)]
    pub kind: JobKind,
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
    #[schemars(skip)]
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
    /// The schedule that made this job (`trigger.kind` is `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<String>,
    /// A pipeline variant: variables every step sees (a schedule's `env`, e.g. `CARGO_UPDATE=1`),
    /// over the pipeline's own `env`, under its secrets; only names `schedule::variant_key_allowed` accepts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// A user asked to cancel it.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Cargo compilation units of the job's steps (fresh = reused from the target directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<crate::cargo_messages::CargoUnits>,
    /// What the caches did for this job (git mirror, cargo target slot), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache_stats::CacheStats>,
    /// Image jobs: the request, per-phase timestamps, the failed phase, pushed digests (`image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub image: Option<crate::image::ImageJob>,
    /// GPU jobs: the GPU(s) the agent ran it on, as the agent probed them at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<Vec<GpuInfo>>,
    /// The files `.raibid.yaml` `artifacts:` uploaded to the registry (name, size, digest, reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub artifacts: Option<crate::artifacts::ArtifactSet>,
    /// Build matrices: the group this job is (its cells) or the cell it is (group and axis values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<crate::matrix::JobMatrix>,
    /// The job that handed this one over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub handed_over_from: Option<JobId>,
    /// The job this one was handed over to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub handed_over_to: Option<JobId>,
    /// Set when the log hit its cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_truncated: Option<LogTruncation>,
    /// The job's public page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
    /// Fields this version does not know (written by a newer one), kept as they are through every
    /// rewrite of the record (issue 8 §8: a newer record is never silently damaged or dropped).
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Job {
    /// A new queued job for `source`, received now.
    pub fn new(source: Source, now: DateTime<Utc>) -> Job {
        Job {
            id: JobId::new(),
            kind: JobKind::Rust,
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
            schedule_id: None,
            env: std::collections::BTreeMap::new(),
            cancel_requested: false,
            cargo: None,
            cache: None,
            image: None,
            gpu: None,
            artifacts: None,
            matrix: None,
            handed_over_from: None,
            handed_over_to: None,
            log_truncated: None,
            page_url: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The record as the API shows it: without the lease token and stream bookkeeping.
    pub fn public(&self) -> Job {
        let mut j = self.clone();
        j.lease = None;
        j.page_url = None;
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
        self.failure_reason = reason.map(|r| bound_reason(&r));
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

    /// The commit-status context, `raibid/<pipeline>`; a matrix cell's adds its values,
    /// `raibid/ci (features=serde)`.
    pub fn status_context(&self) -> String {
        let base = format!("raibid/{}", self.pipeline.as_deref().unwrap_or("ci"));
        crate::matrix::context_of(self, base)
    }

    /// The cell this job is, when it is one.
    pub fn matrix_cell(&self) -> Option<&crate::matrix::MatrixCell> {
        match &self.matrix {
            Some(crate::matrix::JobMatrix::Cell(c)) => Some(c),
            _ => None,
        }
    }

    /// The group this job is, when it is one.
    pub fn matrix_group(&self) -> Option<&crate::matrix::MatrixGroup> {
        match &self.matrix {
            Some(crate::matrix::JobMatrix::Group(g)) => Some(g),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_reason_is_bounded_on_a_character_boundary_and_marked() {
        let mut j = Job::new(src(), Utc::now());
        let long = format!("x{}", "é".repeat(40 * 1024));
        j.finish(Status::Failed, Some(long.clone()), Utc::now());
        let r = j.failure_reason.clone().unwrap();
        assert!(r.len() <= MAX_FAILURE_REASON, "{}", r.len());
        assert!(r.ends_with(REASON_CUT_MARK));
        assert!(long.starts_with(r.trim_end_matches(REASON_CUT_MARK)));
        j.finish(Status::Failed, Some("short".into()), Utc::now());
        assert_eq!(j.failure_reason.as_deref(), Some("short"));
    }

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
        for s in [Status::Building, Status::Testing, Status::Publishing] {
            assert!(!s.is_final());
        }
        assert!(Status::TimedOut.is_final());
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn kinds_route_to_their_own_stream() {
        for k in JobKind::ALL {
            let r = k.route();
            assert_eq!(r.kind, k.as_str());
            assert_eq!(crate::contract::kinds::route(k.as_str()), Some(r));
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
        }
        assert_ne!(JobKind::Rust.route().stream, JobKind::Image.route().stream);
        let old: Job = serde_json::from_value(serde_json::json!({
            "id": "01J00000000000000000000000", "status": "queued", "step": null, "attempt": 0,
            "agent": null, "source": {"repo_url": "file:///x", "ref": "main", "sha": null,
            "trigger": {"kind": "api", "actor": null}, "delivery_id": null, "forge_repo": null},
            "pipeline": null, "timestamps": {}, "steps": [], "failure_reason": null, "retry_of": null
        })).unwrap();
        assert_eq!(old.kind, JobKind::Rust);
    }

    #[test]
    fn job_ids_are_valid_and_unique() {
        let a = new_job_id();
        let b = new_job_id();
        assert!(is_valid_job_id(&a));
        assert_ne!(a, b);
        assert!(!is_valid_job_id("../../etc"));
        assert!(!is_valid_job_id("../cache/aaaaaaaaaaaaaaaaaa"));
        assert!(!is_valid_job_id("01J0000000000000000000000/"));
        assert!(JobId::parse("/x").is_err());
        assert!(JobId::parse(&a).is_ok());
        // Deserialisation validates too.
        assert!(serde_json::from_str::<JobId>("\"../cache\"").is_err());
        assert_eq!(
            serde_json::from_str::<JobId>(&format!("\"{a}\"")).unwrap(),
            a.as_str()
        );
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
