//! Commit statuses end to end: real Redis, the real dispatcher and a real agent, Gitea played by the
//! fake in support/ that checks every call against the upstream swagger (Gitea cannot run here).
//! One context for pending and final, finals that survive a Gitea outage, a flushed Redis, and
//! events a dead reporter left pending.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use raibid_core::contract::keys;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

fn statuses(env: &TestEnv) -> Vec<Call> {
    env.gitea
        .calls()
        .into_iter()
        .filter(|c| c.path.contains("/statuses/"))
        .collect()
}

/// Wait until Gitea took (201) a status with `state`; return every status call so far.
async fn wait_taken(env: &TestEnv, state: &str, within: Duration) -> Vec<Call> {
    let deadline = Instant::now() + within;
    loop {
        let calls = statuses(env);
        if calls
            .iter()
            .any(|c| c.answered == 201 && c.body["state"] == state)
        {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "no `{state}` status taken by Gitea within {within:?}: {calls:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn redis_con(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Entries of the reporter group not yet acknowledged.
async fn reporter_pending(env: &TestEnv) -> i64 {
    let v: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(keys::EVENTS_STREAM)
        .arg(keys::STATUS_REPORTER_GROUP)
        .query_async(&mut redis_con(env).await)
        .await
        .unwrap();
    match v.first() {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("XPENDING summary: {other:?}"),
    }
}

const PIPELINE: &str = "name: lint\nsteps:\n  - name: check\n    run: echo checked\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_pipeline_reports_pending_and_final_under_one_context_linking_a_public_page() {
    let env = spawn_app(Options::default()).await;
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    let agent = env.start_agent("agent-ctx");
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "ctx-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["pipeline"], "lint");
    let calls = wait_taken(&env, "success", Duration::from_secs(15)).await;
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    let states: Vec<&str> = calls
        .iter()
        .map(|c| c.body["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "success"], "{calls:#?}");
    assert_eq!(
        calls[0].body["context"], calls[1].body["context"],
        "pending and final must share a context, or the pending one stays forever"
    );
    assert_eq!(calls[1].body["context"], "raibid/ci");
    assert!(
        calls[1].body["description"]
            .as_str()
            .unwrap()
            .starts_with("lint: "),
        "{calls:#?}"
    );
    // target_url: a page a person can open without the API token.
    let target = calls[1].body["target_url"].as_str().unwrap().to_string();
    let path = target.strip_prefix("http://raibid.test").unwrap();
    assert!(path.starts_with(&format!("/public/jobs/{id}/")), "{target}");
    // Issue 19 §3: the same page is in the job's record as the API answers it.
    assert_eq!(job["page_url"], target.as_str(), "{job}");
    let r = env.http.get(env.url(path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains(&id) && page.contains("succeeded"), "{page}");
    assert!(page.contains("checked"), "the log is on the page: {page}");
    // A wrong token and an unknown job are the same 404.
    let wrong = format!("/public/jobs/{id}/{}", "0".repeat(32));
    assert_eq!(
        env.http
            .get(env.url(&wrong))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(reporter_pending(&env).await, 0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_final_status_arrives_after_a_20_s_gitea_outage() {
    let mut opts = Options::default();
    opts.intake.status_retry.max = Duration::from_secs(2);
    let env = spawn_app(opts).await;
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    let agent = env.start_agent("agent-outage");
    env.gitea.go_down_for(Duration::from_secs(20));
    let down_at = Instant::now();
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "outage-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let job = env.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        down_at.elapsed() < Duration::from_secs(20),
        "the job must end during the outage for this test to mean anything"
    );
    let calls = wait_taken(&env, "success", Duration::from_secs(45)).await;
    assert!(down_at.elapsed() >= Duration::from_secs(20));
    assert!(
        calls.iter().filter(|c| c.answered == 503).count() >= 2,
        "posts were retried during the outage: {calls:#?}"
    );
    // What Gitea took: never a pending after the final, all under one context.
    let taken: Vec<&Call> = calls.iter().filter(|c| c.answered == 201).collect();
    let last = taken.last().unwrap();
    assert_eq!(last.body["state"], "success", "{taken:#?}");
    assert!(taken.iter().all(|c| c.body["context"] == "raibid/ci"));
    // Everything acknowledged once posted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reporter_pending(&env).await != 0 {
        assert!(Instant::now() < deadline, "reporter entries left pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = env
        .http
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("raibid_commit_statuses_total{result=\"retried\"}"),
        "{m}"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_flushall_the_reporter_recreates_its_group_and_reports_again() {
    let env = spawn_app(Options::default()).await;
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    // The agent connects (and creates groups) before the flush, so the reporter's group can only
    // come back through the reporter.
    let agent = env.start_agent("agent-flush");
    let mut con = redis_con(&env).await;
    // Let the reporter block on its group first, then lose everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    // The agents' group is the agents' business (they recreate it themselves); made here so this
    // test depends on the reporter alone.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::JOBS_STREAM)
        .arg(keys::AGENTS_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut con)
        .await
        .unwrap();
    let (s, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "flush-1")
        .await;
    assert_eq!(s, 202, "{v}");
    let job = env
        .wait_final(v["job"].as_str().unwrap(), Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_taken(&env, "success", Duration::from_secs(20)).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_a_dead_reporter_left_pending_are_taken_over_and_it_is_pruned() {
    let mut opts = Options::default();
    opts.intake.status_retry.stale = Duration::from_secs(2);
    opts.intake.status_retry.prune_idle = Duration::from_secs(3);
    let env = spawn_app(opts).await;
    let (url, sha) = make_repo(&env.tmp.path().join("r"), &[(".raibid.yaml", PIPELINE)]);
    let agent = env.start_agent("agent-dead-reporter");
    let (_, v) = env
        .gitea_push(&gitea_payload(&url, &sha, "refs/heads/main"), "dead-1")
        .await;
    let id = v["job"].as_str().unwrap().to_string();
    env.wait_final(&id, Duration::from_secs(120)).await;
    wait_taken(&env, "success", Duration::from_secs(15)).await;
    let before = statuses(&env).len();
    // A reporter in another replica reads the job's final event and dies before posting it. In one
    // transaction, so the live reporter (blocked on the group) is served only after it. The status
    // was never posted in that story: its marker (one post per transition) goes.
    let mut con = redis_con(&env).await;
    let _: i64 = redis::cmd("DEL")
        .arg(raibid_core::contract::status_posted_key(
            "gitea", &id, "success",
        ))
        .query_async(&mut con)
        .await
        .unwrap();
    let event: Value = serde_json::json!({
        "type": "job_finished", "job": id, "status": "succeeded", "step": null, "agent": "agent-dead-reporter",
        "ts": chrono::Utc::now().to_rfc3339(),
    });
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(keys::EVENTS_STREAM)
        .arg("*")
        .arg("event")
        .arg(event.to_string())
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(keys::STATUS_REPORTER_GROUP)
        .arg("dead-replica-1")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(keys::EVENTS_STREAM)
        .arg(">")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(reporter_pending(&env).await, 1);
    // Taken over once stale, posted, acknowledged; then the dead consumer is removed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while statuses(&env).len() == before {
        assert!(
            Instant::now() < deadline,
            "the dead reporter's event was never posted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(statuses(&env).last().unwrap().body["state"], "success");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(keys::EVENTS_STREAM)
            .arg(keys::STATUS_REPORTER_GROUP)
            .query_async(&mut con)
            .await
            .unwrap();
        let names: Vec<String> = consumers
            .iter()
            .map(|c| match &c[1] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if reporter_pending(&env).await == 0 && !names.iter().any(|n| n == "dead-replica-1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead reporter still in the group: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop().await;
}

/// Issue 19 §3: locally nothing told the user where a job's page is. Every answer carrying a job (the
/// submit, GET, the list, MCP `get_job`) has its `page_url`; the page opens without the token, and a
/// job that is not final refreshes itself (a final one does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_answer_carries_its_public_page_and_a_running_page_refreshes_itself() {
    let env = spawn_app(Options::default()).await;
    let (url, _) = make_repo(&env.tmp.path().join("r"), &[]);
    let (s, job) = env
        .api_post(
            "/api/v1/jobs",
            serde_json::json!({"repo_url": url, "ref": "main"}),
        )
        .await;
    assert_eq!(s, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let page = job["page_url"].as_str().expect("page_url").to_string();
    assert!(
        page.starts_with(&format!("http://raibid.test/public/jobs/{id}/")),
        "{page}"
    );
    let (_, got) = env.api_get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(got["page_url"], page.as_str(), "{got}");
    let (_, list) = env.api_get("/api/v1/jobs").await;
    assert_eq!(list["jobs"][0]["page_url"], page.as_str(), "{list}");
    let r = env
        .http
        .post(env.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "get_job", "arguments": {"job_id": id}}}),
        )
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(body.contains(&page), "MCP get_job: {body}");
    // The page of a job that is not final refreshes itself; the record never stores the URL.
    let path = page.strip_prefix("http://raibid.test").unwrap();
    let html = env
        .http
        .get(env.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("http-equiv=\"refresh\""), "{html}");
    let stored: Value = serde_json::from_str(
        &redis::cmd("HGET")
            .arg(raibid_core::contract::job_key(&id))
            .arg("record")
            .query_async::<String>(&mut redis_con(&env).await)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(stored.get("page_url").is_none(), "{stored}");
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{id}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(s, 202);
    let html = env
        .http
        .get(env.url(path))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("cancelled") && !html.contains("http-equiv=\"refresh\""),
        "{html}"
    );
}
