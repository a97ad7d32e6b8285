//! Webhook and API ingress against a real Redis: signatures, de-duplication, limits, bad input.
//! Every rejection is checked to have enqueued nothing (stream length and job index).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use raibid_core::contract::keys;
use raibid_core::webhook::sign_hex;
use serde_json::json;
use support::*;

const SHA: &str = "2222222222222222222222222222222222222222";

async fn stream_len(env: &TestEnv) -> u64 {
    env.queue.stats().await.unwrap().length
}

#[tokio::test]
async fn gitea_push_makes_exactly_one_job_with_repo_ref_and_sha() {
    let env = spawn_app(Options::default()).await;
    let body = gitea_payload("http://gitea.local/owner/hello.git", SHA, "refs/heads/main");
    let (status, v) = env
        .gitea_push(&body, "d1e2a3b4-0000-4000-8000-000000000001")
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    let (_, job) = env.api_get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["source"]["repo_url"],
        "http://gitea.local/owner/hello.git"
    );
    assert_eq!(job["source"]["ref"], "refs/heads/main");
    assert_eq!(job["source"]["sha"], SHA);
    assert_eq!(job["source"]["trigger"]["kind"], "gitea_push");
    assert_eq!(job["source"]["trigger"]["actor"], "alice");
    assert_eq!(job["source"]["forge_repo"], "owner/hello");
    assert_eq!(
        job["source"]["delivery_id"],
        "d1e2a3b4-0000-4000-8000-000000000001"
    );
    assert!(job.get("lease").is_none());
    assert_eq!(env.job_count().await, 1);
    assert_eq!(stream_len(&env).await, 1);

    // The same delivery again: one job, not two.
    let (status, v) = env
        .gitea_push(&body, "d1e2a3b4-0000-4000-8000-000000000001")
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["job"], id.as_str());
    assert_eq!(env.job_count().await, 1);
    assert_eq!(stream_len(&env).await, 1);
    let ttl: i64 = redis::cmd("TTL")
        .arg(raibid_core::contract::delivery_key(
            "gitea",
            "d1e2a3b4-0000-4000-8000-000000000001",
        ))
        .query_async(
            &mut redis::Client::open(env.redis.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(ttl > 3 * 24 * 3600 - 60, "dedup key TTL {ttl}");
}

#[tokio::test]
async fn bad_signatures_are_401_and_enqueue_nothing() {
    let env = spawn_app(Options::default()).await;
    let body = gitea_payload("http://gitea.local/owner/hello.git", SHA, "refs/heads/main");
    let good = sign_hex(GITEA_SECRET.as_bytes(), &body);
    let wrong_secret = sign_hex(b"not-the-secret", &body);
    let mut tampered = body.clone();
    let n = tampered.len();
    tampered[n - 3] = b'X';
    let cases: Vec<(Vec<u8>, Option<String>)> = vec![
        (tampered, Some(good.clone())),
        (body.clone(), Some(wrong_secret)),
        (body.clone(), None),
        (body.clone(), Some(format!("sha256={good}"))),
        (body.clone(), Some("zz".into())),
    ];
    for (b, sig) in cases {
        let mut r = env
            .http
            .post(env.url("/webhooks/gitea"))
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Delivery", "abc")
            .body(b);
        if let Some(s) = &sig {
            r = r.header("X-Gitea-Signature", s);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "signature {sig:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_signature");
    }
    // GitHub: wrong and missing signature.
    for sig in [
        Some(format!("sha256={}", sign_hex(b"x", &body))),
        None,
        Some(sign_hex(GITHUB_SECRET.as_bytes(), &body)),
    ] {
        let mut r = env
            .http
            .post(env.url("/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .body(body.clone());
        if let Some(s) = &sig {
            r = r.header("X-Hub-Signature-256", s);
        }
        assert_eq!(r.send().await.unwrap().status().as_u16(), 401, "{sig:?}");
    }
    assert_eq!(env.job_count().await, 0);
    assert_eq!(stream_len(&env).await, 0);
}

#[tokio::test]
async fn oversized_malformed_and_nonsense_bodies() {
    let env = spawn_app(Options {
        body_limit: 4096,
        ..Options::default()
    })
    .await;
    // 413 over the limit (signed correctly, so only size decides).
    let big = vec![b' '; 5000];
    let sig = sign_hex(GITEA_SECRET.as_bytes(), &big);
    let r = env
        .http
        .post(env.url("/webhooks/gitea"))
        .header("X-Gitea-Event", "push")
        .header("X-Gitea-Signature", sig)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    // 400 malformed JSON, with what is wrong.
    let (s, v) = env.gitea_push(b"{\"ref\": ", "abc-1").await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("EOF"),
        "{v}"
    );
    // 422: a sha that is no sha.
    let (s, _) = env
        .gitea_push(
            &gitea_payload("http://x/o/r.git", "not-a-sha", "refs/heads/main"),
            "abc-2",
        )
        .await;
    assert_eq!(s, 422);
    // Branch deletions and tags are acknowledged and ignored.
    let (s, v) = env
        .gitea_push(
            &gitea_payload(
                "http://x/o/r.git",
                "0000000000000000000000000000000000000000",
                "refs/heads/main",
            ),
            "abc-3",
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ignored")));
    let (s, _) = env
        .gitea_push(
            &gitea_payload("http://x/o/r.git", SHA, "refs/tags/v1"),
            "abc-4",
        )
        .await;
    assert_eq!(s, 200);
    // Other events are ignored.
    let body = gitea_payload("http://x/o/r.git", SHA, "refs/heads/main");
    let r = env
        .http
        .post(env.url("/webhooks/gitea"))
        .header("X-Gitea-Event", "issues")
        .header(
            "X-Gitea-Signature",
            sign_hex(GITEA_SECRET.as_bytes(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // API: malformed, unknown field, nonsense values, oversized.
    let r = env
        .http
        .post(env.url("/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (s, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "file:///r", "ref": "main", "shaa": "x"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("shaa"),
        "{v}"
    );
    let (s, _) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "file:///r", "ref": "main", "sha": "123"}),
        )
        .await;
    assert_eq!(s, 422);
    let (s, _) = env
        .api_post("/api/v1/jobs", json!({"repo_url": "", "ref": "main"}))
        .await;
    assert_eq!(s, 422);
    let (s, _) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "file:///r", "ref": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(s, 413);
    let (s, v) = env.api_get("/api/v1/jobs?status=bogus").await;
    assert_eq!(s, 422);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("timed_out"));
    assert_eq!(env.job_count().await, 0);
    assert_eq!(stream_len(&env).await, 0);
}

#[tokio::test]
async fn api_requires_the_bearer_token_but_health_and_metrics_are_open() {
    let env = spawn_app(Options::default()).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some(TOKEN),
        Some("Basic dGVzdA=="),
    ] {
        let mut r = env
            .http
            .post(env.url("/api/v1/jobs"))
            .json(&json!({"repo_url": "file:///r", "ref": "main"}));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{auth:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["message"], "missing or invalid credentials");
    }
    for p in [
        "/api/v1/jobs",
        "/api/v1/queue",
        "/api/v1/agents",
        "/api/v1/jobs/01J0000000000000000000000A",
    ] {
        assert_eq!(
            env.http
                .get(env.url(p))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            401,
            "{p}"
        );
    }
    assert_eq!(env.job_count().await, 0);
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
    assert_eq!(
        env.http
            .get(env.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
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
        m.contains("raibid_queue_lag{stream=\"raibid:jobs\",group=\"raibid-agents\"} 0"),
        "{m}"
    );
    assert!(m.contains("raibid_jobs{status=\"queued\"} 0"));
    assert!(m.contains("raibid_claim_latency_seconds_count"));
    let (s, _) = env.api_get("/api/v1/jobs/not-a-job").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn github_push_for_a_mirrored_repo_triggers_mirror_sync_else_202_not_mirrored_and_no_job() {
    // `Octo/Hello` is mirrored by override (RAIBID_MIRRORS), `acme/tool` by Gitea itself (a pull
    // mirror whose original_url is on github.com): no hand-copied variable for it.
    let env = spawn_app(Options {
        mirrors: "Octo/Hello=mirrors/hello",
        ..Options::default()
    })
    .await;
    env.gitea
        .add_mirror("ci/acme-tool", "https://github.com/acme/tool.git");
    let mk = |full: &str| {
        serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": SHA, "after": "3333333333333333333333333333333333333333",
            "repository": {"full_name": full, "clone_url": format!("https://github.com/{full}.git")},
            "pusher": {"name": "bob"}, "sender": {"login": "bob"}
        }))
        .unwrap()
    };
    let send = |body: Vec<u8>, delivery: &'static str| {
        let sig = format!("sha256={}", sign_hex(GITHUB_SECRET.as_bytes(), &body));
        env.http
            .post(env.url("/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", sig)
            .body(body)
            .send()
    };
    let r = send(mk("octo/hello"), "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let syncs = || {
        env.gitea
            .calls()
            .into_iter()
            .filter(|c| c.path.ends_with("/mirror-sync"))
            .collect::<Vec<_>>()
    };
    let calls = syncs();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/api/v1/repos/mirrors/hello/mirror-sync");
    assert_eq!(
        calls[0].auth.as_deref(),
        Some(format!("token {GITEA_TOKEN}").as_str())
    );
    // Mirrored in Gitea only: found there.
    let r = send(mk("acme/tool"), "72d3162e-cc78-11e3-81ab-4c9367dc0960")
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "mirror_sync", "{v}");
    assert_eq!(v["gitea_repo"], "ci/acme-tool");
    assert_eq!(
        syncs().last().unwrap().path,
        "/api/v1/repos/ci/acme-tool/mirror-sync"
    );
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    assert_eq!(
        env.job_count().await,
        0,
        "a mirrored repo's job comes from Gitea's own webhook"
    );

    // Not mirrored: 202 with a body that says so, and no job.
    for _ in 0..2 {
        let r = send(mk("someone/else"), "72d3162e-cc78-11e3-81ab-4c9367dc0959")
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["status"], "not_mirrored", "{v}");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.contains("someone/else") && m.contains("not mirrored") && m.contains("no job"),
            "{m}"
        );
    }
    assert_eq!(env.job_count().await, 0);
    assert_eq!(stream_len(&env).await, 0);
    // A ping is answered.
    let body = b"{\"zen\":\"x\"}".to_vec();
    let sig = format!("sha256={}", sign_hex(GITHUB_SECRET.as_bytes(), &body));
    let r = env
        .http
        .post(env.url("/webhooks/github"))
        .header("X-GitHub-Event", "ping")
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let _ = keys::JOBS_STREAM;
}

