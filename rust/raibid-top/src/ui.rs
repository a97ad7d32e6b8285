//! Rendering: pure functions of the state. One function per component (header, jobs, detail, logs,
//! agents, dead letters, status line, help); none calls another component, none touches the network.

use crate::action::View;
use crate::app::{
    bindings, duration_ms, query_matcher, short_id, App, Conn, Input, Row, SortBy, MIN_SIZE,
};
use chrono::{DateTime, Utc};
use raibid_core::job::{Job, Status};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row as TRow, Sparkline, Table, Wrap};
use ratatui::Frame;

/// Draw the whole screen.
pub fn draw(f: &mut Frame, app: &mut App) {
    let area = f.area();
    app.size = (area.width, area.height);
    let [header, body, status] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    // Rows the body can show (minus borders and table header).
    app.page = usize::from(body.height.saturating_sub(3)).max(1);
    app.prepare();
    let app = &*app;
    render_header(f, app, header);
    match app.view() {
        View::Jobs => render_jobs(f, app, body),
        View::Detail => render_detail(f, app, body),
        View::Logs => render_logs(f, app, body),
        View::Agents => render_agents(f, app, body),
        View::Dead => render_dead(f, app, body),
        View::Schedules => crate::schedules::render(f, app, body),
    }
    render_status(f, app, status);
    if app.help {
        render_help(f, app, body);
    }
}

/// Colour and symbol of a status; unknown statuses are shown by name, neutral.
pub fn status_style(s: &str) -> (Style, &'static str) {
    match s {
        "queued" => (Style::new().fg(Color::Yellow), "◷"),
        "running" => (Style::new().fg(Color::Cyan), "●"),
        "succeeded" => (Style::new().fg(Color::Green), "✔"),
        "failed" => (Style::new().fg(Color::Red), "✘"),
        "cancelled" => (Style::new().fg(Color::DarkGray), "⊘"),
        "timed_out" => (Style::new().fg(Color::Magenta), "⧗"),
        "skipped" => (Style::new().fg(Color::DarkGray), "·"),
        _ => (Style::new().fg(Color::Blue), "◆"),
    }
}

fn status_span(s: Status) -> Span<'static> {
    let (st, sym) = status_style(s.as_str());
    Span::styled(format!("{sym} {}", s.as_str()), st)
}

/// `950ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub fn fmt_dur(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// `owner/name` of a clone URL.
pub fn repo_name(url: &str) -> String {
    let u = url.trim_end_matches('/').trim_end_matches(".git");
    let parts: Vec<&str> = u.rsplit(['/', ':']).take(2).collect();
    match parts.as_slice() {
        [name, owner] if !owner.is_empty() => format!("{owner}/{name}"),
        [name, ..] => (*name).to_string(),
        [] => u.to_string(),
    }
}

fn short_ref(r: &str) -> &str {
    r.strip_prefix("refs/heads/")
        .or_else(|| r.strip_prefix("refs/tags/"))
        .unwrap_or(r)
}

fn conn_span(c: &Conn) -> Span<'static> {
    match c {
        Conn::Live => Span::styled("● live", Style::new().fg(Color::Green)),
        Conn::Connecting(1) => Span::styled("◌ connecting", Style::new().fg(Color::Yellow)),
        Conn::Connecting(n) => Span::styled(
            format!("◌ reconnecting (attempt {n})"),
            Style::new().fg(Color::Yellow),
        ),
        Conn::Down { reason, retry_ms } => Span::styled(
            format!(
                "✘ disconnected: {reason}; retry in {}",
                fmt_dur(*retry_ms as i64)
            ),
            Style::new().fg(Color::Red),
        ),
    }
}

fn render_header(f: &mut Frame, app: &App, area: Rect) {
    let dim = Style::new().fg(Color::DarkGray);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let [l1, l2, l3] = Layout::vertical([Constraint::Length(1); 3]).areas(area);
    let queued = app
        .jobs
        .iter()
        .filter(|j| j.status == Status::Queued)
        .count();
    let q = app.queue.as_ref();
    let num = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
    let busy = app
        .agents
        .values()
        .filter(|a| a.current_job.is_some())
        .count();
    let idle = app.agents.len() - busy;
    let (done, ok) = app.hour;
    let rate = (ok * 100)
        .checked_div(done)
        .map(|r| format!("{r}%"))
        .unwrap_or_else(|| "–".into());
    let title = Line::from(vec![
        Span::styled(" raibid-top ", bold.fg(Color::Black).bg(Color::Cyan)),
        Span::raw(" "),
        Span::styled(app.endpoint.clone(), dim),
        Span::raw("  "),
        conn_span(&app.conn),
    ]);
    f.render_widget(Paragraph::new(title), l1);
    let figures = Line::from(vec![
        Span::styled(" queued ", dim),
        Span::styled(queued.to_string(), bold),
        Span::styled("  lag ", dim),
        Span::styled(num(q.and_then(|q| q.lag)), bold),
        Span::styled("  running ", dim),
        Span::styled(num(q.map(|q| q.pending)), bold),
        Span::styled("  oldest ", dim),
        Span::styled(
            q.and_then(|q| q.oldest_waiting_age_secs)
                .map(|s| fmt_dur((s * 1000.0) as i64))
                .unwrap_or_else(|| "–".into()),
            bold,
        ),
        Span::styled("  agents ", dim),
        Span::styled(format!("{busy} busy/{idle} idle"), bold),
        Span::styled("  1h ", dim),
        Span::styled(format!("{done} done {rate} ok"), bold),
    ]);
    f.render_widget(Paragraph::new(figures), l2);
    let [label, spark] = Layout::horizontal([Constraint::Length(16), Constraint::Min(1)]).areas(l3);
    f.render_widget(Paragraph::new(Span::styled(" jobs/min (1h) ", dim)), label);
    let data = &app.throughput[app
        .throughput
        .len()
        .saturating_sub(usize::from(spark.width))..];
    f.render_widget(
        Sparkline::default()
            .data(data)
            .style(Style::new().fg(Color::Cyan)),
        spark,
    );
}

