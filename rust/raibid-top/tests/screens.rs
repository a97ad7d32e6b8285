//! Golden screens: every view rendered into ratatui's TestBackend at 80×24 and 160×48, compared with
//! the committed insta snapshots (tests/snapshots). The clock is fixed, so ages and times are stable.
//! Update on purpose with `INSTA_UPDATE=always cargo test -p raibid-top --test screens`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::job::Status;
use raibid_top::action::{Action, Net};
use raibid_top::app::App;

const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn key(app: &mut App, c: KeyCode) {
    app.handle_key(KeyEvent::new(c, KeyModifiers::NONE));
}

fn typed(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

fn check(name: &str, mut make: impl FnMut() -> App) {
    for (w, h) in SIZES {
        let mut app = make();
        let s = screen(&mut app, w, h);
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), s);
    }
}

#[test]
fn empty() {
    check("empty", || app_with(Vec::new()));
}

#[test]
fn loading_and_connecting() {
    check("connecting", || {
        let mut app = App::new(now());
        app.endpoint = "http://raibid.test:8080".into();
        app
    });
}

#[test]
fn few_jobs() {
    check("few_jobs", few);
}

#[test]
fn failed_job_detail_with_reason() {
    check("failed_detail", || {
        let mut app = few();
        // Newest first: 5, 4, 3, 2, 1 → the failed job is the fifth row.
        typed(&mut app, "jjjj");
        key(&mut app, KeyCode::Enter);
        app
    });
}

#[test]
fn running_job_detail_waiting_job_detail() {
    check("running_detail", || {
        let mut app = few();
        typed(&mut app, "jjj");
        key(&mut app, KeyCode::Enter);
        app
    });
    check("queued_detail", || {
        let mut app = few();
        typed(&mut app, "j");
        key(&mut app, KeyCode::Enter);
        app
    });
}

#[test]
fn ten_thousand_jobs_scrolled() {
    let jobs = many(10_000);
    check("ten_thousand", || {
        let mut app = app_with(jobs.clone());
        key(&mut app, KeyCode::PageDown);
        key(&mut app, KeyCode::PageDown);
        typed(&mut app, "jj");
        app
    });
    check("ten_thousand_filtered_sorted", || {
        let mut app = app_with(jobs.clone());
        key(&mut app, KeyCode::Char('/'));
        typed(&mut app, "failed");
        key(&mut app, KeyCode::Enter);
        typed(&mut app, "ss");
        app
    });
}

#[test]
fn long_log_with_search() {
    check("log_search", || {
        let mut app = few();
        typed(&mut app, "jjj");
        key(&mut app, KeyCode::Char('l'));
        let job = app.log.job.clone();
        app.update(Action::Net(Net::Log {
            job,
            lines: log_lines(100_000),
            truncated: false,
        }));
        key(&mut app, KeyCode::Char('/'));
        typed(&mut app, "unused variable `x5");
        key(&mut app, KeyCode::Enter);
        key(&mut app, KeyCode::Char('n'));
        app
    });
    check("log_follow_wrap", || {
        let mut app = few();
        typed(&mut app, "jjj");
        key(&mut app, KeyCode::Char('l'));
        let job = app.log.job.clone();
        let mut lines = log_lines(60);
        lines[58].line = "a very long line ".repeat(14);
        app.update(Action::Net(Net::Log {
            job,
            lines,
            truncated: true,
        }));
        key(&mut app, KeyCode::Char('w'));
        app
    });
}

#[test]
fn help_overlay() {
    check("help_jobs", || {
        let mut app = few();
        key(&mut app, KeyCode::Char('?'));
        app
    });
    check("help_logs", || {
        let mut app = few();
        key(&mut app, KeyCode::Char('l'));
        key(&mut app, KeyCode::Char('?'));
        app
    });
}

#[test]
fn agents_and_dead_letters() {
    check("agents", || {
        let mut app = few();
        key(&mut app, KeyCode::Char(':'));
        typed(&mut app, "agents");
        key(&mut app, KeyCode::Enter);
        app
    });
    check("dead", || {
        let mut app = few();
        key(&mut app, KeyCode::Char(':'));
        typed(&mut app, "dead");
        key(&mut app, KeyCode::Enter);
        app.update(Action::Net(Net::Dead(dead())));
        app
    });
}

#[test]
fn disconnected_cancel_prompt_and_command_line() {
    check("disconnected", || {
        let mut app = few();
        app.update(Action::Net(Net::Disconnected {
            reason: "cannot reach the dispatcher".into(),
            retry_ms: 2000,
        }));
        app
    });
    check("confirm_cancel", || {
        let mut app = few();
        typed(&mut app, "jjjc");
        app
    });
    check("command_line", || {
        let mut app = few();
        key(&mut app, KeyCode::Char(':'));
        typed(&mut app, "submit http://gitea.local/raibid/hello.git main");
        app
    });
}

