//! Build-matrix groups in the jobs view (issue 23 §1): a group (the push's job of a `matrix:` pipeline)
//! is one row, `▸ repo (6 cells: 4 ok, 1 failed)`; Space opens it into its cells, listed right under
//! it (`└ features=serde`), and closes it again. A closed group's cells are not listed; the filter and
//! the sort apply to groups and to the cells of an open group. Cancel and retry on the group's row act
//! on the whole group (the dispatcher cancels every cell; a retry fans out anew), on a cell's row on
//! that cell.

use crate::app::App;
use raibid_core::job::{Job, Status};
use std::collections::{HashMap, HashSet};

/// Open or close the group under the cursor (on a cell: its group). False when it is no group.
pub fn toggle(app: &mut App) -> bool {
    let Some(j) = app.current_job() else {
        return false;
    };
    let id = match (j.matrix_group(), j.matrix_cell()) {
        (Some(_), _) => j.id.to_string(),
        (None, Some(c)) => c.group.clone(),
        _ => return false,
    };
    if !app.expanded.remove(&id) {
        app.expanded.insert(id.clone());
    }
    // The cursor stays on the group.
    app.selected = Some(id);
    true
}

/// `shown` with the cells of closed groups left out and the cells of open groups right under their
/// group, in cell order. Cells whose group is not listed stay where they are.
pub fn arrange(
    jobs: &[Job],
    index: &HashMap<String, usize>,
    shown: &mut Vec<usize>,
    expanded: &HashSet<String>,
) {
    let listed: HashSet<&str> = shown.iter().map(|i| jobs[*i].id.as_str()).collect();
    let mut cells_of: HashMap<&str, Vec<(u32, usize)>> = HashMap::new();
    for i in shown.iter() {
        if let Some(c) = jobs[*i].matrix_cell() {
            if listed.contains(c.group.as_str()) || index.contains_key(&c.group) {
                cells_of
                    .entry(c.group.as_str())
                    .or_default()
                    .push((c.index, *i));
            }
        }
    }
    let mut out = Vec::with_capacity(shown.len());
    for i in shown.iter() {
        let j = &jobs[*i];
        if let Some(c) = j.matrix_cell() {
            if cells_of.contains_key(c.group.as_str()) && index.contains_key(&c.group) {
                // Placed under its group (or hidden with it).
                if listed.contains(c.group.as_str()) {
                    continue;
                }
                if !expanded.contains(&c.group) {
                    continue;
                }
            }
        }
        out.push(*i);
        if j.matrix_group().is_some() && expanded.contains(j.id.as_str()) {
            if let Some(cs) = cells_of.get_mut(j.id.as_str()) {
                cs.sort_unstable();
                out.extend(cs.iter().map(|(_, c)| *c));
            }
        }
    }
    *shown = out;
}

/// The repository column of a group's or a cell's row.
pub fn repo_cell(app: &App, j: &Job, repo: &str) -> Option<String> {
    if let Some(g) = j.matrix_group() {
        let open = app.expanded.contains(j.id.as_str());
        let mut ok = 0;
        let mut bad = 0;
        for c in &g.cells {
            match app.job(&c.job).map(|c| c.status) {
                Some(Status::Succeeded) => ok += 1,
                Some(Status::Failed | Status::TimedOut) => bad += 1,
                _ => {}
            }
        }
        let mut parts = vec![format!("{} cells", g.cells.len())];
        if ok > 0 {
            parts.push(format!("{ok} ok"));
        }
        if bad > 0 {
            parts.push(format!("{bad} failed"));
        }
        return Some(format!(
            "{} {repo} ({})",
            if open { "▾" } else { "▸" },
            parts.join(", ")
        ));
    }
    j.matrix_cell()
        .map(|c| format!("  └ {}", raibid_core::matrix::label(&c.values)))
}
