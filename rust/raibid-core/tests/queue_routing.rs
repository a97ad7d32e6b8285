//! ADR 0013 at the protocol level, real Redis: the enqueue script routes a Rust job to the node holding its
//! repository's warm cache only while that node has a free agent; a node agent reads its node's stream
//! first; the undelivered entries of a node with no live agent go back to the shared stream; every stream's
//! `lag` stays exact throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use raibid_core::contract::{self, keys};
use raibid_core::job::{JobKind, Status};
use raibid_core::queue::{Claim, Enqueued, Queue, QueueConfig};
use std::time::{Duration, Instant};

mod common;
use common::{job, setup};

const REPO: &str = "https://forge.example/o/r.git";

fn node_cfg(node: &str) -> QueueConfig {
    QueueConfig {
        node: Some(node.to_string()),
        ..QueueConfig::default()
    }
}

async fn enqueue(q: &Queue) -> String {
    match q.enqueue(job(), None).await.unwrap() {
        Enqueued::New(j) => j.id.to_string(),
        other => panic!("{other:?}"),
    }
}

async fn stream_of(q: &Queue, id: &str) -> String {
    let mut con = q.redis();
    redis::cmd("HGET")
        .arg(contract::job_key(id))
        .arg("stream")
        .query_async(&mut con)
        .await
        .unwrap()
}

/// `XINFO GROUPS <stream>` → the agents group's `lag` (None: nil, what KEDA would read as 0).
async fn lag(q: &Queue, stream: &str) -> Option<i64> {
    let mut con = q.redis();
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
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

async fn finish(q: &Queue, mut cl: Claim) {
    cl.job.finish(Status::Succeeded, None, Utc::now());
    q.finish_claimed(&mut cl).await.unwrap();
}

#[tokio::test]
async fn routes_to_the_warm_node_only_while_it_has_a_free_agent() {
    let (_r, shared, _) = setup(QueueConfig::default()).await;
    let a = Queue::connect(&_r.url(), node_cfg("a")).await.unwrap();
    let mut ca = a
        .blocking_connection(Duration::from_millis(100))
        .await
        .unwrap();
    let ns = contract::node_jobs_stream("a");
    // Nothing recorded yet: the shared stream.
    a.heartbeat("a-1", None, 0, Duration::from_secs(30))
        .await
        .unwrap();
    let j0 = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &j0).await, keys::JOBS_STREAM);
    let c0 = a
        .claim_next(&mut ca, "a-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c0.stream, keys::JOBS_STREAM);
    // The agent holds a job: node a is warm for the repository but not free → shared.
    a.record_warm_repo(REPO).await.unwrap();
    let j1 = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &j1).await, keys::JOBS_STREAM);
    finish(&a, c0).await;
    let c1 = a
        .claim_next(&mut ca, "a-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    finish(&a, c1).await;
    // Free again: routed to node a (one free agent, lag 0); a second job finds lag 1 = free agents → shared.
    let j2 = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &j2).await, ns);
    assert_eq!(lag(&shared, &ns).await, Some(1));
    // The queue figures (API, raibid-top, /metrics) show the node stream with its own lag.
    let stats = shared.stats().await.unwrap();
    let node = stats
        .kinds
        .iter()
        .find(|k| k.stream == ns)
        .expect("node stream in the figures");
    assert_eq!(node.lag, Some(1));
    assert_eq!(stats.lag, Some(1));
    let j3 = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &j3).await, keys::JOBS_STREAM);
    // Another spelling of the same repository routes alike.
    assert_eq!(
        contract::routing_repo_key("HTTPS://tok@Forge.example/o/r/"),
        contract::routing_repo_key(REPO)
    );
    // The node agent takes its node's entry first, though the shared one is older.
    let c2 = a
        .claim_next(&mut ca, "a-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c2.job.id.as_str(), j2);
    assert_eq!(c2.stream, ns);
    finish(&a, c2).await;
    let c3 = a
        .claim_next(&mut ca, "a-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c3.job.id.as_str(), j3);
    finish(&a, c3).await;
    for s in [keys::JOBS_STREAM.to_string(), ns] {
        assert_eq!(lag(&shared, &s).await, Some(0), "{s}");
    }
    // An image job is never routed.
    let mut img = job();
    img.kind = JobKind::Image;
    let Enqueued::New(img) = shared.enqueue(img, None).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        stream_of(&shared, img.id.as_str()).await,
        keys::IMAGE_JOBS_STREAM
    );
}

