//! The metadata Raft group (openraft `=0.10.0-alpha.37`): durable log, state machine, network.
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

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures::{Stream, StreamExt};
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, OptionalSend, RaftLogReader, RaftNetworkFactory, RaftNetworkV2, RaftSnapshotBuilder, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
    CreateTopic { name: String, partitions: u32, config: TopicConfig, created_ms: i64 },
    AlterTopicConfig { name: String, config: TopicConfig },
    AddPartitions { name: String, count: u32 },
    DeleteTopic { name: String },
}

impl Command {
    /// The topic the command is about.
    pub fn topic(&self) -> &str {
        match self {
            Command::CreateTopic { name, .. }
            | Command::AlterTopicConfig { name, .. }
            | Command::AddPartitions { name, .. }
            | Command::DeleteTopic { name } => name,
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

type C = TypeConfig;
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

const LOG_FILE: &str = "raft-log.jsonl";
const VOTE_FILE: &str = "raft-vote.json";
const COMMITTED_FILE: &str = "raft-committed.json";
const SNAPSHOT_FILE: &str = "raft-snapshot.json";

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Durably replace `dir/name` with `bytes`: write tmp, fsync, rename, fsync dir.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(io::Error::other)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Run blocking file IO off the async worker threads.
async fn blocking<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

fn clone_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Durable log storage
// ---------------------------------------------------------------------------------------------

/// One line of `raft-log.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord {
    /// Everything up to and including this id is purged (only written as the first line).
    Purged(LogId),
    /// A log entry; it replaces any entry with index >= its own index.
    Entry(Box<Entry>),
}

#[derive(Debug, Default)]
struct LogMem {
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// Durable log store. Cloning is cheap; a clone is also used as the `LogReader`.
#[derive(Clone)]
pub struct LogStore {
    dir: Arc<PathBuf>,
    /// In-memory index of the live log (metadata logs are small and purged after snapshots).
    mem: Arc<Mutex<LogMem>>,
    /// Append handle of `raft-log.jsonl`; only used inside `blocking` by the (serialized) writer.
    file: Arc<Mutex<File>>,
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut mem = LogMem {
            vote: read_json_opt(&dir.join(VOTE_FILE))?,
            committed: read_json_opt::<Option<LogId>>(&dir.join(COMMITTED_FILE))?.flatten(),
            ..Default::default()
        };

        let path = dir.join(LOG_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        // Replay complete lines; a trailing segment without '\n' is a torn write from a crash
        // before fsync returned (its IOFlushed callback never fired), so it is dropped.
        let mut valid_len = 0usize;
        for line in data.split_inclusive(|b| *b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            let rec: LogRecord = serde_json::from_slice(line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("corrupt raft log at byte {valid_len}: {e}"))
            })?;
            match rec {
                LogRecord::Purged(id) => {
                    mem.entries = mem.entries.split_off(&(id.index + 1));
                    mem.last_purged = Some(id);
                }
                LogRecord::Entry(ent) => {
                    mem.entries.split_off(&ent.log_id.index);
                    mem.entries.insert(ent.log_id.index, *ent);
                }
            }
            valid_len += line.len();
        }

        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if valid_len < data.len() {
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        if !existed {
            fsync_dir(dir)?;
        }

        Ok(Self { dir: Arc::new(dir.to_path_buf()), mem: Arc::new(Mutex::new(mem)), file: Arc::new(Mutex::new(file)) })
    }

    /// Atomically rewrite the whole log file from `mem` (used by truncate and purge).
    async fn rewrite(&self, last_purged: Option<LogId>, entries: Vec<Entry>) -> io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = last_purged {
            serde_json::to_writer(&mut buf, &LogRecord::Purged(p)).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        for e in entries {
            serde_json::to_writer(&mut buf, &LogRecord::Entry(Box::new(e))).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let dir = self.dir.clone();
        let file = self.file.clone();
        blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            write_atomic(&dir, LOG_FILE, &buf)?;
            *f = OpenOptions::new().append(true).open(dir.join(LOG_FILE))?;
            Ok(())
        })
        .await
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.mem.lock().unwrap_or_else(PoisonError::into_inner).vote)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        let last = mem.entries.last_key_value().map(|(_, e)| e.log_id);
        Ok(LogState { last_purged_log_id: mem.last_purged, last_log_id: last.or_else(|| mem.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(vote).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        blocking(move || write_atomic(&dir, VOTE_FILE, &bytes)).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).vote = Some(*vote);
        Ok(())
    }

    // Persisting `committed` lets openraft re-apply committed entries on startup
    // (StorageHelper::get_initial_state). Without it the in-memory SM would only contain the
    // snapshot until a new leader commit is observed.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let bytes = serde_json::to_vec(&committed).map_err(io::Error::other)?;
        let dir = self.dir.clone();
        blocking(move || write_atomic(&dir, COMMITTED_FILE, &bytes)).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.mem.lock().unwrap_or_else(PoisonError::into_inner).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut buf = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut buf, &LogRecord::Entry(Box::new(e.clone()))).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let file = self.file.clone();
        let res = blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            f.write_all(&buf)?;
            f.sync_data()
        })
        .await;

        match res {
            Ok(()) => {
                {
                    let mut mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
                    for e in entries {
                        mem.entries.split_off(&e.log_id.index);
                        mem.entries.insert(e.log_id.index, e);
                    }
                }
                // Only now the entries are durable: signal openraft.
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(clone_err(&e)));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep_upto = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let (purged, entries) = {
            let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.entries.range(keep_upto..).next().is_none() {
                return Ok(());
            }
            (mem.last_purged, mem.entries.range(..keep_upto).map(|(_, e)| e.clone()).collect())
        };
        self.rewrite(purged, entries).await?;
        self.mem.lock().unwrap_or_else(PoisonError::into_inner).entries.split_off(&keep_upto);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let entries = {
            let mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
            if mem.last_purged.as_ref() >= Some(&log_id) {
                return Ok(());
            }
            mem.entries.range(log_id.index + 1..).map(|(_, e)| e.clone()).collect()
        };
        self.rewrite(Some(log_id), entries).await?;
        let mut mem = self.mem.lock().unwrap_or_else(PoisonError::into_inner);
        mem.entries = mem.entries.split_off(&(log_id.index + 1));
        mem.last_purged = Some(log_id);
        Ok(())
    }
}

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
                Some(_) => CommandResult::Ok,
                None => CommandResult::TopicNotFound,
            },
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
                data: serde_json::to_vec(&st.topics).map_err(io::Error::other)?,
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
        let topics: BTreeMap<String, TopicMeta> =
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
            st.topics = topics;
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

