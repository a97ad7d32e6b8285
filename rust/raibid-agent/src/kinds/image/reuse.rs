//! Reusing a previous build when its inputs are provably identical (ADR 0006): the fixed cost of
//! `buildah build` (context copy, one container per step, commit) dominates an unchanged rebuild even
//! when every layer comes from the cache, so a job whose build inputs hash to the fingerprint of an
//! earlier successful build on this node tags that build's image instead of running Buildah's build.
//!
//! The fingerprint covers everything the build reads: the context tree (every path, type, permission
//! bits, symlink target and file content, below the context directory), the Containerfile's path and
//! content, the target stage, the build args, the build secrets' contents, the Buildah version, the
//! storage driver and the platform; and, when the context holds the checkout's `.git` (not hashed
//! byte by byte: git rewrites its index on every checkout), the commit. Anything else (a changed
//! file, arg, secret, Containerfile or Buildah) is a different fingerprint and a real build. The image
//! must still be in storage (GC may have removed it); otherwise the job builds.

use super::Buildah;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Bumped when what the fingerprint covers changes (old records then simply never match).
const VERSION: &str = "raibid-image-reuse-v1";

/// The inputs of one `buildah build`.
pub struct BuildInputs<'a> {
    /// The checkout root (paths are hashed relative to it, so every slot's checkout matches).
    pub root: &'a Path,
    pub context: &'a Path,
    pub containerfile: &'a Path,
    pub target: Option<&'a str>,
    pub build_args: &'a BTreeMap<String, String>,
    /// (name, file holding the value) of each build secret.
    pub secrets: Vec<(String, PathBuf)>,
    /// `buildah --version`.
    pub buildah_version: &'a str,
    pub driver: &'a str,
    /// The commit checked out (used when the context contains `.git`).
    pub commit: Option<&'a str>,
}

