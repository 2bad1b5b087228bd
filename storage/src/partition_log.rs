//! The partition log: appends assign dense offsets, reads return whole stored batches.
//!
//! State lives behind one `std::sync::Mutex` per log. It is held for the in-memory bookkeeping
//! and the `pwrite` of a batch into the page cache (tens of microseconds), never for an
//! `fdatasync` on the append path (the flusher runs those without the lock) and never across an
//! `.await`. Reads take the lock only to pick a segment and its bounds, then do their I/O unlocked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::append_group::{AppendGroup, Notifier};
use crate::batch::{self, Batch, BatchHeader, ValidBatch};
use crate::clock::Clock;
use crate::config::{Durability, LogConfig};
use crate::direct::{self, SegmentWriter};
use crate::error::{Error, IoContext, Result};
use crate::file_cache::{FileCache, FileId};
use crate::flusher::{FlushTicket, Flushable, Flusher, Fsync};
use crate::index::{IndexedBatch, SegmentIndex};
use crate::journal::{Completion, Journal};
use crate::producer_state::{self, ProducerTable, SequenceCheck, SequencedBatch};
use crate::recent::{Recent, RecentPool};
use crate::segment::{self, ReadFailure, SEGMENT_HEADER_LEN, Source};

/// What the logs of one [`crate::LogManager`] share: the descriptor cache, the flusher, time.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) files: FileCache,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) fsync: Arc<dyn Fsync>,
    pub(crate) flusher: Flusher,
    pub(crate) producer_expiry_ms: i64,
    /// The manager's write-ahead journal for small durable appends (none for a standalone log).
    pub(crate) journal: Option<Journal>,
    /// `always` batches the journal does not take are written by their flush, past the page
    /// cache (`StorageOptions::direct_writes`).
    pub(crate) direct_writes: bool,
    /// Segment writes may go past the page cache (`StorageOptions::direct_io`).
    pub(crate) direct_io: bool,
    /// The budget of the logs' in-memory spans of newest bytes.
    pub(crate) recent: Arc<RecentPool>,
}

/// Journaled appends (their durability is the journal's) are gathered in memory and written to
/// the segment file once this many bytes wait, or sooner when something needs the file to hold
/// them: a read of that range, a sync of the segment, a roll, a journal checkpoint. A keyed
/// request over a wide topic appends a record or two per partition: written one by one, those
/// small `pwrite`s into hundreds of files were a third of the server's CPU time (ext4 work per
/// call: block reservation, inode and mtime updates), more than all the rest of the append.
/// 64 KiB rather than 32: each write's share of those costs halves (W6 alternated against
/// 32 KiB: 3–8 % more at 128 KiB), while a thousand partitions' waiting batches stay within
/// ~64 MiB (128 KiB took W6's peak RSS from 236 to 362 MiB).
pub(crate) const WRITE_BEHIND_BYTES: usize = 64 << 10;

/// Batches waiting to be written to their segment: journaled ones (see [`WRITE_BEHIND_BYTES`])
/// and, with `direct_writes`, the other batches of `always` logs (written by their flush, see
/// [`crate::direct`]). Kept
/// as they were built and written with vectored `pwrite`s: gathering them into one buffer first
/// was a copy of every byte W6 produces, ~4 % of the server's CPU.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    batches: Vec<Vec<u8>>,
    bytes: usize,
}

/// Unwritten bytes of an `always` log after which an append writes them itself rather than
/// leaving them to its flush: the memory a log's producers may run ahead of its disk.
const DEFER_MAX_BYTES: usize = 8 << 20;

impl Pending {
    /// More batches than this are handed to a span of newest bytes ([`Recent`]) as one chunk
    /// (a copy), so that a read's view of the span stays a few chunks.
    const MAX_CHUNKS: usize = 16;

    fn push(&mut self, batch: Vec<u8>) {
        self.bytes += batch.len();
        self.batches.push(batch);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Bytes waiting.
    fn len(&self) -> usize {
        self.bytes
    }

    /// Writes every batch, in order, at `offset` of `file`.
    fn write_at(&self, file: &File, offset: u64) -> io::Result<()> {
        direct::write_all_vectored_at(file, &self.batches, offset)
    }

    /// The batches as chunks of shared bytes, without copying them unless there are many, or
    /// one holds much more memory than bytes (a request's buffer a batch was cut from): kept in
    /// a span, the memory would stay taken while only the bytes count against its budget.
    fn into_chunks(self) -> Vec<Bytes> {
        if self.batches.len() <= Self::MAX_CHUNKS {
            let fit = |mut b: Vec<u8>| {
                if b.capacity() > b.len() + b.len() / 4 {
                    b.shrink_to_fit();
                }
                Bytes::from(b)
            };
            return self.batches.into_iter().map(fit).collect();
        }
        let mut all = Vec::with_capacity(self.bytes);
        for b in &self.batches {
            all.extend_from_slice(b);
        }
        vec![Bytes::from(all)]
    }
}

/// Unsynced bytes after which an `interval` log syncs without waiting for its timer. A second's
/// worth of fast appends synced at once (hundreds of MiB) stalled appends behind the sync's
/// writeback and ext4 journal commit: W2 relaxed (1 KiB records over gRPC, 1 MiB batches, 4
/// partitions) moved 620–870 MB/s with p99 21–95 ms that way, and 950–1010 MB/s with p99
/// 13–20 ms syncing every 4–8 MiB (runs alternated). The interval stays the upper bound.
pub(crate) const INTERVAL_SYNC_BYTES: u64 = 8 << 20;

/// A sealed, immutable segment. Its index is loaded (or rebuilt) on first use.
#[derive(Debug)]
pub(crate) struct SealedSegment {
    pub(crate) base: u64,
    pub(crate) id: FileId,
    pub(crate) ino: u64,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) index: OnceLock<SegmentIndex>,
}

/// The segment appends go to.
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub(crate) base: u64,
    pub(crate) id: FileId,
    pub(crate) ino: u64,
    pub(crate) path: PathBuf,
    /// Write position: end of the last batch.
    pub(crate) size: u64,
    /// End of what is handed to the writer; `pending` holds the rest, up to `size`.
    pub(crate) written: u64,
    /// End of what is in the file for sure: up to `written` a flush may still be writing (outside
    /// the log's lock, see [`crate::direct`]); whoever takes the writer's lock finds it written.
    pub(crate) settled: u64,
    /// Journaled appends not yet written to the file (see [`WRITE_BEHIND_BYTES`]).
    pub(crate) pending: Pending,
    /// File length: beyond `written` only zeros (a tail a crash left extended but unwritten).
    pub(crate) allocated: u64,
    pub(crate) index: SegmentIndex,
    /// Wall-clock time the segment's age is measured from.
    pub(crate) created_ms: i64,
}

/// What [`Log::append_inline`] did.
#[derive(Debug)]
pub enum Attempt {
    Appended(PendingAppend),
    /// The append needs file I/O: the batch, not appended.
    NeedsIo(ValidBatch),
}

/// How much an append may hold its caller up (see [`Log::append_inline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    /// Any file work, waiting for the log's lock.
    Allowed,
    /// At most one write of [`INLINE_WRITE_BYTES`], never a wait for the lock.
    Inline,
}

/// The most an append on an async worker writes to its file ([`Log::append_inline`]).
/// Measured here into the page cache, with an `fdatasync` every 8 writes: 128 KiB took 36 µs at
/// the median (p99 87 µs), 256 KiB 71 µs (p99 160 µs), 1 MiB 296 µs (p99 4.3 ms).
pub(crate) const INLINE_WRITE_BYTES: usize = 256 << 10;

/// Where an append comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Client,
    /// A replay of the journal: appended as first appended, without checks of the producer's
    /// sequence (the first append passed them).
    Journal,
}

pub(crate) struct Waiter {
    next_offset: u64,
    notify: Notifier,
}

pub(crate) struct LogState {
    pub(crate) config: LogConfig,
    pub(crate) sealed: BTreeMap<u64, Arc<SealedSegment>>,
    pub(crate) active: ActiveSegment,
    /// Offset the next appended record gets.
    pub(crate) next_offset: u64,
    pub(crate) log_start: u64,
    /// Everything below this offset is fsynced.
    pub(crate) durable: u64,
    /// Byte position in the active segment that `durable` corresponds to.
    pub(crate) durable_pos: (u64, u64),
    pub(crate) waiters: Vec<Waiter>,
    /// An interval flush is scheduled.
    pub(crate) flush_scheduled: bool,
    pub(crate) poisoned: bool,
    pub(crate) deleted: bool,
    /// Idempotent producers' recent batches, to store a retried batch once.
    pub(crate) producers: ProducerTable,
    /// Offsets readers hold on local disk ([`Log::pin_local`]), with how many hold each: local
    /// retention of a tiered log keeps every segment that ends above the lowest.
    pub(crate) pins: BTreeMap<u64, usize>,
}

