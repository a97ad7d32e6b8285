//! Calls to Gitea: `POST /api/v1/repos/{owner}/{repo}/mirror-sync`,
//! `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}` and the repository search the mirror mapping is
//! read from, and the commit-status reporter (the outbox) that turns job events into statuses: one
//! consumer group for Gitea, one for GitHub (`crate::github`), the same code.

use crate::github::{GhError, GitHub};
use crate::AppState;
use raibid_core::cargo_messages::Diagnostics;
use raibid_core::contract::{self, keys};
use raibid_core::event::Event;
use raibid_core::job::{Job, Status};
use raibid_core::queue::QueueError;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply,
    StreamReadOptions,
};
use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A Gitea API client.
#[derive(Clone)]
pub struct Gitea {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Commit status state (Gitea `CommitStatusState`).
pub fn status_state(s: Status) -> &'static str {
    match s {
        Status::Queued
        | Status::Running
        | Status::Building
        | Status::Testing
        | Status::Publishing => "pending",
        Status::Succeeded => "success",
        Status::Failed | Status::TimedOut => "failure",
        Status::Cancelled => "error",
    }
}

fn path_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Split and check `owner/name` so it can go into a URL path.
pub fn split_repo(full: &str) -> Option<(&str, &str)> {
    let (o, r) = full.split_once('/')?;
    (path_segment_ok(o) && path_segment_ok(r)).then_some((o, r))
}

impl Gitea {
    /// A client for `base` (e.g. `http://gitea-http.gitea:3000`).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Gitea> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("raibid-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Gitea {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The base URL (no trailing `/`).
    pub fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.post(format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("token {t}"));
        }
        r
    }

    /// `GET /api/v1{path}`: the status and the JSON body (null when there is none).
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut r = self.http.get(format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("token {t}"));
        }
        // The URL stays out of the error (and so out of log lines): the base may carry credentials.
        let resp = r.send().await.map_err(|e| e.without_url())?;
        let status = resp.status().as_u16();
        let body = resp
            .json::<serde_json::Value>()
            .await
            .unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// Ask Gitea to sync a pull mirror now.
    pub async fn mirror_sync(&self, full: &str) -> anyhow::Result<()> {
        let (o, r) = split_repo(full).ok_or_else(|| anyhow::anyhow!("bad repository name"))?;
        let resp = self
            .post(&format!("/repos/{o}/{r}/mirror-sync"))
            .send()
            .await
            // The URL stays out of the error (and so out of log lines): the base may carry credentials.
            .map_err(|e| e.without_url())?;
        if !resp.status().is_success() {
            anyhow::bail!("Gitea answered {} to mirror-sync of {full}", resp.status());
        }
        Ok(())
    }
}

/// The one commit-status context of every job, fixed before the job exists: the pending status
/// posted at claim (before the agent has read `.raibid.yaml`) and the final status must name the same
/// context, or Gitea shows the pending one forever. The pipeline's `name:` goes into the description.
pub const STATUS_CONTEXT: &str = "raibid/ci";

/// The one-line outcome of a failed job: the first compiler error with its file:line, else the first
/// failing test (with its panic's file:line), else the failure reason (the step that failed and its
/// exit code).
pub fn failure_line(reason: Option<&str>, d: &Diagnostics) -> Option<String> {
    let at = |file: &Option<String>, line: Option<u32>| match (file, line) {
        (Some(f), Some(l)) => format!(" at {f}:{l}"),
        (Some(f), None) => format!(" in {f}"),
        _ => String::new(),
    };
    if let Some(c) = d.compiler.iter().find(|c| c.level.starts_with("error")) {
        let code = c
            .code
            .as_deref()
            .map(|k| format!("[{k}]"))
            .unwrap_or_default();
        return Some(format!(
            "error{code}: {}{}",
            c.message.lines().next().unwrap_or(""),
            at(&c.file, c.line)
        ));
    }
    if let Some(t) = d.tests.first() {
        let panic = t
            .panic_message
            .as_deref()
            .and_then(|m| m.lines().next())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Some(format!(
            "test {} failed{panic}{}",
            t.name,
            at(&t.file, t.line)
        ));
    }
    reason.map(str::to_string)
}

