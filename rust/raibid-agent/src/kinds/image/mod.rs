//! Image jobs with Buildah, unprivileged: clone, then the phases `building` (`buildah build --layers
//! --isolation chroot`), `testing` (`buildah from` + `buildah run` of each test command) and
//! `publishing` (`buildah push` of each tag, digest recorded). Each phase is a step of the job whose name
//! is the phase, so every log line carries its phase; the job's status is the phase while it runs.
//!
//! Atomic from the outside: nothing is pushed unless build and tests succeeded. A cancel, timeout,
//! lease loss or shutdown kills the Buildah process tree; working containers are removed after every
//! job (under the storage lock, so none of another job's). Job images stay as layer cache, bounded by
//! size and age (`storage::gc`); `cleanup` removes one job's image.
//!
//! `config` (options), `buildah` (argv, process trees), `storage` (lock, GC, cleanup), `auth` (0600
//! files for credentials and secrets).

pub mod auth;
pub mod buildah;
pub mod config;
pub mod reuse;
pub mod storage;

pub use buildah::Buildah;
pub use config::ImageConfig;

use super::{CacheUse, Capabilities, ConfigOutcome, ConfigStep, HandOver, Kind, Privileges};
use crate::ctx::{End, JobCtx, Workspace};
use crate::process::StepEnd;
use crate::stop::{Stop, LOST, RELEASED};
use chrono::Utc;
use raibid_core::contract::env;
use raibid_core::image::{
    local_reference, ImageJob, Phase, PhaseTime, Pushed, DEFAULT_CONTAINERFILES,
};
use raibid_core::job::{JobKind, Status};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The outcome of a phase that did not succeed.
type Failure = (Status, String);

/// The `image` kind.
pub(crate) struct Image;

/// What the config phase decided: everything that can be decided before building.
pub(crate) struct Plan {
    img: ImageJob,
    b: Buildah,
    /// One image job at a time per storage: then every working container in it is this job's.
    lock: storage::StorageLock,
    private: PathBuf,
    context: PathBuf,
    containerfile: PathBuf,
    secret_args: Vec<String>,
    authfile: Option<PathBuf>,
    registry: Option<String>,
    tags: Vec<String>,
}

impl Kind for Image {
    type Plan = Plan;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: JobKind::Image,
            privileges: Privileges::RootlessBuildah,
            caches: &[CacheUse::GitMirror, CacheUse::BuildahStorage],
            gpu: false,
            // An image job builds the commit as pushed (ADR 0006).
            patch: false,
            config_step: ConfigStep::OnFailure,
        }
    }

    /// Where the image may go is checked before a `.raibid.yaml` hand-over (again at submit, and
    /// again by the image agent against its own configuration).
    fn admit(&self, ctx: &JobCtx<'_>, h: &HandOver) -> Result<(), String> {
        let Some(req) = &h.image else {
            return Err("no image request".into());
        };
        ctx.shared
            .cfg
            .kind_options
            .image
            .policy()
            .check(req, &ctx.claim.job.source.repo_url)
            .map_err(|e| e.to_string())
    }

    async fn config(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace) -> ConfigOutcome<Plan> {
        match config(ctx, ws).await {
            Ok(plan) => ConfigOutcome::Run(plan),
            Err(msg) => ConfigOutcome::Fail(msg),
        }
    }

    async fn run(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace, plan: Plan) -> End {
        run(ctx, &ws.checkout(), plan).await
    }

    async fn cleanup(&self, dir: &Path) {
        let _ = tokio::fs::remove_dir_all(private_dir(dir)).await;
    }
}

/// The job's private directory (auth file, secrets, digest files): beside the workspace, never in the
/// build context.
fn private_dir(ws: &Path) -> PathBuf {
    ws.with_extension("image")
}

fn create_private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

