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

/// The journal's files (`<n>.slot`), in name order.
fn slots(root: &Path) -> Vec<PathBuf> {
    files(&root.join("_journal"), "slot")
}

/// The epoch in a journal file's current header: of the two header blocks (at 0 and 512), the
/// valid one with the larger epoch.
fn header_epoch(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).unwrap();
    [0u64, 512]
        .iter()
        .filter_map(|&at| {
            let mut h = [0u8; 20];
            file.read_exact_at(&mut h, at).unwrap();
            let valid = h[..4] == *b"SJNL" && h[16..] == crc32c::crc32c(&h[..16]).to_le_bytes();
            valid.then(|| u64::from_le_bytes(h[8..16].try_into().unwrap()))
        })
        .max()
}

/// The journal file holding the most entries: the one whose last byte that is not zero lies
/// furthest from its start (the others hold a header only, or fewer entries).
fn fullest_slot(root: &Path) -> PathBuf {
    slots(root).into_iter().max_by_key(|p| std::fs::read(p).unwrap().iter().rposition(|&b| b != 0)).unwrap()
}

/// Where the last entry of a log (not padding: an entry whose name is empty) ends in a journal
/// file's bytes, its entries walked from 4 KiB until one has no length.
fn last_entry_end(file: &[u8]) -> usize {
    let (mut at, mut end) = (4096, None);
    while at + 18 <= file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        if len < 18 {
            break;
        }
        if u16::from_le_bytes([file[at + 16], file[at + 17]]) > 0 {
            end = Some(at + len);
        }
        at += len;
    }
    end.expect("a journal entry")
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

/// Whether a segment file of `len` bytes holds a log of `size`: a flush writes an `always` log's
/// batches past the page cache, padded with zeros to a block.
fn holds(len: u64, size: u64) -> bool {
    (size..=size.next_multiple_of(4096)).contains(&len)
}

#[test]
fn a_restart_puts_back_acknowledged_appends_the_segments_lost() {
    let root = tempfile::tempdir().unwrap();
    let names = ["a-0", "a-1", "b-0"];
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &names, 40);
    drop(manager);
    assert!(!slots(root.path()).is_empty(), "the crash leaves the journal as it was");
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
fn the_journal_is_replayed_after_a_crash_even_when_turned_off_since() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &["t-0"], 10);
    drop(manager);
    lose_segment_data(root.path(), "t-0");
    let off = StorageOptions { journal: false, ..Default::default() };
    let manager = LogManager::new(root.path(), off.clone()).unwrap();
    assert_eq!(read_all(&manager.open_log("t-0", LogConfig::default()).unwrap(), 0), expected[0]);
    drop(manager);
    // Replayed once, into a synced segment: nothing is left for a later start.
    lose_segment_data(root.path(), "t-0");
    let manager = LogManager::new(root.path(), off).unwrap();
    assert!(read_all(&manager.open_log("t-0", LogConfig::default()).unwrap(), 0).is_empty());
}

