//! The MCP tools. Inputs are the REST request types (`requests::SubmitJob`, `requests::ListJobs`) or
//! small argument types here; outputs are answer types with `JsonSchema`, so the
//! schema a client sees is derived from the type the handler deserializes. A failure is a tool error
//! (`isError: true`) whose text says what to do next, never a protocol error. Every answer goes through
//! [`budget::fit`] (the one answer budget, measured on the wire) and every result through
//! [`budget::bound_result`].

use super::budget::{self, cut_text, keep_share, note, one_line, Fit};
use super::logs::{self, LogsQuery};
use crate::requests::{self, ListJobs, SubmitJob};
use crate::AppState;
use raibid_core::cargo_messages::{severity_rank, CompilerMessage, Diagnostics, FailingTest};
use raibid_core::contract;
use raibid_core::job::{is_valid_job_id, Job, Status, StepResult};
use raibid_core::queue::{Enqueued, QueueError};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, Json, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Default and longest `wait_for_job` wait: under the ~60 s after which MCP clients give up on a call.
pub const WAIT_DEFAULT_SECS: u32 = 40;
/// Longest wait.
pub const WAIT_MAX_SECS: u32 = 50;
/// Longest `failure_reason` in an answer before the budget cuts more.
pub const MAX_REASON_BYTES: usize = 2_000;
/// Default tail lines of `get_failure_summary` for a step that left no compiler errors or failing
/// tests (a custom step, `patch`, `clone`): its tail is all there is.
pub const SUMMARY_TAIL_DEFAULT: u32 = 30;
/// Default tail lines when the step left compiler errors or failing tests (the tail repeats them).
pub const SUMMARY_TAIL_STRUCTURED: u32 = 6;
/// Most tail lines of `get_failure_summary`.
pub const SUMMARY_TAIL_MAX: u32 = 200;
/// Compiler errors and failing tests `get_failure_summary` lists before the budget cuts more.
pub const SUMMARY_ITEMS: usize = 20;
/// Captured test output kept per failing test in `get_failure_summary` (its tail).
pub const SUMMARY_TEST_OUTPUT_BYTES: usize = 1_024;

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

/// `get_failure_summary` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureQuery {
    /// Job id.
    pub job_id: String,
    /// Also list the compiler warnings (default false: only their count).
    #[serde(default)]
    pub warnings: Option<bool>,
    /// Last lines of the failing step to include (default 30; 6 when it left compiler errors or
    /// failing tests, which the tail would repeat; at most 200).
    #[serde(default)]
    #[schemars(range(min = 1, max = 200))]
    pub tail_lines: Option<u32>,
}

/// `validate_config` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The text of a `.raibid.yaml` (at most 256 KiB).
    pub config: String,
}

/// One step of a valid pipeline.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConfigStep {
    /// Step name.
    pub name: String,
    /// Its command (one line, cut at 200 bytes).
    pub run: String,
    /// Its timeout in seconds, when set.
    pub timeout_secs: Option<u64>,
}

/// `validate_config` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConfigCheck {
    /// True when the agent would run this pipeline.
    pub valid: bool,
    /// What is wrong, naming the key (e.g. ``steps[1].name: `clone` is reserved for the agent's own
    /// step``, or the YAML error with its line and column).
    pub errors: Vec<String>,
    /// Pipeline name (the commit-status context suffix), when valid.
    pub name: Option<String>,
    /// Job timeout in seconds, when valid.
    pub timeout_secs: Option<u64>,
    /// The steps the agent would run after `clone` (and `patch`), in order, when valid.
    pub steps: Vec<ConfigStep>,
    /// Secrets the steps ask for.
    pub secrets: Vec<String>,
    /// True for an image job (`image:`).
    pub image: bool,
    /// What this answer left out.
    pub cut: Option<String>,
}

impl Fit for ConfigCheck {
    /// Degradation: the step list is shortened (the first steps kept).
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.steps.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.steps.truncate(k);
        self.cut = Some(format!("only the first {k} of {n} steps listed"));
        true
    }
}

/// `find_flaky_tests` / `get_test_history` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestHistoryQuery {
    /// Only jobs whose repository URL contains this text.
    #[serde(default)]
    pub repo: Option<String>,
    /// Only jobs of this ref (`main` or `refs/heads/main`).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// For get_test_history: the test's full name, e.g. `tests::adds`.
    #[serde(default)]
    pub test: Option<String>,
    /// How many recent finished jobs to look at (default 200, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000))]
    pub jobs: Option<u32>,
}

/// A test that failed and passed on the same code.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyTest {
    /// Test name.
    pub test: String,
    /// Repository.
    pub repo_url: String,
    /// The commit both runs built.
    pub sha: String,
    /// Jobs where it failed (at most 5 ids).
    pub failed_in: Vec<String>,
    /// Jobs of the same commit (and patch) that succeeded (at most 5 ids).
    pub passed_in: Vec<String>,
    /// The assertion of its latest failure (one line, cut at 300 bytes).
    pub assertion: Option<String>,
}

/// `find_flaky_tests` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FlakyTests {
    /// Finished jobs looked at.
    pub scanned_jobs: u64,
    /// Tests that failed in one job and passed in another of the same commit and patch, most failures
    /// first.
    pub flaky: Vec<FlakyTest>,
    /// What this answer left out.
    pub cut: Option<String>,
}

impl Fit for FlakyTests {
    /// Degradation: the list is shortened (most failures kept).
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.flaky.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.flaky.truncate(k);
        self.cut = Some(format!("only the first {k} of {n} flaky tests"));
        true
    }
}

/// One job's outcome for a test.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestRun {
    /// Job id.
    pub job_id: String,
    /// Commit.
    pub sha: Option<String>,
    /// The job had a patch (uncommitted changes).
    pub patched: bool,
    /// `failed` (the test failed), `passed` (the job succeeded).
    pub outcome: String,
    /// The assertion when it failed (one line, cut at 300 bytes).
    pub assertion: Option<String>,
    /// When the job finished.
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
}

/// `get_test_history` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestHistory {
    /// Test name.
    pub test: String,
    /// Finished jobs looked at.
    pub scanned_jobs: u64,
    /// Runs of the test, newest first (jobs that failed before running it are left out).
    pub runs: Vec<TestRun>,
    /// Failures among `runs`.
    pub failures: u64,
    /// True when it failed and passed on the same commit and patch.
    pub flaky: bool,
    /// What this answer left out.
    pub cut: Option<String>,
}

impl Fit for TestHistory {
    /// Degradation: the oldest runs are left out.
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.runs.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.runs.truncate(k);
        self.cut = Some(format!("only the newest {k} of {n} runs"));
        true
    }
}

/// `submit_job` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
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

impl Fit for Submitted {
    fn degrade(&mut self, _: f64) -> bool {
        false
    }
}

