//! Build matrices on the agent (issue 23 §1): the hook between the config step and the steps.
//!
//! - A job whose `.raibid.yaml` has `matrix:` and that is not a cell becomes its group: the matrix is
//!   expanded here, once, and the group with one queued job per cell is written in one script
//!   (`Queue::fan_out`); this agent then lets the job go (its entry acknowledged, no final status: the
//!   group ends with its cells' combined status, `Queue::settle_group`).
//! - A cell never expands again: it carries its axis values, which become the pipeline's environment
//!   (`RAIBID_MATRIX_<AXIS>`, and `RUSTUP_TOOLCHAIN` / `CARGO_BUILD_TARGET` for the well-known axes; they
//!   win over the pipeline's own `env:`, a step's `env:` still wins over them). The cache key is computed
//!   from that environment (the sandboxed `rustc -vV` runs with `RUSTUP_TOOLCHAIN`), and the cell's slot
//!   is preferred by branch *and* values (`slot_branch`), so cells do not take turns on one slot.
//!
//! Where it is called: the Rust/GPU kinds' config phase (`apply_cell`; a non-cell with `matrix:`
//! returns `ConfigOutcome::FanOut`), the lifecycle's config transition (`fan_out`), the source phase
//! (`slot_branch`) and the final write (`fanned_out`: nothing to write for a group).

use crate::ctx::{End, JobCtx};
use crate::stop::LOST;
use chrono::Utc;
use raibid_core::job::{Job, Status};
use raibid_core::matrix::{self, GroupCell, JobMatrix, Matrix, MatrixCell, MatrixGroup};
use raibid_core::pipeline::Pipeline;
use raibid_core::queue::QueueError;

/// A cell takes its values into the pipeline's environment (true); any other job is left alone (false).
pub(crate) async fn apply_cell(ctx: &mut JobCtx<'_>, pipeline: &mut Pipeline) -> bool {
    let Some(cell) = ctx.claim.job.matrix_cell().cloned() else {
        return false;
    };
    let env = matrix::env(&cell.values);
    ctx.sys(
        "config",
        format!(
            "[raibid] matrix cell ({}) of group {}: {}",
            matrix::label(&cell.values),
            cell.group,
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )
    .await;
    pipeline.env.extend(env);
    true
}

/// Expand the matrix and enqueue the group with its cells (`Queue::fan_out`); this job then ends
/// without a final write of its own (`LOST` with `fanned_out`: the group settles with its cells).
pub(crate) async fn fan_out(ctx: &mut JobCtx<'_>, pipeline_name: &str, mx: &Matrix) -> End {
    let cells = match mx.expand() {
        Ok(c) => c,
        Err(e) => {
            return fail(
                ctx,
                format!("{}: {e}", raibid_core::pipeline::PIPELINE_FILE),
            )
            .await
        }
    };
    let now = Utc::now();
    let parent = &ctx.claim.job;
    let mut source = parent.source.clone();
    source.delivery_id = None;
    let jobs: Vec<Job> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut j = Job::new(source.clone(), now);
            j.kind = parent.kind;
            j.pipeline = Some(pipeline_name.to_string());
            // A scheduled push's variant and schedule go with every cell.
            j.schedule_id = parent.schedule_id.clone();
            j.env = parent.env.clone();
            j.matrix = Some(JobMatrix::Cell(MatrixCell {
                group: parent.id.to_string(),
                index: i as u32,
                values: c.values.clone(),
            }));
            j
        })
        .collect();
    let group = MatrixGroup {
        cells: jobs
            .iter()
            .zip(&cells)
            .map(|(j, c)| GroupCell {
                job: j.id.to_string(),
                label: c.label(),
            })
            .collect(),
        fail_fast: mx.fail_fast,
    };
    ctx.sys(
        "config",
        format!(
            "[raibid] matrix: {} cells{}",
            jobs.len(),
            if mx.fail_fast { " (fail_fast)" } else { "" }
        ),
    )
    .await;
    for (j, c) in jobs.iter().zip(&cells) {
        ctx.sys(
            "config",
            format!("[raibid]   ({}) → job {}", c.label(), j.id),
        )
        .await;
    }
    ctx.claim.job.pipeline = Some(pipeline_name.to_string());
    ctx.claim.job.matrix = Some(JobMatrix::Group(group));
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    ctx.claim.job.step = None;
    ctx.claim.job.agent = None;
    match ctx.shared.queue.fan_out(&mut ctx.claim, &jobs).await {
        Ok(()) => {
            tracing::info!(job = %ctx.claim.job.id, cells = jobs.len(), "matrix fanned out");
            (LOST, None)
        }
        Err(QueueError::LeaseLost(_)) => (LOST, None),
        Err(QueueError::Conflict(m)) => (Status::Cancelled, Some(m)),
        Err(e) => {
            ctx.claim.job.matrix = None;
            fail(ctx, format!("could not enqueue the matrix cells: {e}")).await
        }
    }
}

async fn fail(ctx: &mut JobCtx<'_>, msg: String) -> End {
    ctx.sys("config", format!("[raibid] {msg}")).await;
    ctx.claim.job.end_step("failed", None, Utc::now());
    let _ = ctx.update("step_finished").await;
    (Status::Failed, Some(format!("config: {msg}")))
}

/// The branch a job's cargo target slot is chosen by: a cell's adds its values
/// (`main+features-serde`), so each cell of a branch comes back to its own slot.
pub(crate) fn slot_branch(job: &Job, branch: String) -> String {
    match job.matrix_cell() {
        Some(c) => format!("{branch}+{}", matrix::slot_suffix(&c.values)),
        None => branch,
    }
}

/// True when the job let go of its claim because it fanned out (the runner writes no final status).
pub(crate) fn fanned_out(job: &Job) -> bool {
    job.matrix_group().is_some()
}
