//! The source phase every kind shares: the clone step (the repository's git mirror, a target slot, the
//! commit checked out in the slot's stable checkout) and the patch step (`crate::patch`); and, after
//! the job, the slot's bookkeeping (sizes, eviction).

use crate::cache::slots::{self, JobCache};
use crate::cache::{key, mirror, CloneError, Sink};
use crate::ctx::{End, JobCtx, Workspace};
use crate::git;
use crate::stop::{Stop, LOST, RELEASED};
use chrono::Utc;
use raibid_core::cache_stats::CacheStats;
use raibid_core::job::Status;
use std::path::Path;
use std::time::{Duration, Instant};

/// Clone (and patch, when the job has one) into the job's workspace. `Err`: the job ends here.
pub(super) async fn source(
    ctx: &mut JobCtx<'_>,
    dir: &Path,
    slot: &mut Option<Workspace>,
) -> Result<(), End> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    ctx.claim.job.begin_step("clone", Utc::now());
    if !ctx.update("step_started").await {
        return Err((LOST, None));
    }
    let (st, failure) = match clone(ctx).await {
        Ok(jc) => {
            *slot = Some(Workspace {
                dir: dir.to_path_buf(),
                cache: jc,
            });
            ("succeeded", None)
        }
        Err(end) => end,
    };
    ctx.claim.job.end_step(st, None, Utc::now());
    if let Some((status, reason)) = failure {
        if status == LOST {
            return Err((LOST, None));
        }
        if !ctx.update("step_finished").await {
            return Err((LOST, None));
        }
        return Err((status, reason));
    }
    if !ctx.update("step_finished").await {
        return Err((LOST, None));
    }
    // From here on the job works in its slot's stable checkout.
    let Some(checkout) = slot.as_ref().map(Workspace::checkout) else {
        return Err((Status::Failed, Some("clone: no checkout".into())));
    };
    match crate::patch::apply_step(ctx, &checkout).await {
        Some(end) => Err(end),
        None => Ok(()),
    }
}