fn title_block(title: String) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::DarkGray))
        .title(Span::styled(
            title,
            Style::new().add_modifier(Modifier::BOLD),
        ))
}

/// First row to show so that `cursor` is visible in `page` rows.
fn window(cursor: usize, page: usize, len: usize) -> usize {
    if len <= page {
        0
    } else {
        // Keep the cursor in the middle third when possible: smooth and stable.
        cursor.saturating_sub(page / 2).min(len - page)
    }
}

fn age(job: &Job, now: DateTime<Utc>) -> String {
    fmt_dur(duration_ms(job, now))
}

/// A column of the jobs table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Id,
    Status,
    Repo,
    Ref,
    Sha,
    Step,
    Time,
    Cache,
    Agent,
    Attempt,
}

impl Col {
    /// Left to right.
    const ORDER: [Col; 10] = [
        Col::Id,
        Col::Status,
        Col::Repo,
        Col::Ref,
        Col::Sha,
        Col::Step,
        Col::Time,
        Col::Cache,
        Col::Agent,
        Col::Attempt,
    ];
    /// Dropped first when the terminal is narrow (the others shrink, with an ellipsis, first).
    const DROP: [Col; 4] = [Col::Sha, Col::Cache, Col::Attempt, Col::Step];
}

/// The jobs table's columns and their widths for an inner width of `inner` cells. Columns keep their
/// ideal width while they fit; past that the optional ones (SHA, CACHE) go, then the flexible ones
/// shrink to their minimum (REPO, REF, STEP), then `#` and STEP go, then REPO and REF shrink further.
/// Cells that do not fit their column end in `…`, so no name is ever cut silently.
fn job_columns(inner: u16, agent_w: usize) -> Vec<(Col, usize)> {
    let inner = usize::from(inner);
    let ideal = |c: Col, long_id: bool| match c {
        Col::Id => {
            if long_id {
                26
            } else {
                8
            }
        }
        Col::Status => 11,
        Col::Repo => 24,
        Col::Ref => 14,
        Col::Sha => 7,
        Col::Step => 10,
        Col::Time => 6,
        Col::Cache => 5,
        Col::Agent => agent_w.clamp(5, 32),
        Col::Attempt => 1,
    };
    let total = |cols: &[(Col, usize)]| {
        cols.iter().map(|(_, w)| w).sum::<usize>() + cols.len().saturating_sub(1)
    };
    let with_long: Vec<(Col, usize)> = Col::ORDER.iter().map(|c| (*c, ideal(*c, true))).collect();
    let long_id = total(&with_long) <= inner;
    let mut cols: Vec<(Col, usize)> = Col::ORDER
        .iter()
        .map(|c| (*c, ideal(*c, long_id)))
        .collect();
    let drop = |cols: &mut Vec<(Col, usize)>, c: Col| cols.retain(|(x, _)| *x != c);
    let shrink = |cols: &mut Vec<(Col, usize)>, c: Col, min: usize| {
        let over = total(cols).saturating_sub(inner);
        if let Some((_, w)) = cols.iter_mut().find(|(x, _)| *x == c) {
            *w = w.saturating_sub(over).max(min.min(*w));
        }
    };
    for c in [Col::Sha, Col::Cache] {
        if total(&cols) > inner {
            drop(&mut cols, c);
        }
    }
    for (c, min) in [
        (Col::Repo, 16),
        (Col::Ref, 10),
        (Col::Step, 6),
        (Col::Agent, 8),
    ] {
        shrink(&mut cols, c, min);
    }
    for c in &Col::DROP[2..] {
        if total(&cols) > inner {
            drop(&mut cols, *c);
        }
    }
    for (c, min) in [
        (Col::Repo, 8),
        (Col::Ref, 6),
        (Col::Agent, 5),
        (Col::Time, 5),
    ] {
        shrink(&mut cols, c, min);
    }
    // Room to spare goes to REPO (the longest names).
    let spare = inner.saturating_sub(total(&cols));
    if let Some((_, w)) = cols.iter_mut().find(|(x, _)| *x == Col::Repo) {
        *w += spare;
    }
    cols
}

