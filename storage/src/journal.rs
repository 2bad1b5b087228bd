//! The journal: one write-ahead file per [`crate::LogManager`] that makes small durable appends
//! durable with one sequential write and one `fdatasync` for all partitions at once.
//!
//! ```text
//!  append (log lock held) ── pwrite ──► segment, page cache only (written back later)
//!        └── entry (name, batch) ──► journal buffer ──► writer thread: pwrite + fdatasync of
//!                                                         the current journal file, then marks
//!                                                         every log in the write durable
//!  full journal file ──► checkpointer: syncfs (or fdatasync of each log it holds), then a
//!                        new epoch in the file's header ──► spare, written again from its start
//! ```
//!
//! **Why.** A keyed request over a wide topic appends a batch of a record or two to hundreds of
//! partitions. Made durable partition by partition, each of those appends costs a segment file
//! growing by a fraction of a page, its inode dirtied and its partly filled last page written
//! again at every sync (measured here: the disk wrote ~300 MB/s for ~85 MB/s produced, and the
//! kernel's writeback took a quarter of the machine). Through the journal the same request is
//! one append to a preallocated, zero-filled file (an `fdatasync` there changes no metadata:
//! ~0.1 ms), and the segments' pages go to disk whole, once per checkpoint.
//!
//! **What is journaled.** Batches of at most [`MAX_BATCH`] (32 KiB) appended to a log whose
//! durability is `always`: the record or two a wide keyed request leaves in each partition, and
//! the few dozen records a light producer sends a partition at a time. Larger batches carry
//! enough bytes per `fdatasync` on their own and are synced in their segment (journaling them
//! would write them twice, and each checkpoint's writeback stalls the journal's syncs
//! meanwhile). The limit was 8 KiB while a checkpoint took one `syncfs` and two directory syncs:
//! in W3 at 10 % of the peak (4 partitions, batches of 17–25 KiB, 4,000 a second) journaling up
//! to 64 KiB gave p99 3.5–3.8 ms, because every ~60 ms a checkpoint's `syncfs` took ~4 ms and the
//! journal `fdatasync`s issued meanwhile 2–4 ms (seen with `perf trace`), against 1.0–2.0 ms
//! synced in their segments. With checkpoints as they are now (see "Checkpoint size" below), W3
//! at 10 % of a 1.15M peak (batches of 28 KiB, ~4,100 a second; two A/Bs of five and six
//! alternated runs, the order swapped): 32 KiB against 8 KiB, p99 2.5 and 2.2 ms against 3.0
//! and 2.0 (no difference), p50 0.61 and 0.63 against 0.76 and 0.79 ms, server CPU 5.7 and 5.9
//! against 8.0 and 7.2 s/GB (a journal sync of a preallocated file instead of a segment's that
//! grows the file, ~4,000 a second), p999 3.4–4.9 against 4.2–9.1 ms in the second; 64 KiB was
//! no better than 32. W6's batches (1–2 records of 1 KiB per partition) are journaled either way.
//!
//! **Order and acknowledgement.** An entry is queued under its log's lock, right after the batch
//! is written into the segment, so one log's entries are in offset order and a checkpoint that
//! syncs the segments covers every entry written before it. A log is marked durable up to an
//! entry's end once the write holding the entry is synced; a later entry never completes before
//! an earlier one (writes complete in order).
//!
//! **One thread.** An append that arrives while the thread syncs waits for that sync, then for
//! the write and sync that carry it. Tried and taken out (2026-12-07, benches/FINDINGS.md "Two
//! journal threads"): two threads taking turns, one writing what arrived while the other
//! synced (an `O_DIRECT` write is with the device once `pwrite` returns, so any sync started
//! after it covers it). W3's journaled rows did not move beyond the noise, and W6, the load it
//! was for, measured lower in six of eight alternated pairs in a calm hour (median 247k against
//! 279k msgs/s, more CPU per byte): W6's ~1 MB requests then went out as more, smaller writes,
//! synced side by side.
//!
//! **Files.** At most four, `_journal/<n>.slot`, [`StorageOptions::journal_file_bytes`] each,
//! zero-filled when created and then never renamed, resized or removed: a file is retired by a
//! new epoch in its header, after which none of the entries in it counts. Layout (little
//! endian): two header blocks at 0 and 512 (`"SJNL" | version u16 = 2 | 0 u16 | epoch u64 |
//! crc32c u32` of the 16 bytes before it), entries from 4096. The file's epoch is that of its
//! valid header with the larger epoch; a new header goes into the other block, so a write a
//! crash tears leaves the current one. Each entry:
//! `len u32 | crc32c u32 | epoch u64 | name_len u16 | name | batch` (the CRC covers everything
//! after itself). An entry with an empty name (no log has one) is padding: where the filesystem
//! takes `O_DIRECT`, entries are written past the page cache ([`Direct`] says why), and each
//! write must then start and end on a block boundary (512 bytes on this project's disk), so a
//! write ends with a padding entry of zeros up to the next one (at least an entry header's 18
//! bytes: 18 to 529 where blocks are 512 bytes). Version 1 files (no padding) read the same.
//! A scan stops at the first entry that does not check or carries another epoch
//! than the file's (what an earlier epoch left, or a write torn by a crash). Epochs come from
//! one counter, across restarts too (it starts one past the largest found), so a reused file's
//! old entries never pass for current ones. Retiring by header rather than by renaming the file
//! (as the journal did until 2026-12-06: `<epoch>.wal` renamed to `<epoch>.spare` and back, each
//! rename followed by a directory `fsync`) spares each checkpoint two commits of the
//! filesystem's own journal, each with a device flush that the journal's `fdatasync`s queue
//! behind; the header's write and `fdatasync` touch only preallocated blocks.
//!
//! **Recovery.** [`replay`] runs before a manager opens any log (also when the journal was
//! turned off after the files were written): every entry of every file is
//! appended to its log if the log (recovered from its segments) ends where the entry begins,
//! skipped if the log has it already, and the logs are synced; then every file gets a new
//! epoch. Entries of logs whose directory is gone (deleted) are dropped. Deleting a log
//! checkpoints the journal first when it may still hold the log's entries, so a log created
//! again under the same name never receives the old one's records. Files in the older layout
//! (`<epoch>.wal` replayed, `<epoch>.spare` already retired) are replayed and then removed.
//!
//! **Checkpoint size: W3's tail at low load.** A checkpoint writes the segment pages its file
//! covers and `syncfs`es; a journal `fdatasync` issued meanwhile waits behind those writes at
//! the disk (a device flush persists everything written before it). Checkpointing whole 32 MiB
//! files, W3's p99 at 10 % of the peak rate was 14–24 ms (p50 1.7 ms; measured while its
//! 17–25 KiB batches were still journaled): one 30 ms stall every third of a second. So a file
//! is closed for its checkpoint once it holds [`CHECKPOINT_PER_LOG`] bytes for each log with
//! entries in it, at least [`CHECKPOINT_MIN`]: with W3's 4 partitions
//! every 4 MiB (p99 5.0–6.1 ms; 2 MiB and 1 MiB were no better, 8 MiB 6.2–6.7 ms), while W6's
//! 1,000 partitions still fill whole files (checkpointing W6 every 4 or 8 MiB cost it a third to
//! two fifths of its rate: each checkpoint writes every log's partly filled last page again and
//! touches a thousand inodes). Larger files were worse (256 MiB: p99 84–91 ms). Files are
//! 64 MiB by default all the same ([`crate::DEFAULT_JOURNAL_FILE_BYTES`]): W6's checkpoints
//! then write 64 KiB of each log, not 32, while W3's four logs are checkpointed every 4 MiB
//! whatever the file size. Found earlier and kept: the steps of a rotation (zero-filling a new file, the directory `fsync`s) happen
//! ahead of need in the checkpointer (`checkpoint_loop`). Tried and not kept: `sync_file_range(WRITE)`
//! on each range written behind (p99 19 ms, W6 lost a third); `fallocate` instead of
//! zero-filling (p99 0.6 s: every first write into an unwritten block makes its `fdatasync`
//! commit metadata); an `fdatasync` of a log's segment each time 8 MiB more of it were written
//! behind (within the noise); zero-filling a new file in pieces of 1 MiB, each synced (written
//! whole, a new file's one 44 ms `fdatasync` stalled the syncs issued meanwhile: W3 at 3,300
//! single-record requests a second had p99 2.2 ms against 6.4 at the median of two alternated
//! pairs, but W6's p99 was 171–238 ms against 100–152 in four pairs and its rate lower in three:
//! made under load, 64 syncs take long, likely leaving the writer without a file to rotate to).
//!
//! **What is left of the tail at light load.** With records that are all journaled (W3 offered
//! 7,800 single-record batches a second to 4 partitions, Strata alone, five runs each), p99 was
//! 1.4–3.2 ms (median 2.1) checkpointing every 4 MiB, two checkpoints a second, and 0.89–1.02 ms
//! with none in the measured seconds (files checkpointed only when full): the checkpoints are
//! that tail. Larger checkpoints are no cure: at 30,000 records a second in batches of 7
//! (~30 MB/s journaled) whole 64 MiB files gave p99 11–22 ms, 16 MiB 5.4–6.6 ms and 4 MiB
//! 1.8–2.3 ms: a journal sync waits behind about as many bytes as the checkpoint writes, so the
//! stall grows with its size while the share of time stalled stays about the same. Two changes
//! took most of it out (2026-12-06, the same load, six alternated runs each): a file of at most
//! [`SYNC_EACH_MAX_LOGS`] logs syncs its logs' segments one by one instead of with one `syncfs`
//! (pieces of about a megabyte, each a journal sync can slip in between), and a file is retired
//! by a new header instead of two renames and two directory syncs. Measured apart on one build
//! (switches read from the environment): p99 3.1 ms (2.4–3.7) as before, 2.9 (2.0–3.9) without
//! the directory syncs, 2.1 (1.6–3.4) with the segments synced one by one too. The change as
//! landed against the code before it: p99 1.5 ms (1.3–1.7 in four runs, 14 in two rounds when
//! the machine was busy) against 3.8 ms (1.4–3.9, 19 and 46 in those rounds); the lower in all
//! six pairs. W6 (one `syncfs` a checkpoint, as before, less the directory syncs) stayed within
//! the noise: 370k against 383k msgs/s, medians of ten runs each, the order swapped halfway
//! (whichever ran second in a pair was the slower by about as much).
//!
//! [`StorageOptions::journal_file_bytes`]: crate::StorageOptions::journal_file_bytes

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::aligned::{self, AlignedBuf};
use crate::batch::BatchHeader;
use crate::config::{Durability, LogConfig};
use crate::error::{IoContext, Result};
use crate::flusher::Fsync;
use crate::partition_log::{Log, LogInner, Shared};
use crate::segment::sync_dir;

