//! The running dispatcher: the router (`api::router`, which mounts the REST API, MCP, the public page
//! and image cleanup) and the background tasks (status reporter, reaper, notifier). Above every other
//! module: nothing imports this file but the crate root's re-export (ADR 0016).

use crate::{api, forge, notify, schedules, AppState};
use tokio::net::TcpListener;

/// Serve on `listener` until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let reporter = tokio::spawn(forge::status_reporter(state.clone()));
    // Its group exists before the first event it must see (created at `$`: no history replayed).
    forge::ensure_github_group(&state).await;
    let github_reporter = tokio::spawn(forge::github_status_reporter(state.clone()));
    let reaper = tokio::spawn(reaper(state.clone()));
    let notifier = tokio::spawn(notify::notifier(state.clone()));
    let scheduler = tokio::spawn(schedules::scheduler(state.clone()));
    let stop_tx = state.stop_tx.clone();
    let app = api::router(state);
    tracing::info!(addr = %listener.local_addr()?, "dispatcher listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // In-flight requests finish; live log streams end now instead of holding the shutdown.
            let _ = stop_tx.send(true);
        })
        .await?;
    reporter.abort();
    github_reporter.abort();
    reaper.abort();
    notifier.abort();
    scheduler.abort();
    Ok(())
}

/// Reclaim jobs whose agent stopped renewing its lease: requeue them, or dead-letter them after the
/// configured number of attempts. Runs in every replica; `XAUTOCLAIM` keeps them from colliding.
pub async fn reaper(state: AppState) {
    let lease = state.settings.lease;
    let every = (lease / 4).max(std::time::Duration::from_millis(250));
    let me = format!(
        "raibid-reaper-{}-{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    );
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = state.queue.reap(&me, lease).await {
            tracing::warn!(error = %e, "reaper: redis unavailable; retrying");
        }
        if let Err(e) = state.queue.prune_index().await {
            tracing::debug!(error = %e, "reaper: could not prune the job index");
        }
        match state.queue.prune_consumers(lease * 10).await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(consumers = ?gone, "removed consumers of agents that are gone")
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "reaper: could not prune consumers"),
        }
    }
}
