//! Tiering benchmarks (issue #5): sealed segments to Parquet and back, each beside a baseline
//! from the same run.
//!
//! 1. Tiering throughput: `segment_to_parquet` + write and fsync of each object to a local file
//!    (the local-filesystem object store's work), against the parquet crate alone writing the
//!    same records from memory (Arrow arrays built directly, same writer properties and row
//!    groups) to a file with fsync.
//! 2. Sequential read: `read_parquet` in ~1 MiB pages over every object, each object's bytes read
//!    from its file on every run (no object cache), against `Log::read` + `records_from` over the
//!    same segments (hot: the segments are in the page cache, as are the object files — the page
//!    cache is not dropped, so "cold" means "not in Strata's memory", not "not in RAM").
//! 3. Parquet bytes / segment bytes for JSON-like 1 KiB values in uncompressed batches.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanArray, Int16Array, Int32Array, Int64Array, ListArray, RecordBatch, StringBuilder,
    StructArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use strata_storage::tier::{self, TierObjectMeta};
use strata_storage::{BatchBuilder, Compression, Durability, Log, LogConfig, Record};

use crate::harness::Stat;

const MIB: f64 = 1024.0 * 1024.0;
const BATCH_RECORDS: usize = 64;
const VALUE_BYTES: usize = 1024;
const PAGE_BYTES: usize = 1024 * 1024;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// The `strata` binary, for the consumer's view through the server (default: next to this one).
    #[arg(long)]
    strata: Option<std::path::PathBuf>,
}

/// xorshift64*: deterministic, dependency-free variety for the generated values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const EVENTS: &[&str] = &["click", "view", "add_to_cart", "purchase", "search", "login", "logout", "scroll", "share"];
const SECTIONS: &[&str] = &["products", "cart", "checkout", "account", "search", "blog", "help", "deals", "brands"];
const WORDS: &[&str] = &[
    "red",
    "wireless",
    "organic",
    "premium",
    "compact",
    "vintage",
    "smart",
    "eco",
    "ultra",
    "classic",
    "kids",
    "outdoor",
    "leather",
    "steel",
    "cotton",
    "pro",
    "mini",
    "max",
    "travel",
    "home",
    "garden",
    "kitchen",
    "gaming",
    "office",
    "sport",
    "winter",
    "summer",
    "limited",
    "edition",
    "bundle",
    "refurbished",
    "new",
    "sale",
    "gift",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
];
const COUNTRIES: &[&str] = &["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "IT", "NL", "SE"];

/// A realistic ~1 KiB JSON event: varied fields, numbers, ids, free text from a vocabulary.
fn json_value(rng: &mut Rng, ts: i64) -> Vec<u8> {
    let user = rng.below(1_000_000);
    let mut v = format!(
        "{{\"user_id\":{user},\"session\":\"{:016x}\",\"event\":\"{}\",\"ts\":{ts},\"page\":\"/{}/{}-{}-{}\",\
         \"referrer\":\"https://www.example.com/{}?q={}+{}\",\"country\":\"{}\",\"user_agent\":\"{}\",\
         \"props\":{{\"price\":{}.{:02},\"quantity\":{},\"sku\":\"SKU-{:06}\",\"ab_test\":\"variant_{}\",\
         \"latency_ms\":{},\"tags\":[\"{}\",\"{}\",\"{}\"]}},\"description\":\"",
        rng.next(),
        rng.pick(EVENTS),
        rng.pick(SECTIONS),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.below(100_000),
        rng.pick(SECTIONS),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.pick(COUNTRIES),
        rng.pick(AGENTS),
        rng.below(500),
        rng.below(100),
        1 + rng.below(5),
        rng.below(1_000_000),
        (b'a' + rng.below(4) as u8) as char,
        rng.below(2000),
        rng.pick(WORDS),
        rng.pick(WORDS),
        rng.pick(WORDS),
    );
    while v.len() < VALUE_BYTES - 40 {
        v.push_str(rng.pick(WORDS));
        v.push(' ');
        if rng.below(6) == 0 {
            v.push_str(&rng.below(10_000).to_string());
            v.push(' ');
        }
    }
    v.push_str(&format!("\",\"checksum\":\"{:08x}\"}}", rng.next() as u32));
    v.into_bytes()
}

/// Fills a log with `segments` sealed segments of about `segment_bytes` each.
fn fill_log(dir: &Path, segments: usize, segment_bytes: u64) -> anyhow::Result<Log> {
    let config = LogConfig { segment_bytes, durability: Durability::Never, ..LogConfig::default() };
    let log = Log::open(dir, config)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ts = 1_700_000_000_000i64;
    let mut n = 0u64;
    while log.segments().len() <= segments {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..BATCH_RECORDS {
            ts += rng.below(20) as i64;
            let value = json_value(&mut rng, ts);
            b.push(ts, Some(format!("user-{}", n % 10_000).as_bytes()), Some(&value), &[]);
            n += 1;
        }
        log.append(b.build()?)?.wait()?;
    }
    log.flush()?;
    Ok(log)
}

/// Every record of `[base, end)` via `Log::read` in ~1 MiB reads.
fn read_segment(log: &Log, base: u64, end: u64) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut offset = base;
    while offset < end {
        let r = log.read(offset, PAGE_BYTES)?;
        out.extend(r.records_from(offset)?.into_iter().filter(|r| r.offset < end));
        offset = r.next_offset;
    }
    Ok(out)
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Baseline writer: Arrow arrays built directly from records, the tier's writer properties and
/// row-group cut, straight to a file.
fn baseline_parquet(path: &Path, records: &[Record], partition: u32) -> anyhow::Result<u64> {
    let schema = tier::arrow_schema();
    let file = File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(tier::writer_properties()))?;
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < records.len() && end - start < tier::ROW_GROUP_MAX_ROWS && bytes < tier::ROW_GROUP_MAX_BYTES {
            let r = &records[end];
            bytes += r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len);
            bytes += r.headers.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
            end += 1;
        }
        writer.write(&record_batch(&records[start..end], partition, &schema)?)?;
        writer.flush()?;
        start = end;
    }
    let file = writer.into_inner()?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

