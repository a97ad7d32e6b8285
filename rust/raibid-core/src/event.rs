//! The event schema of `raibid:events`: one definition, written by the queue scripts, read by the
//! dispatcher's status reporter and `GET /api/v1/events`, and by `raibid-top`.

use crate::job::{Job, Status};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A job event for live watchers (`raibid:events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `job_created`, `job_claimed`, `step_started`, `step_finished`, `job_finished`, `job_cancel_requested`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Job id.
    pub job: String,
    /// Job status after the event.
    pub status: Status,
    /// Step concerned.
    pub step: Option<String>,
    /// Agent concerned.
    pub agent: Option<String>,
    /// When.
    pub ts: DateTime<Utc>,
}

impl Event {
    /// The event `kind` about `job` as it is now.
    pub fn of(kind: &str, job: &Job, now: DateTime<Utc>) -> Event {
        Event {
            kind: kind.into(),
            job: job.id.to_string(),
            status: job.status,
            step: job.step.clone(),
            agent: job.agent.clone(),
            ts: now,
        }
    }
}

/// What happened to a job, parsed from [`Event::kind`]. Unknown kinds (a newer writer) are kept as
/// [`EventKind::Other`] and must be treated as "something changed, look again".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The job entered the queue.
    JobCreated,
    /// An agent claimed it.
    JobClaimed,
    /// A step started.
    StepStarted,
    /// A step finished.
    StepFinished,
    /// The job reached a final status.
    JobFinished,
    /// A user asked to cancel it.
    JobCancelRequested,
    /// A kind this version does not know.
    Other(String),
}

impl EventKind {
    /// Parse the `type` field.
    pub fn parse(s: &str) -> EventKind {
        match s {
            "job_created" => EventKind::JobCreated,
            "job_claimed" => EventKind::JobClaimed,
            "step_started" => EventKind::StepStarted,
            "step_finished" => EventKind::StepFinished,
            "job_finished" => EventKind::JobFinished,
            "job_cancel_requested" => EventKind::JobCancelRequested,
            other => EventKind::Other(other.to_string()),
        }
    }
}

impl Event {
    /// The parsed kind.
    pub fn event_kind(&self) -> EventKind {
        EventKind::parse(&self.kind)
    }
}

/// Names of the Server-Sent Events of `GET /api/v1/events` (the `event:` field).
pub mod sse {
    /// First event of every connection: `{"cursor": <last events-stream id or "0-0">}`.
    pub const HELLO: &str = "hello";
    /// A job event from `raibid:events`: data is an [`super::Event`], `id:` its stream entry id.
    pub const JOB: &str = "job";
    /// Queue figures changed: data is a `QueueStats`.
    pub const QUEUE: &str = "queue";
    /// An agent appeared or its heartbeat changed: data is an `AgentInfo`.
    pub const AGENT_SEEN: &str = "agent_seen";
    /// An agent's heartbeat expired or it deregistered: data is `{"id": name}`.
    pub const AGENT_GONE: &str = "agent_gone";
    /// The stream cannot continue where the client asked (its `Last-Event-ID` is older than what the
    /// trimmed stream still holds, or the stream was reset): some job events are lost to it, so it must
    /// reload the job list. Data `{"requested", "cursor", "reason"}`; `id:` is `cursor`, where the
    /// connection goes on from. Sent before any job event of the connection (right after `hello`), or
    /// mid-connection when Redis came back without the stream's history.
    pub const RESYNC: &str = "resync";
}

/// One event of `GET /api/v1/events`, as the dispatcher sends it and `raibid-top` reads it. Job events
/// come from `raibid:events` (with their stream id); the others are synthesised by the dispatcher
/// from queue figures and agent heartbeats, and carry no id.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// Connection start: the stream position the connection starts after.
    Hello {
        /// Events-stream entry id.
        cursor: String,
    },
    /// A job event.
    Job(Event),
    /// Queue figures.
    Queue(crate::queue_view::QueueStats),
    /// An agent seen (new, or its heartbeat/current job changed).
    AgentSeen(crate::queue_view::AgentInfo),
    /// An agent gone.
    AgentGone {
        /// Consumer name.
        id: String,
    },
    /// Events were missed: reload the job list (see [`sse::RESYNC`]).
    Resync {
        /// The `Last-Event-ID` (or position) that could not be continued from.
        requested: String,
        /// The position the connection continues after.
        cursor: String,
        /// Why, in words.
        reason: String,
    },
}

impl LiveEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            LiveEvent::Hello { .. } => sse::HELLO,
            LiveEvent::Job(_) => sse::JOB,
            LiveEvent::Queue(_) => sse::QUEUE,
            LiveEvent::AgentSeen(_) => sse::AGENT_SEEN,
            LiveEvent::AgentGone { .. } => sse::AGENT_GONE,
            LiveEvent::Resync { .. } => sse::RESYNC,
        }
    }

    /// The SSE `data:` JSON.
    pub fn data(&self) -> String {
        let v = match self {
            LiveEvent::Hello { cursor } => serde_json::json!({ "cursor": cursor }),
            LiveEvent::Job(e) => serde_json::to_value(e).unwrap_or_default(),
            LiveEvent::Queue(q) => serde_json::to_value(q).unwrap_or_default(),
            LiveEvent::AgentSeen(a) => serde_json::to_value(a).unwrap_or_default(),
            LiveEvent::AgentGone { id } => serde_json::json!({ "id": id }),
            LiveEvent::Resync {
                requested,
                cursor,
                reason,
            } => serde_json::json!({ "requested": requested, "cursor": cursor, "reason": reason }),
        };
        v.to_string()
    }

    /// Parse an SSE event; `Ok(None)` for a name this version does not know (skip it).
    pub fn parse(name: &str, data: &str) -> Result<Option<LiveEvent>, String> {
        #[derive(Deserialize)]
        struct Cursor {
            cursor: String,
        }
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        #[derive(Deserialize)]
        struct Resync {
            requested: String,
            cursor: String,
            reason: String,
        }
        let bad = |e: serde_json::Error| format!("bad `{name}` event: {e}");
        Ok(Some(match name {
            sse::HELLO => LiveEvent::Hello {
                cursor: serde_json::from_str::<Cursor>(data).map_err(bad)?.cursor,
            },
            sse::JOB => LiveEvent::Job(serde_json::from_str(data).map_err(bad)?),
            sse::QUEUE => LiveEvent::Queue(serde_json::from_str(data).map_err(bad)?),
            sse::AGENT_SEEN => LiveEvent::AgentSeen(serde_json::from_str(data).map_err(bad)?),
            sse::AGENT_GONE => LiveEvent::AgentGone {
                id: serde_json::from_str::<Id>(data).map_err(bad)?.id,
            },
            sse::RESYNC => {
                let r = serde_json::from_str::<Resync>(data).map_err(bad)?;
                LiveEvent::Resync {
                    requested: r.requested,
                    cursor: r.cursor,
                    reason: r.reason,
                }
            }
            _ => return Ok(None),
        }))
    }
}

/// An entry of the dead-letter stream as `GET /api/v1/dead-letters` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeadLetter {
    /// Dead-letter stream entry id (when it was dead-lettered).
    pub entry: String,
    /// Job id.
    pub job: String,
    /// Claims it had.
    pub attempts: u32,
    /// Why.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_event_json_is_unchanged_and_round_trips() {
        let json = r#"{"type":"job_claimed","job":"01J0000000000000000000000A","status":"running","step":null,"agent":"a-1","ts":"2026-01-01T00:00:00Z"}"#;
        let ev: Event = serde_json::from_str(json).unwrap();
        assert_eq!(ev.event_kind(), EventKind::JobClaimed);
        let live = LiveEvent::Job(ev.clone());
        assert_eq!(live.name(), "job");
        assert_eq!(
            LiveEvent::parse(live.name(), &live.data()).unwrap(),
            Some(live)
        );
        assert_eq!(
            EventKind::parse("phase_x"),
            EventKind::Other("phase_x".into())
        );
        assert_eq!(LiveEvent::parse("future", "{}").unwrap(), None);
        assert!(LiveEvent::parse("job", "{").is_err());
        let resync = LiveEvent::Resync {
            requested: "1-0".into(),
            cursor: "9-0".into(),
            reason: "trimmed".into(),
        };
        assert_eq!(resync.name(), "resync");
        assert_eq!(
            LiveEvent::parse("resync", &resync.data()).unwrap(),
            Some(resync)
        );
        assert!(LiveEvent::parse("resync", r#"{"cursor":"1-0"}"#).is_err());
        let gone = LiveEvent::AgentGone { id: "a".into() };
        assert_eq!(
            LiveEvent::parse("agent_gone", &gone.data()).unwrap(),
            Some(gone)
        );
    }
}
