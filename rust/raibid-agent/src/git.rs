//! Cloning a job's commit: URL policy (schemes, hosts) and `git` invocations with arguments passed as
//! argv (never through a shell) and credentials passed through the environment (never on a command
//! line, so they appear in no process title and no log line).

use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;
use url::Url;

/// Which repositories an agent may clone.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    /// Allowed schemes (`https`, `http`, `ssh`, `file`).
    pub schemes: Vec<String>,
    /// Allowed hosts; empty means any host.
    pub hosts: Vec<String>,
}

impl UrlPolicy {
    /// Parse comma-separated lists.
    pub fn from_lists(schemes: &str, hosts: &str) -> UrlPolicy {
        let split = |s: &str| {
            s.split(',')
                .map(|x| x.trim().to_ascii_lowercase())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        };
        UrlPolicy {
            schemes: split(schemes),
            hosts: split(hosts),
        }
    }

    /// Check a clone URL. `git@host:owner/repo` (scp-like ssh) is accepted as ssh.
    pub fn check(&self, raw: &str) -> Result<(), String> {
        if raw.starts_with('-') || raw.chars().any(|c| c.is_control()) {
            return Err("repository URL is not a URL".into());
        }
        let (scheme, host) = match Url::parse(raw) {
            Ok(u) => (
                u.scheme().to_string(),
                u.host_str().unwrap_or("").to_ascii_lowercase(),
            ),
            Err(_) => match scp_like_host(raw) {
                Some(h) => ("ssh".to_string(), h),
                None => return Err("repository URL is not a URL".into()),
            },
        };
        let scheme = if scheme == "git+ssh" || scheme == "ssh+git" {
            "ssh".into()
        } else {
            scheme
        };
        if !self.schemes.contains(&scheme) {
            return Err(format!(
                "scheme `{scheme}` is not allowed (allowed: {})",
                self.schemes.join(", ")
            ));
        }
        if scheme != "file" && !self.hosts.is_empty() && !self.hosts.contains(&host) {
            return Err(format!("host `{host}` is not allowed"));
        }
        Ok(())
    }
}

/// The URL with any user name and password replaced by `***` (for log lines): both
/// `https://user:TOKEN@host` and `https://TOKEN@host` carry a secret.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) if u.password().is_some() || !u.username().is_empty() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            if !u.username().is_empty() {
                let _ = u.set_username("***");
            }
            u.to_string()
        }
        _ => raw.to_string(),
    }
}

fn scp_like_host(raw: &str) -> Option<String> {
    let (user_host, path) = raw.split_once(':')?;
    if path.is_empty() || user_host.contains('/') {
        return None;
    }
    let host = user_host.rsplit('@').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// HTTP(S) credentials.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// User name (Gitea accepts any with a token).
    pub username: Option<String>,
    /// Token or password.
    pub token: Option<String>,
    /// The forge hosts the token may be sent to (lower case). A token goes to no other host, and a
    /// git command that carries it does not follow redirects.
    pub hosts: Vec<String>,
}

impl Credentials {
    /// The `Authorization` header value for `url`, if a token is configured and `url` is an HTTP(S)
    /// URL of one of the forge hosts.
    fn header_for(&self, url: &str) -> Option<String> {
        let token = self.token.as_deref()?;
        let u = Url::parse(url).ok()?;
        if !matches!(u.scheme(), "https" | "http") {
            return None;
        }
        let host = u.host_str()?.to_ascii_lowercase();
        if !self.hosts.contains(&host) {
            return None;
        }
        let user = self.username.as_deref().unwrap_or("raibid");
        Some(format!(
            "Authorization: Basic {}",
            base64(&format!("{user}:{token}"))
        ))
    }
}

/// The outcome of one git command, with its output lines for the job log.
pub struct GitOutput {
    /// Exit success.
    pub ok: bool,
    /// stdout + stderr lines.
    pub lines: Vec<String>,
    /// stdout, trimmed.
    pub stdout: String,
}

/// Why a git command did not run to its end.
#[derive(Debug)]
pub enum GitError {
    /// git could not be started.
    Spawn(std::io::Error),
    /// The deadline passed; git's process group was killed.
    TimedOut,
    /// The job was stopped (cancel, lease lost, shutdown); git's process group was killed.
    Stopped,
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::Spawn(e) => write!(f, "cannot run git: {e}"),
            GitError::TimedOut => f.write_str("git timed out"),
            GitError::Stopped => f.write_str("git was stopped"),
        }
    }
}

/// Limits of one git command: a deadline and the job's stop signal (anything but `Stop::None`).
#[derive(Clone)]
pub(crate) struct Limits {
    /// Kill git at this instant.
    pub(crate) deadline: std::time::Instant,
    /// Kill git when the job is stopped (cancel, lease lost, shutdown).
    pub(crate) stop: tokio::sync::watch::Receiver<crate::stop::Stop>,
    /// Run git as this user (the step user): the caches are the steps' to write, so whatever a step
    /// could plant there (repository config, hooks) must never run with the agent's privileges.
    pub(crate) user: Option<crate::isolation::StepUser>,
    /// With `user`: a global git config file that trusts every repository (`safe.directory = *`).
    pub(crate) global_config: Option<std::path::PathBuf>,
}

