//! The log manager: the logs of one data directory and what they share — the bounded cache of
//! open files, the flusher threads (a bounded number of fsyncs in flight) and the clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::{Clock, SystemClock};
use crate::config::LogConfig;
use crate::error::{Error, IoContext, Result};
use crate::file_cache::FileCache;
use crate::flusher::{Flusher, Fsync, OsFsync};
use crate::journal::{self, Journal};
use crate::partition_log::{Log, Shared};

/// Options shared by every log of a manager.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Most segment files held open at once, across all logs.
    pub max_open_files: usize,
    /// Threads running `fdatasync`s side by side (see [`crate::flusher`]).
    pub flush_threads: usize,
    pub clock: Arc<dyn Clock>,
    pub fsync: Arc<dyn Fsync>,
    /// How long an idle idempotent producer's sequence state is kept (see
    /// [`crate::producer_state`]); a retry after that is appended again.
    pub producer_expiry: std::time::Duration,
    /// Small appends to logs with durability `always` are made durable through one shared
    /// write-ahead journal (see `storage/src/journal.rs`) instead of a sync of each segment.
    pub journal: bool,
    /// Size of each journal file (zero-filled when created; at most four exist):
    /// [`DEFAULT_JOURNAL_FILE_BYTES`] unless set.
    pub journal_file_bytes: u64,
    /// `always` logs' batches that the journal does not take are written by their flush, past
    /// the page cache (see `storage/src/direct.rs`), rather than by their append into it. Off
    /// by default: faster appends under load, but readers then find in memory only the newest
    /// `recent_bytes`, and read the rest from the disk.
    pub direct_writes: bool,
    /// With `direct_writes`, memory all `always` logs together keep of their newest bytes for
    /// their readers (see `storage/src/recent.rs`): [`crate::DEFAULT_RECENT_BYTES`] unless set.
    pub recent_bytes: usize,
    /// The journal's entries (and, with `direct_writes`, segment writes) go past the page cache
    /// with `O_DIRECT` where the filesystem takes it (see `storage/src/journal.rs`). Off: through
    /// the page cache, as on a filesystem without `O_DIRECT` — for filesystems whose `O_DIRECT`
    /// is slow or emulated, and for the tests of that path.
    pub direct_io: bool,
}

/// Journal file size by default. A file holding entries of many logs is checkpointed when full
/// (see `storage/src/journal.rs`), so this sets how much of each log a checkpoint writes to its
/// segment at once: 64 KiB for each of a thousand partitions, where 32 MiB files left 32 KiB,
/// each write ending in a partly filled page that the next checkpoint writes again. W6 (1,000
/// partitions, durable), alternated run by run: 32 MiB 318–381k msgs/s (median 358k, ten runs),
/// 64 MiB 324–439k (399k, ten runs), 128 MiB 357–437k (392k, six runs), so 64 MiB: the gain of
/// 128 at half the disk (at most four files exist). Topics with few partitions checkpoint every few MiB
/// whatever the size.
pub const DEFAULT_JOURNAL_FILE_BYTES: u64 = 64 << 20;

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            max_open_files: 1024,
            flush_threads: crate::flusher::FLUSH_THREADS,
            clock: Arc::new(SystemClock),
            fsync: Arc::new(OsFsync),
            producer_expiry: crate::producer_state::DEFAULT_EXPIRY,
            journal: true,
            journal_file_bytes: DEFAULT_JOURNAL_FILE_BYTES,
            direct_writes: false,
            recent_bytes: crate::DEFAULT_RECENT_BYTES,
            direct_io: true,
        }
    }
}

/// Opens and owns partition logs under one root directory.
#[derive(Debug)]
pub struct LogManager {
    root: PathBuf,
    shared: Arc<Shared>,
    // A std mutex: held for map operations and while a log opens (recovery must not race).
    logs: Mutex<HashMap<String, Log>>,
}

