//! The Rust kind (`rust`): in its config phase the job's `.raibid.yaml` (or the default cargo pipeline)
//! is read, a pipeline asking for another kind is handed over (`image:`, `gpu: true`), the secrets the
//! repository may have are resolved, and the cache key is computed with the slot's target directory
//! prepared; then each step runs in the sandbox (ADR 0011) with the node's caches (ADR 0012): the
//! checkout, its repository's `CARGO_HOME` and the target directory writable, its mirror read-only.
//!
//! The GPU kind runs the same pipeline with its devices added (`StepExtras`).

use super::{CacheUse, Capabilities, ConfigOutcome, ConfigStep, HandOver, Kind, Privileges};
use crate::cache::key;
use crate::cache::slots::JobCache;
use crate::ctx::{End, JobCtx, Workspace};
use crate::process::{run_step, StepEnd, StepIo, StepSpec};
use crate::stop::{Stop, LOST, RELEASED};
use chrono::Utc;
use raibid_core::contract::env;
use raibid_core::job::{JobKind, Status};
use raibid_core::pipeline::{Pipeline, PIPELINE_FILE};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The caches a cargo pipeline uses.
pub(crate) const CARGO_CACHES: &[CacheUse] = &[
    CacheUse::GitMirror,
    CacheUse::TargetSlot,
    CacheUse::CargoHome,
];

/// The `rust` kind.
pub(crate) struct Rust;

/// What the config phase decided: the pipeline, and what every step gets besides it.
pub(crate) struct Plan {
    pub(crate) pipeline: Pipeline,
    pub(crate) extras: StepExtras,
}

/// What a kind adds to every step of a cargo pipeline (the GPU kind: its device nodes and the
/// visible-devices variables).
#[derive(Debug, Clone, Default)]
pub(crate) struct StepExtras {
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dev: Vec<PathBuf>,
}

impl Kind for Rust {
    type Plan = Plan;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: JobKind::Rust,
            privileges: Privileges::SandboxedSteps,
            caches: CARGO_CACHES,
            gpu: false,
            patch: true,
            config_step: ConfigStep::Always,
        }
    }

    async fn config(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace) -> ConfigOutcome<Plan> {
        config(ctx, ws, StepExtras::default()).await
    }

    async fn run(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace, plan: Plan) -> End {
        run(ctx, &ws.checkout(), plan).await
    }
}

/// The config phase of a cargo pipeline (the `rust` and `gpu` kinds).
pub(crate) async fn config(
    ctx: &mut JobCtx<'_>,
    ws: &mut Workspace,
    extras: StepExtras,
) -> ConfigOutcome<Plan> {
    let checkout = ws.checkout();
    let pipeline = match load_pipeline(&checkout) {
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
        Err(e) => return ConfigOutcome::Fail(e),
    };
    if let Some(req) = pipeline.image.clone() {
        return ConfigOutcome::HandOver(Box::new(HandOver {
            to: JobKind::Image,
            pipeline: pipeline.name.clone(),
            asked_by: "has `image:`",
            image: Some(req),
        }));
    }
    if pipeline.gpu && ctx.claim.job.kind == JobKind::Rust {
        return ConfigOutcome::HandOver(Box::new(HandOver {
            to: JobKind::Gpu,
            pipeline: pipeline.name.clone(),
            asked_by: "has `gpu: true`",
            image: None,
        }));
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
                return ConfigOutcome::Fail(format!(
                    "secret `{name}` is not available to this repository (the agent needs {}{name} and a scope for the repository in {})",
                    env::SECRET_PREFIX,
                    env::SECRET_SCOPES
                ));
            }
        }
    }
    if let Ok(mut m) = ctx.masker.lock() {
        *m = m.with(secrets.iter().map(|(_, v)| v.clone()));
    }
    ctx.secrets = secrets;
    ctx.claim.job.pipeline = Some(pipeline.name.clone());
    ctx.deadline = Instant::now() + pipeline.timeout;
    prepare_target(ctx, &pipeline, &checkout, &mut ws.cache, &extras).await;
    ConfigOutcome::Run(Plan { pipeline, extras })
}

/// Run the pipeline's steps, one after the other, each in the sandbox.
pub(crate) async fn run(ctx: &mut JobCtx<'_>, ws: &Path, plan: Plan) -> End {
    let Plan { pipeline, extras } = plan;
    // The repository's own CARGO_HOME (see `job_paths`).
    let _ = crate::cache::mkdirs(&job_paths(ctx).cargo_home, ctx.shared.step_user.as_ref());
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
        let env = step_env(ctx, &pipeline, step, &extras);
        let view = step_view(ctx, ws, &extras);
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
        let io = StepIo {
            logs: &ctx.logs,
            budget: &ctx.budget,
            stop: &ctx.stop,
            marker: &ctx.claim.job.id,
        };
        let end = run_step(ctx.shared.sandbox.as_ref(), spec, io).await;
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

/// After the config step: compute the cache key and make sure the slot has its target directory.
async fn prepare_target(
    ctx: &mut JobCtx<'_>,
    pipeline: &Pipeline,
    ws: &Path,
    jc: &mut JobCache,
    extras: &StepExtras,
) {
    let Some(first) = pipeline.steps.first() else {
        return;
    };
    let t = Instant::now();
    let base = step_env(ctx, pipeline, first, extras);
    let view = step_view(ctx, ws, extras);
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
    all.extend(
        ctx.claim
            .job
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let k = key::key(&jc.repo_id, &vv, &all);
    let sink = ctx.sys_sink("config");
    let limits = ctx.git_limits(ctx.deadline);
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
pub(crate) fn step_view(ctx: &JobCtx<'_>, ws: &Path, extras: &StepExtras) -> crate::sandbox::View {
    let p = job_paths(ctx);
    let mut rw = vec![ws.to_path_buf(), p.cargo_home];
    rw.extend(p.target);
    crate::sandbox::View {
        cwd: ws.to_path_buf(),
        rw,
        ro: vec![p.mirror],
        // Only what the kind adds (a GPU job: the agent's GPU device nodes), nothing else of /dev.
        dev: extras.dev.clone(),
    }
}

pub(crate) fn step_env(
    ctx: &JobCtx<'_>,
    pipeline: &Pipeline,
    step: &raibid_core::pipeline::Step,
    extras: &StepExtras,
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
    env.extend(extras.env.iter().cloned());
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
    // A schedule's pipeline variant (issue 22 §3) overrides the pipeline's env; secrets still win.
    let variant = job
        .env
        .iter()
        .filter(|(k, _)| raibid_core::schedule::variant_key_allowed(k));
    for (k, v) in pipeline
        .env
        .iter()
        .chain(step.env.iter())
        .chain(variant)
        .chain(ctx.secrets.iter().map(|(k, v)| (k, v)))
    {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}
