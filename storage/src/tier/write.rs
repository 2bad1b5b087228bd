//! Sealed segment → Parquet object.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanArray, Int16Array, Int32Array, Int64Array, ListArray, StringBuilder,
    StructArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;

use super::schema::{self, ObjectFooter, ROW_GROUP_MAX_BYTES, ROW_GROUP_MAX_ROWS};
use super::{Result, TierError, TierObjectMeta};
use crate::batch::{self, Batch};
use crate::partition_log::Log;

/// Bytes of batches read from the segment at a time.
const READ_CHUNK: usize = 4 * 1024 * 1024;

/// Converts one sealed segment of `log` (the one whose base offset is `base_offset`) into a
/// Parquet object, returning its bytes and what the tier manifest records about it.
///
/// Every batch is read through [`Log::read`] (checksums verified) and decoded, compressed or not.
/// This is CPU-bound work (decoding, zstd): run it on a blocking thread.
///
/// # Errors
/// [`TierError::NotSealed`] for the active segment or a base offset that starts no sealed
/// segment; [`TierError::EmptySegment`]; [`TierError::NotDense`] for a compacted segment;
/// [`TierError::Log`] when reading fails (damage, or retention deleted the segment meanwhile);
/// [`TierError::Parquet`] / [`TierError::Arrow`] from encoding.
pub fn segment_to_parquet(log: &Log, partition: u32, base_offset: u64) -> Result<(Bytes, TierObjectMeta)> {
    let (end_offset, size) = log.sealed_segment_bounds(base_offset).ok_or(TierError::NotSealed { base_offset })?;
    if end_offset > i64::MAX as u64 {
        return Err(TierError::OffsetTooLarge(end_offset));
    }
    let mut writer = ObjectWriter::new(partition, base_offset, size)?;
    let mut offset = base_offset;
    while offset < end_offset {
        let read = log.read(offset, READ_CHUNK)?;
        if read.batches.is_empty() {
            break;
        }
        // `Log::read` verified every checksum.
        for b in batch::split_verified(&read.batches) {
            let b = b.map_err(|source| crate::Error::InvalidBatch { source })?;
            if b.header().base_offset >= end_offset {
                break;
            }
            writer.push_batch(&b)?;
        }
        offset = read.next_offset;
    }
    writer.finish(end_offset)
}

/// Accumulates one row group's columns and writes row groups as they fill.
struct ObjectWriter {
    partition: u32,
    base_offset: u64,
    writer: ArrowWriter<Vec<u8>>,
    /// Offset the next record must have (objects are dense).
    next_offset: u64,
    records: u64,
    min_timestamp: i64,
    max_timestamp: i64,
    columns: Columns,
}

#[derive(Default)]
struct Columns {
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    header_offsets: Vec<i32>,
    header_names: StringBuilder,
    header_values: BinaryBuilder,
    producer_ids: Vec<i64>,
    producer_epochs: Vec<i16>,
    sequences: Vec<i32>,
    transactional: Vec<bool>,
    control: Vec<bool>,
    /// Key, value and header bytes in this row group.
    bytes: usize,
}

impl ObjectWriter {
    fn new(partition: u32, base_offset: u64, segment_size: u64) -> Result<Self> {
        // zstd usually more than halves a segment; start with room for that.
        let buffer = Vec::with_capacity(usize::try_from(segment_size / 2).unwrap_or(0));
        let writer = ArrowWriter::try_new(buffer, schema::arrow_schema(), Some(schema::writer_properties()))?;
        Ok(Self {
            partition,
            base_offset,
            writer,
            next_offset: base_offset,
            records: 0,
            min_timestamp: i64::MAX,
            max_timestamp: i64::MIN,
            columns: Columns::new(),
        })
    }

