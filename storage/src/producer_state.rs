//! Idempotent producers: the per-partition table that lets a retried batch be stored once.
//!
//! A batch whose producer id is not negative comes from an idempotent producer session,
//! `(id, epoch)`, and carries a base sequence. For each producer the log remembers its epoch and
//! its last [`KEPT_BATCHES`] batches. An append is then one of:
//!
//! - a **duplicate**: same epoch and a base sequence the table holds, with the same record count.
//!   Nothing is written; the caller gets the first append's offsets.
//! - **new**: same epoch and a base sequence above the last one, or a higher epoch (a new
//!   session fences the old one), or a producer the table does not know. It is appended.
//! - **refused**: a lower epoch ([`Error::ProducerFenced`]), or a base sequence at or below the
//!   last that the table no longer holds or that names a batch of another size
//!   ([`Error::OutOfOrderSequence`]).
//!
//! Sequences need only increase, not by exactly one batch's record count as in Kafka: one
//! producer session may spread its requests over several partitions, so a partition sees gaps.
//!
//! The table survives restarts without a write per append: at every segment roll it is written as
//! a snapshot `<base>.producers` (the state of everything below `base`), and opening a log loads
//! the newest snapshot and replays the batch headers after it (normally only the active segment,
//! which recovery scans anyway). Producers idle for longer than the expiry are dropped then.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::batch::{BatchHeader, ProducerInfo};
use crate::error::{Error, Result};

/// Batches remembered per producer, as in Kafka: a producer keeps at most this many requests in
/// flight to one partition, so a retry is always one of them.
pub const KEPT_BATCHES: usize = 5;

/// Default of [`crate::StorageOptions::producer_expiry`]: a day, as Kafka's
/// `producer.id.expiration.ms`.
pub const DEFAULT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// File name suffix of producer snapshots.
const EXTENSION: &str = "producers";
const MAGIC: &[u8; 4] = b"STPS";
const VERSION: u16 = 1;
/// Snapshots kept per log: the newest is the one opening uses; one more covers a crash while the
/// newest was being written.
const KEPT_SNAPSHOTS: usize = 2;

/// One appended batch of an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SequencedBatch {
    pub(crate) base_sequence: i32,
    pub(crate) records: u32,
    pub(crate) base_offset: u64,
    pub(crate) last_offset: u64,
    pub(crate) max_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<SequencedBatch>,
    /// Wall-clock time of the last append (for expiry).
    last_seen_ms: i64,
}

/// What an append of an idempotent batch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    Append,
    Duplicate(SequencedBatch),
}

