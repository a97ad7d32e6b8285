//! raibid-dispatcher: receives forge webhooks and API calls, turns them into jobs on `raibid:jobs`,
//! serves job state and live logs, reports commit statuses to Gitea and exposes metrics.

pub mod api;
pub mod artifacts;
pub mod events;
pub mod forge;
pub mod github;
pub mod groups;
pub mod guard;
pub mod images;
pub mod mcp;
pub mod metrics;
pub mod mirrors;
pub mod notify;
pub mod openapi;
pub mod public;
pub mod requests;
pub mod schedules;
pub mod server;

pub use server::{reaper, serve};

use anyhow::Context;
use clap::Parser;
use raibid_core::contract::env;
use raibid_core::queue::{Queue, QueueConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// raibid-dispatcher — webhooks in, jobs out.
///
/// Verifies Gitea and GitHub push webhooks, enqueues jobs on the Redis stream raibid:jobs (consumer
/// group raibid-agents), serves the REST API under /api/v1 (bearer token), live logs as Server-Sent
/// Events, /healthz, /readyz and /metrics, and reports commit statuses to Gitea.
#[derive(Debug, Clone, Parser)]
#[command(name = "raibid-dispatcher", version, about, long_about = None)]
pub struct DispatcherConfig {
    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Redis URL (with password if any).
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,

    /// Bearer token required by every /api/v1 route.
    #[arg(long, env = env::API_TOKEN, hide_env_values = true)]
    pub api_token: Option<String>,

    /// File holding the API token (a mounted secret); used when --api-token is not set.
    #[arg(long, env = env::API_TOKEN_FILE)]
    pub api_token_file: Option<PathBuf>,

    /// Secret Gitea signs push webhooks with (X-Gitea-Signature). Unset: Gitea webhooks are refused.
    #[arg(long, env = env::GITEA_WEBHOOK_SECRET, hide_env_values = true)]
    pub gitea_webhook_secret: Option<String>,

    /// File holding the Gitea webhook secret.
    #[arg(long, env = env::GITEA_WEBHOOK_SECRET_FILE)]
    pub gitea_webhook_secret_file: Option<PathBuf>,

    /// Secret GitHub signs push webhooks with (X-Hub-Signature-256). Unset: GitHub webhooks are refused.
    #[arg(long, env = env::GITHUB_WEBHOOK_SECRET, hide_env_values = true)]
    pub github_webhook_secret: Option<String>,

    /// File holding the GitHub webhook secret.
    #[arg(long, env = env::GITHUB_WEBHOOK_SECRET_FILE)]
    pub github_webhook_secret_file: Option<PathBuf>,

    /// Gitea base URL, e.g. http://gitea-http.gitea:3000 (mirror-sync and commit statuses).
    #[arg(long, env = env::GITEA_URL)]
    pub gitea_url: Option<String>,

    /// Gitea API token (needs write access to the mirrored repositories).
    #[arg(long, env = env::GITEA_TOKEN, hide_env_values = true)]
    pub gitea_token: Option<String>,

    /// File holding the Gitea API token.
    #[arg(long, env = env::GITEA_TOKEN_FILE)]
    pub gitea_token_file: Option<PathBuf>,

    /// Override of the mirror mapping read from Gitea: `gh-owner/name=gitea-owner/name,...`. A push to a
    /// mirrored GitHub repository triggers a Gitea mirror-sync (Gitea's push webhook then makes the job);
    /// the mapping comes from Gitea (its pull mirrors' original_url), these entries win over it.
    #[arg(long, env = env::MIRRORS, default_value = "")]
    pub mirrors: String,

    /// Seconds the mirror mapping read from Gitea is trusted; a push for a repository not in it reads
    /// Gitea again at once.
    #[arg(long, env = env::MIRROR_CACHE_SECS, default_value_t = 60)]
    pub mirror_cache_secs: u64,

    /// GitHub token for commit statuses on the GitHub repositories Gitea mirrors (fine-grained, with
    /// only "Commit statuses: write"). Unset: statuses go to Gitea only.
    #[arg(long, env = env::GITHUB_TOKEN, hide_env_values = true)]
    pub github_token: Option<String>,

    /// File holding the GitHub token.
    #[arg(long, env = env::GITHUB_TOKEN_FILE)]
    pub github_token_file: Option<PathBuf>,

    /// GitHub REST API base URL (GitHub Enterprise Server: https://HOST/api/v3).
    #[arg(long, env = env::GITHUB_API_URL, default_value = github::DEFAULT_API_URL)]
    pub github_api_url: String,

    /// Public base URL of this dispatcher (links in commit statuses).
    #[arg(long, env = env::URL, default_value = "http://127.0.0.1:8080")]
    pub public_url: String,

    /// Seconds a claim stays valid without a heartbeat; the reaper requeues entries idle longer than
    /// this. Must match the agents' RAIBID_LEASE_SECS.
    #[arg(long, env = env::LEASE_SECS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_secs: u64,

    /// Claims of one job before the reaper moves it to the dead-letter stream as failed.
    #[arg(long, env = env::MAX_ATTEMPTS, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Seconds finished job records and logs are kept (then they expire; the index is pruned too).
    #[arg(long, env = env::RETENTION_SECS, default_value_t = 30 * 24 * 3600)]
    pub retention_secs: u64,

    /// Seconds a forge delivery id is remembered: a redelivery within it makes no second job.
    #[arg(long, env = env::DEDUP_TTL_SECS, default_value_t = 3 * 24 * 3600)]
    pub dedup_ttl_secs: u64,

    /// Most job records kept: past it the oldest finished ones are deleted at enqueue (0 = no bound).
    /// Bounds Redis memory by count as well as by age (see docs/queue-contract.md for the arithmetic).
    #[arg(long, env = env::MAX_JOBS, default_value_t = 100_000)]
    pub max_jobs: u64,

    /// Largest accepted request body in bytes.
    #[arg(long, env = env::BODY_LIMIT, default_value_t = 5 * 1024 * 1024)]
    pub body_limit: usize,

    /// `Host` values /mcp answers for besides loopback: the in-cluster Service name and the Ingress
    /// host, e.g. `raibid-dispatcher.raibid-system,ci.example.com` (entries may carry a port).
    #[arg(long, env = env::MCP_ALLOWED_HOSTS, default_value = "")]
    pub mcp_allowed_hosts: String,

    /// Browser origins allowed to call /mcp (`https://app.example.com`); empty: any request carrying an
    /// `Origin` header is refused (coding agents send none).
    #[arg(long, env = env::MCP_ALLOWED_ORIGINS, default_value = "")]
    pub mcp_allowed_origins: String,

    /// A read-only bearer token for /mcp: its holder may list, get, read logs and diagnostics, and
    /// validate configs, but not submit, cancel, retry or clean up. Unset: none.
    #[arg(long, env = env::MCP_READONLY_TOKEN, hide_env_values = true)]
    pub mcp_readonly_token: Option<String>,

    /// File holding the read-only /mcp token.
    #[arg(long, env = env::MCP_READONLY_TOKEN_FILE)]
    pub mcp_readonly_token_file: Option<PathBuf>,

    /// Secret notify_url deliveries are signed with (X-Raibid-Signature). Unset: notify_url is refused.
    #[arg(long, env = env::NOTIFY_SECRET, hide_env_values = true)]
    pub notify_secret: Option<String>,

    /// File holding the notification secret.
    #[arg(long, env = env::NOTIFY_SECRET_FILE)]
    pub notify_secret_file: Option<PathBuf>,

    /// Hosts a notify_url may name although they are (or resolve to) loopback or private addresses.
    #[arg(long, env = env::NOTIFY_ALLOWED_HOSTS, default_value = "")]
    pub notify_allowed_hosts: String,
    /// Seconds within which a push webhook for a (repository, ref, sha) already queued is answered as
    /// a duplicate, whatever its delivery id (a replayed signed body). 0 turns this off.
    #[arg(long, env = env::PUSH_DEDUP_SECS, default_value_t = 3600)]
    pub push_dedup_secs: u64,

    /// URL schemes jobs may be submitted with: the agents' RAIBID_ALLOWED_SCHEMES (same name, same
    /// default), so what no agent can clone is refused at submit.
    #[arg(long, env = env::ALLOWED_SCHEMES, default_value = "https,http,ssh")]
    pub allowed_schemes: String,

    /// Hosts jobs may be submitted for (empty: any host): the agents' RAIBID_ALLOWED_HOSTS.
    #[arg(long, env = env::ALLOWED_HOSTS, default_value = "")]
    pub allowed_hosts: String,

    /// The installation's registry (the image agents' RAIBID_REGISTRY): an `image.registry` naming
    /// another host is refused at submit unless listed in --registry-allowed.
    #[arg(long, env = env::REGISTRY)]
    pub registry: Option<String>,

    /// Other registries (`host[:port]`) an `image.registry` may name (the agents' RAIBID_REGISTRY_ALLOWED).
    #[arg(long, env = env::REGISTRY_ALLOWED, default_value = "")]
    pub registry_allowed: String,

    /// Namespaces no image job may push under (`raibid` always is).
    #[arg(long, env = env::REGISTRY_RESERVED_NAMESPACES, default_value = "raibid")]
    pub registry_reserved_namespaces: String,

    /// Plain HTTP to the registry's host when the dispatcher fetches and deletes artifacts (the local registry).
    #[arg(long, env = env::REGISTRY_INSECURE, default_value_t = false, action = clap::ArgAction::Set)]
    pub registry_insecure: bool,

    /// Registry user name for artifact downloads and deletions (with RAIBID_REGISTRY_PASSWORD or its file).
    #[arg(long, env = env::REGISTRY_USERNAME)]
    pub registry_username: Option<String>,

    /// File holding the registry password or token.
    #[arg(long, env = env::REGISTRY_PASSWORD_FILE)]
    pub registry_password_file: Option<PathBuf>,

    /// A containers auth file with the registry credentials (only the registry host's entry is used).
    #[arg(long, env = env::REGISTRY_AUTH_FILE)]
    pub registry_auth_file: Option<PathBuf>,

    /// Longest delay in seconds between two retries of a commit status Gitea did not take.
    #[arg(long, env = env::STATUS_RETRY_MAX_SECS, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub status_retry_max_secs: u64,

    /// Milliseconds between two looks of the scheduler for due schedules (every replica runs one;
    /// each due time fires once whatever their number). 0: no scheduler in this replica.
    #[arg(long, env = env::SCHEDULE_TICK_MS, default_value_t = 1000)]
    pub schedule_tick_ms: u64,
}

/// Split a comma-separated list into trimmed, lower-case, non-empty items.
pub fn csv_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect()
}

