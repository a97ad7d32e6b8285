//! Test support shared by the suites and benches of every crate (a dev-dependency only: no binary
//! links it, ADR 0020): a private Redis, the dispatcher served in this process from test `Settings`,
//! and the agent binary as a child process. One place builds these, so a new `Settings` field or a new
//! way to start Redis is one change, not one per suite.
//!
//! ```ignore
//! let redis = raibid_testkit::RedisServer::start()?;
//! let queue = raibid_testkit::queue(&redis).await?;
//! let mut settings = raibid_testkit::settings("token");
//! settings.intake.allowed_schemes = raibid_dispatcher::csv_list("file");
//! let dispatcher = raibid_testkit::Dispatcher::start(queue.clone(), settings).await?;
//! // dispatcher.url("/api/v1/jobs") …
//! ```

use raibid_core::queue::{Queue, QueueConfig};
use raibid_dispatcher::{serve, AppState, Intake, Settings};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub use raibid_core::testkit::{free_port, RedisServer};

/// The public URL test dispatchers put in page links and commit statuses.
pub const PUBLIC_URL: &str = "http://raibid.test";

/// A queue client of `redis` with the default configuration.
pub async fn queue(redis: &RedisServer) -> anyhow::Result<Queue> {
    Ok(Queue::connect(&redis.url(), QueueConfig::default()).await?)
}

/// Test settings: the API token, [`PUBLIC_URL`], a 1 MiB body limit, a 30 s lease, clone URLs of
/// `file`, `http`, `https` and `ssh`; no forge, no webhook secrets, no notifications. Suites change the
/// fields they test.
pub fn settings(api_token: &str) -> Settings {
    Settings {
        api_token: api_token.into(),
        mcp_readonly_token: None,
        gitea_secret: None,
        github_secret: None,
        gitea: None,
        mirrors: HashMap::new(),
        public_url: PUBLIC_URL.into(),
        body_limit: 1 << 20,
        lease: Duration::from_secs(30),
        mcp_allowed_hosts: Vec::new(),
        mcp_allowed_origins: Vec::new(),
        notify_secret: None,
        notify_allowed_hosts: Vec::new(),
        intake: Intake {
            allowed_schemes: raibid_dispatcher::csv_list("file,http,https,ssh"),
            ..Intake::default()
        },
    }
}

/// The dispatcher served in this process on a free loopback port; stopped when dropped (or
/// [`Dispatcher::stop`]).
pub struct Dispatcher {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Serve `settings` over `queue`.
    pub async fn start(queue: Queue, settings: Settings) -> anyhow::Result<Dispatcher> {
        Self::start_with(AppState::new(queue, settings)).await
    }

    /// Serve a prepared state.
    pub async fn start_with(state: AppState) -> anyhow::Result<Dispatcher> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = serve(state, listener, async {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Dispatcher {
            base,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stop serving and wait until the server has ended.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The agent binary `bin` as the suites run it: `--name <name>`, blocking reads of 300 ms, Redis at `redis_url`,
/// `file://` clones, its workspaces in `<dir>/ws`, its cache in `<dir>/cache`, `RAIBID_LOG=info`,
/// stdout discarded, stderr in `<dir>/<name>.log`. The suite adds (or overrides) what it tests.
pub fn agent_command(
    bin: &std::path::Path,
    name: &str,
    redis_url: &str,
    dir: &std::path::Path,
) -> std::process::Command {
    use raibid_core::contract::env;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--name", name])
        .env(env::BLOCK_MS, "300")
        .env(env::REDIS_URL, redis_url)
        .env(env::ALLOWED_SCHEMES, "file")
        .env(env::WORKSPACE_DIR, dir.join("ws"))
        .env(env::CACHE_DIR, dir.join("cache"))
        .env(env::LOG, "info")
        .stdout(std::process::Stdio::null());
    match std::fs::File::create(dir.join(format!("{name}.log"))) {
        Ok(log) => cmd.stderr(log),
        Err(_) => cmd.stderr(std::process::Stdio::null()),
    };
    cmd
}

/// A private `redis-server` without persistence, optionally with a password (`--requirepass`: the
/// agent's hardening suites check a password never leaks), killed on drop. [`RedisServer`] is the one with
/// AOF on, as raibid runs Redis, that can be killed and restarted.
pub struct EphemeralRedis {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its password, if any.
    pub password: Option<String>,
}

impl EphemeralRedis {
    /// Start one on a free port (retried on a port race).
    pub fn start(password: Option<&str>) -> anyhow::Result<EphemeralRedis> {
        use std::process::{Command, Stdio};
        use std::time::Instant;
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(p) = password {
                cmd.args(["--requirepass", p]);
            }
            let mut child = cmd.spawn().map_err(|e| {
                anyhow::anyhow!("cannot run redis-server ({e}): apt-get install redis-server, or ./scripts/dev.sh test")
            })?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(EphemeralRedis {
                        child,
                        port,
                        password: password.map(str::to_string),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        anyhow::bail!("redis-server did not start")
    }

    /// `redis://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for EphemeralRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A workspace binary (`raibid-agent`, `raibid-dispatcher`, `raibid-top`) next to the running test or
/// example (`target/<profile>/deps/…` or `target/<profile>/examples/…`): build it first (`cargo build`;
/// integration tests of its own crate get it built by cargo, `CARGO_BIN_EXE_<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .map(|d| {
            if d.ends_with("deps") || d.ends_with("examples") {
                d.parent().unwrap_or(d).to_path_buf()
            } else {
                d.to_path_buf()
            }
        })
        .unwrap_or_default();
    dir.join(name)
}

/// A child process (an agent) killed and reaped when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
