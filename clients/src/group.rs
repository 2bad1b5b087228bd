//! The group consumer: membership, pushed records and commits on one `Consumer.Subscribe` stream.
//!
//! [`Client::group_consumer`](crate::Client::group_consumer) opens the stream, sends `join` and
//! waits for the first assignment. From then on the application drives everything from
//! [`GroupConsumer::poll`], on its own task, with no background task of the consumer's:
//!
//! ```text
//!  server ──assignment──▶ poll: on_revoked → commit (waits) → on_assigned → ack ─▶ server
//!         ──records────▶ poll: auto-commit what earlier polls returned, then return them
//!         ──commit_result▶ commit / commit_async callback (run inside poll, commit or close)
//! ```
//!
//! Positions: for every partition it owns the consumer remembers the offset after the last record
//! that `poll` *returned* (not received). `commit` commits those; auto-commit commits those; a
//! partition that goes away takes its position with it.
//!
//! A rebalance arrives as an assignment; partitions in its `revoking` list (the cooperative
//! `sticky` assignor, the server's default) are still this member's until it acks, so
//! [`RebalanceListener::on_revoked`] can name offsets to commit for them, and the consumer commits
//! them (waiting for the result) before it acks and the partitions move. With `range` and
//! `roundrobin` the server moves partitions at once: they simply disappear from the assignment,
//! `on_revoked` is still called, but a commit for them is refused (`stale_generation`).
//!
//! # Errors from commits
//!
//! A refused commit is [`ClientError::Server`] with `code` = `FAILED_PRECONDITION` and a
//! `message` that starts with `stale_generation:` (a generation that is too old, or a partition
//! this member no longer owns; see [`ClientError::is_stale_generation`]); an unknown member is
//! `NOT_FOUND` (`unknown_member:`). A refused commit does not end the stream. When the stream ends
//! (the server stopped, the connection broke, the member was removed), every later call returns
//! that error: build a new consumer to join again.
//!
//! # Recipes
//!
//! **At most once** — commit, then process. A record is never processed twice; a crash while
//! processing loses the rest of that batch (it was committed, nobody reads it again).
//!
//! ```no_run
//! # use std::time::Duration;
//! # use strata_client::{Client, ClientError, GroupConfig};
//! # fn process(_: &strata_client::GroupRecord) {}
//! # async fn example(client: Client) -> Result<(), ClientError> {
//! let config = GroupConfig { auto_commit: None, ..GroupConfig::new("billing", ["orders"]) };
//! let mut consumer = client.group_consumer(config).await?;
//! loop {
//!     let records = consumer.poll(Duration::from_secs(1)).await?;
//!     if records.is_empty() {
//!         continue;
//!     }
//!     consumer.commit().await?; // positions are already past these records
//!     for record in &records {
//!         process(record);
//!     }
//! }
//! # }
//! ```
//!
//! **At least once** — process, then commit, and commit on revoke. Nothing is lost; a record is
//! processed again when the consumer processed it but its offset was not committed before the
//! partition went to another member: the process crashed or was killed between processing and
//! `commit`; it stopped polling for longer than the session timeout (its partitions were taken
//! without a commit); a commit was refused (`stale_generation`) because the partition had already
//! moved, which is what happens with the eager `range`/`roundrobin` assignors; or it was dropped
//! or closed without committing. At most the records processed since the last successful commit
//! come again, and they come again in order.
//!
//! ```no_run
//! # use std::collections::BTreeMap;
//! # use std::time::Duration;
//! # use strata_client::{Client, ClientError, GroupConfig, RebalanceListener, TopicPartition};
//! # fn process(_: &strata_client::GroupRecord) {}
//! struct CommitOnRevoke;
//!
//! impl RebalanceListener for CommitOnRevoke {
//!     fn on_revoked(
//!         &mut self,
//!         revoked: &[TopicPartition],
//!         positions: &BTreeMap<TopicPartition, u64>,
//!     ) -> Vec<(TopicPartition, u64)> {
//!         // Everything returned by earlier polls has been processed (the loop below finishes a
//!         // batch before it polls again), so the positions are safe to commit.
//!         revoked.iter().filter_map(|tp| positions.get(tp).map(|&o| (tp.clone(), o))).collect()
//!     }
//! }
//!
//! # async fn example(client: Client) -> Result<(), ClientError> {
//! let config = GroupConfig { auto_commit: None, ..GroupConfig::new("billing", ["orders"]) };
//! let mut consumer = client.group_consumer_with_listener(config, CommitOnRevoke).await?;
//! loop {
//!     let records = consumer.poll(Duration::from_secs(1)).await?;
//!     for record in &records {
//!         process(record);
//!     }
//!     if !records.is_empty() {
//!         consumer.commit().await?; // or commit_async(|result| ..) to not wait for it
//!     }
//! }
//! # }
//! ```
//!
//! **Auto-commit** (`auto_commit: Some(interval)`, 5 s by default, as Kafka) — at least once with
//! fewer commits: each `poll`, once the interval has passed, first commits the positions of the
//! records that *earlier* polls returned, then returns new ones; a revoke commits the revoked
//! partitions' positions (unless the listener names offsets itself), and `close` commits the final
//! positions. This is at least once only if every batch is processed before the next `poll`: hand
//! records to another task and poll on, and a commit can cover records that were never processed
//! (lost on a crash). The price of fewer commits is more duplicates: a crash redelivers up to one
//! interval's worth of records plus the last batch, against one batch with a commit per batch.
//!
//! # Cancel safety
//!
//! Use the `timeout` of `poll` rather than cancelling it: a `poll` dropped while it handles a
//! rebalance (waiting for the revoke commit) never acks that assignment, and the member keeps the
//! revoked partitions, idle, until its session times out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use pb::subscribe_request::Kind as Request;
use pb::subscribe_response::Kind as Response;
use strata_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;

