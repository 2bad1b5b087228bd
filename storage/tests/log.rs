//! End-to-end behaviour of one partition log: append, read, roll, reopen, timestamps, retention,
//! compaction, many logs and group commit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::sync::Arc;
use std::thread;

use common::{batch, keyed, read_all, small_segments};
use strata_storage::{
    Attempt, CleanupPolicy, Compression, Durability, Error, Log, LogConfig, LogManager, ManualClock, StorageOptions,
    ValidBatch,
};

#[test]
fn appends_get_dense_offsets_and_read_back_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    let mut expected = 0;
    for tag in 0..50u64 {
        let info = log.append(batch(tag, 5, 1000 + tag as i64)).unwrap().wait().unwrap();
        assert_eq!(info.base_offset, expected);
        assert_eq!(info.last_offset, expected + 4);
        expected += 5;
    }
    assert_eq!(log.high_watermark(), 250);
    assert!(log.segments().len() > 2, "small segments must roll: {:?}", log.segments());
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 250);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        let (tag, idx) = (i / 5, i % 5);
        assert_eq!(r.key.as_deref(), Some(format!("k{tag}-{idx}").as_bytes()));
        assert_eq!(r.headers[0].name, "h");
    }
    // A read from the middle of a batch returns the whole batch; records_from trims it.
    let r = log.read(102, 1).unwrap();
    assert_eq!(r.records_from(102).unwrap()[0].offset, 102);
    assert!(matches!(
        log.read(251, 10),
        Err(Error::OffsetOutOfRange { requested: 251, log_start: 0, high_watermark: 250 })
    ));
    assert!(log.read(250, 10).unwrap().batches.is_empty());
}

#[test]
fn an_inline_append_hands_its_batch_back_when_it_would_roll_or_write_much() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { journal: true, ..StorageOptions::default() };
    let manager = LogManager::new(dir.path(), opts).unwrap();
    let always = LogConfig { segment_bytes: 4096, durability: Durability::Always, ..LogConfig::default() };
    let log = manager.open_log("t-0", always).unwrap();
    let valid = |tag| ValidBatch::check(batch(tag, 5, 1)).unwrap();
    // Small batches under `always` go to the journal and wait in memory: appended in place,
    // until the segment is due to roll.
    let mut appended = 0;
    let refused = loop {
        match log.append_inline(valid(appended), None).unwrap() {
            Attempt::Appended(pending) => {
                assert_eq!(pending.wait().unwrap().base_offset, appended * 5);
                appended += 1;
            }
            Attempt::NeedsIo(batch) => break batch,
        }
        assert!(appended < 100, "a 4 KiB segment must come due");
    };
    assert!(appended > 1 && log.segments().len() == 1, "nothing rolled: {:?}", log.segments());
    assert_eq!(log.high_watermark(), appended * 5, "the refused batch is not appended");
    // The batch comes back whole: appended where any I/O is allowed, it rolls and lands next.
    assert_eq!(refused.bytes(), &batch(appended, 5, 1)[..]);
    assert_eq!(log.append_valid(refused).unwrap().wait().unwrap().base_offset, appended * 5);
    assert_eq!(log.segments().len(), 2);
    assert_eq!(read_all(&log, 0).len() as u64, (appended + 1) * 5);

    // A batch too large for the journal is written to its segment at once: inline up to
    // 256 KiB, beyond that handed back; so is a log that is not `always`.
    let wide = manager.open_log("t-2", LogConfig { durability: Durability::Always, ..LogConfig::default() }).unwrap();
    let big = ValidBatch::check(batch(1000, 2000, 1)).unwrap();
    assert!(big.bytes().len() > 32 << 10 && big.bytes().len() < 256 << 10);
    let Attempt::Appended(pending) = wide.append_inline(big, None).unwrap() else { panic!("a small write is inline") };
    assert_eq!(pending.wait().unwrap().last_offset, 1999);
    let huge = ValidBatch::check(batch(1000, 20_000, 1)).unwrap();
    assert!(huge.bytes().len() > 256 << 10);
    assert!(matches!(wide.append_inline(huge, None).unwrap(), Attempt::NeedsIo(_)));
    let Attempt::Appended(pending) = wide.append_inline(valid(0), None).unwrap() else { panic!("journaled") };
    assert_eq!(pending.wait().unwrap().base_offset, 2000);
    let relaxed = manager.open_log("t-1", LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap();
    assert!(matches!(relaxed.append_inline(valid(0), None).unwrap(), Attempt::Appended(_)));
    let huge = ValidBatch::check(batch(1000, 20_000, 1)).unwrap();
    assert!(matches!(relaxed.append_inline(huge, None).unwrap(), Attempt::NeedsIo(_)));
    assert_eq!(relaxed.high_watermark(), 5);
    assert_eq!(read_all(&wide, 0).len(), 2005);

    // With `direct_writes`, such a batch waits for its flush to write it (past the page cache):
    // appended in place whatever its size.
    let dir = tempfile::tempdir().unwrap();
    let manager =
        LogManager::new(dir.path(), StorageOptions { direct_writes: true, ..StorageOptions::default() }).unwrap();
    let direct = manager.open_log("t-0", LogConfig { durability: Durability::Always, ..LogConfig::default() }).unwrap();
    let huge = ValidBatch::check(batch(1000, 20_000, 1)).unwrap();
    let Attempt::Appended(pending) = direct.append_inline(huge, None).unwrap() else { panic!("no file touched") };
    assert_eq!(pending.wait().unwrap().last_offset, 19_999);
    assert_eq!(read_all(&direct, 0).len(), 20_000);
}

