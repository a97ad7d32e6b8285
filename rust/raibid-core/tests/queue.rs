//! The queue protocol against a real Redis: atomic enqueue, exact lag, fencing, the log cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use raibid_core::contract::{self, keys};
use raibid_core::job::Status;
use raibid_core::queue::{Enqueued, QueueConfig, QueueError};
use std::time::Duration;

mod common;
use common::{job, setup};

#[tokio::test]
async fn lag_stays_exact_through_claims_acks_cancels_and_requeues() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        match q.enqueue(job(), None).await.unwrap() {
            Enqueued::New(j) => ids.push(j.id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(q.stats().await.unwrap().lag, Some(20));
    // Cancel two queued jobs: they are final at once, and still counted until an agent drops them.
    q.cancel(&ids[0]).await.unwrap();
    q.cancel(&ids[1]).await.unwrap();
    assert_eq!(q.get(&ids[0]).await.unwrap().status, Status::Cancelled);
    assert_eq!(q.stats().await.unwrap().lag, Some(20));
    let mut claims = Vec::new();
    for _ in 0..8 {
        if let Some(cl) = q
            .claim_next(&mut c, "a1", Duration::from_millis(50))
            .await
            .unwrap()
        {
            claims.push(cl);
        }
    }
    // 10 entries read by 8 claims: 2 were cancelled (acknowledged and skipped on the way), 8 claimed.
    assert_eq!(claims.len(), 8);
    let s = q.stats().await.unwrap();
    assert_eq!((s.lag, s.pending, s.length), (Some(10), 8, 18));
    // Finish 5 (ack + delete), release 3 back to the queue (fresh entries).
    for mut cl in claims.drain(..5) {
        cl.job.finish(Status::Succeeded, None, Utc::now());
        q.finish_claimed(&mut cl).await.unwrap();
    }
    for cl in claims.drain(..) {
        q.requeue(&cl.job.id, &cl.entry_id, "test", Some(&cl.lease))
            .await
            .unwrap();
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.lag, s.pending, s.length), (Some(13), 0, 13), "{s:?}");
    // Drain everything.
    while let Some(mut cl) = q
        .claim_next(&mut c, "a2", Duration::from_millis(50))
        .await
        .unwrap()
    {
        cl.job.finish(Status::Succeeded, None, Utc::now());
        q.finish_claimed(&mut cl).await.unwrap();
    }
    let s = q.stats().await.unwrap();
    assert_eq!((s.lag, s.pending, s.length), (Some(0), 0, 0), "{s:?}");
    let (all, _) = q.list(None, None, 100, None).await.unwrap();
    assert_eq!(
        all.iter().filter(|j| j.status == Status::Succeeded).count(),
        18
    );
    assert_eq!(
        all.iter().filter(|j| j.status == Status::Cancelled).count(),
        2
    );
}

#[tokio::test]
async fn a_lost_lease_fences_progress_logs_and_the_final_write() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    q.enqueue(job(), None).await.unwrap();
    let mut first = q
        .claim_next(&mut c, "slow", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    // The reaper takes it over (as after a lease expiry), another agent claims it.
    q.requeue(&first.job.id, &first.entry_id, "lease expired", None)
        .await
        .unwrap();
    let mut second = q
        .claim_next(&mut c, "fast", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.job.attempt, 2);
    assert!(!q
        .append_log(
            &first.job.id,
            &first.lease,
            &[("s".into(), "stdout".into(), "stale".into())]
        )
        .await
        .unwrap());
    assert!(matches!(
        q.update_claimed(&mut first, "step_started").await,
        Err(QueueError::LeaseLost(_))
    ));
    first
        .job
        .finish(Status::Failed, Some("stale".into()), Utc::now());
    assert!(matches!(
        q.finish_claimed(&mut first).await,
        Err(QueueError::LeaseLost(_))
    ));
    second.job.finish(Status::Succeeded, None, Utc::now());
    q.finish_claimed(&mut second).await.unwrap();
    let j = q.get(&second.job.id).await.unwrap();
    assert_eq!(
        (j.status, j.agent.as_deref()),
        (Status::Succeeded, Some("fast"))
    );
    assert!(q.read_log(&j.id, None, 100).await.unwrap().is_empty());
    let s = q.stats().await.unwrap();
    assert_eq!((s.lag, s.pending), (Some(0), 0));
}

