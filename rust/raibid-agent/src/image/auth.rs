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

/// The auth file for a job: a copy of the configured one, or one written from user name and password
/// file; `None` when no credentials are configured (anonymous push). The returned secret values are
/// to be masked in the log.
pub fn auth_file(
    cfg: &ImageConfig,
    registry: &str,
    dir: &Path,
) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let dest = dir.join("auth.json");
    if let Some(src) = &cfg.registry_auth_file {
        let data =
            std::fs::read(src).map_err(|e| format!("registry auth file {}: {e}", src.display()))?;
        write_private(&dest, &data).map_err(|e| format!("writing the job's auth file: {e}"))?;
        return Ok((Some(dest), Vec::new()));
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
            let host = registry.split('/').next().unwrap_or(registry);
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
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        write_private(&p, b"secret").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
