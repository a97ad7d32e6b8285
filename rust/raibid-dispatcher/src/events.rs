//! `GET /api/v1/events`: the live feed `raibid-top` watches. Server-Sent Events of the `raibid:events`
//! stream (`event: job`, `id:` = stream entry id, so a client resumes with `Last-Event-ID`), plus events
//! the dispatcher synthesises when queue figures change or an agent appears or goes (`queue`,
//! `agent_seen`, `agent_gone`, no `id:`). The stream is tailed with a blocking `XREAD` on a dedicated
//! connection (no polling loop); comment heartbeats keep proxies from closing an idle connection; the
//! response ends when the dispatcher shuts down.
//!
//! Also `GET /api/v1/dead-letters`: the dead-letter stream.

use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use raibid_core::contract::{http, keys};
use raibid_core::event::{DeadLetter, Event, LiveEvent};
use raibid_core::queue::{AgentInfo, QueueStats};
use redis::Value;
use serde_json::json;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

/// How long one blocking `XREAD` waits; between reads the synthesised figures are refreshed, so this is
/// also how late an agent's disappearance is noticed at worst.
const BLOCK: Duration = Duration::from_millis(1000);
/// Keep-alive comment interval.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Entries per read.
const BATCH: usize = 500;

/// The routes of this module, relative to the API prefix (merged into the authenticated `/api/v1`).
pub fn router() -> Router<AppState> {
    let rel = |p: &'static str| p.strip_prefix(http::API_PREFIX).unwrap_or(p);
    Router::new()
        .route(rel(http::EVENTS_PATH), get(events))
        .route(rel(http::DEAD_LETTERS_PATH), get(dead_letters))
}

