//! The UI state and its only mutator, [`App::update`]. Keys become [`Action`]s through one table of
//! bindings per view ([`bindings`]); the help overlay is built from the same table. No I/O here: what
//! needs the network comes back as [`Command`]s for the network task.

use crate::action::{Action, Command, Net, View};
use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::event::{DeadLetter, EventKind, LiveEvent};
use raibid_core::job::{Job, Status};
use raibid_core::queue_view::{AgentInfo, LogLine, QueueStats};
use std::collections::{BTreeMap, HashMap};

/// The smallest terminal everything fits in.
pub const MIN_SIZE: (u16, u16) = (80, 24);

/// Connection to the dispatcher, as the status line shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    /// Connecting (attempt).
    Connecting(u32),
    /// Live.
    Live,
    /// Lost; retrying.
    Down {
        /// Why.
        reason: String,
        /// Next attempt in ms.
        retry_ms: u64,
    },
}

/// One key binding: the keys, how help names them, what they do.
pub struct Binding {
    /// Keys (any of them).
    pub keys: &'static [KeyCode],
    /// How the help overlay names the keys.
    pub label: &'static str,
    /// What it does, in words.
    pub help: &'static str,
    /// The action.
    pub action: Action,
}

macro_rules! b {
    ($label:expr, $help:expr, $action:expr, $($k:expr),+) => {
        Binding { keys: &[$($k),+], label: $label, help: $help, action: $action }
    };
}

use KeyCode::{Char, Down, End, Enter, Esc, Home, PageDown, PageUp, Up};

static MOVE: [Binding; 4] = [
    b!("j/k ↑/↓", "move", Action::Down, Char('j'), Down),
    b!("", "", Action::Up, Char('k'), Up),
    b!("PgUp/PgDn", "page up / down", Action::PageDown, PageDown),
    b!("", "", Action::PageUp, PageUp),
];
static EDGES: [Binding; 2] = [
    b!("g/G Home/End", "first / last", Action::Top, Char('g'), Home),
    b!("", "", Action::Bottom, Char('G'), End),
];
static GLOBAL: [Binding; 4] = [
    b!(
        ":",
        "command: jobs, agents, dead, schedules, submit <url>, q",
        Action::BeginCommand,
        Char(':')
    ),
    b!("?", "this help", Action::ToggleHelp, Char('?')),
    b!(
        "q/Esc",
        "back (quit on the jobs view)",
        Action::Back,
        Char('q'),
        Esc
    ),
    b!("Ctrl-C", "quit", Action::Quit, Char('\u{3}')),
];
static JOBS: [Binding; 7] = [
    b!("Enter", "job detail", Action::Open, Enter),
    b!("l", "job log", Action::Logs, Char('l')),
    b!(
        "/",
        "filter (repo, ref, status, id); Esc clears",
        Action::BeginFilter,
        Char('/')
    ),
    b!(
        "s/S",
        "sort by next column / reverse",
        Action::SortNext,
        Char('s')
    ),
    b!("", "", Action::SortReverse, Char('S')),
    b!(
        "c",
        "cancel the job (asks y/n)",
        Action::AskCancel,
        Char('c')
    ),
    b!("r", "retry the job", Action::Retry, Char('r')),
];
static DETAIL: [Binding; 3] = [
    b!("l", "job log", Action::Logs, Char('l')),
    b!(
        "c",
        "cancel the job (asks y/n)",
        Action::AskCancel,
        Char('c')
    ),
    b!("r", "retry the job", Action::Retry, Char('r')),
];
static LOGS: [Binding; 5] = [
    b!(
        "f",
        "follow the live tail on/off",
        Action::ToggleFollow,
        Char('f')
    ),
    b!("w", "wrap long lines on/off", Action::ToggleWrap, Char('w')),
    b!(
        "/",
        "search (every match highlighted)",
        Action::BeginSearch,
        Char('/')
    ),
    b!("n/N", "next / previous match", Action::NextMatch, Char('n')),
    b!("", "", Action::PrevMatch, Char('N')),
];
static LISTS: [Binding; 1] = [b!(
    "/",
    "filter; Esc clears",
    Action::BeginFilter,
    Char('/')
)];

/// The binding tables of a view, most specific first.
pub fn bindings(view: View) -> Vec<&'static [Binding]> {
    let own: &'static [Binding] = match view {
        View::Jobs => &JOBS,
        View::Detail => &DETAIL,
        View::Logs => &LOGS,
        View::Agents | View::Dead | View::Schedules => &LISTS,
    };
    vec![own, &MOVE, &EDGES, &GLOBAL]
}