    fn push_batch(&mut self, b: &Batch) -> Result<()> {
        let h = *b.header();
        let records = b.records().map_err(|source| crate::Error::InvalidBatch { source })?;
        for r in records {
            if r.offset != self.next_offset {
                return Err(TierError::NotDense {
                    base_offset: self.base_offset,
                    expected: self.next_offset,
                    found: r.offset,
                });
            }
            self.columns.push(&h, &r)?;
            let c = &self.columns;
            self.min_timestamp = self.min_timestamp.min(r.timestamp);
            self.max_timestamp = self.max_timestamp.max(r.timestamp);
            self.records += 1;
            self.next_offset = r.offset + 1;
            if c.offsets.len() >= ROW_GROUP_MAX_ROWS || c.bytes >= ROW_GROUP_MAX_BYTES {
                self.flush_row_group()?;
            }
        }
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<()> {
        if self.columns.offsets.is_empty() {
            return Ok(());
        }
        let columns = std::mem::replace(&mut self.columns, Columns::new());
        let batch = columns.into_record_batch(self.partition)?;
        self.writer.write(&batch)?;
        self.writer.flush()?;
        Ok(())
    }

    fn finish(mut self, end_offset: u64) -> Result<(Bytes, TierObjectMeta)> {
        if self.records == 0 {
            return Err(TierError::EmptySegment { base_offset: self.base_offset });
        }
        if self.next_offset != end_offset {
            return Err(TierError::NotDense {
                base_offset: self.base_offset,
                expected: end_offset,
                found: self.next_offset,
            });
        }
        self.flush_row_group()?;
        // Push buffered bytes into the Vec so the row groups can be checksummed before the footer.
        self.writer.sync().map_err(|e| TierError::Parquet { source: e.into() })?;
        let object = self.writer.inner();
        let row_group_crcs = self
            .writer
            .flushed_row_groups()
            .iter()
            .map(|rg| schema::row_group_crc(object, rg).ok_or(TierError::Internal("row group outside the object")))
            .collect::<Result<Vec<_>>>()?;
        let footer = ObjectFooter {
            partition: self.partition,
            base_offset: self.base_offset,
            end_offset,
            records: self.records,
            row_group_crcs,
        };
        for kv in footer.to_key_values() {
            self.writer.append_key_value_metadata(kv);
        }
        let object = Bytes::from(self.writer.into_inner()?);
        let meta = TierObjectMeta {
            base_offset: self.base_offset,
            end_offset,
            min_timestamp: self.min_timestamp,
            max_timestamp: self.max_timestamp,
            records: self.records,
            size_bytes: object.len() as u64,
            crc32c: crc32c::crc32c(&object),
        };
        Ok((object, meta))
    }
}

/// Kafka's per-record sequence: base sequence + offset delta, wrapping past `i32::MAX` to 0;
/// −1 when the batch has no producer sequence.
fn sequence(base_sequence: i32, delta: u64) -> i32 {
    if base_sequence < 0 {
        return -1;
    }
    let wrapped = (i64::from(base_sequence) + (delta % (1 << 31)) as i64) % (i64::from(i32::MAX) + 1);
    wrapped as i32
}

impl Columns {
    /// Appends one record of the batch with header `h`.
    fn push(&mut self, h: &crate::batch::BatchHeader, r: &crate::batch::Record) -> Result<()> {
        let offset = i64::try_from(r.offset).map_err(|_| TierError::OffsetTooLarge(r.offset))?;
        self.offsets.push(offset);
        self.timestamps.push(r.timestamp);
        self.keys.append_option(r.key.as_deref());
        self.values.append_option(r.value.as_deref());
        self.bytes += r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len);
        for header in &r.headers {
            self.header_names.append_value(&header.name);
            self.header_values.append_value(&header.value);
            self.bytes += header.name.len() + header.value.len();
        }
        let header_count = self.header_names.len();
        self.header_offsets.push(i32::try_from(header_count).map_err(|_| TierError::Internal("headers overflow"))?);
        self.producer_ids.push(h.producer.id);
        self.producer_epochs.push(h.producer.epoch);
        self.sequences.push(sequence(h.producer.base_sequence, r.offset - h.base_offset));
        self.transactional.push(h.transactional);
        self.control.push(h.control);
        Ok(())
    }

    fn new() -> Self {
        Self {
            keys: BinaryBuilder::with_capacity(ROW_GROUP_MAX_ROWS, 64 * 1024),
            values: BinaryBuilder::with_capacity(ROW_GROUP_MAX_ROWS, ROW_GROUP_MAX_BYTES + 64 * 1024),
            header_offsets: vec![0],
            ..Default::default()
        }
    }