fn field(h: &mut Sha256, name: &str, value: &[u8]) {
    h.update(name.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

fn file_digest(p: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Hash the tree below `dir` (sorted by name; `.git` at the top level skipped, reported in the result).
fn tree(
    h: &mut Sha256,
    dir: &Path,
    rel: &Path,
    top: bool,
    has_git: &mut bool,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if top && name == ".git" {
            *has_git = true;
            continue;
        }
        let path = e.path();
        let r = rel.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        let mode = md.permissions().mode() & 0o7777;
        let rb = r.as_os_str().as_encoded_bytes();
        if ft.is_symlink() {
            field(h, "L", rb);
            field(
                h,
                "->",
                std::fs::read_link(&path)?.as_os_str().as_encoded_bytes(),
            );
        } else if ft.is_dir() {
            field(h, "D", rb);
            field(h, "mode", &mode.to_le_bytes());
            tree(h, &path, &r, false, has_git)?;
            field(h, "end", rb);
        } else if ft.is_file() {
            field(h, "F", rb);
            field(h, "mode", &mode.to_le_bytes());
            field(h, "sha256", &file_digest(&path)?);
        } else {
            // A socket, fifo or device: nothing a build can copy reproducibly; hash its kind.
            field(h, "O", rb);
            field(h, "mode", &md.permissions().mode().to_le_bytes());
        }
    }
    Ok(())
}

/// The fingerprint of a build's inputs (hex SHA-256).
pub fn fingerprint(i: &BuildInputs<'_>) -> std::io::Result<String> {
    let mut h = Sha256::new();
    field(&mut h, "version", VERSION.as_bytes());
    field(&mut h, "buildah", i.buildah_version.trim().as_bytes());
    field(&mut h, "driver", i.driver.as_bytes());
    field(
        &mut h,
        "platform",
        format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH).as_bytes(),
    );
    let rel = |p: &Path| {
        p.strip_prefix(i.root)
            .unwrap_or(p)
            .as_os_str()
            .as_encoded_bytes()
            .to_vec()
    };
    field(&mut h, "containerfile", &rel(i.containerfile));
    field(
        &mut h,
        "containerfile-sha256",
        &file_digest(i.containerfile)?,
    );
    field(&mut h, "target", i.target.unwrap_or("").as_bytes());
    field(&mut h, "target-set", &[u8::from(i.target.is_some())]);
    for (k, v) in i.build_args {
        field(&mut h, "arg", k.as_bytes());
        field(&mut h, "=", v.as_bytes());
    }
    for (name, f) in &i.secrets {
        field(&mut h, "secret", name.as_bytes());
        field(&mut h, "secret-sha256", &file_digest(f)?);
    }
    field(&mut h, "context", &rel(i.context));
    let mut has_git = false;
    tree(&mut h, i.context, Path::new(""), true, &mut has_git)?;
    if has_git {
        field(&mut h, "commit", i.commit.unwrap_or("").as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Where the records live: `<cache>/buildah/reuse/<fingerprint>` holding the image id.
pub fn record_dir(b: &Buildah) -> PathBuf {
    b.root
        .parent()
        .map_or_else(|| b.root.join("reuse"), |p| p.join("reuse"))
}

/// Remember that `fingerprint` built `image_id` (after a successful build).
pub fn record(b: &Buildah, fingerprint: &str, image_id: &str) -> std::io::Result<()> {
    let dir = record_dir(b);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{fingerprint}.tmp"));
    std::fs::write(&tmp, image_id)?;
    std::fs::rename(tmp, dir.join(fingerprint))
}

/// The image an earlier build with this fingerprint made, when it is still in storage.
pub async fn lookup(b: &Buildah, fingerprint: &str) -> Option<String> {
    let id = std::fs::read_to_string(record_dir(b).join(fingerprint)).ok()?;
    // As `--iidfile` wrote it: `sha256:<hex>`.
    let id = id.trim().to_string();
    let hex = id.strip_prefix("sha256:").unwrap_or(&id);
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let found = b
        .query(&[
            "inspect".into(),
            "--type".into(),
            "image".into(),
            "--format".into(),
            "{{.FromImageID}}".into(),
            id.clone(),
        ])
        .await
        .ok()?;
    // `FromImageID` is the full id (hex) of the image inspected.
    (found.trim() == hex).then_some(id.clone())
}

/// `buildah --version` of this binary (asked once per process and binary).
pub async fn buildah_version(b: &Buildah) -> Result<String, String> {
    static SEEN: std::sync::Mutex<BTreeMap<PathBuf, String>> =
        std::sync::Mutex::new(BTreeMap::new());
    if let Some(v) = SEEN.lock().ok().and_then(|m| m.get(&b.bin).cloned()) {
        return Ok(v);
    }
    let v = b.query(&["--version".into()]).await?;
    if let Ok(mut m) = SEEN.lock() {
        m.insert(b.bin.clone(), v.clone());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fx {
        dir: tempfile::TempDir,
        args: BTreeMap<String, String>,
        target: Option<String>,
        containerfile: String,
        driver: String,
        commit: String,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let r = dir.path();
            std::fs::create_dir_all(r.join("app/sub")).unwrap();
            std::fs::create_dir_all(r.join(".git")).unwrap();
            std::fs::write(r.join(".git/index"), "x").unwrap();
            std::fs::write(r.join("Containerfile"), "FROM scratch\nCOPY app /app\n").unwrap();
            std::fs::write(r.join("Containerfile.alt"), "FROM scratch\nCOPY app /app\n").unwrap();
            std::fs::write(r.join("app/a.txt"), "a").unwrap();
            std::fs::write(r.join("app/sub/b.sh"), "echo b").unwrap();
            Fx {
                dir,
                args: BTreeMap::from([("V".to_string(), "1".to_string())]),
                target: None,
                containerfile: "Containerfile".into(),
                driver: "vfs".into(),
                commit: "c1".into(),
            }
        }
        fn fp(&self, context: &str) -> String {
            let r = self.dir.path();
            fingerprint(&BuildInputs {
                root: r,
                context: &r.join(context),
                containerfile: &r.join(&self.containerfile),
                target: self.target.as_deref(),
                build_args: &self.args,
                secrets: Vec::new(),
                buildah_version: "buildah version 1.39.3",
                driver: &self.driver,
                commit: Some(&self.commit),
            })
            .unwrap()
        }
    }

    #[test]
    fn identical_inputs_give_one_fingerprint_and_every_change_another() {
        let mut f = Fx::new();
        let base = f.fp(".");
        assert_eq!(base, f.fp("."), "not deterministic");
        let p = f.dir.path().to_path_buf();
        let mut seen = vec![base.clone()];
        let mut differs = |f: &Fx, what: &str, ctx: &str| {
            let fp = f.fp(ctx);
            assert!(!seen.contains(&fp), "{what}: same fingerprint as before");
            seen.push(fp);
        };
        std::fs::write(p.join("app/a.txt"), "A").unwrap();
        differs(&f, "file content", ".");
        std::fs::set_permissions(
            p.join("app/sub/b.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        differs(&f, "exec bit", ".");
        std::fs::write(p.join("app/new.txt"), "").unwrap();
        differs(&f, "new empty file", ".");
        std::fs::rename(p.join("app/new.txt"), p.join("app/renamed.txt")).unwrap();
        differs(&f, "rename", ".");
        std::os::unix::fs::symlink("a.txt", p.join("app/link")).unwrap();
        differs(&f, "symlink", ".");
        std::fs::remove_file(p.join("app/link")).unwrap();
        std::os::unix::fs::symlink("sub", p.join("app/link")).unwrap();
        differs(&f, "symlink target", ".");
        std::fs::create_dir(p.join("app/empty")).unwrap();
        differs(&f, "empty directory", ".");
        f.args.insert("V".into(), "2".into());
        differs(&f, "build arg value", ".");
        f.args.insert("W".into(), String::new());
        differs(&f, "extra build arg", ".");
        f.target = Some("runtime".into());
        differs(&f, "target", ".");
        f.target = Some(String::new());
        differs(&f, "empty target (set)", ".");
        f.containerfile = "Containerfile.alt".into();
        differs(&f, "other Containerfile, same content", ".");
        std::fs::write(p.join("Containerfile.alt"), "FROM scratch\nCOPY app /srv\n").unwrap();
        differs(&f, "Containerfile content", ".");
        f.driver = "overlay".into();
        differs(&f, "storage driver", ".");
        f.commit = "c2".into();
        differs(&f, "commit (context holds .git)", ".");
        differs(&f, "context", "app");
    }

    #[test]
    fn a_context_without_git_ignores_the_commit_and_files_outside_it() {
        let mut f = Fx::new();
        let a = f.fp("app");
        f.commit = "c2".into();
        std::fs::write(f.dir.path().join("outside.txt"), "x").unwrap();
        std::fs::write(f.dir.path().join(".git/index"), "rewritten").unwrap();
        assert_eq!(a, f.fp("app"));
        // The checkout's .git bytes never count (git rewrites its index), the commit does.
        let b = f.fp(".");
        std::fs::write(f.dir.path().join(".git/index"), "again").unwrap();
        assert_eq!(b, f.fp("."));
    }

    #[test]
    fn the_same_tree_in_another_slot_matches() {
        let a = Fx::new();
        let b = Fx::new();
        assert_eq!(a.fp("."), b.fp("."));
    }
}
