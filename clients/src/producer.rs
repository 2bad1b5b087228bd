//! The batching producer.
//!
//! `send` hands a record to a background task and returns a [`Delivery`] that resolves to its
//! offset. The task groups records per partition, encoding each straight into a record batch in
//! the storage's format (`strata_storage::BatchBuilder`; compressed with `batch_compression`),
//! and sends the batch when it reaches `batch_bytes` or has waited `linger`: the server checks it
//! whole and appends it as it is, as Kafka's brokers take their producers' batches. Keys are
//! partitioned with murmur2 exactly as the server (and Kafka) would; keyless records stick to one
//! partition for `batch_bytes` of them ([`Router`]). Once a batch of a topic is due, one request
//! carries the next batch of every partition of that topic (up to `max_request_bytes`), as
//! Kafka's producer sends a broker all its ready batches at once. One request per partition is in
//! flight at a time, so records of a partition keep their order across retries; a request the
//! server refuses for one bad batch is sent again batch by batch, so only that batch fails. The
//! bytes held (queued or in flight) are bounded by `max_buffered_bytes`: `send` waits for room.
//!
//! With `idempotent` (the default, as in Kafka) the producer starts a producer session on the
//! server (`InitProducer`) and numbers its requests; a retried request carries the same number, so
//! the server stores it once even when the first attempt was appended but its answer was lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use strata_proto::v1 as pb;
use strata_storage::{BatchBuilder, Clock, Compression, Header, SystemClock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{Admin, ClientError, partition_for_key};

/// Producer tuning.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch may wait for more records.
    pub linger: Duration,
    /// A batch is sent when it holds this many bytes.
    pub batch_bytes: usize,
    /// Most record bytes held by the producer at once; `send` waits beyond it.
    pub max_buffered_bytes: usize,
    /// Attempts after the first for retriable failures (the server unavailable).
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub retry_backoff: Duration,
    pub acks: pb::Acks,
    /// Compress each request on the wire (`Zstd` or `Gzip`); `None` sends it as is. The server
    /// stores what it receives uncompressed.
    pub compression: Option<tonic::codec::CompressionEncoding>,
    /// Compress each batch (`Lz4` or `Zstd`): stored and served compressed, and expanded only by
    /// whoever reads its records.
    pub batch_compression: Compression,
    /// Number requests in a producer session so retries are stored once.
    pub idempotent: bool,
    /// Most batch bytes in one request (one batch goes alone whatever its size). The server
    /// refuses requests over its `max_request_bytes` (32 MiB by default).
    pub max_request_bytes: usize,
    /// How long what the producer knows of a topic (its partitions, its `max_record_bytes`)
    /// stands before it is looked up again, in the background, as Kafka's `metadata.max.age.ms`:
    /// partitions added meanwhile then take keyed and keyless records.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_bytes: 1 << 20,
            max_buffered_bytes: 64 << 20,
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            acks: pb::Acks::Leader,
            compression: None,
            batch_compression: Compression::None,
            idempotent: true,
            max_request_bytes: 16 << 20,
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
    pub partition: Option<u32>,
}

impl Record {
    pub fn new(key: Option<impl Into<Vec<u8>>>, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.map(Into::into), value: Some(value.into()), ..Default::default() }
    }

    /// What the record takes from the producer's budget: its key, value and headers, and a
    /// little for their framing. (Batches are measured by what they encode to.)
    fn size(&self) -> usize {
        self.content_bytes() + 16
    }

    /// Its key, value and headers: what a topic's `max_record_bytes` bounds.
    fn content_bytes(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
    }
}

/// The longest `linger` honoured: any longer waits as long (a batch is sent on `flush` anyway).
const MAX_LINGER: Duration = Duration::from_secs(24 * 3600);

/// How long one lookup of a topic's partition count may take before it is tried again.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves to `(partition, offset)` once the record is acknowledged.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<(u32, u64), ClientError>>,
}

impl Delivery {
    /// # Errors
    /// The failure that ended the record's last attempt.
    pub async fn wait(self) -> Result<(u32, u64), ClientError> {
        self.rx.await.unwrap_or(Err(ClientError::Closed))
    }
}

