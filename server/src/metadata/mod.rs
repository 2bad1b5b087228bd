//! Cluster metadata (topics now; groups, offsets, schemas and tier manifests later), kept in an
//! openraft state machine with a durable Raft log and snapshots. A single node runs a one-member
//! Raft group through the same code a cluster will use: every metadata write is a Raft command.

mod log_store;
mod network;
mod state_machine;
mod types;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use log_store::LogStore;
use network::NoNetwork;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::InitializeError;
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
pub use state_machine::{GroupOffsets, TopicMeta};
use state_machine::{MetaState, MetaStateMachine};
use tokio::sync::watch;
pub use types::{Command, CommandResult, TierObject};
use types::{MetaRaft, Node};

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

    /// A group's committed offsets: topic → partition → next offset to process.
    pub fn committed_offsets(&self, group: &str) -> BTreeMap<String, BTreeMap<u32, u64>> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner).offsets.get(group).cloned().unwrap_or_default()
    }

    /// The cold tier of a partition: its objects in offset order.
    pub fn tier_objects(&self, topic: &str, partition: u32) -> Vec<TierObject> {
        let st = self.inner.state.read().unwrap_or_else(PoisonError::into_inner);
        st.tier.get(topic).and_then(|t| t.get(&partition)).cloned().unwrap_or_default()
    }

    /// Reads the schema registry's state as applied on this node (under the state's read lock:
    /// keep `f` short).
    pub fn registry<R>(&self, f: impl FnOnce(&crate::registry::RegistryState) -> R) -> R {
        f(&self.inner.state.read().unwrap_or_else(PoisonError::into_inner).registry)
    }

    /// Every persisted consumer group's state.
    pub fn group_states(&self) -> BTreeMap<String, crate::group::service::GroupState> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner).groups.clone()
    }

    /// Groups that have committed offsets.
    pub fn groups_with_offsets(&self) -> Vec<String> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner).offsets.keys().cloned().collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicConfig;

    fn create(name: &str, partitions: u32) -> Command {
        Command::CreateTopic { name: name.into(), partitions, config: TopicConfig::default(), created_ms: 0 }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_survive_restarts_snapshots_and_a_torn_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let m = Metadata::start(1, tmp.path(), "127.0.0.1:1".into()).await.unwrap();
        assert_eq!(m.write(create("a", 1)).await.unwrap(), CommandResult::Ok);
        assert_eq!(m.write(create("a", 2)).await.unwrap(), CommandResult::TopicExists);
        assert_eq!(
            m.write(Command::AddPartitions { name: "a".into(), count: 1 }).await.unwrap(),
            CommandResult::PartitionsNotIncreased { current: 1 }
        );
        assert_eq!(m.write(create("b", 3)).await.unwrap(), CommandResult::Ok);
        m.shutdown().await;
        drop(m);
        // A crash in the middle of an append leaves half a line: it is ignored on restart.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join("raft-log.jsonl"))
            .unwrap()
            .write_all(br#"{"Entry":{"log_"#)
            .unwrap();

        let m = Metadata::start(1, tmp.path(), "127.0.0.1:1".into()).await.unwrap();
        assert_eq!(m.topics().keys().collect::<Vec<_>>(), ["a", "b"]);
        let commit = |offsets: Vec<(&str, u32, u64)>| Command::CommitOffsets {
            group: "g".into(),
            offsets: offsets.into_iter().map(|(t, p, o)| (t.to_string(), p, o)).collect(),
        };
        assert_eq!(m.write(commit(vec![("a", 0, 7), ("b", 2, 42)])).await.unwrap(), CommandResult::Ok);
        assert_eq!(m.write(commit(vec![("b", 9, 1)])).await.unwrap(), CommandResult::TopicNotFound, "no partition 9");
        assert_eq!(m.write(Command::DeleteTopic { name: "a".into() }).await.unwrap(), CommandResult::Ok);
        assert!(!m.committed_offsets("g").contains_key("a"), "a deleted topic's offsets go with it");
        m.inner.raft.trigger().snapshot().await.unwrap();
        m.inner
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|x| x.snapshot.is_some() && x.snapshot == x.last_applied, "snapshot built")
            .await
            .unwrap();
        m.shutdown().await;
        drop(m);

        let m = Metadata::start(1, tmp.path(), "127.0.0.1:1".into()).await.unwrap();
        assert_eq!(m.topics().keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(m.topic("b").unwrap().partitions, 3);
        assert_eq!(m.committed_offsets("g")["b"][&2], 42, "offsets committed before the snapshot survive it");
        assert!(m.has_leader());
        m.shutdown().await;
    }
}
