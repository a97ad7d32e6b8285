//! Scheduled builds (issue 22 §3): the REST routes `/api/v1/schedules…`, the Redis store and the
//! scheduler every dispatcher replica runs.
//!
//! Exactly once per due time, however many replicas tick: a replica that finds a due time later than
//! the schedule's `last_due` claims it with one Lua script (`CLAIM_LUA`: not paused, `last_due` still
//! older, then `last_due` := due and a `pending` marker), so one replica wins each slot; the job is then
//! enqueued with the delivery id `{schedule}:{due ms}` through the queue's delivery de-duplication (the
//! one webhook redeliveries go through), so a replica that dies between claim and enqueue leaves a
//! `pending` marker another replica (or the restarted one) takes over without a second job. A replica
//! looks only at the latest due time not after now: due times missed while no dispatcher ran fire once,
//! on start, not once each.

use crate::guard::ApiError;
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use raibid_core::contract::{self, keys};
use raibid_core::job::{Job, Source, Status, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, QueueError};
use raibid_core::schedule::{self, Schedule, ScheduleList, ScheduleView};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Claim a due time: the schedule exists, is not paused and `last_due` is older. KEYS[1] schedule
/// hash; ARGV due ms, now ms. Returns 1 when claimed.
const CLAIM_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'paused') == '1' then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_due') or '0') or 0
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('HSET', KEYS[1], 'last_due', ARGV[1], 'pending', ARGV[1] .. ':' .. ARGV[2])
return 1
"#;

/// Take over a `pending` marker left by a replica that stopped between claim and enqueue. KEYS[1];
/// ARGV the marker seen, the new marker. Returns 1 when taken over.
const TAKEOVER_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'pending') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pending', ARGV[2])
return 1
"#;

/// A due time is done: drop its marker, record the job (or the skip). KEYS[1]; ARGV marker, field,
/// value.
const DONE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'pending') == ARGV[1] then redis.call('HDEL', KEYS[1], 'pending') end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"#;

/// Write a changed schedule unless it was deleted meanwhile. KEYS[1]; ARGV record, paused, and a
/// `last_due` (ms) to move forward to, or empty. Returns 0 when the schedule is gone.
const UPDATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'paused', ARGV[2])
if ARGV[3] ~= '' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_due') or '0') or 0
  if tonumber(ARGV[3]) > last then redis.call('HSET', KEYS[1], 'last_due', ARGV[3]) end
end
return 1
"#;

/// A schedule to create (`POST /api/v1/schedules`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Clone URL of the repository, as at job submit.
    pub repo_url: String,
    /// Branch or full ref: `main` means `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Cron expression: 5 fields (`0 3 * * *`), or 6 with seconds first; `@daily` and the like.
    pub cron: String,
    /// IANA time zone of the expression (default `UTC`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Pipeline variant: variables every step sees (e.g. `{"CARGO_UPDATE": "1"}`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Create it paused.
    #[serde(default)]
    pub paused: bool,
    /// Skip a due time whose commit this schedule already built successfully within one period.
    #[serde(default)]
    pub skip_unchanged: bool,
}

/// Changes to a schedule (`PATCH /api/v1/schedules/{id}`); absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// Pause (`true`) or resume (`false`). Due times that passed while paused do not fire on resume.
    #[serde(default)]
    pub paused: Option<bool>,
    /// A new cron expression.
    #[serde(default)]
    pub cron: Option<String>,
    /// A new time zone.
    #[serde(default)]
    pub timezone: Option<String>,
    /// A new pipeline variant (replaces the old one).
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Skip unchanged commits.
    #[serde(default)]
    pub skip_unchanged: Option<bool>,
}

/// Parse a cron expression (5 fields, or 6 with seconds first, or a `@nickname`); the error names it.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let e = expr.trim();
    if e.is_empty() || e.len() > 200 {
        return Err("cron: must be a cron expression of 5 or 6 fields, e.g. `0 3 * * *`".into());
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(e)
        .map_err(|err| format!("cron: `{e}` is not a cron expression: {err}"))
}

