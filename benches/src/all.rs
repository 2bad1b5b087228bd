//! `strata-bench all` (issue #8): Strata side by side with Redis Streams, NATS JetStream, Tansu and
//! RabbitMQ Streams, and with the machine's own limits, all measured in one run by one load-generator design
//! ([`crate::peers`]).
//!
//! ```text
//!   limits (plain fsync writer, fdatasync latency, loopback TCP, in-process append)
//!   for workload in W1 W2 W4 W5 W6:  for mode:  for system:
//!       runs × { fresh server → produce → consume (W4: one group of 4 members) → stop }
//!   W3: open loop at 10/50/80 % of each system's own W2 durable peak
//!   W7: Strata's doors (gRPC stream of records or of client-built batches, gRPC unary, HTTP JSON,
//!   HTTP webhook)
//!   W8: cold-tier catch-up (crate::tier::ColdTopic), Strata only, beside a raw read of the
//!       same object files
//!   W9: SQL over a tiered topic (crate::sql): full scan vs DataFusion on the same Parquet,
//!       a 1 % time range, produce during full scans
//!   → benches/results/<date>-all.json (schema: benches/schema/results.schema.json),
//!     markdown on stdout and in benches/RESULTS.md, benches/results/latency-throughput.svg
//! ```

pub(crate) mod limits;
pub(crate) mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::peers::group::{Delivery, GroupProgress};
use crate::peers::{
    Instance, Mode, Outcome, Peer, PeerBinaries, Reading, Workload, nats, rabbitmq, redis, strata::Strata, tansu,
};
use report::{Limit, Measure, Ratio, Report, Row};

const MB: f64 = 1e6;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Systems to run (strata, redis, nats, tansu); a peer that is not installed is skipped and
    /// reported.
    #[arg(long, value_delimiter = ',', default_value = ALL_SYSTEMS)]
    systems: Vec<String>,
    /// Workloads to run (w1 ... w9; limits always run).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4,w5,w6,w7,w8,w9")]
    workloads: Vec<String>,
    /// Upper bound on each produce phase, seconds (default 5; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Records per W1/W2/W4 run (default 1,000,000; 20,000 with --quick).
    #[arg(long)]
    records: Option<u64>,
    /// Data stored before the W5 catch-up read, MiB (default 512; 16 with --quick).
    #[arg(long)]
    catchup_mib: Option<u64>,
    /// Data tiered to object storage before the W8 cold catch-up, MiB (default 256; 8 with --quick).
    #[arg(long)]
    cold_mib: Option<u64>,
    /// W3 offers 10/50/80 % of this rate (msgs/s) to every system, in place of each one's own W2
    /// durable peak: for comparing two builds at the same load.
    #[arg(long)]
    w3_peak: Option<f64>,
    /// The percentages of the peak W3 offers (with `--w3-peak`, e.g. `--w3-percents 10` to compare
    /// two builds at one load in a third of the time).
    #[arg(long, value_delimiter = ',', default_value = "10,50,80", requires = "w3_peak")]
    w3_percents: Vec<u32>,
    /// Records in the W9 SQL dataset (default 10,000,000; 200,000 with --quick).
    #[arg(long)]
    sql_records: Option<u64>,
    /// The `strata` binary (default: next to this one).
    #[arg(long)]
    strata: Option<PathBuf>,
    /// `redis-server` (default: on PATH or /usr/bin).
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// `nats-server` (default: ~/.cache/strata-bench-venv/bin, then PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// `tansu` (default: ~/.cache/strata-bench-tansu/bin, then PATH; `scripts/setup-bench-tools
    /// --tansu` builds it, about 20 minutes).
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// RabbitMQ's `rabbitmq-server` start script (default: Debian's,
    /// /usr/lib/rabbitmq/bin/rabbitmq-server).
    #[arg(long)]
    rabbitmq_server: Option<PathBuf>,
    /// Markdown report to (re)write (default: benches/RESULTS.md, written only by a whole run:
    /// every system and workload, no --quick, no --w3-peak).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Every system the harness drives: the default of `--systems`, and what a whole run runs.
const ALL_SYSTEMS: &str = "strata,redis,nats,tansu,rabbitmq";

impl Args {
    /// Every system and every workload, W3 at each system's own W2 peak: a run fit to publish.
    fn is_whole_run(&self) -> bool {
        let set = |v: &[String]| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_ascii_lowercase()).collect();
            v.sort();
            v.dedup();
            v
        };
        let all_workloads: Vec<String> = (1..=9).map(|i| format!("w{i}")).collect();
        let all_systems: Vec<String> = ALL_SYSTEMS.split(',').map(str::to_string).collect();
        set(&self.systems) == set(&all_systems) && set(&self.workloads) == all_workloads && self.w3_peak.is_none()
    }
}

/// `strata-bench check-results FILE`: the file validates against the results schema and keeps
/// the rules the schema cannot say ([`report::check_rules`]).
pub fn check_results(path: &Path) -> anyhow::Result<()> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let schema: serde_json::Value = serde_json::from_str(report::RESULTS_SCHEMA)?;
    report::validate(&doc, &schema).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    report::check_rules(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("{}: valid", path.display());
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

fn find_peers(args: &Args) -> anyhow::Result<PeerBinaries> {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let venv = std::env::var_os("STRATA_BENCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/strata-bench-venv"));
    Ok(PeerBinaries {
        strata: Some(crate::harness::strata_binary(args.strata.as_deref())?),
        redis: crate::peers::find_binary(
            args.redis_server.as_deref(),
            &[PathBuf::from("/usr/bin/redis-server")],
            "redis-server",
        ),
        nats: crate::peers::find_binary(args.nats_server.as_deref(), &[venv.join("bin/nats-server")], "nats-server"),
        tansu: crate::peers::find_binary(
            args.tansu.as_deref(),
            &[home.join(".cache/strata-bench-tansu/bin/tansu")],
            "tansu",
        ),
        rabbitmq: crate::peers::find_binary(
            args.rabbitmq_server.as_deref(),
            &[rabbitmq::default_binary()],
            "rabbitmq-server",
        ),
    })
}

async fn start(peer: Peer, bins: &PeerBinaries, dir: &Path, mode: Mode) -> anyhow::Result<Instance> {
    let missing = || anyhow::anyhow!("{} is not installed", peer.name());
    Ok(match peer {
        Peer::Strata => Instance::Strata(Strata::start(bins.strata.as_deref().ok_or_else(missing)?, dir)?),
        Peer::Redis => {
            Instance::Redis(redis::Redis::start(bins.redis.as_deref().ok_or_else(missing)?, dir, mode).await?)
        }
        Peer::Nats => Instance::Nats(nats::Nats::start(bins.nats.as_deref().ok_or_else(missing)?, dir, mode).await?),
        Peer::Tansu => Instance::Tansu(tansu::Tansu::start(bins.tansu.as_deref().ok_or_else(missing)?, dir).await?),
        Peer::RabbitMq => {
            Instance::RabbitMq(rabbitmq::RabbitMq::start(bins.rabbitmq.as_deref().ok_or_else(missing)?, dir).await?)
        }
    })
}

