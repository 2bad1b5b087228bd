//! NATS JetStream under the common load generator, over a minimal NATS client written here (the
//! same tokio sockets with TCP_NODELAY as every other system; the JetStream API is JSON requests
//! on `$JS.API.*` subjects).
//!
//! One stream per partition (`P<n>` on subject `p<n>`, file storage). Produce: asynchronous
//! publish, every message with a reply subject for its ack (`_INBOX.<producer>.<batch>`), up to
//! `window` batches unacknowledged; keyed (W6), each record is published to its key's stream.
//! Consume: a durable pull consumer per stream with `ack_policy: all`, `MSG.NEXT` requests of
//! one batch (`no_wait`), the last message of each batch acknowledged.
//!
//! A group (W4): one durable pull consumer `g` per stream, with explicit acks, shared by every
//! member: each member pulls batches of 1,000 (`no_wait`) from one stream at a time, rotating,
//! and acknowledges every message (the acks pipelined before its next pull). `AckAll` is not
//! used here: with a consumer shared by members it would acknowledge other members' messages.
//!
//! Durable = `sync_interval: always` (nats-server ≥ 2.10: fsync before each ack); relaxed = the
//! default (fsync every 2 minutes).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::group::GroupProgress;
use super::{Mode, Outcome, Placement, Proc, Reading, Workload};

/// How W4 reads from NATS, for the report.
pub const GROUP_METHOD: &str = "a durable pull consumer per stream (`ack_policy: explicit`) shared by 4 \
     subscribers, each pulling batches of 1,000 (`no_wait`) from one stream at a time (rotating), every message \
     acknowledged, the acks pipelined before the next pull";

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

#[derive(Debug)]
pub struct Nats {
    pub proc: Proc,
    port: u16,
}

/// A message delivered on a subscription.
#[derive(Debug)]
struct Msg {
    subject: String,
    reply: Option<String>,
    /// Status line of a header-only message (`404 No Messages`, `408 Request Timeout`, ...).
    status: Option<String>,
    payload: Vec<u8>,
}

/// Reads until the next `MSG`/`HMSG`; skips `+OK`, `PONG` and `INFO`; a `-ERR` is an error.
/// Server `PING`s are not answered here: the test server pings every 10 minutes.
async fn next_msg(r: &mut Reader, line: &mut String) -> anyhow::Result<Msg> {
    loop {
        line.clear();
        let n = r.read_line(line).await?;
        anyhow::ensure!(n > 0, "nats closed the connection");
        let mut parts = line.split_whitespace();
        let op = parts.next().unwrap_or("");
        match op {
            "MSG" | "HMSG" => {
                let fields: Vec<&str> = parts.collect();
                let hmsg = op == "HMSG";
                let nums = if hmsg { 2 } else { 1 };
                anyhow::ensure!(fields.len() >= 2 + nums, "bad {op} line {line:?}");
                let subject = fields[0].to_string();
                let reply = (fields.len() == 3 + nums).then(|| fields[2].to_string());
                let total: usize = fields[fields.len() - 1].parse()?;
                let header_len: usize = if hmsg { fields[fields.len() - 2].parse()? } else { 0 };
                let mut buf = vec![0u8; total + 2];
                r.read_exact(&mut buf).await?;
                buf.truncate(total);
                let status = hmsg.then(|| {
                    let head = String::from_utf8_lossy(&buf[..header_len]);
                    head.lines().next().unwrap_or("").trim_start_matches("NATS/1.0").trim().to_string()
                });
                let payload = buf.split_off(header_len);
                return Ok(Msg { subject, reply, status: status.filter(|s| !s.is_empty()), payload });
            }
            "-ERR" => anyhow::bail!("nats error: {}", line.trim()),
            _ => {}
        }
    }
}

fn publish(buf: &mut Vec<u8>, subject: &str, reply: Option<&str>, payload: &[u8]) {
    buf.extend_from_slice(b"PUB ");
    buf.extend_from_slice(subject.as_bytes());
    if let Some(r) = reply {
        buf.push(b' ');
        buf.extend_from_slice(r.as_bytes());
    }
    buf.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(b"\r\n");
}

/// Connects and subscribes to `inbox.>` (sid 1).
async fn connect(port: u16, inbox: &str) -> anyhow::Result<(Reader, Writer)> {
    let (r, mut w) = super::connect(port).await?.into_split();
    let mut r = BufReader::with_capacity(1 << 20, r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("INFO"), "unexpected greeting {line:?}");
    let connect = r#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1,"lang":"rust","version":"strata-bench"}"#;
    w.write_all(format!("{connect}\r\nSUB {inbox}.> 1\r\nPING\r\n").as_bytes()).await?;
    loop {
        line.clear();
        anyhow::ensure!(r.read_line(&mut line).await? > 0, "nats closed the connection");
        if line.starts_with("PONG") {
            break;
        }
        anyhow::ensure!(!line.starts_with("-ERR"), "nats: {}", line.trim());
    }
    Ok((r, w))
}

