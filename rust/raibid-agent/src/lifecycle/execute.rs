//! One job through its phases: the kind's start, source (clone + patch), config and the transition its
//! outcome asks for, the kind's run, the after-steps phase, the kind's cleanup, the slot's bookkeeping.
//! The only place that names every kind is the dispatch in [`execute`].

use super::{after, handover, source};
use crate::ctx::{End, JobCtx, Workspace};
use crate::kinds::{self, ConfigOutcome, ConfigStep, Kind};
use crate::stop::LOST;
use chrono::Utc;
use raibid_core::job::{JobKind, Status};
use std::path::Path;

/// Run the job through its kind. Returns the final status, or `LOST` (lease lost: write nothing) or
/// `RELEASED` (shutdown: give the job back).
pub(super) async fn execute(ctx: &mut JobCtx<'_>, dir: &Path) -> End {
    match ctx.claim.job.kind {
        JobKind::Rust => with_kind(ctx, dir, &kinds::rust::Rust).await,
        JobKind::Image => with_kind(ctx, dir, &kinds::image::Image).await,
        JobKind::Gpu => with_kind(ctx, dir, &kinds::gpu::Gpu).await,
    }
}

async fn with_kind<K: Kind>(ctx: &mut JobCtx<'_>, dir: &Path, kind: &K) -> End {
    let mut ws: Option<Workspace> = None;
    let end = phases(ctx, dir, kind, &mut ws).await;
    kind.cleanup(dir).await;
    if let Some(ws) = ws {
        source::finish_cache(ctx, ws.cache).await;
    }
    end
}

async fn phases<K: Kind>(
    ctx: &mut JobCtx<'_>,
    dir: &Path,
    kind: &K,
    slot: &mut Option<Workspace>,
) -> End {
    kind.start(ctx);
    ctx.claim.job.timestamps.started = Some(Utc::now());
    if let Err(end) = source::source(ctx, dir, slot).await {
        return end;
    }
    let Some(ws) = slot.as_mut() else {
        return (Status::Failed, Some("clone: no checkout".into()));
    };
    // config
    let step = kind.capabilities().config_step == ConfigStep::Always;
    if step {
        ctx.claim.job.begin_step("config", Utc::now());
        ctx.update("step_started").await;
    }
    let outcome = kind.config(ctx, ws).await;
    // The config transition.
    let plan = match outcome {
        ConfigOutcome::Run(plan) => {
            if step {
                ctx.claim.job.end_step("succeeded", None, Utc::now());
                if !ctx.update("step_finished").await {
                    return (LOST, None);
                }
            }
            plan
        }
        ConfigOutcome::HandOver(h) => {
            if !step {
                ctx.claim.job.begin_step("config", Utc::now());
            }
            return handover::hand_over(ctx, *h).await;
        }
        ConfigOutcome::Fail(msg) => return fail_config(ctx, step, &msg).await,
        // Issue 23 §1: `ConfigOutcome::FanOut(..)` is handled here (enqueue the cells, end this job),
        // like the hand-over.
    };
    let end = kind.run(ctx, ws, plan).await;
    after::after_steps(ctx, ws, end).await
}

/// The job fails in its config step (opened here when the kind records it only on failure).
async fn fail_config(ctx: &mut JobCtx<'_>, begun: bool, msg: &str) -> End {
    if !begun {
        ctx.claim.job.begin_step("config", Utc::now());
    }
    ctx.sys("config", format!("[raibid] {msg}")).await;
    ctx.claim.job.end_step("failed", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    (Status::Failed, Some(format!("config: {msg}")))
}
