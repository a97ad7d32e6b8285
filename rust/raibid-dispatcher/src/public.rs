//! The public, read-only job page a commit status links to: `GET /public/jobs/{id}/{token}`.
//!
//! A person clicking a status in Gitea has a browser, not the API's bearer token, so the link carries
//! its own credential: `token` = the first 128 bits of HMAC-SHA256 over the job id, keyed with a key
//! derived from the API token. It is unguessable, needs no storage (every replica computes the same
//! one), opens exactly one job, and is invalidated with the API token. The page shows the job's status,
//! steps and (bounded) log as plain HTML, every value escaped; an unknown job or a wrong token is the
//! same 404, so the route tells nothing about which jobs exist.

use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use hmac::{Hmac, Mac};
use raibid_core::contract::http;
use raibid_core::job::{is_valid_job_id, Job};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use subtle::ConstantTimeEq;

/// Log lines shown on the page (the API serves the rest).
pub const PAGE_LOG_LINES: usize = 5000;

fn page_key(api_token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"raibid public job page v1\0");
    h.update(api_token.as_bytes());
    h.finalize().into()
}

/// The page token of a job.
pub fn job_token(api_token: &str, job_id: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&page_key(api_token)) else {
        // HMAC takes keys of any length; this cannot happen.
        return String::new();
    };
    mac.update(job_id.as_bytes());
    let tag = mac.finalize().into_bytes();
    tag.iter().take(16).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The public page URL of a job (the commit status' `target_url`).
pub fn job_page_url(settings: &crate::Settings, job_id: &str) -> String {
    format!(
        "{}{}/{job_id}/{}",
        settings.public_url,
        http::PUBLIC_JOBS_PATH,
        job_token(&settings.api_token, job_id)
    )
}

/// A job as the dispatcher's answers show it (REST, MCP `get_job`, what `raibid-top` and the CLI
/// read): the public record with its page URL, so a user finds the page without a forge.
pub fn answer(settings: &crate::Settings, job: &Job) -> Job {
    let mut j = job.public();
    j.page_url = Some(job_page_url(settings, &j.id));
    j
}

/// The route's path template.
pub fn route_path() -> String {
    format!("{}/{{id}}/{{token}}", http::PUBLIC_JOBS_PATH)
}

/// The public artifact download's path template (issue 23 §2): same token as the page.
pub fn artifact_route_path() -> String {
    format!(
        "{}/{{id}}/{{token}}/artifacts/{{*name}}",
        http::PUBLIC_JOBS_PATH
    )
}

/// `GET /public/jobs/{id}/{token}/artifacts/{name}`: one artifact of a job whose page the token opens.
pub async fn artifact(
    State(state): State<AppState>,
    Path((id, token, name)): Path<(String, String, String)>,
) -> Response {
    let expected = job_token(&state.settings.api_token, &id);
    if !is_valid_job_id(&id) || !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
        return not_found();
    }
    let job = match state.queue.get(&id).await {
        Ok(j) => j,
        Err(_) => return not_found(),
    };
    match crate::artifacts::stream_file(&state, &job, &name).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [("cache-control", "no-store")],
        Html("<!doctype html><title>not found</title><p>No such job page.</p>".to_string()),
    )
        .into_response()
}

/// `GET /public/jobs/{id}/{token}`.
pub async fn job_page(
    State(state): State<AppState>,
    Path((id, token)): Path<(String, String)>,
) -> Response {
    let expected = job_token(&state.settings.api_token, &id);
    if !is_valid_job_id(&id) || !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
        return not_found();
    }
    let job = match state.queue.get(&id).await {
        Ok(j) => j,
        Err(raibid_core::queue::QueueError::NotFound(_)) => return not_found(),
        Err(e) => {
            tracing::warn!(error = %e, "public job page: queue unavailable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Html("<!doctype html><title>unavailable</title><p>The job store is unavailable; reload in a moment.</p>".to_string()),
            )
                .into_response();
        }
    };
    let lines = state
        .queue
        .read_log(&id, None, PAGE_LOG_LINES)
        .await
        .unwrap_or_default();
    let mut log = String::new();
    for l in &lines {
        let _ = writeln!(log, "[{}] {}", esc(&l.step), esc(&l.line));
    }
    if lines.len() >= PAGE_LOG_LINES {
        let _ = writeln!(
            log,
            "… first {PAGE_LOG_LINES} lines shown; the API serves the whole log"
        );
    }
    let refresh = if job.status.is_final() {
        ""
    } else {
        "<meta http-equiv=\"refresh\" content=\"5\">"
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>raibid job {id} · {status}</title>\
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#111;color:#ddd;padding:1em;overflow-x:auto}}td,th{{padding:0 1em 0 0;text-align:left}}</style></head><body>\
<h1>job {id}: {status}</h1>{summary}<h2>steps</h2><table><tr><th>step</th><th>status</th><th>exit</th><th>ms</th></tr>{steps}</table>{artifacts}<h2>log</h2><pre>{log}</pre></body></html>",
        id = esc(&job.id),
        status = esc(job.status.as_str()),
        summary = summary(&job),
        steps = steps(&job),
        artifacts = artifacts(&job, &token),
    );
    (
        StatusCode::OK,
        [("cache-control", "no-store"), ("x-robots-tag", "noindex")],
        Html(html),
    )
        .into_response()
}

fn summary(job: &Job) -> String {
    let mut o = String::from("<table>");
    let mut row = |k: &str, v: &str| {
        let _ = write!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    };
    row(
        "repository",
        &crate::guard::redact_url(&job.source.repo_url),
    );
    row("ref", &job.source.git_ref);
    row(
        "commit",
        job.source.sha.as_deref().unwrap_or("tip of the ref"),
    );
    if let Some(p) = &job.pipeline {
        row("pipeline", p);
    }
    if let Some(r) = &job.failure_reason {
        row("reason", r);
    }
    row("attempt", &job.attempt.to_string());
    o.push_str("</table>");
    o
}

/// The artifacts' links (relative to the page, under the same token).
fn artifacts(job: &Job, token: &str) -> String {
    let Some(set) = &job.artifacts else {
        return String::new();
    };
    let base = format!("{}/{}/{token}/artifacts", http::PUBLIC_JOBS_PATH, job.id);
    let list = crate::artifacts::list_of(job, &base);
    let mut o = String::from(
        "<h2>artifacts</h2><table><tr><th>file</th><th>bytes</th><th>digest</th></tr>",
    );
    for f in &list.files {
        let _ = write!(
            o,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&f.download_url),
            esc(&f.name),
            f.size,
            esc(&f.digest)
        );
    }
    let _ = write!(o, "</table><p><code>{}</code></p>", esc(&set.reference));
    o
}

fn steps(job: &Job) -> String {
    let mut o = String::new();
    for s in &job.steps {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.name),
            esc(&s.status),
            s.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            s.duration_ms.map(|c| c.to_string()).unwrap_or_default()
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_job_and_per_key() {
        let a = job_token("k1", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        assert_eq!(a.len(), 32);
        assert_eq!(a, job_token("k1", "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert_ne!(a, job_token("k2", "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert_ne!(a, job_token("k1", "01ARZ3NDEKTSV4RRFFQ69G5FAW"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }
}