/// A stream entry id `ms-seq`.
fn valid_entry_id(s: &str) -> bool {
    let mut parts = s.split('-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// `[[id, [k, v, ...]], ...]` → (id, `event` field).
fn entries(v: &Value) -> Vec<(String, Option<String>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|e| match e {
            Value::Array(pair) if pair.len() == 2 => {
                let id = text(&pair[0])?;
                let fields = match &pair[1] {
                    Value::Array(kv) => kv
                        .chunks(2)
                        .find(|c| c.len() == 2 && text(&c[0]).as_deref() == Some("event"))
                        .and_then(|c| text(&c[1])),
                    Value::Map(m) => m
                        .iter()
                        .find(|(k, _)| text(k).as_deref() == Some("event"))
                        .and_then(|(_, v)| text(v)),
                    _ => None,
                };
                Some((id, fields))
            }
            _ => None,
        })
        .collect()
}

/// The entries of an `XREAD` reply on one stream (RESP2 array or RESP3 map).
fn xread_entries(reply: &Value) -> Vec<(String, Option<String>)> {
    match reply {
        Value::Array(streams) => streams
            .first()
            .and_then(|s| match s {
                Value::Array(kv) => kv.get(1).map(entries),
                _ => None,
            })
            .unwrap_or_default(),
        Value::Map(m) => m.first().map(|(_, v)| entries(v)).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The id of the newest entry of the events stream, `0-0` when it is empty.
async fn newest_id(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<String> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(keys::EVENTS_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(entries(&reply)
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| "0-0".into()))
}

/// `ms-seq` → (ms, seq), for ordering.
fn parse_id(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The field `name` of an `XINFO STREAM` reply (RESP2 flat array or RESP3 map).
fn info_field<'a>(reply: &'a Value, name: &str) -> Option<&'a Value> {
    match reply {
        Value::Array(kv) => kv
            .chunks(2)
            .find(|c| c.len() == 2 && text(&c[0]).as_deref() == Some(name))
            .map(|c| &c[1]),
        Value::Map(m) => m
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn info_int(reply: &Value, name: &str) -> Option<u64> {
    match info_field(reply, name)? {
        Value::Int(i) => u64::try_from(*i).ok(),
        v => text(v)?.parse().ok(),
    }
}

fn info_id(reply: &Value, name: &str) -> Option<(u64, u64)> {
    parse_id(&text(info_field(reply, name)?)?)
}

/// What `XINFO STREAM` says about the events stream, as far as continuity goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSpan {
    /// The stream exists.
    pub exists: bool,
    /// Entries in it now.
    pub length: u64,
    /// Entries ever added (more than `length`: some were trimmed or deleted).
    pub entries_added: u64,
    /// The oldest entry still there.
    pub first: Option<(u64, u64)>,
    /// The newest id ever generated.
    pub last_generated: (u64, u64),
    /// The newest id removed with `XDEL` (trimming does not set it).
    pub max_deleted: (u64, u64),
}

impl StreamSpan {
    /// Why the entries after `after` cannot all be replayed, or `None` when they can.
    pub fn gap(&self, after: (u64, u64)) -> Option<String> {
        if after == (0, 0) {
            return None;
        }
        if !self.exists {
            return Some(
                "the events stream is empty (Redis lost or flushed its data): events may be missing"
                    .into(),
            );
        }
        if after > self.last_generated {
            return Some(
                "the id is newer than anything in the events stream (it was reset): events may be missing"
                    .into(),
            );
        }
        if after < self.max_deleted {
            return Some("events after the id were deleted from the stream".into());
        }
        let trimmed = self.entries_added > self.length;
        match self.first {
            Some(first) if trimmed && after < first => Some(format!(
                "the id is older than the oldest event still kept ({}-{}; the stream is trimmed to its newest entries): events after it are gone",
                first.0, first.1
            )),
            None if trimmed && after < self.last_generated => Some(
                "every event after the id was trimmed from the stream".into(),
            ),
            _ => None,
        }
    }
}

/// `XINFO STREAM` of the events stream (`exists: false` when there is none).
async fn stream_span(
    con: &mut redis::aio::MultiplexedConnection,
) -> redis::RedisResult<StreamSpan> {
    let exists: bool = redis::cmd("EXISTS")
        .arg(keys::EVENTS_STREAM)
        .query_async(con)
        .await?;
    if !exists {
        // Nothing was ever added, or Redis was flushed.
        return Ok(StreamSpan::default());
    }
    let reply: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys::EVENTS_STREAM)
        .query_async(con)
        .await?;
    let first = match info_field(&reply, "first-entry") {
        Some(Value::Array(pair)) => pair.first().and_then(text).and_then(|t| parse_id(&t)),
        _ => None,
    };
    Ok(StreamSpan {
        exists: true,
        length: info_int(&reply, "length").unwrap_or(0),
        entries_added: info_int(&reply, "entries-added").unwrap_or(0),
        first,
        last_generated: info_id(&reply, "last-generated-id").unwrap_or((0, 0)),
        max_deleted: info_id(&reply, "max-deleted-entry-id").unwrap_or((0, 0)),
    })
}

/// Whether the connection can go on after `after`; when it cannot, the `resync` event to send and
/// the position (the newest entry) to go on from.
async fn continuity(
    con: &mut redis::aio::MultiplexedConnection,
    after: &str,
) -> redis::RedisResult<Option<(LiveEvent, String)>> {
    let Some(at) = parse_id(after) else {
        return Ok(None);
    };
    let span = stream_span(con).await?;
    let Some(reason) = span.gap(at) else {
        return Ok(None);
    };
    let cursor = newest_id(con).await?;
    Ok(Some((
        LiveEvent::Resync {
            requested: after.to_string(),
            cursor: cursor.clone(),
            reason,
        },
        cursor,
    )))
}

/// What the client was last told about the queue and the agents, to send only changes.
#[derive(Default)]
struct Seen {
    queue: Option<QueueStats>,
    agents: BTreeMap<String, AgentInfo>,
}

impl Seen {
    /// Events for what changed since the last call.
    async fn changes(&mut self, state: &AppState) -> Vec<LiveEvent> {
        let mut out = Vec::new();
        if let Ok(mut q) = state.queue.stats().await {
            // The age grows on its own; whole seconds are enough to show it and bound the chatter.
            q.oldest_waiting_age_secs = q.oldest_waiting_age_secs.map(f64::floor);
            for k in &mut q.kinds {
                k.oldest_waiting_age_secs = k.oldest_waiting_age_secs.map(f64::floor);
            }
            if self.queue.as_ref() != Some(&q) {
                self.queue = Some(q.clone());
                out.push(LiveEvent::Queue(q));
            }
        }
        if let Ok(agents) = state.queue.agents().await {
            let now: BTreeMap<String, AgentInfo> =
                agents.into_iter().map(|a| (a.id.clone(), a)).collect();
            for id in self.agents.keys() {
                if !now.contains_key(id) {
                    out.push(LiveEvent::AgentGone { id: id.clone() });
                }
            }
            for (id, a) in &now {
                if self.agents.get(id) != Some(a) {
                    out.push(LiveEvent::AgentSeen(a.clone()));
                }
            }
            self.agents = now;
        }
        out
    }
}

fn sse(ev: &LiveEvent, id: Option<&str>) -> SseEvent {
    let e = SseEvent::default().event(ev.name()).data(ev.data());
    match id {
        Some(id) => e.id(id),
        None => e,
    }
}

/// Send or report that the client is gone.
async fn send(tx: &tokio::sync::mpsc::Sender<SseEvent>, ev: SseEvent) -> bool {
    tx.send(ev).await.is_ok()
}

async fn events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if let Some(r) = resume.as_deref() {
        if !valid_entry_id(r) {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": {"code": "unprocessable", "message": "Last-Event-ID: not an event id sent by this API"}})),
            )
                .into_response();
        }
    }
    let mut con = match state.queue.blocking_connection(BLOCK).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "events: redis unavailable");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"code": "queue_unavailable", "message": "the job queue is unavailable; retry later"}})),
            )
                .into_response();
        }
    };
    let unavailable = |e: redis::RedisError| {
        tracing::warn!(error = %e, "events: redis unavailable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "queue_unavailable", "message": "the job queue is unavailable; retry later"}})),
        )
            .into_response()
    };
    // A resume point the stream no longer reaches: start at the newest entry and say so first.
    let mut resync = None;
    if let Some(r) = resume.as_deref() {
        match continuity(&mut con, r).await {
            Ok(Some((ev, cursor))) => resync = Some((ev, cursor)),
            Ok(None) => {}
            Err(e) => return unavailable(e),
        }
    }
    let cursor = match (resync.as_ref(), resume) {
        (Some((_, c)), _) => c.clone(),
        (None, Some(r)) => r,
        (None, None) => match newest_id(&mut con).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(error = %e, "events: redis unavailable");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": {"code": "queue_unavailable", "message": "the job queue is unavailable; retry later"}})),
                )
                    .into_response();
            }
        },
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(1024);
    tokio::spawn(pump(state, con, cursor, resync.map(|(ev, _)| ev), tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = futures::StreamExt::map(stream, Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}

/// Feed one client until it goes away or the dispatcher stops.
async fn pump(
    state: AppState,
    con: redis::aio::MultiplexedConnection,
    mut last: String,
    resync: Option<LiveEvent>,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
) {
    let mut stopping = state.stopping.clone();
    if *stopping.borrow_and_update() {
        return;
    }
    let hello = LiveEvent::Hello {
        cursor: last.clone(),
    };
    if !send(&tx, sse(&hello, None)).await {
        return;
    }
    if let Some(ev) = resync {
        if !send(&tx, sse(&ev, Some(&last))).await {
            return;
        }
    }
    let mut seen = Seen::default();
    let mut con = Some(con);
    loop {
        for ev in seen.changes(&state).await {
            if !send(&tx, sse(&ev, None)).await {
                return;
            }
        }
        let Some(c) = con.as_mut() else {
            // Reconnect after a Redis error; the client keeps its connection.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stopping.changed() => return,
                _ = tx.closed() => return,
            }
            con = state.queue.blocking_connection(BLOCK).await.ok();
            // Redis may have come back without the stream's history (a flush, a restart without
            // its data): then what follows does not continue what the client has.
            if let Some(c) = con.as_mut() {
                match continuity(c, &last).await {
                    Ok(Some((ev, cursor))) => {
                        last = cursor;
                        if !send(&tx, sse(&ev, Some(&last))).await {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => con = None,
                }
            }
            continue;
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::EVENTS_STREAM)
            .arg(&last);
        let reply: redis::RedisResult<Value> = tokio::select! {
            r = cmd.query_async(c) => r,
            _ = stopping.changed() => return,
            _ = tx.closed() => return,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "events: read failed; reconnecting");
                con = None;
                continue;
            }
        };
        for (id, data) in xread_entries(&reply) {
            last = id.clone();
            let Some(ev) = data.and_then(|d| serde_json::from_str::<Event>(&d).ok()) else {
                continue;
            };
            if !send(&tx, sse(&LiveEvent::Job(ev), Some(&id))).await {
                return;
            }
        }
    }
}

async fn dead_letters(State(state): State<AppState>) -> Response {
    match state.queue.dead_letters().await {
        Ok(d) => {
            let list: Vec<DeadLetter> = d
                .into_iter()
                .map(|(entry, job, attempts, reason)| DeadLetter {
                    entry,
                    job,
                    attempts,
                    reason,
                })
                .collect();
            Json(crate::openapi::DeadLetterList { dead_letters: list }).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "dead letters: redis unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": {"code": "queue_unavailable", "message": "the job queue is unavailable; retry later"}})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_in_the_stream() {
        let span = StreamSpan {
            exists: true,
            length: 100,
            entries_added: 300,
            first: Some((200, 0)),
            last_generated: (300, 0),
            max_deleted: (0, 0),
        };
        assert!(
            span.gap((0, 0)).is_none(),
            "no resume point: nothing to continue"
        );
        assert!(span.gap((199, 5)).is_some(), "older than the oldest kept");
        assert!(span.gap((200, 0)).is_none());
        assert!(span.gap((250, 0)).is_none());
        assert!(span.gap((300, 0)).is_none());
        assert!(
            span.gap((300, 1)).is_some(),
            "newer than the stream: it was reset"
        );
        let untrimmed = StreamSpan {
            entries_added: 100,
            ..span.clone()
        };
        assert!(
            untrimmed.gap((199, 0)).is_none(),
            "nothing was ever removed"
        );
        let emptied = StreamSpan {
            length: 0,
            first: None,
            ..span.clone()
        };
        assert!(emptied.gap((299, 0)).is_some());
        assert!(emptied.gap((300, 0)).is_none());
        assert!(
            StreamSpan::default().gap((5, 0)).is_some(),
            "no stream at all"
        );
        let deleted = StreamSpan {
            max_deleted: (250, 0),
            ..span
        };
        assert!(deleted.gap((240, 0)).is_some());
    }

    #[test]
    fn entry_ids() {
        assert!(valid_entry_id("1700000000000-3"));
        assert!(!valid_entry_id("$"));
        assert!(!valid_entry_id("1-2-3"));
        assert!(!valid_entry_id(""));
    }
}
