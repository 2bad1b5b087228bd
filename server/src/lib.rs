//! `strata-server`: the `strata` binary's server side.
//!
//! ```text
//!  one TCP port ──► serve.rs ──► axum router ──┬─ /v1/...            http/     (JSON, problem+json errors)
//!  (HTTP/1.1 + h2c)  (hyper)                    ├─ /strata.v1.*/...   grpc.rs   (tonic services)
//!                                               └─ /healthz /readyz /metrics /openapi.json
//!                                 │
//!          admin.rs ── Command ──► metadata/ (openraft: log + state machine) ──► broker reconciles
//!          broker.rs: produce (partitioner, batches) / fetch (long-poll) ──► strata-storage logs
//!          idempotency.rs: Idempotency-Key replay, kept in an internal log
//! ```
//!
//! [`run`] takes an already bound listener, so tests bind port 0 and read the address back.

pub mod admin;
pub mod broker;
pub mod config;
pub mod error;
pub mod group;
pub mod grpc;
pub mod http;
pub mod idempotency;
pub mod metadata;
pub mod metrics;
pub mod partitioner;
pub mod producer;
pub mod registry;
pub mod serve;
pub mod sql;
pub mod tier;
pub mod topic;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderName, Request};
use strata_storage::{LogManager, StorageOptions};
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::ServerConfig;

use crate::admin::Admin;
use crate::broker::Broker;
use crate::error::{ApiError, ErrorCode};
use crate::idempotency::IdempotencyStore;
use crate::metadata::Metadata;
use crate::metrics::Metrics;

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub admin: Admin,
    pub idempotency: Arc<IdempotencyStore>,
    pub groups: Arc<group::service::Groups>,
    pub metrics: Arc<Metrics>,
    pub node_id: u64,
    pub max_request_bytes: usize,
    pub max_wait_ms: u64,
    pub ready: AtomicBool,
    /// Read-only SQL over the topics.
    pub sql: sql::Sql,
    /// Cancelled when shutdown starts: long-lived streams (Subscribe, SSE) end so that the
    /// graceful shutdown does not wait for them forever.
    pub closing: CancellationToken,
    /// When the raw batch door may use `sendfile`.
    pub zero_copy: config::ZeroCopy,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("data directory {path} is in use by another strata process")]
    DataDirInUse { path: String },
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    ObjectStore(String),
    #[error("storage: {0}")]
    Storage(#[from] strata_storage::Error),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("cannot listen on the Unix socket {path}: {reason}")]
    UnixSocket { path: String, reason: String },
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Runs the server on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish, fsyncs every log and returns.
///
/// # Errors
/// Start-up failures (data directory, metadata, storage recovery) and listener errors.
pub async fn run(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .map_err(|source| ServerError::DataDir { path: data_dir.display().to_string(), source })?;
    // One server per data directory: a second one would recover the same logs under the first.
    let lock_path = data_dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| ServerError::DataDir { path: lock_path.display().to_string(), source })?;
    lock.try_lock().map_err(|_| ServerError::DataDirInUse { path: data_dir.display().to_string() })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(?config, %addr, "starting strata");
    let unix = config.unix_socket.as_deref().map(UnixSocket::bind).transpose()?;

    let store = tier::TierStore::open(&config).await.map_err(ServerError::ObjectStore)?;
    tracing::info!(store = %store.describe, "object store for tiered segments");
    let metadata = Metadata::start(config.node_id, &data_dir.join("meta"), addr.to_string())
        .await
        .map_err(|e| ServerError::Metadata(e.to_string()))?;
    let options = StorageOptions {
        max_open_files: config.max_open_files,
        journal: config.journal,
        journal_file_bytes: config.journal_file_bytes,
        direct_writes: config.direct_writes,
        direct_io: config.direct_io,
        recent_bytes: usize::try_from(config.batch_cache_bytes).unwrap_or(usize::MAX),
        ..Default::default()
    };
    let storage = LogManager::new(data_dir.join("logs"), options)?;
    let cold = Arc::new(tier::ColdTier::new(store, config.tier_cache_bytes, config.tier_max_untiered_bytes));
    let broker = Arc::new(Broker::new(storage, metadata.clone(), Arc::clone(&cold)));
    let b = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
        b.reconcile()?;
        b.remove_orphan_logs()
    })
    .await
    .map_err(|e| ServerError::Api(e.into()))??;
    let window = Duration::from_millis(config.idempotency_window_ms);
    let idempotency = Arc::new(IdempotencyStore::open(broker.storage(), window)?);
    let metrics = Arc::new(Metrics::default());
    let groups = Arc::new(group::service::Groups::new(
        Arc::clone(&broker),
        Duration::from_millis(config.group_offsets_retention_ms),
    ));
    let state = Arc::new(AppState {
        admin: Admin::new(Arc::clone(&broker)),
        broker: Arc::clone(&broker),
        idempotency,
        groups: Arc::clone(&groups),
        metrics: Arc::clone(&metrics),
        node_id: config.node_id,
        max_request_bytes: config.max_request_bytes,
        max_wait_ms: config.max_wait_ms,
        ready: AtomicBool::new(false),
        closing: CancellationToken::new(),
        zero_copy: config.zero_copy,
        sql: sql::Sql::new(Arc::clone(&broker), config.sql_memory_bytes, Duration::from_millis(config.sql_timeout_ms))
            .map_err(ServerError::Serve)?,
    });

    let stop = CancellationToken::new();
    let background = vec![
        tokio::spawn(follow_metadata(Arc::clone(&broker), stop.clone())),
        tokio::spawn(cleanup(Arc::clone(&broker), Duration::from_millis(config.cleanup_interval_ms), stop.clone())),
        tokio::spawn(group_ticks(Arc::clone(&groups), Arc::clone(&broker), stop.clone())),
        tokio::spawn(
            tier::Tiering::new(Arc::clone(&broker), cold)
                .run(Duration::from_millis(config.tier_interval_ms), stop.clone()),
        ),
    ];

    let app = http::router(Arc::clone(&state))
        .merge(grpc::Services::new(Arc::clone(&state)).routes())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such path") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(ErrorCode::MethodNotAllowed, format!("this path does not take {method}"))
        })
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));

    state.ready.store(true, Ordering::Release);
    tracing::info!(%addr, "serving HTTP and gRPC");
    let (unix_listener, unix) = match unix {
        Some((listener, socket)) => {
            tracing::info!(path = %socket.path.display(), "serving HTTP and gRPC on the Unix socket");
            (Some(listener), Some(socket))
        }
        None => (None, None),
    };
    let listener = http::zero_copy::Doors { tcp: listener, unix: unix_listener };
    let closing = state.closing.clone();
    let shutdown = async move {
        shutdown.await;
        closing.cancel();
    };
    serve::serve(listener, app, shutdown).await;

    tracing::info!("shutting down: flushing logs");
    state.ready.store(false, Ordering::Release);
    stop.cancel();
    for task in background {
        let _ = task.await;
    }
    let b = Arc::clone(&broker);
    let flushed = tokio::task::spawn_blocking(move || b.storage().flush_all()).await;
    metadata.shutdown().await;
    match flushed {
        Ok(result) => result?,
        Err(e) => return Err(ServerError::Api(e.into())),
    }
    drop(unix);
    tracing::info!("stopped");
    drop(lock);
    Ok(())
}