/// Resolve `rel` below the workspace, refusing anything that leaves it (symlinks included).
fn inside(ws: &Path, rel: &str) -> Result<PathBuf, String> {
    let root = ws.canonicalize().map_err(|e| format!("workspace: {e}"))?;
    let p = root
        .join(rel)
        .canonicalize()
        .map_err(|_| format!("`{rel}` does not exist in the repository"))?;
    if !p.starts_with(&root) {
        return Err(format!("`{rel}` points outside the repository"));
    }
    Ok(p)
}

/// The config phase: the image request, the registry, the credentials, the secrets, the
/// Containerfile and the context, then the storage lock. `Err`: the job fails in its config step.
async fn config(ctx: &mut JobCtx<'_>, ws: &Workspace) -> Result<Plan, String> {
    let Some(img) = ctx.claim.job.image.clone() else {
        return Err("an image job needs an `image` request".into());
    };
    let checkout = ws.checkout();
    let ws_root = checkout.as_path();
    let private = private_dir(&ws.dir);
    let _ = tokio::fs::remove_dir_all(&private).await;
    if let Err(e) = create_private_dir(&private) {
        return Err(format!("cannot create {}: {e}", private.display()));
    }
    let b = Buildah::under(
        &ctx.shared.cfg.cache_dir,
        &ctx.shared.cfg.kind_options.image,
    );
    let req = img.request.clone();
    let icfg = ctx.shared.cfg.kind_options.image.clone();
    // Checked at submit and at the hand-over already; here again against this agent's configuration
    // (the registry its credentials belong to, the reserved namespaces, the repository's owner).
    icfg.policy()
        .check(&req, &ctx.claim.job.source.repo_url)
        .map_err(|e| e.to_string())?;
    // Everything that can be decided before building is decided now: the registry, the credentials,
    // the secrets, the Containerfile and the context.
    let registry = if req.publish {
        match req.registry.clone().or_else(|| icfg.registry.clone()) {
            Some(r) if raibid_core::image::valid_registry(&r) => Some(r),
            Some(r) => {
                return Err(format!(
                    "the configured registry `{r}` is not host[:port][/namespace]"
                ))
            }
            None => {
                return Err(format!("publish is on but no registry is configured (set {} on the agent, or image.registry)", env::REGISTRY))
            }
        }
    } else {
        None
    };
    let mut masked = Vec::new();
    let authfile = match &registry {
        Some(r) => {
            let (f, secrets) = auth::auth_file(&icfg, r, &private)?;
            masked.extend(secrets);
            f
        }
        None => None,
    };
    let mut secret_args = Vec::new();
    let repo = ctx.claim.job.source.repo_url.clone();
    for name in &req.secrets {
        // Only what the agent's configuration scopes to this repository (as for pipeline secrets).
        let value = if ctx.shared.scopes.allows(name, &repo) {
            std::env::var(format!("{}{name}", env::SECRET_PREFIX)).ok()
        } else {
            None
        };
        match value {
            Some(v) => {
                let f = private.join(format!("secret-{name}"));
                auth::write_private(&f, v.as_bytes())
                    .map_err(|e| format!("writing secret `{name}`: {e}"))?;
                masked.push(v);
                secret_args.push("--secret".to_string());
                secret_args.push(format!("id={name},src={}", f.display()));
            }
            None => {
                return Err(format!(
                    "secret `{name}` is not available to this repository (the agent needs {}{name} and a scope for the repository in {})",
                    env::SECRET_PREFIX,
                    env::SECRET_SCOPES
                ))
            }
        }
    }
    if let Ok(mut m) = ctx.masker.lock() {
        *m = m.with(masked);
    }
    let context_rel = req.context.clone().unwrap_or_else(|| ".".into());
    let context = match inside(ws_root, &context_rel) {
        Ok(p) if p.is_dir() => p,
        Ok(_) => return Err(format!("image.context: `{context_rel}` is not a directory")),
        Err(e) => return Err(format!("image.context: {e}")),
    };
    let containerfile = match &req.containerfile {
        Some(c) => match inside(ws_root, c) {
            Ok(p) if p.is_file() => p,
            Ok(_) => return Err(format!("image.containerfile: `{c}` is not a file")),
            Err(e) => return Err(format!("image.containerfile: {e}")),
        },
        None => {
            let found = DEFAULT_CONTAINERFILES
                .iter()
                .find_map(|n| inside(ws_root, n).ok().filter(|p| p.is_file()));
            match found {
                Some(p) => p,
                None => return Err(
                    "image.containerfile: the repository has neither Containerfile nor Dockerfile"
                        .into(),
                ),
            }
        }
    };
    let tags = req.effective_tags(
        ctx.claim.job.source.sha.as_deref(),
        &ctx.claim.job.source.git_ref,
    );
    // One image job at a time per storage: then every working container in it is this job's.
    let lock = match storage::try_lock(&b) {
        Ok(Some(l)) => l,
        Ok(None) => {
            ctx.sys(
                "building",
                "[raibid] waiting for the Buildah storage (another image job holds it)",
            )
            .await;
            let b2 = b.clone();
            match tokio::task::spawn_blocking(move || storage::lock(&b2)).await {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => return Err(format!("buildah storage lock: {e}")),
                Err(e) => return Err(format!("buildah storage lock: {e}")),
            }
        }
        Err(e) => return Err(format!("buildah storage at {}: {e}", b.root.display())),
    };
    pending_cleanups(ctx, &b).await;
    Ok(Plan {
        img,
        b,
        lock,
        private,
        context,
        containerfile,
        secret_args,
        authfile,
        registry,
        tags,
    })
}

