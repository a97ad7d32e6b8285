//! HTTP routes: webhooks, the REST API, health and metrics. One error type, mapped to status codes and
//! JSON bodies `{"error": {"code": "...", "message": "..."}}`; nothing is enqueued on any error.

use crate::guard::{check_clone_url, redact_url, require_token, ApiError, ApiResult};
use crate::requests::{self, validate_submit, ListJobs, SubmitJob};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use raibid_core::contract::{http, keys};
use raibid_core::job::{is_valid_job_id, Job, Source, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, QueueError};
use raibid_core::webhook::{self, PushOutcome};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Build the router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/jobs", post(submit_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/logs", get(get_logs))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/jobs/{id}/retry", post(retry_job))
        .route(
            "/jobs/{id}/images",
            axum::routing::delete(crate::images::delete_job_images),
        )
        .route("/jobs/{id}/artifacts", get(crate::artifacts::list))
        .route(
            "/jobs/{id}/artifacts/{*name}",
            get(crate::artifacts::download),
        )
        .route("/queue", get(queue_stats))
        .route("/agents", get(agents))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/mirrors", get(crate::mirrors::list))
        .merge(crate::events::router())
        .merge(crate::groups::router())
        .merge(crate::schedules::router())
        .fallback(|| async { ApiError::not_found("no such API route") })
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(http::GITEA_WEBHOOK_PATH, post(gitea_webhook))
        .route(http::GITHUB_WEBHOOK_PATH, post(github_webhook))
        .route(
            http::HEALTHZ_PATH,
            get(|| async { Json(json!({"status": "ok"})) }),
        )
        .route(http::READYZ_PATH, get(readyz))
        .route(http::METRICS_PATH, get(crate::metrics::metrics))
        .route(&crate::public::route_path(), get(crate::public::job_page))
        .route(
            &crate::public::artifact_route_path(),
            get(crate::public::artifact),
        )
        .nest(http::API_PREFIX, api)
        .merge(crate::mcp::router(&state))
        .with_state(state)
}

/// Read a body up to the limit: 413 past it (by Content-Length, or while reading a chunked body).
async fn read_body(state: &AppState, headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    let limit = state.settings.body_limit;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.to_string().contains("length limit") {
                return too_large();
            }
            src = s.source();
        }
        ApiError::bad_request(format!("could not read the request body: {e}"))
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn reject(state: &AppState, e: impl Into<ApiError>) -> ApiError {
    state
        .counters
        .webhooks_rejected
        .fetch_add(1, Ordering::Relaxed);
    e.into()
}

fn ignored(state: &AppState, reason: &str) -> Response {
    state
        .counters
        .webhooks_ignored
        .fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::OK,
        Json(json!({"status": "ignored", "reason": reason})),
    )
        .into_response()
}

fn redis_unavailable(e: redis::RedisError) -> ApiError {
    tracing::error!(error = %e, "redis error");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_unavailable",
        "the job queue is unavailable; retry later",
    )
}

