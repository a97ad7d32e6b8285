//! Test harness: a real Redis (own process, free port), the real dispatcher on port 0, real agents
//! in-process, real git repositories, a fake Gitea and a fake GitHub. Gitea cannot run here, so the fake
//! checks every call against the upstream API contract in
//! shared/reference/forgejo-11-gitea-1.22-api.swagger.json (path template, method, auth header, query
//! parameters, body fields and types; its repository answers against the `Repository` definition) and
//! answers like Gitea. GitHub cannot either: `github.rs` checks calls and answers against GitHub's
//! OpenAPI description (tests/fixtures/github).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod github;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use raibid_dispatcher::{forge::Gitea, Settings};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-api-token-0123456789";
pub const GITEA_SECRET: &str = "gitea-webhook-secret";
pub const GITHUB_SECRET: &str = "github-webhook-secret";
pub const GITEA_TOKEN: &str = "gitea-api-token-abcdef";

/// Path of the shared reference directory (shared/ sits beside the repository).
pub fn reference_dir() -> PathBuf {
    if let Ok(d) = std::env::var("RAIBID_REFERENCE_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference")
}

/// A recorded call to the fake Gitea.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub auth: Option<String>,
    pub body: Value,
    /// The HTTP status the fake answered.
    pub answered: u16,
}

/// A fake Gitea that validates calls against the swagger contract.
pub struct FakeGitea {
    pub base: String,
    pub calls: Arc<Mutex<Vec<Call>>>,
    pub violations: Arc<Mutex<Vec<String>>>,
    /// While set and in the future, every call is answered 503 (a Gitea outage).
    pub down_until: Arc<Mutex<Option<Instant>>>,
    /// Repositories Gitea has (the search answers the mirrors among them).
    pub repos: Arc<Mutex<Vec<Value>>>,
}

struct Swagger {
    doc: Value,
}

impl Swagger {
    fn load() -> Swagger {
        let p = reference_dir().join("forgejo-11-gitea-1.22-api.swagger.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "the Gitea API contract {} is needed by this test: {e}",
                p.display()
            )
        });
        Swagger {
            doc: serde_json::from_str(&text).expect("swagger JSON"),
        }
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/definitions/");
                &self.doc["definitions"][name]
            }
            None => v,
        }
    }

    /// Check one call; return the problems found.
    fn check(&self, method: &str, path: &str, auth: Option<&str>, body: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let base = self.doc["basePath"].as_str().unwrap_or("/api/v1");
        let Some(rel) = path.strip_prefix(base) else {
            return vec![format!("{path} is not under {base}")];
        };
        let segs: Vec<&str> = rel.split('/').collect();
        let paths = self.doc["paths"].as_object().expect("paths");
        let found = paths.iter().find(|(tmpl, _)| {
            let t: Vec<&str> = tmpl.split('/').collect();
            t.len() == segs.len()
                && t.iter()
                    .zip(&segs)
                    .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
        });
        let Some((tmpl, item)) = found else {
            return vec![format!("no API path matches {rel}")];
        };
        let Some(op) = item.get(method.to_ascii_lowercase()) else {
            return vec![format!("{method} is not an operation of {tmpl}")];
        };
        // Auth: the swagger's AuthorizationHeaderToken scheme is `Authorization: token <t>`.
        let sec = &self.doc["securityDefinitions"]["AuthorizationHeaderToken"];
        if sec["in"] != "header" || sec["name"] != "Authorization" {
            errs.push("swagger has no AuthorizationHeaderToken header scheme".into());
        }
        if !auth.is_some_and(|a| a.starts_with("token ")) {
            errs.push(format!("{method} {tmpl}: missing `Authorization: token …`"));
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        match params.iter().find(|p| p["in"] == "body") {
            Some(bp) => {
                let schema = self.resolve(&bp["schema"]);
                let props = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let Some(obj) = body.as_object() else {
                    errs.push(format!("{method} {tmpl}: body is not a JSON object"));
                    return errs;
                };
                for req in schema["required"].as_array().cloned().unwrap_or_default() {
                    let r = req.as_str().unwrap_or("");
                    if !obj.contains_key(r) {
                        errs.push(format!("{method} {tmpl}: required field `{r}` missing"));
                    }
                }
                for (k, v) in obj {
                    let Some(ps) = props.get(k) else {
                        errs.push(format!("{method} {tmpl}: unknown field `{k}`"));
                        continue;
                    };
                    let ps = self.resolve(ps);
                    let ty = ps["type"].as_str().unwrap_or("");
                    let ok = match ty {
                        "string" => v.is_string(),
                        "boolean" => v.is_boolean(),
                        "integer" => v.is_i64() || v.is_u64(),
                        "array" => v.is_array(),
                        "object" => v.is_object(),
                        _ => true,
                    };
                    if !ok {
                        errs.push(format!("{method} {tmpl}: field `{k}` should be {ty}"));
                    }
                    // Enumerations documented in the description ("It can be \"pending\", ...").
                    let desc = ps["description"].as_str().unwrap_or("");
                    if desc.contains("It can be") {
                        let allowed: Vec<&str> = desc.split('"').skip(1).step_by(2).collect();
                        if let Some(s) = v.as_str() {
                            if !allowed.contains(&s) {
                                errs.push(format!(
                                    "{method} {tmpl}: `{k}` = {s} is not one of {allowed:?}"
                                ));
                            }
                        }
                    }
                }
            }
            None => {
                if !body.is_null() && body != &Value::Object(Default::default()) {
                    errs.push(format!("{method} {tmpl}: takes no body"));
                }
            }
        }
        errs
    }
}

