//! The index of uploaded artifact manifests (`raibid:artifacts`, issue 23 §2): the agent adds an entry
//! when a job's artifacts are uploaded; the dispatcher deletes a manifest from the registry once its job's
//! record is gone (cleanup, retention, the count bound) and then forgets the entry.

use crate::contract::keys::ARTIFACTS_INDEX;
use chrono::Utc;

/// Record an uploaded set (member: `artifacts::index_member`).
pub async fn record_upload(queue: &super::Queue, member: &str) -> Result<(), redis::RedisError> {
    let mut con = queue.redis();
    redis::cmd("ZADD")
        .arg(ARTIFACTS_INDEX)
        .arg(Utc::now().timestamp_millis())
        .arg(member)
        .query_async::<()>(&mut con)
        .await
}

/// `limit` entries from the `offset`-th oldest.
pub async fn uploads(
    queue: &super::Queue,
    offset: usize,
    limit: usize,
) -> Result<Vec<String>, redis::RedisError> {
    let mut con = queue.redis();
    let start = offset.min(i64::MAX as usize) as i64;
    redis::cmd("ZRANGE")
        .arg(ARTIFACTS_INDEX)
        .arg(start)
        .arg(start.saturating_add(limit.max(1) as i64 - 1))
        .query_async(&mut con)
        .await
}

/// Which of these job records still exist (one round trip).
pub async fn records_exist(
    queue: &super::Queue,
    ids: &[String],
) -> Result<Vec<bool>, redis::RedisError> {
    let mut con = queue.redis();
    let mut p = redis::pipe();
    for id in ids {
        p.cmd("EXISTS").arg(crate::contract::job_key(id));
    }
    p.query_async(&mut con).await
}

/// Forget an entry (its manifest is deleted).
pub async fn forget(queue: &super::Queue, member: &str) -> Result<(), redis::RedisError> {
    let mut con = queue.redis();
    redis::cmd("ZREM")
        .arg(ARTIFACTS_INDEX)
        .arg(member)
        .query_async::<()>(&mut con)
        .await
}
