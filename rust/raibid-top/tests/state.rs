//! App state without a terminal: keys → actions → state and commands for the network task.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::event::{Event, LiveEvent};
use raibid_core::job::Status;
use raibid_top::action::{Action, Command, Net, View};
use raibid_top::app::{App, Conn, Input, SortBy};

fn key(app: &mut App, c: KeyCode) -> Vec<Command> {
    app.handle_key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn typed(app: &mut App, s: &str) -> Vec<Command> {
    let mut out = Vec::new();
    for c in s.chars() {
        out.extend(key(app, KeyCode::Char(c)));
    }
    out
}

fn ids(app: &mut App) -> Vec<String> {
    app.prepare();
    app.shown
        .iter()
        .map(|i| app.jobs[*i].id.to_string())
        .collect()
}

#[test]
fn newest_first_and_the_cursor_moves_with_vim_keys_and_stays_on_its_job() {
    let mut app = few();
    assert_eq!(ids(&mut app)[0], id(5), "newest (highest id) first");
    key(&mut app, KeyCode::Char('j'));
    key(&mut app, KeyCode::Down);
    assert_eq!(app.selected.as_deref(), Some(id(3).as_str()));
    key(&mut app, KeyCode::Char('G'));
    assert_eq!(app.selected.as_deref(), Some(id(0).as_str()));
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.cursor, 0);
    key(&mut app, KeyCode::Char('j'));
    // A new job arrives on top: the cursor stays on the job it was on.
    app.update(Action::Net(Net::Job(Box::new(job(9, Status::Queued, 0)))));
    app.prepare();
    assert_eq!(app.selected.as_deref(), Some(id(4).as_str()));
    assert_eq!(app.cursor, 2);
    // PgDn stops at the end.
    key(&mut app, KeyCode::PageDown);
    assert_eq!(app.selected.as_deref(), Some(id(0).as_str()));
    key(&mut app, KeyCode::Up);
    assert_eq!(app.selected.as_deref(), Some(id(1).as_str()));
}

#[test]
fn filter_matches_repo_ref_status_and_id_and_esc_clears_it() {
    let mut app = few();
    assert!(key(&mut app, KeyCode::Char('/')).is_empty());
    typed(&mut app, "parser");
    assert!(matches!(app.input, Input::Filter(ref s) if s == "parser"));
    assert_eq!(ids(&mut app), vec![id(2)]);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.input, Input::None);
    assert_eq!(ids(&mut app), vec![id(2)], "the filter stays after Enter");
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    assert_eq!(ids(&mut app).len(), 6);
    for (q, want) in [
        ("queued", vec![id(4), id(3)]),
        ("fix/lag", vec![id(2)]),
        ("wdr1wbr", vec![id(5)]),
    ] {
        key(&mut app, KeyCode::Char('/'));
        typed(&mut app, q);
        key(&mut app, KeyCode::Enter);
        assert_eq!(ids(&mut app), want, "filter {q}");
        // Esc on the home view clears a filter before it quits.
        key(&mut app, KeyCode::Esc);
        assert!(!app.quit);
    }
    assert_eq!(ids(&mut app).len(), 6);
}

#[test]
fn sort_by_column_and_reverse() {
    let mut app = few();
    key(&mut app, KeyCode::Char('s'));
    assert_eq!(app.sort, SortBy::Status);
    let order: Vec<Status> = {
        app.prepare();
        app.shown.iter().map(|i| app.jobs[*i].status).collect()
    };
    assert_eq!(order[0], Status::Running);
    assert_eq!(*order.last().unwrap(), Status::Succeeded);
    key(&mut app, KeyCode::Char('S'));
    app.prepare();
    assert_eq!(app.jobs[app.shown[0]].status, Status::Succeeded);
}