type Reply = oneshot::Sender<Result<(u32, u64), ClientError>>;

/// A record handed to the producer's task, with its caller's reply and its share of the budget.
struct Queued {
    topic: String,
    record: Record,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

enum Msg {
    Send(Queued),
    Flush(oneshot::Sender<()>),
}

/// A batching, retrying producer. Dropping it stops its task after sending what it holds.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Msg>,
    budget: Arc<Semaphore>,
    max_record: usize,
}

/// A batch being filled or waiting to be sent.
struct Pending {
    id: u64,
    batch: BatchBuilder,
    replies: Vec<(Reply, OwnedSemaphorePermit)>,
    since: Instant,
}

impl Pending {
    /// The records' bytes as encoded (before any compression): what requests are split by (each
    /// batch's header and the request's framing aside: ~100 bytes a batch, well within the margin
    /// between `max_request_bytes` and the server's limit).
    fn bytes(&self) -> usize {
        self.batch.records_len()
    }

    /// Full: the partition's next records start another batch, and this one is due.
    fn is_full(&self, batch_bytes: usize) -> bool {
        self.bytes() >= batch_bytes
    }
}

impl Producer {
    pub(crate) fn start(channel: Channel, admin: Admin, mut config: ProducerConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // A record takes one permit per byte, at most `u32::MAX` at once.
        let max_record = config.max_buffered_bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        let budget = Arc::new(Semaphore::new(max_record));
        config.linger = config.linger.min(MAX_LINGER);
        tokio::spawn(run(channel, admin, config, rx));
        Self { tx, budget, max_record }
    }

    /// Queues a record, waiting while the producer holds `max_buffered_bytes`.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a record larger than the whole buffer; [`ClientError::Closed`].
    pub async fn send(&self, topic: &str, record: Record) -> Result<Delivery, ClientError> {
        let size = record.size();
        if size > self.max_record {
            return Err(ClientError::Invalid(format!("record of {size} bytes exceeds the producer's buffer")));
        }
        let permit = Arc::clone(&self.budget).acquire_many_owned(size as u32).await.map_err(|_| ClientError::Closed)?;
        let (reply, rx) = oneshot::channel();
        let queued = Queued { topic: topic.to_string(), record, reply, permit };
        self.tx.send(Msg::Send(queued)).map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
    }

    /// Sends everything queued and waits until every record sent so far is acknowledged or failed.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the producer task is gone.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }
}

async fn run(channel: Channel, admin: Admin, config: ProducerConfig, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut router = Router::new(admin, &config);
    let mut batches = Accumulator::new(channel, config);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                None => {
                    router.settle(&mut batches).await;
                    batches.send_everything().await;
                    return;
                }
                Some(Msg::Flush(done)) => {
                    router.settle(&mut batches).await;
                    batches.send_everything().await;
                    let _ = done.send(());
                }
                Some(Msg::Send(queued)) => router.route(&mut batches, queued),
            },
            () = sleep_until(batches.next_deadline()) => batches.expire(Instant::now()),
            Some(done) = batches.in_flight.join_next_with_id(), if !batches.in_flight.is_empty() => batches.completed(done),
            Some(done) = router.lookups.join_next_with_id(), if !router.lookups.is_empty() => {
                router.looked_up(&mut batches, done);
            }
        }
        batches.send_ready();
    }
}

/// What the producer knows of a topic: its partitions and its largest record.
#[derive(Debug, Clone, Copy)]
struct TopicShape {
    partitions: u32,
    max_record_bytes: usize,
    /// When it was looked up (or last sent for again): it is looked up again `metadata_max_age`
    /// after.
    at: Instant,
}

impl TopicShape {
    fn of(info: &pb::TopicInfo, at: Instant) -> Self {
        let max_record_bytes = info.config.get("max_record_bytes").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        Self { partitions: info.partitions.len().max(1) as u32, max_record_bytes, at }
    }

    /// Whether `record` can be placed by what is known: a partition it names exists, and it is
    /// within the topic's `max_record_bytes`.
    fn fits(&self, record: &Record) -> bool {
        record.partition.is_none_or(|p| p < self.partitions) && record.content_bytes() <= self.max_record_bytes
    }
}