fn record_batch(
    records: &[Record],
    partition: u32,
    schema: &arrow::datatypes::SchemaRef,
) -> anyhow::Result<RecordBatch> {
    let n = records.len();
    let value_bytes: usize = records.iter().map(|r| r.value.as_ref().map_or(0, Bytes::len)).sum();
    let mut keys = BinaryBuilder::with_capacity(n, n * 16);
    let mut values = BinaryBuilder::with_capacity(n, value_bytes);
    let mut names = StringBuilder::new();
    let mut header_values = BinaryBuilder::new();
    let mut header_offsets = Vec::with_capacity(n + 1);
    header_offsets.push(0i32);
    for r in records {
        keys.append_option(r.key.as_deref());
        values.append_option(r.value.as_deref());
        for h in &r.headers {
            names.append_value(&h.name);
            header_values.append_value(&h.value);
        }
        header_offsets.push(header_offsets[header_offsets.len() - 1] + r.headers.len() as i32);
    }
    let fields =
        Fields::from(vec![Field::new("name", DataType::Utf8, false), Field::new("value", DataType::Binary, false)]);
    let item = Field::new("element", DataType::Struct(fields.clone()), false);
    let headers = StructArray::try_new(
        fields,
        vec![Arc::new(names.finish()) as ArrayRef, Arc::new(header_values.finish())],
        None,
    )?;
    let headers =
        ListArray::try_new(Arc::new(item), OffsetBuffer::new(header_offsets.into()), Arc::new(headers), None)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_value(partition, n)),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.offset as i64))),
        Arc::new(TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.timestamp))),
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
        Arc::new(headers),
        Arc::new(Int64Array::from_value(-1, n)),
        Arc::new(Int16Array::from_value(-1, n)),
        Arc::new(Int32Array::from_value(-1, n)),
        Arc::new(BooleanArray::from(vec![false; n])),
        Arc::new(BooleanArray::from(vec![false; n])),
    ];
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let (total_mib, segment_mib) = if args.run.quick { (16u64, 4u64) } else { (256, 32) };
    let segments = (total_mib / segment_mib) as usize;
    let loadavg = crate::harness::loadavg();
    println!(
        "# tier benchmarks — {runs} run(s), {segments} segments of {segment_mib} MiB, {BATCH_RECORDS} × ~{VALUE_BYTES} B \
         JSON values per uncompressed batch, load average at start: {}",
        loadavg.trim()
    );
    println!("data directory: {}", root.path().display());
    let log = fill_log(&root.path().join("log"), segments, segment_mib << 20)?;
    let sealed: Vec<_> = log.sealed_segments().into_iter().take(segments).collect();
    let segment_bytes: u64 = sealed.iter().map(|s| s.size_bytes).sum();
    let seg_mib = segment_bytes as f64 / MIB;
    let in_memory: Vec<Vec<Record>> =
        sealed.iter().map(|s| read_segment(&log, s.base_offset, s.end_offset)).collect::<anyhow::Result<_>>()?;
    let objects_dir = root.path().join("objects");
    let baseline_dir = root.path().join("baseline");
    std::fs::create_dir_all(&objects_dir)?;
    std::fs::create_dir_all(&baseline_dir)?;
    let object_path = |base: u64| objects_dir.join(format!("{base:020}.parquet"));

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut json: Vec<String> = Vec::new();

    // 1. Tiering throughput (MiB of segment per second), alternating Strata and baseline runs.
    let mut metas: Vec<TierObjectMeta> = Vec::new();
    let (mut strata_runs, mut base_runs, mut convert_runs) = (Vec::new(), Vec::new(), Vec::new());
    let mut baseline_bytes = 0u64;
    for _ in 0..runs {
        metas.clear();
        let start = Instant::now();
        let mut convert = 0.0;
        for s in &sealed {
            let t = Instant::now();
            let (object, meta) = tier::segment_to_parquet(&log, 0, s.base_offset)?;
            convert += t.elapsed().as_secs_f64();
            write_synced(&object_path(s.base_offset), &object)?;
            metas.push(meta);
        }
        strata_runs.push(seg_mib / start.elapsed().as_secs_f64());
        convert_runs.push(seg_mib / convert);
        let start = Instant::now();
        baseline_bytes = 0;
        for (s, records) in sealed.iter().zip(&in_memory) {
            baseline_bytes +=
                baseline_parquet(&baseline_dir.join(format!("{:020}.parquet", s.base_offset)), records, 0)?;
        }
        base_runs.push(seg_mib / start.elapsed().as_secs_f64());
    }
    let (strata, base, convert) = (Stat::of(strata_runs), Stat::of(base_runs), Stat::of(convert_runs));
    let ratio = strata.median() / base.median();
    rows.push((
        format!("tiering: segment_to_parquet + write + fsync, {segments} × {segment_mib} MiB"),
        strata.show("MiB/s"),
        format!("parquet crate from in-memory records + write + fsync: {}", base.show("MiB/s")),
        format!("{ratio:.2}× (target ≥ 0.8); conversion alone {}", convert.show("MiB/s")),
    ));
    json.push(format!(
        "\"tiering\":{{\"strata_mib_s\":{},\"baseline_mib_s\":{},\"convert_only_mib_s\":{},\"ratio\":{ratio:.3}}}",
        strata.json(),
        base.json(),
        convert.json()
    ));

    // Check what was written, once (not timed).
    for (s, meta) in sealed.iter().zip(&metas) {
        let object = Bytes::from(std::fs::read(object_path(s.base_offset))?);
        tier::verify_parquet(&object, meta).map_err(|e| anyhow::anyhow!("object {}: {e}", s.base_offset))?;
    }

    // 2. Sequential read in ~1 MiB pages: objects from files vs the log.
    let records_total: u64 = metas.iter().map(|m| m.records).sum();
    let (mut cold_runs, mut hot_runs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let mut seen = 0u64;
        for s in &sealed {
            let object = Bytes::from(std::fs::read(object_path(s.base_offset))?);
            let mut offset = s.base_offset;
            while offset < s.end_offset {
                let page = tier::read_parquet(&object, offset, usize::MAX, PAGE_BYTES)?;
                let last = page.last().ok_or_else(|| anyhow::anyhow!("empty page at {offset}"))?;
                offset = last.offset + 1;
                seen += page.len() as u64;
            }
        }
        anyhow::ensure!(seen == records_total, "cold read saw {seen} of {records_total} records");
        cold_runs.push(seg_mib / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut seen = 0u64;
        for s in &sealed {
            let mut offset = s.base_offset;
            while offset < s.end_offset {
                let r = log.read(offset, PAGE_BYTES)?;
                seen += r.records_from(offset)?.iter().filter(|r| r.offset < s.end_offset).count() as u64;
                offset = r.next_offset;
            }
        }
        anyhow::ensure!(seen == records_total, "hot read saw {seen} of {records_total} records");
        hot_runs.push(seg_mib / start.elapsed().as_secs_f64());
    }
    // The codec's own ceiling: zstd (level 1, as the objects) decompressing the same segment
    // bytes in chunks of the objects' page size, with one reused context.
    let mut chunks = Vec::new();
    for s in &sealed {
        let bytes = std::fs::read(log.dir().join(format!("{:020}.log", s.base_offset)))?;
        for chunk in bytes.chunks(tier::DATA_PAGE_BYTES) {
            chunks.push((zstd::bulk::compress(chunk, 1)?, chunk.len()));
        }
    }
    let mut zstd_runs = Vec::new();
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let mut out = vec![0u8; tier::DATA_PAGE_BYTES];
    for _ in 0..runs {
        let start = Instant::now();
        for (compressed, len) in &chunks {
            anyhow::ensure!(decompressor.decompress_to_buffer(compressed, &mut out[..])? == *len);
        }
        zstd_runs.push(seg_mib / start.elapsed().as_secs_f64());
    }
    let zstd_floor = Stat::of(zstd_runs);
    let (cold, hot) = (Stat::of(cold_runs), Stat::of(hot_runs));
    let ratio = cold.median() / hot.median();
    rows.push((
        "sequential read, ~1 MiB pages: read_parquet, object bytes read from its file each run".into(),
        cold.show("MiB/s"),
        format!("Log::read + records_from, same segments: {}", hot.show("MiB/s")),
        format!(
            "{ratio:.2}× (target ≥ 0.5); zstd-1 decompression alone of the same bytes: {} ({:.2}× of it)",
            zstd_floor.show("MiB/s"),
            cold.median() / zstd_floor.median()
        ),
    ));
    json.push(format!(
        "\"sequential_read\":{{\"parquet_mib_s\":{},\"log_mib_s\":{},\"zstd_decompress_only_mib_s\":{},\"ratio\":{ratio:.3}}}",
        cold.json(),
        hot.json(),
        zstd_floor.json()
    ));

    // 3. What a consumer sees: the same records fetched over gRPC from the cold tier and from
    //    the hot tier of a running server.
    let strata = crate::harness::strata_binary(args.strata.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (cold_fetch, hot_fetch, fetched) =
        runtime.block_on(through_server(&strata, root.path(), total_mib, segment_mib, runs))?;
    let ratio = cold_fetch.median() / hot_fetch.median();
    rows.push((
        format!(
            "consumer fetch over gRPC of {fetched} records from the cold tier (server restarted: object cache empty)"
        ),
        cold_fetch.show("MB/s"),
        format!("the same records fetched from a hot (untiered) topic: {}", hot_fetch.show("MB/s")),
        format!("{ratio:.2}× hot fetch"),
    ));
    json.push(format!(
        "\"consumer_fetch\":{{\"cold_mb_s\":{},\"hot_mb_s\":{},\"ratio\":{ratio:.3}}}",
        cold_fetch.json(),
        hot_fetch.json()
    ));

    // 4. Size.
    let object_bytes: u64 = metas.iter().map(|m| m.size_bytes).sum();
    let size_ratio = object_bytes as f64 / segment_bytes as f64;
    rows.push((
        "size: Parquet (zstd) / segment (uncompressed batches)".into(),
        format!("{:.1} MiB", object_bytes as f64 / MIB),
        format!("segments {seg_mib:.1} MiB; baseline objects {:.1} MiB", baseline_bytes as f64 / MIB),
        format!("{size_ratio:.3} (target ≤ 0.6)"),
    ));
    json.push(format!(
        "\"size\":{{\"segment_bytes\":{segment_bytes},\"object_bytes\":{object_bytes},\"baseline_bytes\":{baseline_bytes},\"ratio\":{size_ratio:.4}}}"
    ));

    println!();
    println!("| measurement | Strata | baseline (same run) | ratio |");
    println!("| --- | --- | --- | --- |");
    for (a, b, c, d) in &rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    let doc = format!(
        "{{\"quick\":{},\"runs\":{runs},\"loadavg\":\"{}\",\"segments\":{segments},\"segment_mib\":{segment_mib},\"records\":{records_total},{}}}\n",
        args.run.quick,
        loadavg.trim(),
        json.join(",")
    );
    let out_path = args.run.write_results("tier", &doc)?;
    println!("\nresults written to {}", out_path.display());
    Ok(())
}

/// The server's tiering loop every 200 ms (not 5 s): the benchmarks wait for it.
const TIER_ENV: [(&str, &str); 1] = [("STRATA_TIER_INTERVAL_MS", "200")];

/// ~1 KiB JSON event values, `total_mib` MiB of them (a whole number of requests of 100).
fn json_values(total_mib: u64) -> Vec<Bytes> {
    let batches = (total_mib << 20) as usize / (100 * VALUE_BYTES);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..batches.max(1) * 100).map(|i| json_value(&mut rng, i as i64).into()).collect()
}

