//! The systems `strata-bench all` drives side by side, with one load-generator design for all:
//! async Rust, one connection per producer or consumer, TCP_NODELAY, batches of `batch_records`
//! pipelined up to `window` batches in flight, each batch's latency timed from when it was due
//! (open loop) or sent (closed loop) to its last acknowledgement.
//!
//! ```text
//!   all.rs ──(Workload, Mode)──▶ Peer::start ──▶ Instance (its own process, fresh data dir)
//!            producers: Instance::produce  ──▶  Outcome { records, bytes, latency }
//!            consumers: Instance::consume  ──▶  Outcome
//!            W4, one group: Instance::prepare_group, then members Instance::group_member
//!                           ──▶ Outcome { .., seen } ──▶ group::Seen::check (exactly once)
//!                           ──▶ Instance::verify_group (the group's acks / commits landed)
//! ```
//!
//! Each system speaks its own protocol with its own best practice: Strata's gRPC
//! `ProduceStream` / the raw batch stream, Redis Streams' pipelined `XADD` / `XREADGROUP` + `XACK`,
//! NATS JetStream's asynchronous publish (acks in windows) / pull consumer with `AckAll`, Tansu's
//! Kafka `Produce` requests pipelined on one connection / `Fetch` (through `rskafka`), RabbitMQ
//! Streams' `Publish` frames with confirms / `Subscribe` with credits (stream protocol). In a
//! group (W4): Strata's `Consumer.Subscribe` members (`strata-client`'s `GroupConsumer`), Redis's
//! consumers of one consumer group, JetStream's durable pull consumer shared by every member
//! (Tansu and RabbitMQ: not run, see [`Peer::skips`]).

pub(crate) mod group;
pub(crate) mod nats;
pub(crate) mod rabbitmq;
pub(crate) mod redis;
pub(crate) mod strata;
pub(crate) mod tansu;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use group::{GroupProgress, Seen};
use hdrhistogram::Histogram;

/// Durability on both sides of a comparison (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Acknowledged after fsync.
    Durable,
    /// Acknowledged from memory; flushed about once a second (or later).
    Relaxed,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Relaxed => "relaxed",
        }
    }
}

/// Distinct batches of keys a producer cycles through in a keyed workload.
pub const KEY_PATTERNS: u64 = 1000;

/// Where the records of one batch went.
#[derive(Debug, Clone)]
pub enum Placement {
    /// All of them to this partition.
    One(u32),
    /// Record `r` to partition `[r]` (keyed).
    Each(Vec<u32>),
}

impl Placement {
    /// Adds the batch's `records` to the counts per partition.
    pub fn count(&self, records: usize, per_partition: &mut std::collections::BTreeMap<u32, u64>) {
        match self {
            Placement::One(p) => *per_partition.entry(*p).or_default() += records as u64,
            Placement::Each(ps) => {
                for p in ps {
                    *per_partition.entry(*p).or_default() += 1;
                }
            }
        }
    }
}

/// What one produce or consume run does.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub record_bytes: usize,
    /// Records in total across producers (the run may stop earlier at `seconds`).
    pub records: u64,
    pub batch_records: usize,
    pub partitions: u32,
    pub producers: usize,
    pub consumers: usize,
    /// Batches in flight per producer.
    pub window: usize,
    /// Upper bound on the produce phase.
    pub seconds: f64,
    /// Open loop: total records/s offered (batches due at fixed times); `None` = as fast as acked.
    pub rate: Option<f64>,
    /// The consumers are the members of one consumer group sharing every partition (W4), rather
    /// than readers of fixed partitions.
    pub group: bool,
    /// Open loop: seconds of load at the offered rate before latencies count (the server's and
    /// the machine's start-up transients: new files, first page faults, threads starting).
    pub warmup: f64,
}

impl Workload {
    /// The partitions producer (or consumer) `i` of `n` owns: `i, i + n, i + 2n, ...`.
    pub fn owned(&self, i: usize, n: usize) -> Vec<u32> {
        (0..self.partitions).filter(|p| *p as usize % n.max(1) == i).collect()
    }

