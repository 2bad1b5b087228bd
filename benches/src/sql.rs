//! SQL benchmarks (issue #6; workload W9 of `strata-bench all`): queries over a topic's whole
//! history, cold Parquet objects and hot tail, through `POST /v1/sql` of a real server, each figure
//! beside a comparison measured in the same run.
//!
//! ```text
//!  produce N records (4 partitions, ~100 B JSON values, timestamps 1 ms apart per partition)
//!    → tiering (local_retention_bytes 0): sealed segments become Parquet objects under
//!      <data>/objects/topics/events/<p>/, the active segment of each partition stays hot
//!  1. full scan + aggregate through /v1/sql (Arrow IPC)  vs  plain DataFusion (ListingTable)
//!     over the same Parquet objects (the cold rows only): rows scanned per second
//!  2. a 1 % timestamp range: latency / full-scan latency; row groups read (EXPLAIN ANALYZE
//!     metrics) / row groups in every object
//!  3. produce (the gRPC-stream load generator of `strata-bench server`) alone, then while full
//!     scans run back to back, durable and relaxed
//! ```
//!
//! Every query's result is checked (counts, bytes, timestamps): a wrong or failed query, or a
//! produce error, marks its run failed with the reason; failed runs are never in a median.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::json;
use strata_client::proto;
use tokio_stream::StreamExt;

use crate::all::report::{Measure, Ratio, Row};
use crate::harness::Server;

const TOPIC: &str = "events";
const PARTITIONS: u32 = 4;
/// Records per produce request while loading the dataset.
const BATCH: u64 = 1000;
/// The first record's timestamp (2026-01-01T00:00:00Z); record `j` of a partition is `T0 + j` ms.
const T0: i64 = 1_767_225_600_000;
const MB: f64 = 1e6;
const COUNTRIES: &[&str] = &["us", "de", "fr", "gb", "jp", "br", "in", "ca", "es", "it", "nl", "se"];

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Records in the dataset (default 10,000,000; 200,000 with --quick).
    #[arg(long)]
    records: Option<u64>,
    /// Length of each produce phase of measurement 3, seconds (default 5; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// The `strata` binary (default: next to this one).
    #[arg(long)]
    strata: Option<PathBuf>,
}

/// How big and how long.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub records: u64,
    pub runs: usize,
    pub seconds: f64,
}

impl Config {
    /// Defaults: 10 M records and 5 s produce phases; `--quick`: 200k records and 1 s.
    pub(crate) fn new(quick: bool, runs: usize, records: Option<u64>, seconds: Option<f64>) -> Self {
        Config {
            records: records.unwrap_or(if quick { 200_000 } else { 10_000_000 }).max(u64::from(PARTITIONS) * 100),
            runs,
            seconds: seconds.unwrap_or(if quick { 1.0 } else { 5.0 }),
        }
    }
}

/// What W9 measured: report rows (runs, failures), ratios against the same run, and the dataset.
#[derive(Debug)]
pub(crate) struct Figures {
    pub rows: Vec<Row>,
    pub ratios: Vec<Ratio>,
    pub dataset: serde_json::Value,
}

/// The loaded, tiered topic.
#[derive(Debug)]
struct Dataset {
    records: u64,
    per_partition: u64,
    value_bytes: u64,
    /// Rows in Parquet objects (the DataFusion baseline reads exactly these).
    cold_rows: u64,
    hot_rows: u64,
    objects_dir: PathBuf,
    objects: usize,
    object_bytes: u64,
    row_groups: usize,
    produce_secs: f64,
    tier_secs: f64,
}

