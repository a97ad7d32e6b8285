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

/// The oldest `limit` entries.
pub async fn uploads(queue: &super::Queue, limit: usize) -> Result<Vec<String>, redis::RedisError> {
    let mut con = queue.redis();
    redis::cmd("ZRANGE")
        .arg(ARTIFACTS_INDEX)
        .arg(0)
        .arg(limit.saturating_sub(1).min(isize::MAX as usize) as i64)
        .query_async(&mut con)
        .await
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
