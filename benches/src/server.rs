//! Server benchmarks (issue #3): produce through each door, latency at half the peak, catch-up
//! fetch, idle memory — each beside a baseline measured in the same run.
//!
//! The server is the release `strata` binary started as its own process on 127.0.0.1 port 0 with
//! a fresh data directory; the load generator runs in this process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use strata_client::proto;

use crate::harness::{Server, median, show};
use strata_storage::{BatchBuilder, Compression, Durability, Log, LogConfig};
use tokio_stream::StreamExt;

const RECORD_BYTES: usize = 1024;
const BATCH: usize = 100;
const MB: f64 = 1e6;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Concurrent clients per door.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Size of the catch-up fetch measurement, MiB (default 1024, 32 with --quick).
    #[arg(long)]
    catchup_mib: Option<usize>,
    /// Run only the catch-up fetch measurement (results go to `<date>-server-catchup.json`).
    #[arg(long)]
    only_catchup: bool,
    /// Run only the latency measurement, at `--latency-rate` (no results file is written).
    #[arg(long, requires = "latency_rate", conflicts_with = "only_catchup")]
    only_latency: bool,
    /// The `strata` binary (default: next to this one).
    #[arg(long)]
    strata: Option<PathBuf>,
    /// Requests a second for the latency measurement, in place of half of this run's gRPC
    /// stream peak: for comparing two builds at the same load.
    #[arg(long)]
    latency_rate: Option<f64>,
}

fn records(seq: u64) -> Vec<proto::Record> {
    (0..BATCH)
        .map(|i| proto::Record {
            key: Some(format!("k{}", (seq as usize * BATCH + i) % 1000).into_bytes().into()),
            value: Some(bytes::Bytes::from_static(&[b'x'; RECORD_BYTES])),
            partition: Some(0),
            ..Default::default()
        })
        .collect()
}

/// The records of [`records`], encoded by the client into one batch (as `strata-client`'s
/// producer sends them).
fn client_batch(seq: u64) -> anyhow::Result<proto::RecordBatch> {
    let mut builder = strata_storage::BatchBuilder::new(strata_storage::Compression::None);
    let now = strata_storage::Clock::now_ms(&strata_storage::SystemClock);
    for i in 0..BATCH {
        let key = format!("k{}", (seq as usize * BATCH + i) % 1000);
        builder.push(now, Some(key.as_bytes()), Some(&[b'x'; RECORD_BYTES]), &[]);
    }
    Ok(proto::RecordBatch { partition: 0, data: builder.build()?.into() })
}

fn json_body() -> Vec<u8> {
    let value = "x".repeat(RECORD_BYTES - 2);
    let recs: Vec<serde_json::Value> =
        (0..BATCH).map(|i| serde_json::json!({"key": format!("k{i}"), "value": value, "partition": 0})).collect();
    serde_json::to_vec(&serde_json::json!({"records": recs, "acks": "leader"})).unwrap_or_default()
}

/// POSTs `body` to `target` until `deadline` over one keep-alive connection (a blocking client
/// on its own thread), counting `records` per request; the request latencies.
async fn http_door(
    target: String,
    content_type: &'static str,
    body: Vec<u8>,
    records: u64,
    deadline: Instant,
    count: Arc<AtomicU64>,
) -> anyhow::Result<Histogram<u64>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Histogram<u64>> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(true).build().into();
        let mut h = Histogram::<u64>::new(3)?;
        while Instant::now() < deadline {
            let t = Instant::now();
            agent.post(&target).header("content-type", content_type).send(&body[..])?.body_mut().read_to_vec()?;
            h.record(t.elapsed().as_micros() as u64)?;
            count.fetch_add(records, Ordering::Relaxed);
        }
        Ok(h)
    })
    .await?
}

/// Outcome of a throughput run.
pub(crate) struct Run {
    pub(crate) records_per_s: f64,
    pub(crate) mb_per_s: f64,
    pub(crate) latency: Histogram<u64>,
    pub(crate) cpu_s_per_gb: f64,
}

pub(crate) async fn create_topic(url: &str, name: &str, partitions: u32, flush: &str) -> anyhow::Result<()> {
    let client = strata_client::Client::connect(url).await?;
    let config = [("flush".to_string(), flush.to_string())].into_iter().collect();
    client.admin().create_topic(name, partitions, config).await?;
    Ok(())
}