impl LogState {
    /// First offset not readable: under `always`, only fsynced records are visible.
    pub(crate) fn high_watermark(&self) -> u64 {
        match self.config.durability {
            Durability::Always => self.durable,
            _ => self.next_offset,
        }
    }

    /// Readable end of the active segment.
    fn active_bound(&self) -> u64 {
        match self.config.durability {
            Durability::Always if self.durable_pos.0 == self.active.base => self.durable_pos.1,
            Durability::Always => SEGMENT_HEADER_LEN,
            _ => self.active.size,
        }
    }

    /// Records that everything below `offset` is durable and wakes the appends it covers.
    pub(crate) fn mark_durable(&mut self, offset: u64, pos: (u64, u64)) {
        if offset > self.durable || (offset == self.durable && pos > self.durable_pos) {
            self.durable = offset;
            self.durable_pos = pos;
        }
        let durable = self.durable;
        // In place: the journal's writer calls this for every entry of a group (hundreds per
        // sync in a keyed request over a wide topic), so it allocates nothing.
        for w in self.waiters.extract_if(.., |w| w.next_offset <= durable) {
            w.notify.send(Ok(()));
        }
    }

    /// Removes every waiting append's notifier (to fail them).
    pub(crate) fn take_waiters(&mut self) -> Vec<Notifier> {
        self.waiters.drain(..).map(|w| w.notify).collect()
    }

    fn size_bytes(&self) -> u64 {
        self.sealed.values().map(|s| s.size).sum::<u64>() + self.active.size
    }
}

/// State of the maintenance work, guarded by its own lock.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    /// `(base, size)` of the sealed segments as the last compaction left them: while they are
    /// unchanged, compacting again would find nothing new.
    pub(crate) compacted: Option<Vec<(u64, u64)>>,
}

pub(crate) struct LogInner {
    pub(crate) dir: PathBuf,
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: Mutex<LogState>,
    /// Serialises retention, compaction and deletion (the slow maintenance work).
    pub(crate) maintenance: Mutex<Maintenance>,
    flush_queued: AtomicBool,
    /// A flusher thread is syncing the log (see [`LogInner::flush_from_queue`]).
    flushing: AtomicBool,
    /// Popped from the queue while `flushing`: the thread syncing flushes once more.
    flush_again: AtomicBool,
    /// The filesystem the log's files live on (flushes of one filesystem can be grouped).
    device: u64,
    /// The log's directory name: what its journal entries are filed under.
    name: String,
    /// Sequence number of the log's last journal entry (0: none).
    journaled: AtomicU64,
    /// Rolls whose index and producer snapshot ([`LogInner::write_seal_files`]) are queued on
    /// the flusher and not yet written.
    seal_jobs: Mutex<usize>,
    seal_jobs_done: Condvar,
    /// Every write into the active segment holds this, taken under `state` (see [`crate::direct`]).
    writer: Mutex<SegmentWriter>,
    /// The newest bytes of an `always` log written past the page cache, for its readers (see
    /// [`crate::recent`]); taken under `writer`, or alone.
    pub(crate) recent: Mutex<Recent>,
    /// Listed among the holders of a span in the pool (`recent`).
    pub(crate) listed: AtomicBool,
    /// This log, for the pool's list.
    me: Weak<LogInner>,
}

/// One partition's log. Cheap to clone; all clones are the same log.
#[derive(Clone)]
pub struct Log {
    pub(crate) inner: Arc<LogInner>,
    _closer: Arc<Closer>,
}

/// Shared by every clone of a [`Log`]. When the last clone goes, it waits for the roll work the
/// log queued on the flusher, so a log's files are complete once it is closed. (The queued work
/// holds the log's inner state itself, not a `Log`, so this never waits on a flusher thread.)
struct Closer(Arc<LogInner>);

/// One roll's queued [`LogInner::write_seal_files`], counted in `seal_jobs` until dropped
/// (run or not).
struct SealJob(Arc<LogInner>);

impl SealJob {
    fn queue(inner: &Arc<LogInner>) -> Self {
        *inner.seal_jobs.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Self(Arc::clone(inner))
    }
}

impl Drop for SealJob {
    fn drop(&mut self) {
        *self.0.seal_jobs.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        self.0.seal_jobs_done.notify_all();
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        let mut queued = self.0.seal_jobs.lock().unwrap_or_else(PoisonError::into_inner);
        while *queued > 0 {
            queued = self.0.seal_jobs_done.wait(queued).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    pub max_timestamp: i64,
}

/// An append whose bytes are written; [`PendingAppend::wait`] or [`PendingAppend::durable`]
/// returns once they are as durable as the log's policy promises.
#[derive(Debug)]
#[must_use = "under `always` durability the append is acknowledged only by waiting"]
pub struct PendingAppend {
    info: AppendInfo,
    rx: Option<oneshot::Receiver<Result<()>>>,
    /// Its durability is its [`AppendGroup`]'s to await, not its own.
    grouped: bool,
    /// The log, for the error should its sync fail. Kept rather than a copy of its directory's
    /// path, which cost an allocation per partition of a wide request (1.6 % of W6's server).
    log: Log,
    duplicate: bool,
}

impl PendingAppend {
    pub fn info(&self) -> AppendInfo {
        self.info
    }

    /// The batch repeated one an idempotent producer had already written: nothing was appended,
    /// and [`PendingAppend::info`] names the first append's offsets.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// Blocks until durable.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the fsync covering this append failed; [`Error::Internal`] for an
    /// append made with an [`AppendGroup`] (await the group instead).
    ///
    /// # Panics
    /// If called from inside an async runtime's worker thread; use [`PendingAppend::durable`].
    pub fn wait(self) -> Result<AppendInfo> {
        self.check_not_grouped()?;
        match self.rx {
            None => Ok(self.info),
            Some(rx) => rx
                .blocking_recv()
                .unwrap_or(Err(Error::Poisoned { dir: self.log.inner.dir.clone() }))
                .map(|()| self.info),
        }
    }

    /// Resolves once durable.
    ///
    /// # Errors
    /// As [`PendingAppend::wait`].
    ///
    /// # Cancel safety
    /// Dropping the future does not undo the append; it only stops waiting.
    pub async fn durable(self) -> Result<AppendInfo> {
        self.check_not_grouped()?;
        match self.rx {
            None => Ok(self.info),
            Some(rx) => {
                // `unwrap_or_else`: the error (a copy of the log's path) is built only when the sender
                // was dropped, not on every acknowledgement.
                rx.await
                    .unwrap_or_else(|_| Err(Error::Poisoned { dir: self.log.inner.dir.clone() }))
                    .map(|()| self.info)
            }
        }
    }

    /// An append made with an [`AppendGroup`] is awaited through the group: waiting on it alone
    /// would be a bug (its own channel does not exist).
    fn check_not_grouped(&self) -> Result<()> {
        debug_assert!(!self.grouped, "a grouped append was awaited on its own");
        if self.grouped {
            return Err(Error::Internal("an append made with an AppendGroup is awaited through the group"));
        }
        Ok(())
    }
}

/// Whole batches located in a segment file rather than read ([`Log::locate`]).
#[derive(Debug, Clone)]
pub struct Located {
    /// The segment file and where in it the batches lie; `None` when nothing is readable at or
    /// after the offset (it is the high watermark, or a compaction gap runs to it).
    pub span: Option<(Arc<File>, segment::BatchSpan)>,
    /// The span's bytes, when the log holds some of them in memory: send these, not the file's
    /// range, which may not be written yet.
    pub bytes: Option<Bytes>,
    /// Offset to read next.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// How far past the index position it starts from a read of `max_bytes` (and `overshoot`) is
/// likely to go: the index's gap to the first batch and the header windows besides.
fn reach(max_bytes: usize, overshoot: usize) -> u64 {
    const SLACK: u64 = 64 << 10;
    (max_bytes as u64).saturating_add(overshoot as u64).saturating_add(SLACK)
}

/// What [`Log::in_segment`] found, and the bounds it saw.
struct InSegment<T> {
    found: Option<(Arc<File>, T)>,
    high_watermark: u64,
    log_start_offset: u64,
}

/// Whole batches read from the log.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// Stored batches, concatenated; the first may start before the requested offset.
    pub batches: Bytes,
    /// Offset to read next.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl ReadResult {
    /// Decodes the records at or after `from` (convenience for callers that want records). The
    /// checksums are not checked again: `batches` are assumed to come from [`Log::read`], which
    /// checked them (records are still decoded defensively).
    ///
    /// # Errors
    /// A batch that does not decode (damage found after the checksum passed).
    pub fn records_from(&self, from: u64) -> Result<Vec<batch::Record>> {
        let mut out = Vec::new();
        // `read` checked every batch's CRC already: do not pay for it twice.
        for b in batch::split_verified(&self.batches) {
            let b = b.map_err(|source| Error::InvalidBatch { source })?;
            let records = b.records().map_err(|source| Error::InvalidBatch { source })?;
            out.extend(records.into_iter().filter(|r| r.offset >= from && r.offset < self.high_watermark));
        }
        Ok(out)
    }
}

/// Segment facts for introspection and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    pub size_bytes: u64,
    pub sealed: bool,
}

/// A sealed segment, as tiering and local retention see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSegmentInfo {
    pub base_offset: u64,
    /// Exclusive: the next segment's base offset.
    pub end_offset: u64,
    pub size_bytes: u64,
    /// Largest record timestamp (from the segment's index), `i64::MIN` if it holds no record.
    pub max_timestamp: i64,
}