    /// Many partitions (W6): records are keyed, and each goes to the partition its key hashes to
    /// (Kafka's murmur2, as Strata's server and a Kafka client pick it), so one batch spreads
    /// over hundreds of partitions, for every system alike.
    pub fn keyed(&self) -> bool {
        self.partitions > 64
    }

    /// The key of record `r` of producer `i`'s batch `n` in a keyed workload. Keys repeat every
    /// [`KEY_PATTERNS`] batches, so that batches can be built ahead.
    pub fn key(&self, i: usize, n: u64, r: usize) -> String {
        format!("k{i}-{}-{r}", n % KEY_PATTERNS)
    }

    /// The partition of each record of producer `i`'s batch `n` in a keyed workload.
    pub fn key_partitions(&self, i: usize, n: u64) -> Vec<u32> {
        (0..self.batch_records)
            .map(|r| strata_client::partition_for_key(self.key(i, n, r).as_bytes(), self.partitions))
            .collect()
    }

    /// Where producer `i`'s batch `n` goes: one of its own partitions in turn, or (keyed) each
    /// record to its key's partition.
    pub fn placement(&self, i: usize, n: u64, owned: &[u32]) -> Placement {
        if self.keyed() {
            Placement::Each(self.key_partitions(i, n))
        } else {
            Placement::One(owned[n as usize % owned.len().max(1)])
        }
    }

    /// Batches producer `i` sends at most.
    pub fn batches_for(&self, _i: usize) -> u64 {
        let per_producer = self.records / self.producers.max(1) as u64;
        per_producer.div_ceil(self.batch_records as u64).max(1)
    }

    /// When batch `n` of a producer is due, for open-loop runs.
    pub fn due(&self, start: Instant, n: u64) -> Option<Instant> {
        let rate = self.rate?;
        let batches_per_s = rate / self.producers.max(1) as f64 / self.batch_records as f64;
        Some(start + Duration::from_secs_f64(n as f64 / batches_per_s.max(1e-9)))
    }

    /// For open-loop runs: ticks at each batch's [`Workload::due`] time, finer than tokio's timer.
    pub fn pacer(&self, start: Instant) -> anyhow::Result<Option<crate::pacer::Pacer>> {
        if self.rate.is_none() {
            return Ok(None);
        }
        let w = self.clone();
        Ok(Some(crate::pacer::Pacer::start(move |n| w.due(start, n).unwrap_or(start))?))
    }

    /// When a producer that started at `start` begins recording latencies.
    pub fn measured_from(&self, start: Instant) -> Instant {
        start + Duration::from_secs_f64(self.warmup)
    }

    /// The record value every system stores (the same bytes everywhere).
    pub fn value(&self) -> bytes::Bytes {
        bytes::Bytes::from((0..self.record_bytes).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
    }
}

/// What a producer or consumer did.
#[derive(Debug)]
pub struct Outcome {
    pub records: u64,
    pub bytes: u64,
    /// Per batch (produce) or per fetch (consume), microseconds.
    pub latency: Histogram<u64>,
    /// Records per partition, for the consumers to know where the end is.
    pub per_partition: Vec<(u32, u64)>,
    /// Which records a group member received (W4).
    pub seen: Seen,
    /// Latencies of batches sent (or due) before this are not recorded (a warm-up).
    pub measured_from: Option<Instant>,
}

impl Outcome {
    pub fn new() -> anyhow::Result<Outcome> {
        Ok(Outcome {
            records: 0,
            bytes: 0,
            latency: Histogram::new(3)?,
            per_partition: Vec::new(),
            seen: Seen::default(),
            measured_from: None,
        })
    }

