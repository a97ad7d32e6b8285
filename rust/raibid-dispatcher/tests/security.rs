//! Issue 17 at the dispatcher, against a real Redis and the real dispatcher (REST and `/mcp`): what a
//! request may name is refused at submit with a 422 naming the problem — another registry (§1), a push
//! outside the repository owner's namespace or into a reserved one (§2), a patch with an image job, dot
//! segments in `repo_url` (§6) — a retry is checked against the allowlists as they are now, the MCP
//! `cleanup` of an image job asks the image agents to remove its images, completion webhooks survive a
//! dispatcher restart and are signed the Standard Webhooks way, and a failure reason is masked and
//! bounded before anyone can read it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64_check::b64;
use hmac::{Hmac, Mac};
use raibid_core::job::{Job, Source, Trigger, TriggerKind};
use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use raibid_dispatcher::{serve, AppState};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use support::*;

/// Base64 for the signature check, written out so the test does not trust the dispatcher's encoder.
mod base64_check {
    pub fn b64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// One MCP `tools/call`; `Ok(structuredContent)` or `Err(tool error text)`.
async fn mcp_call(env: &TestEnv, tool: &str, args: Value) -> Result<Value, String> {
    let r = env
        .http
        .post(env.url("/mcp"))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": args}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let text = r.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| d.contains("\"id\""))
        .map(str::to_string)
        .unwrap_or(text);
    let v: Value = serde_json::from_str(&body).unwrap();
    let res = &v["result"];
    assert!(v.get("error").is_none(), "protocol error: {v}");
    if res["isError"] == true {
        Err(res["content"][0]["text"].as_str().unwrap_or("").to_string())
    } else {
        Ok(res["structuredContent"].clone())
    }
}

/// Submit over REST and over MCP; both must refuse with a message containing every needle.
async fn refused_both_ways(env: &TestEnv, body: Value, needles: &[&str]) {
    let (s, v) = env.api_post("/api/v1/jobs", body.clone()).await;
    assert_eq!(s, 422, "REST accepted {body}: {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    for n in needles {
        assert!(
            msg.contains(n),
            "REST message for {body} lacks `{n}`: {msg}"
        );
    }
    let e = mcp_call(env, "submit_job", body.clone())
        .await
        .expect_err("MCP accepted it");
    for n in needles {
        assert!(e.contains(n), "MCP message for {body} lacks `{n}`: {e}");
    }
}

