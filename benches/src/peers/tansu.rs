//! Tansu (crates.io `tansu`: a broker written in Rust that speaks Kafka's protocol) under the
//! common load generator, driven by `rskafka` (a minimal Kafka client: one connection per client,
//! requests pipelined on it, over the same tokio sockets as every other system).
//!
//! One topic `bench` with the workload's partitions. Produce: each batch is one `Produce` request
//! of `batch_records` records to one partition, up to `window` requests in flight per producer;
//! keyed (W6), the batch's records go to their keys' partitions, one request per partition, sent
//! together. Consume: `Fetch` from offset 0 of each of the consumer's partitions, up to 1 MiB a
//! request and without waiting, one request in flight per partition, until every expected record
//! has arrived.
//!
//! Storage: Tansu's SQLite engine (`--storage-engine sqlite://tansu.db` in the data directory).
//! SQLite syncs at its write-ahead log's checkpoints, not at each commit, and Tansu has no setting
//! that acknowledges only after an fsync, so it runs the relaxed rows only ([`SKIPS_DURABLE`]).
//! `rskafka` has no consumer-group API, so W4's group is not run on Tansu ([`SKIPS_GROUP`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::task::JoinSet;

use super::{Outcome, Placement, Proc, Reading, Workload};

/// The topic every workload uses.
const TOPIC: &str = "bench";
/// Bytes one fetch asks for at most.
const FETCH_BYTES: i32 = 1 << 20;
// Fetches wait for nothing (`max_wait_ms` 0, as NATS's pulls use `no_wait`): everything read was
// acknowledged before. Tansu 0.6 held each 1 MiB fetch for about half of `max_wait_ms` even with
// the bytes there (530 ms at 1,000 ms, 70–120 ms at 0 with four readers).

/// Why Tansu has no durable rows.
pub const SKIPS_DURABLE: &str = "not run: Tansu's SQLite engine syncs only at its WAL checkpoints (11 fsyncs for 60 \
     produce requests of W1, seen with strace), so it acknowledges before the fsync, and no setting changes that: it is \
     compared in relaxed rows only";
/// Why Tansu has no W4 group row.
pub const SKIPS_GROUP: &str = "not run: the harness's Kafka client (rskafka) has no consumer-group API";
/// How W4 would read from Tansu, for the report.
pub const GROUP_METHOD: &str = "not run (no consumer-group client)";

#[derive(Debug)]
pub struct Tansu {
    pub proc: Proc,
    port: u16,
}