#[test]
fn below_80x24_shows_what_fits_and_says_so() {
    let mut app = few();
    insta::assert_snapshot!("small_60x16", screen(&mut app, 60, 16));
    let mut app = few();
    app.update(Action::Net(Net::Job(Box::new(job(6, Status::Running, 1)))));
    insta::assert_snapshot!("tiny_20x5", screen(&mut app, 20, 5));
}

#[test]
fn cache_figures_in_the_detail_and_long_agent_names() {
    // A succeeded job's caches: hit ratio, restore, slot, key, size, mirror.
    check("cache_detail", || {
        let mut app = few();
        key(&mut app, KeyCode::Char('G'));
        key(&mut app, KeyCode::Enter);
        app
    });
    // A cold start (a failure in a fresh slot, the mirror fetched).
    check("cold_cache_detail", || {
        let mut app = app_with(vec![job(1, Status::Failed, 900)]);
        key(&mut app, KeyCode::Enter);
        app
    });
    // Agent names as long as Kubernetes pod names: shortened with an ellipsis, never cut silently.
    check("long_agent_names", || {
        let mut jobs: Vec<_> = (0..6).map(|i| job(i, Status::Running, 30)).collect();
        for (i, j) in jobs.iter_mut().enumerate() {
            j.agent = Some(format!("raibid-agent-7f9c6d5b8-x2k4{i}"));
        }
        app_with(jobs)
    });
}

#[test]
fn artifacts_in_the_detail() {
    // A succeeded job that uploaded its release binary (issue 23 §2).
    check("artifacts_detail", || {
        let mut j = job(1, Status::Succeeded, 900);
        j.artifacts = Some(raibid_core::artifacts::ArtifactSet {
            reference: "127.0.0.1:5000/local/hello/artifacts@sha256:00".into(),
            registry: "127.0.0.1:5000".into(),
            repository: "local/hello/artifacts".into(),
            tag: j.id.to_string(),
            manifest_digest: "sha256:00".into(),
            files: vec![raibid_core::artifacts::Artifact {
                name: "target/release/hello".into(),
                size: 4_321_000,
                digest: format!("sha256:{}", "ab12".repeat(16)),
            }],
            uploaded: now(),
        });
        let mut app = app_with(vec![j]);
        key(&mut app, KeyCode::Enter);
        app
    });
}

/// The row of the screen holding `text`, and the column it starts at (in cells).
fn find(t: &ratatui::Terminal<ratatui::backend::TestBackend>, text: &str) -> (u16, u16) {
    let b = t.backend().buffer();
    let area = b.area;
    for y in 0..area.height {
        let row: Vec<&str> = (0..area.width).map(|x| b[(x, y)].symbol()).collect();
        let line: String = row.concat();
        if let Some(byte) = line.find(text) {
            // Cells up to the match (every cell here is one symbol).
            let mut cells = 0u16;
            let mut seen = 0;
            for s in &row {
                if seen >= byte {
                    break;
                }
                seen += s.len();
                cells += 1;
            }
            return (cells, y);
        }
    }
    panic!("{text:?} is not on the screen");
}

#[test]
fn cargo_progress_on_stderr_is_not_painted_as_an_error() {
    use ratatui::style::Color;
    let mut app = few();
    key(&mut app, KeyCode::Char('l'));
    let job = app.log.job.clone();
    let lines = [
        "   Compiling hello v0.1.0 (/w/hello)",
        "    Finished `test` profile [unoptimized] target(s) in 1.2s",
        "     Running unittests src/lib.rs (target/debug/deps/hello-1)",
        "warning: unused variable: `x`",
        "error[E0308]: mismatched types",
    ]
    .iter()
    .enumerate()
    .map(|(i, l)| raibid_core::queue_view::LogLine {
        seq: format!("1700000000000-{i}"),
        step: "build".into(),
        stream: "stderr".into(),
        ts: "2026-01-01T12:00:00Z".into(),
        line: (*l).into(),
    })
    .collect();
    app.update(Action::Net(Net::Log {
        job,
        lines,
        truncated: false,
    }));
    let t = render(&mut app, 100, 30);
    let fg = |text: &str| {
        let (x, y) = find(&t, text);
        t.backend().buffer()[(x, y)].fg
    };
    for ordinary in ["Compiling hello", "Finished `test`", "Running unittests"] {
        assert_eq!(fg(ordinary), Color::Reset, "{ordinary} painted");
    }
    assert_eq!(fg("warning: unused"), Color::Yellow);
    assert_eq!(fg("error[E0308]"), Color::LightRed);
    // The stream is still marked.
    let (x, y) = find(&t, "Compiling hello");
    assert_eq!(t.backend().buffer()[(x - 4, y)].symbol(), "▌");
}

