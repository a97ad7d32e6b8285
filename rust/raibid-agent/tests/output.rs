//! What a step's output can cost (issue 8 §3, §4): the real agent binary, real Redis, real steps.
//!
//! - output without newlines is read in bounded pieces: the agent's peak RSS stays small;
//! - floods (`yes ''`, 100 MB of short lines) leave the job's log within its cap, Redis memory grows by
//!   less than twice the cap, and other jobs keep running meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Agents are killed and reaped by the support harness when a test ends.
#![allow(clippy::zombie_processes)]

mod support;

use std::time::{Duration, Instant};
use support::*;

const SPLIT_MARK: &str = " [raibid: line continues]";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gib_without_a_newline_keeps_the_agent_small_and_the_job_ends_normally() {
    let e = env(None).await;
    let repo = make_repo(
        &e.tmp.path().join("zeros"),
        "steps:\n  - name: zeros\n    run: head -c 2G /dev/zero\n",
    );
    let agent = e.agent("agent-zeros", &[]);
    let id = e.submit(&repo).await;
    let j = e.wait_final(&id, Duration::from_secs(240)).await;
    let hwm_mib = vm_hwm_kib(agent) / 1024;
    assert_eq!(j.status.as_str(), "succeeded", "{:?}", j.failure_reason);
    assert!(
        hwm_mib < 100,
        "the agent's peak RSS was {hwm_mib} MiB while a step printed 2 GiB without a newline"
    );
    let lines = e.logs(&id).await;
    let zeros: Vec<_> = lines.iter().filter(|l| l.step == "zeros").collect();
    // Every piece is at most 64 KiB and marked as continued, but the line's last piece (kept in the
    // step's tail since issue 18 §3: the end of the output survives the cap).
    let pieces: Vec<_> = zeros.iter().filter(|l| l.stream == "stdout").collect();
    assert!(
        pieces.iter().all(|l| l.line.len() <= 64 * 1024),
        "every piece of the endless line is at most 64 KiB"
    );
    assert!(
        pieces[..pieces.len() - 1]
            .iter()
            .all(|l| l.line.ends_with(SPLIT_MARK)),
        "every piece but the last is marked as continued"
    );
    assert!(
        zeros.iter().any(|l| l.line.contains("log cap reached")),
        "one marker says the rest was dropped"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.line.contains("step `zeros` succeeded")),
        "the step's result line is still in the log"
    );
}