/// The ~100 B JSON value of record `j` of `partition`, deterministic.
fn value(partition: u32, j: u64) -> Vec<u8> {
    let h = (j * u64::from(PARTITIONS) + u64::from(partition)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{{\"user\":{},\"amount\":{},\"country\":\"{}\",\"sku\":\"SKU-{:06}\",\"session\":\"{h:016x}\"}}",
        h % 1_000_000,
        (h >> 20) % 100_000,
        COUNTRIES[((h >> 8) % COUNTRIES.len() as u64) as usize],
        (h >> 40) % 1_000_000,
    )
    .into_bytes()
}

/// Loads `n` records into `partition` over one gRPC ProduceStream (requests of [`BATCH`], up to
/// 8 in flight); the value bytes sent.
async fn fill_partition(url: String, partition: u32, n: u64) -> anyhow::Result<u64> {
    let mut client = proto::producer_client::ProducerClient::connect(url)
        .await?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::ProduceRequest>(8);
    let feeder = tokio::spawn(async move {
        let (mut j, mut bytes, mut request_id) = (0u64, 0u64, 0u64);
        while j < n {
            let end = (j + BATCH).min(n);
            let records: Vec<proto::Record> = (j..end)
                .map(|j| {
                    let v = value(partition, j);
                    bytes += v.len() as u64;
                    proto::Record {
                        value: Some(v.into()),
                        timestamp_ms: Some(T0 + j as i64),
                        partition: Some(partition),
                        ..Default::default()
                    }
                })
                .collect();
            let req = proto::ProduceRequest {
                batches: Vec::new(),
                topic: TOPIC.into(),
                records,
                acks: proto::Acks::Leader as i32,
                request_id,
                producer: None,
                expected_offset: None,
            };
            if tx.send(req).await.is_err() {
                break;
            }
            request_id += 1;
            j = end;
        }
        bytes
    });
    let mut acks = client.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut acked = 0u64;
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        anyhow::ensure!(ack.error.is_none(), "produce to partition {partition} failed: {:?}", ack.error);
        acked += ack.offsets.len() as u64;
    }
    let bytes = feeder.await?;
    anyhow::ensure!(acked == n, "partition {partition}: {acked} of {n} records acknowledged");
    Ok(bytes)
}

/// `*.log` files in a partition's log directory.
fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "log")).count())
        .unwrap_or(0)
}

