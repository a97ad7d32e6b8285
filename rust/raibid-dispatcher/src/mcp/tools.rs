//! The MCP tools. Inputs are the REST request types (`requests::SubmitJob`, `requests::ListJobs`) or
//! small argument types here; outputs are `Job`, `JobPage` and answer types with `JsonSchema`, so the
//! schema a client sees is derived from the type the handler deserializes. A failure is a tool error
//! (`isError: true`) whose text says what to do next, never a protocol error.

use super::logs::{self, LogsQuery};
use crate::requests::{self, JobPage, ListJobs, SubmitJob};
use crate::AppState;
use raibid_core::cargo_messages::{severity_rank, CompilerMessage, Diagnostics, FailingTest};
use raibid_core::contract;
use raibid_core::job::{is_valid_job_id, Job, Status};
use raibid_core::queue::{Enqueued, QueueError};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, Json, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Default and longest `wait_for_job` wait: under the ~60 s after which MCP clients give up on a call.
pub const WAIT_DEFAULT_SECS: u32 = 40;
/// Longest wait.
pub const WAIT_MAX_SECS: u32 = 50;
/// Size budget of a `get_diagnostics` answer (serialized), like `get_logs`.
pub const DIAG_BUDGET_BYTES: usize = 40_000;

/// The MCP server: one per request (stateless), over the shared state.
#[derive(Clone)]
pub struct Raibid {
    state: AppState,
    tool_router: ToolRouter<Raibid>,
}

/// A job, by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    /// Job id (26 characters, from submit_job or list_jobs).
    pub job_id: String,
}

/// `wait_for_job` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForJob {
    /// Job id.
    pub job_id: String,
    /// Seconds to wait at most (default 40, at most 50).
    #[serde(default)]
    #[schemars(range(min = 1, max = 50))]
    pub timeout_secs: Option<u32>,
}

/// `get_diagnostics` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsQuery {
    /// Job id.
    pub job_id: String,
    /// Skip this many compiler messages (paging; `next_offset` of the previous answer).
    #[serde(default)]
    pub offset: Option<u32>,
    /// Most compiler messages to return (default 50, at most 500); the size budget may cut earlier.
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// Only messages at least this severe: `error`, `warning` (default), `note`, `help`.
    #[serde(default)]
    pub min_level: Option<String>,
    /// Include each message's rendered snippet (default true).
    #[serde(default)]
    pub rendered: Option<bool>,
}

/// `submit_job` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Submitted {
    /// The new job's id.
    pub job_id: String,
    /// `queued`.
    pub status: Status,
    /// The job in the REST API.
    pub url: String,
    /// What to call next.
    pub next: String,
}

/// `wait_for_job` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Waited {
    /// The job reached a final status (succeeded, failed, cancelled, timed_out).
    pub finished: bool,
    /// Seconds waited.
    pub waited_secs: f64,
    /// The job now.
    pub job: Job,
    /// What to call next.
    pub next: String,
}

/// The last lines of a step, when it produced no structured output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StepTail {
    /// The step.
    pub step: String,
    /// Its last lines.
    pub lines: Vec<logs::Line>,
    /// Why these lines are here.
    pub note: String,
}

/// `get_diagnostics` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DiagnosticsAnswer {
    /// Job id.
    pub job_id: String,
    /// Job status.
    pub status: Status,
    /// Why the job failed, when it did.
    pub failure_reason: Option<String>,
    /// Distinct compiler errors in the job.
    pub errors: u64,
    /// Distinct compiler warnings in the job.
    pub warnings: u64,
    /// Compiler messages (most severe first), from `offset`.
    pub compiler: Vec<CompilerMessage>,
    /// Failing tests: name, panic message, file:line, captured output.
    pub tests: Vec<FailingTest>,
    /// Messages matching `min_level` in all.
    pub total_compiler: u64,
    /// Pass as `offset` for the next messages; absent when none are left.
    pub next_offset: Option<u64>,
    /// What was left out.
    pub cut: Option<String>,
    /// For a job that failed in a step without structured output: that step's last lines.
    pub step_tail: Option<StepTail>,
}