/// `raibid:push:{sha256(forge, repo, ref, sha)}`.
fn push_key(forge: &str, push: &webhook::Push) -> String {
    let mut h = Sha256::new();
    for part in [
        forge,
        &push.repo_full_name.to_ascii_lowercase(),
        &push.git_ref,
        &push.sha,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    format!("{}{}", keys::PUSH_DEDUP_PREFIX, hex_lower(&h.finalize()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            use std::fmt::Write as _;
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Release a push key this request set (to its job's id) when that job was not queued.
const RELEASE_PUSH_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn duplicate(state: &AppState, id: Option<&str>) -> Response {
    state
        .counters
        .webhooks_duplicate
        .fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::OK,
        Json(json!({"status": "duplicate", "job": id, "duplicate": true})),
    )
        .into_response()
}

async fn enqueue_push(
    state: &AppState,
    push: webhook::Push,
    kind: TriggerKind,
    forge: &str,
    delivery: Option<&str>,
    forge_repo: Option<String>,
) -> ApiResult<Response> {
    check_clone_url(&state.settings.intake, &push.clone_url).map_err(|e| reject(state, e))?;
    let now = Utc::now();
    let key = push_key(forge, &push);
    let job = Job::new(
        Source {
            repo_url: push.clone_url,
            git_ref: push.git_ref,
            sha: Some(push.sha),
            trigger: Trigger {
                kind,
                actor: push.actor,
            },
            delivery_id: delivery.map(str::to_string),
            forge_repo,
            patch: None,
            notify_url: None,
        },
        now,
    );
    // A signed body replayed with a fresh delivery id: the (repo, ref, sha) was queued within the
    // window. `SET NX` with the new job's id makes the check and the claim one step (one round trip on
    // the common path); the key is removed again when no job comes of this request.
    let window = state.settings.intake.push_dedup;
    let mut con = state.queue.redis();
    let claimed = if window.is_zero() {
        false
    } else {
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&job.id)
            .arg("NX")
            .arg("EX")
            .arg(window.as_secs().max(1))
            .query_async(&mut con)
            .await
            .map_err(redis_unavailable)?;
        if set.is_none() {
            let existing: Option<String> = con.get(&key).await.map_err(redis_unavailable)?;
            tracing::info!(git_ref = %job.source.git_ref, sha = ?job.source.sha, "push already queued within the de-duplication window");
            return Ok(duplicate(state, existing.as_deref()));
        }
        true
    };
    let job_id = job.id.clone();
    let result = state.queue.enqueue(job, delivery.map(|d| (forge, d))).await;
    if claimed {
        let r: redis::RedisResult<()> = match &result {
            Ok(Enqueued::New(_)) => Ok(()),
            // The delivery id was seen before: the key names that job.
            Ok(Enqueued::Duplicate(id)) => redis::cmd("SET")
                .arg(&key)
                .arg(id)
                .arg("XX")
                .arg("KEEPTTL")
                .query_async(&mut con)
                .await
                .map(|_: Option<String>| ()),
            Err(_) => redis::Script::new(RELEASE_PUSH_LUA)
                .key(&key)
                .arg(&job_id)
                .invoke_async(&mut con)
                .await
                .map(|_: i64| ()),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "push de-duplication key not updated");
        }
    }
    match result? {
        Enqueued::New(job) => {
            state
                .counters
                .webhooks_enqueued
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(job = %job.id, repo = %redact_url(&job.source.repo_url), git_ref = %job.source.git_ref, "job queued from webhook");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"status": "queued", "job": job.id, "duplicate": false})),
            )
                .into_response())
        }
        Enqueued::Duplicate(id) => Ok(duplicate(state, Some(&id))),
    }
}

fn delivery_id<'a>(state: &AppState, h: &'a HeaderMap, name: &str) -> ApiResult<Option<&'a str>> {
    match header(h, name) {
        None => Ok(None),
        Some(d) if webhook::valid_delivery_id(d) => Ok(Some(d)),
        Some(_) => Err(reject(
            state,
            ApiError::bad_request(format!("{name} is not a delivery id")),
        )),
    }
}

async fn gitea_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&state, &headers, body)
        .await
        .map_err(|e| reject(&state, e))?;
    let secret = state.settings.gitea_secret.as_deref().unwrap_or("");
    webhook::verify_gitea(
        secret.as_bytes(),
        &body,
        header(&headers, webhook::GITEA_SIGNATURE_HEADER),
    )
    .map_err(|e| reject(&state, e))?;
    let event = header(&headers, webhook::GITEA_EVENT_HEADER).unwrap_or("");
    if event != "push" {
        return Ok(ignored(&state, &format!("event `{event}` is not built")));
    }
    let delivery = delivery_id(&state, &headers, webhook::GITEA_DELIVERY_HEADER)?;
    match webhook::parse_push(&body).map_err(|e| reject(&state, e))? {
        PushOutcome::Ignore(why) => Ok(ignored(&state, why)),
        PushOutcome::Build(push) => {
            let repo = Some(push.repo_full_name.clone());
            enqueue_push(
                &state,
                push,
                TriggerKind::GiteaPush,
                "gitea",
                delivery,
                repo,
            )
            .await
        }
    }
}

async fn github_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&state, &headers, body)
        .await
        .map_err(|e| reject(&state, e))?;
    let secret = state.settings.github_secret.as_deref().unwrap_or("");
    webhook::verify_github(
        secret.as_bytes(),
        &body,
        header(&headers, webhook::GITHUB_SIGNATURE_HEADER),
    )
    .map_err(|e| reject(&state, e))?;
    let event = header(&headers, webhook::GITHUB_EVENT_HEADER).unwrap_or("");
    if event == "ping" {
        return Ok((StatusCode::OK, Json(json!({"status": "pong"}))).into_response());
    }
    if event != "push" {
        return Ok(ignored(&state, &format!("event `{event}` is not built")));
    }
    // Checked (a malformed one is refused) although the job, if any, comes from Gitea's webhook.
    delivery_id(&state, &headers, webhook::GITHUB_DELIVERY_HEADER)?;
    let push = match webhook::parse_push(&body).map_err(|e| reject(&state, e))? {
        PushOutcome::Ignore(why) => return Ok(ignored(&state, why)),
        PushOutcome::Build(p) => p,
    };
    // GitHub repositories build through their Gitea pull mirror (the mapping comes from Gitea).
    crate::mirrors::github_push(&state, &push).await
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.queue.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            // The reason goes to the log only: this route is unauthenticated.
            tracing::warn!(error = %e, "readyz: redis unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "the job queue is unavailable"})),
            )
                .into_response()
        }
    }
}