/// The offsets and timestamps one segment covers, as a scan prunes by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpan {
    pub base_offset: u64,
    /// Exclusive.
    pub end_offset: u64,
    /// A lower bound of the segment's record timestamps (`i64::MIN` when unknown, see
    /// [`crate::index::SegmentIndex::min_timestamp`]).
    pub min_timestamp: i64,
    /// Its largest record timestamp, `i64::MIN` if it holds no record.
    pub max_timestamp: i64,
}

/// Damage found by [`Log::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentDamage {
    /// Base offset of the damaged segment (its file name).
    pub segment_base_offset: u64,
    /// Byte position in the segment file where the damaged header or batch starts.
    pub position: u64,
    /// `[first, last]` offsets the damaged batch claims, when its header is readable.
    pub offsets: Option<(u64, u64)>,
    pub description: String,
}

/// Which segment a read goes to, captured under the lock.
struct ReadTarget {
    base: u64,
    path: PathBuf,
    id: FileId,
    ino: u64,
    writable: bool,
    bound: u64,
    /// Scan start for the active segment (its index is in memory, read under the lock).
    start: u64,
    /// A sealed segment's index may need I/O to load: looked up after the lock is released.
    sealed: Option<Arc<SealedSegment>>,
    next_base: Option<u64>,
    /// The log may hold some of the segment's bytes in memory, to be read from there rather than
    /// the file (see `storage/src/recent.rs`).
    cached: bool,
    /// The file holds every byte below this (past it, a flush may still be writing).
    file_end: u64,
}

impl ReadTarget {
    fn start_for_offset(&self, log: &Log, offset: u64) -> u64 {
        match &self.sealed {
            Some(seg) => log.sealed_index(seg).position_for_offset(seg.base, offset).unwrap_or(SEGMENT_HEADER_LEN),
            None => self.start,
        }
    }
}

impl Log {
    pub(crate) fn from_parts(dir: PathBuf, shared: Arc<Shared>, state: LogState) -> Self {
        use std::os::unix::fs::MetadataExt;
        // Unknown (the directory cannot be examined): a device of its own, never grouped.
        let device = std::fs::metadata(&dir).map_or(u64::MAX, |m| m.dev());
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let writer = SegmentWriter::new(shared.direct_io);
        let inner = Arc::new_cyclic(|me| LogInner {
            name,
            journaled: AtomicU64::new(0),
            dir,
            shared,
            state: Mutex::new(state),
            maintenance: Mutex::new(Maintenance::default()),
            flush_queued: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
            flush_again: AtomicBool::new(false),
            device,
            seal_jobs: Mutex::new(0),
            seal_jobs_done: Condvar::new(),
            writer: Mutex::new(writer),
            recent: Mutex::new(Recent::default()),
            listed: AtomicBool::new(false),
            me: me.clone(),
        });
        Self { _closer: Arc::new(Closer(Arc::clone(&inner))), inner }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn config(&self) -> LogConfig {
        self.lock().config.clone()
    }

    /// Changes the config; size and age limits apply from the next append or maintenance run.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`].
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate()?;
        self.lock().config = config;
        Ok(())
    }

    pub fn log_start_offset(&self) -> u64 {
        self.lock().log_start
    }

    /// First offset not yet readable (under `always`: not yet fsynced).
    pub fn high_watermark(&self) -> u64 {
        self.lock().high_watermark()
    }

    /// Offset the next record will get.
    pub fn log_end_offset(&self) -> u64 {
        self.lock().next_offset
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.lock().size_bytes()
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let st = self.lock();
        let mut out: Vec<_> =
            st.sealed.values().map(|s| SegmentInfo { base_offset: s.base, size_bytes: s.size, sealed: true }).collect();
        out.push(SegmentInfo { base_offset: st.active.base, size_bytes: st.active.size, sealed: false });
        out
    }

    /// The sealed segments, oldest first (loads their indexes if not yet loaded: call it off the
    /// async runtime).
    pub fn sealed_segments(&self) -> Vec<SealedSegmentInfo> {
        let (sealed, active_base) = {
            let st = self.lock();
            (st.sealed.values().cloned().collect::<Vec<_>>(), st.active.base)
        };
        sealed
            .iter()
            .enumerate()
            .map(|(i, seg)| SealedSegmentInfo {
                base_offset: seg.base,
                end_offset: sealed.get(i + 1).map_or(active_base, |next| next.base),
                size_bytes: seg.size,
                max_timestamp: self.sealed_index(seg).max_timestamp,
            })
            .collect()
    }

    /// Every segment's offset and timestamp span, oldest first, the active segment last (loads
    /// sealed segments' indexes if not yet loaded: call it off the async runtime).
    pub fn segment_spans(&self) -> Vec<SegmentSpan> {
        let (sealed, active) = {
            let st = self.lock();
            let active = SegmentSpan {
                base_offset: st.active.base,
                end_offset: st.next_offset,
                min_timestamp: st.active.index.min_timestamp,
                max_timestamp: st.active.index.max_timestamp,
            };
            (st.sealed.values().cloned().collect::<Vec<_>>(), active)
        };
        let mut spans: Vec<SegmentSpan> = sealed
            .iter()
            .enumerate()
            .map(|(i, seg)| {
                let index = self.sealed_index(seg);
                SegmentSpan {
                    base_offset: seg.base,
                    end_offset: sealed.get(i + 1).map_or(active.base_offset, |next| next.base),
                    min_timestamp: index.min_timestamp,
                    max_timestamp: index.max_timestamp,
                }
            })
            .collect();
        spans.push(active);
        spans
    }

    /// `(end offset, size)` of the sealed segment starting at `base`, if there is one.
    pub(crate) fn sealed_segment_bounds(&self, base: u64) -> Option<(u64, u64)> {
        let st = self.lock();
        let seg = st.sealed.get(&base)?;
        let end = st.sealed.range(base + 1..).next().map_or(st.active.base, |(b, _)| *b);
        Some((end, seg.size))
    }

    /// Appends one encoded batch (as built by [`crate::BatchBuilder`]), assigning its offsets.
    ///
    /// The batch is validated completely (checksum and every record) before anything is written.
    ///
    /// # Errors
    /// [`Error::BatchTooLarge`], [`Error::InvalidBatch`], [`Error::LogDeleted`],
    /// [`Error::Poisoned`], [`Error::Io`] (which poisons the log).
    pub fn append(&self, batch: Vec<u8>) -> Result<PendingAppend> {
        self.append_expecting(batch, None)
    }

    /// Like [`Log::append`], but only if the log's next offset is `expected_offset` (when given):
    /// optimistic concurrency for a single writer. The check and the append are atomic.
    ///
    /// # Errors
    /// As [`Log::append`], and [`Error::OffsetMismatch`] when another append came first.
    pub fn append_expecting(&self, batch: Vec<u8>, expected_offset: Option<u64>) -> Result<PendingAppend> {
        // Size first: an oversized batch is refused without checking it.
        self.check_size(batch.len())?;
        self.append_queued(validate_batch(batch)?, expected_offset, Origin::Client, None, None)
    }

    fn check_size(&self, size: usize) -> Result<()> {
        let max = self.lock().config.max_batch_bytes as usize;
        if size > max {
            return Err(Error::BatchTooLarge { size, max });
        }
        Ok(())
    }

    /// As [`Log::append`], for a batch already known to be valid (one a [`crate::BatchBuilder`]
    /// just built): not checked again.
    ///
    /// # Errors
    /// As [`Log::append`], but never [`Error::InvalidBatch`].
    pub fn append_valid(&self, batch: ValidBatch) -> Result<PendingAppend> {
        self.append_queued(batch, None, Origin::Client, None, None)
    }

    /// Appends a batch replayed from the journal at the log's end, as it was first appended
    /// (its producer's sequence is recorded, not checked again: the first append checked it).
    pub(crate) fn replay_append(&self, batch: ValidBatch) -> Result<()> {
        let expected = batch.header().base_offset;
        self.append_queued(batch, Some(expected), Origin::Journal, None, None).map(drop)
    }

