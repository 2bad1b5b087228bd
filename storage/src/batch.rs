//! The record batch: Strata's unit of appending, compression, checksumming and replication.
//!
//! A batch is a fixed 61-byte header followed by a records section (compressed as a whole when
//! the header says so). The byte layout is specified in `storage/FORMAT.md`; the golden vector in
//! `tests/golden.rs` pins it. The CRC32C covers everything from the `attributes` field to the end
//! of the batch, so the log can assign the base offset without recomputing it — the same trick
//! Kafka's record batch uses.
//!
//! [`BatchBuilder`] encodes, [`Batch::parse`] validates the header and checksum of raw bytes,
//! [`Batch::records`] decodes (and decompresses) the records, and [`check`] does both checks in
//! place, building no records (the append path's validation).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use integer_encoding::VarInt;

/// Format version written in every batch's `magic` byte.
pub const BATCH_MAGIC: u8 = 1;
/// Length of the fixed batch header in bytes.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batch_length` counts: `base_offset` (8) and `batch_length` (4).
pub const LOG_OVERHEAD: usize = 12;
/// Largest records section a compressed batch may expand to (guards against decompression bombs).
pub const MAX_UNCOMPRESSED_LEN: usize = 256 * 1024 * 1024;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_MAGIC: usize = 12;
const OFF_CRC: usize = 13;
const OFF_ATTRIBUTES: usize = 17;
const OFF_LAST_OFFSET_DELTA: usize = 19;
const OFF_RECORD_COUNT: usize = 23;
const OFF_FIRST_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_UNCOMPRESSED_LEN: usize = 57;

const ATTR_COMPRESSION_MASK: u16 = 0b111;
const ATTR_TRANSACTIONAL: u16 = 1 << 4;
const ATTR_CONTROL: u16 = 1 << 5;
const ATTR_KNOWN: u16 = ATTR_COMPRESSION_MASK | ATTR_TRANSACTIONAL | ATTR_CONTROL;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("unknown batch format version {0}")]
    BadMagic(u8),
    #[error("batch length {0} is impossible")]
    BadLength(u32),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("unknown attribute bits {0:#06x}")]
    UnknownAttributes(u16),
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    #[error("records section does not decompress: {0}")]
    Decompress(String),
    #[error("record {index} is malformed: {reason}")]
    MalformedRecord { index: u32, reason: &'static str },
    #[error("header says {header} records, section holds {actual}")]
    RecordCountMismatch { header: u32, actual: u32 },
    #[error("a batch holds at least one record")]
    Empty,
    #[error("not a batch a producer may send: {0}")]
    NotProducible(&'static str),
}

/// Why a batch a producer built may not be appended ([`ValidBatch::check_produced`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducedBatchError {
    #[error(transparent)]
    Invalid(#[from] BatchError),
    #[error("record {index} holds {bytes} bytes of key, value and headers; at most {max} allowed")]
    RecordTooLarge { index: u32, bytes: usize, max: usize },
}

/// Per-batch compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn code(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u16) -> Result<Self, BatchError> {
        match code {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Lz4),
            2 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other as u8)),
        }
    }
}

/// Identifies the producer session that wrote a batch (for idempotence and transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
}

impl ProducerInfo {
    /// A batch written outside any producer session.
    pub const NONE: ProducerInfo = ProducerInfo { id: -1, epoch: -1, base_sequence: -1 };
}

/// A header on a record: a name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Bytes,
}