fn description(job: &Job, diagnostics: Option<&Diagnostics>) -> String {
    let d = match job.status {
        Status::Queued => "queued".to_string(),
        Status::Running => format!("running on {}", job.agent.as_deref().unwrap_or("an agent")),
        Status::Building | Status::Testing | Status::Publishing => format!(
            "{} on {}",
            job.status,
            job.agent.as_deref().unwrap_or("an agent")
        ),
        Status::Succeeded => "all steps passed".to_string(),
        _ => diagnostics
            .and_then(|d| failure_line(job.failure_reason.as_deref(), d))
            .or_else(|| job.failure_reason.clone())
            .unwrap_or_else(|| job.status.to_string()),
    };
    let d = match job.pipeline.as_deref() {
        Some(name) if name != "ci" => format!("{name}: {d}"),
        _ => d,
    };
    // Gitea and GitHub limit descriptions (GitHub: 140 characters); one line, cut with `…`.
    crate::github::fit_description(&d)
}

/// How the reporter retries posts Gitea did not take.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First delay after a failed post.
    pub base: Duration,
    /// Longest delay between two retries (the delay doubles up to this).
    pub max: Duration,
    /// Events older than this are given up (acknowledged and counted as failed).
    pub give_up: Duration,
    /// Entries another reporter has held this long without acknowledging are taken over
    /// (`XAUTOCLAIM`); longer than one post can take (the client's 10 s timeout).
    pub stale: Duration,
    /// Reporter consumers idle this long with nothing pending are removed from the group.
    pub prune_idle: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            give_up: Duration::from_secs(24 * 3600),
            stale: Duration::from_secs(60),
            prune_idle: Duration::from_secs(600),
        }
    }
}

/// What became of one event.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Posted, or nothing to post: acknowledge.
    Done,
    /// The forge refused it for good (4xx) or it is too old: acknowledge and count as failed.
    GaveUp,
    /// The forge or Redis unavailable: leave it pending and retry later, not before the wait the
    /// forge asked for (GitHub's `retry-after` / `x-ratelimit-reset`).
    Retry(Option<Duration>),
}

/// Where a reporter posts: each forge has its own consumer group on `raibid:events`, so an outage of
/// one never holds the other's statuses back.
#[derive(Clone)]
enum Sink {
    Gitea(Gitea),
    GitHub(GitHub),
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Gitea(_) => "gitea",
            Sink::GitHub(_) => "github",
        }
    }
    fn group(&self) -> &'static str {
        match self {
            Sink::Gitea(_) => keys::STATUS_REPORTER_GROUP,
            Sink::GitHub(_) => keys::GITHUB_STATUS_REPORTER_GROUP,
        }
    }
}

