//! A fake GitHub REST API for commit statuses. GitHub cannot run here, so every call is checked
//! against GitHub's published OpenAPI description (the `repos/create-commit-status` operation and the
//! `status` schema extracted into tests/fixtures/github/create-commit-status.json, source in its
//! README): path template, method, the headers GitHub requires (a bearer token, `Accept`,
//! `X-GitHub-Api-Version`, `User-Agent`), the request body against the operation's schema (types,
//! `enum`, `required`, no unknown field), and its own 201 answers against the `status` schema.
//!
//! Scripted answers play outages and rate limits: `script` queues answers (status + headers) used
//! before the normal behaviour (201 for a known commit, 422 `No commit found for SHA` for an unknown
//! one, as GitHub answers).

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const GITHUB_TOKEN: &str = "github_pat_test_statuses_only";

/// A recorded call.
#[derive(Debug, Clone)]
pub struct GhCall {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub answered: u16,
    pub at: Instant,
    /// Wall clock (Unix seconds) of the answer: rate-limit resets are wall-clock times.
    pub unix: f64,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

struct Contract {
    doc: Value,
}

const TEMPLATE: &str = "/repos/{owner}/{repo}/statuses/{sha}";

impl Contract {
    fn load() -> Contract {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/create-commit-status.json");
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("the GitHub API contract {}: {e}", p.display()));
        Contract {
            doc: serde_json::from_str(&text).expect("fixture JSON"),
        }
    }

    fn op(&self) -> &Value {
        &self.doc["paths"][TEMPLATE]["post"]
    }

    /// `(owner, repo, sha)` of a path matching the template, else the problem.
    fn match_path(&self, method: &str, path: &str) -> Result<(String, String, String), String> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let t: Vec<&str> = TEMPLATE.trim_start_matches('/').split('/').collect();
        if segs.len() != t.len()
            || !t
                .iter()
                .zip(&segs)
                .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
        {
            return Err(format!(
                "no operation of the GitHub API contract matches {path}"
            ));
        }
        if self.doc["paths"][TEMPLATE]
            .get(method.to_ascii_lowercase())
            .is_none()
        {
            return Err(format!("{method} is not an operation of {TEMPLATE}"));
        }
        Ok((segs[1].into(), segs[2].into(), segs[4].into()))
    }

    /// A value against an OpenAPI 3.0 schema (the subset these schemas use).
    fn check_value(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/components/schemas/");
            match self.doc["components"]["schemas"].get(name) {
                Some(s) => return self.check_value(s, v, at, errs),
                // Not extracted (nullable-simple-user): only null is known to fit.
                None => {
                    if !v.is_null() {
                        errs.push(format!("{at}: {r} is not in the fixture; send null"));
                    }
                    return;
                }
            }
        }
        if v.is_null() {
            if schema["nullable"] != true {
                errs.push(format!("{at}: null but not nullable"));
            }
            return;
        }
        let ty = schema["type"].as_str().unwrap_or("");
        let ok = match ty {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{at}: {v} is not {ty}"));
            return;
        }
        if let Some(en) = schema["enum"].as_array() {
            if !en.contains(v) {
                errs.push(format!("{at}: {v} is not one of {en:?}"));
            }
        }
        if ty == "object" {
            let obj = v.as_object().unwrap();
            let props = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for r in schema["required"].as_array().cloned().unwrap_or_default() {
                let r = r.as_str().unwrap_or("");
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: required `{r}` missing"));
                }
            }
            for (k, val) in obj {
                match props.get(k) {
                    Some(ps) => self.check_value(ps, val, &format!("{at}.{k}"), errs),
                    None => errs.push(format!("{at}: unknown field `{k}`")),
                }
            }
        }
    }

    fn check_request(&self, headers: &HeaderMap, body: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        if h("authorization") != format!("Bearer {GITHUB_TOKEN}") {
            errs.push("missing `Authorization: Bearer <token>`".into());
        }
        if h("accept") != "application/vnd.github+json" {
            errs.push(format!(
                "Accept is `{}`, not application/vnd.github+json",
                h("accept")
            ));
        }
        if h("x-github-api-version") != "2022-11-28" {
            errs.push(format!(
                "X-GitHub-Api-Version is `{}`, not the fixture's 2022-11-28",
                h("x-github-api-version")
            ));
        }
        if h("user-agent").is_empty() {
            errs.push("GitHub refuses requests without a User-Agent".into());
        }
        let rb = &self.op()["requestBody"];
        if rb["required"] == true && body.is_null() {
            errs.push("the request body is required".into());
        }
        let schema = &rb["content"]["application/json"]["schema"];
        self.check_value(schema, body, "request", &mut errs);
        errs
    }

    fn check_response(&self, status: u16, body: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let resp = &self.op()["responses"][status.to_string()];
        if resp.is_null() {
            return errs;
        }
        let schema = &resp["content"]["application/json"]["schema"];
        self.check_value(schema, body, "201 answer", &mut errs);
        errs
    }
}

