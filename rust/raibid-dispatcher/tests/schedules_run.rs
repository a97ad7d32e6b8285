//! Scheduled jobs run end to end (issue 22 §3): a real Redis, the dispatcher's scheduler, a real agent
//! in-process running a real local git repository's pipeline in its sandbox. The variant reaches the
//! step; `skip_unchanged` skips a due time whose commit the schedule's last job built successfully
//! within one period, and builds again once the ref moves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

async fn schedule(env: &TestEnv, id: &str) -> Value {
    let (st, v) = env.api_get(&format!("/api/v1/schedules/{id}")).await;
    assert_eq!(st, 200, "{v}");
    v
}

async fn scheduled_jobs(env: &TestEnv, id: &str) -> Vec<Value> {
    let (_, v) = env.api_get("/api/v1/jobs?limit=500").await;
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["schedule_id"] == id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_job_runs_its_variant_and_skips_an_unchanged_commit() {
    let env = spawn_app(Options::default()).await;
    let dir = env.tmp.path().join("sched-repo");
    let pipeline =
        "steps:\n  - name: variant\n    run: echo \"CARGO_UPDATE=${CARGO_UPDATE:-unset}\"\n";
    let (url, sha) = make_repo(&dir, &[(".raibid.yaml", pipeline)]);
    let agent = env.start_agent("agent-sched");
    // A push of the repository came from Gitea (`owner/hello`): the schedule's jobs report their
    // commit status there too.
    let (st, v) = env
        .gitea_push(
            &gitea_payload(&url, &sha, "refs/heads/main"),
            "sched-push-1",
        )
        .await;
    assert_eq!(st, 202, "{v}");
    env.wait_final(v["job"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    let (st, s) = env
        .api_post(
            "/api/v1/schedules",
            json!({"repo_url": url, "ref": "main", "cron": "*/5 * * * * *",
                   "env": {"CARGO_UPDATE": "1"}, "skip_unchanged": true}),
        )
        .await;
    assert_eq!(st, 201, "{s}");
    let id = s["id"].as_str().unwrap().to_string();

    // The first due time builds the commit the ref points at (resolved at the due time).
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        if let Some(j) = scheduled_jobs(&env, &id).await.first() {
            break j.clone();
        }
        assert!(Instant::now() < deadline, "the schedule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first["source"]["sha"], sha.as_str(), "{first}");
    let done = env
        .wait_final(first["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["source"]["forge_repo"], "owner/hello", "{done}");
    assert_eq!(done["source"]["trigger"]["kind"], "schedule");
    let first_id = first["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let posted = env.gitea.calls().iter().any(|c| {
            c.path == format!("/api/v1/repos/owner/hello/statuses/{sha}")
                && c.body["state"] == "success"
                && c.body["target_url"]
                    .as_str()
                    .unwrap_or("")
                    .contains(&first_id)
        });
        if posted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no success status for the scheduled job: {:?}",
            env.gitea.calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        env.gitea.violations().is_empty(),
        "{:?}",
        env.gitea.violations()
    );
    let (_, logs) = env
        .api_get(&format!(
            "/api/v1/jobs/{}/logs?step=variant",
            first["id"].as_str().unwrap()
        ))
        .await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"CARGO_UPDATE=1"), "{lines:?}");
    // A retry builds the same variant.
    let (st, again) = env
        .api_post(
            &format!("/api/v1/jobs/{}/retry", first["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(st, 201, "{again}");
    assert_eq!(again["env"]["CARGO_UPDATE"], "1", "{again}");
    assert_eq!(again["schedule_id"], id.as_str());
    assert_eq!(again["source"]["trigger"]["kind"], "retry");

    // A later due time on the same commit is skipped: no job for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let skipped = loop {
        let v = schedule(&env, &id).await;
        if let Some(t) = v["last_skipped"].as_str() {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "no due time was skipped: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let due_ms = chrono::DateTime::parse_from_rfc3339(&skipped)
        .unwrap()
        .timestamp_millis();
    let delivery = format!("{id}:{due_ms}");
    assert!(
        !scheduled_jobs(&env, &id)
            .await
            .iter()
            .any(|j| j["source"]["delivery_id"] == delivery.as_str()),
        "a skipped due time made a job"
    );

    // The ref moves: the next due time builds the new commit.
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["commit", "-q", "--allow-empty", "-m", "next"]);
    let new_sha = git(&["rev-parse", "HEAD"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = scheduled_jobs(&env, &id).await;
        if jobs.iter().any(|j| j["source"]["sha"] == new_sha.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new commit was not built: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
}