impl DispatcherConfig {
    /// The queue settings of the dispatcher (retention, de-duplication, bounds, attempts).
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            max_attempts: self.max_attempts,
            retention: std::time::Duration::from_secs(self.retention_secs),
            dedup_ttl: std::time::Duration::from_secs(self.dedup_ttl_secs),
            max_jobs: self.max_jobs,
            lease: std::time::Duration::from_secs(self.lease_secs),
            ..QueueConfig::default()
        }
    }
}

/// A secret from its flag/env value or its file: the one loader of the workspace
/// (`raibid_core::secret_source`), shared with the agent.
fn secret(
    value: &Option<String>,
    file: &Option<PathBuf>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    Ok(raibid_core::secret_source::SecretSource {
        what,
        value: value.as_deref(),
        file: file.as_deref(),
    }
    .load()?)
}

/// Parse the mirror mapping.
pub fn parse_mirrors(s: &str) -> anyhow::Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (gh, gt) = pair.split_once('=').with_context(|| {
            format!(
                "{}: `{pair}` is not github-owner/name=gitea-owner/name",
                env::MIRRORS
            )
        })?;
        for side in [gh, gt] {
            let parts: Vec<&str> = side.trim().split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                anyhow::bail!("{}: `{side}` is not owner/name", env::MIRRORS);
            }
        }
        m.insert(gh.trim().to_ascii_lowercase(), gt.trim().to_string());
    }
    Ok(m)
}