#[test]
fn enter_detail_l_logs_q_back_and_q_quits_at_home() {
    let mut app = few();
    key(&mut app, KeyCode::Char('j'));
    let sel = app.selected.clone().unwrap();
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        vec![Command::FetchJob(sel.clone())]
    );
    assert_eq!(app.view(), View::Detail);
    assert_eq!(
        key(&mut app, KeyCode::Char('l')),
        vec![Command::OpenLog(sel.clone())]
    );
    assert_eq!(app.view(), View::Logs);
    assert_eq!(app.log.job, sel);
    assert_eq!(key(&mut app, KeyCode::Char('q')), vec![Command::CloseLog]);
    assert_eq!(app.view(), View::Detail);
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view(), View::Jobs);
    assert_eq!(key(&mut app, KeyCode::Char('q')), vec![Command::Quit]);
    assert!(app.quit);
    let mut app = few();
    let out = app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
    assert_eq!(out, vec![Command::Quit]);
}

#[test]
fn cancel_asks_first_and_retry_only_finished_jobs() {
    let mut app = few();
    // Cursor on id(5), cancelled: nothing to cancel.
    assert!(key(&mut app, KeyCode::Char('c')).is_empty());
    assert!(!app.message.as_ref().unwrap().0);
    assert!(app
        .message
        .as_ref()
        .unwrap()
        .1
        .contains("already cancelled"));
    // Retry a finished job.
    assert_eq!(
        key(&mut app, KeyCode::Char('r')),
        vec![Command::Retry(id(5))]
    );
    // Move to the running job: retry refused, cancel asks.
    typed(&mut app, "jjj");
    assert_eq!(app.selected.as_deref(), Some(id(2).as_str()));
    assert!(key(&mut app, KeyCode::Char('r')).is_empty());
    assert!(app
        .message
        .as_ref()
        .unwrap()
        .1
        .contains("only a finished job"));
    assert!(key(&mut app, KeyCode::Char('c')).is_empty());
    assert_eq!(app.input, Input::ConfirmCancel(id(2)));
    assert!(key(&mut app, KeyCode::Char('n')).is_empty());
    assert_eq!(app.input, Input::None);
    key(&mut app, KeyCode::Char('c'));
    assert_eq!(
        key(&mut app, KeyCode::Char('y')),
        vec![Command::Cancel(id(2))]
    );
    // The outcome shows in the status line, errors too.
    app.update(Action::Net(Net::Outcome(Err(
        "job X is already final (409)".into(),
    ))));
    assert_eq!(
        app.message,
        Some((false, "job X is already final (409)".into()))
    );
}

#[test]
fn command_mode_switches_views_and_submits() {
    let mut app = few();
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "agents");
    assert!(key(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.view(), View::Agents);
    assert_eq!(app.agents_shown().len(), 3);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "dead");
    assert_eq!(key(&mut app, KeyCode::Enter), vec![Command::LoadDead]);
    assert_eq!(app.view(), View::Dead);
    app.update(Action::Net(Net::Dead(dead())));
    assert_eq!(app.dead_shown().len(), 1);
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "submit file:///srv/repo dev");
    assert_eq!(
        key(&mut app, KeyCode::Enter),
        vec![Command::Submit {
            repo_url: "file:///srv/repo".into(),
            git_ref: "dev".into()
        }]
    );
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "nonsense");
    key(&mut app, KeyCode::Enter);
    assert!(app
        .message
        .as_ref()
        .unwrap()
        .1
        .contains("unknown command `nonsense`"));
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "jobs");
    key(&mut app, KeyCode::Backspace);
    typed(&mut app, "s");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.view(), View::Jobs);
    // q from agents goes back to jobs.
    key(&mut app, KeyCode::Char(':'));
    typed(&mut app, "agents");
    key(&mut app, KeyCode::Enter);
    key(&mut app, KeyCode::Char('q'));
    assert_eq!(app.view(), View::Jobs);
    assert!(!app.quit);
}

