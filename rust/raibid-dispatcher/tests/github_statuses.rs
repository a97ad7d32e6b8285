//! Commit statuses on GitHub for jobs of Gitea pull mirrors, and the mirror mapping read from Gitea:
//! real Redis, the real dispatcher (restarted once) and a real agent; Gitea and GitHub are fakes
//! (they cannot run here) that check every call against the upstream contracts: Gitea's swagger in
//! shared/reference, GitHub's OpenAPI description extracted in tests/fixtures/github (see its README).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use raibid_core::contract::keys;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::github::GhCall;
use support::*;

const PIPELINE: &str = "name: lint\nsteps:\n  - name: check\n    run: echo checked\n";

/// Log lines of this test binary (a global subscriber writing into memory), to count what was said.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Default::default();
        let w = buf.clone();
        let make = move || Writer(w.clone());
        tracing_subscriber::fmt()
            .with_writer(make)
            .with_ansi(false)
            .with_env_filter("raibid_dispatcher=info")
            .try_init()
            .ok();
        buf
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

fn github_push_body(full: &str, sha: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000001", "after": sha,
        "repository": {"full_name": full, "clone_url": format!("https://github.com/{full}.git")},
        "pusher": {"name": "alice"}, "sender": {"login": "alice"}
    }))
    .unwrap()
}

