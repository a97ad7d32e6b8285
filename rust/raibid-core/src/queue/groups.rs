//! Matrix groups (issue 23 §1): the fan-out of a claimed job into its cells (one script, `fan_out.lua`),
//! the group's combined status and `fail_fast` (`settle_group`), cancel and retry of a whole group or
//! one cell.
//!
//! Who settles a group: the agent that writes a cell's final status (`finish_claimed`), a cancel of a
//! queued cell (`cancel`), and — for every other way a cell ends (dead letters, a crash between the
//! final write and the settle) — the dispatcher's reaper pass over `MATRIX_GROUPS_OPEN`. Settling is
//! idempotent: the parent's final write is a compare-and-set that only a non-final parent takes.

use super::{json, record_json, Claim, Event, Queue, QueueError, Result};
use crate::contract::{self, keys};
use crate::job::{Job, Status};
use crate::matrix::{self, GroupView, JobMatrix};
use chrono::Utc;

impl Queue {
    /// Write the group and its cells in one script: `claim`'s job becomes the group (its record as given
    /// in `claim.job`, lease cleared, entry acknowledged, `running` until its cells end); every cell is
    /// a queued job on its kind's shared stream with its own entry (N cells are N entries: KEDA's lag
    /// sees them). Fenced by the claim's lease; retried on a moved revision (a cancel request).
    pub async fn fan_out(&self, claim: &mut Claim, cells: &[Job]) -> Result<()> {
        let now = Utc::now();
        let route = claim.job.kind.route();
        let patch_key = if claim.job.source.patch.is_some() {
            contract::job_patch_key(&claim.job.id)
        } else {
            String::new()
        };
        let mut cell_args: Vec<String> = Vec::with_capacity(cells.len() * 4);
        for c in cells {
            cell_args.push(c.id.to_string());
            cell_args.push(record_json(c)?);
            cell_args.push(json(&c.id, &Event::of("job_created", c, now))?);
            cell_args.push(c.source.git_ref.clone());
        }
        let mut known = claim.rev.take().map(|r| r.to_string());
        for _ in 0..100 {
            let rev = match known.take() {
                Some(r) => r,
                None => {
                    let (cur, rev) = self.load(&claim.job.id).await?;
                    if cur.lease.as_deref() != Some(claim.lease.as_str()) {
                        return Err(QueueError::LeaseLost(claim.job.id.to_string()));
                    }
                    if cur.cancel_requested {
                        return Err(QueueError::Conflict(format!(
                            "job {} was cancelled before its matrix fanned out",
                            claim.job.id
                        )));
                    }
                    rev
                }
            };
            let mut parent = claim.job.clone();
            parent.lease = None;
            let record = record_json(&parent)?;
            let event = json(&parent.id, &Event::of("job_fanned_out", &parent, now))?;
            let mut con = self.con.clone();
            let mut inv = self.scripts.fan_out.prepare_invoke();
            inv.key(contract::job_key(&parent.id))
                .key(route.stream)
                .key(keys::JOB_INDEX)
                .key(keys::EVENTS_STREAM)
                .key(keys::JOB_STATUS_COUNTS)
                .key(&claim.stream)
                .key(keys::MATRIX_GROUPS_OPEN)
                .key(keys::MATRIX_GROUP_INDEX);
            for c in cells {
                inv.key(contract::job_key(&c.id));
            }
            inv.arg(&claim.lease)
                .arg(&rev)
                .arg(record)
                .arg(&claim.entry_id)
                .arg(route.group)
                .arg(self.cfg.events_maxlen)
                .arg(event)
                .arg(now.timestamp_millis())
                .arg(&patch_key)
                .arg(self.cfg.retention.as_secs().max(1))
                .arg(parent.id.as_str())
                .arg(cells.len())
                .arg(now.timestamp_millis() - self.cfg.retention.as_millis() as i64);
            for a in &cell_args {
                inv.arg(a);
            }
            let r: i64 = inv.invoke_async(&mut con).await?;
            match r {
                -1 => return Err(QueueError::NotFound(parent.id.to_string())),
                -2 => return Err(QueueError::LeaseLost(parent.id.to_string())),
                0 => continue,
                _ => {
                    claim.job = parent;
                    return Ok(());
                }
            }
        }
        Err(QueueError::Conflict(format!(
            "job {}: too many concurrent updates",
            claim.job.id
        )))
    }

