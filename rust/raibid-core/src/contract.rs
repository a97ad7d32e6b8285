//! The public contract of raibid-ci, defined once.
//!
//! Every Redis key, stream, consumer group, environment variable and HTTP path that more than one
//! component (dispatcher, agent, `raibid-top`, Nushell scripts, Kubernetes manifests, docs) relies on
//! is a constant in this file. The manifest and script test suites parse the `pub const NAME: &str = "…";`
//! lines of this file, so keep each constant on one line in exactly that form.
//!
//! The key layout is documented in `docs/queue-contract.md`; a test checks that page names every key here.

/// Redis keys. All keys share the `raibid:` prefix so one Redis can be shared and inspected easily.
pub mod keys {
    /// The job queue stream. Each entry has one field, `job`, holding the job id.
    pub const JOBS_STREAM: &str = "raibid:jobs";
    /// The consumer group every agent reads `JOBS_STREAM` with (KEDA scales on this group's `lag`).
    pub const AGENTS_GROUP: &str = "raibid-agents";
    /// The image-job queue stream (Buildah agents; same entry layout as `JOBS_STREAM`).
    pub const IMAGE_JOBS_STREAM: &str = "raibid:jobs:image";
    /// The consumer group of image agents on `IMAGE_JOBS_STREAM` (its own KEDA ScaledJob scales on its lag).
    /// Every job stream's group has the same name, so one `XREADGROUP` serves an agent of several kinds.
    pub const IMAGE_AGENTS_GROUP: &str = "raibid-agents";
    /// The stream of GPU test jobs (`gpu: true` in `.raibid.yaml`, `gpu_required` at submit): only agents that probed a GPU read it.
    pub const GPU_JOBS_STREAM: &str = "raibid:jobs:gpu";
    /// The consumer group of GPU agents on `GPU_JOBS_STREAM` (its own KEDA ScaledJob scales on its lag).
    pub const GPU_AGENTS_GROUP: &str = "raibid-agents";
    /// Sorted set of job ids whose local images image agents remove (score: request time in ms).
    pub const IMAGE_CLEANUP: &str = "raibid:images:cleanup";
    /// Dead-letter stream: jobs delivered more than the retry limit.
    pub const DEAD_STREAM: &str = "raibid:jobs:dead";
    /// Events stream for live watchers (job created/claimed/step started/finished/...), capped.
    pub const EVENTS_STREAM: &str = "raibid:events";
    /// Consumer group of the dispatcher's commit-status reporter on `EVENTS_STREAM`.
    pub const STATUS_REPORTER_GROUP: &str = "raibid-status-reporters";
    /// Sorted set of every job id, scored by receive time in milliseconds (listing and pagination).
    pub const JOB_INDEX: &str = "raibid:jobs:index";
    /// Prefix of the listing's per-status index: `raibid:jobs:index:status:{status}`, scored like `JOB_INDEX` (filters before paging).
    pub const JOB_INDEX_BY_STATUS_PREFIX: &str = "raibid:jobs:index:status:";
    /// Prefix of the listing's per-ref index: `raibid:jobs:index:ref:{full ref}`, scored like `JOB_INDEX`.
    pub const JOB_INDEX_BY_REF_PREFIX: &str = "raibid:jobs:index:ref:";
    /// Marker: the per-status and per-ref listing indexes were built for the records written before they existed.
    pub const JOB_LIST_INDEXES_BUILT: &str = "raibid:jobs:index:built";
    /// Prefix of a job record hash: `raibid:job:{id}` (fields `record` JSON, `rev`, `log_bytes`, `log_truncated`).
    pub const JOB_PREFIX: &str = "raibid:job:";
    /// Suffix of a job's log stream: `raibid:job:{id}:log`.
    pub const JOB_LOG_SUFFIX: &str = ":log";
    /// Prefix of a forge delivery de-duplication key: `raibid:delivery:{forge}:{delivery id}` → job id.
    pub const DELIVERY_PREFIX: &str = "raibid:delivery:";
    /// Set of known agent consumer names.
    pub const AGENTS_SET: &str = "raibid:agents";
    /// Prefix of an agent's heartbeat hash: `raibid:agent:{name}` (expires when heartbeats stop).
    pub const AGENT_PREFIX: &str = "raibid:agent:";
    /// Prefix of an agent's name claim: `raibid:agent-name:{name}` → a token of the process holding it (SET NX, TTL refreshed by its heartbeat, deleted on exit).
    pub const AGENT_NAME_CLAIM_PREFIX: &str = "raibid:agent-name:";
    /// Pub/sub channel on which cancel requests are broadcast (message: job id).
    pub const CANCEL_CHANNEL: &str = "raibid:cancel";
    /// Hash of histogram buckets: enqueue → claim latency (field = bucket upper bound in seconds, `+Inf`, `sum`, `count`).
    pub const CLAIM_LATENCY_HIST: &str = "raibid:metrics:claim_latency";
    /// Hash of job counts by status, kept by the write scripts (queued/running: current; final: ever).
    pub const JOB_STATUS_COUNTS: &str = "raibid:metrics:jobs_by_status";
    /// Hash of histogram buckets: job duration from start to finish.
    pub const JOB_DURATION_HIST: &str = "raibid:metrics:job_duration";
    /// Suffix of a job's structured diagnostics (JSON): `raibid:job:{id}:diagnostics` (same retention as the log).
    pub const JOB_DIAGNOSTICS_SUFFIX: &str = ":diagnostics";
    /// Suffix of a job's submitted patch (a unified diff): `raibid:job:{id}:patch`.
    pub const JOB_PATCH_SUFFIX: &str = ":patch";
    /// Suffix of the marker that a job's `notify_url` delivery was started: `raibid:job:{id}:notified`.
    pub const JOB_NOTIFIED_SUFFIX: &str = ":notified";
    /// Consumer group of the dispatcher's `notify_url` sender on `EVENTS_STREAM`.
    pub const NOTIFY_GROUP: &str = "raibid-notifiers";
    /// Consumer group of the dispatcher's GitHub commit-status reporter on `EVENTS_STREAM` (its own group: a GitHub outage never holds Gitea statuses back).
    pub const GITHUB_STATUS_REPORTER_GROUP: &str = "raibid-github-status-reporters";
    /// Prefix of a posted-status marker: `raibid:status:{forge}:{job id}:{state}` (set once the forge took it; a transition is posted once).
    pub const STATUS_POSTED_PREFIX: &str = "raibid:status:";
    /// Prefix of a push de-duplication key: `raibid:push:{sha256 of forge, repo, ref, sha}` → job id (TTL: the dedup window).
    pub const PUSH_DEDUP_PREFIX: &str = "raibid:push:";
    /// Prefix of a node's own job stream: `raibid:jobs:node:<node>` (Rust jobs routed to the node holding the repository's warm cache; group `raibid-agents`; its own KEDA ScaledJob).
    pub const NODE_JOBS_STREAM_PREFIX: &str = "raibid:jobs:node:";
    /// Sorted set of nodes with agents: node name scored by the latest heartbeat expiry (ms, Redis clock) of an agent on it.
    pub const NODES: &str = "raibid:nodes";
    /// Prefix of a node's keys: `raibid:node:<node>:repos` and `raibid:node:<node>:agents`.
    pub const NODE_PREFIX: &str = "raibid:node:";
    /// Suffix of a node's warm repositories: sorted set of repository keys (`routing_repo_key`) scored by the last job's end (ms), entries older than the routing TTL dropped.
    pub const NODE_REPOS_SUFFIX: &str = ":repos";
    /// Suffix of a node's live agents: sorted set of agent consumer names scored by their heartbeat expiry (ms, Redis clock).
    pub const NODE_AGENTS_SUFFIX: &str = ":agents";
    /// Hash of cache counters summed over all jobs (jobs by restore kind, units fresh/total, lock/restore ms, fetched objects/bytes).
    pub const CACHE_COUNTERS: &str = "raibid:metrics:cache";
    /// Sorted set of schedule ids (issue 22 §3), scored by creation time in milliseconds.
    pub const SCHEDULES: &str = "raibid:schedules";
    /// Prefix of a schedule hash: `raibid:schedule:{id}` (fields `record` JSON, `paused`, `last_due` ms, `last_job`, `pending`).
    pub const SCHEDULE_PREFIX: &str = "raibid:schedule:";
    /// The forge name of a scheduled job's delivery de-duplication key: `raibid:delivery:schedule:{id}:{due ms}` (one job per due time).
    pub const SCHEDULE_DELIVERY_FORGE: &str = "schedule";
}

