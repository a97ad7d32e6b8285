//! Build artifacts (issue 23 §2): the `.raibid.yaml` `artifacts:` section, the per-job caps, where in
//! the registry a job's artifacts go (the same namespace rule as images, ADR 0012) and what the job
//! record keeps of them. No I/O here.
//!
//! ```yaml
//! artifacts:
//!   paths: [target/release/mytool, "dist/*.tar.gz"]
//!   when: success        # or `always` (also after a failed step); default success
//! ```
//!
//! A list is short for `paths:` with `when: success` (`artifacts: [target/release/mytool]`). Paths are
//! relative to the job's workspace (the checkout); `target/…` is looked up in the job's target directory
//! (`CARGO_TARGET_DIR`, which lives in the node cache, not in the checkout). A pattern component may use
//! `*` and `?` (within one name) and a whole component `**` (any depth). Absolute paths, `..`, empty
//! components and control characters are refused here; symlinks are never followed when the agent reads
//! the files (a symlink named by a pattern is refused, one met while matching is skipped).

use crate::image::{repo_owner, RegistryPolicy};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most patterns one `artifacts:` section may list.
pub const MAX_PATTERNS: usize = 64;
/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Default per-job cap on the artifacts' total size (`RAIBID_ARTIFACTS_MAX_BYTES`).
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Default per-job cap on the number of artifact files (`RAIBID_ARTIFACTS_MAX_COUNT`).
pub const DEFAULT_MAX_COUNT: u64 = 100;
/// The name of the agent's step that uploads them.
pub const STEP: &str = "artifacts";
/// The OCI `artifactType` of a job's artifact manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.raibid.artifacts.v1+json";
/// Media type of each file's layer (bytes as they are).
pub const FILE_MEDIA_TYPE: &str = "application/octet-stream";
/// Annotation keys on the manifest.
pub const ANNOTATION_JOB: &str = "dev.raibid.job";
/// The commit the files were built from.
pub const ANNOTATION_COMMIT: &str = "dev.raibid.commit";
/// JSON array of `{name, size, digest}` (the files' SHA-256 digests).
pub const ANNOTATION_FILES: &str = "dev.raibid.files";
/// Standard OCI title annotation on each layer: the file's path relative to the workspace.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// When the artifacts are uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Only when every step succeeded.
    #[default]
    Success,
    /// Also after a failed or timed-out step (not after a cancel).
    Always,
}

/// The validated `artifacts:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSpec {
    /// Patterns relative to the workspace.
    pub paths: Vec<String>,
    /// When to upload.
    pub when: When,
}

/// `artifacts:` as written: a list of paths, or `{paths, when}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawArtifacts {
    /// `artifacts: [a, b]`.
    List(Vec<String>),
    /// `artifacts: {paths: [a], when: always}`.
    Full(RawFull),
}

/// The object form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFull {
    paths: Vec<String>,
    #[serde(default)]
    when: Option<String>,
}

impl ArtifactSpec {
    /// Validate the section; the error names the key (`artifacts.paths[1]: …`).
    pub fn from_raw(raw: RawArtifacts) -> Result<ArtifactSpec, String> {
        let (paths, when) = match raw {
            RawArtifacts::List(p) => (p, When::Success),
            RawArtifacts::Full(f) => {
                let when = match f.when.as_deref() {
                    None | Some("success") => When::Success,
                    Some("always") => When::Always,
                    Some(o) => {
                        return Err(format!(
                            "artifacts.when: `{o}` is not `success` or `always`"
                        ))
                    }
                };
                (f.paths, when)
            }
        };
        if paths.is_empty() {
            return Err("artifacts.paths: list at least one path".into());
        }
        if paths.len() > MAX_PATTERNS {
            return Err(format!("artifacts.paths: at most {MAX_PATTERNS} paths"));
        }
        for (i, p) in paths.iter().enumerate() {
            check_pattern(p).map_err(|e| format!("artifacts.paths[{i}]: `{p}` {e}"))?;
        }
        Ok(ArtifactSpec { paths, when })
    }
}

