//! Grouped syncs: when many logs wait for durability at once, one `syncfs` covers them all; a
//! failed one poisons every log of the group and stops grouping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{batch, read_all};
use strata_storage::{
    AppendGroup, Durability, Error, Fsync, Log, LogConfig, LogManager, OsFsync, StorageOptions, ValidBatch,
};

/// The real syncs, counted; `fdatasync` made slow (a busy disk) so appends queue up behind it.
#[derive(Debug, Default)]
struct SlowDisk {
    data_syncs: AtomicUsize,
    filesystem_syncs: AtomicUsize,
    fail_filesystem_sync: AtomicBool,
    /// Creating the logs' first segments is not slowed down.
    slow: AtomicBool,
}

impl Fsync for SlowDisk {
    fn sync_data(&self, file: &std::fs::File) -> io::Result<()> {
        if self.slow.load(Ordering::SeqCst) {
            self.data_syncs.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
        OsFsync.sync_data(file)
    }

    fn can_sync_filesystem(&self) -> bool {
        OsFsync.can_sync_filesystem()
    }

    fn sync_filesystem(&self, file: &std::fs::File) -> io::Result<()> {
        self.filesystem_syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_filesystem_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO"));
        }
        OsFsync.sync_filesystem(file)
    }
}

const LOGS: usize = 400;

fn open_logs(disk: &Arc<SlowDisk>) -> (tempfile::TempDir, LogManager, Vec<Log>) {
    let dir = tempfile::tempdir().unwrap();
    // Without the journal, which would take these small appends off the flusher.
    let options = StorageOptions { fsync: disk.clone(), journal: false, ..Default::default() };
    let manager = LogManager::new(dir.path(), options).unwrap();
    let logs = (0..LOGS).map(|i| manager.open_log(&format!("p-{i}"), LogConfig::default()).unwrap()).collect();
    disk.slow.store(true, Ordering::SeqCst);
    (dir, manager, logs)
}

#[test]
fn many_logs_waiting_at_once_share_one_filesystem_sync() {
    let disk = Arc::new(SlowDisk::default());
    if !disk.can_sync_filesystem() {
        eprintln!("this kernel's syncfs does not report errors: grouping is off, nothing to test");
        return;
    }
    let (_dir, _manager, logs) = open_logs(&disk);
    for round in 0..3 {
        let pending: Vec<_> = logs.iter().map(|log| log.append(batch(round, 3, 0)).unwrap()).collect();
        for p in pending {
            p.wait().unwrap();
        }
    }
    for log in &logs {
        assert_eq!(read_all(log, 0).len(), 9, "every append is durable and readable");
    }
    let (data, filesystem) = (disk.data_syncs.load(Ordering::SeqCst), disk.filesystem_syncs.load(Ordering::SeqCst));
    assert!(filesystem >= 1, "a grouped sync ran");
    assert!(data < LOGS, "{data} fdatasyncs for {} appends: most were grouped", 3 * LOGS);
}

#[test]
fn a_failed_group_sync_poisons_its_logs_and_stops_grouping() {
    let disk = Arc::new(SlowDisk::default());
    if !disk.can_sync_filesystem() {
        eprintln!("this kernel's syncfs does not report errors: grouping is off, nothing to test");
        return;
    }
    disk.fail_filesystem_sync.store(true, Ordering::SeqCst);
    let (dir, manager, logs) = open_logs(&disk);
    let pending: Vec<_> = logs.iter().map(|log| log.append(batch(1, 2, 0)).unwrap()).collect();
    let outcomes: Vec<_> = pending.into_iter().map(|p| p.wait()).collect();
    let failed = outcomes.iter().filter(|o| matches!(o, Err(Error::Poisoned { .. }))).count();
    assert!(failed > 0, "the group's logs report the failure");
    assert_eq!(failed + outcomes.iter().filter(|o| o.is_ok()).count(), LOGS, "nothing else happened");
    for (log, outcome) in logs.iter().zip(&outcomes) {
        if outcome.is_err() {
            assert!(matches!(log.append(batch(2, 1, 0)), Err(Error::Poisoned { .. })), "poisoned until reopened");
            assert_eq!(log.high_watermark(), 0, "nothing unsynced became visible");
        }
    }
    // Grouping is off for good: further syncs go file by file.
    let groups = disk.filesystem_syncs.load(Ordering::SeqCst);
    let healthy: Vec<_> = logs.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(l, _)| l).collect();
    let pending: Vec<_> = healthy.iter().map(|log| log.append(batch(3, 1, 0)).unwrap()).collect();
    for p in pending {
        p.wait().unwrap();
    }
    assert_eq!(disk.filesystem_syncs.load(Ordering::SeqCst), groups);
    drop(healthy);
    drop((logs, manager));
    // Reopened, the poisoned logs recover (what the failed sync covered may or may not be there).
    let manager = LogManager::new(dir.path(), StorageOptions::default()).unwrap();
    let log = manager.open_log("p-0", LogConfig::default()).unwrap();
    assert!(log.append(batch(4, 1, 0)).unwrap().wait().is_ok());
}