/// Environment variables. Both binaries, the Nushell scripts and the manifests use these names.
pub mod env {
    /// Redis URL, e.g. `redis://:password@redis.raibid-system:6379/0`.
    pub const REDIS_URL: &str = "RAIBID_REDIS_URL";
    /// Base URL of the dispatcher as users and agents reach it (used for CLI calls and commit-status links).
    pub const URL: &str = "RAIBID_URL";
    /// Bearer token for `/api/v1`.
    pub const API_TOKEN: &str = "RAIBID_API_TOKEN";
    /// File holding the bearer token (a mounted Kubernetes secret); read when `RAIBID_API_TOKEN` is unset.
    pub const API_TOKEN_FILE: &str = "RAIBID_API_TOKEN_FILE";
    /// Secret for Gitea webhook signatures (`X-Gitea-Signature`).
    pub const GITEA_WEBHOOK_SECRET: &str = "RAIBID_GITEA_WEBHOOK_SECRET";
    /// File holding the Gitea webhook secret.
    pub const GITEA_WEBHOOK_SECRET_FILE: &str = "RAIBID_GITEA_WEBHOOK_SECRET_FILE";
    /// Secret for GitHub webhook signatures (`X-Hub-Signature-256`).
    pub const GITHUB_WEBHOOK_SECRET: &str = "RAIBID_GITHUB_WEBHOOK_SECRET";
    /// File holding the GitHub webhook secret.
    pub const GITHUB_WEBHOOK_SECRET_FILE: &str = "RAIBID_GITHUB_WEBHOOK_SECRET_FILE";
    /// Dispatcher listen address.
    pub const LISTEN: &str = "RAIBID_LISTEN";
    /// Gitea base URL (e.g. `http://gitea-http.gitea:3000`), for mirror-sync and commit statuses.
    pub const GITEA_URL: &str = "RAIBID_GITEA_URL";
    /// Gitea API token (commit statuses, mirror-sync).
    pub const GITEA_TOKEN: &str = "RAIBID_GITEA_TOKEN";
    /// File holding the Gitea API token.
    pub const GITEA_TOKEN_FILE: &str = "RAIBID_GITEA_TOKEN_FILE";
    /// GitHub → Gitea mirror mapping: `github-owner/name=gitea-owner/name,...`.
    pub const MIRRORS: &str = "RAIBID_MIRRORS";
    /// Request body limit in bytes for webhooks and the API.
    pub const BODY_LIMIT: &str = "RAIBID_BODY_LIMIT";
    /// The agent's consumer name (unique per agent; the pod name on Kubernetes).
    pub const AGENT_NAME: &str = "RAIBID_AGENT_NAME";
    /// The Kubernetes node the agent runs on (downward API `spec.nodeName`); set: the agent records the repositories its node's cache holds and reads `raibid:jobs:node:<node>` before the shared stream (ADR 0013). Unset: shared stream only.
    pub const NODE_NAME: &str = "RAIBID_NODE_NAME";
    /// Number of jobs a long-running agent runs at once.
    pub const CONCURRENCY: &str = "RAIBID_CONCURRENCY";
    /// Claim exactly one job, run it, exit (KEDA ScaledJob mode).
    pub const ONCE: &str = "RAIBID_ONCE";
    /// With `--once`: seconds to wait for a job before exiting 0.
    pub const IDLE_TIMEOUT_SECS: &str = "RAIBID_IDLE_TIMEOUT_SECS";
    /// Milliseconds one blocking `XREADGROUP` waits before the agent checks its shutdown flag.
    pub const BLOCK_MS: &str = "RAIBID_BLOCK_MS";
    /// Directory in which per-job workspaces are created (and deleted).
    pub const WORKSPACE_DIR: &str = "RAIBID_WORKSPACE_DIR";
    /// Shared cache directory (`CARGO_HOME` of every step lives below it).
    pub const CACHE_DIR: &str = "RAIBID_CACHE_DIR";
    /// Comma-separated URL schemes an agent may clone from (`https,http,ssh,file`).
    pub const ALLOWED_SCHEMES: &str = "RAIBID_ALLOWED_SCHEMES";
    /// Comma-separated hosts an agent may clone from (empty: any host).
    pub const ALLOWED_HOSTS: &str = "RAIBID_ALLOWED_HOSTS";
    /// Username for HTTP(S) git credentials.
    pub const GIT_USERNAME: &str = "RAIBID_GIT_USERNAME";
    /// Token / password for HTTP(S) git credentials.
    pub const GIT_TOKEN: &str = "RAIBID_GIT_TOKEN";
    /// File holding the git token.
    pub const GIT_TOKEN_FILE: &str = "RAIBID_GIT_TOKEN_FILE";
    /// Upper bound in bytes of the node cache's target slots (`<cache>/targets`) and git mirrors (`<cache>/git`) together; past it the least recently used are evicted (target directories first, mirrors last), never one in use.
    pub const CACHE_MAX_BYTES: &str = "RAIBID_CACHE_MAX_BYTES";
    /// Comma-separated default branch names whose slot a branch without a slot of its own starts from.
    pub const CACHE_DEFAULT_BRANCHES: &str = "RAIBID_CACHE_DEFAULT_BRANCHES";
    /// Seconds the clone step (mirror fetch + checkout) may take; it also ends at the job deadline or a cancel.
    pub const CLONE_TIMEOUT_SECS: &str = "RAIBID_CLONE_TIMEOUT_SECS";
    /// Seconds an agent's claim stays valid without a heartbeat.
    pub const LEASE_SECS: &str = "RAIBID_LEASE_SECS";
    /// Claims of one job before it goes to the dead-letter stream (dispatcher's reaper).
    pub const MAX_ATTEMPTS: &str = "RAIBID_MAX_ATTEMPTS";
    /// Seconds a SIGTERMed agent lets its running job finish before it kills it and releases the job.
    pub const SHUTDOWN_GRACE_SECS: &str = "RAIBID_SHUTDOWN_GRACE_SECS";
    /// Prefix of the secrets an agent can hand to pipelines: `RAIBID_SECRET_<NAME>` becomes `<NAME>`
    /// in the steps of a pipeline that lists `<NAME>` under `secrets:`, masked in its log.
    pub const SECRET_PREFIX: &str = "RAIBID_SECRET_";
    /// Comma-separated `Host` values `/mcp` answers for besides loopback (Service name, Ingress host).
    pub const MCP_ALLOWED_HOSTS: &str = "RAIBID_MCP_ALLOWED_HOSTS";
    /// Comma-separated browser origins allowed to call `/mcp` (empty: a request with any `Origin` is refused).
    pub const MCP_ALLOWED_ORIGINS: &str = "RAIBID_MCP_ALLOWED_ORIGINS";
    /// Secret the dispatcher signs `notify_url` deliveries with (`X-Raibid-Signature`).
    pub const NOTIFY_SECRET: &str = "RAIBID_NOTIFY_SECRET";
    /// A second bearer token for `/mcp` that may only read (list, get, logs, diagnostics): no submit, cancel, retry or cleanup.
    pub const MCP_READONLY_TOKEN: &str = "RAIBID_MCP_READONLY_TOKEN";
    /// File holding the read-only `/mcp` token.
    pub const MCP_READONLY_TOKEN_FILE: &str = "RAIBID_MCP_READONLY_TOKEN_FILE";
    /// File holding the notification secret.
    pub const NOTIFY_SECRET_FILE: &str = "RAIBID_NOTIFY_SECRET_FILE";
    /// Comma-separated hosts a `notify_url` may name even when they resolve to loopback or private addresses.
    pub const NOTIFY_ALLOWED_HOSTS: &str = "RAIBID_NOTIFY_ALLOWED_HOSTS";
    /// Comma-separated job kinds an agent runs (`rust`, `image`; `contract::kinds`).
    pub const AGENT_KINDS: &str = "RAIBID_AGENT_KINDS";
    /// Per-job log cap in bytes (payload + per-line overhead).
    pub const LOG_CAP_BYTES: &str = "RAIBID_LOG_CAP_BYTES";
    /// Per-job log cap in lines.
    pub const LOG_CAP_LINES: &str = "RAIBID_LOG_CAP_LINES";
    /// Seconds finished job records and logs are kept.
    pub const RETENTION_SECS: &str = "RAIBID_RETENTION_SECS";
    /// Seconds a forge delivery id is remembered (de-duplication).
    pub const DEDUP_TTL_SECS: &str = "RAIBID_DEDUP_TTL_SECS";
    /// Most job records kept (oldest finished ones dropped first; 0 = no count bound).
    pub const MAX_JOBS: &str = "RAIBID_MAX_JOBS";
    /// Which repositories may receive which `RAIBID_SECRET_*`: `NAME=glob|glob,NAME2=glob` (globs with `*` over the repository URL); a secret without a scope goes to no repository.
    pub const SECRET_SCOPES: &str = "RAIBID_SECRET_SCOPES";
    /// File holding the secret scopes (same syntax; commas or newlines); read when `RAIBID_SECRET_SCOPES` is unset.
    pub const SECRET_SCOPES_FILE: &str = "RAIBID_SECRET_SCOPES_FILE";
    /// File holding the Redis URL (with its password); when set it is used instead of `RAIBID_REDIS_URL`.
    pub const REDIS_URL_FILE: &str = "RAIBID_REDIS_URL_FILE";
    /// User (name or uid) the agent's steps run as; required to be set when the agent runs as root for steps to be unable to read its secrets.
    pub const STEP_USER: &str = "RAIBID_STEP_USER";
    /// Directories every build step may write besides its own checkout, target directory and `CARGO_HOME` (comma-separated absolute paths; shared by every repository's steps, so only for what is meant to be shared). Default: none.
    pub const SANDBOX_SHARED_DIRS: &str = "RAIBID_SANDBOX_SHARED_DIRS";
    /// Default OCI registry image jobs push to (`host[:port][/namespace]`); `dev.sh env` prints it.
    pub const REGISTRY: &str = "RAIBID_REGISTRY";
    /// `true`: talk plain HTTP / unverified TLS to `RAIBID_REGISTRY`'s host (the local registry) and to no other host.
    pub const REGISTRY_INSECURE: &str = "RAIBID_REGISTRY_INSECURE";
    /// Comma-separated registries (`host[:port]`) an image job may name besides `RAIBID_REGISTRY`; each gets only its own entry of `RAIBID_REGISTRY_AUTH_FILE` (if any) and TLS verification.
    pub const REGISTRY_ALLOWED: &str = "RAIBID_REGISTRY_ALLOWED";
    /// Comma-separated registry namespaces no job may push under (`raibid` always is); a job pushes only under its repository owner's namespace.
    pub const REGISTRY_RESERVED_NAMESPACES: &str = "RAIBID_REGISTRY_RESERVED_NAMESPACES";
    /// A containers auth file (`auth.json`, a mounted secret) with the registry credentials.
    pub const REGISTRY_AUTH_FILE: &str = "RAIBID_REGISTRY_AUTH_FILE";
    /// Registry user name (with `RAIBID_REGISTRY_PASSWORD` or its file; the agent writes a 0600 auth file per job).
    pub const REGISTRY_USERNAME: &str = "RAIBID_REGISTRY_USERNAME";
    /// The registry password or token (env only: pods, where a mounted file would be readable by steps).
    pub const REGISTRY_PASSWORD: &str = "RAIBID_REGISTRY_PASSWORD";
    /// File holding the registry password or token (agents that drop steps to another user).
    pub const REGISTRY_PASSWORD_FILE: &str = "RAIBID_REGISTRY_PASSWORD_FILE";
    /// Buildah storage driver (`vfs` works everywhere; `overlay` on the Spark).
    pub const BUILDAH_STORAGE_DRIVER: &str = "RAIBID_BUILDAH_STORAGE_DRIVER";
    /// Remote repository for `buildah build --cache-from/--cache-to` (unset: local layer cache only).
    pub const IMAGE_CACHE_REPO: &str = "RAIBID_IMAGE_CACHE_REPO";
    /// `false`: image test commands run without network (`buildah run --network none`).
    pub const IMAGE_TEST_NETWORK: &str = "RAIBID_IMAGE_TEST_NETWORK";
    /// Bytes the Buildah storage (layer cache) may use before the GC removes the oldest job images.
    pub const IMAGE_CACHE_MAX_BYTES: &str = "RAIBID_IMAGE_CACHE_MAX_BYTES";
    /// Hours a job's image is kept as cache before the GC removes it.
    pub const IMAGE_CACHE_MAX_AGE_HOURS: &str = "RAIBID_IMAGE_CACHE_MAX_AGE_HOURS";
    /// Log filter (tracing `EnvFilter` syntax).
    pub const LOG: &str = "RAIBID_LOG";
    /// Seconds within which a second push webhook for the same (repository, ref, sha) is a duplicate.
    pub const PUSH_DEDUP_SECS: &str = "RAIBID_PUSH_DEDUP_SECS";
    /// Longest delay in seconds between two retries of a commit status Gitea did not take.
    pub const STATUS_RETRY_MAX_SECS: &str = "RAIBID_STATUS_RETRY_MAX_SECS";
    /// GitHub token for commit statuses on the GitHub repositories Gitea mirrors (fine-grained: "Commit statuses: write" only). Unset: no GitHub statuses.
    pub const GITHUB_TOKEN: &str = "RAIBID_GITHUB_TOKEN";
    /// File holding the GitHub token.
    pub const GITHUB_TOKEN_FILE: &str = "RAIBID_GITHUB_TOKEN_FILE";
    /// GitHub REST API base URL (`https://api.github.com`; GitHub Enterprise Server: `https://HOST/api/v3`).
    pub const GITHUB_API_URL: &str = "RAIBID_GITHUB_API_URL";
    /// Seconds the mirror mapping read from Gitea is trusted before it is read again (a miss reads it at once).
    pub const MIRROR_CACHE_SECS: &str = "RAIBID_MIRROR_CACHE_SECS";
    /// Milliseconds between two looks of the dispatcher's scheduler for due schedules (0 turns the scheduler off in this replica).
    pub const SCHEDULE_TICK_MS: &str = "RAIBID_SCHEDULE_TICK_MS";
}