fn registry_intake() -> raibid_dispatcher::Intake {
    raibid_dispatcher::Intake {
        allowed_schemes: raibid_dispatcher::csv_list("file,http,https,ssh"),
        registries: raibid_core::image::RegistryPolicy {
            default: Some("git.test:3000".into()),
            allowed: vec!["ghcr.io".into()],
            ..raibid_core::image::RegistryPolicy::default()
        },
        ..raibid_dispatcher::Intake::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_registry_is_refused_at_submit_naming_the_allowed_ones() {
    let env = spawn_app(Options {
        intake: registry_intake(),
        ..Options::default()
    })
    .await;
    let repo = "https://git.test/acme/app.git";
    for evil in ["evil.example", "evil.example:443/acme", "git.test:3001"] {
        refused_both_ways(
            &env,
            json!({"repo_url": repo, "ref": "main", "image": {"name": "acme/app", "registry": evil}}),
            &["image.registry", evil, "git.test:3000", "ghcr.io"],
        )
        .await;
    }
    // The configured registry, an allowed one, and none (the agents' default) are accepted.
    for reg in [json!("git.test:3000"), json!("GHCR.io"), Value::Null] {
        let mut image = json!({"name": "acme/app"});
        if !reg.is_null() {
            image["registry"] = reg.clone();
        }
        let (s, v) = env
            .api_post(
                "/api/v1/jobs",
                json!({"repo_url": repo, "ref": "main", "image": image}),
            )
            .await;
        assert_eq!(s, 201, "{reg}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pushes_only_under_its_owner_and_never_into_a_reserved_namespace() {
    let env = spawn_app(Options::default()).await;
    let repo = "https://git.test/acme/app.git";
    refused_both_ways(
        &env,
        json!({"repo_url": repo, "ref": "main", "image": {"name": "raibid/raibid-agent"}}),
        &["image.name", "`raibid/`", "reserved"],
    )
    .await;
    refused_both_ways(
        &env,
        json!({"repo_url": repo, "ref": "main", "image": {"name": "other/app"}}),
        &["image.name", "`acme/`"],
    )
    .await;
    refused_both_ways(
        &env,
        json!({"repo_url": "git@git.test:acme/app.git", "ref": "main", "image": {"name": "app"}}),
        &["image.name", "`acme/`"],
    )
    .await;
    // The owner's namespace, whatever the case of the owner in the URL.
    for (url, name) in [
        (repo, "acme/app"),
        ("https://git.test/Acme/app.git", "acme/tools/x"),
        ("git@git.test:acme/app.git", "acme/app"),
    ] {
        let (s, v) = env
            .api_post(
                "/api/v1/jobs",
                json!({"repo_url": url, "ref": "main", "image": {"name": name}}),
            )
            .await;
        assert_eq!(s, 201, "{url} {name}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_with_an_image_job_and_dot_segments_are_refused_at_submit() {
    let env = spawn_app(Options::default()).await;
    let patch = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n";
    refused_both_ways(
        &env,
        json!({"repo_url": "https://git.test/acme/app.git", "ref": "main", "patch": patch,
               "image": {"name": "acme/app"}}),
        &["patch", "image"],
    )
    .await;
    for url in [
        "https://git.test/acme/../evil/x.git",
        "https://git.test/acme/%2e%2E/evil/x.git",
        "https://git.test/acme/./x.git",
        "git@git.test:acme/../evil/x.git",
    ] {
        refused_both_ways(
            &env,
            json!({"repo_url": url, "ref": "main"}),
            &["repo_url", "dot segment"],
        )
        .await;
    }
    assert_eq!(env.job_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_checked_against_the_allowlists_as_they_are_now() {
    let env = spawn_app(Options {
        intake: raibid_dispatcher::Intake {
            allowed_hosts: raibid_dispatcher::csv_list("git.test"),
            ..raibid_dispatcher::Intake::default()
        },
        settings: |s| s.notify_secret = Some("n".into()),
        ..Options::default()
    })
    .await;
    // Jobs accepted under an earlier configuration (written straight into the queue).
    let mut ids = Vec::new();
    for (url, notify) in [
        ("https://evil.example/acme/app.git", None),
        (
            "https://git.test/acme/app.git",
            Some("http://[::ffff:127.0.0.1]:6379/"),
        ),
    ] {
        let job = Job::new(
            Source {
                repo_url: url.into(),
                git_ref: "refs/heads/main".into(),
                sha: None,
                trigger: Trigger {
                    kind: TriggerKind::Api,
                    actor: None,
                },
                delivery_id: None,
                forge_repo: None,
                patch: None,
                notify_url: notify.map(str::to_string),
            },
            chrono::Utc::now(),
        );
        let id = job.id.to_string();
        env.queue.enqueue(job, None).await.unwrap();
        env.queue.cancel(&id).await.unwrap();
        ids.push(id);
    }
    let (s, v) = env
        .api_post(&format!("/api/v1/jobs/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host `evil.example`"),
        "{v}"
    );
    let (s, v) = env
        .api_post(&format!("/api/v1/jobs/{}/retry", ids[1]), json!({}))
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("notify_url:"),
        "{v}"
    );
    let e = mcp_call(&env, "retry_job", json!({"job_id": ids[0]}))
        .await
        .expect_err("MCP retried a job no agent may clone");
    assert!(e.contains("host `evil.example`"), "{e}");
    assert_eq!(env.job_count().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_cleanup_of_an_image_job_asks_for_its_images_to_be_removed() {
    let env = spawn_app(Options::default()).await;
    let (s, v) = env
        .api_post(
            "/api/v1/jobs",
            json!({"repo_url": "https://git.test/acme/app.git", "ref": "main", "image": {"name": "acme/app"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let (s, _) = env
        .api_post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, 202);
    let out = mcp_call(&env, "cleanup", json!({"job_id": id}))
        .await
        .unwrap();
    assert_eq!(out["job_id"], id.as_str());
    let mut con = redis::Client::open(env.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(raibid_core::contract::keys::IMAGE_CLEANUP)
        .arg(&id)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        score.is_some(),
        "the image agents were not asked to remove job {id}'s images: {out}"
    );
}

/// A dispatcher replica on `redis` with these notification settings; (base URL, stop, its task).
async fn replica(
    redis: &str,
    secret: &str,
    allowed: Vec<String>,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let queue = Queue::connect(redis, QueueConfig::default()).await.unwrap();
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.lease = Duration::from_secs(3);
    settings.notify_secret = Some(secret.into());
    settings.notify_allowed_hosts = allowed;
    settings.intake.allowed_schemes = raibid_dispatcher::csv_list("file,https");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(AppState::new(queue, settings), listener, async {
            let _ = rx.await;
        })
        .await
        .ok();
    });
    (base, tx, task)
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_webhook_is_delivered_by_the_replica_that_takes_over_and_signed_per_standard_webhooks(
) {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    let redis = RedisServer::start().unwrap();
    // The receiver fails every delivery signed by replica A (its secret) and takes replica B's.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(char, HeaderMap, Bytes)>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, b: Bytes| {
            let tx = tx.clone();
            async move {
                let sig = h
                    .get("x-raibid-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let who = if sig == raibid_dispatcher::notify::sign(b"secret-a", &b) {
                    'a'
                } else {
                    'b'
                };
                let _ = tx.send((who, h, b));
                if who == 'a' {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, hook).await });
    let allowed = vec![
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{}", addr.port()),
    ];
    let (a_base, a_stop, a_task) = replica(&redis.url(), "secret-a", allowed.clone()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{a_base}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"repo_url": "https://git.test/acme/app.git", "ref": "main",
                      "notify_url": format!("http://{addr}/hook")}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http
        .post(format!("{a_base}/api/v1/jobs/{id}/cancel"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    // Replica A tries (and is refused), then stops while its delivery is not done.
    let (who, _, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("replica A made no delivery attempt")
        .unwrap();
    assert_eq!(who, 'a');
    let _ = a_stop.send(());
    a_task.await.unwrap();
    // Replica B takes the undelivered notification over.
    let (_b_base, _b_stop, _b_task) = replica(&redis.url(), "secret-b", allowed).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (headers, body) = loop {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no replica delivered the notification after the restart")
            .unwrap();
        if got.0 == 'b' {
            break (got.1, got.2);
        }
    };
    let job: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status"], "cancelled");
    let h = |n: &str| headers[n].to_str().unwrap().to_string();
    let (wid, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    assert!(wid.contains(&id), "webhook-id {wid} does not name the job");
    let t: i64 = ts.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - t).abs() < 300, "{ts}");
    let signed = [wid.as_bytes(), b".", ts.as_bytes(), b".", &body].concat();
    let expected = format!("v1,{}", b64(&hmac(b"secret-b", &signed)));
    assert!(
        sig.split(' ').any(|s| s == expected),
        "webhook-signature {sig} is not {expected}"
    );
    // The documented header stays.
    assert_eq!(
        h("x-raibid-signature"),
        raibid_dispatcher::notify::sign(b"secret-b", &body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_reason_is_masked_and_bounded() {
    let env = spawn_app(Options::default()).await;
    let token = "tok-e2e-0123456789abcdef";
    let long = "x".repeat(64 * 1024);
    let mut ids = Vec::new();
    for (name, value) in [("masked", token), ("long", long.as_str())] {
        let repo = env.tmp.path().join(name);
        let (url, _) = make_repo(
            &repo,
            &[(
                ".raibid.yaml",
                &format!("timeout: \"{value}\"\nsteps:\n  - name: a\n    run: echo hi\n"),
            )],
        );
        let (s, v) = env
            .api_post("/api/v1/jobs", json!({"repo_url": url, "ref": "main"}))
            .await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let token_file = env.tmp.path().join("git-token");
    std::fs::write(&token_file, token).unwrap();
    let mut cfg = env.agent_config("agent-reason");
    cfg.git_token_file = Some(token_file);
    // A token is only sent to named hosts (file:// clones get none).
    cfg.allowed_hosts = "git.test".into();
    let agent = env.start_agent_with(cfg);
    let masked = env.wait_final(&ids[0], Duration::from_secs(120)).await;
    let long = env.wait_final(&ids[1], Duration::from_secs(120)).await;
    agent.stop().await;
    let reason = masked["failure_reason"].as_str().unwrap();
    assert!(reason.contains("timeout"), "{reason}");
    assert!(
        !reason.contains(token),
        "the reason shows the agent's git token: {reason}"
    );
    assert!(reason.contains("***"), "{reason}");
    let reason = long["failure_reason"].as_str().unwrap();
    assert!(
        reason.len() <= raibid_core::job::MAX_FAILURE_REASON + 64,
        "{} bytes",
        reason.len()
    );
    assert!(reason.ends_with("[truncated]"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raibid_yaml_image_is_not_handed_over_with_a_patch_or_into_a_reserved_namespace() {
    let env = spawn_app(Options::default()).await;
    let patch = "--- a/note.txt\n+++ b/note.txt\n@@ -1 +1 @@\n-a\n+b\n";
    let mut ids = Vec::new();
    for (name, image, with_patch) in [
        ("reserved", "raibid/raibid-agent", false),
        ("patched", "team/app", true),
    ] {
        let repo = env.tmp.path().join(name);
        let (url, _) = make_repo(
            &repo,
            &[
                ("note.txt", "a\n"),
                (".raibid.yaml", &format!("image:\n  name: {image}\n")),
            ],
        );
        let mut body = json!({"repo_url": url, "ref": "main"});
        if with_patch {
            body["patch"] = json!(patch);
        }
        let (s, v) = env.api_post("/api/v1/jobs", body).await;
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let agent = env.start_agent("agent-handover");
    let reserved = env.wait_final(&ids[0], Duration::from_secs(120)).await;
    let patched = env.wait_final(&ids[1], Duration::from_secs(120)).await;
    agent.stop().await;
    for (job, needle) in [(&reserved, "reserved"), (&patched, "patch")] {
        assert_eq!(job["status"], "failed", "{job}");
        let reason = job["failure_reason"].as_str().unwrap();
        assert!(
            reason.contains("not handed over") && reason.contains(needle),
            "{reason}"
        );
    }
    // No image job was made.
    let (_, list) = env.api_get("/api/v1/jobs?limit=50").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{list}");
}
