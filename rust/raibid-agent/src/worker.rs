//! The claim loop: one worker per slot blocked on XREADGROUP, and the cancel listener.

use crate::runner::run_job;
use crate::{git, AgentConfig, Masker, Shared, Stop};
use anyhow::Context;
use raibid_core::contract::env;
use raibid_core::queue::{Queue, QueueConfig, QueueError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Run the agent until `shutdown` turns true (or, with `--once`, until one job ran or the idle timeout
/// passed).
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let name = cfg.agent_name();
    let queue = connect_with_backoff(&cfg.redis_url, cfg.queue_config()?, &shutdown).await?;
    let Some(queue) = queue else { return Ok(()) };
    if cfg.image.image_gc {
        return crate::image::gc_command(&cfg, Some(&queue)).await;
    }
    let slots: Vec<String> = if cfg.concurrency == 1 {
        vec![name.clone()]
    } else {
        (0..cfg.concurrency)
            .map(|i| format!("{name}-{i}"))
            .collect()
    };
    for s in &slots {
        if queue.agent_alive(s).await? {
            anyhow::bail!(
                "another agent with consumer name `{s}` is alive (heartbeat key present); give each agent a unique {}",
                env::AGENT_NAME
            );
        }
    }
    std::fs::create_dir_all(&cfg.workspace_dir)
        .with_context(|| format!("creating workspace dir {}", cfg.workspace_dir.display()))?;
    std::fs::create_dir_all(cfg.cache_dir.join("cargo"))
        .with_context(|| format!("creating cache dir {}", cfg.cache_dir.display()))?;
    let token = cfg.git_token()?;
    let shared = Arc::new(Shared {
        policy: git::UrlPolicy::from_lists(&cfg.allowed_schemes, &cfg.allowed_hosts),
        creds: git::Credentials {
            username: cfg.git_username.clone(),
            token: token.clone(),
        },
        masker: Masker::new(token),
        cfg,
        queue,
        running: Mutex::new(HashMap::new()),
        jobs_done: AtomicU64::new(0),
    });
    tracing::info!(agent = %name, slots = slots.len(), once = shared.cfg.once, "agent started");
    let cancel_task = tokio::spawn(cancel_listener(shared.clone()));
    let mut workers = Vec::new();
    for slot in slots {
        workers.push(tokio::spawn(worker(shared.clone(), slot, shutdown.clone())));
    }
    let mut result = Ok(());
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(anyhow::anyhow!("worker panicked: {e}")),
        }
    }
    cancel_task.abort();
    tracing::info!(agent = %name, jobs = shared.jobs_done.load(Ordering::Relaxed), "agent stopped");
    result
}

pub(crate) async fn connect_with_backoff(
    url: &str,
    qcfg: QueueConfig,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Queue>> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Queue::connect(url, qcfg.clone()).await {
            Ok(q) => return Ok(Some(q)),
            Err(QueueError::Redis(e))
                if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() =>
            {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unreachable; retrying");
            }
            Err(e) => return Err(e).context("connecting to redis"),
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

pub(crate) async fn cancel_listener(shared: Arc<Shared>) {
    use futures::StreamExt;
    loop {
        match shared.queue.pubsub().await {
            Ok(mut ps) => {
                if ps
                    .subscribe(raibid_core::contract::keys::CANCEL_CHANNEL)
                    .await
                    .is_ok()
                {
                    let mut msgs = ps.on_message();
                    while let Some(m) = msgs.next().await {
                        let id: String = m.get_payload().unwrap_or_default();
                        if let Ok(map) = shared.running.lock() {
                            if let Some(tx) = map.get(&id) {
                                tracing::info!(job = %id, "cancel requested");
                                let _ = tx.send(Stop::Cancel);
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cancel channel unavailable; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn worker(
    shared: Arc<Shared>,
    slot: String,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let cfg = &shared.cfg;
    let block = Duration::from_millis(cfg.block_ms.max(1));
    let idle_deadline = Instant::now() + Duration::from_secs(cfg.idle_timeout_secs);
    let ttl = Duration::from_secs(cfg.lease_secs);
    let mut con = None;
    let mut delay = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if cfg.once && Instant::now() >= idle_deadline {
            tracing::info!(agent = %slot, "no job within the idle timeout; exiting");
            break;
        }
        if con.is_none() {
            match shared.queue.blocking_connection(block).await {
                Ok(c) => con = Some(c),
                Err(e) => {
                    tracing::warn!(agent = %slot, error = %e, "redis unreachable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let done = shared.jobs_done.load(Ordering::Relaxed);
        if let Err(e) = shared.queue.heartbeat(&slot, None, done, ttl).await {
            tracing::warn!(agent = %slot, error = %e, "heartbeat failed");
        }
        let Some(c) = con.as_mut() else { continue };
        let claim = match shared.queue.claim_next(c, &slot, block).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(agent = %slot, error = %e, "claim failed; reconnecting");
                con = None;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let Some(claim) = claim else { continue };
        let id = claim.job.id.clone();
        tracing::info!(agent = %slot, job = %id, attempt = claim.job.attempt, "claimed");
        run_job(&shared, &slot, claim, shutdown.clone()).await;
        shared.jobs_done.fetch_add(1, Ordering::Relaxed);
        if cfg.once {
            break;
        }
    }
    if let Err(e) = shared.queue.deregister(&slot).await {
        tracing::warn!(agent = %slot, error = %e, "could not deregister");
    }
    Ok(())
}
