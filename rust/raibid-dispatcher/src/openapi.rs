//! The HTTP API described as an OpenAPI 3.1 document (`GET /api/v1/openapi.json`, checked in as
//! `docs/openapi.json`), built from the request and response types: their JSON schemas come from
//! `schemars` (the same derive the MCP tools publish), the endpoint list is [`endpoints`]. A test
//! (`tests/docs.rs`) fails when the checked-in copy differs, when the router serves a route this list
//! does not describe (or the other way round), and when `docs/api.md` lists other endpoints.
//!
//! Adding an endpoint: add its route, a line to [`endpoints`], a row to `docs/api.md`, then
//! `RAIBID_UPDATE_DOCS=1 cargo test -p raibid-dispatcher --test docs` and commit `docs/openapi.json`.

use crate::requests::{JobPage, ListJobs, SubmitJob};
use raibid_core::contract::http;
use raibid_core::event::DeadLetter;
use raibid_core::job::{Job, Status};
use raibid_core::queue_view::{AgentInfo, LogLine, QueueStats};
use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, SchemaGenerator};
use serde::Serialize;
use serde_json::{json, Map, Value};

/// `GET /api/v1/jobs/{id}/logs` (without `follow`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LogPage {
    /// The job.
    pub job: String,
    /// Its status now.
    pub status: Status,
    /// Log lines after `after`, at most `limit`.
    pub lines: Vec<LogLine>,
    /// The log is not whole: the job's output went past the log cap (see the job's `log_truncated`).
    pub truncated: bool,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct AgentList {
    /// Agents with a live heartbeat.
    pub agents: Vec<AgentInfo>,
}

/// `GET /api/v1/dead-letters`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct DeadLetterList {
    /// Jobs that exhausted their attempts, oldest first.
    pub dead_letters: Vec<DeadLetter>,
}

/// `DELETE /api/v1/jobs/{id}/images`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ImageCleanup {
    /// The job.
    pub job: String,
    /// `requested`: image agents remove the job's local image before their next job.
    pub cleanup: String,
    /// The job's local image reference.
    pub local_image: String,
    /// What the job pushed (stays in the registry).
    pub pushed: Vec<serde_json::Value>,
}

/// Answers of the webhooks and of `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StatusAnswer {
    /// `queued`, `duplicate`, `ignored`, `pong`, `mirror_sync`, `ok`, `ready`, `unavailable`.
    pub status: String,
    /// The job, when one was queued (or the first one, for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Whether the delivery was a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// Why it was ignored or is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The mirrored Gitea repository a GitHub push synced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gitea_repo: Option<String>,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// `snake_case` code (`not_found`, `unprocessable`, `conflict`, …).
    pub code: String,
    /// A message naming the problem.
    pub message: String,
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    Open,
    /// `Authorization: Bearer <RAIBID_API_TOKEN>`.
    Bearer,
    /// A forge's HMAC signature of the body.
    Signed,
}