/// `s` in at most `w` cells: cut with an ellipsis when longer.
fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// `items` joined by `sep` in at most `w` cells: as many whole items as fit, then `…`.
fn fit_items(items: &[String], sep: &str, w: usize) -> String {
    let all = items.join(sep);
    if all.chars().count() <= w {
        return all;
    }
    let mut out = String::new();
    for it in items {
        let next = if out.is_empty() {
            it.clone()
        } else {
            format!("{out}{sep}{it}")
        };
        // Room for the separator and the ellipsis after it.
        if next.chars().count() + sep.chars().count() + 1 > w {
            break;
        }
        out = next;
    }
    if out.is_empty() {
        return fit(&all, w);
    }
    format!("{out}{sep}…")
}

/// A line cargo prints on stderr about its progress (a right-aligned verb: `   Compiling x v1`,
/// `    Finished`, `     Running`), not a diagnostic.
pub fn is_cargo_status(line: &str) -> bool {
    const VERBS: [&str; 20] = [
        "Compiling",
        "Checking",
        "Finished",
        "Running",
        "Fresh",
        "Downloading",
        "Downloaded",
        "Updating",
        "Locking",
        "Adding",
        "Blocking",
        "Doc-tests",
        "Documenting",
        "Building",
        "Installing",
        "Installed",
        "Packaging",
        "Verifying",
        "Removed",
        "Waiting",
    ];
    let t = line.trim_start();
    line.len() > t.len()
        && VERBS.iter().any(|v| {
            t.strip_prefix(v)
                .is_some_and(|r| r.starts_with(' ') || r.is_empty())
        })
}

/// The cache hit ratio of a job: compilation units reused over units built, when cargo reported any.
pub fn hit_ratio(j: &Job) -> Option<f64> {
    let c = j.cache.as_ref()?;
    let (fresh, total) = (c.units_fresh?, c.units_total?);
    (total > 0).then(|| fresh as f64 / total as f64)
}

fn render_jobs(f: &mut Frame, app: &App, area: Rect) {
    let filter = if app.filter.is_empty() {
        String::new()
    } else {
        format!(" /{}", app.filter)
    };
    let title = format!(" jobs ({}/{}){filter} ", app.shown.len(), app.jobs.len());
    let block = title_block(title);
    let page = usize::from(area.height.saturating_sub(3)).max(1);
    let start = window(app.cursor, page, app.shown.len());
    let visible = &app.shown[start..(start + page).min(app.shown.len())];
    let now = app.now;
    // The agent column is as wide as the names it may show (known agents and the rows on screen).
    let agent_w = app
        .agents
        .keys()
        .map(|a| a.chars().count())
        .chain(
            visible
                .iter()
                .filter_map(|i| app.jobs[*i].agent.as_deref().map(|a| a.chars().count())),
        )
        .max()
        .unwrap_or(5);
    let cols = job_columns(area.width.saturating_sub(2), agent_w);
    let long_id = cols.iter().any(|(c, w)| *c == Col::Id && *w > 8);
    let rows: Vec<TRow> = visible
        .iter()
        .map(|i| {
            let j = &app.jobs[*i];
            let cells: Vec<Span> = cols
                .iter()
                .map(|(c, w)| {
                    let w = *w;
                    match c {
                        Col::Id => {
                            let id = if long_id {
                                j.id.as_str()
                            } else {
                                short_id(&j.id)
                            };
                            Span::raw(fit(id, w))
                        }
                        Col::Status => {
                            let (st, sym) = status_style(j.status.as_str());
                            Span::styled(fit(&format!("{sym} {}", j.status.as_str()), w), st)
                        }
                        Col::Repo => {
                            let repo = repo_name(&j.source.repo_url);
                            let text = crate::groups::repo_cell(app, j, &repo).unwrap_or(repo);
                            Span::raw(fit(&text, w))
                        }
                        Col::Ref => Span::raw(fit(short_ref(&j.source.git_ref), w)),
                        Col::Sha => Span::raw(
                            j.source
                                .sha
                                .as_deref()
                                .map(|s| s.get(..7).unwrap_or(s))
                                .unwrap_or("-")
                                .to_string(),
                        ),
                        Col::Step => Span::raw(fit(j.step.as_deref().unwrap_or_default(), w)),
                        Col::Time => Span::raw(fit(&age(j, now), w)),
                        Col::Cache => match hit_ratio(j) {
                            Some(r) => Span::styled(format!("{:>4.0}%", r * 100.0), ratio_style(r)),
                            None => Span::raw(""),
                        },
                        Col::Agent => Span::raw(fit(j.agent.as_deref().unwrap_or_default(), w)),
                        Col::Attempt => Span::raw(fit(&j.attempt.to_string(), w)),
                    }
                })
                .collect();
            TRow::new(cells)
        })
        .collect();
    let mark = |s: SortBy, w: usize| {
        let t = if app.sort == s {
            format!("{}{}", s.title(), if app.ascending { "▲" } else { "▼" })
        } else {
            s.title().to_string()
        };
        fit(&t, w)
    };
    let titles: Vec<String> = cols
        .iter()
        .map(|(c, w)| match c {
            Col::Id => mark(SortBy::Created, *w),
            Col::Status => mark(SortBy::Status, *w),
            Col::Repo => mark(SortBy::Repo, *w),
            Col::Ref => mark(SortBy::Ref, *w),
            Col::Sha => "SHA".into(),
            Col::Step => fit("STEP", *w),
            Col::Time => mark(SortBy::Duration, *w),
            Col::Cache => "CACHE".into(),
            Col::Agent => mark(SortBy::Agent, *w),
            Col::Attempt => mark(SortBy::Attempt, *w),
        })
        .collect();
    let header = TRow::new(titles).style(
        Style::new()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    );
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|(_, w)| Constraint::Length(u16::try_from(*w).unwrap_or(u16::MAX)))
        .collect();
    let mut state = ratatui::widgets::TableState::default();
    if !app.shown.is_empty() {
        state.select(Some(app.cursor - start));
    }
    let empty = app.shown.is_empty();
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, area, &mut state);
    if empty {
        let msg = if !app.loaded {
            "loading jobs…"
        } else if app.jobs.is_empty() {
            "no jobs yet: push to a repository, or  :submit <repo-url> [ref]"
        } else {
            "no job matches the filter (Esc clears it)"
        };
        let inner = Rect::new(area.x + 2, area.y + 3, area.width.saturating_sub(4), 1);
        if area.height > 4 {
            f.render_widget(
                Paragraph::new(Span::styled(msg, Style::new().fg(Color::DarkGray))),
                inner,
            );
        }
    }
}