/// `queue_status` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct QueueStatus {
    /// Entries in the job stream (waiting + running).
    pub length: u64,
    /// Jobs never delivered to an agent (what KEDA scales on); null when Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered, not yet acknowledged.
    pub pending: u64,
    /// Jobs queued now.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    /// Agents with a live heartbeat.
    pub agents: u64,
    /// Age of the oldest waiting job in seconds.
    pub oldest_waiting_age_secs: Option<f64>,
}

/// `cleanup` answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Cleaned {
    /// Job id.
    pub job_id: String,
    /// Redis keys deleted (record, log, diagnostics, patch).
    pub deleted_keys: u64,
}

fn queue_err(e: QueueError) -> String {
    match e {
        QueueError::NotFound(id) => {
            format!("job {id} not found (it may have expired); call list_jobs to see recent jobs")
        }
        QueueError::Conflict(m) => m,
        QueueError::Redis(e) => {
            tracing::error!(error = %e, "redis error");
            "the job queue is unavailable; retry in a few seconds".into()
        }
        other => {
            tracing::error!(error = %other, "internal error");
            "internal error; retry, and report it if it persists".into()
        }
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if is_valid_job_id(id) {
        Ok(())
    } else {
        Err(format!(
            "job_id: `{}` is not a job id (26 letters and digits, as returned by submit_job)",
            id.chars().take(40).collect::<String>()
        ))
    }
}

fn next_for(job: &Job) -> String {
    match job.status {
        Status::Succeeded => "the job succeeded; get_logs shows its output".into(),
        Status::Failed | Status::TimedOut => format!(
            "call get_diagnostics with job_id={} for compiler errors and failing tests, or get_logs for the failed step",
            job.id
        ),
        Status::Cancelled => format!("cancelled; retry_job with job_id={} runs it again", job.id),
        _ => format!("call wait_for_job with job_id={} again", job.id),
    }
}

#[tool_router(router = tool_router)]
impl Raibid {
    /// A server over the dispatcher's state.
    pub fn new(state: AppState) -> Raibid {
        Raibid {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// The tool router (for schema tests).
    pub fn tools(&self) -> &ToolRouter<Raibid> {
        &self.tool_router
    }

    #[tool(
        name = "submit_job",
        description = "Build and test a commit on the CI box: clone `repo_url` at `ref` (optionally an exact `sha`), optionally apply `patch` (a unified diff from `git diff` against that commit, for uncommitted work), run the repository's pipeline (.raibid.yaml, or cargo build + cargo test). Returns the job id at once; then call wait_for_job."
    )]
    async fn submit_job(
        &self,
        Parameters(req): Parameters<SubmitJob>,
    ) -> Result<Json<Submitted>, String> {
        let v = requests::validate_submit(req, &self.state.settings.notify_allowed_hosts)?;
        requests::check_policy(
            &self.state,
            &v.repo_url,
            v.notify_url.as_deref(),
            v.image.as_ref(),
        )?;
        match requests::create_job(&self.state, v, Some("mcp".into()))
            .await
            .map_err(queue_err)?
        {
            Enqueued::New(job) => Ok(Json(Submitted {
                url: format!(
                    "{}{}/jobs/{}",
                    self.state.settings.public_url,
                    contract::http::API_PREFIX,
                    job.id
                ),
                next: format!(
                    "call wait_for_job with job_id={} (it returns within 50 s; call it again while finished is false)",
                    job.id
                ),
                job_id: job.id.to_string(),
                status: job.status,
            })),
            Enqueued::Duplicate(id) => Err(format!("duplicate of job {id}")),
        }
    }

    #[tool(
        name = "wait_for_job",
        description = "Wait until a job is final or `timeout_secs` pass (default 40, at most 50, under the client's call timeout), sending progress notifications meanwhile. Returns `finished` (true: final) and the job. While finished is false, call it again. After a failure call get_diagnostics.",
        annotations(read_only_hint = true)
    )]
    async fn wait_for_job(
        &self,
        Parameters(req): Parameters<WaitForJob>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<Waited>, String> {
        check_id(&req.job_id)?;
        let secs = req.timeout_secs.unwrap_or(WAIT_DEFAULT_SECS);
        if !(1..=WAIT_MAX_SECS).contains(&secs) {
            return Err(format!(
                "timeout_secs: must be between 1 and {WAIT_MAX_SECS} (MCP clients give up on calls after about 60 s; call again instead)"
            ));
        }
        let token = ctx.meta.get_progress_token();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(secs));
        let mut last_note = (None::<String>, Status::Queued);
        let mut last_sent = Instant::now() - Duration::from_secs(60);
        loop {
            let job = self
                .state
                .queue
                .get(&req.job_id)
                .await
                .map_err(queue_err)?
                .public();
            let now = Instant::now();
            let waited = (now - started).as_secs_f64();
            if job.status.is_final() || now >= deadline || ctx.ct.is_cancelled() {
                let finished = job.status.is_final();
                return Ok(Json(Waited {
                    finished,
                    waited_secs: (waited * 10.0).round() / 10.0,
                    next: next_for(&job),
                    job,
                }));
            }
            let note = (job.step.clone(), job.status);
            if let Some(t) = token.clone() {
                if note != last_note || now - last_sent >= Duration::from_secs(5) {
                    let msg = match (&job.step, job.status) {
                        (Some(s), Status::Running) => {
                            format!("running step `{s}` ({} step(s) so far)", job.steps.len())
                        }
                        (_, st) => format!("{st}"),
                    };
                    let _ = ctx
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(t, waited)
                                .with_total(f64::from(secs))
                                .with_message(msg),
                        )
                        .await;
                    last_sent = now;
                    last_note = note;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250).min(deadline - now)) => {}
                _ = ctx.ct.cancelled() => {}
            }
        }
    }

    #[tool(
        name = "get_job",
        description = "A job's record: status, current or failed step, every step with exit code and duration, timestamps, failure reason, attempt, cargo unit counts (fresh/total) and the cache figures (`cache`: target-slot key and slot, restore kind warm/seeded/cold, units fresh/total, lock and restore ms, slot bytes, git mirror hit, fetched objects/bytes) when present.",
        annotations(read_only_hint = true)
    )]
    async fn get_job(&self, Parameters(req): Parameters<JobRef>) -> Result<Json<Job>, String> {
        check_id(&req.job_id)?;
        Ok(Json(
            self.state
                .queue
                .get(&req.job_id)
                .await
                .map_err(queue_err)?
                .public(),
        ))
    }

    #[tool(
        name = "get_diagnostics",
        description = "What failed, precisely: compiler messages (level, code such as E0308, message, file, line, column, rendered snippet), deduplicated and most severe first, and failing tests (name, panic message, file:line, captured output). For a step without structured output, that step's last lines. Page with offset.",
        annotations(read_only_hint = true)
    )]
    async fn get_diagnostics(
        &self,
        Parameters(req): Parameters<DiagnosticsQuery>,
    ) -> Result<Json<DiagnosticsAnswer>, String> {
        check_id(&req.job_id)?;
        let limit = req.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err("limit: must be between 1 and 500".into());
        }
        let min_rank = match req.min_level.as_deref().unwrap_or("warning") {
            "error" => 0,
            "warning" => 1,
            "note" => 2,
            "help" => 4,
            other => {
                return Err(format!(
                    "min_level: `{other}` is not one of error, warning, note, help"
                ))
            }
        };
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        let mut con = self.state.queue.redis();
        let raw: Option<String> = redis::cmd("GET")
            .arg(contract::job_diagnostics_key(&job.id))
            .query_async(&mut con)
            .await
            .map_err(|e| queue_err(QueueError::Redis(e)))?;
        let d: Diagnostics = raw
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default();
        Ok(Json(
            diagnostics_answer(&self.state, &job, d, &req, limit, min_rank).await?,
        ))
    }

    #[tool(
        name = "get_logs",
        description = "A bounded window of a job's log (never the whole log): by default the last 200 lines of the failed (or last) step; `step` for one step; `from_line` + `max_lines` for a range; `search` (regex) with `context` lines. Every answer stays under ~10k tokens of lines, says what was cut, and gives `next` (cursor / from_line) to continue.",
        annotations(read_only_hint = true)
    )]
    async fn get_logs(
        &self,
        Parameters(req): Parameters<LogsQuery>,
    ) -> Result<Json<logs::LogsAnswer>, String> {
        check_id(&req.job_id)?;
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        let step = if job.status == Status::Succeeded {
            None
        } else {
            job.step.clone()
        };
        logs::answer(
            &self.state.queue,
            &req,
            job.status.as_str(),
            step.as_deref(),
        )
        .await
        .map_err(queue_err)?
        .map(Json)
    }

    #[tool(
        name = "list_jobs",
        description = "Recent jobs, newest first, filtered by repo (substring of the URL), status and ref; paginated with cursor = next_cursor.",
        annotations(read_only_hint = true)
    )]
    async fn list_jobs(
        &self,
        Parameters(req): Parameters<ListJobs>,
    ) -> Result<Json<JobPage>, String> {
        requests::list_jobs(&self.state, &req, 20)
            .await
            .map_err(queue_err)?
            .map(Json)
    }

    #[tool(
        name = "cancel_job",
        description = "Cancel a queued or running job (a running job's agent stops its step). Returns the job; wait_for_job shows the final status.",
        annotations(destructive_hint = true)
    )]
    async fn cancel_job(&self, Parameters(req): Parameters<JobRef>) -> Result<Json<Job>, String> {
        check_id(&req.job_id)?;
        Ok(Json(
            self.state
                .queue
                .cancel(&req.job_id)
                .await
                .map_err(queue_err)?
                .public(),
        ))
    }

    #[tool(
        name = "retry_job",
        description = "Run a finished job again (same repository, ref, sha and patch) as a new job. Returns the new job; then call wait_for_job with its id."
    )]
    async fn retry_job(&self, Parameters(req): Parameters<JobRef>) -> Result<Json<Job>, String> {
        check_id(&req.job_id)?;
        requests::retry(&self.state, &req.job_id)
            .await
            .map_err(queue_err)?
            .map(|j| Json(j.public()))
            .map_err(|r| r.message().to_string())
    }

    #[tool(
        name = "queue_status",
        description = "The CI queue now: stream length, lag (jobs no agent has taken yet), queued and running jobs, live agents, age of the oldest waiting job.",
        annotations(read_only_hint = true)
    )]
    async fn queue_status(&self) -> Result<Json<QueueStatus>, String> {
        let s = self.state.queue.stats().await.map_err(queue_err)?;
        let counts = self
            .state
            .queue
            .count_by_status()
            .await
            .map_err(queue_err)?;
        let agents = self.state.queue.agents().await.map_err(queue_err)?;
        Ok(Json(QueueStatus {
            length: s.length,
            lag: s.lag,
            pending: s.pending,
            queued: counts.get(&Status::Queued).copied().unwrap_or(0),
            running: counts.get(&Status::Running).copied().unwrap_or(0),
            agents: agents.len() as u64,
            oldest_waiting_age_secs: s.oldest_waiting_age_secs,
        }))
    }

    #[tool(
        name = "cleanup",
        description = "Delete a finished job's record, log, diagnostics and patch; for an image job also ask the image agents to remove its local images (pushed tags stay in the registry). Refused for a queued or running job (cancel it first).",
        annotations(destructive_hint = true)
    )]
    async fn cleanup(&self, Parameters(req): Parameters<JobRef>) -> Result<Json<Cleaned>, String> {
        check_id(&req.job_id)?;
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        if !job.status.is_final() {
            return Err(format!(
                "job {} is {}; only a finished job can be cleaned up (cancel_job first)",
                job.id, job.status
            ));
        }
        let id = &job.id;
        if job.kind == raibid_core::job::JobKind::Image {
            // Its images live in the image agents' storage: they remove them before their next job
            // (the same request as `DELETE /api/v1/jobs/{id}/images`).
            raibid_core::image::request_cleanup(&self.state.queue, id, crate::images::CLEANUP_KEEP)
                .await
                .map_err(|e| queue_err(QueueError::Redis(e)))?;
        }
        let mut con = self.state.queue.redis();
        let n: u64 = redis::cmd("DEL")
            .arg(contract::job_key(id))
            .arg(contract::job_log_key(id))
            .arg(contract::job_diagnostics_key(id))
            .arg(contract::job_patch_key(id))
            .arg(contract::job_notified_key(id))
            .query_async(&mut con)
            .await
            .map_err(|e| queue_err(QueueError::Redis(e)))?;
        let _: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(contract::keys::JOB_INDEX)
            .arg(id)
            .query_async(&mut con)
            .await;
        Ok(Json(Cleaned {
            job_id: id.to_string(),
            deleted_keys: n,
        }))
    }
}

