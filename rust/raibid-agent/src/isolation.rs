//! What a build step can reach (docs/adr/0009-agent-step-isolation.md): the agent is not dumpable (its
//! `/proc/<pid>/environ` and memory are closed to same-uid processes), steps can run as a separate
//! unprivileged user, the workspace and cache roots are owner-only and must be ours, and every process a
//! step leaves behind — also one that escaped its process group with `setsid` — is found by the job's
//! marker in its environment and killed.

use anyhow::{bail, Context};
use nix::unistd::{Uid, User};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The user steps run as (when the agent drops privileges for them).
#[derive(Debug, Clone)]
pub struct StepUser {
    /// Its name (for `USER` and messages).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its home directory.
    pub home: PathBuf,
}

/// Close the agent's own `/proc/<pid>/{environ,mem,…}` to processes of the same uid (what a step is
/// when the agent does not drop privileges). Root (CAP_SYS_PTRACE) is not stopped by this: an agent
/// running as root must give its steps a separate user.
pub fn make_undumpable() -> anyhow::Result<()> {
    nix::sys::prctl::set_dumpable(false).context("prctl(PR_SET_DUMPABLE, 0)")
}

/// Resolve `--step-user`. `None`: steps run as the agent's own user.
pub fn resolve_step_user(spec: Option<&str>) -> anyhow::Result<Option<StepUser>> {
    let euid = Uid::effective();
    let Some(spec) = spec.map(str::trim).filter(|s| !s.is_empty()) else {
        if euid.is_root() {
            tracing::warn!(
                "the agent runs as root and {} is not set: steps run as root and can read the agent's secrets",
                raibid_core::contract::env::STEP_USER
            );
        }
        return Ok(None);
    };
    let user = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(spec),
    }
    .with_context(|| format!("looking up step user `{spec}`"))?;
    let Some(user) = user else {
        bail!(
            "{}: no such user `{spec}`",
            raibid_core::contract::env::STEP_USER
        );
    };
    if user.uid == euid {
        return Ok(None);
    }
    if !euid.is_root() {
        bail!(
            "{}=`{spec}` needs the agent to run as root (it runs as uid {euid})",
            raibid_core::contract::env::STEP_USER
        );
    }
    if user.uid.is_root() {
        bail!(
            "{}: refusing to run steps as root",
            raibid_core::contract::env::STEP_USER
        );
    }
    Ok(Some(StepUser {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }))
}

/// Create (or check) an owner-only directory the agent keeps per-job data in: mode 0700, owned by the
/// agent or the step user (who then owns it), never a symlink and never owned by someone else. Its
/// ancestors must not be writable by other users (sticky directories such as /tmp excepted), and
/// when a step user is given it must be able to reach it.
pub fn prepare_private_dir(dir: &Path, step: Option<&StepUser>) -> anyhow::Result<()> {
    let euid = Uid::effective().as_raw();
    let ancestors: Vec<&Path> = dir.ancestors().skip(1).collect();
    // Missing ancestors are created: owner-only, or searchable (not listable) when a step user needs
    // to pass through.
    for a in ancestors.iter().rev() {
        if a.as_os_str().is_empty() || a.exists() {
            continue;
        }
        match std::fs::DirBuilder::new()
            .mode(if step.is_some() { 0o711 } else { 0o700 })
            .create(a)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("creating {}", a.display()))
            }
            _ => {}
        }
    }
    for a in &ancestors {
        if a.as_os_str().is_empty() {
            continue;
        }
        let m = std::fs::metadata(a).with_context(|| format!("reading {}", a.display()))?;
        let mode = m.mode();
        let trusted_owner =
            m.uid() == 0 || m.uid() == euid || step.is_some_and(|u| u.uid == m.uid());
        if !trusted_owner || (mode & 0o022 != 0 && mode & 0o1000 == 0) {
            bail!(
                "refusing to use {}: its parent {} is owned by uid {} with mode {:o} (another user could replace it)",
                dir.display(),
                a.display(),
                m.uid(),
                mode & 0o7777
            );
        }
        if let Some(u) = step {
            if m.uid() != u.uid && mode & 0o001 == 0 {
                bail!(
                    "the step user `{}` cannot reach {}: {} is not searchable by others (mode {:o})",
                    u.name,
                    dir.display(),
                    a.display(),
                    mode & 0o7777
                );
            }
        }
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.is_dir() {
                bail!("refusing to use {}: not a directory", dir.display());
            }
            let ours = m.uid() == euid || step.is_some_and(|u| u.uid == m.uid());
            if !ours {
                bail!(
                    "refusing to use {}: it is owned by uid {}, not by this agent (uid {euid}){}",
                    dir.display(),
                    m.uid(),
                    step.map(|u| format!(" or the step user `{}`", u.name))
                        .unwrap_or_default()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("creating {}", dir.display()))
                }
                _ => {}
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
    if let Some(u) = step {
        std::os::unix::fs::lchown(dir, Some(u.uid), Some(u.gid))
            .with_context(|| format!("handing {} to the step user", dir.display()))?;
    }
    Ok(())
}

/// Hand a tree the agent wrote (the clone) to the step user. Children first, so every directory stays
/// the agent's while it is walked and no step can swap an entry for a symlink under it; symlinks are
/// changed themselves, never followed.
pub fn chown_tree(root: &Path, u: &StepUser) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(root)?;
    if m.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), u)?;
        }
    }
    std::os::unix::fs::lchown(root, Some(u.uid), Some(u.gid))
}

/// The environment entry every process of a job's steps carries (`RAIBID_JOB_ID=<id>`).
pub fn job_marker(job_id: &str) -> Vec<u8> {
    format!("RAIBID_JOB_ID={job_id}").into_bytes()
}

/// Kill every process that carries the job's marker in its environment (what a step left behind: a
/// daemon, a `setsid` grandchild holding the step's stdout) and reap those that were reparented to
/// the agent. Returns the pids killed.
pub fn kill_marked(job_id: &str) -> Vec<i32> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let marker = job_marker(job_id);
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    // A process can fork while we scan: repeat until a pass finds nothing new (bounded).
    for _ in 0..5 {
        let mut found = false;
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return killed;
        };
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me || killed.contains(&pid) {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_slice()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed.push(pid);
                found = true;
            }
        }
        if !found {
            break;
        }
    }
    for pid in &killed {
        if parent_of(*pid) == Some(me) {
            // Reparented to us (we are PID 1 of a container or a subreaper): reap it. Never a child
            // tokio waits for: those carry no marker once their step has been waited for.
            let _ = nix::sys::wait::waitpid(Pid::from_raw(*pid), None);
        }
    }
    if !killed.is_empty() {
        tracing::info!(job = %job_id, pids = ?killed, "killed processes the job's steps left behind");
    }
    killed
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …; comm may contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_private_dir_is_created_owner_only_and_a_foreign_one_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        prepare_private_dir(&d, None).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        // Loosened by someone: tightened again.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        prepare_private_dir(&d, None).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        // A symlink is refused.
        let l = t.path().join("link");
        std::os::unix::fs::symlink(&d, &l).unwrap();
        assert!(prepare_private_dir(&l, None)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