#[test]
fn a_clean_shutdown_leaves_nothing_to_replay() {
    // One log (its checkpoint syncs each log's segment) and twenty (one `syncfs`).
    for logs in [1, 20] {
        let root = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..logs).map(|i| format!("t-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
        let expected = fill(&manager, &names, 20);
        manager.flush_all().unwrap();
        drop(manager);
        assert_eq!(reopened(root.path(), &names), expected);
        // Checkpointed: no journal file holds the entries any more (so a restart has nothing to
        // replay), which shows if the segment loses what it was synced with.
        lose_segment_data(root.path(), "t-0");
        assert!(reopened(root.path(), &["t-0"])[0].is_empty(), "{logs} logs");
    }
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
    let files = slots(root.path());
    assert!((1..=4).contains(&files.len()), "{} journal files", files.len());
    assert_eq!(journal_files(root.path(), ""), files.len(), "nothing else in the directory");
    // Each file made or retired takes the next epoch: more epochs than the four files there may
    // be means files were checkpointed and reused (~170 KB of entries fill about ten).
    let last_epoch = files.iter().filter_map(|p| header_epoch(p)).max().unwrap();
    assert!(last_epoch > 4, "epoch {last_epoch} after ~170 KB of entries in 16 KiB files");
    drop(manager);
    assert_eq!(reopened(root.path(), &names), expected);
}

/// The current entries of the journal file at `path` from 4 KiB on, as (length, whether a
/// padding entry), up to the first that has no length or another epoch than the file's.
fn entries(path: &Path) -> Vec<(usize, bool)> {
    let epoch = header_epoch(path).unwrap();
    let file = std::fs::read(path).unwrap();
    let mut at = 4096;
    let mut found = Vec::new();
    while at + 18 <= file.len() {
        let len = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        if len < 18 || u64::from_le_bytes(file[at + 8..at + 16].try_into().unwrap()) != epoch {
            break;
        }
        found.push((len, u16::from_le_bytes([file[at + 16], file[at + 17]]) == 0));
        at += len;
    }
    found
}

/// With `direct_io` off (as on a filesystem without `O_DIRECT`) the journal writes through the
/// page cache: entries back to back with no padding, files checkpointed and reused, and a crash
/// loses no acknowledged append; with it on (this project's disk takes `O_DIRECT`) each write
/// ends with padding up to a block.
#[test]
fn through_the_page_cache_the_journal_checkpoints_reuses_files_and_replays_what_a_crash_lost() {
    let root = tempfile::tempdir().unwrap();
    let names = ["t-0", "t-1", "t-2", "t-3"];
    let buffered = StorageOptions { direct_io: false, ..options(16 << 10) };
    let manager = LogManager::new(root.path(), buffered).unwrap();
    let expected = fill(&manager, &names, 300);
    let files = slots(root.path());
    let last_epoch = files.iter().filter_map(|p| header_epoch(p)).max().unwrap();
    assert!(last_epoch > 4, "files checkpointed and reused: epoch {last_epoch}");
    let written: Vec<_> = files.iter().flat_map(|p| entries(p)).collect();
    assert!(!written.is_empty(), "entries in the files not yet retired");
    assert!(written.iter().all(|&(_, padding)| !padding), "no padding through the page cache");
    drop(manager);
    assert_eq!(reopened(root.path(), &names), expected);

    // Files large enough for no checkpoint: a crash that takes every segment's unsynced pages
    // leaves the journal to put them back.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), StorageOptions { direct_io: false, ..options(32 << 20) }).unwrap();
    let expected = fill(&manager, &names, 40);
    drop(manager);
    for name in names {
        lose_segment_data(root.path(), name);
    }
    assert_eq!(reopened(root.path(), &names), expected);

    // Past the page cache, in a fresh directory: every write is padded to a block.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    fill(&manager, &["t-0"], 5);
    let written = entries(&fullest_slot(root.path()));
    assert!(written.iter().any(|&(_, padding)| padding), "padding after O_DIRECT writes: {written:?}");
}

#[test]
fn a_torn_journal_write_ends_the_replay_before_it() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &["t-0"], 10);
    drop(manager);
    // The last entry's bytes damaged, as a write a crash interrupted would leave them (the
    // padding after it, where the journal writes with `O_DIRECT`, left as it is).
    let wal = fullest_slot(root.path());
    let bytes = std::fs::read(&wal).unwrap();
    let end = last_entry_end(&bytes) - 1;
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
    assert!(holds(on_disk(), log.size_bytes()), "a flush writes them too");
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
fn a_batch_over_32_kib_is_synced_in_its_segment_not_journaled() {
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
    log.append(records(31)).unwrap().wait().unwrap();
    assert_eq!(on_disk(), SEGMENT_HEADER_LEN, "~31 KiB: journaled, the segment not yet written");
    log.append(records(33)).unwrap().wait().unwrap();
    assert!(holds(on_disk(), log.size_bytes()), "~33 KiB: written into the segment (the batch before it first)");
    let expected = read_all(&log, 0);
    assert_eq!(expected.len(), 64);
    // Nor is it in the journal: with the segment's bytes taken away after a crash, the replay
    // brings back the journaled batch only.
    drop(log);
    drop(manager);
    lose_segment_data(root.path(), "t-0");
    assert_eq!(reopened(root.path(), &["t-0"])[0], expected[..31]);
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

#[test]
fn a_journal_file_of_few_logs_is_checkpointed_long_before_it_is_full() {
    // 32 MiB files, but one log: its file is checkpointed after a few MiB, so that each
    // checkpoint writes and syncs little at a time (every append waiting meanwhile sees it).
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    // The file the first entry went to (a file made ahead of need holds a header only). Taken
    // after the 6 MiB, it could be the second file, when the writer had split them and the first
    // was already checkpointed.
    fill_large(&manager, &["t-0"], 1);
    let first = fullest_slot(root.path());
    let epoch = header_epoch(&first);
    fill_large(&manager, &["t-0"], 1000); // ~6 MiB: past the first file's mark
    fill_large(&manager, &["t-0"], 1); // the next write finds the file past its mark
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while header_epoch(&first) == epoch && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_ne!(header_epoch(&first), epoch, "the first file was checkpointed (and given a new epoch)");
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
    let first = fullest_slot(root.path());
    let epoch = header_epoch(&first);
    drop(manager);
    assert_eq!(header_epoch(&first), epoch, "not checkpointed");
    // So a crash leaves every entry to the replay.
    lose_segment_data(root.path(), "t-0");
    assert_eq!(reopened(root.path(), &names), expected);
}

/// A journal entry as the journal writes it: `len | crc32c | epoch | name_len | name | batch`.
fn entry(epoch: u64, name: &str, batch: &[u8]) -> Vec<u8> {
    let len = 18 + name.len() + batch.len();
    let mut e = Vec::with_capacity(len);
    e.extend_from_slice(&(len as u32).to_le_bytes());
    e.extend_from_slice(&[0; 4]);
    e.extend_from_slice(&epoch.to_le_bytes());
    e.extend_from_slice(&(name.len() as u16).to_le_bytes());
    e.extend_from_slice(name.as_bytes());
    e.extend_from_slice(batch);
    let crc = crc32c::crc32c(&e[8..]);
    e[4..8].copy_from_slice(&crc.to_le_bytes());
    e
}

#[test]
fn journal_files_of_the_layout_before_headers_are_replayed_then_removed() {
    // Until 2026-12-06 the journal named its files after their epoch, `<epoch>.wal` in use and
    // `<epoch>.spare` retired, with entries from the file's start.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    for name in ["t-0", "t-1"] {
        manager.open_log(name, LogConfig::default()).unwrap();
    }
    manager.flush_all().unwrap();
    drop(manager);
    let dir = root.path().join("_journal");
    for slot in slots(root.path()) {
        std::fs::remove_file(slot).unwrap();
    }
    // t-0's first batch reached only the journal; a retired file still holds one of t-1.
    let mut wal = entry(7, "t-0", &batch(1, 3, 0));
    wal.resize(64 << 10, 0);
    std::fs::write(dir.join(format!("{:020}.wal", 7)), &wal).unwrap();
    let mut spare = entry(9, "t-1", &batch(2, 2, 0));
    spare.resize(64 << 10, 0);
    std::fs::write(dir.join(format!("{:020}.spare", 9)), &spare).unwrap();

    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let logs = ["t-0", "t-1"].map(|n| manager.open_log(n, LogConfig::default()).unwrap());
    assert_eq!(read_all(&logs[0], 0).len(), 3, "the `.wal` file's entry is replayed");
    assert!(read_all(&logs[1], 0).is_empty(), "a `.spare` file's entries were retired");
    assert_eq!(journal_files(root.path(), ".wal") + journal_files(root.path(), ".spare"), 0);
    // The journal that replayed them gives its own files (one at least, once an entry is written)
    // epochs past both. (Asked of the next start instead, this depended on whether the writer
    // had made its first file before this one stopped: with no file left, the next start begins
    // again at epoch 0, which is safe, since no file holds entries an epoch would have to void.)
    logs[1].append(batch(3, 1, 0)).unwrap().wait().unwrap();
    let epochs: Vec<_> = slots(root.path()).iter().map(|p| header_epoch(p).unwrap()).collect();
    assert!(!epochs.is_empty() && epochs.iter().all(|&e| e > 9), "{epochs:?}");
    manager.flush_all().unwrap();
    drop(logs);
    drop(manager);
    // And once replayed, the entry is in its segment, not in the journal any more.
    lose_segment_data(root.path(), "t-0");
    assert!(reopened(root.path(), &["t-0"])[0].is_empty());
}

