//! Deterministic fixtures: a fixed clock, jobs with fixed ids and timestamps, logs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use raibid_core::event::DeadLetter;
use raibid_core::job::{Job, Source, Status, StepResult, Timestamps, Trigger, TriggerKind};
use raibid_core::queue_view::{AgentInfo, LogLine, QueueStats};
use raibid_top::action::{Action, Net};
use raibid_top::app::App;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// The injected "now" of every test.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

/// A ULID-like job id: the time part increases with `i`, the random part is a fixed function of it.
pub fn id(i: usize) -> String {
    const B32: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut t = 1_767_225_600_000u64 + i as u64;
    let mut time = [b'0'; 10];
    for c in time.iter_mut().rev() {
        *c = B32[(t % 32) as usize];
        t /= 32;
    }
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let rand: String = (0..16)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            B32[(x >> 59) as usize] as char
        })
        .collect();
    format!("{}{rand}", String::from_utf8_lossy(&time))
}

/// Job `i`, received `ago_s` seconds before now, with a status and plausible steps.
pub fn job(i: usize, status: Status, ago_s: i64) -> Job {
    let t0 = now() - Duration::seconds(ago_s);
    let repos = [
        "raibid/hello",
        "raibid/raibid-ci",
        "alice/parser",
        "bob/very-long-repository-name",
    ];
    let refs = ["main", "feature/sse", "fix/lag-ack", "refs/tags/v1.2.0"];
    let mut j = Job {
        id: raibid_core::job::JobId::parse(&id(i)).unwrap(),
        kind: Default::default(),
        gpu: None,
        artifacts: None,
        matrix: None,
        handed_over_from: None,
        handed_over_to: None,
        log_truncated: None,
        page_url: None,
        extra: Default::default(),
        cache: None,
        cargo: None,
        image: None,
        status,
        step: None,
        attempt: 0,
        agent: None,
        lease: None,
        source: Source {
            repo_url: format!("http://gitea.local/{}.git", repos[i % repos.len()]),
            git_ref: if refs[i % refs.len()].starts_with("refs/") {
                refs[i % refs.len()].to_string()
            } else {
                format!("refs/heads/{}", refs[i % refs.len()])
            },
            sha: Some(format!(
                "{:08x}{:032x}",
                (i as u64 + 7).wrapping_mul(2_654_435_761) % (1 << 32),
                (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            )),
            trigger: Trigger {
                kind: TriggerKind::GiteaPush,
                actor: Some("alice".into()),
            },
            delivery_id: Some(format!("d-{i}")),
            forge_repo: None,
            patch: None,
            notify_url: None,
        },
        pipeline: Some("ci".into()),
        timestamps: Timestamps {
            received: Some(t0),
            queued: Some(t0),
            ..Timestamps::default()
        },
        steps: Vec::new(),
        failure_reason: None,
        retry_of: None,
        schedule_id: None,
        env: Default::default(),
        cancel_requested: false,
    };
    if status == Status::Queued {
        return j;
    }
    j.attempt = 1;
    j.agent = Some(format!("agent-{}", i % 3 + 1));
    let claimed = t0 + Duration::milliseconds(40);
    j.timestamps.claimed = Some(claimed);
    j.timestamps.started = Some(claimed + Duration::milliseconds(5));
    let mut t = claimed + Duration::milliseconds(5);
    for (name, ms) in [
        ("clone", 300),
        ("config", 10),
        ("build", 4000),
        ("test", 2500),
    ] {
        j.steps.push(StepResult {
            name: name.into(),
            status: "succeeded".into(),
            exit_code: if name == "clone" || name == "config" {
                None
            } else {
                Some(0)
            },
            duration_ms: Some(ms),
            started_at: Some(t),
        });
        t += Duration::milliseconds(ms as i64);
        if t > now() {
            break;
        }
    }
    // What the caches did: warm for most finished jobs, a cold start for every fourth failure.
    if matches!(status, Status::Succeeded | Status::Failed) {
        let total = 150 + (i as u64 % 50);
        let cold = status == Status::Failed && i % 4 == 1;
        j.cache = Some(raibid_core::cache_stats::CacheStats {
            key: Some(format!(
                "{:016x}",
                (i as u64 % 4).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )),
            slot: Some(format!(
                "{:08x}/slot-{}",
                (i as u64 % 4) * 0x1f2e_3d4c,
                i % 2 + 1
            )),
            restore: Some(if cold { "cold".into() } else { "warm".into() }),
            recovered: false,
            units_fresh: Some(if cold { 0 } else { total - (i as u64 % 9) }),
            units_total: Some(total),
            lock_ms: 3 + i as u64 % 5,
            restore_ms: if cold { 2400 } else { 35 + i as u64 % 20 },
            slot_bytes: Some(700_000_000 + i as u64 * 1_000_003),
            mirror_hit: !cold,
            fetched_objects: if cold { 1234 } else { 0 },
            fetched_bytes: if cold { 5_432_100 } else { 0 },
        });
    }
    match status {
        Status::Running => {
            let last = j.steps.last_mut().unwrap();
            last.status = "running".into();
            last.exit_code = None;
            last.duration_ms = None;
            j.step = Some(last.name.clone());
        }
        Status::Failed => {
            let last = j.steps.last_mut().unwrap();
            last.status = "failed".into();
            last.exit_code = Some(101);
            j.step = Some(last.name.clone());
            j.failure_reason = Some(format!("step `{}` exited with code 101", last.name));
            j.timestamps.finished = Some(t);
        }
        _ => {
            j.timestamps.finished = Some(t);
        }
    }
    j
}

pub fn agents() -> Vec<AgentInfo> {
    (1..=3)
        .map(|n| AgentInfo {
            id: format!("agent-{n}"),
            current_job: (n == 1).then(|| id(2)),
            last_heartbeat: (now() - Duration::seconds(n)).to_rfc3339(),
            jobs_done: 10 * n as u64,
            kinds: vec!["rust".into()],
        })
        .collect()
}

pub fn stats() -> QueueStats {
    QueueStats {
        stream: "raibid:jobs".into(),
        group: "raibid-agents".into(),
        length: 3,
        lag: Some(2),
        pending: 1,
        oldest_waiting_age_secs: Some(12.0),
        consumers: 3,
        kinds: Vec::new(),
    }
}

/// An app at the fixed clock, connected, with these jobs loaded.
pub fn app_with(jobs: Vec<Job>) -> App {
    let mut app = App::new(now());
    app.endpoint = "http://raibid.test:8080".into();
    app.update(Action::Net(Net::Live));
    app.update(Action::Net(Net::Jobs { jobs, first: true }));
    app
}

/// A few jobs in every status, plus agents and queue figures.
pub fn few() -> App {
    let mut app = app_with(vec![
        job(0, Status::Succeeded, 1800),
        job(1, Status::Failed, 900),
        job(2, Status::Running, 5),
        job(3, Status::Queued, 12),
        job(4, Status::Queued, 2),
        job(5, Status::Cancelled, 600),
    ]);
    for a in agents() {
        app.update(Action::Net(Net::Event(
            raibid_core::event::LiveEvent::AgentSeen(a),
        )));
    }
    app.update(Action::Net(Net::Event(
        raibid_core::event::LiveEvent::Queue(stats()),
    )));
    app
}

pub fn many(n: usize) -> Vec<Job> {
    let st = [
        Status::Succeeded,
        Status::Succeeded,
        Status::Failed,
        Status::Succeeded,
        Status::Cancelled,
    ];
    (0..n)
        .map(|i| job(i, st[i % st.len()], (n - i) as i64 * 3))
        .collect()
}

pub fn dead() -> Vec<DeadLetter> {
    vec![DeadLetter {
        entry: format!("{}-0", (now() - Duration::seconds(300)).timestamp_millis()),
        job: id(7),
        attempts: 3,
        reason: "claimed 3 times without finishing (agents died); moved to dead letters".into(),
    }]
}

/// `n` log lines over three steps, stderr every 7th line.
pub fn log_lines(n: usize) -> Vec<LogLine> {
    (0..n)
        .map(|i| {
            let step = if i < 3 {
                "clone"
            } else if i < n / 2 {
                "build"
            } else {
                "test"
            };
            LogLine {
                seq: format!("{}-{i}", 1_700_000_000_000u64 + i as u64),
                step: step.into(),
                stream: if i % 7 == 3 {
                    "stderr".into()
                } else {
                    "stdout".into()
                },
                ts: "2026-01-01T12:00:00Z".into(),
                line: if i % 7 == 3 {
                    format!("warning: unused variable `x{i}` in src/lib.rs:{}", i % 300)
                } else {
                    format!(
                        "   Compiling crate-{i} v0.{}.{} (/home/ci/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/crate-{i}, line {i})",
                        i % 10,
                        i % 7
                    )
                },
            }
        })
        .collect()
}

pub fn render(app: &mut App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| raibid_top::ui::draw(f, app)).unwrap();
    t
}

pub fn screen(app: &mut App, w: u16, h: u16) -> String {
    let t = render(app, w, h);
    let b = t.backend().buffer();
    let mut s = String::new();
    for y in 0..h {
        for x in 0..w {
            s.push_str(b[(x, y)].symbol());
        }
        s.push('\n');
    }
    s
}
