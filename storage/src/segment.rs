//! Segment files: `<base offset, 20 digits>.log` holding a 32-byte header and then whole batches.
//!
//! A segment may end in zeros (a crash can leave a file extended but its last blocks unwritten):
//! the scan treats an all-zero header as the end of data, and sealing trims such a tail.
//!
//! Segments are not preallocated. Measured on this project's disk: an fdatasync after a 64 KiB
//! write into pre-zeroed blocks took 0.12 ms at the median against 0.18 ms for a growing file,
//! but writing the zeros through the page cache makes the next data fdatasyncs wait for them:
//! with it, append p99 at half the peak rate was 4 ms, without it 0.8 ms. A future attempt should
//! zero with O_DIRECT on its own thread, or keep a pre-zeroed spare segment per disk.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::{BatchError, BatchHeader, HEADER_LEN};
use crate::index::{IndexedBatch, SegmentIndex};
pub use crate::recent::RecentView;

pub const SEGMENT_MAGIC: &[u8; 8] = b"STRATSEG";
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes before the first batch of a segment.
pub const SEGMENT_HEADER_LEN: u64 = 32;
/// How much a scan reads at once.
const SCAN_WINDOW: usize = 1 << 20;
/// Bytes read at a time while looking for the batch a read starts with.
const HEADER_WINDOW: usize = 8 << 10;

pub fn log_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}

/// Parses `<20 digits>.<ext>` into the base offset.
pub fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

/// The segment file header for `base_offset`.
pub fn encode_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header. `Ok(false)` when it is all zeros (never written).
pub fn check_header(buf: &[u8], base_offset: u64) -> Result<bool, &'static str> {
    if buf.len() < SEGMENT_HEADER_LEN as usize {
        return if buf.iter().all(|&b| b == 0) { Ok(false) } else { Err("truncated segment header") };
    }
    if buf[..SEGMENT_HEADER_LEN as usize].iter().all(|&b| b == 0) {
        return Ok(false);
    }
    if buf[..SEGMENT_HEADER_LEN as usize] != encode_header(base_offset) {
        return Err("segment header does not match its file name or is damaged");
    }
    Ok(true)
}

/// Where and why a scan stopped.
#[derive(Debug)]
pub enum ScanEnd {
    /// End of file or preallocated zeros.
    Clean,
    /// A batch that is torn, damaged or out of sequence starts here.
    Invalid { position: u64, error: BatchError },
}

/// Result of reading a segment batch by batch.
#[derive(Debug)]
pub struct Scan {
    pub index: SegmentIndex,
    /// Position after the last valid batch.
    pub valid_end: u64,
    pub end: ScanEnd,
    /// Headers of the valid batches written by idempotent producers (producer id ≥ 0), in order.
    pub idempotent: Vec<BatchHeader>,
}

/// Where a read of a segment takes its bytes: the file, except for a span of it the log holds in
/// memory (the newest bytes of an `always` log, see `crate::recent`), and only below `file_end`,
/// past which a flush may still be writing it. A read that needs bytes from the file past
/// `file_end` fails with an error [`is_unsettled`] recognises.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub file: &'a File,
    pub memory: Option<&'a RecentView>,
    pub file_end: u64,
}

impl<'a> From<&'a File> for Source<'a> {
    fn from(file: &'a File) -> Self {
        Self { file, memory: None, file_end: u64::MAX }
    }
}

impl<'a> From<&'a std::sync::Arc<File>> for Source<'a> {
    fn from(file: &'a std::sync::Arc<File>) -> Self {
        Self { file, memory: None, file_end: u64::MAX }
    }
}

/// The error of a read that needs bytes of the file a flush may still be writing.
fn unsettled() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "bytes a flush is still writing")
}

/// Whether `e` is a read's that needs bytes a flush may still be writing ([`Source`]); a read of
/// a regular file never fails so otherwise.
pub fn is_unsettled(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Reads a file through a window so scanning small batches is not one syscall each.
struct Window<'a> {
    file: Source<'a>,
    bound: u64,
    start: u64,
    buf: Vec<u8>,
    /// Bytes read at a time (at least).
    size: usize,
}

impl<'a> Window<'a> {
    /// A window for scanning a whole range: reads of [`SCAN_WINDOW`].
    fn new(file: impl Into<Source<'a>>, bound: u64) -> Self {
        Self::with_size(file, bound, SCAN_WINDOW)
    }

    fn with_size(file: impl Into<Source<'a>>, bound: u64, size: usize) -> Self {
        let file = file.into();
        Self { file, bound, start: 0, buf: Vec::new(), size }
    }