/// A post that failed: transient (5xx, 408, 429, network) or not.
#[derive(Debug)]
pub struct PostError {
    /// Worth retrying.
    pub transient: bool,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Gitea {
    /// Post a commit status, telling a transient failure from a refusal.
    pub async fn try_post_status(
        &self,
        full: &str,
        sha: &str,
        state: &str,
        description: &str,
        target_url: &str,
    ) -> Result<(), PostError> {
        let permanent = |m: String| PostError {
            transient: false,
            message: m,
        };
        let (o, r) =
            split_repo(full).ok_or_else(|| permanent(format!("bad repository name {full}")))?;
        if !sha.bytes().all(|b| b.is_ascii_hexdigit()) || sha.is_empty() {
            return Err(permanent("bad sha".into()));
        }
        let body = serde_json::json!({
            "state": state,
            "context": STATUS_CONTEXT,
            "description": description,
            "target_url": target_url,
        });
        let resp = self
            .post(&format!("/repos/{o}/{r}/statuses/{sha}"))
            .json(&body)
            .send()
            .await
            .map_err(|e| PostError {
                transient: true,
                message: format!("Gitea unreachable: {}", e.without_url()),
            })?;
        let st = resp.status();
        if st.is_success() {
            return Ok(());
        }
        Err(PostError {
            transient: st.is_server_error() || st.as_u16() == 408 || st.as_u16() == 429,
            message: format!("Gitea answered {st} to a commit status for {full}@{sha}"),
        })
    }
}

/// The commit-status reporter: one consumer of the group `raibid-status-reporters` (Gitea) or
/// `raibid-github-status-reporters` (GitHub) on `raibid:events`.
struct Reporter {
    state: AppState,
    sink: Sink,
    /// The wait the forge asked for with the last failure.
    hint: Option<Duration>,
    consumer: String,
    policy: RetryPolicy,
    /// Delay before the next retry of this consumer's pending entries.
    backoff: Duration,
    /// Some: entries failed and are pending; retry them (and read nothing new) at this instant.
    retry_at: Option<Instant>,
    /// Next take-over of stale entries of other consumers and pruning of dead consumers.
    housekeeping_at: Instant,
}

/// The entries of an `XREADGROUP` reply for one stream (RESP2 or RESP3); a trimmed entry has no fields.
fn stream_entries(reply: redis::Value) -> Vec<StreamId> {
    use redis::Value;
    let entries = match reply {
        Value::Array(mut streams) if !streams.is_empty() => match streams.swap_remove(0) {
            Value::Array(mut kv) if kv.len() == 2 => kv.swap_remove(1),
            _ => Value::Nil,
        },
        Value::Map(mut m) if !m.is_empty() => m.swap_remove(0).1,
        _ => Value::Nil,
    };
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut parts) = e else {
                return None;
            };
            if parts.is_empty() {
                return None;
            }
            let fields = if parts.len() > 1 {
                parts.swap_remove(1)
            } else {
                Value::Nil
            };
            let id: String = redis::from_redis_value(parts.swap_remove(0)).ok()?;
            let map = match fields {
                Value::Array(kv) => kv
                    .chunks(2)
                    .filter_map(|c| match c {
                        [k, v] => redis::from_redis_value_ref::<String>(k)
                            .ok()
                            .map(|k| (k, v.clone())),
                        _ => None,
                    })
                    .collect(),
                Value::Map(kv) => kv
                    .into_iter()
                    .filter_map(|(k, v)| redis::from_redis_value::<String>(k).ok().map(|k| (k, v)))
                    .collect(),
                _ => Default::default(),
            };
            Some(StreamId {
                id,
                map,
                ..Default::default()
            })
        })
        .collect()
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

/// Report commit statuses for job events: pending on claim, the final state at the end, both under
/// [`STATUS_CONTEXT`]. Runs in every dispatcher replica; the consumer group shares the work. An event
/// is acknowledged only once its status was posted (or Gitea refused it for good); failed posts stay
/// pending and are retried with exponential backoff; entries of reporters that died are taken over
/// with `XAUTOCLAIM`; a lost group (`FLUSHALL`, a new volume) is created again.
pub async fn status_reporter(state: AppState) {
    let Some(gitea) = state.settings.gitea.clone() else {
        tracing::info!("no Gitea URL configured: commit statuses are not reported");
        return;
    };
    run_reporter(state, Sink::Gitea(gitea)).await
}

/// The same reporter for GitHub: statuses of jobs whose Gitea repository mirrors a GitHub repository,
/// posted there too (same context, description and target URL as on Gitea).
pub async fn github_status_reporter(state: AppState) {
    let Some(github) = state.settings.intake.github.clone() else {
        tracing::info!("no GitHub token configured: commit statuses are reported to Gitea only");
        return;
    };
    if state.settings.gitea.is_none()
        && state
            .mirrors
            .snapshot(None, false, true)
            .await
            .mirrors
            .is_empty()
    {
        tracing::info!(
            "no Gitea URL and no mirror override: no job has a GitHub repository to report to"
        );
    }
    run_reporter(state, Sink::GitHub(github)).await
}

