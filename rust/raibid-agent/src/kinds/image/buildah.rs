//! Buildah calls: every one an argv (never a shell string), in its own process group, its output in
//! the job's log under the phase's step name; a cancel, lease loss, shutdown or timeout kills the
//! whole process tree.

use super::ImageConfig;
use crate::process::LogTx;
use crate::process::{kill_group, StepEnd, MAX_LINE, SPLIT_MARK};
use crate::stop::Stop;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// Where a Buildah storage lives and how it is driven.
#[derive(Debug, Clone)]
pub struct Buildah {
    /// The binary.
    pub bin: PathBuf,
    /// `--root` (images, layers, containers: the layer cache).
    pub root: PathBuf,
    /// `--runroot`.
    pub runroot: PathBuf,
    /// `--storage-driver`.
    pub driver: String,
    /// TMPDIR of Buildah (`RUN --mount=type=cache` data lives below it, so it persists too).
    pub tmpdir: PathBuf,
}

impl Buildah {
    /// The storage below the agent's cache directory (persists across jobs on the node).
    pub fn under(cache_dir: &Path, cfg: &ImageConfig) -> Buildah {
        let base = cache_dir.join("buildah");
        Buildah {
            bin: cfg.buildah.clone(),
            root: base.join("storage"),
            runroot: base.join("run"),
            driver: cfg.storage_driver.clone(),
            tmpdir: base.join("tmp"),
        }
    }

    /// The global options every call starts with.
    pub fn global(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.to_string_lossy().into_owned(),
            "--runroot".into(),
            self.runroot.to_string_lossy().into_owned(),
            "--storage-driver".into(),
            self.driver.clone(),
        ]
    }

    /// A command for `args` (global options first), with a cleared environment.
    pub fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(self.global())
            .args(args)
            .env_clear()
            .env("TMPDIR", &self.tmpdir)
            .env("BUILDAH_ISOLATION", "chroot")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for k in ["PATH", "HOME", "LANG", "LC_ALL"] {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
        cmd
    }

    /// Run a short query (no log), returning stdout; errors carry stderr.
    pub async fn query(&self, args: &[String]) -> Result<String, String> {
        let out = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Create the storage directories.
    pub fn prepare(&self) -> std::io::Result<()> {
        for d in [&self.root, &self.runroot, &self.tmpdir] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }
}

/// The end of a logged call and the last lines it wrote to stderr (for the failure message).
pub(crate) struct Run {
    pub(crate) end: StepEnd,
    pub(crate) tail: Vec<String>,
}

async fn pump<R: AsyncRead + Unpin>(
    r: R,
    step: String,
    stream: &'static str,
    tx: LogTx,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(1024);
    // Reads are bounded (as for Rust steps, `process::pump`): a line longer than a piece is sent in
    // marked pieces, so output without newlines costs at most one piece of memory.
    let piece = (MAX_LINE - SPLIT_MARK.len()) as u64;
    loop {
        buf.clear();
        match (&mut reader).take(piece).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let continued = buf.last() != Some(&b'\n') && buf.len() as u64 == piece;
                while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                let mut line = String::from_utf8_lossy(&buf).into_owned();
                if continued {
                    line.push_str(SPLIT_MARK);
                }
                if let Some(t) = &tail {
                    if let Ok(mut t) = t.lock() {
                        if !line.trim().is_empty() {
                            t.push_back(line.clone());
                            while t.len() > 5 {
                                t.pop_front();
                            }
                        }
                    }
                }
                if tx
                    .send((step.clone(), stream.to_string(), line))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
}

/// Run `cmd` with its output in the log under `step`, until it exits, `limit` passes or `stop` says so;
/// then kill its whole process group.
pub(crate) async fn run_logged(
    mut cmd: Command,
    step: &str,
    logs: &LogTx,
    stop: &watch::Receiver<Stop>,
    limit: Duration,
) -> Run {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Run {
                end: StepEnd::SpawnFailed(e.to_string()),
                tail: Vec::new(),
            }
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, step.to_string(), "stdout", logs.clone(), None)));
    let err = child.stderr.take().map(|o| {
        tokio::spawn(pump(
            o,
            step.to_string(),
            "stderr",
            logs.clone(),
            Some(tail.clone()),
        ))
    });
    let mut stop = stop.clone();
    let end = tokio::select! {
        st = child.wait() => match st {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                match (s.code(), s.signal()) {
                    (Some(c), _) => StepEnd::Exited(c),
                    (None, Some(sig)) => StepEnd::Signalled(sig),
                    _ => StepEnd::Exited(-1),
                }
            }
            Err(e) => StepEnd::SpawnFailed(e.to_string()),
        },
        _ = tokio::time::sleep(limit) => StepEnd::TimedOut,
        s = async {
            loop {
                let s = *stop.borrow_and_update();
                if s != Stop::None { break s; }
                if stop.changed().await.is_err() { std::future::pending::<()>().await; }
            }
        } => match s { Stop::LeaseLost => StepEnd::LeaseLost, Stop::Release => StepEnd::Released, _ => StepEnd::Cancelled },
    };
    // Nothing of the call outlives it: buildah, buildah-chroot-runtime and what runs inside.
    if pgid > 0 {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    for h in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Run { end, tail }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn output_without_newlines_is_read_in_bounded_marked_pieces() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend_from_slice(b"\nshort\n");
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        pump(&input[..], "building".into(), "stdout", tx, None).await;
        let mut lines = Vec::new();
        while let Ok((_, _, l)) = rx.try_recv() {
            lines.push(l);
        }
        assert_eq!(lines.last().map(String::as_str), Some("short"));
        let pieces = &lines[..lines.len() - 1];
        assert!(pieces.len() > 1, "the long line was split");
        assert!(
            pieces.iter().all(|l| l.len() <= MAX_LINE),
            "no piece over MAX_LINE"
        );
        for p in &pieces[..pieces.len() - 1] {
            assert!(p.ends_with(SPLIT_MARK), "a continued piece is marked");
        }
        let payload: usize = pieces
            .iter()
            .map(|l| l.trim_end_matches(SPLIT_MARK).len())
            .sum();
        assert_eq!(payload, 1 << 20, "no byte lost");
    }
}