/// Parse an IANA time zone name; the error names it.
pub fn parse_tz(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!(
            "timezone: `{}` is not an IANA time zone name (e.g. `UTC`, `Europe/Berlin`, `America/New_York`)",
            name.trim()
        )
    })
}

/// A schedule's expression in its zone.
pub struct When {
    cron: Cron,
    tz: Tz,
}

impl When {
    /// Parse both; the error names the field.
    pub fn of(cron: &str, timezone: &str) -> Result<When, String> {
        Ok(When {
            cron: parse_cron(cron)?,
            tz: parse_tz(timezone)?,
        })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&self.tz.from_utc_datetime(&t.naive_utc()), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest due time not after `t`.
    pub fn latest_until(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&self.tz.from_utc_datetime(&t.naive_utc()), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The due time before `t` (exclusive).
    pub fn before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&self.tz.from_utc_datetime(&t.naive_utc()), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

/// A stored schedule with its state.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The record.
    pub schedule: Schedule,
    /// Paused.
    pub paused: bool,
    /// Last claimed due time (ms); at creation, the creation time.
    pub last_due: i64,
    /// Last job made.
    pub last_job: Option<String>,
    /// Last skipped due time (ms).
    pub last_skipped: Option<i64>,
    /// `due:claimed` marker of a due time claimed and not yet enqueued.
    pub pending: Option<String>,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(m: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(m)
}

impl Stored {
    fn from_hash(h: HashMap<String, String>) -> Option<Stored> {
        let schedule: Schedule = serde_json::from_str(h.get("record")?).ok()?;
        Some(Stored {
            schedule,
            paused: h.get("paused").map(String::as_str) == Some("1"),
            last_due: h.get("last_due").and_then(|v| v.parse().ok()).unwrap_or(0),
            last_job: h.get("last_job").cloned().filter(|s| !s.is_empty()),
            last_skipped: h.get("last_skipped").and_then(|v| v.parse().ok()),
            pending: h.get("pending").cloned(),
        })
    }
}

async fn load(state: &AppState, id: &str) -> Result<Option<Stored>, QueueError> {
    let mut con = state.queue.redis();
    let h: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(contract::schedule_key(id))
        .query_async(&mut con)
        .await?;
    Ok(Stored::from_hash(h))
}

async fn load_all(state: &AppState) -> Result<Vec<Stored>, QueueError> {
    let mut con = state.queue.redis();
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys::SCHEDULES)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for id in &ids {
        p.cmd("HGETALL").arg(contract::schedule_key(id));
    }
    let hs: Vec<HashMap<String, String>> = p.query_async(&mut con).await?;
    Ok(hs.into_iter().filter_map(Stored::from_hash).collect())
}

async fn view(state: &AppState, s: Stored, now: DateTime<Utc>) -> ScheduleView {
    let next_run = if s.paused {
        None
    } else {
        When::of(&s.schedule.cron, &s.schedule.timezone)
            .ok()
            .and_then(|w| w.next_after(now))
    };
    let last_status = match &s.last_job {
        Some(j) => state.queue.get(j).await.ok().map(|j| j.status),
        None => None,
    };
    ScheduleView {
        last_due: (s.last_due > ms(s.schedule.created))
            .then(|| from_ms(s.last_due))
            .flatten(),
        paused: s.paused,
        next_run,
        last_job: s.last_job,
        last_status,
        last_skipped: s.last_skipped.and_then(from_ms),
        schedule: s.schedule,
    }
}

/// Every schedule with its next run and last result (REST list, MCP `list_schedules`).
pub async fn list(state: &AppState) -> Result<ScheduleList, QueueError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for s in load_all(state).await? {
        out.push(view(state, s, now).await);
    }
    Ok(ScheduleList { schedules: out })
}

fn unprocessable(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", m)
}

fn bad_json(e: JsonRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_request",
        format!("invalid JSON body: {}", e.body_text()),
    )
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("schedule {id} not found"),
    )
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if schedule::is_valid_schedule_id(id) {
        Ok(())
    } else {
        Err(not_found(id))
    }
}