use crate::ClientError;

/// The server's default for records per `records` message, used as the per-poll cap for `0`.
const DEFAULT_MAX_RECORDS: u32 = 500;
/// How long the consumer waits for the first assignment or for a commit's result.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `close` waits for the server to end the stream after leaving.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        Self { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl From<pb::TopicPartition> for TopicPartition {
    fn from(tp: pb::TopicPartition) -> Self {
        Self { topic: tp.topic, partition: tp.partition }
    }
}

/// Where a partition with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest record still stored (the server's default).
    #[default]
    Earliest,
    /// Only records produced after the member starts reading the partition.
    Latest,
}

/// How to join a group. `GroupConfig::new(group, topics)` fills in the defaults.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: String,
    /// Topic names, or regular expressions over whole topic names.
    pub topics: Vec<String>,
    /// `range`, `roundrobin` or `sticky`; `None` = the server's default (`sticky`, cooperative).
    pub assignor: Option<String>,
    /// The member leaves the group if it is not heard from for this long (1 s ..= 300 s; 10 s).
    pub session_timeout: Duration,
    /// Where partitions without a committed offset start (earliest).
    pub reset: OffsetReset,
    /// Most records one `poll` returns, also the most per message the server pushes (500).
    pub max_records: u32,
    /// Auto-commit interval; `None` = commit only when asked (5 s, as Kafka).
    pub auto_commit: Option<Duration>,
}

impl GroupConfig {
    pub fn new(group: impl Into<String>, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { group: group.into(), topics: topics.into_iter().map(Into::into).collect(), ..Self::default() }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            group: String::new(),
            topics: Vec::new(),
            assignor: None,
            session_timeout: Duration::from_secs(10),
            reset: OffsetReset::Earliest,
            max_records: DEFAULT_MAX_RECORDS,
            auto_commit: Some(Duration::from_secs(5)),
        }
    }
}

/// A record read through a group: its topic and the record (partition, offset, key, value, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub topic: String,
    pub record: pb::FetchedRecord,
}

impl GroupRecord {
    pub fn partition(&self) -> u32 {
        self.record.partition
    }

    pub fn offset(&self) -> u64 {
        self.record.offset
    }

    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(self.topic.clone(), self.record.partition)
    }
}

/// Told about partitions coming and going; called from inside `poll` (and the first assignment
/// from inside `group_consumer`), on the application's task.
///
/// Contract: `on_revoked` runs before the revoked partitions are handed over, while the member may
/// still commit them; the offsets it returns are committed (and the result awaited) before the
/// consumer acks the assignment. It is called for partitions in the assignment's `revoking` list
/// and for partitions that disappeared from the assignment without one (eager assignors; commits
/// for those are refused). `on_assigned` runs after `on_revoked`, for partitions new to this
/// member. Both run once per assignment that changes something, with no await in between.
pub trait RebalanceListener: Send {
    /// `positions` holds the next offset to read of every partition this member returned records
    /// from (including the revoked ones). Returns offsets to commit before the partitions go;
    /// with auto-commit on, an empty answer commits the revoked partitions' positions.
    fn on_revoked(
        &mut self,
        revoked: &[TopicPartition],
        positions: &BTreeMap<TopicPartition, u64>,
    ) -> Vec<(TopicPartition, u64)> {
        let _ = (revoked, positions);
        Vec::new()
    }

    /// Partitions new to this member; records from them start at the group's committed offset
    /// (else the reset policy).
    fn on_assigned(&mut self, assigned: &[TopicPartition]) {
        let _ = assigned;
    }
}

/// A listener that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopListener;

impl RebalanceListener for NoopListener {}

impl ClientError {
    /// A commit the server refused because the member's generation is too old or the partition is
    /// no longer its own (code `stale_generation`).
    pub fn is_stale_generation(&self) -> bool {
        matches!(self, ClientError::Server { code: tonic::Code::FailedPrecondition, message }
            if message.starts_with("stale_generation"))
    }
}

