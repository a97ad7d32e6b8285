//! Shared setup of the queue tests: a private Redis, a connected queue, a plain API job.
#![allow(dead_code, clippy::unwrap_used)]

use chrono::Utc;
use raibid_core::job::{Job, Source, Trigger, TriggerKind};
use raibid_core::queue::{Queue, QueueConfig};
use raibid_core::testkit::RedisServer;
use std::time::Duration;

/// A queued API job for a forge repository.
pub fn job() -> Job {
    Job::new(
        Source {
            repo_url: "https://forge.example/o/r.git".into(),
            git_ref: "refs/heads/main".into(),
            sha: None,
            trigger: Trigger {
                kind: TriggerKind::Api,
                actor: None,
            },
            delivery_id: None,
            forge_repo: None,
            patch: None,
            notify_url: None,
        },
        Utc::now(),
    )
}

/// A private Redis, a queue over it, and a dedicated connection for blocking reads.
pub async fn setup(cfg: QueueConfig) -> (RedisServer, Queue, redis::aio::MultiplexedConnection) {
    let r = RedisServer::start().unwrap();
    let q = Queue::connect(&r.url(), cfg).await.unwrap();
    let c = q
        .blocking_connection(Duration::from_millis(100))
        .await
        .unwrap();
    (r, q, c)
}