    fn into_record_batch(mut self, partition: u32) -> Result<RecordBatch> {
        let rows = self.offsets.len();
        let headers = StructArray::try_new(
            schema::header_fields(),
            vec![Arc::new(self.header_names.finish()) as ArrayRef, Arc::new(self.header_values.finish())],
            None,
        )?;
        let headers = ListArray::try_new(
            Arc::new(schema::header_item()),
            OffsetBuffer::new(self.header_offsets.into()),
            Arc::new(headers),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_value(partition, rows)),
            Arc::new(Int64Array::from(self.offsets)),
            Arc::new(TimestampMillisecondArray::from(self.timestamps)),
            Arc::new(self.keys.finish()),
            Arc::new(self.values.finish()),
            Arc::new(headers),
            Arc::new(Int64Array::from(self.producer_ids)),
            Arc::new(Int16Array::from(self.producer_epochs)),
            Arc::new(Int32Array::from(self.sequences)),
            Arc::new(BooleanArray::from(self.transactional)),
            Arc::new(BooleanArray::from(self.control)),
        ];
        Ok(RecordBatch::try_new(schema::arrow_schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::sequence;

    #[test]
    fn sequences_wrap_like_kafka_and_stay_minus_one_without_a_producer() {
        assert_eq!(sequence(-1, 5), -1);
        assert_eq!(sequence(3, 2), 5);
        assert_eq!(sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(sequence(i32::MAX, 1), 0);
        assert_eq!(sequence(i32::MAX - 1, 3), 1);
    }
}

/// Builds Arrow record batches in the tiered objects' schema ([`super::arrow_schema`]) from
/// stored batches: how SQL reads the hot tier, so both tiers scan as one table.
#[derive(Default)]
pub struct ArrowRows {
    partition: u32,
    columns: Columns,
}

impl std::fmt::Debug for ArrowRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrowRows").field("partition", &self.partition).field("rows", &self.len()).finish()
    }
}

impl ArrowRows {
    pub fn new(partition: u32) -> Self {
        Self { partition, columns: Columns::new() }
    }

    /// Appends the records of `batch` whose offsets are in `[from, until)`.
    ///
    /// # Errors
    /// [`TierError::Log`] when the batch does not decode; [`TierError::OffsetTooLarge`].
    pub fn push(&mut self, batch: &Batch, from: u64, until: u64) -> Result<()> {
        self.push_where(batch, from..until, i64::MIN..=i64::MAX).map(|_| ())
    }

    /// Appends the records of `batch` whose offsets are in `offsets` and timestamps in
    /// `timestamps`; how many. A batch whose records are all older than the range is not decoded.
    ///
    /// # Errors
    /// [`TierError::Log`] when the batch does not decode; [`TierError::OffsetTooLarge`].
    pub fn push_where(
        &mut self,
        batch: &Batch,
        offsets: std::ops::Range<u64>,
        timestamps: std::ops::RangeInclusive<i64>,
    ) -> Result<usize> {
        let h = *batch.header();
        if h.max_timestamp < *timestamps.start() {
            return Ok(0);
        }
        let mut pushed = 0;
        for r in batch.records().map_err(|source| crate::Error::InvalidBatch { source })? {
            if offsets.contains(&r.offset) && timestamps.contains(&r.timestamp) {
                self.columns.push(&h, &r)?;
                pushed += 1;
            }
        }
        Ok(pushed)
    }

    /// Rows appended since the last [`ArrowRows::finish`].
    pub fn len(&self) -> usize {
        self.columns.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key, value and header bytes appended since the last [`ArrowRows::finish`].
    pub fn bytes(&self) -> usize {
        self.columns.bytes
    }

    /// The rows appended so far as one record batch; starts over empty.
    ///
    /// # Errors
    /// [`TierError::Arrow`] (a bug: the columns are built consistently).
    pub fn finish(&mut self) -> Result<RecordBatch> {
        std::mem::replace(&mut self.columns, Columns::new()).into_record_batch(self.partition)
    }
}
