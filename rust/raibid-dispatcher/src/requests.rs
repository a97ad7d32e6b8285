//! Requests shared by the REST API and the MCP tools: one Rust type each, from which serde reads the
//! body and schemars derives the JSON schema the MCP tools publish. Validation names the field.

use crate::AppState;
use chrono::Utc;
use raibid_core::contract;
use raibid_core::job::{is_valid_job_id, Job, PatchRef, Source, Status, Trigger, TriggerKind};
use raibid_core::queue::{Enqueued, QueueError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest accepted patch (unified diff) in bytes.
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// A job submission (`POST /api/v1/jobs`, MCP `submit_job`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Clone URL of the repository (https, ssh or file), e.g. `http://gitea-http.gitea:3000/me/app.git`.
    pub repo_url: String,
    /// Branch or full ref to build: `main` means `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Full 40- or 64-character commit id; omitted: the tip of `ref` when the agent clones.
    #[serde(default)]
    pub sha: Option<String>,
    /// A unified diff (`git diff` output) against that commit, applied with `git apply` before the
    /// pipeline runs (at most 1 MiB). A patch that does not apply fails the job in a `patch` step.
    #[serde(default)]
    pub patch: Option<String>,
    /// http(s) URL the dispatcher POSTs the final job record to, signed with `X-Raibid-Signature`.
    #[serde(default)]
    pub notify_url: Option<String>,
    /// An image job (`raibid_core::image::ImageRequest`): build, test and publish a container image
    /// instead of the cargo pipeline.
    #[serde(default)]
    pub image: Option<serde_json::Value>,
    /// The steps need a GPU: the job goes to the GPU pool (kind `gpu`) and waits for a GPU agent.
    /// The same as `gpu: true` in `.raibid.yaml`.
    #[serde(default)]
    pub gpu_required: bool,
}

/// A submission that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubmit {
    /// Clone URL.
    pub repo_url: String,
    /// Full ref.
    pub git_ref: String,
    /// Commit id.
    pub sha: Option<String>,
    /// The diff.
    pub patch: Option<String>,
    /// Notification URL.
    pub notify_url: Option<String>,
    /// Image job request.
    pub image: Option<raibid_core::image::ImageRequest>,
    /// A GPU job (kind `gpu`).
    pub gpu: bool,
}

/// Check a submission; the error names the field.
pub fn validate_submit(s: SubmitJob, notify_hosts: &[String]) -> Result<ValidSubmit, String> {
    let url = s.repo_url.trim().to_string();
    if url.is_empty()
        || url.len() > 2048
        || url.starts_with('-')
        || url.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("repo_url: must be a clone URL (http(s), ssh or file)".into());
    }
    let r = s.git_ref.trim();
    if r.is_empty()
        || r.len() > 255
        || r.starts_with('-')
        || r.contains("..")
        || r.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err("ref: not a valid git ref".into());
    }
    let git_ref = if r.starts_with("refs/") {
        r.to_string()
    } else {
        format!("refs/heads/{r}")
    };
    let sha = match s
        .sha
        .map(|x| x.trim().to_ascii_lowercase())
        .filter(|x| !x.is_empty())
    {
        Some(x) if (x.len() == 40 || x.len() == 64) && x.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(x)
        }
        Some(_) => return Err("sha: must be a full 40- or 64-character hex commit id".into()),
        None => None,
    };
    let patch = match s.patch.filter(|p| !p.trim().is_empty()) {
        Some(p) if p.len() > MAX_PATCH_BYTES => {
            return Err(format!(
                "patch: {} bytes, the limit is {MAX_PATCH_BYTES}; commit and push larger changes",
                p.len()
            ))
        }
        Some(p) if p.contains('\0') => return Err("patch: contains a NUL byte".into()),
        Some(p)
            if !(p.contains("\n@@ ") || p.starts_with("@@ ") || p.contains("GIT binary patch")) =>
        {
            return Err("patch: not a unified diff (no `@@` hunk); send `git diff` output".into())
        }
        Some(p) => Some(p),
        None => None,
    };
    let notify_url = match s
        .notify_url
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
    {
        Some(u) => {
            crate::notify::check_url(&u, notify_hosts).map_err(|e| format!("notify_url: {e}"))?;
            Some(u)
        }
        None => None,
    };
    let image = match s.image {
        Some(v) => Some(raibid_core::image::ImageRequest::from_json(v).map_err(|e| e.to_string())?),
        None => None,
    };
    if patch.is_some() && image.is_some() {
        // The image pool builds the commit as pushed: a patch would be silently dropped.
        return Err("patch: an image job builds the commit as it is in the repository and cannot apply a patch; commit and push the change, or submit the patch without `image` (a cargo job)".into());
    }
    if s.gpu_required && image.is_some() {
        return Err("gpu_required: an image job builds an image and cannot ask for a GPU; leave out one of `image` and `gpu_required`".into());
    }
    Ok(ValidSubmit {
        repo_url: url,
        git_ref,
        sha,
        patch,
        notify_url,
        image,
        gpu: s.gpu_required,
    })
}

