//! raibid-agent: claims jobs from `raibid:jobs` (consumer group `raibid-agents`), clones the commit into
//! a fresh workspace, runs the pipeline step by step in its own process group, streams every output
//! line into the job's log, writes the final status (fenced by its lease) and acknowledges the entry.

pub mod git;

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use raibid_core::contract::env;
use raibid_core::job::Status;
use raibid_core::pipeline::{Pipeline, PIPELINE_FILE};
use raibid_core::queue::{Claim, Queue, QueueConfig, QueueError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// raibid-agent — runs raibid-ci jobs from the Redis queue.
///
/// Long-running (warm pool): blocks on XREADGROUP and starts a job within milliseconds of it being
/// queued; `--concurrency N` runs N jobs at once. With `--once` (what a KEDA ScaledJob pod runs) it
/// claims exactly one job, runs it, acknowledges it and exits.
#[derive(Debug, Clone, Parser)]
#[command(name = "raibid-agent", version, about, long_about = None)]
pub struct AgentConfig {
    /// Redis URL (with password if any), e.g. redis://:pw@redis:6379/0.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,

    /// Consumer name, unique per agent (the pod name on Kubernetes). Default: <hostname>-<pid>.
    /// With --concurrency N > 1 each slot is a consumer named <name>-<slot>.
    #[arg(long, env = env::AGENT_NAME)]
    pub name: Option<String>,

    /// Claim exactly one job, run it, acknowledge it and exit (KEDA ScaledJob mode).
    #[arg(long, env = env::ONCE)]
    pub once: bool,

    /// With --once: exit 0 after waiting this many seconds without finding a job.
    #[arg(long, env = env::IDLE_TIMEOUT_SECS, default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Jobs run at once by a long-running agent.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Directory for per-job workspaces (each is deleted when its job ends).
    #[arg(long, env = env::WORKSPACE_DIR, default_value = "/tmp/raibid/workspaces")]
    pub workspace_dir: PathBuf,

    /// Shared cache directory; steps get CARGO_HOME=<cache>/cargo so dependencies download once.
    #[arg(long, env = env::CACHE_DIR, default_value = "/tmp/raibid/cache")]
    pub cache_dir: PathBuf,

    /// Comma-separated URL schemes jobs may clone from.
    #[arg(long, env = env::ALLOWED_SCHEMES, default_value = "https,http,ssh")]
    pub allowed_schemes: String,

    /// Comma-separated hosts jobs may clone from; empty allows any host.
    #[arg(long, env = env::ALLOWED_HOSTS, default_value = "")]
    pub allowed_hosts: String,

    /// User name for HTTP(S) git credentials.
    #[arg(long, env = env::GIT_USERNAME)]
    pub git_username: Option<String>,

    /// Token for HTTP(S) git credentials (never logged, never on a command line).
    #[arg(long, env = env::GIT_TOKEN, hide_env_values = true)]
    pub git_token: Option<String>,

    /// File holding the git token (a mounted secret); used when --git-token is not set.
    #[arg(long, env = env::GIT_TOKEN_FILE)]
    pub git_token_file: Option<PathBuf>,

    /// Seconds a claim stays valid without a heartbeat (heartbeats go out every third of it).
    #[arg(long, env = env::LEASE_SECS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_secs: u64,

    /// On SIGTERM, seconds a running job may take to finish before it is killed and released back to
    /// the queue (another agent picks it up at once).
    #[arg(long, env = env::SHUTDOWN_GRACE_SECS, default_value_t = 600)]
    pub grace_secs: u64,

    /// Milliseconds one XREADGROUP blocks before the agent looks at its shutdown flag again.
    #[arg(long, env = env::BLOCK_MS, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub block_ms: u64,
}

impl AgentConfig {
    /// The consumer name base.
    pub fn agent_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        })
    }

    fn git_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.git_token {
            return Ok(Some(t.clone()));
        }
        match &self.git_token_file {
            Some(f) => Ok(Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .trim()
                    .to_string(),
            )),
            None => Ok(None),
        }
    }
}

