//! The machine's own limits, measured in the same run as the systems: a plain-file writer with an
//! fdatasync per batch (through the page cache, and with `O_DIRECT` past it), fdatasync latency on
//! a preallocated file, loopback TCP bandwidth, and the storage engine's in-process append and
//! sequential read.

use std::path::Path;
use std::time::Instant;

use strata_storage::{BatchBuilder, Compression, Durability, LogConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

/// Plain write + fdatasync of `chunk` bytes per call, appending to a new file, for `seconds` or
/// `max_bytes`. MB/s.
pub fn plain_fsync_mb_s(root: &Path, chunk: usize, seconds: f64, max_bytes: u64) -> anyhow::Result<f64> {
    Ok(crate::storage::plain_fsync_writer(root, chunk, seconds, max_bytes)? * MIB / MB)
}

/// The same with `O_DIRECT`, past the page cache (`None` where the filesystem refuses it). MB/s.
pub fn plain_direct_mb_s(root: &Path, chunk: usize, seconds: f64, max_bytes: u64) -> anyhow::Result<Option<f64>> {
    Ok(crate::storage::plain_direct_writer(root, chunk, seconds, max_bytes)?.map(|v| v * MIB / MB))
}

/// p50 and p99 of write + fdatasync of `chunk` bytes into a preallocated, zero-filled file, ms.
pub fn fsync_latency_ms(root: &Path, chunk: usize) -> anyhow::Result<(f64, f64)> {
    let h = crate::storage::fsync_latency(root, chunk)?;
    Ok((h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0))
}

/// One loopback TCP stream (TCP_NODELAY), `bytes` in 1 MiB writes. MB/s.
pub async fn loopback_tcp_mb_s(bytes: u64) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        Ok::<_, anyhow::Error>(total)
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let buf = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    s.shutdown().await?;
    let total = reader.await??;
    anyhow::ensure!(total == sent, "loopback received {total} of {sent} bytes");
    Ok(total as f64 / MB / start.elapsed().as_secs_f64())
}

/// A stored batch of `records` values of `record_bytes`, as Strata stores a produce batch.
pub fn batch(records: usize, record_bytes: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = BatchBuilder::new(Compression::None);
    let value: Vec<u8> = (0..record_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    for _ in 0..records {
        b.push(0, None, Some(&value), &[]);
    }
    Ok(b.build()?)
}

/// In-process appends of `batch` by `appenders` threads for `seconds` or `max_bytes`: (MB/s of
/// batch bytes, msgs/s).
pub fn storage_append(
    root: &Path,
    batch: &[u8],
    records: usize,
    appenders: usize,
    durable: bool,
    (seconds, max_bytes): (f64, u64),
) -> anyhow::Result<(f64, f64)> {
    let durability = if durable { LogConfig::default().durability } else { Durability::Never };
    let config = LogConfig { durability, ..LogConfig::default() };
    let (mib_s, _, batches_s) =
        crate::storage::append_throughput_with(root, batch, appenders, seconds, max_bytes, config)?;
    Ok((mib_s * MIB / MB, batches_s * records as f64))
}

/// The storage engine reading a partition log Strata wrote, page cache warm from the consumers'
/// pass (1 MiB reads, CRC checked): MB/s of its batches, then MB/s of record values with every
/// record decoded, the work W5's consumers do on what they fetch.
pub fn storage_read_mb_s(log_dir: &Path) -> anyhow::Result<(f64, f64)> {
    let log = strata_storage::Log::open(log_dir, LogConfig { durability: Durability::Never, ..LogConfig::default() })?;
    crate::storage::sequential_read(&log)?;
    let batches = crate::storage::sequential_read(&log)? * MIB / MB;
    Ok((batches, crate::storage::sequential_read_records(&log)?))
}