/// Is `p` an acceptable pattern? Relative, no `..`, no empty or `.` component, printable, bounded.
pub fn check_pattern(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("is empty");
    }
    if p.len() > MAX_PATTERN_BYTES {
        return Err("is longer than 1024 bytes");
    }
    if p.starts_with('/') {
        return Err("is absolute; paths are relative to the workspace");
    }
    if p.chars().any(char::is_control) || p.contains('\\') {
        return Err("contains a control character or a backslash");
    }
    for c in p.split('/') {
        match c {
            ".." => return Err("leaves the workspace (`..`)"),
            "" | "." => return Err("has an empty or `.` component"),
            _ => {}
        }
        if c.contains("**") && c != "**" {
            return Err("uses `**` inside a name (only a whole component `**` means any depth)");
        }
    }
    Ok(())
}

/// Does the name `s` match one pattern component (`*` any run, `?` one character)?
pub fn component_matches(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while j < t.len() {
        if i < p.len() && (p[i] == '?' || p[i] == t[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

/// Is this component a pattern (`*`, `?`) rather than a plain name?
pub fn is_glob(component: &str) -> bool {
    component.contains('*') || component.contains('?')
}

/// Per-job caps, from the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Total bytes of one job's artifacts.
    pub max_bytes: u64,
    /// Files of one job.
    pub max_count: u64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            max_bytes: DEFAULT_MAX_BYTES,
            max_count: DEFAULT_MAX_COUNT,
        }
    }
}

/// One uploaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Artifact {
    /// Path relative to the workspace (`target/release/mytool`).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the bytes (the blob's digest in the registry).
    pub digest: String,
}

/// A job's uploaded artifacts, as the job record keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactSet {
    /// `host[:port]/<repository>@sha256:…`: the manifest holding every file as a layer.
    pub reference: String,
    /// The registry's host (`host[:port]`).
    pub registry: String,
    /// The repository path in the registry (`<owner>/<repo>/artifacts`).
    pub repository: String,
    /// The tag (the job id).
    pub tag: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The files, in upload order.
    pub files: Vec<Artifact>,
    /// When the upload finished.
    pub uploaded: DateTime<Utc>,
}

impl ArtifactSet {
    /// The file called `name`.
    pub fn file(&self, name: &str) -> Option<&Artifact> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// One OCI repository name component from free text: lower case, `[a-z0-9]` runs joined by `-`.
fn component(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "repo".into()
    } else {
        out.chars().take(64).collect()
    }
}

/// The repository name of a clone URL (its last path component without `.git`).
fn repo_name(repo_url: &str) -> String {
    let t = repo_url.trim_end_matches('/');
    let last = t.rsplit(['/', ':']).next().unwrap_or(t);
    component(last.strip_suffix(".git").unwrap_or(last))
}

/// Where a job of `repo_url` uploads its artifacts: `(registry host, repository path)`. The path is
/// `<owner>/<repo>/artifacts` for a forge repository (the owner's namespace, as image pushes — ADR 0012),
/// `<registry namespace or local>/<repo>/artifacts` for a repository without an owner (`file://`, local
/// mode). Reserved namespaces (`raibid` always) are refused.
pub fn destination(policy: &RegistryPolicy, repo_url: &str) -> Result<(String, String), String> {
    let Some(registry) = policy.default.as_deref() else {
        return Err(format!(
            "no registry is configured for artifacts (set {} on the agent)",
            crate::contract::env::REGISTRY
        ));
    };
    let host = RegistryPolicy::host_of(registry);
    let name = repo_name(repo_url);
    let path = match repo_owner(repo_url) {
        Some(owner) => format!("{}/{name}/artifacts", component(&owner)),
        None => {
            let ns = registry
                .split_once('/')
                .map(|(_, ns)| ns.to_string())
                .unwrap_or_else(|| "local".into());
            format!("{ns}/{name}/artifacts")
        }
    };
    let first = path.split('/').next().unwrap_or("");
    if policy
        .reserved
        .iter()
        .any(|r| r.trim().eq_ignore_ascii_case(first))
    {
        return Err(format!(
            "`{first}/` is reserved for the installation's own images ({}); artifacts go under the repository owner's namespace",
            crate::contract::env::REGISTRY_RESERVED_NAMESPACES
        ));
    }
    if !crate::image::valid_repository_name(&path) {
        return Err(format!("`{path}` is not a valid registry repository name"));
    }
    Ok((host, path))
}