/// Picks each record's partition: the one it names, else its key's (murmur2, as the server and
/// Kafka pick), else the topic's sticky one. A topic is looked up on its first record, and again
/// when a record does not fit what is known (it names a partition beyond it, or is over its
/// `max_record_bytes`: partitions may have been added, the limit raised); meanwhile the topic's
/// records wait here, in the order sent, while other topics' go on. A record that still does not
/// fit fails here, alone, as Kafka's producer fails one over its limit (the server would refuse
/// its whole batch). What is known of a topic is also looked up again every `metadata_max_age`,
/// in the background: records go on with what is known meanwhile.
struct Router {
    admin: Admin,
    retries: u32,
    retry_backoff: Duration,
    batch_bytes: usize,
    max_age: Duration,
    topics: HashMap<String, TopicShape>,
    /// Records of the topics being looked up.
    parked: HashMap<String, Vec<Queued>>,
    lookups: JoinSet<Result<TopicShape, ClientError>>,
    /// Each lookup's topic, and whether it refreshes what is known (rather than answering for
    /// parked records).
    looking_up: HashMap<tokio::task::Id, (String, bool)>,
    /// Per topic, the partition keyless records go to and the bytes sent there since it was
    /// picked: as Kafka's producer does (KIP-794), another is picked after `batch_bytes`, also
    /// when light load sends the batches by `linger` before they fill.
    sticky: HashMap<String, (u32, usize)>,
    sticky_counter: u32,
}

impl Router {
    fn new(admin: Admin, config: &ProducerConfig) -> Self {
        Self {
            admin,
            retries: config.retries,
            retry_backoff: config.retry_backoff,
            batch_bytes: config.batch_bytes,
            max_age: config.metadata_max_age,
            topics: HashMap::new(),
            parked: HashMap::new(),
            lookups: JoinSet::new(),
            looking_up: HashMap::new(),
            sticky: HashMap::new(),
            sticky_counter: 0,
        }
    }

    fn route(&mut self, batches: &mut Accumulator, queued: Queued) {
        if let Some(parked) = self.parked.get_mut(&queued.topic) {
            parked.push(queued);
            return;
        }
        match self.topics.get_mut(&queued.topic) {
            Some(shape) if shape.fits(&queued.record) => {
                let now = Instant::now();
                let stale = now.saturating_duration_since(shape.at) >= self.max_age;
                if stale {
                    // Once per `max_age`: the answer replaces the shape when it comes.
                    shape.at = now;
                }
                let shape = *shape;
                if stale {
                    self.spawn_lookup(queued.topic.clone(), true);
                }
                self.place(batches, shape, queued);
            }
            // Unknown, or it may have grown (or its limit risen) since it was looked up.
            _ => self.look_up(queued),
        }
    }

