//! MCP for coding agents: Streamable HTTP at `POST /mcp` (the official Rust SDK, `rmcp`), served
//! statelessly so any dispatcher replica answers any request. In front of the SDK: the same bearer token
//! as `/api/v1` (401 before any MCP processing) and `Origin` validation (403 unless the origin is listed
//! in `RAIBID_MCP_ALLOWED_ORIGINS` or is the server's own loopback origin; coding agents send none). The SDK itself checks `Host` against
//! loopback plus `RAIBID_MCP_ALLOWED_HOSTS` (DNS-rebinding protection) and the `Origin` again.
//!
//! A 401 carries `WWW-Authenticate: Bearer realm="raibid"` (RFC 6750), so clients ask for the token
//! instead of starting an OAuth flow. Requests the SDK would answer with a transport error get their
//! JSON-RPC error here (HTTP 400): malformed JSON -32700, not a request -32600, `tools/call` whose
//! `params` or `arguments` is not an object -32602.
//!
//! A second, read-only token (`RAIBID_MCP_READONLY_TOKEN`) lists and calls only the read-only tools.
//!
//! `tools` holds the tools (their schemas derive from the same Rust types as the REST API), `logs` the
//! bounded log windows of `get_logs`, `budget` the one answer budget every tool answer passes, `schema`
//! the published tool list.

pub mod budget;
pub mod logs;
pub mod schedules;
pub mod schema;
pub mod tools;

use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use raibid_core::contract::http;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};
use std::sync::Arc;

/// `Host` values answered besides the configured ones (the SDK's loopback default).
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The SDK's configuration for these settings.
pub fn config(state: &AppState) -> StreamableHttpServerConfig {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
    hosts.extend(state.settings.mcp_allowed_hosts.iter().cloned());
    StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(Some(std::time::Duration::from_secs(15)))
        .with_allowed_hosts(hosts)
        .with_allowed_origins(state.settings.mcp_allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(state.settings.body_limit)
}

/// The `/mcp` route, with its token and origin checks. Merged into the dispatcher's router.
pub fn router(state: &AppState) -> Router<AppState> {
    let st = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(tools::Raibid::new(st.clone())),
        Arc::new(NeverSessionManager::default()),
        config(state),
    );
    Router::new()
        .route_service(http::MCP_PATH, service)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            jsonrpc_boundary,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(middleware::from_fn_with_state(state.clone(), check_token))
        .layer(middleware::map_response(www_authenticate))
}

/// What the bearer token of a `/mcp` request may do (a request extension; the tools read it from the
/// HTTP request parts rmcp passes along).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The API token: every tool.
    Full,
    /// `RAIBID_MCP_READONLY_TOKEN`: only the read-only tools.
    ReadOnly,
}

fn same_secret(expected: &str, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    bool::from(Sha256::digest(expected.as_bytes()).ct_eq(&Sha256::digest(given.as_bytes())))
}

/// The API token (full access) or the read-only token, checked before any MCP processing.
async fn check_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let access = if given.is_empty() {
        None
    } else if same_secret(&state.settings.api_token, given) {
        Some(Access::Full)
    } else if state
        .settings
        .mcp_readonly_token
        .as_deref()
        .is_some_and(|t| !t.is_empty() && same_secret(t, given))
    {
        Some(Access::ReadOnly)
    } else {
        None
    };
    let Some(access) = access else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "unauthorized", "message": "missing or invalid credentials"}})),
        )
            .into_response();
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 6750).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"raibid\"";

async fn www_authenticate(mut r: Response) -> Response {
    if r.status() == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        );
    }
    r
}

fn jsonrpc_error(id: Value, code: i64, message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The JSON-RPC error a message gets before the SDK sees it, if any: (id, code, message).
pub fn jsonrpc_refusal(body: &[u8]) -> Option<(Value, i64, String)> {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some((Value::Null, -32700, format!("Parse error: {e}"))),
    };
    let Value::Object(m) = &v else {
        // Batches (arrays) are the SDK's to answer.
        return (!v.is_array()).then(|| {
            (
                Value::Null,
                -32600,
                "Invalid Request: a JSON-RPC message is an object".into(),
            )
        });
    };
    let id = m.get("id").cloned().unwrap_or(Value::Null);
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some((
            id,
            -32600,
            "Invalid Request: `jsonrpc` must be \"2.0\"".into(),
        ));
    }
    let is_response = m.contains_key("result") || m.contains_key("error");
    let method = m.get("method");
    if !is_response && !method.is_some_and(Value::is_string) {
        return Some((
            id,
            -32600,
            "Invalid Request: `method` must be a string".into(),
        ));
    }
    if method.and_then(Value::as_str) == Some("tools/call") {
        let params = m.get("params");
        if !params.is_some_and(Value::is_object) {
            return Some((
                id,
                -32602,
                "Invalid params: `params` must be an object with `name` and `arguments`".into(),
            ));
        }
        if params
            .and_then(|p| p.get("arguments"))
            .is_some_and(|a| !a.is_object() && !a.is_null())
        {
            return Some((
                id,
                -32602,
                "Invalid params: `arguments` must be an object".into(),
            ));
        }
    }
    None
}

async fn jsonrpc_boundary(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, state.settings.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": format!("Invalid Request: body larger than {} bytes", state.settings.body_limit)}})),
            )
                .into_response()
        }
    };
    if let Some((id, code, message)) = jsonrpc_refusal(&bytes) {
        return jsonrpc_error(id, code, message);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// True when `origin` is one of the allowed origins (exact `scheme://host[:port]` match).
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let o = origin.trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
}

/// True when `origin` is the server's own loopback origin: `http://<Host>` with a loopback `Host`
/// (a page served by this very server; a DNS-rebinding page has a foreign `Host`, which the SDK refuses).
pub fn same_loopback_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else { return false };
    let name = host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(n, _)| n);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    LOOPBACK_HOSTS.contains(&name)
        && origin
            .trim_end_matches('/')
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

async fn check_origin(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get("origin") {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let listed = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, &state.settings.mcp_allowed_origins));
        let own = origin.to_str().is_ok_and(|o| same_loopback_origin(o, host));
        if own && !listed {
            // Checked here; the SDK's own check only knows the listed origins.
            req.headers_mut().remove(header::ORIGIN);
        }
        if !(listed || own) {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": {"code": "forbidden_origin", "message": "this Origin may not call /mcp (see RAIBID_MCP_ALLOWED_ORIGINS)"}})),
            )
                .into_response();
        }
    }
    next.run(req).await
}