    /// Appends one batch to each log (every one with `expected_offset`, when given), stopping at
    /// the first failure, and then queues the flushes of all of them at once, so that the flusher
    /// can make them durable with one grouped sync (see [`crate::flusher`]) rather than waking a
    /// thread per log. For a request that touches many partitions: their durability is awaited
    /// through `group` ([`AppendGroup::durable`]), not through the returned appends.
    ///
    /// # Errors
    /// As [`Log::append_expecting`], for the first append that failed (the ones before it stand).
    pub fn append_all(
        appends: impl IntoIterator<Item = (Log, ValidBatch)>,
        expected_offset: Option<u64>,
        group: &AppendGroup,
    ) -> Result<Vec<PendingAppend>> {
        let mut queued = Vec::new();
        let mut done = Vec::new();
        let mut result = Ok(());
        for (log, batch) in appends {
            match log.append_queued(batch, expected_offset, Origin::Client, Some(&mut queued), Some(group)) {
                Ok(pending) => done.push(pending),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        while let Some(first) = queued.first() {
            let shared = Arc::clone(&first.shared);
            let (same, rest): (Vec<_>, Vec<_>) = queued.into_iter().partition(|l| Arc::ptr_eq(&l.shared, &shared));
            shared.flusher.flush_now_many(same.into_iter().map(|l| l as Arc<dyn Flushable>).collect());
            queued = rest;
        }
        result.map(|()| done)
    }

    /// Appends; a flush this needs is queued now, or pushed to `deferred` for the caller to queue.
    fn append_queued(
        &self,
        batch: ValidBatch,
        expected_offset: Option<u64>,
        origin: Origin,
        deferred: Option<&mut Vec<Arc<LogInner>>>,
        group: Option<&AppendGroup>,
    ) -> Result<PendingAppend> {
        match self.attempt(batch, expected_offset, origin, deferred, Io::Allowed, group)? {
            Attempt::Appended(pending) => Ok(pending),
            Attempt::NeedsIo(_) => Err(Error::Internal("an append allowed file I/O was refused it")),
        }
    }

    /// Appends like [`Log::append_valid`] if that holds the caller up no longer than one small
    /// write: the log's lock is free, the segment is not due to roll, and at most
    /// `INLINE_WRITE_BYTES` (256 KiB) go to the file now (none for a small batch under `always`
    /// durability, which goes to the journal and waits in memory for its segment write).
    /// Otherwise the batch comes back unappended, for a caller on an async worker to append from
    /// a thread of its own. For that caller an append here costs the write (tens of
    /// microseconds), while a hop to a thread and back costs two wake-ups, and in W3 at half its
    /// peak on this 2-core machine each woken thread waited 1.4 ms on average for a core.
    /// With a `group`, its durability is awaited through the group, as with [`Log::append_all`].
    ///
    /// # Errors
    /// As [`Log::append_valid`].
    pub fn append_inline(&self, batch: ValidBatch, group: Option<&AppendGroup>) -> Result<Attempt> {
        self.attempt(batch, None, Origin::Client, None, Io::Inline, group)
    }

    fn attempt(
        &self,
        batch: ValidBatch,
        expected_offset: Option<u64>,
        origin: Origin,
        deferred: Option<&mut Vec<Arc<LogInner>>>,
        io: Io,
        group: Option<&AppendGroup>,
    ) -> Result<Attempt> {
        self.check_size(batch.bytes().len())?;
        let mut st = match io {
            Io::Allowed => self.lock(),
            // Held by a write of its own or a roll's `fsync`: not a wait for an async worker.
            Io::Inline => match self.inner.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return Ok(Attempt::NeedsIo(batch)),
            },
        };
        if st.deleted {
            return Err(Error::LogDeleted { dir: self.inner.dir.clone() });
        }
        if st.poisoned {
            return Err(Error::Poisoned { dir: self.inner.dir.clone() });
        }
        let producer = batch.header().producer;
        let sequenced = producer.id >= 0;
        if sequenced
            && origin == Origin::Client
            && let SequenceCheck::Duplicate(first) = st.producers.check(producer, batch.header().record_count)?
        {
            return Ok(Attempt::Appended(self.duplicate_of(st, first, deferred, group)));
        }
        if let Some(expected) = expected_offset
            && expected != st.next_offset
        {
            return Err(Error::OffsetMismatch { expected, actual: st.next_offset });
        }
        let len = batch.bytes().len() as u64;
        let now = self.inner.shared.clock.now_ms();
        let active = &st.active;
        let too_big = active.size + len > st.config.segment_bytes;
        let too_old = st.config.segment_ms.is_some_and(|ms| now.saturating_sub(active.created_ms) >= ms as i64);
        let span_full =
            st.next_offset + u64::from(batch.header().last_offset_delta) - active.base >= u64::from(u32::MAX);
        let roll = active.size > SEGMENT_HEADER_LEN && (too_big || too_old || span_full);
        // A journaled batch waits in memory to be written with the ones after it (see
        // `WRITE_BEHIND_BYTES`), and any other batch of an `always` log for its flush to write
        // (see `direct`); the batches waiting before it are written now if it would take them
        // past their limit.
        let always = st.config.durability == Durability::Always;
        let write_behind = always && self.journal_takes(len as usize);
        let waits = match (always, write_behind) {
            (true, true) => Some(WRITE_BEHIND_BYTES),
            (true, false) if self.inner.shared.direct_writes => Some(DEFER_MAX_BYTES),
            _ => None,
        };
        let pending = st.active.pending.len();
        let written_now = match waits {
            Some(limit) if pending + len as usize > limit => pending,
            Some(_) => 0,
            None => pending + len as usize,
        };
        if io == Io::Inline && (roll || written_now > INLINE_WRITE_BYTES) {
            return Ok(Attempt::NeedsIo(batch));
        }
        if roll {
            self.roll(&mut st, now)?;
        }
        let (mut batch, header, min_timestamp) = batch.into_parts();
        let base_offset = st.next_offset;
        batch::set_base_offset(&mut batch, base_offset);
        let written = match waits {
            None => self.write_batch(&mut st, &batch),
            Some(limit) if st.active.pending.len() + batch.len() > limit => self.inner.write_pending(&mut st),
            Some(_) => Ok(()),
        };
        if let Err(e) = written {
            st.poisoned = true;
            return Err(e);
        }
        let info = AppendInfo {
            base_offset,
            last_offset: base_offset + u64::from(header.last_offset_delta),
            max_timestamp: header.max_timestamp,
        };
        let indexed = IndexedBatch {
            base_offset,
            next_offset: info.last_offset + 1,
            max_timestamp: header.max_timestamp,
            min_timestamp,
            position: st.active.size,
            len,
            crc: header.crc,
        };
        let (base, interval) = (st.active.base, st.config.index_interval_bytes);
        st.active.index.on_append(base, &indexed, interval);
        st.active.size += len;
        st.next_offset = info.last_offset + 1;
        if sequenced {
            let batch = SequencedBatch {
                base_sequence: header.producer.base_sequence,
                records: header.record_count,
                base_offset,
                last_offset: info.last_offset,
                max_timestamp: header.max_timestamp,
            };
            st.producers.record(header.producer, batch, now);
        }
        let rx = match st.config.durability {
            Durability::Always => {
                let (notify, rx) = notifier(group);
                let next_offset = st.next_offset;
                st.waiters.push(Waiter { next_offset, notify });
                let journaled = self.journal(&st, &batch);
                if waits.is_some() {
                    // Written by the next append that fills the pending batches, or by whatever
                    // needs the file to hold them (a read, a sync, a roll, a checkpoint), which
                    // includes the flush queued below when the journal did not take it.
                    st.active.pending.push(batch);
                }
                if !journaled {
                    drop(st);
                    self.queue_flush(deferred);
                }
                rx
            }
            Durability::Interval(every) => {
                let synced_to = if st.durable_pos.0 == st.active.base { st.durable_pos.1 } else { 0 };
                let early = st.active.size.saturating_sub(synced_to) >= INTERVAL_SYNC_BYTES;
                let timer = !std::mem::replace(&mut st.flush_scheduled, true);
                drop(st);
                if early {
                    self.queue_flush(deferred);
                }
                if timer {
                    self.inner.shared.flusher.flush_after(self.inner.clone(), every);
                }
                None
            }
            Durability::Never => None,
        };
        let grouped = group.is_some();
        Ok(Attempt::Appended(PendingAppend { info, rx, grouped, log: self.clone(), duplicate: false }))
    }

    /// Queues the batch just written (small enough) in the journal, which then marks the log
    /// durable past it; `false` when it is left to a sync of the segment. Under the log's lock.
    fn journal(&self, st: &LogState, batch: &[u8]) -> bool {
        let Some(journal) = &self.inner.shared.journal else { return false };
        if !self.journal_takes(batch.len()) {
            return false;
        }
        let done = Completion {
            log: Arc::clone(&self.inner),
            next_offset: st.next_offset,
            position: (st.active.base, st.active.size),
        };
        match journal.push(&self.inner.name, batch, done) {
            Some(seq) => {
                self.inner.journaled.store(seq, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Whether a batch of `len` bytes would go to the journal (if the log's durability is
    /// `always`).
    fn journal_takes(&self, len: usize) -> bool {
        self.inner.shared.journal.as_ref().is_some_and(|j| j.is_open() && len <= j.max_batch())
    }

    /// Makes sure the journal holds no entry of this log (before it is deleted, so that a log
    /// created again under its name is never given them by a replay).
    pub(crate) fn forget_journaled(&self) -> Result<()> {
        if let Some(journal) = &self.inner.shared.journal
            && journal.holds(self.inner.journaled.load(Ordering::Acquire))
        {
            journal.checkpoint().at(&self.inner.dir)?;
        }
        Ok(())
    }

    /// The answer to a retried batch: the first append's offsets, once they are as durable as
    /// the policy promises (the first append may still be waiting for its fsync).
    fn duplicate_of(
        &self,
        mut st: MutexGuard<'_, LogState>,
        first: SequencedBatch,
        deferred: Option<&mut Vec<Arc<LogInner>>>,
        group: Option<&AppendGroup>,
    ) -> PendingAppend {
        let info = AppendInfo {
            base_offset: first.base_offset,
            last_offset: first.last_offset,
            max_timestamp: first.max_timestamp,
        };
        let next_offset = first.last_offset + 1;
        let waits = st.config.durability == Durability::Always && st.durable < next_offset;
        let rx = if waits {
            let (notify, rx) = notifier(group);
            st.waiters.push(Waiter { next_offset, notify });
            rx
        } else {
            None
        };
        drop(st);
        if waits {
            self.queue_flush(deferred);
        }
        PendingAppend { info, rx, grouped: group.is_some(), log: self.clone(), duplicate: true }
    }

    /// Writes a batch at the end of the active segment (the file grows; see the module docs of
    /// `segment` for why segments are not preallocated), after any batches waiting to be written.
    fn write_batch(&self, st: &mut LogState, batch: &[u8]) -> Result<()> {
        let mut writer = self.inner.writer();
        self.inner.write_pending_locked(st, &mut writer)?;
        let file = self.active_file(st)?;
        let end = st.active.written + batch.len() as u64;
        file.write_all_at(batch, st.active.written).at(&st.active.path)?;
        st.active.written = end;
        st.active.settled = end;
        st.active.allocated = st.active.allocated.max(end);
        Ok(())
    }

    fn active_file(&self, st: &LogState) -> Result<Arc<File>> {
        let a = &st.active;
        self.inner.shared.files.get(a.id, &a.path, a.ino, true).at(&a.path)
    }

    /// Seals the active segment and starts a new one at `next_offset`. Called under the lock.
    ///
    /// The sealed segment's index and the producer snapshot are written afterwards by a flusher
    /// thread ([`LogInner::write_seal_files`]): both are rebuilt when missing, and writing them
    /// here held every append to the log for their two `fsync`s, renames and the old snapshot's
    /// `unlink`, which on a filesystem mounted with `discard` waits for the device (seen taking
    /// hundreds of milliseconds while the disk was busy).
    fn roll(&self, st: &mut LogState, now: i64) -> Result<()> {
        let result = self.seal_and_create(st, now);
        if result.is_err() {
            st.poisoned = true;
        }
        result
    }

    fn seal_and_create(&self, st: &mut LogState, now: i64) -> Result<()> {
        let mut writer = self.inner.writer();
        self.inner.write_pending_locked(st, &mut writer)?;
        writer.close();
        let file = self.active_file(st)?;
        let path = st.active.path.clone();
        if st.active.allocated > st.active.size {
            file.set_len(st.active.size).at(&path)?;
        }
        self.inner.shared.fsync.sync_data(&file).at(&path)?;
        let next = st.next_offset;
        st.producers.expire(now.saturating_sub(self.inner.shared.producer_expiry_ms));
        let seal = SealFiles { base: st.active.base, id: st.active.id, next, producers: st.producers.encode() };
        let new_active = create_segment(&self.inner.dir, next, &self.inner.shared, now)?;
        let job = SealJob::queue(&self.inner);
        self.inner.shared.flusher.spawn(Box::new(move || job.0.write_seal_files(seal)));
        let old = std::mem::replace(&mut st.active, new_active);
        let sealed = SealedSegment {
            base: old.base,
            id: old.id,
            ino: old.ino,
            path: old.path,
            size: old.size,
            index: OnceLock::from(old.index),
        };
        st.sealed.insert(sealed.base, Arc::new(sealed));
        let pos = (st.active.base, SEGMENT_HEADER_LEN);
        st.mark_durable(next, pos);
        Ok(())
    }

    /// Writes the producer table as the snapshot for `base`, now. Failure is logged, not fatal:
    /// opening the log then replays from an older snapshot, which is slower but as correct.
    pub(crate) fn write_producer_snapshot(&self, base: u64, table: &ProducerTable) {
        self.inner.write_producer_snapshot(base, &table.encode());
    }

    fn queue_flush(&self, deferred: Option<&mut Vec<Arc<LogInner>>>) {
        if !self.inner.flush_queued.swap(true, Ordering::AcqRel) {
            match deferred {
                Some(queue) => queue.push(self.inner.clone()),
                None => self.inner.shared.flusher.flush_now(self.inner.clone()),
            }
        }
    }

    /// Makes everything appended so far durable, now, on the calling thread.
    ///
    /// # Errors
    /// [`Error::Poisoned`] or the failed fsync's [`Error::Io`].
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Reads whole batches starting with the one that holds `offset` (or, across a compaction
    /// gap, the first after it), up to about `max_bytes` and at least one batch.
    ///
    /// # Errors
    /// [`Error::OffsetOutOfRange`] outside `[log_start_offset, high_watermark]`;
    /// [`Error::Corrupt`] naming the file and byte when stored data fails its checksum.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadResult> {
        self.read_crossing(offset, max_bytes, 0)
    }

    /// As [`Log::read`], but the batch that crosses `max_bytes` comes too when it ends within
    /// `max_bytes + overshoot`: for readers that go through the log in consecutive reads, which
    /// would otherwise read that batch twice (see [`segment::read_batches`]).
    ///
    /// # Errors
    /// As [`Log::read`].
    pub fn read_crossing(&self, offset: u64, max_bytes: usize, overshoot: usize) -> Result<ReadResult> {
        self.read_batches(offset, max_bytes, overshoot, true)
    }

    /// As [`Log::read_crossing`], without checking checksums (headers are checked, so batches
    /// are cut right): for a sender whose receiver checks every batch anyway, as the raw batch
    /// readers of the server do (Kafka's brokers do not check them on fetch either). Decoding
    /// records from what it returns is safe only after checking them.
    ///
    /// # Errors
    /// As [`Log::read`], except for damage only a checksum shows.
    pub fn read_unverified(&self, offset: u64, max_bytes: usize, overshoot: usize) -> Result<ReadResult> {
        self.read_batches(offset, max_bytes, overshoot, false)
    }

    fn read_batches(&self, offset: u64, max_bytes: usize, overshoot: usize, verify: bool) -> Result<ReadResult> {
        let InSegment { found, high_watermark, log_start_offset } =
            self.in_segment(offset, reach(max_bytes, overshoot), |source, start, bound, offset| {
                segment::read_batches(source, start, bound, offset, max_bytes, overshoot, verify)
            })?;
        let (batches, next_offset) = found.map_or((Bytes::new(), high_watermark), |(_, r)| (r.bytes, r.next_offset));
        Ok(ReadResult { batches, next_offset: next_offset.min(high_watermark), high_watermark, log_start_offset })
    }

    /// Where the batches [`Log::read_crossing`] would return lie, without reading them: a segment
    /// file and a span of it, for a sender that hands the bytes from the page cache to a socket
    /// (`sendfile`). The file stays readable while the `Arc` lives, even if retention or
    /// compaction removes it from the log meanwhile. Checksums are not checked (the bytes are not
    /// read here); the receiver must check them. Where the log holds the span's bytes in memory
    /// (the newest of an `always` log, see `storage/src/recent.rs`), they come read, in
    /// [`Located::bytes`].
    ///
    /// # Errors
    /// As [`Log::read`], except that only headers are checked.
    pub fn locate(&self, offset: u64, max_bytes: usize, overshoot: usize) -> Result<Located> {
        let InSegment { found, high_watermark, log_start_offset } =
            self.in_segment(offset, reach(max_bytes, overshoot), |source, start, bound, offset| {
                let Some(span) = segment::locate_batches(source, start, bound, offset, max_bytes, overshoot)? else {
                    return Ok(None);
                };
                let end = span.position + span.len;
                let in_memory = source.memory.is_some_and(|m| m.end() > span.position && m.start() < end);
                let bytes = match in_memory {
                    true => Some(segment::read_span(source, span.position, span.len as usize)?),
                    false => None,
                };
                Ok(Some((span, bytes)))
            })?;
        let next_offset = found.as_ref().map_or(high_watermark, |(_, (span, _))| span.next_offset.min(high_watermark));
        let (span, bytes) = match found {
            Some((file, (span, bytes))) => (Some((file, span)), bytes),
            None => (None, None),
        };
        Ok(Located { span, bytes, next_offset, high_watermark, log_start_offset })
    }

    /// Runs `read(source, start, bound, offset)` on the segment holding `offset`, from the index
    /// position at or before it, up to the segment's readable bound; across a compaction gap, on
    /// the next segment. Finds nothing when nothing is readable at or after `offset`.
    ///
    /// `reach`: how far past the start the read may go (it may go further, reading the file).
    fn in_segment<T>(
        &self,
        offset: u64,
        reach: u64,
        read: impl Fn(Source<'_>, u64, u64, u64) -> std::result::Result<Option<T>, ReadFailure>,
    ) -> Result<InSegment<T>> {
        let mut offset = offset;
        let mut stale_retries = 0;
        let mut reach = Some(reach);
        loop {
            let (target, hw, log_start) = {
                let mut st = self.lock();
                let (hw, log_start) = (st.high_watermark(), st.log_start);
                if offset < log_start || offset > hw {
                    return Err(Error::OffsetOutOfRange { requested: offset, log_start, high_watermark: hw });
                }
                if offset == hw {
                    return Ok(InSegment { found: None, high_watermark: hw, log_start_offset: log_start });
                }
                (self.read_target(&mut st, offset, reach), hw, log_start)
            };
            let target = target?;
            let file = match self.inner.shared.files.get(target.id, &target.path, target.ino, target.writable) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && stale_retries < 3 => {
                    // Retention or compaction replaced the segment after we picked it.
                    stale_retries += 1;
                    continue;
                }
                Err(e) => return Err(Error::io(&target.path, e)),
            };
            let start = target.start_for_offset(self, offset);
            let memory = match (target.cached, reach) {
                (true, Some(reach)) => {
                    self.inner.recent().view(target.base, start, start.saturating_add(reach).min(target.bound))
                }
                _ => None,
            };
            let source = Source { file: &file, memory: memory.as_ref(), file_end: target.file_end };
            match read(source, start, target.bound, offset) {
                Ok(Some(found)) => {
                    return Ok(InSegment {
                        found: Some((file, found)),
                        high_watermark: hw,
                        log_start_offset: log_start,
                    });
                }
                Ok(None) => match target.next_base {
                    // Compaction left nothing at or after `offset` in this segment.
                    Some(next) if next > offset => offset = next,
                    _ => return Ok(InSegment { found: None, high_watermark: hw, log_start_offset: log_start }),
                },
                // Bytes a flush is still writing, outside the memory taken: again, once they
                // are written.
                Err(ReadFailure::Io(e)) if segment::is_unsettled(&e) && reach.is_some() => reach = None,
                Err(ReadFailure::Io(e)) => return Err(Error::io(&target.path, e)),
                Err(ReadFailure::Corrupt { position, error }) => {
                    return Err(Error::Corrupt { path: target.path, position, source: error });
                }
            }
        }
    }

    /// Where a read from `offset` goes. The active segment's pending bytes are written first if
    /// the read may reach them. With a `reach`, the log's newest bytes it holds in memory from
    /// the read's start up to there come along, and the file may be read only up to where a
    /// flush may still be writing; without, that write is waited for.
    fn read_target(&self, st: &mut LogState, offset: u64, reach: Option<u64>) -> Result<ReadTarget> {
        if offset >= st.active.base {
            let bound = st.active_bound();
            if bound > st.active.written {
                self.inner.write_pending(st)?;
            }
            let a = &st.active;
            let start = a.index.position_for_offset(a.base, offset).unwrap_or(SEGMENT_HEADER_LEN);
            if reach.is_none() && bound > a.settled {
                self.inner.settle(st)?;
            }
            let a = &st.active;
            let direct = self.inner.shared.direct_writes && st.config.durability == Durability::Always;
            let file_end = if direct { a.settled } else { u64::MAX };
            return Ok(ReadTarget {
                base: a.base,
                path: a.path.clone(),
                id: a.id,
                ino: a.ino,
                writable: true,
                bound,
                start,
                sealed: None,
                next_base: None,
                cached: reach.is_some() && direct,
                file_end,
            });
        }
        let (_, seg) =
            st.sealed.range(..=offset).next_back().ok_or(Error::Internal("offset above log start has no segment"))?;
        let next_base = st.sealed.range(seg.base + 1..).next().map_or(st.active.base, |(b, _)| *b);
        Ok(ReadTarget {
            base: seg.base,
            path: seg.path.clone(),
            id: seg.id,
            ino: seg.ino,
            writable: false,
            bound: seg.size,
            start: SEGMENT_HEADER_LEN,
            sealed: Some(Arc::clone(seg)),
            next_base: Some(next_base),
            cached: self.inner.shared.direct_writes && st.config.durability == Durability::Always,
            file_end: u64::MAX,
        })
    }

    /// The index of a sealed segment: from its file if that matches the log, else rebuilt.
    /// Must not be called with the state lock held (it may take it, and it may do I/O).
    pub(crate) fn sealed_index<'a>(&self, seg: &'a SealedSegment) -> &'a SegmentIndex {
        seg.index.get_or_init(|| {
            let interval = self.lock().config.index_interval_bytes;
            load_or_rebuild_index(&self.inner.dir, seg, &self.inner.shared, interval)
        })
    }

    /// The first offset whose record timestamp is at or after `timestamp`, if any is readable.
    ///
    /// # Errors
    /// [`Error::Corrupt`] or [`Error::Io`] from the segment scanned.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>> {
        let (sealed, active_max, hw, log_start) = {
            let st = self.lock();
            let sealed: Vec<_> = st.sealed.values().cloned().collect();
            (sealed, st.active.index.max_timestamp, st.high_watermark(), st.log_start)
        };
        for seg in &sealed {
            if self.sealed_index(seg).max_timestamp >= timestamp
                && let Some(found) = self.find_timestamp_in(seg.base, timestamp, hw)?
            {
                return Ok(Some(found.max(log_start)));
            }
        }
        if active_max >= timestamp {
            let base = self.lock().active.base;
            return self.find_timestamp_in(base, timestamp, hw);
        }
        Ok(None)
    }

    fn find_timestamp_in(&self, base: u64, timestamp: i64, hw: u64) -> Result<Option<u64>> {
        let mut target = {
            let mut st = self.lock();
            let mut t = self.read_target(&mut st, base, None)?;
            if t.sealed.is_none() {
                t.start = st.active.index.position_for_timestamp(timestamp).unwrap_or(SEGMENT_HEADER_LEN);
            }
            t
        };
        if let Some(seg) = &target.sealed {
            target.start = self.sealed_index(seg).position_for_timestamp(timestamp).unwrap_or(SEGMENT_HEADER_LEN);
        }
        let file = self.inner.shared.files.get(target.id, &target.path, target.ino, target.writable).at(&target.path)?;
        let mut pos = target.start;
        loop {
            let chunk = match segment::read_batches(&file, pos, target.bound, 0, 1 << 20, 1 << 19, true) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(None),
                Err(ReadFailure::Io(e)) => return Err(Error::io(&target.path, e)),
                Err(ReadFailure::Corrupt { position, error }) => {
                    return Err(Error::Corrupt { path: target.path, position, source: error });
                }
            };
            for b in batch::split_batches(&chunk.bytes) {
                let b = b.map_err(|source| Error::Corrupt { path: target.path.clone(), position: pos, source })?;
                if b.header().max_timestamp >= timestamp {
                    let records = b.records().map_err(|source| Error::Corrupt {
                        path: target.path.clone(),
                        position: pos,
                        source,
                    })?;
                    if let Some(r) = records.iter().find(|r| r.timestamp >= timestamp && r.offset < hw) {
                        return Ok(Some(r.offset));
                    }
                }
            }
            pos += chunk.bytes.len() as u64;
        }
    }
}

impl Log {
    /// Reads every batch of every segment (sealed and active), checking segment headers, batch
    /// checksums, record encoding and offset order, and reports all damage found rather than
    /// stopping at the first: a damaged batch whose length is readable is skipped, one whose
    /// header is not ends that segment's check. A segment deleted meanwhile is not damage.
    /// Reads everything: call it off the async runtime.
    pub fn verify(&self) -> Vec<SegmentDamage> {
        struct Target {
            base: u64,
            path: PathBuf,
            id: FileId,
            ino: u64,
            writable: bool,
            bound: u64,
            next_base: Option<u64>,
        }
        let targets: Vec<Target> = {
            let mut st = self.lock();
            if let Err(e) = self.inner.write_pending(&mut st) {
                return vec![SegmentDamage {
                    segment_base_offset: st.active.base,
                    position: st.active.written,
                    offsets: None,
                    description: format!("cannot write appended batches to the active segment: {e}"),
                }];
            }
            let bases: Vec<u64> = st.sealed.keys().copied().chain([st.active.base]).collect();
            let mut targets: Vec<Target> = st
                .sealed
                .values()
                .zip(bases.iter().skip(1))
                .map(|(seg, &next)| Target {
                    base: seg.base,
                    path: seg.path.clone(),
                    id: seg.id,
                    ino: seg.ino,
                    writable: false,
                    bound: seg.size,
                    next_base: Some(next),
                })
                .collect();
            let a = &st.active;
            targets.push(Target {
                base: a.base,
                path: a.path.clone(),
                id: a.id,
                ino: a.ino,
                writable: true,
                bound: a.size,
                next_base: None,
            });
            targets
        };
        let mut damage = Vec::new();
        for t in targets {
            match self.inner.shared.files.get(t.id, &t.path, t.ino, t.writable) {
                Ok(file) => verify_segment(&file, t.base, t.bound, t.next_base, &mut damage),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !t.writable => {} // retention deleted it
                Err(e) => damage.push(SegmentDamage {
                    segment_base_offset: t.base,
                    position: 0,
                    offsets: None,
                    description: format!("cannot open {}: {e}", t.path.display()),
                }),
            }
        }
        damage
    }
}

/// Checks one segment's bytes `[0, bound)`, adding what is wrong to `damage`.
fn verify_segment(file: &File, base: u64, bound: u64, next_base: Option<u64>, damage: &mut Vec<SegmentDamage>) {
    let mut report = |position: u64, offsets: Option<(u64, u64)>, description: String| {
        damage.push(SegmentDamage { segment_base_offset: base, position, offsets, description });
    };
    let mut head = [0u8; SEGMENT_HEADER_LEN as usize];
    match file.read_exact_at(&mut head, 0) {
        Ok(()) => {
            if segment::check_header(&head, base) != Ok(true) {
                report(0, None, "segment header is damaged or does not match the file name".into());
            }
        }
        Err(e) => return report(0, None, format!("cannot read the segment header: {e}")),
    }
    let mut pos = SEGMENT_HEADER_LEN;
    let mut next_offset = base;
    let mut buf = Vec::new();
    while pos < bound {
        let available = bound - pos;
        buf.resize(available.min(batch::HEADER_LEN as u64) as usize, 0);
        if let Err(e) = file.read_exact_at(&mut buf, pos) {
            return report(pos, None, format!("read failed: {e}"));
        }
        let header = match BatchHeader::decode(&buf) {
            Ok(h) => h,
            Err(e) => return report(pos, None, format!("batch header is unreadable ({e}); rest of segment unchecked")),
        };
        let offsets = Some((header.base_offset, header.last_offset()));
        let len = header.total_len() as u64;
        if len > available {
            return report(pos, offsets, format!("batch of {len} bytes runs past the segment end ({available} left)"));
        }
        buf.resize(len as usize, 0);
        if let Err(e) = file.read_exact_at(&mut buf, pos) {
            return report(pos, offsets, format!("read failed: {e}"));
        }
        match Batch::parse(Bytes::copy_from_slice(&buf)) {
            Err(e) => report(pos, offsets, format!("batch fails its check: {e}")),
            Ok(b) => {
                if let Err(e) = b.records() {
                    report(pos, offsets, format!("records do not decode: {e}"));
                }
                if header.base_offset < next_offset {
                    report(pos, offsets, format!("batch starts at offset {} below {next_offset}", header.base_offset));
                } else if next_base.is_some_and(|next| header.next_offset() > next) {
                    report(pos, offsets, "batch reaches into the next segment's offsets".into());
                }
                next_offset = next_offset.max(header.next_offset());
            }
        }
        pos += len;
    }
}

/// What a roll leaves to be written outside the log's lock (see [`Log::roll`]).
struct SealFiles {
    /// The sealed segment (its index is the one it keeps in memory).
    base: u64,
    id: FileId,
    /// The new active segment's base: the producer snapshot covers everything below it.
    next: u64,
    /// The producer table at `next`, encoded.
    producers: Vec<u8>,
}

impl LogInner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// See [`Log::write_producer_snapshot`]; `encoded` by [`ProducerTable::encode`].
    fn write_producer_snapshot(&self, base: u64, encoded: &[u8]) {
        let fsync = &self.shared.fsync;
        if let Err(e) = producer_state::write_snapshot(&self.dir, base, encoded, &|f| fsync.sync_data(f)) {
            tracing::warn!(dir = %self.dir.display(), base, error = %e, "could not write a producer snapshot");
        }
    }

    /// Writes a sealed segment's index file and the producer snapshot of a roll, and syncs the
    /// directory; on a flusher thread. Under the maintenance lock, so that a deletion of the
    /// log waits for it (and it then writes nothing), and the index is skipped when compaction
    /// or retention has replaced or removed the segment meanwhile. Failures are logged, not
    /// fatal: a missing index is rebuilt from the segment on first use, and a missing snapshot
    /// makes opening the log replay from an older one, slower but as correct.
    fn write_seal_files(&self, seal: SealFiles) {
        let _maintenance = self.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let sealed = {
            let st = self.lock();
            if st.deleted {
                return;
            }
            st.sealed.get(&seal.base).filter(|s| s.id == seal.id).cloned()
        };
        if let Some(index) = sealed.as_ref().and_then(|s| s.index.get()) {
            write_index_file(&self.dir, seal.base, index);
        }
        self.write_producer_snapshot(seal.next, &seal.producers);
        if let Err(e) = segment::sync_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not sync the log's directory");
        }
    }