/// `wait_for_job` answer: what a waiting agent needs, not the whole record (get_job has that).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Waited {
    /// The job reached a final status (succeeded, failed, cancelled, timed_out).
    pub finished: bool,
    /// Seconds this call waited.
    pub waited_secs: f64,
    /// Job id.
    pub job_id: String,
    /// Status now.
    pub status: Status,
    /// The step running now, or the step that failed.
    pub step: Option<String>,
    /// That step's exit code, when its process exited.
    pub exit_code: Option<i32>,
    /// Steps started so far.
    pub steps: u64,
    /// Seconds since the job started (to its end once finished).
    pub elapsed_secs: Option<f64>,
    /// The outcome in one line, e.g. ``failed in step `build` (exit 101): …``.
    pub outcome: String,
    /// What to call next.
    pub next: String,
    /// A matrix group: its cells (job id, values, status, step); the group is finished when they all are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cells: Option<Vec<super::groups::CellState>>,
}

impl Fit for Waited {
    fn degrade(&mut self, _: f64) -> bool {
        // Every field is bounded when the answer is made.
        false
    }
}

/// A job record as an MCP answer: the record of `GET /api/v1/jobs/{id}`, bounded by the answer budget.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobView {
    /// The record.
    #[serde(flatten)]
    pub job: Job,
    /// Steps in the record (`steps` holds fewer when `cut` says so: the first and the last ones,
    /// always the failed one).
    pub steps_total: u64,
    /// What this answer left out to stay within the answer budget.
    pub cut: Option<String>,
    /// How to get what was left out.
    pub next: Option<String>,
    #[serde(skip)]
    #[schemars(skip)]
    stage: u8,
}

impl JobView {
    /// The public record of `job`, with its failure reason bounded.
    pub fn new(job: Job) -> JobView {
        let mut v = JobView {
            steps_total: job.steps.len() as u64,
            job: job.public(),
            cut: None,
            next: None,
            stage: 0,
        };
        if let Some(r) = v.job.failure_reason.as_mut() {
            if cut_text(r, MAX_REASON_BYTES) {
                note(&mut v.cut, "failure_reason cut");
            }
        }
        v
    }
}

/// Keep the first `first` and the last `last` steps (and the failed one); say what was left out.
fn summarise_steps(job: &mut Job, first: usize, last: usize) -> Option<String> {
    let n = job.steps.len();
    if n <= first + last + 1 {
        return None;
    }
    let failed = job.step.as_deref();
    let keep = |i: usize, s: &StepResult| {
        i < first || i >= n - last || (Some(s.name.as_str()) == failed && s.status != "succeeded")
    };
    let mut omitted = std::collections::BTreeMap::<String, u64>::new();
    let mut kept = Vec::new();
    for (i, s) in std::mem::take(&mut job.steps).into_iter().enumerate() {
        if keep(i, &s) {
            kept.push(s);
        } else {
            *omitted.entry(s.status.clone()).or_default() += 1;
        }
    }
    job.steps = kept;
    let total: u64 = omitted.values().sum();
    let by: Vec<String> = omitted.iter().map(|(k, v)| format!("{v} {k}")).collect();
    Some(format!(
        "{total} of {n} steps summarised ({}); kept the first {first} and the last {last}",
        by.join(", ")
    ))
}

/// Degradation order of a job record: (1) unknown fields and image details left out, (2) steps
/// summarised (the first 3, the failed one and the last ones, fewer each time), (3) the failure
/// reason cut to 300 bytes.
fn degrade_job(job: &mut Job, stage: &mut u8, ratio: f64, cut: &mut Option<String>) -> bool {
    loop {
        *stage += 1;
        match *stage {
            1 => {
                if !job.extra.is_empty() || job.image.is_some() || job.artifacts.is_some() {
                    job.extra.clear();
                    job.image = None;
                    job.artifacts = None;
                    note(
                        cut,
                        "image details, artifacts (list_artifacts) and unknown fields left out",
                    );
                    return true;
                }
            }
            2..=8 => {
                let n = job.steps.len();
                let last = keep_share(n, ratio, 2).min(n / 2).max(1);
                let last = if *stage == 8 { 1 } else { last };
                if let Some(what) = summarise_steps(job, 3, last) {
                    note(cut, what);
                    return true;
                }
            }
            9 => {
                if let Some(r) = job.failure_reason.as_mut() {
                    if cut_text(r, 300) {
                        note(cut, "failure_reason cut to 300 bytes");
                        return true;
                    }
                }
            }
            _ => return false,
        }
    }
}

impl Fit for JobView {
    fn degrade(&mut self, ratio: f64) -> bool {
        let ok = degrade_job(&mut self.job, &mut self.stage, ratio, &mut self.cut);
        if ok {
            self.next = Some(format!(
                "get_logs with job_id={} and step=<name> reads any step's output; GET /api/v1/jobs/{} has the whole record",
                self.job.id, self.job.id
            ));
        }
        ok
    }
}

/// A job in a list: what tells jobs apart, not the whole record (get_job has that).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobSummary {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// The step running now, or the step that failed.
    pub step: Option<String>,
    /// Clone URL.
    pub repo_url: String,
    /// Git ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit sha, when pinned.
    pub sha: Option<String>,
    /// Steps started.
    pub steps: u64,
    /// Why it failed, in one line (cut at 200 bytes).
    pub failure_reason: Option<String>,
    /// When the dispatcher received it.
    pub received: Option<chrono::DateTime<chrono::Utc>>,
    /// When it finished.
    pub finished: Option<chrono::DateTime<chrono::Utc>>,
    /// The job this one retries.
    pub retry_of: Option<String>,
}

impl JobSummary {
    fn of(j: &Job) -> JobSummary {
        JobSummary {
            id: j.id.to_string(),
            status: j.status,
            step: j.step.as_deref().map(|s| one_line(s, 200)),
            repo_url: one_line(&j.source.repo_url, 500),
            git_ref: one_line(&j.source.git_ref, 300),
            sha: j.source.sha.clone(),
            steps: j.steps.len() as u64,
            failure_reason: j.failure_reason.as_deref().map(|r| one_line(r, 200)),
            received: j.timestamps.received,
            finished: j.timestamps.finished,
            retry_of: j.retry_of.clone(),
        }
    }
}

/// `list_jobs` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobList {
    /// Jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` (with the same filters) for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// What this page left out (the answer budget shortens a page).
    pub cut: Option<String>,
}

impl Fit for JobList {
    /// Degradation: the page is shortened (newest jobs kept) and `next_cursor` continues after it.
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.jobs.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.jobs.truncate(k);
        self.next_cursor = self.jobs.last().map(|j| j.id.clone());
        self.cut = Some(format!(
            "page shortened to {k} job(s) by the answer budget; continue with cursor={}",
            self.next_cursor.as_deref().unwrap_or("")
        ));
        true
    }
}

/// `cancel_job` / `retry_job` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobBrief {
    /// Job id (for retry_job: the new job).
    pub job_id: String,
    /// Status now.
    pub status: Status,
    /// A cancel was requested.
    pub cancel_requested: bool,
    /// The job this one retries.
    pub retry_of: Option<String>,
    /// What to call next.
    pub next: String,
}

impl Fit for JobBrief {
    fn degrade(&mut self, _: f64) -> bool {
        false
    }
}

/// The last lines of a step, when it produced no structured output.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepTail {
    /// The step.
    pub step: String,
    /// Its last lines.
    pub lines: Vec<logs::Line>,
    /// Why these lines are here.
    pub note: String,
}

