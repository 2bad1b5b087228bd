//! Compaction (`cleanup_policy = compact`): sealed segments keep only the latest record per key.
//!
//! Two passes over the sealed segments: the first maps each key to its latest offset, the second
//! rewrites each segment that loses records into `<base>.log.cleaned`, fsyncs it and renames it
//! over `<base>.log`. A rename is atomic, so after a crash each segment is either the old or the
//! new file — never neither — and an unrenamed `.cleaned` file is removed on open. The index is
//! rewritten after the swap; until then its footer no longer matches the log, which makes it be
//! rebuilt. Offsets never change: a rewritten batch keeps its base offset and offset span.
//!
//! Records without a key are kept. A tombstone (a record with no value) that is the latest for its
//! key is dropped once its timestamp is older than `tombstone_retention_ms`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, OnceLock, PoisonError};

use bytes::Bytes;

use crate::batch::{self, Batch, BatchBuilder, Record};
use crate::config::CleanupPolicy;
use crate::error::{Error, IoContext, Result};
use crate::file_cache::FileId;
use crate::index::{IndexedBatch, SegmentIndex};
use crate::partition_log::{Log, SealedSegment, write_index_file};
use crate::segment::{self, ReadFailure, SEGMENT_HEADER_LEN};

/// What a compaction run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    pub segments_rewritten: usize,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

impl Log {
    /// Compacts the sealed segments if the log's cleanup policy is `compact`; a no-op otherwise.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a sealed segment is damaged (nothing is rewritten then), or
    /// [`Error::Io`].
    pub fn compact(&self) -> Result<CompactionOutcome> {
        let mut maintenance = self.inner.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let (sealed, config) = {
            let st = self.lock();
            (st.sealed.values().cloned().collect::<Vec<_>>(), st.config.clone())
        };
        let mut outcome = CompactionOutcome::default();
        let shape = |segments: &[Arc<SealedSegment>]| segments.iter().map(|s| (s.base, s.size)).collect::<Vec<_>>();
        if config.cleanup_policy != CleanupPolicy::Compact
            || sealed.is_empty()
            || maintenance.compacted.as_ref() == Some(&shape(&sealed))
        {
            return Ok(outcome);
        }
        let mut latest: HashMap<Bytes, u64> = HashMap::new();
        for seg in &sealed {
            for b in self.segment_batches(seg)? {
                for r in records_of(seg, &b)? {
                    if let Some(key) = r.key {
                        latest.insert(key, r.offset);
                    }
                }
            }
        }
        let tombstone_horizon = self.inner.shared.clock.now_ms().saturating_sub(config.tombstone_retention_ms as i64);
        let keep = |r: &Record| match &r.key {
            None => true,
            Some(key) => latest.get(key) == Some(&r.offset) && (r.value.is_some() || r.timestamp >= tombstone_horizon),
        };
        for seg in &sealed {
            let batches = self.segment_batches(seg)?;
            let mut out: Vec<Vec<u8>> = Vec::with_capacity(batches.len());
            let mut removed = 0u64;
            for b in &batches {
                let records = records_of(seg, b)?;
                let kept: Vec<&Record> = records.iter().filter(|r| keep(r)).collect();
                removed += (records.len() - kept.len()) as u64;
                if kept.len() == records.len() {
                    out.push(b.bytes().to_vec());
                } else if !kept.is_empty() {
                    out.push(rebuild(b, &kept)?);
                }
            }
            if removed == 0 {
                continue;
            }
            let new = self.swap_in(seg, &out)?;
            outcome.segments_rewritten += 1;
            outcome.records_removed += removed;
            outcome.bytes_before += seg.size;
            outcome.bytes_after += new.size;
        }
        if outcome.segments_rewritten > 0 {
            tracing::info!(dir = %self.dir().display(), ?outcome, "compacted");
        }
        let now_sealed: Vec<_> = self.lock().sealed.values().cloned().collect();
        maintenance.compacted = Some(shape(&now_sealed));
        Ok(outcome)
    }

