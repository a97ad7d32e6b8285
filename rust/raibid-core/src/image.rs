//! Image jobs: the `image` request (what to build, test and publish), its validation, and what the job
//! record keeps of it (per-phase timestamps, the phase that failed, the pushed digests). No I/O here
//! except `request_cleanup` (one Redis command through the queue's shared connection).
//!
//! ```json
//! {"repo_url": "...", "ref": "main", "image": {
//!   "name": "team/app", "containerfile": "Containerfile", "context": ".",
//!   "tags": ["latest"], "build_args": {"VERSION": "1"}, "target": "runtime",
//!   "test": {"commands": ["/app --version", ["/bin/sh", "-c", "test -f /etc/app.toml"]],
//!            "env": {"MODE": "test"}, "timeout": "5m"},
//!   "publish": true, "registry": "gitea.example:3000", "secrets": ["NPM_TOKEN"]}}
//! ```
//!
//! Every value ends up as one argv element of a Buildah call (never in a shell string), and every value
//! is checked here anyway: names follow the OCI distribution spec grammar, tags the tag regex, paths are
//! relative without `..`, keys are environment-variable names, nothing contains NUL or starts with `-`.

use crate::job::Status;
use crate::pipeline::parse_duration;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Default test-phase timeout.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Containerfile names tried, in order, when the request names none.
pub const DEFAULT_CONTAINERFILES: [&str; 2] = ["Containerfile", "Dockerfile"];
/// Most tags, test commands, build args or secrets one request may carry.
pub const MAX_ITEMS: usize = 64;

/// A test command: a string (run as `/bin/sh -c <command>` inside the image, like a pipeline's `run:`)
/// or an argv list (executed directly, for images without a shell).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TestCommand {
    /// `/bin/sh -c <command>` inside the image.
    Shell(String),
    /// An argv executed inside the image.
    Argv(Vec<String>),
}

impl TestCommand {
    /// The argv run inside the container.
    pub fn argv(&self) -> Vec<String> {
        match self {
            TestCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            TestCommand::Argv(a) => a.clone(),
        }
    }

    /// How it is shown in the log.
    pub fn display(&self) -> String {
        match self {
            TestCommand::Shell(s) => s.clone(),
            TestCommand::Argv(a) => format!("{a:?}"),
        }
    }
}

/// A duration as a number of seconds or text (`90s`, `5m`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    /// Seconds.
    Secs(u64),
    /// `90s`, `10m`, `1h30m`.
    Text(String),
}

impl DurationValue {
    fn get(&self) -> Option<Duration> {
        match self {
            DurationValue::Secs(n) => Some(Duration::from_secs(*n)),
            DurationValue::Text(t) => parse_duration(t),
        }
    }
}

/// The `test` part of an image request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageTest {
    /// Commands run one after the other inside the built image; the first non-zero exit fails the job.
    #[serde(default)]
    pub commands: Vec<TestCommand>,
    /// Environment of every test command (`buildah run --env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Timeout of the whole testing phase (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationValue>,
}

fn default_true() -> bool {
    true
}

/// The `image` object of a job request (`POST /api/v1/jobs`, MCP `submit_job`, `.raibid.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    /// Repository path in the registry, e.g. `team/app` (OCI distribution name grammar).
    pub name: String,
    /// Containerfile path relative to the repository (default `Containerfile`, then `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerfile: Option<String>,
    /// Build context relative to the repository (default `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Tags (default: the short commit sha and the sanitised branch name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// `--build-arg KEY=VALUE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// Target stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Test commands run inside the built image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<ImageTest>,
    /// Push after build and tests succeeded (default true).
    #[serde(default = "default_true")]
    pub publish: bool,
    /// Registry host (and optional namespace), default the agent's configured registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Names of build secrets (`buildah build --secret id=<NAME>`); the values come from the agent's
    /// `RAIBID_SECRET_<NAME>`, never from the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// Where image jobs may push, and under which names (issue 17 §1, §2). Checked at submit (REST, MCP),