async fn submit_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&state, &headers, body).await?;
    let req: SubmitJob = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let v = validate_submit(req, &state.settings.notify_allowed_hosts)
        .map_err(ApiError::unprocessable)?;
    requests::check_policy(
        &state,
        &v.repo_url,
        v.notify_url.as_deref(),
        v.image.as_ref(),
    )
    .map_err(ApiError::unprocessable)?;
    match requests::create_job(&state, v, None).await? {
        Enqueued::New(job) => Ok((StatusCode::CREATED, Json(state.answer(&job))).into_response()),
        Enqueued::Duplicate(id) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("duplicate of {id}"),
        )),
    }
}

async fn list_jobs(
    State(state): State<AppState>,
    q: Result<Query<ListJobs>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let page = requests::list_jobs(&state, &q, 50)
        .await?
        .map_err(ApiError::unprocessable)?;
    Ok(Json(page).into_response())
}

fn check_id(id: &str) -> ApiResult<()> {
    if is_valid_job_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("job {id} not found")))
    }
}

async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    check_id(&id)?;
    Ok(Json(state.answer(&state.queue.get(&id).await?)))
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    check_id(&id)?;
    let job = state.queue.cancel(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(state.answer(&job))).into_response())
}

async fn retry_job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    check_id(&id)?;
    let job = requests::retry(&state, &id).await?.map_err(|r| match r {
        requests::Refused::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        requests::Refused::Unprocessable(m) => ApiError::unprocessable(m),
    })?;
    Ok((StatusCode::CREATED, Json(state.answer(&job))).into_response())
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    /// Only the lines of this step (image jobs: a phase, `building`/`testing`/`publishing`).
    #[serde(alias = "phase")]
    step: Option<String>,
    follow: Option<bool>,
    after: Option<String>,
    limit: Option<usize>,
}

