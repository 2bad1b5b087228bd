//! `Idempotency-Key` for HTTP produce: a retried request (same key, same topic) gets the first
//! response and appends nothing, for a configurable window, also across restarts.
//!
//! Completed keys live in memory and in an internal log (`<data_dir>/__idempotency`, durability
//! `always`, time retention = the window) that is replayed at start-up. A key being processed is
//! marked in flight, so a concurrent retry waits for the first attempt instead of racing it.
//!
//! A crash after the records are durable but before the key's entry is does not let a retry
//! append again: the request's records were written as an idempotent producer session derived
//! from the key and the request (`ProducerSession::for_idempotency_key`), so the retry, which
//! finds no entry here, is answered by the partition logs with the first attempt's offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use strata_storage::{BatchBuilder, Compression, Durability, Log, LogConfig, LogManager};
use tokio::sync::Notify;

use crate::broker::now_ms;
use crate::error::{ApiError, ErrorCode};
use crate::http::ProduceResponse;

/// Name of the internal log under the data directory.
pub const LOG_NAME: &str = "__idempotency";

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    topic: String,
    key: String,
    fingerprint: u32,
    at_ms: i64,
    response: ProduceResponse,
}

#[derive(Debug)]
enum Entry {
    InFlight(Arc<Notify>),
    Done { fingerprint: u32, at_ms: i64, response: ProduceResponse },
}

type Entries = HashMap<(String, String), Entry>;

/// The idempotency keys of every topic.
#[derive(Debug)]
pub struct IdempotencyStore {
    log: Log,
    window_ms: i64,
    // A std mutex: map operations only, never held across `.await`.
    entries: Arc<Mutex<Entries>>,
}

/// What `begin` decided.
#[derive(Debug)]
pub enum Idempotent {
    /// The key was seen with the same request: answer this, append nothing.
    Replay(ProduceResponse),
    /// First time: do the work, then `finish`.
    First(Guard),
}

/// Fingerprint of a request's content, to tell a retry from a different request with the same key.
pub fn fingerprint(query: &HashMap<String, String>, json: bool, body: &[u8]) -> u32 {
    let sorted: BTreeMap<&String, &String> = query.iter().collect();
    let mut crc = crc32c::crc32c(&[u8::from(json)]);
    for (k, v) in sorted {
        crc = crc32c::crc32c_append(crc, k.as_bytes());
        crc = crc32c::crc32c_append(crc, b"=");
        crc = crc32c::crc32c_append(crc, v.as_bytes());
        crc = crc32c::crc32c_append(crc, b"&");
    }
    crc32c::crc32c_append(crc, body)
}