/// Input line mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Keys are bindings.
    None,
    /// Typing a filter.
    Filter(String),
    /// Typing a log search.
    Search(String),
    /// Typing a command.
    Command(String),
    /// Waiting for y/n to cancel this job.
    ConfirmCancel(String),
}

/// Sortable job columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Creation (id), newest first by default.
    Created,
    /// Status.
    Status,
    /// Repository.
    Repo,
    /// Ref.
    Ref,
    /// Duration or age.
    Duration,
    /// Agent.
    Agent,
    /// Attempt.
    Attempt,
}

impl SortBy {
    const ORDER: [SortBy; 7] = [
        SortBy::Created,
        SortBy::Status,
        SortBy::Repo,
        SortBy::Ref,
        SortBy::Duration,
        SortBy::Agent,
        SortBy::Attempt,
    ];
    fn next(self) -> SortBy {
        let i = SortBy::ORDER.iter().position(|s| *s == self).unwrap_or(0);
        SortBy::ORDER[(i + 1) % SortBy::ORDER.len()]
    }
    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            SortBy::Created => "ID",
            SortBy::Status => "STATUS",
            SortBy::Repo => "REPO",
            SortBy::Ref => "REF",
            SortBy::Duration => "TIME",
            SortBy::Agent => "AGENT",
            SortBy::Attempt => "#",
        }
    }
}

/// The log being viewed.
#[derive(Debug, Clone, Default)]
pub struct LogView {
    /// Job id.
    pub job: String,
    /// Lines received.
    pub lines: Vec<LogLine>,
    /// Display rows: a step boundary marker (`Err(step index)`) or a line index.
    pub rows: Vec<Row>,
    /// First row shown.
    pub top: usize,
    /// Keep the last line in view.
    pub follow: bool,
    /// Wrap long lines.
    pub wrap: bool,
    /// Search query (empty: none).
    pub query: String,
    /// Rows that match the query.
    pub matches: Vec<usize>,
    /// Current match (index into `matches`).
    pub current: Option<usize>,
    /// Final status once the log is complete.
    pub ended: Option<Status>,
    /// The log was truncated by the cap.
    pub truncated: bool,
}

/// A display row of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Start of a step (index of its first line).
    Step(usize),
    /// A line.
    Line(usize),
}

impl LogView {
    fn push(&mut self, lines: Vec<LogLine>) {
        let q = query_matcher(&self.query);
        for l in lines {
            let i = self.lines.len();
            let new_step = self.lines.last().is_none_or(|p| p.step != l.step);
            if new_step {
                self.rows.push(Row::Step(i));
            }
            if let Some(q) = &q {
                if q.matches(&l.line) {
                    self.matches.push(self.rows.len());
                }
            }
            self.rows.push(Row::Line(i));
            self.lines.push(l);
        }
    }

    fn research(&mut self) {
        self.matches.clear();
        self.current = None;
        let Some(q) = query_matcher(&self.query) else {
            return;
        };
        for (r, row) in self.rows.iter().enumerate() {
            if let Row::Line(i) = row {
                if q.matches(&self.lines[*i].line) {
                    self.matches.push(r);
                }
            }
        }
    }
}

/// Smart-case substring search: case-insensitive unless the query has an upper-case letter.
pub struct Matcher {
    needle: String,
    fold: bool,
}

impl Matcher {
    /// Does `hay` contain the needle?
    pub fn matches(&self, hay: &str) -> bool {
        if self.fold {
            contains_fold(hay, &self.needle)
        } else {
            hay.contains(&self.needle)
        }
    }
    /// Byte ranges of every match in `hay`.
    pub fn ranges(&self, hay: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        if self.needle.is_empty() {
            return out;
        }
        let folded;
        let h: &str = if self.fold && hay.is_ascii() {
            folded = hay.to_ascii_lowercase();
            &folded
        } else {
            hay
        };
        let mut at = 0;
        while let Some(i) = h[at..].find(&self.needle) {
            out.push((at + i, at + i + self.needle.len()));
            at += i + self.needle.len();
        }
        out
    }
}

