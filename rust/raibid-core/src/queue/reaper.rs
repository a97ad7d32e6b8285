//! Recovery: requeue or dead-letter jobs whose lease expired, prune consumers of agents that are gone,
//! prune the index past retention. Every entry is handled on its own: one bad record never stops the
//! recovery of the others.

use super::{field, json, record_json, Event, Queue, QueueError, Requeued, Result};
use crate::contract::{self, keys, kinds::Route};
use crate::job::{JobId, Status};
use chrono::Utc;
use redis::streams::{StreamInfoConsumersReply, StreamPendingCountReply, StreamRangeReply};
use std::time::Duration;

/// Who asks for a requeue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller<'a> {
    /// The lease holder (an agent releasing its job on shutdown).
    Agent(&'a str),
    /// An operator or a test: requeue whatever the lease says (the revision still fences).
    Force,
    /// The reaper: only if the lease stored with the claim has expired (or, for an entry that was never
    /// claimed, `orphan` says it idled past the orphan timeout).
    Reaper { orphan: bool },
}

impl Queue {
    /// Put a claimed job back in the queue with a fresh stream entry (its old entry acknowledged in the
    /// same script), or — when it was already claimed `max_attempts` times — move it to the dead-letter
    /// stream as failed. With `required_lease` only the lease holder may do it (an agent releasing its
    /// job on shutdown); without it, it is forced (operators, tests). The reaper (`reap`) instead lets
    /// the lease expiry stored with the claim decide, inside the script, and backs off when the record
    /// changed since it was read.
    pub async fn requeue(
        &self,
        job_id: &str,
        entry_id: &str,
        reason: &str,
        required_lease: Option<&str>,
    ) -> Result<Requeued> {
        let caller = match required_lease {
            Some(l) => Caller::Agent(l),
            None => Caller::Force,
        };
        self.requeue_as(job_id, entry_id, None, reason, caller)
            .await
    }

    /// `stream`: the stream of `entry_id`; `None` reads it from the record (its current entry's stream,
    /// the kind's shared stream for records without one).
    async fn requeue_as(
        &self,
        job_id: &str,
        entry_id: &str,
        stream: Option<&str>,
        reason: &str,
        caller: Caller<'_>,
    ) -> Result<Requeued> {
        // An agent retries revision conflicts (it holds the lease: nobody else may requeue); the reaper
        // backs off at once (the next pass looks again).
        let tries = if !matches!(caller, Caller::Reaper { .. }) {
            100
        } else {
            1
        };
        for _ in 0..tries {
            let (mut job, rev) = match self.load(job_id).await {
                Ok(x) => x,
                Err(QueueError::NotFound(_)) => {
                    for r in crate::contract::kinds::ALL {
                        self.ack_entry(r, entry_id, job_id, None).await?;
                    }
                    if let Some(s) = stream {
                        self.ack_entry_in(s, keys::AGENTS_GROUP, entry_id, job_id, None)
                            .await?;
                    }
                    return Ok(Requeued::Dropped);
                }
                Err(e) => return Err(e),
            };
            let route = job.kind.route();
            let stream = match stream {
                Some(s) => s.to_string(),
                None => self.entry_stream(job_id, entry_id, route).await?,
            };
            if let Caller::Agent(l) = caller {
                if job.lease.as_deref() != Some(l) {
                    return Err(QueueError::LeaseLost(job_id.to_string()));
                }
            }
            if job.status.is_final() {
                self.ack_entry_in(&stream, route.group, entry_id, job_id, None)
                    .await?;
                return Ok(Requeued::Dropped);
            }
            let now = Utc::now();
            let (mode, outcome) = if job.cancel_requested {
                job.finish(
                    Status::Cancelled,
                    Some(format!("cancelled ({reason})")),
                    now,
                );
                ("final", Requeued::Finished)
            } else if job.attempt >= self.cfg.max_attempts {
                job.finish(
                    Status::Failed,
                    Some(format!("gave up after {} attempts: {reason}", job.attempt)),
                    now,
                );
                ("dead", Requeued::DeadLettered)
            } else {
                if job.status != Status::Queued {
                    job.failure_reason =
                        Some(format!("attempt {} interrupted: {reason}", job.attempt));
                }
                job.status = Status::Queued;
                job.step = None;
                job.lease = None;
                job.timestamps.queued = Some(now);
                job.timestamps.claimed = None;
                job.timestamps.started = None;
                ("queue", Requeued::Queued)
            };
            let record = record_json(&job)?;
            let kind = match outcome {
                Requeued::Queued => "job_requeued",
                _ => "job_finished",
            };
            let event = json(job_id, &Event::of(kind, &job, now))?;
            let (who, orphan) = match caller {
                Caller::Agent(_) => ("agent", false),
                Caller::Force => ("force", false),
                Caller::Reaper { orphan } => ("reap", orphan),
            };
            let mut con = self.con.clone();
            let r: i64 = self
                .scripts
                .requeue
                .key(contract::job_key(job_id))
                .key(&stream)
                .key(keys::EVENTS_STREAM)
                .key(keys::DEAD_STREAM)
                .key(contract::job_log_key(job_id))
                .key(keys::JOB_STATUS_COUNTS)
                .key(route.stream)
                .arg(&rev)
                .arg(record)
                .arg(entry_id)
                .arg(route.group)
                .arg(job_id)
                .arg(event)
                .arg(self.cfg.events_maxlen)
                .arg(mode)
                .arg(job.attempt)
                .arg(reason)
                .arg(self.cfg.retention.as_secs())
                .arg(job.status.as_str())
                .arg(who)
                .arg(if orphan { "1" } else { "0" })
                .invoke_async(&mut con)
                .await?;
            match r {
                -1 => return Ok(Requeued::Dropped),
                -3 => return Ok(Requeued::Alive),
                -4 => {
                    // A stale entry (the job moved on to another entry): acknowledge it.
                    self.ack_entry_in(&stream, route.group, entry_id, job_id, None)
                        .await?;
                    return Ok(Requeued::Dropped);
                }
                0 if !matches!(caller, Caller::Reaper { .. }) => continue,
                0 => return Ok(Requeued::Alive),
                _ => return Ok(outcome),
            }
        }
        Err(QueueError::Conflict(format!(
            "job {job_id}: too many concurrent updates"
        )))
    }