/// Resolved settings (secrets read, mapping parsed).
#[derive(Clone)]
pub struct Settings {
    /// API bearer token.
    pub api_token: String,
    /// Gitea webhook secret.
    pub gitea_secret: Option<String>,
    /// GitHub webhook secret.
    pub github_secret: Option<String>,
    /// Gitea client, when configured.
    pub gitea: Option<forge::Gitea>,
    /// GitHub → Gitea mapping (lower-case GitHub full name → Gitea full name).
    pub mirrors: HashMap<String, String>,
    /// Public URL.
    pub public_url: String,
    /// Body limit.
    pub body_limit: usize,
    /// Lease after which the reaper reclaims an entry.
    pub lease: std::time::Duration,
    /// Extra `Host` values for /mcp.
    pub mcp_allowed_hosts: Vec<String>,
    /// Browser origins allowed on /mcp.
    pub mcp_allowed_origins: Vec<String>,
    /// Read-only /mcp bearer token.
    pub mcp_readonly_token: Option<String>,
    /// notify_url signing secret.
    pub notify_secret: Option<String>,
    /// Hosts notify_url may reach inside the network.
    pub notify_allowed_hosts: Vec<String>,
    /// What the API and webhooks accept, and how commit statuses are retried.
    pub intake: Intake,
}

