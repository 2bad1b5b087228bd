//! Bad input and damaged files: each case gets a typed error naming the problem, the rest of the
//! log stays readable, and nothing panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{batch, read_all, small_segments};
use strata_storage::{BatchError, Error, Fsync, Log, LogConfig, StorageOptions};

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn filled_log(dir: &Path, batches: u64) -> Log {
    let log = Log::open(dir, small_segments()).unwrap();
    for tag in 0..batches {
        log.append(batch(tag, 4, tag as i64)).unwrap().wait().unwrap();
    }
    log
}

#[test]
fn oversized_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { max_batch_bytes: 1024, ..LogConfig::default() }).unwrap();
    let big = batch(0, 100, 0);
    let size = big.len();
    assert!(matches!(log.append(big), Err(Error::BatchTooLarge { size: s, max: 1024 }) if s == size));
    assert_eq!(log.high_watermark(), 0);
}

#[test]
fn batch_with_a_wrong_crc_or_garbage_is_refused_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let mut bad = batch(0, 3, 0);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert!(matches!(log.append(bad), Err(Error::InvalidBatch { source: BatchError::BadCrc { .. } })));
    assert!(matches!(log.append(vec![1, 2, 3]), Err(Error::InvalidBatch { source: BatchError::Truncated { .. } })));
    assert!(matches!(log.append(vec![0; 200]), Err(Error::InvalidBatch { source: BatchError::BadMagic(0) })));
    assert_eq!(log.high_watermark(), 0);
    assert_eq!(log.append(batch(1, 1, 0)).unwrap().wait().unwrap().base_offset, 0);
}

#[test]
fn append_to_a_deleted_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manager = strata_storage::LogManager::new(dir.path(), StorageOptions::default()).unwrap();
    let log = manager.open_log("orders-0", LogConfig::default()).unwrap();
    log.append(batch(0, 1, 0)).unwrap().wait().unwrap();
    manager.delete_log("orders-0").unwrap();
    assert!(!dir.path().join("orders-0").exists());
    assert!(matches!(log.append(batch(1, 1, 0)), Err(Error::LogDeleted { .. })));
    assert!(matches!(
        manager.open_log("../escape", LogConfig::default()),
        Err(Error::InvalidConfig { key: "name", .. })
    ));
}