/// Produces `values` in order to partition 0 of `topic`, 100 per request, over one
/// `ProduceStream`.
async fn produce_values(url: &str, topic: &str, values: &[Bytes]) -> anyhow::Result<()> {
    use strata_client::proto;
    use tokio_stream::StreamExt;

    let mut producer = proto::producer_client::ProducerClient::connect(url.to_string()).await?;
    let requests: Vec<proto::ProduceRequest> = values
        .chunks(100)
        .enumerate()
        .map(|(i, chunk)| proto::ProduceRequest {
            batches: Vec::new(),
            topic: topic.into(),
            records: chunk
                .iter()
                .map(|v| proto::Record { value: Some(v.clone()), partition: Some(0), ..Default::default() })
                .collect(),
            acks: proto::Acks::Leader as i32,
            request_id: i as u64,
            ..Default::default()
        })
        .collect();
    let mut acks = producer.produce_stream(tokio_stream::iter(requests)).await?.into_inner();
    while let Some(ack) = acks.next().await {
        let ack = ack?;
        anyhow::ensure!(ack.error.is_none(), "produce failed: {:?}", ack.error);
    }
    Ok(())
}

/// Waits until every sealed segment of partition 0 of `topic` is in object storage and deleted
/// locally (only the active segment left); returns the end of the tiered range.
async fn wait_tiered(client: &strata_client::Client, data: &Path, topic: &str) -> anyhow::Result<u64> {
    let log_dir = data.join("logs").join(format!("{topic}-0"));
    let segments = || {
        std::fs::read_dir(&log_dir)
            .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "log")).count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let info = client.admin().describe_topic(topic).await?;
        let p = info.partitions.first().ok_or_else(|| anyhow::anyhow!("{topic} has no partition"))?;
        if p.tiered_end_offset > 0 && p.local_start_offset == p.tiered_end_offset && segments() == 1 {
            return Ok(p.tiered_end_offset);
        }
        anyhow::ensure!(Instant::now() < deadline, "tiering did not finish within 300 s: {p:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Produces the same JSON values to a tiered and an untiered topic, waits until the tiered one is
/// in object storage (and trimmed locally), then times fetching its history from each, the server
/// restarted before each run so the object cache starts empty. MB/s of values.
async fn through_server(
    strata: &Path,
    root: &Path,
    total_mib: u64,
    segment_mib: u64,
    runs: usize,
) -> anyhow::Result<(Stat, Stat, u64)> {
    let data = root.join("server");
    let env = TIER_ENV;
    let mut server = crate::harness::Server::start_with_env(strata, &data, &env)?;
    let client = strata_client::Client::connect(&server.url).await?;
    for (topic, tiered) in [("cold", true), ("hot", false)] {
        let mut config: std::collections::HashMap<String, String> = [
            ("segment_bytes".to_string(), (segment_mib << 20).to_string()),
            ("flush".to_string(), "never".to_string()),
        ]
        .into();
        if tiered {
            config.insert("tiering".into(), "true".into());
            config.insert("local_retention_bytes".into(), "0".into());
        }
        client.admin().create_topic(topic, 1, config).await?;
    }
    let values = json_values(total_mib);
    for topic in ["cold", "hot"] {
        produce_values(&server.url, topic, &values).await?;
    }
    let end = wait_tiered(&client, &data, "cold").await?;
    drop(client);
    let (mut cold, mut hot) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        server.stop()?;
        server = crate::harness::Server::start_with_env(strata, &data, &env)?;
        cold.push(fetch_range(&server.url, "cold", end).await?);
        hot.push(fetch_range(&server.url, "hot", end).await?);
    }
    server.stop()?;
    Ok((Stat::of(cold), Stat::of(hot), end))
}

