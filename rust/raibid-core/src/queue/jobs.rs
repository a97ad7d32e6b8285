//! Jobs: enqueue, load, compare-and-set writes, claims, fenced progress and final writes, cancel, list.

use super::{
    field, is_nogroup, json, record_json, xreadgroup, xreadgroup_now, Claim, Enqueued, Event,
    Queue, QueueError, Result, CLAIM_LATENCY_BUCKETS, JOB_DURATION_BUCKETS,
};
use crate::contract::{self, keys, kinds::Route};
use crate::job::{Job, JobId, JobKind, Status};
use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::Value;
use std::time::Duration;

/// One compare-and-set write (the `update.lua` arguments, named).
pub(super) struct Cas<'a> {
    /// Revision the caller read.
    pub rev: &'a str,
    /// Event kind to append, if any.
    pub event: Option<&'a str>,
    /// Entry to acknowledge (final writes), if any.
    pub ack_entry: Option<&'a str>,
    /// The stream of that entry (or of `entry`) when it is not the kind's shared one (a node stream).
    pub stream: Option<&'a str>,
    /// Lease token to store (`""` clears it).
    pub new_lease: &'a str,
    /// Lease the record must hold (fencing), if any.
    pub required_lease: Option<&'a str>,
    /// Stream entry to record as the job's current one, if any.
    pub entry: Option<&'a str>,
    /// With a lease: set its expiry to now + this.
    pub lease_ttl: Option<Duration>,
    /// A histogram observation recorded by the same script, only if the write happens.
    pub observe: Option<Observation<'a>>,
}

/// One histogram observation: the value and the histogram (key, cumulative bucket bounds).
#[derive(Clone, Copy)]
pub(super) struct Observation<'a> {
    pub key: &'a str,
    pub buckets: &'a [f64],
    pub value: f64,
}

impl Queue {
    /// Atomically create the job record, its stream entry (on its kind's stream), index entry and
    /// (when `delivery` is given) the de-duplication key. A delivery seen before returns the job it
    /// made and enqueues nothing.
    pub async fn enqueue(&self, job: Job, delivery: Option<(&str, &str)>) -> Result<Enqueued> {
        let mut con = self.con.clone();
        let record = record_json(&job)?;
        let now = job.timestamps.queued.unwrap_or_else(Utc::now);
        let event = json(&job.id, &Event::of("job_created", &job, now))?;
        let dedup = delivery.map(|(forge, id)| contract::delivery_key(forge, id));
        let prune_before = now.timestamp_millis() - self.cfg.retention.as_millis() as i64;
        // Rust jobs are routed to the node holding the repository's warm cache (ADR 0013).
        let repo = if job.kind == JobKind::Rust {
            contract::routing_repo_key(&job.source.repo_url)
        } else {
            String::new()
        };
        let r: Vec<Value> = self
            .scripts
            .enqueue
            .key(contract::job_key(&job.id))
            .key(job.kind.route().stream)
            .key(keys::JOB_INDEX)
            .key(keys::EVENTS_STREAM)
            .key(
                dedup
                    .clone()
                    .unwrap_or_else(|| contract::delivery_key("none", "none")),
            )
            .key(keys::JOB_STATUS_COUNTS)
            .key(keys::NODES)
            .arg(job.id.as_str())
            .arg(record)
            .arg(now.timestamp_millis())
            .arg(self.cfg.dedup_ttl.as_secs())
            .arg(event)
            .arg(self.cfg.events_maxlen)
            .arg(if dedup.is_some() { "1" } else { "0" })
            .arg(prune_before)
            .arg(self.cfg.max_jobs)
            .arg(job.status.as_str())
            .arg(repo)
            .arg(super::ROUTING_TTL.as_millis() as u64)
            .arg(keys::NODE_PREFIX)
            .arg(keys::NODE_REPOS_SUFFIX)
            .arg(keys::NODE_AGENTS_SUFFIX)
            .arg(keys::NODE_JOBS_STREAM_PREFIX)
            .arg(job.kind.route().group)
            .arg(job.source.git_ref.as_str())
            .invoke_async(&mut con)
            .await?;
        match r.as_slice() {
            [Value::Int(1), _, stream] => {
                if let Ok(s) = redis::from_redis_value_ref::<String>(stream) {
                    tracing::debug!(job = %job.id, stream = %s, "enqueued");
                }
                Ok(Enqueued::New(job))
            }
            [Value::Int(0), existing] => Ok(Enqueued::Duplicate(
                redis::from_redis_value_ref::<String>(existing).unwrap_or_default(),
            )),
            other => Err(QueueError::Corrupt(
                job.id.to_string(),
                format!("unexpected enqueue reply {other:?}"),
            )),
        }
    }

