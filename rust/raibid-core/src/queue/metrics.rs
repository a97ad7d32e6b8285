//! Figures: queue depth and lag per agent type, histograms and status counts kept by the write paths.

use super::{entry_millis, Queue, QueueStats, Result};
use crate::job::Status;
use chrono::Utc;
use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};
use std::collections::HashMap;

/// Bucket upper bounds (seconds) of the enqueue → claim latency histogram.
pub const CLAIM_LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];
/// Bucket upper bounds (seconds) of the job duration histogram.
pub const JOB_DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl Queue {
    /// Read a histogram: (bucket bound → cumulative count, sum, count).
    pub async fn histogram(&self, key: &str) -> Result<HashMap<String, f64>> {
        let mut con = self.con.clone();
        let m: HashMap<String, String> =
            redis::cmd("HGETALL").arg(key).query_async(&mut con).await?;
        Ok(m.into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }

    /// Jobs per status, kept by the write scripts in `raibid:metrics:jobs_by_status` (O(1) per scrape):
    /// queued and running are current counts; final statuses count every job that ever reached them.
    pub async fn count_by_status(&self) -> Result<HashMap<Status, u64>> {
        let mut con = self.con.clone();
        let m: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(crate::contract::keys::JOB_STATUS_COUNTS)
            .query_async(&mut con)
            .await?;
        Ok(Status::ALL
            .iter()
            .map(|s| (*s, m.get(s.as_str()).copied().unwrap_or(0).max(0) as u64))
            .collect())
    }

    /// Queue figures from `XLEN` and `XINFO GROUPS`, per agent type, with their totals on top. The
    /// total `lag` is `None` when any type's is.
    pub async fn stats(&self) -> Result<QueueStats> {
        let mut kinds = Vec::new();
        for route in crate::contract::kinds::ALL {
            kinds.push(self.stream_stats(route.stream, route.group).await?);
        }
        // Each node's stream (ADR 0013) with its own lag, after the kinds' shared streams.
        for (node, _) in self.nodes().await? {
            let stream = crate::contract::node_jobs_stream(&node);
            kinds.push(
                self.stream_stats(&stream, crate::contract::keys::AGENTS_GROUP)
                    .await?,
            );
        }
        let mut total = QueueStats {
            stream: kinds
                .iter()
                .map(|k| k.stream.as_str())
                .collect::<Vec<_>>()
                .join(","),
            group: crate::contract::keys::AGENTS_GROUP.into(),
            length: 0,
            lag: Some(0),
            pending: 0,
            oldest_waiting_age_secs: None,
            consumers: 0,
            kinds: Vec::new(),
        };
        for k in &kinds {
            total.length += k.length;
            total.lag = match (total.lag, k.lag) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
            total.pending += k.pending;
            total.consumers += k.consumers;
            total.oldest_waiting_age_secs =
                match (total.oldest_waiting_age_secs, k.oldest_waiting_age_secs) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
        }
        total.kinds = kinds;
        Ok(total)
    }

    async fn stream_stats(&self, stream: &str, group: &str) -> Result<QueueStats> {
        let mut con = self.con.clone();
        let length: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut con).await?;
        let groups: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut con)
            .await;
        let mut stats = QueueStats {
            stream: stream.into(),
            group: group.into(),
            length,
            lag: None,
            pending: 0,
            oldest_waiting_age_secs: None,
            consumers: 0,
            kinds: Vec::new(),
        };
        // A missing stream or group (flushed Redis) reads as "nothing queued" until it is recreated.
        let Ok(groups) = groups else {
            stats.lag = Some(length);
            return Ok(stats);
        };
        let Some(g) = groups.groups.into_iter().find(|g| g.name == group) else {
            stats.lag = Some(length);
            return Ok(stats);
        };
        stats.lag = g.lag.map(|l| l as u64);
        stats.pending = g.pending as u64;
        stats.consumers = g.consumers as u64;
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({}", g.last_delivered_id))
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut con)
            .await?;
        if let Some(ms) = reply.ids.first().and_then(|e| entry_millis(&e.id)) {
            let age = (Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0;
            stats.oldest_waiting_age_secs = Some(age);
        }
        Ok(stats)
    }
}
