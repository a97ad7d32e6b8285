//! Benchmark (issue 23 §1, "Done when"): the fan-out cost of a build matrix, push → every cell claimed,
//! for 6 and 64 cells, through the real stack (dispatcher API in process, real Redis, real agent
//! processes with enough consumers for every cell at once, real git). Run:
//!
//! ```sh
//! cd rust && cargo test --release -p raibid-agent --test matrix_bench -- --nocapture
//! ```
//!
//! Figures come from the job records (`timestamps`): push = the group job's `received`; fan-out = the
//! cells' `queued` (written by the fan-out script); claimed = each cell's `claimed`. Each size runs
//! `BENCH_RUNS` times (default 3) on new commits of one repository (its mirror warm after the first).
//!
//! (The header of the original suite follows, for the shared stack:)
//! Build matrices (issue 23 §1) against real parts: real `raibid-agent` processes (steps sandboxed), a
//! real Redis, the real dispatcher (REST) in process, real git repositories and real cargo builds of a
//! small crate with features.
//!
//! Asserted: a 3×2 matrix fans out into six jobs, each with its environment, status context, slot and
//! cache key, run in parallel by several agents, and the group's combined status; `fail_fast` cancels
//! the rest on the first failure; cancel and retry of a whole group and of one cell; the well-known
//! `toolchain` axis through the environment it sets (`RUSTUP_TOOLCHAIN`) and the cache key the
//! sandboxed `rustc -vV` gives; a malformed matrix fails the config step naming the key, and more than
//! 64 cells are refused with the count.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed when the stack is dropped (also when a test fails).
#![allow(clippy::zombie_processes, dead_code)]

use raibid_core::testkit::RedisServer;
use raibid_dispatcher::{serve, AppState};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "matrix-suite-token";

struct Stack {
    redis: RedisServer,
    base: String,
    http: reqwest::Client,
    tmp: tempfile::TempDir,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    spawned: std::sync::Mutex<Vec<std::process::Child>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(mut children) = self.spawned.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

async fn stack() -> Stack {
    let redis = RedisServer::start().expect("redis-server");
    let queue = raibid_core::queue::Queue::connect(
        &redis.url(),
        raibid_core::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    // Jobs here clone file:// repositories (and http:// from local test servers).
    let settings = raibid_testkit::settings(TOKEN);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(queue, settings);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        serve(state, listener, async {
            let _ = rx.await;
        })
        .await
        .ok()
    });
    let tmp = tempfile::tempdir().unwrap();
    // The node's CARGO_HOME lives in the cache (the agent refuses a symlink there); each test has its
    // own, so the few small crates these tests use download once per test.
    std::fs::create_dir_all(tmp.path().join("cache/cargo")).unwrap();
    Stack {
        redis,
        base,
        http: reqwest::Client::new(),
        tmp,
        _shutdown: tx,
        spawned: std::sync::Mutex::new(Vec::new()),
    }
}

