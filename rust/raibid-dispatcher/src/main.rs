//! raibid-dispatcher binary: parse configuration, connect, serve until SIGTERM/SIGINT.

use clap::Parser;
use raibid_dispatcher::{connect_queue, serve, AppState, DispatcherConfig, Settings};
use std::process::ExitCode;

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

async fn run(cfg: DispatcherConfig) -> anyhow::Result<()> {
    let settings = Settings::from_config(&cfg)?;
    if settings.gitea_secret.is_none() {
        tracing::warn!(
            "no Gitea webhook secret configured: /webhooks/gitea refuses every delivery"
        );
    }
    if settings.github_secret.is_none() {
        tracing::warn!(
            "no GitHub webhook secret configured: /webhooks/github refuses every delivery"
        );
    }
    match &settings.intake.github {
        Some(g) => {
            tracing::info!(api = %g.base(), "commit statuses go to GitHub too, for the repositories Gitea mirrors")
        }
        None => tracing::info!("no GitHub token: commit statuses go to Gitea only"),
    }
    let qcfg = cfg.queue_config();
    let queue = connect_queue(&cfg.redis_url, qcfg, 30).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let state = AppState::new(queue, settings);
    serve(state, listener, shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = DispatcherConfig::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(raibid_core::contract::env::LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("raibid-dispatcher: {e:#}");
            ExitCode::from(1)
        }
    }
}
