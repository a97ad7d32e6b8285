//! The hand-over transition of the config phase: the `.raibid.yaml` a kind read asks for another kind
//! (`image:`, `gpu: true`), so the commit — with the job's patch, when it has one and the kind it goes
//! to can apply it; refused, never dropped, when it cannot — is enqueued again as a job of that kind,
//! de-duplicated on this job's id (a reclaimed attempt does not enqueue a second one). This job ends
//! `succeeded` under the commit-status context `raibid/<name>-handover`; the new job reports under
//! `raibid/<name>`.

use crate::ctx::{End, JobCtx};
use crate::kinds::{self, Capabilities, HandOver};
use crate::stop::LOST;
use chrono::{DateTime, Utc};
use raibid_core::contract;
use raibid_core::image::ImageJob;
use raibid_core::job::{Job, Status};
use raibid_core::pipeline::PIPELINE_FILE;

/// The job a hand-over enqueues: this job's source (commit resolved, patch reference kept) as a job
/// of the kind it goes to. `Err`: why it is not handed over.
pub(super) fn new_job(
    from: &Job,
    h: &HandOver,
    to: &Capabilities,
    now: DateTime<Utc>,
) -> Result<Job, String> {
    if from.source.patch.is_some() && !to.patch {
        return Err(format!(
            "the job has a patch, and an {} job builds the commit as it is in the repository (it cannot apply a patch); commit and push the change",
            to.kind.as_str()
        ));
    }
    let mut source = from.source.clone();
    source.delivery_id = None;
    let mut job = Job::new(source, now);
    job.kind = to.kind;
    job.pipeline = Some(h.pipeline.clone());
    job.image = h.image.clone().map(ImageJob::new);
    job.handed_over_from = Some(from.id.clone());
    Ok(job)
}

/// Enqueue this job's source as a job of `h.to` and end this job (its config step included).
pub(super) async fn hand_over(ctx: &mut JobCtx<'_>, h: HandOver) -> End {
    let to = kinds::capabilities(h.to);
    let job = new_job(&ctx.claim.job, &h, &to, Utc::now()).and_then(|job| {
        kinds::admit(ctx, &h)?;
        Ok(job)
    });
    let job = match job {
        Ok(j) => j,
        Err(msg) => {
            let msg = format!("{PIPELINE_FILE} {}, not handed over: {msg}", h.asked_by);
            return failed(ctx, msg).await;
        }
    };
    let kind = job.kind;
    let new_id = job.id.to_string();
    // The patch goes with the job: its key is written before the job is enqueued, so the new job's
    // agent never sees the job without it.
    if job.source.patch.is_some() {
        if let Err(msg) = copy_patch(ctx, &new_id).await {
            return failed(
                ctx,
                format!(
                    "could not hand the job over to the {} pool: {msg}",
                    kind.as_str()
                ),
            )
            .await;
        }
    }
    let from = ctx.claim.job.id.to_string();
    let id = match ctx
        .shared
        .queue
        .enqueue(job, Some(("handover", &from)))
        .await
    {
        Ok(raibid_core::queue::Enqueued::New(j)) => j.id.to_string(),
        Ok(raibid_core::queue::Enqueued::Duplicate(id)) => {
            // An earlier attempt handed it over: the copy made for this one is nobody's.
            if ctx.claim.job.source.patch.is_some() {
                let mut con = ctx.shared.queue.redis();
                let _: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(contract::job_patch_key(&new_id))
                    .query_async(&mut con)
                    .await;
            }
            id
        }
        Err(e) => {
            return failed(
                ctx,
                format!(
                    "could not hand the job over to the {} pool: {e}",
                    kind.as_str()
                ),
            )
            .await
        }
    };
    ctx.sys(
        "config",
        format!(
            "[raibid] {PIPELINE_FILE} {}: handed over to {} job {id} (kind {})",
            h.asked_by,
            kind.as_str(),
            kind.as_str()
        ),
    )
    .await;
    ctx.claim.job.pipeline = Some(format!("{}-handover", h.pipeline));
    ctx.claim.job.handed_over_to = raibid_core::job::JobId::parse(&id).ok();
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    (Status::Succeeded, None)
}