/// Produces for `seconds` through `door` (`grpc-stream`, `grpc-unary`, `http-json`,
/// `http-webhook`, or `grpc-batches`: the stream with batches the client encoded) with `clients`
/// concurrent clients.
pub(crate) async fn produce_run(
    server: &Server,
    topic: &str,
    door: &str,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Run> {
    let url = server.url.clone();
    let count = Arc::new(AtomicU64::new(0));
    let cpu_before = server.cpu_seconds()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (url, count, topic, door) = (url.clone(), Arc::clone(&count), topic.to_string(), door.to_string());
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            match door.as_str() {
                "grpc-stream" | "grpc-batches" => {
                    let batched = door == "grpc-batches";
                    let mut client = proto::producer_client::ProducerClient::connect(url).await?;
                    let (tx, rx) = tokio::sync::mpsc::channel::<proto::ProduceRequest>(16);
                    let sent_at = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
                    let feeder = {
                        let (topic, sent_at) = (topic.clone(), Arc::clone(&sent_at));
                        tokio::spawn(async move {
                            let mut seq = c as u64 * 1_000_000;
                            while Instant::now() < deadline {
                                let (records, batches) = match batched {
                                    true => (Vec::new(), vec![client_batch(seq)?]),
                                    false => (records(seq), Vec::new()),
                                };
                                let req = proto::ProduceRequest {
                                    batches,
                                    topic: topic.clone(),
                                    records,
                                    acks: proto::Acks::Leader as i32,
                                    request_id: seq,
                                    producer: None,
                                    expected_offset: None,
                                };
                                sent_at.lock().map_err(|_| anyhow::anyhow!("lock"))?.push_back(Instant::now());
                                if tx.send(req).await.is_err() {
                                    break;
                                }
                                seq += 1;
                            }
                            Ok::<_, anyhow::Error>(())
                        })
                    };
                    let mut acks =
                        client.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
                    while let Some(ack) = acks.next().await {
                        let ack = ack?;
                        anyhow::ensure!(ack.error.is_none(), "produce failed: {:?}", ack.error);
                        let sent = sent_at.lock().map_err(|_| anyhow::anyhow!("lock"))?.pop_front();
                        if let Some(sent) = sent {
                            h.record(sent.elapsed().as_micros() as u64)?;
                        }
                        count.fetch_add(BATCH as u64, Ordering::Relaxed);
                    }
                    feeder.await??;
                }
                "grpc-unary" => {
                    let mut client = proto::producer_client::ProducerClient::connect(url).await?;
                    let mut seq = c as u64 * 1_000_000;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let req = proto::ProduceRequest {
                            batches: Vec::new(),
                            topic: topic.clone(),
                            records: records(seq),
                            acks: proto::Acks::Leader as i32,
                            request_id: seq,
                            producer: None,
                            expected_offset: None,
                        };
                        client.produce(req).await?;
                        h.record(t.elapsed().as_micros() as u64)?;
                        count.fetch_add(BATCH as u64, Ordering::Relaxed);
                        seq += 1;
                    }
                }
                "http-webhook" => {
                    // The webhook door: one raw record per request.
                    let target = format!("{url}/v1/topics/{topic}/records?partition=0");
                    let body = vec![b'x'; RECORD_BYTES];
                    h = http_door(target, "application/octet-stream", body, 1, deadline, count).await?;
                }
                _ => {
                    let target = format!("{url}/v1/topics/{topic}/records");
                    h = http_door(target, "application/json", json_body(), BATCH as u64, deadline, count).await?;
                }
            }
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut latency = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        latency.add(h??)?;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed) as f64;
    let bytes = n * RECORD_BYTES as f64;
    let cpu = server.cpu_seconds()? - cpu_before;
    Ok(Run {
        records_per_s: n / secs,
        mb_per_s: bytes / MB / secs,
        latency,
        cpu_s_per_gb: cpu / (bytes / 1e9).max(1e-9),
    })
}