    /// Load a job with its revision.
    pub async fn load(&self, id: &str) -> Result<(Job, String)> {
        let mut con = self.con.clone();
        let (record, rev): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(contract::job_key(id))
            .arg("record")
            .arg("rev")
            .query_async(&mut con)
            .await?;
        match (record, rev) {
            (Some(r), Some(rev)) => {
                let job: Job = serde_json::from_str(&r)
                    .map_err(|e| QueueError::Corrupt(id.to_string(), e.to_string()))?;
                if job.id != id {
                    return Err(QueueError::Corrupt(
                        id.to_string(),
                        format!("the record names another job id `{}`", job.id),
                    ));
                }
                Ok((job, rev))
            }
            _ => Err(QueueError::NotFound(id.to_string())),
        }
    }

    /// Get a job.
    pub async fn get(&self, id: &str) -> Result<Job> {
        Ok(self.load(id).await?.0)
    }

    /// Compare-and-set write of a record. Returns false when the revision moved (reload and retry).
    pub(super) async fn cas(&self, job: &Job, w: Cas<'_>) -> Result<bool> {
        Ok(self.cas_rev(job, w).await?.is_some())
    }

    /// [`Queue::cas`], returning the record's new revision (`None`: the revision moved).
    pub(super) async fn cas_rev(&self, job: &Job, w: Cas<'_>) -> Result<Option<u64>> {
        let mut con = self.con.clone();
        let record = record_json(job)?;
        let event = match w.event {
            Some(kind) => json(&job.id, &Event::of(kind, job, Utc::now()))?,
            None => String::new(),
        };
        let expire = if job.status.is_final() {
            self.cfg.retention.as_secs()
        } else {
            0
        };
        let route = job.kind.route();
        let mut inv = self.scripts.update.prepare_invoke();
        inv.key(contract::job_key(&job.id))
            .key(w.stream.unwrap_or(route.stream))
            .key(keys::EVENTS_STREAM)
            .key(contract::job_log_key(&job.id))
            .key(keys::JOB_STATUS_COUNTS)
            .key(w.observe.map(|o| o.key).unwrap_or(keys::CLAIM_LATENCY_HIST))
            .arg(w.rev)
            .arg(record)
            .arg(event)
            .arg(self.cfg.events_maxlen)
            .arg(w.ack_entry.unwrap_or(""))
            .arg(route.group)
            .arg(expire)
            .arg(w.new_lease)
            .arg(w.required_lease.unwrap_or(""))
            .arg(w.entry.unwrap_or(""))
            .arg(job.status.as_str())
            .arg(w.lease_ttl.map(|d| d.as_millis() as u64).unwrap_or(0));
        match w.observe {
            Some(o) => {
                inv.arg(o.value.to_string());
                for b in o.buckets.iter().filter(|b| o.value <= **b) {
                    inv.arg(b.to_string());
                }
            }
            None => {
                inv.arg("");
            }
        }
        let r: i64 = inv.invoke_async(&mut con).await?;
        match r {
            -1 => Err(QueueError::NotFound(job.id.to_string())),
            -2 => Err(QueueError::LeaseLost(job.id.to_string())),
            0 => Ok(None),
            r => Ok(Some(r as u64)),
        }
    }

    /// Apply `f` to the job with optimistic concurrency, retrying on revision conflicts. `f` returns
    /// `Ok(Some(event))` to write, `Ok(None)` to leave the record as it is.
    pub async fn modify<F>(&self, id: &str, mut f: F) -> Result<Job>
    where
        F: FnMut(&mut Job) -> Result<Option<&'static str>>,
    {
        for _ in 0..100 {
            let (mut job, rev) = self.load(id).await?;
            let event = match f(&mut job)? {
                Some(e) => e,
                None => return Ok(job),
            };
            let lease = job.lease.clone().unwrap_or_default();
            let w = Cas {
                rev: &rev,
                event: Some(event),
                ack_entry: None,
                stream: None,
                new_lease: &lease,
                required_lease: None,
                entry: None,
                lease_ttl: None,
                observe: None,
            };
            if self.cas(&job, w).await? {
                return Ok(job);
            }
        }
        Err(QueueError::Conflict(format!(
            "job {id}: too many concurrent updates"
        )))
    }