impl Tansu {
    pub async fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Tansu> {
        std::fs::create_dir_all(data_dir)?;
        let port = super::free_port()?;
        let log = std::fs::File::create(data_dir.join("tansu.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("broker")
            .arg("--kafka-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--kafka-advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            // Tansu takes the database's path relative to its working directory.
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .current_dir(data_dir)
            .env("RUST_LOG", "warn");
        let proc = super::spawn_server(&mut command, binary, log.into(), port).await?;
        Ok(Tansu { proc, port })
    }

    async fn client(&self) -> anyhow::Result<Client> {
        ClientBuilder::new(vec![format!("127.0.0.1:{}", self.port)]).build().await.context("connecting to tansu")
    }

    async fn partitions(
        &self,
        client: &Client,
        partitions: &[u32],
    ) -> anyhow::Result<BTreeMap<u32, Arc<PartitionClient>>> {
        let mut out = BTreeMap::new();
        for &p in partitions {
            let partition = i32::try_from(p)?;
            let pc = client.partition_client(TOPIC, partition, UnknownTopicHandling::Retry).await?;
            out.insert(p, Arc::new(pc));
        }
        Ok(out)
    }

    /// Creates the topic with the workload's partitions.
    pub async fn prepare(&self, w: &Workload) -> anyhow::Result<()> {
        let client = self.client().await?;
        let partitions = i32::try_from(w.partitions)?;
        client.controller_client()?.create_topic(TOPIC, partitions, 1, 30_000).await.context("creating the topic")?;
        Ok(())
    }

    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        let owned = w.owned(i, w.producers);
        anyhow::ensure!(!owned.is_empty() || w.keyed(), "producer {i} owns no partition");
        let client = self.client().await?;
        let targets: Vec<u32> = if w.keyed() { (0..w.partitions).collect() } else { owned.clone() };
        let clients = Arc::new(self.partitions(&client, &targets).await?);
        let value = w.value().to_vec();
        let window = Arc::new(tokio::sync::Semaphore::new(w.window.max(1)));
        let start = Instant::now();
        let mut pacer = w.pacer(start)?;
        let mut inflight = JoinSet::new();
        let mut out = Outcome::new()?;
        out.measured_from = Some(w.measured_from(start));
        let mut per_partition = BTreeMap::<u32, u64>::new();
        // An acknowledged batch: its latency from when it was due (or sent), its records and bytes.
        let tally =
            |out: &mut Outcome, per_partition: &mut BTreeMap<u32, u64>, (sent, placement): (Instant, Placement)| {
                out.records += w.batch_records as u64;
                out.bytes += (w.batch_records * w.record_bytes) as u64;
                placement.count(w.batch_records, per_partition);
                out.record_latency(sent)
            };
        for n in 0..w.batches_for(i) {
            let due = w.due(start, n);
            if !super::turn(&mut pacer, n, deadline).await {
                break;
            }
            let permit = Arc::clone(&window).acquire_owned().await?;
            // Finished batches are counted as they come, so the set stays small.
            while let Some(done) = inflight.try_join_next() {
                tally(&mut out, &mut per_partition, done??)?;
            }
            let placement = w.placement(i, n, &owned);
            // The records of each partition in this batch, in order.
            let mut requests: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
            let timestamp = chrono::DateTime::from_timestamp_millis(i64::try_from(now_ms)?).context("the clock")?;
            match &placement {
                Placement::One(p) => {
                    let records = (0..w.batch_records)
                        .map(|_| Record { key: None, value: Some(value.clone()), headers: BTreeMap::new(), timestamp })
                        .collect();
                    requests.insert(*p, records);
                }
                Placement::Each(ps) => {
                    for (r, p) in ps.iter().enumerate() {
                        let key = w.key(i, n, r).into_bytes();
                        let record =
                            Record { key: Some(key), value: Some(value.clone()), headers: BTreeMap::new(), timestamp };
                        requests.entry(*p).or_default().push(record);
                    }
                }
            }
            let sent = due.unwrap_or_else(Instant::now);
            let clients = Arc::clone(&clients);
            inflight.spawn(async move {
                let mut acks = JoinSet::new();
                for (p, records) in requests {
                    let client = Arc::clone(clients.get(&p).context("no client for a partition")?);
                    let n = records.len();
                    acks.spawn(async move {
                        let offsets = client.produce(records, Compression::NoCompression).await?;
                        anyhow::ensure!(offsets.len() == n, "{n} records sent, {} offsets back", offsets.len());
                        Ok::<_, anyhow::Error>(())
                    });
                }
                while let Some(ack) = acks.join_next().await {
                    ack??;
                }
                drop(permit);
                Ok::<_, anyhow::Error>((sent, placement))
            });
        }
        while let Some(done) = inflight.join_next().await {
            tally(&mut out, &mut per_partition, done??)?;
        }
        out.per_partition = per_partition.into_iter().collect();
        Ok(out)
    }

    /// Reads each of `expected`'s partitions from offset 0 until its count has arrived, the
    /// partitions side by side; every offset must come once and in order.
    pub async fn consume(&self, _w: &Workload, _i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        let Reading { expected, deadline } = read;
        let client = self.client().await?;
        let partitions: Vec<u32> = expected.iter().map(|(p, _)| *p).collect();
        let clients = self.partitions(&client, &partitions).await?;
        let mut readers = JoinSet::new();
        for &(p, count) in expected {
            let client = Arc::clone(clients.get(&p).context("no client for a partition")?);
            readers.spawn(async move {
                let mut out = Outcome::new()?;
                let mut next = 0i64;
                let end = i64::try_from(count)?;
                while next < end && Instant::now() < deadline {
                    let t = Instant::now();
                    let (records, high_watermark) = client.fetch_records(next, 1..FETCH_BYTES, 0).await?;
                    anyhow::ensure!(
                        !records.is_empty() || high_watermark > next,
                        "partition {p}: {next} of {end} records arrived, the log ends at {high_watermark}"
                    );
                    out.record_latency(t)?;
                    let first = next;
                    for r in records.into_iter().filter(|r| r.offset >= first) {
                        anyhow::ensure!(r.offset == next, "partition {p}: offset {} where {next} was due", r.offset);
                        out.bytes += r.record.value.map_or(0, |v| v.len()) as u64;
                        out.records += 1;
                        next += 1;
                    }
                }
                Ok::<_, anyhow::Error>(out)
            });
        }
        let mut out = Outcome::new()?;
        while let Some(r) = readers.join_next().await {
            out.merge(r??)?;
        }
        Ok(out)
    }
}

/// `tansu --version` → `tansu 0.6.0` (first line).
pub fn version(binary: &Path) -> String {
    super::version_of(binary)
}
