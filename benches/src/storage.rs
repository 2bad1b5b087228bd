//! Storage engine benchmarks (issue #2), each beside a plain-file baseline from the same run.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use strata_storage::{BatchBuilder, Compression, Durability, Fsync, Log, LogConfig, LogManager, StorageOptions};

/// The most bytes one time-bounded write measurement may write. A time bound alone can fill a
/// small disk: on tmpfs, or any disk whose fdatasync returns at once, writes run at memory speed.
pub(crate) const DISK_BUDGET: u64 = 8 << 30;
/// The same bound for `--quick` runs, which only check that the harness works.
pub(crate) const QUICK_DISK_BUDGET: u64 = 64 << 20;

use crate::harness::Stat;

const MIB: f64 = 1024.0 * 1024.0;
const BATCH_RECORDS: usize = 63;
const RECORD_BYTES: usize = 1024;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Offered rate for the latency run (batches/s); default half the measured 16-appender peak.
    #[arg(long)]
    rate: Option<f64>,
    /// Run only these measurements (append, latency, read, reopen, idle); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Counts fdatasync calls (a decorator over the real one).
#[derive(Debug, Default)]
struct CountingFsync(AtomicU64);

impl Fsync for CountingFsync {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        file.sync_data()
    }
}

fn repeat(runs: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<Stat> {
    Ok(Stat::of((0..runs).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?))
}

fn sample_batch() -> anyhow::Result<Vec<u8>> {
    let mut b = BatchBuilder::new(Compression::None);
    let value: Vec<u8> = (0..RECORD_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..BATCH_RECORDS {
        b.push(1_700_000_000_000 + i as i64, Some(format!("key-{i}").as_bytes()), Some(&value), &[]);
    }
    Ok(b.build()?)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let seconds = if args.run.quick { 0.3 } else { 5.0 };
    let read_mib: u64 = if args.run.quick { 64 } else { 1024 };
    let (sealed_mib, active_mib) = if args.run.quick { (128, 16) } else { (2048, 64) };
    let loadavg = crate::harness::loadavg();
    let batch = sample_batch()?;
    println!(
        "# storage benchmarks — {} run(s), batch {} B ({} × {} B records), load average at start: {}",
        runs,
        batch.len(),
        BATCH_RECORDS,
        RECORD_BYTES,
        loadavg.trim()
    );
    println!("data directory: {}", root.path().display());
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut json: Vec<String> = Vec::new();

    let mut peak_batches_per_s: Vec<f64> = Vec::new();
    let want = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    // 1. Append throughput under `always`, 1/4/16 appenders, vs a plain writer with the same
    //    bytes per fdatasync.
    if want("append") {
        let mut one_appender = 0.0;
        for appenders in [1usize, 4, 16] {
            let mut bytes_per_sync = Vec::new();
            let strata = repeat(runs, || {
                let (mbps, per_sync, batches_per_s) = append_throughput(root.path(), &batch, appenders, seconds)?;
                bytes_per_sync.push(per_sync);
                if appenders == 16 {
                    peak_batches_per_s.push(batches_per_s);
                }
                Ok(mbps)
            })?;
            let per_sync = Stat::of(bytes_per_sync).median() as usize;
            let base =
                repeat(runs, || plain_fsync_writer(root.path(), per_sync.max(batch.len()), seconds, DISK_BUDGET))?;
            if appenders == 1 {
                one_appender = strata.median();
            }
            let ratio = strata.median() / base.median();
            rows.push((
                format!("append, `always`, {appenders} appender(s)"),
                strata.show("MiB/s"),
                format!("plain write+fdatasync of {} KiB: {}", per_sync / 1024, base.show("MiB/s")),
                format!("{ratio:.2}× baseline; {:.1}× one appender", strata.median() / one_appender),
            ));
            json.push(format!("\"append_always_{appenders}\":{{\"strata_mib_s\":{},\"baseline_mib_s\":{},\"bytes_per_fsync\":{per_sync}}}", strata.json(), base.json()));
        }
    }

    // 2. Latency at half the peak rate, open loop, vs fdatasync latency on a preallocated file.
    if want("latency") {
        let rate = match args.rate {
            Some(r) => r,
            None if peak_batches_per_s.is_empty() => anyhow::bail!("--only latency needs --rate"),
            None => Stat::of(peak_batches_per_s.clone()).median() / 2.0,
        };
        let mut p50s = Vec::new();
        let mut p999s = Vec::new();
        let p99 = repeat(runs, || {
            let h = append_latency(root.path(), &batch, rate, seconds)?;
            p50s.push(h.value_at_quantile(0.5) as f64 / 1000.0);
            p999s.push(h.value_at_quantile(0.999) as f64 / 1000.0);
            Ok(h.value_at_quantile(0.99) as f64 / 1000.0)
        })?;
        let fsync_p99 = repeat(runs, || fsync_latency_p99(root.path(), batch.len()))?;
        let plain_p99 = repeat(runs, || {
            let h = plain_open_loop(root.path(), batch.len(), rate, seconds)?;
            Ok(h.value_at_quantile(0.99) as f64 / 1000.0)
        })?;
        rows.push((
            format!("append latency at {rate:.0} batches/s (½ of the 16-appender peak), `always`, open loop"),
            format!(
                "p50 {:.2} ms, p99 {}, p99.9 {:.2} ms",
                Stat::of(p50s.clone()).median(),
                p99.show("ms"),
                Stat::of(p999s.clone()).median()
            ),
            format!(
                "plain writer at the same rate, 16 threads each write+fdatasync: p99 {}; lone fdatasync p99 {}",
                plain_p99.show("ms"),
                fsync_p99.show("ms")
            ),
            format!("{:.2}× the plain writer's p99", p99.median() / plain_p99.median()),
        ));
        json.push(format!("\"append_latency_half_peak\":{{\"rate_batches_s\":{rate:.0},\"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"fsync_p99_ms\":{},\"plain_p99_ms\":{}}}", Stat::of(p50s).json(), p99.json(), Stat::of(p999s).json(), fsync_p99.json(), plain_p99.json()));
    }

    // 3. Sequential read from page cache vs plain reads of the same files.
    if want("read") {
        let read_dir = root.path().join("read");
        let files = fill_log(&read_dir, &batch, read_mib * 1024 * 1024, 128 * 1024 * 1024)?;
        let log = Log::open(&read_dir, LogConfig { durability: Durability::Never, ..LogConfig::default() })?;
        sequential_read(&log)?; // warm the page cache
        let strata = repeat(runs, || sequential_read(&log))?;
        let base = repeat(runs, || plain_read(&files))?;
        drop(log);
        rows.push((
            format!("sequential read, {read_mib} MiB from page cache (1 MiB reads, CRC checked)"),
            strata.show("MiB/s"),
            format!("plain 1 MiB preads of the segment files: {}", base.show("MiB/s")),
            format!("{:.2}× baseline", strata.median() / base.median()),
        ));
        json.push(format!(
            "\"sequential_read\":{{\"strata_mib_s\":{},\"baseline_mib_s\":{}}}",
            strata.json(),
            base.json()
        ));
        std::fs::remove_dir_all(&read_dir)?;
    }

    // 4. Reopen with many sealed segments and a large active one. Recovery does not know whether
    //    the last stop was clean, so dropping without a flush exercises the same path as kill -9.
    if want("reopen") {
        let reopen_dir = root.path().join("reopen");
        let files = fill_log(&reopen_dir, &batch, (sealed_mib + active_mib) * 1024 * 1024, 128 * 1024 * 1024)?;
        let reopen = repeat(runs.max(3), || {
            let start = Instant::now();
            let log = Log::open(&reopen_dir, LogConfig::default())?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(log.high_watermark() > 0);
            Ok(elapsed)
        })?;
        let active = files.last().context("no segment")?.clone();
        let active_read = repeat(runs.max(3), || {
            let start = Instant::now();
            let mut buf = Vec::new();
            File::open(&active)?.read_to_end(&mut buf)?;
            Ok(start.elapsed().as_secs_f64() * 1000.0)
        })?;
        rows.push((
            format!("reopen after unclean stop, {sealed_mib} MiB sealed + {active_mib} MiB active"),
            reopen.show("ms"),
            format!("reading the active segment file once: {}", active_read.show("ms")),
            format!("{:.2}× one read of the active segment", reopen.median() / active_read.median()),
        ));
        json.push(format!("\"reopen\":{{\"strata_ms\":{},\"read_active_ms\":{}}}", reopen.json(), active_read.json()));
        std::fs::remove_dir_all(&reopen_dir)?;
    }

    // 5. Peak RSS with 10,000 idle logs, in a fresh process.
    if want("idle") {
        let count = if args.run.quick { 1000 } else { 10_000 };
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["idle-logs", &root.path().join("idle").display().to_string(), &count.to_string()])
            .output()?;
        anyhow::ensure!(out.status.success(), "idle-logs child failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout)?;
        let nums: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [before_kib, peak_kib, fds] = nums[..] else { anyhow::bail!("unexpected idle-logs output {text:?}") };
        rows.push((
            format!("{count} open idle logs (one batch each)"),
            format!("peak RSS {:.0} MiB, {fds:.0} files open", peak_kib / 1024.0),
            format!("process before opening: {:.0} MiB", before_kib / 1024.0),
            format!("{:.1} KiB per log", (peak_kib - before_kib) / count as f64),
        ));
        json.push(format!("\"idle_logs\":{{\"count\":{count},\"peak_rss_kib\":{peak_kib},\"baseline_rss_kib\":{before_kib},\"open_files\":{fds}}}"));
    }

    println!();
    println!("| measurement | Strata | baseline (same run) | ratio |");
    println!("| --- | --- | --- | --- |");
    for (a, b, c, d) in &rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    let doc = format!(
        "{{\"quick\":{},\"runs\":{runs},\"loadavg\":\"{}\",\"batch_bytes\":{},{}}}\n",
        args.run.quick,
        loadavg.trim(),
        batch.len(),
        json.join(",")
    );
    let out_path = args.run.write_results("storage", &doc)?;
    println!("\nresults written to {}", out_path.display());
    Ok(())
}

/// Appends `batch` from `appenders` threads under `always` for `seconds` (long enough to see the
/// disk's sustained rate, not a burst into its cache). Returns (MiB/s, bytes per fdatasync,
/// batches/s).
pub(crate) fn append_throughput(
    root: &Path,
    batch: &[u8],
    appenders: usize,
    seconds: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    append_throughput_with(root, batch, appenders, seconds, DISK_BUDGET, LogConfig::default())
}

/// [`append_throughput`] with the log's configuration given (e.g. `Durability::Never`), stopping
/// early once `max_bytes` are appended.
pub(crate) fn append_throughput_with(
    root: &Path,
    batch: &[u8],
    appenders: usize,
    seconds: f64,
    max_bytes: u64,
    config: LogConfig,
) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir_in(root)?;
    let fsync = Arc::new(CountingFsync::default());
    let options = StorageOptions { fsync: fsync.clone(), ..Default::default() };
    let log = Log::open_with_options(dir.path(), config, options)?;
    let appended = AtomicU64::new(0);
    let syncs_before = fsync.0.load(Ordering::Relaxed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..appenders)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let max_batches = max_bytes / batch.len().max(1) as u64;
                    while Instant::now() < deadline && appended.load(Ordering::Relaxed) < max_batches {
                        log.append(batch.to_vec())?.wait()?;
                        appended.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("appender panicked"))??;
        }
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let batches = appended.load(Ordering::Relaxed) as f64;
    let bytes = batches * batch.len() as f64;
    let syncs = (fsync.0.load(Ordering::Relaxed) - syncs_before).max(1) as f64;
    Ok((bytes / MIB / secs, bytes / syncs, batches / secs))
}

