//! A bounded LRU of open segment files, shared by every log of a [`crate::LogManager`], so that
//! ten thousand partitions do not hold tens of thousands of descriptors.
//!
//! A handle is an `Arc<File>`: evicting it only drops the cache's reference, so I/O already under
//! way finishes on the descriptor it started with. Each segment file incarnation has its own
//! [`FileId`] and remembers its inode: reopening a path that compaction or retention replaced or
//! deleted is reported as [`std::io::ErrorKind::NotFound`], never read as if it were the old file.

use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

/// Identity of one segment file incarnation (a rewrite gets a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId(u64);

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

impl FileId {
    pub fn fresh() -> Self {
        FileId(NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed))
    }
}

/// The LRU of open files.
#[derive(Debug)]
pub struct FileCache {
    // A std mutex: the critical sections are hash-map operations, never I/O.
    files: Mutex<LruCache<FileId, Arc<File>>>,
}

impl FileCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Self { files: Mutex::new(LruCache::new(capacity)) }
    }

    /// Returns the open handle of `id`, opening `path` on a miss (read-write when `writable`).
    ///
    /// # Errors
    /// The open's I/O error; `NotFound` also when `path` is no longer the inode `ino`.
    pub fn get(&self, id: FileId, path: &Path, ino: u64, writable: bool) -> io::Result<Arc<File>> {
        if let Some(file) = self.lock().get(&id) {
            return Ok(Arc::clone(file));
        }
        let file = OpenOptions::new().read(true).write(writable).open(path)?;
        if file.metadata()?.ino() != ino {
            return Err(io::Error::new(io::ErrorKind::NotFound, "segment file was replaced"));
        }
        let file = Arc::new(file);
        let mut files = self.lock();
        if let Some(existing) = files.get(&id) {
            return Ok(Arc::clone(existing));
        }
        files.put(id, Arc::clone(&file));
        Ok(file)
    }

    /// Puts a handle the caller already opened (a freshly created segment).
    pub fn insert(&self, id: FileId, file: Arc<File>) {
        self.lock().put(id, file);
    }

    pub fn evict(&self, id: FileId) {
        self.lock().pop(&id);
    }

    /// Number of descriptors currently held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<FileId, Arc<File>>> {
        // A panic while holding this lock cannot leave the map inconsistent: keep going.
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
