//! Build artifacts (issue 23 §2): after the steps, the files `.raibid.yaml` `artifacts:` names are read
//! by the agent — never by a step, and never through a symbolic link — and pushed as one OCI artifact
//! (a manifest whose layers are the files) to the installation's registry under the repository owner's
//! namespace (`raibid_core::artifacts::destination`, the image rule of ADR 0012), tagged with the job id.
//!
//! This runs in the agent process, outside the step sandbox: the registry credentials are the agent's and
//! no step ever sees them. The workspace, though, was written by the steps (untrusted code), so it is
//! read as hostile: every directory is opened relative to its already-open parent with `O_NOFOLLOW`
//! (`openat`), every file through its parent's descriptor (`/proc/self/fd/<dir>/<name>`, `O_NOFOLLOW`),
//! sizes come from the open descriptor and reads stop at that size. A symlink swapped in after the check
//! cannot redirect a read: there is no check-then-open by path.
//!
//! Interface: [`after_steps`], called once by the lifecycle's after-steps phase (`lifecycle/after.rs`).

use crate::ctx::JobCtx;
use crate::stop::{Stop, LOST, RELEASED};
use chrono::Utc;
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use raibid_core::artifacts::{
    self as core_artifacts, is_glob, Artifact, ArtifactSet, ArtifactSpec, Caps, When,
};
use raibid_core::contract::env;
use raibid_core::job::Status;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Directory entries one job's patterns may visit (a hostile tree of millions of files ends here).
pub const MAX_VISITED: usize = 200_000;
/// The OCI "empty" config blob (`{}`), as the image spec's artifact guidance uses.
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Where the patterns are looked up: the checkout, and the job's target directory for `target/…`.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The job's checkout.
    pub workspace: PathBuf,
    /// The job's `CARGO_TARGET_DIR` (in the node cache), if it has one.
    pub target: Option<PathBuf>,
}

/// A file found by a pattern, open (its descriptor is what is read).
#[derive(Debug)]
pub struct Found {
    /// Path relative to the workspace, as the job record and the API name it.
    pub name: String,
    /// The open file.
    pub file: std::fs::File,
    /// Its size when opened.
    pub size: u64,
}

/// The registry an upload goes to, and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// Plain HTTP to this host (the local registry).
    pub insecure: bool,
    /// `(user, password)`; `None`: anonymous.
    pub auth: Option<(String, String)>,
}