/// What a body is.
enum Body {
    Json(Schema),
    Text(&'static str),
}

type Schema = fn(&mut SchemaGenerator) -> schemars::Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// One endpoint.
pub struct Endpoint {
    /// `GET`, `POST`, `DELETE`.
    pub method: &'static str,
    /// Full path with `{param}`s.
    pub path: String,
    summary: &'static str,
    auth: Auth,
    query: Option<Schema>,
    request: Option<Schema>,
    /// (status, description, body).
    responses: Vec<(u16, &'static str, Option<Body>)>,
}

fn ep(
    method: &'static str,
    path: impl Into<String>,
    summary: &'static str,
    auth: Auth,
) -> Endpoint {
    Endpoint {
        method,
        path: path.into(),
        summary,
        auth,
        query: None,
        request: None,
        responses: Vec::new(),
    }
}

impl Endpoint {
    fn json(mut self, status: u16, what: &'static str, schema: Schema) -> Self {
        self.responses
            .push((status, what, Some(Body::Json(schema))));
        self
    }
    fn text(mut self, status: u16, what: &'static str, content_type: &'static str) -> Self {
        self.responses
            .push((status, what, Some(Body::Text(content_type))));
        self
    }
    fn query(mut self, q: Schema) -> Self {
        self.query = Some(q);
        self
    }
    fn body(mut self, b: Schema) -> Self {
        self.request = Some(b);
        self
    }
}

fn api(p: &str) -> String {
    format!("{}{p}", http::API_PREFIX)
}

/// The path of the OpenAPI document.
pub fn path() -> String {
    api("/openapi.json")
}

/// Every endpoint the dispatcher serves.
pub fn endpoints() -> Vec<Endpoint> {
    use Auth::*;
    vec![
        ep("GET", http::HEALTHZ_PATH, "Liveness: 200 while the process runs.", Open)
            .json(200, "running", s::<StatusAnswer>),
        ep("GET", http::READYZ_PATH, "Readiness: 200 when Redis answers, else 503.", Open)
            .json(200, "ready", s::<StatusAnswer>)
            .json(503, "the job queue is unavailable", s::<StatusAnswer>),
        ep("GET", http::METRICS_PATH, "OpenMetrics text.", Open).text(
            200,
            "metrics",
            "application/openmetrics-text",
        ),
        ep(
            "GET",
            format!("{}/{{id}}/{{token}}", http::PUBLIC_JOBS_PATH),
            "The read-only public job page a commit status links to (a job that is not final refreshes itself).",
            Open,
        )
        .text(200, "the page", "text/html")
        .text(404, "unknown job or wrong token", "text/html"),
        ep(
            "GET",
            format!("{}/{{id}}/{{token}}/artifacts/{{name}}", http::PUBLIC_JOBS_PATH),
            "One artifact of a job whose page is public, with the page's token.",
            Open,
        )
        .text(200, "the file", "application/octet-stream")
        .json(404, "unknown job, artifact or wrong token", s::<ErrorBody>),
        ep("POST", http::GITEA_WEBHOOK_PATH, "Gitea push webhook (X-Gitea-Signature).", Signed)
            .json(202, "queued", s::<StatusAnswer>)
            .json(200, "duplicate or ignored", s::<StatusAnswer>)
            .json(401, "bad or missing signature", s::<ErrorBody>),
        ep("POST", http::GITHUB_WEBHOOK_PATH, "GitHub push webhook (X-Hub-Signature-256).", Signed)
            .json(202, "queued or mirror-synced", s::<StatusAnswer>)
            .json(200, "duplicate, ignored or pong", s::<StatusAnswer>)
            .json(401, "bad or missing signature", s::<ErrorBody>),
        ep("POST", api("/jobs"), "Submit a job (Rust, image, or GPU).", Bearer)
            .body(s::<SubmitJob>)
            .json(201, "the job", s::<Job>)
            .json(400, "malformed body or unknown field", s::<ErrorBody>)
            .json(422, "a value no agent would accept, naming the field", s::<ErrorBody>),
        ep("GET", api("/jobs"), "List jobs, newest first.", Bearer)
            .query(s::<ListJobs>)
            .json(200, "a page of jobs", s::<JobPage>)
            .json(422, "a bad filter, naming it", s::<ErrorBody>),
        ep("GET", api("/jobs/{id}"), "One job.", Bearer)
            .json(200, "the job", s::<Job>)
            .json(404, "no such job", s::<ErrorBody>),
        ep("GET", api("/jobs/{id}/logs"), "A job's log lines; `follow=true`: Server-Sent Events (`log`, then `end` or `gone`).", Bearer)
            .query(s::<LogQueryDoc>)
            .json(200, "log lines", s::<LogPage>)
            .text(200, "with follow=true: the event stream", "text/event-stream")
            .json(404, "no such job", s::<ErrorBody>),
        ep("POST", api("/jobs/{id}/cancel"), "Cancel a job.", Bearer)
            .json(202, "the job", s::<Job>)
            .json(409, "already final", s::<ErrorBody>),
        ep("POST", api("/jobs/{id}/retry"), "Run a finished job again as a new job.", Bearer)
            .json(201, "the new job (`retry_of`)", s::<Job>)
            .json(409, "not final", s::<ErrorBody>)
            .json(422, "the configuration now refuses it", s::<ErrorBody>),
        ep("DELETE", api("/jobs/{id}/images"), "Remove a finished image job's local images.", Bearer)
            .json(202, "requested", s::<ImageCleanup>)
            .json(409, "not final", s::<ErrorBody>)
            .json(422, "not an image job", s::<ErrorBody>),
        ep("GET", api("/jobs/{id}/artifacts"), "The files a job uploaded (`.raibid.yaml` `artifacts:`): names, sizes, digests, download URLs.", Bearer)
            .json(200, "the artifacts", s::<crate::artifacts::ArtifactList>)
            .json(404, "no such job", s::<ErrorBody>),
        ep("GET", api("/jobs/{id}/artifacts/{name}"), "One artifact's bytes, streamed from the registry (`name`: its path in the workspace, or its digest).", Bearer)
            .text(200, "the file", "application/octet-stream")
            .json(404, "no such job or artifact", s::<ErrorBody>)
            .json(502, "the registry does not serve it", s::<ErrorBody>),
        ep("GET", api("/groups"), "Build-matrix groups, newest first.", Bearer)
            .json(200, "a page of groups", s::<crate::groups::GroupPage>),
        ep("GET", api("/groups/{id}"), "One group with its cells.", Bearer)
            .json(200, "the group", s::<raibid_core::matrix::GroupView>)
            .json(404, "no such group", s::<ErrorBody>),
        ep("POST", api("/groups/{id}/cancel"), "Cancel every cell not final yet, then the group.", Bearer)
            .json(202, "the group", s::<raibid_core::matrix::GroupView>)
            .json(404, "no such group", s::<ErrorBody>),
        ep("POST", api("/groups/{id}/retry"), "Run the whole group again as a new push.", Bearer)
            .json(201, "the new group's job", s::<Job>)
            .json(404, "no such group", s::<ErrorBody>)
            .json(409, "not final", s::<ErrorBody>),
        ep("GET", api("/queue"), "Queue figures, in total and per kind.", Bearer)
            .json(200, "figures", s::<QueueStats>),
        ep("GET", api("/agents"), "Agents with a live heartbeat.", Bearer)
            .json(200, "agents", s::<AgentList>),
        ep("GET", api("/mirrors"), "The GitHub → Gitea mirror mapping the dispatcher uses.", Bearer)
            .query(s::<crate::mirrors::MirrorsQuery>)
            .json(200, "the mapping", s::<crate::mirrors::Snapshot>),
        ep("POST", http::SCHEDULES_PATH, "Create a schedule (cron in an IANA time zone).", Bearer)
            .body(s::<crate::schedules::CreateSchedule>)
            .json(201, "the schedule", s::<raibid_core::schedule::ScheduleView>)
            .json(422, "a bad value, naming the field", s::<ErrorBody>),
        ep("GET", http::SCHEDULES_PATH, "Every schedule, oldest first.", Bearer)
            .json(200, "schedules", s::<raibid_core::schedule::ScheduleList>),
        ep("GET", format!("{}/{{id}}", http::SCHEDULES_PATH), "One schedule.", Bearer)
            .json(200, "the schedule", s::<raibid_core::schedule::ScheduleView>)
            .json(404, "no such schedule", s::<ErrorBody>),
        ep("PATCH", format!("{}/{{id}}", http::SCHEDULES_PATH), "Pause, resume or change a schedule.", Bearer)
            .body(s::<crate::schedules::UpdateSchedule>)
            .json(200, "the schedule", s::<raibid_core::schedule::ScheduleView>)
            .json(404, "no such schedule", s::<ErrorBody>)
            .json(422, "a bad value, naming the field", s::<ErrorBody>),
        ep("DELETE", format!("{}/{{id}}", http::SCHEDULES_PATH), "Delete a schedule (its jobs stay).", Bearer)
            .text(204, "deleted", "text/plain")
            .json(404, "no such schedule", s::<ErrorBody>),
        ep("POST", format!("{}/{{id}}/run", http::SCHEDULES_PATH), "Run a schedule's job now.", Bearer)
            .json(201, "the job", s::<Job>)
            .json(404, "no such schedule", s::<ErrorBody>),
        ep("GET", http::EVENTS_PATH, "The live feed raibid-top watches (Server-Sent Events).", Bearer)
            .text(200, "the event stream", "text/event-stream"),
        ep("GET", http::DEAD_LETTERS_PATH, "Jobs that exhausted their attempts.", Bearer)
            .json(200, "dead letters", s::<DeadLetterList>),
        ep("GET", path(), "This document.", Bearer).text(200, "OpenAPI 3.1", "application/json"),
        ep("POST", http::MCP_PATH, "Model Context Protocol (streamable HTTP) for coding agents; see docs/mcp.md.", Bearer)
            .text(200, "JSON-RPC answer", "application/json"),
    ]
}

/// The query of `GET /api/v1/jobs/{id}/logs`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct LogQueryDoc {
    /// Only lines after this `seq`.
    after: Option<String>,
    /// Most lines (1–100000, default 10000).
    limit: Option<u32>,
    /// Only this step's lines (alias `phase`, e.g. `building`).
    step: Option<String>,
    /// `true`: Server-Sent Events until the job is final (`Last-Event-ID` resumes).
    follow: Option<bool>,
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    settings.meta_schema = None;
    // Answers: what the dispatcher writes.
    settings.contract = Contract::Serialize;
    let mut out_gen = settings.clone().into_generator();
    // Requests: what it reads (defaults make fields optional), inlined.
    settings.contract = Contract::Deserialize;
    settings.inline_subschemas = true;
    let mut in_gen = settings.into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for e in endpoints() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(e.summary));
        op.insert(
            "operationId".into(),
            json!(format!(
                "{} {}",
                e.method.to_ascii_lowercase(),
                e.path.trim_start_matches('/')
            )),
        );
        let mut params = Vec::new();
        for seg in e.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        if let Some(q) = e.query {
            let schema = q(&mut in_gen).to_value();
            let required: Vec<String> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    let mut p = p.clone();
                    let desc = p
                        .as_object_mut()
                        .and_then(|o| o.remove("description"))
                        .unwrap_or(Value::Null);
                    let mut param = json!({"name": name, "in": "query", "required": required.contains(name), "schema": p});
                    if !desc.is_null() {
                        param["description"] = desc;
                    }
                    params.push(param);
                }
            }
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(b) = e.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": b(&mut in_gen).to_value()}}}),
            );
        }
        let mut responses = Map::new();
        for (status, what, body) in e.responses {
            let content = match body {
                Some(Body::Json(schema)) => {
                    json!({"application/json": {"schema": schema(&mut out_gen).to_value()}})
                }
                Some(Body::Text(ct)) => json!({ ct: {} }),
                None => json!({}),
            };
            // A second body for the same status is another content type of it.
            let r = responses
                .entry(status.to_string())
                .or_insert_with(|| json!({"description": what}));
            if let (Some(add), Some(o)) = (content.as_object(), r.as_object_mut()) {
                if !add.is_empty() {
                    let c = o.entry("content").or_insert_with(|| json!({}));
                    if let Some(c) = c.as_object_mut() {
                        c.extend(add.clone());
                    }
                }
            }
        }
        if e.auth == Auth::Bearer {
            responses.insert(
                "401".into(),
                json!({"description": "missing or invalid credentials"}),
            );
            op.insert("security".into(), json!([{"bearer": []}]));
        } else {
            op.insert("security".into(), json!([]));
        }
        op.insert("responses".into(), Value::Object(responses));
        let item = paths
            .entry(e.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(o) = item.as_object_mut() {
            o.insert(e.method.to_ascii_lowercase(), Value::Object(op));
        }
    }
    let schemas = out_gen.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "raibid-ci dispatcher",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The dispatcher's HTTP API: webhooks, the REST API under /api/v1 (bearer token), the public job page, MCP. Generated from the request and response types (rust/raibid-dispatcher/src/openapi.rs); the prose is docs/api.md."
        },
        "servers": [{"url": format!("http://127.0.0.1:{}", http::DEFAULT_PORT)}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> axum::Json<Value> {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    axum::Json(DOC.get_or_init(document).clone())
}