/// What the dispatcher's configuration as it is now refuses of a job's source: a clone URL no agent
/// clones (scheme, host, credentials, dot segments), a `notify_url` that may not be reached, a registry
/// or image name outside the registry policy. Checked at submit (REST, MCP) and again at every retry.
pub fn check_policy(
    state: &AppState,
    repo_url: &str,
    notify_url: Option<&str>,
    image: Option<&raibid_core::image::ImageRequest>,
) -> Result<(), String> {
    crate::guard::check_clone_url(&state.settings.intake, repo_url)
        .map_err(|e| e.message().to_string())?;
    if let Some(u) = notify_url {
        if state.settings.notify_secret.is_none() {
            return Err(format!(
                "notify_url: this dispatcher has no notification secret ({}); leave notify_url out and wait for the job",
                contract::env::NOTIFY_SECRET
            ));
        }
        crate::notify::check_url(u, &state.settings.notify_allowed_hosts)
            .map_err(|e| format!("notify_url: {e}"))?;
    }
    if let Some(img) = image {
        state
            .settings
            .intake
            .registries
            .check(img, repo_url)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Why a retry was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The job is not in a state that allows it (409).
    Conflict(String),
    /// The configuration as it is now refuses the job (422).
    Unprocessable(String),
}

impl Refused {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            Refused::Conflict(m) | Refused::Unprocessable(m) => m,
        }
    }
}

/// Store the patch (when there is one) and enqueue the job. The patch key is written first, with the
/// record's retention, so an agent never sees a job whose patch is missing.
pub async fn create_job(
    state: &AppState,
    v: ValidSubmit,
    actor: Option<String>,
) -> Result<Enqueued, QueueError> {
    let patch = v.patch.as_ref().map(|p| PatchRef {
        bytes: p.len() as u64,
        sha256: hex::encode(Sha256::digest(p.as_bytes())),
    });
    let mut job = Job::new(
        Source {
            repo_url: v.repo_url,
            git_ref: v.git_ref,
            sha: v.sha,
            trigger: Trigger {
                kind: TriggerKind::Api,
                actor,
            },
            delivery_id: None,
            forge_repo: None,
            patch,
            notify_url: v.notify_url,
        },
        Utc::now(),
    );
    if let Some(r) = v.image {
        job.kind = raibid_core::job::JobKind::Image;
        job.image = Some(raibid_core::image::ImageJob::new(r));
    }
    if v.gpu {
        job.kind = raibid_core::job::JobKind::Gpu;
    }
    if let Some(p) = &v.patch {
        store_patch(state, &job.id, p).await?;
    }
    state.queue.enqueue(job, None).await
}

/// Write a job's patch key.
pub async fn store_patch(state: &AppState, id: &str, patch: &str) -> Result<(), QueueError> {
    let mut con = state.queue.redis();
    let _: () = redis::cmd("SET")
        .arg(contract::job_patch_key(id))
        .arg(patch)
        .arg("EX")
        .arg(state.queue.config().retention.as_secs().max(1))
        .query_async(&mut con)
        .await?;
    Ok(())
}

/// A job list query (`GET /api/v1/jobs`, MCP `list_jobs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListJobs {
    /// Only jobs in this status: queued, running, succeeded, failed, cancelled, timed_out.
    #[serde(default)]
    pub status: Option<String>,
    /// Only jobs whose repository URL contains this text.
    #[serde(default)]
    pub repo: Option<String>,
    /// Only jobs of this ref (`main` or `refs/heads/main`).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Page size, 1-500 (default 50; MCP default 20).
    #[serde(default)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct JobPage {
    /// Jobs, newest first.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Run a list query; the error names the field.
