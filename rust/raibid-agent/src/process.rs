//! A step's process: its own process group, a cleared environment (optionally another user), its
//! output pumped into the log with bounded reads, coalesced repeats and a per-job budget; whatever it
//! leaves behind is killed when it ends.

use crate::isolation;
use crate::stop::Stop;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Longest log line: longer output lines are split into pieces of at most this many bytes, each but
/// the last ending in [`SPLIT_MARK`].
pub const MAX_LINE: usize = 64 * 1024;
/// Ends every piece of a split line but the last.
pub const SPLIT_MARK: &str = " [raibid: line continues]";
/// What one log entry costs in Redis beyond its text (entry id, field names, step, stream, timestamp),
/// counted against the byte cap.
pub const ENTRY_OVERHEAD: u64 = 64;
/// How often a run of identical lines is summarised while it lasts.
const REPEAT_EVERY: Duration = Duration::from_secs(1);

/// Where log lines go: `(step, stream, line)` into the job's log flusher.
pub(crate) type LogTx = tokio::sync::mpsc::Sender<(String, String, String)>;

pub(crate) enum StepEnd {
    Released,
    Exited(i32),
    Signalled(i32),
    TimedOut,
    Cancelled,
    LeaseLost,
    SpawnFailed(String),
}

/// A job's log budget, shared by all its steps' output pumps: lines and bytes (with per-entry
/// overhead). Past the head budget one marker is sent and further output only goes into each step
/// stream's tail (its last lines, kept and sent when the stream ends, from a reserve of the budget), so
/// a noisy step never eats a later step's failure; the rest is read and dropped (counted).
#[derive(Debug)]
pub struct LogBudget {
    max_lines: u64,
    max_bytes: u64,
    all_lines: u64,
    all_bytes: u64,
    lines: AtomicU64,
    bytes: AtomicU64,
    over: AtomicBool,
    dropped_lines: AtomicU64,
    dropped_bytes: AtomicU64,
    /// Lines and bytes of step output sent before the cap was reached (the log's head).
    head_lines: AtomicU64,
    head_bytes: AtomicU64,
    /// A step stream's tail: at most this many lines and bytes.
    tail_lines: usize,
    tail_bytes: usize,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Send,
    /// The cap was reached with this line: send the marker instead.
    Marker,
    /// Over the cap: drop it.
    Drop,
}

impl LogBudget {
    /// A budget for step output under the queue's caps, keeping a reserve (a tenth, at most 64 KiB and
    /// 100 lines) for the agent's own lines (step results) after it, and one for the tails of the steps
    /// whose output came past the head budget (an eighth, at most 128 KiB and 2,000 lines: a few steps'
    /// whole tails; later tails past it are dropped and counted).
    pub fn new(cap_lines: u64, cap_bytes: u64) -> LogBudget {
        let all_lines = cap_lines - (cap_lines / 10).min(100);
        let all_bytes = cap_bytes - (cap_bytes / 10).min(64 * 1024);
        LogBudget {
            max_lines: all_lines - (cap_lines / 8).min(2_000),
            max_bytes: all_bytes - (cap_bytes / 8).min(128 * 1024),
            all_lines,
            all_bytes,
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            over: AtomicBool::new(false),
            dropped_lines: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            head_lines: AtomicU64::new(0),
            head_bytes: AtomicU64::new(0),
            tail_lines: ((cap_lines / 32) as usize).clamp(1, 200),
            tail_bytes: ((cap_bytes / 32) as usize).clamp(1024, 64 * 1024),
        }
    }

    /// Account for one line of `cost` bytes (text + overhead) against the head budget.
    pub fn admit(&self, cost: u64) -> Admit {
        if self.over.load(Ordering::Relaxed) {
            return Admit::Drop;
        }
        let l = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let b = self.bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        if l <= self.max_lines && b <= self.max_bytes {
            Admit::Send
        } else if !self.over.swap(true, Ordering::Relaxed) {
            // What was sent before this line: the head of the log (other pumps may have counted a
            // line meanwhile; those are not sent either).
            self.head_lines.store(l - 1, Ordering::Relaxed);
            self.head_bytes.store(b - cost, Ordering::Relaxed);
            Admit::Marker
        } else {
            Admit::Drop
        }
    }

    /// Account for one line of a tail (or its marker) against the whole budget (head and tail
    /// reserve). False: over it; the line is dropped.
    fn admit_tail(&self, cost: u64) -> bool {
        let l = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let b = self.bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        l <= self.all_lines && b <= self.all_bytes
    }

