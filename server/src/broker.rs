//! The broker: partition logs of every topic, the produce and fetch paths, and long-poll wakeups.
//!
//! Topics come from the metadata state machine; the broker follows it (opening logs of new
//! topics and partitions, deleting logs of deleted topics) whenever it changes, so every change
//! goes through Raft first and the local logs follow.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use strata_storage::{
    AppendGroup, AppendInfo, Attempt, Batch, BatchBuilder, Compression, Header, Log, LogManager, ProducedBatchError,
    ValidBatch,
};
use tokio::sync::watch;

use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Metadata, TopicMeta};
use crate::partitioner::{Sticky, partition_for_key};
use crate::producer::ProducerSession;
use crate::registry::Registry;
use crate::tier::ColdTier;
use crate::topic::MAX_BATCH_BYTES;

/// A record as a producer hands it to the broker.
#[derive(Debug, Clone, Default)]
pub struct ProduceRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    pub timestamp: Option<i64>,
    pub partition: Option<u32>,
}

impl ProduceRecord {
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + self.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>()
    }
}

/// Partitions one append task takes at least: below this a request appends from one thread.
const PARTITIONS_PER_APPEND_TASK: usize = 64;

/// Threads one request may append from at once: the machine's cores.
fn append_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Conditions on a produce request (see [`Broker::produce_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProduceOptions {
    pub expected_offset: Option<u64>,
    pub producer: Option<ProducerSession>,
}

/// When a produce is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Once appended (in the page cache), before it is durable.
    None,
    /// Once durable on this node per the topic's `flush` policy (`all` is the same on one node).
    Leader,
}

/// Where a fetch starts (the client's type: one definition for both sides).
pub use strata_client::Start;

/// A fetched record.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone)]
pub struct FetchResult {
    pub records: Vec<FetchedRecord>,
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// Live facts about one partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionStatus {
    pub partition: u32,
    /// The first readable offset, in either tier.
    pub log_start_offset: u64,
    /// The first offset still on local disk.
    pub local_start_offset: u64,
    /// Offsets below this (exclusive; 0 while nothing is tiered) are in object storage.
    pub tiered_end_offset: u64,
    pub high_watermark: u64,
    /// Bytes on local disk.
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
struct Partition {
    log: Log,
    /// Bumped to the high watermark after every append, for long-polling fetchers.
    hw: watch::Sender<u64>,
}

/// Where one batch of [`Broker::produce_batches`] went: offsets `base_offset..base_offset + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOffsets {
    pub partition: u32,
    pub base_offset: u64,
    pub count: u32,
}

/// Appends made, waiting to become durable; `T` says where they went: one `(partition, offset)`
/// per record, in request order, or one [`BatchOffsets`] per batch.
#[derive(Debug)]
pub struct PendingProduce<T = Vec<(u32, u64)>> {
    /// The partitions appended to, in one group: awaited with one wake-up, however many.
    partitions: Vec<Partition>,
    durable: AppendGroup,
    offsets: T,
    acks: Acks,
}

impl<T: Send + 'static> PendingProduce<T> {
    /// Where the appends went (known before they are durable).
    pub fn offsets(&self) -> &T {
        &self.offsets
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> PendingProduce<U> {
        let Self { partitions, durable, offsets, acks } = self;
        PendingProduce { partitions, durable, offsets: f(offsets), acks }
    }

    /// Resolves to where the appends went, once acknowledged per `acks`.
    ///
    /// # Errors
    /// `unavailable` if an fsync failed (the partition then refuses writes until restart).
    pub async fn acknowledged(self) -> Result<T, ApiError> {
        let Self { partitions, durable, offsets, acks } = self;
        // Fetchers are woken whatever the outcome: where one partition's sync failed, the others'
        // records are durable and readable all the same (`notify` reads each high watermark).
        match acks {
            Acks::Leader => {
                let outcome = durable.durable().await;
                partitions.iter().for_each(Partition::notify);
                outcome?;
            }
            // Readers see the records once durable: wake them then, without waiting here.
            Acks::None => {
                tokio::spawn(async move {
                    let _ = durable.durable().await;
                    partitions.iter().for_each(Partition::notify);
                });
            }
        }
        Ok(offsets)
    }
}

impl Partition {
    /// Wakes long-polling fetchers if the high watermark moved. The log's own high watermark,
    /// not the end of the append just acknowledged (which would save a lock per partition): with
    /// it, the appends one sync made durable wake fetchers once, not once each, so a group commit
    /// does not turn into a run of small fetches.
    ///
    /// With no fetcher subscribed, the value moves without a wake-up: waking walks tokio's waiter
    /// lists even when they are empty (~2 % of the server's CPU in W6, where nobody long-polls
    /// while producers append). That loses no wake-up: a fetcher subscribes before it reads the
    /// log, so one that subscribes after the count below reads the log after it has this
    /// append (whose high watermark was taken under the log's lock above).
    fn notify(&self) {
        let hw = self.log.high_watermark();
        let listened = self.hw.receiver_count() > 0;
        self.hw.send_if_modified(|v| {
            let moved = hw > *v;
            *v = (*v).max(hw);
            moved && listened
        });
    }
}

/// [`append`] with a group of its own, returned once every append task has let go of it: what
/// the request awaits for durability.
async fn append_grouped(
    batches: Vec<(u32, Partition, ValidBatch)>,
    expected_offset: Option<u64>,
) -> Result<(Vec<(u32, Partition, AppendInfo)>, AppendGroup), ApiError> {
    let group = Arc::new(AppendGroup::new());
    let appended = append(batches, expected_offset, Arc::clone(&group)).await?;
    // The append tasks, which held the other references, have finished.
    let durable = Arc::into_inner(group)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "an append task still holds the request's group"))?;
    Ok((appended, durable))
}