pub async fn list_jobs(
    state: &AppState,
    q: &ListJobs,
    default_limit: u32,
) -> Result<Result<JobPage, String>, QueueError> {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => match Status::parse(s) {
            Some(st) => Some(st),
            None => {
                return Ok(Err(format!(
                    "status: `{s}` is not one of {}",
                    Status::ALL.map(|s| s.as_str()).join(", ")
                )))
            }
        },
        None => None,
    };
    let limit = q.limit.unwrap_or(default_limit);
    if !(1..=500).contains(&limit) {
        return Ok(Err("limit: must be between 1 and 500".into()));
    }
    if let Some(c) = q.cursor.as_deref() {
        if !is_valid_job_id(c) {
            return Ok(Err("cursor: not a cursor returned by this API".into()));
        }
    }
    let want_ref = q.git_ref.as_deref().filter(|r| !r.is_empty()).map(|r| {
        if r.starts_with("refs/") {
            r.to_string()
        } else {
            format!("refs/heads/{r}")
        }
    });
    let repo = q.repo.as_deref().filter(|r| !r.is_empty());
    // The filters apply before paging, from the queue's indexes (issue 18 §4).
    let filter = raibid_core::queue::ListFilter {
        status,
        git_ref: want_ref.as_deref(),
        repo,
    };
    let (page, next_cursor) = state
        .queue
        .list_filtered(&filter, limit as usize, q.cursor.as_deref())
        .await?;
    let jobs = page.iter().map(|j| state.answer(j)).collect();
    Ok(Ok(JobPage { jobs, next_cursor }))
}

/// Run a finished job again as a new job (its patch copied to the new job's key). `Err(message)` when
/// the job is not finished.
pub async fn retry(state: &AppState, id: &str) -> Result<Result<Job, Refused>, QueueError> {
    let old = state.queue.get(id).await?;
    if !old.status.is_final() {
        return Ok(Err(Refused::Conflict(format!(
            "job {id} is {}; only a finished job can be retried",
            old.status
        ))));
    }
    // The allowlists may have changed since the job was accepted.
    if let Err(m) = check_policy(
        state,
        &old.source.repo_url,
        old.source.notify_url.as_deref(),
        old.image.as_ref().map(|i| &i.request),
    ) {
        return Ok(Err(Refused::Unprocessable(format!(
            "job {id} cannot be retried under the current configuration: {m}"
        ))));
    }
    let mut source = old.source.clone();
    source.trigger = Trigger {
        kind: TriggerKind::Retry,
        actor: None,
    };
    source.delivery_id = None;
    let mut job = Job::new(source, Utc::now());
    job.retry_of = Some(id.to_string());
    job.kind = old.kind;
    // A scheduled job's retry builds the same variant (and stays listed under its schedule).
    job.schedule_id = old.schedule_id.clone();
    job.env = old.env.clone();
    job.image = old
        .image
        .clone()
        .map(|i| raibid_core::image::ImageJob::new(i.request));
    if job.source.patch.is_some() {
        let mut con = state.queue.redis();
        let patch: Option<String> = redis::cmd("GET")
            .arg(contract::job_patch_key(id))
            .query_async(&mut con)
            .await?;
        match patch {
            Some(p) => store_patch(state, &job.id, &p).await?,
            None => {
                return Ok(Err(Refused::Conflict(format!(
                    "job {id}'s patch is gone (expired or cleaned up); submit it again"
                ))))
            }
        }
    }
    // A matrix cell is retried in its group: the new attempt replaces it there (issue 23 §1).
    let cell = old.matrix_cell().cloned();
    if cell.is_some() {
        job.matrix = old.matrix.clone();
        job.pipeline = old.pipeline.clone();
    }
    match state.queue.enqueue(job, None).await? {
        Enqueued::New(job) => {
            if let Some(c) = cell {
                state.queue.replace_cell(&c.group, c.index, &job.id).await?;
            }
            Ok(Ok(job))
        }
        Enqueued::Duplicate(d) => Ok(Err(Refused::Conflict(format!("duplicate of {d}")))),
    }
}
