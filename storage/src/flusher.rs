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
//! `fdatasync`s into shared journal commits and the device sees a deeper queue (on this
//! project's VM ext4 has no journal: each such `fdatasync` writes its file's inode block
//! synchronously before the device flush, and side by side those writes overlap). One log is
//! synced by one thread at a time: a thread that pops a log another is syncing leaves it to that
//! one, which syncs once more when its sync returns. Until 2026-12-08 a log was queued again as
//! soon as it was popped, and one hot partition had all sixteen threads `fdatasync` its file side
//! by side, sixteen device flushes queued behind each other; one at a time, alternated against
//! that (benches/FINDINGS.md, "One sync of a log at a time"): 100-record requests into one
//! partition at 3,407 a second p50 3–43 ms against 0.4–3.8 s as unary requests, stream p99
//! 289–402 ms against 492–1,497; W2 durable 1.05M and 1.21M msgs/s against 868k and 584k; W3 at
//! 50 % p99 11.8 and 5.4 ms against 102 and 14.8.
//!
//! **Jobs.** The same threads run [`Flusher::spawn`]'s jobs: file work that must not hold up an
//! append but that nobody waits for, such as the index and producer snapshot a roll leaves
//! behind. A queued flush goes before any job, and one job runs at a time: a job may wait for a
//! log's maintenance lock (held for seconds by a compaction), and must not take every thread
//! from the flushes meanwhile.
//!
//! **Grouped syncs.** When a thread finds [`GROUP_MIN`] or more logs queued (all threads were busy
//! while a wide request queued hundreds of partitions), it takes them all and makes them durable
//! with one `syncfs(2)` per filesystem instead of one `fdatasync` each: measured here, 1,000 logs
//! with a small append each took 50 ms as `fdatasync`s 16 at a time and 5 ms as one `syncfs`.
//! `syncfs` reports writeback errors only since Linux 5.8, so [`OsFsync`] offers it only there;
//! after any failed group sync every log of the group is poisoned and grouping stops for good
//! (the error may have belonged to a log outside the group, whose own next `fdatasync` will then
//! report it).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Flusher threads per log manager by default: enough `fdatasync`s in flight for the filesystem
/// to group them, few enough to stay cheap when idle.
pub(crate) const FLUSH_THREADS: usize = 16;

/// Logs queued at once from which one `syncfs` replaces their `fdatasync`s.
pub(crate) const GROUP_MIN: usize = 32;

/// How file data reaches stable storage.
///
/// # Contract
/// `sync_data` returns `Ok` only once every byte written to `file` before the call is durable
/// (as `fdatasync` promises). An `Err` means some of it may be lost; the caller must treat the
/// file as poisoned (retrying is not safe: the kernel may already have dropped the pages).
///
/// `sync_filesystem` returns `Ok` only once every byte written to *any* file of `file`'s
/// filesystem before the call is durable (as `syncfs` promises on Linux 5.8 and later), and `Err`
/// if any of it may be lost. Implementations that cannot promise that return `false` from
/// `can_sync_filesystem` (the default), and the flusher syncs file by file.
pub trait Fsync: Send + Sync + std::fmt::Debug {
    /// # Errors
    /// The failed sync's I/O error.
    fn sync_data(&self, file: &File) -> io::Result<()>;

    /// Whether [`Fsync::sync_filesystem`] keeps its contract.
    fn can_sync_filesystem(&self) -> bool {
        false
    }

    /// # Errors
    /// The failed sync's I/O error; `Unsupported` by default.
    fn sync_filesystem(&self, _file: &File) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// `fdatasync(2)`, and `syncfs(2)` for groups where the kernel reports its errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFsync;

impl Fsync for OsFsync {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn can_sync_filesystem(&self) -> bool {
        *SYNCFS_REPORTS_ERRORS
    }

