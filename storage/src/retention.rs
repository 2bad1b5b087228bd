//! Retention: delete whole sealed segments, oldest first, past the time or size limit.
//!
//! The in-memory state drops a segment before its files are unlinked, so a concurrent reader
//! either still has the open descriptor or is told the offset is out of range; a crash between
//! two deletions leaves a shorter log, never one with a hole.

use std::sync::{Arc, PoisonError};

use crate::error::{IoContext, Result};
use crate::partition_log::{Log, SealedSegment};
use crate::segment;

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
        self.delete_oldest_sealed(|seg, _end, total| {
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
    /// segments are never deleted.
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
        self.delete_oldest_sealed(|seg, end, total| {
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

    /// Deletes sealed segments oldest first while `doomed(segment, end_offset, log size)` holds,
    /// the log size counting what is left (sealed and active). Never the active segment.
    fn delete_oldest_sealed(
        &self,
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
        self.delete_sealed(&chosen)
    }

    /// Drops the given oldest sealed segments from the log, then removes their files.
    fn delete_sealed(&self, doomed: &[Arc<SealedSegment>]) -> Result<RetentionOutcome> {
        if doomed.is_empty() {
            return Ok(RetentionOutcome { log_start_offset: self.log_start_offset(), ..Default::default() });
        }
        let log_start = {
            let mut st = self.lock();
            for seg in doomed {
                st.sealed.remove(&seg.base);
            }
            st.log_start = st.sealed.keys().next().copied().unwrap_or(st.active.base);
            st.log_start
        };
        let mut deleted_bytes = 0;
        for seg in doomed {
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
