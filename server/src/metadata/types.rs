//! The metadata Raft group's types (openraft `=0.10.0-alpha.37`): the type config, commands and
//! their results, and the file helpers the log store and state machine share.
//!
//! Layout of `dir` (all files are owned by this module):
//! - `raft-log.jsonl`: append-only Raft log, one JSON `LogRecord` per line, fsync'd on
//!   append. Truncate/purge rewrite it atomically (tmp + fsync + rename + dir fsync).
//! - `raft-vote.json`: last saved vote (tmp + fsync + rename + dir fsync).
//! - `raft-committed.json`: last saved committed log id (same); lets openraft re-apply on startup.
//! - `raft-snapshot.json`: last snapshot, meta + serialized topic map (same).
//!
//! The state machine itself is in memory. On restart openraft (`StorageHelper::get_initial_state`,
//! called inside `Raft::new`) first installs the persisted snapshot (`get_current_snapshot` ->
//! `install_snapshot`, because its last_log_id > applied=None), then re-applies the log range
//! `(last_applied, committed]` where `committed` comes from `RaftLogStorage::read_committed`.
//! Entries after `committed` are applied once this node is leader again and commits the blank
//! entry of its new term; `start()` waits for that via `ensure_linearizable`.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use serde::{Deserialize, Serialize};

use super::state_machine::MetaStateMachine;
use strata_storage::tier::TierObjectMeta;

use crate::group::service::GroupState;
use crate::registry::{RegistryCommand, RegistryOutcome};
use crate::topic::TopicConfig;

// ---------------------------------------------------------------------------------------------
// Type config
// ---------------------------------------------------------------------------------------------

/// Cluster member description stored in the membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// A metadata change, replicated through Raft and applied by every node's state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        config: TopicConfig,
        created_ms: i64,
    },
    AlterTopicConfig {
        name: String,
        config: TopicConfig,
    },
    AddPartitions {
        name: String,
        count: u32,
    },
    DeleteTopic {
        name: String,
    },
    /// A consumer group's committed offsets (the next offset to process), per topic partition.
    CommitOffsets {
        group: String,
        offsets: Vec<(String, u32, u64)>,
    },
    /// Forget a group: its committed offsets and its persisted state.
    DeleteGroupOffsets {
        group: String,
    },
    /// A consumer group's members, generation and assignment; applied only if newer (by
    /// version) than what is stored.
    SetGroup {
        group: String,
        state: Box<GroupState>,
    },
    /// An object uploaded to the tier: it must start where the partition's tiered data ends
    /// (or be the first); re-adding the same object is a no-op.
    TierAdd {
        topic: String,
        partition: u32,
        object: TierObject,
    },
    /// Forget the tiered objects that end at or below `below` (retention deleted them).
    TierRemove {
        topic: String,
        partition: u32,
        below: u64,
    },
    /// A schema-registry change (subjects, versions, ids, compatibility configs).
    Registry(RegistryCommand),
    /// A new idempotent producer session: the next producer id.
    AllocateProducerId,
}

/// One Parquet object of a partition's cold tier, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierObject {
    /// The object's key in the store (under the configured prefix).
    pub key: String,
    #[serde(flatten)]
    pub meta: TierObjectMeta,
}

impl Command {
    /// The topic or group the command is about.
    pub fn subject(&self) -> &str {
        match self {
            Command::CreateTopic { name, .. }
            | Command::AlterTopicConfig { name, .. }
            | Command::AddPartitions { name, .. }
            | Command::DeleteTopic { name } => name,
            Command::CommitOffsets { group, .. }
            | Command::DeleteGroupOffsets { group }
            | Command::SetGroup { group, .. } => group,
            Command::TierAdd { topic, .. } | Command::TierRemove { topic, .. } => topic,
            Command::Registry(command) => command.subject(),
            Command::AllocateProducerId => "producers",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateTopic { name, partitions, .. } => write!(f, "create topic {name} ({partitions} partitions)"),
            Command::AlterTopicConfig { name, .. } => write!(f, "alter config of topic {name}"),
            Command::AddPartitions { name, count } => write!(f, "grow topic {name} to {count} partitions"),
            Command::DeleteTopic { name } => write!(f, "delete topic {name}"),
            Command::CommitOffsets { group, offsets } => write!(f, "commit {} offsets of group {group}", offsets.len()),
            Command::DeleteGroupOffsets { group } => write!(f, "delete offsets of group {group}"),
            Command::TierAdd { topic, partition, object } => {
                write!(f, "tier {topic}/{partition} offsets {}..{}", object.meta.base_offset, object.meta.end_offset)
            }
            Command::TierRemove { topic, partition, below } => {
                write!(f, "forget tiered objects of {topic}/{partition} below {below}")
            }
            Command::SetGroup { group, state } => {
                write!(f, "group {group} at generation {} (version {})", state.group.generation, state.version())
            }
            Command::Registry(command) => write!(f, "registry: {command}"),
            Command::AllocateProducerId => write!(f, "allocate a producer id"),
        }
    }
}

/// What applying a command decided (validation happens in the state machine, so it is atomic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Ok,
    TopicExists,
    TopicNotFound,
    PartitionsNotIncreased {
        current: u32,
    },
    /// A tiered object that does not start where the partition's cold tier ends.
    TierGap {
        expected: u64,
    },
    /// What a registry command decided.
    Registry(RegistryOutcome),
    /// The producer id allocated.
    ProducerId(i64),
    ProducerIdsExhausted,
    /// Response for blank / membership entries (never returned by `Metadata::write`).
    Noop,
}

impl fmt::Display for CommandResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    /// openraft type config for the metadata Raft group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = Node,
);

pub(super) type C = TypeConfig;
pub type Entry = EntryOf<C>;
pub type LogId = LogIdOf<C>;
pub type Vote = VoteOf<C>;
pub type StoredMembershipT = StoredMembershipOf<C>;
pub type SnapshotMeta = SnapshotMetaOf<C>;
pub type Snapshot = SnapshotOf<C, Vec<u8>>;
/// `Raft` is generic over the state machine in 0.10.
pub type MetaRaft = openraft::Raft<C, MetaStateMachine>;

// ---------------------------------------------------------------------------------------------
// File helpers
// ---------------------------------------------------------------------------------------------

pub(super) const LOG_FILE: &str = "raft-log.jsonl";
pub(super) const VOTE_FILE: &str = "raft-vote.json";
pub(super) const COMMITTED_FILE: &str = "raft-committed.json";
pub(super) const SNAPSHOT_FILE: &str = "raft-snapshot.json";

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Durably replace `dir/name` with `bytes`: write tmp, fsync, rename, fsync dir.
pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

pub(super) fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Run blocking file IO off the async worker threads.
pub(super) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

pub(super) fn clone_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}