/// What an assignment changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rebalance {
    generation: u64,
    /// In `revoking`, or owned before and gone now.
    revoked: Vec<TopicPartition>,
    /// Owned now and not before.
    assigned: Vec<TopicPartition>,
}

/// The consumer's bookkeeping, without I/O: ownership, positions and what is known committed.
#[derive(Debug, Default)]
struct Tracker {
    member_id: String,
    generation: u64,
    /// Partitions records come from (an assignment's `partitions`, never its `revoking`).
    owned: BTreeSet<TopicPartition>,
    /// Next offset after the last record returned, per partition that returned any.
    positions: BTreeMap<TopicPartition, u64>,
    /// Offsets this consumer committed successfully, per partition it still tracks.
    committed: BTreeMap<TopicPartition, u64>,
}

impl Tracker {
    /// Takes a new assignment. Positions of revoked partitions stay until [`Tracker::release`],
    /// so the listener can still see and commit them.
    fn assign(&mut self, assignment: pb::Assignment) -> Rebalance {
        let revoking: BTreeSet<TopicPartition> = assignment.revoking.into_iter().map(Into::into).collect();
        let now: BTreeSet<TopicPartition> =
            assignment.partitions.into_iter().map(TopicPartition::from).filter(|tp| !revoking.contains(tp)).collect();
        let mut revoked: BTreeSet<TopicPartition> = self.owned.difference(&now).cloned().collect();
        revoked.extend(revoking);
        let assigned = now.difference(&self.owned).cloned().collect();
        self.member_id = assignment.member_id;
        self.generation = assignment.generation;
        self.owned = now;
        Rebalance { generation: self.generation, revoked: revoked.into_iter().collect(), assigned }
    }

    /// Forgets partitions that are no longer this member's.
    fn release(&mut self, revoked: &[TopicPartition]) {
        for tp in revoked {
            if !self.owned.contains(tp) {
                self.positions.remove(tp);
                self.committed.remove(tp);
            }
        }
    }

    /// Keeps the records of owned partitions and moves positions past them.
    fn accept(&mut self, records: Vec<pb::GroupRecord>) -> Vec<GroupRecord> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let Some(record) = r.record else {
                tracing::debug!(topic = %r.topic, "group record without a record; skipped");
                continue;
            };
            let tp = TopicPartition::new(r.topic.clone(), record.partition);
            if !self.owned.contains(&tp) {
                tracing::debug!(%tp, offset = record.offset, "record of a partition not owned; skipped");
                continue;
            }
            self.positions.insert(tp, record.offset + 1);
            out.push(GroupRecord { topic: r.topic, record });
        }
        out
    }

    /// Positions not known to be committed.
    fn uncommitted(&self) -> Vec<(TopicPartition, u64)> {
        self.positions
            .iter()
            .filter(|(tp, o)| self.committed.get(*tp) != Some(*o))
            .map(|(tp, o)| (tp.clone(), *o))
            .collect()
    }

    /// Positions of `tps` not known to be committed.
    fn uncommitted_of(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, u64)> {
        self.uncommitted().into_iter().filter(|(tp, _)| tps.contains(tp)).collect()
    }

    /// Records a successful commit (for partitions still tracked).
    fn committed(&mut self, offsets: &[(TopicPartition, u64)]) {
        for (tp, offset) in offsets {
            if self.owned.contains(tp) || self.positions.contains_key(tp) {
                self.committed.insert(tp.clone(), *offset);
            }
        }
    }
}

/// Offsets to commit for `revoked`: the listener's, else (auto-commit) their uncommitted positions.
fn revoke_offsets(
    listener: &mut dyn RebalanceListener,
    tracker: &Tracker,
    revoked: &[TopicPartition],
    auto_commit: bool,
) -> Vec<(TopicPartition, u64)> {
    let offsets = listener.on_revoked(revoked, &tracker.positions);
    if offsets.is_empty() && auto_commit { tracker.uncommitted_of(revoked) } else { offsets }
}

