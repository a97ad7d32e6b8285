//! The GPU kind (`gpu`): a cargo pipeline (the Rust kind's config and steps) whose steps see exactly
//! the GPU(s) the agent found at start (`crate::gpu`, the probe): their device nodes bound into the
//! sandbox and `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES`; the record names the GPU from the
//! job's start. Its agents declare the kind only after the probe found a GPU (`Capabilities::gpu`).

use super::rust::{self, Plan, StepExtras, CARGO_CACHES};
use super::{Capabilities, ConfigOutcome, ConfigStep, Kind, Privileges};
use crate::ctx::{End, JobCtx, Workspace};
use crate::gpu::GpuProbe;
use raibid_core::job::JobKind;

/// The `gpu` kind: a cargo pipeline (the Rust kind's) whose steps get the agent's GPU(s).
pub(crate) struct Gpu;

impl Kind for Gpu {
    type Plan = Plan;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: JobKind::Gpu,
            privileges: Privileges::SandboxedSteps,
            caches: CARGO_CACHES,
            gpu: true,
            patch: true,
            config_step: ConfigStep::Always,
        }
    }

    fn start(&self, ctx: &mut JobCtx<'_>) {
        // Which GPU runs it: in the record from the start (get_job, the timeline, raibid-top).
        ctx.claim.job.gpu = ctx.shared.gpu.as_ref().map(|g| g.gpus.clone());
    }

    async fn config(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace) -> ConfigOutcome<Plan> {
        rust::config(ctx, ws, extras(ctx.shared.gpu.as_ref())).await
    }

    async fn run(&self, ctx: &mut JobCtx<'_>, ws: &mut Workspace, plan: Plan) -> End {
        rust::run(ctx, &ws.checkout(), plan).await
    }
}

/// What a GPU job's steps get: exactly the agent's GPU device nodes (nothing else of /dev) and
/// `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES`.
fn extras(probe: Option<&GpuProbe>) -> StepExtras {
    match probe {
        Some(g) => StepExtras {
            env: vec![
                ("NVIDIA_VISIBLE_DEVICES".into(), g.visible.clone()),
                ("CUDA_VISIBLE_DEVICES".into(), g.visible.clone()),
            ],
            dev: g.devices.clone(),
        },
        None => StepExtras::default(),
    }
}
