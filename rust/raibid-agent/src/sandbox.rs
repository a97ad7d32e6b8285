//! Every build step (and everything else that runs the repository's code or a program it names: the
//! `rustc -vV` of the cache key) runs in a bubblewrap sandbox (docs/adr/0011-step-sandbox.md,
//! docs/security.md):
//!
//! - its own user, PID, IPC and UTS namespaces, no capabilities, a new session: when the step's
//!   process ends, the PID namespace ends and the kernel kills every process left in it, whatever
//!   `setsid`, double fork or scrubbed environment it used; the sandbox also dies with the agent;
//! - its own mount namespace built from nothing: the system directories and the toolchain read-only,
//!   a fresh `/proc` (only the step's own processes: no agent, no git holding a token), `/dev` and
//!   `/tmp`, an empty `HOME`, and of the node's caches and workspaces only the job's own checkout,
//!   target directory and `CARGO_HOME` (writable) and its repository's git mirror (read-only). Other
//!   repositories' slots and mirrors, the Buildah layer store, the agent's state and credential files
//!   do not exist inside.
//!
//! The agent checks at start that the sandbox works (`probe`) and refuses to start otherwise: there is
//! no unsandboxed mode.

use crate::isolation::StepUser;
use anyhow::{bail, Context};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// The directories every step sees read-only (those that exist; a symbolic link such as a merged-usr
/// `/bin -> usr/bin` is recreated as the same link).
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix", "/sys",
];

/// Files under the system directories that a step must not read (root-only on the host, but a step
/// of an agent running as root is uid 0 in its namespace).
const MASKED: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
];

/// How to start sandboxes on this host: bwrap's path, the user steps run as, and files to hide.
#[derive(Debug, Clone)]
pub struct Sandbox {
    bwrap: PathBuf,
    user: Option<StepUser>,
    masked: Vec<PathBuf>,
    shared: Vec<PathBuf>,
}

/// What one sandboxed command may see besides the system: its working directory and the paths it
/// may write (both at their host paths, so absolute paths in cargo's fingerprints stay the same) and
/// the paths it may only read.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Working directory (must be one of `rw`, or below one).
    pub cwd: PathBuf,
    /// Writable paths.
    pub rw: Vec<PathBuf>,
    /// Read-only paths.
    pub ro: Vec<PathBuf>,
    /// Device nodes (a GPU job's `/dev/nvidia*`), bound as devices under `/dev` by their names.
    pub dev: Vec<PathBuf>,
}

#[derive(Debug)]
enum Mount {
    Symlink(PathBuf, PathBuf),
    Ro(PathBuf),
    Rw(PathBuf),
    Tmpfs(PathBuf),
}

impl Mount {
    fn path(&self) -> &Path {
        match self {
            Mount::Symlink(_, p) | Mount::Ro(p) | Mount::Rw(p) | Mount::Tmpfs(p) => p,
        }
    }
}

fn under_system(p: &Path) -> bool {
    SYSTEM
        .iter()
        .any(|s| *s != "/sys" && *s != "/etc" && p.starts_with(s))
}

fn env_of<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(ek, _)| ek == k)
        .map(|(_, v)| v.as_str())
}

/// Can `user` reach (search every directory above) and read `p`? Always true without a step user
/// (the agent's own rights).
pub(crate) fn reachable(p: &Path, user: Option<&StepUser>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(u) = user else {
        return p.exists();
    };
    let bit = |m: &std::fs::Metadata, shift: u32| -> bool {
        let mode = m.mode();
        if m.uid() == u.uid {
            mode & (0o100 << shift) != 0 || shift == 1 && mode & 0o400 != 0
        } else if m.gid() == u.gid {
            mode & (0o010 << shift) != 0 || shift == 1 && mode & 0o040 != 0
        } else {
            mode & (0o001 << shift) != 0 || shift == 1 && mode & 0o004 != 0
        }
    };
    for a in p.ancestors().skip(1) {
        match std::fs::metadata(a) {
            Ok(m) if bit(&m, 0) => {}
            _ => return false,
        }
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => bit(&m, 0),
        Ok(m) => bit(&m, 1),
        Err(_) => false,
    }
}

