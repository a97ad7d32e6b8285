//! Every kind's own options, gathered for the agent's command line (`config::AgentConfig` flattens
//! them): each kind owns its struct (`image::ImageConfig`, the GPU probe's `gpu::GpuConfig`).

use std::path::PathBuf;

/// Every kind's own options (flattened into the agent's command line).
#[derive(Debug, Clone, clap::Args)]
pub struct KindOptions {
    /// Image jobs (Buildah): registry, storage, cache bounds.
    #[command(flatten)]
    pub image: super::image::config::ImageConfig,

    /// GPU jobs: where the probe looks.
    #[command(flatten)]
    pub gpu: crate::gpu::GpuConfig,
}

impl KindOptions {
    /// Files holding a kind's credentials (hidden from every sandboxed step).
    pub(crate) fn credential_files(&self) -> Vec<PathBuf> {
        self.image.credential_files()
    }
}
