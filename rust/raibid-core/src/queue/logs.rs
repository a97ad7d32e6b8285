//! Job logs: one capped stream per job (`raibid:job:{id}:log`), appended by the lease holder only.

use super::{field, ts_string, LogLine, Queue, Result};
use crate::contract;
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use std::time::Duration;

fn log_line(e: &StreamId) -> LogLine {
    LogLine {
        seq: e.id.clone(),
        step: field(e, "step").unwrap_or_default(),
        stream: field(e, "stream").unwrap_or_default(),
        ts: field(e, "ts").unwrap_or_default(),
        line: field(e, "line").unwrap_or_default(),
    }
}

impl Queue {
    /// Append log lines `(step, stream, line)` for a claimed job, each stamped now: capped by lines and
    /// by bytes (each line costing its payload plus `log_entry_overhead`), fenced by the lease. Returns
    /// false when the lease was lost.
    pub async fn append_log(
        &self,
        job_id: &str,
        lease: &str,
        lines: &[(String, String, String)],
    ) -> Result<bool> {
        let ts = ts_string(Utc::now());
        self.append(
            job_id,
            lease,
            lines.iter().map(|(st, sm, l)| (ts.clone(), st, sm, l)),
        )
        .await
    }

    /// [`Queue::append_log`] with each line's own time (when the agent read it, not when its batch
    /// reached Redis).
    pub async fn append_log_at(
        &self,
        job_id: &str,
        lease: &str,
        lines: &[super::StampedLine],
    ) -> Result<bool> {
        self.append(
            job_id,
            lease,
            lines
                .iter()
                .map(|(at, (st, sm, l))| (ts_string(*at), st, sm, l)),
        )
        .await
    }

    async fn append<'a>(
        &self,
        job_id: &str,
        lease: &str,
        lines: impl ExactSizeIterator<Item = (String, &'a String, &'a String, &'a String)>,
    ) -> Result<bool> {
        if lines.len() == 0 {
            return Ok(true);
        }
        let mut con = self.con.clone();
        let mut inv = self.scripts.append.key(contract::job_log_key(job_id));
        inv.key(contract::job_key(job_id))
            .arg(self.cfg.log_cap_bytes)
            .arg(self.cfg.log_cap_lines)
            .arg(self.cfg.log_entry_overhead)
            .arg(lease);
        for (ts, step, stream, line) in lines {
            inv.arg(step).arg(stream).arg(ts).arg(line);
        }
        let r: i64 = inv.invoke_async(&mut con).await?;
        Ok(r >= 0)
    }

    /// Read log lines after `after` (exclusive; `None` = from the start), at most `count`.
    pub async fn read_log(
        &self,
        job_id: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<LogLine>> {
        let mut con = self.con.clone();
        let start = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(contract::job_log_key(job_id))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut con)
            .await?;
        Ok(reply.ids.iter().map(log_line).collect())
    }

    /// Block up to `block` for log lines after `after` on a dedicated connection.
    pub async fn follow_log(
        &self,
        con: &mut MultiplexedConnection,
        job_id: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<LogLine>> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(contract::job_log_key(job_id))
            .arg(after)
            .query_async(con)
            .await?;
        Ok(reply
            .map(|r| {
                r.keys
                    .iter()
                    .flat_map(|k| k.ids.iter().map(log_line))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Record that the job's log is not whole: the agent dropped some of its output (its per-job
    /// budget), as soon as it did. `log_truncated` becomes `2`: unlike the Redis-side cap's `1`, it
    /// does not end the appends (the steps' kept tails and the agent's own lines still come), and it
    /// never replaces a `1`.
    pub async fn mark_log_truncated(&self, job_id: &str) -> Result<()> {
        let mut con = self.con.clone();
        let _: () = redis::cmd("HSETNX")
            .arg(contract::job_key(job_id))
            .arg("log_truncated")
            .arg("2")
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// Whether the job's log was truncated (by the Redis-side cap or by the agent's budget).
    pub async fn log_truncated(&self, job_id: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(contract::job_key(job_id))
            .arg("log_truncated")
            .query_async(&mut con)
            .await?;
        Ok(matches!(v.as_deref(), Some("1" | "2")))
    }

    /// What the job's log holds: (lines, bytes as the cap counts them).
    pub async fn log_size(&self, job_id: &str) -> Result<(u64, u64)> {
        let mut con = self.con.clone();
        let v: (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(contract::job_key(job_id))
            .arg("log_entries")
            .arg("log_bytes")
            .query_async(&mut con)
            .await?;
        Ok((v.0.unwrap_or(0), v.1.unwrap_or(0)))
    }
}
