//! The flusher: a small pool of threads per [`crate::LogManager`] that runs every `fdatasync`,
//! so appenders never sync themselves and the number of syncs in flight is bounded.
//!
//! ```text
//!  appenders ──write──► page cache        flusher threads (16 by default)
//!      │                                    │
//!      └─ queue log (once) ───────────────► pop ─► fdatasync ─► durable = target ─► wake waiters
//! ```
//!
//! Group commit falls out of the shape: while one `fdatasync` of a log runs, further appends land
//! in the page cache and queue the log again; the next `fdatasync` covers all of them at once.
//! Several threads matter when many logs are queued at once — a keyed produce request touching a
//! thousand partitions queues a thousand logs: flushed one after another, the request waits for
//! a thousand journal commits; flushed side by side, the filesystem folds concurrent
//! `fdatasync`s into shared journal commits and the device sees a deeper queue. Two threads never
//! flush the same log at once for the same append (a log is queued once until popped), and when
//! they do flush one log concurrently, durability only moves forward (`mark_durable` keeps the
//! maximum).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Flusher threads per log manager by default: enough `fdatasync`s in flight for the filesystem
/// to group them, few enough to stay cheap when idle.
pub(crate) const FLUSH_THREADS: usize = 16;

/// How file data reaches stable storage.
///
/// # Contract
/// `sync_data` returns `Ok` only once every byte written to `file` before the call is durable
/// (as `fdatasync` promises). An `Err` means some of it may be lost; the caller must treat the
/// file as poisoned (retrying is not safe: the kernel may already have dropped the pages).
pub trait Fsync: Send + Sync + std::fmt::Debug {
    /// # Errors
    /// The failed sync's I/O error.
    fn sync_data(&self, file: &File) -> io::Result<()>;
}

/// `fdatasync(2)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFsync;

impl Fsync for OsFsync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// Something the flusher can flush.
pub(crate) trait Flushable: Send + Sync {
    /// Clears the "queued" mark and makes everything written so far durable.
    fn flush_from_queue(&self);
}

struct Timer {
    at: Instant,
    seq: u64,
    target: Arc<dyn Flushable>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    now: VecDeque<Arc<dyn Flushable>>,
    timers: BinaryHeap<Reverse<Timer>>,
    seq: u64,
    shutdown: bool,
}

#[derive(Default)]
struct State {
    // A std mutex: held only to push or pop, never across a flush.
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to the flusher threads; dropping it flushes what is queued and stops them.
pub(crate) struct Flusher {
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

impl Flusher {
    pub(crate) fn start(threads: usize) -> io::Result<Self> {
        let state = Arc::new(State::default());
        let mut flusher = Self { state, threads: Vec::with_capacity(threads) };
        for i in 0..threads.max(1) {
            let worker = Arc::clone(&flusher.state);
            // On failure, dropping `flusher` stops the threads already started.
            let thread = std::thread::Builder::new().name(format!("strata-flusher-{i}")).spawn(move || run(&worker))?;
            flusher.threads.push(thread);
        }
        Ok(flusher)
    }

    /// Flush `target` as soon as possible.
    pub(crate) fn flush_now(&self, target: Arc<dyn Flushable>) {
        self.state.lock().now.push_back(target);
        self.state.wake.notify_one();
    }

    /// Flush `target` after `delay`.
    pub(crate) fn flush_after(&self, target: Arc<dyn Flushable>, delay: Duration) {
        let mut q = self.state.lock();
        q.seq += 1;
        let timer = Timer { at: Instant::now() + delay, seq: q.seq, target };
        q.timers.push(Reverse(timer));
        drop(q);
        self.state.wake.notify_one();
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.state.lock().shutdown = true;
        self.state.wake.notify_all();
        for thread in self.threads.drain(..) {
            // The last reference may be dropped by a flusher thread itself (a queued log held
            // it): it then exits on its own after this flush, and must not join itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

fn run(state: &State) {
    loop {
        let target: Arc<dyn Flushable> = {
            let mut q = state.lock();
            loop {
                let now = Instant::now();
                while q.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
                    if let Some(Reverse(t)) = q.timers.pop() {
                        q.now.push_back(t.target);
                    }
                }
                if let Some(target) = q.now.pop_front() {
                    if !q.now.is_empty() {
                        // More queued than this thread takes: another one may start.
                        state.wake.notify_one();
                    }
                    break target;
                }
                if q.shutdown {
                    // Timers still pending are flushed before stopping.
                    let rest: Vec<_> = q.timers.drain().map(|Reverse(t)| t.target).collect();
                    drop(q);
                    for target in rest {
                        target.flush_from_queue();
                    }
                    return;
                }
                q = match q.timers.peek() {
                    Some(Reverse(t)) => {
                        let wait = t.at.saturating_duration_since(now);
                        state.wake.wait_timeout(q, wait).unwrap_or_else(PoisonError::into_inner).0
                    }
                    None => state.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        target.flush_from_queue();
    }
}