#[test]
fn padding_after_a_journal_write_is_passed_over_by_the_replay() {
    // Written with `O_DIRECT`, each write ends on a block boundary: an entry with an empty name
    // (no log has one) fills the rest of the block, and the next write's entries follow it.
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    manager.open_log("t-0", LogConfig::default()).unwrap();
    manager.flush_all().unwrap();
    drop(manager);
    for slot in slots(root.path()) {
        std::fs::remove_file(slot).unwrap();
    }
    let epoch = 5u64;
    let mut file = vec![0u8; 64 << 10];
    let mut header = [0u8; 20];
    header[..4].copy_from_slice(b"SJNL");
    header[4..6].copy_from_slice(&2u16.to_le_bytes());
    header[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c::crc32c(&header[..16]);
    header[16..].copy_from_slice(&crc.to_le_bytes());
    file[..20].copy_from_slice(&header);
    let mut second = batch(2, 2, 0);
    strata_storage::batch::set_base_offset(&mut second, 3);
    let mut at = 4096;
    for batch in [batch(1, 3, 0), second] {
        let e = entry(epoch, "t-0", &batch);
        file[at..at + e.len()].copy_from_slice(&e);
        at += e.len();
        let gap = at.next_multiple_of(512) - at;
        let pad = entry(epoch, "", &vec![0; if gap < 18 { gap + 512 } else { gap } - 18]);
        file[at..at + pad.len()].copy_from_slice(&pad);
        at += pad.len();
        assert_eq!(at % 512, 0);
    }
    std::fs::write(root.path().join("_journal").join("0.slot"), &file).unwrap();

    let after = reopened(root.path(), &["t-0"]);
    assert_eq!(after[0].len(), 5, "both writes' entries are replayed");
    assert_eq!(after[0][4].offset, 4);
}

#[test]
fn a_new_header_torn_by_a_crash_leaves_the_files_entries_to_the_replay() {
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(32 << 20)).unwrap();
    let expected = fill(&manager, &["t-0"], 10);
    drop(manager);
    // A checkpoint writes a file's new header into the block its current header is not in: a
    // crash in that write leaves that block damaged, and the current header as it was.
    let slot = fullest_slot(root.path());
    let epoch = header_epoch(&slot).unwrap();
    let file = OpenOptions::new().read(true).write(true).open(&slot).unwrap();
    for at in [0u64, 512] {
        let mut h = [0u8; 20];
        file.read_exact_at(&mut h, at).unwrap();
        if h[..4] != *b"SJNL" || u64::from_le_bytes(h[8..16].try_into().unwrap()) != epoch {
            file.write_all_at(b"SJNL\x01\x00\x00\x00torn-garbage", at).unwrap();
        }
    }
    assert_eq!(header_epoch(&slot), Some(epoch));
    lose_segment_data(root.path(), "t-0");
    assert_eq!(reopened(root.path(), &["t-0"]), expected);
}