    /// One reaper pass over every job stream: each pending entry whose claim's lease (stored with the
    /// claim, renewed by its agent) has expired is requeued, or dead-lettered after `max_attempts`;
    /// entries delivered but never claimed (no lease) are requeued once idle longer than `orphan`.
    /// Errors are per entry: a corrupt record is dead-lettered with a reason and the pass goes on.
    /// Safe in several dispatcher replicas at once: the script's revision check lets one of them win.
    pub async fn reap(&self, reaper: &str, orphan: Duration) -> Result<Vec<(String, Requeued)>> {
        tracing::trace!(reaper, "reaper pass");
        let mut out = Vec::new();
        // One reading of the Redis clock per pass (expiries are compared inside the script again).
        let now_ms = self.redis_now_ms().await?;
        for route in crate::contract::kinds::ALL {
            self.reap_route(route, route.stream, orphan, now_ms, &mut out)
                .await?;
        }
        // Node streams (ADR 0013): their expired claims go back to the shared stream, and so do the
        // entries still undelivered on the stream of a node with no live agent left.
        let rust = crate::job::JobKind::Rust.route();
        for (node, expiry) in self.nodes().await? {
            let stream = contract::node_jobs_stream(&node);
            self.reap_route(rust, &stream, orphan, now_ms, &mut out)
                .await?;
            // A node with no live agent gives back everything still waiting on its stream; a live node
            // what waited longer than the orphan timeout (an agent that died without deregistering
            // looked free until its heartbeat expired, and the job was routed to it).
            let cutoff = (expiry >= now_ms).then(|| now_ms - orphan.as_millis() as i64);
            self.rescue_node_stream(&stream, reaper, cutoff, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// Nodes that had agents (`raibid:nodes`) with the expiry of their latest agent heartbeat (ms).
    pub async fn nodes(&self) -> Result<Vec<(String, i64)>> {
        let mut con = self.con.clone();
        let v: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(keys::NODES)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await?;
        Ok(v.into_iter().map(|(n, s)| (n, s as i64)).collect())
    }

    /// Move undelivered entries of a node stream to the shared stream: all of them (`cutoff` `None`: the
    /// node has no live agent) or those published before `cutoff` (ms). The reaper reads them as a
    /// consumer of the group and requeues each (acknowledged there, added to the shared stream, in one
    /// script), so they finish elsewhere and both streams' `lag` stay exact.
    async fn rescue_node_stream(
        &self,
        stream: &str,
        reaper: &str,
        cutoff: Option<i64>,
        out: &mut Vec<(String, Requeued)>,
    ) -> Result<()> {
        let group = keys::AGENTS_GROUP;
        let mut con = self.con.clone();
        for _ in 0..100 {
            let count = match cutoff {
                None => 100,
                Some(c) => {
                    let n = self.undelivered_before(stream, c).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    n
                }
            };
            let r: redis::RedisResult<Option<StreamRangeReply>> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(group)
                .arg(reaper)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(stream)
                .arg(">")
                .query_async(&mut con)
                .await
                .map(|r: Option<redis::streams::StreamReadReply>| {
                    r.map(|r| StreamRangeReply {
                        ids: r.keys.into_iter().flat_map(|k| k.ids).collect(),
                    })
                });
            let entries = match r {
                Ok(Some(r)) if !r.ids.is_empty() => r.ids,
                Ok(_) => return Ok(()),
                Err(e) if super::is_nogroup(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for e in entries {
                let raw = field(&e, "job").unwrap_or_default();
                let Ok(id) = JobId::parse(&raw) else {
                    let reason = format!("entry {}: not a job id", e.id);
                    self.ack_entry_in(stream, group, &e.id, &raw, Some(&reason))
                        .await?;
                    continue;
                };
                let reason = match cutoff {
                    None => "its node has no live agent left",
                    Some(_) => "no agent of its node took it within the orphan timeout",
                };
                match self
                    .requeue_as(&id, &e.id, Some(stream), reason, Caller::Force)
                    .await
                {
                    Ok(r) => {
                        tracing::warn!(job = %id, stream, outcome = ?r, "moved a job off a node without agents");
                        out.push((id.to_string(), r));
                    }
                    Err(err) => {
                        tracing::warn!(job = %id, stream, error = %err, "could not move a job off a dead node; the next pass retries it")
                    }
                }
            }
        }
        Ok(())
    }

    /// How many of a node stream's undelivered entries (at most 100) were published before `cutoff` (ms).
    async fn undelivered_before(&self, stream: &str, cutoff: i64) -> Result<usize> {
        let mut con = self.con.clone();
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut con)
            .await;
        let Ok(groups) = groups else { return Ok(0) };
        let Some(g) = groups
            .groups
            .into_iter()
            .find(|g| g.name == keys::AGENTS_GROUP)
        else {
            return Ok(0);
        };
        let r: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({}", g.last_delivered_id))
            .arg(format!("{}", cutoff.max(0)))
            .arg("COUNT")
            .arg(100)
            .query_async(&mut con)
            .await?;
        Ok(r.ids.len())
    }

    /// The stream of a job's entry: the record's `stream` when `entry` is its current entry, else the
    /// kind's shared stream.
    async fn entry_stream(&self, job_id: &str, entry: &str, route: Route) -> Result<String> {
        let mut con = self.con.clone();
        let (cur, stream): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(contract::job_key(job_id))
            .arg("entry")
            .arg("stream")
            .query_async(&mut con)
            .await?;
        Ok(match stream {
            Some(s) if !s.is_empty() && cur.as_deref() == Some(entry) => s,
            _ => route.stream.to_string(),
        })
    }

    async fn reap_route(
        &self,
        route: Route,
        stream: &str,
        orphan: Duration,
        now_ms: i64,
        out: &mut Vec<(String, Requeued)>,
    ) -> Result<()> {
        let mut con = self.con.clone();
        let mut start = "-".to_string();
        loop {
            let pending: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
                .arg(stream)
                .arg(route.group)
                .arg(&start)
                .arg("+")
                .arg(200)
                .query_async(&mut con)
                .await;
            let pending = match pending {
                Ok(p) => p,
                Err(e) if super::is_nogroup(&e) => {
                    if stream == route.stream {
                        self.ensure_group().await?;
                    }
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let n = pending.ids.len();
            for p in &pending.ids {
                start = format!("({}", p.id);
                match self
                    .reap_entry(route, stream, &p.id, p.last_delivered_ms, orphan, now_ms)
                    .await
                {
                    Ok(Some(r)) => out.push(r),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(entry = %p.id, stream, error = %e, "reaper: could not handle an entry; going on with the others")
                    }
                }
            }
            if n < 200 {
                return Ok(());
            }
        }
    }

    async fn reap_entry(
        &self,
        route: Route,
        stream: &str,
        entry: &str,
        idle_ms: usize,
        orphan: Duration,
        now_ms: i64,
    ) -> Result<Option<(String, Requeued)>> {
        let mut con = self.con.clone();
        let range: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(entry)
            .arg(entry)
            .query_async(&mut con)
            .await?;
        let Some(raw) = range.ids.first().and_then(|e| field(e, "job")) else {
            // Trimmed or empty entry: nothing to run.
            self.ack_entry_in(stream, route.group, entry, "", None)
                .await?;
            return Ok(None);
        };
        let id = match JobId::parse(&raw) {
            Ok(id) => id,
            Err(e) => {
                let reason = format!("entry {entry}: {e}");
                self.ack_entry_in(stream, route.group, entry, &raw, Some(&reason))
                    .await?;
                return Ok(None);
            }
        };
        let (expires, cur_entry): (Option<i64>, Option<String>) = redis::cmd("HMGET")
            .arg(contract::job_key(&id))
            .arg("lease_expires")
            .arg("entry")
            .query_async(&mut con)
            .await?;
        let orphaned = idle_ms as u128 > orphan.as_millis();
        match expires {
            Some(exp) if exp > now_ms => return Ok(None),
            None if !orphaned && cur_entry.as_deref() == Some(entry) => return Ok(None),
            _ => {}
        }
        let job = match self.get(&id).await {
            Ok(j) => Some(j),
            Err(QueueError::Corrupt(_, why)) => {
                let reason = format!("record unreadable: {why}");
                self.ack_entry_in(stream, route.group, entry, &id, Some(&reason))
                    .await?;
                return Ok(Some((id.to_string(), Requeued::DeadLettered)));
            }
            Err(_) => None,
        };
        let reason = match &job {
            Some(j) => format!(
                "agent {} stopped renewing its lease{}",
                j.agent.as_deref().unwrap_or("?"),
                j.step
                    .as_ref()
                    .map(|s| format!(" during step `{s}`"))
                    .unwrap_or_default()
            ),
            None => "its agent stopped renewing its lease".to_string(),
        };
        let r = self
            .requeue_as(
                &id,
                entry,
                Some(stream),
                &reason,
                Caller::Reaper { orphan: orphaned },
            )
            .await?;
        if r == Requeued::Alive {
            return Ok(None);
        }
        tracing::warn!(job = %id, entry = %entry, outcome = ?r, "reclaimed an expired lease");
        Ok(Some((id.to_string(), r)))
    }

    /// The Redis server's clock in milliseconds (the clock lease expiries are written with).
    async fn redis_now_ms(&self) -> Result<i64> {
        let mut con = self.con.clone();
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut con).await?;
        Ok(s * 1000 + us / 1000)
    }

    /// Delete consumers of agents that are gone: nothing pending, no live heartbeat, idle longer than
    /// `idle`. (A crashed pod leaves its consumer behind; its entries were already reclaimed.)
    pub async fn prune_consumers(&self, idle: Duration) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        let mut gone = Vec::new();
        let mut streams: Vec<(String, &str)> = crate::contract::kinds::ALL
            .iter()
            .map(|r| (r.stream.to_string(), r.group))
            .collect();
        for (node, _) in self.nodes().await? {
            streams.push((contract::node_jobs_stream(&node), keys::AGENTS_GROUP));
        }
        for (stream, group) in &streams {
            let reply: redis::RedisResult<StreamInfoConsumersReply> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(group)
                .query_async(&mut con)
                .await;
            let Ok(reply) = reply else { continue };
            for c in reply.consumers {
                if c.pending == 0
                    && c.idle as u128 > idle.as_millis()
                    && !self.agent_alive(&c.name).await?
                {
                    let _: i64 = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(stream)
                        .arg(group)
                        .arg(&c.name)
                        .query_async(&mut con)
                        .await?;
                    gone.push(c.name);
                }
            }
        }
        Ok(gone)
    }

    /// Drop index entries older than the retention (their records expired); bounded work per call.
    pub async fn prune_index(&self) -> Result<u64> {
        let mut con = self.con.clone();
        let before = Utc::now().timestamp_millis() - self.cfg.retention.as_millis() as i64;
        let n: u64 = redis::cmd("ZREMRANGEBYSCORE")
            .arg(keys::JOB_INDEX)
            .arg("-inf")
            .arg(before)
            .query_async(&mut con)
            .await?;
        Ok(n)
    }

    /// Entries of the dead-letter stream: (entry id, job id, attempts, reason).
    pub async fn dead_letters(&self) -> Result<Vec<(String, String, u32, String)>> {
        let mut con = self.con.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::DEAD_STREAM)
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await?;
        Ok(reply
            .ids
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    field(e, "job").unwrap_or_default(),
                    field(e, "attempts")
                        .and_then(|a| a.parse().ok())
                        .unwrap_or(0),
                    field(e, "reason").unwrap_or_default(),
                )
            })
            .collect())
    }
}