/// One record as decoded from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    /// `None` is a tombstone: on a compacted log it deletes the key.
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Builds one batch. Offsets inside the batch are dense unless given explicitly (compaction).
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    producer: ProducerInfo,
    transactional: bool,
    control: bool,
    /// [`HEADER_LEN`] bytes kept for the header, then the encoded records: an uncompressed batch
    /// is built in place, without copying its records again.
    records: Vec<u8>,
    count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    min_timestamp: i64,
    last_offset_delta: u32,
    next_offset_delta: u32,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// A builder with room for `records_bytes` of encoded records (see
    /// [`BatchBuilder::record_capacity`]), so pushing them does not grow (and copy) its buffer.
    pub fn with_capacity(compression: Compression, records_bytes: usize) -> Self {
        let mut records = Vec::with_capacity(HEADER_LEN + records_bytes);
        records.resize(HEADER_LEN, 0);
        Self {
            compression,
            producer: ProducerInfo::NONE,
            transactional: false,
            control: false,
            records,
            count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            min_timestamp: i64::MAX,
            last_offset_delta: 0,
            next_offset_delta: 0,
        }
    }

    pub fn producer(mut self, producer: ProducerInfo) -> Self {
        self.producer = producer;
        self
    }

    pub fn transactional(mut self, yes: bool) -> Self {
        self.transactional = yes;
        self
    }

    pub fn control(mut self, yes: bool) -> Self {
        self.control = yes;
        self
    }

    /// The most bytes a record with these fields takes in a batch: what to reserve for it with
    /// [`BatchBuilder::with_capacity`].
    pub fn record_capacity(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) -> usize {
        // Length prefix, attributes, timestamp delta and offset delta at their longest.
        5 + 1 + 10 + 5 + fields_len(key, value, headers)
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Uncompressed size of the records pushed so far.
    pub fn records_len(&self) -> usize {
        self.records.len() - HEADER_LEN
    }

    /// Appends a record at the next dense offset delta.
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) {
        let delta = self.next_offset_delta;
        self.push_at(delta, timestamp, key, value, headers);
    }

    /// Appends a record at an explicit offset delta, which must exceed the previous one.
    /// Compaction uses this to keep the original offsets of the records it retains.
    pub fn push_at(
        &mut self,
        offset_delta: u32,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) {
        debug_assert!(self.count == 0 || offset_delta >= self.next_offset_delta);
        if self.count == 0 {
            self.first_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.min_timestamp = self.min_timestamp.min(timestamp);
        // The record is written straight into the batch, its length first: computed, not
        // measured on a copy.
        let timestamp_delta = timestamp.wrapping_sub(self.first_timestamp);
        let len =
            1 + timestamp_delta.required_space() + offset_delta.required_space() + fields_len(key, value, headers);
        let records = &mut self.records;
        records.reserve(len + 5);
        put_var(records, len as u32);
        let start = records.len();
        records.push(0u8); // record attributes, reserved
        put_var(records, timestamp_delta);
        put_var(records, offset_delta);
        put_nullable(records, key);
        put_nullable(records, value);
        put_var(records, headers.len() as u32);
        for header in headers {
            put_var(records, header.name.len() as u32);
            records.extend_from_slice(header.name.as_bytes());
            put_var(records, header.value.len() as u32);
            records.extend_from_slice(&header.value);
        }
        debug_assert_eq!(records.len() - start, len);
        self.count += 1;
        self.last_offset_delta = offset_delta;
        self.next_offset_delta = offset_delta + 1;
    }

    /// Keeps the batch's offset span even when its last records were dropped (compaction).
    pub fn set_last_offset_delta(&mut self, last_offset_delta: u32) {
        debug_assert!(last_offset_delta >= self.last_offset_delta);
        self.last_offset_delta = last_offset_delta;
    }

    /// Encodes the batch with base offset 0 (the log assigns the real one).
    ///
    /// # Errors
    /// [`BatchError::Empty`] when no record was pushed; a batch always holds one.
    pub fn build(self) -> Result<Vec<u8>, BatchError> {
        self.build_valid().map(ValidBatch::into_bytes)
    }

    /// As [`BatchBuilder::build`], with what [`check`] would find in the batch, known without
    /// checking it: for appending what was just built ([`crate::Log::append_valid`]).
    ///
    /// # Errors
    /// As [`BatchBuilder::build`].
    pub fn build_valid(self) -> Result<ValidBatch, BatchError> {
        if self.count == 0 {
            return Err(BatchError::Empty);
        }
        let records_len = self.records.len() - HEADER_LEN;
        let mut out = match self.compression {
            Compression::None => self.records,
            codec => {
                let section = &self.records[HEADER_LEN..];
                let compressed = match codec {
                    Compression::Lz4 => lz4_flex::block::compress(section),
                    _ => zstd::bulk::compress(section, 1).map_err(|e| BatchError::Decompress(e.to_string()))?,
                };
                let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
                out.resize(HEADER_LEN, 0);
                out.extend_from_slice(&compressed);
                out
            }
        };
        let uncompressed_len = match self.compression {
            Compression::None => 0,
            _ => records_len as u32,
        };
        let mut attributes = self.compression.code();
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        let total = out.len();
        let mut header = [0u8; HEADER_LEN];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            header[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&0u64.to_le_bytes());
        put(&((total - LOG_OVERHEAD) as u32).to_le_bytes());
        put(&[BATCH_MAGIC]);
        put(&0u32.to_le_bytes()); // crc, filled below
        put(&attributes.to_le_bytes());
        put(&self.last_offset_delta.to_le_bytes());
        put(&self.count.to_le_bytes());
        put(&self.first_timestamp.to_le_bytes());
        put(&self.max_timestamp.to_le_bytes());
        put(&self.producer.id.to_le_bytes());
        put(&self.producer.epoch.to_le_bytes());
        put(&self.producer.base_sequence.to_le_bytes());
        put(&uncompressed_len.to_le_bytes());
        debug_assert_eq!(at, HEADER_LEN);
        out[..HEADER_LEN].copy_from_slice(&header);
        let crc = crc32c::crc32c(&out[OFF_ATTRIBUTES..]);
        out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        let header = BatchHeader::decode(&out)?;
        Ok(ValidBatch { bytes: out, header, min_timestamp: self.min_timestamp })
    }
}