/// Where the registry credentials come from (the agents' and the dispatcher's `RAIBID_REGISTRY_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialSources {
    /// A containers auth file (`auth.json`): only the entry of the registry's host is used.
    pub auth_file: Option<std::path::PathBuf>,
    /// User name (with the password).
    pub username: Option<String>,
    /// The password from the environment (`RAIBID_REGISTRY_PASSWORD`).
    pub password: Option<String>,
    /// The password's file (`RAIBID_REGISTRY_PASSWORD_FILE`).
    pub password_file: Option<std::path::PathBuf>,
}

impl CredentialSources {
    /// `(user, password)` for `host` (`host[:port]`), `None` for anonymous access. The user name and
    /// password go only to `default_host` (the installation's registry, ADR 0012); from the auth file only
    /// the entry of `host`.
    pub fn for_host(
        &self,
        host: &str,
        default_host: &str,
    ) -> Result<Option<(String, String)>, String> {
        if let Some(src) = &self.auth_file {
            let data = std::fs::read(src)
                .map_err(|e| format!("registry auth file {}: {e}", src.display()))?;
            let doc: serde_json::Value = serde_json::from_slice(&data)
                .map_err(|e| format!("registry auth file {}: not JSON: {e}", src.display()))?;
            let Some(all) = doc.get("auths").and_then(|a| a.as_object()) else {
                return Ok(None);
            };
            for (k, v) in all {
                let key = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                if RegistryPolicy::host_of(key) != host.to_ascii_lowercase() {
                    continue;
                }
                let Some(a) = v.get("auth").and_then(|a| a.as_str()) else {
                    continue;
                };
                let decoded = base64_decode(a)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        format!("registry auth file {}: the entry of {host} is not base64 user:password", src.display())
                    })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    format!(
                        "registry auth file {}: the entry of {host} is not user:password",
                        src.display()
                    )
                })?;
                return Ok(Some((u.to_string(), p.to_string())));
            }
            return Ok(None);
        }
        let password = crate::secret_source::SecretSource {
            what: crate::contract::env::REGISTRY_PASSWORD_FILE,
            value: self.password.as_deref(),
            file: self.password_file.as_deref(),
        }
        .load()
        .map_err(|e| e.to_string())?;
        match (&self.username, password) {
            (Some(u), Some(p)) if host.eq_ignore_ascii_case(default_host) => {
                Ok(Some((u.clone(), p)))
            }
            (Some(_), Some(_)) => Ok(None),
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "registry credentials need both {} and {} (or {})",
                crate::contract::env::REGISTRY_USERNAME,
                crate::contract::env::REGISTRY_PASSWORD,
                crate::contract::env::REGISTRY_PASSWORD_FILE
            )),
            (None, None) => Ok(None),
        }
    }
}

/// Standard base64 (with or without padding) to bytes; `None` when it is not base64.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim().bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// The index member of an uploaded set (`raibid:artifacts`): `<job id> <host>/<repository>@<digest>`.
pub fn index_member(job_id: &str, set: &ArtifactSet) -> String {
    format!(
        "{job_id} {}/{}@{}",
        set.registry, set.repository, set.manifest_digest
    )
}

