//! raibid-agent binary: parse configuration, wire signals, run.

use clap::Parser;
use raibid_agent::{run, AgentConfig};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = AgentConfig::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(raibid_core::contract::env::LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install SIGTERM handler");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!(
            "shutting down: no new jobs; running jobs finish (signal again to stop now)"
        );
        let _ = tx.send(true);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        std::process::exit(130);
    });
    match run(cfg, rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raibid-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}