/// The producers of one partition log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerTable {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerTable {
    /// Decides what appending a batch of `records` records from `producer` must do.
    ///
    /// # Errors
    /// [`Error::ProducerFenced`] or [`Error::OutOfOrderSequence`].
    pub(crate) fn check(&self, producer: ProducerInfo, records: u32) -> Result<SequenceCheck> {
        let Some(entry) = self.entries.get(&producer.id) else {
            return Ok(SequenceCheck::Append);
        };
        if producer.epoch < entry.epoch {
            return Err(Error::ProducerFenced {
                producer_id: producer.id,
                epoch: producer.epoch,
                current_epoch: entry.epoch,
            });
        }
        if producer.epoch > entry.epoch {
            return Ok(SequenceCheck::Append);
        }
        let last = entry.batches.back().map_or(i32::MIN, |b| b.base_sequence);
        if producer.base_sequence > last {
            return Ok(SequenceCheck::Append);
        }
        match entry.batches.iter().find(|b| b.base_sequence == producer.base_sequence) {
            Some(b) if b.records == records => Ok(SequenceCheck::Duplicate(*b)),
            _ => Err(Error::OutOfOrderSequence {
                producer_id: producer.id,
                epoch: producer.epoch,
                sequence: producer.base_sequence,
                last_sequence: last,
            }),
        }
    }

    /// Records an appended batch (after [`ProducerTable::check`] said to append it).
    pub(crate) fn record(&mut self, producer: ProducerInfo, batch: SequencedBatch, now_ms: i64) {
        let entry = self.entries.entry(producer.id).or_insert_with(|| ProducerEntry {
            epoch: producer.epoch,
            batches: VecDeque::new(),
            last_seen_ms: now_ms,
        });
        if producer.epoch != entry.epoch {
            entry.epoch = producer.epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == KEPT_BATCHES {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
    }

    /// Replays a stored batch's header (opening a log).
    pub(crate) fn replay(&mut self, header: &BatchHeader, now_ms: i64) {
        if header.producer.id < 0 {
            return;
        }
        let batch = SequencedBatch {
            base_sequence: header.producer.base_sequence,
            records: header.record_count,
            base_offset: header.base_offset,
            last_offset: header.base_offset + u64::from(header.last_offset_delta),
            max_timestamp: header.max_timestamp,
        };
        // Stored batches passed the check when they were appended: replaying them in order
        // rebuilds the same table. A stored batch that would now be refused (a bug, or data
        // from elsewhere) still updates the table: what is stored is what later retries meet.
        self.record(header.producer, batch, now_ms);
    }

    /// Drops producers not seen since `before_ms`.
    pub(crate) fn expire(&mut self, before_ms: i64) {
        self.entries.retain(|_, e| e.last_seen_ms >= before_ms);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The table as a snapshot file holds it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        let mut ids: Vec<_> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let e = &self.entries[&id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&e.epoch.to_le_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_le_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.base_sequence.to_le_bytes());
                out.extend_from_slice(&b.records.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
                out.extend_from_slice(&b.max_timestamp.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(buf: &[u8]) -> Option<Self> {
        let (body, crc) = buf.split_at_checked(buf.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC || u16::from_le_bytes(r.array()?) != VERSION {
            return None;
        }
        let count = u32::from_le_bytes(r.array()?);
        let mut entries = HashMap::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(r.array()?);
            let epoch = i16::from_le_bytes(r.array()?);
            let last_seen_ms = i64::from_le_bytes(r.array()?);
            let n = r.take(1)?[0] as usize;
            if n > KEPT_BATCHES {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(SequencedBatch {
                    base_sequence: i32::from_le_bytes(r.array()?),
                    records: u32::from_le_bytes(r.array()?),
                    base_offset: u64::from_le_bytes(r.array()?),
                    last_offset: u64::from_le_bytes(r.array()?),
                    max_timestamp: i64::from_le_bytes(r.array()?),
                });
            }
            entries.insert(id, ProducerEntry { epoch, batches, last_seen_ms });
        }
        r.0.is_empty().then_some(Self { entries })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

pub(crate) fn snapshot_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{EXTENSION}"))
}

/// Base offsets of the snapshots in `dir`, ascending.
pub(crate) fn list_snapshots(dir: &Path) -> io::Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(base) = name.to_str().and_then(|n| crate::segment::parse_file_name(n, EXTENSION)) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Writes a table (as [`ProducerTable::encode`] made it) as the snapshot for `base` (everything
/// below `base`), through a temporary file and a rename, and removes all but the newest
/// [`KEPT_SNAPSHOTS`]. The caller syncs the directory.
///
/// # Errors
/// The write, fsync or rename failed.
pub(crate) fn write_snapshot(
    dir: &Path,
    base: u64,
    encoded: &[u8],
    sync: &dyn Fn(&File) -> io::Result<()>,
) -> io::Result<()> {
    let path = snapshot_path(dir, base);
    let tmp = path.with_extension(format!("{EXTENSION}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(encoded)?;
    sync(&file)?;
    std::fs::rename(&tmp, &path)?;
    let bases = list_snapshots(dir)?;
    for &old in bases.iter().rev().skip(KEPT_SNAPSHOTS) {
        std::fs::remove_file(snapshot_path(dir, old))?;
    }
    Ok(())
}

/// Reads the snapshot for `base`; `None` if it is missing or damaged (the caller then replays
/// from an older one).
pub(crate) fn read_snapshot(dir: &Path, base: u64) -> Option<ProducerTable> {
    let bytes = std::fs::read(snapshot_path(dir, base)).ok()?;
    let table = ProducerTable::decode(&bytes);
    if table.is_none() {
        tracing::warn!(dir = %dir.display(), base, "ignoring a damaged producer snapshot");
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer(id: i64, epoch: i16, seq: i32) -> ProducerInfo {
        ProducerInfo { id, epoch, base_sequence: seq }
    }

    fn batch(seq: i32, records: u32, base: u64) -> SequencedBatch {
        SequencedBatch {
            base_sequence: seq,
            records,
            base_offset: base,
            last_offset: base + u64::from(records) - 1,
            max_timestamp: 7,
        }
    }

    #[test]
    fn duplicates_are_found_and_old_epochs_fenced() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(producer(1, 0, 0), 3).unwrap(), SequenceCheck::Append);
        t.record(producer(1, 0, 0), batch(0, 3, 10), 0);
        assert_eq!(t.check(producer(1, 0, 0), 3).unwrap(), SequenceCheck::Duplicate(batch(0, 3, 10)));
        assert!(matches!(t.check(producer(1, 0, 0), 2), Err(Error::OutOfOrderSequence { .. })));
        assert_eq!(t.check(producer(1, 0, 9), 1).unwrap(), SequenceCheck::Append);
        t.record(producer(1, 0, 9), batch(9, 1, 13), 0);
        assert!(matches!(t.check(producer(1, 0, 5), 1), Err(Error::OutOfOrderSequence { last_sequence: 9, .. })));
        assert_eq!(t.check(producer(1, 1, 0), 1).unwrap(), SequenceCheck::Append);
        t.record(producer(1, 1, 0), batch(0, 1, 14), 0);
        assert!(matches!(t.check(producer(1, 0, 10), 1), Err(Error::ProducerFenced { current_epoch: 1, .. })));
        assert_eq!(t.check(producer(2, 0, 77), 1).unwrap(), SequenceCheck::Append);
    }

    #[test]
    fn only_the_last_batches_are_kept() {
        let mut t = ProducerTable::default();
        for seq in 0..10 {
            t.record(producer(1, 0, seq), batch(seq, 1, seq as u64), 0);
        }
        assert!(matches!(t.check(producer(1, 0, 4), 1), Err(Error::OutOfOrderSequence { .. })));
        for seq in 5..10 {
            assert!(matches!(t.check(producer(1, 0, seq), 1), Ok(SequenceCheck::Duplicate(_))));
        }
    }

    #[test]
    fn snapshots_round_trip_and_damage_is_refused() {
        let mut t = ProducerTable::default();
        for id in 0..50 {
            for seq in 0..(id % 8) {
                t.record(producer(id, (id % 3) as i16, seq as i32), batch(seq as i32, 2, id as u64 * 100), id);
            }
        }
        let bytes = t.encode();
        assert_eq!(ProducerTable::decode(&bytes), Some(t.clone()));
        for at in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert_eq!(ProducerTable::decode(&damaged), None, "flip at {at}");
        }
        assert_eq!(ProducerTable::decode(&bytes[..bytes.len() - 1]), None);
        t.expire(25);
        assert_eq!(t.len(), 22, "ids 25..50 that wrote a batch");
    }
}