    pub fn merge(&mut self, other: Outcome) -> anyhow::Result<()> {
        self.records += other.records;
        self.bytes += other.bytes;
        self.latency.add(other.latency)?;
        // Keyed producers (W6) share partitions: their counts add up.
        let mut counts: std::collections::BTreeMap<u32, u64> = self.per_partition.drain(..).collect();
        for (p, n) in other.per_partition {
            *counts.entry(p).or_default() += n;
        }
        self.per_partition = counts.into_iter().collect();
        self.seen.merge(other.seen);
        Ok(())
    }

    pub fn record_latency(&mut self, since: Instant) -> anyhow::Result<()> {
        if self.measured_from.is_some_and(|from| since < from) {
            return Ok(());
        }
        self.latency.record((since.elapsed().as_micros() as u64).max(1))?;
        Ok(())
    }
}

/// The systems, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Strata,
    Redis,
    Nats,
    Tansu,
    RabbitMq,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Strata => "strata",
            Peer::Redis => "redis",
            Peer::Nats => "nats",
            Peer::Tansu => "tansu",
            Peer::RabbitMq => "rabbitmq",
        }
    }

    /// How this system's group reads in W4, for the report.
    pub fn group_method(self) -> &'static str {
        match self {
            Peer::Strata => strata::GROUP_METHOD,
            Peer::Redis => redis::GROUP_METHOD,
            Peer::Nats => nats::GROUP_METHOD,
            Peer::Tansu => tansu::GROUP_METHOD,
            Peer::RabbitMq => rabbitmq::GROUP_METHOD,
        }
    }

    /// Why this system has no row for a workload in `mode` (a group's, when `group`), if it has
    /// none.
    pub fn skips(self, group: bool, mode: Mode) -> Option<&'static str> {
        match self {
            Peer::Tansu if mode == Mode::Durable => Some(tansu::SKIPS_DURABLE),
            Peer::Tansu if group => Some(tansu::SKIPS_GROUP),
            Peer::RabbitMq if mode == Mode::Durable => Some(rabbitmq::SKIPS_DURABLE),
            Peer::RabbitMq if group => Some(rabbitmq::SKIPS_GROUP),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Peer> {
        Ok(match s {
            "strata" => Peer::Strata,
            "redis" => Peer::Redis,
            "nats" => Peer::Nats,
            "tansu" => Peer::Tansu,
            "rabbitmq" => Peer::RabbitMq,
            other => anyhow::bail!("unknown system {other:?} (strata, redis, nats, tansu, rabbitmq)"),
        })
    }
}

/// A running system under test.
#[derive(Debug)]
pub enum Instance {
    Strata(strata::Strata),
    Redis(redis::Redis),
    Nats(nats::Nats),
    Tansu(tansu::Tansu),
    RabbitMq(rabbitmq::RabbitMq),
}

/// What a consumer reads: `expected` records of each of its partitions from the start, or fewer
/// when `deadline` passes first (each partition then read from its start without a gap).
#[derive(Debug, Clone, Copy)]
pub struct Reading<'a> {
    pub expected: &'a [(u32, u64)],
    pub deadline: Instant,
}

impl Instance {
    pub fn proc(&self) -> &Proc {
        match self {
            Instance::Strata(s) => &s.proc,
            Instance::Redis(r) => &r.proc,
            Instance::Nats(n) => &n.proc,
            Instance::Tansu(t) => &t.proc,
            Instance::RabbitMq(r) => &r.proc,
        }
    }

    /// Creates the workload's partitions (topic, stream keys, JetStream streams).
    pub async fn prepare(&self, w: &Workload, mode: Mode) -> anyhow::Result<()> {
        match self {
            Instance::Strata(s) => s.prepare(w, mode).await,
            Instance::Redis(r) => r.prepare(w).await,
            Instance::Nats(n) => n.prepare(w).await,
            Instance::Tansu(t) => t.prepare(w).await,
            Instance::RabbitMq(r) => r.prepare(w).await,
        }
    }