impl LogManager {
    /// Opens the logs' root directory, first replaying the journal a crash may have left
    /// (see `storage/src/journal.rs`).
    ///
    /// # Errors
    /// [`Error::Io`] if the root cannot be created or a flusher thread cannot start; a log the
    /// replay cannot open or append to.
    pub fn new(root: impl Into<PathBuf>, options: StorageOptions) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).at(&root)?;
        // Replayed whenever a journal is there, also with the journal turned off since: it may
        // hold acknowledged appends a crash took from the segments.
        let replayed = if options.journal || root.join(journal::DIR_NAME).is_dir() {
            // Through logs of their own (the manager's own come later, with their configs): no
            // journal, one flusher thread, closed again when done.
            let replay_options = StorageOptions { flush_threads: 1, ..options.clone() };
            let fsync = options.fsync.as_ref();
            Some(journal::replay(&root, options.journal_file_bytes, fsync, || new_shared(replay_options, &root, None))?)
        } else {
            None
        };
        let journal = match replayed {
            Some(replayed) if options.journal => Some(
                Journal::start(
                    &root,
                    options.journal_file_bytes,
                    options.direct_io,
                    Arc::clone(&options.fsync),
                    replayed,
                )
                .at(&root)?,
            ),
            _ => None,
        };
        Ok(Self { shared: new_shared(options, &root, journal)?, root, logs: Mutex::new(HashMap::new()) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (recovering if needed) the log stored in `<root>/<name>`, or returns it if open.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad name or config; recovery's errors.
    pub fn open_log(&self, name: &str, config: LogConfig) -> Result<Log> {
        if name.is_empty() || name.contains(['/', '\\', '\0']) || [".", "..", journal::DIR_NAME].contains(&name) {
            return Err(Error::InvalidConfig {
                key: "name",
                reason: format!("{name:?} is not a valid log directory name"),
            });
        }
        // Opened under the map lock: two handles recovering the same files at once could cut
        // each other's tail.
        let mut logs = self.lock();
        if let Some(log) = logs.get(name) {
            return Ok(log.clone());
        }
        let log = Log::open_with(&self.root.join(name), config, Arc::clone(&self.shared))?;
        logs.insert(name.to_string(), log.clone());
        Ok(log)
    }

    pub fn get(&self, name: &str) -> Option<Log> {
        self.lock().get(name).cloned()
    }

    /// Deletes a log and its files; later appends through any handle fail with `LogDeleted`.
    ///
    /// # Errors
    /// [`Error::Io`] if its directory cannot be removed.
    pub fn delete_log(&self, name: &str) -> Result<()> {
        let log = self.lock().remove(name);
        match log {
            Some(log) => log.delete(),
            None => Ok(()),
        }
    }

    /// Segment files currently held open.
    pub fn open_files(&self) -> usize {
        self.shared.files.len()
    }

    /// fsyncs every open log, and their segments behind the journal (so that a restart has
    /// nothing to replay).
    ///
    /// # Errors
    /// The first log that fails.
    pub fn flush_all(&self) -> Result<()> {
        let logs: Vec<Log> = self.lock().values().cloned().collect();
        logs.iter().try_for_each(Log::flush)?;
        match &self.shared.journal {
            Some(journal) => journal.checkpoint().at(&self.root),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Log>> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for LogManager {
    fn drop(&mut self) {
        if let Some(journal) = &self.shared.journal {
            journal.stop();
        }
    }
}

fn new_shared(options: StorageOptions, root: &Path, journal: Option<Journal>) -> Result<Arc<Shared>> {
    Ok(Arc::new(Shared {
        files: FileCache::new(options.max_open_files),
        clock: options.clock,
        flusher: Flusher::start(options.flush_threads, Arc::clone(&options.fsync)).at(root)?,
        fsync: options.fsync,
        producer_expiry_ms: options.producer_expiry.as_millis().min(i64::MAX as u128) as i64,
        journal,
        direct_writes: options.direct_writes,
        direct_io: options.direct_io,
        recent: crate::recent::RecentPool::new(options.recent_bytes),
    }))
}

impl Log {
    /// Opens a standalone log (its own file cache and flusher); use a [`LogManager`] for many.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; recovery's errors.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Self::open_with_options(
            dir,
            config,
            StorageOptions { max_open_files: 64, flush_threads: 1, ..Default::default() },
        )
    }

    /// Like [`Log::open`], with explicit options (a test clock, a fault-injecting fsync).
    ///
    /// # Errors
    /// As [`Log::open`].
    pub fn open_with_options(dir: impl AsRef<Path>, config: LogConfig, options: StorageOptions) -> Result<Log> {
        let dir = dir.as_ref();
        Log::open_with(dir, config, new_shared(options, dir, None)?)
    }

    /// Removes the log's files. Waiting appends fail; later calls get [`Error::LogDeleted`].
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be removed.
    pub fn delete(&self) -> Result<()> {
        let _maintenance = self.inner.maintenance.lock().unwrap_or_else(PoisonError::into_inner);
        let mut st = self.lock();
        st.deleted = true;
        for w in st.take_waiters() {
            w.send(Err(Error::LogDeleted { dir: self.dir().to_path_buf() }));
        }
        for seg in st.sealed.values() {
            self.inner.shared.files.evict(seg.id);
        }
        self.inner.shared.files.evict(st.active.id);
        drop(st);
        self.inner.forget_segment();
        self.forget_journaled()?;
        std::fs::remove_dir_all(self.dir()).at(self.dir())?;
        if let Some(parent) = self.dir().parent() {
            crate::segment::sync_dir(parent).at(parent)?;
        }
        Ok(())
    }
}