/// Green for a warm build, yellow for a partly warm one, red for a cold one.
fn ratio_style(r: f64) -> Style {
    if r >= 0.9 {
        Style::new().fg(Color::Green)
    } else if r >= 0.5 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new().fg(Color::Red)
    }
}

fn hms(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "–".into())
}

/// Why the job waited, in words.
pub fn why_waited(app: &App, j: &Job) -> String {
    let t = &j.timestamps;
    // Only agents of the job's kind can take it (agents older than the `kinds` field: any).
    let kind = j.kind.as_str();
    let serves = |a: &&raibid_core::queue_view::AgentInfo| {
        a.kinds.is_empty() || a.kinds.iter().any(|k| k == kind)
    };
    let of_kind = app.agents.values().filter(serves).count();
    let idle = app
        .agents
        .values()
        .filter(serves)
        .filter(|a| a.current_job.is_none())
        .count();
    let mut why = Vec::new();
    if j.attempt > 1 {
        why.push(format!(
            "attempt {} after a reclaim (an agent stopped renewing its lease)",
            j.attempt
        ));
    }
    match (t.queued, t.claimed) {
        (Some(q), None) if j.status == Status::Queued => {
            let w = fmt_dur((app.now - q).num_milliseconds());
            if app.agents.is_empty() {
                why.push(format!("waiting {w}: no agent is running"));
            } else if of_kind == 0 && j.kind == raibid_core::job::JobKind::Gpu {
                why.push(format!(
                    "waiting {w}: no agent of kind `gpu` is running (start one on a host with an NVIDIA GPU: ./scripts/dev.sh up --gpu)"
                ));
            } else if of_kind == 0 {
                why.push(format!("waiting {w}: no agent of kind `{kind}` is running"));
            } else if idle == 0 {
                why.push(format!("waiting {w}: no idle agent ({of_kind} busy)"));
            } else {
                why.push(format!(
                    "waiting {w} for one of {idle} idle agent(s) to read the queue"
                ));
            }
        }
        (Some(q), Some(c)) => {
            let ms = (c - q).num_milliseconds();
            if ms >= 1000 {
                why.push(format!("waited {} for an agent to be free", fmt_dur(ms)));
            } else {
                why.push(format!("claimed {} after it was queued", fmt_dur(ms)));
            }
        }
        _ => {}
    }
    if j.cancel_requested && !j.status.is_final() {
        why.push("cancel requested".into());
    }
    why.join("; ")
}