/// A batch of about 1 MiB.
fn mebibyte(tag: u64) -> Vec<u8> {
    let mut b = strata_storage::BatchBuilder::new(strata_storage::batch::Compression::None);
    let value = vec![b'v'; 16 << 10];
    for i in 0..64 {
        b.push(0, Some(format!("k{tag}-{i}").as_bytes()), Some(&value), &[]);
    }
    b.build().unwrap()
}

/// An `interval` log syncs as soon as 8 MiB wait unsynced, without waiting for its timer (here an
/// hour away): a fast writer's data is synced in pieces, not a second's worth at once.
#[test]
fn an_interval_log_syncs_early_once_megabytes_wait_unsynced() {
    let disk = Arc::new(SlowDisk::default());
    let dir = tempfile::tempdir().unwrap();
    let options = StorageOptions { fsync: disk.clone(), journal: false, ..Default::default() };
    let manager = LogManager::new(dir.path(), options).unwrap();
    let config = LogConfig { durability: Durability::Interval(Duration::from_secs(3600)), ..LogConfig::default() };
    let log = manager.open_log("fast", config).unwrap();
    disk.slow.store(true, Ordering::SeqCst); // counts the syncs from here on

    for tag in 0..4 {
        let _visible_now = log.append(mebibyte(tag)).unwrap();
    }
    assert_eq!(disk.data_syncs.load(Ordering::SeqCst), 0, "4 MiB unsynced: the timer's to sync");
    for tag in 4..10 {
        let _visible_now = log.append(mebibyte(tag)).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while disk.data_syncs.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "10 MiB unsynced and no sync began");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(read_all(&log, 0).len(), 640, "every record reads back");
}

/// A request's appends to many logs, made with one [`AppendGroup`]: awaited once, resolved when
/// the last of them is durable, and every one readable then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_made_with_one_group_are_awaited_as_one() {
    let disk = Arc::new(SlowDisk::default());
    let (_dir, _manager, logs) = open_logs(&disk);
    for round in 0..3 {
        let group = Arc::new(AppendGroup::new());
        let appends: Vec<_> =
            logs.iter().map(|log| (log.clone(), ValidBatch::check(batch(round, 3, 0)).unwrap())).collect();
        // From a blocking thread, as the server appends.
        let made = {
            let group = Arc::clone(&group);
            tokio::task::spawn_blocking(move || Log::append_all(appends, None, &group)).await.unwrap().unwrap()
        };
        assert_eq!(made.len(), LOGS);
        assert!(made.iter().all(|p| p.info().base_offset == round * 3), "each log's next offset");
        Arc::into_inner(group).unwrap().durable().await.unwrap();
        for log in &logs {
            assert_eq!(log.high_watermark(), (round + 1) * 3, "durable, so visible, once the group resolves");
        }
    }
}

/// A group whose appends' sync fails resolves with the failure, not with success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resolves_with_its_failed_sync() {
    let disk = Arc::new(SlowDisk::default());
    if !disk.can_sync_filesystem() {
        eprintln!("this kernel's syncfs does not report errors: grouping is off, nothing to test");
        return;
    }
    disk.fail_filesystem_sync.store(true, Ordering::SeqCst);
    let (_dir, _manager, logs) = open_logs(&disk);
    let group = Arc::new(AppendGroup::new());
    let appends: Vec<_> = logs.iter().map(|log| (log.clone(), ValidBatch::check(batch(1, 2, 0)).unwrap())).collect();
    let made = {
        let group = Arc::clone(&group);
        tokio::task::spawn_blocking(move || Log::append_all(appends, None, &group)).await.unwrap().unwrap()
    };
    assert_eq!(made.len(), LOGS);
    let outcome = Arc::into_inner(group).unwrap().durable().await;
    assert!(matches!(outcome, Err(Error::Poisoned { .. })), "{outcome:?}");
    assert!(logs.iter().any(|log| log.high_watermark() == 0), "what the failed sync covered stays invisible");
}
