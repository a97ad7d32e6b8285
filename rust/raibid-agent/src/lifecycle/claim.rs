//! The claim loop (the lifecycle's first phase): one worker per slot blocked on XREADGROUP on its
//! kinds' streams, the agent's start-up (what the served kinds' capabilities need: a GPU probe, a
//! sandbox), and the cancel listener.

use super::run_job;
use crate::config::AgentConfig;
use crate::ctx::Shared;
use crate::git;
use crate::isolation;
use crate::masking::Masker;
use crate::stop::Stop;
use anyhow::Context;
use raibid_core::contract;
use raibid_core::contract::env;
use raibid_core::queue::{Queue, QueueConfig, QueueError};
use raibid_core::retry::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Run the agent until `shutdown` turns true (or, with `--once`, until one job ran or the idle timeout
/// passed).
pub async fn run(cfg: AgentConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    // Same-uid processes (steps) can read neither our environment nor our memory.
    isolation::make_undumpable()?;
    let name = cfg.agent_name();
    let step_user = isolation::resolve_step_user(cfg.hardening.step_user.as_deref())?;
    let scopes = crate::secret_scopes::SecretScopes::parse(&cfg.secret_scopes()?)?;
    let redis_url = cfg.redis_url()?;
    let qcfg = cfg.queue_config()?;
    // What the served kinds declare: a GPU to probe, build steps to sandbox.
    let caps: Vec<crate::kinds::Capabilities> = qcfg
        .kinds
        .iter()
        .map(|k| crate::kinds::capabilities(*k))
        .collect();
    let queue = connect_with_backoff(&redis_url, qcfg, &shutdown).await?;
    let Some(queue) = queue else { return Ok(()) };
    if cfg.kind_options.image.image_gc {
        return crate::kinds::image::gc_command(
            &cfg.cache_dir,
            &cfg.kind_options.image,
            Some(&queue),
        )
        .await;
    }
    // `--once` is one job: one slot, whatever --concurrency says.
    let slots: Vec<String> = if cfg.concurrency == 1 || cfg.once {
        vec![name.clone()]
    } else {
        (0..cfg.concurrency)
            .map(|i| format!("{name}-{i}"))
            .collect()
    };
    isolation::prepare_private_dir(&cfg.workspace_dir, step_user.as_ref())?;
    isolation::prepare_private_dir(&cfg.cache_dir, step_user.as_ref())?;
    isolation::prepare_private_dir(&cfg.cache_dir.join("cargo"), step_user.as_ref())?;
    // A GPU agent declares the capability only once it found a GPU; without one it does not start.
    let gpu = if caps.iter().any(|c| c.gpu) {
        let g = &cfg.kind_options.gpu;
        let p = crate::gpu::probe(&g.nvidia_smi, &g.gpu_device_dir).await?;
        tracing::info!(gpus = ?p.gpus, visible = %p.visible, "GPU found");
        Some(p)
    } else {
        None
    };
    // Build steps run only in a sandbox: an agent that runs them and cannot start one does not start.
    let sandbox = if caps
        .iter()
        .any(|c| c.privileges == crate::kinds::Privileges::SandboxedSteps)
    {
        Some(
            crate::sandbox::Sandbox::probe(
                step_user.clone(),
                cfg.credential_files(),
                cfg.hardening.sandbox_shared_dirs.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let names = NameClaims::claim(&queue, &slots, Duration::from_secs(cfg.lease_secs)).await?;
    let token = cfg.git_token()?;
    let policy = git::UrlPolicy::from_lists(&cfg.allowed_schemes, &cfg.allowed_hosts);
    if token.is_some() && policy.hosts.is_empty() {
        anyhow::bail!(
            "a git token is configured but {} is empty: name the forge host(s) the token may be sent to",
            env::ALLOWED_HOSTS
        );
    }
    let shared = Arc::new(Shared {
        creds: git::Credentials {
            username: cfg.git_username.clone(),
            token: token.clone(),
            hosts: policy.hosts.clone(),
        },
        policy,
        cache: crate::cache::Cache::new(
            cfg.cache_dir.clone(),
            cfg.cache_max_bytes,
            &cfg.cache_default_branches,
        ),
        masker: Masker::new(token),
        step_user,
        sandbox,
        gpu,
        scopes,
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
    names.release().await;
    tracing::info!(agent = %name, jobs = shared.jobs_done.load(Ordering::Relaxed), "agent stopped");
    result
}

pub(crate) async fn connect_with_backoff(
    url: &str,
    qcfg: QueueConfig,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Queue>> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match Queue::connect(url, qcfg.clone()).await {
            Ok(q) => return Ok(Some(q)),
            Err(QueueError::Redis(e))
                if e.is_connection_refusal() || e.is_io_error() || e.is_timeout() =>
            {
                tracing::warn!(error = %e, "redis unreachable; retrying");
            }
            Err(e) => return Err(e).context("connecting to redis"),
        }
        if *shutdown.borrow() {
            return Ok(None);
        }
        backoff.wait().await;
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
                    backoff.wait().await;
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
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
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

/// The agent's consumer names, each claimed atomically (`SET NX` with a TTL under
/// `raibid:agent-name:{name}`), kept by a refresher every third of the lease and released on exit.
pub(crate) struct NameClaims {
    queue: Queue,
    names: Vec<String>,
    token: String,
    keeper: tokio::task::JoinHandle<()>,
}

const REFRESH_CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0";

const RELEASE_CLAIM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

impl NameClaims {
    pub(crate) async fn claim(
        queue: &Queue,
        names: &[String],
        ttl: Duration,
    ) -> anyhow::Result<NameClaims> {
        let token = format!(
            "{}-{}-{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let mut con = queue.redis();
        let mut claimed = Vec::new();
        for n in names {
            // Redis may be restarting: retry connection errors (the agent starts once it is back).
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            let ok: Option<String> = loop {
                let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
                    .arg(contract::agent_name_claim_key(n))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut con)
                    .await;
                match r {
                    Ok(v) => break v,
                    Err(e)
                        if e.is_connection_refusal()
                            || e.is_io_error()
                            || e.is_timeout()
                            || e.is_connection_dropped() =>
                    {
                        tracing::warn!(error = %e, "redis unreachable while claiming the agent name; retrying");
                        backoff.wait().await;
                    }
                    Err(e) => return Err(e).context("claiming the agent name"),
                }
            };
            if ok.is_none() {
                let partial = NameClaims {
                    queue: queue.clone(),
                    names: claimed,
                    token: token.clone(),
                    keeper: tokio::spawn(async {}),
                };
                partial.release().await;
                anyhow::bail!(
                    "another agent with consumer name `{n}` is alive (its name claim {} is held); give each agent a unique {}",
                    contract::agent_name_claim_key(n),
                    env::AGENT_NAME
                );
            }
            claimed.push(n.clone());
        }
        let keeper = {
            let (queue, names, token) = (queue.clone(), claimed.clone(), token.clone());
            tokio::spawn(async move {
                let script = redis::Script::new(REFRESH_CLAIM);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let mut con = queue.redis();
                    for n in &names {
                        let r: redis::RedisResult<i64> = script
                            .key(contract::agent_name_claim_key(n))
                            .arg(&token)
                            .arg(ttl.as_millis() as u64)
                            .invoke_async(&mut con)
                            .await;
                        match r {
                            Ok(0) => {
                                tracing::error!(agent = %n, "another process holds this agent's name claim")
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(agent = %n, error = %e, "could not refresh the name claim")
                            }
                        }
                    }
                }
            })
        };
        Ok(NameClaims {
            queue: queue.clone(),
            names: claimed,
            token,
            keeper,
        })
    }

    pub(crate) async fn release(self) {
        self.keeper.abort();
        let script = redis::Script::new(RELEASE_CLAIM);
        let mut con = self.queue.redis();
        for n in &self.names {
            let r: redis::RedisResult<i64> = script
                .key(contract::agent_name_claim_key(n))
                .arg(&self.token)
                .invoke_async(&mut con)
                .await;
            if let Err(e) = r {
                tracing::warn!(agent = %n, error = %e, "could not release the name claim");
            }
        }
    }
}
