//! The metadata state machine: applied topics in memory, snapshots on disk, a change counter the
//! broker follows.

use std::collections::BTreeMap;
use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::*;
use crate::group::service::GroupState;
use crate::registry::RegistryState;
use crate::topic::TopicConfig;

// ---------------------------------------------------------------------------------------------
// State machine
// ---------------------------------------------------------------------------------------------

/// A topic as the metadata knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: u32,
    pub config: TopicConfig,
    pub created_ms: i64,
}

/// Applied state. Shared (`Arc<RwLock<..>>`) between the state machine and `Metadata`.
#[derive(Debug, Default)]
pub struct MetaState {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembershipT,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Committed offsets: group → topic → partition → next offset to process.
    pub offsets: GroupOffsets,
    /// Consumer groups' membership and assignment.
    pub groups: BTreeMap<String, GroupState>,
    /// Tier manifests: topic → partition → objects, in offset order, contiguous.
    pub tier: TierManifests,
    /// The schema registry: subjects, versions, schemas by global id, compatibility configs.
    pub registry: RegistryState,
    /// The id the next idempotent producer session gets.
    pub next_producer_id: i64,
}

/// Tier manifests: topic → partition → objects, in offset order, contiguous.
pub type TierManifests = BTreeMap<String, BTreeMap<u32, Vec<TierObject>>>;

/// Committed offsets of every group: group → topic → partition → next offset to process.
pub type GroupOffsets = BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>;

/// What a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    topics: BTreeMap<String, TopicMeta>,
    #[serde(default)]
    offsets: GroupOffsets,
    #[serde(default)]
    groups: BTreeMap<String, GroupState>,
    #[serde(default)]
    tier: TierManifests,
    #[serde(default)]
    registry: RegistryState,
    #[serde(default)]
    next_producer_id: i64,
}

impl MetaState {
    fn apply_command(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::CreateTopic { name, partitions, config, created_ms } => {
                if let std::collections::btree_map::Entry::Vacant(e) = self.topics.entry(name.clone()) {
                    e.insert(TopicMeta { name, partitions, config, created_ms });
                    CommandResult::Ok
                } else {
                    CommandResult::TopicExists
                }
            }
            Command::AlterTopicConfig { name, config } => match self.topics.get_mut(&name) {
                Some(t) => {
                    t.config = config;
                    CommandResult::Ok
                }
                None => CommandResult::TopicNotFound,
            },
            Command::AddPartitions { name, count } => match self.topics.get_mut(&name) {
                Some(t) if count > t.partitions => {
                    t.partitions = count;
                    CommandResult::Ok
                }
                Some(t) => CommandResult::PartitionsNotIncreased { current: t.partitions },
                None => CommandResult::TopicNotFound,
            },
            Command::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(_) => {
                    for topics in self.offsets.values_mut() {
                        topics.remove(&name);
                    }
                    self.tier.remove(&name);
                    CommandResult::Ok
                }
                None => CommandResult::TopicNotFound,
            },
            Command::CommitOffsets { group, offsets } => {
                // Validated against the topics as applied, so every node decides alike.
                if offsets.iter().any(|(t, p, _)| self.topics.get(t).is_none_or(|m| *p >= m.partitions)) {
                    return CommandResult::TopicNotFound;
                }
                let committed = self.offsets.entry(group).or_default();
                for (topic, partition, offset) in offsets {
                    committed.entry(topic).or_default().insert(partition, offset);
                }
                CommandResult::Ok
            }
            Command::DeleteGroupOffsets { group } => {
                self.offsets.remove(&group);
                self.groups.remove(&group);
                CommandResult::Ok
            }
            Command::TierAdd { topic, partition, object } => {
                if self.topics.get(&topic).is_none_or(|t| partition >= t.partitions) {
                    return CommandResult::TopicNotFound;
                }
                let objects = self.tier.entry(topic).or_default().entry(partition).or_default();
                match objects.last() {
                    _ if objects.contains(&object) => CommandResult::Ok,
                    Some(last) if last.meta.end_offset != object.meta.base_offset => {
                        CommandResult::TierGap { expected: last.meta.end_offset }
                    }
                    _ => {
                        objects.push(object);
                        CommandResult::Ok
                    }
                }
            }
            Command::TierRemove { topic, partition, below } => {
                if let Some(objects) = self.tier.get_mut(&topic).and_then(|t| t.get_mut(&partition)) {
                    objects.retain(|o| o.meta.end_offset > below);
                }
                CommandResult::Ok
            }
            Command::SetGroup { group, state } => {
                if self.groups.get(&group).is_none_or(|s| s.version() < state.version()) {
                    self.groups.insert(group, *state);
                }
                CommandResult::Ok
            }
            Command::Registry(command) => CommandResult::Registry(self.registry.apply(command)),
            Command::AllocateProducerId => {
                let id = self.next_producer_id;
                if id >= crate::producer::MAX_ALLOCATED_ID {
                    return CommandResult::ProducerIdsExhausted;
                }
                self.next_producer_id += 1;
                CommandResult::ProducerId(id)
            }
        }
    }
}