impl Sandbox {
    /// Find `bwrap` and check that a sandbox starts here as `user` (the step user, or the agent's own
    /// uid). `masked`: files to hide even where a bound directory holds them (credential files).
    /// `shared`: directories every step may write (`RAIBID_SANDBOX_SHARED_DIRS`).
    pub async fn probe(
        user: Option<StepUser>,
        masked: Vec<PathBuf>,
        shared: Vec<PathBuf>,
    ) -> anyhow::Result<Sandbox> {
        if let Some(p) = shared.iter().find(|p| !p.is_absolute()) {
            bail!(
                "{}: `{}` is not an absolute path",
                raibid_core::contract::env::SANDBOX_SHARED_DIRS,
                p.display()
            );
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        let Some(bwrap) = crate::lookup::which("bwrap", &path) else {
            bail!(
                "build steps run in a bubblewrap sandbox and `bwrap` is not on PATH: install it \
                 (Debian/Ubuntu: apt-get install bubblewrap; the agent image ships it)"
            );
        };
        let sb = Sandbox {
            bwrap,
            user,
            masked,
            shared,
        };
        let view = View {
            cwd: PathBuf::from("/"),
            ..View::default()
        };
        let out = sb
            .command(
                &view,
                &[("PATH".into(), "/usr/bin:/bin".into())],
                OsStr::new("true"),
                &[],
            )
            .output()
            .await
            .with_context(|| format!("starting {}", sb.bwrap.display()))?;
        if !out.status.success() {
            bail!(
                "build steps run in a bubblewrap sandbox and it does not start here ({} exited with {}: {}). \
                 It needs unprivileged user namespaces{}: on Ubuntu 24.04 bwrap's AppArmor profile allows them; \
                 in a pod, the agent's Localhost seccomp profile and procMount (docs/operations.md)",
                sb.bwrap.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                sb.user
                    .as_ref()
                    .map(|u| format!(" for the step user `{}`", u.name))
                    .unwrap_or_default()
            );
        }
        Ok(sb)
    }

    /// The user steps run as (None: the agent's own).
    pub fn user(&self) -> Option<&StepUser> {
        self.user.as_ref()
    }

    /// `program args` in a sandbox showing `view`, with exactly the environment `env`. The command is
    /// bwrap itself (in its own process group, killed on drop, as the step user when there is one):
    /// killing it kills the sandbox (`--die-with-parent`), and bwrap exits with the program's exit
    /// code (128 + N for a signal).
    pub fn command(
        &self,
        view: &View,
        env: &[(String, String)],
        program: &OsStr,
        args: &[&OsStr],
    ) -> Command {
        let mut cmd = Command::new(&self.bwrap);
        cmd.args([
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--hostname",
            "raibid-step",
        ]);
        // A fresh /proc (only the sandbox's processes) and a minimal /dev first: the device nodes a
        // view names are bound into that /dev below.
        cmd.args(["--proc", "/proc", "--dev", "/dev"]);
        for m in self.mounts(view, env) {
            match m {
                Mount::Symlink(target, p) => {
                    cmd.arg("--symlink").arg(target).arg(p);
                }
                Mount::Ro(p) => {
                    cmd.arg("--ro-bind-try").arg(&p).arg(&p);
                }
                Mount::Rw(p) => {
                    cmd.arg("--bind-try").arg(&p).arg(&p);
                }
                Mount::Tmpfs(p) => {
                    cmd.arg("--tmpfs").arg(p);
                }
            }
        }
        for f in MASKED
            .iter()
            .map(PathBuf::from)
            .chain(self.masked.iter().cloned())
        {
            if f.exists() && self.visible(&f, view, env) {
                cmd.arg("--ro-bind").arg("/dev/null").arg(f);
            }
        }
        for d in &view.dev {
            if let Some(name) = d.file_name() {
                cmd.arg("--dev-bind-try")
                    .arg(d)
                    .arg(Path::new("/dev").join(name));
            }
        }
        // The sandbox's own root (where the mount points live) is read-only too.
        cmd.args(["--remount-ro", "/", "--chdir"])
            .arg(&view.cwd)
            .arg("--")
            .arg(program)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(u) = &self.user {
            // std drops the supplementary groups too when it changes the uid as root.
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd
    }

    /// Would `f` be inside one of the view's mounts?
    fn visible(&self, f: &Path, view: &View, env: &[(String, String)]) -> bool {
        self.mounts(view, env).iter().any(|m| match m {
            Mount::Ro(p) | Mount::Rw(p) => f.starts_with(p),
            _ => false,
        })
    }

    fn mounts(&self, view: &View, env: &[(String, String)]) -> Vec<Mount> {
        let mut m: Vec<Mount> = Vec::new();
        for s in SYSTEM {
            let p = Path::new(s);
            match std::fs::symlink_metadata(p) {
                Ok(md) if md.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(p) {
                        m.push(Mount::Symlink(t, p.to_path_buf()));
                    }
                }
                Ok(md) if md.is_dir() => m.push(Mount::Ro(p.to_path_buf())),
                _ => {}
            }
        }
        // A resolver configuration that links out of /etc (systemd-resolved's stub) is bound itself.
        if let Ok(t) = std::fs::canonicalize("/etc/resolv.conf") {
            if !t.starts_with("/etc") && !under_system(&t) {
                m.push(Mount::Ro(t));
            }
        }
        m.push(Mount::Tmpfs("/tmp".into()));
        m.push(Mount::Tmpfs("/var/tmp".into()));
        for k in ["HOME", "TMPDIR"] {
            if let Some(v) = env_of(env, k).filter(|v| v.starts_with('/') && *v != "/") {
                let p = PathBuf::from(v);
                if !under_system(&p) && !p.starts_with("/etc") {
                    m.push(Mount::Tmpfs(p));
                }
            }
        }
        // The toolchain: RUSTUP_HOME and every PATH directory outside the system ones (e.g.
        // ~/.cargo/bin), read-only, where the step's user can reach them.
        let mut tool: Vec<PathBuf> = Vec::new();
        if let Some(r) = env_of(env, "RUSTUP_HOME") {
            tool.push(r.into());
        }
        if let Some(path) = env_of(env, "PATH") {
            tool.extend(std::env::split_paths(OsStr::new(path)).filter(|p| p.is_absolute()));
        }
        for t in tool {
            if !under_system(&t) && reachable(&t, self.user.as_ref()) {
                m.push(Mount::Ro(t));
            }
        }
        for p in &view.ro {
            m.push(Mount::Ro(p.clone()));
        }
        for p in view.rw.iter().chain(self.shared.iter()) {
            m.push(Mount::Rw(p.clone()));
        }
        // Parents before children (a bind inside a tmpfs comes after the tmpfs); otherwise in order.
        m.sort_by_key(|x| x.path().components().count());
        m.dedup_by(|a, b| {
            a.path() == b.path() && matches!((&*a, &*b), (Mount::Ro(_), Mount::Ro(_)))
        });
        m
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mounts_put_parents_first_and_binds_over_tmpfs() {
        let sb = Sandbox {
            bwrap: "/usr/bin/bwrap".into(),
            user: None,
            masked: Vec::new(),
            shared: Vec::new(),
        };
        let view = View {
            cwd: "/root/ws".into(),
            rw: vec!["/root/ws".into()],
            ro: vec![],
            dev: vec![],
        };
        let env = vec![("HOME".to_string(), "/root".to_string())];
        let m = sb.mounts(&view, &env);
        let home = m
            .iter()
            .position(|x| x.path() == Path::new("/root"))
            .unwrap();
        let ws = m
            .iter()
            .position(|x| x.path() == Path::new("/root/ws"))
            .unwrap();
        assert!(home < ws);
        assert!(matches!(m[home], Mount::Tmpfs(_)));
        assert!(matches!(m[ws], Mount::Rw(_)));
    }
}