/// Appends one batch to each partition and returns where each landed, in the same order; their
/// durability is `group`'s to await. An error fails the whole request; appends already made
/// stand.
///
/// Appending pwrites each batch (tens of microseconds, occasionally a segment roll with
/// fsyncs), so it runs on blocking threads, and a request touching many partitions (keyed
/// records over a wide topic) appends from several at once, or its appends alone would take
/// tens of milliseconds on one core. One batch that takes at most a small write is the
/// exception (a webhook's record, a producer's batch of up to 256 KiB): it is appended here
/// ([`Log::append_inline`]), as each thread woken on the way to an acknowledgement is one more
/// wait for a core (in W3 at half its peak, a woken thread waited 1.4 ms on average), and
/// thousands of `spawn_blocking`s a second contend on the blocking pool's one mutex.
async fn append(
    mut batches: Vec<(u32, Partition, ValidBatch)>,
    expected_offset: Option<u64>,
    group: Arc<AppendGroup>,
) -> Result<Vec<(u32, Partition, AppendInfo)>, ApiError> {
    if batches.len() == 1
        && expected_offset.is_none()
        && let Some((p, partition, batch)) = batches.pop()
    {
        match partition.log.append_inline(batch, Some(&group))? {
            Attempt::Appended(pending) => return Ok(vec![(p, partition, pending.info())]),
            Attempt::NeedsIo(batch) => batches.push((p, partition, batch)),
        }
    }
    let chunks = batches.len().div_ceil(PARTITIONS_PER_APPEND_TASK).clamp(1, append_threads());
    let chunk_len = batches.len().div_ceil(chunks);
    let mut tasks = Vec::with_capacity(chunks);
    let mut batches = batches.into_iter();
    loop {
        let chunk: Vec<_> = batches.by_ref().take(chunk_len).collect();
        if chunk.is_empty() {
            break;
        }
        let group = Arc::clone(&group);
        tasks.push(tokio::task::spawn_blocking(move || {
            let (targets, logs): (Vec<_>, Vec<_>) =
                chunk.into_iter().map(|(p, partition, batch)| ((p, partition.clone()), (partition.log, batch))).unzip();
            let pending = Log::append_all(logs, expected_offset, &group)?;
            Ok::<_, strata_storage::Error>(
                targets
                    .into_iter()
                    .zip(pending)
                    .map(|((p, partition), pending)| (p, partition, pending.info()))
                    .collect(),
            )
        }));
    }
    let mut appended = Vec::new();
    for task in tasks {
        let done: Vec<_> =
            task.await.map_err(|e| ApiError::new(ErrorCode::Internal, format!("append task failed: {e}")))??;
        appended.extend(done);
    }
    Ok(appended)
}

/// Open partitions by topic and number. A keyed request over a wide topic looks up hundreds of
/// them: with std's default (SipHash) hashing of the topic name those lookups were ~3 % of the
/// server's CPU in W6; foldhash's fast hasher (randomly seeded, but not a keyed PRF like SipHash:
/// keys here are names of topics an admin created) is several times cheaper.
type PartitionMap = HashMap<(String, u32), Partition, foldhash::fast::RandomState>;

/// Partition logs and the produce/fetch paths.
#[derive(Debug)]
pub struct Broker {
    storage: LogManager,
    metadata: Metadata,
    // A std lock: held for map lookups only, never across I/O or `.await`.
    partitions: RwLock<PartitionMap>,
    sticky: Sticky,
    /// The object-storage tier, for reads below a tiered partition's local start.
    cold: Arc<ColdTier>,
    /// Schemas for topics bound to a subject (`value_schema_subject`).
    registry: Registry,
}