/// Create the GitHub reporter's group at the stream's end (`$`): a first start does not post the
/// statuses of every job in the stream's history.
pub async fn ensure_github_group(state: &AppState) {
    if state.settings.intake.github.is_none() {
        return;
    }
    let mut con = state.queue.redis();
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::EVENTS_STREAM)
        .arg(keys::GITHUB_STATUS_REPORTER_GROUP)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await;
    if let Err(e) = r {
        if e.code() != Some("BUSYGROUP") {
            tracing::warn!(error = %e, "GitHub status reporter: cannot create its group yet");
        }
    }
}

async fn run_reporter(state: AppState, sink: Sink) {
    let consumer = format!(
        "{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    let policy = state.settings.intake.status_retry.clone();
    let mut r = Reporter {
        state,
        sink,
        hint: None,
        consumer,
        backoff: policy.base,
        policy,
        // First this consumer's own pending entries (a restart under the same name resumes them).
        retry_at: Some(Instant::now()),
        housekeeping_at: Instant::now(),
    };
    r.run().await
}

impl Reporter {
    async fn run(&mut self) {
        let block = Duration::from_secs(5);
        loop {
            let mut con = match self.state.queue.blocking_connection(block).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "status reporter: redis unreachable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                if let Err(e) = self.step(&mut con, block).await {
                    if is_nogroup(&e) {
                        self.create_group().await;
                        continue;
                    }
                    tracing::warn!(error = %e, "status reporter: redis error; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }

    /// `XGROUP CREATE raibid:events raibid-status-reporters 0 MKSTREAM`: after a flush every entry
    /// in the stream is new, so the group starts at its beginning.
    async fn create_group(&self) {
        let mut con = self.state.queue.redis();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys::EVENTS_STREAM)
            .arg(self.sink.group())
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut con)
            .await;
        match r {
            Ok(()) => tracing::warn!(
                group = self.sink.group(),
                "status reporter: consumer group was missing (Redis flushed?); created it again"
            ),
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => {
                tracing::warn!(error = %e, "status reporter: cannot create its group");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    async fn step(
        &mut self,
        con: &mut redis::aio::MultiplexedConnection,
        block: Duration,
    ) -> redis::RedisResult<()> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at.into()).await;
            // This consumer's own pending entries, oldest first (id 0 reads the PEL, not new entries).
            let own = self.read(con, "0", Duration::ZERO).await?;
            let backlog = !own.is_empty();
            let mut ok = self.process(own).await;
            if ok {
                ok = self.take_over_stale().await?;
            }
            if ok {
                if backlog {
                    tracing::info!(
                        forge = self.sink.name(),
                        "status reporter: the forge takes statuses again; backlog posted"
                    );
                }
                self.retry_at = None;
                self.backoff = self.policy.base;
            } else {
                self.backoff = (self.backoff * 2).min(self.policy.max);
                self.retry_at = Some(Instant::now() + self.wait());
            }
            return Ok(());
        }
        if Instant::now() >= self.housekeeping_at {
            self.housekeeping_at = Instant::now() + self.policy.stale.min(Duration::from_secs(10));
            if !self.take_over_stale().await? {
                self.fail();
                return Ok(());
            }
            self.prune_consumers().await?;
        }
        let wait = block.min(
            self.housekeeping_at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        let new = self.read(con, ">", wait).await?;
        if !self.process(new).await {
            self.fail();
        }
        Ok(())
    }

    fn fail(&mut self) {
        self.retry_at = Some(Instant::now() + self.wait());
    }

    /// The next wait: the backoff, or longer when the forge asked for it.
    fn wait(&mut self) -> Duration {
        match self.hint.take() {
            Some(h) if h > self.backoff => {
                tracing::info!(forge = self.sink.name(), wait = ?h, "status reporter: waiting as the forge asked (retry-after / rate limit)");
                h
            }
            _ => self.backoff,
        }
    }

    async fn read(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
        id: &str,
        block: Duration,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut opts = StreamReadOptions::default()
            .group(self.sink.group(), &self.consumer)
            .count(100);
        if id == ">" {
            opts = opts.block(block.as_millis() as usize);
        }
        // Raw reply: entries of this consumer's pending list whose stream entry was trimmed come back
        // as `[id, nil]`, which the typed reply does not take.
        let reply: redis::Value = con
            .xread_options(&[keys::EVENTS_STREAM], &[id], &opts)
            .await?;
        Ok(stream_entries(reply))
    }

    /// Take over entries other reporters held past `stale` (they died or hang); false when one of
    /// them could not be posted (they then wait in this consumer's pending list).
    async fn take_over_stale(&mut self) -> redis::RedisResult<bool> {
        let mut con = self.state.queue.redis();
        let mut start = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = con
                .xautoclaim_options(
                    keys::EVENTS_STREAM,
                    self.sink.group(),
                    &self.consumer,
                    self.policy.stale.as_millis() as usize,
                    &start,
                    StreamAutoClaimOptions::default().count(100),
                )
                .await?;
            if !reply.claimed.is_empty() {
                tracing::info!(
                    entries = reply.claimed.len(),
                    "status reporter: took over events another reporter left pending"
                );
            }
            if !self.process(reply.claimed).await {
                return Ok(false);
            }
            if reply.next_stream_id == "0-0" {
                return Ok(true);
            }
            start = reply.next_stream_id;
        }
    }

    /// Remove reporter consumers (other than this one) idle past `prune_idle` with nothing pending.
    async fn prune_consumers(&self) -> redis::RedisResult<()> {
        let mut con = self.state.queue.redis();
        let info: StreamInfoConsumersReply = con
            .xinfo_consumers(keys::EVENTS_STREAM, self.sink.group())
            .await?;
        for c in info.consumers {
            if c.name != self.consumer
                && c.pending == 0
                && c.idle as u128 > self.policy.prune_idle.as_millis()
            {
                let _: i64 = con
                    .xgroup_delconsumer(keys::EVENTS_STREAM, self.sink.group(), &c.name)
                    .await?;
                tracing::info!(consumer = %c.name, "status reporter: removed a reporter that is gone");
            }
        }
        Ok(())
    }

    /// Post the entries in order; acknowledge each one that is done. Stops at the first one that
    /// must be retried (false): the rest stay pending, so statuses of a job keep their order.
    async fn process(&mut self, entries: Vec<StreamId>) -> bool {
        for e in entries {
            let outcome = self.handle(&e).await;
            if let Outcome::Retry(hint) = outcome {
                self.hint = hint;
                return false;
            }
            if outcome == Outcome::GaveUp {
                self.state
                    .counters
                    .statuses_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
            let mut con = self.state.queue.redis();
            let r: redis::RedisResult<i64> = con
                .xack(keys::EVENTS_STREAM, self.sink.group(), &[&e.id])
                .await;
            if let Err(err) = r {
                // Posted but not acknowledged: it is posted again later (a status is idempotent).
                tracing::warn!(error = %err, "status reporter: ack failed");
                return false;
            }
        }
        true
    }

    async fn handle(&self, e: &StreamId) -> Outcome {
        let ev: Option<Event> = match e.map.get("event") {
            Some(redis::Value::BulkString(b)) => serde_json::from_slice(b).ok(),
            _ => None,
        };
        // Deleted (trimmed) entries read from the pending list come back without fields.
        let Some(ev) = ev else { return Outcome::Done };
        if ev.kind != "job_claimed" && ev.kind != "job_finished" {
            return Outcome::Done;
        }
        let age = raibid_core::queue::entry_millis(&e.id)
            .map(|ms| (chrono::Utc::now().timestamp_millis() - ms).max(0) as u128)
            .unwrap_or(0);
        if age > self.policy.give_up.as_millis() {
            tracing::warn!(job = %ev.job, forge = self.sink.name(), "status reporter: event too old; its status is given up");
            return Outcome::GaveUp;
        }
        let mut job = match self.state.queue.get(&ev.job).await {
            Ok(j) => j,
            Err(QueueError::NotFound(_)) => return Outcome::Done,
            Err(err) => {
                tracing::warn!(job = %ev.job, error = %err, "status reporter: cannot read the job");
                return Outcome::Retry(None);
            }
        };
        if !ev.status.is_final() {
            if job.status.is_final() {
                // A late pending (retried after an outage) must not replace the final status.
                return Outcome::Done;
            }
            job.status = ev.status;
        }
        let (Some(repo), Some(sha)) = (job.source.forge_repo.clone(), job.source.sha.clone())
        else {
            return Outcome::Done;
        };
        let state = status_state(job.status);
        // One post per transition: the forge took this state for this job already (a redelivered or
        // duplicated event), or GitHub does not have the commit (said once, in the log).
        let posted = contract::status_posted_key(self.sink.name(), &job.id, state);
        let unknown = contract::status_posted_key(self.sink.name(), &job.id, UNKNOWN_COMMIT);
        let mut con = self.state.queue.redis();
        let seen: redis::RedisResult<(Option<String>, Option<String>)> = redis::pipe()
            .cmd("GET")
            .arg(&posted)
            .cmd("GET")
            .arg(&unknown)
            .query_async(&mut con)
            .await;
        match seen {
            Ok((None, None)) => {}
            Ok(_) => return Outcome::Done,
            Err(err) => {
                tracing::warn!(job = %job.id, error = %err, "status reporter: cannot read its markers");
                return Outcome::Retry(None);
            }
        }
        let diagnostics = if matches!(job.status, Status::Failed | Status::TimedOut) {
            let raw: redis::RedisResult<Option<String>> = redis::cmd("GET")
                .arg(contract::job_diagnostics_key(&job.id))
                .query_async(&mut con)
                .await;
            raw.ok()
                .flatten()
                .and_then(|r| serde_json::from_str::<Diagnostics>(&r).ok())
        } else {
            None
        };
        let target = crate::public::job_page_url(&self.state.settings, &job.id);
        let text = description(&job, diagnostics.as_ref());
        let result = match &self.sink {
            Sink::Gitea(gitea) => gitea
                .try_post_status(&repo, &sha, state, &text, &target)
                .await
                .map_err(|e| {
                    if e.transient {
                        GhError::Transient {
                            message: e.message,
                            retry_after: None,
                        }
                    } else {
                        GhError::Refused { message: e.message }
                    }
                }),
            Sink::GitHub(github) => {
                let gh_repo = match self
                    .state
                    .mirrors
                    .github_for_gitea(self.state.settings.gitea.as_ref(), &repo)
                    .await
                {
                    Ok(Some(r)) => r,
                    // Not a mirror of a GitHub repository: nothing to post there.
                    Ok(None) => return Outcome::Done,
                    Err(err) => {
                        tracing::warn!(job = %job.id, error = %err, "GitHub status: the mirror mapping is unavailable; retrying");
                        return Outcome::Retry(None);
                    }
                };
                github
                    .post_status(&gh_repo, &sha, state, &text, &target, STATUS_CONTEXT)
                    .await
            }
        };
        let keep = self.state.queue.config().retention.as_secs().max(1);
        match result {
            Ok(()) => {
                self.state
                    .counters
                    .statuses_posted
                    .fetch_add(1, Ordering::Relaxed);
                let r: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&posted)
                    .arg(&e.id)
                    .arg("EX")
                    .arg(keep)
                    .query_async(&mut con)
                    .await;
                if let Err(err) = r {
                    tracing::warn!(job = %job.id, error = %err, "status reporter: posted, but its marker was not written");
                }
                Outcome::Done
            }
            Err(GhError::Transient {
                message,
                retry_after,
            }) => {
                self.state
                    .counters
                    .statuses_retried
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = %job.id, forge = self.sink.name(), error = %message, retry_in = ?retry_after.unwrap_or(self.backoff).max(self.backoff), "commit status not posted; retrying");
                Outcome::Retry(retry_after)
            }
            Err(GhError::UnknownCommit { message }) => {
                tracing::warn!(job = %job.id, forge = self.sink.name(), sha = %sha, error = %message, "commit status dropped: the forge does not have this commit");
                let _: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(&unknown)
                    .arg(&e.id)
                    .arg("EX")
                    .arg(keep)
                    .query_async(&mut con)
                    .await;
                Outcome::GaveUp
            }
            Err(GhError::Refused { message }) => {
                tracing::warn!(job = %job.id, forge = self.sink.name(), error = %message, "commit status refused by the forge; given up");
                Outcome::GaveUp
            }
        }
    }
}

/// The marker state of a commit the forge does not have (`raibid:status:{forge}:{job}:unknown_commit`).
const UNKNOWN_COMMIT: &str = "unknown_commit";

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn pending_entries_whose_stream_entry_was_trimmed_parse_without_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("raibid:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("event"), bulk("{}")]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let e = stream_entries(reply);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].id, "1-0");
        assert!(e[0].map.contains_key("event"));
        assert_eq!(e[1].id, "2-0");
        assert!(e[1].map.is_empty());
        assert!(stream_entries(Value::Nil).is_empty());
    }

    #[test]
    fn a_failure_is_summed_up_by_its_first_error_test_or_step() {
        use raibid_core::cargo_messages::{CompilerMessage, FailingTest};
        let step = Some("step `test` exited with code 101");
        let mut d = Diagnostics::default();
        assert_eq!(failure_line(step, &d).as_deref(), step);
        d.tests.push(FailingTest {
            name: "tests::adds".into(),
            panic_message: Some("assertion `left == right` failed\n  left: 1".into()),
            file: Some("src/lib.rs".into()),
            line: Some(12),
            column: Some(5),
            output: String::new(),
            output_truncated: false,
            step: Some("test".into()),
        });
        assert_eq!(
            failure_line(step, &d).unwrap(),
            "test tests::adds failed: assertion `left == right` failed at src/lib.rs:12"
        );
        let msg = |level: &str, code: Option<&str>, m: &str, line: u32| CompilerMessage {
            level: level.into(),
            code: code.map(str::to_string),
            message: m.into(),
            file: Some("src/main.rs".into()),
            line: Some(line),
            column: Some(9),
            rendered: None,
            target: None,
            step: None,
            count: 1,
            suggestions: Vec::new(),
        };
        d.compiler.push(msg(
            "warning",
            Some("unused_variables"),
            "unused variable: `x`",
            2,
        ));
        d.compiler
            .push(msg("error", Some("E0308"), "mismatched types", 7));
        assert_eq!(
            failure_line(step, &d).unwrap(),
            "error[E0308]: mismatched types at src/main.rs:7"
        );
    }

    #[test]
    fn descriptions_name_the_pipeline() {
        let mut j = Job::new(
            raibid_core::job::Source {
                repo_url: "http://g/o/r.git".into(),
                git_ref: "refs/heads/main".into(),
                sha: None,
                trigger: raibid_core::job::Trigger {
                    kind: raibid_core::job::TriggerKind::Api,
                    actor: None,
                },
                delivery_id: None,
                forge_repo: None,
                patch: None,
                notify_url: None,
            },
            chrono::Utc::now(),
        );
        j.status = Status::Succeeded;
        assert_eq!(description(&j, None), "all steps passed");
        j.pipeline = Some("lint".into());
        assert_eq!(description(&j, None), "lint: all steps passed");
    }
}