fn measure(o: &Outcome, secs: f64, cpu: Option<f64>, rss: Option<f64>) -> Measure {
    let q = |p: f64| (!o.latency.is_empty()).then(|| o.latency.value_at_quantile(p) as f64 / 1000.0);
    Measure {
        msgs_s: o.records as f64 / secs.max(1e-9),
        mb_s: o.bytes as f64 / MB / secs.max(1e-9),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        cpu_s_per_gb: cpu.map(|c| c / (o.bytes as f64 / 1e9).max(1e-9)),
        peak_rss_mib: rss,
    }
}

/// W5's second consumption of Strata: through its Unix socket, from a client on its host.
const LOCAL_CONSUME: &str = "consume, Unix socket";

/// Longest a consume phase reads; a system still reading then is measured on what it read (each
/// partition from its start, no gap), and the row says so. Tansu's W5 catch-up (~4.6k msgs/s of
/// what it stored in 6 s) took 63 s a run and a fifth of a whole run's 19 minutes; bounded at
/// 30 s, its consumes of W1, W2 and W5 still took ~4 of the 20.6 minutes of the run of
/// 2026-12-06 11:44 (20, 24 and 36 s a run), and at 15 s Tansu's nine runs and NATS's W6 took
/// 4.6 of the 22.1 minutes of the run of 21:57. Every other consume phase ends within a few
/// seconds; 8 s reads thousands of records even at Tansu's W5 rate (~2.8k msgs/s).
const CONSUME_BOUND: Duration = Duration::from_secs(8);

/// What one run measured.
struct RunFigures {
    produce: Measure,
    consume: Option<Measure>,
    /// W5, Strata: the same consumption again through the server's Unix socket.
    local_consume: Option<Measure>,
    /// W4: what the exactly-once check of the group's consumption established.
    delivery: Option<Delivery>,
    /// Records read and produced when the consume phase stopped at [`CONSUME_BOUND`].
    consume_bounded: Option<(u64, u64)>,
}

/// The storage engine's reads of W5's log after each Strata run, MB/s.
#[derive(Default)]
struct StorageReads {
    batches: Vec<f64>,
    records: Vec<f64>,
}

/// W5's limit: the storage engine reading the log and decoding every record, as the consumers do
/// with what they fetch (MB/s of values, as they count). The like-for-like baseline, and the one
/// `strata-bench server` compares its catch-up with.
const W5_READ_RECORDS: &str = "storage sequential read of the W5 log, records decoded (MB/s of values)";

/// W5's log read as batches only (CRC checked, not decoded): what reading costs before any
/// record is looked at. A second ratio, shown beside the first.
const W5_READ_BATCHES: &str = "storage sequential read of the W5 log, batches only (1 MiB reads, CRC checked)";