/// The run phase: building, testing, publishing; then no working container stays behind and the
/// image cache is collected.
async fn run(ctx: &mut JobCtx<'_>, ws: &Path, plan: Plan) -> End {
    let Plan {
        mut img,
        b,
        lock,
        private,
        context,
        containerfile,
        secret_args,
        authfile,
        registry,
        tags,
    } = plan;
    let icfg = ctx.shared.cfg.kind_options.image.clone();
    let local = local_reference(&ctx.claim.job.id);
    let result = phases(
        ctx,
        &b,
        &mut img,
        Inputs {
            private: &private,
            root: ws,
            context: &context,
            containerfile: &containerfile,
            secret_args: &secret_args,
            authfile: authfile.as_deref(),
            registry: registry.as_deref(),
            tags: &tags,
            local: &local,
        },
    )
    .await;
    // Whatever happened: no working container stays behind.
    if let Err(e) = storage::remove_working_containers(&b).await {
        tracing::warn!(job = %ctx.claim.job.id, error = %e, "could not remove working containers");
    }
    let max_age = Duration::from_secs(icfg.image_cache_max_age_hours.saturating_mul(3600));
    match storage::gc(&b, icfg.image_cache_max_bytes, max_age).await {
        Ok(r) if !r.removed.is_empty() => {
            tracing::info!(removed = ?r.removed, bytes_before = r.bytes_before, bytes_after = r.bytes_after, "image cache GC")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "image cache GC failed"),
    }
    drop(lock);
    ctx.claim.job.image = Some(img);
    match result {
        Ok(()) => (Status::Succeeded, None),
        Err(None) => (LOST, None),
        Err(Some((st, reason))) if st == RELEASED => (RELEASED, Some(reason)),
        Err(Some((st, reason))) => (st, Some(reason)),
    }
}

struct Inputs<'a> {
    private: &'a Path,
    /// The checkout root.
    root: &'a Path,
    context: &'a Path,
    containerfile: &'a Path,
    secret_args: &'a [String],
    authfile: Option<&'a Path>,
    registry: Option<&'a str>,
    tags: &'a [String],
    local: &'a str,
}

/// Mark a phase's start: status, step, timestamp; false when the lease is lost.
async fn begin(ctx: &mut JobCtx<'_>, img: &mut ImageJob, p: Phase) -> bool {
    let now = Utc::now();
    *img.phases.get_mut(p) = Some(PhaseTime {
        started: Some(now),
        finished: None,
    });
    ctx.claim.job.status = p.status();
    ctx.claim.job.image = Some(img.clone());
    ctx.claim.job.begin_step(p.as_str(), now);
    ctx.update("step_started").await
}