    /// The bytes `[pos, pos + len)`, or fewer if the bound comes first.
    fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let end = (pos + len as u64).min(self.bound);
        if pos >= end {
            return Ok(&[]);
        }
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let want = (len.max(self.size) as u64).min(self.bound - pos) as usize;
            self.buf.clear();
            fill(self.file, &mut self.buf, want, pos)?;
            // A reused buffer's spare capacity may have taken in more than was asked for.
            self.buf.truncate(want);
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        Ok(&self.buf[from..from + (end - pos) as usize])
    }
}

/// Validates the batches of a segment from `from` up to `bound`, building its index.
///
/// `strict` requires dense offsets starting at `index.next_offset` (the active segment is never
/// compacted); otherwise batches need only increase (compaction leaves gaps).
pub fn scan(file: &File, base_offset: u64, from: u64, bound: u64, interval: u32, strict: bool) -> io::Result<Scan> {
    let mut index = SegmentIndex::empty(base_offset, from);
    let mut window = Window::new(file, bound);
    let mut idempotent = Vec::new();
    let mut pos = from;
    let end = loop {
        let head = window.get(pos, HEADER_LEN)?;
        if head.is_empty() || head.iter().all(|&b| b == 0) {
            break ScanEnd::Clean;
        }
        let header = match BatchHeader::decode(head) {
            Ok(h) => h,
            Err(error) => {
                break ScanEnd::Invalid { position: pos, error };
            }
        };
        let len = header.total_len();
        let bytes = window.get(pos, len)?;
        if bytes.len() < len {
            break ScanEnd::Invalid {
                position: pos,
                error: BatchError::Truncated { needed: len, available: bytes.len() },
            };
        }
        let computed = crc32c::crc32c(&bytes[17..]);
        if computed != header.crc {
            break ScanEnd::Invalid { position: pos, error: BatchError::BadCrc { stored: header.crc, computed } };
        }
        let in_sequence =
            if strict { header.base_offset == index.next_offset } else { header.base_offset >= index.next_offset };
        if !in_sequence {
            break ScanEnd::Invalid { position: pos, error: out_of_sequence() };
        }
        let indexed = IndexedBatch {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            max_timestamp: header.max_timestamp,
            // Not decoded here (the recovery scan checks CRCs only): unknown.
            min_timestamp: i64::MIN,
            position: pos,
            len: len as u64,
            crc: header.crc,
        };
        index.on_append(base_offset, &indexed, interval);
        if header.producer.id >= 0 {
            idempotent.push(header);
        }
        pos += len as u64;
    };
    index.log_len = pos;
    Ok(Scan { index, valid_end: pos, end, idempotent })
}

/// Batches read from one segment.
#[derive(Debug)]
pub struct SegmentRead {
    /// Whole batches, exactly as stored.
    pub bytes: Bytes,
    pub first_offset: u64,
    /// One past the last offset of the last batch returned.
    pub next_offset: u64,
}

/// Why a segment read failed.
#[derive(Debug)]
pub enum ReadFailure {
    Io(io::Error),
    Corrupt { position: u64, error: BatchError },
}

impl From<io::Error> for ReadFailure {
    fn from(e: io::Error) -> Self {
        ReadFailure::Io(e)
    }
}

/// Finds the batch holding `offset` (or the first after it) by walking headers from `start`: its
/// position and header. `Ok(None)`: no such batch before `bound`.
fn find_first(
    window: &mut Window<'_>,
    start: u64,
    bound: u64,
    offset: u64,
) -> Result<Option<(u64, BatchHeader)>, ReadFailure> {
    let mut pos = start;
    loop {
        let head = window.get(pos, HEADER_LEN)?;
        if head.is_empty() || head.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let header = BatchHeader::decode(head).map_err(|error| ReadFailure::Corrupt { position: pos, error })?;
        if pos + header.total_len() as u64 > bound {
            let error = BatchError::Truncated { needed: header.total_len(), available: (bound - pos) as usize };
            return Err(ReadFailure::Corrupt { position: pos, error });
        }
        if header.last_offset() >= offset {
            return Ok(Some((pos, header)));
        }
        pos += header.total_len() as u64;
    }
}

