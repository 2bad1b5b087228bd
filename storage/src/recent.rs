//! The newest bytes of `always` logs, kept in memory for their readers.
//!
//! A `flush=always` log's batches are written by the flusher with `O_DIRECT` (see
//! [`crate::direct`]), so they never enter the page cache, and a consumer reading behind its
//! producers would read every batch back from the disk. Each such write also hands its batches
//! (the very buffers the appends built: no copy) to the log's [`Recent`], a contiguous span of the
//! log's newest bytes (across rolls: one run per segment) that reads take from memory instead of
//! the file. This is the page cache's job for the other logs, done by the process for these (as
//! Redpanda's batch cache does for its `O_DIRECT` writes).
//!
//! All logs of a manager share one budget, [`RecentPool`] (`StorageOptions::recent_bytes`,
//! [`DEFAULT_POOL_BYTES`] by default).
//! A log that finds the budget spent drops the oldest bytes of the log that least recently had
//! some dropped, round robin, so every log keeps its newest bytes longest and idle logs' spans
//! drain first; a log whose span is busy is passed over, never waited for; a log then drops its
//! own oldest bytes. Retention and compaction drop the bytes of the segments they remove or
//! rewrite.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, Weak};

use bytes::Bytes;

use crate::partition_log::LogInner;

/// Bytes all logs of a manager keep at most, by default: enough for logs' tailing readers (a
/// few fetches behind); not for catching up. Held in memory by the process, the bytes cost what
/// the page cache's pages cost (on this project's VM, fresh memory for every new batch: a cache
/// of 1 GiB took W2's durable produce from 0.63-0.74M to 0.22-0.42M msgs/s, while its consumers
/// read the gigabyte from memory).
pub const DEFAULT_POOL_BYTES: usize = 64 << 20;

/// The budget the [`Recent`] spans of one manager's logs share.
#[derive(Debug)]
pub(crate) struct RecentPool {
    cap: usize,
    used: AtomicUsize,
    /// Logs holding a span, in the order their oldest bytes are dropped (a log is listed once,
    /// see `LogInner::listed`).
    holders: Mutex<VecDeque<Weak<LogInner>>>,
}

impl RecentPool {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self { cap, used: AtomicUsize::new(0), holders: Mutex::new(VecDeque::new()) })
    }

    fn try_reserve(&self, len: usize) -> bool {
        let fits = |used: usize| used.checked_add(len).filter(|&u| u <= self.cap);
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, fits).is_ok()
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::AcqRel);
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn holders(&self) -> std::sync::MutexGuard<'_, VecDeque<Weak<LogInner>>> {
        self.holders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists `me` as holding a span.
    fn list(&self, me: &Weak<LogInner>) {
        let mut holders = self.holders();
        // Logs closed since are dropped from the list now and then (a `Weak` keeps their
        // memory), at a cost that stays constant per listing.
        if holders.len() >= 64 && holders.len().is_power_of_two() {
            holders.retain(|log| log.strong_count() > 0);
        }
        holders.push_back(me.clone());
    }

    /// Drops the oldest bytes of other logs, round robin, until `len` more fit or every other
    /// log was tried once. Called under `me`'s span lock: other logs' are only tried.
    fn make_room(&self, me: &Weak<LogInner>, len: usize) -> bool {
        let mut tries = self.holders().len();
        while !self.try_reserve(len) {
            if tries == 0 {
                return false;
            }
            tries -= 1;
            let Some(log) = self.holders().pop_front() else { return false };
            if Weak::ptr_eq(&log, me) {
                self.holders().push_back(log);
                continue;
            }
            let Some(inner) = log.upgrade() else { continue };
            let mut recent = match inner.recent.try_lock() {
                Ok(recent) => recent,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    self.holders().push_back(log);
                    continue;
                }
            };
            let mut freed = 0;
            while freed < len && recent.bytes > 0 {
                freed += recent.pop_front();
            }
            if recent.bytes > 0 {
                self.holders().push_back(log);
            } else {
                inner.listed.store(false, Ordering::Release);
            }
        }
        true
    }
}