/// One run: a fresh server, produce (all producers at once), then consume everything produced
/// (fixed partitions per consumer, or W4's one group). `storage_read` gets the storage engine's
/// read rates of the same log (Strata, one partition): batches only, and records decoded.
async fn run_once(
    peer: Peer,
    bins: &PeerBinaries,
    dir: &Path,
    w: &Workload,
    mode: Mode,
    storage_read: Option<&mut StorageReads>,
) -> anyhow::Result<RunFigures> {
    let instance = Arc::new(start(peer, bins, dir, mode).await?);
    instance.prepare(w, mode).await?;
    let cpu0 = instance.proc().cpu_seconds()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(w.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..w.producers {
        let (instance, w) = (Arc::clone(&instance), w.clone());
        tasks.spawn(async move { instance.produce(&w, i, deadline).await });
    }
    let mut produced = Outcome::new()?;
    while let Some(r) = tasks.join_next().await {
        produced.merge(r??)?;
    }
    let produce_secs = start.elapsed().as_secs_f64();
    let cpu1 = instance.proc().cpu_seconds()?;
    anyhow::ensure!(produced.records > 0, "nothing was acknowledged");
    let produce = measure(&produced, produce_secs, Some(cpu1 - cpu0), instance.proc().peak_rss_mib().ok());

    let mut consume = None;
    let mut local_consume = None;
    let mut delivery = None;
    let mut consume_bounded = None;
    if w.consumers > 0 && w.group {
        let (m, d) = group_consume(&instance, w, &produced, cpu1).await?;
        consume = Some(m);
        delivery = Some(d);
    } else if w.consumers > 0 {
        let start = Instant::now();
        let deadline = start + CONSUME_BOUND;
        for i in 0..w.consumers {
            let owned = w.owned(i, w.consumers);
            let expected: Vec<(u32, u64)> =
                produced.per_partition.iter().filter(|(p, _)| owned.contains(p)).copied().collect();
            if expected.is_empty() {
                continue;
            }
            let (instance, w) = (Arc::clone(&instance), w.clone());
            tasks.spawn(async move { instance.consume(&w, i, Reading { expected: &expected, deadline }).await });
        }
        let mut consumed = Outcome::new()?;
        while let Some(r) = tasks.join_next().await {
            consumed.merge(r??)?;
        }
        let (m, cpu2) = complete(&instance, &consumed, &produced, start, deadline, cpu1, "")?;
        // `complete` lets a short read through only when the bound stopped it.
        consume_bounded = (consumed.records < produced.records).then_some((consumed.records, produced.records));
        consume = Some(m);
        if let (Instance::Strata(strata), "W5") = (&*instance, w.name) {
            let start = Instant::now();
            let deadline = start + CONSUME_BOUND;
            let local = strata.consume_local(Reading { expected: &produced.per_partition, deadline }).await?;
            let door = " through the Unix socket";
            local_consume = Some(complete(&instance, &local, &produced, start, deadline, cpu2, door)?.0);
        }
    }
    let Ok(mut instance) = Arc::try_unwrap(instance) else { anyhow::bail!("instance still shared") };
    match &mut instance {
        Instance::Strata(s) => s.proc.alive()?,
        Instance::Redis(r) => r.proc.stop()?,
        Instance::Nats(n) => n.proc.stop()?,
        Instance::Tansu(t) => t.proc.stop()?,
        Instance::RabbitMq(r) => r.stop()?,
    }
    if let Instance::Strata(s) = instance {
        s.server.stop()?;
        if let Some(reads) = storage_read {
            let (batches, records) = limits::storage_read_mb_s(&dir.join("logs").join("bench-0"))?;
            reads.batches.push(batches);
            reads.records.push(records);
        }
    }
    Ok(RunFigures { produce, consume, local_consume, delivery, consume_bounded })
}

/// The figures of a consumption that started at `start` (server CPU seconds `cpu_before`), once
/// it is checked to hold every produced record (or, stopped at `deadline`, no more than that);
/// and the server's CPU seconds now.
fn complete(
    instance: &Instance,
    consumed: &Outcome,
    produced: &Outcome,
    start: Instant,
    deadline: Instant,
    cpu_before: f64,
    door: &str,
) -> anyhow::Result<(Measure, f64)> {
    let secs = start.elapsed().as_secs_f64();
    let bounded = Instant::now() >= deadline && consumed.records > 0 && consumed.records < produced.records;
    anyhow::ensure!(
        consumed.records == produced.records || bounded,
        "consumed {} of {} records{door}",
        consumed.records,
        produced.records
    );
    let cpu = instance.proc().cpu_seconds()?;
    Ok((measure(consumed, secs, Some(cpu - cpu_before), instance.proc().peak_rss_mib().ok()), cpu))
}

/// W4's consume phase: `w.consumers` members of one group read everything `produced` holds,
/// timed from the first member's start to the last record's arrival; then every record must have
/// arrived exactly once and the group's own acks or commits must cover every partition.
async fn group_consume(
    instance: &Arc<Instance>,
    w: &Workload,
    produced: &Outcome,
    cpu_before: f64,
) -> anyhow::Result<(Measure, Delivery)> {
    instance.prepare_group(w).await?;
    let timeout = Duration::from_secs(if w.records <= 100_000 { 60 } else { 300 });
    let progress = Arc::new(GroupProgress::new(produced.records, w.consumers, timeout));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..w.consumers {
        let (instance, w, progress) = (Arc::clone(instance), w.clone(), Arc::clone(&progress));
        tasks.spawn(async move { instance.group_member(&w, i, progress).await });
    }
    let mut consumed = Outcome::new()?;
    while let Some(r) = tasks.join_next().await {
        consumed.merge(r??)?;
    }
    let secs = progress.seconds().ok_or_else(|| anyhow::anyhow!("the group never received every record"))?;
    let cpu = instance.proc().cpu_seconds()?;
    let mut delivery = consumed.seen.check(&produced.per_partition, instance.dense_ids(), instance.id_name())?;
    anyhow::ensure!(
        consumed.records == produced.records,
        "the group received {} records, {} were produced",
        consumed.records,
        produced.records
    );
    let bookkeeping = instance.verify_group(&produced.per_partition).await?;
    delivery.how = format!("{}; {bookkeeping}", delivery.how);
    Ok((measure(&consumed, secs, Some(cpu - cpu_before), instance.proc().peak_rss_mib().ok()), delivery))
}

/// The workload table of BENCHMARKS.md, scaled by the flags.
fn workloads(args: &Args) -> Vec<Workload> {
    let quick = args.run.quick;
    let seconds = args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 });
    let records = args.records.unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let catchup = args.catchup_mib.unwrap_or(if quick { 16 } else { 512 }) << 20;
    let base = Workload {
        name: "W1",
        record_bytes: 100,
        records,
        batch_records: 1000,
        partitions: 1,
        producers: 1,
        consumers: 1,
        window: 8,
        seconds,
        rate: None,
        group: false,
        warmup: 0.0,
    };
    vec![
        base.clone(),
        Workload {
            name: "W2",
            record_bytes: 1024,
            partitions: 4,
            producers: 2,
            consumers: 2,
            window: 4,
            ..base.clone()
        },
        // One producer fills 4 partitions; then one group of 4 members reads them all.
        Workload { name: "W4", partitions: 4, consumers: 4, group: true, ..base.clone() },
        Workload { name: "W5", record_bytes: 1024, records: catchup / 1024, window: 4, ..base.clone() },
        Workload {
            name: "W6",
            record_bytes: 1024,
            partitions: 1000,
            producers: 4,
            consumers: 4,
            window: 4,
            records: records / 2,
            ..base
        },
    ]
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let began = Instant::now();
    let bins = find_peers(args)?;
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let quick = args.run.quick;
    let want = |w: &str| args.workloads.iter().any(|x| x.eq_ignore_ascii_case(w));
    // Where the run's time goes (issue #8 wants the whole run under 20 minutes).
    let phase = |name: &str| println!("== {name} from {:.0} s", began.elapsed().as_secs_f64());
    let date = crate::harness::today()?;
    let mut report = Report {
        date: date.clone(),
        started: crate::harness::now_utc()?,
        loadavg: crate::harness::loadavg(),
        machine: machine(),
        quick,
        runs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Report::default()
    };
    println!("# strata-bench all — {runs} run(s), load average at start: {}", report.loadavg);

    // Systems: asked for, and installed.
    let mut systems = Vec::new();
    for name in &args.systems {
        let peer = Peer::parse(name)?;
        let (binary, version) = match peer {
            Peer::Strata => (bins.strata.clone(), bins.strata.as_deref().map(crate::peers::version_of)),
            Peer::Redis => (bins.redis.clone(), bins.redis.as_deref().map(redis::version)),
            Peer::Nats => (bins.nats.clone(), bins.nats.as_deref().map(nats::version)),
            Peer::Tansu => (bins.tansu.clone(), bins.tansu.as_deref().map(tansu::version)),
            Peer::RabbitMq => (bins.rabbitmq.clone(), bins.rabbitmq.as_deref().and_then(rabbitmq::version)),
        };
        match (binary, version) {
            (Some(_), Some(v)) => {
                report.peers.push((peer.name().into(), "found".into(), v));
                systems.push(peer);
            }
            _ => {
                println!(
                    "!! {} is not installed (scripts/setup-bench-tools installs it): running without it",
                    peer.name()
                );
                report.peers.push((peer.name().into(), "missing".into(), "not installed".into()));
            }
        }
    }

    // Limits.
    phase("limits");
    let seconds = args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 }).min(2.0);
    let max_bytes = if quick { crate::storage::QUICK_DISK_BUDGET } else { crate::storage::DISK_BUDGET };
    let mut add_limit = |name: String, unit: &str, runs: Vec<f64>| {
        report.limits.push(Limit { name, unit: unit.into(), runs });
    };
    let (w1_bytes, w2_bytes) = (1000 * 100, 1000 * 1024);
    // Per batch, and per everything a run can have in flight (window × producers): Strata's group
    // commit packs somewhere in between into one fdatasync.
    for (label, chunk) in [
        ("W1 batch", w1_bytes),
        ("W1 window of 8", 8 * w1_bytes),
        ("W2 batch", w2_bytes),
        ("W2 2 × window of 4", 8 * w2_bytes),
    ] {
        let mut v = Vec::new();
        for _ in 0..runs {
            v.push(
                limits::plain_fsync_mb_s(root.path(), chunk, seconds, max_bytes)
                    .with_context(|| format!("plain write + fdatasync per {chunk} B"))?,
            );
        }
        add_limit(format!("plain write + fdatasync per {} KB ({label})", chunk / 1000), "MB/s", v);
    }
    // The same bytes past the page cache: new page-cache pages are what a buffered writer pays
    // most for on this VM (see `plain_direct_writer`).
    for (label, chunk) in [("W2 batch", w2_bytes), ("W2 2 × window of 4", 8 * w2_bytes)] {
        let mut v = Vec::new();
        for _ in 0..runs {
            let run = limits::plain_direct_mb_s(root.path(), chunk, seconds, max_bytes)
                .with_context(|| format!("plain O_DIRECT write + fdatasync per {chunk} B"))?;
            v.extend(run);
        }
        if !v.is_empty() {
            add_limit(format!("plain O_DIRECT write + fdatasync per {} KB ({label})", chunk / 1000), "MB/s", v);
        }
    }
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (a, b) = limits::fsync_latency_ms(root.path(), 64 << 10).context("fdatasync latency")?;
        p50.push(a);
        p99.push(b);
    }
    add_limit("fdatasync of 64 KiB into a preallocated file, p50".into(), "ms", p50);
    add_limit("fdatasync of 64 KiB into a preallocated file, p99".into(), "ms", p99);
    let mut tcp = Vec::new();
    for _ in 0..runs {
        tcp.push(limits::loopback_tcp_mb_s(if quick { 256 << 20 } else { 4 << 30 }).await.context("loopback TCP")?);
    }
    add_limit("loopback TCP, 1 stream, 1 MiB writes".into(), "MB/s", tcp);
    for (label, records, record_bytes, appenders) in [("W1", 1000, 100, 1), ("W2", 1000, 1024, 2)] {
        let batch = limits::batch(records, record_bytes)?;
        for durable in [true, false] {
            let mode = if durable { "durable" } else { "relaxed" };
            let (mut mb, mut msgs) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let (a, b) =
                    limits::storage_append(root.path(), &batch, records, appenders, durable, (seconds, max_bytes))
                        .with_context(|| format!("storage in-process append, {label}, {mode}"))?;
                mb.push(a);
                msgs.push(b);
            }
            add_limit(
                format!("storage in-process append, {label} batches, {appenders} appender(s), {mode}"),
                "MB/s",
                mb,
            );
            add_limit(
                format!("storage in-process append, {label} batches, {appenders} appender(s), {mode}, msgs"),
                "msgs/s",
                msgs,
            );
        }
    }

    // W1, W2, W4, W5, W6: every system, durable and relaxed (W4 and W5 relaxed only, W6 durable
    // only).
    let mut storage_reads = StorageReads::default();
    for w in workloads(args) {
        if !want(w.name) {
            continue;
        }
        phase(w.name);
        let modes: &[Mode] = match w.name {
            "W4" | "W5" => &[Mode::Relaxed],
            "W6" => &[Mode::Durable],
            _ => &[Mode::Durable, Mode::Relaxed],
        };
        for &mode in modes {
            for &peer in &systems {
                let mut produce = Row::new(w.name, peer.name(), mode.name(), "produce");
                let phase = if w.group { "group consume" } else { "consume" };
                let mut consume = Row::new(w.name, peer.name(), mode.name(), phase);
                let mut local = Row::new(w.name, peer.name(), mode.name(), LOCAL_CONSUME);
                let mut bounded = Vec::new();
                if let Some(why) = peer.skips(w.group, mode) {
                    produce.note = why.into();
                    consume.note = why.into();
                    report.rows.extend([produce, consume]);
                    continue;
                }
                for r in 0..runs {
                    let dir = root.path().join(format!("{}-{}-{}-{r}", w.name, peer.name(), mode.name()));
                    let reads = (w.name == "W5" && peer == Peer::Strata).then_some(&mut storage_reads);
                    let t = Instant::now();
                    let outcome = run_once(peer, &bins, &dir, &w, mode, reads).await;
                    let _ = std::fs::remove_dir_all(&dir);
                    match outcome {
                        Ok(RunFigures { produce: p, consume: c, local_consume, delivery, consume_bounded }) => {
                            println!(
                                "{} {} {} run {}: produce {:.0} msgs/s {:.0} MB/s p99 {:.2} ms; consume {:.0} msgs/s ({:.1} s)",
                                w.name,
                                peer.name(),
                                mode.name(),
                                r + 1,
                                p.msgs_s,
                                p.mb_s,
                                p.p99_ms.unwrap_or(0.0),
                                c.as_ref().map_or(0.0, |c| c.msgs_s),
                                t.elapsed().as_secs_f64()
                            );
                            produce.ok.push(p);
                            if let Some(c) = c {
                                consume.ok.push(c);
                            }
                            local.ok.extend(local_consume);
                            if delivery.is_some() {
                                consume.delivery = delivery;
                            }
                            if let Some((read, of)) = consume_bounded {
                                bounded.push(format!("run {}: {read} of {of}", r + 1));
                            }
                        }
                        Err(e) => {
                            println!("{} {} {} run {}: FAILED: {e:#}", w.name, peer.name(), mode.name(), r + 1);
                            // The whole run failed: neither of its phases has a figure.
                            produce.failed.push(format!("{e:#}"));
                            if w.consumers > 0 {
                                consume.failed.push(format!("{e:#}"));
                            }
                        }
                    }
                }
                if w.name == "W5" {
                    produce.note = format!(
                        "up to {} MiB stored first (within the produce phase's bound)",
                        (w.records * 1024) >> 20
                    );
                }
                if !bounded.is_empty() {
                    consume.note = format!(
                        "read for {} s, the consume bound, from the start of each partition: records read of those acknowledged in {}",
                        CONSUME_BOUND.as_secs(),
                        bounded.join(", ")
                    );
                }
                if w.group {
                    produce.note = format!("1 producer, {} partitions", w.partitions);
                    consume.note = format!("1 group of {} members: {}", w.consumers, peer.group_method());
                }
                report.rows.extend([produce, consume]);
                if !local.ok.is_empty() {
                    local.note = "the server passes the segment files' descriptors; the client reads them".into();
                    report.rows.push(local);
                }
            }
        }
    }
    if !storage_reads.records.is_empty() {
        report.limits.push(Limit { name: W5_READ_RECORDS.into(), unit: "MB/s".into(), runs: storage_reads.records });
        report.limits.push(Limit { name: W5_READ_BATCHES.into(), unit: "MB/s".into(), runs: storage_reads.batches });
    }

    // W3: latency at 10/50/80 % of each system's own W2 durable peak, open loop.
    if want("w3") {
        phase("W3");
        crate::harness::settle_disk();
        let w2_peak = |report: &Report, system: &str| {
            args.w3_peak.or_else(|| {
                report
                    .rows
                    .iter()
                    .find(|r| r.workload == "W2" && r.system == system && r.mode == "durable" && r.phase == "produce")
                    .and_then(Row::clean_msgs_s)
            })
        };
        for &peer in &systems {
            let peak = w2_peak(&report, peer.name());
            for &pct in &args.w3_percents {
                let mut row = Row::new("W3", peer.name(), "durable", &format!("latency@{pct}%"));
                if let Some(why) = peer.skips(false, Mode::Durable) {
                    row.note = why.into();
                    report.rows.push(row);
                    continue;
                }
                let Some(peak) = peak else {
                    row.note = "not run: no clean W2 durable peak for this system".into();
                    report.rows.push(row);
                    continue;
                };
                w3_point(peer, &bins, root.path(), peak * pct as f64 / 100.0, runs, quick, &mut row).await;
                if let Some(fixed) = args.w3_peak {
                    row.note += &format!(" ({pct} % of --w3-peak {fixed:.0}, not of this system's W2 peak)");
                }
                report.rows.push(row);
            }
        }
        // The same loads side by side: Strata offered the rate of the peer whose p99 was shortest
        // at each percentage (its peak being far lower, so is the rate), so the tails also
        // compare at one load. Not with --w3-peak, where every system has the same rates already.
        if systems.contains(&Peer::Strata) && args.w3_peak.is_none() {
            for pct in [10u32, 50, 80] {
                let phase = format!("latency@{pct}%");
                let best = report
                    .rows
                    .iter()
                    .filter(|r| r.workload == "W3" && r.system != "strata" && r.phase == phase && r.status() == "ok")
                    .filter_map(|r| Some((r.system.clone(), r.p99()?)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                let Some((peer, _)) = best else { continue };
                let Some(peak) = w2_peak(&report, &peer) else { continue };
                let mut row = Row::new("W3", "strata", "durable", &format!("{phase} {AT_RATE_OF}{peer}"));
                w3_point(Peer::Strata, &bins, root.path(), peak * pct as f64 / 100.0, runs, quick, &mut row).await;
                row.note += &format!(
                    " ({peer}'s rate at {pct} % of its W2 durable peak: the peer with the shortest p99 there)"
                );
                report.rows.push(row);
            }
        }
    }

    // W7: Strata's doors, 8 connections, 1 KiB records, 100 per request (webhook: 1), durable.
    if want("w7") && systems.contains(&Peer::Strata) {
        phase("W7");
        let strata = bins.strata.clone().ok_or_else(|| anyhow::anyhow!("no strata"))?;
        let secs = if quick { 1.0 } else { 3.0 };
        for door in ["grpc-stream", "grpc-batches", "grpc-unary", "http-json", "http-webhook"] {
            let mut row = Row::new("W7", &format!("strata {door}"), "durable", "produce");
            for r in 0..runs {
                let dir = root.path().join(format!("W7-{door}-{r}"));
                let outcome = async {
                    let server = crate::harness::Server::start(&strata, &dir)?;
                    crate::server::create_topic(&server.url, "bench", 1, "always").await?;
                    let run = crate::server::produce_run(&server, "bench", door, 8, secs).await?;
                    let rss = server.rss_mib().ok();
                    server.stop()?;
                    Ok::<_, anyhow::Error>((run, rss))
                }
                .await;
                let _ = std::fs::remove_dir_all(&dir);
                match outcome {
                    Ok((run, rss)) => row.ok.push(Measure {
                        msgs_s: run.records_per_s,
                        mb_s: run.mb_per_s,
                        p50_ms: Some(run.latency.value_at_quantile(0.5) as f64 / 1000.0),
                        p99_ms: Some(run.latency.value_at_quantile(0.99) as f64 / 1000.0),
                        p999_ms: Some(run.latency.value_at_quantile(0.999) as f64 / 1000.0),
                        cpu_s_per_gb: Some(run.cpu_s_per_gb),
                        peak_rss_mib: rss,
                    }),
                    Err(e) => row.failed.push(format!("{e:#}")),
                }
            }
            row.note = match door {
                "http-webhook" => "1 record per request".into(),
                "grpc-batches" => "100 records per request, in one batch the client encoded".into(),
                _ => "100 records per request".into(),
            };
            report.rows.push(row);
        }
    }

    // W8: cold-tier catch-up, Strata only (neither peer tiers to object storage).
    if want("w8") && systems.contains(&Peer::Strata) {
        phase("W8");
        let strata = bins.strata.clone().ok_or_else(|| anyhow::anyhow!("no strata"))?;
        let dir = root.path().join("W8");
        let mib = args.cold_mib.unwrap_or(if quick { 8 } else { 256 });
        let (row, raw) = cold_catchup(&strata, &dir, mib, runs).await;
        let _ = std::fs::remove_dir_all(&dir);
        report.rows.push(row);
        if !raw.is_empty() {
            report.limits.push(Limit { name: W8_RAW_READ.into(), unit: "MB/s".into(), runs: raw });
        }
    }

    // W9: SQL over a tiered topic, Strata only (the comparison is plain DataFusion on its objects).
    let mut sql_ratios = Vec::new();
    if want("w9") && systems.contains(&Peer::Strata) {
        phase("W9");
        let strata = bins.strata.clone().ok_or_else(|| anyhow::anyhow!("no strata"))?;
        let dir = root.path().join("W9");
        let seconds = args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 });
        let cfg = crate::sql::Config::new(quick, runs, args.sql_records, Some(seconds));
        let outcome = crate::sql::measure(&strata, &dir, &cfg).await;
        let _ = std::fs::remove_dir_all(&dir);
        match outcome {
            Ok(figures) => {
                report.rows.extend(figures.rows);
                sql_ratios = figures.ratios;
            }
            Err(e) => {
                println!("W9: FAILED: {e:#}");
                let mut row = Row::new("W9", "strata", "relaxed", "full scan");
                row.failed.push(format!("loading the dataset: {e:#}"));
                report.rows.push(row);
            }
        }
    }

    ratios(&mut report);
    report.ratios.extend(sql_ratios);
    report.seconds_total = began.elapsed().as_secs_f64();
    let markdown = report.markdown();
    println!("\n{markdown}");
    let doc = serde_json::to_string_pretty(&report.json())? + "\n";
    // Only a whole run (every system and workload, W3 at each system's own peak) replaces the
    // published report: an experiment's partial run goes to files of its own unless told where.
    let whole = args.is_whole_run();
    let (name, svg_name) = match (quick, whole) {
        (true, _) => ("all-quick", "latency-throughput-quick.svg"),
        (false, true) => ("all", "latency-throughput.svg"),
        (false, false) => ("all-partial", "latency-throughput-partial.svg"),
    };
    let out = args.run.write_results(name, &doc)?;
    println!("results written to {}", out.display());
    // The plot goes beside the JSON (benches/results/ by default; elsewhere with --out).
    let results_dir = out.parent().map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    std::fs::write(results_dir.join(svg_name), report.svg())?;
    let md_path = match (&args.report, quick || !whole) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some(crate::harness::bench_dir().join("RESULTS.md")),
        (None, true) => None,
    };
    if md_path.is_none() && !quick {
        println!("a partial run: benches/RESULTS.md left as it is (--report FILE writes one)");
    }
    if let Some(md_path) = md_path {
        std::fs::write(&md_path, results_md(&report, &markdown, &out, svg_name))?;
        println!("report written to {}", md_path.display());
    }
    Ok(())
}

