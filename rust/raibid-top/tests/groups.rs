//! Build-matrix groups in the jobs view (issue 23 §1): a group is one row that opens into its cells
//! (Space), listed right under it; closed, its cells are not listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raibid_core::job::{Job, Status};
use raibid_core::matrix::{GroupCell, JobMatrix, MatrixCell, MatrixGroup, MatrixValue};
use raibid_top::app::App;

fn key(app: &mut App, c: KeyCode) {
    app.handle_key(KeyEvent::new(c, KeyModifiers::NONE));
}

fn ids(app: &mut App) -> Vec<String> {
    app.prepare();
    app.shown
        .iter()
        .map(|i| app.jobs[*i].id.to_string())
        .collect()
}

/// Job 1 and 9 plain; job 2 a group of cells 3, 4, 5 (features=a/b/c; cell 4 failed).
fn with_group() -> App {
    let mut group = job(2, Status::Running, 50);
    let mut cells: Vec<Job> = Vec::new();
    for (k, (f, st)) in [
        ("a", Status::Succeeded),
        ("b", Status::Failed),
        ("c", Status::Running),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = job(3 + k, st, 40);
        c.matrix = Some(JobMatrix::Cell(MatrixCell {
            group: group.id.to_string(),
            index: k as u32,
            values: vec![MatrixValue {
                axis: "features".into(),
                value: f.into(),
            }],
        }));
        cells.push(c);
    }
    group.matrix = Some(JobMatrix::Group(MatrixGroup {
        cells: cells
            .iter()
            .map(|c| GroupCell {
                job: c.id.to_string(),
                label: String::new(),
            })
            .collect(),
        fail_fast: false,
    }));
    let mut all = vec![
        job(1, Status::Succeeded, 60),
        group,
        job(9, Status::Queued, 1),
    ];
    all.extend(cells);
    app_with(all)
}

#[test]
fn a_group_is_one_row_that_opens_into_its_cells() {
    let mut app = with_group();
    // Newest first; the cells (ids 3-5, newer than the group) are not listed while it is closed.
    assert_eq!(ids(&mut app), [id(9), id(2), id(1)]);
    let text = screen(&mut app, 120, 12);
    assert!(
        text.contains("▸ alice/parser (3 cells, 1 ok, 1 failed)"),
        "{text}"
    );
    // Space on a plain job says so and changes nothing.
    key(&mut app, KeyCode::Char(' '));
    assert_eq!(ids(&mut app), [id(9), id(2), id(1)]);
    // Space on the group: its cells right under it, in cell order.
    key(&mut app, KeyCode::Char('j'));
    assert_eq!(app.selected.as_deref(), Some(id(2).as_str()));
    key(&mut app, KeyCode::Char(' '));
    assert_eq!(ids(&mut app), [id(9), id(2), id(3), id(4), id(5), id(1)]);
    let text = screen(&mut app, 120, 12);
    assert!(text.contains("▾ "), "{text}");
    assert!(text.contains("└ features=b"), "{text}");
    // The same order whatever the sort: the cells follow their group.
    key(&mut app, KeyCode::Char('S'));
    let shown = ids(&mut app);
    let g = shown.iter().position(|x| *x == id(2)).unwrap();
    assert_eq!(&shown[g..g + 4], [id(2), id(3), id(4), id(5)]);
    // Space on a cell closes its group; the cursor goes to the group.
    key(&mut app, KeyCode::Char('S'));
    ids(&mut app);
    key(&mut app, KeyCode::Char('j'));
    ids(&mut app);
    assert_eq!(app.selected.as_deref(), Some(id(3).as_str()));
    key(&mut app, KeyCode::Char(' '));
    assert_eq!(ids(&mut app), [id(9), id(2), id(1)]);
    assert_eq!(app.selected.as_deref(), Some(id(2).as_str()));
}