impl Swagger {
    /// Query parameters of a GET must be parameters of the operation.
    fn check_query(&self, tmpl: &str, method: &str, query: &str) -> Vec<String> {
        let op = &self.doc["paths"][tmpl][method.to_ascii_lowercase()];
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let mut errs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match params.iter().find(|p| p["name"] == k && p["in"] == "query") {
                None => errs.push(format!("{method} {tmpl}: unknown query parameter `{k}`")),
                Some(p) => {
                    let ok = match p["type"].as_str().unwrap_or("") {
                        "integer" => v.parse::<i64>().is_ok(),
                        "boolean" => v == "true" || v == "false",
                        _ => true,
                    };
                    if !ok {
                        errs.push(format!("{method} {tmpl}: `{k}={v}` is not a {}", p["type"]));
                    }
                }
            }
        }
        errs
    }

    /// An answer's object against a definition: every field is a property of it, of its type.
    fn check_object(&self, def: &str, v: &Value) -> Vec<String> {
        let schema = &self.doc["definitions"][def];
        let Some(obj) = v.as_object() else {
            return vec![format!("answer is not a {def} object")];
        };
        let mut errs = Vec::new();
        for (k, val) in obj {
            let Some(ps) = schema["properties"].get(k) else {
                errs.push(format!("{def} has no field `{k}`"));
                continue;
            };
            let ty = if ps.get("$ref").is_some() {
                "object"
            } else {
                ps["type"].as_str().unwrap_or("")
            };
            let ok = val.is_null()
                || match ty {
                    "string" => val.is_string(),
                    "boolean" => val.is_boolean(),
                    "integer" => val.is_i64() || val.is_u64(),
                    "array" => val.is_array(),
                    "object" => val.is_object(),
                    _ => true,
                };
            if !ok {
                errs.push(format!("{def}.{k} should be {ty}"));
            }
        }
        errs
    }

    /// The template that matches a path (under the base path).
    fn template(&self, path: &str) -> Option<String> {
        let rel = path.strip_prefix("/api/v1")?;
        let segs: Vec<&str> = rel.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .keys()
            .find(|tmpl| {
                let t: Vec<&str> = tmpl.split('/').collect();
                t.len() == segs.len()
                    && t.iter()
                        .zip(&segs)
                        .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
            })
            .cloned()
    }
}

/// A Gitea pull mirror as `GET /repos/search` shows it (fields of the swagger's `Repository`).
pub fn mirror_repo(full_name: &str, original_url: &str) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    serde_json::json!({
        "id": 1, "name": name, "full_name": full_name,
        "owner": {"id": 1, "login": owner, "username": owner},
        "mirror": true, "original_url": original_url, "mirror_interval": "8h0m0s",
        "mirror_updated": "2026-01-01T00:00:00Z", "empty": false, "private": false,
        "default_branch": "main",
        "clone_url": format!("http://gitea/{full_name}.git"), "html_url": format!("http://gitea/{full_name}"),
    })
}