/// Reads whole batches, starting with the one holding `offset` (or the first after it), up to
/// `max_bytes` (at least one batch) and never past `bound`. `Ok(None)`: no such batch here.
///
/// `overshoot` lets the batch that crosses `max_bytes` come too when it ends within `max_bytes +
/// overshoot` and batches are large next to `max_bytes` (the first is over a quarter of it). A
/// reader going through a log in consecutive reads passes some: without it, a read of 2 MiB over
/// 1 MiB batches keeps one and reads the second again next time, so the disk and the page cache
/// copy every byte twice. 0 stops before the crossing batch, as Kafka's fetch does.
///
/// `verify`: check every batch's checksum. A sender whose receiver checks them anyway passes
/// `false` (headers are still checked, so the batches are cut right).
pub fn read_batches<'a>(
    file: impl Into<Source<'a>>,
    start: u64,
    bound: u64,
    offset: u64,
    max_bytes: usize,
    overshoot: usize,
    verify: bool,
) -> Result<Option<SegmentRead>, ReadFailure> {
    let file = file.into();
    let mut window = Window::with_size(file, bound, HEADER_WINDOW);
    let Some(extent) = extent(&mut window, start, bound, offset, max_bytes, overshoot)? else { return Ok(None) };
    let (pos, len, room) = (extent.position, extent.len as usize, extent.room as usize);
    // Batches start before `len` and end by `room`. The buffer holds `room` from the start and
    // the read fills it (a read fills the whole capacity), so finishing the crossing batch never
    // grows the buffer: growing copied it (a 2 MiB `memmove` per read of the batch door).
    let mut buf = Vec::with_capacity(room);
    fill(file, &mut buf, len, pos)?;
    // Keep whole (and, with `verify`, verified) batches only.
    let mut at = 0usize;
    let mut first_offset = None;
    let mut next_offset = 0;
    while at < len {
        let position = pos + at as u64;
        if at + HEADER_LEN > room {
            break;
        }
        if at + HEADER_LEN > buf.len() {
            fill(file, &mut buf, at + HEADER_LEN, pos)?;
        }
        if buf[at..at + HEADER_LEN].iter().all(|&b| b == 0) {
            break;
        }
        let header = BatchHeader::decode(&buf[at..]).map_err(|error| ReadFailure::Corrupt { position, error })?;
        let end = at + header.total_len();
        if end > room {
            break;
        }
        if end > buf.len() {
            fill(file, &mut buf, end, pos)?;
        }
        if verify {
            let computed = crc32c::crc32c(&buf[at + 17..end]);
            if computed != header.crc {
                let error = BatchError::BadCrc { stored: header.crc, computed };
                return Err(ReadFailure::Corrupt { position, error });
            }
        }
        if header.base_offset < next_offset {
            return Err(ReadFailure::Corrupt { position, error: out_of_sequence() });
        }
        first_offset.get_or_insert(header.base_offset);
        next_offset = header.next_offset();
        at = end;
    }
    buf.truncate(at);
    Ok(first_offset.map(|first_offset| SegmentRead { bytes: Bytes::from(buf), first_offset, next_offset }))
}

/// Where in a segment file a run of whole batches lies ([`locate_batches`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    /// Byte position of the first batch in the file.
    pub position: u64,
    /// Bytes of the batches, back to back.
    pub len: u64,
    pub first_offset: u64,
    /// One past the last offset of the last batch.
    pub next_offset: u64,
    /// Records at or after the requested offset, as the batch headers count them.
    pub records: u64,
}

/// The batches [`read_batches`] would return, located instead of read: only their headers are
/// read, so the bytes can go from the page cache to a socket without passing through this
/// process (`sendfile`). Headers are checked (framing, offsets in sequence); checksums are not,
/// since the bytes are not read — the receiver checks them.
pub fn locate_batches<'a>(
    file: impl Into<Source<'a>>,
    start: u64,
    bound: u64,
    offset: u64,
    max_bytes: usize,
    overshoot: usize,
) -> Result<Option<BatchSpan>, ReadFailure> {
    let mut window = Window::with_size(file, bound, HEADER_WINDOW);
    let Some(extent) = extent(&mut window, start, bound, offset, max_bytes, overshoot)? else { return Ok(None) };
    let (pos, first, len, room) = (extent.position, extent.first, extent.len, extent.room);
    let (mut at, mut header) = (pos, first);
    let (mut next_offset, mut records) = (0, 0);
    loop {
        if header.base_offset < next_offset {
            return Err(ReadFailure::Corrupt { position: at, error: out_of_sequence() });
        }
        records += header.records_from(offset);
        next_offset = header.next_offset();
        at += header.total_len() as u64;
        if at - pos >= len || at + HEADER_LEN as u64 > pos + room {
            break;
        }
        // Past a batch larger than the window, the window would hold little but this header.
        window.size = if header.total_len() > HEADER_WINDOW { HEADER_LEN } else { HEADER_WINDOW };
        let head = window.get(at, HEADER_LEN)?;
        if head.len() < HEADER_LEN || head.iter().all(|&b| b == 0) {
            break;
        }
        header = BatchHeader::decode(head).map_err(|error| ReadFailure::Corrupt { position: at, error })?;
        if at + header.total_len() as u64 > pos + room {
            break;
        }
    }
    Ok(Some(BatchSpan { position: pos, len: at - pos, first_offset: first.base_offset, next_offset, records }))
}

