//! Matrix groups in the MCP tools (issue 23 §1): `wait_for_job` on a group waits — in the same bounded
//! steps as for one job (`timeout_secs` ≤ 50, call again while `finished` is false) — until every cell
//! ended, and lists the cells' states; `get_diagnostics` on a group answers per failing cell, every
//! cell's answer inside the one answer budget (`budget.rs`: the largest cell answer is degraded first,
//! then cells are left out with a `cut` note naming how to ask for them).

use super::budget::{keep_share, note, one_line, wire_bytes_of};
use super::tools::{DiagnosticsAnswer, Waited};
use raibid_core::job::{Job, Status};
use raibid_core::matrix::{self, GroupView};
use schemars::JsonSchema;
use serde::Serialize;

/// A cell in a `wait_for_job` answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CellState {
    /// The cell's job id (get_job, get_logs, get_failure_summary take it).
    pub job_id: String,
    /// Its axis values, `features=serde, toolchain=stable`.
    pub label: String,
    /// Its status.
    pub status: Status,
    /// The step running now, or the step that failed.
    pub step: Option<String>,
}

/// The cells of a group view, bounded (labels ≤ 160 characters; at most 64 cells).
pub fn cell_states(v: &GroupView) -> Vec<CellState> {
    v.cells
        .iter()
        .map(|c| CellState {
            job_id: c.id.to_string(),
            label: one_line(&cell_label(c), 160),
            status: c.status,
            step: c.step.as_deref().map(|s| one_line(s, 80)),
        })
        .collect()
}

fn cell_label(c: &Job) -> String {
    c.matrix_cell()
        .map(|m| matrix::label(&m.values))
        .unwrap_or_default()
}

/// A group's `wait_for_job` answer: the combined status, finished only when every cell ended.
pub fn group_waited(mut w: Waited, v: &GroupView) -> Waited {
    let cells = cell_states(v);
    let done = cells.iter().filter(|c| c.status.is_final()).count();
    let failed: Vec<String> = cells
        .iter()
        .filter(|c| matrix::is_failure(c.status))
        .map(|c| format!("({})", one_line(&c.label, 80)))
        .collect();
    w.finished = v.group.status.is_final();
    w.status = v.status;
    w.outcome = format!(
        "matrix group: {done} of {} cells finished{}; {}",
        cells.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                ", {} failed: {}",
                failed.len(),
                one_line(&failed.join(" "), 400)
            )
        },
        if w.finished {
            format!("group {}", v.status)
        } else {
            "waiting for the others".into()
        }
    );
    w.next = if !w.finished {
        format!("call wait_for_job with job_id={} again", v.group.id)
    } else if failed.is_empty() {
        "the group ended; get_logs with a cell's job_id shows its output".into()
    } else {
        format!(
            "call get_diagnostics with job_id={} (every failing cell in one answer), or get_failure_summary with a cell's job_id",
            v.group.id
        )
    };
    w.cells = Some(cells);
    w
}

/// A group's `get_diagnostics` answer from its failing cells' answers (`cells`, in group order).
pub fn group_diagnostics(
    mut group: DiagnosticsAnswer,
    v: &GroupView,
    cells: Vec<DiagnosticsAnswer>,
) -> DiagnosticsAnswer {
    group.status = v.status;
    group.errors = cells.iter().map(|c| c.errors).sum();
    group.warnings = cells.iter().map(|c| c.warnings).sum();
    group.cells = cells;
    if group.cells.is_empty() {
        note(&mut group.cut, "no cell failed (or none has ended yet)");
    }
    group
}

/// One degradation step of a group answer: the largest cell answer first, then fewer cells. False
/// when there is nothing left to cut in the cells.
pub fn degrade_cells(a: &mut DiagnosticsAnswer, ratio: f64) -> bool {
    if a.cells.is_empty() {
        return false;
    }
    let largest = a
        .cells
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| wire_bytes_of(*c))
        .map(|(i, _)| i);
    if let Some(i) = largest {
        // A cell's answer is degraded while it is more than its share of the budget.
        let share = super::budget::WIRE_BUDGET_BYTES / (a.cells.len() + 1);
        if wire_bytes_of(&a.cells[i]) > share && super::budget::Fit::degrade(&mut a.cells[i], ratio)
        {
            return true;
        }
    }
    let n = a.cells.len();
    if n > 1 {
        let k = keep_share(n, ratio, 1);
        let left: Vec<String> = a.cells[k..].iter().map(|c| c.job_id.clone()).collect();
        a.cells.truncate(k);
        note(
            &mut a.cut,
            format!(
                "{} failing cells (the answer budget); call get_diagnostics with job_id= one of {}",
                left.len(),
                left.join(", ")
            ),
        );
        return true;
    }
    false
}
