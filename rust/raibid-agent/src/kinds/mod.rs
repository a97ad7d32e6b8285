//! Job kinds: what differs between a Rust job, an image job and a GPU job. The lifecycle
//! (`crate::lifecycle`: claim and lease, workspace, source = clone + patch, config, report, cleanup,
//! final write) is the same for every job; it calls the job's kind through [`Kind`] — its
//! capabilities, its config phase (whose [`ConfigOutcome`] the lifecycle acts on) and its run phase.
//! A kind never calls back into the lifecycle: it gets the job's context (`crate::ctx`) and returns.
//! (`tests` below enforce that on the sources.)
//!
//! Adding a kind: one module here implementing [`Kind`], one line in the lifecycle's dispatch
//! (`lifecycle::execute`) and in [`capabilities`], its options (if any) in [`KindOptions`]; see
//! docs/adding-a-kind.md.

pub mod gpu;
pub mod image;
pub(crate) mod rust;

use crate::ctx::{End, JobCtx, Workspace};
use raibid_core::image::ImageRequest;
use raibid_core::job::JobKind;
use std::future::Future;
use std::path::{Path, PathBuf};

/// What a kind's processes need beyond the agent's own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    /// Repository code runs as build steps in the bubblewrap sandbox (ADR 0011): user namespaces, and
    /// an agent serving the kind does not start without a working sandbox.
    SandboxedSteps,
    /// Buildah runs rootless in its own user namespace (`--isolation chroot`, ADR 0006); repository
    /// code runs only inside Buildah's containers.
    RootlessBuildah,
}

/// A node cache a kind uses (each bounded and evicted by the agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// The repository's bare git mirror (every kind: the source phase clones through it).
    GitMirror,
    /// A cargo target slot (its stable checkout and target directory per cache key).
    TargetSlot,
    /// The repository's own `CARGO_HOME`.
    CargoHome,
    /// The Buildah storage (layers, job images).
    BuildahStorage,
}

/// Is the config step in the job's record always, or only when config fails (the image kind: its
/// phases are its steps)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStep {
    Always,
    OnFailure,
}

/// What a kind declares about itself.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub kind: JobKind,
    pub privileges: Privileges,
    pub caches: &'static [CacheUse],
    /// Its agents declare the kind only after probing a GPU at start.
    pub gpu: bool,
    /// A job of this kind may carry a patch (applied in the source phase); a hand-over of a patched
    /// job to a kind without it is refused, never silently dropped.
    pub patch: bool,
    pub config_step: ConfigStep,
}

/// How a kind's config phase ended: the transition the lifecycle takes next.
pub(crate) enum ConfigOutcome<P> {
    /// Run the kind's steps here, with this plan.
    Run(P),
    /// The pipeline asks for another kind: the lifecycle enqueues the source (with its patch) as a
    /// job of that kind and ends this one.
    HandOver(Box<HandOver>),
    /// The job fails in its config step with this message.
    Fail(String),
    // Issue 23 §1 (matrix) adds its transition here: `FanOut(..)`, one job per matrix cell, enqueued
    // by the lifecycle like a hand-over (lifecycle::execute, "config transition").
}

/// A hand-over asked for by a kind's config phase.
#[derive(Debug, Clone)]
pub(crate) struct HandOver {
    pub(crate) to: JobKind,
    /// The pipeline's name (the new job's; this one reports as `<name>-handover`).
    pub(crate) pipeline: String,
    /// Why, for the log: "has `image:`".
    pub(crate) asked_by: &'static str,
    /// The image request, for the image kind.
    pub(crate) image: Option<ImageRequest>,
}

/// One kind of job. The lifecycle calls `config` once the source is in the workspace, then (on
/// `ConfigOutcome::Run`) `run`, then `cleanup`; each returns to the lifecycle and calls nothing of it.
pub(crate) trait Kind: Sync {
    /// What the config phase hands to the run phase.
    type Plan: Send;

    fn capabilities(&self) -> Capabilities;