#[test]
fn with_small_journal_files_a_batch_too_large_for_two_per_file_is_synced_in_its_segment() {
    // 16 KiB files: entries start at 4 KiB, so 12 KiB of room, and batches over half of that
    // (6 KiB) go to their segments (journaled, one that does not fit in a file would stop the
    // journal for every log).
    let root = tempfile::tempdir().unwrap();
    let manager = LogManager::new(root.path(), options(16 << 10)).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    let active = segments(&root.path().join("t-0")).pop().unwrap();
    let on_disk = || std::fs::metadata(&active).unwrap().len();
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..10 {
        b.push(0, None, Some(&[b'v'; 1000]), &[]);
    }
    log.append(b.build().unwrap()).unwrap().wait().unwrap();
    assert!(holds(on_disk(), log.size_bytes()), "~10 KiB: written into the segment");
    let size = on_disk();
    log.append(batch(1, 2, 0)).unwrap().wait().unwrap();
    assert_eq!(on_disk(), size, "a small batch after it is still journaled");
}

/// With `direct_writes`, four producers append batches of both kinds to each of three `always`
/// logs (small ones the journal takes, ~60 KiB ones their flush writes past the page cache,
/// outside the log's lock)
/// into small segments, while a reader follows each log right behind: the reader sees every
/// batch exactly as a later full read and a reopened log do. Run with the default batch cache
/// (readers served from memory), one too small for three logs (their bytes taken from each
/// other, readers sent to the file) and none.
#[test]
fn durable_batches_written_outside_the_lock_read_back_while_they_are_written() {
    for recent_bytes in [strata_storage::DEFAULT_RECENT_BYTES, 300 << 10, 0] {
        let root = tempfile::tempdir().unwrap();
        let options = StorageOptions { direct_writes: true, recent_bytes, ..options(32 << 20) };
        let manager = LogManager::new(root.path(), options).unwrap();
        let config = LogConfig { segment_bytes: 256 << 10, ..LogConfig::default() };
        let names = ["a-0", "b-0", "c-0"];
        let logs: Vec<_> = names.iter().map(|n| manager.open_log(n, config.clone()).unwrap()).collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let followed: Vec<Vec<Record>> = std::thread::scope(|s| {
            for p in 0..4u64 {
                let (logs, done) = (&logs, &done);
                s.spawn(move || {
                    for i in 0..60u64 {
                        let n = if i % 3 == 0 { 2000 } else { 1 + (i % 4) as usize };
                        let log = &logs[((i + p) % 3) as usize];
                        log.append(batch(p * 1000 + i, n, 0)).unwrap().wait().unwrap();
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                });
            }
            let readers: Vec<_> = logs
                .iter()
                .map(|log| {
                    let done = &done;
                    s.spawn(move || {
                        let mut records = Vec::new();
                        let mut offset = 0;
                        loop {
                            let finished = done.load(std::sync::atomic::Ordering::Acquire) == 4;
                            let r = log.read(offset, 256 << 10).unwrap();
                            if r.batches.is_empty() {
                                if finished {
                                    return records;
                                }
                                std::thread::yield_now();
                                continue;
                            }
                            records.extend(r.records_from(offset).unwrap());
                            offset = r.next_offset;
                        }
                    })
                })
                .collect();
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for (log, followed) in logs.iter().zip(&followed) {
            assert!(log.segments().len() > 3, "segments rolled: {:?}", log.segments());
            let offsets: Vec<u64> = followed.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, (0..followed.len() as u64).collect::<Vec<_>>(), "dense offsets");
            assert_eq!(&read_all(log, 0), followed, "a full read sees what the follower saw");
        }
        let keys: usize = followed.iter().map(Vec::len).sum();
        let expected: usize = (0..60usize).map(|i| if i % 3 == 0 { 2000 } else { 1 + i % 4 }).sum::<usize>() * 4;
        assert_eq!(keys, expected, "every record of every batch");
        drop(logs);
        drop(manager);
        assert_eq!(reopened(root.path(), &names), followed, "budget {recent_bytes}");
    }
}

/// Syncs files, slowly while `slow` is set.
#[derive(Debug, Default)]
struct SlowSync {
    slow: std::sync::atomic::AtomicBool,
}

impl strata_storage::Fsync for SlowSync {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        if self.slow.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        file.sync_data()
    }
}

/// Journaled batches (durable, so readable) that a flush has taken to write with a large one
/// are read back while that flush still syncs, with no memory to serve them from: the read
/// waits until the file holds them.
#[test]
fn journaled_batches_a_flush_is_writing_are_read_from_the_file_once_written() {
    let root = tempfile::tempdir().unwrap();
    let fsync = std::sync::Arc::new(SlowSync::default());
    let options = StorageOptions { direct_writes: true, recent_bytes: 0, fsync: fsync.clone(), ..options(32 << 20) };
    let manager = LogManager::new(root.path(), options).unwrap();
    let log = manager.open_log("t-0", LogConfig::default()).unwrap();
    for i in 0..3 {
        log.append(batch(i, 2, 0)).unwrap().wait().unwrap();
    }
    fsync.slow.store(true, std::sync::atomic::Ordering::Release);
    let large = log.append(batch(3, 2000, 0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let small = read_all(&log, 0);
    let keys: Vec<_> = small.iter().map(|r| r.key.clone().unwrap()).collect();
    let expected: Vec<_> =
        (0..3).flat_map(|i| [format!("k{i}-0"), format!("k{i}-1")]).map(bytes::Bytes::from).collect();
    assert_eq!(keys, expected, "the journaled batches, while the large one syncs");
    large.wait().unwrap();
    fsync.slow.store(false, std::sync::atomic::Ordering::Release);
    let all = read_all(&log, 0);
    assert_eq!((all.len(), &all[..6]), (2006, &small[..]));
}

/// Whether `file` is one of the journal's (by its path, read back from `/proc`).
fn is_journal_file(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|p| p.components().any(|c| c.as_os_str() == "_journal"))
}

/// Syncs files, each journal sync taking 20 ms (or failing while `fail` is set).
#[derive(Debug, Default)]
struct SlowJournalSync {
    /// Journal syncs fail while set.
    fail: std::sync::atomic::AtomicBool,
}

impl strata_storage::Fsync for SlowJournalSync {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if !is_journal_file(file) {
            return file.sync_data();
        }
        if self.fail.load(SeqCst) {
            return Err(std::io::Error::other("injected EIO"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.sync_data()
    }
}

/// Appends keep arriving while each journal sync runs (20 ms): they wait for it and go out
/// together in the next write; every append is acknowledged with dense offsets, and a crash
/// then loses none of them (the replay puts back what the segments lost).
#[test]
fn appends_queued_behind_slow_journal_syncs_are_acknowledged_in_order_and_survive_a_crash() {
    appends_behind_slow_syncs_survive_a_crash(true);
}

/// The same through the page cache (`direct_io` off, as on a filesystem without `O_DIRECT`).
#[test]
fn through_the_page_cache_appends_behind_slow_journal_syncs_survive_a_crash() {
    appends_behind_slow_syncs_survive_a_crash(false);
}

fn appends_behind_slow_syncs_survive_a_crash(direct_io: bool) {
    let root = tempfile::tempdir().unwrap();
    let fsync = std::sync::Arc::new(SlowJournalSync::default());
    let names = ["s-0", "s-1", "s-2", "s-3"];
    let options = StorageOptions { fsync: fsync.clone(), direct_io, ..options(32 << 20) };
    let manager = LogManager::new(root.path(), options).unwrap();
    // Batches of 500 small records (~17 KiB, journaled), ten in flight per log at a time.
    let acked: Vec<Vec<u64>> = std::thread::scope(|s| {
        let writers: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let log = manager.open_log(name, LogConfig::default()).unwrap();
                s.spawn(move || {
                    let mut offsets = Vec::new();
                    for round in 0..5u64 {
                        let pending: Vec<_> = (0..10u64)
                            .map(|i| log.append(batch((round * 10 + i) * 10 + k as u64, 500, 0)).unwrap())
                            .collect();
                        offsets.extend(pending.into_iter().map(|p| p.wait().unwrap().base_offset));
                    }
                    offsets
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for offsets in &acked {
        assert_eq!(offsets, &(0..50).map(|i| i * 500).collect::<Vec<u64>>(), "dense, in order");
    }
    let expected: Vec<_> =
        names.iter().map(|n| read_all(&manager.open_log(n, LogConfig::default()).unwrap(), 0)).collect();
    assert!(expected.iter().all(|records| records.len() == 25_000));
    drop(manager);
    for name in names {
        lose_segment_data(root.path(), name);
    }
    assert_eq!(reopened(root.path(), &names), expected);
}

/// A journal sync that fails fails the appends it would have acknowledged (their log refuses
/// writes until reopened); the journal takes no more entries, so other logs sync their own
/// segments; what was acknowledged before is there after a restart.
#[test]
fn a_failed_journal_sync_fails_the_appends_it_covers_and_later_ones_sync_their_segments() {
    use std::sync::atomic::Ordering::SeqCst;
    let root = tempfile::tempdir().unwrap();
    let fsync = std::sync::Arc::new(SlowJournalSync::default());
    let manager = LogManager::new(root.path(), StorageOptions { fsync: fsync.clone(), ..options(32 << 20) }).unwrap();
    let a = manager.open_log("a-0", LogConfig::default()).unwrap();
    let b = manager.open_log("b-0", LogConfig::default()).unwrap();
    for i in 0..3 {
        a.append(batch(i, 2, 0)).unwrap().wait().unwrap();
    }
    fsync.fail.store(true, SeqCst);
    let failed = a.append(batch(3, 2, 0)).unwrap().wait();
    assert!(matches!(failed, Err(strata_storage::Error::Poisoned { .. })), "{failed:?}");
    assert!(matches!(a.append(batch(4, 2, 0)), Err(strata_storage::Error::Poisoned { .. })));
    fsync.fail.store(false, SeqCst);
    let info = b.append(batch(5, 2, 0)).unwrap().wait().unwrap();
    assert_eq!(info.base_offset, 0);
    drop((a, b));
    drop(manager);
    let reopened = reopened(root.path(), &["a-0", "b-0"]);
    assert!(reopened[0].len() >= 6, "what was acknowledged: {}", reopened[0].len());
    assert_eq!(reopened[1].len(), 2);
}