/// The journal's directory under a manager's root (no log may take this name).
pub(crate) const DIR_NAME: &str = "_journal";

/// Largest batch that is journaled (see the module docs, "What is journaled").
pub(crate) const MAX_BATCH: usize = 32 << 10;

/// Journal files kept at most: the current one, full ones waiting for their checkpoint, spares.
const MAX_FILES: usize = 4;

/// Journal bytes after which a file holding entries of few logs is checkpointed (see
/// [`Current::checkpoint_at`]).
const CHECKPOINT_MIN: u64 = 4 << 20;

/// Journal bytes per log with entries in a file before it is checkpointed (up to the file's size).
const CHECKPOINT_PER_LOG: u64 = 64 << 10;

/// Logs with entries in a file up to which its checkpoint syncs each log's segment on its own
/// rather than the whole filesystem (see [`retire`]).
const SYNC_EACH_MAX_LOGS: usize = 8;

/// `len`, `crc`, `epoch`, `name_len`.
const ENTRY_HEADER: usize = 4 + 4 + 8 + 2;

/// The largest entry there can be: a name of `u16::MAX` bytes and a batch of [`MAX_BATCH`].
const MAX_ENTRY: usize = ENTRY_HEADER + u16::MAX as usize + MAX_BATCH;

/// The most padding a write carries (see [`padding`]): the rest of a block, and one block more
/// where the rest is too short for an entry's header.
const MAX_PAD: usize = aligned::ALIGN + ENTRY_HEADER - 1;