fn valid_seq(s: &str) -> bool {
    let mut parts = s.split('-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

async fn get_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(a) = q.after.as_deref() {
        if !valid_seq(a) {
            return Err(ApiError::unprocessable("after: not a log sequence id"));
        }
    }
    // 404 for unknown jobs.
    let job = state.queue.get(&id).await?;
    if q.follow.unwrap_or(false) {
        // An EventSource reconnect sends the id of the last event it saw: resume after it, so the
        // lines already shown are not sent again (it wins over `after`, which the first request set).
        let after = match header(&headers, "last-event-id").map(str::trim) {
            Some(l) if !l.is_empty() => {
                if !valid_seq(l) {
                    return Err(ApiError::unprocessable(
                        "Last-Event-ID: not a log sequence id",
                    ));
                }
                Some(l.to_string())
            }
            _ => q.after,
        };
        return Ok(follow(state, id, after, q.step).await.into_response());
    }
    let limit = q.limit.unwrap_or(10_000).clamp(1, 100_000);
    let mut lines = state.queue.read_log(&id, q.after.as_deref(), limit).await?;
    if let Some(st) = q.step.as_deref() {
        lines.retain(|l| l.step == st);
    }
    let truncated = state.queue.log_truncated(&id).await?;
    Ok(Json(crate::openapi::LogPage {
        job: job.id.to_string(),
        status: job.status,
        lines,
        truncated,
    })
    .into_response())
}

/// Server-Sent Events: `log` events (one line each, JSON, `id` = its sequence id), then one `end`
/// event when the job is final, or one `gone` event when its record no longer exists.
/// Tails the log stream with a blocking `XREAD` on its own connection, not a polling loop.
async fn follow(
    state: AppState,
    id: String,
    after: Option<String>,
    step: Option<String>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(256);
    let mut stopping = state.stopping.clone();
    tokio::spawn(async move {
        let block = Duration::from_millis(1000);
        let mut last = after.unwrap_or_else(|| "0-0".to_string());
        let mut con = None;
        loop {
            if con.is_none() {
                match state.queue.blocking_connection(block).await {
                    Ok(c) => con = Some(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if tx.is_closed() {
                            return;
                        }
                        continue;
                    }
                }
            }
            // Read the job's status before the lines: a final status is written only after the agent
            // flushed its log, so an empty read after seeing a final status means the log is complete.
            let final_status = match state.queue.get(&id).await {
                Ok(j) if j.status.is_final() => Some(j.status),
                Ok(_) => None,
                Err(QueueError::NotFound(_)) => {
                    // The record is gone (expired or removed): say so; it did not fail.
                    let _ = tx
                        .send(SseEvent::default().event("gone").data(
                            json!({"error": {"code": "not_found", "message": format!("job {id} no longer exists")}})
                                .to_string(),
                        ))
                        .await;
                    return;
                }
                Err(_) => None,
            };
            let Some(c) = con.as_mut() else { continue };
            let wait = if final_status.is_some() {
                Duration::from_millis(1)
            } else {
                block
            };
            let lines = match state.queue.follow_log(c, &id, &last, wait).await {
                Ok(l) => l,
                Err(_) => {
                    con = None;
                    continue;
                }
            };
            let empty = lines.is_empty();
            for l in lines {
                last = l.seq.clone();
                if step.as_deref().is_some_and(|s| s != l.step) {
                    continue;
                }
                let ev = SseEvent::default()
                    .event("log")
                    .id(l.seq.clone())
                    .data(serde_json::to_string(&l).unwrap_or_default());
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            if empty {
                if let Some(st) = final_status {
                    let _ = tx
                        .send(
                            SseEvent::default()
                                .event("end")
                                .data(json!({"status": st}).to_string()),
                        )
                        .await;
                    return;
                }
            }
            if tx.is_closed() || *stopping.borrow_and_update() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn queue_stats(State(state): State<AppState>) -> ApiResult<Response> {
    Ok(Json(state.queue.stats().await?).into_response())
}

async fn agents(State(state): State<AppState>) -> ApiResult<Response> {
    let agents = state.queue.agents().await?;
    Ok(Json(crate::openapi::AgentList { agents }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::token_ok;

    #[test]
    fn token_comparison() {
        assert!(token_ok("abc", "abc"));
        assert!(!token_ok("abc", "abd"));
        assert!(!token_ok("abc", "abcd"));
        assert!(!token_ok("abc", ""));
    }

    #[test]
    fn submit_validation() {
        let s = |u: &str, r: &str, sha: Option<&str>| SubmitJob {
            repo_url: u.into(),
            git_ref: r.into(),
            sha: sha.map(Into::into),
            ..SubmitJob::default()
        };
        let v = |x| validate_submit(x, &[]);
        assert_eq!(
            v(s("file:///r", "main", None)).unwrap().git_ref,
            "refs/heads/main"
        );
        assert_eq!(
            v(s("file:///r", "refs/tags/v1", None)).unwrap().git_ref,
            "refs/tags/v1"
        );
        assert!(v(s("", "main", None)).is_err());
        assert!(v(s("--upload-pack=x", "main", None)).is_err());
        assert!(v(s("file:///r", "-x", None)).is_err());
        assert!(v(s("file:///r", "a..b", None)).is_err());
        assert!(v(s("file:///r", "main", Some("abc"))).is_err());
        assert!(v(s("file:///r", "main", Some(&"a".repeat(40)))).is_ok());
        let mut p = s("file:///r", "main", None);
        p.patch = Some("not a diff".into());
        assert!(v(p.clone()).unwrap_err().starts_with("patch:"));
        p.patch = Some("x".repeat(requests::MAX_PATCH_BYTES + 1));
        assert!(v(p).unwrap_err().contains("limit"));
        let mut n = s("file:///r", "main", None);
        n.notify_url = Some("http://127.0.0.1:9/".into());
        assert!(v(n).unwrap_err().starts_with("notify_url:"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://ghp_TOKEN@gitea.local/o/r.git"),
            "https://***@gitea.local/o/r.git"
        );
        assert_eq!(
            redact_url("https://user:pass@gitea.local/o/r.git?x=@y"),
            "https://***@gitea.local/o/r.git?x=@y"
        );
        assert_eq!(
            redact_url("https://gitea.local/o/r.git"),
            "https://gitea.local/o/r.git"
        );
        assert_eq!(redact_url("git@host:o/r"), "git@host:o/r");
        assert_eq!(redact_url("http://a b@host/x"), "http://***@host/x");
    }

    #[test]
    fn log_seq_validation() {
        assert!(valid_seq("1700000000000-0"));
        assert!(!valid_seq("1-2-3"));
        assert!(!valid_seq("abc"));
        assert!(!valid_seq("-"));
    }
}