#[test]
fn a_read_may_finish_the_batch_crossing_its_limit_when_given_overshoot() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let one = batch(0, 10, 1).len();
    for tag in 0..20u64 {
        log.append(batch(tag, 10, 1)).unwrap().wait().unwrap();
    }
    let batches_in = |r: &strata_storage::ReadResult| r.batches.len() / one;
    // 2.5 batches' worth: two whole ones; the third crosses the limit.
    let max = one * 5 / 2;
    let plain = log.read(0, max).unwrap();
    assert_eq!((batches_in(&plain), plain.next_offset), (2, 20));
    assert_eq!(log.read_crossing(0, max, 0).unwrap().batches, plain.batches);
    // Overshoot short of the third batch's end: still two. Enough of it: three, never four.
    let needed = 3 * one - max;
    assert_eq!(batches_in(&log.read_crossing(0, max, needed - 1).unwrap()), 2);
    let crossing = log.read_crossing(0, max, needed).unwrap();
    assert_eq!((batches_in(&crossing), crossing.next_offset), (3, 30));
    assert_eq!(batches_in(&log.read_crossing(0, max, 10 * one).unwrap()), 3);
    // Consecutive reads with overshoot see every record once, in order.
    let (mut offset, mut seen) = (0u64, Vec::new());
    while offset < log.high_watermark() {
        let r = log.read_crossing(offset, max, one).unwrap();
        seen.extend(r.records_from(offset).unwrap().into_iter().map(|r| r.offset));
        offset = r.next_offset;
    }
    assert_eq!(seen, (0..200).collect::<Vec<u64>>());
}

/// `Log::locate` finds exactly the bytes `Log::read_crossing` returns, and counts their records;
/// `Log::read_unverified` returns them too. Returns whether `locate` handed the bytes over from
/// the log's memory (they are then in the file as well, every append having been waited for).
fn assert_locate_matches_read(log: &Log, offset: u64, max_bytes: usize, overshoot: usize) -> bool {
    use std::os::unix::fs::FileExt;
    let read = log.read_crossing(offset, max_bytes, overshoot).unwrap();
    let unverified = log.read_unverified(offset, max_bytes, overshoot).unwrap();
    assert_eq!((&unverified.batches, unverified.next_offset), (&read.batches, read.next_offset));
    let located = log.locate(offset, max_bytes, overshoot).unwrap();
    let at = format!("offset {offset}, max {max_bytes}, overshoot {overshoot}");
    assert_eq!(
        (located.next_offset, located.high_watermark, located.log_start_offset),
        (read.next_offset, read.high_watermark, read.log_start_offset),
        "{at}"
    );
    let (bytes, records) = match located.span {
        None => (Vec::new(), 0),
        Some((file, span)) => {
            let mut bytes = vec![0; span.len as usize];
            file.read_exact_at(&mut bytes, span.position).unwrap();
            (bytes, span.records)
        }
    };
    assert!(bytes == read.batches, "{at}: located {} bytes, read {}", bytes.len(), read.batches.len());
    assert_eq!(records, strata_storage::batch::count_records(&read.batches, offset), "{at}");
    if let Some(in_memory) = &located.bytes {
        assert!(in_memory == &read.batches, "{at}: {} bytes from memory, read {}", in_memory.len(), read.batches.len());
    }
    located.bytes.is_some()
}

