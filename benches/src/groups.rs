//! Consumer-group benchmarks (issue #4): rebalance time, partitions moved by `sticky` when one
//! member leaves, group consume beside a plain partition fetch, and coordinator memory.
//!
//! Members are `Consumer.Subscribe` streams that acknowledge every assignment at once (so a
//! cooperative hand-over completes as fast as the protocol allows); the server is the release
//! `strata` binary on 127.0.0.1 port 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use strata_client::proto;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::harness::{Server, median, show};

const MB: f64 = 1e6;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: crate::harness::RunArgs,
    /// Members of the rebalance measurement.
    #[arg(long, default_value_t = 50)]
    members: usize,
    /// Partitions of the rebalance measurement.
    #[arg(long, default_value_t = 200)]
    partitions: u32,
    /// Groups (of 3 members each) of the memory measurement (default 10,000; 500 with --quick).
    #[arg(long)]
    groups: Option<usize>,
    /// Data consumed in the throughput measurement, MiB (default 256; 16 with --quick).
    #[arg(long)]
    consume_mib: Option<usize>,
    /// The `strata` binary (default: next to this one).
    #[arg(long)]
    strata: Option<PathBuf>,
}

type TopicPartition = (String, u32);

/// A group member on a `Consumer.Subscribe` stream: acknowledges every assignment, counts the
/// value bytes it receives, and publishes its latest assignment.
struct Member {
    tx: mpsc::Sender<proto::SubscribeRequest>,
    latest: watch::Receiver<Option<proto::Assignment>>,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    async fn join(
        channel: Channel,
        group: &str,
        topic: &str,
        assignor: &str,
        received: Arc<AtomicUsize>,
    ) -> anyhow::Result<Member> {
        use proto::subscribe_request::Kind as Req;
        use proto::subscribe_response::Kind as Resp;
        let (tx, rx) = mpsc::channel(16);
        let join = proto::JoinGroup {
            group: group.into(),
            topics: vec![topic.into()],
            assignor: assignor.into(),
            session_timeout_ms: 30_000,
            reset: proto::Position::Earliest as i32,
            max_records: 1000,
        };
        tx.send(proto::SubscribeRequest { kind: Some(Req::Join(join)) }).await?;
        let mut inbound = proto::consumer_client::ConsumerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let (latest_tx, latest) = watch::channel(None);
        let acks = tx.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                match msg.kind {
                    Some(Resp::Assignment(a)) => {
                        let ack = proto::AssignmentAck { generation: a.generation };
                        let _ = acks.send(proto::SubscribeRequest { kind: Some(Req::Ack(ack)) }).await;
                        latest_tx.send_replace(Some(a));
                    }
                    Some(Resp::Records(batch)) => {
                        let bytes: usize = batch
                            .records
                            .iter()
                            .filter_map(|r| r.record.as_ref()?.value.as_ref().map(|v| v.len()))
                            .sum();
                        received.fetch_add(bytes, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
        Ok(Member { tx, latest, task })
    }

    /// Closes the stream: the member leaves the group.
    fn leave(self) {
        drop(self.tx);
        self.task.abort();
    }
}

/// Every member's latest assignment, if the group has settled: no partition revoking, every
/// member at the same generation, and each of `partitions` partitions owned exactly once.
fn settled(members: &[Member], partitions: u32) -> Option<BTreeMap<TopicPartition, usize>> {
    let mut owners = BTreeMap::new();
    let mut generations = BTreeSet::new();
    for (i, m) in members.iter().enumerate() {
        let latest = m.latest.borrow();
        let a = latest.as_ref()?;
        if !a.revoking.is_empty() {
            return None;
        }
        generations.insert(a.generation);
        for tp in &a.partitions {
            if owners.insert((tp.topic.clone(), tp.partition), i).is_some() {
                return None;
            }
        }
    }
    (generations.len() == 1 && owners.len() == partitions as usize).then_some(owners)
}

/// Waits (polling every millisecond) until the members have settled.
async fn wait_settled(members: &[Member], partitions: u32) -> anyhow::Result<BTreeMap<TopicPartition, usize>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(owners) = settled(members, partitions) {
            return Ok(owners);
        }
        anyhow::ensure!(Instant::now() < deadline, "the group did not settle within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .connect()
        .await?)
}

async fn create_topic(url: &str, name: &str, partitions: u32) -> anyhow::Result<()> {
    let client = strata_client::Client::connect(url).await?;
    let config = [("flush".to_string(), "never".to_string())].into_iter().collect();
    client.admin().create_topic(name, partitions, config).await?;
    Ok(())
}

/// `members` members join `group` one right after the other; returns the time from sending the
/// last join until every member has its final assignment, and the members.
async fn join_all(
    channel: &Channel,
    group: &str,
    assignor: &str,
    members: usize,
    partitions: u32,
) -> anyhow::Result<(f64, Vec<Member>)> {
    let mut joined = Vec::with_capacity(members);
    let mut last_join = Instant::now();
    for _ in 0..members {
        last_join = Instant::now();
        joined.push(Member::join(channel.clone(), group, "wide", assignor, Arc::default()).await?);
    }
    wait_settled(&joined, partitions).await?;
    Ok((last_join.elapsed().as_secs_f64() * 1000.0, joined))
}

/// Produces `mib` MiB of 1 KiB records spread over the partitions of `topic`.
async fn fill(url: &str, topic: &str, partitions: u32, mib: usize) -> anyhow::Result<usize> {
    let mut producer = proto::producer_client::ProducerClient::connect(url.to_string()).await?;
    let requests = mib * 1024 / 100;
    let reqs: Vec<_> = (0..requests as u64)
        .map(|i| proto::ProduceRequest {
            batches: Vec::new(),
            topic: topic.into(),
            records: (0..100)
                .map(|_| proto::Record {
                    value: Some(bytes::Bytes::from_static(&[b'x'; 1024])),
                    partition: Some((i % u64::from(partitions)) as u32),
                    ..Default::default()
                })
                .collect(),
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
    Ok(requests * 100 * 1024)
}

/// Reads every partition of `topic` from offset 0 to its end with plain `Consumer.Fetch`
/// (decoded records, 1,000 per fetch). MB/s of values.
async fn plain_fetch(url: &str, topic: &str, partitions: u32) -> anyhow::Result<f64> {
    let client = strata_client::Client::connect(url).await?;
    let start = Instant::now();
    let mut bytes = 0usize;
    for p in 0..partitions {
        let mut offset = 0;
        loop {
            let page = client.fetch(topic, p, strata_client::Start::Offset(offset), 1000, Duration::ZERO).await?;
            if page.records.is_empty() {
                break;
            }
            bytes += page.records.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
            offset = page.next_offset;
        }
    }
    Ok(bytes as f64 / MB / start.elapsed().as_secs_f64())
}

/// One group member reads the whole topic from its earliest offsets. MB/s of values.
async fn group_consume(url: &str, topic: &str, group: &str, total: usize) -> anyhow::Result<f64> {
    let received = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let member = Member::join(connect(url).await?, group, topic, "sticky", Arc::clone(&received)).await?;
    let deadline = start + Duration::from_secs(300);
    while received.load(Ordering::Relaxed) < total {
        anyhow::ensure!(Instant::now() < deadline, "group consume did not finish within 300 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    member.leave();
    Ok(total as f64 / MB / elapsed)
}

/// Joins `groups` groups of 3 members over HTTP (16 at a time). Joins per second.
fn join_groups(url: &str, groups: usize) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (url, next) = (url.to_string(), Arc::clone(&next));
            std::thread::spawn(move || -> anyhow::Result<()> {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(true).build().into();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= groups * 3 {
                        return Ok(());
                    }
                    let body = br#"{"topics": ["idle"], "session_timeout_ms": 300000}"#;
                    agent
                        .post(&format!("{url}/v1/groups/g{}/members", i / 3))
                        .header("content-type", "application/json")
                        .send(&body[..])
                        .with_context(|| format!("joining group g{}", i / 3))?
                        .body_mut()
                        .read_to_vec()?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| anyhow::anyhow!("a join worker panicked"))??;
    }
    Ok((groups * 3) as f64 / start.elapsed().as_secs_f64())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> anyhow::Result<()> {
    let strata = crate::harness::strata_binary(args.strata.as_deref())?;
    let root = args.run.data_root()?;
    let runs = args.run.runs();
    let quick = args.run.quick;
    let (members, partitions) = (args.members, args.partitions);
    let groups = args.groups.unwrap_or(if quick { 500 } else { 10_000 });
    let consume_mib = args.consume_mib.unwrap_or(if quick { 16 } else { 256 });
    let loadavg = crate::harness::loadavg();
    println!("# group benchmarks — {runs} run(s), load average at start: {loadavg}");
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut json: Vec<String> = Vec::new();

    // 1. Rebalance: members join at once; time from the last join until every member has its
    //    final assignment. With sticky, then one member leaves: how many partitions move.
    let data = root.path().join("rebalance");
    let server = Server::start(&strata, &data)?;
    create_topic(&server.url, "wide", partitions).await?;
    let channel = connect(&server.url).await?;
    for assignor in ["sticky", "range", "roundrobin"] {
        let (mut settle_ms, mut leave_ms, mut moved) = (vec![], vec![], vec![]);
        for r in 0..runs {
            let (ms, mut joined) =
                join_all(&channel, &format!("{assignor}-{r}"), assignor, members, partitions).await?;
            settle_ms.push(ms);
            let before = wait_settled(&joined, partitions).await?;
            // Member 0 leaves; indexes of later members shift down by one.
            let gone = joined.remove(0);
            let owned_by_leaver = before.values().filter(|&&i| i == 0).count();
            gone.leave();
            let left_at = Instant::now();
            let after = wait_settled(&joined, partitions).await?;
            leave_ms.push(left_at.elapsed().as_secs_f64() * 1000.0);
            let changed = before.iter().filter(|&(tp, &i)| i == 0 || after.get(tp) != Some(&(i - 1))).count();
            moved.push((changed, owned_by_leaver));
            for m in joined {
                m.leave();
            }
        }
        let moved_text: Vec<String> = moved.iter().map(|(c, o)| format!("{c} (leaver owned {o})")).collect();
        rows.push([
            format!("rebalance: {members} members join over {partitions} partitions, `{assignor}`"),
            format!("{} from the last join until every member has its assignment", show(&settle_ms, "ms")),
            format!(
                "one member leaves: settled in {}; partitions moved: {}",
                show(&leave_ms, "ms"),
                moved_text.join(", ")
            ),
            format!("target < 500 ms; median {:.0}", median(settle_ms.clone())),
        ]);
        json.push(format!(
            "\"rebalance_{assignor}\":{{\"settle_ms\":{settle_ms:?},\"leave_settle_ms\":{leave_ms:?},\"moved\":{:?}}}",
            moved.iter().map(|(c, _)| *c).collect::<Vec<_>>()
        ));
    }
    drop(channel);
    server.stop()?;

    // 2. Group consume vs plain fetch of the same 4 partitions, 1 KiB records.
    let data = root.path().join("consume");
    let server = Server::start(&strata, &data)?;
    create_topic(&server.url, "fanin", 4).await?;
    let total = fill(&server.url, "fanin", 4, consume_mib).await?;
    let (mut plain, mut group) = (vec![], vec![]);
    for r in 0..runs {
        plain.push(plain_fetch(&server.url, "fanin", 4).await?);
        group.push(group_consume(&server.url, "fanin", &format!("readers-{r}"), total).await?);
    }
    server.stop()?;
    rows.push([
        format!("group consume, 1 member, 4 partitions, {consume_mib} MiB of 1 KiB records (Subscribe stream)"),
        show(&group, "MB/s"),
        format!("plain Consumer.Fetch of the same partitions, 1,000 records per fetch: {}", show(&plain, "MB/s")),
        format!("{:.2}× plain fetch (target ≥ 0.9)", median(group.clone()) / median(plain.clone())),
    ]);
    json.push(format!("\"group_consume\":{{\"mb_s\":{group:?},\"plain_fetch_mb_s\":{plain:?}}}"));

    // 3. Coordinator memory: groups of 3 members (persisted through Raft) on an idle topic.
    let data = root.path().join("memory");
    let server = Server::start(&strata, &data)?;
    create_topic(&server.url, "idle", 1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty = server.rss_mib()?;
    let url = server.url.clone();
    let joins_per_s = tokio::task::spawn_blocking(move || join_groups(&url, groups)).await??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let full = server.rss_mib()?;
    server.stop()?;
    rows.push([
        format!("coordinator memory, {groups} groups × 3 members"),
        format!("{:.0} MiB more RSS ({full:.0} MiB in all)", full - empty),
        format!("server with the topic and no groups: {empty:.0} MiB; {joins_per_s:.0} joins/s over HTTP"),
        format!("target ≤ 200 MiB for 10,000 groups; {:.1} KiB per group", (full - empty) * 1024.0 / groups as f64),
    ]);
    json.push(format!(
        "\"coordinator_memory\":{{\"groups\":{groups},\"rss_mib\":{full:.1},\"empty_rss_mib\":{empty:.1},\"joins_per_s\":{joins_per_s:.0}}}"
    ));

    println!();
    println!("| measurement | Strata | same-run comparison | ratio / target |");
    println!("| --- | --- | --- | --- |");
    for [a, b, c, d] in &rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    let doc = format!("{{\"quick\":{quick},\"runs\":{runs},\"loadavg\":\"{loadavg}\",{}}}\n", json.join(","));
    let out_path = args.run.write_results("groups", &doc)?;
    println!("\nresults written to {}", out_path.display());
    Ok(())
}
