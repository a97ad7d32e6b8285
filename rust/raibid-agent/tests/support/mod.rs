//! Test support for the agent's hardening suites: a real redis-server (optionally with a password), the
//! real agent binary as a process, jobs enqueued through the real queue, real git repositories.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use raibid_core::job::{Job, Source};
use raibid_core::queue::{Enqueued, LogLine, Queue, QueueConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private redis-server (no persistence, optionally a password), killed on drop: the testkit's.
pub struct Redis(raibid_testkit::EphemeralRedis);

impl std::ops::Deref for Redis {
    type Target = raibid_testkit::EphemeralRedis;
    fn deref(&self) -> &raibid_testkit::EphemeralRedis {
        &self.0
    }
}

impl Redis {
    pub fn start(password: Option<&str>) -> Redis {
        Redis(raibid_testkit::EphemeralRedis::start(password).expect("redis-server"))
    }

    /// `INFO memory` used_memory in bytes.
    pub async fn used_memory(&self, q: &Queue) -> u64 {
        let mut con = q.redis();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut con)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// Redis + the queue + a temporary directory + the agents started (killed on drop).
pub struct Env {
    pub redis: Redis,
    pub queue: Queue,
    pub tmp: tempfile::TempDir,
    /// Agents started with `start`/`agent`, killed and reaped on drop (also when a test fails).
    agents: std::sync::Mutex<Vec<Child>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(mut children) = self.agents.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub async fn env(password: Option<&str>) -> Env {
    let redis = Redis::start(password);
    let queue = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    Env {
        redis,
        queue,
        tmp: tempfile::tempdir().unwrap(),
        agents: std::sync::Mutex::new(Vec::new()),
    }
}

impl Env {
    /// The agent binary with the suite's defaults (file:// clones, short lease, dirs in the temp dir)
    /// plus `extra` environment; its stderr goes to `<tmp>/<name>.log`.
    pub fn agent_cmd(&self, name: &str, extra: &[(&str, String)]) -> Command {
        let log = std::fs::File::create(self.log_path(name)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raibid-agent"));
        cmd.args(["--name", name, "--block-ms", "300"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RAIBID_REDIS_URL", self.redis.url())
            .env("RAIBID_ALLOWED_SCHEMES", "file")
            .env("RAIBID_WORKSPACE_DIR", self.tmp.path().join("ws"))
            .env("RAIBID_CACHE_DIR", self.tmp.path().join("cache"))
            .env("RAIBID_LEASE_SECS", "3")
            .env("RAIBID_SHUTDOWN_GRACE_SECS", "2")
            .env("RAIBID_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Start an agent the environment keeps (killed on drop); returns its pid.
    pub fn start(&self, mut cmd: Command) -> u32 {
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        self.agents.lock().unwrap().push(child);
        pid
    }

    pub fn agent(&self, name: &str, extra: &[(&str, String)]) -> u32 {
        let cmd = self.agent_cmd(name, extra);
        self.start(cmd)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.log"))
    }

    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    pub async fn submit(&self, repo_url: &str) -> String {
        let source: Source = serde_json::from_value(serde_json::json!({
            "repo_url": repo_url,
            "ref": "main",
            "sha": null,
            "trigger": {"kind": "api", "actor": "test"},
            "delivery_id": null,
            "forge_repo": null,
        }))
        .unwrap();
        match self
            .queue
            .enqueue(Job::new(source, chrono::Utc::now()), None)
            .await
            .unwrap()
        {
            Enqueued::New(j) => j.id.to_string(),
            Enqueued::Duplicate(id) => id.to_string(),
        }
    }

    pub async fn job(&self, id: &str) -> Job {
        self.queue.get(id).await.unwrap()
    }

    pub async fn wait(&self, id: &str, within: Duration, pred: impl Fn(&Job) -> bool) -> Job {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not get there within {within:?}: {}",
                serde_json::to_string(&j).unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_final(&self, id: &str, within: Duration) -> Job {
        self.wait(id, within, |j| j.status.is_final()).await
    }

    pub async fn logs(&self, id: &str) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = Vec::new();
        loop {
            let after = out.last().map(|l| l.seq.clone());
            let batch = self
                .queue
                .read_log(id, after.as_deref(), 10_000)
                .await
                .unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }
}

/// A git repository with one commit holding `.raibid.yaml`; returns its file:// URL.
pub fn make_repo(dir: &Path, pipeline: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(".raibid.yaml"), pipeline).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(["-c", "init.defaultBranch=main"])
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

/// Wait until the agent's log shows `needle` (it is ready, or it said why not).
pub fn wait_log(path: &Path, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if s.contains(needle) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` within {within:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `VmHWM` (peak resident set) of a process in KiB.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Pids of processes whose environment has `RAIBID_JOB_ID=<id>`.
pub fn pids_with_marker(id: &str) -> Vec<i32> {
    let marker = format!("RAIBID_JOB_ID={id}").into_bytes();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_slice()) {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGKILL processes (test cleanup).
pub fn kill_pids(pids: &[i32]) {
    for p in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
}

/// The agent binary copied where a user other than root can run it (issue 17 §7): the checkout may
/// sit under a mode-0700 directory (a `mktemp -d`, `/root`), which another uid cannot pass.
pub fn agent_binary_in(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join("raibid-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_raibid-agent"), &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    to
}

/// `cmd` (an `Env::agent_cmd`) started from `bin` instead, with the same arguments and environment
/// and its stderr to `log`.
pub fn same_command_from(bin: &Path, cmd: &Command, log: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args(cmd.get_args())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}
