//! What a job's caches did (git mirror, cargo target slot), recorded in the job record and summed in
//! Redis for `/metrics`.
//!
//! The agent fills a [`CacheStats`] while a job runs and adds it to the node-wide counters in
//! `contract::keys::CACHE_COUNTERS` once the job ends (`queue::cache_counters::record`); the dispatcher's
//! `/metrics` handler renders those counters with one `HGETALL` (`queue::cache_counters::render_metrics`).

use serde::{Deserialize, Serialize};

/// Per-job cache figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CacheStats {
    /// Cache key of the cargo target directory: a hash of repository identity, toolchain (`rustc -vV`),
    /// target triple and the artifact-relevant environment (`RUSTFLAGS`, ...).
    #[serde(default)]
    pub key: Option<String>,
    /// Slot (persistent checkout + target directories) the job ran in, e.g. `3f2a…/slot-1`.
    #[serde(default)]
    pub slot: Option<String>,
    /// Where the slot's target directory came from: `warm` (this slot had the key), `seeded:<slot>`
    /// (copied from another slot), `cold` (nothing to start from).
    #[serde(default)]
    pub restore: Option<String>,
    /// The previous job in this slot did not finish (killed): the checkout was reset and cargo
    /// rebuilds whatever that job had not finished.
    #[serde(default)]
    pub recovered: bool,
    /// Distinct compilation units cargo reported as reused (`compiler-artifact` with `fresh: true`) every
    /// time it reported them; the same count as the job record's `cargo` (`raibid_core::cargo_messages`).
    #[serde(default)]
    pub units_fresh: Option<u64>,
    /// Distinct compilation units cargo reported (`compiler-artifact` messages; a unit reported by
    /// several steps counts once).
    #[serde(default)]
    pub units_total: Option<u64>,
    /// Milliseconds spent waiting for locks (git mirror, slot selection).
    #[serde(default)]
    pub lock_ms: u64,
    /// Milliseconds spent restoring: mirror fetch, checkout into the slot, seeding a target directory.
    #[serde(default)]
    pub restore_ms: u64,
    /// Size of the slot on disk after the job, in bytes.
    #[serde(default)]
    pub slot_bytes: Option<u64>,
    /// The git mirror already had the wanted commit (no fetch).
    #[serde(default)]
    pub mirror_hit: bool,
    /// Objects the mirror fetched for this job.
    #[serde(default)]
    pub fetched_objects: u64,
    /// Pack bytes the mirror fetched for this job.
    #[serde(default)]
    pub fetched_bytes: u64,
}