/// when a `.raibid.yaml` hands a job over to the image pool, and again by the image agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPolicy {
    /// The installation's registry (`RAIBID_REGISTRY`, `host[:port][/namespace]`): the only host the
    /// agent's user name and password are ever sent to.
    pub default: Option<String>,
    /// Other registries a request may name (`RAIBID_REGISTRY_ALLOWED`, `host[:port]` each); their
    /// credentials, if any, are only their own entry of the agent's auth file.
    pub allowed: Vec<String>,
    /// First path components no job may push under (`RAIBID_REGISTRY_RESERVED_NAMESPACES`); `raibid`
    /// (the installation's own images) is always among them.
    pub reserved: Vec<String>,
}

impl Default for RegistryPolicy {
    fn default() -> RegistryPolicy {
        RegistryPolicy {
            default: None,
            allowed: Vec::new(),
            reserved: vec![RESERVED_NAMESPACE.to_string()],
        }
    }
}

/// The namespace of raibid's own images, always reserved.
pub const RESERVED_NAMESPACE: &str = "raibid";

impl RegistryPolicy {
    /// From the configuration values: the registry, and comma-separated allowed registries and reserved
    /// namespaces (`raibid` is added when missing).
    pub fn from_lists(default: Option<&str>, allowed: &str, reserved: &str) -> RegistryPolicy {
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect()
        };
        let mut reserved = list(reserved);
        if !reserved.iter().any(|r| r == RESERVED_NAMESPACE) {
            reserved.push(RESERVED_NAMESPACE.to_string());
        }
        RegistryPolicy {
            default: default
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            allowed: list(allowed),
            reserved,
        }
    }

    /// The host (`host[:port]`, lower case) of a registry value `host[:port][/namespace]`.
    pub fn host_of(registry: &str) -> String {
        registry
            .split('/')
            .next()
            .unwrap_or(registry)
            .to_ascii_lowercase()
    }

    /// The registries a request may name, for messages: `a (RAIBID_REGISTRY), b, c (RAIBID_REGISTRY_ALLOWED)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.default {
            parts.push(format!(
                "{} ({})",
                Self::host_of(d),
                crate::contract::env::REGISTRY
            ));
        }
        if !self.allowed.is_empty() {
            parts.push(format!(
                "{} ({})",
                self.allowed.join(", "),
                crate::contract::env::REGISTRY_ALLOWED
            ));
        }
        if parts.is_empty() {
            format!(
                "none: leave image.registry out (the agents push to their {}), or list the registry in {}",
                crate::contract::env::REGISTRY,
                crate::contract::env::REGISTRY_ALLOWED
            )
        } else {
            parts.join(", ")
        }
    }

    /// May a request name this registry? The configured one's host and the allowed hosts.
    pub fn allows_registry(&self, registry: &str) -> bool {
        let host = Self::host_of(registry);
        self.default
            .as_deref()
            .is_some_and(|d| Self::host_of(d) == host)
            || self.allowed.iter().any(|a| Self::host_of(a.trim()) == host)
    }

    /// Is `registry` the configured registry's host (the one that gets the agent's user and password)?
    pub fn is_default_host(&self, registry: &str) -> bool {
        self.default
            .as_deref()
            .is_some_and(|d| Self::host_of(d) == Self::host_of(registry))
    }

    /// Check a request of a job of `repo_url`: its registry is allowed, and the repository path it
    /// pushes to (`<registry namespace>/<name>`) starts with the repository's owner and is not reserved.
    pub fn check(&self, req: &ImageRequest, repo_url: &str) -> Result<(), ImageError> {
        if !req.publish {
            // Nothing is pushed and no credentials are written: the image stays local under the job's id.
            return Ok(());
        }
        if let Some(r) = &req.registry {
            if !self.allows_registry(r) {
                return Err(err(
                    "image.registry",
                    format!(
                        "`{r}` is not a registry jobs may push to (registry credentials go to the configured registry only); allowed: {}",
                        self.describe()
                    ),
                ));
            }
        }
        let registry = req.registry.as_deref().or(self.default.as_deref());
        let namespace = registry.and_then(|r| r.split_once('/').map(|(_, ns)| ns.to_string()));
        let path = match &namespace {
            Some(ns) => format!("{ns}/{}", req.name),
            None => req.name.clone(),
        };
        let first = path.split('/').next().unwrap_or("");
        if self
            .reserved
            .iter()
            .any(|r| r.trim().eq_ignore_ascii_case(first))
        {
            return Err(err(
                "image.name",
                format!(
                    "`{first}/` is reserved for the installation's own images ({}); a job pushes only under its repository owner's namespace",
                    crate::contract::env::REGISTRY_RESERVED_NAMESPACES
                ),
            ));
        }
        if let Some(owner) = repo_owner(repo_url) {
            if !first.eq_ignore_ascii_case(&owner) || !path.contains('/') {
                return Err(err(
                    "image.name",
                    format!(
                        "a job of a repository of `{owner}` pushes only under `{owner}/` (e.g. `{owner}/{}`); `{path}` is outside it",
                        req.name.rsplit('/').next().unwrap_or("app")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The owner of a repository clone URL, lower case: the first path component of `https://host/owner/repo`,
/// `ssh://git@host/owner/repo` or `git@host:owner/repo`. `None` for `file://` and paths (local mode: no
/// forge owner; only the reserved namespaces apply) and for URLs without an `owner/repo` path.
pub fn repo_owner(repo_url: &str) -> Option<String> {
    let path = match url::Url::parse(repo_url) {
        Ok(u) if u.scheme() == "file" => return None,
        Ok(u) if u.host_str().is_some() => u.path().to_string(),
        Ok(_) => return None,
        Err(_) => {
            let (left, right) = repo_url.split_once(':')?;
            if left.contains('/') || left.is_empty() {
                return None;
            }
            right.to_string()
        }
    };
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let owner = parts.next()?;
    parts.next()?;
    Some(owner.to_ascii_lowercase())
}

/// A bad value in an image request, naming the field (`image.tags[1]: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ImageError {
    /// The field path, e.g. `image.name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ImageError {
    ImageError {
        field: field.into(),
        message: message.into(),
    }
}

/// One path component of an OCI repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_name_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`, followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_lower_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An OCI distribution repository name: components joined by `/`, at most 255 characters.
pub fn valid_repository_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_name_component)
}

/// An OCI tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A registry: `host[:port]` (DNS name or IPv4), optionally followed by `/namespace` components.
pub fn valid_registry(r: &str) -> bool {
    let (hostport, ns) = match r.split_once('/') {
        Some((h, n)) => (h, Some(n)),
        None => (r, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok && ns.is_none_or(valid_repository_name)
}

/// An environment variable / build-arg / secret name.
pub fn valid_env_key(s: &str) -> bool {
    let mut b = s.bytes();
    s.len() <= 128
        && matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A relative path inside the repository: not empty, not absolute, no `..` component, no NUL, no
/// leading `-`, at most 1024 bytes. `.` is the repository root.
pub fn valid_relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && !p.starts_with('-')
        && !p.contains('\0')
        && !p.chars().any(char::is_control)
        && p.split('/').all(|c| c != "..")
}

/// A build stage name.
fn valid_stage(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn check_value(field: &str, v: &str) -> Result<(), ImageError> {
    if v.contains('\0') {
        return Err(err(field, "contains a NUL byte"));
    }
    if v.len() > 64 * 1024 {
        return Err(err(field, "longer than 64 KiB"));
    }
    Ok(())
}

impl ImageRequest {
    /// Parse a JSON value (unknown fields are refused, naming the field).
    pub fn from_json(v: serde_json::Value) -> Result<ImageRequest, ImageError> {
        let r: ImageRequest = serde_json::from_value(v).map_err(|e| err("image", e.to_string()))?;
        r.validate()?;
        Ok(r)
    }

    /// Check every value; the error names the field (`image.tags[0]`).
    pub fn validate(&self) -> Result<(), ImageError> {
        if !valid_repository_name(&self.name) {
            return Err(err(
                "image.name",
                format!(
                    "`{}` is not a repository name: lowercase components of [a-z0-9] separated by `.`, `_`, `__` or `-`, joined by `/` (OCI distribution spec), at most 255 characters",
                    self.name
                ),
            ));
        }
        if let Some(c) = &self.containerfile {
            if !valid_relative_path(c) || c == "." {
                return Err(err(
                    "image.containerfile",
                    format!("`{c}` must be a relative file path inside the repository (no `..`, not absolute)"),
                ));
            }
        }
        if let Some(c) = &self.context {
            if !valid_relative_path(c) {
                return Err(err(
                    "image.context",
                    format!("`{c}` must be a relative directory inside the repository (no `..`, not absolute)"),
                ));
            }
        }
        if self.tags.len() > MAX_ITEMS {
            return Err(err("image.tags", format!("at most {MAX_ITEMS} tags")));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if !valid_tag(t) {
                return Err(err(
                    format!("image.tags[{i}]"),
                    format!("`{t}` is not a tag: [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"),
                ));
            }
            if self.tags[..i].contains(t) {
                return Err(err(
                    format!("image.tags[{i}]"),
                    format!("`{t}` is listed twice"),
                ));
            }
        }
        if self.build_args.len() > MAX_ITEMS {
            return Err(err(
                "image.build_args",
                format!("at most {MAX_ITEMS} build args"),
            ));
        }
        for (k, v) in &self.build_args {
            if !valid_env_key(k) {
                return Err(err(
                    format!("image.build_args.{k}"),
                    "not a valid build-arg name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            check_value(&format!("image.build_args.{k}"), v)?;
        }
        if let Some(t) = &self.target {
            if !valid_stage(t) {
                return Err(err(
                    "image.target",
                    format!("`{t}` is not a stage name ([A-Za-z0-9][A-Za-z0-9_.-]*)"),
                ));
            }
        }
        if let Some(test) = &self.test {
            if test.commands.len() > MAX_ITEMS {
                return Err(err(
                    "image.test.commands",
                    format!("at most {MAX_ITEMS} commands"),
                ));
            }
            for (i, c) in test.commands.iter().enumerate() {
                let f = format!("image.test.commands[{i}]");
                match c {
                    TestCommand::Shell(s) if s.trim().is_empty() => {
                        return Err(err(f, "must not be empty"))
                    }
                    TestCommand::Argv(a) if a.is_empty() || a[0].is_empty() => {
                        return Err(err(f, "must not be empty"))
                    }
                    TestCommand::Argv(a) if a[0].starts_with('-') => {
                        return Err(err(f, "the program must not start with `-`"))
                    }
                    _ => {}
                }
                for part in c.argv() {
                    check_value(&f, &part)?;
                }
            }
            for (k, v) in &test.env {
                if !valid_env_key(k) {
                    return Err(err(
                        format!("image.test.env.{k}"),
                        "not a valid environment variable name",
                    ));
                }
                check_value(&format!("image.test.env.{k}"), v)?;
            }
            if let Some(t) = &test.timeout {
                match t.get() {
                    Some(d) if !d.is_zero() => {}
                    _ => {
                        return Err(err(
                            "image.test.timeout",
                            "must be a duration greater than zero (seconds, or e.g. 90s, 10m)",
                        ))
                    }
                }
            }
        }
        if let Some(r) = &self.registry {
            if !valid_registry(r) {
                return Err(err(
                    "image.registry",
                    format!("`{r}` is not a registry (host[:port][/namespace])"),
                ));
            }
        }
        if self.secrets.len() > MAX_ITEMS {
            return Err(err("image.secrets", format!("at most {MAX_ITEMS} secrets")));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            if !valid_env_key(s) {
                return Err(err(
                    format!("image.secrets[{i}]"),
                    format!("`{s}` is not a secret name ([A-Za-z_][A-Za-z0-9_]*); values come from the agent, never from the request"),
                ));
            }
        }
        Ok(())
    }

    /// The testing phase's timeout.
    pub fn test_timeout(&self) -> Duration {
        self.test
            .as_ref()
            .and_then(|t| t.timeout.as_ref())
            .and_then(DurationValue::get)
            .unwrap_or(DEFAULT_TEST_TIMEOUT)
    }

    /// The tags to push: the requested ones, or the short sha and the sanitised branch name.
    pub fn effective_tags(&self, sha: Option<&str>, git_ref: &str) -> Vec<String> {
        if !self.tags.is_empty() {
            return self.tags.clone();
        }
        let mut tags = Vec::new();
        if let Some(s) = sha.filter(|s| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
            tags.push(s[..12].to_ascii_lowercase());
        }
        if let Some(b) = sanitise_tag(git_ref) {
            if !tags.contains(&b) {
                tags.push(b);
            }
        }
        if tags.is_empty() {
            tags.push("latest".into());
        }
        tags
    }
}

/// A branch or tag ref as an image tag: `refs/heads/feature/x` → `feature-x`; characters outside
/// `[A-Za-z0-9_.-]` become `-`, leading `.`/`-` are dropped, at most 128 characters.
pub fn sanitise_tag(git_ref: &str) -> Option<String> {
    let short = git_ref
        .strip_prefix("refs/heads/")
        .or_else(|| git_ref.strip_prefix("refs/tags/"))
        .unwrap_or(git_ref);
    let mut s: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s = s.trim_start_matches(['.', '-']).to_string();
    s.truncate(128);
    if valid_tag(&s) {
        Some(s)
    } else {
        None
    }
}

/// A phase of an image job (after `clone`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `buildah build`.
    Building,
    /// `buildah from` + `buildah run` of each test command.
    Testing,
    /// `buildah push` of each tag.
    Publishing,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [Phase::Building, Phase::Testing, Phase::Publishing];

    /// The name: also the log lines' `step` and the job's status while it runs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Building => "building",
            Phase::Testing => "testing",
            Phase::Publishing => "publishing",
        }
    }

    /// The job status while this phase runs.
    pub fn status(self) -> Status {
        match self {
            Phase::Building => Status::Building,
            Phase::Testing => Status::Testing,
            Phase::Publishing => Status::Publishing,
        }
    }
}

/// When a phase started and finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// Started.
    pub started: Option<DateTime<Utc>>,
    /// Finished (any outcome).
    pub finished: Option<DateTime<Utc>>,
}

/// Per-phase timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// `building`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<PhaseTime>,
    /// `testing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing: Option<PhaseTime>,
    /// `publishing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publishing: Option<PhaseTime>,
}

impl PhaseTimes {
    /// The slot of a phase.
    pub fn get_mut(&mut self, p: Phase) -> &mut Option<PhaseTime> {
        match p {
            Phase::Building => &mut self.building,
            Phase::Testing => &mut self.testing,
            Phase::Publishing => &mut self.publishing,
        }
    }
}

/// One pushed reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// `<registry>/<name>:<tag>`.
    pub reference: String,
    /// The manifest digest the registry stored (`sha256:…`).
    pub digest: String,
}

/// What an image job's record keeps: the request and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageJob {
    /// The validated request.
    pub request: ImageRequest,
    /// Per-phase timestamps.
    #[serde(default)]
    pub phases: PhaseTimes,
    /// The phase that failed, timed out or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_phase: Option<Phase>,
    /// The built image's id, once built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Every pushed reference with its digest.
    #[serde(default)]
    pub pushed: Vec<Pushed>,
}

impl ImageJob {
    /// A fresh record of a request.
    pub fn new(request: ImageRequest) -> ImageJob {
        ImageJob {
            request,
            phases: PhaseTimes::default(),
            failed_phase: None,
            image_id: None,
            pushed: Vec::new(),
        }
    }
}

/// The local (agent-side) image reference of a job: `localhost/raibid-job/<id lowercase>:latest`.
pub fn local_reference(job_id: &str) -> String {
    format!(
        "localhost/raibid-job/{}:latest",
        job_id.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> Result<ImageRequest, ImageError> {
        ImageRequest::from_json(v)
    }

    #[test]
    fn defaults() {
        let r = req(json!({"name": "team/app"})).unwrap();
        assert!(r.publish);
        assert_eq!(r.containerfile, None);
        assert_eq!(r.test_timeout(), DEFAULT_TEST_TIMEOUT);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            r.effective_tags(Some(sha), "refs/heads/feature/x y"),
            vec!["0123456789ab".to_string(), "feature-x-y".to_string()]
        );
        assert_eq!(r.effective_tags(None, "refs/tags/v1.2"), vec!["v1.2"]);
        assert_eq!(sanitise_tag("refs/heads/.-x"), Some("x".into()));
        assert_eq!(sanitise_tag("refs/heads/---"), None);
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        for ok in ["a", "team/app", "a.b_c__d---e/f0", "x9/y-z"] {
            assert!(valid_repository_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a_",
            "a___b",
            "a..b",
            "-a",
            "x; touch /tmp/pwned",
            "a b",
            "a:b",
            "../a",
            "a$(id)",
        ] {
            assert!(!valid_repository_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.2.3_rc-1"));
        assert!(!valid_tag(".x") && !valid_tag("-x") && !valid_tag("a;b") && !valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)));
        assert!(valid_registry("127.0.0.1:5000") && valid_registry("gitea.local:3000/ns"));
        assert!(!valid_registry("http://x") && !valid_registry("x:y") && !valid_registry("-x"));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (json!({"name": "x; touch /tmp/pwned"}), "image.name"),
            (
                json!({"name": "a", "tags": ["ok", "no way"]}),
                "image.tags[1]",
            ),
            (json!({"name": "a", "tags": ["x", "x"]}), "image.tags[1]"),
            (
                json!({"name": "a", "containerfile": "../etc/passwd"}),
                "image.containerfile",
            ),
            (
                json!({"name": "a", "containerfile": "/etc/passwd"}),
                "image.containerfile",
            ),
            (json!({"name": "a", "context": "a/../.."}), "image.context"),
            (json!({"name": "a", "context": "--root=/"}), "image.context"),
            (
                json!({"name": "a", "build_args": {"A B": "1"}}),
                "image.build_args.A B",
            ),
            (
                json!({"name": "a", "build_args": {"A": "x\u{0}"}}),
                "image.build_args.A",
            ),
            (json!({"name": "a", "target": "--x"}), "image.target"),
            (
                json!({"name": "a", "test": {"commands": [""]}}),
                "image.test.commands[0]",
            ),
            (
                json!({"name": "a", "test": {"commands": [[]]}}),
                "image.test.commands[0]",
            ),
            (
                json!({"name": "a", "test": {"env": {"1X": "a"}}}),
                "image.test.env.1X",
            ),
            (
                json!({"name": "a", "test": {"timeout": "soon"}}),
                "image.test.timeout",
            ),
            (
                json!({"name": "a", "test": {"timeout": 0}}),
                "image.test.timeout",
            ),
            (
                json!({"name": "a", "registry": "http://evil"}),
                "image.registry",
            ),
            (json!({"name": "a", "secrets": ["A=B"]}), "image.secrets[0]"),
        ];
        for (v, field) in cases {
            let e = req(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v} → {e}");
        }
        let e = req(json!({"name": "a", "tgas": []})).unwrap_err();
        assert!(e.to_string().contains("tgas"), "{e}");
        let e = req(json!({"name": "a", "test": {"comands": []}})).unwrap_err();
        assert!(e.to_string().contains("comands"), "{e}");
        let e = req(json!({"name": "a", "publish": "yes"})).unwrap_err();
        assert!(
            e.to_string().contains("publish") || e.to_string().contains("boolean"),
            "{e}"
        );
    }

    #[test]
    fn test_commands_are_strings_or_argv() {
        let r = req(json!({"name": "a", "test": {"commands": ["cat /msg", ["/bin/true"]], "timeout": "90s"}}))
            .unwrap();
        let t = r.test.clone().unwrap();
        assert_eq!(t.commands[0].argv(), vec!["/bin/sh", "-c", "cat /msg"]);
        assert_eq!(t.commands[1].argv(), vec!["/bin/true"]);
        assert_eq!(r.test_timeout(), Duration::from_secs(90));
    }

    #[test]
    fn registry_policy_allows_the_configured_and_allowed_hosts_and_the_owner_namespace() {
        let p = RegistryPolicy {
            default: Some("git.test:3000".into()),
            allowed: vec!["ghcr.io".into()],
            ..RegistryPolicy::default()
        };
        let r = |v: serde_json::Value| req(v).unwrap();
        let repo = "https://git.test/Acme/app.git";
        assert!(p.check(&r(json!({"name": "acme/app"})), repo).is_ok());
        assert!(p
            .check(
                &r(json!({"name": "acme/app", "registry": "GIT.test:3000"})),
                repo
            )
            .is_ok());
        assert!(p
            .check(&r(json!({"name": "app", "registry": "ghcr.io/acme"})), repo)
            .is_ok());
        let e = p
            .check(
                &r(json!({"name": "acme/app", "registry": "evil.example"})),
                repo,
            )
            .unwrap_err();
        assert_eq!(e.field, "image.registry");
        assert!(
            e.message.contains("git.test:3000") && e.message.contains("ghcr.io"),
            "{e}"
        );
        // Same host, another port: another registry.
        assert!(p
            .check(
                &r(json!({"name": "acme/app", "registry": "git.test:3001"})),
                repo
            )
            .is_err());
        for (name, registry) in [
            ("raibid/raibid-agent", None),
            ("raibid-agent", Some("git.test:3000/raibid")),
            ("other/app", None),
            ("app", None),
        ] {
            let mut v = json!({"name": name});
            if let Some(reg) = registry {
                v["registry"] = json!(reg);
            }
            let e = p.check(&r(v), repo).unwrap_err();
            assert_eq!(e.field, "image.name", "{name}: {e}");
        }
        // Not published: nothing to check.
        assert!(p
            .check(
                &r(json!({"name": "other/app", "registry": "evil.example", "publish": false})),
                repo
            )
            .is_ok());
        // Local mode (file://): no owner, only the reserved namespaces.
        assert!(p
            .check(&r(json!({"name": "team/app"})), "file:///srv/r")
            .is_ok());
        assert!(p
            .check(&r(json!({"name": "raibid/x"})), "file:///srv/r")
            .is_err());
        assert_eq!(repo_owner("git@h:Owner/r.git").as_deref(), Some("owner"));
        assert_eq!(repo_owner("ssh://git@h:22/o/r").as_deref(), Some("o"));
        assert_eq!(repo_owner("https://h/r.git"), None);
        assert_eq!(repo_owner("file:///a/b/c"), None);
    }

    #[test]
    fn record_round_trips() {
        let mut j = ImageJob::new(req(json!({"name": "a"})).unwrap());
        j.failed_phase = Some(Phase::Testing);
        *j.phases.get_mut(Phase::Building) = Some(PhaseTime::default());
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["failed_phase"], "testing");
        let back: ImageJob = serde_json::from_value(v).unwrap();
        assert_eq!(back, j);
        assert_eq!(
            local_reference("01JABC"),
            "localhost/raibid-job/01jabc:latest"
        );
    }
}