#[test]
fn locating_batches_finds_the_bytes_a_read_returns() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 64 << 10, index_interval_bytes: 512, ..LogConfig::default() };
    // Written past the page cache by their flushes, the newest batches held in memory.
    let options = StorageOptions { direct_writes: true, ..StorageOptions::default() };
    let log = Log::open_with_options(dir.path(), config, options).unwrap();
    // Batches of 1 to ~400 records: some far smaller than the 8 KiB header window, some larger.
    for tag in 0..60u64 {
        let n = [1, 3, 40, 400, 7, 150][tag as usize % 6];
        log.append(batch(tag, n, 1)).unwrap().wait().unwrap();
    }
    let hw = log.high_watermark();
    assert!(log.segments().len() >= 3, "the batches should span several segments: {:?}", log.segments());
    let mut from_memory = 0;
    for offset in (0..=hw).step_by(37).chain([0, 1, hw - 1, hw]) {
        for (max_bytes, overshoot) in [(1, 0), (5_000, 0), (20_000, 0), (20_000, 10_000), (1 << 20, 1 << 20)] {
            from_memory += usize::from(assert_locate_matches_read(&log, offset, max_bytes, overshoot));
        }
    }
    assert!(from_memory > 0, "the active segment's newest batches are held in memory");
    assert!(matches!(log.locate(hw + 1, 1, 0), Err(Error::OffsetOutOfRange { .. })));

    // Damage only a checksum shows: the checked read refuses the batch, the unverified read and
    // `locate` hand it on (their receivers check it).
    drop(log);
    let first = dir.path().join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[32 + 75] ^= 0x01; // in the first batch's record (it is 81 bytes long)
    std::fs::write(&first, &bytes).unwrap();
    let log = Log::open(dir.path(), LogConfig { segment_bytes: 64 << 10, ..LogConfig::default() }).unwrap();
    let checked = log.read_crossing(0, 1, 0);
    assert!(matches!(checked, Err(Error::Corrupt { .. })), "{checked:?} {:?}", log.segments());
    let unverified = log.read_unverified(0, 1, 0).unwrap();
    assert_eq!(unverified.batches[..], bytes[32..32 + unverified.batches.len()]);
    assert!(log.locate(0, 1, 0).unwrap().span.is_some());
}

#[test]
fn compressed_batches_round_trip_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let mut b = strata_storage::BatchBuilder::new(codec);
        for i in 0..100 {
            b.push(i, Some(b"key"), Some(format!("value {i} {}", "abc".repeat(20)).as_bytes()), &[]);
        }
        log.append(b.build().unwrap()).unwrap().wait().unwrap();
    }
    let records = read_all(&log, 0);
    assert_eq!(records.len(), 300);
    assert_eq!(records[250].value.as_deref(), Some(format!("value 50 {}", "abc".repeat(20)).as_bytes()));
}

#[test]
fn reopening_keeps_everything_and_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small_segments()).unwrap();
        for tag in 0..30 {
            log.append(batch(tag, 3, tag as i64)).unwrap().wait().unwrap();
        }
    }
    let log = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(log.high_watermark(), 90);
    assert_eq!(log.append(batch(99, 1, 0)).unwrap().wait().unwrap().base_offset, 90);
    assert_eq!(read_all(&log, 0).len(), 91);
}

#[test]
fn timestamp_lookup_finds_the_first_offset_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for tag in 0..40u64 {
        log.append(batch(tag, 4, 10_000 + tag as i64 * 100)).unwrap().wait().unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(10_000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(10_001).unwrap(), Some(4));
    assert_eq!(log.offset_for_timestamp(12_500).unwrap(), Some(100));
    assert_eq!(log.offset_for_timestamp(13_900).unwrap(), Some(156));
    assert_eq!(log.offset_for_timestamp(13_901).unwrap(), None);
    // Timestamps need not be monotonic.
    log.append(batch(40, 1, 5)).unwrap().wait().unwrap();
    assert_eq!(log.offset_for_timestamp(14_000).unwrap(), None);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = StorageOptions { clock: clock.clone(), ..Default::default() };
    let config = LogConfig { segment_ms: Some(60_000), ..LogConfig::default() };
    let log = Log::open_with_options(dir.path(), config, options).unwrap();
    log.append(batch(0, 1, 1_000_000)).unwrap().wait().unwrap();
    clock.advance(59_000);
    log.append(batch(1, 1, 1_059_000)).unwrap().wait().unwrap();
    assert_eq!(log.segments().len(), 1);
    clock.advance(2_000);
    log.append(batch(2, 1, 1_061_000)).unwrap().wait().unwrap();
    assert_eq!(log.segments().len(), 2);
    assert_eq!(log.segments()[1].base_offset, 2);
}

