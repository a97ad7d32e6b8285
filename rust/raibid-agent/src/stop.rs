//! How a running job is told to stop, and the two ends of a job that write no final status.

use raibid_core::job::Status;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stop {
    None,
    Cancel,
    LeaseLost,
    /// Shutdown grace expired: kill the step and give the job back to the queue.
    Release,
}

/// How `execute` ended when no final status is to be written by this agent.
pub(crate) const LOST: Status = Status::Running;
pub(crate) const RELEASED: Status = Status::Queued;