/// Validate a creation request into a record; the error names the field.
pub fn validate_create(
    state: &AppState,
    req: CreateSchedule,
    now: DateTime<Utc>,
) -> Result<Schedule, String> {
    let timezone = req
        .timezone
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("UTC")
        .to_string();
    let when = When::of(&req.cron, &timezone)?;
    if when.next_after(now).is_none() {
        return Err(format!(
            "cron: `{}` never comes due in {timezone}",
            req.cron.trim()
        ));
    }
    schedule::check_variant(&req.env)?;
    let v = crate::requests::validate_submit(
        crate::requests::SubmitJob {
            repo_url: req.repo_url,
            git_ref: req.git_ref,
            ..Default::default()
        },
        &state.settings.notify_allowed_hosts,
    )?;
    crate::requests::check_policy(state, &v.repo_url, None, None)?;
    Ok(Schedule {
        id: schedule::new_schedule_id(),
        repo_url: v.repo_url,
        git_ref: v.git_ref,
        cron: req.cron.trim().to_string(),
        timezone: when.tz.name().to_string(),
        env: req.env,
        skip_unchanged: req.skip_unchanged,
        created: now,
    })
}

async fn create(
    State(state): State<AppState>,
    body: Result<Json<CreateSchedule>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(bad_json)?;
    let paused = req.paused;
    let now = Utc::now();
    let s = validate_create(&state, req, now).map_err(unprocessable)?;
    let record = serde_json::to_string(&s)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut con = state.queue.redis();
    let _: () = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(contract::schedule_key(&s.id))
        .arg("record")
        .arg(record)
        .arg("paused")
        .arg(if paused { "1" } else { "0" })
        .arg("last_due")
        .arg(ms(now))
        .ignore()
        .cmd("ZADD")
        .arg(keys::SCHEDULES)
        .arg(ms(now))
        .arg(&s.id)
        .ignore()
        .query_async(&mut con)
        .await
        .map_err(QueueError::from)?;
    tracing::info!(schedule = %s.id, cron = %s.cron, timezone = %s.timezone, "schedule created");
    let stored = Stored {
        schedule: s,
        paused,
        last_due: ms(now),
        last_job: None,
        last_skipped: None,
        pending: None,
    };
    Ok((StatusCode::CREATED, Json(view(&state, stored, now).await)).into_response())
}

async fn list_route(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(list(&state).await?).into_response())
}

