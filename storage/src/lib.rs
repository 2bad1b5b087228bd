//! `strata-storage`: the durable partition log everything in Strata stands on. No networking,
//! no Raft — one directory of files per partition.
//!
//! ```text
//!  BatchBuilder ──encode──► Log::append ──pwrite──► active segment  <base>.log  (grows; see segment)
//!                              │                        │ roll (size / age)
//!                              │                        ▼
//!                              │                  sealed segments  <base>.log + <base>.index
//!                              ▼                        │
//!   flusher threads: fdatasync, group commit,           ├── retention: delete oldest whole segments
//!   or for small batches the journal (one shared        ├── compaction: latest record per key,
//!   write-ahead file); wake appenders                   │   rewritten via <base>.log.cleaned + rename
//!                                                       └── tier: segment → Parquet bytes (+ meta)
//!  Log::read(offset) ◄── index lookup ◄── whole stored batches, checksums verified, no re-encoding
//! ```
//!
//! - [`batch`]: the record batch format (see `storage/FORMAT.md`).
//! - [`segment`] and [`index`]: segment files and their sparse offset and time indexes.
//! - [`Log`] (`partition_log`): append, read, timestamp lookup, durability per [`Durability`].
//! - [`producer_state`]: idempotent producers (a retried batch is stored once), snapshotted at
//!   every roll.
//! - `recovery`: reopening after a crash scans only the active segment.
//! - `retention` and `compaction`: the two cleanup policies; `enforce_local_retention` deletes
//!   only segments already tiered.
//! - [`tier`]: a sealed segment to one Parquet object and back (bytes only; uploading is the
//!   server's job).
//! - [`LogManager`]: many logs sharing a bounded [`file_cache::FileCache`] and one flusher.
//! - `journal`: one write-ahead file per manager that makes small `always` appends durable with
//!   one write and one `fdatasync` whatever the partitions; their segment writes wait in memory
//!   (write-behind) and reach disk at checkpoints; replayed before any log opens.
//! - [`AppendGroup`]: a request's appends to many logs awaited as one, with one wake-up.

mod aligned;
mod append_group;
pub mod batch;
mod clock;
mod compaction;
mod config;
mod direct;
mod error;
pub mod file_cache;
mod flusher;
pub mod index;
mod journal;
mod manager;
mod partition_log;
pub mod producer_state;
mod recent;
mod recovery;
mod retention;
pub mod segment;
pub mod tier;

pub use append_group::AppendGroup;
pub use batch::{
    Batch, BatchBuilder, BatchError, BatchHeader, Compression, Header, ProducedBatchError, ProducerInfo, Record,
    ValidBatch,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use compaction::CompactionOutcome;
pub use config::{CleanupPolicy, Durability, LogConfig};
pub use error::{Error, Result};
pub use flusher::{Fsync, OsFsync};
pub use manager::{DEFAULT_JOURNAL_FILE_BYTES, LogManager, StorageOptions};
pub use partition_log::{
    AppendInfo, Attempt, Located, Log, PendingAppend, ReadResult, SealedSegmentInfo, SegmentDamage, SegmentInfo,
    SegmentSpan,
};
pub use recent::DEFAULT_POOL_BYTES as DEFAULT_RECENT_BYTES;
pub use retention::{LocalPin, RetentionOutcome};
pub use segment::BatchSpan;
pub use tier::{
    TierError, TierObjectMeta, parquet_offset_for_timestamp, read_parquet, segment_to_parquet, verify_parquet,
};
