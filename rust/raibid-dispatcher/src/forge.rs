//! Calls to Gitea: `POST /api/v1/repos/{owner}/{repo}/mirror-sync` and
//! `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}`, and the commit-status reporter that turns job
//! events into statuses.

use crate::AppState;
use raibid_core::job::{Job, Status};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A Gitea API client.
#[derive(Clone)]
pub struct Gitea {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Commit status state (Gitea `CommitStatusState`).
pub fn status_state(s: Status) -> &'static str {
    match s {
        Status::Queued
        | Status::Running
        | Status::Building
        | Status::Testing
        | Status::Publishing => "pending",
        Status::Succeeded => "success",
        Status::Failed | Status::TimedOut => "failure",
        Status::Cancelled => "error",
    }
}

fn path_segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Split and check `owner/name` so it can go into a URL path.
pub fn split_repo(full: &str) -> Option<(&str, &str)> {
    let (o, r) = full.split_once('/')?;
    (path_segment_ok(o) && path_segment_ok(r)).then_some((o, r))
}

impl Gitea {
    /// A client for `base` (e.g. `http://gitea-http.gitea:3000`).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Gitea> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("raibid-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Gitea {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.post(format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("token {t}"));
        }
        r
    }

    /// Ask Gitea to sync a pull mirror now.
    pub async fn mirror_sync(&self, full: &str) -> anyhow::Result<()> {
        let (o, r) = split_repo(full).ok_or_else(|| anyhow::anyhow!("bad repository name"))?;
        let resp = self
            .post(&format!("/repos/{o}/{r}/mirror-sync"))
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("Gitea answered {} to mirror-sync of {full}", resp.status());
        }
        Ok(())
    }

    /// Post a commit status.
    pub async fn post_status(
        &self,
        full: &str,
        sha: &str,
        state: &str,
        context: &str,
        description: &str,
        target_url: &str,
    ) -> anyhow::Result<()> {
        let (o, r) = split_repo(full).ok_or_else(|| anyhow::anyhow!("bad repository name"))?;
        if !sha.bytes().all(|b| b.is_ascii_hexdigit()) || sha.is_empty() {
            anyhow::bail!("bad sha");
        }
        let body = serde_json::json!({
            "state": state,
            "context": context,
            "description": description,
            "target_url": target_url,
        });
        let resp = self
            .post(&format!("/repos/{o}/{r}/statuses/{sha}"))
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "Gitea answered {} to a commit status for {full}@{sha}",
                resp.status()
            );
        }
        Ok(())
    }
}

fn description(job: &Job) -> String {
    let d = match job.status {
        Status::Queued => "queued".to_string(),
        Status::Running => format!("running on {}", job.agent.as_deref().unwrap_or("an agent")),
        Status::Building | Status::Testing | Status::Publishing => format!(
            "{} on {}",
            job.status,
            job.agent.as_deref().unwrap_or("an agent")
        ),
        Status::Succeeded => "all steps passed".to_string(),
        _ => job
            .failure_reason
            .clone()
            .unwrap_or_else(|| job.status.to_string()),
    };
    // Gitea limits descriptions; keep it short.
    d.chars().take(140).collect()
}

/// Report commit statuses for job events: pending on claim, the final state at the end. Runs in every
/// dispatcher replica; the consumer group shares the work.
pub async fn status_reporter(state: AppState) {
    let Some(gitea) = state.settings.gitea.clone() else {
        tracing::info!("no Gitea URL configured: commit statuses are not reported");
        return;
    };
    let consumer = format!(
        "{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    let block = Duration::from_secs(5);
    loop {
        let mut con = match state.queue.blocking_connection(block).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "status reporter: redis unreachable");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let events = match state.queue.read_events(&mut con, &consumer, block).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "status reporter: read failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            };
            let mut done = Vec::new();
            for (id, ev) in events {
                if ev.kind == "job_claimed" || ev.kind == "job_finished" {
                    report(&state, &gitea, &ev.job, ev.status).await;
                }
                done.push(id);
            }
            if let Err(e) = state.queue.ack_events(&done).await {
                tracing::warn!(error = %e, "status reporter: ack failed");
            }
        }
    }
}

async fn report(state: &AppState, gitea: &Gitea, job_id: &str, status: Status) {
    let Ok(mut job) = state.queue.get(job_id).await else {
        return;
    };
    // Report the state the event announced, not whatever the job has reached since.
    if !status.is_final() {
        job.status = status;
    }
    let (Some(repo), Some(sha)) = (job.source.forge_repo.as_deref(), job.source.sha.as_deref())
    else {
        return;
    };
    let target = format!("{}/api/v1/jobs/{}", state.settings.public_url, job.id);
    let st = status_state(job.status);
    for attempt in 0..3u32 {
        match gitea
            .post_status(
                repo,
                sha,
                st,
                &job.status_context(),
                &description(&job),
                &target,
            )
            .await
        {
            Ok(()) => {
                state
                    .counters
                    .statuses_posted
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!(job = %job.id, attempt, error = %e, "commit status not posted");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
            }
        }
    }
    state
        .counters
        .statuses_failed
        .fetch_add(1, Ordering::Relaxed);
}