async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let s = load(&state, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(Json(view(&state, s, Utc::now()).await).into_response())
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let mut con = state.queue.redis();
    let (n, _): (u64, u64) = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(contract::schedule_key(&id))
        .cmd("ZREM")
        .arg(keys::SCHEDULES)
        .arg(&id)
        .query_async(&mut con)
        .await
        .map_err(QueueError::from)?;
    if n == 0 {
        return Err(not_found(&id));
    }
    tracing::info!(schedule = %id, "schedule deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<UpdateSchedule>, JsonRejection>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let Json(req) = body.map_err(bad_json)?;
    let mut s = load(&state, &id).await?.ok_or_else(|| not_found(&id))?;
    let now = Utc::now();
    let mut retime = false;
    if let Some(c) = &req.cron {
        s.schedule.cron = c.trim().to_string();
        retime = true;
    }
    if let Some(t) = &req.timezone {
        s.schedule.timezone = t.trim().to_string();
        retime = true;
    }
    let when = When::of(&s.schedule.cron, &s.schedule.timezone).map_err(unprocessable)?;
    if retime && when.next_after(now).is_none() {
        return Err(unprocessable(format!(
            "cron: `{}` never comes due in {}",
            s.schedule.cron, s.schedule.timezone
        )));
    }
    s.schedule.timezone = when.tz.name().to_string();
    if let Some(env) = req.env {
        schedule::check_variant(&env).map_err(unprocessable)?;
        s.schedule.env = env;
    }
    if let Some(k) = req.skip_unchanged {
        s.schedule.skip_unchanged = k;
    }
    let resume = req.paused == Some(false) && s.paused;
    if let Some(p) = req.paused {
        s.paused = p;
    }
    let record = serde_json::to_string(&s.schedule)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    if resume || retime {
        // Due times that passed while paused (or under the old expression) do not fire now.
        s.last_due = s.last_due.max(ms(now));
    }
    let mut con = state.queue.redis();
    let written: i64 = redis::Script::new(UPDATE_LUA)
        .key(contract::schedule_key(&id))
        .arg(record)
        .arg(if s.paused { "1" } else { "0" })
        .arg(if resume || retime {
            ms(now).to_string()
        } else {
            String::new()
        })
        .invoke_async(&mut con)
        .await
        .map_err(QueueError::from)?;
    if written == 0 {
        // Deleted meanwhile: not made again.
        return Err(not_found(&id));
    }
    tracing::info!(schedule = %id, paused = s.paused, "schedule updated");
    Ok(Json(view(&state, s, now).await).into_response())
}

async fn run_now(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    let s = load(&state, &id).await?.ok_or_else(|| not_found(&id))?;
    crate::requests::check_policy(&state, &s.schedule.repo_url, None, None)
        .map_err(unprocessable)?;
    let job = new_job(&state, &s.schedule, None, None).await;
    match state.queue.enqueue(job, None).await? {
        Enqueued::New(job) => {
            record(&state, &id, None, "last_job", job.id.as_str()).await?;
            tracing::info!(schedule = %id, job = %job.id, "schedule run now");
            Ok((StatusCode::CREATED, Json(job.public())).into_response())
        }
        Enqueued::Duplicate(d) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("duplicate of {d}"),
        )),
    }
}

/// The REST routes, relative to `/api/v1` (the API token applies).
pub fn router() -> Router<AppState> {
    let rel = contract::http::SCHEDULES_PATH
        .strip_prefix(contract::http::API_PREFIX)
        .unwrap_or(contract::http::SCHEDULES_PATH);
    Router::new()
        .route(rel, post(create).get(list_route))
        .route(
            &format!("{rel}/{{id}}"),
            get(get_one).delete(delete).patch(update),
        )
        .route(&format!("{rel}/{{id}}/run"), post(run_now))
}

/// `owner/name` in Gitea, for the commit statuses: the clone URL is under the configured Gitea, or a
/// recent push job of the same clone URL came from a Gitea repository (its webhook named it).
async fn forge_repo(state: &AppState, url: &str) -> Option<String> {
    state.settings.gitea.as_ref()?;
    if let Some(base) = state.settings.gitea.as_ref().map(|g| g.base()) {
        if let Some(rest) = url.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
            let rest = rest.trim_end_matches('/');
            let rest = rest.strip_suffix(".git").unwrap_or(rest);
            if crate::forge::split_repo(rest).is_some() {
                return Some(rest.to_string());
            }
        }
    }
    let filter = raibid_core::queue::ListFilter {
        status: None,
        git_ref: None,
        repo: Some(url),
    };
    let (jobs, _) = state.queue.list_filtered(&filter, 50, None).await.ok()?;
    jobs.into_iter()
        .filter(|j| j.source.repo_url == url)
        .find_map(|j| j.source.forge_repo)
}

async fn new_job(
    state: &AppState,
    s: &Schedule,
    sha: Option<String>,
    delivery: Option<String>,
) -> Job {
    let mut job = Job::new(
        Source {
            repo_url: s.repo_url.clone(),
            git_ref: s.git_ref.clone(),
            sha,
            trigger: Trigger {
                kind: TriggerKind::Schedule,
                actor: None,
            },
            delivery_id: delivery,
            forge_repo: forge_repo(state, &s.repo_url).await,
            patch: None,
            notify_url: None,
        },
        Utc::now(),
    );
    job.schedule_id = Some(s.id.clone());
    job.env = s.env.clone();
    job
}

