//! The one extension point between the lifecycle and a kind: the [`Kind`] trait (the phases a kind
//! needs) and what a kind declares about itself ([`Capabilities`]: privileges, caches, GPU, patches),
//! and the config phase's outcome, the transition the lifecycle takes ([`ConfigOutcome`]).

use crate::ctx::{End, JobCtx, Workspace};
use raibid_core::image::ImageRequest;
use raibid_core::job::JobKind;
use std::future::Future;
use std::path::Path;

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
