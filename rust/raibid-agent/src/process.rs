//! A step's process: its own process group, a cleared environment, its output pumped into the log.

use crate::runner::{JobCtx, LogTx};
use crate::Stop;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

pub(crate) enum StepEnd {
    Released,
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
    LeaseLost,
    SpawnFailed(String),
}

pub(crate) async fn pump<R: AsyncRead + Unpin>(
    r: R,
    step: String,
    stream: &'static str,
    tx: LogTx,
) {
    let mut reader = BufReader::new(r);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
                    buf.pop();
                }
                buf.truncate(64 * 1024);
                let line = String::from_utf8_lossy(&buf).into_owned();
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

pub(crate) fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

pub(crate) async fn run_step(
    ctx: &mut JobCtx<'_>,
    name: &str,
    script: &str,
    ws: &Path,
    env: &[(String, String)],
    limit: Duration,
) -> StepEnd {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(ws)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepEnd::SpawnFailed(e.to_string()),
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, name.to_string(), "stdout", ctx.logs.clone())));
    let err = child
        .stderr
        .take()
        .map(|o| tokio::spawn(pump(o, name.to_string(), "stderr", ctx.logs.clone())));
    let mut stop = ctx.stop.clone();
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
        _ = async {
            loop {
                if *stop.borrow_and_update() != Stop::None { break; }
                if stop.changed().await.is_err() { std::future::pending::<()>().await; }
            }
        } => match ctx.stopped() { Stop::LeaseLost => StepEnd::LeaseLost, Stop::Release => StepEnd::Released, _ => StepEnd::Cancelled },
    };
    // Whatever happened, nothing of the step outlives it: kill the whole process group.
    if pgid > 0 {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    for h in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    end
}