/// The Unix socket's file while the server listens on it: removed when dropped, unless another
/// process has replaced it meanwhile.
struct UnixSocket {
    path: std::path::PathBuf,
    inode: u64,
}

impl UnixSocket {
    /// Listens on `path`. A socket file left there by a server that is gone (nothing accepts
    /// on it) is replaced; a live one, or a file that is not a socket, is an error.
    fn bind(path: &std::path::Path) -> Result<(tokio::net::UnixListener, Self), ServerError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let error = |reason: String| ServerError::UnixSocket { path: path.display().to_string(), reason };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(error("a file that is not a socket is in the way".into()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(error("another server is listening on it".into()));
            }
            std::fs::remove_file(path).map_err(|e| error(format!("cannot remove the stale socket: {e}")))?;
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| error(e.to_string()))?;
        // Owner and group: a client that connects can read and write every topic.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| error(e.to_string()))?;
        let inode = std::fs::symlink_metadata(path).map_err(|e| error(e.to_string()))?.ino();
        Ok((listener, Self { path: path.to_path_buf(), inode }))
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens and deletes logs as the metadata changes (on this node, whoever made the change).
async fn follow_metadata(broker: Arc<Broker>, stop: CancellationToken) {
    let mut changes = broker.metadata().subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let b = Arc::clone(&broker);
        match tokio::task::spawn_blocking(move || b.reconcile()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot follow metadata change"),
            Err(e) => tracing::error!(error = %e, "reconcile task failed"),
        }
    }
}

/// Session expiry, partition-count changes and offset expiry for consumer groups, four times a
/// second.
async fn group_ticks(groups: Arc<group::service::Groups>, broker: Arc<Broker>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for group in groups.tick().await {
            tracing::info!(%group, "deleting the committed offsets of a group empty for longer than the retention");
            let command = metadata::Command::DeleteGroupOffsets { group };
            if let Err(e) = broker.metadata().write(command).await {
                tracing::warn!(error = %e, "cannot delete expired group offsets");
            }
        }
    }
}

/// Retention and compaction, every `every`.
async fn cleanup(broker: Arc<Broker>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let b = Arc::clone(&broker);
        if let Err(e) = tokio::task::spawn_blocking(move || b.run_cleanup()).await {
            tracing::error!(error = %e, "cleanup task failed");
        }
    }
}
