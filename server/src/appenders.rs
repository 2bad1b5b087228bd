//! The appender threads: where produce requests write their batches into the partition logs.
//!
//! An append `pwrite`s its batch (tens of microseconds; a segment roll adds `fsync`s), so it runs
//! off the async workers. It ran in `spawn_blocking`, and at a few thousand requests a second
//! tokio's blocking pool became the bound, with CPU to spare: every `spawn_blocking` and every
//! pool thread looking for work takes the pool's one mutex, and 99 % of the server's
//! `sched_yield`s were appends spinning on it (W3 at half its peak; FINDINGS, "Where W6's and
//! W3's server time goes"). These threads are the server's own and share one queue whose send is
//! lock-free (crossbeam's), so a request's hop to a thread is a push and at most one wake-up.
//!
//! ```text
//!  request task ──job──► queue ──► appender thread: Log::append_all ──oneshot──► request task
//! ```
//!
//! One queue for all threads rather than one per thread: a roll's `fsync` holds up only its own
//! thread, while the others drain the queue.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::error::{ApiError, ErrorCode};

/// Appender threads a server starts: more than the cores, so that a few appends waiting on a
/// roll's `fsync` leave threads for the rest.
pub const APPEND_THREADS: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// Handle to the appender threads; they stop once every handle is dropped and the queue is
/// drained.
#[derive(Debug, Clone)]
pub struct Appenders {
    queue: Sender<Job>,
}

impl Appenders {
    /// Starts `threads` appender threads (at least one).
    ///
    /// # Errors
    /// A thread could not be started (those already started stop).
    pub fn start(threads: usize) -> io::Result<Self> {
        let (queue, jobs) = crossbeam_channel::unbounded();
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new().name(format!("strata-append-{i}")).spawn(move || work(&jobs))?;
        }
        Ok(Self { queue })
    }

    /// Runs `append` on an appender thread and returns what it returned.
    ///
    /// # Errors
    /// `internal` if `append` panicked.
    pub async fn run<T: Send + 'static>(&self, append: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(append());
        });
        self.queue.send(job).map_err(|_| ApiError::new(ErrorCode::Internal, "the appender threads have stopped"))?;
        // Dropped unsent: `append` panicked (its thread caught it and goes on).
        result.await.map_err(|_| ApiError::new(ErrorCode::Internal, "an append failed unexpectedly (see the log)"))
    }
}

fn work(jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("an append panicked; its request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_append_fails_its_request_and_the_threads_go_on() {
        let appenders = Appenders::start(1).unwrap();
        let failed = appenders.run(|| -> u32 { panic!("boom") }).await;
        assert_eq!(failed.unwrap_err().code, ErrorCode::Internal);
        assert_eq!(appenders.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn appends_run_side_by_side_on_several_threads() {
        let appenders = Appenders::start(2).unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (a, b) = (barrier.clone(), barrier);
        // Each waits for the other: both finish only if they run at once.
        let (x, y) =
            tokio::join!(appenders.run(move || a.wait().is_leader()), appenders.run(move || b.wait().is_leader()));
        assert_ne!(x.unwrap(), y.unwrap());
    }
}