#[test]
fn help_overlay_toggles_and_any_key_closes_it() {
    let mut app = few();
    key(&mut app, KeyCode::Char('?'));
    assert!(app.help);
    assert!(key(&mut app, KeyCode::Char('j')).is_empty());
    assert!(!app.help);
    assert_eq!(
        app.cursor, 0,
        "the key that closed the help did nothing else"
    );
}

#[test]
fn events_apply_at_once_and_ask_for_the_full_record() {
    let mut app = few();
    let ev = Event {
        kind: "job_claimed".into(),
        job: id(4),
        status: Status::Running,
        step: None,
        agent: Some("agent-2".into()),
        ts: now(),
    };
    let out = app.update(Action::Net(Net::Event(LiveEvent::Job(ev))));
    assert_eq!(out, vec![Command::FetchJob(id(4))]);
    let j = app.job(&id(4)).unwrap();
    assert_eq!(j.status, Status::Running);
    assert_eq!(j.agent.as_deref(), Some("agent-2"));
    assert_eq!(j.timestamps.claimed, Some(now()));
    // An event about a job not loaded yet: fetched, then shown.
    let ev = Event {
        kind: "job_created".into(),
        job: id(42),
        status: Status::Queued,
        step: None,
        agent: None,
        ts: now(),
    };
    assert_eq!(
        app.update(Action::Net(Net::Event(LiveEvent::Job(ev)))),
        vec![Command::FetchJob(id(42))]
    );
    app.update(Action::Net(Net::Job(Box::new(job(42, Status::Queued, 0)))));
    assert_eq!(ids(&mut app)[0], id(42));
    // Agents come and go; a new connection's hello starts the agent list afresh.
    app.update(Action::Net(Net::Event(LiveEvent::AgentGone {
        id: "agent-3".into(),
    })));
    assert_eq!(app.agents.len(), 2);
    app.update(Action::Net(Net::Event(LiveEvent::Hello {
        cursor: "1-0".into(),
    })));
    assert!(app.agents.is_empty());
    // Connection state.
    app.update(Action::Net(Net::Disconnected {
        reason: "cannot reach the dispatcher".into(),
        retry_ms: 500,
    }));
    assert!(matches!(app.conn, Conn::Down { .. }));
    app.update(Action::Net(Net::Connecting(2)));
    assert_eq!(app.conn, Conn::Connecting(2));
    app.update(Action::Net(Net::Live));
    assert_eq!(app.conn, Conn::Live);
}

#[test]
fn logs_follow_wrap_search_and_jump_between_matches() {
    let mut app = few();
    app.page = 20;
    key(&mut app, KeyCode::Char('l'));
    let job = app.log.job.clone();
    app.update(Action::Net(Net::Log {
        job: job.clone(),
        lines: log_lines(1000),
        truncated: false,
    }));
    // Three step markers + 1000 lines; following: the end is in view.
    assert_eq!(app.log.rows.len(), 1003);
    assert_eq!(app.log.top, 1003 - 20);
    // Lines of another job are ignored.
    app.update(Action::Net(Net::Log {
        job: id(99),
        lines: log_lines(5),
        truncated: false,
    }));
    assert_eq!(app.log.rows.len(), 1003);
    key(&mut app, KeyCode::Char('g'));
    assert_eq!(app.log.top, 0);
    assert!(!app.log.follow);
    key(&mut app, KeyCode::Char('f'));
    assert!(app.log.follow);
    assert_eq!(app.log.top, 983);
    key(&mut app, KeyCode::Char('w'));
    assert!(app.log.wrap);
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "warning");
    key(&mut app, KeyCode::Enter);
    let n = app.log.matches.len();
    assert_eq!(n, (0..1000).filter(|i| i % 7 == 3).count());
    assert!(!app.log.follow, "a search stops following");
    let first = app.log.current.unwrap();
    key(&mut app, KeyCode::Char('n'));
    assert_eq!(app.log.current, Some((first + 1) % n));
    key(&mut app, KeyCode::Char('N'));
    key(&mut app, KeyCode::Char('N'));
    assert_eq!(app.log.current, Some((first + n - 1) % n));
    assert!(app.message.as_ref().unwrap().1.starts_with("match "));
    // New lines are searched as they arrive.
    let mut more = log_lines(10);
    for l in &mut more {
        l.seq = format!("9{}", l.seq);
    }
    app.update(Action::Net(Net::Log {
        job: job.clone(),
        lines: more,
        truncated: false,
    }));
    assert_eq!(app.log.matches.len(), n + 1);
    // Smart case: an upper-case letter makes it exact.
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "Warning");
    key(&mut app, KeyCode::Enter);
    assert!(app.log.matches.is_empty());
    assert!(app.message.as_ref().unwrap().1.contains("no match"));
    app.update(Action::Net(Net::LogEnd {
        job,
        status: Status::Succeeded,
    }));
    assert_eq!(app.log.ended, Some(Status::Succeeded));
}

