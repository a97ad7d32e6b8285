//! Everything that can happen to the UI state: keys turned into actions, and what the network task
//! reports. The state changes only through [`crate::app::App::update`].

use raibid_core::event::{DeadLetter, LiveEvent};
use raibid_core::job::{Job, Status};
use raibid_core::queue_view::LogLine;

/// A view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The job list (home).
    Jobs,
    /// One job: source, timeline, steps.
    Detail,
    /// One job's log.
    Logs,
    /// Agents.
    Agents,
    /// Dead letters.
    Dead,
    /// Scheduled builds.
    Schedules,
}

impl View {
    /// Name as used in command mode and the title.
    pub fn name(self) -> &'static str {
        match self {
            View::Jobs => "jobs",
            View::Detail => "detail",
            View::Logs => "logs",
            View::Agents => "agents",
            View::Dead => "dead",
            View::Schedules => "schedules",
        }
    }
}

/// What the network task reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Net {
    /// Trying to reach the dispatcher (attempt number, 1 = first).
    Connecting(u32),
    /// The event stream is open.
    Live,
    /// The event stream broke; the task retries after `retry_ms`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// Next attempt in.
        retry_ms: u64,
    },
    /// A page of jobs (newest first); `first` replaces what is shown.
    Jobs {
        /// Jobs.
        jobs: Vec<Job>,
        /// The first page of a (re)load.
        first: bool,
    },
    /// A fresh job record.
    Job(Box<Job>),
    /// A live event (job event, queue figures, agent seen/gone, hello).
    Event(LiveEvent),
    /// Dead letters.
    Dead(Vec<DeadLetter>),
    /// Schedules.
    Schedules(Vec<raibid_core::schedule::ScheduleView>),
    /// Log lines of a job (in order), in batches.
    Log {
        /// Job id.
        job: String,
        /// Lines.
        lines: Vec<LogLine>,
        /// The log was truncated by the cap.
        truncated: bool,
    },
    /// The job is final; its log is complete.
    LogEnd {
        /// Job id.
        job: String,
        /// Final status.
        status: Status,
    },
    /// The outcome of an action (cancel, retry, submit, a load), in words.
    Outcome(Result<String, String>),
}

/// An action on the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Leave the program.
    Quit,
    /// Back to the previous view (or quit on the home view).
    Back,
    /// Move the cursor.
    Up,
    /// Move the cursor.
    Down,
    /// One page up.
    PageUp,
    /// One page down.
    PageDown,
    /// First line.
    Top,
    /// Last line.
    Bottom,
    /// Open the selected job's detail.
    Open,
    /// Open the selected job's log.
    Logs,
    /// Toggle log follow.
    ToggleFollow,
    /// Toggle log wrap.
    ToggleWrap,
    /// Begin a filter (`/` on lists).
    BeginFilter,
    /// Begin a search (`/` in logs).
    BeginSearch,
    /// Begin command mode (`:`).
    BeginCommand,
    /// Next search match.
    NextMatch,
    /// Previous search match.
    PrevMatch,
    /// Sort by the next column.
    SortNext,
    /// Flip the sort direction.
    SortReverse,
    /// Ask to cancel the selected job.
    AskCancel,
    /// Retry the selected job.
    Retry,
    /// Show or hide the help overlay.
    ToggleHelp,
    /// Switch to a view.
    Show(View),
    /// Submit a job.
    Submit {
        /// Clone URL.
        repo_url: String,
        /// Ref.
        git_ref: String,
    },
    /// A typed character in an input line.
    Input(char),
    /// Backspace in an input line.
    InputBackspace,
    /// Enter in an input line.
    InputSubmit,
    /// Esc in an input line.
    InputCancel,
    /// Answer to a confirmation.
    Confirm(bool),
    /// The terminal size changed.
    Resize(u16, u16),
    /// The clock moved (once a second, and in tests by hand).
    Tick(chrono::DateTime<chrono::Utc>),
    /// Something from the network.
    Net(Net),
}

/// What the state asks the network task to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `POST /jobs/{id}/cancel`.
    Cancel(String),
    /// `POST /jobs/{id}/retry`.
    Retry(String),
    /// `POST /jobs`.
    Submit {
        /// Clone URL.
        repo_url: String,
        /// Ref.
        git_ref: String,
    },
    /// Fetch one job record.
    FetchJob(String),
    /// Load and follow a job's log (replacing any other log being followed).
    OpenLog(String),
    /// Stop following a log.
    CloseLog,
    /// Load the dead letters.
    LoadDead,
    /// Load the schedules.
    LoadSchedules,
    /// Leave.
    Quit,
}
