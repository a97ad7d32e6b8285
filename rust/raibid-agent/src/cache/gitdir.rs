//! What the agent checks before it runs git in a repository of the node cache. Steps cannot write a
//! mirror (their sandbox shows it read-only) but they can write their slot's checkout, `.git`
//! included, and the next job's agent runs `git checkout` there. git reads a repository's `config`
//! (filters, fsmonitor, includes, proxies …) and runs its hooks, so:
//!
//! - a mirror's `config` may hold only the keys the agent writes (and `git init`'s), no include, and
//!   its hooks directory only git's samples; anything else and the mirror is rebuilt;
//! - a checkout's `.git` must be a plain directory with plain `objects`, `objects/info` and `refs`
//!   directories and no `commondir` (which would point git at another repository); its `config` is
//!   rewritten by the agent and its hooks removed before git runs. Anything else and the checkout is
//!   made anew.
//!
//! Every git command of the agent also carries `git::NEUTRAL_CONFIG` (no hooks, no fsmonitor, no
//! proxy, no credential helper) with command-line precedence.

use std::path::Path;

/// Keys (lower case, `section.key`) a mirror's config may hold.
const MIRROR_KEYS: &[&str] = &[
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "gc.auto",
    "maintenance.auto",
    "fetch.unpacklimit",
    "transfer.unpacklimit",
    "extensions.objectformat",
];

/// The config the agent gives every checkout (what `git init` writes for a sha1 repository).
pub(crate) const CHECKOUT_CONFIG: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n";

/// The `section[.subsection].key` names of a git config text, lower-cased (subsections kept as
/// written). `Err` for anything this reader does not take (continuation lines, malformed headers).
pub(crate) fn config_keys(text: &str) -> Result<Vec<String>, String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return Err("a continued line".into());
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return Err(format!("section header `{line}`"));
            };
            let head = &rest[..end];
            section = match head.split_once(char::is_whitespace) {
                Some((s, sub)) => format!(
                    "{}.{}",
                    s.to_ascii_lowercase(),
                    sub.trim().trim_matches('"')
                ),
                None => head.to_ascii_lowercase(),
            };
            let after = rest[end + 1..].trim();
            if after.is_empty() || after.starts_with('#') || after.starts_with(';') {
                continue;
            }
            // `[core] key = value` on one line.
            let k = after.split('=').next().unwrap_or("").trim();
            keys.push(format!("{section}.{}", k.to_ascii_lowercase()));
            continue;
        }
        let k = line.split('=').next().unwrap_or("").trim();
        if section.is_empty() {
            return Err(format!("key `{k}` outside a section"));
        }
        keys.push(format!("{section}.{}", k.to_ascii_lowercase()));
    }
    Ok(keys)
}

/// Is the mirror at `dir` as the agent made it? `Err` names what is not.
pub(crate) fn verify_mirror(dir: &Path) -> Result<(), String> {
    let cfg = dir.join("config");
    let meta = std::fs::symlink_metadata(&cfg).map_err(|e| format!("config: {e}"))?;
    if !meta.is_file() {
        return Err("config is not a plain file".into());
    }
    let text = std::fs::read_to_string(&cfg).map_err(|e| format!("config: {e}"))?;
    for k in config_keys(&text).map_err(|e| format!("config: {e}"))? {
        if !MIRROR_KEYS.contains(&k.as_str()) {
            return Err(format!("config has `{k}`, which the agent does not write"));
        }
    }
    if std::fs::symlink_metadata(dir.join("objects/info/alternates")).is_ok() {
        return Err("objects/info/alternates exists".into());
    }
    no_hooks(&dir.join("hooks"))
}

/// Only git's `*.sample` files (or nothing) in a hooks directory.
fn no_hooks(hooks: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(hooks) {
        Err(_) => return Ok(()),
        Ok(m) if !m.is_dir() => return Err("hooks is not a directory".into()),
        Ok(_) => {}
    }
    let rd = std::fs::read_dir(hooks).map_err(|e| format!("hooks: {e}"))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let plain = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !name.ends_with(".sample") || !plain {
            return Err(format!("hooks/{name} exists"));
        }
    }
    Ok(())
}