#[test]
fn retention_deletes_whole_old_segments_and_moves_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = StorageOptions { clock: clock.clone(), ..Default::default() };
    let config = LogConfig { retention_ms: Some(10_000), retention_bytes: None, ..small_segments() };
    let log = Log::open_with_options(dir.path(), config.clone(), options.clone()).unwrap();
    for tag in 0..40u64 {
        // Records get older timestamps first: tag 0 is 40 s old, tag 39 is 1 s old.
        log.append(batch(tag, 4, 1_000_000 - (40 - tag as i64) * 1000)).unwrap().wait().unwrap();
    }
    let before = log.segments();
    let outcome = log.enforce_retention().unwrap();
    assert!(outcome.deleted_segments > 0);
    let start = log.log_start_offset();
    assert_eq!(start, outcome.log_start_offset);
    assert!(start > 0 && start < 160);
    assert_eq!(start, log.segments()[0].base_offset);
    assert!(before.len() > log.segments().len());
    // Nothing at or after 10 s old was deleted.
    let kept = read_all(&log, start);
    assert!(kept.iter().all(|r| r.offset >= start));
    assert!(kept.first().unwrap().offset == start);
    let first_recent = (40 - 10) * 4; // tag 30 is exactly 10 s old
    assert!(start <= first_recent);
    assert!(
        matches!(log.read(0, 10), Err(Error::OffsetOutOfRange { requested: 0, log_start, .. }) if log_start == start)
    );

    // Size-based retention keeps the newest segments under the limit (plus the active one).
    let by_size = LogConfig { retention_ms: None, retention_bytes: Some(8192), ..config };
    log.set_config(by_size).unwrap();
    log.enforce_retention().unwrap();
    assert!(log.size_bytes() <= 8192 + 4096, "size {}", log.size_bytes());
    // Reopen: log start survives as the first segment's base.
    let start = log.log_start_offset();
    drop(log);
    let log = Log::open_with_options(dir.path(), small_segments(), options).unwrap();
    assert_eq!(log.log_start_offset(), start);
    assert_eq!(read_all(&log, start).len() as u64, 160 - start);
}

#[test]
fn compaction_keeps_latest_per_key_preserves_offsets_and_drops_old_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = StorageOptions { clock: clock.clone(), ..Default::default() };
    let config = LogConfig {
        cleanup_policy: CleanupPolicy::Compact,
        tombstone_retention_ms: 5_000,
        retention_ms: None,
        segment_bytes: 2048,
        index_interval_bytes: 128,
        ..LogConfig::default()
    };
    let log = Log::open_with_options(dir.path(), config.clone(), options.clone()).unwrap();
    // 300 updates over 10 keys; key 3 is deleted (tombstone) at offset 300, key 4 at 301 later.
    for i in 0..300u64 {
        log.append(keyed(&format!("key{}", i % 10), Some(&format!("value{i}")), 900_000 + i as i64))
            .unwrap()
            .wait()
            .unwrap();
    }
    log.append(keyed("key3", None, 900_000)).unwrap().wait().unwrap(); // old tombstone
    log.append(keyed("key4", None, 999_000)).unwrap().wait().unwrap(); // recent tombstone
    for i in 0..60u64 {
        log.append(keyed("filler", Some(&format!("{i}")), 1_000_000)).unwrap().wait().unwrap();
    }
    let active_base = log.segments().last().unwrap().base_offset;
    let outcome = log.compact().unwrap();
    assert!(outcome.records_removed > 250, "{outcome:?}");
    assert!(outcome.bytes_after < outcome.bytes_before);
    let records = read_all(&log, 0);
    let sealed: Vec<_> = records.iter().filter(|r| r.offset < active_base).collect();
    let mut seen = std::collections::HashSet::new();
    for r in &sealed {
        assert!(seen.insert(r.key.clone()), "key {:?} kept twice in sealed segments", r.key);
    }
    // Latest values survive at their original offsets.
    let find = |k: &str| records.iter().find(|r| r.key.as_deref() == Some(k.as_bytes())).cloned();
    let k7 = find("key7").unwrap();
    assert_eq!((k7.offset, k7.value.as_deref()), (297, Some(&b"value297"[..])));
    assert!(find("key3").is_none(), "the old tombstone and every key3 record are gone");
    let k4 = find("key4").unwrap();
    assert_eq!((k4.offset, k4.value), (301, None), "a recent tombstone stays");
    // Offsets only grow; the active segment is untouched.
    assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
    assert_eq!(records.iter().filter(|r| r.offset >= active_base).count() as u64, log.high_watermark() - active_base);
    // Reading from a compacted-away offset gives the next record; locating finds the same.
    for offset in 0..=log.high_watermark() {
        let _ = assert_locate_matches_read(&log, offset, 1024, 512);
    }
    let r = log.read(5, 1024).unwrap();
    assert!(r.records_from(5).unwrap()[0].offset > 5);
    // A second run finds nothing more to do; reopening reads the same.
    assert_eq!(log.compact().unwrap().records_removed, 0);
    drop(log);
    let log = Log::open_with_options(dir.path(), config, options).unwrap();
    assert_eq!(read_all(&log, 0), records);
}

