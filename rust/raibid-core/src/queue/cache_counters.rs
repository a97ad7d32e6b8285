//! The node-wide cache counters (`raibid:cache:counters`): each job's figures added once, and rendered
//! for `/metrics`. The queue's side of `crate::cache_stats`, which stays plain data.

use crate::cache_stats::CacheStats;
use crate::contract::keys;
use redis::aio::ConnectionManager;
use std::fmt::Write as _;

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