/// Where a file's two header blocks are: in different sectors, so that a write a crash tears
/// damages one of them at most.
const HEADER_AT: [u64; 2] = [0, 512];

/// Where a file's entries start.
const ENTRIES_AT: u64 = 4096;

const HEADER_MAGIC: [u8; 4] = *b"SJNL";
/// 2 since padding entries (see [`padding`]); files of version 1 (written without any) read the same.
const HEADER_VERSION: u16 = 2;

/// `magic`, `version`, a reserved `u16`, `epoch`, and the CRC32C of the 16 bytes before it.
const HEADER_LEN: usize = 4 + 2 + 2 + 8 + 4;

/// Bytes read at a time when a file is scanned.
const SCAN_CHUNK: usize = 1 << 20;

/// Where a log's durability stands once the write holding its entry is synced.
pub(crate) struct Completion {
    pub(crate) log: Arc<LogInner>,
    pub(crate) next_offset: u64,
    pub(crate) position: (u64, u64),
}

#[derive(Default)]
struct Queue {
    /// Entries not yet written; their `epoch` and `crc` are filled in by the writer. Aligned, so
    /// that the writer hands it to an `O_DIRECT` write as it is.
    buf: AlignedBuf,
    done: Vec<Completion>,
    /// Sequence number of the last entry queued.
    queued: u64,
    /// A checkpoint of everything queued so far was asked for.
    rotate: bool,
    shutdown: bool,
}

/// A journal file, open, and the epoch of the entries that count in it.
#[derive(Clone)]
struct Slot {
    /// For the headers, reads and syncs.
    file: Arc<File>,
    /// For the entries, where the filesystem takes `O_DIRECT` writes.
    direct: Option<Direct>,
    path: PathBuf,
    /// Its length (entries go up to it).
    len: u64,
    epoch: u64,
    /// The header block holding `epoch`; the next header goes into the other one.
    header: usize,
}

impl Slot {
    /// Gives the file the epoch `epoch`, written into the header block not in use and synced:
    /// afterwards none of the entries in it counts. A crash during the write leaves the current
    /// header, and the entries, as they were.
    fn restamp(&mut self, epoch: u64, fsync: &dyn Fsync) -> io::Result<()> {
        let block = 1 - self.header;
        self.file.write_all_at(&encode_header(epoch), HEADER_AT[block])?;
        fsync.sync_data(&self.file)?;
        self.epoch = epoch;
        self.header = block;
        Ok(())
    }

    /// What a write's offset and length must be a multiple of: a block when written past the
    /// page cache, else 1.
    fn align(&self) -> usize {
        self.direct.as_ref().map_or(1, |d| d.align)
    }

    /// The most padding a write into this file may need (see [`padding`]).
    fn max_pad(&self) -> usize {
        if self.direct.is_some() { MAX_PAD } else { 0 }
    }

    /// Writes `bytes` at `at`: with `O_DIRECT` where the file was opened so (then both must be
    /// aligned, see [`Slot::align`], and so must the memory, see [`AlignedBuf`]), else through
    /// the page cache. A filesystem that takes the flag but refuses the write makes the file a
    /// buffered one from then on.
    fn write_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            match direct.file.write_all_at(bytes, at) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "an O_DIRECT write was refused; the journal writes this file through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(bytes, at)
    }
}

/// A journal file opened a second time, with `O_DIRECT`, and the block size its writes must be
/// aligned to.
///
/// **Why.** Entries are written once and read back only by a replay, so the page cache holds
/// them for nothing: written through it, each write is copied into the cache and the
/// `fdatasync` then walks and writes back those pages. Past it (measured here, 1 MiB writes
/// each followed by an `fdatasync` into a zero-filled file): 0.11–0.15 CPU-s per GiB against
/// 0.30–0.32, and 1.6–2.0 GB/s against 1.5–1.7; 64 KiB writes 1.15–1.22 against 1.38–1.53
/// CPU-s per GiB. `StorageOptions::direct_io = false` keeps every write in the page cache, as
/// on a filesystem without `O_DIRECT` (the tests run both ways).
#[derive(Clone)]
struct Direct {
    file: Arc<File>,
    align: usize,
}

impl Direct {
    /// `path` opened for `O_DIRECT` writes, if `direct_io` and its filesystem takes them (see
    /// [`aligned::open_direct`]).
    fn open(path: &Path, direct_io: bool) -> Option<Self> {
        let (file, align) = direct_io.then(|| aligned::open_direct(path)).flatten()?;
        Some(Self { file: Arc::new(file), align })
    }
}

/// A full journal file, waiting for the segments it covers to be synced.
#[derive(Clone)]
struct Closed {
    slot: Slot,
    /// Logs with entries in it (synced one by one when few, or when `syncfs` cannot be trusted).
    logs: Vec<Arc<LogInner>>,
    /// Sequence number of its last entry.
    last: u64,
}

#[derive(Default)]
struct Files {
    /// Files ready to be written, their entries retired: the writer takes one when its current
    /// file is full, with no I/O.
    spares: Vec<Slot>,
    /// A new file is being made (by the checkpointer ahead of need, or by the writer).
    creating: bool,
    /// The epoch the next file made or retired gets.
    next_epoch: u64,
    closed: VecDeque<Closed>,
    /// Every file: current, closed and spare.
    count: usize,
    /// Every entry up to this sequence number is in a synced segment (or was dropped).
    retired: u64,
    /// A checkpoint failed: the journal takes no more entries (logs sync their segments).
    failed: bool,
}