/// An encoded batch known to be valid — checked by [`ValidBatch::check`], or just built by a
/// [`BatchBuilder`] — with its header and smallest record timestamp.
#[derive(Debug, Clone)]
pub struct ValidBatch {
    bytes: Vec<u8>,
    header: BatchHeader,
    min_timestamp: i64,
}

impl ValidBatch {
    /// Checks `bytes` completely ([`check`]).
    ///
    /// # Errors
    /// What is wrong with the batch.
    pub fn check(bytes: Vec<u8>) -> Result<Self, BatchError> {
        let (header, min_timestamp) = check(&bytes)?;
        Ok(Self { bytes, header, min_timestamp })
    }

    /// Checks a batch a producer built, before it is appended as it is: everything [`check`]
    /// checks, and what only a log may write — it is not a control or transactional batch, its
    /// producer fields are unset (the server writes them for a producer session, see
    /// [`ValidBatch::set_producer`]), its offset deltas are dense from 0, its first and largest
    /// timestamps are its records' own (the time index trusts them), and no record holds more
    /// than `max_record_bytes` of key, value and headers.
    ///
    /// # Errors
    /// [`ProducedBatchError::RecordTooLarge`], or what else is wrong with the batch.
    pub fn check_produced(bytes: Vec<u8>, max_record_bytes: usize) -> Result<Self, ProducedBatchError> {
        let header = verify(&bytes)?;
        if header.control || header.transactional {
            return Err(BatchError::NotProducible("control or transactional attributes set").into());
        }
        if header.producer != ProducerInfo::NONE {
            return Err(BatchError::NotProducible("producer fields set (-1 each unless the log writes them)").into());
        }
        if header.last_offset_delta != header.record_count - 1 {
            return Err(
                BatchError::NotProducible("offset deltas leave gaps (last offset delta is not count - 1)").into()
            );
        }
        let mut min_timestamp = i64::MAX;
        let mut max_timestamp = i64::MIN;
        let mut first_timestamp = None;
        let mut first_error = None;
        let mut index = 0u32;
        let mut look = |r: RecordSpan<'_>| {
            min_timestamp = min_timestamp.min(r.timestamp);
            max_timestamp = max_timestamp.max(r.timestamp);
            first_timestamp.get_or_insert(r.timestamp);
            let len = |range: &Option<Range<usize>>| range.as_ref().map_or(0, ExactSizeIterator::len);
            let bytes = len(&r.key)
                + len(&r.value)
                + r.headers.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>();
            if first_error.is_none() {
                if r.offset_delta != index {
                    first_error = Some(BatchError::NotProducible("offset deltas are not 0, 1, 2, ...").into());
                } else if bytes > max_record_bytes {
                    first_error = Some(ProducedBatchError::RecordTooLarge { index, bytes, max: max_record_bytes });
                }
            }
            index = index.wrapping_add(1);
        };
        match header.compression {
            Compression::None => walk_records(&header, &bytes[HEADER_LEN..], &mut look)?,
            codec => {
                walk_records(&header, &decompress(codec, &bytes[HEADER_LEN..], header.uncompressed_len)?, &mut look)?
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if first_timestamp != Some(header.first_timestamp) || max_timestamp != header.max_timestamp {
            return Err(BatchError::NotProducible("first or max timestamp is not the records' own").into());
        }
        Ok(Self { bytes, header, min_timestamp })
    }

    /// Writes a producer session into the batch (and its CRC, which covers the fields).
    pub fn set_producer(&mut self, producer: ProducerInfo) {
        let b = &mut self.bytes;
        b[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer.id.to_le_bytes());
        b[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2].copy_from_slice(&producer.epoch.to_le_bytes());
        b[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&producer.base_sequence.to_le_bytes());
        let crc = crc32c::crc32c(&b[OFF_ATTRIBUTES..]);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        self.header.producer = producer;
        self.header.crc = crc;
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The smallest record timestamp (`i64::MAX` for a batch without records).
    pub fn min_timestamp(&self) -> i64 {
        self.min_timestamp
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Splits the batch into its bytes and what is known of them (for the log's append).
    pub(crate) fn into_parts(self) -> (Vec<u8>, BatchHeader, i64) {
        (self.bytes, self.header, self.min_timestamp)
    }
}

/// Encoded bytes of a record's key, value and headers.
fn fields_len(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header]) -> usize {
    let nullable =
        |b: Option<&[u8]>| b.map_or((-1i32).required_space(), |b| (b.len() as i32).required_space() + b.len());
    let header = |h: &Header| {
        (h.name.len() as u32).required_space() + h.name.len() + (h.value.len() as u32).required_space() + h.value.len()
    };
    nullable(key)
        + nullable(value)
        + (headers.len() as u32).required_space()
        + headers.iter().map(header).sum::<usize>()
}

fn put_var<V: VarInt>(out: &mut Vec<u8>, v: V) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_var(out, -1i32),
        Some(b) => {
            put_var(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// The fixed header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Bytes following the `batch_length` field; the batch occupies `LOG_OVERHEAD + batch_length`.
    pub batch_length: u32,
    pub crc: u32,
    pub compression: Compression,
    pub transactional: bool,
    pub control: bool,
    pub last_offset_delta: u32,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer: ProducerInfo,
    pub uncompressed_len: u32,
}

impl BatchHeader {
    /// Decodes the fixed header from the first [`HEADER_LEN`] bytes, checking what can be checked
    /// without the rest of the batch (version, length, attributes) but not the checksum.
    ///
    /// # Errors
    /// A [`BatchError`] naming what is wrong.
    pub fn decode(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated { needed: HEADER_LEN, available: buf.len() });
        }
        let magic = buf[OFF_MAGIC];
        if magic != BATCH_MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let batch_length = le_u32(buf, OFF_BATCH_LENGTH);
        if (batch_length as usize) < HEADER_LEN - LOG_OVERHEAD {
            return Err(BatchError::BadLength(batch_length));
        }
        let attributes = le_u16(buf, OFF_ATTRIBUTES);
        if attributes & !ATTR_KNOWN != 0 {
            return Err(BatchError::UnknownAttributes(attributes));
        }
        let record_count = le_u32(buf, OFF_RECORD_COUNT);
        let last_offset_delta = le_u32(buf, OFF_LAST_OFFSET_DELTA);
        if record_count == 0 {
            return Err(BatchError::Empty);
        }
        if last_offset_delta < record_count - 1 {
            return Err(BatchError::MalformedRecord { index: 0, reason: "last offset delta below record count" });
        }
        Ok(Self {
            base_offset: le_u64(buf, OFF_BASE_OFFSET),
            batch_length,
            crc: le_u32(buf, OFF_CRC),
            compression: Compression::from_code(attributes & ATTR_COMPRESSION_MASK)?,
            transactional: attributes & ATTR_TRANSACTIONAL != 0,
            control: attributes & ATTR_CONTROL != 0,
            last_offset_delta,
            record_count,
            first_timestamp: le_i64(buf, OFF_FIRST_TIMESTAMP),
            max_timestamp: le_i64(buf, OFF_MAX_TIMESTAMP),
            producer: ProducerInfo {
                id: le_i64(buf, OFF_PRODUCER_ID),
                epoch: le_u16(buf, OFF_PRODUCER_EPOCH) as i16,
                base_sequence: le_u32(buf, OFF_BASE_SEQUENCE) as i32,
            },
            uncompressed_len: le_u32(buf, OFF_UNCOMPRESSED_LEN),
        })
    }

    /// Total bytes the batch occupies in a segment.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// The offset the next batch in the log starts at.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// Records of this batch at or after offset `from` (for a batch that begins before it, the
    /// offsets it spans from there, at most its record count: compaction may have left gaps).
    pub fn records_from(&self, from: u64) -> u64 {
        let count = u64::from(self.record_count);
        if self.base_offset >= from { count } else { self.next_offset().saturating_sub(from).min(count) }
    }
}

/// A complete batch whose header and checksum have been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    header: BatchHeader,
    bytes: Bytes,
}

impl Batch {
    /// Verifies the header and CRC of `bytes`, which must hold exactly one batch.
    ///
    /// # Errors
    /// A [`BatchError`] naming what is wrong.
    pub fn parse(bytes: Bytes) -> Result<Self, BatchError> {
        let header = verify(&bytes)?;
        Ok(Self { header, bytes })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Decodes every record, decompressing the section first if needed.
    ///
    /// # Errors
    /// A [`BatchError`] when the section does not decompress or a record does not decode; a
    /// batch that passed [`Batch::parse`] fails here only if its writer was broken.
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        let section = self.bytes.slice(HEADER_LEN..);
        let section = match self.header.compression {
            Compression::None => section,
            codec => Bytes::from(decompress(codec, &section, self.header.uncompressed_len)?),
        };
        decode_records(&self.header, &section)
    }
}

fn decompress(codec: Compression, section: &[u8], uncompressed_len: u32) -> Result<Vec<u8>, BatchError> {
    let len = uncompressed_len as usize;
    if len > MAX_UNCOMPRESSED_LEN {
        return Err(BatchError::Decompress(format!("declared size {len} exceeds {MAX_UNCOMPRESSED_LEN}")));
    }
    match codec {
        Compression::None => Ok(section.to_vec()),
        Compression::Lz4 => {
            let mut out = vec![0u8; len];
            let n = lz4_flex::block::decompress_into(section, &mut out)
                .map_err(|e| BatchError::Decompress(e.to_string()))?;
            if n != len {
                return Err(BatchError::Decompress(format!("expanded to {n} bytes, header says {len}")));
            }
            Ok(out)
        }
        Compression::Zstd => {
            let out = zstd::bulk::decompress(section, len).map_err(|e| BatchError::Decompress(e.to_string()))?;
            if out.len() != len {
                return Err(BatchError::Decompress(format!("expanded to {} bytes, header says {len}", out.len())));
            }
            Ok(out)
        }
    }
}

/// A cursor over a records section that reports malformed input instead of panicking.
struct Cursor<'a> {
    section: &'a [u8],
    pos: usize,
    index: u32,
}