/// On-disk snapshot: meta + the JSON of the topic map (kept as a string so that the
/// `SnapshotData` bytes round-trip exactly).
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: String,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// In-memory state machine with persistent snapshots. Also its own snapshot builder (clone).
#[derive(Clone)]
pub struct MetaStateMachine {
    dir: Arc<PathBuf>,
    state: Arc<RwLock<MetaState>>,
    /// Bumped after every applied change, so the broker can follow.
    changes: Arc<watch::Sender<u64>>,
    /// Current persisted snapshot. tokio Mutex: held across the file write to serialize
    /// concurrent build_snapshot / install_snapshot.
    snapshot: Arc<tokio::sync::Mutex<Option<StoredSnapshot>>>,
}

impl MetaStateMachine {
    /// Opens with an EMPTY state; openraft installs the persisted snapshot and re-applies
    /// the committed log during `Raft::new`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let snap = read_json_opt::<SnapshotFile>(&dir.join(SNAPSHOT_FILE))?
            .map(|f| StoredSnapshot { meta: f.meta, data: f.data.into_bytes() });
        Ok(Self {
            dir: Arc::new(dir.to_path_buf()),
            state: Arc::new(RwLock::new(MetaState::default())),
            changes: Arc::new(watch::channel(0).0),
            snapshot: Arc::new(tokio::sync::Mutex::new(snap)),
        })
    }

    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        self.state.clone()
    }

    pub fn changes(&self) -> Arc<watch::Sender<u64>> {
        self.changes.clone()
    }

    async fn persist_snapshot(&self, snap: &StoredSnapshot) -> io::Result<()> {
        let data = String::from_utf8(snap.data.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let bytes = serde_json::to_vec(&SnapshotFile { meta: snap.meta.clone(), data }).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        blocking(move || write_atomic(&dir, SNAPSHOT_FILE, &bytes)).await
    }
}

impl RaftSnapshotBuilder<C> for MetaStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let snap = {
            let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
            StoredSnapshot {
                meta: SnapshotMeta { last_log_id: st.last_applied, last_membership: st.last_membership.clone() },
                data: serde_json::to_vec(&SnapshotData {
                    topics: st.topics.clone(),
                    offsets: st.offsets.clone(),
                    groups: st.groups.clone(),
                    tier: st.tier.clone(),
                    registry: st.registry.clone(),
                    next_producer_id: st.next_producer_id,
                })
                .map_err(io::Error::other)?,
            }
        };
        let mut cur = self.snapshot.lock().await;
        let newer = cur.as_ref().is_none_or(|c| c.meta.last_log_id < snap.meta.last_log_id);
        if newer {
            self.persist_snapshot(&snap).await?;
            *cur = Some(snap.clone());
        }
        Ok(Snapshot { meta: snap.meta, snapshot: snap.data })
    }
}

impl RaftStateMachine<C> for MetaStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembershipT), io::Error> {
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let resp = {
                let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => CommandResult::Noop,
                    EntryPayload::Normal(cmd) => st.apply_command(cmd),
                    EntryPayload::Membership(m) => {
                        st.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        CommandResult::Noop
                    }
                }
            };
            self.changes.send_modify(|v| *v += 1);
            // Must be called, otherwise client_write never returns.
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let data: SnapshotData =
            serde_json::from_slice(&snapshot).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let snap = StoredSnapshot { meta: meta.clone(), data: snapshot };
        let mut cur = self.snapshot.lock().await;
        // On startup openraft installs the snapshot returned by get_current_snapshot: no rewrite.
        let same = cur.as_ref().is_some_and(|c| c.meta == snap.meta && c.data == snap.data);
        if !same {
            self.persist_snapshot(&snap).await?;
        }
        {
            let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
            st.last_applied = meta.last_log_id;
            st.last_membership = meta.last_membership.clone();
            st.topics = data.topics;
            st.offsets = data.offsets;
            st.groups = data.groups;
            st.tier = data.tier;
            st.registry = data.registry;
            st.next_producer_id = data.next_producer_id;
        }
        self.changes.send_modify(|v| *v += 1);
        *cur = Some(snap);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let cur = self.snapshot.lock().await;
        Ok(cur.as_ref().map(|s| Snapshot { meta: s.meta.clone(), snapshot: s.data.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::{ErrorSubject, ErrorVerb, StorageError};

    use super::*;
    use crate::metadata::log_store::LogStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, MetaStateMachine), StorageError<TypeConfig>> {
            let io = |e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e);
            let tmp = tempfile::tempdir().map_err(io)?;
            let log = LogStore::open(tmp.path()).map_err(io)?;
            let sm = MetaStateMachine::open(tmp.path()).map_err(io)?;
            Ok((tmp, log, sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
        Suite::test_all(Builder).await
    }
}
