//! `bench` — raibid-ci's performance figures, measured against the real parts: a private `redis-server`
//! (AOF on, `appendfsync always`, as the project runs it), the real queue protocol
//! (`raibid_core::queue`), and the release-built `raibid-dispatcher` binary, all on 127.0.0.1.
//! Every loop is bounded (job/request counts and a deadline) and stops by itself; every process it
//! starts is killed when it ends.
//!
//! ```sh
//! cd rust && cargo build --release          # the dispatcher binary webhook-ingest starts
//! cargo run --release --example bench -- all
//! cargo run --release --example bench -- claim-latency --jobs 10000 --consumers 1,4
//! cargo run --release --example bench -- webhook-ingest --requests 50000 --concurrency 64
//! ```
//!
//! Figures are recorded in `docs/benchmarks.md`. Speed is measured here, never in timed tests.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use raibid_core::job::{Job, Source, Status, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, Queue, QueueConfig};
use raibid_core::testkit::{free_port, RedisServer};
use redis::Value as RValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// raibid-ci benchmarks against a real redis-server and the real release-built dispatcher (loopback only).
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "raibid-ci benchmarks against a real redis-server and the real release-built dispatcher (loopback only)",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enqueue → claim latency of the queue protocol with warm consumers (Queue::enqueue,
    /// Queue::claim_next, Queue::finish_claimed; jobs are finished at once: no git, no cargo).
    ClaimLatency(ClaimArgs),
    /// Signed Gitea push webhooks fired at the release dispatcher binary: rate, lost jobs, memory.
    WebhookIngest(IngestArgs),
    /// Both, one after the other, then one markdown summary.
    All(AllArgs),
}

/// Redis `appendfsync` policy. raibid runs `always`; the others are diagnostics that show what the
/// disk's fsync costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fsync {
    Always,
    Everysec,
    No,
}

impl Fsync {
    fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::No => "no",
        }
    }
}

/// How jobs arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A job is enqueued only when a consumer is idle and about to block in XREADGROUP (at most one
    /// outstanding job per consumer): the latency a warm agent sees, with no queueing by construction.
    Warm,
    /// Open loop at a steady --rate; the backlog is reported (a backlog means queueing is measured).
    Paced,
    /// --burst-jobs enqueued at once (--burst-concurrency in flight): drain throughput; latency is mostly queueing.
    Burst,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Warm => "warm",
            Mode::Paced => "paced",
            Mode::Burst => "burst",
        }
    }
}

#[derive(Debug, Clone, Args)]
struct ClaimArgs {
    /// Measured jobs per configuration (warm and paced modes).
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Jobs run first (warm mode) and left out of the figures: connections, Lua script cache.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Numbers of warm consumers to compare, e.g. 1,4 (each its own Queue and blocking connection).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    consumers: Vec<usize>,
    /// Arrival patterns to run.
    #[arg(long, value_delimiter = ',', default_value = "warm,burst")]
    modes: Vec<Mode>,
    /// Jobs per second of the paced mode.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Jobs of the paced mode (default: --jobs).
    #[arg(long)]
    paced_jobs: Option<usize>,
    /// Jobs of the burst mode.
    #[arg(long, default_value_t = 2000)]
    burst_jobs: usize,
    /// Enqueues in flight in burst mode.
    #[arg(long, default_value_t = 64)]
    burst_concurrency: usize,
    /// Redis appendfsync policies to compare side by side (raibid runs `always`).
    #[arg(long, value_delimiter = ',', default_value = "always")]
    fsync: Vec<Fsync>,
    /// Leave out the agent's heartbeat before each XREADGROUP (the real agent loop sends one).
    #[arg(long)]
    no_heartbeat: bool,
    /// XREADGROUP BLOCK milliseconds (only how fast consumers notice the end of a run).
    #[arg(long, default_value_t = 500)]
    block_ms: u64,
    /// Abandon a configuration after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

#[derive(Debug, Clone, Args)]
struct IngestArgs {
    /// Measured webhook deliveries per configuration.
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Requests in flight (worker tasks on keep-alive connections); several values are compared.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<usize>,
    /// Deliveries sent first and left out of the rate (counted in the lost-jobs check).
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Redis appendfsync policies to compare side by side (raibid runs `always`).
    #[arg(long, value_delimiter = ',', default_value = "always")]
    fsync: Vec<Fsync>,
    /// The dispatcher binary (default: rust/target/release/raibid-dispatcher); several (separated by
    /// `,`) are compared.
    #[arg(long, value_delimiter = ',')]
    dispatcher_bin: Vec<PathBuf>,
    /// RAIBID_LOG for the dispatcher (its default is `info`: one line per queued job); several values
    /// (separated by `;`) are compared.
    #[arg(long, value_delimiter = ';', default_value = "info")]
    dispatcher_log: Vec<String>,
    /// Milliseconds between samples of the dispatcher's VmRSS.
    #[arg(long, default_value_t = 100)]
    rss_sample_ms: u64,
    /// Abandon a configuration after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Seconds to wait, printing the dispatcher's pid, before the first request (to attach a profiler).
    #[arg(long, default_value_t = 0)]
    pause_secs: u64,
}

#[derive(Debug, Clone, Args)]
struct AllArgs {
    /// Measured jobs per claim-latency configuration.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Warm consumer counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    consumers: Vec<usize>,
    /// Claim-latency arrival patterns.
    #[arg(long, value_delimiter = ',', default_value = "warm,paced,burst")]
    modes: Vec<Mode>,
    /// Jobs per second of the paced mode.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Jobs of the paced mode.
    #[arg(long, default_value_t = 3000)]
    paced_jobs: usize,
    /// Jobs of the burst mode.
    #[arg(long, default_value_t = 2000)]
    burst_jobs: usize,
    /// Measured webhook deliveries.
    #[arg(long, default_value_t = 50_000)]
    requests: usize,
    /// Webhook requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// appendfsync policies to compare (the first is the one raibid runs; add everysec to see the disk's share).
    #[arg(long, value_delimiter = ',', default_value = "always,everysec")]
    fsync: Vec<Fsync>,
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Nearest-rank percentiles of microsecond samples.
#[derive(Debug, Clone, Copy, Default)]
struct Pct {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

fn pct(mut v: Vec<u64>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_unstable();
    let n = v.len();
    let at = |p: f64| v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
    Pct {
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: v[n - 1],
    }
}

impl Pct {
    fn cells(&self) -> String {
        format!(
            "{} / {} / {} / {}",
            us(self.p50),
            us(self.p90),
            us(self.p99),
            us(self.max)
        )
    }
}

/// Microseconds, with a thousands separator for readability.
fn us(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A UUID-shaped delivery id (what Gitea sends in X-Gitea-Delivery), unique per (nonce, i).
fn delivery_uuid(nonce: &str, i: usize) -> String {
    let h = hex_sha256(&[nonce.as_bytes(), b"delivery", &i.to_le_bytes()]);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A unique 40-hex commit sha per (nonce, i).
fn commit_sha(nonce: &str, i: usize) -> String {
    hex_sha256(&[nonce.as_bytes(), b"sha", &i.to_le_bytes()])[..40].to_string()
}

fn nonce() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

const CLONE_URL: &str = "http://gitea-http.gitea:3000/owner/hello.git";

/// A Gitea push payload, shaped like `tests/support/mod.rs::gitea_payload`.
fn gitea_payload(sha: &str) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0000000000000000000000000000000000000001",
        "after": sha,
        "compare_url": "http://gitea/o/r/compare",
        "commits": [{"id": sha, "message": "change"}],
        "total_commits": 1,
        "head_commit": {"id": sha},
        "repository": {"full_name": "owner/hello", "clone_url": CLONE_URL, "html_url": "http://gitea/owner/hello"},
        "pusher": {"login": "alice", "username": "alice"},
        "sender": {"login": "alice"}
    }))?)
}