fn contains_fold(hay: &str, needle_lower: &str) -> bool {
    let n = needle_lower.as_bytes();
    if n.is_empty() {
        return true;
    }
    hay.as_bytes()
        .windows(n.len())
        .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

/// The matcher for a query, `None` when it is empty.
pub fn query_matcher(q: &str) -> Option<Matcher> {
    if q.is_empty() {
        return None;
    }
    let fold = !q.chars().any(char::is_uppercase);
    Some(Matcher {
        needle: if fold {
            q.to_ascii_lowercase()
        } else {
            q.into()
        },
        fold,
    })
}

/// The whole UI state.
pub struct App {
    /// Now (injected: the clock ticks through [`Action::Tick`]).
    pub now: DateTime<Utc>,
    /// View stack; the last is shown.
    pub views: Vec<View>,
    /// Jobs by arrival; `index` maps id → position.
    pub jobs: Vec<Job>,
    index: HashMap<String, usize>,
    /// Filtered and sorted positions in `jobs`.
    pub shown: Vec<usize>,
    /// Lower-cased `id\nrepo\nref\nstatus` of each job (parallel to `jobs`): what `/` searches.
    hay: Vec<String>,
    /// Every position in `jobs`, in display order (sorted, unfiltered).
    sorted: Vec<usize>,
    /// The filter `shown` was computed with.
    shown_filter: String,
    /// The order may have changed (new jobs, sort): re-sort.
    dirty: bool,
    /// A listed job changed in a way that can move it in or out of the filter: re-filter.
    refilter: bool,
    /// New jobs to put in place in the id order (no re-sort).
    inserts: Vec<usize>,
    /// Cursor in `shown` (jobs view).
    pub cursor: usize,
    /// Cursor in agents / dead lists.
    pub list_cursor: usize,
    /// The selected job id (stays on the job when the list reorders).
    pub selected: Option<String>,
    /// Filter of the lists.
    pub filter: String,
    /// Sort column.
    pub sort: SortBy,
    /// Sort ascending (default: newest first, i.e. descending).
    pub ascending: bool,
    /// Agents.
    pub agents: BTreeMap<String, AgentInfo>,
    /// Queue figures.
    pub queue: Option<QueueStats>,
    /// Dead letters.
    pub dead: Vec<DeadLetter>,
    /// Schedules (`:schedules`).
    pub schedules: Vec<raibid_core::schedule::ScheduleView>,
    /// The log view.
    pub log: LogView,
    /// Input mode.
    pub input: Input,
    /// Help shown.
    pub help: bool,
    /// Connection.
    pub conn: Conn,
    /// The last message for the status line (ok, text).
    pub message: Option<(bool, String)>,
    /// The view that said `message`: the status line shows it on that view only.
    pub message_view: View,
    /// Terminal size.
    pub size: (u16, u16),
    /// Lines per page (set by the renderer).
    pub page: usize,
    /// Set when the user quits.
    pub quit: bool,
    /// Jobs finished per minute over the last hour (oldest first), and the hour's success count.
    pub throughput: Vec<u64>,
    /// Finished and succeeded in the last hour.
    pub hour: (u64, u64),
    last_figures: Option<DateTime<Utc>>,
    figures_dirty: bool,
    /// A first page of jobs arrived.
    pub loaded: bool,
    /// The dispatcher's URL, for the header.
    pub endpoint: String,
}

impl App {
    /// An empty state at `now`.
    pub fn new(now: DateTime<Utc>) -> App {
        App {
            now,
            views: vec![View::Jobs],
            jobs: Vec::new(),
            index: HashMap::new(),
            shown: Vec::new(),
            hay: Vec::new(),
            sorted: Vec::new(),
            shown_filter: String::new(),
            dirty: true,
            refilter: false,
            inserts: Vec::new(),
            cursor: 0,
            list_cursor: 0,
            selected: None,
            filter: String::new(),
            sort: SortBy::Created,
            ascending: false,
            agents: BTreeMap::new(),
            queue: None,
            dead: Vec::new(),
            schedules: Vec::new(),
            log: LogView {
                follow: true,
                ..LogView::default()
            },
            input: Input::None,
            help: false,
            conn: Conn::Connecting(1),
            message: None,
            message_view: View::Jobs,
            size: MIN_SIZE,
            page: 20,
            quit: false,
            throughput: vec![0; 60],
            hour: (0, 0),
            last_figures: None,
            figures_dirty: true,
            loaded: false,
            endpoint: String::new(),
        }
    }

    /// The view shown.
    pub fn view(&self) -> View {
        self.views.last().copied().unwrap_or(View::Jobs)
    }

    /// The job under the cursor (jobs view) or shown (detail, logs).
    pub fn current_job(&self) -> Option<&Job> {
        self.selected.as_ref().and_then(|id| self.job(id))
    }

    /// A job by id.
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.index.get(id).map(|i| &self.jobs[*i])
    }

    /// Agents shown (filtered).
    pub fn agents_shown(&self) -> Vec<&AgentInfo> {
        let q = query_matcher(&self.filter);
        self.agents
            .values()
            .filter(|a| {
                q.as_ref().is_none_or(|q| {
                    q.matches(&a.id) || a.current_job.as_deref().is_some_and(|j| q.matches(j))
                })
            })
            .collect()
    }

    /// Dead letters shown (filtered), newest first.
    pub fn dead_shown(&self) -> Vec<&DeadLetter> {
        let q = query_matcher(&self.filter);
        self.dead
            .iter()
            .rev()
            .filter(|d| {
                q.as_ref()
                    .is_none_or(|q| q.matches(&d.job) || q.matches(&d.reason))
            })
            .collect()
    }

    /// Turn a key into an action for the current view and mode (None: not bound).
    pub fn key_action(&self, key: KeyEvent) -> Option<Action> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == Char('c') {
            return Some(Action::Quit);
        }
        match &self.input {
            Input::ConfirmCancel(_) => {
                return Some(Action::Confirm(matches!(key.code, Char('y') | Char('Y'))));
            }
            Input::Filter(_) | Input::Search(_) | Input::Command(_) => {
                return match key.code {
                    Esc => Some(Action::InputCancel),
                    Enter => Some(Action::InputSubmit),
                    KeyCode::Backspace => Some(Action::InputBackspace),
                    Char(c) => Some(Action::Input(c)),
                    _ => None,
                };
            }
            Input::None => {}
        }
        if self.help {
            return Some(Action::ToggleHelp);
        }
        if ctrl {
            return None;
        }
        for table in bindings(self.view()) {
            for b in table {
                if b.keys.contains(&key.code) {
                    return Some(b.action.clone());
                }
            }
        }
        None
    }

    /// Handle a key: the action it is bound to, applied.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Command> {
        match self.key_action(key) {
            Some(a) => self.update(a),
            None => Vec::new(),
        }
    }

    fn say(&mut self, ok: bool, m: impl Into<String>) {
        self.message = Some((ok, m.into()));
        self.message_view = self.view();
    }

    /// The status-line message of the view shown (another view's message is not shown here).
    pub fn status_message(&self) -> Option<&(bool, String)> {
        self.message
            .as_ref()
            .filter(|_| self.message_view == self.view())
    }

    fn push_view(&mut self, v: View) {
        if self.view() != v {
            self.views.push(v);
        }
    }

    /// Apply one action; returns what the network task should do.
    pub fn update(&mut self, action: Action) -> Vec<Command> {
        let mut out = Vec::new();
        if !matches!(action, Action::Net(_) | Action::Tick(_)) {
            // Keys act on what the screen shows: the list as filtered and sorted now.
            self.prepare();
        }
        match action {
            Action::Quit => {
                self.quit = true;
                out.push(Command::Quit);
            }
            Action::Back => {
                if self.view() == View::Logs && !self.log.query.is_empty() {
                    // A searched log: Esc/q clears the search first, the next one leaves.
                    self.log.query.clear();
                    self.log.current = None;
                    self.log.research();
                    self.say(true, "search cleared");
                } else if self.views.len() > 1 {
                    let left = self.views.pop();
                    if left == Some(View::Logs) && !self.views.contains(&View::Logs) {
                        out.push(Command::CloseLog);
                    }
                } else if !self.filter.is_empty() {
                    self.filter.clear();
                } else {
                    self.quit = true;
                    out.push(Command::Quit);
                }
            }
            Action::Up => self.move_by(-1),
            Action::Down => self.move_by(1),
            Action::PageUp => self.move_by(-(self.page.max(1) as i64)),
            Action::PageDown => self.move_by(self.page.max(1) as i64),
            Action::Top => self.move_to(0),
            Action::Bottom => self.move_to(usize::MAX),
            Action::Open => {
                if self.current_job().is_some() {
                    self.push_view(View::Detail);
                    if let Some(id) = self.selected.clone() {
                        out.push(Command::FetchJob(id));
                    }
                }
            }
            Action::Logs => {
                if let Some(id) = self.current_job().map(|j| j.id.to_string()) {
                    if self.log.job != id {
                        self.log = LogView {
                            job: id.clone(),
                            follow: true,
                            wrap: self.log.wrap,
                            ..LogView::default()
                        };
                    }
                    self.push_view(View::Logs);
                    out.push(Command::OpenLog(id));
                }
            }
            Action::ToggleFollow => {
                self.log.follow = !self.log.follow;
                if self.log.follow {
                    self.log_to_end();
                }
                let f = if self.log.follow { "on" } else { "off" };
                self.say(true, format!("follow {f}"));
            }
            Action::ToggleWrap => {
                self.log.wrap = !self.log.wrap;
                let w = if self.log.wrap { "on" } else { "off" };
                self.say(true, format!("wrap {w}"));
            }
            Action::BeginFilter => self.input = Input::Filter(self.filter.clone()),
            Action::BeginSearch => self.input = Input::Search(String::new()),
            Action::BeginCommand => self.input = Input::Command(String::new()),
            Action::NextMatch => self.jump_match(true),
            Action::PrevMatch => self.jump_match(false),
            Action::SortNext => {
                self.sort = self.sort.next();
                self.ascending = self.sort != SortBy::Created && self.sort != SortBy::Duration;
                self.dirty = true;
                self.say(
                    true,
                    format!("sorted by {}", self.sort.title().to_lowercase()),
                );
            }
            Action::SortReverse => {
                self.ascending = !self.ascending;
                self.dirty = true;
            }
            Action::AskCancel => match self.current_job() {
                Some(j) if j.status.is_final() => {
                    let m = format!("job {} is already {}", short_id(&j.id), j.status);
                    self.say(false, m);
                }
                Some(j) => self.input = Input::ConfirmCancel(j.id.to_string()),
                None => {}
            },
            Action::Confirm(yes) => {
                if let Input::ConfirmCancel(id) = std::mem::replace(&mut self.input, Input::None) {
                    if yes {
                        self.say(true, format!("cancelling {}…", short_id(&id)));
                        out.push(Command::Cancel(id));
                    } else {
                        self.say(true, "not cancelled");
                    }
                }
            }
            Action::Retry => match self.current_job() {
                Some(j) if !j.status.is_final() => {
                    let m = format!(
                        "job {} is {}; only a finished job can be retried",
                        short_id(&j.id),
                        j.status
                    );
                    self.say(false, m);
                }
                Some(j) => {
                    let id = j.id.to_string();
                    self.say(true, format!("retrying {}…", short_id(&id)));
                    out.push(Command::Retry(id));
                }
                None => {}
            },
            Action::ToggleHelp => self.help = !self.help,
            Action::Show(v) => {
                self.views.truncate(1);
                if v != View::Jobs {
                    self.views.push(v);
                }
                self.list_cursor = 0;
                if v == View::Dead {
                    out.push(Command::LoadDead);
                }
                if v == View::Schedules {
                    out.push(Command::LoadSchedules);
                }
            }
            Action::Submit { repo_url, git_ref } => {
                self.say(true, format!("submitting {repo_url} {git_ref}…"));
                out.push(Command::Submit { repo_url, git_ref });
            }
            Action::Input(c) => match &mut self.input {
                Input::Filter(s) => {
                    s.push(c);
                    self.filter = s.clone();
                }
                Input::Search(s) | Input::Command(s) => s.push(c),
                _ => {}
            },
            Action::InputBackspace => match &mut self.input {
                Input::Filter(s) => {
                    s.pop();
                    self.filter = s.clone();
                }
                Input::Search(s) | Input::Command(s) => {
                    s.pop();
                }
                _ => {}
            },
            Action::InputCancel => {
                if matches!(self.input, Input::Filter(_)) {
                    self.filter.clear();
                }
                self.input = Input::None;
            }
            Action::InputSubmit => match std::mem::replace(&mut self.input, Input::None) {
                Input::Search(q) => {
                    self.log.query = q;
                    self.log.research();
                    let n = self.log.matches.len();
                    if self.log.query.is_empty() {
                        self.say(true, "search cleared");
                    } else if n == 0 {
                        let m = format!("no match for `{}`", self.log.query);
                        self.say(false, m);
                    } else {
                        self.log.follow = false;
                        self.jump_match(true);
                    }
                }
                Input::Command(c) => out.extend(self.command(&c)),
                _ => {}
            },
            Action::Resize(w, h) => self.size = (w, h),
            Action::Tick(now) => self.now = now,
            Action::Net(n) => out.extend(self.net(n)),
        }
        out
    }

    fn command(&mut self, line: &str) -> Vec<Command> {
        let mut words = line.split_whitespace();
        match words.next().unwrap_or("") {
            "" => Vec::new(),
            "jobs" | "j" => self.update(Action::Show(View::Jobs)),
            "agents" | "a" => self.update(Action::Show(View::Agents)),
            "dead" | "d" => self.update(Action::Show(View::Dead)),
            "schedules" | "sched" => self.update(Action::Show(View::Schedules)),
            "q" | "quit" => self.update(Action::Quit),
            "submit" => match (words.next(), words.next()) {
                (Some(url), r) => self.update(Action::Submit {
                    repo_url: url.to_string(),
                    git_ref: r.unwrap_or("main").to_string(),
                }),
                (None, _) => {
                    self.say(false, "usage: :submit <repo-url> [ref]");
                    Vec::new()
                }
            },
            other => {
                self.say(
                    false,
                    format!(
                        "unknown command `{other}`: try jobs, agents, dead, schedules, submit, q"
                    ),
                );
                Vec::new()
            }
        }
    }

    fn net(&mut self, n: Net) -> Vec<Command> {
        let mut out = Vec::new();
        match n {
            Net::Connecting(a) => self.conn = Conn::Connecting(a),
            Net::Live => {
                self.conn = Conn::Live;
            }
            Net::Disconnected { reason, retry_ms } => {
                self.conn = Conn::Down { reason, retry_ms };
            }
            Net::Jobs { jobs, first } => {
                if first {
                    self.jobs.clear();
                    self.index.clear();
                    self.hay.clear();
                    self.loaded = true;
                }
                for j in jobs {
                    let _ = self.upsert(j);
                }
                self.dirty = true;
            }
            Net::Job(j) => {
                self.figures_dirty = true;
                let new = self.upsert(*j);
                self.changed(new);
            }
            Net::Event(e) => out.extend(self.event(e)),
            Net::Dead(d) => self.dead = d,
            Net::Schedules(s) => self.schedules = s,
            Net::Log {
                job,
                lines,
                truncated,
            } => {
                if job == self.log.job {
                    self.log.truncated |= truncated;
                    self.log.push(lines);
                    if self.log.follow {
                        self.log_to_end();
                    }
                }
            }
            Net::LogEnd { job, status } => {
                if job == self.log.job {
                    self.log.ended = Some(status);
                }
            }
            Net::Outcome(Ok(m)) => self.say(true, m),
            Net::Outcome(Err(m)) => self.say(false, m),
        }
        out
    }

    fn event(&mut self, e: LiveEvent) -> Vec<Command> {
        match e {
            LiveEvent::Hello { .. } => {
                // The server sends the agents it knows after every hello.
                self.agents.clear();
                Vec::new()
            }
            LiveEvent::Queue(q) => {
                self.queue = Some(q);
                Vec::new()
            }
            LiveEvent::AgentSeen(a) => {
                self.agents.insert(a.id.to_string(), a);
                Vec::new()
            }
            LiveEvent::AgentGone { id } => {
                self.agents.remove(&id);
                Vec::new()
            }
            LiveEvent::Resync { reason, .. } => {
                // The network task reloads the first page of jobs; it replaces the list when it comes.
                self.say(
                    false,
                    format!("missed events ({reason}); reloading the job list"),
                );
                Vec::new()
            }
            LiveEvent::Job(ev) => {
                // Apply what the event says at once; fetch the full record for the rest.
                if let Some(&i) = self.index.get(&ev.job) {
                    {
                        let j = &mut self.jobs[i];
                        j.status = ev.status;
                        if ev.step.is_some() || ev.status == Status::Succeeded {
                            j.step = ev.step.clone();
                        }
                        if ev.agent.is_some() {
                            j.agent = ev.agent.clone();
                        }
                        match ev.event_kind() {
                            EventKind::JobClaimed => {
                                j.timestamps.claimed = Some(ev.ts);
                            }
                            EventKind::JobFinished => j.timestamps.finished = Some(ev.ts),
                            _ => {}
                        }
                        self.figures_dirty = true;
                    }
                    self.hay[i] = haystack(&self.jobs[i]);
                    self.changed(false);
                }
                vec![Command::FetchJob(ev.job)]
            }
        }
    }

    /// Insert or replace; true when the job is new.
    fn upsert(&mut self, j: Job) -> bool {
        let hay = haystack(&j);
        match self.index.get(j.id.as_str()) {
            Some(&i) => {
                self.jobs[i] = j;
                self.hay[i] = hay;
                false
            }
            None => {
                self.index.insert(j.id.to_string(), self.jobs.len());
                self.jobs.push(j);
                self.hay.push(hay);
                true
            }
        }
    }

    /// A job was added (`new`) or changed: what must be recomputed before the next frame. The
    /// default order (by id) does not depend on a job's state, so a stream of events costs no re-sort;
    /// with a filter, the sorted list is only re-filtered.
    fn changed(&mut self, new: bool) {
        if self.sort != SortBy::Created {
            self.dirty = true;
        } else if new {
            // In the id order a new job has one place: found by binary search, not by sorting.
            self.inserts.push(self.jobs.len() - 1);
        } else if !self.filter.is_empty() {
            self.refilter = true;
        }
    }

    /// Put the new jobs in place in `sorted` (and `shown`, when they pass the filter `shown` has).
    fn insert_new(&mut self) {
        let q = query_matcher(&self.shown_filter);
        let asc = self.ascending;
        for i in std::mem::take(&mut self.inserts) {
            let jobs = &self.jobs;
            let before = |k: &usize| {
                if asc {
                    jobs[*k].id < jobs[i].id
                } else {
                    jobs[*k].id > jobs[i].id
                }
            };
            let at = self.sorted.partition_point(before);
            self.sorted.insert(at, i);
            if q.as_ref()
                .is_none_or(|q| job_matches(&jobs[i], &self.hay[i], q))
            {
                let at = self.shown.partition_point(before);
                self.shown.insert(at, i);
            }
        }
    }

    fn list_len(&self) -> usize {
        match self.view() {
            View::Jobs => self.shown.len(),
            View::Agents => self.agents_shown().len(),
            View::Dead => self.dead_shown().len(),
            View::Schedules => crate::schedules::shown(self).len(),
            View::Logs => self.log.rows.len(),
            View::Detail => 0,
        }
    }

    fn move_by(&mut self, d: i64) {
        let cur = match self.view() {
            View::Jobs => self.cursor,
            View::Logs => self.log.top,
            _ => self.list_cursor,
        };
        let to = if d < 0 {
            cur.saturating_sub(d.unsigned_abs() as usize)
        } else {
            cur.saturating_add(d as usize)
        };
        self.move_to(to);
    }

    fn move_to(&mut self, to: usize) {
        let len = self.list_len();
        let last = len.saturating_sub(1);
        match self.view() {
            View::Jobs => {
                self.prepare();
                self.cursor = to.min(self.shown.len().saturating_sub(1));
                self.selected = self
                    .shown
                    .get(self.cursor)
                    .map(|i| self.jobs[*i].id.to_string());
            }
            View::Logs => {
                let max_top = len.saturating_sub(self.page.max(1));
                self.log.top = to.min(max_top);
                self.log.follow = to >= max_top && to == usize::MAX;
            }
            View::Detail => {}
            _ => self.list_cursor = to.min(last),
        }
    }

    fn log_to_end(&mut self) {
        self.log.top = self.log.rows.len().saturating_sub(self.page.max(1));
    }

    fn jump_match(&mut self, forward: bool) {
        let n = self.log.matches.len();
        if n == 0 {
            if !self.log.query.is_empty() {
                let m = format!("no match for `{}`", self.log.query);
                self.say(false, m);
            }
            return;
        }
        let top = self.log.top;
        let next = match (self.log.current, forward) {
            (Some(c), true) => (c + 1) % n,
            (Some(c), false) => (c + n - 1) % n,
            (None, true) => self.log.matches.iter().position(|r| *r >= top).unwrap_or(0),
            (None, false) => self
                .log
                .matches
                .iter()
                .rposition(|r| *r < top)
                .unwrap_or(n - 1),
        };
        self.log.current = Some(next);
        self.log.follow = false;
        let row = self.log.matches[next];
        let half = self.page / 2;
        let max_top = self.log.rows.len().saturating_sub(self.page.max(1));
        self.log.top = row.saturating_sub(half).min(max_top);
        let m = format!("match {} of {} for `{}`", next + 1, n, self.log.query);
        self.say(true, m);
    }

    /// Bring derived state up to date (filter, sort, cursor, figures). The renderer calls this.
    pub fn prepare(&mut self) {
        let refresh_figures = self
            .last_figures
            .is_none_or(|t| (self.now - t).num_seconds().abs() >= 1);
        if self.dirty || self.figures_dirty || refresh_figures {
            self.figures_dirty = false;
            self.figures();
            self.last_figures = Some(self.now);
        }
        let filter_moved = self.filter != self.shown_filter;
        if !self.dirty && !self.refilter && !filter_moved && self.inserts.is_empty() {
            return;
        }
        // At the top of the list the view stays on top: new jobs push in under the cursor.
        let at_top = self.cursor == 0;
        if self.dirty {
            self.inserts.clear();
        } else {
            self.insert_new();
        }
        if self.dirty {
            self.sort_all();
            self.filter_from_sorted();
        } else if self.refilter {
            self.filter_from_sorted();
        } else if filter_moved {
            if !self.shown_filter.is_empty() && self.filter.starts_with(self.shown_filter.as_str())
            {
                // The query grew: what matches it is among what matched before, in the same order.
                let q = query_matcher(&self.filter);
                let (jobs, hay) = (&self.jobs, &self.hay);
                self.shown.retain(|i| {
                    q.as_ref()
                        .is_none_or(|q| job_matches(&jobs[*i], &hay[*i], q))
                });
            } else {
                self.filter_from_sorted();
            }
        }
        self.dirty = false;
        self.refilter = false;
        self.shown_filter.clone_from(&self.filter);
        // Keep the cursor on the selected job.
        if at_top {
            self.selected = self.shown.first().map(|i| self.jobs[*i].id.to_string());
        }
        let pos = self.selected.as_ref().and_then(|id| {
            let i = self.index.get(id)?;
            self.shown.iter().position(|s| s == i)
        });
        match pos {
            Some(p) => self.cursor = p,
            None => {
                self.cursor = self.cursor.min(self.shown.len().saturating_sub(1));
                self.selected = self
                    .shown
                    .get(self.cursor)
                    .map(|i| self.jobs[*i].id.to_string());
            }
        }
    }

    /// `sorted` from scratch: every job in display order.
    fn sort_all(&mut self) {
        let jobs = &self.jobs;
        let mut shown: Vec<usize> = (0..jobs.len()).collect();
        let now = self.now;
        let key_dur = |j: &Job| duration_ms(j, now);
        match self.sort {
            SortBy::Created => shown.sort_by(|a, b| jobs[*a].id.cmp(&jobs[*b].id)),
            SortBy::Status => shown.sort_by(|a, b| {
                status_rank(jobs[*a].status)
                    .cmp(&status_rank(jobs[*b].status))
                    .then_with(|| jobs[*b].id.cmp(&jobs[*a].id))
            }),
            SortBy::Repo => shown.sort_by(|a, b| {
                jobs[*a]
                    .source
                    .repo_url
                    .cmp(&jobs[*b].source.repo_url)
                    .then_with(|| jobs[*b].id.cmp(&jobs[*a].id))
            }),
            SortBy::Ref => shown.sort_by(|a, b| {
                jobs[*a]
                    .source
                    .git_ref
                    .cmp(&jobs[*b].source.git_ref)
                    .then_with(|| jobs[*b].id.cmp(&jobs[*a].id))
            }),
            SortBy::Duration => shown.sort_by_key(|i| key_dur(&jobs[*i])),
            SortBy::Agent => shown.sort_by(|a, b| jobs[*a].agent.cmp(&jobs[*b].agent)),
            SortBy::Attempt => shown.sort_by_key(|i| jobs[*i].attempt),
        }
        if !self.ascending {
            shown.reverse();
        }
        self.sorted = shown;
    }

    /// `shown` = `sorted` through the filter (no sort).
    fn filter_from_sorted(&mut self) {
        let q = query_matcher(&self.filter);
        let (jobs, hay) = (&self.jobs, &self.hay);
        self.shown = match &q {
            None => self.sorted.clone(),
            Some(q) => self
                .sorted
                .iter()
                .copied()
                .filter(|i| job_matches(&jobs[*i], &hay[*i], q))
                .collect(),
        };
    }

    fn figures(&mut self) {
        let mut buckets = vec![0u64; 60];
        let (mut n, mut ok) = (0, 0);
        for j in &self.jobs {
            let Some(f) = j.timestamps.finished else {
                continue;
            };
            let ago = (self.now - f).num_seconds();
            if !(0..3600).contains(&ago) {
                continue;
            }
            n += 1;
            if j.status == Status::Succeeded {
                ok += 1;
            }
            buckets[59 - (ago / 60) as usize] += 1;
        }
        self.throughput = buckets;
        self.hour = (n, ok);
    }
}

