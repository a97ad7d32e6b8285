//! Job kinds: what differs between a Rust job, an image job and a GPU job. The lifecycle
//! (`crate::lifecycle`: claim and lease, workspace, source = clone + patch, config, report, cleanup,
//! final write) is the same for every job; it calls the job's kind through [`Kind`] — its
//! capabilities, its config phase (whose [`ConfigOutcome`] the lifecycle acts on) and its run phase.
//! A kind never calls back into the lifecycle: it gets the job's context (`crate::ctx`) and returns
//! (`tests` below and `tests/layers.rs` enforce that on the sources; ADR 0016).
//!
//! Adding a kind: one module here implementing [`Kind`] (`kind.rs`), one line in the lifecycle's
//! dispatch (`lifecycle/execute.rs`) and in [`capabilities`] and [`admit`] here, its options (if any)
//! in [`KindOptions`] (`options.rs`); see docs/adding-a-kind.md.

pub(crate) mod gpu;
pub mod image;
pub(crate) mod kind;
pub mod options;
pub(crate) mod rust;

pub use kind::{CacheUse, Capabilities, ConfigStep, Privileges};
pub(crate) use kind::{ConfigOutcome, HandOver, Kind};
pub use options::KindOptions;

use crate::ctx::JobCtx;
use raibid_core::job::JobKind;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    /// The rule of ADR 0016: no kind calls back into the lifecycle, and the utilities below both
    /// know neither. A path of `lifecycle::` (or of the old `executor::`/`runner::`) in a kind's
    /// module, or of the lifecycle or a kind in a utility, fails here with the file and line.
    #[test]
    fn no_kind_calls_back_into_the_lifecycle_and_utilities_know_neither() {
        const BACK: &[&str] = &["lifecycle::", "executor::", "runner::", "worker::"];
        const UP: &[&str] = &[
            "lifecycle::",
            "executor::",
            "runner::",
            "worker::",
            "crate::kinds",
            "crate::image",
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
            "stop.rs",
            "gpu.rs",
            "lookup.rs",
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
