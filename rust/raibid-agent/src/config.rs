//! The agent's configuration: every option a clap flag with an environment variable.

use clap::Parser;
use raibid_core::contract::env;
use raibid_core::secret_source::SecretSource;
use std::path::PathBuf;

/// raibid-agent — runs raibid-ci jobs from the Redis queue.
///
/// Long-running (warm pool): blocks on XREADGROUP and starts a job within milliseconds of it being
/// queued; `--concurrency N` runs N jobs at once. With `--once` (what a KEDA ScaledJob pod runs) it
/// claims exactly one job, runs it, acknowledges it and exits.
#[derive(Debug, Clone, Parser)]
#[command(name = "raibid-agent", version, about, long_about = None)]
pub struct AgentConfig {
    /// Redis URL (with password if any), e.g. redis://:pw@redis:6379/0.
    #[arg(long, env = env::REDIS_URL, default_value = "redis://127.0.0.1:6379", hide_env_values = true)]
    pub redis_url: String,

    /// Consumer name, unique per agent (the pod name on Kubernetes). Default: <hostname>-<pid>.
    /// With --concurrency N > 1 each slot is a consumer named <name>-<slot>.
    #[arg(long, env = env::AGENT_NAME)]
    pub name: Option<String>,

    /// Claim exactly one job, run it, acknowledge it and exit (KEDA ScaledJob mode).
    #[arg(long, env = env::ONCE)]
    pub once: bool,

    /// With --once: exit 0 after waiting this many seconds without finding a job.
    #[arg(long, env = env::IDLE_TIMEOUT_SECS, default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// The Kubernetes node this agent runs on (downward API `spec.nodeName`). Set: the agent records which
    /// repositories its node's cache holds, and reads its node's stream (`raibid:jobs:node:<node>`) before
    /// the shared one, so the dispatcher can route a repository's next job to this node (ADR 0013).
    #[arg(long, env = env::NODE_NAME)]
    pub node_name: Option<String>,

    /// Jobs run at once by a long-running agent.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Directory for per-job workspaces (each is deleted when its job ends).
    #[arg(long, env = env::WORKSPACE_DIR, default_value = "/tmp/raibid/workspaces")]
    pub workspace_dir: PathBuf,

    /// Shared cache directory; steps get CARGO_HOME=<cache>/cargo so dependencies download once.
    #[arg(long, env = env::CACHE_DIR, default_value = "/tmp/raibid/cache")]
    pub cache_dir: PathBuf,

    /// Comma-separated URL schemes jobs may clone from.
    #[arg(long, env = env::ALLOWED_SCHEMES, default_value = "https,http,ssh")]
    pub allowed_schemes: String,

    /// Comma-separated hosts jobs may clone from; empty allows any host.
    #[arg(long, env = env::ALLOWED_HOSTS, default_value = "")]
    pub allowed_hosts: String,

    /// User name for HTTP(S) git credentials.
    #[arg(long, env = env::GIT_USERNAME)]
    pub git_username: Option<String>,

    /// File holding the git token for HTTP(S) (a mounted secret). The token itself is read from the
    /// environment (RAIBID_GIT_TOKEN) or this file only, never from the command line; it is sent only to
    /// the hosts of --allowed-hosts, and git does not follow redirects while it carries it.
    #[arg(long, env = env::GIT_TOKEN_FILE)]
    pub git_token_file: Option<PathBuf>,

    /// Size cap in bytes of the cargo target slots (<cache>/targets) and git mirrors (<cache>/git)
    /// together: past it, after each job, the least recently used target directories of slots no job
    /// holds are evicted first, then emptied slots, then mirrors no job is using.
    #[arg(id = "target_cache_max_bytes", long = "target-cache-max-bytes", env = env::CACHE_MAX_BYTES, default_value_t = 100 << 30)]
    pub cache_max_bytes: u64,

    /// Comma-separated default branch names: a branch without a slot of its own starts from theirs.
    #[arg(long, env = env::CACHE_DEFAULT_BRANCHES, default_value = "main,master")]
    pub cache_default_branches: String,

    /// Seconds the clone step (mirror fetch, checkout) may take; it also ends at the job's deadline
    /// and on cancel, killing git.
    #[arg(long, env = env::CLONE_TIMEOUT_SECS, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub clone_timeout_secs: u64,

    /// Seconds a claim stays valid without a heartbeat (heartbeats go out every third of it).
    #[arg(long, env = env::LEASE_SECS, default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..))]
    pub lease_secs: u64,

    /// On SIGTERM, seconds a running job may take to finish before it is killed and released back to
    /// the queue (another agent picks it up at once).
    #[arg(long, env = env::SHUTDOWN_GRACE_SECS, default_value_t = 600)]
    pub grace_secs: u64,

    /// Comma-separated job kinds this agent runs (`rust`, `image`): each is its own stream and pool.
    #[arg(long, env = env::AGENT_KINDS, default_value = "rust")]
    pub kinds: String,

    /// Per-job log cap in bytes (each line costs its text plus a fixed overhead); one marker past it.
    #[arg(long, env = env::LOG_CAP_BYTES, default_value_t = 10 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_cap_bytes: u64,

    /// Per-job log cap in lines (a flood of empty lines hits this one).
    #[arg(long, env = env::LOG_CAP_LINES, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(16..))]
    pub log_cap_lines: u64,