impl StepTail {
    /// Keep about `ratio` of the lines (the newest); false when one or none is left.
    fn shrink(&mut self, ratio: f64) -> bool {
        let n = self.lines.len();
        if n <= 1 {
            return false;
        }
        let k = keep_share(n, ratio, 1);
        self.lines.drain(..n - k);
        self.note = format!(
            "{} (cut to its last {k} lines by the answer budget)",
            self.note
        );
        true
    }
}

/// `get_diagnostics` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
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
    /// A matrix group: the answer of each failing cell (`job_id` names the cell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<DiagnosticsAnswer>,
    #[serde(skip)]
    #[schemars(skip)]
    offset: u64,
    #[serde(skip)]
    #[schemars(skip)]
    stage: u8,
}

/// Cut each test's captured output to its last `max` bytes; true when any was cut.
fn cut_outputs(tests: &mut [FailingTest], max: usize) -> bool {
    let mut any = false;
    for t in tests {
        let (tail, cut) = raibid_core::cargo_messages::truncate_tail(&t.output, max);
        if cut {
            t.output = tail.to_string();
            t.output_truncated = true;
            any = true;
        }
    }
    any
}

/// Cut every text of each message to `max` bytes; true when any was cut.
fn cut_messages(ms: &mut [CompilerMessage], max: usize) -> bool {
    let mut any = false;
    for m in ms {
        any |= cut_text(&mut m.message, max);
        if let Some(r) = m.rendered.as_mut() {
            any |= cut_text(r, max);
        }
        for s in &mut m.suggestions {
            any |= cut_text(&mut s.message, max);
        }
    }
    any
}

impl Fit for DiagnosticsAnswer {
    /// Degradation order: the step tail is cut to its newest lines; compiler messages are paged
    /// (`next_offset`; warnings go first, errors come first in the list); failing tests are cut to
    /// the first ones; their outputs to the last 512 bytes; rendered snippets and messages to 1 kB.
    fn degrade(&mut self, ratio: f64) -> bool {
        // A matrix group: its cells' answers first (`groups::degrade_cells`).
        if super::groups::degrade_cells(self, ratio) {
            return true;
        }
        loop {
            match self.stage {
                0 => {
                    if let Some(t) = self.step_tail.as_mut() {
                        if t.lines.len() > 5 && t.shrink(ratio) {
                            return true;
                        }
                    }
                }
                1 => {
                    let n = self.compiler.len();
                    if n > 1 {
                        let k = keep_share(n, ratio, 1);
                        self.compiler.truncate(k);
                        let next = self.offset + k as u64;
                        self.next_offset = Some(next);
                        note(
                            &mut self.cut,
                            format!("compiler messages from #{next} on (the answer budget); ask with offset={next}, or rendered=false for more per answer"),
                        );
                        return true;
                    }
                }
                2 => {
                    let n = self.tests.len();
                    if n > 1 {
                        let k = keep_share(n, ratio, 1);
                        self.tests.truncate(k);
                        note(
                            &mut self.cut,
                            "failing tests after the first ones (get_logs with search=`panicked at` lists them all)",
                        );
                        return true;
                    }
                }
                3 => {
                    if cut_outputs(&mut self.tests, 512) {
                        note(&mut self.cut, "test outputs cut to their last 512 bytes");
                        return true;
                    }
                }
                4 => {
                    if cut_messages(&mut self.compiler, 1_000) {
                        note(&mut self.cut, "long compiler messages cut to 1 kB");
                        return true;
                    }
                }
                5 => {
                    if let Some(t) = self.step_tail.as_mut() {
                        if t.shrink(ratio) {
                            return true;
                        }
                    }
                }
                6 => {
                    if let Some(r) = self.failure_reason.as_mut() {
                        if cut_text(r, 300) {
                            note(&mut self.cut, "failure_reason cut to 300 bytes");
                            return true;
                        }
                    }
                }
                _ => return false,
            }
            self.stage += 1;
        }
    }
}

/// The failing step of a job.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailedStep {
    /// Step name.
    pub name: String,
    /// `failed`, `timed_out`, `cancelled`.
    pub status: String,
    /// Exit code, when its process exited.
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_ms: Option<u64>,
}

/// A failing test, as `get_failure_summary` lists it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestFailure {
    /// Test name, e.g. `tests::adds`.
    pub name: String,
    /// The assertion (panic message), e.g. ``assertion `left == right` failed`` with left and right.
    pub assertion: Option<String>,
    /// File of the panic.
    pub file: Option<String>,
    /// Line of the panic.
    pub line: Option<u32>,
    /// The test's captured output: its last 1 KiB.
    pub output_tail: String,
}

/// `get_failure_summary` answer: why the job failed, in one call.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailureSummary {
    /// Job id.
    pub job_id: String,
    /// Job status.
    pub status: Status,
    /// The outcome in one line.
    pub outcome: String,
    /// The step that failed and how it exited.
    pub failed_step: Option<FailedStep>,
    /// Why the job failed.
    pub failure_reason: Option<String>,
    /// Compiler errors (never warnings), each with its code, file:line:column, snippet and rustc's
    /// suggested fixes as data (`suggestions`, `applicability` `MachineApplicable` = apply as is).
    pub errors: Vec<CompilerMessage>,
    /// Distinct compiler errors in the job.
    pub errors_total: u64,
    /// Distinct compiler warnings in the job (listed in `warnings` only with `warnings: true`).
    pub warnings_total: u64,
    /// Compiler warnings, when asked for.
    pub warnings: Vec<CompilerMessage>,
    /// Failing tests with their assertion text.
    pub failing_tests: Vec<TestFailure>,
    /// Failing tests in the job.
    pub failing_tests_total: u64,
    /// The failing step's last lines.
    pub tail: Option<StepTail>,
    /// What this answer left out.
    pub cut: Option<String>,
    /// What to call next.
    pub next: String,
    #[serde(skip)]
    #[schemars(skip)]
    stage: u8,
}