/// A JetStream API request (`Null`: an empty body); fails on an `error` in the JSON response,
/// else returns it.
async fn api(
    r: &mut Reader,
    w: &mut Writer,
    inbox: &str,
    subject: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut buf = Vec::new();
    let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body)? };
    publish(&mut buf, subject, Some(&format!("{inbox}.api")), &body);
    w.write_all(&buf).await?;
    let mut line = String::new();
    let msg = tokio::time::timeout(Duration::from_secs(10), next_msg(r, &mut line)).await??;
    anyhow::ensure!(msg.status.is_none(), "{subject}: {:?}", msg.status);
    let reply: serde_json::Value = serde_json::from_slice(&msg.payload)?;
    anyhow::ensure!(reply.get("error").is_none(), "{subject}: {reply}");
    Ok(reply)
}

/// The stream sequence of a JetStream message, from its ack subject:
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, or the
/// longer form with a domain and an account hash after `$JS.ACK`.
fn stream_sequence(ack: &str) -> anyhow::Result<u64> {
    let tokens: Vec<&str> = ack.split('.').collect();
    let at = match tokens.len() {
        9 => 5,
        n if n >= 11 => 7,
        _ => anyhow::bail!("unexpected ack subject {ack:?}"),
    };
    Ok(tokens[at].parse()?)
}

/// Sends `PING` and waits for the `PONG`: everything written before was read by the server.
async fn flush(r: &mut Reader, w: &mut Writer) -> anyhow::Result<()> {
    w.write_all(b"PING\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(r.read_line(&mut line).await? > 0, "nats closed the connection");
        if line.starts_with("PONG") {
            return Ok(());
        }
    }
}

impl Nats {
    pub async fn start(binary: &Path, data_dir: &Path, mode: Mode) -> anyhow::Result<Nats> {
        std::fs::create_dir_all(data_dir)?;
        let port = super::free_port()?;
        let sync = match mode {
            Mode::Durable => "  sync_interval: always\n",
            Mode::Relaxed => "",
        };
        let config = format!(
            "listen: 127.0.0.1:{port}\nping_interval: \"10m\"\nmax_payload: 8MB\nmax_pending: 256MB\n\
             jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 1GB\n  max_file_store: 64GB\n{sync}}}\n",
            data_dir.join("js").display()
        );
        let config_path = data_dir.join("nats.conf");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(data_dir.join("nats.log"))?;
        let mut command = Command::new(binary);
        command.arg("-c").arg(&config_path);
        let proc = super::spawn_server(&mut command, binary, log.into(), port).await?;
        Ok(Nats { proc, port })
    }

    pub async fn prepare(&self, w: &Workload) -> anyhow::Result<()> {
        let (mut r, mut wr) = connect(self.port, "_INBOX.setup").await?;
        for p in 0..w.partitions {
            let body = serde_json::json!({
                "name": format!("P{p}"), "subjects": [format!("p{p}")], "storage": "file",
                "retention": "limits", "num_replicas": 1, "discard": "old",
            });
            api(&mut r, &mut wr, "_INBOX.setup", &format!("$JS.API.STREAM.CREATE.P{p}"), &body).await?;
        }
        Ok(())
    }

