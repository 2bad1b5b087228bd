//! Reading records back from a tiered object.
//!
//! Row groups are chosen by their `offset` (or `timestamp`) statistics; inside the first one a
//! row selection skips to the requested offset, and the page index lets the decoder skip whole
//! pages. Each row group read is first checked against its CRC32C from the footer, and decoded
//! offsets are checked to be the dense run the footer promises, so damage to the object is
//! reported, not returned as records.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::file::statistics::Statistics;

use super::schema::{self, ObjectFooter, col};
use super::{Result, TierError};
use crate::batch::{Header, Record};

/// Most rows decoded at once.
const MAX_BATCH_ROWS: usize = 8192;

/// Records of a Parquet object (made by [`super::segment_to_parquet`]) from `from_offset` on, at
/// most `max_records` records and about `max_bytes` of key and value bytes (at least one record
/// if any is at or after `from_offset`). Row groups entirely below `from_offset` are skipped by
/// their statistics; keys, values and header values share the decoded buffers (no copy).
///
/// # Errors
/// [`TierError::RowGroupCrc`] or [`TierError::OffsetMismatch`] when the object is damaged;
/// [`TierError::BadMetadata`], [`TierError::UnsupportedFormat`], [`TierError::BadColumn`] when it
/// is not a Strata object of a supported format; [`TierError::Parquet`] when it does not decode.
pub fn read_parquet(object: &Bytes, from_offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
    guard(|| read_records(object, from_offset, max_records, max_bytes))
}

fn read_records(object: &Bytes, from_offset: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>> {
    let reader = ObjectReader::open(object, true)?;
    let start = from_offset.max(reader.footer.base_offset);
    let mut out = Vec::new();
    if start >= reader.footer.end_offset || max_records == 0 {
        return Ok(out);
    }
    let mut budget = Budget { records: max_records, bytes: max_bytes, used_bytes: 0 };
    let mut expected = start;
    for rg in 0..reader.num_row_groups() {
        let (min, max) = reader.offset_range(rg)?;
        if max < start {
            continue;
        }
        let skip = usize::try_from(start.saturating_sub(min)).map_err(|_| TierError::Internal("row skip overflow"))?;
        let selection = (skip > 0).then(|| {
            let rows = reader.rows(rg);
            RowSelection::from(vec![RowSelector::skip(skip), RowSelector::select(rows.saturating_sub(skip))])
        });
        let bytes_left = budget.bytes.saturating_sub(budget.used_bytes);
        let rows_wanted = budget.records.min(bytes_left / reader.avg_row_bytes(rg).max(1) + 1);
        let mask = ProjectionMask::roots(
            reader.metadata.parquet_schema(),
            [col::OFFSET, col::TIMESTAMP, col::KEY, col::VALUE, col::HEADERS],
        );
        for batch in reader.decode(rg, mask, selection, rows_wanted)? {
            if append_records(&batch?, &mut out, &mut expected, &mut budget)? {
                return Ok(out);
            }
        }
        if expected >= reader.footer.end_offset {
            break;
        }
    }
    if out.is_empty() || expected != reader.footer.end_offset {
        // The footer promised offsets up to `end_offset` but the row groups ran out first.
        return Err(TierError::OffsetMismatch { expected, found: reader.footer.end_offset });
    }
    Ok(out)
}

/// The first offset whose timestamp is at or after `timestamp` in the object, if any. Row groups
/// whose maximum timestamp is below it are skipped by their statistics.
///
/// # Errors
/// As [`read_parquet`].
pub fn parquet_offset_for_timestamp(object: &Bytes, timestamp: i64) -> Result<Option<u64>> {
    guard(|| find_timestamp(object, timestamp))
}

fn find_timestamp(object: &Bytes, timestamp: i64) -> Result<Option<u64>> {
    let reader = ObjectReader::open(object, false)?;
    for rg in 0..reader.num_row_groups() {
        if reader.timestamp_max(rg).is_some_and(|max| max < timestamp) {
            continue;
        }
        let (min, _) = reader.offset_range(rg)?;
        let mut expected = min;
        let mask = ProjectionMask::roots(reader.metadata.parquet_schema(), [col::OFFSET, col::TIMESTAMP]);
        for batch in reader.decode(rg, mask, None, MAX_BATCH_ROWS)? {
            let batch = batch?;
            let offsets = offsets_of(&batch)?;
            let timestamps = timestamps_of(&batch)?;
            for (i, &offset) in offsets.values().iter().enumerate() {
                let offset = checked_offset(offset, expected)?;
                expected += 1;
                if timestamps.value(i) >= timestamp {
                    return Ok(Some(offset));
                }
            }
        }
    }
    Ok(None)
}

/// Runs a decode, turning a panic of the Parquet decoder into [`TierError::Damaged`].
///
/// The decoder trusts parts of the footer and page index that no checksum of ours covers
/// (they are written after the row-group checksums are computed) and some damage there makes it
/// panic rather than fail. A damaged object must not take the server down, so such a panic is
/// caught here; nothing is shared with the decode but the input bytes, so no state is left
/// inconsistent.
pub(crate) fn guard<T>(decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode))
        .unwrap_or(Err(TierError::Damaged { reason: "the parquet decoder failed on this object" }))
}