/// HTTP paths of the dispatcher.
pub mod http {
    /// Gitea push webhook.
    pub const GITEA_WEBHOOK_PATH: &str = "/webhooks/gitea";
    /// GitHub push webhook.
    pub const GITHUB_WEBHOOK_PATH: &str = "/webhooks/github";
    /// Liveness.
    pub const HEALTHZ_PATH: &str = "/healthz";
    /// Readiness (Redis reachable).
    pub const READYZ_PATH: &str = "/readyz";
    /// Prometheus metrics.
    pub const METRICS_PATH: &str = "/metrics";
    /// REST API prefix.
    pub const API_PREFIX: &str = "/api/v1";
    /// MCP endpoint (Streamable HTTP) for coding agents.
    pub const MCP_PATH: &str = "/mcp";
    /// Header carrying the HMAC-SHA256 of a `notify_url` delivery (`sha256=<hex>`).
    pub const NOTIFY_SIGNATURE_HEADER: &str = "X-Raibid-Signature";
    /// Public read-only job pages (commit-status links): `/public/jobs/{id}/{token}`.
    pub const PUBLIC_JOBS_PATH: &str = "/public/jobs";
    /// Live events (Server-Sent Events of `raibid:events` plus queue figures and agents seen/gone).
    pub const EVENTS_PATH: &str = "/api/v1/events";
    /// Dead letters: jobs that exhausted their attempts, with the reason.
    pub const DEAD_LETTERS_PATH: &str = "/api/v1/dead-letters";
    /// Scheduled builds: list and create; `/{id}` get, patch (pause/resume), delete; `/{id}/run` run now.
    pub const SCHEDULES_PATH: &str = "/api/v1/schedules";
    /// Default dispatcher port (container port and Service port).
    pub const DEFAULT_PORT: &str = "8080";
}

