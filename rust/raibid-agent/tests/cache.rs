//! Caches against real parts: real `raibid-agent` processes, a real Redis, the real dispatcher (API) in
//! process, real git repositories (one with 10,000 commits from `git fast-import`) and real cargo builds
//! (a crates.io dependency, two installed toolchains).
//!
//! What is asserted: a warm slot never turns a failing build green or runs stale code; a `Cargo.lock`
//! change rebuilds what changed; a toolchain change gets a new key; concurrent jobs of one repository
//! build in their own slots (the second seeded from the first); a slot whose job was SIGKILLed mid-build
//! is usable; the second job of a large repository fetches only the new commit; a mirror killed
//! mid-fetch or corrupted recovers; the clone ends at its timeout and on cancel; the git token goes
//! only to forge hosts and never follows a redirect, and is never taken from the command line.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed when the stack is dropped (also when a test fails).
#![allow(clippy::zombie_processes)]

use raibid_core::testkit::RedisServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cache-suite-token";

struct Stack {
    redis: RedisServer,
    base: String,
    http: reqwest::Client,
    tmp: tempfile::TempDir,
    _dispatcher: raibid_testkit::Dispatcher,
    spawned: std::sync::Mutex<Vec<u32>>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Ok(pids) = self.spawned.lock() {
            for pid in pids.iter() {
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

async fn stack() -> Stack {
    let redis = RedisServer::start().expect("redis-server");
    let queue = raibid_core::queue::Queue::connect(
        &redis.url(),
        raibid_core::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    // Jobs here clone file:// repositories (and http:// from local test servers): the testkit's default.
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
    fn cache(&self) -> PathBuf {
        self.tmp.path().join("cache")
    }

    fn agent_with(&self, name: &str, extra: &[(&str, &str)], args: &[&str]) -> Child {
        let mut cmd = raibid_testkit::agent_command(
            env!("CARGO_BIN_EXE_raibid-agent").as_ref(),
            name,
            &self.redis.url(),
            self.tmp.path(),
        );
        cmd.args(["--block-ms", "200"])
            .args(args)
            // Steps run sandboxed (ADR 0011): the marks tests read are in a directory shared with them.
            .env("RAIBID_SANDBOX_SHARED_DIRS", self.shared())
            .env_remove("RAIBID_GIT_TOKEN");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        self.spawned.lock().unwrap().push(child.id());
        child
    }

    fn agent(&self, name: &str) -> Child {
        self.agent_with(name, &[], &[])
    }

    /// A directory every step may write (the test's marks), created on first use.
    fn shared(&self) -> std::path::PathBuf {
        let d = self.tmp.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn submit(&self, repo_url: &str, git_ref: &str, sha: Option<&str>) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"repo_url": repo_url, "ref": git_ref, "sha": sha}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
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

    async fn log(&self, id: &str) -> String {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/jobs/{id}/logs", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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

    async fn wait(&self, id: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not get there within {within:?}: {j}\n--- log ---\n{}",
                self.log(id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run(&self, url: &str, sha: &str) -> Value {
        let id = self.submit(url, "main", Some(sha)).await;
        self.wait(&id, Duration::from_secs(600), is_final).await
    }

    async fn cancel(&self, id: &str) {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs/{id}/cancel", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "cancel: {}", r.status());
    }
}

fn is_final(j: &Value) -> bool {
    ["succeeded", "failed", "cancelled", "timed_out"].contains(&j["status"].as_str().unwrap_or(""))
}

/// A git repository the test commits to.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        std::fs::create_dir_all(dir).unwrap();
        let r = Repo {
            dir: dir.to_path_buf(),
        };
        r.git(&["init", "-q"]);
        r
    }

    fn git(&self, args: &[&str]) -> String {
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
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-qm", msg]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

const JSON_PIPELINE: &str = "steps:\n  - name: build\n    run: cargo build --locked --message-format=json-render-diagnostics\n  - name: test\n    run: cargo test --locked --message-format=json-render-diagnostics\n";

/// A crate with one crates.io dependency (`itoa`, pinned in Cargo.lock) and one test.
fn rust_repo(dir: &Path, cargo_home: &Path, pipeline: &str) -> Repo {
    let r = Repo::new(dir);
    r.write(
        "Cargo.toml",
        "[package]\nname = \"cachetest\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"1\"\nryu = \"1\"\n",
    );
    r.write("src/lib.rs", &lib_rs("42", "42"));
    r.write(".gitignore", "/target\n");
    r.write(".raibid.yaml", pipeline);
    cargo(&r.dir, cargo_home, &["generate-lockfile"]);
    cargo(
        &r.dir,
        cargo_home,
        &["update", "-q", "-p", "itoa", "--precise", "1.0.10"],
    );
    r
}

fn lib_rs(value: &str, expected: &str) -> String {
    format!(
        "pub fn answer() -> u32 {{ {value} }}\npub fn text() -> String {{ itoa::Buffer::new().format(answer()).to_string() }}\n#[test]\nfn answers() {{ assert_eq!(text(), \"{expected}\"); }}\n"
    )
}

fn cargo(dir: &Path, cargo_home: &Path, args: &[&str]) {
    let out = Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .env("CARGO_HOME", cargo_home)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn units(j: &Value) -> (u64, u64) {
    (
        j["cache"]["units_fresh"].as_u64().unwrap_or(0),
        j["cache"]["units_total"].as_u64().unwrap_or(0),
    )
}

fn kill_pid(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Processes whose working directory is `dir` (git processes working on a mirror).
fn pids_with_cwd(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    let want = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) {
            if cwd == want {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_slot_is_correct_a_lockfile_change_rebuilds_and_a_toolchain_change_gets_a_new_key() {
    let s = stack().await;
    let repo = rust_repo(
        &s.tmp.path().join("repo"),
        &s.cache().join("cargo"),
        JSON_PIPELINE,
    );
    let sha1 = repo.commit("initial");
    let _a = s.agent("agent-a");

    // Cold.
    let j1 = s.run(&repo.url(), &sha1).await;
    assert_eq!(j1["status"], "succeeded", "{j1}");
    assert_eq!(j1["cache"]["restore"], "cold", "{j1}");
    let (f1, t1) = units(&j1);
    assert!(
        t1 >= 3 && f1 < t1,
        "cold build reports its units: {f1}/{t1}"
    );
    let key1 = j1["cache"]["key"].as_str().unwrap().to_string();
    let slot1 = j1["cache"]["slot"].as_str().unwrap().to_string();
    assert!(j1["cache"]["slot_bytes"].as_u64().unwrap() > 0);

    // Warm, same commit: the mirror has it, every unit is fresh.
    let j2 = s.run(&repo.url(), &sha1).await;
    assert_eq!(j2["status"], "succeeded", "{j2}");
    assert_eq!(j2["cache"]["restore"], "warm");
    assert_eq!(j2["cache"]["mirror_hit"], true);
    assert_eq!(j2["cache"]["slot"], slot1.as_str());
    let (f2, t2) = units(&j2);
    assert_eq!(f2, t2, "nothing changed, nothing rebuilt: {j2}");
    // One count (the log flusher's one parse of cargo's messages): the record's `cargo` says the same.
    assert_eq!(j2["cargo"]["fresh"].as_u64(), Some(f2), "{j2}");
    assert_eq!(j2["cargo"]["total"].as_u64(), Some(t2), "{j2}");
    assert_eq!(j1["cargo"]["total"].as_u64(), Some(t1), "{j1}");

    // Cargo.lock moves itoa to 1.0.11: itoa and what depends on it rebuild, nothing else.
    cargo(
        &repo.dir,
        &s.cache().join("cargo"),
        &["update", "-q", "-p", "itoa", "--precise", "1.0.11"],
    );
    let sha3 = repo.commit("itoa 1.0.11");
    let id3 = s.submit(&repo.url(), "main", Some(&sha3)).await;
    let j3 = s.wait(&id3, Duration::from_secs(600), is_final).await;
    assert_eq!(j3["status"], "succeeded", "{j3}");
    let log3 = s.log(&id3).await;
    assert!(log3.contains("Compiling itoa v1.0.11"), "{log3}");
    assert!(!log3.contains("itoa v1.0.10"), "{log3}");
    let (f3, t3) = units(&j3);
    assert!(
        f3 >= 1 && t3 - f3 <= 3,
        "rebuilt itoa and the crate, not ryu: {f3}/{t3}"
    );

    // A change that breaks compilation fails on the warm slot.
    repo.write(
        "src/lib.rs",
        "pub fn answer() -> u32 { \"not a number\" }\n",
    );
    let sha4 = repo.commit("broken");
    let j4 = s.run(&repo.url(), &sha4).await;
    assert_eq!(j4["status"], "failed", "{j4}");
    assert_eq!(j4["step"], "build", "{j4}");
    assert_eq!(j4["cache"]["restore"], "warm");

    // Compiles, but its test now fails: the new code runs, not the cached one.
    repo.write("src/lib.rs", &lib_rs("7", "42"));
    let sha5 = repo.commit("wrong answer");
    let j5 = s.run(&repo.url(), &sha5).await;
    assert_eq!(j5["status"], "failed", "{j5}");
    assert_eq!(j5["step"], "test", "{j5}");

    repo.write("src/lib.rs", &lib_rs("7", "7"));
    let sha6 = repo.commit("fixed");
    let j6 = s.run(&repo.url(), &sha6).await;
    assert_eq!(j6["status"], "succeeded", "{j6}");
    assert_eq!(j6["cache"]["key"], key1.as_str());

    // Another toolchain (the installed nightly, chosen the way a project chooses it): a new key, a
    // target directory of its own, nothing fresh from the stable one.
    repo.write(
        ".raibid.yaml",
        &format!("env:\n  RUSTUP_TOOLCHAIN: nightly\n{JSON_PIPELINE}"),
    );
    let sha7 = repo.commit("nightly");
    let j7 = s.run(&repo.url(), &sha7).await;
    assert_eq!(j7["status"], "succeeded", "{j7}");
    assert_ne!(j7["cache"]["key"], key1.as_str(), "{j7}");
    assert_eq!(j7["cache"]["restore"], "cold", "{j7}");
    assert_eq!(units(&j7).0, 0, "{j7}");
    // The stable key is still warm afterwards.
    repo.write(".raibid.yaml", JSON_PIPELINE);
    let sha8 = repo.commit("stable again");
    let j8 = s.run(&repo.url(), &sha8).await;
    assert_eq!(j8["cache"]["key"], key1.as_str(), "{j8}");
    let (f8, t8) = units(&j8);
    assert_eq!(f8, t8, "{j8}");
    // The node-wide counters on `/metrics` hold these jobs' units and the mirror hit.
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    let fresh = sample("raibid_cache_units_total{fresh=\"true\"}");
    let rebuilt = sample("raibid_cache_units_total{fresh=\"false\"}");
    assert!(fresh >= f2 + f8, "fresh units {fresh} < {f2} + {f8}");
    assert!(rebuilt >= t1 - f1, "rebuilt units {rebuilt} < {}", t1 - f1);
    assert!(sample("raibid_cache_mirror_hits_total") >= 1);
}

/// Each job's step checks that its checkout is exactly the commit (nothing untracked, ignored or
/// modified; what `git status --ignored` and a listing against `git ls-files` would show), then leaves
/// every kind of leftover behind for the next job of the slot.
const DIRTYING_PIPELINE: &str = r#"steps:
  - name: check
    run: |
      set -e
      test -z "$(git status --porcelain --ignored)"
      test "$(find . -path ./.git -prune -o \( -type f -o -type l \) -print | sed 's|^\./||' | sort)" = "$(git ls-files | sort)"
      test "$(cat tracked.txt)" = "$(git show HEAD:tracked.txt)"
      echo leftover > untracked.txt
      mkdir -p ignored/deep empty-dir nested
      echo x > ignored/deep/f
      git -C nested init -q
      ln -s /etc/hostname link-out
      echo modified >> tracked.txt
      rm -f gone.txt
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_checkout_is_exactly_the_commit_after_one_git_process() {
    let s = stack().await;
    let repo = Repo::new(&s.tmp.path().join("repo"));
    repo.write(".raibid.yaml", DIRTYING_PIPELINE);
    repo.write(".gitignore", "/ignored/\n");
    repo.write("tracked.txt", "one\n");
    repo.write("gone.txt", "tracked, deleted by the step\n");
    let sha1 = repo.commit("one");
    let _a = s.agent("agent-a");
    let j1 = s.run(&repo.url(), &sha1).await;
    assert_eq!(j1["status"], "succeeded", "{j1}");
    let slot = j1["cache"]["slot"].as_str().unwrap().to_string();
    // The same commit again (the mirror has it): the slot is the one the step dirtied.
    let id2 = s.submit(&repo.url(), "main", Some(&sha1)).await;
    let j2 = s.wait(&id2, Duration::from_secs(120), is_final).await;
    let log2 = s.log(&id2).await;
    assert_eq!(j2["status"], "succeeded", "{j2}\n{log2}");
    assert_eq!(j2["cache"]["slot"], slot.as_str());
    assert_eq!(j2["cache"]["mirror_hit"], true);
    let gits: Vec<&str> = log2
        .lines()
        .filter(|l| l.starts_with("[clone] $ git"))
        .collect();
    assert_eq!(
        gits,
        [format!("[clone] $ git checkout -q -f --detach {sha1} --").as_str()],
        "one git process on the warm path: {log2}"
    );
    // A new commit that changes the tracked file: its content, not the step's.
    repo.write("tracked.txt", "two\n");
    let sha3 = repo.commit("two");
    let j3 = s.run(&repo.url(), &sha3).await;
    assert_eq!(j3["status"], "succeeded", "{j3}");
    assert_eq!(j3["cache"]["slot"], slot.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_jobs_of_one_repository_build_in_their_own_slots() {
    let s = stack().await;
    let barrier = s.shared().join("barrier");
    std::fs::create_dir_all(&barrier).unwrap();
    // Each job waits until both are in their build step, so they overlap for sure.
    let pipeline = format!(
        "steps:\n  - name: build\n    run: touch {b}/$RAIBID_JOB_ID; while [ $(ls {b} | wc -l) -lt 2 ]; do sleep 0.05; done; cargo build --locked --message-format=json-render-diagnostics\n",
        b = barrier.display()
    );
    let repo = rust_repo(
        &s.tmp.path().join("repo"),
        &s.cache().join("cargo"),
        &pipeline,
    );
    let sha = repo.commit("initial");
    let _a = s.agent_with("agent-c", &[], &["--concurrency", "2"]);
    // Warm one slot first (the barrier lets a lone job through: one marker from before).
    std::fs::write(barrier.join("warmup"), "").unwrap();
    let j0 = s.run(&repo.url(), &sha).await;
    assert_eq!(j0["status"], "succeeded", "{j0}");
    std::fs::remove_file(barrier.join("warmup")).unwrap();
    for e in std::fs::read_dir(&barrier).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
    }
    let a = s.submit(&repo.url(), "main", Some(&sha)).await;
    let b = s.submit(&repo.url(), "main", Some(&sha)).await;
    let ja = s.wait(&a, Duration::from_secs(600), is_final).await;
    let jb = s.wait(&b, Duration::from_secs(600), is_final).await;
    assert_eq!(ja["status"], "succeeded", "{ja}");
    assert_eq!(jb["status"], "succeeded", "{jb}");
    assert_ne!(ja["cache"]["slot"], jb["cache"]["slot"]);
    let mut restores = [
        ja["cache"]["restore"].as_str().unwrap().to_string(),
        jb["cache"]["restore"].as_str().unwrap().to_string(),
    ];
    restores.sort();
    assert_eq!(restores[1], "warm", "{ja}\n{jb}");
    assert!(
        restores[0].starts_with("seeded:"),
        "the second slot starts from the first: {ja}\n{jb}"
    );
    // Seeded: the dependency is fresh; the crate rebuilds (its path is part of its fingerprint).
    let seeded = if ja["cache"]["restore"] == "warm" {
        &jb
    } else {
        &ja
    };
    let (f, t) = units(seeded);
    assert!(f >= 1 && f < t, "{seeded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_whose_job_was_killed_mid_build_is_usable_afterwards() {
    let s = stack().await;
    let marks = s.shared().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let pipeline = format!(
        "steps:\n  - name: build\n    run: echo $$ > {}/pgid; cargo build --locked --message-format=json-render-diagnostics\n  - name: test\n    run: cargo test --locked --message-format=json-render-diagnostics\n",
        marks.display()
    );
    let repo = rust_repo(
        &s.tmp.path().join("repo"),
        &s.cache().join("cargo"),
        &pipeline,
    );
    // A build script that announces itself and then takes its time: the kill lands mid-build.
    repo.write(
        "build.rs",
        &format!(
            "fn main() {{ std::fs::write(\"{}/building\", \"\").unwrap(); std::thread::sleep(std::time::Duration::from_secs(120)); }}\n",
            marks.display()
        ),
    );
    let sha1 = repo.commit("slow build script");
    let mut a = s.agent("agent-k");
    let id1 = s.submit(&repo.url(), "main", Some(&sha1)).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !marks.join("building").exists() {
        assert!(
            Instant::now() < deadline,
            "the build never reached its build script"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pod death: the agent and everything of the step die at once.
    kill_pid(a.id() as i32);
    let _ = a.wait();
    let pgid: i32 = std::fs::read_to_string(marks.join("pgid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let j1 = s.job(&id1).await;
    assert_eq!(j1["status"], "running");
    let slot = j1["cache"]["slot"].as_str().unwrap().to_string();
    // Its agent is gone: cancel it so the reaper does not hand the slow job to the next agent.
    s.cancel(&id1).await;

    repo.write("build.rs", "fn main() {}\n");
    let sha2 = repo.commit("quick build script");
    let _b = s.agent("agent-l");
    let j2 = s.run(&repo.url(), &sha2).await;
    assert_eq!(
        j2["status"],
        "succeeded",
        "{j2}\n{}",
        s.log(j2["id"].as_str().unwrap()).await
    );
    assert_eq!(j2["cache"]["slot"], slot.as_str(), "{j2}");
    assert_eq!(j2["cache"]["recovered"], true, "{j2}");
    // And it stays correct: the next job there is all fresh.
    let j3 = s.run(&repo.url(), &sha2).await;
    assert_eq!(j3["status"], "succeeded");
    let (f, t) = units(&j3);
    assert_eq!(f, t, "{j3}");
    assert_eq!(j3["cache"]["recovered"], false);
}

/// A repository with `n` commits made by `git fast-import`, each changing `history.txt` (plus a
/// 4 KiB file of pseudo-random bytes, so the pack has some weight).
fn big_repo(dir: &Path, n: usize) -> Repo {
    let r = Repo::new(dir);
    let mut stream = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 1..=n {
        let mut blob = Vec::with_capacity(4096);
        for _ in 0..512 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blob.extend_from_slice(&x.to_le_bytes());
        }
        let msg = format!("commit {i}\n");
        let hist = format!("{i}\n");
        stream.extend_from_slice(b"commit refs/heads/main\n");
        stream.extend_from_slice(
            format!("committer t <t@t.invalid> {} +0000\n", 1_700_000_000 + i).as_bytes(),
        );
        stream.extend_from_slice(format!("data {}\n{msg}", msg.len()).as_bytes());
        stream.extend_from_slice(
            format!("M 100644 inline history.txt\ndata {}\n{hist}\n", hist.len()).as_bytes(),
        );
        stream.extend_from_slice(
            format!("M 100644 inline noise.bin\ndata {}\n", blob.len()).as_bytes(),
        );
        stream.extend_from_slice(&blob);
        stream.extend_from_slice(b"\n\n");
    }
    // fast-import continues refs/heads/main from its previous commit each time.
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    r.git(&["checkout", "-q", "-f", "main"]);
    r.write(
        ".raibid.yaml",
        "steps:\n  - name: check\n    run: test -f history.txt\n",
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_history_fetches_only_the_new_commit_and_a_broken_mirror_recovers() {
    let s = stack().await;
    let repo = big_repo(&s.tmp.path().join("big"), 10_000);
    let sha1 = repo.commit("pipeline");
    let _a = s.agent("agent-g");
    let j1 = s.run(&repo.url(), &sha1).await;
    assert_eq!(j1["status"], "succeeded", "{j1}");
    let objects1 = j1["cache"]["fetched_objects"].as_u64().unwrap();
    let bytes1 = j1["cache"]["fetched_bytes"].as_u64().unwrap();
    assert!(objects1 >= 30_000, "first job fetches the history: {j1}");

    repo.write("history.txt", "one more\n");
    let sha2 = repo.commit("one more");
    let j2 = s.run(&repo.url(), &sha2).await;
    assert_eq!(j2["status"], "succeeded", "{j2}");
    let objects2 = j2["cache"]["fetched_objects"].as_u64().unwrap();
    let bytes2 = j2["cache"]["fetched_bytes"].as_u64().unwrap();
    println!("first job: {objects1} objects, {bytes1} bytes; second job: {objects2} objects, {bytes2} bytes");
    assert_eq!(objects2, 3, "a commit, a tree, a blob: {j2}");
    assert!(bytes2 < 2_000, "{j2}");

    // Corrupt the mirror (every pack cut down to its header: no object readable): detected, rebuilt,
    // the job still succeeds.
    let mirror = the_mirror(&s.cache());
    for e in std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "pack") {
            let len = e.metadata().unwrap().len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap();
            f.set_len(len / 2).unwrap();
        }
    }
    repo.write("history.txt", "after corruption\n");
    let sha3 = repo.commit("after corruption");
    let id3 = s.submit(&repo.url(), "main", Some(&sha3)).await;
    let j3 = s.wait(&id3, Duration::from_secs(300), is_final).await;
    assert_eq!(j3["status"], "succeeded", "{j3}\n{}", s.log(&id3).await);
    let log3 = s.log(&id3).await;
    assert!(log3.contains("rebuilding the mirror"), "{j3}\n{log3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mirror_killed_mid_fetch_recovers() {
    let s = stack().await;
    let repo = big_repo(&s.tmp.path().join("big"), 10_000);
    let sha = repo.commit("pipeline");
    let mut a = s.agent("agent-m");
    let id1 = s.submit(&repo.url(), "main", Some(&sha)).await;
    // Wait until the fetch is writing its pack, then kill the agent and its git processes.
    let git_dir = s.cache().join("git");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mirror = loop {
        let m = std::fs::read_dir(&git_dir).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "git"))
        });
        if let Some(m) = m {
            let writing = std::fs::read_dir(m.join("objects/pack"))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("tmp_pack"))
                })
                .unwrap_or(false);
            if writing {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the fetch never started writing a pack"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    kill_pid(a.id() as i32);
    let _ = a.wait();
    // The agent feeds index-pack itself (file:// sources): its git processes end with it, on a broken
    // pipe. Whatever is still running in the mirror (a `git fetch` of another transport) is killed.
    let quiet = Instant::now() + Duration::from_secs(10);
    loop {
        let left = pids_with_cwd(&mirror);
        if left.is_empty() {
            break;
        }
        if Instant::now() > quiet {
            for pid in left {
                kill_pid(pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let partial = std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_"))
        .count();
    println!("partial packs left by the kill: {partial}");
    let j1 = s.job(&id1).await;
    assert_eq!(j1["status"], "running", "{j1}");
    // A new agent, the same commit: the mirror's leftovers are cleaned (or it is rebuilt).
    let _b = s.agent("agent-n");
    let j = s.run(&repo.url(), &sha).await;
    assert_eq!(
        j["status"],
        "succeeded",
        "{j}\n{}",
        s.log(j["id"].as_str().unwrap()).await
    );
    let leftovers = std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_"))
        .count();
    assert_eq!(leftovers, 0);
}

/// A TCP server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = l.accept().await {
            held.push(c);
        }
    });
    (format!("http://127.0.0.1:{port}/o/r.git"), h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_from_a_server_that_never_answers_times_out_naming_the_clone_step() {
    let s = stack().await;
    let (url, _srv) = silent_server().await;
    let _a = s.agent_with(
        "agent-t",
        &[
            ("RAIBID_ALLOWED_SCHEMES", "http"),
            ("RAIBID_ALLOWED_HOSTS", "127.0.0.1"),
            ("RAIBID_CLONE_TIMEOUT_SECS", "3"),
        ],
        &[],
    );
    let id = s.submit(&url, "main", None).await;
    let j = s.wait(&id, Duration::from_secs(30), is_final).await;
    assert_eq!(j["status"], "timed_out", "{j}");
    assert_eq!(j["step"], "clone", "{j}");
    assert!(
        j["failure_reason"]
            .as_str()
            .unwrap()
            .contains("clone timed out"),
        "{j}"
    );
    assert_eq!(j["steps"][0]["status"], "timed_out", "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_clone_ends_the_job() {
    let s = stack().await;
    let (url, _srv) = silent_server().await;
    let _a = s.agent_with(
        "agent-x",
        &[
            ("RAIBID_ALLOWED_SCHEMES", "http"),
            ("RAIBID_ALLOWED_HOSTS", "127.0.0.1"),
        ],
        &[],
    );
    let id = s.submit(&url, "main", None).await;
    s.wait(&id, Duration::from_secs(30), |j| {
        j["status"] == "running" && j["step"] == "clone"
    })
    .await;
    let asked = Instant::now();
    s.cancel(&id).await;
    let j = s.wait(&id, Duration::from_secs(20), is_final).await;
    assert_eq!(j["status"], "cancelled", "{j}");
    assert!(
        j["failure_reason"].as_str().unwrap().contains("clone"),
        "{j}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}

/// A forge that redirects every request to another host, and that other host, recording requests.
async fn redirecting_forge() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let forge = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forge_port = forge.local_addr().unwrap().port();
    let seen_forge = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_other = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    for (l, seen, redirect) in [
        (forge, seen_forge.clone(), true),
        (other, seen_other.clone(), false),
    ] {
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                    seen.lock().unwrap().push(req);
                    let resp = if redirect {
                        format!("HTTP/1.1 302 Found\r\nLocation: http://localhost:{other_port}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = c.write_all(resp.as_bytes()).await;
                });
            }
        });
    }
    (
        format!("http://127.0.0.1:{forge_port}/o/r.git"),
        seen_forge,
        seen_other,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_git_token_goes_to_the_forge_host_only_and_never_follows_a_redirect() {
    let s = stack().await;
    let (url, seen_forge, seen_other) = redirecting_forge().await;
    let _a = s.agent_with(
        "agent-r",
        &[
            ("RAIBID_ALLOWED_SCHEMES", "http"),
            ("RAIBID_ALLOWED_HOSTS", "127.0.0.1,localhost"),
            ("RAIBID_GIT_TOKEN", "s3cret-git-token"),
        ],
        &[],
    );
    let id = s.submit(&url, "main", None).await;
    let j = s.wait(&id, Duration::from_secs(60), is_final).await;
    assert_eq!(j["status"], "failed", "{j}");
    let forge = seen_forge.lock().unwrap().clone();
    let other = seen_other.lock().unwrap().clone();
    assert!(!forge.is_empty(), "git asked the forge");
    assert!(
        forge
            .iter()
            .any(|r| r.to_ascii_lowercase().contains("authorization: basic")),
        "the forge host gets the token: {forge:?}"
    );
    assert!(other.is_empty(), "the redirect was followed: {other:?}");
    let log = s.log(&id).await;
    assert!(!log.contains("s3cret-git-token"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_needs_forge_hosts_and_never_comes_from_the_command_line() {
    let s = stack().await;
    // A token and no host to scope it to: the agent refuses to start.
    let mut a = s.agent_with("agent-h", &[("RAIBID_GIT_TOKEN", "tok")], &[]);
    let st = a.wait().unwrap();
    assert!(!st.success());
    let log = std::fs::read_to_string(s.tmp.path().join("agent-h.log")).unwrap();
    assert!(log.contains("RAIBID_ALLOWED_HOSTS"), "{log}");
    // `--git-token` does not exist.
    let out = Command::new(env!("CARGO_BIN_EXE_raibid-agent"))
        .args(["--git-token", "tok", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--git-token'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The (only) git mirror in the cache.
fn the_mirror(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache.join("git"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "git"))
        .expect("a mirror in the cache")
}

/// The mirror's ref `name` (loose ref file or `packed-refs`).
fn mirror_ref(cache: &Path, name: &str) -> String {
    let mirror = the_mirror(cache);
    let out = Command::new("git")
        .args(["rev-parse", "--verify", name])
        .current_dir(&mirror)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `file://` sources are fetched by the agent's own protocol-v2 client (upload-pack → index-pack, no
/// `git fetch`): the commit asked for even when the branch has moved on, a force-pushed branch, a job
/// without a sha (the branch tip), a branch name the client leaves to `git fetch`, and a missing branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_source_is_fetched_over_protocol_v2_without_git_fetch() {
    let s = stack().await;
    let repo = Repo::new(&s.tmp.path().join("repo"));
    repo.write(
        ".raibid.yaml",
        "steps:\n  - name: show\n    run: \"cat which.txt\"\n",
    );
    repo.write("which.txt", "first\n");
    let sha1 = repo.commit("first");
    let _a = s.agent("agent-p");
    let id1 = s.submit(&repo.url(), "main", Some(&sha1)).await;
    let j1 = s.wait(&id1, Duration::from_secs(120), is_final).await;
    let log1 = s.log(&id1).await;
    assert_eq!(j1["status"], "succeeded", "{j1}\n{log1}");
    assert!(log1.contains("$ git upload-pack "), "{log1}");
    assert!(!log1.contains(" fetch -q "), "no git fetch: {log1}");
    assert!(log1.contains("[show] first"), "{log1}");

    // The branch moves on twice; the job asks for the middle commit: that commit runs, and the
    // mirror's branch is the source's tip.
    repo.write("which.txt", "second\n");
    let sha2 = repo.commit("second");
    repo.write("which.txt", "third\n");
    let sha3 = repo.commit("third");
    let id2 = s.submit(&repo.url(), "main", Some(&sha2)).await;
    let j2 = s.wait(&id2, Duration::from_secs(120), is_final).await;
    let log2 = s.log(&id2).await;
    assert_eq!(j2["status"], "succeeded", "{j2}\n{log2}");
    assert!(log2.contains("[show] second"), "{log2}");
    assert!(log2.contains(&format!("at commit {sha2}")), "{log2}");
    assert_eq!(mirror_ref(&s.cache(), "refs/heads/main"), sha3);
    assert!(
        j2["cache"]["fetched_objects"].as_u64().unwrap() >= 3,
        "{j2}"
    );

    // A force push to a commit with no common history, and a job with no sha: the new tip runs.
    repo.git(&["checkout", "-q", "--orphan", "rewritten"]);
    repo.write("which.txt", "rewritten\n");
    let sha4 = repo.commit("rewritten");
    repo.git(&["branch", "-q", "-f", "main", &sha4]);
    let id3 = s.submit(&repo.url(), "main", None).await;
    let j3 = s.wait(&id3, Duration::from_secs(120), is_final).await;
    let log3 = s.log(&id3).await;
    assert_eq!(j3["status"], "succeeded", "{j3}\n{log3}");
    assert!(log3.contains("[show] rewritten"), "{log3}");
    assert_eq!(j3["source"]["sha"], sha4.as_str(), "{j3}");

    // A branch name outside the client's character set: `git fetch` does it.
    repo.git(&["branch", "-q", "f\u{fc}r-alle", &sha4]);
    let id4 = s.submit(&repo.url(), "f\u{fc}r-alle", None).await;
    let j4 = s.wait(&id4, Duration::from_secs(120), is_final).await;
    let log4 = s.log(&id4).await;
    assert_eq!(j4["status"], "succeeded", "{j4}\n{log4}");
    assert!(
        log4.contains("is left to git fetch; fetching with git fetch"),
        "{log4}"
    );
    assert!(log4.contains(" fetch -q "), "{log4}");

    // A branch the source does not have: the job fails in `clone`, naming it.
    let id5 = s.submit(&repo.url(), "no-such-branch", None).await;
    let j5 = s.wait(&id5, Duration::from_secs(120), is_final).await;
    assert_eq!(j5["status"], "failed", "{j5}");
    let reason = j5["failure_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("clone:"), "{j5}");
    assert!(reason.contains("no-such-branch"), "{j5}");
    assert!(s
        .log(&id5)
        .await
        .contains("the source has no refs/heads/no-such-branch"));
}

/// (issue 19 §3) A wrong ref is not a broken mirror: the good mirror stays (its packs are the same
/// files), the remote is asked once (no "rebuilding the mirror from scratch", one `git fetch`), and the
/// failure reason carries git's own one-line reason; so does a repository that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_ref_or_repository_fails_with_gits_reason_and_keeps_the_mirror() {
    use std::os::unix::fs::MetadataExt;
    let s = stack().await;
    let repo = Repo::new(&s.tmp.path().join("repo"));
    repo.write(
        ".raibid.yaml",
        "steps:\n  - name: show\n    run: \"true\"\n",
    );
    let sha1 = repo.commit("first");
    let _a = s.agent("agent-r");
    let j1 = s.run(&repo.url(), &sha1).await;
    assert_eq!(j1["status"], "succeeded", "{j1}");
    let packs = |cache: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<_> = std::fs::read_dir(the_mirror(cache).join("objects/pack"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = packs(&s.cache());
    assert!(!before.is_empty());

    // The agent's own protocol-v2 client (a plain branch name) and `git fetch` (a name it leaves to
    // git): each says the ref is not there, once, and the mirror is untouched.
    for (branch, says) in [
        ("nope", "the source has no refs/heads/nope"),
        ("n\u{f6}pe", "couldn't find remote ref refs/heads/n\u{f6}pe"),
    ] {
        let id = s.submit(&repo.url(), branch, None).await;
        let j = s.wait(&id, Duration::from_secs(120), is_final).await;
        let log = s.log(&id).await;
        assert_eq!(j["status"], "failed", "{j}\n{log}");
        let reason = j["failure_reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("clone:"), "{reason}");
        assert!(
            reason.contains(says),
            "git's reason in the failure reason: {reason}\n{log}"
        );
        assert!(
            !log.contains("rebuilding"),
            "a missing ref is not a broken mirror:\n{log}"
        );
        assert!(
            log.matches(" fetch -q ").count() <= 1,
            "the remote is asked once:\n{log}"
        );
        assert_eq!(
            packs(&s.cache()),
            before,
            "the mirror's packs are the same files"
        );
    }
    // The good ref still works from the same mirror, without a fetch.
    let j = s.run(&repo.url(), &sha1).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["cache"]["mirror_hit"], true, "{j}");

    // A repository that does not exist: git's reason, not only `could not fetch refs/heads/main`.
    let missing = format!("file://{}/no-such-repo", s.tmp.path().display());
    let id = s.submit(&missing, "main", None).await;
    let j = s.wait(&id, Duration::from_secs(120), is_final).await;
    assert_eq!(j["status"], "failed", "{j}");
    let reason = j["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not appear to be a git repository"),
        "{reason}\n{}",
        s.log(&id).await
    );
    assert!(reason.len() < 1024, "bounded: {reason}");
}

/// Pack files of the (only) mirror in the cache.
fn mirror_packs(cache: &Path) -> usize {
    let mirror = the_mirror(cache);
    std::fs::read_dir(mirror.join("objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .count()
}

/// Every fetch adds a pack; after a job past 8 packs the small ones are rolled up (geometric repack),
/// so the count stays small, and no object goes: an old commit still checks out from the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_packs_are_rolled_up_after_jobs_and_keep_every_object() {
    let s = stack().await;
    let repo = Repo::new(&s.tmp.path().join("repo"));
    repo.write(
        ".raibid.yaml",
        "steps:\n  - name: show\n    run: \"cat which.txt\"\n",
    );
    repo.write("which.txt", "push 0\n");
    let first = repo.commit("push 0");
    let _a = s.agent("agent-q");
    let mut most = 0;
    for i in 0..=20 {
        let sha = if i == 0 {
            first.clone()
        } else {
            repo.write("which.txt", &format!("push {i}\n"));
            repo.commit(&format!("push {i}"))
        };
        let j = s.run(&repo.url(), &sha).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        most = most.max(mirror_packs(&s.cache()));
    }
    assert!(most <= 9, "packs are rolled up past 8: at most {most}");
    assert!(mirror_packs(&s.cache()) <= 9);
    // The first commit's objects are still in the mirror: a job for it needs no fetch.
    let id = s.submit(&repo.url(), "main", Some(&first)).await;
    let j = s.wait(&id, Duration::from_secs(120), is_final).await;
    let log = s.log(&id).await;
    assert_eq!(j["status"], "succeeded", "{j}\n{log}");
    assert_eq!(j["cache"]["mirror_hit"], true, "{j}");
    assert!(log.contains("[show] push 0"), "{log}");
}
