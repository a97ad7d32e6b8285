//! Issue 8 §2, §6, §8 with real agent processes and a real Redis: a crafted job id never names a
//! directory outside the workspace root; a heartbeating agent is never reaped however eager the reaper;
//! a flushed Redis (lost volume) recovers by itself under a running agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed and reaped by the support harness when a test ends.
#![allow(clippy::zombie_processes)]

use chrono::Utc;
use raibid_core::contract::{self, keys};
use raibid_core::job::{Job, Source, Status, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, Queue, QueueConfig, Requeued};
use raibid_core::testkit::RedisServer;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(redis: &RedisServer, tmp: &Path, name: &str, lease: u64) -> Agent {
    let log = std::fs::File::create(tmp.join(format!("{name}.log"))).unwrap();
    Agent(
        Command::new(env!("CARGO_BIN_EXE_raibid-agent"))
            .args(["--name", name, "--block-ms", "200"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("RAIBID_REDIS_URL", redis.url())
            .env("RAIBID_ALLOWED_SCHEMES", "file")
            .env("RAIBID_WORKSPACE_DIR", tmp.join("root/ws"))
            .env("RAIBID_CACHE_DIR", tmp.join("root/cache"))
            .env("RAIBID_LEASE_SECS", lease.to_string())
            .env("RAIBID_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn make_repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".raibid.yaml"), pipeline).unwrap();
    for args in [
        vec!["init", "-q"],
        vec!["add", "-A"],
        vec!["commit", "-qm", "x"],
    ] {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(&args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    format!("file://{}", dir.display())
}

fn job(repo: &str) -> Job {
    Job::new(
        Source {
            repo_url: repo.into(),
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
    )
}

async fn submit(q: &Queue, repo: &str) -> String {
    match q.enqueue(job(repo), None).await.unwrap() {
        Enqueued::New(j) => j.id.to_string(),
        other => panic!("{other:?}"),
    }
}

async fn wait_status(q: &Queue, id: &str, within: Duration, want: impl Fn(Status) -> bool) -> Job {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(j) = q.get(id).await {
            if want(j.status) {
                return j;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not get there within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_crafted_job_id_is_dead_lettered_and_nothing_outside_the_workspace_is_touched() {
    let redis = RedisServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    // What a hostile id would reach: the shared cache (a sibling of the workspace root) and an
    // absolute path.
    let cache_marker = tmp.path().join("root/cache/keep");
    let abs = tmp.path().join("elsewhere");
    std::fs::create_dir_all(cache_marker.parent().unwrap()).unwrap();
    std::fs::write(&cache_marker, "x").unwrap();
    std::fs::create_dir_all(&abs).unwrap();
    std::fs::write(abs.join("keep"), "x").unwrap();
    let repo = make_repo(
        &tmp.path().join("repo"),
        "steps:\n  - name: hi\n    run: echo hi\n",
    );
    let mut con = q.redis();
    let abs_id = abs.display().to_string();
    for raw in ["../cache", abs_id.as_str()] {
        // A record under the crafted id, as an attacker with Redis access would write it.
        let mut rec = serde_json::to_value(job(&repo)).unwrap();
        rec["id"] = raw.into();
        let _: () = redis::cmd("HSET")
            .arg(contract::job_key(raw))
            .arg("record")
            .arg(rec.to_string())
            .arg("rev")
            .arg(1)
            .arg("status")
            .arg("queued")
            .query_async(&mut con)
            .await
            .unwrap();
        let _: String = redis::cmd("XADD")
            .arg(keys::JOBS_STREAM)
            .arg("*")
            .arg("job")
            .arg(raw)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let good = submit(&q, &repo).await;
    let _a = agent(&redis, tmp.path(), "spine-ids", 30);
    let j = wait_status(&q, &good, Duration::from_secs(60), |s| s.is_final()).await;
    assert_eq!(j.status, Status::Succeeded, "{j:?}");
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter().all(|d| d.3.contains("is not a job id")),
        "{dead:?}"
    );
    assert!(cache_marker.exists(), "the shared cache was touched");
    assert!(
        abs.join("keep").exists(),
        "a directory outside the workspace root was touched"
    );
}

#[tokio::test]
async fn a_heartbeating_agent_is_never_reaped() {
    let redis = RedisServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let repo = make_repo(
        &tmp.path().join("repo"),
        "steps:\n  - name: long\n    run: echo started; sleep 120\n",
    );
    let id = submit(&q, &repo).await;
    let _a = agent(&redis, tmp.path(), "spine-lease", 3);
    wait_status(&q, &id, Duration::from_secs(30), |s| s == Status::Running).await;
    // A reaper every 100 ms for 30 s whose own setting (1 s) is shorter than the agent's lease (3 s):
    // only the lease stored with the claim, renewed by the agent, may decide.
    let t0 = Instant::now();
    let mut passes = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        let r = q
            .reap("eager-reaper", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            r.iter().all(|(_, o)| *o == Requeued::Alive),
            "pass {passes}: a live job was reaped: {r:?}"
        );
        passes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j = q.get(&id).await.unwrap();
    assert_eq!((j.status, j.attempt), (Status::Running, 1), "{j:?}");
    assert!(passes > 200, "{passes} passes");
    q.cancel(&id).await.unwrap();
    wait_status(&q, &id, Duration::from_secs(20), |s| s == Status::Cancelled).await;
}

#[tokio::test]
async fn a_flushed_redis_recovers_under_a_running_agent() {
    let redis = RedisServer::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let q = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let repo = make_repo(
        &tmp.path().join("repo"),
        "steps:\n  - name: hi\n    run: echo hi\n",
    );
    let _a = agent(&redis, tmp.path(), "spine-flush", 30);
    let first = submit(&q, &repo).await;
    wait_status(&q, &first, Duration::from_secs(60), |s| {
        s == Status::Succeeded
    })
    .await;
    let mut con = q.redis();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    // Within a few seconds new submits run again: the agent recreates the group it finds missing.
    let t0 = Instant::now();
    let again = submit(&q, &repo).await;
    let j = wait_status(&q, &again, Duration::from_secs(20), |s| s.is_final()).await;
    assert_eq!(j.status, Status::Succeeded, "{j:?}");
    eprintln!("ran again {:?} after the flush", t0.elapsed());
}