    /// Producer `i` of the workload, until its share is acknowledged or `deadline`.
    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        match self {
            Instance::Strata(s) => s.produce(w, i, deadline).await,
            Instance::Redis(r) => r.produce(w, i, deadline).await,
            Instance::Nats(n) => n.produce(w, i, deadline).await,
            Instance::Tansu(t) => t.produce(w, i, deadline).await,
            Instance::RabbitMq(r) => r.produce(w, i, deadline).await,
        }
    }

    /// Consumer `i` reads what `read` asks for.
    pub async fn consume(&self, w: &Workload, i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        match self {
            Instance::Strata(s) => s.consume(w, i, read).await,
            Instance::Redis(r) => r.consume(w, i, read).await,
            Instance::Nats(n) => n.consume(w, i, read).await,
            Instance::Tansu(t) => t.consume(w, i, read).await,
            Instance::RabbitMq(r) => r.consume(w, i, read).await,
        }
    }

    /// Sets up the group W4's members share (Redis: the consumer group on every stream; NATS:
    /// a durable pull consumer per stream; Strata: nothing, members create it by joining).
    pub async fn prepare_group(&self, w: &Workload) -> anyhow::Result<()> {
        match self {
            Instance::Strata(_) => Ok(()),
            Instance::Redis(r) => r.prepare_group(w).await,
            Instance::Nats(n) => n.prepare_group(w).await,
            Instance::Tansu(_) => anyhow::bail!(tansu::SKIPS_GROUP),
            Instance::RabbitMq(_) => anyhow::bail!(rabbitmq::SKIPS_GROUP),
        }
    }

    /// Member `i` of the group reads (and acknowledges or commits) until `progress` says the
    /// whole group is done; its outcome says which records it received.
    pub async fn group_member(&self, w: &Workload, i: usize, progress: Arc<GroupProgress>) -> anyhow::Result<Outcome> {
        match self {
            Instance::Strata(s) => s.group_member(w, i, progress).await,
            Instance::Redis(r) => r.group_member(w, i, progress).await,
            Instance::Nats(n) => n.group_member(w, i, progress).await,
            Instance::Tansu(_) => anyhow::bail!(tansu::SKIPS_GROUP),
            Instance::RabbitMq(_) => anyhow::bail!(rabbitmq::SKIPS_GROUP),
        }
    }

    /// Checks the group's own bookkeeping after the members are done (Strata: committed offsets
    /// at the end of every partition; Redis: nothing pending; NATS: the ack floor at the end).
    /// Returns what was checked, in words.
    pub async fn verify_group(&self, expected: &[(u32, u64)]) -> anyhow::Result<&'static str> {
        match self {
            Instance::Strata(s) => s.verify_group(expected).await,
            Instance::Redis(r) => r.verify_group(expected).await,
            Instance::Nats(n) => n.verify_group(expected).await,
            Instance::Tansu(_) => anyhow::bail!(tansu::SKIPS_GROUP),
            Instance::RabbitMq(_) => anyhow::bail!(rabbitmq::SKIPS_GROUP),
        }
    }

    /// Whether record ids are dense per partition (offsets, stream sequences), so the
    /// exactly-once check can also look for gaps.
    pub fn dense_ids(&self) -> bool {
        !matches!(self, Instance::Redis(_))
    }

    /// What the exactly-once check calls this system's record ids.
    pub fn id_name(&self) -> &'static str {
        match self {
            Instance::Strata(_) | Instance::Tansu(_) | Instance::RabbitMq(_) => "offsets",
            Instance::Redis(_) => "stream entry ids",
            Instance::Nats(_) => "stream sequences (from 1, counted from 0)",
        }
    }
}

/// Waits until batch `n` of a producer may go (in an open-loop run, until `pacer` says it is
/// due); false once the produce phase's `deadline` has passed, and the batch is not sent.
pub async fn turn(pacer: &mut Option<crate::pacer::Pacer>, n: u64, deadline: Instant) -> bool {
    if let Some(pacer) = pacer.as_mut() {
        pacer.until(n).await;
    }
    Instant::now() < deadline
}

/// A server process this harness started: CPU and memory from /proc, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Option<Child>,
    pub pid: u32,
}