fn log_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

impl Broker {
    pub fn new(storage: LogManager, metadata: Metadata, cold: Arc<ColdTier>) -> Self {
        let registry = Registry::new(metadata.clone());
        Self { storage, metadata, partitions: RwLock::default(), sticky: Sticky::default(), cold, registry }
    }

    /// The schema registry (validated produce, decoded fetch, `/registry`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn cold(&self) -> &Arc<ColdTier> {
        &self.cold
    }

    /// A partition's local log, if open.
    pub fn log(&self, topic: &str, partition: u32) -> Option<Log> {
        self.read_partitions().get(&(topic.to_string(), partition)).map(|p| p.log.clone())
    }

    fn status(&self, topic: &str, partition: u32, log: &Log) -> PartitionStatus {
        let objects = self.metadata.tier_objects(topic, partition);
        let local_start = log.log_start_offset();
        PartitionStatus {
            partition,
            log_start_offset: objects.first().map_or(local_start, |o| o.meta.base_offset.min(local_start)),
            local_start_offset: local_start,
            tiered_end_offset: objects.last().map_or(0, |o| o.meta.end_offset),
            high_watermark: log.high_watermark(),
            size_bytes: log.size_bytes(),
        }
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn storage(&self) -> &LogManager {
        &self.storage
    }

    fn read_partitions(&self) -> std::sync::RwLockReadGuard<'_, PartitionMap> {
        self.partitions.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_partitions(&self) -> std::sync::RwLockWriteGuard<'_, PartitionMap> {
        self.partitions.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Brings the open logs in line with the metadata: opens new partitions, applies config
    /// changes, deletes the logs of deleted topics. Blocking (opening a log recovers it).
    ///
    /// # Errors
    /// The first log that cannot be opened.
    pub fn reconcile(&self) -> Result<(), ApiError> {
        let topics = self.metadata.topics();
        let mut wanted: HashMap<(String, u32), &TopicMeta> = HashMap::new();
        for t in topics.values() {
            for p in 0..t.partitions {
                wanted.insert((t.name.clone(), p), t);
            }
        }
        let existing: Vec<(String, u32)> = self.read_partitions().keys().cloned().collect();
        for key in existing {
            if !wanted.contains_key(&key) {
                self.write_partitions().remove(&key);
                self.storage.delete_log(&log_name(&key.0, key.1))?;
                tracing::info!(topic = %key.0, partition = key.1, "deleted partition log");
            }
        }
        for (key, meta) in wanted {
            let config = meta.config.log_config();
            let existing = self.read_partitions().get(&key).map(|p| p.log.clone());
            match existing {
                Some(log) => {
                    if log.config() != config {
                        log.set_config(config)?;
                    }
                }
                None => {
                    let log = self.storage.open_log(&log_name(&key.0, key.1), config)?;
                    let (hw, _) = watch::channel(log.high_watermark());
                    // Two reconciles may race: keep the first entry, whose watchers are live.
                    self.write_partitions().entry(key).or_insert(Partition { log, hw });
                }
            }
        }
        Ok(())
    }

    /// Removes logs on disk that no topic owns (a topic deleted while the node was down).
    ///
    /// # Errors
    /// The data directory cannot be listed.
    pub fn remove_orphan_logs(&self) -> Result<(), ApiError> {
        let open = self.read_partitions();
        let owned: std::collections::HashSet<String> = open.keys().map(|(t, p)| log_name(t, *p)).collect();
        drop(open);
        let entries = std::fs::read_dir(self.storage.root())
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot list data dir: {e}")))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let is_partition = name.rsplit_once('-').is_some_and(|(_, p)| p.parse::<u32>().is_ok());
            if is_partition && !owned.contains(&name) && entry.path().is_dir() {
                tracing::info!(dir = %name, "removing the log of a deleted topic");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Partition, ApiError> {
        if let Some(p) = self.read_partitions().get(&(topic.to_string(), partition)) {
            return Ok(p.clone());
        }
        self.missing_partition(topic, partition)
    }

    /// Several partitions of one topic, in the order given, under one lock and one key.
    fn partitions_of(&self, topic: &str, partitions: impl Iterator<Item = u32>) -> Result<Vec<Partition>, ApiError> {
        let map = self.read_partitions();
        let mut key = (topic.to_string(), 0);
        partitions
            .map(|p| {
                key.1 = p;
                map.get(&key).cloned().map_or_else(|| self.missing_partition(topic, p), Ok)
            })
            .collect()
    }

    /// The error for a partition that is not open.
    fn missing_partition(&self, topic: &str, partition: u32) -> Result<Partition, ApiError> {
        match self.metadata.topic(topic) {
            None => Err(ApiError::topic_not_found(topic)),
            Some(t) if partition >= t.partitions => Err(ApiError::new(
                ErrorCode::PartitionNotFound,
                format!("topic {topic:?} has partitions 0..{}, not {partition}", t.partitions),
            )),
            Some(_) => Err(ApiError::new(ErrorCode::Unavailable, "partition is being opened; retry")),
        }
    }

    /// Runs retention and compaction on every partition (blocking).
    pub fn run_cleanup(&self) {
        let logs: Vec<(String, u32, Log)> =
            self.read_partitions().iter().map(|((t, p), part)| (t.clone(), *p, part.log.clone())).collect();
        for (topic, partition, log) in logs {
            if let Err(e) = log.enforce_retention() {
                tracing::warn!(%topic, partition, error = %e, "retention failed");
            }
            if let Err(e) = log.compact() {
                tracing::warn!(%topic, partition, error = %e, "compaction failed");
            }
        }
    }

    /// Live status of a topic's partitions.
    pub fn partition_status(&self, topic: &str, partitions: u32) -> Vec<PartitionStatus> {
        let map = self.read_partitions();
        (0..partitions)
            .map(|p| match map.get(&(topic.to_string(), p)) {
                Some(part) => self.status(topic, p, &part.log),
                None => PartitionStatus { partition: p, ..Default::default() },
            })
            .collect()
    }

    /// Every open partition with its status (for metrics).
    pub fn all_partition_status(&self) -> Vec<(String, PartitionStatus)> {
        let map = self.read_partitions();
        map.iter().map(|((t, p), part)| (t.clone(), self.status(t, *p, &part.log))).collect()
    }

    /// Validates and appends a produce request; the result resolves when acknowledged.
    /// Records of one partition become one batch, appended in request order.
    ///
    /// # Errors
    /// `topic_not_found`, `partition_not_found`, `record_too_large`, `invalid_record`, or a
    /// storage error.
    pub async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        acks: Acks,
    ) -> Result<PendingProduce, ApiError> {
        self.produce_with(topic, records, acks, ProduceOptions::default()).await
    }

    /// Like [`Broker::produce`], with the request's conditions: `expected_offset` (every record
    /// must name one partition, and the append happens only if that partition's next offset is
    /// `expected_offset`) and an idempotent `producer` session (a retry of one of its recent
    /// requests gets the first attempt's offsets and appends nothing; keyless records go to a
    /// partition chosen from the session, so a retry goes where the first attempt went).
    ///
    /// # Errors
    /// As [`Broker::produce`], and `offset_mismatch`, `producer_fenced`, `out_of_order_sequence`.
    pub async fn produce_with(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
        acks: Acks,
        options: ProduceOptions,
    ) -> Result<PendingProduce, ApiError> {
        let ProduceOptions { expected_offset, producer } = options;
        let meta = self.metadata.topic(topic).ok_or_else(|| ApiError::topic_not_found(topic))?;
        if records.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRecord, "a produce request needs at least one record"));
        }
        let records = match &meta.config.value_schema_subject {
            Some(subject) => self.validate_values(subject, records).await?,
            None => records,
        };
        let max_record = meta.config.max_record_bytes as usize;
        let keyless = match producer {
            Some(session) => session.keyless_partition(meta.partitions),
            None => self.sticky.next_partition(meta.partitions),
        };
        let now = now_ms();
        // (partition, record index), sorted below into one run per partition: a keyed request
        // over a wide topic spreads over hundreds of partitions, and a map of a list per
        // partition cost an allocation for each.
        let mut targets: Vec<(u32, usize)> = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if r.size() > max_record {
                return Err(ApiError::new(
                    ErrorCode::RecordTooLarge,
                    format!("record {i} is {} bytes; topic {topic:?} allows {max_record} (max_record_bytes)", r.size()),
                ));
            }
            let p = match (r.partition, &r.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, meta.partitions),
                (None, None) => keyless,
            };
            if p >= meta.partitions {
                return Err(ApiError::new(
                    ErrorCode::PartitionNotFound,
                    format!("record {i}: topic {topic:?} has partitions 0..{}, not {p}", meta.partitions),
                ));
            }
            targets.push((p, i));
        }
        targets.sort_unstable();
        let by_partition: Vec<&[(u32, usize)]> = targets.chunk_by(|a, b| a.0 == b.0).collect();
        if expected_offset.is_some() && (by_partition.len() != 1 || records.iter().any(|r| r.partition.is_none())) {
            return Err(ApiError::invalid("expected_offset needs every record to name the same explicit partition"));
        }
        let mut batches = Vec::with_capacity(by_partition.len());
        let partitions = self.partitions_of(topic, by_partition.iter().map(|run| run[0].0))?;
        for (run, partition) in by_partition.iter().zip(partitions) {
            let p = run[0].0;
            let indexes = run.iter().map(|&(_, i)| i);
            if meta.config.tiering {
                self.cold.check_backlog(topic, p, partition.log.size_bytes())?;
            }
            // Sized up front: growing a buffer of a MiB by doubling copies it once more.
            let size = indexes
                .clone()
                .map(|i| {
                    BatchBuilder::record_capacity(
                        records[i].key.as_deref(),
                        records[i].value.as_deref(),
                        &records[i].headers,
                    )
                })
                .sum();
            let mut builder = BatchBuilder::with_capacity(Compression::None, size);
            if let Some(session) = producer {
                builder = builder.producer(session.info());
            }
            for i in indexes {
                let r = &records[i];
                builder.push(r.timestamp.unwrap_or(now), r.key.as_deref(), r.value.as_deref(), &r.headers);
            }
            // Built here, so valid: appended without checking it again.
            let batch = builder.build_valid().map_err(|e| ApiError::new(ErrorCode::InvalidRecord, e.to_string()))?;
            if batch.bytes().len() > MAX_BATCH_BYTES as usize {
                return Err(ApiError::new(ErrorCode::RequestTooLarge, "records for one partition exceed 64 MiB"));
            }
            batches.push((p, partition, batch));
        }
        let (appended, durable) = append_grouped(batches, expected_offset).await?;
        let mut offsets = vec![(0u32, 0u64); records.len()];
        let mut partitions = Vec::with_capacity(appended.len());
        // Appended in the order of `by_partition`, all of them (a failure above ended the request).
        for ((p, partition, info), run) in appended.into_iter().zip(&by_partition) {
            for (k, &(_, i)) in run.iter().enumerate() {
                offsets[i] = (p, info.base_offset + k as u64);
            }
            partitions.push(partition);
        }
        Ok(PendingProduce { partitions, durable, offsets, acks })
    }

    /// Appends batches a producer built (`strata-client`'s producer does), each to its partition
    /// as it is, after [`ValidBatch::check_produced`]: no per-record work beyond that check, as
    /// Kafka's brokers take producers' batches. At most one batch per partition, as in Kafka's
    /// produce requests: a producer session numbers a request's batches alike, so a second batch
    /// of a partition would read as a retry of the first. A topic with a value schema decodes
    /// them and takes the records' path ([`Broker::produce_with`]), since every value is checked.
    /// `options` as for [`Broker::produce_with`]; `expected_offset` needs a request of one batch.
    ///
    /// # Errors
    /// `topic_not_found`, `partition_not_found`, `invalid_record` (a batch that does not check,
    /// or two for one partition), `record_too_large`, `request_too_large`, and as
    /// [`Broker::produce_with`].
    pub async fn produce_batches(
        &self,
        topic: &str,
        batches: Vec<(u32, Bytes)>,
        acks: Acks,
        options: ProduceOptions,
    ) -> Result<PendingProduce<Vec<BatchOffsets>>, ApiError> {
        let ProduceOptions { expected_offset, producer } = options;
        let meta = self.metadata.topic(topic).ok_or_else(|| ApiError::topic_not_found(topic))?;
        if batches.is_empty() {
            return Err(ApiError::new(ErrorCode::InvalidRecord, "a produce request needs at least one batch"));
        }
        if expected_offset.is_some() && batches.len() != 1 {
            return Err(ApiError::invalid("expected_offset needs a request of one batch (one explicit partition)"));
        }
        let max_record = meta.config.max_record_bytes as usize;
        let mut checked = Vec::with_capacity(batches.len());
        // A keyed request over a wide topic carries hundreds of batches: one flag per partition.
        let mut seen = vec![false; meta.partitions as usize];
        for (i, (p, data)) in batches.into_iter().enumerate() {
            let Some(seen) = seen.get_mut(p as usize) else {
                return Err(ApiError::new(
                    ErrorCode::PartitionNotFound,
                    format!("batch {i}: topic {topic:?} has partitions 0..{}, not {p}", meta.partitions),
                ));
            };
            if std::mem::replace(seen, true) {
                return Err(ApiError::invalid(format!(
                    "batch {i}: a second batch for partition {p} (one per partition)"
                )));
            }
            if data.len() > MAX_BATCH_BYTES as usize {
                return Err(ApiError::new(ErrorCode::RequestTooLarge, format!("batch {i} exceeds 64 MiB")));
            }
            let mut batch = ValidBatch::check_produced(Vec::from(data), max_record).map_err(|e| {
                let (code, setting) = match e {
                    ProducedBatchError::RecordTooLarge { .. } => (ErrorCode::RecordTooLarge, " (max_record_bytes)"),
                    ProducedBatchError::Invalid(_) => (ErrorCode::InvalidRecord, ""),
                };
                ApiError::new(code, format!("batch {i} (partition {p}) of topic {topic:?}: {e}{setting}"))
            })?;
            if let Some(session) = producer {
                batch.set_producer(session.info());
            }
            checked.push((p, batch));
        }
        if meta.config.value_schema_subject.is_some() {
            return self.produce_decoded(topic, checked, acks, options).await;
        }
        let partitions = self.partitions_of(topic, checked.iter().map(|&(p, _)| p))?;
        let mut batches = Vec::with_capacity(checked.len());
        for ((p, batch), partition) in checked.into_iter().zip(partitions) {
            if meta.config.tiering {
                self.cold.check_backlog(topic, p, partition.log.size_bytes())?;
            }
            batches.push((p, partition, batch));
        }
        let counts: Vec<u32> = batches.iter().map(|(_, _, b)| b.header().record_count).collect();
        let (appended, durable) = append_grouped(batches, expected_offset).await?;
        let (offsets, partitions) = appended
            .into_iter()
            .zip(counts)
            .map(|((partition, log, info), count)| {
                (BatchOffsets { partition, base_offset: info.base_offset, count }, log)
            })
            .unzip();
        Ok(PendingProduce { partitions, durable, offsets, acks })
    }

    /// [`Broker::produce_batches`] for a topic whose values are validated: the checked batches'
    /// records take the records' path, each batch's as one run of its partition.
    async fn produce_decoded(
        &self,
        topic: &str,
        batches: Vec<(u32, ValidBatch)>,
        acks: Acks,
        options: ProduceOptions,
    ) -> Result<PendingProduce<Vec<BatchOffsets>>, ApiError> {
        let mut records = Vec::new();
        let mut runs = Vec::with_capacity(batches.len());
        for (p, batch) in batches {
            let decoded = Batch::parse(Bytes::from(batch.into_bytes()))
                .and_then(|b| b.records())
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("a checked batch does not decode: {e}")))?;
            runs.push((p, records.len(), decoded.len() as u32));
            records.extend(decoded.into_iter().map(|r| ProduceRecord {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp: Some(r.timestamp),
                partition: Some(p),
            }));
        }
        let pending = self.produce_with(topic, records, acks, options).await?;
        Ok(pending.map(|offsets| {
            runs.into_iter()
                .map(|(partition, first, count)| BatchOffsets {
                    partition,
                    base_offset: offsets.get(first).map_or(0, |&(_, o)| o),
                    count,
                })
                .collect()
        }))
    }

    /// Validated produce: every value (tombstones aside) becomes a framed Avro value of `subject`,
    /// or the whole request is refused with `schema_mismatch`.
    async fn validate_values(
        &self,
        subject: &str,
        mut records: Vec<ProduceRecord>,
    ) -> Result<Vec<ProduceRecord>, ApiError> {
        let schemas = self.registry.subject_schemas(subject)?;
        let convert = move |registry: &Registry, records: &mut Vec<ProduceRecord>| {
            for (i, r) in records.iter_mut().enumerate() {
                if let Some(value) = &r.value {
                    r.value = Some(registry.validate_value(&schemas, i, value)?);
                }
            }
            Ok::<_, ApiError>(())
        };
        // Encoding runs at roughly 100 MB/s: up to 32 KiB of values (a fraction of a millisecond)
        // stays on this worker, which is cheaper than a hand-off; more goes off the async workers.
        let bytes: usize = records.iter().map(|r| r.value.as_ref().map_or(0, Bytes::len)).sum();
        if bytes <= 32 * 1024 {
            convert(&self.registry, &mut records)?;
            return Ok(records);
        }
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || {
            convert(&registry, &mut records)?;
            Ok(records)
        })
        .await?
    }

    /// Reads records from a partition, long-polling up to `wait` when there are none yet.
    ///
    /// # Errors
    /// `topic_not_found`, `partition_not_found`, `offset_out_of_range`, or a storage error.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_records: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<FetchResult, ApiError> {
        if let Some(cold) = self.read_cold(topic, partition, start, max_records, max_bytes).await? {
            return Ok(cold);
        }
        let (mut offset, mut read) =
            match self.read_waiting(topic, partition, start, max_bytes, ReadMode::Checked, wait).await {
                Ok(read) => read,
                // Local retention deleted the segment (it is tiered) between the choice of tier and
                // the read: the cold tier has it now.
                Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                    return self.read_cold(topic, partition, start, max_records, max_bytes).await?.ok_or(e);
                }
                Err(e) => return Err(e),
            };
        loop {
            let result = decode(partition, offset, read, max_records)?;
            // Compaction keeps a batch's offset span, so a read can return only records below the
            // requested offset: skip ahead rather than hand the caller an empty page.
            if !result.records.is_empty() || result.next_offset >= result.high_watermark || result.next_offset <= offset
            {
                return Ok(result);
            }
            offset = result.next_offset;
            read = self
                .read_waiting(topic, partition, Start::Offset(offset), max_bytes, ReadMode::Checked, Duration::ZERO)
                .await?
                .1;
        }
    }

    /// A receiver that changes whenever `topic/partition`'s high watermark moves (its current
    /// value counts as seen).
    ///
    /// # Errors
    /// `topic_not_found`, `partition_not_found`.
    pub fn watch_high_watermark(&self, topic: &str, partition: u32) -> Result<watch::Receiver<u64>, ApiError> {
        Ok(self.partition(topic, partition)?.hw.subscribe())
    }

    /// Like [`Broker::fetch`], but returns the stored batches untouched (the first may start
    /// before the requested offset): no per-record work, for consumers that decode batches.
    /// Also returns the offset `start` resolved to. `overshoot`: as in [`Log::read_crossing`].
    /// Checksums are not checked ([`Log::read_unverified`]): the receiver checks every batch, as
    /// `strata-client` does.
    ///
    /// # Errors
    /// As [`Broker::fetch`].
    pub async fn fetch_raw(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
        overshoot: usize,
        wait: Duration,
    ) -> Result<(u64, strata_storage::ReadResult), ApiError> {
        if let Some(cold) = self.read_cold(topic, partition, start, usize::MAX, max_bytes).await? {
            return raw_batches(cold);
        }
        match self.read_waiting(topic, partition, start, max_bytes, ReadMode::Raw { overshoot }, wait).await {
            Ok(read) => Ok(read),
            // As in `fetch`: local retention may have just handed the range to the cold tier.
            Err(e) if e.code == ErrorCode::OffsetOutOfRange => {
                match self.read_cold(topic, partition, start, usize::MAX, max_bytes).await? {
                    Some(cold) => raw_batches(cold),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Where the batches a raw read from `offset` would return lie on the local disk, without
    /// reading them (see [`Log::locate`]); blocking, for a thread that then `sendfile`s them.
    /// `None` when `offset` is below the local log start: the cold tier (or nothing) holds it,
    /// and [`Broker::fetch_raw`] serves it.
    ///
    /// # Errors
    /// Unknown topic or partition; the log's read errors.
    pub fn locate_local(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        overshoot: usize,
    ) -> Result<Option<strata_storage::Located>, ApiError> {
        let log = self.partition(topic, partition)?.log;
        if offset < log.log_start_offset() {
            return Ok(None);
        }
        match log.locate(offset, max_bytes, overshoot) {
            Ok(located) => Ok(Some(located)),
            // Retention moved the log start past `offset` meanwhile.
            Err(strata_storage::Error::OffsetOutOfRange { requested, log_start, .. }) if requested < log_start => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Serves a read from the cold tier when it starts below the partition's local start (a
    /// tiered topic only). `None`: the local log serves it.
    async fn read_cold(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<FetchResult>, ApiError> {
        let log = self.partition(topic, partition)?.log;
        let local_start = log.log_start_offset();
        // Most fetches read the hot tier: answer them before copying the partition's manifest.
        match start {
            Start::Latest => return Ok(None),
            Start::Offset(o) if o >= local_start => return Ok(None),
            _ => {}
        }
        let objects = self.metadata.tier_objects(topic, partition);
        let Some(first) = objects.first() else { return Ok(None) };
        let offset = match start {
            Start::Latest => return Ok(None),
            Start::Offset(o) => o,
            Start::Earliest => first.meta.base_offset,
            Start::Timestamp(ts) => match self.cold.offset_for_timestamp(&objects, ts).await? {
                Some(o) => o,
                None => return Ok(None),
            },
        };
        if offset >= local_start {
            return Ok(None);
        }
        let high_watermark = log.high_watermark();
        if offset < first.meta.base_offset
            || !objects.iter().any(|o| o.meta.base_offset <= offset && offset < o.meta.end_offset)
        {
            return Err(ApiError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {offset} is outside the readable range {}..={high_watermark}", first.meta.base_offset),
            ));
        }
        let (records, next_offset) = match self.cold.read(partition, &objects, offset, max_records, max_bytes).await {
            Ok(read) => read,
            // Retention may have forgotten (and deleted) the object since the manifest was read.
            Err(e) if e.code == ErrorCode::DataCorrupt => {
                let now = self.metadata.tier_objects(topic, partition);
                let start = now.first().map_or(local_start, |o| o.meta.base_offset);
                if offset < start {
                    return Err(ApiError::new(
                        ErrorCode::OffsetOutOfRange,
                        format!("offset {offset} is outside the readable range {start}..={high_watermark}"),
                    ));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        Ok(Some(FetchResult { records, next_offset, high_watermark, log_start_offset: first.meta.base_offset }))
    }

    /// Resolves `start`, then reads up to `max_bytes` as `mode` says; while there is nothing to
    /// read, waits for an append or the end of `wait`. Returns the resolved offset and what was
    /// read.
    async fn read_waiting(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
        mode: ReadMode,
        wait: Duration,
    ) -> Result<(u64, strata_storage::ReadResult), ApiError> {
        let part = self.partition(topic, partition)?;
        let log = part.log.clone();
        let mut rx = part.hw.subscribe();
        let offset = match start {
            Start::Offset(o) => o,
            Start::Earliest => log.log_start_offset(),
            Start::Latest => log.high_watermark(),
            Start::Timestamp(ts) => {
                let l = log.clone();
                tokio::task::spawn_blocking(move || l.offset_for_timestamp(ts))
                    .await??
                    .unwrap_or_else(|| log.high_watermark())
            }
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            let l = log.clone();
            let read = tokio::task::spawn_blocking(move || match mode {
                ReadMode::Checked => l.read(offset, max_bytes),
                ReadMode::Raw { overshoot } => l.read_unverified(offset, max_bytes, overshoot),
            })
            .await??;
            if !read.batches.is_empty() || wait.is_zero() {
                return Ok((offset, read));
            }
            // Nothing yet: wait for an append (or the deadline), then read again.
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok((offset, read)),
            }
        }
    }
}

/// How [`Broker::read_waiting`] reads.
#[derive(Debug, Clone, Copy)]
enum ReadMode {
    /// Checksums checked, and no batch past `max_bytes` (as Kafka's fetch): records are decoded
    /// from what is read.
    Checked,
    /// For raw readers, which check every batch themselves ([`Log::read_unverified`]); the
    /// batch crossing `max_bytes` comes too when it ends within `overshoot`
    /// ([`Log::read_crossing`]).
    Raw { overshoot: usize },
}

/// Cold records as stored batches (re-encoded as one batch: tiered topics are never compacted,
/// so their offsets are dense), and the offset of the first.
fn raw_batches(cold: FetchResult) -> Result<(u64, strata_storage::ReadResult), ApiError> {
    let offset = cold.records.first().map_or(cold.next_offset, |r| r.offset);
    let mut builder = BatchBuilder::new(Compression::None);
    for r in &cold.records {
        builder.push(r.timestamp, r.key.as_deref(), r.value.as_deref(), &r.headers);
    }
    let batches = match cold.records.first() {
        None => Bytes::new(),
        Some(first) => {
            let mut batch = builder.build().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            strata_storage::batch::set_base_offset(&mut batch, first.offset);
            Bytes::from(batch)
        }
    };
    let read = strata_storage::ReadResult {
        batches,
        next_offset: cold.next_offset,
        high_watermark: cold.high_watermark,
        log_start_offset: cold.log_start_offset,
    };
    Ok((offset, read))
}

fn decode(
    partition: u32,
    from: u64,
    read: strata_storage::ReadResult,
    max_records: usize,
) -> Result<FetchResult, ApiError> {
    let mut records: Vec<FetchedRecord> = read
        .records_from(from)?
        .into_iter()
        .take(max_records.max(1))
        .map(|r| FetchedRecord {
            partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect();
    records.truncate(max_records.max(1));
    let next_offset = match records.last() {
        Some(last) if records.len() >= max_records.max(1) => last.offset + 1,
        _ => read.next_offset.max(from),
    };
    Ok(FetchResult {
        records,
        next_offset,
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::new(ErrorCode::Internal, format!("task failed: {e}"))
    }
}

/// Convenience for tests and tools: `Arc` the broker.
pub type SharedBroker = Arc<Broker>;
