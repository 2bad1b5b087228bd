//! Idempotent producers: a retried batch is stored once, across segment rolls and reopening, with
//! or without the producer snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::{read_all, small_segments};
use proptest::prelude::*;
use strata_storage::{BatchBuilder, Compression, Error, Log, ProducerInfo};

fn sequenced(id: i64, epoch: i16, seq: i32, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(ProducerInfo { id, epoch, base_sequence: seq });
    for i in 0..n {
        b.push(1_700_000_000_000, None, Some(format!("p{id} e{epoch} s{seq} r{i} {}", "x".repeat(40)).as_bytes()), &[]);
    }
    b.build().unwrap()
}

fn remove_snapshots(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "producers") {
            std::fs::remove_file(path).unwrap();
            removed += 1;
        }
    }
    removed
}

#[test]
fn retries_are_stored_once_across_rolls_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = HashMap::new();
    {
        let log = Log::open(dir.path(), small_segments()).unwrap();
        for seq in 0..40 {
            for id in 0..3 {
                let info = log.append(sequenced(id, 0, seq * 2, 2)).unwrap().wait().unwrap();
                first.insert((id, seq * 2), info);
            }
        }
        assert!(log.sealed_segments().len() > 10, "the test needs rolls");
        let again = log.append(sequenced(1, 0, 78, 2)).unwrap();
        assert!(again.is_duplicate());
        assert_eq!(again.wait().unwrap(), first[&(1, 78)]);
    }
    for with_snapshots in [true, false] {
        if !with_snapshots {
            assert!(remove_snapshots(dir.path()) > 0);
        }
        let log = Log::open(dir.path(), small_segments()).unwrap();
        let end = log.high_watermark();
        assert_eq!(end, 240);
        for id in 0..3 {
            // The last five batches of each producer are answered from the table.
            for seq in (70..80).step_by(2) {
                let retry = log.append(sequenced(id, 0, seq, 2)).unwrap();
                assert!(retry.is_duplicate(), "producer {id} sequence {seq}");
                assert_eq!(retry.wait().unwrap(), first[&(id, seq)]);
            }
            // Older ones are refused rather than stored twice.
            assert!(matches!(log.append(sequenced(id, 0, 68, 2)), Err(Error::OutOfOrderSequence { .. })));
            // The same sequence with another record count is not a retry.
            assert!(matches!(log.append(sequenced(id, 0, 78, 3)), Err(Error::OutOfOrderSequence { .. })));
        }
        assert_eq!(log.high_watermark(), end, "nothing was appended");
    }
    // A new epoch fences the old one.
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.append(sequenced(0, 1, 0, 1)).unwrap().wait().unwrap().base_offset, 240);
    assert!(matches!(log.append(sequenced(0, 0, 100, 1)), Err(Error::ProducerFenced { current_epoch: 1, .. })));
    assert!(log.append(sequenced(0, 1, 0, 1)).unwrap().is_duplicate());
    assert_eq!(read_all(&log, 0).len(), 241);
}

#[test]
fn a_damaged_snapshot_is_replaced_by_replaying_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_segments()).unwrap();
        for seq in 0..30 {
            log.append(sequenced(5, 2, seq, 3)).unwrap().wait().unwrap();
        }
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "producers") {
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert!(log.append(sequenced(5, 2, 29, 3)).unwrap().is_duplicate());
    assert!(matches!(log.append(sequenced(5, 1, 30, 3)), Err(Error::ProducerFenced { .. })));
    let fresh = log.append(sequenced(5, 2, 30, 3)).unwrap();
    assert!(!fresh.is_duplicate());
    fresh.wait().unwrap();
    assert_eq!(read_all(&log, 0).len(), 93);
}

/// What the model expects of one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Appended(u64),
    Duplicate(u64),
    Fenced,
    OutOfOrder,
}

#[derive(Debug, Clone)]
enum Op {
    Append { id: i64, epoch: i16, seq: i32, n: usize },
    Reopen { drop_snapshots: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0i64..3, 0i16..3, 0i32..16, 1usize..4).prop_map(|(id, epoch, seq, n)| Op::Append { id, epoch, seq, n }),
        1 => any::<bool>().prop_map(|drop_snapshots| Op::Reopen { drop_snapshots }),
    ]
}

/// `(sequence, records, base offset)` of every batch a producer wrote in its epoch, newest last.
type Written = Vec<(i32, usize, u64)>;

/// The rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    producers: HashMap<i64, (i16, Written)>,
    next: u64,
}

impl Model {
    fn append(&mut self, id: i64, epoch: i16, seq: i32, n: usize) -> Outcome {
        let outcome = match self.producers.get(&id) {
            Some((e, _)) if epoch < *e => return Outcome::Fenced,
            Some((e, batches)) if epoch == *e && batches.last().is_some_and(|b| seq <= b.0) => {
                let recent = &batches[batches.len().saturating_sub(5)..];
                return match recent.iter().find(|b| b.0 == seq && b.1 == n) {
                    Some(b) => Outcome::Duplicate(b.2),
                    None => Outcome::OutOfOrder,
                };
            }
            _ => Outcome::Appended(self.next),
        };
        let entry = self.producers.entry(id).or_insert((epoch, Vec::new()));
        if entry.0 != epoch {
            *entry = (epoch, Vec::new());
        }
        entry.1.push((seq, n, self.next));
        self.next += n as u64;
        outcome
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn appends_match_a_model_of_the_rules(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), small_segments()).unwrap();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append { id, epoch, seq, n } => {
                    let got = match log.append(sequenced(id, epoch, seq, n)) {
                        Ok(p) if p.is_duplicate() => Outcome::Duplicate(p.wait().unwrap().base_offset),
                        Ok(p) => Outcome::Appended(p.wait().unwrap().base_offset),
                        Err(Error::ProducerFenced { .. }) => Outcome::Fenced,
                        Err(Error::OutOfOrderSequence { .. }) => Outcome::OutOfOrder,
                        Err(e) => panic!("unexpected error {e}"),
                    };
                    prop_assert_eq!(got, model.append(id, epoch, seq, n));
                }
                Op::Reopen { drop_snapshots } => {
                    drop(log);
                    if drop_snapshots {
                        remove_snapshots(dir.path());
                    }
                    log = Log::open(dir.path(), small_segments()).unwrap();
                }
            }
        }
        prop_assert_eq!(log.high_watermark(), model.next);
    }
}