fn status_rank(s: Status) -> u8 {
    match s.as_str() {
        "running" => 0,
        "queued" => 1,
        "failed" => 2,
        "timed_out" => 3,
        "cancelled" => 4,
        "succeeded" => 5,
        _ => 0,
    }
}

/// What `/` searches in a job, lower-cased once (fields apart by `\n`, which no query holds).
fn haystack(j: &Job) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        j.id.as_str(),
        j.source.repo_url,
        j.source.git_ref,
        j.status.as_str()
    )
    .to_lowercase()
}

/// Smart case: a lower-case query is a plain substring search of the precomputed haystack.
fn job_matches(j: &Job, hay: &str, q: &Matcher) -> bool {
    if q.fold {
        hay.contains(q.needle.as_str())
    } else {
        q.matches(&j.id)
            || q.matches(&j.source.repo_url)
            || q.matches(&j.source.git_ref)
            || q.matches(j.status.as_str())
    }
}

/// Run time of a finished job, age of an unfinished one, in ms.
pub fn duration_ms(j: &Job, now: DateTime<Utc>) -> i64 {
    let t = &j.timestamps;
    let start = t.started.or(t.claimed).or(t.received).or(t.queued);
    match (start, t.finished) {
        (Some(s), Some(f)) => (f - s).num_milliseconds(),
        (Some(s), None) => (now - t.received.unwrap_or(s)).num_milliseconds(),
        _ => 0,
    }
}

/// The last 8 characters of a ULID (its random part: enough to tell jobs apart on one screen).
pub fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