    /// Update a claimed job's record as its lease holder (step progress). Fails with `LeaseLost` when
    /// another agent holds the job now.
    pub async fn update_claimed(&self, claim: &mut Claim, event: &'static str) -> Result<()> {
        self.fenced_write(claim, event, false).await
    }

    /// Write the final status and acknowledge the stream entry, in one fenced step.
    pub async fn finish_claimed(&self, claim: &mut Claim) -> Result<()> {
        self.fenced_write(claim, "job_finished", true).await?;
        // A matrix cell's end may end its group, or (fail_fast) cancel its siblings.
        self.settle_cell(&claim.job).await;
        Ok(())
    }

    /// A record write by the lease holder, retried on revision conflicts; `last` also acknowledges the
    /// stream entry (trimming the head) and clears the lease.
    async fn fenced_write(&self, claim: &mut Claim, event: &'static str, last: bool) -> Result<()> {
        // First with the revision of this holder's own last write: nobody else wrote since (no cancel
        // request to keep), the script still checks the lease. A moved revision reloads.
        let mut known = claim.rev.take().map(|r| r.to_string());
        for _ in 0..100 {
            let rev = match known.take() {
                Some(r) => r,
                None => {
                    let (cur, rev) = self.load(&claim.job.id).await?;
                    if cur.lease.as_deref() != Some(claim.lease.as_str()) {
                        return Err(QueueError::LeaseLost(claim.job.id.to_string()));
                    }
                    // Keep a concurrent cancel request.
                    claim.job.cancel_requested |= cur.cancel_requested;
                    rev
                }
            };
            let (ack, new_lease) = if last {
                (Some(claim.entry_id.as_str()), "")
            } else {
                (None, claim.lease.as_str())
            };
            // The final write records the job's duration in the same script.
            let observe = if last {
                claim.job.duration_secs().map(|value| Observation {
                    key: keys::JOB_DURATION_HIST,
                    buckets: &JOB_DURATION_BUCKETS,
                    value,
                })
            } else {
                None
            };
            let w = Cas {
                rev: &rev,
                event: Some(event),
                ack_entry: ack,
                stream: Some(&claim.stream),
                new_lease,
                required_lease: Some(&claim.lease),
                entry: None,
                lease_ttl: None,
                observe,
            };
            if let Some(new) = self.cas_rev(&claim.job, w).await? {
                claim.rev = Some(new);
                return Ok(());
            }
        }
        Err(QueueError::Conflict(format!(
            "job {}: too many concurrent updates",
            claim.job.id
        )))
    }

    /// Renew a claim's lease (the agent's heartbeat): its expiry becomes now + `claim.lease_ttl` on the
    /// Redis clock. Returns false when the lease is no longer this claim's (stop the job, write nothing).
    pub async fn renew_lease(&self, claim: &Claim, agent: &str) -> Result<bool> {
        let mut con = self.con.clone();
        let route = claim.job.kind.route();
        let r: i64 = self
            .scripts
            .renew
            .key(contract::job_key(&claim.job.id))
            .key(&claim.stream)
            .arg(&claim.lease)
            .arg(claim.lease_ttl.as_millis() as u64)
            .arg(route.group)
            .arg(agent)
            .arg(&claim.entry_id)
            .invoke_async(&mut con)
            .await?;
        Ok(r == 1)
    }