    /// Syncs the active segment whether or not its appends count as durable (they may be
    /// durable through the journal only). Earlier segments were synced when they were sealed.
    pub(crate) fn sync_active(&self) -> Result<()> {
        let (file, path) = {
            let mut st = self.lock();
            if st.deleted {
                return Ok(());
            }
            self.write_pending(&mut st)?;
            let a = &st.active;
            (self.shared.files.get(a.id, &a.path, a.ino, true).at(&a.path)?, a.path.clone())
        };
        self.shared.fsync.sync_data(&file).at(&path)
    }

    /// The writer's lock (see [`crate::direct`]): taken under the state lock, or by a flush
    /// before it lets go of the state lock.
    fn writer(&self) -> MutexGuard<'_, SegmentWriter> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a flush writing outside the lock: afterwards the file holds everything handed
    /// to the writer.
    fn settle(&self, st: &mut LogState) -> Result<()> {
        let writer = self.writer();
        if writer.failed {
            return Err(Error::Poisoned { dir: self.dir.clone() });
        }
        st.active.settled = st.active.written;
        Ok(())
    }

    /// Writes the active segment's pending bytes into its file (through the page cache: the
    /// caller holds the log's lock, and a write past it waits for the device). A failure poisons
    /// the log and fails the appends waiting on it.
    pub(crate) fn write_pending(&self, st: &mut LogState) -> Result<()> {
        self.write_pending_locked(st, &mut self.writer())
    }