fn render_detail(f: &mut Frame, app: &App, area: Rect) {
    let Some(j) = app.current_job() else {
        f.render_widget(
            Paragraph::new("no job selected").block(title_block(" detail ".into())),
            area,
        );
        return;
    };
    let dim = Style::new().fg(Color::DarkGray);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let kv =
        |k: &str, v: String| Line::from(vec![Span::styled(format!(" {k:<9}"), dim), Span::raw(v)]);
    let s = &j.source;
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!(" {} ", j.id), bold),
            status_span(j.status),
            Span::styled(format!("  {} job", j.kind.as_str()), dim),
            Span::styled(format!("  attempt {}", j.attempt), dim),
            Span::styled(
                j.agent
                    .as_deref()
                    .map(|a| format!("  on {a}"))
                    .unwrap_or_default(),
                dim,
            ),
        ]),
        kv("repo", s.repo_url.clone()),
        kv(
            "ref",
            format!(
                "{}  sha {}",
                s.git_ref,
                s.sha.clone().unwrap_or_else(|| "(tip at clone)".into())
            ),
        ),
        kv(
            "trigger",
            format!(
                "{}{}{}{}",
                serde_json::to_value(s.trigger.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                s.trigger
                    .actor
                    .as_deref()
                    .map(|a| format!(" by {a}"))
                    .unwrap_or_default(),
                s.delivery_id
                    .as_deref()
                    .map(|d| format!("  delivery {d}"))
                    .unwrap_or_default(),
                j.retry_of
                    .as_deref()
                    .map(|r| format!("  retry of {r}"))
                    .unwrap_or_default()
            ),
        ),
    ];
    // Timeline with the gap before each point.
    let t = &j.timestamps;
    let points = [
        ("received", t.received),
        ("queued", t.queued),
        ("claimed", t.claimed),
        ("started", t.started),
        ("finished", t.finished),
    ];
    let mut spans = vec![Span::styled(" timeline ", dim)];
    let mut prev: Option<DateTime<Utc>> = None;
    for (i, (name, at)) in points.iter().enumerate() {
        if i > 0 {
            let gap = match (prev, at) {
                (Some(p), Some(a)) => format!(" ─{}→ ", fmt_dur((*a - p).num_milliseconds())),
                _ => " → ".into(),
            };
            spans.push(Span::styled(gap, dim));
        }
        let st = if at.is_some() { bold } else { dim };
        spans.push(Span::styled((*name).to_string(), st));
        if at.is_some() {
            prev = *at;
        }
    }
    lines.push(Line::from(spans));
    let at: Vec<String> = points
        .iter()
        .map(|(n, a)| format!("{n} {}", hms(*a)))
        .collect();
    // What does not fit is cut between two times, with `…`, never inside one.
    let room = usize::from(area.width.saturating_sub(2 + 10));
    lines.push(kv("at", fit_items(&at, "  ", room)));
    let why = why_waited(app, j);
    if !why.is_empty() {
        lines.push(kv("waited", why));
    }
    if let Some(r) = &j.failure_reason {
        lines.push(Line::from(vec![
            Span::styled(" reason   ", dim),
            Span::styled(
                r.clone(),
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
        ]));
    }
    for g in j.gpu.iter().flatten() {
        lines.push(kv(
            "gpu",
            format!(
                "{} {} (driver {}, CUDA {})",
                g.name, g.uuid, g.driver_version, g.cuda_version
            ),
        ));
    }
    lines.extend(facts_lines(j, dim, room));
    if j.kind == raibid_core::job::JobKind::Image {
        // An image job builds no cargo target: only what its git mirror did.
        lines.extend(cache_lines(j, dim).into_iter().skip(2));
    } else {
        lines.extend(cache_lines(j, dim));
    }
    lines.extend(artifact_lines(j, dim));
    lines.push(Line::from(Span::styled(" steps", dim)));
    // Bars on one time axis: from the first step's start to the end (or now).
    let t0 = j.steps.iter().filter_map(|s| s.started_at).min();
    let end = t.finished.unwrap_or(app.now);
    let span_ms = t0
        .map(|t0| (end - t0).num_milliseconds().max(1))
        .unwrap_or(1);
    let bar_w = i64::from(area.width.saturating_sub(48).max(10));
    for st in &j.steps {
        let (style, sym) = status_style(&st.status);
        let dur = st.duration_ms.map(|d| d as i64).or_else(|| {
            st.started_at
                .map(|s| (app.now - s).num_milliseconds())
                .filter(|_| st.status == "running")
        });
        let (off, len) = match (t0, st.started_at) {
            (Some(t0), Some(s)) => {
                let off = (s - t0).num_milliseconds() * bar_w / span_ms;
                let len = (dur.unwrap_or(0) * bar_w / span_ms).max(1);
                (
                    off.clamp(0, bar_w - 1),
                    len.min(bar_w - off.clamp(0, bar_w - 1)),
                )
            }
            _ => (0, 0),
        };
        let exit = st
            .exit_code
            .map(|c| format!("exit {c}"))
            .unwrap_or_default();
        lines.push(Line::from(vec![
            Span::styled(format!("  {sym} "), style),
            Span::raw(format!("{:<14.14}", st.name)),
            Span::styled(format!("{:<10.10}", st.status), style),
            Span::raw(format!("{exit:<8}")),
            Span::raw(format!(
                "{:>7} ",
                dur.map(fmt_dur).unwrap_or_else(|| "–".into())
            )),
            Span::raw(" ".repeat(off as usize)),
            Span::styled("█".repeat(len as usize), style),
            Span::styled(
                "·".repeat((bar_w - off - len).max(0) as usize),
                Style::new().fg(Color::DarkGray),
            ),
        ]));
    }
    if j.steps.is_empty() {
        lines.push(Line::from(Span::styled("   (no step has started)", dim)));
    }
    f.render_widget(
        Paragraph::new(lines).block(title_block(format!(" job {} ", short_id(&j.id)))),
        area,
    );
}

