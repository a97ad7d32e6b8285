//! raibid-core: the domain of raibid-ci (jobs, sources, pipelines, statuses), forge webhook parsing and
//! signature checks, and the Redis queue protocol shared by the dispatcher, the agents and `raibid-top`.
//!
//! `contract` holds every shared name; `job`, `pipeline` and `webhook` are pure; `queue` is the only
//! module that talks to Redis.

pub mod cache_stats;
pub mod cargo_messages;
pub mod contract;
pub mod event;
pub mod image;
pub mod job;
pub mod pipeline;
#[cfg(feature = "queue")]
pub mod queue;
pub mod queue_view;
pub mod retry;
pub mod schedule;
pub mod secret_source;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod webhook;
