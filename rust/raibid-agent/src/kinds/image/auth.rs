//! Registry credentials and build secrets as files in the job's private directory (mode 0600): Buildah
//! gets their paths (`--authfile`, `--secret id=…,src=…`), never their contents in argv or the log.

use super::ImageConfig;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Write `data` to `path`, created with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Standard base64 (RFC 4648, with padding), for the `auth` field of a containers auth file.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The auth file for a job pushing to `registry` (and reading/writing the cache repository
/// `cache_repo`): credentials only ever for those hosts. From the configured auth file, only the
/// entries of those hosts; from user name and password (the installation's registry credentials), an
/// entry only when `registry` is the configured registry's host. `None` when there is nothing to give
/// (anonymous push). The returned secret values are to be masked in the log.
pub fn auth_file(
    cfg: &ImageConfig,
    registry: &str,
    dir: &Path,
) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let dest = dir.join("auth.json");
    let policy = cfg.policy();
    let host = raibid_core::image::RegistryPolicy::host_of(registry);
    let mut hosts = vec![host.clone()];
    if let Some(c) = &cfg.cache_repo {
        hosts.push(raibid_core::image::RegistryPolicy::host_of(c));
    }
    if let Some(src) = &cfg.registry_auth_file {
        let data =
            std::fs::read(src).map_err(|e| format!("registry auth file {}: {e}", src.display()))?;
        let doc: serde_json::Value = serde_json::from_slice(&data)
            .map_err(|e| format!("registry auth file {}: not JSON: {e}", src.display()))?;
        let mut auths = serde_json::Map::new();
        let mut masked = Vec::new();
        if let Some(all) = doc.get("auths").and_then(|a| a.as_object()) {
            for (k, v) in all {
                // Keys are `host[:port]`, sometimes with a scheme or a path.
                let key = k
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                if hosts.contains(&raibid_core::image::RegistryPolicy::host_of(key)) {
                    if let Some(a) = v.get("auth").and_then(|a| a.as_str()) {
                        masked.push(a.to_string());
                    }
                    auths.insert(k.clone(), v.clone());
                }
            }
        }
        if auths.is_empty() {
            return Ok((None, Vec::new()));
        }
        let out = serde_json::json!({ "auths": auths });
        write_private(&dest, out.to_string().as_bytes())
            .map_err(|e| format!("writing the job's auth file: {e}"))?;
        return Ok((Some(dest), masked));
    }
    // The password from the environment (pods: protected by the agent's non-dumpable flag) or its file.
    let from_env = std::env::var(raibid_core::contract::env::REGISTRY_PASSWORD)
        .ok()
        .filter(|p| !p.is_empty());
    let password = raibid_core::secret_source::SecretSource {
        what: raibid_core::contract::env::REGISTRY_PASSWORD_FILE,
        value: from_env.as_deref(),
        file: cfg.registry_password_file.as_deref(),
    }
    .load()
    .map_err(|e| e.to_string())?;
    match (&cfg.registry_username, password) {
        (Some(user), Some(pw)) => {
            if !policy.is_default_host(&host) {
                // The installation's credentials go to its own registry only.
                return Ok((None, vec![pw]));
            }
            let auth = base64(format!("{user}:{pw}").as_bytes());
            let doc = serde_json::json!({"auths": {host: {"auth": auth}}});
            write_private(&dest, doc.to_string().as_bytes())
                .map_err(|e| format!("writing the job's auth file: {e}"))?;
            Ok((Some(dest), vec![pw, auth]))
        }
        (Some(_), None) | (None, Some(_)) => Err(format!(
            "registry credentials need both {} and {} (or {})",
            raibid_core::contract::env::REGISTRY_USERNAME,
            raibid_core::contract::env::REGISTRY_PASSWORD,
            raibid_core::contract::env::REGISTRY_PASSWORD_FILE
        )),
        (None, None) => Ok((None, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn credentials_go_only_to_their_own_registry_host() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("pw");
        std::fs::write(&pw, "s3cret-token").unwrap();
        let cfg = ImageConfig {
            registry: Some("git.test:3000".into()),
            registry_allowed: "ghcr.io".into(),
            registry_username: Some("raibid-push".into()),
            registry_password_file: Some(pw),
            ..ImageConfig::default()
        };
        // Another registry gets no auth file at all: the user and password are the installation's.
        let job = d.path().join("job1");
        std::fs::create_dir(&job).unwrap();
        for other in ["evil.example", "ghcr.io/acme", "git.test:3001"] {
            let (f, _) = auth_file(&cfg, other, &job).unwrap();
            assert!(f.is_none(), "{other} got credentials");
            assert!(!job.join("auth.json").exists(), "{other}");
        }
        let (f, masked) = auth_file(&cfg, "git.test:3000/acme", &job).unwrap();
        let text = std::fs::read_to_string(f.unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["auths"].as_object().unwrap().len(), 1);
        assert!(v["auths"]["git.test:3000"]["auth"].is_string(), "{text}");
        assert!(masked.contains(&"s3cret-token".to_string()));
        // From an auth file: only the job's host's entry.
        let af = d.path().join("auth-all.json");
        std::fs::write(
            &af,
            r#"{"auths": {"git.test:3000": {"auth": "YTpi"}, "ghcr.io": {"auth": "Yzpk"}, "https://evil.example": {"auth": "ZTpm"}}}"#,
        )
        .unwrap();
        let cfg = ImageConfig {
            registry_auth_file: Some(af),
            registry_username: None,
            registry_password_file: None,
            ..cfg
        };
        let (f, _) = auth_file(&cfg, "ghcr.io/acme", &job).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.unwrap()).unwrap()).unwrap();
        let keys: Vec<&String> = v["auths"].as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["ghcr.io"]);
        let (f, _) = auth_file(&cfg, "other.example", &job).unwrap();
        assert!(f.is_none());
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write_private(&p, b"secret").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
