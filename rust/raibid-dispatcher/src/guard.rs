//! What the HTTP surfaces share (the REST API, MCP, the public page, image cleanup, intake): the one
//! error type, the bearer-token check, and the clone-URL policy and redaction. Below the modules that
//! use it: `api` mounts them, and none of them imports `api` (ADR 0016).

use crate::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raibid_core::queue::QueueError;
use raibid_core::webhook::WebhookError;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The one HTTP error type.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// The message, for callers that report it another way (MCP tool errors).
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        )
    }
    pub(crate) fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", m)
    }
    pub(crate) fn unprocessable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m)
    }
    pub(crate) fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", m)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> ApiError {
        match e {
            QueueError::NotFound(id) => ApiError::not_found(format!("job {id} not found")),
            QueueError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            QueueError::Redis(e) => {
                tracing::error!(error = %e, "redis error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "queue_unavailable",
                    "the job queue is unavailable; retry later",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> ApiError {
        match e {
            WebhookError::BadSignature => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string())
            }
            WebhookError::Malformed(m) => {
                ApiError::bad_request(format!("malformed JSON payload: {m}"))
            }
            WebhookError::Unprocessable(m) => ApiError::unprocessable(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Constant-time token check: compare SHA-256 digests so neither content nor length leaks.
pub(crate) fn token_ok(expected: &str, given: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    bool::from(a.ct_eq(&b))
}

pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.is_empty() || !token_ok(&state.settings.api_token, given.trim()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// The URL with any user information replaced by `***` (`https://TOKEN@host`, `https://u:p@host`),
/// for log lines and pages. Works on text that does not parse as a URL too.
pub fn redact_url(raw: &str) -> String {
    let Some(i) = raw.find("://") else {
        return raw.to_string();
    };
    let rest = &raw[i + 3..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}://***@{}", &raw[..i], &rest[at + 1..]),
        None => raw.to_string(),
    }
}

/// Refuse at submit what no agent will clone: the same scheme and host lists as the agents'
/// `RAIBID_ALLOWED_SCHEMES` / `RAIBID_ALLOWED_HOSTS`, and no credentials inside the URL (agents bring
/// their own; a token in the URL would be stored in the job and shown by the API).
pub(crate) fn check_clone_url(intake: &crate::Intake, raw: &str) -> ApiResult<()> {
    let allowed = || {
        let hosts = if intake.allowed_hosts.is_empty() {
            "any host".to_string()
        } else {
            format!("hosts {}", intake.allowed_hosts.join(", "))
        };
        format!(
            "allowed: schemes {} on {hosts} (RAIBID_ALLOWED_SCHEMES / RAIBID_ALLOWED_HOSTS)",
            intake.allowed_schemes.join(", ")
        )
    };
    let (scheme, host, has_user) = match url::Url::parse(raw) {
        Ok(u) => (
            u.scheme().to_ascii_lowercase(),
            u.host_str().unwrap_or("").to_ascii_lowercase(),
            !u.username().is_empty() || u.password().is_some(),
        ),
        Err(_) => match raw.split_once(':') {
            // scp-like ssh: `git@host:owner/repo`.
            Some((left, _)) if !left.contains('/') && !left.is_empty() => (
                "ssh".to_string(),
                left.rsplit('@').next().unwrap_or("").to_ascii_lowercase(),
                false,
            ),
            _ => {
                return Err(ApiError::unprocessable(format!(
                    "repo_url: not a clone URL; {}",
                    allowed()
                )))
            }
        },
    };
    let scheme = match scheme.as_str() {
        "git+ssh" | "ssh+git" => "ssh".to_string(),
        _ => scheme,
    };
    if has_dot_segment(raw) {
        return Err(ApiError::unprocessable(
            "repo_url: must not contain a dot segment (`.` or `..`, also percent-encoded) in its path: secret scopes and allowlists match the repository path as written",
        ));
    }
    if !intake.allowed_schemes.contains(&scheme) {
        return Err(ApiError::unprocessable(format!(
            "repo_url: scheme `{scheme}` is not cloned by any agent; {}",
            allowed()
        )));
    }
    if scheme != "file" && !intake.allowed_hosts.is_empty() && !intake.allowed_hosts.contains(&host)
    {
        return Err(ApiError::unprocessable(format!(
            "repo_url: host `{host}` is not cloned by any agent; {}",
            allowed()
        )));
    }
    if has_user && (scheme == "http" || scheme == "https") {
        return Err(ApiError::unprocessable(
            "repo_url: must not carry credentials (agents use their configured git token)",
        ));
    }
    Ok(())
}

/// True when the path of a clone URL (`scheme://host/path` or scp-like `host:path`) has a `.` or `..`
/// segment, also spelled with percent-encoded dots (`%2e`), or a backslash-separated one.
pub fn has_dot_segment(raw: &str) -> bool {
    let path = match raw.find("://") {
        Some(i) => {
            let rest = &raw[i + 3..];
            rest.find('/').map_or("", |p| &rest[p..])
        }
        None => raw.split_once(':').map_or(raw, |(_, p)| p),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    decoded
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..")
}