    /// The group `id` with its cells and combined status (no writes).
    pub async fn group(&self, id: &str) -> Result<GroupView> {
        let parent = self.get(id).await?;
        let Some(g) = parent.matrix_group() else {
            return Err(QueueError::NotFound(format!("{id} (not a matrix group)")));
        };
        let ids: Vec<String> = g.cells.iter().map(|c| c.job.clone()).collect();
        let cells = self.get_many(&ids).await?;
        let statuses: Vec<Status> = cells.iter().map(|c| c.status).collect();
        let status = if parent.status.is_final() && statuses.iter().all(|s| s.is_final()) {
            parent.status
        } else {
            matrix::combine(&statuses)
        };
        Ok(GroupView {
            group: parent.public(),
            status,
            cells: cells.iter().map(Job::public).collect(),
        })
    }

    /// Records of `ids` that exist, in order.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("HGET").arg(contract::job_key(id)).arg("record");
        }
        let records: Vec<Option<String>> = p.query_async(&mut con).await?;
        Ok(records
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_str::<Job>(&r).ok())
            .collect())
    }

    /// Settle a group after one of its cells changed: with `fail_fast`, a failed cell cancels the cells
    /// still queued or running; once every cell is final the group's record gets the combined status
    /// (`job_finished`: its commit status under the push's own context) and leaves the open set.
    pub async fn settle_group(&self, id: &str) -> Result<GroupView> {
        let mut view = self.group(id).await?;
        let fail_fast = view.group.matrix_group().is_some_and(|g| g.fail_fast);
        let failed: Vec<String> = view
            .cells
            .iter()
            .filter(|c| matrix::is_failure(c.status))
            .filter_map(|c| c.matrix_cell().map(|m| matrix::label(&m.values)))
            .collect();
        if fail_fast && !failed.is_empty() {
            let mut cancelled = false;
            for c in view.cells.iter().filter(|c| !c.status.is_final()) {
                let reason = format!("cancelled by fail_fast: cell ({}) failed", failed[0]);
                match self.cancel_one(&c.id, &reason).await {
                    Ok(_) => cancelled = true,
                    Err(QueueError::Conflict(_)) | Err(QueueError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if cancelled {
                view = self.group(id).await?;
            }
        }
        let statuses: Vec<Status> = view.cells.iter().map(|c| c.status).collect();
        let combined = matrix::combine(&statuses);
        if combined.is_final() {
            let n = view.cells.len();
            let bad: Vec<String> = view
                .cells
                .iter()
                .filter(|c| c.status != Status::Succeeded && c.status != Status::Cancelled)
                .map(|c| {
                    format!(
                        "({}) {}",
                        c.matrix_cell()
                            .map(|m| matrix::label(&m.values))
                            .unwrap_or_default(),
                        c.failure_reason.as_deref().unwrap_or(c.status.as_str())
                    )
                })
                .collect();
            let reason = match combined {
                Status::Succeeded => None,
                Status::Cancelled => Some(format!("matrix: cancelled ({n} cells)")),
                _ => Some(format!(
                    "matrix: {} of {n} cells failed: {}",
                    bad.len(),
                    bad.join("; ")
                )),
            };
            let now = Utc::now();
            let group = self
                .modify(id, |job| {
                    if job.status.is_final() {
                        return Ok(None);
                    }
                    job.finish(combined, reason.clone(), now);
                    job.agent = None;
                    Ok(Some("job_finished"))
                })
                .await?;
            let mut con = self.con.clone();
            let _: i64 = redis::cmd("SREM")
                .arg(keys::MATRIX_GROUPS_OPEN)
                .arg(id)
                .query_async(&mut con)
                .await?;
            view.group = group.public();
            view.status = combined;
        } else {
            view.status = combined;
        }
        Ok(view)
    }

    /// Settle every open group (the dispatcher's reaper pass). Returns how many were settled final.
    pub async fn settle_open_groups(&self) -> Result<usize> {
        let mut con = self.con.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::MATRIX_GROUPS_OPEN)
            .query_async(&mut con)
            .await?;
        let mut done = 0;
        for id in ids {
            match self.settle_group(&id).await {
                Ok(v) if v.status.is_final() => done += 1,
                Ok(_) => {}
                Err(QueueError::NotFound(_)) => {
                    let _: i64 = redis::cmd("SREM")
                        .arg(keys::MATRIX_GROUPS_OPEN)
                        .arg(&id)
                        .query_async(&mut con)
                        .await?;
                }
                Err(e) => tracing::warn!(group = %id, error = %e, "could not settle the group"),
            }
        }
        Ok(done)
    }

    /// Settle the group of a cell job (after its final write); errors are logged, not returned: the
    /// reaper's pass settles it later.
    pub(super) async fn settle_cell(&self, job: &Job) {
        if let Some(c) = job.matrix_cell() {
            if let Err(e) = self.settle_group(&c.group).await {
                tracing::warn!(group = %c.group, job = %job.id, error = %e, "could not settle the group");
            }
        }
    }

    /// Cancel a whole group: every cell not final yet, and the group itself (it ends `cancelled` once
    /// its cells have).
    pub(super) async fn cancel_group(&self, id: &str) -> Result<Job> {
        let view = self.group(id).await?;
        if view.group.status.is_final() {
            return Err(QueueError::Conflict(format!(
                "group {id} already {}",
                view.group.status
            )));
        }
        for c in view.cells.iter().filter(|c| !c.status.is_final()) {
            match self.cancel_one(&c.id, "cancelled with its group").await {
                Ok(_) | Err(QueueError::Conflict(_)) | Err(QueueError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let job = self
            .modify(id, |job| {
                if job.status.is_final() || job.cancel_requested {
                    return Ok(None);
                }
                job.cancel_requested = true;
                Ok(Some("job_cancel_requested"))
            })
            .await?;
        let _ = self.settle_group(id).await?;
        Ok(job)
    }

    /// A retried cell replaces its old attempt in its group, which is open again until it ends.
    pub async fn replace_cell(&self, group: &str, index: u32, new_id: &str) -> Result<Job> {
        let job = self
            .modify(group, |job| {
                let reopen = job.status.is_final();
                let Some(JobMatrix::Group(g)) = job.matrix.as_mut() else {
                    return Err(QueueError::Conflict(format!(
                        "{group} is not a matrix group"
                    )));
                };
                let Some(c) = g.cells.get_mut(index as usize) else {
                    return Err(QueueError::Conflict(format!(
                        "group {group} has no cell {index}"
                    )));
                };
                c.job = new_id.to_string();
                if reopen {
                    job.status = Status::Running;
                    job.timestamps.finished = None;
                    job.failure_reason = None;
                    job.cancel_requested = false;
                }
                Ok(Some("job_reopened"))
            })
            .await?;
        let mut con = self.con.clone();
        let _: i64 = redis::cmd("SADD")
            .arg(keys::MATRIX_GROUPS_OPEN)
            .arg(group)
            .query_async(&mut con)
            .await?;
        Ok(job)
    }
}

impl Queue {
    /// Group ids, newest first (`MATRIX_GROUP_INDEX`), `limit` at most, after `cursor` (a group id).
    pub async fn list_groups(&self, limit: usize, cursor: Option<&str>) -> Result<Vec<String>> {
        let mut con = self.con.clone();
        let start: i64 = match cursor {
            None => 0,
            Some(c) => {
                let r: Option<i64> = redis::cmd("ZREVRANK")
                    .arg(keys::MATRIX_GROUP_INDEX)
                    .arg(c)
                    .query_async(&mut con)
                    .await?;
                match r {
                    Some(r) => r + 1,
                    None => return Ok(Vec::new()),
                }
            }
        };
        Ok(redis::cmd("ZREVRANGE")
            .arg(keys::MATRIX_GROUP_INDEX)
            .arg(start)
            .arg(start + limit as i64 - 1)
            .query_async(&mut con)
            .await?)
    }
}