    fn place(&mut self, batches: &mut Accumulator, shape: TopicShape, queued: Queued) {
        let Queued { topic, record, reply, permit } = queued;
        let (count, bytes) = (shape.partitions, record.content_bytes());
        if bytes > shape.max_record_bytes {
            let _ = reply.send(Err(ClientError::Invalid(format!(
                "a record of {bytes} bytes of key, value and headers; topic {topic:?} takes at most {} \
                 (max_record_bytes)",
                shape.max_record_bytes
            ))));
            return;
        }
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if p >= count => {
                let _ = reply.send(Err(ClientError::Invalid(format!(
                    "partition {p} of topic {topic:?}, which has partitions 0..{count}"
                ))));
                return;
            }
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, count),
            (None, None) => {
                let sticky = self.sticky.entry(topic.clone()).or_insert((0, usize::MAX));
                if sticky.1 >= self.batch_bytes || sticky.0 >= count {
                    self.sticky_counter = self.sticky_counter.wrapping_add(1);
                    *sticky = (self.sticky_counter % count, 0);
                }
                sticky.1 += batches.push(topic, sticky.0, record, reply, permit);
                return;
            }
        };
        batches.push(topic, partition, record, reply, permit);
    }

    /// Parks the record and looks its topic up.
    fn look_up(&mut self, queued: Queued) {
        let topic = queued.topic.clone();
        self.parked.insert(topic.clone(), vec![queued]);
        self.spawn_lookup(topic, false);
    }

    /// Looks a topic up (retrying as produce requests are retried); [`Router::looked_up`] takes
    /// the answer.
    fn spawn_lookup(&mut self, topic: String, refresh: bool) {
        let (admin, retries, mut backoff) = (self.admin.clone(), self.retries, self.retry_backoff);
        let name = topic.clone();
        let task = self.lookups.spawn(async move {
            let topic = name;
            let mut attempt = 0;
            loop {
                let result = match tokio::time::timeout(LOOKUP_TIMEOUT, admin.describe_topic(&topic)).await {
                    Ok(result) => result,
                    Err(_) => Err(ClientError::Server {
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no description of topic {topic:?} within {LOOKUP_TIMEOUT:?}"),
                    }),
                };
                match result {
                    Err(e) if e.is_retriable() && attempt < retries => {
                        attempt += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                    }
                    other => break other.map(|info| TopicShape::of(&info, Instant::now())),
                }
            }
        });
        self.looking_up.insert(task.id(), (topic, refresh));
    }

    /// A lookup has ended: its topic's parked records go to their partitions (with what was
    /// known, if it failed and something was), or fail with it. A refresh only replaces what was
    /// known (a failed one leaves it, to be tried again after another `max_age`); records parked
    /// meanwhile wait for the lookup made for them.
    fn looked_up(
        &mut self,
        batches: &mut Accumulator,
        done: Result<(tokio::task::Id, Result<TopicShape, ClientError>), JoinError>,
    ) {
        let (id, result) = match done {
            Ok(done) => done,
            Err(e) => (e.id(), Err(ClientError::Invalid(format!("the topic's lookup failed: {e}")))),
        };
        let Some((topic, refresh)) = self.looking_up.remove(&id) else { return };
        if refresh {
            if let Ok(shape) = result {
                self.topics.insert(topic, shape);
            }
            return;
        }
        let parked = self.parked.remove(&topic).unwrap_or_default();
        let shape = match (result, self.topics.get(&topic)) {
            (Ok(shape), _) => {
                self.topics.insert(topic, shape);
                shape
            }
            (Err(_), Some(&known)) => known,
            (Err(e), None) => {
                for queued in parked {
                    let _ = queued.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        for queued in parked {
            self.place(batches, shape, queued);
        }
    }

    /// Waits for every lookup, so that the records sent before a flush are in the batches.
    async fn settle(&mut self, batches: &mut Accumulator) {
        while let Some(done) = self.lookups.join_next_with_id().await {
            self.looked_up(batches, done);
        }
        for queued in self.parked.drain().flat_map(|(_, parked)| parked) {
            let _ = queued.reply.send(Err(ClientError::Closed));
        }
    }
}

/// The records waiting to be sent, as batches per partition, and the requests in flight.
///
/// As Kafka's producer does, a partition has at most one request in flight (so its records keep
/// their order through retries), and a request carries every partition of its topic that has
/// records and no request in flight: once one batch is due (full, or waited `linger`), the
/// others go with it, so a producer writing keyed records over a thousand partitions sends one
/// request per linger, not a thousand.
struct Accumulator {
    channel: Channel,
    config: ProducerConfig,
    session: Option<Arc<Session>>,
    /// Per topic and partition, the batches in the order they are to be sent; only the last
    /// takes records.
    topics: HashMap<String, HashMap<u32, VecDeque<Pending>>>,
    /// Per topic, the partitions with a request in flight.
    busy: HashMap<String, HashSet<u32>>,
    in_flight: JoinSet<()>,
    /// The partitions each request in flight carries.
    requests: HashMap<tokio::task::Id, (String, Vec<u32>)>,
    /// Open batches by the time they are due; `linger` is the same for all, so this is in order.
    /// An entry whose batch has gone meanwhile is skipped.
    deadlines: VecDeque<(Instant, String, u32, u64)>,
    /// Topics with a partition whose next batch is due and not held back by a request.
    ready: HashSet<String>,
    /// Flushing or closing: every batch is due.
    flushing: bool,
    next_id: u64,
}

impl Accumulator {
    fn new(channel: Channel, config: ProducerConfig) -> Self {
        Self {
            channel,
            session: config.idempotent.then(Arc::default),
            config,
            topics: HashMap::new(),
            busy: HashMap::new(),
            in_flight: JoinSet::new(),
            requests: HashMap::new(),
            deadlines: VecDeque::new(),
            ready: HashSet::new(),
            flushing: false,
            next_id: 0,
        }
    }

    /// Adds a record to its partition's open batch; returns the bytes it took there.
    fn push(
        &mut self,
        topic: String,
        partition: u32,
        record: Record,
        reply: Reply,
        permit: OwnedSemaphorePermit,
    ) -> usize {
        let queue = self.topics.entry(topic.clone()).or_default().entry(partition).or_default();
        let batch_bytes = self.config.batch_bytes;
        if queue.back().is_none_or(|b| b.is_full(batch_bytes)) {
            let since = Instant::now();
            self.next_id += 1;
            self.deadlines.push_back((since + self.config.linger, topic.clone(), partition, self.next_id));
            queue.push_back(Pending {
                id: self.next_id,
                batch: BatchBuilder::with_capacity(
                    self.config.batch_compression,
                    self.config.batch_bytes.min(64 << 10),
                ),
                replies: Vec::new(),
                since,
            });
        }
        let Some(batch) = queue.back_mut() else { return 0 };
        let before = batch.bytes();
        let headers: Vec<Header> =
            record.headers.into_iter().map(|(name, value)| Header { name, value: value.into() }).collect();
        let timestamp = record.timestamp_ms.unwrap_or_else(|| SystemClock.now_ms());
        batch.batch.push(timestamp, record.key.as_deref(), record.value.as_deref(), &headers);
        batch.replies.push((reply, permit));
        let taken = batch.bytes() - before;
        if batch.is_full(batch_bytes) && !self.is_busy(&topic, partition) {
            self.ready.insert(topic);
        }
        taken
    }

    fn is_busy(&self, topic: &str, partition: u32) -> bool {
        self.busy.get(topic).is_some_and(|busy| busy.contains(&partition))
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(at, ..)| at)
    }

    /// Marks the topics of the batches due by `now` ready, unless their partition is busy (then
    /// the request's completion looks again).
    fn expire(&mut self, now: Instant) {
        while let Some((at, ..)) = self.deadlines.front()
            && *at <= now
        {
            let Some((_, topic, partition, id)) = self.deadlines.pop_front() else { break };
            let waiting = self
                .topics
                .get(&topic)
                .and_then(|t| t.get(&partition))
                .is_some_and(|queue| queue.iter().any(|b| b.id == id));
            if waiting && !self.is_busy(&topic, partition) {
                self.ready.insert(topic);
            }
        }
    }

    /// A request has ended: its partitions may send again.
    fn completed(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => e.id(),
        };
        let Some((topic, partitions)) = self.requests.remove(&id) else { return };
        let now = Instant::now();
        let queues = self.topics.get(&topic);
        let mut due = false;
        let busy = self.busy.entry(topic.clone()).or_default();
        for partition in partitions {
            busy.remove(&partition);
            let front = queues.and_then(|t| t.get(&partition)).and_then(VecDeque::front);
            due |= front.is_some_and(|b| {
                self.flushing || b.is_full(self.config.batch_bytes) || b.since + self.config.linger <= now
            });
        }
        if due {
            self.ready.insert(topic);
        }
    }

    /// Sends a request for each ready topic: the next batch of every partition of it that has
    /// no request in flight, up to `max_request_bytes` a request.
    fn send_ready(&mut self) {
        let topics: Vec<String> = self.ready.drain().collect();
        for topic in topics {
            while let Some(queues) = self.topics.get_mut(&topic) {
                let mut taken = Vec::new();
                let mut bytes = 0;
                let mut more = false;
                let busy = self.busy.entry(topic.clone()).or_default();
                for (&partition, queue) in queues.iter_mut() {
                    if busy.contains(&partition) {
                        continue;
                    }
                    let Some(front) = queue.front() else { continue };
                    if !taken.is_empty() && bytes + front.bytes() > self.config.max_request_bytes {
                        more = true;
                        continue;
                    }
                    bytes += front.bytes();
                    if let Some(batch) = queue.pop_front() {
                        taken.push((partition, batch));
                    }
                }
                queues.retain(|_, queue| !queue.is_empty());
                if queues.is_empty() {
                    self.topics.remove(&topic);
                }
                if taken.is_empty() {
                    break;
                }
                let partitions: Vec<u32> = taken.iter().map(|&(p, _)| p).collect();
                busy.extend(&partitions);
                let task = self.in_flight.spawn(send(
                    self.client(),
                    self.config.clone(),
                    self.session.clone(),
                    topic.clone(),
                    taken,
                ));
                self.requests.insert(task.id(), (topic.clone(), partitions));
                if !more {
                    break;
                }
            }
        }
    }

    /// Sends every batch and waits for every request.
    async fn send_everything(&mut self) {
        self.flushing = true;
        loop {
            self.ready.extend(self.topics.keys().cloned());
            self.send_ready();
            match self.in_flight.join_next_with_id().await {
                Some(done) => self.completed(done),
                None => break,
            }
        }
        self.deadlines.clear();
        self.flushing = false;
    }

    fn client(&self) -> ProducerClient {
        let mut client = pb::producer_client::ProducerClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20);
        if let Some(encoding) = self.config.compression {
            client = client.send_compressed(encoding);
        }
        client
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// An idempotent producer session, started on first use, and the next request number. When the
/// numbers run out (after `i32::MAX` requests) the next request starts a new session: a new
/// producer id, numbered from 0, which the logs keep apart from the old one's.
#[derive(Debug)]
struct Session {
    current: tokio::sync::Mutex<Option<SessionState>>,
    /// Requests one session numbers.
    limit: i32,
}

#[derive(Debug, Clone, Copy)]
struct SessionState {
    id: i64,
    epoch: i32,
    next_sequence: i32,
}

impl Default for Session {
    fn default() -> Self {
        Self { current: tokio::sync::Mutex::default(), limit: i32::MAX }
    }
}

impl Session {
    /// The session for the next request, and its sequence number; `start` starts a session
    /// (`InitProducer`) and gives its id and epoch.
    async fn next(
        &self,
        start: impl AsyncFnOnce() -> Result<(i64, i32), ClientError>,
    ) -> Result<pb::ProducerSession, ClientError> {
        let mut current = self.current.lock().await;
        let state = match current.as_mut() {
            Some(state) if state.next_sequence < self.limit => state,
            _ => {
                let (id, epoch) = start().await?;
                current.insert(SessionState { id, epoch, next_sequence: 0 })
            }
        };
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        Ok(pb::ProducerSession { id: state.id, epoch: state.epoch, sequence })
    }
}

type ProducerClient = pb::producer_client::ProducerClient<Channel>;

/// One request: the batches of several partitions of a topic, retried whole.
async fn send(
    mut client: ProducerClient,
    config: ProducerConfig,
    session: Option<Arc<Session>>,
    topic: String,
    batches: Vec<(u32, Pending)>,
) {
    let mut request = pb::ProduceRequest {
        batches: Vec::with_capacity(batches.len()),
        topic,
        records: Vec::new(),
        acks: config.acks as i32,
        request_id: 0,
        producer: None,
        expected_offset: None,
    };
    let mut waiting = Vec::with_capacity(batches.len());
    for (partition, Pending { batch, replies, .. }) in batches {
        match batch.build() {
            Ok(data) => {
                request.batches.push(pb::RecordBatch { partition, data: Bytes::from(data) });
                waiting.push(replies);
            }
            Err(e) => {
                let e = ClientError::Invalid(format!("the batch does not encode: {e}"));
                for (reply, _permit) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    if request.batches.is_empty() {
        return;
    }
    let result = attempt(&mut client, &config, session.as_deref(), &mut request).await;
    match result {
        // The server refuses a request whole for one bad batch (a record over the topic's
        // `max_record_bytes`, a partition it no longer has), before it appends any: each batch
        // goes again alone, so that only that one fails. An idempotent request's batches keep
        // its sequence number, so none can be stored twice.
        Err(e) if request.batches.len() > 1 && refuses_a_batch(&e) => {
            tracing::debug!(error = %e, "produce request refused; sending its batches one by one");
            let batches = std::mem::take(&mut request.batches);
            for (batch, replies) in batches.into_iter().zip(waiting) {
                let mut alone = pb::ProduceRequest { batches: vec![batch], ..request.clone() };
                let result = attempt(&mut client, &config, session.as_deref(), &mut alone).await;
                answer(&alone, vec![replies], result);
            }
        }
        result => answer(&request, waiting, result),
    }
}

/// Sends `request`, retrying what is worth retrying; the first attempt numbers it in the
/// producer's session and every retry repeats that number.
async fn attempt(
    client: &mut ProducerClient,
    config: &ProducerConfig,
    session: Option<&Session>,
    request: &mut pb::ProduceRequest,
) -> Result<pb::ProduceResponse, ClientError> {
    let mut backoff = config.retry_backoff;
    let mut attempt = 0;
    loop {
        let numbered = match (session, request.producer) {
            (Some(session), None) => {
                let start = async || {
                    let response = client.init_producer(pb::InitProducerRequest {}).await?.into_inner();
                    Ok((response.id, response.epoch))
                };
                session.next(start).await.map(|p| request.producer = Some(p))
            }
            _ => Ok(()),
        };
        let result = match numbered {
            Ok(()) => client.produce(request.clone()).await.map(tonic::Response::into_inner).map_err(ClientError::from),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.is_retriable() && attempt < config.retries => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "produce failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            other => return other,
        }
    }
}

/// Whether the server refused a request for what one of its batches holds (checked before it
/// appends any of them), rather than for the request as a whole or a failure while appending.
fn refuses_a_batch(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: tonic::Code::InvalidArgument
                | tonic::Code::NotFound
                | tonic::Code::ResourceExhausted
                | tonic::Code::OutOfRange,
            ..
        }
    )
}

/// Resolves every record of `request` (whose batches' replies are `waiting`, in order).
fn answer(
    request: &pb::ProduceRequest,
    waiting: Vec<Vec<(Reply, OwnedSemaphorePermit)>>,
    result: Result<pb::ProduceResponse, ClientError>,
) {
    match result {
        Ok(response) => {
            for (i, (sent, replies)) in request.batches.iter().zip(waiting).enumerate() {
                let batch = response
                    .batches
                    .get(i)
                    .filter(|b| b.partition == sent.partition && b.count as usize == replies.len());
                for (j, (reply, _permit)) in replies.into_iter().enumerate() {
                    let offset = batch.and_then(|b| Some((b.partition, b.base_offset.checked_add(j as u64)?)));
                    let _ = reply.send(offset.ok_or_else(|| ClientError::Produce {
                        code: "internal".into(),
                        message: "the response does not place the batch".into(),
                    }));
                }
            }
        }
        Err(e) => {
            for (reply, _permit) in waiting.into_iter().flatten() {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_session_that_runs_out_of_numbers_starts_another() {
        let session = Session { limit: 3, ..Session::default() };
        let started = AtomicI64::new(0);
        let mut numbered = Vec::new();
        for _ in 0..7 {
            let start = async || Ok((started.fetch_add(1, Ordering::Relaxed) + 1, 0));
            let p = session.next(start).await.unwrap();
            numbered.push((p.id, p.sequence));
        }
        assert_eq!(numbered, [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]);
    }

    #[tokio::test]
    async fn a_session_that_failed_to_start_is_started_by_the_next_request() {
        let session = Session::default();
        let refused = async || Err(ClientError::Server { code: tonic::Code::Unavailable, message: "no leader".into() });
        assert!(session.next(refused).await.is_err());
        let p = session.next(async || Ok((7, 0))).await.unwrap();
        assert_eq!((p.id, p.sequence), (7, 0));
        let p = session.next(async || -> Result<(i64, i32), ClientError> { unreachable!() }).await.unwrap();
        assert_eq!((p.id, p.sequence), (7, 1));
    }
}
