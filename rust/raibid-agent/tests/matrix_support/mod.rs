//! The matrix suites' stack (issue 23 §1; `matrix.rs` and the `matrix_bench` benchmark): Redis, the
//! dispatcher in process and agent processes from `raibid_testkit` (ADR 0020), the REST calls and waits the
//! suites share, and small git repositories.
#![allow(dead_code)]

use raibid_core::testkit::RedisServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "matrix-suite-token";

pub struct Stack {
    pub redis: RedisServer,
    pub base: String,
    pub http: reqwest::Client,
    pub tmp: tempfile::TempDir,
    _dispatcher: raibid_testkit::Dispatcher,
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

pub async fn stack() -> Stack {
    let redis = RedisServer::start().expect("redis-server");
    let queue = raibid_core::queue::Queue::connect(
        &redis.url(),
        raibid_core::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    // Jobs here clone file:// repositories (and http:// from local test servers).
    let dispatcher = raibid_testkit::Dispatcher::start(queue, raibid_testkit::settings(TOKEN))
        .await
        .unwrap();
    let base = dispatcher.base.clone();
    let tmp = tempfile::tempdir().unwrap();
    // The node's CARGO_HOME lives in the cache (the agent refuses a symlink there); each test has its
    // own, so the few small crates these tests use download once per test.
    std::fs::create_dir_all(tmp.path().join("cache/cargo")).unwrap();
    Stack {
        redis,
        base,
        http: reqwest::Client::new(),
        tmp,
        _dispatcher: dispatcher,
        spawned: std::sync::Mutex::new(Vec::new()),
    }
}

impl Stack {
    pub fn shared(&self) -> PathBuf {
        let d = self.tmp.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn agent(&self, name: &str) {
        self.agent_with(name, &[]);
    }

    /// An agent process with extra arguments (e.g. `--concurrency 16`).
    pub fn agent_with(&self, name: &str, args: &[&str]) {
        let child = raibid_testkit::agent_command(
            env!("CARGO_BIN_EXE_raibid-agent").as_ref(),
            name,
            &self.redis.url(),
            self.tmp.path(),
        )
        .args(args)
        .env("RAIBID_BLOCK_MS", "200")
        .env("RAIBID_SANDBOX_SHARED_DIRS", self.shared())
        .env("RAIBID_LEASE_SECS", "5")
        .env_remove("RAIBID_GIT_TOKEN")
        .env_remove("RUSTUP_TOOLCHAIN")
        .spawn()
        .unwrap();
        self.spawned.lock().unwrap().push(child);
    }

    pub async fn call(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
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

    pub async fn get(&self, path: &str) -> Value {
        let (st, v) = self.call(reqwest::Method::GET, path).await;
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    pub async fn submit(&self, repo_url: &str) -> String {
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

    pub async fn log(&self, id: &str) -> String {
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
    pub async fn wait(&self, path: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
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
    pub async fn group_of(&self, id: &str) -> Value {
        let j = self
            .wait(&format!("/jobs/{id}"), Duration::from_secs(120), |j| {
                j["matrix"]["role"] == "group" || is_final(j)
            })
            .await;
        assert_eq!(j["matrix"]["role"], "group", "{j}\n{}", self.log(id).await);
        self.get(&format!("/groups/{id}")).await
    }

    pub async fn group_final(&self, id: &str, within: Duration) -> Value {
        self.wait(&format!("/groups/{id}"), within, |g| is_final(&g["group"]))
            .await
    }
}

pub fn is_final(j: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "timed_out"].contains(&j["status"].as_str().unwrap_or(""))
}

pub fn git(dir: &Path, args: &[&str]) -> String {
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
pub fn repo(dir: &Path, files: &[(&str, &str)]) -> String {
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
