//! Scheduled builds (issue 22 §3): a schedule names a repository, a ref, a cron expression in an IANA
//! time zone and optionally a pipeline variant (environment overrides such as `CARGO_UPDATE=1`). The
//! record and its API view live here, free of I/O and of the cron parser: the dispatcher parses the
//! expression (croner, chrono-tz) and fires the schedules; `raibid-top` only reads the view.

use crate::job::Status;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most variables in one pipeline variant.
pub const MAX_VARIANT_VARS: usize = 32;
/// Longest value of a variant variable, in bytes.
pub const MAX_VARIANT_VALUE: usize = 4096;

/// Variables the agent sets itself or that change where a step's toolchain, caches, loader, shell or
/// network come from: a variant may not set them (the repository's own `.raibid.yaml` is the place
/// for build settings; a schedule only passes a switch such as `CARGO_UPDATE=1`).
const DENIED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "ENV",
    "BASH_ENV",
    "IFS",
    "PS4",
    "PROMPT_COMMAND",
    "CI",
    "CARGO",
    "CARGO_HOME",
    "CARGO_TARGET_DIR",
    "CARGO_TERM_COLOR",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "CURL_CA_BUNDLE",
];

/// Prefixes of names a variant may not set (the agent's own `RAIBID_*`, the loader's, git's, TLS and
/// ssh settings, the GPU selection, cargo's build/registry/network/http configuration).
const DENIED_PREFIXES: &[&str] = &[
    "RAIBID_",
    "LD_",
    "DYLD_",
    "GIT_",
    "SSH_",
    "SSL_",
    "BASH_FUNC",
    "NVIDIA_",
    "CUDA_",
    "CARGO_BUILD_",
    "CARGO_REGISTR",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_SOURCE_",
    "CARGO_CREDENTIAL",
    "CARGO_TARGET_",
];

/// May a pipeline variant set `key`? An upper-case name (`[A-Z_][A-Z0-9_]*`, at most 64 characters)
/// that is neither one of the agent's nor a toolchain, cache, loader, shell or network setting. The
/// dispatcher refuses other names at create; the agent drops them again before a step runs.
pub fn variant_key_allowed(key: &str) -> bool {
    let mut b = key.bytes();
    let shape = key.len() <= 64
        && matches!(b.next(), Some(c) if c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_');
    shape && !DENIED.contains(&key) && !DENIED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Check a pipeline variant; the error names the variable.
pub fn check_variant(env: &BTreeMap<String, String>) -> Result<(), String> {
    if env.len() > MAX_VARIANT_VARS {
        return Err(format!(
            "env: {} variables, at most {MAX_VARIANT_VARS}",
            env.len()
        ));
    }
    for (k, v) in env {
        if !variant_key_allowed(k) {
            return Err(format!(
                "env.{k}: not a variable a pipeline variant may set (upper-case `[A-Z_][A-Z0-9_]*`, not PATH, HOME, CARGO_HOME, CARGO_TARGET_DIR, RUSTC_WRAPPER, proxies, nor RAIBID_*, LD_*, GIT_*, CARGO_BUILD_*, CARGO_REGISTR*, …)"
            ));
        }
        if v.len() > MAX_VARIANT_VALUE {
            return Err(format!(
                "env.{k}: {} bytes, at most {MAX_VARIANT_VALUE}",
                v.len()
            ));
        }
        if v.contains('\0') {
            return Err(format!("env.{k}: contains a NUL byte"));
        }
    }
    Ok(())
}

/// A schedule id: `sch_` and a lower-case ULID.
pub fn new_schedule_id() -> String {
    format!("sch_{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

/// Is `id` a schedule id (`sch_` + 26 lower-case Crockford base32 characters)?
pub fn is_valid_schedule_id(id: &str) -> bool {
    id.strip_prefix("sch_").is_some_and(|u| {
        u.len() == 26
            && u.bytes()
                .all(|b| b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"ilou".contains(&b)))
    })
}

/// A schedule as stored in `raibid:schedule:{id}` (field `record`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Schedule {
    /// Schedule id (`sch_…`).
    pub id: String,
    /// Clone URL of the repository, as at job submit.
    pub repo_url: String,
    /// Full ref to build, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Cron expression: five fields (minute hour day-of-month month day-of-week), or six with
    /// seconds first; `@daily`, `@hourly`, … too.
    pub cron: String,
    /// IANA time zone the expression is read in (`UTC`, `Europe/Berlin`).
    pub timezone: String,
    /// Pipeline variant: variables every step of the scheduled jobs sees (e.g. `CARGO_UPDATE=1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Skip a due time when the ref's commit is the one this schedule last built successfully within
    /// one period of the expression (the job is not made; `last_skipped` says so).
    #[serde(default)]
    pub skip_unchanged: bool,
    /// When it was created.
    pub created: DateTime<Utc>,
}

/// A schedule as the API shows it: the record, whether it is paused, when it runs next and what
/// came of its last run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleView {
    /// The schedule.
    #[serde(flatten)]
    pub schedule: Schedule,
    /// Paused: no due time fires (run now still works).
    pub paused: bool,
    /// The next due time (none while paused).
    pub next_run: Option<DateTime<Utc>>,
    /// The last due time that fired (or was skipped).
    pub last_due: Option<DateTime<Utc>>,
    /// The last job this schedule made (due time or run now).
    pub last_job: Option<String>,
    /// That job's status, while its record exists.
    pub last_status: Option<Status>,
    /// The last due time skipped because its commit was already built (`skip_unchanged`).
    pub last_skipped: Option<DateTime<Utc>>,
}

/// A page of schedules (`GET /api/v1/schedules`, MCP `list_schedules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScheduleList {
    /// Schedules, oldest first.
    pub schedules: Vec<ScheduleView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names() {
        for ok in ["CARGO_UPDATE", "NIGHTLY", "_X", "RUSTFLAGS", "FEATURES_1"] {
            assert!(variant_key_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "cargo_update",
            "1X",
            "A-B",
            "PATH",
            "LD_PRELOAD",
            "RAIBID_JOB_ID",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_RUSTC_WRAPPER",
            "CARGO_REGISTRIES_X_INDEX",
            "GIT_SSH_COMMAND",
            "HTTPS_PROXY",
            "NVIDIA_VISIBLE_DEVICES",
            &"A".repeat(65),
        ] {
            assert!(!variant_key_allowed(bad), "{bad}");
        }
        let mut env = BTreeMap::new();
        env.insert("CARGO_UPDATE".to_string(), "1".to_string());
        assert!(check_variant(&env).is_ok());
        env.insert("LD_PRELOAD".to_string(), "/x.so".to_string());
        assert!(check_variant(&env)
            .unwrap_err()
            .starts_with("env.LD_PRELOAD:"));
    }

    #[test]
    fn ids() {
        let id = new_schedule_id();
        assert!(is_valid_schedule_id(&id), "{id}");
        assert!(!is_valid_schedule_id("sch_../../x"));
        assert!(!is_valid_schedule_id(&id.to_ascii_uppercase()));
    }
}
