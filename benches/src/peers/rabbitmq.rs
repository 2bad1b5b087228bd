//! RabbitMQ Streams (Debian's `rabbitmq-server` with its `rabbitmq_stream` plugin) under the
//! common load generator, over a small client written here on the codec of crates.io's
//! `rabbitmq-stream-protocol` (the protocol crate of RabbitMQ's own Rust client; the client crate
//! itself would turn on a second TLS provider in rustls for the whole workspace, the server's
//! object-store client included).
//!
//! One stream per partition (`bench-<n>`). Produce: each batch is published on one connection per
//! producer with one publisher per stream, in `Publish` frames of up to the negotiated frame size,
//! up to `window` batches unconfirmed; a batch counts once every record in it is confirmed
//! (`PublishConfirm`). Consume: one `Subscribe` per stream from the first offset with a credit of
//! [`CREDIT`] chunks, one credit given back per chunk delivered, until every expected record has
//! arrived; every offset must come once and in order.
//!
//! The node runs on its own: ports on 127.0.0.1 chosen per run (AMQP, stream, Erlang
//! distribution, and an `epmd` of its own, stopped with it), data and logs in the run's directory.
//!
//! Durability: a stream writes each chunk to its segment file and confirms it without an fsync
//! (its data safety comes from replication to other nodes; see [`SKIPS_DURABLE`]), so it runs the
//! relaxed rows only. W4: Debian's 3.10 has no consumer group for streams ([`SKIPS_GROUP`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rabbitmq_stream_protocol::codec::{Decoder, Encoder};
use rabbitmq_stream_protocol::commands::create_stream::CreateStreamCommand;
use rabbitmq_stream_protocol::commands::credit::CreditCommand;
use rabbitmq_stream_protocol::commands::declare_publisher::DeclarePublisherCommand;
use rabbitmq_stream_protocol::commands::open::OpenCommand;
use rabbitmq_stream_protocol::commands::peer_properties::PeerPropertiesCommand;
use rabbitmq_stream_protocol::commands::publish::PublishCommand;
use rabbitmq_stream_protocol::commands::sasl_authenticate::SaslAuthenticateCommand;
use rabbitmq_stream_protocol::commands::sasl_handshake::SaslHandshakeCommand;
use rabbitmq_stream_protocol::commands::subscribe::{OffsetSpecification, SubscribeCommand};
use rabbitmq_stream_protocol::commands::tune::TunesCommand;
use rabbitmq_stream_protocol::message::Message;
use rabbitmq_stream_protocol::types::PublishedMessage;
use rabbitmq_stream_protocol::{Request, Response, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

use super::{Outcome, Placement, Proc, Reading, Workload};

/// Chunks a subscription may have delivered ahead of the reader.
const CREDIT: u16 = 8;
/// Largest frame asked for (the server's default; a `Publish` frame carries at most this).
const FRAME_MAX: u32 = 1 << 20;

/// Why RabbitMQ has no durable rows.
pub const SKIPS_DURABLE: &str = "not run: a RabbitMQ stream confirms a publish once the chunk is written to its \
     segment file, without an fsync (its data safety comes from replication to other nodes; strace of a W2 run: \
     no fsync of a stream file, only of the node's metadata logs), and no setting makes it ack after one: it is \
     compared in relaxed rows only";
/// Why RabbitMQ has no W4 group row.
pub const SKIPS_GROUP: &str = "not run: RabbitMQ shares a partitioned stream among a group's members with super \
     streams and single active consumer, both new in 3.11; Debian's package is 3.10";
/// How W4 would read from RabbitMQ, for the report.
pub const GROUP_METHOD: &str = "not run (no super streams before RabbitMQ 3.11)";

#[derive(Debug)]
pub struct RabbitMq {
    pub proc: Proc,
    stream_port: u16,
    epmd_port: u16,
}

impl RabbitMq {
    /// Starts a node of its own from `binary` (`.../rabbitmq/bin/rabbitmq-server`) with the
    /// stream plugin, everything under `data_dir`, every port on 127.0.0.1.
    pub async fn start(binary: &Path, data_dir: &Path) -> anyhow::Result<RabbitMq> {
        std::fs::create_dir_all(data_dir)?;
        let [amqp_port, stream_port, dist_port, epmd_port] =
            [super::free_port()?, super::free_port()?, super::free_port()?, super::free_port()?];
        let config = data_dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
                 stream.listeners.tcp.1 = 127.0.0.1:{stream_port}\n\
                 stream.advertised_host = 127.0.0.1\n\
                 stream.advertised_port = {stream_port}\n\
                 stream.frame_max = {FRAME_MAX}\n\
                 log.console = false\n\
                 log.file.level = warning\n"
            ),
        )?;
        let plugins = data_dir.join("enabled_plugins");
        std::fs::write(&plugins, "[rabbitmq_stream].\n")?;
        let log = std::fs::File::create(data_dir.join("rabbitmq.out"))?;
        let mut command = Command::new(binary);
        command
            // The node's cookie is made in $HOME.
            .env("HOME", data_dir)
            .env("RABBITMQ_CONFIG_FILE", &config)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
            .env("RABBITMQ_MNESIA_BASE", data_dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", data_dir.join("log"))
            .env("RABBITMQ_NODENAME", format!("bench{stream_port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .current_dir(data_dir);
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut node = RabbitMq { proc: Proc::of(child), stream_port, epmd_port };
        // About 6 s here; longer on a busy machine.
        let listening = super::wait_for_port(&mut node.proc, stream_port, Duration::from_secs(30)).await;
        // The script waits on the Erlang VM it started: the VM's CPU and memory are the server's,
        // and the VM is what `Drop` kills if the node never came up.
        let vm = child_of(node.proc.pid);
        if let Some(vm) = vm {
            node.proc.pid = vm;
        }
        listening?;
        vm.context("the rabbitmq-server script started no Erlang VM")?;
        Ok(node)
    }

    /// Stops the node (SIGTERM; the `Proc` gives up on the script after 10 s, so a VM still
    /// shutting down then is killed) and its `epmd`.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let stopped = self.proc.stop();
        kill_vm(self.proc.pid);
        stop_epmd(self.epmd_port);
        stopped
    }

    async fn connect(&self) -> anyhow::Result<Conn> {
        Conn::open(self.stream_port).await
    }

    /// Creates one stream per partition.
    pub async fn prepare(&self, w: &Workload) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        for p in 0..w.partitions {
            let id = conn.next_id();
            let reply = conn.call(id, CreateStreamCommand::new(id, stream(p), HashMap::new())).await?;
            ensure_ok(&reply).with_context(|| format!("creating stream {}", stream(p)))?;
        }
        Ok(())
    }

    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        let owned = w.owned(i, w.producers);
        anyhow::ensure!(!owned.is_empty(), "producer {i} owns no partition");
        anyhow::ensure!(!w.keyed() && owned.len() <= 255, "RabbitMQ runs are unkeyed, at most 255 streams a producer");
        let mut conn = self.connect().await?;
        // Publisher `k` publishes to owned[k].
        for (k, &p) in owned.iter().enumerate() {
            let id = conn.next_id();
            let reply = conn.call(id, DeclarePublisherCommand::new(id, k as u8, None, stream(p))).await?;
            ensure_ok(&reply).with_context(|| format!("declaring a publisher on {}", stream(p)))?;
        }
        let per_frame = (conn.frame_max as usize - 64) / (w.record_bytes + 64);
        let per_frame = per_frame.clamp(1, w.batch_records.max(1));
        let Conn { reader, mut writer, .. } = conn;
        let window = Arc::new(Semaphore::new(w.window.max(1)));
        let state = Arc::new(Mutex::new(Confirms::new(w)?));
        let start = Instant::now();
        state.lock().unwrap_or_else(PoisonError::into_inner).out.measured_from = Some(w.measured_from(start));
        let confirmer = tokio::spawn(confirm(reader, Arc::clone(&state)));
        let message = Message::builder().body(w.value().to_vec()).build();
        let mut pacer = w.pacer(start)?;
        let batches = w.batches_for(i);
        let mut sent = 0;
        let mut frame = Vec::with_capacity(FRAME_MAX as usize);
        for n in 0..batches {
            let due = w.due(start, n);
            if !super::turn(&mut pacer, n, deadline).await {
                break;
            }
            let permit = take(&window, 1, &state, deadline + CONFIRM_WAIT).await?;
            let Placement::One(p) = w.placement(i, n, &owned) else { anyhow::bail!("a keyed batch") };
            let publisher = owned.iter().position(|&o| o == p).context("a partition not owned")? as u8;
            let first = n * w.batch_records as u64;
            state.lock().unwrap_or_else(PoisonError::into_inner).inflight.insert(
                n,
                Inflight {
                    since: due.unwrap_or_else(Instant::now),
                    left: w.batch_records,
                    partition: p,
                    _permit: permit,
                },
            );
            let ids: Vec<u64> = (first..first + w.batch_records as u64).collect();
            for chunk in ids.chunks(per_frame) {
                let messages = chunk.iter().map(|&id| PublishedMessage::new(id, message.clone(), None)).collect();
                frame.clear();
                Request::from(PublishCommand::new(publisher, messages, 1))
                    .encode(&mut frame)
                    .map_err(|e| anyhow::anyhow!("encoding a frame: {e:?}"))?;
                writer.write_all(&frame).await?;
            }
            sent += 1;
        }
        // Every batch sent is confirmed once the window is whole again.
        let whole = take(&window, u32::try_from(w.window.max(1))?, &state, deadline.max(Instant::now()) + CONFIRM_WAIT)
            .await
            .with_context(|| format!("waiting for the confirms of {sent} batches"))?;
        drop(whole);
        confirmer.abort();
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        state.failed()?;
        let mut out = std::mem::replace(&mut state.out, Outcome::new()?);
        out.per_partition = std::mem::take(&mut state.per_partition).into_iter().collect();
        drop(writer);
        Ok(out)
    }

    /// Subscribes to each of `expected`'s streams from the first offset and reads until its count
    /// has arrived; every offset must come once and in order.
    pub async fn consume(&self, _w: &Workload, _i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        let Reading { expected, deadline } = read;
        anyhow::ensure!(expected.len() <= 255, "at most 255 streams a consumer");
        let mut conn = self.connect().await?;
        // Subscription `k` reads expected[k]: (partition, records wanted, next offset).
        let mut progress: Vec<(u32, u64, u64)> = expected.iter().map(|&(p, n)| (p, n, 0)).collect();
        let mut remaining: u64 = expected.iter().map(|(_, n)| n).sum();
        // With no credit until every subscription is made: a chunk delivered while a later one
        // is being made would be passed over.
        for (k, &(p, _)) in expected.iter().enumerate() {
            let id = conn.next_id();
            let subscribe =
                SubscribeCommand::new(id, k as u8, stream(p), OffsetSpecification::First, 0, HashMap::new());
            let reply = conn.call(id, subscribe).await?;
            ensure_ok(&reply).with_context(|| format!("subscribing to {}", stream(p)))?;
        }
        for k in 0..expected.len() {
            conn.send(CreditCommand::new(k as u8, CREDIT)).await?;
        }
        let mut out = Outcome::new()?;
        let mut since = Instant::now();
        while remaining > 0 {
            let frame = tokio::time::timeout_at(deadline.into(), conn.reader.next())
                .await
                .map_err(|_| anyhow::anyhow!("{remaining} records never arrived"))??;
            let deliver = match frame.kind() {
                ResponseKind::Deliver(d) => d,
                ResponseKind::Heartbeat(_) | ResponseKind::Credit(_) | ResponseKind::MetadataUpdate(_) => continue,
                other => anyhow::bail!("unexpected frame while consuming: {other:?}"),
            };
            out.record_latency(since)?;
            since = Instant::now();
            let k = usize::from(deliver.subscription_id);
            let (p, wanted, next) = progress.get_mut(k).context("a delivery for no subscription")?;
            // A subscription starts at the chunk holding its offset: skip what came before.
            for (offset, m) in (deliver.chunk_first_offset..).zip(&deliver.messages) {
                if offset < *next || *next >= *wanted {
                    continue;
                }
                anyhow::ensure!(offset == *next, "stream {p}: offset {offset} where {next} was due");
                out.bytes += m.data().map_or(0, <[u8]>::len) as u64;
                out.records += 1;
                *next += 1;
                remaining -= 1;
            }
            conn.send(CreditCommand::new(deliver.subscription_id, 1)).await?;
        }
        Ok(out)
    }
}