/// The same batches appended directly to a storage log in this process by `clients` threads
/// (the storage benchmark's appender). Records/s.
fn direct_append(root: &Path, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..BATCH {
        b.push(0, Some(format!("k{i}").as_bytes()), Some(&[b'x'; RECORD_BYTES]), &[]);
    }
    let (_, _, batches_per_s) = crate::storage::append_throughput(root, &b.build()?, clients, seconds)?;
    Ok(batches_per_s * BATCH as f64)
}

/// Connections [`latency_at`] spreads its requests over.
const LATENCY_CONNECTIONS: usize = 8;

/// Load offered before latencies count in [`latency_at`].
const WARMUP: Duration = Duration::from_secs(1);

/// The schedule both latency measurements share: `per_client` requests for each of
/// [`LATENCY_CONNECTIONS`] connections, spaced so that together they offer `rate` a second,
/// starting shortly from now; latencies count from `measured_from`, after [`WARMUP`].
#[derive(Clone, Copy)]
struct OpenLoop {
    interval: Duration,
    per_client: u64,
    start: tokio::time::Instant,
    measured_from: tokio::time::Instant,
}

impl OpenLoop {
    fn new(rate: f64, seconds: f64) -> Self {
        let clients = LATENCY_CONNECTIONS;
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        Self {
            interval: Duration::from_secs_f64(clients as f64 / rate.max(1.0)),
            per_client: ((rate * (WARMUP.as_secs_f64() + seconds)) as u64 / clients as u64).max(10),
            start,
            measured_from: start + WARMUP,
        }
    }

    /// When connection `c`'s request `i` is due.
    fn schedule(self, c: usize) -> impl Fn(u64) -> tokio::time::Instant + Copy + Send + 'static {
        let offset = self.interval.mul_f64(c as f64 / LATENCY_CONNECTIONS as f64);
        move |i: u64| self.start + offset + self.interval * i as u32
    }
}