    pub async fn produce(&self, w: &Workload, i: usize, deadline: Instant) -> anyhow::Result<Outcome> {
        let partitions = w.owned(i, w.producers);
        anyhow::ensure!(!partitions.is_empty(), "producer {i} owns no partition");
        let inbox = format!("_INBOX.p{i}");
        let (mut reader, mut writer) = connect(self.port, &inbox).await?;
        let value = w.value();
        let window = Arc::new(tokio::sync::Semaphore::new(w.window.max(1)));
        let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant, Placement)>();
        let batches = w.batches_for(i);
        let start = Instant::now();
        let feeder = {
            let (window, w, partitions, inbox) = (Arc::clone(&window), w.clone(), partitions.clone(), inbox.clone());
            tokio::spawn(async move {
                let mut n_sent = 0u64;
                let mut buf = Vec::with_capacity(w.batch_records * (w.record_bytes + 64));
                let mut pacer = w.pacer(start)?;
                for n in 0..batches {
                    let due = w.due(start, n);
                    if !super::turn(&mut pacer, n, deadline).await {
                        break;
                    }
                    window.acquire().await?.forget();
                    let placement = w.placement(i, n, &partitions);
                    let reply = format!("{inbox}.{n}");
                    buf.clear();
                    match &placement {
                        Placement::One(p) => {
                            let subject = format!("p{p}");
                            for _ in 0..w.batch_records {
                                publish(&mut buf, &subject, Some(&reply), &value);
                            }
                        }
                        // Keyed: the key picks the record's stream (subject `p<n>`).
                        Placement::Each(ps) => {
                            for p in ps {
                                publish(&mut buf, &format!("p{p}"), Some(&reply), &value);
                            }
                        }
                    }
                    sent_tx.send((n, due.unwrap_or_else(Instant::now), placement))?;
                    writer.write_all(&buf).await?;
                    n_sent += 1;
                }
                Ok::<_, anyhow::Error>((n_sent, writer))
            })
        };
        let mut out = Outcome::new()?;
        out.measured_from = Some(w.measured_from(start));
        let mut per_partition = std::collections::BTreeMap::<u32, u64>::new();
        // Acks of different streams may interleave: count them per batch.
        let mut open: HashMap<u64, (Instant, Placement, usize)> = HashMap::new();
        let mut line = String::new();
        let mut acked = 0u64;
        let mut feeder_done = false;
        loop {
            while let Ok((n, t, p)) = sent.try_recv() {
                open.insert(n, (t, p, 0));
            }
            if open.is_empty() {
                if feeder_done {
                    break;
                }
                match sent.recv().await {
                    Some((n, t, p)) => {
                        open.insert(n, (t, p, 0));
                    }
                    None => {
                        feeder_done = true;
                        continue;
                    }
                }
            }
            let msg = next_msg(&mut reader, &mut line).await?;
            anyhow::ensure!(msg.status.is_none(), "publish failed: {:?}", msg.status);
            if msg.payload.windows(7).any(|x| x == b"\"error\"") {
                anyhow::bail!("publish failed: {}", String::from_utf8_lossy(&msg.payload));
            }
            let n: u64 = msg.subject.rsplit('.').next().unwrap_or("").parse()?;
            if !open.contains_key(&n) {
                while let Some((m, t, p)) = sent.recv().await {
                    open.insert(m, (t, p, 0));
                    if m == n {
                        break;
                    }
                }
            }
            let entry = open.get_mut(&n).context("ack for a batch never sent")?;
            entry.2 += 1;
            if entry.2 == w.batch_records
                && let Some((t, placement, _)) = open.remove(&n)
            {
                out.record_latency(t)?;
                out.records += w.batch_records as u64;
                out.bytes += (w.batch_records * w.record_bytes) as u64;
                placement.count(w.batch_records, &mut per_partition);
                acked += 1;
                window.add_permits(1);
            }
        }
        let (n_sent, _writer) = feeder.await??;
        anyhow::ensure!(acked == n_sent, "{n_sent} batches sent, {acked} acknowledged");
        out.per_partition = per_partition.into_iter().collect();
        Ok(out)
    }

    pub async fn consume(&self, w: &Workload, i: usize, read: Reading<'_>) -> anyhow::Result<Outcome> {
        let Reading { expected, deadline } = read;
        let inbox = format!("_INBOX.c{i}");
        let (mut reader, mut writer) = connect(self.port, &inbox).await?;
        for (p, _) in expected {
            let body = serde_json::json!({
                "stream_name": format!("P{p}"),
                "config": {"durable_name": format!("c{p}"), "ack_policy": "all", "deliver_policy": "all",
                           "max_ack_pending": 1_000_000, "max_waiting": 512},
            });
            api(&mut reader, &mut writer, &inbox, &format!("$JS.API.CONSUMER.CREATE.P{p}.c{p}"), &body).await?;
        }
        let mut out = Outcome::new()?;
        let mut line = String::new();
        let mut buf = Vec::new();
        let pull = serde_json::to_vec(&serde_json::json!({"batch": w.batch_records, "no_wait": true}))?;
        let mut positions: Vec<(u32, u64, u64)> = expected.iter().map(|(p, n)| (*p, 0, *n)).collect();
        while positions.iter().any(|(_, at, end)| at < end) && Instant::now() < deadline {
            for (p, at, end) in positions.iter_mut().filter(|(_, at, end)| at < end) {
                buf.clear();
                publish(
                    &mut buf,
                    &format!("$JS.API.CONSUMER.MSG.NEXT.P{p}.c{p}"),
                    Some(&format!("{inbox}.pull")),
                    &pull,
                );
                let t = Instant::now();
                writer.write_all(&buf).await?;
                let mut got = 0usize;
                let mut last_reply = None;
                while got < w.batch_records {
                    let msg = next_msg(&mut reader, &mut line).await?;
                    if let Some(status) = msg.status {
                        anyhow::ensure!(got > 0, "stream P{p} ended at {at} of {end}: {status}");
                        break;
                    }
                    got += 1;
                    out.records += 1;
                    out.bytes += msg.payload.len() as u64;
                    last_reply = msg.reply;
                }
                out.record_latency(t)?;
                *at += got as u64;
                if let Some(reply) = last_reply {
                    buf.clear();
                    publish(&mut buf, &reply, None, b"+ACK");
                    writer.write_all(&buf).await?;
                }
            }
        }
        Ok(out)
    }

    /// W4: a durable pull consumer `g` with explicit acks on every stream, from the start.
    pub async fn prepare_group(&self, w: &Workload) -> anyhow::Result<()> {
        let (mut r, mut wr) = connect(self.port, "_INBOX.setup").await?;
        for p in 0..w.partitions {
            let body = serde_json::json!({
                "stream_name": format!("P{p}"),
                "config": {"durable_name": "g", "ack_policy": "explicit", "deliver_policy": "all",
                           "max_ack_pending": 1_000_000, "max_waiting": 512},
            });
            api(&mut r, &mut wr, "_INBOX.setup", &format!("$JS.API.CONSUMER.CREATE.P{p}.g"), &body).await?;
        }
        Ok(())
    }

    /// Subscriber `i` of the shared consumers: pulls from one stream at a time, starting at
    /// stream `i`, until the whole group is done; acknowledges every message.
    pub async fn group_member(&self, w: &Workload, i: usize, progress: Arc<GroupProgress>) -> anyhow::Result<Outcome> {
        progress.joined();
        let inbox = format!("_INBOX.g{i}");
        let (mut reader, mut writer) = connect(self.port, &inbox).await?;
        let pull = serde_json::to_vec(&serde_json::json!({"batch": w.batch_records, "no_wait": true}))?;
        let reply_to = format!("{inbox}.pull");
        let streams = w.partitions.max(1) as usize;
        let mut out = Outcome::new()?;
        let mut line = String::new();
        // The previous batch's acks, written together with the next pull.
        let mut buf = Vec::new();
        let (mut next, mut empty) = (i, 0usize);
        while !progress.done() {
            progress.check()?;
            let p = (next % streams) as u32;
            next += 1;
            publish(&mut buf, &format!("$JS.API.CONSUMER.MSG.NEXT.P{p}.g"), Some(&reply_to), &pull);
            let t = Instant::now();
            writer.write_all(&buf).await?;
            buf.clear();
            let mut got = 0u64;
            while got < w.batch_records as u64 {
                let msg = next_msg(&mut reader, &mut line).await?;
                if let Some(status) = msg.status {
                    // 404 No Messages / 408 Request Timeout: the pull ended with what there was.
                    anyhow::ensure!(
                        status.starts_with("404") || status.starts_with("408"),
                        "pull from stream P{p}: {status}"
                    );
                    break;
                }
                let ack = msg.reply.context("a JetStream message without an ack subject")?;
                let seq = stream_sequence(&ack)?;
                anyhow::ensure!(seq > 0, "stream sequence 0 in {ack:?}");
                out.seen.record(p, u128::from(seq - 1));
                out.bytes += msg.payload.len() as u64;
                publish(&mut buf, &ack, None, b"+ACK");
                got += 1;
            }
            if got == 0 {
                // This stream is drained for the group: try the next; after a full round, breathe.
                empty += 1;
                if empty >= streams {
                    empty = 0;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                continue;
            }
            empty = 0;
            out.record_latency(t)?;
            out.records += got;
            progress.add(got);
        }
        writer.write_all(&buf).await?;
        flush(&mut reader, &mut writer).await?;
        Ok(out)
    }

    /// Every shared consumer's ack floor is at the end of its stream, nothing pending or
    /// unacknowledged (acks are applied asynchronously: waits up to 10 s for them).
    pub async fn verify_group(&self, expected: &[(u32, u64)]) -> anyhow::Result<&'static str> {
        let (mut r, mut wr) = connect(self.port, "_INBOX.verify").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for &(p, n) in expected {
            loop {
                let subject = format!("$JS.API.CONSUMER.INFO.P{p}.g");
                let info = api(&mut r, &mut wr, "_INBOX.verify", &subject, &serde_json::Value::Null).await?;
                let floor = info["ack_floor"]["stream_seq"].as_u64().unwrap_or(0);
                let unacked = info["num_ack_pending"].as_u64().unwrap_or(u64::MAX);
                let pending = info["num_pending"].as_u64().unwrap_or(u64::MAX);
                if floor == n && unacked == 0 && pending == 0 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "stream P{p}: ack floor {floor} of {n}, {unacked} unacknowledged, {pending} never delivered"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok("every shared consumer's ack floor is at the end of its stream, nothing pending")
    }
}

/// `nats-server --version` → `v2.15.1`.
pub fn version(binary: &Path) -> String {
    let v = super::version_of(binary);
    v.strip_prefix("nats-server: ").map(str::to_string).unwrap_or(v)
}