/// The `len` bytes at `position` of `source`, as located by [`locate_batches`].
pub fn read_span(source: Source<'_>, position: u64, len: usize) -> Result<Bytes, ReadFailure> {
    let mut buf = Vec::with_capacity(len);
    fill(source, &mut buf, len, position)?;
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

/// Where a read from `offset` starts and how far it goes ([`read_batches`]).
struct Extent {
    /// The batch holding `offset` (or the first after it), and its position.
    first: BatchHeader,
    position: u64,
    /// Batches that start within `len` bytes of `position` are read,
    len: u64,
    /// when they end within `room`.
    room: u64,
}

fn extent(
    window: &mut Window<'_>,
    start: u64,
    bound: u64,
    offset: u64,
    max_bytes: usize,
    overshoot: usize,
) -> Result<Option<Extent>, ReadFailure> {
    // The index is sparse (a few KiB between entries): a small window finds the first batch. A
    // whole scan window here would read 1 MiB per read only to look at the header it starts with.
    let Some((position, first)) = find_first(window, start, bound, offset)? else { return Ok(None) };
    let available = bound - position;
    let len = (max_bytes.max(first.total_len()) as u64).min(available);
    // What lies past the last whole batch is read again next time, so `overshoot` counts only
    // for batches large next to the read: a small batch crossing `len` is cheaper to leave for
    // the next read than reading `overshoot` more every time.
    let large = first.total_len() as u64 * 4 > len;
    let room = if large { len.saturating_add(overshoot as u64).min(available) } else { len };
    Ok(Some(Extent { first, position, len, room }))
}

fn out_of_sequence() -> BatchError {
    BatchError::MalformedRecord { index: 0, reason: "batch base offset out of sequence" }
}

/// Reads `source` from `pos + buf.len()` on until `buf` holds `to` bytes (it may take in more:
/// a read from the file fills the buffer's spare capacity, and a fresh buffer is not zeroed
/// first: the `memset` of a 2 MiB read buffer cost about a tenth of a catch-up read's CPU). What
/// the source holds in memory is copied from there; what the file holds past where that begins,
/// or past `file_end`, is dropped again (a flush may still be writing it).
fn fill(source: Source<'_>, buf: &mut Vec<u8>, to: usize, pos: u64) -> io::Result<()> {
    buf.reserve_exact(to.saturating_sub(buf.len()));
    while buf.len() < to {
        let at = pos + buf.len() as u64;
        let mut limit = source.file_end;
        if let Some(memory) = source.memory {
            if (memory.start()..memory.end()).contains(&at) {
                memory.copy_into(buf, at, to - buf.len());
                continue;
            }
            if memory.start() > at {
                limit = limit.min(memory.start());
            }
        }
        if at >= limit {
            return Err(unsettled());
        }
        match rustix::io::pread(source.file, rustix::buffer::spare_capacity(buf), at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        buf.truncate(buf.len().min((limit - pos).try_into().unwrap_or(usize::MAX)));
    }
    Ok(())
}

/// Whether `[from, to)` of the file holds only zeros.
pub fn is_zero(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut window = Window::new(file, to);
    let mut pos = from;
    while pos < to {
        let chunk = window.get(pos, SCAN_WINDOW)?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += chunk.len() as u64;
    }
    Ok(true)
}

/// fsyncs a directory, so that creating, renaming or deleting a file in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_strictly() {
        assert_eq!(parse_file_name("00000000000000000042.log", "log"), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.index", "log"), None);
        assert_eq!(parse_file_name("42.log", "log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log", "log"), None);
        let p = log_path(Path::new("/d"), 7);
        assert_eq!(p, Path::new("/d/00000000000000000007.log"));
    }

    #[test]
    fn headers_check_their_base_offset() {
        let h = encode_header(9);
        assert_eq!(check_header(&h, 9), Ok(true));
        assert!(check_header(&h, 10).is_err());
        assert_eq!(check_header(&[0u8; 32], 9), Ok(false));
        assert_eq!(check_header(&[0u8; 5], 9), Ok(false));
        assert!(check_header(&h[..10], 9).is_err());
    }
}