/// The error of a refused commit, as the stream's other errors: the stable code first.
fn commit_error(e: pb::Error) -> ClientError {
    let code = match e.code.as_str() {
        "stale_generation" | "group_not_empty" => tonic::Code::FailedPrecondition,
        "unknown_member" | "topic_not_found" | "partition_not_found" | "not_found" => tonic::Code::NotFound,
        "invalid_request" => tonic::Code::InvalidArgument,
        "unavailable" => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    let message = if e.message.starts_with(&e.code) { e.message } else { format!("{}: {}", e.code, e.message) };
    ClientError::Server { code, message }
}

type CommitCallback = Box<dyn FnOnce(Result<(), ClientError>) + Send>;

/// Who waits for a commit's result.
enum Waiter {
    /// A `commit`/`commit_offsets`/revoke commit awaiting it in place.
    Sync,
    Async(CommitCallback),
    Auto,
}

struct InFlight {
    offsets: Vec<(TopicPartition, u64)>,
    waiter: Waiter,
}

/// What arrived while the consumer waited for a commit's result, kept in arrival order.
#[derive(Debug)]
enum Inbound {
    Assignment(pb::Assignment),
    Records(Vec<pb::GroupRecord>),
}

/// A member of a consumer group, reading over one gRPC stream. See the [module docs](self).
///
/// Dropping it closes the stream (the member leaves) without committing; [`GroupConsumer::close`]
/// commits first when auto-commit is on.
pub struct GroupConsumer {
    config: GroupConfig,
    /// `None` once closed: the request stream has ended.
    tx: Option<mpsc::Sender<pb::SubscribeRequest>>,
    stream: Streaming<pb::SubscribeResponse>,
    tracker: Tracker,
    listener: Box<dyn RebalanceListener>,
    inbox: VecDeque<Inbound>,
    in_flight: HashMap<u64, InFlight>,
    next_commit_id: u64,
    next_auto_commit: Option<Instant>,
    max_poll_records: usize,
    /// Set when the stream ended: every later call returns it.
    failed: Option<ClientError>,
}

impl fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.tracker.member_id)
            .field("generation", &self.tracker.generation)
            .field("assignment", &self.tracker.owned)
            .field("positions", &self.tracker.positions)
            .field("commits_in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Opens the stream, joins and waits for the first assignment (running the listener on it).
    pub(crate) async fn join(
        channel: Channel,
        config: GroupConfig,
        listener: Box<dyn RebalanceListener>,
    ) -> Result<Self, ClientError> {
        if config.group.is_empty() {
            return Err(ClientError::Invalid("a group consumer needs a group name".into()));
        }
        if config.topics.is_empty() {
            return Err(ClientError::Invalid("a group consumer needs at least one topic".into()));
        }
        let join = pb::JoinGroup {
            group: config.group.clone(),
            topics: config.topics.clone(),
            assignor: config.assignor.clone().unwrap_or_default(),
            session_timeout_ms: config.session_timeout.as_millis().min(u128::from(u32::MAX)) as u32,
            reset: match config.reset {
                OffsetReset::Earliest => pb::Position::Earliest as i32,
                OffsetReset::Latest => pb::Position::Latest as i32,
            },
            max_records: config.max_records,
        };
        let (tx, rx) = mpsc::channel(64);
        // Queued before the call: the server may read the join before it answers with headers.
        tx.send(pb::SubscribeRequest { kind: Some(Request::Join(join)) }).await.map_err(|_| closed())?;
        let mut client = pb::consumer_client::ConsumerClient::new(channel).max_decoding_message_size(256 << 20);
        let stream = client.subscribe(ReceiverStream::new(rx)).await?.into_inner();
        let max_poll_records = if config.max_records == 0 { DEFAULT_MAX_RECORDS } else { config.max_records };
        let mut consumer = Self {
            next_auto_commit: config.auto_commit.map(|interval| Instant::now() + interval),
            config,
            tx: Some(tx),
            stream,
            tracker: Tracker::default(),
            listener,
            inbox: VecDeque::new(),
            in_flight: HashMap::new(),
            next_commit_id: 1,
            max_poll_records: max_poll_records as usize,
            failed: None,
        };
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match consumer.read(deadline).await? {
                None => {
                    return Err(ClientError::Server {
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no assignment within {} s of joining", REPLY_TIMEOUT.as_secs()),
                    });
                }
                Some(Response::Assignment(a)) => {
                    consumer.rebalance(a).await?;
                    return Ok(consumer);
                }
                Some(Response::Records(r)) => consumer.inbox.push_back(Inbound::Records(r.records)),
                Some(Response::CommitResult(r)) => consumer.settle(r),
            }
        }
    }

    /// Waits up to `timeout` for records and returns them (at most `max_records`, in offset order
    /// per partition). Handles rebalances (listener, revoke commits, ack), settles commit results
    /// (running `commit_async` callbacks) and, when due, auto-commits what earlier polls returned.
    /// An empty answer means the timeout passed.
    ///
    /// # Errors
    /// A revoke commit that was refused (the assignment was still acked, the consumer goes on);
    /// [`ClientError::Server`] when the stream ended (the consumer is then unusable).
    ///
    /// # Cancel safety
    /// Not cancel safe during a rebalance: use `timeout` (see the module docs).
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            // What arrived while a commit was awaited comes first, in arrival order.
            while let Some(item) = self.inbox.pop_front() {
                match item {
                    Inbound::Assignment(a) => self.rebalance(a).await?,
                    Inbound::Records(records) => {
                        self.inbox.push_front(Inbound::Records(records));
                        let out = self.deliver().await?;
                        if !out.is_empty() {
                            return Ok(out);
                        }
                    }
                }
            }
            match self.read(deadline).await? {
                None => {
                    self.auto_commit_if_due().await?;
                    return Ok(Vec::new());
                }
                Some(Response::CommitResult(r)) => self.settle(r),
                Some(Response::Assignment(a)) => self.rebalance(a).await?,
                Some(Response::Records(r)) => {
                    self.inbox.push_back(Inbound::Records(r.records));
                    let out = self.deliver().await?;
                    if !out.is_empty() {
                        return Ok(out);
                    }
                }
            }
        }
    }

    /// Commits the current positions (the offset after the last record `poll` returned, per
    /// partition) and waits for the result. Does nothing before any record was returned.
    ///
    /// # Errors
    /// `stale_generation` (see the module docs), a timeout, or the stream's end.
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        let offsets: Vec<_> = self.tracker.positions.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        if offsets.is_empty() {
            return self.failed.clone().map_or(Ok(()), Err);
        }
        self.commit_sync(offsets).await
    }

    /// Commits these offsets (each the next offset to process) and waits for the result.
    ///
    /// # Errors
    /// As [`GroupConsumer::commit`].
    pub async fn commit_offsets(
        &mut self,
        offsets: impl IntoIterator<Item = (TopicPartition, u64)>,
    ) -> Result<(), ClientError> {
        self.commit_sync(offsets.into_iter().collect()).await
    }

    /// Sends a commit of the current positions without waiting; `callback` gets the result from a
    /// later `poll`, `commit` or `close` (at once when there is nothing to commit or the request
    /// cannot be sent). Callbacks not run by then are dropped with the consumer.
    pub async fn commit_async(&mut self, callback: impl FnOnce(Result<(), ClientError>) + Send + 'static) {
        let offsets: Vec<_> = self.tracker.positions.iter().map(|(tp, o)| (tp.clone(), *o)).collect();
        if offsets.is_empty() {
            callback(self.failed.clone().map_or(Ok(()), Err));
            return;
        }
        if let Err((e, waiter)) = self.send_commit(offsets, Waiter::Async(Box::new(callback))).await
            && let Waiter::Async(callback) = waiter
        {
            callback(Err(e));
        }
    }

    /// Partitions records come from now.
    pub fn assignment(&self) -> &BTreeSet<TopicPartition> {
        &self.tracker.owned
    }

    pub fn member_id(&self) -> &str {
        &self.tracker.member_id
    }

    pub fn generation(&self) -> u64 {
        self.tracker.generation
    }

    /// The offset after the last record `poll` returned from this partition, if any.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.tracker.positions.get(&TopicPartition::new(topic, partition)).copied()
    }

    /// Every position (see [`GroupConsumer::position`]).
    pub fn positions(&self) -> &BTreeMap<TopicPartition, u64> {
        &self.tracker.positions
    }

    /// Changes the most records one `poll` returns (at least 1); records beyond it wait, already
    /// received, for the next poll. E.g. to stop after exactly N records.
    pub fn set_max_poll_records(&mut self, max: usize) {
        self.max_poll_records = max.max(1);
    }

    /// Leaves the group: with auto-commit on, commits the final positions first (and waits);
    /// lets outstanding `commit_async` results arrive (their callbacks run); then ends the
    /// stream and waits briefly for the server to end its side.
    ///
    /// # Errors
    /// The final auto-commit's failure (the member leaves all the same).
    pub async fn close(mut self) -> Result<(), ClientError> {
        let mut result = Ok(());
        if self.config.auto_commit.is_some() && self.failed.is_none() {
            let offsets = self.tracker.uncommitted();
            if !offsets.is_empty() {
                result = self.commit_sync(offsets).await;
            }
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while !self.in_flight.is_empty() && self.failed.is_none() {
            match self.read(deadline).await {
                Ok(Some(Response::CommitResult(r))) => self.settle(r),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.fail_in_flight(&closed());
        self.tx = None;
        let deadline = Instant::now() + CLOSE_GRACE;
        while let Ok(Ok(Some(_))) = tokio::time::timeout_at(deadline, self.stream.message()).await {}
        result
    }

    /// Returns up to `max_poll_records` of the buffered records (up to the next buffered
    /// assignment), auto-committing first when due so the commit covers only earlier polls.
    async fn deliver(&mut self) -> Result<Vec<GroupRecord>, ClientError> {
        self.auto_commit_if_due().await?;
        let raw = take_records(&mut self.inbox, self.max_poll_records);
        Ok(self.tracker.accept(raw))
    }

    async fn auto_commit_if_due(&mut self) -> Result<(), ClientError> {
        let (Some(interval), Some(due)) = (self.config.auto_commit, self.next_auto_commit) else {
            return Ok(());
        };
        let now = Instant::now();
        if now < due {
            return Ok(());
        }
        self.next_auto_commit = Some(now + interval);
        let offsets = self.tracker.uncommitted();
        if offsets.is_empty() {
            return Ok(());
        }
        self.send_commit(offsets, Waiter::Auto).await.map(|_id| ()).map_err(|(e, _)| e)
    }

    /// Handles an assignment: listener, revoke commit (awaited), forgetting what left, ack.
    async fn rebalance(&mut self, assignment: pb::Assignment) -> Result<(), ClientError> {
        let change = self.tracker.assign(assignment);
        tracing::debug!(
            generation = change.generation,
            revoked = change.revoked.len(),
            assigned = change.assigned.len(),
            "assignment"
        );
        let mut result = Ok(());
        if !change.revoked.is_empty() {
            let offsets = revoke_offsets(
                self.listener.as_mut(),
                &self.tracker,
                &change.revoked,
                self.config.auto_commit.is_some(),
            );
            if !offsets.is_empty() {
                result = self.commit_sync(offsets).await;
            }
            self.tracker.release(&change.revoked);
        }
        if !change.assigned.is_empty() {
            self.listener.on_assigned(&change.assigned);
        }
        self.send(Request::Ack(pb::AssignmentAck { generation: change.generation })).await?;
        result
    }

    async fn commit_sync(&mut self, offsets: Vec<(TopicPartition, u64)>) -> Result<(), ClientError> {
        let id = self.send_commit(offsets, Waiter::Sync).await.map_err(|(e, _)| e)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            match self.read(deadline).await? {
                None => {
                    self.in_flight.remove(&id);
                    return Err(ClientError::Server {
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no commit result within {} s", REPLY_TIMEOUT.as_secs()),
                    });
                }
                Some(Response::CommitResult(r)) if r.id == id => {
                    let offsets = self.in_flight.remove(&id).map(|f| f.offsets).unwrap_or_default();
                    return match r.error {
                        None => {
                            self.tracker.committed(&offsets);
                            Ok(())
                        }
                        Some(e) => Err(commit_error(e)),
                    };
                }
                Some(Response::CommitResult(r)) => self.settle(r),
                Some(Response::Assignment(a)) => self.inbox.push_back(Inbound::Assignment(a)),
                Some(Response::Records(r)) => self.inbox.push_back(Inbound::Records(r.records)),
            }
        }
    }

    /// Sends a commit under the current generation; on failure hands the waiter back.
    async fn send_commit(
        &mut self,
        offsets: Vec<(TopicPartition, u64)>,
        waiter: Waiter,
    ) -> Result<u64, (ClientError, Waiter)> {
        let id = self.next_commit_id;
        self.next_commit_id += 1;
        let request = pb::CommitOffsets {
            id,
            generation: self.tracker.generation,
            offsets: offsets
                .iter()
                .map(|(tp, offset)| pb::PartitionOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: *offset,
                })
                .collect(),
        };
        if let Err(e) = self.send(Request::Commit(request)).await {
            return Err((e, waiter));
        }
        self.in_flight.insert(id, InFlight { offsets, waiter });
        Ok(id)
    }

    async fn send(&mut self, kind: Request) -> Result<(), ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(tx) = &self.tx else {
            return Err(closed());
        };
        if tx.send(pb::SubscribeRequest { kind: Some(kind) }).await.is_err() {
            // The request stream is gone: tonic dropped it because the call ended.
            let e = ClientError::Server {
                code: tonic::Code::Unavailable,
                message: "unavailable: the group stream ended".into(),
            };
            self.fail(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Reads one message (`Ok(None)` at the deadline). The stream's end fails the consumer.
    async fn read(&mut self, deadline: Instant) -> Result<Option<Response>, ClientError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let e = loop {
            // `Streaming::message` keeps its decoding state in the stream: a timeout loses nothing.
            match tokio::time::timeout_at(deadline, self.stream.message()).await {
                Err(_elapsed) => return Ok(None),
                Ok(Ok(Some(pb::SubscribeResponse { kind: Some(kind) }))) => return Ok(Some(kind)),
                Ok(Ok(Some(pb::SubscribeResponse { kind: None }))) => tracing::debug!("empty subscribe response"),
                Ok(Ok(None)) => {
                    break ClientError::Server {
                        code: tonic::Code::Unavailable,
                        message: "unavailable: the server ended the group stream".into(),
                    };
                }
                Ok(Err(status)) => break ClientError::from(status),
            }
        };
        self.fail(e.clone());
        Err(e)
    }

    /// Settles an async or auto commit's result.
    fn settle(&mut self, result: pb::CommitResult) {
        let Some(flight) = self.in_flight.remove(&result.id) else {
            tracing::debug!(id = result.id, "result of an unknown commit; ignored");
            return;
        };
        let result = match result.error {
            None => {
                self.tracker.committed(&flight.offsets);
                Ok(())
            }
            Some(e) => Err(commit_error(e)),
        };
        match flight.waiter {
            Waiter::Async(callback) => callback(result),
            Waiter::Auto => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, group = %self.config.group, "auto-commit failed");
                }
            }
            Waiter::Sync => {}
        }
    }

    fn fail(&mut self, e: ClientError) {
        self.fail_in_flight(&e);
        self.failed = Some(e);
    }

    /// Gives every waiting callback `e`.
    fn fail_in_flight(&mut self, e: &ClientError) {
        for (_, flight) in self.in_flight.drain() {
            if let Waiter::Async(callback) = flight.waiter {
                callback(Err(e.clone()));
            }
        }
    }
}

