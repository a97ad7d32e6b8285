//! End to end with real parts: webhook → Redis stream → agent clones a real local git repository →
//! real `cargo build` / `cargo test` of the example crate → statuses, step results, ordered logs, live
//! SSE, commit statuses to the (swagger-checked) fake Gitea.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use futures::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

fn step_names(job: &Value) -> Vec<String> {
    job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

async fn logs(env: &TestEnv, id: &str) -> Vec<Value> {
    let (s, v) = env.api_get(&format!("/api/v1/jobs/{id}/logs")).await;
    assert_eq!(s, 200);
    v["lines"].as_array().unwrap().clone()
}

async fn wait_statuses(env: &TestEnv, n: usize) -> Vec<Call> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let calls: Vec<Call> = env
            .gitea
            .calls()
            .into_iter()
            .filter(|c| c.path.contains("/statuses/"))
            .collect();
        if calls.len() >= n || Instant::now() > deadline {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_builds_and_tests_the_commit_and_reports_statuses() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("hello");
    let (url, sha) = make_repo(&repo, &[]);
    let agent = env.start_agent("agent-e2e");
    let (s, v) = env
        .gitea_push(
            &gitea_payload(&url, &sha, "refs/heads/main"),
            "e2e-delivery-1",
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(240)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["agent"], "agent-e2e");
    assert_eq!(step_names(&job), ["clone", "config", "build", "test"]);
    for st in job["steps"].as_array().unwrap() {
        assert_eq!(st["status"], "succeeded", "{st}");
        assert!(st["duration_ms"].is_u64());
    }
    assert_eq!(job["steps"][2]["exit_code"], 0);
    for t in ["received", "queued", "claimed", "started", "finished"] {
        assert!(
            job["timestamps"][t].is_string(),
            "timestamp {t} missing: {job}"
        );
    }
    // Log lines: in order, per step, with the commands and cargo's own output.
    let lines = logs(&env, &id).await;
    let text: Vec<String> = lines
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    let pos = |needle: &str| {
        text.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?} in {text:#?}"))
    };
    assert!(
        pos(&format!("[raibid] at commit {sha}")) < pos("$ cargo build --all-targets --locked")
    );
    assert!(pos("$ cargo build --all-targets --locked") < pos("$ cargo test --locked"));
    assert!(pos("$ cargo test --locked") < pos("test result: ok. 2 passed"));
    let seqs: Vec<&str> = lines.iter().map(|l| l["seq"].as_str().unwrap()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_by_key(|s| {
        let (a, b) = s.split_once('-').unwrap();
        (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
    });
    assert_eq!(seqs, sorted, "log sequence ids are ordered");
    assert!(lines
        .iter()
        .any(|l| l["step"] == "test" && l["stream"] == "stdout"));
    // Commit statuses: pending on claim, success at the end, on the pushed sha, checked against the swagger.
    let calls = wait_statuses(&env, 2).await;
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[0].path,
        format!("/api/v1/repos/owner/hello/statuses/{sha}")
    );
    assert_eq!(calls[0].body["state"], "pending");
    assert_eq!(calls[1].body["state"], "success");
    assert_eq!(calls[1].body["context"], "raibid/ci");
    assert!(
        calls[1].body["target_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("http://raibid.test/public/jobs/{id}/")),
        "{calls:?}"
    );
    // The workspace is gone, the entry acknowledged, nothing pending.
    assert!(!env.tmp.path().join("ws").join(&id).exists());
    let q = env.queue.stats().await.unwrap();
    assert_eq!((q.length, q.lag, q.pending), (0, Some(0), 0));
    let (_, agents) = env.api_get("/api/v1/agents").await;
    assert_eq!(agents["agents"][0]["id"], "agent-e2e");
    let m = env
        .http
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("raibid_jobs{status=\"succeeded\"} 1"), "{m}");
    assert!(m.contains("raibid_claim_latency_seconds_count 1"), "{m}");
    assert!(m.contains("raibid_job_duration_seconds_count 1"), "{m}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_test_fails_the_job_naming_the_step() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("broken");
    let broken = "pub fn one() -> i32 { 1 }\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn is_two() { assert_eq!(super::one(), 2, \"one is not two\"); }\n}\n";
    let (url, sha) = make_repo(&repo, &[("src/lib.rs", broken)]);
    let agent = env.start_agent("agent-fail");
    let (_, v) = env
        .gitea_push(
            &gitea_payload(&url, &sha, "refs/heads/main"),
            "e2e-delivery-2",
        )
        .await;
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(240)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["step"], "test");
    assert_eq!(job["steps"][3]["name"], "test");
    assert_eq!(job["steps"][3]["status"], "failed");
    assert_eq!(job["steps"][3]["exit_code"], 101);
    assert!(
        job["failure_reason"]
            .as_str()
            .unwrap()
            .contains("step `test` exited with code 101"),
        "{job}"
    );
    let text: Vec<String> = logs(&env, &id)
        .await
        .iter()
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    assert!(
        text.iter().any(|l| l.contains("one is not two")),
        "the compiler/test output reaches the log"
    );
    let calls = wait_statuses(&env, 2).await;
    assert_eq!(calls.last().unwrap().body["state"], "failure");
    assert!(env.gitea.violations().is_empty());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_file_errors_fail_the_config_step_naming_the_key() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("badcfg");
    let (url, _sha) = make_repo(
        &repo,
        &[(
            ".raibid.yaml",
            "steps:\n  - name: build\n    run: true\n    timout: 5\n",
        )],
    );
    let agent = env.start_agent("agent-cfg");
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["step"], "config");
    assert!(
        job["failure_reason"].as_str().unwrap().contains("timout"),
        "{job}"
    );
    // The sha was resolved from the ref at clone time.
    assert_eq!(job["source"]["sha"].as_str().unwrap().len(), 40);
    // A disallowed scheme fails the clone step without running git against it.
    let (_, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "https://example.invalid/o/r.git", "ref": "main"}),
        )
        .await;
    let job = env
        .wait_final(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["step"], "clone");
    assert!(
        job["failure_reason"]
            .as_str()
            .unwrap()
            .contains("scheme `https` is not allowed"),
        "{job}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_counts_unclaimed_jobs_until_an_agent_drains_them() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("quick");
    let (url, _) = make_repo(
        &repo,
        &[(
            ".raibid.yaml",
            "steps:\n  - name: hello\n    run: echo hi\n",
        )],
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 201);
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (_, q) = env.api_get("/api/v1/queue").await;
    assert_eq!(q["lag"], 5, "{q}");
    assert_eq!(q["length"], 5);
    assert_eq!(q["pending"], 0);
    assert!(q["oldest_waiting_age_secs"].as_f64().unwrap() >= 0.0);
    let agent = env.start_agent("agent-drain");
    for id in &ids {
        assert_eq!(
            env.wait_final(id, Duration::from_secs(60)).await["status"],
            "succeeded"
        );
    }
    let (_, q) = env.api_get("/api/v1/queue").await;
    assert_eq!(
        (
            q["lag"].as_u64(),
            q["pending"].as_u64(),
            q["length"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{q}"
    );
    assert!(q["oldest_waiting_age_secs"].is_null());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_follow_streams_lines_while_running_and_ends_with_the_job() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("slow");
    let yaml =
        "steps:\n  - name: count\n    run: for i in 1 2 3 4 5; do echo line-$i; sleep 0.4; done\n";
    let (url, _) = make_repo(&repo, &[(".raibid.yaml", yaml)]);
    let agent = env.start_agent("agent-sse");
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let resp = env
        .http
        .get(env.url(&format!("/api/v1/jobs/{id}/logs?follow=true")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen_while_running = false;
    let mut got_lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ended = None;
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline.into(), body.next()).await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            let kind = ev
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data = ev
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("");
            match kind {
                "log" => {
                    let line: Value = serde_json::from_str(data).unwrap();
                    let text = line["line"].as_str().unwrap().to_string();
                    if text == "line-1" {
                        let (_, j) = env.api_get(&format!("/api/v1/jobs/{id}")).await;
                        seen_while_running = j["status"] == "running";
                    }
                    got_lines.push(text);
                }
                "end" => ended = Some(serde_json::from_str::<Value>(data).unwrap()),
                _ => {}
            }
        }
        if ended.is_some() {
            break;
        }
    }
    assert!(
        seen_while_running,
        "line-1 arrived while the job was still running"
    );
    let counted: Vec<&String> = got_lines
        .iter()
        .filter(|l| l.starts_with("line-"))
        .collect();
    assert_eq!(counted, ["line-1", "line-2", "line-3", "line-4", "line-5"]);
    assert_eq!(ended.expect("an end event")["status"], "succeeded");
    // The stream is closed after `end`.
    assert!(tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .unwrap()
        .is_none());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn once_mode_runs_exactly_one_job_and_exits() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("once");
    let (url, _) = make_repo(
        &repo,
        &[(
            ".raibid.yaml",
            "steps:\n  - name: hello\n    run: echo hi\n",
        )],
    );
    let a = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await
        .1;
    let b = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await
        .1;
    let mut cfg = env.agent_config("agent-once");
    cfg.once = true;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let r = tokio::time::timeout(Duration::from_secs(60), raibid_agent::run(cfg, rx)).await;
    assert!(
        matches!(r, Ok(Ok(()))),
        "the agent exits by itself after one job"
    );
    let (_, ja) = env
        .api_get(&format!("/api/v1/jobs/{}", a["id"].as_str().unwrap()))
        .await;
    let (_, jb) = env
        .api_get(&format!("/api/v1/jobs/{}", b["id"].as_str().unwrap()))
        .await;
    assert_eq!(ja["status"], "succeeded");
    assert_eq!(
        jb["status"], "queued",
        "the second job is left for another agent"
    );
    let q = env.queue.stats().await.unwrap();
    assert_eq!((q.lag, q.pending), (Some(1), 0));
    // Its consumer is removed from the group (nothing pending) and its heartbeat is gone.
    assert_eq!(q.consumers, 0);
    let (_, agents) = env.api_get("/api/v1/agents").await;
    assert_eq!(agents["agents"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_kills_the_running_step_and_its_children() {
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("sleepy");
    let marker = env.shared().join("grandchild.started");
    // The grandchild's pid is its sandbox's (ADR 0011): it is found on the host by its unique argument.
    const GRANDCHILD: &str = "300.6061";
    let yaml = format!(
        "steps:\n  - name: wait\n    run: (sleep {GRANDCHILD} & echo started > {}; wait) ; sleep 300\n",
        marker.display()
    );
    let (url, _) = make_repo(&repo, &[(".raibid.yaml", &yaml)]);
    let agent = env.start_agent("agent-cancel");
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "step did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = loop {
        if let Some(p) = pid_with_arg(GRANDCHILD) {
            break p;
        }
        assert!(Instant::now() < deadline, "no grandchild on the host");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t0 = Instant::now();
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202);
    let job = env.wait_final(&id, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["failure_reason"].as_str().unwrap().contains("wait"));
    assert!(took < Duration::from_secs(3), "cancel took {took:?}");
    // The grandchild is gone (kill(pid, 0) fails).
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "grandchild {pid} survived the cancel");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipeline_secrets_reach_the_step_and_are_masked_in_the_log() {
    // Process-wide, but the name is unique to this test.
    std::env::set_var("RAIBID_SECRET_E2E_DEPLOY_TOKEN", "s3cr3t-value-4711");
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("secret");
    let yaml = "secrets: [E2E_DEPLOY_TOKEN]\nsteps:\n  - name: use\n    run: echo \"token=$E2E_DEPLOY_TOKEN\"; test \"$E2E_DEPLOY_TOKEN\" = s3cr3t-value-4711\n";
    let (url, _) = make_repo(&repo, &[(".raibid.yaml", yaml)]);
    let agent = env.start_agent("agent-secret");
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(
        job["status"], "succeeded",
        "the step saw the secret's value: {job}"
    );
    let lines = logs(&env, &id).await;
    let all = serde_json::to_string(&lines).unwrap();
    assert!(
        !all.contains("s3cr3t-value-4711"),
        "secret leaked into the log: {all}"
    );
    assert!(lines.iter().any(|l| l["line"] == "token=***"), "{all}");
    // A secret the agent does not have fails the config step, naming it.
    let repo2 = env.tmp.path().join("nosecret");
    let (url2, _) = make_repo(
        &repo2,
        &[(
            ".raibid.yaml",
            "secrets: [NOT_GIVEN_TO_AGENTS]\nsteps:\n  - name: a\n    run: 'true'\n",
        )],
    );
    let (_, v) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url2, "ref": "main"}))
        .await;
    let job = env
        .wait_final(v["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(
        (job["status"].as_str(), job["step"].as_str()),
        (Some("failed"), Some("config"))
    );
    assert!(job["failure_reason"]
        .as_str()
        .unwrap()
        .contains("RAIBID_SECRET_NOT_GIVEN_TO_AGENTS"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_means_503_and_failing_readyz_then_everything_recovers() {
    let mut env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("r");
    let (url, sha) = make_repo(
        &repo,
        &[(".raibid.yaml", "steps:\n  - name: a\n    run: echo up\n")],
    );
    let agent = env.start_agent("agent-redis-down");
    env.redis.kill();
    let t0 = Instant::now();
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "down-1")
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_unavailable");
    assert!(
        t0.elapsed() < Duration::from_secs(11),
        "answered in {:?}",
        t0.elapsed()
    );
    let (s, _) = env
        .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
        .await;
    assert_eq!(s, 503);
    assert_eq!(
        env.http
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        503
    );
    assert_eq!(
        env.http
            .get(env.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Redis comes back: the redelivered webhook makes a job and the (reconnected) agent runs it.
    env.redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if env
            .http
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
            == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "dispatcher did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "down-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let job = env
        .wait_final(v["job"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "succeeded");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_build_of_the_same_repo_downloads_nothing() {
    // A real dependency from crates.io (the one registry reachable here), a fresh shared cache.
    let env = spawn_app(Options::default()).await;
    let repo = env.tmp.path().join("withdep");
    let manifest = "[package]\nname = \"withdep\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nitoa = \"=1.0.15\"\n";
    let lib = "pub fn s(n: u32) -> String { itoa::Buffer::new().format(n).to_string() }\n#[test]\nfn t() { assert_eq!(s(42), \"42\"); }\n";
    let scratch = env.tmp.path().join("lockgen");
    std::fs::create_dir_all(scratch.join("src")).unwrap();
    std::fs::write(scratch.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(scratch.join("src/lib.rs"), lib).unwrap();
    let out = std::process::Command::new("cargo")
        .arg("generate-lockfile")
        .env("CARGO_HOME", env.tmp.path().join("lockgen-home"))
        .current_dir(&scratch)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock = std::fs::read_to_string(scratch.join("Cargo.lock")).unwrap();
    let (url, _) = make_repo(
        &repo,
        &[
            ("Cargo.toml", manifest),
            ("src/lib.rs", lib),
            ("Cargo.lock", &lock),
        ],
    );
    let mut cfg = env.agent_config("agent-cache");
    cfg.cache_dir = env.tmp.path().join("fresh-cache");
    let agent = env.start_agent_with(cfg);
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let (_, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        let id = v["id"].as_str().unwrap().to_string();
        let job = env.wait_final(&id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let text: Vec<String> = logs(&env, &id)
            .await
            .iter()
            .map(|l| l["line"].as_str().unwrap().to_string())
            .collect();
        outputs.push(text);
    }
    assert!(
        outputs[0]
            .iter()
            .any(|l| l.contains("Downloaded itoa v1.0.15")),
        "first build downloads: {:#?}",
        outputs[0]
    );
    assert!(outputs[0]
        .iter()
        .any(|l| l.contains("$ cargo build --all-targets --locked")));
    let net: Vec<&String> = outputs[1]
        .iter()
        .filter(|l| l.contains("Downloaded") || l.contains("Downloading") || l.contains("Updating"))
        .collect();
    assert!(net.is_empty(), "the second build used the network: {net:?}");
    // The repository's own CARGO_HOME (one per repository, ADR 0011) holds the downloaded crates.
    let homes: Vec<_> = std::fs::read_dir(env.tmp.path().join("fresh-cache/cargo"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("registry/cache").exists())
        .collect();
    assert_eq!(homes.len(), 1, "one CARGO_HOME with a registry cache");
    agent.stop().await;
}

/// The host pid of a live process whose command line holds `arg`.
fn pid_with_arg(arg: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        let c = std::fs::read(e.path().join("cmdline")).ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        (String::from_utf8_lossy(&c).split('\0').any(|a| a == arg) && !stat.contains(") Z "))
            .then_some(pid)
    })
}
