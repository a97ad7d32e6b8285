//! `list_artifacts` (issue 23 §2): a job's uploaded files — names, sizes, digests and download URLs,
//! never their bytes (a binary has no place in a model's context; the URL serves it to a tool that
//! needs it, with the API token).

use super::budget::{self, Fit};
use crate::AppState;
use schemars::JsonSchema;
use serde::Serialize;

/// `list_artifacts` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ArtifactsAnswer {
    /// Job id.
    pub job_id: String,
    /// The registry manifest (`host/repository@sha256:…`); null when the job uploaded none.
    pub reference: Option<String>,
    /// The files.
    pub files: Vec<crate::artifacts::ArtifactFile>,
    /// Files in all.
    pub files_total: usize,
    /// What was left out (answer budget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

impl Fit for ArtifactsAnswer {
    /// Degradation: the last files are dropped (`files_total` and `cut` say how many; `GET
    /// /api/v1/jobs/{id}/artifacts` lists them all).
    fn degrade(&mut self, ratio: f64) -> bool {
        let n = self.files.len();
        if n == 0 {
            return false;
        }
        let keep = budget::keep_share(n, ratio, 0);
        self.files.truncate(keep);
        self.cut = Some(format!(
            "{} of {} files shown; GET /api/v1/jobs/{}/artifacts lists every one",
            keep, self.files_total, self.job_id
        ));
        true
    }
}

/// The answer for a job.
pub fn answer(state: &AppState, job: &raibid_core::job::Job) -> ArtifactsAnswer {
    let list = crate::artifacts::list_of(job, &crate::artifacts::api_base(state, &job.id));
    ArtifactsAnswer {
        job_id: list.job_id,
        reference: list.reference,
        files_total: list.files.len(),
        files: list.files,
        cut: None,
    }
}
