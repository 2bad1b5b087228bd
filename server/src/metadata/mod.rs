//! Cluster metadata (topics now; groups, offsets, schemas and tier manifests later), kept in an
//! openraft state machine with a durable Raft log and snapshots. A single node runs a one-member
//! Raft group through the same code a cluster will use: every metadata write is a Raft command.

mod raft;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::InitializeError;
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
pub use raft::{Command, CommandResult, TopicMeta};
use raft::{LogStore, MetaRaft, MetaState, MetaStateMachine, NoNetwork, Node};
use tokio::sync::watch;

use crate::error::{ApiError, ErrorCode};

/// Why the metadata group could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MetadataError(String);

fn err(context: &str, e: impl std::fmt::Display) -> MetadataError {
    MetadataError(format!("{context}: {e}"))
}

/// Handle to the metadata Raft group (cheap to clone).
#[derive(Clone)]
pub struct Metadata {
    inner: Arc<Inner>,
}

struct Inner {
    raft: MetaRaft,
    state: Arc<RwLock<MetaState>>,
    changes: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata").finish_non_exhaustive()
    }
}

impl Metadata {
    /// Opens the Raft log and snapshots in `dir`, starts Raft, initializes a one-member cluster
    /// on first start, and waits until this node leads with every committed entry applied.
    ///
    /// # Errors
    /// Storage that cannot be opened, or no leadership within 10 s.
    pub async fn start(node_id: u64, dir: &Path, addr: String) -> Result<Self, MetadataError> {
        let config = Config {
            cluster_name: "strata-meta".to_string(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            // A restarted node holds a normal election rather than resuming its term.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| err("raft config", e))?;
        let d = dir.to_path_buf();
        let (log, sm) = tokio::task::spawn_blocking(move || {
            Ok::<_, std::io::Error>((LogStore::open(&d)?, MetaStateMachine::open(&d)?))
        })
        .await
        .map_err(|e| err("opening metadata", e))?
        .map_err(|e| err(&format!("opening metadata in {}", dir.display()), e))?;
        let state = sm.state();
        let changes = sm.changes();
        let raft =
            MetaRaft::new(node_id, Arc::new(config), NoNetwork, log, sm).await.map_err(|e| err("starting raft", e))?;
        if !raft.is_initialized().await.map_err(|e| err("raft", e))? {
            let members = BTreeMap::from([(node_id, Node { addr })]);
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(e) if matches!(e.api_error(), Some(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(err("initializing raft", e)),
            }
        }
        raft.wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "metadata raft: wait for leadership")
            .await
            .map_err(|e| err("waiting for leadership", e))?;
        // After a restart, entries past the persisted commit index apply only once the new
        // term's first entry commits: wait for that before serving.
        raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|e| err("catching up", e))?;
        Ok(Self { inner: Arc::new(Inner { raft, state, changes }) })
    }

    /// Commits a command through Raft and returns what applying it decided.
    ///
    /// # Errors
    /// `unavailable` when there is no leader (or this node is not it) or Raft is shutting down.
    pub async fn write(&self, command: Command) -> Result<CommandResult, ApiError> {
        match self.inner.raft.client_write(command).await {
            Ok(response) => Ok(response.data),
            Err(e) => Err(ApiError::new(ErrorCode::Unavailable, format!("metadata write failed: {e}"))),
        }
    }

    /// Every topic, as applied on this node.
    pub fn topics(&self) -> BTreeMap<String, TopicMeta> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner).topics.clone()
    }

    pub fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner).topics.get(name).cloned()
    }

    /// Changes whenever the state machine applies something.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn has_leader(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().current_leader.is_some()
    }

    /// Stops Raft (its log is durable after every append).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