async fn diagnostics_answer(
    state: &AppState,
    job: &Job,
    d: Diagnostics,
    req: &DiagnosticsQuery,
    limit: u32,
    min_rank: u8,
) -> Result<DiagnosticsAnswer, String> {
    let errors = d
        .compiler
        .iter()
        .filter(|m| severity_rank(&m.level) == 0)
        .count() as u64;
    let warnings = d.compiler.iter().filter(|m| m.level == "warning").count() as u64;
    let mut all: Vec<CompilerMessage> = d
        .compiler
        .into_iter()
        .filter(|m| severity_rank(&m.level) <= min_rank)
        .collect();
    all.sort_by_key(|m| severity_rank(&m.level));
    let total = all.len() as u64;
    let offset = req.offset.unwrap_or(0) as usize;
    let with_rendered = req.rendered.unwrap_or(true);
    let mut used = 0usize;
    let mut cut = Vec::new();
    let mut tests = Vec::new();
    for t in d.tests {
        let c = serde_json::to_string(&t).map_or(0, |s| s.len());
        if used + c > DIAG_BUDGET_BYTES / 2 {
            cut.push(format!("failing tests after `{}`", t.name));
            break;
        }
        used += c;
        tests.push(t);
    }
    let mut compiler = Vec::new();
    let mut next = None;
    for (i, mut m) in all.into_iter().enumerate().skip(offset) {
        if compiler.len() >= limit as usize {
            next = Some(i as u64);
            break;
        }
        if !with_rendered {
            m.rendered = None;
        }
        let c = serde_json::to_string(&m).map_or(0, |s| s.len());
        if used + c > DIAG_BUDGET_BYTES {
            next = Some(i as u64);
            cut.push(format!(
                "compiler messages from #{i} on (the {DIAG_BUDGET_BYTES}-byte budget); ask with offset={i}, or rendered=false for more per answer"
            ));
            break;
        }
        used += c;
        compiler.push(m);
    }
    if next.is_some() && cut.iter().all(|c| !c.starts_with("compiler")) {
        cut.push(format!(
            "compiler messages after the first {limit}; ask with offset={}",
            next.unwrap_or(0)
        ));
    }
    if d.dropped > 0 {
        cut.push(format!(
            "{} distinct messages past the agent's cap were never stored",
            d.dropped
        ));
    }
    // A failed step that left nothing structured: its last lines instead.
    let mut step_tail = None;
    if matches!(job.status, Status::Failed | Status::TimedOut)
        && compiler.iter().all(|m| severity_rank(&m.level) != 0)
        && tests.is_empty()
    {
        if let Some(step) = job.step.clone() {
            let q = LogsQuery {
                job_id: job.id.to_string(),
                step: Some(step.clone()),
                max_lines: Some(40),
                ..LogsQuery::default()
            };
            if let Ok(Ok(a)) =
                logs::answer(&state.queue, &q, job.status.as_str(), Some(&step)).await
            {
                step_tail = Some(StepTail {
                    note: format!(
                        "step `{step}` failed without compiler errors or failing tests the agent could parse; these are its last {} lines (get_logs for more)",
                        a.lines.len()
                    ),
                    step,
                    lines: a.lines,
                });
            }
        }
    }
    Ok(DiagnosticsAnswer {
        job_id: job.id.to_string(),
        status: job.status,
        failure_reason: job.failure_reason.clone(),
        errors,
        warnings,
        compiler,
        tests,
        total_compiler: total,
        next_offset: next,
        cut: (!cut.is_empty()).then(|| cut.join("; ")),
        step_tail,
    })
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Raibid {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("raibid-ci", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "raibid-ci builds and tests Rust repositories on an ARM64 CI box. submit_job (optionally with a patch of your uncommitted changes) → wait_for_job until finished → on failure get_diagnostics (compiler errors with file:line and code, failing tests with panic messages) and get_logs (bounded windows). Logs are never returned whole.",
            )
    }
}