impl Stack {
    fn shared(&self) -> PathBuf {
        let d = self.tmp.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn agent(&self, name: &str) {
        self.agent_with(name, &[]);
    }

    fn agent_with(&self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.tmp.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raibid-agent"))
            .args(["--name", name, "--block-ms", "200"])
            .args(args)
            .env("RAIBID_REDIS_URL", self.redis.url())
            .env("RAIBID_ALLOWED_SCHEMES", "file")
            .env("RAIBID_WORKSPACE_DIR", self.tmp.path().join("ws"))
            .env("RAIBID_CACHE_DIR", self.tmp.path().join("cache"))
            .env("RAIBID_SANDBOX_SHARED_DIRS", self.shared())
            .env("RAIBID_LEASE_SECS", "5")
            .env("RAIBID_LOG", "info")
            .env_remove("RAIBID_GIT_TOKEN")
            .env_remove("RUSTUP_TOOLCHAIN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.spawned.lock().unwrap().push(child);
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (st, v) = self.call(reqwest::Method::GET, path).await;
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    async fn submit(&self, repo_url: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"repo_url": repo_url, "ref": "main"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn log(&self, id: &str) -> String {
        let v = self.get(&format!("/jobs/{id}/logs")).await;
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "[{}] {}",
                    l["step"].as_str().unwrap_or(""),
                    l["line"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Poll `path` until `pred` holds.
    async fn wait(&self, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (st, v) = self.call(reqwest::Method::GET, path).await;
            if st == 200 && pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{path} did not get there within {within:?}: {st} {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The group a push fanned out into: wait until the job is a group.
    async fn group_of(&self, id: &str) -> Value {
        let j = self
            .wait(&format!("/jobs/{id}"), Duration::from_secs(120), |j| {
                j["matrix"]["role"] == "group" || is_final(j)
            })
            .await;
        assert_eq!(j["matrix"]["role"], "group", "{j}\n{}", self.log(id).await);
        self.get(&format!("/groups/{id}")).await
    }

    async fn group_final(&self, id: &str, within: Duration) -> Value {
        self.wait(&format!("/groups/{id}"), within, |g| is_final(&g["group"]))
            .await
    }
}

fn is_final(j: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "timed_out"].contains(&j["status"].as_str().unwrap_or(""))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with `files`, committed; returns its URL.
fn repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for (p, c) in files {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
    git(dir, &["init", "-q"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", "x"]);
    format!("file://{}", dir.display())
}

fn ms(a: &Value, b: &Value) -> f64 {
    let p = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    (p(b) - p(a)).num_microseconds().unwrap() as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_push_to_every_cell_claimed() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = stack().await;
    let shared = s.shared();
    // 4 agent processes × 16 consumers: every one of 64 cells can be claimed at once.
    for n in ["a", "b", "c", "d"] {
        s.agent_with(&format!("agent-{n}"), &["--concurrency", "16"]);
    }
    let dir = s.tmp.path().join("repo");
    let url = repo(&dir, &[("README", "bench\n")]);
    println!("| cells | run | push → group claimed (ms) | claimed → cells queued (fan-out, ms) | fan-out → every cell claimed (ms) | push → every cell claimed (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (cells, a, b) in [(6usize, 3usize, 2usize), (64, 8, 8)] {
        for run in 0..runs {
            let marker = shared.join(format!("go-{cells}-{run}"));
            let av: Vec<String> = (0..a).map(|i| format!("'a{i}'")).collect();
            let bv: Vec<String> = (0..b).map(|i| format!("'b{i}'")).collect();
            std::fs::write(
                dir.join(".raibid.yaml"),
                format!(
                    "matrix:\n  a: [{}]\n  b: [{}]\nsteps:\n  - name: hold\n    run: while [ ! -e {} ]; do sleep 0.2; done\n",
                    av.join(", "),
                    bv.join(", "),
                    marker.display()
                ),
            )
            .unwrap();
            git(&dir, &["add", "-A"]);
            git(&dir, &["commit", "-qm", &format!("{cells}-{run}")]);
            let id = s.submit(&url).await;
            s.group_of(&id).await;
            let g = s
                .wait(&format!("/groups/{id}"), Duration::from_secs(300), |g| {
                    let c = g["cells"].as_array().unwrap();
                    c.len() == cells && c.iter().all(|c| !c["timestamps"]["claimed"].is_null())
                })
                .await;
            let received = &g["group"]["timestamps"]["received"];
            let gclaimed = &g["group"]["timestamps"]["claimed"];
            let queued = &g["cells"][0]["timestamps"]["queued"];
            let last = g["cells"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["timestamps"]["claimed"].clone())
                .max_by(|x, y| x.as_str().cmp(&y.as_str()))
                .unwrap();
            println!(
                "| {cells} | {run} | {:.1} | {:.1} | {:.1} | {:.1} |",
                ms(received, gclaimed),
                ms(gclaimed, queued),
                ms(queued, &last),
                ms(received, &last)
            );
            std::fs::write(&marker, "").unwrap();
            let g = s.group_final(&id, Duration::from_secs(300)).await;
            assert_eq!(g["status"], "succeeded", "{g}");
        }
    }
}