/// Resolve the patterns under `roots`: every file, opened without following links, within the caps.
pub fn collect(roots: &Roots, spec: &ArtifactSpec, caps: Caps) -> Result<Vec<Found>, String> {
    let mut out: Vec<Found> = Vec::new();
    let mut visited = 0usize;
    for (i, pattern) in spec.paths.iter().enumerate() {
        let comps: Vec<&str> = pattern.split('/').collect();
        let (root, comps, prefix) = match (&roots.target, comps.first()) {
            (Some(t), Some(&"target")) if comps.len() > 1 => (t.as_path(), &comps[1..], "target"),
            _ => (roots.workspace.as_path(), &comps[..], ""),
        };
        let dir = Dir::open(
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", root.display()))?;
        let mut w = Walk {
            out: &mut out,
            visited: &mut visited,
            pattern,
            matched: 0,
        };
        w.walk(dir, prefix, comps)?;
        if w.matched == 0 {
            return Err(format!(
                "artifacts.paths[{i}]: `{pattern}` matched no file in the workspace"
            ));
        }
        if out.len() as u64 > caps.max_count {
            return Err(format!(
                "more than {} files match `artifacts:`; the cap is {} files per job ({})",
                caps.max_count,
                caps.max_count,
                env::ARTIFACTS_MAX_COUNT
            ));
        }
    }
    let total: u64 = out.iter().map(|f| f.size).sum();
    if total > caps.max_bytes {
        return Err(format!(
            "the artifacts are {total} bytes ({} files); the cap is {} bytes per job ({})",
            out.len(),
            caps.max_bytes,
            env::ARTIFACTS_MAX_BYTES
        ));
    }
    Ok(out)
}

struct Walk<'a> {
    out: &'a mut Vec<Found>,
    visited: &'a mut usize,
    pattern: &'a str,
    /// Files this pattern matched (some may have been found by an earlier pattern already).
    matched: usize,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

fn link_refused(name: &str) -> String {
    format!("`{name}` is a symbolic link; artifacts are never read through a link (it could lead out of the workspace)")
}

impl Walk<'_> {
    fn walk(&mut self, mut dir: Dir, prefix: &str, comps: &[&str]) -> Result<(), String> {
        let Some((&c, rest)) = comps.split_first() else {
            return Ok(());
        };
        if c == "**" {
            // Zero directories deep, then every subdirectory (links are not descended into).
            let again =
                open_dir_at(&dir, OsStr::new(".")).map_err(|e| format!("`{prefix}`: {e}"))?;
            self.walk(again, prefix, rest)?;
            for (name, _) in self.entries(&mut dir)? {
                if let Ok(sub) = open_dir_at(&dir, OsStr::from_bytes(name.as_bytes())) {
                    self.walk(sub, &join(prefix, &name), comps)?;
                }
            }
            return Ok(());
        }
        if is_glob(c) {
            for (name, ty) in self.entries(&mut dir)? {
                if !core_artifacts::component_matches(c, &name) {
                    continue;
                }
                let rel = join(prefix, &name);
                if ty == Some(nix::dir::Type::Symlink) {
                    return Err(link_refused(&rel));
                }
                if rest.is_empty() {
                    if ty == Some(nix::dir::Type::Directory) {
                        continue;
                    }
                    self.file(&dir, &name, &rel)?;
                } else if let Ok(sub) = open_dir_at(&dir, OsStr::from_bytes(name.as_bytes())) {
                    self.walk(sub, &rel, rest)?;
                }
            }
            return Ok(());
        }
        let rel = join(prefix, c);
        if rest.is_empty() {
            return self.file(&dir, c, &rel);
        }
        match open_dir_at(&dir, OsStr::new(c)) {
            Ok(sub) => self.walk(sub, &rel, rest),
            // A link (ELOOP, or ENOTDIR with O_DIRECTORY) is refused; missing or not a directory:
            // nothing matches here. (The lstat only words the message: nothing is opened through it.)
            Err(_) if is_link_at(&dir, c) => Err(link_refused(&rel)),
            Err(_) => Ok(()),
        }
    }

    /// The entries of `dir` (without `.` and `..`), counted against the walk's bound.
    fn entries(&mut self, dir: &mut Dir) -> Result<Vec<(String, Option<nix::dir::Type>)>, String> {
        let mut v = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(|e| format!("`{}`: reading a directory: {e}", self.pattern))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            *self.visited += 1;
            if *self.visited > MAX_VISITED {
                return Err(format!(
                    "`{}`: more than {MAX_VISITED} directory entries visited; name the artifacts more precisely",
                    self.pattern
                ));
            }
            // Names that are not UTF-8 cannot be artifact names (the API and the registry use text).
            if let Ok(s) = std::str::from_utf8(name) {
                v.push((s.to_string(), e.file_type()));
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    fn file(&mut self, dir: &Dir, name: &str, rel: &str) -> Result<(), String> {
        let file = match open_file_at(dir, name) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(link_refused(rel)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("`{rel}`: {e}")),
        };
        let meta = file.metadata().map_err(|e| format!("`{rel}`: {e}"))?;
        if meta.is_dir() {
            return Err(format!(
                "`{rel}` is a directory; name its files (e.g. `{rel}/*` or `{rel}/**/*`)"
            ));
        }
        if !meta.is_file() {
            return Err(format!("`{rel}` is not a regular file"));
        }
        self.matched += 1;
        // The same file named by two patterns is uploaded once.
        if self.out.iter().any(|f| f.name == rel) {
            return Ok(());
        }
        self.out.push(Found {
            name: rel.to_string(),
            file,
            size: meta.len(),
        });
        Ok(())
    }
}

fn is_link_at(dir: &Dir, name: &str) -> bool {
    nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

fn open_dir_at(dir: &Dir, name: &OsStr) -> nix::Result<Dir> {
    Dir::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Open `name` in the open directory `dir`, not following a link: the path goes through the directory's
/// descriptor (`/proc/self/fd/<fd>`), so nothing between the walk and the open can be swapped.
fn open_file_at(dir: &Dir, name: &str) -> std::io::Result<std::fs::File> {
    if name.contains('/') || name == ".." || name == "." {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Read a found file: exactly the size it had when opened (a file that changed meanwhile is refused).
fn read_found(f: &mut Found) -> Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(usize::try_from(f.size).unwrap_or(0));
    (&mut f.file)
        .take(f.size + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("`{}`: {e}", f.name))?;
    if data.len() as u64 != f.size {
        return Err(format!(
            "`{}` changed size while it was read ({} bytes, then {})",
            f.name,
            f.size,
            data.len()
        ));
    }
    Ok(data)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An OCI client for `t`: plain HTTP only to an insecure registry's host, bounded connect and read.
pub fn client(t: &Target) -> Client {
    Client::new(ClientConfig {
        protocol: if t.insecure {
            ClientProtocol::HttpsExcept(vec![t.registry.clone()])
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: true,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        ..ClientConfig::default()
    })
}

/// Push `files` as one artifact manifest tagged `tag`; the files' bytes are read one at a time.
pub async fn upload(
    t: &Target,
    tag: &str,
    commit: &str,
    mut files: Vec<Found>,
    mut progress: impl FnMut(String),
) -> Result<ArtifactSet, String> {
    let c = client(t);
    let reference = Reference::with_tag(t.registry.clone(), t.repository.clone(), tag.to_string());
    let auth = match &t.auth {
        Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
        None => RegistryAuth::Anonymous,
    };
    c.store_auth_if_needed(reference.resolve_registry(), &auth)
        .await;
    let err = |what: &str, e: oci_client::errors::OciDistributionError| {
        format!("pushing {what} to {}/{}: {e}", t.registry, t.repository)
    };
    let mut uploaded = Vec::with_capacity(files.len());
    for f in files.iter_mut() {
        let started = std::time::Instant::now();
        let data = read_found(f)?;
        let digest = sha256(&data);
        c.push_blob(&reference, &data, &digest)
            .await
            .map_err(|e| err(&format!("`{}`", f.name), e))?;
        let secs = started.elapsed().as_secs_f64();
        progress(format!(
            "[raibid] uploaded {} ({} bytes, {digest}) in {secs:.2}s",
            f.name, f.size
        ));
        uploaded.push(Artifact {
            name: f.name.clone(),
            size: f.size,
            digest,
        });
    }
    let config_digest = sha256(EMPTY_CONFIG);
    c.push_blob(&reference, EMPTY_CONFIG, &config_digest)
        .await
        .map_err(|e| err("the config", e))?;
    let files_json = serde_json::to_string(&uploaded).map_err(|e| e.to_string())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": core_artifacts::ARTIFACT_TYPE,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": config_digest, "size": EMPTY_CONFIG.len()},
        "layers": uploaded.iter().map(|a| serde_json::json!({
            "mediaType": core_artifacts::FILE_MEDIA_TYPE,
            "digest": a.digest,
            "size": a.size,
            "annotations": {core_artifacts::ANNOTATION_TITLE: a.name},
        })).collect::<Vec<_>>(),
        "annotations": {
            core_artifacts::ANNOTATION_JOB: tag,
            core_artifacts::ANNOTATION_COMMIT: commit,
            core_artifacts::ANNOTATION_FILES: files_json,
            "org.opencontainers.image.created": Utc::now().to_rfc3339(),
        },
    });
    let body = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let manifest_digest = sha256(&body);
    c.push_manifest_raw(
        &reference,
        body,
        reqwest::header::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
    )
    .await
    .map_err(|e| err("the manifest", e))?;
    Ok(ArtifactSet {
        reference: format!("{}/{}@{manifest_digest}", t.registry, t.repository),
        registry: t.registry.clone(),
        repository: t.repository.clone(),
        tag: tag.to_string(),
        manifest_digest,
        files: uploaded,
        uploaded: Utc::now(),
    })
}

/// The agent's side of a job's `artifacts:`: where to, with which credentials.
fn target_of(ctx: &JobCtx<'_>) -> Result<Target, String> {
    let icfg = &ctx.shared.cfg.kind_options.image;
    let policy = icfg.policy();
    let (registry, repository) =
        core_artifacts::destination(&policy, &ctx.claim.job.source.repo_url)?;
    let sources = raibid_core::artifacts::CredentialSources {
        auth_file: icfg.registry_auth_file.clone(),
        username: icfg.registry_username.clone(),
        password: std::env::var(env::REGISTRY_PASSWORD)
            .ok()
            .filter(|p| !p.is_empty()),
        password_file: icfg.registry_password_file.clone(),
    };
    let auth = sources.for_host(&registry, &registry)?;
    Ok(Target {
        insecure: icfg.registry_insecure,
        registry,
        repository,
        auth,
    })
}

/// After the steps: upload the job's artifacts when the pipeline has `artifacts:` and `when` says so,
/// in a step `artifacts`. An upload that fails fails the job (when the steps had succeeded) with the
/// reason in the step's log; the other steps' results stay as they are.
///
/// `spec` is the pipeline's `artifacts:` (decided in the config phase; on the kinds lifecycle it reaches
/// `lifecycle/after.rs` through the job's context), `ws` the checkout.
pub(crate) async fn after_steps(
    ctx: &mut JobCtx<'_>,
    spec: &ArtifactSpec,
    ws: &Path,
    target: Option<std::path::PathBuf>,
    outcome: (Status, Option<String>),
) -> (Status, Option<String>) {
    let status = outcome.0;
    let wanted = match status {
        Status::Succeeded => true,
        Status::Failed | Status::TimedOut => spec.when == When::Always,
        _ => false,
    };
    if !wanted || status == LOST || status == RELEASED {
        return outcome;
    }
    ctx.claim.job.begin_step(core_artifacts::STEP, Utc::now());
    if !ctx.update("step_started").await {
        return (LOST, None);
    }
    let started = std::time::Instant::now();
    let result = run(ctx, spec, ws, target).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(set) => {
            ctx.sys(
                core_artifacts::STEP,
                format!(
                    "[raibid] {} artifact(s) at {} in {secs:.2}s",
                    set.files.len(),
                    set.reference
                ),
            )
            .await;
            let member = core_artifacts::index_member(&ctx.claim.job.id, &set);
            if let Err(e) =
                raibid_core::queue::artifacts::record_upload(&ctx.shared.queue, &member).await
            {
                tracing::warn!(job = %ctx.claim.job.id, error = %e, "could not index the artifacts");
            }
            ctx.claim.job.artifacts = Some(set);
            ctx.claim.job.end_step("succeeded", None, Utc::now());
            if !ctx.update("step_finished").await {
                return (LOST, None);
            }
            outcome
        }
        Err(e) => {
            match ctx.stopped() {
                Stop::LeaseLost => return (LOST, None),
                Stop::Release => return (RELEASED, None),
                Stop::Cancel => {
                    ctx.claim.job.end_step("cancelled", None, Utc::now());
                    let _ = ctx.update("step_finished").await;
                    return (
                        Status::Cancelled,
                        Some("cancelled during step `artifacts`".into()),
                    );
                }
                Stop::None => {}
            }
            ctx.sys(core_artifacts::STEP, format!("[raibid] artifacts: {e}"))
                .await;
            ctx.claim.job.end_step("failed", None, Utc::now());
            if !ctx.update("step_finished").await {
                return (LOST, None);
            }
            if status == Status::Succeeded {
                (Status::Failed, Some(format!("artifacts: {e}")))
            } else {
                outcome
            }
        }
    }
}

async fn run(
    ctx: &mut JobCtx<'_>,
    spec: &ArtifactSpec,
    ws: &Path,
    target_dir: Option<std::path::PathBuf>,
) -> Result<ArtifactSet, String> {
    let target = target_of(ctx)?;
    let roots = Roots {
        workspace: ws.to_path_buf(),
        target: target_dir,
    };
    let caps = Caps {
        max_bytes: ctx.shared.cfg.artifacts_max_bytes,
        max_count: ctx.shared.cfg.artifacts_max_count,
    };
    let spec2 = spec.clone();
    let found = tokio::task::spawn_blocking(move || collect(&roots, &spec2, caps))
        .await
        .map_err(|e| format!("collecting the files: {e}"))??;
    let total: u64 = found.iter().map(|f| f.size).sum();
    ctx.sys(
        core_artifacts::STEP,
        format!(
            "[raibid] uploading {} file(s), {total} bytes, to {}/{}:{}",
            found.len(),
            target.registry,
            target.repository,
            ctx.claim.job.id
        ),
    )
    .await;
    let logs = ctx.logs.clone();
    let progress = move |l: String| {
        let _ = logs.try_send((core_artifacts::STEP.into(), "system".into(), l));
    };
    let commit = ctx.claim.job.source.sha.clone().unwrap_or_default();
    let remaining = ctx
        .deadline
        .saturating_duration_since(std::time::Instant::now());
    let id = ctx.claim.job.id.to_string();
    // A cancel, a lost lease or the shutdown grace ends the upload as it ends a step.
    let mut stop = ctx.stop.clone();
    let stopped = async move {
        while *stop.borrow_and_update() == Stop::None {
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(remaining, upload(&target, &id, &commit, found, progress)) => match r {
            Ok(r) => r,
            Err(_) => Err("the job's timeout ended the upload".into()),
        },
        () = stopped => Err("the upload was stopped".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(paths: &[&str]) -> ArtifactSpec {
        ArtifactSpec {
            paths: paths.iter().map(|s| s.to_string()).collect(),
            when: When::Success,
        }
    }

    fn names(v: &[Found]) -> Vec<&str> {
        v.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn patterns_match_files_and_target_maps_to_the_target_dir() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        let tgt = d.path().join("tgt");
        std::fs::create_dir_all(ws.join("dist/sub")).unwrap();
        std::fs::create_dir_all(tgt.join("release")).unwrap();
        std::fs::write(ws.join("dist/a.tar.gz"), "a").unwrap();
        std::fs::write(ws.join("dist/b.txt"), "b").unwrap();
        std::fs::write(ws.join("dist/sub/c.tar.gz"), "cc").unwrap();
        std::fs::write(tgt.join("release/tool"), "bin").unwrap();
        let roots = Roots {
            workspace: ws,
            target: Some(tgt),
        };
        let f = collect(
            &roots,
            &spec(&["target/release/tool", "dist/*.tar.gz", "dist/**/*.tar.gz"]),
            Caps::default(),
        )
        .unwrap();
        assert_eq!(
            names(&f),
            ["target/release/tool", "dist/a.tar.gz", "dist/sub/c.tar.gz"]
        );
        assert_eq!(f[0].size, 3);
        let e = collect(&roots, &spec(&["nothing/*"]), Caps::default()).unwrap_err();
        assert!(e.contains("matched no file"), "{e}");
        let e = collect(&roots, &spec(&["dist"]), Caps::default()).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn links_are_refused_wherever_they_are() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir_all(ws.join("out")).unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "token").unwrap();
        std::os::unix::fs::symlink(&secret, ws.join("out/tool")).unwrap();
        std::os::unix::fs::symlink(d.path(), ws.join("up")).unwrap();
        let roots = Roots {
            workspace: ws,
            target: None,
        };
        for p in ["out/tool", "out/*", "up/secret", "up/*"] {
            let e = collect(&roots, &spec(&[p]), Caps::default()).unwrap_err();
            assert!(e.contains("symbolic link"), "{p}: {e}");
        }
    }

    #[test]
    fn caps_are_refused_with_their_names() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3 {
            std::fs::write(d.path().join(format!("f{i}")), "12345").unwrap();
        }
        let roots = Roots {
            workspace: d.path().to_path_buf(),
            target: None,
        };
        let e = collect(
            &roots,
            &spec(&["f*"]),
            Caps {
                max_bytes: 1 << 20,
                max_count: 2,
            },
        )
        .unwrap_err();
        assert!(e.contains(env::ARTIFACTS_MAX_COUNT), "{e}");
        let e = collect(
            &roots,
            &spec(&["f*"]),
            Caps {
                max_bytes: 14,
                max_count: 10,
            },
        )
        .unwrap_err();
        assert!(
            e.contains(env::ARTIFACTS_MAX_BYTES) && e.contains("15 bytes"),
            "{e}"
        );
    }
}
