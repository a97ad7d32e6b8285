//! raibid-top benchmarks (docs/benchmarks.md). Not a test: it measures and prints.
//!
//! 1. Render time per frame (ratatui TestBackend, so terminal I/O is excluded): 10,000 jobs scrolling,
//!    10,000 jobs with one job event per frame (re-filter and re-sort), a 100,000-line log scrolling,
//!    the same log with a search highlighted — at 160×48 and 80×24.
//! 2. Live, with the real release binary in a real tmux against a real stack (its own redis-server,
//!    the dispatcher, 10,000 jobs): start → first frame with data, resident memory with 10,000 jobs, and
//!    job submitted → visible on screen (event written, SSE, fetch, render, tmux).
//!
//! `cargo run --release -p raibid-top --example top_bench` (needs redis-server and tmux; build the binary
//! first with `cargo build --release -p raibid-top`). `BENCH_RENDER_ONLY=1` runs part 1 only,
//! `BENCH_LIVE_ONLY=1` part 2 only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::event::{Event, LiveEvent};
use raibid_core::job::{Job, Source, Status, Trigger, TriggerKind};
use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use raibid_top::action::{Action, Net};
use raibid_top::app::App;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token-0123456789";

fn pct(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.99), v[v.len() - 1])
}

fn frames(
    name: &str,
    app: &mut App,
    (w, h): (u16, u16),
    n: usize,
    mut before: impl FnMut(&mut App, usize),
) {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| raibid_top::ui::draw(f, app)).unwrap();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        before(app, i);
        let t0 = Instant::now();
        t.draw(|f| raibid_top::ui::draw(f, app)).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99, max) = pct(times);
    println!("| {name} | {w}×{h} | {n} | {p50:.3} | {p99:.3} | {max:.3} |");
}

fn key(app: &mut App, c: KeyCode) {
    app.handle_key(KeyEvent::new(c, KeyModifiers::NONE));
}

