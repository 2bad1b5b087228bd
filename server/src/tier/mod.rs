//! Tiered storage: sealed segments of tiered topics become Parquet objects in object storage,
//! recorded in the partition's tier manifest (through Raft), and are read back transparently.
//!
//! ```text
//!  sealed segment ──segment_to_parquet──► put <topic>/<p>/<base>-<end>.parquet ──► TierAdd (Raft)
//!                                                                                    │
//!  local retention may now delete the segment ◄──────────────────────────────────────┘
//!  fetch below the local start ──► manifest ──► cache / get ──► read_parquet
//! ```
//!
//! Crash safety: an object counts only once its `TierAdd` is applied; until then the local
//! segment stays. Objects in the store that no manifest names (uploaded, never committed; or of a
//! deleted topic, or forgotten by retention) are swept at start-up and after failures.

pub mod cache;
pub mod store;
pub mod verify;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use strata_storage::tier as parquet_tier;
use tokio_util::sync::CancellationToken;

use self::cache::ObjectCache;
pub use self::store::TierStore;
use crate::broker::{Broker, FetchedRecord, now_ms};
use crate::error::{ApiError, ErrorCode};
use crate::metadata::{Command, CommandResult, TierObject};

/// How far a partition's tiering is behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierLag {
    /// Local bytes not yet in object storage (sealed and active segments).
    pub bytes: u64,
    /// Age of the oldest sealed segment not yet in object storage, in seconds.
    pub seconds: u64,
    /// Local bytes already in object storage (deletable by local retention).
    pub tiered_local_bytes: u64,
}

/// A tiered object decoded once: its records in offset order. Sequential consumers are served
/// page after page from it instead of decoding the object again for every fetch.
#[derive(Debug)]
pub struct DecodedObject {
    records: Vec<strata_storage::Record>,
    weight: u64,
}

impl cache::Weigh for Arc<DecodedObject> {
    fn weight(&self) -> u64 {
        self.weight
    }
}

/// The cold tier: the object store, a cache of decoded objects, and tiering progress.
#[derive(Debug)]
pub struct ColdTier {
    pub store: TierStore,
    cache: ObjectCache<Arc<DecodedObject>>,
    /// One loader per object at a time (a read and its read-ahead do not both decode it).
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    lag: Mutex<HashMap<(String, u32), TierLag>>,
    max_untiered_bytes: u64,
}

fn unavailable(store: &TierStore, e: &store::StoreError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("object store {} is not answering: {e}", store.describe))
}

impl ColdTier {
    pub fn new(store: TierStore, cache_bytes: u64, max_untiered_bytes: u64) -> Self {
        Self {
            store,
            cache: ObjectCache::new(cache_bytes),
            loading: Mutex::new(HashMap::new()),
            lag: Mutex::new(HashMap::new()),
            max_untiered_bytes,
        }
    }

    /// The object's records, from the cache or fetched from the store, checked against the
    /// manifest (size, CRC32C, record count) and decoded.
    ///
    /// # Errors
    /// `unavailable` (503) when the store does not answer; `data_corrupt` naming the object and
    /// its offset range when it is missing, damaged or does not decode.
    pub async fn object(&self, object: &TierObject) -> Result<Arc<DecodedObject>, ApiError> {
        if let Some(decoded) = self.cache.get(&object.key) {
            return Ok(decoded);
        }
        let gate = {
            let mut loading = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(loading.entry(object.key.clone()).or_default())
        };
        let _loading = gate.lock().await;
        if let Some(decoded) = self.cache.get(&object.key) {
            return Ok(decoded);
        }
        let loaded = self.load(object).await;
        self.loading.lock().unwrap_or_else(PoisonError::into_inner).remove(&object.key);
        let decoded = loaded?;
        self.cache.insert(&object.key, Arc::clone(&decoded));
        Ok(decoded)
    }

    async fn load(&self, object: &TierObject) -> Result<Arc<DecodedObject>, ApiError> {
        let bytes = match self.store.get(&object.key).await {
            Ok(b) => b,
            Err(store::StoreError::NotFound { .. }) => return Err(damaged(object, "it is missing from the store")),
            Err(e) => return Err(unavailable(&self.store, &e)),
        };
        let meta = &object.meta;
        if bytes.len() as u64 != meta.size_bytes || crc32c::crc32c(&bytes) != meta.crc32c {
            return Err(damaged(object, "its size or CRC32C does not match the manifest"));
        }
        let base = meta.base_offset;
        let decoded =
            tokio::task::spawn_blocking(move || parquet_tier::read_parquet(&bytes, base, usize::MAX, usize::MAX))
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cold read task failed: {e}")))?;
        let records = decoded.map_err(|e| damaged(object, &format!("it does not decode: {e}")))?;
        if records.len() as u64 != meta.records {
            let why = format!("it holds {} records, the manifest says {}", records.len(), meta.records);
            return Err(damaged(object, &why));
        }
        let weight = records
            .iter()
            .map(|r| {
                let headers: usize = r.headers.iter().map(|h| h.name.len() + h.value.len()).sum();
                let body = r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
                (64 + body + headers) as u64
            })
            .sum();
        Ok(Arc::new(DecodedObject { records, weight }))
    }