/// The fake.
pub struct FakeGitHub {
    pub base: String,
    calls: Arc<Mutex<Vec<GhCall>>>,
    violations: Arc<Mutex<Vec<String>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// While true, every call is answered 503 (after the script is used up).
    down: Arc<Mutex<bool>>,
    /// Commits GitHub has (`owner/repo@sha`, lower case); others get 422.
    commits: Arc<Mutex<HashSet<String>>>,
}

impl FakeGitHub {
    pub async fn start() -> FakeGitHub {
        let contract = Arc::new(Contract::load());
        let calls: Arc<Mutex<Vec<GhCall>>> = Default::default();
        let violations: Arc<Mutex<Vec<String>>> = Default::default();
        let script: Arc<Mutex<VecDeque<Scripted>>> = Default::default();
        let down: Arc<Mutex<bool>> = Default::default();
        let commits: Arc<Mutex<HashSet<String>>> = Default::default();
        let (c, v, sc, dn, cm, ct) = (
            calls.clone(),
            violations.clone(),
            script.clone(),
            down.clone(),
            commits.clone(),
            contract.clone(),
        );
        let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (c, v, sc, dn, cm, ct, next_id) = (
                    c.clone(),
                    v.clone(),
                    sc.clone(),
                    dn.clone(),
                    cm.clone(),
                    ct.clone(),
                    next_id.clone(),
                );
                async move {
                    let body: Value = if body.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into()))
                    };
                    let record = |answered: u16| {
                        c.lock().unwrap().push(GhCall {
                            method: method.to_string(),
                            path: uri.path().to_string(),
                            body: body.clone(),
                            answered,
                            at: Instant::now(),
                            unix: std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs_f64(),
                        })
                    };
                    let (owner, repo, sha) = match ct.match_path(method.as_str(), uri.path()) {
                        Ok(p) => p,
                        Err(e) => {
                            v.lock().unwrap().push(e.clone());
                            record(404);
                            return (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({"message": "Not Found"}))).into_response();
                        }
                    };
                    let errs = ct.check_request(&headers, &body);
                    if !errs.is_empty() {
                        v.lock().unwrap().extend(errs.clone());
                        record(422);
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            axum::Json(serde_json::json!({"message": "Validation Failed", "errors": errs})),
                        )
                            .into_response();
                    }
                    let scripted = sc.lock().unwrap().pop_front();
                    if let Some(s) = scripted {
                        record(s.status);
                        let mut r = (StatusCode::from_u16(s.status).unwrap(), axum::Json(s.body)).into_response();
                        for (k, val) in s.headers {
                            r.headers_mut().insert(
                                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                val.parse().unwrap(),
                            );
                        }
                        return r;
                    }
                    if *dn.lock().unwrap() {
                        record(503);
                        return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
                    }
                    let key = format!("{owner}/{repo}@{sha}").to_ascii_lowercase();
                    if !cm.lock().unwrap().contains(&key) {
                        record(422);
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            axum::Json(serde_json::json!({
                                "message": format!("No commit found for SHA: {sha}"),
                                "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status"
                            })),
                        )
                            .into_response();
                    }
                    let id = next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    let answer = serde_json::json!({
                        "url": format!("https://api.github.com/repos/{owner}/{repo}/statuses/{sha}"),
                        "avatar_url": null,
                        "id": id,
                        "node_id": format!("SC_{id}"),
                        "state": body["state"],
                        "description": body.get("description").cloned().unwrap_or(Value::Null),
                        "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
                        "context": body.get("context").cloned().unwrap_or(Value::String("default".into())),
                        "created_at": now,
                        "updated_at": now,
                        "creator": null,
                    });
                    // The fake's own answer must fit the published schema too.
                    v.lock().unwrap().extend(ct.check_response(201, &answer));
                    record(201);
                    (StatusCode::CREATED, axum::Json(answer)).into_response()
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        FakeGitHub {
            base,
            calls,
            violations,
            script,
            down,
            commits,
        }
    }

    /// GitHub has this commit of `owner/repo`.
    pub fn add_commit(&self, full: &str, sha: &str) {
        self.commits
            .lock()
            .unwrap()
            .insert(format!("{full}@{sha}").to_ascii_lowercase());
    }

    pub fn calls(&self) -> Vec<GhCall> {
        self.calls.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Answer 503 to everything (after the script) while `down`.
    pub fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    /// Queue one answer.
    pub fn script(&self, status: u16, headers: &[(&str, &str)], body: Value) {
        self.script.lock().unwrap().push_back(Scripted {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body,
        });
    }

    pub fn scripted_left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}
