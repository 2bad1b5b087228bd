//! Per-log configuration, with defaults in code and validation into typed errors.

use std::time::Duration;

use crate::error::{Error, Result};

/// When appended bytes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An append completes only after its bytes are fdatasync'ed; concurrent appends share one
    /// fdatasync (group commit).
    Always,
    /// fdatasync at least this often while there are unsynced bytes, and as soon as 8 MiB are
    /// unsynced (smaller syncs keep a fast writer's appends from stalling behind a huge one).
    Interval(Duration),
    /// Only on segment roll and explicit flush; the page cache decides the rest.
    Never,
}

/// What happens to old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// Whole sealed segments are deleted past the retention limits.
    Delete,
    /// Sealed segments keep only the latest record per key.
    Compact,
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The active segment rolls before it would exceed this many bytes.
    pub segment_bytes: u64,
    /// The active segment rolls when its first record is this old (checked on append).
    pub segment_ms: Option<u64>,
    pub durability: Durability,
    /// Bytes of batches between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Largest batch accepted by `append`.
    pub max_batch_bytes: u32,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<u64>,
    /// Oldest sealed segments are deleted while the log is larger than this.
    pub retention_bytes: Option<u64>,
    pub cleanup_policy: CleanupPolicy,
    /// How long a tombstone survives compaction after its timestamp.
    pub tombstone_retention_ms: u64,
}

/// Smallest segment size accepted (tests use small segments to exercise rolling).
pub const MIN_SEGMENT_BYTES: u64 = 1024;
/// Positions inside a segment are 32-bit in the index.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 31;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            durability: Durability::Always,
            index_interval_bytes: 4096,
            max_batch_bytes: 16 * 1024 * 1024,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy::Delete,
            tombstone_retention_ms: 24 * 3600 * 1000,
        }
    }
}

impl LogConfig {
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first key out of bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, reason: String| Err(Error::InvalidConfig { key, reason });
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes",
                format!("{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}", self.segment_bytes),
            );
        }
        if self.segment_ms == Some(0) {
            return bad("segment_ms", "must be positive".into());
        }
        if let Durability::Interval(d) = self.durability
            && d.is_zero()
        {
            return bad("flush_interval_ms", "must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be positive".into());
        }
        if self.max_batch_bytes < 128 || u64::from(self.max_batch_bytes) > MAX_SEGMENT_BYTES {
            return bad("max_batch_bytes", format!("{} is outside 128..={MAX_SEGMENT_BYTES}", self.max_batch_bytes));
        }
        Ok(())
    }
}
