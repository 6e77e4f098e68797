//! The HTTP server loop, with the limits a public listener needs: at most so many
//! connections (more are closed at once), a header-read timeout that also closes idle
//! keep-alive connections (slow or silent clients cannot hold them), a per-request time
//! limit and a body-size limit (in the router), and one graceful shutdown path.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// How long a client may take to send a request's headers (and how long an idle
/// keep-alive connection stays open).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful HTTP shutdown may take.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop` fires, with at most `max_connections`.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    max_connections: usize,
    metrics: Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let (closing, _) = tokio::sync::watch::channel(false);
    let closing = Arc::new(closing);
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.ignore("http_connection_limit");
            drop(tcp);
            continue;
        };
        let svc = TowerToHyperService::new(router.clone());
        let mut closing_rx = closing.subscribe();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closing_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
            drop(permit);
        });
    }
    let _ = closing.send(true);
    // Connections finish their current request within the grace.
    let all = u32::try_from(max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
    Ok(())
}
