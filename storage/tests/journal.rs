//! The journal: small durable appends are acknowledged once in the shared write-ahead file, and
//! a restart puts back into the segments whatever a crash took from them.
//!
//! A crash is simulated by stopping the manager without its final checkpoint (the journal keeps
//! its entries) and then cutting the segment files to what a power loss could leave of them:
//! their pages were never synced.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{batch, read_all};
use strata_storage::segment::SEGMENT_HEADER_LEN;
use strata_storage::{BatchBuilder, Compression, LogConfig, LogManager, Record, StorageOptions};

fn options(file_bytes: u64) -> StorageOptions {
    StorageOptions { journal_file_bytes: file_bytes, ..Default::default() }
}

/// The files in `dir` named `*.<extension>`, in name order.
fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir, "log")
}

/// Cuts a log's active segment back to its header: what a power loss leaves of pages never
/// synced.
fn lose_segment_data(root: &Path, log: &str) {
    let active = segments(&root.join(log)).pop().unwrap();
    OpenOptions::new().write(true).open(&active).unwrap().set_len(SEGMENT_HEADER_LEN).unwrap();
}

fn journal_files(root: &Path, suffix: &str) -> usize {
    std::fs::read_dir(root.join("_journal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(suffix))
        .count()
}

/// Appends `per_log` small batches to each log, round robin, and waits until all are durable.
/// Returns every log's records.
fn fill(manager: &LogManager, names: &[&str], per_log: u64) -> Vec<Vec<Record>> {
    let logs: Vec<_> = names.iter().map(|n| manager.open_log(n, LogConfig::default()).unwrap()).collect();
    let mut pending = Vec::new();
    for i in 0..per_log {
        for (k, log) in logs.iter().enumerate() {
            pending.push(log.append(batch(i * 100 + k as u64, 1 + (i % 3) as usize, 0)).unwrap());
        }
    }
    for p in pending {
        p.wait().unwrap();
    }
    logs.iter().map(|l| read_all(l, 0)).collect()
}

fn reopened(root: &Path, names: &[&str]) -> Vec<Vec<Record>> {
    let manager = LogManager::new(root, options(32 << 20)).unwrap();
    names.iter().map(|n| read_all(&manager.open_log(n, LogConfig::default()).unwrap(), 0)).collect()
}

#[test]
fn a_restart_puts_back_acknowledged_appends_the_segments_lost() {
    let root = tempfile::tempdir().unwrap();
    let names = ["a-0", "a-1", "b-0"];
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &names, 40);
    drop(manager);
    assert!(journal_files(root.path(), ".wal") > 0, "the crash leaves the journal as it was");
    // Nothing of a-0 reached its segment, a-1 kept a torn half of its data, b-0 all of it.
    lose_segment_data(root.path(), "a-0");
    let a1 = segments(&root.path().join("a-1")).pop().unwrap();
    let len = std::fs::metadata(&a1).unwrap().len();
    OpenOptions::new().write(true).open(&a1).unwrap().set_len(len / 2).unwrap();

    assert_eq!(reopened(root.path(), &names), expected);
    // Replayed once: a second restart finds nothing to add.
    assert_eq!(reopened(root.path(), &names), expected);
    // And the replayed entries are gone from the journal: losing the segment now loses them.
    lose_segment_data(root.path(), "a-0");
    assert!(reopened(root.path(), &["a-0"])[0].is_empty());
}

#[test]
fn a_clean_shutdown_leaves_nothing_to_replay() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &["t-0"], 20);
    manager.flush_all().unwrap();
    drop(manager);
    assert_eq!(reopened(root.path(), &["t-0"]), expected);
    // Checkpointed: no journal file holds the entries any more (so a restart has nothing to
    // replay), which shows if the segment loses what it was synced with.
    lose_segment_data(root.path(), "t-0");
    assert!(reopened(root.path(), &["t-0"])[0].is_empty());
}

#[test]
fn a_log_deleted_and_created_again_never_gets_the_old_ones_records() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    fill(&manager, &["t-0"], 5);
    manager.delete_log("t-0").unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    log.append(batch(999, 1, 0)).unwrap().wait().unwrap();
    let expected = read_all(&log, 0);
    drop(log);
    drop(manager);
    lose_segment_data(root.path(), "t-0");
    let after = reopened(root.path(), &["t-0"]);
    assert_eq!(after[0], expected, "only the new log's batch comes back");
    assert_eq!(after[0].len(), 1);
}