/// Creates the topic, produces the dataset and waits until every sealed segment is in object
/// storage and deleted locally (one active segment per partition left).
async fn load(server: &Server, data: &Path, records: u64) -> anyhow::Result<Dataset> {
    let per_partition = records / u64::from(PARTITIONS);
    let records = per_partition * u64::from(PARTITIONS);
    // About 20 objects per partition: a hot tail of a few percent.
    let segment_bytes = (per_partition * 128 / 20).clamp(1 << 20, 16 << 20);
    let client = strata_client::Client::connect(&server.url).await?;
    let config = [
        ("tiering", "true".to_string()),
        ("local_retention_bytes", "0".into()),
        // The timestamps are synthetic (2026-01-01): no retention by age.
        ("retention_ms", "-1".into()),
        ("segment_bytes", segment_bytes.to_string()),
        ("flush", "never".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    client.admin().create_topic(TOPIC, PARTITIONS, config).await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PARTITIONS {
        tasks.spawn(fill_partition(server.url.clone(), p, per_partition));
    }
    let mut value_bytes = 0;
    while let Some(r) = tasks.join_next().await {
        value_bytes += r??;
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let tier_start = Instant::now();
    let deadline = tier_start + Duration::from_secs(1800);
    let partitions = loop {
        let info = client.admin().describe_topic(TOPIC).await?;
        let settled = info.partitions.len() == PARTITIONS as usize
            && info.partitions.iter().all(|p| {
                p.tiered_end_offset > 0
                    && p.local_start_offset == p.tiered_end_offset
                    && segment_files(&data.join("logs").join(format!("{TOPIC}-{}", p.partition))) == 1
            });
        if settled {
            break info.partitions;
        }
        anyhow::ensure!(Instant::now() < deadline, "tiering did not finish in 30 minutes: {:?}", info.partitions);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tier_secs = tier_start.elapsed().as_secs_f64();
    let cold_rows: u64 = partitions.iter().map(|p| p.tiered_end_offset).sum();
    let hot_rows: u64 = partitions.iter().map(|p| p.high_watermark - p.tiered_end_offset).sum();
    anyhow::ensure!(cold_rows + hot_rows == records, "{cold_rows} cold + {hot_rows} hot rows, {records} produced");
    // The objects as the default file object store lays them out (server/src/tier/store.rs).
    let objects_dir = data.join("objects").join("topics").join(TOPIC);
    let (mut objects, mut object_bytes, mut row_groups) = (0, 0, 0);
    for p in 0..PARTITIONS {
        for entry in std::fs::read_dir(objects_dir.join(p.to_string()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|x| x == "parquet") {
                let file = std::fs::File::open(&path)?;
                object_bytes += file.metadata()?.len();
                row_groups += SerializedFileReader::new(file)
                    .with_context(|| format!("reading the footer of {}", path.display()))?
                    .metadata()
                    .num_row_groups();
                objects += 1;
            }
        }
    }
    Ok(Dataset {
        records,
        per_partition,
        value_bytes,
        cold_rows,
        hot_rows,
        objects_dir,
        objects,
        object_bytes,
        row_groups,
        produce_secs,
        tier_secs,
    })
}

/// The full scan: every column the aggregate needs, every row.
const FULL_SCAN: &str = "SELECT partition, count(*), sum(length(value)), min(timestamp), max(timestamp) \
                         FROM events GROUP BY partition ORDER BY partition";

/// The 1 % range: `[T0 + 40 %, T0 + 41 %)` of each partition's span, inside the cold tier.
fn range_bounds(ds: &Dataset) -> (i64, i64) {
    let from = T0 + (ds.per_partition * 40 / 100) as i64;
    (from, from + (ds.per_partition / 100).max(1) as i64)
}

fn range_query(ds: &Dataset) -> String {
    let (from, to) = range_bounds(ds);
    format!(
        "SELECT count(*), sum(length(value)), min(timestamp), max(timestamp) FROM events \
         WHERE timestamp >= to_timestamp_millis({from}) AND timestamp < to_timestamp_millis({to})"
    )
}

/// Every column of every row as an i64 (nulls as 0: the checks catch them).
fn int_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<Vec<i64>>> {
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| datafusion::arrow::compute::cast(c, &DataType::Int64))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| {
                        let c = c.as_primitive::<Int64Type>();
                        if c.is_null(r) { 0 } else { c.value(r) }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// Checks a full scan's result: one row per partition with `count`, value bytes and timestamps
/// as produced. `cold_only`: only the objects' rows (the DataFusion baseline).
fn check_full(ds: &Dataset, batches: &[RecordBatch], cold_only: bool) -> anyhow::Result<(u64, u64)> {
    let rows = int_rows(batches)?;
    let count: i64 = rows.iter().map(|r| r[1]).sum();
    let bytes: i64 = rows.iter().map(|r| r[2]).sum();
    let want = if cold_only { ds.cold_rows } else { ds.records };
    anyhow::ensure!(count == want as i64, "full scan counted {count} rows, expected {want}");
    if !cold_only {
        anyhow::ensure!(rows.len() == PARTITIONS as usize, "full scan returned {} groups", rows.len());
        anyhow::ensure!(
            bytes == ds.value_bytes as i64,
            "full scan summed {bytes} value bytes, {} produced",
            ds.value_bytes
        );
        for r in &rows {
            let last = T0 + ds.per_partition as i64 - 1;
            anyhow::ensure!(
                r[3] == T0 && r[4] == last,
                "partition {}: timestamps {}..={}, expected {T0}..={last}",
                r[0],
                r[3],
                r[4]
            );
        }
    }
    Ok((count as u64, bytes as u64))
}

/// Checks the range query's single row: exactly the records produced in the range. Rows and
/// value bytes.
fn check_range(ds: &Dataset, batches: &[RecordBatch]) -> anyhow::Result<(u64, u64)> {
    let rows = int_rows(batches)?;
    let (from, to) = range_bounds(ds);
    let want = (to - from) as u64 * u64::from(PARTITIONS);
    let row = rows.first().context("the range query returned no row")?;
    anyhow::ensure!(row[0] == want as i64, "the range query counted {} rows, expected {want}", row[0]);
    anyhow::ensure!(
        row[2] == from && row[3] == to - 1,
        "range timestamps {}..={}, expected {from}..={}",
        row[2],
        row[3],
        to - 1
    );
    Ok((want, row[1].max(0) as u64))
}

/// POSTs a query to `/v1/sql`; the whole response body (a 4xx/5xx or a body cut short by a
/// failure while streaming is an error).
fn post_sql(agent: &ureq::Agent, url: &str, sql: &str, format: &str) -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(&json!({ "sql": sql, "format": format }))?;
    let mut resp = agent.post(format!("{url}/v1/sql")).header("content-type", "application/json").send(&body[..])?;
    let status = resp.status();
    let bytes = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
    anyhow::ensure!(status.is_success(), "/v1/sql answered {status}: {}", String::from_utf8_lossy(&bytes));
    Ok(bytes)
}

/// The batches of an Arrow IPC stream.
fn decode_arrow(bytes: Vec<u8>) -> anyhow::Result<Vec<RecordBatch>> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// Runs `sql` through Strata (Arrow IPC result); seconds from sending to the last batch decoded.
async fn strata_query(url: &str, sql: &str) -> anyhow::Result<(f64, Vec<RecordBatch>)> {
    let (url, sql) = (url.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let start = Instant::now();
        let batches = decode_arrow(post_sql(&agent, &url, &sql, "arrow")?)?;
        Ok((start.elapsed().as_secs_f64(), batches))
    })
    .await?
}

/// Runs `sql` with plain DataFusion over the Parquet objects under `dir` (a fresh session each
/// time, as Strata plans each query in a fresh one); seconds including listing and footers.
async fn datafusion_query(dir: &Path, sql: &str) -> anyhow::Result<(f64, Vec<RecordBatch>)> {
    let start = Instant::now();
    let mut config = SessionConfig::new();
    // The objects sit in one directory per partition under the topic's.
    config.options_mut().execution.listing_table_ignore_subdirectory = false;
    let ctx = SessionContext::new_with_config(config);
    ctx.register_parquet(TOPIC, format!("{}/", dir.display()), ParquetReadOptions::default()).await?;
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok((start.elapsed().as_secs_f64(), batches))
}

/// A count as DataFusion prints metrics: `612`, `8.00 K`, `1.23 M`.
fn human_count(s: &str) -> Option<f64> {
    let s = s.trim();
    let (number, scale) = match s.rsplit_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "B")) => (n, 1e9),
        _ => (s, 1.0),
    };
    number.trim().parse::<f64>().ok().map(|n| n * scale)
}

