//! `kill -9` at random moments while four threads append under `always` durability: after every
//! restart each acknowledged batch is present with its exact bytes, offsets are dense, and
//! appending continues where it stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata_storage::{Log, LogConfig};

const ITERATIONS: u64 = 30;

#[test]
fn acknowledged_batches_survive_sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = std::env::var("STRATA_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (replay with STRATA_CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // base offset -> (last offset, tag) of every batch ever acknowledged.
    let mut acked: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for iteration in 1..=ITERATIONS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_appender"))
            .arg(dir.path())
            .arg(iteration.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..150)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let fields: Vec<u64> = line.split(' ').skip(1).map(|f| f.parse().unwrap()).collect();
            let [base, last, tag] = fields[..] else { panic!("bad line {line:?}") };
            assert!(acked.insert(base, (last, tag)).is_none(), "offset {base} acknowledged twice");
        }

        let log = Log::open(dir.path(), LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() }).unwrap();
        let hw = log.high_watermark();
        let mut expected_next = 0;
        let mut offset = 0;
        let mut batches = 0;
        while offset < hw {
            let r = log.read(offset, 1 << 20).unwrap();
            for batch in strata_storage::batch::split_batches(&r.batches) {
                let batch = batch.unwrap();
                let h = *batch.header();
                assert_eq!(h.base_offset, expected_next, "iteration {iteration}: offsets must be dense");
                expected_next = h.last_offset() + 1;
                batches += 1;
                if let Some(&(last, tag)) = acked.get(&h.base_offset) {
                    assert_eq!(h.last_offset(), last);
                    let records = batch.records().unwrap();
                    for (i, rec) in records.iter().enumerate() {
                        let value = format!("{tag}-{i}-{}", "p".repeat((tag % 200) as usize));
                        assert_eq!(
                            rec.value.as_deref(),
                            Some(value.as_bytes()),
                            "iteration {iteration}, offset {}",
                            rec.offset
                        );
                    }
                }
            }
            offset = r.next_offset;
        }
        assert_eq!(expected_next, hw);
        if let Some((_, &(last, _))) = acked.iter().next_back() {
            assert!(hw > last, "iteration {iteration}: acknowledged offset {last} lost (high watermark {hw})");
        }
        eprintln!("iteration {iteration}: {} acknowledged so far, {batches} batches, high watermark {hw}", acked.len());
    }
    assert!(acked.len() > ITERATIONS as usize, "the child must have made progress");
}