/// The limit W8 is compared with: the same objects read raw, in the same run.
const W8_RAW_READ: &str =
    "object store raw read of the W8 Parquet objects (whole files from the local store; MB/s of the records they hold)";

/// W8: the tiered topic loaded once, then `runs` catch-up reads, each followed by a raw read of
/// the same object files. Returns the row and the raw reads (MB/s of record values: the value
/// bytes the objects hold over the seconds it took to read them).
async fn cold_catchup(strata: &Path, dir: &Path, mib: u64, runs: usize) -> (Row, Vec<f64>) {
    let mut row = Row::new("W8", "strata", "relaxed", "consume");
    let mut raw = Vec::new();
    let topic = match crate::tier::ColdTopic::load(strata, dir, mib).await {
        Ok(t) => t,
        Err(e) => {
            println!("W8: FAILED: {e:#}");
            row.failed.push(format!("loading the tiered topic: {e:#}"));
            return (row, raw);
        }
    };
    for r in 0..runs {
        let run = match topic.catch_up().await {
            Ok(run) => run,
            Err(e) => {
                println!("W8 run {}: FAILED: {e:#}", r + 1);
                row.failed.push(format!("{e:#}"));
                continue;
            }
        };
        let q = |p: f64| Some(run.latency.value_at_quantile(p) as f64 / 1000.0);
        let m = Measure {
            msgs_s: run.records as f64 / run.seconds.max(1e-9),
            mb_s: run.value_bytes as f64 / MB / run.seconds.max(1e-9),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            cpu_s_per_gb: Some(run.cpu_seconds / (run.value_bytes as f64 / 1e9).max(1e-9)),
            peak_rss_mib: run.peak_rss_mib,
        };
        match topic.raw_read_seconds() {
            Ok(secs) => raw.push(topic.value_bytes as f64 / MB / secs.max(1e-9)),
            Err(e) => {
                row.failed.push(format!("raw read of the objects: {e:#}"));
                continue;
            }
        }
        println!("W8 strata run {}: cold catch-up {:.0} msgs/s {:.0} MB/s", r + 1, m.msgs_s, m.mb_s);
        row.ok.push(m);
        row.delivery = Some(Delivery {
            records: run.records,
            partitions: 1,
            exactly_once: true,
            how: "offsets 0..n each once and in order, value bytes as produced".into(),
        });
    }
    row.note = format!(
        "{} MiB of ~1 KiB JSON records ({} records, values {:.1} MB) in {} Parquet objects ({:.1} MB), evicted \
         locally; server restarted before each run (object cache empty); read through the raw batch stream",
        mib,
        topic.end,
        topic.value_bytes as f64 / MB,
        topic.objects.len(),
        topic.object_bytes as f64 / MB,
    );
    (row, raw)
}