impl Proc {
    pub fn of(child: Child) -> Proc {
        let pid = child.id();
        Proc { child: Some(child), pid }
    }

    /// User + system CPU seconds, including threads and reaped children.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    /// Peak resident set size (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
        Ok(line.split_whitespace().nth(1).context("bad VmHWM")?.parse::<f64>()? / 1024.0)
    }

    /// SIGTERM, then wait (SIGKILL after 10 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Checks the process is still running (a peer that died mid-run fails the run).
    pub fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("server process exited: {status}");
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts the server `command` runs (`binary`; its stderr to `log`) and waits until it listens on
/// `port`.
pub async fn spawn_server(
    command: &mut std::process::Command,
    binary: &Path,
    log: std::process::Stdio,
    port: u16,
) -> anyhow::Result<Proc> {
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut proc = Proc::of(child);
    wait_for_port(&mut proc, port, Duration::from_secs(10)).await?;
    Ok(proc)
}

/// Waits until `port` accepts connections, or fails after `timeout` (with the server's exit
/// status if it died).
pub async fn wait_for_port(proc: &mut Proc, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        proc.alive()?;
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "server did not listen on port {port} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP connection to 127.0.0.1:`port` with TCP_NODELAY.
pub async fn connect(port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Paths of the peer servers that were found.
#[derive(Debug, Clone, Default)]
pub struct PeerBinaries {
    pub strata: Option<PathBuf>,
    pub redis: Option<PathBuf>,
    pub nats: Option<PathBuf>,
    pub tansu: Option<PathBuf>,
    pub rabbitmq: Option<PathBuf>,
}

/// `given`, else the first of `candidates` that exists, else `name` on PATH.
pub fn find_binary(given: Option<&Path>, candidates: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.exists().then(|| p.to_path_buf());
    }
    candidates.iter().find(|p| p.exists()).cloned().or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
    })
}

/// `<binary> --version`, first line.
pub fn version_of(binary: &Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w6() -> Workload {
        Workload {
            name: "W6",
            record_bytes: 1024,
            records: 4000,
            batch_records: 1000,
            partitions: 1000,
            producers: 4,
            consumers: 4,
            window: 4,
            seconds: 1.0,
            rate: None,
            group: false,
            warmup: 0.0,
        }
    }

    #[test]
    fn keyed_batches_spread_as_the_server_partitions_them() {
        let w = w6();
        let Placement::Each(ps) = w.placement(1, 7, &w.owned(1, 4)) else { panic!("W6 is keyed") };
        assert_eq!(ps.len(), 1000);
        assert_eq!(ps[3], strata_client::partition_for_key(b"k1-7-3", 1000));
        let distinct: std::collections::BTreeSet<_> = ps.iter().collect();
        assert!(distinct.len() > 500, "{} partitions", distinct.len());
        // Keys repeat every KEY_PATTERNS batches, so batches can be built ahead.
        assert_eq!(w.key(1, 7 + KEY_PATTERNS, 3), w.key(1, 7, 3));
    }

    #[test]
    fn unkeyed_batches_take_the_producers_partitions_in_turn() {
        let w = Workload { partitions: 4, ..w6() };
        let owned = w.owned(1, 2);
        assert_eq!(owned, vec![1, 3]);
        assert!(matches!(w.placement(1, 0, &owned), Placement::One(1)));
        assert!(matches!(w.placement(1, 1, &owned), Placement::One(3)));
    }

    #[test]
    fn merged_outcomes_add_up_shared_partitions() -> anyhow::Result<()> {
        let mut a = Outcome::new()?;
        let mut b = Outcome::new()?;
        let mut counts = std::collections::BTreeMap::new();
        Placement::Each(vec![5, 2, 5]).count(3, &mut counts);
        a.per_partition = counts.into_iter().collect();
        b.per_partition = vec![(2, 10), (9, 1)];
        a.merge(b)?;
        assert_eq!(a.per_partition, vec![(2, 11), (5, 2), (9, 1)]);
        Ok(())
    }
}