#[tokio::test]
async fn the_log_is_capped_with_one_truncation_marker() {
    // Each line costs its fields (step 5 + stream 6 + ts 27 + line 18 bytes) plus the 32-byte entry
    // overhead: 88 bytes; 5 fit in 480.
    let cfg = QueueConfig {
        log_cap_bytes: 480,
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    q.enqueue(job(), None).await.unwrap();
    let cl = q
        .claim_next(&mut c, "a", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    let line = |i: usize| {
        (
            "build".to_string(),
            "stdout".to_string(),
            format!("line {i:02} 0123456789"),
        )
    };
    for i in 0..10 {
        assert!(q
            .append_log(&cl.job.id, &cl.lease, &[line(i)])
            .await
            .unwrap());
    }
    let lines = q.read_log(&cl.job.id, None, 100).await.unwrap();
    // 88 bytes a line: 5 fit in 480, then one marker, then nothing.
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[4].line, "line 04 0123456789");
    assert_eq!(lines[5].stream, "system");
    assert!(lines[5].line.contains("log truncated"));
    assert!(q.log_truncated(&cl.job.id).await.unwrap());
    // Sequence ids resume reading after a given line.
    let tail = q
        .read_log(&cl.job.id, Some(&lines[3].seq), 100)
        .await
        .unwrap();
    assert_eq!(tail.len(), 2);
}

#[tokio::test]
async fn enqueue_is_all_or_nothing_and_deduplicates() {
    let (r, q, _c) = setup(QueueConfig::default()).await;
    let a = job();
    let first = q.enqueue(a.clone(), Some(("gitea", "d-1"))).await.unwrap();
    let mut b = job();
    b.id = raibid_core::job::JobId::new();
    let second = q.enqueue(b.clone(), Some(("gitea", "d-1"))).await.unwrap();
    assert!(matches!(first, Enqueued::New(_)));
    assert_eq!(second, Enqueued::Duplicate(a.id.to_string()));
    let mut con = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: i64 = redis::cmd("EXISTS")
        .arg(contract::job_key(&b.id))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a duplicate writes no record");
    let len: i64 = redis::cmd("XLEN")
        .arg(keys::JOBS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(len, 1);
    // Every key the enqueue wrote, together.
    let entry: String = redis::cmd("HGET")
        .arg(contract::job_key(&a.id))
        .arg("entry")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!entry.is_empty());
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys::JOB_INDEX)
        .arg(&a.id)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(score.is_some());
    let events: i64 = redis::cmd("XLEN")
        .arg(keys::EVENTS_STREAM)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn the_reaper_requeues_then_dead_letters_after_max_attempts() {
    let cfg = QueueConfig {
        max_attempts: 2,
        lease: Duration::from_millis(100),
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    q.enqueue(job(), None).await.unwrap();
    for attempt in 1..=2u32 {
        let cl = q
            .claim_next(&mut c, "crashy", Duration::from_millis(50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cl.job.attempt, attempt);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let reaped = q.reap("reaper", Duration::from_millis(100)).await.unwrap();
        assert_eq!(reaped.len(), 1);
    }
    let (all, _) = q.list(None, None, 10, None).await.unwrap();
    assert_eq!(all[0].status, Status::Failed);
    assert!(all[0]
        .failure_reason
        .as_deref()
        .unwrap()
        .starts_with("gave up after 2 attempts: agent crashy stopped renewing its lease"));
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].2, 2);
    let s = q.stats().await.unwrap();
    assert_eq!((s.lag, s.pending, s.length), (Some(0), 0, 0));
    // The crashed consumer is removed once it has nothing pending and no heartbeat; a live one stays.
    q.heartbeat("alive-idle", None, 0, Duration::from_secs(5))
        .await
        .unwrap();
    let _ = q
        .claim_next(&mut c, "alive-idle", Duration::from_millis(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let gone = q.prune_consumers(Duration::from_millis(50)).await.unwrap();
    assert!(gone.contains(&"crashy".to_string()), "{gone:?}");
    assert!(!gone.contains(&"alive-idle".to_string()), "{gone:?}");
    // A live agent's lease renewals keep its job from being reaped.
    q.enqueue(job(), None).await.unwrap();
    let cl = q
        .claim_next(&mut c, "alive", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(q.renew_lease(&cl, "alive").await.unwrap());
        assert!(q
            .reap("reaper", Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn a_flood_of_empty_lines_hits_the_line_cap() {
    let cfg = QueueConfig {
        log_cap_lines: 50,
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    q.enqueue(job(), None).await.unwrap();
    let cl = q
        .claim_next(&mut c, "a", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    let empty: Vec<(String, String, String)> = (0..40)
        .map(|_| ("build".into(), "stdout".into(), String::new()))
        .collect();
    for _ in 0..5 {
        assert!(q.append_log(&cl.job.id, &cl.lease, &empty).await.unwrap());
    }
    let lines = q.read_log(&cl.job.id, None, 1000).await.unwrap();
    assert_eq!(lines.len(), 51, "50 lines and one marker");
    assert!(lines[50].line.contains("log truncated"), "{:?}", lines[50]);
}

#[tokio::test]
async fn claims_and_finishes_record_their_histograms_only_with_the_write_they_measure() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    q.enqueue(job(), None).await.unwrap();
    let mut first = q
        .claim_next(&mut c, "slow", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    let claimed = first.job.timestamps.claimed.unwrap();
    assert!(claimed >= first.job.timestamps.queued.unwrap());
    q.requeue(&first.job.id, &first.entry_id, "lease expired", None)
        .await
        .unwrap();
    let mut second = q
        .claim_next(&mut c, "fast", Duration::from_millis(50))
        .await
        .unwrap()
        .unwrap();
    // The fenced-out agent's final write records no duration; the lease holder's does.
    first.job.finish(Status::Failed, None, Utc::now());
    assert!(q.finish_claimed(&mut first).await.is_err());
    second.job.finish(Status::Succeeded, None, Utc::now());
    q.finish_claimed(&mut second).await.unwrap();

    let claims = q.histogram(keys::CLAIM_LATENCY_HIST).await.unwrap();
    assert_eq!(claims.get("count"), Some(&2.0), "{claims:?}");
    assert_eq!(claims.get("+Inf"), Some(&2.0), "{claims:?}");
    // Cumulative buckets: the 30 s bound holds both claims; no bucket holds more than `count`.
    assert_eq!(claims.get("30"), Some(&2.0), "{claims:?}");
    assert!(claims.values().all(|v| *v >= 0.0));
    let latency = second.job.claim_latency_secs().unwrap();
    assert!(claims["sum"] >= latency, "{claims:?} vs {latency}");

    let durations = q.histogram(keys::JOB_DURATION_HIST).await.unwrap();
    assert_eq!(durations.get("count"), Some(&1.0), "{durations:?}");
    assert_eq!(durations.get("3600"), Some(&1.0), "{durations:?}");
}