impl Fit for FailureSummary {
    /// Degradation order: warnings go first, then the tail is cut to its newest lines, then failing
    /// tests, then compiler errors (the first ones stay), then test outputs and long texts.
    fn degrade(&mut self, ratio: f64) -> bool {
        loop {
            match self.stage {
                0 => {
                    if !self.warnings.is_empty() {
                        let k = keep_share(self.warnings.len(), ratio, 0);
                        self.warnings.truncate(k);
                        note(
                            &mut self.cut,
                            "warnings after the first ones (get_diagnostics pages them)",
                        );
                        return true;
                    }
                }
                1 => {
                    if let Some(t) = self.tail.as_mut() {
                        if t.lines.len() > 5 && t.shrink(ratio) {
                            return true;
                        }
                    }
                }
                2 => {
                    if self.failing_tests.len() > 1 {
                        let k = keep_share(self.failing_tests.len(), ratio, 1);
                        self.failing_tests.truncate(k);
                        note(
                            &mut self.cut,
                            "failing tests after the first ones (get_diagnostics has them all)",
                        );
                        return true;
                    }
                }
                3 => {
                    if self.errors.len() > 1 {
                        let k = keep_share(self.errors.len(), ratio, 1);
                        self.errors.truncate(k);
                        note(&mut self.cut, "compiler errors after the first ones (get_diagnostics with min_level=error pages them)");
                        return true;
                    }
                }
                4 => {
                    let mut any = false;
                    for t in &mut self.failing_tests {
                        let (tail, cut) =
                            raibid_core::cargo_messages::truncate_tail(&t.output_tail, 256);
                        if cut {
                            t.output_tail = tail.to_string();
                            any = true;
                        }
                        if let Some(a) = t.assertion.as_mut() {
                            any |= cut_text(a, 500);
                        }
                    }
                    any |= cut_messages(&mut self.errors, 1_000);
                    if any {
                        note(&mut self.cut, "long texts cut");
                        return true;
                    }
                }
                5 => {
                    if let Some(t) = self.tail.as_mut() {
                        if t.shrink(ratio) {
                            return true;
                        }
                    }
                }
                6 => {
                    if let Some(r) = self.failure_reason.as_mut() {
                        if cut_text(r, 300) {
                            note(&mut self.cut, "failure_reason cut to 300 bytes");
                            return true;
                        }
                    }
                }
                _ => return false,
            }
            self.stage += 1;
        }
    }
}

/// `queue_status` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueueStatus {
    /// Entries in the job streams: waiting, running, and cancelled-before-start ones no agent has
    /// skipped yet.
    pub length: u64,
    /// Stream entries never delivered to an agent (what KEDA scales on): the queued jobs plus the
    /// entries of jobs cancelled while queued (`cancelled_waiting`), which an agent reads and skips;
    /// null when Redis cannot tell.
    pub lag: Option<u64>,
    /// Delivered, not yet acknowledged (running jobs).
    pub pending: u64,
    /// Jobs queued now.
    pub queued: u64,
    /// Jobs running now.
    pub running: u64,
    /// Entries in `lag` that belong to jobs cancelled before they started (`lag - queued`): KEDA may
    /// start an agent for them, which skips them at once.
    pub cancelled_waiting: Option<u64>,
    /// Agents with a live heartbeat.
    pub agents: u64,
    /// Age of the oldest undelivered entry in seconds.
    pub oldest_waiting_age_secs: Option<f64>,
}

impl Fit for QueueStatus {
    fn degrade(&mut self, _: f64) -> bool {
        false
    }
}

/// `cleanup` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Cleaned {
    /// Job id.
    pub job_id: String,
    /// Redis keys deleted (record, log, diagnostics, patch).
    pub deleted_keys: u64,
}

impl Fit for Cleaned {
    fn degrade(&mut self, _: f64) -> bool {
        false
    }
}

impl Fit for logs::LogsAnswer {
    /// Degradation: lines are dropped — the oldest of a tail, the newest of a range or search — and
    /// `next` continues there.
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.lines.len();
        if n <= 1 {
            if let Some(l) = self.lines.first_mut() {
                return cut_text(&mut l.text, 200);
            }
            return false;
        }
        let k = keep_share(n, ratio, 1);
        if self.mode == "tail" {
            self.lines.drain(..n - k);
            let first = self.lines.first().map_or(1, |l| l.n);
            let step = self.step.clone().unwrap_or_default();
            let from = first.saturating_sub(k as u64).max(1);
            self.next = Some(logs::NextCall {
                from_line: from,
                cursor: None,
                hint: format!(
                    "earlier lines of `{step}`: get_logs with step=`{step}`, from_line={from}, max_lines={k}"
                ),
            });
        } else {
            self.lines.truncate(k);
            let next = self.lines.last().map_or(1, |l| l.n + 1);
            self.next = Some(logs::NextCall {
                from_line: next,
                cursor: None,
                hint: format!("continue: get_logs with the same arguments and from_line={next}"),
            });
        }
        note(
            &mut self.cut,
            format!("cut to {k} line(s) by the answer budget"),
        );
        true
    }
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
            "call get_failure_summary with job_id={} (the failing step, its compiler errors and failing tests in one call); get_diagnostics pages every compiler message",
            job.id
        ),
        Status::Cancelled => format!("cancelled; retry_job with job_id={} runs it again", job.id),
        _ => format!("call wait_for_job with job_id={} again", job.id),
    }
}

/// A job's outcome in one line.
fn outcome(job: &Job) -> String {
    let step = job.step.as_deref().map(|s| one_line(s, 120));
    let exit = job
        .steps
        .iter()
        .rev()
        .find(|s| Some(s.name.as_str()) == job.step.as_deref())
        .and_then(|s| s.exit_code);
    let reason = job
        .failure_reason
        .as_deref()
        .map(|r| one_line(r, 240))
        .unwrap_or_default();
    let took = job
        .duration_secs()
        .map(|d| format!(" in {d:.1} s"))
        .unwrap_or_default();
    match job.status {
        Status::Succeeded => format!("succeeded{took} ({} steps)", job.steps.len()),
        Status::Failed | Status::TimedOut => format!(
            "{}{} in step `{}`{}: {reason}",
            job.status,
            took,
            step.unwrap_or_default(),
            exit.map(|c| format!(" (exit {c})")).unwrap_or_default()
        ),
        Status::Cancelled => format!("cancelled: {reason}"),
        Status::Queued => "queued, waiting for an agent".into(),
        st => format!(
            "{st}: step `{}` ({} step(s) so far)",
            step.unwrap_or_default(),
            job.steps.len()
        ),
    }
}

/// Seconds since the job started, to its end once finished.
fn elapsed(job: &Job) -> Option<f64> {
    let s = job.timestamps.started.or(job.timestamps.claimed)?;
    let e = job.timestamps.finished.unwrap_or_else(chrono::Utc::now);
    Some(((e - s).num_milliseconds() as f64 / 100.0).round() / 10.0)
}

fn waited(job: &Job, secs: f64) -> Waited {
    let step = job.step.as_deref().map(|s| one_line(s, 200));
    Waited {
        finished: job.status.is_final(),
        waited_secs: (secs * 10.0).round() / 10.0,
        job_id: job.id.to_string(),
        status: job.status,
        exit_code: job
            .steps
            .iter()
            .rev()
            .find(|s| Some(s.name.as_str()) == job.step.as_deref())
            .and_then(|s| s.exit_code),
        step,
        steps: job.steps.len() as u64,
        elapsed_secs: elapsed(job),
        outcome: outcome(job),
        next: next_for(job),
        cells: None,
    }
}