#[test]
fn one_match_is_one_match() {
    let mut app = few();
    key(&mut app, KeyCode::Char('l'));
    let job = app.log.job.clone();
    app.update(Action::Net(Net::Log {
        job,
        lines: log_lines(20),
        truncated: false,
    }));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "x10");
    key(&mut app, KeyCode::Enter);
    let s = screen(&mut app, 100, 30);
    assert!(s.contains("/x10 1 match "), "{s}");
}

#[test]
fn what_does_not_fit_is_cut_with_an_ellipsis_not_mid_word() {
    // The detail's `at` row: whole times, then `…`.
    let mut app = few();
    typed(&mut app, "jjjj");
    key(&mut app, KeyCode::Enter);
    for w in [80, 100, 120] {
        let s = screen(&mut app, w, 24);
        let at = s.lines().find(|l| l.starts_with("│ at ")).unwrap();
        let body = at.trim_end_matches('│').trim_end();
        assert!(
            body.ends_with("  …") || body.ends_with(":00.000") || body.ends_with(".040"),
            "{w} columns: {at}"
        );
        assert!(!body.ends_with(" st") && !body.ends_with(" s"), "{at}");
    }
    // The submitted job's id on the status line at 80 columns: whole, the URL after it cut with `…`.
    let mut app = few();
    let id = "01KDVDNA01DGKNBEM4ZBF66QDZ";
    app.update(Action::Net(Net::Outcome(Ok(format!(
        "queued as {id}: file:///home/someone/projects/a-rather-long-repository-name.git"
    )))));
    let s = screen(&mut app, 80, 24);
    let last = s.lines().last().unwrap();
    assert!(last.contains(id), "{last}");
    assert!(last.contains('…'), "{last}");
}

#[test]
fn below_80x24_the_warning_itself_fits() {
    for (w, h, says) in [
        (60, 16, "60×16 is below 80×24"),
        (79, 23, "terminal 79×23 is below 80×24: showing what fits"),
    ] {
        let mut app = few();
        let s = screen(&mut app, w, h);
        let last = s.lines().last().unwrap();
        assert!(last.starts_with(says), "{w}×{h}: {last}");
    }
}

/// Issue 19 §3: what happened is on screen. A Rust job handed over to an image job links to it (and
/// the image job back), the image job shows its pushed references and digests and no cargo cache row,
/// every job shows its public page, and a log cut by the cap says how much was kept.
#[test]
fn handover_image_detail_page_url_and_truncated_log() {
    use raibid_core::image::{ImageJob, ImageRequest, Pushed};
    use raibid_core::job::{JobKind, LogTruncation};
    let make = || {
        let mut rust = job(0, Status::Succeeded, 1800);
        let mut img = job(1, Status::Succeeded, 1700);
        rust.handed_over_to = Some(img.id.clone());
        rust.pipeline = Some("app-handover".into());
        rust.log_truncated = Some(LogTruncation {
            kept_lines: 1_950,
            kept_bytes: 243_712,
            dropped_lines: 98_210,
            dropped_bytes: 7_012_044,
        });
        img.kind = JobKind::Image;
        img.handed_over_from = Some(rust.id.clone());
        let req = ImageRequest::from_json(
            serde_json::json!({"name": "team/app", "tags": ["edge", "v1"]}),
        )
        .unwrap();
        let mut ij = ImageJob::new(req);
        ij.pushed = vec![
            Pushed {
                reference: "gitea.local:3000/team/app:edge".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
            Pushed {
                reference: "gitea.local:3000/team/app:v1".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
            },
        ];
        img.image = Some(ij);
        for j in [&mut rust, &mut img] {
            j.page_url = Some(format!(
                "http://raibid.test:8080/public/jobs/{}/{}",
                j.id,
                "0f".repeat(16)
            ));
        }
        (rust, img)
    };
    for (w, h) in SIZES {
        let (rust, img) = make();
        let (rid, iid) = (rust.id.to_string(), img.id.to_string());
        // Newest first: the image job (1) is the first row, the Rust job (0) the second.
        let mut app = app_with(vec![rust, img]);
        key(&mut app, KeyCode::Enter);
        let s = screen(&mut app, w, h);
        insta::assert_snapshot!(format!("image_detail_{w}x{h}"), s);
        assert!(s.contains("pushed") && s.contains("team/app:edge"), "{s}");
        assert!(s.contains(&format!("handed over from job {rid}")), "{s}");
        assert!(s.contains("page") && s.contains("/public/jobs/"), "{s}");
        assert!(
            !s.contains(" slot ") && !s.contains("units fresh"),
            "no cargo cache row: {s}"
        );
        key(&mut app, KeyCode::Esc);
        key(&mut app, KeyCode::Char('j'));
        key(&mut app, KeyCode::Enter);
        let s = screen(&mut app, w, h);
        insta::assert_snapshot!(format!("handover_detail_{w}x{h}"), s);
        assert!(s.contains(&format!("handed over to job {iid}")), "{s}");
        assert!(s.contains("truncated at the cap: kept 1950 lines"), "{s}");
    }
}