struct Inner {
    dir: PathBuf,
    file_bytes: u64,
    /// New files' entries go past the page cache where the filesystem takes it
    /// (`StorageOptions::direct_io`).
    direct_io: bool,
    fsync: Arc<dyn Fsync>,
    queue: Mutex<Queue>,
    /// Wakes the writer.
    queued: Condvar,
    files: Mutex<Files>,
    /// Wakes the checkpointer, and whoever waits for a checkpoint or a spare.
    files_changed: Condvar,
    /// The journal takes no more entries (a write or a checkpoint failed).
    failed: AtomicBool,
    /// [`Journal::stop`] was called.
    stopped: AtomicBool,
}

impl Inner {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_files<'a>(&self, guard: MutexGuard<'a, Files>) -> MutexGuard<'a, Files> {
        self.files_changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to the journal's two threads; [`Journal::stop`] (or dropping it) writes what is
/// queued and stops them.
pub(crate) struct Journal {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

impl Journal {
    /// Starts the journal in `<root>/_journal` with the files [`replay`] emptied.
    pub(crate) fn start(
        root: &Path,
        file_bytes: u64,
        direct_io: bool,
        fsync: Arc<dyn Fsync>,
        replayed: Replayed,
    ) -> io::Result<Self> {
        let Replayed { mut slots, next_epoch } = replayed;
        for slot in &mut slots {
            slot.direct = Direct::open(&slot.path, direct_io);
        }
        let inner = Arc::new(Inner {
            file_bytes: file_len(file_bytes),
            direct_io,
            fsync,
            queue: Mutex::default(),
            queued: Condvar::new(),
            files: Mutex::new(Files { count: slots.len(), spares: slots, next_epoch, ..Files::default() }),
            files_changed: Condvar::new(),
            failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            dir: root.join(DIR_NAME),
        });
        let journal = Self { inner, threads: Mutex::new(Vec::with_capacity(2)) };
        let writer = Arc::clone(&journal.inner);
        let checkpointer = Arc::clone(&journal.inner);
        let mut threads = journal.threads.lock().unwrap_or_else(PoisonError::into_inner);
        // On failure, dropping `journal` stops the thread already started.
        threads.push(std::thread::Builder::new().name("strata-journal".into()).spawn(move || write_loop(&writer))?);
        threads.push(
            std::thread::Builder::new()
                .name("strata-checkpoint".into())
                .spawn(move || checkpoint_loop(&checkpointer))?,
        );
        drop(threads);
        Ok(journal)
    }

    /// Queues `batch` (already written to `name`'s segment) and returns the entry's sequence
    /// number, or `None` when the journal takes no more entries (the caller syncs the segment
    /// instead). Called under the log's lock.
    pub(crate) fn push(&self, name: &str, batch: &[u8], done: Completion) -> Option<u64> {
        if self.inner.failed.load(Ordering::Acquire) {
            return None;
        }
        let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
        let len = ENTRY_HEADER + name.len() + batch.len();
        let mut q = self.inner.queue();
        if q.shutdown {
            return None;
        }
        // The writer only waits for an empty queue: a push onto a non-empty one needs no wake-up
        // (a `notify_one` is a `futex` call even with no one waiting, and a keyed request over a
        // wide topic pushes hundreds of entries).
        let wake = q.buf.is_empty();
        q.buf.reserve(len);
        q.buf.extend_from_slice(&(len as u32).to_le_bytes());
        q.buf.extend_from_slice(&[0; 12]); // crc and epoch: the writer's
        q.buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        q.buf.extend_from_slice(name);
        q.buf.extend_from_slice(batch);
        q.done.push(done);
        q.queued += 1;
        let seq = q.queued;
        drop(q);
        if wake {
            self.inner.queued.notify_one();
        }
        Some(seq)
    }

    /// The largest batch the journal takes: [`MAX_BATCH`], or less where files are so small
    /// (tests) that two such entries would not fit in one.
    pub(crate) fn max_batch(&self) -> usize {
        let room = self.inner.file_bytes.saturating_sub(ENTRIES_AT) as usize;
        MAX_BATCH.min(room.saturating_sub(MAX_PAD) / 2)
    }

    /// Whether the journal takes entries (it stops after a failure, or when stopped).
    pub(crate) fn is_open(&self) -> bool {
        !self.inner.failed.load(Ordering::Acquire) && !self.inner.stopped.load(Ordering::Acquire)
    }

    /// Whether entries up to `seq` may still be needed by a replay.
    pub(crate) fn holds(&self, seq: u64) -> bool {
        seq > self.inner.files().retired
    }