#[test]
fn full_journal_files_are_checkpointed_and_reused() {
    let root = tempfile::tempdir().unwrap();
    let names = ["t-0", "t-1", "t-2", "t-3"];
    // 16 KiB files: a few dozen batches each, so hundreds of files' worth rotate through four.
    let manager = LogManager::new(root.path(), options(16 << 10)).unwrap();
    let expected = fill(&manager, &names, 300);
    let files = journal_files(root.path(), ".wal") + journal_files(root.path(), ".spare");
    assert!((1..=4).contains(&files), "{files} journal files");
    // Each file written takes the next epoch (its name): more epochs than the four files there
    // may be means files were checkpointed and reused. (~170 KB of entries fill about ten.
    // Whether one waits as a spare at this moment depends on whether the checkpointer has
    // already made it the next file, so that is not asked.)
    let last_epoch = std::fs::read_dir(root.path().join("_journal"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().split('.').next()?.parse::<u64>().ok())
        .max()
        .unwrap();
    assert!(last_epoch > 4, "epoch {last_epoch} after ~170 KB of entries in 16 KiB files");
    drop(manager);
    assert_eq!(reopened(root.path(), &names), expected);
}

#[test]
fn a_torn_journal_write_ends_the_replay_before_it() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &["t-0"], 10);
    drop(manager);
    // The last entry's bytes damaged, as a write a crash interrupted would leave them.
    // The oldest `.wal` holds the entries (a newer one is a file made ready ahead, still empty).
    let wal = wal_files(root.path()).remove(0);
    let bytes = std::fs::read(&wal).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    OpenOptions::new().write(true).open(&wal).unwrap().write_all_at(&[bytes[end] ^ 0xff], end as u64).unwrap();
    lose_segment_data(root.path(), "t-0");

    // The last append was a batch of one record (`fill`: 1 + 9 % 3): all but it come back.
    let after = reopened(root.path(), &["t-0"]);
    assert_eq!(after[0][..], expected[0][..expected[0].len() - 1]);
}

#[test]
fn journaled_appends_wait_in_memory_until_a_read_or_a_sync_needs_them() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    for i in 0..10 {
        log.append(batch(i, 2, 0)).unwrap().wait().unwrap();
    }
    let active = segments(&root.path().join("t-0")).pop().unwrap();
    let on_disk = || std::fs::metadata(&active).unwrap().len();
    assert_eq!(on_disk(), SEGMENT_HEADER_LEN, "acknowledged through the journal, not yet written");
    assert_eq!(read_all(&log, 0).len(), 20, "a read writes them first");
    assert_eq!(on_disk(), log.size_bytes());
    log.append(batch(10, 2, 0)).unwrap().wait().unwrap();
    log.flush().unwrap();
    assert_eq!(on_disk(), log.size_bytes(), "a flush writes them too");
    // Never written at all: a crash (here, dropping without the final checkpoint) leaves them
    // to the journal's replay.
    log.append(batch(11, 2, 0)).unwrap().wait().unwrap();
    let expected = read_all(&log, 0);
    log.append(batch(12, 2, 0)).unwrap().wait().unwrap();
    let mut expected_after = expected.clone();
    expected_after.extend(read_all(&log, expected.len() as u64));
    drop(log);
    drop(manager);
    assert_eq!(reopened(root.path(), &["t-0"])[0], expected_after);
}

#[test]
fn journaled_appends_reach_their_segment_in_order_as_they_gather() {
    // Thousands of small batches: each time the waiting ones would pass the write-behind size
    // they are written together (one vectored write), the last few still wait.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    let pending: Vec<_> = (0..3000).map(|i| log.append(batch(i, 1, 0)).unwrap()).collect();
    for p in pending {
        p.wait().unwrap();
    }
    let active = segments(&root.path().join("t-0")).pop().unwrap();
    let on_disk = std::fs::metadata(&active).unwrap().len();
    assert!(on_disk > 2 * (64 << 10), "written as they gathered: {on_disk} bytes");
    assert!(on_disk < log.size_bytes(), "the last ones still wait in memory");
    let records = read_all(&log, 0);
    let keys: Vec<_> = records.iter().map(|r| (r.offset, r.key.clone().unwrap())).collect();
    let expected: Vec<_> = (0..3000u64).map(|i| (i, bytes::Bytes::from(format!("k{i}-0")))).collect();
    assert_eq!(keys, expected);
    // A crash before any of it was synced in the segment: the journal puts back the same log.
    drop(log);
    drop(manager);
    assert_eq!(reopened(root.path(), &["t-0"])[0], records);
}