/// A plain file writer for `seconds` or `max_bytes`, whichever ends first: `chunk` bytes per
/// pwrite, one fdatasync after each, appending to a new file — the same bytes and fdatasync
/// pattern as Strata without Strata. MiB/s.
pub(crate) fn plain_fsync_writer(root: &Path, chunk: usize, seconds: f64, max_bytes: u64) -> anyhow::Result<f64> {
    plain_writer(root, chunk, seconds, max_bytes, false)?.context("the plain writer wrote nothing")
}

/// The same writer with `O_DIRECT`: each `chunk` goes from one reused, aligned buffer straight
/// to the disk, past the page cache. `None` where the filesystem refuses `O_DIRECT` (tmpfs) or
/// `chunk` is not a multiple of 4 KiB. MiB/s.
///
/// On this project's VM a buffered write of new data costs a page the host must fault in and zero
/// (the guest reports free memory to the host, which takes it back): after 20 s idle, 1 GiB in
/// 1 MiB writes with an `fdatasync` each moved 380–420 MiB/s at 1.7–1.9 CPU-s per GiB buffered,
/// and 1.03–1.07 GiB/s at 0.21 CPU-s per GiB with `O_DIRECT`. This writer shows, run by run, what
/// the disk takes when the page cache is out of the way.
pub(crate) fn plain_direct_writer(
    root: &Path,
    chunk: usize,
    seconds: f64,
    max_bytes: u64,
) -> anyhow::Result<Option<f64>> {
    plain_writer(root, chunk, seconds, max_bytes, true)
}

