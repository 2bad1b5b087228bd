//! Strata under the common load generator: the release `strata` binary (started by
//! [`crate::harness::Server`]), produce over gRPC `ProduceStream` (pipelined requests, acks in
//! order; each request carries batches the client encoded, as `strata-client`'s producer sends
//! them), consume through the raw batch stream (`GET .../batches`, [`read_partition`]) decoded
//! in the client.
//!
//! Durable = topic `flush=always` (acked after fdatasync, group commit); relaxed =
//! `flush=interval`, `flush_interval_ms=1000` (like Redis `everysec`).
//!
//! A group (W4): each member is `strata-client`'s [`GroupConsumer`] on its own connection — one
//! `Consumer.Subscribe` stream on which the server pushes up to 1,000 records per message, the
//! fastest of Strata's group doors (the HTTP member fetch encodes JSON per record).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use strata_client::{GroupConfig, GroupConsumer, GroupRecord, RebalanceListener, TopicPartition, proto};
use strata_storage::{BatchBuilder, Clock, Compression, SystemClock};
use tokio_stream::StreamExt;

use super::group::GroupProgress;
use super::{Mode, Outcome, Proc, Reading, Workload};
use crate::harness::Server;

const TOPIC: &str = "bench";
/// Distinct requests a keyed producer (W6) cycles through.
const KEYED_REQUESTS: u64 = 32;

const GROUP: &str = "bench-group";

/// How W4 reads from Strata, for the report.
pub const GROUP_METHOD: &str = "4 `Consumer.Subscribe` streams (strata-client `GroupConsumer`, sticky assignor), \
     ≤ 1,000 records per pushed message, every poll's positions committed with `commit_async`, revoked \
     partitions committed before they move; the 4 joins and rebalances are inside the timed phase";

/// Commits the positions of partitions that are about to move, so their next owner starts right
/// after the last record this member received (the client's documented at-least-once recipe).
struct CommitOnRevoke;

impl RebalanceListener for CommitOnRevoke {
    fn on_revoked(
        &mut self,
        revoked: &[TopicPartition],
        positions: &BTreeMap<TopicPartition, u64>,
    ) -> Vec<(TopicPartition, u64)> {
        revoked.iter().filter_map(|tp| positions.get(tp).map(|&o| (tp.clone(), o))).collect()
    }
}

/// Counts what a poll returned into the member's outcome and the group's progress.
fn take(out: &mut Outcome, records: &[GroupRecord], progress: &GroupProgress) {
    for r in records {
        out.seen.record(r.partition(), u128::from(r.offset()));
        out.bytes += r.record.value.as_ref().map_or(0, |v| v.len()) as u64;
    }
    out.records += records.len() as u64;
    progress.add(records.len() as u64);
}

#[derive(Debug)]
pub struct Strata {
    pub server: Server,
    pub proc: Proc,
    /// The server's Unix socket (`unix:PATH`), where batch streams pass descriptors.
    pub local_url: String,
}

impl Strata {
    pub fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<Strata> {
        let socket = data_dir.with_extension("sock");
        let path = socket.to_str().context("the socket path is not UTF-8")?;
        let server = Server::start_with_env(binary, data_dir, &[("STRATA_UNIX_SOCKET", path)])?;
        let proc = Proc { child: None, pid: server.pid() };
        Ok(Strata { server, proc, local_url: format!("unix:{path}") })
    }

    pub async fn prepare(&self, w: &Workload, mode: Mode) -> anyhow::Result<()> {
        let client = strata_client::Client::connect(&self.server.url).await?;
        let config = match mode {
            Mode::Durable => vec![("flush".to_string(), "always".to_string())],
            Mode::Relaxed => vec![
                ("flush".to_string(), "interval".to_string()),
                ("flush_interval_ms".to_string(), "1000".to_string()),
            ],
        };
        client.admin().create_topic(TOPIC, w.partitions, config.into_iter().collect()).await?;
        Ok(())
    }

