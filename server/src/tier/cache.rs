//! A bounded in-memory cache of tiered objects, least recently used first out. Objects are
//! immutable, so entries never go stale.

use std::sync::{Mutex, PoisonError};

use lru::LruCache;

/// What the cache holds: cheap to clone (shared), with a size in bytes.
pub trait Weigh {
    fn weight(&self) -> u64;
}

impl Weigh for bytes::Bytes {
    fn weight(&self) -> u64 {
        self.len() as u64
    }
}

#[derive(Debug)]
struct Inner<V> {
    entries: LruCache<String, V>,
    bytes: u64,
}

/// Object key → value, at most `capacity` bytes in all (a value larger than that is not kept).
#[derive(Debug)]
pub struct ObjectCache<V> {
    inner: Mutex<Inner<V>>,
    capacity: u64,
}

impl<V: Weigh + Clone> ObjectCache<V> {
    pub fn new(capacity: u64) -> Self {
        Self { inner: Mutex::new(Inner { entries: LruCache::unbounded(), bytes: 0 }), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<V> {
        self.lock().entries.get(key).cloned()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().entries.contains(key)
    }

    pub fn insert(&self, key: &str, value: V) {
        let size = value.weight();
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.put(key.to_string(), value) {
            inner.bytes -= old.weight();
        }
        inner.bytes += size;
        while inner.bytes > self.capacity {
            match inner.entries.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.weight(),
                None => break,
            }
        }
    }

    pub fn remove(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.entries.pop(key) {
            inner.bytes -= old.weight();
        }
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

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
