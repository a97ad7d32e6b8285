//! Image cleanup requests (ADR 0006): the dispatcher asks every image agent to remove a job's local
//! images; each image storage handles each request once. The queue's side of `crate::image`, which
//! stays a plain domain module.

use chrono::Utc;
use std::time::Duration;

/// Ask every image agent to remove the local images of job `id` (they do so before their next job and
/// in `--image-gc`). Entries older than `keep` are dropped; the layer-cache GC has removed their images
/// by then.
pub async fn request_cleanup(
    queue: &super::Queue,
    id: &str,
    keep: Duration,
) -> Result<(), redis::RedisError> {
    let mut con = queue.redis();
    let now = Utc::now().timestamp_millis();
    let cutoff = now - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    redis::pipe()
        .atomic()
        .cmd("ZADD")
        .arg(crate::contract::keys::IMAGE_CLEANUP)
        .arg(now)
        .arg(id)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(crate::contract::keys::IMAGE_CLEANUP)
        .arg("-inf")
        .arg(cutoff)
        .ignore()
        .query_async::<()>(&mut con)
        .await
}

/// The job ids whose images should be removed (see `request_cleanup`).
pub async fn pending_cleanups(queue: &super::Queue) -> Result<Vec<String>, redis::RedisError> {
    let mut con = queue.redis();
    redis::cmd("ZRANGE")
        .arg(crate::contract::keys::IMAGE_CLEANUP)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
}

/// Cleanup requests made after `after_ms` (request time in ms), with their times: an image storage
/// handles each request once (it keeps the time of the last one it handled), not at every job.
pub async fn cleanups_since(
    queue: &super::Queue,
    after_ms: i64,
) -> Result<Vec<(String, i64)>, redis::RedisError> {
    let mut con = queue.redis();
    redis::cmd("ZRANGEBYSCORE")
        .arg(crate::contract::keys::IMAGE_CLEANUP)
        .arg(format!("({after_ms}"))
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(&mut con)
        .await
}
