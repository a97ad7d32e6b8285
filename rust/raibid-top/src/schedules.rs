//! The `:schedules` view (issue 22 §3): every schedule with its expression, time zone, variant, next
//! run (as "in 5m", counting down with the UI clock) and the status of its last job. Loaded from
//! `GET /api/v1/schedules` when the view is shown (`:schedules` again reloads); read-only.

use crate::action::{Action, Net};
use crate::app::App;
use crate::net::Client;
use crate::ui::{fmt_dur, status_style};
use raibid_core::contract::http;
use raibid_core::schedule::{ScheduleList, ScheduleView};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Row as TRow, Table};
use ratatui::Frame;
use tokio::sync::mpsc::UnboundedSender;

/// Load the schedules and hand them to the UI.
pub fn load(client: Client, tx: UnboundedSender<Action>) {
    tokio::spawn(async move {
        let n = match client.get::<ScheduleList>(http::SCHEDULES_PATH).await {
            Ok(l) => Net::Schedules(l.schedules),
            Err(e) => Net::Outcome(Err(format!("schedules: {e}"))),
        };
        let _ = tx.send(Action::Net(n));
    });
}

/// The schedules shown (filtered by the `/` query over id, repository, ref and expression).
pub fn shown(app: &App) -> Vec<&ScheduleView> {
    let q = app.filter.to_lowercase();
    app.schedules
        .iter()
        .filter(|s| {
            q.is_empty()
                || [
                    &s.schedule.id,
                    &s.schedule.repo_url,
                    &s.schedule.git_ref,
                    &s.schedule.cron,
                ]
                .iter()
                .any(|f| f.to_lowercase().contains(&q))
        })
        .collect()
}

fn short_repo(url: &str) -> String {
    let t = url.trim_end_matches('/');
    let t = t.strip_suffix(".git").unwrap_or(t);
    let parts: Vec<&str> = t.rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// Render the view.
pub fn render(f: &mut Frame, app: &App, area: Rect) {
    let list = shown(app);
    let rows: Vec<TRow> = list
        .iter()
        .map(|s| {
            let next = match s.next_run {
                _ if s.paused => Span::styled("paused", Style::new().fg(Color::DarkGray)),
                Some(t) => Span::raw(format!("in {}", fmt_dur((t - app.now).num_milliseconds()))),
                None => Span::raw("never"),
            };
            let last = match s.last_status {
                Some(st) => {
                    let (style, sym) = status_style(st.as_str());
                    Span::styled(format!("{sym} {}", st.as_str()), style)
                }
                None if s.last_job.is_some() => Span::raw("expired"),
                None => Span::styled("—", Style::new().fg(Color::DarkGray)),
            };
            let env = s
                .schedule
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            TRow::new(vec![
                Span::raw(short_repo(&s.schedule.repo_url)),
                Span::raw(
                    s.schedule
                        .git_ref
                        .trim_start_matches("refs/heads/")
                        .to_string(),
                ),
                Span::raw(format!("{} {}", s.schedule.cron, s.schedule.timezone)),
                next,
                last,
                Span::raw(env),
            ])
        })
        .collect();
    let header = TRow::new(["REPO", "REF", "CRON", "NEXT", "LAST", "VARIANT"]).style(
        Style::new()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    );
    let mut state = ratatui::widgets::TableState::default();
    if !list.is_empty() {
        state.select(Some(app.list_cursor.min(list.len() - 1)));
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::DarkGray))
        .title(Span::styled(
            format!(" schedules ({}) ", list.len()),
            Style::new().add_modifier(Modifier::BOLD),
        ));
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Length(10),
            Constraint::Fill(2),
            Constraint::Length(10),
            Constraint::Length(13),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(block)
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, area, &mut state);
}