/// A log's newest bytes, as chunks (one per batch or write): in each segment a contiguous run,
/// up to the newest byte written.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// The chunks, each with its segment's base offset and the file position of its first byte,
    /// in order.
    chunks: VecDeque<(u64, u64, Bytes)>,
    bytes: usize,
    /// The budget `bytes` is counted in (set by the first keep).
    pool: Option<Arc<RecentPool>>,
}

impl Recent {
    /// The segment and position after the newest byte.
    fn end(&self) -> Option<(u64, u64)> {
        self.chunks.back().map(|(base, at, c)| (*base, at + c.len() as u64))
    }

    pub(crate) fn clear(&mut self) {
        if let Some(pool) = &self.pool {
            pool.release(self.bytes);
        }
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Drops the oldest chunk; returns its length.
    fn pop_front(&mut self) -> usize {
        let Some((_, _, chunk)) = self.chunks.pop_front() else { return 0 };
        self.bytes -= chunk.len();
        if let Some(pool) = &self.pool {
            pool.release(chunk.len());
        }
        chunk.len()
    }

    /// Keeps `chunks`, written back to back at `at` of the segment `base`, as `me`'s newest
    /// bytes. A write that does not continue its segment's run (or goes to an older segment)
    /// starts the span anew; one the budget has no room for leaves the log without a span (its
    /// readers then read the file).
    pub(crate) fn keep(&mut self, pool: &Arc<RecentPool>, me: &Weak<LogInner>, base: u64, at: u64, chunks: &[Bytes]) {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let continues = match self.end() {
            None => true,
            Some((b, end)) => (b == base && end == at) || b < base,
        };
        if len > pool.cap {
            // A write larger than the whole budget is not kept, and takes no one's room.
            self.clear();
            return;
        }
        if !continues {
            self.clear();
        }
        self.pool.get_or_insert_with(|| Arc::clone(pool));
        while !pool.make_room(me, len) {
            if self.bytes == 0 {
                return;
            }
            self.pop_front();
        }
        if self.bytes == 0
            && let Some(inner) = me.upgrade()
            && !inner.listed.swap(true, Ordering::AcqRel)
        {
            pool.list(me);
        }
        let mut pos = at;
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            self.chunks.push_back((base, pos, chunk.clone()));
            pos += chunk.len() as u64;
        }
        self.bytes += len;
    }

    /// Drops the bytes of the segments `gone` says were removed or rewritten.
    pub(crate) fn forget(&mut self, gone: impl Fn(u64) -> bool) {
        let before = self.bytes;
        self.chunks.retain(|(base, _, _)| !gone(*base));
        self.bytes = self.chunks.iter().map(|(_, _, c)| c.len()).sum();
        if let Some(pool) = &self.pool {
            pool.release(before - self.bytes);
        }
    }