    /// Every batch of a sealed segment, verified.
    fn segment_batches(&self, seg: &SealedSegment) -> Result<Vec<Batch>> {
        let file = self.inner.shared.files.get(seg.id, &seg.path, seg.ino, false).at(&seg.path)?;
        let mut pos = SEGMENT_HEADER_LEN;
        let mut out = Vec::new();
        loop {
            match segment::read_batches(&file, pos, seg.size, 0, 1 << 20, 1 << 19, true) {
                Ok(None) => return Ok(out),
                Ok(Some(chunk)) => {
                    for b in batch::split_batches(&chunk.bytes) {
                        out.push(b.map_err(|source| Error::Corrupt {
                            path: seg.path.clone(),
                            position: pos,
                            source,
                        })?);
                    }
                    pos += chunk.bytes.len() as u64;
                }
                Err(ReadFailure::Io(e)) => return Err(Error::io(&seg.path, e)),
                Err(ReadFailure::Corrupt { position, error }) => {
                    return Err(Error::Corrupt { path: seg.path.clone(), position, source: error });
                }
            }
        }
    }

    /// Writes the rewritten segment beside the old one, then atomically replaces it.
    fn swap_in(&self, seg: &SealedSegment, batches: &[Vec<u8>]) -> Result<Arc<SealedSegment>> {
        let dir = self.dir();
        let cleaned = seg.path.with_extension("log.cleaned");
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&cleaned).at(&cleaned)?;
        let interval = self.lock().config.index_interval_bytes;
        let mut index = SegmentIndex::empty(seg.base, SEGMENT_HEADER_LEN);
        let mut bytes = Vec::with_capacity(batches.iter().map(Vec::len).sum::<usize>() + SEGMENT_HEADER_LEN as usize);
        bytes.extend_from_slice(&segment::encode_header(seg.base));
        for b in batches {
            let header = batch::BatchHeader::decode(b)
                .map_err(|_| Error::Internal("compaction produced an undecodable batch"))?;
            let indexed = IndexedBatch {
                base_offset: header.base_offset,
                next_offset: header.next_offset(),
                max_timestamp: header.max_timestamp,
                min_timestamp: batch::min_timestamp(b),
                position: bytes.len() as u64,
                len: b.len() as u64,
                crc: header.crc,
            };
            index.on_append(seg.base, &indexed, interval);
            bytes.extend_from_slice(b);
        }
        file.write_all_at(&bytes, 0).at(&cleaned)?;
        self.inner.shared.fsync.sync_data(&file).at(&cleaned)?;
        let ino = file.metadata().at(&cleaned)?.ino();
        std::fs::rename(&cleaned, &seg.path).at(&seg.path)?;
        segment::sync_dir(dir).at(dir)?;
        write_index_file(dir, seg.base, &index);
        let new = Arc::new(SealedSegment {
            base: seg.base,
            id: FileId::fresh(),
            ino,
            path: seg.path.clone(),
            size: bytes.len() as u64,
            index: OnceLock::from(index),
        });
        // Its batches move: what the log holds of the old file in memory goes first, so that a
        // read of the new file never takes it.
        self.inner.recent().forget(|base| base == seg.base);
        self.lock().sealed.insert(seg.base, Arc::clone(&new));
        self.inner.shared.files.evict(seg.id);
        Ok(new)
    }
}

fn records_of(seg: &SealedSegment, b: &Batch) -> Result<Vec<Record>> {
    b.records().map_err(|source| Error::Corrupt { path: seg.path.clone(), position: 0, source })
}

/// A batch holding only `kept`, with the original base offset, offset span and producer fields.
fn rebuild(original: &Batch, kept: &[&Record]) -> Result<Vec<u8>> {
    let h = original.header();
    let mut builder =
        BatchBuilder::new(h.compression).producer(h.producer).transactional(h.transactional).control(h.control);
    for r in kept {
        let delta = (r.offset - h.base_offset) as u32;
        builder.push_at(delta, r.timestamp, r.key.as_deref(), r.value.as_deref(), &r.headers);
    }
    builder.set_last_offset_delta(h.last_offset_delta);
    let mut out = builder.build().map_err(|_| Error::Internal("compaction rebuilt an empty batch"))?;
    batch::set_base_offset(&mut out, h.base_offset);
    Ok(out)
}
