//! The events stream as read by the dispatcher's status reporter (consumer group).

use super::{field, is_nogroup, xreadgroup, Event, Queue, Result};
use crate::contract::keys;
use crate::job::Status;
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use std::time::Duration;

impl Queue {
    /// Read events from the events stream for the status reporter group (non-blocking batches).
    pub async fn read_events(
        &self,
        con: &mut MultiplexedConnection,
        consumer: &str,
        block: Duration,
    ) -> Result<Vec<(String, Event)>> {
        let reply: redis::RedisResult<Option<StreamReadReply>> = xreadgroup(
            &[keys::EVENTS_STREAM],
            keys::STATUS_REPORTER_GROUP,
            consumer,
            100,
            block,
        )
        .query_async(con)
        .await;
        let reply = match reply {
            Ok(r) => r.unwrap_or_default(),
            Err(e) if is_nogroup(&e) => {
                tracing::warn!(
                    "events consumer group missing (Redis flushed or lost?); recreating it"
                );
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for e in reply.keys.iter().flat_map(|k| k.ids.iter()) {
            let id = e.id.clone();
            if let Some(ev) = field(e, "event").and_then(|e| serde_json::from_str::<Event>(&e).ok())
            {
                out.push((id, ev));
            } else {
                out.push((
                    id,
                    Event {
                        kind: "unknown".into(),
                        job: String::new(),
                        status: Status::Queued,
                        step: None,
                        agent: None,
                        ts: Utc::now(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// Acknowledge processed events.
    pub async fn ack_events(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(keys::EVENTS_STREAM)
            .arg(keys::STATUS_REPORTER_GROUP)
            .arg(ids)
            .query_async(&mut con)
            .await?;
        Ok(())
    }
}
