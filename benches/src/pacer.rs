//! Open-loop pacing finer than tokio's timer.
//!
//! tokio's timer works in whole milliseconds: `sleep_until` rounds its deadline up to the next
//! tick and fires when a worker next polls the timer wheel. Measured here in W3 (latency counted
//! from each batch's due time), that put the send of a batch 1.0 ms after its due time at the
//! median and 2.0 ms at p99 before any system saw it: the load generator's own delay, the same
//! for every system, was most of the peers' p99 and almost half of Strata's. A [`Pacer`] wakes
//! the sender from a thread of its own that sleeps with the kernel's high-resolution timer
//! (`nanosleep`, tens of microseconds of slack), so a latency is the system's and not the
//! timer's.

use std::time::Instant;

use tokio::sync::mpsc;

/// Ticks `0, 1, 2, ...` at the instants a schedule gives, from a sleeping thread.
#[derive(Debug)]
pub struct Pacer {
    ticks: mpsc::UnboundedReceiver<u64>,
    reached: Option<u64>,
}

impl Pacer {
    /// Starts ticking: tick `n` is sent at `due(n)` (at once when that is past). The thread ends
    /// at the first tick after the pacer is dropped.
    pub fn start(due: impl Fn(u64) -> Instant + Send + 'static) -> anyhow::Result<Pacer> {
        let (tx, ticks) = mpsc::unbounded_channel();
        std::thread::Builder::new().name("bench-pacer".into()).spawn(move || {
            for n in 0.. {
                let wait = due(n).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if tx.send(n).is_err() {
                    return;
                }
            }
        })?;
        Ok(Pacer { ticks, reached: None })
    }

    /// Returns once tick `n` has come (at once if it came already).
    pub async fn until(&mut self, n: u64) {
        while self.reached.is_none_or(|r| r < n) {
            match self.ticks.recv().await {
                Some(t) => self.reached = Some(t),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn ticks_come_in_order_and_not_before_they_are_due() {
        let start = Instant::now();
        let every = Duration::from_micros(300);
        let mut pacer = Pacer::start(move |n| start + every * n as u32).unwrap();
        for n in [0u64, 1, 2, 5, 9] {
            pacer.until(n).await;
            assert!(start.elapsed() >= every * n as u32, "tick {n} came early");
            assert!(pacer.reached >= Some(n));
        }
    }
}
