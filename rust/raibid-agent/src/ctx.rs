//! What a running job carries (below the lifecycle and the kinds, so both use it without importing
//! each other): the claim (record and lease), the log channel, the stop signal, the deadline, the
//! masker, the log budget and the pipeline's secrets, with the few operations every phase needs
//! (a system log line, a fenced record update, the stop state, the limits of its git commands).

use crate::cache::slots::JobCache;
use crate::git;
use crate::masking::Masker;
use crate::process::{LogBudget, LogTx};
use crate::stop::Stop;
use raibid_core::job::Status;
use raibid_core::queue::{Claim, Queue, QueueError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// What every job of this agent shares: its options, the queue, the git policy and credentials, the
/// masker, the step user, the sandbox, the GPU(s) found at start, the secret scopes, the running
/// jobs' stop signals, the caches.
pub(crate) struct Shared {
    pub(crate) cfg: crate::config::AgentConfig,
    pub(crate) queue: Queue,
    pub(crate) policy: git::UrlPolicy,
    pub(crate) creds: git::Credentials,
    pub(crate) masker: Masker,
    pub(crate) step_user: Option<crate::isolation::StepUser>,
    /// The sandbox steps run in (None: this agent runs no build steps, e.g. image jobs only).
    pub(crate) sandbox: Option<crate::sandbox::Sandbox>,
    /// The GPU(s) this agent found at start (agents serving the `gpu` kind only).
    pub(crate) gpu: Option<crate::gpu::GpuProbe>,
    pub(crate) scopes: crate::secret_scopes::SecretScopes,
    pub(crate) running: Mutex<HashMap<String, watch::Sender<Stop>>>,
    pub(crate) jobs_done: AtomicU64,
    pub(crate) cache: crate::cache::Cache,
}

/// How a phase ended the job: its final status and reason, or `LOST` (lease lost: write nothing) or
/// `RELEASED` (shutdown: give the job back).
pub(crate) type End = (Status, Option<String>);

/// Everything a running job needs.
pub(crate) struct JobCtx<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) claim: Claim,
    pub(crate) logs: LogTx,
    pub(crate) stop: watch::Receiver<Stop>,
    pub(crate) deadline: Instant,
    pub(crate) masker: Arc<Mutex<Masker>>,
    /// The job's log budget, shared by its steps' output pumps.
    pub(crate) budget: Arc<LogBudget>,
    /// (name, value) of the pipeline's secrets.
    pub(crate) secrets: Vec<(String, String)>,
}

impl JobCtx<'_> {
    pub(crate) async fn sys(&self, step: &str, line: impl Into<String>) {
        let _ = self
            .logs
            .send((step.to_string(), "system".into(), line.into()))
            .await;
    }

    /// A log sink for one step's system lines that never waits (cache and git helpers take it).
    pub(crate) fn sys_sink(&self, step: &'static str) -> impl Fn(String) + Sync + 'static {
        let logs = self.logs.clone();
        move |l: String| {
            let _ = logs.try_send((step.into(), "system".into(), l));
        }
    }

    /// Write the record (fenced by the lease); false when the lease is lost.
    pub(crate) async fn update(&mut self, event: &'static str) -> bool {
        match self
            .shared
            .queue
            .update_claimed(&mut self.claim, event)
            .await
        {
            Ok(()) => true,
            Err(QueueError::LeaseLost(_)) => false,
            Err(e) => {
                tracing::warn!(job = %self.claim.job.id, error = %e, "could not update job record");
                true
            }
        }
    }

    pub(crate) fn stopped(&self) -> Stop {
        *self.stop.borrow()
    }

    /// The limits of the job's git commands: `deadline`, the job's stop signal, the step user.
    pub(crate) fn git_limits(&self, deadline: Instant) -> git::Limits {
        git::Limits {
            deadline,
            stop: self.stop.clone(),
            user: self.shared.step_user.clone(),
            global_config: self.step_git_config(),
        }
    }

    /// For git as the step user: a global config trusting every repository, written once per agent.
    fn step_git_config(&self) -> Option<PathBuf> {
        self.shared.step_user.as_ref()?;
        let p = self.shared.cfg.workspace_dir.join(".raibid-step-gitconfig");
        if !p.exists() {
            let _ = std::fs::write(&p, "[safe]\n\tdirectory = *\n");
        }
        Some(p)
    }
}

/// Where a job works once its source is there: its private directory (removed when the job ends;
/// nothing in it is the steps') and the cache slot whose stable checkout holds the source.
pub(crate) struct Workspace {
    pub(crate) dir: PathBuf,
    pub(crate) cache: JobCache,
}

impl Workspace {
    /// The checkout (the slot's stable checkout: the steps' working directory, the build context's root).
    pub(crate) fn checkout(&self) -> PathBuf {
        self.cache.slot.src()
    }
}