/// Split an index member into (job id, host, repository, manifest digest).
pub fn parse_index_member(m: &str) -> Option<(String, String, String, String)> {
    let (id, rest) = m.split_once(' ')?;
    let (hostrepo, digest) = rest.split_once('@')?;
    let (host, repo) = hostrepo.split_once('/')?;
    if !crate::job::is_valid_job_id(id)
        || !crate::image::valid_repository_name(repo)
        || !digest.starts_with("sha256:")
    {
        return None;
    }
    Some((id.into(), host.into(), repo.into(), digest.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Result<ArtifactSpec, String> {
        let raw: RawArtifacts = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        ArtifactSpec::from_raw(raw)
    }

    #[test]
    fn both_forms_parse() {
        let s = spec("[target/release/tool]").unwrap();
        assert_eq!(s.paths, ["target/release/tool"]);
        assert_eq!(s.when, When::Success);
        let s = spec("{paths: ['dist/*.tar.gz', 'out/**/x'], when: always}").unwrap();
        assert_eq!(s.when, When::Always);
        assert_eq!(s.paths.len(), 2);
    }

    #[test]
    fn escaping_paths_are_refused_naming_the_entry() {
        for (p, why) in [
            ("/etc/passwd", "absolute"),
            ("../x", ".."),
            ("a/../../x", ".."),
            ("a//b", "empty"),
            ("./a", "`.`"),
            ("a/b**c", "**"),
            ("a\u{1b}b", "control"),
        ] {
            let e = ArtifactSpec::from_raw(RawArtifacts::List(vec!["ok".into(), p.into()]))
                .unwrap_err();
            assert!(
                e.contains("artifacts.paths[1]") && e.contains(why),
                "{p}: {e}"
            );
        }
        assert!(spec("{paths: []}").unwrap_err().contains("at least one"));
        assert!(spec("{paths: [a], when: sometimes}")
            .unwrap_err()
            .contains("artifacts.when"));
        assert!(spec("{paths: [a], wehn: always}").is_err());
    }

    #[test]
    fn wildcards() {
        assert!(component_matches("*.tar.gz", "a.tar.gz"));
        assert!(!component_matches("*.tar.gz", "a.tar.gzx"));
        assert!(component_matches("tool-?", "tool-1"));
        assert!(!component_matches("tool-?", "tool-12"));
        assert!(component_matches("*", ".hidden"));
        assert!(component_matches("a*b*c", "aXXbYYc"));
        assert!(!component_matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn destinations_follow_the_image_namespace_rule() {
        let p = RegistryPolicy::from_lists(Some("git.test:3000"), "", "raibid");
        assert_eq!(
            destination(&p, "https://git.test/Acme/My_Tool.git").unwrap(),
            ("git.test:3000".into(), "acme/my-tool/artifacts".into())
        );
        assert_eq!(
            destination(&p, "file:///tmp/x/demo").unwrap().1,
            "local/demo/artifacts"
        );
        let e = destination(&p, "https://git.test/raibid/raibid-ci").unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let ns = RegistryPolicy::from_lists(Some("127.0.0.1:5000/ci"), "", "");
        assert_eq!(
            destination(&ns, "file:///r/app").unwrap().1,
            "ci/app/artifacts"
        );
        assert!(destination(&RegistryPolicy::default(), "file:///r").is_err());
    }

    #[test]
    fn credentials_go_only_to_the_configured_host() {
        let d = tempfile::tempdir().unwrap();
        let c = CredentialSources {
            username: Some("push".into()),
            password: Some("s3cret".into()),
            ..CredentialSources::default()
        };
        assert_eq!(
            c.for_host("reg:5000", "reg:5000").unwrap(),
            Some(("push".into(), "s3cret".into()))
        );
        assert_eq!(c.for_host("evil:5000", "reg:5000").unwrap(), None);
        let f = d.path().join("auth.json");
        // "a:b" and "c:d"
        std::fs::write(
            &f,
            r#"{"auths": {"reg:5000": {"auth": "YTpi"}, "other": {"auth": "Yzpk"}}}"#,
        )
        .unwrap();
        let c = CredentialSources {
            auth_file: Some(f),
            ..CredentialSources::default()
        };
        assert_eq!(
            c.for_host("reg:5000", "reg:5000").unwrap(),
            Some(("a".into(), "b".into()))
        );
        assert_eq!(c.for_host("nowhere", "reg:5000").unwrap(), None);
    }

    #[test]
    fn index_members_round_trip() {
        let set = ArtifactSet {
            reference: String::new(),
            registry: "127.0.0.1:5000".into(),
            repository: "local/demo/artifacts".into(),
            tag: "01J00000000000000000000000".into(),
            manifest_digest: "sha256:ab".into(),
            files: vec![],
            uploaded: Utc::now(),
        };
        let m = index_member("01J00000000000000000000000", &set);
        let (id, host, repo, d) = parse_index_member(&m).unwrap();
        assert_eq!(
            (id.as_str(), host.as_str(), repo.as_str(), d.as_str()),
            (
                "01J00000000000000000000000",
                "127.0.0.1:5000",
                "local/demo/artifacts",
                "sha256:ab"
            )
        );
        assert!(parse_index_member("../x 1/2@sha256:a").is_none());
    }
}
