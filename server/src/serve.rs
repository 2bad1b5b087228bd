//! The accept loop: every connection of both doors (TCP and the Unix socket) served by hyper,
//! HTTP/1.1 and HTTP/2 on the same port, with Strata's HTTP/2 settings.
//!
//! `axum::serve` does the same with hyper's defaults, and those are sized for browsers: a 16 KiB
//! frame and 1 MiB of flow-control window per stream and per connection. A producer pipelining
//! 1 MiB requests on one `ProduceStream` then sends each request as 64 frames and waits on the
//! window between requests. See [`STREAM_WINDOW`] (and README's Benchmarks for what the larger
//! windows gained and cost).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::pin;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener as _;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio_util::either::Either;
use tower::ServiceExt as _;

use crate::http::zero_copy::{Conn, Doors};

/// Flow-control window of one HTTP/2 stream: room for a producer's pipelined requests (the
/// load generator keeps four 1 MiB requests in flight on one stream) to travel while the server
/// works on earlier ones. A peer can make the server hold at most this much of a stream's body
/// that its handler has not read yet, so a client that pipelines without a bound of its own
/// queues up to this much in the server: 8 MiB (16 per connection) gained W2 as much as 4 MiB
/// did, but W7's unbounded gRPC stream then waited ~350 ms at p99 against ~200 ms, with ~45 MiB
/// more RSS (two alternated pairs).
pub const STREAM_WINDOW: u32 = 4 << 20;
/// Flow-control window of one HTTP/2 connection (all its streams).
pub const CONNECTION_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 frame a peer may send: a 1 MiB request in a few frames rather than 64.
pub const MAX_FRAME: u32 = 1 << 20;

/// Serves `app` on `doors` until `shutdown` resolves; then stops accepting, lets every
/// connection finish its in-flight requests, and returns once all are closed.
pub async fn serve(mut doors: Doors, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) {
    // Dropped when `shutdown` resolves: tells the loop and every connection to stop.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    // Each connection holds a receiver; all dropped means all connections are closed.
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (io, peer) = tokio::select! {
            accepted = doors.accept() => accepted,
            () = signal_tx.closed() => break,
        };
        let fd = match &io {
            Either::Left(tcp) => tcp.as_raw_fd(),
            Either::Right(unix) => unix.as_raw_fd(),
        };
        let conn = Conn::new(fd, peer);
        let service = app.clone().map_request(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(conn));
            request.map(Body::new)
        });
        let service = TowerToHyperService::new(service);
        let (signal_tx, close_rx) = (signal_tx.clone(), close_rx.clone());
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http2()
                .enable_connect_protocol()
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME);
            let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut stopping = pin!(signal_tx.closed());
            let mut graceful = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut stopping, if !graceful => {
                        graceful = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(doors);
    close_tx.closed().await;
}