#[test]
fn ten_thousand_logs_stay_within_the_descriptor_budget() {
    let dir = tempfile::tempdir().unwrap();
    let manager = LogManager::new(dir.path(), StorageOptions { max_open_files: 128, ..Default::default() }).unwrap();
    let config = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    let fds_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
    for p in 0..10_000u64 {
        let log = manager.open_log(&format!("t-{p}"), config.clone()).unwrap();
        log.append(batch(p, 1, 0)).unwrap().wait().unwrap();
    }
    assert!(manager.open_files() <= 128);
    let fds_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
    assert!(fds_after <= fds_before + 140, "{fds_before} -> {fds_after} descriptors");
    // Every log is still readable through the cache.
    for p in (0..10_000u64).step_by(997) {
        let log = manager.get(&format!("t-{p}")).unwrap();
        let r = read_all(&log, 0);
        assert_eq!(r[0].key.as_deref(), Some(format!("k{p}-0").as_bytes()));
    }
}

#[test]
fn concurrent_appenders_are_group_committed_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig { segment_bytes: 256 * 1024, ..LogConfig::default() }).unwrap();
    let handles: Vec<_> = (0..16u64)
        .map(|t| {
            let log = log.clone();
            thread::spawn(move || {
                (0..50u64).map(|i| log.append(batch(t * 1000 + i, 10, 0)).unwrap().wait().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut infos: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    infos.sort_by_key(|i| i.base_offset);
    assert_eq!(infos.len(), 800);
    for (i, info) in infos.iter().enumerate() {
        assert_eq!(info.base_offset, i as u64 * 10, "offsets dense and unique");
    }
    assert_eq!(log.high_watermark(), 8000);
    assert_eq!(read_all(&log, 0).len(), 8000);
}

/// Syncs files, each sync taking 2 ms, and counts the most syncs of one file running at once.
#[derive(Debug, Default)]
struct CountingSync {
    running: std::sync::Mutex<std::collections::HashMap<u64, usize>>,
    most: std::sync::atomic::AtomicUsize,
    syncs: std::sync::atomic::AtomicUsize,
}

impl strata_storage::Fsync for CountingSync {
    fn sync_data(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        use std::sync::atomic::Ordering::SeqCst;
        let inode = file.metadata()?.ino();
        {
            let mut running = self.running.lock().unwrap();
            let n = running.entry(inode).or_default();
            *n += 1;
            self.most.fetch_max(*n, SeqCst);
        }
        thread::sleep(std::time::Duration::from_millis(2));
        let result = file.sync_data();
        *self.running.lock().unwrap().get_mut(&inode).unwrap() -= 1;
        self.syncs.fetch_add(1, SeqCst);
        result
    }
}

/// Sixteen threads append to one `always` log (no journal: the flusher's threads sync its
/// segment), each waiting for its append to be durable: every append is acknowledged with dense
/// offsets, the log is synced by one flusher thread at a time (a thread that finds it being
/// synced leaves it to that one, which syncs again), and the syncs are fewer than the appends.
#[test]
fn a_hot_log_is_synced_by_one_flusher_at_a_time_and_every_append_is_acknowledged() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let fsync = Arc::new(CountingSync::default());
    let options = StorageOptions { journal: false, fsync: fsync.clone(), ..StorageOptions::default() };
    let manager = LogManager::new(dir.path(), options).unwrap();
    let log = manager.open_log("hot-0", LogConfig::default()).unwrap();
    let handles: Vec<_> = (0..16u64)
        .map(|t| {
            let log = log.clone();
            thread::spawn(move || {
                (0..30u64).map(|i| log.append(batch(t * 1000 + i, 10, 0)).unwrap().wait().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut infos: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    infos.sort_by_key(|i| i.base_offset);
    assert!(infos.iter().enumerate().all(|(i, info)| info.base_offset == i as u64 * 10), "dense offsets");
    assert_eq!(read_all(&log, 0).len(), 4800);
    assert_eq!(fsync.most.load(SeqCst), 1, "one sync of a file at a time");
    let syncs = fsync.syncs.load(SeqCst);
    assert!(syncs < 480, "group commit: {syncs} syncs for 480 appends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appenders_wait_for_durability_without_blocking_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    log.append(batch(t * 100 + i, 2, 0)).unwrap().durable().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.high_watermark(), 320);
}

#[test]
fn interval_and_never_durability_make_records_visible_at_once() {
    for durability in [Durability::Interval(std::time::Duration::from_millis(5)), Durability::Never] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogConfig { durability, ..LogConfig::default() }).unwrap();
        let pending = log.append(batch(0, 3, 0)).unwrap();
        assert_eq!(log.high_watermark(), 3, "{durability:?}");
        pending.wait().unwrap();
        log.flush().unwrap();
        drop(log);
        assert_eq!(Log::open(dir.path(), LogConfig::default()).unwrap().high_watermark(), 3);
    }
}

#[test]
fn conditional_append_checks_the_next_offset_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append_expecting(batch(0, 2, 0), Some(0)).unwrap().wait().unwrap();
    assert!(matches!(
        log.append_expecting(batch(1, 1, 0), Some(0)),
        Err(Error::OffsetMismatch { expected: 0, actual: 2 })
    ));
    assert_eq!(log.append_expecting(batch(2, 1, 0), Some(2)).unwrap().wait().unwrap().base_offset, 2);
    assert_eq!(log.high_watermark(), 3);
}

/// A roll leaves the sealed segment's index and the producer snapshot to a flusher thread, off
/// the appenders' path; they are there once the log is closed (dropping its last handle waits
/// for the work it queued, which may still be running on the flusher thread), and a reopened log
/// uses them.
#[test]
fn a_roll_writes_the_index_and_producer_snapshot_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small_segments()).unwrap();
    for tag in 0..40u64 {
        log.append(batch(tag, 4, 1_000_000)).unwrap().wait().unwrap();
    }
    let segments = log.segments();
    let (active, sealed) = segments.split_last().unwrap();
    assert!(sealed.len() >= 3, "{segments:?}");
    drop(log);
    for s in sealed {
        assert!(dir.path().join(format!("{:020}.index", s.base_offset)).is_file(), "index of {}", s.base_offset);
    }
    assert!(dir.path().join(format!("{:020}.producers", active.base_offset)).is_file());
    let reopened = Log::open(dir.path(), small_segments()).unwrap();
    assert_eq!(reopened.segments(), segments);
    assert_eq!(read_all(&reopened, 0).len(), 160);
}

/// Deleting a log right after rolls (their files still queued for a flusher thread) leaves
/// nothing behind: the queued work sees the deletion and writes nothing.
#[test]
fn deleting_a_log_right_after_it_rolled_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let manager = LogManager::new(dir.path(), StorageOptions::default()).unwrap();
    let log = manager.open_log("t-0", small_segments()).unwrap();
    for tag in 0..40u64 {
        log.append(batch(tag, 4, 1_000_000)).unwrap().wait().unwrap();
    }
    assert!(log.segments().len() > 3);
    manager.delete_log("t-0").unwrap();
    drop((log, manager));
    assert!(!dir.path().join("t-0").exists());
}