/// How the clone step ended when it did not succeed: (step status, (job status, reason)).
type CloneEnd = (&'static str, Option<(Status, Option<String>)>);

/// Clone step: update the repository's git mirror (only new objects travel), take a target slot and
/// check the commit out in the slot's stable checkout. Runs under the clone timeout, the job deadline
/// and the job's stop signal; git's process group is killed when any of them ends it.
async fn clone(ctx: &mut JobCtx<'_>) -> Result<JobCache, CloneEnd> {
    let src = ctx.claim.job.source.clone();
    if let Err(e) = ctx.shared.policy.check(&src.repo_url) {
        ctx.sys("clone", format!("[raibid] refused: {e}")).await;
        return Err((
            "failed",
            Some((Status::Failed, Some(format!("clone: {e}")))),
        ));
    }
    let timeout = Duration::from_secs(ctx.shared.cfg.clone_timeout_secs);
    let deadline = ctx.deadline.min(Instant::now() + timeout);
    let limits = ctx.git_limits(deadline);
    let sink = ctx.sys_sink("clone");
    let sink: Sink<'_> = &sink;
    let cache = &ctx.shared.cache;
    let creds = &ctx.shared.creds;
    let url = src.repo_url.as_str();
    let repo_id = key::repo_id(url);
    let started = Instant::now();
    let result = async {
        let mut m = mirror::update(
            &cache.root,
            &repo_id,
            url,
            &src.git_ref,
            src.sha.as_deref(),
            creds,
            &limits,
            sink,
        )
        .await?;
        let branch = slots::branch_of(&src.git_ref);
        let (slot, slot_lock_ms) = slots::acquire(
            &cache.root,
            &repo_id,
            &git::redact_url(url),
            &branch,
            &cache.default_branches,
            &ctx.claim.job.id,
            &limits,
        )
        .await?;
        // The held slot now keeps eviction away from the mirror (see `slots::evict`).
        m.lock = None;
        if slot.recovered {
            sink(format!(
                "[raibid] slot {}: its previous job ({}) did not finish; resetting the checkout, keeping the target directory (cargo rebuilds unfinished units)",
                slot.name,
                slot.meta.job.as_deref().unwrap_or("?")
            ));
        }
        if let Err(e) = slot
            .checkout(&m.dir, &m.sha, false, creds, &limits, sink)
            .await
        {
            let CloneError::Failed(msg) = e else { return Err(e) };
            // The mirror lacks objects it claims to have: never trust it, rebuild and try once more,
            // in a new checkout (the old one's HEAD and index may name objects the new mirror lacks).
            sink(format!("[raibid] {msg}; rebuilding the mirror"));
            mirror::invalidate(&cache.root, &repo_id, &limits).await;
            let m2 = mirror::update(
                &cache.root,
                &repo_id,
                url,
                &src.git_ref,
                src.sha.as_deref(),
                creds,
                &limits,
                sink,
            )
            .await?;
            slot.checkout(&m2.dir, &m2.sha, true, creds, &limits, sink)
                .await?;
            drop(m2.lock);
            m.objects += m2.objects;
            m.bytes += m2.bytes;
            m.lock_ms += m2.lock_ms;
            m.hit = false;
        }
        Ok::<_, CloneError>((m, slot, slot_lock_ms))
    }
    .await;
    match result {
        Ok((m, slot, slot_lock_ms)) => {
            let lock_ms = m.lock_ms + slot_lock_ms;
            let stats = CacheStats {
                slot: Some(slot.label()),
                recovered: slot.recovered,
                lock_ms,
                restore_ms: (started.elapsed().as_millis() as u64).saturating_sub(lock_ms),
                mirror_hit: m.hit,
                fetched_objects: m.objects,
                fetched_bytes: m.bytes,
                ..CacheStats::default()
            };
            ctx.sys(
                "clone",
                format!("[raibid] at commit {} in slot {}", m.sha, slot.label()),
            )
            .await;
            if ctx.claim.job.source.sha.is_none() {
                ctx.claim.job.source.sha = Some(m.sha.clone());
            }
            ctx.claim.job.cache = Some(stats.clone());
            Ok(JobCache {
                repo_id,
                slot,
                key: None,
                stats,
            })
        }
        Err(CloneError::TimedOut) => {
            let secs = deadline.saturating_duration_since(started).as_secs();
            let msg = format!("clone timed out after {secs}s");
            ctx.sys("clone", format!("[raibid] {msg}")).await;
            Err(("timed_out", Some((Status::TimedOut, Some(msg)))))
        }
        Err(CloneError::Stopped) => Err(match ctx.stopped() {
            Stop::LeaseLost => ("failed", Some((LOST, None))),
            Stop::Release => ("failed", Some((RELEASED, None))),
            _ => (
                "cancelled",
                Some((
                    Status::Cancelled,
                    Some("cancelled during step `clone`".into()),
                )),
            ),
        }),
        Err(CloneError::Failed(e)) => {
            let e = match crate::patch::missing_ref_hint(ctx).await {
                Some(hint) => format!("{hint} ({e})"),
                None => e.to_string(),
            };
            ctx.sys("clone", format!("[raibid] {e}")).await;
            Err((
                "failed",
                Some((Status::Failed, Some(format!("clone: {e}")))),
            ))
        }
    }
}

/// The job is done with its slot: sizes, eviction past the cap. (Units and the node-wide counters
/// follow once the job's output is complete: `cache::record_job`.)
pub(super) async fn finish_cache(ctx: &mut JobCtx<'_>, mut jc: JobCache) {
    let limits =
        ctx.git_limits(Instant::now() + Duration::from_secs(ctx.shared.cfg.clone_timeout_secs));
    mirror::maintain(
        &ctx.shared.cache.root,
        &jc.repo_id,
        &ctx.shared.creds,
        &limits,
    )
    .await;
    let bytes = jc.slot.finish(jc.key.as_deref()).await;
    {
        let root = ctx.shared.cache.root.clone();
        let repo = jc.repo_id.clone();
        let _ = tokio::task::spawn_blocking(move || slots::record_cargo_home(&root, &repo)).await;
    }
    jc.stats.slot_bytes = Some(bytes);
    let root = ctx.shared.cache.root.clone();
    let max = ctx.shared.cache.max_bytes;
    let evicted = tokio::task::block_in_place(|| {
        slots::evict(&root, max, Some((&jc.slot, jc.key.as_deref())))
    });
    for e in evicted {
        tracing::info!(repo = %e.repo_id, slot = %e.slot, key = ?e.key, mirror = e.mirror, bytes = e.bytes, "cache: evicted");
    }
    ctx.claim.job.cache = Some(jc.stats);
}