    /// [`LogInner::write_pending`] holding the writer's lock.
    fn write_pending_locked(&self, st: &mut LogState, writer: &mut SegmentWriter) -> Result<()> {
        if writer.failed {
            return Err(Error::Poisoned { dir: self.dir.clone() });
        }
        st.active.settled = st.active.written;
        if st.deleted {
            st.active.pending = Pending::default();
        }
        if st.active.pending.is_empty() {
            return Ok(());
        }
        let a = &mut st.active;
        let written = self
            .shared
            .files
            .get(a.id, &a.path, a.ino, true)
            .and_then(|file| a.pending.write_at(&file, a.written))
            .at(&a.path);
        if let Err(e) = written {
            // As after a failed fsync: refuse writes, and fail every append still waiting (a
            // flush that fails here never reaches the step that would).
            tracing::error!(path = %a.path.display(), error = %e, "writing appended batches failed; log refuses writes until reopened");
            st.poisoned = true;
            for w in st.take_waiters() {
                w.poisoned(self.dir.clone());
            }
            return Err(e);
        }
        a.written += a.pending.len() as u64;
        a.settled = a.written;
        a.allocated = a.allocated.max(a.written);
        // Released, not kept: a thousand idle partitions would each hold its high-water mark.
        a.pending = Pending::default();
        Ok(())
    }