/// Runs a flood step on one agent while another agent runs short jobs; checks the cap, Redis memory
/// and that the short jobs kept finishing.
async fn flood(step: &str) {
    const CAP_BYTES: u64 = 256 * 1024;
    const CAP_LINES: u64 = 2_000;
    let e = env(None).await;
    let caps = [
        ("RAIBID_LOG_CAP_BYTES", CAP_BYTES.to_string()),
        ("RAIBID_LOG_CAP_LINES", CAP_LINES.to_string()),
    ];
    let flood_repo = make_repo(
        &e.tmp.path().join("flood"),
        &format!("steps:\n  - name: flood\n    run: \"{step}\"\n"),
    );
    let quick_repo = make_repo(
        &e.tmp.path().join("quick"),
        "steps:\n  - name: hello\n    run: echo hello\n",
    );
    e.agent("agent-1", &caps);
    e.agent("agent-2", &caps);
    // Warm up (scripts loaded, connections open, one job's record and events) before measuring.
    for _ in 0..2 {
        let q = e.submit(&quick_repo).await;
        e.wait_final(&q, Duration::from_secs(30)).await;
    }
    let before = e.redis.used_memory(&e.queue).await;
    let id = e.submit(&flood_repo).await;
    e.wait(&id, Duration::from_secs(30), |j| {
        j.step.as_deref() == Some("flood")
    })
    .await;
    // Meanwhile the other agent runs jobs to the end.
    let mut quick_done = 0;
    let t0 = Instant::now();
    while !e.job(&id).await.status.is_final() && quick_done < 5 {
        let q = e.submit(&quick_repo).await;
        let j = e.wait_final(&q, Duration::from_secs(30)).await;
        assert_eq!(j.status.as_str(), "succeeded");
        quick_done += 1;
    }
    assert!(
        quick_done >= 1,
        "a short job ran while the flood was on ({:?})",
        t0.elapsed()
    );
    let j = e.wait_final(&id, Duration::from_secs(240)).await;
    assert_eq!(j.status.as_str(), "succeeded", "{:?}", j.failure_reason);
    let lines = e.logs(&id).await;
    let bytes: u64 = lines
        .iter()
        .map(|l| (l.line.len() + l.step.len() + l.stream.len()) as u64 + 64)
        .sum();
    assert!(
        lines.len() as u64 <= CAP_LINES && bytes <= CAP_BYTES,
        "the log is within its cap: {} lines, {bytes} bytes",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.line.contains("step `flood` succeeded")),
        "the step's result line is in the log"
    );
    let after = e.redis.used_memory(&e.queue).await;
    let grown = after.saturating_sub(before);
    eprintln!(
        "flood `{step}`: log {} lines / {bytes} bytes, Redis used_memory +{grown} bytes, {quick_done} other jobs meanwhile",
        lines.len()
    );
    assert!(
        grown < 2 * CAP_BYTES,
        "Redis used_memory grew by {grown} bytes (cap {CAP_BYTES})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_seconds_of_empty_lines_stay_within_the_log_cap() {
    flood("timeout 10 yes '' || true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_megabytes_of_short_lines_stay_within_the_log_cap() {
    // seq 1 14500000 prints 114 MB in lines of at most 9 bytes.
    flood("seq 1 14500000").await;
}

/// Issue 18 §3: a noisy step that uses the whole log budget does not eat a later step's failure. The
/// failing step's last lines are kept (a reserved tail per step), a marker says how much was kept and
/// dropped, the job's `log_truncated` is set although Redis' own cap was never reached, and the log
/// stays within the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noisy_step_does_not_eat_the_failing_steps_output() {
    const CAP_BYTES: u64 = 256 * 1024;
    const CAP_LINES: u64 = 2_000;
    let e = env(None).await;
    // The noisy step waits, once past the cap, until the test has looked at the running job.
    let shared = e.tmp.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let go = shared.join("go");
    let repo = make_repo(
        &e.tmp.path().join("noisy"),
        &format!("steps:\n  - name: noisy\n    run: |\n      seq 1 100000\n      while [ ! -e {} ]; do sleep 0.05; done\n  - name: failing\n    run: |\n      seq 1 5000 | sed 's/^/progress /'\n      echo 'assertion `left == right` failed: left: 1, right: 2'\n      exit 101\n", go.display()),
    );
    e.agent(
        "agent-noisy",
        &[
            ("RAIBID_LOG_CAP_BYTES", CAP_BYTES.to_string()),
            ("RAIBID_LOG_CAP_LINES", CAP_LINES.to_string()),
            (
                "RAIBID_SANDBOX_SHARED_DIRS",
                shared.to_string_lossy().into_owned(),
            ),
        ],
    );
    let id = e.submit(&repo).await;
    // Issue 19 §3: while the job runs, once the cap marker is in the log, the API's flag says so, and
    // the marker says how much was kept (the lines before it), not only the limits.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (marker, before) = loop {
        let lines = e.logs(&id).await;
        if let Some(i) = lines
            .iter()
            .position(|l| l.line.starts_with("[raibid] log cap reached"))
        {
            let output = lines[..i].iter().filter(|l| l.stream != "system").count();
            break (lines[i].line.clone(), output);
        }
        assert!(
            Instant::now() < deadline,
            "no cap marker: {} lines",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        marker.contains(&format!("kept the first {before} lines (")),
        "the marker says how much was kept ({before} lines of output before it): {marker}"
    );
    assert!(
        e.queue.log_truncated(&id).await.unwrap(),
        "the API's `truncated` is true as soon as the cap was hit"
    );
    assert!(!e.job(&id).await.status.is_final(), "still running");
    std::fs::write(&go, "").unwrap();
    let j = e.wait_final(&id, Duration::from_secs(120)).await;
    assert_eq!(j.status.as_str(), "failed");
    let lines = e.logs(&id).await;
    // The record says how much was kept and dropped (raibid-top's detail, get_job, the CLI).
    let cut = j.log_truncated.clone().expect("the record's log_truncated");
    assert_eq!(cut.kept_lines, lines.len() as u64, "{cut:?}");
    assert!(cut.dropped_lines > 0 && cut.dropped_bytes > 0, "{cut:?}");
    assert!(cut.kept_bytes > 0 && cut.kept_bytes <= CAP_BYTES, "{cut:?}");
    let failing: Vec<&str> = lines
        .iter()
        .filter(|l| l.step == "failing")
        .map(|l| l.line.as_str())
        .collect();
    assert!(
        failing.contains(&"assertion `left == right` failed: left: 1, right: 2"),
        "the failing step's failure was dropped: {:?}",
        &failing[failing.len().saturating_sub(5)..]
    );
    assert!(
        failing
            .iter()
            .any(|l| l.starts_with(&format!(
                "[raibid] log cap: this job's log kept its first {before} lines ("
            )) && l.contains("of step `failing` (stdout) after them were dropped")),
        "a marker says what was kept: {:?}",
        &failing[..failing.len().min(5)]
    );
    assert!(
        e.queue.log_truncated(&id).await.unwrap(),
        "log_truncated is set whenever the agent dropped output"
    );
    let bytes: u64 = lines
        .iter()
        .map(|l| (l.line.len() + l.step.len() + l.stream.len()) as u64 + 64)
        .sum();
    assert!(
        lines.len() as u64 <= CAP_LINES && bytes <= CAP_BYTES,
        "within the cap: {} lines, {bytes} bytes",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.line.contains("[raibid] log truncated")),
        "Redis' own cap was not what cut it"
    );
}