    /// Before the source phase (the job has its record, no workspace yet).
    fn start(&self, _ctx: &mut JobCtx<'_>) {}

    /// Read the checkout and decide: run here, hand over, or fail.
    fn config(
        &self,
        ctx: &mut JobCtx<'_>,
        ws: &mut Workspace,
    ) -> impl Future<Output = ConfigOutcome<Self::Plan>> + Send;

    /// Run the job's steps. The result is the job's end (or `LOST` / `RELEASED`).
    fn run(
        &self,
        ctx: &mut JobCtx<'_>,
        ws: &mut Workspace,
        plan: Self::Plan,
    ) -> impl Future<Output = End> + Send;

    /// Whatever happened: remove what the kind made beside the workspace.
    fn cleanup(&self, _dir: &Path) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// A job handed over to this kind: `Err` says why it is not (checked before it is enqueued).
    fn admit(&self, _ctx: &JobCtx<'_>, _h: &HandOver) -> Result<(), String> {
        Ok(())
    }
}

/// The capabilities of a kind (for the hand-over and the agent's start-up).
pub(crate) fn capabilities(kind: JobKind) -> Capabilities {
    match kind {
        JobKind::Rust => rust::Rust.capabilities(),
        JobKind::Image => image::Image.capabilities(),
        JobKind::Gpu => gpu::Gpu.capabilities(),
    }
}

/// Check a hand-over with the kind it goes to.
pub(crate) fn admit(ctx: &JobCtx<'_>, h: &HandOver) -> Result<(), String> {
    match h.to {
        JobKind::Rust => rust::Rust.admit(ctx, h),
        JobKind::Image => image::Image.admit(ctx, h),
        JobKind::Gpu => gpu::Gpu.admit(ctx, h),
    }
}

/// Every kind's own options (flattened into the agent's command line).
#[derive(Debug, Clone, clap::Args)]
pub struct KindOptions {
    /// Image jobs (Buildah): registry, storage, cache bounds.
    #[command(flatten)]
    pub image: image::ImageConfig,

    /// GPU jobs: where the probe looks.
    #[command(flatten)]
    pub gpu: gpu::GpuConfig,
}

impl KindOptions {
    /// Files holding a kind's credentials (hidden from every sandboxed step).
    pub(crate) fn credential_files(&self) -> Vec<PathBuf> {
        self.image.credential_files()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The rule of ADR 0015: no kind calls back into the lifecycle, and the utilities below both
    /// know neither. A path of `lifecycle::` (or of the old `executor::`/`runner::`) in a kind's
    /// module, or of the lifecycle or a kind in a utility, fails here with the file and line.
    #[test]
    fn no_kind_calls_back_into_the_lifecycle_and_utilities_know_neither() {
        const BACK: &[&str] = &["lifecycle::", "executor::", "runner::", "crate::worker"];
        const UP: &[&str] = &[
            "lifecycle::",
            "executor::",
            "runner::",
            "crate::worker",
            "crate::kinds",
            "crate::image",
            "crate::gpu",
        ];
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files: Vec<(std::path::PathBuf, &[&str])> = Vec::new();
        let mut dirs = vec![src.join("kinds")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push((p, BACK));
                }
            }
        }
        assert!(files.len() >= 8, "the kinds' sources: {files:?}");
        for u in [
            "ctx.rs",
            "process.rs",
            "cargo_output.rs",
            "patch.rs",
            "git.rs",
            "sandbox.rs",
            "masking.rs",
            "isolation.rs",
            "secret_scopes.rs",
        ] {
            files.push((src.join(u), UP));
        }
        let mut cache = std::fs::read_dir(src.join("cache")).unwrap();
        while let Some(Ok(e)) = cache.next() {
            files.push((e.path(), UP));
        }
        // The agent's options gather every kind's through `kinds::KindOptions`, never one kind's own.
        files.push((
            src.join("config.rs"),
            &[
                "lifecycle::",
                "kinds::image",
                "kinds::gpu",
                "kinds::rust",
                "crate::image",
            ],
        ));
        let mut found = Vec::new();
        for (f, banned) in &files {
            let text = std::fs::read_to_string(f).unwrap();
            // The code, without its tests and comments.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                let line = line.split("//").next().unwrap_or("");
                if banned.iter().any(|b| line.contains(b)) {
                    found.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "calls back into the lifecycle (or up from a utility):\n{}",
            found.join("\n")
        );
    }
}
