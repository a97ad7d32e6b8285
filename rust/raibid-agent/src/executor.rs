//! What a job runs: clone, config (the pipeline), then each step.

use crate::git;
use crate::process::{run_step, StepEnd};
use crate::runner::JobCtx;
use crate::{Stop, LOST, RELEASED};
use chrono::Utc;
use raibid_core::contract::env;
use raibid_core::job::Status;
use raibid_core::pipeline::{Pipeline, PIPELINE_FILE};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::watch;

/// Run clone, config and the pipeline. Returns the final status, or `LOST` (lease lost: write nothing)
/// or `RELEASED` (shutdown: give the job back).
pub(crate) async fn execute(
    ctx: &mut JobCtx<'_>,
    ws: &Path,
    _shutdown: watch::Receiver<bool>,
) -> (Status, Option<String>) {
    let now = Utc::now();
    ctx.claim.job.timestamps.started = Some(now);
    let _ = tokio::fs::remove_dir_all(ws).await;
    // clone
    ctx.claim.job.begin_step("clone", Utc::now());
    if !ctx.update("step_started").await {
        return (LOST, None);
    }
    let (ok, msg) = clone(ctx, ws).await;
    ctx.claim
        .job
        .end_step(if ok { "succeeded" } else { "failed" }, None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
    if !ok {
        return (Status::Failed, Some(format!("clone: {msg}")));
    }
    if let Some(end) = crate::patch::apply_step(ctx, ws).await {
        return end;
    }
    // config
    ctx.claim.job.begin_step("config", Utc::now());
    ctx.update("step_started").await;
    let pipeline = match load_pipeline(ws) {
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
    let mut secrets = Vec::new();
    for name in &pipeline.secrets {
        match std::env::var(format!("{}{name}", env::SECRET_PREFIX)) {
            Ok(v) => secrets.push((name.clone(), v)),
            Err(_) => {
                let msg = format!(
                    "secret `{name}` is not available to this agent (set {}{name})",
                    env::SECRET_PREFIX
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
    ctx.claim.job.end_step("succeeded", None, Utc::now());
    if !ctx.update("step_finished").await {
        return (LOST, None);
    }
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
        let remaining = ctx.deadline.saturating_duration_since(Instant::now());
        let (limit, limit_is_step) = match step.timeout {
            Some(t) if t < remaining => (t, true),
            _ => (remaining, false),
        };
        let started = Instant::now();
        let end = run_step(ctx, &step.name, &step.run, ws, &env, limit).await;
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

pub(crate) async fn clone(ctx: &mut JobCtx<'_>, ws: &Path) -> (bool, String) {
    let src = ctx.claim.job.source.clone();
    if let Err(e) = ctx.shared.policy.check(&src.repo_url) {
        ctx.sys("clone", format!("[raibid] refused: {e}")).await;
        return (false, e);
    }
    if let Err(e) = tokio::fs::create_dir_all(ws).await {
        return (false, format!("cannot create workspace: {e}"));
    }
    let creds = &ctx.shared.creds;
    let url = src.repo_url.as_str();
    let run = |args: Vec<String>| async move {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        git::git(ws, &a, creds, Some(url)).await
    };
    let mut steps: Vec<Vec<String>> = vec![
        vec!["init".into(), "-q".into()],
        vec!["remote".into(), "add".into(), "origin".into(), url.into()],
    ];
    let want = src.sha.clone().unwrap_or_else(|| src.git_ref.clone());
    steps.push(vec![
        "fetch".into(),
        "-q".into(),
        "--depth=1".into(),
        "--no-tags".into(),
        "origin".into(),
        "--".into(),
        want.clone(),
    ]);
    for (i, args) in steps.iter().enumerate() {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a == url {
                    git::redact_url(a)
                } else {
                    a.clone()
                }
            })
            .collect();
        ctx.sys("clone", format!("$ git {}", shown.join(" "))).await;
        match run(args.clone()).await {
            Ok(out) => {
                for l in &out.lines {
                    ctx.sys("clone", l.clone()).await;
                }
                if !out.ok {
                    if i == 2 && src.sha.is_some() {
                        // The server does not serve arbitrary shas shallowly: fetch the ref and find the commit.
                        let args = vec![
                            "fetch".into(),
                            "-q".into(),
                            "--no-tags".into(),
                            "origin".into(),
                            "--".into(),
                            src.git_ref.clone(),
                        ];
                        ctx.sys("clone", format!("$ git {}", args.join(" "))).await;
                        match run(args).await {
                            Ok(o) if o.ok => break,
                            Ok(o) => {
                                for l in &o.lines {
                                    ctx.sys("clone", l.clone()).await;
                                }
                                return (false, format!("could not fetch {}", src.git_ref));
                            }
                            Err(e) => return (false, format!("git: {e}")),
                        }
                    }
                    let hint = match i {
                        2 => crate::patch::branches_hint(ctx, ws)
                            .await
                            .map(|b| {
                                format!("; ref `{want}` not found in {}; {b}", git::redact_url(url))
                            })
                            .unwrap_or_default(),
                        _ => String::new(),
                    };
                    return (
                        false,
                        format!(
                            "`git {}` failed{hint}",
                            args.first().map(String::as_str).unwrap_or("")
                        ),
                    );
                }
            }
            Err(e) => return (false, format!("cannot run git: {e}")),
        }
    }
    let target = src.sha.clone().unwrap_or_else(|| "FETCH_HEAD".into());
    let args = vec![
        "checkout".into(),
        "-q".into(),
        "--detach".into(),
        target,
        "--".into(),
    ];
    ctx.sys("clone", format!("$ git {}", args.join(" "))).await;
    match run(args).await {
        Ok(o) if o.ok => {}
        Ok(o) => {
            for l in &o.lines {
                ctx.sys("clone", l.clone()).await;
            }
            return (false, "commit not found".into());
        }
        Err(e) => return (false, format!("git: {e}")),
    }
    if let Ok(o) = run(vec!["rev-parse".into(), "HEAD".into()]).await {
        if o.ok {
            ctx.sys("clone", format!("[raibid] at commit {}", o.stdout))
                .await;
            if ctx.claim.job.source.sha.is_none() {
                ctx.claim.job.source.sha = Some(o.stdout);
            }
        }
    }
    (true, String::new())
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
    let cargo_home = ctx.shared.cfg.cache_dir.join("cargo");
    env.push((
        "CARGO_HOME".into(),
        cargo_home.to_string_lossy().into_owned(),
    ));
    if std::env::var_os("RUSTUP_HOME").is_none() {
        if let Some(home) = std::env::var_os("HOME") {
            let r = PathBuf::from(home).join(".rustup");
            if r.exists() {
                env.push(("RUSTUP_HOME".into(), r.to_string_lossy().into_owned()));
            }
        }
    }
    env.push(("CARGO_TERM_COLOR".into(), "never".into()));
    env.push(("CI".into(), "true".into()));
    env.push(("RAIBID_JOB_ID".into(), job.id.clone()));
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
