//! Commit statuses on GitHub: `POST /repos/{owner}/{repo}/statuses/{sha}` for jobs whose Gitea repository
//! is a pull mirror of a GitHub repository (the mapping: [`crate::mirrors`]). Posted by the same outbox
//! as Gitea's statuses (the reporter in [`crate::forge`], in its own consumer group), with a
//! fine-grained token that holds only "Commit statuses: write" (`RAIBID_GITHUB_TOKEN` / `_FILE`).
//!
//! How GitHub's answers are taken (docs.github.com, "Rate limits for the REST API" and
//! "Best practices for using the REST API"):
//! - 2xx: posted.
//! - 429, or 403 with `retry-after` or `x-ratelimit-remaining: 0` or a rate-limit message (the primary
//!   and secondary rate limits): retried, not before `retry-after` seconds or `x-ratelimit-reset`
//!   (secondary limit without either: at least one minute).
//! - 5xx, 408, a network error: retried with the reporter's backoff (or `retry-after` when given).
//! - 422 and 404: GitHub does not have the commit (a force-push race) or the repository is not visible
//!   to the token: logged once and dropped.
//! - Any other 4xx (401, 403 for a missing permission, …): refused for good (logged, counted).

use reqwest::header::HeaderMap;
use std::time::Duration;

/// `api.github.com`; GitHub Enterprise Server: `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version the dispatcher speaks (`X-GitHub-Api-Version`).
pub const API_VERSION: &str = "2022-11-28";
/// Longest status description GitHub keeps.
pub const DESCRIPTION_MAX: usize = 140;
/// Longest wait a rate-limit answer can impose before the next try.
pub const MAX_HINT: Duration = Duration::from_secs(3600);
/// Wait after a secondary rate limit that names no time (GitHub: "wait at least one minute").
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// A GitHub REST client for commit statuses.
#[derive(Clone)]
pub struct GitHub {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why a status was not posted.
#[derive(Debug, PartialEq, Eq)]
pub enum GhError {
    /// Worth retrying, not before `retry_after` when GitHub said so.
    Transient {
        /// What happened.
        message: String,
        /// GitHub's `retry-after` / `x-ratelimit-reset`.
        retry_after: Option<Duration>,
    },
    /// GitHub does not have the commit (or the repository): drop it.
    UnknownCommit {
        /// What happened.
        message: String,
    },
    /// Refused for good (token, permissions, request).
    Refused {
        /// What happened.
        message: String,
    },
}

impl std::fmt::Display for GhError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GhError::Transient { message, .. }
            | GhError::UnknownCommit { message }
            | GhError::Refused { message } => f.write_str(message),
        }
    }
}

/// The hosts whose repositories the API at `api_url` serves: `github.com` for `api.github.com`, the
/// host itself for GitHub Enterprise Server (and for a fake in tests).
pub fn web_hosts(api_url: &str) -> Vec<String> {
    let mut hosts = vec!["github.com".to_string()];
    if let Some(h) = url::Url::parse(api_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    {
        let h = if h == "api.github.com" {
            "github.com".to_string()
        } else {
            h
        };
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    hosts
}

/// `owner/name` of a GitHub clone URL (`https://github.com/Octo/Hello.git`, `git@github.com:o/r.git`,
/// `ssh://git@github.com/o/r`) when its host is one of `hosts`; as GitHub spells it.
pub fn repo_of_url(raw: &str, hosts: &[String]) -> Option<String> {
    let raw = raw.trim();
    let (host, path) = match url::Url::parse(raw) {
        Ok(u) if u.host_str().is_some() => (
            u.host_str().unwrap_or_default().to_ascii_lowercase(),
            u.path().to_string(),
        ),
        _ => {
            // scp-like `git@github.com:owner/name.git`.
            let (user_host, path) = raw.split_once(':')?;
            let host = user_host.rsplit('@').next()?.to_ascii_lowercase();
            (host, path.to_string())
        }
    };
    if !hosts.contains(&host) {
        return None;
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let (o, r) = path.split_once('/')?;
    let full = format!("{o}/{r}");
    crate::forge::split_repo(&full).is_some().then_some(full)
}

/// Check `RAIBID_GITHUB_API_URL`: an http(s) URL without credentials (the token goes in a header).
pub fn check_api_url(raw: &str) -> Result<(), String> {
    let u = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!("scheme `{}` is not https", u.scheme()));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "credentials in the URL are not accepted (the token is RAIBID_GITHUB_TOKEN)".into(),
        );
    }
    if u.host_str().is_none() {
        return Err("no host".into());
    }
    Ok(())
}

