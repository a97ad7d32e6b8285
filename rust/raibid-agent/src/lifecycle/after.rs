//! The after-steps phase: once the kind's run phase has ended, before the report and the final write,
//! with the workspace (checkout, slot) still there. Nothing happens here yet: it is the one place
//! where a phase that follows every kind's steps goes — issue 23 §2's artifact upload (the job's
//! declared paths from the checkout to the artifact store, whatever the steps' outcome asks for).

use crate::ctx::{End, JobCtx, Workspace};

/// Run what follows the steps; returns the job's end (unchanged unless a phase here changes it).
pub(super) async fn after_steps(_ctx: &mut JobCtx<'_>, _ws: &Workspace, end: End) -> End {
    end
}