/// Mark a phase's end; false when the lease is lost.
async fn end(
    ctx: &mut JobCtx<'_>,
    img: &mut ImageJob,
    p: Phase,
    status: &str,
    code: Option<i32>,
) -> bool {
    let now = Utc::now();
    if let Some(t) = img.phases.get_mut(p) {
        t.finished = Some(now);
    }
    if status != "succeeded" {
        img.failed_phase = Some(p);
    }
    ctx.claim.job.image = Some(img.clone());
    ctx.claim.job.end_step(status, code, now);
    ctx.update("step_finished").await
}

/// A non-success end of a Buildah call as (step status, job status, reason); `None` when the job is
/// to be left alone (lease lost) — `Some((_, RELEASED, _))` gives it back.
fn judge(
    p: Phase,
    what: &str,
    end: &StepEnd,
    tail: &[String],
    limit: Duration,
) -> Option<(&'static str, Status, String)> {
    let detail = tail.last().map(|l| format!(": {l}")).unwrap_or_default();
    let ph = p.as_str();
    Some(match end {
        StepEnd::Exited(0) => return None,
        StepEnd::Exited(c) => (
            "failed",
            Status::Failed,
            format!("{ph}: {what} exited with code {c}{detail}"),
        ),
        StepEnd::Signalled(s) => (
            "failed",
            Status::Failed,
            format!("{ph}: {what} was killed by signal {s}"),
        ),
        StepEnd::TimedOut => (
            "timed_out",
            Status::TimedOut,
            format!("{ph}: {what} timed out after {}s", limit.as_secs()),
        ),
        StepEnd::Cancelled => (
            "cancelled",
            Status::Cancelled,
            format!("{ph}: cancelled during {what}"),
        ),
        StepEnd::Released => ("cancelled", RELEASED, format!("{ph}: the agent shut down")),
        StepEnd::LeaseLost => ("cancelled", LOST, String::new()),
        StepEnd::SpawnFailed(e) => (
            "failed",
            Status::Failed,
            format!("{ph}: could not start {what}: {e} (is buildah installed?)"),
        ),
    })
}

/// Check for a stop request between calls.
fn stopped(ctx: &JobCtx<'_>, p: Phase) -> Option<(&'static str, Status, String)> {
    let ph = p.as_str();
    match ctx.stopped() {
        Stop::None => None,
        Stop::Cancel => Some(("cancelled", Status::Cancelled, format!("{ph}: cancelled"))),
        Stop::Release => Some(("cancelled", RELEASED, format!("{ph}: the agent shut down"))),
        Stop::LeaseLost => Some(("cancelled", LOST, String::new())),
    }
}

/// `Err(None)`: lease lost; `Err(Some(..))`: the job ends with this status and reason.
type PhaseResult = Result<(), Option<Failure>>;