    /// Block up to `block` for the next undelivered entry of this process's kinds and claim its job for
    /// `agent`, with a lease of `QueueConfig::lease`. Entries of jobs that are already final or were
    /// cancelled while queued are acknowledged and skipped (the next entry is read at once); entries that
    /// name no valid job are dead-lettered with a reason. A missing group (flushed Redis) is recreated.
    pub async fn claim_next(
        &self,
        con: &mut MultiplexedConnection,
        agent: &str,
        block: Duration,
    ) -> Result<Option<Claim>> {
        let routes = self.my_routes();
        // An agent with a node name reads its node's stream first (ADR 0013).
        let node_stream = self.node_stream();
        let mut streams: Vec<&str> = node_stream.iter().map(String::as_str).collect();
        streams.extend(routes.iter().map(|r| r.stream));
        let route_of = |key: &str| -> Option<Route> {
            if node_stream.as_deref() == Some(key) {
                Some(JobKind::Rust.route())
            } else {
                routes.iter().find(|r| r.stream == key).copied()
            }
        };
        let group = routes[0].group;
        let mut wait = block;
        // Skipped entries are followed by an immediate (non-blocking) read of the next one.
        for _ in 0..1000 {
            // The node stream alone first, without blocking: its entry wins and no shared entry comes
            // along with it.
            let first = match &node_stream {
                Some(ns) => {
                    let r: redis::RedisResult<Option<StreamReadReply>> =
                        xreadgroup_now(ns, group, agent).query_async(con).await;
                    match r {
                        Ok(r) => r,
                        Err(e) if is_nogroup(&e) => {
                            self.ensure_group().await?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                None => None,
            };
            let reply = match first.filter(|r| r.keys.iter().any(|k| !k.ids.is_empty())) {
                Some(r) => r,
                None => {
                    let reply: redis::RedisResult<StreamReadReply> =
                        xreadgroup(&streams, group, agent, 1, wait)
                            .query_async(con)
                            .await;
                    match reply {
                        Ok(r) => r,
                        Err(e) if is_nogroup(&e) => {
                            tracing::warn!(
                                "consumer group missing (Redis flushed or lost?); recreating it"
                            );
                            self.ensure_group().await?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            // One read over several streams delivers up to one entry per stream: the first in the
            // order of `streams` is claimed, the others are given back at once.
            let mut delivered: Vec<(Route, &str, String, String)> = Vec::new();
            for s in &streams {
                for k in reply.keys.iter().filter(|k| k.key == *s) {
                    let Some(route) = route_of(&k.key) else {
                        continue;
                    };
                    for e in &k.ids {
                        delivered.push((
                            route,
                            *s,
                            e.id.clone(),
                            field(e, "job").unwrap_or_default(),
                        ));
                    }
                }
            }
            let mut delivered = delivered.into_iter();
            let Some((route, stream, entry_id, raw)) = delivered.next() else {
                return Ok(None);
            };
            for (r, s, e, j) in delivered {
                self.give_back(r, s, &e, &j).await?;
            }
            // Delivery into this consumer's pending list is the claim; the record write confirms it.
            let delivered = Utc::now();
            if let Some(c) = self
                .claim_entry_in(route, stream, agent, &entry_id, &raw, delivered)
                .await?
            {
                return Ok(Some(c));
            }
            wait = Duration::from_millis(1);
        }
        Ok(None)
    }

    /// This agent's node stream, when it has a node name and runs Rust jobs.
    pub(super) fn node_stream(&self) -> Option<String> {
        let node = self.cfg.node.as_deref()?;
        self.my_routes()
            .contains(&JobKind::Rust.route())
            .then(|| contract::node_jobs_stream(node))
    }

    /// Give back an entry delivered along with the one claimed: acknowledged and re-added at the tail
    /// of its stream, the record's `entry` moved with it (`repost.lua`), so it stays queued and `lag`
    /// exact. An entry naming no valid job is dead-lettered as a claim would.
    async fn give_back(&self, route: Route, stream: &str, entry: &str, raw: &str) -> Result<()> {
        let Ok(id) = JobId::parse(raw) else {
            let reason = format!("entry {entry}: not a job id");
            return self
                .ack_entry_in(stream, route.group, entry, raw, Some(&reason))
                .await;
        };
        let mut con = self.con.clone();
        let _: i64 = self
            .scripts
            .repost
            .key(contract::job_key(&id))
            .key(stream)
            .arg(entry)
            .arg(route.group)
            .arg(id.as_str())
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Claim the job of a delivered entry of the Rust stream.
    pub async fn claim_entry(
        &self,
        agent: &str,
        entry_id: &str,
        job_id: &str,
    ) -> Result<Option<Claim>> {
        let route = JobKind::Rust.route();
        self.claim_entry_in(route, route.stream, agent, entry_id, job_id, Utc::now())
            .await
    }

    async fn claim_entry_in(
        &self,
        route: Route,
        stream: &str,
        agent: &str,
        entry_id: &str,
        raw_id: &str,
        delivered: chrono::DateTime<Utc>,
    ) -> Result<Option<Claim>> {
        let lease_ttl = self.cfg.lease;
        let id = match JobId::parse(raw_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(entry = %entry_id, "dead-lettering an entry with an invalid job id");
                self.ack_entry_in(
                    stream,
                    route.group,
                    entry_id,
                    raw_id,
                    Some(&format!("entry {entry_id}: {e}")),
                )
                .await?;
                return Ok(None);
            }
        };
        for _ in 0..100 {
            let (mut job, rev) = match self.load(&id).await {
                Ok(x) => x,
                Err(QueueError::NotFound(_)) => {
                    // Expired or deleted record (retention, cleanup): nothing to run.
                    self.ack_entry_in(stream, route.group, entry_id, &id, None)
                        .await?;
                    return Ok(None);
                }
                Err(QueueError::Corrupt(_, why)) => {
                    tracing::warn!(job = %id, reason = %why, "dead-lettering a job whose record this agent cannot read");
                    let reason = format!("record unreadable by this agent version: {why}");
                    self.ack_entry_in(stream, route.group, entry_id, &id, Some(&reason))
                        .await?;
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let now = Utc::now();
            if job.status.is_final() {
                self.ack_entry_in(stream, route.group, entry_id, &id, None)
                    .await?;
                return Ok(None);
            }
            if job.kind.route() != route {
                let reason = format!("a `{}` job on the `{stream}` stream", job.kind.as_str());
                self.ack_entry_in(stream, route.group, entry_id, &id, Some(&reason))
                    .await?;
                return Ok(None);
            }
            if job.cancel_requested {
                job.finish(
                    Status::Cancelled,
                    Some("cancelled before it started".into()),
                    now,
                );
                let w = Cas {
                    rev: &rev,
                    event: Some("job_finished"),
                    ack_entry: Some(entry_id),
                    stream: Some(stream),
                    new_lease: "",
                    required_lease: None,
                    entry: None,
                    lease_ttl: None,
                    observe: None,
                };
                if self.cas(&job, w).await? {
                    return Ok(None);
                }
                continue;
            }
            let lease = ulid::Ulid::new().to_string();
            job.status = Status::Running;
            job.attempt += 1;
            job.agent = Some(agent.to_string());
            job.lease = Some(lease.clone());
            job.timestamps.claimed = Some(delivered);
            job.failure_reason = None;
            let w = Cas {
                rev: &rev,
                event: Some("job_claimed"),
                ack_entry: None,
                stream: Some(stream),
                new_lease: &lease,
                required_lease: None,
                entry: Some(entry_id),
                lease_ttl: Some(lease_ttl),
                // The claim latency is recorded by the claim's own write: no extra round trip
                // before the job starts.
                observe: job.claim_latency_secs().map(|value| Observation {
                    key: keys::CLAIM_LATENCY_HIST,
                    buckets: &CLAIM_LATENCY_BUCKETS,
                    value,
                }),
            };
            if let Some(rev) = self.cas_rev(&job, w).await? {
                return Ok(Some(Claim {
                    job,
                    entry_id: entry_id.to_string(),
                    stream: stream.to_string(),
                    lease,
                    lease_ttl,
                    rev: Some(rev),
                }));
            }
        }
        Err(QueueError::Conflict(format!(
            "job {id}: too many concurrent updates"
        )))
    }

    /// Acknowledge an entry that will not run and trim the head; with a reason it is also recorded in
    /// the dead-letter stream (nothing is dropped silently).
    pub(super) async fn ack_entry(
        &self,
        route: Route,
        entry_id: &str,
        job: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        self.ack_entry_in(route.stream, route.group, entry_id, job, reason)
            .await
    }

    /// [`Queue::ack_entry`] on a given stream (a node stream) of the group.
    pub(super) async fn ack_entry_in(
        &self,
        stream: &str,
        group: &str,
        entry_id: &str,
        job: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut con = self.con.clone();
        let _: i64 = self
            .scripts
            .ack
            .key(stream)
            .key(keys::DEAD_STREAM)
            .arg(entry_id)
            .arg(group)
            .arg(job)
            .arg(reason.unwrap_or(""))
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Ask for a job to be cancelled. A queued job becomes `cancelled` at once (its stream entry stays
    /// until an agent reads and acknowledges it, keeping `lag` exact); a running job is told through the
    /// cancel channel and its agent writes the final status.
    pub async fn cancel(&self, id: &str) -> Result<Job> {
        let (job, _) = self.load(id).await?;
        if job.matrix_group().is_some() {
            // A matrix group: every cell not final yet, then the group (issue 23 §1).
            return self.cancel_group(id).await;
        }
        let job = self.cancel_one(id, "cancelled before it started").await?;
        self.settle_cell(&job).await;
        Ok(job)
    }

    /// Cancel one job (`reason`: a queued job's failure reason).
    pub(super) async fn cancel_one(&self, id: &str, reason: &str) -> Result<Job> {
        let now = Utc::now();
        let job = self
            .modify(id, |job| {
                if job.status.is_final() {
                    return Err(QueueError::Conflict(format!(
                        "job {} already {}",
                        job.id, job.status
                    )));
                }
                job.cancel_requested = true;
                if job.status == Status::Queued {
                    job.finish(Status::Cancelled, Some(reason.into()), now);
                    Ok(Some("job_finished"))
                } else {
                    Ok(Some("job_cancel_requested"))
                }
            })
            .await?;
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(keys::CANCEL_CHANNEL)
            .arg(id)
            .query_async(&mut con)
            .await?;
        Ok(job)
    }

    /// List jobs, newest first. `cursor` is the id of the last job of the previous page.
    pub async fn list(
        &self,
        status: Option<Status>,
        repo: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let mut con = self.con.clone();
        let mut start: i64 = match cursor {
            Some(c) => {
                let rank: Option<i64> = redis::cmd("ZREVRANK")
                    .arg(keys::JOB_INDEX)
                    .arg(c)
                    .query_async(&mut con)
                    .await?;
                match rank {
                    Some(r) => r + 1,
                    None => return Ok((Vec::new(), None)),
                }
            }
            None => 0,
        };
        let mut out = Vec::new();
        const BATCH: i64 = 200;
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(keys::JOB_INDEX)
                .arg(start)
                .arg(start + BATCH - 1)
                .query_async(&mut con)
                .await?;
            if ids.is_empty() {
                return Ok((out, None));
            }
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGET").arg(contract::job_key(id)).arg("record");
            }
            let records: Vec<Option<String>> = p.query_async(&mut con).await?;
            for (id, rec) in ids.iter().zip(records) {
                start += 1;
                let Some(rec) = rec else {
                    // Expired record: drop it from the index.
                    let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                        .arg(keys::JOB_INDEX)
                        .arg(id)
                        .query_async(&mut con)
                        .await;
                    start -= 1;
                    continue;
                };
                let Ok(job) = serde_json::from_str::<Job>(&rec) else {
                    continue;
                };
                if status.is_some_and(|s| s != job.status) {
                    continue;
                }
                if repo.is_some_and(|r| !job.source.repo_url.contains(r)) {
                    continue;
                }
                out.push(job);
                if out.len() >= limit {
                    let next = out.last().map(|j| j.id.to_string());
                    return Ok((out, next));
                }
            }
        }
    }

    /// List jobs matching `filter`, newest first, `limit` at most; `cursor` is the id of the last job
    /// of the previous page (same filter). The filters apply before paging: the page is read from the
    /// smallest index that covers a filter (`JOB_INDEX_BY_STATUS_PREFIX`, `JOB_INDEX_BY_REF_PREFIX`,
    /// else `JOB_INDEX`), so a page is full unless the list ends, and `next_cursor` is `None` only then.
    /// The repository filter (a substring of the URL) and a second index filter are checked on the
    /// records read from that index.
    pub async fn list_filtered(
        &self,
        filter: &ListFilter<'_>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        self.ensure_list_indexes().await?;
        let mut con = self.con.clone();
        let mut candidates = vec![keys::JOB_INDEX.to_string()];
        if let Some(st) = filter.status {
            candidates.push(contract::job_index_by_status(st.as_str()));
        }
        if let Some(r) = filter.git_ref {
            candidates.push(contract::job_index_by_ref(r));
        }
        let mut base = candidates[0].clone();
        if candidates.len() > 1 {
            let mut best = u64::MAX;
            for k in &candidates[1..] {
                let n: u64 = redis::cmd("ZCARD").arg(k).query_async(&mut con).await?;
                if n < best {
                    best = n;
                    base = k.clone();
                }
            }
        }
        let mut start: i64 = match cursor {
            None => 0,
            Some(c) => {
                let rank: Option<i64> = redis::cmd("ZREVRANK")
                    .arg(&base)
                    .arg(c)
                    .query_async(&mut con)
                    .await?;
                match rank {
                    Some(r) => r + 1,
                    None => {
                        // The cursor's job left this index (its status changed): continue after its
                        // receive time.
                        let score: Option<f64> = redis::cmd("ZSCORE")
                            .arg(keys::JOB_INDEX)
                            .arg(c)
                            .query_async(&mut con)
                            .await?;
                        let Some(score) = score else {
                            return Ok((Vec::new(), None));
                        };
                        redis::cmd("ZCOUNT")
                            .arg(&base)
                            .arg(format!("({score}"))
                            .arg("+inf")
                            .query_async(&mut con)
                            .await?
                    }
                }
            }
        };
        let mut out = Vec::new();
        const BATCH: i64 = 200;
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGE")
                .arg(&base)
                .arg(start)
                .arg(start + BATCH - 1)
                .query_async(&mut con)
                .await?;
            if ids.is_empty() {
                return Ok((out, None));
            }
            let mut p = redis::pipe();
            for id in &ids {
                p.cmd("HGET").arg(contract::job_key(id)).arg("record");
            }
            let records: Vec<Option<String>> = p.query_async(&mut con).await?;
            for (id, rec) in ids.iter().zip(records) {
                start += 1;
                let Some(rec) = rec else {
                    // Expired or deleted record: drop it from the index read.
                    let _: redis::RedisResult<i64> = redis::cmd("ZREM")
                        .arg(&base)
                        .arg(id)
                        .query_async(&mut con)
                        .await;
                    start -= 1;
                    continue;
                };
                let Ok(job) = serde_json::from_str::<Job>(&rec) else {
                    continue;
                };
                if !filter.matches(&job) {
                    continue;
                }
                if out.len() >= limit {
                    // One more match exists: the page is full and the list goes on.
                    let next = out.last().map(|j: &Job| j.id.to_string());
                    return Ok((out, next));
                }
                out.push(job);
            }
        }
    }
}

impl Queue {
    /// Add the records written before the per-status and per-ref indexes existed to them, once per
    /// Redis (marker `JOB_LIST_INDEXES_BUILT`; the write scripts keep them from then on). Idempotent:
    /// replicas doing it at the same time add the same entries.
    async fn ensure_list_indexes(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.list_indexes_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut con = self.con.clone();
        let built: bool = redis::cmd("EXISTS")
            .arg(keys::JOB_LIST_INDEXES_BUILT)
            .query_async(&mut con)
            .await?;
        if !built {
            const BATCH: i64 = 500;
            let mut start = 0i64;
            loop {
                let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(keys::JOB_INDEX)
                    .arg(start)
                    .arg(start + BATCH - 1)
                    .arg("WITHSCORES")
                    .query_async(&mut con)
                    .await?;
                if ids.is_empty() {
                    break;
                }
                let mut p = redis::pipe();
                for (id, _) in &ids {
                    p.cmd("HGET").arg(contract::job_key(id)).arg("record");
                }
                let records: Vec<Option<String>> = p.query_async(&mut con).await?;
                let mut w = redis::pipe();
                for ((id, score), rec) in ids.iter().zip(records) {
                    let Some(job) = rec.and_then(|r| serde_json::from_str::<Job>(&r).ok()) else {
                        continue;
                    };
                    w.cmd("ZADD")
                        .arg(contract::job_index_by_status(job.status.as_str()))
                        .arg(*score)
                        .arg(id)
                        .ignore();
                    w.cmd("ZADD")
                        .arg(contract::job_index_by_ref(&job.source.git_ref))
                        .arg(*score)
                        .arg(id)
                        .ignore();
                }
                w.query_async::<()>(&mut con).await?;
                start += BATCH;
            }
            let _: () = redis::cmd("SET")
                .arg(keys::JOB_LIST_INDEXES_BUILT)
                .arg("1")
                .query_async(&mut con)
                .await?;
        }
        self.list_indexes_ready.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// What `Queue::list_filtered` keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// Only jobs in this status.
    pub status: Option<Status>,
    /// Only jobs of this full ref (`refs/heads/main`).
    pub git_ref: Option<&'a str>,
    /// Only jobs whose repository URL contains this text.
    pub repo: Option<&'a str>,
}

impl ListFilter<'_> {
    /// True when `job` passes every filter.
    pub fn matches(&self, job: &Job) -> bool {
        self.status.is_none_or(|s| s == job.status)
            && self.git_ref.is_none_or(|r| r == job.source.git_ref)
            && self.repo.is_none_or(|r| job.source.repo_url.contains(r))
    }
}
