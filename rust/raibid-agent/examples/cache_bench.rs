//! Cache benchmarks (docs/benchmarks.md, "Caches"): real Redis, the real dispatcher (in process), one
//! real warm `raibid-agent` process (release build), real git and cargo.
//!
//! ```sh
//! cd rust && cargo build --release -p raibid-agent --bins --examples
//! nice ./target/release/examples/cache_bench latency --runs 30
//! nice ./target/release/examples/cache_bench builds --workload ripgrep --workload raibid
//! ```
//!
//! `latency`: push → first line of the pipeline's first step (job `received` → that line's `ts`), p50/p90
//! over `--runs` pushes, for a one-file repository and one with 10,000 commits (`git fast-import`).
//! With `CACHE_BENCH_TRACE=1`, the last job's log lines are printed (stderr) at their offsets.
//!
//! `steps`: the cost of starting a step (issue 17: every step starts in a bubblewrap sandbox): jobs of 20
//! steps `echo step`, each step's `duration_ms` (spawn, the line, exit, the readers' end), p50/p90 over
//! `--runs` jobs × 20 steps. Run it with `--agent` for a before/after pair.
//!
//! `builds`: for each workload — `ripgrep` (the newest published source from crates.io, fetched now
//! with `cargo fetch`) or
//! `raibid` (this workspace at HEAD) — (a) cold: empty slots; (b) warm, no change; (c) warm, a one-line
//! change in a leaf source file; (d) plain `cargo build` + `cargo test --no-run` in a persistent checkout
//! after the same change; and (e) the same as (d) with `CARGO_INCREMENTAL=0`. Per phase: wall time of
//! clone, config, build, test; units fresh/total; the ratios the goals are stated in. With
//! `--slot-incremental-off`, also (a0)/(c0): (a)/(c) through the agent with `CARGO_INCREMENTAL=0` (a key
//! of its own, so one more cold build). Everything lives in one temporary directory, and each
//! workload's checkouts, slots and mirrors are deleted before the next one starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::testkit::RedisServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "cache-bench-token";

static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