/// Agent types ("plugin-based" agents): each job kind has its own stream and consumer group, so each
/// pool scales on its own lag and runs with only the privileges it needs. Adding a type is an entry here,
/// a variant of `job::JobKind`, an agent capability and a manifest.
pub mod kinds {
    use super::keys;

    /// One agent type's routing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Route {
        /// The kind's name (`job.kind` in JSON, `--kinds` of the agent).
        pub kind: &'static str,
        /// Its stream.
        pub stream: &'static str,
        /// Its consumer group.
        pub group: &'static str,
    }

    /// Rust builds (`cargo build` + `cargo test`, or `.raibid.yaml` steps): restricted pods.
    pub const RUST: Route = Route {
        kind: "rust",
        stream: keys::JOBS_STREAM,
        group: keys::AGENTS_GROUP,
    };
    /// Container image builds with Buildah: pods with the ADR 0002 exception.
    pub const IMAGE: Route = Route {
        kind: "image",
        stream: keys::IMAGE_JOBS_STREAM,
        group: keys::IMAGE_AGENTS_GROUP,
    };
    /// GPU test jobs (a Rust pipeline on an agent that probed a GPU): pods with `nvidia.com/gpu`.
    pub const GPU: Route = Route {
        kind: "gpu",
        stream: keys::GPU_JOBS_STREAM,
        group: keys::GPU_AGENTS_GROUP,
    };
    /// Every agent type.
    pub const ALL: [Route; 3] = [RUST, IMAGE, GPU];

    /// The route of a kind name.
    pub fn route(kind: &str) -> Option<Route> {
        ALL.into_iter().find(|r| r.kind == kind)
    }
}

