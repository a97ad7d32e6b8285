//! What a job runs: clone, config (the pipeline), then each step.

use crate::cache::{key, mirror, slots, CloneError, JobCache, Sink};
use crate::git;
use crate::process::{run_step, StepEnd, StepSpec};
use crate::runner::JobCtx;
use crate::{Stop, LOST, RELEASED};
use chrono::Utc;
use raibid_core::cache_stats::CacheStats;
use raibid_core::contract::env;
use raibid_core::job::Status;
use raibid_core::pipeline::{Pipeline, PIPELINE_FILE};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Run clone, config and the pipeline. Returns the final status, or `LOST` (lease lost: write nothing)
/// or `RELEASED` (shutdown: give the job back).
pub(crate) async fn execute(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
    shutdown: watch::Receiver<bool>,
) -> (Status, Option<String>) {
    let mut cache: Option<JobCache> = None;
    let outcome = execute_in_slot(ctx, ws, shutdown, &mut cache).await;
    if let Some(jc) = cache {
        finish_cache(ctx, jc).await;
    }
    outcome
}

async fn execute_in_slot(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
    _shutdown: watch::Receiver<bool>,
    cache: &mut Option<JobCache>,
) -> (Status, Option<String>) {
    if ctx.claim.job.kind == raibid_core::job::JobKind::Image {
        return crate::image::execute(ctx, ws, cache).await;
    }
    if ctx.claim.job.kind == raibid_core::job::JobKind::Gpu {
        // Which GPU runs it: in the record from the start (get_job, the timeline, raibid-top).
        ctx.claim.job.gpu = ctx.shared.gpu.as_ref().map(|g| g.gpus.clone());
    }
    let now = Utc::now();
    ctx.claim.job.timestamps.started = Some(now);
    let _ = tokio::fs::remove_dir_all(ws).await;
    // clone
    ctx.claim.job.begin_step("clone", Utc::now());
    if !ctx.update("step_started").await {
        return (LOST, None);
    }
    let (st, failure) = match clone(ctx).await {
        Ok(jc) => {
            *cache = Some(jc);
            ("succeeded", None)
        }
        Err(end) => end,
    };
    ctx.claim.job.end_step(st, None, Utc::now());
    if let Some((status, reason)) = failure {
        if status == LOST {
            return (LOST, None);
        }
        if !ctx.update("step_finished").await {
            return (LOST, None);
        }
        return (status, reason);
    }
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    // From here on the job works in its slot's stable checkout.
    let slot_src = match cache.as_ref() {
        Some(jc) => jc.slot.src(),
        None => ws.to_path_buf(),
    };
    let ws = slot_src.as_path();
    if let Some(end) = crate::patch::apply_step(ctx, ws).await {
        return end;
    }
    // config
    ctx.claim.job.begin_step("config", Utc::now());
    ctx.update("step_started").await;
    let mut pipeline = match load_pipeline(ws) {
        Ok((p, from_file)) => {
            ctx.sys(
                "config",
                if from_file {
                    format!(
                        "[raibid] pipeline `{}` from {PIPELINE_FILE}: {} step(s)",
                        p.name,
                        p.steps.len()
                    )
                } else {
                    format!(
                        "[raibid] no {PIPELINE_FILE}; default Rust pipeline: {} step(s)",
                        p.steps.len()
                    )
                },
            )
            .await;
            p
        }
        Err(e) => {
            ctx.sys("config", format!("[raibid] {e}")).await;
            ctx.claim.job.end_step("failed", None, Utc::now());
            ctx.update("step_finished").await;
            return (Status::Failed, Some(format!("config: {e}")));
        }
    };
    if let Some(req) = pipeline.image.clone() {
        return crate::image::hand_over(ctx, &pipeline.name, req).await;
    }
    if pipeline.gpu && ctx.claim.job.kind == raibid_core::job::JobKind::Rust {
        return crate::handover::hand_over(
            ctx,
            &pipeline.name,
            raibid_core::job::JobKind::Gpu,
            |_| {},
        )
        .await;
    }
    // Build matrix (issue 23 §1): fan out into cells, or take this cell's values. One hook.
    if let Some(end) = crate::fan_out::after_config(ctx, &mut pipeline).await {
        return end;
    }
    let mut secrets = Vec::new();
    let repo = ctx.claim.job.source.repo_url.clone();
    for name in &pipeline.secrets {
        // Only what the agent's configuration scopes to this repository (a pipeline cannot ask for
        // another repository's secrets).
        let value = if ctx.shared.scopes.allows(name, &repo) {
            std::env::var(format!("{}{name}", env::SECRET_PREFIX)).ok()
        } else {
            None
        };
        match value {
            Some(v) => secrets.push((name.clone(), v)),
            None => {
                let msg = format!(
                    "secret `{name}` is not available to this repository (the agent needs {}{name} and a scope for the repository in {})",
                    env::SECRET_PREFIX,
                    env::SECRET_SCOPES
                );
                ctx.sys("config", format!("[raibid] {msg}")).await;
                ctx.claim.job.end_step("failed", None, Utc::now());
                ctx.update("step_finished").await;
                return (Status::Failed, Some(format!("config: {msg}")));
            }
        }
    }
    if let Ok(mut m) = ctx.masker.lock() {
        *m = m.with(secrets.iter().map(|(_, v)| v.clone()));
    }
    ctx.secrets = secrets;
    ctx.claim.job.pipeline = Some(pipeline.name.clone());
    ctx.deadline = Instant::now() + pipeline.timeout;
    if let Some(jc) = cache.as_mut() {
        prepare_target(ctx, &pipeline, ws, jc).await;
    }
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    // The repository's own CARGO_HOME (see `job_paths`).
    let _ = crate::cache::mkdirs(&job_paths(ctx).cargo_home, ctx.shared.step_user.as_ref());
    // steps
    for step in &pipeline.steps {
        match ctx.stopped() {
            Stop::None => {}
            Stop::Release => return (RELEASED, None),
            Stop::LeaseLost => return (LOST, None),
            Stop::Cancel => {
                return (
                    Status::Cancelled,
                    Some(format!("cancelled before step `{}`", step.name)),
                )
            }
        }
        ctx.claim.job.begin_step(&step.name, Utc::now());
        if !ctx.update("step_started").await {
            return (LOST, None);
        }
        ctx.sys(&step.name, format!("$ {}", step.run)).await;
        let env = step_env(ctx, &pipeline, step);
        let view = step_view(ctx, ws);
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let (limit, limit_is_step) = match step.timeout {
            Some(t) if t < remaining => (t, true),
            _ => (remaining, false),
        };
        let started = Instant::now();
        let spec = StepSpec {
            name: &step.name,
            script: &step.run,
            view: &view,
            env: &env,
            limit,
        };
        let end = run_step(ctx, spec).await;
        let secs = started.elapsed().as_secs_f64();
        let (st, code, result) = match end {
            StepEnd::Exited(0) => ("succeeded", Some(0), None),
            StepEnd::Exited(c) => (
                "failed",
                Some(c),
                Some((
                    Status::Failed,
                    format!("step `{}` exited with code {c}", step.name),
                )),
            ),
            StepEnd::Signalled(s) => (
                "failed",
                None,
                Some((
                    Status::Failed,
                    format!("step `{}` was killed by signal {s}", step.name),
                )),
            ),
            StepEnd::TimedOut => (
                "timed_out",
                None,
                Some((
                    Status::TimedOut,
                    if limit_is_step {
                        format!("step `{}` timed out after {}s", step.name, limit.as_secs())
                    } else {
                        format!(
                            "job timed out after {}s during step `{}`",
                            pipeline.timeout.as_secs(),
                            step.name
                        )
                    },
                )),
            ),
            StepEnd::Cancelled => (
                "cancelled",
                None,
                Some((
                    Status::Cancelled,
                    format!("cancelled during step `{}`", step.name),
                )),
            ),
            StepEnd::LeaseLost => return (LOST, None),
            StepEnd::Released => return (RELEASED, None),
            StepEnd::SpawnFailed(e) => (
                "failed",
                None,
                Some((
                    Status::Failed,
                    format!("step `{}` could not start: {e}", step.name),
                )),
            ),
        };
        ctx.sys(
            &step.name,
            format!("[raibid] step `{}` {st} in {secs:.2}s", step.name),
        )
        .await;
        ctx.claim.job.end_step(st, code, Utc::now());
        if !ctx.update("step_finished").await {
            return (LOST, None);
        }
        if let Some((status, reason)) = result {
            return (status, Some(reason));
        }
    }
    (Status::Succeeded, None)
}

