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
async fn github_push_for_a_mirrored_repo_triggers_mirror_sync_else_a_job() {
    let env = spawn_app(Options {
        mirrors: "Octo/Hello=mirrors/hello",
        ..Options::default()
    })
    .await;
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
    let calls = env.gitea.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/api/v1/repos/mirrors/hello/mirror-sync");
    assert_eq!(
        calls[0].auth.as_deref(),
        Some(format!("token {GITEA_TOKEN}").as_str())
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

    // Not mirrored: a job, de-duplicated by X-GitHub-Delivery.
    for _ in 0..2 {
        let r = send(mk("someone/else"), "72d3162e-cc78-11e3-81ab-4c9367dc0959")
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert_eq!(env.job_count().await, 1);
    let (_, v) = env.api_get("/api/v1/jobs").await;
    assert_eq!(v["jobs"][0]["source"]["trigger"]["kind"], "github_push");
    assert_eq!(
        v["jobs"][0]["source"]["repo_url"],
        "https://github.com/someone/else.git"
    );
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