/// Phase suffix of the W3 rows where Strata is offered a peer's rate (`latency@10% at the rate of redis`).
const AT_RATE_OF: &str = "at the rate of ";

/// One W3 point: `runs` open-loop runs of `peer` at `rate` msgs/s (4 producers, 4 partitions,
/// batches of what arrives in 1 ms), each run's figures or failure added to `row`.
async fn w3_point(peer: Peer, bins: &PeerBinaries, root: &Path, rate: f64, runs: usize, quick: bool, row: &mut Row) {
    let secs = if quick { 1.0 } else { 4.0 };
    let warmup = if quick { 0.2 } else { 1.0 };
    let batch = ((rate / 4.0 / 1000.0) as usize).clamp(1, 1000); // linger ≤ 1 ms
    let w = Workload {
        name: "W3",
        record_bytes: 1024,
        records: (rate * (warmup + secs)) as u64,
        batch_records: batch,
        partitions: 4,
        producers: 4,
        consumers: 0,
        window: 4096,
        seconds: warmup + secs + 5.0,
        rate: Some(rate),
        group: false,
        warmup,
    };
    row.note = format!("offered {rate:.0} msgs/s in batches of {batch}");
    for r in 0..runs {
        let dir = root.join(format!("W3-{}-{}-{r}", peer.name(), row.phase.replace(['@', '%', ' '], "-")));
        let outcome = run_once(peer, bins, &dir, &w, Mode::Durable, None).await;
        let _ = std::fs::remove_dir_all(&dir);
        crate::harness::settle_disk();
        match outcome {
            Ok(RunFigures { produce: p, .. }) => {
                println!(
                    "W3 {} {}: {:.0} msgs/s p50 {:.2} p99 {:.2} ms",
                    peer.name(),
                    row.phase,
                    p.msgs_s,
                    p.p50_ms.unwrap_or(0.0),
                    p.p99_ms.unwrap_or(0.0)
                );
                row.ok.push(p);
            }
            Err(e) => row.failed.push(format!("{e:#}")),
        }
    }
}