impl FakeGitea {
    /// Make `full_name` a pull mirror of `original_url` (as `mirror.nu` does with `/repos/migrate`).
    pub fn add_mirror(&self, full_name: &str, original_url: &str) {
        self.repos
            .lock()
            .unwrap()
            .push(mirror_repo(full_name, original_url));
    }

    /// Calls of the repository search (the mirror mapping's reads).
    pub fn searches(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.path == "/api/v1/repos/search")
            .count()
    }

    pub async fn start() -> FakeGitea {
        let swagger = Arc::new(Swagger::load());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let down_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let repos: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let (c, v, s, d, rp) = (
            calls.clone(),
            violations.clone(),
            swagger.clone(),
            down_until.clone(),
            repos.clone(),
        );
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (c, v, s, d, rp) = (c.clone(), v.clone(), s.clone(), d.clone(), rp.clone());
            async move {
                let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::String("<not json>".into())) };
                let auth = headers.get("authorization").and_then(|h| h.to_str().ok()).map(str::to_string);
                let mut errs = s.check(method.as_str(), uri.path(), auth.as_deref(), &body);
                if let (Some(tmpl), Some(q)) = (s.template(uri.path()), uri.query()) {
                    errs.extend(s.check_query(&tmpl, method.as_str(), q));
                }
                let down = d.lock().unwrap().is_some_and(|t| Instant::now() < t);
                if !down && errs.is_empty() && method == Method::GET {
                    // Reads: the repository search (mode=mirror) and one repository.
                    let q: HashMap<String, String> = uri.query().unwrap_or("").split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    let all = rp.lock().unwrap().clone();
                    let (status, answer) = if uri.path() == "/api/v1/repos/search" {
                        let mirrors: Vec<Value> = all.into_iter().filter(|r| q.get("mode").map(String::as_str) != Some("mirror") || r["mirror"] == true).collect();
                        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(30);
                        let page: usize = q.get("page").and_then(|l| l.parse().ok()).unwrap_or(1);
                        let data: Vec<Value> = mirrors.into_iter().skip((page.max(1) - 1) * limit).take(limit).collect();
                        (200, serde_json::json!({"ok": true, "data": data}))
                    } else {
                        let full = uri.path().trim_start_matches("/api/v1/repos/").to_string();
                        match all.into_iter().find(|r| r["full_name"].as_str() == Some(full.as_str())) {
                            Some(r) => (200, r),
                            None => (404, serde_json::json!({"message": "The target couldn't be found."})),
                        }
                    };
                    // What the fake answers is checked too: the search's SearchResults of Repository.
                    let mut answer_errs = Vec::new();
                    if status == 200 {
                        if let Some(data) = answer.get("data") {
                            answer_errs.extend(s.check_object("SearchResults", &answer));
                            for r in data.as_array().unwrap() {
                                answer_errs.extend(s.check_object("Repository", r));
                            }
                        } else {
                            answer_errs.extend(s.check_object("Repository", &answer));
                        }
                    }
                    v.lock().unwrap().extend(answer_errs);
                    c.lock().unwrap().push(Call { method: method.to_string(), path: uri.path().to_string(), auth, body: body.clone(), answered: status });
                    return (StatusCode::from_u16(status).unwrap(), axum::Json(answer)).into_response();
                }
                let answered = if down { 503 } else if !errs.is_empty() { 422 } else if uri.path().ends_with("/mirror-sync") { 200 } else { 201 };
                c.lock().unwrap().push(Call { method: method.to_string(), path: uri.path().to_string(), auth, body: body.clone(), answered });
                if down {
                    return (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response();
                }
                if !errs.is_empty() {
                    v.lock().unwrap().extend(errs.clone());
                    return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(serde_json::json!({"message": errs.join("; ")}))).into_response();
                }
                if uri.path().ends_with("/mirror-sync") {
                    StatusCode::OK.into_response()
                } else {
                    (StatusCode::CREATED, axum::Json(serde_json::json!({"id": 1, "status": body["state"], "context": body["context"]}))).into_response()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        FakeGitea {
            base,
            calls,
            violations,
            down_until,
            repos,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Answer 503 to every call for `d` from now.
    pub fn go_down_for(&self, d: Duration) {
        *self.down_until.lock().unwrap() = Some(Instant::now() + d);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

/// A running stack: Redis, dispatcher, fake Gitea.
pub struct TestEnv {
    pub redis: RedisServer,
    pub queue: Queue,
    pub base: String,
    pub gitea: FakeGitea,
    pub github: github::FakeGitHub,
    /// The dispatcher's settings (a restart starts it again with them).
    pub settings: Settings,
    pub http: reqwest::Client,
    pub tmp: tempfile::TempDir,
    dispatcher: Option<raibid_testkit::Dispatcher>,
}

pub struct Options {
    pub body_limit: usize,
    pub mirrors: &'static str,
    pub lease_secs: u64,
    pub max_attempts: u32,
    /// Last changes to the dispatcher's settings (MCP and notification options).
    pub settings: fn(&mut Settings),
    pub intake: raibid_dispatcher::Intake,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            body_limit: 5 * 1024 * 1024,
            mirrors: "",
            lease_secs: 30,
            max_attempts: 3,
            settings: |_| {},
            // Tests clone file:// repositories (the agents here allow file too).
            intake: raibid_dispatcher::Intake {
                allowed_schemes: raibid_dispatcher::csv_list("file,http,https,ssh"),
                ..raibid_dispatcher::Intake::default()
            },
        }
    }
}

pub async fn spawn_app(opts: Options) -> TestEnv {
    let redis = RedisServer::start().expect("redis-server");
    let queue = Queue::connect(
        &redis.url(),
        QueueConfig {
            max_attempts: opts.max_attempts,
            ..QueueConfig::default()
        },
    )
    .await
    .expect("connect");
    let gitea = FakeGitea::start().await;
    let gh = github::FakeGitHub::start().await;
    let mut intake = opts.intake.clone();
    intake.github_api_url = gh.base.clone();
    intake.github = Some(
        raibid_dispatcher::github::GitHub::new(&gh.base, github::GITHUB_TOKEN.into()).unwrap(),
    );
    // The suites' one Settings (raibid-testkit), with this stack's forges, secrets and options.
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.gitea_secret = Some(GITEA_SECRET.into());
    settings.github_secret = Some(GITHUB_SECRET.into());
    settings.gitea = Some(Gitea::new(&gitea.base, Some(GITEA_TOKEN.into())).unwrap());
    settings.mirrors = raibid_dispatcher::parse_mirrors(opts.mirrors).unwrap();
    settings.body_limit = opts.body_limit;
    settings.lease = Duration::from_secs(opts.lease_secs);
    settings.intake = intake;
    (opts.settings)(&mut settings);
    let dispatcher = raibid_testkit::Dispatcher::start(queue.clone(), settings.clone())
        .await
        .unwrap();
    TestEnv {
        redis,
        queue,
        base: dispatcher.base.clone(),
        gitea,
        github: gh,
        settings,
        http: reqwest::Client::new(),
        tmp: tempfile::tempdir().unwrap(),
        dispatcher: Some(dispatcher),
    }
}

/// An agent running in this process.
pub struct AgentHandle {
    pub name: String,
    tx: tokio::sync::watch::Sender<bool>,
    join: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl AgentHandle {
    pub async fn stop(self) {
        let _ = self.tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.join).await;
    }
}

impl TestEnv {
    pub fn agent_config(&self, name: &str) -> raibid_agent::AgentConfig {
        // Every option at its default (as the binary parses them), then what the tests need.
        use clap::Parser;
        let mut cfg = raibid_agent::AgentConfig::parse_from(["raibid-agent"]);
        cfg.redis_url = self.redis.url();
        cfg.name = Some(name.into());
        cfg.workspace_dir = self.tmp.path().join("ws");
        cfg.cache_dir = shared_cache_dir();
        cfg.allowed_schemes = "file".into();
        cfg.allowed_hosts = String::new();
        cfg.lease_secs = 30;
        cfg.grace_secs = 60;
        cfg.block_ms = 500;
        cfg.cache_max_bytes = 2 << 30;
        // The e2e secrets test's secret, for every test repository.
        cfg.hardening.secret_scopes = Some("E2E_DEPLOY_TOKEN=*".into());
        // Steps run sandboxed (ADR 0011): what tests read from a step goes through `shared()`.
        cfg.hardening.sandbox_shared_dirs = vec![self.shared()];
        cfg
    }

    /// A directory every step may write (marks the tests read), created on first use.
    pub fn shared(&self) -> std::path::PathBuf {
        let d = self.tmp.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn start_agent(&self, name: &str) -> AgentHandle {
        self.start_agent_with(self.agent_config(name))
    }

    pub fn start_agent_with(&self, cfg: raibid_agent::AgentConfig) -> AgentHandle {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let name = cfg.name.clone().unwrap_or_default();
        let join = tokio::spawn(raibid_agent::run(cfg, rx));
        AgentHandle { name, tx, join }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn gitea_push(&self, body: &[u8], delivery: &str) -> (u16, Value) {
        let sig = raibid_core::webhook::sign_hex(GITEA_SECRET.as_bytes(), body);
        let r = self
            .http
            .post(self.url("/webhooks/gitea"))
            .header("X-Gitea-Event", "push")
            .header("X-Gitea-Delivery", delivery)
            .header("X-Gitea-Signature", sig)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Wait until a job reaches a final status.
    pub async fn wait_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, j) = self.api_get(&format!("/api/v1/jobs/{id}")).await;
            let st = j["status"].as_str().unwrap_or("");
            if ["succeeded", "failed", "cancelled", "timed_out"].contains(&st) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not final within {within:?}: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn job_count(&self) -> usize {
        let (_, v) = self.api_get("/api/v1/jobs?limit=500").await;
        v["jobs"].as_array().map(Vec::len).unwrap_or(0)
    }
}

/// One cargo cache for the whole test run (what the cluster mounts from the node).
pub fn shared_cache_dir() -> PathBuf {
    std::env::temp_dir().join("raibid-test-cache")
}

/// Make a git repository from the example crate (plus extra files); returns (file:// URL, head sha).
pub fn make_repo(dir: &Path, extra: &[(&str, &str)]) -> (String, String) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-raibid");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    for f in ["Cargo.toml", "Cargo.lock", "src/lib.rs", ".gitignore"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    for (name, content) in extra {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=raibid-test",
                "-c",
                "user.email=test@raibid.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "initial"]);
    let sha = git(&["rev-parse", "HEAD"]);
    (format!("file://{}", dir.display()), sha)
}

/// A Gitea push payload (fields per shared/reference/README.md).
pub fn gitea_payload(clone_url: &str, sha: &str, git_ref: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000001",
        "after": sha,
        "compare_url": "http://gitea/o/r/compare",
        "commits": [{"id": sha, "message": "change"}],
        "total_commits": 1,
        "head_commit": {"id": sha},
        "repository": {"full_name": "owner/hello", "clone_url": clone_url, "html_url": "http://gitea/owner/hello"},
        "pusher": {"login": "alice", "username": "alice"},
        "sender": {"login": "alice"}
    }))
    .unwrap()
}

pub fn hash_map_of(v: &Value) -> HashMap<String, Value> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

impl TestEnv {
    /// Begin the dispatcher's graceful shutdown (what SIGTERM does), keeping Redis up.
    pub fn stop_dispatcher(&mut self) {
        // Dropping it begins the graceful shutdown; the server task ends on its own.
        self.dispatcher.take();
    }

    /// Stop the dispatcher and start a new one (same Redis, same settings, a new port): a restart.
    /// Waits until the old one stopped answering, so nothing of it runs on.
    pub async fn restart_dispatcher(&mut self) {
        let old = self.base.clone();
        self.stop_dispatcher();
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{old}/healthz")).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "the old dispatcher does not stop"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let d = raibid_testkit::Dispatcher::start(self.queue.clone(), self.settings.clone())
            .await
            .unwrap();
        self.base = d.base.clone();
        self.dispatcher = Some(d);
    }
}