/// `name=<total> total → <matched> matched` summed over every operator line of `plan`.
fn pruning(plan: &str, name: &str) -> Option<(f64, f64)> {
    let key = format!("{name}=");
    let mut found = None;
    for line in plan.lines() {
        let Some(at) = line.find(&key) else { continue };
        let rest = &line[at + key.len()..];
        let (total, rest) = rest.split_once(" total → ")?;
        let matched = rest.split(" matched").next()?;
        let (t, m) = found.unwrap_or((0.0, 0.0));
        found = Some((t + human_count(total)?, m + human_count(matched)?));
    }
    found
}

/// A plain counter metric (`name=N`) summed over every operator line of `plan` that has it.
fn counter(plan: &str, name: &str) -> Option<f64> {
    let key = format!("{name}=");
    let mut found = None;
    for line in plan.lines() {
        let Some(at) = line.find(&key) else { continue };
        let value = line[at + key.len()..].split([',', ']']).next()?;
        found = Some(found.unwrap_or(0.0) + human_count(value)?);
    }
    found
}

/// What `EXPLAIN ANALYZE` of the range query says it read.
#[derive(Debug, Clone, Copy)]
struct RangeRead {
    /// Row groups of the objects the scan opened (the manifest already left out the others).
    row_groups_opened: f64,
    /// Row groups left after statistics pruning: the ones decoded.
    row_groups_read: f64,
    /// The hot scan's local segments: (read, pruned by their time index), when the plan says.
    hot_segments: Option<(f64, f64)>,
}