/// Fetches offsets `0..end` of partition 0 (decoded records, 2,000 per fetch). MB/s of values.
async fn fetch_range(url: &str, topic: &str, end: u64) -> anyhow::Result<f64> {
    let client = strata_client::Client::connect(url).await?;
    let start = Instant::now();
    let (mut offset, mut bytes) = (0u64, 0usize);
    while offset < end {
        let page =
            client.fetch(topic, 0, strata_client::Start::Offset(offset), 2000, std::time::Duration::ZERO).await?;
        anyhow::ensure!(!page.records.is_empty(), "{topic}: no records at {offset}");
        bytes += page.records.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
        offset = page.next_offset;
    }
    Ok(bytes as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// W8 of `strata-bench all`: a 1-partition topic of ~1 KiB JSON records whose sealed segments
/// are in the local-filesystem object store and deleted from local disk. A consumer reads it all
/// from offset 0 through a freshly started server (object cache empty); beside it, the same
/// object files read whole and raw, as the store's `get` reads them.
#[derive(Debug)]
pub(crate) struct ColdTopic {
    strata: std::path::PathBuf,
    data: std::path::PathBuf,
    /// Offsets `0..end` are in object storage only.
    pub end: u64,
    /// The value bytes of those records, as produced.
    pub value_bytes: u64,
    /// The Parquet objects of the partition.
    pub objects: Vec<std::path::PathBuf>,
    pub object_bytes: u64,
}

/// One W8 catch-up read.
#[derive(Debug)]
pub(crate) struct ColdRun {
    pub seconds: f64,
    pub records: u64,
    pub value_bytes: u64,
    /// Per fetch, microseconds.
    pub latency: hdrhistogram::Histogram<u64>,
    /// Server CPU seconds during the read.
    pub cpu_seconds: f64,
    pub peak_rss_mib: Option<f64>,
}

const COLD_TOPIC: &str = "cold";

impl ColdTopic {
    /// Creates the topic (segments of an eighth of `total_mib`, at least 1 MiB; `flush=never`),
    /// produces `total_mib` MiB of JSON records and waits until all but the active segment is
    /// tiered and evicted; stops the server.
    pub(crate) async fn load(strata: &Path, data: &Path, total_mib: u64) -> anyhow::Result<ColdTopic> {
        let server = crate::harness::Server::start_with_env(strata, data, &TIER_ENV)?;
        let client = strata_client::Client::connect(&server.url).await?;
        let segment_bytes = ((total_mib << 20) / 8).max(1 << 20);
        let config = [
            ("segment_bytes", segment_bytes.to_string()),
            ("flush", "never".into()),
            ("tiering", "true".into()),
            ("local_retention_bytes", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        client.admin().create_topic(COLD_TOPIC, 1, config).await?;
        let values = json_values(total_mib);
        produce_values(&server.url, COLD_TOPIC, &values).await?;
        let end = wait_tiered(&client, data, COLD_TOPIC).await?;
        drop(client);
        server.stop()?;
        let value_bytes = values.iter().take(end as usize).map(|v| v.len() as u64).sum();
        // The objects as the default file object store lays them out (server/src/tier/store.rs).
        let dir = data.join("objects").join("topics").join(COLD_TOPIC).join("0");
        let mut objects: Vec<_> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        objects.sort();
        anyhow::ensure!(!objects.is_empty(), "no Parquet object in {}", dir.display());
        let object_bytes = objects.iter().map(|p| std::fs::metadata(p).map(|m| m.len())).sum::<Result<u64, _>>()?;
        Ok(ColdTopic {
            strata: strata.to_path_buf(),
            data: data.to_path_buf(),
            end,
            value_bytes,
            objects,
            object_bytes,
        })
    }

    /// Starts the server afresh and reads offsets `0..end` through the raw batch stream (the
    /// server reads the objects 2 MiB of records at a time); every offset must come exactly
    /// once, in order, with the value bytes produced. A latency sample per batch.
    pub(crate) async fn catch_up(&self) -> anyhow::Result<ColdRun> {
        let server = crate::harness::Server::start_with_env(&self.strata, &self.data, &TIER_ENV)?;
        let client = strata_client::Client::connect(&server.url).await?;
        let mut latency = hdrhistogram::Histogram::new(3)?;
        let cpu0 = server.cpu_seconds()?;
        let start = Instant::now();
        let (mut at, mut value_bytes) = (0u64, 0u64);
        let mut t = Instant::now();
        crate::peers::strata::read_partition(&client, COLD_TOPIC, 0, Some(self.end), None, |records| {
            latency.record((t.elapsed().as_micros() as u64).max(1))?;
            t = Instant::now();
            for r in records {
                anyhow::ensure!(r.offset == at, "offset {} arrived where {at} was next", r.offset);
                value_bytes += r.value.as_ref().map_or(0, |v| v.len()) as u64;
                at += 1;
            }
            Ok(())
        })
        .await?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu_seconds = server.cpu_seconds()? - cpu0;
        anyhow::ensure!(
            value_bytes == self.value_bytes,
            "read {value_bytes} value bytes, {} were produced",
            self.value_bytes
        );
        let peak_rss_mib = crate::peers::Proc { child: None, pid: server.pid() }.peak_rss_mib().ok();
        drop(client);
        server.stop()?;
        Ok(ColdRun { seconds, records: at, value_bytes, latency, cpu_seconds, peak_rss_mib })
    }

    /// Reads every object file whole (the local-filesystem store's `get`): seconds.
    pub(crate) fn raw_read_seconds(&self) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut bytes = 0u64;
        for path in &self.objects {
            bytes += std::fs::read(path)?.len() as u64;
        }
        anyhow::ensure!(bytes == self.object_bytes, "read {bytes} of {} object bytes", self.object_bytes);
        Ok(start.elapsed().as_secs_f64())
    }
}
