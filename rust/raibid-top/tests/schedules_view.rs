//! The `:schedules` view (issue 22 §3): `:schedules` asks the network task to load them, the answer
//! fills the view, `/` filters it; golden screens at 80×24 and 160×48 (insta snapshots; update on
//! purpose with `INSTA_UPDATE=always cargo test -p raibid-top --test schedules_view`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::Duration;
use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::job::Status;
use raibid_core::schedule::{Schedule, ScheduleView};
use raibid_top::action::{Action, Command, Net, View};
use raibid_top::app::App;

fn key(app: &mut App, c: KeyCode) -> Vec<Command> {
    app.handle_key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn command(app: &mut App, line: &str) -> Vec<Command> {
    key(app, KeyCode::Char(':'));
    for c in line.chars() {
        key(app, KeyCode::Char(c));
    }
    key(app, KeyCode::Enter)
}

fn sched(
    n: u32,
    repo: &str,
    cron: &str,
    tz: &str,
    paused: bool,
    last: Option<Status>,
) -> ScheduleView {
    ScheduleView {
        schedule: Schedule {
            id: format!("sch_01kd{n:0>22}"),
            repo_url: format!("http://git.raibid.internal/{repo}.git"),
            git_ref: "refs/heads/main".into(),
            cron: cron.into(),
            timezone: tz.into(),
            env: if n == 1 {
                [("CARGO_UPDATE".to_string(), "1".to_string())].into()
            } else {
                Default::default()
            },
            skip_unchanged: false,
            created: now() - Duration::days(3),
        },
        paused,
        next_run: (!paused).then(|| now() + Duration::minutes(5 + 60 * i64::from(n))),
        last_due: Some(now() - Duration::hours(9)),
        last_job: last.map(|_| format!("01JD{n:0>22}")),
        last_status: last,
        last_skipped: None,
    }
}

fn with_schedules() -> App {
    let mut app = few();
    let cmds = command(&mut app, "schedules");
    assert!(cmds.contains(&Command::LoadSchedules), "{cmds:?}");
    assert_eq!(app.view(), View::Schedules);
    app.update(Action::Net(Net::Schedules(vec![
        sched(
            1,
            "octo/hello",
            "0 3 * * *",
            "Europe/Berlin",
            false,
            Some(Status::Failed),
        ),
        sched(
            2,
            "acme/svc-api",
            "*/30 * * * *",
            "UTC",
            false,
            Some(Status::Succeeded),
        ),
        sched(3, "acme/svc-web", "@weekly", "America/New_York", true, None),
    ])));
    app
}

#[test]
fn schedules_view_shows_next_run_and_last_result() {
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let mut app = with_schedules();
        let s = screen(&mut app, w, h);
        assert!(s.contains("schedules (3)"), "{s}");
        assert!(s.contains("in 1h05m"), "{s}");
        assert!(s.contains("paused"), "{s}");
        insta::assert_snapshot!(format!("schedules_{w}x{h}"), s);
    }
}

#[test]
fn schedules_filter_and_reload() {
    let mut app = with_schedules();
    key(&mut app, KeyCode::Char('/'));
    for c in "svc".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    key(&mut app, KeyCode::Enter);
    assert_eq!(raibid_top::schedules::shown(&app).len(), 2);
    let s = screen(&mut app, 160, 48);
    assert!(
        s.contains("schedules (2)") && !s.contains("octo/hello"),
        "{s}"
    );
    // `:schedules` again reloads.
    let cmds = command(&mut app, "sched");
    assert!(cmds.contains(&Command::LoadSchedules), "{cmds:?}");
}