/// Both plain writers; `None` only when `direct` and the filesystem or `chunk` rule it out.
fn plain_writer(root: &Path, chunk: usize, seconds: f64, max_bytes: u64, direct: bool) -> anyhow::Result<Option<f64>> {
    const ALIGN: usize = 4096;
    if direct && !chunk.is_multiple_of(ALIGN) {
        return Ok(None);
    }
    let path = root.join("plain-writer.bin");
    let flags = if direct { rustix::fs::OFlags::DIRECT.bits() as i32 } else { 0 };
    let file = match OpenOptions::new().create(true).truncate(true).write(true).custom_flags(flags).open(&path) {
        Ok(file) => file,
        Err(e) if direct && refused(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // An aligned window of a plain buffer: O_DIRECT wants the memory aligned as the file offset.
    let memory = vec![7u8; chunk + ALIGN];
    let at = memory.as_ptr().align_offset(ALIGN);
    let buf = &memory[at..at + chunk];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut pos = 0u64;
    while Instant::now() < deadline && pos < max_bytes {
        match file.write_all_at(buf, pos) {
            Ok(()) => {}
            // Some filesystems take the flag at open and refuse the first write.
            Err(e) if direct && pos == 0 && refused(&e) => {
                std::fs::remove_file(&path)?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        file.sync_data()?;
        pos += chunk as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(Some(pos as f64 / MIB / secs))
}

/// Whether an error says the filesystem does not do `O_DIRECT`.
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// Runs `op` from 16 threads at `rate` calls/s in total for `seconds`, open loop: each call has a
/// scheduled time and its latency counts from then, so stalls are not hidden by coordinated
/// omission. Microseconds.
fn open_loop(rate: f64, seconds: f64, op: impl Fn() -> anyhow::Result<()> + Sync) -> anyhow::Result<Histogram<u64>> {
    let threads = 16usize;
    let interval = Duration::from_secs_f64(threads as f64 / rate.max(1.0));
    let per_thread = ((rate * seconds) as usize / threads).max(10);
    let start = Instant::now() + Duration::from_millis(20);
    let hists = std::thread::scope(|s| -> anyhow::Result<Vec<Histogram<u64>>> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut h = Histogram::<u64>::new(3)?;
                    let offset = interval.mul_f64(t as f64 / threads as f64);
                    for i in 0..per_thread {
                        let due = start + offset + interval * i as u32;
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        op()?;
                        h.record(due.elapsed().as_micros() as u64)?;
                    }
                    Ok(h)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?).collect()
    })?;
    let mut all = Histogram::<u64>::new(3)?;
    for h in hists {
        all.add(h)?;
    }
    Ok(all)
}

/// Open-loop appends of `batch` at `rate` batches/s under `always`.
fn append_latency(root: &Path, batch: &[u8], rate: f64, seconds: f64) -> anyhow::Result<Histogram<u64>> {
    let dir = tempfile::tempdir_in(root)?;
    let log = Log::open(dir.path(), LogConfig::default())?;
    open_loop(rate, seconds, || {
        log.append(batch.to_vec())?.wait()?;
        Ok(())
    })
}

/// The plain-file counterpart of [`append_latency`]: at the same rate, each call writes a batch
/// at the next position of one file and fdatasyncs it.
pub(crate) fn plain_open_loop(root: &Path, chunk: usize, rate: f64, seconds: f64) -> anyhow::Result<Histogram<u64>> {
    let path = root.join("plain-open-loop.bin");
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let next = AtomicU64::new(0);
    let buf = vec![5u8; chunk];
    let h = open_loop(rate, seconds, || {
        let pos = next.fetch_add(chunk as u64, Ordering::Relaxed);
        file.write_all_at(&buf, pos)?;
        file.sync_data()?;
        Ok(())
    })?;
    std::fs::remove_file(&path)?;
    Ok(h)
}

/// p99 of write + fdatasync into a preallocated, zero-filled file, in milliseconds.
fn fsync_latency_p99(root: &Path, chunk: usize) -> anyhow::Result<f64> {
    Ok(fsync_latency(root, chunk)?.value_at_quantile(0.99) as f64 / 1000.0)
}

/// Write + fdatasync of `chunk` bytes into a preallocated, zero-filled file, 500 times.
/// Microseconds.
pub(crate) fn fsync_latency(root: &Path, chunk: usize) -> anyhow::Result<Histogram<u64>> {
    let path = root.join("fsync-latency.bin");
    let n = 500u64;
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    file.write_all_at(&vec![0u8; chunk * n as usize], 0)?;
    file.sync_all()?;
    let buf = vec![9u8; chunk];
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..n {
        let t = Instant::now();
        file.write_all_at(&buf, i * chunk as u64)?;
        file.sync_data()?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    std::fs::remove_file(&path)?;
    Ok(h)
}

/// Fills a log with `bytes` of `batch` under `never`, flushes, returns its segment files.
pub(crate) fn fill_log(dir: &Path, batch: &[u8], bytes: u64, segment_bytes: u64) -> anyhow::Result<Vec<PathBuf>> {
    let config = LogConfig { durability: Durability::Never, segment_bytes, ..LogConfig::default() };
    let log = Log::open(dir, config)?;
    for _ in 0..bytes / batch.len() as u64 {
        log.append(batch.to_vec())?.wait()?;
    }
    log.flush()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "log"));
    files.sort();
    Ok(files)
}

/// Reads the whole log with 1 MiB reads. MiB/s of batch bytes.
pub(crate) fn sequential_read(log: &Log) -> anyhow::Result<f64> {
    let start = Instant::now();
    let (mut offset, mut bytes) = (log.log_start_offset(), 0usize);
    loop {
        let r = log.read(offset, 1024 * 1024)?;
        if r.batches.is_empty() {
            break;
        }
        bytes += r.batches.len();
        offset = r.next_offset;
    }
    Ok(bytes as f64 / MIB / start.elapsed().as_secs_f64())
}

/// Reads the whole log with 1 MiB reads and decodes every record, as a consumer does with what it
/// fetches. MB/s (10^6) of record values, the bytes a consumer counts.
pub(crate) fn sequential_read_records(log: &Log) -> anyhow::Result<f64> {
    let start = Instant::now();
    let (mut offset, mut bytes) = (log.log_start_offset(), 0usize);
    loop {
        let r = log.read(offset, 1 << 20)?;
        if r.batches.is_empty() {
            break;
        }
        bytes += r.records_from(offset)?.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
        offset = r.next_offset;
    }
    Ok(bytes as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// Reads files with 1 MiB preads. MiB/s.
fn plain_read(files: &[PathBuf]) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut bytes = 0u64;
    for path in files {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut pos = 0;
        while pos < len {
            let mut buf = vec![0u8; (1024 * 1024).min((len - pos) as usize)];
            file.read_exact_at(&mut buf, pos)?;
            pos += buf.len() as u64;
        }
        bytes += len;
    }
    Ok(bytes as f64 / MIB / start.elapsed().as_secs_f64())
}

fn status_kib(field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(field)).context("no such /proc field")?;
    Ok(line.split_whitespace().nth(1).context("bad /proc line")?.parse()?)
}

/// Child process: opens `count` logs with one small batch each, then prints
/// `<rss before KiB> <peak rss KiB> <open segment files>`.
pub fn idle_logs_child(dir: &Path, count: u64) -> anyhow::Result<()> {
    let before = status_kib("VmRSS:")?;
    let manager = LogManager::new(dir, StorageOptions::default())?;
    let mut b = BatchBuilder::new(Compression::None);
    b.push(0, Some(b"k"), Some(&[1u8; 100]), &[]);
    let batch = b.build()?;
    let config = LogConfig { durability: Durability::Never, ..LogConfig::default() };
    for p in 0..count {
        let log = manager.open_log(&format!("topic-{p}"), config.clone())?;
        log.append(batch.clone())?.wait()?;
    }
    manager.flush_all()?;
    println!("{before} {} {}", status_kib("VmHWM:")?, manager.open_files());
    Ok(())
}