impl Cursor<'_> {
    fn fail(&self, reason: &'static str) -> BatchError {
        BatchError::MalformedRecord { index: self.index, reason }
    }

    fn var<V: VarInt>(&mut self, what: &'static str) -> Result<V, BatchError> {
        let (v, n) = V::decode_var(&self.section[self.pos..]).ok_or_else(|| self.fail(what))?;
        self.pos += n;
        Ok(v)
    }

    fn byte(&mut self) -> Result<u8, BatchError> {
        let b = *self.section.get(self.pos).ok_or_else(|| self.fail("truncated attributes"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize, end: usize, what: &'static str) -> Result<Range<usize>, BatchError> {
        let stop = self.pos.checked_add(len).filter(|&s| s <= end).ok_or_else(|| self.fail(what))?;
        let out = self.pos..stop;
        self.pos = stop;
        Ok(out)
    }

    fn nullable(&mut self, end: usize, what: &'static str) -> Result<Option<Range<usize>>, BatchError> {
        match self.var::<i32>(what)? {
            -1 => Ok(None),
            len if len >= 0 => self.take(len as usize, end, what).map(Some),
            _ => Err(self.fail(what)),
        }
    }
}

/// One record of a records section, as byte ranges of that section.
struct RecordSpan<'a> {
    offset_delta: u32,
    timestamp: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    /// Each header's name (checked to be UTF-8) and value.
    headers: &'a [(Range<usize>, Range<usize>)],
}

