//! What the members of W4's consumer group share, whatever the system: how far the group has got
//! (so each member knows when the whole group is done) and which records each member received,
//! to check that every record reached the group exactly once.
//!
//! ```text
//!   member i ──Seen::record(partition, id)──▶ its Outcome ──merge──▶ Seen::check (exactly once)
//!            ──GroupProgress::add(n)────────▶ done when every record arrived and every member joined
//! ```
//!
//! An id is what the system numbers a record with: Strata's offset, a JetStream stream sequence
//! (minus one, so both start at 0), a Redis stream entry id (`ms-seq` as `ms << 64 | seq`, not
//! dense: only distinctness can be checked).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How far a group of members has got, shared by its member tasks.
#[derive(Debug)]
pub struct GroupProgress {
    pub total: u64,
    pub members: usize,
    start: Instant,
    timeout: Duration,
    received: AtomicU64,
    joined: AtomicUsize,
    finished: AtomicUsize,
    /// When the last expected record arrived (the end of the timed phase).
    done_at: OnceLock<Instant>,
}

impl GroupProgress {
    /// Starts the clock: `members` members are to receive `total` records within `timeout`.
    pub fn new(total: u64, members: usize, timeout: Duration) -> GroupProgress {
        GroupProgress {
            total,
            members,
            start: Instant::now(),
            timeout,
            received: AtomicU64::new(0),
            joined: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            done_at: OnceLock::new(),
        }
    }

    /// A member received `n` records.
    pub fn add(&self, n: u64) {
        let now = self.received.fetch_add(n, Ordering::AcqRel) + n;
        if now >= self.total {
            let _ = self.done_at.set(Instant::now());
        }
    }

    /// A member is in the group (it has its first assignment, or the system has no joining).
    pub fn joined(&self) {
        self.joined.fetch_add(1, Ordering::AcqRel);
    }

    /// Every record arrived and every member joined: members stop reading.
    pub fn done(&self) -> bool {
        self.received.load(Ordering::Acquire) >= self.total && self.joined.load(Ordering::Acquire) >= self.members
    }

    /// Fails once the group has taken longer than its timeout.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.start.elapsed() < self.timeout,
            "the group did not finish within {:?}: {} of {} records received, {} of {} members joined",
            self.timeout,
            self.received.load(Ordering::Acquire),
            self.total,
            self.joined.load(Ordering::Acquire),
            self.members
        );
        Ok(())
    }

    /// Waits until every member has called this (members that must not leave the group while
    /// another still commits).
    pub async fn finish_and_wait(&self) -> anyhow::Result<()> {
        self.finished.fetch_add(1, Ordering::AcqRel);
        while self.finished.load(Ordering::Acquire) < self.members {
            self.check()?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Seconds from the start to the last expected record, if it arrived.
    pub fn seconds(&self) -> Option<f64> {
        self.done_at.get().map(|t| t.duration_since(self.start).as_secs_f64())
    }
}

/// What an exactly-once check established, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub records: u64,
    pub partitions: u32,
    /// Every record exactly once (a run that fails the check is a failed run, so an `ok` row
    /// always says `true`).
    pub exactly_once: bool,
    /// How it was checked, in words.
    pub how: String,
}

/// The record ids a consumer received, per partition, as runs of consecutive ids.
#[derive(Debug, Default)]
pub struct Seen {
    partitions: BTreeMap<u32, Vec<Range<u128>>>,
}

impl Seen {
    pub fn record(&mut self, partition: u32, id: u128) {
        let runs = self.partitions.entry(partition).or_default();
        match runs.last_mut() {
            Some(run) if run.end == id => run.end += 1,
            _ => runs.push(id..id + 1),
        }
    }

    pub fn merge(&mut self, other: Seen) {
        for (p, runs) in other.partitions {
            self.partitions.entry(p).or_default().extend(runs);
        }
    }

    /// Every partition of `expected` (partition, records produced) received each of its records
    /// exactly once: no id twice, the right count, and with `dense` ids exactly `0..records`.
    /// `ids` names the ids in the description (`offsets`, ...).
    ///
    /// # Errors
    /// The first duplicate, gap, missing or unexpected record, with its partition and id.
    pub fn check(&self, expected: &[(u32, u64)], dense: bool, ids: &str) -> anyhow::Result<Delivery> {
        for p in self.partitions.keys() {
            anyhow::ensure!(
                expected.iter().any(|(e, _)| e == p),
                "records arrived from partition {p}, where none were produced"
            );
        }
        let mut records = 0;
        for &(p, n) in expected {
            let mut runs = self.partitions.get(&p).cloned().unwrap_or_default();
            runs.sort_by_key(|r| r.start);
            let (mut end, mut count) = (0u128, 0u128);
            for (i, run) in runs.iter().enumerate() {
                if i > 0 && run.start < end {
                    anyhow::bail!("partition {p}: record {} received twice", run.start);
                }
                if dense && run.start != end {
                    anyhow::bail!("partition {p}: records {end}..{} never received", run.start);
                }
                count += run.end - run.start;
                end = run.end;
            }
            anyhow::ensure!(count == u128::from(n), "partition {p}: {count} of {n} records received");
            records += n;
        }
        let how = if dense {
            format!("each partition's {ids} 0..n received once each, no gap")
        } else {
            format!("each partition's {ids} received once each, as many as were produced")
        };
        Ok(Delivery { records, partitions: expected.len() as u32, exactly_once: true, how })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn seen(ids: &[(u32, u128)]) -> Seen {
        let mut s = Seen::default();
        for &(p, id) in ids {
            s.record(p, id);
        }
        s
    }

    #[test]
    fn dense_ids_from_two_members_pass() {
        let mut a = seen(&[(0, 0), (0, 1), (1, 0), (0, 4), (0, 5)]);
        a.merge(seen(&[(0, 2), (0, 3), (1, 1)]));
        let d = a.check(&[(0, 6), (1, 2)], true, "offsets").unwrap();
        assert_eq!((d.records, d.partitions, d.exactly_once), (8, 2, true));
    }

    #[test]
    fn a_duplicate_fails_even_when_the_count_is_right() {
        let mut a = seen(&[(0, 0), (0, 1), (0, 2)]);
        a.merge(seen(&[(0, 2)]));
        let e = a.check(&[(0, 4)], false, "ids").unwrap_err().to_string();
        assert!(e.contains("received twice"), "{e}");
    }

    #[test]
    fn a_gap_fails_when_dense() {
        let a = seen(&[(0, 0), (0, 2)]);
        let e = a.check(&[(0, 2)], true, "offsets").unwrap_err().to_string();
        assert!(e.contains("1..2 never received"), "{e}");
        // Not dense (Redis ids): two distinct ids are two records.
        assert!(a.check(&[(0, 2)], false, "ids").is_ok());
    }

    #[test]
    fn missing_and_unexpected_records_fail() {
        let a = seen(&[(0, 0)]);
        assert!(a.check(&[(0, 2)], true, "offsets").unwrap_err().to_string().contains("1 of 2"));
        assert!(a.check(&[(1, 1)], true, "offsets").unwrap_err().to_string().contains("partition 0"));
    }

    #[test]
    fn progress_is_done_when_all_arrived_and_all_joined() {
        let p = GroupProgress::new(10, 2, Duration::from_secs(60));
        p.add(10);
        p.joined();
        assert!(!p.done());
        p.joined();
        assert!(p.done());
        assert!(p.seconds().is_some());
    }
}