/// The step names of a job, listed for an error (at most 40).
fn step_names(job: &Job) -> String {
    let mut names: Vec<&str> = Vec::new();
    for s in &job.steps {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let n = names.len();
    let mut out: Vec<String> = names.iter().take(40).map(|s| one_line(s, 80)).collect();
    if n > 40 {
        out.push(format!("… and {} more", n - 40));
    }
    if out.is_empty() {
        "none yet".into()
    } else {
        out.join(", ")
    }
}

#[tool_router(router = tool_router)]
impl Raibid {
    /// A server over the dispatcher's state.
    pub fn new(state: AppState) -> Raibid {
        Raibid {
            state,
            tool_router: Self::tool_router() + super::schedules::router(),
        }
    }

    /// The dispatcher's state (tools defined in other modules).
    pub(crate) fn state(&self) -> &AppState {
        &self.state
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
            Enqueued::New(job) => budget::fit(Submitted {
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
            }),
            Enqueued::Duplicate(id) => Err(format!("duplicate of job {id}")),
        }
    }

    #[tool(
        name = "wait_for_job",
        description = "Wait until a job is final or `timeout_secs` pass (default 40, at most 50, under the client's call timeout), sending progress notifications meanwhile. Returns a compact status: `finished` (true: final), status, the current or failed step and its exit code, elapsed time and a one-line outcome. While finished is false, call it again. After a failure call get_failure_summary. For a matrix group (the push's job of a `matrix:` pipeline) it waits until every cell ended and lists the cells (`cells`).",
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
            let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
            let now = Instant::now();
            let waited_secs = (now - started).as_secs_f64();
            if job.status.is_final() || now >= deadline || ctx.ct.is_cancelled() {
                if job.matrix_group().is_some() {
                    let v = self.state.queue.group(&job.id).await.map_err(queue_err)?;
                    return budget::fit(super::groups::group_waited(waited(&job, waited_secs), &v));
                }
                return budget::fit(waited(&job, waited_secs));
            }
            let note = (job.step.clone(), job.status);
            if let Some(t) = token.clone() {
                if note != last_note || now - last_sent >= Duration::from_secs(5) {
                    let _ = ctx
                        .peer
                        .notify_progress(
                            ProgressNotificationParam::new(t, waited_secs)
                                .with_total(f64::from(secs))
                                .with_message(outcome(&job)),
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
        description = "A job's record: status, current or failed step, every step with exit code and duration, timestamps, failure reason, attempt, cargo unit counts (fresh/total) and the cache figures (`cache`: target-slot key and slot, restore kind warm/seeded/cold, units fresh/total, lock and restore ms, slot bytes, git mirror hit, fetched objects/bytes) when present. A record too large for one answer comes back summarised (`steps_total`, `cut`, `next`).",
        annotations(read_only_hint = true)
    )]
    async fn get_job(&self, Parameters(req): Parameters<JobRef>) -> Result<Json<JobView>, String> {
        check_id(&req.job_id)?;
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        let mut view = JobView::new(job);
        view.job.page_url = self.state.answer(&view.job).page_url;
        budget::fit(view)
    }

    #[tool(
        name = "list_artifacts",
        description = "The files a job uploaded with .raibid.yaml `artifacts:` (e.g. its release binary): name, size, sha256 digest and a download URL (GET with the API token), never the bytes. Empty when the job has none.",
        annotations(read_only_hint = true)
    )]
    async fn list_artifacts(
        &self,
        Parameters(req): Parameters<JobRef>,
    ) -> Result<Json<super::artifacts::ArtifactsAnswer>, String> {
        check_id(&req.job_id)?;
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        budget::fit(super::artifacts::answer(&self.state, &job))
    }

    #[tool(
        name = "get_failure_summary",
        description = "Why a job failed, in one call: the failing step and its exit code, the compiler errors (code, file:line:column, snippet, and rustc's suggested fixes as data with their applicability), failing tests with their assertion text, warnings as a count (or listed with warnings=true), and the last lines of the failing step. Call it first after wait_for_job reports a failure; get_diagnostics and get_logs page the rest.",
        annotations(read_only_hint = true)
    )]
    async fn get_failure_summary(
        &self,
        Parameters(req): Parameters<FailureQuery>,
    ) -> Result<Json<FailureSummary>, String> {
        check_id(&req.job_id)?;
        let tail_lines = req.tail_lines.unwrap_or(0);
        if !(0..=SUMMARY_TAIL_MAX).contains(&tail_lines) || req.tail_lines == Some(0) {
            return Err(format!(
                "tail_lines: must be between 1 and {SUMMARY_TAIL_MAX}"
            ));
        }
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        let d = load_diagnostics(&self.state, &job).await?;
        budget::fit(
            failure_summary(
                &self.state,
                &job,
                d,
                req.warnings.unwrap_or(false),
                tail_lines,
            )
            .await,
        )
    }

    #[tool(
        name = "get_diagnostics",
        description = "Every compiler message of a job (level, code such as E0308, message, file, line, column, rendered snippet, suggested fixes as data), deduplicated and most severe first, paged with offset / next_offset, and failing tests (name, panic message, file:line, captured output). For a step without structured output, that step's last lines. For the failure alone, get_failure_summary is shorter. For a matrix group: one answer per failing cell (`cells`), all within the answer budget.",
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
                    "min_level: `{}` is not one of error, warning, note, help",
                    one_line(other, 40)
                ))
            }
        };
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        let d = load_diagnostics(&self.state, &job).await?;
        let answer = diagnostics_answer(&self.state, &job, d, &req, limit, min_rank).await;
        if job.matrix_group().is_some() {
            // A matrix group: every failing cell's answer, in one budget.
            let v = self.state.queue.group(&job.id).await.map_err(queue_err)?;
            let mut cells = Vec::new();
            for c in v
                .cells
                .iter()
                .filter(|c| raibid_core::matrix::is_failure(c.status))
            {
                let d = load_diagnostics(&self.state, c).await?;
                cells.push(diagnostics_answer(&self.state, c, d, &req, limit, min_rank).await);
            }
            return budget::fit(super::groups::group_diagnostics(answer, &v, cells));
        }
        budget::fit(answer)
    }

    #[tool(
        name = "get_logs",
        description = "A bounded window of a job's log (never the whole log): by default the last 200 lines of the failed (or last) step; `step` for one step (an unknown step is an error listing the job's steps); `from_line` + `max_lines` for a range; `search` (regex) with `context` lines. Every answer stays within the answer budget, says what was cut, and gives `next` (cursor / from_line) to continue.",
        annotations(read_only_hint = true)
    )]
    async fn get_logs(
        &self,
        Parameters(req): Parameters<LogsQuery>,
    ) -> Result<Json<logs::LogsAnswer>, String> {
        check_id(&req.job_id)?;
        let job = self.state.queue.get(&req.job_id).await.map_err(queue_err)?;
        if let Some(s) = req.step.as_deref().filter(|s| !s.is_empty()) {
            if !job.steps.iter().any(|st| st.name == s) {
                return Err(format!(
                    "step: job {} has no step `{}`; its steps: {}",
                    job.id,
                    one_line(s, 80),
                    step_names(&job)
                ));
            }
        }
        let step = if job.status == Status::Succeeded {
            None
        } else {
            job.step.clone()
        };
        budget::fit(
            logs::answer(
                &self.state.queue,
                &req,
                job.status.as_str(),
                step.as_deref(),
            )
            .await
            .map_err(queue_err)??,
        )
    }

    #[tool(
        name = "list_jobs",
        description = "Recent jobs, newest first, one line each (id, status, step, repo, ref, sha, step count, one-line failure reason); filters (`status`, `ref`, `repo`: a substring of the URL) apply before paging; continue with cursor = next_cursor and the same filters. get_job has a job's whole record.",
        annotations(read_only_hint = true)
    )]
    async fn list_jobs(
        &self,
        Parameters(req): Parameters<ListJobs>,
    ) -> Result<Json<JobList>, String> {
        let page = requests::list_jobs(&self.state, &req, 20)
            .await
            .map_err(queue_err)??;
        budget::fit(JobList {
            jobs: page.jobs.iter().map(JobSummary::of).collect(),
            next_cursor: page.next_cursor,
            cut: None,
        })
    }

    #[tool(
        name = "cancel_job",
        description = "Cancel a queued or running job (a queued one is cancelled at once; a running job's agent stops its step). Returns its status; wait_for_job shows the final one.",
        annotations(destructive_hint = true)
    )]
    async fn cancel_job(
        &self,
        Parameters(req): Parameters<JobRef>,
    ) -> Result<Json<JobBrief>, String> {
        check_id(&req.job_id)?;
        let job = self
            .state
            .queue
            .cancel(&req.job_id)
            .await
            .map_err(queue_err)?;
        budget::fit(JobBrief {
            job_id: job.id.to_string(),
            status: job.status,
            cancel_requested: job.cancel_requested,
            retry_of: job.retry_of.clone(),
            next: next_for(&job),
        })
    }

    #[tool(
        name = "retry_job",
        description = "Run a finished job again (same repository, ref, sha and patch) as a new job. Returns the new job's id; then call wait_for_job with it."
    )]
    async fn retry_job(
        &self,
        Parameters(req): Parameters<JobRef>,
    ) -> Result<Json<JobBrief>, String> {
        check_id(&req.job_id)?;
        let job = requests::retry(&self.state, &req.job_id)
            .await
            .map_err(queue_err)?
            .map_err(|r| r.message().to_string())?;
        budget::fit(JobBrief {
            job_id: job.id.to_string(),
            status: job.status,
            cancel_requested: false,
            retry_of: job.retry_of.clone(),
            next: format!(
                "call wait_for_job with job_id={} (it returns within 50 s; call it again while finished is false)",
                job.id
            ),
        })
    }

    #[tool(
        name = "queue_status",
        description = "The CI queue now: stream length, lag (stream entries no agent has read yet: queued jobs plus entries of jobs cancelled while queued, `cancelled_waiting`), queued and running jobs, live agents, age of the oldest waiting entry.",
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
        let queued = counts.get(&Status::Queued).copied().unwrap_or(0);
        budget::fit(QueueStatus {
            length: s.length,
            lag: s.lag,
            pending: s.pending,
            queued,
            running: counts.get(&Status::Running).copied().unwrap_or(0),
            cancelled_waiting: s.lag.map(|l| l.saturating_sub(queued)),
            agents: agents.len() as u64,
            oldest_waiting_age_secs: s.oldest_waiting_age_secs,
        })
    }

    #[tool(
        name = "validate_config",
        description = "Check a `.raibid.yaml` (given as text) without running a job: whether the agent would accept it, the error naming the key (`steps[1].run: must not be empty`, or the YAML line and column) when not, else the steps it would run. Call it before committing a pipeline change.",
        annotations(read_only_hint = true)
    )]
    async fn validate_config(
        &self,
        Parameters(req): Parameters<ValidateConfig>,
    ) -> Result<Json<ConfigCheck>, String> {
        let answer = match raibid_core::pipeline::Pipeline::parse(&req.config) {
            Ok(p) => ConfigCheck {
                valid: true,
                errors: Vec::new(),
                name: Some(p.name),
                timeout_secs: Some(p.timeout.as_secs()),
                steps: p
                    .steps
                    .iter()
                    .map(|s| ConfigStep {
                        name: s.name.clone(),
                        run: one_line(&s.run, 200),
                        timeout_secs: s.timeout.map(|t| t.as_secs()),
                    })
                    .collect(),
                secrets: p.secrets,
                image: p.image.is_some(),
                cut: None,
            },
            Err(e) => ConfigCheck {
                valid: false,
                errors: vec![one_line(&e.to_string(), 2_000)],
                name: None,
                timeout_secs: None,
                steps: Vec::new(),
                secrets: Vec::new(),
                image: false,
                cut: None,
            },
        };
        budget::fit(answer)
    }

    #[tool(
        name = "find_flaky_tests",
        description = "Tests that failed in one job and passed in another job of the same commit (and patch) among the recent finished jobs of a repository (`repo`: a substring of its URL; `ref` optional): flaky, not broken by the change. Then get_test_history for one test.",
        annotations(read_only_hint = true)
    )]
    async fn find_flaky_tests(
        &self,
        Parameters(req): Parameters<TestHistoryQuery>,
    ) -> Result<Json<FlakyTests>, String> {
        let runs = test_runs(&self.state, &req).await?;
        let mut groups: std::collections::BTreeMap<(String, String), Vec<&JobRuns>> =
            Default::default();
        for r in &runs.jobs {
            if let Some(k) = r.code_key() {
                groups.entry(k).or_default().push(r);
            }
        }
        let mut flaky: Vec<FlakyTest> = Vec::new();
        for ((repo_url, _), jobs) in &groups {
            let passed: Vec<String> = jobs
                .iter()
                .filter(|j| j.status == Status::Succeeded)
                .map(|j| j.id.clone())
                .collect();
            if passed.is_empty() {
                continue;
            }
            let mut by_test: std::collections::BTreeMap<&str, (Vec<String>, Option<String>)> =
                Default::default();
            for j in jobs {
                for (t, a) in &j.failed_tests {
                    let e = by_test.entry(t.as_str()).or_default();
                    e.0.push(j.id.clone());
                    if e.1.is_none() {
                        e.1 = a.clone();
                    }
                }
            }
            for (t, (failed_in, assertion)) in by_test {
                flaky.push(FlakyTest {
                    test: t.to_string(),
                    repo_url: repo_url.clone(),
                    sha: jobs[0].sha.clone().unwrap_or_default(),
                    failed_in: failed_in.into_iter().take(5).collect(),
                    passed_in: passed.iter().take(5).cloned().collect(),
                    assertion,
                });
            }
        }
        flaky.sort_by_key(|f| std::cmp::Reverse(f.failed_in.len()));
        budget::fit(FlakyTests {
            scanned_jobs: runs.scanned,
            flaky,
            cut: None,
        })
    }

    #[tool(
        name = "get_test_history",
        description = "One test's outcome across the recent finished jobs of a repository (`test`: its full name; `repo`, `ref` optional): failed (with the assertion) or passed, newest first, and whether it failed and passed on the same commit (flaky).",
        annotations(read_only_hint = true)
    )]
    async fn get_test_history(
        &self,
        Parameters(req): Parameters<TestHistoryQuery>,
    ) -> Result<Json<TestHistory>, String> {
        let Some(test) = req.test.clone().filter(|t| !t.is_empty()) else {
            return Err("test: give the test's full name, e.g. `tests::adds` (find_flaky_tests lists candidates)".into());
        };
        let runs = test_runs(&self.state, &req).await?;
        let mut out = Vec::new();
        let mut outcomes: std::collections::HashMap<(String, String), (bool, bool)> =
            Default::default();
        for j in &runs.jobs {
            let failed = j.failed_tests.iter().find(|(t, _)| *t == test);
            let outcome = match (failed, j.status) {
                (Some(_), _) => "failed",
                (None, Status::Succeeded) => "passed",
                _ => continue,
            };
            if let Some(k) = j.code_key() {
                let e = outcomes.entry(k).or_default();
                if outcome == "failed" {
                    e.0 = true;
                } else {
                    e.1 = true;
                }
            }
            out.push(TestRun {
                job_id: j.id.clone(),
                sha: j.sha.clone(),
                patched: j.patch.is_some(),
                outcome: outcome.into(),
                assertion: failed.and_then(|(_, a)| a.clone()),
                finished: j.finished,
            });
        }
        let failures = out.iter().filter(|r| r.outcome == "failed").count() as u64;
        budget::fit(TestHistory {
            test: one_line(&test, 300),
            scanned_jobs: runs.scanned,
            runs: out,
            failures,
            flaky: outcomes.values().any(|(f, p)| *f && *p),
            cut: None,
        })
    }

    #[tool(
        name = "cleanup",
        description = "Delete a finished job's record, log, diagnostics, patch and uploaded artifacts; for an image job also ask the image agents to remove its local images (pushed tags stay in the registry). Refused for a queued or running job (cancel it first).",
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
            raibid_core::queue::image_cleanup::request_cleanup(
                &self.state.queue,
                id,
                crate::images::CLEANUP_KEEP,
            )
            .await
            .map_err(|e| queue_err(QueueError::Redis(e)))?;
        }
        if let Some(set) = &job.artifacts {
            // Its artifacts go with it (the sweeper retries a registry that is down now).
            if let Err(e) = crate::artifacts::delete_set(&self.state, id, set).await {
                tracing::warn!(job = %id, error = %e, "cleanup: artifacts not deleted yet");
            }
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
        budget::fit(Cleaned {
            job_id: id.to_string(),
            deleted_keys: n,
        })
    }
}

