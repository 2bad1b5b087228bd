//! Helpers shared by the storage integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use strata_storage::{BatchBuilder, Compression, Header, Log, LogConfig, Record};

/// A batch of `n` records whose keys and values encode `tag` and their index.
pub fn batch(tag: u64, n: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        let key = format!("k{tag}-{i}");
        let value = format!("v{tag}-{i}-{}", "x".repeat(i % 7));
        b.push(ts, Some(key.as_bytes()), Some(value.as_bytes()), &[Header { name: "h".into(), value: "1".into() }]);
    }
    b.build().unwrap()
}

/// A batch of one record with the given key and value.
pub fn keyed(key: &str, value: Option<&str>, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(ts, Some(key.as_bytes()), value.map(str::as_bytes), &[]);
    b.build().unwrap()
}

/// Every readable record from `from` to the high watermark.
pub fn read_all(log: &Log, from: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = log.read(offset, 64 * 1024).unwrap();
        if r.batches.is_empty() {
            return out;
        }
        out.extend(r.records_from(offset).unwrap());
        offset = r.next_offset;
    }
}

pub fn small_segments() -> LogConfig {
    LogConfig { segment_bytes: 1024, index_interval_bytes: 256, ..LogConfig::default() }
}
