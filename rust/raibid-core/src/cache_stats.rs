//! What a job's caches did (git mirror, cargo target slot), recorded in the job record and summed in
//! Redis for `/metrics`.
//!
//! The agent fills a [`CacheStats`] while a job runs and adds it to the node-wide counters in
//! [`contract::keys::CACHE_COUNTERS`] once the job ends ([`record`]); the dispatcher's `/metrics`
//! handler renders those counters with one `HGETALL` ([`render_metrics`]).

use crate::contract::keys;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

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

/// Add one job's figures to the node-wide counters (`HINCRBY` on one hash; O(1)).
pub async fn record(con: &mut ConnectionManager, s: &CacheStats) -> redis::RedisResult<()> {
    let warm = u64::from(s.restore.as_deref() == Some("warm"));
    let seeded = u64::from(
        s.restore
            .as_deref()
            .is_some_and(|r| r.starts_with("seeded")),
    );
    let mut p = redis::pipe();
    for (field, v) in [
        ("jobs", 1),
        ("jobs_warm", warm),
        ("jobs_seeded", seeded),
        ("jobs_recovered", u64::from(s.recovered)),
        ("mirror_hits", u64::from(s.mirror_hit)),
        ("units_fresh", s.units_fresh.unwrap_or(0)),
        ("units_total", s.units_total.unwrap_or(0)),
        ("lock_ms", s.lock_ms),
        ("restore_ms", s.restore_ms),
        ("fetched_objects", s.fetched_objects),
        ("fetched_bytes", s.fetched_bytes),
    ] {
        p.hincr(keys::CACHE_COUNTERS, field, v).ignore();
    }
    p.query_async(con).await
}

/// Append the cache counters to a `/metrics` text (one `HGETALL`), OpenMetrics style (`# TYPE` names
/// the family, counter samples end in `_total`), before its `# EOF` line when it has one.
pub async fn render_metrics(con: &mut ConnectionManager, out: &mut String) {
    let m: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys::CACHE_COUNTERS)
        .query_async(con)
        .await
        .unwrap_or_default();
    let had_eof = out.ends_with("# EOF\n");
    if had_eof {
        out.truncate(out.len() - "# EOF\n".len());
    }
    let g = |k: &str| m.get(k).copied().unwrap_or(0);
    let family = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    };
    family(
        out,
        "raibid_cache_jobs",
        "Jobs by how their cargo target directory was restored (all agents).",
    );
    let warm = g("jobs_warm");
    let seeded = g("jobs_seeded");
    let cold = g("jobs").saturating_sub(warm + seeded);
    for (r, v) in [("warm", warm), ("seeded", seeded), ("cold", cold)] {
        let _ = writeln!(out, "raibid_cache_jobs_total{{restore=\"{r}\"}} {v}");
    }
    family(
        out,
        "raibid_cache_jobs_recovered",
        "Jobs that found their slot left by a killed job.",
    );
    let _ = writeln!(
        out,
        "raibid_cache_jobs_recovered_total {}",
        g("jobs_recovered")
    );
    family(
        out,
        "raibid_cache_units",
        "Compilation units cargo reported, by freshness (hit ratio = fresh / all).",
    );
    let fresh = g("units_fresh");
    let _ = writeln!(out, "raibid_cache_units_total{{fresh=\"true\"}} {fresh}");
    let _ = writeln!(
        out,
        "raibid_cache_units_total{{fresh=\"false\"}} {}",
        g("units_total").saturating_sub(fresh)
    );
    family(
        out,
        "raibid_cache_mirror_hits",
        "Jobs whose commit was already in the git mirror.",
    );
    let _ = writeln!(out, "raibid_cache_mirror_hits_total {}", g("mirror_hits"));
    family(
        out,
        "raibid_cache_fetched_objects",
        "Git objects fetched into mirrors.",
    );
    let _ = writeln!(
        out,
        "raibid_cache_fetched_objects_total {}",
        g("fetched_objects")
    );
    family(
        out,
        "raibid_cache_fetched_bytes",
        "Pack bytes fetched into mirrors.",
    );
    let _ = writeln!(
        out,
        "raibid_cache_fetched_bytes_total {}",
        g("fetched_bytes")
    );
    family(
        out,
        "raibid_cache_seconds",
        "Seconds spent on caches, by phase.",
    );
    for (p, k) in [("lock", "lock_ms"), ("restore", "restore_ms")] {
        let _ = writeln!(
            out,
            "raibid_cache_seconds_total{{phase=\"{p}\"}} {:.3}",
            g(k) as f64 / 1000.0
        );
    }
    if had_eof {
        out.push_str("# EOF\n");
    }
}
