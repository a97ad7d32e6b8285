//! The cache key of a cargo target directory: what changes artifacts.
//!
//! `sha256("raibid-cache-v1", repository id, rustc -vV, the artifact-relevant environment)`, first 16
//! hex digits. `rustc -vV` names the release, the commit hash, the LLVM version and the host triple; the
//! environment part covers the target triple (`CARGO_BUILD_TARGET`), flags (`RUSTFLAGS`, ...),
//! wrappers, profile overrides and C toolchains, from the pipeline and every step.
//!
//! `rustc -vV` runs with the step's environment in the checkout (so `rust-toolchain.toml` and
//! `RUSTUP_TOOLCHAIN` apply) and is remembered per agent, keyed by that environment, the toolchain
//! file's content and the modification times of `$RUSTUP_HOME/toolchains` and of `rustc` on `PATH`
//! (an installed or updated toolchain changes one of them), so the warm path spawns no rustc.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Environment variables whose value changes what cargo produces.
pub(crate) fn relevant(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_INCREMENTAL",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CC",
        "CXX",
        "CFLAGS",
        "CXXFLAGS",
        "LDFLAGS",
        "AR",
    ];
    EXACT.contains(&name)
        || name.starts_with("CARGO_PROFILE_")
        || (name.starts_with("CARGO_TARGET_") && name != "CARGO_TARGET_DIR")
}

/// Remembered `rustc -vV` outputs.
#[derive(Default)]
pub(crate) struct ToolchainMemo {
    seen: Mutex<HashMap<String, String>>,
}

fn mtime(p: &Path) -> String {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default()
}

fn which(cmd: &str, path: &str) -> Option<std::path::PathBuf> {
    if cmd.contains('/') {
        return Some(cmd.into());
    }
    std::env::split_paths(path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

impl ToolchainMemo {
    /// `rustc -vV` for this environment in `dir` (an error text if rustc cannot run: the key then
    /// still differs from any working toolchain's).
    ///
    /// `command` builds the process (the agent passes its step sandbox: `RUSTC` and a
    /// `rust-toolchain.toml` are the repository's to choose, so what runs here is the repository's
    /// code as much as a step is).
    pub(crate) async fn rustc_vv(
        &self,
        dir: &Path,
        env: &[(String, String)],
        command: &(dyn Fn(&str) -> tokio::process::Command + Sync),
    ) -> String {
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(ek, _)| ek == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let rustc = match get("RUSTC") {
            "" => "rustc",
            r => r,
        };
        let path = get("PATH");
        let toolchain_file = ["rust-toolchain.toml", "rust-toolchain"]
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\u{1}");
        let rustup_home = match get("RUSTUP_HOME") {
            "" => std::env::var("HOME")
                .map(|h| format!("{h}/.rustup"))
                .unwrap_or_default(),
            h => h.to_string(),
        };
        let memo_key = format!(
            "{rustc}\u{0}{path}\u{0}{}\u{0}{rustup_home}\u{0}{}\u{0}{toolchain_file}\u{0}{}\u{0}{}",
            get("RUSTUP_TOOLCHAIN"),
            get("HOME"),
            mtime(&Path::new(&rustup_home).join("toolchains")),
            which(rustc, path).map(|p| mtime(&p)).unwrap_or_default(),
        );
        if let Some(v) = self
            .seen
            .lock()
            .ok()
            .and_then(|m| m.get(&memo_key).cloned())
        {
            return v;
        }
        let out = command(rustc).output().await;
        let v = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => format!("rustc failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("rustc unavailable: {e}"),
        };
        if let Ok(mut m) = self.seen.lock() {
            m.insert(memo_key, v.clone());
        }
        v
    }
}

/// The key from its parts. `env` holds every (name, value) the pipeline sets, in order.
pub(crate) fn key(repo_id: &str, rustc_vv: &str, env: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(b"raibid-cache-v1\0");
    h.update(repo_id.as_bytes());
    h.update(b"\0");
    h.update(rustc_vv.as_bytes());
    let mut rel: Vec<&(String, String)> = env.iter().filter(|(k, _)| relevant(k)).collect();
    rel.sort();
    rel.dedup();
    for (k, v) in rel {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// The repository's identity: scheme, host (lower case), port and path without `.git` or a trailing
/// slash; user info dropped (a token in a URL changes nothing).
pub(crate) fn repo_id(url: &str) -> String {
    let norm = match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or("").to_ascii_lowercase(),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path().trim_end_matches('/').trim_end_matches(".git")
        ),
        Err(_) => url
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_string(),
    };
    let h = Sha256::digest(norm.as_bytes());
    hex::encode(h)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_what_changes_artifacts() {
        let e = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let base = key("r", "rustc 1.95.0", &e(&[("PATH", "/bin")]));
        assert_eq!(
            base,
            key(
                "r",
                "rustc 1.95.0",
                &e(&[("PATH", "/usr/bin"), ("CI", "1")])
            )
        );
        assert_ne!(base, key("r", "rustc 1.96.0", &e(&[])));
        assert_ne!(base, key("r2", "rustc 1.95.0", &e(&[])));
        assert_ne!(
            base,
            key(
                "r",
                "rustc 1.95.0",
                &e(&[("RUSTFLAGS", "-Ctarget-cpu=native")])
            )
        );
        assert_ne!(
            base,
            key(
                "r",
                "rustc 1.95.0",
                &e(&[("CARGO_PROFILE_DEV_OPT_LEVEL", "1")])
            )
        );
        assert_eq!(
            base,
            key("r", "rustc 1.95.0", &e(&[("CARGO_TARGET_DIR", "/x")]))
        );
    }

    #[test]
    fn repo_identity_ignores_credentials_and_spelling() {
        let a = repo_id("https://Gitea.local/o/r.git");
        assert_eq!(a, repo_id("https://tok@gitea.local/o/r"));
        assert_eq!(a, repo_id("https://gitea.local/o/r/"));
        assert_ne!(a, repo_id("https://gitea.local/o/other"));
    }
}