pub(crate) fn load_pipeline(ws: &Path) -> Result<(Pipeline, bool), String> {
    let f = ws.join(PIPELINE_FILE);
    match std::fs::read(&f) {
        Ok(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{PIPELINE_FILE}: not UTF-8"))?;
            Pipeline::parse(&text)
                .map(|p| (p, true))
                .map_err(|e| e.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
            Pipeline::default_rust(ws.join("Cargo.lock").exists()),
            false,
        )),
        Err(e) => Err(format!("{PIPELINE_FILE}: {e}")),
    }
}

/// How the clone step ended when it did not succeed: (step status, (job status, reason)).
type CloneEnd = (&'static str, Option<(Status, Option<String>)>);

/// Clone step: update the repository's git mirror (only new objects travel), take a target slot and
/// check the commit out in the slot's stable checkout. Runs under the clone timeout, the job deadline
/// and the job's stop signal; git's process group is killed when any of them ends it.
pub(crate) async fn clone(ctx: &mut JobCtx<'_>) -> Result<JobCache, CloneEnd> {
    let src = ctx.claim.job.source.clone();
    if let Err(e) = ctx.shared.policy.check(&src.repo_url) {
        ctx.sys("clone", format!("[raibid] refused: {e}")).await;
        return Err((
            "failed",
            Some((Status::Failed, Some(format!("clone: {e}")))),
        ));
    }
    let timeout = Duration::from_secs(ctx.shared.cfg.clone_timeout_secs);
    let deadline = ctx.deadline.min(Instant::now() + timeout);
    let limits = git_limits(ctx, deadline);
    let logs = ctx.logs.clone();
    let sink = move |l: String| {
        let _ = logs.try_send(("clone".into(), "system".into(), l));
    };
    let sink: Sink<'_> = &sink;
    let cache = &ctx.shared.cache;
    let creds = &ctx.shared.creds;
    let url = src.repo_url.as_str();
    let repo_id = key::repo_id(url);
    let started = Instant::now();
    let result = async {
        let mut m = mirror::update(
            &cache.root,
            &repo_id,
            url,
            &src.git_ref,
            src.sha.as_deref(),
            creds,
            &limits,
            sink,
        )
        .await?;
        let branch = crate::fan_out::slot_branch(&ctx.claim.job, slots::branch_of(&src.git_ref));
        let (slot, slot_lock_ms) = slots::acquire(
            &cache.root,
            &repo_id,
            &git::redact_url(url),
            &branch,
            &cache.default_branches,
            &ctx.claim.job.id,
            &limits,
        )
        .await?;
        // The held slot now keeps eviction away from the mirror (see `slots::evict`).
        m.lock = None;
        if slot.recovered {
            sink(format!(
                "[raibid] slot {}: its previous job ({}) did not finish; resetting the checkout, keeping the target directory (cargo rebuilds unfinished units)",
                slot.name,
                slot.meta.job.as_deref().unwrap_or("?")
            ));
        }
        if let Err(e) = slot
            .checkout(&m.dir, &m.sha, false, creds, &limits, sink)
            .await
        {
            let CloneError::Failed(msg) = e else { return Err(e) };
            // The mirror lacks objects it claims to have: never trust it, rebuild and try once more,
            // in a new checkout (the old one's HEAD and index may name objects the new mirror lacks).
            sink(format!("[raibid] {msg}; rebuilding the mirror"));
            mirror::invalidate(&cache.root, &repo_id, &limits).await;
            let m2 = mirror::update(
                &cache.root,
                &repo_id,
                url,
                &src.git_ref,
                src.sha.as_deref(),
                creds,
                &limits,
                sink,
            )
            .await?;
            slot.checkout(&m2.dir, &m2.sha, true, creds, &limits, sink)
                .await?;
            drop(m2.lock);
            m.objects += m2.objects;
            m.bytes += m2.bytes;
            m.lock_ms += m2.lock_ms;
            m.hit = false;
        }
        Ok::<_, CloneError>((m, slot, slot_lock_ms))
    }
    .await;
    match result {
        Ok((m, slot, slot_lock_ms)) => {
            let lock_ms = m.lock_ms + slot_lock_ms;
            let stats = CacheStats {
                slot: Some(slot.label()),
                recovered: slot.recovered,
                lock_ms,
                restore_ms: (started.elapsed().as_millis() as u64).saturating_sub(lock_ms),
                mirror_hit: m.hit,
                fetched_objects: m.objects,
                fetched_bytes: m.bytes,
                ..CacheStats::default()
            };
            ctx.sys(
                "clone",
                format!("[raibid] at commit {} in slot {}", m.sha, slot.label()),
            )
            .await;
            if ctx.claim.job.source.sha.is_none() {
                ctx.claim.job.source.sha = Some(m.sha.clone());
            }
            ctx.claim.job.cache = Some(stats.clone());
            Ok(JobCache {
                repo_id,
                slot,
                key: None,
                stats,
            })
        }
        Err(CloneError::TimedOut) => {
            let secs = deadline.saturating_duration_since(started).as_secs();
            let msg = format!("clone timed out after {secs}s");
            ctx.sys("clone", format!("[raibid] {msg}")).await;
            Err(("timed_out", Some((Status::TimedOut, Some(msg)))))
        }
        Err(CloneError::Stopped) => Err(match ctx.stopped() {
            Stop::LeaseLost => ("failed", Some((LOST, None))),
            Stop::Release => ("failed", Some((RELEASED, None))),
            _ => (
                "cancelled",
                Some((
                    Status::Cancelled,
                    Some("cancelled during step `clone`".into()),
                )),
            ),
        }),
        Err(CloneError::Failed(e)) => {
            let e = match crate::patch::missing_ref_hint(ctx).await {
                Some(hint) => format!("{hint} ({e})"),
                None => e.to_string(),
            };
            ctx.sys("clone", format!("[raibid] {e}")).await;
            Err((
                "failed",
                Some((Status::Failed, Some(format!("clone: {e}")))),
            ))
        }
    }
}

/// The limits of the job's git commands: `deadline`, the job's stop signal, the step user.
pub(crate) fn git_limits(ctx: &JobCtx<'_>, deadline: Instant) -> git::Limits {
    git::Limits {
        deadline,
        stop: ctx.stop.clone(),
        user: ctx.shared.step_user.clone(),
        global_config: step_git_config(ctx),
    }
}

/// For git as the step user: a global config trusting every repository, written once per agent.
pub(crate) fn step_git_config(ctx: &JobCtx<'_>) -> Option<PathBuf> {
    ctx.shared.step_user.as_ref()?;
    let p = ctx.shared.cfg.workspace_dir.join(".raibid-step-gitconfig");
    if !p.exists() {
        let _ = std::fs::write(&p, "[safe]\n\tdirectory = *\n");
    }
    Some(p)
}

/// After the config step: compute the cache key and make sure the slot has its target directory.
async fn prepare_target(ctx: &mut JobCtx<'_>, pipeline: &Pipeline, ws: &Path, jc: &mut JobCache) {
    let Some(first) = pipeline.steps.first() else {
        return;
    };
    let t = Instant::now();
    let base = step_env(ctx, pipeline, first);
    let view = step_view(ctx, ws);
    let sandbox = ctx.shared.sandbox.clone();
    let env_for = base.clone();
    let command = move |rustc: &str| match &sandbox {
        Some(sb) => sb.command(
            &view,
            &env_for,
            std::ffi::OsStr::new(rustc),
            &[std::ffi::OsStr::new("-vV")],
        ),
        // No sandbox, no repository code: a program that is not there.
        None => tokio::process::Command::new("/nonexistent/raibid-no-sandbox"),
    };
    let vv = ctx.shared.cache.memo.rustc_vv(ws, &base, &command).await;
    let mut all = base;
    for s in &pipeline.steps {
        all.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let k = key::key(&jc.repo_id, &vv, &all);
    let logs = ctx.logs.clone();
    let sink = move |l: String| {
        let _ = logs.try_send(("config".into(), "system".into(), l));
    };
    let limits = git_limits(ctx, ctx.deadline);
    let restore = jc
        .slot
        .prepare_target(&k, &ctx.shared.cache.default_branches, &limits, &sink)
        .await;
    ctx.sys(
        "config",
        format!(
            "[raibid] cache key {k}: {restore} target directory in slot {}",
            jc.slot.label()
        ),
    )
    .await;
    jc.stats.key = Some(k.clone());
    jc.stats.restore = Some(restore);
    jc.stats.restore_ms += t.elapsed().as_millis() as u64;
    jc.key = Some(k);
    ctx.claim.job.cache = Some(jc.stats.clone());
}

/// The job is done with its slot: sizes, eviction past the cap. (Units and the node-wide counters
/// follow once the job's output is complete: `cache::record_job`.)
async fn finish_cache(ctx: &mut JobCtx<'_>, mut jc: JobCache) {
    let limits = git_limits(
        ctx,
        Instant::now() + Duration::from_secs(ctx.shared.cfg.clone_timeout_secs),
    );
    mirror::maintain(
        &ctx.shared.cache.root,
        &jc.repo_id,
        &ctx.shared.creds,
        &limits,
    )
    .await;
    let bytes = jc.slot.finish(jc.key.as_deref()).await;
    {
        let root = ctx.shared.cache.root.clone();
        let repo = jc.repo_id.clone();
        let _ = tokio::task::spawn_blocking(move || slots::record_cargo_home(&root, &repo)).await;
    }
    jc.stats.slot_bytes = Some(bytes);
    let root = ctx.shared.cache.root.clone();
    let max = ctx.shared.cache.max_bytes;
    let evicted = tokio::task::block_in_place(|| {
        slots::evict(&root, max, Some((&jc.slot, jc.key.as_deref())))
    });
    for e in evicted {
        tracing::info!(repo = %e.repo_id, slot = %e.slot, key = ?e.key, mirror = e.mirror, bytes = e.bytes, "cache: evicted");
    }
    ctx.claim.job.cache = Some(jc.stats);
}

/// The node-cache paths of a job, as the agent computes them (never from the pipeline's environment,
/// which may name anything): its repository's `CARGO_HOME` (one per repository: a step can write its
/// registry cache, so no other repository may build from it), its slot's target directory for the
/// cache key, and its repository's git mirror.
pub(crate) struct JobPaths {
    pub(crate) cargo_home: PathBuf,
    pub(crate) target: Option<PathBuf>,
    pub(crate) mirror: PathBuf,
}

pub(crate) fn job_paths(ctx: &JobCtx<'_>) -> JobPaths {
    let root = &ctx.shared.cache.root;
    let repo_id = key::repo_id(&ctx.claim.job.source.repo_url);
    let target = ctx
        .claim
        .job
        .cache
        .as_ref()
        .and_then(|c| match (&c.slot, &c.key) {
            (Some(slot), Some(key)) => {
                Some(root.join("targets").join(slot).join("target").join(key))
            }
            _ => None,
        });
    JobPaths {
        cargo_home: root.join("cargo").join(&repo_id),
        target,
        mirror: root.join("git").join(format!("{repo_id}.git")),
    }
}

/// What a step's sandbox shows of the node: the checkout, the target directory and the repository's
/// `CARGO_HOME` writable, its mirror (the checkout borrows objects from it) read-only; nothing else of
/// the caches or workspaces.
pub(crate) fn step_view(ctx: &JobCtx<'_>, ws: &Path) -> crate::sandbox::View {
    let p = job_paths(ctx);
    let mut rw = vec![ws.to_path_buf(), p.cargo_home];
    rw.extend(p.target);
    // A GPU job's steps get the agent's GPU device nodes, nothing else of /dev.
    let dev = match (&ctx.shared.gpu, ctx.claim.job.kind) {
        (Some(g), raibid_core::job::JobKind::Gpu) => g.devices.clone(),
        _ => Vec::new(),
    };
    crate::sandbox::View {
        cwd: ws.to_path_buf(),
        rw,
        ro: vec![p.mirror],
        dev,
    }
}

pub(crate) fn step_env(
    ctx: &JobCtx<'_>,
    pipeline: &Pipeline,
    step: &raibid_core::pipeline::Step,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for k in [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "USER",
    ] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.into(), v));
        }
    }
    let job = &ctx.claim.job;
    let paths = job_paths(ctx);
    env.push((
        "CARGO_HOME".into(),
        paths.cargo_home.to_string_lossy().into_owned(),
    ));
    if std::env::var_os("RUSTUP_HOME").is_none() {
        if let Some(home) = std::env::var_os("HOME") {
            let r = PathBuf::from(home).join(".rustup");
            if r.exists() {
                env.push(("RUSTUP_HOME".into(), r.to_string_lossy().into_owned()));
            }
        }
    }
    if let Some(u) = &ctx.shared.step_user {
        // The agent's HOME is not the step user's to write.
        env.retain(|(k, _)| k != "HOME" && k != "USER");
        env.push(("HOME".into(), u.home.to_string_lossy().into_owned()));
        env.push(("USER".into(), u.name.clone()));
    }
    if let Some(t) = &paths.target {
        env.push(("CARGO_TARGET_DIR".into(), t.to_string_lossy().into_owned()));
    }
    if let (Some(g), raibid_core::job::JobKind::Gpu) = (&ctx.shared.gpu, job.kind) {
        env.push(("NVIDIA_VISIBLE_DEVICES".into(), g.visible.clone()));
        env.push(("CUDA_VISIBLE_DEVICES".into(), g.visible.clone()));
    }
    env.push(("CARGO_TERM_COLOR".into(), "never".into()));
    env.push(("CI".into(), "true".into()));
    env.push(("RAIBID_JOB_ID".into(), job.id.to_string()));
    env.push(("RAIBID_ATTEMPT".into(), job.attempt.to_string()));
    env.push(("RAIBID_REPO_URL".into(), job.source.repo_url.clone()));
    env.push(("RAIBID_REF".into(), job.source.git_ref.clone()));
    env.push((
        "RAIBID_SHA".into(),
        job.source.sha.clone().unwrap_or_default(),
    ));
    env.push(("RAIBID_STEP".into(), step.name.clone()));
    for (k, v) in pipeline
        .env
        .iter()
        .chain(step.env.iter())
        .chain(ctx.secrets.iter().map(|(k, v)| (k, v)))
    {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}
