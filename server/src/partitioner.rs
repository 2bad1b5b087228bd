//! Choosing a record's partition: explicit, else Kafka's default (murmur2 of the key, shared with
//! the Rust client so both sides agree), else sticky batches for keyless records.

use std::sync::atomic::{AtomicU32, Ordering};

pub use strata_client::{murmur2, partition_for_key};

/// Sticky partitioning for keyless records: every keyless record of one request goes to the same
/// partition, and the next request moves to the next one (like Kafka's sticky partitioner, which
/// switches when a batch is sent), so batches stay large and load spreads.
#[derive(Debug, Default)]
pub struct Sticky {
    next: AtomicU32,
}

impl Sticky {
    pub fn next_partition(&self, partitions: u32) -> u32 {
        self.next.fetch_add(1, Ordering::Relaxed) % partitions.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_rotates_per_request() {
        let s = Sticky::default();
        let picks: Vec<u32> = (0..6).map(|_| s.next_partition(3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