    /// Loads `object` into the cache in the background (read-ahead for sequential consumers).
    pub fn prefetch(self: &Arc<Self>, object: TierObject) {
        if self.cache.contains(&object.key) {
            return;
        }
        let cold = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = cold.object(&object).await {
                tracing::debug!(key = %object.key, error = %e, "read-ahead failed");
            }
        });
    }

    /// Records from the cold tier at `offset` (which `objects` must cover), and the offset to
    /// read next.
    ///
    /// # Errors
    /// As [`ColdTier::object`]; `data_corrupt` when the object does not decode.
    pub async fn read(
        self: &Arc<Self>,
        partition: u32,
        objects: &[TierObject],
        offset: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<(Vec<FetchedRecord>, u64), ApiError> {
        let Some(i) = objects.iter().position(|o| o.meta.base_offset <= offset && offset < o.meta.end_offset) else {
            return Err(ApiError::new(ErrorCode::Internal, format!("no tiered object holds offset {offset}")));
        };
        let object = &objects[i];
        if let Some(next) = objects.get(i + 1) {
            self.prefetch(next.clone());
        }
        let decoded = self.object(object).await?;
        let from = decoded.records.partition_point(|r| r.offset < offset);
        let mut bytes = 0usize;
        let mut records = Vec::new();
        for r in &decoded.records[from..] {
            if records.len() >= max_records.max(1) || (bytes >= max_bytes && !records.is_empty()) {
                break;
            }
            bytes += r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
            records.push(FetchedRecord {
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            });
        }
        let next = records.last().map_or(object.meta.end_offset, |r| r.offset + 1);
        Ok((records, next))
    }

    /// The first offset at or after `timestamp` in the cold tier, if it is there.
    ///
    /// # Errors
    /// As [`ColdTier::object`].
    pub async fn offset_for_timestamp(&self, objects: &[TierObject], timestamp: i64) -> Result<Option<u64>, ApiError> {
        let Some(object) = objects.iter().find(|o| o.meta.max_timestamp >= timestamp) else { return Ok(None) };
        let decoded = self.object(object).await?;
        Ok(decoded.records.iter().find(|r| r.timestamp >= timestamp).map(|r| r.offset))
    }

    pub fn lag(&self, topic: &str, partition: u32) -> TierLag {
        self.lag
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or_default()
    }

    /// Every partition's lag (for metrics).
    pub fn all_lag(&self) -> Vec<((String, u32), TierLag)> {
        self.lag.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Refuses a produce to a tiered partition whose untiered backlog is over the bound.
    ///
    /// # Errors
    /// `unavailable` (503, Retry-After).
    pub fn check_backlog(&self, topic: &str, partition: u32, local_bytes: u64) -> Result<(), ApiError> {
        let untiered = local_bytes.saturating_sub(self.lag(topic, partition).tiered_local_bytes);
        if untiered > self.max_untiered_bytes {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "{topic}/{partition} holds {untiered} bytes not yet in object storage ({}), more than tier_max_untiered_bytes = {}; retry later",
                    self.store.describe, self.max_untiered_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn damaged(object: &TierObject, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DataCorrupt,
        format!(
            "tiered object {} (offsets {}..{}) is unreadable: {why}",
            object.key, object.meta.base_offset, object.meta.end_offset
        ),
    )
}

/// Test hook: `STRATA_TIER_CRASH_AT=converted|uploaded|committed` aborts the process right after
/// that step of the first segment tiered, so tests can crash at each step.
fn crash_point(step: &str) {
    if std::env::var("STRATA_TIER_CRASH_AT").is_ok_and(|s| s == step) {
        tracing::error!(step, "STRATA_TIER_CRASH_AT: aborting");
        std::process::abort();
    }
}

/// The background loop: tier sealed segments, apply retention across tiers, sweep orphans.
#[derive(Debug)]
pub struct Tiering {
    broker: Arc<Broker>,
    cold: Arc<ColdTier>,
    /// Per partition: when to try again after a failure, and the current backoff.
    backoff: HashMap<(String, u32), (Instant, Duration)>,
    /// Sweep orphaned objects on the next round (at start-up, after failures, and when a tiered
    /// topic was deleted).
    sweep: bool,
    rounds: u64,
    /// The tiered topics of the last round.
    tiered_topics: BTreeSet<String>,
}

const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Orphans are also swept every this many rounds.
const SWEEP_EVERY: u64 = 120;

impl Tiering {
    pub fn new(broker: Arc<Broker>, cold: Arc<ColdTier>) -> Self {
        Self { broker, cold, backoff: HashMap::new(), sweep: true, rounds: 0, tiered_topics: BTreeSet::new() }
    }

    /// Runs until `stop`, one round every `every`.
    pub async fn run(mut self, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.round().await;
        }
    }

    /// One pass over every tiered partition.
    pub async fn round(&mut self) {
        self.rounds += 1;
        let topics = self.broker.metadata().topics();
        let tiered: BTreeSet<String> =
            topics.iter().filter(|(_, t)| t.config.tiering).map(|(n, _)| n.clone()).collect();
        if self.tiered_topics.iter().any(|t| !tiered.contains(t)) {
            self.sweep = true;
        }
        self.tiered_topics = tiered;
        if self.sweep || self.rounds.is_multiple_of(SWEEP_EVERY) {
            match self.sweep_orphans().await {
                Ok(()) => self.sweep = false,
                Err(e) => tracing::warn!(error = %e, "cannot sweep orphaned tier objects"),
            }
        }
        let mut live = BTreeSet::new();
        for (name, meta) in topics.iter().filter(|(_, t)| t.config.tiering) {
            for partition in 0..meta.partitions {
                live.insert((name.clone(), partition));
                let key = (name.clone(), partition);
                if self.backoff.get(&key).is_some_and(|(until, _)| Instant::now() < *until) {
                    continue;
                }
                match self.tier_partition(name, partition, &meta.config).await {
                    Ok(()) => {
                        self.backoff.remove(&key);
                    }
                    Err(e) => {
                        let delay = self
                            .backoff
                            .get(&key)
                            .map_or(Duration::from_millis(500), |(_, d)| (*d * 2).min(MAX_BACKOFF));
                        tracing::warn!(topic = %name, partition, error = %e, retry_in = ?delay, "tiering failed");
                        self.backoff.insert(key, (Instant::now() + delay, delay));
                        self.sweep = true;
                    }
                }
            }
        }
        self.cold.lag.lock().unwrap_or_else(PoisonError::into_inner).retain(|k, _| live.contains(k));
    }

    async fn tier_partition(
        &mut self,
        topic: &str,
        partition: u32,
        config: &crate::topic::TopicConfig,
    ) -> Result<(), ApiError> {
        let Some(log) = self.broker.log(topic, partition) else { return Ok(()) };
        let metadata = self.broker.metadata();
        let mut objects = metadata.tier_objects(topic, partition);
        let l = log.clone();
        let sealed = tokio::task::spawn_blocking(move || l.sealed_segments())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("tiering task failed: {e}")))?;
        let result = self.upload_sealed(topic, partition, &log, &sealed, &mut objects).await;
        // Progress and lag are updated even when an upload failed (the lag grows).
        let tiered_end = objects.last().map(|o| o.meta.end_offset);
        let mut lag = TierLag::default();
        let now = now_ms();
        for seg in &sealed {
            if tiered_end.is_some_and(|end| seg.end_offset <= end) {
                lag.tiered_local_bytes += seg.size_bytes;
            } else if lag.seconds == 0 {
                lag.seconds = u64::try_from(now.saturating_sub(seg.max_timestamp) / 1000).unwrap_or(0);
            }
        }
        lag.bytes = log.size_bytes().saturating_sub(lag.tiered_local_bytes);
        self.cold.lag.lock().unwrap_or_else(PoisonError::into_inner).insert((topic.to_string(), partition), lag);
        result?;
        self.retention(topic, partition, &log, config, &objects).await
    }

    /// Uploads and commits every sealed segment past the manifest's end, oldest first.
    async fn upload_sealed(
        &self,
        topic: &str,
        partition: u32,
        log: &strata_storage::Log,
        sealed: &[strata_storage::SealedSegmentInfo],
        objects: &mut Vec<TierObject>,
    ) -> Result<(), ApiError> {
        for seg in sealed {
            let end = objects.last().map(|o| o.meta.end_offset);
            if end.is_some_and(|end| seg.end_offset <= end) {
                continue;
            }
            let (l, base) = (log.clone(), seg.base_offset);
            let converted = tokio::task::spawn_blocking(move || parquet_tier::segment_to_parquet(&l, partition, base))
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("tiering task failed: {e}")))?;
            let (bytes, meta) = converted.map_err(|e| match e {
                parquet_tier::TierError::Log { source } => ApiError::from(source),
                other => ApiError::new(ErrorCode::Internal, format!("converting segment {base} to Parquet: {other}")),
            })?;
            crash_point("converted");
            let key = TierStore::object_key(topic, partition, meta.base_offset, meta.end_offset);
            let size = bytes.len();
            self.cold.store.put(&key, bytes).await.map_err(|e| unavailable(&self.cold.store, &e))?;
            crash_point("uploaded");
            let object = TierObject { key, meta };
            let command = Command::TierAdd { topic: topic.to_string(), partition, object: object.clone() };
            match self.broker.metadata().write(command).await? {
                CommandResult::Ok => {}
                CommandResult::TierGap { expected } => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "segment {}..{} does not follow the tier's end {expected}",
                            object.meta.base_offset, object.meta.end_offset
                        ),
                    ));
                }
                other => return Err(ApiError::new(ErrorCode::Internal, format!("tier commit refused: {other}"))),
            }
            crash_point("committed");
            tracing::info!(%topic, partition, key = %object.key, bytes = size, records = object.meta.records, "tiered a segment");
            objects.push(object);
        }
        Ok(())
    }

    /// Local retention (only tiered segments) and total retention (objects too).
    async fn retention(
        &self,
        topic: &str,
        partition: u32,
        log: &strata_storage::Log,
        config: &crate::topic::TopicConfig,
        objects: &[TierObject],
    ) -> Result<(), ApiError> {
        let tiered_end = objects.last().map_or(0, |o| o.meta.end_offset);
        let (l, local_ms, local_bytes, total_ms) =
            (log.clone(), config.local_retention_ms, config.local_retention_bytes, config.retention_ms);
        tokio::task::spawn_blocking(move || l.enforce_local_retention(tiered_end, local_ms, local_bytes, total_ms))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("retention task failed: {e}")))?
            .map_err(ApiError::from)?;
        // Total retention over the cold tier: by age, then by size (cold + local).
        let now = now_ms();
        let mut below = None;
        let local = log.size_bytes();
        let mut total: u64 = objects.iter().map(|o| o.meta.size_bytes).sum::<u64>() + local;
        for o in objects {
            let expired = config.retention_ms.is_some_and(|ms| o.meta.max_timestamp < now.saturating_sub(ms as i64));
            let oversize = config.retention_bytes.is_some_and(|max| total > max);
            if !(expired || oversize) {
                break;
            }
            total -= o.meta.size_bytes;
            below = Some(o.meta.end_offset);
        }
        let Some(below) = below else { return Ok(()) };
        self.broker.metadata().write(Command::TierRemove { topic: topic.to_string(), partition, below }).await?;
        for o in objects.iter().filter(|o| o.meta.end_offset <= below) {
            if let Err(e) = self.cold.store.delete(&o.key).await {
                tracing::warn!(key = %o.key, error = %e, "cannot delete an expired object; the sweep will retry");
            }
            self.cold.cache.remove(&o.key);
        }
        tracing::info!(%topic, partition, below, "retention forgot tiered objects");
        Ok(())
    }

    /// Deletes objects under `topics/` that no manifest names.
    async fn sweep_orphans(&self) -> Result<(), ApiError> {
        let keys = self.cold.store.list("topics/").await.map_err(|e| unavailable(&self.cold.store, &e))?;
        let metadata = self.broker.metadata();
        let topics = metadata.topics();
        let mut known: BTreeSet<String> = BTreeSet::new();
        for (name, meta) in &topics {
            for p in 0..meta.partitions {
                known.extend(metadata.tier_objects(name, p).into_iter().map(|o| o.key));
            }
        }
        for key in keys.iter().filter(|k| !known.contains(*k)) {
            tracing::info!(%key, "deleting an object no tier manifest names");
            self.cold.store.delete(key).await.map_err(|e| unavailable(&self.cold.store, &e))?;
        }
        Ok(())
    }
}

/// The manifest entry for an object, checked: what `verify` reports per object.
pub fn verify_object(object: &TierObject, bytes: &bytes::Bytes) -> Result<(), String> {
    parquet_tier::verify_parquet(bytes, &object.meta)
}