/// Walks every record of `section` with every framing check, allocating nothing but room for
/// header ranges; `each` sees the records in order.
fn walk_records(header: &BatchHeader, section: &[u8], mut each: impl FnMut(RecordSpan<'_>)) -> Result<(), BatchError> {
    let mut cur = Cursor { section, pos: 0, index: 0 };
    let mut previous_delta: Option<u32> = None;
    let mut headers = Vec::new();
    while cur.pos < section.len() {
        let len = cur.var::<u32>("bad length")? as usize;
        let end = cur
            .pos
            .checked_add(len)
            .filter(|&e| e <= section.len())
            .ok_or_else(|| cur.fail("length past the section"))?;
        let _attributes = cur.byte()?;
        let ts_delta = cur.var::<i64>("bad timestamp delta")?;
        let offset_delta = cur.var::<u32>("bad offset delta")?;
        if previous_delta.is_some_and(|p| offset_delta <= p) || offset_delta > header.last_offset_delta {
            return Err(cur.fail("offset deltas not increasing within the batch span"));
        }
        previous_delta = Some(offset_delta);
        let key = cur.nullable(end, "bad key")?;
        let value = cur.nullable(end, "bad value")?;
        let header_count = cur.var::<u32>("bad header count")?;
        headers.clear();
        for _ in 0..header_count {
            let name_len = cur.var::<u32>("bad header name")? as usize;
            let name = cur.take(name_len, end, "bad header name")?;
            if std::str::from_utf8(&section[name.clone()]).is_err() {
                return Err(cur.fail("header name is not UTF-8"));
            }
            let value_len = cur.var::<u32>("bad header value")? as usize;
            headers.push((name, cur.take(value_len, end, "bad header value")?));
        }
        if cur.pos != end {
            return Err(cur.fail("record length disagrees with its fields"));
        }
        if cur.index == u32::MAX {
            return Err(cur.fail("more records than a batch can count"));
        }
        each(RecordSpan {
            offset_delta,
            timestamp: header.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers: &headers,
        });
        cur.index += 1;
    }
    if cur.index != header.record_count {
        return Err(BatchError::RecordCountMismatch { header: header.record_count, actual: cur.index });
    }
    Ok(())
}

fn decode_records(header: &BatchHeader, section: &Bytes) -> Result<Vec<Record>, BatchError> {
    let mut records = Vec::with_capacity(header.record_count.min(1 << 16) as usize);
    walk_records(header, section, |r| {
        records.push(Record {
            offset: header.base_offset + u64::from(r.offset_delta),
            timestamp: r.timestamp,
            key: r.key.map(|k| section.slice(k)),
            value: r.value.map(|v| section.slice(v)),
            headers: r
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: String::from_utf8_lossy(&section[name.clone()]).into_owned(),
                    value: section.slice(value.clone()),
                })
                .collect(),
        });
    })?;
    Ok(records)
}