    /// Seconds finished job records and logs are kept (the final write sets their expiry).
    #[arg(long, env = env::RETENTION_SECS, default_value_t = 30 * 24 * 3600)]
    pub retention_secs: u64,

    /// Milliseconds one XREADGROUP blocks before the agent looks at its shutdown flag again.
    #[arg(long, env = env::BLOCK_MS, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub block_ms: u64,

    /// Each kind's own options (image jobs: registry, storage, cache bounds; GPU jobs: the probe).
    #[command(flatten)]
    pub kind_options: crate::kinds::KindOptions,

    /// What steps may read: step user, secret scopes, the Redis URL from a file.
    #[command(flatten)]
    pub hardening: Hardening,
}

/// Options that bound what a build step can read or cost (docs/adr/0009-agent-step-isolation.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Hardening {
    /// File holding the Redis URL with its password (a mounted secret); used instead of --redis-url.
    #[arg(long, env = env::REDIS_URL_FILE)]
    pub redis_url_file: Option<PathBuf>,

    /// User (name or numeric uid) the steps run as. Needs root; with it steps cannot read the agent's
    /// environment, its secret files or other agents' processes. Unset: steps run as the agent's user.
    #[arg(long, env = env::STEP_USER)]
    pub step_user: Option<String>,

    /// Directories every build step may write besides its own checkout, target directory and
    /// CARGO_HOME (comma-separated absolute paths). Every repository's steps share them: only for
    /// what is meant to be shared. Default: none.
    #[arg(long, env = env::SANDBOX_SHARED_DIRS, value_delimiter = ',')]
    pub sandbox_shared_dirs: Vec<PathBuf>,

    /// Which repositories get which RAIBID_SECRET_<NAME>: `NAME=glob|glob,...`, each glob (`*` = any
    /// run of characters) matched against the job's repository URL. A secret without a scope is given
    /// to no repository.
    #[arg(long, env = env::SECRET_SCOPES)]
    pub secret_scopes: Option<String>,

    /// File holding the secret scopes (same syntax, commas or newlines); used when --secret-scopes is not set.
    #[arg(long, env = env::SECRET_SCOPES_FILE)]
    pub secret_scopes_file: Option<PathBuf>,
}

impl AgentConfig {
    /// The consumer name base.
    pub fn agent_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        })
    }

    /// The queue settings this agent runs with (kinds, lease, log caps, retention).
    pub fn queue_config(&self) -> anyhow::Result<raibid_core::queue::QueueConfig> {
        let mut kinds = Vec::new();
        for k in self
            .kinds
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            let kind = anyhow::Context::with_context(raibid_core::job::JobKind::parse(k), || {
                format!(
                    "{}: unknown job kind `{k}` (known: {})",
                    env::AGENT_KINDS,
                    raibid_core::job::JobKind::ALL
                        .map(|k| k.as_str())
                        .join(", ")
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            anyhow::bail!("{}: name at least one job kind", env::AGENT_KINDS);
        }
        let node = self
            .node_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        if let Some(n) = node {
            if !raibid_core::contract::valid_node_name(n) {
                anyhow::bail!(
                    "{}: `{n}` is not a node name (lower-case letters, digits, `-` and `.`)",
                    env::NODE_NAME
                );
            }
        }
        Ok(raibid_core::queue::QueueConfig {
            log_cap_bytes: self.log_cap_bytes,
            log_cap_lines: self.log_cap_lines,
            retention: std::time::Duration::from_secs(self.retention_secs),
            lease: std::time::Duration::from_secs(self.lease_secs),
            kinds,
            node: node.map(str::to_string),
            ..raibid_core::queue::QueueConfig::default()
        })
    }

    /// The git token: `RAIBID_GIT_TOKEN` from the environment, else the token file (never a flag: a
    /// command line is visible to every process).
    /// Files holding the agent's credentials: hidden from every sandboxed step, even where a
    /// directory the step sees holds them.
    pub(crate) fn credential_files(&self) -> Vec<PathBuf> {
        [
            self.git_token_file.as_ref(),
            self.hardening.redis_url_file.as_ref(),
            self.hardening.secret_scopes_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .chain(self.kind_options.credential_files())
        .collect()
    }

    pub(crate) fn git_token(&self) -> anyhow::Result<Option<String>> {
        let from_env = std::env::var(env::GIT_TOKEN).ok().filter(|t| !t.is_empty());
        Ok(SecretSource {
            what: env::GIT_TOKEN_FILE,
            value: from_env.as_deref(),
            file: self.git_token_file.as_deref(),
        }
        .load()?)
    }

    /// The Redis URL: from its file when one is given.
    pub(crate) fn redis_url(&self) -> anyhow::Result<String> {
        Ok(SecretSource {
            what: env::REDIS_URL_FILE,
            value: None,
            file: self.hardening.redis_url_file.as_deref(),
        }
        .load()?
        .unwrap_or_else(|| self.redis_url.clone()))
    }

    /// The secret scopes text (from the flag/env or its file).
    pub(crate) fn secret_scopes(&self) -> anyhow::Result<String> {
        Ok(SecretSource {
            what: env::SECRET_SCOPES_FILE,
            value: self.hardening.secret_scopes.as_deref(),
            file: self.hardening.secret_scopes_file.as_deref(),
        }
        .load()?
        .unwrap_or_default())
    }
}