#[test]
fn throughput_and_success_rate_over_the_last_hour() {
    let mut app = few();
    app.prepare();
    // Finished in the hour: succeeded (30 min ago), failed (15 min ago), cancelled (10 min ago).
    assert_eq!(app.hour, (3, 1));
    assert_eq!(app.throughput.iter().sum::<u64>(), 3);
    assert_eq!(app.throughput.len(), 60);
    // The clock moves on an hour: nothing is recent any more.
    app.update(Action::Tick(now() + chrono::Duration::hours(2)));
    app.prepare();
    assert_eq!(app.hour, (0, 0));
}

/// What a filter must show: every job whose id, repo, ref or status holds `q` (smart case), newest first.
fn expected(app: &App, q: &str) -> Vec<String> {
    let fold = !q.chars().any(char::is_uppercase);
    let has = |h: &str| {
        if fold {
            h.to_lowercase().contains(q)
        } else {
            h.contains(q)
        }
    };
    let mut v: Vec<String> = app
        .jobs
        .iter()
        .filter(|j| {
            has(j.id.as_str())
                || has(&j.source.repo_url)
                || has(&j.source.git_ref)
                || has(j.status.as_str())
        })
        .map(|j| j.id.to_string())
        .collect();
    v.sort();
    v.reverse();
    v
}

#[test]
fn typing_and_erasing_a_filter_key_by_key_shows_what_a_fresh_filter_shows() {
    let mut app = app_with(many(2000));
    key(&mut app, KeyCode::Char('/'));
    // Narrowing (each key extends the query), widening (Backspace), and smart case (upper case).
    for q in ["alice/parser", "fix/lag-ack", "Succeeded", "01KDX"] {
        let mut typed_so_far = String::new();
        for c in q.chars() {
            key(&mut app, KeyCode::Char(c));
            typed_so_far.push(c);
            assert_eq!(
                ids(&mut app),
                expected(&app, &typed_so_far),
                "typed {typed_so_far:?}"
            );
        }
        for _ in q.chars() {
            key(&mut app, KeyCode::Backspace);
            typed_so_far.pop();
            assert_eq!(
                ids(&mut app),
                expected(&app, &typed_so_far),
                "erased to {typed_so_far:?}"
            );
        }
    }
    // New jobs take their place without a re-sort, filtered or not.
    typed(&mut app, "alice");
    app.update(Action::Net(Net::Job(Box::new(job(
        5002,
        Status::Queued,
        0,
    )))));
    app.update(Action::Net(Net::Job(Box::new(job(
        5001,
        Status::Queued,
        0,
    )))));
    app.update(Action::Net(Net::Job(Box::new(job(
        5000,
        Status::Queued,
        0,
    )))));
    assert_eq!(ids(&mut app), expected(&app, "alice"));
    assert_eq!(
        ids(&mut app)[0],
        id(5002),
        "job 5002 is alice/parser, newest"
    );
    assert!(!ids(&mut app).contains(&id(5001)), "5001 is not alice's");
    for _ in 0..5 {
        key(&mut app, KeyCode::Backspace);
    }
    assert_eq!(ids(&mut app), expected(&app, ""));
    assert_eq!(ids(&mut app)[..3], [id(5002), id(5001), id(5000)]);
    // A filtered list follows events: a job that starts running enters a `running` filter.
    typed(&mut app, "running");
    assert!(ids(&mut app).is_empty());
    app.update(Action::Net(Net::Event(LiveEvent::Job(Event {
        kind: "job_claimed".into(),
        job: id(7),
        status: Status::Running,
        step: None,
        agent: Some("agent-1".into()),
        ts: now(),
    }))));
    assert_eq!(ids(&mut app), vec![id(7)]);
    // ... and leaves it when it finishes.
    let mut done = app.job(&id(7)).unwrap().clone();
    done.status = Status::Succeeded;
    app.update(Action::Net(Net::Job(Box::new(done))));
    assert!(ids(&mut app).is_empty());
}