/// Checks one whole encoded batch as [`Batch::parse`] and [`Batch::records`] together would —
/// header, CRC, and every record's framing — without copying it or building records (only a
/// compressed section is expanded). Returns the header and the smallest record timestamp
/// (`i64::MAX` when there are no records).
///
/// # Errors
/// A [`BatchError`] naming what is wrong.
pub fn check(batch: &[u8]) -> Result<(BatchHeader, i64), BatchError> {
    let header = verify(batch)?;
    let mut min_timestamp = i64::MAX;
    let mut walk = |section: &[u8]| walk_records(&header, section, |r| min_timestamp = min_timestamp.min(r.timestamp));
    match header.compression {
        Compression::None => walk(&batch[HEADER_LEN..])?,
        codec => walk(&decompress(codec, &batch[HEADER_LEN..], header.uncompressed_len)?)?,
    }
    Ok((header, min_timestamp))
}

/// The header of `batch`, which must hold exactly one batch whose CRC matches.
fn verify(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::decode(batch)?;
    if header.total_len() != batch.len() {
        return Err(BatchError::Truncated { needed: header.total_len(), available: batch.len() });
    }
    let computed = crc32c::crc32c(&batch[OFF_ATTRIBUTES..]);
    if computed != header.crc {
        return Err(BatchError::BadCrc { stored: header.crc, computed });
    }
    Ok(header)
}

/// Writes `base_offset` into an encoded batch (outside the CRC, so nothing else changes).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
}

/// The smallest record timestamp of an encoded batch: `i64::MIN` (unknown) if it does not decode,
/// `i64::MAX` if it has no records.
pub fn min_timestamp(batch: &[u8]) -> i64 {
    check(batch).map_or(i64::MIN, |(_, min)| min)
}

/// Iterates the batches in a buffer of whole batches, as returned by a read, verifying each
/// one's checksum (for bytes that crossed a network or came from elsewhere).
pub fn split_batches(buf: &Bytes) -> impl Iterator<Item = Result<Batch, BatchError>> + '_ {
    split(buf, true)
}

/// Like [`split_batches`] for bytes whose checksums the log verified while reading them.
pub(crate) fn split_verified(buf: &Bytes) -> impl Iterator<Item = Result<Batch, BatchError>> + '_ {
    split(buf, false)
}

fn split(buf: &Bytes, verify: bool) -> impl Iterator<Item = Result<Batch, BatchError>> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let result = BatchHeader::decode(&buf[pos..]).and_then(|h| {
            let end = pos + h.total_len();
            if end > buf.len() {
                return Err(BatchError::Truncated { needed: h.total_len(), available: buf.len() - pos });
            }
            if verify { Batch::parse(buf.slice(pos..end)) } else { Ok(Batch { header: h, bytes: buf.slice(pos..end) }) }
        });
        match &result {
            Ok(b) => pos += b.header().total_len(),
            Err(_) => pos = buf.len(),
        }
        Some(result)
    })
}

/// Records at offsets `from` and above in a buffer of whole batches, from their headers alone (no
/// checksum, no decoding); counting stops at the first header that does not decode. Of a batch
/// that starts below `from` (a read's first batch), the records its offset span leaves above
/// `from` count, at most its record count (exact unless compaction left gaps in that span).
pub fn count_records(buf: &[u8], from: u64) -> u64 {
    let (mut pos, mut records) = (0usize, 0u64);
    while let Some(h) = buf.get(pos..).and_then(|rest| BatchHeader::decode(rest).ok()) {
        records += h.records_from(from);
        pos += h.total_len();
    }
    records
}

/// Concatenates batches into one buffer (the shape reads return).
pub fn concat_batches(batches: &[Batch]) -> Bytes {
    let mut out = BytesMut::with_capacity(batches.iter().map(|b| b.bytes.len()).sum());
    for b in batches {
        out.extend_from_slice(&b.bytes);
    }
    out.freeze()
}

fn le_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