/// The access of the request's token (full when the transport says nothing, as in-process tests).
fn access(ctx: &RequestContext<RoleServer>) -> super::Access {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<super::Access>().copied())
        .unwrap_or(super::Access::Full)
}

impl Raibid {
    /// True for a tool annotated read-only (the tools a read-only token may call).
    fn read_only(&self, name: &str) -> bool {
        self.tool_router
            .get(name)
            .and_then(|t| t.annotations.as_ref())
            .and_then(|a| a.read_only_hint)
            .unwrap_or(false)
    }
}

/// A finished job's test outcomes.
struct JobRuns {
    id: String,
    status: Status,
    repo_url: String,
    sha: Option<String>,
    patch: Option<String>,
    finished: Option<chrono::DateTime<chrono::Utc>>,
    /// Failing tests and their assertions (one line).
    failed_tests: Vec<(String, Option<String>)>,
}

impl JobRuns {
    /// What identifies the code a job built: repository, commit and patch digest.
    fn code_key(&self) -> Option<(String, String)> {
        let sha = self.sha.as_ref()?;
        Some((
            self.repo_url.clone(),
            format!("{sha}+{}", self.patch.as_deref().unwrap_or("")),
        ))
    }
}

struct Runs {
    scanned: u64,
    jobs: Vec<JobRuns>,
}