/// Make a checkout's `.git` the agent's again before git runs in it: its structure checked (`Err`:
/// make the checkout anew), its `config` rewritten and its hooks removed.
pub(crate) fn reset_checkout(src: &Path) -> Result<(), String> {
    let git = src.join(".git");
    for d in [
        git.clone(),
        git.join("objects"),
        git.join("objects/info"),
        git.join("refs"),
    ] {
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            _ => return Err(format!("{} is not a plain directory", d.display())),
        }
    }
    for f in ["commondir", "gitdir", "config.worktree"] {
        if std::fs::symlink_metadata(git.join(f)).is_ok() {
            return Err(format!(".git/{f} exists"));
        }
    }
    // Replace, never write through: the old entry (a symlink, say) is unlinked first.
    let cfg = git.join("config");
    let _ = std::fs::remove_file(&cfg);
    write_new(&cfg, CHECKOUT_CONFIG.as_bytes()).map_err(|e| format!(".git/config: {e}"))?;
    let hooks = git.join("hooks");
    if std::fs::symlink_metadata(&hooks).is_ok() {
        let r = if hooks.is_symlink() || hooks.is_file() {
            std::fs::remove_file(&hooks)
        } else {
            std::fs::remove_dir_all(&hooks)
        };
        r.map_err(|e| format!(".git/hooks: {e}"))?;
    }
    Ok(())
}

/// Create `p` (which must not exist: `O_EXCL`, and never through a symbolic link: `O_NOFOLLOW`) and
/// write `bytes`.
pub(crate) fn write_new(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(0o644)
        .open(p)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_keys_are_read_with_sections_and_subsections() {
        let k = config_keys(
            "[core]\n\tbare = true\n[http \"https://x\"]\n\tproxy = http://evil\n[include] path = /x\n",
        )
        .unwrap();
        assert_eq!(k, ["core.bare", "http.https://x.proxy", "include.path"]);
        assert!(config_keys("[core]\n\tx = a\\\n b\n").is_err());
    }

    /// Issue 17 §6: a path a step turned into a symbolic link (to a file of the agent's) is never
    /// written through.
    #[test]
    fn write_new_never_follows_a_symlink_or_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("agent-owned");
        std::fs::write(&target, "keep").unwrap();
        let link = t.path().join("raibid.patch");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_new(&link, b"diff").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let plain = t.path().join("new");
        write_new(&plain, b"x").unwrap();
        assert!(
            write_new(&plain, b"y").is_err(),
            "an existing file is not overwritten"
        );
    }

    /// A checkout's `.git` that a step swapped for a link, or pointed elsewhere with `commondir`, is
    /// refused (the agent checks out anew); a plain one gets the agent's config back and loses its hooks.
    #[test]
    fn a_checkouts_git_dir_is_reset_or_refused() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        for d in [".git/objects/info", ".git/refs", ".git/hooks"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join(".git/config"), "[core]\n\tfsmonitor = /tmp/evil\n").unwrap();
        std::fs::write(src.join(".git/hooks/post-checkout"), "#!/bin/sh\n").unwrap();
        reset_checkout(&src).unwrap();
        assert_eq!(
            std::fs::read_to_string(src.join(".git/config")).unwrap(),
            CHECKOUT_CONFIG
        );
        assert!(!src.join(".git/hooks").exists());
        std::fs::write(src.join(".git/commondir"), "/elsewhere\n").unwrap();
        assert!(reset_checkout(&src).unwrap_err().contains("commondir"));
        std::fs::remove_file(src.join(".git/commondir")).unwrap();
        std::fs::remove_dir_all(src.join(".git/objects")).unwrap();
        std::os::unix::fs::symlink(t.path(), src.join(".git/objects")).unwrap();
        assert!(reset_checkout(&src)
            .unwrap_err()
            .contains("not a plain directory"));
    }

    #[test]
    fn a_mirror_with_a_planted_hook_proxy_or_alternates_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("hooks")).unwrap();
        std::fs::create_dir_all(d.join("objects/info")).unwrap();
        std::fs::write(
            d.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n[gc]\n\tauto = 0\n",
        )
        .unwrap();
        std::fs::write(d.join("hooks/pre-push.sample"), "").unwrap();
        verify_mirror(d).unwrap();
        std::fs::write(d.join("hooks/reference-transaction"), "#!/bin/sh\n").unwrap();
        assert!(verify_mirror(d)
            .unwrap_err()
            .contains("reference-transaction"));
        std::fs::remove_file(d.join("hooks/reference-transaction")).unwrap();
        std::fs::write(
            d.join("config"),
            "[core]\n\tbare = true\n[http]\n\tproxy = http://x\n",
        )
        .unwrap();
        assert!(verify_mirror(d).unwrap_err().contains("http.proxy"));
        std::fs::write(d.join("config"), "[core]\n\tbare = true\n").unwrap();
        std::fs::write(d.join("objects/info/alternates"), "/elsewhere\n").unwrap();
        assert!(verify_mirror(d).unwrap_err().contains("alternates"));
    }
}