/// A status description: one line, at most [`DESCRIPTION_MAX`] characters (cut with `…`).
pub fn fit_description(text: &str) -> String {
    let one: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .collect();
    if one.chars().count() <= DESCRIPTION_MAX {
        return one;
    }
    let mut cut: String = one.chars().take(DESCRIPTION_MAX - 1).collect();
    cut.push('…');
    cut
}

/// The wait GitHub asks for: `retry-after` (seconds), else `x-ratelimit-reset` (Unix seconds) when
/// `x-ratelimit-remaining` is 0. Bounded by [`MAX_HINT`].
pub fn retry_after(headers: &HeaderMap, now_unix: i64) -> Option<Duration> {
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .map(str::to_string)
    };
    if let Some(secs) = get("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs).min(MAX_HINT));
    }
    if get("x-ratelimit-remaining").as_deref() == Some("0") {
        if let Some(reset) = get("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok()) {
            return Some(Duration::from_secs((reset - now_unix).max(1) as u64).min(MAX_HINT));
        }
    }
    None
}

/// Sort an answer into posted / retry / unknown commit / refused.
pub fn classify(
    status: u16,
    headers: &HeaderMap,
    body: &str,
    now_unix: i64,
    what: &str,
) -> Result<(), GhError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let hint = retry_after(headers, now_unix);
    let message = format!("GitHub answered {status} to {what}");
    let rate_limited = body.to_ascii_lowercase().contains("rate limit");
    match status {
        429 => Err(GhError::Transient {
            message,
            retry_after: hint.or(Some(SECONDARY_LIMIT_WAIT)),
        }),
        403 if hint.is_some() || rate_limited => Err(GhError::Transient {
            message: format!("{message} (rate limit)"),
            retry_after: hint.or(Some(SECONDARY_LIMIT_WAIT)),
        }),
        404 | 422 => Err(GhError::UnknownCommit {
            message: format!("{message}: GitHub does not have this commit (or the token cannot see the repository)"),
        }),
        408 | 500..=599 => Err(GhError::Transient {
            message,
            retry_after: hint,
        }),
        _ => Err(GhError::Refused {
            message: format!(
                "{message} (the token needs \"Commit statuses: write\" on the repository)"
            ),
        }),
    }
}

