//! The after-steps phase: once the kind's run phase has ended, before the report and the final write,
//! with the workspace (checkout, slot) still there: the one place where a phase that follows every
//! kind's steps goes — issue 23 §2's artifact upload (the job's declared paths from the checkout to the
//! registry, as the steps' outcome and `when:` ask; `crate::artifacts`).
//! What to upload is the kind's to decide in its config phase (the Rust and GPU kinds read the
//! pipeline there): it reaches this phase through the job's context (`ctx`), as the secrets and the
//! deadline do, never by this phase calling into a kind. `end` is `LOST` or `RELEASED` when the job is
//! not this agent's to finish: nothing is to be uploaded then.

use crate::ctx::{End, JobCtx, Workspace};

/// Run what follows the steps; returns the job's end (unchanged unless a phase here changes it).
pub(super) async fn after_steps(ctx: &mut JobCtx<'_>, ws: &Workspace, end: End) -> End {
    let Some(up) = ctx.artifacts.take() else {
        return end;
    };
    crate::artifacts::after_steps(ctx, &up.spec, &ws.checkout(), up.target, end).await
}
