//! Tiering: a sealed segment becomes one Parquet object, readable by Strata and by any engine
//! that reads Parquet (DuckDB, DataFusion, Spark).
//!
//! ```text
//!  sealed segment ──Log::read──► batches ──decode──► Arrow columns ──zstd──► Parquet bytes
//!  <base>.log                    (CRCs checked)      one row per record      + TierObjectMeta
//!                                                                                 │
//!  Vec<Record> ◄──read_parquet── row groups (statistics prune, per-row-group CRC) ◄┘
//! ```
//!
//! This crate works on bytes only: uploading, the tier manifest and fetching objects belong to
//! the server (with `object_store`). Only sealed segments tier, and only dense ones (tiered topics
//! are never compacted), so an object holds every offset in `base_offset..end_offset`.
//!
//! - `schema`: the Arrow schema, the writer properties and the footer metadata keys.
//! - `write`: [`segment_to_parquet`].
//! - `read`: [`read_parquet`] and [`parquet_offset_for_timestamp`].
//! - `verify`: [`verify_parquet`], the check of an object against its manifest entry.
//!
//! # Object layout (format 1)
//!
//! One row per record, ordered by offset, columns in this order:
//!
//! | column | Arrow type | notes |
//! | --- | --- | --- |
//! | `partition` | `UInt32` | |
//! | `offset` | `Int64` | signed for portability (Spark, Trino, Athena have no unsigned 64-bit type); offsets above `i64::MAX` are refused |
//! | `timestamp` | `Timestamp(Millisecond, None)` | milliseconds since the epoch, as stored in the batch |
//! | `key` | `Binary`, nullable | |
//! | `value` | `Binary`, nullable | null is a tombstone |
//! | `headers` | `List<Struct<name: Utf8, value: Binary>>` | order and duplicate names kept (a Parquet `MAP` promises unique keys, and DuckDB enforces it) |
//! | `producer_id` | `Int64` | −1 when the batch has no producer |
//! | `producer_epoch` | `Int16` | −1 when none |
//! | `sequence` | `Int32` | batch base sequence + offset delta (wrapping at `i32::MAX` like Kafka's); −1 when none |
//! | `transactional` | `Boolean` | from the batch attributes |
//! | `control` | `Boolean` | a transaction marker, not user data |
//!
//! zstd pages; `offset` and `timestamp` delta-encoded; no dictionary for keys, values and header
//! values; data pages of [`DATA_PAGE_BYTES`]; page-level statistics (the page index) except for
//! values; row groups of at most
//! [`ROW_GROUP_MAX_ROWS`] rows or [`ROW_GROUP_MAX_BYTES`] of keys, values and headers. The
//! footer's key-value metadata holds `strata.format` = `1`, `strata.partition`,
//! `strata.base_offset`, `strata.end_offset`, `strata.records` and `strata.row_group_crc32c`: the
//! CRC32C of each row group's bytes (hex, comma-separated), so that a reader detects damage to
//! the data it decodes without checksumming the whole object.

mod read;
mod schema;
mod verify;
mod write;

use arrow::error::ArrowError;
use parquet::errors::ParquetError;

pub use read::{parquet_offset_for_timestamp, read_parquet};
pub use schema::{
    DATA_PAGE_BYTES, FORMAT_VERSION, ROW_GROUP_MAX_BYTES, ROW_GROUP_MAX_ROWS, arrow_schema, writer_properties,
};
pub use verify::verify_parquet;
pub use write::{ArrowRows, segment_to_parquet};

/// Facts about one tiered object (what the tier manifest records).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TierObjectMeta {
    /// First offset in the object (the segment's base offset).
    pub base_offset: u64,
    /// Exclusive: the next segment's base offset.
    pub end_offset: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
    pub records: u64,
    /// Size of the Parquet file.
    pub size_bytes: u64,
    /// CRC32C of the whole Parquet file.
    pub crc32c: u32,
}

/// Why tiering a segment or reading a tiered object failed.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    /// Only sealed segments tier; the active segment, or a base offset that starts no segment,
    /// is refused.
    #[error("no sealed segment starts at offset {base_offset}")]
    NotSealed { base_offset: u64 },

    #[error("sealed segment {base_offset} holds no records")]
    EmptySegment { base_offset: u64 },

    /// The segment has an offset gap (it was compacted): tiered objects are dense.
    #[error("segment {base_offset} is not dense: expected offset {expected}, found {found}")]
    NotDense { base_offset: u64, expected: u64, found: u64 },

    #[error("offset {0} does not fit the object's signed 64-bit offset column")]
    OffsetTooLarge(u64),

    /// Reading the segment from the log failed.
    #[error("reading the segment failed: {source}")]
    Log {
        #[from]
        source: crate::Error,
    },

    #[error("parquet: {source}")]
    Parquet {
        #[from]
        source: ParquetError,
    },

    #[error("arrow: {source}")]
    Arrow {
        #[from]
        source: ArrowError,
    },

    /// The object lacks a footer metadata entry Strata writes, or it does not parse.
    #[error("object metadata `{key}` is missing or invalid")]
    BadMetadata { key: &'static str },

    #[error("object format {found:?} is not supported (this build reads format {FORMAT_VERSION})")]
    UnsupportedFormat { found: String },

    /// A column is missing or has another type than format 1 writes.
    #[error("object column `{column}` is missing or has an unexpected type")]
    BadColumn { column: &'static str },

    /// Row-group bytes changed since they were written.
    #[error("row group {row_group} is damaged: stored crc32c {stored:#010x}, computed {computed:#010x}")]
    RowGroupCrc { row_group: usize, stored: u32, computed: u32 },

    /// Decoded rows contradict the object's own metadata (damage the checksums did not cover).
    #[error("object is inconsistent: expected offset {expected}, found {found}")]
    OffsetMismatch { expected: u64, found: u64 },

    /// The footer or page index describes impossible byte ranges or rows, or the Parquet decoder
    /// failed on damaged input.
    #[error("object is damaged: {reason}")]
    Damaged { reason: &'static str },

    /// A broken invariant: a bug in Strata.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Result of tiering operations.
pub type Result<T, E = TierError> = std::result::Result<T, E>;
