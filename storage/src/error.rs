//! The storage error type: one enum, structured fields, each variant a distinct problem a caller
//! can act on.

use std::io;
use std::path::PathBuf;

use crate::batch::BatchError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a partition log operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The offset is below the log start or beyond the high watermark.
    #[error("offset {requested} is out of range: readable offsets are {log_start}..{high_watermark}")]
    OffsetOutOfRange { requested: u64, log_start: u64, high_watermark: u64 },

    /// A conditional append found another next offset than the caller expected.
    #[error("expected the next offset to be {expected}, but it is {actual}")]
    OffsetMismatch { expected: u64, actual: u64 },

    /// A batch from an idempotent producer session older than the partition's current one.
    #[error("producer {producer_id} epoch {epoch} is fenced: epoch {current_epoch} has written since")]
    ProducerFenced { producer_id: i64, epoch: i16, current_epoch: i16 },

    /// A batch from an idempotent producer whose sequence is not above the last one written and is
    /// not one of the recent batches a retry could repeat.
    #[error(
        "producer {producer_id} epoch {epoch}: sequence {sequence} is out of order (last written {last_sequence}; \
         sequences must increase, and a retry must repeat one of the last 5 batches exactly)"
    )]
    OutOfOrderSequence { producer_id: i64, epoch: i16, sequence: i32, last_sequence: i32 },

    #[error("batch of {size} bytes exceeds the log's limit of {max} bytes")]
    BatchTooLarge { size: usize, max: usize },

    /// The caller's batch is malformed; nothing was appended.
    #[error("invalid batch: {source}")]
    InvalidBatch {
        #[source]
        source: BatchError,
    },

    /// Stored data failed its checksum or does not parse: damage on disk.
    #[error("corrupt segment {} at byte {position}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        position: u64,
        #[source]
        source: BatchError,
    },

    #[error("log {} has been deleted", dir.display())]
    LogDeleted { dir: PathBuf },

    /// A write or fsync failed earlier: the log refuses appends until it is reopened, because the
    /// kernel may have dropped dirty pages it could not write (see fsyncgate).
    #[error("log {} refuses writes after a failed write or fsync; reopen it to recover", dir.display())]
    Poisoned { dir: PathBuf },

    #[error("i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid log config `{key}`: {reason}")]
    InvalidConfig { key: &'static str, reason: String },

    /// A broken invariant: a bug in Strata, not in the caller's input.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