/// The recent finished jobs matching `q` with their failing tests (diagnostics read in one pipeline).
async fn test_runs(state: &AppState, q: &TestHistoryQuery) -> Result<Runs, String> {
    let n = q.jobs.unwrap_or(200);
    if !(1..=1000).contains(&n) {
        return Err("jobs: must be between 1 and 1000".into());
    }
    let git_ref = q.git_ref.as_deref().filter(|r| !r.is_empty()).map(|r| {
        if r.starts_with("refs/") {
            r.to_string()
        } else {
            format!("refs/heads/{r}")
        }
    });
    let mut finished = Vec::new();
    for st in [Status::Succeeded, Status::Failed] {
        let filter = raibid_core::queue::ListFilter {
            status: Some(st),
            git_ref: git_ref.as_deref(),
            repo: q.repo.as_deref().filter(|r| !r.is_empty()),
        };
        let (page, _) = state
            .queue
            .list_filtered(&filter, n as usize, None)
            .await
            .map_err(queue_err)?;
        finished.extend(page);
    }
    finished.sort_by(|a, b| b.id.as_str().cmp(a.id.as_str()));
    finished.truncate(n as usize);
    let mut con = state.queue.redis();
    let mut p = redis::pipe();
    for j in &finished {
        p.cmd("GET").arg(contract::job_diagnostics_key(&j.id));
    }
    let raws: Vec<Option<String>> = if finished.is_empty() {
        Vec::new()
    } else {
        p.query_async(&mut con)
            .await
            .map_err(|e| queue_err(QueueError::Redis(e)))?
    };
    let jobs = finished
        .iter()
        .zip(raws)
        .map(|(j, raw)| {
            let d: Diagnostics = raw
                .and_then(|r| serde_json::from_str(&r).ok())
                .unwrap_or_default();
            JobRuns {
                id: j.id.to_string(),
                status: j.status,
                repo_url: j.source.repo_url.clone(),
                sha: j.source.sha.clone(),
                patch: j.source.patch.as_ref().map(|p| p.sha256.clone()),
                finished: j.timestamps.finished,
                failed_tests: d
                    .tests
                    .into_iter()
                    .map(|t| (t.name, t.panic_message.map(|m| one_line(&m, 300))))
                    .collect(),
            }
        })
        .collect();
    Ok(Runs {
        scanned: finished.len() as u64,
        jobs,
    })
}

async fn load_diagnostics(state: &AppState, job: &Job) -> Result<Diagnostics, String> {
    let mut con = state.queue.redis();
    let raw: Option<String> = redis::cmd("GET")
        .arg(contract::job_diagnostics_key(&job.id))
        .query_async(&mut con)
        .await
        .map_err(|e| queue_err(QueueError::Redis(e)))?;
    Ok(raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_default())
}

/// The last `lines` lines of `step`, with a note.
async fn step_tail(
    state: &AppState,
    job: &Job,
    step: &str,
    lines: u32,
    why: &str,
) -> Option<StepTail> {
    let q = LogsQuery {
        job_id: job.id.to_string(),
        step: Some(step.to_string()),
        max_lines: Some(lines),
        ..LogsQuery::default()
    };
    match logs::answer(&state.queue, &q, job.status.as_str(), Some(step)).await {
        Ok(Ok(a)) => Some(StepTail {
            note: format!(
                "{why}; these are its last {} lines (get_logs for more)",
                a.lines.len()
            ),
            step: step.to_string(),
            lines: a.lines,
        }),
        _ => None,
    }
}