/// Open-loop unary produces at `rate` requests/s over [`LATENCY_CONNECTIONS`] connections:
/// each request is sent at its scheduled time (released by a [`crate::pacer::Pacer`]) whether or
/// not earlier ones were answered, and its latency counts from that time; recorded for `seconds`
/// after a warm-up of [`WARMUP`] at the same rate (the server's start-up transients: first
/// segment writes, first page faults, connections).
///
/// Requests are not sent one after another per connection: with a connection waiting for each
/// answer, the load was only open up to 8 requests in flight, and a stall of the disk of a few
/// milliseconds left every connection behind its schedule for the rest of the run (each request
/// then had to be served within 8 / rate, 2.8 ms at 2,900 requests/s, to catch up), which showed
/// as p50s of hundreds of milliseconds in some runs and not in others.
async fn latency_at(url: &str, topic: &str, rate: f64, seconds: f64) -> anyhow::Result<Histogram<u64>> {
    let plan = OpenLoop::new(rate, seconds);
    let (per_client, measured_from) = (plan.per_client, plan.measured_from);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..LATENCY_CONNECTIONS {
        let (url, topic) = (url.to_string(), topic.to_string());
        tasks.spawn(async move {
            let client = proto::producer_client::ProducerClient::connect(url).await?;
            let schedule = plan.schedule(c);
            let mut pacer = crate::pacer::Pacer::start(move |i| schedule(i).into_std())?;
            let mut in_flight = tokio::task::JoinSet::new();
            let mut h = Histogram::<u64>::new(3)?;
            for i in 0..per_client {
                let due = schedule(i);
                pacer.until(i).await;
                while let Some(done) = in_flight.try_join_next() {
                    record(&mut h, done??)?;
                }
                let req = proto::ProduceRequest {
                    batches: Vec::new(),
                    topic: topic.clone(),
                    records: records(i),
                    acks: proto::Acks::Leader as i32,
                    request_id: 0,
                    producer: None,
                    expected_offset: None,
                };
                let mut client = client.clone();
                in_flight.spawn(async move {
                    client.produce(req).await?;
                    Ok::<_, anyhow::Error>((due >= measured_from).then(|| due.elapsed()))
                });
            }
            while let Some(done) = in_flight.join_next().await {
                record(&mut h, done??)?;
            }
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut all = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        all.add(h??)?;
    }
    Ok(all)
}

/// [`latency_at`] through the door the peak is measured on: open-loop requests at `rate` a
/// second over [`LATENCY_CONNECTIONS`] `ProduceStream`s, each sent at its scheduled time
/// whatever the acknowledgements (a sender that finds 256 requests waiting to go out waits, and
/// those requests' latencies still count from their scheduled times), each latency from that
/// time to its acknowledgement, which carries its `request_id`.
async fn latency_stream_at(url: &str, topic: &str, rate: f64, seconds: f64) -> anyhow::Result<Histogram<u64>> {
    let plan = OpenLoop::new(rate, seconds);
    let (per_client, measured_from) = (plan.per_client, plan.measured_from);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..LATENCY_CONNECTIONS {
        let (url, topic) = (url.to_string(), topic.to_string());
        tasks.spawn(async move {
            let mut client = proto::producer_client::ProducerClient::connect(url).await?;
            let schedule = plan.schedule(c);
            let (tx, rx) = tokio::sync::mpsc::channel::<proto::ProduceRequest>(256);
            let sender = tokio::spawn(async move {
                let mut pacer = crate::pacer::Pacer::start(move |i| schedule(i).into_std())?;
                for i in 0..per_client {
                    pacer.until(i).await;
                    let req = proto::ProduceRequest {
                        topic: topic.clone(),
                        records: records(i),
                        acks: proto::Acks::Leader as i32,
                        request_id: i,
                        ..Default::default()
                    };
                    if tx.send(req).await.is_err() {
                        break; // the stream ended: its error comes with the acknowledgements
                    }
                }
                Ok::<_, anyhow::Error>(())
            });
            let mut acks = client.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            let mut h = Histogram::<u64>::new(3)?;
            let mut acked = 0;
            while let Some(ack) = acks.next().await {
                let ack = ack?;
                anyhow::ensure!(ack.error.is_none(), "produce failed: {:?}", ack.error);
                let due = schedule(ack.request_id);
                record(&mut h, (due >= measured_from).then(|| due.elapsed()))?;
                acked += 1;
            }
            sender.await??;
            anyhow::ensure!(acked == per_client, "{acked} of {per_client} requests acknowledged");
            Ok::<_, anyhow::Error>(h)
        });
    }
    let mut all = Histogram::<u64>::new(3)?;
    while let Some(h) = tasks.join_next().await {
        all.add(h??)?;
    }
    Ok(all)
}

/// Adds a request's latency to `h` (`None`: sent during the warm-up).
fn record(h: &mut Histogram<u64>, latency: Option<Duration>) -> anyhow::Result<()> {
    if let Some(latency) = latency {
        h.record(latency.as_micros() as u64)?;
    }
    Ok(())
}

/// Reads a partition from offset 0 to its end through the raw batch stream, decoding the records
/// in the client. MB/s of values.
///
/// The reader runs as a task of the runtime, as a consumer in an application does, not on the
/// thread blocked in `block_on`: readiness of a socket is seen by a worker, which runs a task
/// woken by it at once but has to wake that thread across cores (on this machine the catch-up
/// moved 1.9–2.2 GB/s on that thread against 2.0–2.5 as a task, alternated).
async fn fetch_all(url: &str, topic: &str) -> anyhow::Result<f64> {
    let (url, topic) = (url.to_string(), topic.to_string());
    tokio::spawn(async move {
        let client = strata_client::Client::connect(&url).await?;
        let start = Instant::now();
        let mut bytes = 0usize;
        crate::peers::strata::read_partition(&client, &topic, 0, None, None, |records| {
            bytes += records.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
            Ok(())
        })
        .await?;
        Ok(bytes as f64 / MB / start.elapsed().as_secs_f64())
    })
    .await?
}

/// Reads the same partition log directly (decoding records). MB/s of values.
fn storage_read(dir: &Path) -> anyhow::Result<f64> {
    let log = Log::open(dir, LogConfig { durability: Durability::Never, ..LogConfig::default() })?;
    crate::storage::sequential_read_records(&log)
}

/// Drops the files of `dir` from the page cache (after syncing them, since dirty pages stay).
pub(crate) fn evict_page_cache(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let file = std::fs::File::open(&path)?;
            file.sync_all()?;
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(())
}

fn print_rows(rows: &[[String; 4]]) {
    println!();
    println!("| measurement | Strata | same-run comparison | ratio |");
    println!("| --- | --- | --- | --- |");
    for [a, b, c, d] in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let strata = crate::harness::strata_binary(args.strata.as_deref())?;
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let seconds = if args.run.quick { 1.0 } else { 5.0 };
    let catchup_mb: usize = args.catchup_mib.unwrap_or(if args.run.quick { 32 } else { 1024 });
    let loadavg = crate::harness::loadavg();
    println!(
        "# server benchmarks — {runs} run(s) of {seconds} s, {} clients, 1 KiB records, {BATCH} per request, load average at start: {}",
        args.clients,
        loadavg.trim()
    );
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut json: Vec<String> = Vec::new();

    // 1. Produce through each door vs direct storage appends, acks=leader, flush=always.
    let doors = !args.only_catchup && !args.only_latency;
    let mut direct = Vec::new();
    for _ in 0..if doors { runs } else { 0 } {
        direct.push(direct_append(root.path(), args.clients, seconds)?);
    }
    let direct_median = if doors { median(direct.clone()) } else { 1.0 };
    let mut stream_peak = 0.0f64;
    if doors {
        rows.push([
            "direct in-process append (baseline), `always`".into(),
            show(&direct, "records/s"),
            "—".into(),
            "1.00".into(),
        ]);
        for door in ["grpc-stream", "grpc-batches", "grpc-unary", "http-json"] {
            let (mut rps, mut mbps, mut p50, mut p99, mut p999, mut cpu) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for r in 0..runs {
                let data = root.path().join(format!("{door}-{r}"));
                let server = Server::start(&strata, &data)?;
                create_topic(&server.url, "bench", 1, "always").await?;
                let run = produce_run(&server, "bench", door, args.clients, seconds).await?;
                server.stop()?;
                std::fs::remove_dir_all(&data)?;
                rps.push(run.records_per_s);
                mbps.push(run.mb_per_s);
                p50.push(run.latency.value_at_quantile(0.5) as f64 / 1000.0);
                p99.push(run.latency.value_at_quantile(0.99) as f64 / 1000.0);
                p999.push(run.latency.value_at_quantile(0.999) as f64 / 1000.0);
                cpu.push(run.cpu_s_per_gb);
            }
            if door == "grpc-stream" {
                stream_peak = median(rps.clone());
            }
            rows.push([
                format!("produce via {door}, `always`"),
                format!("{} = {:.0} MB/s", show(&rps, "records/s"), median(mbps.clone())),
                format!(
                    "latency p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms; server CPU {:.1} s/GB",
                    median(p50),
                    median(p99),
                    median(p999),
                    median(cpu)
                ),
                format!("{:.2}× direct append", median(rps.clone()) / direct_median),
            ]);
            json.push(format!(
                "\"{door}\":{{\"records_per_s\":{:?},\"direct_records_per_s\":{direct_median:.0}}}",
                rps
            ));
        }
    }
    if !args.only_catchup {
        // 2. Latency at half the gRPC stream peak, flush=always, open loop: unary requests, and
        // the same requests on streams.
        let rate = args.latency_rate.unwrap_or(stream_peak / BATCH as f64 / 2.0);
        let at = if args.latency_rate.is_some() { "(--latency-rate)" } else { "(½ stream peak)" };
        let (mut p50s, mut p99s, mut stream_p50s, mut stream_p99s) = (vec![], vec![], vec![], vec![]);
        for r in 0..runs {
            // Unary requests, then the same load as stream requests, each on a fresh server.
            for stream in [false, true] {
                crate::harness::settle_disk();
                let data = root.path().join(format!("latency-{r}-{stream}"));
                let server = Server::start(&strata, &data)?;
                create_topic(&server.url, "lat", 1, "always").await?;
                let h = match stream {
                    false => latency_at(&server.url, "lat", rate, seconds).await?,
                    true => latency_stream_at(&server.url, "lat", rate, seconds).await?,
                };
                server.stop()?;
                std::fs::remove_dir_all(&data)?;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                println!(
                    "latency run {}{}: p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
                    r + 1,
                    if stream { " (stream)" } else { "" },
                    ms(0.5),
                    ms(0.99),
                    ms(0.999),
                    h.max() as f64 / 1000.0
                );
                let (p50, p99) = if stream { (&mut stream_p50s, &mut stream_p99s) } else { (&mut p50s, &mut p99s) };
                p50.push(ms(0.5));
                p99.push(ms(0.99));
            }
        }
        // The disk's own tail at the same byte rate: a plain writer, write + fdatasync per request.
        let mut plain_p99s = vec![];
        for _ in 0..runs {
            crate::harness::settle_disk();
            let h = crate::storage::plain_open_loop(root.path(), BATCH * RECORD_BYTES, rate, seconds)?;
            plain_p99s.push(h.value_at_quantile(0.99) as f64 / 1000.0);
        }
        rows.push([
            format!("produce latency at {rate:.0} requests/s {at}, `always`, open loop, unary requests"),
            format!("p50 {:.2} ms, p99 {:.2} ms (target p99 ≤ 5 ms)", median(p50s.clone()), median(p99s.clone())),
            format!(
                "plain writer, same rate and size, write + fdatasync each: p99 {:.2} ms",
                median(plain_p99s.clone())
            ),
            format!("{:.2}× the plain writer's p99", median(p99s.clone()) / median(plain_p99s.clone())),
        ]);
        rows.push([
            "the same load as gRPC stream requests (the door the peak is measured on), open loop".to_string(),
            format!("p50 {:.2} ms, p99 {:.2} ms", median(stream_p50s.clone()), median(stream_p99s.clone())),
            format!("unary requests above: p99 {:.2} ms", median(p99s.clone())),
            format!("{:.2}× the plain writer's p99", median(stream_p99s.clone()) / median(plain_p99s.clone())),
        ]);
        json.push(format!(
            "\"latency_half_peak\":{{\"rate_requests_s\":{rate:.0},\"p50_ms\":{p50s:?},\"p99_ms\":{p99s:?},\"stream_p50_ms\":{stream_p50s:?},\"stream_p99_ms\":{stream_p99s:?},\"plain_p99_ms\":{plain_p99s:?}}}"
        ));
    }
    if args.only_latency {
        print_rows(&rows);
        return Ok(());
    }

    // 3. Catch-up fetch of a large partition vs the storage engine reading the same log.
    let data = root.path().join("catchup");
    let server = Server::start(&strata, &data)?;
    create_topic(&server.url, "catchup", 1, "never").await?;
    let client = strata_client::Client::connect(&server.url).await?;
    let mut producer = proto::producer_client::ProducerClient::connect(server.url.clone()).await?;
    let batches = catchup_mb * 1024 * 1024 / (BATCH * RECORD_BYTES);
    let reqs: Vec<_> = (0..batches as u64)
        .map(|i| proto::ProduceRequest {
            batches: Vec::new(),
            topic: "catchup".into(),
            records: records(i),
            acks: proto::Acks::Leader as i32,
            request_id: i,
            producer: None,
            expected_offset: None,
        })
        .collect();
    let mut acks = producer.produce_stream(tokio_stream::iter(reqs)).await?.into_inner();
    while let Some(a) = acks.next().await {
        a?;
    }
    drop((client, producer));
    server.stop()?;
    let log_dir = data.join("logs").join("catchup-0");
    // Warm: the log is in the page cache (just written). Cold: its pages are dropped before each
    // read (posix_fadvise DONTNEED after a sync), so both sides read from the disk (see below). The fetch, the
    // in-process read and loopback TCP alternate run by run, so a change in the shared machine's
    // speed during the measurement moves all three alike. The server is stopped while the storage
    // engine opens the log itself.
    // The server also listens on a Unix socket, where the same reader gets the segment files'
    // descriptors and reads them itself (a client on the server's host).
    let socket = root.path().join("strata.sock");
    let socket_env = [("STRATA_UNIX_SOCKET", socket.to_str().context("the socket path is not UTF-8")?)];
    let unix_url = format!("unix:{}", socket.display());
    let (mut fetch, mut fetch_cold, mut direct_read, mut direct_cold, mut loopback) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut local, mut local_cold) = (vec![], vec![]);
    for cold in [false, true] {
        if cold {
            // This VM's disk is backed by the host's page cache: whichever side reads a block first
            // waits for the host's disk, and the other then reads it from the host's memory (here
            // 0.54 against 1.9 GB/s for the same fetch). So the log is read once before the cold
            // runs, and "cold" means this machine's cache is cold, for both sides alike.
            storage_read(&log_dir)?;
        }
        for _ in 0..runs {
            let server = Server::start_with_env(&strata, &data, &socket_env)?;
            if cold {
                evict_page_cache(&log_dir)?;
            }
            let rate = fetch_all(&server.url, "catchup").await?;
            if cold {
                evict_page_cache(&log_dir)?;
            }
            let local_rate = fetch_all(&unix_url, "catchup").await?;
            server.stop()?;
            if cold {
                local_cold.push(local_rate);
            } else {
                local.push(local_rate);
            }
            if cold {
                fetch_cold.push(rate);
                evict_page_cache(&log_dir)?;
                direct_cold.push(storage_read(&log_dir)?);
            } else {
                fetch.push(rate);
                direct_read.push(storage_read(&log_dir)?);
                loopback.push(crate::all::limits::loopback_tcp_mb_s((catchup_mb as u64) << 20).await?);
            }
        }
    }
    for (cache, fetch, direct) in [("warm", &fetch, &direct_read), ("cold", &fetch_cold, &direct_cold)] {
        rows.push([
            format!("catch-up read of {catchup_mb} MiB (raw batch stream, HTTP/1.1), page cache {cache}"),
            show(fetch, "MB/s"),
            format!("storage reading + decoding the same log, cache {cache}: {}", show(direct, "MB/s")),
            format!("{:.2}× storage", median(fetch.clone()) / median(direct.clone())),
        ]);
    }
    for (cache, local, direct) in [("warm", &local, &direct_read), ("cold", &local_cold, &direct_cold)] {
        rows.push([
            format!(
                "catch-up read of {catchup_mb} MiB on this host (Unix socket: the server passes the segment files' \
                 descriptors, the client reads them), page cache {cache}"
            ),
            show(local, "MB/s"),
            format!("storage reading + decoding the same log, cache {cache}: {}", show(direct, "MB/s")),
            format!("{:.2}× storage", median(local.clone()) / median(direct.clone())),
        ]);
    }
    rows.push([
        format!("loopback TCP alone, one stream, {catchup_mb} MiB in 1 MiB writes (the network's ceiling)"),
        show(&loopback, "MB/s"),
        format!("storage reading + decoding, cache warm: {}", show(&direct_read, "MB/s")),
        format!(
            "{:.2}× storage; the warm catch-up is {:.2}× of it",
            median(loopback.clone()) / median(direct_read.clone()),
            median(fetch.clone()) / median(loopback.clone())
        ),
    ]);
    json.push(format!(
        "\"catchup_fetch\":{{\"mb_s\":{fetch:?},\"storage_mb_s\":{direct_read:?},\"cold_mb_s\":{fetch_cold:?},\"cold_storage_mb_s\":{direct_cold:?},\"loopback_tcp_mb_s\":{loopback:?},\"unix_descriptors_mb_s\":{local:?},\"unix_descriptors_cold_mb_s\":{local_cold:?}}}"
    ));

    // 4. Idle RSS with 1,000 partitions.
    let data = root.path().join("idle");
    let server = Server::start(&strata, &data)?;
    let before = server.rss_mib()?;
    create_topic(&server.url, "wide", 1000, "always").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss_mib()?;
    server.stop()?;
    rows.push([
        "server RSS at idle, 1,000 partitions".into(),
        format!("{idle:.0} MiB"),
        format!("empty server: {before:.0} MiB"),
        "target ≤ 300 MiB".into(),
    ]);
    json.push(format!("\"idle_rss\":{{\"mib\":{idle:.1},\"empty_mib\":{before:.1}}}"));

    print_rows(&rows);
    let doc = format!(
        "{{\"quick\":{},\"runs\":{runs},\"clients\":{},\"loadavg\":\"{}\",{}}}\n",
        args.run.quick,
        args.clients,
        loadavg,
        json.join(",")
    );
    // A catch-up-only run must not replace a whole run's results of the same day.
    let name = if args.only_catchup { "server-catchup" } else { "server" };
    let out_path = args.run.write_results(name, &doc)?;
    println!("\nresults written to {}", out_path.display());
    Ok(())
}