/// What is left of a read's limits.
struct Budget {
    records: usize,
    bytes: usize,
    used_bytes: usize,
}

/// Appends a decoded batch's records; `true` once the budget is spent.
fn append_records(batch: &RecordBatch, out: &mut Vec<Record>, expected: &mut u64, budget: &mut Budget) -> Result<bool> {
    let offsets = offsets_of(batch)?;
    let timestamps = timestamps_of(batch)?;
    let keys = column(batch, "key")?.as_binary_opt::<i32>().ok_or(TierError::BadColumn { column: "key" })?;
    let values = column(batch, "value")?.as_binary_opt::<i32>().ok_or(TierError::BadColumn { column: "value" })?;
    let headers = column(batch, "headers")?.as_list_opt::<i32>().ok_or(TierError::BadColumn { column: "headers" })?;
    let header_struct = headers.values().as_struct_opt().ok_or(TierError::BadColumn { column: "headers" })?;
    let (Some(names), Some(header_values)) = (
        header_struct.column_by_name("name").and_then(|c| c.as_string_opt::<i32>()),
        header_struct.column_by_name("value").and_then(|c| c.as_binary_opt::<i32>()),
    ) else {
        return Err(TierError::BadColumn { column: "headers" });
    };
    // One reference-counted buffer per column; records slice into them.
    let key_buf = shared(keys);
    let value_buf = shared(values);
    let header_buf = shared(header_values);
    let header_offsets = headers.value_offsets();
    for i in 0..batch.num_rows() {
        let size = binary_len(keys, i) + binary_len(values, i);
        if !out.is_empty() && (budget.records == 0 || budget.used_bytes + size > budget.bytes) {
            return Ok(true);
        }
        let offset = checked_offset(offsets.value(i), *expected)?;
        *expected += 1;
        let (h_start, h_end) = (header_offsets[i] as usize, header_offsets[i + 1] as usize);
        let record_headers = (h_start..h_end)
            .map(|h| Header { name: names.value(h).to_string(), value: slice(&header_buf, header_values, h) })
            .collect();
        out.push(Record {
            offset,
            timestamp: timestamps.value(i),
            key: keys.is_valid(i).then(|| slice(&key_buf, keys, i)),
            value: values.is_valid(i).then(|| slice(&value_buf, values, i)),
            headers: record_headers,
        });
        budget.records -= 1;
        budget.used_bytes += size;
        if budget.records == 0 || budget.used_bytes >= budget.bytes {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A binary array's values buffer as [`Bytes`], without copying.
fn shared(array: &arrow::array::BinaryArray) -> Bytes {
    Bytes::from_owner(ArrowBuffer(array.values().clone()))
}

/// Lets [`Bytes`] own an Arrow buffer.
struct ArrowBuffer(arrow::buffer::Buffer);

impl AsRef<[u8]> for ArrowBuffer {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

fn binary_len(array: &arrow::array::BinaryArray, i: usize) -> usize {
    if array.is_valid(i) { array.value_length(i) as usize } else { 0 }
}

/// Element `i` of a binary array as a slice of `buf` (that array's values buffer).
fn slice(buf: &Bytes, array: &arrow::array::BinaryArray, i: usize) -> Bytes {
    let offsets = array.value_offsets();
    buf.slice(offsets[i] as usize..offsets[i + 1] as usize)
}

fn checked_offset(found: i64, expected: u64) -> Result<u64> {
    match u64::try_from(found) {
        Ok(offset) if offset == expected => Ok(offset),
        _ => Err(TierError::OffsetMismatch { expected, found: found as u64 }),
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a dyn Array> {
    batch.column_by_name(name).map(AsRef::as_ref).ok_or(TierError::BadColumn { column: name })
}

fn offsets_of(batch: &RecordBatch) -> Result<&arrow::array::Int64Array> {
    column(batch, "offset")?.as_primitive_opt::<Int64Type>().ok_or(TierError::BadColumn { column: "offset" })
}

fn timestamps_of(batch: &RecordBatch) -> Result<&arrow::array::TimestampMillisecondArray> {
    column(batch, "timestamp")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or(TierError::BadColumn { column: "timestamp" })
}

/// An object's parsed footer, ready to decode row groups.
pub(crate) struct ObjectReader<'a> {
    object: &'a Bytes,
    pub(crate) metadata: ArrowReaderMetadata,
    pub(crate) footer: ObjectFooter,
}

impl<'a> ObjectReader<'a> {
    /// Parses the footer (and the page index if asked) and checks Strata's metadata and schema.
    pub(crate) fn open(object: &'a Bytes, page_index: bool) -> Result<Self> {
        // The schema is derived from the Parquet schema, not from the embedded `ARROW:schema`:
        // same types for format 1, less to decode, and nothing trusted that no checksum covers.
        let options =
            ArrowReaderOptions::new().with_page_index_policy(page_index.into()).with_skip_arrow_metadata(true);
        let metadata = ArrowReaderMetadata::load(object, options)?;
        let footer = ObjectFooter::parse(metadata.metadata())?;
        schema::check_page_index(metadata.metadata())?;
        let expected = schema::arrow_schema();
        debug_assert!(expected.fields().iter().map(|f| f.name()).eq(COLUMN_NAMES.iter()));
        for (&name, field) in COLUMN_NAMES.iter().zip(expected.fields()) {
            let found = metadata.schema().field_with_name(name).ok();
            // Nullability matters as much as the type: a flipped repetition in the schema makes
            // the decoder read values without their definition levels, shifting every value.
            if found.is_none_or(|f| f.data_type() != field.data_type() || f.is_nullable() != field.is_nullable()) {
                return Err(TierError::BadColumn { column: name });
            }
        }
        Ok(Self { object, metadata, footer })
    }

    pub(crate) fn num_row_groups(&self) -> usize {
        self.metadata.metadata().num_row_groups()
    }

    pub(crate) fn rows(&self, rg: usize) -> usize {
        usize::try_from(self.metadata.metadata().row_group(rg).num_rows()).unwrap_or(0)
    }

    /// `(min, max)` offset of a row group from its statistics, checked to describe a dense run.
    pub(crate) fn offset_range(&self, rg: usize) -> Result<(u64, u64)> {
        let bad = TierError::BadMetadata { key: "offset statistics" };
        let (min, max) = self.int64_stats(rg, col::OFFSET).ok_or(bad)?;
        let (Ok(min), Ok(max)) = (u64::try_from(min), u64::try_from(max)) else {
            return Err(TierError::BadMetadata { key: "offset statistics" });
        };
        if max < min || max - min + 1 != self.rows(rg) as u64 {
            return Err(TierError::BadMetadata { key: "offset statistics" });
        }
        Ok((min, max))
    }

    pub(crate) fn timestamp_max(&self, rg: usize) -> Option<i64> {
        self.int64_stats(rg, col::TIMESTAMP).map(|(_, max)| max)
    }

    fn int64_stats(&self, rg: usize, leaf: usize) -> Option<(i64, i64)> {
        let chunk = self.metadata.metadata().row_group(rg).columns().get(leaf)?;
        match chunk.statistics()? {
            Statistics::Int64(s) => Some((*s.min_opt()?, *s.max_opt()?)),
            _ => None,
        }
    }

    /// Average key + value bytes per row of a row group (uncompressed), to size decode batches.
    fn avg_row_bytes(&self, rg: usize) -> usize {
        let meta = self.metadata.metadata().row_group(rg);
        let bytes: i64 = [col::KEY, col::VALUE]
            .iter()
            .filter_map(|&leaf| meta.columns().get(leaf))
            .map(|c| c.uncompressed_size())
            .sum();
        usize::try_from(bytes).unwrap_or(0) / self.rows(rg).max(1)
    }

    /// A decoder over one row group, after checking its CRC32C.
    pub(crate) fn decode(
        &self,
        rg: usize,
        mask: ProjectionMask,
        selection: Option<RowSelection>,
        batch_rows: usize,
    ) -> Result<ParquetRecordBatchReader> {
        schema::check_row_group(self.object, self.metadata.metadata(), &self.footer, rg)?;
        let mut builder =
            ParquetRecordBatchReaderBuilder::new_with_metadata(self.object.clone(), self.metadata.clone())
                .with_row_groups(vec![rg])
                .with_projection(mask)
                .with_batch_size(batch_rows.clamp(1, MAX_BATCH_ROWS));
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        Ok(builder.build()?)
    }
}

/// The columns of [`schema::arrow_schema`], as `'static` names for error values.
const COLUMN_NAMES: [&str; 11] = [
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
    "producer_id",
    "producer_epoch",
    "sequence",
    "transactional",
    "control",
];