/// What else the user needs on screen (issue 19 §3): the public page, the hand-over in either
/// direction, an image job's pushed references and digests, and a log cut by the cap.
fn facts_lines(j: &Job, dim: Style, room: usize) -> Vec<Line<'static>> {
    let kv = |k: &str, v: Span<'static>| Line::from(vec![Span::styled(format!(" {k:<9}"), dim), v]);
    let mut out = Vec::new();
    if let Some(u) = &j.page_url {
        // Whole, never cut: on as many rows as it needs (a cut link is of no use).
        let chars: Vec<char> = u.chars().collect();
        for (i, part) in chars.chunks(room.max(20)).enumerate() {
            let k = if i == 0 { "page" } else { "" };
            out.push(kv(k, Span::raw(part.iter().collect::<String>())));
        }
    }
    if let Some(to) = &j.handed_over_to {
        out.push(kv(
            "handover",
            Span::raw(fit(&format!("handed over to job {to}"), room)),
        ));
    }
    if let Some(from) = &j.handed_over_from {
        out.push(kv(
            "handover",
            Span::raw(fit(&format!("handed over from job {from}"), room)),
        ));
    }
    if let Some(img) = &j.image {
        let r = &img.request;
        let mut what = r.name.clone();
        if let Some(reg) = &r.registry {
            what = format!("{reg}/{what}");
        }
        if !r.publish {
            what.push_str("  (not published)");
        }
        if let Some(p) = img.failed_phase {
            what.push_str(&format!("  failed in {}", p.as_str()));
        }
        out.push(kv("image", Span::raw(fit(&what, room))));
        for p in &img.pushed {
            out.push(kv(
                "pushed",
                Span::raw(fit(&format!("{}  {}", p.reference, p.digest), room)),
            ));
        }
        if r.publish && img.pushed.is_empty() && j.status.is_final() {
            out.push(kv("pushed", Span::styled("nothing", dim)));
        }
    }
    if let Some(t) = &j.log_truncated {
        out.push(kv(
            "log",
            Span::styled(
                fit(
                    &format!(
                        "truncated at the cap: kept {} lines ({}), dropped {} lines ({})",
                        t.kept_lines,
                        fmt_bytes(t.kept_bytes),
                        t.dropped_lines,
                        fmt_bytes(t.dropped_bytes)
                    ),
                    room,
                ),
                Style::new().fg(Color::Yellow),
            ),
        ));
    }
    out
}

/// `1.2 GiB`, `340 KiB`, `12 B`.
/// The detail's artifact rows (issue 23 §2): one per file (at most 4, then how many more), name, size
/// and the digest's first 12 hex digits; `raibid artifacts get` or the API fetch them.
fn artifact_lines(j: &raibid_core::job::Job, dim: Style) -> Vec<Line<'static>> {
    let Some(set) = &j.artifacts else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in set.files.iter().take(4) {
        let short = f.digest.strip_prefix("sha256:").unwrap_or(&f.digest);
        out.push(Line::from(vec![
            Span::styled(" artifact ", dim),
            Span::raw(format!("{}  {}  ", f.name, fmt_bytes(f.size))),
            Span::styled(format!("sha256:{}", &short[..short.len().min(12)]), dim),
        ]));
    }
    if set.files.len() > 4 {
        out.push(Line::from(Span::styled(
            format!(
                " artifact … {} more (raibid artifacts {})",
                set.files.len() - 4,
                j.id
            ),
            dim,
        )));
    }
    out
}

pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What the job's caches did (issue 12 §3): hit ratio and units, how the target directory was
/// restored, lock and restore time, the slot, its key and size, the git mirror.
fn cache_lines(j: &Job, dim: Style) -> Vec<Line<'static>> {
    let Some(c) = &j.cache else {
        return Vec::new();
    };
    let kv = |k: &str, spans: Vec<Span<'static>>| {
        let mut v = vec![Span::styled(format!(" {k:<9}"), dim)];
        v.extend(spans);
        Line::from(v)
    };
    let sep = || Span::styled("  ", dim);
    let mut first = Vec::new();
    match (hit_ratio(j), c.units_fresh, c.units_total) {
        (Some(r), Some(f), Some(t)) => {
            first.push(Span::styled(
                format!("hit {:.0}%", r * 100.0),
                ratio_style(r).add_modifier(Modifier::BOLD),
            ));
            first.push(Span::raw(format!(" ({f}/{t} units fresh)")));
        }
        _ => first.push(Span::styled("no cargo units reported", dim)),
    }
    first.push(sep());
    let restore = c.restore.as_deref().unwrap_or("–");
    first.push(Span::raw(format!("restore {restore}")));
    if c.recovered {
        first.push(Span::styled(
            " (slot recovered from a killed job)",
            Style::new().fg(Color::Yellow),
        ));
    }
    first.push(sep());
    first.push(Span::raw(format!(
        "lock {}  restore {}",
        fmt_dur(c.lock_ms as i64),
        fmt_dur(c.restore_ms as i64)
    )));
    let mut out = vec![kv("cache", first)];
    out.push(kv(
        "slot",
        vec![
            Span::raw(c.slot.clone().unwrap_or_else(|| "–".into())),
            Span::styled("  size ", dim),
            Span::raw(c.slot_bytes.map(fmt_bytes).unwrap_or_else(|| "–".into())),
            Span::styled("  key ", dim),
            Span::raw(c.key.clone().unwrap_or_else(|| "–".into())),
        ],
    ));
    let mirror = if c.mirror_hit {
        "hit: had the commit, nothing fetched".to_string()
    } else {
        format!(
            "miss: fetched {} objects, {}",
            c.fetched_objects,
            fmt_bytes(c.fetched_bytes)
        )
    };
    out.push(kv("mirror", vec![Span::raw(mirror)]));
    out
}

