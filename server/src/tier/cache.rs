//! A bounded in-memory cache of tiered objects (whole Parquet files), least recently used first
//! out. Objects are immutable, so entries never go stale.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use lru::LruCache;

#[derive(Debug)]
struct Inner {
    entries: LruCache<String, Bytes>,
    bytes: u64,
}

/// Object key → bytes, at most `capacity` bytes in all (an object larger than that is not kept).
#[derive(Debug)]
pub struct ObjectCache {
    inner: Mutex<Inner>,
    capacity: u64,
}

impl ObjectCache {
    pub fn new(capacity: u64) -> Self {
        Self { inner: Mutex::new(Inner { entries: LruCache::unbounded(), bytes: 0 }), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.lock().entries.get(key).cloned()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains(key)
    }

    pub fn insert(&self, key: &str, bytes: Bytes) {
        let size = bytes.len() as u64;
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.put(key.to_string(), bytes) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += size;
        while inner.bytes > self.capacity {
            match inner.entries.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }

    pub fn remove(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.entries.pop(key) {
            inner.bytes -= old.len() as u64;
        }
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_capacity_dropping_the_least_recently_used() {
        let cache = ObjectCache::new(10);
        cache.insert("a", Bytes::from_static(b"aaaa"));
        cache.insert("b", Bytes::from_static(b"bbbb"));
        assert!(cache.get("a").is_some()); // a is now the most recent
        cache.insert("c", Bytes::from_static(b"cccc"));
        assert_eq!((cache.contains("a"), cache.contains("b"), cache.contains("c")), (true, false, true));
        assert_eq!(cache.size(), 8);
        cache.insert("huge", Bytes::from(vec![0u8; 11]));
        assert!(!cache.contains("huge"), "larger than the whole cache: not kept");
        cache.remove("a");
        assert_eq!(cache.size(), 4);
    }
}
