//! The node's caches for a job: a bare git mirror per repository (`mirror`), cargo target slots with
//! stable checkouts (`slots`), the cache key (`key`) and cross-process locks (`lock`). Compilation
//! units are counted by the log flusher's one parse of cargo's JSON messages
//! (`raibid_core::cargo_messages`), and added to the job's figures once its output is complete
//! ([`record_job`]).
//!
//! Layout under the cache directory (a hostPath on the node, shared by every agent pod there):
//!
//! ```text
//! cargo/                          CARGO_HOME (registry, git deps)
//! git/<repo-id>.git, .lock        bare mirrors, one lock each
//! targets/<repo-id>/.select.lock  slot choice
//! targets/<repo-id>/slot-<n>.lock held while a job uses the slot
//! targets/<repo-id>/slot-<n>/     src/ (the checkout), target/<key>/ (CARGO_TARGET_DIR), meta.json
//! ```

pub(crate) mod gitdir;
pub(crate) mod key;
pub(crate) mod lock;
pub(crate) mod mirror;
pub(crate) mod pack;
pub(crate) mod slots;
pub(crate) mod upload_pack;
pub(crate) mod worktree;

use raibid_core::cache_stats::CacheStats;
use raibid_core::cargo_messages::CargoUnits;
use std::path::{Path, PathBuf};

/// A log sink for cache operations (lines go to the job's log of the current step).
pub(crate) type Sink<'a> = &'a (dyn Fn(String) + Sync);

/// Why restoring failed.
#[derive(Debug)]
pub(crate) enum CloneError {
    /// The clone's deadline passed.
    TimedOut,
    /// The job was stopped (cancel, lease lost, shutdown).
    Stopped,
    /// Anything else, with a message for the job.
    Failed(String),
}

impl From<lock::LockError> for CloneError {
    fn from(e: lock::LockError) -> Self {
        match e {
            lock::LockError::TimedOut => CloneError::TimedOut,
            lock::LockError::Stopped => CloneError::Stopped,
            lock::LockError::Io(e) => CloneError::Failed(format!("cache lock: {e}")),
        }
    }
}

/// Hand a directory the agent created to the step user (when steps run as one), so git (which runs as
/// that user in the caches) and the steps can write it.
pub(crate) fn own(p: &std::path::Path, user: Option<&crate::isolation::StepUser>) {
    if let Some(u) = user {
        let _ = std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid));
    }
}

/// `create_dir_all`, each created level handed to the step user.
pub(crate) fn mkdirs(
    p: &std::path::Path,
    user: Option<&crate::isolation::StepUser>,
) -> std::io::Result<()> {
    let missing: Vec<&std::path::Path> = p.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(p)?;
    for a in missing.iter().rev() {
        own(a, user);
    }
    Ok(())
}

/// The agent's view of the node cache.
pub(crate) struct Cache {
    pub(crate) root: PathBuf,
    pub(crate) max_bytes: u64,
    pub(crate) default_branches: Vec<String>,
    pub(crate) memo: key::ToolchainMemo,
}

impl Cache {
    pub(crate) fn new(root: PathBuf, max_bytes: u64, default_branches: &str) -> Cache {
        Cache {
            root,
            max_bytes,
            default_branches: default_branches
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            memo: key::ToolchainMemo::default(),
        }
    }
}

/// Bytes on disk under `p` (allocated blocks; reflinked or hard-linked data counts in full).
pub(crate) fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Once the job's output is complete: its unit counts (from the log flusher's parse of cargo's
/// messages) into its cache figures, and those figures into the node-wide counters.
pub(crate) async fn record_job(
    queue: &raibid_core::queue::Queue,
    stats: Option<&mut CacheStats>,
    units: Option<CargoUnits>,
) {
    let Some(stats) = stats else { return };
    if let Some(u) = units {
        stats.units_fresh = Some(u64::from(u.fresh));
        stats.units_total = Some(u64::from(u.total));
    }
    let mut con = queue.redis();
    if let Err(e) = raibid_core::queue::cache_counters::record(&mut con, stats).await {
        tracing::warn!(error = %e, "could not record cache counters");
    }
}