/// What the dispatcher accepts (beyond well-formed input), how it retries commit statuses and how
/// often its scheduler looks for due schedules.
#[derive(Debug, Clone)]
pub struct Intake {
    /// Window of the (repository, ref, sha) push de-duplication; zero: off.
    pub push_dedup: std::time::Duration,
    /// Clone URL schemes agents accept.
    pub allowed_schemes: Vec<String>,
    /// Clone hosts agents accept (empty: any).
    pub allowed_hosts: Vec<String>,
    /// Commit-status retries.
    pub status_retry: forge::RetryPolicy,
    /// GitHub client for commit statuses on mirrored repositories (none: Gitea only).
    pub github: Option<github::GitHub>,
    /// GitHub API base URL (its host tells GitHub repositories apart in Gitea's `original_url`).
    pub github_api_url: String,
    /// How long the mirror mapping read from Gitea is trusted.
    pub mirror_ttl: std::time::Duration,
    /// Where image jobs may push (the agents' `RAIBID_REGISTRY`, `RAIBID_REGISTRY_ALLOWED`,
    /// `RAIBID_REGISTRY_RESERVED_NAMESPACES`).
    pub registries: raibid_core::image::RegistryPolicy,
    /// How often the scheduler looks for due schedules (zero: not in this replica).
    pub schedule_tick: std::time::Duration,
    /// How artifacts are fetched from and deleted in the registry (issue 23 §2).
    pub artifact_registry: artifacts::RegistryAccess,
}

impl Default for Intake {
    fn default() -> Self {
        Intake {
            push_dedup: std::time::Duration::from_secs(3600),
            allowed_schemes: csv_list("https,http,ssh"),
            allowed_hosts: Vec::new(),
            status_retry: forge::RetryPolicy::default(),
            github: None,
            github_api_url: github::DEFAULT_API_URL.to_string(),
            mirror_ttl: std::time::Duration::from_secs(60),
            registries: raibid_core::image::RegistryPolicy::default(),
            schedule_tick: std::time::Duration::from_secs(1),
            artifact_registry: artifacts::RegistryAccess::default(),
        }
    }
}

impl Settings {
    /// Resolve a configuration.
    pub fn from_config(cfg: &DispatcherConfig) -> anyhow::Result<Settings> {
        let api_token =
            secret(&cfg.api_token, &cfg.api_token_file, "API token")?.with_context(|| {
                format!(
                    "no API token: set {} or {} (every /api/v1 route requires it)",
                    env::API_TOKEN,
                    env::API_TOKEN_FILE
                )
            })?;
        let gitea_token = secret(&cfg.gitea_token, &cfg.gitea_token_file, "Gitea token")?;
        github::check_api_url(&cfg.github_api_url)
            .map_err(|e| anyhow::anyhow!("{}: {e}", env::GITHUB_API_URL))?;
        let github = match secret(&cfg.github_token, &cfg.github_token_file, "GitHub token")? {
            Some(t) => Some(github::GitHub::new(&cfg.github_api_url, t)?),
            None => None,
        };
        let gitea = match (&cfg.gitea_url, gitea_token) {
            (Some(url), token) if !url.is_empty() => Some(forge::Gitea::new(url, token)?),
            _ => None,
        };
        Ok(Settings {
            api_token,
            gitea_secret: secret(
                &cfg.gitea_webhook_secret,
                &cfg.gitea_webhook_secret_file,
                "Gitea webhook secret",
            )?,
            github_secret: secret(
                &cfg.github_webhook_secret,
                &cfg.github_webhook_secret_file,
                "GitHub webhook secret",
            )?,
            gitea,
            mirrors: parse_mirrors(&cfg.mirrors)?,
            public_url: cfg.public_url.trim_end_matches('/').to_string(),
            body_limit: cfg.body_limit,
            lease: std::time::Duration::from_secs(cfg.lease_secs),
            mcp_allowed_hosts: csv_list(&cfg.mcp_allowed_hosts),
            mcp_allowed_origins: csv_list(&cfg.mcp_allowed_origins),
            mcp_readonly_token: secret(
                &cfg.mcp_readonly_token,
                &cfg.mcp_readonly_token_file,
                "read-only MCP token",
            )?,
            notify_secret: secret(
                &cfg.notify_secret,
                &cfg.notify_secret_file,
                "notification secret",
            )?,
            notify_allowed_hosts: csv_list(&cfg.notify_allowed_hosts),
            intake: Intake {
                push_dedup: std::time::Duration::from_secs(cfg.push_dedup_secs),
                allowed_schemes: csv_list(&cfg.allowed_schemes),
                allowed_hosts: csv_list(&cfg.allowed_hosts),
                status_retry: forge::RetryPolicy {
                    max: std::time::Duration::from_secs(cfg.status_retry_max_secs),
                    ..forge::RetryPolicy::default()
                },
                github,
                github_api_url: cfg.github_api_url.clone(),
                mirror_ttl: std::time::Duration::from_secs(cfg.mirror_cache_secs),
                registries: raibid_core::image::RegistryPolicy::from_lists(
                    cfg.registry.as_deref(),
                    &cfg.registry_allowed,
                    &cfg.registry_reserved_namespaces,
                ),
                schedule_tick: std::time::Duration::from_millis(cfg.schedule_tick_ms),
                artifact_registry: artifacts::RegistryAccess {
                    registry: cfg.registry.clone(),
                    insecure: cfg.registry_insecure,
                    credentials: raibid_core::artifacts::CredentialSources {
                        auth_file: cfg.registry_auth_file.clone(),
                        username: cfg.registry_username.clone(),
                        password: std::env::var(env::REGISTRY_PASSWORD)
                            .ok()
                            .filter(|p| !p.is_empty()),
                        password_file: cfg.registry_password_file.clone(),
                    },
                },
            },
        })
    }
}

