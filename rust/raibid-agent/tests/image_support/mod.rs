//! Harness of the image-job tests and benchmark: a real Redis, the real dispatcher in process, real
//! agent processes (serving kind `image`), a real registry (Debian's `docker-registry`, own free port,
//! data in a temp dir), real git repositories with `FROM scratch` images around `/bin/busybox`
//! (Debian's `busybox-static`). Nothing is mocked; a missing tool fails with what to install.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::{free_port, RedisServer};
use raibid_dispatcher::{AppState, Settings};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "image-suite-token";

/// The Buildah storage driver of the tests: vfs (works everywhere); the benchmark can also be run with
/// `RAIBID_TEST_STORAGE_DRIVER=overlay` where the kernel allows it.
pub fn storage_driver() -> String {
    std::env::var("RAIBID_TEST_STORAGE_DRIVER").unwrap_or_else(|_| "vfs".into())
}

/// The tools these tests need, with the Debian package that has each.
pub fn require_tools() {
    for (cmd, pkg) in [
        ("buildah", "buildah"),
        ("skopeo", "skopeo"),
        ("docker-registry", "docker-registry"),
        ("redis-server", "redis-server"),
        ("git", "git"),
    ] {
        let ok = Command::new("sh")
            .args(["-c", "command -v \"$1\" >/dev/null", "sh", cmd])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`{cmd}` is needed by the image tests: apt-get install -y {pkg} (./scripts/dev.sh test installs it)");
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is needed by the image tests: apt-get install -y busybox-static"
    );
}