/// Takes up to `max` records from the front of `inbox`, stopping at a buffered assignment (it is
/// handled before the records after it).
fn take_records(inbox: &mut VecDeque<Inbound>, max: usize) -> Vec<pb::GroupRecord> {
    let mut out = Vec::new();
    while out.len() < max && matches!(inbox.front(), Some(Inbound::Records(_))) {
        let Some(Inbound::Records(mut records)) = inbox.pop_front() else {
            break;
        };
        let room = max - out.len();
        if records.len() > room {
            inbox.push_front(Inbound::Records(records.split_off(room)));
        }
        out.extend(records);
    }
    out
}

fn closed() -> ClientError {
    ClientError::Server { code: tonic::Code::Cancelled, message: "cancelled: the group consumer is closed".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    fn pb_tp(topic: &str, partition: u32) -> pb::TopicPartition {
        pb::TopicPartition { topic: topic.into(), partition }
    }

    fn assignment(generation: u64, partitions: &[u32], revoking: &[u32]) -> pb::Assignment {
        pb::Assignment {
            member_id: "g-1".into(),
            generation,
            partitions: partitions.iter().map(|&p| pb_tp("t", p)).collect(),
            revoking: revoking.iter().map(|&p| pb_tp("t", p)).collect(),
        }
    }

    fn record(partition: u32, offset: u64) -> pb::GroupRecord {
        pb::GroupRecord {
            topic: "t".into(),
            record: Some(pb::FetchedRecord { partition, offset, ..Default::default() }),
        }
    }

    #[test]
    fn first_assignment_assigns_everything_and_revokes_nothing() {
        let mut t = Tracker::default();
        let change = t.assign(assignment(1, &[0, 2], &[]));
        assert_eq!(change, Rebalance { generation: 1, revoked: vec![], assigned: vec![tp("t", 0), tp("t", 2)] });
        assert_eq!((t.member_id.as_str(), t.generation), ("g-1", 1));
        assert!(t.positions.is_empty(), "no position before a record was returned");
    }

    #[test]
    fn positions_follow_returned_records_of_owned_partitions_only() {
        let mut t = Tracker::default();
        t.assign(assignment(1, &[0, 1], &[]));
        let mut records = vec![record(0, 5), record(0, 6), record(1, 0), record(3, 9)];
        records.push(pb::GroupRecord { topic: "t".into(), record: None });
        let out = t.accept(records);
        let got: Vec<(u32, u64)> = out.iter().map(|r| (r.partition(), r.offset())).collect();
        assert_eq!(got, vec![(0, 5), (0, 6), (1, 0)], "partition 3 is not owned; a missing record is skipped");
        assert_eq!(t.positions, BTreeMap::from([(tp("t", 0), 7), (tp("t", 1), 1)]));
    }

    #[test]
    fn revoked_partitions_keep_positions_until_released() {
        let mut t = Tracker::default();
        t.assign(assignment(1, &[0, 1, 2], &[]));
        t.accept(vec![record(0, 3), record(1, 4), record(2, 5)]);
        t.committed(&[(tp("t", 0), 4), (tp("t", 1), 5)]);
        // Generation 2: partition 1 is revoking (cooperative), partition 2 vanished (eager).
        let change = t.assign(assignment(2, &[0, 3], &[1]));
        assert_eq!(change.revoked, vec![tp("t", 1), tp("t", 2)]);
        assert_eq!(change.assigned, vec![tp("t", 3)]);
        assert_eq!(t.owned, BTreeSet::from([tp("t", 0), tp("t", 3)]), "a revoking partition sends no more records");
        assert_eq!(t.positions.len(), 3, "the listener still sees the revoked positions");
        t.release(&change.revoked);
        assert_eq!(t.positions, BTreeMap::from([(tp("t", 0), 4)]));
        assert_eq!(t.committed, BTreeMap::from([(tp("t", 0), 4)]));
        // A late result for a released partition does not bring it back.
        t.committed(&[(tp("t", 1), 5)]);
        assert!(!t.committed.contains_key(&tp("t", 1)));
    }

    #[test]
    fn a_partition_both_listed_and_revoking_counts_as_revoked() {
        let mut t = Tracker::default();
        t.assign(assignment(1, &[0, 1], &[]));
        let change = t.assign(assignment(2, &[0, 1], &[1]));
        assert_eq!(change.revoked, vec![tp("t", 1)]);
        assert!(change.assigned.is_empty());
        assert!(!t.owned.contains(&tp("t", 1)));
    }

    #[test]
    fn uncommitted_is_what_moved_since_the_last_successful_commit() {
        let mut t = Tracker::default();
        t.assign(assignment(1, &[0, 1], &[]));
        t.accept(vec![record(0, 0), record(1, 0)]);
        assert_eq!(t.uncommitted(), vec![(tp("t", 0), 1), (tp("t", 1), 1)]);
        t.committed(&[(tp("t", 0), 1), (tp("t", 1), 1)]);
        assert!(t.uncommitted().is_empty());
        t.accept(vec![record(1, 1)]);
        assert_eq!(t.uncommitted(), vec![(tp("t", 1), 2)]);
        assert_eq!(t.uncommitted_of(&[tp("t", 0)]), vec![]);
        assert_eq!(t.uncommitted_of(&[tp("t", 1)]), vec![(tp("t", 1), 2)]);
    }

    /// Records what it was told and answers with canned offsets.
    #[derive(Default)]
    struct Scripted {
        answer: Vec<(TopicPartition, u64)>,
        seen: Vec<(Vec<TopicPartition>, BTreeMap<TopicPartition, u64>)>,
    }

    impl RebalanceListener for Scripted {
        fn on_revoked(
            &mut self,
            revoked: &[TopicPartition],
            positions: &BTreeMap<TopicPartition, u64>,
        ) -> Vec<(TopicPartition, u64)> {
            self.seen.push((revoked.to_vec(), positions.clone()));
            self.answer.clone()
        }
    }

    #[test]
    fn revoke_commits_what_the_listener_names_else_auto_commits_revoked_positions() {
        let mut t = Tracker::default();
        t.assign(assignment(1, &[0, 1], &[]));
        t.accept(vec![record(0, 9), record(1, 4)]);
        let change = t.assign(assignment(2, &[0], &[1]));

        let mut listener = Scripted { answer: vec![(tp("t", 1), 3)], ..Scripted::default() };
        assert_eq!(revoke_offsets(&mut listener, &t, &change.revoked, true), vec![(tp("t", 1), 3)]);
        assert_eq!(listener.seen[0].0, vec![tp("t", 1)]);
        assert_eq!(listener.seen[0].1.get(&tp("t", 1)), Some(&5));

        let mut silent = Scripted::default();
        assert_eq!(
            revoke_offsets(&mut silent, &t, &change.revoked, true),
            vec![(tp("t", 1), 5)],
            "auto-commit commits the revoked partition's position, not the others'"
        );
        assert!(revoke_offsets(&mut silent, &t, &change.revoked, false).is_empty(), "manual: nothing by itself");
        assert!(revoke_offsets(&mut NoopListener, &t, &change.revoked, false).is_empty());
    }

    #[test]
    fn buffered_records_are_taken_up_to_the_cap_and_never_past_an_assignment() {
        let mut inbox = VecDeque::from([
            Inbound::Records(vec![record(0, 0), record(0, 1), record(0, 2)]),
            Inbound::Records(vec![record(0, 3)]),
            Inbound::Assignment(assignment(2, &[0], &[])),
            Inbound::Records(vec![record(0, 4)]),
        ]);
        let offsets = |v: Vec<pb::GroupRecord>| v.iter().filter_map(|r| r.record.as_ref()).map(|r| r.offset).collect();
        let first: Vec<u64> = offsets(take_records(&mut inbox, 2));
        assert_eq!(first, vec![0, 1]);
        let second: Vec<u64> = offsets(take_records(&mut inbox, 10));
        assert_eq!(second, vec![2, 3], "stops before the assignment");
        assert!(matches!(inbox.front(), Some(Inbound::Assignment(_))));
        assert!(take_records(&mut inbox, 10).is_empty(), "the assignment must be handled first");
        inbox.pop_front();
        let third: Vec<u64> = offsets(take_records(&mut inbox, 10));
        assert_eq!(third, vec![4]);
        assert!(inbox.is_empty());
    }

    #[test]
    fn refused_commits_carry_their_stable_code() {
        let stale = commit_error(pb::Error { code: "stale_generation".into(), message: "generation 1 < 2".into() });
        assert!(matches!(&stale, ClientError::Server { code: tonic::Code::FailedPrecondition, message }
            if message == "stale_generation: generation 1 < 2"));
        assert!(stale.is_stale_generation());
        let unknown = commit_error(pb::Error { code: "unknown_member".into(), message: "unknown_member: g-7".into() });
        assert!(matches!(&unknown, ClientError::Server { code: tonic::Code::NotFound, message }
            if message == "unknown_member: g-7"));
        assert!(!unknown.is_stale_generation());
    }

    #[test]
    fn config_defaults_are_kafka_like() {
        let c = GroupConfig::new("billing", ["orders", "refunds"]);
        assert_eq!(c.group, "billing");
        assert_eq!(c.topics, vec!["orders".to_string(), "refunds".to_string()]);
        assert_eq!(c.auto_commit, Some(Duration::from_secs(5)));
        assert_eq!(c.session_timeout, Duration::from_secs(10));
        assert_eq!((c.reset, c.max_records, c.assignor), (OffsetReset::Earliest, 500, None));
        assert_eq!(tp("orders", 3).to_string(), "orders/3");
    }
}