/// Run `git <args>` in `dir` with a minimal environment, in its own process group (killed as a whole
/// at the deadline or a stop), credentials attached only for `url_for_creds` on a forge host.
pub(crate) async fn git(
    dir: &Path,
    args: &[&str],
    creds: &Credentials,
    url_for_creds: Option<&str>,
    limits: &Limits,
) -> Result<GitOutput, GitError> {
    let mut cmd = command(dir, limits);
    cmd.args(args);
    // Credentials go in as config through the environment (`GIT_CONFIG_*`), scoped to the URL, only
    // for a forge host, and with redirects off so the header cannot follow a redirect elsewhere.
    if let Some(header) = url_for_creds.and_then(|u| creds.header_for(u).map(|h| (u, h))) {
        let (url, header) = header;
        let n = NEUTRAL_CONFIG.len();
        cmd.env("GIT_CONFIG_COUNT", (n + 2).to_string())
            .env(
                format!("GIT_CONFIG_KEY_{n}"),
                format!("http.{url}.extraHeader"),
            )
            .env(format!("GIT_CONFIG_VALUE_{n}"), header)
            .env(format!("GIT_CONFIG_KEY_{}", n + 1), "http.followRedirects")
            .env(format!("GIT_CONFIG_VALUE_{}", n + 1), "false");
    }
    let child = cmd.spawn().map_err(GitError::Spawn)?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut stop = limits.stop.clone();
    let deadline = tokio::time::Instant::from_std(limits.deadline);
    let out = tokio::select! {
        o = child.wait_with_output() => o.map_err(GitError::Spawn)?,
        _ = tokio::time::sleep_until(deadline) => {
            kill_group(pgid);
            return Err(GitError::TimedOut);
        }
        _ = stopped(&mut stop) => {
            kill_group(pgid);
            return Err(GitError::Stopped);
        }
    };
    let mut lines = Vec::new();
    for chunk in [&out.stdout, &out.stderr] {
        for l in String::from_utf8_lossy(chunk).lines() {
            if !l.trim().is_empty() {
                lines.push(l.to_string());
            }
        }
    }
    Ok(GitOutput {
        ok: out.status.success(),
        lines,
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// Resolves when the job is stopped (anything but `Stop::None`); never, if the sender is gone.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<crate::stop::Stop>) {
    loop {
        if *stop.borrow_and_update() != crate::stop::Stop::None {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// git's absolute path, looked up once in the agent's `PATH` (`lookup::which`: `posix_spawn`, not a
/// `fork` of the agent, per git process).
pub(crate) fn program() -> &'static std::ffi::OsStr {
    static GIT: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    GIT.get_or_init(|| {
        std::env::var_os("PATH")
            .and_then(|path| crate::lookup::which("git", &path))
            .map_or_else(|| "git".into(), |p| p.into_os_string())
    })
}

/// Configuration every git command of the agent carries with command-line precedence (above any
/// repository's own `config`), so that nothing a repository's config or hooks directory holds runs a
/// program or moves traffic: no hooks, no fsmonitor, no proxy, no credential helper, no pager.
/// Defence in depth: steps cannot write the mirrors (sandbox), and the agent checks a mirror's
/// config and a checkout's `.git` before it runs git in them (`cache::gitdir`).
pub(crate) const NEUTRAL_CONFIG: &[(&str, &str)] = &[
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("http.proxy", ""),
    ("credential.helper", ""),
    ("core.pager", "cat"),
    ("protocol.ext.allow", "never"),
];

/// A `git` command in `dir` with the agent's git environment: nothing inherited but `PATH` and
/// `HOME`, no system config, no prompts, only the allowed protocols, its own process group (killed as
/// a whole at a deadline or a stop), and the step user when steps run as one.
pub(crate) fn command(dir: &Path, limits: &Limits) -> Command {
    let mut cmd = Command::new(program());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()),
        )
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_COUNT", NEUTRAL_CONFIG.len().to_string())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_ALLOW_PROTOCOL", "http:https:ssh:file")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (i, (k, v)) in NEUTRAL_CONFIG.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
            .env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    if let Some(v) = std::env::var_os("GIT_SSH_COMMAND") {
        cmd.env("GIT_SSH_COMMAND", v);
    }
    if let Some(u) = &limits.user {
        // std drops the supplementary groups too when it changes the uid as root.
        cmd.uid(u.uid).gid(u.gid).env("HOME", &u.home);
        // As the step user, git reads repositories the agent owns (a local source, in local mode):
        // trust them for that user (the risk of `safe.directory` is to the user running git, here one
        // with no more rights than a step). GIT_CONFIG_GLOBAL survives into local-transport children.
        if let Some(g) = &limits.global_config {
            cmd.env("GIT_CONFIG_GLOBAL", g);
        }
    }
    cmd
}

pub(crate) fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Longest reason taken from git's output into a job's failure reason.
pub const MAX_GIT_REASON: usize = 240;

/// Git's own one-line reason from a failed command's output: its first `fatal:` line (git's first
/// fatal is the specific one: `'/x' does not appear to be a git repository`, `couldn't find remote ref
/// refs/heads/nope`), else its first `error:` line, else its last non-empty line; without the prefix,
/// credentials in URLs replaced by `***`, control characters dropped, cut at [`MAX_GIT_REASON`] bytes
/// on a character boundary with `…`. The job's secrets are masked later, with the whole reason.
pub fn one_line_reason(lines: &[String]) -> Option<String> {
    let pick = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let raw = pick("fatal:")
        .or_else(|| pick("error:"))
        .or_else(|| lines.iter().rev().map(|l| l.trim()).find(|l| !l.is_empty()))?;
    let redacted: Vec<String> = raw
        .split(' ')
        .map(|w| {
            let t = w.trim_matches(|c| matches!(c, '\'' | '"' | ',' | '(' | ')'));
            if t.contains("://") && t.contains('@') {
                w.replace(t, &redact_url(t))
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut s: String = redacted
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if s.is_empty() {
        return None;
    }
    if s.len() > MAX_GIT_REASON {
        let mut end = MAX_GIT_REASON - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let p = UrlPolicy::from_lists("https,ssh", "gitea.local");
        assert!(p.check("https://gitea.local/o/r.git").is_ok());
        assert!(p.check("ssh://git@gitea.local/o/r.git").is_ok());
        assert!(p.check("git@gitea.local:o/r.git").is_ok());
        assert!(p
            .check("https://evil.example/o/r.git")
            .unwrap_err()
            .contains("host"));
        assert!(p.check("file:///etc").unwrap_err().contains("scheme"));
        assert!(p.check("--upload-pack=touch /tmp/x").is_err());
        assert!(p.check("ext::sh -c touch% /tmp/pwned").is_err());
        let any = UrlPolicy::from_lists("file,https", "");
        assert!(any.check("file:///tmp/repo").is_ok());
        assert!(any.check("https://anything/x").is_ok());
    }

    #[test]
    fn redaction_hides_user_and_password() {
        assert_eq!(
            redact_url("https://TOKEN@git.example/o/r.git"),
            "https://***@git.example/o/r.git"
        );
        assert_eq!(
            redact_url("https://u:TOKEN@git.example/o/r.git"),
            "https://***:***@git.example/o/r.git"
        );
        assert_eq!(
            redact_url("https://git.example/o/r.git"),
            "https://git.example/o/r.git"
        );
    }

    #[test]
    fn token_goes_only_to_forge_hosts() {
        let c = Credentials {
            username: None,
            token: Some("t".into()),
            hosts: vec!["gitea.local".into()],
        };
        assert!(c.header_for("https://gitea.local/o/r.git").is_some());
        assert!(c.header_for("https://GITEA.local/o/r.git").is_some());
        assert!(c.header_for("https://evil.example/o/r.git").is_none());
        assert!(c.header_for("file:///tmp/r").is_none());
        let none = Credentials {
            hosts: Vec::new(),
            ..c
        };
        assert!(none.header_for("https://gitea.local/o/r.git").is_none());
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(""), "");
        assert_eq!(base64("f"), "Zg==");
        assert_eq!(base64("fo"), "Zm8=");
        assert_eq!(base64("foo"), "Zm9v");
        assert_eq!(base64("foobar"), "Zm9vYmFy");
    }
    #[test]
    fn one_line_reason_is_gits_first_fatal_bounded_and_redacted() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            one_line_reason(&l(&[
                "fatal: '/srv/nope' does not appear to be a git repository",
                "fatal: Could not read from remote repository.",
                "",
                "Please make sure you have the correct access rights",
            ]))
            .as_deref(),
            Some("'/srv/nope' does not appear to be a git repository")
        );
        assert_eq!(
            one_line_reason(&l(&["error: x", "warning: y"])).as_deref(),
            Some("x")
        );
        let r = one_line_reason(&l(&[
            "fatal: unable to access 'https://user:s3cret@git.test/o/r.git/': 403",
        ]))
        .unwrap();
        assert!(!r.contains("s3cret") && r.contains("***"), "{r}");
        let r = one_line_reason(&l(&[&format!("fatal: {}", "é".repeat(400))])).unwrap();
        assert!(r.len() <= MAX_GIT_REASON && r.ends_with('…'), "{}", r.len());
        assert_eq!(one_line_reason(&l(&["", "  "])), None);
    }
}