fn render_logs(f: &mut Frame, app: &App, area: Rect) {
    let log = &app.log;
    let state = match (log.ended, app.job(&log.job)) {
        (Some(s), _) => s.as_str().to_string(),
        (None, Some(j)) => j.status.as_str().to_string(),
        (None, None) => "?".into(),
    };
    let mut title = format!(
        " log {} · {state} · {} lines · follow {} · wrap {}",
        short_id(&log.job),
        log.lines.len(),
        if log.follow { "on" } else { "off" },
        if log.wrap { "on" } else { "off" },
    );
    if !log.query.is_empty() {
        let n = log.matches.len();
        let noun = if n == 1 { "match" } else { "matches" };
        title.push_str(&format!(" · /{} {n} {noun}", log.query));
    }
    if log.truncated {
        title.push_str(" · truncated");
    }
    title.push(' ');
    let block = title_block(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let height = usize::from(inner.height);
    let width = usize::from(inner.width).max(1);
    let matcher = query_matcher(&log.query);
    let current_row = log.current.and_then(|c| log.matches.get(c)).copied();
    let hl = Style::new().fg(Color::Black).bg(Color::Yellow);
    let mut lines: Vec<Line> = Vec::with_capacity(height);
    let mut used = 0;
    let mut r = log.top;
    while used < height && r < log.rows.len() {
        let line = match log.rows[r] {
            Row::Step(i) => {
                let name = &log.lines[i].step;
                let fill = width.saturating_sub(name.len() + 9);
                Line::from(Span::styled(
                    format!("── step {name} {}", "─".repeat(fill)),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ))
            }
            Row::Line(i) => {
                let l = &log.lines[i];
                let (gutter, base) = match l.stream.as_str() {
                    // cargo's progress (`Compiling`, `Finished`, `Running`, …) is ordinary stderr.
                    "stderr" if is_cargo_status(&l.line) => ("▌", Style::new()),
                    "stderr" if l.line.starts_with("warning") => {
                        ("▌", Style::new().fg(Color::Yellow))
                    }
                    "stderr" => ("▌", Style::new().fg(Color::LightRed)),
                    "system" => ("·", Style::new().fg(Color::DarkGray)),
                    _ => (" ", Style::new()),
                };
                let mut spans = vec![Span::styled(gutter, base)];
                let text = &l.line;
                let ranges = matcher.as_ref().map(|m| m.ranges(text)).unwrap_or_default();
                let mut at = 0;
                for (a, b) in ranges {
                    if !text.is_char_boundary(a) || !text.is_char_boundary(b) {
                        continue;
                    }
                    spans.push(Span::styled(&text[at..a], base));
                    spans.push(Span::styled(&text[a..b], hl));
                    at = b;
                }
                spans.push(Span::styled(&text[at..], base));
                let mut line = Line::from(spans);
                if Some(r) == current_row {
                    line = line.style(Style::new().add_modifier(Modifier::REVERSED));
                }
                line
            }
        };
        used += if log.wrap {
            line.width().div_ceil(width).max(1)
        } else {
            1
        };
        lines.push(line);
        r += 1;
    }
    if log.rows.is_empty() {
        let msg = match log.ended {
            Some(_) => "(the log is empty)",
            None => "(waiting for the first line…)",
        };
        lines.push(Line::from(Span::styled(
            msg,
            Style::new().fg(Color::DarkGray),
        )));
    }
    let mut p = Paragraph::new(lines);
    if log.wrap {
        p = p.wrap(Wrap { trim: false });
    }
    f.render_widget(p, inner);
}

fn heartbeat_age(ts: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => fmt_dur((now - t.with_timezone(&Utc)).num_milliseconds()),
        Err(_) => "?".into(),
    }
}