    /// [`LogInner::write_pending`] under the log's lock.
    pub(crate) fn write_behind(&self) -> Result<()> {
        self.write_pending(&mut self.lock())
    }

    /// One fsync of the active segment, covering every append written before it starts.
    fn flush(&self) -> Result<()> {
        let Some(ticket) = self.begin_flush()? else { return Ok(()) };
        let result = self.shared.fsync.sync_data(&ticket.file);
        self.end_flush(ticket, result)
    }

    /// What a flush must make durable now: `None` when everything is durable already.
    fn begin_flush(&self) -> Result<Option<FlushTicket>> {
        let mut st = self.lock();
        st.flush_scheduled = false;
        if st.poisoned {
            return Err(Error::Poisoned { dir: self.dir.clone() });
        }
        if st.deleted {
            return Ok(None);
        }
        if self.shared.direct_writes && st.config.durability == Durability::Always && !st.active.pending.is_empty() {
            return self.write_direct(st).map(Some);
        }
        // Durable through the journal is not yet in the file: a flush puts it there (and syncs).
        let pending = !st.active.pending.is_empty();
        self.write_pending(&mut st)?;
        if st.durable >= st.next_offset && !pending {
            return Ok(None);
        }
        let a = &st.active;
        let file = self.shared.files.get(a.id, &a.path, a.ino, true).at(&a.path)?;
        Ok(Some(FlushTicket {
            file,
            path: a.path.clone(),
            device: self.device,
            next_offset: st.next_offset,
            position: (a.base, a.size),
        }))
    }