async fn redis_con(redis: &RedisServer) -> Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?)
}

async fn set_fsync(redis: &RedisServer, f: Fsync) -> Result<()> {
    let mut con = redis_con(redis).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg(f.as_str())
        .query_async(&mut con)
        .await?;
    let (_, got): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut con)
        .await?;
    if got != f.as_str() {
        bail!("redis appendfsync is {got}, wanted {}", f.as_str());
    }
    Ok(())
}

/// Turn on Redis's latency monitor (events of 1 ms and more), so the run can report its slowest fsync.
async fn latency_monitor(redis: &RedisServer) -> Result<()> {
    let mut con = redis_con(redis).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("latency-monitor-threshold")
        .arg(1)
        .query_async(&mut con)
        .await?;
    Ok(())
}

/// What Redis saw of its own disk: slowest `aof-fsync-always` (ms), seconds in which an fsync took
/// ≥ 1 ms, AOF rewrites (forks) started.
#[derive(Debug, Clone, Copy, Default)]
struct RedisDisk {
    fsync_max_ms: u64,
    slow_fsync_secs: usize,
    aof_rewrites: u64,
}

async fn redis_disk(redis: &RedisServer) -> Result<RedisDisk> {
    let mut con = redis_con(redis).await?;
    let hist: Vec<(i64, i64)> = redis::cmd("LATENCY")
        .arg("HISTORY")
        .arg("aof-fsync-always")
        .query_async(&mut con)
        .await?;
    let latest: RValue = redis::cmd("LATENCY")
        .arg("LATEST")
        .query_async(&mut con)
        .await?;
    let mut fsync_max_ms = 0;
    if let RValue::Array(events) = &latest {
        for e in events {
            if let RValue::Array(f) = e {
                let name = f.first().and_then(|v| match v {
                    RValue::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
                    RValue::SimpleString(s) => Some(s.clone()),
                    _ => None,
                });
                if name.as_deref() == Some("aof-fsync-always") {
                    if let Some(RValue::Int(m)) = f.get(3) {
                        fsync_max_ms = u64::try_from(*m).unwrap_or(0);
                    }
                }
            }
        }
    }
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut con)
        .await?;
    let aof_rewrites = info
        .lines()
        .find_map(|l| l.strip_prefix("aof_rewrites:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(RedisDisk {
        fsync_max_ms,
        slow_fsync_secs: hist.len(),
        aof_rewrites,
    })
}

async fn redis_pid(redis: &RedisServer) -> Result<u32> {
    let mut con = redis_con(redis).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO server has no process_id")
}

/// `fdatasync` latency of 200-byte appends in `dir` (what `appendfsync always` pays per write batch).
fn fsync_probe(dir: &Path, n: usize) -> Result<Pct> {
    let p = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)?;
    let line = [b'x'; 200];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        f.write_all(&line)?;
        let t = Instant::now();
        f.sync_data()?;
        v.push(micros(t.elapsed()));
    }
    drop(f);
    std::fs::remove_file(&p)?;
    Ok(pct(v))
}