#[test]
fn a_batch_over_8_kib_is_synced_in_its_segment_not_journaled() {
    // Such a batch carries enough bytes for its own fdatasync; journaled, it would be written
    // twice, and every checkpoint's writeback would hold up the journal's syncs meanwhile.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    let active = segments(&root.path().join("t-0")).pop().unwrap();
    let on_disk = || std::fs::metadata(&active).unwrap().len();
    let records = |n: usize| {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..n {
            b.push(0, None, Some(&[b'v'; 1000]), &[]);
        }
        b.build().unwrap()
    };
    log.append(records(7)).unwrap().wait().unwrap();
    assert_eq!(on_disk(), SEGMENT_HEADER_LEN, "~7 KiB: journaled, the segment not yet written");
    log.append(records(9)).unwrap().wait().unwrap();
    assert_eq!(on_disk(), log.size_bytes(), "~9 KiB: written into the segment (the batch before it first)");
    let expected = read_all(&log, 0);
    assert_eq!(expected.len(), 16);
    // Nor is it in the journal: with the segment's bytes taken away after a crash, the replay
    // brings back the journaled batch only.
    drop(log);
    drop(manager);
    lose_segment_data(root.path(), "t-0");
    assert_eq!(reopened(root.path(), &["t-0"])[0], expected[..7]);
}

#[test]
fn a_reused_journal_file_never_replays_entries_of_an_earlier_run() {
    let root = tempfile::tempdir().unwrap();
    // Run 1 fills the first journal file, and a clean shutdown makes it a spare.
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    for i in 0..5 {
        log.append(batch(10 + i, 1, 0)).unwrap().wait().unwrap();
    }
    manager.flush_all().unwrap();
    drop((log, manager));
    // Run 2 reuses that file: its one entry (of the same size as each old one) covers only the
    // first old entry, then it crashes.
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    manager.open_log("t-0", LogConfig::default()).unwrap();
    manager.delete_log("t-0").unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    log.append(batch(20, 1, 0)).unwrap().wait().unwrap();
    let expected = read_all(&log, 0);
    drop((log, manager));
    lose_segment_data(root.path(), "t-0");
    // The old entries after it would pass their checksums: only their epoch tells them apart.
    assert_eq!(reopened(root.path(), &["t-0"])[0], expected);
}

/// Appends `batches` batches of 6 records of 1,000 bytes (~6 KiB, still journaled) to each log,
/// round robin, and waits until all are durable.
fn fill_large(manager: &LogManager, names: &[&str], batches: usize) {
    let logs: Vec<_> = names.iter().map(|n| manager.open_log(n, LogConfig::default()).unwrap()).collect();
    let value = vec![b'v'; 1000];
    let mut pending = Vec::new();
    for _ in 0..batches {
        for log in &logs {
            let mut b = BatchBuilder::new(Compression::None);
            for _ in 0..6 {
                b.push(0, None, Some(&value), &[]);
            }
            pending.push(log.append(b.build().unwrap()).unwrap());
        }
    }
    for p in pending {
        p.wait().unwrap();
    }
}

/// The journal files now in use (`.wal`), oldest first.
fn wal_files(root: &Path) -> Vec<PathBuf> {
    files(&root.join("_journal"), "wal")
}

#[test]
fn a_journal_file_of_few_logs_is_checkpointed_long_before_it_is_full() {
    // 32 MiB files, but one log: its file is checkpointed after a few MiB, so that each
    // checkpoint writes and syncs little at a time (every append waiting meanwhile sees it).
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    // The file the first entry went to: the oldest `.wal` (a file made ready ahead of need has
    // the next epoch). Taken after the 6 MiB, it could be the second file, when the writer had
    // split them and the first was already checkpointed.
    fill_large(&manager, &["t-0"], 1);
    let first = wal_files(root.path()).remove(0);
    fill_large(&manager, &["t-0"], 1000); // ~6 MiB: past the first file's mark
    fill_large(&manager, &["t-0"], 1); // the next write finds the file past its mark
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while first.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!first.exists(), "the first file was checkpointed (and became a spare)");
    drop(manager);
    // Its entries are gone from the journal: losing the segment's data now loses them.
    lose_segment_data(root.path(), "t-0");
    assert!(reopened(root.path(), &["t-0"])[0].is_empty());
}

#[test]
fn a_journal_file_of_many_logs_fills_further_before_its_checkpoint() {
    // 200 logs: a file may take 64 KiB per log (12.5 MiB) before its checkpoint, so that every
    // log gathers whole pages between two checkpoints.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let names: Vec<String> = (0..200).map(|i| format!("t-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let expected = {
        fill_large(&manager, &names, 10); // 200 × ~60 KiB: under 64 KiB a log
        fill_large(&manager, &names[..1], 1);
        names.iter().map(|n| read_all(&manager.open_log(n, LogConfig::default()).unwrap(), 0)).collect::<Vec<_>>()
    };
    let first = wal_files(root.path()).remove(0);
    drop(manager);
    assert!(first.exists(), "not checkpointed");
    // So a crash leaves every entry to the replay.
    lose_segment_data(root.path(), "t-0");
    assert_eq!(reopened(root.path(), &names), expected);
}