#[test]
fn torn_tail_of_the_active_segment_is_cut_at_the_last_valid_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path(), 5);
    let end = log.segments().last().unwrap().size_bytes;
    drop(log);
    let active = segment_files(dir.path(), "log").pop().unwrap();
    // A half-written batch: the first bytes of a real batch, then nothing.
    let next = batch(99, 4, 0);
    let file = OpenOptions::new().write(true).open(&active).unwrap();
    file.write_all_at(&next[..next.len() / 2], end).unwrap();
    drop(file);
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.high_watermark(), 20);
    assert_eq!(log.append(batch(5, 4, 0)).unwrap().wait().unwrap().base_offset, 20);
    assert_eq!(read_all(&log, 0).len(), 24);

    // Random garbage after the last batch: the same.
    assert_eq!(log.segments().len(), 1);
    drop(log);
    let end = std::fs::metadata(&active).unwrap().len();
    let file = OpenOptions::new().write(true).open(&active).unwrap();
    file.write_all_at(&[0xde, 0xad, 0xbe, 0xef].repeat(100), end.min(4000)).unwrap();
    drop(file);
    let log = Log::open(dir.path(), small_segments()).unwrap();
    let hw = log.high_watermark();
    assert!(hw <= 24);
    assert_eq!(read_all(&log, 0).len() as u64, hw);
    assert_eq!(log.append(batch(6, 1, 0)).unwrap().wait().unwrap().base_offset, hw);
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_reported_with_file_and_position_and_other_segments_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled_log(dir.path(), 40);
    let segments = log.segments();
    assert!(segments.len() >= 4);
    drop(log);
    let victim = segment_files(dir.path(), "log")[1].clone();
    let len = std::fs::metadata(&victim).unwrap().len();
    let file = OpenOptions::new().read(true).write(true).open(&victim).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, len / 2).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], len / 2).unwrap();
    drop(file);

    // Opening does not scan sealed segments, so it succeeds.
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.high_watermark(), 160);
    let (first, second, third) = (segments[0].base_offset, segments[1].base_offset, segments[2].base_offset);
    // Read every batch of the damaged segment: exactly one fails, naming the file.
    let mut failures = 0;
    let mut offset = second;
    while offset < third {
        match log.read(offset, 1) {
            Ok(r) => offset = r.next_offset,
            Err(Error::Corrupt { path, position, .. }) => {
                assert_eq!(path, victim);
                assert!(position <= len / 2 && position >= 32, "position {position}");
                failures += 1;
                offset += 4; // skip the damaged batch (batches hold 4 records)
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(failures, 1);
    let mut before = Vec::new();
    let mut offset = first;
    while offset < second {
        let r = log.read(offset, 64).unwrap();
        before.extend(r.records_from(offset).unwrap());
        offset = r.next_offset;
    }
    assert_eq!(before.len() as u64, second - first, "the segment before is intact");
    assert_eq!(read_all(&log, third).len() as u64, 160 - third, "the segments after are intact");
    assert_eq!(log.append(batch(1000, 1, 0)).unwrap().wait().unwrap().base_offset, 160);
}

#[test]
fn missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let expected = read_all(&filled_log(dir.path(), 40), 0);
    let indexes = segment_files(dir.path(), "index");
    assert!(indexes.len() >= 3);
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], b"not an index").unwrap();
    let mut bytes = std::fs::read(&indexes[2]).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&indexes[2], &bytes).unwrap();

    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(read_all(&log, 0), expected);
    assert_eq!(log.offset_for_timestamp(20).unwrap(), Some(80));
    // Rebuilt indexes were written back and are valid again.
    assert!(indexes[0].exists());
    assert_ne!(std::fs::read(&indexes[1]).unwrap(), b"not an index");
}

#[test]
fn leftovers_of_an_interrupted_compaction_are_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let expected = read_all(&filled_log(dir.path(), 40), 0);
    let first = segment_files(dir.path(), "log")[0].clone();
    // A crash before the swap leaves a partial `.cleaned` file beside the old segment.
    std::fs::write(first.with_extension("log.cleaned"), b"partial").unwrap();
    std::fs::write(dir.path().join("00000000000000000000.index.tmp"), b"partial").unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert!(!first.with_extension("log.cleaned").exists());
    assert_eq!(read_all(&log, 0), expected);
}

#[derive(Debug, Default)]
struct FailingFsync(AtomicBool);

impl Fsync for FailingFsync {
    fn sync_data(&self, file: &std::fs::File) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) { Err(io::Error::other("injected EIO")) } else { file.sync_data() }
    }
}

#[test]
fn failed_fsync_poisons_the_log_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let fsync = Arc::new(FailingFsync::default());
    let options = StorageOptions { fsync: fsync.clone(), ..Default::default() };
    let log = Log::open_with_options(dir.path(), LogConfig::default(), options).unwrap();
    log.append(batch(0, 2, 0)).unwrap().wait().unwrap();
    fsync.0.store(true, Ordering::SeqCst);
    assert!(matches!(log.append(batch(1, 2, 0)).unwrap().wait(), Err(Error::Poisoned { .. })));
    assert!(matches!(log.append(batch(2, 2, 0)), Err(Error::Poisoned { .. })), "no silent continue");
    assert_eq!(log.high_watermark(), 2, "the unsynced batch never became visible");
    drop(log);
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert!(log.high_watermark() >= 2);
    let info = log.append(batch(3, 1, 0)).unwrap().wait().unwrap();
    assert_eq!(info.base_offset, log.high_watermark() - 1);
}

#[test]
fn damaged_active_segment_header_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(filled_log(dir.path(), 2));
    let active = segment_files(dir.path(), "log").pop().unwrap();
    let file = OpenOptions::new().write(true).open(&active).unwrap();
    file.write_all_at(b"XX", 0).unwrap();
    drop(file);
    assert!(
        matches!(Log::open(dir.path(), small_segments()), Err(Error::Corrupt { path, position: 0, .. }) if path == active)
    );
}