/// Replaces known secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// Mask these values (empty and very short values are ignored: they would mask everything).
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut secrets: Vec<String> = values.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker { secrets }
    }

    /// Also mask these values.
    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Masker {
        Masker::new(self.secrets.iter().cloned().chain(more))
    }

    /// Mask a line.
    pub fn mask(&self, line: &str) -> String {
        let mut out = line.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

enum StepEnd {
    Released,
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
    LeaseLost,
    SpawnFailed(String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    None,
    Cancel,
    LeaseLost,
    /// Shutdown grace expired: kill the step and give the job back to the queue.
    Release,
}

/// How `execute` ended when no final status is to be written by this agent.
const LOST: Status = Status::Running;
const RELEASED: Status = Status::Queued;

struct Shared {
    cfg: AgentConfig,
    queue: Queue,
    policy: git::UrlPolicy,
    creds: git::Credentials,
    masker: Masker,
    running: Mutex<HashMap<String, watch::Sender<Stop>>>,
    jobs_done: AtomicU64,
}

/// Run the agent until `shutdown` turns true (or, with `--once`, until one job ran or the idle timeout
/// passed).
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let name = cfg.agent_name();
    let queue = connect_with_backoff(&cfg.redis_url, &shutdown).await?;
    let Some(queue) = queue else { return Ok(()) };
    let slots: Vec<String> = if cfg.concurrency == 1 {
        vec![name.clone()]
    } else {
        (0..cfg.concurrency)
            .map(|i| format!("{name}-{i}"))
            .collect()
    };
    for s in &slots {
        if queue.agent_alive(s).await? {
            anyhow::bail!(
                "another agent with consumer name `{s}` is alive (heartbeat key present); give each agent a unique {}",
                env::AGENT_NAME
            );
        }
    }
    std::fs::create_dir_all(&cfg.workspace_dir)
        .with_context(|| format!("creating workspace dir {}", cfg.workspace_dir.display()))?;
    std::fs::create_dir_all(cfg.cache_dir.join("cargo"))
        .with_context(|| format!("creating cache dir {}", cfg.cache_dir.display()))?;
    let token = cfg.git_token()?;
    let shared = Arc::new(Shared {
        policy: git::UrlPolicy::from_lists(&cfg.allowed_schemes, &cfg.allowed_hosts),
        creds: git::Credentials {
            username: cfg.git_username.clone(),
            token: token.clone(),
        },
        masker: Masker::new(token),
        cfg,
        queue,
        running: Mutex::new(HashMap::new()),
        jobs_done: AtomicU64::new(0),
    });
    tracing::info!(agent = %name, slots = slots.len(), once = shared.cfg.once, "agent started");
    let cancel_task = tokio::spawn(cancel_listener(shared.clone()));
    let mut workers = Vec::new();
    for slot in slots {
        workers.push(tokio::spawn(worker(shared.clone(), slot, shutdown.clone())));
    }
    let mut result = Ok(());
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow::anyhow!("worker panicked: {e}")),
        }
    }
    cancel_task.abort();
    tracing::info!(agent = %name, jobs = shared.jobs_done.load(Ordering::Relaxed), "agent stopped");
    result
}