impl Drop for RabbitMq {
    /// A node not stopped (a failed run) is killed: dropping the `Proc` kills only the script.
    /// Its `epmd` refuses to stop while the node is still registered, so that waits for the VM
    /// to be gone (or a zombie, its sockets closed).
    fn drop(&mut self) {
        if self.proc.child.is_some() {
            kill_vm(self.proc.pid);
        }
        stop_epmd(self.epmd_port);
    }
}

/// Kills the node's VM if it is still running and waits (up to 5 s) until it is gone.
fn kill_vm(pid: u32) {
    if !running(pid) {
        return;
    }
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && running(pid) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// How long confirms may lag behind the produce phase's deadline.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// `n` places in the window, once confirms have freed them; fails at once when the confirmer
/// stopped on an error, and at `until`.
async fn take(
    window: &Arc<Semaphore>,
    n: u32,
    state: &Mutex<Confirms>,
    until: Instant,
) -> anyhow::Result<tokio::sync::OwnedSemaphorePermit> {
    loop {
        state.lock().unwrap_or_else(PoisonError::into_inner).failed()?;
        anyhow::ensure!(Instant::now() < until, "confirms stopped arriving");
        if let Ok(permit) =
            tokio::time::timeout(Duration::from_millis(50), Arc::clone(window).acquire_many_owned(n)).await
        {
            return Ok(permit?);
        }
    }
}

/// The stream of partition `p`.
fn stream(p: u32) -> String {
    format!("bench-{p}")
}

/// The first child process of `pid` (the Erlang VM the start script runs), once it exists.
fn child_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Stops the node's own `epmd` (it outlives the node otherwise).
fn stop_epmd(port: u16) {
    let _ = Command::new("epmd")
        .arg("-kill")
        .env("ERL_EPMD_PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn ensure_ok(reply: &Response) -> anyhow::Result<()> {
    let ok = match reply.kind_ref() {
        ResponseKind::Generic(g) => g.is_ok(),
        ResponseKind::Open(o) => o.is_ok(),
        ResponseKind::PeerProperties(_) | ResponseKind::SaslHandshake(_) => true,
        other => anyhow::bail!("unexpected reply {other:?}"),
    };
    anyhow::ensure!(ok, "refused: {reply:?}");
    Ok(())
}

/// Batches published and not yet wholly confirmed, and the figures of those that were.
struct Confirms {
    inflight: HashMap<u64, Inflight>,
    batch_records: usize,
    record_bytes: usize,
    out: Outcome,
    per_partition: BTreeMap<u32, u64>,
    error: Option<String>,
}

struct Inflight {
    since: Instant,
    left: usize,
    partition: u32,
    /// The batch's place in the window, given back once it is confirmed.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Confirms {
    fn new(w: &Workload) -> anyhow::Result<Confirms> {
        Ok(Confirms {
            inflight: HashMap::new(),
            batch_records: w.batch_records.max(1),
            record_bytes: w.record_bytes,
            out: Outcome::new()?,
            per_partition: BTreeMap::new(),
            error: None,
        })
    }

    fn failed(&self) -> anyhow::Result<()> {
        match &self.error {
            Some(e) => anyhow::bail!("{e}"),
            None => Ok(()),
        }
    }

    /// Counts confirmed publishing ids against their batches.
    fn confirmed(&mut self, ids: &[u64]) -> anyhow::Result<()> {
        for &id in ids {
            let n = id / self.batch_records as u64;
            let batch = self.inflight.get_mut(&n).with_context(|| format!("a confirm for id {id} of no batch"))?;
            batch.left -= 1;
            if batch.left == 0
                && let Some(done) = self.inflight.remove(&n)
            {
                self.out.records += self.batch_records as u64;
                self.out.bytes += (self.batch_records * self.record_bytes) as u64;
                *self.per_partition.entry(done.partition).or_default() += self.batch_records as u64;
                self.out.record_latency(done.since)?;
            }
        }
        Ok(())
    }
}

/// Reads confirms until the connection ends; a publish error or a bad frame is kept for the
/// producer to report.
async fn confirm(mut reader: FrameReader, state: Arc<Mutex<Confirms>>) {
    loop {
        let outcome = match reader.next().await {
            Ok(frame) => match frame.kind() {
                ResponseKind::PublishConfirm(c) => {
                    state.lock().unwrap_or_else(PoisonError::into_inner).confirmed(&c.publishing_ids)
                }
                ResponseKind::PublishError(e) => Err(anyhow::anyhow!("publish refused: {:?}", e.publishing_errors)),
                ResponseKind::Heartbeat(_) | ResponseKind::MetadataUpdate(_) => Ok(()),
                other => Err(anyhow::anyhow!("unexpected frame while publishing: {other:?}")),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            state.lock().unwrap_or_else(PoisonError::into_inner).error.get_or_insert(format!("{e:#}"));
            return;
        }
    }
}

/// The read half of a connection: one frame at a time.
struct FrameReader {
    inner: BufReader<OwnedReadHalf>,
}

impl FrameReader {
    async fn next(&mut self) -> anyhow::Result<Response> {
        let len = self.inner.read_u32().await.context("rabbitmq closed the connection")?;
        // The codec reads the length too.
        let mut buf = vec![0u8; 4 + len as usize];
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.inner.read_exact(&mut buf[4..]).await?;
        let (_, response) =
            Response::decode(&buf).map_err(|e| anyhow::anyhow!("a frame that does not decode: {e:?}"))?;
        Ok(response)
    }
}

/// An open, authenticated connection (guest/guest on the virtual host `/`).
struct Conn {
    reader: FrameReader,
    writer: OwnedWriteHalf,
    frame_max: u32,
    correlation: u32,
}

impl Conn {
    async fn open(port: u16) -> anyhow::Result<Conn> {
        let (read, writer) = super::connect(port).await?.into_split();
        let reader = FrameReader { inner: BufReader::with_capacity(1 << 20, read) };
        let mut conn = Conn { reader, writer, frame_max: FRAME_MAX, correlation: 0 };
        let id = conn.next_id();
        ensure_ok(&conn.call(id, PeerPropertiesCommand::new(id, HashMap::new())).await?)?;
        let id = conn.next_id();
        ensure_ok(&conn.call(id, SaslHandshakeCommand::new(id)).await?)?;
        let id = conn.next_id();
        let auth = SaslAuthenticateCommand::new(id, "PLAIN".into(), b"\0guest\0guest".to_vec());
        ensure_ok(&conn.call(id, auth).await?).context("authenticating as guest")?;
        // The server proposes its limits; the reply takes the frame size and turns heartbeats off.
        let tune = loop {
            if let ResponseKind::Tunes(t) = conn.reader.next().await?.kind() {
                break t;
            }
        };
        conn.frame_max = if tune.max_frame_size == 0 { FRAME_MAX } else { tune.max_frame_size.min(FRAME_MAX) };
        conn.send(TunesCommand::new(conn.frame_max, 0)).await?;
        let id = conn.next_id();
        ensure_ok(&conn.call(id, OpenCommand::new(id, "/".into())).await?).context("opening the virtual host")?;
        Ok(conn)
    }

    fn next_id(&mut self) -> u32 {
        self.correlation += 1;
        self.correlation
    }

    async fn send<C>(&mut self, command: C) -> anyhow::Result<()>
    where
        Request: From<C>,
    {
        let mut buf = Vec::new();
        Request::from(command).encode(&mut buf).map_err(|e| anyhow::anyhow!("encoding a frame: {e:?}"))?;
        self.writer.write_all(&buf).await?;
        Ok(())
    }

    /// Sends `command` (correlation id `id`) and returns its reply.
    async fn call<C>(&mut self, id: u32, command: C) -> anyhow::Result<Response>
    where
        Request: From<C>,
    {
        self.send(command).await?;
        loop {
            let frame = self.reader.next().await?;
            if frame.correlation_id() == Some(id) {
                return Ok(frame);
            }
        }
    }
}

/// `3.10.8`: the version in the name of the server's library directory beside `binary`
/// (`rabbitmq-server` has no `--version`).
pub fn version(binary: &Path) -> Option<String> {
    let lib = binary.parent()?.parent()?.join("lib");
    let mut versions: Vec<String> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("rabbitmq_server-").map(str::to_string))
        .collect();
    versions.sort();
    versions.pop().map(|v| format!("rabbitmq-server {v}"))
}

/// Where Debian's package puts the server's start script.
pub fn default_binary() -> PathBuf {
    PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server")
}
