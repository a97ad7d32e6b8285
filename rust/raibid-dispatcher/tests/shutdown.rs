//! The dispatcher binary: SIGTERM finishes in-flight requests (an open live-log stream included) and
//! exits 0; `--help` explains every option; a missing token is a clear startup error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::testkit::{free_port, RedisServer};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_raibid-dispatcher");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_streams_and_exits_cleanly() {
    let redis = RedisServer::start().unwrap();
    let port = free_port().unwrap();
    let mut child = Command::new(BIN)
        .env("RAIBID_REDIS_URL", redis.url())
        .env("RAIBID_API_TOKEN", "shutdown-token")
        .env("RAIBID_LISTEN", format!("127.0.0.1:{port}"))
        // The job below names a file:// repository (local mode); the default refuses it at submit.
        .env("RAIBID_ALLOWED_SCHEMES", "file")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "dispatcher did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A queued job nobody runs, and a client following its log: a response that never ends by itself.
    let job: serde_json::Value = http
        .post(format!("{base}/api/v1/jobs"))
        .bearer_auth("shutdown-token")
        .json(&serde_json::json!({"repo_url": "file:///nowhere", "ref": "main"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let follow = http
        .get(format!(
            "{base}/api/v1/jobs/{}/logs?follow=true",
            job["id"].as_str().unwrap()
        ))
        .bearer_auth("shutdown-token")
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status().as_u16(), 200);
    let t0 = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        t0.elapsed()
    );
    // The stream was closed, not cut: reading it to the end succeeds.
    let rest = tokio::time::timeout(Duration::from_secs(5), follow.text())
        .await
        .unwrap();
    assert!(rest.is_ok());
    // The job is still there for the next dispatcher.
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "the port is closed"
    );
}

#[test]
fn help_explains_every_option_and_a_missing_token_is_a_clear_error() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "RAIBID_REDIS_URL",
        "RAIBID_API_TOKEN",
        "RAIBID_GITEA_WEBHOOK_SECRET",
        "RAIBID_LEASE_SECS",
        "--body-limit",
        "mirror-sync",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
    let out = Command::new(BIN)
        .env_remove("RAIBID_API_TOKEN")
        .env_remove("RAIBID_API_TOKEN_FILE")
        .env("RAIBID_REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no API token: set RAIBID_API_TOKEN or RAIBID_API_TOKEN_FILE"),
        "{err}"
    );
    // Secrets given on the environment are not echoed by --help.
    let out = Command::new(BIN)
        .arg("--help")
        .env("RAIBID_API_TOKEN", "do-not-print-me")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("do-not-print-me"));
}
