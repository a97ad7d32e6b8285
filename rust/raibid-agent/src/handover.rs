//! The hand-over from a Rust job to another kind's pool, an explicit transition: the `.raibid.yaml`
//! a Rust agent read asks for another kind (`image:`, `gpu: true`), so the commit — with the job's
//! patch, when it has one — is enqueued again as a job of that kind, de-duplicated on this job's id (a
//! reclaimed attempt does not enqueue a second one). This job ends `succeeded` under the commit-status
//! context `raibid/<name>-handover`; the new job reports under `raibid/<name>`.

use crate::runner::JobCtx;
use crate::LOST;
use chrono::Utc;
use raibid_core::job::{Job, JobKind, Status};

/// Enqueue this job's source as a job of `kind` (`setup` adds what the kind needs) and end this job.
pub(crate) async fn hand_over(
    ctx: &mut JobCtx<'_>,
    pipeline: &str,
    kind: JobKind,
    setup: impl FnOnce(&mut Job),
) -> (Status, Option<String>) {
    let mut source = ctx.claim.job.source.clone();
    source.delivery_id = None;
    let mut job = Job::new(source, Utc::now());
    job.kind = kind;
    job.pipeline = Some(pipeline.to_string());
    job.handed_over_from = Some(ctx.claim.job.id.clone());
    setup(&mut job);
    let from = ctx.claim.job.id.to_string();
    let id = match ctx
        .shared
        .queue
        .enqueue(job, Some(("handover", &from)))
        .await
    {
        Ok(raibid_core::queue::Enqueued::New(j)) => j.id.to_string(),
        Ok(raibid_core::queue::Enqueued::Duplicate(id)) => id,
        Err(e) => {
            let msg = format!(
                "could not hand the job over to the {} pool: {e}",
                kind.as_str()
            );
            ctx.sys("config", format!("[raibid] {msg}")).await;
            ctx.claim.job.end_step("failed", None, Utc::now());
            let _ = ctx.update("step_finished").await;
            return (Status::Failed, Some(format!("config: {msg}")));
        }
    };
    let why = match kind {
        JobKind::Image => "has `image:`",
        JobKind::Gpu => "has `gpu: true`",
        JobKind::Rust => "asks for a Rust agent",
    };
    ctx.sys(
        "config",
        format!(
            "[raibid] {} {why}: handed over to {} job {id} (kind {})",
            raibid_core::pipeline::PIPELINE_FILE,
            kind.as_str(),
            kind.as_str()
        ),
    )
    .await;
    ctx.claim.job.pipeline = Some(format!("{pipeline}-handover"));
    ctx.claim.job.handed_over_to = raibid_core::job::JobId::parse(&id).ok();
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    (Status::Succeeded, None)
}
