//! The mirror mapping: which Gitea repository is a pull mirror of which GitHub repository, read from
//! Gitea itself (`GET /api/v1/repos/search?mode=mirror`, the repositories' `mirror` and `original_url`),
//! cached for `RAIBID_MIRROR_CACHE_SECS` and read again on a miss (at most once per
//! [`MISS_REFRESH_FLOOR`], so a stream of pushes for repositories that are not mirrored cannot flood
//! Gitea). `RAIBID_MIRRORS` stays as an override: its entries win over Gitea's.
//!
//! Used both ways: a GitHub push webhook asks Gitea to mirror-sync the mirror of its repository (or
//! answers 202 `not_mirrored`, no job), and the GitHub status reporter finds the GitHub repository of a
//! job's Gitea repository. `GET /api/v1/mirrors` shows the mapping the dispatcher uses.

use crate::forge::Gitea;
use crate::guard::ApiError;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raibid_core::webhook::Push;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Shortest time between two reads of Gitea caused by misses.
pub const MISS_REFRESH_FLOOR: Duration = Duration::from_secs(2);
/// Page size of Gitea's repository search (Gitea's default `MAX_RESPONSE_ITEMS` is 50).
const PAGE: usize = 50;
/// Most pages read (5,000 repositories).
const MAX_PAGES: usize = 100;

/// One mirror.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Mirror {
    /// GitHub repository, `owner/name` as GitHub spells it.
    pub github: String,
    /// Gitea repository, `owner/name`.
    pub gitea: String,
    /// `gitea` (read from Gitea) or `override` (`RAIBID_MIRRORS`).
    pub source: &'static str,
    /// The mirror's `original_url` in Gitea (none for an override).
    pub original_url: Option<String>,
}

#[derive(Default)]
struct Cache {
    read: Option<Instant>,
    read_utc: Option<chrono::DateTime<chrono::Utc>>,
    from_gitea: Vec<Mirror>,
    error: Option<String>,
}

/// The mapping: overrides, and what Gitea said last.
pub struct Mirrors {
    overrides: Vec<Mirror>,
    ttl: Duration,
    hosts: Vec<String>,
    cache: tokio::sync::Mutex<Cache>,
}

/// What `GET /api/v1/mirrors` answers.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Snapshot {
    /// Every mirror the dispatcher knows (overrides first, then Gitea's, by GitHub name).
    pub mirrors: Vec<Mirror>,
    /// When Gitea was last read (null: never).
    pub read_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How long a read is trusted.
    pub ttl_secs: u64,
    /// The last read's error, if it failed (the previous mapping is kept).
    pub error: Option<String>,
    /// Hosts whose repositories count as GitHub repositories.
    pub github_hosts: Vec<String>,
    /// Whether commit statuses are posted to GitHub (a token is configured).
    pub github_statuses: bool,
}

#[derive(Deserialize)]
struct SearchResults {
    #[serde(default)]
    data: Vec<Repo>,
}

#[derive(Deserialize)]
struct Repo {
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    mirror: bool,
    #[serde(default)]
    original_url: Option<String>,
}

