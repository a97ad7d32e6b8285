//! Issue 8 §1: the group's `lag` (what KEDA scales on) stays a true count of undelivered entries through
//! any order of finishes, requeues, cancels and dead-letters — never nil — and acknowledged entries are
//! trimmed from the head so the stream does not grow without bound. Real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use raibid_core::contract::keys;
use raibid_core::job::Status;
use raibid_core::queue::{Claim, Enqueued, Queue, QueueConfig};
use std::time::Duration;

mod common;
use common::{job, setup};

async fn enqueue(q: &Queue, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        match q.enqueue(job(), None).await.unwrap() {
            Enqueued::New(j) => ids.push(j.id.to_string()),
            other => panic!("{other:?}"),
        }
    }
    ids
}

async fn claim(q: &Queue, c: &mut redis::aio::MultiplexedConnection, agent: &str) -> Claim {
    q.claim_next(c, agent, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("a job to claim")
}

async fn finish(q: &Queue, mut cl: Claim) {
    cl.job.finish(Status::Succeeded, None, Utc::now());
    q.finish_claimed(&mut cl).await.unwrap();
}

/// `XINFO GROUPS` → `lag` of the agents' group, read raw (as KEDA does).
async fn raw_lag(q: &Queue) -> Option<i64> {
    let mut con = q.redis();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    let g = groups
        .into_iter()
        .find(|g| matches!(g.get("name"), Some(redis::Value::BulkString(b)) if b == keys::AGENTS_GROUP.as_bytes()))
        .expect("the agents group");
    match g.get("lag") {
        Some(redis::Value::Int(i)) => Some(*i),
        _ => None,
    }
}

async fn xlen(q: &Queue) -> u64 {
    let mut con = q.redis();
    redis::cmd("XLEN")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap()
}

#[tokio::test]
async fn out_of_order_finishes_keep_lag_exact() {
    for agents in 2..=4usize {
        let (_r, q, mut c) = setup(QueueConfig::default()).await;
        enqueue(&q, agents + 3).await;
        let mut held = Vec::new();
        for a in 0..agents {
            held.push(claim(&q, &mut c, &format!("agent-{a}")).await);
        }
        // The last claimer (holding the group's last-delivered id) finishes first, then the others in
        // reverse: every finish is out of order with respect to the stream.
        while let Some(cl) = held.pop() {
            finish(&q, cl).await;
            assert_eq!(
                raw_lag(&q).await,
                Some(3),
                "{agents} agents, {} held",
                held.len()
            );
        }
        // Everything before the first undelivered entry is acknowledged: the head was trimmed.
        assert_eq!(xlen(&q).await, 3, "{agents} agents");
        assert_eq!(q.stats().await.unwrap().lag, Some(3));
    }
}

#[tokio::test]
async fn requeue_of_a_middle_entry_keeps_lag_exact() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    enqueue(&q, 5).await;
    let a = claim(&q, &mut c, "a").await;
    let b = claim(&q, &mut c, "b").await;
    let d = claim(&q, &mut c, "c").await;
    // Release the middle one: it goes back with a fresh entry at the end.
    q.requeue(&b.job.id, &b.entry_id, "test", Some(&b.lease))
        .await
        .unwrap();
    assert_eq!(raw_lag(&q).await, Some(3));
    finish(&q, d).await;
    assert_eq!(raw_lag(&q).await, Some(3));
    finish(&q, a).await;
    assert_eq!(raw_lag(&q).await, Some(3));
    // Nothing is pending, so nothing but the 3 undelivered entries remains.
    assert_eq!(xlen(&q).await, 3);
}

#[tokio::test]
async fn cancel_of_a_queued_middle_entry_keeps_lag_exact() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let ids = enqueue(&q, 5).await;
    let a = claim(&q, &mut c, "a").await;
    // Cancel the 3rd (queued) job: final at once; its entry stays undelivered until an agent drops it.
    q.cancel(&ids[2]).await.unwrap();
    assert_eq!(raw_lag(&q).await, Some(4));
    let b = claim(&q, &mut c, "b").await;
    assert_eq!(b.job.id.to_string(), ids[1]);
    // The next read skips (acknowledges) the cancelled entry and claims the 4th.
    let d = claim(&q, &mut c, "c").await;
    assert_eq!(d.job.id.to_string(), ids[3]);
    assert_eq!(raw_lag(&q).await, Some(1));
    finish(&q, d).await;
    finish(&q, b).await;
    assert_eq!(raw_lag(&q).await, Some(1));
    finish(&q, a).await;
    assert_eq!(raw_lag(&q).await, Some(1));
    assert_eq!(xlen(&q).await, 1);
}

#[tokio::test]
async fn dead_letter_of_a_middle_entry_keeps_lag_exact() {
    let cfg = QueueConfig {
        max_attempts: 1,
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    enqueue(&q, 5).await;
    let a = claim(&q, &mut c, "a").await;
    let b = claim(&q, &mut c, "b").await;
    let d = claim(&q, &mut c, "c").await;
    // b's agent dies; after one attempt the reaper's requeue dead-letters it.
    let r = q
        .requeue(&b.job.id, &b.entry_id, "agent died", None)
        .await
        .unwrap();
    assert_eq!(r, raibid_core::queue::Requeued::DeadLettered);
    assert_eq!(raw_lag(&q).await, Some(2));
    finish(&q, d).await;
    assert_eq!(raw_lag(&q).await, Some(2));
    finish(&q, a).await;
    assert_eq!(raw_lag(&q).await, Some(2));
    assert_eq!(xlen(&q).await, 2);
}

#[tokio::test]
async fn stream_stays_bounded_through_many_out_of_order_jobs() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    // One long job holds the oldest entry while 200 others finish around it.
    enqueue(&q, 1).await;
    let long = claim(&q, &mut c, "long").await;
    for i in 0..100 {
        enqueue(&q, 2).await;
        let x = claim(&q, &mut c, &format!("x{i}")).await;
        let y = claim(&q, &mut c, &format!("y{i}")).await;
        finish(&q, y).await;
        finish(&q, x).await;
        assert_eq!(raw_lag(&q).await, Some(0));
    }
    // The long job pins the head: entries after it are acknowledged and wait for it.
    finish(&q, long).await;
    assert_eq!(raw_lag(&q).await, Some(0));
    assert_eq!(
        xlen(&q).await,
        0,
        "acknowledged entries are trimmed once nothing older is pending"
    );
}
