//! raibid-agent: claims jobs from its kinds' streams, clones the commit into a fresh workspace, runs
//! the job's kind, streams every output line into the job's log, writes the final status (fenced by
//! its lease) and acknowledges the entry.
//!
//! Layers, each using only those below it (ADR 0016):
//! - `lifecycle`: the claim loop and cancel listener (`claim`), then one claimed job (log flusher,
//!   heartbeat, shutdown grace; source = clone + patch, config and its transition, after-steps,
//!   cleanup, final write), which calls a job's kind through `kinds::Kind`;
//! - `kinds` (`rust`, `image`, `gpu`: what differs between jobs, each with its own options), which
//!   never call back into the lifecycle;
//! - `ctx` (what a running job carries) and the utilities taking plain inputs: `process` (a step's
//!   process group and its output), `cargo_output` (cargo's JSON messages in the log), `masking`
//!   (secrets out of log lines), `git` (URL policy, git argv), `isolation` (step user, private
//!   directories, leftover processes), `sandbox`, `secret_scopes` (which repository gets which
//!   secret), `patch`, `cache` (git mirrors, cargo target slots, cache keys); `config` (options).

pub(crate) mod cache;
pub mod cargo_output;
pub mod config;
pub(crate) mod ctx;
pub mod git;
pub mod gpu;
pub mod isolation;
pub mod kinds;
pub(crate) mod lifecycle;
pub(crate) mod lookup;
pub mod masking;
pub mod patch;
pub mod process;
pub mod sandbox;
pub mod secret_scopes;
pub(crate) mod stop;

pub use config::AgentConfig;
pub use kinds::image;
pub use lifecycle::claim::run;
pub use masking::Masker;