async fn github_push(env: &TestEnv, full: &str, sha: &str, delivery: &str) -> (u16, Value) {
    let body = github_push_body(full, sha);
    let sig = format!(
        "sha256={}",
        raibid_core::webhook::sign_hex(GITHUB_SECRET.as_bytes(), &body)
    );
    let r = env
        .http
        .post(env.url("/webhooks/github"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// What Gitea's push webhook sends after the mirror synced: the mirror's name, the commit.
fn mirror_push(clone_url: &str, sha: &str, gitea_full: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&gitea_payload(clone_url, sha, "refs/heads/main")).unwrap();
    v["repository"]["full_name"] = json!(gitea_full);
    serde_json::to_vec(&v).unwrap()
}

fn taken(calls: &[GhCall]) -> Vec<&GhCall> {
    calls.iter().filter(|c| c.answered == 201).collect()
}

async fn wait_github(
    env: &TestEnv,
    what: &str,
    within: Duration,
    done: impl Fn(&[GhCall]) -> bool,
) -> Vec<GhCall> {
    let deadline = Instant::now() + within;
    loop {
        let calls = env.github.calls();
        if done(&calls) {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn group_pending(env: &TestEnv, group: &str) -> i64 {
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(keys::EVENTS_STREAM)
        .arg(group)
        .query_async(&mut con)
        .await
        .unwrap();
    match v.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("XPENDING summary: {other:?}"),
    }
}

async fn wait_no_pending(env: &TestEnv, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_pending(env, group).await != 0 {
        assert!(Instant::now() < deadline, "{group}: entries left pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_gitea_success(env: &TestEnv) -> Vec<Call> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let calls: Vec<Call> = env
            .gitea
            .calls()
            .into_iter()
            .filter(|c| c.path.contains("/statuses/"))
            .collect();
        if calls
            .iter()
            .any(|c| c.answered == 201 && c.body["state"] == "success")
        {
            return calls;
        }
        assert!(Instant::now() < deadline, "no success on Gitea: {calls:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_to_a_mirrored_github_repo_ends_with_its_status_on_github_and_gitea_through_an_outage_rate_limits_and_a_restart(
) {
    let _ = logs();
    let mut opts = Options::default();
    // Backoff of at most 1 s: the waits GitHub asks for (3 s, a reset 4 s ahead) are longer, so the
    // gaps measured below show they were honoured.
    opts.intake.status_retry.max = Duration::from_secs(1);
    let mut env = spawn_app(opts).await;
    // The mapping is Gitea's: mirrors/hello is a pull mirror of github.com/Octo/Hello. No RAIBID_MIRRORS.
    env.gitea
        .add_mirror("mirrors/hello", "https://github.com/Octo/Hello.git");
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    env.github.add_commit("Octo/Hello", &sha);
    env.github.set_down(true);

    // GitHub push → mirror-sync of the mirror Gitea names; Gitea's push webhook then makes the job.
    let (s, v) = github_push(
        &env,
        "Octo/Hello",
        &sha,
        "4a1d0e3c-0000-4000-8000-000000000001",
    )
    .await;
    assert_eq!((s, v["status"].as_str()), (202, Some("mirror_sync")), "{v}");
    assert_eq!(v["gitea_repo"], "mirrors/hello");
    let agent = env.start_agent("agent-gh");
    let (s, v) = env
        .gitea_push(&mirror_push(&url, &sha, "mirrors/hello"), "gh-status-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // Gitea's statuses do not wait for GitHub.
    let gitea = wait_gitea_success(&env).await;
    let gitea_states: Vec<&str> = gitea
        .iter()
        .filter(|c| c.answered == 201)
        .map(|c| c.body["state"].as_str().unwrap())
        .collect();
    assert_eq!(gitea_states, ["pending", "success"], "{gitea:#?}");
    // GitHub is down: retried.
    wait_github(&env, "two 503s", Duration::from_secs(30), |c| {
        c.iter().filter(|c| c.answered == 503).count() >= 2
    })
    .await;

    // The dispatcher restarts during the outage; then GitHub limits the rate, then takes statuses.
    env.restart_dispatcher().await;
    let before = env.github.calls().len();
    env.github.script(
        429,
        &[("retry-after", "3")],
        json!({"message": "You have exceeded a secondary rate limit."}),
    );
    let reset = chrono::Utc::now().timestamp() + 6;
    env.github.script(
        403,
        &[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &reset.to_string()),
        ],
        json!({"message": "API rate limit exceeded for user."}),
    );
    env.github.set_down(false);
    let calls = wait_github(
        &env,
        "the final status on GitHub",
        Duration::from_secs(60),
        |c| {
            c.iter()
                .any(|c| c.answered == 201 && c.body["state"] == "success")
        },
    )
    .await;
    assert!(
        env.github.violations().is_empty(),
        "{:?}",
        env.github.violations()
    );
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    // After the restart: the 429, the 403, then a 201; each retry waited as GitHub asked.
    let after: Vec<&GhCall> = calls[before..].iter().collect();
    assert_eq!(after[0].answered, 429, "{after:#?}");
    assert_eq!(after[1].answered, 403, "{after:#?}");
    let gap = after[1].at - after[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "Retry-After: 3 not honoured: {gap:?}"
    );
    assert!(
        after[2].unix >= reset as f64 - 0.1,
        "x-ratelimit-reset {reset} not honoured: next call at {}",
        after[2].unix
    );
    // What GitHub took: nothing twice, the final last, one context, the public job page.
    let took = taken(&calls);
    let states: Vec<&str> = took
        .iter()
        .map(|c| c.body["state"].as_str().unwrap())
        .collect();
    let mut dedup = states.clone();
    dedup.dedup();
    assert_eq!(states, dedup, "a transition was posted twice: {took:#?}");
    assert_eq!(*states.last().unwrap(), "success");
    assert!(
        states.len() <= 2 && (states.len() == 1 || states[0] == "pending"),
        "{states:?}"
    );
    for c in &took {
        assert_eq!(c.path, format!("/repos/Octo/Hello/statuses/{sha}"));
        assert_eq!(c.body["context"], "raibid/ci");
        let d = c.body["description"].as_str().unwrap();
        assert!(d.chars().count() <= 140 && !d.contains('\n'), "{d}");
        let target = c.body["target_url"].as_str().unwrap();
        assert!(
            target.starts_with(&format!("http://raibid.test/public/jobs/{id}/")),
            "{target}"
        );
    }
    assert_eq!(
        took.last().unwrap().body["description"],
        "lint: all steps passed"
    );
    wait_no_pending(&env, keys::GITHUB_STATUS_REPORTER_GROUP).await;
    // Nothing more is posted afterwards (no replay of a transition).
    let n = env.github.calls().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.github.calls().len(), n);
    // The mapping the dispatcher uses, as `raibid.nu mirror status` shows it.
    let (s, m) = env.api_get("/api/v1/mirrors").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["mirrors"][0]["github"], "Octo/Hello", "{m}");
    assert_eq!(m["mirrors"][0]["gitea"], "mirrors/hello");
    assert_eq!(m["mirrors"][0]["source"], "gitea");
    assert_eq!(m["github_statuses"], true);
    // The token is never logged (nor in the mapping's answer).
    assert!(log_lines_with(&[support::github::GITHUB_TOKEN]).is_empty());
    assert!(!m.to_string().contains(support::github::GITHUB_TOKEN));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_status_for_a_commit_github_does_not_have_is_logged_once_and_dropped() {
    let _ = logs();
    let env = spawn_app(Options::default()).await;
    env.gitea
        .add_mirror("mirrors/gone", "https://github.com/Octo/Gone.git");
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    // GitHub never had this commit (a force-push race): it answers 422.
    let agent = env.start_agent("agent-gone");
    let (s, v) = env
        .gitea_push(&mirror_push(&url, &sha, "mirrors/gone"), "gh-gone-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_gitea_success(&env).await;
    wait_github(&env, "the 422", Duration::from_secs(30), |c| {
        c.iter().any(|c| c.answered == 422)
    })
    .await;
    wait_no_pending(&env, keys::GITHUB_STATUS_REPORTER_GROUP).await;
    let n = env.github.calls().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = env.github.calls();
    assert_eq!(calls.len(), n, "not retried");
    assert_eq!(
        calls.len(),
        1,
        "pending and final: one call, then dropped: {calls:#?}"
    );
    assert!(
        env.github.violations().is_empty(),
        "{:?}",
        env.github.violations()
    );
    let said = log_lines_with(&[&id, "does not have this commit"]);
    assert_eq!(said.len(), 1, "logged once: {said:#?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mapping_is_read_from_gitea_and_a_new_mirror_is_found_on_a_miss() {
    let mut opts = Options::default();
    // Trusted for an hour: only a miss makes the dispatcher read Gitea again.
    opts.intake.mirror_ttl = Duration::from_secs(3600);
    let env = spawn_app(opts).await;
    env.gitea
        .add_mirror("ci/a", "https://github.com/acme/a.git");
    // A mirror of another forge is no GitHub mirror.
    env.gitea
        .add_mirror("ci/lab", "https://gitlab.com/acme/lab.git");
    // Behind the API token.
    let r = env
        .http
        .get(env.url("/api/v1/mirrors"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, m) = env.api_get("/api/v1/mirrors").await;
    assert_eq!(s, 200, "{m}");
    let rows = m["mirrors"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{m}");
    assert_eq!(rows[0]["github"], "acme/a");
    assert_eq!(rows[0]["gitea"], "ci/a");
    assert_eq!(rows[0]["original_url"], "https://github.com/acme/a.git");
    assert!(m["error"].is_null() && !m["read_at"].is_null(), "{m}");
    // Mirrored after the read: a push finds it on a miss (reads at most every 2 s).
    env.gitea
        .add_mirror("ci/b", "https://github.com/acme/b.git");
    let sha = "5555555555555555555555555555555555555555";
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (s, v) = github_push(
            &env,
            "acme/b",
            sha,
            &format!("4a1d0e3c-0000-4000-8000-00000000010{n}"),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        if v["status"] == "mirror_sync" {
            assert_eq!(v["gitea_repo"], "ci/b");
            break;
        }
        assert_eq!(v["status"], "not_mirrored", "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never found: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let searches = env.gitea.searches();
    assert!(
        searches <= 2 + (started.elapsed().as_secs() as usize) / 2,
        "misses are bounded: {searches} searches"
    );
    // A known mirror is answered from the cache: no new read of Gitea.
    let (s, _) = github_push(&env, "acme/a", sha, "4a1d0e3c-0000-4000-8000-000000000200").await;
    assert_eq!(s, 202);
    assert_eq!(env.gitea.searches(), searches);
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    assert_eq!(env.job_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_is_described_by_its_first_compiler_error_or_failing_test_on_github() {
    let env = spawn_app(Options::default()).await;
    let agent = env.start_agent("agent-gh-fail");
    let compile = "pub fn greet(name: &str) -> String {\n    let unused = 1;\n    name\n}\n";
    let failing = "pub fn sum(xs: &[i64]) -> i64 {\n    xs.iter().sum::<i64>() + 1\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn sums() {\n        assert_eq!(super::sum(&[1, 2, 3]), 6, \"one two three\");\n    }\n}\n";
    for (name, src) in [("compile", compile), ("test", failing)] {
        let gitea_repo = format!("mirrors/{name}");
        let github_repo = format!("Octo/{name}");
        env.gitea.add_mirror(
            &gitea_repo,
            &format!("https://github.com/{github_repo}.git"),
        );
        let (url, sha) = make_repo(&env.tmp.path().join(name), &[("src/lib.rs", src)]);
        env.github.add_commit(&github_repo, &sha);
        let (s, v) = env
            .gitea_push(
                &mirror_push(&url, &sha, &gitea_repo),
                &format!("gh-fail-{name}"),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let id = v["job"].as_str().unwrap().to_string();
        let job = env.wait_final(&id, Duration::from_secs(300)).await;
        assert_eq!(job["status"], "failed", "{job}");
        let path = format!("/repos/{github_repo}/statuses/{sha}");
        let calls = wait_github(
            &env,
            "the failure on GitHub",
            Duration::from_secs(30),
            |c| {
                c.iter()
                    .any(|c| c.path == path && c.answered == 201 && c.body["state"] == "failure")
            },
        )
        .await;
        let d = calls
            .iter()
            .find(|c| c.path == path && c.body["state"] == "failure")
            .unwrap()
            .body["description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(d.chars().count() <= 140, "{d}");
        match name {
            "compile" => assert!(
                d.starts_with("error[E0308]: mismatched types at src/lib.rs:3"),
                "{d}"
            ),
            _ => assert!(
                d.starts_with("test tests::sums failed: assertion `left == right` failed")
                    && d.contains("src/lib.rs:9"),
                "{d}"
            ),
        }
        // Gitea says the same.
        let deadline = Instant::now() + Duration::from_secs(30);
        let gitea = loop {
            let found = env.gitea.calls().into_iter().find(|c| {
                c.path.contains(&format!("/repos/{gitea_repo}/statuses/"))
                    && c.answered == 201
                    && c.body["state"] == "failure"
            });
            if let Some(c) = found {
                break c;
            }
            assert!(Instant::now() < deadline, "no failure on Gitea");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(gitea.body["description"], json!(d));
    }
    assert!(
        env.github.violations().is_empty(),
        "{:?}",
        env.github.violations()
    );
    agent.stop().await;
}

/// `last-delivered-id` of a group on the events stream.
async fn last_delivered(env: &TestEnv, group: &str) -> String {
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let groups: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys::EVENTS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    for g in groups {
        let s: Vec<String> = g
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if s.get(1).map(String::as_str) == Some(group) {
            let i = s.iter().position(|k| k == "last-delivered-id").unwrap();
            return s[i + 1].clone();
        }
    }
    panic!("no group {group}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicated_transition_event_posts_nothing_twice_on_either_forge() {
    let env = spawn_app(Options::default()).await;
    env.gitea
        .add_mirror("mirrors/twice", "https://github.com/Octo/Twice.git");
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    env.github.add_commit("Octo/Twice", &sha);
    let agent = env.start_agent("agent-twice");
    let (_, v) = env
        .gitea_push(&mirror_push(&url, &sha, "mirrors/twice"), "gh-twice-1")
        .await;
    let id = v["job"].as_str().unwrap().to_string();
    env.wait_final(&id, Duration::from_secs(120)).await;
    wait_gitea_success(&env).await;
    wait_github(&env, "success on GitHub", Duration::from_secs(30), |c| {
        c.iter()
            .any(|c| c.answered == 201 && c.body["state"] == "success")
    })
    .await;
    let (gitea_before, github_before) = (env.gitea.calls().len(), env.github.calls().len());
    // The final event again (a redelivery, a replica that took it over after the post).
    let event = json!({
        "type": "job_finished", "job": id, "status": "succeeded", "step": null, "agent": "agent-twice",
        "ts": chrono::Utc::now().to_rfc3339(),
    });
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entry: String = redis::cmd("XADD")
        .arg(keys::EVENTS_STREAM)
        .arg("*")
        .arg("event")
        .arg(event.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    // Both reporters read and acknowledged it.
    for group in [
        keys::STATUS_REPORTER_GROUP,
        keys::GITHUB_STATUS_REPORTER_GROUP,
    ] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while last_delivered(&env, group).await != entry || group_pending(&env, group).await != 0 {
            assert!(Instant::now() < deadline, "{group} did not handle {entry}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let posted = |calls: usize, before: usize| calls - before;
    assert_eq!(
        posted(
            env.gitea
                .calls()
                .iter()
                .filter(|c| c.path.contains("/statuses/"))
                .count(),
            env.gitea.calls()[..gitea_before]
                .iter()
                .filter(|c| c.path.contains("/statuses/"))
                .count()
        ),
        0,
        "Gitea got the transition twice"
    );
    assert_eq!(
        env.github.calls().len(),
        github_before,
        "GitHub got the transition twice"
    );
    agent.stop().await;
}