async fn record(
    state: &AppState,
    id: &str,
    marker: Option<&str>,
    field: &str,
    value: &str,
) -> Result<(), QueueError> {
    let mut con = state.queue.redis();
    let _: i64 = redis::Script::new(DONE_LUA)
        .key(contract::schedule_key(id))
        .arg(marker.unwrap_or(""))
        .arg(field)
        .arg(value)
        .invoke_async(&mut con)
        .await?;
    Ok(())
}

/// The commit `git_ref` points at, by `git ls-remote` (no credentials, no prompt, bounded time).
async fn resolve_ref(url: &str, git_ref: &str) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("git")
            .arg("ls-remote")
            .arg("--exit-code")
            .arg("--")
            .arg(url)
            .arg(git_ref)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", "http:https:ssh:file")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        let (sha, name) = l.split_once('\t')?;
        (name == git_ref && (sha.len() == 40 || sha.len() == 64)).then(|| sha.to_string())
    })
}

/// Fire one claimed due time: skip it (unchanged commit) or enqueue its job (at most one per due time:
/// the delivery de-duplication), then drop the marker.
async fn fire(state: &AppState, s: &Stored, when: &When, due: i64, marker: &str) {
    let id = &s.schedule.id;
    let due_t = from_ms(due).unwrap_or_else(Utc::now);
    if let Err(m) = crate::requests::check_policy(state, &s.schedule.repo_url, None, None) {
        tracing::warn!(schedule = %id, due = %due_t, reason = %m, "scheduled job refused by the current configuration; due time skipped");
        let _ = record(state, id, Some(marker), "last_skipped", &due.to_string()).await;
        return;
    }
    let mut sha = None;
    if s.schedule.skip_unchanged {
        sha = resolve_ref(&s.schedule.repo_url, &s.schedule.git_ref).await;
        if sha.is_none() {
            tracing::info!(schedule = %id, "could not resolve the ref to a commit; building without the unchanged check");
        }
        if let (Some(sha), Some(last)) = (&sha, &s.last_job) {
            let since = when.before(due_t).unwrap_or(due_t);
            if let Ok(j) = state.queue.get(last).await {
                let built = j.status == Status::Succeeded
                    && j.source.sha.as_deref() == Some(sha.as_str())
                    && j.timestamps.finished.is_some_and(|f| f >= since);
                if built {
                    tracing::info!(schedule = %id, due = %due_t, %sha, job = %j.id, "commit unchanged and built; due time skipped");
                    let _ = record(state, id, Some(marker), "last_skipped", &due.to_string()).await;
                    return;
                }
            }
        }
    }
    let job = new_job(state, &s.schedule, sha, Some(format!("{id}:{due}"))).await;
    let delivery = format!("{id}:{due}");
    match state
        .queue
        .enqueue(job, Some((keys::SCHEDULE_DELIVERY_FORGE, &delivery)))
        .await
    {
        Ok(Enqueued::New(job)) => {
            tracing::info!(schedule = %id, due = %due_t, job = %job.id, "schedule fired");
            let _ = record(state, id, Some(marker), "last_job", job.id.as_str()).await;
        }
        Ok(Enqueued::Duplicate(existing)) => {
            tracing::info!(schedule = %id, due = %due_t, job = %existing, "due time already enqueued");
            let _ = record(state, id, Some(marker), "last_job", &existing).await;
        }
        // The marker stays: this replica or another takes the due time over once it is stale.
        Err(e) => {
            tracing::warn!(schedule = %id, error = %e, "scheduled job not enqueued; retrying")
        }
    }
}