impl IdempotencyStore {
    /// Opens the internal log and replays the keys still inside the window.
    ///
    /// # Errors
    /// The internal log cannot be opened or read.
    pub fn open(storage: &LogManager, window: Duration) -> Result<Self, ApiError> {
        let window_ms = window.as_millis().min(i64::MAX as u128) as i64;
        let config = LogConfig {
            durability: Durability::Always,
            retention_ms: Some(window_ms as u64),
            segment_ms: Some((window_ms as u64 / 4).clamp(60_000, 3_600_000)),
            segment_bytes: 16 * 1024 * 1024,
            ..LogConfig::default()
        };
        let log = storage.open_log(LOG_NAME, config)?;
        let horizon = now_ms() - window_ms;
        let mut entries = Entries::new();
        let mut offset = log.log_start_offset();
        loop {
            let read = log.read(offset, 1 << 20)?;
            if read.batches.is_empty() {
                break;
            }
            for r in read.records_from(offset)? {
                let Some(value) = r.value else { continue };
                match serde_json::from_slice::<Stored>(&value) {
                    Ok(s) if s.at_ms >= horizon => {
                        let done = Entry::Done { fingerprint: s.fingerprint, at_ms: s.at_ms, response: s.response };
                        entries.insert((s.topic, s.key), done);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(offset = r.offset, error = %e, "skipping unreadable idempotency entry"),
                }
            }
            offset = read.next_offset;
        }
        tracing::info!(keys = entries.len(), "idempotency keys loaded");
        Ok(Self { log, window_ms, entries: Arc::new(Mutex::new(entries)) })
    }

    /// Claims `key` for `topic`, waiting while another request with the key is in flight.
    ///
    /// # Errors
    /// `idempotency_key_reused` when the key was used for a different request.
    pub async fn begin(self: &Arc<Self>, topic: &str, key: &str, fingerprint: u32) -> Result<Idempotent, ApiError> {
        let id = (topic.to_string(), key.to_string());
        loop {
            let wait = {
                let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
                match entries.get(&id) {
                    Some(Entry::Done { at_ms, .. }) if *at_ms < now_ms() - self.window_ms => {
                        entries.remove(&id);
                        continue;
                    }
                    Some(Entry::Done { fingerprint: f, response, .. }) => {
                        if *f != fingerprint {
                            return Err(ApiError::new(
                                ErrorCode::IdempotencyKeyReused,
                                format!("Idempotency-Key {key:?} was used for a different request to topic {topic:?}"),
                            ));
                        }
                        return Ok(Idempotent::Replay(response.clone()));
                    }
                    Some(Entry::InFlight(notify)) => Arc::clone(notify),
                    None => {
                        let notify = Arc::new(Notify::new());
                        entries.insert(id.clone(), Entry::InFlight(Arc::clone(&notify)));
                        return Ok(Idempotent::First(Guard {
                            store: Arc::clone(self),
                            id,
                            fingerprint,
                            notify,
                            finished: false,
                        }));
                    }
                }
            };
            let notified = wait.notified();
            // Re-check after registering, in case the first attempt finished in between.
            if matches!(self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(&id), Some(Entry::InFlight(n)) if Arc::ptr_eq(n, &wait))
            {
                notified.await;
            }
        }
    }
}

/// The right to process a key; dropping it without `finish` releases the key.
#[derive(Debug)]
pub struct Guard {
    store: Arc<IdempotencyStore>,
    id: (String, String),
    fingerprint: u32,
    notify: Arc<Notify>,
    finished: bool,
}

impl Guard {
    /// Records the response (durably) so retries replay it; `None` (the request failed) releases
    /// the key so a retry does the work.
    ///
    /// # Errors
    /// The entry could not be made durable (the response is still correct, but a retry after a
    /// restart might append again).
    pub async fn finish(mut self, response: Option<&ProduceResponse>) -> Result<(), ApiError> {
        self.finished = true;
        let Some(response) = response else {
            self.release();
            return Ok(());
        };
        if std::env::var("STRATA_IDEMPOTENCY_CRASH_AT").is_ok_and(|s| s == "stored") {
            // Test hook: the records are durable, the key's entry is not.
            tracing::error!("STRATA_IDEMPOTENCY_CRASH_AT: aborting");
            std::process::abort();
        }
        let at_ms = now_ms();
        let stored = Stored {
            topic: self.id.0.clone(),
            key: self.id.1.clone(),
            fingerprint: self.fingerprint,
            at_ms,
            response: response.clone(),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let mut b = BatchBuilder::new(Compression::None);
        b.push(at_ms, Some(format!("{}\0{}", self.id.0, self.id.1).as_bytes()), Some(&value), &[]);
        let batch = b.build_valid().map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let log = self.store.log.clone();
        let pending = tokio::task::spawn_blocking(move || log.append_valid(batch)).await??;
        let durable = pending.durable().await;
        {
            let mut entries = self.store.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.insert(
                self.id.clone(),
                Entry::Done { fingerprint: self.fingerprint, at_ms, response: response.clone() },
            );
        }
        self.notify.notify_waiters();
        durable.map(|_| ()).map_err(ApiError::from)
    }

    fn release(&self) {
        let mut entries = self.store.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(entries.get(&self.id), Some(Entry::InFlight(n)) if Arc::ptr_eq(n, &self.notify)) {
            entries.remove(&self.id);
        }
        drop(entries);
        self.notify.notify_waiters();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.finished {
            self.release();
        }
    }
}