    /// The part of the span a read of the segment `base` from position `from` up to `to` may
    /// use.
    pub(crate) fn view(&self, base: u64, from: u64, to: u64) -> Option<RecentView> {
        let first = self.chunks.partition_point(|(b, at, c)| (*b, at + c.len() as u64) <= (base, from));
        let mut view = RecentView { start: 0, chunks: Vec::new(), bytes: 0 };
        for (b, at, chunk) in self.chunks.range(first..) {
            if *b != base || *at >= to {
                break;
            }
            if view.chunks.is_empty() {
                view.start = *at;
            }
            view.chunks.push(chunk.clone());
            view.bytes += chunk.len();
        }
        (view.bytes > 0).then_some(view)
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Chunks of a log's cached bytes (`Recent`) taken for one read: a contiguous run of a
/// segment's bytes.
#[derive(Debug, Clone)]
pub struct RecentView {
    start: u64,
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl RecentView {
    /// File position of the first byte held.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.start + self.bytes as u64
    }

    /// Appends to `buf` the bytes from position `at` on (which must lie in the view), at most
    /// `max` of them.
    pub(crate) fn copy_into(&self, buf: &mut Vec<u8>, mut at: u64, mut max: usize) {
        let mut pos = self.start;
        for chunk in &self.chunks {
            let end = pos + chunk.len() as u64;
            if max == 0 {
                return;
            }
            if end > at {
                let from = (at - pos) as usize;
                let n = (chunk.len() - from).min(max);
                buf.extend_from_slice(&chunk[from..from + n]);
                at += n as u64;
                max -= n;
            }
            pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(recent: &Recent) -> Vec<u8> {
        let (base, start, _) = recent.chunks.front().cloned().expect("a span");
        let view = recent.view(base, start, u64::MAX).expect("a span");
        let mut out = Vec::new();
        view.copy_into(&mut out, view.start(), usize::MAX);
        out
    }

    #[test]
    fn a_span_keeps_contiguous_writes_and_restarts_at_a_gap() {
        let pool = RecentPool::new(1 << 20);
        let me = Weak::new();
        let mut recent = Recent::default();
        recent.keep(&pool, &me, 1, 100, &[Bytes::from_static(b"abc"), Bytes::from_static(b"de")]);
        recent.keep(&pool, &me, 1, 105, &[Bytes::from_static(b"fg")]);
        assert_eq!(kept(&recent), b"abcdefg");
        assert_eq!(pool.used(), 7);
        let view = recent.view(1, 103, 106).expect("covered");
        let mut out = Vec::new();
        view.copy_into(&mut out, 103, 3);
        assert_eq!(out, b"def");
        assert!(recent.view(1, 107, 117).is_none());
        assert!(recent.view(1, 90, 100).is_none());
        recent.keep(&pool, &me, 1, 200, &[Bytes::from_static(b"xy")]);
        assert_eq!((recent.chunks[0].1, kept(&recent)), (200, b"xy".to_vec()));
        assert_eq!(pool.used(), 2);
        drop(recent);
        assert_eq!(pool.used(), 0);
    }

    #[test]
    fn a_full_budget_drops_the_logs_own_oldest_bytes_when_no_other_log_has_any() {
        let pool = RecentPool::new(4 << 20);
        let me = Weak::new();
        let mut recent = Recent::default();
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for i in 0..6u64 {
            recent.keep(&pool, &me, 1, i << 20, std::slice::from_ref(&chunk));
        }
        assert_eq!((recent.chunks[0].1, recent.bytes), (2 << 20, 4 << 20));
        assert_eq!(pool.used(), 4 << 20);
        assert!(recent.view(2, 2 << 20, 6 << 20).is_none(), "another segment");
        let view = recent.view(1, (3 << 20) + 5, 4 << 20).expect("covered");
        assert_eq!((view.start(), view.end()), (3 << 20, 4 << 20));
    }

    #[test]
    fn a_span_runs_on_into_the_next_segment_and_forgets_removed_ones() {
        let pool = RecentPool::new(1 << 20);
        let me = Weak::new();
        let mut recent = Recent::default();
        recent.keep(&pool, &me, 0, 32, &[Bytes::from_static(b"abc")]);
        recent.keep(&pool, &me, 3, 32, &[Bytes::from_static(b"defg")]);
        let mut out = Vec::new();
        recent.view(0, 33, 100).expect("the first segment's run").copy_into(&mut out, 33, 10);
        assert_eq!(out, b"bc");
        assert_eq!(recent.view(3, 32, 34).map(|v| (v.start(), v.end())), Some((32, 36)));
        recent.forget(|base| base < 3);
        assert!(recent.view(0, 32, 100).is_none());
        assert_eq!(pool.used(), 4);
        recent.keep(&pool, &me, 0, 35, &[Bytes::from_static(b"x")]);
        assert_eq!(pool.used(), 1, "an older segment starts the span anew");
    }

    #[test]
    fn a_spent_budget_leaves_the_log_without_a_span() {
        let pool = RecentPool::new(10);
        let me = Weak::new();
        let (mut a, mut b) = (Recent::default(), Recent::default());
        a.keep(&pool, &me, 1, 0, &[Bytes::from_static(b"12345678")]);
        b.keep(&pool, &me, 2, 0, &[Bytes::from_static(b"1234")]);
        assert_eq!((a.bytes, b.bytes, pool.used()), (8, 0, 8));
        a.keep(&pool, &me, 1, 8, &[Bytes::from_static(b"more than ten bytes")]);
        assert_eq!((a.bytes, pool.used()), (0, 0), "larger than the budget: not kept, and the span ends");
    }
}