/// One `/` filter keystroke with 10,000 jobs: the key applied and the next frame drawn, timed together
/// (typing `alice/parser` one character at a time, then erasing it with Backspace, 20 times).
fn keystrokes(jobs: &[raibid_core::job::Job], (w, h): (u16, u16)) {
    let mut app = common::app_with(jobs.to_vec());
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| raibid_top::ui::draw(f, &mut app)).unwrap();
    key(&mut app, KeyCode::Char('/'));
    let query = "alice/parser";
    let mut times = Vec::new();
    for _ in 0..20 {
        for c in query
            .chars()
            .map(KeyCode::Char)
            .chain(query.chars().map(|_| KeyCode::Backspace))
        {
            let t0 = Instant::now();
            key(&mut app, c);
            t.draw(|f| raibid_top::ui::draw(f, &mut app)).unwrap();
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let n = times.len();
    let (p50, p99, max) = pct(times);
    println!(
        "| 10,000 jobs, one `/` filter keystroke + its frame (type and erase `{query}`) | {w}×{h} | {n} | {p50:.3} | {p99:.3} | {max:.3} |"
    );
}

/// The filter as it was before the precomputed haystack (the previous session's code, kept here as the
/// baseline): every keystroke re-filtered all jobs field by field with a byte-window case fold, then
/// re-sorted them.
fn old_filter(jobs: &[raibid_core::job::Job], q: &str) -> Vec<usize> {
    fn contains_fold(hay: &str, n: &[u8]) -> bool {
        n.is_empty()
            || hay
                .as_bytes()
                .windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
    }
    let n = q.to_ascii_lowercase();
    let n = n.as_bytes();
    let mut shown: Vec<usize> = (0..jobs.len())
        .filter(|i| {
            let j = &jobs[*i];
            contains_fold(&j.id, n)
                || contains_fold(&j.source.repo_url, n)
                || contains_fold(&j.source.git_ref, n)
                || contains_fold(j.status.as_str(), n)
        })
        .collect();
    shown.sort_by(|a, b| jobs[*a].id.cmp(&jobs[*b].id));
    shown.reverse();
    shown
}

/// The filter's own cost per keystroke (no frame), side by side: the baseline above and `App`.
fn filter_state_benchmark(jobs: &[raibid_core::job::Job]) {
    let query = "alice/parser";
    let seq: Vec<String> = (1..=query.len())
        .map(|n| query[..n].to_string())
        .chain((0..query.len()).rev().map(|n| query[..n].to_string()))
        .collect();
    let (mut old, mut new) = (Vec::new(), Vec::new());
    let mut app = common::app_with(jobs.to_vec());
    app.prepare();
    key(&mut app, KeyCode::Char('/'));
    for _ in 0..20 {
        for (k, q) in seq.iter().enumerate() {
            let t0 = Instant::now();
            let shown = old_filter(jobs, q);
            old.push(t0.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(shown);
            let c = if k < query.len() {
                KeyCode::Char(query.as_bytes()[k] as char)
            } else {
                KeyCode::Backspace
            };
            let t0 = Instant::now();
            key(&mut app, c);
            app.prepare();
            new.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let n = old.len();
    let (a50, a99, amax) = pct(old);
    let (b50, b99, bmax) = pct(new);
    println!(
        "\n`/` filter keystroke over 10,000 jobs, state only (type and erase `{query}`, {n} keys each, interleaved):\n\
         | filter | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n\
         | before: re-filter every field with a byte-window fold, re-sort | {a50:.3} | {a99:.3} | {amax:.3} |\n\
         | now: lower-cased haystack, narrowing, no re-sort | {b50:.3} | {b99:.3} | {bmax:.3} |"
    );
}

fn render_benchmarks() {
    println!("| frame | size | frames | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|");
    let jobs = common::many(10_000);
    for size in [(160, 48), (80, 24)] {
        let mut app = common::app_with(jobs.clone());
        frames(
            "10,000 jobs, scrolling (j)",
            &mut app,
            size,
            2000,
            |a, _| key(a, KeyCode::Char('j')),
        );
        let mut app = common::app_with(jobs.clone());
        frames(
            "10,000 jobs, one job event per frame (re-sort)",
            &mut app,
            size,
            2000,
            |a, i| {
                let id = common::id(i * 5 % 10_000);
                a.update(Action::Net(Net::Event(LiveEvent::Job(Event {
                    kind: "job_claimed".into(),
                    job: id,
                    status: Status::Running,
                    step: Some("build".into()),
                    agent: Some("agent-1".into()),
                    ts: common::now(),
                }))));
            },
        );
        let mut app = common::app_with(jobs.clone());
        frames(
            "10,000 jobs, a new job per frame (put in place, no re-sort)",
            &mut app,
            size,
            2000,
            |a, i| {
                let j = common::job(10_000 + i, Status::Queued, 0);
                a.update(Action::Net(Net::Job(Box::new(j))));
            },
        );
        let mut app = common::app_with(jobs.clone());
        key(&mut app, KeyCode::Char('/'));
        for c in "fail".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        frames(
            "10,000 jobs, filter typed and cleared per frame",
            &mut app,
            size,
            1000,
            |a, i| {
                if i % 2 == 0 {
                    key(a, KeyCode::Backspace)
                } else {
                    key(a, KeyCode::Char('l'))
                }
            },
        );
        keystrokes(&jobs, size);
        let mut app = common::few();
        key(&mut app, KeyCode::Char('l'));
        let job = app.log.job.clone();
        app.update(Action::Net(Net::Log {
            job,
            lines: common::log_lines(100_000),
            truncated: false,
        }));
        key(&mut app, KeyCode::Char('g'));
        frames(
            "100,000-line log, scrolling (PgDn)",
            &mut app,
            size,
            2000,
            |a, _| key(a, KeyCode::PageDown),
        );
        key(&mut app, KeyCode::Char('w'));
        frames(
            "100,000-line log, wrapped, scrolling",
            &mut app,
            size,
            2000,
            |a, _| key(a, KeyCode::PageUp),
        );
        key(&mut app, KeyCode::Char('w'));
        key(&mut app, KeyCode::Char('/'));
        for c in "x1".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        key(&mut app, KeyCode::Enter);
        frames(
            "100,000-line log, search highlighted, n per frame",
            &mut app,
            size,
            2000,
            |a, _| key(a, KeyCode::Char('n')),
        );
    }
    filter_state_benchmark(&jobs);
    let bytes: usize = common::log_lines(100_000)
        .iter()
        .map(|l| l.line.len() + 1)
        .sum();
    println!(
        "\nthe 100,000-line log holds {:.1} MiB of text",
        bytes as f64 / (1024.0 * 1024.0)
    );
    // The search itself over 100,000 lines (once per Enter, not per frame).
    let mut app = common::few();
    key(&mut app, KeyCode::Char('l'));
    let job = app.log.job.clone();
    app.update(Action::Net(Net::Log {
        job,
        lines: common::log_lines(100_000),
        truncated: false,
    }));
    let mut t = Vec::new();
    for q in ["warning", "x12", "Compiling", "nothing-matches"] {
        key(&mut app, KeyCode::Char('/'));
        for c in q.chars() {
            key(&mut app, KeyCode::Char(c));
        }
        let t0 = Instant::now();
        key(&mut app, KeyCode::Enter);
        t.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "\nsearch over 100,000 lines (Enter): {}",
        t.iter()
            .map(|x| format!("{x:.1} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
    async fn wait(&self, within: Duration, pred: impl Fn(&str) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < within, "screen never matched:\n{s}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The raibid-top process in the pane (the pane's process, or its child when a shell sits between).
fn top_pid(tmux: &Tmux) -> u32 {
    let pane: u32 = tmux
        .run(&["display", "-p", "-t", "top", "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if comm(pane).trim() == "raibid-top" {
        return pane;
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pane) && comm(p).trim() == "raibid-top" {
            return p;
        }
    }
    panic!("no raibid-top process under pane {pane}");
}

async fn live_benchmarks() {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("raibid-top");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release -p raibid-top ({})",
        bin.display()
    );
    let redis = RedisServer::start().unwrap();
    let queue = Queue::connect(&redis.url(), QueueConfig::default())
        .await
        .unwrap();
    let source = |i: usize| Source {
        repo_url: format!("http://gitea.local/raibid/repo-{}.git", i % 40),
        git_ref: "refs/heads/main".into(),
        sha: None,
        trigger: Trigger {
            kind: TriggerKind::Api,
            actor: None,
        },
        delivery_id: None,
        forge_repo: None,
        patch: None,
        notify_url: None,
    };
    let t0 = Instant::now();
    let n: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    for i in 0..n {
        queue
            .enqueue(Job::new(source(i), chrono::Utc::now()), None)
            .await
            .unwrap();
    }
    println!("\nenqueued {n} jobs in {:.1} s", t0.elapsed().as_secs_f64());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Jobs here clone file:// repositories; page links point at this dispatcher.
    let mut settings = raibid_testkit::settings(TOKEN);
    settings.public_url = format!("http://{addr}");
    let state = raibid_dispatcher::AppState::new(queue.clone(), settings);
    tokio::spawn(raibid_dispatcher::serve(
        state,
        listener,
        std::future::pending(),
    ));
    let base = format!("http://{addr}");

    let tmux = Tmux(format!("raibid-top-bench-{}", std::process::id()));
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for run in 0..runs {
        let t0 = Instant::now();
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "48",
            "-e",
            &format!("RAIBID_URL={base}"),
            "-e",
            &format!("RAIBID_API_TOKEN={TOKEN}"),
            &bin.display().to_string(),
        ]);
        // First frame with data: a job row (the header of the jobs table counts them).
        tmux.wait(Duration::from_secs(30), |s| s.contains("◷ queued"))
            .await;
        starts.push(t0.elapsed().as_secs_f64() * 1000.0);
        tmux.wait(Duration::from_secs(60), |s| {
            s.contains(&format!("jobs ({n}/{n})"))
        })
        .await;
        let pid = top_pid(&tmux);
        rss.push(rss_kb(pid) as f64 / 1024.0);
        if run + 1 < runs {
            tmux.run(&["kill-session", "-t", "top"]);
        }
    }
    let (p50, _, max) = pct(starts.clone());
    println!(
        "start → first frame with data ({n} jobs in the store, {runs} runs): p50 {p50:.0} ms, max {max:.0} ms ({})",
        starts.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
    );
    let (p50, _, max) = pct(rss);
    println!("resident memory with {n} jobs loaded: p50 {p50:.1} MiB, max {max:.1} MiB");

    // Job submitted → visible on screen.
    let http = reqwest::Client::new();
    let mut lat = Vec::new();
    let mut arrive = Vec::new();
    for i in 0..50 {
        let t0 = Instant::now();
        let r: serde_json::Value = http
            .post(format!("{base}/api/v1/jobs"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"repo_url": format!("http://gitea.local/raibid/live-{i}.git"), "ref": "main"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = r["id"].as_str().unwrap().to_string();
        let posted = t0.elapsed();
        if std::env::var_os("BENCH_DEBUG").is_some() {
            let v: serde_json::Value = http
                .get(format!("{base}/api/v1/jobs?limit=1"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            eprintln!("submitted {id}; newest {}", v["jobs"][0]["id"]);
        }
        let seen = tmux
            .wait(Duration::from_secs(10), |s| {
                if !s.contains(&id) && std::env::var_os("BENCH_DEBUG").is_some() {
                    eprintln!("{}", s.lines().take(8).collect::<Vec<_>>().join("\n"));
                }
                s.contains(&id)
            })
            .await;
        lat.push((posted + seen).as_secs_f64() * 1000.0);
        arrive.push(seen.as_secs_f64() * 1000.0);
    }
    let (p50, p99, max) = pct(lat);
    println!(
        "job submitted → visible on screen (50 jobs, screen polled with capture-pane): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    let (p50, p99, max) = pct(arrive);
    println!(
        "event written (the POST answered: job_created is in the stream) → visible on screen: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    let pid = top_pid(&tmux);
    println!(
        "resident memory after the live run: {:.1} MiB",
        rss_kb(pid) as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    if std::env::var_os("BENCH_LIVE_ONLY").is_none() {
        render_benchmarks();
    }
    if std::env::var_os("BENCH_RENDER_ONLY").is_none() {
        live_benchmarks().await;
    }
}