    /// Makes the segments behind every entry queued so far durable and retires the journal
    /// files holding them: afterwards a replay finds none of them.
    ///
    /// # Errors
    /// The failed write or sync (the journal then takes no more entries).
    pub(crate) fn checkpoint(&self) -> io::Result<()> {
        let target = {
            let mut q = self.inner.queue();
            q.rotate = true;
            q.queued
        };
        self.inner.queued.notify_one();
        let mut files = self.inner.files();
        loop {
            if files.retired >= target {
                return Ok(());
            }
            if files.failed || self.inner.failed.load(Ordering::Acquire) {
                return Err(io::Error::other("the journal failed earlier; see the log for the error"));
            }
            if self.inner.stopped.load(Ordering::Acquire) {
                return Err(io::Error::other("the journal is stopped"));
            }
            files = self.inner.wait_files(files);
        }
    }
}

impl Journal {
    /// Writes what is queued and stops both threads; entries pushed later are refused (their
    /// logs sync their segments). Full files not yet checkpointed stay for the next replay.
    ///
    /// The threads hold the logs with entries in the current file, which hold the manager's
    /// shared state, which holds the journal: the manager stops it when dropped, or none of it
    /// would ever be dropped.
    pub(crate) fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.queue().shutdown = true;
        self.inner.queued.notify_all();
        self.inner.files().closed.clear();
        self.inner.files_changed.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            // As with the flusher: the last reference may go from one of these threads.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The file being written.
struct Current {
    slot: Slot,
    /// Where the next entry goes.
    pos: u64,
    logs: HashMap<usize, Arc<LogInner>>,
    last: u64,
}

impl Current {
    /// Where the file is closed and checkpointed: after [`CHECKPOINT_PER_LOG`] bytes of entries
    /// for each log with entries in it, from [`CHECKPOINT_MIN`] up to the whole file. Looked at
    /// before each write; a write may go past it (up to the file's end).
    fn checkpoint_at(&self) -> u64 {
        let room = self.slot.len.saturating_sub(ENTRIES_AT);
        ENTRIES_AT + (self.logs.len() as u64 * CHECKPOINT_PER_LOG).clamp(CHECKPOINT_MIN.min(room), room)
    }
}

fn write_loop(inner: &Inner) {
    let mut current: Option<Current> = None;
    let mut spare_buf = AlignedBuf::default();
    let mut spare_done = Vec::new();
    // For the rare write of part of what was queued (the rest goes to the next file).
    let mut staging = AlignedBuf::default();
    loop {
        let (mut buf, mut done, last, rotate) = {
            let mut q = inner.queue();
            while q.buf.is_empty() && !q.rotate && !q.shutdown {
                q = inner.queued.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.buf.is_empty() && q.shutdown {
                return;
            }
            let buf = std::mem::replace(&mut q.buf, std::mem::take(&mut spare_buf));
            let done = std::mem::replace(&mut q.done, std::mem::take(&mut spare_done));
            (buf, done, q.queued, std::mem::take(&mut q.rotate))
        };
        // One completion per entry, in order: entry `i` has sequence number `first + i`.
        let mut written = Written { first: last + 1 - done.len() as u64, entries: 0 };
        let mut result = Ok(());
        let mut pos = 0;
        while pos < buf.len() && result.is_ok() {
            result = write_some(inner, &mut current, &mut buf, &mut pos, &done, &mut written, &mut staging);
        }
        match result {
            Ok(()) => {
                for c in &done {
                    c.log.lock().mark_durable(c.next_offset, c.position);
                }
            }
            Err(e) => {
                tracing::error!(dir = %inner.dir.display(), error = %e, "journal write failed; logs sync their segments from now on");
                inner.failed.store(true, Ordering::Release);
                for c in &done {
                    c.log.poison(&inner.dir, &e);
                }
                inner.files_changed.notify_all();
            }
        }
        if rotate {
            match current.take() {
                Some(cur) => close(inner, cur),
                None => {
                    // No file open: every entry written is in a closed file, and the last one
                    // to retire brings `retired` to `last`; with none left, it is there already.
                    let mut files = inner.files();
                    if files.closed.is_empty() {
                        files.retired = files.retired.max(last);
                    }
                    drop(files);
                    inner.files_changed.notify_all();
                }
            }
        }
        buf.clear();
        done.clear();
        spare_buf = buf;
        spare_done = done;
    }
}

/// Entries of one batch of work written so far.
struct Written {
    first: u64,
    entries: u64,
}

/// Writes and syncs whole entries from `buf[*pos..]` into the current file (opening the next
/// one when it is full), filling in their epoch and checksum. A file written with `O_DIRECT`
/// gets a padding entry after them, so that the next write starts on a block boundary.
fn write_some(
    inner: &Inner,
    current: &mut Option<Current>,
    buf: &mut AlignedBuf,
    pos: &mut usize,
    done: &[Completion],
    written: &mut Written,
    staging: &mut AlignedBuf,
) -> io::Result<()> {
    let entry_len =
        |buf: &[u8], at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
    let next = entry_len(buf.as_slice(), *pos) as u64;
    if current.as_ref().is_some_and(|c| c.pos + next + c.slot.max_pad() as u64 > c.checkpoint_at())
        && let Some(cur) = current.take()
    {
        close(inner, cur);
    }
    let cur = match current {
        Some(cur) => cur,
        None => current.insert(Current { slot: next_file(inner)?, pos: ENTRIES_AT, logs: HashMap::new(), last: 0 }),
    };
    let align = cur.slot.align();
    let max_pad = cur.slot.max_pad();
    let room = (cur.slot.len - cur.slot.len % align as u64).saturating_sub(cur.pos) as usize;
    let start = *pos;
    let mut end = start;
    let mut entries = 0;
    let bytes = buf.as_mut_slice();
    while end < bytes.len() && end - start + entry_len(bytes, end) + max_pad <= room {
        let len = entry_len(bytes, end);
        bytes[end + 8..end + 16].copy_from_slice(&cur.slot.epoch.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[end + 8..end + len]);
        bytes[end + 4..end + 8].copy_from_slice(&crc.to_le_bytes());
        end += len;
        entries += 1;
    }
    if end == start {
        // Entries are at most a batch of `MAX_BATCH` bytes and a name: never over a file.
        return Err(io::Error::other(format!(
            "journal entry of {} bytes exceeds a journal file",
            entry_len(bytes, start)
        )));
    }
    let pad = padding(cur.pos + (end - start) as u64, align);
    if align == 1 {
        cur.slot.write_at(&buf.as_slice()[start..end], cur.pos)?;
        *pos = end;
    } else if start == 0 && end == buf.len() && buf.is_aligned() {
        // The usual case: everything queued, padded where it lies.
        push_pad(buf, pad, cur.slot.epoch);
        cur.slot.write_at(buf.as_slice(), cur.pos)?;
        *pos = buf.len();
    } else {
        // Part of what was queued (the rest goes to the next file): from an aligned copy.
        staging.clear();
        staging.extend_from_slice(&buf.as_slice()[start..end]);
        push_pad(staging, pad, cur.slot.epoch);
        cur.slot.write_at(staging.as_slice(), cur.pos)?;
        *pos = end;
    }
    inner.fsync.sync_data(&cur.slot.file)?;
    cur.pos += (end - start + pad) as u64;

    for c in &done[written.entries as usize..(written.entries + entries) as usize] {
        cur.logs.entry(Arc::as_ptr(&c.log) as usize).or_insert_with(|| Arc::clone(&c.log));
    }
    written.entries += entries;
    cur.last = written.first + written.entries - 1;
    Ok(())
}

/// Bytes of padding after a write that ends at `end`, so that the next one starts on an `align`
/// boundary: none, or a padding entry, which needs room for an entry's header (see
/// [`push_pad`]).
fn padding(end: u64, align: usize) -> usize {
    let gap = (end.next_multiple_of(align as u64) - end) as usize;
    match gap {
        0 => 0,
        gap if gap < ENTRY_HEADER => gap + align,
        gap => gap,
    }
}

/// Appends a padding entry of `pad` bytes (none when 0): an entry of epoch `epoch` whose name is
/// empty, which no log's is, and whose batch is zeros. A scan passes over it.
fn push_pad(buf: &mut AlignedBuf, pad: usize, epoch: u64) {
    if pad == 0 {
        return;
    }
    let at = buf.len();
    buf.extend_zeros(pad);
    let entry = &mut buf.as_mut_slice()[at..];
    entry[..4].copy_from_slice(&(pad as u32).to_le_bytes());
    entry[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&entry[8..]);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Hands a full (or checkpointed) file to the checkpointer.
fn close(inner: &Inner, cur: Current) {
    let mut files = inner.files();
    files.closed.push_back(Closed { slot: cur.slot, logs: cur.logs.into_values().collect(), last: cur.last });
    drop(files);
    inner.files_changed.notify_all();
}

/// The next file to write: a spare, else a new one.
fn next_file(inner: &Inner) -> io::Result<Slot> {
    let mut files = inner.files();
    loop {
        if let Some(slot) = files.spares.pop() {
            drop(files);
            inner.files_changed.notify_all(); // the checkpointer makes the one after, if it may
            return Ok(slot);
        }
        if !files.creating && files.count < MAX_FILES {
            let (files, made) = create(inner, files);
            drop(files);
            inner.files_changed.notify_all();
            return made;
        }
        if files.failed || inner.queue().shutdown {
            return Err(io::Error::other("no journal file is free: a checkpoint failed, or the journal is stopping"));
        }
        files = inner.wait_files(files);
    }
}

/// Makes one more file (the caller saw that it may: none is being made, and fewer than
/// [`MAX_FILES`] exist). Returns with the lock held again, so that the caller places the file
/// before anyone sees that none is being made (the writer would make one more meanwhile).
fn create<'a>(inner: &'a Inner, mut files: MutexGuard<'a, Files>) -> (MutexGuard<'a, Files>, io::Result<Slot>) {
    files.creating = true;
    files.count += 1;
    let epoch = files.next_epoch;
    files.next_epoch += 1;
    drop(files);
    let made = create_file(inner, epoch);
    let mut files = inner.files();
    files.creating = false;
    if made.is_err() {
        files.count -= 1; // a half-made file stays as `.tmp`, and the next start removes it
    }
    (files, made)
}

/// A new journal file, zero-filled to its full length and durable with its header, so that
/// syncing entries written into it later changes no metadata. Named after the first free
/// number (only one file is made at a time).
fn create_file(inner: &Inner, epoch: u64) -> io::Result<Slot> {
    let path = (0..MAX_FILES * 4)
        .map(|n| slot_path(&inner.dir, n))
        .find(|p| !p.exists())
        .ok_or_else(|| io::Error::other("the journal directory has no free file name"))?;
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
    let mut slot = Slot {
        file: Arc::new(file),
        direct: Direct::open(&tmp, inner.direct_io),
        path,
        len: inner.file_bytes,
        epoch,
        header: 0,
    };
    // Past the page cache too, where the entries will be written so: then none of the file's
    // pages is cached for each entry write to drop.
    let mut zeros = AlignedBuf::default();
    zeros.extend_zeros(1 << 20);
    let mut at = 0;
    while at < slot.len {
        let n = (slot.len - at).min(zeros.len() as u64) as usize;
        slot.write_at(&zeros.as_slice()[..n], at)?;
        at += n as u64;
    }
    slot.file.write_all_at(&encode_header(epoch), HEADER_AT[0])?;
    inner.fsync.sync_data(&slot.file)?;
    std::fs::rename(&tmp, &slot.path)?;
    sync_dir(&inner.dir)?;
    Ok(slot)
}

fn checkpoint_loop(inner: &Inner) {
    loop {
        let closed = {
            let mut files = inner.files();
            loop {
                // Left in the queue while it is retired: `closed` empty means nothing pending.
                if let Some(closed) = files.closed.front() {
                    break closed.clone();
                }
                if inner.queue().shutdown {
                    return;
                }
                if files.spares.is_empty() && !files.creating && !files.failed && files.count < MAX_FILES {
                    // The next file, made ahead of need: made by the writer at the moment it is
                    // needed, a zero-filled file's `fdatasync` (42 ms) and a directory `fsync`
                    // (27 ms) stalled every append waiting on it (traced in W3 at 10 % load).
                    let made;
                    (files, made) = create(inner, files);
                    match made {
                        Ok(slot) => files.spares.push(slot),
                        Err(e) => {
                            tracing::warn!(dir = %inner.dir.display(), error = %e, "could not make the next journal file");
                            inner.files_changed.notify_all();
                            // Not again at once (the writer makes its own if it must).
                            files = inner
                                .files_changed
                                .wait_timeout(files, std::time::Duration::from_secs(1))
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                    }
                    inner.files_changed.notify_all();
                    // The lock was let go meanwhile: look at everything again (a stop, too).
                    continue;
                }
                files = inner.wait_files(files);
            }
        };
        let last = closed.last;
        match retire(inner, closed) {
            Ok(spare) => {
                let mut files = inner.files();
                files.closed.pop_front();
                files.spares.push(spare);
                files.retired = files.retired.max(last);
            }
            Err(e) => {
                let mut files = inner.files();
                let path = files.closed.pop_front().map(|c| c.slot.path);
                tracing::error!(file = ?path, error = %e, "journal checkpoint failed; the file is kept for the next start's replay, and logs sync their segments from now on");
                inner.failed.store(true, Ordering::Release);
                files.failed = true;
            }
        }
        inner.files_changed.notify_all();
    }
}

/// Syncs what `closed` covers into the segments, then gives its file a new epoch, which
/// retires the entries in it, and returns the file as a spare. No name changes: a checkpoint
/// costs the filesystem no commit of its own beyond the segments' (see the module docs).
///
/// A file of few logs syncs each log's segment in turn: a journal sync issued meanwhile then
/// waits behind one segment's pages at the disk, not behind all of them at once (W3 at 10 % of
/// the peak, 4 partitions, checkpoints of 4 MiB: p99 2.1 ms against 2.9 ms with one `syncfs`,
/// medians of six alternated runs). Wide files (W6's thousand logs) take one `syncfs`: an
/// `fdatasync` of each would commit the filesystem's journal a thousand times.
fn retire(inner: &Inner, closed: Closed) -> io::Result<Slot> {
    if inner.fsync.can_sync_filesystem() && closed.logs.len() > SYNC_EACH_MAX_LOGS {
        for log in &closed.logs {
            log.write_behind().map_err(|e| io::Error::other(e.to_string()))?;
        }
        inner.fsync.sync_filesystem(&closed.slot.file)?;
    } else {
        for log in &closed.logs {
            log.sync_active().map_err(|e| io::Error::other(e.to_string()))?;
        }
    }
    let epoch = {
        let mut files = inner.files();
        files.next_epoch += 1;
        files.next_epoch - 1
    };
    let mut slot = closed.slot;
    slot.restamp(epoch, inner.fsync.as_ref())?;
    Ok(slot)
}

/// The length of the journal's files for a configured size: room for at least a few entries,
/// in whole pages (which `O_DIRECT` writes need).
fn file_len(configured: u64) -> u64 {
    configured.max(ENTRIES_AT + (16 << 10)).next_multiple_of(aligned::ALIGN as u64)
}

fn slot_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{n}.slot"))
}

fn encode_header(epoch: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(&HEADER_MAGIC);
    header[4..6].copy_from_slice(&HEADER_VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// The epoch of a header block, if it holds a valid header.
fn decode_header(block: &[u8]) -> Option<u64> {
    let h: &[u8; HEADER_LEN] = block.get(..HEADER_LEN)?.try_into().ok()?;
    let version = u16::from_le_bytes([h[4], h[5]]);
    let valid = h[..4] == HEADER_MAGIC
        && (1..=HEADER_VERSION).contains(&version)
        && h[16..] == crc32c::crc32c(&h[..16]).to_le_bytes();
    let epoch = u64::from_le_bytes(h[8..16].try_into().ok()?);
    valid.then_some(epoch)
}

/// The epoch in a file's current header, and the block holding it: of the two valid headers,
/// the later.
fn current_header(file: &File) -> io::Result<Option<(u64, usize)>> {
    let mut best = None;
    for (block, &at) in HEADER_AT.iter().enumerate() {
        let mut bytes = [0u8; HEADER_LEN];
        match file.read_exact_at(&mut bytes, at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(e),
        }
        if let Some(epoch) = decode_header(&bytes) {
            best = best.max(Some((epoch, block)));
        }
    }
    Ok(best)
}

/// The epoch in a journal file's name as the journal wrote them before its files had headers
/// (`<epoch>.wal` in use, `<epoch>.spare` retired); `kind`: `wal` or `spare`.
fn legacy_epoch(name: &str, kind: &str) -> Option<u64> {
    let stem = name.strip_suffix(kind)?.strip_suffix('.')?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

/// One entry found by a scan.
struct Entry {
    name: String,
    batch: Vec<u8>,
}

/// How a scan of some bytes ended.
enum Scanned {
    /// At an entry that does not check, or carries another epoch: the end of the file's entries.
    End,
    /// At an entry that goes past the bytes given: more must be read.
    More,
}

/// The valid entries of `epoch` at the start of `bytes`, how many bytes they take, and how
/// the scan ended.
fn scan(bytes: &[u8], epoch: u64, entries: &mut Vec<Entry>) -> (usize, Scanned) {
    let mut at = 0;
    while at + ENTRY_HEADER <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        if !(ENTRY_HEADER..=MAX_ENTRY).contains(&len) {
            return (at, Scanned::End);
        }
        if at + len > bytes.len() {
            return (at, Scanned::More);
        }
        let entry = &bytes[at..at + len];
        let crc = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
        let mut epoch_bytes = [0u8; 8];
        epoch_bytes.copy_from_slice(&entry[8..16]);
        if crc != crc32c::crc32c(&entry[8..]) || u64::from_le_bytes(epoch_bytes) != epoch {
            return (at, Scanned::End);
        }
        let name_len = u16::from_le_bytes([entry[16], entry[17]]) as usize;
        if name_len == 0 {
            at += len; // padding (see `push_pad`)
            continue;
        }
        let Some(name) = entry.get(ENTRY_HEADER..ENTRY_HEADER + name_len) else { return (at, Scanned::End) };
        let Ok(name) = std::str::from_utf8(name) else { return (at, Scanned::End) };
        entries.push(Entry { name: name.to_string(), batch: entry[ENTRY_HEADER + name_len..].to_vec() });
        at += len;
    }
    (at, Scanned::More)
}

/// The valid entries of `epoch` in `file` from `from`, read a chunk at a time (a file is read
/// only as far as its entries go).
fn scan_file(file: &File, from: u64, epoch: u64) -> io::Result<Vec<Entry>> {
    let len = file.metadata()?.len();
    let mut entries = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut at = from; // the file offset of `buf[0]`
    loop {
        let end = at + buf.len() as u64;
        let n = (len.saturating_sub(end) as usize).min(SCAN_CHUNK);
        if n == 0 {
            return Ok(entries); // the rest is an entry cut short by the file's end
        }
        let old = buf.len();
        buf.resize(old + n, 0);
        file.read_exact_at(&mut buf[old..], end)?;
        match scan(&buf, epoch, &mut entries) {
            (_, Scanned::End) => return Ok(entries),
            (used, Scanned::More) => {
                buf.drain(..used);
                at += used as u64;
            }
        }
    }
}

/// The journal's files once [`replay`] has put their entries into the logs, for
/// [`Journal::start`].
pub(crate) struct Replayed {
    slots: Vec<Slot>,
    next_epoch: u64,
}

/// Appends every journaled batch its log lacks (see the module docs), syncs those logs, and
/// retires the entries. Also takes over journal files written before they had headers.
///
/// # Errors
/// What stops a log from opening or being appended to, or a journal file from being read or
/// retired; the journal's entries are then left as they were.
pub(crate) fn replay(
    root: &Path,
    file_bytes: u64,
    fsync: &dyn Fsync,
    shared: impl FnOnce() -> Result<Arc<Shared>>,
) -> Result<Replayed> {
    let dir = root.join(DIR_NAME);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let mut slots = Vec::new();
    let mut legacy = Vec::new();
    let mut last_epoch = None;
    let mut by_log: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut add = |entries: Vec<Entry>| {
        for e in entries {
            by_log.entry(e.name).or_default().push(e.batch);
        }
    };
    for entry in std::fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if name.strip_suffix(".slot").is_some_and(|n| n.parse::<usize>().is_ok()) {
            let file = OpenOptions::new().read(true).write(true).open(&path).at(&path)?;
            let header = current_header(&file).at(&path)?;
            if let Some((epoch, _)) = header {
                add(scan_file(&file, ENTRIES_AT, epoch).at(&path)?);
                last_epoch = last_epoch.max(Some(epoch));
            }
            let len = file.metadata().at(&path)?.len();
            let (epoch, header) = header.unwrap_or((0, 1));
            slots.push(Slot { file: Arc::new(file), direct: None, path, len, epoch, header });
        } else if let Some(epoch) = legacy_epoch(&name, "wal") {
            let file = File::open(&path).at(&path)?;
            add(scan_file(&file, 0, epoch).at(&path)?);
            last_epoch = last_epoch.max(Some(epoch));
            legacy.push(path);
        } else if let Some(epoch) = legacy_epoch(&name, "spare") {
            last_epoch = last_epoch.max(Some(epoch));
            legacy.push(path);
        } else if name.ends_with(".tmp") {
            std::fs::remove_file(&path).at(&path)?;
        }
    }
    if !by_log.is_empty() {
        // Logs of their own (no journal), made only when there is something to replay.
        let shared = shared()?;
        for (name, batches) in by_log {
            replay_log(&root.join(&name), batches, &shared)?;
        }
    }
    // Every file gets a new epoch, so that none of what it holds counts any more; a file of
    // another size than configured is removed instead (the journal makes new ones).
    let mut next_epoch = last_epoch.map_or(0, |e| e + 1);
    let file_bytes = file_len(file_bytes);
    let mut kept = Vec::with_capacity(slots.len());
    for mut slot in slots {
        if slot.len == file_bytes {
            slot.restamp(next_epoch, fsync).at(&slot.path)?;
            next_epoch += 1;
            kept.push(slot);
        } else {
            legacy.push(slot.path);
        }
    }
    if !legacy.is_empty() {
        for path in &legacy {
            std::fs::remove_file(path).at(path)?;
        }
        sync_dir(&dir).at(&dir)?;
    }
    Ok(Replayed { slots: kept, next_epoch })
}

/// Appends to the log in `dir` the batches it lacks, in offset order, and syncs it.
fn replay_log(dir: &Path, mut batches: Vec<Vec<u8>>, shared: &Arc<Shared>) -> Result<()> {
    if !dir.is_dir() {
        tracing::info!(log = %dir.display(), batches = batches.len(), "journal entries of a deleted log dropped");
        return Ok(());
    }
    let base = |b: &Vec<u8>| BatchHeader::decode(b).map_or(u64::MAX, |h| h.base_offset);
    batches.sort_by_key(base);
    // Opened as it stands on disk, with nothing that could roll a segment or sync on its own.
    let config = LogConfig {
        segment_bytes: crate::config::MAX_SEGMENT_BYTES,
        segment_ms: None,
        durability: Durability::Never,
        ..LogConfig::default()
    };
    let log = Log::open_with(dir, config, Arc::clone(shared))?;
    let mut appended = 0usize;
    for batch in batches {
        let next = log.log_end_offset();
        match crate::batch::ValidBatch::check(batch) {
            Ok(batch) if batch.header().base_offset == next => {
                log.replay_append(batch)?;
                appended += 1;
            }
            Ok(batch) if batch.header().base_offset < next => {}
            Ok(batch) => {
                tracing::error!(log = %dir.display(), base_offset = batch.header().base_offset, log_end = next, "journal entry beyond the log's end; the records between are lost");
                break;
            }
            Err(e) => {
                tracing::error!(log = %dir.display(), error = %e, "journal entry holds a damaged batch; skipped");
            }
        }
    }
    log.flush()?;
    if appended > 0 {
        tracing::info!(log = %dir.display(), batches = appended, "replayed from the journal");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_brings_a_write_to_a_block_boundary_with_room_for_an_entry_header() {
        assert_eq!(padding(4096 + 100, 1), 0, "buffered writes are not padded");
        assert_eq!(padding(4096, 512), 0);
        assert_eq!(padding(4096 + 100, 512), 412);
        assert_eq!(padding(4096 + 500, 512), 12 + 512, "12 bytes hold no entry header");
        assert_eq!(padding(4096 + 4096 - 18, 4096), 18);
        for end in 4096..4096 + 2 * 4096 {
            let pad = padding(end, 4096);
            assert!(pad == 0 || (ENTRY_HEADER..=MAX_PAD).contains(&pad), "{end}: {pad}");
            assert_eq!((end + pad as u64) % 4096, 0);
        }
    }

    #[test]
    fn a_padding_entry_checks_and_is_passed_over() {
        let mut buf = AlignedBuf::default();
        push_pad(&mut buf, 300, 9);
        let mut entries = Vec::new();
        assert!(matches!(scan(buf.as_slice(), 9, &mut entries), (300, Scanned::More)));
        assert!(entries.is_empty());
        assert!(
            matches!(scan(buf.as_slice(), 8, &mut entries), (0, Scanned::End)),
            "another epoch's padding ends a scan"
        );
    }
}