#[tokio::test]
async fn listing_filters_and_paginates() {
    let env = spawn_app(Options::default()).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let repo = if i % 2 == 0 {
            "file:///repos/even"
        } else {
            "file:///repos/odd"
        };
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": repo, "ref": "main"}))
            .await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["source"]["ref"], "refs/heads/main");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (_, p1) = env.api_get("/api/v1/jobs?limit=3").await;
    assert_eq!(p1["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(p1["jobs"][0]["id"], ids[6].as_str(), "newest first");
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = env
        .api_get(&format!("/api/v1/jobs?limit=3&cursor={cursor}"))
        .await;
    assert_eq!(p2["jobs"][0]["id"], ids[3].as_str());
    let (_, even) = env.api_get("/api/v1/jobs?repo=even&limit=100").await;
    assert_eq!(even["jobs"].as_array().unwrap().len(), 4);
    assert!(even["next_cursor"].is_null());
    // Cancel a queued job: cancelled at once; a second cancel conflicts.
    let (s, v) = env
        .api_post(&format!("/api/v1/jobs/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!((s, v["status"].as_str()), (202, Some("cancelled")));
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(s, 409);
    let (_, c) = env.api_get("/api/v1/jobs?status=cancelled").await;
    assert_eq!(c["jobs"].as_array().unwrap().len(), 1);
    // Retry makes a new job pointing at the old one; a queued job cannot be retried.
    let (s, v) = env
        .api_post(&format!("/api/v1/jobs/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(s, 201);
    assert_eq!(v["retry_of"], ids[0].as_str());
    assert_eq!(v["source"]["trigger"]["kind"], "retry");
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{}/retry", ids[1]), json!({}))
        .await;
    assert_eq!(s, 409);
}

async fn redis_con(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_body_replayed_with_a_fresh_delivery_id_is_a_duplicate() {
    let env = spawn_app(Options::default()).await;
    let body = gitea_payload("http://gitea.local/owner/hello.git", SHA, "refs/heads/main");
    let (s, v) = env
        .gitea_push(&body, "11111111-0000-4000-8000-000000000001")
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    // The same signed body, a new delivery id (a replay): no second job.
    let (s, v) = env
        .gitea_push(&body, "11111111-0000-4000-8000-000000000002")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["job"], id.as_str());
    assert_eq!(env.job_count().await, 1);
    assert_eq!(stream_len(&env).await, 1);
    // Another ref or sha is another push.
    let other = gitea_payload(
        "http://gitea.local/owner/hello.git",
        "3333333333333333333333333333333333333333",
        "refs/heads/main",
    );
    let (s, _) = env
        .gitea_push(&other, "11111111-0000-4000-8000-000000000003")
        .await;
    assert_eq!(s, 202);
    let branch = gitea_payload("http://gitea.local/owner/hello.git", SHA, "refs/heads/dev");
    let (s, _) = env
        .gitea_push(&branch, "11111111-0000-4000-8000-000000000004")
        .await;
    assert_eq!(s, 202);
    assert_eq!(env.job_count().await, 3);
    // The window is the key's TTL.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys::PUSH_DEDUP_PREFIX))
        .query_async(&mut redis_con(&env).await)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis_con(&env).await)
        .await
        .unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "{ttl}");
}

#[tokio::test]
async fn a_push_that_could_not_be_queued_does_not_block_its_redelivery() {
    let mut env = spawn_app(Options::default()).await;
    let body = gitea_payload("http://gitea.local/owner/hello.git", SHA, "refs/heads/main");
    // The enqueue fails (the job stream is not a stream): the push key must not stay behind.
    let mut con = redis_con(&env).await;
    let _: () = redis::cmd("DEL")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(keys::JOBS_STREAM)
        .arg("not a stream")
        .query_async(&mut con)
        .await
        .unwrap();
    let (s, v) = env
        .gitea_push(&body, "22222222-0000-4000-8000-000000000001")
        .await;
    assert!(s >= 500, "{s} {v}");
    let keys_left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", keys::PUSH_DEDUP_PREFIX))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys_left.is_empty(), "{keys_left:?}");
    let _: () = redis::cmd("DEL")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    env.queue.ensure_group().await.unwrap();
    let (s, v) = env
        .gitea_push(&body, "22222222-0000-4000-8000-000000000002")
        .await;
    assert_eq!(s, 202, "{v}");
    // Redis down: 503, and readyz says so without echoing Redis' error text.
    env.redis.kill();
    let r = env.http.get(env.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let text = r.text().await.unwrap();
    assert!(
        !text.to_ascii_lowercase().contains("redis")
            && !text.contains("refused")
            && !text.contains(&env.redis.url()),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_scrapes_are_read_only_and_do_not_grow_with_the_agent_set() {
    let env = spawn_app(Options::default()).await;
    let mut con = redis_con(&env).await;
    // 200 names of agents that are gone (no heartbeat key).
    let mut sadd = redis::cmd("SADD");
    sadd.arg(keys::AGENTS_SET);
    for i in 0..200 {
        sadd.arg(format!("gone-{i}"));
    }
    let _: i64 = sadd.query_async(&mut con).await.unwrap();
    let stats = |con: &mut redis::aio::MultiplexedConnection| {
        let mut con = con.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut con)
                .await
                .unwrap();
            let calls = |cmd: &str| -> u64 {
                info.lines()
                    .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
                    .and_then(|l| l.split("calls=").nth(1))
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            (calls("hgetall"), calls("srem"), calls("del"), calls("hset"))
        }
    };
    let before = stats(&mut con).await;
    let r = env.http.get(env.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let m = r.text().await.unwrap();
    let after = stats(&mut con).await;
    assert!(m.contains("raibid_agents 0"), "{m}");
    assert!(m.contains("raibid_redis_up 1"), "{m}");
    // Read-only: nothing pruned, nothing written.
    assert_eq!(after.1, before.1, "SREM on a scrape");
    assert_eq!(after.2, before.2, "DEL on a scrape");
    assert_eq!(after.3, before.3, "HSET on a scrape");
    let n: i64 = redis::cmd("SCARD")
        .arg(keys::AGENTS_SET)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 200);
    // No read per agent: the same few hashes (status counts, two histograms, cache counters) whatever
    // the set holds (the old scrape read one per agent: 200 here).
    assert!(after.0 - before.0 <= 4, "{before:?} → {after:?}");
    assert!(m.ends_with("# EOF\n"), "OpenMetrics text: {m}");
}

#[tokio::test]
async fn submit_refuses_what_no_agent_can_clone_naming_what_is_allowed() {
    let env = spawn_app(Options {
        intake: raibid_dispatcher::Intake {
            allowed_hosts: raibid_dispatcher::csv_list("gitea.local"),
            ..raibid_dispatcher::Intake::default()
        },
        ..Options::default()
    })
    .await;
    for (url, needle) in [
        ("file:///etc", "scheme `file`"),
        ("ftp://gitea.local/o/r.git", "scheme `ftp`"),
        ("https://evil.example/o/r.git", "host `evil.example`"),
        ("git@evil.example:o/r.git", "host `evil.example`"),
        (
            "https://ghp_secret0123@gitea.local/o/r.git",
            "must not carry credentials",
        ),
    ] {
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 422, "{url}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{url}: {msg}");
        if !needle.contains("credentials") {
            assert!(
                msg.contains("https, http, ssh") && msg.contains("gitea.local"),
                "{msg}"
            );
        }
        assert!(!msg.contains("ghp_secret0123"), "{msg}");
    }
    for url in [
        "https://gitea.local/o/r.git",
        "ssh://git@gitea.local/o/r.git",
        "git@gitea.local:o/r.git",
    ] {
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 201, "{url}: {v}");
    }
    assert_eq!(env.job_count().await, 3);
}

/// Read SSE events from a response until `n` events arrived; returns (event, id, data).
async fn sse_events(mut r: reqwest::Response, n: usize) -> Vec<(String, String, String)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .expect("SSE events in time")
            .unwrap();
        let Some(c) = chunk else { break };
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf[..end].to_string();
            buf.drain(..end + 2);
            let (mut ev, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().into();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !ev.is_empty() {
                out.push((ev, id, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_follow_resumes_after_last_event_id_and_a_vanished_job_is_not_failed() {
    let env = spawn_app(Options::default()).await;
    let (s, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "file:///srv/r", "ref": "main"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let mut con = redis_con(&env).await;
    let mut seqs = Vec::new();
    for i in 1..=3 {
        let seq: String = redis::cmd("XADD")
            .arg(raibid_core::contract::job_log_key(&id))
            .arg("*")
            .arg("step")
            .arg("build")
            .arg("stream")
            .arg("stdout")
            .arg("ts")
            .arg("2026-01-01T00:00:00Z")
            .arg("line")
            .arg(format!("line {i}"))
            .query_async(&mut con)
            .await
            .unwrap();
        seqs.push(seq);
    }
    let follow = |last: Option<&str>| {
        let mut r = env
            .http
            .get(env.url(&format!("/api/v1/jobs/{id}/logs?follow=true")))
            .bearer_auth(TOKEN);
        if let Some(l) = last {
            r = r.header("Last-Event-ID", l);
        }
        r.send()
    };
    // First connection: everything, each event with its sequence id.
    let evs = sse_events(follow(None).await.unwrap(), 3).await;
    let ids: Vec<&str> = evs.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, seqs.iter().map(String::as_str).collect::<Vec<_>>());
    // An EventSource reconnect after line 2: line 3 next, not line 1 again.
    let evs = sse_events(follow(Some(&seqs[1])).await.unwrap(), 1).await;
    assert_eq!(evs[0].0, "log");
    assert_eq!(evs[0].1, seqs[2], "{evs:?}");
    assert!(evs[0].2.contains("line 3"));
    let (s, v) = env
        .http
        .get(env.url(&format!("/api/v1/jobs/{id}/logs?follow=true")))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", "nonsense")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(s, 422, "{:?}", v.text().await);
    // The record vanishes while followed: a `gone` event, not `end` with `failed`.
    let r = follow(Some(&seqs[2])).await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(raibid_core::contract::job_key(&id))
        .query_async(&mut con)
        .await
        .unwrap();
    let evs = sse_events(r, 1).await;
    assert_eq!(evs[0].0, "gone", "{evs:?}");
    assert!(!evs[0].2.contains("failed"), "{evs:?}");
}