    /// Writes an `always` log's waiting batches past the page cache, outside the log's lock
    /// (see [`crate::direct`]), and returns the sync that makes them durable.
    fn write_direct(&self, mut st: MutexGuard<'_, LogState>) -> Result<FlushTicket> {
        let a = &mut st.active;
        let batches = std::mem::take(&mut a.pending);
        let at = a.written;
        a.written += batches.len() as u64;
        // Padded to a block at most (see `direct`).
        a.allocated = a.allocated.max(a.written.next_multiple_of(crate::aligned::ALIGN as u64));
        let (base, path) = (a.base, a.path.clone());
        let file = self.shared.files.get(a.id, &a.path, a.ino, true);
        let ticket = |file| FlushTicket {
            file,
            path: path.clone(),
            device: self.device,
            next_offset: st.next_offset,
            position: (base, st.active.size),
        };
        let ticket = file.map(ticket);
        let mut writer = self.writer();
        drop(st);
        if writer.failed {
            return Err(Error::Poisoned { dir: self.dir.clone() });
        }
        let chunks = batches.into_chunks();
        self.recent().keep(&self.shared.recent, &self.me, base, at, &chunks);
        let written = ticket.and_then(|ticket| writer.write(base, &path, &ticket.file, at, &chunks).map(|_| ticket));
        match written {
            Ok(ticket) => Ok(ticket),
            Err(e) => {
                writer.failed = true;
                drop(writer);
                self.poison(&path, &e);
                Err(Error::io(path, e))
            }
        }
    }

    /// Lets go of the active segment's second descriptor and newest bytes (the log was deleted).
    pub(crate) fn forget_segment(&self) {
        self.writer().close();
        self.recent().clear();
    }

    /// Records the outcome of syncing what `ticket` covers: durable, or the log is poisoned.
    fn end_flush(&self, ticket: FlushTicket, result: io::Result<()>) -> Result<()> {
        match result {
            Ok(()) => {
                let mut st = self.lock();
                if st.active.base == ticket.position.0 {
                    // Written before the sync began.
                    st.active.settled = st.active.settled.max(ticket.position.1);
                }
                st.mark_durable(ticket.next_offset, ticket.position);
                Ok(())
            }
            Err(e) => {
                self.poison(&ticket.path, &e);
                Err(Error::io(ticket.path, e))
            }
        }
    }
}

impl LogInner {
    pub(crate) fn poison(&self, path: &Path, e: &io::Error) {
        tracing::error!(path = %path.display(), error = %e, "fsync failed; log refuses writes until reopened");
        let mut st = self.lock();
        st.poisoned = true;
        for w in st.take_waiters() {
            w.poisoned(self.dir.clone());
        }
    }
}

impl Flushable for LogInner {
    /// One sync of a log at a time: a log popped while another thread syncs it is left to that
    /// thread, which syncs once more when its sync returns (covering everything appended
    /// meanwhile, as group commit does). Popped again at once, a hot log had every flusher
    /// thread `fdatasync` its one file side by side — sixteen device flushes queued behind each
    /// other for what one covers (benches/FINDINGS.md, "One sync of a log at a time").
    ///
    /// The two flags are a handshake across two variables (mark, then look; clear, then look
    /// again), which only holds with one total order of all four steps: `SeqCst` throughout,
    /// or the syncing thread could miss a mark made just before it let go, and the appends
    /// behind that mark would wait for the next append's flush.
    fn flush_from_queue(&self) {
        self.flush_queued.store(false, Ordering::Release);
        self.flush_again.store(true, Ordering::SeqCst);
        while !self.flushing.swap(true, Ordering::SeqCst) {
            while self.flush_again.swap(false, Ordering::SeqCst) {
                // Errors are delivered to the waiting appenders; nothing more to do here.
                let _ = self.flush();
            }
            self.flushing.store(false, Ordering::SeqCst);
            // Marked after the last check and before `flushing` cleared: its thread saw the
            // log busy and left it to this one.
            if !self.flush_again.load(Ordering::SeqCst) {
                break;
            }
        }
    }

    fn take_from_queue(&self) -> Option<FlushTicket> {
        self.flush_queued.store(false, Ordering::Release);
        // A poisoned log has failed its waiters already: nothing to flush.
        self.begin_flush().ok().flatten()
    }

    fn complete(&self, ticket: FlushTicket, result: io::Result<()>) {
        let _ = self.end_flush(ticket, result);
    }
}

/// How an append that waits for a sync is told: through its group, or its own channel.
fn notifier(group: Option<&AppendGroup>) -> (Notifier, Option<oneshot::Receiver<Result<()>>>) {
    match group {
        Some(group) => (group.join(), None),
        None => {
            let (notify, rx) = Notifier::channel();
            (notify, Some(rx))
        }
    }
}

/// Checks a batch completely.
fn validate_batch(batch: Vec<u8>) -> Result<ValidBatch> {
    ValidBatch::check(batch).map_err(|source| Error::InvalidBatch { source })
}

/// Creates `<base>.log` with its header, durably.
pub(crate) fn create_segment(dir: &Path, base: u64, shared: &Shared, now: i64) -> Result<ActiveSegment> {
    use std::os::unix::fs::MetadataExt;
    let path = segment::log_path(dir, base);
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).at(&path)?;
    file.write_all_at(&segment::encode_header(base), 0).at(&path)?;
    let allocated = SEGMENT_HEADER_LEN;
    shared.fsync.sync_data(&file).at(&path)?;
    segment::sync_dir(dir).at(dir)?;
    let ino = file.metadata().at(&path)?.ino();
    let id = FileId::fresh();
    shared.files.insert(id, Arc::new(file));
    Ok(ActiveSegment {
        base,
        id,
        ino,
        path,
        size: SEGMENT_HEADER_LEN,
        written: SEGMENT_HEADER_LEN,
        settled: SEGMENT_HEADER_LEN,
        pending: Pending::default(),
        allocated,
        index: SegmentIndex::empty(base, SEGMENT_HEADER_LEN),
        created_ms: now,
    })
}

/// Writes an index file via a temporary name, so a reader never sees half of one. Failure is
/// logged, not fatal: a missing index is rebuilt from the log on first use.
pub(crate) fn write_index_file(dir: &Path, base: u64, index: &SegmentIndex) {
    let path = segment::index_path(dir, base);
    let tmp = path.with_extension("index.tmp");
    let result = (|| -> io::Result<()> {
        let file = File::create(&tmp)?;
        file.write_all_at(&index.encode(base), 0)?;
        file.sync_data()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not write segment index; it will be rebuilt");
        let _ = std::fs::remove_file(&tmp);
    }
}

fn load_or_rebuild_index(dir: &Path, seg: &SealedSegment, shared: &Shared, interval: u32) -> SegmentIndex {
    let index_path = segment::index_path(dir, seg.base);
    let file = shared.files.get(seg.id, &seg.path, seg.ino, false);
    if let Some(index) = SegmentIndex::load(&index_path, seg.base)
        && index.log_len == seg.size
    {
        let matches = match (index.last_batch, &file) {
            (None, _) => seg.size == SEGMENT_HEADER_LEN,
            (Some((pos, crc)), Ok(file)) => {
                let mut buf = [0u8; 4];
                file.read_exact_at(&mut buf, pos + 13).is_ok() && u32::from_le_bytes(buf) == crc
            }
            (Some(_), Err(_)) => false,
        };
        if matches {
            return index;
        }
    }
    let Ok(file) = file else {
        return SegmentIndex::empty(seg.base, SEGMENT_HEADER_LEN);
    };
    match segment::scan(&file, seg.base, SEGMENT_HEADER_LEN, seg.size, interval, false) {
        Ok(scan) => {
            match scan.end {
                segment::ScanEnd::Clean => {
                    tracing::info!(path = %seg.path.display(), "rebuilt missing or stale segment index");
                    write_index_file(dir, seg.base, &scan.index);
                }
                segment::ScanEnd::Invalid { position, ref error } => {
                    // Keep the valid prefix indexed; reads past it report the damage.
                    tracing::error!(path = %seg.path.display(), position, %error, "sealed segment is damaged");
                }
            }
            scan.index
        }
        Err(e) => {
            tracing::error!(path = %seg.path.display(), error = %e, "cannot scan segment to rebuild its index");
            SegmentIndex::empty(seg.base, SEGMENT_HEADER_LEN)
        }
    }
}