/// A private OCI registry (`docker-registry serve`), killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port().unwrap();
            let addr = format!("127.0.0.1:{port}");
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .args(["serve"])
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("docker-registry (apt-get install -y docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(15);
            let http = reqwest::Client::new();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                if let Ok(r) = http.get(format!("http://{addr}/v2/")).send().await {
                    if r.status().is_success() {
                        return Registry {
                            child,
                            addr,
                            _dir: dir,
                        };
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "the registry did not start: {}",
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("could not start docker-registry on a free port");
    }

    /// `skopeo inspect` of a reference in this registry (None when it does not exist).
    pub fn inspect(&self, name_tag: &str) -> Option<Value> {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/{name_tag}", self.addr))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The repositories in the registry (`/v2/_catalog`).
    pub async fn catalog(&self) -> Vec<String> {
        let v: Value = reqwest::get(format!("http://{}/v2/_catalog", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["repositories"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Stack {
    /// The in-process dispatcher's state (for calling its functions directly).
    pub state: AppState,
    pub redis: RedisServer,
    pub queue: Queue,
    pub base: String,
    pub http: reqwest::Client,
    pub tmp: tempfile::TempDir,
    _dispatcher: raibid_testkit::Dispatcher,
    agents: std::sync::Mutex<Vec<Child>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(mut v) = self.agents.lock() {
            for c in v.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub async fn stack() -> Stack {
    stack_with(|_| {}).await
}

/// A stack whose dispatcher settings `f` adjusts (e.g. the artifact registry access).
pub async fn stack_with(f: impl FnOnce(&mut Settings)) -> Stack {
    require_tools();
    let redis = RedisServer::start().expect("redis-server");
    let queue = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.body_limit = 8 << 20;
    // Jobs here clone file:// repositories; the benchmark submits one commit several times.
    settings.intake.allowed_schemes = raibid_dispatcher::csv_list("file");
    settings.intake.push_dedup = Duration::ZERO;
    f(&mut settings);
    let state = AppState::new(queue.clone(), settings);
    let dispatcher = raibid_testkit::Dispatcher::start_with(state.clone())
        .await
        .unwrap();
    let base = dispatcher.base.clone();
    Stack {
        state,
        redis,
        queue,
        base,
        http: reqwest::Client::new(),
        tmp: tempfile::tempdir().unwrap(),
        _dispatcher: dispatcher,
        agents: std::sync::Mutex::new(Vec::new()),
    }
}

impl Stack {
    /// The agent's cache dir (the Buildah storage lives below it).
    pub fn cache_dir(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    /// Start an agent serving image jobs, pushing to `registry` by default.
    pub fn agent(&self, name: &str, registry: &str, cache: &Path) {
        self.agent_of(name, "image", registry, cache)
    }

    /// Start an agent serving `kinds` (RAIBID_AGENT_KINDS).
    pub fn agent_of(&self, name: &str, kinds: &str, registry: &str, cache: &Path) {
        self.agent_env(name, kinds, registry, cache, &[])
    }

    /// Start an agent serving `kinds` with extra environment variables.
    pub fn agent_env(
        &self,
        name: &str,
        kinds: &str,
        registry: &str,
        cache: &Path,
        extra: &[(&str, &str)],
    ) {
        let child = raibid_testkit::agent_command(
            env!("CARGO_BIN_EXE_raibid-agent").as_ref(),
            name,
            &self.redis.url(),
            self.tmp.path(),
        )
        .env("RAIBID_AGENT_KINDS", kinds)
        .env("RAIBID_CACHE_DIR", cache)
        .env("RAIBID_REGISTRY", registry)
        .env("RAIBID_REGISTRY_INSECURE", "true")
        .env("RAIBID_BUILDAH_STORAGE_DRIVER", storage_driver())
        .env("RAIBID_SHUTDOWN_GRACE_SECS", "2")
        .envs(extra.iter().copied())
        .spawn()
        .unwrap();
        self.agents.lock().unwrap().push(child);
    }

    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// POST /api/v1/jobs; returns (status code, body).
    pub async fn submit(&self, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn submit_ok(&self, body: Value) -> String {
        let (code, v) = self.submit(body).await;
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
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

    pub async fn logs(&self, id: &str, phase: Option<&str>) -> Vec<Value> {
        let mut url = format!("{}/api/v1/jobs/{id}/logs", self.base);
        if let Some(p) = phase {
            url.push_str(&format!("?phase={p}"));
        }
        let v: Value = self
            .http
            .get(url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["lines"].as_array().cloned().unwrap_or_default()
    }

    pub async fn cancel(&self, id: &str) -> u16 {
        self.http
            .post(format!("{}/api/v1/jobs/{id}/cancel", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn wait(&self, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not get there within {within:?}: {j}\nagent log:\n{}",
                self.agent_log("img-agent")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_final(&self, id: &str, within: Duration) -> Value {
        self.wait(id, within, is_final).await
    }
}

pub fn is_final(j: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "timed_out"].contains(&j["status"].as_str().unwrap_or(""))
}

/// A git repository with `/bin/busybox` and `files`, committed on `main`; returns its file:// URL.
pub fn make_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox"))
        .expect("/bin/busybox (apt-get install -y busybox-static)");
    for (p, c) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    commit(dir);
    format!("file://{}", dir.display())
}

/// Commit everything in `dir` (after changing files).
pub fn commit(dir: &Path) {
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
    if !dir.join(".git").exists() {
        git(&["init", "-q"]);
    }
    git(&["add", "-A"]);
    git(&["commit", "-qm", "x", "--allow-empty"]);
}

/// `buildah containers` of the storage below `cache`.
pub fn buildah_containers(cache: &Path) -> Vec<Value> {
    let root = cache.join("buildah");
    let out = Command::new("buildah")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            &storage_driver(),
            "containers",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    if s.trim().is_empty() || s.trim() == "null" {
        return Vec::new();
    }
    serde_json::from_str(&s).unwrap()
}

/// Processes whose command line mentions `needle` (e.g. the Buildah storage path of a test).
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(") ")
                    .map(|(_, r)| r.starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        if cmd.contains(needle) && !zombie {
            out.push((pid, cmd));
        }
    }
    out
}

/// A standard image request body.
pub fn image_job(repo: &str, image: Value) -> Value {
    json!({"repo_url": repo, "ref": "main", "image": image})
}

/// The names of the images in the storage below `cache`.
pub fn buildah_image_names(cache: &Path) -> Vec<String> {
    let root = cache.join("buildah");
    let out = Command::new("buildah")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", &storage_driver(), "images", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(String::from))
        .collect()
}

impl Stack {
    /// `raibid-agent --image-gc` against this stack's Redis and the storage below `cache`; its stdout.
    pub fn image_gc(&self, cache: &Path, envs: &[(&str, &str)]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_raibid-agent"))
            .arg("--image-gc")
            .env("RAIBID_REDIS_URL", self.redis.url())
            .env("RAIBID_AGENT_KINDS", "image")
            .env("RAIBID_CACHE_DIR", cache)
            .env("RAIBID_WORKSPACE_DIR", self.tmp.path().join("ws-gc"))
            .env("RAIBID_BUILDAH_STORAGE_DRIVER", storage_driver())
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