    fn dropped(&self, cost: u64) {
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(cost, Ordering::Relaxed);
    }

    /// Past the head budget (something of the job's output was, or will be, dropped)?
    pub fn exhausted(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    /// Lines and bytes seen so far (sent or not).
    pub fn seen(&self) -> (u64, u64) {
        (
            self.lines.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Lines and bytes (with overhead) of step output dropped so far.
    pub fn dropped_total(&self) -> (u64, u64) {
        (
            self.dropped_lines.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }

    /// Lines and bytes (with overhead) of step output sent before the cap was reached.
    pub fn head(&self) -> (u64, u64) {
        (
            self.head_lines.load(Ordering::Relaxed),
            self.head_bytes.load(Ordering::Relaxed),
        )
    }

    fn marker(&self) -> String {
        let (lines, bytes) = self.head();
        format!(
            "[raibid] log cap reached: kept the first {lines} lines ({bytes} bytes with per-line overhead) of output (the cap: {} lines / {} bytes); further output is dropped, except the last lines of each step, kept at its end",
            self.max_lines, self.max_bytes
        )
    }
}

/// One output stream of a step on its way to the log.
struct Sink {
    step: String,
    stream: &'static str,
    tx: LogTx,
    budget: Arc<LogBudget>,
    last: Option<Vec<u8>>,
    repeats: u64,
    since: Instant,
    /// The stream's last lines past the head budget (stream, text, cost), sent when it ends.
    tail: std::collections::VecDeque<(String, String, u64)>,
    tail_bytes: usize,
    /// Lines and bytes of this stream dropped (not in the log, not in the tail).
    dropped: (u64, u64),
}

impl Sink {
    /// Send one line through the budget. False when the log channel is gone.
    async fn send(&mut self, stream: &str, text: String) -> bool {
        let cost = (text.len() + self.step.len() + stream.len()) as u64 + ENTRY_OVERHEAD;
        let (stream, text) = match self.budget.admit(cost) {
            Admit::Send => (stream.to_string(), text),
            Admit::Marker => {
                let marker = self.budget.marker();
                self.keep_in_tail(stream, text, cost);
                ("system".to_string(), marker)
            }
            Admit::Drop => {
                self.keep_in_tail(stream, text, cost);
                return true;
            }
        };
        self.tx
            .send((self.step.clone(), stream, text))
            .await
            .is_ok()
    }

    /// Keep a line past the head budget in the tail; what the tail lets go is dropped (counted).
    fn keep_in_tail(&mut self, stream: &str, text: String, cost: u64) {
        self.tail_bytes += text.len();
        self.tail.push_back((stream.to_string(), text, cost));
        while self.tail.len() > self.budget.tail_lines || self.tail_bytes > self.budget.tail_bytes {
            let Some((_, t, c)) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= t.len();
            self.dropped.0 += 1;
            self.dropped.1 += c;
            self.budget.dropped(c);
        }
    }

    /// At the end of the stream: say what was dropped and send the tail (from the budget's reserve).
    async fn flush_tail(&mut self) {
        if self.tail.is_empty() && self.dropped.0 == 0 {
            return;
        }
        let (kept_lines, kept_bytes) = self.budget.head();
        let tail_bytes: u64 = self.tail.iter().map(|t| t.2).sum();
        let marker = format!(
            "[raibid] log cap: this job's log kept its first {kept_lines} lines ({kept_bytes} bytes) of output; {} lines ({} bytes) of step `{}` ({}) after them were dropped; its last {} lines ({tail_bytes} bytes) follow",
            self.dropped.0,
            self.dropped.1,
            self.step,
            self.stream,
            self.tail.len()
        );
        let cost = (marker.len() + self.step.len() + 6) as u64 + ENTRY_OVERHEAD;
        if self.budget.admit_tail(cost) {
            let _ = self
                .tx
                .send((self.step.clone(), "system".to_string(), marker))
                .await;
        }
        while let Some((stream, text, cost)) = self.tail.pop_front() {
            if !self.budget.admit_tail(cost) {
                self.budget.dropped(cost);
                continue;
            }
            if self
                .tx
                .send((self.step.clone(), stream, text))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    async fn flush_repeats(&mut self) -> bool {
        self.since = Instant::now();
        if self.repeats == 0 {
            return true;
        }
        let n = std::mem::take(&mut self.repeats);
        let s = if n == 1 { "" } else { "s" };
        self.send(
            "system",
            format!("[raibid] previous line repeated {n} more time{s}"),
        )
        .await
    }

    /// One complete line (`continued`: a piece of a longer one).
    async fn line(&mut self, raw: &[u8], continued: bool) -> bool {
        let mut raw = raw;
        if !continued {
            while let Some((b'\r', rest)) = raw.split_last() {
                raw = rest;
            }
            if self.last.as_deref() == Some(raw) {
                self.repeats += 1;
                if self.since.elapsed() >= REPEAT_EVERY {
                    return self.flush_repeats().await;
                }
                return true;
            }
        }
        if !self.flush_repeats().await {
            return false;
        }
        let mut text = String::from_utf8_lossy(raw).into_owned();
        let limit = if continued {
            MAX_LINE - SPLIT_MARK.len()
        } else {
            MAX_LINE
        };
        if text.len() > limit {
            let mut cut = limit;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if continued {
            text.push_str(SPLIT_MARK);
            self.last = None;
        } else {
            self.last = Some(raw.to_vec());
        }
        let stream = self.stream;
        self.send(stream, text).await
    }
}

/// Pump one output stream of a step into the log. Reads are bounded: a line longer than
/// [`MAX_LINE`] is sent in marked pieces, so output without newlines costs at most one piece of memory.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    r: R,
    step: String,
    stream: &'static str,
    tx: LogTx,
    budget: Arc<LogBudget>,
) {
    let mut reader = BufReader::with_capacity(MAX_LINE, r);
    let mut sink = Sink {
        step,
        stream,
        tx,
        budget,
        last: None,
        repeats: 0,
        since: Instant::now(),
        tail: std::collections::VecDeque::new(),
        tail_bytes: 0,
        dropped: (0, 0),
    };
    let piece = MAX_LINE - SPLIT_MARK.len();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Ok(avail) = reader.fill_buf().await {
        if avail.is_empty() {
            if !buf.is_empty() {
                sink.line(&buf, false).await;
            }
            break;
        }
        // Everything buffered, line by line; then give the bytes back to the reader.
        let n = avail.len();
        let mut at = 0;
        let mut alive = true;
        while at < n {
            let rest = &avail[at..];
            let room = piece - buf.len();
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) if i <= room => {
                    let ok = if buf.is_empty() {
                        sink.line(&rest[..i], false).await
                    } else {
                        buf.extend_from_slice(&rest[..i]);
                        let ok = sink.line(&buf, false).await;
                        buf.clear();
                        ok
                    };
                    at += i + 1;
                    if !ok {
                        alive = false;
                        break;
                    }
                }
                _ => {
                    let take = rest.len().min(room);
                    buf.extend_from_slice(&rest[..take]);
                    at += take;
                    if buf.len() >= piece {
                        let ok = sink.line(&buf, true).await;
                        buf.clear();
                        if !ok {
                            alive = false;
                            break;
                        }
                    }
                }
            }
        }
        reader.consume(at);
        if !alive {
            break;
        }
    }
    sink.flush_repeats().await;
    sink.flush_tail().await;
}

pub(crate) fn kill_group(pgid: i32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// What one step runs.
pub(crate) struct StepSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) script: &'a str,
    /// What the step's sandbox shows (its working directory is the workspace).
    pub(crate) view: &'a crate::sandbox::View,
    pub(crate) env: &'a [(String, String)],
    pub(crate) limit: Duration,
}

/// `sh` as the step's own `PATH` finds it (see `lookup::which`).
fn shell(env: &[(String, String)]) -> std::ffi::OsString {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("/bin:/usr/bin", |(_, v)| v.as_str());
    crate::lookup::which("sh", path.as_ref()).map_or_else(|| "sh".into(), |p| p.into_os_string())
}

/// Where a step's output goes and what ends it besides its exit and its limit.
pub(crate) struct StepIo<'a> {
    /// The job's log.
    pub(crate) logs: &'a LogTx,
    /// The job's log budget.
    pub(crate) budget: &'a Arc<LogBudget>,
    /// The job's stop signal (cancel, lease lost, shutdown).
    pub(crate) stop: &'a tokio::sync::watch::Receiver<Stop>,
    /// The marker every process of the job carries (`isolation::kill_marked`): the job id.
    pub(crate) marker: &'a str,
}

/// Run one step in `sandbox` (none: this agent runs no build steps) until it exits, its limit passes
/// or `io.stop` says so; then nothing of it outlives it.
pub(crate) async fn run_step(
    sandbox: Option<&crate::sandbox::Sandbox>,
    spec: StepSpec<'_>,
    io: StepIo<'_>,
) -> StepEnd {
    let StepSpec {
        name,
        script,
        view,
        env,
        limit,
    } = spec;
    let Some(sandbox) = sandbox else {
        return StepEnd::SpawnFailed("this agent runs no build steps (it has no sandbox)".into());
    };
    let sh = shell(env);
    let mut cmd = sandbox.command(
        view,
        env,
        &sh,
        &[std::ffi::OsStr::new("-c"), std::ffi::OsStr::new(script)],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepEnd::SpawnFailed(e.to_string()),
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let pumps: Vec<_> = [
        child.stdout.take().map(|o| {
            tokio::spawn(pump(
                o,
                name.to_string(),
                "stdout",
                io.logs.clone(),
                io.budget.clone(),
            ))
        }),
        child.stderr.take().map(|o| {
            tokio::spawn(pump(
                o,
                name.to_string(),
                "stderr",
                io.logs.clone(),
                io.budget.clone(),
            ))
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut stop = io.stop.clone();
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
        } => match *io.stop.borrow() { Stop::LeaseLost => StepEnd::LeaseLost, Stop::Release => StepEnd::Released, _ => StepEnd::Cancelled },
    };
    // Whatever happened, nothing of the step outlives it: kill the whole process group, then every
    // process that carries the job's marker (also those that left the group with setsid).
    if pgid > 0 {
        kill_group(pgid);
    }
    let _ = child.wait().await;
    let id = io.marker.to_string();
    let _ = tokio::task::spawn_blocking(move || isolation::kill_marked(&id)).await;
    // The readers end at EOF once the writers are gone; one whose pipe an unmarked process still
    // holds is aborted (never left detached).
    for mut h in pumps {
        if tokio::time::timeout(Duration::from_secs(2), &mut h)
            .await
            .is_err()
        {
            h.abort();
            let _ = h.await;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_budget_admits_up_to_its_cap_then_one_marker() {
        // Cap 1000 lines: 100 for the agent's own lines, 125 for the steps' tails, 775 for the head.
        let b = LogBudget::new(1000, 1_000_000);
        for _ in 0..775 {
            assert_eq!(b.admit(ENTRY_OVERHEAD), Admit::Send);
        }
        assert_eq!(b.admit(ENTRY_OVERHEAD), Admit::Marker);
        assert_eq!(b.head(), (775, 775 * ENTRY_OVERHEAD), "what was kept");
        assert!(
            b.marker().contains("kept the first 775 lines (49600 bytes"),
            "{}",
            b.marker()
        );
        assert_eq!(b.admit(ENTRY_OVERHEAD), Admit::Drop);
        assert!(b.admit_tail(ENTRY_OVERHEAD), "the tails have their reserve");
        let b = LogBudget::new(1_000_000, 100_000);
        assert_eq!(b.admit(70_000), Admit::Send);
        assert_eq!(b.admit(10_000), Admit::Marker);
    }

    #[tokio::test]
    async fn long_lines_are_split_into_marked_pieces_and_repeats_coalesce() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.extend_from_slice(b"\nshort\r\n");
        input.extend_from_slice(&b"same\n".repeat(5));
        input.extend_from_slice(b"end");
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let budget = Arc::new(LogBudget::new(1000, 10_000_000));
        pump(&input[..], "s".into(), "stdout", tx, budget).await;
        let mut got = Vec::new();
        while let Ok(l) = rx.try_recv() {
            got.push(l);
        }
        let texts: Vec<&str> = got.iter().map(|l| l.2.as_str()).collect();
        assert_eq!(
            texts.len(),
            7,
            "{:?}",
            texts.iter().map(|t| t.len()).collect::<Vec<_>>()
        );
        for t in &texts[..2] {
            assert!(t.len() <= MAX_LINE && t.ends_with(SPLIT_MARK));
        }
        assert!(texts[2].chars().all(|c| c == 'x'));
        let total: usize = texts[..3]
            .iter()
            .map(|t| t.trim_end_matches(SPLIT_MARK).len())
            .sum();
        assert_eq!(total, MAX_LINE * 2 + 10);
        assert_eq!(
            &texts[3..],
            &[
                "short",
                "same",
                "[raibid] previous line repeated 4 more times",
                "end"
            ]
        );
        assert_eq!(got[5].1, "system");
    }
}