async fn explain_range(url: &str, sql: &str) -> anyhow::Result<RangeRead> {
    let (url, sql) = (url.to_string(), format!("EXPLAIN ANALYZE {sql}"));
    let body = tokio::task::spawn_blocking(move || post_sql(&agent(), &url, &sql, "json")).await??;
    let doc: serde_json::Value = serde_json::from_slice(&body)?;
    let plan: String = doc["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get(1).and_then(|c| c.as_str()))
        .collect::<Vec<_>>()
        .join("\n");
    // No Parquet scan at all when the manifest ruled out every object.
    let (opened, read) = match pruning(&plan, "row_groups_pruned_statistics") {
        Some(found) => found,
        None if !plan.contains("DataSourceExec") => (0.0, 0.0),
        None => anyhow::bail!("no row_groups_pruned_statistics in EXPLAIN ANALYZE:\n{plan}"),
    };
    let hot_segments = counter(&plan, "segments_read").zip(counter(&plan, "segments_pruned"));
    Ok(RangeRead { row_groups_opened: opened, row_groups_read: read, hot_segments })
}

fn scan_measure(rows: u64, bytes: u64, secs: f64) -> Measure {
    Measure {
        msgs_s: rows as f64 / secs.max(1e-9),
        mb_s: bytes as f64 / MB / secs.max(1e-9),
        p50_ms: Some(secs * 1000.0),
        ..Measure::default()
    }
}

fn record(row: &mut Row, what: &str, r: usize, outcome: anyhow::Result<Measure>) {
    match outcome {
        Ok(m) => {
            println!("W9 {what} run {}: {:.0} rows/s, {:.0} ms", r + 1, m.msgs_s, m.p50_ms.unwrap_or(0.0));
            row.ok.push(m);
        }
        Err(e) => {
            println!("W9 {what} run {}: FAILED: {e:#}", r + 1);
            row.failed.push(format!("{e:#}"));
        }
    }
}

/// One produce phase of measurement 3: `seconds` of the gRPC-stream load generator to a new
/// topic with `flush`, with full scans looping until it ends when `scans` is set. The produce
/// figures and the scans completed meanwhile.
async fn produce_phase(
    server: &Server,
    ds: &Dataset,
    flush: &str,
    seconds: f64,
    scans: bool,
) -> anyhow::Result<(Measure, usize)> {
    // A fresh topic per phase, deleted after it: gigabytes a phase would pile up otherwise.
    static PHASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let topic = format!("load-{}", PHASE.fetch_add(1, Ordering::Relaxed));
    crate::server::create_topic(&server.url, &topic, 1, flush).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let expected = ds.records as i64;
    let looper = scans.then(|| {
        let (stop, url) = (Arc::clone(&stop), server.url.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let agent = agent();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                let batches = decode_arrow(post_sql(&agent, &url, FULL_SCAN, "arrow")?)?;
                // A wrong answer under load is a failure too.
                let rows: i64 = int_rows(&batches)?.iter().map(|r| r[1]).sum();
                anyhow::ensure!(rows == expected, "a full scan under load counted {rows} rows, expected {expected}");
                done += 1;
            }
            Ok(done)
        })
    });
    if looper.is_some() {
        // Let the first scan get going before the producer starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let produced = crate::server::produce_run(server, &topic, "grpc-stream", 4, seconds).await;
    stop.store(true, Ordering::Relaxed);
    let scans_done = match looper {
        Some(l) => {
            l.await.map_err(anyhow::Error::from).and_then(|r| r).context("a full scan failed while the producer ran")
        }
        None => Ok(0),
    };
    let deleted = async { strata_client::Client::connect(&server.url).await?.admin().delete_topic(&topic).await };
    let deleted = deleted.await;
    let (run, scans_done) = (produced?, scans_done?);
    deleted?;
    Ok((
        Measure {
            msgs_s: run.records_per_s,
            mb_s: run.mb_per_s,
            p50_ms: Some(run.latency.value_at_quantile(0.5) as f64 / 1000.0),
            p99_ms: Some(run.latency.value_at_quantile(0.99) as f64 / 1000.0),
            p999_ms: Some(run.latency.value_at_quantile(0.999) as f64 / 1000.0),
            // With scans running, the server's CPU time is mostly theirs.
            cpu_s_per_gb: (!scans).then_some(run.cpu_s_per_gb),
            peak_rss_mib: server.rss_mib().ok(),
        },
        scans_done,
    ))
}