/// A node's job stream: `raibid:jobs:node:<node>`.
pub fn node_jobs_stream(node: &str) -> String {
    format!("{}{node}", keys::NODE_JOBS_STREAM_PREFIX)
}

/// A node's warm repositories: `raibid:node:<node>:repos`.
pub fn node_repos_key(node: &str) -> String {
    format!("{}{node}{}", keys::NODE_PREFIX, keys::NODE_REPOS_SUFFIX)
}

/// A node's live agents: `raibid:node:<node>:agents`.
pub fn node_agents_key(node: &str) -> String {
    format!("{}{node}{}", keys::NODE_PREFIX, keys::NODE_AGENTS_SUFFIX)
}

/// Is `node` usable as a node name in keys (a Kubernetes node name: lower-case alphanumerics, `-`
/// and `.`, at most 253 characters)?
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The key a repository is routed by: its URL without user info, scheme and host in lower case, without
/// a trailing `/` or `.git` (the same repository pushed over two spellings of its URL routes alike).
pub fn routing_repo_key(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => (String::new(), url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// Build a job key.
pub fn job_key(id: &str) -> String {
    format!("{}{id}", keys::JOB_PREFIX)
}

/// Build a job's log stream key.
pub fn job_log_key(id: &str) -> String {
    format!("{}{id}{}", keys::JOB_PREFIX, keys::JOB_LOG_SUFFIX)
}

/// Build a delivery de-duplication key.
pub fn delivery_key(forge: &str, delivery_id: &str) -> String {
    format!("{}{forge}:{delivery_id}", keys::DELIVERY_PREFIX)
}

/// Build an agent name-claim key.
pub fn agent_name_claim_key(name: &str) -> String {
    format!("{}{name}", keys::AGENT_NAME_CLAIM_PREFIX)
}

/// Build an agent heartbeat key.
pub fn agent_key(name: &str) -> String {
    format!("{}{name}", keys::AGENT_PREFIX)
}

/// `raibid:jobs:index:status:{status}`.
pub fn job_index_by_status(status: &str) -> String {
    format!("{}{status}", keys::JOB_INDEX_BY_STATUS_PREFIX)
}

/// `raibid:jobs:index:ref:{ref}`.
pub fn job_index_by_ref(git_ref: &str) -> String {
    format!("{}{git_ref}", keys::JOB_INDEX_BY_REF_PREFIX)
}

/// Build a job's diagnostics key.
pub fn job_diagnostics_key(id: &str) -> String {
    format!("{}{id}{}", keys::JOB_PREFIX, keys::JOB_DIAGNOSTICS_SUFFIX)
}

/// Build a job's patch key.
pub fn job_patch_key(id: &str) -> String {
    format!("{}{id}{}", keys::JOB_PREFIX, keys::JOB_PATCH_SUFFIX)
}

/// Build a posted-status marker key: `raibid:status:{forge}:{job id}:{state}`.
pub fn status_posted_key(forge: &str, id: &str, state: &str) -> String {
    format!("{}{forge}:{id}:{state}", keys::STATUS_POSTED_PREFIX)
}

/// Build a job's notification marker key.
pub fn job_notified_key(id: &str) -> String {
    format!("{}{id}{}", keys::JOB_PREFIX, keys::JOB_NOTIFIED_SUFFIX)
}

/// Build a schedule key: `raibid:schedule:{id}`.
pub fn schedule_key(id: &str) -> String {
    format!("{}{id}", keys::SCHEDULE_PREFIX)
}
