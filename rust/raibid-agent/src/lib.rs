//! raibid-agent: claims jobs from `raibid:jobs` (consumer group `raibid-agents`), clones the commit into
//! a fresh workspace, runs the pipeline step by step in its own process group, streams every output
//! line into the job's log, writes the final status (fenced by its lease) and acknowledges the entry.
//!
//! `config` (options), `worker` (claim loop, cancel listener), `runner` (one claimed job: log flusher,
//! heartbeat, shutdown grace, final write), `executor` (clone, config, steps), `process` (a step's
//! process group and its output), `masking` (secrets out of log lines), `git` (URL policy, git argv), `isolation` (what a step
//! can reach: step user, private directories, leftover processes), `secret_scopes` (which repository
//! gets which secret), `cache` (git mirrors,
//! cargo target slots, cache keys).

pub(crate) mod cache;
pub mod cargo_output;
pub mod config;
pub mod executor;
pub(crate) mod fan_out;
pub mod git;
pub mod gpu;
pub(crate) mod handover;
pub mod image;
pub mod isolation;
pub mod masking;
pub mod patch;
pub mod process;
pub mod runner;
pub mod sandbox;
pub mod secret_scopes;
pub mod worker;

pub use config::AgentConfig;
pub use masking::Masker;
pub use worker::run;

use raibid_core::job::Status;
use raibid_core::queue::Queue;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    None,
    Cancel,
    LeaseLost,
    /// Shutdown grace expired: kill the step and give the job back to the queue.
    Release,
}

/// How `execute` ended when no final status is to be written by this agent.
pub(crate) const LOST: Status = Status::Running;
pub(crate) const RELEASED: Status = Status::Queued;

pub(crate) struct Shared {
    pub(crate) cfg: AgentConfig,
    pub(crate) queue: Queue,
    pub(crate) policy: git::UrlPolicy,
    pub(crate) creds: git::Credentials,
    pub(crate) masker: Masker,
    pub(crate) step_user: Option<isolation::StepUser>,
    /// The sandbox steps run in (None: this agent runs no build steps, e.g. image jobs only).
    pub(crate) sandbox: Option<sandbox::Sandbox>,
    /// The GPU(s) this agent found at start (agents serving the `gpu` kind only).
    pub(crate) gpu: Option<gpu::GpuProbe>,
    pub(crate) scopes: secret_scopes::SecretScopes,
    pub(crate) running: Mutex<HashMap<String, watch::Sender<Stop>>>,
    pub(crate) jobs_done: AtomicU64,
    pub(crate) cache: cache::Cache,
}