impl GitHub {
    /// A client for `base` (e.g. `https://api.github.com`) with `token`.
    pub fn new(base: &str, token: String) -> anyhow::Result<GitHub> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("raibid-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(GitHub {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Post one commit status.
    pub async fn post_status(
        &self,
        full: &str,
        sha: &str,
        state: &str,
        description: &str,
        target_url: &str,
        context: &str,
    ) -> Result<(), GhError> {
        let (o, r) = crate::forge::split_repo(full).ok_or_else(|| GhError::Refused {
            message: format!("bad GitHub repository name {full}"),
        })?;
        if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(GhError::Refused {
                message: "bad sha".into(),
            });
        }
        let body = serde_json::json!({
            "state": state,
            "target_url": target_url,
            "description": fit_description(description),
            "context": context,
        });
        let resp = self
            .http
            .post(format!("{}/repos/{o}/{r}/statuses/{sha}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .json(&body)
            .send()
            .await
            .map_err(|e| GhError::Transient {
                message: format!("GitHub unreachable: {}", e.without_url()),
                retry_after: None,
            })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        classify(
            status,
            &headers,
            &text,
            chrono::Utc::now().timestamp(),
            &format!("a commit status for {full}@{sha}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn answers_are_sorted_as_github_documents_them() {
        let none = HeaderMap::new();
        assert!(classify(201, &none, "", 0, "x").is_ok());
        assert_eq!(
            classify(429, &headers(&[("retry-after", "7")]), "", 0, "x"),
            Err(GhError::Transient {
                message: "GitHub answered 429 to x".into(),
                retry_after: Some(Duration::from_secs(7))
            })
        );
        // Primary limit: remaining 0, reset in 30 s.
        match classify(
            403,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1030"),
            ]),
            "",
            1000,
            "x",
        ) {
            Err(GhError::Transient { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("{other:?}"),
        }
        // Secondary limit named only in the body: at least a minute.
        match classify(
            403,
            &none,
            r#"{"message":"You have exceeded a secondary rate limit"}"#,
            0,
            "x",
        ) {
            Err(GhError::Transient { retry_after, .. }) => {
                assert_eq!(retry_after, Some(SECONDARY_LIMIT_WAIT))
            }
            other => panic!("{other:?}"),
        }
        // A plain 403: the token lacks the permission.
        assert!(matches!(
            classify(
                403,
                &none,
                r#"{"message":"Resource not accessible by personal access token"}"#,
                0,
                "x"
            ),
            Err(GhError::Refused { .. })
        ));
        for s in [404, 422] {
            assert!(matches!(
                classify(s, &none, "", 0, "x"),
                Err(GhError::UnknownCommit { .. })
            ));
        }
        assert!(matches!(
            classify(503, &none, "", 0, "x"),
            Err(GhError::Transient {
                retry_after: None,
                ..
            })
        ));
        assert!(matches!(
            classify(401, &none, "", 0, "x"),
            Err(GhError::Refused { .. })
        ));
        // An absurd wait is bounded.
        assert_eq!(
            retry_after(&headers(&[("retry-after", "999999")]), 0),
            Some(MAX_HINT)
        );
    }

    #[test]
    fn clone_urls_name_the_github_repository() {
        let hosts = web_hosts(DEFAULT_API_URL);
        assert_eq!(hosts, ["github.com"]);
        for u in [
            "https://github.com/Octo/Hello.git",
            "https://github.com/Octo/Hello",
            "https://github.com/Octo/Hello/",
            "git@github.com:Octo/Hello.git",
            "ssh://git@github.com/Octo/Hello.git",
        ] {
            assert_eq!(repo_of_url(u, &hosts).as_deref(), Some("Octo/Hello"), "{u}");
        }
        assert_eq!(repo_of_url("https://gitlab.com/o/r.git", &hosts), None);
        assert_eq!(repo_of_url("https://github.com/o", &hosts), None);
        let ghes = web_hosts("https://ghe.example.com/api/v3");
        assert_eq!(
            repo_of_url("https://ghe.example.com/team/app.git", &ghes).as_deref(),
            Some("team/app")
        );
    }

    #[test]
    fn descriptions_are_one_line_of_at_most_140_characters() {
        assert_eq!(fit_description("a\nb  c"), "a b c");
        let long = "é".repeat(300);
        let d = fit_description(&long);
        assert_eq!(d.chars().count(), DESCRIPTION_MAX);
        assert!(d.ends_with('…'));
    }

    #[test]
    fn the_api_url_is_checked() {
        assert!(check_api_url(DEFAULT_API_URL).is_ok());
        assert!(check_api_url("https://ghe.example.com/api/v3").is_ok());
        assert!(check_api_url("ftp://x/").is_err());
        assert!(check_api_url("https://user:pw@api.github.com")
            .unwrap_err()
            .contains("credentials"));
        assert!(check_api_url("api.github.com").is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let g = GitHub::new(DEFAULT_API_URL, "ghp_secret_value".into()).unwrap();
        assert!(!format!("{g:?}").contains("ghp_secret_value"));
    }
}