async fn failure_summary(
    state: &AppState,
    job: &Job,
    d: Diagnostics,
    with_warnings: bool,
    tail_lines: u32,
) -> FailureSummary {
    let mut errors: Vec<CompilerMessage> = Vec::new();
    let mut warnings: Vec<CompilerMessage> = Vec::new();
    let (mut errors_total, mut warnings_total) = (0u64, 0u64);
    for m in d.compiler {
        match severity_rank(&m.level) {
            0 => {
                errors_total += 1;
                if errors.len() < SUMMARY_ITEMS {
                    errors.push(m);
                }
            }
            1 => {
                warnings_total += 1;
                if with_warnings && warnings.len() < SUMMARY_ITEMS {
                    warnings.push(m);
                }
            }
            _ => {}
        }
    }
    let failing_tests_total = d.tests.len() as u64;
    let failing_tests: Vec<TestFailure> = d
        .tests
        .into_iter()
        .take(SUMMARY_ITEMS)
        .map(|t| TestFailure {
            assertion: t.panic_message,
            file: t.file,
            line: t.line,
            output_tail: raibid_core::cargo_messages::truncate_tail(
                &t.output,
                SUMMARY_TEST_OUTPUT_BYTES,
            )
            .0
            .to_string(),
            name: t.name,
        })
        .collect();
    let failed = matches!(
        job.status,
        Status::Failed | Status::TimedOut | Status::Cancelled
    );
    let failed_step = if failed {
        job.step.as_deref().map(|name| {
            let s = job.steps.iter().rev().find(|s| s.name == name);
            FailedStep {
                name: one_line(name, 200),
                status: s.map_or_else(|| job.status.to_string(), |s| s.status.clone()),
                exit_code: s.and_then(|s| s.exit_code),
                duration_ms: s.and_then(|s| s.duration_ms),
            }
        })
    } else {
        None
    };
    let tail_lines = match tail_lines {
        0 if errors_total > 0 || failing_tests_total > 0 => SUMMARY_TAIL_STRUCTURED,
        0 => SUMMARY_TAIL_DEFAULT,
        n => n,
    };
    let tail = match (&failed_step, job.step.as_deref()) {
        (Some(_), Some(step)) => {
            step_tail(
                state,
                job,
                step,
                tail_lines,
                &format!("step `{}` failed", one_line(step, 120)),
            )
            .await
        }
        _ => None,
    };
    let mut failure_reason = job.failure_reason.clone();
    let mut cut = None;
    if let Some(r) = failure_reason.as_mut() {
        if cut_text(r, MAX_REASON_BYTES) {
            note(&mut cut, "failure_reason cut");
        }
    }
    if errors_total > errors.len() as u64 {
        note(
            &mut cut,
            format!(
                "{} more compiler errors (get_diagnostics with min_level=error)",
                errors_total - errors.len() as u64
            ),
        );
    }
    if failing_tests_total > failing_tests.len() as u64 {
        note(
            &mut cut,
            format!(
                "{} more failing tests (get_diagnostics)",
                failing_tests_total - failing_tests.len() as u64
            ),
        );
    }
    let next = match job.status {
        Status::Failed | Status::TimedOut => format!(
            "fix what failed, then submit_job with a patch; get_logs with job_id={} and step=`{}` reads the whole step",
            job.id,
            job.step.as_deref().map(|s| one_line(s, 120)).unwrap_or_default()
        ),
        Status::Succeeded => "nothing failed".into(),
        Status::Cancelled => format!("cancelled; retry_job with job_id={} runs it again", job.id),
        _ => format!("the job has not failed (yet): call wait_for_job with job_id={}", job.id),
    };
    FailureSummary {
        job_id: job.id.to_string(),
        status: job.status,
        outcome: outcome(job),
        failed_step,
        failure_reason,
        errors,
        errors_total,
        warnings_total,
        warnings,
        failing_tests,
        failing_tests_total,
        tail,
        cut,
        next,
        stage: 0,
    }
}

async fn diagnostics_answer(
    state: &AppState,
    job: &Job,
    d: Diagnostics,
    req: &DiagnosticsQuery,
    limit: u32,
    min_rank: u8,
) -> DiagnosticsAnswer {
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
    let mut cut = None;
    let mut compiler: Vec<CompilerMessage> = all.into_iter().skip(offset).collect();
    let mut next = None;
    if compiler.len() > limit as usize {
        compiler.truncate(limit as usize);
        let n = offset + limit as usize;
        next = Some(n as u64);
        note(
            &mut cut,
            format!("compiler messages after the first {limit}; ask with offset={n}"),
        );
    }
    if !with_rendered {
        for m in &mut compiler {
            m.rendered = None;
        }
    }
    if d.dropped > 0 {
        note(
            &mut cut,
            format!(
                "{} distinct messages past the agent's cap were never stored",
                d.dropped
            ),
        );
    }
    // A failed step that left nothing structured: its last lines instead.
    let mut tail = None;
    if matches!(job.status, Status::Failed | Status::TimedOut) && errors == 0 && d.tests.is_empty()
    {
        if let Some(step) = job.step.as_deref() {
            tail = step_tail(
                state,
                job,
                step,
                40,
                &format!(
                    "step `{}` failed without compiler errors or failing tests the agent could parse",
                    one_line(step, 120)
                ),
            )
            .await;
        }
    }
    let mut failure_reason = job.failure_reason.clone();
    if let Some(r) = failure_reason.as_mut() {
        if cut_text(r, MAX_REASON_BYTES) {
            note(&mut cut, "failure_reason cut");
        }
    }
    DiagnosticsAnswer {
        job_id: job.id.to_string(),
        status: job.status,
        failure_reason,
        errors,
        warnings,
        compiler,
        tests: d.tests,
        total_compiler: total,
        next_offset: next,
        cut,
        step_tail: tail,
        cells: Vec::new(),
        offset: offset as u64,
        stage: 0,
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Raibid {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("raibid-ci", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "raibid-ci builds and tests Rust repositories on an ARM64 CI box. submit_job (optionally with a patch of your uncommitted changes) → wait_for_job until finished → on failure get_failure_summary (the failing step, compiler errors with file:line, code and suggested fixes, failing tests with their assertions, the step's last lines), then get_diagnostics / get_logs (bounded windows) for more. Every answer fits a 25k-token budget; `cut` says what was left out and `next` how to get it.",
            )
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, rmcp::ErrorData> {
        let name = request.name.to_string();
        if access(&context) == super::Access::ReadOnly && !self.read_only(&name) {
            return Ok(CallToolResponse::Complete(rmcp::model::CallToolResult::error(vec![
                rmcp::model::ContentBlock::text(format!(
                    "{name}: this token is read-only (it may list, get, read logs and diagnostics); use the API token to change jobs"
                )),
            ])));
        }
        let tcc = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        match self.tool_router.call(tcc).await? {
            CallToolResponse::Complete(r) => {
                Ok(CallToolResponse::Complete(budget::bound_result(&name, r)))
            }
            other => Ok(other),
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, rmcp::ErrorData> {
        let read_only = access(&context) == super::Access::ReadOnly;
        let tools = self
            .tool_router
            .list_all()
            .into_iter()
            .filter(|t| !read_only || self.read_only(&t.name))
            .collect();
        Ok(ListToolsResult::with_all_items(super::schema::tools(
            tools,
            &self.state.settings.intake.allowed_schemes,
        )))
    }
}