/// Counters kept in process (per replica).
#[derive(Default)]
pub struct Counters {
    /// Webhooks accepted as new jobs.
    pub webhooks_enqueued: AtomicU64,
    /// Duplicate deliveries.
    pub webhooks_duplicate: AtomicU64,
    /// Rejected (signature, malformed, ...).
    pub webhooks_rejected: AtomicU64,
    /// Acknowledged and ignored.
    pub webhooks_ignored: AtomicU64,
    /// Mirror-syncs triggered.
    pub mirror_syncs: AtomicU64,
    /// Commit statuses posted.
    pub statuses_posted: AtomicU64,
    /// Commit statuses Gitea refused for good (or given up after the retry window).
    pub statuses_failed: AtomicU64,
    /// Commit-status posts that failed transiently and stay pending for a retry.
    pub statuses_retried: AtomicU64,
}

/// Shared application state.
#[derive(Clone)]
pub struct AppState {
    /// The queue.
    pub queue: Queue,
    /// Settings.
    pub settings: Arc<Settings>,
    /// Counters.
    pub counters: Arc<Counters>,
    /// The mirror mapping (read from Gitea, cached; `RAIBID_MIRRORS` overrides).
    pub mirrors: Arc<mirrors::Mirrors>,
    /// Turns true when the server starts shutting down: long-lived responses (SSE) end then, so the
    /// graceful shutdown does not wait on them.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    stop_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    /// A job as the dispatcher's answers show it: the public record with its page URL.
    pub fn answer(&self, job: &raibid_core::job::Job) -> raibid_core::job::Job {
        crate::public::answer(&self.settings, job)
    }
}

impl AppState {
    /// State over a connected queue.
    pub fn new(queue: Queue, settings: Settings) -> AppState {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mirrors = Arc::new(mirrors::Mirrors::new(
            &settings.mirrors,
            settings.intake.mirror_ttl,
            github::web_hosts(&settings.intake.github_api_url),
        ));
        AppState {
            mirrors,
            queue,
            settings: Arc::new(settings),
            counters: Arc::new(Counters::default()),
            stopping: rx,
            stop_tx: Arc::new(tx),
        }
    }
}

/// Connect to Redis, retrying with backoff `attempts` times.
pub async fn connect_queue(url: &str, qcfg: QueueConfig, attempts: u32) -> anyhow::Result<Queue> {
    let mut delay = std::time::Duration::from_millis(200);
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match Queue::connect(url, qcfg.clone()).await {
            Ok(q) => return Ok(q),
            Err(e) => {
                tracing::warn!(error = %e, "redis unreachable; retrying");
                last = Some(e);
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
    Err(anyhow::anyhow!(
        "cannot reach redis: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}