async fn connect_with_backoff(
    url: &str,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Queue>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Queue::connect(url, QueueConfig::default()).await {
            Ok(q) => return Ok(Some(q)),
            Err(QueueError::Redis(e))
                if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() =>
            {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unreachable; retrying");
            }
            Err(e) => return Err(e).context("connecting to redis"),
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn cancel_listener(shared: Arc<Shared>) {
    use futures::StreamExt;
    loop {
        match shared.queue.pubsub().await {
            Ok(mut ps) => {
                if ps
                    .subscribe(raibid_core::contract::keys::CANCEL_CHANNEL)
                    .await
                    .is_ok()
                {
                    let mut msgs = ps.on_message();
                    while let Some(m) = msgs.next().await {
                        let id: String = m.get_payload().unwrap_or_default();
                        if let Ok(map) = shared.running.lock() {
                            if let Some(tx) = map.get(&id) {
                                tracing::info!(job = %id, "cancel requested");
                                let _ = tx.send(Stop::Cancel);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cancel channel unavailable; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn worker(
    shared: Arc<Shared>,
    slot: String,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cfg = &shared.cfg;
    let block = Duration::from_millis(cfg.block_ms.max(1));
    let idle_deadline = Instant::now() + Duration::from_secs(cfg.idle_timeout_secs);
    let ttl = Duration::from_secs(cfg.lease_secs);
    let mut con = None;
    let mut delay = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if cfg.once && Instant::now() >= idle_deadline {
            tracing::info!(agent = %slot, "no job within the idle timeout; exiting");
            break;
        }
        if con.is_none() {
            match shared.queue.blocking_connection(block).await {
                Ok(c) => con = Some(c),
                Err(e) => {
                    tracing::warn!(agent = %slot, error = %e, "redis unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let done = shared.jobs_done.load(Ordering::Relaxed);
        if let Err(e) = shared.queue.heartbeat(&slot, None, done, ttl).await {
            tracing::warn!(agent = %slot, error = %e, "heartbeat failed");
        }
        let Some(c) = con.as_mut() else { continue };
        let claim = match shared.queue.claim_next(c, &slot, block).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(agent = %slot, error = %e, "claim failed; reconnecting");
                con = None;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let Some(claim) = claim else { continue };
        let id = claim.job.id.clone();
        tracing::info!(agent = %slot, job = %id, attempt = claim.job.attempt, "claimed");
        run_job(&shared, &slot, claim, shutdown.clone()).await;
        shared.jobs_done.fetch_add(1, Ordering::Relaxed);
        if cfg.once {
            break;
        }
    }
    if let Err(e) = shared.queue.deregister(&slot).await {
        tracing::warn!(agent = %slot, error = %e, "could not deregister");
    }
    Ok(())
}

type LogTx = mpsc::Sender<(String, String, String)>;

/// Everything a running job needs.
struct JobCtx<'a> {
    shared: &'a Shared,
    claim: Claim,
    logs: LogTx,
    stop: watch::Receiver<Stop>,
    deadline: Instant,
    masker: Arc<Mutex<Masker>>,
    /// (name, value) of the pipeline's secrets.
    secrets: Vec<(String, String)>,
}

impl JobCtx<'_> {
    async fn sys(&self, step: &str, line: impl Into<String>) {
        let _ = self
            .logs
            .send((step.to_string(), "system".into(), line.into()))
            .await;
    }

    async fn update(&mut self, event: &'static str) -> bool {
        match self
            .shared
            .queue
            .update_claimed(&mut self.claim, event)
            .await
        {
            Ok(()) => true,
            Err(QueueError::LeaseLost(_)) => false,
            Err(e) => {
                tracing::warn!(job = %self.claim.job.id, error = %e, "could not update job record");
                true
            }
        }
    }

    fn stopped(&self) -> Stop {
        *self.stop.borrow()
    }
}

async fn run_job(shared: &Arc<Shared>, slot: &str, claim: Claim, shutdown: watch::Receiver<bool>) {
    let id = claim.job.id.clone();
    let entry = claim.entry_id.clone();
    let lease = claim.lease.clone();
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    if let Ok(mut m) = shared.running.lock() {
        m.insert(id.clone(), stop_tx.clone());
    }
    // Log flusher: batches lines, masks secrets, appends (fenced by the lease).
    let (log_tx, mut log_rx) = mpsc::channel::<(String, String, String)>(4096);
    let masker = Arc::new(Mutex::new(shared.masker.clone()));
    let flusher = {
        let masker = masker.clone();
        let shared = shared.clone();
        let id = id.clone();
        let lease = lease.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(256);
            while let Some(first) = log_rx.recv().await {
                batch.push(first);
                while batch.len() < 500 {
                    match log_rx.try_recv() {
                        Ok(l) => batch.push(l),
                        Err(_) => break,
                    }
                }
                if let Ok(m) = masker.lock() {
                    for l in batch.iter_mut() {
                        l.2 = m.mask(&l.2);
                    }
                }
                match shared.queue.append_log(&id, &lease, &batch).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = stop_tx.send(Stop::LeaseLost);
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "log append failed"),
                }
                batch.clear();
            }
        })
    };
    // Heartbeat: keeps the lease, notices cancel requests the pub/sub message may have missed.
    let heartbeat = {
        let shared = shared.clone();
        let id = id.clone();
        let slot = slot.to_string();
        let lease = lease.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(shared.cfg.lease_secs * 1000 / 3);
            let ttl = Duration::from_secs(shared.cfg.lease_secs);
            loop {
                let done = shared.jobs_done.load(Ordering::Relaxed);
                if let Err(e) = shared
                    .queue
                    .heartbeat(&slot, Some((&id, &entry)), done, ttl)
                    .await
                {
                    tracing::warn!(job = %id, error = %e, "heartbeat failed");
                }
                if let Ok(job) = shared.queue.get(&id).await {
                    if job.lease.as_deref() != Some(lease.as_str()) {
                        let _ = stop_tx.send(Stop::LeaseLost);
                    } else if job.cancel_requested {
                        let _ = stop_tx.send(Stop::Cancel);
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    // Shutdown: let the job finish within the grace period, then kill it and release it.
    let grace = {
        let stop_tx = stop_tx.clone();
        let mut shutdown = shutdown.clone();
        let secs = shared.cfg.grace_secs;
        let id = id.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
            tracing::info!(job = %id, grace_secs = secs, "shutdown requested; letting the job finish");
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let _ = stop_tx.send(Stop::Release);
        })
    };
    let deadline = Instant::now() + raibid_core::pipeline::DEFAULT_JOB_TIMEOUT;
    let mut ctx = JobCtx {
        shared,
        claim,
        logs: log_tx,
        stop: stop_rx,
        deadline,
        masker,
        secrets: Vec::new(),
    };
    let ws = shared.cfg.workspace_dir.join(&id);
    let outcome = execute(&mut ctx, &ws, shutdown).await;
    let _ = tokio::fs::remove_dir_all(&ws).await;
    // Let the flusher write everything before the final status.
    let JobCtx {
        mut claim, logs, ..
    } = ctx;
    drop(logs);
    let _ = flusher.await;
    heartbeat.abort();
    grace.abort();
    if let Ok(mut m) = shared.running.lock() {
        m.remove(&id);
    }
    let now = Utc::now();
    let (status, reason) = outcome;
    if status == RELEASED {
        match shared
            .queue
            .requeue(
                &id,
                &claim.entry_id,
                "its agent shut down before the job finished",
                Some(&claim.lease),
            )
            .await
        {
            Ok(r) => tracing::warn!(job = %id, outcome = ?r, "job released back to the queue"),
            Err(e) => {
                tracing::error!(job = %id, error = %e, "could not release the job; the reaper will reclaim it")
            }
        }
        return;
    }
    if status == LOST {
        // Lease lost: another agent owns the job now; write nothing.
        tracing::warn!(job = %id, "lease lost; leaving the job to the agent that holds it");
        return;
    }
    claim.job.finish(status, reason, now);
    // The final write survives a Redis restart: retry connection errors for up to a minute (the lease
    // may expire meanwhile; then the fence refuses the write and the reclaimed attempt decides).
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(100);
    loop {
        match shared.queue.finish_claimed(&mut claim).await {
            Ok(()) => tracing::info!(job = %id, status = %status, "finished"),
            Err(QueueError::LeaseLost(_)) => {
                tracing::warn!(job = %id, "lease lost before the final write; result discarded")
            }
            Err(QueueError::Redis(e)) if Instant::now() < give_up => {
                tracing::warn!(job = %id, error = %e, "final write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(e) => tracing::error!(job = %id, error = %e, "could not write the final status"),
        }
        break;
    }
    let done = shared.jobs_done.load(Ordering::Relaxed) + 1;
    let _ = shared
        .queue
        .heartbeat(slot, None, done, Duration::from_secs(shared.cfg.lease_secs))
        .await;
}

/// Run clone, config and the pipeline. Returns the final status, or `LOST` (lease lost: write nothing)
/// or `RELEASED` (shutdown: give the job back).
async fn execute(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
    _shutdown: watch::Receiver<bool>,
) -> (Status, Option<String>) {
    let now = Utc::now();
    ctx.claim.job.timestamps.started = Some(now);
    let _ = tokio::fs::remove_dir_all(ws).await;
    // clone
    ctx.claim.job.begin_step("clone", Utc::now());
    if !ctx.update("step_started").await {
        return (LOST, None);
    }
    let (ok, msg) = clone(ctx, ws).await;
    ctx.claim
        .job
        .end_step(if ok { "succeeded" } else { "failed" }, None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    if !ok {
        return (Status::Failed, Some(format!("clone: {msg}")));
    }
    // config
    ctx.claim.job.begin_step("config", Utc::now());
    ctx.update("step_started").await;
    let pipeline = match load_pipeline(ws) {
        Ok((p, from_file)) => {
            ctx.sys(
                "config",
                if from_file {
                    format!(
                        "[raibid] pipeline `{}` from {PIPELINE_FILE}: {} step(s)",
                        p.name,
                        p.steps.len()
                    )
                } else {
                    format!(
                        "[raibid] no {PIPELINE_FILE}; default Rust pipeline: {} step(s)",
                        p.steps.len()
                    )
                },
            )
            .await;
            p
        }
        Err(e) => {
            ctx.sys("config", format!("[raibid] {e}")).await;
            ctx.claim.job.end_step("failed", None, Utc::now());
            ctx.update("step_finished").await;
            return (Status::Failed, Some(format!("config: {e}")));
        }
    };
    let mut secrets = Vec::new();
    for name in &pipeline.secrets {
        match std::env::var(format!("{}{name}", env::SECRET_PREFIX)) {
            Ok(v) => secrets.push((name.clone(), v)),
            Err(_) => {
                let msg = format!(
                    "secret `{name}` is not available to this agent (set {}{name})",
                    env::SECRET_PREFIX
                );
                ctx.sys("config", format!("[raibid] {msg}")).await;
                ctx.claim.job.end_step("failed", None, Utc::now());
                ctx.update("step_finished").await;
                return (Status::Failed, Some(format!("config: {msg}")));
            }
        }
    }
    if let Ok(mut m) = ctx.masker.lock() {
        *m = m.with(secrets.iter().map(|(_, v)| v.clone()));
    }
    ctx.secrets = secrets;
    ctx.claim.job.pipeline = Some(pipeline.name.clone());
    ctx.deadline = Instant::now() + pipeline.timeout;
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    // steps
    for step in &pipeline.steps {
        match ctx.stopped() {
            Stop::None => {}
            Stop::Release => return (RELEASED, None),
            Stop::LeaseLost => return (LOST, None),
            Stop::Cancel => {
                return (
                    Status::Cancelled,
                    Some(format!("cancelled before step `{}`", step.name)),
                )
            }
        }
        ctx.claim.job.begin_step(&step.name, Utc::now());
        if !ctx.update("step_started").await {
            return (LOST, None);
        }
        ctx.sys(&step.name, format!("$ {}", step.run)).await;
        let env = step_env(ctx, &pipeline, step);
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let (limit, limit_is_step) = match step.timeout {
            Some(t) if t < remaining => (t, true),
            _ => (remaining, false),
        };
        let started = Instant::now();
        let end = run_step(ctx, &step.name, &step.run, ws, &env, limit).await;
        let secs = started.elapsed().as_secs_f64();
        let (st, code, result) = match end {
            StepEnd::Exited(0) => ("succeeded", Some(0), None),
            StepEnd::Exited(c) => (
                "failed",
                Some(c),
                Some((
                    Status::Failed,
                    format!("step `{}` exited with code {c}", step.name),
                )),
            ),
            StepEnd::Signalled(s) => (
                "failed",
                None,
                Some((
                    Status::Failed,
                    format!("step `{}` was killed by signal {s}", step.name),
                )),
            ),
            StepEnd::TimedOut => (
                "timed_out",
                None,
                Some((
                    Status::TimedOut,
                    if limit_is_step {
                        format!("step `{}` timed out after {}s", step.name, limit.as_secs())
                    } else {
                        format!(
                            "job timed out after {}s during step `{}`",
                            pipeline.timeout.as_secs(),
                            step.name
                        )
                    },
                )),
            ),
            StepEnd::Cancelled => (
                "cancelled",
                None,
                Some((
                    Status::Cancelled,
                    format!("cancelled during step `{}`", step.name),
                )),
            ),
            StepEnd::LeaseLost => return (LOST, None),
            StepEnd::Released => return (RELEASED, None),
            StepEnd::SpawnFailed(e) => (
                "failed",
                None,
                Some((
                    Status::Failed,
                    format!("step `{}` could not start: {e}", step.name),
                )),
            ),
        };
        ctx.sys(
            &step.name,
            format!("[raibid] step `{}` {st} in {secs:.2}s", step.name),
        )
        .await;
        ctx.claim.job.end_step(st, code, Utc::now());
        if !ctx.update("step_finished").await {
            return (LOST, None);
        }
        if let Some((status, reason)) = result {
            return (status, Some(reason));
        }
    }
    (Status::Succeeded, None)
}

fn load_pipeline(ws: &Path) -> Result<(Pipeline, bool), String> {
    let f = ws.join(PIPELINE_FILE);
    match std::fs::read(&f) {
        Ok(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{PIPELINE_FILE}: not UTF-8"))?;
            Pipeline::parse(&text)
                .map(|p| (p, true))
                .map_err(|e| e.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            Pipeline::default_rust(ws.join("Cargo.lock").exists()),
            false,
        )),
        Err(e) => Err(format!("{PIPELINE_FILE}: {e}")),
    }
}

async fn clone(ctx: &mut JobCtx<'_>, ws: &Path) -> (bool, String) {
    let src = ctx.claim.job.source.clone();
    if let Err(e) = ctx.shared.policy.check(&src.repo_url) {
        ctx.sys("clone", format!("[raibid] refused: {e}")).await;
        return (false, e);
    }
    if let Err(e) = tokio::fs::create_dir_all(ws).await {
        return (false, format!("cannot create workspace: {e}"));
    }
    let creds = &ctx.shared.creds;
    let url = src.repo_url.as_str();
    let run = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        git::git(ws, &a, creds, Some(url)).await
    };
    let mut steps: Vec<Vec<String>> = vec![
        vec!["init".into(), "-q".into()],
        vec!["remote".into(), "add".into(), "origin".into(), url.into()],
    ];
    let want = src.sha.clone().unwrap_or_else(|| src.git_ref.clone());
    steps.push(vec![
        "fetch".into(),
        "-q".into(),
        "--depth=1".into(),
        "--no-tags".into(),
        "origin".into(),
        "--".into(),
        want.clone(),
    ]);
    for (i, args) in steps.iter().enumerate() {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a == url {
                    git::redact_url(a)
                } else {
                    a.clone()
                }
            })
            .collect();
        ctx.sys("clone", format!("$ git {}", shown.join(" "))).await;
        match run(args.clone()).await {
            Ok(out) => {
                for l in &out.lines {
                    ctx.sys("clone", l.clone()).await;
                }
                if !out.ok {
                    if i == 2 && src.sha.is_some() {
                        // The server does not serve arbitrary shas shallowly: fetch the ref and find the commit.
                        let args = vec![
                            "fetch".into(),
                            "-q".into(),
                            "--no-tags".into(),
                            "origin".into(),
                            "--".into(),
                            src.git_ref.clone(),
                        ];
                        ctx.sys("clone", format!("$ git {}", args.join(" "))).await;
                        match run(args).await {
                            Ok(o) if o.ok => break,
                            Ok(o) => {
                                for l in &o.lines {
                                    ctx.sys("clone", l.clone()).await;
                                }
                                return (false, format!("could not fetch {}", src.git_ref));
                            }
                            Err(e) => return (false, format!("git: {e}")),
                        }
                    }
                    return (
                        false,
                        format!(
                            "`git {}` failed",
                            args.first().map(String::as_str).unwrap_or("")
                        ),
                    );
                }
            }
            Err(e) => return (false, format!("cannot run git: {e}")),
        }
    }
    let target = src.sha.clone().unwrap_or_else(|| "FETCH_HEAD".into());
    let args = vec![
        "checkout".into(),
        "-q".into(),
        "--detach".into(),
        target,
        "--".into(),
    ];
    ctx.sys("clone", format!("$ git {}", args.join(" "))).await;
    match run(args).await {
        Ok(o) if o.ok => {}
        Ok(o) => {
            for l in &o.lines {
                ctx.sys("clone", l.clone()).await;
            }
            return (false, "commit not found".into());
        }
        Err(e) => return (false, format!("git: {e}")),
    }
    if let Ok(o) = run(vec!["rev-parse".into(), "HEAD".into()]).await {
        if o.ok {
            ctx.sys("clone", format!("[raibid] at commit {}", o.stdout))
                .await;
            if ctx.claim.job.source.sha.is_none() {
                ctx.claim.job.source.sha = Some(o.stdout);
            }
        }
    }
    (true, String::new())
}

fn step_env(
    ctx: &JobCtx<'_>,
    pipeline: &Pipeline,
    step: &raibid_core::pipeline::Step,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for k in [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "USER",
    ] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    let job = &ctx.claim.job;
    let cargo_home = ctx.shared.cfg.cache_dir.join("cargo");
    env.push((
        "CARGO_HOME".into(),
        cargo_home.to_string_lossy().into_owned(),
    ));
    if std::env::var_os("RUSTUP_HOME").is_none() {
        if let Some(home) = std::env::var_os("HOME") {
            let r = PathBuf::from(home).join(".rustup");
            if r.exists() {
                env.push(("RUSTUP_HOME".into(), r.to_string_lossy().into_owned()));
            }
        }
    }
    env.push(("CARGO_TERM_COLOR".into(), "never".into()));
    env.push(("CI".into(), "true".into()));
    env.push(("RAIBID_JOB_ID".into(), job.id.clone()));
    env.push(("RAIBID_ATTEMPT".into(), job.attempt.to_string()));
    env.push(("RAIBID_REPO_URL".into(), job.source.repo_url.clone()));
    env.push(("RAIBID_REF".into(), job.source.git_ref.clone()));
    env.push((
        "RAIBID_SHA".into(),
        job.source.sha.clone().unwrap_or_default(),
    ));
    env.push(("RAIBID_STEP".into(), step.name.clone()));
    for (k, v) in pipeline
        .env
        .iter()
        .chain(step.env.iter())
        .chain(ctx.secrets.iter().map(|(k, v)| (k, v)))
    {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

async fn pump<R: AsyncRead + Unpin>(r: R, step: String, stream: &'static str, tx: LogTx) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                buf.truncate(64 * 1024);
                let line = String::from_utf8_lossy(&buf).into_owned();
                if tx
                    .send((step.clone(), stream.to_string(), line))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

async fn run_step(
    ctx: &mut JobCtx<'_>,
    name: &str,
    script: &str,
    ws: &Path,
    env: &[(String, String)],
    limit: Duration,
) -> StepEnd {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(ws)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepEnd::SpawnFailed(e.to_string()),
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, name.to_string(), "stdout", ctx.logs.clone())));
    let err = child
        .stderr
        .take()
        .map(|o| tokio::spawn(pump(o, name.to_string(), "stderr", ctx.logs.clone())));
    let mut stop = ctx.stop.clone();
    let end = tokio::select! {
        st = child.wait() => match st {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => StepEnd::Exited(c),
                    (None, Some(sig)) => StepEnd::Signalled(sig),
                    _ => StepEnd::Exited(-1),
                }
            }
            Err(e) => StepEnd::SpawnFailed(e.to_string()),
        },
        _ = tokio::time::sleep(limit) => StepEnd::TimedOut,
        _ = async {
            loop {
                if *stop.borrow_and_update() != Stop::None { break; }
                if stop.changed().await.is_err() { std::future::pending::<()>().await; }
            }
        } => match ctx.stopped() { Stop::LeaseLost => StepEnd::LeaseLost, Stop::Release => StepEnd::Released, _ => StepEnd::Cancelled },
    };
    // Whatever happened, nothing of the step outlives it: kill the whole process group.
    if pgid > 0 {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    for h in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masker_masks_longest_first() {
        let m = Masker::new(vec![
            "abcd".to_string(),
            "abcdef".to_string(),
            "x".to_string(),
        ]);
        assert_eq!(m.mask("token=abcdef and abcd, x"), "token=*** and ***, x");
    }
}
