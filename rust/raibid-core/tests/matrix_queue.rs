//! Issue 23 §1, the queue side of build matrices, on a real Redis: a fan-out writes the group and its
//! N cells in one script — N stream entries, so the agents group's `lag` (what KEDA's burst path scales
//! on) counts N — or nothing at all; finishing the cells settles the group with the combined status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use raibid_core::contract::{self, keys};
use raibid_core::job::{Job, Status};
use raibid_core::matrix::{GroupCell, JobMatrix, MatrixCell, MatrixGroup, MatrixValue};
use raibid_core::queue::{Claim, Enqueued, Queue, QueueConfig, QueueError};
use std::time::Duration;

mod common;
use common::{job, setup};

async fn lag(q: &Queue) -> i64 {
    let mut con = q.redis();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    match groups[0].get("lag") {
        Some(redis::Value::Int(i)) => *i,
        other => panic!("lag {other:?}"),
    }
}

/// Claim the one queued job and prepare its group of `n` cells (as the agent's hook does).
async fn parent_and_cells(
    q: &Queue,
    c: &mut redis::aio::MultiplexedConnection,
    n: usize,
) -> (Claim, Vec<Job>) {
    let Enqueued::New(_) = q.enqueue(job(), None).await.unwrap() else {
        panic!()
    };
    let mut claim = q
        .claim_next(c, "agent-p", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let cells: Vec<Job> = (0..n)
        .map(|i| {
            let mut j = Job::new(claim.job.source.clone(), Utc::now());
            j.matrix = Some(JobMatrix::Cell(MatrixCell {
                group: claim.job.id.to_string(),
                index: i as u32,
                values: vec![MatrixValue {
                    axis: "n".into(),
                    value: i.to_string(),
                }],
            }));
            j
        })
        .collect();
    claim.job.matrix = Some(JobMatrix::Group(MatrixGroup {
        cells: cells
            .iter()
            .map(|j| GroupCell {
                job: j.id.to_string(),
                label: "x".into(),
            })
            .collect(),
        fail_fast: true,
    }));
    (claim, cells)
}

#[tokio::test]
async fn a_fan_out_is_n_entries_of_lag_and_its_cells_settle_the_group() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let (mut claim, cells) = parent_and_cells(&q, &mut c, 6).await;
    assert_eq!(lag(&q).await, 0);
    q.fan_out(&mut claim, &cells).await.unwrap();
    // Six undelivered entries: KEDA sees six.
    assert_eq!(lag(&q).await, 6);
    let parent = q.get(&claim.job.id).await.unwrap();
    assert_eq!(parent.status, Status::Running);
    assert_eq!(parent.lease, None);
    let v = q.group(&claim.job.id).await.unwrap();
    assert_eq!(v.cells.len(), 6);
    assert_eq!(v.status, Status::Queued);
    // The parent's own entry was acknowledged: nothing pending, nothing for the reaper.
    let mut con = q.redis();
    let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(keys::JOBS_STREAM)
        .arg(keys::AGENTS_GROUP)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(pending.0, 0);
    let counts = q.count_by_status().await.unwrap();
    assert_eq!(counts.get(&Status::Queued), Some(&6));
    // Claim every cell (lag drops to 0), finish them: the last final write settles the group.
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            q.claim_next(&mut c, &format!("agent-{i}"), Duration::from_millis(100))
                .await
                .unwrap()
                .unwrap(),
        );
        assert_eq!(lag(&q).await, 5 - i as i64);
    }
    for (i, mut cl) in held.into_iter().enumerate() {
        cl.job.finish(Status::Succeeded, None, Utc::now());
        q.finish_claimed(&mut cl).await.unwrap();
        let g = q.get(&claim.job.id).await.unwrap();
        assert_eq!(g.status.is_final(), i == 5, "after {i}: {:?}", g.status);
    }
    let v = q.group(&claim.job.id).await.unwrap();
    assert_eq!(v.status, Status::Succeeded);
    let open: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::MATRIX_GROUPS_OPEN)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
    assert_eq!(
        q.list_groups(10, None).await.unwrap(),
        vec![claim.job.id.to_string()]
    );
}

#[tokio::test]
async fn a_fan_out_without_the_lease_writes_nothing() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let (mut claim, cells) = parent_and_cells(&q, &mut c, 4).await;
    let mut con = q.redis();
    let len_before: u64 = redis::cmd("XLEN")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    // Another holder took the job over.
    let _: () = redis::cmd("HSET")
        .arg(contract::job_key(&claim.job.id))
        .arg("lease")
        .arg("someone-else")
        .query_async(&mut con)
        .await
        .unwrap();
    let e = q.fan_out(&mut claim, &cells).await.unwrap_err();
    assert!(matches!(e, QueueError::LeaseLost(_)), "{e}");
    let len_after: u64 = redis::cmd("XLEN")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len_before, len_after);
    for cell in &cells {
        assert!(matches!(
            q.get(&cell.id).await,
            Err(QueueError::NotFound(_))
        ));
    }
    assert!(q.list_groups(10, None).await.unwrap().is_empty());
}

#[tokio::test]
async fn fail_fast_cancels_queued_cells_and_a_dead_cell_is_settled_by_the_sweep() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let (mut claim, cells) = parent_and_cells(&q, &mut c, 3).await;
    q.fan_out(&mut claim, &cells).await.unwrap();
    let mut first = q
        .claim_next(&mut c, "agent-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    first.job.finish(
        Status::Failed,
        Some("step `t` exited with code 1".into()),
        Utc::now(),
    );
    q.finish_claimed(&mut first).await.unwrap();
    let v = q.group(&claim.job.id).await.unwrap();
    assert_eq!(v.status, Status::Failed, "{v:?}");
    assert_eq!(v.cells[1].status, Status::Cancelled);
    assert!(v.cells[1]
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("fail_fast: cell (n=0) failed"));
    assert!(v
        .group
        .failure_reason
        .as_deref()
        .unwrap()
        .contains("1 of 3 cells failed: (n=0) step `t` exited with code 1"));
    // The cancelled cells' entries are still undelivered (lag stays exact until an agent acks them).
    assert_eq!(lag(&q).await, 2);
    // A group whose cell ended behind its back (here: written directly) is settled by the sweep.
    let (mut claim2, cells2) = parent_and_cells(&q, &mut c, 1).await;
    let _ = cells2;
    let cells2 = {
        let mut j = Job::new(claim2.job.source.clone(), Utc::now());
        j.matrix = Some(JobMatrix::Cell(MatrixCell {
            group: claim2.job.id.to_string(),
            index: 0,
            values: vec![],
        }));
        if let Some(JobMatrix::Group(g)) = claim2.job.matrix.as_mut() {
            g.cells[0].job = j.id.to_string();
        }
        vec![j]
    };
    q.fan_out(&mut claim2, &cells2).await.unwrap();
    q.modify(&cells2[0].id, |j| {
        j.finish(Status::Failed, Some("dead-lettered".into()), Utc::now());
        Ok(Some("job_finished"))
    })
    .await
    .unwrap();
    assert!(!q.get(&claim2.job.id).await.unwrap().status.is_final());
    assert_eq!(q.settle_open_groups().await.unwrap(), 1);
    assert_eq!(q.get(&claim2.job.id).await.unwrap().status, Status::Failed);
}