fn read_to_string_or_empty(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// nproc, CPU model, kernel, redis-server version.
fn machine() -> Vec<(String, String)> {
    let cpuinfo = read_to_string_or_empty("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_default();
    let mem = read_to_string_or_empty("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
        .unwrap_or_default();
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("not runnable: {e}"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "rust/raibid-core/src",
        "rust/raibid-dispatcher/src",
        "rust/raibid-agent/src",
    ]);
    let code = if dirty.is_empty() {
        head
    } else {
        format!("{head} + uncommitted changes in rust/*/src")
    };
    let load = read_to_string_or_empty("/proc/loadavg");
    vec![
        ("code".into(), code),
        (
            "load average at start".into(),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("nproc".into(), nproc),
        ("CPU".into(), model),
        ("memory".into(), mem),
        (
            "kernel".into(),
            read_to_string_or_empty("/proc/sys/kernel/osrelease")
                .trim()
                .to_string(),
        ),
        ("redis".into(), redis),
    ]
}

fn print_machine() {
    println!("## machine");
    for (k, v) in machine() {
        println!("- {k}: {v}");
    }
    println!();
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: &str, tick: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tick)
}

/// Busy CPU seconds of the whole machine (all but idle and iowait), from /proc/stat.
fn machine_cpu(tick: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| v.get(*i))
        .sum();
    Some(busy / tick)
}

fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `kB` field of /proc/<pid>/status.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn nproc() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// claim-latency

struct ClaimRun {
    consumers: usize,
    mode: Mode,
    fsync: Fsync,
    jobs: usize,
    warmup: usize,
    rate: u64,
    burst_concurrency: usize,
    heartbeat: bool,
    block: Duration,
    timeout: Duration,
}

#[derive(Debug, Clone)]
struct ClaimResult {
    fsync: Fsync,
    mode: Mode,
    consumers: usize,
    jobs: usize,
    /// Instant before Queue::enqueue → Queue::claim_next returned the claim in the consumer.
    e2e: Pct,
    /// timestamps.claimed − timestamps.queued of the record (the raibid_claim_latency_seconds figure).
    record: Pct,
    /// Round trip of Queue::enqueue.
    enqueue: Pct,
    /// Round trip of Queue::finish_claimed.
    finish: Pct,
    /// Measured jobs per second of wall time (enqueue of the first → finish of the last).
    rate: f64,
    max_backlog: usize,
    duplicates: usize,
    errors: usize,
    first_error: Option<String>,
    leftover_entries: u64,
    leftover_pending: u64,
    completed: bool,
    /// fdatasync latency in Redis's directory just before the run.
    disk: Pct,
    /// CPU seconds of Redis + this process, and of the rest of the machine, in the measured phase.
    cpu_ours: f64,
    cpu_others: f64,
    wall_secs: f64,
    redis_seen: RedisDisk,
}

struct ClaimShared {
    /// job id → (sequence number, Instant before enqueue)
    started: Mutex<HashMap<String, (usize, Instant)>>,
    /// (seq, e2e µs, record µs, finish µs)
    samples: Mutex<Vec<(usize, u64, u64, u64)>>,
    /// (seq, enqueue µs)
    enqueues: Mutex<Vec<(usize, u64)>>,
    enqueued: AtomicUsize,
    finished: AtomicUsize,
    duplicates: AtomicUsize,
    errors: AtomicUsize,
    first_error: Mutex<Option<String>>,
    stop: AtomicBool,
    all_done: Notify,
    /// One permit per consumer that is idle and about to block (warm mode).
    ready: Semaphore,
    total: usize,
}

impl ClaimShared {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The warm agent loop without the build: heartbeat, XREADGROUP … BLOCK, claim, final write at once.
async fn consumer(
    q: Queue,
    url: String,
    name: String,
    sh: Arc<ClaimShared>,
    block: Duration,
    heartbeat: bool,
) {
    let mut con = None;
    let mut done = 0u64;
    let mut announce = true;
    while !sh.stop.load(Ordering::Relaxed) {
        if con.is_none() {
            match q.blocking_connection(block).await {
                Ok(c) => con = Some(c),
                Err(e) => {
                    sh.error(format!("{name}: blocking connection to {url}: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        if heartbeat {
            if let Err(e) = q
                .heartbeat(&name, None, done, Duration::from_secs(30))
                .await
            {
                sh.error(format!("{name}: heartbeat: {e}"));
            }
        }
        let Some(c) = con.as_mut() else { continue };
        if announce {
            // Idle, about to block: the warm-mode producer may send one job for us.
            sh.ready.add_permits(1);
            announce = false;
        }
        match q.claim_next(c, &name, block).await {
            Ok(Some(mut claim)) => {
                let got = Instant::now();
                let record = claim
                    .job
                    .claim_latency_secs()
                    .map(|s| (s * 1e6).max(0.0) as u64)
                    .unwrap_or(u64::MAX);
                let started = lock(&sh.started).remove(claim.job.id.as_str());
                claim.job.finish(Status::Succeeded, None, Utc::now());
                let f0 = Instant::now();
                if let Err(e) = q.finish_claimed(&mut claim).await {
                    sh.error(format!("{name}: finish_claimed {}: {e}", claim.job.id));
                }
                let fin = micros(f0.elapsed());
                match started {
                    Some((seq, t0)) => lock(&sh.samples).push((seq, micros(got - t0), record, fin)),
                    None => {
                        sh.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done += 1;
                announce = true;
                if sh.finished.fetch_add(1, Ordering::SeqCst) + 1 == sh.total {
                    sh.all_done.notify_one();
                }
            }
            Ok(None) => {}
            Err(e) => {
                sh.error(format!("{name}: claim_next: {e}"));
                con = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = q.deregister(&name).await;
}

fn bench_job(nonce: &str, seq: usize) -> (Job, String) {
    let delivery = delivery_uuid(nonce, seq);
    let job = Job::new(
        Source {
            repo_url: CLONE_URL.into(),
            git_ref: "refs/heads/main".into(),
            sha: Some(commit_sha(nonce, seq)),
            trigger: Trigger {
                kind: TriggerKind::GiteaPush,
                actor: Some("alice".into()),
            },
            delivery_id: Some(delivery.clone()),
            forge_repo: Some("owner/hello".into()),
        },
        Utc::now(),
    );
    (job, delivery)
}

async fn run_claim(run: &ClaimRun) -> Result<ClaimResult> {
    let redis = RedisServer::start()?;
    set_fsync(&redis, run.fsync).await?;
    let disk = fsync_probe(&redis.dir, 300)?;
    latency_monitor(&redis).await?;
    let rpid = redis_pid(&redis).await?.to_string();
    let tick = clock_tick();
    let ours = |m: Option<f64>| -> Option<(f64, f64)> {
        Some((m?, cpu_secs(&rpid, tick)? + cpu_secs("self", tick)?))
    };
    let mut cpu0 = None;
    let url = redis.url();
    let total = run.warmup + run.jobs;
    let sh = Arc::new(ClaimShared {
        started: Mutex::default(),
        samples: Mutex::default(),
        enqueues: Mutex::default(),
        enqueued: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        duplicates: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        first_error: Mutex::default(),
        stop: AtomicBool::new(false),
        all_done: Notify::new(),
        ready: Semaphore::new(0),
        total,
    });

    // Consumers: each its own Queue (as separate agent processes have) and blocking connection.
    let mut handles = Vec::new();
    for i in 0..run.consumers {
        let q = Queue::connect(&url, QueueConfig::default()).await?;
        let name = format!("bench-agent-{}", i + 1);
        handles.push(tokio::spawn(consumer(
            q,
            url.clone(),
            name,
            sh.clone(),
            run.block,
            run.heartbeat,
        )));
    }
    let producer = Queue::connect(&url, QueueConfig::default()).await?;
    // Let every consumer reach XREADGROUP … BLOCK.
    let ready = tokio::time::timeout(
        Duration::from_secs(30),
        sh.ready.acquire_many(u32::try_from(run.consumers)?),
    )
    .await
    .context("consumers did not reach XREADGROUP within 30 s")??;
    ready.forget();
    sh.ready.add_permits(run.consumers);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let nonce = nonce();
    let deadline = Instant::now() + run.timeout;
    let burst_slots = Arc::new(Semaphore::new(run.burst_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut max_backlog = 0usize;
    let mut measured_start = None;
    let mut paced_start = None;
    for seq in 0..total {
        if Instant::now() > deadline {
            sh.error("deadline passed while enqueueing");
            break;
        }
        let mode = if seq < run.warmup {
            Mode::Warm
        } else {
            run.mode
        };
        if seq == run.warmup {
            // Measured phase: wait until the warm-up jobs are all finished.
            while sh.finished.load(Ordering::SeqCst) < run.warmup && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            measured_start = Some(Instant::now());
            cpu0 = ours(machine_cpu(tick));
        }
        let burst_permit = match mode {
            Mode::Warm => {
                match tokio::time::timeout_at(deadline.into(), sh.ready.acquire()).await {
                    Ok(Ok(p)) => p.forget(),
                    _ => {
                        sh.error("no idle consumer before the deadline");
                        break;
                    }
                }
                None
            }
            Mode::Paced => {
                let start = *paced_start.get_or_insert_with(Instant::now);
                let nth = u32::try_from(seq - run.warmup)?;
                let at = start + Duration::from_micros(1_000_000 / run.rate.max(1)) * nth;
                tokio::time::sleep_until(at.into()).await;
                None
            }
            Mode::Burst => Some(burst_slots.clone().acquire_owned().await?),
        };
        let backlog = sh
            .enqueued
            .load(Ordering::Relaxed)
            .saturating_sub(sh.finished.load(Ordering::Relaxed));
        if seq >= run.warmup {
            max_backlog = max_backlog.max(backlog);
        }
        let (job, delivery) = bench_job(&nonce, seq);
        let q = producer.clone();
        let sh2 = sh.clone();
        let t0 = Instant::now();
        lock(&sh.started).insert(job.id.to_string(), (seq, t0));
        sh.enqueued.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let r = q.enqueue(job, Some(("gitea", delivery.as_str()))).await;
            let rtt = micros(t0.elapsed());
            match r {
                Ok(Enqueued::New(_)) => lock(&sh2.enqueues).push((seq, rtt)),
                Ok(Enqueued::Duplicate(id)) => {
                    sh2.error(format!("delivery {delivery} taken as a duplicate of {id}"))
                }
                Err(e) => sh2.error(format!("enqueue: {e}")),
            }
            drop(burst_permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let completed = tokio::time::timeout_at(deadline.into(), async {
        while sh.finished.load(Ordering::SeqCst) < total {
            sh.all_done.notified().await;
        }
    })
    .await
    .is_ok();
    let wall = measured_start.map(|s| s.elapsed()).unwrap_or_default();
    let cpu1 = ours(machine_cpu(tick));
    let (cpu_ours, cpu_others) = match (cpu0, cpu1) {
        (Some((m0, o0)), Some((m1, o1))) => (o1 - o0, ((m1 - m0) - (o1 - o0)).max(0.0)),
        _ => (f64::NAN, f64::NAN),
    };
    sh.stop.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = tokio::time::timeout(run.block + Duration::from_secs(5), h).await;
    }

    let redis_seen = redis_disk(&redis).await?;
    // The stream must be empty (every entry acknowledged and deleted) and nothing pending.
    let mut con = redis_con(&redis).await?;
    let leftover_entries: u64 = redis::cmd("XLEN")
        .arg("raibid:jobs")
        .query_async(&mut con)
        .await?;
    let pending: RValue = redis::cmd("XPENDING")
        .arg("raibid:jobs")
        .arg("raibid-agents")
        .query_async(&mut con)
        .await?;
    let leftover_pending = match &pending {
        RValue::Array(v) => v.first().and_then(|x| match x {
            RValue::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }),
        _ => None,
    }
    .unwrap_or(0);

    let samples = std::mem::take(&mut *lock(&sh.samples));
    let measured: Vec<_> = samples.into_iter().filter(|s| s.0 >= run.warmup).collect();
    let enq: Vec<u64> = lock(&sh.enqueues)
        .iter()
        .filter(|s| s.0 >= run.warmup)
        .map(|s| s.1)
        .collect();
    let n = measured.len();
    let first_error = lock(&sh.first_error).clone();
    Ok(ClaimResult {
        fsync: run.fsync,
        mode: run.mode,
        consumers: run.consumers,
        jobs: n,
        e2e: pct(measured.iter().map(|s| s.1).collect()),
        record: pct(measured.iter().map(|s| s.2).collect()),
        enqueue: pct(enq),
        finish: pct(measured.iter().map(|s| s.3).collect()),
        rate: if wall.is_zero() {
            0.0
        } else {
            n as f64 / wall.as_secs_f64()
        },
        max_backlog,
        duplicates: sh.duplicates.load(Ordering::Relaxed),
        errors: sh.errors.load(Ordering::Relaxed),
        first_error,
        leftover_entries,
        leftover_pending,
        completed,
        disk,
        cpu_ours,
        cpu_others,
        wall_secs: wall.as_secs_f64(),
        redis_seen,
    })
}

fn claim_table(results: &[ClaimResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| appendfsync | disk fdatasync p50 / p99 µs (just before) | mode | consumers | jobs | queued→claimed (record) p50 / p90 / p99 / max µs | enqueue→claim returned (client) p50 / p90 / p99 / max µs | enqueue RTT p50 / p99 µs | finish RTT p50 / p99 µs | jobs/s | max backlog | Redis: slowest fsync ms · seconds with an fsync ≥ 1 ms · AOF rewrites | CPU s: redis + bench / rest of the machine (of wall × nproc) | errors / dup / left in stream |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {:.0} | {} | {} · {} · {} | {:.1} / {:.1} (of {:.1}) | {} / {} / {}{} |",
            r.fsync.as_str(),
            us(r.disk.p50),
            us(r.disk.p99),
            r.mode.as_str(),
            r.consumers,
            r.jobs,
            r.record.cells(),
            r.e2e.cells(),
            us(r.enqueue.p50),
            us(r.enqueue.p99),
            us(r.finish.p50),
            us(r.finish.p99),
            r.rate,
            r.max_backlog,
            r.redis_seen.fsync_max_ms,
            r.redis_seen.slow_fsync_secs,
            r.redis_seen.aof_rewrites,
            r.cpu_ours,
            r.cpu_others,
            r.wall_secs * nproc(),
            r.errors,
            r.duplicates,
            r.leftover_entries + r.leftover_pending,
            if r.completed { "" } else { " (INCOMPLETE)" },
        );
    }
    s
}

async fn claim_latency(a: &ClaimArgs) -> Result<Vec<ClaimResult>> {
    let mut results = Vec::new();
    for &fsync in &a.fsync {
        for &mode in &a.modes {
            for &consumers in &a.consumers {
                if consumers == 0 {
                    bail!("--consumers: 0 consumers claim nothing");
                }
                let run = ClaimRun {
                    consumers,
                    mode,
                    fsync,
                    jobs: match mode {
                        Mode::Burst => a.burst_jobs,
                        Mode::Paced => a.paced_jobs.unwrap_or(a.jobs),
                        Mode::Warm => a.jobs,
                    },
                    warmup: a.warmup,
                    rate: a.rate,
                    burst_concurrency: a.burst_concurrency,
                    heartbeat: !a.no_heartbeat,
                    block: Duration::from_millis(a.block_ms.max(1)),
                    timeout: Duration::from_secs(a.timeout_secs),
                };
                eprintln!(
                    "claim-latency: appendfsync {} · {} · {consumers} consumer(s) · {} jobs{} …",
                    fsync.as_str(),
                    mode.as_str(),
                    run.jobs,
                    if mode == Mode::Paced {
                        format!(" at {}/s", a.rate)
                    } else {
                        String::new()
                    }
                );
                let t = Instant::now();
                let r = run_claim(&run).await?;
                eprintln!(
                    "  done in {:.1} s: record p50 {} µs p99 {} µs; client p50 {} µs p99 {} µs; {:.0} jobs/s{}",
                    t.elapsed().as_secs_f64(),
                    us(r.record.p50),
                    us(r.record.p99),
                    us(r.e2e.p50),
                    us(r.e2e.p99),
                    r.rate,
                    r.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default()
                );
                results.push(r);
            }
        }
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------------
// webhook-ingest

const SECRET: &str = "bench-gitea-webhook-secret";

/// What the dispatcher wrote to stderr (read through a pipe, as a container runtime would).
#[derive(Default)]
struct LogStats {
    lines: usize,
    bytes: u64,
    /// ERROR, WARN and panic lines (the first 20).
    bad: Vec<String>,
    bad_count: usize,
    /// The first lines (start-up failures).
    head: Vec<String>,
}

/// The dispatcher child process; killed on drop.
struct Dispatcher {
    child: Child,
    base: String,
    log: Arc<Mutex<LogStats>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Dispatcher {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns how it ended.
    fn stop(&mut self) -> String {
        if let Ok(Some(st)) = self.child.try_wait() {
            return format!("had already exited: {st}");
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return format!("exited on SIGTERM: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "did not exit within 10 s of SIGTERM; killed".into()
    }

    /// Stop it and wait (at most 5 s: a wrapper's grandchild may hold the pipe) for the end of its log.
    fn finish(&mut self) -> String {
        let how = self.stop();
        if let Some(r) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !r.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        how
    }
}

fn read_log(stderr: std::process::ChildStderr, stats: Arc<Mutex<LogStats>>) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut st = lock(&stats);
                st.lines += 1;
                st.bytes += n as u64;
                let text = || String::from_utf8_lossy(&line).trim_end().to_string();
                if st.head.len() < 20 {
                    st.head.push(text());
                }
                let l = String::from_utf8_lossy(&line);
                if l.contains("ERROR") || l.contains(" WARN ") || l.contains("panicked") {
                    st.bad_count += 1;
                    if st.bad.len() < 20 {
                        st.bad.push(text());
                    }
                }
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn default_dispatcher_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/raibid-dispatcher")
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
}

/// Warn when the binary is older than the sources it is built from.
fn check_fresh(bin: &Path) -> Result<()> {
    let meta = std::fs::metadata(bin).with_context(|| {
        format!(
            "{} not found: build it first (cd rust && cargo build --release)",
            bin.display()
        )
    })?;
    let built = meta.modified()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for d in [root.join("src"), root.join("../raibid-core/src")] {
        if newest_mtime(&d).is_some_and(|m| m > built) {
            eprintln!(
                "WARNING: {} is older than {}: run `cargo build --release` to measure the current code",
                bin.display(),
                d.display()
            );
        }
    }
    Ok(())
}

async fn start_dispatcher(bin: &Path, redis_url: &str, log_filter: &str) -> Result<Dispatcher> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port()?;
        let mut cmd = Command::new(bin);
        // Only our configuration: nothing from a `dev.sh env` shell (Gitea URL, mirrors, …).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RAIBID_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("RAIBID_REDIS_URL", redis_url)
            .env("RAIBID_API_TOKEN", "bench-api-token-0123456789")
            .env("RAIBID_GITEA_WEBHOOK_SECRET", SECRET)
            .env("RAIBID_LISTEN", format!("127.0.0.1:{port}"))
            .env("RAIBID_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut d = Dispatcher {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log: Arc::default(),
            reader: None,
        };
        if let Some(err) = d.child.stderr.take() {
            let stats = d.log.clone();
            d.reader = Some(std::thread::spawn(move || read_log(err, stats)));
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = d.child.try_wait() {
                d.finish();
                last = format!("exited {st}: {}", lock(&d.log).head.join("\n"));
                break;
            }
            if let Ok(r) = client.get(format!("{}/readyz", d.base)).send().await {
                if r.status().is_success() {
                    return Ok(d);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if last.is_empty() {
            last = "not ready within 15 s".into();
        }
        d.finish();
    }
    bail!("dispatcher did not start: {last}")
}

struct Signed {
    body: Vec<u8>,
    sig: String,
    delivery: String,
}

#[derive(Default)]
struct PhaseOut {
    latencies: Vec<u64>,
    codes: HashMap<u16, usize>,
    accepted: Vec<String>,
    transport_errors: usize,
    first_error: Option<String>,
    wall: Duration,
}

async fn fire(
    client: &reqwest::Client,
    url: &str,
    payloads: Arc<Vec<Signed>>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    deadline: Instant,
) -> PhaseOut {
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, payloads, next) = (
            client.clone(),
            url.to_string(),
            payloads.clone(),
            next.clone(),
        );
        set.spawn(async move {
            let mut out = PhaseOut::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end || Instant::now() > deadline {
                    break;
                }
                let p = &payloads[i];
                let t0 = Instant::now();
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-Gitea-Event", "push")
                    .header("X-Gitea-Delivery", &p.delivery)
                    .header("X-Gitea-Signature", &p.sig)
                    .body(p.body.clone())
                    .send()
                    .await;
                match r {
                    Ok(resp) => {
                        let code = resp.status().as_u16();
                        let body = resp.bytes().await;
                        out.latencies.push(micros(t0.elapsed()));
                        *out.codes.entry(code).or_default() += 1;
                        match body {
                            Ok(b) if code == 202 => {
                                match serde_json::from_slice::<Value>(&b)
                                    .ok()
                                    .and_then(|v| v["job"].as_str().map(String::from))
                                {
                                    Some(id) => out.accepted.push(id),
                                    None => {
                                        out.first_error.get_or_insert_with(|| {
                                            format!(
                                                "202 without a job id: {}",
                                                String::from_utf8_lossy(&b)
                                            )
                                        });
                                    }
                                }
                            }
                            Ok(b) => {
                                out.first_error.get_or_insert_with(|| {
                                    format!("{code}: {}", String::from_utf8_lossy(&b))
                                });
                            }
                            Err(e) => {
                                out.transport_errors += 1;
                                out.first_error
                                    .get_or_insert_with(|| format!("reading a {code} body: {e}"));
                            }
                        }
                    }
                    Err(e) => {
                        out.transport_errors += 1;
                        out.first_error
                            .get_or_insert_with(|| format!("request: {e:#}"));
                    }
                }
            }
            out
        });
    }
    let mut all = PhaseOut::default();
    while let Some(r) = set.join_next().await {
        let Ok(o) = r else { continue };
        all.latencies.extend(o.latencies);
        for (c, n) in o.codes {
            *all.codes.entry(c).or_default() += n;
        }
        all.accepted.extend(o.accepted);
        all.transport_errors += o.transport_errors;
        if all.first_error.is_none() {
            all.first_error = o.first_error;
        }
    }
    all.wall = t.elapsed();
    all
}

#[derive(Debug, Clone)]
struct IngestResult {
    fsync: Fsync,
    requests: usize,
    concurrency: usize,
    rate: f64,
    latency: Pct,
    codes: Vec<(u16, usize)>,
    transport_errors: usize,
    first_error: Option<String>,
    accepted: usize,
    distinct_accepted: usize,
    stream_len: u64,
    index_len: u64,
    missing_record: usize,
    missing_index: usize,
    missing_stream: usize,
    lost: usize,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
    rss_mean_kb: u64,
    rss_after_kb: u64,
    hwm_kb: u64,
    rss_samples: usize,
    cpu_dispatcher: f64,
    cpu_redis: f64,
    cpu_bench: f64,
    /// CPU seconds the rest of the machine used during the measured phase (noise).
    cpu_others: f64,
    wall_secs: f64,
    metrics_ms: f64,
    metrics_counters: String,
    log_lines: usize,
    log_errors: usize,
    log_bytes: u64,
    exit: String,
    aof_bytes: u64,
    /// fdatasync latency in Redis's directory just before the run.
    disk: Pct,
    log_filter: String,
    redis_seen: RedisDisk,
    metrics_bytes: usize,
    hwm_after_metrics_kb: u64,
    /// The binary, when several are compared.
    bin: Option<String>,
}

/// One webhook-ingest configuration.
struct IngestOne {
    pause_secs: u64,
    requests: usize,
    concurrency: usize,
    warmup: usize,
    dispatcher_log: String,
    rss_sample_ms: u64,
    timeout_secs: u64,
}

async fn run_ingest(a: &IngestOne, fsync: Fsync, bin: &Path, tick: f64) -> Result<IngestResult> {
    let redis = RedisServer::start()?;
    set_fsync(&redis, fsync).await?;
    let rpid = redis_pid(&redis).await?.to_string();
    // The disk as it is right now, in Redis's own directory (it varies from minute to minute).
    let disk = fsync_probe(&redis.dir, 300)?;
    latency_monitor(&redis).await?;
    let mut r = ingest_with(a, fsync, bin, tick, &redis, &rpid).await?;
    r.disk = disk;
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
async fn ingest_with(
    a: &IngestOne,
    fsync: Fsync,
    bin: &Path,
    tick: f64,
    redis: &RedisServer,
    rpid: &str,
) -> Result<IngestResult> {
    let mut d = start_dispatcher(bin, &redis.url(), &a.dispatcher_log).await?;
    let dpid = d.pid();
    let url = format!("{}/webhooks/gitea", d.base);
    if a.pause_secs > 0 {
        eprintln!(
            "dispatcher pid {dpid} at {}; load starts in {} s",
            d.base, a.pause_secs
        );
        tokio::time::sleep(Duration::from_secs(a.pause_secs)).await;
    }

    // Pre-sign every delivery (distinct X-Gitea-Delivery, distinct `after`).
    let total = a.warmup + a.requests;
    let n = nonce();
    let mut payloads = Vec::with_capacity(total);
    for i in 0..total {
        let body = gitea_payload(&commit_sha(&n, i))?;
        let sig = raibid_core::webhook::sign_hex(SECRET.as_bytes(), &body);
        payloads.push(Signed {
            body,
            sig,
            delivery: delivery_uuid(&n, i),
        });
    }
    let payloads = Arc::new(payloads);
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(a.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);

    // RSS sampler on its own thread (not starved by the runtime under load).
    let stop = Arc::new(AtomicBool::new(false));
    let rss_idle_kb = status_kb(dpid, "VmRSS").unwrap_or(0);
    let sampler = {
        let stop = stop.clone();
        let every = Duration::from_millis(a.rss_sample_ms.max(10));
        std::thread::spawn(move || {
            let mut v = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = status_kb(dpid, "VmRSS") {
                    v.push(kb);
                }
                std::thread::sleep(every);
            }
            v
        })
    };

    let warm = fire(
        &client,
        &url,
        payloads.clone(),
        0..a.warmup,
        a.concurrency,
        deadline,
    )
    .await;
    let (c0d, c0r, c0b, m0) = (
        cpu_secs(&dpid.to_string(), tick),
        cpu_secs(rpid, tick),
        cpu_secs("self", tick),
        machine_cpu(tick),
    );
    let main = fire(
        &client,
        &url,
        payloads.clone(),
        a.warmup..total,
        a.concurrency,
        deadline,
    )
    .await;
    let (c1d, c1r, c1b, m1) = (
        cpu_secs(&dpid.to_string(), tick),
        cpu_secs(rpid, tick),
        cpu_secs("self", tick),
        machine_cpu(tick),
    );
    stop.store(true, Ordering::Relaxed);
    let rss = sampler.join().unwrap_or_default();
    let rss_after_kb = status_kb(dpid, "VmRSS").unwrap_or(0);
    let hwm_kb = status_kb(dpid, "VmHWM").unwrap_or(0);
    let diff = |a: Option<f64>, b: Option<f64>| b.zip(a).map(|(b, a)| b - a).unwrap_or(f64::NAN);

    let redis_seen = redis_disk(redis).await?;
    let mut metrics_bytes = 0;
    // One /metrics scrape after the load (it lists every job in the index).
    let t = Instant::now();
    let metrics = client.get(format!("{}/metrics", d.base)).send().await;
    let (metrics_ms, metrics_counters) = match metrics {
        Ok(r) => {
            let text = r.text().await.unwrap_or_default();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            metrics_bytes = text.len();
            let counters = text
                .lines()
                .filter(|l| l.starts_with("raibid_webhooks_total"))
                .map(|l| l.trim_start_matches("raibid_webhooks_total"))
                .collect::<Vec<_>>()
                .join(" ");
            (ms, counters)
        }
        Err(e) => (f64::NAN, format!("scrape failed: {e}")),
    };
    let hwm_after_metrics_kb = status_kb(dpid, "VmHWM").unwrap_or(0);

    // What Redis holds, checked job by job.
    let mut con = redis_con(redis).await?;
    let stream_len: u64 = redis::cmd("XLEN")
        .arg("raibid:jobs")
        .query_async(&mut con)
        .await?;
    let index_len: u64 = redis::cmd("ZCARD")
        .arg("raibid:jobs:index")
        .query_async(&mut con)
        .await?;
    let index: HashSet<String> = redis::cmd("ZRANGE")
        .arg("raibid:jobs:index")
        .arg(0)
        .arg(-1)
        .query_async::<Vec<String>>(&mut con)
        .await?
        .into_iter()
        .collect();
    let entries: RValue = redis::cmd("XRANGE")
        .arg("raibid:jobs")
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await?;
    let mut in_stream = HashSet::new();
    if let RValue::Array(items) = &entries {
        for it in items {
            if let RValue::Array(pair) = it {
                if let Some(RValue::Array(fields)) = pair.get(1) {
                    for kv in fields.chunks(2) {
                        if let [RValue::BulkString(k), RValue::BulkString(v)] = kv {
                            if k.as_slice() == b"job" {
                                in_stream.insert(String::from_utf8_lossy(v).into_owned());
                            }
                        }
                    }
                }
            }
        }
    }
    let accepted: Vec<String> = warm
        .accepted
        .iter()
        .chain(main.accepted.iter())
        .cloned()
        .collect();
    let distinct: HashSet<&String> = accepted.iter().collect();
    let mut missing_record = 0;
    for chunk in accepted.chunks(1000) {
        let mut p = redis::pipe();
        for id in chunk {
            p.cmd("HEXISTS")
                .arg(raibid_core::contract::job_key(id))
                .arg("record");
        }
        let have: Vec<bool> = p.query_async(&mut con).await?;
        missing_record += have.iter().filter(|h| !**h).count();
    }
    let missing_index = accepted.iter().filter(|id| !index.contains(*id)).count();
    let missing_stream = accepted
        .iter()
        .filter(|id| !in_stream.contains(*id))
        .count();
    let lost = accepted
        .iter()
        .filter(|id| !index.contains(*id) || !in_stream.contains(*id))
        .count()
        .max(missing_record);
    let aof_bytes = dir_size(&redis.dir);

    let alive = matches!(d.child.try_wait(), Ok(None));
    let exit = if alive {
        d.finish()
    } else {
        format!("CRASHED during the run: {}", d.finish())
    };
    let (log_lines, log_bytes, log_errors) = {
        let st = lock(&d.log);
        if st.bad_count > 0 {
            eprintln!(
                "dispatcher log has {} ERROR/WARN/panic lines; first:",
                st.bad_count
            );
            for l in st.bad.iter().take(5) {
                eprintln!("  {l}");
            }
        }
        (st.lines, st.bytes, st.bad_count)
    };
    let mut codes: Vec<(u16, usize)> = main.codes.iter().map(|(c, n)| (*c, *n)).collect();
    codes.sort_unstable();
    let rss_mean_kb = if rss.is_empty() {
        0
    } else {
        rss.iter().sum::<u64>() / rss.len() as u64
    };
    Ok(IngestResult {
        fsync,
        requests: main.latencies.len() + main.transport_errors,
        concurrency: a.concurrency,
        rate: main.latencies.len() as f64 / main.wall.as_secs_f64().max(1e-9),
        latency: pct(main.latencies),
        codes,
        transport_errors: main.transport_errors + warm.transport_errors,
        first_error: main.first_error.or(warm.first_error),
        accepted: accepted.len(),
        distinct_accepted: distinct.len(),
        stream_len,
        index_len,
        missing_record,
        missing_index,
        missing_stream,
        lost,
        rss_idle_kb,
        rss_peak_kb: rss.iter().copied().max().unwrap_or(0),
        rss_mean_kb,
        rss_after_kb,
        hwm_kb,
        rss_samples: rss.len(),
        cpu_dispatcher: diff(c0d, c1d),
        cpu_redis: diff(c0r, c1r),
        cpu_bench: diff(c0b, c1b),
        cpu_others: (diff(m0, m1) - diff(c0d, c1d) - diff(c0r, c1r) - diff(c0b, c1b)).max(0.0),
        wall_secs: main.wall.as_secs_f64(),
        metrics_ms,
        metrics_counters,
        log_lines,
        log_errors,
        log_bytes,
        exit,
        aof_bytes,
        disk: Pct::default(),
        log_filter: a.dispatcher_log.clone(),
        redis_seen,
        metrics_bytes,
        hwm_after_metrics_kb,
        bin: None,
    })
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_size(&e.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

async fn webhook_ingest(a: &IngestArgs) -> Result<Vec<IngestResult>> {
    let bins = if a.dispatcher_bin.is_empty() {
        vec![default_dispatcher_bin()]
    } else {
        a.dispatcher_bin.clone()
    };
    for bin in &bins {
        check_fresh(bin)?;
    }
    let tick = clock_tick();
    let mut out = Vec::new();
    let mut runs = Vec::new();
    for bin in &bins {
        for &fsync in &a.fsync {
            for log in &a.dispatcher_log {
                for &concurrency in &a.concurrency {
                    let one = IngestOne {
                        pause_secs: a.pause_secs,
                        requests: a.requests,
                        concurrency: concurrency.max(1),
                        warmup: a.warmup,
                        dispatcher_log: log.clone(),
                        rss_sample_ms: a.rss_sample_ms,
                        timeout_secs: a.timeout_secs,
                    };
                    runs.push((bin.clone(), fsync, one));
                }
            }
        }
    }
    for (bin, fsync, one) in runs {
        eprintln!(
            "webhook-ingest: {} · appendfsync {} · RAIBID_LOG {} · {} signed deliveries (+{} warm-up) · {} in flight …",
            bin.display(),
            fsync.as_str(),
            one.dispatcher_log,
            one.requests,
            one.warmup,
            one.concurrency
        );
        let mut r = run_ingest(&one, fsync, &bin, tick).await?;
        r.bin = if bins.len() > 1 {
            Some(bin.display().to_string())
        } else {
            None
        };
        eprintln!(
            "  {:.0} req/s; accepted {} lost {}; RSS peak {} (VmHWM {}); latency p50 {} µs p99 {} µs{}",
            r.rate,
            r.accepted,
            r.lost,
            mib(r.rss_peak_kb),
            mib(r.hwm_kb),
            us(r.latency.p50),
            us(r.latency.p99),
            r.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default()
        );
        out.push(r);
    }
    Ok(out)
}

fn ingest_table(results: &[IngestResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| (binary ·) appendfsync | disk fdatasync p50 / p99 µs (just before) | dispatcher RAIBID_LOG | requests | in flight | req/s | HTTP codes | request latency p50 / p90 / p99 / max µs | accepted (2xx with job) | in Redis: XLEN / ZCARD | lost | dispatcher RSS idle → peak (mean) · VmHWM | CPU s: dispatcher / redis / load generator / rest of the machine (of wall × nproc) | /metrics after | dispatcher exit |");
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let codes = r
            .codes
            .iter()
            .map(|(c, n)| format!("{c}×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| {}{} | {} / {} | {} | {} | {} | {:.0} | {}{} | {} | {}{} | {} / {} | {} | {} → {} ({}) · {} | {:.1} / {:.1} / {:.1} / {:.1} (of {:.1}) | {:.0} ms | {} |",
            r.bin.as_deref().map(|b| format!("`{b}` · ")).unwrap_or_default(),
            r.fsync.as_str(),
            us(r.disk.p50),
            us(r.disk.p99),
            r.log_filter,
            r.requests,
            r.concurrency,
            r.rate,
            codes,
            if r.transport_errors > 0 { format!(", transport errors {}", r.transport_errors) } else { String::new() },
            r.latency.cells(),
            r.accepted,
            if r.distinct_accepted != r.accepted { format!(" ({} distinct)", r.distinct_accepted) } else { String::new() },
            r.stream_len,
            r.index_len,
            r.lost,
            mib(r.rss_idle_kb),
            mib(r.rss_peak_kb),
            mib(r.rss_mean_kb),
            mib(r.hwm_kb),
            r.cpu_dispatcher,
            r.cpu_redis,
            r.cpu_bench,
            r.cpu_others,
            r.wall_secs * nproc(),
            r.metrics_ms,
            r.exit,
        );
    }
    s
}

fn ingest_details(results: &[IngestResult]) -> String {
    let mut s = String::new();
    for r in results {
        let _ = writeln!(
            s,
            "- {}appendfsync {} · RAIBID_LOG {} · {} in flight: {:.1} s of load; Redis's slowest fsync {} ms, seconds with an fsync ≥ 1 ms {}, AOF rewrites {}; missing record / index / stream entry: {} / {} / {}; RSS after the load {} ({} samples); /metrics scrape {} bytes, VmHWM after it {}; dispatcher log {} lines, {} bytes, {} ERROR/WARN/panic lines; AOF + data dir {:.1} MiB; /metrics counters: {}{}",
            r.bin.as_deref().map(|b| format!("`{b}` · ")).unwrap_or_default(),
            r.fsync.as_str(),
            r.log_filter,
            r.concurrency,
            r.wall_secs,
            r.redis_seen.fsync_max_ms,
            r.redis_seen.slow_fsync_secs,
            r.redis_seen.aof_rewrites,
            r.missing_record,
            r.missing_index,
            r.missing_stream,
            mib(r.rss_after_kb),
            r.rss_samples,
            r.metrics_bytes,
            mib(r.hwm_after_metrics_kb),
            r.log_lines,
            r.log_bytes,
            r.log_errors,
            r.aof_bytes as f64 / 1048576.0,
            r.metrics_counters,
            r.first_error.as_deref().map(|e| format!("; first error: {e}")).unwrap_or_default(),
        );
    }
    s
}

fn print_fsync_probe() -> Result<Pct> {
    let dir = std::env::temp_dir();
    let p = fsync_probe(&dir, 1000)?;
    println!(
        "fdatasync of a 200-byte append in {} (where the benchmark's Redis keeps its AOF), 1000 calls: p50 {} µs, p90 {} µs, p99 {} µs, max {} µs\n",
        dir.display(),
        us(p.p50),
        us(p.p90),
        us(p.p99),
        us(p.max)
    );
    Ok(p)
}

fn goal(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::ClaimLatency(a) => {
                print_machine();
                print_fsync_probe()?;
                let r = claim_latency(&a).await?;
                println!("## claim-latency\n\n{}", claim_table(&r));
                for x in r.iter().filter(|x| x.first_error.is_some()) {
                    println!("- {} {} ×{}: first error: {}", x.fsync.as_str(), x.mode.as_str(), x.consumers, x.first_error.as_deref().unwrap_or(""));
                }
            }
            Cmd::WebhookIngest(a) => {
                print_machine();
                let r = webhook_ingest(&a).await?;
                println!("## webhook-ingest\n\n{}\n{}", ingest_table(&r), ingest_details(&r));
            }
            Cmd::All(a) => {
                print_machine();
                let probe = print_fsync_probe()?;
                let claim = ClaimArgs {
                    jobs: a.jobs,
                    warmup: 200,
                    consumers: a.consumers.clone(),
                    modes: a.modes.clone(),
                    rate: a.rate,
                    paced_jobs: Some(a.paced_jobs),
                    burst_jobs: a.burst_jobs,
                    burst_concurrency: 64,
                    fsync: a.fsync.clone(),
                    no_heartbeat: false,
                    block_ms: 500,
                    timeout_secs: 900,
                };
                let ingest = IngestArgs {
                    requests: a.requests,
                    concurrency: vec![a.concurrency],
                    warmup: 1000,
                    fsync: a.fsync.clone(),
                    dispatcher_bin: Vec::new(),
                    dispatcher_log: vec!["info".into()],
                    rss_sample_ms: 100,
                    timeout_secs: 600,
                    pause_secs: 0,
                };
                let c = claim_latency(&claim).await?;
                let w = webhook_ingest(&ingest).await?;
                println!("## claim-latency\n\n{}", claim_table(&c));
                println!("## webhook-ingest\n\n{}\n{}", ingest_table(&w), ingest_details(&w));
                println!("## goals (appendfsync {}, as raibid runs)\n", a.fsync.first().map(|f| f.as_str()).unwrap_or("?"));
                println!("| goal | measured | verdict |\n|---|---|---|");
                let first = a.fsync.first().copied();
                if let Some(r) = c.iter().find(|r| Some(r.fsync) == first && r.mode == Mode::Warm && r.consumers == 1) {
                    println!(
                        "| enqueue → claim p50 ≤ 1 ms, p99 ≤ 5 ms (warm agent, 1 consumer, {} jobs) | record p50 {} µs, p99 {} µs · client p50 {} µs, p99 {} µs | {} |",
                        r.jobs,
                        us(r.record.p50),
                        us(r.record.p99),
                        us(r.e2e.p50),
                        us(r.e2e.p99),
                        goal(r.record.p50 <= 1000 && r.record.p99 <= 5000)
                    );
                }
                if let Some(r) = w.iter().find(|r| Some(r.fsync) == first) {
                    println!(
                        "| signed webhook ingest ≥ 10,000/s, 0 lost | {:.0} req/s, {} lost of {} accepted | {} |",
                        r.rate,
                        r.lost,
                        r.accepted,
                        goal(r.rate >= 10_000.0 && r.lost == 0)
                    );
                    println!("| dispatcher resident memory under that load | peak VmRSS {} (VmHWM {}) | recorded |", mib(r.rss_peak_kb), mib(r.hwm_kb));
                }
                println!("\nfdatasync p50 {} µs / p99 {} µs on this disk.", us(probe.p50), us(probe.p99));
            }
        }
        Ok(())
    })
}