/// Strata/peer (same workload, mode, phase) and Strata/limit ratios.
fn ratios(report: &mut Report) {
    let find = |w: &str, s: &str, m: &str, ph: &str| {
        report.rows.iter().find(|r| r.workload == w && r.system == s && r.mode == m && r.phase == ph)
    };
    let limit = |name: &str| report.limits.iter().find(|l| l.name.starts_with(name)).and_then(Limit::median);
    // Every peer the harness knows: a peer missing here has rows but no ratios (Tansu's were
    // missing from the first whole run with it).
    let peers: Vec<&str> = ALL_SYSTEMS.split(',').filter(|s| *s != "strata").collect();
    let mut out = Vec::new();
    for row in report.rows.iter().filter(|r| r.system == "strata" && r.status() == "ok") {
        let Some(strata) = row.msgs_s() else { continue };
        if !row.phase.starts_with("latency") {
            for &peer in &peers {
                if let Some(other) = find(&row.workload, peer, &row.mode, &row.phase).and_then(Row::clean_msgs_s) {
                    out.push(Ratio {
                        workload: row.workload.clone(),
                        mode: row.mode.clone(),
                        metric: format!("{} msgs/s", row.phase),
                        versus: peer.into(),
                        strata,
                        other,
                    });
                }
            }
        } else if let Some(s99) = row.p99() {
            // Latency: Strata's p99 over the peer's (below 1: Strata's tail is shorter); a row at
            // a peer's rate against that peer only.
            let (phase, only) = match row.phase.split_once(&format!(" {AT_RATE_OF}")) {
                Some((phase, peer)) => (phase, Some(peer)),
                None => (row.phase.as_str(), None),
            };
            for &peer in peers.iter().filter(|p| only.is_none_or(|o| o == **p)) {
                if let Some(o) = find(&row.workload, peer, &row.mode, phase).filter(|r| r.status() == "ok")
                    && let Some(p99) = o.p99()
                {
                    out.push(Ratio {
                        workload: row.workload.clone(),
                        mode: row.mode.clone(),
                        metric: format!("{} p99 ms (lower is better)", row.phase),
                        versus: peer.into(),
                        strata: s99,
                        other: p99,
                    });
                }
            }
        }
        let Some(mb) = row.mb_s() else { continue };
        let limit_names: &[&str] = match (row.workload.as_str(), row.mode.as_str(), row.phase.as_str()) {
            ("W1", "durable", "produce") => {
                &["plain write + fdatasync per 100 KB", "plain write + fdatasync per 800 KB"]
            }
            ("W2", "durable", "produce") => &[
                "plain write + fdatasync per 1024 KB",
                "plain write + fdatasync per 8192 KB",
                "plain O_DIRECT write + fdatasync per 1024 KB",
            ],
            ("W6", "durable", "produce") => {
                &["plain write + fdatasync per 1024 KB", "plain O_DIRECT write + fdatasync per 1024 KB"]
            }
            ("W1", "relaxed", "produce") => &["storage in-process append, W1 batches, 1 appender(s), relaxed"],
            ("W2", "relaxed", "produce") => &[
                "storage in-process append, W2 batches, 2 appender(s), relaxed",
                "loopback TCP",
                "plain O_DIRECT write + fdatasync per 8192 KB",
            ],
            ("W5", _, "consume" | LOCAL_CONSUME) => &[W5_READ_RECORDS, W5_READ_BATCHES],
            ("W8", _, "consume") => &[W8_RAW_READ],
            _ => &[],
        };
        for name in limit_names {
            if let Some(l) = limit(name) {
                out.push(Ratio {
                    workload: row.workload.clone(),
                    mode: row.mode.clone(),
                    metric: format!("{} MB/s", row.phase),
                    versus: (*name).into(),
                    strata: mb,
                    other: l,
                });
            }
        }
    }
    if let (Some(w6), Some(w2)) =
        (find("W6", "strata", "durable", "produce"), find("W2", "strata", "durable", "produce"))
        && let (Some(a), Some(b)) = (w6.clean_msgs_s(), w2.clean_msgs_s())
    {
        out.push(Ratio {
            workload: "W6".into(),
            mode: "durable".into(),
            metric: "produce msgs/s".into(),
            versus: "Strata W2 durable".into(),
            strata: a,
            other: b,
        });
    }
    report.ratios = out;
}

fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("");
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model.trim(),
        "memory_gib": (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// benches/RESULTS.md: how the run was made, then the tables and the plot.
fn results_md(report: &Report, tables: &str, json_path: &Path, svg_name: &str) -> String {
    let json_name = json_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let versions: Vec<String> = report.peers.iter().map(|(n, s, v)| format!("{n} {v} ({s})")).collect();
    format!(
        "# Strata side by side: Redis Streams, NATS JetStream, Tansu, RabbitMQ Streams and the machine's limits\n\n\
         Generated by `strata-bench all` (issue #8) — do not edit by hand; rerun `benches/run.sh`.\n\n\
         - Date: {} (started {} UTC), load average at start: `{}`\n\
         - Machine: {}\n\
         - Systems: {}\n\
         - Command: `{}` — {} run(s) per figure, median (range); {:.0} s in total\n\
         - Results: [`results/{json_name}`](results/{json_name}) (schema: [`schema/results.schema.json`](schema/results.schema.json))\n\n\
         {}\n\
         ## Method\n\n\
         - One load generator for every system (`benches/src/peers/`): async Rust on tokio, one TCP connection per\n  \
           producer and consumer, TCP_NODELAY, batches pipelined up to a window (W1: 8, W2: 4 batches in flight),\n  \
           each batch's latency from when it was sent (closed loop) or due (W3, open loop) to its last ack.\n\
         - Strata: gRPC `ProduceStream` of batches the client encoded (one per partition, as `strata-client`'s producer sends them); reads through the raw batch stream (`GET .../batches`, HTTP/1.1, decoded in the client). Redis 7 Streams: pipelined `XADD` (1 batch = 1 pipeline),\n  \
           `XREADGROUP` + `XACK`. NATS JetStream: async publish with a reply subject per message (acks counted per\n  \
           batch), a pull consumer per stream (`ack_policy: all`). Clients for Redis and NATS are minimal protocol\n  \
           implementations in the harness (RESP2; NATS text protocol + JetStream JSON API). Tansu (a Rust broker\n  \
           speaking Kafka's protocol, SQLite storage engine): one Kafka `Produce` request per batch, pipelined on one\n  \
           connection per producer, and `Fetch` of up to 1 MiB per partition, through the `rskafka` client.\n  \
           RabbitMQ Streams (stream plugin, stream protocol through a client in the harness on the codec crate of\n  \
           RabbitMQ's Rust client): one connection per producer with a publisher per stream, each batch in\n  \
           `Publish` frames of up to 1 MiB, counted once every record is confirmed; `Subscribe` from the first\n  \
           offset with a credit of 8 chunks, one credit returned per chunk delivered.\n\
         - Durable: Strata `flush=always`, Redis `appendfsync always`, NATS `sync_interval: always` — acked after fsync.\n  \
           Relaxed: Strata `flush=interval` (1 s), Redis `appendfsync everysec`, NATS default (fsync every 2 min),\n  \
           Tansu's SQLite engine as it comes: it syncs at WAL checkpoints, not per commit (11 fsyncs for 60 produce\n  \
           requests, strace), and no setting makes it ack after an fsync, so Tansu has no durable rows (W3 and W6\n  \
           are durable only); `rskafka` has no consumer groups, so Tansu has no W4 row. RabbitMQ's streams as they\n  \
           come: a stream confirms once its chunk is written to the segment file, without an fsync (its data safety\n  \
           is replication to other nodes; strace of a W2 run: no fsync of a stream file, only of metadata logs), so RabbitMQ has relaxed rows only too;\n  \
           RabbitMQ groups a stream's consumers with super streams and single active consumer, new in 3.11 (Debian\n  \
           has 3.10), so no W4 row.\n\
         - Partitions: a Strata partition = a Redis stream key = a JetStream stream (subject `p<n>`) = a partition of\n  \
           Tansu's topic `bench` = a RabbitMQ stream `bench-<n>`.\n\
         - Each produce phase is bounded by `--seconds`: slow systems stop early and their rate\n  \
           is what they achieved in that time (default 5 s). Consumers then read everything that was acknowledged,\n  \
           for at most 8 s: a consumer still reading then is measured on what it read (each partition from its\n  \
           start, no gap), and its row says so (Tansu's consumes: its W5 catch-up took ~63 s a run unbounded).\n\
         - Server CPU s/GB and peak RSS (VmHWM) from /proc of the server process. Load generator and servers share\n  \
           the machine's cores (no `taskset`: with 2 cores, pinning would halve both sides).\n\
         - A run with any error is reported as failed with its reason and is not part of the median.\n\
         - W3 offers 10/50/80 % of *each system's own* W2 durable peak (open loop, 4 producers, batches of\n  \
           whatever arrives in 1 ms), so the peers' points sit at far lower rates than Strata's. Each run offers\n  \
           the rate for 1 s of warm-up, then 4 s whose batches' latencies are recorded (all systems alike).\n  \
           Before each run the harness runs `sync` (since 2026-12-06 23:15): the data disk is ext4 mounted with\n  \
           `discard`, and the previous run's deleted directory would otherwise be trimmed inside this run's first\n  \
           `fdatasync`s.\n  \
           Batches are released on time by a pacer thread sleeping with the kernel's high-resolution timer\n  \
           (`benches/src/pacer.rs`): tokio's millisecond timer had added 1.0 ms at p50 and 2.0 ms at p99 to every\n  \
           system's latency before the batch was even sent. Then Strata runs once more at each percentage,\n  \
           offered the rate of the peer with the shortest p99 there (rows `latency@N% at the rate of <peer>`),\n  \
           so the tails also compare at one load; those rows have a ratio against that peer only.\n\
         - W6 (1,000 partitions, durable): every record is keyed and goes to the partition Kafka's murmur2 picks\n  \
           for its key, so each 1,000-record batch spreads over ~630 partitions. Strata: the load generator\n  \
           partitions with murmur2 (as the server and `strata-client` do) and sends one batch per partition;\n  \
           it builds 32 distinct requests per producer before the clock starts and cycles through them. Redis: a pipeline of `XADD p<n> * k <key> v <value>`, one per record. NATS:\n  \
           1,000 streams, each record published to its key's subject. Consumers then read 250 partitions each.\n\
         - W5 (catch-up, relaxed): one partition, 512 MiB by default (`--catchup-mib`), read from offset 0 by one\n  \
           consumer over TCP as everywhere; Strata's log is then read a second time, by a client on the same host\n  \
           through the server's Unix socket (row `consume, Unix socket`): the server passes the segment files'\n  \
           descriptors and the client reads and checks the batches itself (no batch crosses a socket). Neither peer\n  \
           has such a path (Redis's Unix socket still carries every byte; NATS has none), so that row has no peer\n  \
           ratio, only the storage engine's own sequential read of the same log. That read is taken twice after each\n  \
           run: with every record decoded and its values counted, the work the consumers do on what they fetch (the\n  \
           like-for-like limit, as in `strata-bench server`), and as batches only, CRC checked but not decoded (until\n  \
           2026-12-06 the only one); both ratios are shown.\n\
         - W4 (group fan-out, relaxed): one producer stores 100 B records (1 M by default, `--records`) in 4\n  \
           partitions; then 4 members of one group read everything at once, up to 1,000 records per request, and\n  \
           acknowledge it. Strata: 4 `Consumer.Subscribe` streams (`strata-client`'s `GroupConsumer`, its fastest\n  \
           group door: the server pushes records, the HTTP member fetch encodes JSON), each poll's positions\n  \
           committed with `commit_async` (as the peers ack every batch), revoked partitions committed before they\n  \
           move; the 4 joins and their rebalances are inside the timed phase. Redis: consumer group `g` on each\n  \
           stream key, `XREADGROUP COUNT 1000` on one key at a time, `XACK` pipelined with the next read. NATS: one\n  \
           durable pull consumer per stream shared by the 4 subscribers, pulls of 1,000, every message acked\n  \
           (`ack_policy: explicit`: `AckAll` on a shared consumer would ack other members' messages). Timed from the\n  \
           first member's start to the last record's arrival. Every run checks that each record reached the group\n  \
           exactly once (Strata offsets and JetStream stream sequences: 0..n per partition with no gap and no\n  \
           repeat; Redis entry ids: no repeat, as many as produced) and that the group's own bookkeeping covers\n  \
           everything (Strata's committed offsets at each partition's end, `XPENDING` 0, JetStream ack floors at\n  \
           the end); a run that fails either check is a failed run.\n\
         - W8 (cold-tier catch-up, Strata only: neither peer tiers to object storage): a 1-partition topic of\n  \
           ~1 KiB JSON events (256 MiB by default, `--cold-mib`) tiered to the local-filesystem object store with\n  \
           `local_retention_bytes=0`, so all but the active segment is Parquet (zstd) and gone from local disk; the\n  \
           server is restarted before each run (empty object cache) and one consumer reads offsets 0..end with\n  \
           the raw batch stream (`GET .../batches`), each offset checked once and in order. Its limit is the object store's raw\n  \
           read of the same object files in the same run (whole-file reads, what the local store's `get` does),\n  \
           counted in MB/s of the records they hold: same data, same run and page-cache state, so the ratio is the\n  \
           cost of Strata's cold path (decompress, decode, re-batch, HTTP) over fetching the bytes. The storage\n  \
           engine's W5 read was not used: it reads a different, uncompressed log, so the ratio would mix that in.\n\
         - W9 (SQL, `strata-bench sql`): a topic of 4 partitions loaded with ~100 B JSON values (10 M records by\n  \
           default, `--sql-records`), tiered with `local_retention_bytes=0` so all but each partition's active\n  \
           segment is Parquet in the object store. Full scan `SELECT partition, count(*), sum(length(value)),\n  \
           min(timestamp), max(timestamp) ... GROUP BY partition` through `POST /v1/sql` (Arrow IPC) against plain\n  \
           DataFusion (a ListingTable over the same objects, fresh session per query, the cold rows only): rows\n  \
           scanned per second (the msgs/s column). A 1 % timestamp range: latency against the full scan's, and\n  \
           the Parquet row groups it read (`row_groups_pruned_statistics` of its `EXPLAIN ANALYZE`) against all\n  \
           row groups. Produce (W7's gRPC-stream generator, 4 clients) alone, then while full scans run back to\n  \
           back. Every query's answer is checked; scans have no durability, their mode column says `relaxed`.\n\n\
         ## Peers tried and left out\n\n\
         - Tansu 0.6.0 (crates.io, Kafka protocol) runs in the relaxed rows only (see Method) and only where its binary\n  \
           was built: `scripts/setup-bench-tools --tansu` (which `benches/run.sh` calls) runs\n  \
           `cargo install --locked tansu --version 0.6.0 --features libsql`, about 20 minutes once; CI does not build it.\n\
         - RabbitMQ Streams (Debian `rabbitmq-server` 3.10, its `rabbitmq_stream` plugin) runs in the relaxed rows\n  \
           only (see Method); each run starts a node of its own (about 6 s before it listens).\n\n\
         ## Latency vs throughput\n\n\
         ![p99 latency vs throughput](results/{svg_name})\n",
        report.date,
        report.started,
        report.loadavg,
        report.machine,
        versions.join(", "),
        report.command,
        report.runs,
        report.seconds_total,
        tables,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, Measure, Report, Row, ratios};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn whole(argv: &[&str]) -> bool {
        Cli::try_parse_from(std::iter::once("all").chain(argv.iter().copied())).unwrap().args.is_whole_run()
    }

    #[test]
    fn every_peer_gets_its_ratios() {
        let row = |system: &str, msgs_s: f64| {
            let mut row = Row::new("W2", system, "relaxed", "produce");
            row.ok.push(Measure { msgs_s, mb_s: msgs_s / 1000.0, ..Default::default() });
            row
        };
        let mut report = Report {
            rows: vec![
                row("strata", 900.0),
                row("redis", 300.0),
                row("nats", 450.0),
                row("tansu", 90.0),
                row("rabbitmq", 360.0),
            ],
            ..Default::default()
        };
        ratios(&mut report);
        let mut versus: Vec<_> =
            report.ratios.iter().filter(|r| r.metric == "produce msgs/s").map(|r| r.versus.as_str()).collect();
        versus.sort_unstable();
        assert_eq!(versus, ["nats", "rabbitmq", "redis", "tansu"]);
        let tansu = report.ratios.iter().find(|r| r.versus == "tansu").unwrap();
        assert_eq!((tansu.strata, tansu.other), (900.0, 90.0));
    }

    #[test]
    fn only_a_whole_run_replaces_the_published_report() {
        assert!(whole(&[]));
        assert!(whole(&["--workloads", "W9,w1,w2,w3,w4,w5,w6,w7,w8", "--systems", "nats,strata,rabbitmq,tansu,redis"]));
        assert!(!whole(&["--systems", "strata,redis,nats,tansu"]));
        assert!(whole(&["--runs", "5"]));
        assert!(!whole(&["--systems", "strata"]));
        assert!(!whole(&["--workloads", "w2,w3"]));
        assert!(!whole(&["--w3-peak", "900000"]));
    }

    #[test]
    fn w3_percents_default_to_three_loads_and_need_a_fixed_peak() {
        let parse = |argv: &[&str]| Cli::try_parse_from(std::iter::once("all").chain(argv.iter().copied()));
        assert_eq!(parse(&[]).unwrap().args.w3_percents, [10, 50, 80]);
        assert_eq!(parse(&["--w3-peak", "900000", "--w3-percents", "10"]).unwrap().args.w3_percents, [10]);
        assert!(parse(&["--w3-percents", "10"]).is_err(), "a percentage of what peak?");
    }
}