    /// One `ProduceStream` per producer; at most `window` requests unacknowledged.
    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        let mut client = proto::producer_client::ProducerClient::connect(self.server.url.clone())
            .await?
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let partitions = w.owned(i, w.producers);
        anyhow::ensure!(!partitions.is_empty(), "producer {i} owns no partition");
        let value = w.value();
        let keyed = w.keyed();
        // As `strata-client`'s producer sends them: each partition's records encoded by the client
        // into one batch in the storage's format, which the server checks and appends as it is.
        // Keyed records (W6) are partitioned here with murmur2, as the server and Kafka's clients
        // pick partitions, so one request carries a batch for each partition its keys reach.
        let batch_for = |n: u64| -> anyhow::Result<Vec<proto::RecordBatch>> {
            let mut builders = BTreeMap::<u32, BatchBuilder>::new();
            let now = SystemClock.now_ms();
            for r in 0..w.batch_records {
                let (key, partition) = if keyed {
                    let key = w.key(i, n, r);
                    let p = strata_client::partition_for_key(key.as_bytes(), w.partitions);
                    (Some(key), p)
                } else {
                    (None, partitions[n as usize % partitions.len()])
                };
                builders.entry(partition).or_insert_with(|| BatchBuilder::new(Compression::None)).push(
                    now,
                    key.as_deref().map(str::as_bytes),
                    Some(&value),
                    &[],
                );
            }
            builders
                .into_iter()
                .map(|(partition, b)| Ok(proto::RecordBatch { partition, data: b.build()?.into() }))
                .collect()
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::ProduceRequest>(w.window.max(1));
        let window = Arc::new(tokio::sync::Semaphore::new(w.window.max(1)));
        // Send times in request order: acks come back in order on one stream. A std Mutex: held
        // for a push or pop only, never across an await.
        let sent: Arc<Mutex<VecDeque<(Instant, u32)>>> = Arc::default();
        let batches = w.batches_for(i);
        // Built ahead, before the clock starts, so the feeder's pace is not the encoder's. Keyed,
        // a request is ~1 MiB of encoded batches: a few dozen distinct ones (their keys cycle
        // every `KEYED_REQUESTS` requests, not every `super::KEY_PATTERNS`) keep that memory small;
        // building all of them took most of a short run's time and memory.
        let distinct = if keyed { KEYED_REQUESTS } else { 4 * partitions.len() as u64 };
        let make = (0..batches.min(distinct)).map(batch_for).collect::<anyhow::Result<Vec<_>>>()?;
        let start = Instant::now();
        let feeder = {
            let (window, sent, w) = (Arc::clone(&window), Arc::clone(&sent), w.clone());
            tokio::spawn(async move {
                let mut pacer = w.pacer(start)?;
                for n in 0..batches {
                    let due = w.due(start, n);
                    if !super::turn(&mut pacer, n, deadline).await {
                        break;
                    }
                    window.acquire().await?.forget();
                    let batches = make[n as usize % make.len()].clone();
                    let partition = batches.first().map_or(0, |b| b.partition);
                    let req = proto::ProduceRequest {
                        batches,
                        topic: TOPIC.into(),
                        records: Vec::new(),
                        acks: proto::Acks::Leader as i32,
                        request_id: n,
                        producer: None,
                        expected_offset: None,
                    };
                    sent.lock()
                        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                        .push_back((due.unwrap_or_else(Instant::now), partition));
                    if tx.send(req).await.is_err() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            })
        };
        let mut out = Outcome::new()?;
        out.measured_from = Some(w.measured_from(start));
        let mut per_partition = std::collections::BTreeMap::<u32, u64>::new();
        let mut acks = client.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        while let Some(ack) = acks.next().await {
            let ack = ack?;
            anyhow::ensure!(ack.error.is_none(), "produce failed: {:?}", ack.error);
            let acked: usize = ack.batches.iter().map(|b| b.count as usize).sum();
            anyhow::ensure!(acked == w.batch_records, "ack for {acked} of {} records", w.batch_records);
            let (t, partition) =
                sent.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.pop_front().unwrap_or((Instant::now(), 0));
            out.record_latency(t)?;
            out.records += w.batch_records as u64;
            out.bytes += (w.batch_records * w.record_bytes) as u64;
            if keyed {
                for b in &ack.batches {
                    *per_partition.entry(b.partition).or_default() += u64::from(b.count);
                }
            } else {
                *per_partition.entry(partition).or_default() += w.batch_records as u64;
            }
            window.add_permits(1);
        }
        feeder.await??;
        out.per_partition = per_partition.into_iter().collect();
        Ok(out)
    }

    /// Reads each of the consumer's partitions from offset 0 through the raw batch stream (the
    /// records are decoded and counted here); a latency sample per batch received.
    pub async fn consume(&self, _w: &Workload, _i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        self.consume_from(&self.server.url, read).await
    }

    /// [`Strata::consume`] through the Unix socket: the client reads the segment files through
    /// the descriptors the server passes.
    pub async fn consume_local(&self, read: Reading<'_>) -> anyhow::Result<Outcome> {
        self.consume_from(&self.local_url, read).await
    }

    async fn consume_from(&self, url: &str, read: Reading<'_>) -> anyhow::Result<Outcome> {
        let Reading { expected, deadline } = read;
        let client = strata_client::Client::connect(url).await?;
        let mut out = Outcome::new()?;
        for &(partition, end) in expected {
            let mut t = Instant::now();
            read_partition(&client, TOPIC, partition, Some(end), Some(deadline), |records| {
                out.record_latency(t)?;
                t = Instant::now();
                out.records += records.len() as u64;
                out.bytes += records.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64).sum::<u64>();
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// Member `i` of W4's group: joins, polls until the whole group is done (committing each
    /// poll's positions asynchronously), commits its final positions, waits for the other members
    /// to commit theirs (a member leaving earlier would start a rebalance and stale their
    /// commits), then leaves.
    pub async fn group_member(&self, w: &Workload, _i: usize, progress: Arc<GroupProgress>) -> anyhow::Result<Outcome> {
        let client = strata_client::Client::connect(&self.server.url).await?;
        let config = GroupConfig {
            max_records: w.batch_records as u32,
            auto_commit: None,
            session_timeout: Duration::from_secs(30),
            ..GroupConfig::new(GROUP, [TOPIC])
        };
        let mut consumer = client.group_consumer_with_listener(config, CommitOnRevoke).await?;
        progress.joined();
        // The first commit refused for another reason than a rebalance in flight. A std Mutex:
        // set from a callback, read at the end, never held across an await.
        let refused: Arc<Mutex<Option<String>>> = Arc::default();
        let mut out = Outcome::new()?;
        while !progress.done() {
            progress.check()?;
            let t = Instant::now();
            let records = consumer.poll(Duration::from_millis(20)).await?;
            if records.is_empty() {
                continue;
            }
            out.record_latency(t)?;
            take(&mut out, &records, &progress);
            let refused = Arc::clone(&refused);
            consumer
                .commit_async(move |r| {
                    if let Err(e) = r
                        && !e.is_stale_generation()
                        && let Ok(mut first) = refused.lock()
                    {
                        first.get_or_insert_with(|| e.to_string());
                    }
                })
                .await;
        }
        final_commit(&mut consumer, &mut out, &progress).await?;
        if let Some(e) = refused.lock().map_err(|_| anyhow::anyhow!("lock poisoned"))?.take() {
            anyhow::bail!("a commit was refused: {e}");
        }
        progress.finish_and_wait().await?;
        consumer.close().await?;
        Ok(out)
    }

    /// The group's committed offsets are at the end of every partition.
    pub async fn verify_group(&self, expected: &[(u32, u64)]) -> anyhow::Result<&'static str> {
        let client = strata_client::Client::connect(&self.server.url).await?;
        let info = client.admin().describe_group(GROUP).await?;
        for &(p, n) in expected {
            let committed =
                info.offsets.iter().find(|o| o.topic == TOPIC && o.partition == p).and_then(|o| o.committed);
            anyhow::ensure!(committed == Some(n), "partition {p}: the group committed {committed:?}, expected {n}");
        }
        Ok("the group's committed offsets are at the end of every partition")
    }
}

/// Commits the member's final positions; a commit refused because a rebalance is still in
/// flight is retried after a poll has handled the new assignment.
async fn final_commit(consumer: &mut GroupConsumer, out: &mut Outcome, progress: &GroupProgress) -> anyhow::Result<()> {
    for _ in 0..100 {
        match consumer.commit().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_stale_generation() => {
                progress.check()?;
                // Any record this returns is counted: a duplicate fails the exactly-once check.
                let records = consumer.poll(Duration::from_millis(10)).await?;
                take(out, &records, progress);
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the final commit was refused 100 times (stale generation)")
}

/// Reads `topic/partition` from offset 0 through the raw batch stream ([`Client::read_batches`]),
/// one response after another, decoding every record: `each` gets each batch's records below
/// `end` (in order, none twice). Without `end`, reads until a response comes back empty; with a
/// `deadline`, stops at the first batch after it.
///
/// [`Client::read_batches`]: strata_client::Client::read_batches
pub(crate) async fn read_partition(
    client: &strata_client::Client,
    topic: &str,
    partition: u32,
    end: Option<u64>,
    deadline: Option<Instant>,
    mut each: impl FnMut(&[strata_storage::Record]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut offset = 0u64;
    while end.is_none_or(|end| offset < end) {
        let mut reader = client
            .read_batches(topic, partition, strata_client::Start::Offset(offset), 1 << 30, Duration::ZERO)
            .await?;
        let mut any = false;
        while let Some(batch) = reader.next_batch().await? {
            any = true;
            let mut records = batch.records()?;
            records.retain(|r| r.offset >= offset && end.is_none_or(|end| r.offset < end));
            each(&records)?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
        }
        let next = reader.next_offset();
        match (any, end) {
            (false, None) => break,
            (false, Some(end)) => anyhow::bail!("partition {partition} ended at {offset} of {end}"),
            _ => offset = next,
        }
    }
    Ok(())
}