impl Mirrors {
    /// A mapping with `overrides` (lower-case GitHub name → Gitea name, from `RAIBID_MIRRORS`),
    /// trusting a read of Gitea for `ttl`, counting repositories of `hosts` as GitHub's.
    pub fn new(overrides: &HashMap<String, String>, ttl: Duration, hosts: Vec<String>) -> Mirrors {
        let mut o: Vec<Mirror> = overrides
            .iter()
            .map(|(gh, gt)| Mirror {
                github: gh.clone(),
                gitea: gt.clone(),
                source: "override",
                original_url: None,
            })
            .collect();
        o.sort_by(|a, b| a.github.cmp(&b.github));
        Mirrors {
            overrides: o,
            ttl,
            hosts,
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// Read every mirror from Gitea.
    async fn read(&self, gitea: &Gitea) -> anyhow::Result<Vec<Mirror>> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let (status, body) = gitea
                .get_json(&format!(
                    "/repos/search?mode=mirror&limit={PAGE}&page={page}"
                ))
                .await?;
            if status != 200 {
                anyhow::bail!("Gitea answered {status} to the repository search");
            }
            let r: SearchResults = serde_json::from_value(body).map_err(|e| {
                anyhow::anyhow!("Gitea's repository search is not SearchResults: {e}")
            })?;
            let n = r.data.len();
            for repo in r.data {
                if !repo.mirror {
                    continue;
                }
                let Some(url) = repo.original_url.filter(|u| !u.is_empty()) else {
                    continue;
                };
                if let Some(gh) = crate::github::repo_of_url(&url, &self.hosts) {
                    if crate::forge::split_repo(&repo.full_name).is_some() {
                        out.push(Mirror {
                            github: gh,
                            gitea: repo.full_name,
                            source: "gitea",
                            original_url: Some(url),
                        });
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
        out.sort_by(|a, b| {
            a.github
                .to_ascii_lowercase()
                .cmp(&b.github.to_ascii_lowercase())
        });
        Ok(out)
    }

    async fn refresh(&self, cache: &mut Cache, gitea: &Gitea) {
        match self.read(gitea).await {
            Ok(m) => {
                if m != cache.from_gitea {
                    tracing::info!(mirrors = m.len(), "mirror mapping read from Gitea");
                }
                cache.from_gitea = m;
                cache.error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mirror mapping from Gitea; keeping the previous one");
                cache.error = Some(e.to_string());
            }
        }
        cache.read = Some(Instant::now());
        cache.read_utc = Some(chrono::Utc::now());
    }

    /// Find a mirror: overrides, then the cached read of Gitea, then (on a miss or a stale cache) a
    /// new read. `Err` when Gitea could not be read and nothing known answers.
    async fn find(
        &self,
        gitea: Option<&Gitea>,
        pick: impl Fn(&Mirror) -> bool,
    ) -> Result<Option<Mirror>, String> {
        if let Some(m) = self.overrides.iter().find(|m| pick(m)) {
            return Ok(Some(m.clone()));
        }
        let Some(gitea) = gitea else { return Ok(None) };
        let mut cache = self.cache.lock().await;
        let age = cache.read.map(|t| t.elapsed());
        let fresh = age.is_some_and(|a| a < self.ttl);
        if fresh {
            if let Some(m) = cache.from_gitea.iter().find(|m| pick(m)) {
                return Ok(Some(m.clone()));
            }
            // A miss just after a read: wait out the floor, then read again (unless another miss did
            // meanwhile), so a mirror created a moment ago is found and Gitea is read at most every 2 s.
            if let Some(a) = age.filter(|a| *a < MISS_REFRESH_FLOOR) {
                let seen = cache.read;
                drop(cache);
                tokio::time::sleep(MISS_REFRESH_FLOOR - a).await;
                cache = self.cache.lock().await;
                if cache.read != seen {
                    let found = cache.from_gitea.iter().find(|m| pick(m)).cloned();
                    return match (&found, &cache.error) {
                        (None, Some(e)) => Err(e.clone()),
                        _ => Ok(found),
                    };
                }
            }
        }
        self.refresh(&mut cache, gitea).await;
        let found = cache.from_gitea.iter().find(|m| pick(m)).cloned();
        match (&found, &cache.error) {
            (None, Some(e)) => Err(e.clone()),
            _ => Ok(found),
        }
    }

    /// The Gitea mirror of a GitHub repository.
    pub async fn gitea_for_github(
        &self,
        gitea: Option<&Gitea>,
        github: &str,
    ) -> Result<Option<String>, String> {
        Ok(self
            .find(gitea, |m| m.github.eq_ignore_ascii_case(github))
            .await?
            .map(|m| m.gitea))
    }

    /// The GitHub repository a Gitea repository mirrors.
    pub async fn github_for_gitea(
        &self,
        gitea: Option<&Gitea>,
        gitea_repo: &str,
    ) -> Result<Option<String>, String> {
        Ok(self
            .find(gitea, |m| m.gitea.eq_ignore_ascii_case(gitea_repo))
            .await?
            .map(|m| m.github))
    }

    /// The whole mapping (read from Gitea first when stale, or when `refresh`).
    pub async fn snapshot(&self, gitea: Option<&Gitea>, refresh: bool, statuses: bool) -> Snapshot {
        let mut cache = self.cache.lock().await;
        if let Some(g) = gitea {
            if refresh || cache.read.is_none_or(|t| t.elapsed() >= self.ttl) {
                self.refresh(&mut cache, g).await;
            }
        }
        let mut mirrors = self.overrides.clone();
        for m in &cache.from_gitea {
            if !mirrors
                .iter()
                .any(|o| o.github.eq_ignore_ascii_case(&m.github))
            {
                mirrors.push(m.clone());
            }
        }
        Snapshot {
            mirrors,
            read_at: cache.read_utc,
            ttl_secs: self.ttl.as_secs(),
            error: cache.error.clone(),
            github_hosts: self.hosts.clone(),
            github_statuses: statuses,
        }
    }
}

/// `GET /api/v1/mirrors[?refresh=true]`: the mapping the dispatcher uses.
#[derive(Deserialize, schemars::JsonSchema)]
pub struct MirrorsQuery {
    /// `true`: read Gitea now instead of trusting the cached mapping.
    #[serde(default)]
    refresh: bool,
}

/// The handler of `GET /api/v1/mirrors`.
pub async fn list(
    State(state): State<AppState>,
    q: Result<Query<MirrorsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", e.body_text()))?;
    let snap = state
        .mirrors
        .snapshot(
            state.settings.gitea.as_ref(),
            q.refresh,
            state.settings.intake.github.is_some(),
        )
        .await;
    Ok(Json(snap).into_response())
}

/// A GitHub push: mirror-sync its Gitea mirror (Gitea's own push webhook then makes the job), or
/// answer 202 `not_mirrored` (no job: a GitHub repository builds through its Gitea mirror only).
pub async fn github_push(state: &AppState, push: &Push) -> Result<Response, ApiError> {
    let found = state
        .mirrors
        .gitea_for_github(state.settings.gitea.as_ref(), &push.repo_full_name)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, github = %push.repo_full_name, "mirror lookup failed");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "mirror_lookup_failed",
                "cannot read the mirror mapping from Gitea; redeliver the webhook",
            )
        })?;
    let Some(gitea_repo) = found else {
        state
            .counters
            .webhooks_ignored
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(github = %push.repo_full_name, "GitHub push for a repository Gitea does not mirror; no job");
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "not_mirrored",
                "github_repo": push.repo_full_name,
                "message": format!(
                    "{} is not mirrored in Gitea, so no job was created: GitHub repositories build through their Gitea pull mirror (nu scripts/mirror.nu repo {})",
                    push.repo_full_name, push.repo_full_name
                ),
            })),
        )
            .into_response());
    };
    let Some(gitea) = state.settings.gitea.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "gitea_not_configured",
            "repository is mirrored but no Gitea URL is configured",
        ));
    };
    match gitea.mirror_sync(&gitea_repo).await {
        Ok(()) => {
            state.counters.mirror_syncs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(github = %push.repo_full_name, gitea = %gitea_repo, "mirror-sync requested");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"status": "mirror_sync", "gitea_repo": gitea_repo})),
            )
                .into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "mirror-sync failed");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "mirror_sync_failed",
                "Gitea did not accept the mirror-sync; redeliver the webhook",
            ))
        }
    }
}
