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
        let _maintenance = self.inner.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let (sealed, active_size, config) = {
            let st = self.lock();
            (st.sealed.values().cloned().collect::<Vec<_>>(), st.active.size, st.config.clone())
        };
        let now = self.inner.shared.clock.now_ms();
        let mut total: u64 = sealed.iter().map(|s| s.size).sum::<u64>() + active_size;
        let mut doomed: Vec<Arc<SealedSegment>> = Vec::new();
        for seg in &sealed {
            let expired = config
                .retention_ms
                .is_some_and(|ms| self.sealed_index(seg).max_timestamp < now.saturating_sub(ms as i64));
            let oversize = config.retention_bytes.is_some_and(|max| total > max);
            if !(expired || oversize) {
                break;
            }
            total -= seg.size;
            doomed.push(Arc::clone(seg));
        }
        if doomed.is_empty() {
            return Ok(RetentionOutcome { log_start_offset: self.log_start_offset(), ..Default::default() });
        }
        let log_start = {
            let mut st = self.lock();
            for seg in &doomed {
                st.sealed.remove(&seg.base);
            }
            st.log_start = st.sealed.keys().next().copied().unwrap_or(st.active.base);
            st.log_start
        };
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