/// One look at every schedule.
pub async fn tick(state: &AppState, stale: Duration) -> Result<(), QueueError> {
    let now = Utc::now();
    for s in load_all(state).await? {
        let key = contract::schedule_key(&s.schedule.id);
        let Ok(when) = When::of(&s.schedule.cron, &s.schedule.timezone) else {
            continue;
        };
        // A due time claimed by a replica that stopped before enqueueing it.
        if let Some(p) = &s.pending {
            let (due, at) = p.split_once(':').unwrap_or((p, "0"));
            let (Ok(due), Ok(at)) = (due.parse::<i64>(), at.parse::<i64>()) else {
                continue;
            };
            if ms(now) - at > stale.as_millis() as i64 {
                let marker = format!("{due}:{}", ms(now));
                let mut con = state.queue.redis();
                let took: i64 = redis::Script::new(TAKEOVER_LUA)
                    .key(&key)
                    .arg(p)
                    .arg(&marker)
                    .invoke_async(&mut con)
                    .await?;
                if took == 1 {
                    tracing::info!(schedule = %s.schedule.id, "taking over a due time claimed by a stopped replica");
                    fire(state, &s, &when, due, &marker).await;
                }
            }
            continue;
        }
        if s.paused {
            continue;
        }
        let Some(due) = when.latest_until(now) else {
            continue;
        };
        if ms(due) <= s.last_due {
            continue;
        }
        let mut con = state.queue.redis();
        let claimed: i64 = redis::Script::new(CLAIM_LUA)
            .key(&key)
            .arg(ms(due))
            .arg(ms(now))
            .invoke_async(&mut con)
            .await?;
        if claimed == 1 {
            fire(
                state,
                &s,
                &when,
                ms(due),
                &format!("{}:{}", ms(due), ms(now)),
            )
            .await;
        }
    }
    Ok(())
}

/// The scheduler loop of a replica (every replica runs one; the claims keep them from colliding).
pub async fn scheduler(state: AppState) {
    let every = state.settings.intake.schedule_tick;
    if every.is_zero() {
        tracing::info!("scheduler off in this replica (tick 0)");
        return;
    }
    let stale = (every * 10).max(Duration::from_secs(30));
    loop {
        if let Err(e) = tick(&state, stale).await {
            tracing::warn!(error = %e, "scheduler: redis unavailable; retrying");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_and_zones_are_checked_naming_them() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
        let e = parse_cron("61 * * * *").err().unwrap_or_default();
        assert!(e.starts_with("cron: `61 * * * *`"), "{e}");
        assert!(parse_cron("every day").is_err());
        assert!(parse_tz("Europe/Berlin").is_ok());
        let e = parse_tz("Mars/Olympus").err().unwrap_or_default();
        assert!(e.contains("`Mars/Olympus`"), "{e}");
    }

    #[test]
    fn due_times_in_a_zone() {
        let w = When::of("0 3 * * *", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 0, 0, 0).unwrap();
        // 03:00 CEST is 01:00 UTC.
        assert_eq!(
            w.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 7, 1, 1, 0, 0).unwrap())
        );
        let later = Utc.with_ymd_and_hms(2026, 7, 3, 12, 0, 0).unwrap();
        // Several missed: only the latest counts.
        assert_eq!(
            w.latest_until(later),
            Some(Utc.with_ymd_and_hms(2026, 7, 3, 1, 0, 0).unwrap())
        );
    }
}

#[cfg(test)]
mod dst {
    use super::*;

    #[test]
    fn a_wall_time_skipped_by_daylight_saving_fires_at_the_next_valid_time() {
        let w = When::of("30 2 * * *", "Europe/Berlin").unwrap_or_else(|e| panic!("{e}"));
        // 2026-03-29: Berlin's clocks jump from 02:00 to 03:00 (01:00 UTC).
        let t = Utc.with_ymd_and_hms(2026, 3, 28, 23, 0, 0).unwrap();
        // 02:30 does not exist that night: it fires at 03:00 CEST (01:00 UTC), once.
        assert_eq!(
            w.next_after(t),
            Some(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap())
        );
        assert_eq!(
            w.next_after(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap()),
            Some(Utc.with_ymd_and_hms(2026, 3, 30, 0, 30, 0).unwrap())
        );
    }
}
