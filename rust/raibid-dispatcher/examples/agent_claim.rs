//! Enqueue → claim latency through the real agent binary (issue 8 §10): a private redis-server, one idle
//! `raibid-agent` process (the release binary next to this example unless `--agent-bin`), jobs enqueued
//! `--gap-ms` apart through the real queue, each job a one-step pipeline (`true`) from a local git
//! repository. The figure is the job's own timestamps: `claimed - queued` as the agent wrote them.
//!
//! `cargo build --release -p raibid-agent --example agent_claim && ./target/release/examples/agent_claim --jobs 200`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result};
use chrono::Utc;
use clap::Parser;
use raibid_core::job::{Job, Source, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Enqueue → claim latency of the real agent binary.
#[derive(Parser)]
struct Args {
    /// Jobs to enqueue.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Milliseconds between two enqueues (the agent is idle, blocked on XREADGROUP, when each arrives).
    #[arg(long, default_value_t = 400)]
    gap_ms: u64,
    /// The agent binary (default: raibid-agent next to this example's directory).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Extra `KEY=VALUE` environment for the agent (repeatable), e.g. to compare settings.
    #[arg(long = "agent-env")]
    agent_env: Vec<String>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.agent_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("no target dir")?
            .join("raibid-agent"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release -p raibid-agent",
        bin.display()
    );
    let redis = RedisServer::start()?;
    let queue = Queue::connect(&redis.url(), QueueConfig::default()).await?;
    let tmp = tempfile::tempdir()?;
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo)?;
    std::fs::write(
        repo.join(".raibid.yaml"),
        "steps:\n  - name: t\n    run: 'true'\n",
    )?;
    for a in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b",
            "commit",
            "-qm",
            "x",
        ],
    ] {
        let st = Command::new("git").args(a).current_dir(&repo).status()?;
        anyhow::ensure!(st.success(), "git {a:?}");
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["--name", "bench-agent"])
        .env("RAIBID_REDIS_URL", redis.url())
        .env("RAIBID_ALLOWED_SCHEMES", "file")
        .env("RAIBID_WORKSPACE_DIR", tmp.path().join("ws"))
        .env("RAIBID_CACHE_DIR", tmp.path().join("cache"))
        .env("RAIBID_LOG", "warn")
        .stdout(Stdio::null());
    for kv in &args.agent_env {
        let (k, v) = kv.split_once('=').context("--agent-env KEY=VALUE")?;
        cmd.env(k, v);
    }
    let mut agent = cmd.spawn()?;
    // Wait for the agent to be up (its heartbeat).
    let up = Instant::now();
    while queue.agents().await?.is_empty() {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(20),
            "agent did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("file://{}", repo.display());
    let mut ids = Vec::new();
    let mut replied = Vec::new();
    for _ in 0..args.jobs {
        let job = Job::new(
            Source {
                repo_url: url.clone(),
                git_ref: "main".into(),
                sha: None,
                trigger: Trigger {
                    kind: TriggerKind::Api,
                    actor: None,
                },
                delivery_id: None,
                forge_repo: None,
                patch: None,
                notify_url: None,
            },
            Utc::now(),
        );
        let queued = job.timestamps.queued.unwrap_or_else(Utc::now);
        if let Enqueued::New(j) = queue.enqueue(job, None).await? {
            // The enqueuer's own round trip (Redis runs the script, fsyncs the AOF, then answers both
            // this call and the agent's blocked read in the same pass).
            replied.push((Utc::now() - queued).num_microseconds().unwrap_or(0) as f64 / 1e3);
            ids.push(j.id.to_string());
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lat = Vec::new();
    for id in &ids {
        loop {
            let j = queue.get(id).await?;
            if j.status.is_final() {
                if let Some(s) = j.claim_latency_secs() {
                    lat.push(s * 1e3);
                }
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "job {id} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Redis' own time per command (script bodies included), to set beside the latency.
    let mut con = queue.redis();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .arg("persistence")
        .query_async(&mut con)
        .await?;
    let _ = agent.kill();
    let _ = agent.wait();
    let n = lat.len();
    let (p50, p90, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.9), pct(&mut lat, 0.99));
    let max = lat.iter().cloned().fold(0.0, f64::max);
    println!(
        "agent binary {}: {n} jobs {} ms apart, queued→claimed (job timestamps) p50 {p50:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
        bin.display(),
        args.gap_ms
    );
    println!(
        "  beside it, queued→the enqueuer's reply: p50 {:.3} ms, p90 {:.3} ms",
        pct(&mut replied, 0.5),
        pct(&mut replied, 0.9)
    );
    const SHOWN: [&str; 6] = [
        "cmdstat_evalsha:",
        "cmdstat_xreadgroup:",
        "cmdstat_hmget:",
        "cmdstat_eval:",
        "aof_delayed_fsync",
        "aof_last_write_status",
    ];
    for l in info
        .lines()
        .filter(|l| SHOWN.iter().any(|c| l.starts_with(c)))
    {
        println!("  redis {}", l.trim());
    }
    Ok(())
}