fn render_agents(f: &mut Frame, app: &App, area: Rect) {
    let agents = app.agents_shown();
    let rows: Vec<TRow> = agents
        .iter()
        .map(|a| {
            let (st, sym) = if a.current_job.is_some() {
                status_style("running")
            } else {
                (Style::new().fg(Color::DarkGray), "○")
            };
            TRow::new(vec![
                Span::styled(format!("{sym} {}", a.id), st),
                Span::raw(a.current_job.clone().unwrap_or_else(|| "idle".into())),
                Span::raw(heartbeat_age(&a.last_heartbeat, app.now)),
                Span::raw(a.jobs_done.to_string()),
            ])
        })
        .collect();
    let header = TRow::new(["NAME", "CURRENT JOB", "HEARTBEAT", "DONE"]).style(
        Style::new()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    );
    let mut state = ratatui::widgets::TableState::default();
    if !agents.is_empty() {
        state.select(Some(app.list_cursor.min(agents.len() - 1)));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Length(28),
            Constraint::Length(10),
            Constraint::Length(6),
        ],
    )
    .header(header)
    .block(title_block(format!(" agents ({}) ", agents.len())))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, area, &mut state);
}

fn render_dead(f: &mut Frame, app: &App, area: Rect) {
    let dead = app.dead_shown();
    let rows: Vec<TRow> = dead
        .iter()
        .map(|d| {
            let when = raibid_core::queue_view::entry_millis(&d.entry)
                .and_then(DateTime::<Utc>::from_timestamp_millis)
                .map(|t| fmt_dur((app.now - t).num_milliseconds()) + " ago")
                .unwrap_or_default();
            TRow::new(vec![
                Span::raw(d.job.clone()),
                Span::raw(d.attempts.to_string()),
                Span::raw(when),
                Span::styled(d.reason.clone(), Style::new().fg(Color::Red)),
            ])
        })
        .collect();
    let header = TRow::new(["JOB", "ATTEMPTS", "WHEN", "REASON"]).style(
        Style::new()
            .fg(Color::DarkGray)
            .add_modifier(Modifier::BOLD),
    );
    let mut state = ratatui::widgets::TableState::default();
    if !dead.is_empty() {
        state.select(Some(app.list_cursor.min(dead.len() - 1)));
    }
    let table = Table::new(
        rows,
        [
            Constraint::Length(26),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .block(title_block(format!(" dead letters ({}) ", dead.len())))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(table, area, &mut state);
}

fn render_status(f: &mut Frame, app: &App, area: Rect) {
    let right = Line::from(vec![
        Span::raw(" "),
        conn_span(&app.conn),
        Span::styled(
            format!("  <{}>  ? help ", app.view().name()),
            Style::new().fg(Color::DarkGray),
        ),
    ]);
    let rw = u16::try_from(right.width())
        .unwrap_or(u16::MAX)
        .min(area.width);
    let [left_a, right_a] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(rw)]).areas(area);
    let prompt = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
    let left = match &app.input {
        Input::Filter(s) => Line::from(vec![Span::styled("/", prompt), Span::raw(format!("{s}█"))]),
        Input::Search(s) => Line::from(vec![Span::styled("/", prompt), Span::raw(format!("{s}█"))]),
        Input::Command(s) => {
            Line::from(vec![Span::styled(":", prompt), Span::raw(format!("{s}█"))])
        }
        Input::ConfirmCancel(id) => Line::from(Span::styled(
            format!("cancel job {}? y/n", short_id(id)),
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        )),
        Input::None => {
            let (w, h) = app.size;
            if w < MIN_SIZE.0 || h < MIN_SIZE.1 {
                // The warning itself fits: the longest wording the room takes.
                let room = usize::from(left_a.width);
                let says = [
                    format!("terminal {w}×{h} is below 80×24: showing what fits"),
                    format!("{w}×{h} is below 80×24"),
                    format!("{w}×{h} < 80×24"),
                    "< 80×24".to_string(),
                ];
                let text = says
                    .iter()
                    .find(|t| t.chars().count() <= room)
                    .cloned()
                    .unwrap_or_else(|| fit(&says[3], room));
                Line::from(Span::styled(text, Style::new().fg(Color::Yellow)))
            } else {
                let room = usize::from(left_a.width);
                match app.status_message() {
                    Some((true, m)) => Line::from(Span::raw(fit(m, room))),
                    Some((false, m)) => {
                        Line::from(Span::styled(fit(m, room), Style::new().fg(Color::Red)))
                    }
                    None => Line::from(Span::styled(
                        "? help  : command  / filter  Enter detail  l log  q quit",
                        Style::new().fg(Color::DarkGray),
                    )),
                }
            }
        }
    };
    f.render_widget(Paragraph::new(left), left_a);
    f.render_widget(Paragraph::new(right), right_a);
}

fn render_help(f: &mut Frame, app: &App, area: Rect) {
    let mut lines = Vec::new();
    for table in bindings(app.view()) {
        for b in table {
            if b.label.is_empty() {
                continue;
            }
            lines.push(Line::from(vec![
                Span::styled(
                    format!(" {:<13}", b.label),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(b.help),
            ]));
        }
    }
    let h = u16::try_from(lines.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height);
    let w = 72.min(area.width);
    let x = area.x + (area.width - w) / 2;
    let y = area.y + (area.height - h) / 2;
    let r = Rect::new(x, y, w, h);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(Style::new().fg(Color::Cyan))
                .title(format!(" keys: {} (any key closes) ", app.view().name())),
        ),
        r,
    );
}