/// Runs W9 against a fresh server with its data under `root`.
///
/// # Errors
/// When the dataset cannot be loaded or tiered (every figure then fails); a failed query or
/// produce run only fails its own figure.
pub(crate) async fn measure(strata: &Path, root: &Path, cfg: &Config) -> anyhow::Result<Figures> {
    let data = root.join("server");
    // A full scan of 10 M rows on a busy machine may take longer than the default 60 s limit.
    let env = [("STRATA_TIER_INTERVAL_MS", "200"), ("STRATA_SQL_TIMEOUT_MS", "1800000")];
    let server = Server::start_with_env(strata, &data, &env)?;
    let ds = load(&server, &data, cfg.records).await?;
    println!(
        "W9 dataset: {} records ({:.0} MB of values) produced in {:.1} s ({:.0} records/s), tiered in {:.1} s more: \
         {} cold rows in {} objects ({} row groups, {:.0} MiB), {} hot rows",
        ds.records,
        ds.value_bytes as f64 / MB,
        ds.produce_secs,
        ds.records as f64 / ds.produce_secs,
        ds.tier_secs,
        ds.cold_rows,
        ds.objects,
        ds.row_groups,
        ds.object_bytes as f64 / 1024.0 / 1024.0,
        ds.hot_rows
    );

    // 1 and 2: full scans and the 1 % range, Strata and DataFusion alternating.
    let mut full = Row::new("W9", "strata", "relaxed", "full scan");
    let mut full_df = Row::new("W9", "datafusion", "relaxed", "full scan");
    let mut range = Row::new("W9", "strata", "relaxed", "1% time range");
    let mut range_df = Row::new("W9", "datafusion", "relaxed", "1% time range");
    let mut reads: Vec<RangeRead> = Vec::new();
    let range_sql = range_query(&ds);
    for r in 0..cfg.runs {
        let outcome = async {
            let (secs, batches) = strata_query(&server.url, FULL_SCAN).await?;
            let (rows, bytes) = check_full(&ds, &batches, false)?;
            Ok(scan_measure(rows, bytes, secs))
        };
        record(&mut full, "full scan, strata", r, outcome.await);
        let outcome = async {
            let (secs, batches) = datafusion_query(&ds.objects_dir, FULL_SCAN).await?;
            let (rows, bytes) = check_full(&ds, &batches, true)?;
            Ok(scan_measure(rows, bytes, secs))
        };
        record(&mut full_df, "full scan, datafusion", r, outcome.await);
        let outcome = async {
            let (secs, batches) = strata_query(&server.url, &range_sql).await?;
            let (rows, bytes) = check_range(&ds, &batches)?;
            Ok(scan_measure(rows, bytes, secs))
        };
        record(&mut range, "1% range, strata", r, outcome.await);
        let outcome = async {
            let (secs, batches) = datafusion_query(&ds.objects_dir, &range_sql).await?;
            let (rows, bytes) = check_range(&ds, &batches)?;
            Ok(scan_measure(rows, bytes, secs))
        };
        record(&mut range_df, "1% range, datafusion", r, outcome.await);
        // What the range query read, from its own metrics (a separate, untimed execution).
        match explain_range(&server.url, &range_sql).await {
            Ok(read) => reads.push(read),
            Err(e) => {
                println!("W9 1% range EXPLAIN ANALYZE run {}: FAILED: {e:#}", r + 1);
                range.failed.push(format!("EXPLAIN ANALYZE: {e:#}"));
            }
        }
    }
    let segment_note = format!(
        "{} rows: {} cold in {} Parquet objects ({} row groups, {:.0} MiB), {} hot; rows/s = rows scanned per second",
        ds.records,
        ds.cold_rows,
        ds.objects,
        ds.row_groups,
        ds.object_bytes as f64 / 1024.0 / 1024.0,
        ds.hot_rows
    );
    full.note = segment_note;
    full_df.note =
        format!("plain DataFusion (ListingTable) over the same objects: the {} cold rows only", ds.cold_rows);
    let median_of = |f: fn(&RangeRead) -> f64| {
        let mut v: Vec<f64> = reads.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let (groups_read, groups_opened) = (median_of(|r| r.row_groups_read), median_of(|r| r.row_groups_opened));
    let hot_segments = reads.last().and_then(|r| r.hot_segments);
    let (from, to) = range_bounds(&ds);
    range.note = format!(
        "{} rows matched (timestamps {from}..{to}); Parquet row groups read {} of {} ({} in the objects the \
         manifest let through); hot tail ({} rows): {}",
        (to - from) as u64 * u64::from(PARTITIONS),
        groups_read.map_or("?".into(), |g| format!("{g:.0}")),
        ds.row_groups,
        groups_opened.map_or("?".into(), |g| format!("{g:.0}")),
        ds.hot_rows,
        hot_segments.map_or("no segment metrics in the plan".into(), |(read, pruned)| format!(
            "{read:.0} segment(s) read, {pruned:.0} pruned by the time index"
        )),
    );
    range_df.note = "plain DataFusion over the same objects".into();

    // 3. Produce alone and during full scans, durable and relaxed.
    let mut produce_rows = Vec::new();
    for (mode, flush) in [("durable", "always"), ("relaxed", "interval")] {
        let mut alone = Row::new("W9", "strata", mode, "produce alone");
        let mut during = Row::new("W9", "strata", mode, "produce during full scans");
        let mut scans = Vec::new();
        for r in 0..cfg.runs {
            for (row, with_scans) in [(&mut alone, false), (&mut during, true)] {
                match produce_phase(&server, &ds, flush, cfg.seconds, with_scans).await {
                    Ok((m, n)) => {
                        println!(
                            "W9 {mode} produce {} run {}: {:.0} records/s, p99 {:.2} ms{}",
                            if with_scans { "during full scans" } else { "alone" },
                            r + 1,
                            m.msgs_s,
                            m.p99_ms.unwrap_or(0.0),
                            if with_scans { format!(", {n} scans completed") } else { String::new() }
                        );
                        if with_scans {
                            scans.push(n);
                        }
                        row.ok.push(m);
                    }
                    Err(e) => {
                        println!("W9 {mode} produce run {}: FAILED: {e:#}", r + 1);
                        row.failed.push(format!("{e:#}"));
                    }
                }
            }
        }
        let door = format!("gRPC stream, 4 clients, 100 × 1 KiB per request, {:.0} s, flush={flush}", cfg.seconds);
        alone.note = door.clone();
        during.note = format!("{door}; full scans back to back meanwhile, completed per run: {scans:?}");
        produce_rows.push((alone, during));
    }
    server.stop()?;

    let mut ratios = Vec::new();
    let ratio = |mode: &str, metric: &str, versus: &str, strata: f64, other: f64| Ratio {
        workload: "W9".into(),
        mode: mode.into(),
        metric: metric.into(),
        versus: versus.into(),
        strata,
        other,
    };
    let clean_p50 = |r: &Row| if r.status() == "ok" { r.p50() } else { None };
    if let (Some(s), Some(d)) = (full.clean_msgs_s(), full_df.clean_msgs_s()) {
        ratios.push(ratio(
            "relaxed",
            "full scan rows/s (target ≥ 0.8)",
            "DataFusion over the same Parquet objects",
            s,
            d,
        ));
    }
    if let (Some(r), Some(f)) = (clean_p50(&range), clean_p50(&full)) {
        ratios.push(ratio(
            "relaxed",
            "1% time range latency ms (lower is better; target ≤ 0.1)",
            "Strata full scan",
            r,
            f,
        ));
    }
    if let (Some(r), Some(d)) = (clean_p50(&range), clean_p50(&range_df)) {
        ratios.push(ratio(
            "relaxed",
            "1% time range latency ms (lower is better)",
            "DataFusion over the same Parquet objects",
            r,
            d,
        ));
    }
    if let (Some(g), true) = (groups_read, range.status() == "ok") {
        ratios.push(ratio(
            "relaxed",
            "Parquet row groups read by the 1% range (lower is better; target ≤ 0.05)",
            "row groups in all objects",
            g,
            ds.row_groups as f64,
        ));
    }
    for (alone, during) in &produce_rows {
        if let (Some(d), Some(a)) = (during.clean_msgs_s(), alone.clean_msgs_s()) {
            ratios.push(ratio(&alone.mode, "produce msgs/s during full scans (target ≥ 0.7)", "produce alone", d, a));
        }
    }

    let mut rows = vec![full, full_df, range, range_df];
    for (alone, during) in produce_rows {
        rows.extend([alone, during]);
    }
    let dataset = json!({
        "records": ds.records,
        "partitions": PARTITIONS,
        "value_bytes": ds.value_bytes,
        "cold_rows": ds.cold_rows,
        "hot_rows": ds.hot_rows,
        "objects": ds.objects,
        "object_bytes": ds.object_bytes,
        "row_groups": ds.row_groups,
        "produce_seconds": ds.produce_secs,
        "tier_seconds": ds.tier_secs,
        "range_ms": [from, to],
        "range_row_groups_read": reads.iter().map(|r| r.row_groups_read).collect::<Vec<_>>(),
        "range_row_groups_opened": reads.iter().map(|r| r.row_groups_opened).collect::<Vec<_>>(),
        "range_hot_segments_read_pruned": reads.iter().map(|r| r.hot_segments).collect::<Vec<_>>(),
    });
    Ok(Figures { rows, ratios, dataset })
}

/// `median (min–max)` of a row's runs, as the other tables print them.
fn summary(row: &Row) -> String {
    let mut v: Vec<&Measure> = row.ok.iter().collect();
    if v.is_empty() {
        return "—".into();
    }
    v.sort_by(|a, b| a.msgs_s.total_cmp(&b.msgs_s));
    let (lo, mid, hi) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    let mut latency: Vec<f64> = row.ok.iter().filter_map(|m| m.p50_ms).collect();
    latency.sort_by(f64::total_cmp);
    if row.phase.starts_with("produce") {
        format!(
            "{:.0} records/s ({:.0}–{:.0}), {:.0} MB/s, p99 {:.1} ms",
            mid.msgs_s,
            lo.msgs_s,
            hi.msgs_s,
            mid.mb_s,
            row.p99().unwrap_or(0.0)
        )
    } else {
        format!(
            "{:.0} rows/s ({:.0}–{:.0}), {:.0} ms ({:.0}–{:.0})",
            mid.msgs_s,
            lo.msgs_s,
            hi.msgs_s,
            row.p50().unwrap_or(0.0),
            latency[0],
            latency[latency.len() - 1]
        )
    }
}

/// The figures as markdown: every row, then the ratios.
pub(crate) fn markdown(f: &Figures) -> String {
    let mut s =
        String::from("| figure | system | mode | median (range) | status; note |\n| --- | --- | --- | --- | --- |\n");
    for r in &f.rows {
        let status = match r.status() {
            "failed" => {
                format!("**failed** ({} of {}): {}", r.failed.len(), r.failed.len() + r.ok.len(), r.failed.join("; "))
            }
            st => st.to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {}; {} |\n",
            r.phase,
            r.system,
            r.mode,
            summary(r),
            status.replace('|', "/"),
            r.note
        ));
    }
    s.push_str("\n| metric | Strata | versus | ratio |\n| --- | --- | --- | --- |\n");
    for r in &f.ratios {
        s.push_str(&format!(
            "| {} ({}) | {:.1} | {} {:.1} | **{:.3}** |\n",
            r.metric,
            r.mode,
            r.strata,
            r.versus,
            r.other,
            r.ratio()
        ));
    }
    s
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let strata = crate::harness::strata_binary(args.strata.as_deref())?;
    let root = args.run.data_root()?;
    let cfg = Config::new(args.run.quick, args.run.runs(), args.records, args.seconds);
    let loadavg = crate::harness::loadavg();
    println!(
        "# SQL benchmarks (W9) — {} run(s), {} records in {PARTITIONS} partitions, load average at start: {loadavg}",
        cfg.runs, cfg.records
    );
    println!("data directory: {}", root.path().display());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let figures = runtime.block_on(measure(&strata, root.path(), &cfg))?;
    println!("\n{}", markdown(&figures));
    let doc = json!({
        "quick": args.run.quick,
        "runs": cfg.runs,
        "loadavg": loadavg,
        "dataset": figures.dataset,
        "results": figures.rows.iter().map(Row::json).collect::<Vec<_>>(),
        "ratios": figures.ratios.iter().map(Ratio::json).collect::<Vec<_>>(),
    });
    let out = args.run.write_results("sql", &(serde_json::to_string_pretty(&doc)? + "\n"))?;
    println!("results written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as DataFusion 55 prints them in `EXPLAIN ANALYZE` (abridged).
    const PLAN: &str = "\
UnionExec, metrics=[output_rows=12.00 K, elapsed_compute=2.07ms]
  DataSourceExec: file_groups={2 groups: [[a.parquet]]}, metrics=[output_rows=8.00 K, files_ranges_pruned_statistics=4 total → 2 matched, row_groups_pruned_statistics=612 total → 7 matched, row_groups_pruned_bloom_filter=7 total → 7 matched, files_opened=2]
  HotScanExec: partitions={0:[4000, 6000), 1:[4000, 6000)}, metrics=[output_rows=4.00 K, segments_pruned=3, segments_read=1]
  HotScanExec: partitions={2:[4000, 6000)}, metrics=[output_rows=1.20 K, segments_pruned=1, segments_read=0]";

    #[test]
    fn counts_as_datafusion_prints_them() {
        assert_eq!(human_count("612"), Some(612.0));
        assert_eq!(human_count("8.00 K"), Some(8000.0));
        assert_eq!(human_count(" 1.5 M"), Some(1_500_000.0));
        assert_eq!(human_count("many"), None);
    }

    #[test]
    fn pruning_metrics_are_read_and_summed() {
        assert_eq!(pruning(PLAN, "row_groups_pruned_statistics"), Some((612.0, 7.0)));
        assert_eq!(pruning(PLAN, "files_ranges_pruned_statistics"), Some((4.0, 2.0)));
        assert_eq!(pruning(PLAN, "page_index_rows_pruned"), None);
        assert_eq!(counter(PLAN, "segments_read"), Some(1.0));
        assert_eq!(counter(PLAN, "segments_pruned"), Some(4.0));
        assert_eq!(counter(PLAN, "bytes_scanned"), None);
    }

    #[test]
    fn values_are_about_100_bytes_of_json() {
        for j in [0, 1, 999_999] {
            let v = value(3, j);
            assert!((80..=110).contains(&v.len()), "{} bytes", v.len());
            assert!(serde_json::from_slice::<serde_json::Value>(&v).is_ok());
        }
    }
}