async fn close_failed(
    ctx: &mut JobCtx<'_>,
    img: &mut ImageJob,
    p: Phase,
    (step_status, status, reason): (&'static str, Status, String),
    code: Option<i32>,
) -> PhaseResult {
    if status == LOST {
        return Err(None);
    }
    ctx.sys(p.as_str(), format!("[raibid] {reason}")).await;
    if !end(ctx, img, p, step_status, code).await {
        return Err(None);
    }
    Err(Some((status, reason)))
}

async fn phases(
    ctx: &mut JobCtx<'_>,
    b: &Buildah,
    img: &mut ImageJob,
    i: Inputs<'_>,
) -> PhaseResult {
    let req = img.request.clone();
    let icfg = ctx.shared.cfg.kind_options.image.clone();
    // building
    let p = Phase::Building;
    if !begin(ctx, img, p).await {
        return Err(None);
    }
    let iidfile = i.private.join("iid");
    // Inputs identical to an earlier successful build on this node: tag its image, skip the build.
    let started = Instant::now();
    let fingerprint = match reuse::buildah_version(b).await {
        Ok(version) => {
            let inputs = reuse::BuildInputs {
                root: i.root,
                context: i.context,
                containerfile: i.containerfile,
                target: req.target.as_deref(),
                build_args: &req.build_args,
                secrets: req
                    .secrets
                    .iter()
                    .map(|n| (n.clone(), i.private.join(format!("secret-{n}"))))
                    .collect(),
                buildah_version: &version,
                driver: &b.driver,
                commit: ctx.claim.job.source.sha.as_deref(),
            };
            match reuse::fingerprint(&inputs) {
                Ok(f) => Some(f),
                Err(e) => {
                    ctx.sys(p.as_str(), format!("[raibid] not reusing an earlier build: cannot hash the build inputs: {e}"))
                        .await;
                    None
                }
            }
        }
        Err(e) => {
            ctx.sys(
                p.as_str(),
                format!("[raibid] not reusing an earlier build: buildah --version: {e}"),
            )
            .await;
            None
        }
    };
    if let Some(fp) = &fingerprint {
        if let Some(id) = reuse::lookup(b, fp).await {
            let tag = vec!["tag".into(), id.clone(), i.local.into()];
            match b.query(&tag).await {
                Ok(_) => {
                    img.image_id = Some(id.clone());
                    ctx.sys(
                        p.as_str(),
                        format!(
                            "[raibid] build inputs identical to an earlier build on this node (fingerprint {}): reused image {id} as {}, no buildah build ({:.2}s)",
                            &fp[..16],
                            i.local,
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    .await;
                    if !end(ctx, img, p, "succeeded", Some(0)).await {
                        return Err(None);
                    }
                    return test_and_publish(ctx, b, img, i, &req, &icfg).await;
                }
                Err(e) => {
                    ctx.sys(
                        p.as_str(),
                        format!("[raibid] could not tag the earlier build {id} ({e}); building"),
                    )
                    .await;
                }
            }
        }
    }
    let mut args: Vec<String> = vec![
        "build".into(),
        "--layers".into(),
        "--isolation".into(),
        "chroot".into(),
        "--file".into(),
        i.containerfile.to_string_lossy().into_owned(),
        "--tag".into(),
        i.local.into(),
        "--iidfile".into(),
        iidfile.to_string_lossy().into_owned(),
    ];
    // No per-job `--label`: it would be a last build step that differs in every job and so is never
    // served from the layer cache (an unchanged rebuild would commit a new image every time). The job's
    // local tag (`localhost/raibid-job/<id>`) is what identifies its image.
    if let Some(t) = &req.target {
        args.push("--target".into());
        args.push(t.clone());
    }
    for (k, v) in &req.build_args {
        args.push("--build-arg".into());
        args.push(format!("{k}={v}"));
    }
    args.extend(i.secret_args.iter().cloned());
    if let Some(repo) = &icfg.cache_repo {
        args.extend([
            "--cache-from".into(),
            repo.clone(),
            "--cache-to".into(),
            repo.clone(),
        ]);
        args.extend(icfg.tls_args(repo));
        if let Some(a) = i.authfile {
            args.extend(["--authfile".into(), a.to_string_lossy().into_owned()]);
        }
    }
    args.push(i.context.to_string_lossy().into_owned());
    ctx.sys(p.as_str(), format!("$ buildah {}", shown(&args)))
        .await;
    let limit = ctx.deadline.saturating_duration_since(Instant::now());
    let run = buildah::run_logged(b.command(&args), p.as_str(), &ctx.logs, &ctx.stop, limit).await;
    if let Some(f) = judge(p, "buildah build", &run.end, &run.tail, limit) {
        let code = match run.end {
            StepEnd::Exited(c) => Some(c),
            _ => None,
        };
        return close_failed(ctx, img, p, f, code).await;
    }
    img.image_id = std::fs::read_to_string(&iidfile)
        .ok()
        .map(|s| s.trim().to_string());
    if let (Some(fp), Some(id)) = (&fingerprint, &img.image_id) {
        if let Err(e) = reuse::record(b, fp, id) {
            tracing::warn!(error = %e, "could not record the build fingerprint");
        }
    }
    ctx.sys(
        p.as_str(),
        format!(
            "[raibid] built {} ({}) in {:.2}s",
            i.local,
            img.image_id.as_deref().unwrap_or("?"),
            started.elapsed().as_secs_f64()
        ),
    )
    .await;
    if !end(ctx, img, p, "succeeded", Some(0)).await {
        return Err(None);
    }
    test_and_publish(ctx, b, img, i, &req, &icfg).await
}

/// The phases after a build (or a reused one): testing, then publishing.
async fn test_and_publish(
    ctx: &mut JobCtx<'_>,
    b: &Buildah,
    img: &mut ImageJob,
    i: Inputs<'_>,
    req: &raibid_core::image::ImageRequest,
    icfg: &ImageConfig,
) -> PhaseResult {
    // testing
    let commands = req
        .test
        .as_ref()
        .map(|t| t.commands.clone())
        .unwrap_or_default();
    if !commands.is_empty() {
        let p = Phase::Testing;
        if let Some(f) = stopped(ctx, p) {
            return Err(if f.1 == LOST { None } else { Some((f.1, f.2)) });
        }
        if !begin(ctx, img, p).await {
            return Err(None);
        }
        let phase_limit = req.test_timeout();
        let phase_deadline = (Instant::now() + phase_limit).min(ctx.deadline);
        let name = format!("raibid-test-{}", ctx.claim.job.id.to_ascii_lowercase());
        let from = vec![
            "from".into(),
            "--pull-never".into(),
            "--name".into(),
            name.clone(),
            i.local.into(),
        ];
        ctx.sys(p.as_str(), format!("$ buildah {}", shown(&from)))
            .await;
        let run = buildah::run_logged(
            b.command(&from),
            p.as_str(),
            &ctx.logs,
            &ctx.stop,
            phase_deadline.saturating_duration_since(Instant::now()),
        )
        .await;
        if let Some(f) = judge(p, "buildah from", &run.end, &run.tail, phase_limit) {
            let code = match run.end {
                StepEnd::Exited(c) => Some(c),
                _ => None,
            };
            return close_failed(ctx, img, p, f, code).await;
        }
        let env = req.test.as_ref().map(|t| t.env.clone()).unwrap_or_default();
        for (n, c) in commands.iter().enumerate() {
            if let Some(f) = stopped(ctx, p) {
                return close_failed(ctx, img, p, f, None).await;
            }
            let mut args: Vec<String> = vec!["run".into(), "--isolation".into(), "chroot".into()];
            if !icfg.test_network {
                args.extend(["--network".into(), "none".into()]);
            }
            for (k, v) in &env {
                args.push("--env".into());
                args.push(format!("{k}={v}"));
            }
            args.push("--".into());
            args.push(name.clone());
            args.extend(c.argv());
            ctx.sys(p.as_str(), format!("$ {}", c.display())).await;
            let remaining = phase_deadline.saturating_duration_since(Instant::now());
            let run = buildah::run_logged(
                b.command(&args),
                p.as_str(),
                &ctx.logs,
                &ctx.stop,
                remaining,
            )
            .await;
            let what = format!("test command {} (`{}`)", n + 1, c.display());
            if let Some(f) = judge(p, &what, &run.end, &[], phase_limit) {
                let code = match run.end {
                    StepEnd::Exited(c) => Some(c),
                    _ => None,
                };
                return close_failed(ctx, img, p, f, code).await;
            }
        }
        let _ = b.query(&["rm".into(), name]).await;
        if !end(ctx, img, p, "succeeded", Some(0)).await {
            return Err(None);
        }
    }
    // publishing: only here, after build and tests succeeded.
    if let Some(registry) = i.registry {
        let p = Phase::Publishing;
        if let Some(f) = stopped(ctx, p) {
            return Err(if f.1 == LOST { None } else { Some((f.1, f.2)) });
        }
        if !begin(ctx, img, p).await {
            return Err(None);
        }
        for (n, tag) in i.tags.iter().enumerate() {
            if let Some(f) = stopped(ctx, p) {
                return close_failed(ctx, img, p, f, None).await;
            }
            let reference = format!("{registry}/{}:{tag}", req.name);
            let digestfile = i.private.join(format!("digest-{n}"));
            let mut args: Vec<String> = vec![
                "push".into(),
                "--retry".into(),
                "1".into(),
                "--retry-delay".into(),
                "1s".into(),
                "--digestfile".into(),
                digestfile.to_string_lossy().into_owned(),
            ];
            // TLS verified unless this is the configured registry marked insecure.
            args.extend(icfg.tls_args(registry));
            if let Some(a) = i.authfile {
                args.extend(["--authfile".into(), a.to_string_lossy().into_owned()]);
            }
            args.push(i.local.into());
            args.push(format!("docker://{reference}"));
            ctx.sys(p.as_str(), format!("$ buildah {}", shown(&args)))
                .await;
            let limit = ctx.deadline.saturating_duration_since(Instant::now());
            let run =
                buildah::run_logged(b.command(&args), p.as_str(), &ctx.logs, &ctx.stop, limit)
                    .await;
            let what = format!("push of {reference}");
            if let Some((st, status, reason)) = judge(p, &what, &run.end, &run.tail, limit) {
                let code = match run.end {
                    StepEnd::Exited(c) => Some(c),
                    _ => None,
                };
                let reason = if matches!(run.end, StepEnd::Exited(_)) {
                    format!("{reason} (is the registry {registry} up and are the agent's credentials for it right?)")
                } else {
                    reason
                };
                return close_failed(ctx, img, p, (st, status, reason), code).await;
            }
            let digest = std::fs::read_to_string(&digestfile)
                .unwrap_or_default()
                .trim()
                .to_string();
            ctx.sys(p.as_str(), format!("[raibid] pushed {reference}@{digest}"))
                .await;
            img.pushed.push(Pushed { reference, digest });
        }
        if !end(ctx, img, p, "succeeded", Some(0)).await {
            return Err(None);
        }
    }
    Ok(())
}

/// An argv as shown in the log (each element quoted when it needs it; paths to secrets are not secret).
fn shown(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || "'\"$`\\;&|<>*?".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Remove the local images of jobs whose cleanup was requested since this storage last did (best
/// effort, storage lock held).
async fn pending_cleanups(ctx: &JobCtx<'_>, b: &Buildah) {
    if let Err(e) = storage::run_cleanups(b, &ctx.shared.queue).await {
        tracing::warn!(error = %e, "image cleanup requests not handled");
    }
}

/// `raibid-agent --image-gc`: pending cleanups, then the size/age GC; prints what it did.
pub async fn gc_command(
    cache_dir: &Path,
    icfg: &ImageConfig,
    queue: Option<&raibid_core::queue::Queue>,
) -> anyhow::Result<()> {
    let b = Buildah::under(cache_dir, icfg);
    let bc = b.clone();
    let _lock = tokio::task::spawn_blocking(move || storage::lock(&bc)).await??;
    if let Some(q) = queue {
        for id in storage::run_cleanups(&b, q)
            .await
            .map_err(anyhow::Error::msg)?
        {
            println!("removed the image of job {id}");
        }
    }
    storage::remove_working_containers(&b)
        .await
        .map_err(anyhow::Error::msg)?;
    let r = storage::gc(
        &b,
        icfg.image_cache_max_bytes,
        Duration::from_secs(icfg.image_cache_max_age_hours.saturating_mul(3600)),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    for n in &r.removed {
        println!("removed {n}");
    }
    println!(
        "buildah storage {}: {} bytes before, {} bytes after",
        b.root.display(),
        r.bytes_before,
        r.bytes_after
    );
    Ok(())
}
