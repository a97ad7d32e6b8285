//! `DELETE /api/v1/jobs/{id}/images`: the `cleanup` of an image job. The images live in the Buildah
//! storage of the image agents (on their nodes), not here: the request is recorded in Redis
//! (`raibid_core::queue::image_cleanup::request_cleanup`) and every image agent removes the job's local image before
//! its next job and in `raibid-agent --image-gc`. Pushed tags in the registry are not touched (they
//! are the published result).

use crate::guard::ApiError;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raibid_core::image::local_reference;
use raibid_core::job::{is_valid_job_id, JobKind};
use raibid_core::queue::image_cleanup::request_cleanup;
use std::time::Duration;

/// Cleanup requests are kept this long; the agents' cache GC has removed older images anyway.
pub const CLEANUP_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Request the removal of a finished image job's local images.
pub async fn delete_job_images(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if !is_valid_job_id(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} not found"),
        ));
    }
    let job = state.queue.get(&id).await?;
    if job.kind != JobKind::Image {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable",
            format!(
                "job {id} is a {} job; only image jobs have images",
                job.kind.as_str()
            ),
        ));
    }
    if !job.status.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "job {id} is {}; cancel it first or wait for it to finish",
                job.status
            ),
        ));
    }
    request_cleanup(&state.queue, &id, CLEANUP_KEEP)
        .await
        .map_err(|e| ApiError::from(raibid_core::queue::QueueError::Redis(e)))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(crate::openapi::ImageCleanup {
            job: id.clone(),
            cleanup: "requested".into(),
            local_image: local_reference(&id),
            pushed: job
                .image
                .map(|i| i.pushed)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect(),
        }),
    )
        .into_response())
}
