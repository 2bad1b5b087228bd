//! Any sequence of appends, reads, retention runs, compactions and reopens gives the same
//! answers as a simple in-memory model of the log: a standalone log, and a log of a manager
//! whose `always` appends go through the journal (kept in memory until read or checkpointed;
//! there a reopen drops the manager without its final checkpoint, as a crash would, and the
//! journal's replay must bring back what only it held).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use strata_storage::{
    BatchBuilder, CleanupPolicy, Compression, Durability, Log, LogConfig, LogManager, ManualClock, StorageOptions,
};

const NOW: i64 = 1_000_000;
const TOMBSTONE_MS: u64 = 1_000;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(Option<u8>, Option<u16>, i64)>, u8),
    Read(u16),
    Retention(u64),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let record = (
        proptest::option::weighted(0.9, 0u8..6),
        proptest::option::weighted(0.85, any::<u16>()),
        prop_oneof![Just(NOW - 5_000), Just(NOW)],
    );
    prop_oneof![
        6 => (proptest::collection::vec(record, 1..6), 0u8..3).prop_map(|(r, c)| Op::Append(r, c)),
        2 => any::<u16>().prop_map(Op::Read),
        1 => (1_000u64..6_000).prop_map(Op::Retention),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    ts: i64,
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 200,
        durability: Durability::Never,
        cleanup_policy: CleanupPolicy::Compact,
        tombstone_retention_ms: TOMBSTONE_MS,
        retention_ms: None,
        segment_ms: None,
        ..LogConfig::default()
    }
}

fn log_records(log: &Log) -> Vec<Rec> {
    common::read_all(log, log.log_start_offset())
        .into_iter()
        .map(|r| Rec {
            offset: r.offset,
            key: r.key.map(|k| k.to_vec()),
            value: r.value.map(|v| v.to_vec()),
            ts: r.timestamp,
        })
        .collect()
}

/// The log under test: standalone, or the one log of a manager with a journal.
struct Subject {
    dir: tempfile::TempDir,
    options: StorageOptions,
    journaled: bool,
    manager: Option<LogManager>,
}

impl Subject {
    fn new(journaled: bool) -> Self {
        let clock = Arc::new(ManualClock::new(NOW));
        // Small journal files: the journal rotates and checkpoints within a test case.
        let options = StorageOptions { clock, journal_file_bytes: 8 << 10, ..Default::default() };
        Self { dir: tempfile::tempdir().unwrap(), options, journaled, manager: None }
    }

    fn config(&self) -> LogConfig {
        let durability = if self.journaled { Durability::Always } else { Durability::Never };
        LogConfig { durability, ..config() }
    }

    fn open(&mut self) -> Log {
        if self.journaled {
            drop(self.manager.take());
            let manager = LogManager::new(self.dir.path(), self.options.clone()).unwrap();
            let log = manager.open_log("p-0", self.config()).unwrap();
            self.manager = Some(manager);
            log
        } else {
            Log::open_with_options(self.dir.path(), self.config(), self.options.clone()).unwrap()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        check_model(ops, false)?;
    }

    #[test]
    fn journaled_log_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        check_model(ops, true)?;
    }
}

fn check_model(ops: Vec<Op>, journaled: bool) -> Result<(), TestCaseError> {
    let mut subject = Subject::new(journaled);
    let mut log = subject.open();
    let mut model: Vec<Rec> = Vec::new();
    let mut next = 0u64;
    let mut start = 0u64;
    for op in ops {
        let append = matches!(op, Op::Append(..));
        match op {
            Op::Append(records, codec) => {
                let codec = [Compression::None, Compression::Lz4, Compression::Zstd][codec as usize];
                let mut b = BatchBuilder::new(codec);
                for (i, (key, value, ts)) in records.iter().enumerate() {
                    let key = key.map(|k| vec![b'k', k]);
                    let value = value.map(|v| v.to_le_bytes().repeat(1 + i % 4));
                    b.push(*ts, key.as_deref(), value.as_deref(), &[]);
                    model.push(Rec { offset: next + i as u64, key, value, ts: *ts });
                }
                let info = log.append(b.build().unwrap()).unwrap().wait().unwrap();
                prop_assert_eq!(info.base_offset, next);
                next += records.len() as u64;
            }
            Op::Read(at) => {
                let span = next - start + 1;
                let offset = start + u64::from(at) % span;
                // A compacted batch keeps its offset span, so a read may return a batch with no
                // record at or after `offset`: like a consumer, continue at `next_offset`.
                let mut at = offset;
                let got = loop {
                    let r = log.read(at, 300).unwrap();
                    let got = r.records_from(offset).unwrap();
                    if !got.is_empty() || r.batches.is_empty() {
                        break got;
                    }
                    prop_assert!(r.next_offset > at, "read at {at} made no progress");
                    at = r.next_offset;
                };
                let want: Vec<&Rec> = model.iter().filter(|m| m.offset >= offset).collect();
                match (got.first(), want.first()) {
                    (Some(g), Some(w)) => {
                        prop_assert_eq!(g.offset, w.offset);
                        prop_assert_eq!(g.value.as_deref(), w.value.as_deref());
                    }
                    (None, None) => {}
                    (g, w) => prop_assert!(false, "read at {offset}: got {g:?}, model {w:?}"),
                }
            }
            Op::Retention(limit) => {
                let mut c = subject.config();
                c.retention_bytes = Some(limit);
                log.set_config(c).unwrap();
                let segments = log.segments();
                let mut total: u64 = segments.iter().map(|s| s.size_bytes).sum();
                let mut expected_start = segments[0].base_offset;
                for (i, s) in segments.iter().enumerate().filter(|(_, s)| s.sealed) {
                    if total <= limit {
                        break;
                    }
                    total -= s.size_bytes;
                    expected_start = segments[i + 1].base_offset;
                }
                let outcome = log.enforce_retention().unwrap();
                prop_assert_eq!(outcome.log_start_offset, expected_start);
                start = expected_start;
                model.retain(|m| m.offset >= start);
                log.set_config(config()).unwrap();
            }
            Op::Compact => {
                let active_base = log.segments().last().unwrap().base_offset;
                let mut latest: HashMap<Vec<u8>, u64> = HashMap::new();
                for m in model.iter().filter(|m| m.offset < active_base) {
                    if let Some(k) = &m.key {
                        latest.insert(k.clone(), m.offset);
                    }
                }
                model.retain(|m| {
                    m.offset >= active_base
                        || match &m.key {
                            None => true,
                            Some(k) => {
                                latest[k] == m.offset && (m.value.is_some() || m.ts >= NOW - TOMBSTONE_MS as i64)
                            }
                        }
                });
                log.compact().unwrap();
            }
            Op::Reopen => {
                drop(log);
                log = subject.open();
            }
        }
        prop_assert_eq!(log.high_watermark(), next);
        prop_assert_eq!(log.log_start_offset(), start);
        // Reading everything writes what waits in memory: not after every append, so that
        // some reopens find appends only the journal holds.
        if !(journaled && append) {
            prop_assert_eq!(log_records(&log), model.clone());
        }
    }
    Ok(())
}
