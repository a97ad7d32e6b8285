//! Issue 8 §2, §6, §8 at the queue level, against a real Redis: ids are validated where they are read,
//! one bad record never stops the reaper, records this version cannot read are dead-lettered (never
//! dropped silently), unknown fields survive a rewrite, a flushed Redis recovers by itself, and the
//! reaper decides from the lease stored with the claim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use raibid_core::contract::{self, keys};
use raibid_core::job::Status;
use raibid_core::queue::{Enqueued, Queue, QueueConfig, Requeued};
use std::time::Duration;

mod common;
use common::{job, setup};

async fn new_job(q: &Queue) -> String {
    match q.enqueue(job(), None).await.unwrap() {
        Enqueued::New(j) => j.id.to_string(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn entries_naming_no_valid_job_are_dead_lettered_with_a_reason() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let mut con = q.redis();
    // A crafted record and entries whose ids would name paths outside the workspace root.
    let mut crafted = serde_json::to_value(job()).unwrap();
    crafted["id"] = "../cache".into();
    let _: () = redis::cmd("HSET")
        .arg(contract::job_key("../cache"))
        .arg("record")
        .arg(crafted.to_string())
        .arg("rev")
        .arg(1)
        .query_async(&mut con)
        .await
        .unwrap();
    for raw in ["../cache", "/x"] {
        let _: String = redis::cmd("XADD")
            .arg(keys::JOBS_STREAM)
            .arg("*")
            .arg("job")
            .arg(raw)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let good = new_job(&q).await;
    let cl = q
        .claim_next(&mut c, "a", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the valid job behind them is claimed");
    assert_eq!(cl.job.id, good);
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (_, raw, _, reason) in &dead {
        assert!(reason.contains("is not a job id"), "{raw}: {reason}");
    }
    assert_eq!(q.stats().await.unwrap().lag, Some(0));
}

#[tokio::test]
async fn a_record_this_version_cannot_read_is_dead_lettered_not_dropped() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    let id = new_job(&q).await;
    let mut con = q.redis();
    // A record written by a newer version: an unknown status.
    let (rec,): (String,) = redis::cmd("HMGET")
        .arg(contract::job_key(&id))
        .arg("record")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    v["status"] = "quantum_superposition".into();
    let newer = v.to_string();
    let _: () = redis::cmd("HSET")
        .arg(contract::job_key(&id))
        .arg("record")
        .arg(&newer)
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(q
        .claim_next(&mut c, "a", Duration::from_millis(100))
        .await
        .unwrap()
        .is_none());
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1, id);
    assert!(dead[0].3.contains("unreadable"), "{}", dead[0].3);
    // The record itself is left exactly as the newer version wrote it.
    let (after,): (String,) = redis::cmd("HMGET")
        .arg(contract::job_key(&id))
        .arg("record")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(after, newer);
}

#[tokio::test]
async fn unknown_fields_survive_a_rewrite() {
    let (_r, q, _c) = setup(QueueConfig::default()).await;
    let id = new_job(&q).await;
    let mut con = q.redis();
    let (rec,): (String,) = redis::cmd("HMGET")
        .arg(contract::job_key(&id))
        .arg("record")
        .query_async(&mut con)
        .await
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    v["from_the_future"] = serde_json::json!({"gpu": "gb10"});
    let _: () = redis::cmd("HSET")
        .arg(contract::job_key(&id))
        .arg("record")
        .arg(v.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    q.cancel(&id).await.unwrap();
    let (rec,): (String,) = redis::cmd("HMGET")
        .arg(contract::job_key(&id))
        .arg("record")
        .query_async(&mut con)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
    assert_eq!(v["status"], "cancelled");
    assert_eq!(v["from_the_future"]["gpu"], "gb10");
}

#[tokio::test]
async fn one_corrupt_record_does_not_stop_the_reaper() {
    let cfg = QueueConfig {
        lease: Duration::from_millis(100),
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    let bad = new_job(&q).await;
    let good = new_job(&q).await;
    let a = q
        .claim_next(&mut c, "a", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    let b = q
        .claim_next(&mut c, "b", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.job.id.as_str(), b.job.id.as_str()),
        (bad.as_str(), good.as_str())
    );
    let mut con = q.redis();
    let _: () = redis::cmd("HSET")
        .arg(contract::job_key(&bad))
        .arg("record")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await; // let both leases expire (the subject)
    let reaped = q.reap("reaper", Duration::from_secs(60)).await.unwrap();
    assert!(
        reaped.contains(&(good.clone(), Requeued::Queued)),
        "the valid job is requeued despite the corrupt one before it: {reaped:?}"
    );
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1, bad);
    assert!(dead[0].3.contains("unreadable"), "{}", dead[0].3);
    assert_eq!(q.get(&good).await.unwrap().status, Status::Queued);
}

#[tokio::test]
async fn the_reaper_decides_from_the_lease_stored_with_the_claim() {
    // The reaper's own setting (the orphan timeout, 50 ms) is far shorter than the claim's lease (1 s):
    // only the stored expiry counts.
    let cfg = QueueConfig {
        lease: Duration::from_secs(1),
        ..QueueConfig::default()
    };
    let (_r, q, mut c) = setup(cfg).await;
    new_job(&q).await;
    let cl = q
        .claim_next(&mut c, "a", Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(q.renew_lease(&cl, "a").await.unwrap());
        assert!(q
            .reap("r", Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty());
    }
    // Renewals stop: once the stored expiry passes, the reaper requeues it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = q.reap("r", Duration::from_millis(50)).await.unwrap();
        if !r.is_empty() {
            assert_eq!(r[0].1, Requeued::Queued);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reaped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old holder's lease is gone: a renewal says so.
    assert!(!q.renew_lease(&cl, "a").await.unwrap());
}

#[tokio::test]
async fn a_flushed_redis_recovers_by_itself() {
    let (_r, q, mut c) = setup(QueueConfig::default()).await;
    new_job(&q).await;
    let mut con = q.redis();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    // The enqueue recreates the stream (XADD) but not the group; the claim meets NOGROUP and recovers.
    let id = new_job(&q).await;
    let cl = q
        .claim_next(&mut c, "a", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("claimed after the flush");
    assert_eq!(cl.job.id, id);
    let _ = q
        .read_events(&mut c, "reporter", Duration::from_millis(10))
        .await
        .unwrap();
    let _ = q
        .read_events(&mut c, "reporter", Duration::from_millis(10))
        .await
        .unwrap();
}
