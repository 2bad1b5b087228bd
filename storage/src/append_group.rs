//! Appends awaited together: a request's batches to many partitions become durable with one
//! wake-up of the request, instead of a channel per partition.
//!
//! A keyed request over a wide topic appends a record or two to each of hundreds of partitions.
//! With a `oneshot` channel per append, the request allocated a channel per partition, and its
//! task was woken for each one that the journal's syncs completed after it began waiting; the
//! channels alone were ~3 % of the server's CPU in W6 (1,000 partitions). An [`AppendGroup`]
//! is one counter: each append that must wait for a sync adds one, each sync that covers one
//! takes it off, and the request is woken once, when the count reaches zero.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, oneshot};

use crate::error::{Error, Result};

/// Several appends whose durability is awaited as one (see the module docs). Pass it to
/// [`crate::Log::append_all`] or [`crate::Log::append_inline`], then await
/// [`AppendGroup::durable`] once every append is made.
#[derive(Debug)]
pub struct AppendGroup {
    state: Arc<GroupState>,
}

#[derive(Debug)]
pub(crate) struct GroupState {
    /// Appends not yet durable, plus one held by the [`AppendGroup`] until it is awaited, so that
    /// the count cannot reach zero while appends are still being added.
    outstanding: AtomicUsize,
    /// Why the first append to fail did (a failed sync, a deleted log).
    failure: Mutex<Option<Error>>,
    done: Notify,
}

impl Default for AppendGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl AppendGroup {
    pub fn new() -> Self {
        Self {
            state: Arc::new(GroupState {
                outstanding: AtomicUsize::new(1),
                failure: Mutex::new(None),
                done: Notify::new(),
            }),
        }
    }

    /// A notifier for one more append that waits for a sync.
    pub(crate) fn join(&self) -> Notifier {
        self.state.outstanding.fetch_add(1, Ordering::AcqRel);
        Notifier::Group(Arc::clone(&self.state))
    }

    /// Resolves once every append made with this group is as durable as its log's policy
    /// promises. Call it after the last append: appends added later are not waited for.
    ///
    /// # Errors
    /// The first failure among the appends: [`Error::Poisoned`] if a sync covering one failed,
    /// [`Error::LogDeleted`] if its log was deleted meanwhile.
    ///
    /// # Cancel safety
    /// Dropping the future does not undo the appends; it only stops waiting.
    pub async fn durable(self) -> Result<()> {
        if self.state.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            // The append that brings the count to zero stores a permit if this has not started
            // waiting yet, so the wake-up is not lost.
            self.state.done.notified().await;
        }
        match self.state.failure.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// How an append waiting for a sync is told the outcome.
#[derive(Debug)]
pub(crate) enum Notifier {
    /// Its own channel ([`crate::PendingAppend::durable`]).
    One(oneshot::Sender<Result<()>>),
    /// Its request's [`AppendGroup`].
    Group(Arc<GroupState>),
}

impl Notifier {
    /// A notifier with its own channel, and the channel's receiving end.
    pub(crate) fn channel() -> (Self, oneshot::Receiver<Result<()>>) {
        let (tx, rx) = oneshot::channel();
        (Self::One(tx), rx)
    }

    pub(crate) fn send(self, result: Result<()>) {
        match self {
            Self::One(tx) => {
                // The receiver may have stopped waiting: the append stands all the same.
                let _ = tx.send(result);
            }
            Self::Group(state) => {
                if let Err(e) = result {
                    state.failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(e);
                }
                if state.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    state.done.notify_one();
                }
            }
        }
    }

    /// Tells the append that its log's sync failed.
    pub(crate) fn poisoned(self, dir: PathBuf) {
        self.send(Err(Error::Poisoned { dir }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_once_every_joined_append_is_told() {
        let group = AppendGroup::new();
        let a = group.join();
        let b = group.join();
        a.send(Ok(()));
        let waiting = tokio::spawn(group.durable());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        b.send(Ok(()));
        assert!(matches!(waiting.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn resolves_at_once_when_everything_was_durable_before_the_wait() {
        let group = AppendGroup::new();
        group.join().send(Ok(()));
        group.join().send(Ok(()));
        assert!(matches!(group.durable().await, Ok(())));
        assert!(matches!(AppendGroup::new().durable().await, Ok(())));
    }

    #[tokio::test]
    async fn reports_the_first_failure() {
        let group = AppendGroup::new();
        group.join().poisoned(PathBuf::from("first"));
        group.join().send(Ok(()));
        group.join().send(Err(Error::LogDeleted { dir: PathBuf::from("second") }));
        match group.durable().await {
            Err(Error::Poisoned { dir }) => assert_eq!(dir, PathBuf::from("first")),
            other => panic!("expected the first failure, got {other:?}"),
        }
    }
}