    fn sync_filesystem(&self, file: &File) -> io::Result<()> {
        rustix::fs::syncfs(file).map_err(io::Error::from)
    }
}

/// `syncfs` returns writeback errors since Linux 5.8; before, it always succeeded. Set
/// `STRATA_SYNCFS=0` to never use it.
static SYNCFS_REPORTS_ERRORS: LazyLock<bool> = LazyLock::new(|| {
    if std::env::var("STRATA_SYNCFS").is_ok_and(|v| v == "0") {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version >= (5, 8)
});

/// What one flush of a log must make durable, taken under the log's lock.
pub(crate) struct FlushTicket {
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// The filesystem holding `file` (its `st_dev`).
    pub(crate) device: u64,
    /// Durable once synced: every offset below this,
    pub(crate) next_offset: u64,
    /// and the active segment's bytes up to `(base, size)`.
    pub(crate) position: (u64, u64),
}

/// Something the flusher can flush.
pub(crate) trait Flushable: Send + Sync {
    /// Clears the "queued" mark and makes everything written so far durable.
    fn flush_from_queue(&self);

    /// Clears the "queued" mark and says what a flush must cover (`None`: nothing), for a
    /// grouped sync; [`Flushable::complete`] must follow with its outcome.
    fn take_from_queue(&self) -> Option<FlushTicket>;

    /// Records the outcome of syncing what the ticket covers.
    fn complete(&self, ticket: FlushTicket, result: io::Result<()>);
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

/// Work for a flusher thread that no appender waits for (see [`Flusher::spawn`]).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    now: VecDeque<Arc<dyn Flushable>>,
    timers: BinaryHeap<Reverse<Timer>>,
    jobs: VecDeque<Job>,
    /// A thread is running a job.
    job_running: bool,
    seq: u64,
    shutdown: bool,
}

struct State {
    // A std mutex: held only to push or pop, never across a flush.
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Grouped syncs are possible and have not failed.
    group: AtomicBool,
    fsync: Arc<dyn Fsync>,
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
    pub(crate) fn start(threads: usize, fsync: Arc<dyn Fsync>) -> io::Result<Self> {
        let state = Arc::new(State {
            queue: Mutex::default(),
            wake: Condvar::new(),
            group: AtomicBool::new(fsync.can_sync_filesystem()),
            fsync,
        });
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

    /// Flush all of `targets` as soon as possible (queued together, so a thread may take them
    /// as one group).
    pub(crate) fn flush_now_many(&self, targets: Vec<Arc<dyn Flushable>>) {
        if targets.is_empty() {
            return;
        }
        self.state.lock().now.extend(targets);
        self.state.wake.notify_one();
    }

    /// Runs `job` on a flusher thread once no flush is queued; jobs still queued when the
    /// flusher stops run before it does.
    pub(crate) fn spawn(&self, job: Job) {
        self.state.lock().jobs.push_back(job);
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

/// What a flusher thread does next.
enum Work {
    Flush(Arc<dyn Flushable>),
    Job(Job),
}

fn run(state: &State) {
    loop {
        let mut group = Vec::new();
        let work = {
            let mut q = state.lock();
            loop {
                let now = Instant::now();
                while q.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
                    if let Some(Reverse(t)) = q.timers.pop() {
                        q.now.push_back(t.target);
                    }
                }
                if let Some(target) = q.now.pop_front() {
                    if q.now.len() + 1 >= GROUP_MIN && state.group.load(Ordering::Acquire) {
                        group.extend(q.now.drain(..));
                    } else if !q.now.is_empty() {
                        // More queued than this thread takes: another one may start.
                        state.wake.notify_one();
                    }
                    break Work::Flush(target);
                }
                if !q.job_running
                    && let Some(job) = q.jobs.pop_front()
                {
                    q.job_running = true;
                    break Work::Job(job);
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
        match work {
            Work::Job(job) => {
                job();
                state.lock().job_running = false;
                // The next job, if any, may go to any thread.
                state.wake.notify_one();
            }
            Work::Flush(target) if group.is_empty() => target.flush_from_queue(),
            Work::Flush(target) => {
                group.push(target);
                flush_group(state, group);
            }
        }
    }
}

/// Makes a group of logs durable with one `syncfs` per filesystem they live on.
fn flush_group(state: &State, logs: Vec<Arc<dyn Flushable>>) {
    type Waiting = Vec<(Arc<dyn Flushable>, FlushTicket)>;
    let mut by_device: BTreeMap<u64, Waiting> = BTreeMap::new();
    for log in logs {
        if let Some(ticket) = log.take_from_queue() {
            by_device.entry(ticket.device).or_default().push((log, ticket));
        }
    }
    for (_, tickets) in by_device {
        let Some((_, first)) = tickets.first() else { continue };
        let result = state.fsync.sync_filesystem(&first.file);
        if let Err(e) = &result {
            tracing::error!(error = %e, logs = tickets.len(), "a grouped sync failed; syncing file by file from now on");
            state.group.store(false, Ordering::Release);
        }
        for (log, ticket) in tickets {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), format!("grouped sync (syncfs) failed: {e}"))),
            };
            log.complete(ticket, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A flush target that says when it was flushed.
    struct Probe(mpsc::Sender<()>);

    impl Flushable for Probe {
        fn flush_from_queue(&self) {
            let _ = self.0.send(());
        }

        fn take_from_queue(&self) -> Option<FlushTicket> {
            let _ = self.0.send(());
            None
        }

        fn complete(&self, _: FlushTicket, _: io::Result<()>) {}
    }

    const LONG: Duration = Duration::from_secs(30);

    /// A job that waits (as one waiting for a log's maintenance lock does) holds one thread and
    /// the jobs queued after it, never the flushes.
    #[test]
    fn a_waiting_job_holds_up_the_next_job_but_no_flush() -> io::Result<()> {
        let flusher = Flusher::start(2, Arc::new(OsFsync))?;
        let (release, wait) = mpsc::channel::<()>();
        let (ran, order) = mpsc::channel::<u32>();
        let first = ran.clone();
        flusher.spawn(Box::new(move || {
            let _ = first.send(1);
            let _ = wait.recv();
        }));
        flusher.spawn(Box::new(move || {
            let _ = ran.send(2);
        }));
        assert_eq!(order.recv_timeout(LONG), Ok(1));

        let (flushed, was_flushed) = mpsc::channel();
        flusher.flush_now(Arc::new(Probe(flushed)));
        assert_eq!(was_flushed.recv_timeout(LONG), Ok(()), "the other thread flushes meanwhile");
        assert!(order.recv_timeout(Duration::from_millis(200)).is_err(), "the second job waited");

        drop(release);
        assert_eq!(order.recv_timeout(LONG), Ok(2));
        Ok(())
    }

    /// Jobs still queued when the flusher stops run before it does.
    #[test]
    fn queued_jobs_run_before_the_flusher_stops() -> io::Result<()> {
        let flusher = Flusher::start(1, Arc::new(OsFsync))?;
        let (ran, count) = mpsc::channel::<()>();
        for _ in 0..10 {
            let ran = ran.clone();
            flusher.spawn(Box::new(move || {
                let _ = ran.send(());
            }));
        }
        drop((flusher, ran));
        assert_eq!(count.iter().count(), 10);
        Ok(())
    }
}