struct Bench {
    _redis: RedisServer,
    base: String,
    http: reqwest::Client,
    tmp: PathBuf,
    agent: Option<Child>,
    _dispatcher: raibid_testkit::Dispatcher,
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// The agent binary: `--agent PATH` (e.g. another commit's build, for a before/after run), else this
/// workspace's release build.
fn agent_bin() -> PathBuf {
    let p = match AGENT.get() {
        Some(p) => p.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/raibid-agent"),
    };
    assert!(
        p.exists(),
        "{} not found: build it first (cd rust && cargo build --release -p raibid-agent)",
        p.display()
    );
    p
}

async fn bench(tmp: &Path, cache: &Path) -> Bench {
    let redis = RedisServer::start().expect("redis-server");
    let queue = raibid_core::queue::Queue::connect(
        &redis.url(),
        raibid_core::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    // Jobs here clone file:// repositories (and http:// from local test servers).
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.public_url = "http://raibid.bench".into();
    let dispatcher = raibid_testkit::Dispatcher::start(queue, settings)
        .await
        .unwrap();
    let base = dispatcher.base.clone();
    let log = std::fs::File::create(tmp.join("agent.log")).unwrap();
    let agent = Command::new(agent_bin())
        .args(["--name", "bench-agent", "--block-ms", "2000"])
        .env("RAIBID_REDIS_URL", redis.url())
        .env("RAIBID_ALLOWED_SCHEMES", "file")
        .env("RAIBID_WORKSPACE_DIR", tmp.join("ws"))
        .env("RAIBID_CACHE_DIR", cache)
        .env("RAIBID_LOG", "warn")
        .env_remove("RAIBID_GIT_TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Bench {
        _redis: redis,
        base,
        http: reqwest::Client::new(),
        tmp: tmp.to_path_buf(),
        agent: Some(agent),
        _dispatcher: dispatcher,
    }
}

impl Bench {
    async fn submit(&self, url: &str, sha: &str) -> String {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .bearer_auth(TOKEN)
            .json(&json!({"repo_url": url, "ref": "main", "sha": sha}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn run(&self, url: &str, sha: &str) -> (Value, Vec<Value>) {
        let id = self.submit(url, sha).await;
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}")).await;
            if ["succeeded", "failed", "cancelled", "timed_out"]
                .contains(&j["status"].as_str().unwrap_or(""))
            {
                let logs = self.get(&format!("/api/v1/jobs/{id}/logs")).await;
                let lines = logs["lines"].as_array().cloned().unwrap_or_default();
                return (j, lines);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=b",
            "-c",
            "user.email=b@b.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
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

fn commit(dir: &Path, msg: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

fn ts(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A repository with `n` commits from `git fast-import` (each changes a line file and a 4 KiB blob).
fn big_repo(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q"]);
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
            format!("committer b <b@b.invalid> {} +0000\n", 1_700_000_000 + i).as_bytes(),
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
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    git(dir, &["checkout", "-q", "-f", "main"]);
}

async fn steps(runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let b = bench(tmp.path(), &tmp.path().join("cache")).await;
    let dir = tmp.path().join("steps");
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q"]);
    let mut yaml = String::from("steps:\n");
    for i in 0..20 {
        yaml.push_str(&format!("  - name: s{i}\n    run: echo step\n"));
    }
    std::fs::write(dir.join(".raibid.yaml"), yaml).unwrap();
    let url = format!("file://{}", dir.display());
    let sha = commit(&dir, "pipeline");
    let (j, _) = b.run(&url, &sha).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let mut per_step = Vec::new();
    for _ in 0..runs {
        let (j, _) = b.run(&url, &sha).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        for s in j["steps"].as_array().unwrap() {
            if s["name"].as_str().is_some_and(|n| {
                n.strip_prefix('s')
                    .is_some_and(|i| i.parse::<u32>().is_ok())
            }) {
                per_step.push(s["duration_ms"].as_f64().unwrap());
            }
        }
    }
    per_step.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| per_step[((per_step.len() - 1) as f64 * p) as usize];
    println!("| steps | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {:.2} | {:.2} | {:.2} |",
        per_step.len(),
        q(0.5),
        q(0.9),
        q(1.0)
    );
}

async fn latency(runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let b = bench(tmp.path(), &tmp.path().join("cache")).await;
    let tiny = tmp.path().join("tiny");
    std::fs::create_dir_all(&tiny).unwrap();
    git(&tiny, &["init", "-q"]);
    let big = tmp.path().join("big");
    big_repo(&big, 10_000);
    println!("| repository | runs | p50 ms | p90 ms | max ms | received → claimed | claimed → clone | clone step | config step | step start → line | fetched objects |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, dir) in [("1 file", &tiny), ("10,000 commits", &big)] {
        std::fs::write(
            dir.join(".raibid.yaml"),
            "steps:\n  - name: check\n    run: \"true\"\n",
        )
        .unwrap();
        let url = format!("file://{}", dir.display());
        // The first job creates the mirror and the slot; it is left out.
        let sha = commit(dir, "pipeline");
        let (j, _) = b.run(&url, &sha).await;
        assert_eq!(j["status"], "succeeded", "{j}");
        let mut first = Vec::new();
        // Stages (ms, p50 each): received → claimed, claimed → clone step start, clone step, config
        // step, first step start → its first line.
        let mut stages: [Vec<f64>; 5] = Default::default();
        let mut objects = Vec::new();
        for i in 0..runs {
            std::fs::write(dir.join("history.txt"), format!("push {i}\n")).unwrap();
            let sha = commit(dir, &format!("push {i}"));
            let (j, lines) = b.run(&url, &sha).await;
            assert_eq!(j["status"], "succeeded", "{j}");
            let received = ts(&j["timestamps"]["received"]);
            let line = lines
                .iter()
                .find(|l| l["step"] == "check")
                .expect("a line of the first step");
            let ms = |a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>| {
                (b - a).num_microseconds().unwrap() as f64 / 1000.0
            };
            let line_ts = ts(&line["ts"]);
            first.push(ms(received, line_ts));
            let step_at = |n: &str| {
                ts(&j["steps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["name"] == n)
                    .unwrap()["started_at"])
            };
            let claimed = ts(&j["timestamps"]["claimed"]);
            let (c0, c1, c2) = (step_at("clone"), step_at("config"), step_at("check"));
            for (v, x) in stages.iter_mut().zip([
                ms(received, claimed),
                ms(claimed, c0),
                ms(c0, c1),
                ms(c1, c2),
                ms(c2, line_ts),
            ]) {
                v.push(x);
            }
            objects.push(j["cache"]["fetched_objects"].as_f64().unwrap_or(0.0));
            if std::env::var_os("CACHE_BENCH_TRACE").is_some() && i + 1 == runs {
                // The last job's log, each line at its offset from `received` (where the time goes).
                for l in &lines {
                    eprintln!(
                        "{:>8.2} ms  [{}] {}",
                        ms(received, ts(&l["ts"])),
                        l["step"].as_str().unwrap_or(""),
                        l["line"].as_str().unwrap_or("")
                    );
                }
            }
            // Pushes a human pace apart is not needed: the agent is idle and blocked on XREADGROUP.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (p50, p90, max) = (
            pct(&mut first, 0.5),
            pct(&mut first, 0.9),
            pct(&mut first, 1.0),
        );
        let [a, b, c, d, e] = &mut stages;
        println!(
            "| {name} | {runs} | {p50:.1} | {p90:.1} | {max:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            pct(a, 0.5),
            pct(b, 0.5),
            pct(c, 0.5),
            pct(d, 0.5),
            pct(e, 0.5),
            pct(&mut objects, 0.5)
        );
    }
    drop(b);
}

/// A one-line change in a leaf source file: a new function (real code, not a comment).
fn leaf_change(file: &Path, n: u32) {
    let mut s = std::fs::read_to_string(file).unwrap();
    s.push_str(&format!(
        "\n#[allow(dead_code)] fn raibid_bench_change_{n}() -> u32 {{ {n} }}\n"
    ));
    std::fs::write(file, s).unwrap();
}

struct Workload {
    name: &'static str,
    /// Repository root (a git repo), and the leaf file changed in (c).
    dir: PathBuf,
    leaf: PathBuf,
}

/// The newest published ripgrep, fetched from crates.io with cargo itself: a throwaway crate that
/// depends on `ripgrep = "*"`, `cargo fetch` (which downloads and unpacks every package of the
/// resolve, a binary-only one too), then the unpacked source copied out.
async fn fetch_ripgrep(into: &Path) -> Workload {
    let probe = into.join("ripgrep-probe");
    std::fs::create_dir_all(probe.join("src")).unwrap();
    std::fs::write(
        probe.join("Cargo.toml"),
        "[package]\nname = \"probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\nripgrep = \"*\"\n",
    )
    .unwrap();
    std::fs::write(probe.join("src/lib.rs"), "").unwrap();
    let home = probe.join("cargo-home");
    let st = Command::new("cargo")
        .args(["fetch", "-q"])
        .current_dir(&probe)
        .env("CARGO_HOME", &home)
        .status()
        .unwrap();
    assert!(st.success(), "cargo fetch of ripgrep failed");
    let src = std::fs::read_dir(home.join("registry/src"))
        .unwrap()
        .flatten()
        .flat_map(|r| std::fs::read_dir(r.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("ripgrep-"))
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .expect("ripgrep unpacked by cargo fetch");
    let name = src.file_name().unwrap().to_string_lossy().into_owned();
    let dir = into.join(&name);
    cp_r(&src, &dir);
    let _ = std::fs::remove_dir_all(&probe);
    assert!(
        dir.join("Cargo.lock").exists(),
        "the published crate has a Cargo.lock"
    );
    println!("workload {name}: the published source from crates.io (cargo fetch)");
    git(&dir, &["init", "-q"]);
    let leaf = dir.join("crates/core/main.rs");
    let leaf = if leaf.exists() {
        leaf
    } else {
        dir.join("src/main.rs")
    };
    Workload {
        name: "ripgrep",
        dir,
        leaf,
    }
}

fn raibid_workspace(into: &Path) -> Workload {
    let repo_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = into.join("raibid");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = Command::new("git")
        .args(["archive", "--format=tar", "HEAD:rust"])
        .current_dir(&repo_root)
        .output()
        .unwrap();
    assert!(archive.status.success());
    let mut tar = Command::new("tar")
        .args(["-x", "-C", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin
        .take()
        .unwrap()
        .write_all(&archive.stdout)
        .unwrap();
    assert!(tar.wait().unwrap().success());
    git(&dir, &["init", "-q"]);
    Workload {
        name: "raibid",
        leaf: dir.join("raibid-agent/src/main.rs"),
        dir,
    }
}

fn cp_r(from: &Path, to: &Path) {
    assert!(Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
}

/// Time a command in `dir` (its output to a log file).
fn timed(dir: &Path, env: &[(&str, &str)], args: &[&str], log: &Path) -> f64 {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let t = Instant::now();
    let st = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .envs(env.iter().copied())
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::null())
        .stderr(f)
        .status()
        .unwrap();
    assert!(st.success(), "{args:?} failed; see {}", log.display());
    t.elapsed().as_secs_f64()
}

fn step_secs(j: &Value, name: &str) -> f64 {
    j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .and_then(|s| s["duration_ms"].as_f64())
        .unwrap_or(0.0)
        / 1000.0
}

fn job_secs(j: &Value) -> f64 {
    (ts(&j["timestamps"]["finished"]) - ts(&j["timestamps"]["received"])).num_milliseconds() as f64
        / 1000.0
}

async fn builds(names: &[String], slot_incremental_off: bool) {
    let tmp = tempfile::tempdir().unwrap();
    // One CARGO_HOME for everything (the node's, in the cache), filled by `cargo fetch` before the
    // measured runs: the figures are about target directories, not crates.io.
    let cache = tmp.path().join("cache");
    let shared_cargo = cache.join("cargo");
    std::fs::create_dir_all(&shared_cargo).unwrap();
    let b = bench(tmp.path(), &cache).await;
    let cargo_home = shared_cargo.to_str().unwrap().to_string();
    for name in names {
        let w = match name.as_str() {
            "ripgrep" => fetch_ripgrep(tmp.path()).await,
            "raibid" => raibid_workspace(tmp.path()),
            other => panic!("unknown workload {other} (ripgrep, raibid)"),
        };
        std::fs::write(
            w.dir.join(".raibid.yaml"),
            "steps:\n  - name: build\n    run: cargo build --locked --message-format=json-render-diagnostics\n  - name: test\n    run: cargo test --locked --no-run --message-format=json-render-diagnostics\n",
        )
        .unwrap();
        let log = b.tmp.join(format!("{}-plain.log", w.name));
        let fetch = timed(
            &w.dir,
            &[("CARGO_HOME", &cargo_home)],
            &["cargo", "fetch", "--locked"],
            &log,
        );
        println!("{}: cargo fetch {fetch:.1}s (not measured below)", w.name);
        let sha = commit(&w.dir, "workload");
        // (d)'s persistent checkout, prepared (cold build) before the measured phases.
        let plain = b.tmp.join(format!("{}-plain", w.name));
        cp_r(&w.dir, &plain);
        let penv = [("CARGO_HOME", cargo_home.as_str())];
        let plain_cold_build = timed(&plain, &penv, &["cargo", "build", "--locked"], &log);
        let plain_cold_test = timed(
            &plain,
            &penv,
            &["cargo", "test", "--locked", "--no-run"],
            &log,
        );
        let url = format!("file://{}", w.dir.display());
        let mut rows = Vec::new();
        let (ja, _) = b.run(&url, &sha).await;
        assert_eq!(ja["status"], "succeeded", "{ja}");
        rows.push(("(a) cold", ja));
        let sha_b = commit(&w.dir, "no change");
        let (jb, _) = b.run(&url, &sha_b).await;
        assert_eq!(jb["status"], "succeeded", "{jb}");
        rows.push(("(b) warm, no change", jb));
        leaf_change(&w.leaf, 1);
        let sha_c = commit(&w.dir, "one-line change");
        let (jc, _) = b.run(&url, &sha_c).await;
        assert_eq!(jc["status"], "succeeded", "{jc}");
        rows.push(("(c) warm, one-line change", jc));
        if slot_incremental_off {
            // (a0)/(c0): as (a)/(c) with CARGO_INCREMENTAL=0 in the pipeline (part of the cache key, so
            // a target directory of its own, built cold first).
            let off = "env:\n  CARGO_INCREMENTAL: \"0\"\nsteps:\n  - name: build\n    run: cargo build --locked --message-format=json-render-diagnostics\n  - name: test\n    run: cargo test --locked --no-run --message-format=json-render-diagnostics\n";
            std::fs::write(w.dir.join(".raibid.yaml"), off).unwrap();
            let sha = commit(&w.dir, "incremental off");
            let (j, _) = b.run(&url, &sha).await;
            assert_eq!(j["status"], "succeeded", "{j}");
            rows.push(("(a0) cold, CARGO_INCREMENTAL=0", j));
            leaf_change(&w.leaf, 3);
            let sha = commit(&w.dir, "one-line change, incremental off");
            let (j, _) = b.run(&url, &sha).await;
            assert_eq!(j["status"], "succeeded", "{j}");
            rows.push(("(c0) one-line change, CARGO_INCREMENTAL=0", j));
        }
        // (d): the same change in the persistent checkout.
        let rel = w.leaf.strip_prefix(&w.dir).unwrap();
        leaf_change(&plain.join(rel), 1);
        let d_build = timed(&plain, &penv, &["cargo", "build", "--locked"], &log);
        let d_test = timed(
            &plain,
            &penv,
            &["cargo", "test", "--locked", "--no-run"],
            &log,
        );
        // (e): CARGO_INCREMENTAL=0 in the same checkout (its first build rebuilds the workspace crates
        // non-incrementally; the measured one is the next one-line change).
        let nenv = [
            ("CARGO_HOME", cargo_home.as_str()),
            ("CARGO_INCREMENTAL", "0"),
        ];
        timed(&plain, &nenv, &["cargo", "build", "--locked"], &log);
        timed(
            &plain,
            &nenv,
            &["cargo", "test", "--locked", "--no-run"],
            &log,
        );
        leaf_change(&plain.join(rel), 2);
        let e_build = timed(&plain, &nenv, &["cargo", "build", "--locked"], &log);
        let e_test = timed(
            &plain,
            &nenv,
            &["cargo", "test", "--locked", "--no-run"],
            &log,
        );
        println!();
        println!("### {}", w.name);
        println!();
        println!("| phase | clone s | config s | build s | test --no-run s | job s (received → finished) | units fresh / total | restore | slot |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (label, j) in &rows {
            let c = &j["cache"];
            println!(
                "| {label} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} / {} | {} | {:.0} MiB |",
                step_secs(j, "clone"),
                step_secs(j, "config"),
                step_secs(j, "build"),
                step_secs(j, "test"),
                job_secs(j),
                c["units_fresh"],
                c["units_total"],
                c["restore"].as_str().unwrap_or(""),
                c["slot_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
        }
        println!("| (d) plain cargo, persistent checkout, same change | — | — | {d_build:.1} | {d_test:.1} | {:.1} | — | — | — |", d_build + d_test);
        println!("| (e) as (d), CARGO_INCREMENTAL=0 | — | — | {e_build:.1} | {e_test:.1} | {:.1} | — | — | — |", e_build + e_test);
        println!("| plain cargo, cold (for reference) | — | — | {plain_cold_build:.1} | {plain_cold_test:.1} | {:.1} | — | — | — |", plain_cold_build + plain_cold_test);
        let c = &rows[2].1;
        let a = &rows[0].1;
        let (cf, ct) = (
            c["cache"]["units_fresh"].as_f64().unwrap_or(0.0),
            c["cache"]["units_total"].as_f64().unwrap_or(1.0),
        );
        let d = d_build + d_test;
        println!();
        println!(
            "ratios: (c)/(d) = {:.2} (job, received → finished) / {:.2} (build+test steps); (a)/(c) = {:.1}; fresh on (c) = {:.1} %",
            job_secs(c) / d,
            (step_secs(c, "build") + step_secs(c, "test")) / d,
            job_secs(a) / job_secs(c),
            100.0 * cf / ct
        );
        let inc = sized(&plain.join("target/debug/incremental"));
        println!(
            "target/debug/incremental in the plain checkout: {:.0} MiB",
            inc as f64 / 1048576.0
        );
        println!("load average after {}: {}", w.name, load());
        // Disk: one workload's checkouts, slots and mirrors go before the next (ripgrep's are GiBs).
        for p in [&plain, &w.dir, &cache.join("targets"), &cache.join("git")] {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    drop(b);
}

/// `/proc/loadavg`'s three figures.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn sized(p: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-sb", p.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let mut runs = 30;
    let mut workloads = Vec::new();
    let mut slot_incremental_off = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args[i + 1].parse().unwrap();
                i += 1;
            }
            "--slot-incremental-off" => slot_incremental_off = true,
            "--agent" => {
                let _ = AGENT.set(PathBuf::from(&args[i + 1]));
                i += 1;
            }
            "--workload" => {
                workloads.push(args[i + 1].clone());
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    if mode == "latency" || mode == "builds" || mode == "steps" {
        println!(
            "cache_bench {mode}: agent {}, load average at start {}",
            agent_bin().display(),
            load()
        );
    }
    match mode.as_str() {
        "latency" => latency(runs).await,
        "steps" => steps(runs).await,
        "builds" => {
            if workloads.is_empty() {
                workloads = vec!["ripgrep".into(), "raibid".into()];
            }
            builds(&workloads, slot_incremental_off).await
        }
        _ => {
            eprintln!(
                "usage: cache_bench latency [--runs N] [--agent PATH] | steps [--runs N] [--agent PATH] | builds [--workload ripgrep|raibid]... [--slot-incremental-off] [--agent PATH]"
            );
            std::process::exit(2);
        }
    }
}