fn le_i64(buf: &[u8], at: usize) -> i64 {
    le_u64(buf, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (timestamp, key, value, headers)
    type ArbRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

    fn arb_record() -> impl Strategy<Value = ArbRecord> {
        (
            -1_000_000i64..1_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
            proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..16)), 0..3),
        )
    }

    fn codec() -> impl Strategy<Value = Compression> {
        prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)]
    }

    proptest! {
        #[test]
        fn round_trips(records in proptest::collection::vec(arb_record(), 1..40), codec in codec(), base in 0u64..1 << 40,
                       pid in any::<i64>(), epoch in any::<i16>(), seq in any::<i32>(), txn in any::<bool>()) {
            let producer = ProducerInfo { id: pid, epoch, base_sequence: seq };
            let mut builder = BatchBuilder::new(codec).producer(producer).transactional(txn);
            let mut capacity = 0;
            for (ts, k, v, h) in &records {
                let headers: Vec<Header> = h.iter().map(|(n, v)| Header { name: n.clone(), value: Bytes::from(v.clone()) }).collect();
                capacity += BatchBuilder::record_capacity(k.as_deref(), v.as_deref(), &headers);
                builder.push(*ts, k.as_deref(), v.as_deref(), &headers);
            }
            prop_assert!(builder.records_len() <= capacity, "record_capacity must bound the encoded records");
            // What the builder knows of its batch is what checking the bytes finds.
            let built = builder.build_valid().unwrap();
            let (checked, min_timestamp) = check(built.bytes()).unwrap();
            prop_assert_eq!(built.header(), &checked);
            prop_assert_eq!(built.min_timestamp(), min_timestamp);
            let mut encoded = built.into_bytes();
            set_base_offset(&mut encoded, base);
            let (checked, min_timestamp) = check(&encoded).unwrap();
            let batch = Batch::parse(Bytes::from(encoded)).unwrap();
            let h = batch.header();
            prop_assert_eq!(&checked, h);
            prop_assert_eq!(min_timestamp, records.iter().map(|r| r.0).min().unwrap());
            prop_assert_eq!(h.base_offset, base);
            prop_assert_eq!(h.record_count as usize, records.len());
            prop_assert_eq!(h.last_offset(), base + records.len() as u64 - 1);
            prop_assert_eq!(h.compression, codec);
            prop_assert_eq!(h.producer, producer);
            prop_assert_eq!(h.transactional, txn);
            prop_assert_eq!(h.max_timestamp, records.iter().map(|r| r.0).max().unwrap());
            let decoded = batch.records().unwrap();
            for (i, (rec, (ts, k, v, hs))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(rec.offset, base + i as u64);
                prop_assert_eq!(rec.timestamp, *ts);
                prop_assert_eq!(rec.key.as_deref(), k.as_deref());
                prop_assert_eq!(rec.value.as_deref(), v.as_deref());
                prop_assert_eq!(rec.headers.len(), hs.len());
                for (got, (name, value)) in rec.headers.iter().zip(hs) {
                    prop_assert_eq!(&got.name, name);
                    prop_assert_eq!(got.value.as_ref(), value.as_slice());
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let checked = check(&bytes).is_ok();
            let decoded = Batch::parse(Bytes::from(bytes)).is_ok_and(|b| b.records().is_ok());
            prop_assert_eq!(checked, decoded, "check and parse + records disagree");
        }

        #[test]
        fn any_flipped_bit_is_detected(flip in 0usize..10_000, bit in 0u8..8) {
            let mut builder = BatchBuilder::new(Compression::None);
            for i in 0..10u8 {
                builder.push(i64::from(i), Some(&[i]), Some(&[i; 40]), &[]);
            }
            let mut encoded = builder.build().unwrap();
            let at = OFF_MAGIC + flip % (encoded.len() - OFF_MAGIC);
            encoded[at] ^= 1 << bit;
            prop_assert!(check(&encoded).is_err());
            prop_assert!(Batch::parse(Bytes::from(encoded)).is_err());
        }
    }

    proptest! {
        #[test]
        fn what_a_builder_builds_is_producible(records in proptest::collection::vec(arb_record(), 1..40), codec in codec(),
                                               pid in 0i64..1 << 40, epoch in 0i16..100, seq in 0i32..1000) {
            let mut builder = BatchBuilder::new(codec);
            for (ts, k, v, h) in &records {
                let headers: Vec<Header> = h.iter().map(|(n, v)| Header { name: n.clone(), value: Bytes::from(v.clone()) }).collect();
                builder.push(*ts, k.as_deref(), v.as_deref(), &headers);
            }
            let built = builder.build_valid().unwrap();
            let mut checked = ValidBatch::check_produced(built.bytes().to_vec(), usize::MAX).unwrap();
            prop_assert_eq!(checked.header(), built.header());
            prop_assert_eq!(checked.min_timestamp(), built.min_timestamp());
            let producer = ProducerInfo { id: pid, epoch, base_sequence: seq };
            checked.set_producer(producer);
            let (header, _) = check(checked.bytes()).unwrap();
            prop_assert_eq!(header.producer, producer);
            prop_assert_eq!(&header, checked.header());
        }
    }

    /// `batch` with its CRC made right again, as a client's broken encoder would send it.
    fn resealed(mut batch: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&batch[OFF_ATTRIBUTES..]);
        batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        batch
    }

    fn not_producible(batch: Vec<u8>) -> bool {
        matches!(
            ValidBatch::check_produced(batch, usize::MAX),
            Err(ProducedBatchError::Invalid(BatchError::NotProducible(_)))
        )
    }

    #[test]
    fn a_producer_may_not_send_what_only_a_log_writes() {
        let build = |f: fn(BatchBuilder) -> BatchBuilder| {
            let mut builder = f(BatchBuilder::new(Compression::None));
            builder.push(10, None, Some(b"a"), &[]);
            builder.push(30, None, Some(b"b"), &[]);
            builder.push(20, None, Some(b"c"), &[]);
            builder.build().unwrap()
        };
        assert!(ValidBatch::check_produced(build(|b| b), usize::MAX).is_ok());
        assert!(not_producible(build(|b| b.control(true))));
        assert!(not_producible(build(|b| b.transactional(true))));
        assert!(not_producible(build(|b| b.producer(ProducerInfo { id: 7, epoch: 0, base_sequence: 0 }))));

        let mut gap = BatchBuilder::new(Compression::None);
        gap.push_at(0, 1, None, Some(b"a"), &[]);
        gap.push_at(2, 1, None, Some(b"b"), &[]);
        assert!(not_producible(gap.build().unwrap()), "offset deltas 0, 2");

        let mut span = BatchBuilder::new(Compression::None);
        span.push(1, None, Some(b"a"), &[]);
        span.set_last_offset_delta(5);
        assert!(not_producible(span.build().unwrap()), "a span past the records");

        let mut lying = build(|b| b);
        lying[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&i64::MAX.to_le_bytes());
        assert!(not_producible(resealed(lying)), "max timestamp above every record's");
        let mut lying = build(|b| b);
        lying[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&20i64.to_le_bytes());
        let lying = resealed(lying);
        assert!(check(&lying).is_ok(), "the stored format does not look at it");
        assert!(not_producible(lying), "max timestamp below a record's");

        let mut bad_crc = build(|b| b);
        bad_crc[HEADER_LEN + 3] ^= 1;
        assert!(matches!(
            ValidBatch::check_produced(bad_crc, usize::MAX),
            Err(ProducedBatchError::Invalid(BatchError::BadCrc { .. }))
        ));
    }

    #[test]
    fn a_record_over_the_limit_is_named() {
        let mut builder = BatchBuilder::new(Compression::Zstd);
        builder.push(1, Some(b"key"), Some(&[0; 100]), &[]);
        builder.push(
            1,
            Some(b"key"),
            Some(&[0; 60]),
            &[Header { name: "h".into(), value: Bytes::from_static(&[1; 40]) }],
        );
        let batch = builder.build().unwrap();
        assert!(ValidBatch::check_produced(batch.clone(), 104).is_ok());
        assert_eq!(
            ValidBatch::check_produced(batch, 103).err(),
            Some(ProducedBatchError::RecordTooLarge { index: 1, bytes: 104, max: 103 })
        );
    }

    #[test]
    fn records_are_counted_from_headers_up_to_the_first_broken_one() {
        let mut buf = Vec::new();
        let mut base = 0;
        for n in [3u8, 1, 5] {
            let mut builder = BatchBuilder::new(Compression::Lz4);
            for i in 0..n {
                builder.push(0, None, Some(&[i]), &[]);
            }
            let mut batch = builder.build().unwrap();
            set_base_offset(&mut batch, base);
            base += u64::from(n);
            buf.extend(batch);
        }
        assert_eq!(count_records(&buf, 0), 9);
        // A read that starts inside the first batch (offsets 0..=2) counts from its start.
        assert_eq!(count_records(&buf, 2), 7);
        assert_eq!(count_records(&buf, 3), 6);
        assert_eq!(count_records(&buf, 4), 5);
        assert_eq!(count_records(&buf, 100), 0);
        assert_eq!(count_records(&buf[..buf.len() - 1], 0), 9, "a cut last batch's header still counts");
        buf.extend_from_slice(&[0xff; HEADER_LEN]);
        assert_eq!(count_records(&buf, 0), 9);
        assert_eq!(count_records(&[], 0), 0);
    }

    #[test]
    fn empty_batch_is_refused() {
        assert_eq!(BatchBuilder::new(Compression::None).build(), Err(BatchError::Empty));
    }

    #[test]
    fn records_with_a_valid_crc_but_garbage_inside_are_refused() {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.push(1, Some(b"k"), Some(b"v"), &[]);
        let mut encoded = builder.build().unwrap();
        // Corrupt the record length, then fix up the CRC as a broken writer would.
        encoded[HEADER_LEN] = 0x7f;
        let crc = crc32c::crc32c(&encoded[OFF_ATTRIBUTES..]);
        encoded[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(check(&encoded), Err(BatchError::MalformedRecord { .. })));
        let batch = Batch::parse(Bytes::from(encoded)).unwrap();
        assert!(matches!(batch.records(), Err(BatchError::MalformedRecord { .. })));
    }
}