/// The config step fails with `msg`.
async fn failed(ctx: &mut JobCtx<'_>, msg: String) -> End {
    ctx.sys("config", format!("[raibid] {msg}")).await;
    ctx.claim.job.end_step("failed", None, Utc::now());
    let _ = ctx.update("step_finished").await;
    (Status::Failed, Some(format!("config: {msg}")))
}

/// Copy this job's patch to the new job's key (same retention).
async fn copy_patch(ctx: &JobCtx<'_>, new_id: &str) -> Result<(), String> {
    let mut con = ctx.shared.queue.redis();
    let diff: Option<Vec<u8>> = redis::cmd("GET")
        .arg(contract::job_patch_key(&ctx.claim.job.id))
        .query_async(&mut con)
        .await
        .map_err(|e| format!("cannot read the patch: {e}"))?;
    let diff = diff.ok_or("the patch is gone (expired or cleaned up); submit the job again")?;
    redis::cmd("SET")
        .arg(contract::job_patch_key(new_id))
        .arg(diff)
        .arg("EX")
        .arg(ctx.shared.queue.config().retention.as_secs().max(1))
        .query_async::<()>(&mut con)
        .await
        .map_err(|e| format!("cannot store the patch: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use raibid_core::job::{JobKind, PatchRef, Source};

    fn job(patch: bool) -> Job {
        let mut source: Source = serde_json::from_value(serde_json::json!({
            "repo_url": "https://forge.example/team/app.git",
            "ref": "refs/heads/main",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "trigger": {"kind": "api", "actor": "test"},
        }))
        .unwrap();
        source.delivery_id = Some("delivery-1".into());
        if patch {
            source.patch = Some(PatchRef {
                bytes: 42,
                sha256: "ab".repeat(32),
            });
        }
        Job::new(source, Utc::now())
    }

    fn to(kind: JobKind) -> HandOver {
        HandOver {
            to: kind,
            pipeline: "app".into(),
            asked_by: "has `gpu: true`",
            image: (kind == JobKind::Image)
                .then(|| serde_json::from_value(serde_json::json!({"name": "team/app"})).unwrap()),
        }
    }

    #[test]
    fn a_patched_job_is_handed_over_with_its_patch_to_a_kind_that_applies_patches() {
        let from = job(true);
        let h = to(JobKind::Gpu);
        let j = new_job(&from, &h, &kinds::capabilities(JobKind::Gpu), Utc::now()).unwrap();
        assert_eq!(j.kind, JobKind::Gpu);
        assert_ne!(j.id, from.id);
        assert_eq!(j.source.patch, from.source.patch, "the patch goes along");
        assert_eq!(j.source.sha, from.source.sha, "the same commit");
        assert_eq!(
            j.source.delivery_id, None,
            "the delivery stays with the first job"
        );
        assert_eq!(j.pipeline.as_deref(), Some("app"));
        assert!(j.image.is_none());
    }

    #[test]
    fn a_patched_job_is_not_handed_over_to_the_image_kind_and_an_unpatched_one_is() {
        let h = to(JobKind::Image);
        let caps = kinds::capabilities(JobKind::Image);
        let e = new_job(&job(true), &h, &caps, Utc::now()).unwrap_err();
        assert!(e.contains("patch") && e.contains("image"), "{e}");
        let j = new_job(&job(false), &h, &caps, Utc::now()).unwrap();
        assert_eq!(j.kind, JobKind::Image);
        assert_eq!(
            j.image.as_ref().map(|i| i.request.name.as_str()),
            Some("team/app")
        );
        assert!(j.source.patch.is_none());
    }
}
