//! MCP for coding agents: Streamable HTTP at `POST /mcp` (the official Rust SDK, `rmcp`), served
//! statelessly so any dispatcher replica answers any request. In front of the SDK: the same bearer token
//! as `/api/v1` (401 before any MCP processing) and `Origin` validation (403 unless the origin is listed
//! in `RAIBID_MCP_ALLOWED_ORIGINS`; coding agents send none). The SDK itself checks `Host` against
//! loopback plus `RAIBID_MCP_ALLOWED_HOSTS` (DNS-rebinding protection) and the `Origin` again.
//!
//! `tools` holds the tools (their schemas derive from the same Rust types as the REST API), `logs` the
//! bounded log windows of `get_logs`.

pub mod logs;
pub mod tools;

use crate::AppState;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use raibid_core::contract::http;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
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
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::api::require_token,
        ))
}

/// True when `origin` is one of the allowed origins (exact `scheme://host[:port]` match).
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let o = origin.trim_end_matches('/');
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
}

async fn check_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get("origin") {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, &state.settings.mcp_allowed_origins));
        if !ok {
            return (
                StatusCode::FORBIDDEN,
                Json(json!({"error": {"code": "forbidden_origin", "message": "this Origin may not call /mcp (see RAIBID_MCP_ALLOWED_ORIGINS)"}})),
            )
                .into_response();
        }
    }
    next.run(req).await
}