// ---------------------------------------------------------------------------------------------
// Network (single node: every RPC fails as Unreachable)
// ---------------------------------------------------------------------------------------------
//
// A real (gRPC) network implements `RaftNetworkV2<C>` per target node:
//   - `append_entries` (AppendEntriesRequest -> AppendEntriesResponse), optionally `stream_append`
//   - `vote` and `pre_vote` (VoteRequest -> VoteResponse)
//   - `full_snapshot` (send meta + SnapshotData (Vec<u8>) in chunks; receiver calls
//     `Raft::install_full_snapshot`), honoring the `cancel` future
//   - optionally `transfer_leader`, `backoff`
// and maps transport failures to `RPCError::Unreachable` (back off) / `RPCError::Network`
// (retry) / `RPCError::Timeout` (use `RPCOption::hard_ttl()`). The server side forwards the
// decoded requests to `Raft::append_entries`, `Raft::vote`, `Raft::pre_vote`,
// `Raft::install_full_snapshot`. All message types are serde-serializable with feature "serde".

pub struct NoNetwork;

pub struct UnreachableConn {
    target: u64,
}

impl UnreachableConn {
    fn err(&self) -> Unreachable<C> {
        Unreachable::from_string(format!("single-node metadata store: no network to node {}", self.target))
    }
}

impl RaftNetworkFactory<C> for NoNetwork {
    type Network = UnreachableConn;

    async fn new_client(&mut self, target: u64, _node: &Node) -> Self::Network {
        UnreachableConn { target }
    }
}

impl RaftNetworkV2<C> for UnreachableConn {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.err()))
    }

    async fn vote(&mut self, _rpc: VoteRequest<C>, _option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.err()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(self.err()))
    }
}