#[test]
fn a_resync_says_events_were_missed_and_the_reloaded_page_replaces_the_list() {
    let mut app = few();
    // The cursor sits on a queued job.
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected.as_deref(), Some(id(4).as_str()));
    app.update(Action::Net(Net::Event(LiveEvent::Hello {
        cursor: "9-0".into(),
    })));
    let out = app.update(Action::Net(Net::Event(LiveEvent::Resync {
        requested: "1-0".into(),
        cursor: "9-0".into(),
        reason: "the id is older than the oldest event still kept".into(),
    })));
    assert!(
        out.is_empty(),
        "the network task reloads by itself: {out:?}"
    );
    let (ok, m) = app.message.clone().unwrap();
    assert!(
        !ok && m.contains("missed events") && m.contains("reloading"),
        "{m}"
    );
    // The reload: a job finished meanwhile (its events were lost), one is new, the others were pruned.
    let mut done = job(4, Status::Succeeded, 600);
    done.timestamps.finished = Some(now());
    app.update(Action::Net(Net::Jobs {
        jobs: vec![job(9, Status::Queued, 0), done],
        first: true,
    }));
    assert_eq!(ids(&mut app), vec![id(9), id(4)]);
    assert_eq!(app.job(&id(4)).unwrap().status, Status::Succeeded);
    assert!(
        app.job(&id(3)).is_none(),
        "nothing from before the reload stays"
    );
    assert_eq!(
        app.selected.as_deref(),
        Some(id(4).as_str()),
        "the cursor stays on its job"
    );
}

#[test]
fn esc_in_a_searched_log_clears_the_search_first() {
    let mut app = few();
    key(&mut app, KeyCode::Char('l'));
    let job = app.log.job.clone();
    app.update(Action::Net(Net::Log {
        job,
        lines: log_lines(50),
        truncated: false,
    }));
    key(&mut app, KeyCode::Char('/'));
    typed(&mut app, "warning");
    key(&mut app, KeyCode::Enter);
    assert!(!app.log.matches.is_empty());
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view(), View::Logs, "the first Esc clears the search");
    assert!(app.log.query.is_empty());
    assert!(app.log.matches.is_empty());
    assert_eq!(app.log.current, None);
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view(), View::Jobs, "the next one leaves the log");
}

#[test]
fn a_status_message_shows_on_the_view_that_said_it_only() {
    let mut app = few();
    key(&mut app, KeyCode::Char('l'));
    key(&mut app, KeyCode::Char('w'));
    assert!(screen(&mut app, 100, 30).contains("wrap on"));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.view(), View::Jobs);
    let s = screen(&mut app, 100, 30);
    assert!(
        !s.contains("wrap on"),
        "the log's message on the jobs view:\n{s}"
    );
    assert!(s.contains("? help  : command"), "{s}");
}
