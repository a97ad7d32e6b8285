//! The lifecycle every job shares, whatever its kind: claim (`claim`: the claim loop) and lease (the
//! log flusher, the heartbeat, the shutdown grace: `run_job`), workspace, source (clone + patch: `source`), config (the kind's, and the
//! transition its outcome asks for: `execute`, `handover`), the kind's run, the after-steps hook
//! (`after`), report, cleanup and the final write (fenced by the lease). Kinds (`crate::kinds`) are
//! called through `kinds::Kind` and never call back into this module (ADR 0016).

mod after;
pub(crate) mod claim;
mod execute;
mod handover;
mod source;

use crate::ctx::{JobCtx, Shared};
use crate::stop::{Stop, LOST, RELEASED};
use chrono::Utc;
use execute::execute;
use raibid_core::queue::{Claim, QueueError};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// How long the log flusher may take to write what is left once the job's steps have ended.
const FLUSH_DEADLINE: Duration = Duration::from_secs(30);
/// When a job's heartbeat first beats (then every third of the lease).
const FIRST_BEAT: Duration = Duration::from_millis(500);

/// A log line `(step, stream, line)` with the moment the agent read it (its `ts` in the log).
type Stamped = raibid_core::queue::StampedLine;

pub(crate) async fn run_job(
    shared: &Arc<Shared>,
    slot: &str,
    claim: Claim,
    shutdown: watch::Receiver<bool>,
) {
    let id = claim.job.id.clone();
    let entry = claim.entry_id.clone();
    let lease = claim.lease.clone();
    let (stop_tx, stop_rx) = watch::channel(Stop::None);
    if let Ok(mut m) = shared.running.lock() {
        m.insert(id.to_string(), stop_tx.clone());
    }
    // Log flusher: batches lines, masks secrets, appends (fenced by the lease).
    let (log_tx, mut log_rx) = mpsc::channel::<(String, String, String)>(4096);
    // Each line is stamped as it arrives, not when its batch reaches Redis: a line never waits for the
    // previous batch's write to get its time. The second channel is bounded too, so a slow Redis
    // still holds the steps' output back (the pumps block), as before.
    let (stamped_tx, mut stamped_rx) = mpsc::channel::<Stamped>(4096);
    let stamper = tokio::spawn(async move {
        while let Some(l) = log_rx.recv().await {
            if stamped_tx.send((Utc::now(), l)).await.is_err() {
                break;
            }
        }
    });
    let masker = Arc::new(Mutex::new(shared.masker.clone()));
    let budget = Arc::new(crate::process::LogBudget::new(
        shared.cfg.log_cap_lines,
        shared.cfg.log_cap_bytes,
    ));
    let flusher = {
        let budget = budget.clone();
        let masker = masker.clone();
        let shared = shared.clone();
        let id = id.clone();
        let lease = lease.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let mut cargo = crate::cargo_output::CargoOutput::default();
            let mut batch = Vec::with_capacity(256);
            let mut marked = false;
            while let Some(first) = stamped_rx.recv().await {
                batch.push(first);
                while batch.len() < 500 {
                    match stamped_rx.try_recv() {
                        Ok(l) => batch.push(l),
                        Err(_) => break,
                    }
                }
                cargo.rewrite(&mut batch);
                if let Ok(m) = masker.lock() {
                    for (_, l) in batch.iter_mut() {
                        l.2 = m.mask(&l.2);
                    }
                }
                match shared.queue.append_log_at(&id, &lease, &batch).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = stop_tx.send(Stop::LeaseLost);
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "log append failed"),
                }
                batch.clear();
                // The cap was reached: the API says `truncated` from now on, not only at the end.
                if !marked && budget.exhausted() {
                    marked = shared.queue.mark_log_truncated(&id).await.is_ok();
                }
            }
            cargo
        })
    };
    // Heartbeat: renews the lease stored with the claim (fenced), notices cancel requests the pub/sub
    // message may have missed.
    let heartbeat = {
        let held = claim.clone();
        let shared = shared.clone();
        let id = id.clone();
        let slot = slot.to_string();
        let lease = lease.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis(shared.cfg.lease_secs * 1000 / 3);
            let ttl = Duration::from_secs(shared.cfg.lease_secs);
            // The claim has just set the lease and the record; the first beat waits a moment so that its
            // three writes and reads do not queue in Redis before the clone step's own (the path from
            // the push to the first line of output).
            tokio::time::sleep(every.min(FIRST_BEAT)).await;
            loop {
                let done = shared.jobs_done.load(Ordering::Relaxed);
                if let Err(e) = shared
                    .queue
                    .heartbeat(&slot, Some((&id, &entry)), done, ttl)
                    .await
                {
                    tracing::warn!(job = %id, error = %e, "heartbeat failed");
                }
                match shared.queue.renew_lease(&held, &slot).await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = stop_tx.send(Stop::LeaseLost);
                    }
                    Err(e) => tracing::warn!(job = %id, error = %e, "lease renewal failed"),
                }
                if let Ok(job) = shared.queue.get(&id).await {
                    if job.lease.as_deref() != Some(lease.as_str()) {
                        let _ = stop_tx.send(Stop::LeaseLost);
                    } else if job.cancel_requested {
                        let _ = stop_tx.send(Stop::Cancel);
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    // Shutdown: let the job finish within the grace period, then kill it and release it.
    let grace = {
        let stop_tx = stop_tx.clone();
        let mut shutdown = shutdown.clone();
        let secs = shared.cfg.grace_secs;
        let id = id.clone();
        tokio::spawn(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
            tracing::info!(job = %id, grace_secs = secs, "shutdown requested; letting the job finish");
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let _ = stop_tx.send(Stop::Release);
        })
    };
    let deadline = Instant::now() + raibid_core::pipeline::DEFAULT_JOB_TIMEOUT;
    let mut ctx = JobCtx {
        shared,
        claim,
        logs: log_tx,
        stop: stop_rx,
        deadline,
        masker,
        budget,
        secrets: Vec::new(),
        artifacts: None,
    };
    let ws = shared.cfg.workspace_dir.join(&id);
    let outcome = execute(&mut ctx, &ws).await;
    let _ = tokio::fs::remove_dir_all(&ws).await;
    // Let the flusher write everything before the final status.
    let JobCtx {
        mut claim,
        logs,
        masker,
        budget,
        ..
    } = ctx;
    drop(logs);
    // Every sender is gone once the steps' pumps have ended (they are aborted, never detached); the
    // flusher still gets its own deadline so that a stuck Redis write cannot keep the job running.
    let mut flusher = flusher;
    let cargo = match tokio::time::timeout(FLUSH_DEADLINE, &mut flusher).await {
        Ok(r) => r.ok(),
        Err(_) => {
            tracing::warn!(job = %id, "log flusher did not finish in time; aborting it");
            flusher.abort();
            stamper.abort();
            None
        }
    };
    if budget.exhausted() {
        // The agent dropped output: the log says so (API `truncated`, MCP), not only the Redis cap.
        if let Err(e) = shared.queue.mark_log_truncated(&id).await {
            tracing::warn!(job = %id, error = %e, "could not mark the log truncated");
        }
        // And the record says how much was kept (raibid-top's detail, get_job, the CLI).
        let (kept_lines, kept_bytes) = shared.queue.log_size(&id).await.unwrap_or_default();
        let (dropped_lines, dropped_bytes) = budget.dropped_total();
        claim.job.log_truncated = Some(raibid_core::job::LogTruncation {
            kept_lines,
            kept_bytes,
            dropped_lines,
            dropped_bytes,
        });
    }
    crate::cache::record_job(
        &shared.queue,
        claim.job.cache.as_mut(),
        cargo.as_ref().and_then(|c| c.units()),
    )
    .await;
    // The repository's cache is warm on this node now: its next job may be routed here (ADR 0013).
    if claim.job.cache.is_some() {
        if let Err(e) = shared
            .queue
            .record_warm_repo(&claim.job.source.repo_url)
            .await
        {
            tracing::warn!(job = %id, error = %e, "could not record the node's warm repository");
        }
    }
    heartbeat.abort();
    grace.abort();
    if let Ok(mut m) = shared.running.lock() {
        m.remove(id.as_str());
    }
    let now = Utc::now();
    let (status, reason) = outcome;
    if status == RELEASED {
        match shared
            .queue
            .requeue(
                &id,
                &claim.entry_id,
                "its agent shut down before the job finished",
                Some(&claim.lease),
            )
            .await
        {
            Ok(r) => tracing::warn!(job = %id, outcome = ?r, "job released back to the queue"),
            Err(e) => {
                tracing::error!(job = %id, error = %e, "could not release the job; the reaper will reclaim it")
            }
        }
        return;
    }
    if status == LOST && crate::fan_out::fanned_out(&claim.job) {
        // A matrix group: its cells are queued; it ends with their combined status.
        return;
    }
    if status == LOST {
        // Lease lost: another agent owns the job now; write nothing.
        tracing::warn!(job = %id, "lease lost; leaving the job to the agent that holds it");
        return;
    }
    if let Some(cargo) = cargo {
        let masker = masker.lock().map(|m| m.clone()).unwrap_or_default();
        claim.job.cargo = cargo.store(&shared.queue, &id, &masker).await;
    }
    // The reason goes to the API, MCP, notifications and the public page: the job's secrets are masked
    // in it as in its log lines, and core bounds its length (`job::bound_reason`).
    let reason = reason.map(|r| {
        let m = masker.lock().map(|m| m.clone()).unwrap_or_default();
        m.mask(&r)
    });
    claim.job.finish(status, reason, now);
    // The final write survives a Redis restart: retry connection errors for up to a minute (the lease
    // may expire meanwhile; then the fence refuses the write and the reclaimed attempt decides).
    let mut backoff =
        raibid_core::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .within(Duration::from_secs(60));
    loop {
        match shared.queue.finish_claimed(&mut claim).await {
            Ok(()) => tracing::info!(job = %id, status = %status, "finished"),
            Err(QueueError::LeaseLost(_)) => {
                tracing::warn!(job = %id, "lease lost before the final write; result discarded")
            }
            Err(QueueError::Redis(e)) => {
                tracing::warn!(job = %id, error = %e, "final write failed; retrying");
                if backoff.wait().await {
                    continue;
                }
                tracing::error!(job = %id, "could not write the final status within a minute");
            }
            Err(e) => tracing::error!(job = %id, error = %e, "could not write the final status"),
        }
        break;
    }
    let done = shared.jobs_done.load(Ordering::Relaxed) + 1;
    let _ = shared
        .queue
        .heartbeat(slot, None, done, Duration::from_secs(shared.cfg.lease_secs))
        .await;
}
