//! Retention: delete whole sealed segments, oldest first, past the time or size limit.
//!
//! The in-memory state drops a segment before its files are unlinked, so a concurrent reader
//! either still has the open descriptor or is told the offset is out of range; a crash between
//! two deletions leaves a shorter log, never one with a hole.

use std::sync::{Arc, PoisonError};

use crate::error::{IoContext, Result};
use crate::partition_log::{Log, SealedSegment};
use crate::segment;

/// Whether a deletion keeps the segments readers have pinned ([`Log::pin_local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pins {
    Kept,
    Ignored,
}

/// An offset of a log held on local disk by a reader ([`Log::pin_local`]); released on drop.
#[derive(Debug)]
pub struct LocalPin {
    log: Log,
    offset: u64,
}

impl Drop for LocalPin {
    fn drop(&mut self) {
        let mut st = self.log.lock();
        if let std::collections::btree_map::Entry::Occupied(mut held) = st.pins.entry(self.offset) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }
}

/// What a retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    pub log_start_offset: u64,
}

impl Log {
    /// Deletes sealed segments whose newest record is older than `retention_ms`, then the oldest
    /// sealed segments while the log exceeds `retention_bytes`. The active segment is never deleted.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if a file cannot be removed (the log stays consistent).
    pub fn enforce_retention(&self) -> Result<RetentionOutcome> {
        let config = self.config();
        let now = self.inner.shared.clock.now_ms();
        self.delete_oldest_sealed(Pins::Ignored, |seg, _end, total| {
            let expired = config.retention_ms.is_some_and(|ms| self.newest_before(seg, now, ms));
            let oversize = config.retention_bytes.is_some_and(|max| total > max);
            expired || oversize
        })
    }

    /// Retention of a tiered log's local copy: deletes sealed segments already in object storage
    /// (those ending at or below `tiered_end`), oldest first, while the local size (sealed and
    /// active) exceeds `local_retention_bytes` or the segment's newest record is older than
    /// `local_retention_ms` or `retention_ms`. It stops at the first segment that is not tiered
    /// or not past a limit, so the local log stays contiguous. The active segment and untiered
    /// segments are never deleted, nor a segment that ends above an offset a reader has pinned
    /// ([`Log::pin_local`]): a query that planned to read it here, and not from object storage,
    /// finds it.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if a file cannot be removed (the log stays consistent).
    pub fn enforce_local_retention(
        &self,
        tiered_end: u64,
        local_retention_ms: Option<u64>,
        local_retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> Result<RetentionOutcome> {
        let now = self.inner.shared.clock.now_ms();
        self.delete_oldest_sealed(Pins::Kept, |seg, end, total| {
            if end > tiered_end {
                return false;
            }
            let expired = |ms: Option<u64>| ms.is_some_and(|ms| self.newest_before(seg, now, ms));
            expired(local_retention_ms) || expired(retention_ms) || local_retention_bytes.is_some_and(|max| total > max)
        })
    }

    /// Whether the segment's newest record is older than `ms` before `now`.
    fn newest_before(&self, seg: &SealedSegment, now: i64, ms: u64) -> bool {
        self.sealed_index(seg).max_timestamp < now.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// Pins a reader's offset on local disk: while the returned pin lives, local retention of a
    /// tiered log ([`Log::enforce_local_retention`]) deletes no segment holding `offset` or any
    /// after it. `None` if the log no longer starts at or below `offset` (the reader must look
    /// for it in object storage). Retention proper (`retention_ms`, `retention_bytes`) ignores
    /// pins: records past it are gone from both tiers.
    pub fn pin_local(&self, offset: u64) -> Option<LocalPin> {
        let mut st = self.lock();
        if st.log_start > offset {
            return None;
        }
        *st.pins.entry(offset).or_default() += 1;
        Some(LocalPin { log: self.clone(), offset })
    }

    /// Deletes sealed segments oldest first while `doomed(segment, end_offset, log size)` holds,
    /// the log size counting what is left (sealed and active). Never the active segment, nor,
    /// with `Pins::Kept`, one that ends above a pinned offset.
    fn delete_oldest_sealed(
        &self,
        pins: Pins,
        mut doomed: impl FnMut(&SealedSegment, u64, u64) -> bool,
    ) -> Result<RetentionOutcome> {
        let _maintenance = self.inner.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let (sealed, active_size, active_base) = {
            let st = self.lock();
            (st.sealed.values().cloned().collect::<Vec<_>>(), st.active.size, st.active.base)
        };
        let mut total: u64 = sealed.iter().map(|s| s.size).sum::<u64>() + active_size;
        let mut chosen: Vec<Arc<SealedSegment>> = Vec::new();
        for (i, seg) in sealed.iter().enumerate() {
            let end = sealed.get(i + 1).map_or(active_base, |next| next.base);
            if !doomed(seg, end, total) {
                break;
            }
            total -= seg.size;
            chosen.push(Arc::clone(seg));
        }
        self.delete_sealed(chosen, pins)
    }

    /// Drops the given oldest sealed segments from the log (with `Pins::Kept`, those before the
    /// first that ends above a pinned offset, checked under the same lock that drops them), then
    /// removes their files.
    fn delete_sealed(&self, mut doomed: Vec<Arc<SealedSegment>>, pins: Pins) -> Result<RetentionOutcome> {
        let log_start = {
            let mut st = self.lock();
            if let (Pins::Kept, Some((&pinned, _))) = (pins, st.pins.first_key_value()) {
                let end =
                    |seg: &SealedSegment| st.sealed.range(seg.base + 1..).next().map_or(st.active.base, |(&b, _)| b);
                let kept = doomed.iter().position(|seg| end(seg) > pinned).unwrap_or(doomed.len());
                doomed.truncate(kept);
            }
            if doomed.is_empty() {
                return Ok(RetentionOutcome { log_start_offset: st.log_start, ..Default::default() });
            }
            for seg in &doomed {
                st.sealed.remove(&seg.base);
            }
            st.log_start = st.sealed.keys().next().copied().unwrap_or(st.active.base);
            st.log_start
        };
        self.inner.recent().forget(|base| base < log_start);
        let mut deleted_bytes = 0;
        for seg in &doomed {
            self.inner.shared.files.evict(seg.id);
            std::fs::remove_file(&seg.path).at(&seg.path)?;
            let index = segment::index_path(self.dir(), seg.base);
            if let Err(e) = std::fs::remove_file(&index)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(crate::Error::io(index, e));
            }
            deleted_bytes += seg.size;
        }
        segment::sync_dir(self.dir()).at(self.dir())?;
        tracing::info!(dir = %self.dir().display(), segments = doomed.len(), log_start, "retention deleted segments");
        Ok(RetentionOutcome { deleted_segments: doomed.len(), deleted_bytes, log_start_offset: log_start })
    }
}
