//! The fault suite: real agent processes (SIGKILLed, SIGSTOPped, SIGTERMed), a real Redis (SIGKILLed and
//! restarted from its AOF), the real dispatcher (API + reaper) in process, real git repositories.
//!
//! The total-queue check runs at CI size by default; the large size is
//! `RAIBID_FAULT_JOBS=10000 RAIBID_FAULT_AGENT_KILLS=20 RAIBID_FAULT_REDIS_RESTARTS=5 \
//!  cargo test --release -p raibid-agent --test faults total_queue -- --nocapture` (see docs/benchmarks.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const TOKEN: &str = "fault-suite-token";
const LEASE: u64 = 3;

struct Stack {
    redis: RedisServer,
    queue: Queue,
    base: String,
    http: reqwest::Client,
    tmp: tempfile::TempDir,
    _dispatcher: raibid_testkit::Dispatcher,
    /// Every agent process started, killed when the stack is dropped (also when a test fails).
    spawned: std::sync::Mutex<Vec<u32>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(pids) = self.spawned.lock() {
            for pid in pids.iter() {
                // Only if the pid is still one of our agents (pids are reused).
                let cmd =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmd.contains("raibid-agent") {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
        }
    }
}

async fn stack(max_attempts: u32) -> Stack {
    let redis = RedisServer::start().expect("redis-server");
    let qcfg = QueueConfig {
        max_attempts,
        ..QueueConfig::default()
    };
    let queue = Queue::connect(&redis.url(), qcfg).await.unwrap();
    // Jobs here clone file:// repositories (the testkit's default schemes include file).
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.lease = Duration::from_secs(LEASE);
    let dispatcher = raibid_testkit::Dispatcher::start(queue.clone(), settings)
        .await
        .unwrap();
    let base = dispatcher.base.clone();
    Stack {
        redis,
        queue,
        base,
        http: reqwest::Client::new(),
        tmp: tempfile::tempdir().unwrap(),
        _dispatcher: dispatcher,
        spawned: std::sync::Mutex::new(Vec::new()),
    }
}

impl Stack {
    /// A directory every step may write (the test's marks), created on first use.
    fn shared(&self) -> std::path::PathBuf {
        let d = self.tmp.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn agent(&self, name: &str) -> Child {
        let child = raibid_testkit::agent_command(
            env!("CARGO_BIN_EXE_raibid-agent").as_ref(),
            name,
            &self.redis.url(),
            self.tmp.path(),
        )
        // Steps run sandboxed (ADR 0011): the marks tests read are in a directory shared with them.
        .env("RAIBID_SANDBOX_SHARED_DIRS", self.shared())
        .env("RAIBID_LEASE_SECS", LEASE.to_string())
        .env("RAIBID_SHUTDOWN_GRACE_SECS", "2")
        .spawn()
        .unwrap();
        if let Ok(mut v) = self.spawned.lock() {
            v.push(child.id());
        }
        child
    }

    async fn submit(&self, repo_url: &str) -> Result<String, u16> {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"repo_url": repo_url, "ref": "main"}))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        match r {
            Ok(r) if r.status().as_u16() == 201 => Ok(r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()),
            Ok(r) => Err(r.status().as_u16()),
            Err(_) => Err(0),
        }
    }

    async fn job(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/jobs/{id}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait(&self, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not get there within {within:?}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn is_final(j: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "timed_out"].contains(&j["status"].as_str().unwrap_or(""))
}

fn make_repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".raibid.yaml"), pipeline).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "x"]);
    format!("file://{}", dir.display())
}