#[tokio::test]
async fn a_dead_nodes_undelivered_jobs_go_back_to_the_shared_stream() {
    let (_r, shared, mut cs) = setup(QueueConfig::default()).await;
    let a = Queue::connect(&_r.url(), node_cfg("a")).await.unwrap();
    let ns = contract::node_jobs_stream("a");
    a.record_warm_repo(REPO).await.unwrap();
    // One heartbeat with a short life, then the agent is gone (never reads).
    a.heartbeat("a-1", None, 0, Duration::from_millis(300))
        .await
        .unwrap();
    let id = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &id).await, ns);
    assert_eq!(lag(&shared, &ns).await, Some(1));
    // The reaper moves it once the node has no live agent (waits on the state, not a fixed time).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = shared
            .reap("reaper", Duration::from_secs(30))
            .await
            .unwrap();
        if r.iter().any(|(j, _)| j == &id) {
            break;
        }
        assert!(Instant::now() < deadline, "never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream_of(&shared, &id).await, keys::JOBS_STREAM);
    assert_eq!(lag(&shared, &ns).await, Some(0));
    assert_eq!(lag(&shared, keys::JOBS_STREAM).await, Some(1));
    let j = shared.get(&id).await.unwrap();
    assert_eq!(j.status, Status::Queued);
    assert_eq!(j.failure_reason, None);
    // An agent without a node name runs it.
    let c = shared
        .claim_next(&mut cs, "b-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.job.id.as_str(), id);
    finish(&shared, c).await;
    assert_eq!(lag(&shared, keys::JOBS_STREAM).await, Some(0));
}

#[tokio::test]
async fn a_job_a_live_node_never_takes_goes_back_after_the_orphan_timeout() {
    let (_r, shared, _) = setup(QueueConfig::default()).await;
    let a = Queue::connect(&_r.url(), node_cfg("a")).await.unwrap();
    let ns = contract::node_jobs_stream("a");
    a.record_warm_repo(REPO).await.unwrap();
    // An agent that died without deregistering still looks free until its heartbeat expires.
    a.heartbeat("a-1", None, 0, Duration::from_secs(30))
        .await
        .unwrap();
    let id = enqueue(&shared).await;
    assert_eq!(stream_of(&shared, &id).await, ns);
    // Within the orphan timeout it stays for the node (its burst pool scales on the lag).
    let r = shared
        .reap("reaper", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(lag(&shared, &ns).await, Some(1));
    // Past it, the reaper gives it to the shared stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = shared
            .reap("reaper", Duration::from_millis(200))
            .await
            .unwrap();
        if r.iter().any(|(j, _)| j == &id) {
            break;
        }
        assert!(Instant::now() < deadline, "never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stream_of(&shared, &id).await, keys::JOBS_STREAM);
    assert_eq!(lag(&shared, &ns).await, Some(0));
    assert_eq!(lag(&shared, keys::JOBS_STREAM).await, Some(1));
}

#[tokio::test]
async fn an_entry_delivered_along_with_the_claimed_one_is_given_back() {
    // One XREADGROUP over several streams delivers up to one entry per stream. Before, the second one stayed
    // pending on an agent that never ran it, until the reaper's orphan timeout.
    let both = QueueConfig {
        kinds: vec![JobKind::Rust, JobKind::Image],
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(both).await;
    let rust = enqueue(&q).await;
    let mut img = job();
    img.kind = JobKind::Image;
    let Enqueued::New(img) = q.enqueue(img, None).await.unwrap() else {
        panic!()
    };
    let first = q
        .claim_next(&mut c, "agent-1", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.job.id.as_str(), rust);
    // The image job is undelivered again (lag exact), nothing of it pending, and another agent takes it.
    assert_eq!(lag(&q, keys::IMAGE_JOBS_STREAM).await, Some(1));
    let mut con = q.redis();
    let pending: (u64, Option<String>, Option<String>, Option<redis::Value>) =
        redis::cmd("XPENDING")
            .arg(keys::IMAGE_JOBS_STREAM)
            .arg(keys::AGENTS_GROUP)
            .query_async(&mut con)
            .await
            .unwrap();
    assert_eq!(pending.0, 0);
    let second = q
        .claim_next(&mut c, "agent-2", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.job.id, img.id);
    assert_eq!(second.job.attempt, 1);
    finish(&q, first).await;
    finish(&q, second).await;
    for s in [keys::JOBS_STREAM, keys::IMAGE_JOBS_STREAM] {
        assert_eq!(lag(&q, s).await, Some(0), "{s}");
    }
}