fn kill(child: &mut Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn pids_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        if f[0] != "Z" && f[2].parse::<i32>().ok() == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_step_is_reclaimed_by_another_agent() {
    let s = stack(3).await;
    let started = s.shared().join("started");
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &format!(
            "steps:\n  - name: work\n    run: echo $RAIBID_ATTEMPT >> {}; sleep 2\n",
            started.display()
        ),
    );
    let mut a = s.agent("agent-a");
    let id = s.submit(&repo).await.unwrap();
    s.wait(&id, Duration::from_secs(30), |j| {
        j["status"] == "running" && j["step"] == "work"
    })
    .await;
    kill(&mut a, "-KILL");
    let _ = a.wait();
    let killed_at = chrono::Utc::now();
    let mut b = s.agent("agent-b");
    let j = s.wait(&id, Duration::from_secs(LEASE + 30), is_final).await;
    kill(&mut b, "-TERM");
    let _ = b.wait();
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["attempt"], 2);
    assert_eq!(j["agent"], "agent-b");
    let claimed: chrono::DateTime<chrono::Utc> = j["timestamps"]["claimed"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let reclaim = (claimed - killed_at).num_milliseconds() as f64 / 1000.0;
    println!("time to reclaim after SIGKILL: {reclaim:.2}s (lease {LEASE}s)");
    assert!(reclaim <= (LEASE + 5) as f64, "reclaimed after {reclaim}s");
    assert_eq!(std::fs::read_to_string(&started).unwrap(), "1\n2\n");
    let q = s.queue.stats().await.unwrap();
    assert_eq!((q.length, q.lag, q.pending), (0, Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_agent_cannot_overwrite_the_result_of_the_one_that_took_over() {
    let s = stack(3).await;
    let marks = s.shared().join("marks");
    // Attempt 1 would fail; attempt 2 succeeds. If the stale agent could write, the job would end failed.
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &format!(
            "steps:\n  - name: work\n    run: echo \"$RAIBID_ATTEMPT start\" >> {m}; sleep 1; if [ \"$RAIBID_ATTEMPT\" = 1 ]; then sleep 6; echo stale-line; exit 1; fi; echo done\n",
            m = marks.display()
        ),
    );
    let mut a = s.agent("agent-stale");
    let id = s.submit(&repo).await.unwrap();
    s.wait(&id, Duration::from_secs(30), |j| j["step"] == "work")
        .await;
    kill(&mut a, "-STOP");
    let mut b = s.agent("agent-fresh");
    let j = s.wait(&id, Duration::from_secs(LEASE + 30), is_final).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["agent"], "agent-fresh");
    kill(&mut a, "-CONT");
    // Give the stale agent time to try its final write (its step ends ~7s after it started).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let j2 = s.job(&id).await;
    assert_eq!(
        j2["status"], "succeeded",
        "the stale agent overwrote the result: {j2}"
    );
    assert_eq!(j2["agent"], "agent-fresh");
    assert_eq!(j2["attempt"], 2);
    let logs: Value = s
        .http
        .get(format!("{}/api/v1/jobs/{id}/logs", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines = logs["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l["line"] == "done"),
        "the fresh agent's output is in the log"
    );
    assert!(
        !lines.iter().any(|l| l["line"] == "stale-line"),
        "the stale agent appended to the log after losing its lease"
    );
    kill(&mut a, "-TERM");
    kill(&mut b, "-TERM");
    let _ = (a.wait(), b.wait());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_job_is_dead_lettered_after_exactly_k_deliveries_while_others_flow() {
    let k = 3;
    let s = stack(k).await;
    // Every delivery of the poison job kills the agent that runs it. A step cannot reach its agent
    // (its sandbox's PID namespace, ADR 0011): the step marks that it runs and the supervisor below
    // kills that agent, as a step that crashes its pod (OOM, a kernel panic) would.
    let running = s.shared().join("poison-running");
    let poison = make_repo(
        &s.tmp.path().join("poison"),
        &format!(
            "steps:\n  - name: boom\n    run: echo $RAIBID_ATTEMPT > {}; sleep 30\n",
            running.display()
        ),
    );
    let fine = make_repo(
        &s.tmp.path().join("fine"),
        "steps:\n  - name: ok\n    run: echo fine\n",
    );
    let pid = s.submit(&poison).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(s.submit(&fine).await.unwrap());
    }
    // A supervisor restarts dead agents under new names (what Kubernetes does with pods).
    let mut agents: Vec<Child> = (0..2).map(|i| s.agent(&format!("pod-{i}"))).collect();
    let mut names: Vec<String> = (0..2).map(|i| format!("pod-{i}")).collect();
    let mut next = 2;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if std::fs::remove_file(&running).is_ok() {
            let holder = s.job(&pid).await["agent"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if let Some(i) = names.iter().position(|n| *n == holder) {
                let _ = agents[i].kill();
            }
        }
        for a in agents.iter_mut() {
            if let Ok(Some(_)) = a.try_wait() {
                *a = s.agent(&format!("pod-{next}"));
                next += 1;
            }
        }
        names = (0..agents.len()).map(|_| String::new()).collect();
        for (i, a) in agents.iter().enumerate() {
            names[i] = agent_name(a.id());
        }
        if is_final(&s.job(&pid).await) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "poison job never dead-lettered: {}",
            s.job(&pid).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let j = s.job(&pid).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["attempt"], k);
    assert!(
        j["failure_reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("gave up after {k} attempts")),
        "{j}"
    );
    let dead = s.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, pid);
    assert_eq!(dead[0].2, k);
    for id in &others {
        assert_eq!(
            s.wait(id, Duration::from_secs(60), is_final).await["status"],
            "succeeded"
        );
    }
    // Retry enqueues a fresh attempt.
    let r: Value = s
        .http
        .post(format!("{}/api/v1/jobs/{pid}/retry", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "queued");
    assert_eq!(r["retry_of"], pid.as_str());
    for a in agents.iter_mut() {
        kill(a, "-KILL");
        let _ = a.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_cargo_test_and_forked_grandchildren_leaves_no_process() {
    let s = stack(3).await;
    let crate_dir = s.tmp.path().join("crate");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(crate_dir.join("Cargo.toml"), "[package]\nname = \"slowtest\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n").unwrap();
    std::fs::write(
        crate_dir.join("src/lib.rs"),
        "#[test]\nfn spawns_and_waits() {\n    let _c = std::process::Command::new(\"sh\").args([\"-c\", \"sleep 300 & sleep 300\"]).spawn().unwrap();\n    std::thread::sleep(std::time::Duration::from_secs(300));\n}\n",
    )
    .unwrap();
    std::fs::write(
        crate_dir.join(".raibid.yaml"),
        "steps:\n  - name: test\n    run: cargo test\n",
    )
    .unwrap();
    let repo = {
        let git = |args: &[&str]| {
            assert!(Command::new("git")
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "init.defaultBranch=main"
                ])
                .args(args)
                .current_dir(&crate_dir)
                .status()
                .unwrap()
                .success());
        };
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-qm", "x"]);
        format!("file://{}", crate_dir.display())
    };
    let mut a = s.agent("agent-cancel");
    let id = s.submit(&repo).await.unwrap();
    // Wait until the test binary and its grandchildren run: find the step's process group by its `sleep 300`.
    let deadline = Instant::now() + Duration::from_secs(120);
    let pgid = loop {
        let found = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            if cmd == "sleep\u{0}300\u{0}" {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let after = &stat[stat.rfind(')')? + 2..];
                let pgid: i32 = after.split(' ').nth(2)?.parse().ok()?;
                let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                String::from_utf8_lossy(&env).contains(&id).then_some(pgid)
            } else {
                None
            }
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "cargo test never started its grandchildren"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let before = pids_in_group(pgid);
    assert!(
        before.len() >= 3,
        "expected cargo, the test binary and sleeps in group {pgid}: {before:?}"
    );
    let t0 = Instant::now();
    let r = s
        .http
        .post(format!("{}/api/v1/jobs/{id}/cancel", s.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let j = s.wait(&id, Duration::from_secs(5), is_final).await;
    let took = t0.elapsed();
    assert_eq!(j["status"], "cancelled");
    let mut left = pids_in_group(pgid);
    let wait_until = Instant::now() + Duration::from_secs(2);
    while !left.is_empty() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = pids_in_group(pgid);
    }
    println!(
        "cancel → cancelled in {took:?}; processes of the step before: {}, after: {}",
        before.len(),
        left.len()
    );
    assert!(
        left.is_empty(),
        "processes of the cancelled step survive: {left:?}"
    );
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    kill(&mut a, "-TERM");
    let _ = a.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_name_the_step_and_sigterm_releases_the_job_at_once() {
    let s = stack(3).await;
    let repo = make_repo(&s.tmp.path().join("t"), "timeout: 60\nsteps:\n  - name: quick\n    run: echo ok\n  - name: slow\n    run: sleep 30\n    timeout: 1\n");
    let mut a = s.agent("agent-timeout");
    let id = s.submit(&repo).await.unwrap();
    let j = s.wait(&id, Duration::from_secs(30), is_final).await;
    assert_eq!(j["status"], "timed_out", "{j}");
    assert_eq!(j["step"], "slow");
    assert!(j["failure_reason"]
        .as_str()
        .unwrap()
        .contains("step `slow` timed out after 1s"));
    // Job-level timeout.
    let repo2 = make_repo(
        &s.tmp.path().join("t2"),
        "timeout: 2\nsteps:\n  - name: long\n    run: sleep 30\n",
    );
    let id2 = s.submit(&repo2).await.unwrap();
    let j2 = s.wait(&id2, Duration::from_secs(30), is_final).await;
    assert_eq!(j2["status"], "timed_out");
    assert!(
        j2["failure_reason"]
            .as_str()
            .unwrap()
            .contains("job timed out after 2s during step `long`"),
        "{j2}"
    );
    // SIGTERM with a job running past the grace period (2 s): the job is released and another agent
    // claims it at once, without waiting for the lease.
    let repo3 = make_repo(&s.tmp.path().join("t3"), "steps:\n  - name: long\n    run: if [ \"$RAIBID_ATTEMPT\" = 1 ]; then sleep 60; fi; echo second\n");
    let id3 = s.submit(&repo3).await.unwrap();
    s.wait(&id3, Duration::from_secs(30), |j| j["step"] == "long")
        .await;
    kill(&mut a, "-TERM");
    let status = tokio::task::spawn_blocking(move || a.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "agent exits 0 after a clean shutdown: {status:?}"
    );
    let j3 = s.job(&id3).await;
    assert_eq!(j3["status"], "queued", "released back to the queue: {j3}");
    let q = s.queue.stats().await.unwrap();
    assert_eq!(
        (q.lag, q.pending),
        (Some(1), 0),
        "the released job is claimable at once"
    );
    let mut b = s.agent("agent-next");
    let j3 = s.wait(&id3, Duration::from_secs(20), is_final).await;
    assert_eq!(j3["status"], "succeeded");
    assert_eq!(j3["attempt"], 2);
    kill(&mut b, "-TERM");
    let _ = b.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_with_one_consumer_name_cannot_both_run() {
    let s = stack(3).await;
    let mut a = s.agent("same-name");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut b = s.agent("same-name");
    let st = tokio::task::spawn_blocking(move || b.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.code(), Some(1), "the second agent refuses to start");
    let log = std::fs::read_to_string(s.tmp.path().join("same-name.log")).unwrap();
    assert!(
        log.contains("another agent with consumer name `same-name` is alive"),
        "{log}"
    );
    kill(&mut a, "-TERM");
    let _ = a.wait();
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Jepsen-style total-queue check: every accepted job ends with exactly one final status, none is lost,
/// none appears that nobody submitted, and re-executions stay within what the injected crashes explain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_queue_check_under_agent_and_redis_crashes() {
    let n_jobs = env_or("RAIBID_FAULT_JOBS", 300);
    let agent_kills = env_or("RAIBID_FAULT_AGENT_KILLS", 5);
    let redis_restarts = env_or("RAIBID_FAULT_REDIS_RESTARTS", 2);
    let n_agents = env_or("RAIBID_FAULT_AGENTS", 3);
    let mut s = stack(10).await;
    let execs = s.shared().join("executions");
    let repo = make_repo(
        &s.tmp.path().join("repo"),
        &format!(
            "steps:\n  - name: record\n    run: echo \"$RAIBID_JOB_ID\" >> {}; sleep 0.05\n",
            execs.display()
        ),
    );
    let mut agents: Vec<Child> = (0..n_agents)
        .map(|i| s.agent(&format!("fault-{i}")))
        .collect();
    let mut next_agent = n_agents;
    let t0 = Instant::now();
    let mut accepted: Vec<String> = Vec::new();
    let mut indeterminate = 0usize;
    let mut rejected = 0usize;
    let mut rng = rand::thread_rng();
    // Fault schedule: spread over the submissions.
    let mut kills_at: Vec<usize> = (0..agent_kills)
        .map(|_| rng.gen_range(1..n_jobs.max(2)))
        .collect();
    let mut restarts_at: Vec<usize> = (0..redis_restarts)
        .map(|i| (i + 1) * n_jobs / (redis_restarts + 1))
        .collect();
    kills_at.sort_unstable();
    let (mut kills_done, mut restarts_done) = (0, 0);
    let mut submitted = 0usize;
    while accepted.len() < n_jobs {
        while kills_at.first().is_some_and(|&k| k <= submitted) {
            kills_at.remove(0);
            let i = rng.gen_range(0..agents.len());
            kill(&mut agents[i], "-KILL");
            let _ = agents[i].wait();
            agents[i] = s.agent(&format!("fault-{next_agent}"));
            next_agent += 1;
            kills_done += 1;
        }
        if restarts_at.first().is_some_and(|&r| r <= submitted) {
            restarts_at.remove(0);
            s.redis.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            s.redis.restart().unwrap();
            restarts_done += 1;
        }
        match s.submit(&repo).await {
            Ok(id) => accepted.push(id),
            Err(503) => rejected += 1,
            Err(_) => indeterminate += 1,
        }
        submitted += 1;
        for a in agents.iter_mut() {
            if let Ok(Some(_)) = a.try_wait() {
                *a = s.agent(&format!("fault-{next_agent}"));
                next_agent += 1;
            }
        }
    }
    // Drain.
    let deadline = Instant::now() + Duration::from_secs(60 + n_jobs as u64 / 2);
    let mut finals: HashMap<String, String> = HashMap::new();
    for id in &accepted {
        loop {
            let j = s.job(id).await;
            if is_final(&j) {
                finals.insert(id.clone(), j["status"].as_str().unwrap().to_string());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not final after the drain deadline: {j}"
            );
            for a in agents.iter_mut() {
                if let Ok(Some(_)) = a.try_wait() {
                    *a = s.agent(&format!("fault-{next_agent}"));
                    next_agent += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let elapsed = t0.elapsed();
    for a in agents.iter_mut() {
        kill(a, "-TERM");
    }
    for a in agents.iter_mut() {
        let _ = a.wait();
    }
    // Every job in the store was accepted (or is one of the indeterminate requests).
    let (all, _) = s.queue.list(None, None, usize::MAX, None).await.unwrap();
    let accepted_set: HashSet<&String> = accepted.iter().collect();
    let unexpected: Vec<String> = all
        .iter()
        .map(|j| j.id.to_string())
        .filter(|id| !accepted_set.contains(id))
        .collect();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|id| !all.iter().any(|j| j.id == **id))
        .collect();
    let text = std::fs::read_to_string(&execs).unwrap_or_default();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for l in text.lines() {
        *runs.entry(l.trim()).or_default() += 1;
    }
    let extra: usize = runs.values().map(|c| c.saturating_sub(1)).sum();
    let not_succeeded: Vec<(&String, &String)> = finals
        .iter()
        .filter(|(_, s)| s.as_str() != "succeeded")
        .collect();
    let crash_budget = kills_done + restarts_done * n_agents;
    let q = s.queue.stats().await.unwrap();
    println!(
        "total-queue: {} accepted, {} rejected (503), {} indeterminate, {} agent kills, {} redis restarts, {:.1}s; \
         {} finals, {} missing, {} unexpected, {} extra executions (budget {}), {} not succeeded; queue after: {:?}",
        accepted.len(), rejected, indeterminate, kills_done, restarts_done, elapsed.as_secs_f64(),
        finals.len(), missing.len(), unexpected.len(), extra, crash_budget, not_succeeded.len(), q
    );
    assert_eq!(kills_done, agent_kills);
    assert_eq!(restarts_done, redis_restarts);
    assert!(missing.is_empty(), "accepted jobs lost: {missing:?}");
    assert!(
        unexpected.len() <= indeterminate,
        "jobs nobody submitted: {unexpected:?}"
    );
    assert_eq!(finals.len(), accepted.len());
    assert!(
        not_succeeded.is_empty(),
        "jobs that did not succeed: {not_succeeded:?}"
    );
    for id in &accepted {
        assert!(
            runs.get(id.as_str()).copied().unwrap_or(0) >= 1,
            "job {id} is final but never executed"
        );
    }
    assert!(
        extra <= crash_budget,
        "{extra} re-executions exceed the {crash_budget} crashes injected"
    );
    assert_eq!((q.lag, q.pending), (Some(0), 0));
    let _ = PathBuf::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_2xx_survives_redis_sigkill_and_dedup_survives_a_dispatcher_restart() {
    let mut s = stack(3).await;
    let repo = make_repo(
        &s.tmp.path().join("r"),
        "steps:\n  - name: a\n    run: echo ok\n",
    );
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(s.submit(&repo).await.unwrap());
    }
    // SIGKILL right after the last 2xx, no grace.
    s.redis.kill();
    s.redis.restart().unwrap();
    let q = Queue::connect(&s.redis.url(), QueueConfig::default())
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(
            q.get(id).await.unwrap().status,
            raibid_core::job::Status::Queued,
            "job {id} lost"
        );
    }
    assert_eq!(q.stats().await.unwrap().lag, Some(50));
    // A webhook delivery, then a brand-new dispatcher process state (new Queue, new server): the same
    // delivery id is still recognised.
    let job = raibid_core::job::Job::new(
        raibid_core::job::Source {
            repo_url: repo.clone(),
            git_ref: "refs/heads/main".into(),
            sha: None,
            trigger: raibid_core::job::Trigger {
                kind: raibid_core::job::TriggerKind::GiteaPush,
                actor: None,
            },
            delivery_id: Some("restart-1".into()),
            forge_repo: None,
            patch: None,
            notify_url: None,
        },
        chrono::Utc::now(),
    );
    let first = q
        .enqueue(job.clone(), Some(("gitea", "restart-1")))
        .await
        .unwrap();
    s.redis.kill();
    s.redis.restart().unwrap();
    let q2 = Queue::connect(&s.redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let mut again = job;
    again.id = raibid_core::job::JobId::new();
    match (
        first,
        q2.enqueue(again, Some(("gitea", "restart-1")))
            .await
            .unwrap(),
    ) {
        (raibid_core::queue::Enqueued::New(j), raibid_core::queue::Enqueued::Duplicate(d)) => {
            assert_eq!(j.id, d)
        }
        other => panic!("{other:?}"),
    }
    // Agents started now drain everything that was accepted before the crashes.
    let mut a = s.agent("after-crash");
    for id in &ids {
        assert_eq!(
            s.wait(id, Duration::from_secs(60), is_final).await["status"],
            "succeeded"
        );
    }
    kill(&mut a, "-TERM");
    let _ = a.wait();
}

/// The `--name` an agent process was started with (its command line).
fn agent_name(pid: u32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = c
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter()
        .position(|a| a == "--name")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_default()
}
